package translate

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/kubernetes/pkg/proxy"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// trackedMaps are upstream's maps kept up to date by upstream's change
// trackers across changes, as in the proxier.
type trackedMaps struct {
	sct    *proxy.ServiceChangeTracker
	ect    *proxy.EndpointsChangeTracker
	sm     proxy.ServicePortMap
	em     proxy.EndpointsMap
	svcs   map[string]*v1.Service
	slices map[string]*discovery.EndpointSlice
}

func newTrackedMaps() *trackedMaps {
	return &trackedMaps{
		sct:    proxy.NewServiceChangeTracker(v1.IPv4Protocol, nil, nil),
		ect:    proxy.NewEndpointsChangeTracker(v1.IPv4Protocol, nodeName, nil, nil),
		sm:     make(proxy.ServicePortMap),
		em:     make(proxy.EndpointsMap),
		svcs:   map[string]*v1.Service{},
		slices: map[string]*discovery.EndpointSlice{},
	}
}

func (m *trackedMaps) update() (proxy.UpdateServiceMapResult, proxy.UpdateEndpointsMapResult) {
	return m.sm.Update(m.sct), m.em.Update(m.ect)
}

// setService adds or replaces Service ns/name.
func (m *trackedMaps) setService(s *v1.Service) {
	m.sct.Update(m.svcs[s.Name], s)
	m.svcs[s.Name] = s
}

func (m *trackedMaps) deleteService(name string) {
	m.sct.Update(m.svcs[name], nil)
	delete(m.svcs, name)
}

// editService changes a copy of Service ns/name.
func (m *trackedMaps) editService(name string, edit func(*v1.Service)) {
	s := m.svcs[name].DeepCopy()
	edit(s)
	m.setService(s)
}

// setEndpoints replaces the endpoints of port "http" of Service ns/name.
func (m *trackedMaps) setEndpoints(name string, eps ...discovery.Endpoint) {
	s := slice("ns", name, discovery.AddressTypeIPv4, "http", 8080, eps...)
	m.ect.EndpointSliceUpdate(s, false)
	m.slices[name] = s
}

func (m *trackedMaps) deleteEndpoints(name string) {
	m.ect.EndpointSliceUpdate(m.slices[name], true)
	delete(m.slices, name)
}

// byName indexes the service ports of res.
func byName(res *Result) map[string]*haproxycfg.ServicePort {
	out := make(map[string]*haproxycfg.ServicePort, len(res.ServicePorts))
	for _, sp := range res.ServicePorts {
		out[sp.Name] = sp
	}
	return out
}

// The Translator gives what Translate gives after every kind of change,
// keeps the very objects of the service ports that did not change, and
// makes new ones for those that did, including those whose addresses
// another service port took or let go.
func TestTranslatorReusesUnchanged(t *testing.T) {
	m := newTrackedMaps()
	opts := options(v1.IPv4Protocol)
	var tr Translator
	var prev *Result
	// check syncs and checks that exactly the service ports of changed
	// (by short Service name) are new objects.
	check := func(step string, changed ...string) *Result {
		t.Helper()
		m.update()
		got := tr.Translate(opts, m.sm, m.em)
		require.Equal(t, Translate(opts, m.sm, m.em), got, step)
		dispatcher(t, opts, got)
		if prev != nil {
			before := byName(prev)
			for name, sp := range byName(got) {
				short := name[len("ns.") : len(name)-len(":http:tcp")]
				if old, ok := before[name]; ok && !slices.Contains(changed, short) {
					require.Same(t, old, sp, "%s: %s is not translated again", step, short)
				} else {
					require.NotSame(t, old, sp, "%s: %s is translated again", step, short)
				}
			}
		}
		prev = got
		return got
	}

	for i := 1; i <= 4; i++ {
		name := fmt.Sprintf("svc%d", i)
		m.setService(service("ns", name, fmt.Sprintf("172.30.0.%d", i), tcp("http", 80)))
		m.setEndpoints(name, ep(fmt.Sprintf("10.244.%d.1", i), nodeName), ep(fmt.Sprintf("10.244.%d.2", i), otherNode))
	}
	// svc2 and svc4 claim the same external IP: svc2 wins it. svc3 names
	// its LB IP among its external IPs, which is no conflict.
	for _, n := range []string{"svc2", "svc4"} {
		m.editService(n, func(s *v1.Service) { s.Spec.ExternalIPs = []string{"203.0.113.7"} })
	}
	m.editService("svc3", func(s *v1.Service) {
		loadBalancer(s, 30003, "198.51.100.3")
		s.Spec.ExternalIPs = []string{"198.51.100.3", "203.0.113.3", "203.0.113.3"}
	})
	res := check("initial")
	require.Len(t, res.Skipped, 1)
	require.Equal(t, "svc4", res.Skipped[0].Name.Name)
	check("nothing changes")

	m.setEndpoints("svc1", ep("10.244.1.1", nodeName), ep("10.244.1.3", otherNode))
	check("endpoints of svc1", "svc1")

	// svc2 lets the external IP go: svc4, unchanged itself, gets it.
	m.editService("svc2", func(s *v1.Service) { s.Spec.ExternalIPs = nil })
	res = check("svc2 releases its external IP", "svc2", "svc4")
	require.Empty(t, res.Skipped)
	require.Len(t, byName(res)["ns.svc4:http:tcp"].Listeners, 2)

	// svc1 takes it: svc4, unchanged itself, loses it.
	m.editService("svc1", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"203.0.113.7"} })
	res = check("svc1 takes the external IP", "svc1", "svc4")
	require.Len(t, res.Skipped, 1)
	require.Equal(t, "svc4", res.Skipped[0].Name.Name)
	require.Len(t, byName(res)["ns.svc4:http:tcp"].Listeners, 1)

	// svc2 claims it too, and loses, as svc4 does, to svc1.
	m.editService("svc2", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"203.0.113.7"} })
	res = check("svc2 claims the external IP again", "svc2")
	require.Len(t, res.Skipped, 2)
	// svc1 lets it go: svc2 gets it, svc4 still loses (to svc2 now).
	m.editService("svc1", func(s *v1.Service) { s.Spec.ExternalIPs = nil })
	res = check("svc1 releases the external IP", "svc1", "svc2", "svc4")
	require.Len(t, res.Skipped, 1)
	require.Contains(t, res.Skipped[0].Detail, "ns.svc2:http:tcp")

	m.deleteService("svc3")
	m.deleteEndpoints("svc3")
	check("svc3 deleted")
	m.setService(service("ns", "svc0", "172.30.0.10", tcp("http", 80)))
	check("svc0 added", "svc0")
	m.deleteEndpoints("svc1")
	res = check("svc1 loses its endpoints", "svc1")
	require.Equal(t, haproxycfg.Rejected, byName(res)["ns.svc1:http:tcp"].WhenEmpty)

	// TakenNodePorts: only the service ports whose NodePort is taken or
	// freed are translated again.
	m.editService("svc2", func(s *v1.Service) { loadBalancer(s, 30002) })
	check("svc2 gets a NodePort", "svc2")
	opts.TakenNodePorts = map[uint16]bool{30002: true}
	res = check("svc2's NodePort taken", "svc2")
	require.Len(t, res.Skipped, 2)
	opts.TakenNodePorts = map[uint16]bool{30002: true, 22: true, 30004: true}
	check("other ports taken")
	opts.TakenNodePorts = nil
	check("svc2's NodePort freed", "svc2")

	all := []string{"svc0", "svc1", "svc2", "svc4"}
	opts.NodeName = otherNode
	check("node name changes", all...)
	check("nothing changes")
	opts.NodeIP = netip.MustParseAddr("192.168.0.3")
	check("node IP changes", all...)
	opts.TopologyLabels = map[string]string{v1.LabelTopologyZone: "zone-a"}
	check("topology changes", all...)
	// The caller changes its map in place: still a change.
	opts.TopologyLabels[v1.LabelTopologyZone] = "zone-b"
	check("topology changes in place", all...)
	check("nothing changes")
}

// A Translator that has seen other Services before gives what a new one
// gives, whatever the order of the changes.
func TestTranslatorRandomChanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	m := newTrackedMaps()
	opts := options(v1.IPv4Protocol)
	pick := func(n int) int { return rng.IntN(n) }
	// Few addresses and NodePorts, so that Services conflict often.
	externalIPs := []string{"203.0.113.1", "203.0.113.2", "203.0.113.3", "172.30.0.1"}
	nodePorts := []int32{0, 30001, 30002, 30003}
	randomService := func(name string, i int) *v1.Service {
		svc := service("ns", name, fmt.Sprintf("172.30.0.%d", 1+pick(12)), tcp("http", 80))
		if i%3 == 0 {
			svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP})
		}
		if np := nodePorts[pick(len(nodePorts))]; np != 0 {
			loadBalancer(svc, np)
			if pick(2) == 0 {
				svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: externalIPs[pick(len(externalIPs))]}}
			}
			if pick(2) == 0 {
				svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}
		}
		for range pick(3) {
			svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, externalIPs[pick(len(externalIPs))])
		}
		if pick(3) == 0 {
			svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
		}
		if pick(3) == 0 {
			svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(1 + pick(1000)))}}
		}
		return svc
	}
	randomEndpoints := func() []discovery.Endpoint {
		var eps []discovery.Endpoint
		for j := range pick(4) {
			node := nodeName
			if pick(2) == 0 {
				node = otherNode
			}
			e := ep(fmt.Sprintf("10.244.%d.%d", pick(3), j+1), node)
			if pick(4) == 0 {
				e = terminating(e.Addresses[0], node, pick(2) == 0)
			}
			eps = append(eps, e)
		}
		return eps
	}

	var tr Translator
	// endpointsOnly is a Translator called as the proxier calls it: with
	// the changed Services when only endpoints changed.
	var endpointsOnly Translator
	incremental := 0
	// inputs of each service port at the last sync, and its translation.
	type state struct {
		svc     proxy.ServicePort
		eps     []proxy.Endpoint
		sp      *haproxycfg.ServicePort
		skipped []Skipped
	}
	last := map[proxy.ServicePortName]state{}
	for step := range 300 {
		for range 1 + pick(3) {
			name := fmt.Sprintf("svc%d", pick(12))
			switch pick(6) {
			case 0, 1:
				m.setService(randomService(name, step))
			case 2:
				if m.svcs[name] != nil {
					m.deleteService(name)
				}
			case 3, 4:
				m.setEndpoints(name, randomEndpoints()...)
			case 5:
				taken := map[uint16]bool{}
				for _, np := range nodePorts[1:] {
					if pick(3) == 0 {
						taken[uint16(np)] = true
					}
				}
				opts.TakenNodePorts = taken
			}
		}
		services, endpoints := m.update()
		got := tr.Translate(opts, m.sm, m.em)
		require.Equal(t, Translate(opts, m.sm, m.em), got, "step %d", step)
		dispatcher(t, opts, got)
		var gotIncremental *Result
		if services.UpdatedServices.Len() == 0 {
			incremental++
			gotIncremental = endpointsOnly.TranslateEndpointChanges(opts, m.sm, m.em, endpoints.UpdatedServices)
		} else {
			gotIncremental = endpointsOnly.Translate(opts, m.sm, m.em)
		}
		require.Equal(t, got, gotIncremental, "step %d", step)

		// A service port is translated again only when its Service, its
		// endpoints, or what it was refused changed.
		ports := byName(got)
		now := map[proxy.ServicePortName]state{}
		for name, svc := range m.sm {
			st := state{svc: svc, eps: m.em[name]}
			if svc.Protocol() == v1.ProtocolTCP {
				st.sp = ports[BaseName(v1.IPv4Protocol, name, svc.Port())]
			}
			for _, s := range got.Skipped {
				if s.Name == name {
					st.skipped = append(st.skipped, s)
				}
			}
			now[name] = st
			old, ok := last[name]
			if !ok || old.sp == nil || st.sp == nil || old.sp == st.sp {
				continue
			}
			inputsChanged := old.svc != st.svc || !sameEndpoints(old.eps, st.eps)
			outputChanged := !reflect.DeepEqual(old.sp, st.sp) || !reflect.DeepEqual(old.skipped, st.skipped)
			require.True(t, inputsChanged || outputChanged, "step %d: %s translated again for nothing", step, name)
		}
		last = now

		// Nothing changes: nothing is translated again.
		again := tr.Translate(opts, m.sm, m.em)
		require.Equal(t, len(got.ServicePorts), len(again.ServicePorts))
		for i := range got.ServicePorts {
			require.Same(t, got.ServicePorts[i], again.ServicePorts[i], "step %d", step)
		}
		again = endpointsOnly.TranslateEndpointChanges(opts, m.sm, m.em, nil)
		for i := range gotIncremental.ServicePorts {
			require.Same(t, gotIncremental.ServicePorts[i], again.ServicePorts[i], "step %d", step)
		}
	}
	require.Greater(t, incremental, 30, "steps that changed endpoints only")
}

// BenchmarkTranslatorEndpointChange: one endpoint of one Service changes
// among 10,000 Services x 10 endpoints; compare BenchmarkTranslate, the
// whole translation.
func BenchmarkTranslatorEndpointChange(b *testing.B) {
	benchmarkEndpointChange(b, func(tr *Translator, opts Options, sm proxy.ServicePortMap, em proxy.EndpointsMap, _ sets.Set[types.NamespacedName]) *Result {
		return tr.Translate(opts, sm, em)
	})
}

// BenchmarkTranslatorEndpointChangeOnly: the same change, with the
// proxier's knowledge that only this Service's endpoints changed.
func BenchmarkTranslatorEndpointChangeOnly(b *testing.B) {
	benchmarkEndpointChange(b, (*Translator).TranslateEndpointChanges)
}

// benchmarkEndpointChange flips the endpoints of one Service among
// 10,000 and translates with translate.
func benchmarkEndpointChange(b *testing.B, translate func(*Translator, Options, proxy.ServicePortMap, proxy.EndpointsMap, sets.Set[types.NamespacedName]) *Result) {
	sm, em := benchmarkMaps(10000, 10)
	opts := options(v1.IPv4Protocol)
	var tr Translator
	tr.Translate(opts, sm, em)
	var name proxy.ServicePortName
	for n := range em {
		name = n
		break
	}
	changed := sets.New(name.NamespacedName)
	variants := [2][]proxy.Endpoint{em[name], em[name][1:]}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// A new slice, as the endpoints tracker makes at each change.
		em[name] = append([]proxy.Endpoint(nil), variants[i%2]...)
		i++
		if res := translate(&tr, opts, sm, em, changed); len(res.ServicePorts) != 10000 {
			b.Fatalf("got %d service ports", len(res.ServicePorts))
		}
	}
}

// BenchmarkTranslatorTakenNodePortChange: a process of the node starts or
// stops listening on one NodePort among 10,000 Services.
func BenchmarkTranslatorTakenNodePortChange(b *testing.B) {
	sm, em := benchmarkMaps(10000, 10)
	opts := options(v1.IPv4Protocol)
	var tr Translator
	tr.Translate(opts, sm, em)
	variants := [2]map[uint16]bool{{22: true}, {22: true, 30000: true}}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		opts.TakenNodePorts = variants[i%2]
		i++
		if res := tr.Translate(opts, sm, em); len(res.ServicePorts) != 10000 {
			b.Fatalf("got %d service ports", len(res.ServicePorts))
		}
	}
}
