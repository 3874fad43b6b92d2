// Package haproxytest is the real HAProxy for the proxier's tests: it
// checks rendered configurations and map files with `haproxy -c`
// (Check, CheckModel, WriteModel), and runs HAProxy in master-worker mode
// in a temporary directory, stopped by PID when the test ends (Start).
//
// Without a haproxy binary the test fails and says how to install one
// (`make deps`): a check that cannot run is not a check that passed.
package haproxytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// Binary returns the haproxy binary to test against: $HAPROXY if set,
// else "haproxy" from PATH. Without one the test fails.
func Binary(t testing.TB) string {
	t.Helper()
	name := os.Getenv("HAPROXY")
	if name == "" {
		name = "haproxy"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("haproxy binary %q not found (make deps installs the haproxy package): %v", name, err)
	}
	return path
}

// Check runs "haproxy -c" on cfg and fails the test if HAProxy rejects it.
func Check(t testing.TB, cfg []byte) {
	t.Helper()
	bin := Binary(t)
	file := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(file, cfg, 0o600); err != nil {
		t.Fatalf("writing config: %v", err)
	}
	out, err := exec.Command(bin, "-c", "-f", file).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c rejected the config: %v\n%s\n--- config:\n%s", err, out, cfg)
	}
}

// WriteModel renders c into haproxy.cfg in dir and each dispatcher's map
// files into its MapDir, and returns the path of haproxy.cfg.
func WriteModel(t testing.TB, dir string, c *haproxycfg.Config) string {
	t.Helper()
	cfg, err := haproxycfg.Render(c)
	if err != nil {
		t.Fatalf("rendering: %v", err)
	}
	for _, d := range c.Dispatchers {
		services, endpoints, sources := haproxycfg.RenderMaps(d)
		for path, data := range map[string][]byte{d.ServicesMap(): services, d.EndpointsMap(): endpoints, d.ClusterSourcesACL(): sources} {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatalf("writing %s: %v", path, err)
			}
		}
	}
	file := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(file, cfg, 0o600); err != nil {
		t.Fatalf("writing config: %v", err)
	}
	return file
}

// CheckModel runs "haproxy -c" on c rendered with its map files, and
// fails the test if HAProxy rejects them.
func CheckModel(t testing.TB, c *haproxycfg.Config) {
	t.Helper()
	bin := Binary(t)
	file := WriteModel(t, t.TempDir(), c)
	out, err := exec.Command(bin, "-c", "-f", file).CombinedOutput()
	if err != nil {
		cfg, _ := os.ReadFile(file)
		t.Fatalf("haproxy -c rejected the config: %v\n%s\n--- config:\n%s", err, out, cfg)
	}
}
