package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
)

// externalScenarios are what scope external serves: Services labelled for
// it (ClusterIPs from the pool routed to the load balancers) and
// LoadBalancer Services of its class; everything else stays the nodes'.
var externalScenarios = []scenario{
	{"external-labelled-service-from-outside", labelledServiceFromOutside},
	ingressIPScenario,
	{"external-other-services-left-to-the-nodes", otherServicesLeftToTheNodes},
	{"external-udp-refused-with-event", udpRefusedWithEvent},
}

// ingressIPScenario: lb-controller gives a LoadBalancer Service an ingress
// IP from its pool, the load balancer serves it from outside, and a
// deletion frees it for the next Service.
var ingressIPScenario = scenario{"ingress-ip-from-lb-controller", ingressIPFromLBController}

// labelled marks a Service as the external load balancer's, with its
// ClusterIP from the pool.
func labelled(s *v1.Service) {
	s.Labels = map[string]string{localcluster.ServiceProxyNameLabel: localcluster.ServiceProxyName}
	s.Annotations = map[string]string{localcluster.PoolLabel: localcluster.PoolName}
}

func labelledServiceFromOutside(t *testing.T, e *env) string {
	svc := e.service(t, "labelled", "web", func(s *v1.Service) {
		labelled(s)
		s.Spec.Type = v1.ServiceTypeNodePort
	})
	ip := netip.MustParseAddr(svc.Spec.ClusterIP)
	require.True(t, localcluster.PoolPrefix.Contains(ip), "ClusterIP %s from the pool %s", ip, localcluster.PoolPrefix)
	d := servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(ip.String(), 80)+"/", names(e.web...)...)
	np := svc.Spec.Ports[0].NodePort
	servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(localcluster.LBVIP.String(), np)+"/", names(e.web...)...)
	return fmt.Sprintf("ClusterIP %s and NodePort %d on the load balancer, 4 endpoints in %s", ip, np, ms(d))
}

// ingressIP waits until lb-controller wrote an ingress IP of its pool.
func ingressIP(t *testing.T, e *env, name string) (netip.Addr, time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		svc, err := e.c.Client.CoreV1().Services(metav1.NamespaceDefault).Get(e.ctx, name, metav1.GetOptions{})
		require.NoError(t, err)
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if a, err := netip.ParseAddr(in.IP); err == nil && localcluster.IngressPrefix.Contains(a) {
				return a, time.Since(start)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("Service %s got no ingress IP of %s from lb-controller", name, localcluster.IngressPrefix)
	return netip.Addr{}, 0
}

func ingressIPFromLBController(t *testing.T, e *env) string {
	lb := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		if e.mode == setupExternal {
			s.Spec.LoadBalancerClass = ptr.To(localcluster.LoadBalancerClass)
		}
	}
	e.service(t, "ingress", "web", lb)
	ip, took := ingressIP(t, e, "ingress")
	url := "http://" + ip.String() + "/"
	servedBy(t, e.c.Outside, localcluster.OutsideIP, url, names(e.web...)...)

	// Deleted: the address stops answering and goes to the next Service.
	require.NoError(t, e.c.Client.CoreV1().Services(metav1.NamespaceDefault).Delete(e.ctx, "ingress", metav1.DeleteOptions{}))
	_, how := stopsAnswering(t, e.c.Outside, localcluster.OutsideIP, url)
	e.service(t, "ingress-next", "web", lb)
	next, _ := ingressIP(t, e, "ingress-next")
	assert.Equal(t, ip, next, "the freed address is the lowest free one again")
	servedBy(t, e.c.Outside, localcluster.OutsideIP, url, names(e.web...)...)
	return fmt.Sprintf("%s assigned in %s, served from outside; after deletion %s, then reused", ip, ms(took), how)
}

func otherServicesLeftToTheNodes(t *testing.T, e *env) string {
	svc := e.service(t, "plain", "web", nil)
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, "http://"+hostPort(svc.Spec.ClusterIP, 80)+"/", names(e.web...)...)
	// Wait for a later labelled Service to reach the maps, then check the
	// plain one never did.
	e.service(t, "labelled-marker", "web", labelled)
	for host, dir := range e.haproxyDirs() {
		var state string
		require.Eventually(t, func() bool {
			b, err := os.ReadFile(filepath.Join(dir, "services-ipv4.map"))
			state = string(b)
			return err == nil && strings.Contains(state, "default.labelled-marker")
		}, 30*time.Second, 100*time.Millisecond, "%s's maps have the labelled Service", host)
		assert.NotContains(t, state, "default.plain:", "%s serves only its label and class", host)
		assert.NotContains(t, state, svc.Spec.ClusterIP+":", "%s serves only its label and class", host)
	}
	return "served by the nodes' nftables mode, absent from the load balancers' maps"
}

func udpRefusedWithEvent(t *testing.T, e *env) string {
	svc := e.service(t, "labelled-udp", "web", func(s *v1.Service) {
		labelled(s)
		s.Spec.Ports = []v1.ServicePort{
			{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")},
			{Name: "echo", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromString("echo")},
		}
	})
	// The TCP port is served, the UDP one refused with an event that says
	// why: nothing is silently dropped.
	servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(svc.Spec.ClusterIP, 80)+"/", names(e.web...)...)
	var found string
	require.Eventually(t, func() bool {
		evs, err := e.c.Client.CoreV1().Events(metav1.NamespaceDefault).List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, ev := range evs.Items {
			if ev.InvolvedObject.Kind == "Service" && ev.InvolvedObject.Name == svc.Name && ev.Reason == "ProtocolNotSupported" && ev.Type == v1.EventTypeWarning {
				found = ev.Message
				return true
			}
		}
		return false
	}, 30*time.Second, 200*time.Millisecond, "a ProtocolNotSupported event on the Service")
	return "event: " + found
}
