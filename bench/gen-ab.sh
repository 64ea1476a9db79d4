#!/usr/bin/env bash
# bench/gen-ab.sh — the load generators side by side on the direct path.
#
# Drives one echo app (quicmesh-dev echo --proto http1, its own process)
# with each generator in turn, closed loop, the same number of connections,
# interleaved: every round runs every generator once, in a rotated order.
# Each generator is a separate process; its CPU (user+sys, GNU time) and
# the app's CPU (/proc/PID/stat) are recorded per run, so CPU per request
# can be compared even when the machine is shared and absolute rates are
# noisy. Prints one line per run and the medians per generator.
#
#   bash bench/gen-ab.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] NAME=QUICMESH_DEV_BINARY...
#
# fortio (go install fortio.org/fortio@v1.68.2) and wrk (Debian) take part
# when found; each NAME=BINARY is a quicmesh-dev build (e.g. before/after).
set -euo pipefail

ROUNDS=5 DUR=8 CONNS=32
while getopts r:d:c: o; do
	case $o in
	r) ROUNDS=$OPTARG ;;
	d) DUR=$OPTARG ;;
	c) CONNS=$OPTARG ;;
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
[[ -n $WRK ]] && TOOLS+=(wrk)

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
echo "# closed loop, $CONNS connections, ${DUR}s per run, $ROUNDS rounds; target $URL"
printf '%-8s %5s %10s %10s %14s %14s\n' tool round req/s requests "gen µs/req" "app µs/req"
RES=$WORK/results
for ((round = 1; round <= ROUNDS; round++)); do
	n=${#TOOLS[@]}
	for ((i = 0; i < n; i++)); do
		tool=${TOOLS[$(((i + round - 1) % n))]}
		a0=$(app_ticks)
		out=$WORK/out
		case $tool in
		fortio)
			/usr/bin/time -f 'CPU %U %S' -o "$WORK/time" "$FORTIO" load -qps 0 -c "$CONNS" -t "${DUR}s" -r 0.00001 -loglevel Error "$URL" >"$out" 2>&1
			reqs=$(sed -n 's/^All done \([0-9]*\) calls.*/\1/p' "$out")
			rps=$(sed -n 's/^All done .* \([0-9.]*\) qps$/\1/p' "$out")
			;;
		wrk)
			/usr/bin/time -f 'CPU %U %S' -o "$WORK/time" "$WRK" -t1 -c"$CONNS" -d"${DUR}s" "$URL" >"$out" 2>&1
			reqs=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$out")
			rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' "$out")
			;;
		*)
			/usr/bin/time -f 'CPU %U %S' -o "$WORK/time" "${BIN[$tool]}" bench --proto http1 --target "$URL" \
				--concurrency "$CONNS" --duration "${DUR}s" --no-progress --quiet --json "$WORK/r.json" >"$out" 2>&1
			reqs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$WORK/r.json")
			rps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rps"])' "$WORK/r.json")
			;;
		esac
		a1=$(app_ticks)
		read -r _ u s <"$WORK/time"
		python3 - "$tool" "$round" "$rps" "$reqs" "$u" "$s" "$a0" "$a1" "$TCK" >>"$RES" <<-'EOF'
			import sys
			tool, rnd, rps, reqs, u, s, a0, a1, tck = sys.argv[1:]
			reqs = int(reqs)
			gen = (float(u) + float(s)) * 1e6 / reqs
			app = (int(a1) - int(a0)) / int(tck) * 1e6 / reqs
			print(f"{tool} {rnd} {float(rps):.0f} {reqs} {gen:.1f} {app:.1f}")
		EOF
		tail -n1 "$RES" | awk '{printf "%-8s %5s %10s %10s %14s %14s\n", $1, $2, $3, $4, $5, $6}'
	done
done
echo "# medians"
python3 - "$RES" "${TOOLS[@]}" <<-'EOF'
	import statistics, sys
	rows = [l.split() for l in open(sys.argv[1])]
	for t in sys.argv[2:]:
	    r = [x for x in rows if x[0] == t]
	    med = lambda i: statistics.median(float(x[i]) for x in r)
	    print(f"{t:8s} req/s {med(2):8.0f}  gen CPU µs/req {med(4):6.1f}  app CPU µs/req {med(5):6.1f}  (n={len(r)}, req/s range {min(float(x[2]) for x in r):.0f}-{max(float(x[2]) for x in r):.0f})")
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
EOF
