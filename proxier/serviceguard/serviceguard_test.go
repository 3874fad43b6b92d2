package serviceguard

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"
)

func newFakeGuard(family v1.IPFamily) (*Guard, *knftables.Fake) {
	fake := knftables.NewFake(NFTFamily(family), TableName)
	return NewWithInterface(fake, family), fake
}

func bind(ip string, proto v1.Protocol, port uint16) Binding {
	return Binding{IP: netip.MustParseAddr(ip), Protocol: proto, Port: port}
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// elements lists the keys of set name, each joined with " . ".
func elements(t *testing.T, fake *knftables.Fake, set string) []string {
	t.Helper()
	els, err := fake.ListElements(context.Background(), "set", set)
	require.NoError(t, err)
	out := []string{}
	for _, e := range els {
		out = append(out, strings.Join(e.Key, " . "))
	}
	return out
}

func TestSyncWritesTheWholeTable(t *testing.T) {
	g, fake := newFakeGuard(v1.IPv4Protocol)
	err := g.Sync(context.Background(), Desired{
		// The LB IP inside the ServiceCIDR and the duplicate CIDR collapse:
		// nftables refuses overlapping intervals. IPv6 entries belong to
		// the other family's table.
		ServiceIPs: prefixes("10.96.0.0/16", "203.0.113.10/32", "10.96.7.7/32", "10.96.0.0/16", "fd00::/108"),
		Served: []Binding{
			bind("10.96.0.10", v1.ProtocolTCP, 80),
			bind("203.0.113.10", v1.ProtocolTCP, 443),
			bind("10.96.0.10", v1.ProtocolTCP, 80),
			bind("10.96.0.53", v1.ProtocolUDP, 53),
			bind("fd00::10", v1.ProtocolTCP, 80),
		},
	})
	require.NoError(t, err)
	want := `
add table ip kube-haproxy { comment "kube-haproxy: only served Service IP:port pairs accept" ; }
add chain ip kube-haproxy service-ip-input { type filter hook input priority 0 ; comment "packets delivered locally to a Service IP" ; }
add chain ip kube-haproxy service-ip-output { type filter hook output priority -300 ; comment "node-local connections to served Service IP ports bypass conntrack" ; }
add set ip kube-haproxy served-ports { type ipv4_addr . inet_proto . inet_service ; comment "Service IP . protocol . port pairs HAProxy binds" ; }
add set ip kube-haproxy service-ips { type ipv4_addr ; flags interval ; comment "ServiceCIDRs and the LoadBalancer and external IPs made local on this node" ; }
add rule ip kube-haproxy service-ip-input ip daddr != @service-ips return comment "not a Service IP: not ours to filter"
add rule ip kube-haproxy service-ip-input ct state established,related accept
add rule ip kube-haproxy service-ip-input iif lo ct state untracked meta l4proto tcp ip saddr . meta l4proto . th sport @served-ports accept comment "HAProxy's reply to a node-local client"
add rule ip kube-haproxy service-ip-input ip daddr . meta l4proto . th dport @served-ports accept comment "served by HAProxy"
add rule ip kube-haproxy service-ip-input meta l4proto tcp counter reject with tcp reset comment "Service IP, port not served"
add rule ip kube-haproxy service-ip-input counter reject comment "Service IP, port not served"
add rule ip kube-haproxy service-ip-output ip daddr @service-ips meta l4proto tcp ip daddr . meta l4proto . th dport @served-ports notrack comment "node-local client to a port HAProxy serves"
add rule ip kube-haproxy service-ip-output ip saddr @service-ips meta l4proto tcp ip saddr . meta l4proto . th sport @served-ports fib daddr type local notrack comment "HAProxy's reply to a node-local client"
add element ip kube-haproxy served-ports { 10.96.0.10 . tcp . 80 }
add element ip kube-haproxy served-ports { 10.96.0.53 . udp . 53 }
add element ip kube-haproxy served-ports { 203.0.113.10 . tcp . 443 }
add element ip kube-haproxy service-ips { 10.96.0.0/16 }
add element ip kube-haproxy service-ips { 203.0.113.10 }
`
	assert.Equal(t, strings.TrimPrefix(want, "\n"), fake.Dump())
}

func TestSyncFollowsTheDesiredState(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	steps := []struct {
		desired    Desired
		wantRanges []string
		wantServed []string
	}{
		{
			desired: Desired{
				ServiceIPs: prefixes("10.96.0.0/16", "203.0.113.10/32"),
				Served:     []Binding{bind("10.96.0.10", v1.ProtocolTCP, 80), bind("203.0.113.10", v1.ProtocolTCP, 80)},
			},
			wantRanges: []string{"10.96.0.0/16", "203.0.113.10"},
			wantServed: []string{"10.96.0.10 . tcp . 80", "203.0.113.10 . tcp . 80"},
		},
		{
			// A Service goes away with its LB IP, another one appears.
			desired: Desired{
				ServiceIPs: prefixes("10.96.0.0/16"),
				Served:     []Binding{bind("10.96.0.10", v1.ProtocolTCP, 80), bind("10.96.0.11", v1.ProtocolSCTP, 9000)},
			},
			wantRanges: []string{"10.96.0.0/16"},
			wantServed: []string{"10.96.0.10 . tcp . 80", "10.96.0.11 . sctp . 9000"},
		},
		{
			// Nothing served: every Service IP rejects.
			desired:    Desired{ServiceIPs: prefixes("10.96.0.0/16")},
			wantRanges: []string{"10.96.0.0/16"},
			wantServed: []string{},
		},
	}
	for i, s := range steps {
		require.NoError(t, g.Sync(ctx, s.desired), "step %d", i)
		assert.Equal(t, s.wantRanges, elements(t, fake, ServiceIPsSet), "step %d", i)
		assert.Equal(t, s.wantServed, elements(t, fake, ServedPortsSet), "step %d", i)
		rules, err := fake.ListRules(ctx, InputChain)
		require.NoError(t, err)
		assert.Len(t, rules, inputRules, "step %d: the chain is rewritten, not appended to", i)
		rules, err = fake.ListRules(ctx, OutputChain)
		require.NoError(t, err)
		assert.Len(t, rules, outputRules, "step %d: the output chain is rewritten, not appended to", i)
	}
}

func TestSyncAfterTheTableWasDeletedBehindOurBack(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := Desired{ServiceIPs: prefixes("10.96.0.0/16"), Served: []Binding{bind("10.96.0.10", v1.ProtocolTCP, 80)}}
	require.NoError(t, g.Sync(ctx, d))
	require.NoError(t, g.Cleanup(ctx))
	require.NoError(t, g.Sync(ctx, d))
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80"}, elements(t, fake, ServedPortsSet),
		"after a Cleanup the same desired state is written again")
}

func TestIPv6(t *testing.T) {
	g, fake := newFakeGuard(v1.IPv6Protocol)
	require.NoError(t, g.Sync(context.Background(), Desired{
		ServiceIPs: prefixes("fd00:10:96::/112", "2001:db8::10/128", "10.96.0.0/16"),
		Served:     []Binding{bind("fd00:10:96::a", v1.ProtocolTCP, 80), bind("10.96.0.10", v1.ProtocolTCP, 80)},
	}))
	dump := fake.Dump()
	assert.Contains(t, dump, "add set ip6 kube-haproxy served-ports { type ipv6_addr . inet_proto . inet_service ;")
	assert.Contains(t, dump, "ip6 daddr != @service-ips return")
	assert.Contains(t, dump, "ip6 daddr . meta l4proto . th dport @served-ports accept")
	assert.Contains(t, dump, "iif lo ct state untracked meta l4proto tcp ip6 saddr . meta l4proto . th sport @served-ports accept")
	assert.Contains(t, dump, "service-ip-output ip6 daddr @service-ips meta l4proto tcp ip6 daddr . meta l4proto . th dport @served-ports notrack")
	assert.Contains(t, dump, "service-ip-output ip6 saddr @service-ips meta l4proto tcp ip6 saddr . meta l4proto . th sport @served-ports fib daddr type local notrack")
	assert.Equal(t, []string{"2001:db8::10", "fd00:10:96::/112"}, elements(t, fake, ServiceIPsSet))
	assert.Equal(t, []string{"fd00:10:96::a . tcp . 80"}, elements(t, fake, ServedPortsSet))
}

func TestCleanup(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	require.NoError(t, g.Cleanup(ctx), "cleanup without a table")
	require.NoError(t, g.Sync(ctx, Desired{ServiceIPs: prefixes("10.96.0.0/16")}))
	require.NotEmpty(t, fake.Dump())
	require.NoError(t, g.Cleanup(ctx))
	assert.Empty(t, fake.Dump())
}

func TestSyncRepairsATableDeletedBehindItsBack(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := Desired{ServiceIPs: prefixes("10.96.0.0/16"), Served: []Binding{bind("10.96.0.10", v1.ProtocolTCP, 80)}}
	require.NoError(t, g.Sync(ctx, d))
	want := fake.Dump()

	// Someone runs "nft delete table ip kube-haproxy".
	tx := fake.NewTransaction()
	tx.Delete(&knftables.Table{})
	require.NoError(t, fake.Run(ctx, tx))
	require.Empty(t, fake.Dump())
	require.NoError(t, g.Sync(ctx, d))
	assert.Equal(t, want, fake.Dump(), "an unchanged Sync puts the table back")

	// Someone flushes the chain.
	tx = fake.NewTransaction()
	tx.Flush(&knftables.Chain{Name: InputChain})
	require.NoError(t, fake.Run(ctx, tx))
	require.NoError(t, g.Sync(ctx, d))
	assert.Equal(t, want, fake.Dump(), "an unchanged Sync refills the chain")
}

func TestSyncRepairsAFlushedOutputChain(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := Desired{ServiceIPs: prefixes("10.96.0.0/16"), Served: []Binding{bind("10.96.0.10", v1.ProtocolTCP, 80)}}
	require.NoError(t, g.Sync(ctx, d))
	want := fake.Dump()

	// Someone runs "nft flush chain ip kube-haproxy service-ip-output":
	// node-local clients of HAProxy would be tracked again, and rejected
	// by another table's checks of new connections.
	tx := fake.NewTransaction()
	tx.Flush(&knftables.Chain{Name: OutputChain})
	require.NoError(t, fake.Run(ctx, tx))
	require.NotEqual(t, want, fake.Dump())
	require.NoError(t, g.Sync(ctx, d))
	assert.Equal(t, want, fake.Dump(), "an unchanged Sync refills the output chain")
}
