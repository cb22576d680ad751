// Package httpserver runs an http.Server that speaks HTTP/1.1 and
// unencrypted HTTP/2 (h2c) on one port, so Connect, gRPC and gRPC-Web
// clients, curl and probes all reach the same handler.
package httpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Server is a listening HTTP server.
type Server struct {
	srv *http.Server
	ln  net.Listener
	log *slog.Logger
}

// Listen binds addr and prepares a server for h. Binding early lets callers
// learn the real address (":0" in tests) before serving.
func Listen(addr string, h http.Handler, logger *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		Protocols:         p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return &Server{srv: srv, ln: ln, log: logger}, nil
}

// Addr is the bound address, e.g. 127.0.0.1:8080.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx ends, then shuts down gracefully: it stops
// accepting, waits up to timeout for in-flight requests, and returns.
func (s *Server) Serve(ctx context.Context, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if err != nil {
		// Out of time: cut the connections still open, so no handler runs
		// on after the caller closes what it uses.
		_ = s.srv.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	if err != nil {
		return fmt.Errorf("shut down %s: %w", s.Addr(), err)
	}
	return nil
}
