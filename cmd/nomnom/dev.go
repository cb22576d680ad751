package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"

	"golang.org/x/sync/errgroup"

	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/devenv"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/services/ingest/ingest"
	"github.com/nomnomhq/nomnom/services/worker/worker"
)

// runDev starts everything a developer needs: PostgreSQL from DATABASE_URL,
// else the local server on 127.0.0.1:5432, else a private cluster under
// .data/; NATS from NATS_URL, else an embedded JetStream server; then the
// ingest service and the worker in this process.
func runDev(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	dataDir := fs.String("data", ".data", "directory for the embedded JetStream store and a private PostgreSQL cluster")
	withParent := fs.Bool("stop-with-parent", false, "shut down when the parent process dies (make run sets it, so stopping make stops the pipeline)")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: nomnom dev [flags]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *withParent {
		stopWithParent()
	}
	// Validate everything before starting anything.
	if _, err := config.Load(e.getenv); err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	boot := obs.NewLogger(e.stdout, "text", slog.LevelInfo)

	pg, err := devenv.EnsurePostgres(ctx, devenv.PostgresOptions{
		URL:     e.getenv("DATABASE_URL"),
		DataDir: filepath.Join(*dataDir, "postgres"),
		Logger:  boot,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := pg.Stop(); err != nil {
			boot.Error("stop postgres", "error", err)
		}
	}()

	natsURL := e.getenv("NATS_URL")
	natsWhere := "NATS at " + config.RedactURL(natsURL) + " (NATS_URL)"
	if natsURL == "" {
		srv, err := devenv.StartNATS(ctx, filepath.Join(*dataDir, "nats"), boot)
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		natsURL = srv.URL()
		natsWhere = fmt.Sprintf("embedded JetStream at %s (store in %s; try: nats -s %s stream info MESSAGES)",
			natsURL, filepath.Join(*dataDir, "nats"), natsURL)
	}

	overrides := map[string]string{"DATABASE_URL": pg.URL(), "NATS_URL": natsURL}
	cfg, err := config.Load(func(k string) string {
		if v, ok := overrides[k]; ok {
			return v
		}
		return e.getenv(k)
	})
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	logger := obs.NewLogger(e.stdout, cfg.LogFormat, cfg.Level())
	logger.Info("starting nomnom dev", "config", cfg)
	logger.Info("postgres: " + pg.Where())
	logger.Info("nats: " + natsWhere)

	// The tracer provider is process-wide: were each service to install its
	// own, the last one would take the other's spans under its name. So one
	// provider serves both, and the services, given no endpoint, install none.
	shutdownTracing, err := obs.SetupTracing(ctx, cfg.OTelEndpoint, cmp.Or(cfg.OTelServiceName, "nomnom-dev"), logger)
	if err != nil {
		return fmt.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
	}
	defer func() {
		if err := shutdownTracing(context.WithoutCancel(ctx)); err != nil {
			logger.Warn("spans not flushed", "error", err)
		}
	}()
	svcCfg := cfg
	svcCfg.OTelEndpoint = ""

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return ingest.Run(gctx, svcCfg, logger.With("service", "ingest"), func(addr string) {
			logger.Info("ingest: listening on " + addr + " (REST, Connect, gRPC, gRPC-Web, /metrics)")
		})
	})
	g.Go(func() error {
		return worker.Run(gctx, svcCfg, logger.With("service", "worker"), func(addr string) {
			logger.Info("worker: health and metrics on " + addr)
		})
	})
	return g.Wait()
}
