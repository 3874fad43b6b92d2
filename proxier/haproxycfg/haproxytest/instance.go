package haproxytest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Instance is a running HAProxy.
type Instance struct {
	Dir          string
	Config       string
	MasterSocket string
	StatsSocket  string
	PIDFile      string
	cmd          *exec.Cmd
}

// Global returns the global section lines every test config needs: the
// stats socket with admin level and listener passing, so reloads keep
// listening sockets.
func Global(dir string) string {
	return fmt.Sprintf(`global
  stats socket %s mode 600 level admin expose-fd listeners
  nbthread 2
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
`, filepath.Join(dir, "haproxy.sock"))
}

// Start writes Global(dir)+body to a config file in a temporary directory
// and runs HAProxy on it in master-worker mode. It returns once the stats
// socket answers.
func Start(t testing.TB, body string) *Instance {
	t.Helper()
	bin := Binary(t)
	dir, err := os.MkdirTemp("", "kh-haproxy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	in := &Instance{
		Dir:          dir,
		Config:       filepath.Join(dir, "haproxy.cfg"),
		MasterSocket: filepath.Join(dir, "master.sock"),
		StatsSocket:  filepath.Join(dir, "haproxy.sock"),
		PIDFile:      filepath.Join(dir, "haproxy.pid"),
	}
	if err := os.WriteFile(in.Config, []byte(Global(dir)+body), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-Ws", "-S", in.MasterSocket, "-f", in.Config, "-p", in.PIDFile)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	in.cmd = cmd
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Kill the whole process group we created: master and workers.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("haproxy exited at start: %s", stderr.String())
		default:
		}
		if ready(in.StatsSocket) && masterReady(in.MasterSocket) {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy stats socket did not appear: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MasterPID returns the PID of the master process.
func (in *Instance) MasterPID() int { return in.cmd.Process.Pid }

func ready(socket string) bool {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// masterReady says whether the master CLI answers "show proc" with a
// worker: before that, the master may reset connections.
func masterReady(socket string) bool {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("show proc\n")); err != nil {
		return false
	}
	c.(*net.UnixConn).CloseWrite()
	out, err := io.ReadAll(c)
	return err == nil && strings.Contains(string(out), "worker")
}
