package ingest_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

// TestRESTFlow is the plan's flow: ready, send an order, watch it reach
// 'completed', find it in the tables.
func TestRESTFlow(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)

	code, data := p.do(http.MethodGet, "/ready", nil, "")
	ready := decode[struct {
		Ready     bool   `json:"ready"`
		Timestamp string `json:"timestamp"`
	}](t, data)
	if code != http.StatusOK || !ready.Ready {
		t.Fatalf("GET /ready = %d %s, want 200 ready:true", code, data)
	}
	if _, err := time.Parse(time.RFC3339, ready.Timestamp); err != nil {
		t.Errorf("/ready timestamp %q is not RFC 3339: %v", ready.Timestamp, err)
	}

	body := orderJSON("ORDER-FLOW-1", 2)
	acc := p.post(body, nil)
	if acc.Status != "accepted" || acc.EntityType != "order" || acc.Duplicate {
		t.Errorf("202 body = %+v, want status accepted, entity_type order", acc)
	}
	if _, err := uuid.Parse(acc.MessageID); err != nil {
		t.Errorf("message_id %q is not a UUID", acc.MessageID)
	}
	if _, err := time.Parse(time.RFC3339, acc.Timestamp); err != nil {
		t.Errorf("timestamp %q is not RFC 3339: %v", acc.Timestamp, err)
	}

	// Right after the 202 the status row already exists (ingest writes
	// 'accepted' before answering), whatever the worker has done since.
	code, data = p.do(http.MethodGet, "/ingest/status/"+acc.MessageID, nil, "")
	if code != http.StatusOK {
		t.Fatalf("GET status right after 202 = %d %s, want 200", code, data)
	}
	if st := decode[statusBody](t, data); !slices.Contains([]string{"accepted", "processing", "completed"}, st.Status) {
		t.Errorf("status right after 202 = %q, want accepted, processing or completed", st.Status)
	}

	st := p.waitStatus(acc.MessageID, "completed")
	if st.ProcessedAt == nil || st.ErrorMessage != nil || st.RetryCount != 0 || st.EntityType != "order" {
		t.Errorf("completed status = %+v, want processed_at set, no error, retry_count 0", st)
	}
	if st.ProcessedAt != nil {
		if _, err := time.Parse(time.RFC3339, *st.ProcessedAt); err != nil {
			t.Errorf("processed_at %q is not RFC 3339", *st.ProcessedAt)
		}
	}
	// The plan's fields are all present, null where unset.
	_, data = p.do(http.MethodGet, "/ingest/status/"+acc.MessageID, nil, "")
	fields := decode[map[string]any](t, data)
	for _, f := range []string{"message_id", "entity_type", "status", "received_at", "processed_at", "retry_count", "error_message"} {
		if _, ok := fields[f]; !ok {
			t.Errorf("status answer lacks the plan's field %q: %s", f, data)
		}
	}

	var customer, total, date, writer string
	err := p.db.QueryRow(t.Context(), `SELECT customer_key, total_price::text, order_date::text, message_id::text
		FROM orders WHERE order_key = 'ORDER-FLOW-1'`).Scan(&customer, &total, &date, &writer)
	if err != nil {
		t.Fatalf("orders row: %v", err)
	}
	if customer != "CUST-001" || total != "1234.56" || date != "2026-01-15" || writer != acc.MessageID {
		t.Errorf("orders row = %s %s %s by %s, want CUST-001 1234.56 2026-01-15 by %s", customer, total, date, writer, acc.MessageID)
	}
	var lines string
	err = p.db.QueryRow(t.Context(), `SELECT string_agg(line_number || ':' || part_key || ':' || quantity::text, ' ' ORDER BY line_number)
		FROM order_line_items WHERE order_key = 'ORDER-FLOW-1'`).Scan(&lines)
	if err != nil || lines != "1:PART-1:2.00 2:PART-2:4.00" {
		t.Errorf("order_line_items = %q (%v), want 1:PART-1:2.00 2:PART-2:4.00", lines, err)
	}
	if n := p.count(`SELECT count(*) FROM message_status WHERE message_id = $1 AND status = 'completed'
		AND entity_type = 'order' AND processed_at IS NOT NULL`, acc.MessageID); n != 1 {
		t.Errorf("message_status has %d completed rows for %s, want 1", n, acc.MessageID)
	}

	// The stream holds the record byte for byte, so it can be replayed.
	envs := p.envelopes()
	if env := envs[acc.MessageID]; len(envs) != 1 || env == nil || string(env.GetPayload()) != body {
		t.Errorf("stream holds %d envelopes; payload of %s = %q, want the posted body", len(envs), acc.MessageID, env.GetPayload())
	}
}

// TestRESTEntitySelection checks each way to name a record's entity and
// that the record lands in that entity's table. Each body also carries a
// decoy key that inference alone would pick, so the test sees which rule won.
func TestRESTEntitySelection(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	tests := []struct {
		name   string
		query  string
		header http.Header
		body   string
		want   string
		table  string // table and key column where the record must land
		key    string
	}{
		{
			name: "entity_type field beats inference",
			body: `{"entity_type":"customer","customer_key":"CUST-FIELD","part_key":"decoy","name":"Field Customer"}`,
			want: "customer", table: "customers WHERE customer_key", key: "CUST-FIELD",
		},
		{
			name:  "query parameter beats inference",
			query: "?entity_type=product",
			body:  `{"part_key":"PART-QUERY","order_key":"decoy","name":"Query Part"}`,
			want:  "product", table: "products WHERE part_key", key: "PART-QUERY",
		},
		{
			name:   "header beats inference",
			header: http.Header{"X-Entity-Type": {"customer"}},
			body:   `{"customer_key":"CUST-HEADER","part_key":"decoy"}`,
			want:   "customer", table: "customers WHERE customer_key", key: "CUST-HEADER",
		},
		{
			name:   "plural alias in the header",
			header: http.Header{"X-Entity-Type": {"parts"}},
			body:   `{"part_key":"PART-ALIAS","order_key":"decoy"}`,
			want:   "product", table: "products WHERE part_key", key: "PART-ALIAS",
		},
		{
			name:  "field beats query parameter",
			query: "?entity_type=order",
			body:  `{"entity_type":"product","part_key":"PART-FIELD-WINS","retail_price":9.99}`,
			want:  "product", table: "products WHERE part_key", key: "PART-FIELD-WINS",
		},
		{
			name: "inferred order",
			body: orderJSON("ORDER-INFERRED", 1),
			want: "order", table: "orders WHERE order_key", key: "ORDER-INFERRED",
		},
		{
			name: "inferred product from part_key before customer_key",
			body: `{"part_key":"PART-INFERRED","customer_key":"decoy","name":"bolt","size":3}`,
			want: "product", table: "products WHERE part_key", key: "PART-INFERRED",
		},
		{
			name: "inferred customer",
			body: `{"customer_key":"CUST-INFERRED","name":"Inferred","nation_key":7,"account_balance":-12.5}`,
			want: "customer", table: "customers WHERE customer_key", key: "CUST-INFERRED",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, data := p.do(http.MethodPost, "/ingest/message"+tt.query, tt.header, tt.body)
			if code != http.StatusAccepted {
				t.Fatalf("POST = %d %s, want 202", code, data)
			}
			acc := decode[acceptedBody](t, data)
			if acc.EntityType != tt.want {
				t.Errorf("entity_type = %q, want %q", acc.EntityType, tt.want)
			}
			p.waitStatus(acc.MessageID, "completed")
			if n := p.count("SELECT count(*) FROM "+tt.table+" = $1 AND message_id = $2", tt.key, acc.MessageID); n != 1 {
				t.Errorf("%s = %s written by %s: %d rows, want 1", tt.table, tt.key, acc.MessageID, n)
			}
		})
	}
}

// TestRESTRejectsBadRequests checks that every request the REST door refuses
// gets a JSON error naming the problem, and that nothing is published or
// recorded for it.
func TestRESTRejectsBadRequests(t *testing.T) {
	t.Parallel()
	p := startIngest(t, func(c *config.Config) { c.IngestMaxBody = 2048 })
	tests := []struct {
		name     string
		method   string
		path     string
		header   http.Header
		body     string
		wantCode int
		wantErr  string // substring of the error
	}{
		{"malformed JSON", "POST", "/ingest/message", nil, `{"order_key":`, 400, "malformed JSON"},
		{"trailing garbage", "POST", "/ingest/message", nil, `{"order_key":"A"} x`, 400, "malformed JSON"},
		{"two objects", "POST", "/ingest/message", nil, `{"order_key":"A"}{"order_key":"B"}`, 400, "malformed JSON: more data after the value"},
		{"duplicate key", "POST", "/ingest/message", nil, `{"order_key":"A","customer_key":"C","order_key":"B"}`, 400, `malformed JSON: duplicate object member name "order_key"`},
		{"invalid UTF-8", "POST", "/ingest/message", nil, "{\"customer_key\":\"C\xff\"}", 400, `malformed JSON: invalid UTF-8 within "/customer_key"`},
		{"malformed array", "POST", "/ingest/message", nil, `[{"order_key":"A"}`, 400, "malformed JSON: unexpected EOF"},
		{"JSON array", "POST", "/ingest/message", nil, `[{"order_key":"A","customer_key":"C"}]`, 400, "not a JSON object: got an array"},
		{"JSON number", "POST", "/ingest/message", nil, `42`, 400, "not a JSON object: got a number"},
		{"JSON string", "POST", "/ingest/message", nil, `"order"`, 400, "not a JSON object: got a string"},
		{"JSON null", "POST", "/ingest/message", nil, `null`, 400, "not a JSON object: got null"},
		{"empty body", "POST", "/ingest/message", nil, ``, 400, "empty body"},
		{"unknown entity in the record", "POST", "/ingest/message", nil, `{"entity_type":"widget","order_key":"W-1"}`, 400, `unknown entity "widget"`},
		{"unknown entity in the query", "POST", "/ingest/message?entity_type=widget", nil, `{"order_key":"W-2"}`, 400, `unknown entity "widget"`},
		{"unknown entity in the header", "POST", "/ingest/message", http.Header{"X-Entity-Type": {"widget"}}, `{"order_key":"W-3"}`, 400, `unknown entity "widget"`},
		{"entity_type not a string", "POST", "/ingest/message", nil, `{"entity_type":5,"order_key":"W-4"}`, 400, "entity_type must be a string"},
		{"no inferable entity", "POST", "/ingest/message", nil, `{"name":"who am I"}`, 400, "cannot infer"},
		{"over INGEST_MAX_BODY_BYTES", "POST", "/ingest/message", nil,
			`{"order_key":"BIG","customer_key":"C","comment":"` + strings.Repeat("x", 2100) + `"}`, 413, "over the 2048-byte limit"},
		{"X-Source longer than the status column", "POST", "/ingest/message", http.Header{"X-Source": {strings.Repeat("s", 256)}},
			`{"customer_key":"C-SRC"}`, 400, "source is 256 characters"},
		{"Idempotency-Key over 200 characters", "POST", "/ingest/message", http.Header{"Idempotency-Key": {strings.Repeat("k", 201)}},
			`{"customer_key":"C-KEY"}`, 400, "idempotency_key is 201 characters"},
		{"status of a malformed id", "GET", "/ingest/status/not-a-uuid", nil, "", 400, `"not-a-uuid" is not a UUID`},
		{"wrong method", "GET", "/ingest/message", nil, "", 405, "GET is not allowed on /ingest/message; use POST"},
		{"unknown route", "POST", "/ingest/messages", nil, "{}", 404, "no route POST /ingest/messages"},
		{"status of an unknown id", "GET", "/ingest/status/" + uuid.NewString(), nil, "", 404, "not found"},
		{"batch of blank lines", "POST", "/ingest/batch", nil, "\n  \n", 400, "empty batch"},
	}
	wantCodeName := map[int]string{400: "invalid_argument", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, data := p.do(tt.method, tt.path, tt.header, tt.body)
			if code != tt.wantCode {
				t.Errorf("%s %s = %d %s, want %d", tt.method, tt.path, code, data, tt.wantCode)
			}
			e := decode[errorBody](t, data)
			if !strings.Contains(e.Error, tt.wantErr) || e.Code != wantCodeName[tt.wantCode] {
				t.Errorf("error = %+v, want code %q and an error containing %q", e, wantCodeName[tt.wantCode], tt.wantErr)
			}
			if n := p.publishedCount(); n != 0 {
				t.Errorf("%d messages published, want none", n)
			}
			if n := p.count("SELECT count(*) FROM message_status"); n != 0 {
				t.Errorf("%d status rows written, want none", n)
			}
		})
	}
}

type batchBody struct {
	Status    string   `json:"status"`
	Processed int      `json:"processed"`
	Inserted  int      `json:"inserted"`
	Failed    int      `json:"failed"`
	Errors    []string `json:"errors"`
	Results   []struct {
		Line       int    `json:"line"`
		MessageID  string `json:"message_id"`
		EntityType string `json:"entity_type"`
		Error      string `json:"error"`
	} `json:"results"`
	DurationMS *int64 `json:"duration_ms"`
}

// TestRESTBatch sends NDJSON with good and bad lines: each line gets its own
// result, a bad line never fails the others and is never published.
func TestRESTBatch(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, func(c *config.Config) { c.IngestMaxBody = 2048 })
	lines := []string{
		orderJSON("BATCH-ORDER-1", 2),                // 1
		`{"order_key":`,                              // 2: malformed
		`{"customer_key":"BATCH-CUST-1","name":"B"}`, // 3
		``,        // 4: blank, skipped
		`[1,2,3]`, // 5: not an object
		`{"entity_type":"widget","order_key":"W"}`,                                     // 6: unknown entity
		`{"part_key":"BATCH-PART-1","name":"washer"}`,                                  // 7
		`{"customer_key":"BATCH-BIG","comment":"` + strings.Repeat("x", 70_000) + `"}`, // 8: far over INGEST_MAX_BODY_BYTES
	}
	code, data := p.do(http.MethodPost, "/ingest/batch", http.Header{"Content-Type": {"application/x-ndjson"}}, strings.Join(lines, "\n")+"\n")
	if code != http.StatusAccepted {
		t.Fatalf("POST /ingest/batch = %d %s, want 202", code, data)
	}
	b := decode[batchBody](t, data)
	if b.Status != "partial" || b.Processed != 7 || b.Inserted != 3 || b.Failed != 4 || len(b.Errors) != 4 || b.DurationMS == nil {
		t.Errorf("summary = %s, want status partial, processed 7, inserted 3, failed 4, 4 errors, duration_ms", data)
	}
	want := []struct {
		line   int
		entity string
		err    string
	}{
		{1, "order", ""}, {2, "", "malformed JSON"}, {3, "customer", ""},
		{5, "", "not a JSON object"}, {6, "", `unknown entity "widget"`}, {7, "product", ""},
		{8, "", "over the 2048-byte limit"},
	}
	if len(b.Results) != len(want) {
		t.Fatalf("%d results, want %d: %s", len(b.Results), len(want), data)
	}
	var good []string
	for i, w := range want {
		r := b.Results[i]
		switch {
		case r.Line != w.line:
			t.Errorf("result %d is for line %d, want %d", i, r.Line, w.line)
		case w.err == "" && (r.Error != "" || r.EntityType != w.entity || r.MessageID == ""):
			t.Errorf("line %d: %+v, want a message id for a %s", w.line, r, w.entity)
		case w.err != "" && (!strings.Contains(r.Error, w.err) || r.MessageID != ""):
			t.Errorf("line %d: %+v, want no message id and an error containing %q", w.line, r, w.err)
		}
		if r.MessageID != "" {
			good = append(good, r.MessageID)
		}
	}
	for _, e := range b.Errors {
		if !strings.HasPrefix(e, "line ") {
			t.Errorf("error %q does not name its line", e)
		}
	}

	envs := p.envelopes()
	if len(envs) != 3 {
		t.Errorf("stream holds %d messages, want the 3 good lines", len(envs))
	}
	for _, id := range good {
		if envs[id] == nil {
			t.Errorf("accepted line %s is not in the stream", id)
		}
		p.waitStatus(id, "completed")
	}
	if n := p.count("SELECT count(*) FROM message_status"); n != 3 {
		t.Errorf("%d status rows, want 3", n)
	}

	t.Run("all lines bad", func(t *testing.T) {
		code, data := p.do(http.MethodPost, "/ingest/batch", nil, "{\"order_key\":\n[]\n")
		b := decode[batchBody](t, data)
		if code != http.StatusBadRequest || b.Status != "failed" || b.Processed != 2 || b.Inserted != 0 || b.Failed != 2 {
			t.Errorf("all-bad batch = %d %s, want 400 status failed, processed 2, failed 2", code, data)
		}
		if n := p.publishedCount(); n != 3 {
			t.Errorf("stream holds %d messages after an all-bad batch, want still 3", n)
		}
	})
}

// TestRESTIdempotencyKey sends the same record twice with one
// Idempotency-Key: the second answer names the first message and nothing
// new is published.
func TestRESTIdempotencyKey(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	key := http.Header{"Idempotency-Key": {"rest-key-1"}}
	first := p.post(orderJSON("IDEM-REST-1", 1), key)
	second := p.post(orderJSON("IDEM-REST-1", 1), key)
	if first.Duplicate || !second.Duplicate || second.MessageID != first.MessageID {
		t.Errorf("answers = %+v then %+v, want the second a duplicate of the first", first, second)
	}
	other := p.post(orderJSON("IDEM-REST-2", 1), http.Header{"Idempotency-Key": {"rest-key-2"}})
	if other.Duplicate || other.MessageID == first.MessageID {
		t.Errorf("a new key was treated as a duplicate: %+v", other)
	}
	if n := p.publishedCount(); n != 2 {
		t.Errorf("stream holds %d messages, want 2 (one per key)", n)
	}
	p.waitStatus(first.MessageID, "completed")
	p.waitStatus(other.MessageID, "completed")
	if n := p.count("SELECT count(*) FROM message_status"); n != 2 {
		t.Errorf("%d status rows, want 2", n)
	}
}

// TestRESTPermanentFailureGoesToDLQ is the plan's DLQ test: a record that
// can never be stored is accepted at the door, then dead-lettered on its
// first attempt with the validation error as context.
func TestRESTPermanentFailureGoesToDLQ(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	body := `{"order_key":"DLQ-TEST","customer_key":null}`
	acc := p.post(body, nil)

	st := p.waitStatus(acc.MessageID, "dlq")
	if st.ErrorMessage == nil || !strings.Contains(*st.ErrorMessage, "customer_key") || st.RetryCount != 0 {
		t.Errorf("dlq status = %+v, want an error naming customer_key and retry_count 0", st)
	}
	if len(st.Attempts) != 1 || st.Attempts[0].ErrorClass != "permanent" || st.Attempts[0].Attempt != 1 {
		t.Errorf("attempts = %+v, want one permanent failure on attempt 1", st.Attempts)
	}
	if n := p.count("SELECT count(*) FROM orders WHERE order_key = 'DLQ-TEST'"); n != 0 {
		t.Errorf("the invalid order was stored (%d rows)", n)
	}

	dlq := p.cfg.DLQStream()
	if n := p.streamMsgs(dlq); n != 1 {
		t.Fatalf("%s holds %d messages, want 1", dlq, n)
	}
	s, err := p.js.Stream(t.Context(), dlq)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetLastMsgForSubject(t.Context(), "messages.dlq.order")
	if err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	wantHeaders := map[string]string{
		"Nomnom-Error-Class":       "permanent",
		"Nomnom-Attempts":          "1",
		"Nomnom-Original-Subject":  "messages.ingest.order",
		"Nomnom-Original-Sequence": "1",
		"Nomnom-Message-Id":        acc.MessageID,
		"Nomnom-Replay-Count":      "0",
	}
	for h, want := range wantHeaders {
		if got := msg.Header.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	if e := msg.Header.Get("Nomnom-Error"); !strings.Contains(e, "customer_key") {
		t.Errorf("Nomnom-Error = %q, want the validation error", e)
	}
	if _, err := time.Parse(time.RFC3339Nano, msg.Header.Get("Nomnom-Failed-At")); err != nil {
		t.Errorf("Nomnom-Failed-At: %v", err)
	}
	// The dead letter is the original envelope, payload byte for byte.
	dead, err := envelope.Unmarshal(msg.Data)
	if err != nil || dead.GetMessageId() != acc.MessageID || string(dead.GetPayload()) != body {
		t.Errorf("dead letter = %v (%v), want the envelope of %s with payload %q", dead, err, acc.MessageID, body)
	}

	// The original is acknowledged: nothing waits for redelivery.
	testutil.WaitFor(t, settleTimeout, func() (bool, error) {
		info := p.consumerInfo()
		return info.NumAckPending == 0 && info.NumPending == 0,
			fmt.Errorf("consumer has %d unacknowledged and %d pending messages", info.NumAckPending, info.NumPending)
	})
}

// TestRecordLimitFitsNATS: the default INGEST_MAX_BODY_BYTES (1 MiB) equals
// NATS's default max_payload, which a record cannot fill: its envelope and
// headers need room, and more once dead-lettered. So the limit is lowered
// to what fits, and a record at that limit, invalid, still reaches the DLQ.
func TestRecordLimitFitsNATS(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	limit := 1<<20 - natsx.RecordHeadroom
	record := func(size int) string {
		head := `{"order_key":"BIG","comment":"`
		return head + strings.Repeat("x", size-len(head)-2) + `"}`
	}
	code, body := p.do(http.MethodPost, "/ingest/message", nil, record(limit+1))
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "NATS max_payload") {
		t.Errorf("record of %d bytes: %d %s, want 413 naming NATS max_payload", limit+1, code, body)
	}
	// No customer_key: accepted, then dead-lettered with its error headers.
	id := p.post(record(limit), nil).MessageID
	if st := p.waitStatus(id, "dlq"); st.ErrorMessage == nil || !strings.Contains(*st.ErrorMessage, "customer_key") {
		t.Errorf("status = %+v, want dlq naming customer_key", st)
	}
}
