package proxier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
)

const (
	clusterIP = "10.96.0.10"
	nodePort  = 30080
)

// webService is Service default/web: ClusterIP 10.96.0.10, port 80 and
// NodePort 30080 to the pods' 8080.
func webService() *v1.Service {
	return service("web", clusterIP, "1", servicePort("http", v1.ProtocolTCP, 80, 8080, nodePort))
}

func webSlice(version string, pods ...*netns.Pod) *discovery.EndpointSlice {
	return slice(webService(), version, pods...)
}

// servedBy asks url from ns until the set of pods that answered is want
// (each connection is new, so HAProxy balances them), or fails after a
// while: a sync and a reload or runtime update take a moment.
func servedBy(t *testing.T, ns *netns.Namespace, url string, want ...string) {
	t.Helper()
	if _, err := ns.ServedBy(url, netns.HTTPOptions{Timeout: 5 * time.Second}, 20*time.Second, want...); err != nil {
		t.Fatalf("%v", err)
	}
}

// refusedEventually waits until a connection to addr from ns is refused.
func refusedEventually(t *testing.T, ns *netns.Namespace, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		err = ns.TCPAccepts(addr, 2*time.Second)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s from %s: want refused, last: %v", addr, ns.Short, err)
}

// TestProxierServesServicesFromTheNode drives the real proxier through
// its handlers, as kube-proxy's informers would, on a node namespace:
// HAProxy is started by the proxier, ClusterIP and NodePort reach the pods
// from a client on a veth link, from the node and from a pod on the node's
// bridge (br_netfilter on: NAT, not TPROXY), endpoints come and go, host
// daemons stay off Service IPs, and CleanupLeftovers removes routes and
// guard.
//
// A proxy.Provider has no Stop: its sync loop outlives the test (in
// kube-proxy, --cleanup runs in a process of its own). The Service is
// deleted before the end, so a later periodic sync has nothing to serve;
// keep tests that need a pristine node before this one in the file.
func TestProxierServesServicesFromTheNode(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pod1, pod2 := tp.Pod("pod1", 10), tp.Pod("pod2", 11)
	// A pod of the node as a client, on the same bridge.
	cpod := tp.Pod("cpod", 20).Namespace
	tp.Daemon("0.0.0.0:2222", "")

	cfg := tp.nodeConfig(t)
	p, cancel := startProxier(t, cfg, false, serviceCIDR)
	p.OnServiceAdd(webService())
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(webSlice("1", pod1))
	p.OnEndpointSlicesSynced()

	clusterURL := fmt.Sprintf("http://%s:80/", clusterIP)
	nodePortURL := fmt.Sprintf("http://%s:%d/", nodeIP, nodePort)
	servedBy(t, tp.Client, clusterURL, "pod1")
	servedBy(t, tp.Client, nodePortURL, "pod1")
	servedBy(t, tp.Namespace, clusterURL, "pod1")
	servedBy(t, tp.Namespace, nodePortURL, "pod1")
	servedBy(t, cpod, clusterURL, "pod1")
	servedBy(t, cpod, nodePortURL, "pod1")
	servedBy(t, cpod, fmt.Sprintf("http://%s:%d/", podGW, nodePort), "pod1")

	// The ClusterIP is on no interface: the ServiceCIDR's AnyIP route
	// makes it local, and the guard keeps the host daemon off it.
	assert.Empty(t, tp.IP("addr", "show", "to", clusterIP))
	assert.Contains(t, tp.IP("route", "show", "table", "local", "proto", "66"), serviceCIDR)
	refusedEventually(t, tp.Client, clusterIP+":2222")
	refusedEventually(t, tp.Client, "10.96.0.99:80")
	refusedEventually(t, tp.Client, fmt.Sprintf("%s:%d", clusterIP, nodePort))
	refusedEventually(t, cpod, clusterIP+":2222")
	refusedEventually(t, cpod, "10.96.0.99:80")
	assert.NoError(t, tp.Client.TCPAccepts(nodeIP+":2222", 2*time.Second), "node addresses stay open")

	// An endpoint is added, then the first one removed.
	p.OnEndpointSliceUpdate(webSlice("1", pod1), webSlice("2", pod1, pod2))
	servedBy(t, tp.Client, clusterURL, "pod1", "pod2")
	servedBy(t, tp.Client, nodePortURL, "pod1", "pod2")
	servedBy(t, cpod, clusterURL, "pod1", "pod2")
	p.OnEndpointSliceUpdate(webSlice("2", pod1, pod2), webSlice("3", pod2))
	servedBy(t, tp.Client, clusterURL, "pod2")
	servedBy(t, cpod, nodePortURL, "pod2")

	// The Service goes away: its ClusterIP refuses (the range stays local
	// and guarded), and so does its NodePort.
	p.OnServiceDelete(webService())
	p.OnEndpointSliceDelete(webSlice("3", pod2))
	refusedEventually(t, tp.Client, clusterIP+":80")
	refusedEventually(t, tp.Client, fmt.Sprintf("%s:%d", nodeIP, nodePort))
	refusedEventually(t, cpod, clusterIP+":80")
	refusedEventually(t, cpod, fmt.Sprintf("%s:%d", nodeIP, nodePort))

	// After cancel no sync touches the host; let one that started before
	// finish (syncs are 100ms apart at most and take a few ms here).
	cancel()
	time.Sleep(time.Second)
	require.False(t, proxier.CleanupLeftovers(context.Background(), cfg))
	assert.Empty(t, strings.TrimSpace(tp.IP("route", "show", "table", "all", "proto", "66")), "no route of ours is left")
	assert.NotContains(t, tp.MustExec("nft", "list", "tables"), "kube-haproxy")
}

// TestDualStackProxierServesBothFamilies runs the dual-stack proxier (one
// HAProxy for both families) on the node: a RequireDualStack Service is
// reached on its IPv4 and IPv6 ClusterIPs and NodePorts (and on IPv4 from
// a pod on the node's bridge), and the IPv4 and IPv6 guards keep a
// dual-stack host daemon off both ranges.
func TestDualStackProxierServesBothFamilies(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{IPv6: true})
	const (
		clusterIP6   = "fd00:10:96::a"
		serviceCIDR6 = "fd00:10:96::/112"
	)
	nodeIP6 := netns.NodeIP6.String()
	pods := []*netns.Pod{tp.Pod("pod1", 10), tp.Pod("pod2", 11)}
	tp.Daemon(":2222", "") // both families

	cfg := tp.nodeConfig(t)
	cfg.NodeIPs[v1.IPv6Protocol] = netns.NodeIP6.AsSlice()
	cfg.NodePortAddresses = []string{nodeIP + "/32", nodeIP6 + "/128"}
	p, cancel := startProxier(t, cfg, true, serviceCIDR, serviceCIDR6)

	svc := webService()
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	svc.Spec.ClusterIPs = []string{clusterIP, clusterIP6}
	slice6 := webSlice("1")
	slice6.Name, slice6.AddressType = "web-v6", discovery.AddressTypeIPv6
	for i := range pods {
		slice6.Endpoints = append(slice6.Endpoints, discovery.Endpoint{
			Addresses:  []string{netns.PodIP6(10 + i).String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(nodeName),
		})
	}
	p.OnServiceAdd(svc)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(webSlice("1", pods...))
	p.OnEndpointSliceAdd(slice6)
	p.OnEndpointSlicesSynced()

	for _, url := range []string{
		fmt.Sprintf("http://%s:80/", clusterIP),
		fmt.Sprintf("http://[%s]:80/", clusterIP6),
		fmt.Sprintf("http://%s:%d/", nodeIP, nodePort),
		fmt.Sprintf("http://[%s]:%d/", nodeIP6, nodePort),
	} {
		servedBy(t, tp.Client, url, "pod1", "pod2")
	}
	// A pod client on the bridge, IPv4 (bridged IPv6 has no NAT path).
	cpod := tp.Pod("cpod", 20).Namespace
	servedBy(t, cpod, fmt.Sprintf("http://%s:80/", clusterIP), "pod1", "pod2")
	servedBy(t, cpod, fmt.Sprintf("http://%s:%d/", nodeIP, nodePort), "pod1", "pod2")
	// The IPv6 answer came over IPv6 to the pod.
	r, err := tp.Client.HTTPGet(fmt.Sprintf("http://[%s]:80/", clusterIP6))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(r.Local, "[fd00:244:1::"), "pod saw %s", r.Local)

	assert.Contains(t, tp.IP("-6", "route", "show", "table", "local", "proto", "66"), serviceCIDR6)
	for _, addr := range []string{clusterIP + ":2222", "[" + clusterIP6 + "]:2222", "[fd00:10:96::99]:80"} {
		refusedEventually(t, tp.Client, addr)
	}
	assert.NoError(t, tp.Client.TCPAccepts("["+nodeIP6+"]:2222", 2*time.Second), "node addresses stay open")

	cancel()
	time.Sleep(time.Second)
	require.False(t, proxier.CleanupLeftovers(context.Background(), cfg))
	assert.Empty(t, strings.TrimSpace(tp.IP("route", "show", "table", "all", "proto", "66")))
	assert.Empty(t, strings.TrimSpace(tp.IP("-6", "route", "show", "table", "all", "proto", "66")))
	assert.NotContains(t, tp.MustExec("nft", "list", "tables"), "kube-haproxy")
}
