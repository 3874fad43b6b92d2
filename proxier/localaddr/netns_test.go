package localaddr_test

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
)

// ourRoutes is what `ip route show table local proto 66` prints in ns
// (filtering on the protocol, ip leaves it out of each line).
func ourRoutes(ns *netns.Namespace, family string) string {
	return strings.TrimSpace(ns.IP(family, "route", "show", "table", "local", "proto", "66"))
}

// TestAnyIPInANetworkNamespace runs the Manager against the kernel of a
// throwaway namespace: the routes make addresses bindable that are on no
// interface, foreign routes survive, and nothing of ours is left after
// Cleanup.
func TestAnyIPInANetworkNamespace(t *testing.T) {
	k := netns.New(t)
	node := k.Namespace("node")
	// A node address (used as an external IP below) and an administrator's
	// own AnyIP route.
	k.Link(node, "eth0", netip.MustParsePrefix("192.168.91.1/24"), k.Namespace("peer"), "eth0", netip.MustParsePrefix("192.168.91.2/24"))
	node.IP("route", "add", "local", "198.51.100.0/24", "dev", "lo")

	m := localaddr.New(node.Netlink(), v1.IPv4Protocol)
	bind := func(addr string) error {
		l, err := node.Listen("tcp", addr)
		if err == nil {
			l.Close()
		}
		return err
	}
	require.True(t, errors.Is(bind("10.96.0.10:80"), syscall.EADDRNOTAVAIL),
		"before any route a ClusterIP is not bindable")

	owned, err := m.Reconcile(localaddr.Desired{
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		IPs: []netip.Addr{
			netip.MustParseAddr("203.0.113.10"), // LB IP: gets a /32
			netip.MustParseAddr("192.168.91.1"), // already a node address
			netip.MustParseAddr("198.51.100.7"), // already local by the admin's route
			netip.MustParseAddr("10.96.9.9"),    // inside the ServiceCIDR
		},
	})
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("203.0.113.10/32")}, owned)
	assert.Equal(t,
		"local 10.96.0.0/16 dev lo scope host \nlocal 203.0.113.10 dev lo scope host",
		ourRoutes(node, "-4"))
	assert.NoError(t, bind("10.96.0.10:80"), "a ClusterIP on no interface is bindable")
	assert.NoError(t, bind("10.96.255.254:443"))
	assert.NoError(t, bind("203.0.113.10:80"))
	assert.True(t, errors.Is(bind("203.0.113.11:80"), syscall.EADDRNOTAVAIL), "only the LB IP itself is local")

	// Shrink: the LB IP goes away.
	_, err = m.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}})
	require.NoError(t, err)
	assert.Equal(t, "local 10.96.0.0/16 dev lo scope host", ourRoutes(node, "-4"))
	assert.True(t, errors.Is(bind("203.0.113.10:80"), syscall.EADDRNOTAVAIL))

	require.NoError(t, m.Cleanup())
	assert.Empty(t, ourRoutes(node, "-4"), "nothing of ours is left")
	all := node.IP("route", "show", "table", "local")
	assert.Contains(t, all, "local 198.51.100.0/24 dev lo scope host", "the admin's route survives")
	assert.Contains(t, all, "local 192.168.91.1 dev eth0 proto kernel", "the kernel's routes survive")
	assert.True(t, errors.Is(bind("10.96.0.10:80"), syscall.EADDRNOTAVAIL))
}

// TestAnyIPv6 shows the IPv6 side: the route makes the range local for
// packets (and for sockets that may bind non-local addresses, which is how
// HAProxy binds IPv6 Service IPs, with `transparent`), and Cleanup leaves
// the IPv4 routes of the other family's Manager alone.
func TestAnyIPv6(t *testing.T) {
	k := netns.New(t)
	node := k.Namespace("node6")
	v4 := localaddr.New(node.Netlink(), v1.IPv4Protocol)
	v6 := localaddr.New(node.Netlink(), v1.IPv6Protocol)
	_, err := v4.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}})
	require.NoError(t, err)
	owned, err := v6.Reconcile(localaddr.Desired{
		CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:96::/112")},
		IPs:   []netip.Addr{netip.MustParseAddr("2001:db8::10")},
	})
	require.NoError(t, err)
	assert.Len(t, owned, 2)
	routes := ourRoutes(node, "-6")
	assert.Contains(t, routes, "local 2001:db8::10 dev lo ")
	assert.Contains(t, routes, "local fd00:10:96::/112 dev lo ")
	out := node.IP("-6", "route", "get", "fd00:10:96::5")
	assert.True(t, strings.HasPrefix(out, "local fd00:10:96::5 "), "route get says local: %s", out)

	require.NoError(t, v6.Cleanup())
	assert.Empty(t, ourRoutes(node, "-6"))
	assert.Equal(t, "local 10.96.0.0/16 dev lo scope host", ourRoutes(node, "-4"))
	require.NoError(t, v4.Cleanup())
	assert.Empty(t, ourRoutes(node, "-4"))
}
