# nomnom — `make run` starts the pipeline, `make test` runs every check.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export PATH := $(CURDIR)/bin:$(CURDIR)/node_modules/.bin:$(PATH)
export GOFLAGS ?= -buildvcs=false

BUF      := node_modules/.bin/buf
GO_PKGS   = $$(go list -m -f '{{.Dir}}/...')
GENERATORS := bin/protoc-gen-go bin/protoc-gen-connect-go bin/sqlc

.PHONY: help run test generate breaking check-generated vet build tools bench

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

run: ## start PostgreSQL (if needed), JetStream, ingest and worker in one process
	go run ./cmd/nomnom dev --stop-with-parent

# The TypeScript client's test runs inside go test (cmd/nomnom,
# TestTypeScriptClient) against a pipeline it starts, with gen/ts's
# dependencies installed here first.
test: check-generated vet gen/ts/node_modules/.installed ## regenerate, lint, vet and run all Go and TypeScript tests
	@# Tests create their databases on TEST_DATABASE_URL's server; without one,
	@# use 127.0.0.1:5432 or start a private cluster under .data/test-postgres.
	url="$${TEST_DATABASE_URL:-$$(go run ./cmd/nomnom postgres)}"; \
		TEST_DATABASE_URL="$$url" go test -count=1 -timeout 15m $(GO_PKGS)

$(GENERATORS) &: tools/go.mod tools/go.sum
	cd tools && GOWORK=off GOBIN=$(CURDIR)/bin go install tool
	@touch $(GENERATORS)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

gen/ts/node_modules/.installed: gen/ts/package.json gen/ts/package-lock.json
	cd gen/ts && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

tools: $(GENERATORS) node_modules/.installed ## build the pinned code generators

generate: tools ## regenerate everything under gen/
	go run ./internal/gen/validateproto third_party/protovalidate
	$(BUF) lint
	$(MAKE) -s breaking
	$(BUF) generate
	sqlc generate

breaking: ## fail on a contract change that is not additive, compared with main
	@if git rev-parse --verify -q main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
		git archive main buf.yaml proto | tar -x -C "$$tmp"; \
		cp -r third_party "$$tmp/"; \
		(cd "$$tmp" && "$(CURDIR)/$(BUF)" build -o image.binpb); \
		$(BUF) build -o "$$tmp/current.binpb"; \
		$(BUF) breaking "$$tmp/current.binpb" --against "$$tmp/image.binpb"; \
	fi

check-generated: generate ## fail if gen/ differs from what is committed
	@if [ -n "$$(git status --porcelain -- gen)" ]; then \
		echo "generated code is stale; run 'make generate' and commit:"; \
		git status --porcelain -- gen; exit 1; fi

vet: ## go vet every workspace module
	go vet $(GO_PKGS)

build: ## build the binaries into bin/
	go build -o bin/ ./cmd/nomnom ./services/ingest ./services/worker

bench: ## end-to-end benchmark against embedded dependencies
	go run ./cmd/nomnom bench
