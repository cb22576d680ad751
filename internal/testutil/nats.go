package testutil

import (
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsReadyTimeout is generous because CI machines are small and busy; a
// healthy embedded server is ready in tens of milliseconds.
const natsReadyTimeout = 10 * time.Second

// NewNATS starts an embedded JetStream server on a free port with its store
// in a temporary directory, shuts it down when the test ends, and returns its
// client URL. Each call gets its own server, so tests may run in parallel
// with the same stream names.
func NewNATS(t testing.TB) string {
	t.Helper()
	return NewRestartableNATS(t).URL()
}

// RestartableNATS is an embedded JetStream server a test can stop and start
// again, to see how clients ride out a NATS outage. It keeps its port and
// its file store across restarts, so clients reconnect to the same URL and
// find their streams and consumers again.
type RestartableNATS struct {
	t    testing.TB
	opts server.Options

	mu  sync.Mutex
	srv *server.Server // nil while stopped
}

// NewRestartableNATS starts a server as NewNATS does and returns it
// running. It is shut down when the test ends.
func NewRestartableNATS(t testing.TB) *RestartableNATS {
	t.Helper()
	n := &RestartableNATS{
		t: t,
		opts: server.Options{
			Host:      "127.0.0.1",
			Port:      server.RANDOM_PORT,
			JetStream: true,
			StoreDir:  t.TempDir(),
			NoLog:     true,
			NoSigs:    true,
		},
	}
	n.Start()
	// Registered after t.TempDir, so it runs first and the store is
	// closed before the directory is removed.
	t.Cleanup(n.Stop)
	return n
}

// URL returns the client URL, the same before and after a restart.
func (n *RestartableNATS) URL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return "nats://" + net.JoinHostPort(n.opts.Host, strconv.Itoa(n.opts.Port))
}

// Start starts the server if it is stopped and waits until it accepts
// connections. It fails the test if the server cannot start, for instance
// because another process took the port while it was down.
func (n *RestartableNATS) Start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return
	}
	// NewServer keeps the Options it is given and writes the chosen port
	// back into them, so pass a copy and read the port afterwards.
	opts := n.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		n.t.Fatalf("testutil: new nats server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(natsReadyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		n.t.Fatalf("testutil: nats server on 127.0.0.1:%d not ready after %s", n.opts.Port, natsReadyTimeout)
	}
	n.opts.Port = srv.Addr().(*net.TCPAddr).Port
	n.srv = srv
}

// Stop shuts the server down and waits until its store is closed. Clients
// see their connection drop. Stopping a stopped server does nothing.
func (n *RestartableNATS) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv == nil {
		return
	}
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
	n.srv = nil
}
