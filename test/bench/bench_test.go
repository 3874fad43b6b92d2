package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit"
	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// config is the bench's knobs, from the environment (see docs/benchmarks.md).
type config struct {
	modes       []string
	scales      []int
	endpoints   int
	changes     int
	newServices int
	wrkDuration time.Duration
	wrkConns    int
	// The cold start and memory pass: its scales (none when empty) and
	// endpoints per Service.
	memScales    []int
	memEndpoints int
	outDir       string
	// profile: a CPU profile of node1's kube-proxy during the endpoint
	// changes of every run, written to outDir (PROFILE=1).
	profile bool
	docs    string
}

// memNewServices is how many Services the memory pass adds (and deletes)
// once every Service answers, so the peak includes the runtime changes
// (in haproxy mode they must cause no reload).
const memNewServices = 5

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, v)
	}
	return n
}

// envScales reads a comma-separated list of Service counts; "none" is the
// empty list.
func envScales(t *testing.T, name, def string) []int {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	if v == "none" {
		return nil
	}
	var out []int
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			t.Fatalf("%s=%q: want numbers separated by commas, or none", name, v)
		}
		out = append(out, n)
	}
	return out
}

// The benchmark's workload: latencies at 100, 1,000 and 10,000 Services with
// 10 endpoints each; cold start and memory at 1,000 and 10,000 Services
// with 2 endpoints each.
const (
	defaultScales       = "100,1000,10000"
	defaultEndpoints    = 10
	defaultMemScales    = "1000,10000"
	defaultMemEndpoints = 2
)

func loadConfig(t *testing.T) config {
	c := config{
		modes:        []string{localcluster.ModeHAProxy, localcluster.ModeNFTables},
		scales:       envScales(t, "SCALES", defaultScales),
		endpoints:    envInt(t, "ENDPOINTS", defaultEndpoints),
		changes:      envInt(t, "CHANGES", 50),
		newServices:  envInt(t, "NEW_SERVICES", 20),
		wrkConns:     envInt(t, "WRK_CONNECTIONS", 16),
		memScales:    envScales(t, "MEMORY_SCALES", defaultMemScales),
		memEndpoints: envInt(t, "MEMORY_ENDPOINTS", defaultMemEndpoints),
		outDir:       os.Getenv("BENCH_OUT"),
		profile:      os.Getenv("PROFILE") == "1",
		docs:         os.Getenv("BENCH_DOCS"),
	}
	if m := os.Getenv("MODE"); m != "" {
		c.modes = strings.Split(m, ",")
	}
	for _, m := range c.modes {
		if m != localcluster.ModeHAProxy && m != localcluster.ModeNFTables {
			t.Fatalf("MODE=%q: each mode must be %s or %s", os.Getenv("MODE"), localcluster.ModeHAProxy, localcluster.ModeNFTables)
		}
	}
	for _, e := range []struct {
		name string
		n    int
	}{{"ENDPOINTS", c.endpoints}, {"MEMORY_ENDPOINTS", c.memEndpoints}} {
		if e.n < 1 || e.n > 100 {
			t.Fatalf("%s=%d: want 1..100 (two pools of that many pods are started)", e.name, e.n)
		}
	}
	if len(c.scales)+len(c.memScales) == 0 {
		t.Fatalf("SCALES and MEMORY_SCALES are both none: nothing to measure")
	}
	d := os.Getenv("WRK_DURATION")
	if d == "" {
		d = "5s"
	}
	wd, err := time.ParseDuration(d)
	if err != nil {
		t.Fatalf("WRK_DURATION=%q: %v", d, err)
	}
	c.wrkDuration = wd
	return c
}

// passSpec is what one pass measures.
type passSpec struct {
	pass        string
	endpoints   int
	changes     int
	newServices int
	wrk         time.Duration
}

func (c config) passes() []struct {
	spec   passSpec
	scales []int
} {
	return []struct {
		spec   passSpec
		scales []int
	}{
		{passSpec{PassLatency, c.endpoints, c.changes, c.newServices, c.wrkDuration}, c.scales},
		{passSpec{PassMemory, c.memEndpoints, 0, memNewServices, 0}, c.memScales},
	}
}

// TestBench runs every scenario on a fresh cluster per pass, mode and
// scale, and writes the report only when every run succeeded.
func TestBench(t *testing.T) {
	if os.Getenv("KH_BENCH") != "1" {
		t.Skip("opt-in: set KH_BENCH=1 to run the benchmarks (make bench)")
	}
	// wrk runs in the client's namespace: without it every data-plane
	// figure would be missing, so it is checked before any cluster starts.
	kit.Command(t, "wrk")
	kit.Command(t, "h2load")
	cfg := loadConfig(t)
	avail, err := MemAvailable("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range cfg.passes() {
		for _, n := range p.scales {
			if err := CheckScale(n, p.spec.endpoints, avail); err != nil {
				t.Fatalf("refusing to run: %v", err)
			}
		}
	}
	// Ctrl-C or SIGTERM ends the run through the test's cleanups, which
	// stop every process and delete every namespace the clusters made.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// One cluster per scale, its Services written once (the API writes
	// them at about 25 Services/s, see docs/benchmarks.md): every mode and
	// pass at that scale runs on it in turn, each from a cold start with
	// kube-proxies of its own, so their measurements share nothing but
	// the control plane.
	var runs []Run
	for _, n := range unionSorted(cfg.scales, cfg.memScales) {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			b := newBench(ctx, t, cfg, n)
			for _, p := range cfg.passes() {
				if !slices.Contains(p.scales, n) {
					continue
				}
				for _, mode := range cfg.modes {
					if t.Failed() || ctx.Err() != nil {
						return
					}
					t.Logf("== %s pass, %s mode, %d Services × %d endpoints", p.spec.pass, mode, n, p.spec.endpoints)
					runs = append(runs, b.run(cfg, p.spec, mode))
				}
			}
		})
		if t.Failed() || ctx.Err() != nil {
			t.Fatalf("a run failed or was interrupted: no report is written")
		}
		// Every run of the scales done so far succeeded: keep them, so a
		// long run that fails later still shows what it measured.
		if cfg.outDir != "" {
			partial := "# Benchmarks, partial: the scales completed so far\n\n" + Report(collectMeta(t, cfg), runs, nil, "")
			if err := os.MkdirAll(cfg.outDir, 0o755); err == nil {
				_ = os.WriteFile(filepath.Join(cfg.outDir, "partial.md"), []byte(partial), 0o644)
			}
		}
	}
	meta := collectMeta(t, cfg)
	if cfg.outDir == "" {
		t.Log("\n" + "# Benchmarks: haproxy mode beside upstream's nftables mode\n\n" + Report(meta, runs, nil, ""))
		return
	}
	// Plots of a run live beside its report, in a directory of their own,
	// so an older report keeps its pictures.
	stamp := "bench-" + meta.Date.UTC().Format("20060102-150405")
	figs, err := Plots(filepath.Join(cfg.outDir, stamp), runs)
	if err != nil {
		t.Fatal(err)
	}
	report := "# Benchmarks: haproxy mode beside upstream's nftables mode\n\n" + Report(meta, runs, figs, stamp+"/")
	t.Log("\n" + report)
	name := filepath.Join(cfg.outDir, stamp+".md")
	for _, p := range []string{name, filepath.Join(cfg.outDir, "latest.md")} {
		if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Remove(filepath.Join(cfg.outDir, "partial.md"))
	t.Logf("report: %s, plots: %s", name, filepath.Join(cfg.outDir, stamp))
	if cfg.docs != "" {
		if err := writeDocs(cfg.docs, filepath.Join(cfg.outDir, stamp), meta, runs, figs); err != nil {
			t.Fatal(err)
		}
		t.Logf("copied into %s", cfg.docs)
	}
}

// resultsMarker separates docs/benchmarks.md's hand-written method from
// the generated results, which each `make bench` replaces.
const resultsMarker = "<!-- results: generated by make bench, everything below is replaced -->"

// writeDocs replaces the results in the document at path with this run's
// report, and copies the plots into the directory named like the document
// (docs/benchmarks/ beside docs/benchmarks.md), which the report links.
func writeDocs(path, plotDir string, meta Meta, runs []Run, figs []Figure) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	head, _, ok := strings.Cut(string(b), resultsMarker)
	if !ok {
		return fmt.Errorf("%s has no results marker %q", path, resultsMarker)
	}
	docDir := strings.TrimSuffix(path, filepath.Ext(path))
	if err := os.MkdirAll(docDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", docDir, err)
	}
	for _, f := range figs {
		png, err := os.ReadFile(filepath.Join(plotDir, f.File))
		if err != nil {
			return fmt.Errorf("copying a plot: %w", err)
		}
		if err := os.WriteFile(filepath.Join(docDir, f.File), png, 0o644); err != nil {
			return fmt.Errorf("copying a plot: %w", err)
		}
	}
	report := Report(meta, runs, figs, filepath.Base(docDir)+"/")
	return os.WriteFile(path, []byte(head+resultsMarker+"\n\n## Latest results\n\n"+report), 0o644)
}

func collectMeta(t *testing.T, cfg config) Meta {
	m := Meta{Date: time.Now(), CPUs: runtime.NumCPU(), WrkArgs: fmt.Sprintf("-t1 -c%d -d%s --latency", cfg.wrkConns, cfg.wrkDuration),
		H2loadArgs: h2loadArgs(cfg)}
	m.MemTotal, _ = MemTotal("/proc")
	out, err := exec.Command(controlplane.Binary(t, "kube-proxy"), "--version").CombinedOutput()
	m.KubeProxy = strings.TrimSpace(string(out))
	if err != nil {
		m.KubeProxy = "unknown: " + err.Error()
	}
	out, err = exec.Command("haproxy", "-v").CombinedOutput()
	m.HAProxy, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	if err != nil {
		m.HAProxy = "unknown: " + err.Error()
	}
	out, _ = exec.Command("uname", "-r").Output()
	m.Kernel = strings.TrimSpace(string(out))
	// kube-proxy and HAProxy inherit it; HAProxy needs two descriptors per
	// connection (maxconn) plus one per listener.
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil {
		m.FileLimit = l.Max
	}
	scales := func(ns []int) string {
		if len(ns) == 0 {
			return "none"
		}
		return joinInts(ns)
	}
	m.Command = fmt.Sprintf("make bench SCALES=%s ENDPOINTS=%d CHANGES=%d NEW_SERVICES=%d WRK_DURATION=%s MEMORY_SCALES=%s MEMORY_ENDPOINTS=%d",
		scales(cfg.scales), cfg.endpoints, cfg.changes, cfg.newServices, cfg.wrkDuration, scales(cfg.memScales), cfg.memEndpoints)
	if len(cfg.modes) == 1 {
		m.Command += " MODE=" + cfg.modes[0]
	}
	return m
}

// unionSorted is every number in a or b once, in increasing order.
func unionSorted(a, b []int) []int {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// bench is one scale's state: the cluster, a client pod on node1, two
// pools of pods, and n Services; every benchmark Service lists (the first
// endpoints pods of) one pool, so a request answered by the other pool
// proves a change is programmed.
type bench struct {
	t      *testing.T
	ctx    context.Context
	c      *localcluster.Cluster
	client kubernetes.Interface
	from   *localcluster.Pod
	pools  [2][]*localcluster.Pod
	inPool map[string]int
	n      int
	ips    []string
	// h2cIP is the ClusterIP of a Service of appProtocol kubernetes.io/h2c
	// listing pool 0, for the HTTP/2 data-plane rows.
	h2cIP string
	// newIPs are the ClusterIPs of the new Services of the current run.
	newIPs []string
	// endpoints is how many pods of a pool each slice lists now, and
	// state[i] the pool Service i's slice lists.
	endpoints int
	state     []int
	// mode is the mode kube-proxy runs in now.
	mode string
	// proxyPID is node1's kube-proxy, read by the memory sampler while a
	// cold start replaces the process.
	proxyPID atomic.Int64
	// kubeProxy is the kube-proxy binary.
	kubeProxy string
	// runs counts kube-proxy starts, to name their logs.
	runs int
	// failure is set by watchProxyLog when node1's kube-proxy reports that
	// HAProxy refused its configuration: probes then stop at once rather
	// than wait for a timeout that scales with the Services.
	failure   atomic.Pointer[string]
	stopWatch chan struct{}
	watchDone chan struct{}
	// stopProfile ends the CPU profile being taken, if any.
	stopProfile func()
}

const benchManagedBy = "bench.kube-haproxy.io"

// Timeouts grow with the number of Services: HAProxy reloads, nftables
// transactions and the API's lists are all linear in it. The per-Service
// terms are about ten times what a 10,000-Service run takes here.
func scaled(base time.Duration, n int, perService time.Duration) time.Duration {
	return base + time.Duration(n)*perService
}

// newBench starts a cluster, stops its kube-proxies (each run starts its
// own), starts the pods and writes n Services with their slices.
func newBench(ctx context.Context, t *testing.T, cfg config, n int) *bench {
	// The local cluster starts in haproxy mode; a run in nftables mode
	// starts kube-proxy with the same configuration in that mode.
	c := localcluster.Start(t, localcluster.Options{Mode: localcluster.ModeHAProxy, Logf: t.Logf})
	// The benchmark writes thousands of objects: a client of its own that
	// the default rate limits (5 QPS) do not slow down.
	rc := rest.CopyConfig(c.CP.RESTConfig)
	rc.QPS, rc.Burst = 5000, 10000
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{t: t, ctx: ctx, c: c, client: client, inPool: map[string]int{}, n: n, kubeProxy: controlplane.Binary(t, "kube-proxy")}
	b.stopProxies()
	b.from, err = c.AddPod(ctx, c.Nodes[0], "client", map[string]string{"app": "bench-client"})
	if err != nil {
		t.Fatal(err)
	}
	pods := 0
	for _, p := range cfg.passes() {
		if slices.Contains(p.scales, n) {
			pods = max(pods, p.spec.endpoints)
		}
	}
	for pool := range 2 {
		for i := range pods {
			node := c.Nodes[i%len(c.Nodes)]
			p, err := c.StartPod(node, fmt.Sprintf("p%d-%d", pool, i), map[string]string{"app": "bench-backend"})
			if err != nil {
				t.Fatal(err)
			}
			b.pools[pool] = append(b.pools[pool], p)
			b.inPool[p.Name] = pool
		}
	}
	b.endpoints = pods
	b.state = make([]int, n)
	t.Logf("creating %d Services with %d endpoints each, kube-proxy stopped", n, pods)
	created := time.Now()
	b.ips = b.createServices(n)
	t.Logf("%d Services and slices written in %v", n, time.Since(created).Round(time.Millisecond))
	h2c, err := client.CoreV1().Services(metav1.NamespaceDefault).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: h2cServiceName, Namespace: metav1.NamespaceDefault},
		Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{
			Name: "http", Protocol: v1.ProtocolTCP, Port: 80, AppProtocol: ptr.To("kubernetes.io/h2c"),
			TargetPort: intstr.FromInt32(localcluster.PodPorts["http"].Port),
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Create(ctx, b.slice(h2cServiceName, 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	b.h2cIP = h2c.Spec.ClusterIP
	return b
}

// run measures one pass in one mode: a cold start, then the pass's
// scenarios. It leaves the Services as it found them (the ones it added
// deleted) and every kube-proxy stopped and cleaned up.
func (b *bench) run(cfg config, spec passSpec, mode string) Run {
	t, n, ips := b.t, b.n, b.ips
	b.mode = mode
	b.resetSlices(spec.endpoints)
	r := Run{Pass: spec.pass, Mode: mode, Services: n, Endpoints: spec.endpoints, HasReloads: mode == localcluster.ModeHAProxy}

	// Memory is sampled from the start to the end, so the peaks include
	// the cold start and every reload's overlap of old and new workers.
	sampler := StartMemSampler("/proc", func() int { return int(b.proxyPID.Load()) }, 100*time.Millisecond)
	samplerStopped := false
	defer func() {
		if !samplerStopped {
			_, _ = sampler.Stop()
		}
	}()

	// Cold start: with every Service already written and nothing
	// programmed, the kube-proxies start and node1's is timed until every
	// ClusterIP answers from node1's client pod.
	r.ColdStart = b.startProxies()
	t.Logf("%s: cold start: every one of %d Services answers %v after kube-proxy started", mode, n, r.ColdStart)
	// The probing alone, every ClusterIP once while all answer: the floor
	// under the cold start figure.
	t0 := time.Now()
	b.waitAll(ips, 0, scaled(time.Minute, n, 10*time.Millisecond))
	r.Sweep = time.Since(t0)
	b.checkCtx()

	// Endpoint changes: a random Service flips to the other pool.
	reloads0 := b.settle()
	npl0sum, npl0count := b.npl()
	if cfg.profile && cfg.outDir != "" && spec.changes > 0 {
		stop := b.profile(filepath.Join(cfg.outDir, fmt.Sprintf("profile-%s-%d-endpoint-changes.pprof", mode, n)))
		defer stop()
	}
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	for range spec.changes {
		i := rng.IntN(n)
		b.state[i] = 1 - b.state[i]
		t0 := time.Now()
		b.writeSlice(svcName(i), b.state[i])
		b.waitPool(ips[i], b.state[i], scaled(30*time.Second, n, 5*time.Millisecond))
		r.EndpointChange = append(r.EndpointChange, time.Since(t0))
		b.checkCtx()
	}
	if spec.changes > 0 {
		if cfg.profile && cfg.outDir != "" {
			// The profile covers the changes only.
			b.stopProfile()
		}
		// Let the other node and the metrics settle before reading counters.
		time.Sleep(time.Second)
		r.ReloadsEndpoint = b.reloads() - reloads0
		npl1sum, npl1count := b.npl()
		if c := npl1count - npl0count; c > 0 {
			r.NPLCount = int(c)
			r.NPLMean = time.Duration((npl1sum - npl0sum) / c * float64(time.Second))
		}
		t.Logf("%s: endpoint change p50 %v p99 %v, reloads %d, network programming %v (%d obs.)", mode,
			Percentile(r.EndpointChange, 50), Percentile(r.EndpointChange, 99), r.ReloadsEndpoint, r.NPLMean, r.NPLCount)
		// Every sample, in order: with 30 changes p99 is the slowest, and
		// whether it stands alone or the tail is long says where it comes from.
		t.Logf("%s: endpoint changes in order: %v", mode, roundAll(r.EndpointChange, 100*time.Microsecond))
		if r.HasReloads && r.ReloadsEndpoint != 0 {
			t.Errorf("%s: %d HAProxy reloads during endpoint-only changes; want 0; kube-proxy on node1 logged:\n%s",
				mode, r.ReloadsEndpoint, grepLines(b.c.Nodes[0].Proxy.Log(), "eload", 20))
		}
	}

	// New Services, one at a time; deleted at the end of the run.
	reloads0 = b.settle()
	for j := range spec.newServices {
		t0 := time.Now()
		ip := b.createService(n+j, 0)
		b.newIPs = append(b.newIPs, ip)
		b.waitPool(ip, 0, scaled(time.Minute, n, 10*time.Millisecond))
		r.NewService = append(r.NewService, time.Since(t0))
		b.checkCtx()
	}
	if spec.newServices > 0 {
		time.Sleep(time.Second)
		r.ReloadsNewService = b.reloads() - reloads0
		t.Logf("%s: new Service p50 %v p99 %v, reloads %d", mode, Percentile(r.NewService, 50), Percentile(r.NewService, 99), r.ReloadsNewService)
		if r.HasReloads && r.ReloadsNewService != 0 {
			t.Errorf("%s: %d HAProxy reloads for new Services; want 0; kube-proxy on node1 logged:\n%s",
				mode, r.ReloadsNewService, grepLines(b.c.Nodes[0].Proxy.Log(), "eload", 20))
		}
	}

	// The new Services deleted, one at a time: until the ClusterIP no
	// longer answers.
	reloads0 = b.settle()
	for j := range spec.newServices {
		ip := b.newIPs[j]
		t0 := time.Now()
		b.deleteService(n + j)
		b.waitGone(ip, scaled(time.Minute, n, 10*time.Millisecond))
		r.DeletedService = append(r.DeletedService, time.Since(t0))
		b.checkCtx()
	}
	b.newIPs = b.newIPs[:0]
	if spec.newServices > 0 {
		time.Sleep(time.Second)
		r.ReloadsDeleted = b.reloads() - reloads0
		t.Logf("%s: deleted Service p50 %v p99 %v, reloads %d", mode, Percentile(r.DeletedService, 50), Percentile(r.DeletedService, 99), r.ReloadsDeleted)
		if r.HasReloads && r.ReloadsDeleted != 0 {
			t.Errorf("%s: %d HAProxy reloads for deleted Services; want 0; kube-proxy on node1 logged:\n%s",
				mode, r.ReloadsDeleted, grepLines(b.c.Nodes[0].Proxy.Log(), "eload", 20))
		}
	}

	if spec.wrk > 0 {
		r.Wrk = map[WrkKey]WrkResult{}
		direct := b.pools[0][len(b.pools[0])-1]
		if len(b.c.Nodes) > 1 && len(b.pools[0]) > 1 {
			direct = b.pools[0][1] // on node2, as half the ClusterIP's endpoints
		}
		for _, target := range []struct{ name, url string }{
			{TargetClusterIP, "http://" + ips[0] + "/"},
			{TargetDirect, fmt.Sprintf("http://%s:%d/", direct.IP, localcluster.PodPorts["http"].Port)},
		} {
			for _, conn := range []string{ConnKeepAlive, ConnClose} {
				r.Wrk[WrkKey{target.name, conn}] = b.wrk(cfg, spec.wrk, target.url, conn == ConnClose)
				b.checkCtx()
			}
		}
		if err := b.from.NS.WaitTCP(b.h2cIP+":80", 30*time.Second); err != nil {
			t.Fatalf("the h2c Service's ClusterIP: %v", err)
		}
		for _, target := range []struct{ name, url string }{
			{TargetClusterIP, "http://" + b.h2cIP + "/"},
			{TargetDirect, fmt.Sprintf("http://%s:%d/", direct.IP, localcluster.PodPorts["http"].Port)},
		} {
			r.Wrk[WrkKey{target.name, ConnH2}] = b.h2load(cfg, target.url)
			b.checkCtx()
		}
	}

	// Memory last: the peaks include every scenario above.
	samplerStopped = true
	peak, err := sampler.Stop()
	if err != nil {
		t.Fatal(err)
	}
	r.ProxyHWM = peak.ProxyHWM
	if r.HasReloads {
		if peak.HAProxyProcs == 0 {
			t.Fatalf("%s: no haproxy process below kube-proxy was ever sampled (%d samples)", mode, peak.Samples)
		}
		r.HAProxyHWM, r.HAProxyProcs = peak.HAProxyHWM, peak.HAProxyProcs
	}
	t.Logf("%s: peak RSS kube-proxy %s, HAProxy %s (%d processes at once), %d samples", mode, mib(r.ProxyHWM), mib(r.HAProxyHWM), r.HAProxyProcs, peak.Samples)

	b.stopProxies()
	return r
}

// kubeProxyConfig is the configuration file of node's kube-proxy in the
// current mode: the one the local cluster wrote (haproxy mode), or a copy
// in nftables mode. The copy keeps the haproxy section, so that
// `kube-proxy --cleanup` with it still finds this node's HAProxy state.
func (b *bench) kubeProxyConfig(n *localcluster.Node) string {
	p := filepath.Join(b.c.Opts.Dir, n.Name, "kube-proxy.yaml")
	orig, err := os.ReadFile(p)
	if err != nil {
		b.t.Fatalf("the kube-proxy configuration of %s: %v", n.Name, err)
	}
	if b.mode == localcluster.ModeHAProxy || b.mode == "" {
		return p
	}
	const haproxyMode = "\nmode: " + localcluster.ModeHAProxy + "\n"
	if !strings.Contains(string(orig), haproxyMode) {
		b.t.Fatalf("the kube-proxy configuration of %s has no %q line to change", n.Name, strings.TrimSpace(haproxyMode))
	}
	cfg := strings.Replace(string(orig), haproxyMode, "\nmode: "+b.mode+"\n", 1)
	p = filepath.Join(b.c.Opts.Dir, n.Name, "kube-proxy-"+b.mode+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		b.t.Fatal(err)
	}
	return p
}

// stopProxies stops every node's kube-proxy and removes what it
// programmed with `kube-proxy --cleanup` (HAProxy and its state, routes,
// nftables tables), as after a node reboot: nothing serves a ClusterIP.
func (b *bench) stopProxies() {
	if b.stopWatch != nil {
		close(b.stopWatch)
		<-b.watchDone
		b.stopWatch = nil
	}
	b.proxyPID.Store(0)
	for _, n := range b.c.Nodes {
		n.Proxy.Stop()
		if out, err := n.NS.Exec(b.kubeProxy, "--config="+b.kubeProxyConfig(n), "--cleanup", "--v=2"); err != nil {
			b.t.Fatalf("kube-proxy --cleanup on %s: %v\n%s", n.Name, err, out)
		}
	}
	// HAProxy's processes take a while to end after the cleanup stopped
	// them (a worker frees the memory of every Service first).
	deadline := time.Now().Add(scaled(30*time.Second, b.n, 3*time.Millisecond))
	for _, n := range b.c.Nodes {
		for {
			owned := b.haproxyOf(n)
			if len(owned) == 0 {
				break
			}
			if time.Now().After(deadline) {
				// The next cold start must start from nothing: end them,
				// and say so.
				b.t.Logf("kube-proxy --cleanup on %s left HAProxy running for %v: killing pids %v",
					n.Name, scaled(30*time.Second, b.n, 3*time.Millisecond), owned)
				for _, pid := range owned {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				time.Sleep(time.Second)
				if owned := b.haproxyOf(n); len(owned) > 0 {
					b.t.Fatalf("HAProxy of %s survives SIGKILL: pids %v", n.Name, owned)
				}
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// haproxyOf lists HAProxy processes whose command line names node's state
// directory in this cluster, wherever they are in the process tree (one
// kube-proxy left running is not below any kube-proxy).
func (b *bench) haproxyOf(n *localcluster.Node) []int {
	stateDir := filepath.Join(b.c.Opts.Dir, n.Name, "haproxy") + "/"
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.HasPrefix(filepath.Base(strings.SplitN(string(cmd), "\x00", 2)[0]), "haproxy") {
			continue
		}
		if strings.Contains(string(cmd), stateDir) {
			out = append(out, pid)
		}
	}
	return out
}

// startProxies starts every node's kube-proxy in the current mode and
// returns the time from node1's start to every ClusterIP answering from
// node1's client pod. It then waits until both report healthy.
func (b *bench) startProxies() time.Duration {
	// Nothing may answer before kube-proxy starts, or the cold start
	// would measure nothing.
	if r, err := b.probe("http://" + b.ips[0] + "/"); err == nil {
		b.t.Fatalf("%s answers (from %s) with every kube-proxy stopped and cleaned up", b.ips[0], r.Name)
	}
	b.runs++
	start := time.Now()
	for i, n := range b.c.Nodes {
		// A log of its own per run: earlier runs' logs stay readable.
		n.Proxy = n.NS.Start(fmt.Sprintf("kube-proxy-run%d", b.runs), b.kubeProxy, "--config="+b.kubeProxyConfig(n), "--v=2")
		if i == 0 {
			b.proxyPID.Store(int64(n.Proxy.PID()))
		}
	}
	b.watchProxyLog(b.c.Nodes[0])
	b.waitAll(b.ips, 0, scaled(2*time.Minute, len(b.ips), 30*time.Millisecond))
	took := time.Since(start)
	for _, n := range b.c.Nodes {
		b.waitHealthy(n, scaled(time.Minute, len(b.ips), 10*time.Millisecond))
	}
	return took
}

// proxyRejected is what kube-proxy logs when HAProxy refuses a
// configuration (the last good one, if any, keeps serving).
const proxyRejected = "HAProxy configuration rejected"

// watchProxyLog watches node's kube-proxy log until stopProxies, and
// records the first line saying HAProxy refused a configuration.
func (b *bench) watchProxyLog(n *localcluster.Node) {
	proxy := n.Proxy
	b.stopWatch, b.watchDone = make(chan struct{}), make(chan struct{})
	go func(stop, done chan struct{}) {
		defer close(done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if lines := grepLines(proxy.Log(), proxyRejected, 3); lines != "" {
				msg := fmt.Sprintf("kube-proxy on %s: HAProxy refused the configuration:\n%s", n.Name, lines)
				b.failure.Store(&msg)
				return
			}
		}
	}(b.stopWatch, b.watchDone)
}

// waitHealthy waits until node's kube-proxy answers 200 on /healthz.
func (b *bench) waitHealthy(n *localcluster.Node, timeout time.Duration) {
	url := fmt.Sprintf("http://%s:%d/healthz", n.IP, localcluster.HealthzPort)
	client := n.NS.HTTPClient(2 * time.Second)
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		if ended, err := n.Proxy.Exited(); ended {
			b.t.Fatalf("kube-proxy on %s exited: %v\n%s", n.Name, err, tailLines(n.Proxy.Log(), 30))
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("kube-proxy on %s not healthy after %v (last: %s)\n%s", n.Name, timeout, last, tailLines(n.Proxy.Log(), 30))
		}
		b.checkCtx()
		time.Sleep(250 * time.Millisecond)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (b *bench) checkCtx() {
	if err := b.ctx.Err(); err != nil {
		b.t.Fatalf("interrupted: %v", err)
	}
}

func svcName(i int) string { return fmt.Sprintf("bench-%05d", i) }

// h2cServiceName is the Service of the HTTP/2 data-plane rows.
const h2cServiceName = "bench-h2c"

// h2loadStreams is how many HTTP/2 streams each h2load client keeps open.
const h2loadStreams = 10

func h2loadArgs(cfg config) string {
	return fmt.Sprintf("-c%d -m%d -D %d", cfg.wrkConns, h2loadStreams, int(cfg.wrkDuration.Seconds()))
}

// createWriters is how many Services and slices are written at once:
// enough to keep kube-apiserver and etcd busy on two cores (about 1,000
// objects/s here), whose writes are the limit, not the round trips.
const createWriters = 32

// parallel calls fn(0..n-1) from createWriters goroutines and fails the
// test with every error.
func (b *bench) parallel(n int, fn func(i int) error) {
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range createWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		if b.ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if len(errs) > 5 {
		errs = append(errs[:5], fmt.Errorf("and %d more errors", len(errs)-5))
	}
	if err := errors.Join(errs...); err != nil {
		b.t.Fatal(err)
	}
	b.checkCtx()
}

// createServices creates Services 0..n-1 in parallel and returns their
// ClusterIPs.
func (b *bench) createServices(n int) []string {
	ips := make([]string, n)
	b.parallel(n, func(i int) error {
		ip, err := b.tryCreateService(i, 0)
		ips[i] = ip
		return err
	})
	return ips
}

// resetSlices rewrites, in parallel, every slice that does not list the
// first endpoints pods of pool 0, so a run starts where every run starts.
func (b *bench) resetSlices(endpoints int) {
	var todo []int
	for i, pool := range b.state {
		if pool != 0 || endpoints != b.endpoints {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return
	}
	b.endpoints = endpoints
	t0 := time.Now()
	b.parallel(len(todo), func(j int) error {
		i := todo[j]
		if err := b.tryWriteSlice(svcName(i), 0); err != nil {
			return err
		}
		b.state[i] = 0
		return nil
	})
	b.t.Logf("%d slices rewritten to %d endpoints in %v", len(todo), endpoints, time.Since(t0).Round(time.Millisecond))
}

// deleteService deletes Service i and its slice (there is no garbage
// collector in the local cluster).
func (b *bench) deleteService(i int) {
	name := svcName(i)
	if err := b.client.CoreV1().Services(metav1.NamespaceDefault).Delete(b.ctx, name, metav1.DeleteOptions{}); err != nil {
		b.t.Fatalf("deleting Service %s: %v", name, err)
	}
	if err := b.client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Delete(b.ctx, name+"-bench", metav1.DeleteOptions{}); err != nil {
		b.t.Fatalf("deleting the EndpointSlice of %s: %v", name, err)
	}
}

func (b *bench) createService(i, pool int) string {
	ip, err := b.tryCreateService(i, pool)
	if err != nil {
		b.t.Fatal(err)
	}
	return ip
}

// tryCreateService creates a Service without a selector (the local
// cluster's controller leaves it alone) and its EndpointSlice listing pool.
func (b *bench) tryCreateService(i, pool int) (string, error) {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName(i), Namespace: metav1.NamespaceDefault},
		Spec: v1.ServiceSpec{Ports: []v1.ServicePort{{
			Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(localcluster.PodPorts["http"].Port),
		}}},
	}
	created, err := b.client.CoreV1().Services(svc.Namespace).Create(b.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("creating Service %s: %w", svc.Name, err)
	}
	if _, err := b.client.DiscoveryV1().EndpointSlices(svc.Namespace).Create(b.ctx, b.slice(svc.Name, pool), metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating the EndpointSlice of %s: %w", svc.Name, err)
	}
	return created.Spec.ClusterIP, nil
}

// slice is svc's EndpointSlice listing the first b.endpoints pods of pool, ready, with the
// trigger-time annotation kube-proxy's network programming metric reads.
func (b *bench) slice(svc string, pool int) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: svc + "-bench", Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{
				discovery.LabelServiceName: svc,
				discovery.LabelManagedBy:   benchManagedBy,
			},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().Format(time.RFC3339Nano)},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports: []discovery.EndpointPort{{
			Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(localcluster.PodPorts["http"].Port),
		}},
	}
	for _, p := range b.pools[pool][:b.endpoints] {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{p.IP.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(p.Node.Name),
			TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: metav1.NamespaceDefault, Name: p.Name},
		})
	}
	return s
}

// writeSlice replaces svc's slice with one listing pool.
func (b *bench) writeSlice(svc string, pool int) {
	if err := b.tryWriteSlice(svc, pool); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bench) tryWriteSlice(svc string, pool int) error {
	want := b.slice(svc, pool)
	have, err := b.client.DiscoveryV1().EndpointSlices(want.Namespace).Get(b.ctx, want.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the EndpointSlice of %s: %w", svc, err)
	}
	want.ResourceVersion = have.ResourceVersion
	if _, err := b.client.DiscoveryV1().EndpointSlices(want.Namespace).Update(b.ctx, want, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating the EndpointSlice of %s: %w", svc, err)
	}
	return nil
}

// waitPool sends requests to ip from the client pod, each on a new
// connection, until one is answered by a pod of pool.
func (b *bench) waitPool(ip string, pool int, timeout time.Duration) {
	b.t.Helper()
	if err := b.waitPoolErr(ip, pool, timeout, 2*time.Millisecond); err != nil {
		b.t.Fatal(err)
	}
}

// waitPoolErr is waitPool returning its failure, pausing between probes.
//
// Each connection attempt gives up after probeDialTimeout: a SYN the data
// plane drops (nftables mode before a new Service is programmed) would
// otherwise be retransmitted by the kernel only after a second, and the
// measurement would show TCP's retransmission timer, not kube-proxy.
func (b *bench) waitPoolErr(ip string, pool int, timeout, pause time.Duration) error {
	url := "http://" + ip + "/"
	deadline := time.Now().Add(timeout)
	var last string
	for {
		r, err := b.probe(url)
		if err == nil {
			if p, ok := b.inPool[r.Name]; ok && p == pool {
				return nil
			}
			last = "answered by " + r.Name
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not answered by pool %d after %v (last: %s)", url, pool, timeout, last)
		}
		if err := b.ctx.Err(); err != nil {
			return fmt.Errorf("interrupted: %w", err)
		}
		if f := b.failure.Load(); f != nil {
			return fmt.Errorf("%s: not answered by pool %d: %s", url, pool, *f)
		}
		time.Sleep(pause)
	}
}

// waitAll waits until every ClusterIP in ips is answered by pool, probing
// several at once. A prober waits on one Service at a time, so while
// nothing answers only probeWorkers connection attempts are in flight,
// paced so the probing does not take the CPU kube-proxy needs.
// waitGone waits until the ClusterIP ip no longer answers (refused, reset
// or dropped: each probe gives up after probeDialTimeout).
func (b *bench) waitGone(ip string, timeout time.Duration) {
	b.t.Helper()
	url := "http://" + ip + "/"
	deadline := time.Now().Add(timeout)
	for {
		r, err := b.probe(url)
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: still answered by %s %v after its Service was deleted", url, r.Name, timeout)
		}
		b.checkCtx()
		time.Sleep(2 * time.Millisecond)
	}
}

func (b *bench) waitAll(ips []string, pool int, timeout time.Duration) {
	b.t.Helper()
	const probeWorkers = 8
	deadline := time.Now().Add(timeout)
	work := make(chan string)
	errc := make(chan error, probeWorkers)
	var wg sync.WaitGroup
	for range probeWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ip := range work {
				if err := b.waitPoolErr(ip, pool, time.Until(deadline), 10*time.Millisecond); err != nil {
					errc <- err
					for range work {
					}
					return
				}
			}
		}()
	}
	for _, ip := range ips {
		work <- ip
	}
	close(work)
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.t.Fatal(err)
	}
}

// probeDialTimeout is far above a connection's setup time here (all in
// namespaces of one machine, well under a millisecond) and far below
// TCP's first SYN retransmission (1 s).
const probeDialTimeout = 50 * time.Millisecond

// probe sends one GET on a new connection from the client pod.
func (b *bench) probe(url string) (netns.Reply, error) {
	return b.from.NS.HTTPGetWith(url, netns.HTTPOptions{Timeout: 2 * time.Second, DialTimeout: probeDialTimeout})
}

// metrics returns node1's kube-proxy metrics.
func (b *bench) metrics() string {
	n := b.c.Nodes[0]
	resp, err := n.NS.HTTPClient(5 * time.Second).Get("http://127.0.0.1:10249/metrics")
	if err != nil {
		b.t.Fatalf("reading kube-proxy's metrics on %s: %v", n.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.t.Fatalf("reading kube-proxy's metrics on %s: %s %v", n.Name, resp.Status, err)
	}
	return string(body)
}

// reloads is node1's count of HAProxy reloads and starts, 0 in nftables
// mode.
func (b *bench) reloads() int {
	if b.mode != localcluster.ModeHAProxy {
		return 0
	}
	v, ok := MetricSum(b.metrics(), "kubeproxy_haproxy_reloads_total")
	if !ok {
		b.t.Fatalf("node1's kube-proxy exports no kubeproxy_haproxy_reloads_total")
	}
	return int(v)
}

// settle waits until node1's kube-proxy has applied what came before (no
// reload for 3 s) and returns the reload count: a scenario's reloads are
// then its own, not the tail of the previous one's.
func (b *bench) settle() int {
	timeout := scaled(time.Minute, b.n, 10*time.Millisecond)
	last, quiet := b.reloads(), 0
	for deadline := time.Now().Add(timeout); quiet < 6; {
		if time.Now().After(deadline) {
			b.t.Fatalf("HAProxy on node1 still reloads after %v without changes", timeout)
		}
		b.checkCtx()
		time.Sleep(500 * time.Millisecond)
		now := b.reloads()
		if now != last {
			last, quiet = now, 0
			continue
		}
		quiet++
	}
	return last
}

// grepLines returns the last max lines of log containing substr.
func grepLines(log, substr string, max int) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return strings.Join(out, "\n")
}

// npl returns the sum and count of node1's network programming histogram
// for IPv4 (the benchmark's Services are IPv4 only).
func (b *bench) npl() (float64, float64) {
	text := b.metrics()
	sum, _ := MetricSum(text, "kubeproxy_network_programming_duration_seconds_sum", `ip_family="IPv4"`)
	count, _ := MetricSum(text, "kubeproxy_network_programming_duration_seconds_count", `ip_family="IPv4"`)
	return sum, count
}

// wrk runs wrk in the client pod against url, and measures where the CPU
// went meanwhile.
func (b *bench) wrk(cfg config, d time.Duration, url string, closeEach bool) WrkResult {
	args := []string{"wrk", "-t1", fmt.Sprintf("-c%d", cfg.wrkConns), "-d" + d.String(), "--latency"}
	if closeEach {
		args = append(args, "-H", "Connection: close")
	}
	args = append(args, url)
	out, cpu := b.loadRun(args)
	r, err := ParseWrk(out)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.withCPU(r, cpu, url, out)
}

// h2load runs h2load (HTTP/2 with prior knowledge) in the client pod
// against url, and measures where the CPU went meanwhile.
func (b *bench) h2load(cfg config, url string) WrkResult {
	log := filepath.Join(b.t.TempDir(), "h2load.log")
	args := append([]string{"h2load"}, strings.Fields(h2loadArgs(cfg))...)
	args = append(args, "--log-file="+log, url)
	out, cpu := b.loadRun(args)
	logData, err := os.ReadFile(log)
	if err != nil {
		b.t.Fatal(err)
	}
	r, err := ParseH2load(out, string(logData))
	if err != nil {
		b.t.Fatal(err)
	}
	return b.withCPU(r, cpu, url, out)
}

// loadRun runs a load generator (args) in the client pod and returns
// its output and what each CPU group used meanwhile, in cores.
func (b *bench) loadRun(args []string) (string, map[string]float64) {
	groups := b.cpuGroups()
	before, err := TakeCPUSnapshot("/proc", groups)
	if err != nil {
		b.t.Fatal(err)
	}
	// The generator has ended when the second snapshot is taken: its CPU
	// time is in this process's reaped children's, the only child that
	// ends meanwhile.
	children0 := childrenCPU(b.t)
	t0 := time.Now()
	out, err := b.from.NS.Exec(args...)
	if err != nil {
		b.t.Fatalf("%s: %v\n%s", args[0], err, out)
	}
	wall := time.Since(t0)
	after, err := TakeCPUSnapshot("/proc", groups)
	if err != nil {
		b.t.Fatal(err)
	}
	after[CPUClient] = before[CPUClient] + childrenCPU(b.t) - children0
	return out, CPUCores(before, after, wall)
}

// withCPU is r with the CPU of its run, its errors logged when too many.
func (b *bench) withCPU(r WrkResult, cpu map[string]float64, url, out string) WrkResult {
	if r.TooManyErrors() {
		// Reported with its errors, flagged in the table: a rare reset
		// must not discard every other number of a long run.
		b.t.Logf("%s: %d errors in %d requests, more than %.1f%%; the report flags it:\n%s",
			url, r.Errors, r.Requests, 100*MaxWrkErrorRatio, out)
	}
	r.CPU = cpu
	return r
}

// profile takes a CPU profile of node1's kube-proxy (its /debug/pprof,
// enabled in the local cluster) and writes it to path. net/http/pprof
// takes the length up front and writes nothing for a request cut short,
// so the length is about what the changes take at this scale (10 s plus
// 2 s per 1,000 Services), and the returned function (or b.stopProfile)
// waits for the profile to end; calling it twice does nothing.
func (b *bench) profile(path string) func() {
	seconds := 10 + b.n/500
	done := make(chan struct{})
	go func() {
		defer close(done)
		client := b.c.Nodes[0].NS.HTTPClient(time.Duration(seconds+30) * time.Second)
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:10249/debug/pprof/profile?seconds=%d", seconds))
		if err != nil {
			b.t.Logf("CPU profile of kube-proxy: %v", err)
			return
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.t.Logf("CPU profile of kube-proxy: %s %v", resp.Status, err)
			return
		}
		// BENCH_OUT may not exist yet: the report creates it at the end.
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.t.Logf("CPU profile of kube-proxy: %v", err)
			return
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			b.t.Logf("CPU profile of kube-proxy: %v", err)
			return
		}
		b.t.Logf("CPU profile of kube-proxy (%d s): %s", seconds, path)
	}()
	var once sync.Once
	stop := func() { once.Do(func() { <-done }) }
	b.stopProfile = stop
	return stop
}

// childrenCPU is the CPU seconds of this process's ended children.
func childrenCPU(t *testing.T) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// cpuGroups maps each CPU group to the network namespaces of its
// processes.
func (b *bench) cpuGroups() map[string][]uint64 {
	g := map[string][]uint64{CPUNode: {b.nsInode(b.c.Nodes[0].NS.Name)}}
	for _, pool := range b.pools {
		for _, p := range pool {
			g[CPUPods] = append(g[CPUPods], b.nsInode(p.NS.Name))
		}
	}
	return g
}

// nsInode is the inode of a named network namespace, as /proc/PID/ns/net
// links show it.
func (b *bench) nsInode(name string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", name), &st); err != nil {
		b.t.Fatalf("network namespace %s: %v", name, err)
	}
	return st.Ino
}

// roundAll returns ds rounded to m.
func roundAll(ds []time.Duration, m time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(m)
	}
	return out
}
