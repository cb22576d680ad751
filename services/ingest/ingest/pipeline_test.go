package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1/ingestv1connect"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1/statusv1connect"
	"github.com/nomnomhq/nomnom/internal/bootstrap"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/testutil"
	"github.com/nomnomhq/nomnom/services/ingest/ingest"
	"github.com/nomnomhq/nomnom/services/worker/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	// startTimeout and stopTimeout bound a service's start-up (migrations,
	// streams) and drain; both take well under a second when healthy.
	startTimeout = 30 * time.Second
	stopTimeout  = 30 * time.Second
	// settleTimeout bounds waiting for the worker to store a record.
	settleTimeout = 15 * time.Second
)

// pipeline is the ingest service, and a worker once started, running from
// configuration against a fresh PostgreSQL database and an embedded
// JetStream server, with clients for each door and direct access to the
// database and the streams for assertions.
type pipeline struct {
	t       *testing.T
	cfg     config.Config
	baseURL string
	http1   *http.Client // HTTP/1.1: REST, Connect, gRPC-Web
	h2c     *http.Client // HTTP/2 without TLS: gRPC
	db      *pgxpool.Pool
	js      jetstream.JetStream
	nc      *nats.Conn
	// published sees every publish to the ingest subjects as it happens.
	// The ingest stream is a work queue and forgets what the worker
	// stored, so this is how tests look at what ingest sent.
	published *nats.Subscription
	sent      []*nats.Msg
	logs      *testutil.LogBuffer
	ingest    *service
	worker    *service
}

// startPipeline starts ingest and a worker. mutate, if set, adjusts the
// configuration loaded from the test environment.
func startPipeline(t *testing.T, mutate func(*config.Config)) *pipeline {
	t.Helper()
	p := startIngest(t, mutate)
	p.startWorker()
	return p
}

// startIngest starts only the ingest service; call startWorker to consume.
func startIngest(t *testing.T, mutate func(*config.Config)) *pipeline {
	t.Helper()
	env := map[string]string{
		"DATABASE_URL":             testutil.NewDatabaseURL(t),
		"NATS_URL":                 testutil.NewNATS(t),
		"HTTP_ADDR":                "127.0.0.1:0",
		"WORKER_HTTP_ADDR":         "127.0.0.1:0",
		"WORKER_POLL_INTERVAL_MS":  "20",
		"WORKER_ACK_WAIT":          "5s",
		"WORKER_STATEMENT_TIMEOUT": "2s",
		"WORKER_RETRY_BASE_DELAY":  "50ms",
		"WORKER_RETRY_MAX_DELAY":   "200ms",
		"SHUTDOWN_TIMEOUT":         "10s",
		"DATABASE_MAX_CONNS":       "4",
	}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if mutate != nil {
		mutate(&cfg)
	}
	p := &pipeline{t: t, cfg: cfg, logs: &testutil.LogBuffer{}}
	// Registered first so it runs last, when every service has stopped.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("service logs:\n%s", p.logs.String())
		}
	})

	p.db, err = pgxpool.New(context.Background(), cfg.DatabaseURL)
	if err != nil {
		t.Fatalf("open assertion pool: %v", err)
	}
	t.Cleanup(p.db.Close)
	nc, err := nats.Connect(cfg.NATSURL)
	if err != nil {
		t.Fatalf("connect assertion client to nats: %v", err)
	}
	t.Cleanup(nc.Close)
	if p.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	p.nc = nc
	if p.published, err = nc.SubscribeSync(envelope.IngestSubjects); err != nil {
		t.Fatal(err)
	}

	transport := &http.Transport{}
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	h2cTransport := &http.Transport{Protocols: protocols}
	p.http1 = &http.Client{Transport: transport}
	p.h2c = &http.Client{Transport: h2cTransport}
	t.Cleanup(transport.CloseIdleConnections)
	t.Cleanup(h2cTransport.CloseIdleConnections)

	p.ingest = startService(t, "ingest", ingest.Run, cfg, p.logger("ingest"))
	p.baseURL = "http://" + p.ingest.addr
	return p
}

// startWorker starts a worker on the pipeline's database and NATS and waits
// until it consumes. A pipeline has one worker at a time; stop the previous
// one first.
func (p *pipeline) startWorker() *service {
	p.t.Helper()
	p.worker = startService(p.t, "worker", worker.Run, p.cfg, p.logger("worker"))
	// Run calls onListen before its consumer exists; /ready says when it
	// consumes.
	testutil.WaitFor(p.t, startTimeout, func() (bool, error) {
		resp, err := p.http1.Get("http://" + p.worker.addr + "/ready")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Errorf("worker /ready = %d", resp.StatusCode)
	})
	return p.worker
}

func (p *pipeline) logger(name string) *slog.Logger {
	return obs.NewLogger(p.logs, "text", slog.LevelInfo).With("service", name)
}

// service is one Run call in its own goroutine with its own context.
type service struct {
	name   string
	addr   string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startService(t *testing.T, name string, run bootstrap.RunFunc, cfg config.Config, logger *slog.Logger) *service {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{name: name, cancel: cancel, done: make(chan error, 1)}
	listening := make(chan string, 1)
	go func() { s.done <- run(ctx, cfg, logger, func(addr string) { listening <- addr }) }()
	// Stop (and wait for) the service however the test ends.
	t.Cleanup(func() { s.stop(t) })
	select {
	case s.addr = <-listening:
	case err := <-s.done:
		s.done <- err // for stop
		t.Fatalf("%s: Run returned before listening: %v", name, err)
	case <-time.After(startTimeout):
		t.Fatalf("%s: not listening after %s", name, startTimeout)
	}
	return s
}

// stop cancels the service's context and checks that Run drains and
// returns nil. Later calls do nothing.
func (s *service) stop(t testing.TB) {
	t.Helper()
	s.once.Do(func() {
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("%s: Run returned %v, want nil after cancel", s.name, err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("%s: Run did not return within %s of cancel", s.name, stopTimeout)
		}
	})
}

// do sends a REST request over HTTP/1.1 and returns the status code and body.
func (p *pipeline) do(method, path string, header http.Header, body string) (int, []byte) {
	p.t.Helper()
	code, data, err := p.tryDo(method, path, header, body)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	return code, data
}

func (p *pipeline) tryDo(method, path string, header http.Header, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, p.baseURL+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.http1.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// decode unmarshals a JSON response body, failing the test on bad JSON.
func decode[T any](t *testing.T, data []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("response is not the expected JSON: %v\n%s", err, data)
	}
	return v
}

// acceptedBody is POST /ingest/message's 202 answer.
type acceptedBody struct {
	MessageID  string `json:"message_id"`
	Status     string `json:"status"`
	Timestamp  string `json:"timestamp"`
	EntityType string `json:"entity_type"`
	Duplicate  bool   `json:"duplicate"`
}

// errorBody is every REST error answer.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// statusBody is GET /ingest/status/{id}'s answer.
type statusBody struct {
	MessageID    string  `json:"message_id"`
	EntityType   string  `json:"entity_type"`
	Status       string  `json:"status"`
	ReceivedAt   string  `json:"received_at"`
	ProcessedAt  *string `json:"processed_at"`
	RetryCount   int     `json:"retry_count"`
	ErrorMessage *string `json:"error_message"`
	ReplayCount  int     `json:"replay_count"`
	Attempts     []struct {
		Attempt    int    `json:"attempt"`
		Error      string `json:"error"`
		ErrorClass string `json:"error_class"`
	} `json:"attempts"`
}

// post sends one record to POST /ingest/message and requires a 202.
func (p *pipeline) post(body string, header http.Header) acceptedBody {
	p.t.Helper()
	code, data := p.do(http.MethodPost, "/ingest/message", header, body)
	if code != http.StatusAccepted {
		p.t.Fatalf("POST /ingest/message = %d %s, want 202", code, data)
	}
	return decode[acceptedBody](p.t, data)
}

// waitStatus polls GET /ingest/status/{id} until the status is want.
func (p *pipeline) waitStatus(id, want string) statusBody {
	p.t.Helper()
	var st statusBody
	testutil.WaitFor(p.t, settleTimeout, func() (bool, error) {
		code, data, err := p.tryDo(http.MethodGet, "/ingest/status/"+id, nil, "")
		if err != nil || code != http.StatusOK {
			return false, fmt.Errorf("GET status %s: %d %s %v", id, code, data, err)
		}
		if err := json.Unmarshal(data, &st); err != nil {
			return false, err
		}
		return st.Status == want, fmt.Errorf("message %s is %s, want %s", id, st.Status, want)
	})
	return st
}

// waitCount polls a counting query until it returns want.
func (p *pipeline) waitCount(want int, query string, args ...any) {
	p.t.Helper()
	testutil.WaitFor(p.t, settleTimeout, func() (bool, error) {
		n, err := p.tryCount(query, args...)
		return err == nil && n == want, fmt.Errorf("%s = %d (err %v), want %d", query, n, err, want)
	})
}

func (p *pipeline) count(query string, args ...any) int {
	p.t.Helper()
	n, err := p.tryCount(query, args...)
	if err != nil {
		p.t.Fatalf("%s: %v", query, err)
	}
	return n
}

func (p *pipeline) tryCount(query string, args ...any) (int, error) {
	var n int
	err := p.db.QueryRow(context.Background(), query, args...).Scan(&n)
	return n, err
}

// streamMsgs is the number of messages a stream holds now. For the
// dead-letter stream that is its entries; for the ingest stream, a work
// queue, only what no worker has stored yet: see publishedCount.
func (p *pipeline) streamMsgs(stream string) uint64 {
	p.t.Helper()
	return p.streamInfo(stream).State.Msgs
}

// publishedCount is how many messages the ingest stream ever stored
// (its last sequence): deduplicated publishes are not counted.
func (p *pipeline) publishedCount() uint64 {
	p.t.Helper()
	return p.streamInfo(p.cfg.NATSStream).State.LastSeq
}

func (p *pipeline) streamInfo(stream string) *jetstream.StreamInfo {
	p.t.Helper()
	s, err := p.js.Stream(context.Background(), stream)
	if err != nil {
		p.t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		p.t.Fatalf("stream %s info: %v", stream, err)
	}
	return info
}

// publishes returns every message published to the ingest subjects so far,
// in order, deduplicated retries included.
func (p *pipeline) publishes() []*nats.Msg {
	p.t.Helper()
	// After the flush round trip, every earlier publish is queued on the
	// subscription.
	if err := p.nc.Flush(); err != nil {
		p.t.Fatal(err)
	}
	n, _, err := p.published.Pending()
	if err != nil {
		p.t.Fatal(err)
	}
	for range n {
		msg, err := p.published.NextMsg(time.Second)
		if err != nil {
			p.t.Fatalf("read a published message: %v", err)
		}
		p.sent = append(p.sent, msg)
	}
	return p.sent
}

func (p *pipeline) decode(msg *nats.Msg) *envelopev1.Envelope {
	p.t.Helper()
	env, err := envelope.Unmarshal(msg.Data)
	if err != nil {
		p.t.Fatalf("published message on %s: %v", msg.Subject, err)
	}
	return env
}

// envelopes returns every envelope published to the ingest subjects so far,
// by message id (a deduplicated retry has its first publish's id).
func (p *pipeline) envelopes() map[string]*envelopev1.Envelope {
	p.t.Helper()
	out := map[string]*envelopev1.Envelope{}
	for _, msg := range p.publishes() {
		env := p.decode(msg)
		if _, ok := out[env.GetMessageId()]; !ok {
			out[env.GetMessageId()] = env
		}
	}
	return out
}

// lastIngested returns the newest message published on an entity's ingest
// subject.
func (p *pipeline) lastIngested(entity envelope.Entity) (*nats.Msg, *envelopev1.Envelope) {
	p.t.Helper()
	sent := p.publishes()
	for i := len(sent) - 1; i >= 0; i-- {
		if sent[i].Subject == entity.IngestSubject() {
			return sent[i], p.decode(sent[i])
		}
	}
	p.t.Fatalf("nothing was published on %s", entity.IngestSubject())
	return nil, nil
}

// consumerInfo describes the workers' durable consumer.
func (p *pipeline) consumerInfo() *jetstream.ConsumerInfo {
	p.t.Helper()
	c, err := p.js.Consumer(context.Background(), p.cfg.NATSStream, p.cfg.NATSConsumer)
	if err != nil {
		p.t.Fatalf("consumer: %v", err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		p.t.Fatalf("consumer info: %v", err)
	}
	return info
}

// protocol is one way an RPC client talks to the ingest port.
type protocol struct {
	name  string
	http2 bool // gRPC needs HTTP/2; the others also work over HTTP/1.1
	opts  []connect.ClientOption
}

var protocols = []protocol{
	{name: "grpc", http2: true, opts: []connect.ClientOption{connect.WithGRPC()}},
	{name: "grpc-web", opts: []connect.ClientOption{connect.WithGRPCWeb()}},
	{name: "connect", opts: nil},
	{name: "connect-json", opts: []connect.ClientOption{connect.WithProtoJSON()}},
}

func (p *pipeline) httpClient(proto protocol) *http.Client {
	if proto.http2 {
		return p.h2c
	}
	return p.http1
}

func (p *pipeline) ingestClient(proto protocol) ingestv1connect.IngestServiceClient {
	return ingestv1connect.NewIngestServiceClient(p.httpClient(proto), p.baseURL, proto.opts...)
}

func (p *pipeline) statusClient(proto protocol) statusv1connect.StatusServiceClient {
	return statusv1connect.NewStatusServiceClient(p.httpClient(proto), p.baseURL, proto.opts...)
}

// orderJSON is an order as the plan's test script sends it, with n line items.
func orderJSON(key string, n int) string {
	var lines []string
	for i := 1; i <= n; i++ {
		lines = append(lines, fmt.Sprintf(`{"line_number":%d,"part_key":"PART-%d","supplier_key":"SUPP-1","quantity":%d,"extended_price":%d.5,"discount":0.05,"tax":0.08,"ship_date":"2026-01-20"}`, i, i, i*2, i*100))
	}
	return fmt.Sprintf(`{"order_key":%q,"customer_key":"CUST-001","order_status":"O","total_price":1234.56,"order_date":"2026-01-15","order_priority":"1-URGENT","clerk":"Clerk#001","ship_priority":0,"comment":"integration test","line_items":[%s]}`,
		key, strings.Join(lines, ","))
}
