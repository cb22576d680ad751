package worker

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

// TestDeadLetterStaysInTheRecordsTrace dead-letters a traced record: the
// dead letter keeps the record's traceparent, and the dead-letter span, inside
// the batch span, links to the record's trace as the batch span does.
//
// Not parallel: tracing is process-wide.
func TestDeadLetterStaysInTheRecordsTrace(t *testing.T) {
	rec := testutil.RecordSpans(t)
	f := newFixture(t)
	f.start()
	const traceID, ingestSpan = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	traceparent := "00-" + traceID + "-" + ingestSpan + "-01"

	env, err := envelope.New(envelope.Order, []byte(`{"order_key":"DLQ-TRACE","customer_key":null}`), time.Now(), "test", "")
	if err != nil {
		t.Fatal(err)
	}
	data, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: envelope.Order.IngestSubject(), Data: data, Header: nats.Header{"traceparent": {traceparent}}}
	if _, err := f.js.PublishMsg(t.Context(), msg, jetstream.WithMsgID(env.GetMessageId())); err != nil {
		t.Fatal(err)
	}
	f.waitStatus(env, store.StatusDLQ, 10*time.Second)

	entries := f.dlq()
	if len(entries) != 1 {
		t.Fatalf("DLQ holds %d entries, want 1", len(entries))
	}
	if got := entries[0].Header.Get("traceparent"); got != traceparent {
		t.Errorf("dead letter has traceparent %q, want the record's %q", got, traceparent)
	}

	// The spans end just after the status is written.
	testutil.WaitFor(t, 10*time.Second, func() (bool, error) {
		names := map[string]string{} // span id -> span name
		linked := map[string]bool{}  // span names linking to the record's trace
		var deadLetterParent string
		for _, s := range rec.Ended() {
			names[s.SpanContext().SpanID().String()] = s.Name()
			for _, l := range s.Links() {
				if l.SpanContext.TraceID().String() == traceID && l.SpanContext.SpanID().String() == ingestSpan {
					linked[s.Name()] = true
				}
			}
			if s.Name() == "worker.dead_letter" {
				deadLetterParent = s.Parent().SpanID().String()
			}
		}
		if !linked["worker.store_batch"] || !linked["worker.dead_letter"] {
			return false, errorf("spans linking to the record's trace: %v, want worker.store_batch and worker.dead_letter", linked)
		}
		if names[deadLetterParent] != "worker.store_batch" {
			return false, errorf("worker.dead_letter's parent is %q, want worker.store_batch", names[deadLetterParent])
		}
		return true, nil
	})
}
