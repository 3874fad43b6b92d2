package haproxycfg

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg/haproxytest"
)

func TestMerge(t *testing.T) {
	v4 := sampleConfig()
	v6 := &Config{
		Global:   v4.Global,
		Defaults: v4.Defaults,
		Frontends: []*Frontend{{
			Name:           "default.web:http:tcp:ipv6",
			Binds:          []Bind{{Name: "clusterip", Addr: ip("fd00::10"), Port: 80}},
			DefaultBackend: "default.web:http:tcp:ipv6",
		}},
		Backends: []*Backend{{Name: "default.web:http:tcp:ipv6", Servers: []Server{{Name: "fd00::1.80", Addr: ip("fd00::1"), Port: 80, ID: 1}}}},
	}
	merged, err := Merge(v6, nil, v4)
	require.NoError(t, err)
	assert.Equal(t, v4.Global, merged.Global)
	var names []string
	for _, f := range merged.Frontends {
		names = append(names, f.Name)
	}
	assert.Equal(t, []string{"default.web:http:tcp", "default.web:http:tcp:ipv6"}, names)
	assert.Len(t, merged.Backends, 3)
	out, err := Render(merged)
	require.NoError(t, err)
	haproxytest.Check(t, out)

	// The inputs are not modified.
	assert.Len(t, v4.Frontends, 1)
	assert.Len(t, v6.Backends, 1)
}

func TestMergeConflicts(t *testing.T) {
	_, err := Merge(sampleConfig(), sampleConfig())
	assert.ErrorContains(t, err, "appears twice")

	other := &Config{Global: Global{MaxConn: 1}}
	_, err = Merge(sampleConfig(), other)
	assert.ErrorContains(t, err, "differ")

	empty, err := Merge()
	require.NoError(t, err)
	assert.Empty(t, empty.Frontends)
}
