// What a user of the client sees around the edges of a connection: an HTTP session ends on the server
// the moment the client ends it (disconnect, a transport switch), the state never says "connected"
// while requests fail, and the client says which transport it chose and why.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { EventSource } from 'eventsource';
import { startServer, serverForTests } from './server.mjs';
import { until, next, gatedFetch, HTTP_CLIENT_OPTIONS } from './helpers.mjs';

const files = serverForTests(HTTP_CLIENT_OPTIONS);
const { client } = files;

for (const transport of ['sse', 'long-poll', 'poll']) {
  test(`${transport}: disconnect() ends the session at once: others see the leave within a second`, { timeout: 15000 }, async () => {
    const channel = `chat:bye-${transport}`;
    const watcher = client({ transports: ['websocket'] });
    const w = watcher.subscribe(channel);
    await w.ready();
    const leaver = client({ transports: [transport] });
    const sub = leaver.subscribe(channel);
    await sub.ready();
    const id = leaver.clientId;
    await until(async () => Object.keys(await w.presence()).length === 2, 'both present');
    const left = next(w, 'leave', (l) => l.info.client === id, 1000);
    const started = Date.now();
    leaver.disconnect();
    await left; // fails after 1 s; session_timeout is 30 s
    assert.ok(Date.now() - started < 1000);
    assert.deepEqual(Object.keys(await w.presence()), [watcher.clientId]);
  });
}

test('a transport switch (disconnect, then a client on another transport) leaves no ghost behind', { timeout: 15000 }, async () => {
  const channel = 'chat:switch';
  const watcher = client({ transports: ['websocket'] });
  const w = watcher.subscribe(channel);
  await w.ready();
  let current = null;
  for (const transport of ['sse', 'long-poll', 'poll', 'websocket']) {
    current?.disconnect();
    current = client({ transports: [transport] });
    await current.subscribe(channel).ready();
  }
  await until(async () => Object.keys(await w.presence()).length === 2, 'the watcher and the last client only', 2000);
});

for (const transport of ['poll', 'long-poll', 'sse']) {
  test(`${transport}: the first failed request shows "connecting" with the next try, and "connected" once requests work again`, { timeout: 15000 }, async () => {
    const gate = gatedFetch(EventSource);
    const c = client({ transports: [transport], fetch: gate.fetch, EventSource: gate.EventSource, minReconnectDelay: 200 });
    const sub = c.subscribe(`chat:truth-${transport}`);
    await sub.ready();
    assert.equal(c.state, 'connected');
    const failedBefore = gate.failed;
    const reconnecting = next(c, 'reconnecting', () => true, 5000);
    gate.down = true;
    if (transport === 'sse') gate.dropStreams?.();
    // The long poll held on the server must end first: a command makes a request fail now.
    sub.publish('x').catch(() => {});
    const r = await reconnecting;
    assert.equal(c.state, 'connecting');
    assert.equal(gate.failed, failedBefore + 1, 'after the first failed request, not later');
    assert.ok(r.delay > 0 && c.retryAt > Date.now() - 50, `retry shown: ${JSON.stringify(r)}`);
    const back = next(c, 'state', (s) => s.state === 'connected', 8000);
    gate.down = false;
    await back;
    assert.equal(c.transport, transport);
  });
}

test('Node without WebSocket: the debug output says once which transport was chosen and why', { timeout: 15000 }, async () => {
  const lib = fileURLToPath(new URL('../switchboard.mjs', import.meta.url));
  // Node 20 without --experimental-websocket has no WebSocket; on later versions take it away.
  const script = `
    delete globalThis.WebSocket;
    const { Client } = await import(${JSON.stringify(lib)});
    const c = new Client(${JSON.stringify(files.server.url)}, { minReconnectDelay: 50 });
    c.connect();
    await c.once('connected');
    c.disconnect();
    c.connect();
    await c.once('connected');
    c.disconnect();
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, NODE_DEBUG: 'switchboard' },
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const code = await new Promise((resolve) => child.on('exit', resolve));
  assert.equal(code, 0, out);
  const lines = out.split('\n').filter((l) => l.includes('switchboard: connected over'));
  assert.equal(lines.length, 1, out);
  assert.match(lines[0], /connected over long-poll \(not websocket: no WebSocket in Node .*--experimental-websocket.*; sse: no EventSource/);
});

test('long-poll: a command made while requests fail is kept, and goes out once a new session works', { timeout: 30000 }, async () => {
  const c = client({ transports: ['long-poll'] });
  const sub = c.subscribe('chat:kept');
  await sub.ready();
  const { port, apiPort } = files.server;
  await files.server.stop('SIGKILL');
  await next(c, 'reconnecting', () => true, 5000);
  // Never sent: the session it was for ends (404 from the new server), and it waits for the next.
  const published = sub.publish('kept');
  files.server = await startServer({ port, apiPort });
  await published;
  await until(async () => (await sub.history()).publications.some((p) => p.data === 'kept'), 'kept in history', 8000);
});
