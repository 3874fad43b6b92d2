package proxier

import (
	"os"
	"testing"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// TestMain runs the tests, as root, inside a network namespace of their
// own (netns.RunTestsInNamespace): the tests with a real HAProxy bind its
// dispatcher on loopback and program nftables and routes, and HAProxy,
// nft and netlink calls from any goroutine (the supervisor restarts
// HAProxy from one of its own) must act on that namespace, never on the
// host's. Without root the tests run in place and those tests fail,
// saying why: a missing dependency is never a skip (internal/kit).
func TestMain(m *testing.M) { os.Exit(netns.RunTestsInNamespace(m, "proxier")) }

// requireTestNamespace fails the test unless it runs as root inside the
// namespace TestMain made.
func requireTestNamespace(t *testing.T) {
	t.Helper()
	netns.Require(t)
	if os.Getenv(netns.EnvNamespace) == "" {
		t.Fatal("not running inside the test network namespace (TestMain re-executes the tests in one when `ip netns` works)")
	}
}
