module github.com/nomnomhq/nomnom/cmd/nomnom

go 1.26.8

require github.com/nomnomhq/nomnom v0.0.0

replace github.com/nomnomhq/nomnom => ../..

require (
	github.com/nomnomhq/nomnom/services/ingest v0.0.0
	github.com/nomnomhq/nomnom/services/worker v0.0.0
)

require (
	connectrpc.com/connect v1.21.1 // indirect
	golang.org/x/sync v0.25.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace (
	github.com/nomnomhq/nomnom/services/ingest => ../../services/ingest
	github.com/nomnomhq/nomnom/services/worker => ../../services/worker
)
