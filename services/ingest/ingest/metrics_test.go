package ingest_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/nomnomhq/nomnom/internal/testutil"
)

// scrape returns the /metrics text of a service.
func (p *pipeline) scrape(addr string) (string, error) {
	resp, err := p.http1.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics = %d", resp.StatusCode)
	}
	return string(body), err
}

// TestMetricsCountWhatHappened sends one good and one bad order and reads
// both services' /metrics: the counters say what happened to each.
func TestMetricsCountWhatHappened(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, nil)
	good := p.post(`{"order_key":"M-1","customer_key":"C-1"}`, nil)
	bad := p.post(`{"order_key":"M-2","customer_key":null}`, nil)
	if code, _ := p.do(http.MethodPost, "/ingest/message", nil, `{"order_key":`); code != http.StatusBadRequest {
		t.Fatalf("malformed record answered %d, want 400", code)
	}
	p.waitStatus(good.MessageID, "completed")
	p.waitStatus(bad.MessageID, "dlq")

	ingestWant := []string{
		`nomnom_ingest_records_total{entity="order",outcome="accepted"} 2`,
		`nomnom_ingest_records_total{entity="unknown",outcome="rejected"} 1`,
		`nomnom_http_requests_total{code="202",route="POST /ingest/message"} 2`,
		`nomnom_ingest_accept_duration_seconds_count`,
		`nomnom_db_pool_max_conns`,
	}
	workerWant := []string{
		`nomnom_worker_messages_total{entity="order",outcome="completed"} 1`,
		`nomnom_worker_dead_lettered_total{class="permanent",entity="order"} 1`,
		`nomnom_worker_end_to_end_seconds_count{entity="order"} 1`,
		`nomnom_worker_batch_duration_seconds_count`,
		`nomnom_consumer_pending_messages`,
		`nomnom_consumer_ack_pending_messages`,
		`nomnom_dlq_messages`,
		`nomnom_consumer_oldest_pending_seconds 0`, // nothing left unstored
		`nomnom_backlog_messages 0`,
		`nomnom_worker_paused 0`,
		`nomnom_db_pool_total_conns`,
	}
	for _, svc := range []struct {
		name, addr string
		want       []string
	}{
		{"ingest", p.ingest.addr, ingestWant},
		{"worker", p.worker.addr, workerWant},
	} {
		testutil.WaitFor(t, settleTimeout, func() (bool, error) {
			text, err := p.scrape(svc.addr)
			if err != nil {
				return false, err
			}
			for _, w := range svc.want {
				if !strings.Contains(text, w) {
					return false, fmt.Errorf("%s /metrics lacks %s", svc.name, w)
				}
			}
			return true, nil
		})
	}
}
