#!/usr/bin/env bash
# bench/footprint.sh — memory of a pair of sidecars, idle and after a little
# load, for comparing sidecar builds (docs/design.md, "Binaries").
#
#   bash bench/footprint.sh SIDECAR_BIN DEV_BIN
#
# SIDECAR_BIN runs both sidecars ("proxy"); DEV_BIN (a quicmesh-dev) runs
# the CA, the echo apps and the load generator. Use a DEV_BIN that is not
# the same file as SIDECAR_BIN: processes running one file share its pages,
# which would lower the sidecars' Pss. Everything listens on 127.0.0.1, on
# ports from a random base (a port in use fails the run; run it again).
#
# Prints one line per sidecar and phase, in kB from /proc/PID/status and
# /proc/PID/smaps_rollup:  phase side VmRSS VmHWM Pss Anonymous
# "idle" is two seconds after both sidecars are ready; "load" follows 5 s
# of HTTP/1.1 and 5 s of gRPC, 16 concurrent requests each, through them.
# With RATE set (RATE=1000 bash bench/footprint.sh ...), "load" is instead
# HTTP/1.1 at RATE req/s (open loop, 32 workers, 1 s warm-up + 6 s, as
# make bench's http1-1k), and each load line ends with the sidecar's CPU
# (user + system) per request in µs over the warm-up and the 6 s.
# Build SIDECAR_BIN as the Makefile does (make build: CGO_ENABLED=0,
# SIDECAR_TAGS), or the figures are not those of the shipped sidecar.
set -euo pipefail
SC=$(realpath "$1") DEV=$(realpath "$2")
TMP=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
cd "$TMP"
base=$((20000 + RANDOM % 20000))
APP=127.0.0.1:$base GAPP=127.0.0.1:$((base + 1))
INB=127.0.0.1:$((base + 2)) ADMB=127.0.0.1:$((base + 3))
INA=127.0.0.1:$((base + 4)) ADMA=127.0.0.1:$((base + 5))
BIND=127.0.0.1:$((base + 6)) GBIND=127.0.0.1:$((base + 7))
"$SC" ca init --dir ca --trust-domain fp.local >/dev/null
"$SC" ca issue --ca-dir ca --id spiffe://fp.local/a --name a --out a >/dev/null
"$SC" ca issue --ca-dir ca --id spiffe://fp.local/b --name b --out b >/dev/null
cat >services.json <<JSON
{"services": {"echo": {"endpoints": [{"addr": "$INB", "identity": "spiffe://fp.local/b"}]},
              "grpc": {"endpoints": [{"addr": "$INB", "identity": "spiffe://fp.local/b"}]}}}
JSON
"$DEV" echo --listen "$APP" >/dev/null &
PIDS+=($!)
"$DEV" echo --proto grpc --listen "$GAPP" >/dev/null &
PIDS+=($!)
"$SC" proxy --cert b/b.crt --key b/b.key --bundle b/bundle.crt --inbound "$INB" --admin "$ADMB" \
	--http-proxy "" --route echo="$APP" --route grpc="h2c://$GAPP" --log-level warn 2>b.log &
PB=$!
PIDS+=($PB)
"$SC" proxy --cert a/a.crt --key a/a.key --bundle a/bundle.crt --inbound "$INA" --admin "$ADMA" \
	--http-proxy "" --discovery-file services.json --bind "$BIND=echo" --bind "$GBIND=grpc" --log-level warn 2>a.log &
PA=$!
PIDS+=($PA)
for url in "http://$APP/" "http://$ADMA/ready" "http://$ADMB/ready"; do
	curl -sf -o /dev/null --retry 50 --retry-connrefused --retry-all-errors --retry-delay 1 "$url"
done
mem() { # phase side pid
	local rss hwm rollup
	rss=$(awk '/^VmRSS/{print $2}' "/proc/$3/status")
	hwm=$(awk '/^VmHWM/{print $2}' "/proc/$3/status")
	rollup=$(awk '/^Pss:/{p=$2} /^Anonymous:/{a=$2} END{print p, a}' "/proc/$3/smaps_rollup")
	echo "$1 $2 $rss $hwm $rollup"
}
sleep 2 # start-up settles: the first GC, lazily touched pages
mem idle client "$PA"
mem idle server "$PB"
load() { # proto target: 5 s, 16 concurrent; fails unless every request succeeded
	"$DEV" bench --proto "$1" --target "$2" --concurrency 16 --duration 5s --quiet --no-progress --json "$1.json"
	local n e
	n=$(sed -n 's/^  "requests": \([0-9]*\),$/\1/p' "$1.json")
	e=$(sed -n 's/^  "error_total": \([0-9]*\),$/\1/p' "$1.json")
	echo "# load $1: $n requests, $e errors"
	[[ $n -gt 0 && $e -eq 0 ]] || { echo "load $1 failed: $(cat a.log b.log)" >&2; exit 1; }
}
if [[ -z ${RATE:-} ]]; then
	load http1 "http://$BIND/"
	load grpc "$GBIND"
	mem load client "$PA"
	mem load server "$PB"
	exit 0
fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime
ta=$(ticks "$PA") tb=$(ticks "$PB")
"$DEV" bench --proto http1 --target "http://$BIND/" --rate "$RATE" --concurrency 32 --duration 6s --warmup 1s \
	--quiet --no-progress --json rate.json
n=$(sed -n 's/^  "requests": \([0-9]*\),$/\1/p' rate.json)
e=$(sed -n 's/^  "error_total": \([0-9]*\),$/\1/p' rate.json)
echo "# load http1 at $RATE req/s: $n requests, $e errors; load average $(cut -d' ' -f1-3 /proc/loadavg)"
[[ $n -gt 0 && $e -eq 0 ]] || { echo "load failed: $(cat a.log b.log)" >&2; exit 1; }
hz=$(getconf CLK_TCK)
echo "$(mem load client "$PA") $((($(ticks "$PA") - ta) * 1000000 / hz / n))"
echo "$(mem load server "$PB") $((($(ticks "$PB") - tb) * 1000000 / hz / n))"
