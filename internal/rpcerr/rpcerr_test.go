package rpcerr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
)

func TestCode(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want connect.Code
	}{
		{"connect error keeps its code", connect.NewError(connect.CodePermissionDenied, errors.New("no")), connect.CodePermissionDenied},
		{"status not found", fmt.Errorf("get: %w", store.ErrNotFound), connect.CodeNotFound},
		{"stream message not found", jetstream.ErrMsgNotFound, connect.CodeNotFound},
		{"invalid record", &envelope.InvalidError{Entity: envelope.Order, Reason: "customer_key"}, connect.CodeInvalidArgument},
		{"unknown entity", fmt.Errorf("x: %w", envelope.ErrUnknownEntity), connect.CodeInvalidArgument},
		{"bad page token", store.ErrBadPageToken, connect.CodeInvalidArgument},
		{"record over NATS max payload", fmt.Errorf("publish: %w", nats.ErrMaxPayload), connect.CodeInvalidArgument},
		{"deadline", context.DeadlineExceeded, connect.CodeDeadlineExceeded},
		{"canceled", context.Canceled, connect.CodeCanceled},
		{"nats down", nats.ErrConnectionClosed, connect.CodeUnavailable},
		{"publish ack timeout", jetstream.ErrAsyncPublishTimeout, connect.CodeUnavailable},
		{"jetstream refused (stream full)", &jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum messages exceeded"}, connect.CodeUnavailable},
		{"postgres shutting down", &pgconn.PgError{Code: "57P01"}, connect.CodeUnavailable},
		{"postgres data error is a bug here", &pgconn.PgError{Code: "22P02"}, connect.CodeInternal},
		{"postgres connection broke mid-call", fmt.Errorf("get status: %w", io.ErrUnexpectedEOF), connect.CodeUnavailable},
		{"postgres connection reset", fmt.Errorf("get status: %w", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}), connect.CodeUnavailable},
		{"anything else", errors.New("surprise"), connect.CodeInternal},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Code(tt.err); got != tt.want {
				t.Errorf("Code(%v) = %v, want %v", tt.err, got, tt.want)
			}
			if got := connect.CodeOf(Wrap(tt.err)); got != tt.want {
				t.Errorf("CodeOf(Wrap(%v)) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
	if Wrap(nil) != nil {
		t.Error("Wrap(nil) != nil")
	}
}
