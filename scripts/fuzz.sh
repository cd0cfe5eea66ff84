#!/usr/bin/env bash
# Bounded fuzzing of every target in fuzz/ (cargo-fuzz on libFuzzer, with
# AddressSanitizer). scripts/test.sh runs it; docs/reliability.md has the
# figures of a longer run and what each target checks.
#
#   FUZZ_SECONDS=N   seconds per target (default 30)
#   FUZZ_TARGETS=".." the targets to run (default: all five)
#
# A crash, a failed check or a hang (10 s on one input) fails the script;
# the input that did it is in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
targets="${FUZZ_TARGETS:-tcp_codec tcp_connection ws_handshake ws_connection ws_deflate}"

# libfuzzer-sys builds libFuzzer's C++ sources (Debian's g++).
command -v c++ >/dev/null || (apt-get update && apt-get install -y g++)
# cargo-fuzz installs from crates.io (a few minutes the first time).
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes nightly flags (-Zsanitizer=address); the stable
# toolchain accepts them this way.
export RUSTC_BOOTSTRAP=1

cd fuzz
cargo fuzz build
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
for target in $targets; do
  mkdir -p "$work/$target"
  dict=()
  case "$target" in
    ws_handshake) dict=(-dict=dicts/http.dict) ;;
    ws_connection) dict=(-dict=dicts/ws.dict) ;;
    ws_deflate) dict=(-dict=dicts/ws_deflate.dict) ;;
  esac
  # New inputs go to a scratch corpus; the seeds in fuzz/seeds stay as they are.
  if cargo fuzz run "$target" "$work/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 "${dict[@]}" \
      >"$work/$target.log" 2>&1; then
    runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$work/$target.log" | tail -1)"
    cov="$(grep -Eo 'DONE +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$work/$target.log" | tail -1 | sed 's/DONE *//')"
    echo "fuzz $target: ${runs:-?}s, 0 crashes (${cov:-})"
  else
    echo "fuzz $target: FAILED" >&2
    tail -n 60 "$work/$target.log" >&2
    failed=1
  fi
done
exit "$failed"
