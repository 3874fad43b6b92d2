package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

func repoRoot(t *testing.T) string {
	_, file, _, ok := runtime.Caller(0)
	require.True(t, ok)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// script runs hack/<name>.sh with the state directory dir.
func script(t *testing.T, dir, name string) (string, error) {
	cmd := exec.Command("bash", filepath.Join(repoRoot(t), "hack", name+".sh"))
	cmd.Env = append(os.Environ(), "LOCAL_DIR="+dir, "KH_BIN_DIR="+controlplane.BinDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func namespacesOf(t *testing.T, pid string) []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], netns.Prefix+pid+"-") {
			names = append(names, f[0])
		}
	}
	return names
}

// processesUsing lists the processes whose command line names dir (etcd,
// kube-apiserver, kube-proxy and HAProxy all get paths inside it).
func processesUsing(t *testing.T, dir string) []string {
	out, _ := exec.Command("pgrep", "-a", "-f", dir).Output()
	var procs []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" && !strings.Contains(line, "pgrep") {
			procs = append(procs, line)
		}
	}
	return procs
}

// TestLocalUpDown runs the make targets' scripts: local-up starts the
// cluster, a second local-up says it is already up, a crashed cluster is
// cleaned by the next local-up, and local-down leaves no namespace,
// process or file behind.
func TestLocalUpDown(t *testing.T) {
	netns.Require(t)
	netns.RequireBinary(t, "haproxy")
	for _, b := range []string{"etcd", "kube-apiserver", "kube-proxy"} {
		controlplane.Binary(t, b)
	}
	dir := filepath.Join(t.TempDir(), "local")
	t.Cleanup(func() { _, _ = script(t, dir, "local-down") })

	out, err := script(t, dir, "local-up")
	require.NoError(t, err, out)
	assert.Contains(t, out, "curl -s http://192.0.2.10/")
	pidBytes, err := os.ReadFile(filepath.Join(dir, "pid"))
	require.NoError(t, err)
	first := strings.TrimSpace(string(pidBytes))
	assert.Len(t, namespacesOf(t, first), 9, "lan, 2 nodes, outside, 5 pods")
	assert.NotEmpty(t, processesUsing(t, dir))
	// The printed LoadBalancer command works (bash instead of curl, which
	// a CI machine may lack).
	answer, err := exec.Command("ip", "netns", "exec", netns.Prefix+first+"-1-outside", "bash", "-c",
		`exec 3<>/dev/tcp/192.0.2.10/80 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && timeout 5 cat <&3`).CombinedOutput()
	require.NoError(t, err, string(answer))
	assert.Contains(t, string(answer), `"name":"demo-node`)
	// So does the printed explain of the demo Service.
	assert.Contains(t, out, "ip netns exec "+netns.Prefix+first+"-1-node1 curl -s http://127.0.0.1:10249/haproxy/explain/default/demo")
	explained, err := exec.Command("ip", "netns", "exec", netns.Prefix+first+"-1-node1", "bash", "-c",
		`exec 3<>/dev/tcp/127.0.0.1/10249 && printf 'GET /haproxy/explain/default/demo HTTP/1.0\r\n\r\n' >&3 && timeout 5 cat <&3`).CombinedOutput()
	require.NoError(t, err, string(explained))
	assert.Contains(t, string(explained), "port http 80/TCP: default.demo:http:tcp")
	assert.Contains(t, string(explained), "port echo 53/UDP: not served by HAProxy: HAProxy proxies TCP only; served by upstream's nftables proxier on this host")

	out, err = script(t, dir, "local-up")
	require.NoError(t, err, out)
	assert.Contains(t, out, "already up")

	// A crash: the holder dies without cleaning up.
	require.NoError(t, exec.Command("kill", "-9", first).Run())
	time.Sleep(time.Second)
	out, err = script(t, dir, "local-up")
	require.NoError(t, err, out)
	pidBytes, err = os.ReadFile(filepath.Join(dir, "pid"))
	require.NoError(t, err)
	second := strings.TrimSpace(string(pidBytes))
	assert.NotEqual(t, first, second)
	assert.Empty(t, namespacesOf(t, first), "the crashed run's namespaces are gone")
	assert.Len(t, namespacesOf(t, second), 9)

	out, err = script(t, dir, "local-down")
	require.NoError(t, err, out)
	assert.Empty(t, namespacesOf(t, second))
	assert.Empty(t, processesUsing(t, dir))
	assert.NoDirExists(t, dir)
	assert.NoFileExists(t, dir+".log")
}
