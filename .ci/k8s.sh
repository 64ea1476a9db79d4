#!/usr/bin/env bash
# Builds kube-apiserver and etcd (test-only: the quicmesh module does not
# import them) from Go modules into a per-machine cache, once per version.
# A second run is a no-op. The control-plane tests (control/...) run them
# envtest-style: API server + etcd, no controllers, no kubelet.
#
# Prints the bin directory on stdout; the tests find the binaries through
# QUICMESH_K8S_BIN. Progress goes to stderr. With --cached it only prints
# the directory if both binaries are there, else exits 3 without building
# (what a test run without QUICMESH_K8S_BIN asks).
set -euo pipefail

# The newest k8s.io/kubernetes that builds with this Go; etcd is the
# version that kubernetes' own go.mod pins.
K8S_VERSION=${K8S_VERSION:-v1.37.2}
cache=${QUICMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quicmesh}
dir="$cache/k8s-$K8S_VERSION"
bin="$dir/bin"

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
if [ "${1:-}" = --cached ]; then
  echo "k8s.sh: kube-apiserver and etcd $K8S_VERSION are not built yet: run 'bash .ci/k8s.sh'" >&2
  exit 3
fi

mkdir -p "$dir"
# One build per machine: a test binary or a second shell that asks while
# another build runs waits for it instead of compiling the same tree again.
exec 9>"$dir/.build.lock"
flock 9
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir/mod/etcd"
cd "$dir/mod"
export GOFLAGS=-mod=mod
# A module that is not the main module never has its replace directives
# applied, and k8s.io/kubernetes replaces every k8s.io staging module with
# ./staging/src/..., which only exists in its own repository. The helper
# module therefore replaces each of them with the published module of the
# same minor/patch (v1.M.P -> v0.M.P), generated from kubernetes' go.mod so
# that a new staging module in a later release is not missed.
kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -f "$kmod" ] || { echo "k8s.sh: no go.mod for k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
staging_version="v0.${K8S_VERSION#v1.}"
goversion=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod")
{
  echo "module quicmesh.local/k8s"
  echo
  echo "go $goversion"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*$|\t\1 => \1 '"$staging_version"'|p' "$kmod"
  echo ")"
} > go.mod
grep -q "=> k8s.io/api $staging_version" go.mod || { echo "k8s.sh: generated no replace block from $kmod" >&2; exit 1; }
cat > etcd/main.go <<'EOF'
// Command etcd is etcd's own main, built at the version kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF

tmp="$dir/bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
# Without the version stamp the server reports v0.0.0 to clients that check it.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
echo "k8s.sh: building kube-apiserver $K8S_VERSION and etcd into $bin (minutes on a cold cache)" >&2
go build -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
go build -ldflags "-s -w" -o "$tmp/etcd" ./etcd >&2
# Publish both binaries at once so a half-finished build never looks cached.
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
echo "$bin"
