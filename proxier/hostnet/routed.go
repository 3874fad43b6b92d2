package hostnet

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
)

// RoutedEndpoints returns a function that says whether an address on this
// node is reached through the node's routing alone: its route in the
// main table is a direct route over a link that is no bridge (a routed
// CNI's /32 over a veth). A pod behind such a route sends every reply
// through the node, so HAProxy may connect to it from a pod client's own
// address and still get the replies (package serviceguard's client-source
// marks). A pod on a bridge answers a pod of the same bridge directly,
// past the node, and is never reported.
func RoutedEndpoints(family v1.IPFamily) (func(netip.Addr) bool, error) {
	routes, err := netlink.RouteListFiltered(localaddr.NetlinkFamily(family), &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	bridge := map[int]bool{}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Type() == "bridge" || l.Attrs().MasterIndex != 0 {
			// A bridge, or a port of one (a route over a port still meets
			// the bridge's other pods).
			bridge[l.Attrs().Index] = true
		}
	}
	var routed []netip.Prefix
	var other []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		p, ok := prefixOf(r)
		if !ok {
			continue
		}
		if r.Gw == nil && len(r.MultiPath) == 0 && r.Scope == netlink.SCOPE_LINK && !bridge[r.LinkIndex] {
			routed = append(routed, p)
		} else {
			other = append(other, p)
		}
	}
	return func(a netip.Addr) bool {
		best, isRouted := -1, false
		for _, p := range routed {
			if p.Contains(a) && p.Bits() > best {
				best, isRouted = p.Bits(), true
			}
		}
		for _, p := range other {
			if p.Contains(a) && p.Bits() > best {
				best, isRouted = p.Bits(), false
			}
		}
		return isRouted
	}, nil
}

func prefixOf(r netlink.Route) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
