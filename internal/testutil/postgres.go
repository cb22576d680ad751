package testutil

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver pgtestdb opens
	"github.com/peterldowns/pgtestdb"

	"github.com/nomnomhq/nomnom/db"
	"github.com/nomnomhq/nomnom/internal/store"
)

// defaultServerURL is the server this machine kind runs (TOOLCHAIN.md); set
// TEST_DATABASE_URL to use another. Only the server part and the
// administrative database in it matter: every test gets its own database.
const defaultServerURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// NewDatabase returns a pool on a fresh database with all migrations
// applied. The first call in a test binary migrates a template database
// (kept on the server, keyed by a hash of the migrations, so later runs skip
// even that); every call then clones it, which takes milliseconds. The pool
// is closed and the database dropped when the test ends, unless the test
// failed: then the database stays for inspection and its URL is in the log.
func NewDatabase(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), NewDatabaseURL(t))
	if err != nil {
		t.Fatalf("testutil: open pool: %v", err)
	}
	// Registered after pgtestdb's own cleanup, so it runs first: the
	// database cannot be dropped while the pool holds connections.
	t.Cleanup(pool.Close)
	return pool
}

// NewDatabaseURL is NewDatabase for tests that start services from
// configuration: it returns the URL of a fresh migrated database. Whatever
// connects to it must disconnect before the test's cleanup drops it, so stop
// services in a t.Cleanup registered after this call.
func NewDatabaseURL(t testing.TB) string {
	t.Helper()
	conf, err := serverConfig()
	if err != nil {
		t.Fatalf("testutil: %v", err)
	}
	return pgtestdb.Custom(t, conf, migrator{}).URL()
}

// ServerURL is the test server's admin URL: TEST_DATABASE_URL or the
// default. For a test of code that creates and drops databases of its own.
func ServerURL() string {
	if raw := os.Getenv("TEST_DATABASE_URL"); raw != "" {
		return raw
	}
	return defaultServerURL
}

// serverConfig turns TEST_DATABASE_URL (or the default) into pgtestdb's
// connection settings.
func serverConfig() (pgtestdb.Config, error) {
	u, err := url.Parse(ServerURL())
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		// url.Parse errors quote the input, password included.
		return pgtestdb.Config{}, fmt.Errorf("TEST_DATABASE_URL must be a postgres:// URL")
	}
	password, _ := u.User.Password()
	conf := pgtestdb.Config{
		DriverName: "pgx",
		Host:       u.Hostname(),
		Port:       u.Port(),
		User:       u.User.Username(),
		Password:   password,
		Database:   u.Path,
		Options:    u.RawQuery,
	}
	if conf.Port == "" {
		conf.Port = "5432"
	}
	if conf.User == "" {
		conf.User = "postgres"
	}
	if len(conf.Database) > 1 {
		conf.Database = conf.Database[1:]
	} else {
		conf.Database = "postgres"
	}
	return conf, nil
}

// migrator builds pgtestdb's template with the same code the services run
// at start-up, so tests see exactly the production schema.
type migrator struct{}

// Hash identifies the template by the migration files' names and contents:
// a new or edited migration yields a new template, an unchanged set reuses
// the existing one across test runs.
func (migrator) Hash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(db.Migrations, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(db.Migrations, path)
		if err != nil {
			return err
		}
		// Length-prefix both parts so no two file sets hash alike.
		fmt.Fprintf(h, "%d:%s%d:", len(path), path, len(body))
		h.Write(body)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Migrate applies the embedded migrations to the template database.
func (migrator) Migrate(ctx context.Context, sqlDB *sql.DB, _ pgtestdb.Config) error {
	if err := store.MigrateDB(ctx, sqlDB, nil); err != nil {
		return fmt.Errorf("migrate template: %w", err)
	}
	return nil
}
