package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	statusv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1/statusv1connect"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/rpcerr"
	"github.com/nomnomhq/nomnom/internal/store"
)

var _ statusv1connect.StatusServiceHandler = (*Service)(nil)

// WatchStatus polls every watchInterval at first, backing off to
// watchMaxInterval, and gives up on an id with no status after
// watchUnknownFor (its row may trail the client's first look by a moment,
// but not by that long).
const (
	watchInterval    = 50 * time.Millisecond
	watchMaxInterval = time.Second
	watchUnknownFor  = 30 * time.Second
)

// GetStatus implements nomnom.status.v1.StatusService.GetStatus.
func (s *Service) GetStatus(ctx context.Context, req *connect.Request[statusv1.GetStatusRequest]) (*connect.Response[statusv1.GetStatusResponse], error) {
	st, err := s.store.GetStatus(ctx, uuid.MustParse(req.Msg.GetMessageId()))
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	return connect.NewResponse(&statusv1.GetStatusResponse{Status: statusProto(st)}), nil
}

// BatchGetStatus implements nomnom.status.v1.StatusService.BatchGetStatus.
func (s *Service) BatchGetStatus(ctx context.Context, req *connect.Request[statusv1.BatchGetStatusRequest]) (*connect.Response[statusv1.BatchGetStatusResponse], error) {
	ids := make([]uuid.UUID, len(req.Msg.GetMessageIds()))
	for i, id := range req.Msg.GetMessageIds() {
		ids[i] = uuid.MustParse(id)
	}
	found, err := s.store.GetStatuses(ctx, ids)
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	resp := &statusv1.BatchGetStatusResponse{}
	seen := make(map[uuid.UUID]bool, len(found))
	for _, st := range found {
		resp.Statuses = append(resp.Statuses, statusProto(st))
		seen[st.MessageID] = true
	}
	for i, id := range ids {
		if !seen[id] {
			resp.NotFound = append(resp.NotFound, req.Msg.GetMessageIds()[i])
		}
	}
	return connect.NewResponse(resp), nil
}

// ListStatuses implements nomnom.status.v1.StatusService.ListStatuses.
func (s *Service) ListStatuses(ctx context.Context, req *connect.Request[statusv1.ListStatusesRequest]) (*connect.Response[statusv1.ListStatusesResponse], error) {
	f := store.ListFilter{PageSize: int(req.Msg.GetPageSize()), PageToken: req.Msg.GetPageToken()}
	for _, st := range req.Msg.GetStatuses() {
		f.Statuses = append(f.Statuses, statusFromProto(st))
	}
	if t := req.Msg.GetEntityType(); t != 0 {
		e, err := envelope.FromProto(t)
		if err != nil {
			return nil, rpcerr.Wrap(err)
		}
		f.Entity = e
	}
	if req.Msg.GetReceivedAfter() != nil {
		f.ReceivedAfter = req.Msg.GetReceivedAfter().AsTime()
	}
	if req.Msg.GetReceivedBefore() != nil {
		f.ReceivedBefore = req.Msg.GetReceivedBefore().AsTime()
	}
	page, next, err := s.store.ListStatuses(ctx, f)
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	resp := &statusv1.ListStatusesResponse{NextPageToken: next}
	for _, st := range page {
		resp.Statuses = append(resp.Statuses, statusProto(st))
	}
	return connect.NewResponse(resp), nil
}

// WatchStatus implements nomnom.status.v1.StatusService.WatchStatus. It sends
// the current status at once, then every change, and ends after a terminal
// status. A message not yet known is waited for: its status row may trail
// the client's first look by a moment.
func (s *Service) WatchStatus(ctx context.Context, req *connect.Request[statusv1.WatchStatusRequest], stream *connect.ServerStream[statusv1.WatchStatusResponse]) error {
	id := uuid.MustParse(req.Msg.GetMessageId())
	// Poll fast at first, when changes come quickly, then back off: a
	// long watch costs a query a second, not twenty.
	wait := watchInterval
	deadline := unknownUntil(id, time.Now())
	var last store.MessageStatus
	sent := false
	for {
		st, err := s.store.GetStatus(ctx, id)
		switch {
		case err == nil:
			if !sent || st.UpdatedAt != last.UpdatedAt || st.Status != last.Status {
				if err := stream.Send(&statusv1.WatchStatusResponse{Status: statusProto(st)}); err != nil {
					return err
				}
				last, sent = st, true
				wait = watchInterval
			}
			if st.Status.Terminal() {
				return nil
			}
		case !errors.Is(err, store.ErrNotFound) && store.Unreachable(err):
			// PostgreSQL is down: keep watching, at the slowest pace,
			// until it is back or the client gives up.
			wait = watchMaxInterval
		case rpcerr.Code(err) != connect.CodeNotFound:
			return rpcerr.Wrap(err)
		case !time.Now().Before(deadline):
			return connect.NewError(connect.CodeNotFound, fmt.Errorf("message %s: no status", id))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return rpcerr.Wrap(ctx.Err())
		case <-s.draining:
			t.Stop()
			return connect.NewError(connect.CodeUnavailable, errors.New("server is shutting down; watch again"))
		case <-t.C:
		}
		wait = min(wait*2, watchMaxInterval)
	}
}

// unknownUntil is how long WatchStatus waits for the status row of an id
// it does not know: until watchUnknownFor after the id was made. A
// time-ordered id (UUIDv7, as ingest issues) says when that was, so an old
// or mistyped one is answered NotFound at once; a key-derived id (UUIDv5)
// does not, so it gets watchUnknownFor from now; any other id is not one of
// ours.
func unknownUntil(id uuid.UUID, now time.Time) time.Time {
	switch id.Version() {
	case 7:
		sec, nsec := id.Time().UnixTime()
		return time.Unix(sec, nsec).Add(watchUnknownFor)
	case 5:
		return now.Add(watchUnknownFor)
	}
	return now
}

// GetStats implements nomnom.status.v1.StatusService.GetStats.
func (s *Service) GetStats(ctx context.Context, _ *connect.Request[statusv1.GetStatsRequest]) (*connect.Response[statusv1.GetStatsResponse], error) {
	counts, err := s.store.Stats(ctx)
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	resp := &statusv1.GetStatsResponse{}
	for _, c := range counts {
		resp.Counts = append(resp.Counts, &statusv1.StatusCount{
			Status: statusToProto(c.Status), EntityType: c.Entity.Proto(), Count: c.Count,
		})
		resp.Total += c.Count
	}
	return connect.NewResponse(resp), nil
}

var statusNames = map[store.Status]statusv1.Status{
	store.StatusAccepted:   statusv1.Status_STATUS_ACCEPTED,
	store.StatusProcessing: statusv1.Status_STATUS_PROCESSING,
	store.StatusFailed:     statusv1.Status_STATUS_FAILED,
	store.StatusCompleted:  statusv1.Status_STATUS_COMPLETED,
	store.StatusDLQ:        statusv1.Status_STATUS_DLQ,
}

func statusToProto(s store.Status) statusv1.Status { return statusNames[s] }

func statusFromProto(p statusv1.Status) store.Status {
	for s, v := range statusNames {
		if v == p {
			return s
		}
	}
	return ""
}

func statusProto(st store.MessageStatus) *statusv1.MessageStatus {
	out := &statusv1.MessageStatus{
		MessageId:    st.MessageID.String(),
		EntityType:   st.Entity.Proto(),
		Status:       statusToProto(st.Status),
		ReceivedAt:   timestamppb.New(st.ReceivedAt),
		RetryCount:   st.RetryCount,
		ErrorMessage: st.Error,
		Source:       st.Source,
		ReplayCount:  st.Generation,
		Attempt:      st.Attempt,
		UpdatedAt:    timestamppb.New(st.UpdatedAt),
	}
	if !st.ProcessedAt.IsZero() {
		out.ProcessedAt = timestamppb.New(st.ProcessedAt)
	}
	for _, a := range st.Attempts {
		out.Attempts = append(out.Attempts, &statusv1.Attempt{
			Generation: a.Generation, Attempt: a.Attempt, Error: a.Error,
			ErrorClass: a.ErrorClass, FailedAt: timestamppb.New(a.FailedAt),
		})
	}
	return out
}
