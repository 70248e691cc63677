// Bench-only peer: an echo server on Node's `ws` package with its defaults (no
// permessage-deflate), answering on any path, used by switchboard-bench as a non-Rust reference.
// Usage: node echo.js --listen 127.0.0.1:9001
'use strict';

const { WebSocketServer } = require('ws');

const i = process.argv.indexOf('--listen');
const listen = i >= 0 ? process.argv[i + 1] : '127.0.0.1:9001';
const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

const wss = new WebSocketServer({ host, port });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  // Resets at the end of a run are expected.
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`node-ws echo server listening on ${listen}`));
