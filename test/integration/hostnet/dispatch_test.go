package hostnet

import (
	"context"
	"errors"
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
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// dispatchConfig is HAProxy with one transparent listener per family that
// picks a backend by the original destination, as the proxier's maps do.
// The IPv4 one listens on 0.0.0.0, as the proxier's: connections from a
// bridge are redirected by NAT to its port on the bridge's address, and
// "dst" reads their original destination from conntrack.
// It already knows a Service (10.96.0.11) the host does not serve yet: the
// guard, not HAProxy, decides what reaches it.
func dispatchConfig() string {
	return haproxyDefaults + fmt.Sprintf(`
frontend dispatch
    bind 0.0.0.0:10400 transparent
    bind [::1]:10400 transparent
    use_backend web if { dst %[1]s } { dst_port 80 }
    use_backend web if { dst %[2]s } { dst_port 80 }
    use_backend web if { dst 10.96.0.11 } { dst_port 80 }
    use_backend web if { dst fd00:10:96::a } { dst_port 80 }
    use_backend web if { dst_port 30080 }

backend web
    server pod1 %[3]s:8080
`, clusterIP, lbIP, podIP)
}

// TestHAProxyBehindTheDispatch: a real HAProxy with a single transparent
// listener per family serves ClusterIPs, an LB IP with source ranges and
// a NodePort through hostnet.Host, from another namespace, from the node
// and (IPv4) from a pod on the node's bridge with br_netfilter on; a
// Service the host starts serving later needs no reload, only Prepare and
// Finish.
func TestHAProxyBehindTheDispatch(t *testing.T) {
	// br_netfilter on: a pod of the node as a client, on the same bridge
	// as pod1, has its IPv4 prerouting hooks run inside the bridge, where
	// TPROXY cannot work, and the NAT path takes over.
	c := newCluster(t, netns.NodeOptions{IPv6: true, BridgeNetfilter: true})
	ctx := context.Background()
	const clusterIP6 = "fd00:10:96::a"
	nodeIP6 := netns.NodeIP6.String()
	cpod := c.Pod("cpod", 20)

	path := filepath.Join(c.kit.Dir(), "dispatch.cfg")
	require.NoError(t, os.WriteFile(path, []byte(dispatchConfig()), 0o644))
	haproxy := c.runHAProxy(t, path, "127.0.0.1:10400")
	mustRun(t, haproxy)

	hosts := map[v1.IPFamily]*hostnet.Host{}
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		require.NoError(t, c.Do(func() error {
			h, err := hostnet.New(family)
			hosts[family] = h
			return err
		}))
	}
	t.Cleanup(func() {
		_ = c.Do(func() error {
			return errors.Join(hosts[v1.IPv4Protocol].Cleanup(ctx), hosts[v1.IPv6Protocol].Cleanup(ctx))
		})
	})
	want4 := hostnet.Desired{
		ServiceCIDRs: []netip.Prefix{serviceCIDR},
		Served:       []serviceguard.Binding{tcp80(clusterIP), tcp80(lbIP)},
		Dispatch:     netip.MustParseAddrPort("127.0.0.1:10400"),
		NodePorts:    []uint16{30080},
		Firewall: []serviceguard.FirewallEntry{{
			IP: netip.MustParseAddr(lbIP), Port: 80,
			Allowed: []netip.Prefix{netip.MustParsePrefix(clientIP + "/32")},
		}},
	}
	want6 := hostnet.Desired{
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:96::/112")},
		Served:       []serviceguard.Binding{tcp80(clusterIP6)},
		Dispatch:     netip.MustParseAddrPort("[::1]:10400"),
		NodePorts:    []uint16{30080},
	}
	require.NoError(t, c.Do(func() error {
		return errors.Join(hosts[v1.IPv4Protocol].Sync(ctx, want4), hosts[v1.IPv6Protocol].Sync(ctx, want6))
	}))
	t.Log(c.MustExec("nft", "list", "table", "ip", serviceguard.TableName))

	for _, from := range []*netns.Namespace{c.Client, c.Namespace} {
		for _, addr := range []string{clusterIP + ":80", "[" + clusterIP6 + "]:80", nodeIP + ":30080", "[" + nodeIP6 + "]:30080"} {
			r, err := from.HTTPGet("http://" + addr + "/")
			if assert.NoError(t, err, "%s from %s\n%s", addr, from.Short, haproxy.Log()) {
				assert.Equal(t, "pod1", r.Name, "%s from %s", addr, from.Short)
			}
		}
	}
	r, err := c.Client.HTTPGet("http://" + lbIP + ":80/")
	if assert.NoError(t, err, "the client is inside the LB's source ranges") {
		assert.Equal(t, "pod1", r.Name)
	}
	_, err = c.HTTPGetWith("http://"+lbIP+":80/", netns.HTTPOptions{Timeout: time.Second})
	assert.Error(t, err, "the node (source: the LB IP itself) is outside them")

	// The bridged pod, IPv4: ClusterIP, NodePort on the node's LAN address
	// and on the bridge's own address, through HAProxy; the firewall drops
	// it (outside the LB's source ranges) before the NAT.
	for _, addr := range []string{clusterIP + ":80", nodeIP + ":30080", "10.244.1.1:30080"} {
		r, err := cpod.HTTPGet("http://" + addr + "/")
		if assert.NoError(t, err, "%s from the bridged pod\n%s", addr, haproxy.Log()) {
			assert.Equal(t, "pod1", r.Name, "%s from the bridged pod", addr)
		}
	}
	_, err = cpod.HTTPGetWith("http://"+lbIP+":80/", netns.HTTPOptions{Timeout: time.Second})
	assert.Error(t, err, "the bridged pod is outside the LB's source ranges")
	err = cpod.TCPAccepts(clusterIP+":81", wait)
	assert.True(t, refused(err), "an unserved port from the bridged pod: want refused, got %v", err)

	// HAProxy knows 10.96.0.11 already, the host does not serve it: the
	// guard refuses it.
	err = c.Client.TCPAccepts("10.96.0.11:80", wait)
	assert.True(t, refused(err), "not served yet: want refused, got %v", err)

	// The new Service: Prepare, (HAProxy's maps would change here), Finish.
	next := want4
	next.Served = append(next.Served, tcp80("10.96.0.11"))
	require.NoError(t, c.Do(func() error { return hosts[v1.IPv4Protocol].Prepare(ctx, next) }))
	for _, from := range []*netns.Namespace{c.Client, cpod.Namespace} {
		r, err = from.HTTPGet("http://10.96.0.11:80/")
		if assert.NoError(t, err, "10.96.0.11 from %s", from.Short) {
			assert.Equal(t, "pod1", r.Name)
		}
	}
	require.NoError(t, c.Do(func() error { return hosts[v1.IPv4Protocol].Finish(ctx, next) }))
	mustRun(t, haproxy)

	// A wildcard host daemon still stays off Service IPs.
	c.Daemon(":2222", "")
	for _, addr := range []string{clusterIP + ":2222", "[" + clusterIP6 + "]:2222"} {
		err := c.Client.TCPAccepts(addr, wait)
		assert.True(t, refused(err), "%s: want refused, got %v", addr, err)
	}
	err = cpod.TCPAccepts(clusterIP+":2222", wait)
	assert.True(t, refused(err), "from the bridged pod: want refused, got %v", err)

	require.NoError(t, c.Do(func() error {
		return errors.Join(hosts[v1.IPv4Protocol].Cleanup(ctx), hosts[v1.IPv6Protocol].Cleanup(ctx))
	}))
	assert.NotContains(t, c.MustExec("nft", "list", "tables"), serviceguard.TableName)
	assert.Empty(t, strings.TrimSpace(c.IP("route", "show", "table", "all", "proto", "66")))
}
