package translate

import (
	"net/netip"
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// Bits of FuzzTranslate's flags.
const (
	fuzzExternalLocal = 1 << iota
	fuzzInternalLocal
	fuzzAffinity
	fuzzTerminating
	fuzzRemote
	fuzzProxyMode
	fuzzTaken
	fuzzNodeIPInRange
)

// FuzzTranslate feeds arbitrary Services and endpoints through upstream's
// trackers and the translation, for both families: two Services that may
// share names, addresses and NodePorts. Whatever the input, the model is
// one haproxycfg.Validate accepts (bad parts are left out), its map files
// hold exactly its entries, each one key and one value with the fields its
// map gives it (no input puts a blank, a newline, '|' or '#' where it
// would split or end an entry), the incremental Translator agrees, and
// tracing connections through it never panics.
func FuzzTranslate(f *testing.F) {
	f.Add("default", "web", "http", "10.96.0.10", "1.2.3.4", "203.0.113.0/24", "10.180.0.1", "zone-a",
		"default", "web2", "10.96.0.11", int32(80), int32(30080), int32(8080), int32(10800), uint8(0xff))
	f.Add("ns\n", "a b", "#", "fd00::10", "fd00::1:2", "::/0", "fd00::1", "",
		"ns\n", "a b", "fd00::10", int32(443), int32(0), int32(0), int32(0), uint8(0x01))
	f.Add("", "", "", "", "", "", "", "", "", "", "", int32(-1), int32(70000), int32(65536), int32(-5), uint8(0))
	f.Add("a.b", "c", "p|q", "10.0.0.1", "10.0.0.1", "::ffff:1.2.3.0/120", "::ffff:10.0.0.2", "z",
		"a", "b.c", "10.0.0.2", int32(80), int32(30000), int32(80), int32(1<<30), uint8(0x5a))
	f.Add("ns", "svc", "80", "fd00::1", "fd00::1", "fd00::/8", "fe80::1%eth0", "z",
		"ns", "svc", "fd00::1", int32(80), int32(30000), int32(80), int32(60), uint8(0xa5))
	f.Fuzz(func(t *testing.T, ns, name, portName, clusterIP, lbIP, sourceRange, epIP, zone, ns2, name2, clusterIP2 string, port, nodePort, epPort, timeout int32, flags uint8) {
		mkService := func(ns, name, clusterIP string) *v1.Service {
			svc := service(ns, name, clusterIP, v1.ServicePort{Name: portName, Port: port, NodePort: nodePort, Protocol: v1.ProtocolTCP})
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Spec.ExternalIPs = []string{lbIP, clusterIP, lbIP}
			svc.Spec.LoadBalancerSourceRanges = []string{sourceRange}
			ing := v1.LoadBalancerIngress{IP: lbIP}
			if flags&fuzzProxyMode != 0 {
				ing.IPMode = ptr.To(v1.LoadBalancerIPModeProxy)
			}
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{ing, {IP: epIP}}
			if flags&fuzzExternalLocal != 0 {
				svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}
			if flags&fuzzInternalLocal != 0 {
				svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
			}
			if flags&fuzzAffinity != 0 {
				svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(timeout)}}
			}
			return svc
		}
		services := []*v1.Service{mkService(ns, name, clusterIP), mkService(ns2, name2, clusterIP2)}
		for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
			addrType := discovery.AddressTypeIPv4
			if family == v1.IPv6Protocol {
				addrType = discovery.AddressTypeIPv6
			}
			node := nodeName
			if flags&fuzzRemote != 0 {
				node = otherNode
			}
			e := ep(epIP, node)
			if flags&fuzzTerminating != 0 {
				e = terminating(epIP, node, true)
			}
			e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zone}}}
			slices := []*discovery.EndpointSlice{
				slice(ns, name, addrType, portName, epPort, e, ep(lbIP, otherNode)),
				slice(ns2, name2, addrType, portName, epPort, ep(clusterIP2, nodeName)),
			}
			sm, em := buildMaps(family, services, slices)

			opts := Options{Family: family, NodeName: nodeName, TopologyLabels: map[string]string{v1.LabelTopologyZone: zone}}
			if a, err := netip.ParseAddr(epIP); err == nil {
				opts.NodeIP = a.Unmap() // maybe of the other family, or with a zone: must not matter
			}
			if flags&fuzzNodeIPInRange != 0 {
				if p, err := netip.ParsePrefix(sourceRange); err == nil {
					opts.NodeIP = p.Addr().Unmap()
				}
			}
			var tr Translator
			tr.Translate(opts, sm, em)
			if flags&fuzzTaken != 0 && nodePort > 0 && nodePort < 65536 {
				opts.TakenNodePorts = map[uint16]bool{uint16(nodePort): true}
			}
			res := Translate(opts, sm, em)
			if got := tr.Translate(opts, sm, em); !reflect.DeepEqual(got, res) {
				t.Fatalf("the Translator gives\n%+v\nTranslate gives\n%+v", got, res)
			}

			d := &haproxycfg.Dispatcher{
				IPv6:         family == v1.IPv6Protocol,
				Listen:       netip.MustParseAddrPort("127.0.0.1:10400"),
				MapDir:       "/run/kube-haproxy",
				ServicePorts: res.ServicePorts,
			}
			if d.IPv6 {
				d.Listen = netip.MustParseAddrPort("[::1]:10400")
			}
			if err := haproxycfg.Validate(&haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{d}}); err != nil {
				t.Fatalf("translation produced a model Validate refuses: %v", err)
			}
			checkMapFiles(t, d)

			// Every listener, from a few sources, is dispatched (NodePorts
			// on the node IP, unless that is a Service IP too).
			serviceIPs := map[netip.Addr]bool{}
			for _, sp := range res.ServicePorts {
				for _, l := range sp.Listeners {
					serviceIPs[l.Addr] = true
				}
			}
			srcs := []netip.Addr{outside, podClient, outside6, podClient6}
			for _, sp := range res.ServicePorts {
				for _, l := range sp.Listeners {
					dst := netip.AddrPortFrom(l.Addr, l.Port)
					if l.Kind == haproxycfg.NodePort {
						dst = netip.AddrPortFrom(nodeIP4, l.Port)
						if d.IPv6 {
							dst = netip.AddrPortFrom(nodeIP6, l.Port)
						}
						if serviceIPs[dst.Addr()] {
							continue
						}
					}
					for _, src := range srcs {
						r := haproxycfg.Trace(d, src, dst)
						if r.Verdict == haproxycfg.NotDispatched || r.Verdict == haproxycfg.Served && len(r.Endpoints) == 0 {
							t.Fatalf("%v -> %v (%s of %s): %v", src, dst, l.Kind, sp.Name, r)
						}
					}
				}
			}
		}
	})
}
