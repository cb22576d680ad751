package ingest_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	ingestv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1"
	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
)

// publish puts an envelope on the ingest stream the way ingest does, but
// without ingest, so a test decides when (and whether) 'accepted' is written.
func (p *pipeline) publish(env *envelopev1.Envelope) {
	p.t.Helper()
	data, err := envelope.Marshal(env)
	if err != nil {
		p.t.Fatal(err)
	}
	entity, err := envelope.FromProto(env.GetEntityType())
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.js.Publish(context.Background(), entity.IngestSubject(), data); err != nil {
		p.t.Fatalf("publish %s: %v", env.GetMessageId(), err)
	}
}

func newEnvelope(t *testing.T, entity envelope.Entity, payload string, receivedAt time.Time) *envelopev1.Envelope {
	t.Helper()
	env, err := envelope.New(entity, []byte(payload), receivedAt, "ordering-test", "")
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestAcceptedAfterCompleted is the plan's race end to end: the worker's
// 'completed' lands before ingest's 'accepted', and the row stays completed.
func TestAcceptedAfterCompleted(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)

	t.Run("the worker stores a message ingest has not recorded yet", func(t *testing.T) {
		env := newEnvelope(t, envelope.Order, orderJSON("RACE-DIRECT", 1), time.Now().UTC())
		p.publish(env)
		done := p.waitStatus(env.GetMessageId(), "completed")

		// Now the write ingest makes after a publish, arriving last.
		err := store.New(p.db).WriteStatuses(t.Context(), []store.StatusWrite{{
			MessageID:  uuid.MustParse(env.GetMessageId()),
			Entity:     envelope.Order,
			Status:     store.StatusAccepted,
			ReceivedAt: env.GetReceivedAt().AsTime(),
			Source:     env.GetSource(),
		}})
		if err != nil {
			t.Fatalf("write accepted: %v", err)
		}
		after := p.waitStatus(env.GetMessageId(), "completed")
		if *after.ProcessedAt != *done.ProcessedAt {
			t.Errorf("processed_at changed from %s to %s", *done.ProcessedAt, *after.ProcessedAt)
		}
	})

	t.Run("ingest records accepted for a message already completed", func(t *testing.T) {
		// A repeat under an idempotency key makes ingest write 'accepted'
		// for the original message, which the worker has completed.
		key := http.Header{"Idempotency-Key": {"race-repeat"}}
		first := p.post(orderJSON("RACE-REPEAT", 1), key)
		done := p.waitStatus(first.MessageID, "completed")
		again := p.post(orderJSON("RACE-REPEAT", 1), key)
		if !again.Duplicate || again.MessageID != first.MessageID {
			t.Fatalf("repeat answered %+v, want a duplicate of %s", again, first.MessageID)
		}
		// The 202 is sent after ingest's status write returned.
		code, data := p.do(http.MethodGet, "/ingest/status/"+first.MessageID, nil, "")
		st := decode[statusBody](t, data)
		if code != http.StatusOK || st.Status != "completed" || st.ProcessedAt == nil || *st.ProcessedAt != *done.ProcessedAt {
			t.Errorf("status after a late accepted = %d %+v, want still completed at %s", code, st, *done.ProcessedAt)
		}
	})
}

// TestNewerRecordWins sends two versions of one order in the wrong order:
// the older one (earlier received_at) is processed after the newer one. The
// table keeps the newer data and line items; the older message still ends
// completed, noting it was superseded.
func TestNewerRecordWins(t *testing.T) {
	t.Parallel()
	// One fetch loop, so two waiting messages are fetched as one batch.
	p := startPipeline(t, func(c *config.Config) { c.WorkerConcurrency = 1 })
	order := func(key, customer string, lines int) string {
		return strings.Replace(orderJSON(key, lines), `"customer_key":"CUST-001"`, fmt.Sprintf(`"customer_key":%q`, customer), 1)
	}
	tests := []struct {
		name string
		// deliver publishes newer, then older, and returns once both are stored.
		deliver func(t *testing.T, newer, older *envelopev1.Envelope)
	}{
		{
			name: "older in a later batch",
			deliver: func(t *testing.T, newer, older *envelopev1.Envelope) {
				p.publish(newer)
				p.waitStatus(newer.GetMessageId(), "completed")
				p.publish(older)
				p.waitStatus(older.GetMessageId(), "completed")
			},
		},
		{
			name: "older behind newer in one batch",
			deliver: func(t *testing.T, newer, older *envelopev1.Envelope) {
				// With no worker running both wait in the stream and are
				// fetched together.
				p.worker.stop(t)
				p.publish(newer)
				p.publish(older)
				p.startWorker()
				p.waitStatus(newer.GetMessageId(), "completed")
				p.waitStatus(older.GetMessageId(), "completed")
			},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := fmt.Sprintf("NEWER-WINS-%d", i)
			t0 := time.Now().UTC()
			older := newEnvelope(t, envelope.Order, order(key, "CUST-OLD", 3), t0)
			newer := newEnvelope(t, envelope.Order, order(key, "CUST-NEW", 1), t0.Add(time.Second))
			tt.deliver(t, newer, older)

			var customer, writer string
			err := p.db.QueryRow(t.Context(), "SELECT customer_key, message_id::text FROM orders WHERE order_key = $1", key).Scan(&customer, &writer)
			if err != nil {
				t.Fatalf("orders row: %v", err)
			}
			if customer != "CUST-NEW" || writer != newer.GetMessageId() {
				t.Errorf("orders row has %s from %s, want CUST-NEW from the newer %s", customer, writer, newer.GetMessageId())
			}
			if n := p.count("SELECT count(*) FROM order_line_items WHERE order_key = $1", key); n != 1 {
				t.Errorf("%d line items, want the newer order's 1", n)
			}
			_, data := p.do(http.MethodGet, "/ingest/status/"+older.GetMessageId(), nil, "")
			if st := decode[statusBody](t, data); st.ErrorMessage == nil || *st.ErrorMessage != store.SupersededNote {
				t.Errorf("older message status = %s, want completed with the superseded note", data)
			}
			_, data = p.do(http.MethodGet, "/ingest/status/"+newer.GetMessageId(), nil, "")
			if st := decode[statusBody](t, data); st.ErrorMessage != nil {
				t.Errorf("newer message status = %s, want completed without a note", data)
			}
		})
	}
}

// TestLaterRecordInACallWins: versions of one record sent in one call, each
// with its own idempotency key (so their message ids are hashes, in no
// order), are stored in call order: the last one sent is the one kept.
func TestLaterRecordInACallWins(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	var recs []*ingestv1.Record
	for i := range 8 {
		rec := &ingestv1.Record{
			Kind:           &ingestv1.Record_Customer{Customer: &tpchv1.Customer{CustomerKey: "IN-CALL", Name: fmt.Sprintf("version %d", i)}},
			IdempotencyKey: fmt.Sprintf("in-call-%d", i),
		}
		recs = append(recs, rec)
	}
	resp, err := p.ingestClient(protocols[0]).IngestBatch(t.Context(), connect.NewRequest(&ingestv1.IngestBatchRequest{Records: recs}))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Msg.GetResults() {
		p.waitStatus(r.GetMessageId(), "completed")
	}
	var name string
	if err := p.db.QueryRow(t.Context(), "SELECT name FROM customers WHERE customer_key = 'IN-CALL'").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if name != "version 7" {
		t.Errorf("customers row holds %q, want the last one sent, %q", name, "version 7")
	}
}
