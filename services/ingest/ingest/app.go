package ingest

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nomnomhq/nomnom/internal/bootstrap"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/httpserver"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/store"
)

// Run starts the ingest service from configuration and serves until ctx
// ends, then drains: /ready turns 503, in-flight requests finish (up to
// SHUTDOWN_TIMEOUT), their status rows are written, and connections close.
// onListen, if set, learns the bound address once requests are served.
func Run(ctx context.Context, cfg config.Config, logger *slog.Logger, onListen func(addr string)) error {
	shutdownTracing, err := obs.SetupTracing(ctx, cfg.OTelEndpoint, cmp.Or(cfg.OTelServiceName, "nomnom-ingest"), logger)
	if err != nil {
		return fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	// Deferred first, so it runs last: the spans of the drain are flushed too.
	defer func() {
		if err := shutdownTracing(context.WithoutCancel(ctx)); err != nil {
			logger.Warn("spans not flushed", "error", err)
		}
	}()
	deps, err := bootstrap.Open(ctx, cfg, "nomnom-ingest", logger)
	if err != nil {
		return err
	}
	defer deps.Close()

	svc, err := New(Options{
		JetStream:     deps.JS,
		Store:         store.New(deps.Pool),
		Logger:        logger,
		Stream:        deps.Topology.Stream,
		DLQStream:     deps.Topology.DLQStream(),
		MaxBodyBytes:  cfg.IngestMaxBody,
		MaxBatchBytes: cfg.IngestMaxBatch,
		MaxReplays:    cfg.DLQMaxReplays,
		IngestTokens:  cfg.IngestTokens,
		AdminTokens:   cfg.AdminTokens,
		Pinger:        deps.PingNATS,
	})
	if err != nil {
		return err
	}
	obs.RegisterPool(svc.Metrics().Registry, deps.Pool)

	srv, err := httpserver.Listen(cfg.HTTPAddr, svc.Handler(), logger)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: %w", err)
	}

	// On shutdown: /ready turns 503 at once, the listener stays open for
	// SHUTDOWN_DRAIN_DELAY so load balancers notice, then the server stops
	// accepting and finishes in-flight requests. The status writer outlives
	// it: it stops only after the last request has been answered.
	writerCtx, stopWriter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWriter()
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return svc.Run(writerCtx) })
	g.Go(func() error {
		defer stopWriter()
		return srv.Serve(serveCtx, cfg.ShutdownTimeout)
	})
	g.Go(func() error {
		<-gctx.Done()
		logger.Info("shutting down: /ready now answers 503, draining in-flight requests",
			"drain_delay", cfg.ShutdownDrain, "timeout", cfg.ShutdownTimeout)
		svc.MarkReady(false)
		svc.Drain()
		t := time.NewTimer(cfg.ShutdownDrain)
		defer t.Stop()
		<-t.C
		stopServing()
		return nil
	})
	svc.MarkReady(true)
	logger.Info("ingest ready", "addr", srv.Addr(), "stream", deps.Topology.Stream,
		"nats", config.RedactURL(cfg.NATSURL), "postgres", config.RedactURL(cfg.DatabaseURL))
	if onListen != nil {
		onListen(srv.Addr())
	}
	err = g.Wait()
	logger.Info("ingest stopped")
	return err
}
