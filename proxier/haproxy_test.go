package proxier

import (
	"context"
	"fmt"
	"net"
	"net/netip"
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

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// TestRealApplierAndCleanup runs the Applier the constructors build against
// the real haproxy (with this package's default process settings), then
// CleanupLeftovers' HAProxy part.
func TestRealApplierAndCleanup(t *testing.T) {
	bin := haproxytest.Binary(t)
	// The dispatcher binds transparent on loopback: root, and the test
	// namespace rather than the host's loopback.
	requireTestNamespace(t)
	_, ctx := ktesting.NewTestContext(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	recorder := events.NewFakeRecorder(10)
	cfg := Config{NodeName: testHostname, StateDir: stateDir, HAProxyPath: bin, ManageProcess: true, Recorder: recorder, DispatchPort: 10420}
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())
	applier, err := newHAProxyApplier(ctx, cfg, []v1.IPFamily{v1.IPv4Protocol})
	require.NoError(t, err)
	t.Cleanup(func() { applier.(*haproxyApplier).stop(context.Background()) })

	// The smallest model a proxier hands over: settings and a dispatcher
	// without Service ports, its maps in the state directory.
	global, defaults := cfg.haproxySections()
	require.NoError(t, applier.Apply(ctx, v1.IPv4Protocol, &haproxycfg.Config{Global: global, Defaults: defaults,
		Dispatchers: []*haproxycfg.Dispatcher{{
			Listen: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(cfg.DispatchPort)),
			MapDir: stateDir,
		}}}))
	master := runtimeapi.NewMaster(cfg.MasterSocket)
	info, err := master.ShowProc(context.Background())
	require.NoError(t, err, "HAProxy runs with the default settings")
	require.NotNil(t, info.CurrentWorker())
	require.FileExists(t, filepath.Join(stateDir, "haproxy.cfg"))
	require.FileExists(t, filepath.Join(stateDir, "services-ipv4.map"))

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

// TestRealServicesToHAProxy runs a proxier with the real applier, wrapped
// in the hostnet wrapper as in scope node, in the test's network
// namespace: Services and EndpointSlices in, routes, guard and tproxy
// dispatch and a real HAProxy serving them out. Neither endpoint churn nor
// a new Service costs a reload: both are map entries changed through the
// runtime API.
func TestRealServicesToHAProxy(t *testing.T) {
	bin := haproxytest.Binary(t)
	netns.RequireBinary(t, "nft")
	requireTestNamespace(t)
	_, ctx := ktesting.NewTestContext(t)
	const clusterIP, otherIP, svcPort = "10.97.0.1", "10.97.0.2", 80
	cfg := Config{NodeName: testHostname, StateDir: t.TempDir(), HAProxyPath: bin, ManageProcess: true,
		NodeIPs: map[v1.IPFamily]net.IP{v1.IPv4Protocol: net.ParseIP("127.0.0.1")}, DispatchPort: 10430}
	cfg.SetDefaults()
	require.NoError(t, cfg.Validate())
	underlying, err := newHAProxyApplier(ctx, cfg, []v1.IPFamily{v1.IPv4Protocol})
	require.NoError(t, err)
	t.Cleanup(func() { underlying.(*haproxyApplier).stop(context.Background()) })
	// As prepare wires it for scope node: Service IPs local, guarded and
	// dispatched to HAProxy's listener.
	applier := withHostNetwork(underlying)
	t.Cleanup(func() {
		if err := hostnet.Cleanup(context.Background()); err != nil {
			t.Errorf("removing routes and guard: %v", err)
		}
	})
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
			seen[dialAndRead(t, "", ip, svcPort)] = true
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
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, svcPort, 0, 0)
	}))
	first := slice(podA, "127.0.21.1")
	populateEndpointSlices(p, first)
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, map[string]bool{"pod-a": true}, reach(clusterIP, 3))
	require.Equal(t, 0, reloads())

	second := slice(podA, "127.0.21.1", "127.0.21.2")
	p.OnEndpointSliceUpdate(first, second)
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, map[string]bool{"pod-a": true, "pod-b": true}, reach(clusterIP, 24))
	third := slice(podA, "127.0.21.2")
	p.OnEndpointSliceUpdate(second, third)
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, map[string]bool{"pod-b": true}, reach(clusterIP, 4))
	require.Equal(t, 0, reloads(), "endpoint churn through the runtime API")

	// A new Service is map entries too (the old model needed a reload for
	// its new frontend).
	p.OnServiceAdd(makeTestService("ns", "other", func(svc *v1.Service) {
		svc.Spec.ClusterIP = otherIP
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, svcPort, 0, 0)
	}))
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, 0, reloads(), "a new Service: no reload")
	require.Equal(t, map[string]bool{"CLOSED": true}, reach(otherIP, 2), "no endpoints: refused at once")
	require.Equal(t, map[string]bool{"pod-b": true}, reach(clusterIP, 4))

	// The Service goes away: its address is refused by the guard.
	p.OnServiceDelete(makeTestService("ns", "web", func(svc *v1.Service) {
		svc.Spec.ClusterIP = clusterIP
		svc.Spec.Ports = addTestPort(nil, "http", v1.ProtocolTCP, svcPort, 0, 0)
	}))
	require.NoError(t, p.syncProxyRules())
	require.Equal(t, map[string]bool{"CLOSED": true}, reach(clusterIP, 2), "deleted Service")
	require.Equal(t, 0, reloads())
	fmt.Printf("RESULT proxier: Services -> real HAProxy: 2 endpoint changes, 1 new and 1 deleted Service -> reloads=%d\n", reloads())
}
