// Package netns runs the scope-node data plane for real: the test binary
// is re-executed inside a "node" network namespace (so HAProxy, nft and
// netlink calls from any goroutine act on the node), pods and a client are
// namespaces of their own, and connections go through the kernel and a
// real HAProxy.
package netns

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

func TestMain(m *testing.M) { os.Exit(netns.RunTestsInNamespace(m, "node")) }

const (
	nodeIP   = "192.168.96.1"
	clientIP = "192.168.96.100"
	podGW    = "10.244.1.1"
)

var serviceCIDR = netip.MustParsePrefix("10.96.0.0/16")

// topology is the node (this process's namespace), a client on the node's
// LAN routing everything to the node, and a pod bridge on the node with
// br_netfilter on, as kubeadm requires (bridge-nf-call-iptables=1): IPv4
// connections from pods then reach HAProxy by NAT, not TPROXY (see
// package serviceguard).
type topology struct {
	kit    *netns.Kit
	node   *netns.Namespace
	client *netns.Namespace
}

func newTopology(t *testing.T) *topology {
	netns.RequireBinary(t, "haproxy")
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	node := k.Self()
	bridgeNetfilter(t, node)
	client := k.Namespace("client")
	k.Link(node, "eth0", netip.MustParsePrefix(nodeIP+"/24"), client, "eth0", netip.MustParsePrefix(clientIP+"/24"))
	client.DefaultRoute(netip.MustParseAddr(nodeIP))
	k.Bridge(node, "cbr0", netip.MustParsePrefix(podGW+"/24"))
	t.Cleanup(func() {
		// The node namespace outlives each test: take its links down with it.
		_, _ = node.Exec("ip", "link", "del", "eth0")
		_, _ = node.Exec("ip", "link", "del", "cbr0")
	})
	return &topology{kit: k, node: node, client: client}
}

// pod starts a pod on the node's bridge at 10.244.1.<n>.
func (tp *topology) pod(name string, n int) *netns.Pod {
	return tp.kit.Pod(name, netns.PodSpec{
		BridgeNS: tp.node, Bridge: "cbr0",
		Addr:    netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 1, byte(n)}), 24),
		Gateway: netip.MustParseAddr(podGW),
	})
}

// bridgeNetfilter turns br_netfilter on in ns (per network namespace):
// IPv4 packets crossing a bridge of ns meet the IPv4 prerouting hooks
// inside the bridge, before ip_rcv(), which drops a socket TPROXY
// assigned there.
func bridgeNetfilter(t *testing.T, ns *netns.Namespace) {
	t.Helper()
	const key = "net.bridge.bridge-nf-call-iptables"
	if _, err := ns.Exec("sysctl", "-w", key+"=1"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (is br_netfilter loaded? modprobe br_netfilter); CI=true, so this is a failure, not a skip", err)
		}
		t.Skipf("needs br_netfilter (modprobe br_netfilter): %v", err)
	}
	if got := strings.TrimSpace(ns.MustExec("sysctl", "-n", key)); got != "1" {
		t.Fatalf("%s is %q after setting it to 1", key, got)
	}
}
