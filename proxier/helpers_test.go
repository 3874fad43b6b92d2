package proxier

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/testutil"
	proxyutil "k8s.io/kubernetes/pkg/proxy/util"
	proxyutiltest "k8s.io/kubernetes/pkg/proxy/util/testing"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

const (
	testHostname = "test-hostname"
	testNodeIP   = "192.168.0.2"
	testNodeIPv6 = "2001:db8::1"
	// testExternalClient is a client outside the cluster.
	testExternalClient = "203.0.113.2"
	// testPodClient is a pod on another node.
	testPodClient = "10.0.0.2"
)

// fakeApplier records the models it is given, per family, the way the
// real Applier would keep them: the last model of each family wins.
type fakeApplier struct {
	mu      sync.Mutex
	models  map[v1.IPFamily]*haproxycfg.Config
	applies int
	// fail, when set, makes Apply return it.
	fail error
	// cidrs are the Service CIDRs last given per family.
	cidrs map[v1.IPFamily][]netip.Prefix
}

func (f *fakeApplier) SetServiceCIDRs(family v1.IPFamily, cidrs []netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cidrs == nil {
		f.cidrs = map[v1.IPFamily][]netip.Prefix{}
	}
	f.cidrs[family] = cidrs
}

func newFakeApplier() *fakeApplier {
	return &fakeApplier{models: map[v1.IPFamily]*haproxycfg.Config{}}
}

func (f *fakeApplier) Apply(_ context.Context, family v1.IPFamily, desired *haproxycfg.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	// The Applier must be able to render what it is given.
	if err := haproxycfg.Validate(desired); err != nil {
		return fmt.Errorf("invalid model: %w", err)
	}
	f.models[family] = desired
	f.applies++
	return nil
}

func (f *fakeApplier) model(family v1.IPFamily) *haproxycfg.Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.models[family]
}

// merged is what HAProxy would serve: the models of all families.
func (f *fakeApplier) merged(t *testing.T) *haproxycfg.Config {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := haproxycfg.Merge(f.models[v1.IPv4Protocol], f.models[v1.IPv6Protocol])
	require.NoError(t, err)
	return c
}

// fakeServiceHealthServer keeps what the proxier last told it, like the
// real server keeps its listeners and counts.
type fakeServiceHealthServer struct {
	mu        sync.Mutex
	services  map[types.NamespacedName]uint16
	endpoints map[types.NamespacedName]int
}

func (f *fakeServiceHealthServer) SyncServices(s map[types.NamespacedName]uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services = s
	return nil
}

func (f *fakeServiceHealthServer) SyncEndpoints(e map[types.NamespacedName]int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endpoints = make(map[types.NamespacedName]int)
	// Like the real server: only Services with a health check port count.
	for name, n := range e {
		if _, ok := f.services[name]; ok {
			f.endpoints[name] = n
		}
	}
	return nil
}

type fakeProxierOption func(*Config)

// newFakeProxier returns a Proxier of one family wired to fakes, with the
// node at testNodeIP (or testNodeIPv6) and NodePorts on the node's
// addresses, already initialized.
func newFakeProxier(t *testing.T, family v1.IPFamily, opts ...fakeProxierOption) (*Proxier, *fakeApplier, *fakeServiceHealthServer) {
	t.Helper()
	return newFakeProxierWithApplier(t, family, newFakeApplier(), opts...)
}

func newFakeProxierWithApplier(t *testing.T, family v1.IPFamily, applier *fakeApplier, opts ...fakeProxierOption) (*Proxier, *fakeApplier, *fakeServiceHealthServer) {
	t.Helper()
	nodeIP, cidr := testNodeIP, "192.168.0.0/24"
	if family == v1.IPv6Protocol {
		nodeIP, cidr = testNodeIPv6, "2001:db8::/64"
	}
	cfg := Config{
		NodeName:          testHostname,
		NodeIPs:           map[v1.IPFamily]net.IP{family: net.ParseIP(nodeIP)},
		NodePortAddresses: []string{cidr},
		StateDir:          "/run/kube-haproxy-test",
	}
	for _, o := range opts {
		o(&cfg)
	}
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())

	network := proxyutiltest.NewFakeNetwork()
	itf := net.Interface{Index: 0, MTU: 0, Name: "eth0", HardwareAddr: nil, Flags: 0}
	ip := net.ParseIP(nodeIP)
	bits := 32
	if family == v1.IPv6Protocol {
		bits = 128
	}
	network.AddInterfaceAddr(&itf, []net.Addr{&net.IPNet{IP: ip, Mask: net.CIDRMask(bits/2, bits)}})

	hs := &fakeServiceHealthServer{}
	p, err := newProxier(context.Background(), family, cfg, deps{applier: applier, serviceHealthServer: hs, networkInterfacer: network})
	require.NoError(t, err)
	p.setInitialized(true)
	p.servicesSynced, p.endpointSlicesSynced = true, true
	return p, applier, hs
}

func makeTestService(namespace, name string, svcFunc func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   namespace,
			Annotations: map[string]string{},
		},
		Spec:   v1.ServiceSpec{},
		Status: v1.ServiceStatus{},
	}
	svcFunc(svc)
	return svc
}

func addTestPort(array []v1.ServicePort, name string, protocol v1.Protocol, port, nodeport int32, targetPort int) []v1.ServicePort {
	return append(array, v1.ServicePort{
		Name:       name,
		Protocol:   protocol,
		Port:       port,
		NodePort:   nodeport,
		TargetPort: intstr.FromInt32(int32(targetPort)),
	})
}

func makeServiceMap(p *Proxier, allServices ...*v1.Service) {
	for i := range allServices {
		p.OnServiceAdd(allServices[i])
	}
}

func makeTestEndpointSlice(namespace, name string, sliceNum int, epsFunc func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
	eps := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s-%d", name, sliceNum),
			Namespace: namespace,
			Labels:    map[string]string{discovery.LabelServiceName: name},
		},
	}
	epsFunc(eps)
	return eps
}

func populateEndpointSlices(p *Proxier, allEndpointSlices ...*discovery.EndpointSlice) {
	for i := range allEndpointSlices {
		p.OnEndpointSliceAdd(allEndpointSlices[i])
	}
}

// endpoint builds a slice endpoint; ready/serving/terminating nil means
// the condition is not set (the API then assumes ready and serving).
func endpoint(ip string, nodeName string, ready, serving, terminating *bool) discovery.Endpoint {
	ep := discovery.Endpoint{
		Addresses:  []string{ip},
		Conditions: discovery.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating},
	}
	if nodeName != "" {
		ep.NodeName = ptr.To(nodeName)
	}
	return ep
}

func tcpPort(name string, port int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(v1.ProtocolTCP)}
}

// connectionTest is one row of a connection-tracer table: a TCP connection
// from sourceIP to destIP:destPort, and what happens to it.
type connectionTest struct {
	name     string
	sourceIP string
	destIP   string
	destPort int
	// output is a comma-separated list of the endpoints the connection may
	// reach ("10.180.0.1:80, 10.180.0.2:80"), or "REJECT" (HAProxy resets
	// it at once: no usable endpoint), "DROP" (silently dropped: by the
	// kernel for a source outside loadBalancerSourceRanges, by HAProxy for
	// external traffic without a local endpoint), "NONE" (not dispatched
	// to HAProxy at all: the guard or the host refuses it).
	output string
}

// dispatcherFor is the dispatcher of addr's family in cfg, or nil.
func dispatcherFor(cfg *haproxycfg.Config, addr netip.Addr) *haproxycfg.Dispatcher {
	for _, d := range cfg.Dispatchers {
		if d.IPv6 == (addr.Is6() && !addr.Is4In6()) {
			return d
		}
	}
	return nil
}

// traceConnection interprets the model for one connection: the dispatcher
// of the destination's family decides, as the kernel and HAProxy would.
func traceConnection(t *testing.T, cfg *haproxycfg.Config, sourceIP, destIP string, destPort int) string {
	t.Helper()
	dst := netip.AddrPortFrom(netip.MustParseAddr(destIP), uint16(destPort))
	d := dispatcherFor(cfg, dst.Addr())
	if d == nil {
		// No dispatcher of the family: nothing is sent to HAProxy.
		return "NONE"
	}
	res := haproxycfg.Trace(d, netip.MustParseAddr(sourceIP), dst)
	switch res.Verdict {
	case haproxycfg.NotDispatched:
		return "NONE"
	case haproxycfg.Rejected:
		return "REJECT"
	case haproxycfg.Dropped:
		return "DROP"
	case haproxycfg.Served:
	default:
		t.Fatalf("unknown verdict %q", res.Verdict)
	}
	out := make([]string, 0, len(res.Endpoints))
	for _, ep := range res.Endpoints {
		out = append(out, ep.String())
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// servicePort is the Service port named name in any dispatcher of c, or
// nil.
func servicePort(c *haproxycfg.Config, name string) *haproxycfg.ServicePort {
	for _, d := range c.Dispatchers {
		for _, sp := range d.ServicePorts {
			if sp.Name == name {
				return sp
			}
		}
	}
	return nil
}

// servicePortNames lists the Service ports of every dispatcher of c, in
// name order.
func servicePortNames(c *haproxycfg.Config) []string {
	var out []string
	for _, d := range c.Dispatchers {
		for _, sp := range d.ServicePorts {
			out = append(out, sp.Name)
		}
	}
	slices.Sort(out)
	return out
}

// listenerKeys lists the services-map keys of sp's listeners, in order.
func listenerKeys(sp *haproxycfg.ServicePort) []string {
	var out []string
	for _, l := range sp.Listeners {
		out = append(out, l.Key())
	}
	return out
}

// renderAll is everything HAProxy reads for c: haproxy.cfg, then each
// dispatcher's services map, endpoints map and cluster sources ACL.
func renderAll(t *testing.T, c *haproxycfg.Config) string {
	t.Helper()
	out, err := haproxycfg.Render(c)
	require.NoError(t, err)
	var b strings.Builder
	b.Write(out)
	for _, d := range c.Dispatchers {
		services, endpoints, sources := haproxycfg.RenderMaps(d)
		for _, f := range []struct {
			path string
			data []byte
		}{{d.ServicesMap(), services}, {d.EndpointsMap(), endpoints}, {d.ClusterSourcesACL(), sources}} {
			b.WriteString("--- " + f.path + "\n")
			b.Write(f.data)
		}
	}
	return b.String()
}

func sortedEndpointList(s string) string {
	parts := strings.Split(s, ", ")
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// runConnectionTests runs a table of connections against the models the
// applier holds (both families merged, as HAProxy serves them).
func runConnectionTests(t *testing.T, applier *fakeApplier, tests []connectionTest) {
	t.Helper()
	cfg := applier.merged(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := traceConnection(t, cfg, tc.sourceIP, tc.destIP, tc.destPort)
			want := tc.output
			if strings.Contains(want, ",") {
				want = sortedEndpointList(want)
			}
			if got != want {
				t.Errorf("connection %s -> %s:%d: got %q, want %q", tc.sourceIP, tc.destIP, tc.destPort, got, want)
			}
		})
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustAddrPort(ip string, port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port))
}

func repeat(s string, n int) string { return strings.Repeat(s, n) }

func gaugeValue(t *testing.T, g metrics.GaugeMetric) float64 {
	t.Helper()
	v, err := testutil.GetGaugeMetricValue(g)
	require.NoError(t, err)
	return v
}

func counterValue(t *testing.T, c metrics.CounterMetric) float64 {
	t.Helper()
	v, err := testutil.GetCounterMetricValue(c)
	require.NoError(t, err)
	return v
}

// loopbackNetwork is a host whose only interface is lo (127.0.0.1/8).
func loopbackNetwork() proxyutil.NetworkInterfacer {
	network := proxyutiltest.NewFakeNetwork()
	itf := net.Interface{Index: 1, Name: "lo"}
	network.AddInterfaceAddr(&itf, []net.Addr{&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)}})
	return network
}
