#!/usr/bin/env bash
# One benchmark scenario end to end (issue #7): start a fresh `confab` with a given
# configuration, run a named `loadgen` scenario against it, and write a report —
# `report.md` and `report.json` with the machine description, the exact commands, the
# server configuration and loadgen's figures — into bench/results/<scenario>-<time>/
# (loadgen's raw `--json` output, its HdrHistogram log and the server's log beside them).
#
#   bench/scenario.sh SCENARIO [loadgen scenario arguments...]
#
# SCENARIO is any loadgen scenario (`loadgen --help`): chat, groups, group, idle,
# reconnect-storm, mixed, presence. For `idle` the server's pid is passed for you
# (resident memory per connection). Several-node runs: bench/capacity.sh, bench/cluster.sh.
#
# Build first:  cargo build --release -p gateway -p loadgen
#
# Environment (defaults in brackets):
#   CONFIG       the server's TOML config file (confab --config)       [embedded defaults]
#   SERVER_ARGS  extra confab flags, e.g. "--shards 1"                  []
#   TRANSPORT    tcp | ws | ws-json                                     [tcp]
#   HTTP_PORT    the server's HTTP/WebSocket port                       [28180]
#   TCP_PORT     the server's raw-TCP port                              [27170]
#   BIN_DIR      where `confab` and `loadgen` are                       [target/release]
#   OUT_DIR      report directory               [bench/results/<scenario>-<UTC time>]
#
# Examples:
#   bench/scenario.sh chat --pairs 16 --rate 20000 --duration 10
#   SERVER_ARGS="--rate-limit-per-sec 1000000 --rate-limit-burst 1000000" \
#       bench/scenario.sh chat --pairs 16 --rate 0 --duration 8
#   bench/scenario.sh idle --conns 15000 --users 150 --duration 10 --ping-interval-ms 2000
set -euo pipefail

[[ $# -ge 1 ]] || { sed -n '2,28p' "$0"; exit 2; }
SCENARIO=$1
shift
CONFIG=${CONFIG:-}
SERVER_ARGS=${SERVER_ARGS:-}
TRANSPORT=${TRANSPORT:-tcp}
HTTP_PORT=${HTTP_PORT:-28180}
TCP_PORT=${TCP_PORT:-27170}
BIN_DIR=${BIN_DIR:-target/release}
OUT_DIR=${OUT_DIR:-bench/results/$SCENARIO-$(date -u +%Y%m%dT%H%M%SZ)}

CONFAB=$BIN_DIR/confab
LOADGEN=$BIN_DIR/loadgen
for bin in "$CONFAB" "$LOADGEN"; do
    [[ -x $bin ]] || { echo "scenario.sh: $bin not found (cargo build --release -p gateway -p loadgen)" >&2; exit 1; }
done
[[ -z $CONFIG || -f $CONFIG ]] || { echo "scenario.sh: CONFIG=$CONFIG not found" >&2; exit 1; }
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/confab-scenario.XXXXXX")
SERVER_PID=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The server, as a user would start it: embedded defaults or CONFIG, plus SERVER_ARGS.
server_cmd=("$CONFAB")
[[ -n $CONFIG ]] && server_cmd+=(--config "$CONFIG")
server_cmd+=(--data-dir "$WORK/data" --http-port "$HTTP_PORT" --tcp-port "$TCP_PORT")
# shellcheck disable=SC2206 # SERVER_ARGS is a list of flags, split on purpose
server_cmd+=($SERVER_ARGS)
"${server_cmd[@]}" >"$WORK/server.out" 2>"$OUT_DIR/server.log" &
SERVER_PID=$!
for _ in $(seq 300); do
    grep -q '^confab ready' "$WORK/server.out" && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "scenario.sh: the server exited:" >&2; cat "$OUT_DIR/server.log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^confab ready' "$WORK/server.out" || { echo "scenario.sh: the server did not get ready" >&2; exit 1; }

loadgen_cmd=("$LOADGEN" --json --transport "$TRANSPORT" --http "127.0.0.1:$HTTP_PORT" --tcp "127.0.0.1:$TCP_PORT")
if "$LOADGEN" --help | grep -q -- '--hdr-log'; then
    loadgen_cmd+=(--hdr-log "$OUT_DIR/latency.hlog")
fi
loadgen_cmd+=("$SCENARIO" "$@")
if [[ $SCENARIO == idle && " $* " != *" --server-pid "* ]]; then
    loadgen_cmd+=(--server-pid "$SERVER_PID")
fi
echo "server:  ${server_cmd[*]}"
echo "loadgen: ${loadgen_cmd[*]}"
status=0
"${loadgen_cmd[@]}" >"$OUT_DIR/loadgen.json" 2>"$OUT_DIR/loadgen.err" || status=$?
[[ $status -eq 0 ]] || { echo "scenario.sh: loadgen failed ($status):" >&2; tail -5 "$OUT_DIR/loadgen.err" >&2; }

report_args=(--out-dir "$OUT_DIR" --title "loadgen $SCENARIO against one confab node"
    --command "${server_cmd[*]} &"
    --command "${loadgen_cmd[*]}"
    --result "$SCENARIO=$OUT_DIR/loadgen.json")
[[ -n $CONFIG ]] && report_args+=(--config "$CONFIG")
[[ $status -eq 0 ]] || report_args+=(--note "loadgen exited with status $status (see loadgen.err)")
python3 "$(dirname "$0")/scripts/report.py" "${report_args[@]}"
exit "$status"
