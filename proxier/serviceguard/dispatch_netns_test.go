package serviceguard_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// listenTransparent opens a TCP listener on addr inside ns with
// IP_TRANSPARENT (IPV6_TRANSPARENT), as HAProxy's `bind ... transparent`
// does: TPROXY only hands packets to transparent sockets. For IPv4 addr is
// the wildcard address, as the proxier's: connections redirected by NAT
// arrive on the address of the interface they came in on. Every accepted
// connection is told its original destination and its local address
// ("<original> <local>"), then closed.
func listenTransparent(t *testing.T, ns *netns.Namespace, addr netip.AddrPort) {
	t.Helper()
	network, level, opt := "tcp4", unix.SOL_IP, unix.IP_TRANSPARENT
	if addr.Addr().Is6() {
		network, level, opt = "tcp6", unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, 1) }); err != nil {
			return err
		}
		return serr
	}}
	var l net.Listener
	require.NoError(t, ns.Do(func() error {
		var err error
		l, err = lc.Listen(context.Background(), network, addr.String())
		return err
	}))
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(originalDst(c) + " " + c.LocalAddr().String()))
			c.Close()
		}
	}()
}

// originalDst is the destination the client connected to, as HAProxy's
// "dst" reads it: the local address (TPROXY keeps it), unless conntrack
// knows the IPv4 destination from before a NAT redirect (getsockopt
// SO_ORIGINAL_DST; it fails for an untracked connection, a node-local
// client's).
func originalDst(c net.Conn) string {
	local := c.LocalAddr().String()
	if !c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().Is4() {
		return local
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return local
	}
	var sa *unix.IPv6Mreq
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		// A struct sockaddr_in fits in the 20 bytes of an ipv6_mreq:
		// family, port (network order), address.
		sa, gerr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
	}); err != nil || gerr != nil {
		return local
	}
	b := sa.Multiaddr
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4])).String()
}

// originalDstSeen connects from ns (from source, when valid) to addr and
// returns what the transparent listener says the original destination is.
func originalDstSeen(ns *netns.Namespace, source netip.Addr, addr netip.AddrPort) (string, error) {
	orig, _, err := dispatchSeen(ns, source, addr)
	return orig, err
}

// dispatchSeen is originalDstSeen that also returns the listener's local
// address: the original destination after TPROXY, the address of the
// incoming interface and the listener's port after a NAT redirect.
func dispatchSeen(ns *netns.Namespace, source netip.Addr, addr netip.AddrPort) (orig, local string, err error) {
	// Long enough for a SYN retransmission: the node may have to resolve a
	// source it has not talked to yet (IPv6 neighbour discovery) first.
	seen, err := seenWithin(ns, source, addr, 5*time.Second)
	orig, local, _ = strings.Cut(seen, " ")
	return orig, local, err
}

// dropped reports whether a connection from ns (source) to addr gets no
// answer within a second.
func dropped(ns *netns.Namespace, source netip.Addr, addr netip.AddrPort) (bool, error) {
	_, err := seenWithin(ns, source, addr, time.Second)
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout(), err
}

func seenWithin(ns *netns.Namespace, source netip.Addr, addr netip.AddrPort, timeout time.Duration) (string, error) {
	d := net.Dialer{Timeout: timeout}
	if source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: source.AsSlice()}
	}
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = d.Dial("tcp", addr.String())
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// bridgedPod creates a pod namespace plugged into a new bridge cbr0 of
// node, with br_netfilter on in node: the bridge has bridgeAddr, the pod
// podAddr and its default route via the bridge, like a bridge CNI's pod.
func bridgedPod(t *testing.T, k *netns.Kit, node *netns.Namespace, bridgeAddr, podAddr netip.Prefix) *netns.Namespace {
	t.Helper()
	node.BridgeNetfilter()
	k.Bridge(node, "cbr0", bridgeAddr)
	pod := k.Namespace("pod")
	k.Plug(node, "cbr0", pod, "eth0", podAddr)
	pod.DefaultRoute(bridgeAddr.Addr())
	return pod
}

// TestDispatchInANetworkNamespace loads the dispatch chains into a real
// kernel: TCP to a served Service IP:port and to a NodePort reaches one
// transparent listener (0.0.0.0 for IPv4, as the proxier's; [::1] for
// IPv6), which sees the original destination, from another namespace on a
// veth link and from the node itself (TPROXY: the local address is the
// original destination) and, for IPv4, from a pod on a Linux bridge of the
// node with br_netfilter on (NAT: the local address is the bridge's, the
// original destination comes from conntrack); the firewall drops a source
// outside the LoadBalancer source ranges, bridged or not; the guard still
// refuses unserved ports of Service IPs; and a change is applied as
// element updates that the kernel takes.
func TestDispatchInANetworkNamespace(t *testing.T) {
	netns.RequireBinary(t, "nft")
	for _, tc := range []struct {
		family                     v1.IPFamily
		ipX                        string
		cidr, clusterIP, lbIP      string
		nodeAddr, client, client2  string
		dispatch                   string
		otherClusterIP, wildcard   string
		clientNet                  string
		nodeAddrOnly, nodeLoopback string
		// listen is the test HAProxy's bind, dispatch the TPROXY target.
		listen string
		// bridge and pod: a pod on a bridge of the node (IPv4 only: IPv6
		// has no NAT path).
		bridge, pod string
	}{
		{
			family: v1.IPv4Protocol, ipX: "ip",
			cidr: "10.96.0.0/16", clusterIP: "10.96.0.10", lbIP: "203.0.113.10",
			nodeAddr: "192.168.94.1/24", client: "192.168.94.2/24", client2: "192.168.94.3/24",
			dispatch: "127.0.0.1:10400", otherClusterIP: "10.96.0.11", wildcard: "0.0.0.0:2222",
			nodeLoopback: "127.0.0.1", listen: "0.0.0.0:10400",
			bridge: "10.244.1.1/24", pod: "10.244.1.10/24",
		},
		{
			family: v1.IPv6Protocol, ipX: "ip6",
			cidr: "fd00:10:96::/112", clusterIP: "fd00:10:96::a", lbIP: "2001:db8::10",
			nodeAddr: "fd00:94::1/64", client: "fd00:94::2/64", client2: "fd00:94::3/64",
			dispatch: "[::1]:10400", otherClusterIP: "fd00:10:96::b", wildcard: "[::]:2222",
			nodeLoopback: "::1", listen: "[::1]:10400",
		},
	} {
		t.Run(string(tc.family), func(t *testing.T) {
			k := netns.New(t)
			node := k.Namespace("node")
			client := k.Namespace("client")
			nodePrefix := netip.MustParsePrefix(tc.nodeAddr)
			nodeIP := nodePrefix.Addr()
			k.Link(node, "eth0", nodePrefix, client, "eth0", netip.MustParsePrefix(tc.client))
			client.AddAddr("eth0", netip.MustParsePrefix(tc.client2))
			client.DefaultRoute(nodeIP)
			allowedSrc := netip.MustParsePrefix(tc.client).Addr()
			deniedSrc := netip.MustParsePrefix(tc.client2).Addr()
			clusterIP, lbIP := netip.MustParseAddr(tc.clusterIP), netip.MustParseAddr(tc.lbIP)
			at := func(ip netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(ip, port) }
			var pod *netns.Namespace
			var bridgeIP netip.Addr
			if tc.pod != "" {
				bridgeIP = netip.MustParsePrefix(tc.bridge).Addr()
				pod = bridgedPod(t, k, node, netip.MustParsePrefix(tc.bridge), netip.MustParsePrefix(tc.pod))
			}

			owned, err := localaddr.New(node.Netlink(), tc.family).Reconcile(localaddr.Desired{
				CIDRs: []netip.Prefix{netip.MustParsePrefix(tc.cidr)},
				IPs:   []netip.Addr{lbIP},
			})
			require.NoError(t, err)
			dispatch := netip.MustParseAddrPort(tc.dispatch)
			listenTransparent(t, node, netip.MustParseAddrPort(tc.listen))
			// A host daemon on every address, which the guard keeps off
			// Service IPs.
			sshd, err := node.Listen("tcp", tc.wildcard)
			require.NoError(t, err)
			acceptAll(sshd)

			g, err := newGuardIn(node, tc.family)
			require.NoError(t, err)
			ctx := context.Background()
			t.Cleanup(func() { _ = node.Do(func() error { return g.Cleanup(ctx) }) })
			desired := serviceguard.Desired{
				ServiceIPs: append([]netip.Prefix{netip.MustParsePrefix(tc.cidr)}, owned...),
				Served: []serviceguard.Binding{
					{IP: clusterIP, Protocol: v1.ProtocolTCP, Port: 80},
					{IP: lbIP, Protocol: v1.ProtocolTCP, Port: 443},
				},
				Dispatch:  dispatch,
				NodePorts: []uint16{30080},
				Firewall: []serviceguard.FirewallEntry{{
					IP: lbIP, Port: 443, Allowed: []netip.Prefix{netip.PrefixFrom(allowedSrc, allowedSrc.BitLen())},
				}},
			}
			require.NoError(t, node.Do(func() error { return g.Sync(ctx, desired) }))
			t.Log(node.MustExec("nft", "list", "table", tc.ipX, serviceguard.TableName))

			unserved := []netip.AddrPort{at(clusterIP, 2222), at(clusterIP, 81), at(clusterIP, 30080)}
			for _, from := range []*netns.Namespace{client, node} {
				// TPROXY: the accepted socket's local address is the
				// original destination.
				for _, dst := range []netip.AddrPort{at(clusterIP, 80), at(nodeIP, 30080)} {
					orig, local, err := dispatchSeen(from, netip.Addr{}, dst)
					if assert.NoError(t, err, "%s from %s", dst, from.Short) {
						assert.Equal(t, dst.String(), orig, "the listener sees the original destination (from %s)", from.Short)
						assert.Equal(t, dst.String(), local, "%s from %s: by TPROXY", dst, from.Short)
					}
				}
				for _, addr := range unserved {
					err := from.TCPAccepts(addr.String(), 2*time.Second)
					assert.True(t, refused(err), "%s from %s: want refused, got %v", addr, from.Short, err)
				}
			}
			if pod != nil {
				// A pod on a bridge of the node, br_netfilter on: NAT
				// redirects it to the listener's port on the bridge's
				// address (a socket TPROXY assigned inside the bridge would
				// be dropped by ip_rcv()), and conntrack keeps the original
				// destination.
				viaBridge := at(bridgeIP, dispatch.Port()).String()
				for _, dst := range []netip.AddrPort{at(clusterIP, 80), at(nodeIP, 30080), at(bridgeIP, 30080)} {
					orig, local, err := dispatchSeen(pod, netip.Addr{}, dst)
					if assert.NoError(t, err, "%s from the bridged pod", dst) {
						assert.Equal(t, dst.String(), orig, "the listener reads the original destination (bridged pod)")
						assert.Equal(t, viaBridge, local, "%s from the bridged pod: redirected by NAT", dst)
					}
				}
				for _, addr := range unserved {
					err := pod.TCPAccepts(addr.String(), 2*time.Second)
					assert.True(t, refused(err), "%s from the bridged pod: want refused, got %v", addr, err)
				}
				isDropped, err := dropped(pod, netip.Addr{}, at(lbIP, 443))
				assert.True(t, isDropped, "a bridged source outside the ranges is dropped before the NAT: got %v", err)
			}
			// Every local address but the Service IPs serves NodePorts,
			// loopback included.
			got, err := originalDstSeen(node, netip.Addr{}, at(netip.MustParseAddr(tc.nodeLoopback), 30080))
			if assert.NoError(t, err, "NodePort on loopback") {
				assert.Equal(t, at(netip.MustParseAddr(tc.nodeLoopback), 30080).String(), got)
			}
			assert.NoError(t, client.TCPAccepts(at(nodeIP, 2222).String(), 2*time.Second), "the node address is not a Service IP")

			// The firewall: the allowed source reaches the LB IP, the other
			// one is dropped without an answer.
			got, err = originalDstSeen(client, allowedSrc, at(lbIP, 443))
			if assert.NoError(t, err, "allowed source to the LB IP") {
				assert.Equal(t, at(lbIP, 443).String(), got)
			}
			isDropped, err := dropped(client, deniedSrc, at(lbIP, 443))
			assert.True(t, isDropped, "a source outside the ranges is dropped silently, got %v", err)
			// The node's own connection comes through prerouting too, and
			// its source is not allowed either: for IPv4 the kernel picks
			// the local destination itself (the LB IP) as source, for IPv6
			// a node address.
			isDropped, err = dropped(node, netip.Addr{}, at(lbIP, 443))
			assert.True(t, isDropped, "node-local to the LB IP, source not allowed: got %v", err)

			// A change is applied as element updates: another ClusterIP
			// served, the denied source and the LB IP itself allowed.
			desired.Served = append(desired.Served, serviceguard.Binding{IP: netip.MustParseAddr(tc.otherClusterIP), Protocol: v1.ProtocolTCP, Port: 80})
			desired.Firewall[0].Allowed = []netip.Prefix{nodePrefix.Masked(), netip.PrefixFrom(lbIP, lbIP.BitLen())}
			require.NoError(t, node.Do(func() error { return g.Sync(ctx, desired) }))
			got, err = originalDstSeen(client, netip.Addr{}, at(netip.MustParseAddr(tc.otherClusterIP), 80))
			if assert.NoError(t, err, "newly served ClusterIP") {
				assert.Equal(t, at(netip.MustParseAddr(tc.otherClusterIP), 80).String(), got)
			}
			got, err = originalDstSeen(client, deniedSrc, at(lbIP, 443))
			if assert.NoError(t, err, "source now inside the ranges") {
				assert.Equal(t, at(lbIP, 443).String(), got)
			}
			_, err = originalDstSeen(node, netip.Addr{}, at(lbIP, 443))
			assert.NoError(t, err, "node-local to the LB IP once its source is allowed")
			if pod != nil {
				got, err = originalDstSeen(pod, netip.Addr{}, at(netip.MustParseAddr(tc.otherClusterIP), 80))
				if assert.NoError(t, err, "newly served ClusterIP from the bridged pod") {
					assert.Equal(t, at(netip.MustParseAddr(tc.otherClusterIP), 80).String(), got)
				}
			}

			// Served no more: the guard refuses again.
			desired.Served = desired.Served[:1]
			desired.NodePorts = nil
			require.NoError(t, node.Do(func() error { return g.Sync(ctx, desired) }))
			for _, addr := range []netip.AddrPort{at(lbIP, 443), at(netip.MustParseAddr(tc.otherClusterIP), 80)} {
				err := client.TCPAccepts(addr.String(), 2*time.Second)
				assert.True(t, refused(err), "%s: want refused, got %v", addr, err)
			}
			err = client.TCPAccepts(at(nodeIP, 30080).String(), 2*time.Second)
			assert.True(t, refused(err), "NodePort no longer dispatched, nothing listens: got %v", err)
			if pod != nil {
				for _, addr := range []netip.AddrPort{at(netip.MustParseAddr(tc.otherClusterIP), 80), at(nodeIP, 30080)} {
					err := pod.TCPAccepts(addr.String(), 2*time.Second)
					assert.True(t, refused(err), "%s from the bridged pod: no longer redirected, want refused, got %v", addr, err)
				}
			}
			t.Log(node.MustExec("nft", "list", "table", tc.ipX, serviceguard.TableName))
		})
	}
}

// TestNodePortAddressesInANetworkNamespace: with NodePortAddresses set,
// a NodePort is dispatched on those addresses only, by TPROXY and by the
// NAT of bridged IPv4 alike.
func TestNodePortAddressesInANetworkNamespace(t *testing.T) {
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	node := k.Namespace("node")
	client := k.Namespace("client")
	k.Link(node, "eth0", netip.MustParsePrefix("192.168.96.1/24"), client, "eth0", netip.MustParsePrefix("192.168.96.2/24"))
	node.AddAddr("eth0", netip.MustParsePrefix("192.168.96.11/24"))
	client.DefaultRoute(netip.MustParseAddr("192.168.96.1"))
	pod := bridgedPod(t, k, node, netip.MustParsePrefix("10.244.1.1/24"), netip.MustParsePrefix("10.244.1.10/24"))
	dispatch := netip.MustParseAddrPort("127.0.0.1:10400")
	listenTransparent(t, node, netip.MustParseAddrPort("0.0.0.0:10400"))
	g, err := newGuardIn(node, v1.IPv4Protocol)
	require.NoError(t, err)
	ctx := context.Background()
	t.Cleanup(func() { _ = node.Do(func() error { return g.Cleanup(ctx) }) })
	require.NoError(t, node.Do(func() error {
		return g.Sync(ctx, serviceguard.Desired{
			ServiceIPs:        []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
			Dispatch:          dispatch,
			NodePorts:         []uint16{30080},
			NodePortAddresses: []netip.Addr{netip.MustParseAddr("192.168.96.11")},
		})
	}))
	// From a client on a veth link (TPROXY) and from a pod on a bridge of
	// the node (NAT).
	for _, from := range []*netns.Namespace{client, pod} {
		got, err := originalDstSeen(from, netip.Addr{}, netip.MustParseAddrPort("192.168.96.11:30080"))
		if assert.NoError(t, err, "from %s", from.Short) {
			assert.Equal(t, "192.168.96.11:30080", got, "from %s", from.Short)
		}
		for _, addr := range []string{"192.168.96.1:30080", "10.244.1.1:30080"} {
			err = from.TCPAccepts(addr, 2*time.Second)
			assert.True(t, refused(err), "%s from %s: not a nodePortAddresses address: want refused, got %v", addr, from.Short, err)
		}
	}
}
