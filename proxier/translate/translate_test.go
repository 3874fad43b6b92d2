package translate

import (
	"fmt"
	"net/netip"
	"testing"

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

const nodeName = "node-a"

// maps builds upstream's service and endpoint maps from API objects with
// upstream's own change trackers, as the proxier does.
func maps(family v1.IPFamily, services []*v1.Service, slices []*discovery.EndpointSlice) (proxy.ServicePortMap, proxy.EndpointsMap) {
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
		Spec:       v1.ServiceSpec{ClusterIP: clusterIP, Ports: ports},
	}
}

func tcp(name string, port int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Port: port, Protocol: v1.ProtocolTCP}
}

func slice(ns, svc string, addrType discovery.AddressType, port string, portNum int32, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-1", Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: addrType,
		Endpoints:   eps,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(port), Port: ptr.To(portNum), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
}

func ep(ip, node string) discovery.Endpoint {
	return discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node)}
}

func config(res *Result) *haproxycfg.Config {
	return &haproxycfg.Config{Frontends: res.Frontends, Backends: res.Backends}
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
		assert.True(t, haproxycfg.ValidName(LocalBackendName(got)))
	}
}

// TestTopologyHints: with zone hints for this node's zone, the Cluster
// backend holds only the hinted endpoints (upstream's CategorizeEndpoints).
func TestTopologyHints(t *testing.T) {
	hinted := func(ip, zone string) discovery.Endpoint {
		e := ep(ip, "elsewhere")
		e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}
		return e
	}
	sm, em := maps(v1.IPv4Protocol,
		[]*v1.Service{service("ns", "svc", "172.30.0.1", tcp("p", 80))},
		[]*discovery.EndpointSlice{slice("ns", "svc", discovery.AddressTypeIPv4, "p", 80,
			hinted("10.0.0.1", "zone-a"), hinted("10.0.0.2", "zone-b"), hinted("10.0.0.3", "zone-a"))})
	opts := Options{Family: v1.IPv4Protocol, NodeName: nodeName, TopologyLabels: map[string]string{v1.LabelTopologyZone: "zone-a"}}
	res := Translate(opts, sm, em)
	be := config(res).Backend("ns.svc:p:tcp")
	require.NotNil(t, be)
	var got []string
	for _, s := range be.Servers {
		got = append(got, s.Name)
	}
	assert.Equal(t, []string{"10.0.0.1:80", "10.0.0.3:80"}, got)

	// A zone without hinted endpoints ignores the hints.
	opts.TopologyLabels = map[string]string{v1.LabelTopologyZone: "zone-c"}
	res = Translate(opts, sm, em)
	assert.Len(t, config(res).Backend("ns.svc:p:tcp").Servers, 3)
}

// TestInvalidNamesAreSkipped: the API server validates names, but a bad
// object must still not reach the file.
func TestInvalidNamesAreSkipped(t *testing.T) {
	sm, em := maps(v1.IPv4Protocol, []*v1.Service{
		service("evil\nfrontend x", "svc", "172.30.0.1", tcp("p", 80)),
		service("ns", "svc", "172.30.0.2", tcp("with space", 80)),
		service("ns", "ok", "172.30.0.3", tcp("p", 80)),
	}, nil)
	res := Translate(Options{Family: v1.IPv4Protocol, NodeName: nodeName}, sm, em)
	require.Len(t, res.Frontends, 1)
	assert.Equal(t, "ns.ok:p:tcp", res.Frontends[0].Name)
	reasons := map[SkipReason]int{}
	for _, s := range res.Skipped {
		reasons[s.Reason]++
	}
	assert.Equal(t, map[SkipReason]int{InvalidName: 2}, reasons)
	out, err := haproxycfg.Render(config(res))
	require.NoError(t, err)
	haproxytest.Check(t, out)
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
	sm, _ := maps(v1.IPv4Protocol, []*v1.Service{service("ns", "svc", "172.30.0.1", tcp("p", 80))}, nil)
	var name proxy.ServicePortName
	for n := range sm {
		name = n
	}
	em := proxy.EndpointsMap{name: {
		fakeEndpoint{"10.0.0.1", 80},
		fakeEndpoint{"10.0.0.2", 0},
		fakeEndpoint{"10.0.0.3", 70000},
		fakeEndpoint{"fd00::1", 80},
		fakeEndpoint{"fe80::1%eth0", 80},
		fakeEndpoint{"not-an-ip", 80},
		fakeEndpoint{"::ffff:10.0.0.4", 80},
	}}
	res := Translate(Options{Family: v1.IPv4Protocol}, sm, em)
	assert.Equal(t, 5, res.BadEndpoints)
	var got []netip.AddrPort
	for _, s := range config(res).Backend("ns.svc:p:tcp").Servers {
		got = append(got, s.AddrPort())
	}
	assert.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.4:80")}, got)
}

func TestFrontendDoesNotDependOnEndpoints(t *testing.T) {
	svc := service("ns", "svc", "172.30.0.1", tcp("p", 80))
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30001
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	opts := Options{Family: v1.IPv4Protocol, NodeName: nodeName, NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	var frontends []haproxycfg.Frontend
	for _, eps := range [][]discovery.Endpoint{
		nil,
		{ep("10.0.0.1", "elsewhere")},
		{ep("10.0.0.1", nodeName), ep("10.0.0.2", "elsewhere")},
	} {
		sm, em := maps(v1.IPv4Protocol, []*v1.Service{svc}, []*discovery.EndpointSlice{slice("ns", "svc", discovery.AddressTypeIPv4, "p", 80, eps...)})
		res := Translate(opts, sm, em)
		require.Len(t, res.Frontends, 1)
		frontends = append(frontends, *res.Frontends[0])
	}
	assert.Equal(t, frontends[0], frontends[1])
	assert.Equal(t, frontends[0], frontends[2])
}

// benchmarkMaps builds n Services with one TCP port and eps endpoints each,
// half of them LoadBalancers with externalTrafficPolicy Local.
func benchmarkMaps(n, eps int) (proxy.ServicePortMap, proxy.EndpointsMap) {
	services := make([]*v1.Service, 0, n)
	slices := make([]*discovery.EndpointSlice, 0, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("svc-%d", i)
		svc := service("bench", name, fmt.Sprintf("172.%d.%d.%d", 16+i/65536, (i/256)%256, i%256), tcp("http", 80))
		if i%2 == 0 {
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Spec.Ports[0].NodePort = int32(30000 + i%2768)
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: fmt.Sprintf("198.%d.%d.%d", 18+i/65536, (i/256)%256, i%256)}}
		}
		services = append(services, svc)
		var endpoints []discovery.Endpoint
		for j := 0; j < eps; j++ {
			k := i*eps + j
			node := fmt.Sprintf("node-%d", k%20)
			if k%20 == 0 {
				node = nodeName
			}
			endpoints = append(endpoints, ep(fmt.Sprintf("10.%d.%d.%d", k/65536, (k/256)%256, k%256), node))
		}
		slices = append(slices, slice("bench", name, discovery.AddressTypeIPv4, "http", 8080, endpoints...))
	}
	return maps(v1.IPv4Protocol, services, slices)
}

// BenchmarkTranslate: 10,000 Services x 10 endpoints, the whole model of a
// sync. Run with: go test -bench . -benchmem ./proxier/translate
func BenchmarkTranslate(b *testing.B) {
	sm, em := benchmarkMaps(10000, 10)
	opts := Options{Family: v1.IPv4Protocol, NodeName: nodeName, NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res := Translate(opts, sm, em)
		if len(res.Frontends) != 10000 {
			b.Fatalf("got %d frontends", len(res.Frontends))
		}
	}
}

// BenchmarkTranslateAndRender adds rendering haproxy.cfg to the translation.
func BenchmarkTranslateAndRender(b *testing.B) {
	sm, em := benchmarkMaps(10000, 10)
	opts := Options{Family: v1.IPv4Protocol, NodeName: nodeName, NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res := Translate(opts, sm, em)
		out, err := haproxycfg.Render(config(res))
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(out)))
	}
}
