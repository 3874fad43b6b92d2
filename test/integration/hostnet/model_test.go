package hostnet

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

func webConfig(dir, lbIP string, pods ...*netns.Pod) *haproxycfg.Config {
	set := &haproxycfg.EndpointSet{Name: "default.web:http:tcp"}
	for _, p := range pods {
		set.Endpoints = append(set.Endpoints, netip.AddrPortFrom(p.IP, 8080))
	}
	return &haproxycfg.Config{
		Global: haproxycfg.Global{MaxConn: 1000},
		Defaults: haproxycfg.Defaults{
			TimeoutConnect: 2 * time.Second, TimeoutClient: 10 * time.Second, TimeoutServer: 10 * time.Second,
		},
		Dispatchers: []*haproxycfg.Dispatcher{{
			// As the proxier's: redirected (bridged) connections arrive on
			// the bridge's address.
			Listen: netip.MustParseAddrPort("0.0.0.0:10400"),
			MapDir: dir,
			ServicePorts: []*haproxycfg.ServicePort{{
				Name: set.Name,
				Listeners: []haproxycfg.Listener{
					{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
					{Kind: haproxycfg.LoadBalancer, Addr: netip.MustParseAddr(lbIP), Port: 80},
				},
				Cluster:   set,
				WhenEmpty: haproxycfg.Rejected,
			}},
		}},
	}
}

// hostWant is what the host needs for cfg, as the proxier computes it:
// TPROXY finds the wildcard listener by a loopback address.
func hostWant(cfg *haproxycfg.Config) hostnet.Desired {
	d := cfg.Dispatchers[0]
	dispatch := d.Listen
	if dispatch.Addr().IsUnspecified() {
		dispatch = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dispatch.Port())
	}
	want := hostnet.Desired{ServiceCIDRs: []netip.Prefix{serviceCIDR}, Dispatch: dispatch}
	for _, sp := range d.ServicePorts {
		for _, l := range sp.Listeners {
			want.Served = append(want.Served, serviceguard.Binding{IP: l.Addr, Protocol: v1.ProtocolTCP, Port: l.Port})
		}
	}
	return want
}

// startModel renders cfg with its map files and runs HAProxy on it in the
// node namespace.
func (c *cluster) startModel(t *testing.T, cfg *haproxycfg.Config) *netns.Proc {
	t.Helper()
	dir := filepath.Join(c.kit.Dir(), fmt.Sprintf("haproxy-%d", time.Now().UnixNano()))
	require.NoError(t, os.MkdirAll(dir, 0o755))
	p := c.runHAProxy(t, haproxytest.WriteModel(t, dir, cfg), "127.0.0.1:10400")
	mustRun(t, p)
	return p
}

// TestHostNetworkFollowsTheHAProxyConfig drives package hostnet (real
// netlink, real nft, on the node through Do) from a rendered HAProxy model: Service IPs become local and guarded before HAProxy
// serves them (dispatched by nftables to its one listener, from a client
// on a veth link by TPROXY and from a pod on the node's bridge by NAT), a
// changed LB IP moves, and Cleanup leaves nothing.
func TestHostNetworkFollowsTheHAProxyConfig(t *testing.T) {
	c := newCluster(t, netns.NodeOptions{BridgeNetfilter: true})
	ctx := context.Background()
	cpod := c.Pod("cpod", 20).Namespace
	c.Daemon("0.0.0.0:2222", "")

	var host *hostnet.Host
	require.NoError(t, c.Do(func() error {
		var err error
		host, err = hostnet.New(v1.IPv4Protocol)
		return err
	}))
	t.Cleanup(func() { _ = c.Do(func() error { return host.Cleanup(ctx) }) })

	mapDir := t.TempDir()
	cfg := webConfig(mapDir, "203.0.113.10", c.pod)
	want := hostWant(cfg)
	require.NoError(t, c.Do(func() error { return host.Prepare(ctx, want) }))
	haproxy := c.startModel(t, cfg)
	require.NoError(t, c.Do(func() error { return host.Finish(ctx, want) }))

	for _, from := range []*netns.Namespace{c.Client, cpod} {
		for _, addr := range []string{"10.96.0.10:80", "203.0.113.10:80"} {
			r, err := from.HTTPGet("http://" + addr + "/")
			require.NoError(t, err, "%s from %s", addr, from.Short)
			assert.Equal(t, "pod1", r.Name)
		}
		for _, addr := range []string{"10.96.0.10:2222", "10.96.1.1:2222", "203.0.113.10:2222"} {
			err := from.TCPAccepts(addr, wait)
			assert.True(t, refused(err), "%s from %s: want refused, got %v", addr, from.Short, err)
		}
	}
	assert.NoError(t, c.Client.TCPAccepts(nodeIP+":2222", wait))

	// The LB IP changes: a new HAProxy replaces the old one.
	next := webConfig(mapDir, "203.0.113.20", c.pod)
	nextWant := hostWant(next)
	require.NoError(t, c.Do(func() error { return host.Prepare(ctx, nextWant) }))
	haproxy.Stop()
	haproxy = c.startModel(t, next)
	require.NoError(t, c.Do(func() error { return host.Finish(ctx, nextWant) }))
	for _, from := range []*netns.Namespace{c.Client, cpod} {
		r, err := from.HTTPGet("http://203.0.113.20:80/")
		require.NoError(t, err, "from %s", from.Short)
		assert.Equal(t, "pod1", r.Name)
	}
	assert.Error(t, c.Client.TCPAccepts("203.0.113.10:80", 500*time.Millisecond), "the old LB IP is gone")
	routes := c.IP("route", "show", "table", "local", "proto", "66")
	assert.NotContains(t, routes, "203.0.113.10")
	assert.Contains(t, routes, "203.0.113.20")

	haproxy.Stop()
	require.NoError(t, c.Do(func() error { return host.Cleanup(ctx) }))
	assert.Empty(t, strings.TrimSpace(c.IP("route", "show", "table", "all", "proto", "66")))
	assert.NotContains(t, c.MustExec("nft", "list", "tables"), "kube-haproxy")
}
