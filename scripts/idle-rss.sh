#!/usr/bin/env bash
# Measures the server's resident memory per idle WebSocket connection: starts
# the echo example (release build), opens N idle connections from a separate
# client process on 127.0.0.1, and divides the growth of the server's VmRSS
# by N. Usage: scripts/idle-rss.sh [N]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
# Each connection is one descriptor in the server and one in the client.
ulimit -n $((n + 1024))

cargo build --release --example echo
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/echo"
log=$(mktemp)
"$bin" --ws 127.0.0.1:0 --tcp off >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
addr=""
for _ in $(seq 100); do
  addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$log" | head -1 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$log" >&2; exit 1; }
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$server/status"; }

python3 - "$addr" "$n" "$(rss)" "$server" <<'PY'
import asyncio, sys

addr, n, base_kib, server_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
host, port = addr.rsplit(":", 1)
REQUEST = (
    "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
).format(addr).encode()

def rss_kib():
    with open("/proc/%s/status" % server_pid) as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])

async def open_one(conns):
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    conns.append((reader, writer))

async def main():
    conns = []
    sem = asyncio.Semaphore(200)
    async def bounded():
        async with sem:
            await open_one(conns)
    await asyncio.wait_for(asyncio.gather(*(bounded() for _ in range(n))), 300)
    # Let the server settle: every connection past on_open, nothing in flight.
    await asyncio.sleep(2)
    after = rss_kib()
    print("connections: %d" % len(conns))
    print("server VmRSS before: %d KiB, with %d idle connections: %d KiB" % (base_kib, n, after))
    print("per idle connection: %.2f KiB" % ((after - base_kib) / float(n)))
    for _, w in conns:
        w.close()

asyncio.run(main())
PY
