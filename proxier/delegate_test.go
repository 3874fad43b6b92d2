package proxier

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/kubernetes/pkg/proxy"
	"k8s.io/kubernetes/pkg/proxy/metrics"
	"k8s.io/utils/ptr"
)

// fakeDelegate stands in for upstream's nftables proxier: it keeps its view
// with upstream's change trackers, as the real one does, so a test asks
// which service ports and endpoints it serves after a sync.
type fakeDelegate struct {
	mu               sync.Mutex
	serviceChanges   *proxy.ServiceChangeTracker
	endpointsChanges *proxy.EndpointsChangeTracker
	svcPortMap       proxy.ServicePortMap
	endpointsMap     proxy.EndpointsMap
	servicesSynced   bool
	slicesSynced     bool
	topology         map[string]string
	// services holds the Service objects last handed in, by name.
	services map[string]*v1.Service
	// lastSlice is the EndpointSlice last added or updated.
	lastSlice *discovery.EndpointSlice
	// sliceEvents lists the slice handlers called, as "add|update|delete
	// <resourceVersion>".
	sliceEvents []string
}

var _ proxy.Provider = &fakeDelegate{}

func newFakeDelegate(family v1.IPFamily) *fakeDelegate {
	return &fakeDelegate{
		serviceChanges:   proxy.NewServiceChangeTracker(family, nil, nil),
		endpointsChanges: proxy.NewEndpointsChangeTracker(family, testHostname, nil, nil),
		svcPortMap:       make(proxy.ServicePortMap),
		endpointsMap:     make(proxy.EndpointsMap),
		services:         map[string]*v1.Service{},
	}
}

func (f *fakeDelegate) Sync()     {}
func (f *fakeDelegate) SyncLoop() {}
func (f *fakeDelegate) OnServiceAdd(s *v1.Service) {
	f.OnServiceUpdate(nil, s)
}
func (f *fakeDelegate) OnServiceUpdate(o, s *v1.Service) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o != nil {
		delete(f.services, o.Namespace+"/"+o.Name)
	}
	if s != nil {
		f.services[s.Namespace+"/"+s.Name] = s
	}
	f.serviceChanges.Update(o, s)
}
func (f *fakeDelegate) OnServiceDelete(s *v1.Service) { f.OnServiceUpdate(s, nil) }
func (f *fakeDelegate) OnServiceSynced()              { f.servicesSynced = true }
func (f *fakeDelegate) OnEndpointSliceAdd(s *discovery.EndpointSlice) {
	f.lastSlice = s
	f.sliceEvents = append(f.sliceEvents, "add "+s.ResourceVersion)
	f.endpointsChanges.EndpointSliceUpdate(s, false)
}
func (f *fakeDelegate) OnEndpointSliceUpdate(_, s *discovery.EndpointSlice) {
	f.lastSlice = s
	f.sliceEvents = append(f.sliceEvents, "update "+s.ResourceVersion)
	f.endpointsChanges.EndpointSliceUpdate(s, false)
}
func (f *fakeDelegate) OnEndpointSliceDelete(s *discovery.EndpointSlice) {
	f.sliceEvents = append(f.sliceEvents, "delete "+s.ResourceVersion)
	f.endpointsChanges.EndpointSliceUpdate(s, true)
}
func (f *fakeDelegate) OnEndpointSlicesSynced()              { f.slicesSynced = true }
func (f *fakeDelegate) OnTopologyChange(l map[string]string) { f.topology = l }
func (f *fakeDelegate) OnServiceCIDRsChanged([]string) {
	panic("the ServiceCIDRs must not reach the delegate: upstream would drop traffic to TCP-only ClusterIPs")
}

// serves syncs the view and lists what it serves: "ns/name:port/PROTO ->
// endpoints" per service port, sorted.
func (f *fakeDelegate) serves() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.svcPortMap.Update(f.serviceChanges)
	// Like upstream's proxiers after a sync, observe the latency of the
	// endpoint changes that carried a trigger time.
	result := f.endpointsMap.Update(f.endpointsChanges)
	for _, times := range result.LastChangeTriggerTimes {
		for _, t := range times {
			metrics.NetworkProgrammingLatency.WithLabelValues(string(v1.IPv4Protocol)).Observe(metrics.SinceInSeconds(t))
		}
	}
	var out []string
	for name, sp := range f.svcPortMap {
		var eps []string
		for _, ep := range f.endpointsMap[name] {
			eps = append(eps, ep.String())
		}
		sort.Strings(eps)
		out = append(out, name.String()+"/"+string(sp.Protocol())+" -> "+strings.Join(eps, ","))
	}
	sort.Strings(out)
	return out
}

func newDelegatingProxier(t *testing.T) (*Proxier, *fakeApplier, *fakeDelegate) {
	t.Helper()
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	fd := newFakeDelegate(v1.IPv4Protocol)
	p.delegate = &nonTCPDelegate{provider: fd}
	return p, applier, fd
}

// TestSCTPOnANodeWithoutKernelSCTP: the probe runs once when the delegate
// is made; each delegated SCTP port gets one log line and one Warning
// event saying only endpoints on other nodes are reached; it stays
// delegated (rules are programmed), and TCP and UDP are unaffected.
func TestSCTPOnANodeWithoutKernelSCTP(t *testing.T) {
	for _, tc := range []struct {
		name       string
		probe      error
		wantEvents int
	}{
		{"kernel without SCTP", fmt.Errorf("opening an SCTP socket: %w", unix.EPROTONOSUPPORT), 2},
		{"kernel with SCTP", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probes := 0
			orig := probeKernelSCTP
			probeKernelSCTP = func() error { probes++; return tc.probe }
			t.Cleanup(func() { probeKernelSCTP = orig })

			recorder := events.NewFakeRecorder(10)
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.Recorder = recorder })
			fd := newFakeDelegate(v1.IPv4Protocol)
			p.delegate = newNonTCPDelegate(context.Background(), v1.IPv4Protocol, fd)
			svc := dnsService(port("dns-tcp", v1.ProtocolTCP, 53, 0), port("dns", v1.ProtocolUDP, 53, 0),
				port("sig", v1.ProtocolSCTP, 9000, 0), port("sig2", v1.ProtocolSCTP, 9001, 0))
			p.OnServiceAdd(svc)
			p.OnEndpointSliceAdd(dnsSlice("1", epPort("dns-tcp", v1.ProtocolTCP, 53), epPort("dns", v1.ProtocolUDP, 53),
				epPort("sig", v1.ProtocolSCTP, 9000), epPort("sig2", v1.ProtocolSCTP, 9001)))
			for range 3 {
				require.NoError(t, p.syncProxyRules())
			}
			assert.Equal(t, 1, probes, "the kernel is probed once, not per sync")
			assert.InDelta(t, tc.wantEvents, gaugeValue(t, sctpWithoutKernelSCTP.WithLabelValues("IPv4")), 0,
				"SCTP ports no pod on this node can serve")
			assert.Equal(t, []string{"kube-system.kube-dns:dns-tcp:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)), "TCP is unaffected")
			assert.Equal(t, []string{
				"kube-system/kube-dns:dns/UDP -> 10.180.0.1:53",
				"kube-system/kube-dns:sig/SCTP -> 10.180.0.1:9000",
				"kube-system/kube-dns:sig2/SCTP -> 10.180.0.1:9001",
			}, fd.serves(), "SCTP stays delegated: rules for endpoints on other nodes")
			var got []string
			for len(recorder.Events) > 0 {
				got = append(got, <-recorder.Events)
			}
			slices.Sort(got)
			require.Len(t, got, tc.wantEvents, "one event per SCTP port, not per sync: %v", got)
			for i, name := range []string{"sig", "sig2"}[:tc.wantEvents] {
				assert.Contains(t, got[i], "Warning SCTPNotSupportedOnNode Port "+name+"/SCTP: the kernel of node "+testHostname+" has no SCTP")
				assert.Contains(t, got[i], "only endpoints on other nodes are reached")
			}
		})
	}
}

func TestProbeKernelSCTPMatchesTheKernel(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err == nil {
		_ = unix.Close(fd)
		assert.NoError(t, probeKernelSCTP(), "this kernel opens SCTP sockets")
		return
	}
	assert.ErrorIs(t, probeKernelSCTP(), unix.EPROTONOSUPPORT, "this kernel has no SCTP")
}

func dnsService(ports ...v1.ServicePort) *v1.Service {
	return makeTestService("kube-system", "kube-dns", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeNodePort
		svc.Spec.ClusterIP = "172.30.0.10"
		svc.Spec.Ports = ports
	})
}

func dnsSlice(version string, ports ...discovery.EndpointPort) *discovery.EndpointSlice {
	return makeTestEndpointSlice("kube-system", "kube-dns", 1, func(eps *discovery.EndpointSlice) {
		eps.ResourceVersion = version
		eps.AddressType = discovery.AddressTypeIPv4
		eps.Endpoints = []discovery.Endpoint{{Addresses: []string{"10.180.0.1"}, NodeName: ptr.To(testHostname)}}
		eps.Ports = ports
	})
}

func port(name string, proto v1.Protocol, num, nodePort int32) v1.ServicePort {
	return addTestPort(nil, name, proto, num, nodePort, int(num))[0]
}

func epPort(name string, proto v1.Protocol, num int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(num)}
}

func TestNonTCPOnlyKeepsUDPAndSCTPPorts(t *testing.T) {
	svc := dnsService(port("dns-tcp", v1.ProtocolTCP, 53, 30053), port("dns", v1.ProtocolUDP, 53, 30053),
		port("sig", v1.ProtocolSCTP, 9000, 0), port("unset", "", 80, 0))
	svc.Spec.HealthCheckNodePort = 31000
	view := nonTCPOnly(svc)
	require.NotNil(t, view)
	assert.Equal(t, []v1.ServicePort{port("dns", v1.ProtocolUDP, 53, 30053), port("sig", v1.ProtocolSCTP, 9000, 0)}, view.Spec.Ports)
	assert.Zero(t, view.Spec.HealthCheckNodePort, "the HAProxy proxier serves the health check port")
	assert.Equal(t, svc.Spec.ClusterIP, view.Spec.ClusterIP)
	assert.Len(t, svc.Spec.Ports, 4, "the informer's object is not modified")
	assert.EqualValues(t, 31000, svc.Spec.HealthCheckNodePort)

	assert.Nil(t, nonTCPOnly(dnsService(port("web", v1.ProtocolTCP, 80, 0))), "a TCP-only Service does not exist for the delegate")
	assert.Nil(t, nonTCPOnly(nil))
}

// TestDelegationSplitsServicePortsByProtocol: of one Service with TCP and
// UDP on port 53 (kube-dns), HAProxy serves TCP and the delegate UDP.
func TestDelegationSplitsServicePortsByProtocol(t *testing.T) {
	p, applier, fd := newDelegatingProxier(t)
	svc := dnsService(port("dns-tcp", v1.ProtocolTCP, 53, 30053), port("dns", v1.ProtocolUDP, 53, 30053))
	web := makeTestService("ns1", "web", func(svc *v1.Service) {
		svc.Spec.ClusterIP = "172.30.0.41"
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 0, 0)
	})
	p.OnServiceAdd(svc)
	p.OnServiceAdd(web)
	p.OnEndpointSliceAdd(dnsSlice("1", epPort("dns-tcp", v1.ProtocolTCP, 53), epPort("dns", v1.ProtocolUDP, 53)))
	p.OnServiceSynced()
	p.OnEndpointSlicesSynced()
	require.NoError(t, p.syncProxyRules())

	assert.Equal(t, []string{"kube-system.kube-dns:dns-tcp:tcp", "ns1.web:http:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	runConnectionTests(t, applier, []connectionTest{
		{name: "TCP 53 to HAProxy", sourceIP: testPodClient, destIP: "172.30.0.10", destPort: 53, output: "10.180.0.1:53"},
		{name: "TCP NodePort to HAProxy", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 30053, output: "10.180.0.1:53"},
	})
	assert.Equal(t, []string{"kube-system/kube-dns:dns/UDP -> 10.180.0.1:53"}, fd.serves(), "only UDP 53 is delegated, TCP-only Services not at all")
	assert.True(t, fd.servicesSynced)
	assert.True(t, fd.slicesSynced)
	assert.Len(t, fd.services, 1)
	assert.InDelta(t, 1, gaugeValue(t, delegatedServicePorts.WithLabelValues("udp", "IPv4")), 0)
	assert.InDelta(t, 0, gaugeValue(t, unsupportedServicePorts.WithLabelValues("udp", "IPv4")), 0)

	p.OnTopologyChange(map[string]string{"topology.kubernetes.io/zone": "a"})
	assert.Equal(t, "a", fd.topology["topology.kubernetes.io/zone"])

	// The Service goes: both sides forget it.
	p.OnServiceDelete(svc)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"ns1.web:http:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	assert.Empty(t, fd.serves())
}

// TestDelegateSeesOnlySlicesWithANonTCPPort: a slice of TCP ports only
// never reaches the delegate (it would sync nftables for nothing); a slice
// that gains its first UDP port is an add there, one that loses its last
// a delete, and the delegate's endpoints follow.
func TestDelegateSeesOnlySlicesWithANonTCPPort(t *testing.T) {
	p, applier, fd := newDelegatingProxier(t)
	p.OnServiceAdd(dnsService(port("dns-tcp", v1.ProtocolTCP, 53, 0), port("dns", v1.ProtocolUDP, 53, 0)))
	p.OnServiceSynced()
	p.OnEndpointSlicesSynced()

	tcpOnly := dnsSlice("1", epPort("dns-tcp", v1.ProtocolTCP, 53))
	p.OnEndpointSliceAdd(tcpOnly)
	tcpAgain := dnsSlice("2", epPort("dns-tcp", v1.ProtocolTCP, 53))
	p.OnEndpointSliceUpdate(tcpOnly, tcpAgain)
	require.NoError(t, p.syncProxyRules())
	assert.Empty(t, fd.sliceEvents, "TCP-only slices are not handed to the delegate")
	assert.Equal(t, []string{"kube-system/kube-dns:dns/UDP -> "}, fd.serves())
	runConnectionTests(t, applier, []connectionTest{
		{name: "TCP 53 to HAProxy", sourceIP: testPodClient, destIP: "172.30.0.10", destPort: 53, output: "10.180.0.1:53"},
	})

	both := dnsSlice("3", epPort("dns-tcp", v1.ProtocolTCP, 53), epPort("dns", v1.ProtocolUDP, 53))
	p.OnEndpointSliceUpdate(tcpAgain, both)
	assert.Equal(t, []string{"add 3"}, fd.sliceEvents, "the first UDP port makes the slice new to the delegate")
	assert.Equal(t, []string{"kube-system/kube-dns:dns/UDP -> 10.180.0.1:53"}, fd.serves())

	bothAgain := dnsSlice("4", epPort("dns-tcp", v1.ProtocolTCP, 53), epPort("dns", v1.ProtocolUDP, 53))
	p.OnEndpointSliceUpdate(both, bothAgain)
	udpGone := dnsSlice("5", epPort("dns-tcp", v1.ProtocolTCP, 53))
	p.OnEndpointSliceUpdate(bothAgain, udpGone)
	p.OnEndpointSliceDelete(udpGone)
	assert.Equal(t, []string{"add 3", "update 4", "delete 4"}, fd.sliceEvents, "losing the last UDP port deletes the slice the delegate knew")
	assert.Equal(t, []string{"kube-system/kube-dns:dns/UDP -> "}, fd.serves())
}

// TestDelegationFollowsAProtocolSwitch: a port switched TCP -> UDP -> TCP
// moves from HAProxy to the delegate and back, never served by both.
func TestDelegationFollowsAProtocolSwitch(t *testing.T) {
	p, applier, fd := newDelegatingProxier(t)
	tcp := dnsService(port("p", v1.ProtocolTCP, 5000, 30500))
	tcp.ResourceVersion = "1"
	udp := dnsService(port("p", v1.ProtocolUDP, 5000, 30500))
	udp.ResourceVersion = "2"
	tcpAgain := dnsService(port("p", v1.ProtocolTCP, 5000, 30500))
	tcpAgain.ResourceVersion = "3"
	p.OnEndpointSliceAdd(dnsSlice("1", epPort("p", v1.ProtocolTCP, 5000), epPort("p", v1.ProtocolUDP, 5000)))

	p.OnServiceAdd(tcp)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"kube-system.kube-dns:p:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	assert.Empty(t, fd.serves())

	p.OnServiceUpdate(tcp, udp)
	require.NoError(t, p.syncProxyRules())
	assert.Empty(t, servicePortNames(applier.model(v1.IPv4Protocol)))
	assert.Equal(t, []string{"kube-system/kube-dns:p/UDP -> 10.180.0.1:5000"}, fd.serves())

	p.OnServiceUpdate(udp, tcpAgain)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"kube-system.kube-dns:p:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	assert.Empty(t, fd.serves())
	assert.Empty(t, fd.services)
}

// TestDelegationOfSCTPAndUnnamedSamePortNumbers: SCTP goes to the delegate
// like UDP; the same port number on TCP, UDP and SCTP is split by protocol.
func TestDelegationOfSCTPAndUnnamedSamePortNumbers(t *testing.T) {
	p, applier, fd := newDelegatingProxier(t)
	svc := dnsService(port("tcp", v1.ProtocolTCP, 7000, 0), port("udp", v1.ProtocolUDP, 7000, 0), port("sctp", v1.ProtocolSCTP, 7000, 0))
	p.OnServiceAdd(svc)
	p.OnEndpointSliceAdd(dnsSlice("1", epPort("tcp", v1.ProtocolTCP, 7000), epPort("udp", v1.ProtocolUDP, 7000), epPort("sctp", v1.ProtocolSCTP, 7000)))
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"kube-system.kube-dns:tcp:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	assert.Equal(t, []string{
		"kube-system/kube-dns:sctp/SCTP -> 10.180.0.1:7000",
		"kube-system/kube-dns:udp/UDP -> 10.180.0.1:7000",
	}, fd.serves())
	assert.InDelta(t, 1, gaugeValue(t, delegatedServicePorts.WithLabelValues("sctp", "IPv4")), 0)
}

// TestNonTCPWithoutDelegationIsVisible: without a kernel data plane a
// UDP or SCTP port is reported once per service port: a log line, a
// Warning event on the Service, a gauge; not again at every sync.
func TestNonTCPWithoutDelegationIsVisible(t *testing.T) {
	recorder := events.NewFakeRecorder(10)
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) {
		c.Recorder = recorder
		c.DelegateNonTCP = ptr.To(false)
	})
	require.Nil(t, p.delegate)
	svc := dnsService(port("dns-tcp", v1.ProtocolTCP, 53, 0), port("dns", v1.ProtocolUDP, 53, 0), port("sig", v1.ProtocolSCTP, 9000, 0))
	p.OnServiceAdd(svc)
	for range 3 {
		require.NoError(t, p.syncProxyRules())
	}
	assert.Equal(t, []string{"kube-system.kube-dns:dns-tcp:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)), "TCP is unaffected")
	var got []string
	for len(recorder.Events) > 0 {
		got = append(got, <-recorder.Events)
	}
	slices.Sort(got)
	require.Len(t, got, 2, "one event per service port, not per sync: %v", got)
	assert.Contains(t, got[0], "Warning ProtocolNotSupported Port dns/UDP")
	assert.Contains(t, got[1], "Warning ProtocolNotSupported Port sig/SCTP")
	assert.InDelta(t, 1, gaugeValue(t, unsupportedServicePorts.WithLabelValues("udp", "IPv4")), 0)
	assert.InDelta(t, 1, gaugeValue(t, unsupportedServicePorts.WithLabelValues("sctp", "IPv4")), 0)
	assert.InDelta(t, 0, gaugeValue(t, delegatedServicePorts.WithLabelValues("udp", "IPv4")), 0)
}

func TestDelegationDefaultsPerScope(t *testing.T) {
	node := Config{}
	node.SetDefaults()
	assert.True(t, node.delegating(), "scope node delegates by default")

	external := Config{Scope: ScopeExternal}
	external.SetDefaults()
	require.NoError(t, external.Validate())
	assert.False(t, external.delegating(), "scope external programs no kernel data plane")

	bad := Config{Scope: ScopeExternal, DelegateNonTCP: ptr.To(true)}
	bad.SetDefaults()
	assert.ErrorContains(t, bad.Validate(), "delegateNonTCP")

	badBit := Config{MasqueradeBit: ptr.To[int32](32)}
	badBit.SetDefaults()
	assert.ErrorContains(t, badBit.Validate(), "masqueradeBit")
}

// TestNetworkProgrammingLatencyIsObservedOncePerChange: both proxiers see
// every EndpointSlice, but only the HAProxy proxier observes
// kubeproxy_network_programming_duration_seconds: the delegate gets the
// slices without their last-change-trigger-time annotation (a copy; the
// informer's object keeps it).
func TestNetworkProgrammingLatencyIsObservedOncePerChange(t *testing.T) {
	metrics.RegisterMetrics("haproxy")
	histogram := metrics.NetworkProgrammingLatency.WithLabelValues(string(v1.IPv4Protocol))
	count := func() uint64 {
		n, err := testutil.GetHistogramMetricCount(histogram)
		require.NoError(t, err)
		return n
	}
	p, _, fd := newDelegatingProxier(t)
	p.OnServiceAdd(dnsService(port("dns-tcp", v1.ProtocolTCP, 53, 0), port("dns", v1.ProtocolUDP, 53, 0)))
	p.OnServiceSynced()
	p.OnEndpointSlicesSynced()
	before := count()

	for i, version := range []string{"1", "2", "3"} {
		s := dnsSlice(version, epPort("dns-tcp", v1.ProtocolTCP, 53), epPort("dns", v1.ProtocolUDP, 53))
		s.Annotations = map[string]string{
			v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano),
			"other":                           "kept",
		}
		if i == 0 {
			p.OnEndpointSliceAdd(s)
		} else {
			p.OnEndpointSliceUpdate(fd.lastSlice, s)
		}
		require.NoError(t, p.syncProxyRules())
		require.NotEmpty(t, fd.serves(), "the delegate synced the change too")
		assert.Equal(t, before+uint64(i)+1, count(), "change %d: one observation per EndpointSlice change", i+1)
		assert.Contains(t, s.Annotations, v1.EndpointsLastChangeTriggerTime, "the informer's object is not modified")
		assert.NotContains(t, fd.lastSlice.Annotations, v1.EndpointsLastChangeTriggerTime)
		assert.Equal(t, "kept", fd.lastSlice.Annotations["other"])
	}
	assert.Same(t, fd.lastSlice, withoutTriggerTime(fd.lastSlice), "a slice without the annotation is passed as is")
}
