package localcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
)

// Demo addresses: fixed so the printed commands work as shown.
const (
	DemoClusterIP = "10.96.0.80"
	DemoNodePort  = 30080
	DemoLBIP      = "192.0.2.10"
	// DemoPoolClusterIP is the ClusterIP of demo-external (scope
	// external), from the pool routed to the load balancers.
	DemoPoolClusterIP = "10.100.0.80"
)

// The external load balancer's label value and class (the proxier's
// defaults).
const (
	ServiceProxyNameLabel = "service.kubernetes.io/service-proxy-name"
	ServiceProxyName      = "haproxy"
	LoadBalancerClass     = "kube-haproxy.io/haproxy"
)

// CreateService creates svc and, for a LoadBalancer with lbIPs, sets its
// status.loadBalancer.ingress (no cloud controller runs here).
func (c *Cluster) CreateService(ctx context.Context, svc *v1.Service, lbIPs ...string) (*v1.Service, error) {
	if svc.Namespace == "" {
		svc.Namespace = metav1.NamespaceDefault
	}
	created, err := c.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service %s: %w", svc.Name, err)
	}
	if len(lbIPs) > 0 {
		// lb-controller (scopes cluster and external) may write the
		// status at the same time: retry on a conflict, keeping its IPs.
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			for _, ip := range lbIPs {
				if !slices.ContainsFunc(created.Status.LoadBalancer.Ingress, func(in v1.LoadBalancerIngress) bool { return in.IP == ip }) {
					created.Status.LoadBalancer.Ingress = append(created.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
				}
			}
			updated, err := c.Client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
			if err == nil {
				created = updated
				return nil
			}
			if latest, gerr := c.Client.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{}); gerr == nil {
				created = latest
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("setting the LoadBalancer ingress of %s: %w", svc.Name, err)
		}
	}
	return created, c.Sync(ctx)
}

// StartDemo starts two pods per node labelled app=demo and the Services
// demo (ClusterIP), demo-nodeport (NodePort) and demo-lb (LoadBalancer
// with an ingress IP), and returns the commands to try them.
func (c *Cluster) StartDemo(ctx context.Context) (string, error) {
	for _, n := range c.Nodes {
		for i := 1; i <= 2; i++ {
			if _, err := c.AddPod(ctx, n, fmt.Sprintf("demo-%s-%d", n.Name, i), map[string]string{"app": "demo"}); err != nil {
				return "", err
			}
		}
	}
	if _, err := c.AddPod(ctx, c.Nodes[0], "client", map[string]string{"app": "client"}); err != nil {
		return "", err
	}
	ports := func(nodePort int32) []v1.ServicePort {
		return []v1.ServicePort{
			{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http"), NodePort: nodePort},
			{Name: "echo", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromString("echo")},
		}
	}
	sel := map[string]string{"app": "demo"}
	svcs := []struct {
		svc *v1.Service
		lb  []string
	}{
		{svc: &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo"}, Spec: v1.ServiceSpec{
			ClusterIP: DemoClusterIP, Selector: sel, Ports: ports(0)}}},
		{svc: &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo-nodeport"}, Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeNodePort, Selector: sel, Ports: ports(DemoNodePort)[:1]}}},
		{svc: &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo-lb"}, Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, Selector: sel, Ports: ports(0)[:1]}}, lb: []string{DemoLBIP}},
	}
	if c.Opts.Scope == ScopeExternal {
		// The external load balancer's own: a Service labelled for it,
		// with its ClusterIP from the pool, and a LoadBalancer of its
		// class, whose ingress IP lb-controller assigns.
		svcs = append(svcs, struct {
			svc *v1.Service
			lb  []string
		}{svc: &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo-external",
			Labels:      map[string]string{ServiceProxyNameLabel: ServiceProxyName},
			Annotations: map[string]string{PoolLabel: PoolName}},
			Spec: v1.ServiceSpec{ClusterIP: DemoPoolClusterIP, Selector: sel, Ports: ports(0)[:1]}}})
	}
	if c.Opts.Scope != ScopeNode {
		svcs = append(svcs, struct {
			svc *v1.Service
			lb  []string
		}{svc: &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo-lb-class"}, Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr.To(LoadBalancerClass), Selector: sel, Ports: ports(0)[:1]}}})
	}
	for _, s := range svcs {
		if _, err := c.CreateService(ctx, s.svc, s.lb...); err != nil {
			return "", err
		}
	}
	// Wait until the demo answers, so the printed commands work at once.
	url := fmt.Sprintf("http://%s/", DemoClusterIP)
	client := c.Pods()[0]
	for _, p := range c.Pods() {
		if p.Name == "client" {
			client = p
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := client.NS.HTTPGet(url); err == nil {
			break
		} else if time.Now().After(deadline) {
			return "", fmt.Errorf("demo Service %s does not answer from pod client: %w", url, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return c.demoHelp(client), nil
}

func (c *Cluster) demoHelp(client *Pod) string {
	var b strings.Builder
	switch c.Opts.Scope {
	case ScopeCluster:
		fmt.Fprintf(&b, "Local cluster up: scope cluster, no kube-proxy on %d nodes; kube-proxy (haproxy) on %d load balancers sharing %s.\n\n", len(c.Nodes), len(c.LBs), LBVIP)
	case ScopeExternal:
		fmt.Fprintf(&b, "Local cluster up: scope external, kube-proxy mode %s on %d nodes; kube-proxy (haproxy) on %d load balancers sharing %s.\n\n", c.Opts.Mode, len(c.Nodes), len(c.LBs), LBVIP)
	default:
		fmt.Fprintf(&b, "Local cluster up: kube-proxy mode %s on %d nodes.\n\n", c.Opts.Mode, len(c.Nodes))
	}
	fmt.Fprintf(&b, "Namespaces:\n  lan      %s (bridge br0 %s, apiserver forwarder :%d)\n", c.LAN.Name, LANGateway, APIServerPort)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  %-8s %s (%s, pods %s)\n", n.Name, n.NS.Name, n.IP, n.PodCIDR)
	}
	for _, lb := range c.LBs {
		fmt.Fprintf(&b, "  %-8s %s (%s, keepalived, lb-controller)\n", lb.Name, lb.NS.Name, lb.IP)
	}
	fmt.Fprintf(&b, "  outside  %s (%s, %s)\n", c.Outside.Name, OutsideIP, OutsideIP2)
	for _, p := range c.Pods() {
		fmt.Fprintf(&b, "  pod %-12s %s (%s on %s)\n", p.Name, p.NS.Name, p.IP, p.Node.Name)
	}
	kubectl := filepath.Join(controlplane.BinDir(), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		fmt.Fprintf(&b, "\nAPI (any kubectl works; KUBECTL=1 make local-up builds _output/bin/kubectl):\n")
		kubectl = "kubectl"
	} else {
		fmt.Fprintf(&b, "\nAPI:\n")
	}
	fmt.Fprintf(&b, "  %s --kubeconfig %s get nodes,services,endpointslices -A\n", kubectl, c.Kubeconfig)
	fmt.Fprintf(&b, "\nTry the Services:\n")
	fmt.Fprintf(&b, "  ip netns exec %s curl -s http://%s/                       # ClusterIP from a pod\n", client.NS.Name, DemoClusterIP)
	nodePortHost := c.Nodes[len(c.Nodes)-1].IP
	if c.Opts.Scope == ScopeCluster {
		nodePortHost = LBVIP
	}
	fmt.Fprintf(&b, "  ip netns exec %s curl -s http://%s:%d/                # NodePort from outside\n", c.Outside.Name, nodePortHost, DemoNodePort)
	fmt.Fprintf(&b, "  ip netns exec %s curl -s http://%s/                       # LoadBalancer IP from outside\n", c.Outside.Name, DemoLBIP)
	if c.Opts.Scope == ScopeExternal {
		fmt.Fprintf(&b, "  ip netns exec %s curl -s http://%s/                       # demo-external from outside, through the load balancer\n", c.Outside.Name, DemoPoolClusterIP)
	}
	if c.Opts.Scope != ScopeNode {
		fmt.Fprintf(&b, "  %s --kubeconfig %s get service demo-lb-class   # its ingress IP (%s), from lb-controller\n", kubectl, c.Kubeconfig, IngressPrefix)
		fmt.Fprintf(&b, "  ip netns exec %s ip -br addr show eth0                       # which load balancer holds %s\n", c.LBs[0].NS.Name, LBVIP)
	}
	haproxyHost, haproxyNS := "", ""
	if c.Opts.Mode == ModeHAProxy {
		haproxyHost, haproxyNS = c.Nodes[0].Name, c.Nodes[0].NS.Name
	}
	if len(c.LBs) > 0 {
		haproxyHost, haproxyNS = c.LBs[0].Name, c.LBs[0].NS.Name
	}
	if haproxyHost != "" {
		fmt.Fprintf(&b, "  ip netns exec %s curl -s http://127.0.0.1:10249/haproxy/explain/default/demo   # where traffic for default/demo goes (?format=json for scripts)\n", haproxyNS)
		fmt.Fprintf(&b, "  ip netns exec %s curl -s http://127.0.0.1:10402/metrics                        # HAProxy's own metrics (kube-proxy's: :10249/metrics)\n", haproxyNS)
		fmt.Fprintf(&b, "  cat %s/%s/haproxy/haproxy.cfg                                # HAProxy's settings and its one listener\n", c.Opts.Dir, haproxyHost)
		fmt.Fprintf(&b, "  cat %s/%s/haproxy/services-ipv4.map                          # every Service address it dispatches\n", c.Opts.Dir, haproxyHost)
		fmt.Fprintf(&b, "  cat %s/%s/haproxy/endpoint-sets-ipv4.map                     # and their endpoints\n", c.Opts.Dir, haproxyHost)
	}
	if c.Opts.Mode == ModeNFTables {
		fmt.Fprintf(&b, "  ip netns exec %s nft list table ip kube-proxy\n", c.Nodes[0].NS.Name)
	}
	fmt.Fprintf(&b, "\nLogs: %s\nTear down: make local-down\n", c.Opts.Dir)
	return b.String()
}
