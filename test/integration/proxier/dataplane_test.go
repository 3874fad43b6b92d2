package proxier

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
)

// TestDeadEndpointIsRedispatched stops the server of one of four pods
// while its EndpointSlice still lists it as ready (the seconds before
// readiness notices): every new connection is still served, by the
// other three, because a refused connect is retried on another endpoint
// of the set. A Service with ClientIP affinity keeps its clients too, on
// the endpoint the retry chose.
func TestDeadEndpointIsRedispatched(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pods := []*netns.Pod{tp.Pod("pod1", 10), tp.Pod("pod2", 11), tp.Pod("pod3", 12), tp.Pod("pod4", 13)}
	cpod := tp.Pod("cpod", 20).Namespace

	sticky := service("sticky", "10.96.0.11", "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	sticky.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	sticky.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}

	p, _ := startProxier(t, tp.nodeConfig(t), false, serviceCIDR)
	p.OnServiceAdd(webService())
	p.OnServiceAdd(sticky)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(webSlice("1", pods...))
	p.OnEndpointSliceAdd(slice(sticky, "1", pods...))
	p.OnEndpointSlicesSynced()

	clusterURL := fmt.Sprintf("http://%s:80/", clusterIP)
	servedBy(t, tp.Client, clusterURL, "pod1", "pod2", "pod3", "pod4")

	// pod1's process dies; nothing tells the proxier.
	pods[0].Proc.Stop()
	require.Error(t, cpod.TCPAccepts(pods[0].IP.String()+":8080", 2*time.Second), "pod1 still accepts")

	for _, client := range []*netns.Namespace{tp.Client, cpod} {
		served := map[string]int{}
		failed := 0
		for range 200 {
			r, err := client.HTTPGetWith(clusterURL, netns.HTTPOptions{Timeout: 5 * time.Second})
			if err != nil {
				failed++
				continue
			}
			served[r.Name]++
		}
		assert.Zero(t, failed, "failed requests from %s (served: %v)", client.Short, served)
		assert.Zero(t, served["pod1"], "pod1 is dead")
		for _, name := range []string{"pod2", "pod3", "pod4"} {
			assert.Positive(t, served[name], "%s from %s: %v", name, client.Short, served)
		}
	}

	// Affinity: whichever endpoint a client was given, retried or not, it
	// keeps it.
	stickyURL := "http://10.96.0.11:80/"
	for _, client := range []*netns.Namespace{tp.Client, cpod} {
		first, err := client.HTTPGetWith(stickyURL, netns.HTTPOptions{Timeout: 5 * time.Second})
		require.NoError(t, err)
		assert.NotEqual(t, "pod1", first.Name)
		for range 30 {
			r, err := client.HTTPGetWith(stickyURL, netns.HTTPOptions{Timeout: 5 * time.Second})
			require.NoError(t, err)
			assert.Equal(t, first.Name, r.Name, "client %s moved", client.Short)
		}
	}
}

// TestExternalClientAddressKeptForLocalEndpoints: with
// externalTrafficPolicy Local, a pod sees the outside client's own
// address, as in kube-proxy's other modes (HAProxy connects from it, and
// the guard's marks and the policy rule bring the pod's replies back to
// HAProxy), also after its first endpoint refused and the connection
// was retried. A pod of the node, a cluster source, keeps reaching the
// Service through HAProxy's address: it may share the endpoint's bridge,
// where the reply would bypass the node. With traffic policy Cluster the
// outside client is seen as the node, as upstream masquerades it.
func TestExternalClientAddressKeptForLocalEndpoints(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pod1, pod2 := tp.Pod("pod1", 10), tp.Pod("pod2", 11)
	cpod := tp.Pod("cpod", 20)

	local := webService()
	local.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	local.Spec.HealthCheckNodePort = 30999
	cluster := service("plain", "10.96.0.12", "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 30081))

	cfg := tp.nodeConfig(t)
	cfg.ClusterCIDRs = []string{"10.244.0.0/16"}
	p, _ := startProxier(t, cfg, false, serviceCIDR)
	p.OnServiceAdd(local)
	p.OnServiceAdd(cluster)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(slice(local, "1", pod1, pod2))
	p.OnEndpointSliceAdd(slice(cluster, "1", pod1, pod2))
	p.OnEndpointSlicesSynced()

	localURL := fmt.Sprintf("http://%s:%d/", nodeIP, nodePort)
	servedBy(t, tp.Client, localURL, "pod1", "pod2")
	for range 10 {
		assert.Equal(t, netns.ClientIP.String(), clientAddr(t, get(t, tp.Client, localURL)), "Local: the pod sees the client")
		assert.Equal(t, podGW, clientAddr(t, get(t, cpod.Namespace, localURL)), "a pod of the node is a cluster source")
		assert.Equal(t, podGW, clientAddr(t, get(t, tp.Client, fmt.Sprintf("http://%s:30081/", nodeIP))), "Cluster: the pod sees the node")
	}

	// pod1 dies unnoticed: connections it refuses are retried on pod2,
	// still from the client's address.
	pod1.Proc.Stop()
	for range 20 {
		r := get(t, tp.Client, localURL)
		assert.Equal(t, "pod2", r.Name)
		assert.Equal(t, netns.ClientIP.String(), clientAddr(t, r))
	}
}

// TestProxyProtocolTowardsEndpoints: a Service annotated with
// haproxy.kube-haproxy.io/proxy-protocol gets a PROXY header of that
// version on every connection to its endpoints, naming the client: the
// outside client through a NodePort, the pod itself through the
// ClusterIP, also after a retry on another endpoint. Without the
// annotation the same endpoints, which require the header, refuse.
func TestProxyProtocolTowardsEndpoints(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{PodProxyTCPPorts: []int{8443}})
	pod1, pod2 := tp.Pod("pod1", 10), tp.Pod("pod2", 11)
	cpod := tp.Pod("cpod", 20)

	v1Svc := service("ppv1", "10.96.0.13", "1", servicePort("http", v1.ProtocolTCP, 80, 8443, 0))
	v1Svc.Annotations = map[string]string{proxier.AnnotationProxyProtocol: "v1"}
	v2Svc := service("ppv2", "10.96.0.14", "1", servicePort("http", v1.ProtocolTCP, 80, 8443, 30082))
	v2Svc.Annotations = map[string]string{proxier.AnnotationProxyProtocol: "v2"}
	plain := service("plain", "10.96.0.15", "1", servicePort("http", v1.ProtocolTCP, 80, 8443, 0))

	p, _ := startProxier(t, tp.nodeConfig(t), false, serviceCIDR)
	for _, svc := range []*v1.Service{v1Svc, v2Svc, plain} {
		p.OnServiceAdd(svc)
	}
	p.OnServiceSynced()
	for _, svc := range []*v1.Service{v1Svc, v2Svc, plain} {
		p.OnEndpointSliceAdd(slice(svc, "1", pod1, pod2))
	}
	p.OnEndpointSlicesSynced()

	nodePortURL := fmt.Sprintf("http://%s:30082/", nodeIP)
	servedBy(t, tp.Client, nodePortURL, "pod1", "pod2")
	for range 10 {
		r := get(t, tp.Client, nodePortURL)
		assert.Equal(t, "v2", r.Proxy)
		assert.Equal(t, netns.ClientIP.String(), clientAddr(t, r), "the header names the outside client")
		r = get(t, cpod.Namespace, "http://10.96.0.13:80/")
		assert.Equal(t, "v1", r.Proxy)
		assert.Equal(t, cpod.IP.String(), clientAddr(t, r), "the header names the pod")
	}
	_, err := cpod.HTTPGetWith("http://10.96.0.15:80/", netns.HTTPOptions{Timeout: 3 * time.Second})
	require.Error(t, err, "an endpoint that requires the header refuses a connection without it")

	// pod1 dies unnoticed: the retry on pod2 sends the header too.
	pod1.Proc.Stop()
	for range 20 {
		r := get(t, tp.Client, nodePortURL)
		assert.Equal(t, "pod2", r.Name)
		assert.Equal(t, "v2", r.Proxy)
		assert.Equal(t, netns.ClientIP.String(), clientAddr(t, r))
	}
}

// TestEndpointChecksTakeASilentEndpointOut: with the Service annotated for
// active checks, an endpoint that stops answering (its packets dropped, as
// on a hung node) leaves the rotation within 3 s and comes back within 3 s
// after it answers again, with no change to the Service or its
// EndpointSlice.
func TestEndpointChecksTakeASilentEndpointOut(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pods := []*netns.Pod{tp.Pod("pod1", 10), tp.Pod("pod2", 11), tp.Pod("pod3", 12)}
	svc := service("checked", "10.96.0.16", "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	svc.Annotations = map[string]string{proxier.AnnotationHealthCheck: "tcp"}
	p, _ := startProxier(t, tp.nodeConfig(t), false, serviceCIDR)
	p.OnServiceAdd(svc)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(slice(svc, "1", pods...))
	p.OnEndpointSlicesSynced()
	url := "http://10.96.0.16:80/"
	servedBy(t, tp.Client, url, "pod1", "pod2", "pod3")

	// Out: the first moment after which 20 requests in a row are served
	// within a second, none by pod1 (one that reached pod1 would wait out
	// timeout connect before its retry).
	pods[0].MustExec("nft", "add table inet silent")
	pods[0].MustExec("nft", "add chain inet silent input { type filter hook input priority 0 ; }")
	pods[0].MustExec("nft", "add rule inet silent input tcp dport 8080 drop")
	start := time.Now()
	streak, streakStart := 0, time.Now()
	for streak < 20 {
		require.Less(t, time.Since(start), 20*time.Second, "pod1 never left the rotation")
		begin := time.Now()
		r, err := tp.Client.HTTPGetWith(url, netns.HTTPOptions{Timeout: time.Second})
		if err != nil || r.Name == "pod1" {
			streak = 0
			continue
		}
		if streak == 0 {
			streakStart = begin
		}
		streak++
	}
	out := streakStart.Sub(start)
	t.Logf("a silent endpoint left the rotation after %v", out)
	assert.LessOrEqual(t, out, 3*time.Second, "out of rotation within 3 s")

	pods[0].MustExec("nft", "delete table inet silent")
	start = time.Now()
	for {
		require.Less(t, time.Since(start), 20*time.Second, "pod1 never came back")
		r, err := tp.Client.HTTPGetWith(url, netns.HTTPOptions{Timeout: time.Second})
		if err == nil && r.Name == "pod1" {
			break
		}
	}
	back := time.Since(start)
	t.Logf("it came back %v after answering again", back)
	assert.LessOrEqual(t, back, 3*time.Second, "back within 3 s")
}

// TestPodKeepsItsAddressTowardsARoutedEndpoint: with a routed CNI (a /32
// route over a veth, no bridge) the node routes an endpoint's every
// reply, so a pod reaching a ClusterIP keeps its own address towards an
// endpoint on the node, as in nftables mode. Towards an endpoint on the
// client's bridge, which would answer the pod directly, it keeps
// HAProxy's; so does the node itself.
func TestPodKeepsItsAddressTowardsARoutedEndpoint(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	bridged := tp.Pod("pod1", 10)
	routedAddr := netip.MustParseAddr("10.244.9.10")
	routed := tp.RoutedPod("rpod", routedAddr)
	cpod := tp.Pod("cpod", 20)
	rclient := tp.RoutedPod("rclient", netip.MustParseAddr("10.244.9.20"))

	toRouted := service("routed", "10.96.0.20", "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	toBridged := service("bridged", "10.96.0.21", "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	cfg := tp.nodeConfig(t)
	cfg.ClusterCIDRs = []string{"10.244.0.0/16"}
	p, _ := startProxier(t, cfg, false, serviceCIDR)
	p.OnServiceAdd(toRouted)
	p.OnServiceAdd(toBridged)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(slice(toRouted, "1", routed))
	p.OnEndpointSliceAdd(slice(toBridged, "1", bridged))
	p.OnEndpointSlicesSynced()
	servedBy(t, cpod.Namespace, "http://10.96.0.20/", "rpod")
	servedBy(t, cpod.Namespace, "http://10.96.0.21/", "pod1")

	client := func(ns *netns.Namespace, url string) string {
		t.Helper()
		return clientAddr(t, get(t, ns, url))
	}
	for range 5 {
		assert.Equal(t, cpod.IP.String(), client(cpod.Namespace, "http://10.96.0.20/"), "a bridged pod towards a routed endpoint keeps its address")
		assert.Equal(t, rclient.IP.String(), client(rclient.Namespace, "http://10.96.0.20/"), "a routed pod too")
		assert.Equal(t, podGW, client(cpod.Namespace, "http://10.96.0.21/"), "towards an endpoint on its bridge, HAProxy's address")
		assert.Equal(t, podGW, client(rclient.Namespace, "http://10.96.0.21/"), "a bridged endpoint answers through the bridge: HAProxy's address")
	}
}

// get asks url from ns on a new connection and returns the pod's reply.
func get(t *testing.T, ns *netns.Namespace, url string) netns.Reply {
	t.Helper()
	r, err := ns.HTTPGetWith(url, netns.HTTPOptions{Timeout: 5 * time.Second})
	require.NoError(t, err, "%s from %s", url, ns.Short)
	return r
}

// clientAddr is the client address the pod saw, without its port.
func clientAddr(t *testing.T, r netns.Reply) string {
	t.Helper()
	host, _, err := net.SplitHostPort(r.Client)
	require.NoError(t, err)
	return host
}
