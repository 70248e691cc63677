// The client over WebSocket against the real server: commands, recovery, reconnection and its
// advice, backoff, and tokens.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoff, shouldReconnect } from '../switchboard.mjs';
import { startServer, serverForTests } from './server.mjs';
import { until, next, collect, token, gatedWebSocket } from './helpers.mjs';

const files = serverForTests({
  transports: ['websocket'],
  WebSocket: globalThis.WebSocket,
  minReconnectDelay: 50,
  maxReconnectDelay: 300,
});
const { client } = files;

test('connects, subscribes, publishes and reads presence and history', { timeout: 15000 }, async () => {
  const a = client();
  const b = client();
  const subA = a.subscribe('chat:basic');
  const subB = b.subscribe('chat:basic');
  await Promise.all([subA.ready(), subB.ready()]);
  assert.equal(a.transport, 'websocket');
  const joined = next(subA, 'join', (j) => j.info.client === c.clientId);
  const c = client();
  const subC = c.subscribe('chat:basic');
  await subC.ready();
  await joined;
  const gotB = collect(subB);
  const r = await subA.publish({ text: 'hello' });
  assert.equal(r.offset, 1);
  await until(() => gotB.length === 1, 'the publication at b');
  assert.deepEqual(gotB, [{ text: 'hello' }]);
  const presence = await subB.presence();
  assert.deepEqual(Object.keys(presence).sort(), [a.clientId, b.clientId, c.clientId].sort());
  assert.equal((await subB.presenceStats()).num_clients, 3);
  const h = await subB.history({ limit: 10 });
  assert.deepEqual(h.publications.map((p) => p.data), [{ text: 'hello' }]);
  const left = next(subA, 'leave', (l) => l.info.client === c.clientId);
  c.disconnect();
  await left;
  await assert.rejects(a.publish('nope:x', 1), { code: 102 });
  await assert.rejects(a.subscribe('nope:x').ready(), { code: 102 });
});

test('recovers publications missed while the network was down, exactly once and in order', { timeout: 15000 }, async () => {
  const gate = gatedWebSocket();
  const a = client({ WebSocket: gate.WebSocket });
  const sub = a.subscribe('chat:recover');
  await sub.ready();
  const got = collect(sub);
  await files.server.api('publish', { channel: 'chat:recover', data: 1 });
  await until(() => got.length === 1, 'the first publication');
  gate.down = true;
  const down = next(a, 'disconnected');
  await files.server.api('disconnect', { user: '', client: a.clientId, code: 3000 });
  assert.equal((await down).reconnect, true);
  await files.server.api('publish', { channel: 'chat:recover', data: 2 });
  await files.server.api('publish', { channel: 'chat:recover', data: 3 });
  await until(() => gate.opened >= 3, 'reconnect attempts while down');
  const resubscribed = next(sub, 'subscribed');
  gate.down = false;
  const s = await resubscribed;
  assert.equal(s.wasRecovering, true);
  assert.equal(s.recovered, true);
  await files.server.api('publish', { channel: 'chat:recover', data: 4 });
  await until(() => got.length >= 4, 'four publications');
  assert.deepEqual(got, [1, 2, 3, 4]);
  assert.equal(sub.offset, 4);
});

test('recovers more than the server queues for one client: the rest follows the reply as pushes', { timeout: 30000 }, async () => {
  // 100 publications of 30 KB missed: three times the server's default queue_bytes (1 MiB), so the
  // subscribe reply carries only the first ones (docs/protocol.md, Recovery).
  const gate = gatedWebSocket();
  const a = client({ WebSocket: gate.WebSocket });
  const sub = a.subscribe('chat:big-recovery');
  await sub.ready();
  const got = collect(sub);
  await files.server.api('publish', { channel: 'chat:big-recovery', data: 0 });
  await until(() => got.length === 1, 'the first publication');
  gate.down = true;
  const down = next(a, 'disconnected');
  await files.server.api('disconnect', { user: '', client: a.clientId, code: 3000 });
  await down;
  const pad = 'x'.repeat(30000);
  for (let i = 1; i <= 99; i++) await files.server.api('publish', { channel: 'chat:big-recovery', data: { i, pad } });
  const resubscribed = next(sub, 'subscribed');
  gate.down = false;
  const s = await resubscribed;
  assert.equal(s.recovered, true);
  await files.server.api('publish', { channel: 'chat:big-recovery', data: { i: 100 } });
  await until(() => got.length >= 101, 'every publication', 20000);
  assert.deepEqual(got.map((d) => (typeof d === 'number' ? d : d.i)), [...Array(101).keys()]);
  assert.equal(sub.offset, 101);
});

test('a server restart on the same port: reconnects, and says the stream was lost', { timeout: 20000 }, async () => {
  const a = client();
  const sub = a.subscribe('chat:restart');
  await sub.ready();
  const got = collect(sub);
  await sub.publish('before');
  await until(() => got.length === 1, 'the publication before the restart');
  const down = next(a, 'disconnected');
  const { port, apiPort } = files.server;
  await files.server.stop('SIGTERM');
  const d = await down;
  assert.equal(d.reconnect, true);
  assert.ok([1001, 3001].includes(d.code), `close code ${d.code}`);
  const resubscribed = next(sub, 'subscribed', () => true, 15000);
  files.server = await startServer({ port, apiPort });
  const s = await resubscribed;
  // The in-memory engine lost the stream: a new epoch, nothing to recover.
  assert.deepEqual([s.wasRecovering, s.recovered], [true, false]);
  await sub.publish('after');
  await until(() => got.length === 2, 'the publication after the restart');
  assert.deepEqual(got, ['before', 'after']);
});

test('follows the server advice: 3503 stays disconnected, 3000 reconnects', { timeout: 15000 }, async () => {
  const gate = gatedWebSocket();
  const a = client({ WebSocket: gate.WebSocket });
  await next(a, 'connected');
  let down = next(a, 'disconnected');
  await files.server.api('disconnect', { user: '', client: a.clientId, code: 3000 });
  assert.deepEqual(await down, { code: 3000, reason: 'normal', reconnect: true });
  await next(a, 'connected');
  assert.equal(gate.opened, 2);
  down = next(a, 'disconnected');
  await files.server.api('disconnect', { user: '', client: a.clientId, code: 3503 });
  assert.deepEqual(await down, { code: 3503, reason: 'force disconnect', reconnect: false });
  assert.equal(a.state, 'disconnected');
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(gate.opened, 2, 'no reconnect after 3503');
});

test('backoff: full jitter under an exponential cap', () => {
  const top = (n) => backoff(n, 100, 1000, () => 0.999999);
  assert.deepEqual([0, 1, 2, 3, 4, 10, 100].map(top), [99, 199, 399, 799, 999, 999, 999]);
  assert.equal(backoff(5, 100, 1000, () => 0), 0);
  assert.equal(shouldReconnect(3008), true);
  assert.equal(shouldReconnect(1006), true);
  assert.equal(shouldReconnect(3500), false);
});

test('backoff: keeps retrying an unreachable server, never faster than it should nor slower than the max', { timeout: 15000 }, async () => {
  const gate = gatedWebSocket();
  gate.down = true;
  const attempts = [];
  const a = client({ WebSocket: gate.WebSocket, minReconnectDelay: 20, maxReconnectDelay: 200 });
  a.on('error', () => attempts.push(Date.now()));
  await new Promise((r) => setTimeout(r, 3000));
  a.disconnect();
  const gaps = attempts.slice(1).map((t, i) => t - attempts[i]);
  // Without backoff a refused connection is retried hundreds of times in 3 s; with a 200 ms cap
  // (100 ms on average) about 30.
  assert.ok(attempts.length >= 8 && attempts.length <= 60, `${attempts.length} attempts`);
  assert.ok(Math.max(...gaps) < 200 + 250, `gaps ${gaps}`);
  assert.equal(a.state, 'disconnected');
});

test('tokens: an expired one is replaced through getToken, and the connection is refreshed before expiry', { timeout: 15000 }, async () => {
  const issued = [];
  const a = client({
    getToken: () => {
      // The first token has already expired: connect fails with 109 and asks again.
      const t = token('alice', issued.length === 0 ? -10 : 3);
      issued.push(t);
      return t;
    },
  });
  const errors = [];
  a.on('error', (e) => errors.push(e.error.code));
  const connected = await next(a, 'connected');
  assert.equal(connected.expires, true);
  assert.deepEqual(errors, [109]);
  const sub = a.subscribe('chat:tokens');
  await sub.ready();
  const presence = await sub.presence();
  assert.equal(presence[a.clientId].user, 'alice');
  let disconnects = 0;
  a.on('disconnected', () => disconnects++);
  // Past the 3 s token's expiry: refreshed at about 1.5 s, so the server kept the connection.
  await new Promise((r) => setTimeout(r, 4000));
  assert.ok(issued.length >= 3, `${issued.length} tokens issued`);
  assert.equal(disconnects, 0);
  assert.equal(a.state, 'connected');
});

test('a line that does not parse is reported through the error event, and the frame goes on', { timeout: 15000 }, async () => {
  // A WebSocket that puts an unparseable publication line in front of the server's first `pub` frame.
  let corrupted = false;
  class Corrupting extends globalThis.WebSocket {
    set onmessage(fn) {
      super.onmessage = (e) => {
        let data = e.data;
        if (!corrupted && typeof data === 'string' && data.includes('"pub"')) {
          corrupted = true;
          data = `{"pub":{"channel":"chat:bad","offset":7,"data":[1,}}\n${data}`;
        }
        fn({ data });
      };
    }
  }
  const c = client({ WebSocket: Corrupting });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const sub = c.subscribe('chat:bad');
  await sub.ready();
  const got = collect(sub);
  await sub.publish({ n: 1 });
  await until(() => got.length === 1, 'the publication after the bad line');
  assert.deepEqual(got, [{ n: 1 }]);
  const bad = errors.find((e) => e.type === 'message');
  assert.ok(bad, `an error event of type message: ${JSON.stringify(errors)}`);
  assert.equal(bad.channel, 'chat:bad');
  assert.equal(bad.offset, 7);
  assert.ok(bad.error instanceof SyntaxError);
});
