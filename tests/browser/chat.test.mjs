// End-to-end: the chat demo served by the real binary, in headless Chromium, over every transport,
// with WebSocket (and EventSource) taken away from the page, and across a server restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from '../../clients/js/test/server.mjs';

const SCREENSHOT = fileURLToPath(new URL('../../docs/demo.png', import.meta.url));
const WAIT = 15000;

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

/** A user in their own browser context, joined to `room`; `init` runs in the page before its scripts. */
async function user(nick, room, { transport = 'auto', init } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const page = await context.newPage();
  if (init) await page.addInitScript(init);
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${server.url}/?${new URLSearchParams({ nick, room, transport })}`);
  await page.click('#join button');
  await page.locator('#who li', { hasText: `${nick} (you)` }).waitFor({ timeout: WAIT });
  return { page, context, errors };
}

async function say(u, text) {
  await u.page.fill('#text', text);
  await u.page.press('#text', 'Enter');
}

/** The chat messages a page shows, as "nick: text". */
function messages(u) {
  return u.page.$$eval('#messages li.msg', (lis) =>
    lis.map((li) => `${li.querySelector('.nick').textContent}: ${li.querySelector('.text').textContent}`));
}

/** Waits until every page shows `line` as its latest message. */
async function seen(users, line) {
  for (const u of users) {
    await u.page.waitForFunction((l) => {
      const last = [...document.querySelectorAll('#messages li.msg')].at(-1);
      return last && `${last.querySelector('.nick').textContent}: ${last.querySelector('.text').textContent}` === l;
    }, line, { timeout: WAIT });
  }
}

const meter = (u, id) => u.page.textContent(`#m-${id}`);

async function close(...users) {
  for (const u of users) {
    assert.deepEqual(u.errors, []);
    await u.context.close();
  }
}

for (const transport of ['websocket', 'sse', 'long-poll', 'poll']) {
  test(`two users chat over ${transport}`, { timeout: 60000 }, async () => {
    const room = `room-${transport}`;
    const alice = await user('alice', room, { transport });
    const bob = await user('bob', room, { transport });
    await alice.page.locator('#who li', { hasText: 'bob' }).waitFor({ timeout: WAIT });
    await bob.page.locator('#who li', { hasText: 'alice' }).waitFor({ timeout: WAIT });
    await say(alice, 'hi bob');
    await seen([alice, bob], 'alice: hi bob');
    await say(bob, `hello alice, this is ${transport}`);
    await seen([alice, bob], `bob: hello alice, this is ${transport}`);
    await say(alice, 'how fast is it?');
    await seen([alice, bob], 'alice: how fast is it?');
    const expected = ['alice: hi bob', `bob: hello alice, this is ${transport}`, 'alice: how fast is it?'];
    assert.deepEqual(await messages(alice), expected);
    assert.deepEqual(await messages(bob), expected);
    for (const u of [alice, bob]) {
      assert.equal(await meter(u, 'transport'), transport);
      assert.equal(await meter(u, 'state'), 'connected');
    }
    // The meter refreshes twice a second: wait for it to show alice's two round trips.
    await alice.page.waitForFunction(() => /\(2\)$/.test(document.getElementById('m-median').textContent));
    assert.match(await meter(alice, 'latency'), /^\d+(\.\d)? ms$/);
    assert.ok(Number(await meter(alice, 'requests')) >= (transport === 'websocket' ? 1 : 3));
    if (transport === 'websocket' && process.env.SCREENSHOT) await alice.page.screenshot({ path: SCREENSHOT });
    await close(alice, bob);
  });
}

test('a page without WebSocket falls back by itself, and chats with one that has it', { timeout: 60000 }, async () => {
  const alice = await user('alice', 'fallback', { init: () => delete window.WebSocket });
  const bob = await user('bob', 'fallback');
  assert.equal(await meter(alice, 'transport'), 'sse');
  assert.equal(await meter(bob, 'transport'), 'websocket');
  await say(alice, 'no websocket here');
  await seen([alice, bob], 'alice: no websocket here');
  await say(bob, 'and yet we talk');
  await seen([alice, bob], 'bob: and yet we talk');
  await close(alice, bob);
});

test('a page without WebSocket and EventSource still chats', { timeout: 60000 }, async () => {
  const init = () => {
    delete window.WebSocket;
    delete window.EventSource;
  };
  const alice = await user('alice', 'bare', { init });
  const bob = await user('bob', 'bare', { init });
  assert.equal(await meter(alice, 'transport'), 'long-poll');
  await say(alice, 'only fetch');
  await seen([alice, bob], 'alice: only fetch');
  await say(bob, 'still fine');
  await seen([alice, bob], 'bob: still fine');
  await close(alice, bob);
});

test('a server restart mid-conversation: both pages come back, nothing sent is lost, nothing doubled', { timeout: 90000 }, async () => {
  const alice = await user('alice', 'restart');
  const bob = await user('bob', 'restart', { transport: 'long-poll' });
  await say(alice, 'before 1');
  await seen([alice, bob], 'alice: before 1');
  await say(bob, 'before 2');
  await seen([alice, bob], 'bob: before 2');
  const { port, apiPort } = server;
  await server.stop('SIGKILL');
  // Alice's WebSocket closes at once. Bob's long poll keeps retrying its session (a lost request
  // does not end a session) until the new server answers that it does not know it.
  await alice.page.locator('#m-state.connecting').waitFor({ timeout: WAIT });
  // Sent while the server is down: it waits in the client and goes out once reconnected.
  await say(alice, 'during');
  server = await startServer({ port, apiPort });
  // The in-memory engine lost the room's stream: each page says so once it has resubscribed.
  for (const u of [alice, bob]) {
    await u.page.locator('#messages li.system', { hasText: 'lost this room' }).waitFor({ timeout: 45000 });
  }
  await say(alice, 'after 1');
  await seen([alice, bob], 'alice: after 1');
  await say(bob, 'after 2');
  await seen([alice, bob], 'bob: after 2');
  const expected = ['alice: before 1', 'bob: before 2', 'alice: during', 'alice: after 1', 'bob: after 2'];
  assert.deepEqual(await messages(alice), expected);
  assert.deepEqual(await messages(bob), expected);
  await close(alice, bob);
});
