// Package kit is what the test kits below it share: T, the few methods of
// *testing.T they call, and the rule for what a test needs from the
// machine.
//
// The kits build real environments: network namespaces with pods
// (kit/netns), etcd and the patched kube-apiserver (kit/controlplane), and
// the local cluster made of both with kube-proxy on every node
// (kit/localcluster). They live under internal/ rather than test/ because
// a program uses them too: cmd/local-cluster runs the local cluster behind
// `make local-up`, so what a person pokes at by hand is what the
// end-to-end suite tests. internal/ keeps them to this module; they are no
// API for other projects.
//
// A kit takes a T, not a testing.TB: *testing.T satisfies it, and a
// program implements its six methods honestly (cmd/local-cluster: Fatalf
// ends the start-up with an error) instead of faking the whole of
// testing.TB.
//
// A missing dependency (root, `ip netns`, haproxy, nft, a binary of
// `make build`) fails the test with what is missing and how to get it. It
// never skips: a skipped test passes, and a `make test` on a machine
// without HAProxy would then pass without having tested anything. The only
// skips are the suites a person opts into (KH_E2E=1, KH_BENCH=1), and the
// README says so.
package kit

import (
	"fmt"
	"os/exec"
)

// T is the part of *testing.T the kits use. Fatalf must not return: it
// ends the calling goroutine, as (*testing.T).Fatalf does.
type T interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// LookCommand returns the path of a command in PATH, or an error that says
// how to install it.
func LookCommand(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("needs %s in PATH (make deps installs it): %w", name, err)
	}
	return p, nil
}

// Command returns the path of a command in PATH, and fails t without it.
func Command(t T, name string) string {
	t.Helper()
	p, err := LookCommand(name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return p
}
