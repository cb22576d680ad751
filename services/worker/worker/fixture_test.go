package worker

import (
	"context"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

func TestMain(m *testing.M) {
	if helperMain() {
		return
	}
	goleak.VerifyTestMain(m)
}

// fixture is a worker wired to a fresh database (reached through a proxy
// that can cut it off) and its own JetStream server.
type fixture struct {
	t       *testing.T
	dbURL   string // direct, for assertions
	natsURL string
	proxy   *testutil.Proxy
	db      *pgxpool.Pool // direct
	store   *store.Store  // direct
	js      jetstream.JetStream
	topo    natsx.Topology
	opts    Options
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	f := &fixture{t: t, dbURL: testutil.NewDatabaseURL(t), natsURL: testutil.NewNATS(t)}
	u, err := url.Parse(f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	f.proxy = testutil.NewProxy(t, u.Host)
	u.Host = f.proxy.Addr()
	workerPool, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(workerPool.Close)
	f.db, err = pgxpool.New(ctx, f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.db.Close)
	f.store = store.New(f.db)

	nc, err := nats.Connect(f.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f.js, err = jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	f.topo = natsx.Topology{
		Stream: "MESSAGES", Consumer: "workers", MaxDeliver: 3, AckWait: 2 * time.Second,
		DuplicateWindow: 2 * time.Minute, MaxBytes: -1, DLQMaxBytes: -1,
	}
	if err := natsx.EnsureStreams(ctx, f.js, f.topo, nil); err != nil {
		t.Fatal(err)
	}
	f.opts = Options{
		JetStream:    f.js,
		Store:        store.New(workerPool, store.WithStatementTimeout(300*time.Millisecond)),
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Topology:     f.topo,
		BatchSize:    10,
		PollInterval: 20 * time.Millisecond,
		Concurrency:  2,
		RetryBase:    50 * time.Millisecond,
		RetryMax:     200 * time.Millisecond,
	}
	return f
}

// start runs a worker with the fixture's options until the test ends.
func (f *fixture) start() *Worker {
	f.t.Helper()
	w, stop := f.run()
	f.t.Cleanup(stop)
	testutil.WaitFor(f.t, 10*time.Second, func() (bool, error) { return w.Ready().Load(), nil })
	return w
}

// run starts a worker with the fixture's options; stop ends it and checks
// that Run returned cleanly.
func (f *fixture) run() (w *Worker, stop func()) {
	f.t.Helper()
	w, err := New(f.opts)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	return w, func() {
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("worker Run: %v", err)
		}
	}
}

// publish queues a record as ingest would, without writing its status.
func (f *fixture) publish(entity envelope.Entity, payload string) *envelopev1.Envelope {
	f.t.Helper()
	env, err := envelope.New(entity, []byte(payload), time.Now(), "test", "")
	if err != nil {
		f.t.Fatal(err)
	}
	data, err := envelope.Marshal(env)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.js.PublishMsg(f.t.Context(), &nats.Msg{Subject: entity.IngestSubject(), Data: data},
		jetstream.WithMsgID(env.GetMessageId())); err != nil {
		f.t.Fatal(err)
	}
	return env
}

func (f *fixture) waitStatus(env *envelopev1.Envelope, want store.Status, timeout time.Duration) store.MessageStatus {
	f.t.Helper()
	id := uuid.MustParse(env.GetMessageId())
	var st store.MessageStatus
	testutil.WaitFor(f.t, timeout, func() (bool, error) {
		var err error
		st, err = f.store.GetStatus(context.Background(), id)
		if err != nil {
			return false, err
		}
		if st.Status != want {
			return false, errorf("status %s (attempt %d, error %q), want %s", st.Status, st.Attempt, st.Error, want)
		}
		return true, nil
	})
	return st
}

// dlq returns the dead-letter stream's entries.
func (f *fixture) dlq() []*jetstream.RawStreamMsg {
	f.t.Helper()
	ctx := f.t.Context()
	st, err := f.js.Stream(ctx, f.topo.DLQStream())
	if err != nil {
		f.t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); ; seq++ {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(envelope.DLQSubjects))
		if err != nil {
			return out
		}
		out = append(out, m)
		seq = m.Sequence
	}
}
