package proxier

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// HAProxy's Prometheus exporter listens on loopback by default, two ports
// above the dispatcher (after the peer port), and can be moved or turned
// off; nothing else reaches the bind line.
func TestPrometheusExporterAddress(t *testing.T) {
	for _, tc := range []struct {
		dispatchPort int
		addr         string
		want         string
	}{
		{0, "", "127.0.0.1:10402"},
		{20000, "", "127.0.0.1:20002"},
		{65534, "", "127.0.0.1:65533"},
		{0, "0.0.0.0:9101", "0.0.0.0:9101"},
		{0, "[::1]:9101", "[::1]:9101"},
		{0, "off", "off"},
	} {
		c := Config{NodeName: "n", DispatchPort: tc.dispatchPort, PrometheusExporterAddress: tc.addr}
		c.SetDefaults()
		require.NoError(t, c.Validate(), tc.addr)
		assert.Equal(t, tc.want, c.PrometheusExporterAddress)
		global, defaults := c.haproxySections()
		text, err := haproxycfg.Render(&haproxycfg.Config{Global: global, Defaults: defaults})
		require.NoError(t, err)
		if tc.want == "off" {
			assert.NotContains(t, string(text), "prometheus")
			continue
		}
		assert.Contains(t, string(text), "frontend prometheus\n    mode http\n    bind "+tc.want+" name prometheus\n")
		assert.Equal(t, 2, (&haproxycfg.Config{Global: global}).Listeners(), "the peer and the exporter")
	}
	for _, bad := range []string{"localhost:9101", "127.0.0.1", "127.0.0.1:0", "Off", "127.0.0.1:9101\nfrontend evil", "[fe80::1%eth0]:9101"} {
		c := Config{NodeName: "n", PrometheusExporterAddress: bad}
		c.SetDefaults()
		err := c.Validate()
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), "haproxy.prometheusExporterAddress")
	}
}
