package proxier

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"kube-haproxy.io/kube-haproxy/proxier/apply"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/requestlog"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/supervisor"
)

// Files of the state directory besides the sockets named in Config.
const (
	configFileName = "haproxy.cfg"
	pidFileName    = "haproxy.pid"
)

func (c *Config) configFile() string { return filepath.Join(c.StateDir, configFileName) }
func (c *Config) pidFile() string    { return filepath.Join(c.StateDir, pidFileName) }

func (c *Config) supervisorOptions() supervisor.Options {
	return supervisor.Options{
		Binary:       c.HAProxyPath,
		ConfigFile:   c.configFile(),
		MasterSocket: c.MasterSocket,
		PIDFile:      c.pidFile(),
		Managed:      c.ManageProcess,
	}
}

// newHAProxyApplier builds the real Applier: a supervisor for the HAProxy
// process (or only its master socket when the process is not managed
// here), the runtime API client, and the applier that chooses between
// them. Nothing touches HAProxy before the first Apply, and a missing
// binary is reported then (and at every retry) rather than here, so
// kube-proxy keeps running, serving health and metrics, instead of
// crash-looping.
func newHAProxyApplier(ctx context.Context, cfg Config, families []v1.IPFamily) (Applier, error) {
	logger := klog.FromContext(ctx).WithName("haproxy")
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	var a *apply.Applier
	opts := cfg.supervisorOptions()
	node := &v1.ObjectReference{Kind: "Node", Name: cfg.NodeName, UID: types.UID(cfg.NodeName)}
	opts.OnRestart = func(err error) {
		if err != nil {
			apply.RestartsTotal.WithLabelValues("failed").Inc()
			if cfg.Recorder != nil {
				cfg.Recorder.Eventf(node, nil, v1.EventTypeWarning, "HAProxyRestartFailed", "Restart", "HAProxy died and could not be started again: %v", err)
			}
			return
		}
		apply.RestartsTotal.WithLabelValues("success").Inc()
		// The new process read the map files, which the applier keeps
		// current; read its maps back and re-apply to be exact.
		if rerr := a.Resync(ctx); rerr != nil && !errors.Is(rerr, apply.ErrStopped) {
			logger.Error(rerr, "Re-applying the model after an HAProxy restart failed")
		}
		// The event comes last: when it is seen, recovery is complete.
		if cfg.Recorder != nil {
			cfg.Recorder.Eventf(node, nil, v1.EventTypeWarning, "HAProxyRestarted", "Restart", "HAProxy died and was started again")
		}
	}
	// HAProxy logs the requests of HTTP Service ports here, for the
	// per-Service HTTP metrics; without the socket they are not counted,
	// and nothing else changes.
	requestlog.Register()
	if conn, err := requestlog.Listen(filepath.Join(cfg.StateDir, haproxycfg.RequestLogSocketName)); err != nil {
		logger.Error(err, "Per-Service HTTP metrics are not counted: the request log socket cannot be opened")
	} else {
		go requestlog.Serve(ctx, conn, logger.WithName("requestlog"))
	}
	sup := supervisor.New(opts, logger.WithName("supervisor"))
	if err := sup.CheckBinary(); err != nil {
		logger.Error(err, "HAProxy cannot be started; every sync will report it until the binary is installed", "path", cfg.HAProxyPath)
	}
	a, err := apply.New(apply.Options{
		ConfigFile: cfg.configFile(),
		Binary:     cfg.HAProxyPath,
		Runtime:    runtimeapi.New(cfg.RuntimeSocket),
		Process:    sup,
		Families:   families,
		FileLimit:  cfg.FileLimit,
		Recorder:   cfg.Recorder,
		NodeName:   cfg.NodeName,
		Logger:     logger.WithName("apply"),
	})
	if err != nil {
		return nil, err
	}
	// kube-proxy is shutting down: stop changing and watching HAProxy,
	// which keeps serving for the next kube-proxy to adopt (and is never
	// started again behind a CleanupLeftovers).
	context.AfterFunc(ctx, func() {
		a.Stop()
		sup.Detach()
	})
	return &haproxyApplier{Applier: a, sup: sup}, nil
}

// haproxyApplier is the Applier with the Supervisor of its HAProxy.
type haproxyApplier struct {
	*apply.Applier
	sup *supervisor.Supervisor
}

// stop stops watching and stops the HAProxy (tests; kube-proxy leaves
// HAProxy running when it exits, for the next one to adopt).
func (h *haproxyApplier) stop(ctx context.Context) error {
	return h.sup.Stop(ctx, 10*time.Second)
}

// cleanupHAProxy stops the HAProxy this host's proxier manages and removes
// the files it wrote in the state directory (and the directory when that
// leaves it empty). An HAProxy not managed here is left alone.
func cleanupHAProxy(ctx context.Context, cfg Config) error {
	logger := klog.FromContext(ctx)
	if !cfg.ManageProcess {
		logger.Info("HAProxy is not managed by kube-proxy; leaving it running", "masterSocket", cfg.MasterSocket)
		return nil
	}
	var errs []error
	sup := supervisor.New(cfg.supervisorOptions(), logger)
	if err := sup.Stop(ctx, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	entries, err := os.ReadDir(cfg.StateDir)
	if err != nil && !os.IsNotExist(err) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		n := e.Name()
		ours := n == configFileName || n == configFileName+apply.MarkerSuffix || n == pidFileName ||
			strings.HasPrefix(n, apply.TempFilePrefix(configFileName)) || isDispatcherFile(n) ||
			filepath.Join(cfg.StateDir, n) == cfg.MasterSocket || filepath.Join(cfg.StateDir, n) == cfg.RuntimeSocket
		if ours {
			if err := os.Remove(filepath.Join(cfg.StateDir, n)); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	if err := os.Remove(cfg.StateDir); err != nil && !os.IsNotExist(err) {
		logger.Info("State directory not removed", "dir", cfg.StateDir, "err", err)
	}
	return errors.Join(errs...)
}

// isDispatcherFile reports whether name is one of the dispatchers' map and
// ACL files (or one being written) or retry sockets.
func isDispatcherFile(name string) bool {
	for _, base := range haproxycfg.FileNames() {
		if name == base || strings.HasPrefix(name, apply.TempFilePrefix(base)) {
			return true
		}
	}
	return false
}
