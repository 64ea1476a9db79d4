# quicmesh — the two set-up commands are `make demo` and `make test`.
GO      ?= go
BIN     := bin/quicmesh
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

.PHONY: all build test unit fuzz-smoke fuzz demo bench lint vet clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/quicmesh

demo: build
	./$(BIN) demo

test: vet unit fuzz-smoke

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet $(PKGS)

unit:
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

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

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 $(PKGS)

bench: build
	bash bench/run.sh

clean:
	rm -rf bin
