// Package clusterippools tests ClusterIP pools against the patched
// kube-apiserver and a real etcd: a ServiceCIDR labelled as a pool gives its
// addresses only to the Services that ask for that pool.
package clusterippools

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
)

const (
	poolKey = "haproxy.kube-haproxy.io/pool"
	ns      = metav1.NamespaceDefault
)

var (
	defaultV4 = netip.MustParsePrefix("10.0.0.0/24")
	defaultV6 = netip.MustParsePrefix("fd00::/120")
	// The "lb" pool: 6 usable IPv4 addresses, 7 usable IPv6 addresses.
	poolV4 = netip.MustParsePrefix("10.100.0.0/29")
	poolV6 = netip.MustParsePrefix("fd00:100::/125")
)

func TestClusterIPPools(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Config{
		ServiceClusterIPRange: defaultV4.String() + "," + defaultV6.String(),
	})
	c := cp.Client
	ctx := context.Background()

	createPool(t, c, "lb", "lb", poolV4.String(), poolV6.String())
	// IPv4 ClusterIPs held by pool Services, for the fill step.
	poolIPs := []string{waitForPool(t, c, "lb").Spec.ClusterIP}

	t.Run("a Service without a pool request gets an address outside the pool", func(t *testing.T) {
		svc := create(t, c, service("plain", "", v1.IPFamilyPolicyRequireDualStack))
		require.Len(t, svc.Spec.ClusterIPs, 2)
		assertIn(t, svc.Spec.ClusterIPs[0], defaultV4)
		assertIn(t, svc.Spec.ClusterIPs[1], defaultV6)
		assertNotIn(t, svc.Spec.ClusterIPs[0], poolV4)
		assertIPAddressRefs(t, c, svc)
	})

	t.Run("a static ClusterIP inside the pool needs the pool request", func(t *testing.T) {
		before := ipAddresses(t, c)
		ip := freeAddress(t, c, poolV4)
		svc := service("squatter", "", v1.IPFamilyPolicySingleStack)
		svc.Spec.ClusterIP = ip
		err := createErr(c, svc)
		assertInvalid(t, err, `ClusterIP pool "lb" contains `+ip+`: only Services with the annotation haproxy.kube-haproxy.io/pool=lb may use its addresses`)
		assert.Equal(t, before, ipAddresses(t, c), "a refused Service must leave no IPAddress")

		svc = service("static-in-pool", "lb", v1.IPFamilyPolicySingleStack)
		svc.Spec.ClusterIP = ip
		got := create(t, c, svc)
		assert.Equal(t, ip, got.Spec.ClusterIP)
		poolIPs = append(poolIPs, got.Spec.ClusterIP)
	})

	t.Run("a Service asking for the pool gets a pool address", func(t *testing.T) {
		svc := create(t, c, service("web", "lb", v1.IPFamilyPolicySingleStack))
		require.Len(t, svc.Spec.ClusterIPs, 1)
		assertIn(t, svc.Spec.ClusterIP, poolV4)
		assertIPAddressRefs(t, c, svc)
		poolIPs = append(poolIPs, svc.Spec.ClusterIP)
	})

	t.Run("a dual-stack Service asking for the pool gets one pool address per family", func(t *testing.T) {
		svc := create(t, c, service("web-ds", "lb", v1.IPFamilyPolicyRequireDualStack))
		require.Len(t, svc.Spec.ClusterIPs, 2)
		assertIn(t, svc.Spec.ClusterIPs[0], poolV4)
		assertIn(t, svc.Spec.ClusterIPs[1], poolV6)
		assertIPAddressRefs(t, c, svc)
		poolIPs = append(poolIPs, svc.Spec.ClusterIP)
	})

	t.Run("a Service asking for an unknown pool gets a clear error", func(t *testing.T) {
		before := ipAddresses(t, c)
		err := createErr(c, service("lost", "nope", v1.IPFamilyPolicySingleStack))
		assertInvalid(t, err, `ClusterIP pool "nope" does not exist: no ServiceCIDR has the label haproxy.kube-haproxy.io/pool=nope`)
		// A server-side dry run refuses it too.
		_, err = c.CoreV1().Services(ns).Create(ctx, service("lost", "nope", v1.IPFamilyPolicySingleStack), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		assertInvalid(t, err, `ClusterIP pool "nope" does not exist`)
		assert.Equal(t, before, ipAddresses(t, c), "a refused Service must leave no IPAddress")
	})

	t.Run("a Service cannot switch pools: its ClusterIP is immutable", func(t *testing.T) {
		for _, to := range []*string{ptr("other"), nil} {
			svc, err := c.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
			require.NoError(t, err)
			if to == nil {
				delete(svc.Annotations, poolKey)
			} else {
				svc.Annotations[poolKey] = *to
			}
			_, err = c.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{})
			assertInvalid(t, err, `metadata.annotations[haproxy.kube-haproxy.io/pool]`)
			assertInvalid(t, err, `the ClusterIP pool of a Service cannot change: its ClusterIPs [`+svc.Spec.ClusterIP+`] come from ClusterIP pool "lb" and spec.clusterIP is immutable`)
		}
		// The other direction: a default Service cannot join the pool.
		svc, err := c.CoreV1().Services(ns).Get(ctx, "plain", metav1.GetOptions{})
		require.NoError(t, err)
		svc.Annotations = map[string]string{poolKey: "lb"}
		_, err = c.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{})
		assertInvalid(t, err, `come from the default Service CIDRs and spec.clusterIP is immutable`)
	})

	t.Run("a full pool gives a clear error and leaks nothing", func(t *testing.T) {
		// 6 usable IPv4 addresses, 4 taken above.
		require.Len(t, poolIPs, 4)
		for i := 0; len(poolIPs) < 6; i++ {
			svc := create(t, c, service(fmt.Sprintf("fill-%d", i), "lb", v1.IPFamilyPolicySingleStack))
			assertIn(t, svc.Spec.ClusterIP, poolV4)
			poolIPs = append(poolIPs, svc.Spec.ClusterIP)
		}
		before := ipAddresses(t, c)
		err := createErr(c, service("overflow", "lb", v1.IPFamilyPolicySingleStack))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `ClusterIP pool "lb" is full (ServiceCIDR "lb" (10.100.0.0/29)): range is full`)
		// Dual-stack: the IPv6 half may be allocated before the IPv4 half
		// fails (map order); it must be released. Repeat so both orders run.
		for i := 0; i < 8; i++ {
			err = createErr(c, service("overflow-ds", "lb", v1.IPFamilyPolicyRequireDualStack))
			require.Error(t, err)
			assert.Contains(t, err.Error(), `ClusterIP pool "lb" is full`)
		}
		assert.Equal(t, before, ipAddresses(t, c), "a refused Service must leave no IPAddress")
		// The default range is unaffected.
		svc := create(t, c, service("still-plain", "", v1.IPFamilyPolicySingleStack))
		assertIn(t, svc.Spec.ClusterIP, defaultV4)
	})

	t.Run("the IPAddress repair controller finds nothing to repair", func(t *testing.T) {
		// Positive control: an IPAddress of the Service allocator that does
		// not reference a Service is repaired (deleted, with an event) at once.
		bogusIP := freeAddress(t, c, defaultV4)
		bogus := &networkingv1.IPAddress{
			ObjectMeta: metav1.ObjectMeta{Name: bogusIP, Labels: map[string]string{
				networkingv1.LabelIPAddressFamily: string(v1.IPv4Protocol),
				networkingv1.LabelManagedBy:       "ipallocator.k8s.io",
			}},
			Spec: networkingv1.IPAddressSpec{ParentRef: &networkingv1.ParentReference{Resource: "pods", Namespace: ns, Name: "not-a-service"}},
		}
		_, err := c.NetworkingV1().IPAddresses().Create(ctx, bogus, metav1.CreateOptions{})
		require.NoError(t, err)
		var repairs []repairEvent
		pollUntil(t, func() bool {
			repairs = repairEvents(t, c)
			for _, r := range repairs {
				if r.kind == "IPAddress" && r.name == bogusIP {
					return true
				}
			}
			return false
		})
		_, err = c.NetworkingV1().IPAddresses().Get(ctx, bogus.Name, metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "the bogus IPAddress should be deleted, got %v", err)
		// By now the controller has looked at every Service and IPAddress
		// above. Besides the bogus address it may only have met its own
		// informer race: a Service seen before the IPAddress created just
		// before it ("not allocated; repairing", then AlreadyExists). Then
		// the IPAddress exists and references that Service.
		sawBogus := false
		for _, r := range repairs {
			switch {
			case r.kind == "IPAddress" && r.name == bogusIP:
				sawBogus = true
			case r.kind == "Service" && r.reason == "ClusterIPNotAllocated":
				svc, err := c.CoreV1().Services(r.namespace).Get(ctx, r.name, metav1.GetOptions{})
				require.NoError(t, err)
				assertIPAddressRefs(t, c, svc)
			default:
				t.Errorf("unexpected repair: %s", r)
			}
		}
		assert.True(t, sawBogus, "the repair controller did not report the bogus IPAddress: %v", repairs)
	})

	t.Run("pools whose ServiceCIDRs overlap are refused until fixed", func(t *testing.T) {
		createPool(t, c, "lb-overlap", "other", "10.100.0.0/30")
		// The allocator learns about ServiceCIDRs from an informer.
		var err error
		pollUntil(t, func() bool {
			err = createErr(c, service("in-other", "other", v1.IPFamilyPolicySingleStack))
			return err != nil && strings.Contains(err.Error(), "overlaps")
		})
		assertInvalid(t, err, `ServiceCIDR "lb" (10.100.0.0/29) of pool "lb" overlaps ServiceCIDR "lb-overlap" (10.100.0.0/30) of pool "other": the CIDRs of different ClusterIP pools must not overlap`)
		// The conflict is reported before the pool's fullness.
		err = createErr(c, service("in-lb", "lb", v1.IPFamilyPolicySingleStack))
		assertInvalid(t, err, `ClusterIP pool "lb" cannot be used: ServiceCIDR "lb" (10.100.0.0/29) of pool "lb" overlaps`)
		// Default allocation keeps away from both pools.
		svc := create(t, c, service("plain-during-overlap", "", v1.IPFamilyPolicySingleStack))
		assertIn(t, svc.Spec.ClusterIP, defaultV4)

		// Removing the overlap makes pool "lb" usable again (and full).
		require.NoError(t, c.NetworkingV1().ServiceCIDRs().Delete(ctx, "lb-overlap", metav1.DeleteOptions{}))
		pollUntil(t, func() bool {
			err = createErr(c, service("in-lb", "lb", v1.IPFamilyPolicySingleStack))
			return err != nil && !strings.Contains(err.Error(), "overlaps")
		})
		require.Error(t, err)
		assert.Contains(t, err.Error(), `ClusterIP pool "lb" is full`)
		err = createErr(c, service("in-other", "other", v1.IPFamilyPolicySingleStack))
		assertInvalid(t, err, `ClusterIP pool "other" does not exist`)
	})

	t.Run("deleting Services releases their addresses", func(t *testing.T) {
		svcs, err := c.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		for _, svc := range svcs.Items {
			if svc.Name == "kubernetes" {
				continue
			}
			require.NoError(t, c.CoreV1().Services(ns).Delete(ctx, svc.Name, metav1.DeleteOptions{}))
		}
		kubernetes, err := c.CoreV1().Services(ns).Get(ctx, "kubernetes", metav1.GetOptions{})
		require.NoError(t, err)
		want := append([]string(nil), kubernetes.Spec.ClusterIPs...)
		sort.Strings(want)
		var got []string
		// Normally immediate; up to a minute when the repair controller
		// raced a deletion (see waitForPool) and must expire its re-created
		// IPAddress.
		_ = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) {
			got = ipAddresses(t, c)
			return strings.Join(got, ",") == strings.Join(want, ","), nil
		})
		assert.Equal(t, want, got, "only the kubernetes Service's IPAddresses remain")
	})
}

// A pool carved out of the default range: until the default range is
// exhausted, no Service without the pool request gets a pool address, and a
// Service asking for the pool still gets one afterwards.
func TestClusterIPPoolCarvedOutOfDefaultRange(t *testing.T) {
	cp := controlplane.Start(t, controlplane.Config{ServiceClusterIPRange: "10.0.0.0/25"})
	c := cp.Client
	carved := netip.MustParsePrefix("10.0.0.64/26")
	createPool(t, c, "carved", "carved", carved.String())
	first := create(t, c, service("first-of-carved", "carved", v1.IPFamilyPolicySingleStack))
	assertIn(t, first.Spec.ClusterIP, carved)

	// The /25 hands out 10.0.0.1-126; 10.0.0.64-126 are the pool's and
	// 10.0.0.1 is the kubernetes Service's: 62 left for the others.
	var err error
	n := 0
	for ; n < 100; n++ {
		var svc *v1.Service
		svc, err = c.CoreV1().Services(ns).Create(context.Background(), service(fmt.Sprintf("plain-%d", n), "", v1.IPFamilyPolicySingleStack), metav1.CreateOptions{})
		if err != nil {
			break
		}
		assertNotIn(t, svc.Spec.ClusterIP, carved)
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "range is full")
	assert.Equal(t, 62, n, "Services that got a default address")

	svc := create(t, c, service("second-of-carved", "carved", v1.IPFamilyPolicySingleStack))
	assertIn(t, svc.Spec.ClusterIP, carved)
}

func service(name, pool string, policy v1.IPFamilyPolicy) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.ServiceSpec{
			Selector:       map[string]string{"app": name},
			Ports:          []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: v1.ProtocolTCP}},
			IPFamilyPolicy: &policy,
		},
	}
	if pool != "" {
		svc.Annotations = map[string]string{poolKey: pool}
	}
	return svc
}

func createPool(t *testing.T, c kubernetes.Interface, name, pool string, cidrs ...string) {
	t.Helper()
	sc := &networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{poolKey: pool}},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: cidrs},
	}
	_, err := c.NetworkingV1().ServiceCIDRs().Create(context.Background(), sc, metav1.CreateOptions{})
	require.NoError(t, err, "creating pool ServiceCIDR %s", name)
}

// waitForPool waits until the allocator knows pool and its CIDRs of both
// families, by creating a dual-stack Service in it. The Service stays:
// deleting a Service right after creating it can race with the upstream
// IPAddress repair controller, which then re-creates the released
// IPAddress and only removes it after a minute.
func waitForPool(t *testing.T, c kubernetes.Interface, pool string) *v1.Service {
	t.Helper()
	svc := create(t, c, service("first-of-"+pool, pool, v1.IPFamilyPolicyRequireDualStack))
	require.Len(t, svc.Spec.ClusterIPs, 2)
	assertIn(t, svc.Spec.ClusterIPs[0], poolV4)
	assertIn(t, svc.Spec.ClusterIPs[1], poolV6)
	return svc
}

// freeAddress returns an address of p that no IPAddress object holds.
func freeAddress(t *testing.T, c kubernetes.Interface, p netip.Prefix) string {
	t.Helper()
	used := map[string]bool{}
	for _, ip := range ipAddresses(t, c) {
		used[ip] = true
	}
	for a := p.Addr().Next(); p.Contains(a.Next()); a = a.Next() {
		if !used[a.String()] {
			return a.String()
		}
	}
	t.Fatalf("no free address in %s", p)
	return ""
}

// create creates svc, retrying while the allocator has not yet seen a pool
// ServiceCIDR created just before (it learns them from an informer).
func create(t *testing.T, c kubernetes.Interface, svc *v1.Service) *v1.Service {
	t.Helper()
	var got *v1.Service
	var err error
	pollUntil(t, func() bool {
		got, err = c.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
		return err == nil || !(strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "is not ready"))
	})
	require.NoError(t, err, "creating Service %s", svc.Name)
	return got
}

func createErr(c kubernetes.Interface, svc *v1.Service) error {
	_, err := c.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
	return err
}

func assertInvalid(t *testing.T, err error, want string) {
	t.Helper()
	require.Error(t, err, "want an error containing %q", want)
	assert.True(t, apierrors.IsInvalid(err), "want 422 Invalid, got %v", err)
	assert.Contains(t, err.Error(), want)
}

func assertIn(t *testing.T, ip string, p netip.Prefix) {
	t.Helper()
	addr, err := netip.ParseAddr(ip)
	require.NoError(t, err)
	assert.True(t, p.Contains(addr), "%s should be in %s", ip, p)
}

func assertNotIn(t *testing.T, ip string, p netip.Prefix) {
	t.Helper()
	addr, err := netip.ParseAddr(ip)
	require.NoError(t, err)
	assert.False(t, p.Contains(addr), "%s should not be in %s", ip, p)
}

// assertIPAddressRefs checks each ClusterIP of svc has an IPAddress object
// pointing back at svc.
func assertIPAddressRefs(t *testing.T, c kubernetes.Interface, svc *v1.Service) {
	t.Helper()
	for _, ip := range svc.Spec.ClusterIPs {
		obj, err := c.NetworkingV1().IPAddresses().Get(context.Background(), ip, metav1.GetOptions{})
		if !assert.NoError(t, err, "IPAddress %s", ip) {
			continue
		}
		require.NotNil(t, obj.Spec.ParentRef)
		assert.Equal(t, "services", obj.Spec.ParentRef.Resource)
		assert.Equal(t, svc.Namespace+"/"+svc.Name, obj.Spec.ParentRef.Namespace+"/"+obj.Spec.ParentRef.Name)
	}
}

// ipAddresses lists the names of all IPAddress objects, sorted.
func ipAddresses(t *testing.T, c kubernetes.Interface) []string {
	t.Helper()
	list, err := c.NetworkingV1().IPAddresses().List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	names := make([]string, 0, len(list.Items))
	for _, ip := range list.Items {
		names = append(names, ip.Name)
	}
	sort.Strings(names)
	return names
}

type repairEvent struct{ kind, namespace, name, reason, note string }

func (r repairEvent) String() string {
	return fmt.Sprintf("%s %s/%s %s: %s", r.kind, r.namespace, r.name, r.reason, r.note)
}

// repairEvents lists what the IPAddress repair controller reported.
func repairEvents(t *testing.T, c kubernetes.Interface) []repairEvent {
	t.Helper()
	list, err := c.EventsV1().Events(metav1.NamespaceAll).List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	var out []repairEvent
	for _, e := range list.Items {
		if e.ReportingController != "ipallocator-repair-controller" {
			continue
		}
		out = append(out, repairEvent{e.Regarding.Kind, e.Regarding.Namespace, e.Regarding.Name, e.Reason, e.Note})
	}
	return out
}

func pollUntil(t *testing.T, cond func() bool) {
	t.Helper()
	_ = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
}

func ptr[T any](v T) *T { return &v }
