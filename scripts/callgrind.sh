#!/usr/bin/env bash
# User-space instructions per echoed message (or, for a chat server, per
# delivery of a broadcast), counted by valgrind's callgrind on the server:
# repeatable for the same binary whatever else the machine is doing
# (kernel time is not included). docs/performance.md has the figures.
#
#   scripts/callgrind.sh SERVER            # e.g. switchboard-tcp-echo, switchboard-ws-chat
#   scripts/callgrind.sh SERVER DIR        # DIR/bench-server, built from another commit
#
# Echo: 20 connections x 10 in flight x 32 bytes for 4 s. Chat: 200
# subscribers, one publisher at 50 messages/s of 64 bytes for 4 s (the
# connections' setup and the load generator's waits before and after are
# counted too). Loopback only.
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
if [[ "$server" == *chat* ]]; then
    "$target/release/loadgen" broadcast --target "$url" --client raw \
        --subs 200 --pubs 1 --rate 50 --size 64 --seconds 4 > "$out/load.log"
    what=deliveries one=delivery
    count=$(grep -o 'received=[0-9]*' "$out/load.log" | head -1 | cut -d= -f2)
else
    "$target/release/loadgen" echo --target "$url" --client raw \
        --conns 20 --inflight 10 --size 32 --seconds 4 --warmup 0 > "$out/load.log"
    what=messages one=message
    count=$(grep -o 'msgs=[0-9]*' "$out/load.log" | head -1 | cut -d= -f2)
fi
kill -INT "$pid"
wait "$pid" 2>/dev/null || true
total=$(awk '/^summary:/ {print $2}' "$out/cg.out")
if [ "${count:-0}" -eq 0 ]; then
    echo "$server: no $what counted; the load generator said:" >&2
    cat "$out/load.log" >&2
    exit 1
fi
echo "$server: $total instructions / $count $what = $((total / count)) per $one"
