// Package haproxytest helps tests check generated configurations with the
// real haproxy binary.
package haproxytest

import (
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"

	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Binary returns the haproxy binary to test against: $HAPROXY if set,
// else "haproxy" from PATH. When there is none, the test fails under
// CI=true (CI must run the real check) and is skipped otherwise.
func Binary(t testing.TB) string {
	t.Helper()
	name := os.Getenv("HAPROXY")
	if name == "" {
		name = "haproxy"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("haproxy binary %q not found (CI=true requires it; install the haproxy package): %v", name, err)
		}
		t.Skipf("haproxy binary %q not found, skipping the real config check: %v", name, err)
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
