package hostnet

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

type fakes struct {
	routes *localaddr.Fake
	nft    *knftables.Fake
	host   *Host
}

func newFakes(t *testing.T) *fakes {
	routes := localaddr.NewFake()
	// The node's own address, as the kernel adds it.
	require.NoError(t, routes.AddForeignLocal(netip.MustParsePrefix("192.168.95.1/32"), unix.RTPROT_KERNEL))
	nft := knftables.NewFake(serviceguard.NFTFamily(v1.IPv4Protocol), serviceguard.TableName)
	return &fakes{
		routes: routes,
		nft:    nft,
		host: NewWith(localaddr.New(routes, v1.IPv4Protocol),
			serviceguard.NewWithInterface(nft, v1.IPv4Protocol)),
	}
}

// ourRoutes lists the routes this package's managers own.
func (f *fakes) ourRoutes() []string {
	var out []string
	for _, r := range f.routes.LocalRoutes() {
		if strings.HasSuffix(r, " proto 66") {
			out = append(out, strings.TrimSuffix(r, " proto 66"))
		}
	}
	return out
}

func (f *fakes) set(t *testing.T, name string) []string {
	t.Helper()
	els, err := f.nft.ListElements(context.Background(), "set", name)
	require.NoError(t, err)
	var out []string
	for _, e := range els {
		out = append(out, strings.Join(e.Key, " . "))
	}
	slices.Sort(out)
	return out
}

// desired serves one Service on its ClusterIP and LB IP, port 80, with a
// NodePort, like the proxier builds it.
func desired(cidrs []netip.Prefix, lbIP string) Desired {
	return Desired{
		ServiceCIDRs: cidrs,
		Served: []serviceguard.Binding{
			{IP: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80},
			{IP: netip.MustParseAddr(lbIP), Protocol: v1.ProtocolTCP, Port: 80},
		},
		Dispatch:  netip.MustParseAddrPort("127.0.0.1:10400"),
		NodePorts: []uint16{30080},
		Firewall: []serviceguard.FirewallEntry{
			{IP: netip.MustParseAddr(lbIP), Port: 80, Allowed: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}},
		},
	}
}

var cidrs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}

func TestSyncRoutesAndGuardsServiceIPsOnly(t *testing.T) {
	f := newFakes(t)
	d := desired(cidrs, "203.0.113.10")
	// An external IP that is the node's own address.
	d.Served = append(d.Served, serviceguard.Binding{IP: netip.MustParseAddr("192.168.95.1"), Protocol: v1.ProtocolTCP, Port: 8080})
	require.NoError(t, f.host.Sync(context.Background(), d))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10"}, f.set(t, serviceguard.ServiceIPsSet),
		"the node address is not guarded: its other ports stay open")
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80", "192.168.95.1 . tcp . 8080", "203.0.113.10 . tcp . 80"},
		f.set(t, serviceguard.ServedPortsSet), "served, so dispatched, also on the node address")
	assert.Equal(t, []string{"30080"}, f.set(t, serviceguard.NodePortsSet))
	assert.Equal(t, []string{"203.0.113.10 . 80 . 192.168.0.0/16"}, f.set(t, serviceguard.FirewallAllowSet))
	assert.Contains(t, f.nft.Dump(), "tproxy to 127.0.0.1:10400")
}

func TestPrepareThenFinish(t *testing.T) {
	ctx := context.Background()
	f := newFakes(t)
	old := desired(cidrs, "203.0.113.10")
	require.NoError(t, f.host.Sync(ctx, old))

	// The LB IP changes. Before HAProxy's maps change, the old and the new
	// one are both local (HAProxy still serves the old), guarded,
	// dispatched and firewalled.
	next := desired(cidrs, "203.0.113.20")
	require.NoError(t, f.host.Prepare(ctx, next))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10/32", "203.0.113.20/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10", "203.0.113.20"}, f.set(t, serviceguard.ServiceIPsSet))
	served := f.set(t, serviceguard.ServedPortsSet)
	assert.Contains(t, served, "203.0.113.10 . tcp . 80")
	assert.Contains(t, served, "203.0.113.20 . tcp . 80")
	assert.Equal(t, []string{"203.0.113.10 . 80", "203.0.113.20 . 80"}, f.set(t, serviceguard.FirewallSet),
		"the old LB IP keeps its source ranges while it is served")

	require.NoError(t, f.host.Finish(ctx, next))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20"}, f.set(t, serviceguard.ServiceIPsSet))
	assert.NotContains(t, f.set(t, serviceguard.ServedPortsSet), "203.0.113.10 . tcp . 80")
	assert.Equal(t, []string{"203.0.113.20 . 80"}, f.set(t, serviceguard.FirewallSet))

	require.NoError(t, f.host.Cleanup(ctx))
	assert.Empty(t, f.ourRoutes())
	assert.Equal(t, []string{"192.168.95.1/32 proto 2"}, f.routes.LocalRoutes())
	assert.Empty(t, f.nft.Dump())
}

func TestWithoutServiceCIDRsEachClusterIPGetsItsOwnRoute(t *testing.T) {
	// Before the ServiceCIDRs are known (or with none), the binds alone
	// still make every Service IP local and guarded.
	f := newFakes(t)
	require.NoError(t, f.host.Sync(context.Background(), desired(nil, "203.0.113.10")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.10", "203.0.113.10"}, f.set(t, serviceguard.ServiceIPsSet))
}

func TestPrepareServesOldAndNewNodePorts(t *testing.T) {
	ctx := context.Background()
	f := newFakes(t)
	old := desired(cidrs, "203.0.113.10")
	require.NoError(t, f.host.Sync(ctx, old))

	next := desired(cidrs, "203.0.113.10")
	next.NodePorts = []uint16{30081}
	// New source ranges apply at once: they do not depend on HAProxy.
	next.Firewall[0].Allowed = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	require.NoError(t, f.host.Prepare(ctx, next))
	assert.Equal(t, []string{"30080", "30081"}, f.set(t, serviceguard.NodePortsSet))
	assert.Equal(t, []string{"203.0.113.10 . 80 . 10.0.0.0/8"}, f.set(t, serviceguard.FirewallAllowSet))
	require.NoError(t, f.host.Finish(ctx, next))
	assert.Equal(t, []string{"30081"}, f.set(t, serviceguard.NodePortsSet))
}

func TestFirstPrepareKeepsNodePortAddresses(t *testing.T) {
	// The Host starts from the zero Desired, whose empty NodePortAddresses
	// would mean "every address": it has no NodePorts, so it has no say.
	f := newFakes(t)
	d := desired(cidrs, "203.0.113.10")
	d.NodePortAddresses = []netip.Addr{netip.MustParseAddr("192.168.95.1")}
	require.NoError(t, f.host.Prepare(context.Background(), d))
	dump := f.nft.Dump()
	assert.Contains(t, dump, "ip daddr @node-port-ips tcp dport @node-ports tproxy to 127.0.0.1:10400")
	assert.Contains(t, dump, "ip daddr @node-port-ips tcp dport @node-ports redirect to :10400", "bridged IPv4, by NAT")
	assert.NotContains(t, dump, "fib daddr type local tcp dport @node-ports", "neither TPROXY nor NAT serves every address")
	assert.Equal(t, []string{"192.168.95.1"}, f.set(t, serviceguard.NodePortIPsSet))
}

func TestUnion(t *testing.T) {
	a := desired(cidrs, "203.0.113.10")
	b := desired(cidrs, "203.0.113.20")
	b.Dispatch = netip.AddrPort{}
	a.NodePortAddresses = []netip.Addr{netip.MustParseAddr("192.168.95.1")}
	u := union(a, b)
	assert.Equal(t, a.Dispatch, u.Dispatch, "a zero dispatch does not turn dispatch off in between")
	assert.Empty(t, u.NodePortAddresses, "one side serves NodePorts everywhere, so does the union")
	b.NodePortAddresses = []netip.Addr{netip.MustParseAddr("192.168.95.2")}
	assert.Len(t, union(a, b).NodePortAddresses, 2)
	b.NodePorts = nil
	assert.Equal(t, a.NodePortAddresses, union(a, b).NodePortAddresses)
}
