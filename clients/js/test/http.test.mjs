// The client over the HTTP fallbacks (SSE, long polling, polling) against the real server, and the
// fallback from one transport to the next.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import { startServer, serverForTests } from './server.mjs';
import { until, next, collect, gatedFetch, HTTP_CLIENT_OPTIONS } from './helpers.mjs';

const files = serverForTests(HTTP_CLIENT_OPTIONS);
const { client } = files;

for (const transport of ['sse', 'long-poll', 'poll']) {
  test(`${transport}: two clients chat, with presence, join/leave and history`, { timeout: 15000 }, async () => {
    const a = client({ transports: [transport] });
    const b = client({ transports: [transport] });
    const channel = `chat:${transport}`;
    const subA = a.subscribe(channel);
    const subB = b.subscribe(channel);
    await Promise.all([subA.ready(), subB.ready()]);
    assert.deepEqual([a.transport, b.transport], [transport, transport]);
    const gotA = collect(subA);
    const gotB = collect(subB);
    for (let i = 1; i <= 5; i++) await (i % 2 ? subA : subB).publish(i);
    await until(() => gotA.length === 5 && gotB.length === 5, 'five publications at both');
    assert.deepEqual(gotA, [1, 2, 3, 4, 5]);
    assert.deepEqual(gotB, [1, 2, 3, 4, 5]);
    assert.deepEqual(Object.keys(await subA.presence()).sort(), [a.clientId, b.clientId].sort());
    assert.deepEqual((await subB.history()).publications.map((p) => p.data), [1, 2, 3, 4, 5]);
    const left = next(subA, 'leave', (l) => l.info.client === b.clientId);
    subB.unsubscribe();
    await left;
    assert.ok(a.stats.requests > 2 && a.stats.bytesDown > 0 && a.stats.bytesUp > 0);
  });

  test(`${transport}: recovers what was published while the network was down`, { timeout: 15000 }, async () => {
    const gate = gatedFetch(EventSource);
    const a = client({ transports: [transport], fetch: gate.fetch, EventSource: gate.EventSource });
    const channel = `chat:recover-${transport}`;
    const sub = a.subscribe(channel);
    await sub.ready();
    const got = collect(sub);
    await files.server.api('publish', { channel, data: 1 });
    await until(() => got.length === 1, 'the first publication');
    // Cut the network once the client has heard of the disconnect (a poll after the cut would not),
    // before it can reconnect.
    const off = a.on('disconnected', () => {
      gate.down = true;
      off();
    });
    const down = next(a, 'disconnected');
    await files.server.api('disconnect', { user: '', client: a.clientId, code: 3000 });
    assert.equal((await down).code, 3000);
    await until(() => gate.failed >= 2, 'reconnect attempts while down');
    await files.server.api('publish', { channel, data: 2 });
    await files.server.api('publish', { channel, data: 3 });
    const resubscribed = next(sub, 'subscribed');
    gate.down = false;
    assert.deepEqual(await resubscribed, {
      channel, epoch: sub.epoch, offset: 3, recoverable: true, wasRecovering: true, recovered: true,
    });
    await files.server.api('publish', { channel, data: 4 });
    await until(() => got.length >= 4, 'four publications');
    assert.deepEqual(got, [1, 2, 3, 4]);
  });
}

for (const transport of ['long-poll', 'poll']) {
  test(`${transport}: lost responses are sent again and delivered once`, { timeout: 15000 }, async () => {
    const gate = gatedFetch();
    const a = client({ transports: [transport], fetch: gate.fetch });
    const channel = `chat:lost-${transport}`;
    const sub = a.subscribe(channel);
    await sub.ready();
    const got = collect(sub);
    let lostPolls = 0;
    let lostSends = 0;
    gate.lose = (url, status, body) => {
      // The first downstream response with a publication in it, and the first upstream answer.
      if (url.includes('/poll?') && body.includes('"pub"') && lostPolls === 0) return ++lostPolls;
      if (url.includes('/send?') && status === 204 && lostSends === 0) return ++lostSends;
      return false;
    };
    await sub.publish('once'); // its 204 is lost: sent again with the same n, done once
    await files.server.api('publish', { channel, data: 'twice?' });
    await until(() => got.length >= 2, 'both publications');
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual([lostPolls, lostSends], [1, 1]);
    assert.deepEqual(got, ['once', 'twice?']);
    assert.deepEqual((await sub.history()).publications.map((p) => p.data), ['once', 'twice?']);
  });
}

test('long-poll: commands over the body limit (64 KiB) are split, and one too large alone fails alone', { timeout: 15000 }, async () => {
  const a = client({ transports: ['long-poll'] });
  const sub = a.subscribe('chat:large');
  await sub.ready();
  const got = collect(sub);
  const big = (i) => `${i}`.padEnd(20000, '.');
  // Four commands in one tick make one 80 KB body: refused, then sent in two halves.
  await Promise.all([1, 2, 3, 4].map((i) => sub.publish(big(i))));
  await assert.rejects(sub.publish('x'.repeat(70000)), { code: 106 });
  await sub.publish('small');
  await until(() => got.length === 5, 'five publications');
  assert.deepEqual(got.map((d) => d.slice(0, 5)), ['1....', '2....', '3....', '4....', 'small']);
  assert.equal(a.state, 'connected');
});

test('falls back when WebSocket connects nowhere, and remembers what worked', { timeout: 15000 }, async () => {
  let sockets = 0;
  // A WebSocket that a proxy swallows: it never opens, never fails.
  class Swallowed {
    constructor() {
      sockets++;
    }
    close() {}
  }
  const a = client({ WebSocket: Swallowed, connectTimeout: 300 });
  const errors = [];
  a.on('error', (e) => errors.push(e.transport));
  const connected = await next(a, 'connected');
  assert.equal(connected.transport, 'sse');
  assert.deepEqual(errors, ['websocket']);
  await files.server.api('disconnect', { user: '', client: a.clientId, code: 3000 });
  assert.equal((await next(a, 'connected')).transport, 'sse');
  assert.equal(sockets, 1, 'WebSocket was not tried again');
});

test('falls back from a refused WebSocket handshake at once, and without WebSocket nor EventSource to long polling', { timeout: 15000 }, async () => {
  const refused = client({ WebSocket: globalThis.WebSocket, websocketPath: '/no-such-endpoint' });
  assert.equal((await next(refused, 'connected', () => true, 3000)).transport, 'sse');
  const saved = globalThis.WebSocket;
  delete globalThis.WebSocket;
  try {
    const bare = client({ EventSource: undefined });
    assert.equal((await next(bare, 'connected')).transport, 'long-poll');
    const sub = bare.subscribe('chat:bare');
    await sub.ready();
    const got = collect(sub);
    await sub.publish('hi');
    await until(() => got.length === 1, 'the publication');
  } finally {
    globalThis.WebSocket = saved;
  }
});

test('sse, long-poll, poll: a server restart on the same port ends the session; the client opens a new one', { timeout: 40000 }, async () => {
  const cs = ['sse', 'long-poll', 'poll'].map((t) => client({ transports: [t] }));
  const subs = cs.map((c) => c.subscribe('chat:restart'));
  await Promise.all(subs.map((s) => s.ready()));
  const got = subs.map(collect);
  const { port, apiPort } = files.server;
  await files.server.stop('SIGKILL');
  files.server = await startServer({ port, apiPort });
  await Promise.all(subs.map((s) => next(s, 'subscribed', (ctx) => ctx.wasRecovering && !ctx.recovered, 30000)));
  await files.server.api('publish', { channel: 'chat:restart', data: 'after' });
  await until(() => got.every((g) => g.length === 1), 'the publication after the restart at every client');
  assert.deepEqual(got, [['after'], ['after'], ['after']]);
  assert.deepEqual(cs.map((c) => c.transport), ['sse', 'long-poll', 'poll']);
});
