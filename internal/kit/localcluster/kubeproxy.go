package localcluster

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"
)

// HealthzPort is kube-proxy's healthz port on every node address.
const HealthzPort = 10256

// kubeProxyConfig is the KubeProxyConfiguration of one node. Conntrack
// sizes and timeouts are left alone (zero): a node here is a namespace,
// and those sysctls are the host's.
var kubeProxyConfig = template.Must(template.New("kube-proxy").Parse(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {{.Kubeconfig}}
hostnameOverride: {{.Node}}
bindAddress: {{.NodeIP}}
clusterCIDR: {{.ClusterCIDR}}
healthzBindAddress: 0.0.0.0:{{.HealthzPort}}
metricsBindAddress: 127.0.0.1:10249
# /debug/pprof beside /metrics, on the node's loopback only: the
# benchmark's CPU profiles (PROFILE=1) read it.
enableProfiling: true
mode: {{.Mode}}
syncPeriod: 30s
minSyncPeriod: 10ms
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
nftables:
  # Pods share one bridge per node: without masquerading, a pod's reply to
  # another pod of the same node would bypass the node's conntrack.
  masqueradeAll: true
  syncPeriod: 30s
  minSyncPeriod: 10ms
{{- if eq .Mode "haproxy"}}
haproxy:
  binaryPath: {{.HAProxy}}
  stateDir: {{.StateDir}}
  scope: {{.Scope}}
  syncPeriod: 30s
  minSyncPeriod: 10ms
{{- end}}
`))

func (c *Cluster) startKubeProxy(bin string, n *Node) {
	c.startKubeProxyScoped(bin, n, c.Opts.Mode, ScopeNode)
}

// startKubeProxyScoped starts kube-proxy on n in mode, with the haproxy
// proxier in scope.
func (c *Cluster) startKubeProxyScoped(bin string, n *Node, mode, scope string) {
	dir := filepath.Join(c.Opts.Dir, n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatalf("localcluster: %v", err)
	}
	var b strings.Builder
	err := kubeProxyConfig.Execute(&b, map[string]any{
		"Kubeconfig":  c.NodeKubeconfig,
		"Node":        n.Name,
		"NodeIP":      n.IP.String(),
		"ClusterCIDR": ClusterCIDR.String(),
		"HealthzPort": HealthzPort,
		"Mode":        mode,
		"Scope":       scope,
		"HAProxy":     c.Opts.HAProxyPath,
		"StateDir":    filepath.Join(dir, "haproxy"),
	})
	if err != nil {
		c.t.Fatalf("localcluster: rendering the kube-proxy config: %v", err)
	}
	cfgPath := filepath.Join(dir, "kube-proxy.yaml")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
		c.t.Fatalf("localcluster: %v", err)
	}
	n.Proxy = n.NS.Start("kube-proxy", bin, "--config="+cfgPath, "--v=2")
}

// WaitProxyHealthy waits until n's kube-proxy's healthz answers 200: it
// has synced Services and EndpointSlices into its data plane.
func (c *Cluster) WaitProxyHealthy(n *Node, timeout time.Duration) error {
	url := fmt.Sprintf("http://%s:%d/healthz", n.IP, HealthzPort)
	client := n.NS.HTTPClient(2 * time.Second)
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if ended, err := n.Proxy.Exited(); ended {
			return fmt.Errorf("kube-proxy on %s exited: %v", n.Name, err)
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("kube-proxy on %s not healthy after %v (last: %s)", n.Name, timeout, last)
}
