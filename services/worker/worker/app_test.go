package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/testutil"
	"github.com/nomnomhq/nomnom/services/worker/worker"
)

// TestRunLogsConfigAndStops starts the worker from configuration, checks the
// plan's start-up line, and stops it: Run must return nil once its context
// ends, even when that happens before consumption has begun.
func TestRunLogsConfigAndStops(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want string
		// stopInOnListen cancels from inside onListen, before the consumer
		// exists, as a SIGTERM during start-up would.
		stopInOnListen bool
	}{
		{
			name: "plan defaults",
			want: "Worker config: batch_size=10, max_deliver=3, poll_interval=100ms",
		},
		{
			name: "plan's configuration test",
			env:  map[string]string{"WORKER_BATCH_SIZE": "5", "WORKER_MAX_DELIVER": "2"},
			want: "Worker config: batch_size=5, max_deliver=2, poll_interval=100ms",
		},
		{
			name:           "stopped during start-up",
			env:            map[string]string{"WORKER_POLL_INTERVAL_MS": "20"},
			want:           "Worker config: batch_size=10, max_deliver=3, poll_interval=20ms",
			stopInOnListen: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dbURL := testutil.NewDatabaseURL(t)
			env := map[string]string{
				"DATABASE_URL":     dbURL,
				"NATS_URL":         testutil.NewNATS(t),
				"WORKER_HTTP_ADDR": "127.0.0.1:0",
			}
			for k, v := range tt.env {
				env[k] = v
			}
			cfg, err := config.Load(func(k string) string { return env[k] })
			if err != nil {
				t.Fatalf("config: %v", err)
			}
			var logs testutil.LogBuffer
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			listening := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- worker.Run(ctx, cfg, obs.NewLogger(&logs, "text", cfg.Level()), func(string) {
					if tt.stopInOnListen {
						cancel()
					}
					close(listening)
				})
			}()
			select {
			case <-listening:
			case err := <-done:
				t.Fatalf("Run returned before listening: %v\n%s", err, logs.String())
			case <-time.After(30 * time.Second):
				t.Fatal("worker not listening after 30s")
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v after cancel, want nil\n%s", err, logs.String())
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return within 30s of cancel")
			}

			out := logs.String()
			if !strings.Contains(out, tt.want) {
				t.Errorf("start-up log lacks %q:\n%s", tt.want, out)
			}
			// The test database URL carries a password; no log line may.
			if _, pw, ok := strings.Cut(strings.SplitN(strings.TrimPrefix(dbURL, "postgres://"), "@", 2)[0], ":"); ok && strings.Contains(out, pw) {
				t.Errorf("the database password appears in the log:\n%s", out)
			}
		})
	}
}
