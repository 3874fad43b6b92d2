package netns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

func startHAProxy(t *testing.T, tp *topology, cfg *haproxycfg.Config) *netns.Proc {
	t.Helper()
	dir := filepath.Join(tp.kit.Dir(), fmt.Sprintf("haproxy-%d", time.Now().UnixNano()))
	require.NoError(t, os.MkdirAll(dir, 0o755))
	path := haproxytest.WriteModel(t, dir, cfg)
	p := tp.node.Start("haproxy", "haproxy", "-db", "-f", path)
	if err := tp.node.WaitTCP("127.0.0.1:10400", 10*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, p.Log())
	}
	return p
}

// TestHostNetworkFollowsTheHAProxyConfig drives package hostnet in
// process (real netlink, real nft, in the node namespace) from a rendered
// HAProxy model: Service IPs become local and guarded before HAProxy
// serves them (dispatched by nftables to its one listener, from a client
// on a veth link by TPROXY and from a pod on the node's bridge by NAT), a
// changed LB IP moves, and Cleanup leaves nothing.
func TestHostNetworkFollowsTheHAProxyConfig(t *testing.T) {
	tp := newTopology(t)
	ctx := context.Background()
	pod := tp.pod("pod1", 10)
	cpod := tp.pod("cpod", 20).Namespace
	sshd, err := tp.node.Listen("tcp", "0.0.0.0:2222")
	require.NoError(t, err)
	go func() {
		for {
			c, err := sshd.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	host, err := hostnet.New(v1.IPv4Protocol)
	require.NoError(t, err)
	t.Cleanup(func() { _ = host.Cleanup(ctx) })

	mapDir := t.TempDir()
	cfg := webConfig(mapDir, "203.0.113.10", pod)
	want := hostWant(cfg)
	require.NoError(t, host.Prepare(ctx, want))
	haproxy := startHAProxy(t, tp, cfg)
	require.NoError(t, host.Finish(ctx, want))

	for _, from := range []*netns.Namespace{tp.client, cpod} {
		for _, addr := range []string{"10.96.0.10:80", "203.0.113.10:80"} {
			r, err := from.HTTPGet("http://" + addr + "/")
			require.NoError(t, err, "%s from %s", addr, from.Short)
			assert.Equal(t, "pod1", r.Name)
		}
		for _, addr := range []string{"10.96.0.10:2222", "10.96.1.1:2222", "203.0.113.10:2222"} {
			err := from.TCPAccepts(addr, 2*time.Second)
			assert.True(t, errors.Is(err, syscall.ECONNREFUSED), "%s from %s: want refused, got %v", addr, from.Short, err)
		}
	}
	assert.NoError(t, tp.client.TCPAccepts(nodeIP+":2222", 2*time.Second))

	// The LB IP changes: a new HAProxy replaces the old one.
	next := webConfig(mapDir, "203.0.113.20", pod)
	nextWant := hostWant(next)
	require.NoError(t, host.Prepare(ctx, nextWant))
	haproxy.Stop()
	haproxy = startHAProxy(t, tp, next)
	require.NoError(t, host.Finish(ctx, nextWant))
	for _, from := range []*netns.Namespace{tp.client, cpod} {
		r, err := from.HTTPGet("http://203.0.113.20:80/")
		require.NoError(t, err, "from %s", from.Short)
		assert.Equal(t, "pod1", r.Name)
	}
	assert.Error(t, tp.client.TCPAccepts("203.0.113.10:80", 500*time.Millisecond), "the old LB IP is gone")
	routes := tp.node.IP("route", "show", "table", "local", "proto", "66")
	assert.NotContains(t, routes, "203.0.113.10")
	assert.Contains(t, routes, "203.0.113.20")

	haproxy.Stop()
	require.NoError(t, host.Cleanup(ctx))
	assert.Empty(t, strings.TrimSpace(tp.node.IP("route", "show", "table", "all", "proto", "66")))
	assert.NotContains(t, tp.node.MustExec("nft", "list", "tables"), "kube-haproxy")
}
