#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite fuzzing client (wstest)
# against the echo example and fails unless every case outside 12.* and 13.*
# (permessage-deflate, not supported) is OK, NON-STRICT or INFORMATIONAL,
# for both behavior and behaviorClose. Reports: reports/servers/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."

# wstest is Python-2-only. CPython 2.7 comes from pyenv.
py2="${PYTHON2:-}"
if [ -z "$py2" ]; then
  for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/2.7.18/bin/python" \
                   /root/.pyenv/versions/2.7.18/bin/python; do
    if [ -x "$candidate" ]; then py2="$candidate"; break; fi
  done
fi
if [ -z "$py2" ] || ! "$py2" -c 'import sys; assert sys.version_info[:2] == (2, 7)'; then
  echo "autobahn: no CPython 2.7 found (set PYTHON2)" >&2
  exit 1
fi

venv=.venv-autobahn
reqs=scripts/autobahn-requirements.txt
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/wstest" ] || ! cmp -s "$reqs" "$stamp"; then
  echo "== setting up $venv (Python 2.7, wstest)"
  if ! "$py2" -m virtualenv --version >/dev/null 2>&1; then
    "$py2" -m pip install --quiet --disable-pip-version-check "virtualenv<20.22"
  fi
  rm -rf "$venv"
  "$py2" -m virtualenv --quiet "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  cp "$reqs" "$stamp"
fi

echo "== building the echo example"
cargo build --example echo
echo_bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples/echo"

mkdir -p reports
log=reports/echo.log
"$echo_bin" --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --max-message-size 16777216 >"$log" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
url=""
for _ in $(seq 100); do
  url=$(grep -o 'ws://127\.0\.0\.1:[0-9]*' "$log" | head -1 || true)
  [ -n "$url" ] && break
  kill -0 "$echo_pid" 2>/dev/null || { cat "$log" >&2; echo "autobahn: echo exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$log" >&2; echo "autobahn: echo printed no URL" >&2; exit 1; }
echo "== wstest fuzzingclient against $url"

rm -rf reports/servers
cat >reports/fuzzingclient.json <<JSON
{
  "outdir": "./reports/servers",
  "servers": [{ "agent": "switchboard", "url": "$url" }],
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON
timeout 1200 "$venv/bin/wstest" -m fuzzingclient -s reports/fuzzingclient.json >reports/wstest.log 2>&1 \
  || { tail -20 reports/wstest.log >&2; echo "autobahn: wstest failed" >&2; exit 1; }

kill -INT "$echo_pid"
wait "$echo_pid" || { echo "autobahn: echo did not stop cleanly on SIGINT" >&2; exit 1; }
trap - EXIT

"$venv/bin/python" - reports/servers/index.json <<'PY'
import json, sys
from collections import Counter

ALLOWED = ("OK", "NON-STRICT", "INFORMATIONAL")
index = json.load(open(sys.argv[1]))
cases = index["switchboard"]
behavior, close, bad, judged = Counter(), Counter(), [], 0
def key(case):
    return [int(p) for p in case.split(".")]
for case in sorted(cases, key=key):
    result = cases[case]
    behavior[result["behavior"]] += 1
    close[result["behaviorClose"]] += 1
    if case.split(".")[0] in ("12", "13"):
        continue
    judged += 1
    if result["behavior"] not in ALLOWED or result["behaviorClose"] not in ALLOWED:
        bad.append("%s: behavior=%s behaviorClose=%s" % (case, result["behavior"], result["behaviorClose"]))
print("autobahn: %d cases" % len(cases))
print("  behavior:      " + ", ".join("%s %d" % kv for kv in sorted(behavior.items())))
print("  behaviorClose: " + ", ".join("%s %d" % kv for kv in sorted(close.items())))
if not judged:
    print("autobahn: no cases ran")
    sys.exit(1)
for line in bad:
    print("  failed " + line)
print("autobahn: %d passed, %d failed" % (judged - len(bad), len(bad)))
sys.exit(1 if bad else 0)
PY
