// Package store is nomnom's PostgreSQL layer. It wraps the sqlc queries in
// gen/go/dbgen so generated types stay here and callers speak in domain
// terms: status writes, stored records, pages of statuses.
package store

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nomnomhq/nomnom/gen/go/dbgen"
	"github.com/nomnomhq/nomnom/internal/envelope"
)

// ErrNotFound is returned when a message has no status row.
var ErrNotFound = errors.New("not found")

// Status is where a message is in the pipeline.
type Status string

// Statuses, in the order a message moves through them.
const (
	StatusAccepted   Status = "accepted"
	StatusProcessing Status = "processing"
	StatusFailed     Status = "failed"
	StatusCompleted  Status = "completed"
	StatusDLQ        Status = "dlq"
)

// Terminal reports whether no further transition is expected (short of a replay).
func (s Status) Terminal() bool { return s == StatusCompleted || s == StatusDLQ }

// rank orders statuses within one attempt; see MessageStatusUpsertMany.
func (s Status) rank() int16 {
	switch s {
	case StatusAccepted:
		return 0
	case StatusProcessing:
		return 1
	case StatusFailed:
		return 2
	default:
		return 3
	}
}

// StatusWrite is one status transition. Writes carry the envelope's fields
// so that whichever lands first creates a complete row.
type StatusWrite struct {
	MessageID   uuid.UUID
	Entity      envelope.Entity
	Status      Status
	ReceivedAt  time.Time
	ProcessedAt time.Time // zero: not processed
	RetryCount  int32
	Error       string
	Source      string
	Generation  int32 // replay count
	Attempt     int32 // JetStream delivery count; 0 at ingest
	DLQSequence uint64
	// RecordSHA256 fingerprints the accepted record; set by ingest, kept
	// once stored.
	RecordSHA256 []byte
}

func (w StatusWrite) key() [3]int32 { return [3]int32{w.Generation, w.Attempt, int32(w.Status.rank())} }

// Attempt is one failed processing attempt.
type Attempt struct {
	MessageID  uuid.UUID
	Generation int32
	Attempt    int32
	Error      string
	ErrorClass string
	FailedAt   time.Time
}

// MessageStatus is a message's tracked state.
type MessageStatus struct {
	MessageID   uuid.UUID
	Entity      envelope.Entity
	Status      Status
	ReceivedAt  time.Time
	ProcessedAt time.Time // zero when unset
	RetryCount  int32
	Error       string
	Source      string
	Generation  int32
	Attempt     int32
	DLQSequence uint64 // 0 unless status is dlq
	// RecordSHA256 fingerprints the record the message was accepted with;
	// nil where unknown.
	RecordSHA256 []byte
	UpdatedAt    time.Time
	Attempts     []Attempt
}

// Store reads and writes nomnom's tables.
type Store struct {
	pool *pgxpool.Pool
	q    *dbgen.Queries
	// statementTimeout bounds each statement of a record batch, so a lock
	// held elsewhere turns into a retryable error instead of a stuck worker.
	statementTimeout time.Duration
}

// Option configures a Store.
type Option func(*Store)

// WithStatementTimeout bounds each statement of StoreRecords (default 30s).
func WithStatementTimeout(d time.Duration) Option { return func(s *Store) { s.statementTimeout = d } }

// New returns a Store on pool.
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	s := &Store{pool: pool, q: dbgen.New(pool), statementTimeout: 30 * time.Second}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Ping checks that PostgreSQL answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// WriteStatuses applies status writes in one statement. Writes may arrive in
// any order across callers; the row keeps the one with the largest
// (generation, attempt, rank) key.
func (s *Store) WriteStatuses(ctx context.Context, writes []StatusWrite) error {
	return writeStatuses(ctx, s.q, writes)
}

func writeStatuses(ctx context.Context, q *dbgen.Queries, writes []StatusWrite) error {
	if len(writes) == 0 {
		return nil
	}
	// PostgreSQL refuses to update one row twice in a statement: keep the
	// largest key per message.
	latest := make(map[uuid.UUID]int, len(writes))
	var p dbgen.MessageStatusUpsertManyParams
	for _, w := range writes {
		if i, ok := latest[w.MessageID]; ok {
			if cmpKey(w.key(), keyAt(p, i)) > 0 {
				setStatusAt(&p, i, w)
			}
			continue
		}
		latest[w.MessageID] = len(p.MessageIds)
		appendStatus(&p, w)
	}
	sortStatuses(&p)
	if err := q.MessageStatusUpsertMany(ctx, p); err != nil {
		return fmt.Errorf("write %d statuses: %w", len(p.MessageIds), err)
	}
	return nil
}

func cmpKey(a, b [3]int32) int { return slices.Compare(a[:], b[:]) }

func keyAt(p dbgen.MessageStatusUpsertManyParams, i int) [3]int32 {
	return [3]int32{p.Generations[i], p.Attempts[i], int32(p.Ranks[i])}
}

func appendStatus(p *dbgen.MessageStatusUpsertManyParams, w StatusWrite) {
	p.MessageIds = append(p.MessageIds, pgtype.UUID{})
	p.EntityTypes = append(p.EntityTypes, "")
	p.Statuses = append(p.Statuses, "")
	p.ReceivedAts = append(p.ReceivedAts, pgtype.Timestamptz{})
	p.ProcessedAts = append(p.ProcessedAts, pgtype.Timestamptz{})
	p.RetryCounts = append(p.RetryCounts, 0)
	p.ErrorMessages = append(p.ErrorMessages, "")
	p.Sources = append(p.Sources, "")
	p.Generations = append(p.Generations, 0)
	p.Attempts = append(p.Attempts, 0)
	p.Ranks = append(p.Ranks, 0)
	p.DlqSequences = append(p.DlqSequences, 0)
	p.RecordSha256s = append(p.RecordSha256s, nil)
	setStatusAt(p, len(p.MessageIds)-1, w)
}

func setStatusAt(p *dbgen.MessageStatusUpsertManyParams, i int, w StatusWrite) {
	p.MessageIds[i] = pgUUID(w.MessageID)
	p.EntityTypes[i] = string(w.Entity)
	p.Statuses[i] = string(w.Status)
	p.ReceivedAts[i] = timestamptz(w.ReceivedAt)
	p.ProcessedAts[i] = timestamptz(w.ProcessedAt)
	p.RetryCounts[i] = w.RetryCount
	p.ErrorMessages[i] = w.Error
	p.Sources[i] = w.Source
	p.Generations[i] = w.Generation
	p.Attempts[i] = w.Attempt
	p.Ranks[i] = w.Status.rank()
	p.DlqSequences[i] = int64(w.DLQSequence)
	p.RecordSha256s[i] = w.RecordSHA256
}

// RecordFailures writes failed or dead-lettered statuses together with the
// attempts that led to them, in one transaction.
func (s *Store) RecordFailures(ctx context.Context, writes []StatusWrite, attempts []Attempt) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := s.q.WithTx(tx)
		if err := writeStatuses(ctx, q, writes); err != nil {
			return err
		}
		return insertAttempts(ctx, q, attempts)
	})
}

func insertAttempts(ctx context.Context, q *dbgen.Queries, attempts []Attempt) error {
	if len(attempts) == 0 {
		return nil
	}
	var p dbgen.MessageAttemptInsertManyParams
	for _, a := range attempts {
		p.MessageIds = append(p.MessageIds, pgUUID(a.MessageID))
		p.Generations = append(p.Generations, a.Generation)
		p.Attempts = append(p.Attempts, a.Attempt)
		p.Errors = append(p.Errors, a.Error)
		p.ErrorClasses = append(p.ErrorClasses, a.ErrorClass)
		p.FailedAts = append(p.FailedAts, timestamptz(a.FailedAt))
	}
	if err := q.MessageAttemptInsertMany(ctx, p); err != nil {
		return fmt.Errorf("write %d attempts: %w", len(attempts), err)
	}
	return nil
}

// GetStatus returns one message's status with its failed attempts.
func (s *Store) GetStatus(ctx context.Context, id uuid.UUID) (MessageStatus, error) {
	row, err := s.q.MessageStatusGetByID(ctx, pgUUID(id))
	if errors.Is(err, pgx.ErrNoRows) {
		return MessageStatus{}, fmt.Errorf("message %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return MessageStatus{}, fmt.Errorf("get status %s: %w", id, err)
	}
	out := []MessageStatus{fromRow(row)}
	if err := s.attachAttempts(ctx, out); err != nil {
		return MessageStatus{}, err
	}
	return out[0], nil
}

// GetStatuses returns the statuses of the ids that have one, in the order asked.
func (s *Store) GetStatuses(ctx context.Context, ids []uuid.UUID) ([]MessageStatus, error) {
	rows, err := s.q.MessageStatusGetMany(ctx, pgUUIDs(ids))
	if err != nil {
		return nil, fmt.Errorf("get %d statuses: %w", len(ids), err)
	}
	byID := make(map[uuid.UUID]dbgen.MessageStatus, len(rows))
	for _, r := range rows {
		byID[r.MessageID.Bytes] = r
	}
	out := make([]MessageStatus, 0, len(rows))
	for _, id := range ids {
		if r, ok := byID[id]; ok {
			out = append(out, fromRow(r))
			delete(byID, id)
		}
	}
	return out, s.attachAttempts(ctx, out)
}

func (s *Store) attachAttempts(ctx context.Context, statuses []MessageStatus) error {
	if len(statuses) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, len(statuses))
	index := make(map[uuid.UUID]int, len(statuses))
	for i, st := range statuses {
		ids[i] = st.MessageID
		index[st.MessageID] = i
	}
	rows, err := s.q.MessageAttemptListByMessage(ctx, pgUUIDs(ids))
	if err != nil {
		return fmt.Errorf("list attempts: %w", err)
	}
	for _, r := range rows {
		i := index[r.MessageID.Bytes]
		statuses[i].Attempts = append(statuses[i].Attempts, Attempt{
			MessageID: r.MessageID.Bytes, Generation: r.Generation, Attempt: r.Attempt,
			Error: r.Error, ErrorClass: r.ErrorClass, FailedAt: r.FailedAt.Time,
		})
	}
	return nil
}

// ListFilter selects statuses for ListStatuses.
type ListFilter struct {
	Statuses       []Status
	Entity         envelope.Entity // "": all
	ReceivedAfter  time.Time       // zero: unbounded
	ReceivedBefore time.Time       // zero: unbounded
	PageSize       int
	PageToken      string
}

// ErrBadPageToken is returned for a page token ListStatuses did not issue.
var ErrBadPageToken = errors.New("invalid page token")

// ListStatuses returns one page of statuses, newest received first, and the
// token of the next page ("" on the last).
func (s *Store) ListStatuses(ctx context.Context, f ListFilter) ([]MessageStatus, string, error) {
	size := cmp.Or(f.PageSize, 100)
	p := dbgen.MessageStatusListParams{
		Statuses:       make([]string, 0, len(f.Statuses)),
		EntityType:     string(f.Entity),
		ReceivedAfter:  timestamptz(f.ReceivedAfter),
		ReceivedBefore: timestamptz(f.ReceivedBefore),
		PageSize:       int32(size + 1),
	}
	for _, st := range f.Statuses {
		p.Statuses = append(p.Statuses, string(st))
	}
	if f.PageToken != "" {
		at, id, err := decodeCursor(f.PageToken)
		if err != nil {
			return nil, "", err
		}
		p.CursorReceivedAt = timestamptz(at)
		p.CursorMessageID = pgUUID(id)
	}
	rows, err := s.q.MessageStatusList(ctx, p)
	if err != nil {
		return nil, "", fmt.Errorf("list statuses: %w", err)
	}
	var next string
	if len(rows) > size {
		rows = rows[:size]
		last := rows[size-1]
		next = encodeCursor(last.ReceivedAt.Time, last.MessageID.Bytes)
	}
	out := make([]MessageStatus, len(rows))
	for i, r := range rows {
		out[i] = fromRow(r)
	}
	return out, next, s.attachAttempts(ctx, out)
}

func encodeCursor(at time.Time, id uuid.UUID) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(at.UnixMicro(), 10) + "|" + id.String()))
}

func decodeCursor(token string) (time.Time, uuid.UUID, error) {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return time.Time{}, uuid.Nil, ErrBadPageToken
	}
	micros, idText, ok := strings.Cut(string(raw), "|")
	n, err1 := strconv.ParseInt(micros, 10, 64)
	id, err2 := uuid.Parse(idText)
	if !ok || err1 != nil || err2 != nil {
		return time.Time{}, uuid.Nil, ErrBadPageToken
	}
	return time.UnixMicro(n), id, nil
}

// StatusCount is the number of messages with one status and entity.
type StatusCount struct {
	Status Status
	Entity envelope.Entity
	Count  int64
}

// Stats counts messages per status and entity.
func (s *Store) Stats(ctx context.Context) ([]StatusCount, error) {
	rows, err := s.q.MessageStatusCount(ctx)
	if err != nil {
		return nil, fmt.Errorf("count statuses: %w", err)
	}
	out := make([]StatusCount, len(rows))
	for i, r := range rows {
		out[i] = StatusCount{Status: Status(r.Status), Entity: envelope.Entity(r.EntityType), Count: r.Count}
	}
	return out, nil
}

func fromRow(r dbgen.MessageStatus) MessageStatus {
	return MessageStatus{
		MessageID:    r.MessageID.Bytes,
		Entity:       envelope.Entity(r.EntityType),
		Status:       Status(r.Status),
		ReceivedAt:   r.ReceivedAt.Time,
		ProcessedAt:  r.ProcessedAt.Time,
		RetryCount:   r.RetryCount,
		Error:        r.ErrorMessage.String,
		Source:       r.Source.String,
		Generation:   r.Generation,
		Attempt:      r.Attempt,
		DLQSequence:  uint64(r.DlqSequence.Int64),
		RecordSHA256: r.RecordSha256,
		UpdatedAt:    r.UpdatedAt.Time,
	}
}

// pgUUID converts for pgx's native uuid codec; google/uuid values would go
// through database/sql's Valuer (a string per element), which costs more
// than the rest of a large upsert's encoding.
func pgUUID(id uuid.UUID) pgtype.UUID { return pgtype.UUID{Bytes: id, Valid: true} }

func pgUUIDs(ids []uuid.UUID) []pgtype.UUID {
	out := make([]pgtype.UUID, len(ids))
	for i, id := range ids {
		out[i] = pgUUID(id)
	}
	return out
}

func timestamptz(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

// sortStatuses orders the rows of a status upsert by message id. Concurrent
// upserts (ingest's group commits, each worker loop) then lock rows in the
// same order and cannot deadlock one another.
func sortStatuses(p *dbgen.MessageStatusUpsertManyParams) {
	idx := make([]int, len(p.MessageIds))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return slices.Compare(p.MessageIds[a].Bytes[:], p.MessageIds[b].Bytes[:]) })
	*p = dbgen.MessageStatusUpsertManyParams{
		MessageIds:    permute(p.MessageIds, idx),
		EntityTypes:   permute(p.EntityTypes, idx),
		Statuses:      permute(p.Statuses, idx),
		ReceivedAts:   permute(p.ReceivedAts, idx),
		ProcessedAts:  permute(p.ProcessedAts, idx),
		RetryCounts:   permute(p.RetryCounts, idx),
		ErrorMessages: permute(p.ErrorMessages, idx),
		Sources:       permute(p.Sources, idx),
		Generations:   permute(p.Generations, idx),
		Attempts:      permute(p.Attempts, idx),
		Ranks:         permute(p.Ranks, idx),
		DlqSequences:  permute(p.DlqSequences, idx),
		RecordSha256s: permute(p.RecordSha256s, idx),
	}
}

func permute[T any](s []T, idx []int) []T {
	out := make([]T, len(idx))
	for i, j := range idx {
		out[i] = s[j]
	}
	return out
}
