package proxier

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// TestAppProtocol: a port's appProtocol decides whether HAProxy balances
// it per request, over HTTP/1.1 or HTTP/2. TLS and plain TCP values are
// relayed quietly; any other value is relayed as TCP too, with one Normal
// event saying so.
func TestAppProtocol(t *testing.T) {
	for _, tc := range []struct {
		appProtocol *string
		want        haproxycfg.AppProtocol
		event       bool
	}{
		{nil, haproxycfg.AppTCP, false},
		{ptr.To("http"), haproxycfg.AppHTTP1, false},
		{ptr.To("kubernetes.io/ws"), haproxycfg.AppHTTP1, false},
		{ptr.To("kubernetes.io/h2c"), haproxycfg.AppH2C, false},
		{ptr.To("gRPC"), haproxycfg.AppH2C, false},
		{ptr.To("http2"), haproxycfg.AppH2C, false},
		{ptr.To("https"), haproxycfg.AppTCP, false},
		{ptr.To("kubernetes.io/wss"), haproxycfg.AppTCP, false},
		{ptr.To("mysql"), haproxycfg.AppTCP, true},
	} {
		recorder := &objectRecorder{FakeRecorder: events.NewFakeRecorder(10)}
		p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) { c.Recorder = recorder })
		makeServiceMap(p, lbService(func(svc *v1.Service) { svc.Spec.Ports[0].AppProtocol = tc.appProtocol }))
		populateEndpointSlices(p, lbEndpoints(nil))
		require.NoError(t, p.syncProxyRules())
		sp := servicePort(applier.model(v1.IPv4Protocol), "ns1.svc1:p80:tcp")
		require.NotNil(t, sp)
		name := ptr.Deref(tc.appProtocol, "(none)")
		assert.Equal(t, tc.want, sp.AppProtocol, name)
		evs := recorder.drain()
		if !tc.event {
			assert.Empty(t, evs, name)
			continue
		}
		require.Len(t, evs, 1, name)
		assert.True(t, strings.HasPrefix(evs[0], "Normal AppProtocolAsTCP "), evs[0])
		assert.Contains(t, evs[0], `appProtocol "mysql" is not one HAProxy balances per request`)
		require.NoError(t, p.syncProxyRules())
		assert.Empty(t, recorder.drain(), "reported once")
	}
}
