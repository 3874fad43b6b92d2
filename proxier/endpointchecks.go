package proxier

import (
	"net/netip"
	"slices"
	"strings"

	"kube-haproxy.io/kube-haproxy/proxier/endpointcheck"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// checkedCopy is a service port with the endpoints its checks find down
// left out. Copies are kept from sync to sync, so that an unchanged one
// stays the same object, which the Applier skips.
type checkedCopy struct {
	orig, copy *haproxycfg.ServicePort
	// down lists the endpoints left out.
	down string
}

// withoutFailedEndpoints hands the checker the endpoints of the service
// ports with active checks, and returns ports with the endpoints the checks
// find down left out of their sets. A set whose every endpoint is down is
// kept whole: the checks may be what fails (a network policy that lets
// the Service's clients in but not HAProxy's checks), and a Service
// without endpoints would refuse every client anyway.
func (p *Proxier) withoutFailedEndpoints(ports []*haproxycfg.ServicePort) []*haproxycfg.ServicePort {
	if p.checker == nil {
		return ports
	}
	var targets []endpointcheck.Target
	seen := map[endpointcheck.Target]bool{}
	for _, sp := range ports {
		if sp.Check == nil {
			continue
		}
		for _, set := range sp.Sets() {
			for _, ep := range set.Endpoints {
				t := endpointcheck.Target{Endpoint: ep, Check: *sp.Check}
				if !seen[t] {
					seen[t] = true
					targets = append(targets, t)
				}
			}
		}
	}
	p.checker.SetTargets(targets)
	failing := 0
	for t := range seen {
		if p.checker.Down(t) {
			failing++
		}
	}
	endpointsFailingChecks.WithLabelValues(string(p.ipFamily)).Set(float64(failing))
	if failing == 0 {
		p.checkedCopies = nil
		return ports
	}

	prev, next := p.checkedCopies, map[string]checkedCopy{}
	out := ports
	for i, sp := range ports {
		if sp.Check == nil {
			continue
		}
		var down strings.Builder
		keep := func(set *haproxycfg.EndpointSet) *haproxycfg.EndpointSet {
			if set == nil {
				return nil
			}
			up := slices.DeleteFunc(slices.Clone(set.Endpoints), func(ep netip.AddrPort) bool {
				return p.checker.Down(endpointcheck.Target{Endpoint: ep, Check: *sp.Check})
			})
			if len(up) == len(set.Endpoints) || len(up) == 0 {
				return set
			}
			down.WriteString(set.Name)
			for _, ep := range set.Endpoints {
				if !slices.Contains(up, ep) {
					down.WriteString(" " + ep.String())
				}
			}
			down.WriteString(";")
			c := *set
			c.Endpoints = up
			return &c
		}
		cluster, local := keep(sp.Cluster), keep(sp.Local)
		if cluster == sp.Cluster && local == sp.Local {
			continue
		}
		if old, ok := prev[sp.Name]; ok && old.orig == sp && old.down == down.String() {
			next[sp.Name] = old
		} else {
			c := *sp
			c.Cluster, c.Local = cluster, local
			next[sp.Name] = checkedCopy{orig: sp, copy: &c, down: down.String()}
		}
		if &out[0] == &ports[0] {
			out = slices.Clone(ports)
		}
		out[i] = next[sp.Name].copy
	}
	p.checkedCopies = next
	return out
}
