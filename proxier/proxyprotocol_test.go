package proxier

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// TestProxyProtocolAnnotation: the Service annotation sets the PROXY
// protocol version of each of its ports. A value that names no version
// serves the port without the header, with one Warning event while it
// lasts and the gauge; fixing the value clears both.
func TestProxyProtocolAnnotation(t *testing.T) {
	recorder := &objectRecorder{FakeRecorder: events.NewFakeRecorder(10)}
	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.Recorder = recorder })
	annotated := func(v string) *v1.Service {
		return lbService(func(svc *v1.Service) { svc.Annotations = map[string]string{AnnotationProxyProtocol: v} })
	}
	version := func() haproxycfg.ProxyProtocol {
		t.Helper()
		sp := servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp")
		require.NotNil(t, sp)
		return sp.ProxyProtocol
	}
	svc := lbService(nil)
	makeServiceMap(p, svc)
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, haproxycfg.NoProxyProtocol, version(), "no annotation: no header")

	for _, tc := range []struct {
		value string
		want  haproxycfg.ProxyProtocol
	}{
		{"v1", haproxycfg.ProxyProtocolV1},
		{"v2", haproxycfg.ProxyProtocolV2},
		{" V2 ", haproxycfg.ProxyProtocolV2},
		{"none", haproxycfg.NoProxyProtocol},
	} {
		next := annotated(tc.value)
		p.OnServiceUpdate(svc, next)
		svc = next
		require.NoError(t, p.syncProxyRules())
		assert.Equal(t, tc.want, version(), "annotation %q", tc.value)
	}
	assert.Empty(t, recorder.drain())
	assert.InDelta(t, 0, gaugeValue(t, invalidAnnotations.WithLabelValues("InvalidProxyProtocol", "IPv4")), 0)

	// A value with a line break: served without the header, reported once.
	bad := annotated("v3\n    server evil 1.2.3.4:80")
	p.OnServiceUpdate(svc, bad)
	svc = bad
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, haproxycfg.NoProxyProtocol, version())
	runConnectionTests(t, applier, []connectionTest{
		{name: "still served", sourceIP: testPodClient, destIP: "172.30.0.41", destPort: 80, output: "10.180.0.1:80, 10.180.2.1:80"},
	})
	evs := recorder.drain()
	require.Len(t, evs, 1)
	assert.True(t, strings.HasPrefix(evs[0], "Warning InvalidProxyProtocol "), evs[0])
	assert.Contains(t, evs[0], `Port p80: annotation haproxy.kube-haproxy.io/proxy-protocol="v3\n    server evil 1.2.3.4:80" is not v1 or v2`)
	assert.InDelta(t, 1, gaugeValue(t, invalidAnnotations.WithLabelValues("InvalidProxyProtocol", "IPv4")), 0)
	require.NoError(t, p.syncProxyRules())
	assert.Empty(t, recorder.drain(), "reported once while it lasts")

	fixed := annotated("v1")
	p.OnServiceUpdate(svc, fixed)
	require.NoError(t, p.syncProxyRules())
	assert.Equal(t, haproxycfg.ProxyProtocolV1, version())
	assert.InDelta(t, 0, gaugeValue(t, invalidAnnotations.WithLabelValues("InvalidProxyProtocol", "IPv4")), 0)
	assert.Empty(t, recorder.drain())
}
