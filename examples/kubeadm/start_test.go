package kubeadm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// TestKubeProxyStartsWithExample starts the built kube-proxy with the
// example's KubeProxyConfiguration against a real kube-apiserver and etcd,
// in a network namespace of its own: it must get past configuration and
// host checks into the haproxy proxier and serve its health check. What
// belongs to the host differs from the file: the kubeconfig (kubeadm fills in
// its own), the state directory (a temporary one, so the host is left alone)
// and conntrack sizing (left as is: a namespace cannot set it).
func TestKubeProxyStartsWithExample(t *testing.T) {
	bin := controlplane.Binary(t, "kube-proxy")
	kit := netns.New(t)
	netns.RequireBinary(t, "haproxy")
	netns.RequireBinary(t, "nft")
	cp := controlplane.Start(t, controlplane.Config{ServiceClusterIPRange: "10.96.0.0/12"})

	// The node: a namespace with an address on a link, and its Node object.
	node := kit.Namespace("node")
	nodeIP := netip.MustParsePrefix("192.0.2.10/24")
	kit.Link(node, "eth0", nodeIP, kit.Namespace("lan"), "eth0", netip.MustParsePrefix("192.0.2.1/24"))
	hostname, err := os.Hostname()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, err = cp.Client.CoreV1().Nodes().Create(ctx, &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: strings.ToLower(hostname)},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: nodeIP.Addr().String()},
		}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	// kube-apiserver listens on the host's loopback; forward the same port
	// from the namespace's loopback, so the kubeconfig works unchanged.
	u, err := url.Parse(cp.URL)
	require.NoError(t, err)
	forward(t, node, u.Host)

	dir := t.TempDir()
	doc := kubeProxyDocument(t)
	doc = bytes.Replace(doc, []byte("stateDir: /var/run/kube-haproxy"), []byte("stateDir: "+filepath.Join(dir, "state")), 1)
	doc = append(doc, []byte(fmt.Sprintf("clientConnection:\n  kubeconfig: %s\n", cp.Kubeconfig))...)
	// nf_conntrack_max is the host's: a network namespace cannot raise it.
	doc = append(doc, []byte("conntrack:\n  maxPerCore: 0\n")...)
	config := filepath.Join(dir, "config.conf")
	require.NoError(t, os.WriteFile(config, doc, 0o600))

	proxy := node.Start("kube-proxy", bin, "--config="+config, "--v=2")
	client := node.HTTPClient(2 * time.Second)
	for {
		if ended, err := proxy.Exited(); ended {
			t.Fatalf("kube-proxy exited (%v):\n%s", err, tail(proxy.Log()))
		}
		resp, err := client.Get("http://127.0.0.1:10256/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("kube-proxy did not become healthy:\n%s", tail(proxy.Log()))
		}
		time.Sleep(250 * time.Millisecond)
	}
	require.Contains(t, proxy.Log(), "Using haproxy Proxier")
	// The first sync renders the configuration HAProxy runs with.
	cfg := filepath.Join(dir, "state", "haproxy.cfg")
	for {
		if _, err := os.Stat(cfg); err == nil {
			break
		}
		if ended, err := proxy.Exited(); ended {
			t.Fatalf("kube-proxy exited (%v):\n%s", err, tail(proxy.Log()))
		}
		if ctx.Err() != nil {
			t.Fatalf("no %s after the first sync:\n%s", cfg, tail(proxy.Log()))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// forward accepts connections on addr inside ns and relays each to addr on
// the host (the test process dials from the host's namespace).
func forward(t *testing.T, ns *netns.Namespace, addr string) {
	t.Helper()
	l, err := ns.Listen("tcp", addr)
	require.NoError(t, err)
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}
