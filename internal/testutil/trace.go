package testutil

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"
)

// RecordSpans turns tracing on for the whole process as a service with
// OTEL_EXPORTER_OTLP_ENDPOINT set has it, the real SDK sampling every trace
// and W3C Trace Context propagation, but keeps the ended spans in memory
// instead of exporting them. Tracing is off again when the test ends.
//
// Tracing is process-wide: a test that calls this must not run in parallel
// with tests that start spans of their own.
func RecordSpans(t testing.TB) *tracetest.SpanRecorder {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() {
		// OpenTelemetry's initial globals cannot be put back once replaced;
		// the no-op ones behave the same.
		otel.SetTracerProvider(noop.NewTracerProvider())
		otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator())
		_ = tp.Shutdown(context.Background())
	})
	return rec
}
