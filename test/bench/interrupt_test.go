package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// TestBenchInterruptCleansUp runs TestBench in a child process, sends it
// SIGINT once its cluster writes Services, and checks what an interrupted
// run must leave: a failure that says no report is written, no report, no
// network namespace, no process, no temporary file. Needs what TestBench
// needs (KH_BENCH=1, root, make build); make bench-smoke runs it.
func TestBenchInterruptCleansUp(t *testing.T) {
	if os.Getenv("KH_BENCH") != "1" {
		t.Skip("opt-in: set KH_BENCH=1 to run the benchmarks (make bench-smoke)")
	}
	netns.Require(t)
	out := filepath.Join(t.TempDir(), "out")
	// The child's own temporary directory, to find what it leaves; short,
	// as HAProxy's socket paths below it must stay under 98 bytes.
	childTmp, err := os.MkdirTemp("", "khi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(childTmp) })
	cmd := exec.Command(os.Args[0], "-test.run=^TestBench$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "KH_BENCH=1", "SCALES=20", "MEMORY_SCALES=none", "ENDPOINTS=1",
		"BENCH_OUT="+out, "BENCH_DOCS=", "TMPDIR="+childTmp)
	var log lockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Interrupt once the cluster runs and Services are being measured.
	deadline := time.After(3 * time.Minute)
	for !strings.Contains(log.String(), "cold start: every one of") {
		select {
		case err := <-done:
			t.Fatalf("the benchmark ended before it was interrupted: %v\n%s", err, log.String())
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("the benchmark did not reach its measurements in 3 minutes:\n%s", log.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("an interrupted benchmark passed:\n%s", log.String())
		}
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("the benchmark did not end within 2 minutes of SIGINT:\n%s", log.String())
	}
	text := log.String()
	t.Logf("the interrupted run ended with:\n%s", tailLines(text, 8))
	if !strings.Contains(text, "no report is written") {
		t.Errorf("the interrupted run does not say that no report is written:\n%s", text)
	}
	if entries, _ := os.ReadDir(out); len(entries) > 0 {
		t.Errorf("an interrupted run wrote %d files under %s", len(entries), out)
	}
	nsList, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if prefix := fmt.Sprintf("%s%d-", netns.Prefix, child); bytes.Contains(nsList, []byte(prefix)) {
		t.Errorf("namespaces %s* remain after the interrupted run:\n%s", prefix, nsList)
	}
	if pids := processesMentioning(childTmp); len(pids) > 0 {
		t.Errorf("processes of the interrupted run remain: %v", pids)
	}
	if entries, _ := os.ReadDir(childTmp); len(entries) > 0 {
		t.Errorf("the interrupted run left %d entries in its temporary directory", len(entries))
	}
}

// processesMentioning lists processes whose command line contains s.
func processesMentioning(s string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmd, []byte(s)) {
			continue
		}
		out = append(out, e.Name()+": "+strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return out
}

// lockedBuffer is a bytes.Buffer safe for a child's output and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
