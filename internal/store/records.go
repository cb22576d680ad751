package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nomnomhq/nomnom/gen/go/dbgen"
	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
)

// Item is one decoded record to store, with the envelope fields its status
// row needs.
type Item struct {
	MessageID  uuid.UUID
	Entity     envelope.Entity
	ReceivedAt time.Time
	Source     string
	Generation int32
	Attempt    int32
	Record     envelope.Record
	// RecordSHA256 is the keyed record's fingerprint, for its status row.
	RecordSHA256 []byte
}

func (it Item) newerThan(o Item) bool {
	if !it.ReceivedAt.Equal(o.ReceivedAt) {
		return it.ReceivedAt.After(o.ReceivedAt)
	}
	return it.MessageID.String() > o.MessageID.String()
}

// SupersededNote is the status note of a record that was not written because
// a newer record for the same key is stored.
const SupersededNote = "superseded: a newer record for the same key is already stored"

// StoreRecords writes items to their tables and marks them completed, all in
// one transaction: either every item is stored and completed, or nothing is.
// A record older than the stored row for its key changes nothing and is
// reported in the returned set (its status still ends completed, with
// SupersededNote). Keys may repeat; the newest record of each key wins.
func (s *Store) StoreRecords(ctx context.Context, items []Item) (superseded map[uuid.UUID]bool, err error) {
	superseded = map[uuid.UUID]bool{}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if s.statementTimeout > 0 {
			if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", s.statementTimeout.Milliseconds())); err != nil {
				return fmt.Errorf("set statement_timeout: %w", err)
			}
		}
		q := s.q.WithTx(tx)
		groups := newestPerKey(items, superseded)
		if err := upsertOrders(ctx, q, groups[envelope.Order], superseded); err != nil {
			return err
		}
		if err := upsertCustomers(ctx, q, groups[envelope.Customer], superseded); err != nil {
			return err
		}
		if err := upsertProducts(ctx, q, groups[envelope.Product], superseded); err != nil {
			return err
		}
		now := time.Now()
		writes := make([]StatusWrite, len(items))
		for i, it := range items {
			writes[i] = StatusWrite{
				MessageID: it.MessageID, Entity: it.Entity, Status: StatusCompleted,
				ReceivedAt: it.ReceivedAt, ProcessedAt: now, RetryCount: max(it.Attempt-1, 0),
				Source: it.Source, Generation: it.Generation, Attempt: it.Attempt,
				RecordSHA256: it.RecordSHA256,
			}
			if superseded[it.MessageID] {
				writes[i].Error = SupersededNote
			}
		}
		return writeStatuses(ctx, q, writes)
	})
	if err != nil {
		return nil, err
	}
	return superseded, nil
}

// newestPerKey groups items by entity, keeping the newest record per business
// key (PostgreSQL cannot update one row twice in a statement); the others
// are marked superseded.
func newestPerKey(items []Item, superseded map[uuid.UUID]bool) map[envelope.Entity][]Item {
	type key struct {
		entity envelope.Entity
		key    string
	}
	pos := map[key]int{}
	groups := map[envelope.Entity][]Item{}
	for _, it := range items {
		k := key{it.Entity, businessKey(it.Record)}
		if i, ok := pos[k]; ok {
			cur := groups[it.Entity][i]
			if it.newerThan(cur) {
				superseded[cur.MessageID] = true
				groups[it.Entity][i] = it
			} else {
				superseded[it.MessageID] = true
			}
			continue
		}
		pos[k] = len(groups[it.Entity])
		groups[it.Entity] = append(groups[it.Entity], it)
	}
	// Same key order in every batch: concurrent batches lock entity rows in
	// one order and cannot deadlock.
	for _, g := range groups {
		slices.SortFunc(g, func(a, b Item) int { return strings.Compare(businessKey(a.Record), businessKey(b.Record)) })
	}
	return groups
}

func businessKey(rec envelope.Record) string {
	switch r := rec.(type) {
	case *tpchv1.Order:
		return r.GetOrderKey()
	case *tpchv1.Customer:
		return r.GetCustomerKey()
	case *tpchv1.Product:
		return r.GetPartKey()
	}
	panic(fmt.Sprintf("store: unexpected record type %T", rec))
}

// markStale records which items the upsert did not write: their key holds a
// newer record.
func markStale(items []Item, written []string, superseded map[uuid.UUID]bool) map[string]bool {
	ok := make(map[string]bool, len(written))
	for _, k := range written {
		ok[k] = true
	}
	for _, it := range items {
		if !ok[businessKey(it.Record)] {
			superseded[it.MessageID] = true
		}
	}
	return ok
}

func upsertOrders(ctx context.Context, q *dbgen.Queries, items []Item, superseded map[uuid.UUID]bool) error {
	if len(items) == 0 {
		return nil
	}
	var p dbgen.OrderUpsertManyParams
	for _, it := range items {
		o := it.Record.(*tpchv1.Order)
		p.OrderKeys = append(p.OrderKeys, o.GetOrderKey())
		p.CustomerKeys = append(p.CustomerKeys, o.GetCustomerKey())
		p.OrderStatuses = append(p.OrderStatuses, o.GetOrderStatus())
		p.TotalPrices = append(p.TotalPrices, o.GetTotalPrice())
		p.OrderDates = append(p.OrderDates, o.GetOrderDate())
		p.OrderPriorities = append(p.OrderPriorities, o.GetOrderPriority())
		p.Clerks = append(p.Clerks, o.GetClerk())
		p.ShipPriorities = append(p.ShipPriorities, o.GetShipPriority())
		p.Comments = append(p.Comments, o.GetComment())
		p.ReceivedAts = append(p.ReceivedAts, timestamptz(it.ReceivedAt))
		p.MessageIds = append(p.MessageIds, pgUUID(it.MessageID))
	}
	rows, err := q.OrderUpsertMany(ctx, p)
	if err != nil {
		return fmt.Errorf("upsert %d orders: %w", len(items), err)
	}
	written := make([]string, len(rows))
	var replaced []string
	for i, r := range rows {
		written[i] = r.OrderKey
		if !r.Inserted {
			replaced = append(replaced, r.OrderKey)
		}
	}
	ok := markStale(items, written, superseded)
	if len(written) == 0 {
		return nil
	}
	// A re-sent order replaces its line items; a new one has none to delete.
	if len(replaced) > 0 {
		if err := q.OrderLineItemDeleteByOrders(ctx, replaced); err != nil {
			return fmt.Errorf("delete line items of %d orders: %w", len(replaced), err)
		}
	}
	var l dbgen.OrderLineItemInsertManyParams
	for _, it := range items {
		o := it.Record.(*tpchv1.Order)
		if !ok[o.GetOrderKey()] {
			continue
		}
		for _, li := range o.GetLineItems() {
			l.OrderKeys = append(l.OrderKeys, o.GetOrderKey())
			l.LineNumbers = append(l.LineNumbers, li.GetLineNumber())
			l.PartKeys = append(l.PartKeys, li.GetPartKey())
			l.SupplierKeys = append(l.SupplierKeys, li.GetSupplierKey())
			l.Quantities = append(l.Quantities, li.GetQuantity())
			l.ExtendedPrices = append(l.ExtendedPrices, li.GetExtendedPrice())
			l.Discounts = append(l.Discounts, li.GetDiscount())
			l.Taxes = append(l.Taxes, li.GetTax())
			l.ReturnFlags = append(l.ReturnFlags, li.GetReturnFlag())
			l.LineStatuses = append(l.LineStatuses, li.GetLineStatus())
			l.ShipDates = append(l.ShipDates, li.GetShipDate())
			l.CommitDates = append(l.CommitDates, li.GetCommitDate())
			l.ReceiptDates = append(l.ReceiptDates, li.GetReceiptDate())
			l.ShipInstructs = append(l.ShipInstructs, li.GetShipInstruct())
			l.ShipModes = append(l.ShipModes, li.GetShipMode())
			l.Comments = append(l.Comments, li.GetComment())
		}
	}
	if len(l.OrderKeys) == 0 {
		return nil
	}
	if err := q.OrderLineItemInsertMany(ctx, l); err != nil {
		return fmt.Errorf("insert %d line items: %w", len(l.OrderKeys), err)
	}
	return nil
}

func upsertCustomers(ctx context.Context, q *dbgen.Queries, items []Item, superseded map[uuid.UUID]bool) error {
	if len(items) == 0 {
		return nil
	}
	var p dbgen.CustomerUpsertManyParams
	for _, it := range items {
		c := it.Record.(*tpchv1.Customer)
		p.CustomerKeys = append(p.CustomerKeys, c.GetCustomerKey())
		p.Names = append(p.Names, c.GetName())
		p.Addresses = append(p.Addresses, c.GetAddress())
		p.NationKeys = append(p.NationKeys, c.GetNationKey())
		p.Phones = append(p.Phones, c.GetPhone())
		p.AccountBalances = append(p.AccountBalances, c.GetAccountBalance())
		p.MarketSegments = append(p.MarketSegments, c.GetMarketSegment())
		p.Comments = append(p.Comments, c.GetComment())
		p.ReceivedAts = append(p.ReceivedAts, timestamptz(it.ReceivedAt))
		p.MessageIds = append(p.MessageIds, pgUUID(it.MessageID))
	}
	written, err := q.CustomerUpsertMany(ctx, p)
	if err != nil {
		return fmt.Errorf("upsert %d customers: %w", len(items), err)
	}
	markStale(items, written, superseded)
	return nil
}

func upsertProducts(ctx context.Context, q *dbgen.Queries, items []Item, superseded map[uuid.UUID]bool) error {
	if len(items) == 0 {
		return nil
	}
	var p dbgen.ProductUpsertManyParams
	for _, it := range items {
		r := it.Record.(*tpchv1.Product)
		p.PartKeys = append(p.PartKeys, r.GetPartKey())
		p.Names = append(p.Names, r.GetName())
		p.Mfgrs = append(p.Mfgrs, r.GetMfgr())
		p.Brands = append(p.Brands, r.GetBrand())
		p.Types = append(p.Types, r.GetType())
		p.Sizes = append(p.Sizes, r.GetSize())
		p.Containers = append(p.Containers, r.GetContainer())
		p.RetailPrices = append(p.RetailPrices, r.GetRetailPrice())
		p.Comments = append(p.Comments, r.GetComment())
		p.ReceivedAts = append(p.ReceivedAts, timestamptz(it.ReceivedAt))
		p.MessageIds = append(p.MessageIds, pgUUID(it.MessageID))
	}
	written, err := q.ProductUpsertMany(ctx, p)
	if err != nil {
		return fmt.Errorf("upsert %d products: %w", len(items), err)
	}
	markStale(items, written, superseded)
	return nil
}
