// Package envelope defines how a record travels: the entity it carries, the
// JetStream subject it goes to, the protobuf Envelope that wraps it, and how
// its JSON payload decodes and validates into a typed record.
package envelope

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"buf.build/go/protovalidate"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	envelopev1 "github.com/nomnomhq/nomnom/gen/go/nomnom/envelope/v1"
	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
)

// Entity is a record kind, named as it appears in subjects, tables and the
// REST API ("order", "customer", "product").
type Entity string

// The entities nomnom stores.
const (
	Order    Entity = "order"
	Customer Entity = "customer"
	Product  Entity = "product"
)

// Entities lists every entity in a stable order.
var Entities = []Entity{Order, Customer, Product}

// ErrUnknownEntity is returned for an entity name or record nomnom cannot place.
var ErrUnknownEntity = errors.New("unknown entity")

// ParseEntity accepts the names producers use: "order", "orders", "Order",
// "ENTITY_TYPE_ORDER", "part" for product, and so on.
func ParseEntity(s string) (Entity, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "order", "orders", "entity_type_order":
		return Order, nil
	case "customer", "customers", "entity_type_customer":
		return Customer, nil
	case "product", "products", "part", "parts", "entity_type_product":
		return Product, nil
	}
	return "", fmt.Errorf("%w %q: want order, customer or product", ErrUnknownEntity, s)
}

// Infer picks the entity of a JSON object from its top-level keys (has
// reports whether the object has one), most specific first: an order also
// names its customer, and a line item names a part.
func Infer(has func(key string) bool) (Entity, error) {
	switch {
	case has("order_key"):
		return Order, nil
	case has("part_key"):
		return Product, nil
	case has("customer_key"):
		return Customer, nil
	}
	return "", fmt.Errorf("%w: cannot infer it from the record; give entity_type, or one of order_key, part_key, customer_key", ErrUnknownEntity)
}

// FromProto maps the protobuf enum to an Entity.
func FromProto(t tpchv1.EntityType) (Entity, error) {
	switch t {
	case tpchv1.EntityType_ENTITY_TYPE_ORDER:
		return Order, nil
	case tpchv1.EntityType_ENTITY_TYPE_CUSTOMER:
		return Customer, nil
	case tpchv1.EntityType_ENTITY_TYPE_PRODUCT:
		return Product, nil
	}
	return "", fmt.Errorf("%w %s", ErrUnknownEntity, t)
}

// Proto maps an Entity to the protobuf enum.
func (e Entity) Proto() tpchv1.EntityType {
	switch e {
	case Order:
		return tpchv1.EntityType_ENTITY_TYPE_ORDER
	case Customer:
		return tpchv1.EntityType_ENTITY_TYPE_CUSTOMER
	case Product:
		return tpchv1.EntityType_ENTITY_TYPE_PRODUCT
	}
	return tpchv1.EntityType_ENTITY_TYPE_UNSPECIFIED
}

// IngestSubject is the subject ingest publishes the entity's records to.
func (e Entity) IngestSubject() string { return "messages.ingest." + string(e) }

// DLQSubject is the subject dead letters of the entity go to.
func (e Entity) DLQSubject() string { return "messages.dlq." + string(e) }

// Subjects the streams bind.
const (
	IngestSubjects = "messages.ingest.>"
	DLQSubjects    = "messages.dlq.>"
)

// EntityFromSubject returns the entity of a messages.ingest.<e> or
// messages.dlq.<e> subject.
func EntityFromSubject(subject string) (Entity, error) {
	i := strings.LastIndexByte(subject, '.')
	return ParseEntity(subject[i+1:])
}

// idempotencyNamespace scopes the name-based ids of keyed messages.
var idempotencyNamespace = uuid.MustParse("5f0c3b1e-8a47-4c1d-9d0e-6e6f6d6e6f6d")

// New wraps a payload in a fresh Envelope. Its id is a time-ordered UUIDv7,
// or, when the producer gave an idempotency key, a UUIDv5 derived from the
// key: every retry of a keyed record names the same message, so a
// deduplicated retry can answer with the id without reading the first
// publish back.
func New(entity Entity, payload []byte, receivedAt time.Time, source, idempotencyKey string) (*envelopev1.Envelope, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("message id: %w", err)
	}
	if idempotencyKey != "" {
		id = uuid.NewSHA1(idempotencyNamespace, []byte(idempotencyKey))
	}
	return &envelopev1.Envelope{
		MessageId:      id.String(),
		EntityType:     entity.Proto(),
		ReceivedAt:     timestamppb.New(receivedAt),
		Source:         source,
		IdempotencyKey: idempotencyKey,
		Payload:        payload,
	}, nil
}

// Marshal encodes an envelope for JetStream.
func Marshal(env *envelopev1.Envelope) ([]byte, error) { return proto.Marshal(env) }

// Unmarshal decodes an envelope read from JetStream and checks the fields
// every consumer relies on.
func Unmarshal(data []byte) (*envelopev1.Envelope, error) {
	env := &envelopev1.Envelope{}
	if err := proto.Unmarshal(data, env); err != nil {
		return nil, fmt.Errorf("decode envelope: %w", err)
	}
	if _, err := uuid.Parse(env.GetMessageId()); err != nil {
		return nil, fmt.Errorf("envelope message_id %q: %w", env.GetMessageId(), err)
	}
	if _, err := FromProto(env.GetEntityType()); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return env, nil
}

// Record is a decoded, validated entity record: *tpchv1.Order,
// *tpchv1.Customer or *tpchv1.Product.
type Record = proto.Message

// NewRecord returns an empty record of the entity's type.
func NewRecord(e Entity) (Record, error) {
	switch e {
	case Order:
		return &tpchv1.Order{}, nil
	case Customer:
		return &tpchv1.Customer{}, nil
	case Product:
		return &tpchv1.Product{}, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownEntity, e)
}

// InvalidError reports a payload that can never be stored as it is: JSON
// that does not fit the entity, or a record that breaks a validation rule.
// Its message names the offending fields.
type InvalidError struct {
	Entity Entity
	Reason string
}

func (e *InvalidError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Entity, e.Reason) }

var decodeOptions = protojson.UnmarshalOptions{DiscardUnknown: true}

// Decode parses the JSON payload of an entity and validates it. Unknown
// fields (such as entity_type) are ignored; a null value counts as unset, so
// {"customer_key": null} fails the required-field rule.
func Decode(e Entity, payload []byte) (Record, error) {
	rec, err := NewRecord(e)
	if err != nil {
		return nil, err
	}
	if err := decodeOptions.Unmarshal(payload, rec); err != nil {
		return nil, &InvalidError{Entity: e, Reason: err.Error()}
	}
	if err := Validate(rec); err != nil {
		return nil, &InvalidError{Entity: e, Reason: err.Error()}
	}
	return rec, nil
}

// EncodeRecord renders a typed record as JSON with its proto field names, the
// form the REST API accepts, so typed and raw records share one payload shape.
func EncodeRecord(rec Record) ([]byte, error) {
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(rec)
}

var validator = sync.OnceValues(func() (protovalidate.Validator, error) { return protovalidate.New() })

// Validate checks a message against its protovalidate rules and returns an
// error listing each violation as "field [rule]: message".
func Validate(msg proto.Message) error {
	v, err := validator()
	if err != nil {
		return fmt.Errorf("validator: %w", err)
	}
	err = v.Validate(msg)
	var verr *protovalidate.ValidationError
	if err != nil && !errors.As(err, &verr) {
		return err
	}
	var parts []string
	if verr != nil {
		for _, viol := range verr.Violations {
			text := fmt.Sprintf("%s [%s]", viol.Proto.GetMessage(), viol.Proto.GetRuleId())
			if field := protovalidate.FieldPathString(viol.Proto.GetField()); field != "" {
				text = field + ": " + text // else a rule on the whole message, which names its fields
			}
			parts = append(parts, text)
		}
	}
	parts = append(parts, dateViolations(msg)...)
	if len(parts) == 0 {
		return nil
	}
	return &ValidationError{Violations: parts, cause: err}
}

// ValidationError lists protovalidate violations in readable form.
type ValidationError struct {
	Violations []string
	cause      error
}

func (e *ValidationError) Error() string { return strings.Join(e.Violations, "; ") }

// Unwrap returns the *protovalidate.ValidationError.
func (e *ValidationError) Unwrap() error { return e.cause }

// dateViolations reports YYYY-MM-DD strings that are not calendar dates
// (2026-02-30): the pattern rule lets them through and PostgreSQL would
// refuse them only when the worker stores the record.
func dateViolations(msg proto.Message) []string {
	o, ok := msg.(*tpchv1.Order)
	if !ok {
		return nil
	}
	var out []string
	check := func(field, v string) {
		if v == "" {
			return
		}
		if _, err := time.Parse(time.DateOnly, v); err != nil {
			out = append(out, fmt.Sprintf("%s: %q is not a calendar date [date.valid]", field, v))
		}
	}
	check("order_date", o.GetOrderDate())
	for i, li := range o.GetLineItems() {
		check(fmt.Sprintf("line_items[%d].ship_date", i), li.GetShipDate())
		check(fmt.Sprintf("line_items[%d].commit_date", i), li.GetCommitDate())
		check(fmt.Sprintf("line_items[%d].receipt_date", i), li.GetReceiptDate())
	}
	return out
}
