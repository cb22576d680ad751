// Package rpcerr maps nomnom's errors to Connect codes in one place, so every
// RPC and REST route answers a given failure the same way.
package rpcerr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
)

// ErrInvalid marks a caller mistake; wrap it to get InvalidArgument.
var ErrInvalid = errors.New("invalid argument")

// Code picks the Connect code for err.
func Code(err error) connect.Code {
	var cerr *connect.Error
	var inv *envelope.InvalidError
	var verr *envelope.ValidationError
	switch {
	case errors.As(err, &cerr):
		return cerr.Code()
	case errors.Is(err, store.ErrNotFound), errors.Is(err, jetstream.ErrMsgNotFound):
		return connect.CodeNotFound
	case errors.Is(err, ErrInvalid), errors.As(err, &inv), errors.As(err, &verr),
		errors.Is(err, envelope.ErrUnknownEntity), errors.Is(err, store.ErrBadPageToken):
		return connect.CodeInvalidArgument
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded
	case errors.Is(err, nats.ErrMaxPayload):
		return connect.CodeInvalidArgument // the record is too large for NATS
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, jetstream.ErrAsyncPublishTimeout):
		return connect.CodeUnavailable
	}
	var apiErr *jetstream.APIError
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &apiErr):
		// JetStream refused (stream full, leader unavailable): try later.
		return connect.CodeUnavailable
	case errors.As(err, &connErr):
		return connect.CodeUnavailable
	case errors.As(err, &pgErr) && store.Classify(err) == store.Unavailable:
		return connect.CodeUnavailable
	case errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &netErr):
		// The connection to PostgreSQL broke mid-call.
		return connect.CodeUnavailable
	}
	return connect.CodeInternal
}

// Wrap returns err as a *connect.Error with the code Code picks; nil stays nil.
func Wrap(err error) error {
	if err == nil {
		return nil
	}
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		return err
	}
	return connect.NewError(Code(err), err)
}

// Invalid returns an InvalidArgument error with the given message.
func Invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}
