package obs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of every span nomnom starts.
const tracerName = "github.com/nomnomhq/nomnom"

// traceFlushTimeout bounds the flush of unexported spans on shutdown.
const traceFlushTimeout = 5 * time.Second

// batchSizeKey is the OpenTelemetry semantic convention for the number of
// messages one operation handles.
const batchSizeKey = attribute.Key("messaging.batch.message_count")

// SetupTracing installs, process-wide, a TracerProvider that exports spans
// in batches over OTLP/HTTP to endpoint (a base URL such as
// http://localhost:4318; /v1/traces is appended) under serviceName, and the
// W3C Trace Context propagator. Export errors are logged to logger.
//
// With an empty endpoint it installs nothing: the global provider and
// propagator stay OpenTelemetry's no-op defaults, so spans cost a context
// and nothing is propagated. shutdown flushes the spans not yet exported,
// for at most 5 seconds, and stops the exporter; call it once the service
// has stopped.
func SetupTracing(ctx context.Context, endpoint, serviceName string, logger *slog.Logger) (shutdown func(context.Context) error, err error) {
	if endpoint == "" {
		return func(context.Context) error { return nil }, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL is not echoed: it may hold credentials.
		return nil, errors.New("OTLP endpoint is not an http:// or https:// URL")
	}
	// WithEndpointURL takes the full URL; the signal path is appended as the
	// OTLP specification says for OTEL_EXPORTER_OTLP_ENDPOINT.
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(u.JoinPath("v1", "traces").String()))
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	// Not resource.Default: it reads OTEL_* variables itself, and
	// configuration comes from internal/config only.
	res, err := resource.New(ctx, resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", serviceName)))
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	// An unreachable collector is reported here on every export; the default
	// handler would print unstructured lines to stderr.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("trace export failed", "error", err)
	}))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	logger.Info("tracing on: exporting spans over OTLP/HTTP", "endpoint", u.Redacted(), "service_name", serviceName)
	return func(ctx context.Context) error {
		// Bounded: an unreachable collector must not hold up a shutdown that
		// SHUTDOWN_TIMEOUT and the platform's grace period already budget.
		ctx, cancel := context.WithTimeout(ctx, traceFlushTimeout)
		defer cancel()
		return tp.Shutdown(ctx)
	}, nil
}

// StartBatchSpan starts a span named name for work on messages messages, as
// a child of ctx's span if it has one. The caller ends it. While tracing is
// off the span does not record and costs no more than the returned context.
func StartBatchSpan(ctx context.Context, name string, messages int) (context.Context, trace.Span) {
	ctx, span := otel.Tracer(tracerName).Start(ctx, name)
	if span.IsRecording() {
		span.SetAttributes(batchSizeKey.Int(messages))
	}
	return ctx, span
}

// HeaderCarrier adapts a NATS message header to OpenTelemetry propagators.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key.
func (c HeaderCarrier) Get(key string) string { return nats.Header(c).Get(key) }

// Set replaces the values of key with value.
func (c HeaderCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }

// Keys lists the header's keys.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// InjectNATS writes the trace context of ctx (traceparent, tracestate) into
// h, so whoever consumes the message can continue the trace. It writes
// nothing while tracing is off or ctx carries no span.
func InjectNATS(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(h))
}

// ExtractNATS returns ctx with the remote span context carried in h, if
// any and if tracing is on.
func ExtractNATS(ctx context.Context, h nats.Header) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(h))
}

// LinkNATS links span to the span context carried in h, if any. Batches use
// links rather than parents: one batch serves the traces of many messages.
func LinkNATS(span trace.Span, h nats.Header) {
	sc := trace.SpanContextFromContext(ExtractNATS(context.Background(), h))
	if sc.IsValid() {
		span.AddLink(trace.Link{SpanContext: sc})
	}
}

// traceHeaders are the headers W3C Trace Context propagation uses.
var traceHeaders = propagation.TraceContext{}.Fields()

// CopyTraceHeaders copies the W3C Trace Context headers from src to dst
// verbatim. A message republished elsewhere (a dead letter) then stays in
// the trace of the record it carries, whether or not this process traces.
func CopyTraceHeaders(dst, src nats.Header) {
	for _, k := range traceHeaders {
		if v, ok := src[k]; ok {
			dst[k] = v
		}
	}
}

// ExtractHTTP makes the trace context a client sent in its request headers
// (traceparent) the parent of the spans the request starts. While tracing
// is off the request passes through untouched.
//
// Wrap it around everything that reads the request afterwards: it replaces
// the request with a copy, and ServeMux records the matched pattern on the
// copy it is given.
func ExtractHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		if ctx != r.Context() {
			r = r.WithContext(ctx)
		}
		next.ServeHTTP(w, r)
	})
}
