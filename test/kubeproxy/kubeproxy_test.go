// Package kubeproxy tests the built, patched kube-proxy binary from the
// outside, as a user runs it: its version, its haproxy flags, and that bad
// haproxy settings are refused at start, naming the field, before anything
// is created.
package kubeproxy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/internal/kit"
	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, controlplane.Binary(t, "kube-proxy"), args...).CombinedOutput()
	return string(out), err
}

func TestVersion(t *testing.T) {
	out, err := run(t, "--version")
	require.NoError(t, err, out)
	// hack/upstream-version names the release; hack/build.sh adds -haproxy.N.
	require.Regexp(t, regexp.MustCompile(`^Kubernetes v1\.\d+\.\d+-haproxy\.\d+\n$`), out)
}

func TestHelpListsHAProxyFlags(t *testing.T) {
	out, err := run(t, "--help")
	require.NoError(t, err, out)
	for _, flag := range []string{
		"--haproxy-binary-path", "--haproxy-state-dir", "--haproxy-master-socket",
		"--haproxy-runtime-socket", "--haproxy-scope", "--haproxy-manage-process",
		"--haproxy-service-proxy-name", "--haproxy-load-balancer-class",
		"--haproxy-hard-stop-after", "--haproxy-max-old-workers", "--haproxy-dispatch-port",
		"--haproxy-prometheus-exporter-address",
	} {
		require.Contains(t, out, flag)
	}
	require.Contains(t, out, "'haproxy'", "--proxy-mode help names the mode")
}

// TestBadInputRefused: each bad setting stops kube-proxy at start with a
// non-zero exit and an error that names the setting; the state directory is
// never created. --master points nowhere: none of these may get as far as
// the API server.
func TestBadInputRefused(t *testing.T) {
	haproxy := kit.Command(t, "haproxy")
	dir := t.TempDir()
	aFile := filepath.Join(dir, "a-file")
	require.NoError(t, os.WriteFile(aFile, nil, 0o600))

	for name, tc := range map[string]struct {
		args  []string
		field string
	}{
		"unknown mode": {
			args:  []string{"--proxy-mode=haproxy2"},
			field: "KubeProxyConfiguration.Mode.ProxyMode",
		},
		"missing binary": {
			args:  []string{"--haproxy-binary-path=" + filepath.Join(dir, "no-haproxy")},
			field: "haproxy.binaryPath",
		},
		"binary that is not haproxy": {
			args:  []string{"--haproxy-binary-path=/bin/true"},
			field: "haproxy.binaryPath",
		},
		"state dir under a file": {
			args:  []string{"--haproxy-state-dir=" + filepath.Join(aFile, "state")},
			field: "haproxy.stateDir",
		},
		"state dir on a read-only file system": {
			args:  []string{"--haproxy-state-dir=/proc/kube-haproxy-test"},
			field: "haproxy.stateDir",
		},
		"relative runtime socket": {
			args:  []string{"--haproxy-runtime-socket=run/haproxy.sock"},
			field: "KubeProxyConfiguration.HAProxy.RuntimeSocket",
		},
		"relative master socket": {
			args:  []string{"--haproxy-master-socket=master.sock"},
			field: "KubeProxyConfiguration.HAProxy.MasterSocket",
		},
		"unknown scope": {
			args:  []string{"--haproxy-scope=galaxy"},
			field: "KubeProxyConfiguration.HAProxy.Scope",
		},
		"negative hard stop": {
			args:  []string{"--haproxy-hard-stop-after=-1m"},
			field: "KubeProxyConfiguration.HAProxy.HardStopAfter",
		},
		"no reload survived": {
			args:  []string{"--haproxy-max-old-workers=0"},
			field: "KubeProxyConfiguration.HAProxy.MaxOldWorkers",
		},
		"dispatch port without a peer port": {
			args:  []string{"--haproxy-dispatch-port=65535"},
			field: "KubeProxyConfiguration.HAProxy.DispatchPort",
		},
		"exporter address with a second line": {
			args:  []string{"--haproxy-prometheus-exporter-address=127.0.0.1:9101\nfrontend x"},
			field: "KubeProxyConfiguration.HAProxy.PrometheusExporterAddress",
		},
	} {
		t.Run(name, func(t *testing.T) {
			state := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			args := append([]string{
				"--proxy-mode=haproxy",
				"--haproxy-binary-path=" + haproxy,
				"--haproxy-state-dir=" + state,
				"--master=https://127.0.0.1:1",
			}, tc.args...) // later flags win
			out, err := run(t, args...)
			var exitErr *exec.ExitError
			require.ErrorAs(t, err, &exitErr, "kube-proxy did not fail:\n%s", out)
			require.NotZero(t, exitErr.ExitCode())
			require.Contains(t, out, tc.field+":", "the error names the field")
			require.NoDirExists(t, state, "nothing is created")
		})
	}
}
