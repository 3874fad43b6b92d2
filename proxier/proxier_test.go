package proxier

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/kubernetes/pkg/proxy/metrics"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// The tests below port the behaviours of upstream's
// pkg/proxy/nftables/proxier_test.go to the HAProxy model: each builds
// Services and EndpointSlices, syncs, and asks the connection tracer where
// connections go.

func TestNoEndpointsReject(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	svcIP, svcPort, svcNodePort := "172.30.0.41", 80, 3001
	svcExternalIP, svcLBIP := "192.168.99.11", "1.2.3.4"
	makeServiceMap(p, makeTestService("ns1", "svc1", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		svc.Spec.ClusterIP = svcIP
		svc.Spec.ExternalIPs = []string{svcExternalIP}
		svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, int32(svcPort), int32(svcNodePort), 0)
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: svcLBIP}}
	}))
	require.NoError(t, p.syncProxyRules())

	runConnectionTests(t, applier, []connectionTest{
		{name: "pod to cluster IP with no endpoints", sourceIP: testPodClient, destIP: svcIP, destPort: svcPort, output: "REJECT"},
		{name: "external to external IP with no endpoints", sourceIP: testExternalClient, destIP: svcExternalIP, destPort: svcPort, output: "REJECT"},
		{name: "pod to NodePort with no endpoints", sourceIP: testPodClient, destIP: testNodeIP, destPort: svcNodePort, output: "REJECT"},
		{name: "external to LB IP with no endpoints", sourceIP: testExternalClient, destIP: svcLBIP, destPort: svcPort, output: "REJECT"},
		{name: "other port of the cluster IP: nothing listens", sourceIP: testPodClient, destIP: svcIP, destPort: 81, output: "NONE"},
	})
}

func TestClusterIPGeneral(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p,
		makeTestService("ns1", "svc1", func(svc *v1.Service) {
			svc.Spec.ClusterIP = "172.30.0.41"
			svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 0, 0)
		}),
		makeTestService("ns2", "svc2", func(svc *v1.Service) {
			svc.Spec.ClusterIP = "172.30.0.42"
			svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 0, 0)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "https", v1.ProtocolTCP, 443, 0, 0)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "dns-udp", v1.ProtocolUDP, 53, 0, 0)
		}),
		// An unnamed port: the model names it by number.
		makeTestService("ns3", "svc3", func(svc *v1.Service) {
			svc.Spec.ClusterIP = "172.30.0.43"
			svc.Spec.Ports = addTestPort(nil, "", v1.ProtocolTCP, 8080, 0, 0)
		}),
	)
	populateEndpointSlices(p,
		makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{endpoint("10.180.0.1", testHostname, nil, nil, nil)}
			eps.Ports = []discovery.EndpointPort{tcpPort("http", 80)}
		}),
		// Named targetPort: two slices whose endpoints listen on
		// different ports for the same service port.
		makeTestEndpointSlice("ns2", "svc2", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{
				endpoint("10.180.0.1", testHostname, nil, nil, nil),
				endpoint("10.180.2.1", "host2", nil, nil, nil),
			}
			eps.Ports = []discovery.EndpointPort{tcpPort("http", 80), tcpPort("https", 443),
				{Name: ptr.To("dns-udp"), Port: ptr.To[int32](53), Protocol: ptr.To(v1.ProtocolUDP)}}
		}),
		makeTestEndpointSlice("ns2", "svc2", 2, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{endpoint("10.180.0.3", testHostname, nil, nil, nil)}
			eps.Ports = []discovery.EndpointPort{tcpPort("http", 8080), tcpPort("https", 8443)}
		}),
		makeTestEndpointSlice("ns3", "svc3", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{endpoint("10.180.0.4", "", nil, nil, nil)}
			eps.Ports = []discovery.EndpointPort{{Name: ptr.To(""), Port: ptr.To[int32](8081), Protocol: ptr.To(v1.ProtocolTCP)}}
		}),
	)
	require.NoError(t, p.syncProxyRules())

	runConnectionTests(t, applier, []connectionTest{
		{name: "simple clusterIP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "10.180.0.1:80"},
		{name: "from the node itself", sourceIP: testNodeIP, destIP: "172.30.0.41", destPort: 80, output: "10.180.0.1:80"},
		{name: "named targetPort, http", sourceIP: testPodClient, destIP: "172.30.0.42", destPort: 80, output: "10.180.0.1:80, 10.180.0.3:8080, 10.180.2.1:80"},
		{name: "named targetPort, https", sourceIP: testPodClient, destIP: "172.30.0.42", destPort: 443, output: "10.180.0.1:443, 10.180.0.3:8443, 10.180.2.1:443"},
		{name: "UDP port is not served by HAProxy", sourceIP: testPodClient, destIP: "172.30.0.42", destPort: 53, output: "NONE"},
		{name: "unnamed port", sourceIP: testPodClient, destIP: "172.30.0.43", destPort: 8080, output: "10.180.0.4:8081"},
		{name: "unknown port", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 443, output: "NONE"},
		{name: "unknown IP", sourceIP: testPodClient, destIP: "172.30.0.99", destPort: 80, output: "NONE"},
	})

	cfg := applier.model(v1.IPv4Protocol)
	assert.NotNil(t, servicePort(cfg, "ns1.svc1:http:tcp"))
	assert.NotNil(t, servicePort(cfg, "ns3.svc3:8080:tcp"), "unnamed port is named by number")
	assert.Nil(t, servicePort(cfg, "ns2.svc2:dns-udp:udp"))
	assert.InDelta(t, 1, gaugeValue(t, unsupportedServicePorts.WithLabelValues("udp", "IPv4")), 0)
}

func TestClusterIPIPv6(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv6Protocol)
	makeServiceMap(p, makeTestService("ns1", "svc1", func(svc *v1.Service) {
		svc.Spec.ClusterIP = "fd00:10:96::41"
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 0, 0)
	}))
	populateEndpointSlices(p, makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv6
		eps.Endpoints = []discovery.Endpoint{endpoint("fd00:180::1", testHostname, nil, nil, nil)}
		eps.Ports = []discovery.EndpointPort{tcpPort("http", 80)}
	}))
	require.NoError(t, p.syncProxyRules())
	runConnectionTests(t, applier, []connectionTest{
		{name: "IPv6 clusterIP", sourceIP: "fd00::2", destIP: "fd00:10:96::41", destPort: 80, output: "[fd00:180::1]:80"},
	})
	assert.NotNil(t, servicePort(applier.model(v1.IPv6Protocol), "ns1.svc1:http:tcp:ipv6"))
}

// lbService is a LoadBalancer Service at 172.30.0.41:80 (NodePort 3001)
// with LB IP 1.2.3.4 and external IP 192.168.99.11.
func lbService(mod func(*v1.Service)) *v1.Service {
	return makeTestService("ns1", "svc1", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		svc.Spec.ClusterIP = "172.30.0.41"
		svc.Spec.ExternalIPs = []string{"192.168.99.11"}
		svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 3001, 0)
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4"}}
		if mod != nil {
			mod(svc)
		}
	})
}

// lbEndpoints: one endpoint on this node (10.180.0.1) and one elsewhere (10.180.2.1).
func lbEndpoints(mod func(*discovery.EndpointSlice)) *discovery.EndpointSlice {
	return makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv4
		eps.Endpoints = []discovery.Endpoint{
			endpoint("10.180.0.1", testHostname, nil, nil, nil),
			endpoint("10.180.2.1", "host2", nil, nil, nil),
		}
		eps.Ports = []discovery.EndpointPort{tcpPort("p80", 80)}
		if mod != nil {
			mod(eps)
		}
	})
}

func TestLoadBalancer(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		// The node's own range is allowed, so the LB IP itself (the source
		// of a node's connection to its own local LB IP) is allowed too.
		svc.Spec.LoadBalancerSourceRanges = []string{" 203.0.113.0/25 ", "192.168.0.0/24"}
	}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())

	all := "10.180.0.1:80, 10.180.2.1:80"
	runConnectionTests(t, applier, []connectionTest{
		{name: "pod to cluster IP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: all},
		{name: "external to nodePort (source ranges do not apply)", sourceIP: "198.51.100.1", destIP: testNodeIP, destPort: 3001, output: all},
		{name: "allowed external client to LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: all},
		{name: "disallowed external client to LB IP", sourceIP: "203.0.113.200", destIP: "1.2.3.4", destPort: 80, output: "DROP"},
		{name: "pod to LB IP is subject to source ranges", sourceIP: testPodClient, destIP: "1.2.3.4", destPort: 80, output: "DROP"},
		{name: "node to its own LB IP", sourceIP: "1.2.3.4", destIP: "1.2.3.4", destPort: 80, output: all},
		{name: "node IP to LB IP", sourceIP: testNodeIP, destIP: "1.2.3.4", destPort: 80, output: all},
		{name: "disallowed client to external IP (source ranges do not apply)", sourceIP: "198.51.100.1", destIP: "192.168.99.11", destPort: 80, output: all},
		{name: "LB IP, wrong port", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 3001, output: "NONE"},
	})
}

func TestNodePorts(t *testing.T) {
	testCases := []struct {
		name              string
		family            v1.IPFamily
		nodePortAddresses []string
		// reachable and unreachable local addresses for the NodePort.
		reachable   []string
		unreachable []string
	}{
		{
			name:              "ipv4, nodePortAddresses on the node's subnet",
			family:            v1.IPv4Protocol,
			nodePortAddresses: []string{"192.168.0.0/24"},
			reachable:         []string{testNodeIP},
			unreachable:       []string{"127.0.0.1", "172.30.0.41"},
		},
		{
			name:              "ipv4, nodePortAddresses unset: every local address",
			family:            v1.IPv4Protocol,
			nodePortAddresses: nil,
			reachable:         []string{testNodeIP, "127.0.0.1", "10.0.0.99"},
		},
		{
			name:              "ipv4, nodePortAddresses of the other family only",
			family:            v1.IPv4Protocol,
			nodePortAddresses: []string{"2001:db8::/64"},
			// upstream: a family without nodePortAddresses listens everywhere
			reachable: []string{testNodeIP},
		},
		{
			name:              "ipv6, nodePortAddresses on the node's subnet",
			family:            v1.IPv6Protocol,
			nodePortAddresses: []string{"2001:db8::/64"},
			reachable:         []string{testNodeIPv6},
			unreachable:       []string{"::1"},
		},
		{
			name:              "ipv6, nodePortAddresses unset",
			family:            v1.IPv6Protocol,
			nodePortAddresses: nil,
			reachable:         []string{testNodeIPv6, "::1"},
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, tc.family, func(c *Config) { c.NodePortAddresses = tc.nodePortAddresses })
			clusterIP, epIP, client, addrType := "172.30.0.41", "10.180.0.1", testPodClient, discovery.AddressTypeIPv4
			if tc.family == v1.IPv6Protocol {
				clusterIP, epIP, client, addrType = "fd00:172:30::41", "fd00:10:180::1", "fd00::2", discovery.AddressTypeIPv6
			}
			makeServiceMap(p, makeTestService("ns1", "svc1", func(svc *v1.Service) {
				svc.Spec.Type = v1.ServiceTypeNodePort
				svc.Spec.ClusterIP = clusterIP
				svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 3001, 0)
			}))
			populateEndpointSlices(p, makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = addrType
				eps.Endpoints = []discovery.Endpoint{endpoint(epIP, "host2", nil, nil, nil)}
				eps.Ports = []discovery.EndpointPort{tcpPort("p80", 80)}
			}))
			require.NoError(t, p.syncProxyRules())
			want := net.JoinHostPort(epIP, "80")
			var tests []connectionTest
			for _, a := range tc.reachable {
				tests = append(tests, connectionTest{name: "nodePort on " + a, sourceIP: client, destIP: a, destPort: 3001, output: want})
			}
			for _, a := range tc.unreachable {
				tests = append(tests, connectionTest{name: "no nodePort on " + a, sourceIP: client, destIP: a, destPort: 3001, output: "NONE"})
			}
			tests = append(tests, connectionTest{name: "clusterIP", sourceIP: client, destIP: clusterIP, destPort: 80, output: want})
			runConnectionTests(t, applier, tests)
		})
	}
}

func TestExternalTrafficPolicyLocal(t *testing.T) {
	// Pods are in 10.0.0.0/8, as in upstream's tests.
	p, applier, hs := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.ClusterCIDRs = []string{"10.0.0.0/8", "fd00:10::/48"} })
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 30000
	}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())

	both, local := "10.180.0.1:80, 10.180.2.1:80", "10.180.0.1:80"
	runConnectionTests(t, applier, []connectionTest{
		{name: "pod to cluster IP hits both endpoints", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: both},
		{name: "pod to external IP hits both endpoints (short-circuit)", sourceIP: testPodClient, destIP: "192.168.99.11", destPort: 80, output: both},
		{name: "external to external IP hits only local endpoint", sourceIP: testExternalClient, destIP: "192.168.99.11", destPort: 80, output: local},
		{name: "pod to LB IP hits both endpoints (short-circuit)", sourceIP: testPodClient, destIP: "1.2.3.4", destPort: 80, output: both},
		{name: "external to LB IP hits only local endpoint", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: local},
		{name: "pod to NodePort hits both endpoints (short-circuit)", sourceIP: testPodClient, destIP: testNodeIP, destPort: 3001, output: both},
		{name: "external to NodePort hits only local endpoint", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: local},
		{name: "node to its NodePort hits both endpoints", sourceIP: testNodeIP, destIP: testNodeIP, destPort: 3001, output: both},
		{name: "node to its local LB IP hits both endpoints", sourceIP: "1.2.3.4", destIP: "1.2.3.4", destPort: 80, output: both},
	})
	assert.Equal(t, map[types.NamespacedName]uint16{{Namespace: "ns1", Name: "svc1"}: 30000}, hs.services)
	assert.Equal(t, map[types.NamespacedName]int{{Namespace: "ns1", Name: "svc1"}: 1}, hs.endpoints)

	// Without a local endpoint, external traffic is dropped (an external
	// LB's health check sends it elsewhere); internal and short-circuited
	// traffic is still served.
	p.OnEndpointSliceUpdate(nil, lbEndpoints(func(eps *discovery.EndpointSlice) {
		eps.Endpoints = eps.Endpoints[1:]
	}))
	require.NoError(t, p.syncProxyRules())
	runConnectionTests(t, applier, []connectionTest{
		{name: "no local endpoints: cluster IP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "10.180.2.1:80"},
		{name: "no local endpoints: external to LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: "DROP"},
		{name: "no local endpoints: external to NodePort", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: "DROP"},
		{name: "no local endpoints: pod to LB IP", sourceIP: testPodClient, destIP: "1.2.3.4", destPort: 80, output: "10.180.2.1:80"},
		{name: "no local endpoints: node to NodePort", sourceIP: testNodeIP, destIP: testNodeIP, destPort: 3001, output: "10.180.2.1:80"},
	})
	assert.Zero(t, hs.endpoints[types.NamespacedName{Namespace: "ns1", Name: "svc1"}], "no local endpoint: health check fails")

	// No endpoint at all: everyone is rejected.
	p.OnEndpointSliceDelete(lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	runConnectionTests(t, applier, []connectionTest{
		{name: "no endpoints: pod to LB IP", sourceIP: testPodClient, destIP: "1.2.3.4", destPort: 80, output: "REJECT"},
		{name: "no endpoints: external to NodePort", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: "REJECT"},
	})
}

// TestExternalTrafficPolicyLocalBothPolicies: with both policies Local,
// internal traffic stays on this node while external traffic from the
// cluster is still short-circuited to every endpoint.
func TestExternalTrafficPolicyLocalBothPolicies(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.ClusterCIDRs = []string{"10.0.0.0/8"} })
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		svc.Spec.HealthCheckNodePort = 30000
	}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	both, local := "10.180.0.1:80, 10.180.2.1:80", "10.180.0.1:80"
	runConnectionTests(t, applier, []connectionTest{
		{name: "pod to cluster IP: internal Local", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: local},
		{name: "pod to LB IP: short-circuit", sourceIP: testPodClient, destIP: "1.2.3.4", destPort: 80, output: both},
		{name: "external to LB IP: external Local", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: local},
	})
	p.OnEndpointSliceUpdate(nil, lbEndpoints(func(eps *discovery.EndpointSlice) { eps.Endpoints = eps.Endpoints[1:] }))
	require.NoError(t, p.syncProxyRules())
	runConnectionTests(t, applier, []connectionTest{
		{name: "no local: pod to cluster IP dropped", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "DROP"},
		{name: "no local: pod to LB IP short-circuited", sourceIP: testPodClient, destIP: "1.2.3.4", destPort: 80, output: "10.180.2.1:80"},
		{name: "no local: external to NodePort dropped", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: "DROP"},
	})
}

func TestExternalTrafficPolicyCluster(t *testing.T) {
	p, applier, hs := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	all := "10.180.0.1:80, 10.180.2.1:80"
	runConnectionTests(t, applier, []connectionTest{
		{name: "pod to cluster IP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: all},
		{name: "external to LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: all},
		{name: "external to NodePort", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: all},
		{name: "external to external IP", sourceIP: testExternalClient, destIP: "192.168.99.11", destPort: 80, output: all},
	})
	assert.Empty(t, hs.services, "no health check node port for policy Cluster")
	// Cluster policy needs a single endpoint set.
	sp := servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp")
	require.NotNil(t, sp)
	assert.Len(t, sp.Sets(), 1)
	assert.Nil(t, sp.Local)
}

func TestInternalTrafficPolicy(t *testing.T) {
	type endpointSpec struct {
		ip     string
		onNode bool
	}
	testCases := []struct {
		name      string
		policy    v1.ServiceInternalTrafficPolicy
		endpoints []endpointSpec
		want      string
	}{
		{"policy Cluster uses all endpoints", v1.ServiceInternalTrafficPolicyCluster,
			[]endpointSpec{{"10.0.1.1", true}, {"10.0.1.2", true}, {"10.0.1.3", false}}, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"},
		{"policy Local uses local endpoints", v1.ServiceInternalTrafficPolicyLocal,
			[]endpointSpec{{"10.0.1.1", true}, {"10.0.1.2", true}, {"10.0.1.3", false}}, "10.0.1.1:80, 10.0.1.2:80"},
		{"policy Local without local endpoints drops", v1.ServiceInternalTrafficPolicyLocal,
			[]endpointSpec{{"10.0.1.1", false}, {"10.0.1.2", false}}, "DROP"},
		{"policy Local without any endpoint rejects", v1.ServiceInternalTrafficPolicyLocal,
			nil, "REJECT"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
			makeServiceMap(p, makeTestService("ns1", "svc1", func(svc *v1.Service) {
				svc.Spec.ClusterIP = "172.30.1.1"
				svc.Spec.InternalTrafficPolicy = ptr.To(tc.policy)
				svc.Spec.Ports = addTestPort(nil, "", v1.ProtocolTCP, 80, 0, 0)
			}))
			populateEndpointSlices(p, makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				for _, e := range tc.endpoints {
					node := "host1"
					if e.onNode {
						node = testHostname
					}
					eps.Endpoints = append(eps.Endpoints, endpoint(e.ip, node, ptr.To(true), nil, nil))
				}
				eps.Ports = []discovery.EndpointPort{{Name: ptr.To(""), Port: ptr.To[int32](80), Protocol: ptr.To(v1.ProtocolTCP)}}
			}))
			require.NoError(t, p.syncProxyRules())
			runConnectionTests(t, applier, []connectionTest{
				{name: "pod to cluster IP", sourceIP: testPodClient, destIP: "172.30.1.1", destPort: 80, output: tc.want},
			})
		})
	}
}

// terminatingCase is an endpoint set of a terminating-endpoints test.
type terminatingEndpoint struct {
	ip                          string
	local                       bool
	ready, serving, terminating bool
}

func terminatingSlice(eps []terminatingEndpoint) *discovery.EndpointSlice {
	return makeTestEndpointSlice("ns1", "svc1", 1, func(slice *discovery.EndpointSlice) {
		slice.AddressType = discovery.AddressTypeIPv4
		for _, e := range eps {
			node := "host-1"
			if e.local {
				node = testHostname
			}
			slice.Endpoints = append(slice.Endpoints, endpoint(e.ip, node, ptr.To(e.ready), ptr.To(e.serving), ptr.To(e.terminating)))
		}
		slice.Ports = []discovery.EndpointPort{tcpPort("p80", 80)}
	})
}

func TestTerminatingEndpointsTrafficPolicyLocal(t *testing.T) {
	testCases := []struct {
		name        string
		endpoints   []terminatingEndpoint
		wantCluster string
		wantLocal   string
	}{
		{
			name: "ready endpoints exist: terminating ones are ignored",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", true, true, true, false},
				{"10.0.1.2", true, true, true, false},
				{"10.0.1.3", true, false, true, true},
				{"10.0.1.4", true, false, false, true},
				{"10.0.1.5", false, true, true, false},
			},
			wantCluster: "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
			wantLocal:   "10.0.1.1:80, 10.0.1.2:80",
		},
		{
			name: "only terminating local endpoints: serving ones are used for Local, ready remote for Cluster",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", true, false, true, true},
				{"10.0.1.2", true, false, true, true},
				{"10.0.1.3", true, false, false, true},
				{"10.0.1.4", false, true, true, false},
			},
			wantCluster: "10.0.1.4:80",
			wantLocal:   "10.0.1.1:80, 10.0.1.2:80",
		},
		{
			name: "terminating local endpoints not serving: external traffic dropped",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", true, false, false, true},
				{"10.0.1.5", false, true, true, false},
			},
			wantCluster: "10.0.1.5:80",
			wantLocal:   "DROP",
		},
		{
			name: "only terminating serving endpoints, all remote: dropped externally, served internally",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", false, false, true, true},
				{"10.0.1.2", false, false, true, true},
			},
			wantCluster: "10.0.1.1:80, 10.0.1.2:80",
			wantLocal:   "DROP",
		},
		{
			name: "no serving endpoint anywhere: rejected",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", true, false, false, true},
				{"10.0.1.2", false, false, false, true},
			},
			wantCluster: "REJECT",
			wantLocal:   "REJECT",
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
			makeServiceMap(p, lbService(func(svc *v1.Service) {
				svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				svc.Spec.HealthCheckNodePort = 30000
			}))
			populateEndpointSlices(p, terminatingSlice(tc.endpoints))
			require.NoError(t, p.syncProxyRules())
			runConnectionTests(t, applier, []connectionTest{
				{name: "pod to clusterIP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: tc.wantCluster},
				{name: "external to LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: tc.wantLocal},
			})
		})
	}
}

func TestTerminatingEndpointsTrafficPolicyCluster(t *testing.T) {
	testCases := []struct {
		name      string
		endpoints []terminatingEndpoint
		want      string
	}{
		{
			name: "ready endpoints exist: terminating ones are ignored",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", true, true, true, false},
				{"10.0.1.3", true, false, true, true},
				{"10.0.1.5", false, true, true, false},
			},
			want: "10.0.1.1:80, 10.0.1.5:80",
		},
		{
			name: "only terminating endpoints: serving ones are used",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", true, false, true, true},
				{"10.0.1.2", false, false, true, true},
				{"10.0.1.3", false, false, false, true},
			},
			want: "10.0.1.1:80, 10.0.1.2:80",
		},
		{
			name: "no serving endpoint: rejected",
			endpoints: []terminatingEndpoint{
				{"10.0.1.1", true, false, false, true},
			},
			want: "REJECT",
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
			makeServiceMap(p, lbService(nil))
			populateEndpointSlices(p, terminatingSlice(tc.endpoints))
			require.NoError(t, p.syncProxyRules())
			runConnectionTests(t, applier, []connectionTest{
				{name: "pod to clusterIP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: tc.want},
				{name: "external to LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: tc.want},
				{name: "external to NodePort", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: tc.want},
			})
		})
	}
}

func TestHealthCheckNodePortWhenTerminating(t *testing.T) {
	p, _, hs := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 30000
	}))
	name := types.NamespacedName{Namespace: "ns1", Name: "svc1"}
	p.OnEndpointSliceAdd(terminatingSlice([]terminatingEndpoint{
		{"10.0.1.1", true, true, true, false},
		{"10.0.1.2", true, true, true, false},
		{"10.0.1.3", true, true, true, false},
		{"10.0.1.4", false, true, true, false},
	}))
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, 3, hs.endpoints[name], "local ready endpoints")

	// All local endpoints terminating (still serving): the health check
	// reports none, so external load balancers move away from this node.
	p.OnEndpointSliceUpdate(nil, terminatingSlice([]terminatingEndpoint{
		{"10.0.1.1", true, false, true, true},
		{"10.0.1.2", true, false, true, true},
		{"10.0.1.3", true, false, true, true},
		{"10.0.1.4", false, true, true, false},
	}))
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, 0, hs.endpoints[name])
}

func TestLoadBalancerIngressRouteTypeProxy(t *testing.T) {
	testCases := []struct {
		name   string
		ipMode *v1.LoadBalancerIPMode
		want   string
	}{
		{"ipMode VIP is served", ptr.To(v1.LoadBalancerIPModeVIP), "10.180.0.1:80, 10.180.2.1:80"},
		{"ipMode unset is VIP", nil, "10.180.0.1:80, 10.180.2.1:80"},
		{"ipMode Proxy is left to the load balancer", ptr.To(v1.LoadBalancerIPModeProxy), "NONE"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
			makeServiceMap(p, lbService(func(svc *v1.Service) {
				svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4", IPMode: tc.ipMode}}
			}))
			populateEndpointSlices(p, lbEndpoints(nil))
			require.NoError(t, p.syncProxyRules())
			runConnectionTests(t, applier, []connectionTest{
				{name: "external to LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: tc.want},
			})
		})
	}
}

func TestSessionAffinity(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 30000
		svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}
	}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	cfg := applier.model(v1.IPv4Protocol)
	// One affinity timeout per Service port, for both of its endpoint sets
	// (the old model had a stick table per backend; now the services map
	// carries the timeout and one table serves every Service port).
	sp := servicePort(cfg, "ns1.svc1:p80:tcp")
	require.NotNil(t, sp)
	require.Len(t, sp.Sets(), 2)
	assert.Equal(t, "300s", haproxycfg.FormatDuration(sp.Affinity))
	for _, l := range sp.Listeners {
		assert.True(t, strings.Contains(sp.DispatchValue(l), "|300|"), "%s: %s", l.Key(), sp.DispatchValue(l))
	}
	for _, dst := range []string{"172.30.0.41", "1.2.3.4"} {
		res := haproxycfg.Trace(dispatcherFor(cfg, mustAddr(dst)), mustAddr(testExternalClient), mustAddrPort(dst, 80))
		assert.Equal(t, haproxycfg.Served, res.Verdict, dst)
		assert.True(t, res.Sticky, dst)
	}
}

func TestBuildServiceMapAddRemove(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	services := []*v1.Service{
		makeTestService("somewhere-else", "cluster-ip", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeClusterIP
			svc.Spec.ClusterIP = "172.30.55.4"
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "something", v1.ProtocolUDP, 1234, 4321, 0)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "somethingelse", v1.ProtocolUDP, 1235, 5321, 0)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "sctpport", v1.ProtocolSCTP, 1236, 6321, 0)
		}),
		makeTestService("somewhere-else", "node-port", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeNodePort
			svc.Spec.ClusterIP = "172.30.55.10"
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "blahblah", v1.ProtocolUDP, 345, 678, 0)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "moreblahblah", v1.ProtocolTCP, 344, 677, 0)
		}),
		makeTestService("somewhere", "load-balancer", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Spec.ClusterIP = "172.30.55.11"
			svc.Spec.LoadBalancerIP = "1.2.3.4"
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "foobar", v1.ProtocolTCP, 8675, 30061, 7000)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "baz", v1.ProtocolTCP, 8676, 30062, 7001)
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4"}}
		}),
		makeTestService("somewhere", "only-local-load-balancer", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Spec.ClusterIP = "172.30.55.12"
			svc.Spec.LoadBalancerIP = "5.6.7.8"
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "foobar2", v1.ProtocolTCP, 8677, 30063, 7002)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "baz", v1.ProtocolTCP, 8678, 30064, 7003)
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "5.6.7.8"}}
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			svc.Spec.HealthCheckNodePort = 345
		}),
	}
	for i := range services {
		p.OnServiceAdd(services[i])
	}
	require.NoError(t, p.syncProxyRules())
	assert.Len(t, p.svcPortMap, 9, "service map counts every port")
	assert.Equal(t, []string{
		"somewhere-else.node-port:moreblahblah:tcp",
		"somewhere.load-balancer:baz:tcp",
		"somewhere.load-balancer:foobar:tcp",
		"somewhere.only-local-load-balancer:baz:tcp",
		"somewhere.only-local-load-balancer:foobar2:tcp",
	}, servicePortNames(applier.model(v1.IPv4Protocol)), "only TCP ports reach HAProxy")
	assert.InDelta(t, 3, gaugeValue(t, unsupportedServicePorts.WithLabelValues("udp", "IPv4")), 0)
	assert.InDelta(t, 1, gaugeValue(t, unsupportedServicePorts.WithLabelValues("sctp", "IPv4")), 0)
	assert.Equal(t, map[types.NamespacedName]uint16{{Namespace: "somewhere", Name: "only-local-load-balancer"}: 345}, p.svcPortMap.HealthCheckNodePorts())

	// Remove some stuff; the UDP ports stop being counted too.
	p.OnServiceDelete(services[0])
	p.OnServiceDelete(services[1])
	p.OnServiceDelete(services[3])
	require.NoError(t, p.syncProxyRules())
	assert.Len(t, p.svcPortMap, 2)
	assert.Equal(t, []string{"somewhere.load-balancer:baz:tcp", "somewhere.load-balancer:foobar:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	assert.InDelta(t, 0, gaugeValue(t, unsupportedServicePorts.WithLabelValues("udp", "IPv4")), 0)
	assert.Empty(t, p.unsupportedLogged)
}

func TestBuildServiceMapServiceHeadlessAndExternalName(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p,
		makeTestService("somewhere-else", "headless", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeClusterIP
			svc.Spec.ClusterIP = v1.ClusterIPNone
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "rpc", v1.ProtocolTCP, 1234, 0, 0)
		}),
		makeTestService("somewhere-else", "headless-without-port", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeClusterIP
			svc.Spec.ClusterIP = v1.ClusterIPNone
		}),
		makeTestService("somewhere-else", "external-name", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeExternalName
			svc.Spec.ClusterIP = "172.30.55.4" // Should be ignored
			svc.Spec.ExternalName = "foo2.bar.com"
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "blah", v1.ProtocolTCP, 1235, 5321, 0)
		}),
	)
	require.NoError(t, p.syncProxyRules())
	assert.Empty(t, p.svcPortMap)
	assert.Empty(t, servicePortNames(applier.model(v1.IPv4Protocol)))
	runConnectionTests(t, applier, []connectionTest{
		{name: "ExternalName cluster IP is not served", sourceIP: testPodClient, destIP: "172.30.55.4", destPort: 1235, output: "NONE"},
	})
}

func TestBuildServiceMapServiceUpdate(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	servicev1 := makeTestService("somewhere", "some-service", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeClusterIP
		svc.Spec.ClusterIP = "172.30.55.4"
		svc.Spec.Ports = addTestPort(svc.Spec.Ports, "something", v1.ProtocolTCP, 1234, 0, 0)
	})
	servicev2 := makeTestService("somewhere", "some-service", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		svc.Spec.ClusterIP = "172.30.55.4"
		svc.Spec.Ports = addTestPort(svc.Spec.Ports, "something", v1.ProtocolTCP, 1234, 4321, 0)
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "10.1.2.3"}}
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 345
	})
	const name = "somewhere.some-service:something:tcp"
	// The listeners are the services-map keys of the Service port.
	bindNames := func() []string {
		sp := servicePort(applier.model(v1.IPv4Protocol), name)
		require.NotNil(t, sp)
		return listenerKeys(sp)
	}

	p.OnServiceAdd(servicev1)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"172.30.55.4:1234"}, bindNames())
	assert.Empty(t, p.svcPortMap.HealthCheckNodePorts())

	// Change to load balancer.
	p.OnServiceUpdate(servicev1, servicev2)
	require.NoError(t, p.syncProxyRules())
	// The NodePort is one listener, "*:4321", whatever the node
	// addresses: the kernel dispatches it on each of them (the old model
	// had a bind per node address).
	assert.Equal(t, []string{"172.30.55.4:1234", "*:4321", "10.1.2.3:1234"}, bindNames())
	assert.Len(t, p.svcPortMap.HealthCheckNodePorts(), 1)

	// No change: the model is the same.
	before := renderAll(t, applier.model(v1.IPv4Protocol))
	p.OnServiceUpdate(servicev2, servicev2)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, before, renderAll(t, applier.model(v1.IPv4Protocol)))

	// And back to ClusterIP.
	p.OnServiceUpdate(servicev2, servicev1)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"172.30.55.4:1234"}, bindNames())
	assert.Empty(t, p.svcPortMap.HealthCheckNodePorts())
}

func TestUpdateEndpointsMap(t *testing.T) {
	type slice struct {
		name string
		ips  []string
		port int32
	}
	svcName := types.NamespacedName{Namespace: "ns1", Name: "ep1"}
	mkSlice := func(s slice) *discovery.EndpointSlice {
		return makeTestEndpointSlice(svcName.Namespace, svcName.Name, 0, func(eps *discovery.EndpointSlice) {
			eps.Name = s.name
			eps.AddressType = discovery.AddressTypeIPv4
			for _, ip := range s.ips {
				eps.Endpoints = append(eps.Endpoints, endpoint(ip, testHostname, nil, nil, nil))
			}
			eps.Ports = []discovery.EndpointPort{tcpPort("p11", s.port)}
		})
	}
	testCases := []struct {
		name     string
		previous []slice
		current  []slice
		want     string
	}{
		{"nothing", nil, nil, "REJECT"},
		{"no change", []slice{{"a", []string{"10.1.1.1"}, 11}}, []slice{{"a", []string{"10.1.1.1"}, 11}}, "10.1.1.1:11"},
		{"add an endpoint", []slice{{"a", []string{"10.1.1.1"}, 11}}, []slice{{"a", []string{"10.1.1.1", "10.1.1.2"}, 11}}, "10.1.1.1:11, 10.1.1.2:11"},
		{"remove an endpoint", []slice{{"a", []string{"10.1.1.1", "10.1.1.2"}, 11}}, []slice{{"a", []string{"10.1.1.2"}, 11}}, "10.1.1.2:11"},
		{"add a slice", []slice{{"a", []string{"10.1.1.1"}, 11}}, []slice{{"a", []string{"10.1.1.1"}, 11}, {"b", []string{"10.1.1.3"}, 12}}, "10.1.1.1:11, 10.1.1.3:12"},
		{"remove a slice", []slice{{"a", []string{"10.1.1.1"}, 11}, {"b", []string{"10.1.1.3"}, 12}}, []slice{{"b", []string{"10.1.1.3"}, 12}}, "10.1.1.3:12"},
		{"remove every slice", []slice{{"a", []string{"10.1.1.1"}, 11}}, nil, "REJECT"},
		{"change the port", []slice{{"a", []string{"10.1.1.1"}, 11}}, []slice{{"a", []string{"10.1.1.1"}, 22}}, "10.1.1.1:22"},
		{"same endpoint in two slices is one server", nil, []slice{{"a", []string{"10.1.1.1"}, 11}, {"b", []string{"10.1.1.1"}, 11}}, "10.1.1.1:11"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
			makeServiceMap(p, makeTestService(svcName.Namespace, svcName.Name, func(svc *v1.Service) {
				svc.Spec.ClusterIP = "172.30.0.11"
				svc.Spec.Ports = addTestPort(nil, "p11", v1.ProtocolTCP, 80, 0, 0)
			}))
			for _, s := range tc.previous {
				p.OnEndpointSliceAdd(mkSlice(s))
			}
			require.NoError(t, p.syncProxyRules())
			prevNames := map[string]bool{}
			for _, s := range tc.previous {
				prevNames[s.name] = true
			}
			curNames := map[string]bool{}
			for _, s := range tc.current {
				curNames[s.name] = true
				if prevNames[s.name] {
					p.OnEndpointSliceUpdate(nil, mkSlice(s))
				} else {
					p.OnEndpointSliceAdd(mkSlice(s))
				}
			}
			for _, s := range tc.previous {
				if !curNames[s.name] {
					p.OnEndpointSliceDelete(mkSlice(s))
				}
			}
			require.NoError(t, p.syncProxyRules())
			runConnectionTests(t, applier, []connectionTest{
				{name: "pod to cluster IP", sourceIP: testPodClient, destIP: "172.30.0.11", destPort: 80, output: tc.want},
			})
		})
	}
}

func TestSyncProxyRulesRepeated(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	svc1 := makeTestService("ns1", "svc1", func(svc *v1.Service) {
		svc.Spec.ClusterIP = "172.30.0.41"
		svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 0, 0)
	})
	svc2 := makeTestService("ns2", "svc2", func(svc *v1.Service) {
		svc.Spec.ClusterIP = "172.30.0.42"
		svc.Spec.Ports = addTestPort(nil, "p8080", v1.ProtocolTCP, 8080, 0, 0)
	})
	eps1 := makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv4
		eps.Endpoints = []discovery.Endpoint{endpoint("10.0.1.1", "", nil, nil, nil)}
		eps.Ports = []discovery.EndpointPort{tcpPort("p80", 80)}
	})
	makeServiceMap(p, svc1, svc2)
	populateEndpointSlices(p, eps1)
	require.NoError(t, p.syncProxyRules())
	first := renderAll(t, applier.model(v1.IPv4Protocol))

	// Syncing again without changes gives the same file.
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, first, renderAll(t, applier.model(v1.IPv4Protocol)))
	assert.Equal(t, 2, applier.applies)

	runConnectionTests(t, applier, []connectionTest{
		{name: "svc1 served", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "10.0.1.1:80"},
		{name: "svc2 without endpoints rejects", sourceIP: testPodClient, destIP: "172.30.0.42", destPort: 8080, output: "REJECT"},
	})

	// Delete a service: its Service port and endpoint set go away.
	p.OnServiceDelete(svc2)
	require.NoError(t, p.syncProxyRules())
	cfg := applier.model(v1.IPv4Protocol)
	assert.Equal(t, []string{"ns1.svc1:p80:tcp"}, servicePortNames(cfg))
	_, endpointsMap, _ := haproxycfg.RenderMaps(cfg.Dispatchers[0])
	assert.NotContains(t, string(endpointsMap), "ns2.svc2", "the endpoint set is gone from the endpoints map")
	runConnectionTests(t, applier, []connectionTest{
		{name: "svc2 gone", sourceIP: testPodClient, destIP: "172.30.0.42", destPort: 8080, output: "NONE"},
	})

	// Endpoints go away: haproxy.cfg and the listeners stay the same, only
	// map entries change (so the Applier uses the runtime API instead of
	// a reload).
	cfgBefore, err := haproxycfg.Render(cfg)
	require.NoError(t, err)
	listenersBefore := slices.Clone(servicePort(cfg, "ns1.svc1:p80:tcp").Listeners)
	p.OnEndpointSliceDelete(eps1)
	require.NoError(t, p.syncProxyRules())
	cfg = applier.model(v1.IPv4Protocol)
	cfgAfter, err := haproxycfg.Render(cfg)
	require.NoError(t, err)
	assert.Equal(t, string(cfgBefore), string(cfgAfter), "no reload")
	assert.Equal(t, listenersBefore, servicePort(cfg, "ns1.svc1:p80:tcp").Listeners)
	runConnectionTests(t, applier, []connectionTest{
		{name: "svc1 without endpoints rejects", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "REJECT"},
	})
}

func TestSyncRetriesWhenApplyFails(t *testing.T) {
	p, applier, hs := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 30000
	}))
	applier.fail = errors.New("haproxy -c refused the config")
	before := counterValue(t, syncFailuresTotal.WithLabelValues("IPv4"))
	err := p.syncProxyRules()
	require.ErrorContains(t, err, "haproxy -c refused")
	assert.InDelta(t, before+1, counterValue(t, syncFailuresTotal.WithLabelValues("IPv4")), 0)
	assert.Nil(t, hs.services, "health servers are updated only after a successful apply")

	applier.fail = nil
	require.NoError(t, p.syncProxyRules())
	assert.Len(t, hs.services, 1)
}

func TestNotSyncedBeforeInitialized(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	p.setInitialized(false)
	require.NoError(t, p.syncProxyRules())
	assert.Zero(t, applier.applies, "an empty model would tear down a running HAProxy")
}

func TestNoEndpointsMetric(t *testing.T) {
	type endpointOn struct {
		ip       string
		hostname string
	}
	metrics.RegisterMetrics("haproxy")
	testCases := []struct {
		name                   string
		internalTrafficPolicy  *v1.ServiceInternalTrafficPolicy
		externalTrafficPolicy  v1.ServiceExternalTrafficPolicy
		endpoints              []endpointOn
		expectedInternalMetric int
		expectedExternalMetric int
	}{
		{
			name:                  "internalTrafficPolicy is set and there are local endpoints",
			internalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyLocal),
			endpoints:             []endpointOn{{"10.0.1.1", testHostname}, {"10.0.1.2", "host1"}},
		},
		{
			name:                  "externalTrafficPolicy is set and there are local endpoints",
			externalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
			endpoints:             []endpointOn{{"10.0.1.1", testHostname}, {"10.0.1.2", "host1"}},
		},
		{
			name:                   "both policies are set and there are no local endpoints",
			internalTrafficPolicy:  ptr.To(v1.ServiceInternalTrafficPolicyLocal),
			externalTrafficPolicy:  v1.ServiceExternalTrafficPolicyLocal,
			endpoints:              []endpointOn{{"10.0.1.1", "host1"}, {"10.0.1.2", "host2"}},
			expectedInternalMetric: 1,
			expectedExternalMetric: 1,
		},
		{
			name:                  "both policies are set and there are no endpoints at all",
			internalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyLocal),
			externalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
		},
		{
			name:                   "externalTrafficPolicy is set and there are no local endpoints",
			externalTrafficPolicy:  v1.ServiceExternalTrafficPolicyLocal,
			endpoints:              []endpointOn{{"10.0.1.1", "host1"}},
			expectedExternalMetric: 1,
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			p, _, _ := newFakeProxier(t, v1.IPv4Protocol)
			makeServiceMap(p, makeTestService("ns1", "svc1", func(svc *v1.Service) {
				svc.Spec.ClusterIP = "172.30.1.1"
				svc.Spec.Ports = addTestPort(nil, "", v1.ProtocolTCP, 80, 123, 0)
				svc.Spec.InternalTrafficPolicy = tc.internalTrafficPolicy
				svc.Spec.ExternalTrafficPolicy = tc.externalTrafficPolicy
				if tc.externalTrafficPolicy != "" {
					svc.Spec.Type = v1.ServiceTypeNodePort
				}
			}))
			populateEndpointSlices(p, makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				for _, e := range tc.endpoints {
					eps.Endpoints = append(eps.Endpoints, endpoint(e.ip, e.hostname, ptr.To(true), nil, nil))
				}
				eps.Ports = []discovery.EndpointPort{{Name: ptr.To(""), Port: ptr.To[int32](80), Protocol: ptr.To(v1.ProtocolTCP)}}
			}))
			require.NoError(t, p.syncProxyRules())
			internal, err := testutil.GetGaugeMetricValue(metrics.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("internal", "IPv4"))
			require.NoError(t, err)
			assert.InDelta(t, tc.expectedInternalMetric, internal, 0)
			external, err := testutil.GetGaugeMetricValue(metrics.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("external", "IPv4"))
			require.NoError(t, err)
			assert.InDelta(t, tc.expectedExternalMetric, external, 0)
		})
	}
}

func TestBadIPs(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p,
		makeTestService("ns1", "svc1", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Spec.ClusterIP = "172.30.0.41"
			svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 3001, 0)
			svc.Spec.ExternalIPs = []string{"192.168.99.11", "bogus", "192.168.099.22", "2001:db8::5"}
			svc.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/25", "not a cidr", "2001:db8::/64"}
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4"}, {IP: "garbage"}, {IP: "fd00::1"}, {Hostname: "lb.example.com"}}
		}),
		// A bad ClusterIP leaves nothing to listen on.
		makeTestService("ns1", "svc2", func(svc *v1.Service) {
			svc.Spec.ClusterIP = "not-an-ip"
			svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 0, 0)
		}),
	)
	populateEndpointSlices(p, makeTestEndpointSlice("ns1", "svc1", 1, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv4
		eps.Endpoints = []discovery.Endpoint{
			endpoint("10.180.0.1", testHostname, nil, nil, nil),
			endpoint("10.180.0.999", testHostname, nil, nil, nil),
			endpoint("fd00::5", testHostname, nil, nil, nil),
		}
		eps.Ports = []discovery.EndpointPort{tcpPort("p80", 80)}
	}))
	require.NoError(t, p.syncProxyRules())
	runConnectionTests(t, applier, []connectionTest{
		{name: "cluster IP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "10.180.0.1:80"},
		{name: "good external IP", sourceIP: testExternalClient, destIP: "192.168.99.11", destPort: 80, output: "10.180.0.1:80"},
		{name: "good LB IP, allowed source", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80, output: "10.180.0.1:80"},
		{name: "good LB IP, other source", sourceIP: "198.51.100.7", destIP: "1.2.3.4", destPort: 80, output: "DROP"},
	})
	assert.Equal(t, []string{"ns1.svc1:p80:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	renderAll(t, applier.model(v1.IPv4Protocol))
}

// TestOddInput: overlapping listeners, odd but valid names, missing
// endpoint conditions, thousands of endpoints — handled without panic.
func TestOddInput(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	makeServiceMap(p,
		// Two Services claim the same external IP and port: the first by
		// name keeps it, the second is counted and logged.
		makeTestService("a", "first", func(svc *v1.Service) {
			svc.Spec.ClusterIP = "172.30.0.1"
			svc.Spec.ExternalIPs = []string{"192.168.99.1"}
			svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 0, 0)
		}),
		makeTestService("b", "second", func(svc *v1.Service) {
			svc.Spec.ClusterIP = "172.30.0.2"
			svc.Spec.ExternalIPs = []string{"192.168.99.1"}
			svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 0, 0)
		}),
		// Longest names the API allows, digits and dashes everywhere.
		makeTestService("n-"+repeat("9", 61), "s-"+repeat("0", 61), func(svc *v1.Service) {
			svc.Spec.ClusterIP = "172.30.0.3"
			svc.Spec.Ports = addTestPort(nil, "x-"+repeat("1", 13), v1.ProtocolTCP, 65535, 0, 0)
		}),
		// Same port number for TCP and UDP.
		makeTestService("c", "dns", func(svc *v1.Service) {
			svc.Spec.ClusterIP = "172.30.0.10"
			svc.Spec.Ports = addTestPort(nil, "dns-tcp", v1.ProtocolTCP, 53, 0, 0)
			svc.Spec.Ports = addTestPort(svc.Spec.Ports, "dns", v1.ProtocolUDP, 53, 0, 0)
		}),
	)
	var many []discovery.Endpoint
	for i := 0; i < 5000; i++ {
		many = append(many, endpoint(fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256), "", nil, nil, nil))
	}
	populateEndpointSlices(p,
		makeTestEndpointSlice("a", "first", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = many
			eps.Ports = []discovery.EndpointPort{tcpPort("http", 8080)}
		}),
		// Endpoints without any condition are ready and serving.
		makeTestEndpointSlice("b", "second", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{{Addresses: []string{"10.200.0.1"}}}
			eps.Ports = []discovery.EndpointPort{tcpPort("http", 80)}
		}),
		makeTestEndpointSlice("c", "dns", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{{Addresses: []string{"10.200.0.53"}}}
			eps.Ports = []discovery.EndpointPort{tcpPort("dns-tcp", 53),
				{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(v1.ProtocolUDP)}}
		}),
	)
	require.NoError(t, p.syncProxyRules())
	cfg := applier.model(v1.IPv4Protocol)
	first := servicePort(cfg, "a.first:http:tcp")
	require.NotNil(t, first)
	require.NotNil(t, first.Cluster)
	assert.Len(t, first.Cluster.Endpoints, 5000)
	res := haproxycfg.Trace(dispatcherFor(cfg, mustAddr("192.168.99.1")), mustAddr(testExternalClient), mustAddrPort("192.168.99.1", 80))
	assert.Equal(t, "a.first:http:tcp", res.ServicePort, "first Service by name keeps the shared address")
	assert.InDelta(t, 1, gaugeValue(t, listenerConflicts.WithLabelValues("IPv4")), 0)
	runConnectionTests(t, applier, []connectionTest{
		{name: "second keeps its cluster IP", sourceIP: testPodClient, destIP: "172.30.0.2", destPort: 80, output: "10.200.0.1:80"},
		{name: "long names", sourceIP: testPodClient, destIP: "172.30.0.3", destPort: 65535, output: "REJECT"},
		{name: "dns over TCP", sourceIP: testPodClient, destIP: "172.30.0.10", destPort: 53, output: "10.200.0.53:53"},
	})
	renderAll(t, cfg)
}

func TestExternalScopeSelectsServices(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.Scope = ScopeExternal })
	labelled := makeTestService("ns", "labelled", func(svc *v1.Service) {
		svc.Labels = map[string]string{LabelServiceProxyName: DefaultServiceProxyName}
		svc.Spec.ClusterIP = "172.30.0.1"
		svc.Spec.Ports = addTestPort(nil, "p", v1.ProtocolTCP, 80, 0, 0)
	})
	ourClass := makeTestService("ns", "our-class", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		svc.Spec.LoadBalancerClass = ptr.To(DefaultLoadBalancerClass)
		svc.Spec.ClusterIP = "172.30.0.2"
		svc.Spec.ExternalIPs = []string{"192.0.2.2"}
		svc.Spec.Ports = addTestPort(nil, "p", v1.ProtocolTCP, 80, 30002, 0)
		svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.2"}}
	})
	otherClass := makeTestService("ns", "other-class", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		svc.Spec.LoadBalancerClass = ptr.To("example.com/other")
		svc.Spec.ClusterIP = "172.30.0.3"
		svc.Spec.Ports = addTestPort(nil, "p", v1.ProtocolTCP, 80, 30003, 0)
	})
	otherProxy := makeTestService("ns", "other-proxy", func(svc *v1.Service) {
		svc.Labels = map[string]string{LabelServiceProxyName: "someone-else"}
		svc.Spec.ClusterIP = "172.30.0.4"
		svc.Spec.Ports = addTestPort(nil, "p", v1.ProtocolTCP, 80, 0, 0)
	})
	plain := makeTestService("ns", "plain", func(svc *v1.Service) {
		svc.Spec.ClusterIP = "172.30.0.5"
		svc.Spec.Ports = addTestPort(nil, "p", v1.ProtocolTCP, 80, 0, 0)
	})
	makeServiceMap(p, labelled, ourClass, otherClass, otherProxy, plain)
	require.NoError(t, p.syncProxyRules())
	model := applier.model(v1.IPv4Protocol)
	assert.Equal(t, []string{"ns.labelled:p:tcp", "ns.our-class:p:tcp"}, servicePortNames(model))
	// Of a Service in scope by its class alone, the nodes' kube-proxy
	// serves the ClusterIP, NodePort and external IPs: only the ingress IP
	// is served here.
	assert.Equal(t, []string{"203.0.113.2:80"}, listenerKeys(servicePort(model, "ns.our-class:p:tcp")))
	assert.Equal(t, []string{"172.30.0.1:80"}, listenerKeys(servicePort(model, "ns.labelled:p:tcp")))

	// Until an ingress IP is assigned, there is nothing to serve.
	pending := ourClass.DeepCopy()
	pending.Status.LoadBalancer.Ingress = nil
	p.OnServiceUpdate(ourClass, pending)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"ns.labelled:p:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
	p.OnServiceUpdate(pending, ourClass)

	// A Service that loses the label leaves the scope.
	unlabelled := labelled.DeepCopy()
	unlabelled.Labels = nil
	p.OnServiceUpdate(labelled, unlabelled)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, []string{"ns.our-class:p:tcp"}, servicePortNames(applier.model(v1.IPv4Protocol)))
}

func TestDualStackSharesOneApplier(t *testing.T) {
	applier := newFakeApplier()
	p4, _, _ := newFakeProxierWithApplier(t, v1.IPv4Protocol, applier)
	p6, _, _ := newFakeProxierWithApplier(t, v1.IPv6Protocol, applier)
	svc := makeTestService("ns1", "web", func(svc *v1.Service) {
		svc.Spec.Type = v1.ServiceTypeNodePort
		svc.Spec.ClusterIP = "172.30.0.41"
		svc.Spec.ClusterIPs = []string{"172.30.0.41", "fd00:172:30::41"}
		svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 3001, 0)
	})
	eps4 := makeTestEndpointSlice("ns1", "web", 1, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv4
		eps.Endpoints = []discovery.Endpoint{endpoint("10.180.0.1", testHostname, nil, nil, nil)}
		eps.Ports = []discovery.EndpointPort{tcpPort("http", 80)}
	})
	eps6 := makeTestEndpointSlice("ns1", "web", 2, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv6
		eps.Endpoints = []discovery.Endpoint{endpoint("fd00:180::1", testHostname, nil, nil, nil)}
		eps.Ports = []discovery.EndpointPort{tcpPort("http", 80)}
	})
	for _, p := range []*Proxier{p4, p6} {
		p.OnServiceAdd(svc)
		p.OnEndpointSliceAdd(eps4)
		p.OnEndpointSliceAdd(eps6)
		require.NoError(t, p.syncProxyRules())
	}
	merged := applier.merged(t)
	assert.Equal(t, []string{"ns1.web:http:tcp", "ns1.web:http:tcp:ipv6"}, servicePortNames(merged))
	runConnectionTests(t, applier, []connectionTest{
		{name: "IPv4 cluster IP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "10.180.0.1:80"},
		{name: "IPv6 cluster IP", sourceIP: "fd00::2", destIP: "fd00:172:30::41", destPort: 80, output: "[fd00:180::1]:80"},
		{name: "IPv4 NodePort", sourceIP: testExternalClient, destIP: testNodeIP, destPort: 3001, output: "10.180.0.1:80"},
		{name: "IPv6 NodePort", sourceIP: "2001:db8::99", destIP: testNodeIPv6, destPort: 3001, output: "[fd00:180::1]:80"},
	})
	renderAll(t, merged)
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	cfg := Config{}
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())
	assert.Zero(t, cfg.MaxConn, "fitted to the listeners at every sync")
	var lim unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	assert.Equal(t, int(min(lim.Max, MaxDefaultFileLimit)), cfg.FileLimit, "this process's hard limit, which HAProxy inherits")
	negative := Config{MaxConn: -1}
	negative.SetDefaults()
	assert.ErrorContains(t, negative.Validate(), "haproxy.maxConn")
	global, defaults := cfg.haproxySections()
	assert.Equal(t, cfg.RuntimeSocket, global.StatsSocket)
	assert.Positive(t, global.NBThread)
	assert.Equal(t, DefaultTimeoutConnect, defaults.TimeoutConnect)

	bad := Config{StateDir: "/run/with space"}
	bad.SetDefaults()
	assert.ErrorContains(t, bad.Validate(), "stats socket")

	tooMany := Config{FileLimit: 1000, MaxConn: 500}
	tooMany.SetDefaults()
	assert.ErrorContains(t, tooMany.Validate(), "haproxy.maxConn 500 needs more than fileLimit 1000")
}

func TestServiceCIDRsReachTheApplier(t *testing.T) {
	applier := newFakeApplier()
	p4, _, _ := newFakeProxierWithApplier(t, v1.IPv4Protocol, applier)
	p6, _, _ := newFakeProxierWithApplier(t, v1.IPv6Protocol, applier)
	cidrs := []string{"10.96.0.0/12", "fd00:10:96::/112", "bogus", "10.200.0.1/16"}
	p4.OnServiceCIDRsChanged(cidrs)
	p6.OnServiceCIDRsChanged(cidrs)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("10.200.0.0/16")}, applier.cidrs[v1.IPv4Protocol])
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("fd00:10:96::/112")}, applier.cidrs[v1.IPv6Protocol])

	// Routes and guard follow a new range at once, not at the next
	// periodic sync: a changed set queues a sync, the same set does not.
	metrics.RegisterMetrics("haproxy")
	queued := metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(v1.IPv4Protocol))
	queued.Set(0)
	p4.OnServiceCIDRsChanged(cidrs)
	assert.Zero(t, gaugeValue(t, queued), "the same Service CIDRs again queue no sync")
	p4.OnServiceCIDRsChanged([]string{"10.96.0.0/12"})
	assert.Positive(t, gaugeValue(t, queued), "changed Service CIDRs queue a sync")
}

func TestExportedConstructors(t *testing.T) {
	p, err := NewProxier(t.Context(), v1.IPv4Protocol, Config{NodeName: testHostname, InitOnly: true})
	require.NoError(t, err, "init-only needs no HAProxy")
	assert.Nil(t, p)
	// The real applier is wired in; it touches HAProxy only at the first
	// sync, so building the proxiers needs neither root nor haproxy. (The
	// nftables proxier of the delegated ports needs nft and CAP_NET_ADMIN
	// to be built: test/integration/proxier covers it.)
	stateDir := t.TempDir()
	p, err = NewProxier(t.Context(), v1.IPv4Protocol, Config{NodeName: testHostname, StateDir: stateDir, HAProxyPath: filepath.Join(stateDir, "no-haproxy"), DelegateNonTCP: ptr.To(false)})
	require.NoError(t, err)
	assert.NotNil(t, p)
	p, err = NewDualStackProxier(t.Context(), Config{NodeName: testHostname, StateDir: stateDir, DelegateNonTCP: ptr.To(false)})
	require.NoError(t, err)
	assert.NotNil(t, p)
	for _, scope := range []Scope{ScopeCluster, ScopeExternal} {
		p, err = NewProxier(t.Context(), v1.IPv4Protocol, Config{Scope: scope, NodeName: testHostname, StateDir: stateDir, HAProxyPath: filepath.Join(stateDir, "no-haproxy"), DelegateNonTCP: ptr.To(false)})
		require.NoError(t, err, "scope %s", scope)
		assert.NotNil(t, p, "scope %s", scope)
	}
}

// On a load balancer outside the nodes no endpoint is local: traffic
// policy Local is served by every endpoint, and no healthCheckNodePort
// is opened.
func TestOutsideNodesServeLocalPoliciesByEveryEndpoint(t *testing.T) {
	for _, scope := range []Scope{ScopeNode, ScopeCluster} {
		t.Run(string(scope), func(t *testing.T) {
			p, applier, health := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.Scope = scope })
			svc := makeTestService("ns", "local", func(svc *v1.Service) {
				svc.Spec.Type = v1.ServiceTypeLoadBalancer
				svc.Spec.ClusterIP = "172.30.0.9"
				svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
				svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				svc.Spec.HealthCheckNodePort = 30100
				svc.Spec.Ports = addTestPort(nil, "p", v1.ProtocolTCP, 80, 30009, 0)
				svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "203.0.113.9"}}
			})
			slice := makeTestEndpointSlice("ns", "local", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				eps.Endpoints = []discovery.Endpoint{
					endpoint("10.180.0.1", testHostname, nil, nil, nil),
					endpoint("10.180.1.1", "other-node", nil, nil, nil),
				}
				eps.Ports = []discovery.EndpointPort{tcpPort("p", 80)}
			})
			makeServiceMap(p, svc)
			populateEndpointSlices(p, slice)
			require.NoError(t, p.syncProxyRules())
			model := applier.model(v1.IPv4Protocol)
			clusterIP := traceConnection(t, model, "10.0.0.2", "172.30.0.9", 80)
			lbIP := traceConnection(t, model, "198.51.100.7", "203.0.113.9", 80)
			if scope == ScopeNode {
				assert.Equal(t, "10.180.0.1:80", clusterIP)
				assert.Equal(t, "10.180.0.1:80", lbIP)
				assert.Equal(t, map[types.NamespacedName]uint16{{Namespace: "ns", Name: "local"}: 30100}, health.services)
				return
			}
			assert.Equal(t, "10.180.0.1:80, 10.180.1.1:80", clusterIP)
			assert.Equal(t, "10.180.0.1:80, 10.180.1.1:80", lbIP)
			assert.Empty(t, health.services, "no healthCheckNodePort on a load balancer outside the nodes")
			assert.Contains(t, servicePort(model, "ns.local:p:tcp").Comment, "none is local to this load balancer")
		})
	}
}

func TestSyncProxyRulesStartup(t *testing.T) {
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	p.setInitialized(false)
	p.servicesSynced, p.endpointSlicesSynced = false, false
	svc := makeTestService("ns1", "svc1", func(svc *v1.Service) {
		svc.Spec.ClusterIP = "172.30.0.41"
		svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 0, 0)
	})
	p.OnServiceAdd(svc)
	p.OnEndpointSliceAdd(lbEndpoints(nil))

	// Services are known, endpoints not yet: nothing is applied, or
	// HAProxy would reject connections to Services that have endpoints.
	p.OnServiceSynced()
	assert.Zero(t, applier.applies)

	p.OnEndpointSlicesSynced()
	assert.Equal(t, 1, applier.applies)
	runConnectionTests(t, applier, []connectionTest{
		{name: "served from the first sync", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "10.180.0.1:80, 10.180.2.1:80"},
	})
}
