#!/usr/bin/env bash
# Browser test: two headless Chromium pages talk through the chat example,
# then through the axum_app example (the same page and room, through axum).
# Installs what it needs (Debian's chromium, the npm packages in
# tests/browser/) and fails when anything is missing; it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing Debian's chromium"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "browser test: /usr/bin/chromium is missing after installing it" >&2
  exit 1
fi
/usr/bin/chromium --version

echo "== npm packages (playwright-core; no browser download)"
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

echo "== building the chat and axum_app examples"
cargo build --example chat --example axum_app
export CHAT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/chat"
export AXUM_APP_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/axum_app"

echo "== browser test"
cd tests/browser
timeout 180 node --test chat.test.mjs
