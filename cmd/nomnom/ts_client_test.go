package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/testutil"
	"github.com/nomnomhq/nomnom/services/ingest/ingest"
	"github.com/nomnomhq/nomnom/services/worker/worker"
)

// tsClientDir is the generated TypeScript client package, relative to this
// package's directory (where go test runs).
const tsClientDir = "../../gen/ts"

// TestTypeScriptClient runs the TypeScript client's own test (gen/ts,
// `npm test`) against a live ingest service and worker, so the generated
// client is checked over Connect (HTTP/1.1 and HTTP/2) and gRPC on every
// `make test`.
func TestTypeScriptClient(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the pipeline and builds the TypeScript client")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("npm is not on PATH: the TypeScript client test needs Node.js 20+ with npm: %v", err)
	}
	dir, err := filepath.Abs(tsClientDir)
	if err != nil {
		t.Fatal(err)
	}
	// `make test` installs the dependencies first; a bare `go test` on a
	// fresh checkout installs them here, from the committed lock file.
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); errors.Is(err, fs.ErrNotExist) {
		t.Logf("%s/node_modules is missing; running npm ci", tsClientDir)
		runNPM(t, npm, dir, nil, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	}

	addr := startPipeline(t)
	runNPM(t, npm, dir, []string{"NOMNOM_URL=http://" + addr}, "test")
}

// startPipeline runs the ingest service and the worker against a fresh
// database and JetStream server until the test ends, and returns the
// ingest address.
func startPipeline(t *testing.T) string {
	t.Helper()
	vars := map[string]string{
		"DATABASE_URL":            testutil.NewDatabaseURL(t),
		"NATS_URL":                testutil.NewNATS(t),
		"HTTP_ADDR":               "127.0.0.1:0",
		"WORKER_HTTP_ADDR":        "127.0.0.1:0",
		"WORKER_POLL_INTERVAL_MS": "20",
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	var logs testutil.LogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	ctx, cancel := context.WithCancel(context.Background())
	ingestAddr := make(chan string, 1)
	workerUp := make(chan struct{}, 1)
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() {
		errs <- ingest.Run(ctx, cfg, logger.With("service", "ingest"), func(addr string) { ingestAddr <- addr })
	})
	wg.Go(func() {
		errs <- worker.Run(ctx, cfg, logger.With("service", "worker"), func(string) { workerUp <- struct{}{} })
	})
	// Registered after the database and NATS server, so it runs before
	// their cleanups: both services disconnect before those go away.
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("pipeline stopped with: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("pipeline log:\n%s", logs.String())
		}
	})

	var addr string
	waitWorker := workerUp // nil once the worker is up
	deadline := time.After(30 * time.Second)
	for addr == "" || waitWorker != nil {
		select {
		case addr = <-ingestAddr:
		case <-waitWorker:
			waitWorker = nil
		case err := <-errs:
			errs <- err // for the cleanup to report
			t.Fatalf("pipeline failed to start: %v", err)
		case <-deadline:
			t.Fatal("pipeline not listening after 30s")
		}
	}
	return addr
}

// runNPM runs npm in dir with extra environment variables and fails the test,
// showing npm's output, if it exits non-zero.
func runNPM(t *testing.T, npm, dir string, env []string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	// npm starts node processes that may hold the output pipe after npm
	// itself is killed on timeout.
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm %v in %s: %v\n%s", args, tsClientDir, err, out)
	}
	t.Logf("npm %v:\n%s", args, out)
}
