package worker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

func TestPermanentFailureIsDeadLetteredOnFirstAttempt(t *testing.T) {
	f := newFixture(t)
	f.start()
	bad := f.publish(envelope.Order, `{"order_key":"DLQ-TEST","customer_key":null}`)
	good := f.publish(envelope.Order, `{"order_key":"OK-1","customer_key":"C-1"}`)

	st := f.waitStatus(bad, store.StatusDLQ, 10*time.Second)
	f.waitStatus(good, store.StatusCompleted, 10*time.Second)
	if st.Attempt != 1 || len(st.Attempts) != 1 || st.Attempts[0].ErrorClass != ClassPermanent {
		t.Fatalf("dead letter after attempt %d with attempts %+v; want one permanent attempt", st.Attempt, st.Attempts)
	}
	if !strings.Contains(st.Error, "customer_key") {
		t.Errorf("status error %q does not name customer_key", st.Error)
	}
	entries := f.dlq()
	if len(entries) != 1 {
		t.Fatalf("DLQ holds %d entries, want 1", len(entries))
	}
	h := entries[0].Header
	for key, want := range map[string]string{
		natsx.HeaderErrorClass: ClassPermanent,
		natsx.HeaderAttempts:   "1",
		natsx.HeaderMessageID:  bad.GetMessageId(),
		natsx.HeaderSubject:    "messages.ingest.order",
	} {
		if got := h.Get(key); got != want {
			t.Errorf("header %s = %q, want %q", key, got, want)
		}
	}
	if entries[0].Subject != "messages.dlq.order" || !strings.Contains(h.Get(natsx.HeaderError), "customer_key") {
		t.Errorf("entry on %s with error %q", entries[0].Subject, h.Get(natsx.HeaderError))
	}
	if st.DLQSequence != entries[0].Sequence {
		t.Errorf("status records DLQ sequence %d, entry is %d", st.DLQSequence, entries[0].Sequence)
	}
}

// lockOrder stores an order row and holds its row lock in an open
// transaction, so the worker's upsert of that key times out: a real
// transient failure. The returned func releases the lock.
func lockOrder(t *testing.T, f *fixture, key string) (release func()) {
	t.Helper()
	ctx := t.Context()
	if _, err := f.db.Exec(ctx, `INSERT INTO orders (order_key, customer_key, received_at, message_id)
		VALUES ($1, 'C-0', now() - interval '1 day', $2)`, key, uuid.New()); err != nil {
		t.Fatal(err)
	}
	tx, err := f.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM orders WHERE order_key = $1 FOR UPDATE`, key); err != nil {
		t.Fatal(err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			_ = tx.Rollback(context.Background())
		}
	}
	t.Cleanup(release)
	return release
}

func TestTransientFailureIsRetriedAndRecovers(t *testing.T) {
	f := newFixture(t)
	f.topo.MaxDeliver = 10
	f.opts.Topology = f.topo
	release := lockOrder(t, f, "LOCKED-1")
	f.start()
	env := f.publish(envelope.Order, `{"order_key":"LOCKED-1","customer_key":"C-1"}`)

	failed := f.waitStatus(env, store.StatusFailed, 10*time.Second)
	if failed.RetryCount < 1 || !strings.Contains(failed.Error, "statement timeout") {
		t.Errorf("failed status: retry_count %d, error %q", failed.RetryCount, failed.Error)
	}
	release()
	done := f.waitStatus(env, store.StatusCompleted, 10*time.Second)
	if done.Attempt < 2 || len(done.Attempts) < 1 || done.Attempts[0].ErrorClass != ClassTransient {
		t.Errorf("completed at attempt %d with history %+v; want a transient failure first", done.Attempt, done.Attempts)
	}
	var customer string
	if err := f.db.QueryRow(t.Context(), `SELECT customer_key FROM orders WHERE order_key = 'LOCKED-1'`).Scan(&customer); err != nil || customer != "C-1" {
		t.Errorf("order row customer_key = %q (%v), want C-1", customer, err)
	}
	if n := len(f.dlq()); n != 0 {
		t.Errorf("DLQ holds %d entries, want 0", n)
	}
}

func TestTransientFailureIsDeadLetteredAfterMaxDeliver(t *testing.T) {
	f := newFixture(t)
	lockOrder(t, f, "LOCKED-2")
	f.start()
	env := f.publish(envelope.Order, `{"order_key":"LOCKED-2","customer_key":"C-1"}`)

	st := f.waitStatus(env, store.StatusDLQ, 20*time.Second)
	if int(st.Attempt) != f.topo.MaxDeliver {
		t.Errorf("dead-lettered at attempt %d, want WORKER_MAX_DELIVER=%d", st.Attempt, f.topo.MaxDeliver)
	}
	var attempts []int32
	for _, a := range st.Attempts {
		attempts = append(attempts, a.Attempt)
		if a.ErrorClass != ClassTransient {
			t.Errorf("attempt %d class %s, want transient", a.Attempt, a.ErrorClass)
		}
	}
	if len(attempts) != f.topo.MaxDeliver {
		t.Errorf("attempt history %v, want one entry per delivery (%d)", attempts, f.topo.MaxDeliver)
	}
	entries := f.dlq()
	if len(entries) != 1 {
		t.Fatalf("DLQ holds %d entries, want 1", len(entries))
	}
	if got := entries[0].Header.Get(natsx.HeaderAttempts); got != strconv.Itoa(f.topo.MaxDeliver) {
		t.Errorf("DLQ attempts header %q, want %d", got, f.topo.MaxDeliver)
	}
	if got := entries[0].Header.Get(natsx.HeaderErrorClass); got != ClassTransient {
		t.Errorf("DLQ class header %q, want transient", got)
	}
}

// A crash after the dead-letter publish but before the ack means the
// message is delivered again and dead-lettered again; the second publish
// must not make a second entry.
func TestDeadLetterIsIdempotentAcrossACrash(t *testing.T) {
	f := newFixture(t)
	w, err := New(f.opts)
	if err != nil {
		t.Fatal(err)
	}
	env := f.publish(envelope.Order, `{"order_key":"X","customer_key":null}`)
	data, err := envelope.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	for attempt := int32(1); attempt <= 2; attempt++ {
		d := &delivery{data: data, subject: "messages.ingest.order", seq: 1, attempt: attempt}
		d.decodePayload()
		if ok := w.deadLetter(t.Context(), []failure{{d: d, class: ClassPermanent, err: d.err}}); !ok[0] {
			t.Fatalf("attempt %d: dead letter not recorded", attempt)
		}
	}
	if n := len(f.dlq()); n != 1 {
		t.Fatalf("DLQ holds %d entries after a repeated dead-lettering, want 1", n)
	}
	st, err := f.store.GetStatus(t.Context(), uuid.MustParse(env.GetMessageId()))
	if err != nil || st.Status != store.StatusDLQ || st.DLQSequence != 1 {
		t.Fatalf("status %+v (%v), want dlq pointing at entry 1", st, err)
	}
}

// A PostgreSQL outage pauses the worker: messages wait, no delivery
// attempt is spent, nothing reaches the DLQ, and everything is stored once
// the database is back. The outage outlasts the ack wait several times over,
// so a worker that let deliveries time out would dead-letter them.
func TestDatabaseOutagePausesWithoutSpendingAttempts(t *testing.T) {
	outage := 30 * time.Second
	if testing.Short() {
		outage = 6 * time.Second
	}
	f := newFixture(t)
	f.start()
	warm := f.publish(envelope.Customer, `{"customer_key":"WARM"}`)
	f.waitStatus(warm, store.StatusCompleted, 10*time.Second)

	f.proxy.Down()
	start := time.Now()
	var envs []string
	for i := range 50 {
		envs = append(envs, f.publish(envelope.Customer, `{"customer_key":"C-`+strconv.Itoa(i)+`"}`).GetMessageId())
	}
	// Wait out the outage on the clock: what is under test is that nothing
	// happens during it.
	<-time.After(outage - time.Since(start))
	f.proxy.Up()

	testutil.WaitFor(t, 30*time.Second, func() (bool, error) {
		var n int
		err := f.db.QueryRow(t.Context(), `SELECT count(*) FROM message_status WHERE status = 'completed' AND message_id = ANY($1::uuid[])`, envs).Scan(&n)
		return n == len(envs), err
	})
	var maxAttempt, customers int
	if err := f.db.QueryRow(t.Context(), `SELECT max(attempt) FROM message_status WHERE message_id = ANY($1::uuid[])`, envs).Scan(&maxAttempt); err != nil {
		t.Fatal(err)
	}
	if maxAttempt != 1 {
		t.Errorf("highest delivery attempt %d after the outage, want 1 (no attempt spent)", maxAttempt)
	}
	if err := f.db.QueryRow(t.Context(), `SELECT count(*) FROM customers`).Scan(&customers); err != nil || customers != len(envs)+1 {
		t.Errorf("customers table holds %d rows (%v), want %d", customers, err, len(envs)+1)
	}
	if n := len(f.dlq()); n != 0 {
		t.Errorf("DLQ holds %d entries after the outage, want 0", n)
	}
}

// A message that kills the worker process never reaches an error handler.
// The worker runs here as a child process that panics on it; it is
// restarted after every crash, as Kubernetes would. JetStream gives up after
// WORKER_MAX_DELIVER deliveries and announces it; the next worker moves the
// message to the DLQ as poison, while its batch neighbour is stored.
// TestPoisonMessageIsDeadLetteredAfterCrashes: a record that crashes the
// worker takes its batch down with it on every delivery, so its neighbours
// run out of deliveries too. Each then gets a last attempt alone: the
// neighbours are stored, and only the record that crashes that attempt as
// well is dead-lettered, as poison.
func TestPoisonMessageIsDeadLetteredAfterCrashes(t *testing.T) {
	f := newFixture(t)
	before := f.publish(envelope.Order, `{"order_key":"NEIGHBOUR-0","customer_key":"C-1"}`)
	poison := f.publish(envelope.Order, `{"order_key":"POISON","customer_key":"C-1"}`)
	after := []*envelopev1.Envelope{
		f.publish(envelope.Order, `{"order_key":"NEIGHBOUR-1","customer_key":"C-1"}`),
		f.publish(envelope.Customer, `{"customer_key":"NEIGHBOUR-2"}`),
	}
	id := uuid.MustParse(poison.GetMessageId())

	crashes := 0
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := f.store.GetStatus(t.Context(), id)
		if err == nil && st.Status == store.StatusDLQ {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("poison message not dead-lettered after %d crashes (status %+v, %v)", crashes, st, err)
		}
		if runCrashingChild(t, f, id) {
			crashes++
		}
	}
	if crashes < f.topo.MaxDeliver {
		t.Errorf("worker crashed %d times, want at least WORKER_MAX_DELIVER=%d", crashes, f.topo.MaxDeliver)
	}
	for _, good := range append(after, before) {
		f.waitStatus(good, store.StatusCompleted, 10*time.Second)
	}
	var n int
	if err := f.db.QueryRow(t.Context(), "SELECT count(*) FROM orders WHERE order_key LIKE 'NEIGHBOUR-%'").Scan(&n); err != nil || n != 2 {
		t.Errorf("neighbour orders stored: %d, %v; want 2", n, err)
	}
	entries := f.dlq()
	if len(entries) != 1 || entries[0].Header.Get(natsx.HeaderErrorClass) != ClassPoison {
		t.Fatalf("DLQ entries %d, class %q; want one poison entry", len(entries), entries[0].Header.Get(natsx.HeaderErrorClass))
	}
	if got := entries[0].Header.Get(natsx.HeaderMessageID); got != poison.GetMessageId() {
		t.Errorf("DLQ entry is %s, want the poison message %s", got, poison.GetMessageId())
	}
}

// runCrashingChild runs the test binary as a worker that panics on POISON
// until it crashes or the poison message is dead-lettered. It reports
// whether the child crashed.
func runCrashingChild(t *testing.T, f *fixture, poison uuid.UUID) bool {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"=POISON",
		"DATABASE_URL="+f.dbURL, "NATS_URL="+f.natsURL,
		"NATS_MAX_BYTES=-1", "NATS_DLQ_MAX_BYTES=-1",
		"WORKER_ACK_WAIT=1s", "WORKER_STATEMENT_TIMEOUT=500ms", "WORKER_MAX_DELIVER="+strconv.Itoa(f.topo.MaxDeliver),
		"WORKER_POLL_INTERVAL_MS=20", "WORKER_HTTP_ADDR=127.0.0.1:0", "LOG_LEVEL=warn",
	)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	giveUp := time.After(30 * time.Second)
	for {
		select {
		case <-giveUp:
			t.Fatalf("worker child neither crashed nor dead-lettered the poison message in 30s:\n%s", out)
		case err := <-exited:
			var exit *exec.ExitError
			if !errors.As(err, &exit) || !strings.Contains(out.String(), "processor crashed") {
				t.Fatalf("worker child ended without the expected crash: %v\n%s", err, out)
			}
			return true
		case <-tick.C:
			st, err := f.store.GetStatus(t.Context(), poison)
			if err == nil && st.Status == store.StatusDLQ {
				cancel()
				<-exited
				return false
			}
			if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, pgx.ErrNoRows) {
				t.Fatal(err)
			}
		}
	}
}

// TestRestartsDuringAnOutageDoNotDeadLetter: a worker stopped while it waits
// out a database outage hands its messages back, and JetStream counts each
// hand-back as a delivery. Restarted often enough during one outage (a
// rollout, a node drain), a record runs out of deliveries without ever
// having been tried; it then gets its last attempt, which waits for the
// database like any other, and is stored, not dead-lettered.
func TestRestartsDuringAnOutageDoNotDeadLetter(t *testing.T) {
	f := newFixture(t)
	f.proxy.Down()
	env := f.publish(envelope.Customer, `{"customer_key":"PATIENT"}`)

	// One more run than there are deliveries: the last one holds the
	// record's last attempt when it is stopped.
	for range f.topo.MaxDeliver + 1 {
		f.runUntilPaused()
	}

	f.proxy.Up()
	f.start()
	st := f.waitStatus(env, store.StatusCompleted, 20*time.Second)
	if st.Attempt != int32(f.topo.MaxDeliver)+1 {
		t.Errorf("stored on attempt %d, want the last attempt %d", st.Attempt, f.topo.MaxDeliver+1)
	}
	if n := len(f.dlq()); n != 0 {
		t.Errorf("DLQ holds %d entries, want 0", n)
	}
}

// TestDatabaseRefusingConnectionsPauses: PostgreSQL answers but refuses new
// connections (here ALLOW_CONNECTIONS false; in production also a rotated
// password or a database being restored). No record is at fault, so the
// worker pauses instead of spending attempts and dead-lettering them.
func TestDatabaseRefusingConnectionsPauses(t *testing.T) {
	f := newFixture(t)
	// ALTER DATABASE must run from another database.
	u, err := url.Parse(f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	u.Path = "/postgres"
	admin, err := pgx.Connect(t.Context(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	allow := func(on bool) {
		t.Helper()
		if _, err := admin.Exec(context.Background(), fmt.Sprintf(`ALTER DATABASE %s ALLOW_CONNECTIONS %t`, pgx.Identifier{db}.Sanitize(), on)); err != nil {
			t.Fatal(err)
		}
	}
	// The worker's pool has no connection yet: its first one is refused.
	allow(false)
	t.Cleanup(func() { allow(true) })
	w := f.start()

	env := f.publish(envelope.Customer, `{"customer_key":"REFUSED"}`)
	testutil.WaitFor(t, 10*time.Second, func() (bool, error) { return w.paused.Load() > 0, nil })
	allow(true)
	st := f.waitStatus(env, store.StatusCompleted, 20*time.Second)
	if st.Attempt != 1 {
		t.Errorf("stored on attempt %d, want 1 (no attempt spent while refused)", st.Attempt)
	}
	if n := len(f.dlq()); n != 0 {
		t.Errorf("DLQ holds %d entries, want 0", n)
	}
}

// TestStopDuringTheLastAttemptIsNotACrash: the last attempt of a message
// out of deliveries waits for the database like any other, and a worker
// stopped meanwhile puts the advisory back noting so. The next worker
// makes a new last attempt instead of taking the unfinished one for a
// crash and dead-lettering a healthy record as poison.
func TestStopDuringTheLastAttemptIsNotACrash(t *testing.T) {
	f := newFixture(t)
	// Status rows can be written but customers cannot, as when a
	// migration is half applied: the worker pauses, no record is at fault.
	if _, err := f.db.Exec(t.Context(), `ALTER TABLE customers RENAME COLUMN name TO name_moved`); err != nil {
		t.Fatal(err)
	}
	env := f.publish(envelope.Customer, `{"customer_key":"INTERRUPTED","name":"Ann"}`)

	// MaxDeliver runs spend the deliveries; the two after them are each
	// stopped inside a last attempt.
	for range f.topo.MaxDeliver + 2 {
		f.runUntilPaused()
	}

	if _, err := f.db.Exec(t.Context(), `ALTER TABLE customers RENAME COLUMN name_moved TO name`); err != nil {
		t.Fatal(err)
	}
	f.start()
	st := f.waitStatus(env, store.StatusCompleted, 20*time.Second)
	// How many last attempts were interrupted depends on whether a stopping
	// worker had already picked up the advisory; at least the two after
	// the deliveries were.
	if min := int32(f.topo.MaxDeliver) + 3; st.Attempt < min {
		t.Errorf("stored on attempt %d, want at least %d (deliveries, two interrupted last attempts, then one more)", st.Attempt, min)
	}
	if n := len(f.dlq()); n != 0 {
		t.Errorf("DLQ holds %d entries, want 0", n)
	}
}

// TestOutOfDeliveriesAfterAReplayIsNotStored: a message ran out of
// deliveries while its record was dead-lettered and replayed in the
// meantime (its ack lost). The replay carries the record on, so the old
// generation is dropped, never stored over what the replay stored.
func TestOutOfDeliveriesAfterAReplayIsNotStored(t *testing.T) {
	f := newFixture(t)
	f.proxy.Down()
	env := f.publish(envelope.Customer, `{"customer_key":"OLD-GEN","name":"old"}`)
	for range f.topo.MaxDeliver {
		f.runUntilPaused()
	}
	// Meanwhile the record was replayed and stored as generation 1.
	id := uuid.MustParse(env.GetMessageId())
	f.replayedMeanwhile(env)

	f.proxy.Up()
	f.start()
	f.waitStreamEmpty()
	var n int
	if err := f.db.QueryRow(t.Context(), `SELECT count(*) FROM customers WHERE customer_key = 'OLD-GEN'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("customers rows for the old generation: %d (%v), want 0", n, err)
	}
	if st, err := f.store.GetStatus(t.Context(), id); err != nil || st.Generation != 1 || st.Status != store.StatusCompleted {
		t.Errorf("status = %+v, %v; want still completed in generation 1", st, err)
	}
	if n := len(f.dlq()); n != 0 {
		t.Errorf("DLQ holds %d entries, want 0", n)
	}
}

// TestRedeliveryAfterAReplayIsNotStored: the same as above for a message
// still within its deliveries.
func TestRedeliveryAfterAReplayIsNotStored(t *testing.T) {
	f := newFixture(t)
	f.proxy.Down()
	env := f.publish(envelope.Customer, `{"customer_key":"OLD-REDELIVERY","name":"old"}`)
	f.runUntilPaused()
	f.replayedMeanwhile(env)

	f.proxy.Up()
	f.start()
	f.waitStreamEmpty()
	var n int
	if err := f.db.QueryRow(t.Context(), `SELECT count(*) FROM customers WHERE customer_key = 'OLD-REDELIVERY'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("customers rows for the old generation: %d (%v), want 0", n, err)
	}
}

// runUntilPaused runs a worker until it pauses for the database, then stops
// it, as a rollout or a node drain would during an outage.
func (f *fixture) runUntilPaused() {
	f.t.Helper()
	w, stop := f.run()
	testutil.WaitFor(f.t, 15*time.Second, func() (bool, error) { return w.paused.Load() > 0, nil })
	stop()
}

// replayedMeanwhile records env's message as replayed and stored in
// generation 1, as a replay of its dead letter would have.
func (f *fixture) replayedMeanwhile(env *envelopev1.Envelope) {
	f.t.Helper()
	if err := f.store.WriteStatuses(f.t.Context(), []store.StatusWrite{{
		MessageID: uuid.MustParse(env.GetMessageId()), Entity: envelope.Customer, Status: store.StatusCompleted,
		ReceivedAt: env.GetReceivedAt().AsTime(), ProcessedAt: time.Now(), Generation: 1, Attempt: 1,
	}}); err != nil {
		f.t.Fatal(err)
	}
}

// waitStreamEmpty waits until the work queue holds nothing: every message
// was settled one way or another.
func (f *fixture) waitStreamEmpty() {
	f.t.Helper()
	testutil.WaitFor(f.t, 20*time.Second, func() (bool, error) {
		s, err := f.js.Stream(f.t.Context(), f.topo.Stream)
		return err == nil && s.CachedInfo().State.Msgs == 0, err
	})
}
