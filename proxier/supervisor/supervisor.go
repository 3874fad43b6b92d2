// Package supervisor runs HAProxy in master-worker mode and reloads it
// through its master CLI.
//
// HAProxy runs with -Ws (master-worker, master in the foreground) and -S
// (master CLI socket). The master keeps the listening sockets and hands
// them to each new worker on reload, so a reload refuses no connection;
// the old worker finishes its connections and exits.
//
// A Supervisor either manages the process (starts it, restarts it with a
// backoff when it dies, adopts one left running by a previous proxier
// process, stops it on cleanup), or, when HAProxy runs elsewhere (its own
// container sharing the socket directory), only talks to its master
// socket. Either way a reload is asked with the master CLI's "reload" and
// confirmed from "show proc": HAProxy 2.6 answers nothing to "reload", and
// a failed reload shows only as a failed reload count with the old worker
// still current (it keeps serving).
package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// Errors callers can test for with errors.Is.
var (
	// ErrBinaryMissing: the haproxy binary does not exist or is not executable.
	ErrBinaryMissing = errors.New("haproxy binary not found")
	// ErrNotRunning: no HAProxy answers on the master socket.
	ErrNotRunning = errors.New("HAProxy is not running")
	// ErrReloadFailed: the master refused the new configuration; the old
	// worker keeps serving the previous one.
	ErrReloadFailed = errors.New("HAProxy reload failed, the previous configuration keeps serving")
	// ErrStartFailed: a new HAProxy exited or did not come up.
	ErrStartFailed = errors.New("HAProxy failed to start")
)

// Options configure a Supervisor.
type Options struct {
	// Binary is the haproxy executable.
	Binary string
	// ConfigFile is the haproxy.cfg HAProxy reads.
	ConfigFile string
	// MasterSocket is the master CLI socket path.
	MasterSocket string
	// PIDFile is where the master writes its PID (-p); it lets a new
	// proxier process find the HAProxy of the previous one.
	PIDFile string
	// Managed: start, restart and stop HAProxy. When false, HAProxy is run
	// by someone else and only the master socket is used.
	Managed bool
	// StartTimeout bounds a start: until the master lists a worker.
	StartTimeout time.Duration
	// ReloadTimeout bounds a reload: until "show proc" shows its outcome.
	ReloadTimeout time.Duration
	// MinBackoff and MaxBackoff bound the delay before restarting an HAProxy
	// that died; the delay doubles at each failure in a row.
	MinBackoff, MaxBackoff time.Duration
	// StableAfter is how long HAProxy must have run for a later death to
	// count as a first failure again.
	StableAfter time.Duration
	// OnRestart, when set, is called after HAProxy died and was started
	// again (err nil) or could not be (err set).
	OnRestart func(err error)
}

func (o *Options) setDefaults() {
	if o.StartTimeout == 0 {
		o.StartTimeout = 30 * time.Second
		if !o.Managed {
			// Only waiting for somebody else's HAProxy: do not hold a
			// sync for long, the next one looks again.
			o.StartTimeout = 5 * time.Second
		}
	}
	if o.ReloadTimeout == 0 {
		o.ReloadTimeout = 60 * time.Second
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.StableAfter == 0 {
		o.StableAfter = 30 * time.Second
	}
}

// Supervisor owns one HAProxy master process.
type Supervisor struct {
	opts   Options
	master runtimeapi.MasterInterface
	logger klog.Logger

	// mu serializes starts, reloads, stops and the fields below.
	mu sync.Mutex
	// pid of the master we run or adopted; 0 when none.
	pid int
	// exited is closed when the master process pid exits.
	exited chan struct{}
	// started is when the current master was started or adopted.
	started time.Time
	// failures counts deaths in a row, for the backoff.
	failures int
	// restarts counts restarts after a death.
	restarts int
	// generation increases each time another master process is started
	// or adopted: its runtime state is then the configuration file's.
	generation uint64
	// done stops the monitor (Stop, Detach).
	done     chan struct{}
	stopOnce sync.Once
	// lastStderr keeps the last lines HAProxy wrote, for error messages.
	lastStderr *lineRing
}

// New returns a Supervisor; nothing runs until Adopt or Start.
func New(opts Options, logger klog.Logger) *Supervisor {
	opts.setDefaults()
	return &Supervisor{
		opts:       opts,
		master:     runtimeapi.NewMaster(opts.MasterSocket),
		logger:     logger,
		done:       make(chan struct{}),
		lastStderr: newLineRing(20),
	}
}

// Master returns the master CLI client.
func (s *Supervisor) Master() runtimeapi.MasterInterface { return s.master }

// MasterPID returns the PID of the current master, 0 when none.
func (s *Supervisor) MasterPID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

// Generation changes whenever another master process is started or
// adopted (after a crash, for instance): servers added at runtime to the
// previous one are then gone.
func (s *Supervisor) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.generation
}

// Restarts returns how many times HAProxy was started again after it died.
func (s *Supervisor) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// CheckBinary reports ErrBinaryMissing when the haproxy binary cannot run.
func (s *Supervisor) CheckBinary() error {
	if !s.opts.Managed {
		return nil
	}
	st, err := os.Stat(s.opts.Binary)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBinaryMissing, s.opts.Binary, err)
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w: %s is not an executable file", ErrBinaryMissing, s.opts.Binary)
	}
	return nil
}

// Adopt looks for a running HAProxy: in managed mode one left by a
// previous proxier process (found by its PID file and confirmed on its
// master socket); otherwise the one run by somebody else. It reports
// whether one answers. A stale socket or PID file is not an error: there
// is simply nothing to adopt.
func (s *Supervisor) Adopt(ctx context.Context) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pid != 0 && processAlive(s.pid) {
		return true, nil
	}
	info, err := s.master.ShowProc(ctx)
	if err != nil {
		s.logger.V(2).Info("No HAProxy answers on the master socket", "socket", s.opts.MasterSocket, "err", err)
		return false, nil
	}
	if !s.opts.Managed {
		s.setMaster(info.MasterPID, nil)
		return true, nil
	}
	pid, perr := readPIDFile(s.opts.PIDFile)
	if perr != nil || pid != info.MasterPID {
		// An HAProxy answers on our socket but is not the one our PID file
		// names: adopt what answers; the socket is ours.
		s.logger.Info("Adopting the HAProxy that answers on the master socket", "pid", info.MasterPID, "pidFile", s.opts.PIDFile, "pidFromFile", pid)
	}
	if !processAlive(info.MasterPID) {
		return false, nil
	}
	s.logger.Info("Adopted running HAProxy", "masterPID", info.MasterPID, "workers", len(info.Workers))
	s.setMaster(info.MasterPID, nil)
	return true, nil
}

// setMaster records a new master process and starts watching it; exited
// is the channel closed by the process's waiter (nil: watch by pidfd).
func (s *Supervisor) setMaster(pid int, exited chan struct{}) {
	s.pid = pid
	s.started = time.Now()
	s.generation++
	if !s.opts.Managed {
		return
	}
	if exited == nil {
		exited = watchPID(pid)
	}
	s.exited = exited
	go s.monitor(pid, exited)
}

// Start runs a new HAProxy on the configuration file and waits until its
// master lists a worker. It is an error to Start while one runs (Adopt
// first). In unmanaged mode Start only waits for the master socket.
func (s *Supervisor) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked(ctx)
}

func (s *Supervisor) startLocked(ctx context.Context) error {
	if !s.opts.Managed {
		ctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout)
		defer cancel()
		info, err := s.waitWorker(ctx, nil)
		if err != nil {
			return fmt.Errorf("%w: nothing answers on master socket %s (HAProxy is not managed by the proxier): %w", ErrNotRunning, s.opts.MasterSocket, err)
		}
		s.setMaster(info.MasterPID, nil)
		return nil
	}
	if s.pid != 0 && processAlive(s.pid) {
		return fmt.Errorf("HAProxy already runs as pid %d", s.pid)
	}
	if err := s.CheckBinary(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.opts.MasterSocket), 0o750); err != nil {
		return fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	// A socket file left by a dead master is harmless to HAProxy (it binds
	// a temporary name and renames it), but remove it so nothing mistakes
	// it for a live one.
	removeStaleSocket(s.opts.MasterSocket)

	cmd := exec.Command(s.opts.Binary, "-Ws", "-S", s.opts.MasterSocket+",mode,600", "-f", s.opts.ConfigFile, "-p", s.opts.PIDFile)
	// Own session: a signal to the proxier's process group (Ctrl-C, a
	// container runtime stopping the proxier) must not stop HAProxy, and
	// HAProxy must outlive a proxier restart.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// With -Ws HAProxy reports readiness to systemd when NOTIFY_SOCKET is
	// set: that socket belongs to the proxier's own unit, not to HAProxy.
	cmd.Env = withoutEnv(os.Environ(), "NOTIFY_SOCKET")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	cmd.Stdout = nil
	s.lastStderr.reset()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrStartFailed, s.opts.Binary, err)
	}
	pid := cmd.Process.Pid
	logDone := make(chan struct{})
	go s.logOutput(pid, stderr, logDone)
	exited := make(chan struct{})
	go func() {
		<-logDone // Wait closes the pipe; read it to the end first.
		err := cmd.Wait()
		s.logger.Info("HAProxy master exited", "pid", pid, "err", err)
		close(exited)
	}()
	s.logger.Info("Started HAProxy", "masterPID", pid, "config", s.opts.ConfigFile)

	wctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout)
	defer cancel()
	if _, err := s.waitWorker(wctx, exited); err != nil {
		select {
		case <-exited:
		default:
			// Do not leave a half-started HAProxy behind.
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
		return fmt.Errorf("%w: %w; HAProxy said: %s", ErrStartFailed, err, s.lastStderr.String())
	}
	s.setMaster(pid, exited)
	return nil
}

// waitWorker polls "show proc" until the master lists a current worker.
func (s *Supervisor) waitWorker(ctx context.Context, exited <-chan struct{}) (*runtimeapi.ProcInfo, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		info, err := s.master.ShowProc(ctx)
		if err == nil && info.CurrentWorker() != nil {
			return info, nil
		}
		if err != nil {
			lastErr = err
		} else {
			lastErr = errors.New("no current worker yet")
		}
		select {
		case <-exited:
			return nil, errors.New("the master process exited")
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (last: %w)", ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// Reload asks the master to reload the configuration file and waits for
// the outcome. ErrReloadFailed means HAProxy refused the new
// configuration and the old worker keeps serving.
func (s *Supervisor) Reload(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.opts.ReloadTimeout)
	defer cancel()
	before, err := s.master.ShowProc(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotRunning, err)
	}
	if s.opts.Managed {
		s.lastStderr.reset()
	}
	if err := s.master.Reload(ctx); err != nil {
		return fmt.Errorf("HAProxy reload: %w", err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		// The master re-executes itself: its socket refuses connections
		// for a moment, which is not a failure.
		after, err := s.master.ShowProc(ctx)
		if err == nil {
			if done, ok := runtimeapi.ReloadOutcome(before, after); done {
				if !ok {
					msg := ""
					if s.opts.Managed {
						msg = "; HAProxy said: " + s.lastStderr.String()
					}
					return fmt.Errorf("%w (%d failed reload(s) in a row)%s", ErrReloadFailed, after.FailedReloads, msg)
				}
				s.logger.V(2).Info("HAProxy reloaded", "masterPID", after.MasterPID, "worker", after.CurrentWorker().PID, "reloads", after.Reloads)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("HAProxy reload not confirmed: %w (last error: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// Stop stops watching and, in managed mode, stops HAProxy: SIGTERM to
// the master (which stops the workers), SIGKILL if it is still there
// after timeout. The PID file and master socket are removed.
func (s *Supervisor) Stop(ctx context.Context, timeout time.Duration) error {
	s.stopOnce.Do(func() { close(s.done) })
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.opts.Managed {
		return nil
	}
	pid := s.pid
	exited := s.exited
	if pid == 0 {
		// Not started by this process: stop the one the PID file names,
		// when it really is an HAProxy answering on our socket.
		if info, err := s.master.ShowProc(ctx); err == nil && processAlive(info.MasterPID) {
			pid = info.MasterPID
			exited = watchPID(pid)
		}
	}
	if pid != 0 && processAlive(pid) {
		s.logger.Info("Stopping HAProxy", "masterPID", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(timeout):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
	}
	s.pid = 0
	os.Remove(s.opts.PIDFile)
	removeStaleSocket(s.opts.MasterSocket)
	return nil
}

// Detach stops watching HAProxy without stopping it, as happens when the
// proxier exits: the next proxier adopts it.
func (s *Supervisor) Detach() {
	s.stopOnce.Do(func() { close(s.done) })
}

// monitor waits for the master pid to exit and starts a new one after a
// backoff, unless the Supervisor was stopped or detached meanwhile.
func (s *Supervisor) monitor(pid int, exited <-chan struct{}) {
	select {
	case <-s.done:
		return
	case <-exited:
	}
	for {
		s.mu.Lock()
		if s.pid != pid {
			// Stopped, or replaced already.
			s.mu.Unlock()
			return
		}
		if time.Since(s.started) >= s.opts.StableAfter {
			s.failures = 0
		}
		delay := s.opts.MinBackoff << min(s.failures, 20)
		if delay > s.opts.MaxBackoff || delay <= 0 {
			delay = s.opts.MaxBackoff
		}
		s.failures++
		s.mu.Unlock()
		s.logger.Info("HAProxy died; starting it again", "masterPID", pid, "after", delay, "failuresInARow", s.failures)
		select {
		case <-s.done:
			return
		case <-time.After(delay):
		}
		s.mu.Lock()
		if s.pid != pid {
			s.mu.Unlock()
			return
		}
		select {
		case <-s.done:
			s.mu.Unlock()
			return
		default:
		}
		s.pid = 0
		err := s.startLocked(context.Background())
		if err == nil {
			s.restarts++
		} else {
			// Keep retrying from the same dead pid.
			s.pid = pid
			s.started = time.Now()
		}
		hook := s.opts.OnRestart
		s.mu.Unlock()
		if hook != nil {
			hook(err)
		}
		if err == nil {
			return
		}
		s.logger.Error(err, "Starting HAProxy again failed")
	}
}

// logOutput logs HAProxy's stderr line by line and keeps the last lines.
func (s *Supervisor) logOutput(pid int, r io.Reader, done chan<- struct{}) {
	defer close(done)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		s.lastStderr.add(line)
		s.logger.Info("HAProxy", "pid", pid, "output", line)
	}
}

// watchPID returns a channel closed when pid exits, for a process that is
// not our child (adopted). It uses a pidfd, which signals exit at once;
// where pidfds are unavailable it polls.
func watchPID(pid int) chan struct{} {
	ch := make(chan struct{})
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		go func() {
			for processAlive(pid) {
				time.Sleep(200 * time.Millisecond)
			}
			close(ch)
		}()
		return ch
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n > 0 {
				break
			}
		}
		close(ch)
	}()
	return ch
}

// processAlive reports whether pid runs and is an HAProxy (a zombie, or
// a PID reused by another program, is not).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// Fields after the command name in parentheses: "state ppid ...".
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	if st := stat[i+2]; st == 'Z' || st == 'X' {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	return strings.Contains(filepath.Base(argv0), "haproxy")
}

func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// removeStaleSocket removes a unix socket file nothing listens on.
func removeStaleSocket(path string) {
	if _, err := os.Stat(path); err != nil {
		return
	}
	c, err := (&net.Dialer{Timeout: time.Second}).Dial("unix", path)
	if err == nil {
		c.Close()
		return
	}
	os.Remove(path)
}

// lineRing keeps the last n lines.
type lineRing struct {
	mu    sync.Mutex
	n     int
	lines []string
}

func newLineRing(n int) *lineRing { return &lineRing{n: n} }

func (r *lineRing) add(l string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, l)
	if len(r.lines) > r.n {
		r.lines = r.lines[len(r.lines)-r.n:]
	}
}

func (r *lineRing) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = nil
}

func (r *lineRing) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var alerts []string
	for _, l := range r.lines {
		if strings.Contains(l, "[ALERT]") {
			alerts = append(alerts, strings.TrimSpace(l))
		}
	}
	if len(alerts) == 0 {
		alerts = r.lines
	}
	return strings.Join(alerts, " | ")
}

// withoutEnv returns env without the variable name.
func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
