package apply

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/internal/haproxytest"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/supervisor"
)

// benchModel is a model of services Services with endpoints endpoints
// each; variant moves one endpoint of the first Service to another port,
// so two variants differ by one endpoint (one removal, one addition).
func benchModel(services, endpoints, variant int) *haproxycfg.Config {
	c := &haproxycfg.Config{Global: haproxycfg.Global{StatsSocket: "/run/kh/haproxy.sock"}, Defaults: haproxycfg.Defaults{TimeoutConnect: time.Second}}
	for i := 0; i < services; i++ {
		name := fmt.Sprintf("ns.svc%d:http", i)
		c.Frontends = append(c.Frontends, &haproxycfg.Frontend{Name: "fe:" + name,
			Binds:          []haproxycfg.Bind{{Name: "cip", Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80}},
			DefaultBackend: "be:" + name})
		be := &haproxycfg.Backend{Name: "be:" + name}
		for j := 0; j < endpoints; j++ {
			addr := netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)})
			port := uint16(8000 + j)
			if i == 0 && j == 0 {
				port = uint16(9000 + variant%100)
			}
			be.Servers = append(be.Servers, haproxycfg.Server{Name: haproxycfg.ServerName(addr, port), Addr: addr, Port: port})
		}
		c.Backends = append(c.Backends, be)
	}
	return c
}

// withFirstBackendOf is base with the first backend of other: the objects
// of the other Services are base's, as the proxier's translate.Translator
// keeps the objects of unchanged service ports from one sync to the next.
func withFirstBackendOf(base, other *haproxycfg.Config) *haproxycfg.Config {
	c := *base
	c.Backends = append([]*haproxycfg.Backend{other.Backends[0]}, base.Backends[1:]...)
	return &c
}

// BenchmarkEndpointChange measures one endpoint change of one Service
// among many Services of 10 endpoints each: the cost of a sync that goes
// through the runtime API (here the Fake), without a reload.
func BenchmarkEndpointChange(b *testing.B) {
	for _, services := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", services), func(b *testing.B) {
			benchEndpointChange(b, services, 10)
		})
	}
}

func benchEndpointChange(b *testing.B, services, endpoints int) {
	dir := b.TempDir()
	api := runtimeapi.NewFake()
	timed := &timedRuntime{Interface: api}
	proc := &fakeHAProxy{t: &testing.T{}, file: filepath.Join(dir, "haproxy.cfg"), api: api}
	a, err := New(Options{ConfigFile: proc.file, Runtime: timed, Process: proc, Families: []v1.IPFamily{v1.IPv4Protocol},
		Validate: func(context.Context, string) error { return nil }, Logger: klog.Background().V(10)})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Stop()
	if err := a.Apply(context.Background(), v1.IPv4Protocol, benchModel(services, endpoints, 0)); err != nil {
		b.Fatal(err)
	}
	base := benchModel(services, endpoints, 0)
	models := []*haproxycfg.Config{withFirstBackendOf(base, benchModel(services, endpoints, 1)), withFirstBackendOf(base, benchModel(services, endpoints, 2))}
	b.ReportAllocs()
	b.ResetTimer()
	var toRuntime time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := a.Apply(context.Background(), v1.IPv4Protocol, models[i%2]); err != nil {
			b.Fatal(err)
		}
		toRuntime += timed.lastRun.Sub(start)
	}
	b.StopTimer()
	// The delay a user sees: from the sync to the runtime commands.
	b.ReportMetric(float64(toRuntime.Milliseconds())/float64(b.N), "ms-to-runtime/op")
	if proc.reloads != 0 {
		b.Fatalf("%d reloads", proc.reloads)
	}
}

// timedRuntime records when the last batch of commands was sent.
type timedRuntime struct {
	runtimeapi.Interface
	lastRun time.Time
}

func (t *timedRuntime) Run(ctx context.Context, b *runtimeapi.Batch) error {
	t.lastRun = time.Now()
	return t.Interface.Run(ctx, b)
}

// BenchmarkRealEndpointChange is BenchmarkEndpointChange against a real
// HAProxy (runtime API over its socket, text answers parsed); each
// Service listens on its own 127.1.x.y address.
func BenchmarkRealEndpointChange(b *testing.B) {
	for _, services := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", services), func(b *testing.B) {
			benchRealEndpointChange(b, services, 10)
		})
	}
}

func benchRealEndpointChange(b *testing.B, services, endpoints int) {
	bin := haproxytest.Binary(b)
	// Not b.TempDir(): the benchmark's name has a '=', which a socket
	// path in haproxy.cfg may not.
	dir, err := os.MkdirTemp("", "kh-bench")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	logger := klog.Background().V(10)
	sup := supervisor.New(supervisor.Options{
		Binary:       bin,
		ConfigFile:   filepath.Join(dir, "haproxy.cfg"),
		MasterSocket: filepath.Join(dir, "master.sock"),
		PIDFile:      filepath.Join(dir, "haproxy.pid"),
		Managed:      true,
	}, logger)
	defer sup.Stop(context.Background(), 10*time.Second)
	timed := &timedRuntime{Interface: runtimeapi.New(filepath.Join(dir, "haproxy.sock"))}
	a, err := New(Options{ConfigFile: filepath.Join(dir, "haproxy.cfg"), Binary: bin, Runtime: timed, Process: sup,
		Families: []v1.IPFamily{v1.IPv4Protocol}, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Stop()
	model := func(variant int) *haproxycfg.Config {
		c := benchModel(services, endpoints, variant)
		c.Global = haproxycfg.Global{StatsSocket: filepath.Join(dir, "haproxy.sock"), MaxConn: 2000, NBThread: 1}
		for i, fe := range c.Frontends {
			fe.Binds[0].Addr = netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)})
			fe.Binds[0].Port = port
		}
		return c
	}
	if err := a.Apply(context.Background(), v1.IPv4Protocol, model(0)); err != nil {
		b.Fatal(err)
	}
	base := model(0)
	models := []*haproxycfg.Config{withFirstBackendOf(base, model(1)), withFirstBackendOf(base, model(2))}
	b.ReportAllocs()
	b.ResetTimer()
	var toRuntime time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := a.Apply(context.Background(), v1.IPv4Protocol, models[i%2]); err != nil {
			b.Fatal(err)
		}
		toRuntime += timed.lastRun.Sub(start)
	}
	b.StopTimer()
	b.ReportMetric(float64(toRuntime.Milliseconds())/float64(b.N), "ms-to-runtime/op")
	if n := a.Reloads(); n != 1 {
		b.Fatalf("%d reloads and starts, want the first start only", n)
	}
}
