package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/component-base/metrics/testutil"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// env is what the scenarios share: a cluster, a client pod on node1 (not
// selected by any Service), and four "web" pods, two per node.
type env struct {
	c      *localcluster.Cluster
	mode   string
	client *localcluster.Pod
	web    []*localcluster.Pod
	ctx    context.Context
}

func newEnv(t *testing.T, c *localcluster.Cluster, setup string) *env {
	e := &env{c: c, mode: setup, ctx: context.Background()}
	var err error
	e.client, err = c.AddPod(e.ctx, c.Nodes[0], "client", map[string]string{"app": "client"})
	require.NoError(t, err)
	for _, n := range c.Nodes {
		for _, s := range []string{"a", "b"} {
			p, err := c.AddPod(e.ctx, n, fmt.Sprintf("web-%s-%s", n.Name, s), map[string]string{"app": "web"})
			require.NoError(t, err)
			e.web = append(e.web, p)
		}
	}
	return e
}

// haproxy reports whether HAProxy serves the Services in this setup
// (haproxy mode on the nodes, or the load balancers of scope cluster).
func (e *env) haproxy() bool {
	return e.mode == localcluster.ModeHAProxy || e.mode == setupCluster
}

// nodePortHosts are the addresses NodePorts are served on: the nodes, or
// in scope cluster (no kube-proxy on the nodes) the load balancers'
// virtual address.
func (e *env) nodePortHosts() []string {
	if e.mode == setupCluster {
		return []string{localcluster.LBVIP.String()}
	}
	var out []string
	for _, n := range e.c.Nodes {
		out = append(out, n.IP.String())
	}
	return out
}

// haproxyDirs are the state directories of the HAProxies serving the
// Services (each node's, or each load balancer's).
func (e *env) haproxyDirs() map[string]string {
	out := map[string]string{}
	for _, n := range e.proxyHosts() {
		out[n.Name] = filepath.Join(e.c.Opts.Dir, n.Name, "haproxy")
	}
	return out
}

// proxyHosts are the hosts whose kube-proxy serves the e2e Services: the
// nodes, or the load balancers in scopes cluster and external.
func (e *env) proxyHosts() []*localcluster.Node {
	if e.mode != setupCluster && e.mode != setupExternal {
		return e.c.Nodes
	}
	var hosts []*localcluster.Node
	for _, lb := range e.c.LBs {
		hosts = append(hosts, lb.Node)
	}
	return hosts
}

// metricSum scrapes every proxy host's kube-proxy metrics and sums the
// samples of metric whose labels include labels.
func (e *env) metricSum(t *testing.T, metric string, labels map[string]string) float64 {
	t.Helper()
	sum := 0.0
	for _, n := range e.proxyHosts() {
		resp, err := n.NS.HTTPClient(5 * time.Second).Get("http://127.0.0.1:10249/metrics")
		require.NoError(t, err, "kube-proxy metrics on %s", n.Name)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		ms := testutil.NewMetrics()
		require.NoError(t, testutil.ParseMetrics(string(body), &ms))
	samples:
		for _, s := range ms[metric] {
			for k, v := range labels {
				if string(s.Metric[model.LabelName(k)]) != v {
					continue samples
				}
			}
			sum += float64(s.Value)
		}
	}
	return sum
}

func names(pods ...*localcluster.Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.Name
	}
	return out
}

// service creates a Service selecting app=<selector> with one TCP port 80
// to the pods' "http" port; mutate adjusts it first.
func (e *env) service(t *testing.T, name, selector string, mutate func(*v1.Service), lbIPs ...string) *v1.Service {
	t.Helper()
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault},
		Spec: v1.ServiceSpec{
			Selector: map[string]string{"app": selector},
			Ports:    []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
	if mutate != nil {
		mutate(svc)
	}
	created, err := e.c.CreateService(e.ctx, svc, lbIPs...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = e.c.Client.CoreV1().Services(svc.Namespace).Delete(context.Background(), name, metav1.DeleteOptions{})
		_ = e.c.Sync(context.Background())
	})
	return created
}

// get sends GET url from ns (from src when valid) on a new connection and
// decodes the pod's reply.
func get(ns *netns.Namespace, src netip.Addr, url string, timeout time.Duration) (netns.Reply, error) {
	return ns.HTTPGetWith(url, netns.HTTPOptions{Timeout: timeout, Source: src})
}

// servedBy waits until a batch of requests to url from ns (from src when
// valid) is answered by exactly the pods want (each seen at least once, no
// other), and returns how long that took, the batch included.
func servedBy(t *testing.T, ns *netns.Namespace, src netip.Addr, url string, want ...string) time.Duration {
	t.Helper()
	d, err := ns.ServedBy(url, netns.HTTPOptions{Timeout: 3 * time.Second, Source: src}, 30*time.Second, want...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return d
}

// refused reports whether a connection to addr from ns fails at once
// (refused or reset), rather than hanging.
func refused(ns *netns.Namespace, addr string) (bool, time.Duration, error) {
	start := time.Now()
	c, err := ns.Dial("tcp", addr, 3*time.Second)
	if err == nil {
		// Accepted: a proxy may still reset it at once.
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		_, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		buf := make([]byte, 1)
		_, err = c.Read(buf)
		c.Close()
		if err == nil {
			return false, time.Since(start), errors.New("answered")
		}
	}
	d := time.Since(start)
	fast := errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)
	return fast && d < 2*time.Second, d, err
}

// eventuallyRefused waits until addr refuses from ns.
func eventuallyRefused(t *testing.T, ns *netns.Namespace, addr string) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < 30*time.Second {
		var ok bool
		ok, _, err = refused(ns, addr)
		if ok {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s from %s: want refused, last: %v", addr, ns.Short, err)
	return 0
}

func hostPort(ip string, port int32) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }
