package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the agent's Prometheus metrics. The sync and programming
// metrics keep kube-proxy's names, so dashboards and alerts written for
// kube-proxy keep working; kdive's own are prefixed kdive_.
type metrics struct {
	reg *prometheus.Registry

	syncDuration        prometheus.Histogram
	fullSyncDuration    prometheus.Histogram
	partialSyncDuration prometheus.Histogram
	lastSync            prometheus.Gauge
	programming         prometheus.Histogram
	syncErrors          *prometheus.CounterVec
	driftRepairs        *prometheus.CounterVec
	servicesProgrammed  prometheus.Gauge
	endpointsProgrammed prometheus.Gauge
	ipamInUse           *prometheus.GaugeVec
	ipamSize            *prometheus.GaugeVec
	ipamOrphaned        *prometheus.GaugeVec
	invalidServices     prometheus.Gauge
}

func newMetrics() *metrics {
	buckets := prometheus.ExponentialBuckets(0.001, 2, 15) // 1 ms .. 16 s
	m := &metrics{
		reg: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_proxy_rules_duration_seconds", Help: "Time a sync of the service proxy took.", Buckets: buckets,
		}),
		fullSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_full_proxy_rules_duration_seconds", Help: "Time a full sync of the service proxy took.", Buckets: buckets,
		}),
		partialSyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kubeproxy_sync_partial_proxy_rules_duration_seconds", Help: "Time a partial sync of the service proxy took.", Buckets: buckets,
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_last_timestamp_seconds", Help: "When the service proxy last synced successfully (Unix time).",
		}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubeproxy_network_programming_duration_seconds",
			Help:    "Time from an EndpointSlice change (its last-change-trigger-time) to its rules being programmed.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 20),
		}),
		syncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kdive_sync_errors_total", Help: "Syncs that failed, by part (podnet, proxy).",
		}, []string{"part"}),
		driftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kdive_drift_repairs_total", Help: "Kernel objects found changed by someone else and repaired, by part.",
		}, []string{"part"}),
		servicesProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kdive_proxy_service_ports", Help: "Service ports programmed by the last proxy sync.",
		}),
		endpointsProgrammed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kdive_proxy_endpoints", Help: "Endpoints programmed by the last proxy sync.",
		}),
		ipamInUse: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kdive_ipam_addresses_in_use", Help: "Pod addresses allocated from this node's block.",
		}, []string{"node", "block"}),
		ipamSize: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kdive_ipam_addresses_total", Help: "Pod addresses this node's block can hand out.",
		}, []string{"node", "block"}),
		ipamOrphaned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kdive_ipam_addresses_orphaned", Help: "Pod addresses allocated on this node that no pod of the node has held for two minutes (a CNI DEL that never came).",
		}, []string{"node", "block"}),
		invalidServices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kdive_proxy_invalid_services", Help: "Services left out because a field is invalid (logged with the field).",
		}),
	}
	m.reg.MustRegister(m.syncDuration, m.fullSyncDuration, m.partialSyncDuration, m.lastSync, m.programming,
		m.syncErrors, m.driftRepairs, m.servicesProgrammed, m.endpointsProgrammed, m.ipamInUse, m.ipamSize, m.ipamOrphaned,
		m.invalidServices, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
