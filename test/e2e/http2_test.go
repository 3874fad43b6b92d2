package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// perRequestCalls is how many requests a client sends over its one
// connection.
const perRequestCalls = 1000

// h2cService starts four pods and a ClusterIP Service of appProtocol
// kubernetes.io/h2c to their targetPort.
func h2cService(t *testing.T, e *env, name, targetPort string) (*v1.Service, []*localcluster.Pod) {
	var pods []*localcluster.Pod
	for i := range 4 {
		p, err := e.c.AddPod(e.ctx, e.c.Nodes[i%2], fmt.Sprintf("%s-%d", name, i), map[string]string{"app": name})
		require.NoError(t, err)
		pods = append(pods, p)
	}
	svc := e.service(t, name, name, func(s *v1.Service) {
		s.Spec.Ports[0].TargetPort = intstr.FromString(targetPort)
		s.Spec.Ports[0].AppProtocol = ptr.To("kubernetes.io/h2c")
	})
	return svc, pods
}

// h2Client is one HTTP/2 client connection: call makes one request over it
// and returns the name of the pod that answered.
type h2Client struct {
	call  func() (string, error)
	close func()
	dials func() int32
	// start and end, when set, run on the measured connection before and
	// after its calls (before it is closed).
	start, end func()
}

// perRequestSpread waits until every pod has answered (each attempt on a
// new connection: nftables mode balances connections), then makes
// perRequestCalls calls over one connection and checks how they spread:
// in haproxy modes each of the four endpoints serves 15 to 35% of them;
// in nftables mode one serves them all.
func perRequestSpread(t *testing.T, e *env, pods []*localcluster.Pod, connect func() h2Client) string {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for len(seen) < len(pods) {
		require.True(t, time.Now().Before(deadline), "not every pod answered within 30s: %v; last error: %v", seen, last)
		c := connect()
		for range 10 {
			name, err := c.call()
			if err != nil {
				last = err
				break
			}
			seen[name] = true
		}
		c.close()
	}
	c := connect()
	defer c.close()
	if c.start != nil {
		c.start()
	}
	served := map[string]int{}
	for range perRequestCalls {
		name, err := c.call()
		require.NoError(t, err)
		served[name]++
	}
	if c.end != nil {
		c.end()
	}
	assert.EqualValues(t, 1, c.dials(), "one connection")
	total := 0
	var shares []string
	for _, p := range pods {
		total += served[p.Name]
		shares = append(shares, fmt.Sprintf("%d", served[p.Name]))
	}
	require.Equal(t, perRequestCalls, total, "every call answered by a pod of the Service: %v", served)
	sort.Sort(sort.Reverse(sort.StringSlice(shares)))
	if e.mode == localcluster.ModeNFTables {
		n := 0
		for _, c := range served {
			n = max(n, c)
		}
		assert.Equal(t, perRequestCalls, n, "nftables mode balances connections: one endpoint serves the connection's every call")
	} else {
		for _, p := range pods {
			assert.InDelta(t, 0.25*perRequestCalls, served[p.Name], 0.10*perRequestCalls, "%s's share of %d calls: %v", p.Name, perRequestCalls, served)
		}
	}
	return fmt.Sprintf("%d calls on one connection, per endpoint: %s", perRequestCalls, strings.Join(shares, "/"))
}

// grpcPerRequest: a grpc-go client holds one connection to the ClusterIP
// of a four-endpoint Service (appProtocol kubernetes.io/h2c) and makes
// 1,000 unary calls; a server-streaming call opened first on the same
// connection stays open throughout.
func grpcPerRequest(t *testing.T, e *env) string {
	svc, pods := h2cService(t, e, "grpc", "grpc")
	var watchErr chan error
	var watchCancel context.CancelFunc
	defer func() {
		if watchCancel != nil {
			watchCancel()
		}
	}()
	note := perRequestSpread(t, e, pods, func() h2Client {
		var dials atomic.Int32
		conn, err := grpc.NewClient("passthrough:///"+hostPort(svc.Spec.ClusterIP, 80),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				dials.Add(1)
				return e.client.NS.Dial("tcp", addr, 5*time.Second)
			}))
		require.NoError(t, err)
		client := healthpb.NewHealthClient(conn)
		return h2Client{
			call: func() (string, error) {
				ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
				defer cancel()
				var md metadata.MD
				if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md)); err != nil {
					return "", err
				}
				if pod := md.Get("pod"); len(pod) == 1 {
					return pod[0], nil
				}
				return "", fmt.Errorf("no pod header in %v", md)
			},
			close: func() { conn.Close() },
			dials: dials.Load,
			// A long-lived stream (Health.Watch answers once, then holds the
			// stream until the status changes) beside the calls.
			start: func() {
				var ctx context.Context
				ctx, watchCancel = context.WithCancel(e.ctx)
				stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
				require.NoError(t, err)
				_, err = stream.Recv()
				require.NoError(t, err, "the stream's first answer")
				watchErr = make(chan error, 1)
				go func() {
					_, err := stream.Recv()
					watchErr <- err
				}()
			},
			end: func() {
				select {
				case err := <-watchErr:
					t.Errorf("the long-lived stream ended during the calls: %v", err)
				default:
				}
			},
		}
	})
	return note + "; a streaming call stayed open meanwhile"
}

// h2cPerRequest: the same with a plain HTTP/2 (h2c, prior knowledge)
// client, over HTTP/2 to the pods too. In haproxy mode kube-proxy's
// metrics count the requests of the Service.
func h2cPerRequest(t *testing.T, e *env) string {
	svc, pods := h2cService(t, e, "h2c", "http")
	url := "http://" + hostPort(svc.Spec.ClusterIP, 80) + "/"
	if e.haproxy() {
		t.Cleanup(func() {
			if t.Failed() {
				return
			}
			ok := map[string]string{"namespace": "default", "service": "h2c", "port": "http", "code": "2xx"}
			// HAProxy sends a request's log line once it ends; allow the
			// last ones a moment to arrive.
			require.Eventually(t, func() bool {
				return e.metricSum(t, "kubeproxy_haproxy_http_requests_total", ok) >= perRequestCalls
			}, 10*time.Second, 200*time.Millisecond, "kubeproxy_haproxy_http_requests_total counts the Service's requests")
			assert.GreaterOrEqual(t, e.metricSum(t, "kubeproxy_haproxy_http_request_duration_seconds_count",
				map[string]string{"namespace": "default", "service": "h2c", "port": "http"}), float64(perRequestCalls))
		})
	}
	return perRequestSpread(t, e, pods, func() h2Client {
		var dials atomic.Int32
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return e.client.NS.Dial(network, addr, 5*time.Second)
			},
			Protocols: new(http.Protocols),
		}
		tr.Protocols.SetUnencryptedHTTP2(true)
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		return h2Client{
			call: func() (string, error) {
				resp, err := client.Get(url)
				if err != nil {
					return "", err
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					return "", err
				}
				var r netns.Reply
				if err := json.Unmarshal(body, &r); err != nil {
					return "", fmt.Errorf("%w: %q", err, body)
				}
				if resp.ProtoMajor != 2 || r.Proto != "HTTP/2.0" {
					return "", fmt.Errorf("HTTP/2 to HAProxy and to the pod, got %s and %s", resp.Proto, r.Proto)
				}
				return r.Name, nil
			},
			close: tr.CloseIdleConnections,
			dials: dials.Load,
		}
	})
}
