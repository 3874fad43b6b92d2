package proxier

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2/ktesting"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/internal/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// TestRealApplierAndCleanup runs the Applier the constructors build against
// the real haproxy (with this package's default process settings), then
// CleanupLeftovers' HAProxy part.
func TestRealApplierAndCleanup(t *testing.T) {
	bin := haproxytest.Binary(t)
	_, ctx := ktesting.NewTestContext(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	recorder := events.NewFakeRecorder(10)
	cfg := Config{NodeName: testHostname, StateDir: stateDir, HAProxyPath: bin, ManageProcess: true, Recorder: recorder}
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())
	applier, err := newHAProxyApplier(ctx, cfg, []v1.IPFamily{v1.IPv4Protocol})
	require.NoError(t, err)
	t.Cleanup(func() { applier.(*haproxyApplier).stop(context.Background()) })

	global, defaults := cfg.haproxySections()
	require.NoError(t, applier.Apply(ctx, v1.IPv4Protocol, &haproxycfg.Config{Global: global, Defaults: defaults,
		Backends: []*haproxycfg.Backend{{Name: "be:default.web:http"}}}))
	master := runtimeapi.NewMaster(cfg.MasterSocket)
	info, err := master.ShowProc(context.Background())
	require.NoError(t, err, "HAProxy runs with the default settings")
	require.NotNil(t, info.CurrentWorker())
	require.FileExists(t, filepath.Join(stateDir, "haproxy.cfg"))

	// HAProxy dies: it is started again, and the Node gets an event.
	require.NoError(t, syscall.Kill(info.MasterPID, syscall.SIGKILL))
	select {
	case ev := <-recorder.Events:
		require.Contains(t, ev, "HAProxyRestarted")
	case <-time.After(20 * time.Second):
		t.Fatal("no HAProxyRestarted event")
	}
	info, err = master.ShowProc(context.Background())
	require.NoError(t, err)

	// CleanupLeftovers runs in a kube-proxy process of its own: the one
	// that started HAProxy is gone.
	applier.(*haproxyApplier).sup.Detach()
	require.NoError(t, cleanupHAProxy(ctx, cfg))
	require.Eventually(t, func() bool {
		// Gone, or a zombie nobody reaps yet (its parent was the test).
		st, err := os.ReadFile("/proc/" + strconv.Itoa(info.MasterPID) + "/stat")
		return err != nil || strings.Contains(string(st), ") Z ")
	}, 10*time.Second, 20*time.Millisecond, "HAProxy stopped")
	_, err = os.Stat(stateDir)
	require.True(t, os.IsNotExist(err), "state directory removed: %v", err)

	// An HAProxy not managed here is left alone.
	require.NoError(t, cleanupHAProxy(ctx, Config{StateDir: stateDir, ManageProcess: false}))
}

// TestRealServicesToHAProxy runs a proxier with the real applier on
// loopback: Services and EndpointSlices in, a real HAProxy serving them
// out. Endpoint churn costs no reload; a new Service costs one.
func TestRealServicesToHAProxy(t *testing.T) {
	bin := haproxytest.Binary(t)
	_, ctx := ktesting.NewTestContext(t)
	const clusterIP, otherIP = "127.0.20.1", "127.0.20.2"
	svcPort := freePort(t, clusterIP)
	cfg := Config{NodeName: testHostname, StateDir: t.TempDir(), HAProxyPath: bin, ManageProcess: true,
		NodeIPs: map[v1.IPFamily]net.IP{v1.IPv4Protocol: net.ParseIP("127.0.0.1")}}
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())
	applier, err := newHAProxyApplier(ctx, cfg, []v1.IPFamily{v1.IPv4Protocol})
	require.NoError(t, err)
	t.Cleanup(func() { applier.(*haproxyApplier).stop(context.Background()) })
	// No hostnet wrapper: loopback addresses are local already, and this
	// test must not change the host's routes.
	p, err := newProxier(ctx, v1.IPv4Protocol, cfg, deps{applier: applier, serviceHealthServer: &fakeServiceHealthServer{}, networkInterfacer: loopbackNetwork()})
	require.NoError(t, err)
	p.setInitialized(true)
	p.servicesSynced, p.endpointSlicesSynced = true, true
	master := runtimeapi.NewMaster(cfg.MasterSocket)
	reloads := func() int {
		info, err := master.ShowProc(context.Background())
		require.NoError(t, err)
		return info.Reloads
	}
	reach := func(ip string, n int) map[string]bool {
		seen := map[string]bool{}
		for i := 0; i < n; i++ {
			seen[dialAndRead(t, "127.0.0.1", ip, svcPort)] = true
		}
		return seen
	}

	// Both pods listen on the same port, as a Deployment's pods do.
	podA := namedServer(t, "127.0.21.1", "pod-a")
	namedServerOn(t, "127.0.21.2", podA, "pod-b")
	slice := func(ports int, ips ...string) *discovery.EndpointSlice {
		return makeTestEndpointSlice("ns", "web", 1, func(eps *discovery.EndpointSlice) {
			eps.AddressType = discovery.AddressTypeIPv4
			for _, ip := range ips {
				eps.Endpoints = append(eps.Endpoints, endpoint(ip, testHostname, nil, nil, nil))
			}
			eps.Ports = []discovery.EndpointPort{tcpPort("http", int32(ports))}
		})
	}

	makeServiceMap(p, makeTestService("ns", "web", func(svc *v1.Service) {
		svc.Spec.ClusterIP = clusterIP
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, int32(svcPort), 0, 0)
	}))
	first := slice(podA, "127.0.21.1")
	populateEndpointSlices(p, first)
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, map[string]bool{"pod-a": true}, reach(clusterIP, 3))
	require.Equal(t, 0, reloads())

	second := slice(podA, "127.0.21.1", "127.0.21.2")
	p.OnEndpointSliceUpdate(first, second)
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, map[string]bool{"pod-a": true, "pod-b": true}, reach(clusterIP, 6))
	third := slice(podA, "127.0.21.2")
	p.OnEndpointSliceUpdate(second, third)
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, map[string]bool{"pod-b": true}, reach(clusterIP, 4))
	require.Equal(t, 0, reloads(), "endpoint churn through the runtime API")

	p.OnServiceAdd(makeTestService("ns", "other", func(svc *v1.Service) {
		svc.Spec.ClusterIP = otherIP
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, int32(svcPort), 0, 0)
	}))
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, 1, reloads(), "a new Service: one reload")
	require.Equal(t, map[string]bool{"CLOSED": true}, reach(otherIP, 2), "no endpoints: refused at once")
	require.Equal(t, map[string]bool{"pod-b": true}, reach(clusterIP, 4))
	fmt.Printf("RESULT proxier: Services -> real HAProxy: 2 endpoint changes and 1 new Service -> reloads=%d\n", reloads())
}

// namedServerOn is namedServer on a given port.
func namedServerOn(t *testing.T, ip string, port int, name string) {
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
}
