#!/usr/bin/env bash
# bench/gen-ab.sh — the load generators side by side on the direct path.
#
# Drives one echo app (quicmesh-dev echo --proto http1, its own process)
# with each generator in turn, closed loop (or, with -q QPS, an open loop
# at QPS req/s with uniform pacing), the same number of connections,
# interleaved: every round runs every generator once, in a rotated order.
# Each generator is a separate process; its CPU (user+sys, GNU time) and
# the app's CPU (/proc/PID/stat) are recorded per run, so CPU per request
# can be compared even when the machine is shared and absolute rates are
# noisy. Prints one line per run and the medians per generator.
#
#   bash bench/gen-ab.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-q QPS] NAME=QUICMESH_DEV_BINARY...
#
# fortio (go install fortio.org/fortio@v1.68.2) and wrk (Debian) take part
# when found (wrk only in the closed loop: it cannot pace); each
# NAME=BINARY is a quicmesh-dev build (e.g. before/after). In the open
# loop each line also has the latency p50/p99 (quicmesh bench: from the
# intended send time; fortio: from its actual send) and quicmesh bench's
# own send lag p50/p99.
set -euo pipefail

ROUNDS=5 DUR=8 CONNS=32 QPS=0
while getopts r:d:c:q: o; do
	case $o in
	r) ROUNDS=$OPTARG ;;
	d) DUR=$OPTARG ;;
	c) CONNS=$OPTARG ;;
	q) QPS=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
(($# > 0)) || { echo "usage: $0 [-r ROUNDS] [-d SECONDS] [-c CONNS] NAME=QUICMESH_DEV_BINARY..." >&2; exit 2; }

GOBIN_DIR=$(go env GOBIN 2>/dev/null || true)
[[ -n $GOBIN_DIR ]] || GOBIN_DIR=$(go env GOPATH)/bin
FORTIO=${FORTIO:-$GOBIN_DIR/fortio}
command -v "$FORTIO" >/dev/null 2>&1 || FORTIO=""
WRK=$(command -v wrk || true)

declare -A BIN
TOOLS=()
for a in "$@"; do
	BIN[${a%%=*}]=${a#*=}
	TOOLS+=("${a%%=*}")
done
[[ -n $FORTIO ]] && TOOLS+=(fortio)
[[ -n $WRK && $QPS == 0 ]] && TOOLS+=(wrk)

WORK=$(mktemp -d)
APP_PID=""
cleanup() {
	[[ -n $APP_PID ]] && kill "$APP_PID" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# The app: the first quicmesh-dev given, on a free port.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${BIN[${TOOLS[0]}]}" echo --proto http1 --listen "127.0.0.1:$PORT" >"$WORK/app.log" 2>&1 &
APP_PID=$!
for _ in $(seq 50); do
	grep -q listening "$WORK/app.log" && break
	sleep 0.1
done
URL=http://127.0.0.1:$PORT/
TCK=$(getconf CLK_TCK)
app_ticks() { awk '{print $14 + $15}' "/proc/$APP_PID/stat"; }

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if ((QPS > 0)); then
	echo "# open loop at $QPS req/s (uniform), $CONNS connections, ${DUR}s per run, $ROUNDS rounds; target $URL"
else
	echo "# closed loop, $CONNS connections, ${DUR}s per run, $ROUNDS rounds; target $URL"
fi
printf '%-8s %5s %10s %10s %14s %14s %8s %8s %8s %8s %s\n' tool round req/s requests "gen µs/req" "app µs/req" p50 p99 lag50 lag99 load
RES=$WORK/results
for ((round = 1; round <= ROUNDS; round++)); do
	n=${#TOOLS[@]}
	for ((i = 0; i < n; i++)); do
		tool=${TOOLS[$(((i + round - 1) % n))]}
		a0=$(app_ticks)
		out=$WORK/out
		case $tool in
		fortio)
			uni=()
			((QPS > 0)) && uni=(-uniform)
			/usr/bin/time -f 'CPU %U %S' -o "$WORK/time" "$FORTIO" load -qps "$QPS" "${uni[@]}" -c "$CONNS" -t "${DUR}s" -r 0.00001 -loglevel Error -json "$WORK/f.json" "$URL" >"$out" 2>&1
			reqs=$(sed -n 's/^All done \([0-9]*\) calls.*/\1/p' "$out")
			rps=$(sed -n 's/^All done .* \([0-9.]*\) qps$/\1/p' "$out")
			lat=$(python3 -c 'import json,sys; p={x["Percentile"]: x["Value"] for x in json.load(open(sys.argv[1]))["DurationHistogram"]["Percentiles"]}; print(round(p[50]*1e6), round(p[99]*1e6), "-", "-")' "$WORK/f.json")
			;;
		wrk)
			/usr/bin/time -f 'CPU %U %S' -o "$WORK/time" "$WRK" -t1 -c"$CONNS" -d"${DUR}s" "$URL" >"$out" 2>&1
			reqs=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$out")
			rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' "$out")
			lat="- - - -"
			;;
		*)
			/usr/bin/time -f 'CPU %U %S' -o "$WORK/time" "${BIN[$tool]}" bench --proto http1 --target "$URL" --rate "$QPS" \
				--concurrency "$CONNS" --duration "${DUR}s" --no-progress --quiet --json "$WORK/r.json" >"$out" 2>&1
			reqs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$WORK/r.json")
			rps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rps"])' "$WORK/r.json")
			lat=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r["latency_us"]; g=r.get("send_lag_us") or {}; print(l["p50"], l["p99"], g.get("p50", "-"), g.get("p99", "-"))' "$WORK/r.json")
			;;
		esac
		a1=$(app_ticks)
		read -r _ u s <"$WORK/time"
		# shellcheck disable=SC2086 # lat is four words
		python3 - "$tool" "$round" "$rps" "$reqs" "$u" "$s" "$a0" "$a1" "$TCK" $lat "$(cut -d' ' -f1 /proc/loadavg)" >>"$RES" <<-'EOF'
			import sys
			tool, rnd, rps, reqs, u, s, a0, a1, tck, p50, p99, l50, l99, load = sys.argv[1:]
			reqs = int(reqs)
			gen = (float(u) + float(s)) * 1e6 / reqs
			app = (int(a1) - int(a0)) / int(tck) * 1e6 / reqs
			print(f"{tool} {rnd} {float(rps):.0f} {reqs} {gen:.1f} {app:.1f} {p50} {p99} {l50} {l99} {load}")
		EOF
		tail -n1 "$RES" | awk '{printf "%-8s %5s %10s %10s %14s %14s %8s %8s %8s %8s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11}'
	done
done
echo "# medians"
python3 - "$RES" "${TOOLS[@]}" <<-'EOF'
	import statistics, sys
	rows = [l.split() for l in open(sys.argv[1])]
	for t in sys.argv[2:]:
	    r = [x for x in rows if x[0] == t]
	    med = lambda i: statistics.median(float(x[i]) for x in r)
	    lat = ""
	    if r[0][6] != "-":
	        lat = f"  p50 {med(6):6.0f}  p99 {med(7):7.0f}"
	        if r[0][8] != "-":
	            lat += f"  send lag p50 {med(8):5.0f}  p99 {med(9):6.0f}"
	    print(f"{t:8s} req/s {med(2):8.0f}  gen CPU µs/req {med(4):6.1f}  app CPU µs/req {med(5):6.1f}{lat}  (n={len(r)}, req/s range {min(float(x[2]) for x in r):.0f}-{max(float(x[2]) for x in r):.0f}, load {min(float(x[10]) for x in r):.0f}-{max(float(x[10]) for x in r):.0f})")
	# Ratios within each round (the tools ran back to back), then their
	# medians: less exposed to load that changes between rounds.
	ref = "fortio" if any(x[0] == "fortio" for x in rows) else None
	if ref:
	    print(f"# medians of per-round ratios to {ref}")
	    byround = {}
	    for x in rows:
	        byround.setdefault(x[1], {})[x[0]] = x
	    for t in sys.argv[2:]:
	        if t == ref:
	            continue
	        rr = [(float(d[t][2]) / float(d[ref][2]), float(d[t][4]) / float(d[ref][4])) for d in byround.values() if t in d and ref in d]
	        if rr:
	            print(f"{t:8s} req/s / {ref} {statistics.median(a for a, _ in rr):5.2f}  gen CPU per req / {ref} {statistics.median(b for _, b in rr):5.2f}  (rounds {len(rr)}; req/s ratios {', '.join(f'{a:.2f}' for a, _ in rr)})")
	        lr = [(float(d[t][6]) / float(d[ref][6]), float(d[t][7]) / float(d[ref][7])) for d in byround.values() if t in d and ref in d and d[t][6] != "-" and d[ref][6] != "-"]
	        if lr:
	            print(f"{t:8s} p50 / {ref} {statistics.median(a for a, _ in lr):5.2f}  p99 / {ref} {statistics.median(b for _, b in lr):5.2f}  (p50 ratios {', '.join(f'{a:.2f}' for a, _ in lr)}; p99 ratios {', '.join(f'{b:.2f}' for _, b in lr)})")
EOF
