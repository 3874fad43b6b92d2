package haproxycfg

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func servers(names ...string) []Server {
	out := make([]Server, len(names))
	for i, n := range names {
		out[i] = Server{Name: n, Addr: ip("10.0.0.1"), Port: uint16(1000 + i)}
	}
	return out
}

func ids(be *Backend) map[string]int {
	out := map[string]int{}
	for _, s := range be.Servers {
		out[s.Name] = s.ID
	}
	return out
}

func TestAssignServerIDs(t *testing.T) {
	testCases := []struct {
		name string
		prev *Config
		next *Config
		want map[string]map[string]int
	}{
		{
			name: "first config numbers servers from 1 in order",
			next: &Config{Backends: []*Backend{{Name: "b", Servers: servers("x", "y", "z")}}},
			want: map[string]map[string]int{"b": {"x": 1, "y": 2, "z": 3}},
		},
		{
			name: "kept servers keep ids, new ones take the lowest free id",
			prev: &Config{Backends: []*Backend{{Name: "b", Servers: []Server{{Name: "x", ID: 1}, {Name: "y", ID: 2}, {Name: "z", ID: 3}}}}},
			next: &Config{Backends: []*Backend{{Name: "b", Servers: servers("new1", "z", "new2", "new3")}}},
			want: map[string]map[string]int{"b": {"z": 3, "new1": 1, "new2": 2, "new3": 4}},
		},
		{
			name: "ids are per backend, and ids set in next are overwritten",
			prev: &Config{Backends: []*Backend{{Name: "a", Servers: []Server{{Name: "x", ID: 7}}}}},
			next: &Config{Backends: []*Backend{
				{Name: "a", Servers: []Server{{Name: "y", ID: 7}, {Name: "x", ID: 1}}},
				{Name: "b", Servers: servers("x")},
			}},
			want: map[string]map[string]int{"a": {"x": 7, "y": 1}, "b": {"x": 1}},
		},
		{
			name: "a backend that disappeared and came back starts afresh",
			prev: &Config{Backends: []*Backend{{Name: "other", Servers: []Server{{Name: "x", ID: 5}}}}},
			next: &Config{Backends: []*Backend{{Name: "b", Servers: servers("x")}}},
			want: map[string]map[string]int{"b": {"x": 1}},
		},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			AssignServerIDs(tc.prev, tc.next)
			got := map[string]map[string]int{}
			for _, be := range tc.next.Backends {
				got[be.Name] = ids(be)
			}
			assert.Equal(t, tc.want, got)
		})
	}
}
