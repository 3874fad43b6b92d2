package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
	"kube-haproxy.io/kube-haproxy/proxier/apply"
)

type scenario struct {
	name string
	// run returns a note for the summary (a measurement), or "".
	run func(t *testing.T, e *env) string
}

var scenarios = []scenario{
	{"clusterip-all-endpoints", clusterIPAllEndpoints},
	{"named-targetport-multiport", namedTargetPortMultiPort},
	{"nodeport-from-outside", nodePortFromOutside},
	{"externalips", externalIPs},
	{"loadbalancer-source-ranges", loadBalancerSourceRanges},
	{"session-affinity-clientip", sessionAffinity},
	{"no-endpoints-fails-fast", noEndpointsFailsFast},
	{"endpoint-added", endpointAdded},
	{"endpoint-removed", endpointRemoved},
	{"internal-traffic-policy-local", internalTrafficPolicyLocal},
	{"external-traffic-policy-local", externalTrafficPolicyLocal},
	{"client-source-ip-etp-local", clientSourceIP},
	{"dead-endpoint-still-ready", deadEndpointStillReady},
	{"silent-endpoint-active-checks", silentEndpointChecked},
	{"proxy-protocol-to-endpoints", proxyProtocolToEndpoints},
	{"grpc-balanced-per-request", grpcPerRequest},
	{"h2c-balanced-per-request", h2cPerRequest},
	{"terminating-endpoint-fallback", terminatingFallback},
	{"headless-ignored", headlessIgnored},
	{"service-deleted", serviceDeleted},
	{"udp-clusterip", udpClusterIP},
	{"dns-like-tcp-and-udp-53", dnsLike},
	{"dns-like-from-the-node", dnsLikeFromTheNode},
	{"scale-1-10-1-under-load", scaleUnderLoad},
}

func clusterIPAllEndpoints(t *testing.T, e *env) string {
	svc := e.service(t, "cip", "web", nil)
	d := servedBy(t, e.client.NS.Namespace, netip.Addr{}, "http://"+hostPort(svc.Spec.ClusterIP, 80)+"/", names(e.web...)...)
	return "4 endpoints on 2 nodes in " + ms(d)
}

func namedTargetPortMultiPort(t *testing.T, e *env) string {
	svc := e.service(t, "multi", "web", func(s *v1.Service) {
		s.Spec.Ports = []v1.ServicePort{
			{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")},
			{Name: "alt", Protocol: v1.ProtocolTCP, Port: 81, TargetPort: intstr.FromString("alt")},
		}
	})
	for port, podPort := range map[int32]string{80: ":8080", 81: ":8081"} {
		url := "http://" + hostPort(svc.Spec.ClusterIP, port) + "/"
		servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, names(e.web...)...)
		r, err := get(e.client.NS.Namespace, netip.Addr{}, url, 3*time.Second)
		require.NoError(t, err)
		assert.True(t, strings.HasSuffix(r.Local, podPort), "port %d reaches the pod's %s, got %s", port, podPort, r.Local)
	}
	return ""
}

func nodePortFromOutside(t *testing.T, e *env) string {
	svc := e.service(t, "np", "web", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })
	np := svc.Spec.Ports[0].NodePort
	for _, h := range e.nodePortHosts() {
		servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(h, np)+"/", names(e.web...)...)
	}
	if e.mode == setupCluster {
		byDesign["nodeport-from-outside"] = "scope cluster runs no kube-proxy on the nodes: NodePorts are served on the load balancers' addresses"
		return fmt.Sprintf("port %d on the load balancers' %s", np, localcluster.LBVIP)
	}
	return fmt.Sprintf("port %d on both nodes", np)
}

func externalIPs(t *testing.T, e *env) string {
	ip := "198.51.100.10"
	e.service(t, "extip", "web", func(s *v1.Service) { s.Spec.ExternalIPs = []string{ip} })
	servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+ip+"/", names(e.web...)...)
	return ""
}

func loadBalancerSourceRanges(t *testing.T, e *env) string {
	ip := "192.0.2.20"
	e.service(t, "lbsr", "web", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{localcluster.OutsideIP.String() + "/32"}
	}, ip)
	url := "http://" + ip + "/"
	servedBy(t, e.c.Outside, localcluster.OutsideIP, url, names(e.web...)...)
	// The other address of the outside client is not in the range.
	for range 5 {
		r, err := get(e.c.Outside, localcluster.OutsideIP2, url, 2*time.Second)
		require.Error(t, err, "a client outside loadBalancerSourceRanges was served by %s", r.Name)
	}
	return "allowed client served, other client refused"
}

func sessionAffinity(t *testing.T, e *env) string {
	svc := e.service(t, "affinity", "web", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
	})
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	require.NoError(t, e.client.NS.WaitTCP(hostPort(svc.Spec.ClusterIP, 80), 30*time.Second))
	// Wait until it serves at all, then every answer comes from one pod.
	var first string
	deadline := time.Now().Add(30 * time.Second)
	for first == "" && time.Now().Before(deadline) {
		if r, err := get(e.client.NS.Namespace, netip.Addr{}, url, 2*time.Second); err == nil {
			first = r.Name
		}
	}
	require.NotEmpty(t, first)
	for range 20 {
		r, err := get(e.client.NS.Namespace, netip.Addr{}, url, 3*time.Second)
		require.NoError(t, err)
		require.Equal(t, first, r.Name, "sessionAffinity ClientIP keeps one client on one pod")
	}
	return "20 requests, one pod"
}

func noEndpointsFailsFast(t *testing.T, e *env) string {
	svc := e.service(t, "empty", "nothing", nil)
	addr := hostPort(svc.Spec.ClusterIP, 80)
	eventuallyRefused(t, e.client.NS.Namespace, addr)
	ok, d, err := refused(e.client.NS.Namespace, addr)
	require.True(t, ok, "want a fast refusal, got %v after %v", err, d)
	return fmt.Sprintf("%v in %s", shortErr(err), ms(d))
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

func endpointAdded(t *testing.T, e *env) string {
	svc := e.service(t, "added", "added", nil)
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	eventuallyRefused(t, e.client.NS.Namespace, hostPort(svc.Spec.ClusterIP, 80))
	p, err := e.c.StartPod(e.c.Nodes[1], "added-1", map[string]string{"app": "added"})
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, e.c.SetReady(e.ctx, p, true))
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, p.Name)
	return "serving " + ms(time.Since(start)) + " after the slice update"
}

func endpointRemoved(t *testing.T, e *env) string {
	var pods []*localcluster.Pod
	for i, n := range e.c.Nodes {
		p, err := e.c.AddPod(e.ctx, n, fmt.Sprintf("removed-%d", i), map[string]string{"app": "removed"})
		require.NoError(t, err)
		pods = append(pods, p)
	}
	svc := e.service(t, "removed", "removed", nil)
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, names(pods...)...)
	// The pod stays up while its endpoint is removed: a request that still
	// reaches it is answered, and counted as a failure of the proxy.
	gone := pods[0]
	require.NoError(t, e.c.Unlist(e.ctx, gone))
	d := servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, pods[1].Name)
	defer e.c.StopPod(gone)
	for range 50 {
		r, err := get(e.client.NS.Namespace, netip.Addr{}, url, 3*time.Second)
		require.NoError(t, err)
		require.NotEqual(t, gone.Name, r.Name, "a removed endpoint is never reached again")
	}
	return "gone in " + ms(d) + ", then 50/50 to the other"
}

func internalTrafficPolicyLocal(t *testing.T, e *env) string {
	svc := e.service(t, "itp", "web", func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	})
	// The client runs on node1: only node1's pods.
	var local []*localcluster.Pod
	for _, p := range e.web {
		if p.Node == e.client.Node {
			local = append(local, p)
		}
	}
	if e.mode == setupCluster {
		byDesign["internal-traffic-policy-local"] = "on a load balancer that is not a node no endpoint is local: scope cluster serves policy Local by every endpoint"
		servedBy(t, e.client.NS.Namespace, netip.Addr{}, "http://"+hostPort(svc.Spec.ClusterIP, 80)+"/", names(e.web...)...)
		return "every endpoint (scope cluster)"
	}
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, "http://"+hostPort(svc.Spec.ClusterIP, 80)+"/", names(local...)...)
	return ""
}

// etpLocalService is a LoadBalancer Service with externalTrafficPolicy
// Local whose only pod runs on node1.
func etpLocalService(t *testing.T, e *env, name, lbIP string) (*v1.Service, *localcluster.Pod) {
	p, err := e.c.AddPod(e.ctx, e.c.Nodes[0], name+"-1", map[string]string{"app": name})
	require.NoError(t, err)
	svc := e.service(t, name, name, func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}, lbIP)
	return svc, p
}

func externalTrafficPolicyLocal(t *testing.T, e *env) string {
	svc, p := etpLocalService(t, e, "etp", "192.0.2.30")
	require.NotZero(t, svc.Spec.HealthCheckNodePort)
	hc := svc.Spec.HealthCheckNodePort
	if e.mode == setupCluster {
		byDesign["external-traffic-policy-local"] = "scope cluster: no endpoint is local to the load balancer, every one serves, and no healthCheckNodePort is opened (it belongs to nodes)"
		np := svc.Spec.Ports[0].NodePort
		servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(localcluster.LBVIP.String(), np)+"/", p.Name)
		servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://192.0.2.30/", p.Name)
		_, err := get(e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(localcluster.LBVIP.String(), hc)+"/", 2*time.Second)
		assert.Error(t, err, "no healthCheckNodePort on the load balancer")
		return "LB IP and NodePort served, no healthCheckNodePort"
	}
	want := map[string]int{e.c.Nodes[0].Name: http.StatusOK, e.c.Nodes[1].Name: http.StatusServiceUnavailable}
	for _, n := range e.c.Nodes {
		url := "http://" + hostPort(n.IP.String(), hc) + "/"
		var code int
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			resp, err := e.c.Outside.HTTPClient(2 * time.Second).Get(url)
			if err == nil {
				code = resp.StatusCode
				resp.Body.Close()
				if code == want[n.Name] {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		assert.Equal(t, want[n.Name], code, "healthCheckNodePort on %s", n.Name)
	}
	np := svc.Spec.Ports[0].NodePort
	servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(e.c.Nodes[0].IP.String(), np)+"/", p.Name)
	servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://192.0.2.30/", p.Name)
	// node2 has no local endpoint: its NodePort does not serve.
	_, err := get(e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(e.c.Nodes[1].IP.String(), np)+"/", 2*time.Second)
	assert.Error(t, err, "node2 has no local endpoint")
	return fmt.Sprintf("healthCheckNodePort %d: 200 on node1, 503 on node2", hc)
}

func clientSourceIP(t *testing.T, e *env) string {
	if e.mode == setupCluster {
		byDesign["client-source-ip-etp-local"] = "nftables DNATs on the node and keeps the client's address for externalTrafficPolicy Local; " +
			"the central HAProxy is not on the pod's node (its replies would bypass it), so the pod sees the load balancer"
	}
	_, _ = etpLocalService(t, e, "srcip", "192.0.2.31")
	var r struct{ Client string }
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got, err := get(e.c.Outside, localcluster.OutsideIP, "http://192.0.2.31/", 2*time.Second)
		if err == nil {
			r.Client = got.Client
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.NotEmpty(t, r.Client, "the LB IP never answered")
	host := r.Client[:strings.LastIndex(r.Client, ":")]
	switch e.mode {
	case localcluster.ModeNFTables, localcluster.ModeHAProxy:
		assert.Equal(t, localcluster.OutsideIP.String(), host, "the pod sees the outside client's address")
	case setupCluster:
		assert.NotEqual(t, localcluster.OutsideIP.String(), host, "HAProxy connects from the load balancer host")
	}
	return "pod sees " + host
}

// deadEndpointStillReady stops the server of one of four pods while its
// EndpointSlice still says ready (the seconds before a readiness probe
// notices), then makes 200 new connections to the ClusterIP, counting the
// failed ones. HAProxy retries a refused connect on another endpoint of
// the Service (goal: 0 failed); the kernel data plane keeps sending every
// fourth connection to the dead pod.
func deadEndpointStillReady(t *testing.T, e *env) string {
	var pods []*localcluster.Pod
	for i := range 4 {
		p, err := e.c.AddPod(e.ctx, e.c.Nodes[i%2], fmt.Sprintf("dead-%d", i), map[string]string{"app": "dead"})
		require.NoError(t, err)
		pods = append(pods, p)
	}
	svc := e.service(t, "dead", "dead", nil)
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, names(pods...)...)
	pods[0].NS.Proc.Stop()
	failed := 0
	for range 200 {
		if _, err := get(e.client.NS.Namespace, netip.Addr{}, url, 5*time.Second); err != nil {
			failed++
		}
	}
	if e.mode != localcluster.ModeNFTables {
		assert.Zero(t, failed, "connections failed with one dead endpoint of four")
	}
	return fmt.Sprintf("%d of 200 new connections failed with 1 of 4 endpoints dead", failed)
}

// silentEndpointChecked: one of four endpoints of a Service annotated for
// active checks stops answering (its packets dropped, as on a hung node)
// while its EndpointSlice still says ready. With checks it leaves the
// rotation within 3 s and rejoins within 3 s after it answers again, with
// no API write; nftables mode, which has no checks, keeps sending it a
// quarter of the new connections.
func silentEndpointChecked(t *testing.T, e *env) string {
	var pods []*localcluster.Pod
	for i := range 4 {
		p, err := e.c.AddPod(e.ctx, e.c.Nodes[i%2], fmt.Sprintf("silent-%d", i), map[string]string{"app": "silent"})
		require.NoError(t, err)
		pods = append(pods, p)
	}
	svc := e.service(t, "silent", "silent", func(s *v1.Service) {
		s.Annotations = map[string]string{proxier.AnnotationHealthCheck: "tcp"}
	})
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, names(pods...)...)
	silent := pods[0].NS
	silent.MustExec("nft", "add table inet silent")
	t.Cleanup(func() { _, _ = silent.Exec("nft", "delete table inet silent") })
	silent.MustExec("nft", "add chain inet silent input { type filter hook input priority 0 ; }")
	silent.MustExec("nft", "add rule inet silent input tcp dport 8080 drop")
	start := time.Now()
	request := func() (netns.Reply, error) { return get(e.client.NS.Namespace, netip.Addr{}, url, time.Second) }

	if e.mode == localcluster.ModeNFTables {
		failed, n := 0, 0
		for time.Since(start) < 6*time.Second {
			n++
			if _, err := request(); err != nil {
				failed++
			}
		}
		silent.MustExec("nft", "delete table inet silent")
		return fmt.Sprintf("no checks: %d of %d requests failed in the 6 s the endpoint was silent", failed, n)
	}

	// Out: the first moment after which 20 requests in a row are served
	// within a second, none by the silent pod.
	streak, streakStart := 0, time.Now()
	for streak < 20 {
		require.Less(t, time.Since(start), 30*time.Second, "%s never left the rotation", pods[0].Name)
		begin := time.Now()
		if r, err := request(); err != nil || r.Name == pods[0].Name {
			streak = 0
			continue
		}
		if streak == 0 {
			streakStart = begin
		}
		streak++
	}
	out := streakStart.Sub(start)
	assert.LessOrEqual(t, out, 3*time.Second, "out of rotation within 3 s")
	silent.MustExec("nft", "delete table inet silent")
	start = time.Now()
	for {
		require.Less(t, time.Since(start), 30*time.Second, "%s never came back", pods[0].Name)
		if r, err := request(); err == nil && r.Name == pods[0].Name {
			break
		}
	}
	back := time.Since(start)
	assert.LessOrEqual(t, back, 3*time.Second, "back within 3 s")
	return fmt.Sprintf("out of rotation after %s, back %s after answering again", ms(out), ms(back))
}

// proxyProtocolToEndpoints: a Service annotated for the PROXY protocol
// (v2) towards pods that require it, reached from outside through a
// NodePort with externalTrafficPolicy Cluster: in haproxy mode the pod
// reads the outside client's address from the header, on every node and
// on the central load balancer. nftables mode has no PROXY protocol, so
// the pods refuse its connections.
func proxyProtocolToEndpoints(t *testing.T, e *env) string {
	svc := e.service(t, "ppv2", "web", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports[0].TargetPort = intstr.FromString("proxy")
		s.Annotations = map[string]string{proxier.AnnotationProxyProtocol: "v2"}
	})
	np := svc.Spec.Ports[0].NodePort
	if e.mode == localcluster.ModeNFTables {
		url := "http://" + hostPort(e.nodePortHosts()[0], np) + "/"
		require.NoError(t, e.c.Outside.WaitTCP(hostPort(e.nodePortHosts()[0], np), 30*time.Second))
		failed := 0
		for range 10 {
			if _, err := get(e.c.Outside, localcluster.OutsideIP, url, 2*time.Second); err != nil {
				failed++
			}
		}
		return fmt.Sprintf("no PROXY protocol: %d of 10 requests refused by pods that require the header", failed)
	}
	for _, h := range e.nodePortHosts() {
		url := "http://" + hostPort(h, np) + "/"
		servedBy(t, e.c.Outside, localcluster.OutsideIP, url, names(e.web...)...)
		for range 10 {
			r, err := get(e.c.Outside, localcluster.OutsideIP, url, 3*time.Second)
			require.NoError(t, err)
			assert.Equal(t, "v2", r.Proxy, "via %s", h)
			assert.Equal(t, localcluster.OutsideIP.String(), r.Client[:strings.LastIndex(r.Client, ":")], "via %s: the header names the outside client", h)
		}
	}
	return "the pods read the outside client from a v2 header"
}

func terminatingFallback(t *testing.T, e *env) string {
	p, err := e.c.AddPod(e.ctx, e.c.Nodes[1], "term-1", map[string]string{"app": "term"})
	require.NoError(t, err)
	svc := e.service(t, "term", "term", nil)
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, p.Name)
	// Terminating but still serving, and no ready endpoint left: traffic
	// falls back to it rather than fail.
	require.NoError(t, e.c.SetTerminating(e.ctx, p))
	time.Sleep(time.Second)
	for range 10 {
		r, err := get(e.client.NS.Namespace, netip.Addr{}, url, 3*time.Second)
		require.NoError(t, err, "a serving terminating endpoint still serves when no ready one is left")
		require.Equal(t, p.Name, r.Name)
	}
	return ""
}

func headlessIgnored(t *testing.T, e *env) string {
	e.service(t, "headless", "web", func(s *v1.Service) { s.Spec.ClusterIP = v1.ClusterIPNone })
	// A normal Service created after it is served: the sync that followed
	// the headless one has happened.
	svc := e.service(t, "after-headless", "web", nil)
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, "http://"+hostPort(svc.Spec.ClusterIP, 80)+"/", names(e.web...)...)
	if e.haproxy() {
		for host, dir := range e.haproxyDirs() {
			// The Services are in the maps; haproxy.cfg has no Service. The
			// map files follow HAProxy's memory within apply.DefaultMapFilesLag.
			var state string
			require.Eventually(t, func() bool {
				state = ""
				for _, f := range []string{"haproxy.cfg", "services-ipv4.map", "endpoint-sets-ipv4.map"} {
					b, err := os.ReadFile(filepath.Join(dir, f))
					require.NoError(t, err)
					state += string(b)
				}
				return strings.Contains(state, "default.after-headless")
			}, apply.DefaultMapFilesLag+5*time.Second, 50*time.Millisecond, "the map files of %s follow HAProxy within the lag", host)
			assert.NotRegexp(t, `default[./]headless\b`, state, "%s has nothing for the headless Service", host)
		}
		return ""
	}
	for _, n := range e.c.Nodes {
		state := n.NS.MustExec("nft", "list", "table", "ip", "kube-proxy")
		require.Contains(t, state, "default/after-headless")
		assert.NotRegexp(t, `default[./]headless\b`, state, "%s has nothing for the headless Service", n.Name)
	}
	return ""
}

func serviceDeleted(t *testing.T, e *env) string {
	svc := e.service(t, "deleted", "web", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })
	addr := hostPort(svc.Spec.ClusterIP, 80)
	np := hostPort(e.nodePortHosts()[0], svc.Spec.Ports[0].NodePort)
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, "http://"+addr+"/", names(e.web...)...)
	servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+np+"/", names(e.web...)...)
	require.NoError(t, e.c.Client.CoreV1().Services(svc.Namespace).Delete(e.ctx, svc.Name, metav1.DeleteOptions{}))
	require.NoError(t, e.c.Sync(e.ctx))
	// Upstream leaves a deleted ClusterIP unhandled (the packet follows the
	// node's routes), HAProxy's node refuses it: either way it must stop
	// answering.
	byDesign["service-deleted"] = "a deleted ClusterIP is refused by HAProxy's node (the ServiceCIDR is local and guarded); " +
		"upstream leaves it to the node's routes, so it gets no answer"
	d, how := stopsAnswering(t, e.client.NS.Namespace, netip.Addr{}, "http://"+addr+"/")
	_, npHow := stopsAnswering(t, e.c.Outside, localcluster.OutsideIP, "http://"+np+"/")
	return fmt.Sprintf("ClusterIP stops in %s (%s), NodePort: %s", ms(d), how, npHow)
}

// stopsAnswering waits until url fails from ns, and says how it failed.
func stopsAnswering(t *testing.T, ns *netns.Namespace, src netip.Addr, url string) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		_, err := get(ns, src, url, 2*time.Second)
		if err != nil {
			how := "no answer"
			if errors.Is(err, syscall.ECONNREFUSED) {
				how = "refused"
			}
			return time.Since(start), how
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s from %s still answers", url, ns.Short)
	return 0, ""
}

// udpClusterIP: in haproxy mode UDP is served by upstream's nftables
// proxier, driven by the HAProxy proxier (proxier/README.md, UDP and SCTP).
func udpClusterIP(t *testing.T, e *env) string {
	svc := e.service(t, "udp", "web", func(s *v1.Service) {
		s.Spec.Ports = []v1.ServicePort{{Name: "echo", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromString("echo")}}
	})
	udpServedBy(t, e.client.NS.Namespace, hostPort(svc.Spec.ClusterIP, 53), names(e.web...)...)
	return ""
}

// dnsLike: TCP and UDP on the same port, as kube-dns has. In haproxy mode
// HAProxy serves the TCP port and the delegated nftables proxier the UDP
// one, on the ClusterIP from a pod and on the NodePorts from outside.
func dnsLike(t *testing.T, e *env) string {
	svc := e.service(t, "dns", "web", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeNodePort
		s.Spec.Ports = []v1.ServicePort{
			{Name: "dns-tcp", Protocol: v1.ProtocolTCP, Port: 53, TargetPort: intstr.FromString("http")},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromString("echo")},
		}
	})
	tcpNodePort, udpNodePort := svc.Spec.Ports[0].NodePort, svc.Spec.Ports[1].NodePort
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, "http://"+hostPort(svc.Spec.ClusterIP, 53)+"/", names(e.web...)...)
	udpServedBy(t, e.client.NS.Namespace, hostPort(svc.Spec.ClusterIP, 53), names(e.web...)...)
	for _, h := range e.nodePortHosts() {
		servedBy(t, e.c.Outside, localcluster.OutsideIP, "http://"+hostPort(h, tcpNodePort)+"/", names(e.web...)...)
		udpServedBy(t, e.c.Outside, hostPort(h, udpNodePort), names(e.web...)...)
	}
	if e.mode == setupCluster {
		return fmt.Sprintf("NodePorts %d/TCP and %d/UDP on the load balancers", tcpNodePort, udpNodePort)
	}
	return fmt.Sprintf("NodePorts %d/TCP and %d/UDP on both nodes", tcpNodePort, udpNodePort)
}

// dnsLikeFromTheNode: a process in each node's own network namespace
// (host network) reaches TCP 53 and UDP 53 of a DNS-like Service through
// its ClusterIP. In haproxy mode TCP goes to HAProxy and UDP to nftables
// on the same ClusterIP, and upstream's check of new node-local
// connections must not reject the TCP one.
func dnsLikeFromTheNode(t *testing.T, e *env) string {
	svc := e.service(t, "dns-node", "web", func(s *v1.Service) {
		s.Spec.Ports = []v1.ServicePort{
			{Name: "dns-tcp", Protocol: v1.ProtocolTCP, Port: 53, TargetPort: intstr.FromString("http")},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromString("echo")},
		}
	})
	for _, n := range e.c.Nodes {
		servedBy(t, n.NS, netip.Addr{}, "http://"+hostPort(svc.Spec.ClusterIP, 53)+"/", names(e.web...)...)
		udpServedBy(t, n.NS, hostPort(svc.Spec.ClusterIP, 53), names(e.web...)...)
	}
	return "TCP and UDP 53 from both nodes"
}

// udpServedBy sends UDP echoes to addr from ns until every pod in want has
// answered, and fails the test if one has not within 30 seconds.
func udpServedBy(t *testing.T, ns *netns.Namespace, addr string, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < len(want) && time.Now().Before(deadline) {
		if r, err := ns.UDPEcho(addr, "hello", time.Second); err == nil {
			seen[r.Name] = true
		}
	}
	for _, name := range want {
		assert.True(t, seen[name], "%s answers UDP on %s, saw %v", name, addr, seen)
	}
}

// scaleUnderLoad scales a Service from 1 to 10 pods and back to 1 while a
// client sends requests without pause, and reports the failed ones.
// Pods leave as in a rolling scale-down: terminating for a second (still
// serving), then gone.
func scaleUnderLoad(t *testing.T, e *env) string {
	first, err := e.c.AddPod(e.ctx, e.c.Nodes[0], "scale-0", map[string]string{"app": "scale"})
	require.NoError(t, err)
	svc := e.service(t, "scale", "scale", nil)
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	servedBy(t, e.client.NS.Namespace, netip.Addr{}, url, first.Name)

	var total, failed atomic.Int64
	var lastErr atomic.Value
	seen := sync.Map{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			r, err := get(e.client.NS.Namespace, netip.Addr{}, url, 3*time.Second)
			total.Add(1)
			if err != nil {
				failed.Add(1)
				lastErr.Store(err.Error())
				continue
			}
			seen.Store(r.Name, true)
		}
	}()
	var pods []*localcluster.Pod
	for i := 1; i < 10; i++ {
		p, err := e.c.AddPod(e.ctx, e.c.Nodes[i%2], fmt.Sprintf("scale-%d", i), map[string]string{"app": "scale"})
		if !assert.NoError(t, err) {
			break
		}
		pods = append(pods, p)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		n := 0
		seen.Range(func(any, any) bool { n++; return true })
		if n == 10 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	n := 0
	seen.Range(func(any, any) bool { n++; return true })
	assert.Equal(t, 10, n, "every scaled-up pod served")
	for _, p := range pods {
		assert.NoError(t, e.c.DeletePod(e.ctx, p, time.Second))
	}
	time.Sleep(2 * time.Second)
	cancel()
	wg.Wait()
	f, tot := failed.Load(), total.Load()
	note := fmt.Sprintf("%d/%d requests failed", f, tot)
	if f > 0 {
		note += fmt.Sprintf(" (last: %v)", lastErr.Load())
	}
	t.Log(note)
	require.NotZero(t, tot, "the client sent no request")
	// HAProxy adds and removes endpoints through its runtime API and
	// drains a removed one (terminating first, then gone): no request may
	// fail. Upstream's nftables mode is measured, not judged: its count is
	// the column beside ours.
	if e.haproxy() {
		assert.Zero(t, f, "requests failed while scaling 1->10->1 through HAProxy: %s", note)
	}
	return note
}
