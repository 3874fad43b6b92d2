package endpointcheck

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

var check = haproxycfg.EndpointCheck{Interval: 500 * time.Millisecond, Rise: 2, Fall: 2}

func target(ep string) Target { return Target{Endpoint: netip.MustParseAddrPort(ep), Check: check} }

func newChecker(t *testing.T) (*Checker, *runtimeapi.Fake, *int) {
	api := runtimeapi.NewFake()
	api.LoadBackend("checks-ipv4", true)
	changes := 0
	return New(api, "checks-ipv4", func() { changes++ }, logr.Discard()), api, &changes
}

// A target becomes a checked, ready server; one the checks find down is
// reported until it is up again; a target dropped loses its server.
func TestCheckerFollowsTargetsAndChecks(t *testing.T) {
	ctx := context.Background()
	c, api, changes := newChecker(t)
	a, b := target("10.244.1.5:8080"), target("[fd00::5]:8080")
	c.SetTargets([]Target{a, b})
	require.NoError(t, c.Poll(ctx))
	for _, tg := range []Target{a, b} {
		s := api.Server("checks-ipv4", tg.ServerName())
		require.NotNil(t, s, "server of %v", tg.Endpoint)
		assert.True(t, s.HealthEnabled, "checks enabled")
		assert.Equal(t, runtimeapi.StateReady, s.State())
		assert.Equal(t, tg.Endpoint.Addr().String(), s.Addr)
		assert.Equal(t, int(tg.Endpoint.Port()), s.Port)
		assert.Equal(t, []string{"check", "inter", "500ms", "fastinter", "250ms", "downinter", "500ms", "rise", "2", "fall", "2"}, s.Options)
		assert.False(t, c.Down(tg), "a new target is up")
	}
	assert.NotEqual(t, api.Server("checks-ipv4", a.ServerName()).ID, api.Server("checks-ipv4", b.ServerName()).ID)
	assert.Zero(t, *changes)

	require.NoError(t, api.SetCheckResult("checks-ipv4", a.ServerName(), true))
	require.NoError(t, c.Poll(ctx))
	assert.True(t, c.Down(a))
	assert.False(t, c.Down(b))
	assert.Equal(t, 1, *changes)
	require.NoError(t, c.Poll(ctx))
	assert.Equal(t, 1, *changes, "no change, no call")

	require.NoError(t, api.SetCheckResult("checks-ipv4", a.ServerName(), false))
	require.NoError(t, c.Poll(ctx))
	assert.False(t, c.Down(a))
	assert.Equal(t, 2, *changes)

	// b is no longer checked: its server goes.
	c.SetTargets([]Target{a})
	require.NoError(t, c.Poll(ctx))
	assert.Nil(t, api.Server("checks-ipv4", b.ServerName()))
	assert.NotNil(t, api.Server("checks-ipv4", a.ServerName()))
	c.SetTargets(nil)
	require.NoError(t, c.Poll(ctx))
	assert.Empty(t, api.Dump())
	n := len(api.Batches)
	require.NoError(t, c.Poll(ctx))
	require.NoError(t, c.Poll(ctx))
	assert.Len(t, api.Batches, n, "nothing checked, nothing sent")
}

// After a reload the backend is empty again: the servers come back at the
// next poll, and a target that was down is up until its checks say
// otherwise.
func TestCheckerAddsServersLostInAReload(t *testing.T) {
	ctx := context.Background()
	c, api, changes := newChecker(t)
	a := target("10.244.1.5:8080")
	c.SetTargets([]Target{a})
	require.NoError(t, c.Poll(ctx))
	require.NoError(t, api.SetCheckResult("checks-ipv4", a.ServerName(), true))
	require.NoError(t, c.Poll(ctx))
	require.True(t, c.Down(a))

	api.RemoveBackend("checks-ipv4")
	require.Error(t, c.Poll(ctx), "no backend until the new configuration is loaded")
	api.LoadBackend("checks-ipv4", true)
	require.NoError(t, c.Poll(ctx))
	assert.NotNil(t, api.Server("checks-ipv4", a.ServerName()))
	assert.False(t, c.Down(a))
	assert.Equal(t, 2, *changes)
}

// The same endpoint checked another way is another server; the name
// never holds a character HAProxy would refuse.
func TestServerName(t *testing.T) {
	a := target("10.244.1.5:8080")
	other := a
	other.Check.Fall = 3
	assert.NotEqual(t, a.ServerName(), other.ServerName())
	assert.Equal(t, a.ServerName(), target("10.244.1.5:8080").ServerName())
	assert.Regexp(t, `^ep-[0-9a-f]{16}$`, a.ServerName())
}
