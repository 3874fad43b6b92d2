// Package serviceguard keeps local Service IPs from answering on ports the
// proxier does not serve, and sends the TCP connections HAProxy serves to
// HAProxy's dispatch listener.
//
// In scope node every ServiceCIDR is made local with an AnyIP route (see
// package localaddr). From then on, a host daemon listening on a wildcard
// address (sshd on 0.0.0.0:22, a metrics exporter on [::]:9100) answers on
// every ClusterIP too: the hole kube-proxy's IPVS mode had to plug. The
// guard is an nftables table of its own, one per IP family
// (`ip kube-haproxy`, `ip6 kube-haproxy`), with a chain on the input hook:
//
//   - a packet whose destination is not a Service IP (node addresses,
//     NodePorts on node IPs, pod traffic) is left alone;
//   - packets of an established connection (and related ICMP errors) pass,
//     so replies to node-local clients of a ClusterIP come back;
//   - a packet to one of the served IP . protocol . port triples is
//     accepted;
//   - everything else addressed to a Service IP is rejected (a TCP reset,
//     an ICMP port-unreachable otherwise), so a client fails fast.
//
// A chain on the prerouting hook (mangle priority) dispatches: HAProxy has
// one listener per family (bound `transparent`: 0.0.0.0:port for IPv4,
// [::1]:port for IPv6), and nftables TPROXY hands it (Desired.Dispatch,
// 127.0.0.1:port or [::1]:port) every TCP packet to a served Service
// IP:port and to a served NodePort on a node address. The accepted
// socket's local address is the original destination, which HAProxy looks
// up in its maps, so a new Service needs no new bind and no reload. No
// fwmark or policy routing is needed: Service IPs are local already (AnyIP
// routes), node addresses always are. Before dispatch, the same chain
// drops (silently, like upstream kube-proxy) TCP packets to a LoadBalancer
// IP:port with loadBalancerSourceRanges from a source outside them.
// Node-local clients come through prerouting too: their packets loop
// through lo.
//
// IPv4 packets that arrive through a Linux bridge (pods on a bridge CNI)
// take another path. With br_netfilter (bridge-nf-call-iptables=1, as
// kubeadm requires) their prerouting hooks run inside the bridge, before
// ip_rcv(), which drops the socket TPROXY assigned: the connection would
// be refused. So the TPROXY chain lets them go (after the firewall), and a
// NAT chain (prerouting, dstnat - 5) redirects the same Service IP:ports
// and NodePorts to the listener's port on the bridge's address. HAProxy's
// "dst" reads the original destination of a redirected IPv4 connection
// from conntrack (SO_ORIGINAL_DST), so both paths meet the same map
// lookup. IPv6 has TPROXY only: HAProxy 2.6 does not read the original
// destination of a redirected IPv6 connection.
//
// A chain on the output hook at raw priority (before conntrack) takes
// node-local connections to served triples out of connection tracking
// (notrack), both the client's packets and HAProxy's replies. Upstream's
// nftables proxier, which serves the delegated UDP and SCTP ports on the
// same host, rejects in its output path every *new* connection to one of
// its ClusterIPs that it did not DNAT: that would reject a node-local TCP
// connection to kube-dns's TCP 53, which HAProxy serves on the same
// ClusterIP as the delegated UDP 53. An untracked packet is never "new",
// so no such rule sees it, and no NAT chain runs for it either. Pod and
// remote clients come in through prerouting and keep their conntrack
// entries; only connections whose both ends are on the node lose them
// (`conntrack -L` does not list them).
//
// With Desired.KeepClientSource, HAProxy connects to endpoints on this
// node from an outside client's own address (a transparent socket), and
// the endpoint's replies, addressed to that client, must come back to
// HAProxy instead of being forwarded. A chain on the output hook marks
// the conntrack entry of every new TCP connection leaving with a
// source address that is not local (only a transparent socket can send
// one) with ClientSourceMark. The replies of those connections get the
// same packet mark: on the prerouting hook from a pod, on the output hook
// (a route chain, so the packet is routed again) from an endpoint on the
// node's own address (hostNetwork). Package hostnet's policy routing rule
// sends marked packets to a table whose only route makes every address
// local, so they are delivered to HAProxy's socket.
//
// Everything that changes with Services is a set element; the rules only
// change with the dispatch address and the NodePort address mode, which
// are fixed for a proxier's life. Sync applies a new desired state in one
// nftables transaction (atomic in the kernel), so there is never a moment
// without the guard.
package serviceguard

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"
)

// Names of the nftables objects. Operators see them in `nft list table ip
// kube-haproxy`.
const (
	TableName     = "kube-haproxy"
	InputChain    = "service-ip-input"
	OutputChain   = "service-ip-output"
	DispatchChain = "service-dispatch"
	// BridgedChain redirects (NAT) the IPv4 Service connections that
	// arrive through a Linux bridge; see declareBridged.
	BridgedChain = "service-dispatch-bridged"
	// ClientSourceChain and ClientSourceReturnChain bring the replies to
	// connections made from a client's address back to HAProxy.
	ClientSourceChain       = "client-source"
	ClientSourceReturnChain = "client-source-return"
	ServiceIPsSet           = "service-ips"
	ServedPortsSet          = "served-ports"
	NodePortsSet            = "node-ports"
	NodePortIPsSet          = "node-port-ips"
	FirewallSet             = "firewall"
	FirewallAllowSet        = "firewall-allow"
	tableComment            = "kube-haproxy: only served Service IP:port pairs accept"
	serviceIPsNote          = "ServiceCIDRs and the LoadBalancer and external IPs made local on this node"
	servedPortsNote         = "Service IP . protocol . port pairs HAProxy serves"
	nodePortsNote           = "TCP NodePorts HAProxy serves"
	nodePortIPsNote         = "nodePortAddresses: the only addresses NodePorts are served on, when set"
	firewallNote            = "LoadBalancer IP . port with loadBalancerSourceRanges"
	firewallAllowNote       = "LoadBalancer IP . port . allowed source range"
)

// ClientSourceMark is the conntrack and packet mark bit of connections
// HAProxy makes from a client's address (Desired.KeepClientSource). It
// stays clear of the bits upstream kube-proxy (0x4000, 0x8000), Calico
// (0xffff0000) and Cilium (0x0f00) use.
const ClientSourceMark = 0x2000

// Recheck makes the next Sync check that the table is intact, whenever
// the last check was.
func (g *Guard) Recheck() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.checkedAt = time.Time{}
}

// DefaultCheckInterval is how long a Guard made by New trusts its last
// check that the table is intact.
const DefaultCheckInterval = 30 * time.Second

// Binding is one Service IP, protocol and port that may accept connections.
type Binding struct {
	IP       netip.Addr
	Protocol v1.Protocol
	Port     uint16
}

func (b Binding) String() string {
	return fmt.Sprintf("%s/%s:%d", b.IP, b.Protocol, b.Port)
}

// FirewallEntry is a LoadBalancer IP and TCP port with
// loadBalancerSourceRanges: packets to it from a source outside Allowed are
// dropped before dispatch. An entry with no Allowed prefix of the guard's
// family drops every source; entries for the same IP and port add up.
type FirewallEntry struct {
	IP      netip.Addr
	Port    uint16
	Allowed []netip.Prefix
}

// Desired is the guard's state after a Sync. Addresses of the other IP
// family are ignored, so one Desired may serve both families' guards.
type Desired struct {
	// ServiceIPs are the guarded destinations: every ServiceCIDR and each
	// LoadBalancer or external IP made local on this node. Addresses that
	// were local before (node IPs) must not be here, or all their
	// unserved ports would be rejected too.
	ServiceIPs []netip.Prefix
	// Served are the bindings that may accept. The TCP ones are also
	// dispatched to HAProxy when Dispatch is set.
	Served []Binding
	// Dispatch is where TPROXY sends the served TCP connections: HAProxy's
	// listener of this family, bound `transparent` (127.0.0.1:port,
	// [::1]:port). IPv4 connections through a bridge are redirected by
	// NAT to its port on the bridge's address instead, so the IPv4
	// listener must be bound to 0.0.0.0:port. Zero: no dispatch rules
	// (the firewall still drops).
	Dispatch netip.AddrPort
	// NodePorts are the TCP NodePorts HAProxy serves, dispatched with
	// Dispatch.
	NodePorts []uint16
	// NodePortAddresses, when empty, serve NodePorts on every local address
	// of the family that is not in ServiceIPs; otherwise only on these
	// addresses (none, when the list holds no address of the family).
	NodePortAddresses []netip.Addr
	// Firewall are the LoadBalancer IP:ports with source ranges.
	Firewall []FirewallEntry
	// KeepClientSource marks the connections HAProxy makes from a
	// client's address and their replies (ClientSourceMark).
	KeepClientSource bool
}

// Guard owns the nftables table of one IP family.
type Guard struct {
	nft    knftables.Interface
	family v1.IPFamily

	// checkInterval is how long a check that the table is intact is
	// trusted (0: check at every Sync); checkedAt is the last one.
	checkInterval time.Duration
	checkedAt     time.Time

	mu sync.Mutex
	// applied is the last state written successfully; nil when unknown
	// (never synced, or the last transaction failed).
	applied *normalized
}

// New returns a Guard for family that runs the host's nft.
func New(family v1.IPFamily) (*Guard, error) {
	nft, err := knftables.New(nftFamily(family), TableName)
	if err != nil {
		return nil, fmt.Errorf("nftables for the %s Service IP guard: %w", family, err)
	}
	g := NewWithInterface(nft, family)
	g.checkInterval = DefaultCheckInterval
	return g, nil
}

// NewWithInterface returns a Guard using nft, which must be bound to the
// family's table (knftables.NewFake(NFTFamily(family), TableName) in unit
// tests).
func NewWithInterface(nft knftables.Interface, family v1.IPFamily) *Guard {
	return &Guard{nft: nft, family: family}
}

// NFTFamily is the nftables family of the table guarding family.
func NFTFamily(family v1.IPFamily) knftables.Family { return nftFamily(family) }

func nftFamily(family v1.IPFamily) knftables.Family {
	if family == v1.IPv6Protocol {
		return knftables.IPv6Family
	}
	return knftables.IPv4Family
}

// allowKey is one element of the firewall-allow set.
type allowKey struct {
	dst netip.AddrPort
	src netip.Prefix
}

// normalized is a Desired reduced to one family, without overlaps or
// duplicates, sorted: nftables refuses overlapping intervals in a set, and
// comparing two normalized states tells whether anything changed.
type normalized struct {
	ranges   []netip.Prefix
	served   []Binding
	dispatch netip.AddrPort
	// nodePortsListed: NodePorts only on nodePortIPs, not on every local
	// address.
	nodePortsListed bool
	nodePortIPs     []netip.Addr
	nodePorts       []uint16
	firewall        []netip.AddrPort
	allowed         []allowKey
	keepSource      bool
}

func (g *Guard) inFamily(a netip.Addr) bool {
	if g.family == v1.IPv6Protocol {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4() || a.Is4In6()
}

// prefixInFamily returns p unmapped and masked, and whether it is of the
// guard's family.
func (g *Guard) prefixInFamily(p netip.Prefix) (netip.Prefix, bool) {
	if !p.IsValid() {
		return p, false
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return p, false
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), g.inFamily(p.Addr())
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// collapse drops the prefixes inside another one and sorts the rest.
func collapse(ps []netip.Prefix) []netip.Prefix {
	// Shorter prefixes first, so a prefix inside an earlier one is dropped.
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	var out []netip.Prefix
	for _, p := range ps {
		if !slices.ContainsFunc(out, func(q netip.Prefix) bool { return q.Contains(p.Addr()) }) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePrefixes)
	return out
}

func (g *Guard) normalize(d Desired) (*normalized, error) {
	n := &normalized{keepSource: d.KeepClientSource}
	var ranges []netip.Prefix
	for _, p := range d.ServiceIPs {
		if p, ok := g.prefixInFamily(p); ok {
			ranges = append(ranges, p)
		}
	}
	n.ranges = collapse(ranges)

	for _, b := range d.Served {
		b.IP = b.IP.Unmap()
		if g.inFamily(b.IP) {
			n.served = append(n.served, b)
		}
	}
	slices.SortFunc(n.served, func(a, b Binding) int {
		return cmp.Or(a.IP.Compare(b.IP), strings.Compare(string(a.Protocol), string(b.Protocol)), cmp.Compare(a.Port, b.Port))
	})
	n.served = slices.Compact(n.served)

	if d.Dispatch.IsValid() {
		n.dispatch = netip.AddrPortFrom(d.Dispatch.Addr().Unmap(), d.Dispatch.Port())
		if !g.inFamily(n.dispatch.Addr()) || n.dispatch.Port() == 0 {
			return nil, fmt.Errorf("%s Service IP guard: dispatch address %s is not an %s address and port", g.family, d.Dispatch, g.family)
		}
	}

	n.nodePorts = slices.Clone(d.NodePorts)
	n.nodePorts = slices.DeleteFunc(n.nodePorts, func(p uint16) bool { return p == 0 })
	slices.Sort(n.nodePorts)
	n.nodePorts = slices.Compact(n.nodePorts)
	// A list without an address of this family still restricts: it means
	// no address here, not every one.
	n.nodePortsListed = len(d.NodePortAddresses) > 0
	for _, a := range d.NodePortAddresses {
		if a = a.Unmap(); g.inFamily(a) {
			n.nodePortIPs = append(n.nodePortIPs, a)
		}
	}
	slices.SortFunc(n.nodePortIPs, netip.Addr.Compare)
	n.nodePortIPs = slices.Compact(n.nodePortIPs)

	allowed := map[netip.AddrPort][]netip.Prefix{}
	for _, f := range d.Firewall {
		ip := f.IP.Unmap()
		if !g.inFamily(ip) {
			continue
		}
		dst := netip.AddrPortFrom(ip, f.Port)
		if _, ok := allowed[dst]; !ok {
			allowed[dst] = nil
			n.firewall = append(n.firewall, dst)
		}
		for _, p := range f.Allowed {
			if p, ok := g.prefixInFamily(p); ok {
				allowed[dst] = append(allowed[dst], p)
			}
		}
	}
	slices.SortFunc(n.firewall, netip.AddrPort.Compare)
	for _, dst := range n.firewall {
		// pipapo (the kernel's set for concatenated intervals) refuses
		// overlapping elements, as the plain interval set does.
		for _, src := range collapse(allowed[dst]) {
			n.allowed = append(n.allowed, allowKey{dst: dst, src: src})
		}
	}
	return n, nil
}

func (n *normalized) equal(o *normalized) bool {
	return o != nil && n.sameRules(o) &&
		slices.Equal(n.ranges, o.ranges) && slices.Equal(n.served, o.served) &&
		slices.Equal(n.nodePorts, o.nodePorts) && slices.Equal(n.nodePortIPs, o.nodePortIPs) &&
		slices.Equal(n.firewall, o.firewall) && slices.Equal(n.allowed, o.allowed)
}

// sameRules reports whether n and o need the same rules: everything else
// is in set elements.
func (n *normalized) sameRules(o *normalized) bool {
	return o != nil && n.dispatch == o.dispatch && n.nodePortsListed == o.nodePortsListed && n.keepSource == o.keepSource
}

// elements returns the keys of every set's elements, each set's sorted.
func (n *normalized) elements() map[string][][]string {
	port := func(p uint16) string { return strconv.Itoa(int(p)) }
	els := map[string][][]string{}
	for _, set := range setNames {
		els[set] = [][]string{}
	}
	for _, p := range n.ranges {
		els[ServiceIPsSet] = append(els[ServiceIPsSet], []string{prefixKey(p)})
	}
	for _, b := range n.served {
		els[ServedPortsSet] = append(els[ServedPortsSet], []string{b.IP.String(), strings.ToLower(string(b.Protocol)), port(b.Port)})
	}
	for _, p := range n.nodePorts {
		els[NodePortsSet] = append(els[NodePortsSet], []string{port(p)})
	}
	for _, a := range n.nodePortIPs {
		els[NodePortIPsSet] = append(els[NodePortIPsSet], []string{a.String()})
	}
	for _, f := range n.firewall {
		els[FirewallSet] = append(els[FirewallSet], []string{f.Addr().String(), port(f.Port())})
	}
	for _, a := range n.allowed {
		els[FirewallAllowSet] = append(els[FirewallAllowSet], []string{a.dst.Addr().String(), port(a.dst.Port()), prefixKey(a.src)})
	}
	return els
}

// setNames are every set of the table.
var setNames = []string{ServiceIPsSet, ServedPortsSet, NodePortsSet, NodePortIPsSet, FirewallSet, FirewallAllowSet}

// Sync makes the table match d, in one transaction, which the kernel
// applies atomically. While the table is whole and its rules fit d, only
// the set elements that differ are deleted and added (rules keep their
// counters); otherwise the table is declared again, its chains refilled
// and its sets rewritten. A Sync with the state already applied only
// checks that the table is still whole.
func (g *Guard) Sync(ctx context.Context, d Desired) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	want, err := g.normalize(d)
	if err != nil {
		return err
	}
	// Checking that nobody deleted or flushed the table costs two nft
	// runs; at every endpoint change that would be most of the sync. A
	// recent check is trusted; the proxier's periodic sync repairs.
	checked := g.applied != nil && g.checkInterval > 0 && time.Since(g.checkedAt) < g.checkInterval
	if !checked && g.applied != nil && g.intact(ctx, g.applied) {
		checked = true
		g.checkedAt = time.Now()
	}
	if checked {
		if want.equal(g.applied) {
			return nil
		}
		if want.sameRules(g.applied) {
			tx := g.nft.NewTransaction()
			g.updateElements(tx, g.applied, want)
			err := g.nft.Run(ctx, tx)
			if err == nil {
				g.synced(want, "update")
				return nil
			}
			// Somebody changed the elements behind our back (a delete
			// found nothing): rewrite everything instead.
			klog.V(2).InfoS("Rewriting the Service IP guard", "family", g.family, "err", err)
		}
	}
	tx := g.nft.NewTransaction()
	g.declare(tx, want)
	els := want.elements()
	for _, set := range setNames {
		tx.Flush(&knftables.Set{Name: set})
		for _, key := range els[set] {
			tx.Add(&knftables.Element{Set: set, Key: key})
		}
	}
	if err := g.nft.Run(ctx, tx); err != nil {
		g.applied = nil
		return fmt.Errorf("sync %s nftables table %s: %w", nftFamily(g.family), TableName, err)
	}
	g.checkedAt = time.Now()
	g.synced(want, "rewrite")
	return nil
}

func (g *Guard) synced(want *normalized, how string) {
	g.applied = want
	klog.V(2).InfoS("Synced Service IP guard", "family", g.family, "how", how,
		"serviceIPRanges", len(want.ranges), "servedPorts", len(want.served), "dispatch", want.dispatch,
		"nodePorts", len(want.nodePorts), "firewalls", len(want.firewall))
}

// updateElements deletes what only from has and adds what only to has.
// Deletes come first: a new interval may overlap one it replaces.
func (g *Guard) updateElements(tx *knftables.Transaction, from, to *normalized) {
	join := func(key []string) string { return strings.Join(key, " . ") }
	old, next := from.elements(), to.elements()
	for _, set := range setNames {
		keep := map[string]bool{}
		for _, key := range next[set] {
			keep[join(key)] = true
		}
		for _, key := range old[set] {
			if !keep[join(key)] {
				tx.Delete(&knftables.Element{Set: set, Key: key})
			}
		}
	}
	for _, set := range setNames {
		had := map[string]bool{}
		for _, key := range old[set] {
			had[join(key)] = true
		}
		for _, key := range next[set] {
			if !had[join(key)] {
				tx.Add(&knftables.Element{Set: set, Key: key})
			}
		}
	}
}

// intact reports whether the chains and sets are still there, with the
// number of rules n needs: a Sync repairs a table someone deleted or
// flushed. Elements are not compared (that would cost a listing of every
// element at every sync). Two nft calls, both without elements.
func (g *Guard) intact(ctx context.Context, n *normalized) bool {
	objects, err := g.nft.ListAll(ctx)
	if err != nil {
		return false
	}
	for _, set := range setNames {
		if !slices.Contains(objects["set"], set) {
			return false
		}
	}
	want := ruleCounts(g.family, n)
	for chain := range want {
		if !slices.Contains(objects["chain"], chain) {
			return false
		}
	}
	rules, err := g.nft.ListRules(ctx, "")
	if err != nil {
		return false
	}
	got := map[string]int{}
	for _, r := range rules {
		got[r.Chain]++
	}
	for chain, count := range want {
		if got[chain] != count {
			return false
		}
	}
	return true
}

// ruleCounts is the number of rules declare puts in each chain for n.
func ruleCounts(family v1.IPFamily, n *normalized) map[string]int {
	dispatch, bridged := 1, 0
	if n.dispatch.IsValid() {
		dispatch += 2
		bridged = 2
		if family == v1.IPv4Protocol {
			dispatch++ // the bridge's return
		}
	}
	counts := map[string]int{InputChain: 6, OutputChain: 2, DispatchChain: dispatch, ClientSourceChain: 0, ClientSourceReturnChain: 0}
	if n.keepSource {
		counts[ClientSourceChain], counts[ClientSourceReturnChain] = 2, 1
	}
	if family == v1.IPv4Protocol {
		counts[BridgedChain] = bridged
	}
	return counts
}

// declare adds the table, its sets and chains with their rules. The chains
// are flushed and refilled, so rules from an older version of this code
// never survive.
func (g *Guard) declare(tx *knftables.Transaction, n *normalized) {
	ipX, addrType := "ip", "ipv4_addr"
	if g.family == v1.IPv6Protocol {
		ipX, addrType = "ip6", "ipv6_addr"
	}
	tx.Add(&knftables.Table{Comment: knftables.PtrTo(tableComment)})
	tx.Add(&knftables.Set{
		Name:    ServiceIPsSet,
		Type:    addrType,
		Flags:   []knftables.SetFlag{knftables.IntervalFlag},
		Comment: knftables.PtrTo(serviceIPsNote),
	})
	tx.Add(&knftables.Set{
		Name:    ServedPortsSet,
		Type:    addrType + " . inet_proto . inet_service",
		Comment: knftables.PtrTo(servedPortsNote),
	})
	tx.Add(&knftables.Set{
		Name:    NodePortsSet,
		Type:    "inet_service",
		Comment: knftables.PtrTo(nodePortsNote),
	})
	tx.Add(&knftables.Set{
		Name:    NodePortIPsSet,
		Type:    addrType,
		Comment: knftables.PtrTo(nodePortIPsNote),
	})
	tx.Add(&knftables.Set{
		Name:    FirewallSet,
		Type:    addrType + " . inet_service",
		Comment: knftables.PtrTo(firewallNote),
	})
	tx.Add(&knftables.Set{
		Name:    FirewallAllowSet,
		Type:    addrType + " . inet_service . " + addrType,
		Flags:   []knftables.SetFlag{knftables.IntervalFlag},
		Comment: knftables.PtrTo(firewallAllowNote),
	})
	g.declareInput(tx, ipX)
	g.declareOutput(tx, ipX)
	g.declareDispatch(tx, ipX, n)
	g.declareClientSource(tx, n)
	if g.family == v1.IPv4Protocol {
		g.declareBridged(tx, n)
	}
}

// declareBridged redirects IPv4 Service connections that come in through
// a Linux bridge (pods on a bridge CNI such as cni0) to HAProxy's
// listener with NAT, instead of TPROXY. With br_netfilter
// (bridge-nf-call-iptables=1, which kubeadm requires), a bridged packet's
// IPv4 prerouting hooks run in the bridge, before ip_rcv(), which drops
// the socket TPROXY assigned: the connection would be refused. NAT
// survives, and HAProxy reads the original destination of a redirected
// IPv4 connection (SO_ORIGINAL_DST) with the same "dst" fetch, so both
// paths meet the same map lookup. IPv6 has no such fallback: HAProxy 2.6
// does not read the original destination of a redirected IPv6
// connection (see docs/design.md).
func (g *Guard) declareBridged(tx *knftables.Transaction, n *normalized) {
	baseChain(tx, BridgedChain, knftables.NATType, knftables.PreroutingHook, knftables.BaseChainPriority("dstnat - 5"), "TCP arriving through a bridge to HAProxy's dispatch listener, by NAT")
	if !n.dispatch.IsValid() {
		return
	}
	redirect := "redirect to :" + strconv.Itoa(int(n.dispatch.Port()))
	tx.Add(&knftables.Rule{
		Chain: BridgedChain,
		Rule: knftables.Concat(`meta iifkind "bridge"`, "meta l4proto tcp",
			"ip daddr", ".", "meta l4proto", ".", "th dport", "@"+ServedPortsSet, redirect),
		Comment: knftables.PtrTo("served Service IP:port, from a bridge"),
	})
	if n.nodePortsListed {
		tx.Add(&knftables.Rule{
			Chain: BridgedChain,
			Rule: knftables.Concat(`meta iifkind "bridge"`, "meta l4proto tcp",
				"ip daddr", "@"+NodePortIPsSet, "tcp dport", "@"+NodePortsSet, redirect),
			Comment: knftables.PtrTo("NodePort on a nodePortAddresses address, from a bridge"),
		})
		return
	}
	tx.Add(&knftables.Rule{
		Chain: BridgedChain,
		Rule: knftables.Concat(`meta iifkind "bridge"`, "meta l4proto tcp",
			"ip daddr", "!=", "@"+ServiceIPsSet, "fib daddr type local", "tcp dport", "@"+NodePortsSet, redirect),
		Comment: knftables.PtrTo("NodePort on a local address, from a bridge"),
	})
}

func (g *Guard) declareInput(tx *knftables.Transaction, ipX string) {
	baseChain(tx, InputChain, knftables.FilterType, knftables.InputHook, knftables.FilterPriority, "packets delivered locally to a Service IP")
	tx.Add(&knftables.Rule{
		Chain:   InputChain,
		Rule:    knftables.Concat(ipX, "daddr", "!=", "@"+ServiceIPsSet, "return"),
		Comment: knftables.PtrTo("not a Service IP: not ours to filter"),
	})
	tx.Add(&knftables.Rule{
		Chain: InputChain,
		Rule:  "ct state established,related accept",
	})
	// The replies of HAProxy to a node-local client that used a Service IP
	// as its source address (the kernel picks the destination itself as
	// source for a local address) are untracked (see the output chain) and
	// addressed to the client's ephemeral port, which is not served. Only
	// the output chain makes packets untracked, and those come in on lo:
	// so untracked packets from lo whose source is a served triple are
	// such replies, and nothing from outside the node can match.
	tx.Add(&knftables.Rule{
		Chain: InputChain,
		Rule: knftables.Concat("iif", "lo", "ct state untracked", "meta l4proto tcp",
			ipX, "saddr", ".", "meta l4proto", ".", "th sport", "@"+ServedPortsSet, "accept"),
		Comment: knftables.PtrTo("HAProxy's reply to a node-local client"),
	})
	tx.Add(&knftables.Rule{
		Chain:   InputChain,
		Rule:    knftables.Concat(ipX, "daddr", ".", "meta l4proto", ".", "th dport", "@"+ServedPortsSet, "accept"),
		Comment: knftables.PtrTo("served by HAProxy"),
	})
	tx.Add(&knftables.Rule{
		Chain:   InputChain,
		Rule:    "meta l4proto tcp counter reject with tcp reset",
		Comment: knftables.PtrTo("Service IP, port not served"),
	})
	tx.Add(&knftables.Rule{
		Chain:   InputChain,
		Rule:    "counter reject",
		Comment: knftables.PtrTo("Service IP, port not served"),
	})
}

// declareOutput adds the output chain that keeps node-local connections to
// served triples out of conntrack (see the package comment). Both rules
// are limited to TCP, which is all HAProxy serves: a delegated UDP or
// SCTP port must keep conntrack, its DNAT needs it. The client's packets
// are recognised by their destination, HAProxy's replies by their source
// and a local destination; a reply to a pod or a remote client leaves the
// node and stays tracked, as its connection is.
func (g *Guard) declareOutput(tx *knftables.Transaction, ipX string) {
	baseChain(tx, OutputChain, knftables.FilterType, knftables.OutputHook, knftables.RawPriority, "node-local connections to served Service IP ports bypass conntrack")
	tx.Add(&knftables.Rule{
		Chain: OutputChain,
		Rule: knftables.Concat(ipX, "daddr", "@"+ServiceIPsSet, "meta l4proto tcp",
			ipX, "daddr", ".", "meta l4proto", ".", "th dport", "@"+ServedPortsSet, "notrack"),
		Comment: knftables.PtrTo("node-local client to a port HAProxy serves"),
	})
	tx.Add(&knftables.Rule{
		Chain: OutputChain,
		Rule: knftables.Concat(ipX, "saddr", "@"+ServiceIPsSet, "meta l4proto tcp",
			ipX, "saddr", ".", "meta l4proto", ".", "th sport", "@"+ServedPortsSet,
			"fib daddr type local", "notrack"),
		Comment: knftables.PtrTo("HAProxy's reply to a node-local client"),
	})
}

// declareDispatch adds the prerouting chain: the firewall, then TPROXY to
// HAProxy for served Service IP:ports and NodePorts. Mangle priority runs
// before upstream nftables' DNAT (dstnat), which only handles UDP and SCTP
// here. TPROXY looks up an established socket with the packet's own
// addresses first, so every packet of a dispatched connection (not only
// the SYN) must and does pass the rule; a packet whose socket is not
// transparent (a node-local client's, HAProxy's own to a pod) is left to
// the rules that follow.
func (g *Guard) declareDispatch(tx *knftables.Transaction, ipX string, n *normalized) {
	baseChain(tx, DispatchChain, knftables.FilterType, knftables.PreroutingHook, knftables.ManglePriority, "TCP to HAProxy's dispatch listener, after the LoadBalancer source ranges")
	tx.Add(&knftables.Rule{
		Chain: DispatchChain,
		Rule: knftables.Concat("meta l4proto tcp",
			ipX, "daddr", ".", "tcp dport", "@"+FirewallSet,
			ipX, "daddr", ".", "tcp dport", ".", ipX, "saddr", "!=", "@"+FirewallAllowSet,
			"counter drop"),
		Comment: knftables.PtrTo("source outside loadBalancerSourceRanges"),
	})
	if !n.dispatch.IsValid() {
		return
	}
	tproxy := "tproxy to " + n.dispatch.String()
	if g.family == v1.IPv4Protocol {
		// Bridged IPv4 is redirected by NAT instead (declareBridged). Not
		// `iifkind != "bridge"` on the TPROXY rules: on a device without
		// a kind (lo, most NICs) iifkind matches nothing, not even "!=".
		tx.Add(&knftables.Rule{
			Chain:   DispatchChain,
			Rule:    `meta iifkind "bridge" return`,
			Comment: knftables.PtrTo("IPv4 through a bridge: redirected by NAT in " + BridgedChain),
		})
	}
	tx.Add(&knftables.Rule{
		Chain: DispatchChain,
		Rule: knftables.Concat("meta l4proto tcp",
			ipX, "daddr", ".", "meta l4proto", ".", "th dport", "@"+ServedPortsSet, tproxy),
		Comment: knftables.PtrTo("served Service IP:port"),
	})
	if n.nodePortsListed {
		tx.Add(&knftables.Rule{
			Chain: DispatchChain,
			Rule: knftables.Concat("meta l4proto tcp",
				ipX, "daddr", "@"+NodePortIPsSet, "tcp dport", "@"+NodePortsSet, tproxy),
			Comment: knftables.PtrTo("NodePort on a nodePortAddresses address"),
		})
		return
	}
	tx.Add(&knftables.Rule{
		Chain: DispatchChain,
		Rule: knftables.Concat("meta l4proto tcp",
			ipX, "daddr", "!=", "@"+ServiceIPsSet, "fib daddr type local", "tcp dport", "@"+NodePortsSet, tproxy),
		Comment: knftables.PtrTo("NodePort on a local address"),
	})
}

// baseChain declares a chain on hook and flushes it, so the rules that
// follow replace whatever an older version of this code left there.
func baseChain(tx *knftables.Transaction, name string, typ knftables.BaseChainType, hook knftables.BaseChainHook, prio knftables.BaseChainPriority, comment string) {
	tx.Add(&knftables.Chain{
		Name:     name,
		Type:     knftables.PtrTo(typ),
		Hook:     knftables.PtrTo(hook),
		Priority: knftables.PtrTo(prio),
		Comment:  knftables.PtrTo(comment),
	})
	tx.Flush(&knftables.Chain{Name: name})
}

// declareClientSource marks the connections HAProxy makes from a client's
// address, and their replies (see the package comment). The chains are
// always there, empty without KeepClientSource, so turning it off
// flushes them.
func (g *Guard) declareClientSource(tx *knftables.Transaction, n *normalized) {
	mark := fmt.Sprintf("0x%x", ClientSourceMark)
	baseChain(tx, ClientSourceChain, knftables.RouteType, knftables.OutputHook, knftables.ManglePriority, "connections HAProxy makes from a client's address, and replies of hostNetwork endpoints to them")
	baseChain(tx, ClientSourceReturnChain, knftables.FilterType, knftables.PreroutingHook, knftables.ManglePriority, "their replies: routed to HAProxy by the policy rule of mark "+mark)
	if !n.keepSource {
		return
	}
	tx.Add(&knftables.Rule{
		Chain: ClientSourceChain,
		Rule:  "meta l4proto tcp ct state new fib saddr type != local ct mark set ct mark or " + mark,
	})
	reply := "ct direction reply ct mark and " + mark + " == " + mark + " meta mark set meta mark or " + mark
	tx.Add(&knftables.Rule{Chain: ClientSourceChain, Rule: reply})
	tx.Add(&knftables.Rule{Chain: ClientSourceReturnChain, Rule: reply})
}

// Cleanup deletes the table. It succeeds when there is no table.
func (g *Guard) Cleanup(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.applied = nil
	// nft before 1.0.8 has no "destroy": adding the table first makes the
	// delete succeed whether or not it existed.
	tx := g.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Delete(&knftables.Table{})
	if err := g.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("delete %s nftables table %s: %w", nftFamily(g.family), TableName, err)
	}
	return nil
}

func prefixKey(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
