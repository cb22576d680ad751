// Package ingest is the ingest service: it accepts records over Connect,
// gRPC, gRPC-Web and REST, queues them durably on JetStream, records their
// 'accepted' status and answers questions about them.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/nomnomhq/nomnom/internal/groupcommit"
	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/store"
)

// Options configures a Service. JetStream, Store and Logger are required.
type Options struct {
	JetStream jetstream.JetStream
	Store     *store.Store
	Logger    *slog.Logger
	// Stream is the ingest stream (NATS_STREAM), asserted on every publish so
	// a misconfigured subject can never land elsewhere.
	Stream string
	// DLQStream is the dead-letter stream the admin API manages.
	DLQStream string
	// MaxBodyBytes bounds one REST record (INGEST_MAX_BODY_BYTES).
	MaxBodyBytes int64
	// MaxBatchBytes bounds one REST NDJSON batch (INGEST_MAX_BATCH_BYTES).
	MaxBatchBytes int64
	// MaxReplays refuses replaying a dead letter more often (DLQ_MAX_REPLAYS).
	MaxReplays int
	// IngestTokens and AdminTokens are accepted bearer tokens; see auth.go.
	IngestTokens []string
	AdminTokens  []string
	// Pinger checks NATS for /health.
	Pinger func(context.Context) error
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Service implements the ingest, status and dead-letter APIs.
type Service struct {
	opts      Options
	limitName string // what sets opts.MaxBodyBytes, for errors
	js        jetstream.JetStream
	store     *store.Store
	log       *slog.Logger
	now       func() time.Time
	statuses  *groupcommit.Committer[store.StatusWrite]
	metrics   *Metrics
	ready     atomic.Bool
	// statusWarn paces the warning about unwritten 'accepted' statuses.
	statusWarn rate.Sometimes
	draining   chan struct{}
	drainOne   sync.Once
}

// New checks opts and returns a Service. Call Run to start its background
// work and MarkReady once the listener is up.
func New(opts Options) (*Service, error) {
	switch {
	case opts.JetStream == nil:
		return nil, errors.New("ingest: JetStream is required")
	case opts.Store == nil:
		return nil, errors.New("ingest: Store is required")
	case opts.Logger == nil:
		return nil, errors.New("ingest: Logger is required")
	case opts.Stream == "":
		return nil, errors.New("ingest: Stream is required")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	limitName := "INGEST_MAX_BODY_BYTES"
	if nc := opts.JetStream.Conn(); nc != nil {
		if fit := nc.MaxPayload() - natsx.RecordHeadroom; fit > 0 && opts.MaxBodyBytes > fit {
			opts.Logger.Warn("records are limited below INGEST_MAX_BODY_BYTES: a record must fit in one NATS message with its headers",
				"INGEST_MAX_BODY_BYTES", opts.MaxBodyBytes, "nats_max_payload", nc.MaxPayload(), "record_limit", fit)
			opts.MaxBodyBytes, limitName = fit, fmt.Sprintf("NATS max_payload %d less %d bytes for headers", nc.MaxPayload(), natsx.RecordHeadroom)
		}
	}
	if opts.MaxBatchBytes < opts.MaxBodyBytes {
		opts.MaxBatchBytes = 16 * opts.MaxBodyBytes
	}
	if opts.DLQStream == "" {
		opts.DLQStream = opts.Stream + "_DLQ"
	}
	s := &Service{
		opts:      opts,
		limitName: limitName,
		js:        opts.JetStream,
		store:     opts.Store,
		log:       opts.Logger,
		now:       opts.Now,
		metrics:   newMetrics(),
		draining:  make(chan struct{}),
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.statusWarn = rate.Sometimes{First: 1, Interval: 10 * time.Second}
	// Status rows of concurrent requests are written together; two flushers
	// keep one batch in flight while the next one fills.
	s.statuses = groupcommit.New(s.store.WriteStatuses, 1000, 2)
	return s, nil
}

// Run runs the background status writer until ctx ends. Stop serving
// requests before cancelling ctx, so every answered message has its status.
func (s *Service) Run(ctx context.Context) error {
	if err := s.statuses.Run(ctx); err != nil {
		return fmt.Errorf("status writer: %w", err)
	}
	return nil
}

// Drain ends open WatchStatus streams (with Unavailable, so clients retry
// on another replica) before the server waits for in-flight requests.
func (s *Service) Drain() { s.drainOne.Do(func() { close(s.draining) }) }

// MarkReady flips /ready to 200 (true) or 503 (false, while draining).
func (s *Service) MarkReady(ready bool) { s.ready.Store(ready) }
