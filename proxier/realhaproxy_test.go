package proxier

import (
	"bufio"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/internal/haproxytest"
)

// namedServer is a TCP server on loopback that greets every client with
// its name, standing in for a pod.
func namedServer(t *testing.T, ip, name string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
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

func freePort(t *testing.T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
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

// TestTracerAgreesWithHAProxy runs the rendered model in a real HAProxy on
// loopback and checks that connections go where the tracer says: the
// so_name classification of NodePort traffic, the Local backend, the
// fail-fast reject.
func TestTracerAgreesWithHAProxy(t *testing.T) {
	haproxytest.Binary(t)
	localPort := namedServer(t, "127.0.0.1", "local-pod")
	remotePort := namedServer(t, "127.0.0.2", "remote-pod")
	const (
		clusterIP  = "127.0.10.1"
		emptyIP    = "127.0.10.2"
		nodeIP     = "127.0.0.1"
		clientIP   = "127.0.0.3" // an external client
		remoteNode = "node-b"
	)
	svcPort := freePort(t, clusterIP)
	nodePort := freePort(t, nodeIP)

	p, applier, _ := newFakeProxier(t, v1.IPv4Protocol, func(c *Config) {
		c.NodeIPs = map[v1.IPFamily]net.IP{v1.IPv4Protocol: net.ParseIP(nodeIP)}
	})
	// NodePorts on 127.0.0.1 only.
	p.nodePortAddresses = nodePortAddressesFor(t, v1.IPv4Protocol, "127.0.0.1/32")
	p.networkInterfacer = loopbackNetwork()
	makeServiceMap(p,
		makeTestService("ns", "web", func(svc *v1.Service) {
			svc.Spec.Type = v1.ServiceTypeNodePort
			svc.Spec.ClusterIP = clusterIP
			svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			svc.Spec.HealthCheckNodePort = 30000
			svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, int32(svcPort), int32(nodePort), 0)
		}),
		makeTestService("ns", "empty", func(svc *v1.Service) {
			svc.Spec.ClusterIP = emptyIP
			svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, int32(svcPort), 0, 0)
		}),
	)
	populateEndpointSlices(p,
		makeTestEndpointSlice("ns", "web", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{endpoint("127.0.0.1", testHostname, nil, nil, nil)}
			eps.Ports = []discovery.EndpointPort{tcpPort("http", int32(localPort))}
		}),
		makeTestEndpointSlice("ns", "web", 2, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			eps.Endpoints = []discovery.Endpoint{endpoint("127.0.0.2", remoteNode, nil, nil, nil)}
			eps.Ports = []discovery.EndpointPort{tcpPort("http", int32(remotePort))}
		}),
	)
	require.NoError(t, p.syncProxyRules())
	cfg := applier.merged(t)
	haproxycfg.AssignServerIDs(nil, cfg)
	// The test harness brings its own global section (sockets in a
	// temporary directory); the model's defaults section follows it.
	cfg.Global = haproxycfg.Global{}
	out, err := haproxycfg.Render(cfg)
	require.NoError(t, err)
	haproxytest.Start(t, string(out))

	local := "127.0.0.1:" + strconv.Itoa(localPort)
	remote := "127.0.0.2:" + strconv.Itoa(remotePort)
	// The tracer's view...
	assert.Equal(t, sortedEndpointList(local+", "+remote), traceConnection(t, cfg, clientIP, clusterIP, svcPort))
	assert.Equal(t, local, traceConnection(t, cfg, clientIP, nodeIP, nodePort))
	assert.Equal(t, sortedEndpointList(local+", "+remote), traceConnection(t, cfg, nodeIP, nodeIP, nodePort))
	assert.Equal(t, "REJECT", traceConnection(t, cfg, clientIP, emptyIP, svcPort))

	// ...and HAProxy's. Round robin over two servers: two connections to
	// the ClusterIP reach both.
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		seen[dialAndRead(t, clientIP, clusterIP, svcPort)] = true
	}
	assert.Equal(t, map[string]bool{"local-pod": true, "remote-pod": true}, seen, "ClusterIP reaches every endpoint")
	for i := 0; i < 4; i++ {
		assert.Equal(t, "local-pod", dialAndRead(t, clientIP, nodeIP, nodePort), "NodePort with externalTrafficPolicy Local reaches only the local endpoint")
	}
	seen = map[string]bool{}
	for i := 0; i < 4; i++ {
		seen[dialAndRead(t, nodeIP, nodeIP, nodePort)] = true
	}
	assert.Equal(t, map[string]bool{"local-pod": true, "remote-pod": true}, seen, "the node's own connections to the NodePort are short-circuited to every endpoint")
	assert.Equal(t, "CLOSED", dialAndRead(t, clientIP, emptyIP, svcPort), "a Service without endpoints is refused at once")
}
