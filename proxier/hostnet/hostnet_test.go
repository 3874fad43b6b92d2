package hostnet

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
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
	return out
}

func config(lbIP string) *haproxycfg.Config {
	return &haproxycfg.Config{Frontends: []*haproxycfg.Frontend{
		{Name: "default.web:http", Binds: []haproxycfg.Bind{
			{Name: "cluster-ip", Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
			{Name: "lb", Addr: netip.MustParseAddr(lbIP), Port: 80},
			{Name: "node-port", Addr: netip.MustParseAddr("192.168.95.1"), Port: 30080},
			{Name: "node-port-any", Addr: netip.IPv4Unspecified(), Port: 30081},
		}},
	}}
}

var cidrs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}

func TestFromConfigKeepsSpecificBinds(t *testing.T) {
	d := FromConfig(cidrs, config("203.0.113.10"))
	assert.Equal(t, cidrs, d.ServiceCIDRs)
	assert.Equal(t, []serviceguard.Binding{
		{IP: netip.MustParseAddr("10.96.0.10"), Protocol: v1.ProtocolTCP, Port: 80},
		{IP: netip.MustParseAddr("203.0.113.10"), Protocol: v1.ProtocolTCP, Port: 80},
		{IP: netip.MustParseAddr("192.168.95.1"), Protocol: v1.ProtocolTCP, Port: 30080},
	}, d.Binds)
}

func TestSyncRoutesAndGuardsServiceIPsOnly(t *testing.T) {
	f := newFakes(t)
	require.NoError(t, f.host.Sync(context.Background(), FromConfig(cidrs, config("203.0.113.10"))))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10"}, f.set(t, serviceguard.ServiceIPsSet),
		"the node address is not guarded: its other ports stay open")
	assert.Contains(t, f.set(t, serviceguard.ServedPortsSet), "10.96.0.10 . tcp . 80")
	assert.Contains(t, f.set(t, serviceguard.ServedPortsSet), "203.0.113.10 . tcp . 80")
}

func TestReloadOrder(t *testing.T) {
	ctx := context.Background()
	f := newFakes(t)
	old := FromConfig(cidrs, config("203.0.113.10"))
	require.NoError(t, f.host.Sync(ctx, old))

	// The LB IP changes. Before the reload the old and the new one are both
	// local (the running HAProxy still serves the old) and both guarded.
	next := FromConfig(cidrs, config("203.0.113.20"))
	require.NoError(t, f.host.BeforeReload(ctx, next))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10/32", "203.0.113.20/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10", "203.0.113.20"}, f.set(t, serviceguard.ServiceIPsSet))
	served := f.set(t, serviceguard.ServedPortsSet)
	assert.Contains(t, served, "203.0.113.10 . tcp . 80")
	assert.Contains(t, served, "203.0.113.20 . tcp . 80")

	require.NoError(t, f.host.AfterReload(ctx, next))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20"}, f.set(t, serviceguard.ServiceIPsSet))
	assert.NotContains(t, f.set(t, serviceguard.ServedPortsSet), "203.0.113.10 . tcp . 80")

	require.NoError(t, f.host.Cleanup(ctx))
	assert.Empty(t, f.ourRoutes())
	assert.Equal(t, []string{"192.168.95.1/32 proto 2"}, f.routes.LocalRoutes())
	assert.Empty(t, f.nft.Dump())
}

func TestWithoutServiceCIDRsEachClusterIPGetsItsOwnRoute(t *testing.T) {
	// Before the ServiceCIDRs are known (or with none), the binds alone
	// still make every Service IP local and guarded.
	f := newFakes(t)
	require.NoError(t, f.host.Sync(context.Background(), FromConfig(nil, config("203.0.113.10"))))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.10", "203.0.113.10"}, f.set(t, serviceguard.ServiceIPsSet))
}
