# quicmesh — the two set-up commands are `make demo` and `make test`.
GO      ?= go
BIN     := bin/quicmesh
# demo, echo apps and load generator: kept out of the sidecar binary.
DEVBIN  := bin/quicmesh-dev
PKGS    := ./...
# Each fuzz target runs briefly in `make test`; run longer by hand with
# `make fuzz FUZZTIME=5m`.
FUZZTIME ?= 5s

.PHONY: all build test unit fuzz-smoke fuzz demo bench lint vet clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/quicmesh
	$(GO) build -o $(DEVBIN) ./cmd/quicmesh-dev

demo: build
	./$(DEVBIN) demo

test: vet unit fuzz-smoke

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

# The real-SPIRE test (cmd/quicmesh TestSPIRE) needs spire-server and
# spire-agent: .ci/spire.sh builds them once per machine into
# ~/.cache/quicmesh and prints where; a no-op when they are cached.
unit:
	QUICMESH_SPIRE_BIN="$$(bash .ci/spire.sh)" $(GO) test -race -count=1 -timeout 12m $(PKGS)

# Every fuzz target in the tree, each for FUZZTIME.
fuzz-smoke fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		dir=$$(dirname $$f); \
		for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | sed 's/^func //'); do \
			echo "fuzz $$dir $$t ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$dir > /tmp/quicmesh-fuzz.log 2>&1 || { cat /tmp/quicmesh-fuzz.log; exit 1; }; \
		done; \
	done

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 $(PKGS)

bench: build
	bash bench/run.sh

clean:
	rm -rf bin
