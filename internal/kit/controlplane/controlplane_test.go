package controlplane

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPKIServingCertificateVerifiesForLoopback(t *testing.T) {
	dir := t.TempDir()
	p, err := newPKI(dir)
	require.NoError(t, err)

	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(p.caCertPEM))
	data, err := os.ReadFile(p.servingCert)
	require.NoError(t, err)
	block, _ := pem.Decode(data)
	require.NotNil(t, block)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	for _, name := range []string{"127.0.0.1", "::1", "localhost"} {
		_, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: name})
		assert.NoError(t, err, "serving certificate for %s", name)
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.org"})
	assert.Error(t, err, "serving certificate must not verify for other names")

	for _, f := range []string{p.servingKey, p.serviceAccount} {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		block, _ := pem.Decode(data)
		require.NotNil(t, block, f)
		_, err = x509.ParseECPrivateKey(block.Bytes)
		assert.NoError(t, err, f)
		info, err := os.Stat(f)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), info.Mode().Perm(), "%s must be private", f)
	}
}

func TestBinDir(t *testing.T) {
	t.Setenv("KH_BIN_DIR", "/opt/kh/bin")
	assert.Equal(t, "/opt/kh/bin", BinDir())

	t.Setenv("KH_BIN_DIR", "")
	dir := BinDir()
	assert.True(t, strings.HasSuffix(filepath.ToSlash(dir), "_output/bin"), dir)
	_, err := os.Stat(filepath.Join(dir, "..", "..", "go.mod"))
	assert.NoError(t, err, "BinDir should be <repo>/_output/bin")
}

// TestBinaryMissing: a missing binary is an error that says how to get
// it, whatever the environment (never a skip).
func TestBinaryMissing(t *testing.T) {
	t.Setenv("KH_BIN_DIR", t.TempDir())
	for _, ci := range []string{"true", ""} {
		t.Setenv("CI", ci)
		_, err := FindBinary("kube-apiserver")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "kube-apiserver not found")
		assert.Contains(t, err.Error(), "run make build")
	}
}

func TestBinaryPresent(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KH_BIN_DIR", dir)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "etcd"), []byte("#!/bin/sh\n"), 0o755))
	assert.Equal(t, filepath.Join(dir, "etcd"), Binary(t, "etcd"))
}
