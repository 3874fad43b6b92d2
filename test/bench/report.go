package bench

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Modes, as internal/kit/localcluster names them.
const (
	ModeHAProxy  = "haproxy"
	ModeNFTables = "nftables"
)

// Wrk targets and connection styles.
const (
	TargetClusterIP = "clusterip"
	TargetDirect    = "direct"
	ConnKeepAlive   = "keep-alive"
	ConnClose       = "new connection per request"
	// ConnH2 is h2load's HTTP/2 (h2c) to a Service of appProtocol
	// kubernetes.io/h2c: many streams per connection.
	ConnH2 = "HTTP/2 (h2c)"
)

// wrkConns are the connection styles of the data-plane table, in order.
var wrkConns = []string{ConnKeepAlive, ConnClose, ConnH2}

// Passes: the latency pass measures network programming and the data
// plane (ENDPOINTS per Service); the memory pass, at its own scales and
// endpoint count, measures the cold start and memory alone.
const (
	PassLatency = "latency"
	PassMemory  = "memory"
)

// WrkKey names one data-plane measurement.
type WrkKey struct{ Target, Conn string }

// Run is everything measured on one cluster: one mode at one scale. A Run
// exists only when every step of it succeeded.
type Run struct {
	Pass      string
	Mode      string
	Services  int
	Endpoints int

	// ColdStart is the time from kube-proxy's start, with every Service
	// already in the API and nothing programmed, to every ClusterIP
	// answering. Sweep is the same probing with every ClusterIP already
	// answering: the part of ColdStart that is the probing itself.
	ColdStart time.Duration
	Sweep     time.Duration
	// EndpointChange: EndpointSlice update to the first request served by
	// a new endpoint.
	EndpointChange []time.Duration
	// NPL is kube-proxy's kubeproxy_network_programming_duration_seconds
	// over the endpoint changes: its mean and number of observations.
	NPLMean  time.Duration
	NPLCount int
	// NewService: Service and slice creation to the ClusterIP answering.
	NewService []time.Duration
	// DeletedService: Service and slice deletion to the ClusterIP no
	// longer answering.
	DeletedService []time.Duration
	// Reloads of HAProxy during each scenario; HasReloads false in a mode
	// without HAProxy.
	HasReloads        bool
	ReloadsEndpoint   int
	ReloadsNewService int
	ReloadsDeleted    int
	// Peak RSS (VmHWM) of kube-proxy and the largest sum over HAProxy
	// processes alive at once (MemSampler).
	ProxyHWM     int64
	HAProxyHWM   int64
	HAProxyProcs int
	// Wrk results; empty when the data plane was not measured.
	Wrk map[WrkKey]WrkResult
}

// Meta describes where and with what the runs were measured.
type Meta struct {
	Date      time.Time
	CPUs      int
	MemTotal  int64
	KubeProxy string
	HAProxy   string
	Kernel    string
	Command   string
	WrkArgs   string
	// H2loadArgs are h2load's, for the HTTP/2 rows.
	H2loadArgs string
	// FileLimit is the hard RLIMIT_NOFILE kube-proxy and HAProxy ran with.
	FileLimit uint64
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// ratio formats ours/theirs; "–" when undefined.
func ratio(ours, theirs float64) string {
	if theirs == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", ours/theirs)
}

// Report renders the runs as Markdown: per pass and scale, a table with
// haproxy mode, nftables mode and their ratio; then the figures, linked
// as plotPrefix + file.
func Report(meta Meta, runs []Run, figs []Figure, plotPrefix string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %d CPUs, %.1f GiB memory, Linux %s",
		meta.Date.UTC().Format("2006-01-02 15:04 MST"), meta.CPUs, float64(meta.MemTotal)/(1<<30), meta.Kernel)
	if meta.FileLimit > 0 {
		fmt.Fprintf(&b, ", file limit %d (hard, inherited by kube-proxy and HAProxy)", meta.FileLimit)
	}
	fmt.Fprintf(&b, ".\n\n")
	fmt.Fprintf(&b, "- kube-proxy: `%s` (both modes: the same binary)\n- HAProxy: `%s`\n- command: `%s`\n\n",
		meta.KubeProxy, meta.HAProxy, meta.Command)

	for _, pass := range []string{PassLatency, PassMemory} {
		byScale := map[int]map[string]*Run{}
		for i := range runs {
			r := &runs[i]
			if r.Pass != pass {
				continue
			}
			if byScale[r.Services] == nil {
				byScale[r.Services] = map[string]*Run{}
			}
			byScale[r.Services][r.Mode] = r
		}
		scales := make([]int, 0, len(byScale))
		for s := range byScale {
			scales = append(scales, s)
		}
		sort.Ints(scales)
		for _, s := range scales {
			writeScale(&b, meta, byScale[s])
		}
	}
	if len(figs) > 0 {
		fmt.Fprintf(&b, "## Plots\n\n")
		for _, f := range figs {
			fmt.Fprintf(&b, "![%s](%s%s)\n\n", f.Title, plotPrefix, f.File)
		}
	}
	return b.String()
}

func writeScale(b *strings.Builder, meta Meta, m map[string]*Run) {
	ours, theirs := m[ModeHAProxy], m[ModeNFTables]
	first := ours
	if first == nil {
		first = theirs
	}
	title := fmt.Sprintf("%d Services × %d endpoints", first.Services, first.Endpoints)
	if first.Pass == PassMemory {
		title += ": cold start and memory"
	}
	fmt.Fprintf(b, "## %s\n\n", title)
	fmt.Fprintf(b, "| measurement | haproxy | nftables | haproxy / nftables |\n|---|---|---|---|\n")
	row := func(name string, f func(*Run) (string, float64, bool)) {
		cells := [2]string{"–", "–"}
		var vals [2]float64
		var ok [2]bool
		for i, r := range []*Run{ours, theirs} {
			if r == nil {
				continue
			}
			var s string
			s, vals[i], ok[i] = f(r)
			if ok[i] {
				cells[i] = s
			}
		}
		rat := "–"
		if ok[0] && ok[1] {
			rat = ratio(vals[0], vals[1])
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", name, cells[0], cells[1], rat)
	}
	dur := func(d time.Duration) (string, float64, bool) { return ms(d), float64(d), true }
	row("cold start: kube-proxy started → every ClusterIP answers", func(r *Run) (string, float64, bool) {
		return dur(r.ColdStart)
	})
	row("probing every ClusterIP once, all answering (part of the cold start)", func(r *Run) (string, float64, bool) {
		return dur(r.Sweep)
	})
	if n := len(first.EndpointChange); n > 0 {
		row(fmt.Sprintf("endpoint change → first request served by a new endpoint, p50 (%d changes)", n), func(r *Run) (string, float64, bool) {
			return dur(Percentile(r.EndpointChange, 50))
		})
		row(fmt.Sprintf("endpoint change → first request served by a new endpoint, p99 (%d changes)", n), func(r *Run) (string, float64, bool) {
			return dur(Percentile(r.EndpointChange, 99))
		})
		row("kubeproxy_network_programming_duration_seconds, mean over the endpoint changes (node1)", func(r *Run) (string, float64, bool) {
			if r.NPLCount == 0 {
				return "", 0, false
			}
			return fmt.Sprintf("%s (%d obs.)", ms(r.NPLMean), r.NPLCount), float64(r.NPLMean), true
		})
	}
	if k := len(first.NewService); k > 0 {
		row(fmt.Sprintf("new Service + slice → ClusterIP answers, p50 (%d Services)", k), func(r *Run) (string, float64, bool) {
			return dur(Percentile(r.NewService, 50))
		})
		row(fmt.Sprintf("new Service + slice → ClusterIP answers, p99 (%d Services)", k), func(r *Run) (string, float64, bool) {
			return dur(Percentile(r.NewService, 99))
		})
	}
	if k := len(first.DeletedService); k > 0 {
		row(fmt.Sprintf("deleted Service + slice → ClusterIP stops answering, p50 (%d Services)", k), func(r *Run) (string, float64, bool) {
			return dur(Percentile(r.DeletedService, 50))
		})
		row(fmt.Sprintf("deleted Service + slice → ClusterIP stops answering, p99 (%d Services)", k), func(r *Run) (string, float64, bool) {
			return dur(Percentile(r.DeletedService, 99))
		})
	}
	if len(first.EndpointChange) > 0 {
		row("HAProxy reloads during the endpoint changes (node1; must be 0)", func(r *Run) (string, float64, bool) {
			return fmt.Sprint(r.ReloadsEndpoint), float64(r.ReloadsEndpoint), r.HasReloads
		})
	}
	if len(first.NewService) > 0 {
		row("HAProxy reloads during the new Services (node1; must be 0)", func(r *Run) (string, float64, bool) {
			return fmt.Sprint(r.ReloadsNewService), float64(r.ReloadsNewService), r.HasReloads
		})
	}
	if len(first.DeletedService) > 0 {
		row("HAProxy reloads during the Service deletions (node1; must be 0)", func(r *Run) (string, float64, bool) {
			return fmt.Sprint(r.ReloadsDeleted), float64(r.ReloadsDeleted), r.HasReloads
		})
	}
	row("kube-proxy peak RSS (VmHWM, node1)", func(r *Run) (string, float64, bool) {
		return mib(r.ProxyHWM), float64(r.ProxyHWM), true
	})
	row("HAProxy processes alive at once, largest sum of VmHWM (node1; master + workers)", func(r *Run) (string, float64, bool) {
		return fmt.Sprintf("%s (%d processes)", mib(r.HAProxyHWM), r.HAProxyProcs), float64(r.HAProxyHWM), r.HasReloads
	})
	row("kube-proxy + HAProxy, peak RSS (node1)", func(r *Run) (string, float64, bool) {
		t := r.ProxyHWM + r.HAProxyHWM
		return mib(t), float64(t), true
	})
	fmt.Fprintln(b)

	if len(first.Wrk) == 0 {
		return
	}
	fmt.Fprintf(b, "Data plane: wrk `%s` from a pod on node1 to the ClusterIP (%d endpoints, on both nodes), and directly to one pod on node2.", meta.WrkArgs, first.Endpoints)
	if meta.H2loadArgs != "" {
		fmt.Fprintf(b, " HTTP/2 rows: h2load `%s` to the ClusterIP of a Service of appProtocol kubernetes.io/h2c with the same endpoints (balanced per request in haproxy mode, per connection in nftables mode), and to the pod.", meta.H2loadArgs)
	}
	fmt.Fprint(b, "\n\n")
	fmt.Fprintf(b, "| connections | measurement | haproxy | nftables | direct to pod | haproxy / nftables |\n|---|---|---|---|---|---|\n")
	for _, conn := range wrkConns {
		// Direct to the pod does not depend on the mode: either run's.
		direct := theirs
		if _, ok := direct.wrkResult(WrkKey{TargetDirect, conn}); !ok {
			direct = ours
		}
		for _, q := range []string{"requests/s", "p50", "p99", "errors"} {
			var cells [3]string
			var vals [3]float64
			for i, key := range []struct {
				r *Run
				k WrkKey
			}{{ours, WrkKey{TargetClusterIP, conn}}, {theirs, WrkKey{TargetClusterIP, conn}}, {direct, WrkKey{TargetDirect, conn}}} {
				cells[i] = "–"
				w, ok := key.r.wrkResult(key.k)
				if !ok {
					continue
				}
				switch q {
				case "requests/s":
					cells[i], vals[i] = fmt.Sprintf("%.0f", w.RequestsPerSec), w.RequestsPerSec
				case "p50":
					cells[i], vals[i] = ms(w.P50), float64(w.P50)
				case "p99":
					cells[i], vals[i] = ms(w.P99), float64(w.P99)
				case "errors":
					cells[i], vals[i] = fmt.Sprintf("%d of %d", w.Errors, w.Requests+w.Errors), float64(w.Errors)
					if w.TooManyErrors() {
						cells[i] += fmt.Sprintf(" (over %.1f%%: the rate above is suspect)", 100*MaxWrkErrorRatio)
					}
				}
			}
			rat := "–"
			if cells[0] != "–" && cells[1] != "–" && q != "errors" {
				rat = ratio(vals[0], vals[1])
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", conn, q, cells[0], cells[1], cells[2], rat)
		}
	}
	fmt.Fprintln(b)
	writeCPU(b, meta, ours, theirs)
}

// writeCPU tells where the CPU went during each wrk run: what saturates.
func writeCPU(b *strings.Builder, meta Meta, ours, theirs *Run) {
	type row struct {
		name string
		w    WrkResult
	}
	var rows []row
	for _, conn := range wrkConns {
		for _, r := range []*Run{ours, theirs} {
			if w, ok := r.wrkResult(WrkKey{TargetClusterIP, conn}); ok && w.CPU != nil {
				rows = append(rows, row{fmt.Sprintf("%s, %s mode ClusterIP", conn, r.Mode), w})
			}
		}
		direct := theirs
		if _, ok := direct.wrkResult(WrkKey{TargetDirect, conn}); !ok {
			direct = ours
		}
		if w, ok := direct.wrkResult(WrkKey{TargetDirect, conn}); ok && w.CPU != nil {
			rows = append(rows, row{conn + ", direct to the pod", w})
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "CPU while wrk ran, in cores (of %d): a group near its share of the machine, or the machine near %d, is what saturates.\n\n", meta.CPUs, meta.CPUs)
	fmt.Fprintf(b, "| wrk run |")
	for _, g := range CPUGroups {
		fmt.Fprintf(b, " %s |", g)
	}
	fmt.Fprintf(b, "\n|---|%s\n", strings.Repeat("---|", len(CPUGroups)))
	for _, r := range rows {
		fmt.Fprintf(b, "| %s |", r.name)
		for _, g := range CPUGroups {
			fmt.Fprintf(b, " %.2f |", r.w.CPU[g])
		}
		fmt.Fprintln(b)
	}
	fmt.Fprintln(b)
}

// wrkResult is r's measurement for k; false for a nil Run too.
func (r *Run) wrkResult(k WrkKey) (WrkResult, bool) {
	if r == nil {
		return WrkResult{}, false
	}
	w, ok := r.Wrk[k]
	return w, ok
}
