package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	deadletterv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1/deadletterv1connect"
	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/natsx"
	"github.com/nomnomhq/nomnom/internal/obs"
	"github.com/nomnomhq/nomnom/internal/rpcerr"
	"github.com/nomnomhq/nomnom/internal/store"
)

var _ deadletterv1connect.DeadLetterServiceHandler = (*Service)(nil)

// deadLetter is one entry of the dead-letter stream.
type deadLetter struct {
	seq    uint64
	header nats.Header
	env    *envelopev1.Envelope // nil when the entry's envelope is unreadable
	info   *deadletterv1.DeadLetter
}

func (s *Service) dlqStream(ctx context.Context) (jetstream.Stream, error) {
	st, err := s.js.Stream(ctx, s.opts.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", s.opts.DLQStream, err)
	}
	return st, nil
}

// readDeadLetter decodes a raw stream message into a deadLetter.
func readDeadLetter(raw *jetstream.RawStreamMsg) deadLetter {
	h := raw.Header
	info := &deadletterv1.DeadLetter{
		MessageId:       h.Get(natsx.HeaderMessageID),
		Error:           h.Get(natsx.HeaderError),
		ErrorClass:      classFromHeader(h.Get(natsx.HeaderErrorClass)),
		OriginalSubject: h.Get(natsx.HeaderSubject),
		DlqSequence:     raw.Sequence,
		FailedAt:        timestamppb.New(raw.Time),
	}
	if n, err := strconv.Atoi(h.Get(natsx.HeaderAttempts)); err == nil {
		info.Attempts = int32(n)
	}
	if n, err := strconv.ParseUint(h.Get(natsx.HeaderSequence), 10, 64); err == nil {
		info.OriginalSequence = n
	}
	if t, err := time.Parse(time.RFC3339Nano, h.Get(natsx.HeaderFailedAt)); err == nil {
		info.FailedAt = timestamppb.New(t)
	}
	dl := deadLetter{seq: raw.Sequence, header: raw.Header, info: info}
	if env, err := envelope.Unmarshal(raw.Data); err == nil {
		dl.env = env
		info.MessageId = env.GetMessageId()
		info.EntityType = env.GetEntityType()
		info.ReceivedAt = env.GetReceivedAt()
		info.ReplayCount = env.GetReplayCount()
		info.Source = env.GetSource()
		info.Payload = string(env.GetPayload())
	} else if e, err := envelope.EntityFromSubject(raw.Subject); err == nil {
		info.EntityType = e.Proto()
	}
	return dl
}

func classFromHeader(v string) deadletterv1.ErrorClass {
	switch v {
	case "permanent":
		return deadletterv1.ErrorClass_ERROR_CLASS_PERMANENT
	case "transient":
		return deadletterv1.ErrorClass_ERROR_CLASS_TRANSIENT
	case "poison":
		return deadletterv1.ErrorClass_ERROR_CLASS_POISON
	}
	return deadletterv1.ErrorClass_ERROR_CLASS_UNSPECIFIED
}

func matches(f *deadletterv1.DeadLetterFilter, dl deadLetter) bool {
	if f == nil {
		return true
	}
	if c := f.GetErrorClass(); c != 0 && dl.info.GetErrorClass() != c {
		return false
	}
	at := dl.info.GetFailedAt().AsTime()
	if f.GetFailedAfter() != nil && at.Before(f.GetFailedAfter().AsTime()) {
		return false
	}
	if f.GetFailedBefore() != nil && !at.Before(f.GetFailedBefore().AsTime()) {
		return false
	}
	return true
}

// scan visits dead letters matching f from sequence start on, in order,
// until visit returns false or the stream ends.
func (s *Service) scan(ctx context.Context, f *deadletterv1.DeadLetterFilter, start uint64, visit func(deadLetter) bool) error {
	st, err := s.dlqStream(ctx)
	if err != nil {
		return err
	}
	subject := envelope.DLQSubjects
	if t := f.GetEntityType(); t != 0 {
		e, err := envelope.FromProto(t)
		if err != nil {
			return err
		}
		subject = e.DLQSubject()
	}
	seq := max(start, 1)
	for {
		// Direct "next message on subject at or after seq": no consumer to
		// create or clean up, and exact paging by sequence.
		raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read dead-letter stream at %d: %w", seq, err)
		}
		seq = raw.Sequence + 1
		dl := readDeadLetter(raw)
		if matches(f, dl) && !visit(dl) {
			return nil
		}
	}
}

// ListDeadLetters implements nomnom.deadletter.v1.DeadLetterService.ListDeadLetters.
func (s *Service) ListDeadLetters(ctx context.Context, req *connect.Request[deadletterv1.ListDeadLettersRequest]) (*connect.Response[deadletterv1.ListDeadLettersResponse], error) {
	size := int(req.Msg.GetPageSize())
	if size == 0 {
		size = 100
	}
	var start uint64
	if tok := req.Msg.GetPageToken(); tok != "" {
		n, err := strconv.ParseUint(tok, 10, 64)
		if err != nil {
			return nil, rpcerr.Invalid("page_token %q was not issued by ListDeadLetters", tok)
		}
		start = n
	}
	resp := &deadletterv1.ListDeadLettersResponse{}
	// The page ends at the first match that does not fit, and the next page
	// starts there, so a full last page gets no token.
	err := s.scan(ctx, req.Msg.GetFilter(), start, func(dl deadLetter) bool {
		if len(resp.DeadLetters) == size {
			resp.NextPageToken = strconv.FormatUint(dl.seq, 10)
			return false
		}
		info := proto.CloneOf(dl.info)
		info.Payload = ""
		resp.DeadLetters = append(resp.DeadLetters, info)
		return true
	})
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	return connect.NewResponse(resp), nil
}

// errNotDeadLettered names a message id that has no dead-letter entry.
func errNotDeadLettered(id string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("message %s is not in the dead-letter queue", id))
}

// lookup finds the dead-letter entry of a message: directly through the
// sequence its status row recorded, else by scanning the dead-letter stream.
// The scan covers entries the status no longer points at: a replay whose
// delete failed has already moved the status to a new generation, and the
// operator repeats it by id.
func (s *Service) lookup(ctx context.Context, st jetstream.Stream, id string) (deadLetter, error) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return deadLetter{}, rpcerr.Invalid("message id %q is not a UUID", id)
	}
	status, err := s.store.GetStatus(ctx, uid)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return deadLetter{}, err
	}
	if err == nil && status.Status == store.StatusDLQ && status.DLQSequence != 0 {
		raw, err := st.GetMsg(ctx, status.DLQSequence)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return deadLetter{}, err
		}
		if err == nil {
			if dl := readDeadLetter(raw); dl.info.GetMessageId() == uid.String() {
				return dl, nil
			}
		}
	}
	// Only a replayed message (or one whose status row is missing) can have
	// an entry its row does not point at; skip the scan for the rest.
	if err == nil && status.Generation == 0 {
		return deadLetter{}, errNotDeadLettered(id)
	}
	filter := &deadletterv1.DeadLetterFilter{}
	if status.Entity != "" {
		filter.EntityType = status.Entity.Proto()
	}
	var found *deadLetter
	if err := s.scan(ctx, filter, 1, func(dl deadLetter) bool {
		if dl.info.GetMessageId() == uid.String() {
			found = &dl
			return false
		}
		return true
	}); err != nil {
		return deadLetter{}, err
	}
	if found == nil {
		return deadLetter{}, errNotDeadLettered(id)
	}
	return *found, nil
}

// GetDeadLetter implements nomnom.deadletter.v1.DeadLetterService.GetDeadLetter.
func (s *Service) GetDeadLetter(ctx context.Context, req *connect.Request[deadletterv1.GetDeadLetterRequest]) (*connect.Response[deadletterv1.GetDeadLetterResponse], error) {
	st, err := s.dlqStream(ctx)
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	dl, err := s.lookup(ctx, st, req.Msg.GetMessageId())
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	return connect.NewResponse(&deadletterv1.GetDeadLetterResponse{DeadLetter: dl.info}), nil
}

// maxPerCall bounds how many entries one replay or purge by filter handles.
const maxPerCall = 10000

// selectDeadLetters resolves ids (all must exist, else NotFound naming the
// missing ones and nothing is done) or scans with a filter.
//
// A scan stops after maxPerCall entries that can be handled: a replay or
// purge removes what it handled, so repeating it continues where it
// stopped. Entries it cannot handle (skip says why) stay where they are, so
// they do not count, or enough of them at the head would stall every
// repeat; the first maxPerCall of them are returned to be reported, and
// the rest only counted in skipped.
func (s *Service) selectDeadLetters(ctx context.Context, st jetstream.Stream, ids []string, f *deadletterv1.DeadLetterFilter,
	skip func(deadLetter) string) (_ []deadLetter, skipped int, _ error) {
	if len(ids) == 0 {
		var out []deadLetter
		handled, reported := 0, 0
		err := s.scan(ctx, f, 1, func(dl deadLetter) bool {
			switch {
			case skip(dl) == "":
				out = append(out, dl)
				handled++
			case reported < maxPerCall:
				out = append(out, dl)
				reported++
			default:
				skipped++
			}
			return handled < maxPerCall
		})
		return out, skipped, err
	}
	out := make([]deadLetter, 0, len(ids))
	var missing []string
	for _, id := range ids {
		dl, err := s.lookup(ctx, st, id)
		if connect.CodeOf(err) == connect.CodeNotFound {
			missing = append(missing, id)
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		out = append(out, dl)
	}
	if len(missing) > 0 {
		return nil, 0, connect.NewError(connect.CodeNotFound,
			fmt.Errorf("not in the dead-letter queue: %s", strings.Join(missing, ", ")))
	}
	return out, 0, nil
}

// ReplayDeadLetters implements nomnom.deadletter.v1.DeadLetterService.ReplayDeadLetters.
// Per entry: republish to the ingest stream with replay_count+1 (deduplicated
// by message id and generation), mark the status accepted in the new
// generation, then delete the entry. A failure leaves the entry in place and
// a repeat picks up where it stopped.
func (s *Service) ReplayDeadLetters(ctx context.Context, req *connect.Request[deadletterv1.ReplayDeadLettersRequest]) (*connect.Response[deadletterv1.ReplayDeadLettersResponse], error) {
	var corrected []byte
	if c := req.Msg.GetCorrectedPayload(); c != "" {
		if _, err := parseObject([]byte(c)); err != nil {
			return nil, rpcerr.Invalid("corrected_payload: %v", err)
		}
		corrected = []byte(strings.TrimSpace(c))
		// The same limit as at ingest, or the record could be replayed but
		// never dead-lettered again.
		if err := s.checkSize(corrected); err != nil {
			return nil, rpcerr.Invalid("corrected_payload: %v", err)
		}
	}
	st, err := s.dlqStream(ctx)
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	entries, skipped, err := s.selectDeadLetters(ctx, st, req.Msg.GetMessageIds(), req.Msg.GetFilter(), s.unreplayable)
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	resp := &deadletterv1.ReplayDeadLettersResponse{DryRun: req.Msg.GetDryRun(), Failed: int32(skipped)}
	for _, dl := range entries {
		out := &deadletterv1.ReplayOutcome{MessageId: dl.info.GetMessageId(), ReplayCount: dl.info.GetReplayCount() + 1}
		resp.Outcomes = append(resp.Outcomes, out)
		stale, err := s.replayedBefore(ctx, dl)
		switch why := s.unreplayable(dl); {
		case err != nil:
			out.Error = err.Error()
		case stale:
			// Whatever the limit says: this replay already happened.
			out.Replayed = true
			if !req.Msg.GetDryRun() {
				if err := s.removeReplayed(ctx, st, dl); err != nil {
					out.Replayed, out.Error = false, err.Error()
				}
			}
		case why != "":
			out.Error = why
		case req.Msg.GetDryRun():
			out.Replayed = true
		default:
			if err := s.replay(ctx, st, dl, corrected); err != nil {
				out.Error = err.Error()
			} else {
				out.Replayed = true
			}
		}
		if out.Replayed {
			resp.Replayed++
		} else {
			resp.Failed++
		}
	}
	return connect.NewResponse(resp), nil
}

// unreplayable says why an entry cannot be replayed, or "" if it can.
func (s *Service) unreplayable(dl deadLetter) string {
	switch {
	case dl.env == nil:
		return "the entry's envelope is unreadable; inspect it with nats stream view and purge it"
	case int(dl.info.GetReplayCount()) >= s.opts.MaxReplays:
		return fmt.Sprintf("replay limit reached: replayed %d times already (DLQ_MAX_REPLAYS=%d)", dl.info.GetReplayCount(), s.opts.MaxReplays)
	}
	return ""
}

// replayedBefore reports whether an entry's message has moved on to a later
// generation: a replay republished it, but did not get to remove the
// entry. Republishing it again, once JetStream has forgotten the first
// republish, would put its stale payload over the one that replay stored;
// finishing that replay only takes removing the entry.
func (s *Service) replayedBefore(ctx context.Context, dl deadLetter) (bool, error) {
	if dl.env == nil {
		return false, nil
	}
	id, err := uuid.Parse(dl.env.GetMessageId())
	if err != nil {
		return false, nil
	}
	status, err := s.store.GetStatus(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read status: %w", err)
	}
	return status.Generation > dl.env.GetReplayCount(), nil
}

// removeReplayed removes an entry replayedBefore found already replayed.
func (s *Service) removeReplayed(ctx context.Context, st jetstream.Stream, dl deadLetter) error {
	if err := st.DeleteMsg(ctx, dl.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("already replayed, but the entry was not removed (repeat the replay): %w", err)
	}
	s.log.InfoContext(ctx, "removed a dead letter replayed before", "message_id", dl.env.GetMessageId(),
		"entry_replay_count", dl.env.GetReplayCount())
	return nil
}

func (s *Service) replay(ctx context.Context, st jetstream.Stream, dl deadLetter, corrected []byte) error {
	env := proto.CloneOf(dl.env)
	env.ReplayCount++
	if corrected != nil {
		env.Payload = corrected
	}
	entity, err := envelope.FromProto(env.GetEntityType())
	if err != nil {
		return err
	}
	data, err := envelope.Marshal(env)
	if err != nil {
		return err
	}
	msgID := fmt.Sprintf("%s:replay:%d", env.GetMessageId(), env.GetReplayCount())
	// The replay continues the record's original trace, if it had one.
	msg := &nats.Msg{Subject: entity.IngestSubject(), Data: data, Header: nats.Header{}}
	obs.CopyTraceHeaders(msg.Header, dl.header)
	if _, err := s.js.PublishMsg(ctx, msg,
		jetstream.WithMsgID(msgID), jetstream.WithExpectStream(s.opts.Stream)); err != nil {
		return fmt.Errorf("republish: %w", err)
	}
	w := acceptedWrite(env, entity)
	if err := s.store.WriteStatuses(ctx, []store.StatusWrite{w}); err != nil {
		return fmt.Errorf("republished, but status not reset (repeat the replay): %w", err)
	}
	if err := st.DeleteMsg(ctx, dl.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("republished, but the entry was not removed (repeat the replay): %w", err)
	}
	s.log.InfoContext(ctx, "replayed dead letter", "message_id", env.GetMessageId(), "entity_type", entity,
		"replay_count", env.GetReplayCount(), "corrected", corrected != nil)
	return nil
}

// PurgeDeadLetters implements nomnom.deadletter.v1.DeadLetterService.PurgeDeadLetters.
func (s *Service) PurgeDeadLetters(ctx context.Context, req *connect.Request[deadletterv1.PurgeDeadLettersRequest]) (*connect.Response[deadletterv1.PurgeDeadLettersResponse], error) {
	st, err := s.dlqStream(ctx)
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	// Every entry can be purged.
	entries, _, err := s.selectDeadLetters(ctx, st, req.Msg.GetMessageIds(), req.Msg.GetFilter(), func(deadLetter) string { return "" })
	if err != nil {
		return nil, rpcerr.Wrap(err)
	}
	resp := &deadletterv1.PurgeDeadLettersResponse{DryRun: req.Msg.GetDryRun()}
	for _, dl := range entries {
		if !req.Msg.GetDryRun() {
			if err := st.DeleteMsg(ctx, dl.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return nil, rpcerr.Wrap(fmt.Errorf("purged %d, then failed on %s (repeat to continue): %w", resp.Purged, dl.info.GetMessageId(), err))
			}
			s.log.InfoContext(ctx, "purged dead letter", "message_id", dl.info.GetMessageId(), "dlq_sequence", dl.seq)
		}
		resp.MessageIds = append(resp.MessageIds, dl.info.GetMessageId())
		resp.Purged++
	}
	return connect.NewResponse(resp), nil
}
