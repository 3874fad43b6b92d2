package apply

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// Metrics of applying models to HAProxy, registered with the legacy
// registry that kube-proxy's /metrics serves, beside upstream's.
var (
	// reloadsTotal counts reloads (and starts) of HAProxy by result.
	reloadsTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_reloads_total",
			Help:           "Cumulative number of HAProxy reloads and starts, by result (success, failed)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"result"},
	)

	// reloadDuration is how long successful reloads took, until the new
	// worker was confirmed.
	reloadDuration = metrics.NewHistogram(
		&metrics.HistogramOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_reload_duration_seconds",
			Help:           "Duration of successful HAProxy reloads, until the new worker is confirmed",
			Buckets:        metrics.ExponentialBuckets(0.01, 2, 12),
			StabilityLevel: metrics.ALPHA,
		},
	)

	// configRejectedTotal counts configurations that were not loaded, by
	// reason: model (invalid model), validation (haproxy -c), reload,
	// start, binary (haproxy cannot be run).
	configRejectedTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_config_rejected_total",
			Help:           "Cumulative number of HAProxy configurations not loaded, by reason (model, binary, file-limit, validation, reload, start); the last good configuration keeps serving",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"reason"},
	)

	// runtimeUpdatesTotal counts runtime API batches (endpoint changes
	// applied without a reload) by result.
	runtimeUpdatesTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_runtime_updates_total",
			Help:           "Cumulative number of Service and endpoint updates applied through the HAProxy runtime API without a reload, by result (success, failed)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"result"},
	)

	// runtimeCommandsTotal counts the runtime API commands those batches
	// carried (map entries added, changed or deleted).
	runtimeCommandsTotal = metrics.NewCounter(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_runtime_commands_total",
			Help:           "Cumulative number of HAProxy runtime API commands sent (map and ACL entries added, changed or deleted)",
			StabilityLevel: metrics.ALPHA,
		},
	)

	// mapEntries is the number of entries of each map HAProxy serves.
	mapEntries = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_map_entries",
			Help:           "Number of entries of the HAProxy maps, by IP family and map (services: one per Service port listener and one per endpoint set, its count and generation; endpoints: the endpoints of each set's current generation)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family", "map"},
	)

	// RestartsTotal counts HAProxy processes started again after they died.
	RestartsTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      "kubeproxy",
			Name:           "haproxy_restarts_total",
			Help:           "Cumulative number of times HAProxy died and was started again, by result (success, failed)",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"result"},
	)
)

var registerOnce sync.Once

func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(reloadsTotal)
		legacyregistry.MustRegister(reloadDuration)
		legacyregistry.MustRegister(configRejectedTotal)
		legacyregistry.MustRegister(runtimeUpdatesTotal)
		legacyregistry.MustRegister(runtimeCommandsTotal)
		legacyregistry.MustRegister(mapEntries)
		legacyregistry.MustRegister(RestartsTotal)
		// Every known label value from the start, at 0: a dashboard's
		// rate() sees the first rejection or failed reload, and a scrape
		// shows each series before anything happened (docs/observability.md).
		for _, reason := range []string{"model", "binary", "file-limit", "validation", "reload", "start"} {
			configRejectedTotal.WithLabelValues(reason)
		}
		for _, result := range []string{"success", "failed"} {
			reloadsTotal.WithLabelValues(result)
			runtimeUpdatesTotal.WithLabelValues(result)
			RestartsTotal.WithLabelValues(result)
		}
	})
}
