package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPercentileNearestRank(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	require.Equal(t, 50*time.Millisecond, Percentile(ds, 50))
	require.Equal(t, 99*time.Millisecond, Percentile(ds, 99))
	require.Equal(t, 100*time.Millisecond, Percentile(ds, 100))
	require.Equal(t, 3*time.Millisecond, Percentile([]time.Duration{3 * time.Millisecond}, 99))
	require.Equal(t, time.Duration(0), Percentile(nil, 50))
	// The input is not reordered.
	require.Equal(t, 100*time.Millisecond, ds[0])
}

// fakeProc writes the /proc files Descendants and ProcHWM read.
func fakeProc(t *testing.T, procs map[int]struct {
	ppid int
	comm string
	hwm  int
}) string {
	root := t.TempDir()
	for pid, p := range procs {
		dir := filepath.Join(root, itoa(pid))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		stat := itoa(pid) + " (" + p.comm + ") S " + itoa(p.ppid) + " 1 1 0 -1\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644))
		status := "Name:\t" + p.comm + "\nVmPeak:\t  999 kB\nVmHWM:\t" + itoa(p.hwm) + " kB\nVmRSS:\t 1 kB\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "meminfo"), []byte("MemTotal:       24000000 kB\nMemAvailable:   2000000 kB\n"), 0o644))
	return root
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestDescendantsAndHWM(t *testing.T) {
	root := fakeProc(t, map[int]struct {
		ppid int
		comm string
		hwm  int
	}{
		10: {1, "kube-proxy", 70000},
		11: {10, "haproxy", 9000},     // master
		12: {11, "haproxy", 12000},    // worker
		13: {11, "haproxy", 11000},    // old worker still draining
		14: {10, "ip", 100},           // not haproxy
		20: {1, "haproxy", 50000},     // another node's HAProxy: not below 10
		21: {14, "odd) name (x", 100}, // parentheses in comm
	})
	pids, err := Descendants(root, 10, "haproxy")
	require.NoError(t, err)
	require.Equal(t, []int{11, 12, 13}, pids)
	hwm, err := ProcHWM(root, 12)
	require.NoError(t, err)
	require.Equal(t, int64(12000*1024), hwm)
	_, err = ProcHWM(root, 99)
	require.Error(t, err)
	odd, err := Descendants(root, 14, "odd) name (x")
	require.NoError(t, err)
	require.Equal(t, []int{21}, odd)

	avail, err := MemAvailable(root)
	require.NoError(t, err)
	require.Equal(t, int64(2000000*1024), avail)
}

func TestMetricSum(t *testing.T) {
	text := `# HELP kubeproxy_haproxy_reloads_total x
# TYPE kubeproxy_haproxy_reloads_total counter
kubeproxy_haproxy_reloads_total{result="success"} 7
kubeproxy_haproxy_reloads_total{result="failed"} 1
kubeproxy_haproxy_reloads_total_other 100
kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"} 1.5
kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv6"} 9
kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"} 3
plain 2.5e+00
`
	v, ok := MetricSum(text, "kubeproxy_haproxy_reloads_total")
	require.True(t, ok)
	require.Equal(t, 8.0, v)
	v, ok = MetricSum(text, "kubeproxy_haproxy_reloads_total", `result="success"`)
	require.True(t, ok)
	require.Equal(t, 7.0, v)
	v, ok = MetricSum(text, "kubeproxy_network_programming_duration_seconds_sum", `ip_family="IPv4"`)
	require.True(t, ok)
	require.Equal(t, 1.5, v)
	v, ok = MetricSum(text, "plain")
	require.True(t, ok)
	require.Equal(t, 2.5, v)
	_, ok = MetricSum(text, "absent")
	require.False(t, ok)
}

const wrkOutput = `Running 5s test @ http://10.96.0.10/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.52ms    2.10ms  30.01ms   80.00%
    Req/Sec     3.70k   200.00     4.00k    70.00%
  Latency Distribution
     50%    4.40ms
     75%    5.00ms
     90%    6.00ms
     99%  512.00us
  18470 requests in 5.00s, 2.50MB read
Requests/sec:   3694.12
Transfer/sec:    512.00KB
`

func TestParseWrk(t *testing.T) {
	r, err := ParseWrk(wrkOutput)
	require.NoError(t, err)
	require.InDelta(t, 3694.12, r.RequestsPerSec, 1e-9)
	require.Equal(t, 4400*time.Microsecond, r.P50)
	require.Equal(t, 512*time.Microsecond, r.P99)
	require.Zero(t, r.Errors)

	withErrors := strings.Replace(wrkOutput, "Requests/sec:", "  Socket errors: connect 2, read 3, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:", 1)
	r, err = ParseWrk(withErrors)
	require.NoError(t, err)
	require.Equal(t, 10, r.Errors)
	require.Equal(t, 18470, r.Requests)
	// 10 in 18,480 is less than one in a thousand: the network, not a
	// broken data plane; 5 in 1,005 is more.
	require.False(t, r.TooManyErrors())
	require.True(t, WrkResult{Requests: 1000, Errors: 5}.TooManyErrors())
	require.False(t, WrkResult{Requests: 13349, Errors: 2}.TooManyErrors())
	require.True(t, WrkResult{Requests: 0, Errors: 1}.TooManyErrors())

	_, err = ParseWrk("unable to connect to 10.96.0.10:80 Connection refused\n")
	require.Error(t, err)

	d, err := parseWrkDuration("1.50m")
	require.NoError(t, err)
	require.Equal(t, 90*time.Second, d)
}

func TestCheckScale(t *testing.T) {
	require.NoError(t, CheckScale(100, 10, 20<<30))
	require.NoError(t, CheckScale(1000, 10, 20<<30))
	// The largest default scale fits this kind of machine (24 GiB)...
	require.NoError(t, CheckScale(10000, 10, 22<<30))
	// ... and not one with a few GiB free, with a message that says why.
	err := CheckScale(10000, 10, 4<<30)
	require.ErrorContains(t, err, "available memory")
	require.ErrorContains(t, err, "10000 × 10 endpoints")
	// More endpoints cost more.
	require.Greater(t, EstimateBytes(1000, 10), EstimateBytes(1000, 2))
	require.ErrorContains(t, CheckScale(MaxServices+1, 2, 1<<40), "not supported")
	require.Error(t, CheckScale(0, 2, 1<<40))
}

func TestPeakConcurrent(t *testing.T) {
	// A master (1) and worker (2); a reload forks worker 3, and worker 2
	// is gone by the next sample; then kube-proxy restarts HAProxy from
	// scratch much later (4, 5), bigger but never beside 1-3.
	samples := []map[int]int64{
		{1: 10, 2: 100},
		{1: 10, 2: 120},
		{1: 10, 3: 90},  // 2 drained between samples: still counted here
		{1: 10, 3: 130}, // 3 grew: its largest VmHWM counts throughout
		nil,             // kube-proxy stopped: nothing sampled
		nil,
		{4: 12},
		{4: 12, 5: 200},
	}
	peak, procs := PeakConcurrent(samples)
	// max(10+120+130 at sample 2, 12+200 at sample 7) = 260 with 3 processes.
	require.Equal(t, int64(260), peak)
	require.Equal(t, 3, procs)

	peak, procs = PeakConcurrent(nil)
	require.Zero(t, peak)
	require.Zero(t, procs)
}

func TestMemSamplerFollowsRestartedRoot(t *testing.T) {
	root := fakeProc(t, map[int]struct {
		ppid int
		comm string
		hwm  int
	}{
		10: {1, "kube-proxy", 70000},
		11: {10, "haproxy", 9000},
		12: {11, "haproxy", 12000},
		20: {1, "kube-proxy", 80000}, // the restarted kube-proxy
		21: {20, "haproxy", 8000},
	})
	var pid atomic.Int64
	pid.Store(10)
	s := StartMemSampler(root, func() int { return int(pid.Load()) }, time.Millisecond)
	// The sampler samples once at start; a restart moves it to pid 20.
	require.Eventually(t, func() bool { return len(s.samplesSoFar()) >= 2 }, 5*time.Second, time.Millisecond)
	pid.Store(20)
	n := len(s.samplesSoFar())
	require.Eventually(t, func() bool { return len(s.samplesSoFar()) >= n+2 }, 5*time.Second, time.Millisecond)
	peak, err := s.Stop()
	require.NoError(t, err)
	require.Equal(t, int64(80000*1024), peak.ProxyHWM)
	// 11 and 12 alive together; 21 alone later (and one sample after its
	// processes' last, 11 and 12 may overlap 21: never more than the three).
	require.GreaterOrEqual(t, peak.HAProxyHWM, int64((9000+12000)*1024))
	require.LessOrEqual(t, peak.HAProxyHWM, int64((9000+12000+8000)*1024))

	// A root that never existed: no number rather than a zero.
	s = StartMemSampler(root, func() int { return 99 }, time.Millisecond)
	_, err = s.Stop()
	require.Error(t, err)
}

func msList(ns ...int) []time.Duration {
	out := make([]time.Duration, len(ns))
	for i, n := range ns {
		out[i] = time.Duration(n) * time.Millisecond
	}
	return out
}

var testMeta = Meta{Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), CPUs: 2, MemTotal: 24 << 30,
	KubeProxy: "Kubernetes v1.36.3-haproxy.1", HAProxy: "HAProxy version 2.6.12", Kernel: "6.1", Command: "make bench", WrkArgs: "-t1"}

func TestReportRatiosAndMissingValues(t *testing.T) {
	runs := []Run{
		{Pass: PassLatency, Mode: ModeNFTables, Services: 100, Endpoints: 4, ColdStart: 2 * time.Second, Sweep: 100 * time.Millisecond,
			EndpointChange: msList(100, 200), NewService: msList(300), ProxyHWM: 100 << 20,
			Wrk: map[WrkKey]WrkResult{{TargetClusterIP, ConnKeepAlive}: {RequestsPerSec: 1000, P50: time.Millisecond, P99: 2 * time.Millisecond},
				{TargetDirect, ConnKeepAlive}: {RequestsPerSec: 1200, P50: time.Millisecond, P99: 2 * time.Millisecond}}},
		{Pass: PassLatency, Mode: ModeHAProxy, Services: 100, Endpoints: 4, ColdStart: time.Second, Sweep: 100 * time.Millisecond,
			EndpointChange: msList(50, 100), NewService: msList(600), HasReloads: true, ReloadsNewService: 1,
			ProxyHWM: 100 << 20, HAProxyHWM: 50 << 20, HAProxyProcs: 2, NPLMean: 40 * time.Millisecond, NPLCount: 2,
			Wrk: map[WrkKey]WrkResult{{TargetClusterIP, ConnKeepAlive}: {RequestsPerSec: 500, P50: 2 * time.Millisecond, P99: 4 * time.Millisecond,
				CPU: map[string]float64{CPUNode: 1.25, CPUClient: 0.5, CPUTotal: 1.98}}}},
		{Pass: PassMemory, Mode: ModeHAProxy, Services: 1000, Endpoints: 2, ColdStart: 3 * time.Second, NewService: msList(700),
			HasReloads: true, ReloadsNewService: 1, ProxyHWM: 200 << 20, HAProxyHWM: 100 << 20, HAProxyProcs: 3},
	}
	out := Report(testMeta, runs, []Figure{{File: FigMemory, Title: "Peak RSS"}}, "plots/")
	for _, want := range []string{
		"## 100 Services × 4 endpoints\n",
		"| cold start: kube-proxy started → every ClusterIP answers | 1000.0 ms | 2000.0 ms | 0.50× |",
		"p50 (2 changes) | 50.0 ms | 100.0 ms | 0.50× |",
		"p99 (2 changes) | 100.0 ms | 200.0 ms | 0.50× |",
		"mean over the endpoint changes (node1) | 40.0 ms (2 obs.) | – | – |",
		"p50 (1 Services) | 600.0 ms | 300.0 ms | 2.00× |",
		"| HAProxy reloads during the new Services (node1; must be 0) | 1 | – | – |",
		"| kube-proxy + HAProxy, peak RSS (node1) | 150.0 MiB | 100.0 MiB | 1.50× |",
		"| keep-alive | requests/s | 500 | 1000 | 1200 | 0.50× |",
		"| new connection per request | requests/s | – | – | – | – |",
		"CPU while wrk ran, in cores (of 2)",
		"| keep-alive, haproxy mode ClusterIP | 1.25 | 0.50 | 0.00 | 0.00 | 1.98 |",
		// The memory pass: its own table, without rows it did not measure.
		"## 1000 Services × 2 endpoints: cold start and memory\n",
		"| cold start: kube-proxy started → every ClusterIP answers | 3000.0 ms | – | – |",
		"(node1; master + workers) | 100.0 MiB (3 processes) | – | – |",
		"| kube-proxy + HAProxy, peak RSS (node1) | 300.0 MiB | – | – |",
		"![Peak RSS](plots/memory.png)",
		"Kubernetes v1.36.3-haproxy.1",
		"2 CPUs, 24.0 GiB",
	} {
		require.Contains(t, out, want)
	}
	// The latency tables come first, and the memory pass has no endpoint
	// change rows.
	require.Less(t, strings.Index(out, "100 Services × 4"), strings.Index(out, "1000 Services × 2"))
	_, memTable, _ := strings.Cut(out, "1000 Services × 2 endpoints")
	require.NotContains(t, memTable, "endpoint change")
}

func TestCPUSnapshotByNamespace(t *testing.T) {
	root := t.TempDir()
	proc := func(pid, ns int, utime, stime int) {
		dir := filepath.Join(root, itoa(pid))
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "ns"), 0o755))
		require.NoError(t, os.Symlink("net:["+itoa(ns)+"]", filepath.Join(dir, "ns", "net")))
		// Fields after comm: state ppid pgrp session tty tpgid flags minflt
		// cminflt majflt cmajflt utime stime ...
		stat := itoa(pid) + " (x y) S 1 1 1 0 -1 0 0 0 0 0 " + itoa(utime) + " " + itoa(stime) + " 0 0 20 0 1\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644))
	}
	proc(10, 100, 300, 100) // node1: 4 s
	proc(11, 100, 50, 50)   // node1: 1 s
	proc(20, 200, 200, 0)   // client: 2 s
	proc(30, 300, 100, 0)   // a pod: 1 s
	proc(31, 301, 100, 100) // another pod: 2 s
	proc(40, 999, 1000, 0)  // not ours
	// cpu user nice system idle iowait irq softirq steal guest guest_nice
	stat := "cpu  1000 0 500 8000 100 0 250 0 40 0\ncpu0 1 2 3\n"
	require.NoError(t, os.WriteFile(filepath.Join(root, "stat"), []byte(stat), 0o644))

	snap, err := TakeCPUSnapshot(root, map[string][]uint64{CPUNode: {100}, CPUClient: {200}, CPUPods: {300, 301}})
	require.NoError(t, err)
	require.InDelta(t, 5.0, snap[CPUNode], 1e-9)
	require.InDelta(t, 2.0, snap[CPUClient], 1e-9)
	require.InDelta(t, 3.0, snap[CPUPods], 1e-9)
	require.InDelta(t, 2.5, snap[CPUSoftIRQ], 1e-9)
	// Busy: user+nice+system+irq+softirq+steal = 1750 jiffies; guest is
	// part of user already.
	require.InDelta(t, 17.5, snap[CPUTotal], 1e-9)

	later := CPUSnapshot{CPUNode: 7, CPUClient: 3, CPUPods: 3, CPUSoftIRQ: 2.5, CPUTotal: 21.5}
	cores := CPUCores(snap, later, 2*time.Second)
	require.InDelta(t, 1.0, cores[CPUNode], 1e-9)
	require.InDelta(t, 0.5, cores[CPUClient], 1e-9)
	require.InDelta(t, 0.0, cores[CPUPods], 1e-9)
	require.InDelta(t, 2.0, cores[CPUTotal], 1e-9)
}

func TestParseH2load(t *testing.T) {
	out := `starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration for measurements.
finished in 5.00s, 26788.40 req/s, 1.95MB/s
requests: 133942 total, 133942 started, 133942 done, 133940 succeeded, 2 failed, 0 errored, 1 timeout
status codes: 133940 2xx, 0 3xx, 0 4xx, 2 5xx
`
	log := "1700000000000000\t200\t1000\n1700000000000100\t200\t2000\n1700000000000200\t503\t3000\n"
	r, err := ParseH2load(out, log)
	require.NoError(t, err)
	require.InDelta(t, 26788.40, r.RequestsPerSec, 1e-9)
	require.Equal(t, 133940, r.Requests)
	require.Equal(t, 3, r.Errors)
	require.Equal(t, 2*time.Millisecond, r.P50)
	require.Equal(t, 3*time.Millisecond, r.P99)

	_, err = ParseH2load("no summary", log)
	require.Error(t, err)
	_, err = ParseH2load(out, "")
	require.Error(t, err)
}
