// Command local-cluster runs the local cluster of internal/kit/localcluster
// in the foreground until it is interrupted, and removes it.
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
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"kube-haproxy.io/kube-haproxy/internal/kit"
	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
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
	mode := fs.String("mode", "", "the nodes' kube-proxy mode: haproxy or nftables (default: haproxy in scope node, nftables in scope external)")
	scope := fs.String("scope", localcluster.ScopeNode, "where the haproxy proxier runs: node, cluster or external (docs/scopes.md)")
	_ = fs.Parse(os.Args[2:])
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fail(err)
	}
	switch os.Args[1] {
	case "up":
		err = up(abs, *mode, *scope)
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
	fmt.Fprintln(os.Stderr, "usage: local-cluster up|down|status [-dir DIR] [-mode haproxy|nftables] [-scope node|cluster|external]")
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

func up(dir, mode, scope string) error {
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

	r := &program{dir: dir}
	started := false
	defer func() {
		r.cleanup()
		// The generated files and logs go with the cluster; after a failed
		// start they stay for a look (`down` removes them).
		if started {
			_ = os.RemoveAll(dir)
		}
	}()
	err := r.run(func() error {
		c := localcluster.Start(r, localcluster.Options{
			Mode: mode, Scope: scope, Dir: dir,
			Logf: func(format string, args ...any) { fmt.Printf("local-cluster: "+format+"\n", args...) },
		})
		help, err := c.StartDemo(context.Background())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "info.txt"), []byte(help), 0o644); err != nil {
			return err
		}
		fmt.Print(help)
		return os.WriteFile(filepath.Join(dir, readyFile), nil, 0o644)
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

// program is the kit.T the kits report through in this program. Logf
// prints; Errorf prints to stderr and fails the start-up; Fatalf records
// its error and ends the goroutine that called it, as (*testing.T).Fatalf
// does (the kits rely on it not returning), so run returns the error.
// Cleanup functions run in reverse order when the program removes the
// cluster; temporary directories live in the state directory, beside the
// logs.
type program struct {
	dir string

	mu       sync.Mutex
	cleanups []func()
	tmp      int
	errs     []error
}

// run calls start on a goroutine of its own, which Fatalf may end, and
// returns start's error with those Fatalf and Errorf recorded.
func (p *program) run(start func() error) error {
	done := make(chan error, 1)
	go func() {
		ended := false
		defer func() {
			if !ended {
				done <- nil // runtime.Goexit from Fatalf: its error is recorded
			}
		}()
		err := start()
		ended = true
		done <- err
	}()
	err := <-done
	p.mu.Lock()
	defer p.mu.Unlock()
	return errors.Join(append(p.errs, err)...)
}

func (p *program) cleanup() {
	p.mu.Lock()
	fns := p.cleanups
	p.cleanups = nil
	p.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
	_ = os.Remove(filepath.Join(p.dir, readyFile))
}

func (p *program) record(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err)
}

var _ kit.T = (*program)(nil)

func (p *program) Helper() {}

func (p *program) Logf(format string, a ...any) { fmt.Printf(format+"\n", a...) }

func (p *program) Errorf(format string, a ...any) {
	err := fmt.Errorf(format, a...)
	fmt.Fprintln(os.Stderr, "local-cluster:", err)
	p.record(err)
}

func (p *program) Fatalf(format string, a ...any) {
	p.record(fmt.Errorf(format, a...))
	runtime.Goexit()
}

func (p *program) Cleanup(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cleanups = append(p.cleanups, f)
}

func (p *program) TempDir() string {
	p.mu.Lock()
	p.tmp++
	n := p.tmp
	p.mu.Unlock()
	d := filepath.Join(p.dir, fmt.Sprintf("tmp%d", n))
	if err := os.MkdirAll(d, 0o755); err != nil {
		p.Fatalf("%v", err)
	}
	return d
}
