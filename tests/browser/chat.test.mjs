// End-to-end: the chat demo served by the real binary, in headless Chromium, over every transport,
// with WebSocket (and EventSource) taken away from the page, across a server restart, on a phone
// viewport, and checked with axe-core (injected from the npm package, never fetched by the page).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { startServer } from '../../clients/js/test/server.mjs';

const SCREENSHOT = fileURLToPath(new URL('../../docs/demo.png', import.meta.url));
const WAIT = 15000;
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const PHONE = { width: 390, height: 844 };

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
async function user(nick, room, { transport = 'auto', init, viewport = { width: 1100, height: 640 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  if (init) await page.addInitScript(init);
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${server.url}/?${new URLSearchParams({ nick, room, transport })}`);
  await page.click('#join button');
  await page.locator('#who li', { hasText: `${nick} (you)` }).waitFor({ state: 'attached', timeout: WAIT });
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
    // The meter refreshes twice a second: latency is of messages from others (bob got two of alice's).
    await bob.page.waitForFunction(() => /\(2\)$/.test(document.getElementById('m-median').textContent));
    await alice.page.waitForFunction(() => /\(1\)$/.test(document.getElementById('m-median').textContent));
    assert.match(await meter(bob, 'latency'), /^\d+(\.\d)? ms$/);
    assert.ok(Number(await meter(alice, 'requests')) >= (transport === 'websocket' ? 1 : 3));
    if (transport === 'websocket' && process.env.SCREENSHOT) {
      // With every figure of the meter filled in (requests per minute needs a few seconds).
      await alice.page.waitForFunction(() => document.getElementById('m-rate').textContent !== '–', null, { timeout: WAIT });
      await alice.page.screenshot({ path: SCREENSHOT });
    }
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
  // Shown at once, as what it is.
  assert.match(await alice.page.locator('#messages li.msg').last().locator('.status').textContent(), /^sending…/);
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
  // Every status line is true: nothing claims that what is shown was lost.
  for (const u of [alice, bob]) {
    const lines = await systemLines(u);
    assert.ok(!lines.some((l) => /messages sent meanwhile are gone/.test(l)), lines.join('\n'));
    assert.equal(await u.page.locator('#messages li.msg .status').count(), 0, 'every message sent');
  }
  await close(alice, bob);
});

/** The names in a page's "Here" list. */
const here = (u) => u.page.$$eval('#who li', (lis) => lis.map((li) => li.textContent));

/** The page's system lines. */
const systemLines = (u) => u.page.$$eval('#messages li.system', (lis) => lis.map((li) => li.textContent));

for (const transport of ['sse', 'long-poll', 'poll']) {
  test(`closing a tab on ${transport}: the others see the user leave within a second or so, not 30 s`, { timeout: 60000 }, async () => {
    const room = `close-${transport}`;
    const alice = await user('alice', room, { transport });
    const bob = await user('bob', room);
    await bob.page.locator('#who li', { hasText: 'alice' }).waitFor({ timeout: WAIT });
    assert.deepEqual(alice.errors, []);
    const started = Date.now();
    await alice.page.close({ runBeforeUnload: true }); // pagehide: the client ends its session
    await bob.page.waitForFunction(() => ![...document.querySelectorAll('#who li')].some((li) => li.textContent === 'alice'),
      null, { timeout: 2500 });
    const took = Date.now() - started;
    assert.ok(took < 2500, `left after ${took} ms`);
    await bob.page.locator('#messages li.system', { hasText: 'alice left' }).waitFor({ timeout: WAIT });
    await alice.context.close();
    await close(bob);
  });
}

test('switching the transport selector leaves one of each user, never ghosts', { timeout: 60000 }, async () => {
  const alice = await user('alice', 'switch', { transport: 'sse' });
  const bob = await user('bob', 'switch');
  for (const transport of ['long-poll', 'poll', 'websocket']) {
    await alice.page.selectOption('#transport', transport);
    await alice.page.locator('#who li', { hasText: 'alice (you)' }).waitFor({ timeout: WAIT });
    await alice.page.waitForFunction((t) => document.getElementById('m-transport').textContent === t, transport, { timeout: WAIT });
  }
  // Presence settles within the leave grace: exactly one alice.
  await bob.page.waitForFunction(() => {
    const names = [...document.querySelectorAll('#who li')].map((li) => li.textContent).sort();
    return names.join(',') === 'alice,bob (you)';
  }, null, { timeout: 3000 });
  assert.deepEqual((await here(bob)).sort(), ['alice', 'bob (you)']);
  await close(alice, bob);
});

test('Join puts the focus in the labelled message box; an invalid room name says what is allowed', { timeout: 30000 }, async () => {
  const context = await browser.newContext({ viewport: PHONE });
  const page = await context.newPage();
  await page.goto(`${server.url}/?nick=zoe&room=${encodeURIComponent('my room!')}`);
  await page.click('#join button');
  const error = await page.locator('#join-error').textContent();
  assert.match(error, /"my room!" is not a room name\. Room names use letters .*digits, "-" and "_" \(1 to 40 characters, no spaces\)/);
  assert.equal(await page.getAttribute('#room', 'aria-invalid'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'room');
  assert.equal(await page.textContent('#m-state'), 'disconnected', 'no connection for an invalid room');
  await page.fill('#room', 'my-room');
  assert.equal(await page.locator('#join-error').textContent(), '');
  await page.click('#join button');
  await page.locator('#who li', { hasText: 'zoe (you)' }).waitFor({ state: 'attached', timeout: WAIT });
  assert.equal(await page.evaluate(() => document.activeElement.id), 'text');
  // Its accessible name, as assistive technology reads it.
  const snapshot = await page.locator('#composer').ariaSnapshot();
  assert.match(snapshot, /textbox "Message"/);
  await context.close();
});

test('on a 390×844 phone: the chat has the width, Send is reachable, the panel folds behind a toggle', { timeout: 60000 }, async () => {
  const alice = await user('alice', 'phone', { viewport: PHONE });
  const bob = await user('bob', 'phone');
  const box = await alice.page.locator('#messages').boundingBox();
  assert.ok(box.width >= 380, `messages ${box.width} px wide`);
  assert.equal(await alice.page.evaluate(() => document.documentElement.scrollWidth), PHONE.width, 'no sideways scrolling');
  const send = await alice.page.locator('#composer button').boundingBox();
  assert.ok(send.x + send.width <= PHONE.width && send.y + send.height <= PHONE.height, `Send at ${JSON.stringify(send)}`);
  // Nothing lies over it: a tap at its middle reaches it.
  assert.equal(await alice.page.evaluate(({ x, y }) => document.elementFromPoint(x, y)?.textContent, {
    x: send.x + send.width / 2, y: send.y + send.height / 2,
  }), 'Send');
  assert.equal(await alice.page.locator('#panel').isVisible(), false);
  await alice.page.click('#panel-toggle');
  assert.equal(await alice.page.getAttribute('#panel-toggle', 'aria-expanded'), 'true');
  await alice.page.locator('#who li', { hasText: 'bob' }).waitFor({ timeout: WAIT });
  await say(alice, 'a sentence of ordinary words on a phone');
  await seen([alice, bob], 'alice: a sentence of ordinary words on a phone');
  // Words are not broken in the middle: the text's lines start at word boundaries.
  const broken = await alice.page.$eval('#messages li.msg .text', (el) => {
    const range = document.createRange();
    const text = el.firstChild;
    const tops = [];
    for (let i = 0; i < text.length; i++) {
      range.setStart(text, i);
      range.setEnd(text, i + 1);
      const top = range.getBoundingClientRect().top;
      if (tops.length && top > tops.at(-1).top + 2 && text.data[i - 1] !== ' ') return text.data.slice(i - 3, i + 3);
      tops.push({ top });
    }
    return null;
  });
  assert.equal(broken, null, `a word broken at ${broken}`);
  await close(alice, bob);
});

/** axe-core's serious and critical violations on the page as it is. */
async function axeViolations(page) {
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => `${n.target.join(' ')} ${n.failureSummary}`).join(' | ')}`);
}

test('axe-core finds no serious or critical violation, before and after joining, wide and on a phone', { timeout: 90000 }, async () => {
  for (const viewport of [{ width: 1100, height: 640 }, PHONE]) {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    await page.goto(`${server.url}/`);
    assert.deepEqual(await axeViolations(page), [], `before joining, ${viewport.width} px`);
    await context.close();
  }
  // Nicknames in many colours, system lines, a pending and a failed message, the meter in every state.
  const users = [];
  for (const nick of ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi']) {
    users.push(await user(nick, 'a11y', { transport: nick === 'bob' ? 'poll' : 'websocket' }));
  }
  for (const u of users) await say(u, `hello from ${await u.page.inputValue('#nick')}`);
  await seen(users.slice(0, 1), 'heidi: hello from heidi');
  for (const u of [users[0], users[1]]) {
    if (u === users[1]) await u.page.setViewportSize(PHONE);
    if (u === users[1]) await u.page.click('#panel-toggle');
    assert.deepEqual(await axeViolations(u.page), [], 'after joining');
  }
  await close(...users);
});

test('poll: the state turns "connecting" with its retry as soon as a poll fails; a message sent meanwhile says "sending…"', { timeout: 90000 }, async () => {
  const alice = await user('alice', 'truth', { transport: 'poll' });
  const bob = await user('bob', 'truth');
  await say(alice, 'before');
  await seen([alice, bob], 'alice: before');
  const { port, apiPort } = server;
  await server.stop('SIGKILL');
  const stopped = Date.now();
  await alice.page.locator('#m-state.connecting').waitFor({ timeout: 5000 });
  const took = Date.now() - stopped;
  assert.ok(took < 2500, `"connecting" after ${took} ms (one poll interval and a failed request)`);
  assert.match(await meter(alice, 'state'), /^connecting · retry in \d+ s$/);
  // Sent while disconnected: shown at once, as not sent yet.
  await say(alice, 'while down');
  const last = alice.page.locator('#messages li.msg').last();
  assert.equal(await last.locator('.text').textContent(), 'while down');
  assert.match(await last.locator('.status').textContent(), /^sending…/);
  server = await startServer({ port, apiPort });
  // Then it is sent (the status goes once the room has it) or says that it was not. "sent" alone is
  // a true state on the way (the server took it; its copy from the room is still to come), so the
  // wait is for the end: in the room, or not sent.
  await alice.page.waitForFunction(() => {
    const li = [...document.querySelectorAll('#messages li.msg')].find((l) => l.querySelector('.text').textContent === 'while down');
    const status = li?.querySelector('.status')?.textContent ?? '';
    return li && !status.startsWith('sending') && status !== 'sent';
  }, null, { timeout: 30000 });
  // It never left the page, so it waited for the new session and went out then: in the room, no status.
  const status = await alice.page.$$eval('#messages li.msg', (lis) => lis
    .filter((l) => l.querySelector('.text').textContent === 'while down')
    .map((l) => l.querySelector('.status')?.textContent ?? 'in the room'));
  assert.deepEqual(status, ['in the room']);
  await seen([bob], 'alice: while down');
  await alice.page.locator('#m-state.connected').waitFor({ timeout: WAIT });
  await close(alice, bob);
});

test('a server shutdown shows no "X left" for users who never left', { timeout: 90000 }, async () => {
  const alice = await user('alice', 'shutdown', { transport: 'sse' });
  const others = [await user('carol', 'shutdown'), await user('dave', 'shutdown', { transport: 'long-poll' })];
  await alice.page.locator('#who li', { hasText: 'dave' }).waitFor({ timeout: WAIT });
  const { port, apiPort } = server;
  await server.stop('SIGTERM');
  await alice.page.locator('#messages li.system', { hasText: 'disconnected' }).waitFor({ timeout: WAIT });
  await new Promise((r) => setTimeout(r, 1500));
  server = await startServer({ port, apiPort });
  await alice.page.locator('#m-state.connected').waitFor({ timeout: 30000 });
  for (const u of others) await u.page.locator('#m-state.connected').waitFor({ timeout: 30000 });
  const lines = await systemLines(alice);
  assert.deepEqual(lines.filter((l) => / left$/.test(l)), [], lines.join('\n'));
  await close(alice, ...others);
});

test('leave pushes that come with a shutdown disconnect (one SSE event) show nobody leaving', { timeout: 60000 }, async () => {
  const alice = await user('alice', 'shutdown-batch', { transport: 'sse' });
  const carol = await user('carol', 'shutdown-batch');
  await alice.page.locator('#who li', { hasText: 'carol' }).waitFor({ timeout: WAIT });
  const carolId = await carol.page.evaluate(() => window.switchboardDemo.client.clientId);
  // What a node shutting down delivers to an SSE page, in one batch: carol's connection closed a
  // moment before alice's, then alice's own disconnect push (3001). Handed to the client as its
  // transport hands it the lines of an event.
  await alice.page.evaluate((id) => {
    const c = window.switchboardDemo.client;
    const conn = c._conn;
    c._handle({ leave: { channel: 'chat:shutdown-batch', info: { client: id, user: '' } } }, conn);
    c._handle({ disconnect: { code: 3001, reason: 'shutdown', reconnect: true, delay: 50 } }, conn);
  }, carolId);
  await alice.page.locator('#messages li.system', { hasText: 'disconnected (shutdown)' }).waitFor({ timeout: WAIT });
  await alice.page.locator('#m-state.connected').waitFor({ timeout: WAIT });
  await alice.page.waitForTimeout(1000);
  const lines = await systemLines(alice);
  assert.deepEqual(lines.filter((l) => / left$/.test(l)), [], lines.join('\n'));
  assert.ok((await here(alice)).includes('carol'), 'carol is still here');
  await close(alice, carol);
});

test('the meter tells the README story: bytes and requests per message, idle requests, latency of others', { timeout: 120000 }, async () => {
  const sender = await user('sender', 'meter');
  const measured = {};
  for (const transport of ['websocket', 'sse', 'long-poll', 'poll']) {
    const idle = await user(`idle-${transport}`, 'meter', { transport });
    await idle.page.waitForTimeout(6000);
    const idleRate = Number(await meter(idle, 'rate'));
    await close(idle);
    const reader = await user(`reader-${transport}`, 'meter', { transport });
    for (let i = 1; i <= 8; i++) {
      await say(sender, `${transport} ${i}`);
      await reader.page.waitForTimeout(1000);
    }
    await seen([reader], `sender: ${transport} 8`);
    await reader.page.waitForTimeout(600);
    const perMessage = Number((await meter(reader, 'per-message')).replace(/[^\d]/g, ''));
    const requestsPerMessage = Number(await meter(reader, 'requests-per-message'));
    const median = Number((await meter(reader, 'median')).split(' ')[0]);
    measured[transport] = { idleRate, perMessage, requestsPerMessage, median };
    await close(reader);
  }
  console.log('meter, 1 message/s from another page:', JSON.stringify(measured));
  const { websocket: ws, sse, 'long-poll': lp, poll } = measured;
  // README: WebSocket 0 requests and ~88 bytes per message; the HTTP transports ~1 request and
  // ~600 bytes; polling ~500 ms of latency on average; idle, only polling keeps asking.
  // Our chat messages are ~210 bytes (README's push: 86), so every figure is ~120 bytes above it.
  assert.ok(ws.perMessage < 300 && ws.requestsPerMessage === 0, JSON.stringify(ws));
  for (const [name, m] of Object.entries({ sse, lp, poll })) {
    assert.ok(m.perMessage > 500 && m.perMessage < 1500 && m.perMessage > 2.5 * ws.perMessage, `${name}: ${JSON.stringify(m)}`);
    assert.ok(m.requestsPerMessage >= 0.7 && m.requestsPerMessage <= 1.5, `${name}: ${JSON.stringify(m)}`);
  }
  assert.ok(ws.idleRate === 0 && sse.idleRate === 0 && lp.idleRate <= 10, JSON.stringify(measured));
  assert.ok(poll.idleRate >= 30 && poll.idleRate <= 90, JSON.stringify(poll));
  assert.ok(ws.median < 200 && poll.median > ws.median, JSON.stringify(measured));
  await close(sender);
});
