package proxier

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// oneConnClient is an HTTP/1.1 client from ns that keeps one connection,
// and counts the connections it opened.
func oneConnClient(ns *netns.Namespace) (*http.Client, *atomic.Int32) {
	var dials atomic.Int32
	tr := &http.Transport{
		MaxConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return ns.Dial(network, addr, 5*time.Second)
		},
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, &dials
}

// TestHTTPPortsBalancedPerRequest: a Service port of appProtocol http is
// balanced per request, also on one kept-alive connection; affinity keeps
// a client's every request on one endpoint; externalTrafficPolicy Local
// still shows the pod the outside client's address; large bodies and
// protocol upgrades (WebSocket's handshake) pass.
func TestHTTPPortsBalancedPerRequest(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pods := []*netns.Pod{tp.Pod("pod1", 10), tp.Pod("pod2", 11), tp.Pod("pod3", 12)}
	httpPort := func(nodePort int32) v1.ServicePort {
		p := servicePort("http", v1.ProtocolTCP, 80, 8080, nodePort)
		p.AppProtocol = ptr.To("http")
		return p
	}
	plain := service("web-http", "10.96.0.17", "1", httpPort(0))
	sticky := service("sticky-http", "10.96.0.18", "1", httpPort(0))
	sticky.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	sticky.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	local := service("local-http", "10.96.0.19", "1", httpPort(30083))
	local.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	local.Spec.HealthCheckNodePort = 30998

	cfg := tp.nodeConfig(t)
	cfg.ClusterCIDRs = []string{"10.244.0.0/16"}
	p, _ := startProxier(t, cfg, false, serviceCIDR)
	for _, svc := range []*v1.Service{plain, sticky, local} {
		p.OnServiceAdd(svc)
	}
	p.OnServiceSynced()
	for _, svc := range []*v1.Service{plain, sticky, local} {
		p.OnEndpointSliceAdd(slice(svc, "1", pods...))
	}
	p.OnEndpointSlicesSynced()
	require.NoError(t, tp.Client.WaitTCP("10.96.0.17:80", 30*time.Second))

	getOn := func(c *http.Client, url string) netns.Reply {
		t.Helper()
		var r netns.Reply
		resp, err := c.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		require.NoError(t, json.Unmarshal(body, &r), "%q", body)
		return r
	}

	// One connection, every pod.
	c, dials := oneConnClient(tp.Client)
	served := map[string]int{}
	for range 60 {
		served[getOn(c, "http://10.96.0.17/").Name]++
	}
	assert.EqualValues(t, 1, dials.Load(), "one kept-alive connection")
	assert.Len(t, served, 3, "each request picks its endpoint: %v", served)

	// Affinity: one pod for every request of the client, on any connection.
	c, _ = oneConnClient(tp.Client)
	first := getOn(c, "http://10.96.0.18/").Name
	for range 20 {
		assert.Equal(t, first, getOn(c, "http://10.96.0.18/").Name)
	}
	c2, _ := oneConnClient(tp.Client)
	assert.Equal(t, first, getOn(c2, "http://10.96.0.18/").Name, "a new connection keeps the endpoint too")

	// externalTrafficPolicy Local: the pod sees the outside client.
	c, _ = oneConnClient(tp.Client)
	for range 10 {
		assert.Equal(t, netns.ClientIP.String(), clientAddr(t, getOn(c, fmt.Sprintf("http://%s:30083/", nodeIP))))
	}

	// A large body.
	resp, err := c.Get("http://10.96.0.17/bytes?n=20000000")
	require.NoError(t, err)
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.EqualValues(t, 20000000, n)

	// An upgrade becomes a tunnel to the pod that took it.
	conn, err := tp.Client.Dial("tcp", "10.96.0.17:80", 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(conn, "GET /upgrade HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	require.NoError(t, err)
	rd := bufio.NewReader(conn)
	status, err := rd.ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(status, "HTTP/1.1 101"), status)
	for {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		if line == "\r\n" {
			break
		}
	}
	var pod string
	for i := range 3 {
		_, err = fmt.Fprintf(conn, "hello %d\n", i)
		require.NoError(t, err)
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ": ")
		require.True(t, ok, line)
		assert.Equal(t, fmt.Sprintf("hello %d", i), rest)
		if pod == "" {
			pod = name
		}
		assert.Equal(t, pod, name, "a tunnel stays with its pod")
	}
}
