// Package udp runs the scope-node proxier for real with UDP and SCTP
// service ports: TCP is served by HAProxy, UDP and SCTP by upstream's
// nftables proxier the proxier drives, in a node network namespace (the
// test binary is re-executed inside it) with pods and a client of their
// own.
package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
)

func TestMain(m *testing.M) { os.Exit(netns.RunTestsInNamespace(m, "node")) }

const (
	nodeName = "node1"
	nodeIP   = "192.168.97.1"
	clientIP = "192.168.97.100"
	podGW    = "10.244.2.1"

	dnsIP  = "10.96.0.10" // TCP 53 and UDP 53 (and SCTP 9000)
	echoIP = "10.96.0.20" // UDP 5353 only
	webIP  = "10.96.0.30" // TCP 80 only

	dnsNodePort  = 30053
	echoNodePort = 30553
)

func servicePort(name string, proto v1.Protocol, port, target, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target), NodePort: nodePort}
}

func service(name, ip, version string, ports ...v1.ServicePort) *v1.Service {
	typ := v1.ServiceTypeClusterIP
	for _, p := range ports {
		if p.NodePort != 0 {
			typ = v1.ServiceTypeNodePort
		}
	}
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, ResourceVersion: version},
		Spec: v1.ServiceSpec{
			Type: typ, ClusterIP: ip, ClusterIPs: []string{ip},
			IPFamilies: []v1.IPFamily{v1.IPv4Protocol}, Ports: ports,
		},
	}
}

// slice lists pods as ready endpoints of the service's ports (by name;
// the pods serve every port).
func slice(svc *v1.Service, pods ...*netns.Pod) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: svc.Name + "-abcde", ResourceVersion: "1",
			Labels: map[string]string{discovery.LabelServiceName: svc.Name},
		},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range svc.Spec.Ports {
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(p.Protocol), Port: ptr.To(p.TargetPort.IntVal)})
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

// eventually retries check until it returns nil, or fails the test with
// its last error: a sync takes a moment.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func udpAnswered(ns *netns.Namespace, addr string, pods ...string) func() error {
	return func() error {
		r, err := ns.UDPEcho(addr, "hello", time.Second)
		if err != nil {
			return fmt.Errorf("udp %s from %s: %w", addr, ns.Short, err)
		}
		for _, p := range pods {
			if r.Name == p {
				if r.Echo != "hello" {
					return fmt.Errorf("udp %s: echo %q", addr, r.Echo)
				}
				return nil
			}
		}
		return fmt.Errorf("udp %s from %s answered by %s, want one of %v", addr, ns.Short, r.Name, pods)
	}
}

func httpAnswered(ns *netns.Namespace, url string, pods ...string) func() error {
	return func() error {
		r, err := ns.HTTPGet(url)
		if err != nil {
			return err
		}
		for _, p := range pods {
			if r.Name == p {
				return nil
			}
		}
		return fmt.Errorf("%s from %s answered by %s, want one of %v", url, ns.Short, r.Name, pods)
	}
}

// TestUDPAndSCTPPortsAreServedByNFTables: a UDP echo Service and a
// DNS-like Service (TCP 53 and UDP 53) answer from a client namespace
// through ClusterIP and NodePort, with TCP through HAProxy and UDP through
// upstream's nftables rules, whose table holds only the UDP and SCTP
// service ports. Then a port leaves, and CleanupLeftovers removes both
// tables.
func TestUDPAndSCTPPortsAreServedByNFTables(t *testing.T) {
	haproxy := netns.RequireBinary(t, "haproxy")
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	node := k.Self()
	client := k.Namespace("client")
	k.Link(node, "eth0", netip.MustParsePrefix(nodeIP+"/24"), client, "eth0", netip.MustParsePrefix(clientIP+"/24"))
	client.DefaultRoute(netip.MustParseAddr(nodeIP))
	k.Bridge(node, "cbr0", netip.MustParsePrefix(podGW+"/24"))
	t.Cleanup(func() {
		_, _ = node.Exec("ip", "link", "del", "eth0")
		_, _ = node.Exec("ip", "link", "del", "cbr0")
	})
	// The kernel forwards the DNAT-ed UDP packets to the pods, as on any
	// node of a cluster.
	node.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1")
	var pods []*netns.Pod
	for i, name := range []string{"pod1", "pod2"} {
		pods = append(pods, k.Pod(name, netns.PodSpec{
			BridgeNS: node, Bridge: "cbr0",
			Addr:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 2, byte(10 + i)}), 24),
			Gateway:  netip.MustParseAddr(podGW),
			TCPPorts: []int{53, 8080},
			UDPPorts: []int{53, 5353},
		}))
	}

	ctx, cancel := context.WithCancel(context.Background())
	recorder := events.NewFakeRecorder(100)
	cfg := nodeConfig(k.Dir(), haproxy)
	cfg.Recorder = recorder
	p, err := proxier.NewProxier(ctx, v1.IPv4Protocol, cfg)
	require.NoError(t, err, "scope node delegates UDP and SCTP to the nftables proxier by default")
	t.Cleanup(func() {
		cancel()
		assert.False(t, proxier.CleanupLeftovers(context.Background(), cfg), "CleanupLeftovers reports an error")
	})
	go p.SyncLoop()

	dns := service("dns", dnsIP, "1",
		servicePort("dns-tcp", v1.ProtocolTCP, 53, 53, dnsNodePort),
		servicePort("dns", v1.ProtocolUDP, 53, 53, dnsNodePort),
		servicePort("sig", v1.ProtocolSCTP, 9000, 9000, 0))
	echo := service("echo", echoIP, "1", servicePort("echo", v1.ProtocolUDP, 5353, 5353, echoNodePort))
	web := service("web", webIP, "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	p.OnServiceCIDRsChanged([]string{"10.96.0.0/16"})
	for _, s := range []*v1.Service{dns, echo, web} {
		p.OnServiceAdd(s)
	}
	p.OnServiceSynced()
	for _, s := range []*v1.Service{dns, echo, web} {
		p.OnEndpointSliceAdd(slice(s, pods...))
	}
	p.OnEndpointSlicesSynced()

	// TCP through HAProxy, UDP through nftables, for the same Service too.
	eventually(t, "DNS over TCP via ClusterIP", httpAnswered(client, "http://"+dnsIP+":53/", "pod1", "pod2"))
	eventually(t, "DNS over TCP via NodePort", httpAnswered(client, fmt.Sprintf("http://%s:%d/", nodeIP, dnsNodePort), "pod1", "pod2"))
	eventually(t, "DNS over UDP via ClusterIP", udpAnswered(client, dnsIP+":53", "pod1", "pod2"))
	eventually(t, "DNS over UDP via NodePort", udpAnswered(client, fmt.Sprintf("%s:%d", nodeIP, dnsNodePort), "pod1", "pod2"))
	eventually(t, "UDP echo via ClusterIP", udpAnswered(client, echoIP+":5353", "pod1", "pod2"))
	eventually(t, "UDP echo via NodePort", udpAnswered(client, fmt.Sprintf("%s:%d", nodeIP, echoNodePort), "pod1", "pod2"))
	eventually(t, "TCP-only Service via ClusterIP", httpAnswered(client, "http://"+webIP+":80/", "pod1", "pod2"))
	// A pod (through its node) resolves too.
	eventually(t, "DNS over UDP from a pod", udpAnswered(pods[0].Namespace, dnsIP+":53", "pod1", "pod2"))
	eventually(t, "DNS over TCP from a pod", httpAnswered(pods[0].Namespace, "http://"+dnsIP+":53/", "pod1", "pod2"))
	// A process on the node itself resolves over UDP (output hook DNAT).
	eventually(t, "DNS over UDP from the node", udpAnswered(node, dnsIP+":53", "pod1", "pod2"))

	// Upstream's table holds the UDP and SCTP service ports only; HAProxy
	// binds only TCP.
	table := node.MustExec("nft", "list", "table", "ip", "kube-proxy")
	for _, want := range []string{
		dnsIP + " . udp . 53 :", echoIP + " . udp . 5353 :", dnsIP + " . sctp . 9000 :",
		fmt.Sprintf("udp . %d :", dnsNodePort), fmt.Sprintf("udp . %d :", echoNodePort),
	} {
		assert.Contains(t, table, want)
	}
	assert.NotContains(t, table, webIP, "a TCP-only Service is not in the nftables view")
	assert.NotContains(t, table, " tcp ", "no TCP port is in the nftables view")
	assert.NotContains(t, table, ". tcp .", "no TCP port is in the nftables view")
	assert.NotContains(t, table, "Drop traffic to unallocated ClusterIPs", "the ServiceCIDRs are not handed to the nftables proxier")
	// HAProxy's maps hold the TCP port of the DNS-like Service, and no
	// UDP or SCTP port.
	services, err := os.ReadFile(filepath.Join(cfg.StateDir, "services-ipv4.map"))
	require.NoError(t, err)
	assert.Contains(t, string(services), "default.dns:dns-tcp:tcp")
	assert.NotContains(t, string(services), ":udp")
	assert.NotContains(t, string(services), ":sctp")

	// SCTP: the rules are programmed whatever the kernel (above); a kernel
	// without SCTP sockets gets a Warning event on the Service, once.
	if kernelLacksSCTP() {
		var got []string
		for len(recorder.Events) > 0 {
			got = append(got, <-recorder.Events)
		}
		n := 0
		for _, e := range got {
			if strings.Contains(e, "Warning SCTPNotSupportedOnNode Port sig/SCTP") {
				n++
			}
		}
		assert.Equal(t, 1, n, "one event for the SCTP port of a node without kernel SCTP: %v", got)
	}

	// The unallocated Service IPs stay closed (the guard), over UDP too.
	eventually(t, "unallocated ClusterIP over UDP", func() error {
		_, err := client.UDPEcho("10.96.0.99:53", "hello", time.Second)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return fmt.Errorf("want refused, got %v", err)
	})

	// A process on the node itself reaches the TCP port of a ClusterIP
	// that also has UDP ports (upstream's cluster-ips check rejects new
	// node-local connections to it that it did not DNAT; the guard keeps
	// them out of conntrack), and the UDP port too.
	eventually(t, "DNS over TCP from the node", httpAnswered(node, "http://"+dnsIP+":53/", "pod1", "pod2"))
	eventually(t, "DNS over UDP from the node, again", udpAnswered(node, dnsIP+":53", "pod1", "pod2"))
	assert.Contains(t, table, "cluster-ips-check", "upstream's check of node-local connections is in place")

	// A port switches TCP -> UDP -> TCP: each time exactly one data plane
	// serves it, for a client namespace and for the node itself; the
	// other protocol is refused (the guard), not silently dropped.
	const flipIP = "10.96.0.40"
	flipTCP := service("flip", flipIP, "1", servicePort("p", v1.ProtocolTCP, 7000, 53, 0))
	flipUDP := service("flip", flipIP, "2", servicePort("p", v1.ProtocolUDP, 7000, 53, 0))
	flipTCPAgain := service("flip", flipIP, "3", servicePort("p", v1.ProtocolTCP, 7000, 53, 0))
	udpRefused := func(ns *netns.Namespace) func() error {
		return func() error {
			if _, err := ns.UDPEcho(flipIP+":7000", "hello", time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				return fmt.Errorf("udp from %s: want refused, got %v", ns.Short, err)
			}
			return nil
		}
	}
	tcpRefused := func(ns *netns.Namespace) func() error {
		return func() error {
			if err := ns.TCPAccepts(flipIP+":7000", time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				return fmt.Errorf("tcp from %s: want refused, got %v", ns.Short, err)
			}
			return nil
		}
	}
	p.OnServiceAdd(flipTCP)
	p.OnEndpointSliceAdd(slice(flipTCP, pods...))
	servedOverTCP := func(step string) {
		for _, ns := range []*netns.Namespace{client, node} {
			eventually(t, step+": TCP from "+ns.Short, httpAnswered(ns, "http://"+flipIP+":7000/", "pod1", "pod2"))
			eventually(t, step+": UDP from "+ns.Short, udpRefused(ns))
		}
	}
	servedOverTCP("TCP port")
	p.OnServiceUpdate(flipTCP, flipUDP)
	p.OnEndpointSliceUpdate(slice(flipTCP, pods...), slice(flipUDP, pods...))
	for _, ns := range []*netns.Namespace{client, node} {
		eventually(t, "switched to UDP: UDP from "+ns.Short, udpAnswered(ns, flipIP+":7000", "pod1", "pod2"))
		eventually(t, "switched to UDP: TCP from "+ns.Short, tcpRefused(ns))
	}
	p.OnServiceUpdate(flipUDP, flipTCPAgain)
	p.OnEndpointSliceUpdate(slice(flipUDP, pods...), slice(flipTCPAgain, pods...))
	servedOverTCP("switched back to TCP")
	eventually(t, "the switched port left the nftables view", func() error {
		if out := node.MustExec("nft", "list", "table", "ip", "kube-proxy"); strings.Contains(out, flipIP) {
			return fmt.Errorf("%s still in table ip kube-proxy", flipIP)
		}
		return nil
	})
	p.OnServiceDelete(flipTCPAgain)

	// The UDP port leaves the DNS Service: the nftables view loses it,
	// TCP 53 goes on through HAProxy.
	tcpOnly := service("dns", dnsIP, "2", servicePort("dns-tcp", v1.ProtocolTCP, 53, 53, dnsNodePort))
	p.OnServiceUpdate(dns, tcpOnly)
	eventually(t, "the DNS Service leaves the nftables view", func() error {
		if out := node.MustExec("nft", "list", "table", "ip", "kube-proxy"); strings.Contains(out, dnsIP) {
			return fmt.Errorf("%s still in table ip kube-proxy", dnsIP)
		}
		return nil
	})
	eventually(t, "DNS over TCP after the UDP port left", httpAnswered(client, "http://"+dnsIP+":53/", "pod1", "pod2"))
	eventually(t, "node-local TCP once no UDP port shares the ClusterIP", func() error { return node.TCPAccepts(dnsIP+":53", 2*time.Second) })
	eventually(t, "UDP echo still served", udpAnswered(client, echoIP+":5353", "pod1", "pod2"))

	// Every Service goes; the delegate's periodic sync is a minute away,
	// so cleanup is not undone behind the test's back.
	for _, s := range []*v1.Service{tcpOnly, echo, web} {
		p.OnServiceDelete(s)
	}
	time.Sleep(time.Second)
	cancel()
	require.False(t, proxier.CleanupLeftovers(context.Background(), cfg))
	tables := node.MustExec("nft", "list", "tables")
	assert.NotContains(t, tables, "kube-proxy")
	assert.NotContains(t, tables, "kube-haproxy")
}

// kernelLacksSCTP reports whether this kernel cannot open SCTP sockets.
func kernelLacksSCTP() bool {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
	if err == nil {
		syscall.Close(fd)
	}
	return err != nil
}

// TestSCTPWithoutKernelSupport: SCTP needs the kernel's SCTP module for
// sockets, not for DNAT. Where the module is missing, the pods' SCTP
// servers fail with EPROTONOSUPPORT; the test says so clearly rather than
// hiding it, and TestUDPAndSCTPPortsAreServedByNFTables shows the TCP and
// UDP ports of a Service with an SCTP port unaffected.
func TestSCTPWithoutKernelSupport(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
	if err == nil {
		syscall.Close(fd)
		t.Skip("this kernel supports SCTP sockets; the pods' server has no SCTP listener, so SCTP traffic is checked only at the nftables level")
	}
	require.ErrorIs(t, err, syscall.EPROTONOSUPPORT, "an SCTP socket without the kernel's SCTP module")
	t.Logf("kernel lacks SCTP sockets (%v): SCTP service ports are programmed in nftables but no pod here can serve them", err)
}

// TestKubeProxyCleanupRemovesBothTables: `kube-proxy --cleanup` (the
// binary `make build` produces, run in the node namespace with the
// haproxy mode's configuration) removes upstream's nftables table of the
// delegated ports and the guard's table, which a stopped proxier leaves
// in place.
func TestKubeProxyCleanupRemovesBothTables(t *testing.T) {
	haproxy := netns.RequireBinary(t, "haproxy")
	netns.RequireBinary(t, "nft")
	kubeProxy := controlplane.Binary(t, "kube-proxy")
	k := netns.New(t)
	node := k.Self()
	k.Link(node, "eth0", netip.MustParsePrefix(nodeIP+"/24"), k.Namespace("client"), "eth0", netip.MustParsePrefix(clientIP+"/24"))
	t.Cleanup(func() { _, _ = node.Exec("ip", "link", "del", "eth0") })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := nodeConfig(k.Dir(), haproxy)
	p, err := proxier.NewProxier(ctx, v1.IPv4Protocol, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxier.CleanupLeftovers(context.Background(), cfg) })
	go p.SyncLoop()
	dns := service("dns", dnsIP, "1",
		servicePort("dns-tcp", v1.ProtocolTCP, 53, 53, 0),
		servicePort("dns", v1.ProtocolUDP, 53, 53, 0))
	p.OnServiceCIDRsChanged([]string{"10.96.0.0/16"})
	p.OnServiceAdd(dns)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(slice(dns))
	p.OnEndpointSlicesSynced()
	eventually(t, "both tables programmed", func() error {
		out, err := node.Exec("nft", "list", "tables")
		if err != nil {
			return err
		}
		for _, want := range []string{"table ip kube-proxy", "table ip kube-haproxy"} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("no %s in %q", want, out)
			}
		}
		return nil
	})
	// Stop the proxier first: kube-proxy --cleanup runs while no proxier
	// does. A moment for the runners to see the cancelled context.
	cancel()
	time.Sleep(500 * time.Millisecond)
	tables := node.MustExec("nft", "list", "tables")
	require.Contains(t, tables, "table ip kube-proxy", "a stopped proxier leaves the tables to --cleanup")
	require.Contains(t, tables, "table ip kube-haproxy", "a stopped proxier leaves the tables to --cleanup")

	config := filepath.Join(k.Dir(), "kube-proxy.yaml")
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: haproxy
hostnameOverride: %s
haproxy:
  binaryPath: %s
  stateDir: %s
  scope: node
`, nodeName, haproxy, cfg.StateDir)), 0o600))
	out, err := node.Exec(kubeProxy, "--cleanup", "--config", config)
	require.NoError(t, err, "kube-proxy --cleanup: %s", out)
	tables = node.MustExec("nft", "list", "tables")
	assert.NotContains(t, tables, "kube-proxy", "upstream's table of the delegated ports is gone")
	assert.NotContains(t, tables, "kube-haproxy", "the guard's table is gone")
}

// nodeConfig is the proxier configuration of the node namespace: scope
// node, its state under dir, NodePorts on the node's address.
func nodeConfig(dir, haproxy string) proxier.Config {
	return proxier.Config{
		Scope:             proxier.ScopeNode,
		HAProxyPath:       haproxy,
		StateDir:          filepath.Join(dir, "state"),
		ManageProcess:     true,
		NodeName:          nodeName,
		NodeIPs:           map[v1.IPFamily]net.IP{v1.IPv4Protocol: net.ParseIP(nodeIP)},
		NodePortAddresses: []string{nodeIP + "/32"},
		ClusterCIDRs:      []string{"10.244.0.0/16"},
		SyncPeriod:        time.Minute,
		MinSyncPeriod:     100 * time.Millisecond,
		NBThread:          1,
	}
}
