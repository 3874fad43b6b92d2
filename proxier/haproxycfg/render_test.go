package haproxycfg_test

import (
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
)

var (
	ep1 = netip.MustParseAddrPort("10.180.0.1:8080")
	ep2 = netip.MustParseAddrPort("10.180.1.1:8080")
)

// sample is one IPv4 dispatcher with a ClusterIP Service, one with
// externalTrafficPolicy Local, affinity and source ranges, and one
// without endpoints.
func sample(dir string) *haproxycfg.Config {
	web := &haproxycfg.ServicePort{
		Name:    "default.web:http:tcp",
		Comment: "Service default/web port http (80/TCP)",
		Listeners: []haproxycfg.Listener{
			{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.41"), Port: 80},
		},
		Cluster:       &haproxycfg.EndpointSet{Name: "default.web:http:tcp", Endpoints: []netip.AddrPort{ep1, ep2}},
		WhenEmpty:     haproxycfg.Rejected,
		ProxyProtocol: haproxycfg.ProxyProtocolV2,
	}
	lb := &haproxycfg.ServicePort{
		Name: "ns1.lb:p80:tcp",
		Listeners: []haproxycfg.Listener{
			{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.42"), Port: 80},
			{Kind: haproxycfg.NodePort, Port: 30080},
			{Kind: haproxycfg.LoadBalancer, Addr: netip.MustParseAddr("1.2.3.4"), Port: 80},
		},
		Cluster:       &haproxycfg.EndpointSet{Name: "ns1.lb:p80:tcp", Endpoints: []netip.AddrPort{ep1, ep2}},
		Local:         &haproxycfg.EndpointSet{Name: "ns1.lb:p80:tcp:local", Endpoints: []netip.AddrPort{ep1}, OnNode: true},
		ExternalLocal: true,
		ShortCircuit:  true,
		WhenEmpty:     haproxycfg.Dropped,
		Affinity:      3 * time.Hour,
		SourceRanges:  []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		AppProtocol:   haproxycfg.AppH2C,
	}
	empty := &haproxycfg.ServicePort{
		Name:      "default.empty:80:tcp",
		Listeners: []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("172.30.0.43"), Port: 80}},
		Cluster:   &haproxycfg.EndpointSet{Name: "default.empty:80:tcp"},
		WhenEmpty: haproxycfg.Rejected,
	}
	return &haproxycfg.Config{
		Global:   haproxycfg.Global{NBThread: 2, StatsSocket: "/run/kh/haproxy.sock", HardStopAfter: time.Hour, MaxOldWorkers: 5, PeerPort: 10401},
		Defaults: haproxycfg.Defaults{TimeoutConnect: 5 * time.Second, TimeoutClient: time.Hour, TimeoutServer: time.Hour},
		Dispatchers: []*haproxycfg.Dispatcher{{
			Listen:           netip.MustParseAddrPort("127.0.0.1:10400"),
			MapDir:           dir,
			KeepClientSource: true,
			ClusterSources:   []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("192.168.0.2/32")},
			ServicePorts:     []*haproxycfg.ServicePort{empty, web, lb},
		}},
	}
}

func TestRenderIsAcceptedByHAProxy(t *testing.T) {
	c := sample(t.TempDir())
	c.Dispatchers = append(c.Dispatchers, &haproxycfg.Dispatcher{
		IPv6:   true,
		Listen: netip.MustParseAddrPort("[::1]:10400"),
		MapDir: c.Dispatchers[0].MapDir,
		ServicePorts: []*haproxycfg.ServicePort{{
			Name:      "default.web:http:tcp:ipv6",
			Listeners: []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("fd00::41"), Port: 80}},
			Cluster:   &haproxycfg.EndpointSet{Name: "default.web:http:tcp:ipv6", Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[fd01::1]:8080")}},
			WhenEmpty: haproxycfg.Rejected,
		}},
	})
	haproxytest.CheckModel(t, c)
}

func TestRenderDependsOnSettingsOnly(t *testing.T) {
	a := sample("/run/kh")
	b := sample("/run/kh")
	b.Dispatchers[0].ServicePorts = b.Dispatchers[0].ServicePorts[:1]
	ta, err := haproxycfg.Render(a)
	require.NoError(t, err)
	tb, err := haproxycfg.Render(b)
	require.NoError(t, err)
	assert.Equal(t, string(ta), string(tb), "Service ports live in the maps, not in haproxy.cfg")
	b.Global.MaxOldWorkers = 2
	tb, err = haproxycfg.Render(b)
	require.NoError(t, err)
	assert.NotEqual(t, string(ta), string(tb))
}

func TestRenderMaps(t *testing.T) {
	d := sample("/run/kh").Dispatchers[0]
	services, endpoints, sources := haproxycfg.RenderMaps(d)
	sets := map[string]bool{}
	for _, sp := range d.ServicePorts {
		for _, set := range sp.Sets() {
			sets[set.Name] = true
		}
	}
	assert.Contains(t, string(services), "# Service default/web port http (80/TCP)\n172.30.0.41:80 default.web:http:tcp|default.web:http:tcp|reject|0|0|2|0\n")
	assert.Contains(t, string(services), "\n*:30080 ns1.lb:p80:tcp:local|ns1.lb:p80:tcp|drop|10800|1|0|2\n")
	assert.Contains(t, string(services), "\n172.30.0.42:80 ns1.lb:p80:tcp|ns1.lb:p80:tcp|drop|10800|0|0|2\n")
	// A set's count and generation are in the services map, its entries
	// (of that generation) in the endpoints map.
	assert.Contains(t, string(services), "\ndefault.empty:80:tcp 0|0\n")
	assert.NotContains(t, string(endpoints), "default.empty:80:tcp")
	assert.Contains(t, string(services), "\ndefault.web:http:tcp 2|0\n")
	assert.Contains(t, string(endpoints), "\ndefault.web:http:tcp/0/0 10.180.0.1|8080|")
	assert.NotContains(t, string(endpoints), "default.web:http:tcp/0/ep", "no id entries without affinity")
	ids := haproxycfg.EndpointIDs([]netip.AddrPort{ep1})
	assert.Contains(t, string(endpoints), "\nns1.lb:p80:tcp:local/0/ep"+itoa(ids[0])+" 10.180.0.1|8080|"+itoa(ids[0])+"\n")
	for _, e := range haproxycfg.ParseMap(services) {
		_, set := sets[e.Key]
		assert.NotEqual(t, set, haproxycfg.IsListenerKey(e.Key), "%s is a listener key or a set, not both", e.Key)
	}
	assert.Equal(t, "# Generated by kube-haproxy: do not edit, the proxier rewrites this file.\n10.244.0.0/16\n192.168.0.2/32\n", string(sources))
	// ParseMap reads back what RenderMaps wrote.
	for _, e := range haproxycfg.ParseMap(services) {
		assert.NotContains(t, e.Key+e.Value, " ")
	}
}

func itoa(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

func TestEndpointIDsAreStable(t *testing.T) {
	a := haproxycfg.EndpointIDs([]netip.AddrPort{ep1, ep2})
	b := haproxycfg.EndpointIDs([]netip.AddrPort{ep2})
	assert.Equal(t, a[1], b[0], "an endpoint keeps its id when others come and go")
	assert.NotEqual(t, a[0], a[1])
	for _, id := range a {
		assert.NotZero(t, id)
		assert.Less(t, id, uint32(1<<31))
	}
}

func TestTrace(t *testing.T) {
	d := sample("/run/kh").Dispatchers[0]
	pod := netip.MustParseAddr("10.244.1.5")
	outside := netip.MustParseAddr("203.0.113.9")
	stranger := netip.MustParseAddr("198.51.100.1")
	node := netip.MustParseAddr("192.168.0.2")
	for _, tc := range []struct {
		name string
		src  netip.Addr
		dst  string
		want haproxycfg.Verdict
		eps  []netip.AddrPort
	}{
		{"ClusterIP", pod, "172.30.0.41:80", haproxycfg.Served, []netip.AddrPort{ep1, ep2}},
		{"ClusterIP other port", pod, "172.30.0.41:81", haproxycfg.NotDispatched, nil},
		{"no endpoints", pod, "172.30.0.43:80", haproxycfg.Rejected, nil},
		{"NodePort from outside: Local", outside, "192.168.0.2:30080", haproxycfg.Served, []netip.AddrPort{ep1}},
		{"NodePort from a pod: short-circuit", pod, "192.168.0.2:30080", haproxycfg.Served, []netip.AddrPort{ep1, ep2}},
		{"LB IP from an allowed source", outside, "1.2.3.4:80", haproxycfg.Served, []netip.AddrPort{ep1}},
		{"LB IP from outside the ranges", stranger, "1.2.3.4:80", haproxycfg.Dropped, nil},
		{"unknown node port", node, "192.168.0.2:30081", haproxycfg.NotDispatched, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := haproxycfg.Trace(d, tc.src, netip.MustParseAddrPort(tc.dst))
			assert.Equal(t, tc.want, r.Verdict, r.String())
			assert.ElementsMatch(t, tc.eps, r.Endpoints)
		})
	}
	// An empty Local set with endpoints elsewhere drops external clients.
	d.ServicePorts[2].Local.Endpoints = nil
	r := haproxycfg.Trace(d, outside, netip.MustParseAddrPort("192.168.0.2:30080"))
	assert.Equal(t, haproxycfg.Dropped, r.Verdict)
}

func TestValidateRefusesDuplicatesAndBadInput(t *testing.T) {
	for name, mutate := range map[string]func(c *haproxycfg.Config){
		"duplicate listener": func(c *haproxycfg.Config) {
			c.Dispatchers[0].ServicePorts[1].Listeners = append(c.Dispatchers[0].ServicePorts[1].Listeners, c.Dispatchers[0].ServicePorts[2].Listeners[0])
		},
		"bad name":          func(c *haproxycfg.Config) { c.Dispatchers[0].ServicePorts[1].Name = "a b" },
		"set with a pipe":   func(c *haproxycfg.Config) { c.Dispatchers[0].ServicePorts[1].Cluster.Name = "a|b" },
		"missing local set": func(c *haproxycfg.Config) { c.Dispatchers[0].ServicePorts[2].Local = nil },
		"wrong family": func(c *haproxycfg.Config) {
			c.Dispatchers[0].ServicePorts[1].Cluster.Endpoints[0] = netip.MustParseAddrPort("[fd00::1]:80")
		},
		"listen not loopback": func(c *haproxycfg.Config) {
			c.Dispatchers[0].Listen = netip.MustParseAddrPort("10.0.0.1:10400")
		},
		"map dir with a space": func(c *haproxycfg.Config) { c.Dispatchers[0].MapDir = "/run/a b" },
		"affinity too long":    func(c *haproxycfg.Config) { c.Dispatchers[0].ServicePorts[2].Affinity = 48 * time.Hour },
		"bad verdict":          func(c *haproxycfg.Config) { c.Dispatchers[0].ServicePorts[1].WhenEmpty = "maybe" },
	} {
		t.Run(name, func(t *testing.T) {
			c := sample("/run/kh")
			mutate(c)
			_, err := haproxycfg.Render(c)
			assert.Error(t, err)
		})
	}
}

func TestMerge(t *testing.T) {
	v4 := sample("/run/kh")
	v6 := &haproxycfg.Config{Global: v4.Global, Defaults: v4.Defaults, Dispatchers: []*haproxycfg.Dispatcher{{IPv6: true, Listen: netip.MustParseAddrPort("[::1]:10400"), MapDir: "/run/kh"}}}
	m, err := haproxycfg.Merge(v6, v4)
	require.NoError(t, err)
	require.Len(t, m.Dispatchers, 2)
	assert.False(t, m.Dispatchers[0].IPv6)
	_, err = haproxycfg.Merge(v4, v4)
	assert.Error(t, err)
	other := *v6
	other.Global.NBThread = 7
	_, err = haproxycfg.Merge(v4, &other)
	assert.Error(t, err)
}

// A set name, even one whose namespace starts with digits, is never taken
// for a listener key: the applier orders its commands by that.
func TestIsListenerKey(t *testing.T) {
	for key, want := range map[string]bool{
		"10.96.0.10:80":             true,
		"[fd00::10]:80":             true,
		"*:30080":                   true,
		"default.web:http:tcp":      false,
		"10.web:80:tcp":             false,
		"10.96.0.10:80:tcp":         false,
		"123.svc:http:tcp:local":    false,
		"default.web:http:tcp:ipv6": false,
	} {
		assert.Equal(t, want, haproxycfg.IsListenerKey(key), key)
	}
}

// ParseSetValue reads what SetValue writes, and nothing else.
func TestParseSetValue(t *testing.T) {
	set := &haproxycfg.EndpointSet{Name: "default.web:http:tcp", Endpoints: []netip.AddrPort{ep1, ep2}, Generation: 7}
	n, gen, ok := haproxycfg.ParseSetValue(set.SetValue())
	assert.True(t, ok)
	assert.Equal(t, 2, n)
	assert.Equal(t, uint32(7), gen)
	for _, bad := range []string{"", "2", "2|", "x|1", "2|-1", "2|x"} {
		_, _, ok := haproxycfg.ParseSetValue(bad)
		assert.False(t, ok, "%q", bad)
	}
}
