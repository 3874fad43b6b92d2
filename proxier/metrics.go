package proxier

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Metrics of the haproxy mode, next to upstream's common kube-proxy
// metrics (k8s.io/kubernetes/pkg/proxy/metrics), which the proxier updates
// under their usual names.
var (
	// unsupportedServicePorts counts the service ports nothing serves
	// because of their protocol (UDP, SCTP without delegation).
	unsupportedServicePorts = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_unsupported_service_ports",
			Help:           "Number of UDP and SCTP service ports not served at all (HAProxy proxies TCP only, and they are not delegated)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"protocol", "ip_family"},
	)

	// delegatedServicePorts counts the UDP and SCTP service ports handed
	// to the nftables proxier.
	delegatedServicePorts = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_delegated_service_ports",
			Help:           "Number of UDP and SCTP service ports served by the nftables proxier instead of HAProxy",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"protocol", "ip_family"},
	)

	// sctpWithoutKernelSCTP counts the delegated SCTP service ports on a
	// node whose kernel has no SCTP: programmed, but no pod here serves them.
	sctpWithoutKernelSCTP = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_sctp_service_ports_without_kernel_sctp",
			Help:           "Number of delegated SCTP service ports on a node whose kernel has no SCTP (only endpoints on other nodes are reached)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// listenerConflicts counts listeners left out because another service
	// port already listens on the same address and port.
	listenerConflicts = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_listener_conflicts",
			Help:           "Number of service listeners left out because their address and port are already served",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// nodePortsTaken counts the TCP NodePorts left to another process of
	// the node that listens on them.
	nodePortsTaken = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_node_ports_taken",
			Help:           "Number of TCP NodePorts not served because another process of the node listens on them (each has a NodePortTaken event on its Service)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// invalidAnnotations counts service ports served without what an
	// invalid annotation of their Service asks for.
	invalidAnnotations = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_invalid_annotation_service_ports",
			Help:           "Number of service ports served without what an invalid annotation of their Service asks for, by reason: InvalidProxyProtocol (no PROXY header), InvalidEndpointCheck (no active checks); each has an event of that reason on its Service",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"reason", "ip_family"},
	)

	// endpointsFailingChecks counts the endpoints active checks find down.
	endpointsFailingChecks = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_endpoints_failing_checks",
			Help:           "Number of endpoints that fail the active checks their Service asks for, and are left out of it (unless every endpoint of the Service fails them)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// badEndpoints counts endpoints left out because of an unusable
	// address or port.
	badEndpoints = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_bad_endpoints",
			Help:           "Number of endpoints left out because their address or port is unusable",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// syncFailuresTotal counts syncs whose model the Applier refused.
	syncFailuresTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_sync_failures_total",
			Help:           "Cumulative number of HAProxy syncs that failed to apply",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)
)

var registerOnce sync.Once

// registerMetrics registers the haproxy-mode metrics with the legacy
// registry that kube-proxy's /metrics serves.
func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(unsupportedServicePorts)
		legacyregistry.MustRegister(delegatedServicePorts)
		legacyregistry.MustRegister(sctpWithoutKernelSCTP)
		legacyregistry.MustRegister(listenerConflicts)
		legacyregistry.MustRegister(badEndpoints)
		legacyregistry.MustRegister(nodePortsTaken)
		legacyregistry.MustRegister(invalidAnnotations)
		legacyregistry.MustRegister(endpointsFailingChecks)
		legacyregistry.MustRegister(syncFailuresTotal)
	})
}
