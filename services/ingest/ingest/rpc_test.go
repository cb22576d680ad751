package ingest_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1/ingestv1connect"
	statusv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1/statusv1connect"
	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

func typedOrder(key string) *tpchv1.Order {
	return &tpchv1.Order{
		OrderKey: key, CustomerKey: "CUST-RPC", OrderStatus: "O", TotalPrice: 99.5, OrderDate: "2026-02-01",
		LineItems: []*tpchv1.LineItem{
			{LineNumber: 1, PartKey: "P-1", Quantity: 1, ExtendedPrice: 40},
			{LineNumber: 2, PartKey: "P-2", Quantity: 3, ExtendedPrice: 59.5},
		},
	}
}

func orderRecord(o *tpchv1.Order) *ingestv1.Record {
	return &ingestv1.Record{Kind: &ingestv1.Record_Order{Order: o}}
}

func customerRecord(key string) *ingestv1.Record {
	return &ingestv1.Record{Kind: &ingestv1.Record_Customer{Customer: &tpchv1.Customer{CustomerKey: key, Name: "Customer " + key}}}
}

func rawRecord(json string, entity tpchv1.EntityType) *ingestv1.Record {
	return &ingestv1.Record{Kind: &ingestv1.Record_Raw{Raw: &ingestv1.RawRecord{Json: json, EntityType: entity}}}
}

// watch follows WatchStatus until the server ends the stream after a
// terminal status, and returns every status it sent.
func watch(t *testing.T, client statusv1connect.StatusServiceClient, id string) []statusv1.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), settleTimeout)
	defer cancel()
	stream, err := client.WatchStatus(ctx, connect.NewRequest(&statusv1.WatchStatusRequest{MessageId: id}))
	if err != nil {
		t.Fatalf("WatchStatus(%s): %v", id, err)
	}
	defer stream.Close()
	var seen []statusv1.Status
	for stream.Receive() {
		seen = append(seen, stream.Msg().GetStatus().GetStatus())
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("WatchStatus(%s) ended with %v after %v", id, err, seen)
	}
	return seen
}

// waitTerminal polls GetStatus until every id is completed or dead-lettered.
func waitTerminal(t *testing.T, client statusv1connect.StatusServiceClient, ids ...string) {
	t.Helper()
	testutil.WaitFor(t, settleTimeout, func() (bool, error) {
		resp, err := client.BatchGetStatus(t.Context(), connect.NewRequest(&statusv1.BatchGetStatusRequest{MessageIds: ids}))
		if err != nil {
			return false, err
		}
		for _, st := range resp.Msg.GetStatuses() {
			if s := st.GetStatus(); s != statusv1.Status_STATUS_COMPLETED && s != statusv1.Status_STATUS_DLQ {
				return false, fmt.Errorf("%s is %s", st.GetMessageId(), s)
			}
		}
		return len(resp.Msg.GetStatuses()) == len(ids), fmt.Errorf("%d of %d statuses known", len(resp.Msg.GetStatuses()), len(ids))
	})
}

// TestRPCIngestAndStatus drives every IngestService and StatusService call
// through each protocol the port speaks: gRPC over h2c, gRPC-Web, Connect
// with protobuf and Connect with JSON.
func TestRPCIngestAndStatus(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			ctx := t.Context()
			ing, st := p.ingestClient(proto), p.statusClient(proto)
			published := p.publishedCount()

			// Ingest a typed order and watch it to the end.
			key := "RPC-" + proto.name
			resp, err := ing.Ingest(ctx, connect.NewRequest(&ingestv1.IngestRequest{
				Record: &ingestv1.Record{Kind: &ingestv1.Record_Order{Order: typedOrder(key)}, Source: "rpc-test"},
			}))
			if err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			id := resp.Msg.GetMessageId()
			if _, err := uuid.Parse(id); err != nil || resp.Msg.GetEntityType() != tpchv1.EntityType_ENTITY_TYPE_ORDER ||
				resp.Msg.GetDuplicate() || resp.Msg.GetReceivedAt() == nil {
				t.Errorf("Ingest answered %v, want a new order message", resp.Msg)
			}
			seen := watch(t, st, id)
			if len(seen) == 0 || seen[len(seen)-1] != statusv1.Status_STATUS_COMPLETED || !slices.IsSorted(seen) {
				t.Errorf("WatchStatus sent %v, want a forward progression ending in COMPLETED", seen)
			}
			got, err := st.GetStatus(ctx, connect.NewRequest(&statusv1.GetStatusRequest{MessageId: id}))
			if err != nil {
				t.Fatalf("GetStatus: %v", err)
			}
			if s := got.Msg.GetStatus(); s.GetStatus() != statusv1.Status_STATUS_COMPLETED || s.GetProcessedAt() == nil ||
				s.GetSource() != "rpc-test" || s.GetEntityType() != tpchv1.EntityType_ENTITY_TYPE_ORDER || s.GetMessageId() != id {
				t.Errorf("GetStatus = %v, want completed order from rpc-test with processed_at", s)
			}
			if n := p.count("SELECT count(*) FROM order_line_items WHERE order_key = $1", key); n != 2 {
				t.Errorf("order %s has %d line items, want 2", key, n)
			}

			// A batch with a bad record: the neighbours are accepted.
			bad := typedOrder(key + "-BAD")
			bad.TotalPrice = -1
			batch, err := ing.IngestBatch(ctx, connect.NewRequest(&ingestv1.IngestBatchRequest{Records: []*ingestv1.Record{
				orderRecord(typedOrder(key + "-B1")), orderRecord(bad), customerRecord(key + "-C1"),
			}}))
			if err != nil {
				t.Fatalf("IngestBatch: %v", err)
			}
			res := batch.Msg.GetResults()
			if batch.Msg.GetAccepted() != 2 || batch.Msg.GetFailed() != 1 || len(res) != 3 {
				t.Fatalf("IngestBatch = %v, want 2 accepted and 1 failed", batch.Msg)
			}
			if res[0].GetMessageId() == "" || res[2].GetMessageId() == "" || res[2].GetEntityType() != tpchv1.EntityType_ENTITY_TYPE_CUSTOMER {
				t.Errorf("good records' results = %v, %v", res[0], res[2])
			}
			if res[1].GetMessageId() != "" || !strings.Contains(res[1].GetError(), "total_price") || res[1].GetIndex() != 1 {
				t.Errorf("bad record's result = %v, want index 1 and an error naming total_price", res[1])
			}

			// A client stream, mixing raw and typed records.
			stream := ing.IngestStream(ctx)
			for _, rec := range []*ingestv1.Record{
				rawRecord(`{"part_key":"`+key+`-P1","name":"nut"}`, tpchv1.EntityType_ENTITY_TYPE_PRODUCT),
				customerRecord(key + "-C2"),
				rawRecord(`[1,2]`, 0),
			} {
				if err := stream.Send(&ingestv1.IngestStreamRequest{Record: rec}); err != nil {
					t.Fatalf("IngestStream send: %v", err)
				}
			}
			sresp, err := stream.CloseAndReceive()
			if err != nil {
				t.Fatalf("IngestStream: %v", err)
			}
			sres := sresp.Msg.GetResults()
			if sresp.Msg.GetAccepted() != 2 || sresp.Msg.GetFailed() != 1 || len(sres) != 3 ||
				sres[0].GetEntityType() != tpchv1.EntityType_ENTITY_TYPE_PRODUCT ||
				sres[2].GetIndex() != 2 || !strings.Contains(sres[2].GetError(), "not a JSON object") {
				t.Fatalf("IngestStream = %v, want a product, a customer and an error at index 2", sresp.Msg)
			}

			if n := p.publishedCount() - published; n != 5 {
				t.Errorf("%d messages published, want 5 (1 + 2 + 2)", n)
			}
			ids := []string{res[0].GetMessageId(), res[2].GetMessageId(), sres[0].GetMessageId(), sres[1].GetMessageId()}
			waitTerminal(t, st, ids...)

			// BatchGetStatus answers in the order asked and names the unknown.
			unknown := uuid.NewString()
			bg, err := st.BatchGetStatus(ctx, connect.NewRequest(&statusv1.BatchGetStatusRequest{
				MessageIds: []string{ids[1], unknown, ids[0]},
			}))
			if err != nil {
				t.Fatalf("BatchGetStatus: %v", err)
			}
			if s := bg.Msg.GetStatuses(); len(s) != 2 || s[0].GetMessageId() != ids[1] || s[1].GetMessageId() != ids[0] ||
				s[0].GetStatus() != statusv1.Status_STATUS_COMPLETED || !slices.Equal(bg.Msg.GetNotFound(), []string{unknown}) {
				t.Errorf("BatchGetStatus = %v, want %s and %s completed, %s not found", bg.Msg, ids[1], ids[0], unknown)
			}

			// Status errors carry the right codes.
			_, err = st.GetStatus(ctx, connect.NewRequest(&statusv1.GetStatusRequest{MessageId: unknown}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("GetStatus(unknown) error = %v, want NotFound", err)
			}
			_, err = st.GetStatus(ctx, connect.NewRequest(&statusv1.GetStatusRequest{MessageId: "not-a-uuid"}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "message_id") {
				t.Errorf("GetStatus(not-a-uuid) error = %v, want InvalidArgument naming message_id", err)
			}
			_, err = st.BatchGetStatus(ctx, connect.NewRequest(&statusv1.BatchGetStatusRequest{MessageIds: []string{ids[0], "nope"}}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("BatchGetStatus with a malformed id: error = %v, want InvalidArgument", err)
			}
		})
	}
}

// TestRPCRejectsInvalidRecords checks that typed records are validated
// synchronously: InvalidArgument naming the field, and nothing published.
func TestRPCRejectsInvalidRecords(t *testing.T) {
	t.Parallel()
	p := startIngest(t, nil)
	order := func(change func(*tpchv1.Order)) *ingestv1.Record {
		o := typedOrder("INVALID-1")
		change(o)
		return orderRecord(o)
	}
	tests := []struct {
		name    string
		record  *ingestv1.Record
		wantErr string
	}{
		{"negative total_price", order(func(o *tpchv1.Order) { o.TotalPrice = -1 }), "total_price"},
		{"duplicate line numbers", order(func(o *tpchv1.Order) { o.LineItems[1].LineNumber = 1 }), "line_number must be unique"},
		{"missing order_key", order(func(o *tpchv1.Order) { o.OrderKey = "" }), "order_key"},
		{"order_date not YYYY-MM-DD", order(func(o *tpchv1.Order) { o.OrderDate = "01/02/2026" }), "order_date"},
		{"line item without part_key", order(func(o *tpchv1.Order) { o.LineItems[0].PartKey = "" }), "line_items[0].part_key"},
		{"discount over 1", order(func(o *tpchv1.Order) { o.LineItems[1].Discount = 1.5 }), "line_items[1].discount"},
		{"customer without key", &ingestv1.Record{Kind: &ingestv1.Record_Customer{Customer: &tpchv1.Customer{Name: "x"}}}, "customer_key"},
		{"no record", nil, "record is required"},
		{"record without a kind", &ingestv1.Record{}, "one of order, customer, product or raw"},
		{"raw JSON that is not an object", rawRecord(`[{"order_key":"A"}]`, 0), "not a JSON object"},
		{"raw JSON of no known entity", rawRecord(`{"name":"x"}`, 0), "cannot infer"},
		{"source longer than the status column", &ingestv1.Record{
			Kind: &ingestv1.Record_Customer{Customer: &tpchv1.Customer{CustomerKey: "C-LONG-SOURCE"}}, Source: strings.Repeat("s", 256),
		}, "source"},
		{"idempotency key over 200 characters", &ingestv1.Record{
			Kind: &ingestv1.Record_Customer{Customer: &tpchv1.Customer{CustomerKey: "C-LONG-KEY"}}, IdempotencyKey: strings.Repeat("k", 201),
		}, "idempotency_key"},
	}
	for _, proto := range protocols {
		ing := p.ingestClient(proto)
		for _, tt := range tests {
			t.Run(proto.name+"/"+tt.name, func(t *testing.T) {
				_, err := ing.Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: tt.record}))
				if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Ingest error = %v, want InvalidArgument naming %q", err, tt.wantErr)
				}
				if n := p.publishedCount(); n != 0 {
					t.Errorf("%d messages published, want none", n)
				}
			})
		}
	}
	if n := p.count("SELECT count(*) FROM message_status"); n != 0 {
		t.Errorf("%d status rows written for rejected records, want none", n)
	}
}

// TestRPCIdempotencyKey sends records twice under one idempotency key: the
// repeat is answered with the original message and not published again.
func TestRPCIdempotencyKey(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	ing := p.ingestClient(protocols[0])
	ingest := func(rec *ingestv1.Record) *ingestv1.IngestResponse {
		t.Helper()
		resp, err := ing.Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: rec}))
		if err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		return resp.Msg
	}
	withKey := func(rec *ingestv1.Record, key string) *ingestv1.Record {
		rec.IdempotencyKey = key
		return rec
	}

	first := ingest(withKey(orderRecord(typedOrder("IDEM-1")), "order-idem-1"))
	second := ingest(withKey(orderRecord(typedOrder("IDEM-1")), "order-idem-1"))
	if first.GetDuplicate() || !second.GetDuplicate() || second.GetMessageId() != first.GetMessageId() ||
		!second.GetReceivedAt().AsTime().Equal(first.GetReceivedAt().AsTime()) {
		t.Errorf("answers %v then %v, want the second a duplicate of the first", first, second)
	}
	if n := p.publishedCount(); n != 1 {
		t.Errorf("stream holds %d messages after a repeat, want 1", n)
	}

	// Two records with one key in the same batch: one is published.
	batch, err := ing.IngestBatch(t.Context(), connect.NewRequest(&ingestv1.IngestBatchRequest{Records: []*ingestv1.Record{
		withKey(customerRecord("IDEM-C"), "customer-idem-1"),
		withKey(customerRecord("IDEM-C"), "customer-idem-1"),
	}}))
	if err != nil {
		t.Fatalf("IngestBatch: %v", err)
	}
	r := batch.Msg.GetResults()
	if len(r) != 2 || r[0].GetMessageId() == "" || r[0].GetMessageId() != r[1].GetMessageId() ||
		r[0].GetDuplicate() == r[1].GetDuplicate() {
		t.Errorf("IngestBatch results = %v, want one message id, one of them a duplicate", r)
	}
	if n := p.publishedCount(); n != 2 {
		t.Errorf("stream holds %d messages, want 2", n)
	}

	p.waitStatus(first.GetMessageId(), "completed")
	p.waitStatus(r[0].GetMessageId(), "completed")
	if n := p.count("SELECT count(*) FROM message_status"); n != 2 {
		t.Errorf("%d status rows, want 2", n)
	}
}

// TestRPCListStatusesAndStats pages through statuses with filters and checks
// the per-status, per-entity counts.
func TestRPCListStatusesAndStats(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	ing, st := p.ingestClient(protocols[0]), p.statusClient(protocols[0])
	ingest := func(rec *ingestv1.Record) *ingestv1.IngestResponse {
		t.Helper()
		resp, err := ing.Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: rec}))
		if err != nil {
			t.Fatalf("Ingest: %v", err)
		}
		return resp.Msg
	}
	var customers []*ingestv1.IngestResponse // in the order sent, so oldest first
	var all []string
	for i := range 5 {
		r := ingest(customerRecord(fmt.Sprintf("LIST-C%d", i)))
		customers = append(customers, r)
		all = append(all, r.GetMessageId())
	}
	for i := range 2 {
		all = append(all, ingest(&ingestv1.Record{Kind: &ingestv1.Record_Product{Product: &tpchv1.Product{PartKey: fmt.Sprintf("LIST-P%d", i)}}}).GetMessageId())
	}
	dead := ingest(rawRecord(`{"order_key":"LIST-DLQ","customer_key":null}`, 0)).GetMessageId()
	all = append(all, dead)
	waitTerminal(t, st, all...)

	// Five completed customers, two per page, newest first.
	req := &statusv1.ListStatusesRequest{
		Statuses:   []statusv1.Status{statusv1.Status_STATUS_COMPLETED},
		EntityType: tpchv1.EntityType_ENTITY_TYPE_CUSTOMER,
		PageSize:   2,
	}
	var listed []string
	var sizes []int
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatalf("pagination does not end: pages %v", sizes)
		}
		resp, err := st.ListStatuses(t.Context(), connect.NewRequest(req))
		if err != nil {
			t.Fatalf("ListStatuses page %d: %v", page, err)
		}
		sizes = append(sizes, len(resp.Msg.GetStatuses()))
		for _, s := range resp.Msg.GetStatuses() {
			listed = append(listed, s.GetMessageId())
		}
		if resp.Msg.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.Msg.GetNextPageToken()
	}
	var want []string
	for i := len(customers) - 1; i >= 0; i-- {
		want = append(want, customers[i].GetMessageId())
	}
	if !slices.Equal(sizes, []int{2, 2, 1}) || !slices.Equal(listed, want) {
		t.Errorf("pages of %v listed %v, want pages of [2 2 1] listing %v (newest first)", sizes, listed, want)
	}

	// A time window: customers received at or after the third one.
	resp, err := st.ListStatuses(t.Context(), connect.NewRequest(&statusv1.ListStatusesRequest{
		EntityType:    tpchv1.EntityType_ENTITY_TYPE_CUSTOMER,
		ReceivedAfter: customers[2].GetReceivedAt(),
		ReceivedBefore: timestamppb.New(
			customers[4].GetReceivedAt().AsTime().Add(time.Microsecond)),
	}))
	if err != nil {
		t.Fatalf("ListStatuses by time: %v", err)
	}
	if got := len(resp.Msg.GetStatuses()); got != 3 || resp.Msg.GetNextPageToken() != "" {
		t.Errorf("time window listed %d statuses (next %q), want 3", got, resp.Msg.GetNextPageToken())
	}

	// Only the dead letter is in status dlq.
	resp, err = st.ListStatuses(t.Context(), connect.NewRequest(&statusv1.ListStatusesRequest{
		Statuses: []statusv1.Status{statusv1.Status_STATUS_DLQ},
	}))
	if err != nil {
		t.Fatalf("ListStatuses dlq: %v", err)
	}
	if s := resp.Msg.GetStatuses(); len(s) != 1 || s[0].GetMessageId() != dead || len(s[0].GetAttempts()) != 1 {
		t.Errorf("dlq listing = %v, want only %s with its one attempt", s, dead)
	}

	_, err = st.ListStatuses(t.Context(), connect.NewRequest(&statusv1.ListStatusesRequest{PageToken: "forged"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("forged page token: error = %v, want InvalidArgument", err)
	}
	_, err = st.ListStatuses(t.Context(), connect.NewRequest(&statusv1.ListStatusesRequest{PageSize: 5000}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "page_size") {
		t.Errorf("page_size 5000: error = %v, want InvalidArgument naming page_size", err)
	}

	stats, err := st.GetStats(t.Context(), connect.NewRequest(&statusv1.GetStatsRequest{}))
	if err != nil {
		t.Fatalf("GetStats: %v", err)
	}
	counts := map[string]int64{}
	for _, c := range stats.Msg.GetCounts() {
		counts[c.GetStatus().String()+"/"+c.GetEntityType().String()] += c.GetCount()
	}
	wantCounts := map[string]int64{
		"STATUS_COMPLETED/ENTITY_TYPE_CUSTOMER": 5,
		"STATUS_COMPLETED/ENTITY_TYPE_PRODUCT":  2,
		"STATUS_DLQ/ENTITY_TYPE_ORDER":          1,
	}
	if fmt.Sprint(counts) != fmt.Sprint(wantCounts) || stats.Msg.GetTotal() != 8 {
		t.Errorf("GetStats = %v total %d, want %v total 8", counts, stats.Msg.GetTotal(), wantCounts)
	}
}

// TestHealthAndReflection checks grpc.health.v1 and server reflection on the
// ingest port, as grpc-health-probe, Kubernetes and grpcurl use them.
func TestHealthAndReflection(t *testing.T) {
	t.Parallel()
	p := startIngest(t, nil)
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			health := grpchealth.NewClient(p.httpClient(proto), p.baseURL, proto.opts...)
			for _, service := range []string{"", ingestv1connect.IngestServiceName, statusv1connect.StatusServiceName} {
				resp, err := health.Check(t.Context(), &grpchealth.CheckRequest{Service: service})
				if err != nil || resp.Status != grpchealth.StatusServing {
					t.Errorf("Check(%q) = %v, %v; want SERVING", service, resp, err)
				}
			}
			_, err := health.Check(t.Context(), &grpchealth.CheckRequest{Service: "no.such.Service"})
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("Check(unknown service) error = %v, want NotFound", err)
			}
		})
	}

	// Reflection is a bidirectional stream, so HTTP/2.
	stream := grpcreflect.NewClient(p.h2c, p.baseURL, connect.WithGRPC()).NewStream(t.Context())
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatalf("reflection ListServices: %v", err)
	}
	for _, want := range []string{ingestv1connect.IngestServiceName, statusv1connect.StatusServiceName} {
		if !slices.ContainsFunc(names, func(n protoreflect.FullName) bool { return string(n) == want }) {
			t.Errorf("reflection lists %v, want %s among them", names, want)
		}
	}
	files, err := stream.FileContainingSymbol(ingestv1connect.IngestServiceName)
	if err != nil || len(files) == 0 || files[0].GetPackage() != "nomnom.ingest.v1" {
		t.Errorf("FileContainingSymbol(IngestService) = %d files, %v", len(files), err)
	}
}

// TestRecordTheDatabaseRefusesFailsAlone sends a batch whose middle record
// passes validation but is refused by PostgreSQL (a NUL character, which a
// text column cannot hold): it is dead-lettered on its first attempt, and its
// neighbours, stored in the same fetched batch, are not held back.
func TestRecordTheDatabaseRefusesFailsAlone(t *testing.T) {
	t.Parallel()
	p := startIngest(t, nil)
	impossible := typedOrder("REFUSED-2")
	impossible.Comment = "nul \x00 inside"
	resp, err := p.ingestClient(protocols[0]).IngestBatch(t.Context(), connect.NewRequest(&ingestv1.IngestBatchRequest{Records: []*ingestv1.Record{
		orderRecord(typedOrder("REFUSED-1")), orderRecord(impossible), orderRecord(typedOrder("REFUSED-3")),
	}}))
	if err != nil {
		t.Fatalf("IngestBatch: %v", err)
	}
	if resp.Msg.GetAccepted() != 3 {
		t.Fatalf("IngestBatch = %v, want all 3 accepted", resp.Msg)
	}
	// Started after the batch is queued, so the worker fetches all three together.
	p.startWorker()
	r := resp.Msg.GetResults()
	p.waitStatus(r[0].GetMessageId(), "completed")
	p.waitStatus(r[2].GetMessageId(), "completed")
	st := p.waitStatus(r[1].GetMessageId(), "dlq")
	if len(st.Attempts) != 1 || st.Attempts[0].ErrorClass != "permanent" || st.ErrorMessage == nil ||
		!strings.Contains(*st.ErrorMessage, "0x00") {
		t.Errorf("refused record's status = %+v, want one permanent attempt with PostgreSQL's error about the NUL byte", st)
	}
	if n := p.count("SELECT count(*) FROM orders WHERE order_key IN ('REFUSED-1', 'REFUSED-3')"); n != 2 {
		t.Errorf("%d of the 2 good neighbours stored", n)
	}
}

// TestTypedRecordWithImpossibleDateIsRejected expects typed RPCs to refuse,
// synchronously, a record that can never be stored.
func TestTypedRecordWithImpossibleDateIsRejected(t *testing.T) {
	t.Parallel()
	p := startIngest(t, nil)
	o := typedOrder("IMPOSSIBLE-DATE")
	o.OrderDate = "2026-02-30"
	_, err := p.ingestClient(protocols[0]).Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: orderRecord(o)}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "order_date") {
		t.Errorf("Ingest error = %v, want InvalidArgument naming order_date", err)
	}
}

// TestIdempotencyKeyOutlivesTheDuplicateWindow: JetStream forgets a
// Nats-Msg-Id after NATS_DUPLICATE_WINDOW; a retry after that, with the
// same key, must still be answered as a duplicate of the first call and not
// be queued again. Here the first call is one whose status row is stored
// and whose JetStream publish is long forgotten.
func TestIdempotencyKeyOutlivesTheDuplicateWindow(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	first, err := envelope.New(envelope.Customer, []byte(`{"customer_key":"LATE"}`), time.Now().Add(-time.Hour), "test", "late-retry")
	if err != nil {
		t.Fatal(err)
	}
	firstAt := first.GetReceivedAt().AsTime().Truncate(time.Microsecond)
	if err := store.New(p.db).WriteStatuses(t.Context(), []store.StatusWrite{{
		MessageID: uuid.MustParse(first.GetMessageId()), Entity: envelope.Customer, Status: store.StatusCompleted,
		ReceivedAt: firstAt, ProcessedAt: firstAt, Attempt: 1,
	}}); err != nil {
		t.Fatal(err)
	}

	rec := customerRecord("LATE")
	rec.IdempotencyKey = "late-retry"
	resp, err := p.ingestClient(protocols[0]).Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: rec}))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Msg.GetDuplicate() || resp.Msg.GetMessageId() != first.GetMessageId() || !resp.Msg.GetReceivedAt().AsTime().Equal(firstAt) {
		t.Errorf("answer %v, want a duplicate of %s received at %s", resp.Msg, first.GetMessageId(), firstAt)
	}
	code, body := p.do(http.MethodPost, "/ingest/message", http.Header{"Idempotency-Key": {"late-retry"}}, `{"customer_key":"LATE"}`)
	if code != http.StatusAccepted || !strings.Contains(string(body), first.GetMessageId()) || !strings.Contains(string(body), `"duplicate":true`) {
		t.Errorf("REST retry = %d %s, want 202 naming %s as a duplicate", code, body, first.GetMessageId())
	}
	if n := p.publishedCount(); n != 0 {
		t.Errorf("stream holds %d messages, want 0: a known key is not queued again", n)
	}
}

// TestIdempotencyKeyReusedForAnotherRecord: a key names one record. Sent
// again with a different record, inside JetStream's duplicate window or
// after it, the call is refused (409, ALREADY_EXISTS) rather than answered
// as a duplicate, which would silently drop the new record.
func TestIdempotencyKeyReusedForAnotherRecord(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	key := http.Header{"Idempotency-Key": {"reused"}}
	first := p.post(`{"customer_key":"REUSED","name":"first"}`, key)

	// Within the window, over REST; the same record again is a duplicate.
	code, body := p.do(http.MethodPost, "/ingest/message", key, `{"customer_key":"REUSED","name":"second"}`)
	if code != http.StatusConflict || !strings.Contains(string(body), `"code":"already_exists"`) || !strings.Contains(string(body), first.MessageID) ||
		strings.Contains(string(body), `"error":"already_exists:`) {
		t.Errorf("same key, other record = %d %s, want 409 already_exists naming %s", code, body, first.MessageID)
	}
	// The same record re-encoded (member order, white space) is the same.
	if again := p.post(`{ "name": "first",  "customer_key": "REUSED" }`, key); !again.Duplicate || again.MessageID != first.MessageID {
		t.Errorf("same key, same record = %+v, want a duplicate of %s", again, first.MessageID)
	}

	// Over RPC, where the stored status row decides (typed records are
	// fingerprinted in their canonical binary form).
	ing := p.ingestClient(protocols[0])
	rec := func(name string) *ingestv1.Record {
		return &ingestv1.Record{Kind: &ingestv1.Record_Customer{Customer: &tpchv1.Customer{CustomerKey: "REUSED-RPC", Name: name}}, IdempotencyKey: "reused-rpc"}
	}
	resp, err := ing.Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: rec("first")}))
	if err != nil {
		t.Fatal(err)
	}
	p.waitStatus(resp.Msg.GetMessageId(), "completed")
	_, err = ing.Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: rec("second")}))
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Errorf("same key, other typed record: %v, want already_exists", err)
	}
	again, err := ing.Ingest(t.Context(), connect.NewRequest(&ingestv1.IngestRequest{Record: rec("first")}))
	if err != nil || !again.Msg.GetDuplicate() {
		t.Errorf("same key, same typed record: %v %v, want a duplicate", again, err)
	}
	// Two records with one key in one call: the second is refused.
	batch, err := ing.IngestBatch(t.Context(), connect.NewRequest(&ingestv1.IngestBatchRequest{Records: []*ingestv1.Record{
		{Kind: &ingestv1.Record_Customer{Customer: &tpchv1.Customer{CustomerKey: "REUSED-CALL", Name: "a"}}, IdempotencyKey: "reused-call"},
		{Kind: &ingestv1.Record_Customer{Customer: &tpchv1.Customer{CustomerKey: "REUSED-CALL", Name: "b"}}, IdempotencyKey: "reused-call"},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	if r := batch.Msg.GetResults(); r[0].GetError() != "" || !strings.Contains(r[1].GetError(), "already used for a different record") {
		t.Errorf("IngestBatch results = %v, want the second refused", r)
	}
	if n := p.publishedCount(); n != 3 {
		t.Errorf("stream holds %d messages, want 3 (one per key)", n)
	}
	var name string
	if err := p.db.QueryRow(t.Context(), "SELECT name FROM customers WHERE customer_key = 'REUSED-RPC'").Scan(&name); err != nil || name != "first" {
		t.Errorf("stored name %q (%v), want the first record's", name, err)
	}
}

// TestWatchUnknownID: an id ingest never issued, or issued long ago with no
// status, is NotFound at once rather than waited for.
func TestWatchUnknownID(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	st := p.statusClient(protocols[0])
	old, err := uuid.NewV7()
	if err != nil {
		t.Fatal(err)
	}
	old[0], old[1] = 0, 1 // a UUIDv7 of 1970
	for _, id := range []string{uuid.NewString(), old.String()} {
		// Well under the 30 s a fresh id would be waited for.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		stream, err := st.WatchStatus(ctx, connect.NewRequest(&statusv1.WatchStatusRequest{MessageId: id}))
		if err == nil {
			for stream.Receive() {
			}
			err = stream.Err()
		}
		cancel()
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("WatchStatus(%s) = %v, want NotFound", id, err)
		}
	}
}

// TestIdempotencyKeyWhilePostgresIsDown: a key that cannot be checked
// against stored statuses might be a late retry or a reuse for another
// record, so a keyed record is refused (503, retry later) while
// PostgreSQL is down; records without a key are still accepted.
func TestIdempotencyKeyWhilePostgresIsDown(t *testing.T) {
	t.Parallel()
	var proxy *testutil.Proxy
	p := startPipeline(t, func(c *config.Config) {
		u, err := url.Parse(c.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		proxy = testutil.NewProxy(t, u.Host)
		u.Host = proxy.Addr()
		c.DatabaseURL = u.String()
	})
	key := http.Header{"Idempotency-Key": {"while-down"}}
	proxy.Down()
	code, body := p.do(http.MethodPost, "/ingest/message", key, `{"customer_key":"WHILE-DOWN"}`)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "cannot be checked") {
		t.Errorf("keyed record while PostgreSQL is down = %d %s, want 503", code, body)
	}
	if code, body := p.do(http.MethodPost, "/ingest/message", nil, `{"customer_key":"UNKEYED-WHILE-DOWN"}`); code != http.StatusAccepted {
		t.Errorf("record without a key while PostgreSQL is down = %d %s, want 202", code, body)
	}
	proxy.Up()
	got := p.post(`{"customer_key":"WHILE-DOWN"}`, key)
	if got.Duplicate {
		t.Errorf("keyed record after recovery = %+v, want accepted as new", got)
	}

	// A watch started while PostgreSQL is down waits for it to come back.
	p.waitStatus(got.MessageID, "completed")
	proxy.Down()
	refused := proxy.Refused()
	watched := make(chan error, 1)
	go func() {
		stream, err := p.statusClient(protocols[0]).WatchStatus(t.Context(), connect.NewRequest(&statusv1.WatchStatusRequest{MessageId: got.MessageID}))
		if err == nil {
			for stream.Receive() {
			}
			err = stream.Err()
		}
		watched <- err
	}()
	testutil.WaitFor(t, 10*time.Second, func() (bool, error) { return proxy.Refused() > refused, nil })
	proxy.Up()
	if err := <-watched; err != nil {
		t.Errorf("WatchStatus across the outage: %v, want the completed status", err)
	}
}
