// Package bootstrap opens what both services need from configuration: the
// PostgreSQL pool (migrated), the NATS connection and the JetStream streams.
package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/store"
)

// Deps are the open connections of a service.
type Deps struct {
	Pool     *pgxpool.Pool
	NATS     *nats.Conn
	JS       jetstream.JetStream
	Topology natsx.Topology
}

// Topology derives the JetStream topology from configuration.
func Topology(cfg config.Config) natsx.Topology {
	return natsx.Topology{
		Stream:          cfg.NATSStream,
		Consumer:        cfg.NATSConsumer,
		MaxAge:          time.Duration(cfg.NATSMaxAgeHours) * time.Hour,
		MaxBytes:        cfg.NATSMaxBytes,
		DLQMaxAge:       time.Duration(cfg.NATSDLQMaxAgeHrs) * time.Hour,
		DLQMaxBytes:     cfg.NATSDLQMaxBytes,
		Replicas:        cfg.NATSReplicas,
		DuplicateWindow: cfg.NATSDuplicates,
		MaxDeliver:      cfg.WorkerMaxDeliver,
		AckWait:         cfg.WorkerAckWait,
	}
}

// Open connects to PostgreSQL (applying migrations) and NATS (creating or
// updating the streams). name identifies the client to NATS.
func Open(ctx context.Context, cfg config.Config, name string, logger *slog.Logger) (*Deps, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	pcfg.MaxConns = int32(cfg.DatabaseMaxConns)
	// Without it a dial to an unreachable host waits for the kernel's TCP
	// timeout, minutes, while a worker holds its batch.
	pcfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres pool: %w", err)
	}
	d := &Deps{Pool: pool, Topology: Topology(cfg)}
	if err := migrate(ctx, pool, cfg, logger); err != nil {
		d.Close()
		return nil, fmt.Errorf("postgres at %s: %w", config.RedactURL(cfg.DatabaseURL), err)
	}
	d.NATS, err = natsx.Connect(cfg.NATSURL, name, logger)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("%w (NATS_URL=%s)", err, config.RedactURL(cfg.NATSURL))
	}
	// An ack that never comes (a leader election, a lost reply) must not
	// hold a request or a worker loop for ever.
	d.JS, err = jetstream.New(d.NATS, jetstream.WithPublishAsyncMaxPending(8192),
		jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if err := natsx.EnsureStreams(ctx, d.JS, d.Topology, logger); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// migrate applies the migrations, waiting while PostgreSQL cannot be
// reached or is still starting: a service started during a short outage
// (a rollout, a failover) comes up when the database does, instead of
// exiting; its orchestrator decides how long that may take (the
// Kubernetes manifests give it two minutes).
func migrate(ctx context.Context, pool *pgxpool.Pool, cfg config.Config, logger *slog.Logger) error {
	wait := 500 * time.Millisecond
	for {
		err := store.Migrate(ctx, pool, logger)
		var pgErr *pgconn.PgError
		starting := errors.As(err, &pgErr) && pgErr.Code == "57P03" // the database system is starting up
		if err == nil || !(store.Unreachable(err) || starting) || ctx.Err() != nil {
			return err
		}
		logger.Warn("waiting for postgres", "url", config.RedactURL(cfg.DatabaseURL), "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("stopped while waiting: %w", err)
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// PingNATS checks the NATS connection with a round trip to the server.
func (d *Deps) PingNATS(ctx context.Context) error {
	if !d.NATS.IsConnected() {
		return fmt.Errorf("not connected (%s)", d.NATS.Status())
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Second)
	}
	return d.NATS.FlushTimeout(time.Until(deadline))
}

// Close flushes NATS (pending acks reach the server) and closes everything.
func (d *Deps) Close() {
	if d.NATS != nil {
		_ = d.NATS.FlushTimeout(5 * time.Second)
		d.NATS.Close()
	}
	if d.Pool != nil {
		d.Pool.Close()
	}
}
