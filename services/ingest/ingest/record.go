package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nomnomhq/nomnom/internal/envelope"
)

// errNotObject is returned for valid JSON that is not an object.
var errNotObject = errors.New("not a JSON object")

// parseObject checks that data is exactly one JSON object and returns its
// top-level fields, which are enough to pick the entity. The payload itself
// is kept byte for byte.
func parseObject(data []byte) (map[string]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("empty body: want one JSON object")
	}
	if trimmed[0] != '{' {
		var v any
		if err := json.Unmarshal(trimmed, &v); err != nil {
			return nil, fmt.Errorf("malformed JSON: %v", err)
		}
		return nil, fmt.Errorf("%w: got %s", errNotObject, jsonKind(v))
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		return nil, fmt.Errorf("malformed JSON: %v", err)
	}
	return fields, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case []any:
		return "an array"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "a scalar"
}

// entityOf picks a record's entity: an "entity_type" field in the record
// wins, then the hint (query parameter, header or RPC field), then the keys.
func entityOf(fields map[string]json.RawMessage, hint string) (envelope.Entity, error) {
	if raw, ok := fields["entity_type"]; ok && string(raw) != "null" {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return "", fmt.Errorf("entity_type must be a string, got %s", raw)
		}
		return envelope.ParseEntity(name)
	}
	if strings.TrimSpace(hint) != "" {
		return envelope.ParseEntity(hint)
	}
	return envelope.Infer(fields)
}

// rawPending turns JSON text into a pending record after the checks every
// door makes synchronously: one object, of a known entity, within the limit.
// Schema problems are left to the worker, which dead-letters them with the
// validation error.
func (s *Service) rawPending(data []byte, hint, source, idempotencyKey string) (pending, error) {
	if err := checkMeta(source, idempotencyKey); err != nil {
		return pending{}, err
	}
	if int64(len(data)) > s.opts.MaxBodyBytes {
		return pending{}, fmt.Errorf("record is %d bytes, over the %d-byte limit (INGEST_MAX_BODY_BYTES)", len(data), s.opts.MaxBodyBytes)
	}
	fields, err := parseObject(data)
	if err != nil {
		return pending{}, err
	}
	entity, err := entityOf(fields, hint)
	if err != nil {
		return pending{}, err
	}
	return pending{entity: entity, payload: bytes.TrimSpace(data), source: source, idempotencyKey: idempotencyKey}, nil
}

// Bounds of what a client attaches to a record, from the Record message's
// rules; source must also fit message_status.source, or the record's status
// could never be written.
const (
	maxSourceLen         = 255
	maxIdempotencyKeyLen = 200
)

// checkMeta checks a record's source and idempotency key.
func checkMeta(source, idempotencyKey string) error {
	for name, v := range map[string]string{"source": source, "idempotency_key": idempotencyKey} {
		if !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
			return fmt.Errorf("%s must be UTF-8 text without control characters", name)
		}
	}
	if n := utf8.RuneCountInString(source); n > maxSourceLen {
		return fmt.Errorf("source is %d characters, over the %d-character limit", n, maxSourceLen)
	}
	if n := utf8.RuneCountInString(idempotencyKey); n > maxIdempotencyKeyLen {
		return fmt.Errorf("idempotency_key is %d characters, over the %d-character limit", n, maxIdempotencyKeyLen)
	}
	return nil
}
