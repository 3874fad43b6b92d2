package apply

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/internal/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/supervisor"
)

// The tests below run the whole stack (applier, supervisor, runtime API)
// against a real HAProxy on loopback addresses: Services listen on
// 127.0.0.1xx, endpoints are small TCP servers on 127.0.0.x that answer
// with their own address.

// endpointServer is a pod: it answers each connection with its address.
type endpointServer struct {
	ln   net.Listener
	addr netip.AddrPort
}

func startEndpoint(t *testing.T, ip string) *endpointServer {
	ln, err := net.Listen("tcp", ip+":0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	e := &endpointServer{ln: ln, addr: netip.MustParseAddrPort(ln.Addr().String())}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte(e.addr.String()))
			}()
		}
	}()
	return e
}

// stack is a real HAProxy driven by an Applier.
type stack struct {
	t      *testing.T
	dir    string
	port   uint16
	sup    *supervisor.Supervisor
	a      *Applier
	master *runtimeapi.Master
	logger klog.Logger
}

func newStack(t *testing.T) *stack {
	return newStackWith(t, haproxytest.Binary(t), 0)
}

// newStackWith runs bin as HAProxy, with Options.FileLimit fileLimit.
func newStackWith(t *testing.T, bin string, fileLimit int) *stack {
	logger, _ := ktesting.NewTestContext(t)
	dir := t.TempDir()
	s := &stack{t: t, dir: dir, logger: logger, master: runtimeapi.NewMaster(filepath.Join(dir, "master.sock"))}
	// One port for every Service; each Service has its own address.
	l, err := net.Listen("tcp", "127.0.0.101:0")
	require.NoError(t, err)
	s.port = uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	s.connect(bin, fileLimit)
	t.Cleanup(func() { s.sup.Stop(context.Background(), 5*time.Second) })
	return s
}

// connect builds a Supervisor and an Applier, as a proxier process does
// when it starts.
func (s *stack) connect(bin string, fileLimit int) {
	var a *Applier
	s.sup = supervisor.New(supervisor.Options{
		Binary:       bin,
		ConfigFile:   filepath.Join(s.dir, "haproxy.cfg"),
		MasterSocket: filepath.Join(s.dir, "master.sock"),
		PIDFile:      filepath.Join(s.dir, "haproxy.pid"),
		Managed:      true,
		OnRestart: func(err error) {
			if err == nil {
				a.Resync(context.Background())
			}
		},
	}, s.logger)
	a, err := New(Options{
		ConfigFile: filepath.Join(s.dir, "haproxy.cfg"),
		Binary:     bin,
		Runtime:    runtimeapi.New(filepath.Join(s.dir, "haproxy.sock")),
		Process:    s.sup,
		Families:   []v1.IPFamily{v1.IPv4Protocol},
		FileLimit:  fileLimit,
		Logger:     s.logger,
	})
	require.NoError(s.t, err)
	s.a = a
}

// service is one Service: number n listens on 127.0.0.(100+n).
type service struct {
	n         int
	endpoints []*endpointServer
}

func (s *stack) model(services ...service) *haproxycfg.Config {
	c := &haproxycfg.Config{
		Global: haproxycfg.Global{
			StatsSocket:   filepath.Join(s.dir, "haproxy.sock"),
			MaxConn:       haproxycfg.MaxConnForFileLimit(20000, 5000),
			NBThread:      2,
			HardStopAfter: 30 * time.Second,
		},
		Defaults: haproxycfg.Defaults{TimeoutConnect: 2 * time.Second, TimeoutClient: 30 * time.Second, TimeoutServer: 30 * time.Second},
	}
	for _, svc := range services {
		name := fmt.Sprintf("default.svc%d:tcp", svc.n)
		c.Frontends = append(c.Frontends, &haproxycfg.Frontend{
			Name:           "fe:" + name,
			Binds:          []haproxycfg.Bind{{Name: "cip", Addr: netip.MustParseAddr(fmt.Sprintf("127.0.0.%d", 100+svc.n)), Port: s.port}},
			DefaultBackend: "be:" + name,
		})
		be := &haproxycfg.Backend{Name: "be:" + name}
		for _, e := range svc.endpoints {
			be.Servers = append(be.Servers, haproxycfg.Server{Name: haproxycfg.ServerName(e.addr.Addr(), e.addr.Port()), Addr: e.addr.Addr(), Port: e.addr.Port()})
		}
		c.Backends = append(c.Backends, be)
	}
	return c
}

func (s *stack) apply(services ...service) {
	s.t.Helper()
	require.NoError(s.t, s.a.Apply(context.Background(), v1.IPv4Protocol, s.model(services...)))
}

// reloads is the master's reload count.
func (s *stack) reloads() int {
	s.t.Helper()
	info, err := s.master.ShowProc(context.Background())
	require.NoError(s.t, err)
	return info.Reloads
}

func (s *stack) masterPID() int {
	s.t.Helper()
	info, err := s.master.ShowProc(context.Background())
	require.NoError(s.t, err)
	return info.MasterPID
}

// dial connects to Service n and returns the endpoint that answered.
func (s *stack) dial(n int) (string, error) {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.%d:%d", 100+n, s.port), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return string(b), err
	}
	if len(b) == 0 {
		return "", io.ErrUnexpectedEOF
	}
	return string(b), nil
}

// reached dials Service n enough times to see every endpoint of a
// round-robin backend and returns the set that answered.
func (s *stack) reached(n, times int) map[string]bool {
	s.t.Helper()
	seen := map[string]bool{}
	for i := 0; i < times; i++ {
		got, err := s.dial(n)
		require.NoError(s.t, err)
		seen[got] = true
	}
	return seen
}

func set(eps ...*endpointServer) map[string]bool {
	m := map[string]bool{}
	for _, e := range eps {
		m[e.addr.String()] = true
	}
	return m
}

func TestRealEndpointChurnWithoutReload(t *testing.T) {
	s := newStack(t)
	e1, e2, e3 := startEndpoint(t, "127.0.0.11"), startEndpoint(t, "127.0.0.12"), startEndpoint(t, "127.0.0.13")
	s.apply(service{1, []*endpointServer{e1}})
	require.Equal(t, 0, s.reloads())
	require.Equal(t, set(e1), s.reached(1, 3))

	changes := 0
	s.apply(service{1, []*endpointServer{e1, e2, e3}})
	changes++
	require.Equal(t, set(e1, e2, e3), s.reached(1, 6))
	s.apply(service{1, []*endpointServer{e3}})
	changes++
	require.Equal(t, set(e3), s.reached(1, 6))
	s.apply(service{1, nil})
	changes++
	_, err := s.dial(1)
	require.Error(t, err, "no endpoints: the connection fails")
	s.apply(service{1, []*endpointServer{e2}})
	changes++
	require.Equal(t, set(e2), s.reached(1, 3))

	require.Equal(t, 0, s.reloads(), "endpoint changes cost no reload")
	t.Logf("%d endpoint changes, %d reloads", changes, s.reloads())
	fmt.Printf("RESULT apply: %d endpoint changes applied through the runtime API, reloads=%d\n", changes, s.reloads())

	// A new Service is structural: exactly one reload, and both serve.
	e4 := startEndpoint(t, "127.0.0.14")
	s.apply(service{1, []*endpointServer{e2}}, service{2, []*endpointServer{e4}})
	require.Equal(t, 1, s.reloads())
	require.Equal(t, set(e2), s.reached(1, 3))
	require.Equal(t, set(e4), s.reached(2, 3))
	fmt.Printf("RESULT apply: new frontend -> reloads=%d\n", s.reloads())
}

func TestRealDrainKeepsEstablishedConnections(t *testing.T) {
	s := newStack(t)
	// An endpoint that holds its connection open until told.
	ln, err := net.Listen("tcp", "127.0.0.21:0")
	require.NoError(t, err)
	defer ln.Close()
	held := &endpointServer{ln: ln, addr: netip.MustParseAddrPort(ln.Addr().String())}
	release := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		<-release
		c.Write([]byte("done"))
		c.Close()
	}()
	other := startEndpoint(t, "127.0.0.22")
	s.apply(service{1, []*endpointServer{held}})
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.101:%d", s.port))
	require.NoError(t, err)
	defer c.Close()
	// Wait until HAProxy counts the session on the server.
	require.Eventually(t, func() bool {
		rows, err := runtimeapi.New(filepath.Join(s.dir, "haproxy.sock")).ShowStat(context.Background())
		require.NoError(t, err)
		for _, r := range rows {
			if r.Name == haproxycfg.ServerName(held.addr.Addr(), held.addr.Port()) {
				return r.CurrentSessions == 1
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond)

	// The endpoint goes away: it drains; new connections go elsewhere, the
	// established one continues.
	s.apply(service{1, []*endpointServer{other}})
	require.Equal(t, set(other), s.reached(1, 3))
	close(release)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	require.Equal(t, "done", string(b), "the established connection finished on the drained endpoint")
	c.Close()
	// Once its connection is gone, the next drain check deletes it.
	require.Eventually(t, func() bool {
		servers, err := runtimeapi.New(filepath.Join(s.dir, "haproxy.sock")).ShowServers(context.Background(), "be:default.svc1:tcp")
		require.NoError(t, err)
		return len(servers) == 1
	}, 10*time.Second, 50*time.Millisecond)
	require.Equal(t, 0, s.reloads())
}

func TestRealReloadsRefuseNoConnection(t *testing.T) {
	s := newStack(t)
	e1, e2 := startEndpoint(t, "127.0.0.31"), startEndpoint(t, "127.0.0.32")
	base := service{1, []*endpointServer{e1, e2}}
	s.apply(base)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.dial(1); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	const reloads = 20
	start := time.Now()
	for i := 0; i < reloads; i++ {
		// Each step adds or removes a Service: a structural change.
		services := []service{base}
		if i%2 == 0 {
			services = append(services, service{2 + i, []*endpointServer{e1}})
		}
		s.apply(services...)
	}
	took := time.Since(start)
	// Keep the clients going a moment after the last reload.
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d reloads in %v while clients connected: %d connections served, %d refused or reset (first: %v)", reloads, took, ok.Load(), failed.Load(), firstErr.Load())
	fmt.Printf("RESULT apply: %d reloads under continuous connections: served=%d failed=%d\n", reloads, ok.Load(), failed.Load())
	require.Equal(t, reloads, s.reloads())
	require.Zero(t, failed.Load(), "no connection refused or reset across reloads")
	require.NotZero(t, ok.Load())
}

func TestRealKillAndRestart(t *testing.T) {
	s := newStack(t)
	e1, e2 := startEndpoint(t, "127.0.0.41"), startEndpoint(t, "127.0.0.42")
	s.apply(service{1, []*endpointServer{e1}})
	// An endpoint added at runtime must survive an HAProxy restart.
	s.apply(service{1, []*endpointServer{e1, e2}})
	require.Equal(t, 0, s.reloads())

	for _, victim := range []string{"worker", "master"} {
		info, err := s.master.ShowProc(context.Background())
		require.NoError(t, err)
		pid := info.MasterPID
		if victim == "worker" {
			pid = info.CurrentWorker().PID
		}
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		start := time.Now()
		for {
			if _, err := s.dial(1); err == nil && s.sup.MasterPID() != info.MasterPID {
				break
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("not serving again 20s after SIGKILL of the %s", victim)
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(start)
		require.Equal(t, set(e1, e2), s.reached(1, 6), "both endpoints after the restart")
		require.NoError(t, s.a.Resync(context.Background()))
		require.Equal(t, 0, s.reloads(), "the restarted HAProxy runs the file's structure: no reload")
		t.Logf("SIGKILL of the %s: serving again after %.2f s", victim, took.Seconds())
		fmt.Printf("RESULT apply: SIGKILL of the HAProxy %s -> serving again after %.2f s\n", victim, took.Seconds())
	}
}

func TestRealProxierRestartAdopts(t *testing.T) {
	s := newStack(t)
	e1, e2 := startEndpoint(t, "127.0.0.51"), startEndpoint(t, "127.0.0.52")
	s.apply(service{1, []*endpointServer{e1}})
	pid := s.masterPID()

	// The proxier process exits (HAProxy keeps running) and a new one
	// starts while endpoints change.
	s.sup.Detach()
	s.connect(haproxytest.Binary(t), 0)
	s.apply(service{1, []*endpointServer{e2}})
	require.Equal(t, pid, s.masterPID(), "the same HAProxy is adopted")
	require.Equal(t, pid, s.sup.MasterPID())
	require.Equal(t, 0, s.reloads(), "same structure: no reload")
	require.Equal(t, set(e2), s.reached(1, 3))
	t.Logf("proxier restart: adopted master pid %d, reloads %d", pid, s.reloads())
	fmt.Printf("RESULT apply: proxier restart adopted master pid %d, reloads=%d\n", pid, s.reloads())
}

func TestRealRejectedConfigKeepsServing(t *testing.T) {
	s := newStack(t)
	e1 := startEndpoint(t, "127.0.0.61")
	s.apply(service{1, []*endpointServer{e1}})

	// Another process holds the address of a new Service: haproxy -c
	// accepts the configuration, the reload cannot bind.
	taken, err := net.Listen("tcp", "127.0.0.102:"+strconv.Itoa(int(s.port)))
	require.NoError(t, err)
	defer taken.Close()
	err = s.a.Apply(context.Background(), v1.IPv4Protocol, s.model(service{1, []*endpointServer{e1}}, service{2, []*endpointServer{e1}}))
	require.ErrorIs(t, err, ErrRejected)
	t.Logf("port taken: %v", err)
	require.ErrorIs(t, err, supervisor.ErrReloadFailed)
	require.Equal(t, set(e1), s.reached(1, 3), "the last good configuration keeps serving")
}

func TestRealMissingBinary(t *testing.T) {
	haproxytest.Binary(t)
	logger, _ := ktesting.NewTestContext(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-haproxy")
	sup := supervisor.New(supervisor.Options{Binary: missing, ConfigFile: filepath.Join(dir, "haproxy.cfg"),
		MasterSocket: filepath.Join(dir, "master.sock"), PIDFile: filepath.Join(dir, "haproxy.pid"), Managed: true}, logger)
	a, err := New(Options{ConfigFile: filepath.Join(dir, "haproxy.cfg"), Binary: missing,
		Runtime: runtimeapi.New(filepath.Join(dir, "haproxy.sock")), Process: sup,
		Families: []v1.IPFamily{v1.IPv4Protocol}, Logger: logger})
	require.NoError(t, err)
	s := &stack{t: t, dir: dir, port: 8080}
	for i := 0; i < 2; i++ {
		err = a.Apply(context.Background(), v1.IPv4Protocol, s.model(service{1, nil}))
		require.ErrorIs(t, err, ErrBinaryMissing)
		require.ErrorIs(t, err, ErrRejected)
	}
	t.Logf("missing binary reported as: %v", err)
	require.Zero(t, sup.MasterPID())
}

// HAProxy in its own container: it shares the state directory, the
// proxier only writes the file and uses the sockets.
func TestRealUnmanaged(t *testing.T) {
	bin := haproxytest.Binary(t)
	logger, _ := ktesting.NewTestContext(t)
	s := &stack{t: t, dir: t.TempDir(), logger: logger}
	s.master = runtimeapi.NewMaster(filepath.Join(s.dir, "master.sock"))
	l, err := net.Listen("tcp", "127.0.0.101:0")
	require.NoError(t, err)
	s.port = uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	s.sup = supervisor.New(supervisor.Options{ConfigFile: filepath.Join(s.dir, "haproxy.cfg"),
		MasterSocket: filepath.Join(s.dir, "master.sock"), Managed: false, StartTimeout: 200 * time.Millisecond}, logger)
	a, err := New(Options{ConfigFile: filepath.Join(s.dir, "haproxy.cfg"), Binary: bin,
		Runtime: runtimeapi.New(filepath.Join(s.dir, "haproxy.sock")), Process: s.sup,
		Families: []v1.IPFamily{v1.IPv4Protocol}, Logger: logger})
	require.NoError(t, err)
	s.a = a
	e1, e2 := startEndpoint(t, "127.0.0.71"), startEndpoint(t, "127.0.0.72")

	// The HAProxy container is not up yet: a clear error, and the file is
	// there for it.
	err = a.Apply(context.Background(), v1.IPv4Protocol, s.model(service{1, []*endpointServer{e1}}))
	require.ErrorIs(t, err, supervisor.ErrNotRunning)
	require.FileExists(t, filepath.Join(s.dir, "haproxy.cfg"))

	// It starts, on the file the proxier wrote.
	cmd := exec.Command(bin, "-Ws", "-S", filepath.Join(s.dir, "master.sock"), "-f", filepath.Join(s.dir, "haproxy.cfg"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	require.Eventually(t, func() bool {
		info, err := s.master.ShowProc(context.Background())
		return err == nil && info.CurrentWorker() != nil
	}, 10*time.Second, 20*time.Millisecond)

	s.apply(service{1, []*endpointServer{e1}})
	require.Equal(t, set(e1), s.reached(1, 3))
	reloads := s.reloads()
	s.apply(service{1, []*endpointServer{e1, e2}})
	require.Equal(t, set(e1, e2), s.reached(1, 6))
	require.Equal(t, reloads, s.reloads(), "endpoint changes without reload")
	s.apply(service{1, []*endpointServer{e2}}, service{2, []*endpointServer{e1}})
	require.Equal(t, reloads+1, s.reloads())
	require.Equal(t, set(e1), s.reached(2, 3))
	require.Equal(t, cmd.Process.Pid, s.masterPID(), "the proxier never starts an HAProxy of its own")
}

func TestRealValidation(t *testing.T) {
	bin := haproxytest.Binary(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.cfg")
	require.NoError(t, os.WriteFile(bad, []byte("global\n  not_a_keyword\n"), 0o644))
	err := validateWithBinary(context.Background(), bin, bad)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrBinaryMissing)
	require.Contains(t, err.Error(), "not_a_keyword", "the error names what HAProxy refused")

	// Valid, but HAProxy would not start: nothing to listen on. The
	// rendered configuration always has the stats socket.
	idle := filepath.Join(dir, "idle.cfg")
	require.NoError(t, os.WriteFile(idle, []byte("global\n  nbthread 1\n"), 0o644))
	require.ErrorContains(t, validateWithBinary(context.Background(), bin, idle), "no listener")
	good := filepath.Join(dir, "good.cfg")
	require.NoError(t, os.WriteFile(good, []byte("global\n  stats socket "+filepath.Join(dir, "s.sock")+" level admin\n"), 0o644))
	require.NoError(t, validateWithBinary(context.Background(), bin, good))
}

// HAProxy refuses to start or reload when its listeners and maxconn need
// more file descriptors than its limit ("Cannot raise FD limit"), which
// 10,000 Services reach with a fixed maxconn. Without a maxconn in the
// model the applier fits it to what the listeners leave, and a structure
// that leaves too little is rejected before HAProxy sees it.
func TestRealMaxConnFitsTheFileLimit(t *testing.T) {
	const limit = 2000
	// HAProxy runs under a hard limit of 2000 descriptors.
	wrapper := filepath.Join(t.TempDir(), "haproxy-limited")
	require.NoError(t, os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\nulimit -n %d || exit 1\nexec %s \"$@\"\n", limit, haproxytest.Binary(t))), 0o755))
	s := newStackWith(t, wrapper, limit)
	e1 := startEndpoint(t, "127.0.0.71")

	// withBinds is Service 1 plus a frontend with n more listeners.
	withBinds := func(n int) *haproxycfg.Config {
		c := s.model(service{1, []*endpointServer{e1}})
		c.Global.MaxConn = 0
		fe := &haproxycfg.Frontend{Name: "fe:default.wide:tcp", DefaultBackend: c.Backends[0].Name}
		for i := 0; i < n; i++ {
			fe.Binds = append(fe.Binds, haproxycfg.Bind{Name: fmt.Sprintf("b%d", i), Addr: netip.MustParseAddr("127.0.0.72"), Port: uint16(40000 + i)})
		}
		c.Frontends = append(c.Frontends, fe)
		return c
	}
	maxConnInFile := func() string {
		b, err := os.ReadFile(filepath.Join(s.dir, "haproxy.cfg"))
		require.NoError(t, err)
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "maxconn" {
				return f[1]
			}
		}
		return ""
	}

	ctx := context.Background()
	require.NoError(t, s.a.Apply(ctx, v1.IPv4Protocol, withBinds(300)))
	require.Equal(t, strconv.Itoa(haproxycfg.MaxConnForFileLimit(limit, 301)), maxConnInFile())
	require.Equal(t, set(e1), s.reached(1, 2))

	// 1,000 more listeners: maxconn 749 of the first configuration
	// would need 2,698 descriptors; fitted again, the reload succeeds.
	require.NoError(t, s.a.Apply(ctx, v1.IPv4Protocol, withBinds(1000)))
	require.Equal(t, strconv.Itoa(haproxycfg.MaxConnForFileLimit(limit, 1001)), maxConnInFile())
	require.Equal(t, 1, s.reloads())
	c, err := net.DialTimeout("tcp", "127.0.0.72:40999", 2*time.Second)
	require.NoError(t, err, "the last listener of the reloaded configuration accepts")
	c.Close()

	// 1,600 listeners leave room for fewer than MinAutoMaxConn
	// connections: rejected, the last good configuration keeps serving.
	err = s.a.Apply(ctx, v1.IPv4Protocol, withBinds(1600))
	require.ErrorIs(t, err, ErrRejected)
	require.ErrorContains(t, err, "file limit 2000")
	t.Logf("rejected: %v", err)
	require.Equal(t, 1, s.reloads())
	require.Equal(t, strconv.Itoa(haproxycfg.MaxConnForFileLimit(limit, 1001)), maxConnInFile())
	require.Equal(t, set(e1), s.reached(1, 2))
}
