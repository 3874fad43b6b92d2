package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// EnvNamespace names the namespace a test binary was re-executed in by
// RunTestsInNamespace.
const EnvNamespace = "KH_TEST_NETNS"

// RunTestsInNamespace is for the TestMain of a package whose code under
// test must run wholly inside one network namespace: a proxier execs
// HAProxy and nft and talks netlink from any goroutine, and only a
// process started inside a namespace has every thread there.
//
// Outside, it creates the namespace kh-<pid>-0-<short>, runs the test
// binary again inside it with the same arguments, deletes the namespace
// (and whatever still runs in it) and returns the exit code. Inside, or
// where namespaces are not available (not root), it runs the tests in
// place; they then fail through New.
//
//	func TestMain(m *testing.M) { os.Exit(netns.RunTestsInNamespace(m, "node")) }
func RunTestsInNamespace(m interface{ Run() int }, short string) int {
	if os.Getenv(EnvNamespace) != "" || os.Geteuid() != 0 {
		return m.Run()
	}
	if err := exec.Command("ip", "netns", "list").Run(); err != nil {
		return m.Run()
	}
	if err := SweepStale(); err != nil {
		fmt.Fprintf(os.Stderr, "sweeping stale namespaces: %v\n", err)
	}
	name := fmt.Sprintf("%s%d-0-%s", Prefix, os.Getpid(), short)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "ip netns add %s: %v: %s\n", name, err, out)
		return 1
	}
	code := func() int {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintf(os.Stderr, "finding the test binary: %v\n", err)
			return 1
		}
		if _, err := runIP("-n", name, "link", "set", "lo", "up"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		cmd := exec.Command("ip", append([]string{"netns", "exec", name, self}, os.Args[1:]...)...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), EnvNamespace+"="+name)
		err = cmd.Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &exit):
			return exit.ExitCode()
		default:
			fmt.Fprintf(os.Stderr, "running the tests in %s: %v\n", name, err)
			return 1
		}
	}()
	if err := removeNamespace(name); err != nil {
		fmt.Fprintf(os.Stderr, "cleanup: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Self returns the namespace this test process runs in, as created by
// RunTestsInNamespace. The Kit stops the processes it starts there but
// leaves the namespace to RunTestsInNamespace. It fails the test when the
// process was not re-executed in a namespace.
func (k *Kit) Self() *Namespace {
	k.t.Helper()
	name := os.Getenv(EnvNamespace)
	if name == "" {
		k.t.Fatalf("not running inside a test namespace: the package's TestMain must call netns.RunTestsInNamespace")
	}
	h, err := netnsFromName(name)
	if err != nil {
		k.t.Fatalf("open namespace %s: %v", name, err)
	}
	n := &Namespace{Name: name, Short: "self", kit: k, handle: h, adopted: true}
	k.mu.Lock()
	k.namespaces = append(k.namespaces, n)
	k.mu.Unlock()
	return n
}
