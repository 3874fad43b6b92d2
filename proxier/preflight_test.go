package proxier

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/internal/kit"
)

func TestCheckHost(t *testing.T) {
	haproxy := kit.Command(t, "haproxy")
	dir := t.TempDir()
	notADir := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(notADir, nil, 0o644))
	script := filepath.Join(dir, "fake-haproxy")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\necho 'not it'\n"), 0o755))

	for name, tc := range map[string]struct {
		mutate  func(*Config)
		wantErr string // prefix: the field named first
	}{
		"usable host, state dir created later": {
			mutate: func(c *Config) { c.StateDir = filepath.Join(dir, "a", "b") },
		},
		"missing binary": {
			mutate:  func(c *Config) { c.HAProxyPath = filepath.Join(dir, "nope") },
			wantErr: "haproxy.binaryPath: ",
		},
		"binary that is not HAProxy": {
			mutate:  func(c *Config) { c.HAProxyPath = script },
			wantErr: "haproxy.binaryPath: ",
		},
		"state dir under a file": {
			mutate:  func(c *Config) { c.StateDir = filepath.Join(notADir, "state") },
			wantErr: "haproxy.stateDir: ",
		},
		"state dir on a read-only file system": {
			mutate:  func(c *Config) { c.StateDir = "/proc/kube-haproxy-state" },
			wantErr: "haproxy.stateDir: ",
		},
		"socket dir not creatable": {
			mutate:  func(c *Config) { c.RuntimeSocket = filepath.Join(notADir, "haproxy.sock") },
			wantErr: "haproxy.runtimeSocket: ",
		},
		"socket dir of an HAProxy run elsewhere is not checked": {
			mutate: func(c *Config) {
				c.ManageProcess = false
				c.RuntimeSocket = filepath.Join(notADir, "haproxy.sock")
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := Config{HAProxyPath: haproxy, StateDir: filepath.Join(dir, "state"), ManageProcess: true}
			tc.mutate(&c)
			c.SetDefaults()
			before := listTree(t, dir)
			err := c.CheckHost(context.Background())
			if tc.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				require.True(t, strings.HasPrefix(err.Error(), tc.wantErr), "error %q does not name %q", err, tc.wantErr)
			}
			require.Equal(t, before, listTree(t, dir), "CheckHost must create nothing")
		})
	}
}

func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	require.NoError(t, filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		names = append(names, p)
		return err
	}))
	return names
}
