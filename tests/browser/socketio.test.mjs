// End-to-end: the chat demo's Socket.IO page (/socketio, the stock socket.io-client served by the
// binary) and the native page (/) in the same room, in headless Chromium: each user sees the other's
// messages, over Socket.IO's WebSocket, its long-polling, and polling upgraded to WebSocket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { startServer } from '../../clients/js/test/server.mjs';

const WAIT = 15000;
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A page in its own browser context; `path` is `/` (native) or `/socketio`. */
async function open(path, query) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(`${server.url}${path}?${new URLSearchParams(query)}`);
  await page.click('#join button');
  return { page, context, errors, requests };
}

async function native(nick, room) {
  const u = await open('/', { nick, room, transport: 'websocket' });
  await u.page.locator('#who li', { hasText: `${nick} (you)` }).waitFor({ state: 'attached', timeout: WAIT });
  return u;
}

async function socketio(nick, room, transport) {
  const u = await open('/socketio', { nick, room, transport });
  await u.page.locator('#m-room', { hasText: `#${room}` }).waitFor({ timeout: WAIT });
  return u;
}

async function say(u, text) {
  await u.page.fill('#text', text);
  await u.page.press('#text', 'Enter');
}

/** Waits until the page shows `line` ("nick: text") as its latest message, no longer pending. */
async function seen(u, line) {
  await u.page.waitForFunction((l) => {
    const last = [...document.querySelectorAll('#messages li.msg')].at(-1);
    return last && !last.classList.contains('pending')
      && `${last.querySelector('.nick').textContent}: ${last.querySelector('.text').textContent}` === l;
  }, line, { timeout: WAIT });
}

async function close(...users) {
  for (const u of users) {
    assert.deepEqual(u.errors, []);
    // Nothing from elsewhere: the Socket.IO client is the binary's, not a CDN's.
    assert.deepEqual(u.requests.filter((url) => !url.startsWith(server.url)), []);
    await u.context.close();
  }
}

for (const transport of ['websocket', 'polling', 'auto']) {
  test(`a Socket.IO user (${transport}) and a native user chat in one room`, { timeout: 60000 }, async () => {
    const room = `sio-${transport}`;
    const alice = await native('alice', room);
    const bob = await socketio('bob', room, transport);
    // Bob's hello reached the native page, which learns his nickname from it.
    await alice.page.locator('#messages li.system', { hasText: 'bob is here' }).waitFor({ timeout: WAIT });
    if (transport === 'auto') {
      await bob.page.locator('#messages li.system', { hasText: 'upgraded to websocket' }).waitFor({ timeout: WAIT });
    }
    assert.equal(await bob.page.textContent('#m-transport'), transport === 'polling' ? 'polling' : 'websocket');

    await say(bob, 'hello from Socket.IO');
    await seen(bob, 'bob: hello from Socket.IO');
    await seen(alice, 'bob: hello from Socket.IO');
    await say(alice, 'hello from WebSocket');
    await seen(alice, 'alice: hello from WebSocket');
    await seen(bob, 'alice: hello from WebSocket');
    // Another room hears nothing of this one.
    const carol = await socketio('carol', `${room}-other`, transport);
    await say(alice, 'only in the first room');
    await seen(bob, 'alice: only in the first room');
    assert.equal(await carol.page.locator('#messages li.msg').count(), 0);
    await close(alice, bob, carol);
  });
}

test('a publication the server refuses comes back to the Socket.IO client as an error through its ack', { timeout: 60000 }, async () => {
  const bob = await socketio('bob', 'sio-refused', 'websocket');
  // Publishing into a channel outside the demo's namespace: switchboard refuses it through the ack.
  const err = await bob.page.evaluate(() => window.socketioDemo.socket.timeout(5000)
    .emitWithAck('publish', 'nowhere:room', { type: 'msg', text: 'x' }));
  assert.equal(typeof err?.code, 'number', JSON.stringify(err));
  await close(bob);
});

test('axe-core finds no serious or critical violation on the Socket.IO page', { timeout: 60000 }, async () => {
  const u = await socketio('dora', 'sio-axe', 'websocket');
  await u.page.addScriptTag({ content: AXE });
  const result = await u.page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const serious = result.violations.filter((v) => ['serious', 'critical'].includes(v.impact))
    .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  assert.deepEqual(serious, []);
  await close(u);
});
