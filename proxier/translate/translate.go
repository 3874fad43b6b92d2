// Package translate turns upstream kube-proxy's view of Services and
// endpoints (proxy.ServicePortMap and proxy.EndpointsMap, as built by
// upstream's change trackers) into the HAProxy model of package
// haproxycfg, for one IP family.
//
// One frontend per service port, one backend per distinct endpoint set
// (the endpoints for "Cluster" traffic policy, and, if the Service uses
// them, those for "Local"). Frontends depend only on the Service and the
// node, never on endpoints, except for the rare Service whose only traffic
// policy is internal Local: so endpoint churn changes only server lists,
// which HAProxy's runtime API can apply without a reload.
//
// The translation follows upstream's rules by calling them:
// proxy.CategorizeEndpoints decides which endpoints serve Cluster and Local
// traffic (readiness, terminating fallback, topology hints), and the
// ServicePort tells which addresses and policies apply to this family.
package translate

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/kubernetes/pkg/proxy"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// Bind names. Their prefixes tell ACLs, through so_name, which kind of
// address accepted a connection: the ClusterIP (internal traffic) or a
// NodePort, LoadBalancer or external IP (external traffic).
const (
	BindClusterIP          = "clusterip"
	BindNodePortPrefix     = "nodeport-"
	BindLoadBalancerPrefix = "loadbalancer-"
	BindExternalIPPrefix   = "externalip-"
	// BindNodePortAny names the wildcard NodePort bind used when NodePorts
	// listen on every local address.
	BindNodePortAny = BindNodePortPrefix + "any"
)

// ACL names.
const (
	// ACLExternal: the connection came in on a NodePort, LoadBalancer or
	// external IP.
	ACLExternal = "external"
	// ACLLoadBalancer: the connection came in on a LoadBalancer IP.
	ACLLoadBalancer = "loadbalancer"
	// ACLLBSourceAllowed: the client is in loadBalancerSourceRanges.
	ACLLBSourceAllowed = "lb-source-allowed"
	// ACLFromCluster: the client is a pod or the node itself (see
	// Options.ClusterSources).
	ACLFromCluster = "from-cluster"
)

// Suffixes of names.
const (
	// IPv6Suffix marks IPv6 objects, so the IPv4 and IPv6 models of a
	// dual-stack Service can share one HAProxy.
	IPv6Suffix = ":ipv6"
	// LocalSuffix marks the backend of node-local endpoints.
	LocalSuffix = ":local"
)

// Options is what the translation needs to know about the node.
type Options struct {
	// Family is the IP family of the proxier; every address in the model
	// belongs to it.
	Family v1.IPFamily
	// NodeName decides which endpoints are local, with topology hints.
	NodeName string
	// NodeIP is the node's primary address of Family: when a
	// loadBalancerSourceRange contains it, the LoadBalancer IPs themselves
	// are allowed as sources too (a node reaching its own local LB IP
	// connects from that IP), as upstream does.
	NodeIP netip.Addr
	// TopologyLabels are the node's labels that topology hints use.
	TopologyLabels map[string]string
	// NodePortAddresses are the local addresses NodePorts listen on.
	NodePortAddresses []netip.Addr
	// NodePortsOnAllAddresses makes NodePorts listen on the wildcard
	// address of Family instead (nodePortAddresses left empty).
	NodePortsOnAllAddresses bool
	// ClusterSources are the clients whose connections to a NodePort, LB
	// IP or external IP count as cluster traffic: under
	// externalTrafficPolicy Local they use the Cluster endpoints, never
	// the drop, as upstream's short-circuit rules do for pods (the
	// cluster's pod CIDRs) and for the node itself (its addresses). The
	// service port's own external addresses are added.
	ClusterSources []netip.Prefix
	// StickTableSize is the number of clients a sessionAffinity stick
	// table holds; 0 means haproxycfg.DefaultStickTableSize.
	StickTableSize int
}

// SkipReason says why a service port, or part of it, is not in the model.
type SkipReason string

const (
	// UnsupportedProtocol: UDP and SCTP ports; HAProxy proxies TCP only.
	UnsupportedProtocol SkipReason = "UnsupportedProtocol"
	// InvalidName: the names would not be valid HAProxy names (the API
	// server validates names, so this means a bug or a bad object).
	InvalidName SkipReason = "InvalidName"
	// NoAddress: no address of this family to listen on.
	NoAddress SkipReason = "NoAddress"
	// AddressConflict: another service port already listens on an
	// address:port this one wants; that listener is left out.
	AddressConflict SkipReason = "AddressConflict"
)

// Skipped records a service port (or one of its listeners) left out.
type Skipped struct {
	Name     proxy.ServicePortName
	Protocol v1.Protocol
	Reason   SkipReason
	Detail   string
}

// Result is the model of one family plus what was left out.
type Result struct {
	Frontends []*haproxycfg.Frontend
	Backends  []*haproxycfg.Backend
	Skipped   []Skipped
	// BadEndpoints counts endpoints ignored because their address or port
	// is unusable (wrong family, unparsable, port out of range).
	BadEndpoints int
	// NoLocalEndpointsInternal and NoLocalEndpointsExternal count service
	// ports whose Local traffic policy has no local endpoint while other
	// endpoints exist (upstream's sync_proxy_rules_no_local_endpoints_total).
	NoLocalEndpointsInternal int
	NoLocalEndpointsExternal int
}

// Translate builds the model of every service port of opts.Family.
// Service ports are handled in name order so that, when two of them
// claim the same address and port, the same one wins every time.
func Translate(opts Options, services proxy.ServicePortMap, endpoints proxy.EndpointsMap) *Result {
	names := make([]proxy.ServicePortName, 0, len(services))
	for name := range services {
		names = append(names, name)
	}
	slices.SortFunc(names, compareServicePortNames)

	res := &Result{
		Frontends: make([]*haproxycfg.Frontend, 0, len(names)),
		Backends:  make([]*haproxycfg.Backend, 0, len(names)),
	}
	listeners := make(map[netip.AddrPort]string, len(names))
	for _, name := range names {
		translateServicePort(opts, name, services[name], endpoints[name], listeners, res, nil)
	}
	return res
}

func compareServicePortNames(a, b proxy.ServicePortName) int {
	return cmp.Or(
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Name, b.Name),
		strings.Compare(a.Port, b.Port),
		strings.Compare(string(a.Protocol), string(b.Protocol)),
	)
}

// BaseName is the name of the frontend and of the Cluster-policy backend
// of a service port: namespace.service:port:protocol, where port is the
// port's name or, for an unnamed port, its number; IPv6 adds ":ipv6".
// Namespaces and Service names are DNS labels and port names IANA service
// names, none of which contain '.' or ':', so the name is unambiguous.
func BaseName(family v1.IPFamily, name proxy.ServicePortName, port int) string {
	portName := name.Port
	if portName == "" {
		portName = strconv.Itoa(port)
	}
	n := name.Namespace + "." + name.Name + ":" + portName + ":" + strings.ToLower(string(name.Protocol))
	if family == v1.IPv6Protocol {
		n += IPv6Suffix
	}
	return n
}

// LocalBackendName is the backend of the node-local endpoints.
func LocalBackendName(base string) string { return base + LocalSuffix }

func toAddr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

func (o *Options) familyOK(a netip.Addr) bool {
	return a.IsValid() && a.Is4() == (o.Family != v1.IPv6Protocol)
}

// listenerClaim is an address a service port wanted to listen on, and who
// had it already ("" if nobody: the service port got it).
type listenerClaim struct {
	addr  netip.AddrPort
	owner string
}

// translateServicePort adds the frontend and backends of one service port
// to res. With claims, it also records each address it asked for.
func translateServicePort(opts Options, name proxy.ServicePortName, svc proxy.ServicePort, eps []proxy.Endpoint, listeners map[netip.AddrPort]string, res *Result, claims *[]listenerClaim) {
	skip := func(reason SkipReason, format string, args ...any) {
		res.Skipped = append(res.Skipped, Skipped{Name: name, Protocol: svc.Protocol(), Reason: reason, Detail: fmt.Sprintf(format, args...)})
	}
	if svc.Protocol() != v1.ProtocolTCP {
		skip(UnsupportedProtocol, "HAProxy proxies TCP only, not %s", svc.Protocol())
		return
	}
	base := BaseName(opts.Family, name, svc.Port())
	local := LocalBackendName(base)
	if !haproxycfg.ValidName(local) {
		skip(InvalidName, "name %q is not a valid HAProxy name", base)
		return
	}
	port, ok := validPort(svc.Port())
	if !ok {
		skip(NoAddress, "port %d out of range", svc.Port())
		return
	}

	// Phase 1: where the service port listens. Every bind is checked
	// against the listeners of the service ports before it.
	fe := &haproxycfg.Frontend{Name: base}
	addBind := func(bindName string, a netip.Addr, p uint16) {
		ap := netip.AddrPortFrom(a, p)
		if claims != nil {
			*claims = append(*claims, listenerClaim{addr: ap, owner: listeners[ap]})
		}
		if owner, taken := listeners[ap]; taken {
			skip(AddressConflict, "%s is already served by %s", ap, owner)
			return
		}
		listeners[ap] = base
		// Service IPs (not node addresses) are local through an AnyIP
		// route only; IPv6 bind(2) needs "transparent" for them.
		transparent := a.Is6() && !a.IsUnspecified() && !strings.HasPrefix(bindName, BindNodePortPrefix)
		fe.Binds = append(fe.Binds, haproxycfg.Bind{Name: bindName, Addr: a, Port: p, Transparent: transparent})
	}
	if a, ok := toAddr(svc.ClusterIP()); ok && opts.familyOK(a) && !a.IsUnspecified() {
		addBind(BindClusterIP, a, port)
	}
	if np := svc.NodePort(); np != 0 {
		if npPort, ok := validPort(np); !ok {
			skip(NoAddress, "nodePort %d out of range", np)
		} else if opts.NodePortsOnAllAddresses {
			wildcard := netip.IPv4Unspecified()
			if opts.Family == v1.IPv6Protocol {
				wildcard = netip.IPv6Unspecified()
			}
			addBind(BindNodePortAny, wildcard, npPort)
		} else {
			for _, a := range opts.NodePortAddresses {
				if a = a.Unmap(); opts.familyOK(a) {
					addBind(BindNodePortPrefix+a.String(), a, npPort)
				}
			}
		}
	}
	var lbIPs []netip.Addr
	for _, ip := range svc.LoadBalancerVIPs() {
		if a, ok := toAddr(ip); ok && opts.familyOK(a) && !a.IsUnspecified() {
			lbIPs = append(lbIPs, a)
			addBind(BindLoadBalancerPrefix+a.String(), a, port)
		}
	}
	for _, ip := range svc.ExternalIPs() {
		if a, ok := toAddr(ip); ok && opts.familyOK(a) && !a.IsUnspecified() {
			addBind(BindExternalIPPrefix+a.String(), a, port)
		}
	}
	if len(fe.Binds) == 0 {
		skip(NoAddress, "no %s address to listen on", opts.Family)
		return
	}
	var hasInternalBind, hasExternalBind, hasLBBind bool
	for _, b := range fe.Binds {
		hasInternalBind = hasInternalBind || b.Name == BindClusterIP
		hasExternalBind = hasExternalBind || b.Name != BindClusterIP
		hasLBBind = hasLBBind || strings.HasPrefix(b.Name, BindLoadBalancerPrefix)
	}

	// Phase 2: which endpoints serve which traffic, by upstream's rules.
	clusterEps, localEps, _, hasAnyEndpoints := proxy.CategorizeEndpoints(eps, svc, opts.NodeName, opts.TopologyLabels)

	var stick *haproxycfg.StickTable
	if svc.SessionAffinityType() == v1.ServiceAffinityClientIP {
		stick = &haproxycfg.StickTable{
			IPv6:   opts.Family == v1.IPv6Protocol,
			Size:   opts.StickTableSize,
			Expire: time.Duration(svc.StickyMaxAgeSeconds()) * time.Second,
		}
	}
	// Plain concatenation: this runs for every service port at every sync.
	portDesc := "Service " + name.Namespace + "/" + name.Name + " port " + strconv.Itoa(svc.Port()) + "/" + string(svc.Protocol())
	if name.Port != "" {
		portDesc = "Service " + name.Namespace + "/" + name.Name + " port " + name.Port + " (" + strconv.Itoa(svc.Port()) + "/" + string(svc.Protocol()) + ")"
	}
	usesCluster, usesLocal := svc.UsesClusterEndpoints(), svc.UsesLocalEndpoints()
	if usesCluster {
		res.Backends = append(res.Backends, &haproxycfg.Backend{
			Name:       base,
			Comment:    portDesc + ": endpoints for traffic policy Cluster",
			StickTable: stick,
			Servers:    servers(&opts, clusterEps, res),
		})
	}
	if usesLocal {
		res.Backends = append(res.Backends, &haproxycfg.Backend{
			Name:       local,
			Comment:    portDesc + ": endpoints on node " + opts.NodeName + ", for traffic policy Local",
			StickTable: stick,
			Servers:    servers(&opts, localEps, res),
		})
	}
	internalBackend, externalBackend := base, base
	if svc.InternalPolicyLocal() {
		internalBackend = local
	}
	if svc.ExternalPolicyLocal() {
		externalBackend = local
	}

	// Phase 3: the rules. Fail-fast conditions use nbsrv, which follows
	// servers added or removed through the runtime API, so they stay right
	// without a reload.
	fe.Comment = portDesc + "; internalTrafficPolicy " + policyName(svc.InternalPolicyLocal())
	if hasExternalBind {
		fe.Comment += ", externalTrafficPolicy " + policyName(svc.ExternalPolicyLocal())
	}
	// Traffic classes, told apart by ACLs, and the backend of each:
	//   - internal: to the ClusterIP;
	//   - external from the cluster: to a NodePort, LB IP or external IP,
	//     from a pod or from the node itself; under externalTrafficPolicy
	//     Local upstream short-circuits it to the Cluster endpoints (it
	//     never left the cluster), and so do we;
	//   - external: any other client of those addresses.
	bothKinds := hasInternalBind && hasExternalBind
	var fromCluster []netip.Prefix
	if hasExternalBind && svc.ExternalPolicyLocal() {
		fromCluster = clusterSources(&opts, fe.Binds)
	}
	shortCircuit := len(fromCluster) > 0
	usesExternalACL := false
	classCond := func(external bool) haproxycfg.Condition {
		if !bothKinds {
			return nil
		}
		usesExternalACL = true
		return haproxycfg.Condition{{ACL: ACLExternal, Negate: !external}}
	}

	// Routing: default_backend for the class of most listeners,
	// use_backend for the others, most specific first.
	defaultBackend := internalBackend
	if !hasInternalBind {
		defaultBackend = externalBackend
	}
	var uses []haproxycfg.UseBackend
	if bothKinds && externalBackend != internalBackend {
		uses = append(uses, haproxycfg.UseBackend{Backend: externalBackend, Cond: classCond(true)})
	}
	if shortCircuit && (base != defaultBackend || len(uses) > 0) {
		uses = append([]haproxycfg.UseBackend{{Backend: base, Cond: append(classCond(true), haproxycfg.Term{ACL: ACLFromCluster})}}, uses...)
	}
	fe.UseBackends = uses
	fe.DefaultBackend = defaultBackend

	// Filtering and fail-fast rules, evaluated in order at accept time.
	// loadBalancerSourceRanges filter LB IPs only (not NodePorts or
	// external IPs); a client outside them is dropped, as upstream does.
	var lbACLs []haproxycfg.ACL
	if ranges := svc.LoadBalancerSourceRanges(); hasLBBind && len(ranges) > 0 {
		var prefixes []netip.Prefix
		allowFromNode := false
		for _, r := range ranges {
			a, ok := toAddr(r.IP)
			if !ok || !opts.familyOK(a) {
				continue
			}
			ones, _ := r.Mask.Size()
			p := netip.PrefixFrom(a, ones).Masked()
			prefixes = append(prefixes, p)
			allowFromNode = allowFromNode || (opts.NodeIP.IsValid() && p.Contains(opts.NodeIP.Unmap()))
		}
		if allowFromNode {
			for _, a := range lbIPs {
				prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		if len(prefixes) > 0 {
			lbACLs = []haproxycfg.ACL{
				{Name: ACLLoadBalancer, Kind: haproxycfg.ACLBindNamePrefix, Values: []string{BindLoadBalancerPrefix}},
				{Name: ACLLBSourceAllowed, Kind: haproxycfg.ACLSourceIn, Prefixes: prefixes},
			}
			fe.TCPRequestConnection = append(fe.TCPRequestConnection, haproxycfg.TCPRule{
				Action: haproxycfg.TCPSilentDrop,
				Cond:   haproxycfg.Condition{{ACL: ACLLoadBalancer}, {ACL: ACLLBSourceAllowed, Negate: true}},
			})
		}
	}
	fe.TCPRequestConnection = append(fe.TCPRequestConnection,
		failFastRules(svc, base, local, hasInternalBind, hasExternalBind, shortCircuit, hasAnyEndpoints, classCond)...)
	if hasAnyEndpoints && svc.InternalPolicyLocal() && len(localEps) == 0 {
		res.NoLocalEndpointsInternal++
	}
	if hasAnyEndpoints && svc.ExternalPolicyLocal() && len(localEps) == 0 {
		res.NoLocalEndpointsExternal++
	}

	if usesExternalACL {
		fe.ACLs = append(fe.ACLs, haproxycfg.ACL{
			Name: ACLExternal, Kind: haproxycfg.ACLBindNamePrefix,
			Values: []string{BindNodePortPrefix, BindLoadBalancerPrefix, BindExternalIPPrefix},
		})
	}
	if shortCircuit {
		fe.ACLs = append(fe.ACLs, haproxycfg.ACL{Name: ACLFromCluster, Kind: haproxycfg.ACLSourceIn, Prefixes: fromCluster})
	}
	fe.ACLs = append(fe.ACLs, lbACLs...)
	res.Frontends = append(res.Frontends, fe)
}

// clusterSources are the clients whose connections to this service
// port's external addresses count as cluster traffic: opts.ClusterSources
// (the pod CIDRs, the node's addresses) and the external addresses the
// service port listens on, because a node connecting to an address that
// is local to it uses that address as its source.
func clusterSources(opts *Options, binds []haproxycfg.Bind) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(opts.ClusterSources)+len(binds))
	seen := make(map[netip.Prefix]bool, cap(out))
	add := func(p netip.Prefix) {
		if p.IsValid() && opts.familyOK(p.Addr()) && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range opts.ClusterSources {
		add(p.Masked())
	}
	for _, b := range binds {
		if b.Name != BindClusterIP && !b.Addr.IsUnspecified() {
			add(netip.PrefixFrom(b.Addr, b.Addr.BitLen()))
		}
	}
	return out
}

// failFastRules make a connection fail at once when it cannot be served,
// as upstream's reject and drop verdicts do:
//   - no usable endpoint anywhere: reject (the client sees a reset, never
//     a hang);
//   - traffic policy Local and no endpoint on this node, while others
//     exist: drop silently (the client, or an external load balancer
//     doing health checks, tries elsewhere). External traffic from the
//     cluster is short-circuited to the Cluster endpoints, so it is never
//     dropped for want of a local endpoint.
func failFastRules(svc proxy.ServicePort, base, local string, hasInternalBind, hasExternalBind, shortCircuit, hasAnyEndpoints bool,
	classCond func(external bool) haproxycfg.Condition) []haproxycfg.TCPRule {
	noServers := func(backend string) haproxycfg.Term {
		return haproxycfg.Term{BackendHasServers: backend, Negate: true}
	}
	if !svc.UsesClusterEndpoints() {
		// Internal traffic policy Local and nothing external: there is no
		// Cluster backend whose server count could tell "nowhere" from
		// "not here", so the action follows the endpoints of this sync.
		action := haproxycfg.TCPReject
		if hasAnyEndpoints {
			action = haproxycfg.TCPSilentDrop
		}
		return []haproxycfg.TCPRule{{Action: action, Cond: haproxycfg.Condition{noServers(local)}}}
	}
	rules := []haproxycfg.TCPRule{{Action: haproxycfg.TCPReject, Cond: haproxycfg.Condition{noServers(base)}}}
	internalLocal := hasInternalBind && svc.InternalPolicyLocal()
	externalLocal := hasExternalBind && svc.ExternalPolicyLocal()
	if internalLocal && externalLocal && !shortCircuit {
		// Every listener of this frontend uses the Local backend.
		return append(rules, haproxycfg.TCPRule{Action: haproxycfg.TCPSilentDrop, Cond: haproxycfg.Condition{noServers(local)}})
	}
	if internalLocal {
		rules = append(rules, haproxycfg.TCPRule{Action: haproxycfg.TCPSilentDrop,
			Cond: append(classCond(false), noServers(local))})
	}
	if externalLocal {
		cond := classCond(true)
		if shortCircuit {
			cond = append(cond, haproxycfg.Term{ACL: ACLFromCluster, Negate: true})
		}
		rules = append(rules, haproxycfg.TCPRule{Action: haproxycfg.TCPSilentDrop, Cond: append(cond, noServers(local))})
	}
	return rules
}

// servers turns endpoints into servers, sorted by address and port, and
// skips (counting them) endpoints that cannot be servers.
func servers(opts *Options, eps []proxy.Endpoint, res *Result) []haproxycfg.Server {
	out := make([]haproxycfg.Server, 0, len(eps))
	for _, ep := range eps {
		a, err := netip.ParseAddr(ep.IP())
		if err != nil || a.Zone() != "" || !opts.familyOK(a.Unmap()) {
			res.BadEndpoints++
			continue
		}
		a = a.Unmap()
		p, ok := validPort(ep.Port())
		if !ok {
			res.BadEndpoints++
			continue
		}
		out = append(out, haproxycfg.Server{Name: haproxycfg.ServerName(a, p), Addr: a, Port: p})
	}
	slices.SortFunc(out, func(x, y haproxycfg.Server) int {
		return cmp.Or(x.Addr.Compare(y.Addr), cmp.Compare(x.Port, y.Port))
	})
	// The same endpoint listed twice (in two EndpointSlices) is one server.
	return slices.CompactFunc(out, func(x, y haproxycfg.Server) bool { return x.Addr == y.Addr && x.Port == y.Port })
}

func validPort(p int) (uint16, bool) {
	if p <= 0 || p > 65535 {
		return 0, false
	}
	return uint16(p), true
}

func policyName(local bool) string {
	if local {
		return "Local"
	}
	return "Cluster"
}
