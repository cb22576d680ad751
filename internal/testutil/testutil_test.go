package testutil

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNewDatabaseGivesDistinctMigratedDatabases(t *testing.T) {
	ctx := t.Context()
	a, b := NewDatabase(t), NewDatabase(t)

	names := map[string]bool{}
	for _, pool := range []interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}{a, b} {
		var name string
		var table *string
		err := pool.QueryRow(ctx, "SELECT current_database(), to_regclass('message_status')::text").Scan(&name, &table)
		if err != nil {
			t.Fatalf("query: %v", err)
		}
		if table == nil {
			t.Errorf("database %s has no message_status table", name)
		}
		names[name] = true
	}
	if len(names) != 2 {
		t.Fatalf("both pools use database %v", names)
	}

	// Writes to one are invisible in the other.
	_, err := a.Exec(ctx, `INSERT INTO message_status (message_id, entity_type, status, received_at)
		VALUES (gen_random_uuid(), 'order', 'accepted', now())`)
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	var n int
	if err := b.QueryRow(ctx, "SELECT count(*) FROM message_status").Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	if n != 0 {
		t.Errorf("second database sees %d rows written to the first", n)
	}
}

func TestNewDatabaseURL(t *testing.T) {
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, NewDatabaseURL(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var version int64
	if err := conn.QueryRow(ctx, "SELECT max(version_id) FROM goose_db_version").Scan(&version); err != nil {
		t.Fatalf("goose version: %v", err)
	}
	if version < 1 {
		t.Errorf("goose version = %d, want migrations applied", version)
	}
}

func TestNewNATSServesJetStream(t *testing.T) {
	ctx := t.Context()
	a, b := NewNATS(t), NewNATS(t)
	if a == b {
		t.Fatalf("two servers share URL %s", a)
	}
	for _, u := range []string{a, b} {
		js := connect(t, u)
		// The same stream name on both: each test has its own server.
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MESSAGES", Subjects: []string{"msg.>"}}); err != nil {
			t.Fatalf("create stream on %s: %v", u, err)
		}
		if _, err := js.Publish(ctx, "msg.1", []byte("x")); err != nil {
			t.Fatalf("publish on %s: %v", u, err)
		}
	}
}

func TestRestartableNATSKeepsURLAndStreams(t *testing.T) {
	ctx := t.Context()
	n := NewRestartableNATS(t)
	url := n.URL()

	disconnected := make(chan struct{}, 1)
	nc, err := nats.Connect(url,
		nats.MaxReconnects(-1),
		nats.ReconnectWait(10*time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) {
			select {
			case disconnected <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "MESSAGES", Subjects: []string{"msg.>"}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "msg.1", []byte("x")); err != nil {
		t.Fatalf("publish: %v", err)
	}

	n.Stop()
	n.Stop() // idempotent
	select {
	case <-disconnected:
	case <-time.After(5 * time.Second):
		t.Fatal("client did not notice the outage")
	}

	n.Start()
	if n.URL() != url {
		t.Fatalf("URL changed across restart: %s -> %s", url, n.URL())
	}
	WaitFor(t, 5*time.Second, func() (bool, error) {
		return nc.IsConnected(), fmt.Errorf("client status %s", nc.Status())
	})
	s, err := js.Stream(ctx, "MESSAGES")
	if err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("stream has %d messages after restart, want 1", info.State.Msgs)
	}
}

func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestWaitForReturnsOnceTrue(t *testing.T) {
	var calls atomic.Int32
	WaitFor(t, 5*time.Second, func() (bool, error) {
		return calls.Add(1) >= 3, errors.New("not yet")
	})
	if got := calls.Load(); got != 3 {
		t.Errorf("cond called %d times, want 3", got)
	}
}

// fatalRecorder captures Fatalf so WaitFor's failure can be asserted on.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestWaitForFailsWithLastError(t *testing.T) {
	rec := &fatalRecorder{TB: t}
	var calls atomic.Int32
	WaitFor(rec, 50*time.Millisecond, func() (bool, error) {
		return false, fmt.Errorf("status = accepted (check %d)", calls.Add(1))
	})
	want := fmt.Sprintf("status = accepted (check %d)", calls.Load())
	if !strings.Contains(rec.msg, "within 50ms") || !strings.HasSuffix(rec.msg, want) {
		t.Errorf("failure message = %q, want the timeout and %q", rec.msg, want)
	}
}
