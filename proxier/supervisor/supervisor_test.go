package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// env is a state directory with a config whose frontend listens on a free
// loopback port and forwards to a small TCP server.
type env struct {
	dir     string
	opts    Options
	fePort  int
	backend net.Listener
}

func newEnv(t *testing.T) *env {
	bin := haproxytest.Binary(t)
	dir := t.TempDir()
	be, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { be.Close() })
	go func() {
		for {
			c, err := be.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	e := &env{
		dir:     dir,
		fePort:  freePort(t),
		backend: be,
		opts: Options{
			Binary:       bin,
			ConfigFile:   filepath.Join(dir, "haproxy.cfg"),
			MasterSocket: filepath.Join(dir, "master.sock"),
			PIDFile:      filepath.Join(dir, "haproxy.pid"),
			Managed:      true,
		},
	}
	e.writeConfig(t, "")
	return e
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (e *env) writeConfig(t *testing.T, extra string) {
	cfg := haproxytest.Global(e.dir) + fmt.Sprintf(`
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  balance roundrobin
  server s1 %s id 1
%s`, e.fePort, e.backend.Addr(), extra)
	require.NoError(t, os.WriteFile(e.opts.ConfigFile, []byte(cfg), 0o644))
}

// serves says whether a connection through the frontend gets the
// backend's greeting.
func (e *env) serves() bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(e.fePort), time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 6)
	n, _ := c.Read(buf)
	return string(buf[:n]) == "hello\n"
}

func (e *env) waitServing(t *testing.T, within time.Duration) time.Duration {
	start := time.Now()
	for !e.serves() {
		if time.Since(start) > within {
			t.Fatalf("HAProxy not serving again within %v", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func newSupervisor(t *testing.T, opts Options) *Supervisor {
	_, ctx := ktesting.NewTestContext(t)
	s := New(opts, klog.FromContext(ctx))
	t.Cleanup(func() { s.Stop(context.Background(), 5*time.Second) })
	return s
}

func TestStartReloadStop(t *testing.T) {
	e := newEnv(t)
	s := newSupervisor(t, e.opts)
	ctx := context.Background()

	adopted, err := s.Adopt(ctx)
	require.NoError(t, err)
	require.False(t, adopted, "nothing to adopt in an empty state dir")
	require.NoError(t, s.Start(ctx))
	pid := s.MasterPID()
	require.NotZero(t, pid)
	fromFile, err := readPIDFile(e.opts.PIDFile)
	require.NoError(t, err)
	require.Equal(t, pid, fromFile)
	require.True(t, e.serves())
	require.Error(t, s.Start(ctx), "a second HAProxy is never started")

	require.NoError(t, s.Reload(ctx))
	require.True(t, e.serves())
	info, err := s.Master().ShowProc(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, info.Reloads)
	require.Equal(t, pid, info.MasterPID, "a reload keeps the master")

	// A configuration HAProxy refuses: the old worker keeps serving.
	e.writeConfig(t, "\nnot_a_keyword\n")
	err = s.Reload(ctx)
	require.ErrorIs(t, err, ErrReloadFailed)
	t.Logf("failed reload reported as: %v", err)
	require.True(t, e.serves(), "old worker serves after a failed reload")

	// Fixed again: the next reload succeeds.
	e.writeConfig(t, "")
	require.NoError(t, s.Reload(ctx))
	require.True(t, e.serves())

	require.NoError(t, s.Stop(ctx, 5*time.Second))
	require.False(t, processAlive(pid))
	require.NoFileExists(t, e.opts.PIDFile)
	require.False(t, e.serves())
}

func TestRestartAfterKill(t *testing.T) {
	for _, victim := range []string{"worker", "master"} {
		t.Run(victim, func(t *testing.T) {
			e := newEnv(t)
			restarted := make(chan error, 10)
			e.opts.OnRestart = func(err error) { restarted <- err }
			s := newSupervisor(t, e.opts)
			ctx := context.Background()
			require.NoError(t, s.Start(ctx))
			info, err := s.Master().ShowProc(ctx)
			require.NoError(t, err)
			pid := info.MasterPID
			if victim == "worker" {
				pid = info.CurrentWorker().PID
			}
			require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
			took := e.waitServing(t, 20*time.Second)
			require.NoError(t, <-restarted)
			require.NotEqual(t, info.MasterPID, s.MasterPID())
			require.Equal(t, 1, s.Restarts())
			t.Logf("SIGKILL of the %s: serving again after %.2f s", victim, took.Seconds())
			fmt.Printf("RESULT supervisor: SIGKILL of the HAProxy %s -> serving again after %.2f s\n", victim, took.Seconds())
		})
	}
}

func TestAdoptAfterProxierRestart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := newSupervisor(t, e.opts)
	require.NoError(t, first.Start(ctx))
	pid := first.MasterPID()
	// The proxier process goes away without stopping HAProxy.
	first.Detach()

	second := newSupervisor(t, e.opts)
	adopted, err := second.Adopt(ctx)
	require.NoError(t, err)
	require.True(t, adopted)
	require.Equal(t, pid, second.MasterPID(), "the same HAProxy is adopted")
	require.True(t, e.serves())
	require.NoError(t, second.Reload(ctx))
	require.Equal(t, pid, second.MasterPID())

	// The adopted master is watched like a child: when it dies, a new one
	// starts.
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	e.waitServing(t, 20*time.Second)
	require.Eventually(t, func() bool { return second.MasterPID() != pid && second.MasterPID() != 0 }, 10*time.Second, 20*time.Millisecond)
	fmt.Printf("RESULT supervisor: proxier restart adopted master pid %d (no second HAProxy)\n", pid)
}

func TestStaleSocketAndPIDFile(t *testing.T) {
	e := newEnv(t)
	// A socket file nobody listens on, and a PID file naming a process
	// that is not HAProxy (this test).
	l, err := net.Listen("unix", e.opts.MasterSocket)
	require.NoError(t, err)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	require.FileExists(t, e.opts.MasterSocket)
	require.NoError(t, os.WriteFile(e.opts.PIDFile, []byte(strconv.Itoa(os.Getpid())), 0o644))

	s := newSupervisor(t, e.opts)
	ctx := context.Background()
	adopted, err := s.Adopt(ctx)
	require.NoError(t, err)
	require.False(t, adopted)
	require.NoError(t, s.Start(ctx))
	require.True(t, e.serves())
}

func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("missing binary", func(t *testing.T) {
		e := newEnv(t)
		e.opts.Binary = filepath.Join(e.dir, "no-haproxy-here")
		s := newSupervisor(t, e.opts)
		require.ErrorIs(t, s.Start(ctx), ErrBinaryMissing)
	})
	t.Run("port taken", func(t *testing.T) {
		e := newEnv(t)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(e.fePort))
		require.NoError(t, err)
		defer l.Close()
		s := newSupervisor(t, e.opts)
		err = s.Start(ctx)
		require.ErrorIs(t, err, ErrStartFailed)
		require.Contains(t, err.Error(), "cannot bind")
		t.Logf("port taken reported as: %v", err)
		require.Zero(t, s.MasterPID())
	})
}

func TestNoCrashLoop(t *testing.T) {
	e := newEnv(t)
	// Long enough for the test to take the port before the first restart.
	e.opts.MinBackoff = 500 * time.Millisecond
	e.opts.MaxBackoff = time.Second
	var mu sync.Mutex
	var attempts []error
	e.opts.OnRestart = func(err error) {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, err)
	}
	s := newSupervisor(t, e.opts)
	ctx := context.Background()
	require.NoError(t, s.Start(ctx))
	pid := s.MasterPID()

	// HAProxy dies and its port is taken before it can start again: every
	// restart fails, and restarts back off.
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	var l net.Listener
	require.Eventually(t, func() bool {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(e.fePort))
		return err == nil
	}, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) >= 3
	}, 10*time.Second, 10*time.Millisecond)
	mu.Lock()
	for _, err := range attempts {
		require.ErrorIs(t, err, ErrStartFailed)
	}
	mu.Unlock()

	// The port frees up: the next attempt succeeds.
	l.Close()
	e.waitServing(t, 10*time.Second)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return attempts[len(attempts)-1] == nil
	}, 5*time.Second, 10*time.Millisecond)
}

func TestUnmanaged(t *testing.T) {
	// HAProxy run by somebody else (its own container).
	in := haproxytest.Start(t, "backend be\n  balance roundrobin\n")
	s := newSupervisor(t, Options{MasterSocket: in.MasterSocket, ConfigFile: in.Config, Managed: false, StartTimeout: time.Second})
	ctx := context.Background()
	adopted, err := s.Adopt(ctx)
	require.NoError(t, err)
	require.True(t, adopted)
	require.Equal(t, in.MasterPID(), s.MasterPID())
	require.NoError(t, s.Reload(ctx))
	require.NoError(t, s.Stop(ctx, time.Second))
	info, err := runtimeapi.NewMaster(in.MasterSocket).ShowProc(ctx)
	require.NoError(t, err, "Stop leaves an HAProxy it does not manage alone")
	require.Equal(t, in.MasterPID(), info.MasterPID)

	gone := newSupervisor(t, Options{MasterSocket: filepath.Join(t.TempDir(), "none.sock"), Managed: false, StartTimeout: 100 * time.Millisecond})
	require.ErrorIs(t, gone.Start(ctx), ErrNotRunning)
	require.True(t, errors.Is(gone.Reload(ctx), ErrNotRunning))
}

func TestNotifySocketNotPassed(t *testing.T) {
	e := newEnv(t)
	t.Setenv("NOTIFY_SOCKET", filepath.Join(e.dir, "notify.sock"))
	s := newSupervisor(t, e.opts)
	require.NoError(t, s.Start(context.Background()))
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(s.MasterPID()) + "/environ")
	require.NoError(t, err)
	require.NotContains(t, string(environ), "NOTIFY_SOCKET=", "the proxier's systemd socket is not HAProxy's")
	require.Contains(t, string(environ), "PATH=")
}
