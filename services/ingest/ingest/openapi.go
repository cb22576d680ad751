package ingest

import (
	_ "embed"
	"net/http"
)

// openAPI documents every route of the ingest port except the streaming
// procedures, gRPC health and reflection. It is written by hand;
// openapi_test.go keeps it in step with restRoutes, the REST body structs
// and the protobuf services.
//
//go:embed openapi.yaml
var openAPI []byte

// serveOpenAPI serves GET /openapi.yaml.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(openAPI)
}
