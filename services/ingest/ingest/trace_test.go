package ingest_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	ingestv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

// TestTraceFollowsARecordToTheWorker sends a record carrying a client's
// traceparent through REST and gRPC, and follows the trace: the ingest span
// continues the client's trace, the message on JetStream carries the ingest
// span's context, and the worker's batch span links to it.
//
// Not parallel: tracing is process-wide.
func TestTraceFollowsARecordToTheWorker(t *testing.T) {
	rec := testutil.RecordSpans(t)
	p := startPipeline(t, nil)
	tests := []struct {
		name string
		send func(t *testing.T, traceparent string) (messageID string)
	}{
		{"rest", func(t *testing.T, traceparent string) string {
			return p.post(orderJSON("TRACE-REST", 1), http.Header{"Traceparent": {traceparent}}).MessageID
		}},
		{"grpc", func(t *testing.T, traceparent string) string {
			req := connect.NewRequest(&ingestv1.IngestRequest{Record: orderRecord(typedOrder("TRACE-GRPC"))})
			req.Header().Set("traceparent", traceparent)
			resp, err := p.ingestClient(protocols[0]).Ingest(t.Context(), req)
			if err != nil {
				t.Fatalf("Ingest: %v", err)
			}
			return resp.Msg.GetMessageId()
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			traceID, clientSpan := fmt.Sprintf("%032x", 0xa1+i), fmt.Sprintf("%016x", 0xb1+i)
			id := tt.send(t, "00-"+traceID+"-"+clientSpan+"-01")
			p.waitStatus(id, "completed")

			var acceptSpan string
			for _, s := range rec.Ended() {
				if s.Name() == "ingest.accept" && s.SpanContext().TraceID().String() == traceID {
					if parent := s.Parent().SpanID().String(); parent != clientSpan {
						t.Errorf("ingest.accept's parent is %s, want the client's span %s", parent, clientSpan)
					}
					acceptSpan = s.SpanContext().SpanID().String()
				}
			}
			if acceptSpan == "" {
				t.Fatalf("no ingest.accept span in the client's trace %s", traceID)
			}

			raw, _ := p.lastIngested(envelope.Order)
			if got, want := raw.Header.Get("traceparent"), "00-"+traceID+"-"+acceptSpan+"-01"; got != want {
				t.Errorf("published message has traceparent %q, want %q", got, want)
			}

			// The batch span ends just after the record is stored.
			testutil.WaitFor(t, settleTimeout, func() (bool, error) {
				var batches []string
				for _, s := range rec.Ended() {
					if s.Name() != "worker.store_batch" {
						continue
					}
					for _, l := range s.Links() {
						if l.SpanContext.TraceID().String() == traceID && l.SpanContext.SpanID().String() == acceptSpan {
							return true, nil
						}
					}
					batches = append(batches, fmt.Sprint(s.Links()))
				}
				return false, fmt.Errorf("no worker.store_batch span links to %s/%s; batch links: %s",
					traceID, acceptSpan, strings.Join(batches, " "))
			})
		})
	}
}
