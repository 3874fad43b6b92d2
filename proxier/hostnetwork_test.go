package proxier

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// hostState is what a node's routes and guard look like, from the fakes.
type hostState struct {
	routes *localaddr.Fake
	nft    *knftables.Fake
}

func (s hostState) ourRoutes() []string {
	var out []string
	for _, r := range s.routes.LocalRoutes() {
		if p, ok := strings.CutSuffix(r, " proto 66"); ok {
			out = append(out, p)
		}
	}
	return out
}

func (s hostState) set(t *testing.T, name string) []string {
	t.Helper()
	els, err := s.nft.ListElements(context.Background(), "set", name)
	require.NoError(t, err)
	var out []string
	for _, e := range els {
		out = append(out, strings.Join(e.Key, " . "))
	}
	slices.Sort(out)
	return out
}

// observingApplier calls observe with each model, as HAProxy would be
// given it, and fails when fail is set.
type observingApplier struct {
	observe func(*haproxycfg.Config)
	fail    error
}

func (o *observingApplier) Apply(_ context.Context, _ v1.IPFamily, desired *haproxycfg.Config) error {
	if o.observe != nil {
		o.observe(desired)
	}
	return o.fail
}

// webModel is the model of one Service port, default/web:http, on
// ClusterIP 10.96.0.10:80, a LoadBalancer IP and NodePort 30080, served by
// the IPv4 dispatcher on 0.0.0.0:10400, as the proxier's.
func webModel(lbIP string) *haproxycfg.Config {
	return &haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{{
		Listen: netip.MustParseAddrPort("0.0.0.0:10400"),
		MapDir: "/run/kube-haproxy-test",
		ServicePorts: []*haproxycfg.ServicePort{{
			Name: "default.web:http:tcp",
			Listeners: []haproxycfg.Listener{
				{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80},
				{Kind: haproxycfg.LoadBalancer, Addr: netip.MustParseAddr(lbIP), Port: 80},
				{Kind: haproxycfg.NodePort, Port: 30080},
			},
			Cluster:   &haproxycfg.EndpointSet{Name: "default.web:http:tcp"},
			WhenEmpty: haproxycfg.Rejected,
		}},
	}}}
}

func newObservedHostNetwork(next Applier) (*hostNetworkApplier, hostState) {
	s := hostState{
		routes: localaddr.NewFake(),
		nft:    knftables.NewFake(serviceguard.NFTFamily(v1.IPv4Protocol), serviceguard.TableName),
	}
	a := withHostNetwork(next)
	a.newHost = func(family v1.IPFamily) (*hostnet.Host, error) {
		return hostnet.NewWith(localaddr.New(s.routes, family), serviceguard.NewWithInterface(s.nft, family)), nil
	}
	return a, s
}

func TestHostNetworkIsReadyBeforeHAProxyGetsTheModel(t *testing.T) {
	ctx := context.Background()
	next := &observingApplier{}
	a, s := newObservedHostNetwork(next)

	var atApply struct{ routes, guarded, served, nodePorts []string }
	next.observe = func(*haproxycfg.Config) {
		atApply.routes = s.ourRoutes()
		atApply.guarded = s.set(t, serviceguard.ServiceIPsSet)
		atApply.served = s.set(t, serviceguard.ServedPortsSet)
		atApply.nodePorts = s.set(t, serviceguard.NodePortsSet)
	}
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")))
	// Without ServiceCIDRs each Service IP gets its own route, and all
	// of it was in place when HAProxy got the model.
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, atApply.routes)
	assert.Equal(t, []string{"10.96.0.10", "203.0.113.10"}, atApply.guarded)
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80", "203.0.113.10 . tcp . 80"}, atApply.served)
	assert.Equal(t, []string{"30080"}, atApply.nodePorts)
	assert.Contains(t, s.nft.Dump(), "tproxy to 127.0.0.1:10400", "dispatched to HAProxy's listener")
	assert.Contains(t, s.nft.Dump(), "redirect to :10400", "bridged IPv4 redirected to its port")

	// The ServiceCIDRs arrive and the LB IP moves: during the Apply both
	// LB IPs are local and guarded, afterwards only the new one. The
	// ClusterIP's own route gave way to the range's (added first, so the
	// address never stopped being local).
	a.SetServiceCIDRs(v1.IPv4Protocol, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")})
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20")))
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10/32", "203.0.113.20/32"}, atApply.routes)
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.10", "203.0.113.20"}, atApply.guarded)
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80", "203.0.113.10 . tcp . 80", "203.0.113.20 . tcp . 80"}, atApply.served,
		"both LB IPs dispatched while HAProxy's maps change")
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20/32"}, s.ourRoutes())
	assert.Equal(t, []string{"10.96.0.0/16", "203.0.113.20"}, s.set(t, serviceguard.ServiceIPsSet))
	assert.Equal(t, []string{"10.96.0.10 . tcp . 80", "203.0.113.20 . tcp . 80"}, s.set(t, serviceguard.ServedPortsSet))
}

func TestHostNetworkKeepsTheOldIPsWhenApplyFails(t *testing.T) {
	ctx := context.Background()
	next := &observingApplier{}
	a, s := newObservedHostNetwork(next)
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")))

	next.fail = errors.New("haproxy -c: bad config")
	err := a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20"))
	require.ErrorIs(t, err, next.fail)
	// HAProxy still serves the old model: its LB IP stays local and served.
	assert.Contains(t, s.ourRoutes(), "203.0.113.10/32")
	assert.Contains(t, s.set(t, serviceguard.ServedPortsSet), "203.0.113.10 . tcp . 80")

	next.fail = nil
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.20/32"}, s.ourRoutes())
}

func TestHostNetworkPassesServiceCIDRsOn(t *testing.T) {
	inner := &cidrRecorder{}
	a := withHostNetwork(inner)
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	a.SetServiceCIDRs(v1.IPv4Protocol, cidrs)
	assert.Equal(t, cidrs, inner.got[v1.IPv4Protocol])
}

type cidrRecorder struct {
	observingApplier
	got map[v1.IPFamily][]netip.Prefix
}

func (c *cidrRecorder) SetServiceCIDRs(family v1.IPFamily, cidrs []netip.Prefix) {
	if c.got == nil {
		c.got = map[v1.IPFamily][]netip.Prefix{}
	}
	c.got[family] = cidrs
}

func TestHostNetworkLeavesTheHostAloneAfterShutdown(t *testing.T) {
	next := &observingApplier{}
	a, s := newObservedHostNetwork(next)
	called := false
	next.observe = func(*haproxycfg.Config) { called = true }
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")), context.Canceled)
	assert.Empty(t, s.ourRoutes())
	assert.Empty(t, s.nft.Dump())
	assert.False(t, called, "HAProxy is not given a model either")
}

// TestHostDesired: what the host needs for a model. Every ClusterIP,
// LoadBalancer and external IP port is a served TCP triple; NodePorts are
// ports alone, served on the dispatcher's NodePort addresses; the
// loadBalancerSourceRanges of a Service port firewall its LoadBalancer
// listeners only; everything is dispatched to the dispatcher's listener,
// which TPROXY finds on 127.0.0.1 when it listens on 0.0.0.0.
func TestHostDesired(t *testing.T) {
	addr := netip.MustParseAddr
	ranges := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("5.6.7.8/32")}
	model := &haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{{
		Listen:            netip.MustParseAddrPort("0.0.0.0:10400"),
		MapDir:            "/run/kube-haproxy-test",
		NodePortAddresses: []netip.Addr{addr("192.168.0.2")},
		ServicePorts: []*haproxycfg.ServicePort{
			{
				Name: "ns1.lb:https:tcp",
				Listeners: []haproxycfg.Listener{
					{Kind: haproxycfg.ClusterIP, Addr: addr("172.30.0.42"), Port: 443},
					{Kind: haproxycfg.NodePort, Port: 30443},
					{Kind: haproxycfg.LoadBalancer, Addr: addr("5.6.7.8"), Port: 443},
					{Kind: haproxycfg.LoadBalancer, Addr: addr("5.6.7.9"), Port: 443},
					{Kind: haproxycfg.ExternalIP, Addr: addr("192.168.99.11"), Port: 443},
				},
				Cluster:      &haproxycfg.EndpointSet{Name: "ns1.lb:https:tcp"},
				WhenEmpty:    haproxycfg.Rejected,
				SourceRanges: ranges,
			},
			{
				Name: "ns1.web:http:tcp",
				Listeners: []haproxycfg.Listener{
					{Kind: haproxycfg.ClusterIP, Addr: addr("172.30.0.41"), Port: 80},
					{Kind: haproxycfg.NodePort, Port: 30080},
					{Kind: haproxycfg.LoadBalancer, Addr: addr("1.2.3.4"), Port: 80},
				},
				Cluster:   &haproxycfg.EndpointSet{Name: "ns1.web:http:tcp"},
				WhenEmpty: haproxycfg.Rejected,
			},
		},
	}}}
	require.NoError(t, haproxycfg.Validate(model))
	cidrs := []netip.Prefix{netip.MustParsePrefix("172.30.0.0/16")}
	got := hostDesired(cidrs, model)

	tcp := func(ip string, port uint16) serviceguard.Binding {
		return serviceguard.Binding{IP: addr(ip), Protocol: v1.ProtocolTCP, Port: port}
	}
	assert.Equal(t, hostnet.Desired{
		ServiceCIDRs: cidrs,
		Served: []serviceguard.Binding{
			tcp("172.30.0.42", 443), tcp("5.6.7.8", 443), tcp("5.6.7.9", 443), tcp("192.168.99.11", 443),
			tcp("172.30.0.41", 80), tcp("1.2.3.4", 80),
		},
		Dispatch:          netip.MustParseAddrPort("127.0.0.1:10400"),
		NodePorts:         []uint16{30443, 30080},
		NodePortAddresses: []netip.Addr{addr("192.168.0.2")},
		Firewall: []serviceguard.FirewallEntry{
			{IP: addr("5.6.7.8"), Port: 443, Allowed: ranges},
			{IP: addr("5.6.7.9"), Port: 443, Allowed: ranges},
		},
	}, got)

	// The NodePort addresses are a copy: the host must not share the
	// model's slice.
	got.NodePortAddresses[0] = addr("10.0.0.1")
	assert.Equal(t, addr("192.168.0.2"), model.Dispatchers[0].NodePortAddresses[0])

	// An empty model still dispatches (nothing) to the listener, and a
	// model without dispatcher needs nothing but the ServiceCIDRs.
	empty := hostDesired(nil, &haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{{Listen: netip.MustParseAddrPort("[::1]:10400")}}})
	assert.Equal(t, hostnet.Desired{Dispatch: netip.MustParseAddrPort("[::1]:10400")}, empty)
	assert.Equal(t, hostnet.Desired{ServiceCIDRs: cidrs}, hostDesired(cidrs, &haproxycfg.Config{}))
	// A loopback listener is TPROXY's target as it is.
	loop := hostDesired(nil, &haproxycfg.Config{Dispatchers: []*haproxycfg.Dispatcher{{Listen: netip.MustParseAddrPort("127.0.0.1:10400")}}})
	assert.Equal(t, hostnet.Desired{Dispatch: netip.MustParseAddrPort("127.0.0.1:10400")}, loop)
}

// TestHostNetworkFromAProxier: the hostnet wrapper around a proxier's
// model: the Service's addresses are local, guarded and dispatched, its
// NodePort served on the NodePort addresses, its source ranges in the
// firewall, all before HAProxy gets the model.
func TestHostNetworkFromAProxier(t *testing.T) {
	inner := newFakeApplier()
	a, s := newObservedHostNetwork(inner)
	p, _, _ := newFakeProxierWithApplier(t, v1.IPv4Protocol, inner)
	p.applier = a
	makeServiceMap(p, lbService(func(svc *v1.Service) {
		svc.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/25"}
	}))
	populateEndpointSlices(p, lbEndpoints(nil))
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, 1, inner.applies)

	assert.Equal(t, []string{"1.2.3.4/32", "172.30.0.41/32", "192.168.99.11/32"}, s.ourRoutes())
	assert.Equal(t, []string{"1.2.3.4", "172.30.0.41", "192.168.99.11"}, s.set(t, serviceguard.ServiceIPsSet))
	assert.Equal(t, []string{"1.2.3.4 . tcp . 80", "172.30.0.41 . tcp . 80", "192.168.99.11 . tcp . 80"}, s.set(t, serviceguard.ServedPortsSet))
	assert.Equal(t, []string{"3001"}, s.set(t, serviceguard.NodePortsSet))
	assert.Equal(t, []string{testNodeIP}, s.set(t, serviceguard.NodePortIPsSet))
	assert.Equal(t, []string{"1.2.3.4 . 80"}, s.set(t, serviceguard.FirewallSet))
	assert.Equal(t, []string{"1.2.3.4 . 80 . 203.0.113.0/25"}, s.set(t, serviceguard.FirewallAllowSet))
	assert.Contains(t, s.nft.Dump(), "tproxy to 127.0.0.1:10400")
}

// TestHostNetworkIsLeftAloneWhenOnlyEndpointsChange: a model that needs
// the same routes and rules as the last one goes to HAProxy without
// touching the host (at 10,000 Services, bringing the host to a model was
// half the CPU of an endpoint change); after hostRecheckInterval the host
// is brought to the model again, after HAProxy got it, which repairs a
// route someone removed: in a sync without a Service port change, or in
// any once hostRecheckDeadline passed. A new listener always prepares
// the host first.
func TestHostNetworkIsLeftAloneWhenOnlyEndpointsChange(t *testing.T) {
	ctx := context.Background()
	var got []*haproxycfg.Config
	next := &observingApplier{observe: func(c *haproxycfg.Config) { got = append(got, c) }}
	a, s := newObservedHostNetwork(next)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")))
	require.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, s.ourRoutes())

	removeRoute := func(dst string) {
		t.Helper()
		routes, err := s.routes.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
		require.NoError(t, err)
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == dst {
				require.NoError(t, s.routes.RouteDel(&r))
				return
			}
		}
		t.Fatalf("no local route to %s", dst)
	}
	// Someone removes a route; then endpoints change (new ServicePort
	// objects, the same listeners).
	removeRoute("203.0.113.10/32")
	endpointsChanged := webModel("203.0.113.10")
	endpointsChanged.Dispatchers[0].ServicePorts[0].Cluster = &haproxycfg.EndpointSet{Name: "default.web:http:tcp",
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.244.1.5:8080")}}
	now = now.Add(hostRecheckInterval / 2)
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, endpointsChanged))
	assert.Same(t, endpointsChanged, got[len(got)-1], "HAProxy got the model")
	assert.Equal(t, []string{"10.96.0.10/32"}, s.ourRoutes(), "the host was not looked at")

	// After the interval, a sync that carries a change still leaves the
	// host alone: the recheck waits for one that carries none.
	now = now.Add(hostRecheckInterval)
	again := webModel("203.0.113.10")
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, again))
	assert.Equal(t, []string{"10.96.0.10/32"}, s.ourRoutes(), "not during a change")
	quiet := *again
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, &quiet))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, s.ourRoutes(), "repaired by a sync without a change")

	// Changes in every sync: repaired anyway once the deadline passed.
	removeRoute("203.0.113.10/32")
	now = now.Add(hostRecheckDeadline)
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.10")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32"}, s.ourRoutes(), "repaired after the deadline")

	// A new LoadBalancer IP, right after: the host is prepared before
	// HAProxy sees the model, as always.
	removeRoute("10.96.0.10/32")
	var routesAtApply []string
	next.observe = func(*haproxycfg.Config) { routesAtApply = s.ourRoutes() }
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.10/32", "203.0.113.20/32"}, routesAtApply)
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.20/32"}, s.ourRoutes())

	// A failed Apply forgets what the host was fit for: the next one
	// prepares it whole.
	next.fail = errors.New("runtime API down")
	require.Error(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20")))
	next.fail = nil
	removeRoute("203.0.113.20/32")
	require.NoError(t, a.Apply(ctx, v1.IPv4Protocol, webModel("203.0.113.20")))
	assert.Equal(t, []string{"10.96.0.10/32", "203.0.113.20/32"}, s.ourRoutes())
}
