package proxier

import (
	"context"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/proxy"
	"k8s.io/kubernetes/pkg/proxy/metaproxier"

	"kube-haproxy.io/kube-haproxy/proxier/hostnet"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
)

// errNoApplier is returned when a Proxier is built without an Applier
// (the piece that makes HAProxy serve a model), rather than run one that
// changes nothing.
var errNoApplier = errors.New("haproxy proxier: no HAProxy applier")

// prepare defaults and validates cfg and builds the shared Applier. It
// returns a nil Applier and no error for InitOnly: nothing is started.
func prepare(ctx context.Context, cfg *Config, families ...v1.IPFamily) (*appliedLog, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.InitOnly {
		return nil, nil
	}
	applier, err := newHAProxyApplier(ctx, *cfg, families)
	if err != nil {
		return nil, fmt.Errorf("haproxy proxier: starting the HAProxy applier: %w", err)
	}
	// Service IPs are local on this host and nftables dispatches them to
	// HAProxy, on a node as on a load balancer that Service traffic is
	// routed to: keep routes and rules in step with every Apply. The
	// appliedLog remembers what was applied, for explain.
	var reloads func() int
	if r, ok := applier.(interface{ Reloads() int }); ok {
		reloads = r.Reloads
	}
	return newAppliedLog(withHostNetwork(applier), reloads), nil
}

// NewDualStackProxier returns a Provider serving both IP families through one
// HAProxy, via upstream's metaproxier.
func NewDualStackProxier(ctx context.Context, cfg Config) (proxy.Provider, error) {
	applier, err := prepare(ctx, &cfg, v1.IPv4Protocol, v1.IPv6Protocol)
	if err != nil {
		return nil, err
	}
	if cfg.InitOnly {
		klog.FromContext(ctx).Info("System initialized and --init-only specified")
		return nil, nil
	}
	ipv4, err := newFamilyProxier(ctx, v1.IPv4Protocol, cfg, applier)
	if err != nil {
		return nil, fmt.Errorf("unable to create ipv4 proxier: %w", err)
	}
	ipv6, err := newFamilyProxier(ctx, v1.IPv6Protocol, cfg, applier)
	if err != nil {
		return nil, fmt.Errorf("unable to create ipv6 proxier: %w", err)
	}
	e := &explainer{proxiers: []*Proxier{ipv4, ipv6}, applied: applier, api: runtimeapi.New(cfg.RuntimeSocket)}
	return newProvider(metaproxier.NewMetaProxier(ipv4, ipv6), e), nil
}

// NewProxier returns a single-family Provider.
func NewProxier(ctx context.Context, ipFamily v1.IPFamily, cfg Config) (proxy.Provider, error) {
	applier, err := prepare(ctx, &cfg, ipFamily)
	if err != nil {
		return nil, err
	}
	if cfg.InitOnly {
		klog.FromContext(ctx).Info("System initialized and --init-only specified")
		return nil, nil
	}
	p, err := newFamilyProxier(ctx, ipFamily, cfg, applier)
	if err != nil {
		// Not "return newProxier(...)": a nil *Proxier would be a non-nil Provider.
		return nil, err
	}
	e := &explainer{proxiers: []*Proxier{p}, applied: applier, api: runtimeapi.New(cfg.RuntimeSocket)}
	return newProvider(p, e), nil
}

// newFamilyProxier builds the Proxier of one family with its real
// collaborators: the shared Applier and, when UDP and SCTP ports are
// delegated, upstream's nftables proxier of that family.
func newFamilyProxier(ctx context.Context, family v1.IPFamily, cfg Config, applier Applier) (*Proxier, error) {
	d := deps{applier: applier, listeningPorts: hostnet.ListeningTCPPorts, checksAPI: runtimeapi.New(cfg.RuntimeSocket),
		routedEndpoints: hostnet.RoutedEndpoints}
	if cfg.delegating() {
		delegate, err := newNFTablesDelegate(ctx, family, cfg)
		if err != nil {
			return nil, err
		}
		d.delegate = delegate
	}
	p, err := newProxier(ctx, family, cfg, d)
	if err == nil {
		// At 0 from the start (once registered), like apply's counters: a
		// dashboard sees the first failure (docs/observability.md).
		syncFailuresTotal.WithLabelValues(string(family))
	}
	return p, err
}

// CleanupLeftovers removes what the haproxy mode created on this host (HAProxy
// process, state dir, routes, its nftables table, and upstream's nftables
// table of the delegated UDP and SCTP ports). It reports whether an error
// was encountered, as upstream's CleanupLeftovers functions do.
func CleanupLeftovers(ctx context.Context, cfg Config) (encounteredError bool) {
	if err := hostnet.Cleanup(ctx); err != nil {
		klog.FromContext(ctx).Error(err, "Failed to remove the Service IP routes and guard")
		encounteredError = true
	}
	// Whatever DelegateNonTCP says now, an earlier run may have delegated.
	if cleanupNFTables(ctx) {
		encounteredError = true
	}
	cfg.SetDefaults()
	if err := cleanupHAProxy(ctx, cfg); err != nil {
		klog.FromContext(ctx).Error(err, "Failed to stop HAProxy and remove its state")
		encounteredError = true
	}
	return encounteredError
}
