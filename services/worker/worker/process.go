package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/store"
)

// Error classes recorded with failed attempts and dead letters.
const (
	ClassPermanent = "permanent"
	ClassTransient = "transient"
	ClassPoison    = "poison"
)

// delivery is one fetched message and what was learned decoding it.
type delivery struct {
	msg     jetstream.Msg // nil for a message read back for a poison advisory
	data    []byte
	header  nats.Header // carries the record's trace context, if traced
	subject string
	env     *envelopev1.Envelope // nil when the envelope is unreadable
	id      uuid.UUID
	entity  envelope.Entity
	attempt int32 // JetStream delivery count, from 1
	seq     uint64
	record  envelope.Record
	err     error // why the payload can never be stored
}

func (w *Worker) decode(m jetstream.Msg) *delivery {
	d := &delivery{msg: m, data: m.Data(), header: m.Headers(), subject: m.Subject(), attempt: 1}
	if meta, err := m.Metadata(); err == nil {
		d.attempt, d.seq = int32(meta.NumDelivered), meta.Sequence.Stream
	}
	d.decodePayload()
	return d
}

func (d *delivery) decodePayload() {
	env, err := envelope.Unmarshal(d.data)
	if err != nil {
		d.err = err
		d.entity, _ = envelope.EntityFromSubject(d.subject)
		return
	}
	d.env, d.id = env, uuid.MustParse(env.GetMessageId())
	d.entity, _ = envelope.FromProto(env.GetEntityType())
	d.record, d.err = envelope.Decode(d.entity, env.GetPayload())
}

func (d *delivery) statusWrite(status store.Status) store.StatusWrite {
	return store.StatusWrite{
		MessageID:  d.id,
		Entity:     d.entity,
		Status:     status,
		ReceivedAt: d.env.GetReceivedAt().AsTime(),
		RetryCount: max(d.attempt-1, 0),
		Source:     d.env.GetSource(),
		Generation: d.env.GetReplayCount(),
		Attempt:    d.attempt,
		// Whichever write creates the row records the fingerprint.
		RecordSHA256: d.env.GetRecordSha256(),
	}
}

func (d *delivery) item() store.Item {
	return store.Item{
		MessageID: d.id, Entity: d.entity, ReceivedAt: d.env.GetReceivedAt().AsTime(),
		Source: d.env.GetSource(), Generation: d.env.GetReplayCount(), Attempt: d.attempt,
		Record: d.record, RecordSHA256: d.env.GetRecordSha256(),
	}
}

// failure is a delivery that could not be stored on this attempt.
type failure struct {
	d     *delivery
	class string
	err   error
}

// process stores one fetched batch. ctx is not cancelled by shutdown (the
// batch is finished); stop is, and ends a pause for an unreachable database.
func (w *Worker) process(ctx, stop context.Context, msgs []jetstream.Msg) {
	start := time.Now()
	ctx, span := obs.StartBatchSpan(ctx, "worker.store_batch", len(msgs))
	defer span.End()
	if span.IsRecording() { // no per-message work while tracing is off
		for _, m := range msgs {
			obs.LinkNATS(span, m.Headers())
		}
	}
	ds := make([]*delivery, len(msgs))
	var good []*delivery
	var failures []failure
	for i, m := range msgs {
		d := w.decode(m)
		ds[i] = d
		if d.env != nil && w.opts.BeforeStore != nil {
			w.opts.BeforeStore(d.env)
		}
		if d.err != nil {
			failures = append(failures, failure{d: d, class: ClassPermanent, err: d.err})
			continue
		}
		good = append(good, d)
	}

	// A redelivery (alone in its group) may be of a record that was
	// dead-lettered, its ack lost, and replayed since: the replay carries
	// it on, and storing the older generation would put back the payload
	// the replay may have corrected.
	if d := ds[0]; len(ds) == 1 && d.attempt > 1 && d.err == nil {
		st, running, err := w.readStatus(ctx, stop, msgs, d.id)
		if !running {
			return
		}
		if err == nil && st.Generation > d.env.GetReplayCount() {
			w.log.Info("dropping a redelivery of a replayed record's older generation", "message_id", d.id,
				"generation", d.env.GetReplayCount(), "status_generation", st.Generation)
			_ = d.msg.Ack()
			return
		}
	}

	// 'processing' is visible while the batch is stored. It is written
	// alongside the store transaction rather than before it: status writes
	// are order-free, so whichever commits first, the row ends 'completed'.
	var processing []store.StatusWrite
	for _, d := range ds {
		if d.env != nil {
			processing = append(processing, d.statusWrite(store.StatusProcessing))
		}
	}
	processed := make(chan struct{})
	go func() {
		defer close(processed)
		if err := w.store.WriteStatuses(ctx, processing); err != nil {
			w.log.Debug("status 'processing' not written", "error", err, "messages", len(processing))
		}
	}()
	defer func() { <-processed }()

	if len(good) > 0 {
		var superseded map[uuid.UUID]bool
		var storeErr error
		ok := w.untilAvailable(ctx, stop, msgs, func() error {
			superseded, storeErr = w.store.StoreRecords(ctx, items(good))
			return storeErr
		})
		if !ok {
			return
		}
		if storeErr != nil {
			// Something in the batch fails: store record by record so one
			// bad record does not hold back its neighbours.
			var stored []*delivery
			stored, superseded, failures, ok = w.isolate(ctx, stop, msgs, good, failures)
			if !ok {
				return
			}
			good = stored
		}
		for _, d := range good {
			if err := d.msg.Ack(); err != nil {
				w.log.Warn("ack failed; the message will be redelivered and stored again idempotently", "message_id", d.id, "error", err)
			}
			w.metrics.stored(d, superseded[d.id], w.now())
		}
	}
	w.fail(ctx, failures)
	elapsed := time.Since(start)
	w.metrics.batchSeconds.Observe(elapsed.Seconds())
	w.log.Debug("batch done", "messages", len(msgs), "stored", len(good), "failed", len(failures), "duration", elapsed)
}

// keepAlive tells JetStream every third of AckWait that the messages are still
// being worked on, so a slow statement or a stalled connection does not get
// the messages redelivered (and an attempt spent) under the worker's feet.
// The returned func stops it.
func (w *Worker) keepAlive(msgs []jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(max(w.topo.AckWait/3, 100*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

func items(ds []*delivery) []store.Item {
	out := make([]store.Item, len(ds))
	for i, d := range ds {
		out[i] = d.item()
	}
	return out
}

// isolate stores records one at a time after their batch failed, returning
// the stored ones and adding the rest to failures. It reports false if the
// worker stopped during a database outage (the messages were handed back).
func (w *Worker) isolate(ctx, stop context.Context, msgs []jetstream.Msg, ds []*delivery, failures []failure) (stored []*delivery, superseded map[uuid.UUID]bool, _ []failure, ok bool) {
	superseded = map[uuid.UUID]bool{}
	for _, d := range ds {
		var s map[uuid.UUID]bool
		var err error
		if !w.untilAvailable(ctx, stop, msgs, func() error {
			s, err = w.store.StoreRecords(ctx, []store.Item{d.item()})
			return err
		}) {
			return nil, nil, nil, false
		}
		if err != nil {
			class := ClassTransient
			if store.Classify(err) == store.Permanent {
				class = ClassPermanent
			}
			failures = append(failures, failure{d: d, class: class, err: err})
			continue
		}
		stored = append(stored, d)
		for id := range s {
			superseded[id] = true
		}
	}
	return stored, superseded, failures, true
}

// readStatus reads a message's status row, waiting while PostgreSQL is
// unavailable as untilAvailable does; running is false if the worker
// stopped meanwhile (msgs were handed back).
func (w *Worker) readStatus(ctx, stop context.Context, msgs []jetstream.Msg, id uuid.UUID) (st store.MessageStatus, running bool, err error) {
	running = w.untilAvailable(ctx, stop, msgs, func() error {
		st, err = w.store.GetStatus(ctx, id)
		return err
	})
	return st, running, err
}

// untilAvailable runs op, and while PostgreSQL is unreachable or refuses
// every write (a read-only standby after a failover, a full disk) keeps the
// batch's messages alive (InProgress does not count as a delivery) and
// retries with backoff. It returns op's last error for the caller's failure
// handling once the database answers, and false if the worker is stopping
// during an outage (the messages are then handed back to JetStream).
func (w *Worker) untilAvailable(ctx, stop context.Context, msgs []jetstream.Msg, op func() error) bool {
	wait := newBackoff(100*time.Millisecond, min(5*time.Second, w.topo.AckWait/3))
	retriedReachable := false
	var pausedAt time.Time
	for {
		err := op()
		if err == nil || store.Classify(err) != store.Unavailable {
			if !pausedAt.IsZero() {
				w.log.Info("postgres available again: resuming", "paused_for", time.Since(pausedAt).Round(time.Millisecond), "messages", len(msgs))
			}
			return true
		}
		if store.NeedsConfirming(err) && w.store.Ping(ctx) == nil {
			// Reachable: one more try, in case the connection dropped just
			// then; failing again is not an outage but this op's failure.
			if retriedReachable {
				return true
			}
			retriedReachable = true
			continue
		}
		retriedReachable = false
		if pausedAt.IsZero() {
			pausedAt = time.Now()
			w.paused.Add(1)
			defer w.paused.Add(-1)
			w.log.Warn("postgres unavailable: pausing consumption, no attempts are spent", "error", err, "messages", len(msgs))
		}
		for _, m := range msgs {
			_ = m.InProgress()
		}
		if !sleep(stop, wait.next()) {
			for _, m := range msgs {
				_ = m.Nak()
			}
			return false
		}
	}
}

// fail settles failed deliveries: permanent ones and transient ones out of
// attempts go to the dead-letter queue; the rest are retried with backoff.
func (w *Worker) fail(ctx context.Context, failures []failure) {
	if len(failures) == 0 {
		return
	}
	var dead []failure
	var writes []store.StatusWrite
	var attempts []store.Attempt
	var retry []failure
	now := w.now()
	for _, f := range failures {
		if f.class == ClassPermanent || int(f.d.attempt) >= w.topo.MaxDeliver {
			dead = append(dead, f)
			continue
		}
		retry = append(retry, f)
		st := f.d.statusWrite(store.StatusFailed)
		st.RetryCount, st.Error = f.d.attempt, f.err.Error()
		writes = append(writes, st)
		attempts = append(attempts, attemptOf(f, now))
	}
	if len(retry) > 0 {
		if err := w.store.RecordFailures(ctx, writes, attempts); err != nil {
			w.log.Warn("could not record failed attempts", "error", err, "messages", len(retry))
		}
		for _, f := range retry {
			delay := w.retryDelay(int(f.d.attempt))
			w.log.Warn("store failed; will retry", "message_id", f.d.id, "entity_type", f.d.entity,
				"attempt", f.d.attempt, "max_deliver", w.topo.MaxDeliver, "retry_in", delay, "error", f.err)
			_ = f.d.msg.NakWithDelay(delay)
			w.metrics.retries.WithLabelValues(string(f.d.entity)).Inc()
		}
	}
	for i, ok := range w.deadLetter(ctx, dead) {
		d := dead[i].d
		if ok {
			_ = d.msg.Ack()
		} else {
			// Try again later: the dead-letter publish is deduplicated, so a
			// second try cannot make a second entry.
			_ = d.msg.NakWithDelay(w.retryDelay(int(d.attempt)))
		}
	}
}

func attemptOf(f failure, at time.Time) store.Attempt {
	return store.Attempt{
		MessageID: f.d.id, Generation: f.d.env.GetReplayCount(), Attempt: f.d.attempt,
		Error: f.err.Error(), ErrorClass: f.class, FailedAt: at,
	}
}

var errNoEnvelope = errors.New("envelope unreadable")

func describe(f failure) string {
	if f.d.env == nil {
		return fmt.Sprintf("%s (stream sequence %d)", errNoEnvelope, f.d.seq)
	}
	return f.d.id.String()
}
