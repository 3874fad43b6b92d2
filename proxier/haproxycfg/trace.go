package haproxycfg

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
)

// TraceResult says where one connection goes.
type TraceResult struct {
	Verdict Verdict
	// ServicePort and Listener are what the destination selected.
	ServicePort string
	Listener    string
	// Set is the endpoint set the connection used.
	Set string
	// Endpoints are those the connection may reach (one is picked at
	// random, or the client's own with affinity).
	Endpoints []netip.AddrPort
	// Sticky is true when the Service port keeps clients on one endpoint.
	Sticky bool
}

// Refused reports whether the client is told at once that the connection
// failed (the guard's reset, or a reject), as opposed to being dropped or
// served.
func (r TraceResult) Refused() bool { return r.Verdict == NotDispatched || r.Verdict == Rejected }

func (r TraceResult) String() string {
	if r.Verdict == Served {
		return fmt.Sprintf("%s via %s (%s) -> %s %v", r.Verdict, r.ServicePort, r.Listener, r.Set, r.Endpoints)
	}
	return fmt.Sprintf("%s (%s %s)", r.Verdict, r.ServicePort, r.Listener)
}

// Trace interprets d for one TCP connection from src to dst the way the
// kernel and HAProxy would, reading the same map entries that RenderMaps
// writes:
//
//   - the kernel dispatches dst when it is a listener's address and port,
//     or a NodePort on a node address (in NodePortAddresses, or, when that
//     is empty, any address that is no listener's: Trace does not know the
//     ServiceCIDRs), dropping sources outside loadBalancerSourceRanges;
//   - HAProxy then follows the rules renderDispatcher writes.
func Trace(d *Dispatcher, src netip.Addr, dst netip.AddrPort) TraceResult {
	var services, endpoints []MapEntry
	serviceIPs := map[netip.Addr]bool{}
	for _, sp := range d.ServicePorts {
		services = sp.AppendDispatchEntries(services)
		endpoints = sp.AppendEndpointEntries(endpoints)
		for _, l := range sp.Listeners {
			if l.Kind != NodePort {
				serviceIPs[l.Addr] = true
			}
		}
	}
	return trace(d, lookupTable(services), lookupTable(endpoints), serviceIPs, src, dst)
}

// lookupTable is map_str: the first entry of a key wins.
func lookupTable(entries []MapEntry) map[string]string {
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		if _, dup := m[e.Key]; !dup {
			m[e.Key] = e.Value
		}
	}
	return m
}

func trace(d *Dispatcher, services, endpoints map[string]string, serviceIPs map[netip.Addr]bool, src netip.Addr, dst netip.AddrPort) TraceResult {
	// The kernel: is dst dispatched at all?
	sp, l := d.listenerFor(dst, serviceIPs)
	if sp == nil {
		return TraceResult{Verdict: NotDispatched}
	}
	res := TraceResult{ServicePort: sp.Name, Listener: l.Key(), Sticky: sp.Affinity > 0}
	if l.Kind == LoadBalancer && len(sp.SourceRanges) > 0 && !containsAddr(sp.SourceRanges, src) {
		res.Verdict = Dropped
		return res
	}
	// HAProxy: the rules of renderDispatcher.
	key := netip.AddrPortFrom(dst.Addr(), dst.Port()).String()
	value, ok := services[key]
	if !ok {
		value, ok = services["*:"+strconv.Itoa(int(dst.Port()))]
	}
	if !ok {
		res.Verdict = Rejected
		return res
	}
	fields := strings.Split(value, FieldSeparator)
	res.Set = fields[0]
	if containsAddr(d.ClusterSources, src) {
		res.Set = fields[1]
	}
	// The set's count and generation, in the services map.
	n, gen, _ := ParseSetValue(services[res.Set])
	prefix := (&EndpointSet{Name: res.Set, Generation: gen}).EntryPrefix()
	if n == 0 {
		if fields[2] == Rejected.mapWord() {
			res.Verdict = Rejected
		} else {
			res.Verdict = Dropped
		}
		return res
	}
	for i := 0; i < n; i++ {
		v, ok := endpoints[prefix+strconv.Itoa(i)]
		if !ok {
			res.Verdict = Rejected
			return res
		}
		ep, err := parseEndpointValue(v)
		if err != nil {
			res.Verdict = Rejected
			return res
		}
		res.Endpoints = append(res.Endpoints, ep)
	}
	res.Verdict = Served
	return res
}

// Pick returns one of r's endpoints as HAProxy would choose without
// affinity: uniformly at random.
func (r TraceResult) Pick() netip.AddrPort {
	if len(r.Endpoints) == 0 {
		return netip.AddrPort{}
	}
	return r.Endpoints[rand.IntN(len(r.Endpoints))]
}

func parseEndpointValue(v string) (netip.AddrPort, error) {
	f := strings.Split(v, FieldSeparator)
	if len(f) != 3 && (len(f) != 4 || f[3] != "1") {
		return netip.AddrPort{}, fmt.Errorf("endpoint value %q: want address|port|id[|1]", v)
	}
	a, err := netip.ParseAddr(f[0])
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(f[1], 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// listenerFor is the kernel's dispatch decision: the Service port and
// listener dst reaches, or nil.
func (d *Dispatcher) listenerFor(dst netip.AddrPort, serviceIPs map[netip.Addr]bool) (*ServicePort, Listener) {
	for _, sp := range d.ServicePorts {
		for _, l := range sp.Listeners {
			if l.Kind != NodePort && l.Addr == dst.Addr() && l.Port == dst.Port() {
				return sp, l
			}
		}
	}
	nodeAddr := !serviceIPs[dst.Addr()]
	if len(d.NodePortAddresses) > 0 {
		nodeAddr = false
		for _, a := range d.NodePortAddresses {
			nodeAddr = nodeAddr || a == dst.Addr()
		}
	}
	if !nodeAddr {
		return nil, Listener{}
	}
	for _, sp := range d.ServicePorts {
		for _, l := range sp.Listeners {
			if l.Kind == NodePort && l.Port == dst.Port() {
				return sp, l
			}
		}
	}
	return nil, Listener{}
}

func containsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
