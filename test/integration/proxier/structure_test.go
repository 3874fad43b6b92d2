package proxier

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics/legacyregistry"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// startNodeProxier runs the real IPv4 proxier of scope node on the node
// namespace with the given timeouts and recorder, serving web from pods.
func startNodeProxier(t *testing.T, tp *topology, idle time.Duration, rec events.EventRecorder, pods ...*netns.Pod) (proxierHandle, proxier.Config) {
	t.Helper()
	cfg := tp.nodeConfig(t)
	cfg.TimeoutClient, cfg.TimeoutServer, cfg.Recorder = idle, idle, rec
	p, _ := startProxier(t, cfg, false, serviceCIDR)
	p.OnServiceAdd(webService())
	p.OnServiceSynced()
	p.OnEndpointSliceAdd(webSlice("1", pods...))
	p.OnEndpointSlicesSynced()
	return p, cfg
}

// proxierHandle is the part of proxy.Provider the tests drive.
type proxierHandle interface {
	OnServiceAdd(*v1.Service)
	OnServiceDelete(*v1.Service)
	OnEndpointSliceAdd(*discovery.EndpointSlice)
	OnEndpointSliceDelete(*discovery.EndpointSlice)
}

// numberedService is Service i of a batch: ClusterIP 10.96.1.i, port 80,
// with its own EndpointSlice listing pod.
func numberedService(i int, pod *netns.Pod) (*v1.Service, *discovery.EndpointSlice) {
	ip := fmt.Sprintf("10.96.%d.%d", 1+i/250, 1+i%250)
	svc := service(fmt.Sprintf("batch-%d", i), ip, "1", servicePort("http", v1.ProtocolTCP, 80, 8080, 0))
	return svc, slice(svc, "1", pod)
}

// keepAlive is one HTTP/1.1 connection held open through a Service.
type keepAlive struct {
	conn net.Conn
	r    *bufio.Reader
}

func (k *keepAlive) get() (string, error) {
	if _, err := io.WriteString(k.conn, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return "", err
	}
	_ = k.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(body), err
}

// reloadCount is the master's reload count, or -1 while the master
// cannot answer (it re-executes itself during a reload).
func reloadCount(t *testing.T, cfg proxier.Config) int {
	t.Helper()
	info, err := runtimeapi.NewMaster(cfg.MasterSocket).ShowProc(context.Background())
	if err != nil {
		return -1
	}
	return info.Reloads
}

// TestLongLivedConnectionSurvivesStructuralChanges holds one keep-alive
// connection through a ClusterIP, requesting every 100 ms, while 100
// Services are created, 100 deleted and HAProxy is reloaded once: the
// Services need no reload, and the connection lives on until its own idle
// timeout ends it.
func TestLongLivedConnectionSurvivesStructuralChanges(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pod1, pod2 := tp.Pod("pod1", 10), tp.Pod("pod2", 11)
	const idle = 4 * time.Second
	p, cfg := startNodeProxier(t, tp, idle, nil, pod1)
	cfg.SetDefaults()
	clusterURL := fmt.Sprintf("http://%s:80/", clusterIP)
	servedBy(t, tp.Client, clusterURL, "pod1")

	conn, err := tp.Client.Dial("tcp", clusterIP+":80", 2*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	ka := &keepAlive{conn: conn, r: bufio.NewReader(conn)}
	first, err := ka.get()
	require.NoError(t, err)
	require.Contains(t, first, "pod1")

	// Requests keep flowing on the connection in the background.
	stop := make(chan struct{})
	failed := make(chan error, 1)
	requests := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := ka.get(); err != nil {
				failed <- err
				return
			}
			requests++
		}
	}()

	reloadsBefore := reloadCount(t, cfg)
	var services []*v1.Service
	var slices []*discovery.EndpointSlice
	for i := range 100 {
		svc, slice := numberedService(i, pod2)
		p.OnServiceAdd(svc)
		p.OnEndpointSliceAdd(slice)
		services, slices = append(services, svc), append(slices, slice)
	}
	for _, i := range []int{0, 57, 99} {
		servedBy(t, tp.Client, "http://"+services[i].Spec.ClusterIP+":80/", "pod2")
	}
	for i := range services {
		p.OnServiceDelete(services[i])
		p.OnEndpointSliceDelete(slices[i])
	}
	refusedEventually(t, tp.Client, services[99].Spec.ClusterIP+":80")
	assert.Equal(t, reloadsBefore, reloadCount(t, cfg), "new and deleted Services need no reload")
	t.Logf("RESULT reloads for 100 new and 100 deleted Services: %d", reloadCount(t, cfg)-reloadsBefore)

	// One reload, as a changed global setting would make.
	require.NoError(t, runtimeapi.NewMaster(cfg.MasterSocket).Reload(context.Background()))
	require.Eventually(t, func() bool { return reloadCount(t, cfg) == reloadsBefore+1 }, 10*time.Second, 100*time.Millisecond)
	time.Sleep(2 * time.Second) // more requests on the old worker
	servedBy(t, tp.Client, clusterURL, "pod1")

	close(stop)
	<-done
	select {
	case err := <-failed:
		t.Fatalf("the keep-alive connection failed after %d requests: %v", requests, err)
	default:
	}
	t.Logf("RESULT keep-alive connection: %d requests across 100 new, 100 deleted Services and a reload, 0 failed", requests)

	// Idle now: HAProxy's own timeout ends it, not before.
	idleSince := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(3 * idle))
	_, err = ka.r.ReadByte()
	closedAfter := time.Since(idleSince)
	require.Error(t, err, "the connection ends")
	assert.GreaterOrEqual(t, closedAfter, idle-500*time.Millisecond, "ended by its idle timeout (%v), not earlier", idle)
	assert.Less(t, closedAfter, idle+2*time.Second, "ended by its idle timeout (%v)", idle)
	t.Logf("RESULT idle connection closed after %v (timeout client/server %v)", closedAfter.Round(100*time.Millisecond), idle)
}

// gaugeFromRegistry reads a gauge of kube-proxy's legacy registry.
func gaugeFromRegistry(t *testing.T, name, label, value string) float64 {
	t.Helper()
	families, err := legacyregistry.DefaultGatherer.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestNodePortTakenByAHostProcess: a NodePort another process of the node
// listens on is refused for that Service port alone (event and metric),
// the process keeps its port, and the Service's ClusterIP and a later
// Service's NodePort are served.
func TestNodePortTakenByAHostProcess(t *testing.T) {
	tp := newTopology(t, netns.NodeOptions{})
	pod1, pod2 := tp.Pod("pod1", 10), tp.Pod("pod2", 11)
	tp.Daemon(fmt.Sprintf("0.0.0.0:%d", nodePort), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhostd")
	rec := events.NewFakeRecorder(100)
	p, _ := startNodeProxier(t, tp, time.Minute, rec, pod1)

	servedBy(t, tp.Client, fmt.Sprintf("http://%s:80/", clusterIP), "pod1")
	var event string
	require.Eventually(t, func() bool {
		select {
		case event = <-rec.Events:
			return strings.Contains(event, "NodePortTaken")
		default:
			return false
		}
	}, 10*time.Second, 100*time.Millisecond, "a NodePortTaken event on the Service")
	assert.Contains(t, event, fmt.Sprint(nodePort))
	assert.Equal(t, 1.0, gaugeFromRegistry(t, "kubeproxy_haproxy_node_ports_taken", "ip_family", "IPv4"))
	t.Logf("RESULT event: %s", event)

	// The host process keeps its port.
	body, err := httpBody(tp.Client, fmt.Sprintf("http://%s:%d/", nodeIP, nodePort))
	require.NoError(t, err)
	assert.Equal(t, "hostd", body)

	// A later Service is served, NodePort included.
	later := service("later", "10.96.0.20", "1", servicePort("http", v1.ProtocolTCP, 80, 8080, nodePort+1))
	slice := slice(later, "1", pod2)
	p.OnServiceAdd(later)
	p.OnEndpointSliceAdd(slice)
	servedBy(t, tp.Client, "http://10.96.0.20:80/", "pod2")
	servedBy(t, tp.Client, fmt.Sprintf("http://%s:%d/", nodeIP, nodePort+1), "pod2")
}

func httpBody(ns *netns.Namespace, url string) (string, error) {
	resp, err := ns.HTTPClient(5 * time.Second).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
