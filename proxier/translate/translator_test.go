package translate

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/kubernetes/pkg/proxy"
)

// trackedMaps are upstream's maps kept up to date by upstream's change
// trackers across changes, as in the proxier.
type trackedMaps struct {
	sct *proxy.ServiceChangeTracker
	ect *proxy.EndpointsChangeTracker
	sm  proxy.ServicePortMap
	em  proxy.EndpointsMap
}

func newTrackedMaps() *trackedMaps {
	return &trackedMaps{
		sct: proxy.NewServiceChangeTracker(v1.IPv4Protocol, nil, nil),
		ect: proxy.NewEndpointsChangeTracker(v1.IPv4Protocol, nodeName, nil, nil),
		sm:  make(proxy.ServicePortMap),
		em:  make(proxy.EndpointsMap),
	}
}

func (m *trackedMaps) update() {
	m.sm.Update(m.sct)
	m.em.Update(m.ect)
}

// The Translator gives what Translate gives after every kind of change,
// and keeps the objects of the service ports that did not change.
func TestTranslatorMatchesTranslate(t *testing.T) {
	m := newTrackedMaps()
	opts := Options{Family: v1.IPv4Protocol, NodeName: nodeName, NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	var tr Translator
	check := func(step string) *Result {
		t.Helper()
		m.update()
		got := tr.Translate(opts, m.sm, m.em)
		require.Equal(t, Translate(opts, m.sm, m.em), got, step)
		return got
	}
	frontend := func(res *Result, name string) any {
		for _, fe := range res.Frontends {
			if fe.Name == name {
				return fe
			}
		}
		t.Fatalf("no frontend %s", name)
		return nil
	}

	svcs := map[string]*v1.Service{}
	slices := map[string]*discovery.EndpointSlice{}
	setService := func(s *v1.Service) {
		m.sct.Update(svcs[s.Name], s)
		svcs[s.Name] = s
	}
	setEndpoints := func(name string, ips ...string) {
		var eps []discovery.Endpoint
		for _, ip := range ips {
			eps = append(eps, ep(ip, nodeName))
		}
		s := slice("ns", name, discovery.AddressTypeIPv4, "http", 8080, eps...)
		m.ect.EndpointSliceUpdate(s, false)
		slices[name] = s
	}
	for i := 1; i <= 4; i++ {
		name := fmt.Sprintf("svc%d", i)
		setService(service("ns", name, fmt.Sprintf("172.30.0.%d", i), tcp("http", 80)))
		setEndpoints(name, fmt.Sprintf("10.0.%d.1", i), fmt.Sprintf("10.0.%d.2", i))
	}
	// svc2 and svc4 claim the same external IP: svc2 wins it.
	for _, n := range []string{"svc2", "svc4"} {
		s := svcs[n].DeepCopy()
		s.Spec.ExternalIPs = []string{"203.0.113.7"}
		setService(s)
	}
	first := check("initial")
	require.NotEmpty(t, first.Skipped, "svc4 loses the external IP")

	setEndpoints("svc1", "10.0.1.1", "10.0.1.3")
	res := check("endpoints of svc1")
	require.Same(t, frontend(first, "ns.svc3:http:tcp"), frontend(res, "ns.svc3:http:tcp"), "svc3 is not translated again")

	// svc2 lets the external IP go: svc4 gets it.
	s := svcs["svc2"].DeepCopy()
	s.Spec.ExternalIPs = nil
	setService(s)
	res = check("svc2 releases its external IP")
	require.Empty(t, res.Skipped)

	// svc1 takes it: svc4, unchanged itself, loses it.
	s = svcs["svc1"].DeepCopy()
	s.Spec.ExternalIPs = []string{"203.0.113.7"}
	setService(s)
	res = check("svc1 takes the external IP")
	require.Len(t, res.Skipped, 1)

	m.sct.Update(svcs["svc3"], nil)
	m.ect.EndpointSliceUpdate(slices["svc3"], true)
	check("svc3 deleted")
	setService(service("ns", "svc0", "172.30.0.10", tcp("http", 80)))
	check("svc0 added")
	m.ect.EndpointSliceUpdate(slices["svc1"], true)
	check("svc1 loses its endpoints")

	opts.NodePortsOnAllAddresses = true
	check("options change")
	check("nothing changes")
}

// BenchmarkTranslatorEndpointChange: one endpoint of one Service changes
// among 10,000 Services x 10 endpoints; compare BenchmarkTranslate, the
// whole translation.
func BenchmarkTranslatorEndpointChange(b *testing.B) {
	sm, em := benchmarkMaps(10000, 10)
	opts := Options{Family: v1.IPv4Protocol, NodeName: nodeName, NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	var tr Translator
	tr.Translate(opts, sm, em)
	name := proxy.ServicePortName{}
	for n := range em {
		name = n
		break
	}
	variants := [2][]proxy.Endpoint{em[name], em[name][1:]}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		// A new slice, as the endpoints tracker makes at each change.
		em[name] = append([]proxy.Endpoint(nil), variants[i%2]...)
		i++
		if res := tr.Translate(opts, sm, em); len(res.Frontends) != 10000 {
			b.Fatalf("got %d frontends", len(res.Frontends))
		}
	}
}
