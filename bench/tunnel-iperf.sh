#!/usr/bin/env bash
# bench/tunnel-iperf.sh — one TCP tunnel's bulk throughput between separate
# processes: iperf3 through a pair of `quicmesh proxy` sidecars (TCP → QUIC
# stream → TCP), side by side with iperf3 direct and through a stunnel pair
# (kernel TCP + TLS) in the same run, rounds interleaved.
#
#   bash bench/tunnel-iperf.sh                      # 3 rounds × {direct, stunnel, quicmesh} × {up, down, bidir}, 5 s each
#   ROUNDS=5 SECS=8 bash bench/tunnel-iperf.sh
#   BINS="old=/tmp/q-old new=/tmp/q-new" TARGETS="quicmesh" bash bench/tunnel-iperf.sh   # A/B of two sidecar builds
#   PROFILE=1 bash bench/tunnel-iperf.sh            # also CPU profiles of both sidecars (one 'up' run) into $OUT
#   STRACE=1 ROUNDS=0 bash bench/tunnel-iperf.sh    # syscalls per MB of both sidecars (strace -c -f, one 'up' run)
#   VETH_MTU=9000 bash bench/tunnel-iperf.sh        # the two sides in two network namespaces joined by a veth pair
#
# "up" is client → server (iperf3 -c), "down" is -R, "bidir" is --bidir
# (both directions at once on one tunnel each: the figure "each way").
# Needs iperf3 (and stunnel4 + openssl for the stunnel row); on Debian
# `apt-get install -y iperf3 stunnel4` (done here if missing and we are
# root). Everything listens on 127.0.0.1. Prints one line per run and a
# median table at the end; raw iperf3 JSON stays in $OUT.
#
# With VETH_MTU set (root only), the client side (iperf3 -c and the
# outbound sidecar or stunnel) runs in one network namespace and the
# server side (iperf3 -s and the inbound one) in another, created here and
# deleted on exit, joined by a veth pair with that MTU and addresses in
# 10.217.0.0/30: the hop between the proxies then crosses a link whose MTU
# is not loopback's 65,536, and "direct" is iperf3 across the veth.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
MODES=${MODES:-up down bidir}
TARGETS=${TARGETS:-direct stunnel quicmesh}
OUT=${OUT:-bench/out/tunnel-iperf}
VETH_MTU=${VETH_MTU:-}
PROFILE=${PROFILE:-0}
GO=${GO:-go}

need() {
	command -v "$1" >/dev/null 2>&1 && return 0
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		apt-get install -y "$2" >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y "$2" >/dev/null 2>&1; }
	fi
	command -v "$1" >/dev/null 2>&1
}
need iperf3 iperf3 || { echo "iperf3 is required" >&2; exit 1; }
if [[ " $TARGETS " == *" stunnel "* ]] && ! need stunnel4 stunnel4; then
	echo "stunnel4 not available: skipping the stunnel row" >&2
	TARGETS=${TARGETS//stunnel/}
fi

mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
NSA=() NSB=() # command prefixes: client side, server side
SRV=127.0.0.1 PEER=127.0.0.1 CLI=127.0.0.1 # iperf3 server's address; the inbound proxy's; the outbound one's
NSNAMES=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for n in "${NSNAMES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
if [[ -n $VETH_MTU ]]; then
	[[ $(id -u) == 0 ]] || { echo "VETH_MTU needs root (network namespaces)" >&2; exit 1; }
	nsa=qm17a-$$ nsb=qm17b-$$
	ip netns add "$nsa" && NSNAMES+=("$nsa")
	ip netns add "$nsb" && NSNAMES+=("$nsb")
	ip -n "$nsa" link add qm17a type veth peer name qm17b netns "$nsb"
	ip -n "$nsa" addr add 10.217.0.1/30 dev qm17a
	ip -n "$nsb" addr add 10.217.0.2/30 dev qm17b
	ip -n "$nsa" link set qm17a mtu "$VETH_MTU" up
	ip -n "$nsb" link set qm17b mtu "$VETH_MTU" up
	ip -n "$nsa" link set lo up
	ip -n "$nsb" link set lo up
	NSA=(ip netns exec "$nsa") NSB=(ip netns exec "$nsb")
	SRV=10.217.0.2 PEER=10.217.0.2 CLI=10.217.0.1
fi

if [[ -z ${BINS:-} ]]; then
	CGO_ENABLED=0 $GO build -tags grpcnotrace,nethttpomithttp2 -o "$WORK/quicmesh" ./cmd/quicmesh
	BINS="quicmesh=$WORK/quicmesh"
fi

# A port on 127.0.0.1 free for both TCP and UDP (a sidecar's --inbound is
# UDP, the others TCP). The kernel picks; another user of the machine may
# still take it before we bind, which the liveness check below reports.
port() {
	python3 -c '
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(p); break
'
}

# Certificates: quicmesh's own CA for the sidecars, openssl for stunnel.
Q=$(echo "$BINS" | awk '{print $1}' | cut -d= -f2)
"$Q" ca init --dir "$WORK/ca" >/dev/null
"$Q" ca issue --ca-dir "$WORK/ca" --id spiffe://cluster.local/ns/bench/sa/a --name a --out "$WORK" >/dev/null
"$Q" ca issue --ca-dir "$WORK/ca" --id spiffe://cluster.local/ns/bench/sa/b --name b --out "$WORK" >/dev/null

APP=$(port)
"${NSB[@]}" iperf3 -s -B "$SRV" -p "$APP" >/dev/null 2>&1 &
PIDS+=($!)

declare -A FRONT SIDEPIDS HOST # HOST: where iperf3 -c connects (127.0.0.1 but for direct across a veth)
start_quicmesh() { # name bin
	local name=$1 bin=$2 pa pb fr
	pa=$(port) pb=$(port) fr=$(port)
	local admA=127.0.0.1:$(port) admB=127.0.0.1:$(port)
	cat >"$WORK/disc-$name.json" <<EOF
{"services": {"iperf": {"endpoints": [{"addr": "$PEER:$pb", "identity": "spiffe://cluster.local/ns/bench/sa/b"}]}}}
EOF
	"${NSB[@]}" "$bin" proxy --cert "$WORK/b.crt" --key "$WORK/b.key" --bundle "$WORK/bundle.crt" --inbound "$PEER:$pb" \
		--admin "$admB" --http-proxy "" --grace 1s --log-level warn --transport quic \
		--route "iperf=tcp://$SRV:$APP" 2>"$OUT/$name-b.log" &
	PIDS+=($!)
	SIDEPIDS[$name-b]=$!
	ADMIN[$name-b]=$admB
	"${NSA[@]}" "$bin" proxy --cert "$WORK/a.crt" --key "$WORK/a.key" --bundle "$WORK/bundle.crt" --inbound "$CLI:$pa" \
		--admin "$admA" --http-proxy "" --grace 1s --log-level warn --transport quic \
		--discovery-file "$WORK/disc-$name.json" --bind "127.0.0.1:$fr=iperf,opaque" 2>"$OUT/$name-a.log" &
	PIDS+=($!)
	SIDEPIDS[$name-a]=$!
	ADMIN[$name-a]=$admA
	FRONT[$name]=$fr
}
declare -A ADMIN

start_stunnel() {
	local d=$WORK/st pb fr
	mkdir -p "$d"
	pb=$(port) fr=$(port)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=peer.test \
		-addext subjectAltName=DNS:peer.test -keyout "$d/srv.key" -out "$d/srv.crt" >/dev/null 2>&1
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=client \
		-keyout "$d/cli.key" -out "$d/cli.crt" >/dev/null 2>&1
	cat "$d/srv.crt" "$d/cli.crt" >"$d/ca.crt"
	local head=$'foreground = yes\npid =\ndebug = warning\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\n[pair]\n'
	printf '%saccept = %s:%s\nconnect = %s:%s\ncert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\nrequireCert = yes\n' \
		"$head" "$PEER" "$pb" "$SRV" "$APP" "$d/srv.crt" "$d/srv.key" "$d/ca.crt" >"$d/b.conf"
	printf '%sclient = yes\naccept = 127.0.0.1:%s\nconnect = %s:%s\ncert = %s\nkey = %s\nCAfile = %s\nverifyChain = yes\ncheckHost = peer.test\nsni = peer.test\n' \
		"$head" "$fr" "$PEER" "$pb" "$d/cli.crt" "$d/cli.key" "$d/ca.crt" >"$d/a.conf"
	"${NSB[@]}" stunnel4 "$d/b.conf" 2>"$OUT/stunnel-b.log" &
	PIDS+=($!)
	SIDEPIDS[stunnel-b]=$!
	"${NSA[@]}" stunnel4 "$d/a.conf" 2>"$OUT/stunnel-a.log" &
	PIDS+=($!)
	SIDEPIDS[stunnel-a]=$!
	FRONT[stunnel]=$fr
}

ALL=()
for t in $TARGETS; do
	case $t in
	direct) FRONT[direct]=$APP HOST[direct]=$SRV ALL+=(direct) ;;
	stunnel) start_stunnel && ALL+=(stunnel) ;;
	quicmesh) for nb in $BINS; do start_quicmesh "${nb%%=*}" "${nb#*=}" && ALL+=("${nb%%=*}"); done ;;
	*) echo "unknown target $t" >&2; exit 2 ;;
	esac
done

# Wait until every front accepts a connection that reaches iperf3.
for n in "${ALL[@]}"; do
	ok=0
	for _ in $(seq 100); do
		timeout 5 "${NSA[@]}" iperf3 -c "${HOST[$n]:-127.0.0.1}" -p "${FRONT[$n]}" -n 64K >/dev/null 2>&1 && ok=1 && break
		sleep 0.1
	done
	for side in a b; do
		p=${SIDEPIDS[$n-$side]:-}
		if [[ -n $p ]] && ! kill -0 "$p" 2>/dev/null; then
			echo "$n: proxy $side exited:" >&2
			cat "$OUT/$n-$side.log" >&2
			exit 1
		fi
	done
	[[ $ok == 1 ]] || { echo "$n: no iperf3 run got through within 100 attempts" >&2; exit 1; }
done

# gbps FILE MODE: received Gbit/s ("up"/"down") or "sent-dir/recv-dir"
# for bidir, from iperf3's JSON end summary.
gbps() {
	python3 - "$1" "$2" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
e = j["end"]
if sys.argv[2] == "bidir":
    print("%.2f %.2f" % (e["sum_received"]["bits_per_second"] / 1e9, e["sum_received_bidir_reverse"]["bits_per_second"] / 1e9))
else:
    print("%.2f" % (e["sum_received"]["bits_per_second"] / 1e9))
EOF
}

# cpu NAME: user+system CPU seconds used so far by both proxies of NAME
# (0 for direct), from /proc/PID/stat.
cpu() {
	local t=0 p
	for p in ${SIDEPIDS[$1-a]:-} ${SIDEPIDS[$1-b]:-}; do
		t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); print t + ($12 + $13) / hz}' "/proc/$p/stat")
	done
	echo "$t"
}

# cpugb FILE C0 C1: both proxies' CPU seconds per GB carried (all
# directions; includes the -O 1 warm-up second, whose bytes iperf3 omits,
# so it is a slight overestimate, the same for every target).
cpugb() {
	python3 - "$@" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))["end"]
b = e["sum_received"]["bytes"] + e.get("sum_received_bidir_reverse", {}).get("bytes", 0)
print("%.2f" % ((float(sys.argv[3]) - float(sys.argv[2])) / (b / 1e9)) if b else "nan")
EOF
}

RES=$OUT/results.txt
: >"$RES"
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, rounds=$ROUNDS secs=$SECS${VETH_MTU:+, veth MTU $VETH_MTU}" | tee -a "$RES"
for r in $(seq "$ROUNDS"); do
	for m in $MODES; do
		for n in "${ALL[@]}"; do
			flag=""
			[[ $m == down ]] && flag="-R"
			[[ $m == bidir ]] && flag="--bidir"
			f=$OUT/$n-$m-r$r.json
			c0=$(cpu "$n")
			timeout $((SECS + 30)) "${NSA[@]}" iperf3 -c "${HOST[$n]:-127.0.0.1}" -p "${FRONT[$n]}" -t "$SECS" -O 1 $flag -J >"$f" || { echo "$n $m r$r: iperf3 failed" >&2; continue; }
			c1=$(cpu "$n")
			load=$(cut -d' ' -f1 /proc/loadavg)
			echo "$r $m $n $(gbps "$f" "$m") cpu_s_per_GB=$(cpugb "$f" "$c0" "$c1") load=$load" | tee -a "$RES"
		done
	done
done

if [[ $PROFILE == 1 ]]; then
	for nb in $BINS; do
		n=${nb%%=*}
		"${NSA[@]}" iperf3 -c 127.0.0.1 -p "${FRONT[$n]}" -t $((SECS + 2)) >/dev/null &
		ip=$!
		sleep 1
		"${NSA[@]}" curl -s "http://${ADMIN[$n-a]}/debug/pprof/profile?seconds=$SECS" >"$OUT/$n-a.pprof" &
		pa=$!
		"${NSB[@]}" curl -s "http://${ADMIN[$n-b]}/debug/pprof/profile?seconds=$SECS" >"$OUT/$n-b.pprof" &
		pb=$!
		# Only these three: a bare wait would also wait for the
		# sidecars and the iperf3 server, which run until cleanup.
		wait $ip $pa $pb
		echo "profiles: $OUT/$n-a.pprof (outbound, sends) $OUT/$n-b.pprof (inbound, receives)"
	done
fi

# STRACE=1: syscall counts of both sidecars (strace -c -f) over one
# 'up' run of SECS seconds, per MB carried (strace slows the sidecars:
# compare counts per MB, not the throughput of that run).
if [[ ${STRACE:-0} == 1 ]]; then
	command -v strace >/dev/null || { echo "STRACE=1 needs strace" >&2; exit 1; }
	for nb in $BINS; do
		n=${nb%%=*}
		st=()
		for side in a b; do
			strace -c -f -o "$OUT/$n-$side.strace" -p "${SIDEPIDS[$n-$side]}" 2>/dev/null &
			st+=($!)
		done
		sleep 1 # strace attaches to every thread
		"${NSA[@]}" iperf3 -c "${HOST[$n]:-127.0.0.1}" -p "${FRONT[$n]}" -t "$SECS" -J >"$OUT/$n-strace.json" || true
		kill -INT "${st[@]}"
		wait "${st[@]}" || true
		python3 - "$OUT/$n-strace.json" "$OUT/$n-a.strace" "$OUT/$n-b.strace" "$n" <<'PY'
import json, sys
mb = json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"] / 1e6
print("# %s: syscalls per MB over %.0f MB, 'up' (under strace)" % (sys.argv[4], mb))
for side, f in (("outbound", sys.argv[2]), ("inbound", sys.argv[3])):
    rows = []
    for line in open(f):
        p = line.split()
        if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
            rows.append((int(p[3]), p[-1]))
    rows.sort(reverse=True)
    print("  %-8s %s" % (side, ", ".join("%s %.1f" % (name, c / mb) for c, name in rows[:8])))
PY
	done
fi

echo "# medians (Gbit/s; bidir: client→server / server→client; last: both proxies' CPU s per GB)"
python3 - "$RES" <<'EOF'
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("#"):
        continue
    f = line.split()
    vals = [float(x.split("=")[-1]) for x in f[3:] if not x.startswith("load=")]
    runs[(f[1], f[2])].append(vals)
# A bidir run that moved 0 bytes both ways is a stall (seen with iperf3
# 3.12 through proxies that may connect its two data connections to the
# server in the other order; see docs/benchmarks.md): counted, not in the medians.
for (m, n), v in sorted(runs.items()):
    ok = [r for r in v if all(x == x for x in r) and any(x > 0 for x in r[:-1])]
    med = [statistics.median(c) for c in zip(*ok)] if ok else []
    print("%-6s %-10s %s  (n=%d, stalled %d)" % (m, n, " / ".join("%.2f" % x for x in med), len(ok), len(v) - len(ok)))
EOF
