module github.com/nomnomhq/nomnom/services/worker

go 1.26.8

require github.com/nomnomhq/nomnom v0.0.0

replace github.com/nomnomhq/nomnom => ../..
