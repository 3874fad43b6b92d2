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
	"kube-haproxy.io/kube-haproxy/proxier/serviceguard"
)

// hostNetworkApplier prepares the host (a node, or a load balancer in
// scopes cluster and external) around each Apply
// (package hostnet): before HAProxy is given a model, every Service
// address of it is made local, guarded, and dispatched to HAProxy's
// listener by nftables; after HAProxy took it, what only the previous
// model needed is removed. See README.md, "Local Service IPs and the
// guard".
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

// withHostNetwork wraps next with the host networking.
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
	// A proxier shutting down must not put back routes or rules that a
	// cleanup is removing.
	if err := ctx.Err(); err != nil {
		return err
	}
	h, cidrs, err := a.host(family)
	if err != nil {
		return err
	}
	want := hostDesired(cidrs, desired)
	if err := h.Prepare(ctx, want); err != nil {
		return fmt.Errorf("making Service IPs local, guarded and dispatched: %w", err)
	}
	if err := a.next.Apply(ctx, family, desired); err != nil {
		// The routes and rules of both models stay until a later Apply
		// succeeds: HAProxy still serves the old one.
		return err
	}
	if err := h.Finish(ctx, want); err != nil {
		return fmt.Errorf("removing unused Service IPs: %w", err)
	}
	return nil
}

// hostDesired is what the host needs for the family's model: each
// Service address and port guarded and dispatched to HAProxy's listener,
// the NodePorts on the dispatcher's NodePort addresses, and the
// loadBalancerSourceRanges.
func hostDesired(cidrs []netip.Prefix, c *haproxycfg.Config) hostnet.Desired {
	d := hostnet.Desired{ServiceCIDRs: cidrs}
	for _, disp := range c.Dispatchers {
		d.Dispatch = disp.Listen
		if d.Dispatch.Addr().IsUnspecified() {
			// TPROXY needs an address to look the listener up by.
			d.Dispatch = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), d.Dispatch.Port())
		}
		d.NodePortAddresses = slices.Clone(disp.NodePortAddresses)
		d.KeepClientSource = disp.KeepClientSource
		for _, sp := range disp.ServicePorts {
			for _, l := range sp.Listeners {
				if l.Kind == haproxycfg.NodePort {
					d.NodePorts = append(d.NodePorts, l.Port)
					continue
				}
				d.Served = append(d.Served, serviceguard.Binding{IP: l.Addr, Protocol: v1.ProtocolTCP, Port: l.Port})
				if l.Kind == haproxycfg.LoadBalancer && len(sp.SourceRanges) > 0 {
					d.Firewall = append(d.Firewall, serviceguard.FirewallEntry{IP: l.Addr, Port: l.Port, Allowed: sp.SourceRanges})
				}
			}
		}
	}
	return d
}
