#!/usr/bin/env bash
# Builds spire-server and spire-agent (github.com/spiffe/spire, a test-only
# dependency: the quicmesh module does not import it) from Go modules into a
# per-machine cache, once. A second run is a no-op.
#
# Prints the bin directory on stdout. The real-SPIRE test
# (cmd/quicmesh, TestSPIRE*) finds the binaries through QUICMESH_SPIRE_BIN.
set -euo pipefail

SPIRE_VERSION=${SPIRE_VERSION:-v1.13.3}
cache=${QUICMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quicmesh}
dir="$cache/spire-$SPIRE_VERSION"
bin="$dir/bin"

if [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
# One build per machine: a test binary or a second shell that asks while
# another build runs waits for it instead of compiling the same tree again.
exec 9>"$dir/.build.lock"
flock 9
if [ -x "$bin/spire-server" ] && [ -x "$bin/spire-agent" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir/mod"
cd "$dir/mod"
# A throwaway module pins the SPIRE version through its go.mod; building
# from it keeps SPIRE's dependencies out of quicmesh's go.mod.
[ -f go.mod ] || go mod init quicmesh.local/spire >&2
export GOFLAGS=-mod=mod
go get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" >&2
go get -tool "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION" >&2
tmp="$dir/bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
GOBIN="$tmp" go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent >&2
# Publish both binaries at once so a half-finished build never looks cached.
rm -rf "$bin"
mv "$tmp" "$bin"
echo "$bin"
