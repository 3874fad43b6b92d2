// Package observe tests what an operator sees of a running node: the
// explanation of a Service (kube-proxy's /haproxy/explain) and the two
// metric endpoints (kube-proxy's and HAProxy's exporter), against the
// names docs/observability.md documents and the Grafana dashboard queries.
// It runs the local cluster: real etcd, kube-apiserver, kube-proxy and
// HAProxy in network namespaces.
package observe

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
	"kube-haproxy.io/kube-haproxy/proxier/explain"
)

// Where a node serves them: kube-proxy's metricsBindAddress in the local
// cluster, and the exporter's default address.
const (
	kubeProxyMetrics = "http://127.0.0.1:10249"
	haproxyMetrics   = "http://127.0.0.1:10402/metrics"
)

func repoFile(t *testing.T, rel string) string {
	_, file, _, ok := runtime.Caller(0)
	require.True(t, ok)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", rel)
}

func get(t *testing.T, n *localcluster.Node, url string) (int, string) {
	t.Helper()
	resp, err := n.NS.HTTPClient(5 * time.Second).Get(url)
	require.NoError(t, err, url)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestExplainAndMetrics: a Service with endpoints on both nodes, one not
// ready and one terminating, explained on node 1 in text and JSON; then
// both metric endpoints of that node, against the documented names and
// the dashboard's queries.
func TestExplainAndMetrics(t *testing.T) {
	c := localcluster.Start(t, localcluster.Options{Mode: localcluster.ModeHAProxy, Logf: t.Logf})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	web := map[string]string{"app": "web"}
	ready1, err := c.AddPod(ctx, n1, "web-ready-1", web)
	require.NoError(t, err)
	ready2, err := c.AddPod(ctx, n2, "web-ready-2", web)
	require.NoError(t, err)
	notReady, err := c.AddPod(ctx, n2, "web-not-ready", web)
	require.NoError(t, err)
	terminating, err := c.AddPod(ctx, n1, "web-terminating", web)
	require.NoError(t, err)
	require.NoError(t, c.SetReady(ctx, notReady, false))
	require.NoError(t, c.SetTerminating(ctx, terminating))
	_, err = c.CreateService(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeNodePort, Selector: web,
			ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
			Ports:                 []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
		},
	})
	require.NoError(t, err)
	// A Service whose EndpointSlice carries the trigger time, as upstream's
	// EndpointSlice controller writes it (the cluster's own controller
	// does not): kube-proxy observes its network programming latency.
	_, err = c.CreateService(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "programmed"},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}},
	})
	require.NoError(t, err)
	_, err = c.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Create(ctx, &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "programmed-1",
			Labels:      map[string]string{discovery.LabelServiceName: "programmed"},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano)},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(localcluster.PodPorts["http"].Port)}},
		Endpoints: []discovery.Endpoint{{Addresses: []string{ready1.IP.String()}, NodeName: ptr.To(n1.Name),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	// What node 1 should say of each endpoint: the sets it is in, and why
	// not the others.
	type want struct {
		local bool
		in    []string
		out   map[string]explain.Reason
	}
	wants := map[string]want{
		ready1.IP.String():      {local: true, in: []string{"Cluster", "Local"}},
		ready2.IP.String():      {in: []string{"Cluster"}, out: map[string]explain.Reason{"Local": explain.OtherNode}},
		notReady.IP.String():    {in: []string{}, out: map[string]explain.Reason{"Cluster": explain.NotReady, "Local": explain.NotReady}},
		terminating.IP.String(): {local: true, in: []string{}, out: map[string]explain.Reason{"Cluster": explain.Terminating, "Local": explain.Terminating}},
	}
	var s explain.Service
	var port explain.Port
	var last string
	require.Eventually(t, func() bool {
		code, body := get(t, n1, kubeProxyMetrics+"/haproxy/explain/default/web?format=json")
		last = body
		if code != http.StatusOK || json.Unmarshal([]byte(body), &s) != nil || len(s.Families) != 1 || len(s.Families[0].Ports) != 1 {
			return false
		}
		port = s.Families[0].Ports[0]
		return len(port.Endpoints) == len(wants) && slices.ContainsFunc(port.Sets, func(set explain.Set) bool {
			return set.Policy == "Cluster" && set.Endpoints == 2 && set.Match == explain.Present
		})
	}, time.Minute, 200*time.Millisecond, "explain of default/web never showed its 4 endpoints applied; last answer:\n%s", last)

	f := s.Families[0]
	assert.Equal(t, "IPv4", f.Family)
	assert.True(t, f.Runtime.Read, f.Runtime.Error)
	assert.True(t, port.Served, port.NotServed)
	assert.Equal(t, "default.web:http:tcp", port.Name)
	assert.Equal(t, "Local", port.ExternalTrafficPolicy)
	require.NotNil(t, port.LastChange, "the port's last change is dated")
	assert.WithinDuration(t, time.Now(), *port.LastChange, 2*time.Minute)
	assert.False(t, port.Reloaded, "a new Service is applied without a reload")
	kinds := map[string]bool{}
	for _, d := range port.Dispatch {
		kinds[d.Kind] = true
		assert.Equal(t, explain.Present, d.Match, "%s %s: HAProxy holds %q, applied %q", d.Kind, d.Key, d.InHAProxy, d.Value)
	}
	assert.Equal(t, map[string]bool{"clusterIP": true, "nodePort": true}, kinds)
	sets := map[string]int{}
	for _, set := range port.Sets {
		assert.Equal(t, explain.Present, set.Match, set.Name)
		assert.Equal(t, set.Endpoints, set.InHAProxy, set.Name)
		sets[set.Policy] = set.Endpoints
	}
	assert.Equal(t, map[string]int{"Cluster": 2, "Local": 1}, sets)
	for _, ep := range port.Endpoints {
		ip, _, _ := strings.Cut(ep.Address, ":")
		w, ok := wants[ip]
		require.True(t, ok, "unexpected endpoint %s", ep.Address)
		assert.Equal(t, w.local, ep.Local, ep.Address)
		assert.Equal(t, w.in, ep.InSets, ep.Address)
		out := map[string]explain.Reason{}
		for _, x := range ep.Out {
			out[x.Policy] = x.Reason
		}
		if w.out == nil {
			w.out = map[string]explain.Reason{}
		}
		assert.Equal(t, w.out, out, ep.Address)
	}
	assert.True(t, slices.ContainsFunc(port.Endpoints, func(e explain.Endpoint) bool { return e.Terminating && e.Serving && !e.Ready }))

	// The text says the same, one line per endpoint.
	code, text := get(t, n1, kubeProxyMetrics+"/haproxy/explain/default/web")
	require.Equal(t, http.StatusOK, code, text)
	t.Logf("explain default/web on %s:\n%s", n1.Name, text)
	lineOf := func(ip string) string {
		for _, l := range strings.Split(text, "\n") {
			if strings.Contains(l, ip+":") {
				return l
			}
		}
		return ""
	}
	assert.Regexp(t, `this\s+ready\s+Cluster, Local\s*$`, lineOf(ready1.IP.String()))
	assert.Regexp(t, `other\s+ready\s+Cluster\s+Local: on another node`, lineOf(ready2.IP.String()))
	assert.Regexp(t, `other\s+not ready\s+-\s+Cluster, Local: not ready$`, lineOf(notReady.IP.String()))
	assert.Regexp(t, `this\s+serving, terminating\s+-\s+Cluster, Local: terminating; used only while the set has no ready endpoint$`, lineOf(terminating.IP.String()))
	assert.Regexp(t, `nodePort\s+\*:\d+\s+present`, text)
	code, _ = get(t, n1, kubeProxyMetrics+"/haproxy/explain/default/nothere")
	assert.Equal(t, http.StatusNotFound, code)

	// Both metric endpoints serve the documented names.
	var kp string
	require.Eventually(t, func() bool {
		code, kp = get(t, n1, kubeProxyMetrics+"/metrics")
		return code == http.StatusOK && strings.Contains(kp, "kubeproxy_network_programming_duration_seconds_count{")
	}, time.Minute, 200*time.Millisecond, "kube-proxy never observed the network programming of Service programmed")
	code, hp := get(t, n1, haproxyMetrics)
	require.Equal(t, http.StatusOK, code, "HAProxy's exporter at its default address")
	kpNames, hpNames := exposed(kp), exposed(hp)
	kpFamilies := families(kp)
	doc, err := os.ReadFile(repoFile(t, "docs/observability.md"))
	require.NoError(t, err)
	documented := regexp.MustCompile("`((?:kubeproxy|haproxy)_[a-z0-9_]+)`").FindAllStringSubmatch(string(doc), -1)
	require.NotEmpty(t, documented)
	for _, m := range documented {
		name := m[1]
		if strings.HasPrefix(name, "kubeproxy_") {
			if name == "kubeproxy_haproxy_http_requests_total" || name == "kubeproxy_haproxy_http_request_duration_seconds" {
				continue // only once an HTTP Service port has had requests (the e2e suite counts them)
			}
			assert.True(t, kpNames[name], "documented %s is not on kube-proxy's /metrics, which has %v", name, slices.Sorted(maps.Keys(kpFamilies)))
			assert.Contains(t, kp, "# HELP "+name+" ", "%s has a help text", name)
		} else {
			assert.True(t, hpNames[name], "documented %s is not on HAProxy's exporter", name)
		}
	}
	// Every kubeproxy_haproxy_ metric the node serves is documented.
	for name := range kpFamilies {
		if strings.HasPrefix(name, "kubeproxy_haproxy_") {
			assert.Contains(t, string(doc), "`"+name+"`", "%s is served but not in docs/observability.md", name)
		}
	}

	// Every metric the dashboard queries is served.
	for _, name := range dashboardMetrics(t) {
		assert.True(t, kpNames[name] || hpNames[name], "the dashboard queries %s, which neither endpoint serves", name)
	}
}

// families lists the metric families of a Prometheus text exposition.
func families(text string) map[string]bool {
	names := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, "# TYPE "); ok {
			names[strings.Fields(rest)[0]] = true
		}
	}
	return names
}

// exposed lists the metric names of a Prometheus text exposition: the
// names of its samples (histograms by their _bucket, _sum and _count too)
// and of its families.
func exposed(text string) map[string]bool {
	names := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, "# TYPE "); ok {
			names[strings.Fields(rest)[0]] = true
			continue
		}
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name := l[:strings.IndexAny(l, "{ ")]
		names[name] = true
	}
	return names
}

// dashboardMetrics are the metric names in the dashboard's queries.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(repoFile(t, "deploy/grafana/kube-haproxy.json"))
	require.NoError(t, err)
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(b, &d))
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(string); ok {
			exprs = append(exprs, q)
		}
	}
	metric := regexp.MustCompile(`\b(?:kubeproxy|haproxy)_[a-z0-9_]+\b`)
	seen := map[string]bool{}
	var names []string
	for _, e := range exprs {
		for _, m := range metric.FindAllString(e, -1) {
			if !seen[m] {
				seen[m] = true
				names = append(names, m)
			}
		}
	}
	require.NotEmpty(t, names, "no query in the dashboard")
	require.Greater(t, len(names), 20, "the dashboard queries fewer metrics than it shows: %v", names)
	return names
}
