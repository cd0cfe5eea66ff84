#!/usr/bin/env bash
# User-space instructions per echoed message, counted by valgrind's
# callgrind on the server: repeatable for the same binary whatever else the
# machine is doing (kernel time is not included). docs/performance.md has
# the figures.
#
#   scripts/callgrind.sh SERVER            # e.g. switchboard-tcp-echo, switchboard-ws-echo
#   scripts/callgrind.sh SERVER DIR        # DIR/bench-server, built from another commit
#
# 20 connections x 10 in flight x 32 bytes for 4 s, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

server="${1:?usage: scripts/callgrind.sh SERVER [DIR]}"
command -v valgrind >/dev/null || (apt-get update && apt-get install -y valgrind)
cargo build --release -p switchboard-bench
target="${CARGO_TARGET_DIR:-target}"
bin="${2:-$target/release}"
out="$(mktemp -d)"
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
    "$bin/bench-server" "$server" 127.0.0.1:0 --max-seconds 120 > "$out/server.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 300); do
    grep -q '^listening on' "$out/server.log" && break
    sleep 0.1
done
addr=$(awk '/^listening on/ {print $3; exit}' "$out/server.log")
case "$server" in
    *tcp*) url="tcp://$addr" ;;
    *) url="ws://$addr/" ;;
esac
"$target/release/loadgen" echo --target "$url" --client raw \
    --conns 20 --inflight 10 --size 32 --seconds 4 --warmup 0 > "$out/load.log"
kill -INT "$pid"
wait "$pid" 2>/dev/null || true
total=$(awk '/^summary:/ {print $2}' "$out/cg.out")
msgs=$(grep -o 'msgs=[0-9]*' "$out/load.log" | head -1 | cut -d= -f2)
echo "$server: $total instructions / $msgs messages = $((total / msgs)) per message"
