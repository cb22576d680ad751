// Command nomnom is the project's CLI:
//
//	nomnom dev                      run PostgreSQL (if needed), JetStream, ingest and worker in one process
//	nomnom send [flags] [JSON...]   ingest records (arguments, or NDJSON on stdin)
//	nomnom status [flags] ID        show a message's status (--watch to follow it)
//	nomnom dlq list|show|replay|purge  inspect and replay the dead-letter queue
//	nomnom bench [flags]            measure end-to-end throughput and latency
//	nomnom postgres [--data DIR]    print a PostgreSQL URL for tests (make test)
//
// Client commands talk to the ingest service at --url (NOMNOM_URL, default
// http://localhost:8080) with --token (NOMNOM_TOKEN) as bearer token.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	if errors.Is(err, errHelp) {
		return
	}
	if errors.Is(err, errUsage) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nomnom:", err)
		os.Exit(1)
	}
}

// errUsage and errHelp end a command whose usage was printed: after a
// mistake (exit status 2) or on -h (exit status 0).
var (
	errUsage = errors.New("usage")
	errHelp  = errors.New("help")
)

const usage = `usage: nomnom <command> [flags]

commands:
  dev      run the whole pipeline locally (what 'make run' does)
  send     ingest records: nomnom send '{"order_key":"O-1","customer_key":"C-1"}', or NDJSON on stdin
  status   show a message's status: nomnom status [--watch] [--json] MESSAGE_ID
  dlq      dead-letter queue: nomnom dlq list|show|replay|purge (see nomnom dlq -h)
  bench    end-to-end benchmark against embedded dependencies
  postgres print a PostgreSQL admin URL for tests, starting a private cluster if none runs

Run 'nomnom <command> -h' for a command's flags.
`

// env is what commands may read from the environment and streams.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "dev":
		return runDev(ctx, rest, e)
	case "send":
		return runSend(ctx, rest, e)
	case "status":
		return runStatus(ctx, rest, e)
	case "dlq":
		return runDLQ(ctx, rest, e)
	case "bench":
		return runBench(ctx, rest, e)
	case "postgres":
		return runPostgres(ctx, rest, e)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "unknown command %q\n\n%s", cmd, usage)
	return errUsage
}
