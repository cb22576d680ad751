package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Class says how a failed write should be handled.
type Class int

const (
	// Transient failures may pass on a later attempt (lock or statement
	// timeout, serialization failure, deadlock); they are retried with
	// backoff and count towards the delivery limit.
	Transient Class = iota
	// Permanent failures fail the same way every time (a value PostgreSQL
	// rejects); the record goes to the dead-letter queue at once.
	Permanent
	// Unavailable means PostgreSQL cannot be reached or refuses every
	// write for now; the worker pauses and retries without spending
	// delivery attempts.
	Unavailable
)

func (c Class) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Unavailable:
		return "unavailable"
	default:
		return "transient"
	}
}

// Classify maps an error from this package to a Class.
func Classify(err error) Class {
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		// Whatever the reason (refused, wrong password, database not
		// accepting connections), no record can be written until it
		// clears, and no record caused it.
		return Unavailable
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "22"), strings.HasPrefix(pgErr.Code, "23"):
			return Permanent // data exception, integrity violation
		case refusesAllWrites(pgErr.Code):
			return Unavailable
		default:
			return Transient
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return Transient
	}
	// No SQLSTATE: the statement never got an answer from the server (dial
	// failed, connection reset or closed mid-statement).
	return Unavailable
}

// refusesAllWrites reports SQLSTATEs that say the server cannot take any
// write now, for reasons that are not the record's: the connection is gone,
// the server is shutting down or starting, it is a read-only standby (after
// a failover), it is out of disk or connections, it failed an I/O,
// privileges were revoked, or the schema is not the one the worker expects.
func refusesAllWrites(code string) bool {
	switch {
	case strings.HasPrefix(code, "08"), // connection exception
		strings.HasPrefix(code, "28"),  // invalid authorization
		strings.HasPrefix(code, "57P"), // operator intervention: shutdown, cannot connect now
		strings.HasPrefix(code, "58"):  // system error (I/O)
		return true
	}
	switch code {
	case "53100", // disk full
		"53300", // too many connections
		"25006", // read-only SQL transaction
		"3D000", // database does not exist
		"42501", // insufficient privilege
		"42P01", // undefined table
		"42703": // undefined column
		return true
	}
	return false
}

// NeedsConfirming reports whether an Unavailable err could also be the
// statement's own doing: the connection broke with no word from the server,
// which a statement that crashes its backend causes too. The caller should
// confirm the outage (Ping) before pausing for it. A failed connect, or a
// server that said why it refuses, needs no confirming.
func NeedsConfirming(err error) bool {
	var connErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	return !errors.As(err, &connErr) && !errors.As(err, &pgErr)
}

// Unreachable reports an error of a call that could not reach PostgreSQL
// (refused, reset, timed out connecting), as opposed to one the server
// answered, even with an outage-like SQLSTATE such as a failed login.
func Unreachable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connErr) || errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF)
}
