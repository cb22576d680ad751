package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/nomnomhq/nomnom/internal/envelope"
)

// errNotObject is returned for valid JSON that is not an object.
var errNotObject = errors.New("not a JSON object")

// object is what ingest reads of a record before queueing it: enough to
// pick its entity. The payload itself is kept byte for byte.
type object struct {
	keys       []string       // top-level member names
	entityType jsontext.Value // the entity_type member's value, if present
}

func (o object) has(key string) bool { return slices.Contains(o.keys, key) }

// parseObject checks that data is exactly one JSON object, strictly (valid
// UTF-8, no duplicate member names, which the worker's decoder would refuse
// later anyway), and reads its top-level member names without decoding the
// values.
func parseObject(data []byte) (object, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return object{}, errors.New("empty body: want one JSON object")
	}
	d := jsontext.NewDecoder(bytes.NewReader(trimmed))
	if k := d.PeekKind(); k != '{' {
		if _, err := d.ReadValue(); err != nil {
			return object{}, malformed(err)
		}
		if err := atEnd(d); err != nil {
			return object{}, err
		}
		return object{}, fmt.Errorf("%w: got %s", errNotObject, jsonKind(k))
	}
	var obj object
	if _, err := d.ReadToken(); err != nil {
		return object{}, malformed(err)
	}
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		if err != nil {
			return object{}, malformed(err)
		}
		name := tok.String()
		value, err := d.ReadValue()
		if err != nil {
			return object{}, malformed(err)
		}
		obj.keys = append(obj.keys, name)
		if name == "entity_type" {
			obj.entityType = value.Clone() // value is the decoder's buffer
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return object{}, malformed(err)
	}
	return obj, atEnd(d)
}

// atEnd checks that nothing but white space follows the value d has read.
func atEnd(d *jsontext.Decoder) error {
	if _, err := d.ReadToken(); err != io.EOF {
		return malformed(fmt.Errorf("more data after the value, at offset %d", d.InputOffset()))
	}
	return nil
}

func malformed(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("malformed JSON: %s", strings.TrimPrefix(err.Error(), "jsontext: "))
}

func jsonKind(k jsontext.Kind) string {
	switch k {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case '0':
		return "a number"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a scalar"
}

// entityOf picks a record's entity: an "entity_type" field in the record
// wins, then the hint (query parameter, header or RPC field), then the keys.
func entityOf(obj object, hint string) (envelope.Entity, error) {
	if obj.entityType != nil && obj.entityType.Kind() != 'n' {
		if obj.entityType.Kind() != '"' {
			return "", fmt.Errorf("entity_type must be a string, got %s", obj.entityType)
		}
		var name string
		if err := json.Unmarshal(obj.entityType, &name); err != nil {
			return "", fmt.Errorf("entity_type must be a string, got %s", obj.entityType)
		}
		return envelope.ParseEntity(name)
	}
	if strings.TrimSpace(hint) != "" {
		return envelope.ParseEntity(hint)
	}
	return envelope.Infer(obj.has)
}

// rawPending turns JSON text into a pending record after the checks every
// door makes synchronously: one object, of a known entity, within the limit.
// Schema problems are left to the worker, which dead-letters them with the
// validation error.
func (s *Service) rawPending(data []byte, hint, source, idempotencyKey string) (pending, error) {
	if err := checkMeta(source, idempotencyKey); err != nil {
		return pending{}, err
	}
	if err := s.checkSize(data); err != nil {
		return pending{}, err
	}
	obj, err := parseObject(data)
	if err != nil {
		return pending{}, err
	}
	entity, err := entityOf(obj, hint)
	if err != nil {
		return pending{}, err
	}
	p := pending{entity: entity, payload: bytes.TrimSpace(data), source: source, idempotencyKey: idempotencyKey}
	if idempotencyKey != "" {
		p.fingerprint = fingerprint(p.payload)
	}
	return p, nil
}

// checkSize refuses a record over the per-record limit.
func (s *Service) checkSize(record []byte) error {
	if int64(len(record)) > s.opts.MaxBodyBytes {
		return fmt.Errorf("record is %d bytes, over the %d-byte limit (%s)", len(record), s.opts.MaxBodyBytes, s.limitName)
	}
	return nil
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
