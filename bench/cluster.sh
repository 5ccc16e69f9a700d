#!/usr/bin/env bash
# Cluster benchmark (issue #9): 1:1 chat with both users on one node vs on two nodes.
#
# Starts a fresh redis-server on its own port, `confab cluster init --nodes 2
# --shards-per-node 1`, two nodes (127.0.0.1 and 127.0.0.2, one shard each), then runs
# `loadgen chat` once per case per run, the cases interleaved (run 1 of every case, then
# run 2...) so that drifting machine load hits them alike; by default every run gets a
# fresh cluster. Prints one line per run and the medians; kills the nodes and redis and
# removes its temporary directory on exit (trap).
#
# Build first:  cargo build --release -p gateway -p loadgen
#
# Environment (defaults in brackets):
#   BIN_DIR     directory holding `confab` and `loadgen`             [target/release]
#   RUNS        runs per case                                         [3]
#   CASES       space-separated `placement[/owner]` cases             [same-node cross-node]
#               placement: any | same-node | cross-node
#               owner:     any | sender | recipient | elsewhere       (default: $OWNER)
#   OWNER       owner for cases that name none                        [any]
#   PAIRS       sender/recipient pairs                                [16]
#   RATE        total messages/s, open loop; 0 = closed loop (max)    [0]
#   WINDOW      closed loop: sends outstanding per sender             [16]
#   DURATION    measured seconds per run (after a 1 s warm-up)        [8]
#   TRANSPORT   tcp | ws | ws-json                                    [tcp]
#   REDIS_PORT  port of the private redis-server                      [26400]
#   FRESH       1: a fresh cluster (redis, map, empty nodes) for every run; 0: one for all
#               (the nodes' logs and idempotency maps grow from run to run)   [1]
#   OUT_DIR     if set, every run's loadgen JSON and the nodes' logs are copied there
#
# Examples:
#   bench/cluster.sh                                   # maximum rate, 3 runs per case
#   RATE=10000 DURATION=10 bench/cluster.sh            # open-loop latency at 10,000/s
#   CASES="same-node/sender cross-node/sender cross-node/recipient" bench/cluster.sh
set -euo pipefail

BIN_DIR=${BIN_DIR:-target/release}
RUNS=${RUNS:-3}
CASES=${CASES:-"same-node cross-node"}
OWNER=${OWNER:-any}
PAIRS=${PAIRS:-16}
RATE=${RATE:-0}
WINDOW=${WINDOW:-16}
DURATION=${DURATION:-8}
TRANSPORT=${TRANSPORT:-tcp}
REDIS_PORT=${REDIS_PORT:-26400}
OUT_DIR=${OUT_DIR:-}
FRESH=${FRESH:-1}

CONFAB=$BIN_DIR/confab
LOADGEN=$BIN_DIR/loadgen
for bin in "$CONFAB" "$LOADGEN"; do
    [[ -x $bin ]] || { echo "cluster.sh: $bin not found (cargo build --release -p gateway -p loadgen, or set BIN_DIR)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "cluster.sh: redis-server not found" >&2; exit 1; }
command -v jq >/dev/null || { echo "cluster.sh: jq not found" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/confab-cluster.XXXXXX")
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
NODE_PIDS=()
LOADGEN_PID=
HTTP=()
TCP=()

# Stop the nodes and redis of the running cluster and delete its data.
stop_cluster() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${NODE_PIDS[@]}"; do
        # A node that does not stop within 10 s is killed.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
    if [[ -f $WORK/redis.pid ]]; then
        kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
        # redis removes its pid file when it has stopped.
        for _ in $(seq 50); do [[ -f $WORK/redis.pid ]] || break; sleep 0.1; done
    fi
    rm -rf "$WORK/cluster"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n $LOADGEN_PID ]]; then
        kill "$LOADGEN_PID" 2>/dev/null || true
        wait "$LOADGEN_PID" 2>/dev/null || true
    fi
    stop_cluster
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Both nodes must see each other up before discover answers for every user (a node
# answers 503 for users of a node it does not see up yet).
cluster_ready() {
    local n name
    for n in 0 1; do
        for name in a b c d e f g h i j k l; do
            curl -sf "http://${HTTP[n]}/v1/discover?username=probe$name" >/dev/null || return 1
        done
    done
}

# A fresh redis, partition map and two nodes with empty data directories.
start_cluster() {
    local n ready dir=$WORK/cluster
    mkdir -p "$dir"
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        echo "cluster.sh: something already answers on port $REDIS_PORT (set REDIS_PORT)" >&2
        exit 1
    fi
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$dir/redis.log" --dir "$dir"
    for _ in $(seq 50); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$CONFAB" --redis-url "$REDIS_URL" cluster init --nodes 2 --shards-per-node 1 >/dev/null
    for n in 0 1; do
        mkdir -p "$dir/n$n"
        "$CONFAB" --redis-url "$REDIS_URL" --node-id "$n" --shards 1 --bind "127.0.0.$((n + 1))" \
            --http-port 0 --tcp-port 0 --link-port 0 --data-dir "$dir/n$n" \
            --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 \
            --argon2-memory-kib 1024 --argon2-iterations 1 \
            >"$dir/n$n.out" 2>"$dir/n$n.err" &
        NODE_PIDS+=($!)
    done
    for n in 0 1; do
        for _ in $(seq 300); do
            grep -q '^confab ready' "$dir/n$n.out" && break
            kill -0 "${NODE_PIDS[$n]}" 2>/dev/null || { echo "node $n exited:" >&2; cat "$dir/n$n.err" >&2; exit 1; }
            sleep 0.1
        done
        ready=$(grep '^confab ready' "$dir/n$n.out") || { echo "node $n not ready after 30 s" >&2; exit 1; }
        HTTP[n]=$(sed -E 's/.* http=([^ ]+).*/\1/' <<<"$ready")
        TCP[n]=$(sed -E 's/.* tcp=([^ ]+).*/\1/' <<<"$ready")
    done
    for _ in $(seq 300); do
        cluster_ready && break
        sleep 0.1
    done
    cluster_ready || { echo "cluster.sh: the nodes did not see each other up within 30 s" >&2; exit 1; }
}

# Node-link messages sent (requests and pushes) by both nodes, from /metrics.
link_sent() {
    local total=0 n v
    for n in 0 1; do
        v=$(curl -s "http://${HTTP[n]}/metrics" | awk '/^confab_link_sent_total/ { s += $NF } END { print s + 0 }')
        total=$((total + v))
    done
    echo "$total"
}

# CPU seconds (user + system) both nodes have used so far, from /proc/<pid>/stat.
node_cpu() {
    local pid ticks=0 t
    for pid in "${NODE_PIDS[@]}"; do
        # Fields 14 and 15 (utime, stime); the command name (field 2) holds no spaces.
        t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
        ticks=$((ticks + t))
    done
    echo "$ticks $(getconf CLK_TCK)" | awk '{ printf "%.3f", $1 / $2 }'
}

if [[ $RATE == 0 ]]; then
    mode="closed loop, window $WINDOW"
    load=(--rate 0 --window "$WINDOW")
else
    mode="open loop, $RATE msg/s"
    load=(--rate "$RATE")
fi
fresh="one cluster for all runs"
if [[ $FRESH == 1 ]]; then fresh="a fresh cluster (redis, map, empty nodes) per run"; fi
echo "chat: $PAIRS pairs, $mode, ${DURATION} s, $TRANSPORT; loadgen --http on node 0; $RUNS runs per case, $fresh"
echo "$(nproc) CPUs; $(uptime)"
echo "latencies in ms from the scheduled send; link/m = node-link requests and pushes (replies not"
echo "counted, delivered-receipt traffic included) per message sent, warm-up included; cpu/m = µs of"
echo "CPU (user + system) of both nodes together per message sent, setup and warm-up included"
printf '%-26s %3s %9s %9s %9s %9s %9s %6s %6s %5s  %s\n' case run "msg/s" "dlv p50" "dlv p99" "ack p50" "ack p99" "link/m" "cpu/m" errs "load1  routes (pairs)"
if [[ $FRESH != 1 ]]; then
    start_cluster
    "$CONFAB" --redis-url "$REDIS_URL" cluster show
fi
for run in $(seq "$RUNS"); do
    for case in $CASES; do
        if [[ $FRESH == 1 ]]; then
            stop_cluster
            start_cluster
        fi
        placement=${case%%/*}
        owner=$OWNER
        if [[ $case == */* ]]; then owner=${case#*/}; fi
        out="$WORK/${placement}_${owner}_$run.json"
        before=$(link_sent)
        cpu_before=$(node_cpu)
        "$LOADGEN" --http "${HTTP[0]}" --tcp "${TCP[0]}" --transport "$TRANSPORT" --json \
            chat --pairs "$PAIRS" "${load[@]}" --duration "$DURATION" \
            --placement "$placement" --owner "$owner" >"$out" &
        # In the background so that a signal interrupts `wait` (and the trap stops it).
        LOADGEN_PID=$!
        wait "$LOADGEN_PID"
        LOADGEN_PID=
        after=$(link_sent)
        cpu_after=$(node_cpu)
        # delivered/s, send->deliver p50 p99, send->ack p50 p99 (ms), all sends, errors, routes
        read -r rate dp50 dp99 ap50 ap99 sends errors routes < <(jq -r '
            [(.delivered_per_sec | floor), (.deliver_us.p50, .deliver_us.p99, .ack_us.p50, .ack_us.p99 | . / 1000),
             .sent_with_warmup, ([.errors[]] | add // 0),
             ([.routes | to_entries[] | "\(.key)=\(.value.pairs)"] | join(","))] | map(tostring) | join(" ")' "$out")
        per_msg=$(awk -v l=$((after - before)) -v d="$sends" 'BEGIN { if (d > 0) printf "%.2f", l / d; else print "-" }')
        cpu_msg=$(awk -v a="$cpu_after" -v b="$cpu_before" -v d="$sends" 'BEGIN { if (d > 0) printf "%.1f", (a - b) / d * 1e6; else print "-" }')
        echo "$cpu_msg" >>"$WORK/${placement}_${owner}.cpu"
        printf '%-26s %3s %9s %9.2f %9.2f %9.2f %9.2f %6s %6s %5s  %s  %s\n' "$placement/$owner" "$run" "$rate" \
            "$dp50" "$dp99" "$ap50" "$ap99" "$per_msg" "$cpu_msg" "$errors" "$(cut -d' ' -f1 /proc/loadavg)" "$routes"
        if [[ -n $OUT_DIR ]]; then
            mkdir -p "$OUT_DIR"
            cp "$out" "$OUT_DIR/"
            for n in 0 1; do
                cp "$WORK/cluster/n$n.err" "$OUT_DIR/${placement}_${owner}_$run.node$n.log"
            done
        fi
    done
done

echo
echo "medians over $RUNS runs (latencies in ms):"
printf '%-26s %9s %9s %9s %9s %9s %6s\n' case "msg/s" "dlv p50" "dlv p99" "ack p50" "ack p99" "cpu/m"
for case in $CASES; do
    placement=${case%%/*}
    owner=$OWNER
    if [[ $case == */* ]]; then owner=${case#*/}; fi
    read -r rate dp50 dp99 ap50 ap99 < <(jq -s -r '
        def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        [(map(.delivered_per_sec) | median | floor),
         (map(.deliver_us.p50), map(.deliver_us.p99), map(.ack_us.p50), map(.ack_us.p99) | median / 1000)]
        | map(tostring) | join(" ")' "$WORK/${placement}_${owner}"_*.json)
    cpu=$(sort -g "$WORK/${placement}_${owner}.cpu" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    printf '%-26s %9s %9.2f %9.2f %9.2f %9.2f %6s\n' "$placement/$owner" "$rate" "$dp50" "$dp99" "$ap50" "$ap99" "$cpu"
done
echo "$(uptime)"
