package ingest

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1/ingestv1connect"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/rpcerr"
)

var _ ingestv1connect.IngestServiceHandler = (*Service)(nil)

// maxBatchRecords is IngestBatchRequest.records' max_items rule.
const maxBatchRecords = 10000

// Ingest implements nomnom.ingest.v1.IngestService.Ingest.
func (s *Service) Ingest(ctx context.Context, req *connect.Request[ingestv1.IngestRequest]) (*connect.Response[ingestv1.IngestResponse], error) {
	p, err := s.recordPending(req.Msg.GetRecord())
	if err != nil {
		s.metrics.rejected(p.entity)
		return nil, rpcerr.Invalid("record: %v", err)
	}
	out := s.accept(ctx, []pending{p})[0]
	if out.Err != nil {
		return nil, rpcerr.Wrap(out.Err)
	}
	return connect.NewResponse(&ingestv1.IngestResponse{
		MessageId:  out.MessageID,
		EntityType: out.Entity.Proto(),
		ReceivedAt: timestamppb.New(out.ReceivedAt),
		Duplicate:  out.Duplicate,
	}), nil
}

// IngestBatch implements nomnom.ingest.v1.IngestService.IngestBatch.
func (s *Service) IngestBatch(ctx context.Context, req *connect.Request[ingestv1.IngestBatchRequest]) (*connect.Response[ingestv1.IngestBatchResponse], error) {
	// The request's own rules; its records are validated one by one below,
	// so that a bad record fails alone.
	if n := len(req.Msg.GetRecords()); n == 0 || n > maxBatchRecords {
		return nil, rpcerr.Invalid("records: want 1 to %d records, got %d", maxBatchRecords, n)
	}
	results, accepted, failed := s.ingestRecords(ctx, req.Msg.GetRecords())
	return connect.NewResponse(&ingestv1.IngestBatchResponse{Results: results, Accepted: accepted, Failed: failed}), nil
}

// IngestStream implements nomnom.ingest.v1.IngestService.IngestStream. Records
// are queued in chunks as they arrive, so a long stream is not held in memory.
func (s *Service) IngestStream(ctx context.Context, stream *connect.ClientStream[ingestv1.IngestStreamRequest]) (*connect.Response[ingestv1.IngestStreamResponse], error) {
	const chunk = 500
	resp := &ingestv1.IngestStreamResponse{}
	var buf []*ingestv1.Record
	flush := func() {
		results, accepted, failed := s.ingestRecords(ctx, buf)
		for _, r := range results {
			r.Index += int32(len(resp.Results))
		}
		resp.Results = append(resp.Results, results...)
		resp.Accepted += accepted
		resp.Failed += failed
		buf = buf[:0]
	}
	for stream.Receive() {
		buf = append(buf, stream.Msg().GetRecord())
		if len(buf) == chunk {
			flush()
		}
	}
	if err := stream.Err(); err != nil {
		return nil, rpcerr.Wrap(err)
	}
	if len(buf) > 0 {
		flush()
	}
	return connect.NewResponse(resp), nil
}

// ingestRecords accepts what it can and reports every record's fate.
func (s *Service) ingestRecords(ctx context.Context, recs []*ingestv1.Record) (results []*ingestv1.IngestResult, accepted, failed int32) {
	results = make([]*ingestv1.IngestResult, len(recs))
	var batch []pending
	var index []int
	for i, rec := range recs {
		results[i] = &ingestv1.IngestResult{Index: int32(i)}
		p, err := s.recordPending(rec)
		if err != nil {
			s.metrics.rejected(p.entity)
			results[i].Error = err.Error()
			continue
		}
		batch = append(batch, p)
		index = append(index, i)
	}
	for j, out := range s.accept(ctx, batch) {
		r := results[index[j]]
		if out.Err != nil {
			r.Error = out.Err.Error()
			continue
		}
		r.MessageId, r.EntityType, r.Duplicate = out.MessageID, out.Entity.Proto(), out.Duplicate
	}
	for _, r := range results {
		if r.Error != "" {
			failed++
		} else {
			accepted++
		}
	}
	return results, accepted, failed
}

// recordPending checks a record synchronously. Typed records were already
// validated by the interceptor; raw JSON gets the REST checks.
func (s *Service) recordPending(rec *ingestv1.Record) (pending, error) {
	if rec == nil {
		return pending{}, errors.New("record is required")
	}
	var typed envelope.Record
	var entity envelope.Entity
	switch k := rec.GetKind().(type) {
	case *ingestv1.Record_Order:
		typed, entity = k.Order, envelope.Order
	case *ingestv1.Record_Customer:
		typed, entity = k.Customer, envelope.Customer
	case *ingestv1.Record_Product:
		typed, entity = k.Product, envelope.Product
	case *ingestv1.Record_Raw:
		hint := ""
		if t := k.Raw.GetEntityType(); t != 0 {
			e, err := envelope.FromProto(t)
			if err != nil {
				return pending{}, err
			}
			hint = string(e)
		}
		p, err := s.rawPending([]byte(k.Raw.GetJson()), hint, rec.GetSource(), rec.GetIdempotencyKey())
		if err != nil {
			return pending{}, fmt.Errorf("raw.json: %w", err)
		}
		return p, nil
	default:
		return pending{}, errors.New("one of order, customer, product or raw is required")
	}
	if err := checkMeta(rec.GetSource(), rec.GetIdempotencyKey()); err != nil {
		return pending{}, err
	}
	if err := envelope.Validate(typed); err != nil {
		return pending{entity: entity}, fmt.Errorf("%s: %w", entity, err)
	}
	payload, err := envelope.EncodeRecord(typed)
	if err != nil {
		return pending{}, fmt.Errorf("encode %s: %w", entity, err)
	}
	if err := s.checkSize(payload); err != nil {
		return pending{}, err
	}
	p := pending{entity: entity, payload: payload, source: rec.GetSource(), idempotencyKey: rec.GetIdempotencyKey()}
	if p.idempotencyKey != "" {
		// Of the JSON rendering, canonicalised, as for raw records.
		p.fingerprint = fingerprint(payload)
	}
	return p, nil
}
