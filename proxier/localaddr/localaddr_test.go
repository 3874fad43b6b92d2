package localaddr

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

func prefixes(ss ...string) []netip.Prefix {
	out := []netip.Prefix{}
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestReconcile(t *testing.T) {
	const kernel = netlink.RouteProtocol(unix.RTPROT_KERNEL)
	ours := "proto 66"
	tests := []struct {
		name    string
		family  v1.IPFamily
		foreign []netip.Prefix // local routes somebody else owns
		steps   []Desired
		// after the last step
		wantRoutes []string
		wantOwned  []netip.Prefix
	}{
		{
			name:       "nothing wanted, nothing added",
			family:     v1.IPv4Protocol,
			steps:      []Desired{{}},
			wantRoutes: nil,
			wantOwned:  prefixes(),
		},
		{
			name:       "a ServiceCIDR becomes one local route",
			family:     v1.IPv4Protocol,
			steps:      []Desired{{CIDRs: prefixes("10.96.0.0/16")}},
			wantRoutes: []string{"10.96.0.0/16 " + ours},
			wantOwned:  prefixes("10.96.0.0/16"),
		},
		{
			name:       "a CIDR given with host bits is masked",
			family:     v1.IPv4Protocol,
			steps:      []Desired{{CIDRs: prefixes("10.96.3.4/16")}},
			wantRoutes: []string{"10.96.0.0/16 " + ours},
			wantOwned:  prefixes("10.96.0.0/16"),
		},
		{
			name:   "an LB IP outside the CIDRs gets a /32, one inside does not",
			family: v1.IPv4Protocol,
			steps: []Desired{{
				CIDRs: prefixes("10.96.0.0/16"),
				IPs:   addrs("203.0.113.10", "10.96.5.5", "203.0.113.10"),
			}},
			wantRoutes: []string{"10.96.0.0/16 " + ours, "203.0.113.10/32 " + ours},
			wantOwned:  prefixes("10.96.0.0/16", "203.0.113.10/32"),
		},
		{
			name:    "an external IP that is already a node address is left alone",
			family:  v1.IPv4Protocol,
			foreign: prefixes("192.168.1.5/32"),
			steps: []Desired{{
				CIDRs: prefixes("10.96.0.0/16"),
				IPs:   addrs("192.168.1.5"),
			}},
			wantRoutes: []string{"10.96.0.0/16 " + ours, "192.168.1.5/32 proto 2"},
			wantOwned:  prefixes("10.96.0.0/16"),
		},
		{
			name:       "a CIDR already local through somebody else's route is not added again",
			family:     v1.IPv4Protocol,
			foreign:    prefixes("10.0.0.0/8"),
			steps:      []Desired{{CIDRs: prefixes("10.96.0.0/16", "172.30.0.0/16")}},
			wantRoutes: []string{"10.0.0.0/8 proto 2", "172.30.0.0/16 " + ours},
			wantOwned:  prefixes("172.30.0.0/16"),
		},
		{
			name:    "routes no longer wanted are removed, others' stay",
			family:  v1.IPv4Protocol,
			foreign: prefixes("192.168.1.5/32", "198.51.100.0/24"),
			steps: []Desired{
				{CIDRs: prefixes("10.96.0.0/16", "10.97.0.0/16"), IPs: addrs("203.0.113.10", "203.0.113.11")},
				{CIDRs: prefixes("10.96.0.0/16"), IPs: addrs("203.0.113.11")},
			},
			wantRoutes: []string{
				"10.96.0.0/16 " + ours,
				"192.168.1.5/32 proto 2",
				"198.51.100.0/24 proto 2",
				"203.0.113.11/32 " + ours,
			},
			wantOwned: prefixes("10.96.0.0/16", "203.0.113.11/32"),
		},
		{
			name:   "reconcile is idempotent",
			family: v1.IPv4Protocol,
			steps: []Desired{
				{CIDRs: prefixes("10.96.0.0/16"), IPs: addrs("203.0.113.10")},
				{CIDRs: prefixes("10.96.0.0/16"), IPs: addrs("203.0.113.10")},
			},
			wantRoutes: []string{"10.96.0.0/16 " + ours, "203.0.113.10/32 " + ours},
			wantOwned:  prefixes("10.96.0.0/16", "203.0.113.10/32"),
		},
		{
			name:   "an IPv4 manager ignores IPv6 addresses",
			family: v1.IPv4Protocol,
			steps: []Desired{{
				CIDRs: prefixes("10.96.0.0/16", "fd00:10:96::/112"),
				IPs:   addrs("2001:db8::10", "::ffff:203.0.113.10"),
			}},
			wantRoutes: []string{"10.96.0.0/16 " + ours, "203.0.113.10/32 " + ours},
			wantOwned:  prefixes("10.96.0.0/16", "203.0.113.10/32"),
		},
		{
			name:   "an IPv6 manager uses /128 for single IPs",
			family: v1.IPv6Protocol,
			steps: []Desired{{
				CIDRs: prefixes("10.96.0.0/16", "fd00:10:96::/112"),
				IPs:   addrs("2001:db8::10", "203.0.113.10", "fd00:10:96::5"),
			}},
			wantRoutes: []string{"2001:db8::10/128 " + ours, "fd00:10:96::/112 " + ours},
			wantOwned:  prefixes("2001:db8::10/128", "fd00:10:96::/112"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := NewFake()
			for _, p := range tc.foreign {
				require.NoError(t, fake.AddForeignLocal(p, kernel))
			}
			m := New(fake, tc.family)
			var got []netip.Prefix
			for _, d := range tc.steps {
				planned, err := m.Plan(d)
				require.NoError(t, err)
				got, err = m.Reconcile(d)
				require.NoError(t, err)
				assert.Equal(t, planned, got, "Plan foretells Reconcile")
			}
			assert.Equal(t, tc.wantRoutes, fake.LocalRoutes())
			assert.Equal(t, tc.wantOwned, got, "Reconcile result")
			owned, err := m.Owned()
			require.NoError(t, err)
			if len(tc.wantOwned) == 0 {
				assert.Empty(t, owned)
			} else {
				assert.Equal(t, tc.wantOwned, owned)
			}
		})
	}
}

func TestCleanupRemovesOnlyOurRoutesOfOurFamily(t *testing.T) {
	fake := NewFake()
	require.NoError(t, fake.AddForeignLocal(netip.MustParsePrefix("192.168.1.5/32"), unix.RTPROT_KERNEL))
	v4 := New(fake, v1.IPv4Protocol)
	v6 := New(fake, v1.IPv6Protocol)
	_, err := v4.Reconcile(Desired{CIDRs: prefixes("10.96.0.0/16"), IPs: addrs("203.0.113.10")})
	require.NoError(t, err)
	_, err = v6.Reconcile(Desired{CIDRs: prefixes("fd00:10:96::/112")})
	require.NoError(t, err)

	require.NoError(t, v4.Cleanup())
	assert.Equal(t, []string{"192.168.1.5/32 proto 2", "fd00:10:96::/112 proto 66"}, fake.LocalRoutes())
	require.NoError(t, v6.Cleanup())
	assert.Equal(t, []string{"192.168.1.5/32 proto 2"}, fake.LocalRoutes())
	// Nothing left of ours: a second cleanup has nothing to do.
	require.NoError(t, v4.Cleanup())
}

func TestReconcileKeepsGoingAfterAnError(t *testing.T) {
	fake := NewFake()
	// A foreign route of another type (a broadcast route, say) with the
	// prefix we want: the kernel refuses our add with EEXIST.
	require.NoError(t, fake.RouteAdd(&netlink.Route{
		LinkIndex: 1, Dst: ipNet(netip.MustParsePrefix("203.0.113.10/32")),
		Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_BROADCAST, Protocol: unix.RTPROT_KERNEL,
	}))
	m := New(fake, v1.IPv4Protocol)
	got, err := m.Reconcile(Desired{CIDRs: prefixes("10.96.0.0/16"), IPs: addrs("203.0.113.10")})
	require.ErrorIs(t, err, unix.EEXIST)
	assert.ErrorContains(t, err, "203.0.113.10/32")
	assert.Equal(t, prefixes("10.96.0.0/16"), got)
	assert.Equal(t, []string{"10.96.0.0/16 proto 66"}, fake.LocalRoutes())
}

func TestFakeBehavesLikeTheKernel(t *testing.T) {
	fake := NewFake()
	p := netip.MustParsePrefix("10.96.0.0/16")
	require.NoError(t, fake.AddForeignLocal(p, unix.RTPROT_BOOT))
	assert.ErrorIs(t, fake.AddForeignLocal(p, 66), unix.EEXIST, "same table+dst is taken whatever the protocol")
	assert.ErrorIs(t, fake.RouteDel(&netlink.Route{Dst: ipNet(p), Table: unix.RT_TABLE_LOCAL, Protocol: 66}), unix.ESRCH,
		"delete narrowed by protocol does not remove another's route")
	assert.ErrorIs(t, fake.RouteDel(&netlink.Route{Dst: ipNet(p)}), unix.ESRCH, "main table has no such route")
	routes, err := fake.RouteListFiltered(netlink.FAMILY_V4, nil, 0)
	require.NoError(t, err)
	assert.Empty(t, routes, "without a table filter only the main table is listed")
	assert.ErrorIs(t, fake.RouteDel(&netlink.Route{Dst: ipNet(p), Table: unix.RT_TABLE_LOCAL}), unix.ESRCH,
		"an IPv4 delete without the route's scope matches nothing")
	require.NoError(t, fake.RouteDel(&netlink.Route{Dst: ipNet(p), Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_NOWHERE}))
	assert.Empty(t, fake.LocalRoutes())
	_, err = fake.LinkByName("eth0")
	assert.Error(t, err)
}
