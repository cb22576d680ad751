package store_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.uber.org/goleak"

	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var receivedAt = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

// statusWrite builds the write a pipeline stage makes: ingest's 'accepted'
// has attempt 0; the worker's writes carry the JetStream delivery count.
func statusWrite(status store.Status, generation, attempt int32, errText string) store.StatusWrite {
	w := store.StatusWrite{
		Entity:     envelope.Order,
		Status:     status,
		ReceivedAt: receivedAt,
		Source:     "race-test",
		Generation: generation,
		Attempt:    attempt,
		RetryCount: max(attempt-1, 0),
		Error:      errText,
	}
	if status.Terminal() {
		w.ProcessedAt = receivedAt.Add(time.Second)
	}
	return w
}

// writes names the status writes the pipeline's stages make, so the tables
// below read as sequences of events.
var writes = map[string]store.StatusWrite{
	"accepted g0":      statusWrite(store.StatusAccepted, 0, 0, ""),
	"processing g0 a1": statusWrite(store.StatusProcessing, 0, 1, ""),
	"failed g0 a1":     statusWrite(store.StatusFailed, 0, 1, "statement timeout"),
	"completed g0 a1":  statusWrite(store.StatusCompleted, 0, 1, ""),
	"processing g0 a2": statusWrite(store.StatusProcessing, 0, 2, ""),
	"completed g0 a2":  statusWrite(store.StatusCompleted, 0, 2, ""),
	"dlq g0 a1":        statusWrite(store.StatusDLQ, 0, 1, "invalid order: customer_key: value is required"),
	"accepted g1":      statusWrite(store.StatusAccepted, 1, 0, ""),
	"processing g1 a1": statusWrite(store.StatusProcessing, 1, 1, ""),
	"completed g1 a1":  statusWrite(store.StatusCompleted, 1, 1, ""),
}

// TestStatusWritesCommute proves the plan's race (the worker finishing
// before ingest records 'accepted') cannot leave a wrong row: for every
// order in which a message's status writes can land, the row ends as the
// write that is furthest along.
func TestStatusWritesCommute(t *testing.T) {
	st := store.New(testutil.NewDatabase(t))
	tests := []struct {
		name   string
		events []string
		want   string
	}{
		{
			name:   "worker completes before ingest writes accepted",
			events: []string{"accepted g0", "completed g0 a1"},
			want:   "completed g0 a1",
		},
		{
			name:   "accepted, processing and completed in any order",
			events: []string{"accepted g0", "processing g0 a1", "completed g0 a1"},
			want:   "completed g0 a1",
		},
		{
			name:   "a late processing of a failed attempt does not undo the retry's success",
			events: []string{"accepted g0", "failed g0 a1", "completed g0 a2", "processing g0 a1"},
			want:   "completed g0 a2",
		},
		{
			name:   "retry after failure",
			events: []string{"processing g0 a1", "failed g0 a1", "processing g0 a2", "completed g0 a2"},
			want:   "completed g0 a2",
		},
		{
			name:   "replay after completion starts generation 1",
			events: []string{"completed g0 a1", "accepted g1"},
			want:   "accepted g1",
		},
		{
			name:   "replay of a dead letter completes",
			events: []string{"accepted g0", "dlq g0 a1", "accepted g1", "completed g1 a1"},
			want:   "completed g1 a1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range permutations(tt.events) {
				// Each write in its own statement, as separate services make them.
				id := uuid.New()
				for _, ev := range order {
					if err := st.WriteStatuses(t.Context(), []store.StatusWrite{withID(writes[ev], id)}); err != nil {
						t.Fatalf("write %s: %v", ev, err)
					}
				}
				checkStatus(t, st, id, fmt.Sprintf("separately %v", order), tt.want)

				// All writes in one statement, as the group committer makes them.
				id = uuid.New()
				batch := make([]store.StatusWrite, len(order))
				for i, ev := range order {
					batch[i] = withID(writes[ev], id)
				}
				if err := st.WriteStatuses(t.Context(), batch); err != nil {
					t.Fatalf("write %v: %v", order, err)
				}
				checkStatus(t, st, id, fmt.Sprintf("in one statement %v", order), tt.want)
			}
		})
	}
}

// TestStatusNeverMovesBackOnRedelivery covers a message redelivered after
// it was stored (its ack was lost, or AckWait ran out during a slow batch).
func TestStatusNeverMovesBackOnRedelivery(t *testing.T) {
	st := store.New(testutil.NewDatabase(t))
	id := uuid.New()
	for _, ev := range []string{"accepted g0", "processing g0 a1", "completed g0 a1", "processing g0 a2"} {
		if err := st.WriteStatuses(t.Context(), []store.StatusWrite{withID(writes[ev], id)}); err != nil {
			t.Fatalf("write %s: %v", ev, err)
		}
	}
	checkStatus(t, st, id, "after redelivery", "completed g0 a1")
}

func withID(w store.StatusWrite, id uuid.UUID) store.StatusWrite {
	w.MessageID = id
	return w
}

// checkStatus compares the stored row with the named write.
func checkStatus(t *testing.T, st *store.Store, id uuid.UUID, sequence, wantName string) {
	t.Helper()
	want := writes[wantName]
	got, err := st.GetStatus(t.Context(), id)
	if err != nil {
		t.Fatalf("%s: get status: %v", sequence, err)
	}
	var diffs []string
	diff := func(field string, g, w any) {
		if g != w {
			diffs = append(diffs, fmt.Sprintf("%s = %v, want %v", field, g, w))
		}
	}
	diff("status", got.Status, want.Status)
	diff("generation", got.Generation, want.Generation)
	diff("attempt", got.Attempt, want.Attempt)
	diff("retry_count", got.RetryCount, want.RetryCount)
	diff("error_message", got.Error, want.Error)
	diff("processed_at set", !got.ProcessedAt.IsZero(), !want.ProcessedAt.IsZero())
	diff("entity_type", got.Entity, want.Entity)
	diff("source", got.Source, want.Source)
	diff("received_at", got.ReceivedAt.UTC(), want.ReceivedAt)
	if len(diffs) > 0 {
		t.Errorf("%s: row should be %q: %s", sequence, wantName, strings.Join(diffs, "; "))
	}
}

// permutations returns every ordering of xs.
func permutations(xs []string) [][]string {
	if len(xs) <= 1 {
		return [][]string{append([]string(nil), xs...)}
	}
	var out [][]string
	for i := range xs {
		rest := make([]string, 0, len(xs)-1)
		rest = append(rest, xs[:i]...)
		rest = append(rest, xs[i+1:]...)
		for _, p := range permutations(rest) {
			out = append(out, append([]string{xs[i]}, p...))
		}
	}
	return out
}

// version is one of two records for the same business key.
type version struct {
	id         uuid.UUID
	receivedAt time.Time
	record     envelope.Record
	// stored is how the entity's row reads when this version wrote it.
	stored string
}

func (v version) item(entity envelope.Entity) store.Item {
	return store.Item{
		MessageID: v.id, Entity: entity, ReceivedAt: v.receivedAt,
		Source: "newer-wins-test", Attempt: 1, Record: v.record,
	}
}

// TestStoreRecordsNewerWins proves an older record never overwrites a newer
// one, whether it arrives in a later batch or in the same batch, and that its
// status still ends completed with the superseded note.
func TestStoreRecordsNewerWins(t *testing.T) {
	pool := testutil.NewDatabase(t)
	st := store.New(pool)

	entities := []struct {
		entity envelope.Entity
		// record builds the record for key; newer records differ in every
		// stored column, and a newer order has fewer line items.
		record func(key string, newer bool) (envelope.Record, string)
		// row reads the stored row as the record function describes it.
		row string
	}{
		{
			entity: envelope.Order,
			record: func(key string, newer bool) (envelope.Record, string) {
				if newer {
					return &tpchv1.Order{OrderKey: key, CustomerKey: "C-NEW", TotalPrice: 200.5,
						LineItems: []*tpchv1.LineItem{{LineNumber: 1, PartKey: "P-NEW", Quantity: 2}},
					}, "C-NEW 200.50 [1:P-NEW]"
				}
				return &tpchv1.Order{OrderKey: key, CustomerKey: "C-OLD", TotalPrice: 100,
					LineItems: []*tpchv1.LineItem{
						{LineNumber: 1, PartKey: "P-OLD-1"}, {LineNumber: 2, PartKey: "P-OLD-2"}, {LineNumber: 3, PartKey: "P-OLD-3"},
					},
				}, "C-OLD 100.00 [1:P-OLD-1 2:P-OLD-2 3:P-OLD-3]"
			},
			row: `SELECT message_id, customer_key || ' ' || total_price::text || ' [' ||
				coalesce((SELECT string_agg(line_number || ':' || part_key, ' ' ORDER BY line_number)
				          FROM order_line_items l WHERE l.order_key = o.order_key), '') || ']'
				FROM orders o WHERE order_key = $1`,
		},
		{
			entity: envelope.Customer,
			record: func(key string, newer bool) (envelope.Record, string) {
				if newer {
					return &tpchv1.Customer{CustomerKey: key, Name: "New Name", AccountBalance: 7}, "New Name 7.00"
				}
				return &tpchv1.Customer{CustomerKey: key, Name: "Old Name", AccountBalance: 3}, "Old Name 3.00"
			},
			row: `SELECT message_id, name || ' ' || account_balance::text FROM customers WHERE customer_key = $1`,
		},
		{
			entity: envelope.Product,
			record: func(key string, newer bool) (envelope.Record, string) {
				if newer {
					return &tpchv1.Product{PartKey: key, Name: "bolt v2", RetailPrice: 2}, "bolt v2 2.00"
				}
				return &tpchv1.Product{PartKey: key, Name: "bolt v1", RetailPrice: 1}, "bolt v1 1.00"
			},
			row: `SELECT message_id, name || ' ' || retail_price::text FROM products WHERE part_key = $1`,
		},
	}
	orderings := []struct {
		name string
		// batches lists the StoreRecords calls; "old" and "new" name the versions.
		batches [][]string
		// oldSuperseded: the older record found the newer one stored or
		// beside it; arriving first, it was simply overwritten.
		oldSuperseded bool
	}{
		{"older arrives after newer", [][]string{{"new"}, {"old"}}, true},
		{"older arrives first", [][]string{{"old"}, {"new"}}, false},
		{"one batch, newer first", [][]string{{"new", "old"}}, true},
		{"one batch, older first", [][]string{{"old", "new"}}, true},
	}
	for _, e := range entities {
		for _, o := range orderings {
			t.Run(fmt.Sprintf("%s/%s", e.entity, o.name), func(t *testing.T) {
				key := fmt.Sprintf("NEWER-WINS-%s", uuid.NewString()[:8])
				versions := map[string]version{}
				for name, newer := range map[string]bool{"old": false, "new": true} {
					rec, stored := e.record(key, newer)
					at := receivedAt
					if newer {
						at = at.Add(time.Second)
					}
					versions[name] = version{id: uuid.New(), receivedAt: at, record: rec, stored: stored}
				}
				old, newer := versions["old"], versions["new"]

				superseded := map[uuid.UUID]bool{}
				for _, b := range o.batches {
					items := make([]store.Item, len(b))
					for i, name := range b {
						items[i] = versions[name].item(e.entity)
					}
					got, err := st.StoreRecords(t.Context(), items)
					if err != nil {
						t.Fatalf("StoreRecords(%v): %v", b, err)
					}
					for id := range got {
						superseded[id] = true
					}
				}

				wantSuperseded := o.oldSuperseded
				if superseded[old.id] != wantSuperseded || superseded[newer.id] {
					t.Errorf("superseded = %v, want old=%v new=false (old %s, new %s)", superseded, wantSuperseded, old.id, newer.id)
				}

				var writer uuid.UUID
				var row string
				if err := pool.QueryRow(t.Context(), e.row, key).Scan(&writer, &row); err != nil {
					t.Fatalf("read %s %s: %v", e.entity, key, err)
				}
				if writer != newer.id || row != newer.stored {
					t.Errorf("row = %q written by %s, want %q written by the newer %s", row, writer, newer.stored, newer.id)
				}

				checkCompleted(t, st, newer.id, "")
				if wantSuperseded {
					checkCompleted(t, st, old.id, store.SupersededNote)
				} else {
					checkCompleted(t, st, old.id, "")
				}
			})
		}
	}
}

func checkCompleted(t *testing.T, st *store.Store, id uuid.UUID, note string) {
	t.Helper()
	got, err := st.GetStatus(t.Context(), id)
	if err != nil {
		t.Fatalf("status of %s: %v", id, err)
	}
	if got.Status != store.StatusCompleted || got.Error != note || got.ProcessedAt.IsZero() {
		t.Errorf("status of %s = %s (error %q, processed_at %v), want completed with note %q",
			id, got.Status, got.Error, got.ProcessedAt, note)
	}
}

// TestListStatusesPagesWithoutGapsOrRepeats walks the pages of a listing
// whose rows share received_at, which only the message id tells apart.
func TestListStatusesPagesWithoutGapsOrRepeats(t *testing.T) {
	st := store.New(testutil.NewDatabase(t))
	var batch []store.StatusWrite
	want := map[uuid.UUID]bool{}
	for i := range 7 {
		w := statusWrite(store.StatusCompleted, 0, 1, "")
		w.MessageID = uuid.New()
		w.ReceivedAt = receivedAt.Add(time.Duration(i/3) * time.Microsecond) // ties of three
		batch = append(batch, w)
		want[w.MessageID] = true
	}
	other := statusWrite(store.StatusDLQ, 0, 1, "bad")
	other.MessageID = uuid.New()
	batch = append(batch, other)
	if err := st.WriteStatuses(t.Context(), batch); err != nil {
		t.Fatal(err)
	}

	seen := map[uuid.UUID]bool{}
	token := ""
	var last store.MessageStatus
	for page := 0; ; page++ {
		if page > len(want) {
			t.Fatalf("pagination does not end")
		}
		got, next, err := st.ListStatuses(t.Context(), store.ListFilter{
			Statuses: []store.Status{store.StatusCompleted}, Entity: envelope.Order, PageSize: 2, PageToken: token,
		})
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		for _, s := range got {
			if seen[s.MessageID] {
				t.Errorf("page %d repeats %s", page, s.MessageID)
			}
			if last.MessageID != uuid.Nil && (s.ReceivedAt.After(last.ReceivedAt) ||
				s.ReceivedAt.Equal(last.ReceivedAt) && s.MessageID.String() > last.MessageID.String()) {
				t.Errorf("page %d: %s is not after %s in newest-first order", page, s.MessageID, last.MessageID)
			}
			seen[s.MessageID], last = true, s
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(seen) != len(want) {
		t.Errorf("listed %d completed orders, want %d", len(seen), len(want))
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("%s never listed", id)
		}
	}

	if _, _, err := st.ListStatuses(t.Context(), store.ListFilter{PageToken: "not-a-token"}); err == nil {
		t.Errorf("a forged page token was accepted")
	}
}

// TestFingerprintSurvivesTheRace: the record's fingerprint travels in its
// envelope, so whichever write creates the status row stores it, the
// worker's too when it lands before ingest's 'accepted'; a later write
// never replaces it.
func TestFingerprintSurvivesTheRace(t *testing.T) {
	st := store.New(testutil.NewDatabase(t))
	id := uuid.Must(uuid.NewV7())
	completed := statusWrite(store.StatusCompleted, 0, 1, "")
	completed.MessageID, completed.RecordSHA256 = id, []byte("first-record-fingerprint")
	accepted := statusWrite(store.StatusAccepted, 0, 0, "")
	accepted.MessageID, accepted.RecordSHA256 = id, []byte("first-record-fingerprint")
	replayed := statusWrite(store.StatusAccepted, 1, 0, "")
	replayed.MessageID, replayed.RecordSHA256 = id, []byte("another-record-fingerprint")
	for _, w := range []store.StatusWrite{completed, accepted, replayed} {
		if err := st.WriteStatuses(t.Context(), []store.StatusWrite{w}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.GetStatus(t.Context(), id)
	if err != nil || string(got.RecordSHA256) != "first-record-fingerprint" || got.Generation != 1 {
		t.Errorf("status = %+v, %v; want generation 1 with the first record's fingerprint", got, err)
	}
}
