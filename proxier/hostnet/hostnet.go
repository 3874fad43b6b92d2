// Package hostnet prepares a node's network for the binds of an HAProxy
// configuration in scope node: it makes the Service IPs local (package
// localaddr) and keeps the guard in step (package serviceguard), in the
// order that never leaves a Service IP local and unguarded, nor a bind
// without its local address:
//
//  1. BeforeReload, with the configuration about to be loaded: the guard
//     learns every Service IP that is or will be local and every bind of
//     the old and the new configuration; then the missing routes are added
//     (old ones stay: the running HAProxy still uses them).
//  2. HAProxy reloads and binds.
//  3. AfterReload: routes no longer needed are removed, then the guard is
//     narrowed to exactly the new configuration.
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

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/localaddr"
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// Desired is what the host needs for one HAProxy configuration.
type Desired struct {
	// ServiceCIDRs become local as a whole and are always guarded.
	ServiceCIDRs []netip.Prefix
	// Binds are the specific-address binds of the configuration: ClusterIP,
	// LB and external IP binds, and NodePort binds on node addresses.
	// Addresses already local (node IPs) get no route and no guard; the
	// others get a single-address route when outside the ServiceCIDRs, and
	// are guarded.
	Binds []serviceguard.Binding
}

// FromConfig returns the Desired of cfg: every bind on a specific address
// (wildcard binds listen on addresses that are local anyway, and the guard
// keeps them off Service IPs). HAProxy binds here are TCP.
func FromConfig(serviceCIDRs []netip.Prefix, cfg *haproxycfg.Config) Desired {
	d := Desired{ServiceCIDRs: slices.Clone(serviceCIDRs)}
	for _, fe := range cfg.Frontends {
		for _, b := range fe.Binds {
			if !b.Addr.IsValid() || b.Addr.IsUnspecified() {
				continue
			}
			d.Binds = append(d.Binds, serviceguard.Binding{IP: b.Addr.Unmap(), Protocol: v1.ProtocolTCP, Port: b.Port})
		}
	}
	return d
}

func (d Desired) addrs() localaddr.Desired {
	ld := localaddr.Desired{CIDRs: d.ServiceCIDRs}
	for _, b := range d.Binds {
		ld.IPs = append(ld.IPs, b.IP)
	}
	return ld
}

func union(a, b Desired) Desired {
	return Desired{
		ServiceCIDRs: append(slices.Clone(a.ServiceCIDRs), b.ServiceCIDRs...),
		Binds:        append(slices.Clone(a.Binds), b.Binds...),
	}
}

// Host keeps one family's local routes and guard.
type Host struct {
	addrs *localaddr.Manager
	guard *serviceguard.Guard
	// last is the Desired of the configuration HAProxy runs.
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
	return NewWith(addrs, guard), nil
}

// NewWith returns a Host using the given managers (fakes in unit tests).
func NewWith(addrs *localaddr.Manager, guard *serviceguard.Guard) *Host {
	return &Host{addrs: addrs, guard: guard}
}

// guardFor is the guard state for d, given the prefixes our routes cover.
func guardFor(d Desired, routed []netip.Prefix) serviceguard.Desired {
	return serviceguard.Desired{
		ServiceIPs: append(slices.Clone(d.ServiceCIDRs), routed...),
		Served:     d.Binds,
	}
}

// BeforeReload makes want's Service IPs local and guarded, keeping what the
// running configuration still uses.
func (h *Host) BeforeReload(ctx context.Context, want Desired) error {
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
	return nil
}

// AfterReload removes what only the previous configuration needed.
func (h *Host) AfterReload(ctx context.Context, want Desired) error {
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
	if len(errs) == 0 {
		h.last = want
	}
	return errors.Join(errs...)
}

// Sync is BeforeReload then AfterReload, for a change HAProxy needs no
// reload for, or a periodic repair.
func (h *Host) Sync(ctx context.Context, want Desired) error {
	if err := h.BeforeReload(ctx, want); err != nil {
		return err
	}
	return h.AfterReload(ctx, want)
}

// Cleanup removes the guard and every route of ours in this family. Routes
// go first, so no Service IP is ever local without the guard.
func (h *Host) Cleanup(ctx context.Context) error {
	h.last = Desired{}
	return errors.Join(h.addrs.Cleanup(), h.guard.Cleanup(ctx))
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
