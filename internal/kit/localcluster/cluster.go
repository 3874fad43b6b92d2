// Package localcluster runs a small but real Kubernetes data plane on one
// machine: etcd and the patched kube-apiserver (internal/kit/controlplane),
// two "nodes" that are network namespaces each running the patched
// kube-proxy (mode haproxy, scope node, with its HAProxy; or upstream's
// nftables mode from the same binary), "pods" that are namespaces running
// test/podserver, and an "outside" client namespace. There is no kubelet
// and no kube-controller-manager: the Cluster writes the Node objects, and
// a small controller writes the EndpointSlices of the pods it started.
//
// `make local-up` (cmd/local-cluster) and the end-to-end suite (test/e2e)
// both use it, so what a person pokes at by hand is what the suite tests.
//
// Addresses (see docs/local-cluster.md):
//
//	10.88.0.0/24    the LAN: a bridge in the "lan" namespace (10.88.0.1,
//	                which also forwards to kube-apiserver), nodes at
//	                10.88.0.11, .12, the outside client at .100 and .101
//	10.244.N.0/24   pods of node N, on a bridge cbr0 in the node (.1)
//	10.96.0.0/16    Service ClusterIPs
//	192.0.2.0/24    LoadBalancer ingress IPs; 198.51.100.0/24 external IPs
//	                (the outside client routes both to node 1)
package localcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kube-haproxy.io/kube-haproxy/internal/kit"
	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// Modes kube-proxy can run in here.
const (
	ModeHAProxy  = "haproxy"
	ModeNFTables = "nftables"
)

// Fixed addresses of the topology.
var (
	LANPrefix     = netip.MustParsePrefix("10.88.0.0/24")
	LANGateway    = netip.MustParseAddr("10.88.0.1")
	OutsideIP     = netip.MustParseAddr("10.88.0.100")
	OutsideIP2    = netip.MustParseAddr("10.88.0.101")
	ServiceCIDR   = netip.MustParsePrefix("10.96.0.0/16")
	ClusterCIDR   = netip.MustParsePrefix("10.244.0.0/16")
	LBPrefix      = netip.MustParsePrefix("192.0.2.0/24")
	ExternalIPNet = netip.MustParsePrefix("198.51.100.0/24")
)

// APIServerPort is where the LAN gateway forwards to kube-apiserver.
const APIServerPort = 6443

// Options says what cluster to start.
type Options struct {
	// Mode is the nodes' kube-proxy mode: haproxy (default) or nftables.
	// Scope external runs the nodes in nftables mode; scope cluster runs
	// no kube-proxy on them.
	Mode string
	// Scope is where the haproxy proxier runs: node (default), cluster or
	// external (two load-balancer hosts; docs/scopes.md).
	Scope string
	// Nodes is the number of node namespaces; default 2.
	Nodes int
	// Dir holds the generated files (kubeconfigs, kube-proxy configs,
	// HAProxy state, logs). Default: a test temporary directory.
	Dir string
	// HAProxyPath is the haproxy binary; default: found in PATH.
	HAProxyPath string
	// Logf receives progress lines; default: none.
	Logf func(format string, args ...any)
}

// Node is a node namespace running kube-proxy.
type Node struct {
	Name    string
	NS      *netns.Namespace
	IP      netip.Addr
	PodCIDR netip.Prefix
	Proxy   *netns.Proc

	nextHost int
}

// PodGateway is the node's address on its pod bridge.
func (n *Node) PodGateway() netip.Addr { return n.PodCIDR.Addr().Next() }

// Cluster is a running local cluster.
type Cluster struct {
	Opts    Options
	Kit     *netns.Kit
	CP      *controlplane.ControlPlane
	Client  kubernetes.Interface
	LAN     *netns.Namespace
	Outside *netns.Namespace
	Nodes   []*Node
	// LBs are the load-balancer hosts of scopes cluster and external.
	LBs []*LBHost
	// Kubeconfig reaches kube-apiserver from the host (127.0.0.1).
	Kubeconfig string
	// NodeKubeconfig reaches it from inside the namespaces (the LAN gateway).
	NodeKubeconfig string

	t      kit.T
	eps    *endpointController
	lbBins lbBinaries
}

func (c *Cluster) logf(format string, args ...any) {
	if c.Opts.Logf != nil {
		c.Opts.Logf(format, args...)
	}
}

// Start builds the whole cluster and returns once every kube-proxy reports
// healthy. Everything is removed by t's cleanup, in reverse order. A
// missing prerequisite (root, `ip netns`, haproxy, nft, the binaries of
// `make build`) fails t before anything starts.
func Start(t kit.T, opts Options) *Cluster {
	t.Helper()
	if opts.Scope == "" {
		opts.Scope = ScopeNode
	}
	switch opts.Scope {
	case ScopeNode:
		if opts.Mode == "" {
			opts.Mode = ModeHAProxy
		}
	case ScopeCluster:
		if opts.Mode != "" {
			t.Fatalf("localcluster: scope %s runs no kube-proxy on the nodes; leave the mode empty", opts.Scope)
		}
	case ScopeExternal:
		if opts.Mode == "" {
			opts.Mode = ModeNFTables
		}
		if opts.Mode != ModeNFTables {
			t.Fatalf("localcluster: scope %s runs upstream's nftables mode on the nodes, not %q", opts.Scope, opts.Mode)
		}
	default:
		t.Fatalf("localcluster: scope %q is not %s, %s or %s", opts.Scope, ScopeNode, ScopeCluster, ScopeExternal)
	}
	if opts.Mode != "" && opts.Mode != ModeHAProxy && opts.Mode != ModeNFTables {
		t.Fatalf("localcluster: mode %q is not %s or %s", opts.Mode, ModeHAProxy, ModeNFTables)
	}
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	netns.Require(t)
	if opts.HAProxyPath == "" && (opts.Mode == ModeHAProxy || opts.Scope != ScopeNode) {
		opts.HAProxyPath = netns.RequireBinary(t, "haproxy")
	}
	netns.RequireBinary(t, "nft")
	kubeProxy := controlplane.Binary(t, "kube-proxy")

	c := &Cluster{Opts: opts, t: t}
	c.logf("starting etcd and kube-apiserver")
	c.CP = controlplane.Start(t, controlplane.Config{ServiceClusterIPRange: ServiceCIDR.String(), Dir: filepath.Join(opts.Dir, "controlplane")})
	c.Client = c.CP.Client
	c.Kubeconfig = filepath.Join(opts.Dir, "kubeconfig")
	if err := copyFile(c.CP.Kubeconfig, c.Kubeconfig); err != nil {
		t.Fatalf("localcluster: %v", err)
	}

	c.logf("creating the network namespaces")
	c.Kit = netns.New(t)
	c.buildNetwork()
	if opts.Scope != ScopeNode {
		c.buildLoadBalancers()
	}
	c.forwardAPIServer()
	c.writeNodeKubeconfig()

	ctx := context.Background()
	for _, n := range c.Nodes {
		if err := c.createNodeObject(ctx, n); err != nil {
			t.Fatalf("localcluster: %v", err)
		}
	}
	for _, lb := range c.LBs {
		if err := c.createNodeObject(ctx, lb.Node); err != nil {
			t.Fatalf("localcluster: %v", err)
		}
	}
	if opts.Scope == ScopeExternal {
		if err := c.createPool(ctx); err != nil {
			t.Fatalf("localcluster: %v", err)
		}
	}
	c.eps = newEndpointController(c)
	t.Cleanup(c.eps.stop)
	proxied := c.Nodes
	if opts.Scope == ScopeCluster {
		proxied = nil
	}
	for _, n := range proxied {
		c.logf("starting kube-proxy (mode %s) on %s", opts.Mode, n.Name)
		c.startKubeProxy(kubeProxy, n)
	}
	if len(c.LBs) > 0 {
		c.startLoadBalancers(kubeProxy)
		for _, lb := range c.LBs {
			proxied = append(proxied, lb.Node)
		}
	}
	for _, n := range proxied {
		if err := c.WaitProxyHealthy(n, 2*time.Minute); err != nil {
			t.Fatalf("localcluster: %v\n%s", err, tail(n.Proxy.Log(), 40))
		}
	}
	if len(c.LBs) > 0 {
		lb, err := c.WaitActiveLB(time.Minute)
		if err != nil {
			t.Fatalf("localcluster: %v", err)
		}
		c.logf("%s holds the load balancers' address %s", lb.Name, LBVIP)
	}
	c.logf("cluster up")
	return c
}

// buildNetwork creates the LAN, the nodes with their pod bridges, and the
// outside client, with routes between them.
func (c *Cluster) buildNetwork() {
	k := c.Kit
	c.LAN = k.Namespace("lan")
	k.Bridge(c.LAN, "br0", netip.PrefixFrom(LANGateway, LANPrefix.Bits()))
	for i := range c.Opts.Nodes {
		name := fmt.Sprintf("node%d", i+1)
		n := &Node{
			Name:     name,
			NS:       k.Namespace(name),
			IP:       netip.AddrFrom4([4]byte{10, 88, 0, byte(11 + i)}),
			PodCIDR:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
			nextHost: 10,
		}
		k.Plug(c.LAN, "br0", n.NS, "eth0", netip.PrefixFrom(n.IP, LANPrefix.Bits()))
		n.NS.DefaultRoute(LANGateway)
		k.Bridge(n.NS, "cbr0", netip.PrefixFrom(n.PodGateway(), n.PodCIDR.Bits()))
		// A node routes between its pods, the LAN and the other nodes.
		n.NS.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1")
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		for _, other := range c.Nodes {
			if other != n {
				n.NS.Route(other.PodCIDR, other.IP)
			}
		}
		c.LAN.Route(n.PodCIDR, n.IP)
	}
	c.Outside = k.Namespace("outside")
	k.Plug(c.LAN, "br0", c.Outside, "eth0", netip.PrefixFrom(OutsideIP, LANPrefix.Bits()))
	c.Outside.AddAddr("eth0", netip.PrefixFrom(OutsideIP2, LANPrefix.Bits()))
	// The outside client's routes are its own: a node that forwards a
	// packet for a Service IP back out to the LAN before kube-proxy has
	// programmed that IP sends an ICMP redirect to the LAN gateway, and a
	// client that took it would route the IP past the node for minutes.
	for _, conf := range []string{"all", "eth0"} {
		c.Outside.MustExec("sysctl", "-qw", "net.ipv4.conf."+conf+".accept_redirects=0")
	}
	// The "cloud" routes LB and external IPs to node1; pods are reachable
	// through the LAN gateway, as from a router outside the cluster.
	c.Outside.Route(LBPrefix, c.Nodes[0].IP)
	c.Outside.Route(ExternalIPNet, c.Nodes[0].IP)
	c.Outside.DefaultRoute(LANGateway)
	c.LAN.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1")
}

// forwardAPIServer listens on the LAN gateway and forwards each connection
// to kube-apiserver on the host's loopback: nodes reach the control plane
// without any address or route added to the host's own network.
func (c *Cluster) forwardAPIServer() {
	target := strings.TrimPrefix(c.CP.URL, "https://")
	l, err := c.LAN.Listen("tcp", net.JoinHostPort(LANGateway.String(), fmt.Sprint(APIServerPort)))
	if err != nil {
		c.t.Fatalf("localcluster: listening for the apiserver forwarder: %v", err)
	}
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer out.Close()
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = io.Copy(out, in)
					if tc, ok := out.(*net.TCPConn); ok {
						_ = tc.CloseWrite()
					}
				}()
				_, _ = io.Copy(in, out)
				if tc, ok := in.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				wg.Wait()
			}()
		}
	}()
}

// writeNodeKubeconfig writes the kubeconfig kube-proxy uses inside a node:
// the forwarder's address, with the serving certificate's name.
func (c *Cluster) writeNodeKubeconfig() {
	rc := c.CP.RESTConfig
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{
		Server:                   fmt.Sprintf("https://%s:%d", LANGateway, APIServerPort),
		CertificateAuthorityData: rc.CAData,
		// The certificate names localhost and 127.0.0.1, not the gateway.
		TLSServerName: "localhost",
	}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: rc.BearerToken}
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "admin"}
	cfg.CurrentContext = "local"
	c.NodeKubeconfig = filepath.Join(c.Opts.Dir, "node-kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, c.NodeKubeconfig); err != nil {
		c.t.Fatalf("localcluster: writing the node kubeconfig: %v", err)
	}
}

// createNodeObject registers n as a Ready Node: a node with its pod CIDR,
// or a load-balancer host (no pod CIDR) labelled and tainted as one that
// runs no workloads, as docs/scopes.md sets them up.
func (c *Cluster) createNodeObject(ctx context.Context, n *Node) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			v1.LabelHostname: n.Name, v1.LabelOSStable: "linux",
		}},
	}
	if n.PodCIDR.IsValid() {
		node.Spec = v1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}}
	} else {
		node.Labels[LoadBalancerRole] = ""
		node.Spec.Taints = []v1.Taint{{Key: LoadBalancerRole, Effect: v1.TaintEffectNoSchedule}}
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating Node %s: %w", n.Name, err)
	}
	created.Status = v1.NodeStatus{
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: n.IP.String()},
			{Type: v1.NodeHostName, Address: n.Name},
		},
		Conditions: []v1.NodeCondition{{
			Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "LocalCluster",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}},
	}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the status of Node %s: %w", n.Name, err)
	}
	return nil
}

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("reading %s: %w", from, err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", to, err)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
