package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
)

// tuneVariant is one HAProxy setting tried by TestTune: lines replaced in
// or added to the global and defaults sections of the rendered
// configuration.
type tuneVariant struct {
	name     string
	nbthread int // 0: as rendered
	global   []string
	defaults []string
}

var tuneVariants = []tuneVariant{
	{name: "as rendered (nbthread 2)"},
	{name: "nbthread 1", nbthread: 1},
	{name: "option splice-auto", defaults: []string{"option splice-auto"}},
	{name: "tune.bufsize 65536", global: []string{"tune.bufsize 65536"}},
	{name: "nbthread 1 + option splice-auto", nbthread: 1, defaults: []string{"option splice-auto"}},
	{name: "tune.maxaccept 16 + tune.maxpollevents 64", global: []string{"tune.maxaccept 16", "tune.maxpollevents 64"}},
}

// TestTune tries HAProxy settings on the data plane of the benchmark: one
// Service of ENDPOINTS endpoints in haproxy mode, node1's rendered
// haproxy.cfg edited by hand and HAProxy reloaded through its master
// socket for each variant, wrk as in TestBench, twice per variant in
// alternating order. It also reports the CPU HAProxy's processes and the
// whole machine used while wrk ran. Run with KH_BENCH_TUNE=1 (see the
// Tuning section of docs/benchmarks.md); it changes nothing in the repo.
func TestTune(t *testing.T) {
	if os.Getenv("KH_BENCH_TUNE") != "1" {
		t.Skip("opt-in: set KH_BENCH_TUNE=1 to try HAProxy settings on the benchmark's data plane")
	}
	cfg := loadConfig(t)
	ctx := context.Background()
	cfg.scales, cfg.memScales = []int{1}, nil
	b := newBench(ctx, t, cfg, 1)
	b.mode = localcluster.ModeHAProxy
	b.startProxies()
	node := b.c.Nodes[0]
	cfgPath := filepath.Join(b.c.Opts.Dir, node.Name, "haproxy", "haproxy.cfg")
	master := filepath.Join(b.c.Opts.Dir, node.Name, "haproxy", "master.sock")
	orig, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// Twelve runs of new connections to one ClusterIP within minutes would
	// exhaust the client's ephemeral ports in TIME_WAIT and measure that:
	// let the client reuse them.
	b.from.NS.MustExec("sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000")
	url := "http://" + b.ips[0] + "/"
	d := cfg.wrkDuration
	type result struct {
		rps        [2][]float64 // keep-alive, close
		p99        [2][]time.Duration
		hapCPU     [2][]float64 // cores
		machineCPU [2][]float64
	}
	results := make([]result, len(tuneVariants))
	for round := range 2 {
		for k := range tuneVariants {
			i := k
			if round == 1 {
				i = len(tuneVariants) - 1 - k
			}
			v := tuneVariants[i]
			text := applyVariant(t, string(orig), v)
			if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			// The master socket refuses connections while HAProxy starts
			// or reloads: try for a while.
			var out []byte
			for try := 0; ; try++ {
				out, err = exec.Command("sh", "-c", "echo reload | socat stdio unix-connect:"+master).CombinedOutput()
				if err == nil || try == 20 {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("reload: %v %s", err, out)
			}
			time.Sleep(2 * time.Second)
			b.waitPool(b.ips[0], 0, 30*time.Second)
			reloads0 := b.reloads()
			for c, closeEach := range []bool{false, true} {
				hap0 := haproxyCPU(t, node.Proxy.PID())
				busy0, total0 := machineCPU(t)
				w := b.wrk(cfg, d, url, closeEach)
				hap1 := haproxyCPU(t, node.Proxy.PID())
				busy1, total1 := machineCPU(t)
				r := &results[i]
				r.rps[c] = append(r.rps[c], w.RequestsPerSec)
				r.p99[c] = append(r.p99[c], w.P99)
				r.hapCPU[c] = append(r.hapCPU[c], (hap1-hap0)/d.Seconds())
				r.machineCPU[c] = append(r.machineCPU[c], float64(len(cpuCores()))*(busy1-busy0)/(total1-total0))
			}
			if now, _ := os.ReadFile(cfgPath); string(now) != text || b.reloads() != reloads0 {
				t.Fatalf("%s: kube-proxy rewrote or reloaded HAProxy during the measurement", v.name)
			}
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "| setting | keep-alive requests/s | keep-alive p99 | new conn. requests/s | new conn. p99 | HAProxy CPU (cores, keep-alive / new conn.) | machine CPU busy (cores) |\n|---|---|---|---|---|---|---|\n")
	for i, v := range tuneVariants {
		r := results[i]
		fmt.Fprintf(&out, "| %s | %s | %s | %s | %s | %.2f / %.2f | %.2f / %.2f |\n", v.name,
			pair(r.rps[0]), durPair(r.p99[0]), pair(r.rps[1]), durPair(r.p99[1]),
			mean(r.hapCPU[0]), mean(r.hapCPU[1]), mean(r.machineCPU[0]), mean(r.machineCPU[1]))
	}
	t.Logf("wrk -t1 -c%d -d%s, two runs per setting:\n%s", cfg.wrkConns, d, out.String())
}

func applyVariant(t *testing.T, cfg string, v tuneVariant) string {
	if v.nbthread > 0 {
		lines := strings.Split(cfg, "\n")
		found := false
		for i, l := range lines {
			if strings.HasPrefix(strings.TrimSpace(l), "nbthread ") {
				lines[i] = "    nbthread " + strconv.Itoa(v.nbthread)
				found = true
			}
		}
		if !found {
			t.Fatal("no nbthread line in the rendered configuration")
		}
		cfg = strings.Join(lines, "\n")
	}
	for _, s := range []struct {
		section string
		lines   []string
	}{{"\nglobal\n", v.global}, {"\ndefaults\n", v.defaults}} {
		if len(s.lines) == 0 {
			continue
		}
		if !strings.Contains(cfg, s.section) {
			t.Fatalf("no %q section in the rendered configuration", strings.TrimSpace(s.section))
		}
		cfg = strings.Replace(cfg, s.section, s.section+"    "+strings.Join(s.lines, "\n    ")+"\n", 1)
	}
	return cfg
}

// haproxyCPU is the CPU time, in seconds, of every HAProxy process below
// pid (the processes of a reload included while they live).
func haproxyCPU(t *testing.T, pid int) float64 {
	pids, err := Descendants("/proc", pid, "haproxy")
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		sum += (ut + st) / 100 // USER_HZ
	}
	return sum
}

// machineCPU returns busy and total jiffies of all CPUs from /proc/stat.
func machineCPU(t *testing.T) (float64, float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
	var total, idle float64
	for i, x := range f {
		v, _ := strconv.ParseFloat(x, 64)
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return total - idle, total
}

func cpuCores() []string {
	b, _ := os.ReadFile("/proc/stat")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "cpu") && !strings.HasPrefix(l, "cpu ") {
			out = append(out, l)
		}
	}
	return out
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(max(len(xs), 1))
}

func pair(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}

func durPair(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = ms(d)
	}
	return strings.Join(parts, ", ")
}
