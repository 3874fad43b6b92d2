package haproxycfg

import (
	"fmt"
	"slices"
	"strings"
)

// Merge combines the models of several IP families (the IPv4 and IPv6
// proxiers share one HAProxy) into one Config. Global and Defaults come
// from the first non-nil part; a part whose Global or Defaults differ from
// it is an error, as are frontend or backend names that appear in two
// parts (family-specific names keep them apart). Frontends and backends
// are shared with the parts, not copied; the result is sorted by name.
func Merge(parts ...*Config) (*Config, error) {
	var out *Config
	// Names can clash only between parts (within one, Validate checks
	// them): a single family needs no sets of 10,000 names.
	n, nf, nb := 0, 0, 0
	for _, p := range parts {
		if p != nil {
			n, nf, nb = n+1, nf+len(p.Frontends), nb+len(p.Backends)
		}
	}
	var frontends, backends map[string]bool
	if n > 1 {
		frontends, backends = map[string]bool{}, map[string]bool{}
	}
	for _, p := range parts {
		if p == nil {
			continue
		}
		if out == nil {
			out = &Config{Global: p.Global, Defaults: p.Defaults,
				Frontends: make([]*Frontend, 0, nf), Backends: make([]*Backend, 0, nb)}
		} else if p.Global != out.Global || p.Defaults != out.Defaults {
			return nil, fmt.Errorf("merging configs: global or defaults sections differ")
		}
		for _, f := range p.Frontends {
			if frontends != nil {
				if frontends[f.Name] {
					return nil, fmt.Errorf("merging configs: frontend %q appears twice", f.Name)
				}
				frontends[f.Name] = true
			}
			out.Frontends = append(out.Frontends, f)
		}
		for _, be := range p.Backends {
			if backends != nil {
				if backends[be.Name] {
					return nil, fmt.Errorf("merging configs: backend %q appears twice", be.Name)
				}
				backends[be.Name] = true
			}
			out.Backends = append(out.Backends, be)
		}
	}
	if out == nil {
		return &Config{}, nil
	}
	SortByName(out)
	return out, nil
}

// SortByName orders c's frontends and backends by name, the order the
// renderer writes them in.
func SortByName(c *Config) {
	// Translated models mostly come sorted: checking is cheaper than
	// sorting 10,000 names again.
	fe := func(a, b *Frontend) int { return strings.Compare(a.Name, b.Name) }
	if !slices.IsSortedFunc(c.Frontends, fe) {
		slices.SortFunc(c.Frontends, fe)
	}
	be := func(a, b *Backend) int { return strings.Compare(a.Name, b.Name) }
	if !slices.IsSortedFunc(c.Backends, be) {
		slices.SortFunc(c.Backends, be)
	}
}
