package serviceguard_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"

	"github.com/vishvananda/netlink"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// acceptAll accepts and closes connections until l is closed.
func acceptAll(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// echoUDP answers every datagram with its payload until c is closed, and
// counts them. (A wildcard UDP socket answers from the address routing
// picks, not the one the datagram reached, so a client talking to a
// Service IP may not recognise the answer: the count shows the daemon got
// the datagram all the same.)
func echoUDP(c net.PacketConn) *atomic.Int32 {
	var received atomic.Int32
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			received.Add(1)
			_, _ = c.WriteTo(buf[:n], from)
		}
	}()
	return &received
}

// udpExchange sends one datagram from ns to addr and waits for the answer.
func udpExchange(ns *netns.Namespace, addr string) error {
	c, err := ns.Dial("udp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 10))
	return err
}

func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// TestGuardInANetworkNamespace loads the guard into a real kernel: a
// wildcard listener on the node stops answering on Service IPs, served
// pairs still accept, from another namespace and from the node itself, and
// node addresses are untouched.
func TestGuardInANetworkNamespace(t *testing.T) {
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	node := k.Namespace("node")
	client := k.Namespace("client")
	k.Link(node, "eth0", netip.MustParsePrefix("192.168.92.1/24"), client, "eth0", netip.MustParsePrefix("192.168.92.2/24"))
	client.DefaultRoute(netip.MustParseAddr("192.168.92.1"))

	_, err := localaddr.New(node.Netlink(), v1.IPv4Protocol).Reconcile(localaddr.Desired{
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		IPs:   []netip.Addr{netip.MustParseAddr("203.0.113.10")},
	})
	require.NoError(t, err)

	// sshd-like: every address of the node, port 2222. And a stand-in for
	// HAProxy's bind on the served ClusterIP:port.
	for _, addr := range []string{"0.0.0.0:2222", "10.96.0.10:80"} {
		l, err := node.Listen("tcp", addr)
		require.NoError(t, err)
		acceptAll(l)
	}
	// A DNS-like daemon on every address, UDP.
	u, err := node.ListenPacket("udp", "0.0.0.0:5353")
	require.NoError(t, err)
	udpReceived := echoUDP(u)
	const wait = 2 * time.Second
	require.NoError(t, client.TCPAccepts("10.96.0.10:2222", wait), "without the guard the hole is open")
	_ = udpExchange(client, "10.96.0.10:5353")
	require.Equal(t, int32(1), udpReceived.Load(), "without the guard the hole is open (UDP)")

	var g *serviceguard.Guard
	ctx := context.Background()
	desired := serviceguard.Desired{
		ServiceIPs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("203.0.113.10/32")},
		Served:     []serviceguard.Binding{{IP: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80}},
	}
	require.NoError(t, node.Do(func() error {
		var err error
		if g, err = serviceguard.New(v1.IPv4Protocol); err != nil {
			return err
		}
		return g.Sync(ctx, desired)
	}))
	t.Cleanup(func() { _ = node.Do(func() error { return g.Cleanup(ctx) }) })
	t.Log(node.MustExec("nft", "list", "table", "ip", serviceguard.TableName))

	for _, from := range []*netns.Namespace{client, node} {
		assert.NoError(t, from.TCPAccepts("10.96.0.10:80", wait), "served pair from %s", from.Short)
		for _, addr := range []string{"10.96.0.10:2222", "10.96.0.11:2222", "203.0.113.10:2222", "10.96.0.11:80"} {
			err := from.TCPAccepts(addr, wait)
			assert.True(t, refused(err), "%s from %s: want refused, got %v", addr, from.Short, err)
		}
	}
	assert.NoError(t, client.TCPAccepts("192.168.92.1:2222", wait), "node addresses are not Service IPs")
	assert.NoError(t, node.TCPAccepts("127.0.0.1:2222", wait), "loopback is not a Service IP")

	// UDP to an unserved Service port gets an ICMP port-unreachable, not
	// the wildcard daemon and not silence.
	err = udpExchange(client, "10.96.0.10:5353")
	assert.True(t, refused(err), "udp to an unserved Service port: want refused, got %v", err)
	assert.Equal(t, int32(1), udpReceived.Load(), "the daemon got nothing more")
	assert.NoError(t, udpExchange(client, "192.168.92.1:5353"), "udp to the node address")

	// Serving a new pair opens exactly that pair.
	desired.Served = append(desired.Served, serviceguard.Binding{IP: netip.MustParseAddr("203.0.113.10"), Protocol: v1.ProtocolTCP, Port: 2222})
	require.NoError(t, node.Do(func() error { return g.Sync(ctx, desired) }))
	assert.NoError(t, client.TCPAccepts("203.0.113.10:2222", wait))
	assert.True(t, refused(client.TCPAccepts("10.96.0.10:2222", wait)))

	// Somebody deletes the table: the next Sync, with nothing changed,
	// puts it back.
	node.MustExec("nft", "delete", "table", "ip", serviceguard.TableName)
	require.NoError(t, client.TCPAccepts("10.96.0.10:2222", wait))
	g.Recheck() // as DefaultCheckInterval passing would
	require.NoError(t, node.Do(func() error { return g.Sync(ctx, desired) }))
	assert.True(t, refused(client.TCPAccepts("10.96.0.10:2222", wait)), "the guard is back")

	require.NoError(t, node.Do(func() error { return g.Cleanup(ctx) }))
	out, err := node.Exec("nft", "list", "tables")
	require.NoError(t, err)
	assert.NotContains(t, out, serviceguard.TableName, "Cleanup deletes the table")
	assert.NoError(t, client.TCPAccepts("10.96.0.10:2222", wait), "without the table the listener answers again")
	before := udpReceived.Load()
	_ = udpExchange(client, "10.96.0.10:5353")
	assert.Equal(t, before+1, udpReceived.Load(), "without the table the UDP daemon is reached again")
}

// greet writes "hi" on every connection and closes it, until l is closed.
func greet(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}
	}()
}

// readGreeting connects from ns to addr and reads what the server says.
func readGreeting(ns *netns.Namespace, addr string) (string, error) {
	c, err := ns.Dial("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 10)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// tracked reports whether the node's conntrack table holds a flow to
// ip:port.
func tracked(t *testing.T, node *netns.Namespace, family v1.IPFamily, ip netip.Addr, port uint16) bool {
	t.Helper()
	fam := netlink.InetFamily(netlink.FAMILY_V4)
	if family == v1.IPv6Protocol {
		fam = netlink.InetFamily(netlink.FAMILY_V6)
	}
	flows, err := node.Netlink().ConntrackTableList(netlink.ConntrackTable, fam)
	require.NoError(t, err)
	for _, f := range flows {
		if a, ok := netip.AddrFromSlice(f.Forward.DstIP); ok && a.Unmap() == ip && f.Forward.DstPort == port {
			return true
		}
	}
	return false
}

// TestNodeLocalClientsOfServedPortsBypassConntrack: another table rejects,
// in the output path, every new connection to a ClusterIP it did not DNAT
// (upstream nftables' cluster-ips check, for the UDP ports it serves on
// the same ClusterIP). With the guard, a node-local TCP client of a served
// pair is untracked, so that rule never sees it and the connection works
// both ways, while a client in another namespace keeps its conntrack
// entry. Unserved ports stay rejected for node-local clients too.
func TestNodeLocalClientsOfServedPortsBypassConntrack(t *testing.T) {
	netns.RequireBinary(t, "nft")
	for _, tc := range []struct {
		family                      v1.IPFamily
		ipX                         string
		cidr, nodeAddr, clientAddr  string
		clusterIP, listen, unserved string
	}{
		{v1.IPv4Protocol, "ip", "10.96.0.0/16", "192.168.93.1/24", "192.168.93.2/24",
			"10.96.0.10", "10.96.0.10:53", "10.96.0.10:54"},
		{v1.IPv6Protocol, "ip6", "fd00:10:96::/112", "fd00:93::1/64", "fd00:93::2/64",
			"fd00:10:96::a", "[fd00:10:96::a]:53", "[fd00:10:96::a]:54"},
	} {
		t.Run(string(tc.family), func(t *testing.T) {
			k := netns.New(t)
			node := k.Namespace("node")
			client := k.Namespace("client")
			nodePrefix := netip.MustParsePrefix(tc.nodeAddr)
			k.Link(node, "eth0", nodePrefix, client, "eth0", netip.MustParsePrefix(tc.clientAddr))
			client.Route(netip.MustParsePrefix(tc.cidr), nodePrefix.Addr())
			if tc.family == v1.IPv6Protocol {
				// No duplicate address detection: the addresses work at once.
				node.MustExec("ip", "-6", "addr", "change", tc.nodeAddr, "dev", "eth0", "nodad")
				// IPv6 binds only to addresses of an interface, not of a
				// local route, unless non-local binds are allowed.
				node.MustExec("sysctl", "-qw", "net.ipv6.ip_nonlocal_bind=1")
				client.MustExec("ip", "-6", "addr", "change", tc.clientAddr, "dev", "eth0", "nodad")
			}
			_, err := localaddr.New(node.Netlink(), tc.family).Reconcile(localaddr.Desired{
				CIDRs: []netip.Prefix{netip.MustParsePrefix(tc.cidr)},
			})
			require.NoError(t, err)
			clusterIP := netip.MustParseAddr(tc.clusterIP)
			for _, addr := range []string{tc.listen, tc.unserved} {
				l, err := node.Listen("tcp", addr)
				require.NoError(t, err)
				greet(l)
			}
			// What upstream's nftables proxier does for a ClusterIP in its
			// view: reject new connections from the node it did not DNAT.
			_, err = node.Exec("sh", "-c", "nft -f - <<'EOF'\n"+
				"table "+tc.ipX+" cluster-ips-check {\n"+
				" chain output { type filter hook output priority 0 ;\n"+
				"  ct state new "+tc.ipX+" daddr "+tc.clusterIP+" reject\n"+
				" }\n}\nEOF\n")
			require.NoError(t, err)
			got, err := readGreeting(node, tc.listen)
			require.Error(t, err, "without the guard, the other table rejects the node's connection (got %q)", got)

			g, err := newGuardIn(node, tc.family)
			require.NoError(t, err)
			ctx := context.Background()
			t.Cleanup(func() { _ = node.Do(func() error { return g.Cleanup(ctx) }) })
			require.NoError(t, node.Do(func() error {
				return g.Sync(ctx, serviceguard.Desired{
					ServiceIPs: []netip.Prefix{netip.MustParsePrefix(tc.cidr)},
					Served:     []serviceguard.Binding{{IP: clusterIP, Protocol: v1.ProtocolTCP, Port: 53}},
				})
			}))

			got, err = readGreeting(node, tc.listen)
			require.NoError(t, err, "node-local TCP to a served ClusterIP port")
			assert.Equal(t, "hi", got)
			assert.False(t, tracked(t, node, tc.family, clusterIP, 53), "a node-local connection to a served port is untracked")
			assert.True(t, refused(node.TCPAccepts(tc.unserved, 2*time.Second)), "an unserved port stays closed for the node")

			got, err = readGreeting(client, tc.listen)
			require.NoError(t, err, "TCP from another namespace to the served ClusterIP port")
			assert.Equal(t, "hi", got)
			assert.True(t, tracked(t, node, tc.family, clusterIP, 53), "a connection from outside the node keeps its conntrack entry")
		})
	}
}

func newGuardIn(ns *netns.Namespace, family v1.IPFamily) (*serviceguard.Guard, error) {
	var g *serviceguard.Guard
	err := ns.Do(func() error {
		var err error
		g, err = serviceguard.New(family)
		return err
	})
	return g, err
}
