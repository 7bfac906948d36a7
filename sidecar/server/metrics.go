package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the elector's Prometheus series, all named mpsync_elector_*.
type metrics struct {
	held         prometheus.Gauge
	waiters      prometheus.Gauge
	watchers     prometheus.Gauge
	acquisitions *prometheus.CounterVec // by protocol: v1, legacy
	losses       *prometheus.CounterVec // by reason: revoked, expired, backend, shutdown
	releases     *prometheus.CounterVec // by cause: request, disconnect, shutdown
	renewal      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "mpsync", "elector"
	m := &metrics{
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "locks_held",
			Help: "Locks held through this elector (v1 sessions and legacy locks).",
		}),
		waiters: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "waiters",
			Help: "Acquire requests waiting for a lock.",
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "watchers",
			Help: "Open watch streams.",
		}),
		acquisitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "acquisitions_total",
			Help: "Locks granted, by protocol (v1, legacy).",
		}, []string{"protocol"}),
		losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "losses_total",
			Help: "Leases that ended without a release, by reason (revoked, expired, backend, shutdown).",
		}, []string{"reason"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "releases_total",
			Help: "Leases released, by cause (request: a release call; disconnect: the client went away; shutdown).",
		}, []string{"cause"}),
		renewal: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "renewal_duration_seconds",
			Help:    "Time the backend took to renew a lease.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
	// Every series exists from the start, at 0, so rates work from the
	// first scrape.
	for _, p := range []string{"v1", "legacy"} {
		m.acquisitions.WithLabelValues(p)
	}
	for _, r := range []string{"revoked", "expired", "backend", "shutdown"} {
		m.losses.WithLabelValues(r)
	}
	for _, c := range []string{"request", "disconnect", "shutdown"} {
		m.releases.WithLabelValues(c)
	}
	for _, c := range []prometheus.Collector{
		m.held, m.waiters, m.watchers, m.acquisitions, m.losses, m.releases, m.renewal,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
