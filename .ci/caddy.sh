#!/usr/bin/env bash
# Builds Caddy (github.com/caddyserver/caddy, a test-only dependency: the
# quicmesh module does not import it) into a per-machine cache, once per
# version. A second run is a no-op. The HTTP/3 edge test (cmd/quicmesh,
# TestCaddyHTTP3Upstream) runs it as an HTTP/3 client the project did not
# write: reverse_proxy with `versions 3` and a mesh client certificate.
#
# Prints the bin directory on stdout; the test finds the binary through
# QUICMESH_CADDY_BIN. Progress goes to stderr.
set -euo pipefail

CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
cache=${QUICMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quicmesh}
dir="$cache/caddy-$CADDY_VERSION"
bin="$dir/bin"

if [ -x "$bin/caddy" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
# One build per machine: a test binary or a second shell that asks while
# another build runs waits for it instead of compiling the same tree again.
exec 9>"$dir/.build.lock"
flock 9
if [ -x "$bin/caddy" ]; then
  echo "$bin"
  exit 0
fi
tmp="$dir/bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
# `go install pkg@version` builds outside any module: Caddy's dependencies
# stay out of quicmesh's go.mod.
GOFLAGS=-mod=mod GOBIN="$tmp" go install "github.com/caddyserver/caddy/v2/cmd/caddy@$CADDY_VERSION" >&2
# Publish the binary at once so a half-finished build never looks cached.
rm -rf "$bin"
mv "$tmp" "$bin"
echo "$bin"
