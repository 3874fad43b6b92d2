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

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/test/netns"
)

func webConfig(lbIP string, pods ...*netns.Pod) *haproxycfg.Config {
	be := &haproxycfg.Backend{Name: "default.web:http"}
	for _, p := range pods {
		be.Servers = append(be.Servers, haproxycfg.Server{Name: haproxycfg.ServerName(p.IP, 8080), Addr: p.IP, Port: 8080})
	}
	return &haproxycfg.Config{
		Global: haproxycfg.Global{MaxConn: 1000},
		Defaults: haproxycfg.Defaults{
			TimeoutConnect: 2 * time.Second, TimeoutClient: 10 * time.Second, TimeoutServer: 10 * time.Second,
		},
		Frontends: []*haproxycfg.Frontend{{
			Name: "default.web:http",
			Binds: []haproxycfg.Bind{
				{Name: "cluster-ip", Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
				{Name: "lb", Addr: netip.MustParseAddr(lbIP), Port: 80},
			},
			DefaultBackend: be.Name,
		}},
		Backends: []*haproxycfg.Backend{be},
	}
}

func startHAProxy(t *testing.T, tp *topology, cfg *haproxycfg.Config) *netns.Proc {
	t.Helper()
	text, err := haproxycfg.Render(cfg)
	require.NoError(t, err)
	path := filepath.Join(tp.kit.Dir(), fmt.Sprintf("haproxy-%d.cfg", time.Now().UnixNano()))
	require.NoError(t, os.WriteFile(path, text, 0o644))
	p := tp.node.Start("haproxy", "haproxy", "-db", "-f", path)
	if err := tp.node.WaitTCP("10.96.0.10:80", 10*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, p.Log())
	}
	return p
}

// TestHostNetworkFollowsTheHAProxyConfig drives package hostnet in
// process (real netlink, real nft, in the node namespace) from a rendered
// HAProxy model: Service IPs become local and guarded before HAProxy
// binds, a changed LB IP moves, and Cleanup leaves nothing.
func TestHostNetworkFollowsTheHAProxyConfig(t *testing.T) {
	tp := newTopology(t)
	ctx := context.Background()
	pod := tp.pod("pod1", 10)
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

	cfg := webConfig("203.0.113.10", pod)
	want := hostnet.FromConfig([]netip.Prefix{serviceCIDR}, cfg)
	require.NoError(t, host.BeforeReload(ctx, want))
	haproxy := startHAProxy(t, tp, cfg)
	require.NoError(t, host.AfterReload(ctx, want))

	for _, addr := range []string{"10.96.0.10:80", "203.0.113.10:80"} {
		r, err := tp.client.HTTPGet("http://" + addr + "/")
		require.NoError(t, err, addr)
		assert.Equal(t, "pod1", r.Name)
	}
	for _, addr := range []string{"10.96.0.10:2222", "10.96.1.1:2222", "203.0.113.10:2222"} {
		err := tp.client.TCPAccepts(addr, 2*time.Second)
		assert.True(t, errors.Is(err, syscall.ECONNREFUSED), "%s: want refused, got %v", addr, err)
	}
	assert.NoError(t, tp.client.TCPAccepts(nodeIP+":2222", 2*time.Second))

	// The LB IP changes: a new HAProxy replaces the old one.
	next := webConfig("203.0.113.20", pod)
	nextWant := hostnet.FromConfig([]netip.Prefix{serviceCIDR}, next)
	require.NoError(t, host.BeforeReload(ctx, nextWant))
	haproxy.Stop()
	haproxy = startHAProxy(t, tp, next)
	require.NoError(t, host.AfterReload(ctx, nextWant))
	r, err := tp.client.HTTPGet("http://203.0.113.20:80/")
	require.NoError(t, err)
	assert.Equal(t, "pod1", r.Name)
	assert.Error(t, tp.client.TCPAccepts("203.0.113.10:80", 500*time.Millisecond), "the old LB IP is gone")
	routes := tp.node.IP("route", "show", "table", "local", "proto", "66")
	assert.NotContains(t, routes, "203.0.113.10")
	assert.Contains(t, routes, "203.0.113.20")

	haproxy.Stop()
	require.NoError(t, host.Cleanup(ctx))
	assert.Empty(t, strings.TrimSpace(tp.node.IP("route", "show", "table", "all", "proto", "66")))
	assert.NotContains(t, tp.node.MustExec("nft", "list", "tables"), "kube-haproxy")
}
