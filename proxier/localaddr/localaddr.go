// Package localaddr makes Service IPs local on a node, so that connections
// to every ClusterIP (and LoadBalancer / external IP) are delivered to the
// node, where nftables hands them to HAProxy's listener, without putting a
// single address on an interface.
//
// The kernel delivers a packet locally when the destination matches a route
// of type "local" in the local routing table. `ip route add local
// 10.96.0.0/12 dev lo` ("AnyIP") therefore makes every address of a
// ServiceCIDR local at once, and bind(2) on any of them succeeds. LB and
// external IPs outside the ServiceCIDRs get a /32 (or /128) local route of
// their own, unless the host already treats them as local (an address on an
// interface, or someone else's local route): those are left alone.
//
// Every route this package adds carries a routing protocol number of its own
// (RouteProtocol), so reconciliation and cleanup only ever touch routes this
// package created, never the kernel's or an administrator's.
//
// A Manager serves one IP family; a dual-stack proxier runs one per family.
package localaddr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
)

// DefaultRouteProtocol marks the routes this package owns (`ip route show
// table local proto 66`). The number is not assigned in iproute2's
// rt_protos, so no routing daemon uses it.
const DefaultRouteProtocol netlink.RouteProtocol = 66

// LoopbackName is the interface local routes point at, as with `dev lo`.
const LoopbackName = "lo"

// Netlink is the part of *netlink.Handle the Manager uses. Unit tests use
// Fake, which keeps a routing table the way the kernel does.
type Netlink interface {
	LinkByName(name string) (netlink.Link, error)
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteAdd(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
}

// Desired is what should be local after a Reconcile.
type Desired struct {
	// CIDRs are the ServiceCIDRs: each becomes one local route.
	CIDRs []netip.Prefix
	// IPs are LoadBalancer ingress and external IPs. Each becomes a
	// single-address local route unless it is already local by other means
	// (inside one of CIDRs, or local through a route this package does not
	// own).
	IPs []netip.Addr
}

// Manager reconciles the local routes of one IP family.
type Manager struct {
	nl       Netlink
	family   v1.IPFamily
	protocol netlink.RouteProtocol
}

// New returns a Manager for family using nl (a *netlink.Handle in
// production, possibly opened in another network namespace).
func New(nl Netlink, family v1.IPFamily) *Manager {
	return &Manager{nl: nl, family: family, protocol: DefaultRouteProtocol}
}

// NewHost returns a Manager for family working on the network namespace of
// the calling process.
func NewHost(family v1.IPFamily) (*Manager, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	return New(h, family), nil
}

// Family is the IP family this Manager handles.
func (m *Manager) Family() v1.IPFamily { return m.family }

func (m *Manager) netlinkFamily() int { return NetlinkFamily(m.family) }

// NetlinkFamily is netlink's address family of family.
func NetlinkFamily(family v1.IPFamily) int {
	if family == v1.IPv6Protocol {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func (m *Manager) bits() int {
	if m.family == v1.IPv6Protocol {
		return 128
	}
	return 32
}

func (m *Manager) inFamily(a netip.Addr) bool {
	if m.family == v1.IPv6Protocol {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4() || a.Is4In6()
}

// localRoutes lists the local-type routes of the local table, split into
// the ones we own and everybody else's.
func (m *Manager) localRoutes() (ours []netip.Prefix, foreign []netip.Prefix, err error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL}
	routes, err := m.nl.RouteListFiltered(m.netlinkFamily(), filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, nil, fmt.Errorf("list local routes: %w", err)
	}
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		// The table changed while being dumped: a partial view could make
		// us delete a route we own, so ask once more.
		routes, err = m.nl.RouteListFiltered(m.netlinkFamily(), filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
		if err != nil {
			return nil, nil, fmt.Errorf("list local routes: %w", err)
		}
	}
	for _, r := range routes {
		p, ok := prefixOf(r.Dst)
		if !ok || !m.inFamily(p.Addr()) {
			continue
		}
		if r.Protocol == m.protocol {
			ours = append(ours, p)
		} else {
			foreign = append(foreign, p)
		}
	}
	return ours, foreign, nil
}

// Owned returns the prefixes this Manager's routes make local, sorted.
func (m *Manager) Owned() ([]netip.Prefix, error) {
	ours, _, err := m.localRoutes()
	if err != nil {
		return nil, err
	}
	sortPrefixes(ours)
	return ours, nil
}

// plan returns the prefixes that should carry our local routes for d, given
// the local routes somebody else owns: every CIDR of the family not already
// local through a foreign route, and every IP not already covered by a CIDR
// or a foreign local route. Sorted, no duplicates.
func (m *Manager) plan(d Desired, foreign []netip.Prefix) []netip.Prefix {
	want := []netip.Prefix{}
	for _, c := range d.CIDRs {
		c = c.Masked()
		if !m.inFamily(c.Addr()) || within(c, foreign) {
			continue
		}
		want = append(want, c)
	}
	for _, ip := range d.IPs {
		ip = ip.Unmap()
		if !m.inFamily(ip) || covered(ip, want) || covered(ip, foreign) {
			continue
		}
		want = append(want, netip.PrefixFrom(ip, m.bits()))
	}
	sortPrefixes(want)
	return slices.Compact(want)
}

// Plan returns the prefixes our routes would cover after Reconcile(d),
// without changing anything: a firewall can learn them before they become
// local.
func (m *Manager) Plan(d Desired) ([]netip.Prefix, error) {
	_, foreign, err := m.localRoutes()
	if err != nil {
		return nil, err
	}
	return m.plan(d, foreign), nil
}

// Reconcile adds the local routes d needs and removes the ones of ours it
// no longer needs. It returns the prefixes our routes cover afterwards
// (what a firewall in front of them has to guard). On error it carries on
// with the other routes and returns all errors joined.
func (m *Manager) Reconcile(d Desired) ([]netip.Prefix, error) {
	ours, foreign, err := m.localRoutes()
	if err != nil {
		return nil, err
	}
	want := m.plan(d, foreign)
	lo, err := m.nl.LinkByName(LoopbackName)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", LoopbackName, err)
	}
	loIndex := lo.Attrs().Index

	var errs []error
	have := map[netip.Prefix]bool{}
	for _, p := range ours {
		have[p] = true
	}
	result := []netip.Prefix{}
	for _, p := range want {
		if have[p] {
			result = append(result, p)
			continue
		}
		if err := m.nl.RouteAdd(m.route(p, loIndex)); err != nil {
			errs = append(errs, fmt.Errorf("add local route %s: %w", p, err))
			continue
		}
		klog.V(2).InfoS("Added local route for Service IPs", "prefix", p)
		result = append(result, p)
	}
	for _, p := range ours {
		if slices.Contains(want, p) {
			continue
		}
		if err := m.del(p); err != nil {
			errs = append(errs, err)
			result = append(result, p)
			continue
		}
		klog.V(2).InfoS("Removed local route for Service IPs", "prefix", p)
	}
	sortPrefixes(result)
	return result, errors.Join(errs...)
}

// Cleanup removes every local route of ours in this family.
func (m *Manager) Cleanup() error {
	ours, _, err := m.localRoutes()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ours {
		if err := m.del(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) del(p netip.Prefix) error {
	// Table, type and protocol are all part of the match: the kernel only
	// deletes a route of ours, never a same-prefix route of somebody else.
	// The scope must be given too: IPv4 matches it unless it is "nowhere",
	// and netlink sends 0 (universe) when unset.
	r := &netlink.Route{
		Dst:      ipNet(p),
		Table:    unix.RT_TABLE_LOCAL,
		Type:     unix.RTN_LOCAL,
		Scope:    netlink.SCOPE_HOST,
		Protocol: m.protocol,
	}
	if err := m.nl.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete local route %s: %w", p, err)
	}
	return nil
}

// route is `ip route add local <p> dev lo table local proto <ours>`.
func (m *Manager) route(p netip.Prefix, loIndex int) *netlink.Route {
	return &netlink.Route{
		LinkIndex: loIndex,
		Dst:       ipNet(p),
		Table:     unix.RT_TABLE_LOCAL,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Protocol:  m.protocol,
	}
}

func covered(ip netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// within reports whether all of p is inside one of prefixes.
func within(p netip.Prefix, prefixes []netip.Prefix) bool {
	for _, q := range prefixes {
		if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}
