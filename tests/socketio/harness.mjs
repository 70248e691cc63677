// Starts what the tests need, all on 127.0.0.1: Redis (for the two-node tests), a tiny HTTP backend
// answering the rpc proxy, and the real switchboard binary (target/debug/switchboard, or
// $SWITCHBOARD_BIN) with Socket.IO and connection state recovery on, learning its ports from its
// JSON log line as scripts/test.sh does.
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createServer as createTcp } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const root = fileURLToPath(new URL('../../', import.meta.url));
export const BIN = process.env.SWITCHBOARD_BIN ?? `${root}target/debug/switchboard`;
export const API_KEY = 'socketio-test-api-key';

/** A free TCP port on 127.0.0.1 (for Redis, which cannot report the one it bound). */
async function freePort() {
  const s = createTcp();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

/** A throwaway Redis; `stop()` ends it. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('redis-server did not start')), 10000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (/Ready to accept connections/.test(line)) { clearTimeout(timer); resolve(); }
    });
  });
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
}

/**
 * The application's backend: answers the rpc proxy. `buy` answers its arguments back with `ok`,
 * `fail` refuses with code 1403; every call is recorded in `calls`.
 */
export async function startBackend() {
  const calls = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const call = JSON.parse(body);
      calls.push(call);
      const answer = call.method === 'fail'
        ? { error: { code: 1403, message: 'not allowed' } }
        : { result: { data: { ok: true, method: call.method, args: call.data } } };
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}/rpc`, calls, stop: () => server.close() };
}

/** A config file: Socket.IO with recovery, namespace `h` with history, the rpc proxy, an engine. */
export function writeConfig({ rpc, redis }) {
  const dir = mkdtempSync(join(tmpdir(), 'switchboard-sio-'));
  const file = join(dir, 'switchboard.toml');
  writeFileSync(file, `
[api]
key = "${API_KEY}"

[client]
allow_anonymous = true

[socketio]
enabled = true
recovery = true
ping_interval = "1s"
ping_timeout = "1s"


[socketio.namespaces]
"/chat" = "h:"

[proxy]
rpc = "${rpc}"

[channels.namespaces.h]
history_size = 1000
history_ttl = "10m"
recover = true
allow_publish = true

[shutdown]
drain_timeout = "1s"
${redis ? `\n[engine]\ntype = "redis"\n\n[engine.redis]\naddresses = ["${redis}"]\n` : ''}`);
  return file;
}

/** A running switchboard; `port` 0 picks a free one, an old one restarts "the same" server. */
export async function startServer(config, { port = 0 } = {}) {
  const child = spawn(
    BIN,
    ['serve', '--config', config, '--listen', `127.0.0.1:${port}`, '--api-listen', '127.0.0.1:0',
      '--log-format', 'json', '--log-level', 'warn,switchboard=info'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = [];
  const [bound, api] = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`switchboard did not start:\n${lines.join('\n')}`)), 10000);
    createInterface({ input: child.stderr }).on('line', (line) => {
      lines.push(line);
      const addr = /"addr":"127\.0\.0\.1:(\d+)"/.exec(line);
      const apiAddr = /"api":"127\.0\.0\.1:(\d+)"/.exec(line);
      if (addr && apiAddr) { clearTimeout(timer); resolve([Number(addr[1]), Number(apiAddr[1])]); }
    });
    exited.then(() => reject(new Error(`switchboard exited:\n${lines.join('\n')}`)));
  });
  return {
    port: bound,
    url: `http://127.0.0.1:${bound}`,
    log: lines,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    async api(method, body) {
      const res = await fetch(`http://127.0.0.1:${api}/api/${method}`, {
        method: 'POST',
        headers: { Authorization: `apikey ${API_KEY}`, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      const json = await res.json();
      if (!res.ok) throw new Error(`api ${method}: ${res.status} ${JSON.stringify(json)}`);
      return json.result;
    },
  };
}

/** Resolves with the next `event` of `emitter`'s arguments, or fails after `ms`. */
export function next(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    emitter.once(event, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

/** Waits until `predicate()` holds, or fails after `ms`. */
export async function until(predicate, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
