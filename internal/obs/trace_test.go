package obs

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"

	"github.com/nomnomhq/nomnom/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tracingOff installs the no-op globals a process starts with (SetupTracing
// with no endpoint leaves them alone), whatever an earlier test installed.
func tracingOff(t *testing.T) {
	t.Helper()
	off := func() {
		otel.SetTracerProvider(noop.NewTracerProvider())
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
	}
	off()
	t.Cleanup(off)
}

func TestTraceContextRoundTripsThroughNATSHeader(t *testing.T) {
	rec := testutil.RecordSpans(t)
	ctx, accept := StartBatchSpan(context.Background(), "ingest.accept", 3)
	h := nats.Header{"Nats-Msg-Id": {"m-1"}}
	InjectNATS(ctx, h)
	accept.End()

	if h.Get("traceparent") == "" {
		t.Fatalf("header after InjectNATS = %v, want a traceparent", h)
	}
	if h.Get("Nats-Msg-Id") != "m-1" {
		t.Errorf("InjectNATS changed another header: %v", h)
	}
	want := accept.SpanContext()
	got := trace.SpanContextFromContext(ExtractNATS(context.Background(), h))
	if got.TraceID() != want.TraceID() || got.SpanID() != want.SpanID() || got.TraceFlags() != want.TraceFlags() || !got.IsRemote() {
		t.Fatalf("extracted %+v, want the remote form of %+v", got, want)
	}

	// A span started from the extracted context continues the trace.
	_, child := StartBatchSpan(ExtractNATS(context.Background(), h), "consume", 1)
	child.End()
	ended := rec.Ended()
	if len(ended) != 2 {
		t.Fatalf("recorded %d spans, want 2", len(ended))
	}
	c := ended[1]
	if c.SpanContext().TraceID() != want.TraceID() || c.Parent().SpanID() != want.SpanID() {
		t.Errorf("child span in trace %s under %s, want trace %s under %s",
			c.SpanContext().TraceID(), c.Parent().SpanID(), want.TraceID(), want.SpanID())
	}
	if n, ok := intAttr(ended[0].Attributes(), string(batchSizeKey)); !ok || n != 3 {
		t.Errorf("ingest.accept %s = %d (set %v), want 3", batchSizeKey, n, ok)
	}
}

func TestLinkNATSLinksEveryTracedMessage(t *testing.T) {
	rec := testutil.RecordSpans(t)
	var headers []nats.Header
	var want []trace.SpanContext
	for range 2 {
		ctx, s := StartBatchSpan(context.Background(), "ingest.accept", 1)
		h := nats.Header{}
		InjectNATS(ctx, h)
		s.End()
		headers = append(headers, h)
		want = append(want, s.SpanContext())
	}
	headers = append(headers, nil, nats.Header{"traceparent": {"not a trace context"}})

	_, batch := StartBatchSpan(context.Background(), "worker.store_batch", len(headers))
	for _, h := range headers {
		LinkNATS(batch, h)
	}
	batch.End()

	ended := rec.Ended()
	links := ended[len(ended)-1].Links()
	if len(links) != len(want) {
		t.Fatalf("batch span has %d links, want %d (messages without a valid trace context add none)", len(links), len(want))
	}
	for i, l := range links {
		if l.SpanContext.TraceID() != want[i].TraceID() || l.SpanContext.SpanID() != want[i].SpanID() {
			t.Errorf("link %d to %s/%s, want %s/%s", i, l.SpanContext.TraceID(), l.SpanContext.SpanID(),
				want[i].TraceID(), want[i].SpanID())
		}
	}
}

func TestCopyTraceHeaders(t *testing.T) {
	tracingOff(t) // copying must not depend on this process tracing
	tests := []struct {
		name     string
		src, dst nats.Header
		want     nats.Header
	}{
		{
			name: "trace context is copied, nothing else",
			src:  nats.Header{"traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "tracestate": {"a=1"}, "Nats-Msg-Id": {"x"}},
			dst:  nats.Header{"Nomnom-Error": {"boom"}},
			want: nats.Header{"traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "tracestate": {"a=1"}, "Nomnom-Error": {"boom"}},
		},
		{
			name: "an untraced message adds nothing",
			src:  nil,
			dst:  nats.Header{"Nomnom-Error": {"boom"}},
			want: nats.Header{"Nomnom-Error": {"boom"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			CopyTraceHeaders(tt.dst, tt.src)
			if !maps.EqualFunc(tt.dst, tt.want, slices.Equal) {
				t.Errorf("dst = %v, want %v", tt.dst, tt.want)
			}
		})
	}
}

// TestTracingOff checks what a service with no OTEL_EXPORTER_OTLP_ENDPOINT
// pays: nothing is installed, spans do not record, and the per-message
// helpers neither write headers nor allocate.
func TestTracingOff(t *testing.T) {
	tracingOff(t)
	tp := otel.GetTracerProvider()
	shutdown, err := SetupTracing(context.Background(), "", "nomnom-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("SetupTracing without an endpoint: %v", err)
	}
	if err := shutdown(context.Background()); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if otel.GetTracerProvider() != tp || len(otel.GetTextMapPropagator().Fields()) != 0 {
		t.Fatal("SetupTracing without an endpoint installed a tracer provider or propagator")
	}

	ctx, span := StartBatchSpan(context.Background(), "ingest.accept", 10)
	defer span.End()
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Errorf("span records (%v) or has a valid context (%v) while tracing is off", span.IsRecording(), span.SpanContext().IsValid())
	}
	h := nats.Header{}
	if allocs := testing.AllocsPerRun(100, func() { InjectNATS(ctx, h) }); allocs != 0 {
		t.Errorf("InjectNATS allocates %v times per message while tracing is off", allocs)
	}
	if len(h) != 0 {
		t.Errorf("InjectNATS wrote %v while tracing is off", h)
	}

	// A client's traceparent is ignored, and the request is not copied.
	var seen *http.Request
	handler := ExtractHTTP(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { seen = r }))
	req := httptest.NewRequest(http.MethodPost, "/ingest/message", nil)
	req.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	handler.ServeHTTP(httptest.NewRecorder(), req)
	if seen != req {
		t.Error("ExtractHTTP replaced the request while tracing is off")
	}
}

func TestExtractHTTPContinuesTheClientsTrace(t *testing.T) {
	rec := testutil.RecordSpans(t)
	const traceID, parentID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	handler := ExtractHTTP(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		_, span := StartBatchSpan(r.Context(), "ingest.accept", 1)
		span.End()
	}))
	req := httptest.NewRequest(http.MethodPost, "/ingest/message", nil)
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	handler.ServeHTTP(httptest.NewRecorder(), req)

	ended := rec.Ended()
	if len(ended) != 1 {
		t.Fatalf("recorded %d spans, want 1", len(ended))
	}
	if got := ended[0]; got.SpanContext().TraceID().String() != traceID || got.Parent().SpanID().String() != parentID {
		t.Errorf("span in trace %s under %s, want trace %s under %s",
			got.SpanContext().TraceID(), got.Parent().SpanID(), traceID, parentID)
	}
}

func TestSetupTracingExportsOverOTLPHTTP(t *testing.T) {
	tracingOff(t)
	var mu sync.Mutex
	var paths []string
	var bodies [][]byte
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		paths, bodies = append(paths, r.URL.Path), append(bodies, body)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()

	ctx := context.Background()
	shutdown, err := SetupTracing(ctx, collector.URL+"/otlp", "nomnom-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("SetupTracing: %v", err)
	}
	if fields := otel.GetTextMapPropagator().Fields(); !slices.Contains(fields, "traceparent") {
		t.Errorf("propagator fields = %v, want W3C Trace Context", fields)
	}
	_, span := StartBatchSpan(ctx, "worker.store_batch", 2)
	span.End()
	if err := shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(paths) != 1 || paths[0] != "/otlp/v1/traces" {
		t.Fatalf("collector got requests at %v, want one at /otlp/v1/traces", paths)
	}
	// OTLP is protobuf; its strings appear verbatim in the encoding.
	for _, want := range []string{"nomnom-test", "worker.store_batch"} {
		if !bytes.Contains(bodies[0], []byte(want)) {
			t.Errorf("export does not carry %q", want)
		}
	}
}

func TestSetupTracingRejectsABadEndpoint(t *testing.T) {
	tracingOff(t)
	for _, endpoint := range []string{"localhost:4318", "grpc://collector:4317", "http://"} {
		if _, err := SetupTracing(context.Background(), endpoint, "nomnom-test", slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("SetupTracing(%q) succeeded, want an error", endpoint)
		}
	}
}

func intAttr(attrs []attribute.KeyValue, key string) (int64, bool) {
	for _, a := range attrs {
		if string(a.Key) == key {
			return a.Value.AsInt64(), true
		}
	}
	return 0, false
}
