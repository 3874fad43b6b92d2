package proxier

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"

	"kube-haproxy.io/kube-haproxy/proxier/endpointcheck"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// TestEndpointChecks: a Service annotated for active checks has its
// endpoints checked through servers of the checks backend; an endpoint
// the checks find down leaves the Service's sets with no API change, and
// comes back when it passes them again. When every endpoint is down the
// set is kept whole.
func TestEndpointChecks(t *testing.T) {
	ctx := context.Background()
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol)
	api := runtimeapi.NewFake()
	api.LoadBackend("checks-ipv4", true)
	changes := 0
	p.checker = endpointcheck.New(api, "checks-ipv4", func() { changes++ }, logr.Discard())

	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Annotations = map[string]string{AnnotationHealthCheck: "tcp", AnnotationHealthCheckFall: "3"}
	}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	require.NoError(t, p.checker.Poll(ctx))
	check := haproxycfg.EndpointCheck{Interval: 500 * time.Millisecond, Rise: 2, Fall: 3}
	target := func(ep string) endpointcheck.Target {
		return endpointcheck.Target{Endpoint: netip.MustParseAddrPort(ep), Check: check}
	}
	ep1, ep2 := target("10.180.0.1:80"), target("10.180.2.1:80")
	for _, tg := range []endpointcheck.Target{ep1, ep2} {
		s := api.Server("checks-ipv4", tg.ServerName())
		require.NotNil(t, s, "a server checks %v", tg.Endpoint)
		assert.True(t, s.HealthEnabled)
	}
	both := "10.180.0.1:80, 10.180.2.1:80"
	lbIP := connectionTest{name: "LB IP", sourceIP: testExternalClient, destIP: "1.2.3.4", destPort: 80}
	serves := func(want string) {
		t.Helper()
		c := lbIP
		c.output = want
		runConnectionTests(t, applier, []connectionTest{c, {name: "cluster IP", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: want}})
	}
	serves(both)

	require.NoError(t, api.SetCheckResult("checks-ipv4", ep1.ServerName(), true))
	require.NoError(t, p.checker.Poll(ctx))
	assert.Equal(t, 1, changes, "the checker asks for a sync")
	require.NoError(t, p.syncProxyRules())
	serves("10.180.2.1:80")
	assert.InDelta(t, 1, gaugeValue(t, endpointsFailingChecks.WithLabelValues("IPv4")), 0)
	sp := servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp")
	require.NoError(t, p.syncProxyRules())
	assert.Same(t, sp, servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp"), "an unchanged copy is the same object")
	assert.NotNil(t, api.Server("checks-ipv4", ep1.ServerName()), "a failing endpoint is still checked")

	require.NoError(t, api.SetCheckResult("checks-ipv4", ep2.ServerName(), true))
	require.NoError(t, p.checker.Poll(ctx))
	require.NoError(t, p.syncProxyRules())
	serves(both)

	require.NoError(t, api.SetCheckResult("checks-ipv4", ep1.ServerName(), false))
	require.NoError(t, api.SetCheckResult("checks-ipv4", ep2.ServerName(), false))
	require.NoError(t, p.checker.Poll(ctx))
	require.NoError(t, p.syncProxyRules())
	serves(both)
	assert.InDelta(t, 0, gaugeValue(t, endpointsFailingChecks.WithLabelValues("IPv4")), 0)
}

// Without the annotation nothing is checked; an invalid one serves the
// Service unchecked, with one event while it lasts and the gauge.
func TestEndpointCheckAnnotations(t *testing.T) {
	ctx := context.Background()
	recorder := &objectRecorder{FakeRecorder: events.NewFakeRecorder(10)}
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.Recorder = recorder })
	api := runtimeapi.NewFake()
	api.LoadBackend("checks-ipv4", true)
	p.checker = endpointcheck.New(api, "checks-ipv4", nil, logr.Discard())
	svc := lbService(nil)
	makeServiceMap(p, svc)
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	require.NoError(t, p.checker.Poll(ctx))
	assert.Empty(t, api.Dump(), "no annotation, no check")
	assert.Nil(t, servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp").Check)

	for _, tc := range []struct {
		annotations map[string]string
		want        *haproxycfg.EndpointCheck
		bad         string
	}{
		{map[string]string{AnnotationHealthCheck: "TCP", AnnotationHealthCheckInterval: "2s", AnnotationHealthCheckRise: "1"},
			&haproxycfg.EndpointCheck{Interval: 2 * time.Second, Rise: 1, Fall: 2}, ""},
		{map[string]string{AnnotationHealthCheck: "none", AnnotationHealthCheckInterval: "2s"}, nil, ""},
		{map[string]string{AnnotationHealthCheck: "http"}, nil, `annotation haproxy.kube-haproxy.io/health-check="http" is not tcp`},
		{map[string]string{AnnotationHealthCheck: "tcp", AnnotationHealthCheckInterval: "10ms"}, nil, `health-check-interval="10ms" is not a duration from 100ms to 1h0m0s`},
		{map[string]string{AnnotationHealthCheck: "tcp", AnnotationHealthCheckFall: "0"}, nil, `health-check-fall="0" is not a number from 1 to 100`},
		{map[string]string{AnnotationHealthCheck: "tcp", AnnotationHealthCheckRise: "2\n    server x 1.2.3.4:80"}, nil, `health-check-rise="2\n    server x 1.2.3.4:80" is not a number`},
	} {
		next := lbService(func(s *v1.Service) { s.Annotations = tc.annotations })
		p.OnServiceUpdate(svc, next)
		svc = next
		require.NoError(t, p.syncProxyRules())
		sp := servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp")
		require.NotNil(t, sp, "%v: still served", tc.annotations)
		assert.Equal(t, tc.want, sp.Check, "%v", tc.annotations)
		evs := recorder.drain()
		if tc.bad == "" {
			assert.Empty(t, evs, "%v", tc.annotations)
			assert.InDelta(t, 0, gaugeValue(t, invalidAnnotations.WithLabelValues("InvalidEndpointCheck", "IPv4")), 0)
			continue
		}
		require.Len(t, evs, 1, "%v", tc.annotations)
		assert.True(t, strings.HasPrefix(evs[0], "Warning InvalidEndpointCheck "), evs[0])
		assert.Contains(t, evs[0], tc.bad)
		assert.InDelta(t, 1, gaugeValue(t, invalidAnnotations.WithLabelValues("InvalidEndpointCheck", "IPv4")), 0)
	}
}
