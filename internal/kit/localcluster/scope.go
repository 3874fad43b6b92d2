package localcluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kube-haproxy.io/kube-haproxy/internal/kit"
	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/keepalived"
)

// Scopes of the haproxy proxier a cluster can be started in (see
// docs/scopes.md).
const (
	// ScopeNode: kube-proxy (Options.Mode) on every node; no load balancer.
	ScopeNode = "node"
	// ScopeCluster: no kube-proxy on the nodes; two load-balancer hosts run
	// kube-proxy in scope cluster, keepalived and lb-controller, and the
	// nodes route the Service range to their virtual address.
	ScopeCluster = "cluster"
	// ScopeExternal: the nodes run kube-proxy in nftables mode; the
	// load-balancer hosts serve labelled Services (ClusterIPs from the
	// pool PoolPrefix) and LoadBalancer Services of the class.
	ScopeExternal = "external"
)

// Addresses of the load-balancer hosts (scopes cluster and external).
var (
	// LBHostIPs are the load-balancer hosts' own addresses on the LAN.
	LBHostIPs = []netip.Addr{netip.MustParseAddr("10.88.0.21"), netip.MustParseAddr("10.88.0.22")}
	// LBVIP is the virtual address keepalived gives the healthy host:
	// everything the load balancers serve is routed to it.
	LBVIP = netip.MustParseAddr("10.88.0.10")
	// IngressPrefix is lb-controller's pool of LoadBalancer ingress IPs.
	IngressPrefix = netip.MustParsePrefix("203.0.113.0/24")
	// PoolPrefix is the ClusterIP pool "lb" (scope external): a
	// ServiceCIDR labelled haproxy.kube-haproxy.io/pool=lb.
	PoolPrefix = netip.MustParsePrefix("10.100.0.0/24")
)

const (
	// PoolName is the ClusterIP pool of scope external.
	PoolName = "lb"
	// PoolLabel marks a ServiceCIDR as part of a pool; a Service asks
	// for one with an annotation of the same key.
	PoolLabel = "haproxy.kube-haproxy.io/pool"
	// LoadBalancerRole labels and taints the load-balancer hosts' Nodes.
	LoadBalancerRole = "node-role.kubernetes.io/load-balancer"
	// KubeProxyGrace is the load balancers' keepalived grace for a
	// kube-proxy that is down (shorter than the default, for tests).
	KubeProxyGrace = 5 * time.Second
	// vrrpRouterID is the VRRP router id of the pair.
	vrrpRouterID = 51
)

// LBHost is one load-balancer host: kube-proxy with its HAProxy,
// keepalived and lb-controller in a namespace on the LAN.
type LBHost struct {
	*Node
	Keepalived   *netns.Proc
	LBController *netns.Proc
}

// buildLoadBalancers plugs the load-balancer hosts into the LAN and
// routes the served ranges to the virtual address.
func (c *Cluster) buildLoadBalancers() {
	k := c.Kit
	for i, ip := range LBHostIPs {
		n := &Node{Name: fmt.Sprintf("lb%d", i+1), NS: k.Namespace(fmt.Sprintf("lb%d", i+1)), IP: ip}
		k.Plug(c.LAN, "br0", n.NS, "eth0", netip.PrefixFrom(ip, LANPrefix.Bits()))
		c.routeLB(n)
		// UDP in scope cluster is NATed by the nftables proxier here.
		n.NS.MustExec("sysctl", "-qw", "net.ipv4.ip_forward=1")
		c.LBs = append(c.LBs, &LBHost{Node: n})
	}
	served := []netip.Prefix{IngressPrefix}
	switch c.Opts.Scope {
	case ScopeCluster:
		served = append(served, ServiceCIDR)
	case ScopeExternal:
		served = append(served, PoolPrefix)
	}
	for _, p := range served {
		for _, n := range c.Nodes {
			n.NS.Route(p, LBVIP)
		}
		c.LAN.Route(p, LBVIP)
	}
	c.Outside.Route(IngressPrefix, LBVIP)
	if c.Opts.Scope == ScopeCluster {
		// No kube-proxy on the nodes: the load balancer serves LB and
		// external IPs too.
		c.Outside.Route(LBPrefix, LBVIP)
		c.Outside.Route(ExternalIPNet, LBVIP)
	} else {
		c.Outside.Route(LBPrefix, c.Nodes[0].IP)
		c.Outside.Route(ExternalIPNet, c.Nodes[0].IP)
	}
}

// routeLB gives a load-balancer host its routes: the LAN gateway by
// default, and each node's pods through that node (HAProxy connects to
// pods directly).
func (c *Cluster) routeLB(n *Node) {
	n.NS.DefaultRoute(LANGateway)
	for _, node := range c.Nodes {
		n.NS.Route(node.PodCIDR, node.IP)
	}
}

// createPool creates the ClusterIP pool of scope external.
func (c *Cluster) createPool(ctx context.Context) error {
	cidr := &networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: "haproxy-" + PoolName, Labels: map[string]string{PoolLabel: PoolName}},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: []string{PoolPrefix.String()}},
	}
	if _, err := c.Client.NetworkingV1().ServiceCIDRs().Create(ctx, cidr, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the ClusterIP pool: %w", err)
	}
	// kube-apiserver's allocator learns ServiceCIDRs from an informer:
	// wait until it takes a Service asking for the pool (a dry run).
	probe := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "pool-probe", Namespace: metav1.NamespaceDefault, Annotations: map[string]string{PoolLabel: PoolName}},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if _, err = c.Client.CoreV1().Services(probe.Namespace).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err == nil {
			return nil
		}
	}
	return fmt.Errorf("kube-apiserver does not allocate from the ClusterIP pool %s after 30s: %w", PoolName, err)
}

// startLoadBalancers starts kube-proxy (scope Opts.Scope), keepalived and
// lb-controller on every load-balancer host.
func (c *Cluster) startLoadBalancers(kubeProxy string) {
	c.lbBins = lbBinaries{
		kubeProxy:    kubeProxy,
		lbController: controlplane.Binary(c.t, "lb-controller"),
		keepalived:   c.requireCommand("keepalived"),
	}
	for _, lb := range c.LBs {
		c.logf("starting kube-proxy (scope %s), keepalived and lb-controller on %s", c.Opts.Scope, lb.Name)
		c.startKubeProxyScoped(kubeProxy, lb.Node, ModeHAProxy, c.Opts.Scope)
		c.startKeepalived(lb)
		c.startLBController(lb)
	}
}

// lbBinaries are the programs of a load-balancer host.
type lbBinaries struct{ kubeProxy, lbController, keepalived string }

func (c *Cluster) startKeepalived(lb *LBHost) {
	dir := filepath.Join(c.Opts.Dir, lb.Name)
	check := filepath.Join(dir, "check-kube-haproxy.sh")
	if err := os.WriteFile(check, keepalived.CheckScript, 0o755); err != nil {
		c.t.Fatalf("localcluster: %v", err)
	}
	conf, err := keepalived.Render(keepalived.Config{
		Name:        lb.Name,
		Interface:   "eth0",
		RouterID:    vrrpRouterID,
		VIPs:        []netip.Prefix{netip.PrefixFrom(LBVIP, LANPrefix.Bits())},
		CheckScript: check,
		// A kube-proxy killed by a test and started again within this
		// keeps the address; one that stays down gives it up soon after.
		KubeProxyGrace: KubeProxyGrace,
	})
	if err != nil {
		c.t.Fatalf("localcluster: %v", err)
	}
	confPath := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(confPath, conf, 0o644); err != nil {
		c.t.Fatalf("localcluster: %v", err)
	}
	lb.Keepalived = lb.NS.Start("keepalived", c.lbBins.keepalived, "--dont-fork", "--log-console", "--vrrp",
		"--use-file="+confPath, "--pid="+filepath.Join(dir, "keepalived.pid"), "--vrrp_pid="+filepath.Join(dir, "keepalived-vrrp.pid"))
}

func (c *Cluster) startLBController(lb *LBHost) {
	args := []string{c.lbBins.lbController, "--kubeconfig=" + c.NodeKubeconfig, "--pools=" + IngressPrefix.String(),
		"--leader-elect-identity=" + lb.Name, "--leader-elect-namespace=kube-system"}
	if c.Opts.Scope == ScopeCluster {
		args = append(args, "--serve-without-class")
	}
	lb.LBController = lb.NS.Start("lb-controller", args...)
}

// KillHAProxy kills (SIGKILL) every HAProxy process of lb, as a crash
// would; its kube-proxy starts HAProxy again.
func (c *Cluster) KillHAProxy(lb *LBHost) error {
	n := 0
	for _, pid := range lb.pids() {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "haproxy" {
			if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
				n++
			}
		}
	}
	if n == 0 {
		return fmt.Errorf("no HAProxy process runs on %s", lb.Name)
	}
	return nil
}

// KillKubeProxy kills (SIGKILL) lb's kube-proxy; its HAProxy keeps
// serving what it was given.
func (c *Cluster) KillKubeProxy(lb *LBHost) {
	killProc(lb.Proxy)
}

// RestartKubeProxy starts lb's kube-proxy again (it adopts the running
// HAProxy, or starts one) and waits until it is healthy.
func (c *Cluster) RestartKubeProxy(lb *LBHost) error {
	c.startKubeProxyScoped(c.lbBins.kubeProxy, lb.Node, ModeHAProxy, c.Opts.Scope)
	return c.WaitProxyHealthy(lb.Node, 2*time.Minute)
}

// StopLBHost makes lb disappear as a crashed host does: every process in
// it is killed and its link goes down.
func (c *Cluster) StopLBHost(lb *LBHost) {
	for _, p := range []*netns.Proc{lb.Keepalived, lb.LBController, lb.Proxy} {
		killProc(p)
	}
	for _, pid := range lb.pids() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	lb.NS.MustExec("ip", "link", "set", "eth0", "down")
}

// StartLBHost brings a stopped lb back: link up, kube-proxy (which starts
// HAProxy), keepalived and lb-controller.
func (c *Cluster) StartLBHost(lb *LBHost) error {
	lb.NS.MustExec("ip", "link", "set", "eth0", "up")
	// The link's routes went with it.
	c.routeLB(lb.Node)
	if err := c.RestartKubeProxy(lb); err != nil {
		return err
	}
	c.startKeepalived(lb)
	c.startLBController(lb)
	return nil
}

// pids are the processes running in lb's namespace.
func (lb *LBHost) pids() []int {
	out, _ := lb.NS.Exec("ip", "netns", "pids", lb.NS.Name)
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killProc kills p with SIGKILL and waits for it.
func killProc(p *netns.Proc) {
	if p == nil {
		return
	}
	if ended, _ := p.Exited(); ended {
		return
	}
	_ = syscall.Kill(p.PID(), syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if ended, _ := p.Exited(); ended {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ActiveLB returns the load-balancer host that holds the virtual address,
// or nil.
func (c *Cluster) ActiveLB() *LBHost {
	for _, lb := range c.LBs {
		if out, err := lb.NS.Exec("ip", "-br", "addr", "show", "dev", "eth0"); err == nil && strings.Contains(out, " "+LBVIP.String()+"/") {
			return lb
		}
	}
	return nil
}

// WaitActiveLB waits until one load-balancer host holds the virtual
// address, and returns it.
func (c *Cluster) WaitActiveLB(timeout time.Duration) (*LBHost, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if lb := c.ActiveLB(); lb != nil {
			return lb, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	var logs []string
	for _, lb := range c.LBs {
		if lb.Keepalived != nil {
			logs = append(logs, lb.Name+" keepalived:\n"+tail(lb.Keepalived.Log(), 20))
		}
	}
	return nil, fmt.Errorf("no load balancer holds %s after %v\n%s", LBVIP, timeout, strings.Join(logs, "\n"))
}

func (c *Cluster) requireCommand(name string) string {
	p, err := kit.LookCommand(name)
	if err != nil {
		c.t.Fatalf("localcluster: %v", err)
	}
	return p
}
