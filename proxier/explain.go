package proxier

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/kubernetes/pkg/proxy"

	"kube-haproxy.io/kube-haproxy/proxier/endpointcheck"
	"kube-haproxy.io/kube-haproxy/proxier/explain"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/translate"
)

// runtimeReadTimeout bounds the runtime API reads of one explanation: a
// stuck HAProxy must not hang the operator's request.
const runtimeReadTimeout = 3 * time.Second

// explainer explains Services from the Proxiers of one kube-proxy (one
// per IP family), the models they applied and HAProxy's runtime API.
type explainer struct {
	proxiers []*Proxier
	applied  *appliedLog
	// api reads HAProxy's live maps and checks; nil: not read.
	api runtimeapi.Interface
}

// Explain implements explain.Explainer.
func (e *explainer) Explain(ctx context.Context, namespace, name string) (*explain.Service, bool) {
	s := &explain.Service{Namespace: namespace, Name: name}
	for _, p := range e.proxiers {
		if f, ok := p.explain(ctx, types.NamespacedName{Namespace: namespace, Name: name}, e.applied, e.api); ok {
			s.Families = append(s.Families, f)
		}
	}
	return s, len(s.Families) > 0
}

// provider is the proxy.Provider kube-proxy runs, which also serves the
// explanations (explain.PathPrefix) on kube-proxy's metrics address:
// the kube-proxy patch mounts a Provider that is an http.Handler under
// /<mode>/.
type provider struct {
	proxy.Provider
	handler http.Handler
}

func newProvider(p proxy.Provider, e *explainer) *provider {
	return &provider{Provider: p, handler: explain.Handler(e)}
}

func (p *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.handler.ServeHTTP(w, r) }

// portFacts is what the Proxier knows of one Service port at its last sync.
type portFacts struct {
	name proxy.ServicePortName
	svc  proxy.ServicePort
	eps  []proxy.Endpoint
}

// explain reads the facts of Service name in p's family; false when p
// has no port of it.
func (p *Proxier) explain(ctx context.Context, name types.NamespacedName, applied *appliedLog, api runtimeapi.Interface) (explain.Family, bool) {
	var facts []portFacts
	p.mu.Lock()
	for spn, svc := range p.svcPortMap {
		if spn.NamespacedName == name {
			facts = append(facts, portFacts{name: spn, svc: svc, eps: slices.Clone(p.endpointsMap[spn])})
		}
	}
	zone := p.topologyLabels[v1.LabelTopologyZone]
	checker := p.checker
	p.mu.Unlock()
	if len(facts) == 0 {
		return explain.Family{}, false
	}
	slices.SortFunc(facts, func(a, b portFacts) int {
		return cmp.Or(cmp.Compare(a.svc.Port(), b.svc.Port()), cmp.Compare(a.name.Port, b.name.Port), cmp.Compare(a.name.Protocol, b.name.Protocol))
	})

	d := &haproxycfg.Dispatcher{IPv6: p.ipFamily == v1.IPv6Protocol, MapDir: p.cfg.StateDir}
	f := explain.Family{
		Family:        string(p.ipFamily),
		Frontend:      d.FrontendName(),
		ServicesMap:   d.ServicesMap(),
		EndpointsMap:  d.EndpointsMap(),
		ChecksBackend: d.ChecksName(),
	}
	live := readLive(ctx, api, d)
	f.Runtime = live.state
	for _, pf := range facts {
		f.Ports = append(f.Ports, p.explainPort(pf, applied, live, checker, zone))
	}
	return f, true
}

// live is what HAProxy's runtime API holds for a family.
type live struct {
	state    explain.RuntimeState
	services map[string]string
	// checks are the rows of the checks backend by server name.
	checks map[string]runtimeapi.StatRow
	// frontendSessions is the dispatcher's current connection count (-1:
	// unknown).
	frontendSessions int
}

func readLive(ctx context.Context, api runtimeapi.Interface, d *haproxycfg.Dispatcher) *live {
	l := &live{frontendSessions: -1}
	if api == nil {
		l.state.Error = "no runtime API"
		return l
	}
	ctx, cancel := context.WithTimeout(ctx, runtimeReadTimeout)
	defer cancel()
	toMap := func(entries []runtimeapi.MapEntry) map[string]string {
		m := make(map[string]string, len(entries))
		for _, e := range entries {
			m[e.Key] = e.Value
		}
		return m
	}
	svcs, err := api.ShowMap(ctx, d.ServicesMap())
	if err != nil {
		l.state.Error = err.Error()
		return l
	}
	// The services map holds every set's count and generation too; the
	// endpoints map (the large one) is not read.
	l.services = toMap(svcs)
	l.state.Read = true
	// The checks backend and the frontend are informative: without them
	// the maps still say what is served.
	if rows, err := api.ShowStat(ctx, d.ChecksName(), d.FrontendName()); err == nil {
		l.checks = map[string]runtimeapi.StatRow{}
		for _, r := range rows {
			switch {
			case r.Proxy == d.FrontendName() && r.Name == "FRONTEND":
				l.frontendSessions = r.CurrentSessions
			case r.Proxy == d.ChecksName() && r.Name != "BACKEND":
				l.checks[r.Name] = r
			}
		}
	}
	return l
}

func match(want, have string, ok bool, read bool) explain.Match {
	switch {
	case !read:
		return explain.Unknown
	case !ok:
		return explain.Missing
	case want != have:
		return explain.Differs
	}
	return explain.Present
}

func (p *Proxier) explainPort(pf portFacts, applied *appliedLog, l *live, checker *endpointcheck.Checker, zone string) explain.Port {
	svc := pf.svc
	port := explain.Port{
		Dispatch:              []explain.DispatchEntry{},
		Sets:                  []explain.Set{},
		Port:                  pf.name.Port,
		Number:                svc.Port(),
		Protocol:              string(svc.Protocol()),
		InternalTrafficPolicy: policyWord(svc.InternalPolicyLocal()),
	}
	if svc.NodePort() != 0 || len(svc.ExternalIPs()) > 0 || len(svc.LoadBalancerVIPs()) > 0 {
		port.ExternalTrafficPolicy = policyWord(svc.ExternalPolicyLocal())
	}
	if svc.Protocol() != v1.ProtocolTCP {
		port.NotServed = "HAProxy proxies TCP only"
		if p.delegate != nil {
			port.NotServed += "; served by upstream's nftables proxier on this host"
		}
		port.Endpoints = explainEndpoints(pf.eps, nil, nil, zone, nil)
		return port
	}
	base := translate.BaseName(p.ipFamily, pf.name, svc.Port())
	var ap appliedPort
	ok := false
	if applied != nil {
		ap, _, ok = applied.port(p.ipFamily, base)
	}
	if !ok {
		port.NotServed = "not in the model HAProxy serves: see the Service's events (a taken NodePort, an invalid name, no address of this family), or the next sync"
		port.Endpoints = explainEndpoints(pf.eps, nil, nil, zone, nil)
		return port
	}
	sp := ap.port
	port.Served = true
	port.Name = sp.Name
	if sp.Affinity > 0 {
		port.AffinitySeconds = int(sp.Affinity / time.Second)
	}
	port.AppProtocol = [...]string{"tcp", "http", "h2c"}[min(int(sp.AppProtocol), 2)]
	if sp.ProxyProtocol != haproxycfg.NoProxyProtocol {
		port.ProxyProtocol = "v" + strconv.Itoa(int(sp.ProxyProtocol))
	}
	if sp.Check != nil {
		port.Check = fmt.Sprintf("tcp every %v, rise %d, fall %d", sp.Check.Interval, sp.Check.Rise, sp.Check.Fall)
	}
	port.WhenEmpty = string(sp.WhenEmpty)
	if !ap.changed.IsZero() {
		t := ap.changed
		port.LastChange = &t
	}
	port.Reloaded = ap.reloaded

	for _, lis := range sp.Listeners {
		want := sp.DispatchValue(lis)
		have, found := l.services[lis.Key()]
		port.Dispatch = append(port.Dispatch, explain.DispatchEntry{
			Kind: lis.Kind.String(), Key: lis.Key(), Value: want, InHAProxy: have,
			Match: match(want, have, found, l.state.Read),
		})
	}
	for _, set := range []struct {
		policy string
		set    *haproxycfg.EndpointSet
	}{{"Cluster", sp.Cluster}, {"Local", sp.Local}} {
		if set.set == nil {
			continue
		}
		// The set's count and generation, in the services map.
		want := set.set.SetValue()
		have, found := l.services[set.set.Name]
		n := -1
		if v, _, ok := haproxycfg.ParseSetValue(have); found && ok {
			n = v
		}
		port.Sets = append(port.Sets, explain.Set{Name: set.set.Name, Policy: set.policy, Endpoints: len(set.set.Endpoints),
			InHAProxy: n, Match: match(want, have, found, l.state.Read)})
	}
	var check func(netip.AddrPort) *explain.Check
	if sp.Check != nil && checker != nil {
		check = func(ep netip.AddrPort) *explain.Check {
			t := endpointcheck.Target{Endpoint: ep, Check: *sp.Check}
			c := &explain.Check{Server: t.ServerName(), Status: "absent", Down: checker.Down(t)}
			if r, ok := l.checks[c.Server]; ok {
				c.Status, c.Result, c.Detail = r.Status, r.Fields["check_status"], r.Fields["check_desc"]
			} else if !l.state.Read {
				c.Status = "unknown"
			}
			return c
		}
	}
	port.Endpoints = explainEndpoints(pf.eps, sp, check, zone, p.familyOf)
	port.Connections = "not counted per endpoint: the dispatcher reaches every endpoint through one server (set-dst), so HAProxy keeps no per-endpoint counter"
	if l.frontendSessions >= 0 {
		port.Connections += fmt.Sprintf("; frontend %s has %d now, all Services of the family", (&haproxycfg.Dispatcher{IPv6: p.ipFamily == v1.IPv6Protocol}).FrontendName(), l.frontendSessions)
	}
	return port
}

// familyOf reports whether a is of p's family (the translation leaves
// other endpoints out).
func (p *Proxier) familyOf(a netip.Addr) bool { return a.Is6() == (p.ipFamily == v1.IPv6Protocol) }

func policyWord(local bool) string {
	if local {
		return "Local"
	}
	return "Cluster"
}

// explainEndpoints says, for each endpoint of the EndpointSlices, which of
// sp's sets it is in and why not the others. Without sp (a port HAProxy
// does not serve) only the conditions are given.
func explainEndpoints(eps []proxy.Endpoint, sp *haproxycfg.ServicePort, check func(netip.AddrPort) *explain.Check, zone string, familyOK func(netip.Addr) bool) []explain.Endpoint {
	out := make([]explain.Endpoint, 0, len(eps))
	for _, ep := range eps {
		e := explain.Endpoint{
			Address:     ep.String(),
			Local:       ep.IsLocal(),
			Ready:       ep.IsReady(),
			Serving:     ep.IsServing(),
			Terminating: ep.IsTerminating(),
			ZoneHints:   sortedSet(ep.ZoneHints()),
			NodeHints:   sortedSet(ep.NodeHints()),
			InSets:      []string{},
		}
		addr, err := netip.ParseAddrPort(ep.String())
		valid := err == nil && addr.Addr().Zone() == "" && addr.Port() != 0 && (familyOK == nil || familyOK(addr.Addr().Unmap()))
		if valid {
			addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
		}
		if sp != nil && sp.Check != nil && check != nil && valid {
			e.Check = check(addr)
		}
		if sp != nil {
			for _, set := range []struct {
				policy string
				set    *haproxycfg.EndpointSet
			}{{"Cluster", sp.Cluster}, {"Local", sp.Local}} {
				if set.set == nil {
					continue
				}
				if valid && slices.Contains(set.set.Endpoints, addr) {
					e.InSets = append(e.InSets, set.policy)
					continue
				}
				e.Out = append(e.Out, exclusion(set.policy, e, valid, zone))
			}
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b explain.Endpoint) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// exclusion is why endpoint e is not in the set of policy. The order
// follows upstream's CategorizeEndpoints: readiness first, then the node
// of a Local set, then terminating endpoints (used only when no ready
// one is left), then what this proxier adds (checks, addresses).
func exclusion(policy string, e explain.Endpoint, valid bool, zone string) explain.Exclusion {
	x := explain.Exclusion{Policy: policy}
	switch {
	case !valid:
		x.Reason, x.Detail = explain.BadAddress, "address not usable by HAProxy in this family"
	case !e.Serving:
		x.Reason, x.Detail = explain.NotReady, "not ready"
		if e.Terminating {
			x.Detail = "not ready, terminating"
		}
	case policy == "Local" && !e.Local:
		x.Reason, x.Detail = explain.OtherNode, "on another node (traffic policy Local)"
	case e.Terminating:
		x.Reason, x.Detail = explain.Terminating, "terminating; used only while the set has no ready endpoint"
	case e.Check != nil && e.Check.Down:
		x.Reason, x.Detail = explain.FailingCheck, "failing its active check"
	case len(e.ZoneHints) > 0 || len(e.NodeHints) > 0:
		x.Reason, x.Detail = explain.Topology, "topology hints for zones ["+strings.Join(e.ZoneHints, " ")+"] nodes ["+strings.Join(e.NodeHints, " ")+"], this node's zone "+strconv.Quote(zone)
	default:
		x.Reason, x.Detail = explain.Pending, "qualifies; not applied yet (next sync)"
	}
	return x
}

func sortedSet(s sets.Set[string]) []string {
	if len(s) == 0 {
		return nil
	}
	return sets.List(s)
}
