package ingest_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	ingestv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1"
	statusv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1/statusv1connect"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
	"github.com/nomnomhq/nomnom/services/ingest/ingest"
)

// TestIngestShutdownLosesNothing cancels ingest while records pour in. Every
// request answered 202 must be in the stream with a status row, and end
// completed; nothing unanswered may be published.
func TestIngestShutdownLosesNothing(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	const n, senders = 300, 16

	var (
		mu       sync.Mutex
		accepted []string
		other    []string // non-202 answers and transport errors
		answered atomic.Int32
	)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for i := range jobs {
				code, data, err := p.tryDo(http.MethodPost, "/ingest/message", nil, orderJSON(fmt.Sprintf("SHUTDOWN-%03d", i), 1))
				mu.Lock()
				switch {
				case err == nil && code == http.StatusAccepted:
					var a acceptedBody
					if err := json.Unmarshal(data, &a); err != nil {
						t.Errorf("202 body %s: %v", data, err)
					}
					accepted = append(accepted, a.MessageID)
				case err != nil:
					other = append(other, err.Error())
				default:
					other = append(other, fmt.Sprintf("%d %s", code, data))
				}
				mu.Unlock()
				if answered.Add(1) == n/2 {
					// Midway: start the shutdown while requests are in flight.
					p.ingest.cancel()
				}
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	p.ingest.stop(t) // Run drains and returns nil

	t.Logf("%d accepted, %d refused during shutdown", len(accepted), len(other))
	if len(accepted) < n/2 || len(other) == 0 {
		t.Fatalf("%d of %d accepted, %d refused: the shutdown did not happen midway", len(accepted), n, len(other))
	}

	// Every 202 is in the stream, and nothing else is.
	envs := p.envelopes()
	for _, id := range accepted {
		if envs[id] == nil {
			t.Errorf("accepted message %s is not in the stream", id)
		}
	}
	if len(envs) != len(accepted) {
		t.Errorf("stream holds %d messages, want the %d accepted ones", len(envs), len(accepted))
	}
	// Ingest wrote every answered message's status before it stopped.
	if got := p.count("SELECT count(*) FROM message_status WHERE message_id::text = ANY($1)", accepted); got != len(accepted) {
		t.Errorf("%d of %d accepted messages have a status row after ingest stopped", got, len(accepted))
	}
	// And the worker, still running, stores them all.
	p.waitCount(len(accepted), "SELECT count(*) FROM message_status WHERE status = 'completed' AND message_id::text = ANY($1)", accepted)
	if got := p.count("SELECT count(*) FROM orders"); got != len(accepted) {
		t.Errorf("%d orders stored, want %d", got, len(accepted))
	}
}

// TestWorkerRestartLosesAndDuplicatesNothing stops a worker in the middle of
// a backlog and starts another: every message is stored exactly once.
func TestWorkerRestartLosesAndDuplicatesNothing(t *testing.T) {
	t.Parallel()
	p := startIngest(t, func(c *config.Config) { c.WorkerBatchSize, c.WorkerConcurrency = 2, 1 })
	const n = 300

	records := make([]*ingestv1.Record, n)
	for i := range records {
		records[i] = orderRecord(typedOrder(fmt.Sprintf("RESTART-%03d", i)))
	}
	resp, err := p.ingestClient(protocols[0]).IngestBatch(t.Context(), connect.NewRequest(&ingestv1.IngestBatchRequest{Records: records}))
	if err != nil {
		t.Fatalf("IngestBatch: %v", err)
	}
	if got := resp.Msg.GetAccepted(); got != n {
		t.Fatalf("IngestBatch accepted %d of %d", got, n)
	}

	const completed = "SELECT count(*) FROM message_status WHERE status = 'completed'"
	first := p.startWorker()
	testutil.WaitFor(t, settleTimeout, func() (bool, error) {
		done, err := p.tryCount(completed)
		return done >= 20, fmt.Errorf("%d completed (%v)", done, err)
	})
	first.stop(t)
	stoppedAt := p.count(completed)
	if stoppedAt >= n {
		t.Fatalf("precondition: the first worker stored all %d records before it was stopped", n)
	}
	// The batch in flight was finished and acknowledged: nothing is left
	// for JetStream to redeliver after AckWait. (The server applies acks
	// asynchronously, so give it a moment to count them.)
	testutil.WaitFor(t, 5*time.Second, func() (bool, error) {
		info := p.consumerInfo()
		return info.NumAckPending == 0, fmt.Errorf("after the first worker stopped, %d messages are delivered but unacknowledged", info.NumAckPending)
	})

	p.startWorker()
	p.waitCount(n, completed)
	t.Logf("first worker stored %d of %d", stoppedAt, n)
	if got := p.count("SELECT count(*) FROM orders"); got != n {
		t.Errorf("%d orders, want %d", got, n)
	}
	if got := p.count("SELECT count(*) FROM order_line_items"); got != 2*n {
		t.Errorf("%d line items, want %d", got, 2*n)
	}
	if got := p.count("SELECT count(*) FROM message_status WHERE attempt <> 1"); got != 0 {
		t.Errorf("%d messages were delivered more than once", got)
	}
	info := p.consumerInfo()
	if info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 {
		t.Errorf("consumer: %d pending, %d unacknowledged, %d redelivered; want none", info.NumPending, info.NumAckPending, info.NumRedelivered)
	}
}

// TestReadinessFollowsLifecycle serves a Service's handler directly to see
// /ready and grpc.health.v1 before start-up finishes, while serving and
// while draining, and that draining ends open WatchStatus streams.
func TestReadinessFollowsLifecycle(t *testing.T) {
	t.Parallel()
	nc, err := nats.Connect(testutil.NewNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st := store.New(testutil.NewDatabase(t))
	svc, err := ingest.New(ingest.Options{
		JetStream: js,
		Store:     st,
		Logger:    slog.New(slog.DiscardHandler),
		Stream:    "MESSAGES",
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)
	client := srv.Client()
	health := grpchealth.NewClient(client, srv.URL)

	check := func(stage string, wantCode int, wantHealth grpchealth.Status) {
		t.Helper()
		resp, err := client.Get(srv.URL + "/ready")
		if err != nil {
			t.Fatalf("%s: GET /ready: %v", stage, err)
		}
		var body struct {
			Ready bool `json:"ready"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != wantCode || body.Ready != (wantCode == http.StatusOK) {
			t.Errorf("%s: /ready = %d ready:%v (%v), want %d", stage, resp.StatusCode, body.Ready, err, wantCode)
		}
		hc, err := health.Check(t.Context(), &grpchealth.CheckRequest{})
		if err != nil || hc.Status != wantHealth {
			t.Errorf("%s: health = %v, %v; want %v", stage, hc, err, wantHealth)
		}
	}

	check("before start-up finishes", http.StatusServiceUnavailable, grpchealth.StatusNotServing)
	svc.MarkReady(true)
	check("serving", http.StatusOK, grpchealth.StatusServing)

	// A watch of a message still in flight stays open until draining ends it.
	id := uuid.New()
	err = st.WriteStatuses(t.Context(), []store.StatusWrite{{
		MessageID: id, Entity: envelope.Order, Status: store.StatusAccepted, ReceivedAt: time.Now(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	status := statusv1connect.NewStatusServiceClient(client, srv.URL)
	watch, err := status.WatchStatus(t.Context(), connect.NewRequest(&statusv1.WatchStatusRequest{MessageId: id.String()}))
	if err != nil {
		t.Fatalf("WatchStatus: %v", err)
	}
	defer watch.Close()
	if !watch.Receive() || watch.Msg().GetStatus().GetStatus() != statusv1.Status_STATUS_ACCEPTED {
		t.Fatalf("WatchStatus first message = %v (%v), want ACCEPTED", watch.Msg(), watch.Err())
	}
	watchDone := make(chan error, 1)
	go func() {
		for watch.Receive() {
		}
		watchDone <- watch.Err()
	}()

	// What Run does when its context ends.
	svc.MarkReady(false)
	svc.Drain()
	check("draining", http.StatusServiceUnavailable, grpchealth.StatusNotServing)
	select {
	case err := <-watchDone:
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("WatchStatus ended with %v, want Unavailable so the client watches elsewhere", err)
		}
	case <-time.After(settleTimeout):
		t.Errorf("WatchStatus still open %s after Drain", settleTimeout)
	}
}

// With SHUTDOWN_DRAIN_DELAY, a stopping ingest keeps its listener open and
// answers /ready with 503, so a load balancer polling it moves away before
// connections are refused; records sent meanwhile are still accepted.
func TestReadyAnswers503WhileDraining(t *testing.T) {
	t.Parallel()
	p := startIngest(t, func(c *config.Config) { c.ShutdownDrain = 3 * time.Second })
	if code, _ := p.do(http.MethodGet, "/ready", nil, ""); code != http.StatusOK {
		t.Fatalf("/ready before shutdown = %d, want 200", code)
	}
	p.ingest.cancel()
	testutil.WaitFor(t, 2*time.Second, func() (bool, error) {
		code, _, err := p.tryDo(http.MethodGet, "/ready", nil, "")
		return code == http.StatusServiceUnavailable, err
	})
	code, body := p.do(http.MethodPost, "/ingest/message", nil, `{"customer_key":"DRAINING"}`)
	if code != http.StatusAccepted {
		t.Errorf("POST while draining = %d %s, want 202", code, body)
	}
	p.ingest.stop(t)
	if _, _, err := p.tryDo(http.MethodGet, "/ready", nil, ""); err == nil {
		t.Error("/ready still answered after the drain delay and shutdown")
	}
}
