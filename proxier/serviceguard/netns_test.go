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

	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
	"kube-haproxy.io/kube-haproxy/test/netns"
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
