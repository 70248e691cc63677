// The stock socket.io-client (npm v4) against switchboard: transports, events both ways through the
// application's rpc handler, acks, binary, rooms reached by the server API, connection state
// recovery across a restart and across two nodes on Redis, and polling behind a round-robin balancer
// without sticky sessions.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest } from 'node:http';
import { connect as tcpConnect } from 'node:net';
import { io } from 'socket.io-client';
import { startBackend, startRedis, startServer, writeConfig, next, until } from './harness.mjs';

let redis;
let backend;
let config;
const sockets = [];

function connect(url, options = {}) {
  const s = io(url, { reconnectionDelay: 50, reconnectionDelayMax: 200, ...options });
  sockets.push(s);
  return s;
}

/** Emits with an ack; resolves with the ack's arguments (fails when none comes in 5 s). */
function ack(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(5000).emit(event, ...args, (timeout, ...answer) => (timeout ? reject(timeout) : resolve(answer)));
  });
}

/** Joins `channel` through the `subscribe` emit; resolves when acked. */
async function join(socket, channel) {
  const [err] = await ack(socket, 'subscribe', channel);
  assert.equal(err, null);
}

before(async () => {
  redis = await startRedis();
  backend = await startBackend();
  config = writeConfig({ rpc: backend.url, redis: redis.url });
});

after(() => {
  for (const s of sockets) s.disconnect();
  backend.stop();
  redis.stop();
});

for (const [name, transports] of [
  ['polling only', ['polling']],
  ['websocket only', ['websocket']],
  ['polling upgraded to websocket', ['polling', 'websocket']],
]) {
  test(`${name}: events both ways, acks, binary, rooms from the server API`, async () => {
    const server = await startServer(config);
    try {
      const socket = connect(server.url, { transports });
      await next(socket, 'connect');
      if (transports.length === 2) {
        await until(() => socket.io.engine.transport.name === 'websocket', 5000, 'the upgrade');
      }
      // An emit with an ack reaches the application's rpc handler; its answer is the ack.
      const [err, reply] = await ack(socket, 'buy', { item: 7 }, 2);
      assert.equal(err, null);
      assert.deepEqual(reply, { ok: true, method: 'buy', args: [{ item: 7 }, 2] });
      const [refused] = await ack(socket, 'fail');
      assert.equal(refused.code, 1403);
      // Without an ack the handler gets it all the same.
      socket.emit('typing', 'me');
      await until(() => backend.calls.some((c) => c.method === 'typing' && c.data[0] === 'me'), 5000, 'typing');
      // A room joined by the socket; publications arrive as events.
      await join(socket, 'h:room');
      const chat = next(socket, 'chat');
      await server.api('publish', { channel: 'h:room', data: { event: 'chat', args: ['hi', { n: 1 }] } });
      const [text, obj] = await chat;
      assert.deepEqual([text, obj], ['hi', { n: 1 }]);
      // Binary: publish(channel, bytes) is a binary publication, which comes back as bytes.
      const bin = next(socket, 'publication');
      socket.emit('publish', 'h:room', Buffer.from([0, 1, 255]));
      const [channel, bytes] = await bin;
      assert.equal(channel, 'h:room');
      assert.deepEqual([...Buffer.from(bytes)], [0, 1, 255]);
      // Other binary arguments are refused with a clear error.
      const [binErr] = await ack(socket, 'buy', Buffer.from([1]));
      assert.equal(binErr.code, 415);
      // A room the server API puts the socket in.
      await server.api('subscribe', { user: '', client: socket.id, channel: 'h:api' });
      const pushed = next(socket, 'publication');
      await server.api('publish', { channel: 'h:api', data: { x: 1 } });
      const [apiChannel, data] = await pushed;
      assert.deepEqual([apiChannel, data], ['h:api', { x: 1 }]);
      socket.disconnect();
    } finally {
      await server.stop();
    }
  });
}

/** Publishes `from..to` to `channel` as `n` events. */
async function publishRange(server, channel, from, to) {
  for (let n = from; n <= to; n++) {
    await server.api('publish', { channel, data: { event: 'n', args: [n] } });
  }
}

test('a reconnect across a restart recovers everything missed (socket.recovered)', async () => {
  let server = await startServer(config);
  const port = server.port;
  const socket = connect(server.url, { transports: ['websocket'] });
  const seen = [];
  socket.on('n', (n) => seen.push(n));
  await next(socket, 'connect');
  assert.equal(socket.recovered, false);
  await join(socket, 'h:restart');
  await publishRange(server, 'h:restart', 1, 3);
  await until(() => seen.length === 3, 5000, 'the first three');
  await server.stop('SIGKILL');
  // Published while the socket has no server (through another node on the same Redis).
  const other = await startServer(config);
  await publishRange(other, 'h:restart', 4, 6);
  await other.stop();
  server = await startServer(config, { port });
  try {
    await next(socket, 'connect', 10000);
    assert.equal(socket.recovered, true);
    await until(() => seen.length === 6, 5000, 'the missed three');
    await publishRange(server, 'h:restart', 7, 7);
    await until(() => seen.length === 7, 5000, 'a live one');
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7]);
  } finally {
    socket.disconnect();
    await server.stop();
  }
});

test('a reconnect to another node on Redis recovers everything missed', async () => {
  const a = await startServer(config);
  const b = await startServer(config);
  try {
    // The client goes to a first, then to b (as a load balancer would send it).
    let target = a.url;
    const socket = connect(a.url, { transports: ['polling'] });
    socket.io.uri = a.url;
    const seen = [];
    socket.on('n', (n) => seen.push(n));
    await next(socket, 'connect');
    await join(socket, 'h:nodes');
    await publishRange(a, 'h:nodes', 1, 2);
    await until(() => seen.length === 2, 5000, 'the first two');
    target = b.url;
    socket.io.uri = target;
    socket.io.opts.hostname = '127.0.0.1';
    socket.io.opts.port = String(b.port);
    socket.io.engine.close();
    await publishRange(b, 'h:nodes', 3, 5);
    await next(socket, 'connect', 10000);
    assert.equal(socket.recovered, true);
    await until(() => seen.length === 5, 5000, 'the missed ones');
    assert.deepEqual(seen, [1, 2, 3, 4, 5]);
    socket.disconnect();
  } finally {
    await a.stop();
    await b.stop();
  }
});

test('a namespace is a channel prefix, with recovery of its own', async () => {
  const server = await startServer(config);
  try {
    const chat = connect(`${server.url}/chat`, { transports: ['websocket'] });
    const seen = [];
    chat.on('say', (text) => seen.push(text));
    await next(chat, 'connect');
    await join(chat, 'lobby');
    await server.api('publish', { channel: 'h:lobby', data: { event: 'say', args: ['one'] } });
    await until(() => seen.length === 1, 5000, 'the first');
    chat.io.engine.close();
    await server.api('publish', { channel: 'h:lobby', data: { event: 'say', args: ['two'] } });
    await next(chat, 'connect', 10000);
    assert.equal(chat.recovered, true);
    await until(() => seen.length === 2, 5000, 'the missed one');
    assert.deepEqual(seen, ['one', 'two']);
    chat.disconnect();
  } finally {
    await server.stop();
  }
});

test('a client whose WebSocket is blocked stays on polling', async () => {
  const server = await startServer(config);
  // A proxy that forwards plain HTTP and drops every upgrade, as some corporate proxies do.
  const proxy = createServer((req, res) => {
    const up = httpRequest(`${server.url}${req.url}`, { method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    req.pipe(up);
  });
  proxy.on('upgrade', (_req, sock) => sock.destroy());
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  try {
    const socket = connect(`http://127.0.0.1:${proxy.address().port}`, { transports: ['polling', 'websocket'] });
    await next(socket, 'connect');
    await join(socket, 'h:blocked');
    const got = next(socket, 'n');
    await server.api('publish', { channel: 'h:blocked', data: { event: 'n', args: [1] } });
    assert.equal((await got)[0], 1);
    // The upgrade was tried and failed: the session goes on over polling.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(socket.io.engine.transport.name, 'polling');
    assert.equal(socket.connected, true);
    const [err, reply] = await ack(socket, 'buy', 1);
    assert.equal(err, null);
    assert.equal(reply.ok, true);
    socket.disconnect();
  } finally {
    proxy.close();
    await server.stop();
  }
});

/**
 * A load balancer without sticky sessions over `servers`: each HTTP request goes to the next server in
 * turn, the first to the first; WebSocket upgrades go to `servers[upgradesTo]`. `landed[i]` counts
 * the requests server i got.
 */
async function roundRobin(servers, { upgradesTo = 0 } = {}) {
  let turn = 0;
  const landed = servers.map(() => 0);
  const proxy = createServer((req, res) => {
    const i = turn++ % servers.length;
    landed[i]++;
    const up = httpRequest(
      { host: '127.0.0.1', port: servers[i].port, path: req.url, method: req.method, headers: req.headers },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  proxy.on('upgrade', (req, sock, head) => {
    const up = tcpConnect(servers[upgradesTo].port, '127.0.0.1', () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let k = 0; k < req.rawHeaders.length; k += 2) lines.push(`${req.rawHeaders[k]}: ${req.rawHeaders[k + 1]}`);
      up.write(`${lines.join('\r\n')}\r\n\r\n`);
      up.write(head);
      sock.pipe(up).pipe(sock);
    });
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${proxy.address().port}`, landed, close: () => proxy.close() };
}

for (const [name, transports] of [
  ['polling only', ['polling']],
  ['polling whose upgrade lands on the other node', ['polling', 'websocket']],
]) {
  test(`no sticky sessions, ${name}: requests alternate between two nodes, nothing lost`, async () => {
    const a = await startServer(config);
    const b = await startServer(config);
    // The handshake lands on a (the first in turn); the upgrade, if any, on b, which cannot take it.
    const balancer = await roundRobin([a, b], { upgradesTo: 1 });
    try {
      const socket = connect(balancer.url, { transports });
      // The engine exists from here on (the manager opens at once); the probe comes after `open`.
      const engine = socket.io.engine;
      const upgradeErrors = [];
      engine.on('upgradeError', (e) => upgradeErrors.push(e));
      let closed = false;
      engine.on('close', () => { closed = true; });
      const seen = [];
      socket.on('n', (n) => seen.push(n));
      await next(socket, 'connect');
      await join(socket, 'h:rr');
      for (let n = 1; n <= 20; n++) {
        await (n % 2 ? a : b).api('publish', { channel: 'h:rr', data: { event: 'n', args: [n] } });
        if (n % 5 === 0) {
          // An emit through a POST on either node reaches the rpc handler; its ack comes back.
          const [err, reply] = await ack(socket, 'buy', n);
          assert.equal(err, null);
          assert.deepEqual(reply.args, [n]);
        }
      }
      await until(() => seen.length === 20, 10000, 'every publication');
      assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i + 1));
      // The same Engine.IO session all along, on polling, over both nodes.
      assert.equal(socket.io.engine, engine);
      assert.equal(closed, false);
      assert.equal(engine.transport.name, 'polling');
      if (transports.length === 2) {
        await until(() => upgradeErrors.length === 1, 5000, 'the refused upgrade');
      }
      assert.ok(balancer.landed[0] >= 10 && balancer.landed[1] >= 10, `${balancer.landed}`);
      socket.disconnect();
    } finally {
      balancer.close();
      await a.stop();
      await b.stop();
    }
  });
}
