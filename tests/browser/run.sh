#!/usr/bin/env bash
# The browser end-to-end tests: builds the debug server if needed, then runs chat.test.mjs (the chat
# demo), socketio.test.mjs (its Socket.IO page beside the native one) and console.test.mjs (the
# operator's console; its two-node test needs redis-server and is skipped without), which start
# target/debug/switchboard on free ports themselves and drive headless Chromium (never downloaded:
# /usr/bin/chromium, or $CHROMIUM). SCREENSHOT=1 also writes docs/demo.png and docs/console.png.
set -euo pipefail
cd "$(dirname "$0")"
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || { echo "browser tests: $chromium not found (apt-get install chromium)" >&2; exit 1; }
[ -d node_modules/playwright-core ] && [ -d node_modules/axe-core ] || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
(cd ../.. && cargo build --locked -p switchboard --quiet)
exec node --test --test-concurrency=1 chat.test.mjs socketio.test.mjs console.test.mjs
