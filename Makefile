# kube-haproxy: kube-proxy with --proxy-mode=haproxy.
# `make help` lists the targets.

SHELL := /usr/bin/env bash
GO ?= go
OUT := _output
BIN := $(OUT)/bin
export KH_BIN_DIR := $(abspath $(BIN))

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-16s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install the system packages tests need (Debian: haproxy, nftables, ...).
	hack/install-deps.sh

.PHONY: build
build: ## Build the patched kube-proxy, kube-apiserver and etcd into _output/bin.
	hack/build.sh

.PHONY: unit
unit: ## Unit tests of the proxier and hack/ (no root, no built binaries; haproxy from make deps).
	$(GO) test ./proxier/... ./hack/...

.PHONY: test
test: ## Everything CI runs: unit tests, patched upstream tests, integration tests.
	hack/test.sh

.PHONY: fuzz
fuzz: ## Fuzz the translation into the model and map files for a while (FUZZTIME=30s).
	$(GO) test ./proxier/translate -run '^$$' -fuzz FuzzTranslate -fuzztime $${FUZZTIME:-30s}

.PHONY: verify
verify: ## gofmt, go vet, staticcheck, and that the patch series applies.
	hack/verify.sh

.PHONY: update
update: ## Regenerate go.mod replaces from the pinned upstream.
	hack/update-gomod.sh

.PHONY: local-up
local-up: ## Start a local cluster (etcd, kube-apiserver, nodes as netns, HAProxy).
	hack/local-up.sh

.PHONY: local-down
local-down: ## Remove everything local-up created.
	hack/local-down.sh

# Benchmarks: not part of `make test` (minutes, root, timing on a shared
# machine). docs/benchmarks.md describes them.
BENCH_ENV = KH_BENCH=1 BENCH_OUT=$(abspath $(OUT))/bench
.PHONY: bench
bench: build ## Benchmarks, haproxy beside nftables mode (100, 1,000, 10,000 Services); writes _output/bench and docs/benchmarks.md.
	$(BENCH_ENV) BENCH_DOCS=$(abspath docs/benchmarks.md) $(GO) test -count=1 -v -timeout 180m -run '^TestBench$$' ./test/bench/

.PHONY: bench-checks
bench-checks: ## The memory of HAProxy's active checks per server (TestActiveCheckMemory, about 15 seconds).
	KH_BENCH=1 $(GO) test -count=1 -v -run '^TestActiveCheckMemory$$' ./test/bench/

# The smoke run: the smallest scale with few changes and short wrk
# runs, every pass and figure once. hack/test.sh runs it on the binaries it
# has just built (bench-smoke-built).
.PHONY: bench-smoke bench-smoke-built
bench-smoke: build ## A short benchmark run (100 Services, few changes, about 2 minutes) to check that make bench works.
	$(MAKE) --no-print-directory bench-smoke-built
bench-smoke-built:
	$(BENCH_ENV) BENCH_OUT=$(abspath $(OUT))/bench-smoke SCALES=100 CHANGES=10 NEW_SERVICES=3 WRK_DURATION=1s MEMORY_SCALES=100 \
		$(GO) test -count=1 -v -timeout 20m -run '^(TestBench|TestBenchInterruptCleansUp|TestActiveCheckMemory)$$' ./test/bench/

.PHONY: image
image: ## Build the kube-proxy container image (needs docker, podman or nerdctl).
	hack/image.sh

.PHONY: clean
clean: ## Remove build output and staged trees.
	rm -rf $(OUT) staging
