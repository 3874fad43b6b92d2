package lbcontroller

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
)

const class = "kube-haproxy.io/haproxy"

func lbService(name string, age int, mod ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, CreationTimestamp: metav1.NewTime(time.Unix(1_700_000_000+int64(age), 0))},
		Spec: v1.ServiceSpec{
			Type:              v1.ServiceTypeLoadBalancer,
			LoadBalancerClass: ptr.To(class),
			IPFamilies:        []v1.IPFamily{v1.IPv4Protocol},
			ClusterIP:         "10.96.0.10",
			Ports:             []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mod {
		m(svc)
	}
	return svc
}

func withIngress(ips ...string) func(*v1.Service) {
	return func(svc *v1.Service) {
		for _, ip := range ips {
			svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
	}
}

type harness struct {
	client   kubernetes.Interface
	recorder *record.FakeRecorder
	events   []string
}

// start runs a controller over a fake API holding objs until the test ends.
func start(t *testing.T, cfg Config, objs ...*v1.Service) *harness {
	t.Helper()
	h := &harness{recorder: record.NewFakeRecorder(1000)}
	client := fake.NewClientset()
	for _, o := range objs {
		_, err := client.CoreV1().Services(o.Namespace).Create(t.Context(), o, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	h.client = client
	ctx, cancel := context.WithCancel(t.Context())
	factory := informers.NewSharedInformerFactory(client, 0)
	c, err := New(ctx, cfg, client, factory.Core().V1().Services(), h.recorder)
	require.NoError(t, err)
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() {
		defer close(done)
		assert.NoError(t, c.Run(ctx))
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
	})
	return h
}

// ingress waits until the Service's ingress IPs are want (in order).
func (h *harness) ingress(t *testing.T, name string, want ...string) {
	t.Helper()
	var got []string
	ok := assert.Eventually(t, func() bool {
		svc, err := h.client.CoreV1().Services("ns").Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		got = nil
		for _, in := range svc.Status.LoadBalancer.Ingress {
			got = append(got, in.IP)
		}
		return strings.Join(got, ",") == strings.Join(want, ",")
	}, 5*time.Second, 10*time.Millisecond)
	if !ok {
		t.Fatalf("Service %s: ingress %v, want %v", name, got, want)
	}
}

// event waits for an event whose text contains all of parts.
func (h *harness) event(t *testing.T, parts ...string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		for _, e := range h.events {
			if containsAll(e, parts) {
				return
			}
		}
		select {
		case e := <-h.recorder.Events:
			h.events = append(h.events, e)
		case <-deadline:
			t.Fatalf("no event with %q among %q", parts, h.events)
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

func pools(cidrs ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range cidrs {
		out = append(out, netip.MustParsePrefix(c))
	}
	return out
}

func TestAssignsOnlyItsClassFromThePool(t *testing.T) {
	h := start(t, Config{Class: class, Pools: pools("203.0.113.0/24", "2001:db8:1b::/120")},
		lbService("a", 1),
		lbService("dual", 2, func(s *v1.Service) { s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol} }),
		lbService("other-class", 3, func(s *v1.Service) { s.Spec.LoadBalancerClass = ptr.To("example.com/other") }),
		lbService("no-class", 4, func(s *v1.Service) { s.Spec.LoadBalancerClass = nil }),
		lbService("cluster-ip", 5, func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeClusterIP; s.Spec.LoadBalancerClass = nil }),
	)
	// The network address of a pool is never given out.
	h.ingress(t, "a", "203.0.113.1")
	h.ingress(t, "dual", "203.0.113.2", "2001:db8:1b::1")
	h.event(t, ReasonAssigned, "203.0.113.1")
	time.Sleep(200 * time.Millisecond)
	h.ingress(t, "other-class")
	h.ingress(t, "no-class")
	h.ingress(t, "cluster-ip")
}

func TestServeUnclassed(t *testing.T) {
	h := start(t, Config{Class: class, ServeUnclassed: true, Pools: pools("203.0.113.0/30")},
		lbService("no-class", 1, func(s *v1.Service) { s.Spec.LoadBalancerClass = nil }))
	h.ingress(t, "no-class", "203.0.113.1")
}

func TestReleasesAndReuses(t *testing.T) {
	// A /30 has two usable addresses.
	h := start(t, Config{Class: class, Pools: pools("203.0.113.0/30")}, lbService("a", 1), lbService("b", 2))
	h.ingress(t, "a", "203.0.113.1")
	h.ingress(t, "b", "203.0.113.2")

	_, err := h.client.CoreV1().Services("ns").Create(t.Context(), lbService("c", 3), metav1.CreateOptions{})
	require.NoError(t, err)
	h.event(t, ReasonPoolExhausted, "IPv4")
	h.ingress(t, "c")

	// Deleting a frees its address, and c, which was waiting, gets it.
	require.NoError(t, h.client.CoreV1().Services("ns").Delete(t.Context(), "a", metav1.DeleteOptions{}))
	h.ingress(t, "c", "203.0.113.1")

	// b leaves the class: its status is cleared and the address is free.
	b, err := h.client.CoreV1().Services("ns").Get(t.Context(), "b", metav1.GetOptions{})
	require.NoError(t, err)
	b.Spec.Type, b.Spec.LoadBalancerClass = v1.ServiceTypeClusterIP, nil
	_, err = h.client.CoreV1().Services("ns").Update(t.Context(), b, metav1.UpdateOptions{})
	require.NoError(t, err)
	h.ingress(t, "b")
	h.event(t, ReasonReleased)
	_, err = h.client.CoreV1().Services("ns").Create(t.Context(), lbService("d", 4), metav1.CreateOptions{})
	require.NoError(t, err)
	h.ingress(t, "d", "203.0.113.2")
}

// A restarted controller (or the other load-balancer host's, after a
// failover) keeps what the Services hold; of two Services claiming one
// address, the older keeps it. Addresses of another controller stay.
func TestAdoptsWhatServicesHold(t *testing.T) {
	h := start(t, Config{Class: class, Pools: pools("203.0.113.0/24")},
		lbService("young", 2, withIngress("203.0.113.7")),
		lbService("old", 1, withIngress("203.0.113.7")),
		lbService("kept", 3, withIngress("203.0.113.9", "198.51.100.1")),
	)
	h.ingress(t, "old", "203.0.113.7")
	h.ingress(t, "kept", "203.0.113.9", "198.51.100.1")
	h.ingress(t, "young", "203.0.113.1")
}

func TestLoadBalancerIPRequest(t *testing.T) {
	h := start(t, Config{Class: class, Pools: pools("203.0.113.0/24")},
		lbService("asks", 1, func(s *v1.Service) { s.Spec.LoadBalancerIP = "203.0.113.50" }),
		lbService("outside", 2, func(s *v1.Service) { s.Spec.LoadBalancerIP = "192.0.2.1" }),
		lbService("taken", 3, func(s *v1.Service) { s.Spec.LoadBalancerIP = "203.0.113.50" }),
	)
	h.ingress(t, "asks", "203.0.113.50")
	h.event(t, ReasonRequestRefused, "192.0.2.1", "none of the pools")
	h.event(t, ReasonRequestRefused, "203.0.113.50", "held by Service ns/asks")
	// Refused requests still get an address of the pool.
	h.ingress(t, "outside", "203.0.113.1")
	h.ingress(t, "taken", "203.0.113.2")
}

// A LoadBalancer of another class keeps what its own controller wrote,
// even an address inside our pools.
func TestLeavesOtherClassesAlone(t *testing.T) {
	h := start(t, Config{Class: class, Pools: pools("203.0.113.0/24")},
		lbService("other", 1, withIngress("203.0.113.5"), func(s *v1.Service) { s.Spec.LoadBalancerClass = ptr.To("example.com/other") }),
		lbService("ours", 2))
	h.ingress(t, "ours", "203.0.113.1")
	time.Sleep(200 * time.Millisecond)
	h.ingress(t, "other", "203.0.113.5")
}

func TestNoPoolOfTheFamily(t *testing.T) {
	h := start(t, Config{Class: class, Pools: pools("203.0.113.0/24")},
		lbService("v6", 1, func(s *v1.Service) { s.Spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol} }))
	h.event(t, ReasonNoPool, "IPv6")
	h.ingress(t, "v6")
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Pools: pools("203.0.113.0/24")}, "class"},
		{Config{Class: class}, "pools: none"},
		{Config{Class: class, Pools: pools("203.0.113.0/24", "203.0.113.128/25")}, "overlaps"},
	} {
		assert.ErrorContains(t, tc.cfg.Validate(), tc.want)
	}
	assert.NoError(t, Config{Class: class, Pools: pools("203.0.113.0/24", "2001:db8::/64")}.Validate())
}

func TestLastAddr(t *testing.T) {
	assert.Equal(t, "203.0.113.255", lastAddr(netip.MustParsePrefix("203.0.113.0/24")).String())
	assert.Equal(t, "2001:db8::ff", lastAddr(netip.MustParsePrefix("2001:db8::/120")).String())
	assert.Equal(t, "10.0.0.1", lastAddr(netip.MustParsePrefix("10.0.0.1/32")).String())
}
