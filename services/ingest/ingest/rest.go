package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/nomnomhq/nomnom/internal/rpcerr"
	"github.com/nomnomhq/nomnom/internal/store"
)

// The REST routes keep the shapes of the original plan's server, so scripts
// written for it (curl | jq) keep working.

type acceptedJSON struct {
	MessageID  string `json:"message_id"`
	Status     string `json:"status"`
	Timestamp  string `json:"timestamp"`
	EntityType string `json:"entity_type"`
	Duplicate  bool   `json:"duplicate,omitempty"`
}

// entityHint reads the entity from ?entity_type= or the X-Entity-Type header.
func entityHint(r *http.Request) string {
	if v := r.URL.Query().Get("entity_type"); v != "" {
		return v
	}
	return r.Header.Get("X-Entity-Type")
}

// handleMessage serves POST /ingest/message: one JSON object.
func (s *Service) handleMessage(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, s.opts.MaxBodyBytes, s.limitName)
	if err != nil {
		s.metrics.rejected("")
		writeBodyError(w, err)
		return
	}
	p, err := s.rawPending(body, entityHint(r), r.Header.Get("X-Source"), r.Header.Get("Idempotency-Key"))
	if err != nil {
		s.metrics.rejected("")
		writeError(w, http.StatusBadRequest, err)
		return
	}
	out := s.accept(r.Context(), []pending{p})[0]
	if out.Err != nil {
		writeError(w, httpStatus(rpcerr.Code(out.Err)), out.Err)
		return
	}
	writeJSON(w, http.StatusAccepted, acceptedJSON{
		MessageID:  out.MessageID,
		Status:     string(store.StatusAccepted),
		Timestamp:  out.ReceivedAt.Format(time.RFC3339Nano),
		EntityType: string(out.Entity),
		Duplicate:  out.Duplicate,
	})
}

type batchLineJSON struct {
	Line       int    `json:"line"`
	MessageID  string `json:"message_id,omitempty"`
	EntityType string `json:"entity_type,omitempty"`
	Duplicate  bool   `json:"duplicate,omitempty"`
	Error      string `json:"error,omitempty"`
}

type batchJSON struct {
	Status     string          `json:"status"`
	Processed  int             `json:"processed"`
	Inserted   int             `json:"inserted"`
	Failed     int             `json:"failed"`
	Errors     []string        `json:"errors"`
	DurationMS int64           `json:"duration_ms"`
	Results    []batchLineJSON `json:"results"`
}

// handleBatch serves POST /ingest/batch: NDJSON, one record per line. Blank
// lines are skipped; every other line gets a result, and a bad line never
// fails the others.
func (s *Service) handleBatch(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, err := readBody(w, r, s.opts.MaxBatchBytes, "INGEST_MAX_BATCH_BYTES")
	if err != nil {
		writeBodyError(w, err)
		return
	}
	hint, source := entityHint(r), r.Header.Get("X-Source")
	resp := batchJSON{Errors: []string{}, Results: []batchLineJSON{}}
	var batch []pending
	var lines []int
	// The body is in memory already; splitting it (rather than scanning
	// with a bounded buffer) lets an over-long line fail alone.
	for i, raw := range bytes.Split(body, []byte("\n")) {
		n := i + 1
		line := bytes.TrimSpace(raw)
		if len(line) == 0 {
			continue
		}
		p, err := s.rawPending(line, hint, source, "")
		if err != nil {
			s.metrics.rejected("")
			resp.Results = append(resp.Results, batchLineJSON{Line: n, Error: err.Error()})
			continue
		}
		resp.Results = append(resp.Results, batchLineJSON{Line: n})
		batch = append(batch, p)
		lines = append(lines, len(resp.Results)-1)
	}
	if len(resp.Results) == 0 {
		writeError(w, http.StatusBadRequest, errors.New("empty batch: want one JSON object per line"))
		return
	}
	for j, out := range s.accept(r.Context(), batch) {
		res := &resp.Results[lines[j]]
		if out.Err != nil {
			res.Error = out.Err.Error()
			continue
		}
		res.MessageID, res.EntityType, res.Duplicate = out.MessageID, string(out.Entity), out.Duplicate
	}
	for _, res := range resp.Results {
		resp.Processed++
		if res.Error != "" {
			resp.Failed++
			resp.Errors = append(resp.Errors, fmt.Sprintf("line %d: %s", res.Line, res.Error))
		} else {
			resp.Inserted++
		}
	}
	code := http.StatusAccepted
	switch {
	case resp.Failed == 0:
		resp.Status = "success"
	case resp.Inserted > 0:
		resp.Status = "partial"
	default:
		resp.Status = "failed"
		code = http.StatusBadRequest
	}
	resp.DurationMS = time.Since(start).Milliseconds()
	writeJSON(w, code, resp)
}

type attemptJSON struct {
	Generation int32  `json:"generation"`
	Attempt    int32  `json:"attempt"`
	Error      string `json:"error"`
	ErrorClass string `json:"error_class"`
	FailedAt   string `json:"failed_at"`
}

type statusJSON struct {
	MessageID    string        `json:"message_id"`
	EntityType   string        `json:"entity_type"`
	Status       string        `json:"status"`
	ReceivedAt   string        `json:"received_at"`
	ProcessedAt  *string       `json:"processed_at"`
	RetryCount   int32         `json:"retry_count"`
	ErrorMessage *string       `json:"error_message"`
	Source       *string       `json:"source"`
	ReplayCount  int32         `json:"replay_count"`
	Attempt      int32         `json:"attempt"`
	Attempts     []attemptJSON `json:"attempts"`
	UpdatedAt    string        `json:"updated_at"`
}

// handleStatus serves GET /ingest/status/{id}.
func (s *Service) handleStatus(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("id")
	id, err := uuid.Parse(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("message id %q is not a UUID", raw))
		return
	}
	st, err := s.store.GetStatus(r.Context(), id)
	if err != nil {
		writeError(w, httpStatus(rpcerr.Code(err)), err)
		return
	}
	writeJSON(w, http.StatusOK, statusToJSON(st))
}

func statusToJSON(st store.MessageStatus) statusJSON {
	out := statusJSON{
		MessageID:   st.MessageID.String(),
		EntityType:  string(st.Entity),
		Status:      string(st.Status),
		ReceivedAt:  st.ReceivedAt.UTC().Format(time.RFC3339Nano),
		RetryCount:  st.RetryCount,
		ReplayCount: st.Generation,
		Attempt:     st.Attempt,
		Attempts:    []attemptJSON{},
		UpdatedAt:   st.UpdatedAt.UTC().Format(time.RFC3339Nano),
	}
	if !st.ProcessedAt.IsZero() {
		t := st.ProcessedAt.UTC().Format(time.RFC3339Nano)
		out.ProcessedAt = &t
	}
	if st.Error != "" {
		out.ErrorMessage = &st.Error
	}
	if st.Source != "" {
		out.Source = &st.Source
	}
	for _, a := range st.Attempts {
		out.Attempts = append(out.Attempts, attemptJSON{
			Generation: a.Generation, Attempt: a.Attempt, Error: a.Error,
			ErrorClass: a.ErrorClass, FailedAt: a.FailedAt.UTC().Format(time.RFC3339Nano),
		})
	}
	return out
}

var errTooLarge = errors.New("request body too large")

// readBody reads a request body of at most limit bytes; limitName says what
// sets the limit.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, limitName string) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, fmt.Errorf("%w: over the %d-byte limit (%s)", errTooLarge, limit, limitName)
	}
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return body, nil
}

func writeBodyError(w http.ResponseWriter, err error) {
	if errors.Is(err, errTooLarge) {
		writeError(w, http.StatusRequestEntityTooLarge, err)
		return
	}
	writeError(w, http.StatusBadRequest, err)
}

type errorJSON struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, err error) {
	msg := err.Error()
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		msg = cerr.Message() // the code is in the body's own field
	}
	writeJSON(w, status, errorJSON{Error: msg, Code: codeName(status)})
}

func codeName(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "invalid_argument"
	case http.StatusRequestEntityTooLarge:
		return "payload_too_large"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusConflict:
		return "already_exists"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusUnauthorized:
		return "unauthenticated"
	case http.StatusForbidden:
		return "permission_denied"
	case http.StatusServiceUnavailable:
		return "unavailable"
	case http.StatusGatewayTimeout:
		return "deadline_exceeded"
	}
	return "internal"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // "<token>" in a message, not "\u003ctoken\u003e"
	_ = enc.Encode(v)
}

// httpStatus maps a Connect code to the REST status code.
func httpStatus(code connect.Code) int {
	switch code {
	case connect.CodeInvalidArgument:
		return http.StatusBadRequest
	case connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeAlreadyExists:
		return http.StatusConflict
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	case connect.CodeDeadlineExceeded, connect.CodeCanceled:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}
