// Package translate turns upstream kube-proxy's view of Services and
// endpoints (proxy.ServicePortMap and proxy.EndpointsMap, as built by
// upstream's change trackers) into the HAProxy model of package
// haproxycfg, for one IP family.
//
// One haproxycfg.ServicePort per service port: its listeners (ClusterIP,
// NodePort, LoadBalancer and external IPs), its endpoint sets (the
// endpoints for "Cluster" traffic policy and, if the Service uses them,
// those for "Local"), and the policies that choose between them. All of it
// ends up in HAProxy's maps, which the runtime API changes in place.
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

// Suffixes of names.
const (
	// IPv6Suffix marks IPv6 objects, so the IPv4 and IPv6 models of a
	// dual-stack Service can share one HAProxy.
	IPv6Suffix = ":ipv6"
	// LocalSuffix marks the endpoint set of node-local endpoints.
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
	// TakenNodePorts are TCP ports another process of the node listens on:
	// a NodePort among them is refused (NodePortTaken), the rest of its
	// Service port is served.
	TakenNodePorts map[uint16]bool
	// RoutedHere, when set, says whether an endpoint on this node answers
	// every client through the node's routing (hostnet.RoutedEndpoints):
	// such endpoints are EndpointSet.Routed. Its answers must not change
	// for an address while it is an endpoint (a CNI routes a pod before
	// the pod has an address to publish), so a change of it alone does
	// not translate anything again.
	RoutedHere func(netip.Addr) bool
	// OutsideNodes: the HAProxy runs on a load balancer that is not a
	// node (scopes cluster and external). No endpoint is local to it, and
	// every connection is one hop to a pod, so traffic policy Local is
	// served by every usable endpoint, as Cluster is.
	OutsideNodes bool
}

// LoadBalancerOnly is implemented by a service port of which only the
// LoadBalancer ingress IPs are served here (scope external, a Service in
// scope by its loadBalancerClass alone: the nodes' kube-proxy serves its
// ClusterIP, NodePorts and external IPs).
type LoadBalancerOnly interface {
	LoadBalancerOnly() bool
}

func loadBalancerOnly(svc proxy.ServicePort) bool {
	o, ok := svc.(LoadBalancerOnly)
	return ok && o.LoadBalancerOnly()
}

// ProxyProtocolPort is implemented by a service port whose endpoints
// expect a PROXY protocol header (a Service annotation). A non-nil error
// says the annotation is invalid: the port is served without the header
// and the error is reported (InvalidProxyProtocol).
type ProxyProtocolPort interface {
	ProxyProtocol() (haproxycfg.ProxyProtocol, error)
}

func proxyProtocol(svc proxy.ServicePort) (haproxycfg.ProxyProtocol, error) {
	if p, ok := svc.(ProxyProtocolPort); ok {
		return p.ProxyProtocol()
	}
	return haproxycfg.NoProxyProtocol, nil
}

// EndpointCheckPort is implemented by a service port whose endpoints
// HAProxy checks actively (Service annotations). A non-nil error says the
// annotations are invalid: the port is served without checks and the
// error is reported (InvalidEndpointCheck).
type EndpointCheckPort interface {
	EndpointCheck() (*haproxycfg.EndpointCheck, error)
}

func endpointCheck(svc proxy.ServicePort) (*haproxycfg.EndpointCheck, error) {
	if p, ok := svc.(EndpointCheckPort); ok {
		return p.EndpointCheck()
	}
	return nil, nil
}

// AppProtocolPort is implemented by a service port whose appProtocol the
// proxier read. A non-empty note says why a port with an appProtocol is
// relayed as TCP (AppProtocolAsTCP).
type AppProtocolPort interface {
	AppProtocol() (haproxycfg.AppProtocol, string)
}

func appProtocol(svc proxy.ServicePort) (haproxycfg.AppProtocol, string) {
	if p, ok := svc.(AppProtocolPort); ok {
		return p.AppProtocol()
	}
	return haproxycfg.AppTCP, ""
}

// everyEndpointIsCluster is a service port as a load balancer outside the
// nodes sees it: every endpoint serves every client (Options.OutsideNodes).
type everyEndpointIsCluster struct{ proxy.ServicePort }

func (everyEndpointIsCluster) UsesClusterEndpoints() bool { return true }
func (everyEndpointIsCluster) UsesLocalEndpoints() bool   { return false }

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
	// NodePortTaken: another process of the node listens on the NodePort;
	// it keeps the port, and the NodePort is left out.
	NodePortTaken SkipReason = "NodePortTaken"
	// InvalidProxyProtocol: the Service asks for a PROXY protocol version
	// that does not exist; the port is served without the header.
	InvalidProxyProtocol SkipReason = "InvalidProxyProtocol"
	// InvalidEndpointCheck: the Service's check annotations are invalid;
	// the port is served without active checks.
	InvalidEndpointCheck SkipReason = "InvalidEndpointCheck"
	// AppProtocolAsTCP: the port's appProtocol names no protocol HAProxy
	// balances per request here; its connections are relayed as TCP.
	AppProtocolAsTCP SkipReason = "AppProtocolAsTCP"
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
	// ServicePorts are sorted by name.
	ServicePorts []*haproxycfg.ServicePort
	Skipped      []Skipped
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
	var t Translator
	return t.Translate(opts, services, endpoints)
}

func compareServicePortNames(a, b proxy.ServicePortName) int {
	return cmp.Or(
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Name, b.Name),
		strings.Compare(a.Port, b.Port),
		strings.Compare(string(a.Protocol), string(b.Protocol)),
	)
}

// BaseName is the name of a service port and of its Cluster endpoint
// set: namespace.service:port:protocol, where port is the port's name or,
// for an unnamed port, its number; IPv6 adds ":ipv6". Namespaces and
// Service names are DNS labels and port names IANA service names, none of
// which contain '.' or ':', so the name is unambiguous.
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

// ParseSetName reads the Service port back from the name of one of its
// endpoint sets (BaseName, LocalSetName): its namespace, Service name and
// port name (the number for an unnamed port).
func ParseSetName(set string) (namespace, service, port string, ok bool) {
	set = strings.TrimSuffix(set, LocalSuffix)
	set = strings.TrimSuffix(set, IPv6Suffix)
	nsName, rest, ok1 := strings.Cut(set, ":")
	port, _, ok2 := strings.Cut(rest, ":")
	namespace, service, ok3 := strings.Cut(nsName, ".")
	if !ok1 || !ok2 || !ok3 || namespace == "" || service == "" || port == "" {
		return "", "", "", false
	}
	return namespace, service, port, true
}

// unambiguousName reports whether BaseName gives name a name no other
// service port can have: the namespace and the Service name contain
// neither '.' nor ':', and the port name no ':' and is not a number (which
// an unnamed port of that number would give too). The API server's
// validation ensures all this; a bad object that slips through must not
// share its endpoint set with another service port, which would make the
// whole model invalid.
func unambiguousName(name proxy.ServicePortName) bool {
	if strings.ContainsAny(name.Namespace, ".:") || strings.ContainsAny(name.Name, ".:") || strings.Contains(name.Port, ":") {
		return false
	}
	if name.Port == "" {
		return true
	}
	return strings.Trim(name.Port, "0123456789") != ""
}

// LocalSetName is the name of the endpoint set of node-local endpoints.
func LocalSetName(base string) string { return base + LocalSuffix }

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

// listenerClaim is a listener key a service port wanted, and who had it
// already ("" if nobody: the service port got it).
type listenerClaim struct {
	key   string
	owner string
}

// translateServicePort translates one service port into res, and records
// in claims each listener key it asked for (once each).
func translateServicePort(opts Options, name proxy.ServicePortName, svc proxy.ServicePort, eps []proxy.Endpoint, listeners map[string]string, res *Result, claims *[]listenerClaim) {
	skip := func(reason SkipReason, format string, args ...any) {
		res.Skipped = append(res.Skipped, Skipped{Name: name, Protocol: svc.Protocol(), Reason: reason, Detail: fmt.Sprintf(format, args...)})
	}
	if svc.Protocol() != v1.ProtocolTCP {
		skip(UnsupportedProtocol, "HAProxy proxies TCP only, not %s", svc.Protocol())
		return
	}
	base := BaseName(opts.Family, name, svc.Port())
	local := LocalSetName(base)
	if !haproxycfg.ValidName(local) {
		skip(InvalidName, "name %q is not a valid HAProxy name", base)
		return
	}
	if !unambiguousName(name) {
		skip(InvalidName, "name %q could name another service port too", base)
		return
	}
	port, ok := validPort(svc.Port())
	if !ok {
		skip(NoAddress, "port %d out of range", svc.Port())
		return
	}

	// Phase 1: where the service port is reached. Every listener is
	// checked against those of the service ports before it.
	sp := &haproxycfg.ServicePort{Name: base}
	add := func(l haproxycfg.Listener) {
		key := l.Key()
		if slices.ContainsFunc(*claims, func(c listenerClaim) bool { return c.key == key }) {
			// The same address twice in one Service (an LB IP also among
			// its externalIPs, an external IP listed twice): the first
			// listener decides (so an LB IP keeps its source ranges), and
			// it is no conflict with itself.
			return
		}
		*claims = append(*claims, listenerClaim{key: key, owner: listeners[key]})
		if owner, taken := listeners[key]; taken {
			skip(AddressConflict, "%s is already served by %s", key, owner)
			return
		}
		listeners[key] = base
		sp.Listeners = append(sp.Listeners, l)
	}
	lbOnly := loadBalancerOnly(svc)
	if a, ok := toAddr(svc.ClusterIP()); ok && opts.familyOK(a) && !a.IsUnspecified() && !lbOnly {
		add(haproxycfg.Listener{Kind: haproxycfg.ClusterIP, Addr: a, Port: port})
	}
	if np := svc.NodePort(); np != 0 && !lbOnly {
		if npPort, ok := validPort(np); !ok {
			skip(NoAddress, "nodePort %d out of range", np)
		} else if opts.TakenNodePorts[npPort] {
			skip(NodePortTaken, "nodePort %d is held by another process on node %s", np, opts.NodeName)
		} else {
			add(haproxycfg.Listener{Kind: haproxycfg.NodePort, Port: npPort})
		}
	}
	var lbIPs []netip.Addr
	for _, ip := range svc.LoadBalancerVIPs() {
		if a, ok := toAddr(ip); ok && opts.familyOK(a) && !a.IsUnspecified() {
			lbIPs = append(lbIPs, a)
			add(haproxycfg.Listener{Kind: haproxycfg.LoadBalancer, Addr: a, Port: port})
		}
	}
	for _, ip := range svc.ExternalIPs() {
		if a, ok := toAddr(ip); ok && opts.familyOK(a) && !a.IsUnspecified() && !lbOnly {
			add(haproxycfg.Listener{Kind: haproxycfg.ExternalIP, Addr: a, Port: port})
		}
	}
	if len(sp.Listeners) == 0 {
		if lbOnly {
			skip(NoAddress, "no %s LoadBalancer ingress IP assigned yet", opts.Family)
		} else {
			skip(NoAddress, "no %s address to listen on", opts.Family)
		}
		return
	}
	hasExternal := false
	for _, l := range sp.Listeners {
		hasExternal = hasExternal || l.External()
	}

	// Phase 2: which endpoints serve which traffic, by upstream's rules.
	internalLocal, externalLocal := svc.InternalPolicyLocal(), svc.ExternalPolicyLocal()
	policies := svc
	if opts.OutsideNodes {
		internalLocal, externalLocal = false, false
		policies = everyEndpointIsCluster{svc}
	}
	clusterEps, localEps, _, hasAnyEndpoints := proxy.CategorizeEndpoints(eps, policies, opts.NodeName, opts.TopologyLabels)

	// Plain concatenation: this runs for every changed service port.
	portDesc := "Service " + name.Namespace + "/" + name.Name + " port " + strconv.Itoa(svc.Port()) + "/" + string(svc.Protocol())
	if name.Port != "" {
		portDesc = "Service " + name.Namespace + "/" + name.Name + " port " + name.Port + " (" + strconv.Itoa(svc.Port()) + "/" + string(svc.Protocol()) + ")"
	}
	sp.Comment = portDesc + "; internalTrafficPolicy " + policyName(svc.InternalPolicyLocal())
	if hasExternal {
		sp.Comment += ", externalTrafficPolicy " + policyName(svc.ExternalPolicyLocal())
	}
	if opts.OutsideNodes && (svc.InternalPolicyLocal() || hasExternal && svc.ExternalPolicyLocal()) {
		sp.Comment += " (served by every endpoint: none is local to this load balancer)"
	}
	if policies.UsesClusterEndpoints() {
		sp.Cluster = &haproxycfg.EndpointSet{
			Name:      base,
			Comment:   portDesc + ": endpoints for traffic policy Cluster",
			Endpoints: endpointAddrs(&opts, clusterEps, res),
			Routed:    routedEndpoints(&opts, clusterEps),
		}
	}
	if policies.UsesLocalEndpoints() {
		sp.Local = &haproxycfg.EndpointSet{
			Name:      local,
			Comment:   portDesc + ": endpoints on node " + opts.NodeName + ", for traffic policy Local",
			Endpoints: endpointAddrs(&opts, localEps, res),
			OnNode:    true,
			Routed:    routedEndpoints(&opts, localEps),
		}
	}
	sp.InternalLocal = internalLocal
	sp.ExternalLocal = hasExternal && externalLocal
	// Upstream's short-circuit: under externalTrafficPolicy Local, pods and
	// the node itself reach every endpoint through the external addresses,
	// never the drop (their traffic never left the cluster).
	sp.ShortCircuit = sp.ExternalLocal && sp.Cluster != nil
	// Not reachable with upstream's ServicePort, but never hand the
	// renderer a reference to a missing set.
	if (sp.InternalLocal || sp.ExternalLocal) && sp.Local == nil {
		sp.Local = &haproxycfg.EndpointSet{Name: local, OnNode: true}
	}
	if (!sp.InternalLocal || hasExternal && !sp.ExternalLocal) && sp.Cluster == nil {
		sp.Cluster = &haproxycfg.EndpointSet{Name: base}
	}

	// Phase 3: fail fast. A client whose set is empty is rejected when the
	// Service has no usable endpoint anywhere, and dropped when only the
	// node has none (the client, or an external load balancer's health
	// check through healthCheckNodePort, tries elsewhere).
	sp.WhenEmpty = haproxycfg.Dropped
	if sp.Cluster != nil && len(sp.Cluster.Endpoints) == 0 || sp.Cluster == nil && !hasAnyEndpoints {
		sp.WhenEmpty = haproxycfg.Rejected
	}
	if hasAnyEndpoints && sp.InternalLocal && len(localEps) == 0 {
		res.NoLocalEndpointsInternal++
	}
	if hasAnyEndpoints && sp.ExternalLocal && len(localEps) == 0 {
		res.NoLocalEndpointsExternal++
	}

	if svc.SessionAffinityType() == v1.ServiceAffinityClientIP {
		secs := svc.StickyMaxAgeSeconds()
		if secs <= 0 {
			// The API server allows 1 to 86400 seconds; a bad object gets
			// the API's default rather than a negative timeout.
			secs = int(v1.DefaultClientIPServiceAffinitySeconds)
		}
		sp.Affinity = min(time.Duration(secs)*time.Second, haproxycfg.MaxAffinity)
	}
	if pp, err := proxyProtocol(svc); err != nil {
		skip(InvalidProxyProtocol, "%v", err)
	} else {
		sp.ProxyProtocol = pp
	}
	if app, note := appProtocol(svc); note != "" {
		skip(AppProtocolAsTCP, "%s", note)
	} else if app != haproxycfg.AppTCP && sp.ProxyProtocol != haproxycfg.NoProxyProtocol {
		skip(AppProtocolAsTCP, "a PROXY header is sent per connection, and HTTP requests of many clients share connections: relayed as TCP")
	} else {
		sp.AppProtocol = app
	}
	if check, err := endpointCheck(svc); err != nil {
		skip(InvalidEndpointCheck, "%v", err)
	} else {
		sp.Check = check
	}

	// loadBalancerSourceRanges filter the LB IPs only (not NodePorts or
	// external IPs), as upstream does; the kernel drops other sources.
	if ranges := svc.LoadBalancerSourceRanges(); len(lbIPs) > 0 && len(ranges) > 0 {
		allowFromNode := false
		for _, r := range ranges {
			// Through the text form, as upstream writes the ranges into
			// its rules: an IPv4-mapped range such as ::ffff:1.2.3.0/120
			// (which upstream counts as IPv4) becomes 1.2.3.0/24.
			p, err := netip.ParsePrefix(r.String())
			if err != nil || !opts.familyOK(p.Addr()) {
				continue
			}
			p = p.Masked()
			sp.SourceRanges = append(sp.SourceRanges, p)
			allowFromNode = allowFromNode || (opts.NodeIP.IsValid() && p.Contains(opts.NodeIP.Unmap()))
		}
		if allowFromNode {
			for _, a := range lbIPs {
				sp.SourceRanges = append(sp.SourceRanges, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	res.ServicePorts = append(res.ServicePorts, sp)
}

// endpointAddrs turns endpoints into addresses, sorted, and skips
// (counting them) endpoints that cannot be used.
func endpointAddrs(opts *Options, eps []proxy.Endpoint, res *Result) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, ep := range eps {
		a, err := netip.ParseAddr(ep.IP())
		if err != nil || a.Zone() != "" || !opts.familyOK(a.Unmap()) {
			res.BadEndpoints++
			continue
		}
		p, ok := validPort(ep.Port())
		if !ok {
			res.BadEndpoints++
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), p))
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	// The same endpoint listed twice (in two EndpointSlices) is one.
	return slices.Compact(out)
}

// routedEndpoints are the endpoints of eps on this node that
// opts.RoutedHere reports; nil when there is none.
func routedEndpoints(opts *Options, eps []proxy.Endpoint) map[netip.AddrPort]bool {
	if opts.RoutedHere == nil {
		return nil
	}
	var out map[netip.AddrPort]bool
	for _, ep := range eps {
		if !ep.IsLocal() {
			continue
		}
		a, err := netip.ParseAddr(ep.IP())
		p, ok := validPort(ep.Port())
		if err != nil || !ok || !opts.familyOK(a.Unmap()) || !opts.RoutedHere(a.Unmap()) {
			continue
		}
		if out == nil {
			out = map[netip.AddrPort]bool{}
		}
		out[netip.AddrPortFrom(a.Unmap(), p)] = true
	}
	return out
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
