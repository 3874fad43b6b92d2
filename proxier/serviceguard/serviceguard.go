// Package serviceguard keeps local Service IPs from answering on ports the
// proxier does not serve.
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
//   - a packet to one of the served IP . protocol . port triples (the binds
//     of the current HAProxy configuration) is accepted;
//   - everything else addressed to a Service IP is rejected (a TCP reset,
//     an ICMP port-unreachable otherwise), so a client fails fast.
//
// A second chain, on the output hook at raw priority (before conntrack),
// takes node-local connections to served triples out of connection
// tracking (notrack), both the client's packets and HAProxy's replies.
// Upstream's nftables proxier, which serves the delegated UDP and SCTP
// ports on the same host, rejects in its output path every *new*
// connection to one of its ClusterIPs that it did not DNAT: that would
// reject a node-local TCP connection to kube-dns's TCP 53, which HAProxy
// serves on the same ClusterIP as the delegated UDP 53. An untracked
// packet is never "new", so no such rule sees it, and no NAT chain runs
// for it either. Pod and remote clients come in through prerouting and
// keep their conntrack entries; only connections whose both ends are on
// the node lose them (`conntrack -L` does not list them).
//
// Sync replaces the sets with a new desired state in one nftables
// transaction, so there is never a moment without the guard. The caller
// runs it before HAProxy binds new addresses.
package serviceguard

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"
)

// Names of the nftables objects. Operators see them in `nft list table ip
// kube-haproxy`.
const (
	TableName       = "kube-haproxy"
	InputChain      = "service-ip-input"
	OutputChain     = "service-ip-output"
	ServiceIPsSet   = "service-ips"
	ServedPortsSet  = "served-ports"
	tableComment    = "kube-haproxy: only served Service IP:port pairs accept"
	serviceIPsNote  = "ServiceCIDRs and the LoadBalancer and external IPs made local on this node"
	servedPortsNote = "Service IP . protocol . port pairs HAProxy binds"
)

// Binding is one Service IP, protocol and port that may accept connections.
type Binding struct {
	IP       netip.Addr
	Protocol v1.Protocol
	Port     uint16
}

func (b Binding) String() string {
	return fmt.Sprintf("%s/%s:%d", b.IP, b.Protocol, b.Port)
}

// Desired is the guard's state after a Sync.
type Desired struct {
	// ServiceIPs are the guarded destinations: every ServiceCIDR and each
	// LoadBalancer or external IP made local on this node. Addresses that
	// were local before (node IPs) must not be here, or all their
	// unserved ports would be rejected too.
	ServiceIPs []netip.Prefix
	// Served are the bindings that may accept.
	Served []Binding
}

// Guard owns the nftables table of one IP family.
type Guard struct {
	nft    knftables.Interface
	family v1.IPFamily

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
	return NewWithInterface(nft, family), nil
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

// normalized is a Desired reduced to one family, without overlaps or
// duplicates, sorted: nftables refuses overlapping intervals in a set, and
// comparing two normalized states tells whether anything changed.
type normalized struct {
	ranges []netip.Prefix
	served []Binding
}

func (g *Guard) inFamily(a netip.Addr) bool {
	if g.family == v1.IPv6Protocol {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4() || a.Is4In6()
}

func (g *Guard) normalize(d Desired) *normalized {
	n := &normalized{}
	var ranges []netip.Prefix
	for _, p := range d.ServiceIPs {
		if !p.IsValid() {
			continue
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if g.inFamily(p.Addr()) {
			ranges = append(ranges, p.Masked())
		}
	}
	// Shorter prefixes first, so a prefix inside an earlier one is dropped.
	slices.SortFunc(ranges, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	for _, p := range ranges {
		inside := false
		for _, q := range n.ranges {
			if q.Contains(p.Addr()) {
				inside = true
				break
			}
		}
		if !inside {
			n.ranges = append(n.ranges, p)
		}
	}
	slices.SortFunc(n.ranges, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })

	for _, b := range d.Served {
		b.IP = b.IP.Unmap()
		if !g.inFamily(b.IP) {
			continue
		}
		n.served = append(n.served, b)
	}
	slices.SortFunc(n.served, func(a, b Binding) int {
		if c := a.IP.Compare(b.IP); c != 0 {
			return c
		}
		if c := strings.Compare(string(a.Protocol), string(b.Protocol)); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	n.served = slices.Compact(n.served)
	return n
}

func (n *normalized) equal(o *normalized) bool {
	return o != nil && slices.Equal(n.ranges, o.ranges) && slices.Equal(n.served, o.served)
}

// Sync makes the table match d. The table, chain and sets are (re)declared
// and both sets are rewritten in one transaction, which the kernel applies
// atomically. A Sync with the state already applied only checks that the
// table is still whole.
func (g *Guard) Sync(ctx context.Context, d Desired) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	want := g.normalize(d)
	if want.equal(g.applied) && g.intact(ctx) {
		return nil
	}
	tx := g.nft.NewTransaction()
	g.declare(tx)
	tx.Flush(&knftables.Set{Name: ServiceIPsSet})
	tx.Flush(&knftables.Set{Name: ServedPortsSet})
	for _, p := range want.ranges {
		tx.Add(&knftables.Element{Set: ServiceIPsSet, Key: []string{prefixKey(p)}})
	}
	for _, b := range want.served {
		tx.Add(&knftables.Element{Set: ServedPortsSet, Key: []string{
			b.IP.String(), strings.ToLower(string(b.Protocol)), strconv.Itoa(int(b.Port)),
		}})
	}
	if err := g.nft.Run(ctx, tx); err != nil {
		g.applied = nil
		return fmt.Errorf("sync %s nftables table %s: %w", nftFamily(g.family), TableName, err)
	}
	g.applied = want
	klog.V(2).InfoS("Synced Service IP guard", "family", g.family,
		"serviceIPRanges", len(want.ranges), "servedPorts", len(want.served))
	return nil
}

// intact reports whether the chain and both sets are still there: a Sync
// with an unchanged state repairs a table someone deleted or flushed.
// Elements are not compared (that would cost a listing of every element
// at every sync).
func (g *Guard) intact(ctx context.Context) bool {
	objects, err := g.nft.ListAll(ctx)
	if err != nil || !slices.Contains(objects["chain"], InputChain) ||
		!slices.Contains(objects["set"], ServiceIPsSet) || !slices.Contains(objects["set"], ServedPortsSet) {
		return false
	}
	if !slices.Contains(objects["chain"], OutputChain) {
		return false
	}
	rules, err := g.nft.ListRules(ctx, InputChain)
	if err != nil || len(rules) != inputRules {
		return false
	}
	rules, err = g.nft.ListRules(ctx, OutputChain)
	return err == nil && len(rules) == outputRules
}

// inputRules and outputRules are the numbers of rules declare puts in the
// input and output chains.
const (
	inputRules  = 6
	outputRules = 2
)

// declare adds the table, its sets and the input chain with its rules.
// The chain is flushed and refilled, so rules from an older version of this
// code never survive a Sync.
func (g *Guard) declare(tx *knftables.Transaction) {
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
	tx.Add(&knftables.Chain{
		Name:     InputChain,
		Type:     knftables.PtrTo(knftables.FilterType),
		Hook:     knftables.PtrTo(knftables.InputHook),
		Priority: knftables.PtrTo(knftables.FilterPriority),
		Comment:  knftables.PtrTo("packets delivered locally to a Service IP"),
	})
	tx.Flush(&knftables.Chain{Name: InputChain})
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
	g.declareOutput(tx, ipX)
}

// declareOutput adds the output chain that keeps node-local connections to
// served triples out of conntrack (see the package comment). Both rules
// are limited to TCP, which is all HAProxy serves: a delegated UDP or
// SCTP port must keep conntrack, its DNAT needs it. The client's packets
// are recognised by their destination, HAProxy's replies by their source
// and a local destination; a reply to a pod or a remote client leaves the
// node and stays tracked, as its connection is.
func (g *Guard) declareOutput(tx *knftables.Transaction, ipX string) {
	tx.Add(&knftables.Chain{
		Name:     OutputChain,
		Type:     knftables.PtrTo(knftables.FilterType),
		Hook:     knftables.PtrTo(knftables.OutputHook),
		Priority: knftables.PtrTo(knftables.RawPriority),
		Comment:  knftables.PtrTo("node-local connections to served Service IP ports bypass conntrack"),
	})
	tx.Flush(&knftables.Chain{Name: OutputChain})
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
