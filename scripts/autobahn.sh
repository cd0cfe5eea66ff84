#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite fuzzing client (wstest)
# against the echo example and against the axum_app example's /echo (the
# same frames, upgraded by axum), both with permessage-deflate on
# (--deflate), and fails unless, for each, every case (12.* and 13.*,
# compression, included) is OK, NON-STRICT or INFORMATIONAL, for both
# behavior and behaviorClose. Reports: reports/servers/AGENT/index.html.
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

echo "== building the echo and axum_app examples"
cargo build --example echo --example axum_app
examples="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples"

mkdir -p reports
log=reports/echo.log
axum_log=reports/axum_app.log
"$examples/echo" --ws 127.0.0.1:0 --tcp 127.0.0.1:0 --max-message-size 16777216 --deflate >"$log" 2>&1 &
echo_pid=$!
RUST_LOG=warn "$examples/axum_app" --addr 127.0.0.1:0 --deflate >"$axum_log" 2>&1 &
axum_pid=$!
trap 'kill "$echo_pid" "$axum_pid" 2>/dev/null || true' EXIT
url=""
axum_url=""
for _ in $(seq 100); do
  url=$(grep -o 'ws://127\.0\.0\.1:[0-9]*' "$log" | head -1 || true)
  axum_url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$axum_log" | head -1 || true)
  [ -n "$url" ] && [ -n "$axum_url" ] && break
  kill -0 "$echo_pid" 2>/dev/null || { cat "$log" >&2; echo "autobahn: echo exited" >&2; exit 1; }
  kill -0 "$axum_pid" 2>/dev/null || { cat "$axum_log" >&2; echo "autobahn: axum_app exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$log" >&2; echo "autobahn: echo printed no URL" >&2; exit 1; }
[ -n "$axum_url" ] || { cat "$axum_log" >&2; echo "autobahn: axum_app printed no URL" >&2; exit 1; }
axum_url="ws://${axum_url#http://}/echo"
echo "== wstest fuzzingclient against $url and $axum_url"

rm -rf reports/servers
# One wstest per server, side by side: wstest is one Python process, the
# bottleneck of the run (the compression cases take minutes each way).
wstest_pids=()
for agent in switchboard switchboard-axum; do
  if [ "$agent" = switchboard ]; then target="$url"; else target="$axum_url"; fi
  cat >"reports/fuzzingclient-$agent.json" <<JSON
{
  "outdir": "./reports/servers/$agent",
  "servers": [{ "agent": "$agent", "url": "$target" }],
  "cases": ["*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
  timeout 1500 "$venv/bin/wstest" -m fuzzingclient -s "reports/fuzzingclient-$agent.json" \
    >"reports/wstest-$agent.log" 2>&1 &
  wstest_pids+=($!)
done
for i in 0 1; do
  agent=$([ "$i" = 0 ] && echo switchboard || echo switchboard-axum)
  wait "${wstest_pids[$i]}" \
    || { tail -20 "reports/wstest-$agent.log" >&2; echo "autobahn: wstest against $agent failed" >&2; exit 1; }
done

kill -INT "$echo_pid" "$axum_pid"
wait "$echo_pid" || { echo "autobahn: echo did not stop cleanly on SIGINT" >&2; exit 1; }
wait "$axum_pid" || { echo "autobahn: axum_app did not stop cleanly on SIGINT" >&2; exit 1; }
trap - EXIT

"$venv/bin/python" - reports/servers/switchboard/index.json reports/servers/switchboard-axum/index.json <<'PY'
import json, sys
from collections import Counter

ALLOWED = ("OK", "NON-STRICT", "INFORMATIONAL")
index = {}
for path in sys.argv[1:]:
    index.update(json.load(open(path)))
def key(case):
    return [int(p) for p in case.split(".")]
failed = False
for agent in ("switchboard", "switchboard-axum"):
    cases = index.get(agent, {})
    behavior, close, bad, judged = Counter(), Counter(), [], 0
    for case in sorted(cases, key=key):
        result = cases[case]
        behavior[result["behavior"]] += 1
        close[result["behaviorClose"]] += 1
        judged += 1
        if result["behavior"] not in ALLOWED or result["behaviorClose"] not in ALLOWED:
            bad.append("%s: behavior=%s behaviorClose=%s" % (case, result["behavior"], result["behaviorClose"]))
    print("autobahn %s: %d cases" % (agent, len(cases)))
    print("  behavior:      " + ", ".join("%s %d" % kv for kv in sorted(behavior.items())))
    print("  behaviorClose: " + ", ".join("%s %d" % kv for kv in sorted(close.items())))
    # Every case of the suite, compression (12.*, 13.*) included.
    if judged != 517:
        print("autobahn %s: %d cases ran, not the suite's 517" % (agent, judged))
        failed = True
    for line in bad:
        print("  failed " + line)
    print("autobahn %s: %d passed, %d failed" % (agent, judged - len(bad), len(bad)))
    failed = failed or bool(bad)
sys.exit(1 if failed else 0)
PY
