// Command local-cluster runs the local cluster of test/localcluster in the
// foreground until it is interrupted, and removes it.
//
//	local-cluster up   [-dir _output/local] [-mode haproxy|nftables]
//	local-cluster down [-dir _output/local]
//
// `up` holds the cluster: it is the parent of every process the cluster
// runs, and its pid names the namespaces it creates (kh-<pid>-...), so when
// it ends, by SIGINT/SIGTERM or by a crash, nothing can outlive it
// unnoticed: a clean end removes everything itself; after a crash, `down`
// (or the next `up`) finds the namespaces of a pid that no longer runs and
// deletes them with whatever still runs inside. The state directory holds
// the pid, the generated files and the logs; `down` removes it.
//
// hack/local-up.sh and hack/local-down.sh (`make local-up`,
// `make local-down`) run it in the background.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"kube-haproxy.io/kube-haproxy/test/localcluster"
	"kube-haproxy.io/kube-haproxy/test/netns"
)

const (
	pidFile   = "pid"
	readyFile = "ready"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", filepath.Join("_output", "local"), "state directory")
	mode := fs.String("mode", localcluster.ModeHAProxy, "kube-proxy mode: haproxy or nftables")
	_ = fs.Parse(os.Args[2:])
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fail(err)
	}
	switch os.Args[1] {
	case "up":
		err = up(abs, *mode)
	case "down":
		err = down(abs)
	case "status":
		pid, alive := running(abs)
		if !alive {
			fmt.Println("down")
			os.Exit(1)
		}
		fmt.Printf("up (pid %d)\n", pid)
	default:
		usage()
	}
	if err != nil {
		fail(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: local-cluster up|down|status [-dir DIR] [-mode haproxy|nftables]")
	os.Exit(2)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "local-cluster:", err)
	os.Exit(1)
}

// running returns the pid of the `up` holding dir, and whether it runs.
func running(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "local-cluster") {
		return pid, false
	}
	return pid, true
}

func up(dir, mode string) error {
	if pid, alive := running(dir); alive {
		info, _ := os.ReadFile(filepath.Join(dir, "info.txt"))
		return fmt.Errorf("already up (pid %d); `make local-down` first\n%s", pid, info)
	}
	// A crashed run's files and namespaces go first.
	if err := down(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)

	r := &runner{dir: dir}
	started := false
	defer func() {
		r.cleanup()
		// The generated files and logs go with the cluster; after a failed
		// start they stay for a look (`down` removes them).
		if started {
			_ = os.RemoveAll(dir)
		}
	}()
	err := r.run(func() {
		c := localcluster.Start(r, localcluster.Options{
			Mode: mode, Dir: dir,
			Logf: func(format string, args ...any) { fmt.Printf("local-cluster: "+format+"\n", args...) },
		})
		help, err := c.StartDemo(context.Background())
		if err != nil {
			r.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "info.txt"), []byte(help), 0o644); err != nil {
			r.Fatal(err)
		}
		fmt.Print(help)
		if err := os.WriteFile(filepath.Join(dir, readyFile), nil, 0o644); err != nil {
			r.Fatal(err)
		}
	})
	if err != nil {
		return fmt.Errorf("%w\n(logs kept in %s; make local-down removes them)", err, dir)
	}
	started = true
	sig := <-sigs
	fmt.Printf("local-cluster: %v: removing the cluster\n", sig)
	return nil
}

// down stops a running `up` and removes what a crashed one left.
func down(dir string) error {
	if pid, alive := running(dir); alive {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if _, alive := running(dir); !alive {
				break
			}
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				time.Sleep(time.Second)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The namespaces of a pid that no longer runs, with what runs in them.
	// Another sweeper (a test run starting) may delete some of them at the
	// same moment: only a namespace still there after a retry is an error.
	var err error
	for range 3 {
		if err = netns.SweepStale(); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return fmt.Errorf("removing stale namespaces: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// runner lets the test kits (which report through testing.TB) run in a
// program: Fatal ends the start-up with an error, Cleanup functions run in
// reverse order when the program ends, temporary directories live in the
// state directory. The embedded interface is nil: the kits call only the
// methods defined here.
type runner struct {
	testing.TB
	dir string

	mu       sync.Mutex
	cleanups []func()
	tmp      int
	failed   bool
}

type fatal struct{ msg string }

func (r *runner) run(fn func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			f, ok := v.(fatal)
			if !ok {
				panic(v)
			}
			err = errors.New(f.msg)
		}
	}()
	fn()
	return nil
}

func (r *runner) cleanup() {
	r.mu.Lock()
	fns := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	_ = os.Remove(filepath.Join(r.dir, readyFile))
}

func (r *runner) Helper()      {}
func (r *runner) Name() string { return "local-cluster" }
func (r *runner) Failed() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.failed }
func (r *runner) Log(a ...any) { fmt.Println(a...) }
func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}
func (r *runner) Logf(format string, a ...any) { fmt.Printf(format+"\n", a...) }
func (r *runner) Error(a ...any) {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	fmt.Fprintln(os.Stderr, a...)
}
func (r *runner) Errorf(format string, a ...any) { r.Error(fmt.Sprintf(format, a...)) }
func (r *runner) Fatal(a ...any)                 { panic(fatal{fmt.Sprint(a...)}) }
func (r *runner) Fatalf(format string, a ...any) { panic(fatal{fmt.Sprintf(format, a...)}) }
func (r *runner) FailNow()                       { panic(fatal{"failed"}) }

// A missing prerequisite is an error for a program, not a skip.
func (r *runner) Skip(a ...any)                 { panic(fatal{fmt.Sprint(a...)}) }
func (r *runner) Skipf(format string, a ...any) { panic(fatal{fmt.Sprintf(format, a...)}) }
func (r *runner) SkipNow()                      { panic(fatal{"skipped"}) }

func (r *runner) TempDir() string {
	r.mu.Lock()
	r.tmp++
	n := r.tmp
	r.mu.Unlock()
	d := filepath.Join(r.dir, fmt.Sprintf("tmp%d", n))
	if err := os.MkdirAll(d, 0o755); err != nil {
		r.Fatal(err)
	}
	return d
}
