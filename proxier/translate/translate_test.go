package translate

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/kubernetes/pkg/proxy"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
)

// The node the tests translate for, and the clients they trace.
const (
	nodeName  = "node-a"
	otherNode = "node-b"
)

var (
	nodeIP4 = netip.MustParseAddr("192.168.0.2")
	nodeIP6 = netip.MustParseAddr("fd00:192::2")
	// Pods are cluster sources; outside clients are not.
	podCIDR4   = netip.MustParsePrefix("10.244.0.0/16")
	podCIDR6   = netip.MustParsePrefix("fd00:10:244::/64")
	podClient  = netip.MustParseAddr("10.244.9.9")
	outside    = netip.MustParseAddr("203.0.113.50")
	outside6   = netip.MustParseAddr("2001:db8::50")
	podClient6 = netip.MustParseAddr("fd00:10:244::99")
)

// buildMaps builds upstream's service and endpoint maps from API objects
// with upstream's own change trackers, as the proxier does.
func buildMaps(family v1.IPFamily, services []*v1.Service, slices []*discovery.EndpointSlice) (proxy.ServicePortMap, proxy.EndpointsMap) {
	sct := proxy.NewServiceChangeTracker(family, nil, nil)
	for _, svc := range services {
		sct.Update(nil, svc)
	}
	sm := make(proxy.ServicePortMap)
	sm.Update(sct)
	ect := proxy.NewEndpointsChangeTracker(family, nodeName, nil, nil)
	for _, s := range slices {
		ect.EndpointSliceUpdate(s, false)
	}
	em := make(proxy.EndpointsMap)
	em.Update(ect)
	return sm, em
}

func service(ns, name, clusterIP string, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, Ports: ports},
	}
}

// loadBalancer makes svc a LoadBalancer with nodePort on its first port
// and the given ingress IPs.
func loadBalancer(svc *v1.Service, nodePort int32, ingress ...string) *v1.Service {
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.Ports[0].NodePort = nodePort
	for _, ip := range ingress {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
	}
	return svc
}

func tcp(name string, port int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Port: port, Protocol: v1.ProtocolTCP}
}

func slice(ns, svc string, addrType discovery.AddressType, port string, portNum int32, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-" + strings.ToLower(string(addrType)), Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: addrType,
		Endpoints:   eps,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(port), Port: ptr.To(portNum), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
}

// ep is a ready endpoint on node.
func ep(ip, node string) discovery.Endpoint {
	return discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node)}
}

// terminating is a terminating endpoint, still serving or not.
func terminating(ip, node string, serving bool) discovery.Endpoint {
	e := ep(ip, node)
	e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(serving), Terminating: ptr.To(true)}
	return e
}

// notReady is an endpoint that is neither ready nor terminating.
func notReady(ip, node string) discovery.Endpoint {
	e := ep(ip, node)
	e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false)}
	return e
}

func options(family v1.IPFamily) Options {
	o := Options{Family: family, NodeName: nodeName, NodeIP: nodeIP4}
	if family == v1.IPv6Protocol {
		o.NodeIP = nodeIP6
	}
	return o
}

// dispatcher puts res into the dispatcher of its family, as the proxier
// does, and checks that the model is valid and its map files well formed.
// NodePorts are served on the node IP only.
func dispatcher(t testing.TB, opts Options, res *Result) *haproxycfg.Dispatcher {
	t.Helper()
	d := &haproxycfg.Dispatcher{
		Listen:            netip.MustParseAddrPort("127.0.0.1:10400"),
		MapDir:            "/run/kube-haproxy",
		ClusterSources:    []netip.Prefix{podCIDR4},
		NodePortAddresses: []netip.Addr{nodeIP4},
		ServicePorts:      res.ServicePorts,
	}
	if opts.Family == v1.IPv6Protocol {
		d.IPv6 = true
		d.Listen = netip.MustParseAddrPort("[::1]:10400")
		d.ClusterSources = []netip.Prefix{podCIDR6}
		d.NodePortAddresses = []netip.Addr{nodeIP6}
	}
	if opts.NodeIP.IsValid() {
		d.ClusterSources = append(d.ClusterSources, netip.PrefixFrom(opts.NodeIP, opts.NodeIP.BitLen()))
	}
	require.NoError(t, haproxycfg.Validate(&haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{d}}))
	checkMapFiles(t, d)
	return d
}

// checkMapFiles renders d's map files and checks that they hold exactly
// the entries of the model, each on its own line as one key and one value
// free of blanks and comment characters, with the fields its map gives it.
func checkMapFiles(t testing.TB, d *haproxycfg.Dispatcher) {
	t.Helper()
	var wantServices, wantEndpoints []haproxycfg.MapEntry
	for _, sp := range d.ServicePorts {
		wantServices = sp.AppendDispatchEntries(wantServices)
		wantEndpoints = sp.AppendEndpointEntries(wantEndpoints)
	}
	services, endpoints, sources := haproxycfg.RenderMaps(d)
	parse := func(name string, data []byte) []haproxycfg.MapEntry {
		var out []haproxycfg.MapEntry
		for i, ln := range strings.Split(string(data), "\n") {
			if ln == "" || strings.HasPrefix(ln, "# ") {
				continue
			}
			k, v, ok := strings.Cut(ln, " ")
			if !ok || k == "" || v == "" || strings.ContainsAny(v, " ") || strings.ContainsAny(ln, "#\r\t\v\f\x00") {
				t.Fatalf("%s line %d %q: not exactly a key and a value", name, i+1, ln)
			}
			out = append(out, haproxycfg.MapEntry{Key: k, Value: v})
		}
		return out
	}
	gotServices, gotEndpoints := parse("services map", services), parse("endpoints map", endpoints)
	require.Equal(t, wantServices, gotServices, "services map")
	require.Equal(t, wantEndpoints, gotEndpoints, "endpoints map")
	require.Equal(t, gotServices, haproxycfg.ParseMap(services))
	require.Equal(t, gotEndpoints, haproxycfg.ParseMap(endpoints))

	keys := map[string]bool{}
	sets := map[string]bool{}
	// counts and gens are each set's count and generation.
	counts, gens := map[string]int{}, map[string]string{}
	for _, e := range gotServices {
		require.False(t, keys[e.Key], "services map key %q twice", e.Key)
		keys[e.Key] = true
		require.NotContains(t, e.Key, haproxycfg.FieldSeparator)
		f := strings.Split(e.Value, haproxycfg.FieldSeparator)
		if !haproxycfg.IsListenerKey(e.Key) {
			require.Len(t, f, 2, "services map value of set %q: count|generation", e.Key)
			n, err := strconv.Atoi(f[0])
			require.NoError(t, err, "services map value %q", e.Value)
			_, err = strconv.ParseUint(f[1], 10, 32)
			require.NoError(t, err, "services map value %q", e.Value)
			counts[e.Key], gens[e.Key] = n, f[1]
			continue
		}
		require.Len(t, f, 7, "services map value %q", e.Value)
		require.Contains(t, []string{"reject", "drop"}, f[2], "services map value %q", e.Value)
		// On node: the first set is a Local set, whose endpoints are all here.
		require.Equal(t, map[bool]string{true: "1", false: "0"}[strings.HasSuffix(f[0], LocalSuffix)], f[4], "services map value %q", e.Value)
		_, err := strconv.ParseUint(f[3], 10, 32)
		require.NoError(t, err, "services map value %q", e.Value)
		require.Contains(t, []string{"0", "1", "2"}, f[5], "services map value %q: PROXY protocol version", e.Value)
		require.Contains(t, []string{"0", "1", "2"}, f[6], "services map value %q: app protocol", e.Value)
		sets[f[0]], sets[f[1]] = true, true
	}
	for _, e := range gotEndpoints {
		require.False(t, keys[e.Key], "endpoints map key %q twice", e.Key)
		keys[e.Key] = true
		require.NotContains(t, e.Key, haproxycfg.FieldSeparator)
		f := strings.Split(e.Value, haproxycfg.FieldSeparator)
		parts := strings.Split(e.Key, "/")
		require.Len(t, parts, 3, "endpoints map key %q: <set>/<generation>/<index or id>", e.Key)
		set, gen, i := parts[0], parts[1], parts[2]
		require.Contains(t, gens, set, "endpoints map key %q: a set the services map lacks", e.Key)
		require.Equal(t, gens[set], gen, "endpoints map key %q: the set's generation", e.Key)
		require.True(t, len(f) == 3 || len(f) == 4 && f[3] == "1", "endpoints map value %q: address|port|id[|1]", e.Value)
		_, err := netip.ParseAddr(f[0])
		require.NoError(t, err)
		if !strings.HasPrefix(i, "ep") {
			n, err := strconv.Atoi(i)
			require.NoError(t, err, "endpoints map key %q", e.Key)
			require.Less(t, n, counts[set], "endpoints map key %q", e.Key)
		}
	}
	for set := range sets {
		require.Contains(t, counts, set, "the services map uses set %q that has no count", set)
	}
	for _, ln := range strings.Split(string(sources), "\n") {
		if ln == "" || ln[0] == '#' {
			continue
		}
		_, err := netip.ParsePrefix(ln)
		require.NoError(t, err, "cluster sources line %q", ln)
	}
}

func translate(t testing.TB, opts Options, services []*v1.Service, slices ...*discovery.EndpointSlice) (*Result, *haproxycfg.Dispatcher) {
	t.Helper()
	sm, em := buildMaps(opts.Family, services, slices)
	res := Translate(opts, sm, em)
	return res, dispatcher(t, opts, res)
}

func trace(d *haproxycfg.Dispatcher, src netip.Addr, dst string) haproxycfg.TraceResult {
	return haproxycfg.Trace(d, src, netip.MustParseAddrPort(dst))
}

func addrPorts(s ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range s {
		out = append(out, netip.MustParseAddrPort(a))
	}
	return out
}

// requireServed checks that r reaches exactly the endpoints eps.
func requireServed(t testing.TB, r haproxycfg.TraceResult, eps ...string) {
	t.Helper()
	require.Equal(t, haproxycfg.Served, r.Verdict, "%v", r)
	require.ElementsMatch(t, addrPorts(eps...), r.Endpoints, "%v", r)
}

func servicePort(t testing.TB, res *Result, name string) *haproxycfg.ServicePort {
	t.Helper()
	for _, sp := range res.ServicePorts {
		if sp.Name == name {
			return sp
		}
	}
	t.Fatalf("no service port %s in %v", name, names(res))
	return nil
}

func names(res *Result) []string {
	var out []string
	for _, sp := range res.ServicePorts {
		out = append(out, sp.Name)
	}
	return out
}

func reasons(res *Result) map[SkipReason]int {
	out := map[SkipReason]int{}
	for _, s := range res.Skipped {
		out[s.Reason]++
	}
	return out
}

func TestBaseName(t *testing.T) {
	name := func(port string, proto v1.Protocol) proxy.ServicePortName {
		return proxy.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "web"}, Port: port, Protocol: proto}
	}
	testCases := []struct {
		family v1.IPFamily
		name   proxy.ServicePortName
		port   int
		want   string
	}{
		{v1.IPv4Protocol, name("http", v1.ProtocolTCP), 80, "default.web:http:tcp"},
		{v1.IPv6Protocol, name("http", v1.ProtocolTCP), 80, "default.web:http:tcp:ipv6"},
		{v1.IPv4Protocol, name("", v1.ProtocolTCP), 8080, "default.web:8080:tcp"},
		{v1.IPv4Protocol, name("dns", v1.ProtocolUDP), 53, "default.web:dns:udp"},
	}
	for _, tc := range testCases {
		got := BaseName(tc.family, tc.name, tc.port)
		assert.Equal(t, tc.want, got)
		assert.Equal(t, tc.want+":local", LocalSetName(got))
		assert.True(t, haproxycfg.ValidName(LocalSetName(got)))
	}
}

// A ClusterIP Service: one listener, the Cluster set of its ready
// endpoints (sorted), reached from anywhere on the ClusterIP and port only.
func TestClusterIP(t *testing.T) {
	opts := options(v1.IPv4Protocol)
	res, d := translate(t, opts,
		[]*v1.Service{service("ns", "web", "172.30.0.10", tcp("http", 80))},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080,
			ep("10.244.2.1", otherNode), ep("10.244.1.1", nodeName), notReady("10.244.3.1", nodeName)))
	require.Empty(t, res.Skipped)
	require.Len(t, res.ServicePorts, 1)
	sp := res.ServicePorts[0]
	assert.Equal(t, "ns.web:http:tcp", sp.Name)
	assert.Equal(t, []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.10"), Port: 80}}, sp.Listeners)
	require.NotNil(t, sp.Cluster)
	assert.Equal(t, "ns.web:http:tcp", sp.Cluster.Name)
	assert.Equal(t, addrPorts("10.244.1.1:8080", "10.244.2.1:8080"), sp.Cluster.Endpoints)
	assert.Nil(t, sp.Local)
	assert.False(t, sp.InternalLocal || sp.ExternalLocal || sp.ShortCircuit)
	assert.Zero(t, sp.Affinity)
	assert.Empty(t, sp.SourceRanges)
	assert.Equal(t, "Service ns/web port http (80/TCP); internalTrafficPolicy Cluster", sp.Comment)
	assert.Contains(t, sp.Cluster.Comment, "traffic policy Cluster")

	for _, src := range []netip.Addr{podClient, outside, nodeIP4} {
		requireServed(t, trace(d, src, "172.30.0.10:80"), "10.244.1.1:8080", "10.244.2.1:8080")
	}
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, podClient, "172.30.0.10:8080").Verdict)
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, podClient, "172.30.0.11:80").Verdict)

	// An unnamed port is named by its number.
	res, _ = translate(t, opts, []*v1.Service{service("ns", "web", "172.30.0.10", tcp("", 80))})
	assert.Equal(t, []string{"ns.web:80:tcp"}, names(res))
	assert.Equal(t, "Service ns/web port 80/TCP; internalTrafficPolicy Cluster", res.ServicePorts[0].Comment)
}

// Without a usable endpoint the Service rejects its clients at once.
func TestNoEndpointsRejected(t *testing.T) {
	svc := loadBalancer(service("ns", "web", "172.30.0.10", tcp("http", 80)), 30080, "198.51.100.1")
	for _, eps := range [][]discovery.Endpoint{nil, {notReady("10.244.1.1", nodeName)}, {terminating("10.244.1.1", nodeName, false)}} {
		for _, etp := range []v1.ServiceExternalTrafficPolicy{v1.ServiceExternalTrafficPolicyCluster, v1.ServiceExternalTrafficPolicyLocal} {
			svc := svc.DeepCopy()
			svc.Spec.ExternalTrafficPolicy = etp
			opts := options(v1.IPv4Protocol)
			res, d := translate(t, opts, []*v1.Service{svc}, slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, eps...))
			sp := servicePort(t, res, "ns.web:http:tcp")
			assert.Equal(t, haproxycfg.Rejected, sp.WhenEmpty)
			assert.Empty(t, sp.Cluster.Endpoints)
			for _, src := range []netip.Addr{podClient, outside} {
				for _, dst := range []string{"172.30.0.10:80", "192.168.0.2:30080", "198.51.100.1:80"} {
					r := trace(d, src, dst)
					assert.Equal(t, haproxycfg.Rejected, r.Verdict, "%s %v -> %s: %v", etp, src, dst, r)
					assert.True(t, r.Refused())
				}
			}
			// Not "no local endpoints": there are none anywhere.
			assert.Zero(t, res.NoLocalEndpointsExternal)
			assert.Zero(t, res.NoLocalEndpointsInternal)
		}
	}
}

// A NodePort listener has no address and the key "*:port"; it is reached
// on the node's addresses.
func TestNodePort(t *testing.T) {
	svc := service("ns", "web", "172.30.0.10", tcp("http", 80))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	opts := options(v1.IPv4Protocol)
	res, d := translate(t, opts, []*v1.Service{svc},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName), ep("10.244.2.1", otherNode)))
	sp := servicePort(t, res, "ns.web:http:tcp")
	require.Len(t, sp.Listeners, 2)
	np := sp.Listeners[1]
	assert.Equal(t, haproxycfg.Listener{Kind: haproxycfg.NodePort, Port: 30080}, np)
	assert.False(t, np.Addr.IsValid())
	assert.Equal(t, "*:30080", np.Key())
	assert.True(t, np.External())
	assert.Equal(t, "Service ns/web port http (80/TCP); internalTrafficPolicy Cluster, externalTrafficPolicy Cluster", sp.Comment)

	requireServed(t, trace(d, outside, "192.168.0.2:30080"), "10.244.1.1:8080", "10.244.2.1:8080")
	requireServed(t, trace(d, podClient, "192.168.0.2:30080"), "10.244.1.1:8080", "10.244.2.1:8080")
	// Not on addresses that are no NodePort addresses, nor on other ports.
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, outside, "192.168.0.3:30080").Verdict)
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, outside, "172.30.0.10:30080").Verdict)
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, outside, "192.168.0.2:30081").Verdict)
	// With every address a NodePort address.
	d.NodePortAddresses = nil
	requireServed(t, trace(d, outside, "192.168.0.3:30080"), "10.244.1.1:8080", "10.244.2.1:8080")
}

// LoadBalancer ingress IPs of the family are listeners; ipMode Proxy
// ingresses (the load balancer proxies to the nodes) and hostnames are not.
func TestLoadBalancer(t *testing.T) {
	svc := loadBalancer(service("ns", "web", "172.30.0.10", tcp("http", 80)), 30080, "198.51.100.1", "fd00:db8::1")
	svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress,
		v1.LoadBalancerIngress{IP: "198.51.100.2", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
		v1.LoadBalancerIngress{IP: "198.51.100.3", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
		v1.LoadBalancerIngress{Hostname: "lb.example.com"})
	opts := options(v1.IPv4Protocol)
	res, d := translate(t, opts, []*v1.Service{svc},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName)))
	sp := servicePort(t, res, "ns.web:http:tcp")
	assert.Equal(t, []haproxycfg.Listener{
		{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.10"), Port: 80},
		{Kind: haproxycfg.NodePort, Port: 30080},
		{Kind: haproxycfg.LoadBalancer, Addr: netip.MustParseAddr("198.51.100.1"), Port: 80},
		{Kind: haproxycfg.LoadBalancer, Addr: netip.MustParseAddr("198.51.100.3"), Port: 80},
	}, sp.Listeners)
	requireServed(t, trace(d, outside, "198.51.100.1:80"), "10.244.1.1:8080")
	requireServed(t, trace(d, outside, "198.51.100.3:80"), "10.244.1.1:8080")
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, outside, "198.51.100.2:80").Verdict)
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, outside, "198.51.100.1:81").Verdict)
	assert.Empty(t, res.Skipped)
}

// externalIPs of the family are listeners; others are ignored.
func TestExternalIPs(t *testing.T) {
	svc := service("ns", "web", "172.30.0.10", tcp("http", 80))
	svc.Spec.ExternalIPs = []string{"203.0.113.7", "fd00::7", "bogus", "", "0.0.0.0"}
	opts := options(v1.IPv4Protocol)
	res, d := translate(t, opts, []*v1.Service{svc},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName)))
	sp := servicePort(t, res, "ns.web:http:tcp")
	assert.Equal(t, []haproxycfg.Listener{
		{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.10"), Port: 80},
		{Kind: haproxycfg.ExternalIP, Addr: netip.MustParseAddr("203.0.113.7"), Port: 80},
	}, sp.Listeners)
	assert.True(t, sp.Listeners[1].External())
	assert.Contains(t, sp.Comment, "externalTrafficPolicy Cluster")
	requireServed(t, trace(d, outside, "203.0.113.7:80"), "10.244.1.1:8080")
	requireServed(t, trace(d, podClient, "203.0.113.7:80"), "10.244.1.1:8080")
	assert.Empty(t, res.Skipped)
}

// loadBalancerSourceRanges filter the clients of the LoadBalancer IPs
// only; when the node IP is in a range, the LoadBalancer IPs themselves
// are allowed as sources too (the node reaching its own LB IP).
func TestLoadBalancerSourceRanges(t *testing.T) {
	lb := func(ranges ...string) *v1.Service {
		svc := loadBalancer(service("ns", "web", "172.30.0.10", tcp("http", 80)), 30080, "198.51.100.1", "198.51.100.9")
		svc.Spec.ExternalIPs = []string{"203.0.113.7"}
		svc.Spec.LoadBalancerSourceRanges = ranges
		return svc
	}
	endpoints := slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName))
	prefixes := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	opts := options(v1.IPv4Protocol)

	res, d := translate(t, opts, []*v1.Service{lb("203.0.113.0/25", " 10.0.0.0/8 ", "fd00::/8", "not-a-cidr")}, endpoints)
	sp := servicePort(t, res, "ns.web:http:tcp")
	assert.Equal(t, prefixes("203.0.113.0/25", "10.0.0.0/8"), sp.SourceRanges)
	stranger := netip.MustParseAddr("198.18.0.1")
	requireServed(t, trace(d, netip.MustParseAddr("203.0.113.5"), "198.51.100.1:80"), "10.244.1.1:8080")
	requireServed(t, trace(d, netip.MustParseAddr("10.1.2.3"), "198.51.100.9:80"), "10.244.1.1:8080")
	for _, dst := range []string{"198.51.100.1:80", "198.51.100.9:80"} {
		r := trace(d, stranger, dst)
		assert.Equal(t, haproxycfg.Dropped, r.Verdict, "%v", r)
		assert.False(t, r.Refused())
	}
	// Not the NodePort, the external IP or the ClusterIP.
	for _, dst := range []string{"192.168.0.2:30080", "203.0.113.7:80", "172.30.0.10:80"} {
		requireServed(t, trace(d, stranger, dst), "10.244.1.1:8080")
	}
	// The node reaching its LB IP connects from the LB IP: not allowed,
	// the node IP is in no range.
	assert.Equal(t, haproxycfg.Dropped, trace(d, netip.MustParseAddr("198.51.100.1"), "198.51.100.1:80").Verdict)

	// The node IP in a range: the LB IPs are sources too.
	res, d = translate(t, opts, []*v1.Service{lb("192.168.0.0/24")}, endpoints)
	assert.Equal(t, prefixes("192.168.0.0/24", "198.51.100.1/32", "198.51.100.9/32"), servicePort(t, res, "ns.web:http:tcp").SourceRanges)
	requireServed(t, trace(d, netip.MustParseAddr("198.51.100.1"), "198.51.100.1:80"), "10.244.1.1:8080")
	requireServed(t, trace(d, netip.MustParseAddr("198.51.100.9"), "198.51.100.1:80"), "10.244.1.1:8080")
	assert.Equal(t, haproxycfg.Dropped, trace(d, stranger, "198.51.100.1:80").Verdict)
	// Without a node IP, no such rule.
	noNodeIP := opts
	noNodeIP.NodeIP = netip.Addr{}
	res, _ = translate(t, noNodeIP, []*v1.Service{lb("192.168.0.0/24")}, endpoints)
	assert.Equal(t, prefixes("192.168.0.0/24"), servicePort(t, res, "ns.web:http:tcp").SourceRanges)

	// A range that holds every address filters nothing (as upstream).
	res, d = translate(t, opts, []*v1.Service{lb("203.0.113.0/25", "0.0.0.0/0")}, endpoints)
	assert.Empty(t, servicePort(t, res, "ns.web:http:tcp").SourceRanges)
	requireServed(t, trace(d, stranger, "198.51.100.1:80"), "10.244.1.1:8080")

	// Ranges are masked, and IPv4-mapped IPv6 ranges, which upstream counts
	// as IPv4, are IPv4 ranges of the same addresses.
	res, d = translate(t, opts, []*v1.Service{lb("203.0.113.77/25", "::ffff:198.18.0.0/112")}, endpoints)
	assert.Equal(t, prefixes("203.0.113.0/25", "198.18.0.0/16"), servicePort(t, res, "ns.web:http:tcp").SourceRanges)
	requireServed(t, trace(d, stranger, "198.51.100.1:80"), "10.244.1.1:8080")

	// Ranges of a Service without LB IPs are moot.
	svc := lb("203.0.113.0/25")
	svc.Status.LoadBalancer.Ingress = nil
	res, _ = translate(t, opts, []*v1.Service{svc}, endpoints)
	assert.Empty(t, servicePort(t, res, "ns.web:http:tcp").SourceRanges)
}

// externalTrafficPolicy Local: external clients reach the node's own
// endpoints; cluster sources (pods, the node) short-circuit to all of
// them, as does ClusterIP traffic. Without local endpoints external
// clients are dropped (their load balancer tries another node).
func TestExternalTrafficPolicyLocal(t *testing.T) {
	svc := loadBalancer(service("ns", "web", "172.30.0.10", tcp("http", 80)), 30080, "198.51.100.1")
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc.Spec.HealthCheckNodePort = 32000
	opts := options(v1.IPv4Protocol)
	all := []string{"10.244.1.1:8080", "10.244.2.1:8080"}

	res, d := translate(t, opts, []*v1.Service{svc},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName), ep("10.244.2.1", otherNode)))
	sp := servicePort(t, res, "ns.web:http:tcp")
	assert.True(t, sp.ExternalLocal)
	assert.True(t, sp.ShortCircuit)
	assert.False(t, sp.InternalLocal)
	require.NotNil(t, sp.Local)
	assert.Equal(t, &haproxycfg.EndpointSet{Name: "ns.web:http:tcp:local", Comment: sp.Local.Comment, Endpoints: addrPorts("10.244.1.1:8080"), OnNode: true}, sp.Local)
	assert.Contains(t, sp.Local.Comment, "on node "+nodeName)
	assert.Equal(t, addrPorts(all...), sp.Cluster.Endpoints)
	assert.Equal(t, haproxycfg.Dropped, sp.WhenEmpty)
	assert.Contains(t, sp.Comment, "externalTrafficPolicy Local")
	for _, dst := range []string{"198.51.100.1:80", "192.168.0.2:30080"} {
		r := trace(d, outside, dst)
		requireServed(t, r, "10.244.1.1:8080")
		assert.Equal(t, "ns.web:http:tcp:local", r.Set)
		for _, src := range []netip.Addr{podClient, nodeIP4} {
			r := trace(d, src, dst)
			requireServed(t, r, all...)
			assert.Equal(t, "ns.web:http:tcp", r.Set)
		}
	}
	requireServed(t, trace(d, outside, "172.30.0.10:80"), all...)
	assert.Zero(t, res.NoLocalEndpointsExternal)
	assert.Zero(t, res.NoLocalEndpointsInternal)

	// No local endpoint: external clients are dropped, cluster sources and
	// ClusterIP clients are served.
	res, d = translate(t, opts, []*v1.Service{svc},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.2.1", otherNode), ep("10.244.3.1", otherNode)))
	sp = servicePort(t, res, "ns.web:http:tcp")
	assert.Empty(t, sp.Local.Endpoints)
	assert.Equal(t, haproxycfg.Dropped, sp.WhenEmpty)
	for _, dst := range []string{"198.51.100.1:80", "192.168.0.2:30080"} {
		r := trace(d, outside, dst)
		assert.Equal(t, haproxycfg.Dropped, r.Verdict, "%v", r)
		requireServed(t, trace(d, podClient, dst), "10.244.2.1:8080", "10.244.3.1:8080")
		requireServed(t, trace(d, nodeIP4, dst), "10.244.2.1:8080", "10.244.3.1:8080")
	}
	requireServed(t, trace(d, outside, "172.30.0.10:80"), "10.244.2.1:8080", "10.244.3.1:8080")
	assert.Equal(t, 1, res.NoLocalEndpointsExternal)
	assert.Zero(t, res.NoLocalEndpointsInternal)

	// externalTrafficPolicy Local without an external address is moot.
	plain := service("ns", "plain", "172.30.0.11", tcp("http", 80))
	plain.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	res, _ = translate(t, opts, []*v1.Service{plain}, slice("ns", "plain", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.2.1", otherNode)))
	sp = servicePort(t, res, "ns.plain:http:tcp")
	assert.False(t, sp.ExternalLocal || sp.ShortCircuit)
	assert.Nil(t, sp.Local)
	assert.Zero(t, res.NoLocalEndpointsExternal)
}

// internalTrafficPolicy Local: ClusterIP clients reach the node's own
// endpoints only, and are dropped when there are none here.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	svc := service("ns", "web", "172.30.0.10", tcp("http", 80))
	svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	opts := options(v1.IPv4Protocol)

	res, d := translate(t, opts, []*v1.Service{svc},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName), ep("10.244.2.1", otherNode)))
	sp := servicePort(t, res, "ns.web:http:tcp")
	assert.True(t, sp.InternalLocal)
	assert.False(t, sp.ExternalLocal)
	assert.Nil(t, sp.Cluster, "no traffic uses the Cluster set")
	assert.Equal(t, addrPorts("10.244.1.1:8080"), sp.Local.Endpoints)
	assert.Equal(t, "Service ns/web port http (80/TCP); internalTrafficPolicy Local", sp.Comment)
	requireServed(t, trace(d, podClient, "172.30.0.10:80"), "10.244.1.1:8080")
	assert.Zero(t, res.NoLocalEndpointsInternal)

	res, d = translate(t, opts, []*v1.Service{svc},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.2.1", otherNode)))
	assert.Equal(t, haproxycfg.Dropped, trace(d, podClient, "172.30.0.10:80").Verdict)
	assert.Equal(t, 1, res.NoLocalEndpointsInternal)
	assert.Zero(t, res.NoLocalEndpointsExternal)

	res, d = translate(t, opts, []*v1.Service{svc})
	assert.Equal(t, haproxycfg.Rejected, trace(d, podClient, "172.30.0.10:80").Verdict)
	assert.Zero(t, res.NoLocalEndpointsInternal)

	// With a NodePort under externalTrafficPolicy Cluster: ClusterIP
	// clients use the local endpoints, NodePort clients all of them.
	np := svc.DeepCopy()
	np.Spec.Type = v1.ServiceTypeNodePort
	np.Spec.Ports[0].NodePort = 30080
	res, d = translate(t, opts, []*v1.Service{np},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.2.1", otherNode)))
	sp = servicePort(t, res, "ns.web:http:tcp")
	assert.True(t, sp.InternalLocal)
	assert.False(t, sp.ExternalLocal)
	require.NotNil(t, sp.Cluster)
	assert.Equal(t, haproxycfg.Dropped, trace(d, podClient, "172.30.0.10:80").Verdict)
	requireServed(t, trace(d, outside, "192.168.0.2:30080"), "10.244.2.1:8080")
	requireServed(t, trace(d, podClient, "192.168.0.2:30080"), "10.244.2.1:8080")
	assert.Equal(t, 1, res.NoLocalEndpointsInternal)
	assert.Zero(t, res.NoLocalEndpointsExternal)

	// Both policies Local: ClusterIP clients, and external clients that
	// are not cluster sources, use the local endpoints.
	both := np.DeepCopy()
	both.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	res, d = translate(t, opts, []*v1.Service{both},
		slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.2.1", otherNode)))
	assert.Equal(t, haproxycfg.Dropped, trace(d, podClient, "172.30.0.10:80").Verdict)
	assert.Equal(t, haproxycfg.Dropped, trace(d, outside, "192.168.0.2:30080").Verdict)
	requireServed(t, trace(d, podClient, "192.168.0.2:30080"), "10.244.2.1:8080")
	assert.Equal(t, 1, res.NoLocalEndpointsInternal)
	assert.Equal(t, 1, res.NoLocalEndpointsExternal)
}

// The counters sum over service ports, and count only Local policies
// that are in use and have endpoints elsewhere.
func TestNoLocalEndpointsCounters(t *testing.T) {
	var services []*v1.Service
	var slices []*discovery.EndpointSlice
	add := func(name string, itpLocal, etpLocal bool, eps ...discovery.Endpoint) {
		svc := loadBalancer(service("ns", name, fmt.Sprintf("172.30.0.%d", len(services)+1), tcp("http", 80)), int32(30000+len(services)))
		if itpLocal {
			svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}
		if etpLocal {
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
		services = append(services, svc)
		slices = append(slices, slice("ns", name, discovery.AddressTypeIPv4, "http", 8080, eps...))
	}
	remote := ep("10.244.2.1", otherNode)
	local := ep("10.244.1.1", nodeName)
	add("a", true, true, remote)                                             // both
	add("b", true, false, remote)                                            // internal
	add("c", false, true, remote)                                            // external
	add("d", true, true)                                                     // no endpoints: neither
	add("e", true, true, local, remote)                                      // local endpoints: neither
	add("f", false, false, remote)                                           // no Local policy: neither
	add("g", false, true, terminating("10.244.1.2", nodeName, true), remote) // a serving local endpoint: neither
	res, _ := translate(t, options(v1.IPv4Protocol), services, slices...)
	assert.Equal(t, 2, res.NoLocalEndpointsInternal)
	assert.Equal(t, 2, res.NoLocalEndpointsExternal)
}

// Ready endpoints first; when none is ready, serving terminating ones
// (for Cluster and Local independently), as upstream.
func TestTerminatingEndpoints(t *testing.T) {
	svc := loadBalancer(service("ns", "web", "172.30.0.10", tcp("http", 80)), 30080, "198.51.100.1")
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	opts := options(v1.IPv4Protocol)

	// Nothing ready: the serving terminating endpoints serve everyone.
	res, d := translate(t, opts, []*v1.Service{svc}, slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080,
		terminating("10.244.1.1", nodeName, true), terminating("10.244.2.1", otherNode, true), terminating("10.244.3.1", otherNode, false)))
	sp := servicePort(t, res, "ns.web:http:tcp")
	assert.Equal(t, addrPorts("10.244.1.1:8080", "10.244.2.1:8080"), sp.Cluster.Endpoints)
	assert.Equal(t, addrPorts("10.244.1.1:8080"), sp.Local.Endpoints)
	requireServed(t, trace(d, podClient, "172.30.0.10:80"), "10.244.1.1:8080", "10.244.2.1:8080")
	requireServed(t, trace(d, outside, "198.51.100.1:80"), "10.244.1.1:8080")

	// A ready endpoint elsewhere: Cluster uses it alone; Local falls back
	// to the node's serving terminating endpoint.
	res, d = translate(t, opts, []*v1.Service{svc}, slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080,
		terminating("10.244.1.1", nodeName, true), ep("10.244.2.1", otherNode)))
	sp = servicePort(t, res, "ns.web:http:tcp")
	assert.Equal(t, addrPorts("10.244.2.1:8080"), sp.Cluster.Endpoints)
	assert.Equal(t, addrPorts("10.244.1.1:8080"), sp.Local.Endpoints)
	requireServed(t, trace(d, podClient, "172.30.0.10:80"), "10.244.2.1:8080")
	requireServed(t, trace(d, outside, "198.51.100.1:80"), "10.244.1.1:8080")
	assert.Zero(t, res.NoLocalEndpointsExternal)

	// Only terminating endpoints that no longer serve: none.
	_, d = translate(t, opts, []*v1.Service{svc}, slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080,
		terminating("10.244.1.1", nodeName, false)))
	assert.Equal(t, haproxycfg.Rejected, trace(d, podClient, "172.30.0.10:80").Verdict)
	assert.Equal(t, haproxycfg.Rejected, trace(d, outside, "198.51.100.1:80").Verdict)
}

// TestTopologyHints: with zone hints for this node's zone, the Cluster set
// holds only the hinted endpoints (upstream's CategorizeEndpoints).
func TestTopologyHints(t *testing.T) {
	hinted := func(ip, zone string) discovery.Endpoint {
		e := ep(ip, otherNode)
		e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}
		return e
	}
	svcs := []*v1.Service{service("ns", "svc", "172.30.0.1", tcp("p", 80))}
	eps := slice("ns", "svc", discovery.AddressTypeIPv4, "p", 80,
		hinted("10.244.0.1", "zone-a"), hinted("10.244.0.2", "zone-b"), hinted("10.244.0.3", "zone-a"))
	opts := options(v1.IPv4Protocol)
	opts.TopologyLabels = map[string]string{v1.LabelTopologyZone: "zone-a"}
	res, d := translate(t, opts, svcs, eps)
	assert.Equal(t, addrPorts("10.244.0.1:80", "10.244.0.3:80"), servicePort(t, res, "ns.svc:p:tcp").Cluster.Endpoints)
	requireServed(t, trace(d, podClient, "172.30.0.1:80"), "10.244.0.1:80", "10.244.0.3:80")

	// A zone without hinted endpoints ignores the hints.
	opts.TopologyLabels = map[string]string{v1.LabelTopologyZone: "zone-c"}
	res, _ = translate(t, opts, svcs, eps)
	assert.Len(t, servicePort(t, res, "ns.svc:p:tcp").Cluster.Endpoints, 3)
}

// sessionAffinity ClientIP keeps a client on its endpoint for the timeout.
func TestSessionAffinity(t *testing.T) {
	withAffinity := func(timeout *int32) *v1.Service {
		svc := service("ns", "web", "172.30.0.10", tcp("http", 80))
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: timeout}}
		return svc
	}
	eps := slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName), ep("10.244.2.1", otherNode))
	opts := options(v1.IPv4Protocol)
	for _, tc := range []struct {
		timeout int32
		want    time.Duration
	}{
		{600, 10 * time.Minute},
		{1, time.Second},
		{86400, 24 * time.Hour},
		{v1.DefaultClientIPServiceAffinitySeconds, 3 * time.Hour},
		// Invalid in the API: the default rather than a negative timeout.
		{0, 3 * time.Hour},
		{-5, 3 * time.Hour},
		// Too long: the longest HAProxy's table keeps.
		{1 << 30, haproxycfg.MaxAffinity},
	} {
		res, d := translate(t, opts, []*v1.Service{withAffinity(ptr.To(tc.timeout))}, eps)
		sp := servicePort(t, res, "ns.web:http:tcp")
		assert.Equal(t, tc.want, sp.Affinity, "timeout %d", tc.timeout)
		r := trace(d, podClient, "172.30.0.10:80")
		requireServed(t, r, "10.244.1.1:8080", "10.244.2.1:8080")
		assert.True(t, r.Sticky)
		assert.True(t, strings.Contains(sp.DispatchValue(sp.Listeners[0]), "|"+strconv.Itoa(int(tc.want/time.Second))+"|"))
	}

	res, d := translate(t, opts, []*v1.Service{service("ns", "web", "172.30.0.10", tcp("http", 80))}, eps)
	assert.Zero(t, servicePort(t, res, "ns.web:http:tcp").Affinity)
	assert.False(t, trace(d, podClient, "172.30.0.10:80").Sticky)
}

// proxyProtocolPort is a service port with the proxier's PROXY protocol
// setting.
type proxyProtocolPort struct {
	proxy.ServicePort
	version haproxycfg.ProxyProtocol
	err     error
}

func (p proxyProtocolPort) ProxyProtocol() (haproxycfg.ProxyProtocol, error) { return p.version, p.err }

// The PROXY protocol version of a service port is the last field of its
// services map values; an invalid setting is reported and the port is
// served without it.
func TestProxyProtocol(t *testing.T) {
	opts := options(v1.IPv4Protocol)
	svc := loadBalancer(service("ns", "web", "172.30.0.10", tcp("http", 80)), 30080, "198.51.100.1")
	eps := slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName))
	for _, tc := range []struct {
		version haproxycfg.ProxyProtocol
		err     error
		field   string
	}{
		{haproxycfg.NoProxyProtocol, nil, "0"},
		{haproxycfg.ProxyProtocolV1, nil, "1"},
		{haproxycfg.ProxyProtocolV2, nil, "2"},
		{haproxycfg.NoProxyProtocol, errors.New("bad value"), "0"},
	} {
		sm, em := buildMaps(opts.Family, []*v1.Service{svc}, []*discovery.EndpointSlice{eps})
		for name, sp := range sm {
			sm[name] = proxyProtocolPort{sp, tc.version, tc.err}
		}
		res := Translate(opts, sm, em)
		d := dispatcher(t, opts, res)
		sp := servicePort(t, res, "ns.web:http:tcp")
		require.Len(t, sp.Listeners, 3)
		for _, l := range sp.Listeners {
			f := strings.Split(sp.DispatchValue(l), haproxycfg.FieldSeparator)
			assert.Equal(t, tc.field, f[5], "listener %s", l.Key())
		}
		requireServed(t, trace(d, outside, "198.51.100.1:80"), "10.244.1.1:8080")
		if tc.err != nil {
			require.Equal(t, []Skipped{{Name: res.Skipped[0].Name, Protocol: v1.ProtocolTCP, Reason: InvalidProxyProtocol, Detail: "bad value"}}, res.Skipped)
		} else {
			require.Empty(t, res.Skipped)
		}
	}
}

// checkedPort is a service port with the proxier's endpoint check.
type checkedPort struct {
	proxy.ServicePort
	check *haproxycfg.EndpointCheck
	err   error
}

func (p checkedPort) EndpointCheck() (*haproxycfg.EndpointCheck, error) { return p.check, p.err }

// A service port's endpoint check is in the model (and nowhere in the
// maps); invalid check settings are reported and the port served without.
func TestEndpointCheck(t *testing.T) {
	opts := options(v1.IPv4Protocol)
	svc := service("ns", "web", "172.30.0.10", tcp("http", 80))
	eps := slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName))
	check := &haproxycfg.EndpointCheck{Interval: time.Second, Rise: 2, Fall: 3}
	for _, tc := range []struct {
		check *haproxycfg.EndpointCheck
		err   error
	}{{nil, nil}, {check, nil}, {nil, errors.New("bad check")}} {
		sm, em := buildMaps(opts.Family, []*v1.Service{svc}, []*discovery.EndpointSlice{eps})
		for name, sp := range sm {
			sm[name] = checkedPort{sp, tc.check, tc.err}
		}
		res := Translate(opts, sm, em)
		d := dispatcher(t, opts, res)
		sp := servicePort(t, res, "ns.web:http:tcp")
		assert.Equal(t, tc.check, sp.Check)
		requireServed(t, trace(d, podClient, "172.30.0.10:80"), "10.244.1.1:8080")
		if tc.err != nil {
			require.Equal(t, []Skipped{{Name: res.Skipped[0].Name, Protocol: v1.ProtocolTCP, Reason: InvalidEndpointCheck, Detail: "bad check"}}, res.Skipped)
		} else {
			require.Empty(t, res.Skipped)
		}
	}
}

// appPort is a service port with the proxier's reading of its
// appProtocol and PROXY protocol annotation.
type appPort struct {
	proxy.ServicePort
	app  haproxycfg.AppProtocol
	note string
	pp   haproxycfg.ProxyProtocol
}

func (p appPort) AppProtocol() (haproxycfg.AppProtocol, string) { return p.app, p.note }
func (p appPort) ProxyProtocol() (haproxycfg.ProxyProtocol, error) {
	return p.pp, nil
}

// The app protocol of a service port is the last field of its services
// map values. A note (an appProtocol not balanced per request) and the
// PROXY protocol both keep the port TCP, and are reported.
func TestAppProtocol(t *testing.T) {
	opts := options(v1.IPv4Protocol)
	svc := service("ns", "web", "172.30.0.10", tcp("http", 80))
	eps := slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName))
	for _, tc := range []struct {
		port   appPort
		want   string
		reason SkipReason
	}{
		{appPort{app: haproxycfg.AppTCP}, "0", ""},
		{appPort{app: haproxycfg.AppHTTP1}, "1", ""},
		{appPort{app: haproxycfg.AppH2C}, "2", ""},
		{appPort{app: haproxycfg.AppTCP, note: "unknown"}, "0", AppProtocolAsTCP},
		{appPort{app: haproxycfg.AppH2C, pp: haproxycfg.ProxyProtocolV2}, "0", AppProtocolAsTCP},
	} {
		sm, em := buildMaps(opts.Family, []*v1.Service{svc}, []*discovery.EndpointSlice{eps})
		for name, sp := range sm {
			p := tc.port
			p.ServicePort = sp
			sm[name] = p
		}
		res := Translate(opts, sm, em)
		d := dispatcher(t, opts, res)
		sp := servicePort(t, res, "ns.web:http:tcp")
		f := strings.Split(sp.DispatchValue(sp.Listeners[0]), haproxycfg.FieldSeparator)
		assert.Equal(t, tc.want, f[6], "%+v", tc.port)
		requireServed(t, trace(d, podClient, "172.30.0.10:80"), "10.244.1.1:8080")
		if tc.reason == "" {
			assert.Empty(t, res.Skipped)
		} else {
			require.Len(t, res.Skipped, 1)
			assert.Equal(t, tc.reason, res.Skipped[0].Reason)
		}
	}
}

// Endpoints on this node that RoutedHere reports carry "|1" in the
// endpoints map, in every set; others, and every endpoint when RoutedHere
// is unset, do not.
func TestRoutedEndpoints(t *testing.T) {
	svc := service("ns", "web", "172.30.0.10", tcp("http", 80))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	eps := slice("ns", "web", discovery.AddressTypeIPv4, "http", 8080,
		ep("10.244.1.1", nodeName), ep("10.244.1.2", nodeName), ep("10.244.2.1", otherNode))
	opts := options(v1.IPv4Protocol)
	routed := netip.MustParseAddr("10.244.1.1")
	opts.RoutedHere = func(a netip.Addr) bool { return a == routed || a == netip.MustParseAddr("10.244.2.1") }
	res, d := translate(t, opts, []*v1.Service{svc}, eps)
	sp := servicePort(t, res, "ns.web:http:tcp")
	want := map[netip.AddrPort]bool{netip.MustParseAddrPort("10.244.1.1:8080"): true}
	assert.Equal(t, want, sp.Cluster.Routed, "only endpoints on this node")
	assert.Equal(t, want, sp.Local.Routed)
	_, endpoints, _ := haproxycfg.RenderMaps(d)
	assert.Contains(t, string(endpoints), "10.244.1.1|8080|")
	for _, e := range haproxycfg.ParseMap(endpoints) {
		routedValue := strings.Count(e.Value, "|") == 3
		assert.Equal(t, strings.HasPrefix(e.Value, "10.244.1.1|"), routedValue, e.Value)
	}
	requireServed(t, trace(d, outside, "192.168.0.2:30080"), "10.244.1.1:8080", "10.244.1.2:8080")

	opts.RoutedHere = nil
	res, _ = translate(t, opts, []*v1.Service{svc}, eps)
	assert.Nil(t, servicePort(t, res, "ns.web:http:tcp").Cluster.Routed)
}

// IPv6: names carry ":ipv6", addresses are IPv6, keys bracketed; a
// dual-stack Service gives each family its own, disjoint, service ports.
func TestIPv6(t *testing.T) {
	svc := loadBalancer(service("ns", "web", "fd00:10:96::10", tcp("http", 80)), 30080, "fd00:db8::1", "198.51.100.1")
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc.Spec.ExternalIPs = []string{"2001:db8:7::7", "203.0.113.7"}
	svc.Spec.LoadBalancerSourceRanges = []string{"2001:db8::/48", "203.0.113.0/24"}
	eps := slice("ns", "web", discovery.AddressTypeIPv6, "http", 8080,
		ep("fd00:10:244::1", nodeName), ep("fd00:10:244::2", otherNode), ep("fd00:10:244::1", nodeName))
	opts := options(v1.IPv6Protocol)
	res, d := translate(t, opts, []*v1.Service{svc}, eps)
	require.Empty(t, res.Skipped)
	sp := servicePort(t, res, "ns.web:http:tcp:ipv6")
	var keys []string
	for _, l := range sp.Listeners {
		keys = append(keys, l.Key())
	}
	assert.Equal(t, []string{"[fd00:10:96::10]:80", "*:30080", "[fd00:db8::1]:80", "[2001:db8:7::7]:80"}, keys)
	assert.Equal(t, "ns.web:http:tcp:ipv6", sp.Cluster.Name)
	assert.Equal(t, "ns.web:http:tcp:ipv6:local", sp.Local.Name)
	assert.Equal(t, addrPorts("[fd00:10:244::1]:8080", "[fd00:10:244::2]:8080"), sp.Cluster.Endpoints)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("2001:db8::/48")}, sp.SourceRanges)

	requireServed(t, trace(d, outside6, "[fd00:db8::1]:80"), "[fd00:10:244::1]:8080")
	requireServed(t, trace(d, podClient6, "[fd00:192::2]:30080"), "[fd00:10:244::1]:8080", "[fd00:10:244::2]:8080")
	// loadBalancerSourceRanges apply to pods too.
	assert.Equal(t, haproxycfg.Dropped, trace(d, podClient6, "[fd00:db8::1]:80").Verdict)
	requireServed(t, trace(d, outside6, "[fd00:192::2]:30080"), "[fd00:10:244::1]:8080")
	requireServed(t, trace(d, outside6, "[2001:db8:7::7]:80"), "[fd00:10:244::1]:8080")
	requireServed(t, trace(d, outside6, "[fd00:10:96::10]:80"), "[fd00:10:244::1]:8080", "[fd00:10:244::2]:8080")
	assert.Equal(t, haproxycfg.Dropped, trace(d, netip.MustParseAddr("2001:db9::1"), "[fd00:db8::1]:80").Verdict)

	// IPv4 endpoints and IPv4-mapped addresses are not IPv6 endpoints.
	sm, _ := buildMaps(v1.IPv6Protocol, []*v1.Service{svc}, nil)
	em := proxy.EndpointsMap{}
	for name := range sm {
		em[name] = []proxy.Endpoint{fakeEndpoint{"fd00:10:244::1", 8080}, fakeEndpoint{"10.244.1.1", 8080}, fakeEndpoint{"::ffff:10.244.1.2", 8080}}
	}
	res = Translate(opts, sm, em)
	assert.Equal(t, 2, res.BadEndpoints)
	assert.Equal(t, addrPorts("[fd00:10:244::1]:8080"), servicePort(t, res, "ns.web:http:tcp:ipv6").Cluster.Endpoints)

	// Dual stack: both families from one Service, in one HAProxy.
	dual := service("ns", "dual", "172.30.0.20", tcp("http", 80))
	dual.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	dual.Spec.ClusterIPs = []string{"172.30.0.20", "fd00:10:96::20"}
	res4, d4 := translate(t, options(v1.IPv4Protocol), []*v1.Service{dual},
		slice("ns", "dual", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName)))
	res6, d6 := translate(t, options(v1.IPv6Protocol), []*v1.Service{dual},
		slice("ns", "dual", discovery.AddressTypeIPv6, "http", 8080, ep("fd00:10:244::1", nodeName)))
	assert.Equal(t, []string{"ns.dual:http:tcp"}, names(res4))
	assert.Equal(t, []string{"ns.dual:http:tcp:ipv6"}, names(res6))
	require.NoError(t, haproxycfg.Validate(&haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{d4, d6}}))
	requireServed(t, trace(d4, podClient, "172.30.0.20:80"), "10.244.1.1:8080")
	requireServed(t, trace(d6, podClient6, "[fd00:10:96::20]:80"), "[fd00:10:244::1]:8080")
}

// fakeEndpoint is an endpoint as a buggy or hostile source could give it.
type fakeEndpoint struct {
	ip   string
	port int
}

func (e fakeEndpoint) String() string              { return fmt.Sprintf("%s:%d", e.ip, e.port) }
func (e fakeEndpoint) IP() string                  { return e.ip }
func (e fakeEndpoint) Port() int                   { return e.port }
func (e fakeEndpoint) IsLocal() bool               { return false }
func (e fakeEndpoint) IsReady() bool               { return true }
func (e fakeEndpoint) IsServing() bool             { return true }
func (e fakeEndpoint) IsTerminating() bool         { return false }
func (e fakeEndpoint) ZoneHints() sets.Set[string] { return nil }
func (e fakeEndpoint) NodeHints() sets.Set[string] { return nil }

func TestBadEndpointsAreCounted(t *testing.T) {
	sm, _ := buildMaps(v1.IPv4Protocol, []*v1.Service{service("ns", "svc", "172.30.0.1", tcp("p", 80))}, nil)
	var name proxy.ServicePortName
	for n := range sm {
		name = n
	}
	em := proxy.EndpointsMap{name: {
		fakeEndpoint{"10.0.0.1", 80},
		fakeEndpoint{"10.0.0.2", 0},
		fakeEndpoint{"10.0.0.3", 70000},
		fakeEndpoint{"10.0.0.5", -1},
		fakeEndpoint{"fd00::1", 80},
		fakeEndpoint{"fe80::1%eth0", 80},
		fakeEndpoint{"not-an-ip", 80},
		fakeEndpoint{"", 80},
		fakeEndpoint{"10.0.0.1 ", 80},
		fakeEndpoint{"::ffff:10.0.0.4", 80},
		// The same endpoint twice (two EndpointSlices) is one.
		fakeEndpoint{"10.0.0.1", 80},
	}}
	opts := options(v1.IPv4Protocol)
	res := Translate(opts, sm, em)
	assert.Equal(t, 8, res.BadEndpoints)
	assert.Equal(t, addrPorts("10.0.0.1:80", "10.0.0.4:80"), servicePort(t, res, "ns.svc:p:tcp").Cluster.Endpoints)
	d := dispatcher(t, opts, res)
	requireServed(t, trace(d, podClient, "172.30.0.1:80"), "10.0.0.1:80", "10.0.0.4:80")

	// Only bad endpoints: none, so rejected.
	em[name] = []proxy.Endpoint{fakeEndpoint{"fd00::1", 80}}
	res = Translate(opts, sm, em)
	assert.Equal(t, 1, res.BadEndpoints)
	assert.Equal(t, haproxycfg.Rejected, trace(dispatcher(t, opts, res), podClient, "172.30.0.1:80").Verdict)
}

// Two service ports claiming one listener key: the first in name order
// keeps it, the other loses that listener alone, with AddressConflict.
func TestAddressConflicts(t *testing.T) {
	opts := options(v1.IPv4Protocol)
	withExternalIP := func(svc *v1.Service, ips ...string) *v1.Service {
		svc.Spec.ExternalIPs = ips
		return svc
	}
	// "zz" comes first in the list, "aa" first in name order.
	services := []*v1.Service{
		withExternalIP(service("ns", "zz", "172.30.0.2", tcp("http", 80)), "203.0.113.7", "203.0.113.8"),
		withExternalIP(service("ns", "aa", "172.30.0.1", tcp("http", 80)), "203.0.113.7"),
	}
	for range 5 { // map order must not matter
		res, d := translate(t, opts, services,
			slice("ns", "aa", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName)),
			slice("ns", "zz", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.2.1", nodeName)))
		assert.Equal(t, []string{"ns.aa:http:tcp", "ns.zz:http:tcp"}, names(res))
		require.Len(t, res.Skipped, 1)
		s := res.Skipped[0]
		assert.Equal(t, AddressConflict, s.Reason)
		assert.Equal(t, "zz", s.Name.Name)
		assert.Equal(t, v1.ProtocolTCP, s.Protocol)
		assert.Contains(t, s.Detail, "203.0.113.7:80")
		assert.Contains(t, s.Detail, "ns.aa:http:tcp")
		requireServed(t, trace(d, outside, "203.0.113.7:80"), "10.244.1.1:8080")
		assert.Equal(t, "ns.aa:http:tcp", trace(d, outside, "203.0.113.7:80").ServicePort)
		// The loser keeps its other listeners.
		requireServed(t, trace(d, outside, "203.0.113.8:80"), "10.244.2.1:8080")
		requireServed(t, trace(d, outside, "172.30.0.2:80"), "10.244.2.1:8080")
		assert.Len(t, servicePort(t, res, "ns.zz:http:tcp").Listeners, 2)
	}

	// Namespace first: default/zz before kube-system/aa; a NodePort
	// conflicts by port alone; an LB IP may conflict with a ClusterIP.
	a := loadBalancer(service("kube-system", "aa", "172.30.0.1", tcp("http", 80)), 30080, "172.30.0.2")
	z := loadBalancer(service("default", "zz", "172.30.0.2", tcp("http", 80)), 30080)
	res, d := translate(t, opts, []*v1.Service{a, z})
	assert.Equal(t, []string{"default.zz:http:tcp", "kube-system.aa:http:tcp"}, names(res))
	assert.Equal(t, map[SkipReason]int{AddressConflict: 2}, reasons(res))
	assert.Equal(t, []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.1"), Port: 80}},
		servicePort(t, res, "kube-system.aa:http:tcp").Listeners)
	assert.Equal(t, "default.zz:http:tcp", trace(d, outside, "192.168.0.2:30080").ServicePort)
	assert.Equal(t, "default.zz:http:tcp", trace(d, outside, "172.30.0.2:80").ServicePort)

	// A service port that loses every listener is left out.
	dup := service("ns", "b", "172.30.0.1", tcp("http", 80))
	res, _ = translate(t, opts, []*v1.Service{service("ns", "a", "172.30.0.1", tcp("http", 80)), dup})
	assert.Equal(t, []string{"ns.a:http:tcp"}, names(res))
	assert.Equal(t, map[SkipReason]int{AddressConflict: 1, NoAddress: 1}, reasons(res))

	// One Service naming an address twice (an LB IP among its external
	// IPs, an external IP listed twice) is no conflict: the first listener
	// serves it, so the LB IP keeps its source ranges.
	self := loadBalancer(service("ns", "self", "172.30.0.3", tcp("http", 80)), 30081, "198.51.100.1")
	self.Spec.ExternalIPs = []string{"198.51.100.1", "203.0.113.9", "203.0.113.9"}
	self.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
	res, d = translate(t, opts, []*v1.Service{self}, slice("ns", "self", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName)))
	assert.Empty(t, res.Skipped)
	assert.Equal(t, []haproxycfg.Listener{
		{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.3"), Port: 80},
		{Kind: haproxycfg.NodePort, Port: 30081},
		{Kind: haproxycfg.LoadBalancer, Addr: netip.MustParseAddr("198.51.100.1"), Port: 80},
		{Kind: haproxycfg.ExternalIP, Addr: netip.MustParseAddr("203.0.113.9"), Port: 80},
	}, servicePort(t, res, "ns.self:http:tcp").Listeners)
	assert.Equal(t, haproxycfg.Dropped, trace(d, netip.MustParseAddr("198.18.0.1"), "198.51.100.1:80").Verdict)
}

// TestInvalidNamesAreSkipped: the API server validates names, but a bad
// object must still not reach the maps, nor share its name with another.
func TestInvalidNamesAreSkipped(t *testing.T) {
	long := strings.Repeat("x", 250)
	opts := options(v1.IPv4Protocol)
	res, d := translate(t, opts, []*v1.Service{
		service("evil\nfrontend x", "svc", "172.30.0.1", tcp("p", 80)),
		service("ns", "svc", "172.30.0.2", tcp("with space", 80)),
		service("ns", "pipe", "172.30.0.3", tcp("a|b", 80)),
		service("ns", "hash", "172.30.0.4", tcp("a#b", 80)),
		service(long, "svc", "172.30.0.5", tcp("p", 80)),
		// "a.b" + "c" and "a" + "b.c" would both be a.b.c:p:tcp.
		service("a.b", "c", "172.30.0.6", tcp("p", 80)),
		service("a", "b.c", "172.30.0.7", tcp("p", 80)),
		// "x" + "y:z" port "p" and "x" + "y" port "z:p" would be one too.
		service("x", "y:z", "172.30.0.8", tcp("p", 80)),
		service("x", "y", "172.30.0.9", tcp("z:p", 80)),
		// A port named "80" would be named as the unnamed port 80.
		service("ns", "num", "172.30.0.10", tcp("80", 80)),
		service("ns", "ok", "172.30.0.11", tcp("p", 80)),
		service("ns", "unnamed", "172.30.0.12", tcp("", 80)),
	})
	assert.Equal(t, []string{"ns.ok:p:tcp", "ns.unnamed:80:tcp"}, names(res))
	assert.Equal(t, map[SkipReason]int{InvalidName: 10}, reasons(res))
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, podClient, "172.30.0.1:80").Verdict)

	// HAProxy itself accepts the model.
	haproxytest.CheckModel(t, &haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{withMapDir(d, t.TempDir())}})
}

func withMapDir(d *haproxycfg.Dispatcher, dir string) *haproxycfg.Dispatcher {
	c := *d
	c.MapDir = dir
	return &c
}

// UDP and SCTP ports are left out with UnsupportedProtocol; the TCP ports
// of the same Service are served.
func TestUnsupportedProtocols(t *testing.T) {
	svc := service("ns", "mixed", "172.30.0.10",
		tcp("http", 80),
		v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
		v1.ServicePort{Name: "sig", Port: 9999, Protocol: v1.ProtocolSCTP})
	opts := options(v1.IPv4Protocol)
	res, d := translate(t, opts, []*v1.Service{svc}, slice("ns", "mixed", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName)))
	assert.Equal(t, []string{"ns.mixed:http:tcp"}, names(res))
	require.Len(t, res.Skipped, 2)
	for i, proto := range []v1.Protocol{v1.ProtocolUDP, v1.ProtocolSCTP} { // name order: dns, sig
		s := res.Skipped[i]
		assert.Equal(t, UnsupportedProtocol, s.Reason)
		assert.Equal(t, proto, s.Protocol)
		assert.Equal(t, proto, s.Name.Protocol)
		assert.Equal(t, "mixed", s.Name.Name)
	}
	requireServed(t, trace(d, podClient, "172.30.0.10:80"), "10.244.1.1:8080")
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, podClient, "172.30.0.10:53").Verdict)
}

// A NodePort another process of the node holds is left to it: that
// listener alone is skipped with NodePortTaken.
func TestTakenNodePorts(t *testing.T) {
	web := loadBalancer(service("ns", "web", "172.30.0.10", tcp("http", 80)), 30080, "198.51.100.1")
	web.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	np := service("ns", "np", "172.30.0.11", tcp("http", 80))
	np.Spec.Type = v1.ServiceTypeNodePort
	np.Spec.Ports[0].NodePort = 30081
	np.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	other := service("ns", "other", "172.30.0.12", tcp("http", 80))
	other.Spec.Type = v1.ServiceTypeNodePort
	other.Spec.Ports[0].NodePort = 30082
	opts := options(v1.IPv4Protocol)
	opts.TakenNodePorts = map[uint16]bool{30080: true, 30081: true, 22: true}
	eps := func(name string) *discovery.EndpointSlice {
		return slice("ns", name, discovery.AddressTypeIPv4, "http", 8080, ep("10.244.2.1", otherNode))
	}
	res, d := translate(t, opts, []*v1.Service{web, np, other}, eps("web"), eps("np"), eps("other"))
	assert.Equal(t, []string{"ns.np:http:tcp", "ns.other:http:tcp", "ns.web:http:tcp"}, names(res))
	require.Len(t, res.Skipped, 2)
	for i, name := range []string{"np", "web"} {
		s := res.Skipped[i]
		assert.Equal(t, NodePortTaken, s.Reason)
		assert.Equal(t, name, s.Name.Name)
		assert.Contains(t, s.Detail, strconv.Itoa(30080+1-i))
	}
	// web keeps its ClusterIP and LB IP, and its policy.
	sp := servicePort(t, res, "ns.web:http:tcp")
	assert.Equal(t, []haproxycfg.Listener{
		{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.10"), Port: 80},
		{Kind: haproxycfg.LoadBalancer, Addr: netip.MustParseAddr("198.51.100.1"), Port: 80},
	}, sp.Listeners)
	assert.True(t, sp.ExternalLocal)
	assert.Equal(t, haproxycfg.NotDispatched, trace(d, outside, "192.168.0.2:30080").Verdict)
	requireServed(t, trace(d, podClient, "172.30.0.10:80"), "10.244.2.1:8080")
	assert.Equal(t, haproxycfg.Dropped, trace(d, outside, "198.51.100.1:80").Verdict)
	// np is left with its ClusterIP alone: no external traffic, so its
	// externalTrafficPolicy is moot and not counted.
	sp = servicePort(t, res, "ns.np:http:tcp")
	assert.Len(t, sp.Listeners, 1)
	assert.False(t, sp.ExternalLocal)
	assert.NotContains(t, sp.Comment, "externalTrafficPolicy")
	requireServed(t, trace(d, podClient, "172.30.0.11:80"), "10.244.2.1:8080")
	assert.Equal(t, 1, res.NoLocalEndpointsExternal) // web only
	// A free NodePort is served.
	requireServed(t, trace(d, outside, "192.168.0.2:30082"), "10.244.2.1:8080")
}

// The listeners, and so what the kernel dispatches, do not depend on the
// endpoints; neither do the policies.
func TestListenersDoNotDependOnEndpoints(t *testing.T) {
	svc := loadBalancer(service("ns", "svc", "172.30.0.1", tcp("p", 80)), 30001, "198.51.100.1")
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
	opts := options(v1.IPv4Protocol)
	var got []*haproxycfg.ServicePort
	for _, eps := range [][]discovery.Endpoint{
		nil,
		{ep("10.244.0.1", otherNode)},
		{ep("10.244.0.1", nodeName), ep("10.244.0.2", otherNode)},
		{terminating("10.244.0.1", nodeName, true)},
	} {
		res, _ := translate(t, opts, []*v1.Service{svc}, slice("ns", "svc", discovery.AddressTypeIPv4, "p", 80, eps...))
		require.Len(t, res.ServicePorts, 1)
		got = append(got, res.ServicePorts[0])
	}
	for _, sp := range got[1:] {
		assert.Equal(t, got[0].Listeners, sp.Listeners)
		assert.Equal(t, got[0].SourceRanges, sp.SourceRanges)
		assert.Equal(t, got[0].Comment, sp.Comment)
		assert.Equal(t, []bool{got[0].InternalLocal, got[0].ExternalLocal, got[0].ShortCircuit}, []bool{sp.InternalLocal, sp.ExternalLocal, sp.ShortCircuit})
		assert.Equal(t, got[0].Cluster.Name, sp.Cluster.Name)
		assert.Equal(t, got[0].Local.Name, sp.Local.Name)
	}
}

// The result is sorted by service port name and the same every time.
func TestDeterministic(t *testing.T) {
	var services []*v1.Service
	for i := range 50 {
		svc := service(fmt.Sprintf("ns%d", i%3), fmt.Sprintf("svc%d", i), fmt.Sprintf("172.30.0.%d", i+1), tcp("b", 80), tcp("a", 81))
		svc.Spec.ExternalIPs = []string{fmt.Sprintf("203.0.113.%d", i%7)} // conflicts
		services = append(services, svc)
	}
	opts := options(v1.IPv4Protocol)
	first, _ := translate(t, opts, services)
	require.Len(t, first.ServicePorts, 100)
	assert.True(t, slices.IsSortedFunc(first.Skipped, func(a, b Skipped) int { return compareServicePortNames(a.Name, b.Name) }))
	for range 10 {
		res, _ := translate(t, opts, services)
		require.Equal(t, first, res)
	}
}

// haproxy -c accepts a model with every kind of service port.
func TestHAProxyAcceptsModel(t *testing.T) {
	lb := loadBalancer(service("ns", "lb", "172.30.0.1", tcp("http", 80), tcp("https", 443)), 30080, "198.51.100.1")
	lb.Spec.Ports[1].NodePort = 30443
	lb.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	lb.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24"}
	lb.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	lb.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}
	itp := service("ns", "itp", "172.30.0.2", tcp("", 80))
	itp.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	empty := service("ns", "empty", "172.30.0.3", tcp("p", 80))
	s := slice("ns", "lb", discovery.AddressTypeIPv4, "http", 8080, ep("10.244.1.1", nodeName), ep("10.244.2.1", otherNode))
	s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To("https"), Port: ptr.To[int32](8443), Protocol: ptr.To(v1.ProtocolTCP)})
	opts := options(v1.IPv4Protocol)
	res, d := translate(t, opts, []*v1.Service{lb, itp, empty}, s,
		slice("ns", "itp", discovery.AddressTypeIPv4, "", 8080, ep("10.244.1.1", nodeName)))
	require.Len(t, res.ServicePorts, 4)
	haproxytest.CheckModel(t, &haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{withMapDir(d, t.TempDir())}})
}

// benchmarkServices builds n Services with one TCP port and eps endpoints
// each, half of them LoadBalancers with externalTrafficPolicy Local (and
// NodePorts beyond the default range, so that none conflict).
func benchmarkServices(n, eps int) ([]*v1.Service, []*discovery.EndpointSlice) {
	services := make([]*v1.Service, 0, n)
	slices := make([]*discovery.EndpointSlice, 0, n)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		svc := service("bench", name, fmt.Sprintf("172.%d.%d.%d", 16+i/65536, (i/256)%256, i%256), tcp("http", 80))
		if i%2 == 0 {
			loadBalancer(svc, int32(30000+i/2), fmt.Sprintf("198.%d.%d.%d", 18+i/65536, (i/256)%256, i%256))
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		}
		services = append(services, svc)
		var endpoints []discovery.Endpoint
		for j := range eps {
			k := i*eps + j
			node := fmt.Sprintf("node-%d", k%20)
			if k%20 == 0 {
				node = nodeName
			}
			endpoints = append(endpoints, ep(fmt.Sprintf("10.%d.%d.%d", k/65536, (k/256)%256, k%256), node))
		}
		slices = append(slices, slice("bench", name, discovery.AddressTypeIPv4, "http", 8080, endpoints...))
	}
	return services, slices
}

func benchmarkMaps(n, eps int) (proxy.ServicePortMap, proxy.EndpointsMap) {
	services, slices := benchmarkServices(n, eps)
	return buildMaps(v1.IPv4Protocol, services, slices)
}

// BenchmarkTranslate: 10,000 Services x 10 endpoints, the whole model of a
// sync. Run with: go test -run XXX -bench . -benchmem ./proxier/translate
func BenchmarkTranslate(b *testing.B) {
	sm, em := benchmarkMaps(10000, 10)
	opts := options(v1.IPv4Protocol)
	b.ReportAllocs()
	for b.Loop() {
		if res := Translate(opts, sm, em); len(res.ServicePorts) != 10000 || len(res.Skipped) != 0 {
			b.Fatalf("got %d service ports, %d skipped", len(res.ServicePorts), len(res.Skipped))
		}
	}
}

// BenchmarkTranslateAndRenderMaps adds rendering the map files.
func BenchmarkTranslateAndRenderMaps(b *testing.B) {
	sm, em := benchmarkMaps(10000, 10)
	opts := options(v1.IPv4Protocol)
	b.ReportAllocs()
	for b.Loop() {
		res := Translate(opts, sm, em)
		services, endpoints, _ := haproxycfg.RenderMaps(&haproxycfg.Dispatcher{MapDir: "/run/kube-haproxy", ServicePorts: res.ServicePorts})
		b.SetBytes(int64(len(services) + len(endpoints)))
	}
}
