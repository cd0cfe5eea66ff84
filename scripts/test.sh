#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it all.
# This is the project's one test command (README.md); .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The TCP transport's tests use a real `nc` (Debian's netcat-openbsd) as a peer.
command -v nc >/dev/null || (apt-get update && apt-get install -y netcat-openbsd)
# The Redis broker's tests spawn their own redis-server processes (Debian's redis-server).
command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "== unit, integration and doc tests"
cargo test --workspace --all-features

echo "== browser test (headless chromium drives the chat example)"
bash scripts/browser-test.sh

echo "== WebSocket conformance (Autobahn|Testsuite against the echo example)"
bash scripts/autobahn.sh
