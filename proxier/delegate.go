package proxier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/proxy"
	"k8s.io/kubernetes/pkg/proxy/nftables"
	proxyutil "k8s.io/kubernetes/pkg/proxy/util"
)

// DefaultMasqueradeBit is kube-proxy's default --masquerade-bit, used by the
// nftables proxier that serves the delegated UDP and SCTP ports.
const DefaultMasqueradeBit = 14

// nonTCPDelegate hands the UDP and SCTP service ports, which HAProxy cannot
// proxy, to another proxy.Provider (upstream's nftables proxier of the
// same family). It shows that provider a filtered view: each Service
// keeps only its non-TCP ports, a Service with none does not exist, and
// only the EndpointSlices with a non-TCP port pass, without their
// last-change-trigger-time annotation.
//
// That annotation is what upstream proxiers turn into the
// kubeproxy_network_programming_duration_seconds histogram after a sync.
// Both proxiers see every slice, so with it each EndpointSlice change
// would be observed twice, once per data plane. Without it the delegate
// observes nothing, and the metric measures the HAProxy side only (the
// time until the nftables sync of the same change is not in it).
//
// The ServiceCIDRs are deliberately not passed on: upstream drops traffic
// to every ServiceCIDR address that is not a ClusterIP of its view, and
// that view lacks every TCP-only Service. The guard (package serviceguard)
// already turns away what nothing serves.
type nonTCPDelegate struct {
	provider proxy.Provider
	// noKernelSCTP is why this host's kernel cannot open SCTP sockets, nil
	// when it can. Rules for SCTP ports are programmed either way
	// (conntrack and NAT handle SCTP without the SCTP module), but no pod
	// on this node can serve them: only endpoints on other nodes answer.
	noKernelSCTP error
}

// probeKernelSCTP reports why the kernel cannot open SCTP sockets, or nil
// when it can. A variable so tests can stand in for the kernel.
var probeKernelSCTP = func() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err == nil {
		_ = unix.Close(fd)
		return nil
	}
	// Only "no such protocol" means no SCTP; running out of file
	// descriptors or a seccomp denial says nothing about the kernel.
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT) {
		return fmt.Errorf("opening an SCTP socket: %w", err)
	}
	return nil
}

// nonTCPOnly returns the Service as the delegate sees it: the same object
// with only its UDP and SCTP ports and without a healthCheckNodePort (the
// HAProxy proxier serves it for the whole Service; two health servers
// would fight over the port). It returns nil for nil or a Service without
// such ports. svc is not modified: it belongs to the informer cache.
func nonTCPOnly(svc *v1.Service) *v1.Service {
	if svc == nil {
		return nil
	}
	var ports []v1.ServicePort
	for _, p := range svc.Spec.Ports {
		if p.Protocol != v1.ProtocolTCP && p.Protocol != "" {
			ports = append(ports, p)
		}
	}
	if len(ports) == 0 {
		return nil
	}
	// A shallow copy suffices: the change trackers only read Services.
	out := *svc
	out.Spec.Ports = ports
	out.Spec.HealthCheckNodePort = 0
	return &out
}

func (d *nonTCPDelegate) OnServiceUpdate(oldService, service *v1.Service) {
	oldView, newView := nonTCPOnly(oldService), nonTCPOnly(service)
	switch {
	case oldView == nil && newView == nil:
	case oldView == nil:
		d.provider.OnServiceAdd(newView)
	case newView == nil:
		d.provider.OnServiceDelete(oldView)
	default:
		d.provider.OnServiceUpdate(oldView, newView)
	}
}

func (d *nonTCPDelegate) OnServiceSynced() { d.provider.OnServiceSynced() }

// withoutTriggerTime returns s without the last-change-trigger-time
// annotation (see nonTCPDelegate): s itself when it has none, otherwise a
// copy, as s belongs to the informer cache.
func withoutTriggerTime(s *discovery.EndpointSlice) *discovery.EndpointSlice {
	if s == nil {
		return nil
	}
	if _, ok := s.Annotations[v1.EndpointsLastChangeTriggerTime]; !ok {
		return s
	}
	// A shallow copy with its own annotation map suffices: the change
	// tracker only reads slices.
	out := *s
	out.Annotations = maps.Clone(s.Annotations)
	delete(out.Annotations, v1.EndpointsLastChangeTriggerTime)
	return &out
}

// hasNonTCPPort reports whether the slice lists a UDP or SCTP port. The
// EndpointSlice controller gives a slice the ports of its Service, so a
// slice without one belongs to a Service (or a part of one) the delegate
// does not serve: handing it over would only make the delegate count and
// sync endpoints it never uses, which at 10,000 Services cost a full
// nftables sync for every TCP endpoint change.
func hasNonTCPPort(s *discovery.EndpointSlice) bool {
	if s == nil {
		return false
	}
	for _, p := range s.Ports {
		if p.Protocol != nil && *p.Protocol != v1.ProtocolTCP {
			return true
		}
	}
	return false
}

func (d *nonTCPDelegate) OnEndpointSliceAdd(s *discovery.EndpointSlice) {
	if hasNonTCPPort(s) {
		d.provider.OnEndpointSliceAdd(withoutTriggerTime(s))
	}
}

// OnEndpointSliceUpdate passes on the change as the delegate sees it: a
// slice that gains its first non-TCP port is new to it, one that loses
// its last is gone.
func (d *nonTCPDelegate) OnEndpointSliceUpdate(oldSlice, s *discovery.EndpointSlice) {
	oldSeen, newSeen := hasNonTCPPort(oldSlice), hasNonTCPPort(s)
	switch {
	case oldSeen && newSeen:
		d.provider.OnEndpointSliceUpdate(withoutTriggerTime(oldSlice), withoutTriggerTime(s))
	case newSeen:
		d.provider.OnEndpointSliceAdd(withoutTriggerTime(s))
	case oldSeen:
		d.provider.OnEndpointSliceDelete(withoutTriggerTime(oldSlice))
	}
}

func (d *nonTCPDelegate) OnEndpointSliceDelete(s *discovery.EndpointSlice) {
	if hasNonTCPPort(s) {
		d.provider.OnEndpointSliceDelete(withoutTriggerTime(s))
	}
}

func (d *nonTCPDelegate) OnEndpointSlicesSynced() { d.provider.OnEndpointSlicesSynced() }

func (d *nonTCPDelegate) OnTopologyChange(labels map[string]string) {
	d.provider.OnTopologyChange(labels)
}

// SyncLoop runs the delegate's own sync runner; it does not return.
func (d *nonTCPDelegate) SyncLoop() { d.provider.SyncLoop() }

// newNFTablesDelegate builds upstream's nftables proxier of one family for
// the delegated ports. It gets no healthz server: kube-proxy's health
// reflects the HAProxy proxier, which serves the healthCheckNodePorts.
func newNFTablesDelegate(ctx context.Context, family v1.IPFamily, cfg Config) (*nonTCPDelegate, error) {
	masqueradeBit := DefaultMasqueradeBit
	if cfg.MasqueradeBit != nil {
		masqueradeBit = int(*cfg.MasqueradeBit)
	}
	// On a central load balancer (scope cluster) the client's replies must
	// come back through it to be translated back, so every delegated
	// connection is masqueraded: pods answer the load balancer, not the
	// client's node.
	masqueradeAll := cfg.MasqueradeAll || cfg.Scope == ScopeCluster
	p, err := nftables.NewProxier(ctx, family, cfg.SyncPeriod, cfg.MinSyncPeriod,
		masqueradeAll, masqueradeBit, localDetector(family, cfg.ClusterCIDRs),
		cfg.NodeName, cfg.NodeIPs[family], cfg.Recorder, nil, cfg.NodePortAddresses, false)
	if err != nil {
		return nil, fmt.Errorf("starting the nftables proxier for UDP and SCTP service ports (%s): %w", family, err)
	}
	return newNonTCPDelegate(ctx, family, p), nil
}

// newNonTCPDelegate wraps provider, probing once whether the kernel has
// SCTP.
func newNonTCPDelegate(ctx context.Context, family v1.IPFamily, provider proxy.Provider) *nonTCPDelegate {
	d := &nonTCPDelegate{provider: provider, noKernelSCTP: probeKernelSCTP()}
	if d.noKernelSCTP != nil {
		klog.FromContext(ctx).Info("This node's kernel has no SCTP: SCTP service ports reach only endpoints on other nodes",
			"ipFamily", family, "err", d.noKernelSCTP)
	}
	return d
}

// localDetector recognises pod traffic by the family's cluster CIDR, as
// kube-proxy's default (--detect-local-mode=ClusterCIDR) does; without one,
// nothing is recognised and ClusterIP traffic is not masqueraded.
func localDetector(family v1.IPFamily, clusterCIDRs []string) proxyutil.LocalTrafficDetector {
	for _, c := range clusterCIDRs {
		prefix, err := netip.ParsePrefix(c)
		if err == nil && prefix.Addr().Is4() == (family == v1.IPv4Protocol) {
			return proxyutil.NewDetectLocalByCIDR(prefix.Masked().String())
		}
	}
	return proxyutil.NewNoOpLocalDetector()
}

// cleanupNFTables removes upstream's nftables table of both families.
func cleanupNFTables(ctx context.Context) bool { return nftables.CleanupLeftovers(ctx) }
