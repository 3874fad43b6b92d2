package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/supervisor"
)

// reload writes the map files and haproxy.cfg of want, validates them and
// reloads (or starts) HAProxy. On any failure the last good haproxy.cfg
// is put back; the map files stay new (a restarted HAProxy then serves
// today's Services with the last good settings).
func (a *Applier) reload(ctx context.Context, want *haproxycfg.Config, key string, text []byte, autoMaxConn bool) error {
	now := a.opts.Clock.Now()
	if key == a.rejectedKey && now.Before(a.retryAt) {
		return fmt.Errorf("%w: the same configuration was rejected, next try after %s: %w", ErrRejected, a.retryAt.Format(time.RFC3339), a.rejectedErr)
	}
	if err := a.fitsFileLimit(want, autoMaxConn); err != nil {
		return a.reject(key, "file-limit", err)
	}
	dir := filepath.Dir(a.opts.ConfigFile)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if err := a.writeAllMaps(want); err != nil {
		return fmt.Errorf("apply: writing the map files: %w", err)
	}
	tmp, err := writeTemp(a.opts.ConfigFile, text)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	defer os.Remove(tmp)
	if err := a.opts.Validate(ctx, tmp); err != nil {
		if errors.Is(err, ErrBinaryMissing) {
			// Not the configuration's fault: try again at the next sync.
			configRejectedTotal.WithLabelValues("binary").Inc()
			return fmt.Errorf("%w: %w", ErrRejected, err)
		}
		return a.reject(key, "validation", fmt.Errorf("haproxy -c: %w", err))
	}
	if err := os.Rename(tmp, a.opts.ConfigFile); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	start := a.opts.Clock.Now()
	action := "reload"
	if a.started {
		err = a.opts.Process.Reload(ctx)
	} else {
		action = "start"
		err = a.opts.Process.Start(ctx)
	}
	if err != nil {
		reloadsTotal.WithLabelValues("failed").Inc()
		// Whether the old worker still serves, or none does, read it.
		clear(a.applied)
		a.restoreLastGood()
		if errors.Is(err, supervisor.ErrNotRunning) || errors.Is(err, supervisor.ErrBinaryMissing) {
			// HAProxy is down or cannot run (the supervisor restarts it and
			// the model is applied again then): nothing says the
			// configuration is bad, so no backoff for it.
			configRejectedTotal.WithLabelValues(action).Inc()
			return fmt.Errorf("%w: HAProxy %s: %w", ErrRejected, action, err)
		}
		return a.reject(key, action, fmt.Errorf("HAProxy %s: %w", action, err))
	}
	reloadsTotal.WithLabelValues("success").Inc()
	reloadDuration.Observe(a.opts.Clock.Since(start).Seconds())
	a.started = true
	a.reloads++
	a.loadedKey = key
	a.lastGood = text
	// The new worker read exactly the files just written.
	clear(a.applied)
	for _, d := range want.Dispatchers {
		a.applied[d.IPv6] = d
		setMapEntries(d)
	}
	a.lastRead = now
	a.rejectedKey, a.rejectedErr, a.backoff = "", nil, 0
	a.writeLoadedMarker(key, text)
	services := 0
	for _, d := range want.Dispatchers {
		services += len(d.ServicePorts)
	}
	a.logger.Info("HAProxy configuration loaded", "action", action, "servicePorts", services, "elapsed", a.opts.Clock.Since(start))
	return nil
}

// MinAutoMaxConn is the fewest connections a fitted maxconn may allow:
// below it the listeners have taken the file limit, and a configuration
// that accepts almost no connection is refused rather than loaded.
const MinAutoMaxConn = 256

// fitsFileLimit says why want cannot run within Options.FileLimit, or nil.
func (a *Applier) fitsFileLimit(want *haproxycfg.Config, autoMaxConn bool) error {
	limit := a.opts.FileLimit
	if limit <= 0 {
		return nil
	}
	binds, conns := want.Listeners(), want.Global.MaxConn
	if autoMaxConn {
		conns = max(conns, MinAutoMaxConn)
	}
	need := haproxycfg.FileDescriptorsNeeded(conns, binds)
	if need <= limit {
		return nil
	}
	return fmt.Errorf("%d listeners and %d connections need %d file descriptors, more than the file limit %d: "+
		"raise kube-proxy's file limit (HAProxy inherits it) or set haproxy maxConn",
		binds, conns, need, limit)
}

// reject records a rejected structure, its backoff, an event and a metric.
func (a *Applier) reject(key, reason string, err error) error {
	configRejectedTotal.WithLabelValues(reason).Inc()
	if key == a.rejectedKey && a.backoff > 0 {
		a.backoff = min(2*a.backoff, a.opts.MaxRetryBackoff)
	} else {
		a.backoff = a.opts.RetryBackoff
	}
	a.rejectedKey = key
	a.rejectedErr = err
	a.retryAt = a.opts.Clock.Now().Add(a.backoff)
	a.logger.Error(err, "HAProxy configuration rejected; the last good configuration keeps serving", "reason", reason, "retryAfter", a.backoff)
	if a.opts.Recorder != nil && a.opts.NodeName != "" {
		node := &v1.ObjectReference{Kind: "Node", Name: a.opts.NodeName, UID: types.UID(a.opts.NodeName)}
		a.opts.Recorder.Eventf(node, nil, v1.EventTypeWarning, "HAProxyConfigRejected", reason,
			"HAProxy configuration rejected (%s), the last good configuration keeps serving: %v", reason, err)
	}
	return fmt.Errorf("%w (%s): %w", ErrRejected, reason, err)
}

// restoreLastGood puts the last configuration HAProxy loaded back on disk,
// so that a restart of HAProxy comes back with it.
func (a *Applier) restoreLastGood() {
	if a.lastGood == nil {
		return
	}
	tmp, err := writeTemp(a.opts.ConfigFile, a.lastGood)
	if err == nil {
		err = os.Rename(tmp, a.opts.ConfigFile)
	}
	if err != nil {
		a.logger.Error(err, "Restoring the last good HAProxy configuration file failed", "file", a.opts.ConfigFile)
	}
}

// The marker file next to the configuration records which haproxy.cfg the
// running HAProxy loaded and a checksum of the file, so a restarted
// proxier that adopts HAProxy knows whether runtime updates suffice. A
// file edited by hand (checksum mismatch) forces a reload.
func (a *Applier) markerFile() string { return a.opts.ConfigFile + MarkerSuffix }

// MarkerSuffix names the file beside the configuration that records the
// configuration HAProxy last loaded.
const MarkerSuffix = ".loaded"

// TempFilePrefix starts the name of a file being written in place of
// base (written whole, then renamed over it).
func TempFilePrefix(base string) string { return "." + base + "." }

func (a *Applier) writeLoadedMarker(key string, text []byte) {
	sum := sha256.Sum256(text)
	content := key + " " + hex.EncodeToString(sum[:]) + "\n"
	tmp, err := writeTemp(a.markerFile(), []byte(content))
	if err == nil {
		err = os.Rename(tmp, a.markerFile())
	}
	if err != nil {
		a.logger.Error(err, "Writing the loaded-configuration marker failed", "file", a.markerFile())
	}
}

// adoptLoadedKey trusts the marker of an adopted HAProxy only when the
// configuration file still has the content the marker describes.
func (a *Applier) adoptLoadedKey() {
	a.loadedKey = ""
	marker, err := os.ReadFile(a.markerFile())
	if err != nil {
		return
	}
	key, fileSum, ok := strings.Cut(strings.TrimSpace(string(marker)), " ")
	if !ok {
		return
	}
	text, err := os.ReadFile(a.opts.ConfigFile)
	if err != nil {
		return
	}
	sum := sha256.Sum256(text)
	if hex.EncodeToString(sum[:]) != fileSum {
		a.logger.Info("HAProxy configuration file changed since it was loaded; reloading it", "file", a.opts.ConfigFile)
		return
	}
	a.loadedKey = key
	a.lastGood = text
}

// configKey identifies a haproxy.cfg text.
func configKey(text []byte) string {
	sum := sha256.Sum256(text)
	return hex.EncodeToString(sum[:])
}

// replaceFile replaces path with data atomically (temporary file, rename);
// durable flushes it to disk first.
func replaceFile(path string, data []byte, durable bool) error {
	tmp, err := writeTempFile(path, data, durable)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// writeTemp writes data to a new temporary file beside path (same file
// system, so a rename is atomic) and flushes it to disk: a configuration
// that is about to be loaded must survive a crash of the node whole.
func writeTemp(path string, data []byte) (string, error) {
	return writeTempFile(path, data, true)
}

// writeTempFile is writeTemp; durable=false skips the flush, for the map
// files rewritten after runtime updates, which happen at every change and
// which the next full read repairs if a crash lost them.
func writeTempFile(path string, data []byte, durable bool) (string, error) {
	return writeTempFileWith(path, durable, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// writeTempFileWith is writeTempFile with the content written by fill.
func writeTempFileWith(path string, durable bool, fill func(f *os.File) error) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), TempFilePrefix(filepath.Base(path))+"*")
	if err != nil {
		return "", err
	}
	if err := fill(f); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			os.Remove(f.Name())
			return "", err
		}
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// ErrBinaryMissing: the haproxy binary cannot be run to validate a
// configuration.
var ErrBinaryMissing = supervisor.ErrBinaryMissing

// validateWithBinary runs "haproxy -c -f file" (not -q, which hides the
// alerts that say what is wrong).
func validateWithBinary(ctx context.Context, bin, file string) error {
	out, err := exec.CommandContext(ctx, bin, "-c", "-f", file).CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return fmt.Errorf("%w: %s: %w", ErrBinaryMissing, bin, err)
	}
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg == "" {
			return err
		}
		return fmt.Errorf("%w: %s", err, strings.ReplaceAll(msg, "\n", " | "))
	}
	return nil
}
