package worker

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/internal/bootstrap"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/store"
)

// helperEnv makes the test binary act as a worker process whose processor
// panics on any record containing the value of this variable: the
// process dies mid-batch, as it would on a poison message.
const helperEnv = "NOMNOM_TEST_CRASH_ON"

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// helperMain runs the crashing worker when the test binary was started as
// one, and reports whether it did.
func helperMain() bool {
	needle := os.Getenv(helperEnv)
	if needle == "" {
		return false
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runCrashingWorker(ctx, []byte(needle)); err != nil {
		fmt.Fprintln(os.Stderr, "crashing worker:", err)
		os.Exit(1)
	}
	return true
}

func runCrashingWorker(ctx context.Context, needle []byte) error {
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		return err
	}
	logger := obs.NewLogger(os.Stderr, "text", cfg.Level())
	deps, err := bootstrap.Open(ctx, cfg, "crashing-worker", logger)
	if err != nil {
		return err
	}
	defer deps.Close()
	w, err := New(Options{
		JetStream: deps.JS, Store: store.New(deps.Pool), Logger: logger, Topology: deps.Topology,
		BatchSize: cfg.WorkerBatchSize, PollInterval: cfg.PollInterval(), Concurrency: 1,
		RetryBase: cfg.WorkerRetryBase, RetryMax: cfg.WorkerRetryMax,
		BeforeStore: func(env *envelopev1.Envelope) {
			if bytes.Contains(env.GetPayload(), needle) {
				panic("processor crashed on " + env.GetMessageId())
			}
		},
	})
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
