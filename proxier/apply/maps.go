package apply

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// mapDiff is what turns the maps HAProxy has into those of a dispatcher.
type mapDiff struct {
	services, endpoints entryDiff
	sources             prefixDiff
}

// entryDiff holds the changes of one map.
type entryDiff struct {
	add, set []haproxycfg.MapEntry
	del      []string
	// readd are keys HAProxy holds more than once (someone used "add map"
	// by hand) that the model wants: deleted (every copy) and added
	// again, in that order, so exactly one entry remains.
	readd []haproxycfg.MapEntry
}

func (e *entryDiff) empty() bool { return len(e.add)+len(e.set)+len(e.del)+len(e.readd) == 0 }

// prefixDiff holds the changes of an ACL file.
type prefixDiff struct {
	add, del []string
	// readd: patterns held more than once that the model wants.
	readd []string
}

func (p *prefixDiff) empty() bool { return len(p.add)+len(p.del)+len(p.readd) == 0 }

func (m *mapDiff) empty() bool {
	return m.services.empty() && m.endpoints.empty() && m.sources.empty()
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
	before, after, ok := changedSorted(prev.ServicePorts, d.ServicePorts)
	if !ok {
		before, after = changedByName(prev.ServicePorts, d.ServicePorts)
	}
	assignGenerations(before, after)
	diff := &mapDiff{
		services:  diffEntries(entryMap(before, true), entryMap(after, true)),
		endpoints: diffEntries(entryMap(before, false), entryMap(after, false)),
	}
	diff.sources = diffPrefixes(prefixStrings(prev.ClusterSources), prefixStrings(d.ClusterSources))
	return diff
}

// assignGenerations gives the endpoint sets of the new and changed Service
// ports (after) their generation: the one HAProxy holds (in before) when
// the set's entries did not change, the next one when they did, 0 for a
// new set. So an endpoint change is a new generation's entries added to
// the endpoints map, the set's services map entry switched to it, and
// the old generation's entries deleted: the large endpoints map gets no
// "set map", which HAProxy 2.6 does in time proportional to the map.
func assignGenerations(before, after []*haproxycfg.ServicePort) {
	type held struct {
		set  *haproxycfg.EndpointSet
		byID bool
	}
	var old map[string]held
	for _, sp := range before {
		for _, set := range [2]*haproxycfg.EndpointSet{sp.Cluster, sp.Local} {
			if set != nil {
				if old == nil {
					old = make(map[string]held, 2*len(before))
				}
				old[set.Name] = held{set, sp.Affinity > 0}
			}
		}
	}
	for _, sp := range after {
		for _, set := range [2]*haproxycfg.EndpointSet{sp.Cluster, sp.Local} {
			if set == nil {
				continue
			}
			h, ok := old[set.Name]
			switch {
			case !ok:
				set.Generation = 0
			case h.set == set:
			case haproxycfg.SameEntries(h.set, set, h.byID, sp.Affinity > 0):
				set.Generation = h.set.Generation
			default:
				set.Generation = h.set.Generation + 1
			}
		}
	}
}

// adoptGenerations gives d's endpoint sets the generations HAProxy's
// services map holds (read back whole), so that a full comparison finds
// the entries HAProxy has rather than every one under another name. The
// sets may be the very objects whose map files wait to be written, so a
// generation changes (rarely: after a restart of kube-proxy or a change by
// hand) only under filesMu.
func (a *Applier) adoptGenerations(d *haproxycfg.Dispatcher, services map[string]string) {
	a.filesMu.Lock()
	defer a.filesMu.Unlock()
	for _, sp := range d.ServicePorts {
		for _, set := range [2]*haproxycfg.EndpointSet{sp.Cluster, sp.Local} {
			if set == nil {
				continue
			}
			if _, g, ok := haproxycfg.ParseSetValue(services[set.Name]); ok && set.Generation != g {
				set.Generation = g
			}
		}
	}
}

// changedSorted returns the Service ports of prev that cur changed or
// dropped (before) and those of cur that are new or changed (after),
// walking both lists at once as the proxier hands them in, sorted by
// name: no allocation when nothing changed. ok is false when a list is
// not sorted.
func changedSorted(prev, cur []*haproxycfg.ServicePort) (before, after []*haproxycfg.ServicePort, ok bool) {
	i, j := 0, 0
	for i < len(prev) || j < len(cur) {
		if i > 0 && i < len(prev) && prev[i].Name <= prev[i-1].Name {
			return nil, nil, false
		}
		if j > 0 && j < len(cur) && cur[j].Name <= cur[j-1].Name {
			return nil, nil, false
		}
		switch {
		case i < len(prev) && j < len(cur) && prev[i] == cur[j]:
			i++
			j++
		case j == len(cur) || i < len(prev) && prev[i].Name < cur[j].Name:
			before = append(before, prev[i])
			i++
		case i == len(prev) || cur[j].Name < prev[i].Name:
			after = append(after, cur[j])
			j++
		default:
			before = append(before, prev[i])
			after = append(after, cur[j])
			i++
			j++
		}
	}
	return before, after, true
}

// changedByName is changedSorted for lists in any order.
func changedByName(prev, cur []*haproxycfg.ServicePort) (before, after []*haproxycfg.ServicePort) {
	index := make(map[string]*haproxycfg.ServicePort, len(prev))
	for _, sp := range prev {
		index[sp.Name] = sp
	}
	for _, sp := range cur {
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
	return before, after
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
	a.adoptGenerations(d, services)
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
	diff.sources = diffPrefixes(sources, prefixStrings(d.ClusterSources))
	return diff, nil
}

// dedupe turns the "set" of a duplicated key the model wants into a
// re-add (del, then add: "set map" would leave both copies). A duplicated
// key the model does not want is already a "del", which removes every copy.
// read marks every duplicated key's value as impossible, so a wanted one
// is always a "set" here, never left out as unchanged.
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
			e.readd = append(e.readd, s)
			continue
		}
		sets = append(sets, s)
	}
	e.set = sets
}

// prefixStrings renders prefixes as the ACL file holds them, each once.
func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		s := p.Masked().String()
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// diffPrefixes compares the patterns of an ACL file. A pattern is added
// or deleted once however often it appears on either side ("del acl"
// removes every copy; a second one would fail), and a pattern HAProxy
// holds more than once that want keeps is re-added, so exactly one copy
// remains.
func diffPrefixes(have, want []string) prefixDiff {
	var d prefixDiff
	h := make(map[string]int, len(have))
	for _, p := range have {
		h[p]++
	}
	w := make(map[string]bool, len(want))
	for _, p := range want {
		if w[p] {
			continue
		}
		w[p] = true
		switch h[p] {
		case 0:
			d.add = append(d.add, p)
		case 1:
		default:
			d.readd = append(d.readd, p)
		}
	}
	for _, p := range have {
		if !w[p] && h[p] > 0 {
			d.del = append(d.del, p)
			h[p] = 0
		}
	}
	return d
}

// appendCommands adds the commands of diff to b in an order that keeps
// every state in between consistent for a connection that looks the maps
// up meanwhile:
//
//  1. new and changed endpoint entries (a changed set's are those of its
//     new generation);
//  2. new cluster sources;
//  3. new and changed set entries of the services map (count and
//     generation), then new and changed listener entries, then removed
//     listener entries, then removed set entries: a listener never points
//     at a set that is not there, a set never at entries that are not;
//  4. removed endpoint entries (an old generation's): no set points at
//     them any more;
//  5. removed cluster sources.
//
// A key held twice (only after a full read) is deleted and added again
// at its step, the del right before the add.
func appendCommands(b *runtimeapi.Batch, d *haproxycfg.Dispatcher, diff *mapDiff) {
	services, endpoints, sources := d.ServicesMap(), d.EndpointsMap(), d.ClusterSourcesACL()
	// pick selects the services map entries of listeners (true) or of
	// sets (false); the endpoints map takes every entry.
	pick := func(file, key string, listeners bool) bool {
		return file != services || haproxycfg.IsListenerKey(key) == listeners
	}
	upsert := func(file string, e *entryDiff, listeners bool) {
		for _, x := range e.readd {
			if pick(file, x.Key, listeners) {
				b.DelMap(file, x.Key)
				b.AddMap(file, x.Key, x.Value)
			}
		}
		for _, x := range e.add {
			if pick(file, x.Key, listeners) {
				b.AddMap(file, x.Key, x.Value)
			}
		}
		for _, x := range e.set {
			if pick(file, x.Key, listeners) {
				b.SetMap(file, x.Key, x.Value)
			}
		}
	}
	remove := func(file string, e *entryDiff, listeners bool) {
		for _, k := range e.del {
			if pick(file, k, listeners) {
				b.DelMap(file, k)
			}
		}
	}
	upsert(endpoints, &diff.endpoints, false)
	for _, p := range diff.sources.readd {
		b.DelACL(sources, p)
		b.AddACL(sources, p)
	}
	for _, p := range diff.sources.add {
		b.AddACL(sources, p)
	}
	upsert(services, &diff.services, false)
	upsert(services, &diff.services, true)
	remove(services, &diff.services, true)
	remove(services, &diff.services, false)
	remove(endpoints, &diff.endpoints, false)
	for _, p := range diff.sources.del {
		b.DelACL(sources, p)
	}
}

// runtimeUpdate brings HAProxy's maps to want's through the runtime API,
// then writes the map files of what changed.
//
// With loadedOnly, want is not the model HAProxy's haproxy.cfg was
// rendered from (a new configuration was rejected): the dispatchers whose
// maps HAProxy has not loaded are left out rather than failing the
// update, and the others still follow the model.
func (a *Applier) runtimeUpdate(ctx context.Context, want *haproxycfg.Config, loadedOnly bool) error {
	type part struct {
		d    *haproxycfg.Dispatcher
		diff *mapDiff
		// full: HAProxy's maps were read back whole.
		full bool
	}
	var b runtimeapi.Batch
	parts := make([]part, 0, len(want.Dispatchers))
	for _, d := range want.Dispatchers {
		p := part{d: d}
		if prev := a.applied[d.IPv6]; prev != nil && prev.MapDir == d.MapDir {
			p.diff = incrementalDiff(prev, d)
		} else {
			diff, err := a.fullDiff(ctx, d)
			if err != nil {
				if loadedOnly && errors.Is(err, runtimeapi.ErrNoSuchMap) {
					a.logger.V(2).Info("HAProxy has not loaded this dispatcher's maps; they follow at the next reload", "map", d.ServicesMap())
					continue
				}
				return err
			}
			p.diff, p.full = diff, true
		}
		appendCommands(&b, d, p.diff)
		parts = append(parts, p)
	}
	if b.Len() > 0 {
		if err := a.opts.Runtime.Run(ctx, &b); err != nil {
			runtimeUpdatesTotal.WithLabelValues("failed").Inc()
			return fmt.Errorf("runtime API update: %w", err)
		}
		runtimeUpdatesTotal.WithLabelValues("success").Inc()
		runtimeCommandsTotal.Add(float64(b.Len()))
	}
	full := false
	for _, p := range parts {
		// After a full read the files are written whole: whoever changed
		// HAProxy's maps may have changed the files too. So they are
		// after a failed reload (loadedOnly): its files were written from
		// this model before the sets got their generations.
		whole := p.full || loadedOnly
		if whole || !p.diff.empty() {
			a.queueMapFiles(p.d, whole || !p.diff.services.empty(), whole || !p.diff.endpoints.empty(), whole || !p.diff.sources.empty())
		}
		a.applied[p.d.IPv6] = p.d
		if p.full {
			setMapEntries(p.d)
		} else {
			// Counting every Service port's entries at every sync would
			// cost in proportion to the Services, not to the change.
			addMapEntries(p.d, p.diff)
		}
		full = full || p.full
	}
	if full && len(parts) == len(want.Dispatchers) {
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
		// Not sp.Sets(), which allocates: this runs over every Service
		// port at every sync.
		for _, set := range [2]*haproxycfg.EndpointSet{sp.Cluster, sp.Local} {
			if set == nil {
				continue
			}
			services++
			n := len(set.Endpoints)
			if sp.Affinity > 0 {
				n *= 2
			}
			endpoints += n
		}
	}
	mapEntries.WithLabelValues(familyLabel(d), "services").Set(float64(services))
	mapEntries.WithLabelValues(familyLabel(d), "endpoints").Set(float64(endpoints))
}

// addMapEntries moves the entry gauges of d's maps by what diff adds and
// deletes (an incremental diff holds no key twice).
func addMapEntries(d *haproxycfg.Dispatcher, diff *mapDiff) {
	mapEntries.WithLabelValues(familyLabel(d), "services").Add(float64(len(diff.services.add) - len(diff.services.del)))
	mapEntries.WithLabelValues(familyLabel(d), "endpoints").Add(float64(len(diff.endpoints.add) - len(diff.endpoints.del)))
}

func familyLabel(d *haproxycfg.Dispatcher) string {
	if d.IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// DefaultMapFilesLag is Options.MapFilesLag's default. Under steady
// churn the files are rewritten about once per lag, each time whole (at
// 10,000 Service ports of 10 endpoints, megabytes).
const DefaultMapFilesLag = time.Second

// pendingFiles are the map files of a family that trail HAProxy's memory:
// d is the latest dispatcher HAProxy was given, the flags say which
// files differ.
type pendingFiles struct {
	d                            *haproxycfg.Dispatcher
	services, endpoints, sources bool
}

// queueMapFiles notes that the chosen files of d trail HAProxy, which the
// runtime API has already changed; they are written within MapFilesLag,
// together with every change queued until then. A failure to write only
// means a restarted HAProxy starts from older files: it is logged, and
// the read-back after the restart repairs the difference. d is not
// modified after Apply (the proxier hands in new objects), so the timer
// may read it later.
func (a *Applier) queueMapFiles(d *haproxycfg.Dispatcher, services, endpoints, sources bool) {
	a.filesMu.Lock()
	defer a.filesMu.Unlock()
	p := a.pendingFiles[d.IPv6]
	if p == nil {
		p = &pendingFiles{}
		a.pendingFiles[d.IPv6] = p
	}
	p.d = d
	p.services = p.services || services
	p.endpoints = p.endpoints || endpoints
	p.sources = p.sources || sources
	if a.flushTimer == nil {
		a.flushTimer = time.AfterFunc(a.opts.MapFilesLag, a.FlushMapFiles)
	}
}

// FlushMapFiles writes the map files that trail HAProxy now.
func (a *Applier) FlushMapFiles() {
	a.filesMu.Lock()
	defer a.filesMu.Unlock()
	if a.flushTimer != nil {
		a.flushTimer.Stop()
		a.flushTimer = nil
	}
	for family, p := range a.pendingFiles {
		if err := a.mapFilesOf(p.d).write(p.d, p.services, p.endpoints, p.sources, false); err != nil {
			// Kept, whole (the services and endpoints maps must agree on
			// the generations), and tried again after the lag.
			a.logger.Error(err, "Writing HAProxy's map files failed; trying again", "dir", p.d.MapDir, "after", a.opts.MapFilesLag)
			p.services, p.endpoints, p.sources = true, true, true
			continue
		}
		delete(a.pendingFiles, family)
	}
	if len(a.pendingFiles) > 0 && !a.filesStopped {
		a.flushTimer = time.AfterFunc(a.opts.MapFilesLag, a.FlushMapFiles)
	}
}

// writeAllMaps writes every map file of want durably, before a reload
// makes HAProxy read them.
func (a *Applier) writeAllMaps(want *haproxycfg.Config) error {
	a.filesMu.Lock()
	defer a.filesMu.Unlock()
	for _, d := range want.Dispatchers {
		// want is newer than what is queued.
		delete(a.pendingFiles, d.IPv6)
		if err := os.MkdirAll(d.MapDir, 0o750); err != nil {
			return err
		}
		if err := a.mapFilesOf(d).write(d, true, true, true, true); err != nil {
			return err
		}
	}
	return nil
}

// mapFilesOf returns the map file writer of d's family. filesMu must be
// held.
func (a *Applier) mapFilesOf(d *haproxycfg.Dispatcher) *mapFiles {
	m := a.files[d.IPv6]
	if m == nil {
		m = newMapFiles()
		a.files[d.IPv6] = m
	}
	return m
}
