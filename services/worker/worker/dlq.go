package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/store"
)

// maxHeaderError bounds the error text put in a header; the full text is in
// the status row.
const maxHeaderError = 2048

// deadLetter moves failures to the dead-letter stream. For each it publishes
// the original envelope with error headers (deduplicated by message id and
// replay generation, so a crash and retry cannot make two entries), then
// records status 'dlq'. It reports per failure whether both happened; only
// then may the caller acknowledge the original.
func (w *Worker) deadLetter(ctx context.Context, fs []failure) []bool {
	done := make([]bool, len(fs))
	if len(fs) == 0 {
		return done
	}
	ctx, span := obs.StartBatchSpan(ctx, "worker.dead_letter", len(fs))
	defer span.End()
	if span.IsRecording() {
		for _, f := range fs {
			obs.LinkNATS(span, f.d.header)
		}
	}
	now := w.now().UTC()
	futures := make([]jetstream.PubAckFuture, len(fs))
	for i, f := range fs {
		msg := &nats.Msg{Subject: f.d.entity.DLQSubject(), Data: f.d.data, Header: nats.Header{}}
		if f.d.entity == "" {
			msg.Subject = "messages.dlq.unknown"
		}
		h := msg.Header
		obs.CopyTraceHeaders(h, f.d.header)
		h.Set(natsx.HeaderError, headerSafe(f.err.Error()))
		h.Set(natsx.HeaderErrorClass, f.class)
		h.Set(natsx.HeaderAttempts, strconv.Itoa(int(f.d.attempt)))
		h.Set(natsx.HeaderSubject, f.d.subject)
		h.Set(natsx.HeaderSequence, strconv.FormatUint(f.d.seq, 10))
		h.Set(natsx.HeaderFailedAt, now.Format(time.RFC3339Nano))
		msgID := fmt.Sprintf("seq:%s:%d", w.topo.Stream, f.d.seq)
		if f.d.env != nil {
			h.Set(natsx.HeaderMessageID, f.d.id.String())
			h.Set(natsx.HeaderReplayCount, strconv.Itoa(int(f.d.env.GetReplayCount())))
			msgID = fmt.Sprintf("%s:%d", f.d.id, f.d.env.GetReplayCount())
		}
		fut, err := w.js.PublishMsgAsync(msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(w.topo.DLQStream()))
		if err != nil {
			w.log.Error("dead-letter publish failed", "message", describe(f), "error", err)
			continue
		}
		futures[i] = fut
	}

	var writes []store.StatusWrite
	var attempts []store.Attempt
	var published []int
	for i, fut := range futures {
		if fut == nil {
			continue
		}
		f := fs[i]
		select {
		case ack := <-fut.Ok():
			if f.d.env == nil {
				done[i] = true // no message id, so no status row to write
				w.log.Error("dead-lettered an unreadable message", "stream_sequence", f.d.seq, "dlq_sequence", ack.Sequence, "error", f.err)
				continue
			}
			st := f.d.statusWrite(store.StatusDLQ)
			st.RetryCount, st.Error, st.ProcessedAt, st.DLQSequence = f.d.attempt, f.err.Error(), now, ack.Sequence
			if f.class == ClassPermanent {
				st.RetryCount = 0
			}
			writes = append(writes, st)
			attempts = append(attempts, attemptOf(f, now))
			published = append(published, i)
		case err := <-fut.Err():
			w.log.Error("dead-letter publish failed", "message", describe(f), "error", err)
		case <-ctx.Done():
			return done
		}
	}
	if len(writes) == 0 {
		return done
	}
	if err := w.store.RecordFailures(ctx, writes, attempts); err != nil {
		w.log.Error("dead-lettered, but status 'dlq' not written; will retry", "error", err, "messages", len(writes))
		return done
	}
	for _, i := range published {
		f := fs[i]
		done[i] = true
		w.metrics.deadLettered.WithLabelValues(string(f.d.entity), f.class).Inc()
		w.log.Warn("moved to dead-letter queue", "message_id", f.d.id, "entity_type", f.d.entity,
			"error_class", f.class, "attempt", f.d.attempt, "error", f.err)
	}
	return done
}

func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxHeaderError {
		s = s[:maxHeaderError] + "…"
	}
	return s
}

// maxDeliveriesAdvisory is the part of JetStream's
// io.nats.jetstream.advisory.v1.max_deliver event nomnom needs.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int32  `json:"deliveries"`
}

// consumePoison settles messages JetStream gave up on: every delivery ended
// without a verdict, because the worker crashed, hung, or was stopped while
// the message was in flight. Each gets one last attempt alone (a healthy
// record that merely shared a batch with a poison one is stored), and the
// one whose last attempt kills the worker too is dead-lettered as poison.
// The advisories are kept in a stream, so none is missed while no worker
// runs.
func (w *Worker) consumePoison(ctx context.Context, cons jetstream.Consumer) error {
	stream, err := w.js.Stream(ctx, w.topo.Stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", w.topo.Stream, err)
	}
	wait := newBackoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		// A fetch bound to ctx ends at once on shutdown.
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		// One at a time: the advisory in hand is the one kept alive.
		batch, err := cons.Fetch(1, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if !sleep(ctx, wait.next()) {
				break
			}
			continue
		}
		wait.reset()
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		cancel()
		for _, m := range msgs {
			err := w.handleAdvisory(context.WithoutCancel(ctx), ctx, stream, m)
			var interrupted *interruptedError
			switch {
			case errors.As(err, &interrupted):
				w.putBack(ctx, m, interrupted.attempt)
			case errors.Is(err, errStopped):
				// Handed back during a database outage; the next worker
				// picks it up.
			case err != nil:
				w.log.Error("message out of deliveries not settled yet; will retry", "error", err)
				_ = m.NakWithDelay(5 * time.Second)
			default:
				_ = m.Ack()
			}
		}
	}
	return nil
}

// errStopped reports that the worker stopped while waiting for PostgreSQL;
// the message was handed back.
var errStopped = errors.New("worker stopped during a database outage")

// interruptedError reports that the worker stopped during a database outage
// after announcing a last attempt, which thus ended without a verdict.
type interruptedError struct{ attempt int32 }

func (e *interruptedError) Error() string {
	return fmt.Sprintf("worker stopped during a database outage in last attempt %d", e.attempt)
}

// putBack replaces an advisory whose last attempt was interrupted by a copy
// saying so, so the next worker makes a new last attempt instead of taking
// the unfinished one for a crash. Should that fail, the advisory is handed
// back as it is.
func (w *Worker) putBack(ctx context.Context, m jetstream.Msg, attempt int32) {
	msg := &nats.Msg{Subject: m.Subject(), Data: m.Data(), Header: nats.Header{}}
	msg.Header.Set(natsx.HeaderInterruptedAttempt, strconv.Itoa(int(attempt)))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := w.js.PublishMsg(pctx, msg, jetstream.WithExpectStream(w.topo.AdvisoryStream())); err != nil {
		w.log.Warn("interrupted last attempt not recorded; the next worker may take it for a crash", "error", err)
		_ = m.Nak()
		return
	}
	// Confirmed, or the original could come back beside its copy and be
	// judged without the note.
	if err := m.DoubleAck(pctx); err != nil {
		w.log.Warn("interrupted last attempt recorded, but its original advisory not acknowledged; it may be judged a crash", "error", err)
	}
}

// handleAdvisory settles the message of one max-deliveries advisory m: it
// stores it in a last attempt of its own, or dead-letters it, then removes it
// from the work queue (which keeps messages its consumer gave up on).
//
// The last attempt is announced first by a 'processing' status one attempt
// past the deliveries; finding that status on a later advisory delivery
// means the last attempt never finished: the worker died on this message,
// so it is poison.
func (w *Worker) handleAdvisory(ctx, stop context.Context, stream jetstream.Stream, m jetstream.Msg) error {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(m.Data(), &adv); err != nil {
		w.log.Error("ignoring unreadable advisory", "error", err)
		return nil
	}
	raw, err := stream.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		w.log.Error("message out of deliveries already gone from the stream (max age or bytes); it cannot be dead-lettered",
			"stream_sequence", adv.StreamSeq)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read message %d: %w", adv.StreamSeq, err)
	}
	defer w.keepAlive([]jetstream.Msg{m})()
	d := &delivery{data: raw.Data, header: raw.Header, subject: raw.Subject, seq: raw.Sequence, attempt: max(adv.Deliveries, 1)}
	d.decodePayload()
	settled := func() error {
		if err := stream.DeleteMsg(ctx, raw.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("settled, but not removed from stream %s: %w", w.topo.Stream, err)
		}
		return nil
	}
	if d.err != nil {
		// Undecodable: the first delivery found that out too, so only the
		// dead-lettering failed then.
		return w.deadLetterLast(ctx, failure{d: d, class: ClassPermanent, err: d.err}, settled)
	}
	st, running, err := w.readStatus(ctx, stop, []jetstream.Msg{m}, d.id)
	if !running {
		return errStopped
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	gen := d.env.GetReplayCount()
	lastAttempt := d.attempt + 1
	interrupted, _ := strconv.Atoi(m.Headers().Get(natsx.HeaderInterruptedAttempt))
	if err == nil && st.Generation > gen {
		// Dead-lettered (its ack lost) and replayed since: the replay
		// carries the record on. Storing this older generation would put
		// the payload the replay may have corrected back.
		return settled()
	}
	if err == nil && st.Generation == gen {
		switch {
		case st.Status.Terminal():
			return settled() // settled on its last delivery; only the ack was lost
		case interrupted > 0 && st.Attempt == int32(interrupted):
			lastAttempt = st.Attempt + 1 // a worker was stopped in the last one; try again
		case st.Attempt >= lastAttempt:
			deliveries := d.attempt
			d.attempt = st.Attempt // the 'dlq' status must outrank the last attempt's 'processing'
			return w.deadLetterLast(ctx, failure{d: d, class: ClassPoison, err: fmt.Errorf(
				"the worker stopped without a verdict on each of %d deliveries and on a last attempt alone: it crashes or hangs processing this message", deliveries)}, settled)
		}
	}

	d.attempt = lastAttempt
	marker := []store.StatusWrite{d.statusWrite(store.StatusProcessing)}
	var markErr error
	if !w.untilAvailable(ctx, stop, []jetstream.Msg{m}, func() error {
		markErr = w.store.WriteStatuses(ctx, marker)
		return markErr
	}) {
		return errStopped
	}
	if markErr != nil {
		return fmt.Errorf("announce the last attempt: %w", markErr)
	}
	if w.opts.BeforeStore != nil {
		w.opts.BeforeStore(d.env)
	}
	var superseded map[uuid.UUID]bool
	var storeErr error
	// No messages to hand back on a stop: the advisory is put back with a
	// note instead (see putBack); keepAlive holds it meanwhile.
	if !w.untilAvailable(ctx, stop, nil, func() error {
		superseded, storeErr = w.store.StoreRecords(ctx, []store.Item{d.item()})
		return storeErr
	}) {
		return &interruptedError{attempt: d.attempt}
	}
	if storeErr != nil {
		class := ClassTransient
		if store.Classify(storeErr) == store.Permanent {
			class = ClassPermanent
		}
		return w.deadLetterLast(ctx, failure{d: d, class: class, err: storeErr}, settled)
	}
	w.metrics.stored(d, superseded[d.id], w.now())
	w.log.Warn("stored in a last attempt after its deliveries ran out", "message_id", d.id, "entity_type", d.entity, "deliveries", adv.Deliveries)
	return settled()
}

// deadLetterLast dead-letters a message out of deliveries, then settles it.
func (w *Worker) deadLetterLast(ctx context.Context, f failure, settled func() error) error {
	if !w.deadLetter(ctx, []failure{f})[0] {
		return errors.New("dead-letter publish or status write failed")
	}
	return settled()
}
