package ingest_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	deadletterv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1/deadletterv1connect"
	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
)

// Records that pass the door (REST checks only JSON shape and entity) and
// fail validation in the worker, so they are dead-lettered on attempt 1.
const (
	badOrder     = `{"order_key":"DLQ-TEST","customer_key":null}`
	fixedOrder   = `{"order_key":"DLQ-TEST","customer_key":"C-9"}`
	badCustomer1 = `{"customer_key":"C-BAD-1","nation_key":-1}`
	badCustomer2 = `{"customer_key":"C-BAD-2","nation_key":-2}`
)

var (
	orderFilter    = &deadletterv1.DeadLetterFilter{EntityType: tpchv1.EntityType_ENTITY_TYPE_ORDER}
	customerFilter = &deadletterv1.DeadLetterFilter{EntityType: tpchv1.EntityType_ENTITY_TYPE_CUSTOMER}
)

// dlqProtocols are the clients the dead-letter tests go through where the
// protocol matters: gRPC over h2c and Connect with protobuf.
func dlqProtocols() []protocol {
	return slices.DeleteFunc(slices.Clone(protocols), func(p protocol) bool {
		return p.name != "grpc" && p.name != "connect"
	})
}

func (p *pipeline) deadLetterClient(proto protocol) deadletterv1connect.DeadLetterServiceClient {
	return deadletterv1connect.NewDeadLetterServiceClient(p.httpClient(proto), p.baseURL, proto.opts...)
}

// deadLetter sends a record over REST and waits until the worker has
// dead-lettered it. Sending one at a time keeps the DLQ order known.
func (p *pipeline) deadLetter(body string) acceptedBody {
	p.t.Helper()
	acc := p.post(body, nil)
	p.waitStatus(acc.MessageID, "dlq")
	return acc
}

// listAll pages through ListDeadLetters with the given page size and
// checks the tokens: each page but the last has one, the last has none.
func listAll(t *testing.T, c deadletterv1connect.DeadLetterServiceClient, f *deadletterv1.DeadLetterFilter, size int32) []*deadletterv1.DeadLetter {
	t.Helper()
	var all []*deadletterv1.DeadLetter
	req := &deadletterv1.ListDeadLettersRequest{Filter: f, PageSize: size}
	for page := 1; ; page++ {
		resp, err := c.ListDeadLetters(t.Context(), connect.NewRequest(req))
		if err != nil {
			t.Fatalf("ListDeadLetters page %d: %v", page, err)
		}
		got := resp.Msg.GetDeadLetters()
		if size > 0 && len(got) > int(size) {
			t.Fatalf("page %d has %d entries, over page_size %d", page, len(got), size)
		}
		all = append(all, got...)
		if resp.Msg.GetNextPageToken() == "" {
			return all
		}
		if len(got) == 0 {
			t.Fatalf("page %d is empty but has next_page_token %q", page, resp.Msg.GetNextPageToken())
		}
		req.PageToken = resp.Msg.GetNextPageToken()
	}
}

func messageIDs(dls []*deadletterv1.DeadLetter) []string {
	out := make([]string, len(dls))
	for i, d := range dls {
		out[i] = d.GetMessageId()
	}
	return out
}

func replayByID(t *testing.T, c deadletterv1connect.DeadLetterServiceClient, id, corrected string) *deadletterv1.ReplayDeadLettersResponse {
	t.Helper()
	resp, err := c.ReplayDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ReplayDeadLettersRequest{
		MessageIds: []string{id}, CorrectedPayload: corrected,
	}))
	if err != nil {
		t.Fatalf("ReplayDeadLetters(%s): %v", id, err)
	}
	return resp.Msg
}

func timestampIn(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(time.Now().Add(d)) }

// TestDeadLetterListAndGet dead-letters an order and two customers, then
// lists them with filters and paging and reads one with its payload.
func TestDeadLetterListAndGet(t *testing.T) {
	t.Parallel()
	for _, proto := range dlqProtocols() {
		t.Run(proto.name, func(t *testing.T) {
			t.Parallel()
			p := startPipeline(t, nil)
			c := p.deadLetterClient(proto)
			order := p.deadLetter(badOrder)
			cust1 := p.deadLetter(badCustomer1)
			cust2 := p.deadLetter(badCustomer2)
			want := []string{order.MessageID, cust1.MessageID, cust2.MessageID}

			all := listAll(t, c, nil, 0)
			if got := messageIDs(all); !slices.Equal(got, want) {
				t.Fatalf("ListDeadLetters = %v, want %v (oldest first)", got, want)
			}
			d := all[0]
			if d.GetEntityType() != tpchv1.EntityType_ENTITY_TYPE_ORDER || d.GetErrorClass() != deadletterv1.ErrorClass_ERROR_CLASS_PERMANENT ||
				d.GetAttempts() != 1 || !strings.Contains(d.GetError(), "customer_key") || d.GetReplayCount() != 0 ||
				d.GetOriginalSubject() != "messages.ingest.order" || d.GetDlqSequence() == 0 {
				t.Errorf("listed order = %v, want a permanent order failure on attempt 1 naming customer_key", d)
			}
			for _, d := range all {
				if d.GetPayload() != "" {
					t.Errorf("listed %s carries its payload %q; only GetDeadLetter should", d.GetMessageId(), d.GetPayload())
				}
			}
			if e := all[1].GetEntityType(); e != tpchv1.EntityType_ENTITY_TYPE_CUSTOMER || !strings.Contains(all[1].GetError(), "nation_key") {
				t.Errorf("listed customer = %v, want a customer failing on nation_key", all[1])
			}

			filters := []struct {
				name   string
				filter *deadletterv1.DeadLetterFilter
				want   []string
			}{
				{"orders", orderFilter, want[:1]},
				{"customers", customerFilter, want[1:]},
				{"products", &deadletterv1.DeadLetterFilter{EntityType: tpchv1.EntityType_ENTITY_TYPE_PRODUCT}, nil},
				{"permanent", &deadletterv1.DeadLetterFilter{ErrorClass: deadletterv1.ErrorClass_ERROR_CLASS_PERMANENT}, want},
				{"transient", &deadletterv1.DeadLetterFilter{ErrorClass: deadletterv1.ErrorClass_ERROR_CLASS_TRANSIENT}, nil},
				{"permanent customers", &deadletterv1.DeadLetterFilter{
					EntityType: tpchv1.EntityType_ENTITY_TYPE_CUSTOMER, ErrorClass: deadletterv1.ErrorClass_ERROR_CLASS_PERMANENT,
				}, want[1:]},
				{"failed in the future", &deadletterv1.DeadLetterFilter{FailedAfter: timestampIn(time.Hour)}, nil},
				{"failed before now", &deadletterv1.DeadLetterFilter{FailedBefore: timestampIn(time.Minute)}, want},
			}
			for _, f := range filters {
				if got := messageIDs(listAll(t, c, f.filter, 0)); !slices.Equal(got, f.want) {
					t.Errorf("filter %s: listed %v, want %v", f.name, got, f.want)
				}
			}

			// Pages of one: exactly three pages, the tokens chain, the last
			// has none.
			req := &deadletterv1.ListDeadLettersRequest{PageSize: 1}
			for i, id := range want {
				resp, err := c.ListDeadLetters(t.Context(), connect.NewRequest(req))
				if err != nil {
					t.Fatalf("page %d: %v", i+1, err)
				}
				got, token := messageIDs(resp.Msg.GetDeadLetters()), resp.Msg.GetNextPageToken()
				if last := i == len(want)-1; !slices.Equal(got, []string{id}) || (token == "") != last {
					t.Fatalf("page %d of %d = %v with next_page_token %q, want [%s] and a token on all but the last page",
						i+1, len(want), got, token, id)
				}
				req.PageToken = token
			}
			if got := messageIDs(listAll(t, c, customerFilter, 1)); !slices.Equal(got, want[1:]) {
				t.Errorf("paging customers by 1 listed %v, want %v", got, want[1:])
			}
			_, err := c.ListDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ListDeadLettersRequest{PageToken: "bogus"}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "page_token") {
				t.Errorf("ListDeadLetters with a made-up token: error = %v, want InvalidArgument naming page_token", err)
			}

			got, err := c.GetDeadLetter(t.Context(), connect.NewRequest(&deadletterv1.GetDeadLetterRequest{MessageId: order.MessageID}))
			if err != nil {
				t.Fatalf("GetDeadLetter: %v", err)
			}
			g := got.Msg.GetDeadLetter()
			received, _ := time.Parse(time.RFC3339Nano, order.Timestamp)
			if g.GetMessageId() != order.MessageID || g.GetPayload() != badOrder || !strings.Contains(g.GetError(), "customer_key") ||
				g.GetOriginalSubject() != "messages.ingest.order" || g.GetOriginalSequence() != 1 ||
				g.GetDlqSequence() != d.GetDlqSequence() || g.GetAttempts() != 1 ||
				g.GetErrorClass() != deadletterv1.ErrorClass_ERROR_CLASS_PERMANENT {
				t.Errorf("GetDeadLetter = %v, want the order's payload %q from messages.ingest.order seq 1", g, badOrder)
			}
			if !g.GetReceivedAt().AsTime().Equal(received) || g.GetFailedAt() == nil || g.GetFailedAt().AsTime().Before(received) {
				t.Errorf("received_at %v, failed_at %v: want received_at %v and failed_at no earlier",
					g.GetReceivedAt().AsTime(), g.GetFailedAt().AsTime(), received)
			}
		})
	}
}

// TestReplayDeadLetterWithCorrection fixes a dead-lettered order: the
// corrected record goes back through the worker in generation 1 and is
// stored once.
func TestReplayDeadLetterWithCorrection(t *testing.T) {
	t.Parallel()
	for _, proto := range dlqProtocols() {
		t.Run(proto.name, func(t *testing.T) {
			t.Parallel()
			p := startPipeline(t, nil)
			c := p.deadLetterClient(proto)
			id := p.deadLetter(badOrder).MessageID
			// Without a worker, the replayed message waits in the stream and
			// its 'accepted' can be seen.
			p.worker.stop(t)

			resp := replayByID(t, c, id, fixedOrder)
			if o := resp.GetOutcomes(); len(o) != 1 || o[0].GetMessageId() != id || !o[0].GetReplayed() ||
				o[0].GetReplayCount() != 1 || o[0].GetError() != "" || resp.GetReplayed() != 1 || resp.GetFailed() != 0 || resp.GetDryRun() {
				t.Fatalf("ReplayDeadLetters = %v, want %s replayed with replay_count 1", resp, id)
			}
			if st := p.waitStatus(id, "accepted"); st.ReplayCount != 1 {
				t.Errorf("status after replay = %+v, want accepted in generation 1", st)
			}
			if n := p.streamMsgs(p.cfg.DLQStream()); n != 0 {
				t.Errorf("%s holds %d messages after the replay, want 0", p.cfg.DLQStream(), n)
			}
			_, err := c.GetDeadLetter(t.Context(), connect.NewRequest(&deadletterv1.GetDeadLetterRequest{MessageId: id}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("GetDeadLetter after the replay: error = %v, want NotFound", err)
			}
			if n := p.publishedCount(); n != 2 {
				t.Errorf("%s holds %d messages, want 2 (original and replay)", p.cfg.NATSStream, n)
			}
			raw, env := p.lastIngested(envelope.Order)
			if string(env.GetPayload()) != fixedOrder || env.GetReplayCount() != 1 || env.GetMessageId() != id ||
				raw.Header.Get(jetstream.MsgIDHeader) != id+":replay:1" {
				t.Errorf("republished envelope %v with Nats-Msg-Id %q, want %s with the corrected payload, replay_count 1, Nats-Msg-Id %s:replay:1",
					env, raw.Header.Get(jetstream.MsgIDHeader), id, id)
			}

			p.startWorker()
			if st := p.waitStatus(id, "completed"); st.ReplayCount != 1 || st.ErrorMessage != nil {
				t.Errorf("status = %+v, want completed in generation 1 without error", st)
			}
			if n := p.count("SELECT count(*) FROM orders WHERE order_key = 'DLQ-TEST' AND customer_key = 'C-9' AND message_id = $1", id); n != 1 {
				t.Errorf("%d orders rows DLQ-TEST with customer C-9 written by %s, want 1", n, id)
			}

			// Repeating the replay finds nothing to do and stores nothing twice.
			_, err = c.ReplayDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ReplayDeadLettersRequest{
				MessageIds: []string{id}, CorrectedPayload: fixedOrder,
			}))
			if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), id) {
				t.Errorf("second replay: error = %v, want NotFound naming %s", err, id)
			}
			if n := p.publishedCount(); n != 2 {
				t.Errorf("%s holds %d messages after the second replay, want still 2", p.cfg.NATSStream, n)
			}
			if n := p.count("SELECT count(*) FROM orders WHERE order_key = 'DLQ-TEST'"); n != 1 {
				t.Errorf("%d orders rows for DLQ-TEST, want 1", n)
			}
			if n := p.count("SELECT count(*) FROM message_status WHERE message_id = $1 AND status = 'completed' AND generation = 1", id); n != 1 {
				t.Errorf("status row of %s is not completed in generation 1", id)
			}
		})
	}
}

// TestReplayByFilter replays the customers without fixing them: they fail
// again and come back in generation 1, and the order is left alone.
func TestReplayByFilter(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	c := p.deadLetterClient(protocols[0])
	order := p.deadLetter(badOrder).MessageID
	cust := []string{p.deadLetter(badCustomer1).MessageID, p.deadLetter(badCustomer2).MessageID}
	before := listAll(t, c, orderFilter, 0)

	resp, err := c.ReplayDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ReplayDeadLettersRequest{Filter: customerFilter}))
	if err != nil {
		t.Fatalf("ReplayDeadLetters(customers): %v", err)
	}
	var replayed []string
	for _, o := range resp.Msg.GetOutcomes() {
		if o.GetReplayed() && o.GetReplayCount() == 1 && o.GetError() == "" {
			replayed = append(replayed, o.GetMessageId())
		}
	}
	if !slices.Equal(replayed, cust) || resp.Msg.GetReplayed() != 2 || resp.Msg.GetFailed() != 0 {
		t.Fatalf("ReplayDeadLetters(customers) = %v, want %v replayed with replay_count 1", resp.Msg, cust)
	}
	for _, id := range cust {
		if st := p.waitStatus(id, "dlq"); st.ReplayCount != 1 || st.ErrorMessage == nil || !strings.Contains(*st.ErrorMessage, "nation_key") {
			t.Errorf("customer %s after replay = %+v, want dlq again in generation 1 naming nation_key", id, st)
		}
	}

	// The worker may fail the two customers in either order.
	after := listAll(t, c, nil, 0)
	if got := messageIDs(after); len(got) != 3 || got[0] != order || !slices.Equal(slices.Sorted(slices.Values(got[1:])), slices.Sorted(slices.Values(cust))) {
		t.Fatalf("dead letters after the replay = %v, want the order, then both customers again", got)
	}
	if !slices.EqualFunc(after[:1], before, func(a, b *deadletterv1.DeadLetter) bool {
		return a.GetDlqSequence() == b.GetDlqSequence() && a.GetReplayCount() == 0
	}) {
		t.Errorf("the order's entry changed: %v, was %v", after[0], before[0])
	}
	for _, d := range after[1:] {
		if d.GetReplayCount() != 1 || d.GetErrorClass() != deadletterv1.ErrorClass_ERROR_CLASS_PERMANENT || d.GetAttempts() != 1 {
			t.Errorf("customer entry %v, want replay_count 1, permanent, attempt 1", d)
		}
	}
	if st := p.waitStatus(order, "dlq"); st.ReplayCount != 0 {
		t.Errorf("order status = %+v, want untouched in generation 0", st)
	}
	if n := p.publishedCount(); n != 5 {
		t.Errorf("%s holds %d messages, want 5 (3 + 2 replays)", p.cfg.NATSStream, n)
	}
	if n := p.streamMsgs(p.cfg.DLQStream()); n != 3 {
		t.Errorf("%s holds %d messages, want 3", p.cfg.DLQStream(), n)
	}
}

// TestReplayDryRun reports what a replay would do and changes nothing.
func TestReplayDryRun(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	c := p.deadLetterClient(protocols[2])
	order := p.deadLetter(badOrder).MessageID
	cust := p.deadLetter(badCustomer1).MessageID

	requests := map[string]*deadletterv1.ReplayDeadLettersRequest{
		"all":                   {DryRun: true, All: true},
		"by id with correction": {DryRun: true, MessageIds: []string{order}, CorrectedPayload: fixedOrder},
		"by filter":             {DryRun: true, Filter: customerFilter},
	}
	wantIDs := map[string][]string{"all": {order, cust}, "by id with correction": {order}, "by filter": {cust}}
	for name, req := range requests {
		resp, err := c.ReplayDeadLetters(t.Context(), connect.NewRequest(req))
		if err != nil {
			t.Fatalf("%s: ReplayDeadLetters: %v", name, err)
		}
		var ids []string
		for _, o := range resp.Msg.GetOutcomes() {
			if o.GetReplayed() && o.GetReplayCount() == 1 {
				ids = append(ids, o.GetMessageId())
			}
		}
		if !resp.Msg.GetDryRun() || !slices.Equal(ids, wantIDs[name]) || int(resp.Msg.GetReplayed()) != len(ids) {
			t.Errorf("%s: dry run = %v, want %v reported as replayable with replay_count 1", name, resp.Msg, wantIDs[name])
		}
	}
	if n := p.publishedCount(); n != 2 {
		t.Errorf("%s holds %d messages after dry runs, want still 2", p.cfg.NATSStream, n)
	}
	if n := p.streamMsgs(p.cfg.DLQStream()); n != 2 {
		t.Errorf("%s holds %d messages after dry runs, want still 2", p.cfg.DLQStream(), n)
	}
	for _, id := range []string{order, cust} {
		if st := p.waitStatus(id, "dlq"); st.ReplayCount != 0 {
			t.Errorf("%s after dry runs = %+v, want dlq in generation 0", id, st)
		}
	}
}

// TestReplayLimit replays a never-fixed record until DLQ_MAX_REPLAYS stops it.
func TestReplayLimit(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, func(c *config.Config) { c.DLQMaxReplays = 1 })
	c := p.deadLetterClient(protocols[0])
	id := p.deadLetter(badOrder).MessageID

	if resp := replayByID(t, c, id, ""); resp.GetReplayed() != 1 {
		t.Fatalf("first replay = %v, want replayed", resp)
	}
	if st := p.waitStatus(id, "dlq"); st.ReplayCount != 1 {
		t.Fatalf("status after the first replay = %+v, want dlq again in generation 1", st)
	}

	resp := replayByID(t, c, id, "")
	if o := resp.GetOutcomes(); len(o) != 1 || o[0].GetReplayed() || !strings.Contains(o[0].GetError(), "DLQ_MAX_REPLAYS=1") ||
		resp.GetFailed() != 1 || resp.GetReplayed() != 0 {
		t.Errorf("second replay = %v, want refused with an error naming DLQ_MAX_REPLAYS=1", resp)
	}
	got, err := c.GetDeadLetter(t.Context(), connect.NewRequest(&deadletterv1.GetDeadLetterRequest{MessageId: id}))
	if err != nil || got.Msg.GetDeadLetter().GetReplayCount() != 1 {
		t.Errorf("GetDeadLetter after the refused replay = %v, %v; want the entry, replay_count 1", got, err)
	}
	if n := p.publishedCount(); n != 2 {
		t.Errorf("%s holds %d messages, want 2 (the refused replay publishes nothing)", p.cfg.NATSStream, n)
	}
	if st := p.waitStatus(id, "dlq"); st.ReplayCount != 1 {
		t.Errorf("status = %+v, want dlq in generation 1", st)
	}
}

// TestPurgeDeadLetters deletes entries by id and by filter, after a dry run.
func TestPurgeDeadLetters(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	c := p.deadLetterClient(protocols[2])
	order := p.deadLetter(badOrder).MessageID
	cust := []string{p.deadLetter(badCustomer1).MessageID, p.deadLetter(badCustomer2).MessageID}
	dlq := p.cfg.DLQStream()

	purge := func(req *deadletterv1.PurgeDeadLettersRequest) *deadletterv1.PurgeDeadLettersResponse {
		t.Helper()
		resp, err := c.PurgeDeadLetters(t.Context(), connect.NewRequest(req))
		if err != nil {
			t.Fatalf("PurgeDeadLetters(%v): %v", req, err)
		}
		return resp.Msg
	}

	dry := purge(&deadletterv1.PurgeDeadLettersRequest{DryRun: true, All: true})
	if !dry.GetDryRun() || dry.GetPurged() != 3 || !slices.Equal(dry.GetMessageIds(), []string{order, cust[0], cust[1]}) {
		t.Errorf("dry-run purge = %v, want all three reported", dry)
	}
	if n := p.streamMsgs(dlq); n != 3 {
		t.Fatalf("%s holds %d messages after a dry run, want still 3", dlq, n)
	}

	if resp := purge(&deadletterv1.PurgeDeadLettersRequest{MessageIds: []string{order}}); resp.GetDryRun() ||
		resp.GetPurged() != 1 || !slices.Equal(resp.GetMessageIds(), []string{order}) {
		t.Errorf("purge by id = %v, want %s purged", resp, order)
	}
	if got := messageIDs(listAll(t, c, nil, 0)); !slices.Equal(got, cust) || p.streamMsgs(dlq) != 2 {
		t.Errorf("after purging the order, %s lists %v, want %v", dlq, got, cust)
	}
	_, err := c.GetDeadLetter(t.Context(), connect.NewRequest(&deadletterv1.GetDeadLetterRequest{MessageId: order}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("GetDeadLetter of a purged entry: error = %v, want NotFound", err)
	}
	_, err = c.PurgeDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.PurgeDeadLettersRequest{MessageIds: []string{order}}))
	if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), order) {
		t.Errorf("purging it again: error = %v, want NotFound naming %s", err, order)
	}

	if resp := purge(&deadletterv1.PurgeDeadLettersRequest{Filter: customerFilter}); resp.GetPurged() != 2 ||
		!slices.Equal(resp.GetMessageIds(), cust) {
		t.Errorf("purge by filter = %v, want %v", resp, cust)
	}
	if n := p.streamMsgs(dlq); n != 0 {
		t.Errorf("%s holds %d messages after purging everything, want 0", dlq, n)
	}
	if resp := purge(&deadletterv1.PurgeDeadLettersRequest{Filter: customerFilter}); resp.GetPurged() != 0 || len(resp.GetMessageIds()) != 0 {
		t.Errorf("purge of an empty queue = %v, want nothing", resp)
	}
}

// TestDeadLetterBadInput checks the codes of refused requests, and that a
// refused replay republishes nothing and keeps the entry.
func TestDeadLetterBadInput(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	id := p.deadLetter(badOrder).MessageID
	done := p.post(`{"customer_key":"C-OK"}`, nil).MessageID
	p.waitStatus(done, "completed")
	unknown := uuid.NewString()

	type call func(context.Context, deadletterv1connect.DeadLetterServiceClient) error
	get := func(id string) call {
		return func(ctx context.Context, c deadletterv1connect.DeadLetterServiceClient) error {
			_, err := c.GetDeadLetter(ctx, connect.NewRequest(&deadletterv1.GetDeadLetterRequest{MessageId: id}))
			return err
		}
	}
	replay := func(req *deadletterv1.ReplayDeadLettersRequest) call {
		return func(ctx context.Context, c deadletterv1connect.DeadLetterServiceClient) error {
			_, err := c.ReplayDeadLetters(ctx, connect.NewRequest(req))
			return err
		}
	}
	purge := func(req *deadletterv1.PurgeDeadLettersRequest) call {
		return func(ctx context.Context, c deadletterv1connect.DeadLetterServiceClient) error {
			_, err := c.PurgeDeadLetters(ctx, connect.NewRequest(req))
			return err
		}
	}
	tests := []struct {
		name     string
		call     call
		wantCode connect.Code
		wantErr  string
	}{
		{"get an unknown id", get(unknown), connect.CodeNotFound, unknown},
		{"get a completed message", get(done), connect.CodeNotFound, done},
		{"replay an unknown id", replay(&deadletterv1.ReplayDeadLettersRequest{MessageIds: []string{unknown}}), connect.CodeNotFound, unknown},
		{"replay a known and an unknown id", replay(&deadletterv1.ReplayDeadLettersRequest{MessageIds: []string{id, unknown}}), connect.CodeNotFound, unknown},
		{"purge an unknown id", purge(&deadletterv1.PurgeDeadLettersRequest{MessageIds: []string{unknown}}), connect.CodeNotFound, unknown},
		{"purge a known and an unknown id", purge(&deadletterv1.PurgeDeadLettersRequest{MessageIds: []string{id, unknown}}), connect.CodeNotFound, unknown},
		{"get a malformed id", get("not-a-uuid"), connect.CodeInvalidArgument, "message_id"},
		{"replay a malformed id", replay(&deadletterv1.ReplayDeadLettersRequest{MessageIds: []string{"not-a-uuid"}}), connect.CodeInvalidArgument, "message_ids"},
		{"purge a malformed id", purge(&deadletterv1.PurgeDeadLettersRequest{MessageIds: []string{id, "not-a-uuid"}}), connect.CodeInvalidArgument, "message_ids"},
		{"corrected payload not JSON", replay(&deadletterv1.ReplayDeadLettersRequest{
			MessageIds: []string{id}, CorrectedPayload: `{"order_key":`,
		}), connect.CodeInvalidArgument, "corrected_payload"},
		{"corrected payload over the record limit", replay(&deadletterv1.ReplayDeadLettersRequest{
			MessageIds: []string{id}, CorrectedPayload: `{"order_key":"DLQ-TEST","customer_key":"C-9","comment":"` + strings.Repeat("x", 1<<20) + `"}`,
		}), connect.CodeInvalidArgument, "over the"},
		{"corrected payload a JSON array", replay(&deadletterv1.ReplayDeadLettersRequest{
			MessageIds: []string{id}, CorrectedPayload: `[` + fixedOrder + `]`,
		}), connect.CodeInvalidArgument, "corrected_payload"},
		{"corrected payload for two ids", replay(&deadletterv1.ReplayDeadLettersRequest{
			MessageIds: []string{id, unknown}, CorrectedPayload: fixedOrder,
		}), connect.CodeInvalidArgument, "exactly one message_id"},
		{"corrected payload with a filter", replay(&deadletterv1.ReplayDeadLettersRequest{
			Filter: orderFilter, CorrectedPayload: fixedOrder,
		}), connect.CodeInvalidArgument, "exactly one message_id"},
		{"replay by ids and filter", replay(&deadletterv1.ReplayDeadLettersRequest{
			MessageIds: []string{id}, Filter: orderFilter,
		}), connect.CodeInvalidArgument, "not both"},
		{"purge by ids and filter", purge(&deadletterv1.PurgeDeadLettersRequest{
			MessageIds: []string{id}, Filter: orderFilter,
		}), connect.CodeInvalidArgument, "not both"},
		{"replay with no selection", replay(&deadletterv1.ReplayDeadLettersRequest{}), connect.CodeInvalidArgument, "all: true"},
		{"replay with an empty filter", replay(&deadletterv1.ReplayDeadLettersRequest{Filter: &deadletterv1.DeadLetterFilter{}}), connect.CodeInvalidArgument, "all: true"},
		{"purge with no selection", purge(&deadletterv1.PurgeDeadLettersRequest{}), connect.CodeInvalidArgument, "all: true"},
		{"purge with ids and all", purge(&deadletterv1.PurgeDeadLettersRequest{MessageIds: []string{id}, All: true}), connect.CodeInvalidArgument, "not both"},
		{"filter on an undefined entity", replay(&deadletterv1.ReplayDeadLettersRequest{
			Filter: &deadletterv1.DeadLetterFilter{EntityType: 99},
		}), connect.CodeInvalidArgument, "entity_type"},
	}
	for _, proto := range dlqProtocols() {
		c := p.deadLetterClient(proto)
		for _, tt := range tests {
			t.Run(proto.name+"/"+tt.name, func(t *testing.T) {
				err := tt.call(t.Context(), c)
				if connect.CodeOf(err) != tt.wantCode || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error = %v, want %v naming %q", err, tt.wantCode, tt.wantErr)
				}
			})
		}
	}
	if n := p.publishedCount(); n != 2 {
		t.Errorf("%s holds %d messages, want 2: refused replays must publish nothing", p.cfg.NATSStream, n)
	}
	if got := messageIDs(listAll(t, p.deadLetterClient(protocols[2]), nil, 0)); !slices.Equal(got, []string{id}) {
		t.Errorf("dead letters after refused calls = %v, want still [%s]", got, id)
	}
	if st := p.waitStatus(id, "dlq"); st.ReplayCount != 0 {
		t.Errorf("status = %+v, want dlq in generation 0", st)
	}
}

// TestConnectJSONRefusesUnknownNames: over Connect JSON (curl, scripts) a
// misspelt field or an enum value the API does not have is refused with
// its name, never dropped. Dropped, a misspelt "dryrun" turns a dry run
// into a purge and an unknown entity filter matches every entry.
func TestConnectJSONRefusesUnknownNames(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	id := p.deadLetter(badOrder).MessageID
	json := http.Header{"Content-Type": {"application/json"}}
	for _, tt := range []struct {
		path, body, wantErr string
	}{
		{"/nomnom.deadletter.v1.DeadLetterService/PurgeDeadLetters", `{"filter":{"entity_type":"ENTITY_TYPE_ORDER"},"dryrun":true}`, `unknown field \"dryrun\"`},
		{"/nomnom.deadletter.v1.DeadLetterService/PurgeDeadLetters", `{"filter":{"entity_type":"ENTITY_TYPE_WIDGET"},"dry_run":true}`, "ENTITY_TYPE_WIDGET"},
		{"/nomnom.deadletter.v1.DeadLetterService/ReplayDeadLetters", `{"filtr":{"entity_type":"ENTITY_TYPE_ORDER"}}`, `unknown field \"filtr\"`},
		{"/nomnom.status.v1.StatusService/ListStatuses", `{"statuses":["processing"]}`, "processing"},
		{"/nomnom.ingest.v1.IngestService/Ingest", `{"record":{"customer":{"customer_key":"C-1"},"idempotency_kye":"k"}}`, `unknown field \"idempotency_kye\"`},
	} {
		code, body := p.do(http.MethodPost, tt.path, json, tt.body)
		if code != http.StatusBadRequest || !strings.Contains(string(body), tt.wantErr) || !strings.Contains(string(body), "invalid_argument") {
			t.Errorf("POST %s %s = %d %s, want 400 invalid_argument naming %s", tt.path, tt.body, code, body, tt.wantErr)
		}
	}
	// Correct names still work, snake_case as in the protos or camelCase.
	code, body := p.do(http.MethodPost, "/nomnom.deadletter.v1.DeadLetterService/PurgeDeadLetters", json,
		`{"filter":{"entity_type":"ENTITY_TYPE_ORDER"},"dryRun":true}`)
	if code != http.StatusOK || !strings.Contains(string(body), id) {
		t.Errorf("dry-run purge = %d %s, want 200 naming %s", code, body, id)
	}
	if got := messageIDs(listAll(t, p.deadLetterClient(protocols[2]), nil, 0)); !slices.Equal(got, []string{id}) {
		t.Errorf("dead letters after refused calls = %v, want still [%s]", got, id)
	}
	if n := p.publishedCount(); n != 1 {
		t.Errorf("%s holds %d messages, want 1: refused calls publish nothing", p.cfg.NATSStream, n)
	}
}

// TestDeadLetterAuth checks ADMIN_TOKENS: only an admin token may call the
// DeadLetterService; an ingest token is known but not allowed.
func TestDeadLetterAuth(t *testing.T) {
	t.Parallel()
	p := startIngest(t, func(c *config.Config) {
		c.AdminTokens = []string{"s3cret"}
		c.IngestTokens = []string{"ingest-only"}
	})
	tests := []struct {
		name   string
		header string
		want   connect.Code // 0: OK
	}{
		{"no token", "", connect.CodeUnauthenticated},
		{"not a bearer token", "Basic czNjcmV0", connect.CodeUnauthenticated},
		{"wrong token", "Bearer s3cre", connect.CodeUnauthenticated},
		{"ingest token", "Bearer ingest-only", connect.CodePermissionDenied},
		{"admin token", "Bearer s3cret", 0},
	}
	for _, proto := range dlqProtocols() {
		c := p.deadLetterClient(proto)
		for _, tt := range tests {
			t.Run(proto.name+"/"+tt.name, func(t *testing.T) {
				list := connect.NewRequest(&deadletterv1.ListDeadLettersRequest{})
				purge := connect.NewRequest(&deadletterv1.PurgeDeadLettersRequest{DryRun: true, All: true})
				if tt.header != "" {
					list.Header().Set("Authorization", tt.header)
					purge.Header().Set("Authorization", tt.header)
				}
				_, err := c.ListDeadLetters(t.Context(), list)
				if connect.CodeOf(err) != tt.want && !(tt.want == 0 && err == nil) {
					t.Errorf("ListDeadLetters: error = %v, want code %v", err, tt.want)
				}
				_, err = c.PurgeDeadLetters(t.Context(), purge)
				if connect.CodeOf(err) != tt.want && !(tt.want == 0 && err == nil) {
					t.Errorf("PurgeDeadLetters: error = %v, want code %v", err, tt.want)
				}
			})
		}
	}
}

// TestDeadLetterWithoutAdminTokens: with no ADMIN_TOKENS the admin API
// answers loopback clients only. The harness listens on 127.0.0.1; a
// non-loopback client is made by listening on the host's own non-loopback
// address and calling it from here, when the host has one.
func TestDeadLetterWithoutAdminTokens(t *testing.T) {
	t.Parallel()
	t.Run("loopback", func(t *testing.T) {
		t.Parallel()
		p := startIngest(t, nil)
		for _, proto := range dlqProtocols() {
			if _, err := p.deadLetterClient(proto).ListDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ListDeadLettersRequest{})); err != nil {
				t.Errorf("%s: ListDeadLetters from 127.0.0.1: %v, want OK", proto.name, err)
			}
		}
	})
	t.Run("not loopback", func(t *testing.T) {
		t.Parallel()
		ip := nonLoopbackIP(t)
		p := startIngest(t, func(c *config.Config) { c.HTTPAddr = net.JoinHostPort(ip, "0") })
		for _, proto := range dlqProtocols() {
			_, err := p.deadLetterClient(proto).ListDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ListDeadLettersRequest{}))
			if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "loopback") {
				t.Errorf("%s: ListDeadLetters from %s: error = %v, want PermissionDenied explaining loopback", proto.name, ip, err)
			}
			// An admin token does not help while none is configured.
			req := connect.NewRequest(&deadletterv1.ListDeadLettersRequest{})
			req.Header().Set("Authorization", "Bearer anything")
			if _, err := p.deadLetterClient(proto).ListDeadLetters(t.Context(), req); connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Errorf("%s: with a token: error = %v, want PermissionDenied", proto.name, err)
			}
		}
		// The ingest API stays open to everyone.
		p.post(`{"customer_key":"C-REMOTE"}`, nil)
	})
}

// nonLoopbackIP returns an IPv4 address of this host that is not loopback,
// or skips the test.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skipf("cannot list interface addresses: %v", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this host has no non-loopback IPv4 address to call the server from")
	return ""
}

// TestReplayIsSafeToRepeat covers a replay that stopped half-way: the
// republish was acknowledged but the dead-letter entry was not deleted.
// The entry is put back as it was (JetStream would drop an identical
// Nats-Msg-Id, so it gets another); repeating the replay must not store the
// message twice, and must remove the entry.
func TestReplayIsSafeToRepeat(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	c := p.deadLetterClient(protocols[0])
	id := p.deadLetter(badOrder).MessageID
	dlq, err := p.js.Stream(t.Context(), p.cfg.DLQStream())
	if err != nil {
		t.Fatal(err)
	}
	entry, err := dlq.GetLastMsgForSubject(t.Context(), envelope.Order.DLQSubject())
	if err != nil {
		t.Fatal(err)
	}

	replayByID(t, c, id, fixedOrder)
	p.waitStatus(id, "completed")

	// The lost delete.
	header := nats.Header{}
	for k, v := range entry.Header {
		header[k] = slices.Clone(v)
	}
	if _, err := p.js.PublishMsg(t.Context(), &nats.Msg{Subject: entry.Subject, Header: header, Data: entry.Data},
		jetstream.WithMsgID("lost-delete-"+id)); err != nil {
		t.Fatalf("put the entry back: %v", err)
	}
	if got := messageIDs(listAll(t, c, nil, 0)); !slices.Equal(got, []string{id}) {
		t.Fatalf("dead letters = %v, want the put-back entry of %s", got, id)
	}

	t.Run("repeat by id", func(t *testing.T) {
		_, err := c.ReplayDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ReplayDeadLettersRequest{
			MessageIds: []string{id}, CorrectedPayload: fixedOrder,
		}))
		if err != nil {
			t.Fatalf("repeated replay: %v", err)
		}
	})

	resp, err := c.ReplayDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ReplayDeadLettersRequest{Filter: orderFilter}))
	if err != nil {
		t.Fatalf("repeated replay by filter: %v", err)
	}
	if o := resp.Msg.GetOutcomes(); len(o) > 1 || (len(o) == 1 && (o[0].GetMessageId() != id || !o[0].GetReplayed())) {
		t.Errorf("repeated replay = %v, want %s replayed (or nothing left)", resp.Msg, id)
	}
	if n := p.streamMsgs(p.cfg.DLQStream()); n != 0 {
		t.Errorf("%s holds %d messages, want the entry removed", p.cfg.DLQStream(), n)
	}
	// The republish was deduplicated: the message is in the stream once per
	// generation and stored once.
	if n := p.publishedCount(); n != 2 {
		t.Errorf("%s holds %d messages, want 2 (original and one replay)", p.cfg.NATSStream, n)
	}
	if st := p.waitStatus(id, "completed"); st.ReplayCount != 1 {
		t.Errorf("status = %+v, want completed in generation 1", st)
	}
	if n := p.count("SELECT count(*) FROM orders WHERE order_key = 'DLQ-TEST' AND customer_key = 'C-9'"); n != 1 {
		t.Errorf("%d orders rows for DLQ-TEST with C-9, want 1", n)
	}
	if n := p.count("SELECT count(*) FROM message_status WHERE message_id = $1", id); n != 1 {
		t.Errorf("%d status rows for %s, want 1", n, id)
	}
}

// TestReplayOfAnEntryReplayedLongAgo: a replay republished a record and
// reset its status, but the entry's removal failed; much later, after
// JetStream has forgotten the republish, the operator replays again. The
// stale entry must only be removed: republished, its old payload would
// overwrite what the first replay stored.
func TestReplayOfAnEntryReplayedLongAgo(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{5, 0} {
		t.Run(fmt.Sprintf("DLQ_MAX_REPLAYS=%d", limit), func(t *testing.T) {
			t.Parallel()
			testReplayOfAnEntryReplayedLongAgo(t, limit)
		})
	}
}

// testReplayOfAnEntryReplayedLongAgo runs the test with a replay limit;
// at 0, the stale entry is one the limit would refuse, and it must be
// removed all the same.
func testReplayOfAnEntryReplayedLongAgo(t *testing.T, limit int) {
	p := startPipeline(t, func(c *config.Config) { c.DLQMaxReplays = limit })
	c := p.deadLetterClient(protocols[0])
	id := p.deadLetter(badOrder).MessageID
	// The first replay's effect, its republish long forgotten by JetStream:
	// the status row is in generation 1 and the entry is still there.
	st := p.waitStatus(id, "dlq")
	receivedAt, err := time.Parse(time.RFC3339Nano, st.ReceivedAt)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.New(p.db).WriteStatuses(t.Context(), []store.StatusWrite{{
		MessageID: uuid.MustParse(id), Entity: envelope.Order, Status: store.StatusCompleted,
		ReceivedAt: receivedAt, ProcessedAt: time.Now(), Generation: 1, Attempt: 1,
	}}); err != nil {
		t.Fatal(err)
	}

	resp, err := c.ReplayDeadLetters(t.Context(), connect.NewRequest(&deadletterv1.ReplayDeadLettersRequest{Filter: orderFilter}))
	if err != nil {
		t.Fatal(err)
	}
	if o := resp.Msg.GetOutcomes(); len(o) != 1 || o[0].GetMessageId() != id || !o[0].GetReplayed() {
		t.Errorf("replay = %v, want %s settled", resp.Msg, id)
	}
	if n := p.streamMsgs(p.cfg.DLQStream()); n != 0 {
		t.Errorf("%s holds %d entries, want the stale one removed", p.cfg.DLQStream(), n)
	}
	if n := p.publishedCount(); n != 1 {
		t.Errorf("%s holds %d messages, want 1: the stale entry must not be republished", p.cfg.NATSStream, n)
	}
	if st := p.waitStatus(id, "completed"); st.ReplayCount != 1 {
		t.Errorf("status = %+v, want still completed in generation 1", st)
	}
}
