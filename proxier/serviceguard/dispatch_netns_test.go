package serviceguard_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
	"kube-haproxy.io/kube-haproxy/test/netns"
)

// listenTransparent opens a TCP listener on addr inside ns with
// IP_TRANSPARENT (IPV6_TRANSPARENT), as HAProxy's `bind ... transparent`
// does: TPROXY only hands packets to transparent sockets. Every accepted
// connection is told its own local address and closed.
func listenTransparent(t *testing.T, ns *netns.Namespace, addr netip.AddrPort) {
	t.Helper()
	level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
	if addr.Addr().Is6() {
		level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
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
		l, err = lc.Listen(context.Background(), "tcp", addr.String())
		return err
	}))
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(c.LocalAddr().String()))
			c.Close()
		}
	}()
}

// localAddrSeen connects from ns (from source, when valid) to addr and
// returns what the transparent listener says its local address is.
func localAddrSeen(ns *netns.Namespace, source netip.Addr, addr netip.AddrPort) (string, error) {
	// Long enough for a SYN retransmission: the node may have to resolve a
	// source it has not talked to yet (IPv6 neighbour discovery) first.
	return localAddrSeenWithin(ns, source, addr, 5*time.Second)
}

// dropped reports whether a connection from ns (source) to addr gets no
// answer within a second.
func dropped(ns *netns.Namespace, source netip.Addr, addr netip.AddrPort) (bool, error) {
	_, err := localAddrSeenWithin(ns, source, addr, time.Second)
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout(), err
}

func localAddrSeenWithin(ns *netns.Namespace, source netip.Addr, addr netip.AddrPort, timeout time.Duration) (string, error) {
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
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// TestDispatchInANetworkNamespace loads the dispatch chain into a real
// kernel: TCP to a served Service IP:port and to a NodePort reaches one
// transparent listener on loopback, which sees the original destination as
// its local address, from another namespace and from the node itself; the
// firewall drops a source outside the LoadBalancer source ranges; the
// guard still refuses unserved ports of Service IPs; and a change is
// applied as element updates that the kernel takes.
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
	}{
		{
			family: v1.IPv4Protocol, ipX: "ip",
			cidr: "10.96.0.0/16", clusterIP: "10.96.0.10", lbIP: "203.0.113.10",
			nodeAddr: "192.168.94.1/24", client: "192.168.94.2/24", client2: "192.168.94.3/24",
			dispatch: "127.0.0.1:10400", otherClusterIP: "10.96.0.11", wildcard: "0.0.0.0:2222",
			nodeLoopback: "127.0.0.1",
		},
		{
			family: v1.IPv6Protocol, ipX: "ip6",
			cidr: "fd00:10:96::/112", clusterIP: "fd00:10:96::a", lbIP: "2001:db8::10",
			nodeAddr: "fd00:94::1/64", client: "fd00:94::2/64", client2: "fd00:94::3/64",
			dispatch: "[::1]:10400", otherClusterIP: "fd00:10:96::b", wildcard: "[::]:2222",
			nodeLoopback: "::1",
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

			owned, err := localaddr.New(node.Netlink(), tc.family).Reconcile(localaddr.Desired{
				CIDRs: []netip.Prefix{netip.MustParsePrefix(tc.cidr)},
				IPs:   []netip.Addr{lbIP},
			})
			require.NoError(t, err)
			dispatch := netip.MustParseAddrPort(tc.dispatch)
			listenTransparent(t, node, dispatch)
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

			for _, from := range []*netns.Namespace{client, node} {
				got, err := localAddrSeen(from, netip.Addr{}, at(clusterIP, 80))
				if assert.NoError(t, err, "ClusterIP from %s", from.Short) {
					assert.Equal(t, at(clusterIP, 80).String(), got, "the listener sees the original destination (from %s)", from.Short)
				}
				got, err = localAddrSeen(from, netip.Addr{}, at(nodeIP, 30080))
				if assert.NoError(t, err, "NodePort from %s", from.Short) {
					assert.Equal(t, at(nodeIP, 30080).String(), got, "NodePort on the node address (from %s)", from.Short)
				}
				for _, addr := range []netip.AddrPort{at(clusterIP, 2222), at(clusterIP, 81), at(clusterIP, 30080)} {
					err := from.TCPAccepts(addr.String(), 2*time.Second)
					assert.True(t, refused(err), "%s from %s: want refused, got %v", addr, from.Short, err)
				}
			}
			// Every local address but the Service IPs serves NodePorts,
			// loopback included.
			got, err := localAddrSeen(node, netip.Addr{}, at(netip.MustParseAddr(tc.nodeLoopback), 30080))
			if assert.NoError(t, err, "NodePort on loopback") {
				assert.Equal(t, at(netip.MustParseAddr(tc.nodeLoopback), 30080).String(), got)
			}
			assert.NoError(t, client.TCPAccepts(at(nodeIP, 2222).String(), 2*time.Second), "the node address is not a Service IP")

			// The firewall: the allowed source reaches the LB IP, the other
			// one is dropped without an answer.
			got, err = localAddrSeen(client, allowedSrc, at(lbIP, 443))
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
			got, err = localAddrSeen(client, netip.Addr{}, at(netip.MustParseAddr(tc.otherClusterIP), 80))
			if assert.NoError(t, err, "newly served ClusterIP") {
				assert.Equal(t, at(netip.MustParseAddr(tc.otherClusterIP), 80).String(), got)
			}
			got, err = localAddrSeen(client, deniedSrc, at(lbIP, 443))
			if assert.NoError(t, err, "source now inside the ranges") {
				assert.Equal(t, at(lbIP, 443).String(), got)
			}
			_, err = localAddrSeen(node, netip.Addr{}, at(lbIP, 443))
			assert.NoError(t, err, "node-local to the LB IP once its source is allowed")

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
			t.Log(node.MustExec("nft", "list", "table", tc.ipX, serviceguard.TableName))
		})
	}
}

// TestNodePortAddressesInANetworkNamespace: with NodePortAddresses set,
// a NodePort is dispatched on those addresses only.
func TestNodePortAddressesInANetworkNamespace(t *testing.T) {
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	node := k.Namespace("node")
	client := k.Namespace("client")
	k.Link(node, "eth0", netip.MustParsePrefix("192.168.96.1/24"), client, "eth0", netip.MustParsePrefix("192.168.96.2/24"))
	node.AddAddr("eth0", netip.MustParsePrefix("192.168.96.11/24"))
	dispatch := netip.MustParseAddrPort("127.0.0.1:10400")
	listenTransparent(t, node, dispatch)
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
	got, err := localAddrSeen(client, netip.Addr{}, netip.MustParseAddrPort("192.168.96.11:30080"))
	require.NoError(t, err)
	assert.Equal(t, "192.168.96.11:30080", got)
	err = client.TCPAccepts("192.168.96.1:30080", 2*time.Second)
	assert.True(t, refused(err), "not a nodePortAddresses address: want refused, got %v", err)
}
