package store

import (
	"context"
	"errors"
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
	// Unavailable means PostgreSQL cannot be reached; the worker pauses and
	// retries without spending delivery attempts.
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

// Classify maps an error from this package to a Class. An error without a
// SQLSTATE is taken as the database being unreachable; callers confirm that
// with Ping before pausing for it.
func Classify(err error) Class {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "22"), strings.HasPrefix(pgErr.Code, "23"):
			return Permanent // data exception, integrity violation
		case strings.HasPrefix(pgErr.Code, "08"),
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03",
			pgErr.Code == "53300":
			return Unavailable // connection lost, server shutting down or starting
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
