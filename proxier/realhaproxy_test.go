package proxier

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	proxyutil "k8s.io/kubernetes/pkg/proxy/util"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
)

// namedServer is a TCP server that greets every client with its name,
// standing in for a pod, on a free port of ip.
func namedServer(t *testing.T, ip, name string) int {
	t.Helper()
	return namedServerOn(t, ip, 0, name)
}

// namedServerOn is namedServer on a given port (0: a free one), which it
// returns.
func namedServerOn(t *testing.T, ip string, port int, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(name + "\n"))
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// dialAndRead connects from src ("" lets the kernel choose) and returns
// the first line the server sends, or "CLOSED" when the connection is
// refused, reset or closed without data.
func dialAndRead(t *testing.T, src, ip string, port int) string {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return "CLOSED"
	}
	defer c.Close()
	// A safety net against a hang, not a timing assertion: every case
	// here answers or closes at once.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "CLOSED"
	}
	return line[:len(line)-1]
}

// observeOnce makes one connection from ns (source src) to dst and says
// what the client saw, in the tracer's words: the first line the server
// sent (the endpoints greet with their address and port), "NONE" when the
// connection is refused at once (the guard, or nothing listening),
// "REJECT" when it is accepted and closed or reset without data, "DROP"
// when nothing answers within a second (connect or first line). The
// neighbours must be known already (see warmUp): a second is no time for
// a lost SYN.
func observeOnce(ns *netns.Namespace, src netip.Addr, dst netip.AddrPort) string {
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "NONE"
	case errors.Is(err, syscall.ECONNRESET):
		// Accepted, then reset before connect returned: HAProxy's reject
		// can be that fast.
		return "REJECT"
	case errors.As(err, &ne) && ne.Timeout():
		return "DROP"
	case err != nil:
		return "ERROR " + err.Error()
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	switch {
	case err == nil:
		return strings.TrimSuffix(line, "\n")
	case errors.As(err, &ne) && ne.Timeout():
		return "DROP"
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return "REJECT"
	}
	return "ERROR " + err.Error()
}

// observe makes n connections and lists what they saw, sorted and
// without repeats, as traceConnection lists endpoints.
func observe(ns *netns.Namespace, src netip.Addr, dst netip.AddrPort, n int) string {
	var seen []string
	for range n {
		if r := observeOnce(ns, src, dst); !slices.Contains(seen, r) {
			seen = append(seen, r)
		}
	}
	slices.Sort(seen)
	return strings.Join(seen, ", ")
}

// tracerNet is the addressing of one IP family in TestTracerAgreesWithHAProxy.
type tracerNet struct {
	family  v1.IPFamily
	addrTyp discovery.AddressType
	// The node's address on the client link and its prefix length.
	node string
	bits int
	// A client that counts as a pod (ClusterCIDRs), and one outside.
	pod, external string
	// The Service CIDR and addresses.
	cidr                         string
	web, empty, remote, sticky   string
	unservedIP, lbIP, externalIP string
	// Endpoints, on the node's loopback: one on this node, one (as the
	// proxier is told) on node-b.
	localEp, remoteEp string
	loopback          string
	// bridge is the node's address on a Linux bridge (br_netfilter on)
	// with a pod client, bridgedPod, plugged into it; empty: none (IPv6,
	// which has no NAT path for bridged connections).
	bridge, bridgedPod string
}

// TestTracerAgreesWithHAProxy runs a proxier's model for real: the model
// goes through the hostnet wrapper (local routes for the Service IPs, the
// guard and the nftables tproxy dispatch) into this test's network
// namespace, and a real HAProxy serves the rendered haproxy.cfg and map
// files. Connections from a client namespace on a veth link, from the node
// itself and (IPv4) from a pod on a Linux bridge of the node with
// br_netfilter on (redirected by NAT rather than TPROXY: HAProxy reads the
// original destination from conntrack) then go where haproxycfg.Trace
// says: the endpoints it lists, the fail-fast
// reject of a Service without endpoints, the drop of external traffic
// without a local endpoint (externalTrafficPolicy Local) and of a source
// outside loadBalancerSourceRanges, the short-circuit of pods and the node
// to every endpoint, the guard's refusal of unserved ports and addresses,
// NodePorts on nodePortAddresses only, and session affinity.
func TestTracerAgreesWithHAProxy(t *testing.T) {
	for _, n := range []tracerNet{
		{
			family: v1.IPv4Protocol, addrTyp: discovery.AddressTypeIPv4,
			node: "192.168.97.1", bits: 24, pod: "192.168.97.2", external: "192.168.97.3",
			cidr: "10.96.0.0/16", web: "10.96.0.10", empty: "10.96.0.11", remote: "10.96.0.12", sticky: "10.96.0.13",
			unservedIP: "10.96.0.99", lbIP: "203.0.113.10", externalIP: "198.51.100.10",
			localEp: "10.180.0.1", remoteEp: "10.180.2.1", loopback: "127.0.0.1",
			bridge: "10.244.1.1", bridgedPod: "10.244.1.10",
		},
		{
			family: v1.IPv6Protocol, addrTyp: discovery.AddressTypeIPv6,
			node: "fd00:97::1", bits: 64, pod: "fd00:97::2", external: "fd00:97::3",
			cidr: "fd00:10:96::/112", web: "fd00:10:96::10", empty: "fd00:10:96::11", remote: "fd00:10:96::12", sticky: "fd00:10:96::13",
			unservedIP: "fd00:10:96::99", lbIP: "2001:db8:113::10", externalIP: "2001:db8:51::10",
			localEp: "fd00:180::1", remoteEp: "fd00:180:2::1", loopback: "::1",
		},
	} {
		t.Run(string(n.family), func(t *testing.T) { testTracerAgreesWithHAProxy(t, n) })
	}
}

func testTracerAgreesWithHAProxy(t *testing.T, n tracerNet) {
	bin := haproxytest.Binary(t)
	netns.RequireBinary(t, "nft")
	requireTestNamespace(t)
	ctx := context.Background()
	k := netns.New(t)
	node := k.Self()
	client := k.Namespace("client")
	at := func(ip string, port int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port))
	}
	pfx := func(ip string, bits int) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(ip), bits) }
	k.Link(node, "eth0", pfx(n.node, n.bits), client, "eth0", pfx(n.pod, n.bits))
	client.AddAddr("eth0", pfx(n.external, n.bits))
	client.DefaultRoute(netip.MustParseAddr(n.node))
	hostBits := netip.MustParseAddr(n.node).BitLen()
	clusterCIDRs := []string{pfx(n.pod, hostBits).String()}
	var pod *netns.Namespace
	if n.bridge != "" {
		node.BridgeNetfilter()
		k.Bridge(node, "cbr0", pfx(n.bridge, 24))
		t.Cleanup(func() { _, _ = node.Exec("ip", "link", "del", "cbr0") })
		pod = k.Namespace("pod")
		k.Plug(node, "cbr0", pod, "eth0", pfx(n.bridgedPod, 24))
		pod.DefaultRoute(netip.MustParseAddr(n.bridge))
		clusterCIDRs = append(clusterCIDRs, pfx(n.bridgedPod, hostBits).String())
	}
	for _, ep := range []string{n.localEp, n.remoteEp} {
		node.AddAddr("lo", pfx(ep, hostBits))
	}
	t.Cleanup(func() {
		// The namespace outlives the test: take what it added with it.
		_, _ = node.Exec("ip", "link", "del", "eth0")
		for _, ep := range []string{n.localEp, n.remoteEp} {
			_, _ = node.Exec("ip", "addr", "del", pfx(ep, hostBits).String(), "dev", "lo")
		}
		if err := hostnet.Cleanup(ctx); err != nil {
			t.Errorf("removing routes and guard: %v", err)
		}
	})
	const epPort, svcPort, webNodePort, remoteNodePort = 8080, 80, 30080, 30081
	local, remote := at(n.localEp, epPort).String(), at(n.remoteEp, epPort).String()
	namedServerOn(t, n.localEp, epPort, local)
	namedServerOn(t, n.remoteEp, epPort, remote)

	// The proxier of the family, its NodePorts on the node's address on
	// the client link, the pod client recognised as a pod.
	stateDir := t.TempDir()
	inner := newFakeApplier()
	p, _, _ := newFakeProxierWithApplier(t, n.family, inner, func(c *Config) {
		c.NodeIPs = map[v1.IPFamily]net.IP{n.family: net.ParseIP(n.node)}
		c.NodePortAddresses = []string{pfx(n.node, n.bits).Masked().String()}
		c.ClusterCIDRs = clusterCIDRs
		c.StateDir = stateDir
		c.DispatchPort = 10410
	})
	p.networkInterfacer = proxyutil.RealNetwork{}
	host := withHostNetwork(inner)
	host.SetServiceCIDRs(n.family, []netip.Prefix{netip.MustParsePrefix(n.cidr)})
	p.applier = host

	svc := func(name, ip string, mod func(*v1.Service)) *v1.Service {
		return makeTestService("ns", name, func(svc *v1.Service) {
			svc.Spec.ClusterIP = ip
			svc.Spec.ClusterIPs = []string{ip}
			svc.Spec.IPFamilies = []v1.IPFamily{n.family}
			svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, svcPort, 0, 0)
			if mod != nil {
				mod(svc)
			}
		})
	}
	slice := func(name string, eps ...discovery.Endpoint) *discovery.EndpointSlice {
		return makeTestEndpointSlice("ns", name, 1, func(s *discovery.EndpointSlice) {
			s.AddressType = n.addrTyp
			s.Endpoints = eps
			s.Ports = []discovery.EndpointPort{tcpPort("http", epPort)}
		})
	}
	localEp, remoteEp := endpoint(n.localEp, testHostname, nil, nil, nil), endpoint(n.remoteEp, "node-b", nil, nil, nil)
	makeServiceMap(p,
		svc("web", n.web, func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeLoadBalancer
			svc.Spec.Ports[0].NodePort = webNodePort
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			svc.Spec.HealthCheckNodePort = 30000
			svc.Spec.ExternalIPs = []string{n.externalIP}
			svc.Spec.LoadBalancerSourceRanges = []string{pfx(n.external, hostBits).String()}
			svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: n.lbIP}}
		}),
		svc("empty", n.empty, nil),
		svc("remote", n.remote, func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeNodePort
			svc.Spec.Ports[0].NodePort = remoteNodePort
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			svc.Spec.HealthCheckNodePort = 30001
		}),
		svc("sticky", n.sticky, func(svc *v1.Service) {
			svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
			svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}
		}),
	)
	populateEndpointSlices(p, slice("web", localEp, remoteEp), slice("remote", remoteEp), slice("sticky", localEp, remoteEp))
	require.NoError(t, p.syncProxyRules())
	model := inner.merged(t)

	// HAProxy serves the files, as the Applier writes them.
	file := haproxytest.WriteModel(t, stateDir, model)
	proc := node.Start("haproxy", bin, "-db", "-f", file)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ended, err := proc.Exited(); ended {
			t.Fatalf("haproxy exited: %v\n%s", err, proc.Log())
		}
		if c, err := net.Dial("unix", model.Global.StatsSocket); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy's stats socket did not answer:\n%s", proc.Log())
		}
	}

	// The clients and the node know each other before anything is timed:
	// a refused connection from each client address to a node port that
	// nothing serves resolves the neighbours both ways.
	// gw is the node's address next to the client.
	type clientAddr struct {
		from    *netns.Namespace
		src, gw string
	}
	clients := []clientAddr{{client, n.pod, n.node}, {client, n.external, n.node}}
	if pod != nil {
		clients = append(clients, clientAddr{pod, n.bridgedPod, n.bridge})
	}
	for _, w := range clients {
		err := w.from.Do(func() error {
			d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(w.src)}}
			c, err := d.Dial("tcp", at(w.gw, 30099).String())
			if err == nil {
				c.Close()
			}
			return err
		})
		require.ErrorIs(t, err, syscall.ECONNREFUSED, "warming up %s", w.src)
	}

	both := sortedEndpointList(local + ", " + remote)
	type connCase struct {
		name     string
		from     *netns.Namespace
		src, dst string
		port     int
		want     string
	}
	cases := []connCase{
		{"pod to ClusterIP", client, n.pod, n.web, svcPort, both},
		{"external client to ClusterIP", client, n.external, n.web, svcPort, both},
		{"node to ClusterIP", node, n.node, n.web, svcPort, both},
		{"external client to NodePort: Local", client, n.external, n.node, webNodePort, local},
		{"pod to NodePort: short-circuit", client, n.pod, n.node, webNodePort, both},
		{"node to its NodePort: short-circuit", node, n.node, n.node, webNodePort, both},
		{"allowed external client to LB IP: Local", client, n.external, n.lbIP, svcPort, local},
		{"pod to LB IP, outside the source ranges", client, n.pod, n.lbIP, svcPort, "DROP"},
		{"external client to external IP: Local", client, n.external, n.externalIP, svcPort, local},
		{"pod to external IP: short-circuit", client, n.pod, n.externalIP, svcPort, both},
		{"no endpoints: fail fast", client, n.pod, n.empty, svcPort, "REJECT"},
		{"no endpoints, from the node", node, n.node, n.empty, svcPort, "REJECT"},
		{"no local endpoint: external client dropped", client, n.external, n.node, remoteNodePort, "DROP"},
		{"no local endpoint: pod short-circuited", client, n.pod, n.node, remoteNodePort, remote},
		{"no local endpoint: ClusterIP", client, n.external, n.remote, svcPort, remote},
		{"unserved port of a ClusterIP", client, n.pod, n.web, svcPort + 1, "NONE"},
		{"unserved address of the Service CIDR", client, n.pod, n.unservedIP, svcPort, "NONE"},
		{"LB IP, NodePort number", client, n.external, n.lbIP, webNodePort, "NONE"},
		{"node address, no NodePort", client, n.external, n.node, 30099, "NONE"},
		{"loopback is not a NodePort address", node, n.loopback, n.loopback, webNodePort, "NONE"},
	}
	if pod != nil {
		cases = append(cases, []connCase{
			{"bridged pod to ClusterIP", pod, n.bridgedPod, n.web, svcPort, both},
			{"bridged pod to NodePort: short-circuit", pod, n.bridgedPod, n.node, webNodePort, both},
			{"bridged pod to NodePort, no local endpoint: short-circuit", pod, n.bridgedPod, n.node, remoteNodePort, remote},
			{"bridged pod to external IP: short-circuit", pod, n.bridgedPod, n.externalIP, svcPort, both},
			{"bridged pod to LB IP, outside the source ranges", pod, n.bridgedPod, n.lbIP, svcPort, "DROP"},
			{"bridged pod, no endpoints: fail fast", pod, n.bridgedPod, n.empty, svcPort, "REJECT"},
			{"bridged pod, unserved port of a ClusterIP", pod, n.bridgedPod, n.web, svcPort + 1, "NONE"},
			{"bridged pod, the bridge's address is not a NodePort address", pod, n.bridgedPod, n.bridge, webNodePort, "NONE"},
		}...)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			traced := traceConnection(t, model, tc.src, tc.dst, tc.port)
			assert.Equal(t, tc.want, traced, "the tracer")
			tries := 1
			if strings.Contains(traced, ":") {
				// Random among the endpoints: 24 connections miss one of
				// two with a probability of 1e-7.
				tries = 24
			}
			got := observe(tc.from, netip.MustParseAddr(tc.src), at(tc.dst, tc.port), tries)
			assert.Equal(t, traced, got, "HAProxy and the kernel")
		})
	}

	// Session affinity: a client stays on one of the endpoints the tracer
	// lists.
	d := dispatcherFor(model, netip.MustParseAddr(n.sticky))
	for _, c := range clients {
		res := haproxycfg.Trace(d, netip.MustParseAddr(c.src), at(n.sticky, svcPort))
		require.Equal(t, haproxycfg.Served, res.Verdict)
		require.True(t, res.Sticky)
		got := observe(c.from, netip.MustParseAddr(c.src), at(n.sticky, svcPort), 12)
		assert.Contains(t, []string{local, remote}, got, "client %s keeps one endpoint", c.src)
	}

	if t.Failed() {
		t.Logf("haproxy.cfg:\n%s\nnftables:\n%s\nHAProxy:\n%s", renderAll(t, model), node.MustExec("nft", "list", "ruleset"), proc.Log())
	}
}
