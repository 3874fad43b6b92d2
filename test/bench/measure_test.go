package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

	_, err = ParseWrk("unable to connect to 10.96.0.10:80 Connection refused\n")
	require.Error(t, err)

	d, err := parseWrkDuration("1.50m")
	require.NoError(t, err)
	require.Equal(t, 90*time.Second, d)
}

func TestCheckScale(t *testing.T) {
	require.NoError(t, CheckScale(100, 20<<30))
	require.NoError(t, CheckScale(1000, 20<<30))
	err := CheckScale(10000, 2<<30)
	require.ErrorContains(t, err, "available memory")
	require.ErrorContains(t, CheckScale(MaxServices+1, 1<<40), "not supported")
	require.Error(t, CheckScale(0, 1<<40))
}

func TestReportRatiosAndMissingValues(t *testing.T) {
	meta := Meta{Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), CPUs: 2, MemTotal: 24 << 30,
		KubeProxy: "Kubernetes v1.36.3-haproxy.1", HAProxy: "HAProxy version 2.6.12", Kernel: "6.1", Command: "make bench", WrkArgs: "-t1"}
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	runs := []Run{
		{Mode: ModeNFTables, Services: 100, Endpoints: 4, InitialSync: 2 * time.Second,
			EndpointChange: ms(100, 200), NewService: ms(300), ProxyHWM: 100 << 20,
			Wrk: map[WrkKey]WrkResult{{TargetClusterIP, ConnKeepAlive}: {RequestsPerSec: 1000, P50: time.Millisecond, P99: 2 * time.Millisecond},
				{TargetDirect, ConnKeepAlive}: {RequestsPerSec: 1200, P50: time.Millisecond, P99: 2 * time.Millisecond}}},
		{Mode: ModeHAProxy, Services: 100, Endpoints: 4, InitialSync: time.Second,
			EndpointChange: ms(50, 100), NewService: ms(600), HasReloads: true, ReloadsNewService: 1,
			ProxyHWM: 100 << 20, HAProxyHWM: 50 << 20, HAProxyProcs: 2, NPLMean: 40 * time.Millisecond, NPLCount: 2,
			Wrk: map[WrkKey]WrkResult{{TargetClusterIP, ConnKeepAlive}: {RequestsPerSec: 500, P50: 2 * time.Millisecond, P99: 4 * time.Millisecond}}},
	}
	out := Report(meta, runs)
	for _, want := range []string{
		"## 100 Services × 4 endpoints",
		"| initial sync: first Service created → last ClusterIP answering | 1000.0 ms | 2000.0 ms | 0.50× |",
		"p50 (2 changes) | 50.0 ms | 100.0 ms | 0.50× |",
		"p99 (2 changes) | 100.0 ms | 200.0 ms | 0.50× |",
		"mean over the endpoint changes (node1) | 40.0 ms (2 obs.) | – | – |",
		"p50 (1 Services) | 600.0 ms | 300.0 ms | 2.00× |",
		"| HAProxy reloads during the new Services (node1) | 1 | – | – |",
		"| kube-proxy + HAProxy, peak RSS (node1) | 150.0 MiB | 100.0 MiB | 1.50× |",
		"| keep-alive | requests/s | 500 | 1000 | 1200 | 0.50× |",
		"| new connection per request | requests/s | – | – | – | – |",
		"Kubernetes v1.36.3-haproxy.1",
		"2 CPUs, 24.0 GiB",
	} {
		require.Contains(t, out, want)
	}
}
