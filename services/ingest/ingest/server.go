package ingest

import (
	"context"
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
	mux.Handle(ingestv1connect.NewIngestServiceHandler(s,
		connect.WithInterceptors(interceptor{s: s, access: accessIngest})))
	mux.Handle(statusv1connect.NewStatusServiceHandler(s,
		connect.WithInterceptors(interceptor{s: s, access: accessIngest, validate: true})))
	mux.Handle(deadletterv1connect.NewDeadLetterServiceHandler(s,
		connect.WithInterceptors(interceptor{s: s, access: accessAdmin, validate: true})))
	mux.Handle(grpchealth.NewHandler(healthChecker{s}))
	reflector := grpcreflect.NewStaticReflector(services...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))

	mux.HandleFunc("POST /ingest/message", s.restAuth(accessIngest, s.handleMessage))
	mux.HandleFunc("POST /ingest/batch", s.restAuth(accessIngest, s.handleBatch))
	mux.HandleFunc("GET /ingest/status/{id}", s.restAuth(accessIngest, s.handleStatus))

	mux.HandleFunc("GET /ready", probe.Ready(&s.ready))
	mux.HandleFunc("GET /live", probe.Live)
	checks := []probe.Check{{Name: "postgres", Check: s.store.Ping}}
	if s.opts.Pinger != nil {
		checks = append(checks, probe.Check{Name: "nats", Check: s.opts.Pinger})
	}
	mux.HandleFunc("GET /health", probe.Health(checks...))
	mux.Handle("GET /metrics", obs.Handler(s.metrics.Registry))
	return s.metrics.HTTP.Wrap(mux)
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
