#!/usr/bin/env bash
# bench/run.sh — quicmesh's side-by-side benchmark scenarios ("make bench").
#
# On a fresh Debian machine it installs what the scenarios need (haproxy,
# stunnel4, iproute2, iptables, openssl with apt-get; Caddy 2.11 and fortio
# with go install, Caddy cached in $(go env GOPATH)/bin), builds
# bin/quicmesh, bin/quicmesh-dev and the scenario runner (bench/scenario/cmd/scenarios), runs
# every scenario within a time budget, rewrites the generated section of
# docs/benchmarks.md and writes bench/out/report.html.
#
#   bash bench/run.sh            # full run, ~15 min on 2 cores (+3 min the first time: Caddy build)
#   bash bench/run.sh --quick    # smoke: direct and quicmesh only, 1 s per load; docs untouched
#   bash bench/run.sh --loads http1-max,tcp-bulk --rounds 1   # a subset; docs untouched
#   bash bench/run.sh --targets direct,quicmesh,quicmesh-tcp --conds "0% loss,2% loss"   # likewise
#
# Every server listens on 127.0.0.1 or inside the network namespaces the
# runner creates (bench/netlab) and deletes; the EXIT trap stops the runner
# and removes anything it left behind.
set -euo pipefail

T0=$(date +%s)
cd "$(dirname "$0")/.."
OUT=bench/out
GO=${GO:-go}
# Whole "make bench" must stay under 20 minutes: the runner gets what is
# left of TOTAL_BUDGET after installing and building.
TOTAL_BUDGET=${TOTAL_BUDGET:-1140}

QUICK=0
PARTIAL=0
for a in "$@"; do
	case $a in
	--quick) QUICK=1 ;;
	--loads | --loads=* | --rounds | --rounds=* | --targets | --targets=* | --conds | --conds=*) PARTIAL=1 ;;
	esac
done

log() { printf '[run.sh %4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

RUNNER_PID=""
CADDY_PID=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [[ -n $CADDY_PID ]] && kill -0 "$CADDY_PID" 2>/dev/null; then
		kill -TERM "$CADDY_PID" 2>/dev/null || true
	fi
	if [[ -n $RUNNER_PID ]] && kill -0 "$RUNNER_PID" 2>/dev/null; then
		# The runner stops its processes and deletes its namespaces on SIGTERM.
		kill -TERM "$RUNNER_PID" 2>/dev/null || true
		for _ in $(seq 75); do
			kill -0 "$RUNNER_PID" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$RUNNER_PID" 2>/dev/null || true
	fi
	# Namespaces of the runner's lab are named <lab>.nl<runner pid>.<name>;
	# if the runner died without deleting them, do it here (the processes
	# still inside were started by the runner).
	if [[ -n $RUNNER_PID ]] && command -v ip >/dev/null 2>&1; then
		local ns pid
		for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -F ".nl${RUNNER_PID}." || true); do
			for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
				kill -KILL "$pid" 2>/dev/null || true
			done
			ip netns delete "$ns" 2>/dev/null || true
		done
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ver_ge() { [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

GOBIN_DIR=$($GO env GOBIN)
[[ -n $GOBIN_DIR ]] || GOBIN_DIR=$($GO env GOPATH)/bin
CADDY=$GOBIN_DIR/caddy
FORTIO=$GOBIN_DIR/fortio

caddy_version() {
	[[ -x $CADDY ]] || return 0
	$GO version -m "$CADDY" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/caddyserver/caddy/v2" { print $3 }'
}

mkdir -p "$OUT" bin
notes=()
if [[ $QUICK == 0 ]]; then
	# Caddy takes about three minutes to build: start it first, in the
	# background, unless a cached build >= 2.11 is there.
	cv=$(caddy_version)
	if [[ -n $cv ]] && ver_ge "${cv#v}" 2.11; then
		log "caddy $cv cached at $CADDY"
	else
		log "building Caddy 2.11 (go install github.com/caddyserver/caddy/v2/cmd/caddy@latest, about 3 min)"
		(cd / && GOFLAGS=-buildvcs=false $GO install github.com/caddyserver/caddy/v2/cmd/caddy@latest) >"$OUT/caddy-build.log" 2>&1 &
		CADDY_PID=$!
	fi

	need=()
	command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
	command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || need+=(stunnel4)
	command -v ip >/dev/null 2>&1 || need+=(iproute2)
	command -v iptables >/dev/null 2>&1 || need+=(iptables)
	command -v openssl >/dev/null 2>&1 || need+=(openssl)
	if ((${#need[@]})); then
		SUDO=""
		[[ $(id -u) -eq 0 ]] || SUDO=sudo
		log "apt-get install ${need[*]}"
		if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1; then
			log "WARNING: apt-get install ${need[*]} failed; the runner skips what is missing"
			notes+=(--note "apt-get install ${need[*]} failed on this machine; targets needing them were skipped.")
		fi
	fi

	if [[ -x $FORTIO ]] && [[ $("$FORTIO" version 2>/dev/null) == 1.68.2* ]]; then
		log "fortio 1.68.2 cached at $FORTIO"
	else
		log "go install fortio.org/fortio@v1.68.2"
		if ! (cd / && GOFLAGS=-buildvcs=false $GO install fortio.org/fortio@v1.68.2) >"$OUT/fortio-build.log" 2>&1; then
			log "WARNING: fortio install failed (see $OUT/fortio-build.log); the cross-check is skipped"
		fi
	fi
fi

log "building bin/quicmesh, bin/quicmesh-dev and the scenario runner"
# Without cgo and with the tags the Makefile builds it with (SIDECAR_ENV,
# SIDECAR_TAGS): the RSS figures are those of the sidecar binary users get.
CGO_ENABLED=0 $GO build -tags grpcnotrace,nethttpomithttp2 -o bin/quicmesh ./cmd/quicmesh
$GO build -o bin/quicmesh-dev ./cmd/quicmesh-dev
$GO build -o "$OUT/scenarios" ./bench/scenario/cmd/scenarios

if [[ -n $CADDY_PID ]]; then
	log "waiting for the Caddy build"
	if ! wait "$CADDY_PID"; then
		log "WARNING: Caddy build failed (see $OUT/caddy-build.log); Caddy targets are skipped"
	fi
	CADDY_PID=""
fi
cv=$(caddy_version)
caddy_arg=(--caddy "")
if [[ -n $cv ]] && ver_ge "${cv#v}" 2.11; then
	caddy_arg=(--caddy "$CADDY")
elif [[ $QUICK == 0 ]]; then
	notes+=(--note "Caddy >= 2.11 could not be installed (found: ${cv:-none}); Caddy targets were skipped.")
fi
fortio_arg=(--fortio "")
[[ -x $FORTIO ]] && fortio_arg=(--fortio "$FORTIO")

# The gateway's capacity and footprint (issue 16): its own processes on
# loopback, about 4 minutes, before the scenarios, whose budget is what is
# left. Full runs only; its tables go to $OUT/gateway.md (copied by hand
# into docs/benchmarks.md, "Gateway (issue 16)").
if [[ $QUICK == 0 && $PARTIAL == 0 ]]; then
	log "gateway bench (bench/gateway): $OUT/gateway.md"
	$GO build -o "$OUT/gatewaybench" ./bench/gateway
	if ! "$OUT/gatewaybench" --bin bin/quicmesh --json "$OUT/gateway.json" --work "$OUT/gateway-work" >"$OUT/gateway.md" 2>"$OUT/gateway.log"; then
		log "WARNING: the gateway bench failed (see $OUT/gateway.log)"
		notes+=(--note "The gateway bench (bench/gateway) failed; see bench/out/gateway.log.")
	fi
fi

lossy=true
if [[ $(id -u) -ne 0 ]]; then
	lossy=false
	notes+=(--note "Not run as root: the lossy-link scenarios (network namespaces) were skipped.")
fi

elapsed=$(($(date +%s) - T0))
budget=$((TOTAL_BUDGET - elapsed - 30))
((budget > 60)) || budget=60

args=(--bin bin/quicmesh --dev-bin bin/quicmesh-dev --out "$OUT" --budget "${budget}s" --lossy="$lossy" "${caddy_arg[@]}" "${fortio_arg[@]}")
if [[ $QUICK == 1 ]]; then
	args+=(--command "bash bench/run.sh --quick")
elif [[ $PARTIAL == 1 ]]; then
	args+=(--command "bash bench/run.sh $*")
else
	# Only a full run rewrites the committed report.
	args+=(--command "make bench" --doc docs/benchmarks.md)
fi

log "running the scenarios (budget ${budget}s)"
"$OUT/scenarios" "${args[@]}" ${notes[@]+"${notes[@]}"} "$@" &
RUNNER_PID=$!
set +e
wait "$RUNNER_PID"
rc=$?
set -e
RUNNER_PID_DONE=$RUNNER_PID
RUNNER_PID=""
# The runner deletes its namespaces itself; make sure.
if command -v ip >/dev/null 2>&1; then
	for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -F ".nl${RUNNER_PID_DONE}." || true); do
		ip netns delete "$ns" 2>/dev/null || true
	done
fi
log "done in $(($(date +%s) - T0))s (exit $rc); report: $OUT/report.html"
exit "$rc"
