package apply

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	clocktesting "k8s.io/utils/clock/testing"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/supervisor"
)

// fakeHAProxy is a Process that does at each start and reload what
// HAProxy does with the maps: it loads the map and ACL files haproxy.cfg
// references into a runtimeapi.Fake, replacing whatever was changed at
// runtime.
type fakeHAProxy struct {
	file     string
	api      *runtimeapi.Fake
	running  bool
	starts   int
	reloads  int
	failNext error
}

var (
	mapReference = regexp.MustCompile(`map_str\(([^,)]+)`)
	aclReference = regexp.MustCompile(`src -f (\S+)`)
)

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
	for _, m := range mapReference.FindAllStringSubmatch(string(text), -1) {
		entries, err := readMapFile(m[1])
		if err != nil {
			return err
		}
		p.api.LoadMap(m[1], entries...)
	}
	for _, m := range aclReference.FindAllStringSubmatch(string(text), -1) {
		entries, err := readMapFile(m[1])
		if err != nil {
			return err
		}
		var patterns []string
		for _, e := range entries {
			patterns = append(patterns, e.Key)
		}
		p.api.LoadACL(m[1], patterns...)
	}
	return nil
}

// readMapFile parses a map or ACL file as HAProxy reads it.
func readMapFile(path string) ([]runtimeapi.MapEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return toRuntime(haproxycfg.ParseMap(data)), nil
}

func toRuntime(entries []haproxycfg.MapEntry) []runtimeapi.MapEntry {
	out := make([]runtimeapi.MapEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, runtimeapi.MapEntry(e))
	}
	return out
}

// recordingRuntime counts the reads of whole maps and, for every batch,
// replays its commands one by one on a copy of the Fake's maps, checking
// after each that no connection could meet a Service entry that points
// at something not there (see checkConsistent).
type recordingRuntime struct {
	t   *testing.T
	api *runtimeapi.Fake

	mu       sync.Mutex
	showMaps int
	// checkOrder enables the replay.
	checkOrder bool
	// readsAtRun is showMaps at each batch.
	readsAtRun []int
}

func (r *recordingRuntime) Run(ctx context.Context, b *runtimeapi.Batch) error {
	r.mu.Lock()
	check := r.checkOrder
	r.readsAtRun = append(r.readsAtRun, r.showMaps)
	r.mu.Unlock()
	if check {
		r.replay(b.Commands())
	}
	return r.api.Run(ctx, b)
}

func (r *recordingRuntime) ShowMap(ctx context.Context, file string) ([]runtimeapi.MapEntry, error) {
	r.mu.Lock()
	r.showMaps++
	r.mu.Unlock()
	return r.api.ShowMap(ctx, file)
}

func (r *recordingRuntime) ShowACL(ctx context.Context, file string) ([]string, error) {
	return r.api.ShowACL(ctx, file)
}

func (r *recordingRuntime) ShowMaps(ctx context.Context) ([]string, error) {
	return r.api.ShowMaps(ctx)
}

func (r *recordingRuntime) ShowServers(ctx context.Context, backend string) ([]runtimeapi.ServerStatus, error) {
	return r.api.ShowServers(ctx, backend)
}

func (r *recordingRuntime) ShowStat(ctx context.Context, backends ...string) ([]runtimeapi.StatRow, error) {
	return r.api.ShowStat(ctx, backends...)
}

func (r *recordingRuntime) ShowBackends(ctx context.Context) ([]string, error) {
	return r.api.ShowBackends(ctx)
}

func (r *recordingRuntime) reads() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.showMaps
}

// replay applies cmds to a copy of the Fake's maps and checks every
// intermediate state. A state that is inconsistent before the batch (a
// repair after a full read) is not checked.
func (r *recordingRuntime) replay(cmds []string) {
	r.t.Helper()
	files, err := r.api.ShowMaps(context.Background())
	require.NoError(r.t, err)
	state := map[string][]runtimeapi.MapEntry{}
	for _, f := range files {
		state[f] = r.api.Map(f)
	}
	if checkConsistent(state) != nil {
		return
	}
	for i, c := range cmds {
		f := strings.Fields(c)
		if len(f) < 4 || f[1] != "map" {
			continue // ACL patterns decide a set, not whether it exists.
		}
		file, key := f[2], f[3]
		entries := state[file]
		switch f[0] {
		case "add":
			entries = append(entries, runtimeapi.MapEntry{Key: key, Value: f[4]})
		case "set":
			for j := range entries {
				if entries[j].Key == key {
					entries[j].Value = f[4]
				}
			}
		case "del":
			entries = slices.DeleteFunc(entries, func(e runtimeapi.MapEntry) bool { return e.Key == key })
		}
		state[file] = entries
		if err := checkConsistent(state); err != nil {
			r.t.Errorf("after command %d %q of %d: %v\nbatch:\n%s", i, c, len(cmds), err, strings.Join(cmds, "\n"))
			return
		}
	}
}

// checkConsistent checks what a connection may meet in the maps at any
// moment: every endpoint set a services entry names has its count, and
// every index below the count has its endpoint.
func checkConsistent(state map[string][]runtimeapi.MapEntry) error {
	lookup := func(file, key string) (string, bool) {
		for _, e := range state[file] {
			if e.Key == key {
				return e.Value, true
			}
		}
		return "", false
	}
	for file, entries := range state {
		base := filepath.Base(file)
		if !strings.HasPrefix(base, "services-") {
			continue
		}
		endpoints := filepath.Join(filepath.Dir(file), "endpoints-"+strings.TrimPrefix(base, "services-"))
		for _, e := range entries {
			if !haproxycfg.IsListenerKey(e.Key) {
				continue
			}
			fields := strings.Split(e.Value, haproxycfg.FieldSeparator)
			for _, set := range fields[:2] {
				value, ok := lookup(file, set)
				if !ok {
					return fmt.Errorf("%s points at endpoint set %s, which has no count", e.Key, set)
				}
				count, gen, _ := strings.Cut(value, haproxycfg.FieldSeparator)
				n, err := strconv.Atoi(count)
				if err != nil || gen == "" {
					return fmt.Errorf("endpoint set %s: count and generation %q", set, value)
				}
				for i := range n {
					if _, ok := lookup(endpoints, set+"/"+gen+"/"+strconv.Itoa(i)); !ok {
						return fmt.Errorf("%s: endpoint set %s counts %d endpoints in generation %s but has no index %d", e.Key, set, n, gen, i)
					}
				}
			}
		}
	}
	return nil
}

// harness is an Applier on fakes.
type harness struct {
	t         *testing.T
	dir       string
	api       *runtimeapi.Fake
	rt        *recordingRuntime
	proc      *fakeHAProxy
	clock     *clocktesting.FakeClock
	recorder  *events.FakeRecorder
	validated int
	// reject makes validation fail for a file that contains it.
	reject string
	a      *Applier
}

func newHarness(t *testing.T, families ...v1.IPFamily) *harness {
	t.Helper()
	if len(families) == 0 {
		families = []v1.IPFamily{v1.IPv4Protocol}
	}
	dir := t.TempDir()
	api := runtimeapi.NewFake()
	h := &harness{
		t:        t,
		dir:      dir,
		api:      api,
		rt:       &recordingRuntime{t: t, api: api, checkOrder: true},
		proc:     &fakeHAProxy{file: filepath.Join(dir, "haproxy.cfg"), api: api},
		clock:    clocktesting.NewFakeClock(time.Unix(1000, 0)),
		recorder: events.NewFakeRecorder(100),
	}
	logger, _ := ktesting.NewTestContext(t)
	h.a = h.newApplier(families, logger)
	return h
}

func (h *harness) newApplier(families []v1.IPFamily, logger klog.Logger) *Applier {
	h.t.Helper()
	a, err := New(Options{
		ConfigFile: h.proc.file,
		Runtime:    h.rt,
		Process:    h.proc,
		Families:   families,
		Validate: func(ctx context.Context, file string) error {
			h.validated++
			text, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			if h.reject != "" && strings.Contains(string(text), h.reject) {
				return fmt.Errorf("[ALERT] config: %q refused", h.reject)
			}
			return nil
		},
		RetryBackoff:    10 * time.Second,
		MaxRetryBackoff: time.Minute,
		Recorder:        h.recorder,
		NodeName:        "node-1",
		Clock:           h.clock,
		Logger:          logger,
	})
	require.NoError(h.t, err)
	// Before the test's directory goes: the map files are written by a
	// timer.
	h.t.Cleanup(a.Stop)
	return a
}

func (h *harness) apply(c *haproxycfg.Config) error {
	return h.a.Apply(context.Background(), v1.IPv4Protocol, c)
}

func (h *harness) file() string {
	h.t.Helper()
	b, err := os.ReadFile(h.proc.file)
	require.NoError(h.t, err)
	return string(b)
}

func (h *harness) batches() int { return len(h.api.Batches) }

func (h *harness) lastBatch() []string {
	h.t.Helper()
	require.NotEmpty(h.t, h.api.Batches)
	return h.api.Batches[len(h.api.Batches)-1]
}

const statsSocket = "/run/kh/haproxy.sock"

var defaultSources = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("192.168.0.2/32")}

// config is the model of one IPv4 dispatcher serving ports, in h.dir.
func (h *harness) config(ports ...*haproxycfg.ServicePort) *haproxycfg.Config {
	return modelIn(h.dir, ports...)
}

func modelIn(dir string, ports ...*haproxycfg.ServicePort) *haproxycfg.Config {
	sorted := slices.Clone(ports)
	slices.SortFunc(sorted, func(a, b *haproxycfg.ServicePort) int { return strings.Compare(a.Name, b.Name) })
	return &haproxycfg.Config{
		Global:   haproxycfg.Global{StatsSocket: statsSocket, MaxConn: 1000},
		Defaults: haproxycfg.Defaults{TimeoutConnect: 5 * time.Second, TimeoutClient: time.Minute, TimeoutServer: time.Minute},
		Dispatchers: []*haproxycfg.Dispatcher{{
			Listen:         netip.MustParseAddrPort("127.0.0.1:10400"),
			MapDir:         dir,
			ClusterSources: defaultSources,
			ServicePorts:   sorted,
		}},
	}
}

func endpoints(eps ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, e := range eps {
		out = append(out, netip.MustParseAddrPort(e))
	}
	return out
}

func portName(n int) string { return fmt.Sprintf("default.svc%d:http:tcp", n) }

func clusterIP(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 96, byte(n >> 8), byte(n)}) }

// port is Service port n: ClusterIP 10.96.x.y:80 with its endpoints, as
// the translation builds it.
func port(n int, eps ...string) *haproxycfg.ServicePort {
	return &haproxycfg.ServicePort{
		Name:      portName(n),
		Comment:   fmt.Sprintf("Service default/svc%d port http (80/TCP)", n),
		Listeners: []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: clusterIP(n), Port: 80}},
		Cluster:   &haproxycfg.EndpointSet{Name: portName(n), Endpoints: endpoints(eps...)},
		WhenEmpty: haproxycfg.Rejected,
	}
}

// localPort is Service port n of type NodePort with externalTrafficPolicy
// Local: a NodePort whose external clients use the local endpoints.
func localPort(n int, cluster, local []string) *haproxycfg.ServicePort {
	sp := port(n, cluster...)
	sp.Listeners = append(sp.Listeners, haproxycfg.Listener{Kind: haproxycfg.NodePort, Port: uint16(30000 + n)})
	sp.Local = &haproxycfg.EndpointSet{Name: portName(n) + ":local", Endpoints: endpoints(local...)}
	sp.ExternalLocal, sp.ShortCircuit = true, true
	sp.WhenEmpty = haproxycfg.Dropped
	return sp
}

func withAffinity(sp *haproxycfg.ServicePort, d time.Duration) *haproxycfg.ServicePort {
	sp.Affinity = d
	return sp
}

// wantEntries are the entries of d's maps as the model has them.
func wantEntries(d *haproxycfg.Dispatcher) (services, endpoints []runtimeapi.MapEntry, sources []string) {
	var s, e []haproxycfg.MapEntry
	for _, sp := range d.ServicePorts {
		s = sp.AppendDispatchEntries(s)
		e = sp.AppendEndpointEntries(e)
	}
	for _, p := range d.ClusterSources {
		sources = append(sources, p.Masked().String())
	}
	return toRuntime(s), toRuntime(e), sources
}

// requireServes checks that HAProxy's maps hold exactly the entries of c,
// each key once, and that the files on disk hold what HAProxy holds (so a
// restarted HAProxy serves the same).
func (h *harness) requireServes(c *haproxycfg.Config) {
	h.t.Helper()
	h.a.FlushMapFiles()
	for _, d := range c.Dispatchers {
		services, endpoints, sources := wantEntries(d)
		require.ElementsMatch(h.t, services, h.api.Map(d.ServicesMap()), "services map in HAProxy")
		require.ElementsMatch(h.t, endpoints, h.api.Map(d.EndpointsMap()), "endpoints map in HAProxy")
		require.ElementsMatch(h.t, sources, h.api.ACL(d.ClusterSourcesACL()), "cluster sources in HAProxy")
		for _, file := range []string{d.ServicesMap(), d.EndpointsMap()} {
			onDisk, err := readMapFile(file)
			require.NoError(h.t, err)
			require.ElementsMatch(h.t, h.api.Map(file), onDisk, "%s on disk", file)
		}
		onDisk, err := readMapFile(d.ClusterSourcesACL())
		require.NoError(h.t, err)
		var patterns []string
		for _, e := range onDisk {
			patterns = append(patterns, e.Key)
		}
		require.ElementsMatch(h.t, h.api.ACL(d.ClusterSourcesACL()), patterns, "cluster sources on disk")
	}
}

// counterValue reads a counter as /metrics exposes it; a vector none of
// whose series was touched yet is not exposed and counts 0.
func counterValue(t *testing.T, name, label, value string) float64 {
	t.Helper()
	values, err := testutil.GetCounterValuesFromGatherer(legacyregistry.DefaultGatherer, name, map[string]string{}, label)
	if err != nil && strings.Contains(err.Error(), "not found") {
		return 0
	}
	require.NoError(t, err)
	return values[value]
}

// commandIndex returns the indexes of the commands of batch that start
// with prefix.
func commandIndex(batch []string, prefix string) []int {
	var out []int
	for i, c := range batch {
		if strings.HasPrefix(c, prefix) {
			out = append(out, i)
		}
	}
	return out
}

func TestFirstApplyStartsHAProxyAndWritesTheFiles(t *testing.T) {
	h := newHarness(t)
	c := h.config(port(1, "10.1.0.1:8080", "10.1.0.2:8080"), localPort(2, []string{"10.1.0.3:8080"}, nil),
		withAffinity(port(3, "10.1.0.4:8080"), time.Hour))
	require.NoError(t, h.apply(c))
	assert.Equal(t, 1, h.proc.starts)
	assert.Equal(t, 0, h.proc.reloads)
	assert.Equal(t, 1, h.a.Reloads())
	assert.Zero(t, h.batches(), "HAProxy read the maps from the files: no command")

	want, err := haproxycfg.Render(c)
	require.NoError(t, err)
	assert.Equal(t, string(want), h.file())
	d := c.Dispatchers[0]
	services, endpoints, sources := wantEntries(d)
	for file, entries := range map[string][]runtimeapi.MapEntry{d.ServicesMap(): services, d.EndpointsMap(): endpoints} {
		onDisk, err := readMapFile(file)
		require.NoError(t, err)
		assert.ElementsMatch(t, entries, onDisk, file)
	}
	acl, err := readMapFile(d.ClusterSourcesACL())
	require.NoError(t, err)
	require.Len(t, acl, len(sources))
	h.requireServes(c)
	assert.FileExists(t, h.proc.file+".loaded")
}

// Every change of Services and endpoints is a runtime update: the maps in
// HAProxy and on disk equal the model's after each, and the commands come
// in an order that never lets a connection meet a dangling entry.
func TestServiceChangesWithoutReload(t *testing.T) {
	h := newHarness(t)
	p1 := port(1, "10.1.0.1:8080")
	p2 := port(2, "10.1.0.2:8080", "10.1.0.3:8080")
	require.NoError(t, h.apply(h.config(p1, p2)))
	updates := counterValue(t, "kubeproxy_haproxy_runtime_updates_total", "result", "success")

	steps := []struct {
		name  string
		ports func() []*haproxycfg.ServicePort
		check func(t *testing.T, c *haproxycfg.Config, batch []string)
	}{
		{"new Service port", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{p1, p2, port(3, "10.1.0.7:8080", "10.1.0.8:8080")}
		}, func(t *testing.T, c *haproxycfg.Config, batch []string) {
			d := c.Dispatchers[0]
			assert.Len(t, batch, 4, "two endpoints, a count, a services entry; nothing for the unchanged ports")
			eps := commandIndex(batch, "add map "+d.EndpointsMap()+" "+portName(3)+"/0/")
			count := commandIndex(batch, "add map "+d.ServicesMap()+" "+portName(3)+" 2|0")
			svc := commandIndex(batch, "add map "+d.ServicesMap()+" 10.96.0.3:80 ")
			require.Len(t, eps, 2)
			require.Len(t, count, 1)
			require.Len(t, svc, 1)
			assert.Less(t, slices.Max(eps), count[0], "endpoints before their count")
			assert.Less(t, count[0], svc[0], "the count before the Service entry")
		}},
		{"deleted Service port", func() []*haproxycfg.ServicePort { return []*haproxycfg.ServicePort{p1, p2} },
			func(t *testing.T, c *haproxycfg.Config, batch []string) {
				d := c.Dispatchers[0]
				assert.Len(t, batch, 4)
				svc := slices.Index(batch, "del map "+d.ServicesMap()+" 10.96.0.3:80")
				count := slices.Index(batch, "del map "+d.ServicesMap()+" "+portName(3))
				eps := commandIndex(batch, "del map "+d.EndpointsMap()+" "+portName(3)+"/0/")
				require.Len(t, eps, 2)
				assert.Less(t, svc, count, "the Service entry before the count")
				assert.Less(t, count, slices.Min(eps), "the count before the endpoints")
			}},
		{"endpoint added", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{port(1, "10.1.0.1:8080", "10.1.0.9:8080"), p2}
		}, func(t *testing.T, c *haproxycfg.Config, batch []string) {
			d := c.Dispatchers[0]
			// A new generation beside the old one, the count switched to
			// it, the old one deleted: no "set map" on the endpoints map,
			// which HAProxy 2.6 does in time proportional to the map.
			value := func(ep string) string {
				return string(haproxycfg.EndpointValue(nil, netip.MustParseAddrPort(ep), haproxycfg.EndpointIDs(endpoints(ep))[0]))
			}
			require.Len(t, batch, 4)
			assert.ElementsMatch(t, []string{
				"add map " + d.EndpointsMap() + " " + portName(1) + "/1/0 " + value("10.1.0.1:8080"),
				"add map " + d.EndpointsMap() + " " + portName(1) + "/1/1 " + value("10.1.0.9:8080"),
			}, batch[:2])
			assert.Equal(t, []string{
				"set map " + d.ServicesMap() + " " + portName(1) + " 2|1",
				"del map " + d.EndpointsMap() + " " + portName(1) + "/0/0",
			}, batch[2:])
		}},
		{"endpoint removed", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{port(1, "10.1.0.9:8080"), p2}
		}, func(t *testing.T, c *haproxycfg.Config, batch []string) {
			d := c.Dispatchers[0]
			require.Len(t, batch, 4)
			assert.True(t, strings.HasPrefix(batch[0], "add map "+d.EndpointsMap()+" "+portName(1)+"/2/0 10.1.0.9|8080|"), batch[0])
			assert.Equal(t, "set map "+d.ServicesMap()+" "+portName(1)+" 1|2", batch[1])
			assert.ElementsMatch(t, []string{"del map " + d.EndpointsMap() + " " + portName(1) + "/1/0", "del map " + d.EndpointsMap() + " " + portName(1) + "/1/1"}, batch[2:],
				"the old generation goes once no count points at it")
			assert.Empty(t, commandIndex(batch, "set map "+d.EndpointsMap()))
		}},
		{"every endpoint gone", func() []*haproxycfg.ServicePort { return []*haproxycfg.ServicePort{port(1), p2} }, nil},
		{"endpoints back", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{port(1, "10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"), p2}
		}, nil},
		{"affinity on", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{withAffinity(port(1, "10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"), 3*time.Hour), p2}
		}, func(t *testing.T, c *haproxycfg.Config, batch []string) {
			d := c.Dispatchers[0]
			assert.Len(t, commandIndex(batch, "add map "+d.EndpointsMap()+" "+portName(1)+"/5/ep"), 3)
			svc := commandIndex(batch, "set map "+d.ServicesMap()+" 10.96.0.1:80 "+portName(1)+"|"+portName(1)+"|reject|10800")
			require.Len(t, svc, 1)
			assert.Less(t, slices.Max(commandIndex(batch, "add map "+d.EndpointsMap()+" "+portName(1)+"/5/ep")), svc[0], "the ids exist before the Service uses them")
		}},
		{"affinity endpoint change", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{withAffinity(port(1, "10.1.0.1:8080", "10.1.0.3:8080"), 3*time.Hour), p2}
		}, nil},
		{"affinity off", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{port(1, "10.1.0.1:8080", "10.1.0.3:8080"), p2}
		}, func(t *testing.T, c *haproxycfg.Config, batch []string) {
			d := c.Dispatchers[0]
			assert.Len(t, commandIndex(batch, "del map "+d.EndpointsMap()+" "+portName(1)+"/6/ep"), 2)
			svc := commandIndex(batch, "set map "+d.ServicesMap()+" 10.96.0.1:80 "+portName(1)+"|"+portName(1)+"|reject|0")
			require.Len(t, svc, 1)
			assert.Less(t, svc[0], slices.Min(commandIndex(batch, "del map "+d.EndpointsMap()+" "+portName(1)+"/6/ep")),
				"the Service stops using the ids before they go")
		}},
		{"externalTrafficPolicy Local", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{port(1, "10.1.0.1:8080", "10.1.0.3:8080"), localPort(2, []string{"10.1.0.2:8080", "10.1.0.3:8080"}, []string{"10.1.0.2:8080"})}
		}, nil},
		{"local endpoint gone", func() []*haproxycfg.ServicePort {
			return []*haproxycfg.ServicePort{port(1, "10.1.0.1:8080", "10.1.0.3:8080"), localPort(2, []string{"10.1.0.3:8080"}, nil)}
		}, nil},
		{"Service recreated on the same ClusterIP", func() []*haproxycfg.ServicePort {
			sp := port(2, "10.1.0.5:8080")
			sp.Name, sp.Cluster.Name = "other.svc:http:tcp", "other.svc:http:tcp"
			return []*haproxycfg.ServicePort{port(1, "10.1.0.1:8080", "10.1.0.3:8080"), sp}
		}, nil},
		{"many at once", func() []*haproxycfg.ServicePort {
			var out []*haproxycfg.ServicePort
			for i := 10; i < 60; i++ {
				out = append(out, port(i, fmt.Sprintf("10.2.0.%d:80", i), fmt.Sprintf("10.2.1.%d:80", i)))
			}
			return out
		}, nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.t, h.rt.t = t, t
			before := h.batches()
			c := h.config(st.ports()...)
			require.NoError(t, h.apply(c))
			assert.Equal(t, 1, h.proc.starts)
			assert.Equal(t, 0, h.proc.reloads, "no reload")
			require.Equal(t, before+1, h.batches(), "one batch")
			h.requireServes(c)
			// The entry gauges follow each change without a recount.
			services, endpoints, _ := wantEntries(c.Dispatchers[0])
			for m, want := range map[string]int{"services": len(services), "endpoints": len(endpoints)} {
				got, err := testutil.GetGaugeMetricValue(mapEntries.WithLabelValues("IPv4", m))
				require.NoError(t, err)
				assert.Equal(t, float64(want), got, "kubeproxy_haproxy_map_entries{map=%q}", m)
			}
			if st.check != nil {
				st.check(t, c, h.lastBatch())
			}
		})
	}
	h.t, h.rt.t = t, t
	assert.Equal(t, updates+float64(len(steps)), counterValue(t, "kubeproxy_haproxy_runtime_updates_total", "result", "success"))
	assert.Zero(t, h.rt.reads(), "started from our files, changed by our commands: nothing read back")
}

func TestClusterSourcesChangeWithoutReload(t *testing.T) {
	h := newHarness(t)
	p := localPort(1, []string{"10.1.0.1:8080"}, []string{"10.1.0.1:8080"})
	require.NoError(t, h.apply(h.config(p)))
	c := h.config(p)
	c.Dispatchers[0].ClusterSources = []netip.Prefix{
		netip.MustParsePrefix("10.244.0.0/16"),
		netip.MustParsePrefix("10.245.0.0/16"),
		netip.MustParsePrefix("10.245.3.4/16"), // the same, once masked
	}
	require.NoError(t, h.apply(c))
	assert.Equal(t, 0, h.proc.reloads)
	acl := c.Dispatchers[0].ClusterSourcesACL()
	assert.ElementsMatch(t, []string{"add acl " + acl + " 10.245.0.0/16", "del acl " + acl + " 192.168.0.2/32"}, h.lastBatch())
	assert.Equal(t, []string{"10.244.0.0/16", "10.245.0.0/16"}, h.api.ACL(acl))
	assert.Less(t, slices.Index(h.lastBatch(), "add acl "+acl+" 10.245.0.0/16"), slices.Index(h.lastBatch(), "del acl "+acl+" 192.168.0.2/32"))
}

// The proxier hands in the same objects for unchanged Service ports: an
// unchanged model costs no command and no read.
func TestUnchangedModelSendsNothing(t *testing.T) {
	h := newHarness(t)
	p1, p2 := port(1, "10.1.0.1:8080"), withAffinity(port(2, "10.1.0.2:8080"), time.Minute)
	c := h.config(p1, p2)
	require.NoError(t, h.apply(c))
	require.NoError(t, h.apply(c))
	require.NoError(t, h.apply(h.config(p1, p2)), "a new Config around the same Service ports")
	assert.Zero(t, h.batches())
	assert.Zero(t, h.rt.reads())
	assert.Equal(t, 1, h.a.Reloads())
	// A copy with equal content but other objects: compared entry by
	// entry, still nothing to send.
	require.NoError(t, h.apply(h.config(port(1, "10.1.0.1:8080"), p2)))
	assert.Zero(t, h.batches())
}

func TestSettingChangeReloadsOnce(t *testing.T) {
	h := newHarness(t)
	p1, p2 := port(1, "10.1.0.1:8080"), port(2, "10.1.0.2:8080")
	require.NoError(t, h.apply(h.config(p1, p2)))
	reloads := counterValue(t, "kubeproxy_haproxy_reloads_total", "result", "success")

	c := h.config(p1, p2, port(3, "10.1.0.3:8080"))
	c.Global.MaxOldWorkers = 3
	require.NoError(t, h.apply(c))
	assert.Equal(t, 1, h.proc.reloads, "exactly one reload")
	assert.Equal(t, 1, h.proc.starts)
	assert.Zero(t, h.batches(), "the reloaded HAProxy read the new Service from the map files")
	assert.Contains(t, h.file(), "mworker-max-reloads 3")
	assert.Equal(t, reloads+1, counterValue(t, "kubeproxy_haproxy_reloads_total", "result", "success"))
	h.requireServes(c)

	// The same settings again, with a Service change: no reload.
	c2 := h.config(p1, p2)
	c2.Global.MaxOldWorkers = 3
	require.NoError(t, h.apply(c2))
	assert.Equal(t, 1, h.proc.reloads)
	h.requireServes(c2)
}

func TestRejectedConfigKeepsLastGood(t *testing.T) {
	h := newHarness(t)
	p1 := port(1, "10.1.0.1:8080")
	require.NoError(t, h.apply(h.config(p1)))
	good := h.file()
	rejected := counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "validation")

	bad := func(ports ...*haproxycfg.ServicePort) *haproxycfg.Config {
		c := h.config(ports...)
		c.Global.MaxOldWorkers = 7
		return c
	}
	h.reject = "mworker-max-reloads 7"
	err := h.apply(bad(p1))
	require.ErrorIs(t, err, ErrRejected)
	assert.ErrorContains(t, err, "refused")
	assert.Equal(t, good, h.file(), "the last good file stays")
	assert.Equal(t, 0, h.proc.reloads)
	assert.Equal(t, rejected+1, counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "validation"))
	select {
	case ev := <-h.recorder.Events:
		assert.Contains(t, ev, "Warning HAProxyConfigRejected")
		assert.Contains(t, ev, "refused")
	default:
		t.Fatal("no event on the Node")
	}
	validated := h.validated

	// Before the backoff the same settings are not tried again, but
	// Services still change in the maps the last good configuration reads.
	withNew := bad(p1, port(2, "10.1.0.2:8080"))
	err = h.apply(withNew)
	require.ErrorIs(t, err, ErrRejected)
	assert.Equal(t, validated, h.validated, "not validated again before the backoff")
	assert.Empty(t, h.recorder.Events, "one event per rejection, not per sync")
	h.requireServes(withNew)

	// After the backoff it is tried again (and rejected again); the next
	// backoff is twice as long.
	h.clock.Step(10 * time.Second)
	require.ErrorIs(t, h.apply(withNew), ErrRejected)
	assert.Equal(t, validated+1, h.validated)
	h.clock.Step(10 * time.Second)
	require.ErrorIs(t, h.apply(withNew), ErrRejected)
	assert.Equal(t, validated+1, h.validated, "backoff doubled")
	h.clock.Step(10 * time.Second)
	require.ErrorIs(t, h.apply(withNew), ErrRejected)
	assert.Equal(t, validated+2, h.validated)
	assert.Equal(t, good, h.file())
	assert.Equal(t, 0, h.proc.reloads)

	// Other settings are tried at once.
	h.reject = ""
	fixed := h.config(p1, port(2, "10.1.0.2:8080"))
	fixed.Global.MaxOldWorkers = 8
	require.NoError(t, h.apply(fixed))
	assert.Equal(t, 1, h.proc.reloads)
	h.requireServes(fixed)
}

func TestInvalidModelIsNeverWritten(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(h.config(port(1, "10.1.0.1:8080"))))
	good := h.file()
	rejected := counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "model")
	bad := port(2, "10.1.0.2:8080")
	bad.Name = "bad name\n    bind 0.0.0.0:22"
	require.ErrorIs(t, h.apply(h.config(port(1, "10.1.0.1:8080"), bad)), ErrRejected)
	noSocket := h.config(port(1, "10.1.0.1:8080"))
	noSocket.Global.StatsSocket = ""
	require.ErrorIs(t, h.apply(noSocket), ErrRejected)
	assert.Equal(t, good, h.file())
	assert.Zero(t, h.batches())
	assert.Equal(t, rejected+2, counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "model"))
}

func TestFailedReloadRestoresLastGood(t *testing.T) {
	h := newHarness(t)
	p1 := port(1, "10.1.0.1:8080")
	require.NoError(t, h.apply(h.config(p1)))
	good := h.file()
	failed := counterValue(t, "kubeproxy_haproxy_reloads_total", "result", "failed")

	h.proc.failNext = errors.New("cannot bind socket (Address already in use) for [127.0.0.1:10401]")
	c := h.config(p1, port(2, "10.1.0.2:8080"))
	c.Global.PeerPort = 10401 // binds: the dispatcher, its retry socket and the peer
	err := h.apply(c)
	require.ErrorIs(t, err, ErrRejected)
	assert.ErrorContains(t, err, "Address already in use")
	assert.Equal(t, good, h.file(), "the last good file is back for a restart")
	assert.Equal(t, failed+1, counterValue(t, "kubeproxy_haproxy_reloads_total", "result", "failed"))
	// The old configuration still serves, and its maps follow the model.
	h.requireServes(c)
}

// A batch that fails (the maps were changed behind the applier's back)
// falls back to a reload, which loads the files: the maps are right again.
func TestFailedBatchFallsBackToReload(t *testing.T) {
	h := newHarness(t)
	c := h.config(port(1, "10.1.0.1:8080", "10.1.0.2:8080"))
	require.NoError(t, h.apply(c))
	var b runtimeapi.Batch
	b.DelMap(c.Dispatchers[0].EndpointsMap(), portName(1)+"/0/1")
	require.NoError(t, h.api.Run(context.Background(), &b))
	h.rt.checkOrder = false

	failed := counterValue(t, "kubeproxy_haproxy_runtime_updates_total", "result", "failed")
	// The change deletes the old generation, whose index 1 HAProxy no
	// longer has.
	c2 := h.config(port(1, "10.1.0.1:8080", "10.1.0.3:8080"))
	require.NoError(t, h.apply(c2))
	assert.Equal(t, 1, h.proc.reloads)
	assert.Equal(t, failed+1, counterValue(t, "kubeproxy_haproxy_runtime_updates_total", "result", "failed"))
	h.requireServes(c2)

	// From the reload on, the applier trusts the maps again.
	h.rt.checkOrder = true
	c3 := h.config(port(1, "10.1.0.3:8080"))
	require.NoError(t, h.apply(c3))
	assert.Equal(t, 1, h.proc.reloads)
	assert.Zero(t, h.rt.reads())
	h.requireServes(c3)
}

// Resync reads HAProxy's maps back and repairs them with the fewest
// commands: a stale entry deleted, a duplicated key deleted and added
// once, a changed value set, a missing entry added.
func TestResyncRepairsTheMaps(t *testing.T) {
	h := newHarness(t)
	c := h.config(port(1, "10.1.0.1:8080"), port(2, "10.1.0.2:8080", "10.1.0.3:8080"))
	require.NoError(t, h.apply(c))
	d := c.Dispatchers[0]
	services, endpoints, _ := wantEntries(d)
	value := func(entries []runtimeapi.MapEntry, key string) string {
		for _, e := range entries {
			if e.Key == key {
				return e.Value
			}
		}
		t.Fatalf("no entry %s", key)
		return ""
	}

	// Someone changes HAProxy's maps by hand.
	var b runtimeapi.Batch
	b.AddMap(d.ServicesMap(), "10.96.9.9:80", portName(1)+"|"+portName(1)+"|reject|0") // stale
	b.AddMap(d.ServicesMap(), "10.96.0.2:80", "wrong|wrong|reject|0")                  // duplicated
	b.SetMap(d.EndpointsMap(), portName(2)+"/0/1", "10.9.9.9|80|1")                    // changed
	b.DelMap(d.EndpointsMap(), portName(1)+"/0/0")                                     // missing
	b.AddACL(d.ClusterSourcesACL(), "10.10.0.0/16")                                    // stale
	b.AddACL(d.ClusterSourcesACL(), "10.244.0.0/16")                                   // duplicated
	require.NoError(t, h.api.Run(context.Background(), &b))
	before := h.batches()
	h.rt.checkOrder = false

	require.NoError(t, h.a.Resync(context.Background()))
	assert.Equal(t, 0, h.proc.reloads)
	assert.Equal(t, 2, h.rt.reads(), "both maps read back")
	require.Equal(t, before+1, h.batches())
	batch := h.lastBatch()
	assert.ElementsMatch(t, []string{
		"del map " + d.ServicesMap() + " 10.96.9.9:80",
		"del map " + d.ServicesMap() + " 10.96.0.2:80",
		"add map " + d.ServicesMap() + " 10.96.0.2:80 " + value(services, "10.96.0.2:80"),
		"set map " + d.EndpointsMap() + " " + portName(2) + "/0/1 " + value(endpoints, portName(2)+"/0/1"),
		"add map " + d.EndpointsMap() + " " + portName(1) + "/0/0 " + value(endpoints, portName(1)+"/0/0"),
		"del acl " + d.ClusterSourcesACL() + " 10.10.0.0/16",
		"del acl " + d.ClusterSourcesACL() + " 10.244.0.0/16",
		"add acl " + d.ClusterSourcesACL() + " 10.244.0.0/16",
	}, batch)
	assert.Less(t, slices.Index(batch, "del map "+d.ServicesMap()+" 10.96.0.2:80"), slices.Index(batch, "add map "+d.ServicesMap()+" 10.96.0.2:80 "+value(services, "10.96.0.2:80")),
		"a duplicated key is deleted, then added once")
	assert.Less(t, slices.Index(batch, "del acl "+d.ClusterSourcesACL()+" 10.244.0.0/16"), slices.Index(batch, "add acl "+d.ClusterSourcesACL()+" 10.244.0.0/16"))
	h.requireServes(c)

	// The maps are trusted again: the next change reads nothing.
	h.rt.checkOrder = true
	c2 := h.config(port(1, "10.1.0.1:8080"), port(2, "10.1.0.2:8080"))
	require.NoError(t, h.apply(c2))
	assert.Equal(t, 2, h.rt.reads())
	h.requireServes(c2)
}

// Within FullReadInterval the applier trusts its record of the maps; the
// first sync after it reads them back and repairs what changed by hand.
func TestFullReadInterval(t *testing.T) {
	h := newHarness(t)
	p1 := port(1, "10.1.0.1:8080")
	c := h.config(p1)
	require.NoError(t, h.apply(c))
	var b runtimeapi.Batch
	b.SetMap(c.Dispatchers[0].EndpointsMap(), portName(1)+"/0/0", "10.9.9.9|80|1")
	require.NoError(t, h.api.Run(context.Background(), &b))

	h.clock.Step(59 * time.Second)
	require.NoError(t, h.apply(c))
	assert.Zero(t, h.rt.reads())
	assert.Equal(t, "10.9.9.9|80|1", h.api.Map(c.Dispatchers[0].EndpointsMap())[0].Value)
	h.clock.Step(time.Second)
	require.NoError(t, h.apply(c))
	assert.NotZero(t, h.rt.reads())
	h.requireServes(c)
	assert.Equal(t, 0, h.proc.reloads)

	// When the interval ends with a change, the change goes first: its
	// batch is sent before any map is read back.
	h.clock.Step(time.Minute)
	reads := h.rt.reads()
	h.rt.mu.Lock()
	h.rt.readsAtRun = nil
	h.rt.mu.Unlock()
	c = h.config(port(1, "10.1.0.2:8080"))
	require.NoError(t, h.apply(c))
	assert.Greater(t, h.rt.reads(), reads, "the maps were read back")
	h.rt.mu.Lock()
	assert.Equal(t, []int{reads}, h.rt.readsAtRun, "one batch, sent before the read-back (which found nothing to repair)")
	h.rt.mu.Unlock()
	h.requireServes(c)
}

// A new proxier process adopts the running HAProxy: no start, no reload;
// its first sync reads the maps back, takes the endpoint sets'
// generations from them, and repairs only what changed meanwhile.
func TestAdoption(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(h.config(port(1, "10.1.0.1:8080"), port(2, "10.1.0.2:8080"))))
	// Service port 1's set is in its second generation.
	c := h.config(port(1, "10.1.0.1:8080", "10.1.0.4:8080"), port(2, "10.1.0.2:8080"))
	require.NoError(t, h.apply(c))
	require.Equal(t, uint32(1), c.Dispatchers[0].ServicePorts[0].Cluster.Generation)
	var b runtimeapi.Batch
	b.SetMap(c.Dispatchers[0].EndpointsMap(), portName(2)+"/0/0", "10.9.9.9|80|1")
	require.NoError(t, h.api.Run(context.Background(), &b))

	logger, _ := ktesting.NewTestContext(t)
	h.a = h.newApplier([]v1.IPFamily{v1.IPv4Protocol}, logger)
	h.rt.checkOrder = false
	c2 := h.config(port(1, "10.1.0.1:8080", "10.1.0.4:8080"), port(2, "10.1.0.2:8080"))
	require.NoError(t, h.apply(c2))
	assert.Equal(t, 1, h.proc.starts)
	assert.Equal(t, 0, h.proc.reloads)
	assert.Equal(t, 0, h.a.Reloads())
	assert.NotZero(t, h.rt.reads(), "an adopted HAProxy's maps are read back")
	d := c2.Dispatchers[0]
	_, endpoints, _ := wantEntries(d)
	assert.Equal(t, []string{"set map " + d.EndpointsMap() + " " + portName(2) + "/0/0 " + endpoints[2].Value}, h.lastBatch(),
		"the generation HAProxy has is kept: only the entry changed by hand is repaired")
	assert.Equal(t, uint32(1), d.ServicePorts[0].Cluster.Generation)
	h.requireServes(c2)
	h.rt.checkOrder = true
	// A configuration file edited by hand is not trusted: the next
	// proxier reloads it.
	require.NoError(t, os.WriteFile(h.proc.file, []byte(h.file()+"\n# edited\n"), 0o644))
	h.a = h.newApplier([]v1.IPFamily{v1.IPv4Protocol}, logger)
	require.NoError(t, h.apply(c2))
	assert.Equal(t, 1, h.proc.reloads)
	assert.NotContains(t, h.file(), "# edited")
	h.requireServes(c2)
}

func TestWaitsForEveryFamily(t *testing.T) {
	h := newHarness(t, v1.IPv4Protocol, v1.IPv6Protocol)
	v4 := h.config(port(1, "10.1.0.1:8080"))
	require.NoError(t, h.a.Apply(context.Background(), v1.IPv4Protocol, v4))
	assert.Equal(t, 0, h.proc.starts, "no HAProxy before the IPv6 model is known")

	v6port := func(eps ...string) *haproxycfg.ServicePort {
		return &haproxycfg.ServicePort{
			Name:      portName(1) + ":ipv6",
			Listeners: []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("fd00::1"), Port: 80}},
			Cluster:   &haproxycfg.EndpointSet{Name: portName(1) + ":ipv6", Endpoints: endpoints(eps...)},
			WhenEmpty: haproxycfg.Rejected,
		}
	}
	v6 := &haproxycfg.Config{Global: v4.Global, Defaults: v4.Defaults, Dispatchers: []*haproxycfg.Dispatcher{{
		IPv6: true, Listen: netip.MustParseAddrPort("[::1]:10400"), MapDir: h.dir,
		ClusterSources: []netip.Prefix{netip.MustParsePrefix("fd01::/48")},
		ServicePorts:   []*haproxycfg.ServicePort{v6port("[fd01::1]:8080")},
	}}}
	require.NoError(t, h.a.Apply(context.Background(), v1.IPv6Protocol, v6))
	assert.Equal(t, 1, h.proc.starts)
	h.requireServes(v4)
	h.requireServes(v6)

	// An IPv6 endpoint change is a runtime update of the IPv6 maps only.
	v6b := &haproxycfg.Config{Global: v6.Global, Defaults: v6.Defaults, Dispatchers: []*haproxycfg.Dispatcher{{
		IPv6: true, Listen: v6.Dispatchers[0].Listen, MapDir: h.dir, ClusterSources: v6.Dispatchers[0].ClusterSources,
		ServicePorts: []*haproxycfg.ServicePort{v6port("[fd01::1]:8080", "[fd01::2]:8080")},
	}}}
	require.NoError(t, h.a.Apply(context.Background(), v1.IPv6Protocol, v6b))
	assert.Equal(t, 0, h.proc.reloads)
	for _, cmd := range h.lastBatch() {
		assert.Contains(t, cmd, "-ipv6.map")
	}
	h.requireServes(v4)
	h.requireServes(v6b)
	require.Error(t, h.a.Apply(context.Background(), v1.IPFamily("IPv5"), v6))
}

func TestMaxConnFitsTheFileLimit(t *testing.T) {
	h := newHarness(t)
	logger, _ := ktesting.NewTestContext(t)
	a, err := New(Options{ConfigFile: h.proc.file, Runtime: h.rt, Process: h.proc, Families: []v1.IPFamily{v1.IPv4Protocol},
		Validate: func(context.Context, string) error { return nil }, FileLimit: 1024, Clock: h.clock, Logger: logger,
		Recorder: h.recorder, NodeName: "node-1"})
	require.NoError(t, err)
	t.Cleanup(a.Stop)
	c := h.config(port(1, "10.1.0.1:8080"))
	c.Global.MaxConn = 0
	c.Global.PeerPort = 10401 // binds: the dispatcher, its retry socket and the peer
	require.NoError(t, a.Apply(context.Background(), v1.IPv4Protocol, c))
	assert.Contains(t, h.file(), fmt.Sprintf("    maxconn %d\n", haproxycfg.MaxConnForFileLimit(1024, 3)))
	assert.Zero(t, c.Global.MaxConn, "the caller's model is not modified")

	// A maxconn of the model that needs more descriptors than the limit.
	rejected := counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "file-limit")
	c2 := h.config(port(1, "10.1.0.1:8080"))
	c2.Global.MaxConn = 5000
	err = a.Apply(context.Background(), v1.IPv4Protocol, c2)
	require.ErrorIs(t, err, ErrRejected)
	assert.ErrorContains(t, err, "file limit 1024")
	assert.Equal(t, rejected+1, counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "file-limit"))
	assert.Equal(t, 0, h.proc.reloads)
}

func TestStop(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(h.config(port(1, "10.1.0.1:8080"))))
	h.a.Stop()
	require.ErrorIs(t, h.apply(h.config(port(1, "10.1.0.2:8080"))), ErrStopped)
	require.ErrorIs(t, h.a.Resync(context.Background()), ErrStopped)
	assert.Zero(t, h.batches())
	assert.Equal(t, 0, h.proc.reloads)
}

// diffPrefixes and dedupe on their own: each change once, whatever the
// duplicates on either side.
func TestDiffDuplicates(t *testing.T) {
	d := diffPrefixes([]string{"a", "a", "b", "c", "c"}, []string{"b", "c", "d", "d"})
	assert.Equal(t, []string{"d"}, d.add)
	assert.Equal(t, []string{"a"}, d.del, "one del removes every copy")
	assert.Equal(t, []string{"c"}, d.readd)

	e := diffEntries(map[string]string{"k": "\x00", "gone": "\x00", "same": "v"}, map[string]string{"k": "v", "same": "v"})
	dedupe(&e, []string{"k", "gone"})
	assert.Empty(t, e.set)
	assert.Empty(t, e.add)
	assert.Equal(t, []string{"gone"}, e.del)
	assert.Equal(t, []haproxycfg.MapEntry{{Key: "k", Value: "v"}}, e.readd)
}

// The map files the applier writes from its kept texts are byte for byte
// those haproxycfg.RenderMaps renders, through changes that keep, change,
// add and delete Service ports; an unchanged port is not rendered again.
func TestMapFilesAreRenderMaps(t *testing.T) {
	dir := t.TempDir()
	odd := port(4, "10.1.0.4:8080")
	odd.Comment = "Service with\nnewline \x00 and ü"
	odd.Cluster.Comment = "set comment"
	noComment := port(5)
	noComment.Comment = ""
	ports := []*haproxycfg.ServicePort{
		port(1, "10.1.0.1:8080", "10.1.0.2:8080"),
		localPort(2, []string{"10.1.0.3:8080"}, nil),
		withAffinity(port(3, "10.1.0.4:8080", "10.1.0.5:8080"), time.Hour),
		odd, noComment,
	}
	c := modelIn(dir, ports...)
	c.Dispatchers[0].ClusterSources = append(c.Dispatchers[0].ClusterSources, netip.MustParsePrefix("10.250.0.0/16"))
	files := newMapFiles()
	check := func(d *haproxycfg.Dispatcher) {
		t.Helper()
		require.NoError(t, files.write(d, true, true, true, false))
		s, e, a := haproxycfg.RenderMaps(d)
		for file, want := range map[string][]byte{d.ServicesMap(): s, d.EndpointsMap(): e, d.ClusterSourcesACL(): a} {
			got, err := os.ReadFile(file)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got), file)
		}
	}
	check(c.Dispatchers[0])
	kept := &files.ports[portName(3)].endpoints[0]

	changed := slices.Clone(ports)
	changed[0] = port(1, "10.1.0.2:8080")
	changed = slices.Delete(changed, 1, 2)
	changed = append(changed, localPort(7, []string{"10.1.0.7:8080"}, []string{"10.1.0.7:8080"}))
	c2 := modelIn(dir, changed...)
	check(c2.Dispatchers[0])
	assert.Same(t, kept, &files.ports[portName(3)].endpoints[0], "an unchanged Service port is not rendered again")
	assert.NotContains(t, files.ports, portName(2), "a deleted Service port is forgotten")

	v6 := &haproxycfg.Dispatcher{IPv6: true, Listen: netip.MustParseAddrPort("[::1]:10400"), MapDir: dir,
		ClusterSources: []netip.Prefix{netip.MustParsePrefix("fd01::/48")},
		ServicePorts: []*haproxycfg.ServicePort{{
			Name:      "default.web:http:tcp:ipv6",
			Comment:   "IPv6",
			Listeners: []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: netip.MustParseAddr("fd00::10"), Port: 80}},
			Cluster:   &haproxycfg.EndpointSet{Name: "default.web:http:tcp:ipv6", Endpoints: endpoints("[fd01::1]:8080")},
			WhenEmpty: haproxycfg.Rejected,
		}}}
	files = newMapFiles()
	check(v6)
}

// changedSorted (the walk of two sorted lists) finds what changedByName
// finds, and gives up on a list out of order.
func TestChangedServicePorts(t *testing.T) {
	p := make([]*haproxycfg.ServicePort, 8)
	for i := range p {
		p[i] = port(i + 10)
	}
	changed := port(12)
	for name, tc := range map[string]struct{ prev, cur []*haproxycfg.ServicePort }{
		"same":           {p, p},
		"one changed":    {p, []*haproxycfg.ServicePort{p[0], p[1], changed, p[3], p[4], p[5], p[6], p[7]}},
		"added and gone": {p[1:6], p[3:8]},
		"from nothing":   {nil, p},
		"to nothing":     {p, nil},
		"interleaved":    {[]*haproxycfg.ServicePort{p[0], p[2], p[4], p[6]}, []*haproxycfg.ServicePort{p[1], changed, p[3], p[6], p[7]}},
	} {
		t.Run(name, func(t *testing.T) {
			before, after, ok := changedSorted(tc.prev, tc.cur)
			require.True(t, ok)
			wantBefore, wantAfter := changedByName(tc.prev, tc.cur)
			assert.ElementsMatch(t, wantBefore, before)
			assert.ElementsMatch(t, wantAfter, after)
		})
	}
	_, _, ok := changedSorted(p, []*haproxycfg.ServicePort{p[1], p[0]})
	assert.False(t, ok)
	_, _, ok = changedSorted([]*haproxycfg.ServicePort{p[0], p[0]}, p)
	assert.False(t, ok, "a name twice is not sorted")
}

// Service ports are validated in proportion to what changed, with the
// same verdict as haproxycfg.ValidateDispatcher on the whole dispatcher.
func TestIncrementalValidation(t *testing.T) {
	h := newHarness(t)
	p1, p2, p3 := port(1, "10.1.0.1:8080"), port(2, "10.1.0.2:8080"), port(3, "10.1.0.3:8080")
	many := []*haproxycfg.ServicePort{p1, p2, p3}
	for i := 10; i < 30; i++ {
		many = append(many, port(i, "10.1.1.1:80"))
	}
	require.NoError(t, h.apply(h.config(many...)))
	good := h.file()
	rejected := counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "model")

	// A new Service port on the ClusterIP:port of an unchanged one.
	dup := port(4, "10.1.0.4:8080")
	dup.Listeners = p2.Listeners
	err := h.apply(h.config(append(slices.Clone(many), dup)...))
	require.ErrorIs(t, err, ErrRejected)
	assert.ErrorContains(t, err, "already belongs to")
	// Its endpoint set named like another's.
	twin := port(5, "10.1.0.5:8080")
	twin.Cluster.Name = portName(3)
	err = h.apply(h.config(append(slices.Clone(many), twin)...))
	require.ErrorIs(t, err, ErrRejected)
	assert.ErrorContains(t, err, "appears twice")
	// A changed Service port that is invalid on its own.
	bad := port(1, "10.1.0.1:8080")
	bad.WhenEmpty = "maybe"
	require.ErrorIs(t, h.apply(h.config(append([]*haproxycfg.ServicePort{bad}, many[1:]...)...)), ErrRejected)
	assert.Equal(t, rejected+3, counterValue(t, "kubeproxy_haproxy_config_rejected_total", "reason", "model"))
	assert.Zero(t, h.batches(), "nothing of a rejected model reaches HAProxy")
	assert.Equal(t, good, h.file())

	// A listener moving from one Service port to another in one sync is
	// fine; the indexes were not left half updated by the rejections.
	moved := port(4, "10.1.0.4:8080")
	moved.Listeners = p2.Listeners
	p2b := port(2, "10.1.0.2:8080")
	p2b.Listeners = []haproxycfg.Listener{{Kind: haproxycfg.ClusterIP, Addr: clusterIP(99), Port: 80}}
	c := h.config(append([]*haproxycfg.ServicePort{p1, p2b, p3, moved}, many[3:]...)...)
	require.NoError(t, h.apply(c))
	h.requireServes(c)
	assert.Equal(t, 0, h.proc.reloads)
}

// Random changes: the incremental verdict is always haproxycfg's.
func TestIncrementalValidationAgreesWithHAProxycfg(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	ports := make([]*haproxycfg.ServicePort, 40)
	for i := range ports {
		ports[i] = port(i, "10.1.0.1:8080")
	}
	var x portIndex
	d := modelIn("/run/kh", ports...).Dispatchers[0]
	require.NoError(t, x.check(d))
	accepted, refused := 0, 0
	for step := range 500 {
		next := slices.Clone(x.d.ServicePorts)
		for range 1 + rnd.IntN(3) {
			i := rnd.IntN(len(next))
			var n int
			_, err := fmt.Sscanf(next[i].Name, "default.svc%d:", &n)
			require.NoError(t, err)
			sp := port(n, "10.1.0.1:8080")
			switch rnd.IntN(4) {
			case 0: // another, maybe taken, ClusterIP
				sp.Listeners[0].Addr = clusterIP(rnd.IntN(len(next) + 5))
			case 1: // another, maybe taken, set name
				sp.Cluster.Name = portName(rnd.IntN(len(next) + 5))
			case 2: // a second listener, maybe taken
				sp.Listeners = append(sp.Listeners, haproxycfg.Listener{Kind: haproxycfg.NodePort, Port: uint16(30000 + rnd.IntN(20))})
			}
			next[i] = sp
		}
		cand := modelIn("/run/kh", next...).Dispatchers[0]
		if rnd.IntN(5) == 0 {
			// Not sorted: the index compares by name instead.
			rnd.Shuffle(len(cand.ServicePorts), func(i, j int) {
				cand.ServicePorts[i], cand.ServicePorts[j] = cand.ServicePorts[j], cand.ServicePorts[i]
			})
		}
		want := haproxycfg.ValidateDispatcher(cand)
		prev := x.d
		got := x.check(cand)
		require.Equal(t, want == nil, got == nil, "step %d: haproxycfg says %v, the index %v", step, want, got)
		if got == nil {
			accepted++
			require.Same(t, cand, x.d)
		} else {
			refused++
			require.Same(t, prev, x.d, "a refused dispatcher leaves the last valid one")
		}
		// The indexes describe x.d exactly.
		var fresh portIndex
		require.NoError(t, fresh.whole(x.d))
		require.Equal(t, fresh.keys, x.keys, "step %d", step)
		require.Equal(t, fresh.sets, x.sets, "step %d", step)
	}
	t.Logf("%d accepted, %d refused", accepted, refused)
	assert.NotZero(t, accepted)
	assert.NotZero(t, refused)
}

// A reload that finds HAProxy down is no verdict on the configuration:
// no backoff, no runtime update of a process that is not there, and the
// next sync tries again.
func TestReloadWhileHAProxyIsDown(t *testing.T) {
	h := newHarness(t)
	require.NoError(t, h.apply(h.config(port(1, "10.1.0.1:8080"))))
	c := h.config(port(1, "10.1.0.1:8080"), port(2, "10.1.0.2:8080"))
	c.Global.MaxOldWorkers = 2
	h.proc.failNext = fmt.Errorf("%w: connection refused", supervisor.ErrNotRunning)
	err := h.apply(c)
	require.ErrorIs(t, err, ErrRejected)
	require.ErrorIs(t, err, supervisor.ErrNotRunning)
	assert.Zero(t, h.batches())
	assert.Zero(t, h.rt.reads())
	assert.Empty(t, h.recorder.Events, "not the configuration's fault: no event")

	require.NoError(t, h.apply(c), "tried again at once")
	assert.Equal(t, 1, h.proc.reloads)
	h.requireServes(c)
}

// TestMapFilesFollowWithinTheLag: after a runtime update HAProxy's memory
// is ahead of the map files on disk; the files catch up within
// MapFilesLag, with no call from the proxier, and at once on Stop.
func TestMapFilesFollowWithinTheLag(t *testing.T) {
	h := newHarness(t)
	h.a.opts.MapFilesLag = 500 * time.Millisecond
	onDisk := func(c *haproxycfg.Config) string {
		b, err := os.ReadFile(c.Dispatchers[0].EndpointsMap())
		require.NoError(t, err)
		return string(b)
	}
	require.NoError(t, h.apply(h.config(port(1, "10.1.0.1:8080"))))
	c := h.config(port(1, "10.1.0.2:8080"))
	require.NoError(t, h.apply(c))
	assert.Contains(t, onDisk(c), "10.1.0.1|8080", "the files trail HAProxy right after the update")
	assert.Contains(t, fmt.Sprint(h.api.Map(c.Dispatchers[0].EndpointsMap())), "10.1.0.2|8080")
	require.Eventually(t, func() bool { return strings.Contains(onDisk(c), "10.1.0.2|8080") }, 5*time.Second, 20*time.Millisecond,
		"the files caught up within the lag")

	c = h.config(port(1, "10.1.0.3:8080"))
	require.NoError(t, h.apply(c))
	h.a.Stop()
	assert.Contains(t, onDisk(c), "10.1.0.3|8080", "Stop writes what trails")
	h.requireServes(c)
}

// A map file that cannot be written is tried again after the lag, whole
// with the others of its family (they must agree on the generations),
// until it is written: the files do not stay behind HAProxy.
func TestMapFilesWriteFailureIsRetried(t *testing.T) {
	h := newHarness(t)
	h.a.opts.MapFilesLag = 100 * time.Millisecond
	require.NoError(t, h.apply(h.config(port(1, "10.1.0.1:8080"))))
	endpointsMap := h.config().Dispatchers[0].EndpointsMap()
	// A directory where the file goes: replacing it fails.
	require.NoError(t, os.Remove(endpointsMap))
	require.NoError(t, os.Mkdir(endpointsMap, 0o755))

	c := h.config(port(1, "10.1.0.2:8080"))
	require.NoError(t, h.apply(c))
	time.Sleep(5 * h.a.opts.MapFilesLag)
	fi, err := os.Stat(endpointsMap)
	require.NoError(t, err)
	require.True(t, fi.IsDir(), "the write failed")

	require.NoError(t, os.Remove(endpointsMap))
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(endpointsMap)
		return err == nil && strings.Contains(string(b), "10.1.0.2|8080")
	}, 5*time.Second, 20*time.Millisecond, "written by a later try, with no change from the proxier")
	h.requireServes(c)
}
