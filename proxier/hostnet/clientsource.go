package hostnet

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// The policy routing that brings an endpoint's replies to a connection
// HAProxy made from a client's address back to HAProxy: packets with
// serviceguard.ClientSourceMark (the guard marks them) are looked up in
// ClientSourceTable, whose one route makes every address local, so they
// are delivered to HAProxy's transparent socket instead of being
// forwarded to the client. `ip rule show` and `ip route show table 27496`
// show them.
const (
	// ClientSourceTable is the routing table of the marked replies
	// ("kh" in ASCII).
	ClientSourceTable = 27496
	// ClientSourceRulePriority puts the rule before the rules CNIs add
	// for pod sources (they would send the reply on towards the client),
	// after the local table's (0).
	ClientSourceRulePriority = 100
)

// clientSourceRule and clientSourceRoute are the rule and route of
// family.
func clientSourceRule(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Mark = serviceguard.ClientSourceMark
	mask := uint32(serviceguard.ClientSourceMark)
	r.Mask = &mask
	r.Table = ClientSourceTable
	r.Priority = ClientSourceRulePriority
	return r
}

func clientSourceRoute(family int, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family: family, Dst: dst, LinkIndex: lo, Table: ClientSourceTable,
		Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Protocol: localaddr.DefaultRouteProtocol,
	}
}

// routeClientSourceReplies adds the rule and the route of family when
// missing (RouteReplace and a rule check keep it idempotent).
func routeClientSourceReplies(family v1.IPFamily) error {
	fam := localaddr.NetlinkFamily(family)
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("client source replies: %w", err)
	}
	if err := netlink.RouteReplace(clientSourceRoute(fam, lo.Attrs().Index)); err != nil {
		return fmt.Errorf("client source replies: route in table %d: %w", ClientSourceTable, err)
	}
	rules, err := netlink.RuleListFiltered(fam, &netlink.Rule{Table: ClientSourceTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("client source replies: list rules: %w", err)
	}
	for _, r := range rules {
		if r.Mark == serviceguard.ClientSourceMark && r.Priority == ClientSourceRulePriority {
			return nil
		}
	}
	if err := netlink.RuleAdd(clientSourceRule(fam)); err != nil {
		return fmt.Errorf("client source replies: add rule: %w", err)
	}
	return nil
}

// unrouteClientSourceReplies removes the rules and the route of family.
// A kernel without the family (IPv6 disabled) has none to remove.
func unrouteClientSourceReplies(family v1.IPFamily) error {
	fam := localaddr.NetlinkFamily(family)
	var errs []error
	rules, err := netlink.RuleListFiltered(fam, &netlink.Rule{Table: ClientSourceTable}, netlink.RT_FILTER_TABLE)
	if errors.Is(err, unix.EAFNOSUPPORT) {
		return nil
	}
	if err != nil {
		errs = append(errs, err)
	}
	for i := range rules {
		if err := netlink.RuleDel(&rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: ClientSourceTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		errs = append(errs, err)
	}
	for i := range routes {
		if err := netlink.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("client source replies: %w", errors.Join(errs...))
	}
	return nil
}
