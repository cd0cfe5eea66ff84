#!/usr/bin/env bash
# Browser tests, two headless Chromium pages each (support.mjs: starting a
# server, launching chromium):
# - chat.test.mjs: the pages talk through the chat example, then through the
#   axum_app example (the same page and room, through axum);
# - rooms.test.mjs: the pages join a room of the rooms example: members,
#   join and leave notices, messages, recovery of what a page missed while
#   its socket was down, HTML shown as text.
# And one page alone in deflate.test.mjs: permessage-deflate with the echo
# example (--deflate), text and 1 MiB binary messages echoed byte for byte.
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

echo "== building the chat, axum_app, rooms and echo examples"
cargo build --example chat --example axum_app --example rooms --example echo
export CHAT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/chat"
export AXUM_APP_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/axum_app"
export ROOMS_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/rooms"
export ECHO_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/echo"

echo "== browser test"
cd tests/browser
timeout 240 node --test chat.test.mjs rooms.test.mjs deflate.test.mjs
