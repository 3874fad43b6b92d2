// Package haproxytest helps tests check generated configurations with the
// real haproxy binary.
package haproxytest

import (
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
