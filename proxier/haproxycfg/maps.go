package haproxycfg

import (
	"bytes"
	"hash/fnv"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The map files of a Dispatcher. HAProxy reads them at every start and
// reload; between reloads the runtime API changes its copy in memory and
// the applier rewrites the files, so file and memory agree.
//
// services-<family>.map: one entry per listener of every Service port:
//
//	<listener key> <set>|<set for cluster sources>|<reject or drop>|<affinity seconds>|<on node>|<proxy protocol>|<app protocol>
//
// where <on node> is 1 when the first set's endpoints all run on this
// node (EndpointSet.OnNode), else 0, <proxy protocol> is the PROXY
// protocol version sent to the endpoints, 0 for none, and <app protocol>
// is 0 for TCP, 1 for HTTP/1.1 and 2 for HTTP/2 (AppProtocol); then one
// entry per endpoint set with n endpoints:
//
//	<set> <n>|<generation>
//
// (a listener key is an address and port, or "*:<port>", a set name never
// is: see IsListenerKey).
//
// endpoint-sets-<family>.map: per endpoint set with n endpoints, the entries
// of its current generation (EndpointSet.Generation):
//
//	<set>/<generation>/<i> <address>|<port>|<id>[|1]      i in [0, n): a random i picks an endpoint
//	<set>/<generation>/ep<id> <address>|<port>|<id>[|1]   only for Service ports with affinity
//
// where the "|1" of a Routed endpoint lets a pod client keep its address.
// An endpoint change adds a generation and deletes the old one: the
// endpoints map, the large one, only ever gets "add map" and "del map",
// and the count entry that switches is in the services map.
//
// The id of an endpoint is stable as long as the endpoint exists (a hash
// of its address, see EndpointIDs); the affinity table stores it, so a
// client keeps its endpoint while the set around it changes.
//
// cluster-sources-<family>.acl: one prefix per line (ClusterSources).

// File names in Dispatcher.MapDir.
func (d *Dispatcher) familyName() string {
	if d.IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// ServicesMap is the path of the services map.
func (d *Dispatcher) ServicesMap() string {
	return filepath.Join(d.MapDir, "services-"+d.familyName()+".map")
}

// EndpointsMap is the path of the endpoints map. Its name differs from
// that of earlier versions, endpoints-<family>.map, whose entries had no
// generation: an HAProxy still running an earlier haproxy.cfg (a reload
// to this version failed) keeps reading its own file, never entries it
// cannot understand, and the applier's runtime updates leave it alone.
func (d *Dispatcher) EndpointsMap() string {
	return filepath.Join(d.MapDir, "endpoint-sets-"+d.familyName()+".map")
}

// legacyEndpointsMap is the endpoints map of earlier versions.
func (d *Dispatcher) legacyEndpointsMap() string {
	return filepath.Join(d.MapDir, "endpoints-"+d.familyName()+".map")
}

// ClusterSourcesACL is the path of the cluster sources ACL file.
func (d *Dispatcher) ClusterSourcesACL() string {
	return filepath.Join(d.MapDir, "cluster-sources-"+d.familyName()+".acl")
}

// RetrySocket is the path of the unix socket of the retry frontend.
func (d *Dispatcher) RetrySocket() string {
	return filepath.Join(d.MapDir, "retry-"+d.familyName()+".sock")
}

// RequestLogSocket is the path of the unix datagram socket where HAProxy
// logs the requests of HTTP Service ports, for kube-proxy to count them
// (package requestlog). Both families log to it.
func (d *Dispatcher) RequestLogSocket() string {
	return filepath.Join(d.MapDir, RequestLogSocketName)
}

// RequestLogSocketName is the base name of RequestLogSocket.
const RequestLogSocketName = "request-log.sock"

// FileNames are the base names of every file a Dispatcher of either
// family keeps in its MapDir: the map and ACL files the applier writes,
// the retry socket HAProxy binds, and the request log socket; and the
// endpoints maps of earlier versions, which an upgrade leaves behind.
func FileNames() []string {
	out := []string{RequestLogSocketName}
	for _, ipv6 := range []bool{false, true} {
		d := Dispatcher{IPv6: ipv6}
		out = append(out, filepath.Base(d.ServicesMap()), filepath.Base(d.EndpointsMap()), filepath.Base(d.ClusterSourcesACL()),
			filepath.Base(d.RetrySocket()), filepath.Base(d.legacyEndpointsMap()))
	}
	return out
}

// Names of the proxies of a Dispatcher.
func (d *Dispatcher) FrontendName() string { return "services-" + d.familyName() }
func (d *Dispatcher) BackendName() string  { return "endpoints-" + d.familyName() }
func (d *Dispatcher) TableName() string    { return "affinity-" + d.familyName() }
func (d *Dispatcher) ChecksName() string   { return "checks-" + d.familyName() }
func (d *Dispatcher) HTTPBackendName() string {
	return "http-" + d.familyName()
}
func (d *Dispatcher) RetryFrontendName() string {
	return "retry-" + d.familyName()
}

// MapEntry is one key and value of a map.
type MapEntry struct {
	Key, Value string
}

// Fields of a services map value, separated by FieldSeparator.
const FieldSeparator = "|"

// mapWord is v in the services map: the HAProxy action that gives it.
func (v Verdict) mapWord() string {
	if v == Rejected {
		return "reject"
	}
	return "drop"
}

// DispatchValue is the services map value of listener l of sp.
func (sp *ServicePort) DispatchValue(l Listener) string {
	others, fromCluster := sp.setsFor(l)
	secs := int64(0)
	if sp.Affinity > 0 {
		secs = int64((sp.Affinity + time.Second - 1) / time.Second)
	}
	onNode := "0"
	if others.OnNode {
		onNode = "1"
	}
	return others.Name + FieldSeparator + fromCluster.Name + FieldSeparator + sp.WhenEmpty.mapWord() + FieldSeparator + strconv.FormatInt(secs, 10) +
		FieldSeparator + onNode + FieldSeparator + strconv.Itoa(int(sp.ProxyProtocol)) + FieldSeparator + strconv.Itoa(int(sp.AppProtocol))
}

// AppendDispatchEntries appends the services map entries of sp: one per
// listener, then one per endpoint set (SetValue).
func (sp *ServicePort) AppendDispatchEntries(dst []MapEntry) []MapEntry {
	for _, l := range sp.Listeners {
		dst = append(dst, MapEntry{Key: l.Key(), Value: sp.DispatchValue(l)})
	}
	for _, set := range [2]*EndpointSet{sp.Cluster, sp.Local} {
		if set != nil {
			dst = append(dst, MapEntry{Key: set.Name, Value: set.SetValue()})
		}
	}
	return dst
}

// SetValue is the services map value of set: "<n>|<generation>".
func (set *EndpointSet) SetValue() string {
	return strconv.Itoa(len(set.Endpoints)) + FieldSeparator + strconv.FormatUint(uint64(set.Generation), 10)
}

// ParseSetValue reads a set's services map value (SetValue); ok is false
// when it is not "<n>|<generation>".
func ParseSetValue(v string) (n int, generation uint32, ok bool) {
	count, gen, found := strings.Cut(v, FieldSeparator)
	n, err := strconv.Atoi(count)
	if !found || err != nil {
		return 0, 0, false
	}
	g, err := strconv.ParseUint(gen, 10, 32)
	if err != nil {
		return 0, 0, false
	}
	return n, uint32(g), true
}

// EntryPrefix is what the keys of set's endpoint entries start with:
// "<set>/<generation>/".
func (set *EndpointSet) EntryPrefix() string {
	return set.Name + "/" + strconv.FormatUint(uint64(set.Generation), 10) + "/"
}

// IsListenerKey tells a services map key of a listener ("10.96.0.10:80",
// "[fd00::10]:80", "*:30080") from the name of an endpoint set, which is
// never an address and port.
func IsListenerKey(key string) bool {
	if strings.HasPrefix(key, "*:") || strings.HasPrefix(key, "[") {
		return true
	}
	_, err := netip.ParseAddrPort(key)
	return err == nil
}

// SameEntries reports whether a and b, sets of the same name, have the
// same endpoint entries (byID: the Service port has affinity), whatever
// their generations: then b may keep a's generation.
func SameEntries(a, b *EndpointSet, aByID, bByID bool) bool {
	if aByID != bByID || !slices.Equal(a.Endpoints, b.Endpoints) {
		return false
	}
	for _, ep := range a.Endpoints {
		if a.Routed[ep] != b.Routed[ep] {
			return false
		}
	}
	return true
}

// Sets returns sp's endpoint sets that are not nil: Cluster, then Local.
func (sp *ServicePort) Sets() []*EndpointSet {
	var out []*EndpointSet
	if sp.Cluster != nil {
		out = append(out, sp.Cluster)
	}
	if sp.Local != nil {
		out = append(out, sp.Local)
	}
	return out
}

// AppendEndpointEntries appends the endpoints map entries of sp's sets.
func (sp *ServicePort) AppendEndpointEntries(dst []MapEntry) []MapEntry {
	for _, set := range sp.Sets() {
		dst = set.appendEntries(dst, sp.Affinity > 0)
	}
	return dst
}

func (set *EndpointSet) appendEntries(dst []MapEntry, byID bool) []MapEntry {
	prefix := set.EntryPrefix()
	ids := EndpointIDs(set.Endpoints)
	var buf []byte
	for i, ep := range set.Endpoints {
		buf = EndpointValue(buf[:0], ep, ids[i])
		if set.Routed[ep] {
			buf = append(buf, FieldSeparator+"1"...)
		}
		v := string(buf)
		dst = append(dst, MapEntry{Key: prefix + strconv.Itoa(i), Value: v})
		if byID {
			dst = append(dst, MapEntry{Key: prefix + "ep" + strconv.FormatUint(uint64(ids[i]), 10), Value: v})
		}
	}
	return dst
}

// EndpointValue appends the endpoints map value of ep: address|port|id.
func EndpointValue(dst []byte, ep netip.AddrPort, id uint32) []byte {
	dst = ep.Addr().AppendTo(dst)
	dst = append(dst, FieldSeparator...)
	dst = strconv.AppendUint(dst, uint64(ep.Port()), 10)
	dst = append(dst, FieldSeparator...)
	return strconv.AppendUint(dst, uint64(id), 10)
}

// EndpointIDs gives each endpoint of a set an id in [1, 2^31): a hash of
// its address and port, so the id of an endpoint does not depend on the
// others and survives any change to the set (the affinity table stores
// it). A collision, rare, takes the next free id in the order of eps.
func EndpointIDs(eps []netip.AddrPort) []uint32 {
	ids := make([]uint32, len(eps))
	var used map[uint32]bool
	if len(eps) > 1 {
		used = make(map[uint32]bool, len(eps))
	}
	var buf [64]byte
	for i, ep := range eps {
		h := fnv.New32a()
		h.Write(ep.AppendTo(buf[:0]))
		id := h.Sum32() & 0x7fffffff
		for id == 0 || used[id] {
			id = (id + 1) & 0x7fffffff
		}
		if used != nil {
			used[id] = true
		}
		ids[i] = id
	}
	return ids
}

// RenderMaps renders the three files of d: the services map, the
// endpoints map and the cluster sources ACL. Service ports come in the
// order of d.ServicePorts, each preceded by its comment, so the files
// name every Service.
func RenderMaps(d *Dispatcher) (services, endpoints, sources []byte) {
	var sb, eb, ab bytes.Buffer
	sb.WriteString(mapHeader)
	eb.WriteString(mapHeader)
	ab.WriteString(mapHeader)
	var entries []MapEntry
	for _, sp := range d.ServicePorts {
		comment(&sb, "", sp.Comment)
		entries = sp.AppendDispatchEntries(entries[:0])
		writeEntries(&sb, entries)
		for _, set := range sp.Sets() {
			comment(&eb, "", set.Comment)
			entries = set.appendEntries(entries[:0], sp.Affinity > 0)
			writeEntries(&eb, entries)
		}
	}
	for _, p := range d.ClusterSources {
		ab.WriteString(p.Masked().String())
		ab.WriteByte('\n')
	}
	return sb.Bytes(), eb.Bytes(), ab.Bytes()
}

const mapHeader = "# Generated by kube-haproxy: do not edit, the proxier rewrites this file.\n"

func writeEntries(b *bytes.Buffer, entries []MapEntry) {
	for _, e := range entries {
		b.WriteString(e.Key)
		b.WriteByte(' ')
		b.WriteString(e.Value)
		b.WriteByte('\n')
	}
}

// ParseMap reads a map file as HAProxy does: one "key value" per line,
// blank lines and lines starting with '#' ignored.
func ParseMap(data []byte) []MapEntry {
	var out []MapEntry
	for _, ln := range strings.Split(string(data), "\n") {
		ln = strings.TrimSpace(ln)
		if ln == "" || ln[0] == '#' {
			continue
		}
		k, v, _ := strings.Cut(ln, " ")
		out = append(out, MapEntry{Key: k, Value: strings.TrimSpace(v)})
	}
	return out
}
