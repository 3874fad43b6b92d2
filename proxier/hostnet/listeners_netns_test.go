package hostnet_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
)

// listenMapped listens on an IPv6 socket bound to the IPv4-mapped address
// of ip, which Go's net package would open as an IPv4 socket.
func listenMapped(t *testing.T, ns *netns.Namespace, ip netip.Addr, port uint16) {
	t.Helper()
	require.NoError(t, ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: netip.AddrFrom16(ip.As16()).As16(), Port: int(port)}); err != nil {
			return err
		}
		return unix.Listen(fd, 8)
	}))
}

// TestListeningTCPPorts: the listeners of the namespace, and only those,
// per family: dual-stack wildcards count for both, IPv6-only ones and
// IPv4-mapped ones for one; connected sockets and listeners of another
// namespace do not count.
func TestListeningTCPPorts(t *testing.T) {
	k := netns.New(t)
	node := k.Namespace("node")
	other := k.Namespace("other")

	for _, l := range []struct{ network, addr string }{
		{"tcp4", "0.0.0.0:40001"},
		{"tcp", ":40002"}, // [::] without IPV6_V6ONLY
		{"tcp6", "[::]:40003"},
		{"tcp4", "127.0.0.1:40004"},
		{"tcp6", "[::1]:40005"},
	} {
		ln, err := node.Listen(l.network, l.addr)
		require.NoError(t, err, "%s %s", l.network, l.addr)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
	}
	listenMapped(t, node, netip.MustParseAddr("127.0.0.1"), 40006)
	_, err := other.Listen("tcp", ":40007")
	require.NoError(t, err)

	// An established connection: neither end's port is listed for it.
	c, err := node.Dial("tcp", "127.0.0.1:40004", time.Second)
	require.NoError(t, err)
	defer c.Close()
	ephemeral := uint16(c.LocalAddr().(*net.TCPAddr).Port)

	any4, any6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	for family, want := range map[v1.IPFamily]map[uint16][]netip.Addr{
		v1.IPv4Protocol: {40001: {any4}, 40002: {any4}, 40004: {lo4}, 40006: {lo4}},
		v1.IPv6Protocol: {40002: {any6}, 40003: {any6}, 40005: {lo6}},
	} {
		var got map[uint16][]netip.Addr
		require.NoError(t, node.Do(func() error {
			var err error
			got, err = hostnet.ListeningTCPPorts(family)
			return err
		}))
		assert.Equal(t, want, got, family)
		assert.NotContains(t, got, ephemeral, "%s: a connected socket is not a listener", family)
	}
}
