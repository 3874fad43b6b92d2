package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
)

const (
	nodeName  = "node1"
	clusterIP = "10.96.0.10"
	nodePort  = 30080
)

func webService() *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", ResourceVersion: "1"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeNodePort,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
			Ports: []v1.ServicePort{{
				Name: "http", Protocol: v1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromInt32(8080), NodePort: nodePort,
			}},
		},
	}
}

func webSlice(version string, pods ...*netns.Pod) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: "web-abcde", ResourceVersion: version,
			Labels: map[string]string{discovery.LabelServiceName: "web"},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{p.IP.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(nodeName),
		})
	}
	return s
}

// servedBy asks url from ns until the set of pods that answered is want
// (each connection is new, so HAProxy balances them), or fails after a
// while: a sync and a reload or runtime update take a moment.
func servedBy(t *testing.T, ns *netns.Namespace, url string, want ...string) {
	t.Helper()
	wantSet := map[string]bool{}
	for _, w := range want {
		wantSet[w] = true
	}
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		seen := map[string]bool{}
		ok := true
		for range 4 * len(want) {
			r, err := ns.HTTPGet(url)
			if err != nil {
				last, ok = err.Error(), false
				break
			}
			if !wantSet[r.Name] {
				last, ok = "answered by "+r.Name, false
				break
			}
			seen[r.Name] = true
		}
		if ok && len(seen) == len(wantSet) {
			return
		}
		if ok {
			last = fmt.Sprintf("only %v answered", seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s from %s: want answers from exactly %v; last: %s", url, ns.Short, want, last)
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
	tp := newTopology(t)
	haproxy := netns.RequireBinary(t, "haproxy")
	pod1, pod2 := tp.pod("pod1", 10), tp.pod("pod2", 11)
	// A pod of the node as a client, on the same bridge.
	cpod := tp.pod("cpod", 20).Namespace
	sshd, err := tp.node.Listen("tcp", "0.0.0.0:2222")
	require.NoError(t, err)
	go func() {
		for {
			c, err := sshd.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	cfg := proxier.Config{
		Scope:         proxier.ScopeNode,
		HAProxyPath:   haproxy,
		StateDir:      filepath.Join(tp.kit.Dir(), "state"),
		ManageProcess: true,
		NodeName:      nodeName,
		NodeIPs:       map[v1.IPFamily]net.IP{v1.IPv4Protocol: net.ParseIP(nodeIP)},
		SyncPeriod:    30 * time.Second,
		MinSyncPeriod: 100 * time.Millisecond,
		NBThread:      1,
		// No NodePortAddresses: NodePorts listen on every address, so
		// HAProxy's own wildcard bind would answer on every ClusterIP too
		// if the guard let it.
	}
	p, err := proxier.NewProxier(ctx, v1.IPv4Protocol, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		cancel()
		assert.False(t, proxier.CleanupLeftovers(context.Background(), cfg), "CleanupLeftovers reports an error")
	})
	go p.SyncLoop()

	p.OnServiceCIDRsChanged([]string{serviceCIDR.String()})
	p.OnServiceAdd(webService())
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(webSlice("1", pod1))
	p.OnEndpointSlicesSynced()

	clusterURL := fmt.Sprintf("http://%s:80/", clusterIP)
	nodePortURL := fmt.Sprintf("http://%s:%d/", nodeIP, nodePort)
	servedBy(t, tp.client, clusterURL, "pod1")
	servedBy(t, tp.client, nodePortURL, "pod1")
	servedBy(t, tp.node, clusterURL, "pod1")
	servedBy(t, tp.node, nodePortURL, "pod1")
	servedBy(t, cpod, clusterURL, "pod1")
	servedBy(t, cpod, nodePortURL, "pod1")
	servedBy(t, cpod, fmt.Sprintf("http://%s:%d/", podGW, nodePort), "pod1")

	// The ClusterIP is on no interface: the ServiceCIDR's AnyIP route
	// makes it local, and the guard keeps the host daemon off it.
	assert.Empty(t, tp.node.IP("addr", "show", "to", clusterIP))
	assert.Contains(t, tp.node.IP("route", "show", "table", "local", "proto", "66"), serviceCIDR.String())
	refusedEventually(t, tp.client, clusterIP+":2222")
	refusedEventually(t, tp.client, "10.96.0.99:80")
	refusedEventually(t, tp.client, fmt.Sprintf("%s:%d", clusterIP, nodePort))
	refusedEventually(t, cpod, clusterIP+":2222")
	refusedEventually(t, cpod, "10.96.0.99:80")
	assert.NoError(t, tp.client.TCPAccepts(nodeIP+":2222", 2*time.Second), "node addresses stay open")

	// An endpoint is added, then the first one removed.
	p.OnEndpointSliceUpdate(webSlice("1", pod1), webSlice("2", pod1, pod2))
	servedBy(t, tp.client, clusterURL, "pod1", "pod2")
	servedBy(t, tp.client, nodePortURL, "pod1", "pod2")
	servedBy(t, cpod, clusterURL, "pod1", "pod2")
	p.OnEndpointSliceUpdate(webSlice("2", pod1, pod2), webSlice("3", pod2))
	servedBy(t, tp.client, clusterURL, "pod2")
	servedBy(t, cpod, nodePortURL, "pod2")

	// The Service goes away: its ClusterIP refuses (the range stays local
	// and guarded), and so does its NodePort.
	p.OnServiceDelete(webService())
	p.OnEndpointSliceDelete(webSlice("3", pod2))
	refusedEventually(t, tp.client, clusterIP+":80")
	refusedEventually(t, tp.client, fmt.Sprintf("%s:%d", nodeIP, nodePort))
	refusedEventually(t, cpod, clusterIP+":80")
	refusedEventually(t, cpod, fmt.Sprintf("%s:%d", nodeIP, nodePort))

	// After cancel no sync touches the host; let one that started before
	// finish (syncs are 100ms apart at most and take a few ms here).
	cancel()
	time.Sleep(time.Second)
	require.False(t, proxier.CleanupLeftovers(context.Background(), cfg))
	assert.Empty(t, strings.TrimSpace(tp.node.IP("route", "show", "table", "all", "proto", "66")), "no route of ours is left")
	assert.NotContains(t, tp.node.MustExec("nft", "list", "tables"), "kube-haproxy")
}

// TestDualStackProxierServesBothFamilies runs the dual-stack proxier (one
// HAProxy for both families) on the node: a RequireDualStack Service is
// reached on its IPv4 and IPv6 ClusterIPs and NodePorts (and on IPv4 from
// a pod on the node's bridge), and the IPv4 and IPv6 guards keep a
// dual-stack host daemon off both ranges.
func TestDualStackProxierServesBothFamilies(t *testing.T) {
	tp := newTopology(t)
	haproxy := netns.RequireBinary(t, "haproxy")
	const (
		nodeIP6      = "fd00:96::1"
		clusterIP6   = "fd00:10:96::a"
		serviceCIDR6 = "fd00:10:96::/112"
	)
	tp.node.AddAddr("eth0", netip.MustParsePrefix(nodeIP6+"/64"))
	tp.client.AddAddr("eth0", netip.MustParsePrefix("fd00:96::100/64"))
	tp.client.DefaultRoute(netip.MustParseAddr(nodeIP6))
	tp.node.AddAddr("cbr0", netip.MustParsePrefix("fd00:244:1::1/64"))
	var pods []*netns.Pod
	for i, name := range []string{"pod1", "pod2"} {
		p := tp.pod(name, 10+i)
		p.AddAddr("eth0", netip.MustParsePrefix(fmt.Sprintf("fd00:244:1::%d/64", 10+i)))
		p.DefaultRoute(netip.MustParseAddr("fd00:244:1::1"))
		pods = append(pods, p)
	}
	sshd, err := tp.node.Listen("tcp", ":2222") // both families
	require.NoError(t, err)
	go func() {
		for {
			c, err := sshd.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	cfg := proxier.Config{
		Scope:         proxier.ScopeNode,
		HAProxyPath:   haproxy,
		StateDir:      filepath.Join(tp.kit.Dir(), "state"),
		ManageProcess: true,
		NodeName:      nodeName,
		NodeIPs: map[v1.IPFamily]net.IP{
			v1.IPv4Protocol: net.ParseIP(nodeIP),
			v1.IPv6Protocol: net.ParseIP(nodeIP6),
		},
		NodePortAddresses: []string{nodeIP + "/32", nodeIP6 + "/128"},
		SyncPeriod:        30 * time.Second,
		MinSyncPeriod:     100 * time.Millisecond,
		NBThread:          1,
	}
	p, err := proxier.NewDualStackProxier(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		cancel()
		time.Sleep(time.Second)
		assert.False(t, proxier.CleanupLeftovers(context.Background(), cfg), "CleanupLeftovers reports an error")
	})
	go p.SyncLoop()

	svc := webService()
	svc.Spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicyRequireDualStack)
	svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	svc.Spec.ClusterIPs = []string{clusterIP, clusterIP6}
	slice6 := webSlice("1")
	slice6.Name, slice6.AddressType = "web-v6", discovery.AddressTypeIPv6
	for _, pod := range pods {
		slice6.Endpoints = append(slice6.Endpoints, discovery.Endpoint{
			Addresses:  []string{strings.Replace(pod.IP.String(), "10.244.1.", "fd00:244:1::", 1)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(nodeName),
		})
	}
	p.OnServiceCIDRsChanged([]string{serviceCIDR.String(), serviceCIDR6})
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
		servedBy(t, tp.client, url, "pod1", "pod2")
	}
	// A pod client on the bridge, IPv4 (bridged IPv6 has no NAT path).
	cpod := tp.pod("cpod", 20).Namespace
	servedBy(t, cpod, fmt.Sprintf("http://%s:80/", clusterIP), "pod1", "pod2")
	servedBy(t, cpod, fmt.Sprintf("http://%s:%d/", nodeIP, nodePort), "pod1", "pod2")
	// The IPv6 answer came over IPv6 to the pod.
	r, err := tp.client.HTTPGet(fmt.Sprintf("http://[%s]:80/", clusterIP6))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(r.Local, "[fd00:244:1::"), "pod saw %s", r.Local)

	assert.Contains(t, tp.node.IP("-6", "route", "show", "table", "local", "proto", "66"), serviceCIDR6)
	for _, addr := range []string{clusterIP + ":2222", "[" + clusterIP6 + "]:2222", "[fd00:10:96::99]:80"} {
		refusedEventually(t, tp.client, addr)
	}
	assert.NoError(t, tp.client.TCPAccepts("["+nodeIP6+"]:2222", 2*time.Second), "node addresses stay open")

	cancel()
	time.Sleep(time.Second)
	require.False(t, proxier.CleanupLeftovers(context.Background(), cfg))
	assert.Empty(t, strings.TrimSpace(tp.node.IP("route", "show", "table", "all", "proto", "66")))
	assert.Empty(t, strings.TrimSpace(tp.node.IP("-6", "route", "show", "table", "all", "proto", "66")))
	assert.NotContains(t, tp.node.MustExec("nft", "list", "tables"), "kube-haproxy")
}
