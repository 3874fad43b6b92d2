package hostnet

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

type dualFakes struct {
	routes *localaddr.Fake
	nft    map[v1.IPFamily]*knftables.Fake
	hooks  *Hooks
}

func newDualFakes() *dualFakes {
	f := &dualFakes{routes: localaddr.NewFake(), nft: map[v1.IPFamily]*knftables.Fake{}}
	for _, fam := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		f.nft[fam] = knftables.NewFake(serviceguard.NFTFamily(fam), serviceguard.TableName)
	}
	f.hooks = NewHooksWith(func(fam v1.IPFamily) (*Host, error) {
		return NewWith(localaddr.New(f.routes, fam), serviceguard.NewWithInterface(f.nft[fam], fam)), nil
	}, v1.IPv4Protocol, v1.IPv6Protocol)
	return f
}

func (f *dualFakes) ourRoutes() []string {
	var out []string
	for _, r := range f.routes.LocalRoutes() {
		if p, ok := strings.CutSuffix(r, " proto 66"); ok {
			out = append(out, p)
		}
	}
	return out
}

func (f *dualFakes) guarded(t *testing.T, fam v1.IPFamily) []string {
	t.Helper()
	els, err := f.nft[fam].ListElements(context.Background(), "set", serviceguard.ServiceIPsSet)
	require.NoError(t, err)
	var out []string
	for _, e := range els {
		out = append(out, strings.Join(e.Key, " . "))
	}
	return out
}

// mergedModel binds a ClusterIP of each family, and an LB IP.
func mergedModel(lbIP string) *haproxycfg.Config {
	return &haproxycfg.Config{Frontends: []*haproxycfg.Frontend{{
		Name: "default.web:http",
		Binds: []haproxycfg.Bind{
			{Name: "v4", Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
			{Name: "v6", Addr: netip.MustParseAddr("fd00:10:96::a"), Port: 80},
			{Name: "lb", Addr: netip.MustParseAddr(lbIP), Port: 80},
		},
	}}}
}

func TestHooksServeEveryFamilyOfTheMergedConfig(t *testing.T) {
	ctx := context.Background()
	f := newDualFakes()

	require.NoError(t, f.hooks.BeforeReload(ctx, mergedModel("203.0.113.10")))
	require.NoError(t, f.hooks.AfterReload(ctx, mergedModel("203.0.113.10")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32", "fd00:10:96::a/128"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.10", "203.0.113.10"}, f.guarded(t, v1.IPv4Protocol))
	assert.Equal(t, []string{"fd00:10:96::a"}, f.guarded(t, v1.IPv6Protocol))

	// ServiceCIDRs arriving without a reload take effect at once.
	require.NoError(t, f.hooks.SetServiceCIDRs(ctx, v1.IPv6Protocol, []netip.Prefix{netip.MustParsePrefix("fd00:10:96::/112")}))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32", "fd00:10:96::/112"}, f.ourRoutes())
	assert.Equal(t, []string{"fd00:10:96::/112"}, f.guarded(t, v1.IPv6Protocol))

	// An IPv6 LB IP replaces the IPv4 one: both are in place while the
	// reload runs, only the new one afterwards.
	next := mergedModel("2001:db8::10")
	require.NoError(t, f.hooks.BeforeReload(ctx, next))
	assert.Equal(t, []string{"10.96.0.10/32", "2001:db8::10/128", "203.0.113.10/32", "fd00:10:96::/112"}, f.ourRoutes())
	require.NoError(t, f.hooks.AfterReload(ctx, next))
	assert.Equal(t, []string{"10.96.0.10/32", "2001:db8::10/128", "fd00:10:96::/112"}, f.ourRoutes())
	assert.Equal(t, []string{"10.96.0.10"}, f.guarded(t, v1.IPv4Protocol))

	require.NoError(t, f.hooks.Cleanup(ctx))
	assert.Empty(t, f.ourRoutes())
	assert.Empty(t, f.nft[v1.IPv4Protocol].Dump())
	assert.Empty(t, f.nft[v1.IPv6Protocol].Dump())
}

func TestHooksOfOneFamilyLeaveTheOtherAlone(t *testing.T) {
	ctx := context.Background()
	f := newDualFakes()
	f.hooks = NewHooksWith(f.hooks.newHost, v1.IPv4Protocol)
	require.NoError(t, f.hooks.BeforeReload(ctx, mergedModel("203.0.113.10")))
	require.NoError(t, f.hooks.AfterReload(ctx, mergedModel("203.0.113.10")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, f.ourRoutes())
	assert.Empty(t, f.nft[v1.IPv6Protocol].Dump(), "no IPv6 table on an IPv4-only node")
	require.NoError(t, f.hooks.SetServiceCIDRs(ctx, v1.IPv6Protocol, []netip.Prefix{netip.MustParsePrefix("fd00:10:96::/112")}))
	assert.Empty(t, f.nft[v1.IPv6Protocol].Dump())
}
