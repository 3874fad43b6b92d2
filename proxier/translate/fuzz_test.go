package translate

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// FuzzTranslate feeds arbitrary Service and endpoint strings through
// upstream's trackers and the translation: whatever the input, the model
// is valid (Render accepts it) or the service port is skipped; it never
// panics and never yields a model HAProxy would refuse.
func FuzzTranslate(f *testing.F) {
	f.Add("default", "web", "http", "10.96.0.10", "1.2.3.4", "203.0.113.0/24", "10.180.0.1", "zone-a", int32(80), int32(30080), int32(8080), true)
	f.Add("ns\n", "a b", "#", "fd00::10", "fd00::1:2", "::/0", "fd00::1", "", int32(443), int32(0), int32(0), false)
	f.Add("", "", "", "", "", "", "", "", int32(-1), int32(70000), int32(65536), true)
	f.Fuzz(func(t *testing.T, ns, name, portName, clusterIP, lbIP, sourceRange, epIP, zone string, port, nodePort, epPort int32, local bool) {
		for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			svc := service(ns, name, clusterIP, v1.ServicePort{Name: portName, Port: port, NodePort: nodePort, Protocol: v1.ProtocolTCP})
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Spec.ExternalIPs = []string{lbIP}
			svc.Spec.LoadBalancerSourceRanges = []string{sourceRange}
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP}}
			if local {
				svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
				svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(port)}}
			}
			addrType := discovery.AddressTypeIPv4
			if family == v1.IPv6Protocol {
				addrType = discovery.AddressTypeIPv6
			}
			e := ep(epIP, nodeName)
			e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}
			sm, em := maps(family, []*v1.Service{svc}, []*discovery.EndpointSlice{slice(ns, name, addrType, portName, epPort, e)})
			res := Translate(Options{Family: family, NodeName: nodeName, TopologyLabels: map[string]string{v1.LabelTopologyZone: zone}}, sm, em)
			cfg := config(res)
			if _, err := haproxycfg.Render(cfg); err != nil {
				t.Fatalf("translation produced a model the renderer refuses: %v", err)
			}
		}
	})
}
