package apply

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	clocktesting "k8s.io/utils/clock/testing"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// fakeHAProxy is a Process that loads the configuration file into a
// runtimeapi.Fake at each start and reload, as HAProxy would: backends and
// their server lines, nothing added at runtime survives.
type fakeHAProxy struct {
	t        *testing.T
	file     string
	api      *runtimeapi.Fake
	running  bool
	starts   int
	reloads  int
	failNext error
}

func (p *fakeHAProxy) Adopt(ctx context.Context) (bool, error) { return p.running, nil }

func (p *fakeHAProxy) Start(ctx context.Context) error {
	if p.running {
		return errors.New("already running")
	}
	if err := p.load(); err != nil {
		return err
	}
	p.running = true
	p.starts++
	return nil
}

func (p *fakeHAProxy) Reload(ctx context.Context) error {
	if !p.running {
		return errors.New("not running")
	}
	if err := p.load(); err != nil {
		return err
	}
	p.reloads++
	return nil
}

func (p *fakeHAProxy) load() error {
	if err := p.failNext; err != nil {
		p.failNext = nil
		return err
	}
	text, err := os.ReadFile(p.file)
	if err != nil {
		return err
	}
	p.api.Reset()
	type backend struct {
		dynamic bool
		servers []runtimeapi.FakeServer
	}
	var names []string
	backends := map[string]*backend{}
	var cur *backend
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "backend":
			cur = &backend{}
			backends[f[1]] = cur
			names = append(names, f[1])
		case cur != nil && len(f) == 2 && f[0] == "balance":
			cur.dynamic = f[1] == "roundrobin" || f[1] == "leastconn" || f[1] == "random" || f[1] == "first"
		case cur != nil && len(f) == 5 && f[0] == "server" && f[3] == "id":
			ap, err := netip.ParseAddrPort(f[2])
			require.NoError(p.t, err)
			id, err := strconv.Atoi(f[4])
			require.NoError(p.t, err)
			cur.servers = append(cur.servers, runtimeapi.FakeServer{ServerStatus: runtimeapi.ServerStatus{
				Name: f[1], ID: id, Addr: ap.Addr().String(), Port: int(ap.Port())}})
		case len(f) > 0 && f[0] != "server" && f[0] != "#" && !strings.HasPrefix(f[0], "#") && len(sc.Text()) > 0 && sc.Text()[0] != ' ':
			cur = nil
		}
	}
	for _, n := range names {
		p.api.LoadBackend(n, backends[n].dynamic, backends[n].servers...)
	}
	return nil
}

// countingRuntime counts the reads of the whole server table and records
// which backends each "show stat" asked for.
type countingRuntime struct {
	runtimeapi.Interface
	showServers int
	showStat    [][]string
}

func (c *countingRuntime) ShowServers(ctx context.Context, backend string) ([]runtimeapi.ServerStatus, error) {
	if backend == "" {
		c.showServers++
	}
	return c.Interface.ShowServers(ctx, backend)
}

func (c *countingRuntime) ShowStat(ctx context.Context, backends ...string) ([]runtimeapi.StatRow, error) {
	c.showStat = append(c.showStat, backends)
	return c.Interface.ShowStat(ctx, backends...)
}

// harness is an Applier on fakes.
type harness struct {
	t         *testing.T
	dir       string
	api       *runtimeapi.Fake
	reads     *countingRuntime
	proc      *fakeHAProxy
	clock     *clocktesting.FakeClock
	recorder  *events.FakeRecorder
	validated int
	reject    string
	a         *Applier
}

func newHarness(t *testing.T, families ...v1.IPFamily) *harness {
	if len(families) == 0 {
		families = []v1.IPFamily{v1.IPv4Protocol}
	}
	logger, _ := ktesting.NewTestContext(t)
	dir := t.TempDir()
	h := &harness{t: t, dir: dir, api: runtimeapi.NewFake(), clock: clocktesting.NewFakeClock(time.Unix(1000, 0)), recorder: events.NewFakeRecorder(100)}
	h.reads = &countingRuntime{Interface: h.api}
	h.proc = &fakeHAProxy{t: t, file: filepath.Join(dir, "haproxy.cfg"), api: h.api}
	h.a = h.newApplier(families, logger)
	return h
}

func (h *harness) newApplier(families []v1.IPFamily, logger klog.Logger) *Applier {
	a, err := New(Options{
		ConfigFile: h.proc.file,
		Runtime:    h.reads,
		Process:    h.proc,
		Families:   families,
		Validate: func(ctx context.Context, file string) error {
			h.validated++
			text, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			if h.reject != "" && bytes.Contains(text, []byte(h.reject)) {
				return fmt.Errorf("[ALERT] config: %s refused", h.reject)
			}
			return nil
		},
		DrainTimeout:       30 * time.Second,
		DrainCheckInterval: time.Second,
		RetryBackoff:       10 * time.Second,
		Recorder:           h.recorder,
		NodeName:           "node-1",
		Clock:              h.clock,
		Logger:             logger,
	})
	require.NoError(h.t, err)
	return a
}

func (h *harness) apply(c *haproxycfg.Config) error {
	return h.a.Apply(context.Background(), v1.IPv4Protocol, c)
}

func (h *harness) file() string {
	b, err := os.ReadFile(h.proc.file)
	require.NoError(h.t, err)
	return string(b)
}

// svc is a Service of the model: a frontend on 10.96.0.<n>:80 and its
// backend with the given endpoints ("10.1.0.5:8080").
type svc struct {
	n         int
	endpoints []string
}

func model(services ...svc) *haproxycfg.Config {
	c := &haproxycfg.Config{
		Global:   haproxycfg.Global{StatsSocket: "/run/kh/haproxy.sock", MaxConn: 1000},
		Defaults: haproxycfg.Defaults{TimeoutConnect: 5 * time.Second},
	}
	for _, s := range services {
		name := fmt.Sprintf("default.svc%d:http", s.n)
		c.Frontends = append(c.Frontends, &haproxycfg.Frontend{
			Name:           "fe:" + name,
			Binds:          []haproxycfg.Bind{{Name: "cip", Addr: netip.MustParseAddr(fmt.Sprintf("10.96.0.%d", s.n)), Port: 80}},
			DefaultBackend: "be:" + name,
		})
		be := &haproxycfg.Backend{Name: "be:" + name}
		for _, e := range s.endpoints {
			ap := netip.MustParseAddrPort(e)
			be.Servers = append(be.Servers, haproxycfg.Server{Name: haproxycfg.ServerName(ap.Addr(), ap.Port()), Addr: ap.Addr(), Port: ap.Port()})
		}
		c.Backends = append(c.Backends, be)
	}
	return c
}

const be1 = "be:default.svc1:http"

func TestEndpointChurnWithoutReload(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	require.Equal(t, 1, h.proc.starts)
	require.Equal(t, []string{be1 + "/10.1.0.1:8080 10.1.0.1:8080 id=1 weight=1 ready"}, h.api.Dump())

	// Two endpoints appear: runtime API, no reload; each with an explicit
	// id, ready.
	before := counterValue(t, runtimeUpdatesTotal.WithLabelValues("success"))
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"}})))
	require.Equal(t, 0, h.proc.reloads)
	require.Equal(t, []string{
		be1 + "/10.1.0.1:8080 10.1.0.1:8080 id=1 weight=1 ready",
		be1 + "/10.1.0.2:8080 10.1.0.2:8080 id=2 weight=1 ready",
		be1 + "/10.1.0.3:8080 10.1.0.3:8080 id=3 weight=1 ready",
	}, h.api.Dump())
	require.Equal(t, before+1, counterValue(t, runtimeUpdatesTotal.WithLabelValues("success")))
	require.Len(t, h.api.Batches[len(h.api.Batches)-1], 4, "one batch: add + ready per server")
	// The file follows, so a restarted HAProxy starts with these servers.
	require.Contains(t, h.file(), "server 10.1.0.3:8080 10.1.0.3:8080 id 3")

	// 10.1.0.2 goes away with no connection: deleted at once.
	// 10.1.0.3 goes away with a connection: drained.
	require.NoError(t, h.api.SetSessions(be1, "10.1.0.3:8080", 2))
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	require.Equal(t, []string{
		be1 + "/10.1.0.1:8080 10.1.0.1:8080 id=1 weight=1 ready",
		be1 + "/10.1.0.3:8080 10.1.0.3:8080 id=3 weight=1 drain",
	}, h.api.Dump())

	// A new endpoint does not reuse the id of the draining one.
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.4:8080"}})))
	require.Equal(t, []string{
		be1 + "/10.1.0.1:8080 10.1.0.1:8080 id=1 weight=1 ready",
		be1 + "/10.1.0.4:8080 10.1.0.4:8080 id=2 weight=1 ready",
		be1 + "/10.1.0.3:8080 10.1.0.3:8080 id=3 weight=1 drain",
	}, h.api.Dump())

	// Its connections end: the next drain check deletes it.
	require.NoError(t, h.api.SetSessions(be1, "10.1.0.3:8080", 0))
	h.clock.Step(time.Second)
	require.Eventually(t, func() bool { return h.api.Server(be1, "10.1.0.3:8080") == nil }, 5*time.Second, time.Millisecond)
	require.Equal(t, 0, h.proc.reloads)
}

func TestDrainTimeoutShutsSessions(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}})))
	require.NoError(t, h.api.SetSessions(be1, "10.1.0.2:8080", 1))
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	require.Equal(t, runtimeapi.StateDrain, h.api.Server(be1, "10.1.0.2:8080").State())

	// Still connected before the deadline: still draining.
	h.clock.Step(29 * time.Second)
	require.NoError(t, h.a.Resync(context.Background()))
	require.NotNil(t, h.api.Server(be1, "10.1.0.2:8080"))

	// At the deadline: maintenance, sessions shut down, deleted.
	h.clock.Step(time.Second)
	require.NoError(t, h.a.Resync(context.Background()))
	require.Nil(t, h.api.Server(be1, "10.1.0.2:8080"))
	last := h.api.Batches[len(h.api.Batches)-1]
	require.Equal(t, []string{
		"set server " + be1 + "/10.1.0.2:8080 state maint",
		"shutdown sessions server " + be1 + "/10.1.0.2:8080",
		"del server " + be1 + "/10.1.0.2:8080",
	}, last)

	// An endpoint that comes back while draining is made ready again.
	require.NoError(t, h.api.SetSessions(be1, "10.1.0.1:8080", 1))
	require.NoError(t, h.apply(model(svc{1, nil})))
	require.Equal(t, runtimeapi.StateDrain, h.api.Server(be1, "10.1.0.1:8080").State())
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	require.Equal(t, runtimeapi.StateReady, h.api.Server(be1, "10.1.0.1:8080").State())
	require.Equal(t, 0, h.proc.reloads)
}

func TestStructuralChangeReloadsOnce(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}})))
	before := counterValue(t, reloadsTotal.WithLabelValues("success"))

	in := model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}}, svc{2, []string{"10.1.0.9:80"}})
	require.NoError(t, h.apply(in))
	require.Equal(t, 1, h.proc.reloads)
	require.Equal(t, before+1, counterValue(t, reloadsTotal.WithLabelValues("success")))
	// Every current endpoint is a server line, ids kept from runtime.
	require.Contains(t, h.file(), "server 10.1.0.2:8080 10.1.0.2:8080 id 2")
	require.Contains(t, h.file(), "server 10.1.0.9:80 10.1.0.9:80 id 1")
	for _, be := range in.Backends {
		for _, s := range be.Servers {
			require.Zero(t, s.ID, "the caller's model is not modified")
		}
	}
	// Same model again: nothing to do.
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}}, svc{2, []string{"10.1.0.9:80"}})))
	require.Equal(t, 1, h.proc.reloads)
	require.Equal(t, []string{
		be1 + "/10.1.0.1:8080 10.1.0.1:8080 id=1 weight=1 ready",
		be1 + "/10.1.0.2:8080 10.1.0.2:8080 id=2 weight=1 ready",
		"be:default.svc2:http/10.1.0.9:80 10.1.0.9:80 id=1 weight=1 ready",
	}, h.api.Dump())
}

func TestRejectedConfigKeepsLastGood(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	good := h.file()
	rejected := counterValue(t, configRejectedTotal.WithLabelValues("validation"))

	h.reject = "svc2"
	err := h.apply(model(svc{1, []string{"10.1.0.1:8080"}}, svc{2, nil}))
	require.ErrorIs(t, err, ErrRejected)
	require.Contains(t, err.Error(), "svc2 refused")
	require.Equal(t, good, h.file(), "the last good file stays")
	require.Equal(t, 0, h.proc.reloads)
	require.Equal(t, rejected+1, counterValue(t, configRejectedTotal.WithLabelValues("validation")))
	require.Contains(t, <-h.recorder.Events, "HAProxyConfigRejected")
	validated := h.validated

	// The same structure is not tried again before the backoff, but
	// endpoints of loaded backends still follow their pods.
	err = h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}}, svc{2, nil}))
	require.ErrorIs(t, err, ErrRejected)
	require.Equal(t, validated, h.validated, "not validated again")
	require.NotNil(t, h.api.Server(be1, "10.1.0.2:8080"), "runtime update despite the pending rejection")

	// After the backoff it is tried again (and still rejected); the next
	// backoff is longer.
	h.clock.Step(10 * time.Second)
	require.ErrorIs(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}}, svc{2, nil})), ErrRejected)
	require.Equal(t, validated+1, h.validated)
	h.clock.Step(10 * time.Second)
	require.ErrorIs(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}}, svc{2, nil})), ErrRejected)
	require.Equal(t, validated+1, h.validated, "backoff doubled")

	// A different structure is tried at once.
	h.reject = ""
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}}, svc{3, nil})))
	require.Equal(t, 1, h.proc.reloads)
}

func TestFailedReloadRestoresLastGood(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	good := h.file()
	failed := counterValue(t, reloadsTotal.WithLabelValues("failed"))

	h.proc.failNext = errors.New("cannot bind socket (Address already in use) for [10.96.0.2:80]")
	err := h.apply(model(svc{1, []string{"10.1.0.1:8080"}}, svc{2, nil}))
	require.ErrorIs(t, err, ErrRejected)
	require.Contains(t, err.Error(), "Address already in use")
	require.Equal(t, good, h.file(), "the last good file is back on disk for a restart")
	require.Equal(t, failed+1, counterValue(t, reloadsTotal.WithLabelValues("failed")))
	require.Equal(t, []string{be1 + "/10.1.0.1:8080 10.1.0.1:8080 id=1 weight=1 ready"}, h.api.Dump())
}

func TestAdoptAfterProxierRestart(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}})))

	// A new proxier process: HAProxy still runs; the same structure with
	// other endpoints needs no reload.
	logger, _ := ktesting.NewTestContext(t)
	h.a = h.newApplier([]v1.IPFamily{v1.IPv4Protocol}, logger)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.2:8080", "10.1.0.3:8080"}})))
	require.Equal(t, 1, h.proc.starts)
	require.Equal(t, 0, h.proc.reloads)
	require.Equal(t, []string{
		be1 + "/10.1.0.2:8080 10.1.0.2:8080 id=2 weight=1 ready",
		be1 + "/10.1.0.3:8080 10.1.0.3:8080 id=3 weight=1 ready",
	}, h.api.Dump())

	// A configuration file edited by hand: the next proxier reloads it.
	require.NoError(t, os.WriteFile(h.proc.file, []byte(h.file()+"\n# edited\n"), 0o644))
	h.a = h.newApplier([]v1.IPFamily{v1.IPv4Protocol}, logger)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.2:8080", "10.1.0.3:8080"}})))
	require.Equal(t, 1, h.proc.reloads)
	require.NotContains(t, h.file(), "# edited")
}

func TestCorruptFileAtStart(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, os.WriteFile(h.proc.file, []byte("garbage {{{\n"), 0o644))
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	require.Equal(t, 1, h.proc.starts)
	require.True(t, strings.HasPrefix(h.file(), haproxycfg.Header))
}

func TestWaitsForEveryFamily(t *testing.T) {
	h := newHarness(t, v1.IPv4Protocol, v1.IPv6Protocol)
	require.NoError(t, h.a.Apply(context.Background(), v1.IPv4Protocol, model(svc{1, []string{"10.1.0.1:8080"}})))
	require.Equal(t, 0, h.proc.starts, "no HAProxy before the IPv6 model is known")
	v6 := &haproxycfg.Config{
		Global:   haproxycfg.Global{StatsSocket: "/run/kh/haproxy.sock", MaxConn: 1000},
		Defaults: haproxycfg.Defaults{TimeoutConnect: 5 * time.Second},
		Backends: []*haproxycfg.Backend{{Name: "be6:default.svc1:http", Servers: []haproxycfg.Server{{Name: "fd00::1.8080", Addr: netip.MustParseAddr("fd00::1"), Port: 8080}}}},
	}
	require.NoError(t, h.a.Apply(context.Background(), v1.IPv6Protocol, v6))
	require.Equal(t, 1, h.proc.starts)
	require.Equal(t, []string{
		"be6:default.svc1:http/fd00::1.8080 [fd00::1]:8080 id=1 weight=1 ready",
		be1 + "/10.1.0.1:8080 10.1.0.1:8080 id=1 weight=1 ready",
	}, h.api.Dump())
	require.Error(t, h.a.Apply(context.Background(), v1.IPFamily("IPv5"), v6))
}

func TestInvalidModelNeverWritten(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	good := h.file()
	bad := model(svc{1, []string{"10.1.0.1:8080"}})
	bad.Frontends[0].Name = "fe bad\n    bind 0.0.0.0:22"
	require.ErrorIs(t, h.apply(bad), ErrRejected)
	require.Equal(t, good, h.file())
}

func counterValue(t *testing.T, m metrics.CounterMetric) float64 {
	t.Helper()
	v, err := testutil.GetCounterMetricValue(m)
	require.NoError(t, err)
	return v
}

func TestStop(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080", "10.1.0.2:8080"}})))
	require.NoError(t, h.api.SetSessions(be1, "10.1.0.2:8080", 1))
	require.NoError(t, h.apply(model(svc{1, []string{"10.1.0.1:8080"}})))
	batches := len(h.api.Batches)
	h.a.Stop()
	// Neither a sync nor a pending drain check touches HAProxy any more.
	require.ErrorIs(t, h.apply(model(svc{1, nil})), ErrStopped)
	h.clock.Step(time.Minute)
	require.ErrorIs(t, h.a.Resync(context.Background()), ErrStopped)
	require.Len(t, h.api.Batches, batches)
	require.Equal(t, runtimeapi.StateDrain, h.api.Server(be1, "10.1.0.2:8080").State(), "HAProxy keeps what it has")
}

// The Applier keeps its own record of HAProxy's servers instead of reading
// them all at every sync; a change made behind its back is repaired by a
// Resync and by the next sync after FullReadInterval.
func TestRecordOfLoadedServersAndDrift(t *testing.T) {
	h := newHarness(t)
	const e1, e2, e3 = "10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"
	require.NoError(t, h.apply(model(svc{1, []string{e1, e2}}, svc{2, []string{"10.2.0.1:8080"}})))
	require.NoError(t, h.apply(model(svc{1, []string{e1, e2, e3}}, svc{2, []string{"10.2.0.1:8080"}})))
	// Removing e2: sessions are read for its backend only.
	require.NoError(t, h.apply(model(svc{1, []string{e1, e3}}, svc{2, []string{"10.2.0.1:8080"}})))
	require.Equal(t, 0, h.reads.showServers, "started from our file, changed by our commands: nothing to read")
	require.Equal(t, [][]string{{be1}}, h.reads.showStat)
	want := []string{
		be1 + "/" + e1 + " " + e1 + " id=1 weight=1 ready",
		be1 + "/" + e3 + " " + e3 + " id=3 weight=1 ready",
		"be:default.svc2:http/10.2.0.1:8080 10.2.0.1:8080 id=1 weight=1 ready",
	}
	require.Equal(t, want, h.api.Dump())

	// Someone disables e1 and deletes e3 behind the proxier's back.
	behindOurBack := func() {
		var b runtimeapi.Batch
		b.SetState(be1, e1, runtimeapi.StateMaint)
		b.SetState(be1, e3, runtimeapi.StateMaint)
		b.DelServer(be1, e3)
		require.NoError(t, h.api.Run(context.Background(), &b))
	}
	behindOurBack()
	require.NoError(t, h.a.Resync(context.Background()))
	require.Equal(t, 1, h.reads.showServers)
	require.Equal(t, want, h.api.Dump(), "Resync reads HAProxy and repairs it")

	// Again; a sync within FullReadInterval trusts the record (the
	// same model objects, as the proxier hands in for unchanged
	// Services)...
	same := model(svc{1, []string{e1, e3}}, svc{2, []string{"10.2.0.1:8080"}})
	require.NoError(t, h.apply(same))
	behindOurBack()
	h.clock.Step(30 * time.Second)
	require.NoError(t, h.apply(same))
	require.Equal(t, 1, h.reads.showServers)
	// ...the first one after it reads HAProxy again and repairs it.
	h.clock.Step(30 * time.Second)
	require.NoError(t, h.apply(same))
	require.Equal(t, 2, h.reads.showServers)
	require.Equal(t, want, h.api.Dump())

	// e3 deleted and added again with another id behind our back: the
	// id HAProxy has is kept, and the file follows.
	var b runtimeapi.Batch
	b.SetState(be1, e3, runtimeapi.StateMaint)
	b.DelServer(be1, e3)
	b.AddServer(be1, runtimeapi.ServerSpec{Name: e3, ID: 9, Addr: "10.1.0.3", Port: 8080})
	b.SetState(be1, e3, runtimeapi.StateReady)
	require.NoError(t, h.api.Run(context.Background(), &b))
	require.NoError(t, h.a.Resync(context.Background()))
	require.NoError(t, h.apply(same))
	require.Contains(t, h.file(), "server "+e3+" "+e3+" id 9\n")
	require.Equal(t, 0, h.proc.reloads)
}

// A command that fails because the record was wrong (a server deleted
// behind the proxier's back) falls back to a reload, after which the
// record is the file's servers again.
func TestStaleRecordFallsBackToReload(t *testing.T) {
	h := newHarness(t)
	const e1, e2 = "10.1.0.1:8080", "10.1.0.2:8080"
	require.NoError(t, h.apply(model(svc{1, []string{e1, e2}})))
	var b runtimeapi.Batch
	b.SetState(be1, e2, runtimeapi.StateMaint)
	b.DelServer(be1, e2)
	require.NoError(t, h.api.Run(context.Background(), &b))

	// The record still has e2: deleting it fails.
	require.NoError(t, h.apply(model(svc{1, []string{e1}})))
	require.Equal(t, 1, h.proc.reloads)
	require.Equal(t, []string{be1 + "/" + e1 + " " + e1 + " id=1 weight=1 ready"}, h.api.Dump())
	// From the reload on, the record is right again: no read, no reload.
	require.NoError(t, h.apply(model(svc{1, []string{e1, e2}})))
	require.Equal(t, 1, h.proc.reloads)
	require.Equal(t, 0, h.reads.showServers)
	require.Len(t, h.api.Dump(), 2)
}
