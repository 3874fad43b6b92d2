package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// TestFailover runs scope cluster with its two load balancers and
// keepalived, and under a steady load from outside kills the active one's
// HAProxy, then its kube-proxy (started again within keepalived's grace,
// then for good), then the whole host (every process, link down). After
// each it reports the requests that failed (new connections, and requests
// on established keep-alive connections) and how long until traffic was
// served again, and brings the killed part back.
func TestFailover(t *testing.T) {
	if os.Getenv("KH_E2E") != "1" {
		t.Skip("opt-in: set KH_E2E=1 to run the end-to-end suite (hack/test.sh does)")
	}
	c := localcluster.Start(t, localcluster.Options{Scope: localcluster.ScopeCluster, Logf: t.Logf})
	e := newEnv(t, c, setupCluster)
	const lbIP = "192.0.2.40"
	e.service(t, "failover", "web", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeLoadBalancer }, lbIP)
	url := "http://" + lbIP + "/"
	servedBy(t, c.Outside, localcluster.OutsideIP, url, names(e.web...)...)

	var report []string
	for _, kill := range []struct {
		name string
		kill func(*localcluster.LBHost) error
		// during runs while the load goes on (a restart within the grace)
		during  func(*localcluster.LBHost) error
		observe time.Duration
		restore func(*localcluster.LBHost) error
		// moves: the virtual address must go to the other host.
		moves bool
	}{
		{name: "HAProxy", kill: c.KillHAProxy, observe: 8 * time.Second},
		// Started again after a second, within keepalived's grace: its
		// HAProxy served throughout, and the address stays.
		{name: "kube-proxy, restarted after 1s", kill: killKubeProxy(c), observe: 8 * time.Second,
			during: func(lb *localcluster.LBHost) error { time.Sleep(time.Second); return c.RestartKubeProxy(lb) }},
		// Gone for good: the address moves once the grace is over.
		{name: "kube-proxy, not restarted", kill: killKubeProxy(c), observe: localcluster.KubeProxyGrace + 8*time.Second,
			restore: c.RestartKubeProxy, moves: true},
		{name: "host", kill: func(lb *localcluster.LBHost) error { c.StopLBHost(lb); return nil }, observe: 8 * time.Second,
			restore: c.StartLBHost, moves: true},
	} {
		active, err := c.WaitActiveLB(30 * time.Second)
		require.NoError(t, err)
		load := startLoad(c.Outside, lbIP)
		time.Sleep(2 * time.Second)
		killedAt := time.Now()
		require.NoError(t, kill.kill(active), "killing %s on %s", kill.name, active.Name)
		if kill.during != nil {
			require.NoError(t, kill.during(active), "%s on %s", kill.name, active.Name)
		}
		moved := waitMoved(c, active, kill.observe)
		time.Sleep(kill.observe - time.Since(killedAt))
		r := load.stop(killedAt)
		line := fmt.Sprintf("RESULT failover: %s (%s): new connections %d failed of %d, established connections %d failed of %d, served again after %s, address %s",
			kill.name, active.Name, r.newFailed, r.newTotal, r.estFailed, r.estTotal, r.outage.Round(time.Millisecond), moved)
		t.Log(line)
		report = append(report, line)
		assert.True(t, r.servedAfter, "%s: no request was served after the kill and its last failure", kill.name)
		assert.Less(t, r.outage, 10*time.Second, "%s: traffic not served again within 10s", kill.name)
		if kill.moves {
			assert.True(t, strings.HasPrefix(moved, "moved to "), "%s: the address must move, %s", kill.name, moved)
		}
		if kill.during != nil {
			// HAProxy never stopped and the address stayed: nothing may fail.
			assert.Zero(t, r.newFailed+r.estFailed, "%s: requests failed although HAProxy served throughout", kill.name)
			assert.Equal(t, "stayed on "+active.Name, moved)
		}
		if kill.restore != nil {
			require.NoError(t, kill.restore(active), "bringing %s back on %s", kill.name, active.Name)
		}
		for _, lb := range c.LBs {
			require.NoError(t, c.WaitProxyHealthy(lb.Node, time.Minute), "%s healthy again", lb.Name)
		}
	}
	fmt.Println("\n== failover (scope cluster, keepalived, load from outside to a LoadBalancer IP)")
	fmt.Println(strings.Join(report, "\n"))
}

func killKubeProxy(c *localcluster.Cluster) func(*localcluster.LBHost) error {
	return func(lb *localcluster.LBHost) error { c.KillKubeProxy(lb); return nil }
}

// waitMoved says whether and when the virtual address left from.
func waitMoved(c *localcluster.Cluster, from *localcluster.LBHost, timeout time.Duration) string {
	start := time.Now()
	for time.Since(start) < timeout {
		if lb := c.ActiveLB(); lb != nil && lb != from {
			return fmt.Sprintf("moved to %s after %s", lb.Name, time.Since(start).Round(10*time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "stayed on " + from.Name
}

// load sends requests from outside without pause: one client opening a
// new connection per request, and four keeping a connection open and
// sending a request on it every 50 ms (a failure there is a broken
// established connection; the client then connects again).
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	newTotal, newFailed, estTotal, estFailed atomic.Int64
	mu                                       sync.Mutex
	failures                                 []time.Time
	successes                                []time.Time
}

type loadResult struct {
	newTotal, newFailed, estTotal, estFailed int64
	// servedAfter: a request succeeded after the kill and after the last
	// failure.
	servedAfter bool
	// outage is from the first failure after the kill to the first
	// success after the last failure (0 when nothing failed).
	outage time.Duration
}

func startLoad(ns *netns.Namespace, ip string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	addr := net.JoinHostPort(ip, "80")
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for ctx.Err() == nil {
			_, err := get(ns, localcluster.OutsideIP, "http://"+addr+"/", time.Second)
			l.newTotal.Add(1)
			l.note(err, &l.newFailed)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	for range 4 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var conn net.Conn
			var rd *bufio.Reader
			for ctx.Err() == nil {
				if conn == nil {
					c, err := ns.Dial("tcp", addr, time.Second)
					if err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					conn, rd = c, bufio.NewReader(c)
				}
				_ = conn.SetDeadline(time.Now().Add(time.Second))
				_, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: failover\r\n\r\n")
				if err == nil {
					var resp *http.Response
					if resp, err = http.ReadResponse(rd, nil); err == nil {
						_, _ = bufio.NewReader(resp.Body).WriteTo(discard{})
						resp.Body.Close()
					}
				}
				l.estTotal.Add(1)
				l.note(err, &l.estFailed)
				if err != nil {
					conn.Close()
					conn = nil
				}
				time.Sleep(50 * time.Millisecond)
			}
			if conn != nil {
				conn.Close()
			}
		}()
	}
	return l
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func (l *load) note(err error, failed *atomic.Int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		failed.Add(1)
		l.failures = append(l.failures, time.Now())
		return
	}
	l.successes = append(l.successes, time.Now())
}

func (l *load) stop(since time.Time) loadResult {
	l.cancel()
	l.wg.Wait()
	r := loadResult{newTotal: l.newTotal.Load(), newFailed: l.newFailed.Load(), estTotal: l.estTotal.Load(), estFailed: l.estFailed.Load()}
	var first, last time.Time
	last = since
	for _, f := range l.failures {
		if f.Before(since) {
			continue
		}
		if first.IsZero() {
			first = f
		}
		last = f
	}
	for _, s := range l.successes {
		if s.After(last) {
			r.servedAfter = true
			if !first.IsZero() {
				r.outage = s.Sub(first)
			}
			return r
		}
	}
	if !first.IsZero() {
		r.outage = time.Since(first)
	}
	return r
}
