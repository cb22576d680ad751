package devenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultDatabase is the database EnsurePostgres creates when
// PostgresOptions.Database is empty.
const DefaultDatabase = "nomnom"

// defaultLocalAddr is where a developer's own PostgreSQL usually listens.
const defaultLocalAddr = "127.0.0.1:5432"

// localProbeTimeout keeps `make run` snappy on machines without PostgreSQL.
const localProbeTimeout = 2 * time.Second

// PostgresOptions says where EnsurePostgres looks for PostgreSQL and where it
// may start its own.
type PostgresOptions struct {
	// URL is DATABASE_URL; empty means unset. When set it is used as is.
	URL string
	// DataDir holds the private cluster, e.g. .data/postgres. Its parent
	// directory also receives the socket directory and the server log.
	DataDir string
	// Database is the database to use on the local server or private
	// cluster, created when missing. Default DefaultDatabase. When URL is
	// set, the database named in URL is used instead.
	Database string
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger

	// localAddr replaces defaultLocalAddr so tests can force the
	// private-cluster path on a machine that runs PostgreSQL.
	localAddr string
}

// Postgres is a PostgreSQL server EnsurePostgres found or started.
type Postgres struct {
	url     string
	where   string
	cluster *cluster // nil unless EnsurePostgres started a private cluster

	stopOnce sync.Once
	stopErr  error
}

// URL returns the connection URL of the database to use.
func (p *Postgres) URL() string { return p.url }

// Where describes the server for start-up logs, without credentials, e.g.
// "PostgreSQL at 127.0.0.1:5432 (existing server), database nomnom".
func (p *Postgres) Where() string { return p.where }

// Stop stops the private cluster if EnsurePostgres started one (pg_ctl stop
// -m fast: open sessions are rolled back, no wait for clients). Servers it
// merely found are left alone. Calling it more than once is harmless.
func (p *Postgres) Stop() error {
	p.stopOnce.Do(func() {
		if p.cluster == nil {
			return
		}
		// Stop runs during shutdown, when the caller's context is usually
		// already cancelled, so it brings its own deadline.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		p.stopErr = p.cluster.stop(ctx)
	})
	return p.stopErr
}

// EnsurePostgres returns a PostgreSQL database to work with, trying in order:
// opts.URL (its database is created if missing and the role may do so);
// a server on 127.0.0.1:5432 accepting user postgres without a password;
// a private cluster in opts.DataDir, initialised on first use and started on
// a free port. Call Stop on the result when done.
func EnsurePostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.URL != "" {
		return useURL(ctx, opts.URL, logger)
	}
	database := opts.Database
	if database == "" {
		database = DefaultDatabase
	}
	addr := opts.localAddr
	if addr == "" {
		addr = defaultLocalAddr
	}
	p, err := useLocal(ctx, addr, database)
	if err == nil {
		return p, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("ensure postgres: %w", ctx.Err())
	}
	logger.Info("no usable PostgreSQL server, starting a private cluster", "addr", addr, "reason", err)
	if opts.DataDir == "" {
		return nil, fmt.Errorf("ensure postgres: no server at %s and no data directory for a private cluster", addr)
	}
	return startCluster(ctx, opts.DataDir, database, logger)
}

// useURL takes DATABASE_URL as given. Creating its database is a convenience:
// a role without CREATEDB, or a server without a "postgres" database, is fine
// as long as the database already exists, which the services find out anyway.
func useURL(ctx context.Context, rawURL string, logger *slog.Logger) (*Postgres, error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	where := fmt.Sprintf("PostgreSQL at %s, database %s (DATABASE_URL)", hostPort(cfg.Host, cfg.Port), cfg.Database)
	if cfg.Database != "" {
		err := ensureDatabase(ctx, cfg, cfg.Database)
		switch {
		case isPermissionError(err):
			logger.Warn("cannot check or create the DATABASE_URL database; using it as is",
				"database", cfg.Database, "err", err)
		case err != nil:
			return nil, fmt.Errorf("DATABASE_URL: %w", err)
		}
	}
	return &Postgres{url: rawURL, where: where}, nil
}

// useLocal tries the developer's own server with the Debian/Homebrew default
// of trust authentication for local TCP.
func useLocal(ctx context.Context, addr, database string) (*Postgres, error) {
	cfg, err := pgx.ParseConfig(localURL(addr, "postgres") + "&connect_timeout=2")
	if err != nil {
		return nil, fmt.Errorf("parse local url: %w", err)
	}
	probeCtx, cancel := context.WithTimeout(ctx, localProbeTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(probeCtx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	_ = conn.Close(ctx)

	if err := ensureDatabase(ctx, cfg, database); err != nil {
		return nil, err
	}
	return &Postgres{
		url:   localURL(addr, database),
		where: fmt.Sprintf("PostgreSQL at %s (existing server), database %s", addr, database),
	}, nil
}

// localURL is the URL of database on a trust-auth server at addr.
func localURL(addr, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     addr,
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// ensureDatabase creates database on the server cfg points at, connecting to
// its "postgres" maintenance database because the target may not exist yet.
func ensureDatabase(ctx context.Context, cfg *pgx.ConnConfig, database string) error {
	admin := cfg.Copy()
	admin.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return fmt.Errorf("connect to database postgres on %s: %w", hostPort(admin.Host, admin.Port), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var exists bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", database).Scan(&exists)
	if err != nil {
		return fmt.Errorf("look up database %s: %w", database, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{database}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" {
		// duplicate_database: a concurrent `make run` or test got there first.
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", database, err)
	}
	return nil
}

// isPermissionError reports errors that mean "not allowed to look or create",
// as opposed to "server down".
func isPermissionError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "42501", // insufficient_privilege, e.g. CREATE DATABASE without CREATEDB
		"28000", // invalid_authorization_specification: pg_hba rejects the postgres database
		"28P01", // invalid_password
		"3D000": // invalid_catalog_name: the server has no "postgres" database
		return true
	}
	return false
}

func hostPort(host string, port uint16) string {
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}
