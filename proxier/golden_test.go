package proxier

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
)

var update = flag.Bool("update", false, "rewrite the golden haproxy.cfg and map files in testdata/")

// goldenConfigs are rich scenarios whose rendered haproxy.cfg and map files
// are kept in testdata/: a reviewer reads exactly what HAProxy gets.
var goldenConfigs = []struct {
	name     string
	families []v1.IPFamily
	services []*v1.Service
	slices   []*discovery.EndpointSlice
}{
	{
		name:     "clusterip",
		families: []v1.IPFamily{v1.IPv4Protocol},
		services: []*v1.Service{
			makeTestService("default", "web", func(svc *v1.Service) {
				svc.Spec.ClusterIP = "172.30.0.10"
				svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 0, 0)
				svc.Spec.Ports = addTestPort(svc.Spec.Ports, "https", v1.ProtocolTCP, 443, 0, 0)
			}),
			makeTestService("kube-system", "kube-dns", func(svc *v1.Service) {
				svc.Spec.ClusterIP = "172.30.0.53"
				svc.Spec.Ports = addTestPort(nil, "dns", v1.ProtocolUDP, 53, 0, 0)
				svc.Spec.Ports = addTestPort(svc.Spec.Ports, "dns-tcp", v1.ProtocolTCP, 53, 0, 0)
			}),
			makeTestService("default", "empty", func(svc *v1.Service) {
				svc.Spec.ClusterIP = "172.30.0.11"
				svc.Spec.Ports = addTestPort(nil, "", v1.ProtocolTCP, 8080, 0, 0)
			}),
			makeTestService("default", "local-only", func(svc *v1.Service) {
				svc.Spec.ClusterIP = "172.30.0.12"
				svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
				svc.Spec.Ports = addTestPort(nil, "", v1.ProtocolTCP, 9000, 0, 0)
			}),
		},
		slices: []*discovery.EndpointSlice{
			makeTestEndpointSlice("default", "web", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				eps.Endpoints = []discovery.Endpoint{
					endpoint("10.180.0.1", testHostname, nil, nil, nil),
					endpoint("10.180.1.1", "node-b", nil, nil, nil),
					endpoint("10.180.1.2", "node-b", ptr.To(false), ptr.To(true), ptr.To(true)),
				}
				eps.Ports = []discovery.EndpointPort{tcpPort("http", 8080), tcpPort("https", 8443)}
			}),
			makeTestEndpointSlice("kube-system", "kube-dns", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				eps.Endpoints = []discovery.Endpoint{endpoint("10.180.0.53", testHostname, nil, nil, nil)}
				eps.Ports = []discovery.EndpointPort{tcpPort("dns-tcp", 53),
					{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(v1.ProtocolUDP)}}
			}),
			makeTestEndpointSlice("default", "local-only", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				eps.Endpoints = []discovery.Endpoint{endpoint("10.180.1.9", "node-b", nil, nil, nil)}
				eps.Ports = []discovery.EndpointPort{{Name: ptr.To(""), Port: ptr.To[int32](9000), Protocol: ptr.To(v1.ProtocolTCP)}}
			}),
		},
	},
	{
		name:     "loadbalancer",
		families: []v1.IPFamily{v1.IPv4Protocol},
		services: []*v1.Service{
			lbService(func(svc *v1.Service) {
				svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				svc.Spec.HealthCheckNodePort = 30000
				svc.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24", "198.51.100.0/24"}
				svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](10800)}}
			}),
			makeTestService("ns2", "public", func(svc *v1.Service) {
				svc.Spec.Type = v1.ServiceTypeLoadBalancer
				svc.Spec.ClusterIP = "172.30.0.42"
				svc.Spec.Ports = addTestPort(nil, "https", v1.ProtocolTCP, 443, 30443, 0)
				svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "5.6.7.8"}, {IP: "5.6.7.9", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)}}
			}),
		},
		slices: []*discovery.EndpointSlice{
			lbEndpoints(nil),
			makeTestEndpointSlice("ns2", "public", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				eps.Endpoints = []discovery.Endpoint{endpoint("10.180.2.7", "node-c", nil, nil, nil)}
				eps.Ports = []discovery.EndpointPort{tcpPort("https", 8443)}
			}),
		},
	},
	{
		name:     "dualstack",
		families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol},
		services: []*v1.Service{
			makeTestService("default", "web", func(svc *v1.Service) {
				svc.Spec.Type = v1.ServiceTypeLoadBalancer
				svc.Spec.ClusterIP = "172.30.0.41"
				svc.Spec.ClusterIPs = []string{"172.30.0.41", "fd00:172:30::41"}
				svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
				svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				svc.Spec.HealthCheckNodePort = 30001
				svc.Spec.ExternalIPs = []string{"2001:db8:99::11"}
				svc.Spec.LoadBalancerSourceRanges = []string{"2001:db8:cafe::/48"}
				svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, 80, 30080, 0)
				svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.4"}, {IP: "2001:db8:1b::4"}}
			}),
		},
		slices: []*discovery.EndpointSlice{
			makeTestEndpointSlice("default", "web", 1, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv4
				eps.Endpoints = []discovery.Endpoint{
					endpoint("10.180.0.1", testHostname, nil, nil, nil),
					endpoint("10.180.1.1", "node-b", nil, nil, nil),
				}
				eps.Ports = []discovery.EndpointPort{tcpPort("http", 8080)}
			}),
			makeTestEndpointSlice("default", "web", 2, func(eps *discovery.EndpointSlice) {
				eps.AddressType = discovery.AddressTypeIPv6
				eps.Endpoints = []discovery.Endpoint{
					endpoint("fd00:10:180::1", testHostname, nil, nil, nil),
					endpoint("fd00:10:180:1::1", "node-b", nil, nil, nil),
				}
				eps.Ports = []discovery.EndpointPort{tcpPort("http", 8080)}
			}),
		},
	},
}

// TestGolden renders each scenario through the whole proxier (trackers,
// translation, the family merge the Applier does) and compares what
// HAProxy reads with testdata: haproxy.cfg in testdata/<name>.cfg and each
// dispatcher's map files in testdata/<name>.<file> (services-ipv4.map,
// endpoint-sets-ipv4.map, cluster-sources-ipv4.acl, and the ipv6 ones). The
// real haproxy then checks the configuration with its map files.
// Regenerate with: go test ./proxier -run TestGolden -update
func TestGolden(t *testing.T) {
	for _, sc := range goldenConfigs {
		t.Run(sc.name, func(t *testing.T) {
			applier := newFakeApplier()
			for _, family := range sc.families {
				p, _, _ := newFakeProxierWithApplier(t, family, applier, func(c *Config) {
					// Fixed so the files do not depend on the machine; the
					// state directory (and so the map paths in haproxy.cfg)
					// is the fixed one of newFakeProxier.
					c.NBThread = 2
					c.ClusterCIDRs = []string{"10.244.0.0/16", "fd00:244::/56"}
				})
				makeServiceMap(p, sc.services...)
				populateEndpointSlices(p, sc.slices...)
				require.NoError(t, p.syncProxyRules())
			}
			merged := applier.merged(t)
			require.Len(t, merged.Dispatchers, len(sc.families))
			out, err := haproxycfg.Render(merged)
			require.NoError(t, err)
			checkGolden(t, sc.name+".cfg", out)
			for _, d := range merged.Dispatchers {
				services, endpoints, sources := haproxycfg.RenderMaps(d)
				checkGolden(t, sc.name+"."+filepath.Base(d.ServicesMap()), services)
				checkGolden(t, sc.name+"."+filepath.Base(d.EndpointsMap()), endpoints)
				checkGolden(t, sc.name+"."+filepath.Base(d.ClusterSourcesACL()), sources)
			}

			// haproxy -c reads the map files: the same model with its maps
			// in a temporary directory.
			check := *merged
			check.Dispatchers = nil
			mapDir := t.TempDir()
			for _, d := range merged.Dispatchers {
				dc := *d
				dc.MapDir = mapDir
				check.Dispatchers = append(check.Dispatchers, &dc)
			}
			haproxytest.CheckModel(t, &check)
		})
	}
}

func goldenPath(file string) string { return filepath.Join("testdata", file) }

func checkGolden(t *testing.T, file string, got []byte) {
	t.Helper()
	path := goldenPath(file)
	if *update {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "missing golden file; run: go test ./proxier -run TestGolden -update")
	assert.Equal(t, string(want), string(got), "rendered file differs from %s; if the change is intended, run: go test ./proxier -run TestGolden -update", path)
}
