package proxier

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/proxy"
	"k8s.io/kubernetes/pkg/proxy/healthcheck"
	"k8s.io/kubernetes/pkg/proxy/metrics"
	"k8s.io/kubernetes/pkg/proxy/runner"
	proxyutil "k8s.io/kubernetes/pkg/proxy/util"

	"kube-haproxy.io/kube-haproxy/proxier/endpointcheck"
	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/runtimeapi"
	"kube-haproxy.io/kube-haproxy/proxier/translate"
)

// Labels and fields that select the Services of scope external.
const (
	// LabelServiceProxyName is upstream's label that hands a Service to an
	// alternative proxy; stock kube-proxy ignores Services that carry it.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
)

// Applier makes HAProxy serve the desired model of one IP family.
//
// The IPv4 and IPv6 proxiers of a dual-stack node share one Applier and
// one HAProxy: the Applier keeps the latest model of each family and
// serves their merge (haproxycfg.Merge). Apply is called from each
// family's sync loop, so it must be safe for concurrent use. desired holds
// the full model of the family, including Global and Defaults; the
// Applier must not modify it. An error makes the proxier retry the sync.
type Applier interface {
	Apply(ctx context.Context, family v1.IPFamily, desired *haproxycfg.Config) error
}

// ServiceCIDRObserver is implemented by an Applier that needs the
// cluster's Service CIDRs of a family (to make the whole ranges local on
// the node, instead of one route per Service IP). The proxier calls it
// whenever the ServiceCIDRs change, before the next sync.
type ServiceCIDRObserver interface {
	SetServiceCIDRs(family v1.IPFamily, cidrs []netip.Prefix)
}

// Proxier is the HAProxy proxy.Provider of one IP family. It keeps
// upstream's view of Services and endpoints (change trackers), translates
// it into a haproxycfg model at every sync, and hands the model to its
// Applier.
type Proxier struct {
	ipFamily v1.IPFamily
	cfg      Config
	ctx      context.Context

	// Upstream change trackers: On* handlers record changes, each sync
	// applies them to svcPortMap and endpointsMap.
	endpointsChanges *proxy.EndpointsChangeTracker
	serviceChanges   *proxy.ServiceChangeTracker

	// serviceCIDRs is the last set given to OnServiceCIDRsChanged; only that
	// handler touches it.
	serviceCIDRs []netip.Prefix

	mu           sync.Mutex // protects the following fields
	svcPortMap   proxy.ServicePortMap
	endpointsMap proxy.EndpointsMap
	// healthCheckNodePorts are svcPortMap's, kept from the last sync in
	// which a Service changed (nil before the first): listing them walks
	// every Service port.
	healthCheckNodePorts map[types.NamespacedName]uint16
	translator           translate.Translator
	topologyLabels       map[string]string
	endpointSlicesSynced bool
	servicesSynced       bool
	// unsupportedLogged holds the non-TCP service ports already logged
	// (and, without delegation, recorded as an event), so each is
	// reported once, not at every sync.
	unsupportedLogged map[proxy.ServicePortName]bool
	// takenReported holds the service ports whose NodePort is reported as
	// taken, so the event is recorded once while it lasts.
	takenReported map[proxy.ServicePortName]bool
	// annotationReported holds the service ports whose invalid
	// annotations are reported, by reason, with the detail reported.
	annotationReported map[invalidAnnotation]string
	// checker runs the active checks of endpoints (nil in tests that do
	// not need it); checkedCopies are the service ports without the
	// endpoints it finds down.
	checker       *endpointcheck.Checker
	checkedCopies map[string]checkedCopy
	// nodePortsNowhere: no node address matched nodePortAddresses at the
	// last sync, so NodePorts are served nowhere; noNodePorts then maps
	// each translated Service port with a NodePort to its copy without
	// (nil: nothing left), see withoutNodePorts.
	nodePortsNowhere bool
	noNodePorts      map[*haproxycfg.ServicePort]*haproxycfg.ServicePort

	// delegate serves the UDP and SCTP service ports (upstream's nftables
	// proxier behind a filtered view); nil when they are not served.
	delegate *nonTCPDelegate

	initialized int32
	syncRunner  *runner.BoundedFrequencyRunner // governs calls to syncProxyRules

	applier Applier
	// listeningPorts lists the node's listening TCP ports by port (nil:
	// not checked); see takenNodePorts.
	listeningPorts func(v1.IPFamily) (map[uint16][]netip.Addr, error)
	// routedEndpoints, when set, tells the endpoints on this node that
	// answer through the node's routing (hostnet.RoutedEndpoints).
	routedEndpoints     func(v1.IPFamily) (func(netip.Addr) bool, error)
	nodeName            string
	nodeIP              net.IP
	nodePortAddresses   *proxyutil.NodePortAddresses
	networkInterfacer   proxyutil.NetworkInterfacer
	serviceHealthServer healthcheck.ServiceHealthServer
	healthzServer       *healthcheck.ProxyHealthServer
	global              haproxycfg.Global
	defaults            haproxycfg.Defaults

	logger klog.Logger
}

var _ proxy.Provider = &Proxier{}

// deps are the collaborators of a Proxier that tests replace.
type deps struct {
	applier             Applier
	serviceHealthServer healthcheck.ServiceHealthServer
	networkInterfacer   proxyutil.NetworkInterfacer
	// delegate, when set, serves the UDP and SCTP service ports.
	delegate *nonTCPDelegate
	// listeningPorts, when set, lists the node's listening TCP ports.
	listeningPorts func(v1.IPFamily) (map[uint16][]netip.Addr, error)
	// checksAPI, when set, is the runtime API through which the proxier
	// runs active checks of endpoints.
	checksAPI runtimeapi.Interface
	// routedEndpoints, when set, tells the endpoints on this node that
	// answer through the node's routing.
	routedEndpoints func(v1.IPFamily) (func(netip.Addr) bool, error)
}

// newProxier builds the Proxier of one family. cfg must be defaulted and
// valid.
func newProxier(ctx context.Context, ipFamily v1.IPFamily, cfg Config, d deps) (*Proxier, error) {
	if d.applier == nil {
		return nil, errNoApplier
	}
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "ipFamily", ipFamily)
	registerMetrics()

	nodePortAddresses := proxyutil.NewNodePortAddresses(ipFamily, cfg.NodePortAddresses)
	if d.serviceHealthServer == nil {
		d.serviceHealthServer = healthcheck.NewServiceHealthServer(cfg.NodeName, cfg.Recorder, nodePortAddresses, cfg.HealthzServer, ipFamily)
	}
	if d.networkInterfacer == nil {
		d.networkInterfacer = proxyutil.RealNetwork{}
	}
	global, defaults := cfg.haproxySections()

	p := &Proxier{
		ipFamily:            ipFamily,
		cfg:                 cfg,
		ctx:                 ctx,
		svcPortMap:          make(proxy.ServicePortMap),
		serviceChanges:      proxy.NewServiceChangeTracker(ipFamily, makeServiceInfo(cfg), nil),
		endpointsMap:        make(proxy.EndpointsMap),
		endpointsChanges:    proxy.NewEndpointsChangeTracker(ipFamily, cfg.NodeName, nil, nil),
		unsupportedLogged:   make(map[proxy.ServicePortName]bool),
		takenReported:       make(map[proxy.ServicePortName]bool),
		annotationReported:  make(map[invalidAnnotation]string),
		delegate:            d.delegate,
		applier:             d.applier,
		listeningPorts:      d.listeningPorts,
		routedEndpoints:     d.routedEndpoints,
		nodeName:            cfg.NodeName,
		nodeIP:              cfg.NodeIPs[ipFamily],
		nodePortAddresses:   nodePortAddresses,
		networkInterfacer:   d.networkInterfacer,
		serviceHealthServer: d.serviceHealthServer,
		healthzServer:       cfg.HealthzServer,
		global:              global,
		defaults:            defaults,
		logger:              logger,
	}
	logger.V(2).Info("HAProxy proxier sync params", "minSyncPeriod", cfg.MinSyncPeriod, "syncPeriod", cfg.SyncPeriod, "maxSyncPeriod", proxyutil.FullSyncPeriod)
	p.syncRunner = runner.NewBoundedFrequencyRunner("sync-runner", p.syncProxyRules, cfg.MinSyncPeriod, cfg.SyncPeriod, proxyutil.FullSyncPeriod)
	if d.checksAPI != nil {
		checks := (&haproxycfg.Dispatcher{IPv6: ipFamily == v1.IPv6Protocol}).ChecksName()
		p.checker = endpointcheck.New(d.checksAPI, checks, p.Sync, logger.WithName("checks"))
	}
	return p, nil
}

// Sync is called to synchronize the proxier state to HAProxy as soon as
// possible (within the min sync period).
func (p *Proxier) Sync() {
	if p.healthzServer != nil {
		p.healthzServer.QueuedUpdate(p.ipFamily)
	}
	metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(p.ipFamily)).SetToCurrentTime()
	p.syncRunner.Run()
}

// SyncLoop runs periodic work. It does not return.
func (p *Proxier) SyncLoop() {
	// Update healthz timestamp at beginning in case Sync() never succeeds.
	if p.healthzServer != nil {
		p.healthzServer.Updated(p.ipFamily)
	}
	metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(p.ipFamily)).SetToCurrentTime()
	if p.delegate != nil {
		// The delegate has a sync runner of its own; like ours it never
		// stops.
		go p.delegate.SyncLoop()
	}
	if p.checker != nil {
		go p.checker.Run(p.ctx)
	}
	p.syncRunner.Loop(wait.NeverStop)
}

func (p *Proxier) setInitialized(value bool) {
	var initialized int32
	if value {
		initialized = 1
	}
	atomic.StoreInt32(&p.initialized, initialized)
}

func (p *Proxier) isInitialized() bool {
	return atomic.LoadInt32(&p.initialized) > 0
}

// OnServiceAdd is called whenever creation of new service object is observed.
func (p *Proxier) OnServiceAdd(service *v1.Service) {
	p.OnServiceUpdate(nil, service)
}

// OnServiceUpdate is called whenever modification of an existing service
// object is observed. A Service outside the proxier's scope counts as
// absent, so one that leaves the scope is removed.
func (p *Proxier) OnServiceUpdate(oldService, service *v1.Service) {
	if !p.inScope(oldService) {
		oldService = nil
	}
	if !p.inScope(service) {
		service = nil
	}
	if p.delegate != nil {
		p.delegate.OnServiceUpdate(oldService, service)
	}
	if p.serviceChanges.Update(oldService, service) && p.isInitialized() {
		p.Sync()
	}
}

// OnServiceDelete is called whenever deletion of an existing service object is observed.
func (p *Proxier) OnServiceDelete(service *v1.Service) {
	p.OnServiceUpdate(service, nil)
}

// OnServiceSynced is called once all the initial event handlers were
// called and the state is fully propagated to local cache.
func (p *Proxier) OnServiceSynced() {
	if p.delegate != nil {
		p.delegate.OnServiceSynced()
	}
	p.mu.Lock()
	p.servicesSynced = true
	p.setInitialized(p.endpointSlicesSynced)
	p.mu.Unlock()
	// Sync unconditionally - this is called once per lifetime.
	_ = p.syncProxyRules()
}

// OnEndpointSliceAdd is called whenever creation of a new endpoint slice object is observed.
func (p *Proxier) OnEndpointSliceAdd(endpointSlice *discovery.EndpointSlice) {
	if p.delegate != nil {
		p.delegate.OnEndpointSliceAdd(endpointSlice)
	}
	if p.endpointsChanges.EndpointSliceUpdate(endpointSlice, false) && p.isInitialized() {
		p.Sync()
	}
}

// OnEndpointSliceUpdate is called whenever modification of an existing endpoint slice object is observed.
func (p *Proxier) OnEndpointSliceUpdate(oldSlice, endpointSlice *discovery.EndpointSlice) {
	if p.delegate != nil {
		p.delegate.OnEndpointSliceUpdate(oldSlice, endpointSlice)
	}
	if p.endpointsChanges.EndpointSliceUpdate(endpointSlice, false) && p.isInitialized() {
		p.Sync()
	}
}

// OnEndpointSliceDelete is called whenever deletion of an existing endpoint slice object is observed.
func (p *Proxier) OnEndpointSliceDelete(endpointSlice *discovery.EndpointSlice) {
	if p.delegate != nil {
		p.delegate.OnEndpointSliceDelete(endpointSlice)
	}
	if p.endpointsChanges.EndpointSliceUpdate(endpointSlice, true) && p.isInitialized() {
		p.Sync()
	}
}

// OnEndpointSlicesSynced is called once all the initial event handlers were
// called and the state is fully propagated to local cache.
func (p *Proxier) OnEndpointSlicesSynced() {
	if p.delegate != nil {
		p.delegate.OnEndpointSlicesSynced()
	}
	p.mu.Lock()
	p.endpointSlicesSynced = true
	p.setInitialized(p.servicesSynced)
	p.mu.Unlock()
	// Sync unconditionally - this is called once per lifetime.
	_ = p.syncProxyRules()
}

// OnTopologyChange is called whenever the node's topology labels change.
func (p *Proxier) OnTopologyChange(topologyLabels map[string]string) {
	if p.delegate != nil {
		p.delegate.OnTopologyChange(topologyLabels)
	}
	p.mu.Lock()
	p.topologyLabels = topologyLabels
	p.mu.Unlock()
	p.logger.V(4).Info("Updated proxier node topology labels", "labels", topologyLabels)
	p.Sync()
}

// OnServiceCIDRsChanged is called whenever the Service CIDRs change. The
// model only holds Service addresses, so the ranges matter only to an
// Applier that makes them local (ServiceCIDRObserver); those of this
// family are passed on. They are not passed to the delegate: see
// nonTCPDelegate.
func (p *Proxier) OnServiceCIDRsChanged(cidrs []string) {
	var mine []netip.Prefix
	for _, c := range cidrs {
		prefix, err := netip.ParsePrefix(c)
		if err != nil {
			p.logger.Error(err, "Ignoring invalid Service CIDR", "cidr", c)
			continue
		}
		if prefix.Addr().Is4() == (p.ipFamily == v1.IPv4Protocol) {
			mine = append(mine, prefix.Masked())
		}
	}
	if p.cfg.Scope == ScopeExternal {
		// Outside the cluster only the Services in scope are served here:
		// the rest of the ranges belongs to the nodes' kube-proxy, so the
		// ranges are not made local as a whole.
		mine = nil
	}
	if o, ok := p.applier.(ServiceCIDRObserver); ok {
		o.SetServiceCIDRs(p.ipFamily, mine)
	}
	// A new or removed range changes the host's local routes and the guard,
	// which are applied with the next sync: ask for it now rather than at
	// the next periodic sync.
	if !slices.Equal(mine, p.serviceCIDRs) {
		p.serviceCIDRs = mine
		p.Sync()
	}
}

// inScope reports whether this proxier serves the Service (nil is out of
// scope). Scope node and cluster serve every Service they are given
// (kube-proxy's informer already leaves out Services labelled for another
// proxy). Scope external serves only Services labelled for it, or of
// type LoadBalancer with its loadBalancerClass.
func (p *Proxier) inScope(svc *v1.Service) bool {
	if svc == nil {
		return false
	}
	if p.cfg.Scope != ScopeExternal {
		return true
	}
	if svc.Labels[LabelServiceProxyName] == p.cfg.ServiceProxyName {
		return true
	}
	return svc.Spec.Type == v1.ServiceTypeLoadBalancer &&
		svc.Spec.LoadBalancerClass != nil && *svc.Spec.LoadBalancerClass == p.cfg.LoadBalancerClass
}

// syncProxyRules is where all of the HAProxy configuration happens: it
// applies the pending changes, translates every service port of this
// family into the model and hands it to the Applier.
func (p *Proxier) syncProxyRules() (retryError error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	// Don't sync until we've received services and endpoints: an empty
	// model would tear down every listener of a running HAProxy.
	if !p.isInitialized() {
		p.logger.V(2).Info("Not syncing HAProxy until Services and Endpoints have been received from master")
		return nil
	}

	start := time.Now()
	defer func() {
		metrics.SyncProxyRulesLatency.WithLabelValues(string(p.ipFamily)).Observe(metrics.SinceInSeconds(start))
		p.logger.V(2).Info("SyncProxyRules complete", "elapsed", time.Since(start))
	}()

	// Phase 1: apply the recorded changes to the service and endpoint maps.
	serviceUpdateResult := p.svcPortMap.Update(p.serviceChanges)
	endpointUpdateResult := p.endpointsMap.Update(p.endpointsChanges)
	p.logger.V(2).Info("Syncing HAProxy model", "services", len(p.svcPortMap), "updatedServices", serviceUpdateResult.UpdatedServices.Len())

	// Phase 2: the node's view: where NodePorts are served, which ports
	// other processes of the node hold, who counts as cluster traffic.
	opts := translate.Options{
		Family:         p.ipFamily,
		NodeName:       p.nodeName,
		TopologyLabels: p.topologyLabels,
		OutsideNodes:   p.cfg.Scope != ScopeNode,
	}
	if p.keepClientSource() && p.routedEndpoints != nil {
		// The routes are listed at the first endpoint on this node that a
		// changed service port has, not at every sync.
		var routed func(netip.Addr) bool
		opts.RoutedHere = func(a netip.Addr) bool {
			if routed == nil {
				var err error
				if routed, err = p.routedEndpoints(p.ipFamily); err != nil {
					p.logger.Error(err, "Listing the node's routes failed; pods keep HAProxy's address towards every endpoint this sync")
					routed = func(netip.Addr) bool { return false }
				}
			}
			return routed(a)
		}
	}
	if a, ok := netip.AddrFromSlice(p.nodeIP); ok {
		opts.NodeIP = a.Unmap()
	}
	var nodePortAddresses []netip.Addr
	nodePortsNowhere := false
	if !p.nodePortAddresses.MatchAll() {
		nodeIPs, err := p.nodePortAddresses.GetNodeIPs(p.networkInterfacer)
		if err != nil {
			p.logger.Error(err, "Failed to get node IP addresses; NodePorts may not be served everywhere")
		}
		for _, ip := range nodeIPs {
			if a, ok := netip.AddrFromSlice(ip); ok {
				nodePortAddresses = append(nodePortAddresses, a.Unmap())
			}
		}
		// No node address matches nodePortAddresses: NodePorts are served
		// nowhere, as upstream does. (An empty NodePortAddresses in the
		// model would mean every address.)
		nodePortsNowhere = len(nodePortAddresses) == 0
	}
	if nodePortsNowhere != p.nodePortsNowhere {
		p.nodePortsNowhere = nodePortsNowhere
		if nodePortsNowhere {
			p.logger.Info("No node address matches nodePortAddresses: NodePorts are not served on this node", "nodePortAddresses", p.cfg.NodePortAddresses)
		}
	}
	if !nodePortsNowhere {
		opts.TakenNodePorts = p.takenNodePorts(nodePortAddresses)
	}

	// Phase 3: translate Services and endpoints into the model.
	// Only the service ports whose Service or endpoints changed are
	// translated again; when no Service changed, those of the Services
	// whose endpoints changed are found without looking at the others.
	var res *translate.Result
	if serviceUpdateResult.UpdatedServices.Len() == 0 {
		res = p.translator.TranslateEndpointChanges(opts, p.svcPortMap, p.endpointsMap, endpointUpdateResult.UpdatedServices)
	} else {
		res = p.translator.Translate(opts, p.svcPortMap, p.endpointsMap)
	}
	p.reportSkipped(res)
	ports := res.ServicePorts
	if nodePortsNowhere {
		ports = p.withoutNodePorts(ports)
	} else {
		p.noNodePorts = nil
	}
	ports = p.withoutFailedEndpoints(ports)
	desired := &haproxycfg.Config{
		Global:   p.global,
		Defaults: p.defaults,
		Dispatchers: []*haproxycfg.Dispatcher{{
			IPv6:              p.ipFamily == v1.IPv6Protocol,
			Listen:            p.dispatchAddr(),
			MapDir:            p.cfg.StateDir,
			ClusterSources:    p.clusterSources(opts.NodeIP, nodePortAddresses, ports),
			KeepClientSource:  p.keepClientSource(),
			NodePortAddresses: nodePortAddresses,
			ServicePorts:      ports,
		}},
	}

	// Phase 4: hand the model to the Applier. On failure the runner
	// retries; HAProxy keeps serving the last good configuration.
	if err := p.applier.Apply(p.ctx, p.ipFamily, desired); err != nil {
		p.logger.Error(err, "Applying the HAProxy model failed", "retryingTime", p.cfg.SyncPeriod)
		syncFailuresTotal.WithLabelValues(string(p.ipFamily)).Inc()
		return fmt.Errorf("applying the HAProxy model: %w", err)
	}

	// Phase 5: report success: latency of the endpoint changes, gauges,
	// health servers.
	for name, lastChangeTriggerTimes := range endpointUpdateResult.LastChangeTriggerTimes {
		for _, lastChangeTriggerTime := range lastChangeTriggerTimes {
			latency := metrics.SinceInSeconds(lastChangeTriggerTime)
			metrics.NetworkProgrammingLatency.WithLabelValues(string(p.ipFamily)).Observe(latency)
			p.logger.V(4).Info("Network programming", "endpoint", klog.KRef(name.Namespace, name.Name), "elapsed", latency)
		}
	}
	metrics.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("internal", string(p.ipFamily)).Set(float64(res.NoLocalEndpointsInternal))
	metrics.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("external", string(p.ipFamily)).Set(float64(res.NoLocalEndpointsExternal))
	if p.healthzServer != nil {
		p.healthzServer.Updated(p.ipFamily)
	}
	metrics.SyncProxyRulesLastTimestamp.WithLabelValues(string(p.ipFamily)).SetToCurrentTime()

	// Update service healthchecks. The endpoints list might include services
	// that are not "OnlyLocal", but the services list will not, and the
	// serviceHealthServer will just drop those endpoints. A load balancer
	// outside the nodes serves no healthCheckNodePort: the port belongs to
	// the nodes, and it has no local endpoints to count.
	// They change only with a Service: an endpoint change does not walk
	// every Service port for them.
	if p.healthCheckNodePorts == nil || serviceUpdateResult.UpdatedServices.Len() > 0 {
		p.healthCheckNodePorts = map[types.NamespacedName]uint16{}
		if p.cfg.Scope == ScopeNode {
			p.healthCheckNodePorts = p.svcPortMap.HealthCheckNodePorts()
		}
		if err := p.serviceHealthServer.SyncServices(p.healthCheckNodePorts); err != nil {
			p.logger.Error(err, "Error syncing healthcheck services")
			// Tried again at the next sync.
			p.healthCheckNodePorts = nil
		}
	}
	healthCheckNodePorts := p.healthCheckNodePorts
	// Counting the local ready endpoints walks every endpoint of every
	// Service: at 10,000 Services it was nearly half of kube-proxy's CPU
	// during endpoint changes. The health server counts only the
	// Services with a healthCheckNodePort, so without any there is
	// nothing to count.
	localReady := map[types.NamespacedName]int{}
	if len(healthCheckNodePorts) > 0 {
		localReady = p.endpointsMap.LocalReadyEndpoints()
	}
	if err := p.serviceHealthServer.SyncEndpoints(localReady); err != nil {
		p.logger.Error(err, "Error syncing healthcheck endpoints")
	}
	return nil
}

// withoutNodePorts returns ports without their NodePort listeners (and
// without the Service ports that then have none), for a node with no
// address in nodePortAddresses. The copies are kept from sync to sync, so
// that an unchanged Service port stays the same object, which the Applier
// skips (the translator keeps unchanged Service ports the same way).
func (p *Proxier) withoutNodePorts(ports []*haproxycfg.ServicePort) []*haproxycfg.ServicePort {
	isNodePort := func(l haproxycfg.Listener) bool { return l.Kind == haproxycfg.NodePort }
	prev := p.noNodePorts
	p.noNodePorts = make(map[*haproxycfg.ServicePort]*haproxycfg.ServicePort, len(prev))
	out := make([]*haproxycfg.ServicePort, 0, len(ports))
	for _, sp := range ports {
		if !slices.ContainsFunc(sp.Listeners, isNodePort) {
			out = append(out, sp)
			continue
		}
		c, ok := prev[sp]
		if !ok {
			cp := *sp
			cp.Listeners = slices.DeleteFunc(slices.Clone(sp.Listeners), isNodePort)
			if len(cp.Listeners) > 0 {
				c = &cp
			}
		}
		p.noNodePorts[sp] = c
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// clusterSources are the clients whose connections to external Service
// addresses count as cluster traffic: the pod CIDRs of this family, the
// node's addresses and loopback, and, in scope node, the LoadBalancer and
// external IPs made local here (the node reaching such an address
// connects from it).
func (p *Proxier) clusterSources(nodeIP netip.Addr, nodeAddrs []netip.Addr, ports []*haproxycfg.ServicePort) []netip.Prefix {
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{}
	add := func(pfx netip.Prefix) {
		if pfx.IsValid() && pfx.Addr().Is4() == (p.ipFamily == v1.IPv4Protocol) && !seen[pfx] {
			seen[pfx] = true
			out = append(out, pfx)
		}
	}
	for _, prefix := range p.clusterCIDRs() {
		add(prefix)
	}
	for _, a := range append([]netip.Addr{nodeIP}, nodeAddrs...) {
		if a.IsValid() {
			add(netip.PrefixFrom(a, a.BitLen()))
		}
	}
	add(netip.MustParsePrefix("127.0.0.0/8"))
	add(netip.PrefixFrom(netip.IPv6Loopback(), 128))
	if p.cfg.Scope == ScopeNode {
		for _, sp := range ports {
			for _, l := range sp.Listeners {
				if l.Kind == haproxycfg.LoadBalancer || l.Kind == haproxycfg.ExternalIP {
					add(netip.PrefixFrom(l.Addr, l.Addr.BitLen()))
				}
			}
		}
	}
	return out
}

// keepClientSource reports whether endpoints on this node see an outside
// client's own address (haproxycfg.Dispatcher.KeepClientSource). Only in
// scope node, where the endpoints' replies pass through this host, and
// only with the cluster's pod CIDRs known: without them a pod would count
// as an outside client, and one on the endpoint's own bridge would get
// the reply straight from the endpoint.
func (p *Proxier) keepClientSource() bool {
	return p.cfg.Scope == ScopeNode && len(p.clusterCIDRs()) > 0
}

// clusterCIDRs are the valid Config.ClusterCIDRs of this proxier's family,
// masked.
func (p *Proxier) clusterCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, c := range p.cfg.ClusterCIDRs {
		if prefix, err := netip.ParsePrefix(c); err == nil && prefix.Addr().Is4() == (p.ipFamily == v1.IPv4Protocol) {
			out = append(out, prefix.Masked())
		}
	}
	return out
}

// dispatchAddr is the address and port of this family's HAProxy
// listener: [::1] for IPv6; for IPv4 the wildcard address, because IPv4
// connections that arrive through a bridge are redirected by NAT to the
// bridge's own address (serviceguard's BridgedChain), the others are
// sent there by TPROXY.
func (p *Proxier) dispatchAddr() netip.AddrPort {
	if p.ipFamily == v1.IPv6Protocol {
		return netip.AddrPortFrom(netip.IPv6Loopback(), uint16(p.cfg.DispatchPort))
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p.cfg.DispatchPort))
}

// takenNodePorts are the TCP ports another process of the node listens
// on where NodePorts would be served (on a wildcard address, or on one of
// nodePortAddresses; on any address when those are every address). Such a
// NodePort is left to that process: refused for its Service port alone,
// with an event and a metric, instead of taking the port from under it.
func (p *Proxier) takenNodePorts(nodePortAddresses []netip.Addr) map[uint16]bool {
	if p.listeningPorts == nil {
		return nil
	}
	listening, err := p.listeningPorts(p.ipFamily)
	if err != nil {
		p.logger.Error(err, "Listing the node's listening TCP ports failed; NodePorts are not checked against them")
		return nil
	}
	taken := map[uint16]bool{}
	for port, addrs := range listening {
		if int(port) == p.cfg.DispatchPort || int(port) == p.cfg.DispatchPort+1 || port == p.global.PrometheusExporter.Port() {
			continue // HAProxy's own listeners
		}
		for _, a := range addrs {
			if a.IsUnspecified() || len(nodePortAddresses) == 0 || slices.Contains(nodePortAddresses, a.Unmap()) {
				taken[port] = true
				break
			}
		}
	}
	return taken
}

// reportSkipped logs what the translation left out and sets the gauges.
// Non-TCP service ports are reported once each (they are left out at every
// sync): delegated ones with a log line, the others with a log line and a
// Warning event on the Service, since nothing serves them. The other
// reasons point at a conflict or a bad object and are logged every time.
func (p *Proxier) reportSkipped(res *translate.Result) {
	unsupported := map[v1.Protocol]int{v1.ProtocolUDP: 0, v1.ProtocolSCTP: 0}
	delegated := map[v1.Protocol]int{v1.ProtocolUDP: 0, v1.ProtocolSCTP: 0}
	seen := make(map[proxy.ServicePortName]bool)
	conflicts, taken := 0, 0
	takenNow := make(map[proxy.ServicePortName]bool)
	badAnnotations := map[translate.SkipReason]int{translate.InvalidProxyProtocol: 0, translate.InvalidEndpointCheck: 0}
	badAnnotationsNow := make(map[invalidAnnotation]bool)
	for _, s := range res.Skipped {
		switch s.Reason {
		case translate.UnsupportedProtocol:
			seen[s.Name] = true
			if p.delegate != nil {
				delegated[s.Protocol]++
			} else {
				unsupported[s.Protocol]++
			}
			if !p.unsupportedLogged[s.Name] {
				p.unsupportedLogged[s.Name] = true
				p.reportNonTCP(s)
			}
		case translate.NodePortTaken:
			taken++
			takenNow[s.Name] = true
			if !p.takenReported[s.Name] {
				p.takenReported[s.Name] = true
				p.reportNodePortTaken(s)
			}
		case translate.InvalidProxyProtocol, translate.InvalidEndpointCheck, translate.AppProtocolAsTCP:
			if s.Reason != translate.AppProtocolAsTCP {
				badAnnotations[s.Reason]++
			}
			key := invalidAnnotation{s.Name, s.Reason}
			badAnnotationsNow[key] = true
			if p.annotationReported[key] != s.Detail {
				p.annotationReported[key] = s.Detail
				p.reportInvalidAnnotation(s)
			}
		case translate.AddressConflict:
			conflicts++
			p.logger.Info("Service port listener left out", "servicePort", s.Name.String(), "reason", s.Reason, "detail", s.Detail)
		default:
			p.logger.Info("Service port left out", "servicePort", s.Name.String(), "reason", s.Reason, "detail", s.Detail)
		}
	}
	// Forget ports that are gone, so they are logged again if they return.
	for name := range p.unsupportedLogged {
		if !seen[name] {
			delete(p.unsupportedLogged, name)
		}
	}
	for name := range p.takenReported {
		if !takenNow[name] {
			delete(p.takenReported, name)
		}
	}
	for key := range p.annotationReported {
		if !badAnnotationsNow[key] {
			delete(p.annotationReported, key)
		}
	}
	for reason, n := range badAnnotations {
		invalidAnnotations.WithLabelValues(string(reason), string(p.ipFamily)).Set(float64(n))
	}
	nodePortsTaken.WithLabelValues(string(p.ipFamily)).Set(float64(taken))
	for proto, n := range unsupported {
		unsupportedServicePorts.WithLabelValues(strings.ToLower(string(proto)), string(p.ipFamily)).Set(float64(n))
	}
	for proto, n := range delegated {
		delegatedServicePorts.WithLabelValues(strings.ToLower(string(proto)), string(p.ipFamily)).Set(float64(n))
	}
	sctpHere := 0
	if p.delegate != nil && p.delegate.noKernelSCTP != nil {
		sctpHere = delegated[v1.ProtocolSCTP]
	}
	sctpWithoutKernelSCTP.WithLabelValues(string(p.ipFamily)).Set(float64(sctpHere))
	listenerConflicts.WithLabelValues(string(p.ipFamily)).Set(float64(conflicts))
	badEndpoints.WithLabelValues(string(p.ipFamily)).Set(float64(res.BadEndpoints))
	if res.BadEndpoints > 0 {
		p.logger.V(2).Info("Endpoints left out: unusable address or port", "count", res.BadEndpoints)
	}
}

// Reason of the event recorded on a Service whose NodePort another process
// of the node holds.
const eventReasonNodePortTaken = "NodePortTaken"

// reportNodePortTaken reports, once while it lasts, a NodePort left to the
// process that listens on it.
func (p *Proxier) reportNodePortTaken(s translate.Skipped) {
	p.logger.Info("NodePort not served: another process of the node listens on it", "servicePort", s.Name.String(), "detail", s.Detail)
	if p.cfg.Recorder != nil {
		ref := &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: s.Name.Namespace, Name: s.Name.Name}
		p.cfg.Recorder.Eventf(ref, nil, v1.EventTypeWarning, eventReasonNodePortTaken, "Proxying",
			"Port %s: %s; the NodePort is not served on this node (the Service's other addresses are)", portLabel(s.Name), s.Detail)
	}
}

// invalidAnnotation is a service port whose annotations are invalid, for
// one reason.
type invalidAnnotation struct {
	name   proxy.ServicePortName
	reason translate.SkipReason
}

// reportInvalidAnnotation reports, once while it lasts, a service port
// served without what its Service asks for in an invalid annotation or
// appProtocol. The event's reason is the translation's
// (InvalidProxyProtocol, InvalidEndpointCheck, AppProtocolAsTCP).
func (p *Proxier) reportInvalidAnnotation(s translate.Skipped) {
	p.logger.Info("Service port served without what an invalid annotation asks for", "servicePort", s.Name.String(), "reason", s.Reason, "detail", s.Detail)
	if p.cfg.Recorder != nil {
		ref := &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: s.Name.Namespace, Name: s.Name.Name}
		// An appProtocol relayed as TCP still works as in kube-proxy's
		// other modes: it is worth knowing, not a warning.
		eventType := v1.EventTypeWarning
		if s.Reason == translate.AppProtocolAsTCP {
			eventType = v1.EventTypeNormal
		}
		p.cfg.Recorder.Eventf(ref, nil, eventType, string(s.Reason), "Proxying",
			"Port %s: %s", portLabel(s.Name), s.Detail)
	}
}

// Reason of the event recorded on a Service whose UDP or SCTP port nothing
// serves.
const eventReasonProtocolNotSupported = "ProtocolNotSupported"

// reportNonTCP reports, once, a service port HAProxy leaves out because of
// its protocol.
func (p *Proxier) reportNonTCP(s translate.Skipped) {
	if p.delegate != nil {
		p.logger.Info("Service port served by the nftables proxier: HAProxy proxies TCP only",
			"servicePort", s.Name.String(), "protocol", s.Protocol)
		if s.Protocol == v1.ProtocolSCTP && p.delegate.noKernelSCTP != nil {
			p.reportNoKernelSCTP(s)
		}
		return
	}
	p.logger.Info("Service port not served: HAProxy proxies TCP only and no kernel data plane is used",
		"servicePort", s.Name.String(), "protocol", s.Protocol, "scope", p.cfg.Scope)
	if p.cfg.Recorder != nil {
		ref := &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: s.Name.Namespace, Name: s.Name.Name}
		p.cfg.Recorder.Eventf(ref, nil, v1.EventTypeWarning, eventReasonProtocolNotSupported, "Proxying",
			"Port %s/%s (%s family) is not served by kube-proxy in haproxy mode (scope %s): HAProxy proxies TCP only",
			portLabel(s.Name), s.Protocol, p.ipFamily, p.cfg.Scope)
	}
}

// Reason of the event recorded on a Service with an SCTP port on a node
// whose kernel has no SCTP.
const eventReasonNoKernelSCTP = "SCTPNotSupportedOnNode"

// reportNoKernelSCTP reports, once, a delegated SCTP service port on a node
// whose kernel cannot open SCTP sockets: its rules are programmed, but no
// pod here can listen, so only endpoints on other nodes answer.
func (p *Proxier) reportNoKernelSCTP(s translate.Skipped) {
	p.logger.Info("SCTP service port reaches only endpoints on other nodes: this node's kernel has no SCTP",
		"servicePort", s.Name.String(), "node", p.nodeName, "err", p.delegate.noKernelSCTP)
	if p.cfg.Recorder != nil {
		ref := &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: s.Name.Namespace, Name: s.Name.Name}
		p.cfg.Recorder.Eventf(ref, nil, v1.EventTypeWarning, eventReasonNoKernelSCTP, "Proxying",
			"Port %s/SCTP: the kernel of node %s has no SCTP (%v), so no pod on this node can serve it; only endpoints on other nodes are reached",
			portLabel(s.Name), p.nodeName, p.delegate.noKernelSCTP)
	}
}

// portLabel is the port's name, or "(unnamed)".
func portLabel(n proxy.ServicePortName) string {
	if n.Port == "" {
		return "(unnamed)"
	}
	return n.Port
}
