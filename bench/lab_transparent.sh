#!/bin/bash
# Transparent path vs no sidecars, pod a -> pod b, 1000 req/s open loop
# (docs/benchmarks.md). Root; after make build. Results in $OUT (/tmp).
set -u
BIN=${BIN:-bin}
run_lab() { # name, extra args...; waits until up
  local name=$1; shift
  $BIN/quicmesh-dev lab up --name $name --pods a,b "$@" > ${OUT:-/tmp}/lab-lab-$name.log 2>&1 &
  for i in $(seq 1 240); do grep -q "is up;" ${OUT:-/tmp}/lab-lab-$name.log && return 0; sleep 0.5; done
  cat ${OUT:-/tmp}/lab-lab-$name.log; return 1
}
bench_in_a() { # name, label, proto, target, pids...
  local name=$1 label=$2 proto=$3 target=$4; shift 4
  local ns=$(python3 -c "import json;s=json.load(open('/run/quicmesh-lab/$name.json'));print([p['namespace'] for p in s['pods'] if p['name']=='a'][0])")
  local pidargs=""
  for p in "$@"; do pidargs="$pidargs --pid $p"; done
  ip netns exec $ns setpriv --reuid 2001 --regid 2001 --clear-groups -- $BIN/quicmesh-dev bench --proto $proto --target $target \
    --rate 1000 --duration ${DUR:-20s} --warmup 3s --no-progress --json ${OUT:-/tmp}/lab-bench-$label.json $pidargs > ${OUT:-/tmp}/lab-bench-$label.txt 2>&1
  echo "== $label"; cat ${OUT:-/tmp}/lab-bench-$label.txt
}
sidecar_pids() { python3 -c "import json;s=json.load(open('/run/quicmesh-lab/$1.json'));print(' '.join('sidecar-'+p['pod']+'='+str(p['pid']) for p in s['processes'] if p['label']=='sidecar'))"; }

run_lab tpmesh --sidecars --quicmesh $BIN/quicmesh --subnet 10.88.14.0/24 || exit 1
P=$(sidecar_pids tpmesh)
bench_in_a tpmesh mesh-http1 http1 http://b.default.svc.cluster.local/ $P
bench_in_a tpmesh mesh-grpc grpc b.default.svc.cluster.local:9090 $P
$BIN/quicmesh-dev lab down --name tpmesh
run_lab tpbase --subnet 10.88.15.0/24 || exit 1
bench_in_a tpbase base-http1 http1 http://b:8080/
bench_in_a tpbase base-grpc grpc b:9090
$BIN/quicmesh-dev lab down --name tpbase
