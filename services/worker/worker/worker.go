// Package worker consumes accepted records from JetStream and stores them in
// PostgreSQL, one transaction per fetched batch. Failures are classified:
// permanent ones go to the dead-letter queue at once, transient ones are
// retried with backoff until WORKER_MAX_DELIVER, and a PostgreSQL outage
// pauses consumption instead of spending attempts.
package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/store"
)

// Options configures a Worker. JetStream, Store and Logger are required.
type Options struct {
	JetStream    jetstream.JetStream
	Store        *store.Store
	Logger       *slog.Logger
	Topology     natsx.Topology
	BatchSize    int           // WORKER_BATCH_SIZE
	PollInterval time.Duration // WORKER_POLL_INTERVAL_MS: longest wait for a batch to fill
	Concurrency  int           // WORKER_CONCURRENCY: batches in flight
	RetryBase    time.Duration // first retry delay of a transient failure
	RetryMax     time.Duration // cap of the exponential retry delay
	Now          func() time.Time
	// BeforeStore, if set, sees every decodable envelope before its batch is
	// stored. Tests use it to make a message crash the process.
	BeforeStore func(*envelopev1.Envelope)
}

// Worker is the consumer. Create it with New and run it with Run.
type Worker struct {
	opts    Options
	js      jetstream.JetStream
	store   *store.Store
	log     *slog.Logger
	now     func() time.Time
	topo    natsx.Topology
	metrics *Metrics
	ready   atomic.Bool
	paused  atomic.Int32
}

// New checks opts and returns a Worker.
func New(opts Options) (*Worker, error) {
	switch {
	case opts.JetStream == nil:
		return nil, errors.New("worker: JetStream is required")
	case opts.Store == nil:
		return nil, errors.New("worker: Store is required")
	case opts.Logger == nil:
		return nil, errors.New("worker: Logger is required")
	case opts.Topology.Stream == "" || opts.Topology.Consumer == "":
		return nil, errors.New("worker: Topology.Stream and Topology.Consumer are required")
	case opts.Topology.MaxDeliver < 1:
		return nil, errors.New("worker: Topology.MaxDeliver must be at least 1")
	}
	opts.BatchSize = max(opts.BatchSize, 1)
	opts.Concurrency = max(opts.Concurrency, 1)
	if opts.PollInterval <= 0 {
		opts.PollInterval = 100 * time.Millisecond
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = time.Second
	}
	opts.RetryMax = max(opts.RetryMax, opts.RetryBase)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	w := &Worker{
		opts: opts, js: opts.JetStream, store: opts.Store, log: opts.Logger,
		now: opts.Now, topo: opts.Topology,
	}
	w.metrics = newMetrics(w)
	return w, nil
}

// Ready reports whether the worker is consuming (for /ready).
func (w *Worker) Ready() *atomic.Bool { return &w.ready }

// Run consumes until ctx ends. The batch in flight when ctx ends is finished
// and acknowledged before Run returns; nothing is left half-done.
func (w *Worker) Run(ctx context.Context) error {
	work, poison, err := natsx.EnsureConsumers(ctx, w.js, w.topo)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before consuming anything
		}
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for i := range w.opts.Concurrency {
		g.Go(func() error { return w.consume(gctx, work, i) })
	}
	g.Go(func() error { return w.consumePoison(gctx, poison) })
	g.Go(func() error {
		return w.metrics.watch(gctx, work, w.js.Stream, w.topo.Stream, w.topo.DLQStream())
	})
	w.ready.Store(true)
	defer w.ready.Store(false)
	return g.Wait()
}

// consume is one fetch-and-store loop.
func (w *Worker) consume(ctx context.Context, cons jetstream.Consumer, id int) error {
	log := w.log.With("loop", id)
	wait := newBackoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		batch, err := cons.Fetch(w.opts.BatchSize, jetstream.FetchMaxWait(w.opts.PollInterval))
		if err != nil {
			log.Warn("fetch failed; retrying", "error", err)
			if !sleep(ctx, wait.next()) {
				break
			}
			continue
		}
		msgs := make([]jetstream.Msg, 0, w.opts.BatchSize)
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			log.Warn("fetch ended early", "error", err, "received", len(msgs))
		}
		wait.reset()
		if len(msgs) == 0 {
			continue
		}
		// A started batch is finished even during shutdown: its messages
		// are either acknowledged or handed back, never left to time out,
		// including the groups still waiting their turn.
		stopKeepAlive := w.keepAlive(msgs)
		for _, group := range isolateRedelivered(msgs) {
			w.process(context.WithoutCancel(ctx), ctx, group)
		}
		stopKeepAlive()
	}
	return nil
}

// isolateRedelivered keeps first deliveries together and gives every
// redelivered message a batch of its own. A message that crashed the worker
// took its whole batch down with it; alone, its neighbours are stored on
// their next delivery and only the culprit runs out of attempts.
func isolateRedelivered(msgs []jetstream.Msg) [][]jetstream.Msg {
	var first []jetstream.Msg
	var groups [][]jetstream.Msg
	for _, m := range msgs {
		if meta, err := m.Metadata(); err == nil && meta.NumDelivered > 1 {
			groups = append(groups, []jetstream.Msg{m})
			continue
		}
		first = append(first, m)
	}
	if len(first) > 0 {
		groups = append(groups, first)
	}
	return groups
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff doubles a delay up to a cap.
type backoff struct{ base, cap, cur time.Duration }

func newBackoff(base, cap time.Duration) *backoff { return &backoff{base: base, cap: cap} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.base
	} else {
		b.cur = min(b.cur*2, b.cap)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// retryDelay is the redelivery delay after the given failed attempt.
func (w *Worker) retryDelay(attempt int) time.Duration {
	d := w.opts.RetryBase
	for i := 1; i < attempt && d < w.opts.RetryMax; i++ {
		d *= 2
	}
	return min(d, w.opts.RetryMax)
}
