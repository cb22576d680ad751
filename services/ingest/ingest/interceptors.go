package ingest

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/nomnomhq/nomnom/internal/envelope"
)

// access is who may call a route.
type access int

const (
	// accessIngest: anyone when INGEST_TOKENS is empty, else a bearer token
	// from INGEST_TOKENS or ADMIN_TOKENS.
	accessIngest access = iota
	// accessAdmin: a bearer token from ADMIN_TOKENS; with none configured,
	// loopback clients only (an operator on the host or a port-forward).
	accessAdmin
)

var (
	errNoToken    = errors.New("missing bearer token (Authorization: Bearer <token>)")
	errBadToken   = errors.New("bearer token not accepted")
	errNotLocal   = errors.New("admin API: no ADMIN_TOKENS configured, so only loopback clients are served")
	errNeedsAdmin = errors.New("admin API: this token may ingest but not administer")
)

// authorize checks the Authorization header and peer address for a route.
// It returns a *connect.Error with Unauthenticated or PermissionDenied.
func (s *Service) authorize(a access, header http.Header, peer string) error {
	token, hasToken := bearer(header)
	switch a {
	case accessIngest:
		if len(s.opts.IngestTokens) == 0 {
			return nil
		}
		if !hasToken {
			return connect.NewError(connect.CodeUnauthenticated, errNoToken)
		}
		if match(token, s.opts.IngestTokens) || match(token, s.opts.AdminTokens) {
			return nil
		}
		return connect.NewError(connect.CodeUnauthenticated, errBadToken)
	default:
		if len(s.opts.AdminTokens) == 0 {
			if isLoopback(peer) {
				return nil
			}
			return connect.NewError(connect.CodePermissionDenied, errNotLocal)
		}
		if !hasToken {
			return connect.NewError(connect.CodeUnauthenticated, errNoToken)
		}
		if match(token, s.opts.AdminTokens) {
			return nil
		}
		if match(token, s.opts.IngestTokens) {
			return connect.NewError(connect.CodePermissionDenied, errNeedsAdmin)
		}
		return connect.NewError(connect.CodeUnauthenticated, errBadToken)
	}
}

func bearer(h http.Header) (string, bool) {
	v := h.Get("Authorization")
	scheme, token, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return strings.TrimSpace(token), true
}

func match(token string, allowed []string) bool {
	ok := 0
	for _, a := range allowed {
		ok |= subtle.ConstantTimeCompare([]byte(token), []byte(a))
	}
	return ok == 1
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// restAuth guards a REST route like its RPC counterpart.
func (s *Service) restAuth(a access, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.authorize(a, r.Header, r.RemoteAddr); err != nil {
			writeError(w, httpStatus(connect.CodeOf(err)), err)
			return
		}
		next(w, r)
	}
}

// interceptor authorizes, validates and counts RPCs of one service.
type interceptor struct {
	s        *Service
	access   access
	validate bool // validate whole requests (not for IngestService: per record)
}

func (i interceptor) check(ctx context.Context, spec connect.Spec, header http.Header, peer connect.Peer, msg any) error {
	if err := i.s.authorize(i.access, header, peer.Addr); err != nil {
		return err
	}
	if i.validate && msg != nil {
		if err := envelope.Validate(msg.(proto.Message)); err != nil {
			return connect.NewError(connect.CodeInvalidArgument, err)
		}
	}
	return nil
}

func (i interceptor) count(procedure string, err error) {
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
	}
	i.s.metrics.rpcs.WithLabelValues(procedure, code).Inc()
}

func (i interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		err := i.check(ctx, req.Spec(), req.Header(), req.Peer(), req.Any())
		var resp connect.AnyResponse
		if err == nil {
			resp, err = next(ctx, req)
		}
		i.count(req.Spec().Procedure, err)
		return resp, err
	}
}

func (i interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := i.s.authorize(i.access, conn.RequestHeader(), conn.Peer().Addr)
		if err == nil {
			if i.validate {
				conn = &validatingConn{StreamingHandlerConn: conn}
			}
			err = next(ctx, conn)
		}
		i.count(conn.Spec().Procedure, err)
		return err
	}
}

// validatingConn validates each message a stream receives.
type validatingConn struct{ connect.StreamingHandlerConn }

func (c *validatingConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	if err := envelope.Validate(msg.(proto.Message)); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	return nil
}
