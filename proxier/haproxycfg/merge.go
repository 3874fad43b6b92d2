package haproxycfg

import (
	"fmt"
	"slices"
)

// Merge combines the models of several IP families (the IPv4 and IPv6
// proxiers share one HAProxy) into one Config. Global and Defaults come
// from the first non-nil part; a part whose Global or Defaults differ from
// it is an error, as are two dispatchers of one family. Dispatchers are
// shared with the parts, not copied; IPv4 comes first.
func Merge(parts ...*Config) (*Config, error) {
	var out *Config
	for _, p := range parts {
		if p == nil {
			continue
		}
		if out == nil {
			out = &Config{Global: p.Global, Defaults: p.Defaults}
		} else if p.Global != out.Global || p.Defaults != out.Defaults {
			return nil, fmt.Errorf("merging configs: global or defaults sections differ")
		}
		for _, d := range p.Dispatchers {
			for _, o := range out.Dispatchers {
				if o.IPv6 == d.IPv6 {
					return nil, fmt.Errorf("merging configs: two %s dispatchers", d.familyName())
				}
			}
			out.Dispatchers = append(out.Dispatchers, d)
		}
	}
	if out == nil {
		return &Config{}, nil
	}
	slices.SortStableFunc(out.Dispatchers, func(a, b *Dispatcher) int {
		switch {
		case a.IPv6 == b.IPv6:
			return 0
		case !a.IPv6:
			return -1
		}
		return 1
	})
	return out, nil
}
