package devenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// DefaultNATSPort is the port StartNATS prefers, so `nats -s
// nats://127.0.0.1:4222` works without looking up the URL in the logs.
const DefaultNATSPort = 4222

// natsReadyTimeout bounds how long StartNATS waits for the listener.
const natsReadyTimeout = 10 * time.Second

// Embedded is an in-process nats-server with JetStream enabled.
type Embedded struct {
	srv    *server.Server
	unlock func()
	once   sync.Once
}

// URL returns the client URL, e.g. nats://127.0.0.1:4222.
func (e *Embedded) URL() string { return e.srv.ClientURL() }

// Shutdown stops the server and waits until it has flushed and closed its
// JetStream store, so a following StartNATS on the same directory finds it
// consistent. Calling it more than once is harmless.
func (e *Embedded) Shutdown() {
	e.once.Do(func() {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
		e.unlock()
	})
}

// StartNATS starts an embedded JetStream server on 127.0.0.1 with its file
// store under storeDir. It listens on DefaultNATSPort, or on a free port when
// that one is taken (for instance by a system nats-server). Server notices go
// to logger at debug level, warnings and errors at their own level; a nil
// logger discards them.
func StartNATS(ctx context.Context, storeDir string, logger *slog.Logger) (*Embedded, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// nats-server does not lock its store; two servers on one directory
	// corrupt each other's streams.
	unlock, err := lockDir(storeDir)
	if err != nil {
		return nil, fmt.Errorf("nats store: %w", err)
	}
	// The default port, else the one this store had last time (so the
	// `nats -s` URL an operator noted still works), else any free one.
	portFile := filepath.Join(storeDir, "port")
	port := DefaultNATSPort
	if !portFree(port) {
		port = server.RANDOM_PORT
		if b, err := os.ReadFile(portFile); err == nil {
			if last, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && last > 0 && portFree(last) {
				port = last
			}
		}
	}
	e, err := startNATS(ctx, storeDir, port, logger)
	if err != nil && port != server.RANDOM_PORT && ctx.Err() == nil {
		// Someone took the port between the probe and the server's own
		// listen (two `make run`s at once); any free port will do.
		logger.Debug("nats: port lost, using a free one", "port", port, "err", err)
		e, err = startNATS(ctx, storeDir, server.RANDOM_PORT, logger)
	}
	if err != nil {
		unlock()
		return nil, err
	}
	e.unlock = unlock
	if addr, ok := e.srv.Addr().(*net.TCPAddr); ok {
		_ = os.WriteFile(portFile, []byte(strconv.Itoa(addr.Port)+"\n"), 0o644)
	}
	return e, nil
}

func startNATS(ctx context.Context, storeDir string, port int, logger *slog.Logger) (*Embedded, error) {
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  storeDir,
		// The embedding process owns signals and logging.
		NoSigs: true,
		NoLog:  true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	sl := &slogAdapter{logger: logger, fatal: make(chan string, 1)}
	srv.SetLogger(sl, false, false)
	go srv.Start()

	if err := waitReady(ctx, srv, sl.fatal); err != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("start nats on 127.0.0.1:%d (store %s): %w", port, storeDir, err)
	}
	return &Embedded{srv: srv, unlock: func() {}}, nil
}

// waitReady waits for the client listener. The server reports a failed
// listen only through its logger's Fatalf, and ReadyForConnections alone would
// sit out its whole timeout in that case, so fatal messages end the wait early.
func waitReady(ctx context.Context, srv *server.Server, fatal <-chan string) error {
	deadline := time.Now().Add(natsReadyTimeout)
	for !srv.ReadyForConnections(50 * time.Millisecond) {
		select {
		case msg := <-fatal:
			return errors.New(msg)
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready for connections after %s", natsReadyTimeout)
		}
	}
	return nil
}

// portFree reports whether 127.0.0.1:port can be bound right now.
func portFree(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// slogAdapter routes nats-server logging into slog. Notices are start-up
// chatter (banner, JetStream limits), so they go to debug.
type slogAdapter struct {
	logger *slog.Logger
	fatal  chan string
}

func (a *slogAdapter) Noticef(format string, v ...any) {
	a.logger.Debug("nats: " + fmt.Sprintf(format, v...))
}

func (a *slogAdapter) Warnf(format string, v ...any) {
	a.logger.Warn("nats: " + fmt.Sprintf(format, v...))
}

// Fatalf must not exit the process as the stock logger does: the embedding
// program decides. The first message is handed to waitReady.
func (a *slogAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	a.logger.Error("nats: " + msg)
	select {
	case a.fatal <- msg:
	default:
	}
}

func (a *slogAdapter) Errorf(format string, v ...any) {
	a.logger.Error("nats: " + fmt.Sprintf(format, v...))
}

func (a *slogAdapter) Debugf(format string, v ...any) {
	a.logger.Debug("nats: " + fmt.Sprintf(format, v...))
}

func (a *slogAdapter) Tracef(format string, v ...any) {
	a.logger.Debug("nats: " + fmt.Sprintf(format, v...))
}
