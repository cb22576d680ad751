package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

// TestClassify classifies errors a real server gives, by how the worker
// must treat them: a bad record fails alone, a contended one is retried,
// and a database that cannot take any write pauses consumption.
func TestClassify(t *testing.T) {
	dbURL := testutil.NewDatabaseURL(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	exec := func(sql string) error {
		_, err := conn.Exec(ctx, sql)
		return err
	}
	missingDB, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	missingDB.Path = "/nomnom_no_such_database"

	tests := []struct {
		name        string
		err         func() error
		want        store.Class
		confirm     bool
		unreachable bool
	}{
		{"unique violation", func() error {
			return exec(`INSERT INTO customers (customer_key, received_at, message_id) VALUES ('K', now(), gen_random_uuid()), ('K', now(), gen_random_uuid())`)
		}, store.Permanent, false, false},
		{"numeric overflow", func() error { return exec(`SELECT 1e20::numeric(15,2)`) }, store.Permanent, false, false},
		{"statement timeout", func() error {
			return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 10`); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `SELECT pg_sleep(1)`)
				return err
			})
		}, store.Transient, false, false},
		{"read-only standby", func() error {
			return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET TRANSACTION READ ONLY`); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `INSERT INTO customers (customer_key, received_at, message_id) VALUES ('RO', now(), gen_random_uuid())`)
				return err
			})
		}, store.Unavailable, false, false},
		{"missing table", func() error { return exec(`SELECT * FROM nomnom_no_such_table`) }, store.Unavailable, false, false},
		{"connect to a missing database", func() error {
			c, err := pgx.Connect(ctx, missingDB.String())
			if err == nil {
				c.Close(ctx)
			}
			return err
		}, store.Unavailable, false, false},
		{"connection refused", func() error {
			c, err := pgx.Connect(ctx, "postgres://postgres@127.0.0.1:1/postgres?connect_timeout=2")
			if err == nil {
				c.Close(ctx)
			}
			return err
		}, store.Unavailable, false, true},
		{"connection broke mid-call", func() error { return fmt.Errorf("get status: %w", io.ErrUnexpectedEOF) }, store.Unavailable, true, true},
		{"no answer from the server", func() error { return errors.New("unexpected EOF") }, store.Unavailable, true, false},
	}
	for _, tt := range tests {
		err := tt.err()
		if err == nil {
			t.Errorf("%s: no error", tt.name)
			continue
		}
		if got := store.Classify(err); got != tt.want {
			t.Errorf("%s: Classify(%v) = %s, want %s", tt.name, err, got, tt.want)
		}
		if got, want := store.Unreachable(err), tt.unreachable; got != want {
			t.Errorf("%s: Unreachable(%v) = %v, want %v", tt.name, err, got, want)
		}
		if got := store.NeedsConfirming(err); got != tt.confirm {
			t.Errorf("%s: NeedsConfirming(%v) = %v, want %v", tt.name, err, got, tt.confirm)
		}
	}
}
