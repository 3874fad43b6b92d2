package proxier

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// CheckHost reports the first reason this host cannot run the haproxy mode
// with the defaulted Config c, naming the configuration field at fault. It
// creates nothing: kube-proxy calls it before it contacts the API server or
// changes the host, so a bad setting fails fast and leaves no trace.
func (c *Config) CheckHost(ctx context.Context) error {
	if err := checkHAProxyBinary(ctx, c.HAProxyPath); err != nil {
		return fmt.Errorf("haproxy.binaryPath: %w", err)
	}
	if err := checkCreatable(c.StateDir); err != nil {
		return fmt.Errorf("haproxy.stateDir: %w", err)
	}
	if c.ManageProcess {
		// HAProxy, started by the proxier, creates its sockets.
		for field, sock := range map[string]string{"haproxy.masterSocket": c.MasterSocket, "haproxy.runtimeSocket": c.RuntimeSocket} {
			if filepath.Dir(sock) == c.StateDir {
				continue
			}
			if err := checkCreatable(filepath.Dir(sock)); err != nil {
				return fmt.Errorf("%s: %w", field, err)
			}
		}
	}
	return nil
}

// checkHAProxyBinary runs `path -v`: a file that exists but is not HAProxy
// (or cannot run here) is as unusable as a missing one.
func checkHAProxyBinary(ctx context.Context, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "-v").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s -v: %w", path, err)
	}
	if !bytes.Contains(out, []byte("HAProxy version")) {
		return fmt.Errorf("%s -v does not report an HAProxy version", path)
	}
	return nil
}

// checkCreatable checks that dir is a writable directory, or that its
// nearest existing ancestor is one (so dir can be created), by creating and
// removing a probe file there. Root passes permission bits, so a probe is
// the only honest test (read-only mounts, files in the way).
func checkCreatable(dir string) error {
	d := dir
	for {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s: %s is not a directory", dir, d)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		parent := filepath.Dir(d)
		if parent == d {
			return err
		}
		d = parent
	}
	f, err := os.CreateTemp(d, ".kube-haproxy-probe-")
	if err != nil {
		return fmt.Errorf("%s is not writable: %w", dir, err)
	}
	name := f.Name()
	_ = f.Close()
	return os.Remove(name)
}
