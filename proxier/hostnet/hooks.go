package hostnet

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"

	v1 "k8s.io/api/core/v1"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// Hooks run a Host per IP family around each reload of one HAProxy that
// serves the merged configuration of several families: BeforeReload with
// the configuration about to be loaded, AfterReload with the one loaded.
// Each family's Host takes the binds of its own family from it.
type Hooks struct {
	families []v1.IPFamily
	newHost  func(v1.IPFamily) (*Host, error)

	mu    sync.Mutex
	hosts map[v1.IPFamily]*Host
	cidrs map[v1.IPFamily][]netip.Prefix
	// loaded is the configuration HAProxy runs, once a reload succeeded.
	loaded *haproxycfg.Config
}

// NewHooks returns Hooks for families on the calling process's network
// namespace. Hosts are created on first use.
func NewHooks(families ...v1.IPFamily) *Hooks {
	return NewHooksWith(New, families...)
}

// NewHooksWith is NewHooks with another way to make a family's Host
// (fakes, in unit tests).
func NewHooksWith(newHost func(v1.IPFamily) (*Host, error), families ...v1.IPFamily) *Hooks {
	return &Hooks{
		families: slices.Clone(families),
		newHost:  newHost,
		hosts:    map[v1.IPFamily]*Host{},
		cidrs:    map[v1.IPFamily][]netip.Prefix{},
	}
}

func (h *Hooks) hostLocked(family v1.IPFamily) (*Host, error) {
	if host := h.hosts[family]; host != nil {
		return host, nil
	}
	host, err := h.newHost(family)
	if err != nil {
		return nil, err
	}
	h.hosts[family] = host
	return host, nil
}

// each runs fn for every family's Host, carrying on after an error.
func (h *Hooks) eachLocked(fn func(family v1.IPFamily, host *Host) error) error {
	var errs []error
	for _, family := range h.families {
		host, err := h.hostLocked(family)
		if err == nil {
			err = fn(family, host)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// BeforeReload makes every Service IP that next binds local and guarded.
// An error must stop the reload: HAProxy could not bind, or would bind
// unguarded.
func (h *Hooks) BeforeReload(ctx context.Context, next *haproxycfg.Config) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.eachLocked(func(family v1.IPFamily, host *Host) error {
		return host.BeforeReload(ctx, FromConfig(h.cidrs[family], next))
	})
}

// AfterReload removes what only the previous configuration needed.
func (h *Hooks) AfterReload(ctx context.Context, loaded *haproxycfg.Config) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.loaded = loaded
	return h.eachLocked(func(family v1.IPFamily, host *Host) error {
		return host.AfterReload(ctx, FromConfig(h.cidrs[family], loaded))
	})
}

// SetServiceCIDRs records the family's ServiceCIDRs. With a configuration
// loaded, the routes and guard follow at once (the binds did not change,
// so no reload will come to run the hooks).
func (h *Hooks) SetServiceCIDRs(ctx context.Context, family v1.IPFamily, cidrs []netip.Prefix) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cidrs[family] = slices.Clone(cidrs)
	if h.loaded == nil || !slices.Contains(h.families, family) {
		return nil
	}
	host, err := h.hostLocked(family)
	if err != nil {
		return err
	}
	return host.Sync(ctx, FromConfig(cidrs, h.loaded))
}

// Cleanup removes the routes and guards of every family.
func (h *Hooks) Cleanup(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.loaded = nil
	return h.eachLocked(func(_ v1.IPFamily, host *Host) error { return host.Cleanup(ctx) })
}
