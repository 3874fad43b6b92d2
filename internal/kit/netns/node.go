package netns

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// The addresses of a Node topology.
var (
	NodeIP      = netip.MustParseAddr("192.168.96.1")
	ClientIP    = netip.MustParseAddr("192.168.96.100")
	PodGateway  = netip.MustParseAddr("10.244.1.1")
	NodeIP6     = netip.MustParseAddr("fd00:96::1")
	ClientIP6   = netip.MustParseAddr("fd00:96::100")
	PodGateway6 = netip.MustParseAddr("fd00:244:1::1")
)

// NodeOptions shape a Node.
type NodeOptions struct {
	// NS is the node; nil creates a namespace "node". A suite whose code
	// under test must run wholly inside the node passes Kit.Self() (see
	// RunTestsInNamespace).
	NS *Namespace
	// IPv6 puts NodeIP6, ClientIP6 and PodGateway6 beside the IPv4
	// addresses, with the client's IPv6 default route via the node; pods
	// get fd00:244:1::<host> too.
	IPv6 bool
	// BridgeNetfilter turns br_netfilter on in the node, as kubeadm
	// requires of a node (bridge-nf-call-iptables=1): IPv4 packets
	// crossing the pod bridge meet the IPv4 prerouting hooks inside the
	// bridge, before ip_rcv(), which drops a socket TPROXY assigned there.
	BridgeNetfilter bool
	// Forwarding turns IPv4 forwarding on in the node, as a node that
	// DNATs to pods (upstream's nftables proxier) needs.
	Forwarding bool
	// PodTCPPorts and PodUDPPorts are what every pod of the node serves;
	// default TCP 8080. PodProxyTCPPorts serve HTTP after a PROXY
	// protocol header.
	PodTCPPorts, PodUDPPorts, PodProxyTCPPorts []int
}

// Node is the topology the integration suites share: a node, a client on
// a veth link to it whose default route is the node (as if the network
// routed Service IPs to it), and a pod bridge cbr0 on the node.
type Node struct {
	*Namespace
	Client *Namespace

	opts NodeOptions
}

// Node builds the topology of o. On an adopted node (Self) it takes its
// links down and restores its sysctls after the test, so the next test
// of the package finds the node as it was.
func (k *Kit) Node(o NodeOptions) *Node {
	k.t.Helper()
	node := o.NS
	if node == nil {
		node = k.Namespace("node")
	}
	n := &Node{Namespace: node, opts: o}
	if node.adopted {
		k.t.Cleanup(func() {
			_, _ = node.Exec("ip", "link", "del", "eth0")
			_, _ = node.Exec("ip", "link", "del", "cbr0")
		})
	}
	if o.BridgeNetfilter {
		node.BridgeNetfilter()
	}
	if o.Forwarding {
		node.Sysctl("net.ipv4.ip_forward", "1")
	}
	n.Client = k.Namespace("client")
	k.Link(node, "eth0", netip.PrefixFrom(NodeIP, 24), n.Client, "eth0", netip.PrefixFrom(ClientIP, 24))
	n.Client.DefaultRoute(NodeIP)
	k.Bridge(node, "cbr0", netip.PrefixFrom(PodGateway, 24))
	if o.IPv6 {
		node.AddAddr("eth0", netip.PrefixFrom(NodeIP6, 64))
		n.Client.AddAddr("eth0", netip.PrefixFrom(ClientIP6, 64))
		n.Client.DefaultRoute(NodeIP6)
		node.AddAddr("cbr0", netip.PrefixFrom(PodGateway6, 64))
	}
	return n
}

// PodIP is the address of the pod at host on the node's bridge:
// 10.244.1.<host>.
func PodIP(host int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 244, 1, byte(host)})
}

// PodIP6 is the IPv6 address of the pod at host, written with the same
// digits: fd00:244:1::10 for host 10.
func PodIP6(host int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:244:1::%d", host))
}

// Pod starts a pod on the node's bridge at PodIP(host), serving the
// node's pod ports.
func (n *Node) Pod(name string, host int) *Pod {
	k := n.kit
	k.t.Helper()
	p := k.Pod(name, PodSpec{
		BridgeNS:      n.Namespace,
		Bridge:        "cbr0",
		Addr:          netip.PrefixFrom(PodIP(host), 24),
		Gateway:       PodGateway,
		TCPPorts:      n.opts.PodTCPPorts,
		UDPPorts:      n.opts.PodUDPPorts,
		ProxyTCPPorts: n.opts.PodProxyTCPPorts,
	})
	if n.opts.IPv6 {
		p.AddAddr("eth0", netip.PrefixFrom(PodIP6(host), 64))
		p.DefaultRoute(PodGateway6)
	}
	return p
}

// RoutedPod starts a pod on the node at addr that is routed, not
// bridged (PodSpec.Bridge), serving the node's pod ports.
func (n *Node) RoutedPod(name string, addr netip.Addr) *Pod {
	n.kit.t.Helper()
	return n.kit.Pod(name, PodSpec{
		BridgeNS:      n.Namespace,
		Addr:          netip.PrefixFrom(addr, addr.BitLen()),
		TCPPorts:      n.opts.PodTCPPorts,
		UDPPorts:      n.opts.PodUDPPorts,
		ProxyTCPPorts: n.opts.PodProxyTCPPorts,
	})
}

// Sysctl sets key to value in the namespace. On an adopted namespace the
// old value comes back after the test.
func (n *Namespace) Sysctl(key, value string) {
	n.kit.t.Helper()
	old := strings.TrimSpace(n.MustExec("sysctl", "-n", key))
	n.MustExec("sysctl", "-qw", key+"="+value)
	if got := strings.TrimSpace(n.MustExec("sysctl", "-n", key)); got != value {
		n.kit.t.Fatalf("%s is %q in %s after setting it to %q", key, got, n.Short, value)
	}
	if n.adopted && old != value {
		n.kit.t.Cleanup(func() { _, _ = n.Exec("sysctl", "-qw", key+"="+old) })
	}
}

// BridgeNetfilter turns br_netfilter on in the namespace
// (net.bridge.bridge-nf-call-iptables=1, per network namespace), and
// fails the test, saying so, where the kernel lacks br_netfilter.
func (n *Namespace) BridgeNetfilter() {
	n.kit.t.Helper()
	const key = "net.bridge.bridge-nf-call-iptables"
	if _, err := n.Exec("sysctl", "-n", key); err != nil {
		n.kit.t.Fatalf("needs br_netfilter (modprobe br_netfilter; make deps loads it): %v", err)
	}
	n.Sysctl(key, "1")
}

// Daemon listens on addr (tcp, both families for ":port") inside the
// namespace and accepts and closes every connection, greeting it with
// greeting first when there is one: a host daemon, for tests of what
// reaches the node itself. It stops after the test.
func (n *Namespace) Daemon(addr, greeting string) net.Listener {
	n.kit.t.Helper()
	l, err := n.Listen("tcp", addr)
	if err != nil {
		n.kit.t.Fatalf("listening on %s in %s: %v", addr, n.Short, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if greeting != "" {
				_, _ = c.Write([]byte(greeting))
			}
			c.Close()
		}
	}()
	return l
}
