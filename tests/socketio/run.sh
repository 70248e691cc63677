#!/usr/bin/env bash
# The stock socket.io-client (npm v4) against target/debug/switchboard (or $SWITCHBOARD_BIN): starts
# its own Redis (redis-server on PATH), backend and servers on 127.0.0.1. About 5 seconds.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
npm test
