module github.com/nomnomhq/nomnom/services/ingest

go 1.26.8

require github.com/nomnomhq/nomnom v0.0.0

require (
	connectrpc.com/connect v1.21.1 // indirect
	connectrpc.com/grpchealth v1.5.0 // indirect
	connectrpc.com/grpcreflect v1.3.1 // indirect
	golang.org/x/sync v0.25.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace github.com/nomnomhq/nomnom => ../..
