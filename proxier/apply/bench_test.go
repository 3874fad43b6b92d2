package apply

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
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
	models := []*haproxycfg.Config{benchModel(services, endpoints, 1), benchModel(services, endpoints, 2)}
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
