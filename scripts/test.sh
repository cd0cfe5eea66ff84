#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it all.
# This is the project's one test command (README.md); .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need, installed once in one apt run:
# - netcat-openbsd: the TCP transport's tests use a real `nc -N` as a peer;
# - redis-server: the Redis broker's tests spawn their own servers;
# - chromium: the browser test drives the chat page headless.
need=()
dpkg -s netcat-openbsd >/dev/null 2>&1 || need+=(netcat-openbsd)
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features

echo "== unit, integration and doc tests"
cargo test --workspace --all-features

echo "== fuzzing (cargo-fuzz, 30 s per target; docs/reliability.md)"
FUZZ_SECONDS=30 bash scripts/fuzz.sh

echo "== permessage-deflate interop (Python websockets, Node ws)"
bash scripts/interop.sh

echo "== browser tests (headless chromium drives the chat page of the chat and axum_app examples, and the rooms page)"
bash scripts/browser-test.sh

echo "== WebSocket conformance (Autobahn|Testsuite against the echo example and axum_app's /echo)"
bash scripts/autobahn.sh
