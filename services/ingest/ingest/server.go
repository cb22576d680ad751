package ingest

import (
	"context"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1/deadletterv1connect"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1/ingestv1connect"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1/statusv1connect"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/probe"
)

// services lists the gRPC services this server answers for, for health
// checks and reflection.
var services = []string{
	ingestv1connect.IngestServiceName,
	statusv1connect.StatusServiceName,
	deadletterv1connect.DeadLetterServiceName,
}

// Handler returns every route of the ingest port: the Connect services
// (Connect, gRPC, gRPC-Web), grpc.health.v1, reflection, the REST routes,
// probes and /metrics.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	// Connect reads a request before interceptors see it, so bound what one
	// message may cost in memory, authenticated or not.
	limit := connect.WithReadMaxBytes(int(s.opts.MaxBatchBytes))
	strict := strictJSONCodecs()
	mux.Handle(ingestv1connect.NewIngestServiceHandler(s, limit, strict,
		connect.WithInterceptors(interceptor{s: s, access: accessIngest})))
	mux.Handle(statusv1connect.NewStatusServiceHandler(s, limit, strict,
		connect.WithInterceptors(interceptor{s: s, access: accessIngest, validate: true})))
	mux.Handle(deadletterv1connect.NewDeadLetterServiceHandler(s, limit, strict,
		connect.WithInterceptors(interceptor{s: s, access: accessAdmin, validate: true})))
	mux.Handle(grpchealth.NewHandler(healthChecker{s}))
	reflector := grpcreflect.NewStaticReflector(services...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))

	for _, r := range restRoutes {
		mux.Handle(r.pattern, r.handler(s))
	}
	// Outermost, so the metrics see the request the mux records its pattern on.
	return obs.ExtractHTTP(s.metrics.HTTP.Wrap(jsonMisses(mux)))
}

// jsonMisses answers requests no route takes (404, or 405 for a known path)
// with the JSON error body every other REST answer has, instead of the
// mux's plain text.
func jsonMisses(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		miss := &statusOnly{header: http.Header{}, code: http.StatusOK}
		h.ServeHTTP(miss, r)
		switch allow := miss.header.Get("Allow"); {
		case miss.code == http.StatusMethodNotAllowed:
			w.Header().Set("Allow", allow)
			writeError(w, miss.code, fmt.Errorf("%s is not allowed on %s; use %s", r.Method, r.URL.Path, allow))
		case miss.code == http.StatusNotFound:
			writeError(w, miss.code, fmt.Errorf("no route %s %s; see /openapi.yaml", r.Method, r.URL.Path))
		default: // a redirect, say: let the mux answer
			mux.ServeHTTP(w, r)
		}
	})
}

// statusOnly records the status and headers a handler answers with.
type statusOnly struct {
	header http.Header
	code   int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusOnly) WriteHeader(code int)        { s.code = code }

// restRoute is one plain HTTP route of the ingest port.
type restRoute struct {
	pattern string // "METHOD /path", as http.ServeMux takes it
	handler func(*Service) http.Handler
}

// restRoutes are the routes besides the RPC services. openapi.yaml documents
// each of them, and openapi_test.go fails when the two differ.
var restRoutes = []restRoute{
	{"POST /ingest/message", func(s *Service) http.Handler { return s.restAuth(accessIngest, s.handleMessage) }},
	{"POST /ingest/batch", func(s *Service) http.Handler { return s.restAuth(accessIngest, s.handleBatch) }},
	{"GET /ingest/status/{id}", func(s *Service) http.Handler { return s.restAuth(accessIngest, s.handleStatus) }},
	{"GET /ready", func(s *Service) http.Handler { return probe.Ready(&s.ready) }},
	{"GET /live", func(*Service) http.Handler { return http.HandlerFunc(probe.Live) }},
	{"GET /health", func(s *Service) http.Handler {
		checks := []probe.Check{{Name: "postgres", Check: s.store.Ping}}
		if s.opts.Pinger != nil {
			checks = append(checks, probe.Check{Name: "nats", Check: s.opts.Pinger})
		}
		return probe.Health(checks...)
	}},
	{"GET /metrics", func(s *Service) http.Handler { return obs.Handler(s.metrics.Registry) }},
	{"GET /openapi.yaml", func(*Service) http.Handler { return http.HandlerFunc(serveOpenAPI) }},
}

// healthChecker answers grpc.health.v1 from the same flag as /ready.
type healthChecker struct{ s *Service }

func (h healthChecker) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	known := req.Service == ""
	for _, name := range services {
		known = known || req.Service == name
	}
	if !known {
		return nil, connect.NewError(connect.CodeNotFound, nil)
	}
	if h.s.ready.Load() {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
}
