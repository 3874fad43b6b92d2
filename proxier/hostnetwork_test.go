package proxier

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// hostState is what a node's routes and guard look like, from the fakes.
type hostState struct {
	routes *localaddr.Fake
	nft    *knftables.Fake
}

func (s hostState) ourRoutes() []string {
	var out []string
	for _, r := range s.routes.LocalRoutes() {
		if p, ok := strings.CutSuffix(r, " proto 66"); ok {
			out = append(out, p)
		}
	}
	return out
}

func (s hostState) set(t *testing.T, name string) []string {
	t.Helper()
	els, err := s.nft.ListElements(context.Background(), "set", name)
	require.NoError(t, err)
	var out []string
	for _, e := range els {
		out = append(out, strings.Join(e.Key, " . "))
	}
	return out
}

// observingApplier calls observe with each model, as HAProxy would be
// given it, and fails when fail is set.
type observingApplier struct {
	observe func(*haproxycfg.Config)
	fail    error
}

func (o *observingApplier) Apply(_ context.Context, _ v1.IPFamily, desired *haproxycfg.Config) error {
	if o.observe != nil {
		o.observe(desired)
	}
	return o.fail
}

func webModel(lbIP string) *haproxycfg.Config {
	return &haproxycfg.Config{Frontends: []*haproxycfg.Frontend{{
		Name: "default.web:http",
		Binds: []haproxycfg.Bind{
			{Name: "cluster-ip", Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
			{Name: "lb", Addr: netip.MustParseAddr(lbIP), Port: 80},
			{Name: "node-port", Addr: netip.IPv4Unspecified(), Port: 30080},
		},
	}}}
}

func newObservedHostNetwork(next Applier) (*hostNetworkApplier, hostState) {
	s := hostState{
		routes: localaddr.NewFake(),
		nft:    knftables.NewFake(serviceguard.NFTFamily(v1.IPv4Protocol), serviceguard.TableName),
	}
	a := withHostNetwork(next)
	a.newHost = func(family v1.IPFamily) (*hostnet.Host, error) {
		return hostnet.NewWith(localaddr.New(s.routes, family), serviceguard.NewWithInterface(s.nft, family)), nil
	}
	return a, s
}

func TestHostNetworkIsReadyBeforeHAProxyBinds(t *testing.T) {
	ctx := context.Background()
	next := &observingApplier{}
	a, s := newObservedHostNetwork(next)

	var atApply struct{ routes, guarded, served []string }
	next.observe = func(*haproxycfg.Config) {
		atApply.routes = s.ourRoutes()
		atApply.guarded = s.set(t, serviceguard.ServiceIPsSet)
		atApply.served = s.set(t, serviceguard.ServedPortsSet)
	}
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")))
	// Without ServiceCIDRs each Service IP gets its own route, and all
	// of it was in place when HAProxy got the model.
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, atApply.routes)
	assert.Equal(t, []string{"10.96.0.10", "203.0.113.10"}, atApply.guarded)
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80", "203.0.113.10 . tcp . 80"}, atApply.served)

	// The ServiceCIDRs arrive and the LB IP moves: during the Apply both
	// LB IPs are local and guarded, afterwards only the new one. The
	// ClusterIP's own route gave way to the range's (added first, so the
	// address never stopped being local).
	a.SetServiceCIDRs(v1.IPv4Protocol, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")})
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20")))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10/32", "203.0.113.20/32"}, atApply.routes)
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10", "203.0.113.20"}, atApply.guarded)
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20/32"}, s.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20"}, s.set(t, serviceguard.ServiceIPsSet))
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80", "203.0.113.20 . tcp . 80"}, s.set(t, serviceguard.ServedPortsSet))
}

func TestHostNetworkKeepsTheOldIPsWhenApplyFails(t *testing.T) {
	ctx := context.Background()
	next := &observingApplier{}
	a, s := newObservedHostNetwork(next)
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")))

	next.fail = errors.New("haproxy -c: bad config")
	err := a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20"))
	require.ErrorIs(t, err, next.fail)
	// HAProxy still serves the old model: its LB IP stays local and served.
	assert.Contains(t, s.ourRoutes(), "203.0.113.10/32")
	assert.Contains(t, s.set(t, serviceguard.ServedPortsSet), "203.0.113.10 . tcp . 80")

	next.fail = nil
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.20/32"}, s.ourRoutes())
}

func TestHostNetworkPassesServiceCIDRsOn(t *testing.T) {
	inner := &cidrRecorder{}
	a := withHostNetwork(inner)
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	a.SetServiceCIDRs(v1.IPv4Protocol, cidrs)
	assert.Equal(t, cidrs, inner.got[v1.IPv4Protocol])
}

type cidrRecorder struct {
	observingApplier
	got map[v1.IPFamily][]netip.Prefix
}

func (c *cidrRecorder) SetServiceCIDRs(family v1.IPFamily, cidrs []netip.Prefix) {
	if c.got == nil {
		c.got = map[v1.IPFamily][]netip.Prefix{}
	}
	c.got[family] = cidrs
}

func TestHostNetworkLeavesTheHostAloneAfterShutdown(t *testing.T) {
	next := &observingApplier{}
	a, s := newObservedHostNetwork(next)
	called := false
	next.observe = func(*haproxycfg.Config) { called = true }
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")), context.Canceled)
	assert.Empty(t, s.ourRoutes())
	assert.Empty(t, s.nft.Dump())
	assert.False(t, called, "HAProxy is not given a model either")
}
