package localaddr

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Fake is an in-memory Netlink with the kernel's behaviour for the calls
// the Manager makes: routes live in tables, adding a route whose table,
// destination, TOS and metric are taken fails with EEXIST, deleting matches
// on the fields the request sets and fails with ESRCH when nothing
// matches, and listing honours the filter mask. It starts with a loopback
// link (index 1), like a fresh network namespace.
type Fake struct {
	mu     sync.Mutex
	links  map[string]netlink.Link
	routes []netlink.Route
}

var _ Netlink = &Fake{}

// NewFake returns a Fake with only the loopback link and no routes.
func NewFake() *Fake {
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1, Name: LoopbackName}}
	return &Fake{links: map[string]netlink.Link{LoopbackName: lo}}
}

// LinkByName implements Netlink.
func (f *Fake) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok {
		return l, nil
	}
	return nil, netlink.LinkNotFoundError{}
}

func family(r *netlink.Route) int {
	if r.Dst != nil && r.Dst.IP.To4() == nil {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func table(r *netlink.Route) int {
	if r.Table == 0 {
		return unix.RT_TABLE_MAIN
	}
	return r.Table
}

func sameDst(a, b *netlink.Route) bool {
	pa, oka := prefixOf(a.Dst)
	pb, okb := prefixOf(b.Dst)
	return oka == okb && pa == pb
}

// RouteAdd implements Netlink.
func (f *Fake) RouteAdd(route *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := prefixOf(route.Dst); !ok {
		return fmt.Errorf("fake netlink: route without destination: %w", unix.EINVAL)
	}
	if route.LinkIndex == 0 {
		return fmt.Errorf("fake netlink: route without device: %w", unix.ENODEV)
	}
	for _, r := range f.routes {
		if family(&r) == family(route) && table(&r) == table(route) && sameDst(&r, route) &&
			r.Tos == route.Tos && r.Priority == route.Priority {
			return unix.EEXIST
		}
	}
	r := *route
	r.Table = table(route)
	r.Family = family(route)
	f.routes = append(f.routes, r)
	return nil
}

// RouteDel implements Netlink.
func (f *Fake) RouteDel(route *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.routes {
		if family(&r) != family(route) || table(&r) != table(route) || !sameDst(&r, route) {
			continue
		}
		// As in the kernel, the optional fields of the request narrow the
		// match when set. IPv4 also matches the scope unless the request
		// says "nowhere" (netlink sends universe, 0, when it is unset).
		if (family(route) == netlink.FAMILY_V4 && route.Scope != netlink.SCOPE_NOWHERE && r.Scope != route.Scope) ||
			(route.Type != 0 && r.Type != route.Type) ||
			(route.Protocol != 0 && r.Protocol != route.Protocol) ||
			(route.LinkIndex != 0 && r.LinkIndex != route.LinkIndex) {
			continue
		}
		f.routes = slices.Delete(f.routes, i, i+1)
		return nil
	}
	return unix.ESRCH
}

// RouteListFiltered implements Netlink. Without RT_FILTER_TABLE only the
// main table is listed, as netlink does.
func (f *Fake) RouteListFiltered(fam int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netlink.Route
	for _, r := range f.routes {
		if fam != netlink.FAMILY_ALL && r.Family != fam {
			continue
		}
		switch {
		case filter == nil || mask&netlink.RT_FILTER_TABLE == 0:
			if r.Table != unix.RT_TABLE_MAIN {
				continue
			}
		case filter.Table != unix.RT_TABLE_UNSPEC && r.Table != filter.Table:
			continue
		}
		if filter != nil {
			if (mask&netlink.RT_FILTER_TYPE != 0 && r.Type != filter.Type) ||
				(mask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol) ||
				(mask&netlink.RT_FILTER_OIF != 0 && r.LinkIndex != filter.LinkIndex) {
				continue
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// AddForeignLocal adds a local route that this package does not own, as the
// kernel does for an address on an interface (`proto kernel`) or an
// administrator with `ip route add local`.
func (f *Fake) AddForeignLocal(p netip.Prefix, protocol netlink.RouteProtocol) error {
	return f.RouteAdd(&netlink.Route{
		LinkIndex: 1,
		Dst:       ipNet(p),
		Table:     unix.RT_TABLE_LOCAL,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Protocol:  protocol,
	})
}

// LocalRoutes returns every local-type route of the local table as
// "prefix proto N" strings, sorted: what `ip route show table local type
// local` would show.
func (f *Fake) LocalRoutes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.routes {
		if r.Table != unix.RT_TABLE_LOCAL || r.Type != unix.RTN_LOCAL {
			continue
		}
		p, _ := prefixOf(r.Dst)
		out = append(out, fmt.Sprintf("%s proto %d", p, r.Protocol))
	}
	slices.Sort(out)
	return out
}
