package worker

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nomnomhq/nomnom/internal/obs"
)

// Metrics are the worker's Prometheus metrics.
type Metrics struct {
	Registry     *prometheus.Registry
	HTTP         *obs.HTTPMetrics
	messages     *prometheus.CounterVec
	retries      *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	batchSeconds prometheus.Histogram
	e2eSeconds   *prometheus.HistogramVec
	pending      prometheus.Gauge
	ackPending   prometheus.Gauge
	redelivered  prometheus.Gauge
	dlqDepth     prometheus.Gauge
	oldest       prometheus.Gauge
	backlog      prometheus.Gauge
}

func newMetrics(w *Worker) *Metrics {
	reg := obs.NewRegistry()
	m := &Metrics{
		Registry: reg,
		HTTP:     obs.NewHTTPMetrics(reg),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nomnom_worker_messages_total",
			Help: "Messages stored, by entity and outcome (completed, superseded).",
		}, []string{"entity", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nomnom_worker_retries_total",
			Help: "Transient failures that were scheduled for another attempt.",
		}, []string{"entity"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nomnom_worker_dead_lettered_total",
			Help: "Messages moved to the dead-letter queue, by entity and error class.",
		}, []string{"entity", "class"}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nomnom_worker_batch_duration_seconds", Help: "Time to store one fetched batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		e2eSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nomnom_worker_end_to_end_seconds", Help: "Time from ingest acceptance to storage.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
		}, []string{"entity"}),
		pending:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "nomnom_consumer_pending_messages", Help: "Messages not yet delivered to the workers consumer (lag)."}),
		ackPending:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "nomnom_consumer_ack_pending_messages", Help: "Messages delivered but not yet acknowledged."}),
		redelivered: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nomnom_consumer_redelivered_messages", Help: "Messages being redelivered."}),
		dlqDepth:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "nomnom_dlq_messages", Help: "Entries in the dead-letter stream."}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nomnom_backlog_messages",
			Help: "Records accepted and not yet stored or dead-lettered, fetched or not (the ingest stream's size).",
		}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nomnom_consumer_oldest_pending_seconds",
			Help: "Age of the oldest record not yet stored (0 when none); NATS_MAX_AGE_HOURS deletes it at that age.",
		}),
	}
	reg.MustRegister(m.messages, m.retries, m.deadLettered, m.batchSeconds, m.e2eSeconds,
		m.pending, m.ackPending, m.redelivered, m.dlqDepth, m.oldest, m.backlog,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nomnom_worker_paused", Help: "Fetch loops paused because PostgreSQL is unreachable."},
			func() float64 { return float64(w.paused.Load()) }))
	return m
}

// Metrics returns the worker's metrics (its registry backs /metrics).
func (w *Worker) Metrics() *Metrics { return w.metrics }

func (m *Metrics) stored(d *delivery, superseded bool, now time.Time) {
	outcome := "completed"
	if superseded {
		outcome = "superseded"
	}
	m.messages.WithLabelValues(string(d.entity), outcome).Inc()
	m.e2eSeconds.WithLabelValues(string(d.entity)).Observe(now.Sub(d.env.GetReceivedAt().AsTime()).Seconds())
}

// watch refreshes the consumer and dead-letter gauges; reading them on each
// scrape would put a NATS round trip in every scrape.
func (m *Metrics) watch(ctx context.Context, cons jetstream.Consumer, stream func(context.Context, string) (jetstream.Stream, error), work, dlq string) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if info, err := cons.Info(ctx); err == nil {
			m.pending.Set(float64(info.NumPending))
			m.ackPending.Set(float64(info.NumAckPending))
			m.redelivered.Set(float64(info.NumRedelivered))
		}
		if s, err := stream(ctx, work); err == nil {
			// The work queue holds only records not yet stored, so its
			// first message is the oldest of them.
			age := 0.0
			st := s.CachedInfo().State
			if st.Msgs > 0 {
				age = max(time.Since(st.FirstTime).Seconds(), 0)
			}
			m.oldest.Set(age)
			m.backlog.Set(float64(st.Msgs))
		}
		if s, err := stream(ctx, dlq); err == nil {
			m.dlqDepth.Set(float64(s.CachedInfo().State.Msgs))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
