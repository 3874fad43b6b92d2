// Package netns is a kit for integration and end-to-end tests that need
// real network namespaces: nodes, clients and "pods" are namespaces joined
// by veth pairs and bridges, so the tests exercise the kernel's routing,
// nftables and a real HAProxy without touching the host's own network.
//
// Every namespace a Kit creates is named kh-<pid>-<kit>-<name>, so stale
// ones from a crashed run are recognisable (their pid is gone) and swept by
// the next run. Cleanup stops the processes the Kit started (by PID), then
// any process still inside its namespaces, then deletes the namespaces,
// which takes their links with them.
//
// Kit.Node builds the topology the integration suites share (a node, a
// client on its LAN, a pod bridge with pods); RunTestsInNamespace runs a
// package's tests inside the node, for code that must run wholly there.
//
// Tests using a Kit need root and `ip netns`; without them New fails the
// test, saying what is missing (see package kit: a missing dependency is a
// failure, never a skip).
package netns

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"kube-haproxy.io/kube-haproxy/internal/kit"
)

// Prefix starts the name of every namespace a Kit creates.
const Prefix = "kh-"

var (
	kitCounter atomic.Int32
	sweepOnce  sync.Once
	staleName  = regexp.MustCompile(`^` + Prefix + `(\d+)-`)
)

// Kit creates namespaces, links and processes for one test and removes
// them all on Cleanup (registered with t.Cleanup by New).
type Kit struct {
	t      kit.T
	prefix string
	dir    string

	mu         sync.Mutex
	namespaces []*Namespace
	procs      []*Proc
	linkSeq    int
	podserver  string
}

// Check reports why this process cannot create network namespaces: it is
// not root, or `ip netns` does not work. nil when it can.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, routes, nftables)")
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		return fmt.Errorf("needs a working `ip netns` (make deps installs iproute2): %v: %s", err, out)
	}
	return nil
}

// Require fails the test unless it runs as root with a working `ip netns`.
func Require(t kit.T) {
	t.Helper()
	if err := Check(); err != nil {
		t.Fatalf("%v", err)
	}
}

// RequireBinary returns the path of a command in PATH, and fails the test
// without it.
func RequireBinary(t kit.T, name string) string {
	t.Helper()
	return kit.Command(t, name)
}

// New returns a Kit for t, after sweeping stale namespaces of crashed runs.
func New(t kit.T) *Kit {
	t.Helper()
	Require(t)
	sweepOnce.Do(func() {
		if err := SweepStale(); err != nil {
			t.Logf("sweeping stale namespaces: %v", err)
		}
	})
	k := &Kit{
		t:      t,
		prefix: fmt.Sprintf("%s%d-%d-", Prefix, os.Getpid(), kitCounter.Add(1)),
		dir:    t.TempDir(),
	}
	t.Cleanup(k.Cleanup)
	return k
}

// Dir is a temporary directory removed after the test.
func (k *Kit) Dir() string { return k.dir }

// Namespace creates a namespace with loopback up. name must be short: it
// becomes part of the namespace's name.
func (k *Kit) Namespace(name string) *Namespace {
	k.t.Helper()
	full := k.prefix + name
	if out, err := exec.Command("ip", "netns", "add", full).CombinedOutput(); err != nil {
		k.t.Fatalf("ip netns add %s: %v: %s", full, err, out)
	}
	n := &Namespace{Name: full, Short: name, kit: k}
	k.mu.Lock()
	k.namespaces = append(k.namespaces, n)
	k.mu.Unlock()
	h, err := netns.GetFromName(full)
	if err != nil {
		k.t.Fatalf("open namespace %s: %v", full, err)
	}
	n.handle = h
	n.IP("link", "set", "lo", "up")
	return n
}

// Bridge creates bridge name inside ns, up, with addr on it when addr is
// valid.
func (k *Kit) Bridge(ns *Namespace, name string, addr netip.Prefix) {
	k.t.Helper()
	// A bridge without an address of its own takes the lowest MAC of its
	// ports, so plugging a pod can change it: neighbours then send to a
	// stale MAC until their ARP entry expires, and connections through the
	// bridge stall for half a minute. A fixed address never changes.
	ns.IP("link", "add", name, "type", "bridge")
	ns.IP("link", "set", name, "address", bridgeMAC(ns.Name, name))
	ns.IP("link", "set", name, "up")
	if addr.IsValid() {
		ns.AddAddr(name, addr)
	}
}

// Link joins a and b with a veth pair named aIf in a and bIf in b, both up,
// each with its address when valid.
func (k *Kit) Link(a *Namespace, aIf string, aAddr netip.Prefix, b *Namespace, bIf string, bAddr netip.Prefix) {
	k.t.Helper()
	a.IP("link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.Name)
	// An end in an adopted namespace outlives the test: the kernel deletes
	// it only once the other end's namespace is gone, which it does in
	// the background, after the next test may have wanted the name.
	// Deleting it deletes both ends at once.
	for _, end := range []struct {
		ns   *Namespace
		name string
	}{{a, aIf}, {b, bIf}} {
		if end.ns.adopted {
			k.t.Cleanup(func() { _, _ = end.ns.Exec("ip", "link", "del", end.name) })
		}
	}
	for _, end := range []struct {
		ns   *Namespace
		name string
		addr netip.Prefix
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		if end.addr.IsValid() {
			end.ns.AddAddr(end.name, end.addr)
		}
		end.ns.IP("link", "set", end.name, "up")
	}
}

// Plug connects ns to bridge (in bridgeNS) with a veth pair: ifName with
// addr in ns, an unnumbered port of the bridge on the other side.
func (k *Kit) Plug(bridgeNS *Namespace, bridge string, ns *Namespace, ifName string, addr netip.Prefix) {
	k.t.Helper()
	k.mu.Lock()
	k.linkSeq++
	port := fmt.Sprintf("p%d", k.linkSeq)
	k.mu.Unlock()
	k.Link(bridgeNS, port, netip.Prefix{}, ns, ifName, addr)
	bridgeNS.IP("link", "set", port, "master", bridge)
}

// Cleanup stops every process the Kit started, then anything still running
// in its namespaces, then deletes the namespaces. Safe to call twice.
func (k *Kit) Cleanup() {
	k.mu.Lock()
	procs, namespaces := k.procs, k.namespaces
	k.procs, k.namespaces = nil, nil
	k.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		n := namespaces[i]
		if n.nl != nil {
			n.nl.Close()
		}
		n.handle.Close()
		if n.adopted {
			continue
		}
		if err := removeNamespace(n.Name); err != nil {
			k.t.Errorf("cleanup: %v", err)
		}
	}
}

// removeNamespace kills what still runs in the namespace (processes the
// tests started, e.g. HAProxy workers) and deletes it.
func removeNamespace(name string) error {
	killNamespacePids(name, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for len(namespacePids(name)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	killNamespacePids(name, syscall.SIGKILL)
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %w: %s", name, err, out)
	}
	return nil
}

func namespacePids(name string) []int {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

func killNamespacePids(name string, sig syscall.Signal) {
	for _, pid := range namespacePids(name) {
		_ = syscall.Kill(pid, sig)
	}
}

// SweepStale deletes namespaces named like a Kit's whose creating process
// no longer runs: leftovers of a crashed or killed test run.
func SweepStale() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	var errs []error
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		name := fields[0]
		m := staleName.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if err := removeNamespace(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Proc is a process started in a namespace.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// PID is the process id (for `ip netns exec`, the command's own: it execs).
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Log returns what the process wrote to stdout and stderr so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Exited reports whether the process has ended, and its error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop terminates the process (SIGTERM, then SIGKILL after 5s) and waits.
func (p *Proc) Stop() {
	if ended, _ := p.Exited(); ended {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (k *Kit) start(ns *Namespace, name string, stdout *os.File, args ...string) *Proc {
	k.t.Helper()
	logPath := filepath.Join(k.dir, fmt.Sprintf("%s-%s.log", ns.Short, name))
	logFile, err := os.Create(logPath)
	if err != nil {
		k.t.Fatalf("create log: %v", err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		k.t.Fatalf("start %s in %s: %v", name, ns.Name, err)
	}
	p := &Proc{Name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	k.mu.Lock()
	k.procs = append(k.procs, p)
	k.mu.Unlock()
	return p
}

// runIP runs `ip` with args and returns its combined output.
func runIP(args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// netlinkHandle opens a netlink handle inside the namespace, closed by the
// Kit's Cleanup.
func (n *Namespace) netlinkHandle() (*netlink.Handle, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nl == nil {
		h, err := netlink.NewHandleAt(n.handle)
		if err != nil {
			return nil, fmt.Errorf("netlink in %s: %w", n.Name, err)
		}
		n.nl = h
	}
	return n.nl, nil
}

// bridgeMAC derives a locally administered unicast MAC from the namespace
// and bridge names: stable for one bridge, distinct between bridges.
func bridgeMAC(ns, bridge string) string {
	sum := sha256.Sum256([]byte(ns + "/" + bridge))
	sum[0] = sum[0]&0xfc | 0x02
	return net.HardwareAddr(sum[:6]).String()
}
