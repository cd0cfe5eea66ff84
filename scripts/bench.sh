#!/usr/bin/env bash
# The performance comparison of docs/performance.md: switchboard against the
# baselines (naive tokio-tungstenite, plain tokio lines) in the same run.
#
#   scripts/bench.sh                      # every scenario, 3 rounds (15-30 minutes)
#   scripts/bench.sh --rounds 5           # more rounds, steadier medians
#   scripts/bench.sh --only ws-echo       # scenarios whose name starts with this
#   scripts/bench.sh --quick              # 1 round, short runs: a check that all works
#
# The server runs on CPU 0 and the load generator on CPU 1 (taskset); each
# round runs every server of a scenario, in alternating order from round to
# round, each on a fresh process. The table shows medians, ratios to the
# baseline, and the server's CPU time per message from /proc/PID/stat
# (utime + stime), the figure that stays stable on a busy machine, with its
# user-space part (utime) apart.
# WebSocket echo clients and broadcast subscribers use `--client raw`: the
# handshake through tokio-tungstenite, then prebuilt frames and a header
# scan, so that the load generator costs less per message than the servers.
# Loopback only; every run is bounded in time and count.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
ONLY=""
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --quick) QUICK=1; ROUNDS=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

cargo build --release -p switchboard-bench
OUT_DIR=target/bench
STAMP=$(date +%Y%m%d-%H%M%S)
# A private copy of the binaries: a later build into target/ must not
# change the servers in the middle of a comparison.
BIN="$OUT_DIR/bin-$STAMP"
mkdir -p "$BIN"
cp target/release/bench-server target/release/loadgen "$BIN/"
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

start_server() {
    local kind="$1"
    taskset -c "$SERVER_CPUS" "${NICE[@]}" "$BIN/bench-server" "$kind" 127.0.0.1:0 --max-seconds 600 \
        > "$SRV_LOG" 2>&1 &
    SRV_PID=$!
    for _ in $(seq 100); do
        if grep -q '^listening on' "$SRV_LOG"; then
            SRV_ADDR=$(awk '/^listening on/ {print $3; exit}' "$SRV_LOG")
            return 0
        fi
        sleep 0.05
    done
    echo "bench-server $kind did not start:" >&2
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
SCENARIOS=(
    "ws-echo-32B|naive-ws-echo|switchboard-ws-echo naive-ws-echo|echo --client raw --conns 100 --inflight 10 --size 32 --seconds $ECHO_S"
    "ws-echo-64KiB|naive-ws-echo|switchboard-ws-echo naive-ws-echo|echo --client raw --conns 10 --inflight 10 --size 65536 --seconds $ECHO_S"
    "tcp-echo-32B|plain-tcp-echo|switchboard-tcp-echo plain-tcp-echo|echo --conns 100 --inflight 10 --size 32 --seconds $ECHO_S"
    "ws-bcast-1k|naive-ws-chat|switchboard-ws-chat naive-ws-chat|broadcast --client raw --subs 1000 --pubs 1 --rate 100 --size 64 --seconds $BCAST_S"
    "ws-bcast-10k|naive-ws-chat|switchboard-ws-chat naive-ws-chat|broadcast --client raw --subs 10000 --pubs 1 --rate 5 --size 64 --seconds $BCAST_S --settle 2"
    "tcp-bcast-1k|plain-tcp-chat|switchboard-tcp-chat plain-tcp-chat|broadcast --subs 1000 --pubs 1 --rate 100 --size 64 --seconds $BCAST_S"
    "ws-idle-10k|naive-ws-echo|switchboard-ws-echo naive-ws-echo|idle --conns $IDLE10K_N"
    "tcp-idle-10k|plain-tcp-echo|switchboard-tcp-echo plain-tcp-echo|idle --conns $IDLE10K_N"
)

run_one() {
    local scenario="$1" baseline="$2" server="$3" round="$4" args="$5"
    start_server "$server"
    echo "== round $round: $scenario on $server" >&2
    # shellcheck disable=SC2086
    if ! loadgen $args --target "$(target_of "$server")" --scenario "$scenario" --server "$server" --baseline "$baseline" \
        --round "$round" | tee -a "$RESULTS"; then
        echo "   (run failed; see $SRV_LOG)" >&2
    fi
    stop_server
}

# The most idle WebSocket connections one server process holds under the
# file-descriptor limit: two load generator processes (each has the same
# limit), the second adding connections until the server runs out.
run_idle_max() {
    local round="$1" per=$((IDLE_N))
    local server=switchboard-ws-echo
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
        --scenario ws-idle-max --server "$server" --baseline "$server" --round "$round" \
        | tee -a "$RESULTS" || true
    kill "$first_pid" 2>/dev/null || true
    wait "$first_pid" 2>/dev/null || true
    stop_server
}

for round in $(seq "$ROUNDS"); do
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r scenario baseline servers args <<< "$entry"
        case "$scenario" in "$ONLY"*) ;; *) continue ;; esac
        read -r -a list <<< "$servers"
        # Alternate the order: odd rounds as listed (framework first), even
        # rounds reversed.
        if [ $((round % 2)) -eq 0 ]; then
            for ((i = 0, j = ${#list[@]} - 1; i < j; i++, j--)); do
                t=${list[i]}; list[i]=${list[j]}; list[j]=$t
            done
        fi
        for server in "${list[@]}"; do
            run_one "$scenario" "$baseline" "$server" "$round" "$args"
        done
    done
    case "ws-idle-max" in "$ONLY"*) run_idle_max "$round" ;; esac
done

echo
echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo);" \
    "server on CPU $SERVER_CPUS, load generator on CPU $LOAD_CPUS, ${NICE[*]:-default priority};" \
    "$ROUNDS round(s); load average $(cut -d' ' -f1-3 /proc/loadavg); raw results in $RESULTS"
"$BIN/loadgen" summarize "$RESULTS"
