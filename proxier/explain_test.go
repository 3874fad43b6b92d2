package proxier

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/endpointcheck"
	"kube-haproxy.io/kube-haproxy/proxier/explain"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// explainFixture is a node proxier with an LB Service of
// externalTrafficPolicy Local and active checks, whose endpoints are in
// every state explain names, and a fake runtime API that holds what the
// proxier applied.
func explainFixture(t *testing.T) (*explainer, *runtimeapi.Fake, *Proxier) {
	t.Helper()
	ctx := context.Background()
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	log := newAppliedLog(applier, nil)
	p.applier = log
	api := runtimeapi.NewFake()
	api.LoadBackend("checks-ipv4", true)
	p.checker = endpointcheck.New(api, "checks-ipv4", nil, logr.Discard())

	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = 30000
		svc.Annotations = map[string]string{AnnotationHealthCheck: "tcp"}
	}))
	populateEndpointSlices(p, lbEndpoints(func(eps *discovery.EndpointSlice) {
		eps.Endpoints = []discovery.Endpoint{
			endpoint("10.180.0.1", testHostname, nil, nil, nil),
			endpoint("10.180.2.1", "host2", nil, nil, nil),
			endpoint("10.180.2.2", "host2", ptr.To(false), ptr.To(false), nil),
			endpoint("10.180.0.3", testHostname, ptr.To(false), ptr.To(true), ptr.To(true)),
			endpoint("10.180.2.4", "host2", nil, nil, nil),
		}
	}))
	require.NoError(t, p.syncProxyRules())
	require.NoError(t, p.checker.Poll(ctx))
	down := endpointcheck.Target{Endpoint: netip.MustParseAddrPort("10.180.2.4:80"), Check: *servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp").Check}
	require.NoError(t, api.SetCheckResult("checks-ipv4", down.ServerName(), true))
	require.NoError(t, p.checker.Poll(ctx))
	require.NoError(t, p.syncProxyRules())

	// HAProxy holds what was applied, but for the ClusterIP's entry.
	d := applier.model(v1.IPv4Protocol).Dispatchers[0]
	services, endpoints, _ := haproxycfg.RenderMaps(d)
	var kept []runtimeapi.MapEntry
	for _, e := range haproxycfg.ParseMap(services) {
		if e.Key != "172.30.0.41:80" {
			kept = append(kept, runtimeapi.MapEntry{Key: e.Key, Value: e.Value})
		}
	}
	api.LoadMap(d.ServicesMap(), kept...)
	var eps []runtimeapi.MapEntry
	for _, e := range haproxycfg.ParseMap(endpoints) {
		eps = append(eps, runtimeapi.MapEntry{Key: e.Key, Value: e.Value})
	}
	api.LoadMap(d.EndpointsMap(), eps...)
	return &explainer{proxiers: []*Proxier{p}, applied: log, api: api}, api, p
}

func TestExplainEndpointStates(t *testing.T) {
	e, _, _ := explainFixture(t)
	s, found := e.Explain(context.Background(), "ns1", "svc1")
	require.True(t, found)
	require.Len(t, s.Families, 1)
	f := s.Families[0]
	assert.True(t, f.Runtime.Read, f.Runtime.Error)
	assert.Equal(t, "services-ipv4", f.Frontend)
	require.Len(t, f.Ports, 1)
	port := f.Ports[0]
	assert.True(t, port.Served)
	assert.Equal(t, "ns1.svc1:p80:tcp", port.Name)
	assert.Equal(t, "Local", port.ExternalTrafficPolicy)
	require.NotNil(t, port.LastChange)
	assert.WithinDuration(t, time.Now(), *port.LastChange, time.Minute)
	assert.False(t, port.Reloaded)

	dispatch := map[string]explain.Match{}
	for _, d := range port.Dispatch {
		dispatch[d.Kind+" "+d.Key] = d.Match
	}
	assert.Equal(t, map[string]explain.Match{
		"clusterIP 172.30.0.41:80":    explain.Missing,
		"nodePort *:3001":             explain.Present,
		"externalIP 192.168.99.11:80": explain.Present,
		"loadBalancer 1.2.3.4:80":     explain.Present,
	}, dispatch)
	sets := map[string]string{}
	for _, set := range port.Sets {
		sets[set.Policy] = set.Name + " " + string(set.Match)
		assert.Equal(t, set.Endpoints, set.InHAProxy, set.Name)
	}
	assert.Equal(t, map[string]string{"Cluster": "ns1.svc1:p80:tcp present", "Local": "ns1.svc1:p80:tcp:local present"}, sets)

	type state struct {
		in  string
		out string
	}
	got := map[string]state{}
	for _, ep := range port.Endpoints {
		var out []string
		for _, x := range ep.Out {
			out = append(out, x.Policy+"="+string(x.Reason))
		}
		got[ep.Address] = state{strings.Join(ep.InSets, ","), strings.Join(out, ",")}
		require.NotNil(t, ep.Check, ep.Address)
	}
	assert.Equal(t, map[string]state{
		"10.180.0.1:80": {"Cluster,Local", ""},
		"10.180.2.1:80": {"Cluster", "Local=other-node"},
		"10.180.2.2:80": {"", "Cluster=not-ready,Local=not-ready"},
		"10.180.0.3:80": {"", "Cluster=terminating,Local=terminating"},
		"10.180.2.4:80": {"", "Cluster=failing-check,Local=other-node"},
	}, got)

	_, found = e.Explain(context.Background(), "ns1", "nothere")
	assert.False(t, found)
}

// Without HAProxy's runtime API, explain still says what the proxier
// applied, and that the live state is unknown.
func TestExplainWithoutRuntimeAPI(t *testing.T) {
	e, _, _ := explainFixture(t)
	e.api = nil
	s, found := e.Explain(context.Background(), "ns1", "svc1")
	require.True(t, found)
	f := s.Families[0]
	assert.False(t, f.Runtime.Read)
	for _, d := range f.Ports[0].Dispatch {
		assert.Equal(t, explain.Unknown, d.Match, d.Key)
	}
}

// A change of the port is dated; a sync that changes nothing keeps the date.
func TestExplainLastChange(t *testing.T) {
	e, _, p := explainFixture(t)
	first := e.applied.families[v1.IPv4Protocol].ports["ns1.svc1:p80:tcp"].changed
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, first, e.applied.families[v1.IPv4Protocol].ports["ns1.svc1:p80:tcp"].changed, "unchanged port, same date")
	populateEndpointSlices(p, makeTestEndpointSlice("ns1", "svc1", 2, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv4
		eps.Endpoints = []discovery.Endpoint{endpoint("10.180.2.9", "host2", nil, nil, nil)}
		eps.Ports = []discovery.EndpointPort{tcpPort("p80", 80)}
	}))
	time.Sleep(time.Millisecond)
	require.NoError(t, p.syncProxyRules())
	assert.True(t, e.applied.families[v1.IPv4Protocol].ports["ns1.svc1:p80:tcp"].changed.After(first), "a new endpoint is a change")
}

func TestExplainHandler(t *testing.T) {
	e, _, _ := explainFixture(t)
	srv := httptest.NewServer(newProvider(nil, e))
	defer srv.Close()
	get := func(path, accept string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		require.NoError(t, err)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var b strings.Builder
		_, err = io.Copy(&b, resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b.String()
	}

	code, text := get("/haproxy/explain/ns1/svc1", "")
	require.Equal(t, http.StatusOK, code, text)
	t.Log(text)
	for _, want := range []string{
		"Service ns1/svc1",
		"IPv4: frontend services-ipv4",
		"port p80 80/TCP: ns1.svc1:p80:tcp",
		"externalTrafficPolicy Local",
		"clusterIP     172.30.0.41:80    missing",
		"10.180.2.1:80",
		"Local: on another node (traffic policy Local)",
		"terminating; used only while the set has no ready endpoint",
		"failing its active check",
		"not counted per endpoint",
	} {
		assert.Contains(t, text, want)
	}

	for _, how := range [][2]string{{"/haproxy/explain/ns1/svc1?format=json", ""}, {"/haproxy/explain/ns1/svc1", "application/json"}} {
		code, body := get(how[0], how[1])
		require.Equal(t, http.StatusOK, code)
		var s explain.Service
		require.NoError(t, json.Unmarshal([]byte(body), &s), body)
		assert.Equal(t, "svc1", s.Name)
		require.Len(t, s.Families, 1)
		assert.Len(t, s.Families[0].Ports[0].Endpoints, 5)
	}

	code, _ = get("/haproxy/explain/ns1/nothere", "")
	assert.Equal(t, http.StatusNotFound, code)
	for _, bad := range []string{"/haproxy/explain/ns1", "/haproxy/explain/NS/svc1", "/haproxy/explain/ns1/svc1/x", "/haproxy/explain/ns1/a%0Ab"} {
		code, body := get(bad, "")
		assert.Equal(t, http.StatusBadRequest, code, bad)
		assert.NotContains(t, body, "\nb", "the request is not echoed")
	}
}

// Each reason, in upstream's order: readiness, then the node of a Local
// set, then terminating, then what this proxier adds.
func TestExplainExclusionReasons(t *testing.T) {
	for _, tc := range []struct {
		policy string
		ep     explain.Endpoint
		valid  bool
		want   explain.Reason
	}{
		{"Cluster", explain.Endpoint{Ready: true, Serving: true}, false, explain.BadAddress},
		{"Local", explain.Endpoint{Terminating: true}, true, explain.NotReady},
		{"Local", explain.Endpoint{Serving: true, Terminating: true}, true, explain.OtherNode},
		{"Local", explain.Endpoint{Local: true, Serving: true, Terminating: true}, true, explain.Terminating},
		{"Cluster", explain.Endpoint{Ready: true, Serving: true, Check: &explain.Check{Down: true}}, true, explain.FailingCheck},
		{"Cluster", explain.Endpoint{Ready: true, Serving: true, ZoneHints: []string{"zone-b"}}, true, explain.Topology},
		{"Cluster", explain.Endpoint{Ready: true, Serving: true}, true, explain.Pending},
	} {
		x := exclusion(tc.policy, tc.ep, tc.valid, "zone-a")
		assert.Equal(t, tc.want, x.Reason, "%+v", tc.ep)
		assert.Equal(t, tc.policy, x.Policy)
		assert.NotEmpty(t, x.Detail)
	}
	x := exclusion("Cluster", explain.Endpoint{Ready: true, Serving: true, ZoneHints: []string{"zone-b"}}, true, "zone-a")
	assert.Equal(t, `topology hints for zones [zone-b] nodes [], this node's zone "zone-a"`, x.Detail)
}

// A dual-stack Service is explained in both families, each from its own
// proxier and model.
func TestExplainDualStack(t *testing.T) {
	applier := newFakeApplier()
	log := newAppliedLog(applier, nil)
	p4, _, _ := newFakeProxierWithApplier(t, v1.IPv4Protocol, applier)
	p6, _, _ := newFakeProxierWithApplier(t, v1.IPv6Protocol, applier)
	svc := makeTestService("ns1", "svc1", func(svc *v1.Service) {
		svc.Spec.ClusterIP = "172.30.0.41"
		svc.Spec.ClusterIPs = []string{"172.30.0.41", "fd00::41"}
		svc.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
		svc.Spec.Ports = addTestPort(nil, "p80", v1.ProtocolTCP, 80, 0, 0)
	})
	for _, p := range []*Proxier{p4, p6} {
		p.applier = log
		makeServiceMap(p, svc)
	}
	populateEndpointSlices(p4, lbEndpoints(nil))
	populateEndpointSlices(p6, makeTestEndpointSlice("ns1", "svc1", 2, func(eps *discovery.EndpointSlice) {
		eps.AddressType = discovery.AddressTypeIPv6
		eps.Endpoints = []discovery.Endpoint{endpoint("fd00:180::1", testHostname, nil, nil, nil)}
		eps.Ports = []discovery.EndpointPort{tcpPort("p80", 80)}
	}))
	require.NoError(t, p4.syncProxyRules())
	require.NoError(t, p6.syncProxyRules())

	e := &explainer{proxiers: []*Proxier{p4, p6}, applied: log}
	s, found := e.Explain(context.Background(), "ns1", "svc1")
	require.True(t, found)
	require.Len(t, s.Families, 2)
	got := map[string][]string{}
	for _, f := range s.Families {
		require.Len(t, f.Ports, 1)
		port := f.Ports[0]
		assert.True(t, port.Served, f.Family)
		for _, d := range port.Dispatch {
			got[f.Family] = append(got[f.Family], d.Key)
		}
		for _, ep := range port.Endpoints {
			got[f.Family] = append(got[f.Family], ep.Address+" "+strings.Join(ep.InSets, ","))
		}
	}
	assert.Equal(t, map[string][]string{
		"IPv4": {"172.30.0.41:80", "10.180.0.1:80 Cluster", "10.180.2.1:80 Cluster"},
		"IPv6": {"[fd00::41]:80", "[fd00:180::1]:80 Cluster"},
	}, got)
	assert.Equal(t, "services-ipv6", s.Families[1].Frontend)
}
