package apply

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// mapDiff is what turns the maps HAProxy has into those of a dispatcher.
type mapDiff struct {
	services, endpoints entryDiff
	sources             struct{ add, del []string }
}

// entryDiff holds the changes of one map.
type entryDiff struct {
	add, set []haproxycfg.MapEntry
	del      []string
}

func (e *entryDiff) empty() bool { return len(e.add)+len(e.set)+len(e.del) == 0 }

func (m *mapDiff) empty() bool {
	return m.services.empty() && m.endpoints.empty() && len(m.sources.add)+len(m.sources.del) == 0
}

// diffEntries compares two maps' content (key to value).
func diffEntries(have, want map[string]string) entryDiff {
	var d entryDiff
	for k, v := range want {
		old, ok := have[k]
		switch {
		case !ok:
			d.add = append(d.add, haproxycfg.MapEntry{Key: k, Value: v})
		case old != v:
			d.set = append(d.set, haproxycfg.MapEntry{Key: k, Value: v})
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			d.del = append(d.del, k)
		}
	}
	return d
}

// entryMap collects the entries of Service ports into key to value.
func entryMap(ports []*haproxycfg.ServicePort, dispatch bool) map[string]string {
	var entries []haproxycfg.MapEntry
	for _, sp := range ports {
		if dispatch {
			entries = sp.AppendDispatchEntries(entries)
		} else {
			entries = sp.AppendEndpointEntries(entries)
		}
	}
	m := make(map[string]string, len(entries))
	for _, e := range entries {
		m[e.Key] = e.Value
	}
	return m
}

// incrementalDiff compares the Service ports of d with those of prev, the
// dispatcher HAProxy's maps hold: only the Service ports that are not the
// very same objects are looked at, so a change costs in proportion to
// what changed (plus one pointer comparison per Service port).
func incrementalDiff(prev, d *haproxycfg.Dispatcher) *mapDiff {
	index := make(map[string]*haproxycfg.ServicePort, len(prev.ServicePorts))
	for _, sp := range prev.ServicePorts {
		index[sp.Name] = sp
	}
	var before, after []*haproxycfg.ServicePort
	for _, sp := range d.ServicePorts {
		old, ok := index[sp.Name]
		if ok {
			delete(index, sp.Name)
		}
		if old == sp {
			continue
		}
		if ok {
			before = append(before, old)
		}
		after = append(after, sp)
	}
	for _, gone := range index {
		before = append(before, gone)
	}
	diff := &mapDiff{
		services:  diffEntries(entryMap(before, true), entryMap(after, true)),
		endpoints: diffEntries(entryMap(before, false), entryMap(after, false)),
	}
	diff.sources.add, diff.sources.del = diffPrefixes(prefixStrings(prev.ClusterSources), prefixStrings(d.ClusterSources))
	return diff
}

// fullDiff reads HAProxy's maps and compares them with all of d. A key
// HAProxy holds twice (someone used "add map" by hand) is deleted and
// added again, so exactly one entry remains.
func (a *Applier) fullDiff(ctx context.Context, d *haproxycfg.Dispatcher) (*mapDiff, error) {
	read := func(file string) (map[string]string, []string, error) {
		entries, err := a.opts.Runtime.ShowMap(ctx, file)
		if err != nil {
			return nil, nil, fmt.Errorf("reading %s: %w", file, err)
		}
		m := make(map[string]string, len(entries))
		var dups []string
		for _, e := range entries {
			if _, dup := m[e.Key]; dup {
				dups = append(dups, e.Key)
				// An impossible value: the entry is set again.
				m[e.Key] = "\x00"
				continue
			}
			m[e.Key] = e.Value
		}
		return m, dups, nil
	}
	services, sdups, err := read(d.ServicesMap())
	if err != nil {
		return nil, err
	}
	endpoints, edups, err := read(d.EndpointsMap())
	if err != nil {
		return nil, err
	}
	sources, err := a.opts.Runtime.ShowACL(ctx, d.ClusterSourcesACL())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", d.ClusterSourcesACL(), err)
	}
	diff := &mapDiff{
		services:  diffEntries(services, entryMap(d.ServicePorts, true)),
		endpoints: diffEntries(endpoints, entryMap(d.ServicePorts, false)),
	}
	dedupe(&diff.services, sdups)
	dedupe(&diff.endpoints, edups)
	diff.sources.add, diff.sources.del = diffPrefixes(sources, prefixStrings(d.ClusterSources))
	return diff, nil
}

// dedupe turns the "set" of a duplicated key into "del" then "add".
func dedupe(e *entryDiff, dups []string) {
	if len(dups) == 0 {
		return
	}
	dup := make(map[string]bool, len(dups))
	for _, k := range dups {
		dup[k] = true
	}
	sets := e.set[:0]
	for _, s := range e.set {
		if dup[s.Key] {
			e.del = append(e.del, s.Key)
			e.add = append(e.add, s)
			continue
		}
		sets = append(sets, s)
	}
	e.set = sets
	for k := range dup {
		found := false
		for _, a := range e.add {
			found = found || a.Key == k
		}
		for _, d := range e.del {
			found = found || d == k
		}
		if !found {
			// Unwanted and duplicated: the del above did not happen yet.
			e.del = append(e.del, k)
		}
	}
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked().String())
	}
	return out
}

func diffPrefixes(have, want []string) (add, del []string) {
	h := make(map[string]bool, len(have))
	for _, p := range have {
		h[p] = true
	}
	w := make(map[string]bool, len(want))
	for _, p := range want {
		w[p] = true
		if !h[p] {
			add = append(add, p)
		}
	}
	for _, p := range have {
		if !w[p] {
			del = append(del, p)
		}
	}
	return add, del
}

// isCount tells the count entry of an endpoint set ("<set>") from its
// endpoint entries ("<set>/<i>", "<set>/ep<id>").
func isCount(key string) bool { return !strings.Contains(key, "/") }

// appendCommands adds the commands of diff to b in an order that keeps
// every state in between consistent for a connection that looks the maps
// up meanwhile:
//
//  1. new and changed endpoint entries, then the counts: a count never
//     covers an index that does not exist yet;
//  2. new cluster sources;
//  3. new and changed services entries, then removed ones: a Service
//     port never points at a set that is not there yet;
//  4. removed counts, then removed endpoint entries: an index is gone
//     only once no count covers it;
//  5. removed cluster sources.
func appendCommands(b *runtimeapi.Batch, d *haproxycfg.Dispatcher, diff *mapDiff) {
	services, endpoints, sources := d.ServicesMap(), d.EndpointsMap(), d.ClusterSourcesACL()
	upsert := func(file string, e *entryDiff, counts bool) {
		for _, x := range e.add {
			if file != endpoints || isCount(x.Key) == counts {
				b.AddMap(file, x.Key, x.Value)
			}
		}
		for _, x := range e.set {
			if file != endpoints || isCount(x.Key) == counts {
				b.SetMap(file, x.Key, x.Value)
			}
		}
	}
	remove := func(file string, e *entryDiff, counts bool) {
		for _, k := range e.del {
			if file != endpoints || isCount(k) == counts {
				b.DelMap(file, k)
			}
		}
	}
	upsert(endpoints, &diff.endpoints, false)
	upsert(endpoints, &diff.endpoints, true)
	for _, p := range diff.sources.add {
		b.AddACL(sources, p)
	}
	upsert(services, &diff.services, true)
	remove(services, &diff.services, true)
	remove(endpoints, &diff.endpoints, true)
	remove(endpoints, &diff.endpoints, false)
	for _, p := range diff.sources.del {
		b.DelACL(sources, p)
	}
}

// runtimeUpdate brings HAProxy's maps to want's through the runtime API,
// then writes the map files of what changed.
func (a *Applier) runtimeUpdate(ctx context.Context, want *haproxycfg.Config) error {
	var b runtimeapi.Batch
	diffs := make([]*mapDiff, len(want.Dispatchers))
	full := false
	for i, d := range want.Dispatchers {
		prev := a.applied[d.IPv6]
		var err error
		if prev == nil || prev.MapDir != d.MapDir {
			full = true
			diffs[i], err = a.fullDiff(ctx, d)
			if err != nil {
				return err
			}
		} else {
			diffs[i] = incrementalDiff(prev, d)
		}
		appendCommands(&b, d, diffs[i])
	}
	if b.Len() > 0 {
		if err := a.opts.Runtime.Run(ctx, &b); err != nil {
			runtimeUpdatesTotal.WithLabelValues("failed").Inc()
			return fmt.Errorf("runtime API update: %w", err)
		}
		runtimeUpdatesTotal.WithLabelValues("success").Inc()
		runtimeCommandsTotal.Add(float64(b.Len()))
	}
	for i, d := range want.Dispatchers {
		// After a full read the files are written whole: whoever changed
		// HAProxy's maps may have changed the files too.
		if full || !diffs[i].empty() {
			a.writeMaps(d, full || !diffs[i].services.empty(), full || !diffs[i].endpoints.empty(), full || len(diffs[i].sources.add)+len(diffs[i].sources.del) > 0)
		}
		a.applied[d.IPv6] = d
		setMapEntries(d)
	}
	if full {
		a.lastRead = a.opts.Clock.Now()
	}
	if b.Len() > 0 {
		a.logger.V(2).Info("HAProxy maps updated through the runtime API", "commands", b.Len())
	}
	return nil
}

// setMapEntries sets the entry gauges of d's maps.
func setMapEntries(d *haproxycfg.Dispatcher) {
	services, endpoints := 0, 0
	for _, sp := range d.ServicePorts {
		services += len(sp.Listeners)
		for _, set := range sp.Sets() {
			n := len(set.Endpoints)
			if sp.Affinity > 0 {
				n *= 2
			}
			endpoints += 1 + n
		}
	}
	mapEntries.WithLabelValues(familyLabel(d), "services").Set(float64(services))
	mapEntries.WithLabelValues(familyLabel(d), "endpoints").Set(float64(endpoints))
}

func familyLabel(d *haproxycfg.Dispatcher) string {
	if d.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// writeMaps writes the chosen files of d. The runtime API has already
// changed HAProxy's memory, so a failure here only means a restarted
// HAProxy starts from older files; it is logged, and the next full read
// (after a restart, or FullReadInterval) repairs the difference.
func (a *Applier) writeMaps(d *haproxycfg.Dispatcher, services, endpoints, sources bool) {
	s, e, c := haproxycfg.RenderMaps(d)
	for _, f := range []struct {
		write bool
		path  string
		data  []byte
	}{{services, d.ServicesMap(), s}, {endpoints, d.EndpointsMap(), e}, {sources, d.ClusterSourcesACL(), c}} {
		if !f.write {
			continue
		}
		if err := replaceFile(f.path, f.data, false); err != nil {
			a.logger.Error(err, "Writing an HAProxy map file failed", "file", f.path)
		}
	}
}

// writeAllMaps writes every map file of want durably, before a reload
// makes HAProxy read them.
func writeAllMaps(want *haproxycfg.Config) error {
	for _, d := range want.Dispatchers {
		if err := os.MkdirAll(d.MapDir, 0o750); err != nil {
			return err
		}
		s, e, c := haproxycfg.RenderMaps(d)
		for path, data := range map[string][]byte{d.ServicesMap(): s, d.EndpointsMap(): e, d.ClusterSourcesACL(): c} {
			if err := replaceFile(path, data, true); err != nil {
				return err
			}
		}
	}
	return nil
}
