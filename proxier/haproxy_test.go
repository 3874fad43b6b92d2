package proxier

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
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
	cfg := Config{NodeName: testHostname, StateDir: stateDir, HAProxyPath: bin, ManageProcess: true}
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
