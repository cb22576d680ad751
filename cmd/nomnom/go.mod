module github.com/nomnomhq/nomnom/cmd/nomnom

go 1.26.8

require github.com/nomnomhq/nomnom v0.0.0

replace github.com/nomnomhq/nomnom => ../..

require (
	github.com/nomnomhq/nomnom/services/ingest v0.0.0
	github.com/nomnomhq/nomnom/services/worker v0.0.0
)

replace (
	github.com/nomnomhq/nomnom/services/ingest => ../../services/ingest
	github.com/nomnomhq/nomnom/services/worker => ../../services/worker
)
