package worker

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"golang.org/x/sync/errgroup"

	"github.com/nomnomhq/nomnom/internal/bootstrap"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/httpserver"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/probe"
	"github.com/nomnomhq/nomnom/internal/store"
)

// Run starts the worker from configuration with its HTTP port (/ready,
// /live, /health, /metrics) and runs until ctx ends; the batch in flight is
// finished first. onListen, if set, learns the HTTP address.
func Run(ctx context.Context, cfg config.Config, logger *slog.Logger, onListen func(addr string)) error {
	logger.Info(fmt.Sprintf("Worker config: batch_size=%d, max_deliver=%d, poll_interval=%dms",
		cfg.WorkerBatchSize, cfg.WorkerMaxDeliver, cfg.WorkerPollMS),
		"concurrency", cfg.WorkerConcurrency, "ack_wait", cfg.WorkerAckWait, "statement_timeout", cfg.WorkerStmtTimeout,
		"retry_base_delay", cfg.WorkerRetryBase, "retry_max_delay", cfg.WorkerRetryMax)
	shutdownTracing, err := obs.SetupTracing(ctx, cfg.OTelEndpoint, cmp.Or(cfg.OTelServiceName, "nomnom-worker"), logger)
	if err != nil {
		return fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	// Deferred first, so it runs last: the spans of the final batch are flushed too.
	defer func() {
		if err := shutdownTracing(context.WithoutCancel(ctx)); err != nil {
			logger.Warn("spans not flushed", "error", err)
		}
	}()
	deps, err := bootstrap.Open(ctx, cfg, "nomnom-worker", logger)
	if err != nil {
		return err
	}
	defer deps.Close()
	w, err := New(Options{
		JetStream:    deps.JS,
		Store:        store.New(deps.Pool, store.WithStatementTimeout(cfg.WorkerStmtTimeout)),
		Logger:       logger,
		Topology:     deps.Topology,
		BatchSize:    cfg.WorkerBatchSize,
		PollInterval: cfg.PollInterval(),
		Concurrency:  cfg.WorkerConcurrency,
		RetryBase:    cfg.WorkerRetryBase,
		RetryMax:     cfg.WorkerRetryMax,
	})
	if err != nil {
		return err
	}
	obs.RegisterPool(w.Metrics().Registry, deps.Pool)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", probe.Ready(w.Ready()))
	mux.HandleFunc("GET /live", probe.Live)
	mux.HandleFunc("GET /health", probe.Health(
		probe.Check{Name: "postgres", Check: deps.Pool.Ping},
		probe.Check{Name: "nats", Check: deps.PingNATS},
	))
	mux.Handle("GET /metrics", obs.Handler(w.Metrics().Registry))
	srv, err := httpserver.Listen(cfg.WorkerHTTPAddr, w.Metrics().HTTP.Wrap(mux), logger)
	if err != nil {
		return fmt.Errorf("WORKER_HTTP_ADDR: %w", err)
	}
	logger.Info("worker consuming", "stream", deps.Topology.Stream, "consumer", deps.Topology.Consumer,
		"http", srv.Addr(), "dlq_stream", deps.Topology.DLQStream())
	if onListen != nil {
		onListen(srv.Addr())
	}

	// The HTTP port stays up until consumption has stopped, so probes see
	// the drain.
	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHTTP()
	var g errgroup.Group
	g.Go(func() error { return srv.Serve(httpCtx, cfg.ShutdownTimeout) })
	g.Go(func() error {
		defer stopHTTP()
		err := w.Run(ctx)
		logger.Info("worker stopped consuming")
		return err
	})
	return g.Wait()
}
