// Package bench measures kube-proxy in haproxy mode beside upstream's
// nftables mode on the local cluster of internal/kit/localcluster: network
// programming latency (an endpoint change, a new Service), memory
// (kube-proxy and every HAProxy process), HAProxy reloads per scenario, and
// the data plane through a ClusterIP with wrk.
//
// The measuring runs in bench_test.go (`make bench`, KH_BENCH=1); this file
// holds what it is built from and what its unit tests check: percentiles,
// reading /proc and Prometheus text, parsing wrk's output, and the
// Markdown report.
package bench

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Percentile returns the p-th percentile (0 < p <= 100) of ds by the
// nearest-rank method: a value that was measured, never an interpolation.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(s) {
		rank = len(s)
	}
	return s[rank-1]
}

// ProcHWM returns a process's peak resident set size (VmHWM) in bytes.
func ProcHWM(procRoot string, pid int) (int64, error) {
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("reading the status of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("pid %d: VmHWM %q: %w", pid, fields[1], err)
			}
			return kb * 1024, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading the status of pid %d: %w", pid, err)
	}
	return 0, fmt.Errorf("pid %d has no VmHWM (a kernel thread, or gone)", pid)
}

// procInfo is what Descendants needs of a process.
type procInfo struct {
	ppid int
	comm string
}

func readProcs(procRoot string) (map[int]procInfo, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", procRoot, err)
	}
	out := map[int]procInfo{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue // ended meanwhile
		}
		// comm is in parentheses and may hold spaces: split at the last ')'.
		s := string(b)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 2 {
			continue
		}
		ppid, err := strconv.Atoi(fields[1])
		if err != nil {
			continue
		}
		out[pid] = procInfo{ppid: ppid, comm: s[open+1 : closing]}
	}
	return out, nil
}

// Descendants returns the pids below root (children, their children, ...)
// whose command name is comm, sorted.
func Descendants(procRoot string, root int, comm string) ([]int, error) {
	procs, err := readProcs(procRoot)
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for pid, p := range procs {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if procs[c].comm == comm {
				out = append(out, c)
			}
			queue = append(queue, c)
		}
	}
	sort.Ints(out)
	return out, nil
}

// MetricSum returns the sum of the samples of metric name in Prometheus
// text exposition whose labels contain every one of labels (each written
// as `key="value"`), and whether any sample matched.
func MetricSum(text, name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		var lbls string
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbls, rest = rest[1:end], rest[end+1:]
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(lbls, l) {
				match = false
				break
			}
		}
		fields := strings.Fields(rest)
		if !match || len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

// WrkResult is what one wrk run measured.
type WrkResult struct {
	RequestsPerSec float64
	P50, P99       time.Duration
	// Requests is how many requests completed; Errors counts socket
	// errors (connect, read, write, timeout) and non-2xx/3xx responses.
	Requests int
	Errors   int
	// CPU is what each CPUGroups group used while wrk ran, in cores.
	CPU map[string]float64
}

// ParseWrk reads the output of `wrk --latency`.
func ParseWrk(out string) (WrkResult, error) {
	var r WrkResult
	var haveRate, have50, have99 bool
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "Requests/sec:":
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				return r, fmt.Errorf("wrk: requests/sec %q: %w", f[1], err)
			}
			r.RequestsPerSec, haveRate = v, true
		case len(f) == 2 && (f[0] == "50%" || f[0] == "99%"):
			d, err := parseWrkDuration(f[1])
			if err != nil {
				return r, err
			}
			if f[0] == "50%" {
				r.P50, have50 = d, true
			} else {
				r.P99, have99 = d, true
			}
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			// 13349 requests in 5.04s, 2.52MB read
			n, err := strconv.Atoi(f[0])
			if err != nil {
				return r, fmt.Errorf("wrk: %q: %w", line, err)
			}
			r.Requests = n
		case len(f) >= 2 && f[0] == "Socket" && f[1] == "errors:":
			// Socket errors: connect 0, read 0, write 0, timeout 0
			for i := 2; i+1 < len(f); i += 2 {
				n, err := strconv.Atoi(strings.TrimSuffix(f[i+1], ","))
				if err != nil {
					return r, fmt.Errorf("wrk: socket errors %q: %w", line, err)
				}
				r.Errors += n
			}
		case len(f) >= 5 && f[0] == "Non-2xx":
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil {
				return r, fmt.Errorf("wrk: %q: %w", line, err)
			}
			r.Errors += n
		}
	}
	if !haveRate || !have50 || !have99 {
		return r, fmt.Errorf("wrk: no requests/sec or latency distribution in its output:\n%s", out)
	}
	return r, nil
}

// ParseH2load reads the output of h2load and its per-request log
// (--log-file: start time, status, microseconds to the end of the
// response, tab-separated) into the figures wrk gives. h2load counts a
// response of status 2xx or 3xx as succeeded; the others, and requests
// without a response, are errors.
func ParseH2load(out, log string) (WrkResult, error) {
	var r WrkResult
	haveRate, haveCount := false, false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(strings.ReplaceAll(line, ",", ""))
		switch {
		case len(f) >= 5 && f[0] == "finished" && f[4] == "req/s":
			// finished in 5.00s, 26788.40 req/s, 1.95MB/s
			v, err := strconv.ParseFloat(f[3], 64)
			if err != nil {
				return r, fmt.Errorf("h2load: req/s %q: %w", f[3], err)
			}
			r.RequestsPerSec, haveRate = v, true
		case len(f) >= 14 && f[0] == "requests:":
			// requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 0 errored, 0 timeout
			vals := map[string]int{}
			for i := 1; i+1 < len(f); i += 2 {
				n, err := strconv.Atoi(f[i])
				if err != nil {
					return r, fmt.Errorf("h2load: %q: %w", line, err)
				}
				vals[f[i+1]] = n
			}
			r.Requests = vals["succeeded"]
			r.Errors = vals["failed"] + vals["errored"] + vals["timeout"]
			haveCount = true
		}
	}
	if !haveRate || !haveCount {
		return r, fmt.Errorf("h2load: no req/s or request counts in its output:\n%s", out)
	}
	var lat []time.Duration
	for _, line := range strings.Split(log, "\n") {
		f := strings.Split(strings.TrimSpace(line), "\t")
		if len(f) != 3 {
			continue
		}
		us, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return r, fmt.Errorf("h2load log: %q: %w", line, err)
		}
		lat = append(lat, time.Duration(us)*time.Microsecond)
	}
	if len(lat) == 0 {
		return r, fmt.Errorf("h2load: no request in its log")
	}
	r.P50, r.P99 = Percentile(lat, 50), Percentile(lat, 99)
	return r, nil
}

// MaxWrkErrorRatio is the share of wrk's requests that may fail before a
// data-plane run counts as failed. New connections through NAT now and
// then meet a port the server still holds in TIME_WAIT and are reset; a
// few in ten thousand is the network, more is a broken data plane.
const MaxWrkErrorRatio = 0.001

// TooManyErrors reports whether r failed more requests than
// MaxWrkErrorRatio allows.
func (r WrkResult) TooManyErrors() bool {
	return float64(r.Errors) > MaxWrkErrorRatio*float64(r.Requests+r.Errors)
}

// parseWrkDuration reads wrk's durations: 512.00us, 1.20ms, 2.00s, 1.00m.
func parseWrkDuration(s string) (time.Duration, error) {
	if strings.HasSuffix(s, "m") && !strings.HasSuffix(s, "ms") {
		s += "0s" // "1.00m" is minutes: Go wants "1.00m0s"
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("wrk: duration %q: %w", s, err)
	}
	return d, nil
}

// EstimateBytes is the memory a cluster with n benchmark Services of
// endpoints endpoints each needs, generously: etcd, kube-apiserver and two
// kube-proxies with HAProxy start near 1.5 GiB; every Service with its
// slice costs them about 0.6 MiB (measured at 1000 Services: 0.23 MiB per
// node for kube-proxy and HAProxy, the rest in the control plane), rounded
// up to 768 KiB, and every endpoint 32 KiB more (an HAProxy server is
// 5.6 KiB per worker, two workers during a reload, on two nodes, plus its
// share of the slice in every process that holds it).
func EstimateBytes(n, endpoints int) int64 {
	return 3<<29 + int64(n)*(768<<10+int64(endpoints)*32<<10)
}

// MaxServices bounds a scale: the Service CIDR is a /16, and kube-apiserver
// allocates each ClusterIP in time linear in the Services already there
// (10,000 take about 10 minutes here), so beyond this the setup alone
// would take most of an hour.
const MaxServices = 20000

// CheckScale refuses a scale the machine cannot hold, saying why.
func CheckScale(n, endpoints int, memAvailable int64) error {
	if n < 1 {
		return fmt.Errorf("scale %d: at least one Service is needed", n)
	}
	if n > MaxServices {
		return fmt.Errorf("scale %d: more than %d Services is not supported (Service CIDR /16, setup time)", n, MaxServices)
	}
	if need := EstimateBytes(n, endpoints); float64(need) > 0.8*float64(memAvailable) {
		return fmt.Errorf("scale %d × %d endpoints: needs about %d MiB, and 80%% of this machine's available memory is %d MiB",
			n, endpoints, need>>20, int64(0.8*float64(memAvailable))>>20)
	}
	return nil
}

// MemAvailable reads MemAvailable from /proc/meminfo, in bytes.
func MemAvailable(procRoot string) (int64, error) {
	return meminfoField(procRoot, "MemAvailable:")
}

// MemTotal reads MemTotal from /proc/meminfo, in bytes.
func MemTotal(procRoot string) (int64, error) {
	return meminfoField(procRoot, "MemTotal:")
}

func meminfoField(procRoot, field string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, "meminfo"))
	if err != nil {
		return 0, fmt.Errorf("reading meminfo: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == field {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("meminfo %s %q: %w", field, f[1], err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("meminfo has no %s", field)
}

// MemPeak is what a MemSampler saw: the peak resident memory of one
// node's kube-proxy and of its HAProxy processes.
type MemPeak struct {
	// ProxyHWM is the largest VmHWM of any kube-proxy process sampled (a
	// restarted kube-proxy is a new process; they never overlap).
	ProxyHWM int64
	// HAProxyHWM is the largest sum of VmHWM over HAProxy processes alive
	// at the same time (see PeakConcurrent), and HAProxyProcs how many
	// processes that sum counts.
	HAProxyHWM   int64
	HAProxyProcs int
	// Samples is the number of samples taken.
	Samples int
}

// pidSeen is one process's record across samples.
type pidSeen struct {
	first, last int   // indexes of the first and last sample that saw it
	hwm         int64 // its largest VmHWM seen
}

// PeakConcurrent returns the largest sum of VmHWM over processes alive at
// once, and how many processes it sums, from a sequence of samples (each
// maps a pid to its VmHWM at that moment).
//
// Each process counts with the largest VmHWM it ever showed, and is taken
// as alive from its first sample to one sample after its last: a worker
// that an HAProxy reload replaces overlaps the new one for as long as it
// drains, often less than a sampling interval, and the overlap is exactly
// what a node must have memory for. Processes further apart (HAProxy
// stopped, then started again much later) are not summed.
func PeakConcurrent(samples []map[int]int64) (int64, int) {
	seen := map[int]*pidSeen{}
	for i, s := range samples {
		for pid, hwm := range s {
			p := seen[pid]
			if p == nil {
				p = &pidSeen{first: i}
				seen[pid] = p
			}
			p.last = i
			p.hwm = max(p.hwm, hwm)
		}
	}
	var peak int64
	var procs int
	for i := range samples {
		var sum int64
		n := 0
		for _, p := range seen {
			if p.first <= i && i <= p.last+1 {
				sum += p.hwm
				n++
			}
		}
		if sum > peak {
			peak, procs = sum, n
		}
	}
	return peak, procs
}

// MemSampler samples, at a fixed interval, VmHWM of a node's kube-proxy
// and of every HAProxy process below it, so short-lived processes (the
// old worker of a reload) are counted while they live.
type MemSampler struct {
	procRoot string
	rootPID  func() int
	interval time.Duration

	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples []map[int]int64
	proxy   int64
	err     error
}

// StartMemSampler starts sampling below the process rootPID returns (read
// at every sample: kube-proxy may be restarted meanwhile; 0 skips a
// sample) until Stop.
func StartMemSampler(procRoot string, rootPID func() int, interval time.Duration) *MemSampler {
	s := &MemSampler{procRoot: procRoot, rootPID: rootPID, interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *MemSampler) loop() {
	defer close(s.done)
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		s.sample()
		select {
		case <-s.stop:
			s.sample()
			return
		case <-tick.C:
		}
	}
}

// sample records one snapshot. A process that ends between listing and
// reading is simply not in it.
func (s *MemSampler) sample() {
	root := s.rootPID()
	if root == 0 {
		s.add(nil)
		return
	}
	if hwm, err := ProcHWM(s.procRoot, root); err == nil {
		s.proxy = max(s.proxy, hwm)
	}
	pids, err := Descendants(s.procRoot, root, "haproxy")
	if err != nil {
		s.err = err
		return
	}
	snap := map[int]int64{}
	for _, pid := range pids {
		if hwm, err := ProcHWM(s.procRoot, pid); err == nil {
			snap[pid] = hwm
		}
	}
	s.add(snap)
}

func (s *MemSampler) add(snap map[int]int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, snap)
}

// samplesSoFar is a copy of the samples taken until now.
func (s *MemSampler) samplesSoFar() []map[int]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[int]int64(nil), s.samples...)
}

// Stop takes a last sample, stops sampling and returns the peaks.
func (s *MemSampler) Stop() (MemPeak, error) {
	close(s.stop)
	<-s.done
	if s.err != nil {
		return MemPeak{}, fmt.Errorf("sampling memory: %w", s.err)
	}
	if s.proxy == 0 {
		return MemPeak{}, fmt.Errorf("sampling memory: no sample of kube-proxy's VmHWM in %d samples", len(s.samples))
	}
	hwm, procs := PeakConcurrent(s.samples)
	return MemPeak{ProxyHWM: s.proxy, HAProxyHWM: hwm, HAProxyProcs: procs, Samples: len(s.samples)}, nil
}

// CPU groups: where the CPU time of a data-plane measurement went.
const (
	CPUNode    = "node1 (HAProxy, kube-proxy)"
	CPUClient  = "client pod (wrk)"
	CPUPods    = "backend pods"
	CPUSoftIRQ = "kernel softirq (packets, nftables)"
	CPUTotal   = "whole machine"
)

// CPUGroups are the groups in the order a report lists them.
var CPUGroups = []string{CPUNode, CPUClient, CPUPods, CPUSoftIRQ, CPUTotal}

// CPUSnapshot is cumulative CPU seconds per group at one moment.
type CPUSnapshot map[string]float64

// userHZ is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const userHZ = 100

// TakeCPUSnapshot reads the CPU time of every process whose network
// namespace is one of groups' (by nsfs inode), and the machine's softirq
// and busy time from /proc/stat.
func TakeCPUSnapshot(procRoot string, groups map[string][]uint64) (CPUSnapshot, error) {
	snap := CPUSnapshot{}
	byInode := map[uint64]string{}
	for g, inodes := range groups {
		for _, ino := range inodes {
			byInode[ino] = g
		}
	}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", procRoot, err)
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		link, err := os.Readlink(filepath.Join(procRoot, e.Name(), "ns", "net"))
		if err != nil {
			continue
		}
		ino, ok := parseNSLink(link)
		if !ok {
			continue
		}
		g, ok := byInode[ino]
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		snap[g] += (ut + st) / userHZ
	}
	b, err := os.ReadFile(filepath.Join(procRoot, "stat"))
	if err != nil {
		return nil, fmt.Errorf("reading %s/stat: %w", procRoot, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return nil, fmt.Errorf("%s/stat: unexpected first line %q", procRoot, line)
	}
	var total, idle float64
	for i, x := range f[1:] {
		v, _ := strconv.ParseFloat(x, 64)
		if i >= 8 { // guest time is already in user
			break
		}
		total += v
		switch i {
		case 3, 4: // idle, iowait
			idle += v
		case 6: // softirq
			snap[CPUSoftIRQ] = v / userHZ
		}
	}
	snap[CPUTotal] = (total - idle) / userHZ
	return snap, nil
}

// parseNSLink reads the inode of a namespace link: "net:[4026532281]".
func parseNSLink(link string) (uint64, bool) {
	_, rest, ok := strings.Cut(link, "[")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
	return ino, err == nil
}

// CPUCores is the CPU each group used between two snapshots, in cores
// (CPU seconds per second of wall time).
func CPUCores(before, after CPUSnapshot, wall time.Duration) map[string]float64 {
	out := map[string]float64{}
	if wall <= 0 {
		return out
	}
	for _, g := range CPUGroups {
		out[g] = (after[g] - before[g]) / wall.Seconds()
	}
	return out
}
