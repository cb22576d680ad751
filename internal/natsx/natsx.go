// Package natsx declares nomnom's JetStream topology: the ingest stream, the
// dead-letter stream, the advisory stream that catches poison messages, and
// the workers' durable consumer. Whichever service starts first creates or
// updates them; the calls are idempotent.
package natsx

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nomnomhq/nomnom/internal/envelope"
)

// Headers nomnom sets on dead letters.
const (
	HeaderError       = "Nomnom-Error"
	HeaderErrorClass  = "Nomnom-Error-Class"
	HeaderAttempts    = "Nomnom-Attempts"
	HeaderSubject     = "Nomnom-Original-Subject"
	HeaderSequence    = "Nomnom-Original-Sequence"
	HeaderFailedAt    = "Nomnom-Failed-At"
	HeaderMessageID   = "Nomnom-Message-Id"
	HeaderReplayCount = "Nomnom-Replay-Count"
)

// HeaderInterruptedAttempt marks a max-deliveries advisory that a worker put
// back after being stopped during the last attempt it announced: that
// attempt ended without a verdict, but not because the message crashed it.
const HeaderInterruptedAttempt = "Nomnom-Interrupted-Attempt"

// Topology names the streams and consumer and sets their limits.
type Topology struct {
	Stream          string        // ingest stream, e.g. MESSAGES
	Consumer        string        // workers' durable consumer, e.g. workers
	MaxAge          time.Duration // 0: unlimited
	MaxBytes        int64         // -1: unlimited
	DLQMaxAge       time.Duration
	DLQMaxBytes     int64
	Replicas        int
	DuplicateWindow time.Duration
	MaxDeliver      int
	AckWait         time.Duration
}

// DLQStream is the dead-letter stream's name.
func (t Topology) DLQStream() string { return t.Stream + "_DLQ" }

// AdvisoryStream keeps MAX_DELIVERIES advisories of the workers' consumer,
// so a poison message is dead-lettered even if no worker was listening when
// the server gave up on it.
func (t Topology) AdvisoryStream() string { return t.Stream + "_ADVISORIES" }

// AdvisorySubject is the subject JetStream announces exhausted deliveries on.
func (t Topology) AdvisorySubject() string {
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + t.Stream + "." + t.Consumer
}

// PoisonConsumer is the durable consumer of the advisory stream.
func (t Topology) PoisonConsumer() string { return t.Consumer + "_poison" }

func (t Topology) replicas() int { return max(t.Replicas, 1) }

// RecordHeadroom is the room a record's NATS message needs besides the
// record itself: the envelope's other fields, the publish headers and, once
// dead-lettered, the error headers (whose error text the worker caps at
// 2 KiB). A record may be at most the server's max_payload less this, or it
// could be accepted and then never dead-lettered.
const RecordHeadroom = 8 << 10

// EnsureStreams creates or updates the ingest, dead-letter and advisory streams.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, t Topology, logger *slog.Logger) error {
	streams := []jetstream.StreamConfig{
		{
			Name:        t.Stream,
			Description: "nomnom: accepted records awaiting storage",
			Subjects:    []string{envelope.IngestSubjects},
			Storage:     jetstream.FileStorage,
			// A work queue holds only what the workers have not stored yet,
			// so NATS_MAX_BYTES bounds the backlog, not the history; and
			// DiscardNew makes a full backlog refuse new records (ingest
			// answers 503) instead of deleting accepted ones.
			Retention:  jetstream.WorkQueuePolicy,
			Discard:    jetstream.DiscardNew,
			MaxAge:     t.MaxAge,
			MaxBytes:   t.MaxBytes,
			Replicas:   t.replicas(),
			Duplicates: t.DuplicateWindow,
		},
		{
			Name:        t.DLQStream(),
			Description: "nomnom: records that could not be stored; inspect and replay them",
			Subjects:    []string{envelope.DLQSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			// A full dead-letter queue refuses new entries; the worker then
			// keeps the message and retries, rather than losing an old entry.
			Discard:  jetstream.DiscardNew,
			MaxAge:   t.DLQMaxAge,
			MaxBytes: t.DLQMaxBytes,
			Replicas: t.replicas(),
			// Long enough that a worker crash between a dead-letter publish
			// and its ack still dedupes the second publish.
			Duplicates: time.Hour,
		},
		{
			Name:        t.AdvisoryStream(),
			Description: "nomnom: max-deliveries advisories of the workers consumer",
			Subjects:    []string{t.AdvisorySubject()},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      t.DLQMaxAge,
			Replicas:    t.replicas(),
		},
	}
	for _, cfg := range streams {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			if strings.Contains(err.Error(), "retention") {
				return fmt.Errorf("create or update stream %s: %w (the stream exists with another retention policy, which JetStream cannot change: drain it, then delete it with `nats stream rm %s`)", cfg.Name, err, cfg.Name)
			}
			return fmt.Errorf("create or update stream %s: %w", cfg.Name, err)
		}
		if logger != nil {
			logger.Info("stream ready", "stream", cfg.Name, "subjects", cfg.Subjects, "max_age", cfg.MaxAge, "max_bytes", cfg.MaxBytes, "replicas", cfg.Replicas)
		}
	}
	return nil
}

// EnsureConsumers creates or updates the workers' durable pull consumer and
// the poison consumer on the advisory stream.
func EnsureConsumers(ctx context.Context, js jetstream.JetStream, t Topology) (work, poison jetstream.Consumer, err error) {
	work, err = js.CreateOrUpdateConsumer(ctx, t.Stream, jetstream.ConsumerConfig{
		Durable:       t.Consumer,
		Description:   "nomnom workers",
		FilterSubject: envelope.IngestSubjects,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxDeliver:    t.MaxDeliver,
		AckWait:       t.AckWait,
		MaxAckPending: 10000,
		Replicas:      t.replicas(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("create or update consumer %s on %s: %w", t.Consumer, t.Stream, err)
	}
	poison, err = js.CreateOrUpdateConsumer(ctx, t.AdvisoryStream(), jetstream.ConsumerConfig{
		Durable:     t.PoisonConsumer(),
		Description: "nomnom workers: settle messages whose deliveries ran out",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     t.AckWait,
		Replicas:    t.replicas(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("create or update consumer %s on %s: %w", t.PoisonConsumer(), t.AdvisoryStream(), err)
	}
	return work, poison, nil
}

// Connect dials NATS with reconnects that never give up, so a NATS restart
// pauses the services instead of killing them.
func Connect(url, name string, logger *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500*time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { logger.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to nats: %w", err)
	}
	return nc, nil
}
