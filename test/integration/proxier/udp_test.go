package proxier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
)

// The Services of the UDP and SCTP tests.
const (
	dnsIP  = "10.96.0.10" // TCP 53 and UDP 53 (and SCTP 9000)
	echoIP = "10.96.0.20" // UDP 5353 only
	webIP  = "10.96.0.30" // TCP 80 only

	dnsNodePort  = 30053
	echoNodePort = 30553
)

// udpConfig is nodeConfig with NodePorts on the node's address and the
// pods' range; its periodic sync is a minute away, so a test's cleanup is
// not undone behind its back.
func (tp *topology) udpConfig(t *testing.T) proxier.Config {
	cfg := tp.nodeConfig(t)
	cfg.NodePortAddresses = []string{nodeIP + "/32"}
	cfg.ClusterCIDRs = []string{"10.244.0.0/16"}
	cfg.SyncPeriod = time.Minute
	return cfg
}

// TestUDPAndSCTPPortsAreServedByNFTables: a UDP echo Service and a
// DNS-like Service (TCP 53 and UDP 53) answer from a client namespace
// through ClusterIP and NodePort, with TCP through HAProxy and UDP through
// upstream's nftables rules, whose table holds only the UDP and SCTP
// service ports. Then a port leaves, and CleanupLeftovers removes both
// tables.
func TestUDPAndSCTPPortsAreServedByNFTables(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	node, client := tp.Namespace, tp.Client
	pods := []*netns.Pod{tp.Pod("pod1", 10), tp.Pod("pod2", 11)}

	recorder := events.NewFakeRecorder(100)
	cfg := tp.udpConfig(t)
	cfg.Recorder = recorder
	// Scope node delegates UDP and SCTP to the nftables proxier by default.
	p, cancel := startProxier(t, cfg, false, serviceCIDR)

	dns := service("dns", dnsIP, "1",
		servicePort("dns-tcp", v1.ProtocolTCP, 53, 53, dnsNodePort),
		servicePort("dns", v1.ProtocolUDP, 53, 53, dnsNodePort),
		servicePort("sig", v1.ProtocolSCTP, 9000, 9000, 0))
	echo := service("echo", echoIP, "1", servicePort("echo", v1.ProtocolUDP, 5353, 5353, echoNodePort))
	web := service("web", webIP, "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	for _, s := range []*v1.Service{dns, echo, web} {
		p.OnServiceAdd(s)
	}
	p.OnServiceSynced()
	for _, s := range []*v1.Service{dns, echo, web} {
		p.OnEndpointSliceAdd(slice(s, "1", pods...))
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
	// The map files follow HAProxy's memory within a lag (apply.DefaultMapFilesLag).
	var services []byte
	eventually(t, "the DNS-like Service's TCP port in the map file", func() error {
		var err error
		if services, err = os.ReadFile(filepath.Join(cfg.StateDir, "services-ipv4.map")); err != nil {
			return err
		}
		if !strings.Contains(string(services), "default.dns:dns-tcp:tcp") {
			return fmt.Errorf("not in services-ipv4.map yet")
		}
		return nil
	})
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
	p.OnEndpointSliceAdd(slice(flipTCP, "1", pods...))
	servedOverTCP := func(step string) {
		for _, ns := range []*netns.Namespace{client, node} {
			eventually(t, step+": TCP from "+ns.Short, httpAnswered(ns, "http://"+flipIP+":7000/", "pod1", "pod2"))
			eventually(t, step+": UDP from "+ns.Short, udpRefused(ns))
		}
	}
	servedOverTCP("TCP port")
	p.OnServiceUpdate(flipTCP, flipUDP)
	p.OnEndpointSliceUpdate(slice(flipTCP, "1", pods...), slice(flipUDP, "1", pods...))
	for _, ns := range []*netns.Namespace{client, node} {
		eventually(t, "switched to UDP: UDP from "+ns.Short, udpAnswered(ns, flipIP+":7000", "pod1", "pod2"))
		eventually(t, "switched to UDP: TCP from "+ns.Short, tcpRefused(ns))
	}
	p.OnServiceUpdate(flipUDP, flipTCPAgain)
	p.OnEndpointSliceUpdate(slice(flipUDP, "1", pods...), slice(flipTCPAgain, "1", pods...))
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

// TestKernelSCTPSockets: SCTP needs the kernel's SCTP module for sockets,
// not for DNAT, so what TestUDPAndSCTPPortsAreServedByNFTables checks of
// SCTP depends on the kernel: this test says which kernel ran it, and that
// one without the module refuses SCTP sockets with EPROTONOSUPPORT (the
// pods' SCTP servers then fail so; the TCP and UDP ports of a Service with
// an SCTP port are unaffected).
func TestKernelSCTPSockets(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
	if err == nil {
		syscall.Close(fd)
		t.Log("kernel has SCTP sockets; the pods' server has no SCTP listener, so SCTP service ports are checked at the nftables level")
		return
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
	kubeProxy := controlplane.Binary(t, "kube-proxy")
	tp := newTopology(t, netns.NodeOptions{})
	node := tp.Namespace
	cfg := tp.udpConfig(t)
	p, cancel := startProxier(t, cfg, false, serviceCIDR)
	dns := service("dns", dnsIP, "1",
		servicePort("dns-tcp", v1.ProtocolTCP, 53, 53, 0),
		servicePort("dns", v1.ProtocolUDP, 53, 53, 0))
	p.OnServiceAdd(dns)
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(slice(dns, "1"))
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

	config := filepath.Join(tp.kit.Dir(), "kube-proxy.yaml")
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: haproxy
hostnameOverride: %s
haproxy:
  binaryPath: %s
  stateDir: %s
  scope: node
`, nodeName, cfg.HAProxyPath, cfg.StateDir)), 0o600))
	out, err := node.Exec(kubeProxy, "--cleanup", "--config", config)
	require.NoError(t, err, "kube-proxy --cleanup: %s", out)
	tables = node.MustExec("nft", "list", "tables")
	assert.NotContains(t, tables, "kube-proxy", "upstream's table of the delegated ports is gone")
	assert.NotContains(t, tables, "kube-haproxy", "the guard's table is gone")
}
