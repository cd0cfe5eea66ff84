#!/usr/bin/env bash
# permessage-deflate interoperability with other WebSocket implementations,
# all on 127.0.0.1:
# - Python websockets and Node's ws, as clients with their default
#   permessage-deflate offers, against the echo example started with
#   --deflate (tests/interop/echo_client_test.py, echo_client.test.mjs):
#   the extension is agreed, text and 1 MiB binary messages come back byte
#   for byte, and what crossed the socket shows which side compressed what.
#   Then Ctrl-C must stop the echo example cleanly, with nothing logged.
# - The Rust client against a Python websockets server
#   (tests/interop_python.rs with tests/interop/echo_server.py), once with
#   websockets' defaults and once with a server that keeps its compression
#   context. Those Rust tests are #[ignore]d in a plain `cargo test` (no
#   Python there); this script runs them with INTEROP_PYTHON set.
# Sets up what it needs (a virtualenv in .venv-interop from
# tests/interop/requirements.txt, the npm packages of tests/interop) and
# fails on any problem; it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PYTHONDONTWRITEBYTECODE=1

fail() {
  echo "interop: $*" >&2
  exit 1
}

python="${PYTHON3:-python3}"
command -v "$python" >/dev/null || fail "no $python (set PYTHON3)"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || fail "$python is older than 3.11, which the pinned websockets needs"
command -v node >/dev/null || fail "no node"
command -v npm >/dev/null || fail "no npm"

venv=.venv-interop
reqs=tests/interop/requirements.txt
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$reqs" "$stamp"; then
  echo "== setting up $venv ($("$python" --version), $(paste -sd ' ' "$reqs"))"
  rm -rf "$venv"
  if ! "$python" -m venv "$venv"; then
    # Debian's python3 needs python3-venv for ensurepip.
    rm -rf "$venv"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
    "$python" -m venv "$venv"
  fi
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  cp "$reqs" "$stamp"
fi
py="$root/$venv/bin/python"
"$py" -c 'import websockets; print("websockets", websockets.__version__)'

echo "== npm packages of tests/interop (ws)"
(cd tests/interop && timeout 600 npm ci --no-audit --no-fund --loglevel=error)
node -e 'console.log("ws", require("./tests/interop/node_modules/ws/package.json").version, "on node", process.version)'

echo "== building the echo example"
cargo build --example echo
echo_bin="${CARGO_TARGET_DIR:-$root/target}/debug/examples/echo"

log=$(mktemp)
"$echo_bin" --ws 127.0.0.1:0 --tcp off --max-message-size 16777216 --deflate >"$log" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true; rm -f "$log"' EXIT
url=""
for _ in $(seq 100); do
  url=$(grep -o 'ws://127\.0\.0\.1:[0-9]*/' "$log" | head -1 || true)
  [ -n "$url" ] && break
  kill -0 "$echo_pid" 2>/dev/null || { cat "$log" >&2; fail "the echo example exited"; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$log" >&2; fail "the echo example printed no URL within 10 s"; }

echo "== Python websockets client -> echo example ($url)"
(cd tests/interop && ECHO_URL="$url" timeout 120 "$py" -m unittest -v echo_client_test) \
  || { cat "$log" >&2; fail "Python websockets against the echo example failed"; }

echo "== Node ws client (perMessageDeflate) -> echo example ($url)"
(cd tests/interop && ECHO_URL="$url" timeout 120 node --test echo_client.test.mjs) \
  || { cat "$log" >&2; fail "Node ws against the echo example failed"; }

echo "== Ctrl-C stops the echo example cleanly"
kill -INT "$echo_pid"
status=""
for _ in $(seq 150); do
  if ! kill -0 "$echo_pid" 2>/dev/null; then
    status=0
    wait "$echo_pid" || status=$?
    break
  fi
  sleep 0.1
done
[ -n "$status" ] || { cat "$log" >&2; fail "the echo example still runs 15 s after SIGINT"; }
[ "$status" = 0 ] || { cat "$log" >&2; fail "the echo example exited with status $status after SIGINT"; }
trap 'rm -f "$log"' EXIT
grep -q 'echo: shutting down' "$log" || { cat "$log" >&2; fail "the echo example did not say it was shutting down"; }
# The clients closed normally: the server has nothing to warn about.
if grep -E 'WARN|ERROR' "$log" >&2; then
  fail "the echo example logged the problems above"
fi

echo "== Rust client -> Python websockets server (tests/interop_python.rs)"
cargo test --all-features --test interop_python --no-run
INTEROP_PYTHON="$py" timeout 300 cargo test --all-features --test interop_python -- --include-ignored \
  || fail "the Rust client against Python websockets failed"
