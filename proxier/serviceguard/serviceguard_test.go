package serviceguard

import (
	"context"
	"net/netip"
	"slices"
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
	// Incremental updates append: the order of insertion is not the point.
	slices.Sort(out)
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
add chain ip kube-haproxy client-source { type route hook output priority -150 ; comment "connections HAProxy makes from a client's address, and replies of hostNetwork endpoints to them" ; }
add chain ip kube-haproxy client-source-return { type filter hook prerouting priority -150 ; comment "their replies: routed to HAProxy by the policy rule of mark 0x2000" ; }
add chain ip kube-haproxy service-dispatch { type filter hook prerouting priority -150 ; comment "TCP to HAProxy's dispatch listener, after the LoadBalancer source ranges" ; }
add chain ip kube-haproxy service-dispatch-bridged { type nat hook prerouting priority dstnat - 5 ; comment "TCP arriving through a bridge to HAProxy's dispatch listener, by NAT" ; }
add chain ip kube-haproxy service-ip-input { type filter hook input priority 0 ; comment "packets delivered locally to a Service IP" ; }
add chain ip kube-haproxy service-ip-output { type filter hook output priority -300 ; comment "node-local connections to served Service IP ports bypass conntrack" ; }
add set ip kube-haproxy firewall { type ipv4_addr . inet_service ; comment "LoadBalancer IP . port with loadBalancerSourceRanges" ; }
add set ip kube-haproxy firewall-allow { type ipv4_addr . inet_service . ipv4_addr ; flags interval ; comment "LoadBalancer IP . port . allowed source range" ; }
add set ip kube-haproxy node-port-ips { type ipv4_addr ; comment "nodePortAddresses: the only addresses NodePorts are served on, when set" ; }
add set ip kube-haproxy node-ports { type inet_service ; comment "TCP NodePorts HAProxy serves" ; }
add set ip kube-haproxy served-ports { type ipv4_addr . inet_proto . inet_service ; comment "Service IP . protocol . port pairs HAProxy serves" ; }
add set ip kube-haproxy service-ips { type ipv4_addr ; flags interval ; comment "ServiceCIDRs and the LoadBalancer and external IPs made local on this node" ; }
add rule ip kube-haproxy service-dispatch meta l4proto tcp ip daddr . tcp dport @firewall ip daddr . tcp dport . ip saddr != @firewall-allow counter drop comment "source outside loadBalancerSourceRanges"
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
		assert.Len(t, rules, 6, "step %d: the chain is rewritten, not appended to", i)
		rules, err = fake.ListRules(ctx, OutputChain)
		require.NoError(t, err)
		assert.Len(t, rules, 2, "step %d: the output chain is rewritten, not appended to", i)
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

// dispatching is a Desired with everything the dispatch chain uses.
func dispatching() Desired {
	return Desired{
		ServiceIPs: prefixes("10.96.0.0/16", "203.0.113.10/32"),
		Served: []Binding{
			bind("10.96.0.10", v1.ProtocolTCP, 80),
			bind("10.96.0.53", v1.ProtocolUDP, 53),
			bind("203.0.113.10", v1.ProtocolTCP, 443),
		},
		Dispatch:  netip.MustParseAddrPort("127.0.0.1:10400"),
		NodePorts: []uint16{30443, 30080, 30080},
		Firewall: []FirewallEntry{{
			IP: netip.MustParseAddr("203.0.113.10"), Port: 443,
			Allowed: prefixes("192.168.0.0/16", "192.168.7.0/24", "198.51.100.7/32", "2001:db8::/32"),
		}},
	}
}

func TestSyncWritesTheDispatchChain(t *testing.T) {
	g, fake := newFakeGuard(v1.IPv4Protocol)
	require.NoError(t, g.Sync(context.Background(), dispatching()))
	dump := fake.Dump()
	// In order: the firewall drops (bridged or not), IPv4 arriving through
	// a bridge leaves the TPROXY chain, then served triples and NodePorts
	// go to HAProxy. The bridged ones are redirected by NAT to the same
	// port, on the address of the bridge they came in on.
	want := `
add rule ip kube-haproxy service-dispatch meta l4proto tcp ip daddr . tcp dport @firewall ip daddr . tcp dport . ip saddr != @firewall-allow counter drop comment "source outside loadBalancerSourceRanges"
add rule ip kube-haproxy service-dispatch meta iifkind "bridge" return comment "IPv4 through a bridge: redirected by NAT in service-dispatch-bridged"
add rule ip kube-haproxy service-dispatch meta l4proto tcp ip daddr . meta l4proto . th dport @served-ports tproxy to 127.0.0.1:10400 comment "served Service IP:port"
add rule ip kube-haproxy service-dispatch meta l4proto tcp ip daddr != @service-ips fib daddr type local tcp dport @node-ports tproxy to 127.0.0.1:10400 comment "NodePort on a local address"
add rule ip kube-haproxy service-dispatch-bridged meta iifkind "bridge" meta l4proto tcp ip daddr . meta l4proto . th dport @served-ports redirect to :10400 comment "served Service IP:port, from a bridge"
add rule ip kube-haproxy service-dispatch-bridged meta iifkind "bridge" meta l4proto tcp ip daddr != @service-ips fib daddr type local tcp dport @node-ports redirect to :10400 comment "NodePort on a local address, from a bridge"
`
	assert.Contains(t, dump, strings.TrimPrefix(want, "\n"))
	assert.Equal(t, []string{"203.0.113.10 . 443"}, elements(t, fake, FirewallSet))
	assert.Equal(t, []string{"203.0.113.10 . 443 . 192.168.0.0/16", "203.0.113.10 . 443 . 198.51.100.7"},
		elements(t, fake, FirewallAllowSet), "a range inside another collapses (the kernel refuses overlaps), IPv6 ranges belong to the other table")
	assert.Equal(t, []string{"30080", "30443"}, elements(t, fake, NodePortsSet))
	assert.Empty(t, elements(t, fake, NodePortIPsSet))
	assert.Contains(t, elements(t, fake, ServedPortsSet), "10.96.0.53 . udp . 53",
		"UDP stays in served-ports for the input guard; the tproxy rule only takes TCP")
}

func TestNodePortAddresses(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := dispatching()
	d.NodePortAddresses = []netip.Addr{netip.MustParseAddr("192.168.95.1"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("192.168.95.1")}
	require.NoError(t, g.Sync(ctx, d))
	assert.Contains(t, fake.Dump(), "service-dispatch meta l4proto tcp ip daddr @node-port-ips tcp dport @node-ports tproxy to 127.0.0.1:10400")
	assert.Contains(t, fake.Dump(), `service-dispatch-bridged meta iifkind "bridge" meta l4proto tcp ip daddr @node-port-ips tcp dport @node-ports redirect to :10400`)
	assert.NotContains(t, fake.Dump(), "fib daddr type local tcp dport @node-ports", "neither TPROXY nor NAT serves NodePorts elsewhere")
	assert.Equal(t, []string{"192.168.95.1"}, elements(t, fake, NodePortIPsSet))

	// The IPv6 guard gets a list with no IPv6 address: its NodePorts are
	// served nowhere, not everywhere.
	g6, fake6 := newFakeGuard(v1.IPv6Protocol)
	d.Dispatch = netip.MustParseAddrPort("[::1]:10400")
	d.NodePortAddresses = []netip.Addr{netip.MustParseAddr("192.168.95.1")}
	require.NoError(t, g6.Sync(ctx, d))
	assert.Contains(t, fake6.Dump(), "service-dispatch meta l4proto tcp ip6 daddr @node-port-ips tcp dport @node-ports tproxy to [::1]:10400")
	assert.Empty(t, elements(t, fake6, NodePortIPsSet))
}

// TestBridgedChainFollowsTheDispatch: the IPv4 NAT chain for connections
// arriving through a bridge is always declared, holds rules only while
// there is a dispatch address, and only the IPv4 table has it.
func TestBridgedChainFollowsTheDispatch(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := dispatching()
	d.Dispatch = netip.AddrPort{}
	require.NoError(t, g.Sync(ctx, d))
	rules, err := fake.ListRules(ctx, BridgedChain)
	require.NoError(t, err, "the chain is declared without dispatch too")
	assert.Empty(t, rules)
	assert.NotContains(t, fake.Dump(), "redirect")

	d.Dispatch = netip.MustParseAddrPort("127.0.0.1:10400")
	require.NoError(t, g.Sync(ctx, d))
	rules, err = fake.ListRules(ctx, BridgedChain)
	require.NoError(t, err)
	require.Len(t, rules, 2)
	for _, r := range rules {
		assert.True(t, strings.HasPrefix(r.Rule, `meta iifkind "bridge" `), "only bridged packets: %s", r.Rule)
		assert.True(t, strings.HasSuffix(r.Rule, "redirect to :10400"), "to the dispatch port, on the bridge's address: %s", r.Rule)
	}

	// The dispatch goes away again: the chain empties.
	d.Dispatch = netip.AddrPort{}
	require.NoError(t, g.Sync(ctx, d))
	rules, err = fake.ListRules(ctx, BridgedChain)
	require.NoError(t, err)
	assert.Empty(t, rules)

	// IPv6: TPROXY only (HAProxy 2.6 does not read the original
	// destination of a redirected IPv6 connection).
	g6, fake6 := newFakeGuard(v1.IPv6Protocol)
	d6 := dispatching()
	d6.Dispatch = netip.MustParseAddrPort("[::1]:10400")
	require.NoError(t, g6.Sync(ctx, d6))
	for _, s := range []string{BridgedChain, "iifkind", "redirect", "nat"} {
		assert.NotContains(t, fake6.Dump(), s)
	}
}

func TestWithoutDispatchOnlyTheFirewallIsInTheChain(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := dispatching()
	d.Dispatch = netip.AddrPort{}
	require.NoError(t, g.Sync(ctx, d))
	rules, err := fake.ListRules(ctx, DispatchChain)
	require.NoError(t, err)
	require.Len(t, rules, 1)
	assert.NotContains(t, fake.Dump(), "tproxy")

	// Turning dispatch on rewrites the chain: the firewall, the bridge's
	// return, the ClusterIP and NodePort TPROXY rules.
	d.Dispatch = netip.MustParseAddrPort("127.0.0.1:10400")
	require.NoError(t, g.Sync(ctx, d))
	rules, err = fake.ListRules(ctx, DispatchChain)
	require.NoError(t, err)
	assert.Len(t, rules, 4)

	// IPv6 has no bridge's return.
	g6, fake6 := newFakeGuard(v1.IPv6Protocol)
	d.Dispatch = netip.MustParseAddrPort("[::1]:10400")
	require.NoError(t, g6.Sync(ctx, d))
	rules, err = fake6.ListRules(ctx, DispatchChain)
	require.NoError(t, err)
	assert.Len(t, rules, 3)
}

func TestDispatchOfTheOtherFamilyIsAnError(t *testing.T) {
	g, _ := newFakeGuard(v1.IPv6Protocol)
	err := g.Sync(context.Background(), Desired{Dispatch: netip.MustParseAddrPort("127.0.0.1:10400")})
	assert.ErrorContains(t, err, "dispatch address 127.0.0.1:10400")
	g, _ = newFakeGuard(v1.IPv4Protocol)
	err = g.Sync(context.Background(), Desired{Dispatch: netip.MustParseAddrPort("127.0.0.1:0")})
	assert.Error(t, err, "port 0")
}

func TestFirewallEntries(t *testing.T) {
	g, fake := newFakeGuard(v1.IPv4Protocol)
	lb := netip.MustParseAddr("203.0.113.10")
	require.NoError(t, g.Sync(context.Background(), Desired{Firewall: []FirewallEntry{
		// Two entries for one IP:port add up.
		{IP: lb, Port: 80, Allowed: prefixes("10.0.0.0/8")},
		{IP: lb, Port: 80, Allowed: prefixes("10.1.0.0/16", "172.16.0.0/12")},
		// No range of this family: every source is dropped.
		{IP: lb, Port: 443, Allowed: prefixes("2001:db8::/32")},
		// An IPv4-mapped address is IPv4.
		{IP: netip.MustParseAddr("::ffff:203.0.113.11"), Port: 80, Allowed: prefixes("::ffff:10.0.0.0/104")},
		{IP: netip.MustParseAddr("2001:db8::10"), Port: 80, Allowed: prefixes("10.0.0.0/8")},
	}}))
	assert.Equal(t, []string{"203.0.113.10 . 443", "203.0.113.10 . 80", "203.0.113.11 . 80"}, elements(t, fake, FirewallSet))
	assert.Equal(t, []string{
		"203.0.113.10 . 80 . 10.0.0.0/8",
		"203.0.113.10 . 80 . 172.16.0.0/12",
		"203.0.113.11 . 80 . 10.0.0.0/8",
	}, elements(t, fake, FirewallAllowSet))
}

// TestAChangeIsASetUpdate: once the table is in place, a change deletes and
// adds the elements that differ and leaves the rules (and their counters)
// alone.
func TestAChangeIsASetUpdate(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := dispatching()
	require.NoError(t, g.Sync(ctx, d))

	d.Served = append(d.Served[1:], bind("10.96.0.11", v1.ProtocolTCP, 8080))
	d.NodePorts = []uint16{30443, 30081}
	d.Firewall[0].Allowed = prefixes("192.168.7.0/24")
	d.ServiceIPs = prefixes("10.96.0.0/12", "203.0.113.10/32")
	require.NoError(t, g.Sync(ctx, d))
	want := `
delete element ip kube-haproxy service-ips { 10.96.0.0/16 }
delete element ip kube-haproxy served-ports { 10.96.0.10 . tcp . 80 }
delete element ip kube-haproxy node-ports { 30080 }
delete element ip kube-haproxy firewall-allow { 203.0.113.10 . 443 . 192.168.0.0/16 }
delete element ip kube-haproxy firewall-allow { 203.0.113.10 . 443 . 198.51.100.7 }
add element ip kube-haproxy service-ips { 10.96.0.0/12 }
add element ip kube-haproxy served-ports { 10.96.0.11 . tcp . 8080 }
add element ip kube-haproxy node-ports { 30081 }
add element ip kube-haproxy firewall-allow { 203.0.113.10 . 443 . 192.168.7.0/24 }
`
	assert.Equal(t, strings.TrimPrefix(want, "\n"), fake.LastTransaction.String())
	assert.Equal(t, []string{"10.96.0.11 . tcp . 8080", "10.96.0.53 . udp . 53", "203.0.113.10 . tcp . 443"}, elements(t, fake, ServedPortsSet))

	// Nothing changed: nothing is written.
	before := fake.LastTransaction
	require.NoError(t, g.Sync(ctx, d))
	assert.Same(t, before, fake.LastTransaction)
}

// TestElementsChangedBehindItsBack: a set flushed by somebody else makes
// the update's deletes fail; the Sync then rewrites the whole table.
func TestElementsChangedBehindItsBack(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	d := dispatching()
	require.NoError(t, g.Sync(ctx, d))
	want := fake.Dump()

	tx := fake.NewTransaction()
	tx.Flush(&knftables.Set{Name: ServedPortsSet})
	require.NoError(t, fake.Run(ctx, tx))

	d.NodePorts = append(d.NodePorts, 30099)
	d.Served = d.Served[:2]
	require.NoError(t, g.Sync(ctx, d))
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80", "10.96.0.53 . udp . 53"}, elements(t, fake, ServedPortsSet))
	assert.Contains(t, elements(t, fake, NodePortsSet), "30099")

	d = dispatching()
	require.NoError(t, g.Sync(ctx, d))
	assert.Equal(t, want, fake.Dump())
}

func TestIPv6Dispatch(t *testing.T) {
	g, fake := newFakeGuard(v1.IPv6Protocol)
	require.NoError(t, g.Sync(context.Background(), Desired{
		ServiceIPs: prefixes("fd00:10:96::/112"),
		Served:     []Binding{bind("fd00:10:96::a", v1.ProtocolTCP, 80)},
		Dispatch:   netip.MustParseAddrPort("[::1]:10400"),
		NodePorts:  []uint16{30080},
		Firewall: []FirewallEntry{{IP: netip.MustParseAddr("2001:db8::10"), Port: 443,
			Allowed: prefixes("2001:db8:1::/48", "10.0.0.0/8")}},
	}))
	dump := fake.Dump()
	assert.Contains(t, dump, "add set ip6 kube-haproxy firewall-allow { type ipv6_addr . inet_service . ipv6_addr ; flags interval ;")
	assert.Contains(t, dump, "service-dispatch meta l4proto tcp ip6 daddr . tcp dport @firewall ip6 daddr . tcp dport . ip6 saddr != @firewall-allow counter drop")
	assert.Contains(t, dump, "service-dispatch meta l4proto tcp ip6 daddr . meta l4proto . th dport @served-ports tproxy to [::1]:10400")
	assert.Contains(t, dump, "service-dispatch meta l4proto tcp ip6 daddr != @service-ips fib daddr type local tcp dport @node-ports tproxy to [::1]:10400")
	assert.Equal(t, []string{"2001:db8::10 . 443 . 2001:db8:1::/48"}, elements(t, fake, FirewallAllowSet))
}

func TestSyncRepairsAFlushedDispatchChain(t *testing.T) {
	ctx := context.Background()
	g, fake := newFakeGuard(v1.IPv4Protocol)
	require.NoError(t, g.Sync(ctx, dispatching()))
	want := fake.Dump()
	tx := fake.NewTransaction()
	tx.Flush(&knftables.Chain{Name: DispatchChain})
	require.NoError(t, fake.Run(ctx, tx))
	require.NoError(t, g.Sync(ctx, dispatching()))
	assert.Equal(t, want, fake.Dump(), "an unchanged Sync refills the dispatch chain")

	// Someone flushes the bridged NAT chain: pods on a bridge would
	// reach no Service.
	tx = fake.NewTransaction()
	tx.Flush(&knftables.Chain{Name: BridgedChain})
	require.NoError(t, fake.Run(ctx, tx))
	require.NotEqual(t, want, fake.Dump())
	require.NoError(t, g.Sync(ctx, dispatching()))
	assert.Equal(t, want, fake.Dump(), "an unchanged Sync refills the bridged chain")

	// Or deletes it.
	tx = fake.NewTransaction()
	tx.Delete(&knftables.Chain{Name: BridgedChain})
	require.NoError(t, fake.Run(ctx, tx))
	require.NoError(t, g.Sync(ctx, dispatching()))
	assert.Equal(t, want, fake.Dump(), "an unchanged Sync declares the bridged chain again")
}
