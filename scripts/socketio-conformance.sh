#!/usr/bin/env bash
# The official Engine.IO and Socket.IO conformance suites (../shared/conformance/socketio, run unchanged
# by their own run.sh) against switchboard: starts BINARY on 127.0.0.1 (a free port) with the suites'
# configuration (PROTOCOL.md, "Test suite": pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1e6,
# CORS "*", connectTimeout 1 s, `[socketio] conformance = true`), runs each suite, and retries a failed
# suite up to twice: the suites race 300 ms ping timers against a loaded machine (the reference server
# loses that race too), so a retry tells flakiness from a real failure; a suite failing three times fails.
# Prints one summary line per suite and exits non-zero if a suite never passed.
#
# usage: scripts/socketio-conformance.sh BINARY SHARED   (scripts/test.sh calls it)
set -euo pipefail
bin=${1:?the switchboard binary}; shared=${2:?the shared folder (../shared)}
runner="$shared/conformance/socketio/run.sh"
[ -x "$runner" ] || { echo "socketio conformance: $runner not found" >&2; exit 1; }
ATTEMPTS=${SOCKETIO_CONFORMANCE_ATTEMPTS:-3}

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/switchboard.toml" <<'TOML'
listen = "127.0.0.1:0"

[api]
listen = "127.0.0.1:0"

[websocket]
allowed_origins = ["*"]

[socketio]
enabled = true
conformance = true
ping_interval = "300ms"
ping_timeout = "200ms"
max_payload = 1000000
connect_timeout = "1s"
allowed_origins = ["*"]
TOML
"$bin" serve --config "$work/switchboard.toml" --log-format json --log-level warn,switchboard=info \
  2>"$work/server.log" &
server=$!
addr=""
for _ in $(seq 100); do
  addr=$(sed -n 's/.*"addr":"\([0-9.]*:[0-9]*\)".*/\1/p' "$work/server.log" | head -n1)
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$work/server.log"; echo "socketio conformance: switchboard did not start" >&2; exit 1; }

status=0
for suite in engine.io-protocol socket.io-protocol; do
  passed=false
  for attempt in $(seq "$ATTEMPTS"); do
    out="$work/$suite.$attempt.log"
    if "$runner" "$suite" "http://$addr" >"$out" 2>&1; then passed=true; fi
    passing=$(sed -n 's/^ *\([0-9]*\) passing.*/\1/p' "$out" | tail -n1)
    failing=$(sed -n 's/^ *\([0-9]*\) failing.*/\1/p' "$out" | tail -n1)
    echo "socketio conformance: $suite: ${passing:-0} passing, ${failing:-0} failing (attempt $attempt of $ATTEMPTS)"
    $passed && break
    # What failed, for the log, before the retry.
    sed -n '/failing/,$p' "$out" | head -n 40 || true
    [ -n "$passing" ] || tail -n 20 "$out"
  done
  $passed || { echo "socketio conformance: $suite failed $ATTEMPTS times" >&2; status=1; }
done
kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; echo "socketio conformance: switchboard exited during the run" >&2; status=1; }
exit $status
