// Package hostnet tests the host networking of scope node with a real
// HAProxy in network namespaces: AnyIP routes make ClusterIPs and LB IPs
// bindable without putting them on an interface (package localaddr), and
// the nftables guard (package serviceguard) keeps host daemons listening
// on wildcard addresses from answering on them, and package hostnet
// dispatches served Service IP:ports to HAProxy's one listener
// (dispatch_test.go), following a rendered HAProxy model (model_test.go).
package hostnet

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
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

const (
	podIP     = "10.244.1.10"
	clusterIP = "10.96.0.10"
	lbIP      = "203.0.113.10"
	wait      = 2 * time.Second
)

var (
	nodeIP      = netns.NodeIP.String()
	clientIP    = netns.ClientIP.String()
	serviceCIDR = netip.MustParsePrefix("10.96.0.0/16")
)

// cluster is the kit's Node topology (a node with a client on its LAN
// whose default route is the node, as if the network routed Service IPs
// to it) with one pod, pod1, behind the node's bridge. The package's code
// under test runs in the test process, on the node through
// Namespace.Do.
type cluster struct {
	kit *netns.Kit
	*netns.Node
	pod *netns.Pod
}

func newCluster(t *testing.T, o netns.NodeOptions) *cluster {
	netns.RequireBinary(t, "haproxy")
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	n := k.Node(o)
	return &cluster{kit: k, Node: n, pod: n.Pod("pod1", 10)}
}

// haproxyDefaults starts every HAProxy configuration of the package.
const haproxyDefaults = `global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
`

// haproxyConfig serves one Service on its ClusterIP and LB IP, port 80,
// from the pod.
func haproxyConfig() string {
	return haproxyDefaults + fmt.Sprintf(`
# default/web:http
frontend default.web:http
    bind %s:80
    bind %s:80
    default_backend default.web:http

backend default.web:http
    server pod1 %s:8080
`, clusterIP, lbIP, podIP)
}

// startHAProxy starts HAProxy in the node namespace with cfg and returns
// once it listens on the ClusterIP, or the process if it exited.
func (c *cluster) startHAProxy(t *testing.T, cfg string) *netns.Proc {
	t.Helper()
	path := filepath.Join(c.kit.Dir(), fmt.Sprintf("haproxy-%d.cfg", time.Now().UnixNano()))
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
	return c.runHAProxy(t, path, clusterIP+":80")
}

// runHAProxy runs HAProxy in the node namespace on the configuration at
// path and returns once it listens on addr, or the process if it exited.
func (c *cluster) runHAProxy(t *testing.T, path, addr string) *netns.Proc {
	t.Helper()
	p := c.Start("haproxy", "haproxy", "-db", "-f", path)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ended, _ := p.Exited(); ended {
			return p
		}
		if c.TCPAccepts(addr, 200*time.Millisecond) == nil {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("haproxy neither listens on %s nor exited after 10s:\n%s", addr, p.Log())
	return nil
}

// mustRun fails the test when p has exited.
func mustRun(t *testing.T, p *netns.Proc) {
	t.Helper()
	if ended, err := p.Exited(); ended {
		t.Fatalf("haproxy exited: %v\n%s", err, p.Log())
	}
}

// guard runs serviceguard's Guard of family on the node, synced to want,
// and removes it after the test. It covers the ServiceCIDRs and what
// localaddr made local (want.ServiceIPs).
func (c *cluster) guard(t *testing.T, family v1.IPFamily, want serviceguard.Desired) *serviceguard.Guard {
	t.Helper()
	ctx := context.Background()
	var guard *serviceguard.Guard
	require.NoError(t, c.Do(func() error {
		var err error
		if guard, err = serviceguard.New(family); err != nil {
			return err
		}
		return guard.Sync(ctx, want)
	}))
	t.Cleanup(func() { _ = c.Do(func() error { return guard.Cleanup(ctx) }) })
	return guard
}

// tcp80 is port 80/TCP of ip, as HAProxy serves it.
func tcp80(ip string) serviceguard.Binding {
	return serviceguard.Binding{IP: netip.MustParseAddr(ip), Protocol: v1.ProtocolTCP, Port: 80}
}

func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// TestGuardKeepsHostListenersOffServiceIPs: a host daemon on 0.0.0.0:2222
// in the node is reachable through any ClusterIP or LB IP once those are
// local, until the guard is in place; then only what HAProxy serves
// answers on Service IPs, and the node's own address is unaffected.
func TestGuardKeepsHostListenersOffServiceIPs(t *testing.T) {
	c := newCluster(t, netns.NodeOptions{})

	addrs := localaddr.New(c.Netlink(), v1.IPv4Protocol)
	owned, err := addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{serviceCIDR}, IPs: []netip.Addr{netip.MustParseAddr(lbIP)}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = addrs.Cleanup() })

	c.Daemon("0.0.0.0:2222", "SSH-2.0-host\r\n")
	mustRun(t, c.startHAProxy(t, haproxyConfig()))

	// The hole: with the ServiceCIDR local, the host daemon answers on
	// every ClusterIP and the LB IP.
	for _, addr := range []string{clusterIP + ":2222", "10.96.200.1:2222", lbIP + ":2222"} {
		require.NoError(t, c.Client.TCPAccepts(addr, wait), "before the guard, %s reaches the host daemon", addr)
	}

	c.guard(t, v1.IPv4Protocol, serviceguard.Desired{
		ServiceIPs: append([]netip.Prefix{serviceCIDR}, owned...),
		Served:     []serviceguard.Binding{tcp80(clusterIP), tcp80(lbIP)},
	})

	for _, from := range []*netns.Namespace{c.Client, c.Namespace} {
		for _, addr := range []string{clusterIP + ":80", lbIP + ":80"} {
			r, err := from.HTTPGet("http://" + addr + "/")
			if assert.NoError(t, err, "%s from %s", addr, from.Short) {
				assert.Equal(t, "pod1", r.Name, "%s from %s is served by the pod", addr, from.Short)
			}
		}
		for _, addr := range []string{clusterIP + ":2222", "10.96.200.1:2222", lbIP + ":2222", "10.96.0.11:80"} {
			err := from.TCPAccepts(addr, wait)
			assert.True(t, refused(err), "%s from %s: want refused, got %v", addr, from.Short, err)
		}
	}
	assert.NoError(t, c.Client.TCPAccepts(nodeIP+":2222", wait), "the node's own address is not a Service IP")
}

// TestAnyIPRouteLetsHAProxyBindAndCleanupLeavesNothing: HAProxy cannot bind
// a ClusterIP that is on no interface until localaddr adds the AnyIP route;
// reconciling to less and cleaning up leave no route and no table of ours,
// while the kernel's and an administrator's routes stay.
func TestAnyIPRouteLetsHAProxyBindAndCleanupLeavesNothing(t *testing.T) {
	c := newCluster(t, netns.NodeOptions{})
	ctx := context.Background()
	c.IP("route", "add", "local", "198.51.100.0/24", "dev", "lo")
	before := c.IP("route", "show", "table", "local")

	p := c.startHAProxy(t, haproxyConfig())
	ended, err := p.Exited()
	require.True(t, ended, "haproxy must fail to bind a ClusterIP that is not local:\n%s", p.Log())
	assert.Error(t, err)
	assert.Contains(t, p.Log(), "cannot bind socket", "haproxy says why")

	addrs := localaddr.New(c.Netlink(), v1.IPv4Protocol)
	owned, err := addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{serviceCIDR}, IPs: []netip.Addr{netip.MustParseAddr(lbIP)}})
	require.NoError(t, err)
	guard := c.guard(t, v1.IPv4Protocol, serviceguard.Desired{
		ServiceIPs: append([]netip.Prefix{serviceCIDR}, owned...),
		Served:     []serviceguard.Binding{tcp80(clusterIP), tcp80(lbIP)},
	})
	assert.Empty(t, c.IP("addr", "show", "to", clusterIP), "the ClusterIP is on no interface")

	p = c.startHAProxy(t, haproxyConfig())
	if ended, err := p.Exited(); ended {
		t.Fatalf("haproxy exited with the AnyIP route in place: %v\n%s", err, p.Log())
	}
	for _, addr := range []string{clusterIP + ":80", lbIP + ":80"} {
		r, err := c.Client.HTTPGet("http://" + addr + "/")
		require.NoError(t, err)
		assert.Equal(t, "pod1", r.Name)
		assert.Equal(t, podIP+":8080", r.Local)
	}

	// The LB IP goes away: its route does, the ServiceCIDR's stays.
	owned, err = addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{serviceCIDR}})
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{serviceCIDR}, owned)
	// The node now forwards nothing to it (and does not route it anywhere).
	assert.Error(t, c.Client.TCPAccepts(lbIP+":80", 500*time.Millisecond), "the LB IP is no longer local to the node")

	p.Stop()
	require.NoError(t, addrs.Cleanup())
	require.NoError(t, c.Do(func() error { return guard.Cleanup(ctx) }))
	assert.Equal(t, before, c.IP("route", "show", "table", "local"), "the local table is as it was before")
	assert.Empty(t, strings.TrimSpace(c.IP("route", "show", "table", "all", "proto", "66")), "no route of ours in any table")
	tables := c.MustExec("nft", "list", "tables")
	assert.NotContains(t, tables, serviceguard.TableName)
}

// TestIPv6ServiceIPs is the same story for IPv6: an AnyIP route makes the
// ServiceCIDR local for packets, HAProxy binds a ClusterIP on no interface
// with `transparent` (IPv6 bind(2) needs it; see proxier/README.md), and
// the ip6 guard rejects a wildcard host listener on Service IPs.
func TestIPv6ServiceIPs(t *testing.T) {
	c := newCluster(t, netns.NodeOptions{IPv6: true})
	ctx := context.Background()
	nodeIP6 := netns.NodeIP6.String()
	cidr6 := netip.MustParsePrefix("fd00:10:96::/112")
	const clusterIP6 = "fd00:10:96::a"

	addrs := localaddr.New(c.Netlink(), v1.IPv6Protocol)
	owned, err := addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{cidr6}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = addrs.Cleanup() })

	c.Daemon("[::]:2222", "")
	require.NoError(t, c.Client.TCPAccepts("["+clusterIP6+"]:2222", wait), "before the guard the hole is open")

	guard := c.guard(t, v1.IPv6Protocol, serviceguard.Desired{
		ServiceIPs: append([]netip.Prefix{cidr6}, owned...),
		Served:     []serviceguard.Binding{tcp80(clusterIP6)},
	})

	cfg := haproxyDefaults + fmt.Sprintf(`
frontend default.web:http
    bind [%s]:80 transparent
    default_backend default.web:http
backend default.web:http
    server pod1 %s:8080
`, clusterIP6, podIP)
	path := filepath.Join(c.kit.Dir(), "haproxy6.cfg")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
	p := c.runHAProxy(t, path, "["+clusterIP6+"]:80")
	mustRun(t, p)

	r, err := c.Client.HTTPGet("http://[" + clusterIP6 + "]:80/")
	require.NoError(t, err)
	assert.Equal(t, "pod1", r.Name)
	for _, addr := range []string{"[" + clusterIP6 + "]:2222", "[fd00:10:96::b]:80"} {
		err := c.Client.TCPAccepts(addr, wait)
		assert.True(t, refused(err), "%s: want refused, got %v", addr, err)
	}
	assert.NoError(t, c.Client.TCPAccepts("["+nodeIP6+"]:2222", wait), "the node's own address is not a Service IP")

	p.Stop()
	require.NoError(t, addrs.Cleanup())
	require.NoError(t, c.Do(func() error { return guard.Cleanup(ctx) }))
	assert.Empty(t, strings.TrimSpace(c.IP("-6", "route", "show", "table", "all", "proto", "66")))
	assert.NotContains(t, c.MustExec("nft", "list", "tables"), serviceguard.TableName)
}
