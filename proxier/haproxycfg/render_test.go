package haproxycfg

import (
	"crypto/sha256"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
)

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

// sampleConfig is a service port with ClusterIP, a NodePort, an LB IP with
// source ranges, traffic policy Local for external traffic and affinity.
func sampleConfig() *Config {
	return &Config{
		Global: Global{MaxConn: 9900, NBThread: 2, StatsSocket: "/run/kube-haproxy/haproxy.sock", HardStopAfter: 30 * time.Second},
		Defaults: Defaults{
			TimeoutConnect: 5 * time.Second, TimeoutClient: time.Hour, TimeoutServer: time.Hour,
			TimeoutClientFin: 1500 * time.Millisecond,
		},
		Frontends: []*Frontend{{
			Name:    "default.web:http:tcp",
			Comment: "Service default/web port http (TCP)",
			Binds: []Bind{
				{Name: "clusterip", Addr: ip("10.96.0.10"), Port: 80},
				{Name: "nodeport-192.168.1.10", Addr: ip("192.168.1.10"), Port: 30080},
				{Name: "loadbalancer-1.2.3.4", Addr: ip("1.2.3.4"), Port: 80},
			},
			ACLs: []ACL{
				{Name: "external", Kind: ACLBindNamePrefix, Values: []string{"nodeport-", "loadbalancer-", "externalip-"}},
				{Name: "loadbalancer", Kind: ACLBindNamePrefix, Values: []string{"loadbalancer-"}},
				{Name: "lb-source-allowed", Kind: ACLSourceIn, Prefixes: []netip.Prefix{pfx("203.0.113.0/24"), pfx("10.1.2.3/8")}},
			},
			TCPRequestConnection: []TCPRule{
				{Action: TCPSilentDrop, Cond: Condition{{ACL: "loadbalancer"}, {ACL: "lb-source-allowed", Negate: true}}},
				{Action: TCPReject, Cond: Condition{{ACL: "external", Negate: true}, {BackendHasServers: "default.web:http:tcp", Negate: true}}},
				{Action: TCPSilentDrop, Cond: Condition{{ACL: "external"}, {BackendHasServers: "default.web:http:tcp:local", Negate: true}}},
			},
			UseBackends:    []UseBackend{{Backend: "default.web:http:tcp:local", Cond: Condition{{ACL: "external"}}}},
			DefaultBackend: "default.web:http:tcp",
		}},
		Backends: []*Backend{
			{
				Name:       "default.web:http:tcp:local",
				Comment:    "local endpoints",
				StickTable: &StickTable{Expire: 3 * time.Hour},
				Servers:    []Server{{Name: "10.180.0.1:8080", Addr: ip("10.180.0.1"), Port: 8080, ID: 1}},
			},
			{
				Name:       "default.web:http:tcp",
				Comment:    "all endpoints",
				StickTable: &StickTable{Expire: 3 * time.Hour},
				Servers: []Server{
					{Name: "10.180.0.1:8080", Addr: ip("10.180.0.1"), Port: 8080, ID: 1},
					{Name: "10.180.1.1:8080", Addr: ip("10.180.1.1"), Port: 8080, ID: 2, Comment: "node b"},
				},
			},
		},
	}
}

const sampleRendered = Header + `

global
    maxconn 9900
    nbthread 2
    stats socket /run/kube-haproxy/haproxy.sock mode 600 level admin expose-fd listeners
    hard-stop-after 30s

defaults
    mode tcp
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    timeout client-fin 1500ms

# Service default/web port http (TCP)
frontend default.web:http:tcp
    bind 10.96.0.10:80 name clusterip
    bind 192.168.1.10:30080 name nodeport-192.168.1.10
    bind 1.2.3.4:80 name loadbalancer-1.2.3.4
    acl external so_name -m beg nodeport- loadbalancer- externalip-
    acl loadbalancer so_name -m beg loadbalancer-
    acl lb-source-allowed src 203.0.113.0/24 10.0.0.0/8
    tcp-request connection silent-drop if loadbalancer !lb-source-allowed
    tcp-request connection reject if !external !{ nbsrv(default.web:http:tcp) gt 0 }
    tcp-request connection silent-drop if external !{ nbsrv(default.web:http:tcp:local) gt 0 }
    use_backend default.web:http:tcp:local if external
    default_backend default.web:http:tcp

# all endpoints
backend default.web:http:tcp
    balance roundrobin
    stick-table type ip size 100000 expire 10800s
    stick on src
    server 10.180.0.1:8080 10.180.0.1:8080 id 1
    # node b
    server 10.180.1.1:8080 10.180.1.1:8080 id 2

# local endpoints
backend default.web:http:tcp:local
    balance roundrobin
    stick-table type ip size 100000 expire 10800s
    stick on src
    server 10.180.0.1:8080 10.180.0.1:8080 id 1
`

func TestRender(t *testing.T) {
	out, err := Render(sampleConfig())
	require.NoError(t, err)
	assert.Equal(t, sampleRendered, string(out))
	haproxytest.Check(t, out)
}

func TestRenderIsDeterministic(t *testing.T) {
	c := sampleConfig()
	first, err := Render(c)
	require.NoError(t, err)
	// Order of frontends and backends in the model does not matter.
	c.Backends[0], c.Backends[1] = c.Backends[1], c.Backends[0]
	second, err := Render(c)
	require.NoError(t, err)
	assert.Equal(t, string(first), string(second))
}

func TestRenderIPv6(t *testing.T) {
	c := &Config{
		Frontends: []*Frontend{{
			Name: "default.web:http:tcp:ipv6",
			Binds: []Bind{
				{Name: "clusterip", Addr: ip("fd00:10:96::10"), Port: 80, Transparent: true},
				{Name: "nodeport-any", Addr: ip("::"), Port: 30080},
			},
			ACLs:           []ACL{{Name: "lb-source-allowed", Kind: ACLSourceIn, Prefixes: []netip.Prefix{pfx("2001:db8::/32")}}},
			DefaultBackend: "default.web:http:tcp:ipv6",
		}},
		Backends: []*Backend{{
			Name:       "default.web:http:tcp:ipv6",
			StickTable: &StickTable{IPv6: true, Size: 10, Expire: time.Minute},
			Servers:    []Server{{Name: ServerName(ip("fd00:180::1"), 8080), Addr: ip("fd00:180::1"), Port: 8080, ID: 1}},
		}},
	}
	out, err := Render(c)
	require.NoError(t, err)
	s := string(out)
	assert.Contains(t, s, "    bind [fd00:10:96::10]:80 name clusterip transparent\n")
	assert.Contains(t, s, "    bind [::]:30080 name nodeport-any v6only\n")
	assert.Contains(t, s, "    acl lb-source-allowed src 2001:db8::/32\n")
	assert.Contains(t, s, "    stick-table type ipv6 size 10 expire 60s\n")
	assert.Contains(t, s, "    server fd00:180::1.8080 [fd00:180::1]:8080 id 1\n")
	haproxytest.Check(t, out)
}

func TestValidateRejects(t *testing.T) {
	testCases := []struct {
		name   string
		mutate func(c *Config)
		errSub string
	}{
		{"frontend name with space", func(c *Config) { c.Frontends[0].Name = "a b" }, "frontend name"},
		{"frontend name with newline", func(c *Config) { c.Frontends[0].Name = "a\nfrontend x" }, "frontend name"},
		{"empty backend name", func(c *Config) { c.Backends[0].Name = "" }, "backend name"},
		{"server name with slash", func(c *Config) { c.Backends[0].Servers[0].Name = "a/b" }, "server name"},
		{"bind name with hash", func(c *Config) { c.Frontends[0].Binds[0].Name = "a#b" }, "bind name"},
		{"acl value with space", func(c *Config) { c.Frontends[0].ACLs[0].Values[0] = "a b" }, "acl value"},
		{"unknown default backend", func(c *Config) { c.Frontends[0].DefaultBackend = "nope" }, "unknown backend"},
		{"unknown use_backend", func(c *Config) { c.Frontends[0].UseBackends[0].Backend = "nope" }, "unknown backend"},
		{"unknown acl", func(c *Config) { c.Frontends[0].TCPRequestConnection[0].Cond[0].ACL = "nope" }, "unknown acl"},
		{"unknown nbsrv backend", func(c *Config) { c.Frontends[0].TCPRequestConnection[1].Cond[1].BackendHasServers = "nope" }, "unknown backend"},
		{"unknown action", func(c *Config) { c.Frontends[0].TCPRequestConnection[0].Action = "reject\nlisten x" }, "unknown tcp-request"},
		{"duplicate backend", func(c *Config) { c.Backends[1].Name = c.Backends[0].Name }, "duplicate name"},
		{"duplicate frontend", func(c *Config) { c.Frontends = append(c.Frontends, c.Frontends[0]) }, "duplicate name"},
		{"duplicate server id", func(c *Config) { c.Backends[1].Servers[1].ID = 1 }, "duplicate id"},
		{"duplicate server name", func(c *Config) { c.Backends[1].Servers[1].Name = c.Backends[1].Servers[0].Name }, "duplicate name"},
		{"duplicate server id, large backend", func(c *Config) { manyServers(c.Backends[1]); c.Backends[1].Servers[40].ID = 3 }, "duplicate id"},
		{"duplicate server name, large backend", func(c *Config) {
			manyServers(c.Backends[1])
			c.Backends[1].Servers[40].Name = c.Backends[1].Servers[2].Name
		}, "duplicate name"},
		{"static balance", func(c *Config) { c.Backends[0].Balance = "source" }, "dynamic"},
		{"no bind", func(c *Config) { c.Frontends[0].Binds = nil }, "no bind"},
		{"port 0", func(c *Config) { c.Frontends[0].Binds[0].Port = 0 }, "port 0"},
		{"zero address", func(c *Config) { c.Backends[0].Servers[0].Addr = netip.Addr{} }, "invalid address"},
		{"zoned address", func(c *Config) { c.Frontends[0].Binds[0].Addr = ip("fe80::1%eth0") }, "zones"},
		{"empty source acl", func(c *Config) { c.Frontends[0].ACLs[2].Prefixes = nil }, "no prefixes"},
		{"socket path with space", func(c *Config) { c.Global.StatsSocket = "/run/a b" }, "stats socket"},
		{"relative socket path", func(c *Config) { c.Global.StatsSocket = "run/a" }, "stats socket"},
		{"use_backend without condition", func(c *Config) { c.Frontends[0].UseBackends[0].Cond = nil }, "no condition"},
		{"negative timeout", func(c *Config) { c.Defaults.TimeoutClient = -1 }, "negative"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			c := sampleConfig()
			tc.mutate(c)
			out, err := Render(c)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.errSub)
			assert.Nil(t, out)
		})
	}
}

func TestCommentsCannotBreakLines(t *testing.T) {
	c := sampleConfig()
	c.Frontends[0].Comment = "evil\nfrontend x\r\n\x00bind 1.2.3.4:1 \\"
	c.Backends[0].Servers[0].Comment = "ünïcode\n"
	out, err := Render(c)
	require.NoError(t, err)
	s := string(out)
	assert.Equal(t, strings.Count(sampleRendered, "\n")+1, strings.Count(s, "\n"), "only the server comment line is added")
	assert.Contains(t, s, `# evil\x0afrontend x\x0d\x0a\x00bind 1.2.3.4:1 \x5c`+"\n")
	assert.NotContains(t, s, "\r")
	haproxytest.Check(t, out)
}

func TestServerName(t *testing.T) {
	assert.Equal(t, "10.0.0.1:80", ServerName(ip("10.0.0.1"), 80))
	assert.Equal(t, "10.0.0.1:80", ServerName(ip("::ffff:10.0.0.1"), 80))
	assert.Equal(t, "fd00::1.80", ServerName(ip("fd00::1"), 80))
	assert.True(t, ValidName(ServerName(ip("fd00::1"), 80)))
}

func TestFormatDuration(t *testing.T) {
	assert.Equal(t, "10800s", FormatDuration(3*time.Hour))
	assert.Equal(t, "1500ms", FormatDuration(1500*time.Millisecond))
	assert.Equal(t, "0s", FormatDuration(0))
}

func TestMaxConnForFileLimit(t *testing.T) {
	assert.Equal(t, 9850, MaxConnForFileLimit(20000, 100))
	assert.Equal(t, 1, MaxConnForFileLimit(100, 100))
}

// The structure hash is the hash of the model rendered without servers,
// whatever the servers are.
func TestRenderWithStructure(t *testing.T) {
	c := sampleConfig()
	text, sum, err := RenderWithStructure(c)
	require.NoError(t, err)
	full, err := Render(c)
	require.NoError(t, err)
	require.Equal(t, string(full), string(text))
	appended, err := AppendRender([]byte("old text"), c)
	require.NoError(t, err)
	require.Equal(t, "old text"+string(full), string(appended))

	bare := *c
	bare.Backends = nil
	for _, be := range c.Backends {
		cp := *be
		cp.Servers = nil
		bare.Backends = append(bare.Backends, &cp)
	}
	bareText, err := Render(&bare)
	require.NoError(t, err)
	require.Equal(t, sha256.Sum256(bareText), sum)
	require.NotEqual(t, sha256.Sum256(full), sum, "the sample has servers")

	// Other servers, same structure; another backend setting, another one.
	other := *c
	other.Backends = nil
	for _, be := range c.Backends {
		cp := *be
		cp.Servers = []Server{{Name: "x", Addr: netip.MustParseAddr("10.9.9.9"), Port: 1, ID: 7, Comment: "moved"}}
		other.Backends = append(other.Backends, &cp)
	}
	_, otherSum, err := RenderWithStructure(&other)
	require.NoError(t, err)
	require.Equal(t, sum, otherSum)
	other.Backends[0].Balance = "leastconn"
	_, otherSum, err = RenderWithStructure(&other)
	require.NoError(t, err)
	require.NotEqual(t, sum, otherSum)
}

// manyServers gives be more servers than validation compares pairwise.
func manyServers(be *Backend) {
	be.Servers = nil
	for i := 1; i <= 2*smallBackend; i++ {
		be.Servers = append(be.Servers, Server{Name: "s" + strconv.Itoa(i), Addr: ip("10.0.0.1"), Port: uint16(i), ID: i})
	}
}
