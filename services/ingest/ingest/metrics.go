package ingest

import (
	"cmp"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/obs"
)

// Metrics are the ingest service's Prometheus metrics.
type Metrics struct {
	Registry            *prometheus.Registry
	HTTP                *obs.HTTPMetrics
	records             *prometheus.CounterVec
	acceptSeconds       prometheus.Histogram
	statusWriteFailures prometheus.Counter
	rpcs                *prometheus.CounterVec
}

func newMetrics() *Metrics {
	reg := obs.NewRegistry()
	m := &Metrics{
		Registry: reg,
		HTTP:     obs.NewHTTPMetrics(reg),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nomnom_ingest_records_total",
			Help: "Records offered to ingest, by entity and outcome: accepted, duplicate, rejected (bad input, answered 4xx) or failed (not queued: JetStream trouble).",
		}, []string{"entity", "outcome"}),
		acceptSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nomnom_ingest_accept_duration_seconds",
			Help:    "Time from receiving records to their JetStream ack and status write, per call.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		statusWriteFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nomnom_ingest_status_write_failures_total",
			Help: "Accepted statuses that could not be written (the worker writes them later).",
		}),
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nomnom_rpc_requests_total",
			Help: "Connect, gRPC and gRPC-Web calls by procedure and code.",
		}, []string{"procedure", "code"}),
	}
	reg.MustRegister(m.records, m.acceptSeconds, m.statusWriteFailures, m.rpcs)
	return m
}

// Metrics returns the service's metrics (its registry backs /metrics).
func (s *Service) Metrics() *Metrics { return s.metrics }

// rejected counts a record refused before anything was published; its
// entity is "unknown" when the record did not get far enough to tell.
func (m *Metrics) rejected(e envelope.Entity) {
	m.records.WithLabelValues(cmp.Or(string(e), "unknown"), "rejected").Inc()
}

func (m *Metrics) observeAccept(o outcome) {
	entity := string(o.Entity)
	if entity == "" {
		entity = "unknown"
	}
	switch {
	case connect.CodeOf(o.Err) == connect.CodeAlreadyExists:
		m.records.WithLabelValues(entity, "rejected").Inc() // a reused idempotency key
	case o.Err != nil:
		m.records.WithLabelValues(entity, "failed").Inc()
	case o.Duplicate:
		m.records.WithLabelValues(entity, "duplicate").Inc()
	default:
		m.records.WithLabelValues(entity, "accepted").Inc()
	}
}
