// Package hostnet prepares a node's network for HAProxy in scope node: it
// makes the Service IPs local (package localaddr) and keeps the guard and
// the dispatch to HAProxy's listener in step (package serviceguard: TPROXY,
// and NAT for IPv4 arriving through a bridge), in the order that never
// leaves a Service IP local and unguarded:
//
//  1. Prepare, before HAProxy is given the new maps: the guard learns every
//     Service IP that is or will be local, and serves and dispatches what
//     the old and the new state serve; then the missing routes are added
//     (old ones stay: HAProxy still serves them).
//  2. HAProxy's maps are changed at runtime.
//  3. Finish: routes no longer needed are removed, then the guard is
//     narrowed to exactly the new state.
//
// A Host serves one IP family, like the proxier it belongs to.
package hostnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"

	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// Desired is what the host needs for one state of HAProxy's maps.
type Desired struct {
	// ServiceCIDRs become local as a whole and are always guarded.
	ServiceCIDRs []netip.Prefix
	// Served are the Service IP . protocol . port triples HAProxy serves:
	// ClusterIP, LoadBalancer and external IP ports. Addresses already
	// local (a node IP as external IP) get no route and no guard; the
	// others get a single-address route when outside the ServiceCIDRs,
	// and are guarded. The TCP ones are dispatched to Dispatch.
	Served []serviceguard.Binding
	// Dispatch is where TPROXY finds HAProxy's transparent listener of
	// this family (127.0.0.1:port, [::1]:port); bridged IPv4 is
	// redirected to its port on the bridge's address, so the IPv4
	// listener binds 0.0.0.0:port. Zero dispatches nothing.
	Dispatch netip.AddrPort
	// NodePorts are the TCP NodePorts HAProxy serves.
	NodePorts []uint16
	// NodePortAddresses restrict NodePorts to these addresses; empty means
	// every local address that is not a Service IP.
	NodePortAddresses []netip.Addr
	// Firewall are the LoadBalancer IP:ports with source ranges.
	Firewall []serviceguard.FirewallEntry
	// KeepClientSource: HAProxy connects to endpoints on this node from
	// outside clients' addresses; the guard marks those connections and
	// a policy routing rule brings the endpoints' replies back to HAProxy
	// (clientsource.go).
	KeepClientSource bool
}

func (d Desired) addrs() localaddr.Desired {
	ld := localaddr.Desired{CIDRs: d.ServiceCIDRs}
	for _, b := range d.Served {
		ld.IPs = append(ld.IPs, b.IP)
	}
	return ld
}

// union is what serves both a (what HAProxy's maps hold now) and b (what
// they will hold), for the time in between.
func union(a, b Desired) Desired {
	u := Desired{
		ServiceCIDRs: append(slices.Clone(a.ServiceCIDRs), b.ServiceCIDRs...),
		Served:       append(slices.Clone(a.Served), b.Served...),
		Dispatch:     b.Dispatch,
		NodePorts:    append(slices.Clone(a.NodePorts), b.NodePorts...),
		// Source ranges are the new ones at once: they do not depend on
		// HAProxy's maps. An IP:port that only a still has keeps its
		// ranges, since it is still served.
		Firewall: slices.Clone(b.Firewall),
		// Connections made from a client's address before the change still
		// need their replies: keep the return path while either side does.
		KeepClientSource: a.KeepClientSource || b.KeepClientSource,
	}
	if !u.Dispatch.IsValid() {
		u.Dispatch = a.Dispatch
	}
	// NodePort addresses come from the proxier's configuration and do not
	// change while it runs; a side without NodePorts has no say (the
	// zero Desired before the first Finish must not mean "every address").
	switch {
	case len(a.NodePorts) == 0:
		u.NodePortAddresses = b.NodePortAddresses
	case len(b.NodePorts) == 0:
		u.NodePortAddresses = a.NodePortAddresses
	case len(a.NodePortAddresses) > 0 && len(b.NodePortAddresses) > 0:
		u.NodePortAddresses = append(slices.Clone(a.NodePortAddresses), b.NodePortAddresses...)
	}
	for _, f := range a.Firewall {
		if !slices.ContainsFunc(b.Firewall, func(g serviceguard.FirewallEntry) bool { return g.IP == f.IP && g.Port == f.Port }) {
			u.Firewall = append(u.Firewall, f)
		}
	}
	return u
}

// Host keeps one family's local routes and guard.
type Host struct {
	addrs *localaddr.Manager
	guard *serviceguard.Guard
	// family and routeReplies: the Host manages the policy routing of
	// KeepClientSource on the calling process's network namespace (not
	// with the fakes of NewWith); repliesRouted is what it last did.
	family        v1.IPFamily
	routeReplies  bool
	repliesRouted bool
	// last is the Desired of the maps HAProxy serves (as of the last
	// successful Finish).
	last Desired
}

// New returns a Host for family on the network namespace of the calling
// process.
func New(family v1.IPFamily) (*Host, error) {
	addrs, err := localaddr.NewHost(family)
	if err != nil {
		return nil, err
	}
	guard, err := serviceguard.New(family)
	if err != nil {
		return nil, err
	}
	h := NewWith(addrs, guard)
	h.family, h.routeReplies = family, true
	return h, nil
}

// NewWith returns a Host using the given managers (fakes in unit tests).
func NewWith(addrs *localaddr.Manager, guard *serviceguard.Guard) *Host {
	return &Host{addrs: addrs, guard: guard}
}

// guardFor is the guard state for d, given the prefixes our routes cover.
func guardFor(d Desired, routed []netip.Prefix) serviceguard.Desired {
	return serviceguard.Desired{
		ServiceIPs:        append(slices.Clone(d.ServiceCIDRs), routed...),
		Served:            d.Served,
		Dispatch:          d.Dispatch,
		NodePorts:         d.NodePorts,
		NodePortAddresses: d.NodePortAddresses,
		Firewall:          d.Firewall,
		KeepClientSource:  d.KeepClientSource,
	}
}

// Prepare runs before HAProxy is given the maps of want: it makes want's
// Service IPs local, guarded and dispatched, and keeps what HAProxy's
// current maps still serve.
func (h *Host) Prepare(ctx context.Context, want Desired) error {
	both := union(h.last, want)
	planned, err := h.addrs.Plan(both.addrs())
	if err != nil {
		return err
	}
	current, err := h.addrs.Owned()
	if err != nil {
		return err
	}
	// Guard first: an address must never be local before it is guarded.
	if err := h.guard.Sync(ctx, guardFor(both, append(planned, current...))); err != nil {
		return err
	}
	if _, err := h.addrs.Reconcile(both.addrs()); err != nil {
		return fmt.Errorf("make Service IPs local: %w", err)
	}
	// Checked at every Prepare (three netlink calls), so a rule someone
	// removed comes back.
	if both.KeepClientSource && h.routeReplies {
		if err := routeClientSourceReplies(h.family); err != nil {
			return err
		}
		h.repliesRouted = true
	}
	return nil
}

// Finish runs after HAProxy was given the maps of want: it removes what
// only the previous maps needed. After a failed Finish, the next Prepare
// still covers the previous state.
func (h *Host) Finish(ctx context.Context, want Desired) error {
	var errs []error
	routed, err := h.addrs.Reconcile(want.addrs())
	if err != nil {
		errs = append(errs, fmt.Errorf("remove unused local Service IPs: %w", err))
		// A route that could not be removed is still local: keep it guarded.
		if owned, oerr := h.addrs.Owned(); oerr == nil {
			routed = owned
		}
	}
	if err := h.guard.Sync(ctx, guardFor(want, routed)); err != nil {
		errs = append(errs, err)
	}
	if !want.KeepClientSource && h.repliesRouted {
		if err := unrouteClientSourceReplies(h.family); err != nil {
			errs = append(errs, err)
		} else {
			h.repliesRouted = false
		}
	}
	if len(errs) == 0 {
		h.last = want
	}
	return errors.Join(errs...)
}

// Sync is Prepare then Finish, for a change HAProxy's maps do not take
// part in, or a periodic repair.
func (h *Host) Sync(ctx context.Context, want Desired) error {
	if err := h.Prepare(ctx, want); err != nil {
		return err
	}
	return h.Finish(ctx, want)
}

// Cleanup removes the guard and every route of ours in this family. Routes
// go first, so no Service IP is ever local without the guard.
func (h *Host) Cleanup(ctx context.Context) error {
	h.last = Desired{}
	var replies error
	if h.routeReplies {
		replies = unrouteClientSourceReplies(h.family)
		h.repliesRouted = false
	}
	return errors.Join(h.addrs.Cleanup(), h.guard.Cleanup(ctx), replies)
}

// Cleanup removes the routes and guards of both families from the calling
// process's network namespace: what kube-proxy's --cleanup needs, without a
// running proxier.
func Cleanup(ctx context.Context) error {
	var errs []error
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		if addrs, err := localaddr.NewHost(family); err != nil {
			errs = append(errs, err)
		} else if err := addrs.Cleanup(); err != nil {
			errs = append(errs, err)
		}
		if err := unrouteClientSourceReplies(family); err != nil {
			errs = append(errs, err)
		}
		if _, err := exec.LookPath("nft"); err != nil {
			// No nft, no table of ours to delete.
			continue
		}
		if guard, err := serviceguard.New(family); err != nil {
			errs = append(errs, err)
		} else if err := guard.Cleanup(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
