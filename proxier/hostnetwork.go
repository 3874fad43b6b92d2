package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// hostNetworkApplier prepares the host (a node, or a load balancer in
// scopes cluster and external) around each Apply
// (package hostnet): before HAProxy is given a model, every Service
// address of it is made local, guarded, and dispatched to HAProxy's
// listener by nftables; after HAProxy took it, what only the previous
// model needed is removed. See README.md, "Local Service IPs and the
// guard".
type hostNetworkApplier struct {
	next    Applier
	newHost func(v1.IPFamily) (*hostnet.Host, error)

	mu    sync.Mutex
	hosts map[v1.IPFamily]*hostnet.Host
	cidrs map[v1.IPFamily][]netip.Prefix

	// applied holds, per family, the last model the host was prepared
	// for without an error (with its ServiceCIDRs), and when the host was
	// last brought to it whole. Only the family's own sync loop touches
	// its entry.
	applied map[v1.IPFamily]hostApplied
	// recheck is how long a host already fit for a model is trusted
	// without being brought to it again (hostRecheckInterval), in a sync
	// that carries no Service port change; recheckDeadline in any sync.
	recheck, recheckDeadline time.Duration
	now                      func() time.Time
}

// hostApplied is a model the host is fit for.
type hostApplied struct {
	model *haproxycfg.Config
	cidrs []netip.Prefix
	at    time.Time
}

// hostRecheckInterval bounds how long a route or rule someone removed by
// hand stays missing while only endpoints change: bringing the host to a
// model lists its routes, its rules and builds the guard's sets from every
// Service address, which at 10,000 Services was half of kube-proxy's CPU
// for an endpoint change that needs none of it. The recheck runs in the
// first sync after it without a Service port change: the proxier's
// periodic sync (syncPeriod) is one.
const hostRecheckInterval = 10 * time.Second

// hostRecheckDeadline bounds it when every sync carries a change: the
// recheck waits for a sync without one (the periodic sync, at least every
// syncPeriod), so that it does not delay a change, but not longer.
const hostRecheckDeadline = 6 * hostRecheckInterval

var (
	_ Applier             = &hostNetworkApplier{}
	_ ServiceCIDRObserver = &hostNetworkApplier{}
)

// withHostNetwork wraps next with the host networking.
func withHostNetwork(next Applier) *hostNetworkApplier {
	return &hostNetworkApplier{
		next:            next,
		newHost:         hostnet.New,
		hosts:           map[v1.IPFamily]*hostnet.Host{},
		cidrs:           map[v1.IPFamily][]netip.Prefix{},
		applied:         map[v1.IPFamily]hostApplied{},
		recheck:         hostRecheckInterval,
		recheckDeadline: hostRecheckDeadline,
		now:             time.Now,
	}
}

// SetServiceCIDRs implements ServiceCIDRObserver: the ranges are made local
// as a whole from the next Apply on (until then each ClusterIP gets a route
// of its own).
func (a *hostNetworkApplier) SetServiceCIDRs(family v1.IPFamily, cidrs []netip.Prefix) {
	a.mu.Lock()
	a.cidrs[family] = slices.Clone(cidrs)
	a.mu.Unlock()
	if o, ok := a.next.(ServiceCIDRObserver); ok {
		o.SetServiceCIDRs(family, cidrs)
	}
}

// host returns the family's Host and its ServiceCIDRs, creating the Host on
// first use (so a single-stack node never touches the other family).
func (a *hostNetworkApplier) host(family v1.IPFamily) (*hostnet.Host, []netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.hosts[family]
	if h == nil {
		var err error
		if h, err = a.newHost(family); err != nil {
			return nil, nil, fmt.Errorf("host network for %s: %w", family, err)
		}
		a.hosts[family] = h
	}
	return h, slices.Clone(a.cidrs[family]), nil
}

// Apply implements Applier. Each family's proxier calls it from its own
// sync loop, and each family has its own Host, so the Hosts need no lock.
func (a *hostNetworkApplier) Apply(ctx context.Context, family v1.IPFamily, desired *haproxycfg.Config) error {
	// A proxier shutting down must not put back routes or rules that a
	// cleanup is removing.
	if err := ctx.Err(); err != nil {
		return err
	}
	h, cidrs, err := a.host(family)
	if err != nil {
		return err
	}
	a.mu.Lock()
	last := a.applied[family]
	delete(a.applied, family)
	a.mu.Unlock()
	if !slices.Equal(last.cidrs, cidrs) {
		last = hostApplied{}
	}
	if same, quiet := sameHostNeeds(last.model, desired); same {
		// Only endpoints (or other map contents) changed: the host is
		// already fit for the model, so HAProxy gets it first. Once in a
		// while the host is brought to it again afterwards, to repair
		// what someone removed: in a sync that carries no Service port
		// change, so that it delays none, or once overdue.
		if err := a.next.Apply(ctx, family, desired); err != nil {
			return err
		}
		at := last.at
		if since := a.now().Sub(at); since >= a.recheck && (quiet || since >= a.recheckDeadline) {
			if err := h.Sync(ctx, hostDesired(cidrs, desired)); err != nil {
				return fmt.Errorf("repairing the Service IPs' routes and rules: %w", err)
			}
			at = a.now()
		}
		a.remember(family, desired, cidrs, at)
		return nil
	}
	want := hostDesired(cidrs, desired)
	if err := h.Prepare(ctx, want); err != nil {
		return fmt.Errorf("making Service IPs local, guarded and dispatched: %w", err)
	}
	if err := a.next.Apply(ctx, family, desired); err != nil {
		// The routes and rules of both models stay until a later Apply
		// succeeds: HAProxy still serves the old one.
		return err
	}
	if err := h.Finish(ctx, want); err != nil {
		return fmt.Errorf("removing unused Service IPs: %w", err)
	}
	a.remember(family, desired, cidrs, a.now())
	return nil
}

func (a *hostNetworkApplier) remember(family v1.IPFamily, model *haproxycfg.Config, cidrs []netip.Prefix, at time.Time) {
	a.mu.Lock()
	a.applied[family] = hostApplied{model: model, cidrs: cidrs, at: at}
	a.mu.Unlock()
}

// sameHostNeeds reports whether models a and b need the same host
// networking (hostDesired): the same listeners, dispatch address, NodePort
// addresses and source ranges; and quiet when b has the very Service
// ports of a (a sync that carries no Service port change). The proxier
// hands in the same ServicePort object for a Service port that did not
// change, so most ports compare by identity and the check costs a
// pointer comparison per Service port. A nil a needs something else.
func sameHostNeeds(a, b *haproxycfg.Config) (same, quiet bool) {
	if a == nil || len(a.Dispatchers) != len(b.Dispatchers) {
		return false, false
	}
	quiet = true
	for i, da := range a.Dispatchers {
		db := b.Dispatchers[i]
		if da.Listen != db.Listen || da.KeepClientSource != db.KeepClientSource ||
			!slices.Equal(da.NodePortAddresses, db.NodePortAddresses) || len(da.ServicePorts) != len(db.ServicePorts) {
			return false, false
		}
		for j, pa := range da.ServicePorts {
			pb := db.ServicePorts[j]
			if pa == pb {
				continue
			}
			quiet = false
			if !slices.Equal(pa.Listeners, pb.Listeners) || !slices.Equal(pa.SourceRanges, pb.SourceRanges) {
				return false, false
			}
		}
	}
	return true, quiet
}

// hostDesired is what the host needs for the family's model: each
// Service address and port guarded and dispatched to HAProxy's listener,
// the NodePorts on the dispatcher's NodePort addresses, and the
// loadBalancerSourceRanges.
func hostDesired(cidrs []netip.Prefix, c *haproxycfg.Config) hostnet.Desired {
	d := hostnet.Desired{ServiceCIDRs: cidrs}
	for _, disp := range c.Dispatchers {
		d.Dispatch = disp.Listen
		if d.Dispatch.Addr().IsUnspecified() {
			// TPROXY needs an address to look the listener up by.
			d.Dispatch = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), d.Dispatch.Port())
		}
		d.NodePortAddresses = slices.Clone(disp.NodePortAddresses)
		d.KeepClientSource = disp.KeepClientSource
		for _, sp := range disp.ServicePorts {
			for _, l := range sp.Listeners {
				if l.Kind == haproxycfg.NodePort {
					d.NodePorts = append(d.NodePorts, l.Port)
					continue
				}
				d.Served = append(d.Served, serviceguard.Binding{IP: l.Addr, Protocol: v1.ProtocolTCP, Port: l.Port})
				if l.Kind == haproxycfg.LoadBalancer && len(sp.SourceRanges) > 0 {
					d.Firewall = append(d.Firewall, serviceguard.FirewallEntry{IP: l.Addr, Port: l.Port, Allowed: sp.SourceRanges})
				}
			}
		}
	}
	return d
}
