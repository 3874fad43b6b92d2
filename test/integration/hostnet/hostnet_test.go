// Package hostnet tests the host networking of scope node with a real
// HAProxy in network namespaces: AnyIP routes make ClusterIPs and LB IPs
// bindable without putting them on an interface (package localaddr), and
// the nftables guard (package serviceguard) keeps host daemons listening
// on wildcard addresses from answering on them.
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
	nodeIP    = "192.168.95.1"
	clientIP  = "192.168.95.100"
	podIP     = "10.244.1.10"
	clusterIP = "10.96.0.10"
	lbIP      = "203.0.113.10"
	wait      = 2 * time.Second
)

var serviceCIDR = netip.MustParsePrefix("10.96.0.0/16")

// cluster is one node, one pod behind the node's bridge and one client on
// the node's LAN whose default route is the node (as if the network routed
// Service IPs to it).
type cluster struct {
	kit    *netns.Kit
	node   *netns.Namespace
	client *netns.Namespace
	pod    *netns.Pod
}

func newCluster(t *testing.T) *cluster {
	netns.RequireBinary(t, "haproxy")
	netns.RequireBinary(t, "nft")
	k := netns.New(t)
	lan := k.Namespace("lan")
	k.Bridge(lan, "br0", netip.Prefix{})
	node := k.Namespace("node")
	k.Plug(lan, "br0", node, "eth0", netip.MustParsePrefix(nodeIP+"/24"))
	client := k.Namespace("client")
	k.Plug(lan, "br0", client, "eth0", netip.MustParsePrefix(clientIP+"/24"))
	client.DefaultRoute(netip.MustParseAddr(nodeIP))
	k.Bridge(node, "cbr0", netip.MustParsePrefix("10.244.1.1/24"))
	pod := k.Pod("pod1", netns.PodSpec{
		BridgeNS: node, Bridge: "cbr0",
		Addr:    netip.MustParsePrefix(podIP + "/24"),
		Gateway: netip.MustParseAddr("10.244.1.1"),
	})
	return &cluster{kit: k, node: node, client: client, pod: pod}
}

// haproxyConfig serves one Service on its ClusterIP and LB IP, port 80,
// from the pod.
func haproxyConfig() string {
	return fmt.Sprintf(`global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

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
	p := c.node.Start("haproxy", "haproxy", "-db", "-f", path)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ended, _ := p.Exited(); ended {
			return p
		}
		if c.node.TCPAccepts(clusterIP+":80", 200*time.Millisecond) == nil {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("haproxy neither listens nor exited after 10s:\n%s", p.Log())
	return nil
}

func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// TestGuardKeepsHostListenersOffServiceIPs: a host daemon on 0.0.0.0:2222
// in the node is reachable through any ClusterIP or LB IP once those are
// local, until the guard is in place; then only what HAProxy serves
// answers on Service IPs, and the node's own address is unaffected.
func TestGuardKeepsHostListenersOffServiceIPs(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()

	addrs := localaddr.New(c.node.Netlink(), v1.IPv4Protocol)
	owned, err := addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{serviceCIDR}, IPs: []netip.Addr{netip.MustParseAddr(lbIP)}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = addrs.Cleanup() })

	sshd, err := c.node.Listen("tcp", "0.0.0.0:2222")
	require.NoError(t, err)
	go func() {
		for {
			conn, err := sshd.Accept()
			if err != nil {
				return
			}
			_, _ = conn.Write([]byte("SSH-2.0-host\r\n"))
			conn.Close()
		}
	}()

	haproxy := c.startHAProxy(t, haproxyConfig())
	if ended, err := haproxy.Exited(); ended {
		t.Fatalf("haproxy exited: %v\n%s", err, haproxy.Log())
	}

	// The hole: with the ServiceCIDR local, the host daemon answers on
	// every ClusterIP and the LB IP.
	for _, addr := range []string{clusterIP + ":2222", "10.96.200.1:2222", lbIP + ":2222"} {
		require.NoError(t, c.client.TCPAccepts(addr, wait), "before the guard, %s reaches the host daemon", addr)
	}

	var guard *serviceguard.Guard
	require.NoError(t, c.node.Do(func() error {
		var err error
		if guard, err = serviceguard.New(v1.IPv4Protocol); err != nil {
			return err
		}
		// The guard covers the ServiceCIDRs and what localaddr made local.
		return guard.Sync(ctx, serviceguard.Desired{
			ServiceIPs: append([]netip.Prefix{serviceCIDR}, owned...),
			Served: []serviceguard.Binding{
				{IP: netip.MustParseAddr(clusterIP), Protocol: v1.ProtocolTCP, Port: 80},
				{IP: netip.MustParseAddr(lbIP), Protocol: v1.ProtocolTCP, Port: 80},
			},
		})
	}))
	t.Cleanup(func() { _ = c.node.Do(func() error { return guard.Cleanup(ctx) }) })

	for _, from := range []*netns.Namespace{c.client, c.node} {
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
	assert.NoError(t, c.client.TCPAccepts(nodeIP+":2222", wait), "the node's own address is not a Service IP")
}

// TestAnyIPRouteLetsHAProxyBindAndCleanupLeavesNothing: HAProxy cannot bind
// a ClusterIP that is on no interface until localaddr adds the AnyIP route;
// reconciling to less and cleaning up leave no route and no table of ours,
// while the kernel's and an administrator's routes stay.
func TestAnyIPRouteLetsHAProxyBindAndCleanupLeavesNothing(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.node.IP("route", "add", "local", "198.51.100.0/24", "dev", "lo")
	before := c.node.IP("route", "show", "table", "local")

	p := c.startHAProxy(t, haproxyConfig())
	ended, err := p.Exited()
	require.True(t, ended, "haproxy must fail to bind a ClusterIP that is not local:\n%s", p.Log())
	assert.Error(t, err)
	assert.Contains(t, p.Log(), "cannot bind socket", "haproxy says why")

	addrs := localaddr.New(c.node.Netlink(), v1.IPv4Protocol)
	owned, err := addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{serviceCIDR}, IPs: []netip.Addr{netip.MustParseAddr(lbIP)}})
	require.NoError(t, err)
	var guard *serviceguard.Guard
	require.NoError(t, c.node.Do(func() error {
		var err error
		if guard, err = serviceguard.New(v1.IPv4Protocol); err != nil {
			return err
		}
		return guard.Sync(ctx, serviceguard.Desired{
			ServiceIPs: append([]netip.Prefix{serviceCIDR}, owned...),
			Served: []serviceguard.Binding{
				{IP: netip.MustParseAddr(clusterIP), Protocol: v1.ProtocolTCP, Port: 80},
				{IP: netip.MustParseAddr(lbIP), Protocol: v1.ProtocolTCP, Port: 80},
			},
		})
	}))
	assert.Empty(t, c.node.IP("addr", "show", "to", clusterIP), "the ClusterIP is on no interface")

	p = c.startHAProxy(t, haproxyConfig())
	if ended, err := p.Exited(); ended {
		t.Fatalf("haproxy exited with the AnyIP route in place: %v\n%s", err, p.Log())
	}
	for _, addr := range []string{clusterIP + ":80", lbIP + ":80"} {
		r, err := c.client.HTTPGet("http://" + addr + "/")
		require.NoError(t, err)
		assert.Equal(t, "pod1", r.Name)
		assert.Equal(t, podIP+":8080", r.Local)
	}

	// The LB IP goes away: its route does, the ServiceCIDR's stays.
	owned, err = addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{serviceCIDR}})
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{serviceCIDR}, owned)
	// The node now forwards nothing to it (and does not route it anywhere).
	assert.Error(t, c.client.TCPAccepts(lbIP+":80", 500*time.Millisecond), "the LB IP is no longer local to the node")

	p.Stop()
	require.NoError(t, addrs.Cleanup())
	require.NoError(t, c.node.Do(func() error { return guard.Cleanup(ctx) }))
	assert.Equal(t, before, c.node.IP("route", "show", "table", "local"), "the local table is as it was before")
	assert.Empty(t, strings.TrimSpace(c.node.IP("route", "show", "table", "all", "proto", "66")), "no route of ours in any table")
	tables := c.node.MustExec("nft", "list", "tables")
	assert.NotContains(t, tables, serviceguard.TableName)
}

// TestIPv6ServiceIPs is the same story for IPv6: an AnyIP route makes the
// ServiceCIDR local for packets, HAProxy binds a ClusterIP on no interface
// with `transparent` (IPv6 bind(2) needs it; see proxier/README.md), and
// the ip6 guard rejects a wildcard host listener on Service IPs.
func TestIPv6ServiceIPs(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.node.AddAddr("eth0", netip.MustParsePrefix("fd00:95::1/64"))
	c.client.AddAddr("eth0", netip.MustParsePrefix("fd00:95::100/64"))
	c.client.DefaultRoute(netip.MustParseAddr("fd00:95::1"))
	cidr6 := netip.MustParsePrefix("fd00:10:96::/112")
	const clusterIP6 = "fd00:10:96::a"

	addrs := localaddr.New(c.node.Netlink(), v1.IPv6Protocol)
	owned, err := addrs.Reconcile(localaddr.Desired{CIDRs: []netip.Prefix{cidr6}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = addrs.Cleanup() })

	sshd, err := c.node.Listen("tcp6", "[::]:2222")
	require.NoError(t, err)
	go func() {
		for {
			conn, err := sshd.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	require.NoError(t, c.client.TCPAccepts("["+clusterIP6+"]:2222", wait), "before the guard the hole is open")

	var guard *serviceguard.Guard
	require.NoError(t, c.node.Do(func() error {
		var err error
		if guard, err = serviceguard.New(v1.IPv6Protocol); err != nil {
			return err
		}
		return guard.Sync(ctx, serviceguard.Desired{
			ServiceIPs: append([]netip.Prefix{cidr6}, owned...),
			Served:     []serviceguard.Binding{{IP: netip.MustParseAddr(clusterIP6), Protocol: v1.ProtocolTCP, Port: 80}},
		})
	}))
	t.Cleanup(func() { _ = c.node.Do(func() error { return guard.Cleanup(ctx) }) })

	cfg := fmt.Sprintf(`global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend default.web:http
    bind [%s]:80 transparent
    default_backend default.web:http
backend default.web:http
    server pod1 %s:8080
`, clusterIP6, podIP)
	path := filepath.Join(c.kit.Dir(), "haproxy6.cfg")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
	p := c.node.Start("haproxy6", "haproxy", "-db", "-f", path)
	require.NoError(t, c.node.WaitTCP("["+clusterIP6+"]:80", 10*time.Second), p.Log())

	r, err := c.client.HTTPGet("http://[" + clusterIP6 + "]:80/")
	require.NoError(t, err)
	assert.Equal(t, "pod1", r.Name)
	for _, addr := range []string{"[" + clusterIP6 + "]:2222", "[fd00:10:96::b]:80"} {
		err := c.client.TCPAccepts(addr, wait)
		assert.True(t, refused(err), "%s: want refused, got %v", addr, err)
	}
	assert.NoError(t, c.client.TCPAccepts("[fd00:95::1]:2222", wait), "the node's own address is not a Service IP")

	p.Stop()
	require.NoError(t, addrs.Cleanup())
	require.NoError(t, c.node.Do(func() error { return guard.Cleanup(ctx) }))
	assert.Empty(t, strings.TrimSpace(c.node.IP("-6", "route", "show", "table", "all", "proto", "66")))
	assert.NotContains(t, c.node.MustExec("nft", "list", "tables"), serviceguard.TableName)
}
