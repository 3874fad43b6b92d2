// Package e2e runs end-to-end scenarios against the local cluster of
// internal/kit/localcluster: real kube-apiserver, kube-proxy on two node
// namespaces, pods, and clients sending real connections. The same
// scenarios run with kube-proxy in haproxy mode and in upstream's nftables
// mode (the same patched binary), and in the central scope "cluster" (no
// kube-proxy on the nodes, two load balancers with keepalived); scope
// "external" runs the scenarios of what it serves. The suite prints the
// results side by side, so our modes are measured against upstream's
// behaviour, with the differences that are by design named.
//
//	KH_E2E=1 go test -v -count=1 -timeout 60m ./test/e2e/            # every setup
//	KH_E2E=1 MODE=nftables go test -v -count=1 ./test/e2e/          # one setup
//	KH_E2E=1 MODE=cluster,external go test -v -count=1 ./test/e2e/  # the scopes
//
// The suite is opt-in (KH_E2E=1; without it TestE2E skips and says so)
// because it starts two clusters and takes minutes; hack/test.sh, and so
// `make test`, runs it. Root, `ip netns`, nft, haproxy and the
// `make build` binaries are prerequisites: missing, they fail the suite.
package e2e

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"

	"kube-haproxy.io/kube-haproxy/internal/kit/localcluster"
)

// result is one scenario's outcome in one mode.
type result struct {
	status string // pass, FAIL, skip
	note   string
}

var (
	resultsMu sync.Mutex
	// results[scenario][mode]
	results = map[string]map[string]result{}
	order   []string
	// byDesign explains scenarios whose results differ between modes on
	// purpose.
	byDesign = map[string]string{}
)

func record(scenario, mode string, r result) {
	// Scenarios run one at a time; the lock keeps the summary safe anyway.
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if results[scenario] == nil {
		results[scenario] = map[string]result{}
		order = append(order, scenario)
	}
	results[scenario][mode] = r
}

// Setups beyond the nodes' modes: the proxier's central scopes.
const (
	setupCluster  = localcluster.ScopeCluster
	setupExternal = localcluster.ScopeExternal
)

func modes() []string {
	if m := os.Getenv("MODE"); m != "" {
		return strings.Split(m, ",")
	}
	return []string{localcluster.ModeHAProxy, localcluster.ModeNFTables, setupCluster, setupExternal}
}

// clusterOptions is the local cluster of a setup.
func clusterOptions(setup string) localcluster.Options {
	switch setup {
	case setupCluster, setupExternal:
		return localcluster.Options{Scope: setup}
	default:
		return localcluster.Options{Mode: setup}
	}
}

// scenariosOf lists what runs in a setup: scope external serves only the
// Services labelled for it and of its class, so it runs its own list.
func scenariosOf(setup string) []scenario {
	if setup == setupExternal {
		return externalScenarios
	}
	if setup == setupCluster {
		return append(slices.Clone(scenarios), ingressIPScenario)
	}
	return scenarios
}

func TestMain(m *testing.M) {
	code := m.Run()
	printSummary(os.Stdout)
	os.Exit(code)
}

func printSummary(w *os.File) {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if len(order) == 0 {
		return
	}
	ms := modes()
	fmt.Fprintln(w, "\n== end-to-end summary")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "scenario")
	for _, m := range ms {
		fmt.Fprintf(tw, "\t%s", m)
	}
	fmt.Fprintln(tw)
	for _, s := range order {
		fmt.Fprint(tw, s)
		for _, m := range ms {
			r, ok := results[s][m]
			cell := "-"
			if ok {
				cell = r.status
				if r.note != "" {
					cell += ": " + r.note
				}
			}
			fmt.Fprintf(tw, "\t%s", cell)
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()
	var notes []string
	for s, why := range byDesign {
		notes = append(notes, fmt.Sprintf("  %s: differs by design: %s", s, why))
	}
	sort.Strings(notes)
	if len(notes) > 0 {
		fmt.Fprintln(w, strings.Join(notes, "\n"))
	}
}

// TestE2E starts a cluster per mode and runs every scenario against it.
func TestE2E(t *testing.T) {
	if os.Getenv("KH_E2E") != "1" {
		t.Skip("opt-in: set KH_E2E=1 to run the end-to-end suite (hack/test.sh does)")
	}
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			opts := clusterOptions(mode)
			opts.Logf = t.Logf
			c := localcluster.Start(t, opts)
			e := newEnv(t, c, mode)
			for _, sc := range scenariosOf(mode) {
				// A scenario that fails after measuring (assert, not
				// require) keeps its note in the summary.
				var note string
				ok := t.Run(sc.name, func(t *testing.T) {
					note = sc.run(t, e)
					if !t.Failed() && !t.Skipped() {
						record(sc.name, mode, result{status: "pass", note: note})
					}
				})
				if !ok {
					record(sc.name, mode, result{status: "FAIL", note: note})
				}
			}
		})
	}
}
