package haproxycfg

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTrace(t *testing.T) {
	ap := netip.MustParseAddrPort
	all := []netip.AddrPort{ap("10.180.0.1:8080"), ap("10.180.1.1:8080")}
	local := []netip.AddrPort{ap("10.180.0.1:8080")}
	noLocal := func(c *Config) { c.Backend("default.web:http:tcp:local").Servers = nil }
	noEndpoints := func(c *Config) {
		noLocal(c)
		c.Backend("default.web:http:tcp").Servers = nil
	}
	testCases := []struct {
		name    string
		mutate  func(*Config)
		src     string
		dst     string
		verdict Verdict
		backend string
		servers []netip.AddrPort
	}{
		{name: "clusterIP reaches all endpoints", src: "10.0.0.2", dst: "10.96.0.10:80", verdict: Served, backend: "default.web:http:tcp", servers: all},
		{name: "nodePort reaches local endpoints", src: "10.0.0.2", dst: "192.168.1.10:30080", verdict: Served, backend: "default.web:http:tcp:local", servers: local},
		{name: "LB IP from allowed source", src: "203.0.113.9", dst: "1.2.3.4:80", verdict: Served, backend: "default.web:http:tcp:local", servers: local},
		{name: "LB IP from other source is dropped", src: "198.51.100.1", dst: "1.2.3.4:80", verdict: Dropped},
		{name: "wrong port has no listener", src: "10.0.0.2", dst: "10.96.0.10:81", verdict: NoListener},
		{name: "no local endpoints: nodePort dropped", mutate: noLocal, src: "10.0.0.2", dst: "192.168.1.10:30080", verdict: Dropped},
		{name: "no local endpoints: clusterIP still served", mutate: noLocal, src: "10.0.0.2", dst: "10.96.0.10:80", verdict: Served, backend: "default.web:http:tcp", servers: all},
		{name: "no endpoints: clusterIP rejected", mutate: noEndpoints, src: "10.0.0.2", dst: "10.96.0.10:80", verdict: Rejected},
		{name: "IPv4-mapped destination", src: "10.0.0.2", dst: "[::ffff:10.96.0.10]:80", verdict: Served, backend: "default.web:http:tcp", servers: all},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			c := sampleConfig()
			if tc.mutate != nil {
				tc.mutate(c)
			}
			res, err := Trace(c, netip.MustParseAddr(tc.src), ap(tc.dst))
			require.NoError(t, err)
			assert.Equal(t, tc.verdict, res.Verdict, "%s", res)
			assert.Equal(t, tc.backend, res.Backend)
			assert.Equal(t, tc.servers, res.Servers)
			if tc.verdict == Served {
				assert.True(t, res.Sticky)
			}
		})
	}
}

func TestTraceWildcardAndConflicts(t *testing.T) {
	c := sampleConfig()
	c.Frontends = append(c.Frontends, &Frontend{
		Name:           "other",
		Binds:          []Bind{{Name: "nodeport-any", Addr: ip("0.0.0.0"), Port: 30080}},
		DefaultBackend: "default.web:http:tcp",
	})
	// The exact bind wins over the wildcard.
	res, err := Trace(c, ip("10.0.0.2"), netip.MustParseAddrPort("192.168.1.10:30080"))
	require.NoError(t, err)
	assert.Equal(t, "default.web:http:tcp", res.Frontend)
	// Elsewhere the wildcard accepts, but only its own family.
	res, err = Trace(c, ip("10.0.0.2"), netip.MustParseAddrPort("127.0.0.1:30080"))
	require.NoError(t, err)
	assert.Equal(t, "other", res.Frontend)
	res, err = Trace(c, ip("::1"), netip.MustParseAddrPort("[::1]:30080"))
	require.NoError(t, err)
	assert.Equal(t, NoListener, res.Verdict)

	c.Frontends[1].Binds = append(c.Frontends[1].Binds, Bind{Name: "dup", Addr: ip("10.96.0.10"), Port: 80})
	_, err = Trace(c, ip("10.0.0.2"), netip.MustParseAddrPort("10.96.0.10:80"))
	assert.ErrorContains(t, err, "both listen")
}
