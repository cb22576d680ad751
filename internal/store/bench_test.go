package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

// benchItems makes n fresh orders with one line item each.
func benchItems(n, offset int) []store.Item {
	items := make([]store.Item, n)
	now := time.Now()
	for i := range items {
		items[i] = store.Item{
			MessageID: uuid.Must(uuid.NewV7()), Entity: envelope.Order, ReceivedAt: now, Attempt: 1,
			Record: &tpchv1.Order{
				OrderKey: fmt.Sprintf("B-%09d", offset+i), CustomerKey: "C-1", OrderStatus: "O", TotalPrice: 1000.25,
				OrderDate: "2026-12-04", OrderPriority: "1-URGENT", Clerk: "Clerk#1", Comment: "bench",
				LineItems: []*tpchv1.LineItem{{LineNumber: 1, PartKey: "P-1", Quantity: 17, ExtendedPrice: 21168.23, Discount: 0.04, Tax: 0.02, ShipDate: "2026-12-10", ShipMode: "AIR"}},
			},
		}
	}
	return items
}

func statusWrites(items []store.Item, status store.Status) []store.StatusWrite {
	out := make([]store.StatusWrite, len(items))
	for i, it := range items {
		out[i] = store.StatusWrite{MessageID: it.MessageID, Entity: it.Entity, Status: status, ReceivedAt: it.ReceivedAt, Attempt: it.Attempt}
		if status == store.StatusAccepted {
			out[i].Attempt = 0
		}
	}
	return out
}

// The three benchmarks below share a shape (500 orders per call) so their
// ns/op compare directly: status rows alone, the worker's store transaction,
// and the whole database work of one record's life.
const benchBatch = 500

func BenchmarkWriteStatuses500(b *testing.B) {
	st := store.New(testutil.NewDatabase(b))
	for i := 0; b.Loop(); i++ {
		if err := st.WriteStatuses(b.Context(), statusWrites(benchItems(benchBatch, i*benchBatch), store.StatusAccepted)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkStoreRecords500(b *testing.B) {
	st := store.New(testutil.NewDatabase(b))
	for i := 0; b.Loop(); i++ {
		if _, err := st.StoreRecords(b.Context(), benchItems(benchBatch, i*benchBatch)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkRecordLifecycle500 is everything PostgreSQL does for a record:
// ingest's accepted row, the worker's processing row, and the store
// transaction with the completed row.
func BenchmarkRecordLifecycle500(b *testing.B) {
	st := store.New(testutil.NewDatabase(b))
	for i := 0; b.Loop(); i++ {
		items := benchItems(benchBatch, i*benchBatch)
		if err := st.WriteStatuses(b.Context(), statusWrites(items, store.StatusAccepted)); err != nil {
			b.Fatal(err)
		}
		if err := st.WriteStatuses(b.Context(), statusWrites(items, store.StatusProcessing)); err != nil {
			b.Fatal(err)
		}
		if _, err := st.StoreRecords(b.Context(), items); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "records/s")
}
