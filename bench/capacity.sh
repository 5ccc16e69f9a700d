#!/usr/bin/env bash
# Capacity run (issue #7): many idle authenticated connections on one host, served by
# NODES gateway nodes of one cluster (one process may hold at most 20,000 open files
# here, so 500K connections need ~30 nodes), loadgen's worker processes on the same host,
# optionally a 1:1 chat run at a fixed rate on top of the idle connections.
#
# Starts a private redis-server, `confab cluster init --nodes NODES --shards-per-node
# SHARDS`, NODES nodes (node n on 127.0.0.(n+1), its first shard pinned to CPU n % cores),
# then
#   loadgen idle --workers auto --nodes NODES --server-pid <all nodes> ...
# and, CHAT_AFTER seconds into the hold, `loadgen chat` at CHAT_RATE. Writes every
# output into OUT_DIR (default bench/results/capacity-<time>), with report.md and
# report.json (bench/scripts/report.py). Cleans up on exit.
#
# With MIXED set, the nodes run `loadgen mixed $MIXED` instead (idle + chat + groups +
# storms at once, split over worker processes as its connections need; CONNS, USERS,
# HOLD, PING_MS and the CHAT_* variables are then unused):
#   NODES=3 MIXED="--idle-conns 40000 --chat-pairs 16 --chat-rate 1000 --groups 20 \
#     --storm-fraction 0.2 --storm-conns 2000 --storm-users 200 --duration 60" bench/capacity.sh
#
# Build first:  cargo build --release -p gateway -p loadgen
# Host limits:  the run needs a wide port range and enough files system-wide; check
#               with `tune check --connections CONNS` (tuning/), fix with `tune apply`.
#
# Environment (defaults in brackets):
#   CONNS        idle connections                                      [500000]
#   NODES        gateway nodes                                         [30]
#   SHARDS       shards per node (pinned to consecutive cores)         [2]
#   USERS        users the connections are spread over (balanced per node) [3000]
#   HOLD         seconds the connections are held after the last one opened [600]
#   PING_MS      app heartbeat per connection, ms (0 = none)           [30000]
#   CONNECT_RATE connections opened per second over all workers (0 = max) [0]
#   CHAT_RATE    1:1 messages/s on top of the idle load (0 = no chat)   [1000]
#   CHAT_PAIRS   chat pairs                                            [16]
#   CHAT_AFTER   seconds into the hold the chat run starts             [60]
#   CHAT_SECS    seconds of chat                                       [30]
#   TRANSPORT    tcp | ws                                              [tcp]
#   BIN_DIR      where `confab` and `loadgen` are                      [target/release]
#   REDIS_PORT   port of the private redis-server                      [26500]
#   OUT_DIR      where reports go                        [bench/results/capacity-<time>]
#   MIXED        arguments of `loadgen mixed` (empty: idle + chat)      []
#
# Example (small):  CONNS=20000 NODES=2 USERS=200 HOLD=20 bench/capacity.sh
set -euo pipefail

CONNS=${CONNS:-500000}
NODES=${NODES:-30}
SHARDS=${SHARDS:-2}
USERS=${USERS:-3000}
HOLD=${HOLD:-600}
PING_MS=${PING_MS:-30000}
CONNECT_RATE=${CONNECT_RATE:-0}
CHAT_RATE=${CHAT_RATE:-1000}
CHAT_PAIRS=${CHAT_PAIRS:-16}
CHAT_AFTER=${CHAT_AFTER:-60}
CHAT_SECS=${CHAT_SECS:-30}
TRANSPORT=${TRANSPORT:-tcp}
BIN_DIR=${BIN_DIR:-target/release}
REDIS_PORT=${REDIS_PORT:-26500}
OUT_DIR=${OUT_DIR:-bench/results/capacity-$(date -u +%Y%m%dT%H%M%SZ)}
MIXED=${MIXED:-}

CONFAB=$BIN_DIR/confab
LOADGEN=$BIN_DIR/loadgen
for bin in "$CONFAB" "$LOADGEN"; do
    [[ -x $bin ]] || { echo "capacity.sh: $bin not found (cargo build --release -p gateway -p loadgen)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "capacity.sh: redis-server not found" >&2; exit 1; }
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/confab-capacity.XXXXXX")
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
NODE_PIDS=()
CHAT_PID=
HTTP=()
TCP=()
CORES=$(nproc)

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    [[ -f $WORK/redis.pid ]] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
    cp "$WORK"/n*.err "$OUT_DIR"/ 2>/dev/null || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "# capacity run $(date -u +%FT%TZ)"
    echo "CONNS=$CONNS NODES=$NODES SHARDS=$SHARDS USERS=$USERS HOLD=$HOLD PING_MS=$PING_MS CONNECT_RATE=$CONNECT_RATE"
    echo "CHAT_RATE=$CHAT_RATE CHAT_PAIRS=$CHAT_PAIRS CHAT_AFTER=$CHAT_AFTER CHAT_SECS=$CHAT_SECS TRANSPORT=$TRANSPORT"
    [[ -n $MIXED ]] && echo "MIXED=$MIXED"
    echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "open files: soft $(ulimit -Sn) hard $(ulimit -Hn); fs.file-max $(cat /proc/sys/fs/file-max); port range $(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' ' ')"
} | tee "$OUT_DIR/setup.txt"

# With the ephemeral range widened to 1024-65535 (needed for 500K connections), an
# outgoing connection may hold a listening port's number first: reserve them.
RESERVED="7070,8080,9090,$REDIS_PORT"
if [[ $(cat /proc/sys/net/ipv4/ip_local_reserved_ports) != *"$REDIS_PORT"* ]]; then
    sysctl -qw net.ipv4.ip_local_reserved_ports="$RESERVED" \
        || echo "capacity.sh: could not reserve ports $RESERVED (run as root, or set net.ipv4.ip_local_reserved_ports)" >&2
fi
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$CONFAB" --redis-url "$REDIS_URL" cluster init --nodes "$NODES" --shards-per-node "$SHARDS" >/dev/null

# Nodes: SHARDS shards each, spread over the cores; cheap password hashing (the run logs
# thousands of users in; hashing is not what is measured), 16 MiB log segments (60 logs
# with 256 MiB active + spare segments would write 30 GB of zeros). loadgen's workers ping
# their connections while they ramp, but one that has opened its share waits for the others
# (and the coordinator's `go`) without pinging, so the idle timeout covers the ramp and the
# hold all the same.
IDLE_MS=$(( (HOLD + 3600) * 1000 ))
for ((n = 0; n < NODES; n++)); do
    mkdir -p "$WORK/n$n"
    "$CONFAB" --redis-url "$REDIS_URL" --node-id "$n" --shards "$SHARDS" --first-cpu $((n % CORES)) \
        --bind "127.0.0.$((n + 1))" --http-port 8080 --tcp-port 7070 --link-port 9090 \
        --data-dir "$WORK/n$n" --idle-timeout-ms "$IDLE_MS" \
        --argon2-memory-kib 1024 --argon2-iterations 1 --log-segment-bytes 16777216 \
        >"$WORK/n$n.out" 2>"$WORK/n$n.err" &
    NODE_PIDS+=($!)
done
for ((n = 0; n < NODES; n++)); do
    for _ in $(seq 600); do
        grep -q '^confab ready' "$WORK/n$n.out" && break
        kill -0 "${NODE_PIDS[$n]}" 2>/dev/null || { echo "node $n exited:" >&2; cat "$WORK/n$n.err" >&2; exit 1; }
        sleep 0.1
    done
    grep -q '^confab ready' "$WORK/n$n.out" || { echo "node $n not ready" >&2; exit 1; }
    HTTP[n]=127.0.0.$((n + 1)):8080
    TCP[n]=127.0.0.$((n + 1)):7070
done
# Every node must see every other up before discover answers for all users.
for _ in $(seq 600); do
    ok=1
    for ((n = 0; n < NODES; n++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://${HTTP[0]}/v1/discover?username=probe$n")
        [[ $code == 200 ]] || { ok=0; break; }
    done
    [[ $ok == 1 ]] && break
    sleep 0.1
done
PIDS=$(IFS=,; echo "${NODE_PIDS[*]}")
echo "nodes up: $NODES (pids $PIDS)" | tee -a "$OUT_DIR/setup.txt"

if [[ -n $MIXED ]]; then
    # shellcheck disable=SC2086 # MIXED is a list of arguments
    "$LOADGEN" --json --transport "$TRANSPORT" --http "${HTTP[0]}" --tcp "${TCP[0]}" mixed $MIXED \
        --server-pid "$PIDS" >"$OUT_DIR/mixed.json"
    python3 "$(dirname "$0")/scripts/report.py" --out-dir "$OUT_DIR" \
        --title "mixed over $NODES nodes on one host" \
        --command "NODES=$NODES SHARDS=$SHARDS TRANSPORT=$TRANSPORT MIXED=\"$MIXED\" bench/capacity.sh" \
        --result "mixed=$OUT_DIR/mixed.json" || true
    jq -c '{connections, workers, idle: .idle | {held, pongs_per_sec, pong_us, error_count}, chat: .chat | {sent, delivered, deliver_us, errors}, groups: .groups | {sent, deliveries, expected_deliveries, each_member_us}, reconnect: .reconnect | {dropped, reconnected, duplicates, gaps}}' "$OUT_DIR/mixed.json" || true
    echo "reports in $OUT_DIR"
    exit 0
fi

if [[ $CHAT_RATE -gt 0 ]]; then
    (
        # Starts once the idle connections are open (the coordinator prints its first
        # report line only at the end, so watch the servers' connection gauges instead).
        target=$(( CONNS * 95 / 100 ))
        give_up=$(( $(date +%s) + HOLD + 3600 ))
        while [[ $(date +%s) -lt $give_up ]]; do
            open=0
            for ((n = 0; n < NODES; n++)); do
                c=$(curl -s "http://${HTTP[n]}/metrics" | awk '/^confab_sessions\{/ {s += $2} END {print s + 0}')
                open=$((open + c))
            done
            [[ $open -ge $target ]] && break
            sleep 5
        done
        sleep "$CHAT_AFTER"
        echo "chat starts with $open connections open" >"$OUT_DIR/chat-start.txt"
        "$LOADGEN" --json --http "${HTTP[0]}" --tcp "${TCP[0]}" chat --pairs "$CHAT_PAIRS" \
            --rate "$CHAT_RATE" --duration "$CHAT_SECS" >"$OUT_DIR/chat.json" 2>"$OUT_DIR/chat.err" || true
    ) &
    CHAT_PID=$!
fi

"$LOADGEN" --json --transport "$TRANSPORT" --http "${HTTP[0]}" --tcp "${TCP[0]}" idle \
    --conns "$CONNS" --users "$USERS" --nodes "$NODES" --server-pid "$PIDS" \
    --duration "$HOLD" --ping-interval-ms "$PING_MS" --connect-rate "$CONNECT_RATE" \
    >"$OUT_DIR/idle.json"
# The chat run only (the nodes are background jobs too).
[[ -n ${CHAT_PID:-} ]] && { kill "$CHAT_PID" 2>/dev/null || true; wait "$CHAT_PID" 2>/dev/null || true; }
# The report (Markdown + JSON): machine, commands, every figure.
report_args=(--out-dir "$OUT_DIR" --title "capacity: $CONNS connections over $NODES nodes on one host"
    --command "CONNS=$CONNS NODES=$NODES SHARDS=$SHARDS USERS=$USERS HOLD=$HOLD PING_MS=$PING_MS CONNECT_RATE=$CONNECT_RATE CHAT_RATE=$CHAT_RATE CHAT_PAIRS=$CHAT_PAIRS CHAT_AFTER=$CHAT_AFTER CHAT_SECS=$CHAT_SECS TRANSPORT=$TRANSPORT bench/capacity.sh"
    --result "idle=$OUT_DIR/idle.json")
[[ -f $OUT_DIR/chat.json ]] && report_args+=(--result "chat=$OUT_DIR/chat.json")
python3 "$(dirname "$0")/scripts/report.py" "${report_args[@]}" || true
echo "idle:"; jq -c . "$OUT_DIR/idle.json"
[[ -f $OUT_DIR/chat.json ]] && { echo "chat:"; jq -c '{sent, delivered, sent_per_sec, deliver_us, ack_us, errors}' "$OUT_DIR/chat.json"; }
echo "reports in $OUT_DIR"
