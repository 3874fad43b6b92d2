// Package kubeadm holds a kubeadm configuration that selects the haproxy
// mode, and checks that the built kube-proxy accepts it.
package kubeadm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"kube-haproxy.io/kube-haproxy/internal/kit/controlplane"
)

// kubeProxyDocument returns the KubeProxyConfiguration document of
// kubeadm-config.yaml byte for byte: what kubeadm hands to kube-proxy.
func kubeProxyDocument(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("kubeadm-config.yaml")
	require.NoError(t, err)
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		if bytes.Contains(doc, []byte("\nkind: KubeProxyConfiguration\n")) {
			return doc
		}
	}
	t.Fatal("kubeadm-config.yaml has no KubeProxyConfiguration document")
	return nil
}

// TestKubeProxyLoadsExample runs the built kube-proxy with the example's
// KubeProxyConfiguration: it must parse, validate and convert it, and write
// it back (--write-config-to) with the haproxy section as given.
func TestKubeProxyLoadsExample(t *testing.T) {
	bin := controlplane.Binary(t, "kube-proxy")
	dir := t.TempDir()
	config := filepath.Join(dir, "config.conf")
	require.NoError(t, os.WriteFile(config, kubeProxyDocument(t), 0o600))
	out := filepath.Join(dir, "written.yaml")

	cmd := exec.Command(bin, "--config="+config, "--write-config-to="+out)
	output, err := cmd.CombinedOutput()
	require.NoError(t, err, "kube-proxy refused the example:\n%s", output)

	written, err := os.ReadFile(out)
	require.NoError(t, err)
	var got struct {
		Mode    string `json:"mode"`
		HAProxy struct {
			BinaryPath    string `json:"binaryPath"`
			StateDir      string `json:"stateDir"`
			Scope         string `json:"scope"`
			ManageProcess bool   `json:"manageProcess"`
			SyncPeriod    string `json:"syncPeriod"`
			MinSyncPeriod string `json:"minSyncPeriod"`
		} `json:"haproxy"`
		NodePortAddresses []string `json:"nodePortAddresses"`
	}
	require.NoError(t, yaml.Unmarshal(written, &got))
	require.Equal(t, "haproxy", got.Mode)
	require.Equal(t, "/usr/sbin/haproxy", got.HAProxy.BinaryPath)
	require.Equal(t, "/var/run/kube-haproxy", got.HAProxy.StateDir)
	require.Equal(t, "node", got.HAProxy.Scope)
	require.True(t, got.HAProxy.ManageProcess)
	require.Equal(t, "30s", got.HAProxy.SyncPeriod)
	require.Equal(t, "10ms", got.HAProxy.MinSyncPeriod)
	require.Equal(t, []string{"primary"}, got.NodePortAddresses)
}

// TestKubeProxyRefusesBrokenExample checks the other side: the same document
// with one field broken is refused, naming that field.
func TestKubeProxyRefusesBrokenExample(t *testing.T) {
	bin := controlplane.Binary(t, "kube-proxy")
	doc := bytes.Replace(kubeProxyDocument(t), []byte("scope: node"), []byte("scope: planet"), 1)
	config := filepath.Join(t.TempDir(), "config.conf")
	require.NoError(t, os.WriteFile(config, doc, 0o600))

	output, err := exec.Command(bin, "--config="+config, "--write-config-to="+config+".out").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(output), "KubeProxyConfiguration.HAProxy.Scope: Unsupported value")
	require.Contains(t, string(output), "planet")
	require.NoFileExists(t, config+".out")
}
