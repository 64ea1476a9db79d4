# quicmesh — the two set-up commands are `make demo` and `make test`.
GO      ?= go
BIN     := bin/quicmesh
# demo, echo apps and load generator: kept out of the sidecar binary.
DEVBIN  := bin/quicmesh-dev
# the control plane: links client-go, which the sidecar must not.
CONTROLBIN := bin/quicmesh-control
PKGS    := ./...
# Each fuzz target runs briefly in `make test`; run longer by hand with
# `make fuzz FUZZTIME=2000000x`. The budget is a count of executions, not a
# duration: with a duration, Go before 1.27 can fail a target with a bare
# "context deadline exceeded" when -fuzztime runs out (golang/go#75804, a
# race in the fuzzing coordinator between the deadline and the check that
# is meant to treat it as a normal stop), and a loaded machine widens the
# window. A count has no deadline to race, and load only makes it slower:
# 10000 executions take 1-4 s per target on 2 busy cores.
FUZZTIME ?= 10000x
# Hang guard per target: a hung target fails with its stacks.
FUZZTIMEOUT ?= 10m

.PHONY: all build test unit fuzz-smoke fuzz stress-test demo lab-demo bench lint vet clean proto

all: build

# The sidecar is built without cgo: a static binary maps no libc or ld.so,
# ~1.6 MB less RSS per sidecar, and nothing in it needs cgo. Host names are
# then always resolved by Go's own resolver (/etc/hosts, /etc/resolv.conf),
# which is what it uses on Linux by default anyway; NSS modules such as mdns
# are not consulted. See docs/benchmarks.md "Sidecar memory"; bench/run.sh
# builds it the same way.
SIDECAR_ENV := CGO_ENABLED=0
# gRPC's grpcnotrace tag leaves out golang.org/x/net/trace (gRPC's request
# tracing, only ever on after grpc.EnableTracing = true, which quicmesh never
# sets) and with it text/template, whose dynamic method lookups make the
# linker keep every exported method of every type: 4.6 MB smaller file,
# ~2 MB less RSS per sidecar (docs/benchmarks.md, "Sidecar memory at
# 1,000 req/s"). nethttpomithttp2 leaves out net/http's bundled copy of
# HTTP/2 (h2_bundle.go): the sidecar's HTTP/2 is x/net/http2's (outbound
# and tunnel servers, h2tcp, the inbound h2c fallback) or its own
# (h2client), and net/http's then never speaks HTTP/2 (its Transport and
# Server do HTTP/1.1 only): 0.64 MB smaller file, ~0.3 MB less RSS per
# sidecar (docs/benchmarks.md, "The sidecar without net/http's bundled
# HTTP/2"). bench/run.sh and bench/tunnel-iperf.sh use the same tags, and
# cmd/quicmesh TestSidecarBuildTags checks that they do. The dev binary
# keeps net/http's HTTP/2 (its h2c load generator and echo apps use it).
SIDECAR_TAGS := grpcnotrace,nethttpomithttp2

build:
	$(SIDECAR_ENV) $(GO) build -tags $(SIDECAR_TAGS) -o $(BIN) ./cmd/quicmesh
	$(GO) build -o $(DEVBIN) ./cmd/quicmesh-dev
	$(GO) build -o $(CONTROLBIN) ./cmd/quicmesh-control

demo: build
	./$(DEVBIN) demo

# Needs root, iproute2, iptables, setpriv and curl.
lab-demo: build
	./$(DEVBIN) lab demo --quicmesh $(BIN)

test: vet unit fuzz-smoke

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

# The sidecar's HTTP/2 packages are tested once more built as the sidecar
# is (SIDECAR_TAGS: without net/http's bundled HTTP/2); the other packages'
# tests use net/http's HTTP/2 in their apps and clients.
SIDECAR_TAGGED_PKGS := ./proxy/inbound ./internal/h2client ./proxy/outbound
# Extra go test flags, e.g. UNITFLAGS='-skip TestName' (used by hand with
# stress-test to set aside a failure that is known and owned elsewhere).
UNITFLAGS ?=
# The real-SPIRE test (cmd/quicmesh TestSPIRE) needs spire-server and
# spire-agent: .ci/spire.sh builds them once per machine into
# ~/.cache/quicmesh and prints where; a no-op when they are cached. The
# control-plane tests need kube-apiserver and etcd: .ci/k8s.sh, the same way;
# the HTTP/3 edge test (transport/gateway TestCaddyHTTP3ThroughTheGateway)
# needs Caddy: .ci/caddy.sh.
unit:
	$(GO) test -race -count=1 -tags $(SIDECAR_TAGS) $(UNITFLAGS) $(SIDECAR_TAGGED_PKGS)
	QUICMESH_SPIRE_BIN="$$(bash .ci/spire.sh)" QUICMESH_K8S_BIN="$$(bash .ci/k8s.sh)" QUICMESH_CADDY_BIN="$$(bash .ci/caddy.sh)" $(GO) test -race -count=1 -timeout 12m $(UNITFLAGS) $(PKGS)

# Every fuzz target in the tree (seed corpus first, then FUZZTIME).
fuzz-smoke fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f "$$log"' EXIT; \
	for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		dir=$$(dirname $$f); \
		for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | sed 's/^func //'); do \
			echo "fuzz $$dir $$t ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -timeout $(FUZZTIMEOUT) $$dir > "$$log" 2>&1 || { cat "$$log"; exit 1; }; \
		done; \
	done

# make test's unit tests and fuzz smoke STRESS_RUNS times in a row, with the
# race detector and no test cache, while STRESS_HOGS busy loops keep every
# core busy; stops at the first failure. The hogs are killed when the
# recipe's shell exits (trap), and each also stops by itself once that
# shell is gone (even if it was killed). See docs/testing.md.
STRESS_RUNS ?= 5
STRESS_HOGS ?= $(shell nproc 2>/dev/null || echo 2)
stress-test: vet
	@set -e; hogs=; trap 'kill $$hogs 2>/dev/null || true' EXIT; trap 'exit 130' INT TERM; \
	for i in $$(seq $(STRESS_HOGS)); do sh -c 'while kill -0 $$PPID 2>/dev/null; do :; done' & hogs="$$hogs $$!"; done; \
	echo "stress-test: $(STRESS_HOGS) CPU hogs running (pids$$hogs)"; \
	for r in $$(seq $(STRESS_RUNS)); do \
		start=$$(date +%s); \
		echo "stress-test: run $$r of $(STRESS_RUNS)"; \
		$(MAKE) --no-print-directory unit fuzz-smoke || { echo "stress-test: run $$r of $(STRESS_RUNS) FAILED"; exit 1; }; \
		echo "stress-test: run $$r passed in $$(( $$(date +%s) - start )) s"; \
	done; \
	echo "stress-test: $(STRESS_RUNS) runs in a row passed under load"

# Regenerates the control-plane API (internal/controlpb) from its .proto
# files. Only this target needs protoc (Debian: protobuf-compiler); the
# generated code is committed, so building and testing do not.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
proto:
	GOBIN=$(CURDIR)/bin/tools $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/bin/tools $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	protoc -I internal/controlpb \
		--plugin=protoc-gen-go=bin/tools/protoc-gen-go --go_out=internal/controlpb --go_opt=paths=source_relative \
		--plugin=protoc-gen-go-grpc=bin/tools/protoc-gen-go-grpc --go-grpc_out=internal/controlpb --go-grpc_opt=paths=source_relative \
		internal/controlpb/*.proto

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 $(PKGS)

bench: build
	bash bench/run.sh
	# A 60 s partition (SIGSTOP) at 500 GETs/s: what the client sidecar
	# holds stays bounded (issue 11; make test runs the same test for 20 s).
	$(GO) test -count=1 -timeout 10m -run 'TestSidecarProcessFailures/SIGSTOP' -v ./cmd/quicmesh -partition 60s -partition-rate 500

clean:
	rm -rf bin
