package envelope

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tpchv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/tpch/v1"
)

func TestParseEntity(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Entity
	}{
		{"order", Order}, {"Orders", Order}, {"ENTITY_TYPE_ORDER", Order},
		{" customer ", Customer}, {"customers", Customer},
		{"product", Product}, {"part", Product}, {"PARTS", Product},
	} {
		got, err := ParseEntity(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseEntity(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if _, err := ParseEntity("widget"); !errors.Is(err, ErrUnknownEntity) || !strings.Contains(err.Error(), `"widget"`) {
		t.Errorf("ParseEntity(widget) error = %v, want ErrUnknownEntity naming it", err)
	}
}

func TestInfer(t *testing.T) {
	for _, tt := range []struct {
		json string
		want Entity
	}{
		{`{"order_key":"O","customer_key":"C"}`, Order},
		{`{"order_key":null}`, Order},
		{`{"part_key":"P","customer_key":"C"}`, Product},
		{`{"customer_key":"C"}`, Customer},
	} {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal([]byte(tt.json), &fields); err != nil {
			t.Fatal(err)
		}
		has := func(k string) bool { _, ok := fields[k]; return ok }
		if got, err := Infer(has); err != nil || got != tt.want {
			t.Errorf("Infer(%s) = %q, %v; want %q", tt.json, got, err, tt.want)
		}
	}
	if _, err := Infer(func(k string) bool { return k == "name" }); !errors.Is(err, ErrUnknownEntity) {
		t.Errorf("Infer without keys: %v, want ErrUnknownEntity", err)
	}
}

func TestDecode(t *testing.T) {
	for _, tt := range []struct {
		name, json string
		entity     Entity
		wantErr    string // "" for valid
	}{
		{"valid order", `{"order_key":"O-1","customer_key":"C-1","total_price":"12.50","line_items":[{"line_number":1,"part_key":"P"}],"entity_type":"order"}`, Order, ""},
		{"camelCase names", `{"orderKey":"O-1","customerKey":"C-1"}`, Order, ""},
		{"null required key", `{"order_key":"DLQ-TEST","customer_key":null}`, Order, "customer_key"},
		{"missing key", `{"order_key":"DLQ-TEST"}`, Order, "customer_key"},
		{"bad status", `{"order_key":"O","customer_key":"C","order_status":"INVALID"}`, Order, "order_status"},
		{"negative price", `{"order_key":"O","customer_key":"C","total_price":-1}`, Order, "total_price"},
		{"duplicate lines", `{"order_key":"O","customer_key":"C","line_items":[{"line_number":1,"part_key":"P"},{"line_number":1,"part_key":"Q"}]}`, Order, "line_number"},
		{"impossible date", `{"order_key":"O","customer_key":"C","order_date":"2026-02-30"}`, Order, "order_date"},
		{"impossible ship date", `{"order_key":"O","customer_key":"C","line_items":[{"line_number":1,"part_key":"P","ship_date":"2026-13-01"}]}`, Order, "line_items[0].ship_date"},
		{"wrong type", `{"order_key":"O","customer_key":"C","total_price":"cheap"}`, Order, `totalPrice: "cheap"`},
		{"valid customer", `{"customer_key":"C","account_balance":-10}`, Customer, ""},
		{"valid product", `{"part_key":"P","retail_price":1.5}`, Product, ""},
		{"product without key", `{"name":"bolt"}`, Product, "part_key: value is required"},
		{"blank key", `{"order_key":"  ","customer_key":"C"}`, Order, "order_key: must contain a non-space character"},
		{"blank line item part", `{"order_key":"O","customer_key":"C","line_items":[{"line_number":1,"part_key":"\t"}]}`, Order, "line_items[0].part_key: must contain a non-space character"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := Decode(tt.entity, []byte(tt.json))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if rec == nil {
					t.Fatal("Decode returned no record")
				}
				return
			}
			var inv *InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Decode error = %v, want an InvalidError naming %q", err, tt.wantErr)
			}
		})
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	order := &tpchv1.Order{OrderKey: "O-1", CustomerKey: "C-1", TotalPrice: 10.5}
	payload, err := EncodeRecord(order)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(payload), `"order_key":"O-1"`) {
		t.Errorf("EncodeRecord uses proto names: %s", payload)
	}
	env, err := New(Order, payload, time.Now(), "src", "key")
	if err != nil {
		t.Fatal(err)
	}
	data, err := Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Unmarshal(data)
	if err != nil || !proto.Equal(back, env) {
		t.Fatalf("Unmarshal = %v, %v; want %v", back, err, env)
	}
	rec, err := Decode(Order, back.GetPayload())
	if err != nil || !proto.Equal(rec, order) {
		t.Fatalf("Decode(payload) = %v, %v; want %v", rec, err, order)
	}
	if _, err := Unmarshal([]byte("not a protobuf")); err == nil {
		t.Error("Unmarshal accepted garbage")
	}
}

func TestSubjects(t *testing.T) {
	if got := Product.IngestSubject(); got != "messages.ingest.product" {
		t.Errorf("IngestSubject = %s", got)
	}
	if got := Customer.DLQSubject(); got != "messages.dlq.customer" {
		t.Errorf("DLQSubject = %s", got)
	}
	if e, err := EntityFromSubject("messages.dlq.order"); err != nil || e != Order {
		t.Errorf("EntityFromSubject = %q, %v", e, err)
	}
}
