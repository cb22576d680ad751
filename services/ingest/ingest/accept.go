package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/store"
)

// statusWriteTimeout bounds how long an answer waits for its status row. The
// record is already safe on JetStream; if PostgreSQL is slow or down the
// worker writes the row when it processes the message.
const statusWriteTimeout = 5 * time.Second

// pending is a record that passed the synchronous checks.
type pending struct {
	entity         envelope.Entity
	payload        []byte
	source         string
	idempotencyKey string
	// fingerprint identifies a keyed record, so that a reused idempotency
	// key can be told from a retry; see knownKeys. Nil without a key.
	fingerprint []byte
}

// fingerprint hashes a record's JSON for pending.fingerprint, in its
// canonical form (RFC 8785: member order, white space and number spelling
// do not count), so a retry that re-encodes the same record still matches.
func fingerprint(record []byte) []byte {
	canonical := jsontext.Value(slices.Clone(record))
	if err := canonical.Canonicalize(); err != nil {
		canonical = jsontext.Value(record) // not expected: the record was parsed already
	}
	sum := sha256.Sum256(canonical)
	return sum[:]
}

// errKeyReused refuses a record whose idempotency key an earlier call used
// for a different record: answering it as a duplicate would drop it.
func errKeyReused(key, firstID string) error {
	return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf(
		"idempotency key %q was already used for a different record (message %s); use a new key for a new record", key, firstID))
}

// outcome is what happened to one pending record.
type outcome struct {
	MessageID  string
	Entity     envelope.Entity
	ReceivedAt time.Time
	Duplicate  bool
	Err        error
}

// accept publishes records to JetStream and records them as accepted. All
// publishes are in flight at once (async publish), and all status rows go
// to the group committer in one call, so a batch costs about one round trip
// to each of JetStream and PostgreSQL. Each outcome is independent.
func (s *Service) accept(ctx context.Context, recs []pending) []outcome {
	start := time.Now()
	ctx, span := obs.StartBatchSpan(ctx, "ingest.accept", len(recs))
	defer span.End()
	// Only a valid span context is worth a header per message; while tracing
	// is off there is none, and messages go out as before.
	traced := span.SpanContext().IsValid()
	// PostgreSQL keeps microseconds; so does every answer that quotes this time.
	now := s.now().UTC().Truncate(time.Microsecond)
	outs := make([]outcome, len(recs))
	envs := make([]*envelopev1.Envelope, len(recs))
	for i, r := range recs {
		outs[i].Entity = r.entity
		// Each record of a call gets its own microsecond, in call order, so
		// that of two records for one key in a call the later one is the
		// newer and wins in storage. The answer goes out only after every
		// publish, which takes longer than a microsecond a record, so the
		// next call's records are newer still.
		at := now.Add(time.Duration(i) * time.Microsecond)
		env, err := envelope.New(r.entity, r.payload, at, r.source, r.idempotencyKey)
		if err != nil {
			outs[i].Err = err
			continue
		}
		env.RecordSha256 = r.fingerprint
		envs[i] = env
	}
	s.knownKeys(ctx, recs, envs, outs)

	futures := make([]jetstream.PubAckFuture, len(recs))
	for i, r := range recs {
		env := envs[i]
		if env == nil || outs[i].Err != nil || outs[i].Duplicate {
			continue
		}
		data, err := envelope.Marshal(env)
		if err != nil {
			outs[i].Err = fmt.Errorf("encode envelope: %w", err)
			continue
		}
		msgID := env.GetMessageId()
		if r.idempotencyKey != "" {
			msgID = "idem:" + r.idempotencyKey
		}
		msg := &nats.Msg{Subject: r.entity.IngestSubject(), Data: data}
		if traced {
			// The worker links its batch span to this trace.
			msg.Header = nats.Header{}
			obs.InjectNATS(ctx, msg.Header)
		}
		f, err := s.js.PublishMsgAsync(msg,
			jetstream.WithMsgID(msgID),
			jetstream.WithExpectStream(s.opts.Stream),
			jetstream.WithStallWait(5*time.Second),
		)
		if err != nil {
			outs[i].Err = fmt.Errorf("publish to jetstream: %w", err)
			continue
		}
		futures[i] = f
	}

	writes := make([]store.StatusWrite, 0, len(recs))
	var dups []int
	for i, f := range futures {
		if f == nil {
			continue
		}
		env := envs[i]
		select {
		case ack := <-f.Ok():
			outs[i].MessageID = env.GetMessageId()
			outs[i].Entity = recs[i].entity
			outs[i].ReceivedAt = env.GetReceivedAt().AsTime()
			if ack.Duplicate {
				// A retry with a known key: JetStream kept only the first
				// publish, whose message id is this one (see envelope.New)
				// and whose status row the first call wrote.
				outs[i].Duplicate = true
				dups = append(dups, i)
				continue
			}
			w := acceptedWrite(env, recs[i].entity)
			if recs[i].idempotencyKey != "" { // only a keyed record can be sent again
				w.RecordSHA256 = recs[i].fingerprint
			}
			writes = append(writes, w)
		case err := <-f.Err():
			outs[i].Err = fmt.Errorf("publish to jetstream: %w", err)
		case <-ctx.Done():
			outs[i].Err = fmt.Errorf("publish to jetstream: %w", ctx.Err())
		}
	}

	s.firstReceived(ctx, recs, outs, dups)

	wctx, cancel := context.WithTimeout(ctx, statusWriteTimeout)
	defer cancel()
	if err := s.statuses.Submit(wctx, writes...); err != nil {
		s.metrics.statusWriteFailures.Add(float64(len(writes)))
		// Once per call would flood the log during an outage; the metric
		// counts every one.
		s.statusWarn.Do(func() {
			s.log.WarnContext(ctx, "accepted status not written; the worker will write it when it processes the messages (logged at most every 10s; see nomnom_ingest_status_write_failures_total)",
				"error", err, "messages", len(writes))
		})
	}
	debug := s.log.Enabled(ctx, slog.LevelDebug)
	for _, o := range outs {
		s.metrics.observeAccept(o)
		if debug {
			s.log.DebugContext(ctx, "ingested", "message_id", o.MessageID, "entity_type", o.Entity,
				"duplicate", o.Duplicate, "error", o.Err, "duration", time.Since(start))
		}
	}
	s.metrics.acceptSeconds.Observe(time.Since(start).Seconds())
	return outs
}

// knownKeys marks records whose idempotency key an earlier call already
// used as duplicates of it, answered with its message id and time and not
// published again. JetStream's own deduplication (Nats-Msg-Id) covers only
// its duplicate window (minutes); the status row covers every retry after
// it. Should PostgreSQL not answer, JetStream's window is all there is.
func (s *Service) knownKeys(ctx context.Context, recs []pending, envs []*envelopev1.Envelope, outs []outcome) {
	var ids []uuid.UUID
	firstInCall := map[string]int{}
	for i, r := range recs {
		if r.idempotencyKey == "" || envs[i] == nil {
			continue
		}
		if j, ok := firstInCall[r.idempotencyKey]; ok {
			// JetStream keeps the first of the two; a different second
			// record must not pass for its duplicate.
			if !bytes.Equal(recs[j].fingerprint, r.fingerprint) {
				outs[i].Err = errKeyReused(r.idempotencyKey, envs[j].GetMessageId())
			}
			continue
		}
		firstInCall[r.idempotencyKey] = i
		ids = append(ids, uuid.MustParse(envs[i].GetMessageId()))
	}
	if len(ids) == 0 {
		return
	}
	found, err := s.store.GetStatuses(ctx, ids)
	if err != nil {
		// Unchecked, a key might be a retry of a call long past, or the
		// reuse of one for another record: refuse rather than guess.
		// Records without a key are not affected.
		s.log.WarnContext(ctx, "idempotency keys cannot be checked; keyed records refused for now", "error", err, "records", len(ids))
		for i, r := range recs {
			if r.idempotencyKey != "" && envs[i] != nil && outs[i].Err == nil {
				outs[i].Err = connect.NewError(connect.CodeUnavailable,
					fmt.Errorf("idempotency key %q cannot be checked while PostgreSQL is unavailable; retry later: %w", r.idempotencyKey, err))
			}
		}
		return
	}
	known := make(map[string]store.MessageStatus, len(found))
	for _, st := range found {
		known[st.MessageID.String()] = st
	}
	for i, env := range envs {
		if env == nil || recs[i].idempotencyKey == "" || outs[i].Err != nil {
			continue
		}
		if st, ok := known[env.GetMessageId()]; ok {
			if reused(st, recs[i]) {
				outs[i].Err = errKeyReused(recs[i].idempotencyKey, env.GetMessageId())
				continue
			}
			outs[i].MessageID, outs[i].ReceivedAt, outs[i].Duplicate = env.GetMessageId(), st.ReceivedAt, true
		}
	}
}

// reused reports whether the first call with rec's key stored a different
// record. A row without a fingerprint (written before ingest's) cannot
// tell, and counts as a retry.
func reused(first store.MessageStatus, rec pending) bool {
	return first.RecordSHA256 != nil && rec.fingerprint != nil && !bytes.Equal(first.RecordSHA256, rec.fingerprint)
}

// firstReceived answers duplicates with the time the first call was
// accepted, read from its status row; if the row is not there (the first
// call's status write failed), the retry's own time stands.
func (s *Service) firstReceived(ctx context.Context, recs []pending, outs []outcome, dups []int) {
	if len(dups) == 0 {
		return
	}
	ids := make([]uuid.UUID, len(dups))
	for j, i := range dups {
		ids[j] = uuid.MustParse(outs[i].MessageID)
	}
	found, err := s.store.GetStatuses(ctx, ids)
	if err != nil {
		s.log.WarnContext(ctx, "duplicate: first call's status not readable", "error", err)
		return
	}
	first := make(map[string]store.MessageStatus, len(found))
	for _, st := range found {
		first[st.MessageID.String()] = st
	}
	for _, i := range dups {
		st, ok := first[outs[i].MessageID]
		if !ok {
			continue
		}
		if reused(st, recs[i]) {
			outs[i] = outcome{Entity: outs[i].Entity, Err: errKeyReused(recs[i].idempotencyKey, outs[i].MessageID)}
			continue
		}
		outs[i].ReceivedAt = st.ReceivedAt
	}
}

func acceptedWrite(env *envelopev1.Envelope, entity envelope.Entity) store.StatusWrite {
	return store.StatusWrite{
		MessageID:  uuid.MustParse(env.GetMessageId()),
		Entity:     entity,
		Status:     store.StatusAccepted,
		ReceivedAt: env.GetReceivedAt().AsTime(),
		Source:     env.GetSource(),
		Generation: env.GetReplayCount(),
	}
}
