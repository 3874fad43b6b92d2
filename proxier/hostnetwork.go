package proxier

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
)

// hostNetworkApplier prepares the node around each Apply in scope node
// (package hostnet): before HAProxy is given a model, every Service IP the
// model binds is made local and guarded; after HAProxy took it, what only
// the previous model needed is removed. See README.md, "Local Service IPs
// and the guard".
type hostNetworkApplier struct {
	next    Applier
	newHost func(v1.IPFamily) (*hostnet.Host, error)

	mu    sync.Mutex
	hosts map[v1.IPFamily]*hostnet.Host
	cidrs map[v1.IPFamily][]netip.Prefix
}

var (
	_ Applier             = &hostNetworkApplier{}
	_ ServiceCIDRObserver = &hostNetworkApplier{}
)

// withHostNetwork wraps next for scope node.
func withHostNetwork(next Applier) *hostNetworkApplier {
	return &hostNetworkApplier{
		next:    next,
		newHost: hostnet.New,
		hosts:   map[v1.IPFamily]*hostnet.Host{},
		cidrs:   map[v1.IPFamily][]netip.Prefix{},
	}
}

// SetServiceCIDRs implements ServiceCIDRObserver: the ranges are made local
// as a whole from the next Apply on (until then each ClusterIP gets a route
// of its own).
func (a *hostNetworkApplier) SetServiceCIDRs(family v1.IPFamily, cidrs []netip.Prefix) {
	a.mu.Lock()
	a.cidrs[family] = slices.Clone(cidrs)
	a.mu.Unlock()
	if o, ok := a.next.(ServiceCIDRObserver); ok {
		o.SetServiceCIDRs(family, cidrs)
	}
}

// host returns the family's Host and its ServiceCIDRs, creating the Host on
// first use (so a single-stack node never touches the other family).
func (a *hostNetworkApplier) host(family v1.IPFamily) (*hostnet.Host, []netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.hosts[family]
	if h == nil {
		var err error
		if h, err = a.newHost(family); err != nil {
			return nil, nil, fmt.Errorf("host network for %s: %w", family, err)
		}
		a.hosts[family] = h
	}
	return h, slices.Clone(a.cidrs[family]), nil
}

// Apply implements Applier. Each family's proxier calls it from its own
// sync loop, and each family has its own Host, so the Hosts need no lock.
func (a *hostNetworkApplier) Apply(ctx context.Context, family v1.IPFamily, desired *haproxycfg.Config) error {
	// A proxier shutting down must not put back routes or a guard that a
	// cleanup is removing.
	if err := ctx.Err(); err != nil {
		return err
	}
	h, cidrs, err := a.host(family)
	if err != nil {
		return err
	}
	want := hostnet.FromConfig(cidrs, desired)
	if err := h.BeforeReload(ctx, want); err != nil {
		return fmt.Errorf("making Service IPs local and guarded: %w", err)
	}
	if err := a.next.Apply(ctx, family, desired); err != nil {
		// The routes and guard of both models stay until a later Apply
		// succeeds: HAProxy still serves the old one.
		return err
	}
	if err := h.AfterReload(ctx, want); err != nil {
		return fmt.Errorf("removing unused Service IPs: %w", err)
	}
	return nil
}
