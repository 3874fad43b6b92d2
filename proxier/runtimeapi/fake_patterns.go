package runtimeapi

import (
	"container/list"
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// HAProxy 2.6's answers to map and ACL commands, checked against the real
// process.
const (
	answerUnknownMap = "Unknown map identifier. Please use #<id> or <file>.\n"
	answerUnknownACL = "Unknown ACL identifier. Please use #<id> or <file>.\n"
	answerNoEntry    = "entry not found.\n" // set map
	answerNoKey      = "Key not found.\n"   // del map, del acl
	answerACLIsMap   = "This ACL is shared with a map containing samples. You must use the command 'add map' to add values.\n"
)

// fakePatterns is a map or an ACL file of the Fake, what HAProxy calls a
// pattern reference. Entries keep insertion order, which is what "show map"
// lists and which decides the winner among duplicates; byKey finds entries
// without a scan, so a sync of a 100,000-entry map stays linear.
type fakePatterns struct {
	file string
	// acl: the file is an ACL ("src -f <file>": IP patterns), else a map
	// with string keys (map_str).
	acl bool
	// seq orders the files the way the configuration references them.
	seq     int
	entries *list.List // of *patternEntry
	byKey   map[string][]*list.Element
}

type patternEntry struct {
	key, value string
	// sample: the entry has a value. ACL patterns have none, but HAProxy
	// 2.6 lets "add map" and "set map" give one to an ACL's pattern.
	sample bool
}

func newFakePatterns(file string, acl bool, seq int) *fakePatterns {
	return &fakePatterns{file: file, acl: acl, seq: seq, entries: list.New(), byKey: map[string][]*list.Element{}}
}

func (p *fakePatterns) add(key, value string, sample bool) {
	e := p.entries.PushBack(&patternEntry{key: key, value: value, sample: sample})
	p.byKey[key] = append(p.byKey[key], e)
}

// set changes every entry with key, as "set map" does.
func (p *fakePatterns) set(key, value string) bool {
	es := p.byKey[key]
	for _, e := range es {
		pe := e.Value.(*patternEntry)
		pe.value, pe.sample = value, true
	}
	return len(es) > 0
}

// del removes every entry with key, as "del map" and "del acl" do.
func (p *fakePatterns) del(key string) bool {
	es := p.byKey[key]
	for _, e := range es {
		p.entries.Remove(e)
	}
	delete(p.byKey, key)
	return len(es) > 0
}

func (p *fakePatterns) clear() {
	p.entries.Init()
	p.byKey = map[string][]*list.Element{}
}

func (p *fakePatterns) mapEntries() []MapEntry {
	out := make([]MapEntry, 0, p.entries.Len())
	for e := p.entries.Front(); e != nil; e = e.Next() {
		pe := e.Value.(*patternEntry)
		out = append(out, MapEntry{Key: pe.key, Value: pe.value})
	}
	return out
}

// aclValues lists the patterns as "show acl" does: a pattern that was
// given a value through "add map" or "set map" is shown with it.
func (p *fakePatterns) aclValues() []string {
	out := make([]string, 0, p.entries.Len())
	for e := p.entries.Front(); e != nil; e = e.Next() {
		pe := e.Value.(*patternEntry)
		if pe.sample {
			out = append(out, pe.key+" "+pe.value)
		} else {
			out = append(out, pe.key)
		}
	}
	return out
}

// parsesAsPattern says whether HAProxy accepts key for the file's match
// method, and answers as HAProxy does when not. Map keys are strings
// (map_str), anything goes; ACL patterns are IPs (the "src -f" ACLs the
// proxier uses).
func (p *fakePatterns) parsesAsPattern(key string) (string, bool) {
	if p.acl && !validIPPattern(key) {
		return fmt.Sprintf("'%s' is not a valid IPv4 or IPv6 address.\n", key), false
	}
	return "", true
}

// validIPPattern accepts what HAProxy 2.6 accepts as an IP pattern: an
// address, optionally with a prefix length (leading zeros allowed) or,
// for IPv4, a dotted mask (not checked for contiguity, like HAProxy). No
// brackets, zones, host names or shortened IPv4 forms.
func validIPPattern(s string) bool {
	addrPart, mask, hasMask := strings.Cut(s, "/")
	addr, err := netip.ParseAddr(addrPart)
	if err != nil || addr.Zone() != "" {
		return false
	}
	if !hasMask {
		return true
	}
	if addr.Is4() && strings.Contains(mask, ".") {
		m, err := netip.ParseAddr(mask)
		return err == nil && m.Is4()
	}
	if mask == "" || strings.TrimLeft(mask, "0123456789") != "" {
		return false
	}
	n, err := strconv.Atoi(mask)
	return err == nil && n <= addr.BitLen()
}

// LoadMap replaces (or declares) a map with string keys, as a (re)load of
// a configuration that references file with map_str would: entries in
// file order, duplicates kept.
func (f *Fake) LoadMap(file string, entries ...MapEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.loadPatterns(file, false)
	for _, e := range entries {
		p.add(e.Key, e.Value, true)
	}
}

// LoadACL replaces (or declares) an ACL file of IP patterns, as a (re)load
// of a configuration with "acl ... src -f <file>" would. A file is either
// a map or an ACL in the Fake; the last Load decides.
func (f *Fake) LoadACL(file string, values ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.loadPatterns(file, true)
	for _, v := range values {
		p.add(v, "", false)
	}
}

func (f *Fake) loadPatterns(file string, acl bool) *fakePatterns {
	seq := f.nextPatternSeq
	if old, ok := f.patterns[file]; ok {
		seq = old.seq
	} else {
		f.nextPatternSeq++
	}
	p := newFakePatterns(file, acl, seq)
	f.patterns[file] = p
	return p
}

// RemoveMap forgets a map or ACL file, as a reload of a configuration that
// no longer references it would.
func (f *Fake) RemoveMap(file string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.patterns, file)
}

// Map returns the entries of a map in "show map" order, or nil when file
// is not a loaded map.
func (f *Fake) Map(file string) []MapEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.patterns[file]
	if !ok || p.acl {
		return nil
	}
	return p.mapEntries()
}

// ACL returns the patterns of an ACL file in "show acl" order, or nil when
// file is not a loaded ACL.
func (f *Fake) ACL(file string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.patterns[file]
	if !ok || !p.acl {
		return nil
	}
	return p.aclValues()
}

// LookupMap returns what HAProxy's map_str(<file>) returns for key: among
// duplicates, the value of the entry inserted first (checked against
// HAProxy 2.6, for entries from the file and from "add map" alike).
func (f *Fake) LookupMap(file, key string) (value string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, found := f.patterns[file]
	if !found || p.acl {
		return "", false
	}
	es := p.byKey[key]
	if len(es) == 0 {
		return "", false
	}
	return es[0].Value.(*patternEntry).value, true
}

// executePatterns applies a map or ACL command and answers as HAProxy 2.6
// does, quirks included: "add map" and "set map" find ACL files too (and
// give their patterns a value), while "del map", "clear map" and the
// "show" commands only find files of their own kind; "add acl" on a map
// is refused; "del acl" on an unknown file answers with the map wording.
func (f *Fake) executePatterns(c Command) string {
	p, ok := f.patterns[c.file]
	switch c.verb {
	case verbAddMap:
		if !ok {
			return answerUnknownMap
		}
		if msg, valid := p.parsesAsPattern(c.key); !valid {
			return msg
		}
		p.add(c.key, c.value, true)
	case verbSetMap:
		if !ok {
			return answerUnknownMap
		}
		if !p.set(c.key, c.value) {
			return answerNoEntry
		}
	case verbDelMap, verbClearMap:
		if !ok || p.acl {
			return answerUnknownMap
		}
		if c.verb == verbClearMap {
			p.clear()
		} else if !p.del(c.key) {
			return answerNoKey
		}
	case verbAddACL:
		if !ok {
			return answerUnknownACL
		}
		if !p.acl {
			return answerACLIsMap
		}
		if msg, valid := p.parsesAsPattern(c.key); !valid {
			return msg
		}
		p.add(c.key, "", false)
	case verbDelACL:
		if !ok || !p.acl {
			return answerUnknownMap
		}
		if !p.del(c.key) {
			return answerNoKey
		}
	case verbClearACL:
		if !ok || !p.acl {
			return answerUnknownACL
		}
		p.clear()
	default:
		return "Unknown command.\n"
	}
	return ""
}

// sortedPatterns returns the maps (acl false) or ACLs (acl true) in the
// order the configuration references them.
func (f *Fake) sortedPatterns(acl bool) []*fakePatterns {
	var ps []*fakePatterns
	for _, p := range f.patterns {
		if p.acl == acl {
			ps = append(ps, p)
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].seq < ps[j].seq })
	return ps
}

// dumpPatterns renders the maps and ACLs for Dump: "map <file> <key>
// <value>" and "acl <file> <pattern>" lines, files in configuration order,
// entries in insertion order (which matters among duplicates).
func (f *Fake) dumpPatterns() []string {
	var out []string
	for _, p := range f.sortedPatterns(false) {
		for _, e := range p.mapEntries() {
			out = append(out, "map "+p.file+" "+e.Key+" "+e.Value)
		}
	}
	for _, p := range f.sortedPatterns(true) {
		for _, v := range p.aclValues() {
			out = append(out, "acl "+p.file+" "+v)
		}
	}
	return out
}

// ShowMap implements Interface.
func (f *Fake) ShowMap(ctx context.Context, mapFile string) ([]MapEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkFile(mapFile); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.patterns[mapFile]
	if !ok || p.acl {
		return nil, fmt.Errorf("map %s: %w", mapFile, ErrNoSuchMap)
	}
	return p.mapEntries(), nil
}

// ShowACL implements Interface.
func (f *Fake) ShowACL(ctx context.Context, aclFile string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkFile(aclFile); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.patterns[aclFile]
	if !ok || !p.acl {
		return nil, fmt.Errorf("acl %s: %w", aclFile, ErrNoSuchMap)
	}
	return p.aclValues(), nil
}

// ShowMaps implements Interface.
func (f *Fake) ShowMaps(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var files []string
	for _, p := range f.sortedPatterns(false) {
		files = append(files, p.file)
	}
	return files, nil
}
