package ingest

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"gopkg.in/yaml.v3"

	deadletterv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1"
	ingestv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1"
	statusv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/internal/testutil"
)

// The subset of OpenAPI 3.1 the drift checks read.
type (
	oaDoc struct {
		OpenAPI    string                          `yaml:"openapi"`
		Paths      map[string]map[string]yaml.Node `yaml:"paths"`
		Components struct {
			Schemas map[string]*oaSchema `yaml:"schemas"`
		} `yaml:"components"`
	}
	oaOperation struct {
		RequestBody *struct {
			Content map[string]oaMedia `yaml:"content"`
		} `yaml:"requestBody"`
		Responses map[string]struct {
			Content map[string]oaMedia `yaml:"content"`
		} `yaml:"responses"`
	}
	oaMedia struct {
		Schema *oaSchema `yaml:"schema"`
	}
	oaSchema struct {
		Ref        string               `yaml:"$ref"`
		Type       oaTypes              `yaml:"type"`
		Format     string               `yaml:"format"`
		Enum       []string             `yaml:"enum"`
		Items      *oaSchema            `yaml:"items"`
		Properties map[string]*oaSchema `yaml:"properties"`
		Required   []string             `yaml:"required"`
	}
	// oaTypes is a schema's type: one name, or several in 3.1 (["string", "null"]).
	oaTypes []string
)

func (t *oaTypes) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*t = oaTypes{n.Value}
		return nil
	}
	return n.Decode((*[]string)(t))
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

const schemaRef = "#/components/schemas/"

// loadOpenAPI parses the embedded document.
func loadOpenAPI(t *testing.T) oaDoc {
	t.Helper()
	var doc oaDoc
	if err := yaml.Unmarshal(openAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml does not parse: %v", err)
	}
	return doc
}

// operations returns the operations of the document by "METHOD /path".
func (d oaDoc) operations(t *testing.T) map[string]oaOperation {
	t.Helper()
	ops := map[string]oaOperation{}
	for path, item := range d.Paths {
		for _, m := range httpMethods {
			n, ok := item[m]
			if !ok {
				continue
			}
			var op oaOperation
			if err := n.Decode(&op); err != nil {
				t.Fatalf("%s %s: %v", m, path, err)
			}
			ops[strings.ToUpper(m)+" "+path] = op
		}
	}
	return ops
}

// isProcedure tells Connect procedures (/pkg.Service/Method) from REST paths.
func isProcedure(path string) bool { return strings.HasPrefix(path, "/nomnom.") }

func TestOpenAPIDocumentIsWellFormed(t *testing.T) {
	doc := loadOpenAPI(t)
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi = %q, want 3.1.0", doc.OpenAPI)
	}
	// Every $ref resolves, and every schema is used.
	var generic map[string]any
	if err := yaml.Unmarshal(openAPI, &generic); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, child := range v {
				if ref, ok := child.(string); ok && k == "$ref" {
					if !resolves(generic, ref) {
						t.Errorf("%s: $ref %q does not resolve", path, ref)
					}
					if name, ok := strings.CutPrefix(ref, schemaRef); ok {
						used[name] = true
					}
				}
				walk(path+"/"+k, child)
			}
		case []any:
			for i, child := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), child)
			}
		}
	}
	walk("", generic)
	for name := range doc.Components.Schemas {
		if !used[name] {
			t.Errorf("schema %s is not referenced; remove it", name)
		}
	}
}

// resolves reports whether a local JSON pointer ref names a node of doc.
func resolves(doc map[string]any, ref string) bool {
	ptr, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return false
	}
	var cur any = doc
	for _, part := range strings.Split(ptr, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		part = strings.NewReplacer("~1", "/", "~0", "~").Replace(part)
		if cur, ok = m[part]; !ok {
			return false
		}
	}
	return true
}

func TestOpenAPIRESTRoutesMatchMux(t *testing.T) {
	doc := loadOpenAPI(t)
	var documented, served []string
	for op := range doc.operations(t) {
		if _, path, _ := strings.Cut(op, " "); !isProcedure(path) {
			documented = append(documented, op)
		}
	}
	for _, r := range restRoutes {
		served = append(served, r.pattern)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Errorf("REST routes in openapi.yaml differ from restRoutes (server.go):\n documented: %q\n served:     %q", documented, served)
	}
}

// rpcFiles are the files of the services Handler mounts.
var rpcFiles = []protoreflect.FileDescriptor{
	ingestv1.File_nomnom_ingest_v1_ingest_proto,
	statusv1.File_nomnom_status_v1_status_proto,
	deadletterv1.File_nomnom_deadletter_v1_deadletter_proto,
}

func TestOpenAPIProceduresMatchServices(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := doc.operations(t)
	want := map[string]protoreflect.MethodDescriptor{}
	for _, fd := range rpcFiles {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				// Streaming procedures have no plain JSON form.
				if md.IsStreamingClient() || md.IsStreamingServer() {
					continue
				}
				want[fmt.Sprintf("POST /%s/%s", sd.FullName(), md.Name())] = md
			}
		}
	}
	for op := range ops {
		if _, path, _ := strings.Cut(op, " "); isProcedure(path) && want[op] == nil {
			t.Errorf("openapi.yaml documents %s, which is no unary procedure of the services", op)
		}
	}
	for op, md := range want {
		got, ok := ops[op]
		if !ok {
			t.Errorf("openapi.yaml lacks %s", op)
			continue
		}
		var in string
		if got.RequestBody != nil {
			in = jsonBodyRef(got.RequestBody.Content)
		}
		if in != schemaRef+string(md.Input().FullName()) {
			t.Errorf("%s: request body is %q, want a $ref to %s", op, in, md.Input().FullName())
		}
		if out := jsonBodyRef(got.Responses["200"].Content); out != schemaRef+string(md.Output().FullName()) {
			t.Errorf("%s: 200 response is %q, want a $ref to %s", op, out, md.Output().FullName())
		}
	}
}

// jsonBodyRef returns the $ref of an application/json body, or "".
func jsonBodyRef(content map[string]oaMedia) string {
	if m, ok := content["application/json"]; ok && m.Schema != nil {
		return m.Schema.Ref
	}
	return ""
}

// TestOpenAPIProtoSchemas checks every schema named after a protobuf
// message or enum against its descriptor, as Connect's JSON (protojson)
// renders it, and that every message a documented procedure can carry has
// one.
func TestOpenAPIProtoSchemas(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := doc.Components.Schemas
	checked := map[protoreflect.FullName]bool{}
	for name, s := range schemas {
		if !strings.HasPrefix(name, "nomnom.") {
			continue
		}
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			t.Errorf("schema %s names no protobuf message or enum: %v", name, err)
			continue
		}
		checked[d.FullName()] = true
		switch d := d.(type) {
		case protoreflect.EnumDescriptor:
			var values []string
			for i := range d.Values().Len() {
				values = append(values, string(d.Values().Get(i).Name()))
			}
			if !slices.Equal(s.Enum, values) || !slices.Equal(s.Type, oaTypes{"string"}) {
				t.Errorf("schema %s: type %q enum %q, want string enum %q", name, s.Type, s.Enum, values)
			}
		case protoreflect.MessageDescriptor:
			fields := d.Fields()
			var want []string
			for i := range fields.Len() {
				want = append(want, fields.Get(i).JSONName())
			}
			if got := slices.Sorted(maps.Keys(s.Properties)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
				t.Errorf("schema %s: properties %q, want the JSON names of the message's fields %q", name, got, want)
				continue
			}
			for i := range fields.Len() {
				f := fields.Get(i)
				if err := matchProtoField(s.Properties[f.JSONName()], f); err != nil {
					t.Errorf("schema %s, property %s: %v", name, f.JSONName(), err)
				}
			}
		default:
			t.Errorf("schema %s names a %T, not a message or enum", name, d)
		}
	}

	// Everything reachable from the documented procedures has a schema.
	var visit func(protoreflect.Descriptor)
	seen := map[protoreflect.FullName]bool{}
	visit = func(d protoreflect.Descriptor) {
		if seen[d.FullName()] || d.FullName() == timestampName {
			return
		}
		seen[d.FullName()] = true
		if !checked[d.FullName()] {
			t.Errorf("openapi.yaml has no schema %s", d.FullName())
		}
		if md, ok := d.(protoreflect.MessageDescriptor); ok {
			for i := range md.Fields().Len() {
				f := md.Fields().Get(i)
				if f.Message() != nil {
					visit(f.Message())
				}
				if f.Enum() != nil {
					visit(f.Enum())
				}
			}
		}
	}
	for _, fd := range rpcFiles {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				if md := sd.Methods().Get(j); !md.IsStreamingClient() && !md.IsStreamingServer() {
					visit(md.Input())
					visit(md.Output())
				}
			}
		}
	}
}

const timestampName protoreflect.FullName = "google.protobuf.Timestamp"

// matchProtoField checks a property against the protojson form of a field.
func matchProtoField(s *oaSchema, f protoreflect.FieldDescriptor) error {
	if s == nil {
		return fmt.Errorf("no schema")
	}
	if f.IsMap() {
		return fmt.Errorf("map fields are not supported by this check; extend matchProtoField")
	}
	if f.IsList() {
		if !slices.Equal(s.Type, oaTypes{"array"}) || s.Items == nil {
			return fmt.Errorf("type %q, want an array of items", s.Type)
		}
		s = s.Items
	}
	var wantType, wantFormat, wantRef string
	switch f.Kind() {
	case protoreflect.StringKind:
		wantType = "string"
	case protoreflect.BoolKind:
		wantType = "boolean"
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		wantType, wantFormat = "integer", "int32"
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		wantType, wantFormat = "integer", "uint32"
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		wantType, wantFormat = "string", "int64" // protojson writes 64-bit integers as strings
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		wantType, wantFormat = "string", "uint64"
	case protoreflect.DoubleKind:
		wantType, wantFormat = "number", "double"
	case protoreflect.FloatKind:
		wantType, wantFormat = "number", "float"
	case protoreflect.BytesKind:
		wantType, wantFormat = "string", "byte"
	case protoreflect.EnumKind:
		wantRef = schemaRef + string(f.Enum().FullName())
	case protoreflect.MessageKind:
		if f.Message().FullName() == timestampName {
			wantType, wantFormat = "string", "date-time"
		} else {
			wantRef = schemaRef + string(f.Message().FullName())
		}
	default:
		return fmt.Errorf("kind %s is not supported by this check; extend matchProtoField", f.Kind())
	}
	if wantRef != "" {
		if s.Ref != wantRef {
			return fmt.Errorf("$ref %q, want %q", s.Ref, wantRef)
		}
		return nil
	}
	if !slices.Equal(s.Type, oaTypes{wantType}) || s.Format != wantFormat || s.Ref != "" {
		return fmt.Errorf("type %q format %q ref %q, want type %q format %q", s.Type, s.Format, s.Ref, wantType, wantFormat)
	}
	return nil
}

// restBodies maps the REST body schemas to the structs the handlers encode.
var restBodies = map[string]reflect.Type{
	"Accepted":    reflect.TypeFor[acceptedJSON](),
	"BatchResult": reflect.TypeFor[batchJSON](),
	"BatchLine":   reflect.TypeFor[batchLineJSON](),
	"Status":      reflect.TypeFor[statusJSON](),
	"Attempt":     reflect.TypeFor[attemptJSON](),
	"Error":       reflect.TypeFor[errorJSON](),
}

func TestOpenAPIRESTBodiesMatchStructs(t *testing.T) {
	schemas := loadOpenAPI(t).Components.Schemas
	for name, typ := range restBodies {
		t.Run(name, func(t *testing.T) {
			s := schemas[name]
			if s == nil {
				t.Fatalf("openapi.yaml has no schema %s for %s", name, typ)
			}
			var props, required []string
			for f := range typ.Fields() {
				tag, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
				if tag == "-" || !f.IsExported() {
					continue
				}
				props = append(props, tag)
				// omitempty fields may be absent; every other one is always written.
				if !strings.Contains(opts, "omitempty") {
					required = append(required, tag)
				}
				if err := matchGoField(s.Properties[tag], f.Type); err != nil {
					t.Errorf("property %s (%s.%s): %v", tag, typ.Name(), f.Name, err)
				}
			}
			if got := slices.Sorted(maps.Keys(s.Properties)); !slices.Equal(got, slices.Sorted(slices.Values(props))) {
				t.Errorf("properties %q, want the json tags of %s %q", got, typ, props)
			}
			if got := slices.Sorted(slices.Values(s.Required)); !slices.Equal(got, slices.Sorted(slices.Values(required))) {
				t.Errorf("required %q, want the json tags of %s without omitempty %q", got, typ, required)
			}
		})
	}
}

// matchGoField checks a property against the JSON encoding/json gives a Go
// field of type typ.
func matchGoField(s *oaSchema, typ reflect.Type) error {
	if s == nil {
		return fmt.Errorf("no schema")
	}
	// Pointers encode unset values as null. The handlers always make their
	// slices, so those are never null.
	nullable := typ.Kind() == reflect.Pointer
	if nullable {
		typ = typ.Elem()
	}
	var want string
	switch typ.Kind() {
	case reflect.String:
		want = "string"
	case reflect.Bool:
		want = "boolean"
	case reflect.Int, reflect.Int32, reflect.Int64:
		want = "integer"
	case reflect.Slice:
		want = "array"
	default:
		return fmt.Errorf("Go kind %s is not supported by this check; extend matchGoField", typ.Kind())
	}
	got := slices.DeleteFunc(slices.Clone(s.Type), func(t string) bool { return t == "null" })
	if !slices.Equal(got, []string{want}) {
		return fmt.Errorf("type %q, want %q", s.Type, want)
	}
	if hasNull := slices.Contains(s.Type, "null"); hasNull != nullable {
		return fmt.Errorf("type %q: null allowed = %v, want %v", s.Type, hasNull, nullable)
	}
	if typ.Kind() == reflect.Slice {
		elem := typ.Elem()
		if elem.Kind() == reflect.Struct {
			if s.Items == nil || restBodies[strings.TrimPrefix(s.Items.Ref, schemaRef)] != elem {
				return fmt.Errorf("items must be a $ref to the schema of %s", elem)
			}
			return nil
		}
		return matchGoField(s.Items, elem)
	}
	return nil
}

// TestOpenAPIServed serves the document from Handler, checks that each
// documented REST route reaches a handler, and compares the probes'
// answers (maps in internal/probe, so not reflectable) with their schemas.
func TestOpenAPIServed(t *testing.T) {
	nc, err := nats.Connect(testutil.NewNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(Options{
		JetStream: js,
		Store:     store.New(testutil.NewDatabase(t)),
		Logger:    slog.New(slog.DiscardHandler),
		Stream:    "MESSAGES",
	})
	if err != nil {
		t.Fatal(err)
	}
	svc.MarkReady(true)
	srv := httptest.NewServer(svc.Handler())
	t.Cleanup(srv.Close)

	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	resp, body := get("/openapi.yaml")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/yaml" || string(body) != string(openAPI) {
		t.Errorf("GET /openapi.yaml = %d %q, %d bytes; want 200 application/yaml with the embedded document",
			resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
	}

	doc := loadOpenAPI(t)
	for op := range doc.operations(t) {
		method, path, _ := strings.Cut(op, " ")
		if isProcedure(path) {
			continue
		}
		req, err := http.NewRequest(method, srv.URL+strings.ReplaceAll(path, "{id}", uuid.NewString()), strings.NewReader(""))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		// The mux's own 404 and 405 are plain text; the handlers answer JSON.
		if (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed) &&
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s is documented but not served: %s", op, resp.Status)
		}
	}

	for path, schema := range map[string]string{"/ready": "Ready", "/live": "Live", "/health": "Health"} {
		_, body := get(path)
		var got map[string]json.RawMessage
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, body)
		}
		checkKeys(t, "GET "+path, doc.Components.Schemas[schema], got)
		if path == "/health" {
			var checks map[string]map[string]json.RawMessage
			if err := json.Unmarshal(got["checks"], &checks); err != nil || len(checks) == 0 {
				t.Fatalf("GET /health: checks %s: %v", got["checks"], err)
			}
			for name, c := range checks {
				checkKeys(t, "GET /health checks."+name, doc.Components.Schemas["CheckResult"], c)
			}
		}
	}
}

// checkKeys fails unless an answer has every required property of its
// schema and no property the schema lacks.
func checkKeys(t *testing.T, what string, s *oaSchema, got map[string]json.RawMessage) {
	t.Helper()
	if s == nil {
		t.Errorf("%s: no schema", what)
		return
	}
	for _, k := range s.Required {
		if _, ok := got[k]; !ok {
			t.Errorf("%s: answer lacks required property %q: %v", what, k, slices.Sorted(maps.Keys(got)))
		}
	}
	for k := range got {
		if _, ok := s.Properties[k]; !ok {
			t.Errorf("%s: answer has %q, which the schema lacks", what, k)
		}
	}
}
