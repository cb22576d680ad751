package devenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// machinePostgres is the server this machine kind runs (see TOOLCHAIN.md);
// TEST_DATABASE_URL points elsewhere.
func machinePostgres(t *testing.T) *url.URL {
	t.Helper()
	raw := os.Getenv("TEST_DATABASE_URL")
	if raw == "" {
		raw = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse TEST_DATABASE_URL: %v", err)
	}
	return u
}

func uniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func TestStartNATSFallsBackWhenDefaultPortTaken(t *testing.T) {
	// Whether or not a system nats-server holds 4222, make sure it is taken
	// for the duration of the test.
	if l, err := net.Listen("tcp", "127.0.0.1:4222"); err == nil {
		t.Cleanup(func() { l.Close() })
	}
	ctx := t.Context()

	servers := make([]*Embedded, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range servers {
		wg.Go(func() {
			servers[i], errs[i] = StartNATS(ctx, t.TempDir(), nil)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("StartNATS #%d: %v", i, err)
		}
		t.Cleanup(servers[i].Shutdown)
	}

	ports := map[string]bool{}
	for _, s := range servers {
		u, err := url.Parse(s.URL())
		if err != nil {
			t.Fatalf("parse %q: %v", s.URL(), err)
		}
		if u.Hostname() != "127.0.0.1" || u.Port() == "4222" {
			t.Errorf("URL() = %s, want 127.0.0.1 on a port other than 4222", s.URL())
		}
		ports[u.Port()] = true
		createStream(ctx, t, s.URL(), "ORDERS")
	}
	if len(ports) != 2 {
		t.Errorf("both servers on port %v", ports)
	}
}

// TestStartNATSLocksItsStore: nats-server does not lock its store, and two
// servers on one directory corrupt each other's streams (two `make run`s in
// one checkout), so the second StartNATS refuses, naming the directory, until
// the first has shut down.
func TestStartNATSLocksItsStore(t *testing.T) {
	dir := t.TempDir()
	first, err := StartNATS(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second, err := StartNATS(t.Context(), dir, nil); err == nil {
		second.Shutdown()
		t.Fatal("a second StartNATS on the same store succeeded")
	} else if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("error = %v, want one naming %s as in use", err, dir)
	}
	first.Shutdown()
	again, err := StartNATS(t.Context(), dir, nil)
	if err != nil {
		t.Fatalf("StartNATS after the first shut down: %v", err)
	}
	again.Shutdown()
}

// TestStartNATSKeepsItsPort: with the default port taken, a store keeps
// the port it had, so the nats -s URL printed at the first start still
// works after a restart.
func TestStartNATSKeepsItsPort(t *testing.T) {
	if l, err := net.Listen("tcp", "127.0.0.1:4222"); err == nil {
		t.Cleanup(func() { l.Close() })
	}
	dir := t.TempDir()
	first, err := StartNATS(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	url := first.URL()
	first.Shutdown()
	again, err := StartNATS(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Shutdown()
	if again.URL() != url {
		t.Errorf("restarted on %s, want %s as before", again.URL(), url)
	}
}

func TestStartNATSFailsFastOnTakenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	start := time.Now()
	_, err = startNATS(t.Context(), t.TempDir(), port, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatalf("startNATS on taken port %d succeeded", port)
	}
	if elapsed := time.Since(start); elapsed > natsReadyTimeout/2 {
		t.Errorf("startNATS took %s to report %v; want the listen error at once", elapsed, err)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Errorf("error should name the port: %v", err)
	}
}

func TestStartNATSKeepsStreamsAcrossRestart(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()

	first, err := StartNATS(ctx, dir, nil)
	if err != nil {
		t.Fatalf("StartNATS: %v", err)
	}
	createStream(ctx, t, first.URL(), "MESSAGES")
	first.Shutdown()
	first.Shutdown() // idempotent

	second, err := StartNATS(ctx, dir, nil)
	if err != nil {
		t.Fatalf("StartNATS again: %v", err)
	}
	t.Cleanup(second.Shutdown)
	js := jetStream(t, second.URL())
	if _, err := js.Stream(ctx, "MESSAGES"); err != nil {
		t.Fatalf("stream after restart: %v", err)
	}
}

func jetStream(t *testing.T, natsURL string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("connect %s: %v", natsURL, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

func createStream(ctx context.Context, t *testing.T, natsURL, name string) {
	t.Helper()
	js := jetStream(t, natsURL)
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     name,
		Subjects: []string{strings.ToLower(name) + ".>"},
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("create stream %s on %s: %v", name, natsURL, err)
	}
	if _, err := js.Publish(ctx, strings.ToLower(name)+".x", []byte("hi")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream %s has %d messages, want 1", name, info.State.Msgs)
	}
}

func TestEnsurePostgresWithURLCreatesDatabase(t *testing.T) {
	ctx := t.Context()
	server := machinePostgres(t)
	name := uniqueName("devenv_test_")
	target := *server
	target.Path = "/" + name
	dropDatabaseOnCleanup(t, server, name)

	pg, err := EnsurePostgres(ctx, PostgresOptions{URL: target.String(), Database: "ignored"})
	if err != nil {
		t.Fatalf("EnsurePostgres: %v", err)
	}
	if pg.URL() != target.String() {
		t.Errorf("URL() = %q, want DATABASE_URL unchanged %q", pg.URL(), target.String())
	}
	if !strings.Contains(pg.Where(), name) || !strings.Contains(pg.Where(), "DATABASE_URL") {
		t.Errorf("Where() = %q, want the database name and its source", pg.Where())
	}
	assertDatabase(ctx, t, pg.URL(), name)

	// A second run finds the database and leaves it be.
	if _, err := EnsurePostgres(ctx, PostgresOptions{URL: target.String()}); err != nil {
		t.Fatalf("EnsurePostgres again: %v", err)
	}
	if err := pg.Stop(); err != nil {
		t.Errorf("Stop on a server we did not start: %v", err)
	}
}

func TestEnsurePostgresRedactsPassword(t *testing.T) {
	server := machinePostgres(t)
	withPassword := *server
	withPassword.User = url.UserPassword(server.User.Username(), "s3cret-pw")

	// The machine's server trusts local TCP, so the password is ignored and
	// the call succeeds; either way it must not show up anywhere.
	pg, err := EnsurePostgres(t.Context(), PostgresOptions{URL: withPassword.String()})
	if err != nil {
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Fatalf("error leaks the password: %v", err)
		}
		t.Fatalf("EnsurePostgres: %v", err)
	}
	if strings.Contains(pg.Where(), "s3cret-pw") {
		t.Errorf("Where() leaks the password: %q", pg.Where())
	}

	_, err = EnsurePostgres(t.Context(), PostgresOptions{URL: "postgres://u:s3cret-pw@127.0.0.1:bad/x"})
	t.Log(err)
	if err == nil || strings.Contains(err.Error(), "s3cret-pw") {
		t.Errorf("bad URL: err = %v, want a parse error without the password", err)
	}
}

func TestEnsurePostgresUsesLocalServer(t *testing.T) {
	if os.Getenv("TEST_DATABASE_URL") != "" {
		t.Skip("TEST_DATABASE_URL set: the machine may not run PostgreSQL on 127.0.0.1:5432")
	}
	ctx := t.Context()
	name := uniqueName("devenv_test_")
	dropDatabaseOnCleanup(t, machinePostgres(t), name)

	pg, err := EnsurePostgres(ctx, PostgresOptions{Database: name, DataDir: filepath.Join(t.TempDir(), "unused")})
	if err != nil {
		t.Fatalf("EnsurePostgres: %v", err)
	}
	want := "postgres://postgres@127.0.0.1:5432/" + name + "?sslmode=disable"
	if pg.URL() != want {
		t.Errorf("URL() = %q, want %q", pg.URL(), want)
	}
	if !strings.Contains(pg.Where(), "127.0.0.1:5432 (existing server)") {
		t.Errorf("Where() = %q", pg.Where())
	}
	assertDatabase(ctx, t, pg.URL(), name)
}

func TestEnsurePostgresStartsPrivateCluster(t *testing.T) {
	if _, _, err := findPGBinaries(""); err != nil {
		t.Skipf("no PostgreSQL binaries: %v", err)
	}
	ctx := t.Context()
	// t.TempDir() lives under a 0700 directory the postgres user cannot
	// enter when the tests run as root, so make one it can.
	base, err := os.MkdirTemp("", "devenv-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := PostgresOptions{
		DataDir: filepath.Join(base, "postgres"),
		// Nothing listens on port 1, so the local server probe fails fast.
		localAddr: "127.0.0.1:1",
	}

	pg, err := EnsurePostgres(ctx, opts)
	if err != nil {
		t.Fatalf("EnsurePostgres: %v", err)
	}
	t.Cleanup(func() { pg.Stop() })
	if !strings.HasPrefix(pg.Where(), "private cluster in "+opts.DataDir+" on 127.0.0.1:") {
		t.Errorf("Where() = %q", pg.Where())
	}
	if pg.URL() == "" || strings.Contains(pg.URL(), ":5432/") {
		t.Errorf("URL() = %q, want the private cluster's port", pg.URL())
	}
	assertDatabase(ctx, t, pg.URL(), DefaultDatabase)

	// A second EnsurePostgres while the first still runs adopts the server.
	again, err := EnsurePostgres(ctx, opts)
	if err != nil {
		t.Fatalf("EnsurePostgres while running: %v", err)
	}
	if again.URL() != pg.URL() || !strings.HasSuffix(again.Where(), "(already running)") {
		t.Errorf("adopted cluster: URL() = %q, Where() = %q; want %q, already running", again.URL(), again.Where(), pg.URL())
	}

	if err := pg.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := pg.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := pgx.Connect(ctx, pg.URL()); err == nil {
		t.Fatalf("cluster still accepts connections after Stop")
	}

	// A failed start names pg_ctl and carries this run's server log.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCluster(opts.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	c.port = taken.Addr().(*net.TCPAddr).Port
	err = c.start(ctx)
	taken.Close()
	if err == nil {
		c.stop(ctx)
		t.Fatalf("pg_ctl start on taken port %d succeeded", c.port)
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "pg_ctl start") || !strings.Contains(err.Error(), "could not create any TCP/IP sockets") {
		t.Errorf("error should name pg_ctl start and carry the log tail: %v", err)
	}

	// Restarting reuses the initialised directory and the database in it.
	restarted, err := EnsurePostgres(ctx, opts)
	if err != nil {
		t.Fatalf("EnsurePostgres on existing data dir: %v", err)
	}
	t.Cleanup(func() {
		if err := restarted.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	assertDatabase(ctx, t, restarted.URL(), DefaultDatabase)
}

func TestEnsurePostgresReportsFailedCommand(t *testing.T) {
	if _, _, err := findPGBinaries(""); err != nil {
		t.Skipf("no PostgreSQL binaries: %v", err)
	}
	base, err := os.MkdirTemp("", "devenv-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(base, "postgres")
	// A non-empty directory without PG_VERSION makes initdb refuse.
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "junk"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	_, err = EnsurePostgres(t.Context(), PostgresOptions{DataDir: dataDir, localAddr: "127.0.0.1:1"})
	if err == nil {
		t.Fatal("EnsurePostgres succeeded on a non-empty data directory")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "initdb") || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("error should name initdb and carry its output: %v", err)
	}
}

func assertDatabase(ctx context.Context, t *testing.T, dbURL, want string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect %s: %v", dbURL, err)
	}
	defer conn.Close(ctx)
	var got string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&got); err != nil {
		t.Fatalf("current_database: %v", err)
	}
	if got != want {
		t.Errorf("connected to database %q, want %q", got, want)
	}
}

func dropDatabaseOnCleanup(t *testing.T, server *url.URL, name string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, server.String())
		if err != nil {
			t.Errorf("connect to drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
}
