package localcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
)

// Demo addresses: fixed so the printed commands work as shown.
const (
	DemoClusterIP = "10.96.0.80"
	DemoNodePort  = 30080
	DemoLBIP      = "192.0.2.10"
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
		for _, ip := range lbIPs {
			created.Status.LoadBalancer.Ingress = append(created.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: ip})
		}
		created, err = c.Client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
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
	fmt.Fprintf(&b, "Local cluster up: kube-proxy mode %s on %d nodes.\n\n", c.Opts.Mode, len(c.Nodes))
	fmt.Fprintf(&b, "Namespaces:\n  lan      %s (bridge br0 %s, apiserver forwarder :%d)\n", c.LAN.Name, LANGateway, APIServerPort)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  %-8s %s (%s, pods %s)\n", n.Name, n.NS.Name, n.IP, n.PodCIDR)
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
	fmt.Fprintf(&b, "  ip netns exec %s curl -s http://%s:%d/                # NodePort from outside\n", c.Outside.Name, c.Nodes[len(c.Nodes)-1].IP, DemoNodePort)
	fmt.Fprintf(&b, "  ip netns exec %s curl -s http://%s/                       # LoadBalancer IP from outside\n", c.Outside.Name, DemoLBIP)
	if c.Opts.Mode == ModeHAProxy {
		fmt.Fprintf(&b, "  cat %s/%s/haproxy/haproxy.cfg                                # HAProxy's settings and its one listener\n", c.Opts.Dir, c.Nodes[0].Name)
		fmt.Fprintf(&b, "  cat %s/%s/haproxy/services-ipv4.map                          # every Service address it dispatches\n", c.Opts.Dir, c.Nodes[0].Name)
		fmt.Fprintf(&b, "  cat %s/%s/haproxy/endpoints-ipv4.map                         # and their endpoints\n", c.Opts.Dir, c.Nodes[0].Name)
	} else {
		fmt.Fprintf(&b, "  ip netns exec %s nft list table ip kube-proxy\n", c.Nodes[0].NS.Name)
	}
	fmt.Fprintf(&b, "\nLogs: %s\nTear down: make local-down\n", c.Opts.Dir)
	return b.String()
}
