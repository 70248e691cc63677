#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine, and nothing that is already there.
# Safe to run again: every step first checks whether its tool is present.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=${SWITCHBOARD_SHARED:-../shared}
AUTOBAHN_VENV=${AUTOBAHN_VENV:-/tmp/autobahn-venv}

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v php >/dev/null || need_apt+=(php-cli)              # examples/php
command -v redis-server >/dev/null || need_apt+=(redis-server) # the Redis engine's tests
command -v redis-cli >/dev/null || need_apt+=(redis-tools)     # creates the Redis Cluster of tests
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server) # the NATS engine's tests
[ -x /usr/bin/chromium ] || need_apt+=(chromium)               # browser tests (never downloaded)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

# The JS client and the browser tests need Node 20 or later (its WebSocket and fetch).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: Node.js 20 or later is required for clients/js and tests/browser (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

# Autobahn|Testsuite (WebSocket conformance), ported to Python 3 by the shared tools.
if [ ! -x "$AUTOBAHN_VENV/bin/wstest" ]; then
  if [ ! -x "$SHARED/tools/autobahn/setup.sh" ]; then
    echo "setup: $SHARED/tools/autobahn/setup.sh not found; set SWITCHBOARD_SHARED to the shared folder" >&2
    exit 1
  fi
  echo "setup: installing the Autobahn testsuite into $AUTOBAHN_VENV"
  AUTOBAHN_VENV="$AUTOBAHN_VENV" "$SHARED/tools/autobahn/setup.sh" >/tmp/autobahn-setup.log 2>&1 \
    || { tail -20 /tmp/autobahn-setup.log; exit 1; }
fi

# cargo-fuzz, for the fuzz smoke run (the fuzz targets build with RUSTC_BOOTSTRAP on stable).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
echo "setup: ready"
