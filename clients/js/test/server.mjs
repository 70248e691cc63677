// Starts the real switchboard binary (target/debug/switchboard, or $SWITCHBOARD_BIN) on 127.0.0.1 and
// learns the ports it bound from its JSON log line, as scripts/test.sh does.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { before, after } from 'node:test';
import { Client } from '../switchboard.mjs';

const root = fileURLToPath(new URL('../../../', import.meta.url));
export const BIN = process.env.SWITCHBOARD_BIN ?? `${root}target/debug/switchboard`;
export const CONFIG = fileURLToPath(new URL('switchboard.toml', import.meta.url));
export const API_KEY = 'test-api-key';
export const HMAC_SECRET = 'test-hmac-secret';

/**
 * A running server. `port`/`apiPort` 0 pick free ports; pass the old ones to restart "the same"
 * server (the listener sets SO_REUSEADDR, so the port can be bound again at once).
 */
export async function startServer({ port = 0, apiPort = 0, config = CONFIG } = {}) {
  const child = spawn(
    BIN,
    ['serve', '--config', config, '--listen', `127.0.0.1:${port}`, '--api-listen', `127.0.0.1:${apiPort}`,
      '--log-format', 'json', '--log-level', 'warn,switchboard=info'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines = [];
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`switchboard did not start:\n${lines.join('\n')}`)), 10000);
    createInterface({ input: child.stderr }).on('line', (line) => {
      lines.push(line);
      const addr = /"addr":"127\.0\.0\.1:(\d+)"/.exec(line);
      const api = /"api":"127\.0\.0\.1:(\d+)"/.exec(line);
      if (addr && api) {
        clearTimeout(timer);
        resolve([Number(addr[1]), Number(api[1])]);
      }
    });
    exited.then(() => reject(new Error(`switchboard exited:\n${lines.join('\n')}`)));
  });
  const [bound, apiBound] = await listening;
  return {
    port: bound,
    apiPort: apiBound,
    url: `http://127.0.0.1:${bound}`,
    log: lines,
    /** Stops the server (SIGTERM: graceful; SIGKILL: a crash) and waits until it has exited. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    /** Calls a server API method (README: Pushing from your backend). */
    async api(method, body) {
      const res = await fetch(`http://127.0.0.1:${apiBound}/api/${method}`, {
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

/**
 * One server for the tests of a file: started before them, stopped after them with every client
 * made by `client`. `client(options)` makes and connects a Client of that server with `defaults`
 * under `options`. A test that restarts the server assigns the new one to `server`, so that later
 * tests and the stop at the end use it.
 */
export function serverForTests(defaults = {}) {
  const clients = [];
  const it = {
    /** The running server (`startServer`'s answer); set once the `before` hook ran. */
    server: undefined,
    client(options = {}) {
      const c = new Client(it.server.url, { ...defaults, ...options });
      clients.push(c);
      c.connect();
      return c;
    },
  };
  before(async () => {
    it.server = await startServer();
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await it.server.stop();
  });
  return it;
}
