#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests, the full Autobahn conformance
# run against /echo (permessage-deflate required), the official Engine.IO and Socket.IO suites, a
# short fuzz run of every fuzz target, the JS client's tests and the browser end-to-end tests.
# scripts/setup.sh installs what they need.
# README's Quick start names this command and CI (.ci/run) calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHARED=${SWITCHBOARD_SHARED:-../shared}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
if [ ! -x "$SHARED/tools/autobahn/run.sh" ] || [ ! -x "$SHARED/conformance/socketio/run.sh" ]; then
  echo "test: $SHARED/tools/autobahn/run.sh or $SHARED/conformance/socketio/run.sh not found; the shared tools must sit beside the project" \
    "(../shared) or be named by SWITCHBOARD_SHARED" >&2
  exit 1
fi
SHARED=$(cd "$SHARED" && pwd)

scripts/setup.sh

# Each step prints the minutes and seconds since the suite began, so a slow step shows in CI's log.
step() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and integration tests"
cargo test --workspace --locked

# Autobahn (about 9 minutes, most of it the single-threaded Python client waiting on timers) and the
# fuzz smoke (one core, flat out) barely compete on a 2-core machine, so they run side by side: the
# suite fits CI's 45 minutes that way. Autobahn's output is kept in a file and printed when it ends.
step "autobahn (in the background): all cases 1.* to 13.* against /echo; fuzz smoke beside it"
cargo build --release --locked -p switchboard
autobahn_log=$(mktemp)
(
  set -euo pipefail
  log=$(mktemp)
  "$ROOT/target/release/switchboard" serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --echo --log-format json --log-level warn,switchboard=info 2>"$log" &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's/.*"addr":"\([0-9.]*:[0-9]*\)".*/\1/p' "$log" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$log"; echo "switchboard did not start" >&2; exit 1; }
  AUTOBAHN_PATH=/echo AUTOBAHN_REQUIRE_DEFLATE=1 AUTOBAHN_AGENT=switchboard \
    AUTOBAHN_OUTDIR="$ROOT/target/autobahn" \
    "$SHARED/tools/autobahn/run.sh" "${addr%:*}" "${addr##*:}"
  kill -TERM $server
  wait $server
  trap - EXIT
) >"$autobahn_log" 2>&1 &
autobahn=$!
# On a failure of what runs beside it, Autobahn's client and server go too (its children first: the
# subshell alone would leave them running).
trap 'pkill -TERM -P $autobahn 2>/dev/null || true; kill $autobahn 2>/dev/null || true' EXIT

step "fuzz smoke (${FUZZ_SECONDS}s per target)"
(
  cd fuzz
  for target in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
    mkdir -p "corpus/$target"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -max_len=8192 -dict=handshake.dict 2>&1 | tail -n 1
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz target $target failed" >&2; exit 1; }
  done
)

step "autobahn: waiting for the run started above"
autobahn_status=0
wait $autobahn || autobahn_status=$?
trap - EXIT
cat "$autobahn_log"
[ "$autobahn_status" -eq 0 ] || { echo "autobahn failed (exit $autobahn_status)" >&2; exit 1; }

step "socket.io conformance: the official Engine.IO and Socket.IO suites, unchanged (a failed suite is retried twice)"
scripts/socketio-conformance.sh "$ROOT/target/release/switchboard" "$SHARED"

# ---- JavaScript client and browser end-to-end tests (clients/js, tests/browser) ---------------------
# Both start target/debug/switchboard themselves (built by the cargo test step above) on free ports.
# Chromium is Debian's (/usr/bin/chromium); no test tool downloads a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
for dir in clients/js tests/browser; do
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done

step "JavaScript client: node tests over every transport, and npm pack installed into fresh CommonJS and ESM projects"
(cd clients/js && npm test)

step "Socket.IO: the stock socket.io-client over polling, WebSocket and the upgrade; rpc, binary, recovery across a restart and two nodes on Redis"
tests/socketio/run.sh

step "browser end-to-end tests: the chat demo in headless Chromium"
tests/browser/run.sh

step "all tests passed"
