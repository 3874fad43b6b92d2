package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"kube-haproxy.io/kube-haproxy/internal/kit"
	"kube-haproxy.io/kube-haproxy/proxier"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// checkServers is how many servers TestActiveCheckMemory adds.
const checkServers = 2000

// TestActiveCheckMemory measures what an active check costs HAProxy 2.6:
// the resident memory of a worker after adding checkServers servers to
// an empty backend at runtime, without checks and, in another HAProxy,
// with the checks kube-proxy runs (DefaultEndpointCheck) against a
// listener that accepts them. make bench-checks runs it; docs/benchmarks.md
// ("Active checks") has its figures.
func TestActiveCheckMemory(t *testing.T) {
	if os.Getenv("KH_BENCH") != "1" {
		t.Skip("opt-in: set KH_BENCH=1 to run the benchmarks (make bench-checks)")
	}
	bin := kit.Command(t, "haproxy")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	target := l.Addr().(*net.TCPAddr)
	measure := func(options []string) (before, after int64) {
		dir := t.TempDir()
		sock := filepath.Join(dir, "admin.sock")
		cfg := fmt.Sprintf("global\n    nbthread 2\n    stats socket %s mode 600 level admin\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\nbackend checks-ipv4\n    balance roundrobin\n", sock)
		if err := os.WriteFile(filepath.Join(dir, "haproxy.cfg"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		// One process (no master): its RSS is the worker's.
		cmd := exec.Command(bin, "-db", "-f", filepath.Join(dir, "haproxy.cfg"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		api := runtimeapi.New(sock)
		ctx := context.Background()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := api.ShowBackends(ctx); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("HAProxy's runtime API: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second)
		before = vmRSS(t, cmd.Process.Pid)
		for first := 0; first < checkServers; first += 200 {
			var b runtimeapi.Batch
			for i := first; i < min(first+200, checkServers); i++ {
				name := "ep-" + strconv.Itoa(i)
				b.AddServer("checks-ipv4", runtimeapi.ServerSpec{Name: name, ID: i + 1, Addr: target.IP.String(), Port: target.Port, Options: options})
				if len(options) > 0 {
					b.EnableHealth("checks-ipv4", name)
				}
				b.SetState("checks-ipv4", name, runtimeapi.StateReady)
			}
			if err := api.Run(ctx, &b); err != nil {
				t.Fatal(err)
			}
		}
		// Several check intervals: buffers and connections reach their
		// steady state.
		time.Sleep(5 * time.Second)
		return before, vmRSS(t, cmd.Process.Pid)
	}
	plain0, plain1 := measure(nil)
	check0, check1 := measure(proxier.DefaultEndpointCheck.ServerOptions())
	perPlain := float64(plain1-plain0) / checkServers
	perChecked := float64(check1-check0) / checkServers
	t.Logf("HAProxy %d servers added at runtime: RSS %d → %d KiB without checks, %d → %d KiB with checks (%s)",
		checkServers, plain0>>10, plain1>>10, check0>>10, check1>>10, strings.Join(proxier.DefaultEndpointCheck.ServerOptions(), " "))
	t.Logf("per server: %.1f KiB without checks, %.1f KiB with checks, %.1f KiB for the check itself",
		perPlain/1024, perChecked/1024, (perChecked-perPlain)/1024)
}

// vmRSS is the resident memory of a process, in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
