package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"

	"github.com/nomnomhq/nomnom/internal/devenv"
)

// runPostgres prints the URL of a PostgreSQL server's administrative
// database, for tests that create their own databases on it: DATABASE_URL's
// server if set, else 127.0.0.1:5432, else a private cluster it starts
// under --data and leaves running (pg_ctl -D DIR stop ends it). This is how
// `make test` works on a machine with PostgreSQL installed but not running.
func runPostgres(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("postgres", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	dataDir := fs.String("data", ".data/test-postgres", "directory for a private cluster")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: nomnom postgres [flags]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	pg, err := devenv.EnsurePostgres(ctx, devenv.PostgresOptions{
		URL:      e.getenv("DATABASE_URL"),
		DataDir:  *dataDir,
		Database: "postgres",
		Logger:   slog.New(slog.NewTextHandler(e.stderr, nil)),
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stderr, "postgres: "+pg.Where())
	_, err = fmt.Fprintln(e.stdout, pg.URL())
	return err
}
