package apply

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/supervisor"
)

// benchEndpoints is the number of endpoints of every Service port.
const benchEndpoints = 10

// benchPort is Service port n with benchEndpoints endpoints; variant
// moves its first endpoint to another port, so two variants differ by
// one endpoint (one entry changed).
func benchPort(n, variant int) *haproxycfg.ServicePort {
	eps := make([]string, benchEndpoints)
	for j := range eps {
		port := 8000 + j
		if j == 0 {
			port = 9000 + variant%100
		}
		eps[j] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(1 + n>>16), byte(n >> 8), byte(n)}), uint16(port)).String()
	}
	return port(n, eps...)
}

// benchApplier is an Applier serving a model of services Service ports,
// on the Fake or a real HAProxy, with what the benchmark needs.
type benchApplier struct {
	a     *Applier
	model func(ports []*haproxycfg.ServicePort) *haproxycfg.Config
	// runs counts the batches sent.
	runs     *countingRun
	reloads  func() int
	baseline []*haproxycfg.ServicePort
}

// countingRun counts batches and commands.
type countingRun struct {
	runtimeapi.Interface
	batches, commands int
}

func (c *countingRun) Run(ctx context.Context, b *runtimeapi.Batch) error {
	c.batches++
	c.commands += b.Len()
	return c.Interface.Run(ctx, b)
}

func benchDir(b *testing.B) string {
	b.Helper()
	// Not b.TempDir(): the benchmark's name has a '=', which paths in
	// haproxy.cfg may not.
	dir, err := os.MkdirTemp("", "kh-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newFakeBench(b *testing.B, services int) *benchApplier {
	dir := benchDir(b)
	api := runtimeapi.NewFake()
	proc := &fakeHAProxy{file: filepath.Join(dir, "haproxy.cfg"), api: api}
	runs := &countingRun{Interface: api}
	a, err := New(Options{ConfigFile: proc.file, Runtime: runs, Process: proc, Families: []v1.IPFamily{v1.IPv4Protocol},
		Validate: func(context.Context, string) error { return nil }, Logger: klog.Background().V(10)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(a.Stop)
	return startBench(b, &benchApplier{
		a:       a,
		model:   func(ports []*haproxycfg.ServicePort) *haproxycfg.Config { return modelIn(dir, ports...) },
		runs:    runs,
		reloads: func() int { return proc.reloads },
	}, services)
}

func newRealBench(b *testing.B, services int) *benchApplier {
	netns.Require(b)
	bin := haproxytest.Binary(b)
	dir := benchDir(b)
	logger := klog.Background().V(10)
	sup := supervisor.New(supervisor.Options{
		Binary:       bin,
		ConfigFile:   filepath.Join(dir, "haproxy.cfg"),
		MasterSocket: filepath.Join(dir, "master.sock"),
		PIDFile:      filepath.Join(dir, "haproxy.pid"),
		Managed:      true,
	}, logger)
	b.Cleanup(func() { sup.Stop(context.Background(), 10*time.Second) })
	runs := &countingRun{Interface: runtimeapi.New(filepath.Join(dir, "haproxy.sock"))}
	a, err := New(Options{ConfigFile: filepath.Join(dir, "haproxy.cfg"), Binary: bin, Runtime: runs, Process: sup,
		Families: []v1.IPFamily{v1.IPv4Protocol}, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(a.Stop)
	listen := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(b))
	master := runtimeapi.NewMaster(filepath.Join(dir, "master.sock"))
	return startBench(b, &benchApplier{
		a: a,
		model: func(ports []*haproxycfg.ServicePort) *haproxycfg.Config {
			c := modelIn(dir, ports...)
			c.Global = haproxycfg.Global{StatsSocket: filepath.Join(dir, "haproxy.sock"), MaxConn: 2000, NBThread: 1}
			c.Dispatchers[0].Listen = listen
			return c
		},
		runs: runs,
		reloads: func() int {
			info, err := master.ShowProc(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			return info.Reloads
		},
	}, services)
}

// startBench applies the baseline model of services Service ports.
func startBench(b *testing.B, ba *benchApplier, services int) *benchApplier {
	b.Helper()
	ba.baseline = make([]*haproxycfg.ServicePort, services)
	for i := range ba.baseline {
		ba.baseline[i] = benchPort(i, 0)
	}
	ba.apply(b, ba.baseline)
	return ba
}

func (ba *benchApplier) apply(b *testing.B, ports []*haproxycfg.ServicePort) {
	if err := ba.a.Apply(context.Background(), v1.IPv4Protocol, ba.model(ports)); err != nil {
		b.Fatal(err)
	}
}

// done reports the commands per operation and checks that no operation
// cost a reload.
func (ba *benchApplier) done(b *testing.B, ops int) {
	b.ReportMetric(float64(ba.runs.commands)/float64(ops), "commands/op")
	if n := ba.reloads(); n != 0 {
		b.Fatalf("%d reloads", n)
	}
	if n := ba.a.Reloads(); n != 1 {
		b.Fatalf("%d reloads and starts, want the first start only", n)
	}
}

// benchNewService measures a sync that adds one Service port (of 10
// endpoints) to services others; the Service is deleted again between
// operations, untimed, so every operation adds to the same number.
func benchNewService(b *testing.B, ba *benchApplier) {
	services := len(ba.baseline)
	with := append(ba.baseline[:services:services], nil)
	ba.runs.commands = 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		with[services] = benchPort(services+1+i%1000, 0)
		ba.apply(b, with)
		b.StopTimer()
		ba.apply(b, ba.baseline)
		b.StartTimer()
	}
	b.StopTimer()
	ba.done(b, 2*b.N)
}

// benchEndpointChange measures a sync that changes one endpoint of one
// Service port among services; the other Service ports are the same
// objects, as the proxier's translation keeps them.
func benchEndpointChange(b *testing.B, ba *benchApplier) {
	models := [2][]*haproxycfg.ServicePort{}
	for v := range models {
		models[v] = append([]*haproxycfg.ServicePort{benchPort(0, v+1)}, ba.baseline[1:]...)
	}
	ba.runs.commands = 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ba.apply(b, models[i%2])
	}
	b.StopTimer()
	ba.done(b, b.N)
}

var benchScales = []int{1000, 10000}

// BenchmarkNewService: one new Service port among 1,000 and 10,000, on
// the Fake runtime API (the applier's own cost, map files included).
func BenchmarkNewService(b *testing.B) {
	for _, n := range benchScales {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { benchNewService(b, newFakeBench(b, n)) })
	}
}

// BenchmarkEndpointChange: one endpoint of one Service port among 1,000
// and 10,000, on the Fake runtime API.
func BenchmarkEndpointChange(b *testing.B) {
	for _, n := range benchScales {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { benchEndpointChange(b, newFakeBench(b, n)) })
	}
}

// BenchmarkRealNewService is BenchmarkNewService against a real HAProxy:
// the runtime API over its socket, no reload.
func BenchmarkRealNewService(b *testing.B) {
	for _, n := range benchScales {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { benchNewService(b, newRealBench(b, n)) })
	}
}

// BenchmarkRealEndpointChange is BenchmarkEndpointChange against a real
// HAProxy.
func BenchmarkRealEndpointChange(b *testing.B) {
	for _, n := range benchScales {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { benchEndpointChange(b, newRealBench(b, n)) })
	}
}
