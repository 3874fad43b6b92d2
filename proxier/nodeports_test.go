package proxier

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	proxyutiltest "k8s.io/kubernetes/pkg/proxy/util/testing"
	"k8s.io/utils/ptr"
)

// objectRecorder is an events.FakeRecorder that also keeps the object
// each event is about.
type objectRecorder struct {
	*events.FakeRecorder
	mu        sync.Mutex
	regarding []*v1.ObjectReference
}

func (r *objectRecorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	r.mu.Lock()
	ref, _ := regarding.(*v1.ObjectReference)
	r.regarding = append(r.regarding, ref)
	r.mu.Unlock()
	r.FakeRecorder.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

// drain returns the events recorded so far.
func (r *objectRecorder) drain() []string {
	var out []string
	for {
		select {
		case e := <-r.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// fakeListeners stands in for hostnet.ListeningTCPPorts.
type fakeListeners struct {
	mu    sync.Mutex
	ports map[uint16][]netip.Addr
	asked []v1.IPFamily
}

func (f *fakeListeners) set(ports map[uint16][]netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ports = ports
}

func (f *fakeListeners) list(family v1.IPFamily) (map[uint16][]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, family)
	out := make(map[uint16][]netip.Addr, len(f.ports))
	for p, a := range f.ports {
		out[p] = append([]netip.Addr(nil), a...)
	}
	return out, nil
}

// TestNodePortTaken: a process of the node listening on a NodePort keeps
// it. The NodePort is refused for that Service port alone, with one
// Warning event on the Service and the gauge; its ClusterIP, LB IP and
// external IP are still served. When the process goes away, the NodePort
// is served again and the gauge drops back.
func TestNodePortTaken(t *testing.T) {
	recorder := &objectRecorder{FakeRecorder: events.NewFakeRecorder(10)}
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.Recorder = recorder })
	listeners := &fakeListeners{}
	p.listeningPorts = listeners.list
	listeners.set(map[uint16][]netip.Addr{3001: {netip.IPv4Unspecified()}})

	makeServiceMap(p, lbService(nil))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []v1.IPFamily{v1.IPv4Protocol}, listeners.asked, "the family's listeners are asked")

	all := "10.180.0.1:80, 10.180.2.1:80"
	runConnectionTests(t, applier, []connectionTest{
		{name: "NodePort left to the process", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: "NONE"},
		{name: "cluster IP still served", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: all},
		{name: "LB IP still served", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: all},
		{name: "external IP still served", sourceIP: testExternalClient, destIP: "192.168.99.11", destPort: 80, output: all},
	})
	assert.Equal(t, []string{"172.30.0.41:80", "1.2.3.4:80", "192.168.99.11:80"}, listenerKeys(servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp")))
	evs := recorder.drain()
	require.Len(t, evs, 1)
	assert.True(t, strings.HasPrefix(evs[0], "Warning NodePortTaken "), evs[0])
	assert.Contains(t, evs[0], "Port p80: nodePort 3001")
	require.Len(t, recorder.regarding, 1)
	assert.Equal(t, &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: "ns1", Name: "svc1"}, recorder.regarding[0])
	assert.InDelta(t, 1, gaugeValue(t, nodePortsTaken.WithLabelValues("IPv4")), 0)

	// Still taken: no second event.
	require.NoError(t, p.syncProxyRules())
	assert.Empty(t, recorder.drain(), "reported once while it lasts")
	assert.InDelta(t, 1, gaugeValue(t, nodePortsTaken.WithLabelValues("IPv4")), 0)

	// The process goes away: the NodePort is served again.
	listeners.set(nil)
	require.NoError(t, p.syncProxyRules())
	runConnectionTests(t, applier, []connectionTest{
		{name: "NodePort served again", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: all},
	})
	assert.InDelta(t, 0, gaugeValue(t, nodePortsTaken.WithLabelValues("IPv4")), 0)
	assert.Empty(t, recorder.drain())

	// Taken again: reported again.
	listeners.set(map[uint16][]netip.Addr{3001: {netip.MustParseAddr(testNodeIP)}})
	require.NoError(t, p.syncProxyRules())
	assert.Len(t, recorder.drain(), 1, "a NodePort taken again is reported again")
	assert.InDelta(t, 1, gaugeValue(t, nodePortsTaken.WithLabelValues("IPv4")), 0)
}

// TestNodePortTakenWhere: only a listener where the NodePort would be
// served takes it: a wildcard, a nodePortAddresses address, or any address
// when NodePorts are served on every address. HAProxy's own listeners
// (the dispatch and peer ports) never count.
func TestNodePortTakenWhere(t *testing.T) {
	for _, tc := range []struct {
		name              string
		nodePortAddresses []string
		listening         map[uint16][]netip.Addr
		nodePort          int32
		taken             bool
	}{
		{"wildcard", []string{"192.168.0.0/24"}, map[uint16][]netip.Addr{3001: {netip.IPv4Unspecified()}}, 3001, true},
		{"node address in nodePortAddresses", []string{"192.168.0.0/24"}, map[uint16][]netip.Addr{3001: {netip.MustParseAddr(testNodeIP)}}, 3001, true},
		{"loopback, outside nodePortAddresses", []string{"192.168.0.0/24"}, map[uint16][]netip.Addr{3001: {netip.MustParseAddr("127.0.0.1")}}, 3001, false},
		{"loopback, NodePorts on every address", nil, map[uint16][]netip.Addr{3001: {netip.MustParseAddr("127.0.0.1")}}, 3001, true},
		{"another port", nil, map[uint16][]netip.Addr{3002: {netip.IPv4Unspecified()}}, 3001, false},
		{"HAProxy's dispatch port", nil, map[uint16][]netip.Addr{DefaultDispatchPort: {netip.MustParseAddr("127.0.0.1")}}, DefaultDispatchPort, false},
		{"HAProxy's peer port", nil, map[uint16][]netip.Addr{DefaultDispatchPort + 1: {netip.MustParseAddr("127.0.0.1")}}, DefaultDispatchPort + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.NodePortAddresses = tc.nodePortAddresses })
			listeners := &fakeListeners{}
			listeners.set(tc.listening)
			p.listeningPorts = listeners.list
			makeServiceMap(p, makeTestService("ns1", "svc1", func(svc *v1.Service) {
				svc.Spec.Type = v1.ServiceTypeNodePort
				svc.Spec.ClusterIP = "172.30.0.41"
				svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, tc.nodePort, 0)
			}))
			require.NoError(t, p.syncProxyRules())
			keys := listenerKeys(servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp"))
			if tc.taken {
				assert.Equal(t, []string{"172.30.0.41:80"}, keys)
			} else {
				assert.Contains(t, keys, "*:"+strconv.Itoa(int(tc.nodePort)))
			}
		})
	}
}

// TestNodePortsNowhere: nodePortAddresses that match no address of the
// node serve NodePorts nowhere, as upstream does; the Service's other
// addresses are served. (An empty NodePortAddresses in the model would
// mean every address.)
func TestNodePortsNowhere(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.NodePortAddresses = []string{"10.99.0.0/16"} })
	listeners := &fakeListeners{}
	listeners.set(map[uint16][]netip.Addr{3001: {netip.IPv4Unspecified()}})
	p.listeningPorts = listeners.list
	recorder := &objectRecorder{FakeRecorder: events.NewFakeRecorder(10)}
	p.cfg.Recorder = recorder
	makeServiceMap(p, lbService(nil),
		// Its ClusterIP and port are svc1's (a conflict, which svc1 wins),
		// so only a NodePort is left, and then nothing.
		makeTestService("ns2", "only-nodeport", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeNodePort
			svc.Spec.ClusterIP = "172.30.0.41"
			svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 3002, 0)
		}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	all := "10.180.0.1:80, 10.180.2.1:80"
	tests := []connectionTest{
		{name: "no NodePort on the node address", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: "NONE"},
		{name: "no NodePort on loopback", sourceIP: "127.0.0.1", destIP: "127.0.0.1", destPort: 3001, output: "NONE"},
		{name: "no NodePort of the other Service", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3002, output: "NONE"},
		{name: "cluster IP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: all},
		{name: "LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: all},
	}
	runConnectionTests(t, applier, tests)
	cfg := applier.model(v1.IPv4Protocol)
	assert.Equal(t, []string{"ns1.svc1:p80:tcp"}, servicePortNames(cfg))
	assert.Equal(t, []string{"172.30.0.41:80", "1.2.3.4:80", "192.168.99.11:80"}, listenerKeys(servicePort(cfg, "ns1.svc1:p80:tcp")))
	assert.Empty(t, recorder.drain(), "a NodePort served nowhere is not taken by anyone")
	assert.InDelta(t, 0, gaugeValue(t, nodePortsTaken.WithLabelValues("IPv4")), 0)

	// An unchanged Service port stays the same object from sync to sync,
	// so the Applier skips it.
	before := servicePort(cfg, "ns1.svc1:p80:tcp")
	require.NoError(t, p.syncProxyRules())
	assert.Same(t, before, servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp"))

	// A node address in the range appears: NodePorts are served on it,
	// and on it only.
	network := proxyutiltest.NewFakeNetwork()
	network.AddInterfaceAddr(&net.Interface{Index: 0, Name: "eth0"}, []net.Addr{&net.IPNet{IP: net.ParseIP(testNodeIP), Mask: net.CIDRMask(24, 32)}})
	network.AddInterfaceAddr(&net.Interface{Index: 1, Name: "eth1"}, []net.Addr{&net.IPNet{IP: net.ParseIP("10.99.0.5"), Mask: net.CIDRMask(16, 32)}})
	p.networkInterfacer = network
	listeners.set(nil)
	require.NoError(t, p.syncProxyRules())
	cfg = applier.model(v1.IPv4Protocol)
	assert.Equal(t, []string{"ns1.svc1:p80:tcp", "ns2.only-nodeport:p80:tcp"}, servicePortNames(cfg))
	assert.Equal(t, []netip.Addr{netip.MustParseAddr("10.99.0.5")}, cfg.Dispatchers[0].NodePortAddresses)
	runConnectionTests(t, applier, []connectionTest{
		{name: "NodePort on the address in the range", sourceIP: testExternalClient, destIP: "10.99.0.5", destPort: 3001, output: all},
		{name: "other NodePort on the address in the range", sourceIP: testExternalClient, destIP: "10.99.0.5", destPort: 3002, output: "REJECT"},
		{name: "still no NodePort on the node address", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: "NONE"},
	})
}

// TestClusterSources: the clients counted as cluster traffic (the
// short-circuit of externalTrafficPolicy Local) are the pod CIDRs of the
// family, the node's addresses and, in scope node, the LoadBalancer and
// external IPs, which are local here: the node reaching one of them
// connects from it. Outside the nodes (scope external) policy Local is
// served by every endpoint, whoever the client.
func TestClusterSources(t *testing.T) {
	svc := lbService(func(svc *v1.Service) {
		svc.Labels = map[string]string{LabelServiceProxyName: DefaultServiceProxyName}
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 30000
	})
	both, local := "10.180.0.1:80, 10.180.2.1:80", "10.180.0.1:80"
	for _, tc := range []struct {
		scope   Scope
		sources []string
		// what the node gets from its own LB and external IP, and what an
		// external client gets
		fromOwnIP, external string
	}{
		{ScopeNode, []string{"10.0.0.0/8", testNodeIP + "/32", "127.0.0.0/8", "1.2.3.4/32", "192.168.99.11/32"}, both, local},
		// Not local there: an LB or external IP is a client like any other.
		{ScopeExternal, []string{"10.0.0.0/8", testNodeIP + "/32", "127.0.0.0/8"}, both, both},
	} {
		t.Run(string(tc.scope), func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) {
				c.Scope = tc.scope
				c.ClusterCIDRs = []string{"10.0.0.0/8", "fd00:10::/48"}
			})
			makeServiceMap(p, svc)
			populateEndpointSlices(p, lbEndpoints(nil))
			require.NoError(t, p.syncProxyRules())
			d := applier.model(v1.IPv4Protocol).Dispatchers[0]
			var got []string
			for _, s := range d.ClusterSources {
				got = append(got, s.String())
			}
			assert.Equal(t, tc.sources, got)
			runConnectionTests(t, applier, []connectionTest{
				{name: "node from its LB IP to it", sourceIP: "1.2.3.4", destIP: "1.2.3.4", destPort: 80, output: tc.fromOwnIP},
				{name: "node from its external IP to the NodePort", sourceIP: "192.168.99.11", destIP: testNodeIP, destPort: 3001, output: tc.fromOwnIP},
				{name: "pod to LB IP", sourceIP: testPodClient, destIP: "1.2.3.4", destPort: 80, output: both},
				{name: "external client to LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: tc.external},
			})
		})
	}

	// IPv6: the family's pod CIDR, node address and loopback only.
	p, applier, _ := newFakeProxier(t, v1.IPv6Protocol, func(c *Config) { c.ClusterCIDRs = []string{"10.0.0.0/8", "fd00:10::/48"} })
	makeServiceMap(p, makeTestService("ns1", "svc6", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		svc.Spec.ClusterIP = "fd00:172:30::41"
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 30000
		svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 3001, 0)
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "2001:db8:1b::4", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)}}
	}))
	require.NoError(t, p.syncProxyRules())
	var got []string
	for _, s := range applier.model(v1.IPv6Protocol).Dispatchers[0].ClusterSources {
		got = append(got, s.String())
	}
	assert.Equal(t, []string{"fd00:10::/48", testNodeIPv6 + "/128", "::1/128", "2001:db8:1b::4/128"}, got)
}
