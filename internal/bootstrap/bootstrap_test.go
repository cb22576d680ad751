package bootstrap_test

import (
	"context"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nomnomhq/nomnom/internal/bootstrap"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestOpenWaitsForPostgres: a service started while PostgreSQL cannot be
// reached waits for it, saying so, and comes up once it answers.
func TestOpenWaitsForPostgres(t *testing.T) {
	u, err := url.Parse(testutil.NewDatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := testutil.NewProxy(t, u.Host)
	u.Host = proxy.Addr()
	env := map[string]string{"DATABASE_URL": u.String(), "NATS_URL": testutil.NewNATS(t)}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LogBuffer{}
	proxy.Down()
	type result struct {
		deps *bootstrap.Deps
		err  error
	}
	opened := make(chan result, 1)
	go func() {
		d, err := bootstrap.Open(t.Context(), cfg, "bootstrap-test", slog.New(slog.NewTextHandler(logs, nil)))
		opened <- result{d, err}
	}()
	testutil.WaitFor(t, 10*time.Second, func() (bool, error) {
		return strings.Contains(logs.String(), "waiting for postgres"), nil
	})
	proxy.Up()
	select {
	case r := <-opened:
		if r.err != nil {
			t.Fatalf("Open after PostgreSQL came back: %v", r.err)
		}
		r.deps.Close()
	case <-time.After(30 * time.Second):
		t.Fatalf("Open still waiting 30s after PostgreSQL came back; log:\n%s", logs.String())
	}
}

// TestOpenStopsWaitingOnCancel: a service stopped while it waits returns.
func TestOpenStopsWaitingOnCancel(t *testing.T) {
	env := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/nomnom?connect_timeout=1", "NATS_URL": testutil.NewNATS(t)}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	logs := &testutil.LogBuffer{}
	opened := make(chan error, 1)
	go func() {
		_, err := bootstrap.Open(ctx, cfg, "bootstrap-test", slog.New(slog.NewTextHandler(logs, nil)))
		opened <- err
	}()
	testutil.WaitFor(t, 10*time.Second, func() (bool, error) {
		return strings.Contains(logs.String(), "waiting for postgres"), nil
	})
	cancel()
	select {
	case err := <-opened:
		if err == nil {
			t.Fatal("Open returned no error after being stopped")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open still waiting 10s after being stopped")
	}
}
