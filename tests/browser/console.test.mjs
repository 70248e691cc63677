// End-to-end: the operator's console (/admin/ on the API listener) in headless Chromium against the
// real binary: login refused and rate-limited, the overview following clients of every transport, a
// publish from the console reaching a WebSocket client, a disconnect across two nodes on Redis, no
// request to any other host, axe-core, and a phone-width page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';
import { startServer, BIN, CONFIG, HMAC_SECRET } from '../../clients/js/test/server.mjs';

const WAIT = 15000;
const PASSWORD = 'console test password';
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const PHONE = { width: 390, height: 844 };
const SCREENSHOT = fileURLToPath(new URL('../../docs/console.png', import.meta.url));

let dir;
let hash;
let browser;
const servers = [];
const children = [];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'switchboard-console-'));
  hash = execFileSync(BIN, ['hashpassword'], { input: `${PASSWORD}\n` }).toString().trim();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
  for (const s of servers) await s.stop();
  for (const c of children) c.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The browser tests' configuration (demo, `chat` namespace, keys) with the console on. */
function config(name, extra = '') {
  const file = join(dir, `${name}.toml`);
  writeFileSync(file, `${readFileSync(CONFIG, 'utf8')}
[admin]
enabled = true
password_hash = "${hash}"
max_failed_logins = 3
${extra}`);
  return file;
}

async function server(name, extra) {
  const s = await startServer({ config: config(name, extra) });
  servers.push(s);
  s.console = `http://127.0.0.1:${s.apiPort}/admin/`;
  return s;
}

/** An HS256 connection token for `user`, as the application's backend would sign it. */
function token(user) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user })}`;
  return `${body}.${createHmac('sha256', HMAC_SECRET).update(body).digest('base64url')}`;
}

/**
 * A console page on `s`, not logged in yet. Every request it makes is kept in `requests`, and its
 * errors (CSP violations included, which Chromium reports on the console) in `errors`.
 */
async function consolePage(s, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const requests = [];
  const errors = [];
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => errors.push(String(e)));
  // A 401 (the session check before login, a wrong password) and a 429 are answers the page
  // expects and shows; Chromium logs them all the same.
  const expected = /^Failed to load resource: the server responded with a status of (401|429)/;
  page.on('console', (m) => { if (m.type() === 'error' && !expected.test(m.text())) errors.push(m.text()); });
  await page.goto(s.console);
  await page.locator('#password').waitFor({ state: 'visible', timeout: WAIT });
  return { page, context, requests, errors };
}

async function logIn(c, password = PASSWORD) {
  await c.page.fill('#password', password);
  await c.page.click('#login-form button[type=submit]');
}

/** Logs in and waits for the first live update. */
async function loggedIn(s, viewport) {
  const c = await consolePage(s, viewport);
  await logIn(c);
  await c.page.waitForFunction(() => document.querySelector('#live').textContent.startsWith('live'), null, { timeout: WAIT });
  return c;
}

/** A page on the client listener (the demo's origin) with the JS client loaded, no client yet. */
async function clientPage(s) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${s.url}/`);
  await page.evaluate(async () => {
    window.sb = await import('/switchboard.js');
    window.clients = {};
    window.got = [];
    window.events = [];
  });
  return { page, context };
}

/** Connects a client over `transport` as `user`, subscribed to `channel`; waits until it is in. */
async function connect(cp, key, { transport = 'websocket', user = key, channel = 'chat:console' } = {}) {
  await cp.page.evaluate(async ({ key, transport, token, channel }) => {
    const c = new window.sb.Client(location.origin, { transports: [transport], token });
    window.clients[key] = c;
    c.on('disconnected', (e) => window.events.push({ key, code: e.code }));
    const sub = c.subscribe(channel);
    sub.on('publication', (p) => window.got.push({ key, data: p.data }));
    c.connect();
    await sub.ready();
  }, { key, transport, token: token(user), channel });
}

async function noStrangers(c, s) {
  const own = `http://127.0.0.1:${s.apiPort}/`;
  const strangers = c.requests.filter((u) => !u.startsWith(own) && !u.startsWith('data:'));
  assert.deepEqual(strangers, [], 'every request goes to the server itself');
  assert.deepEqual(c.errors, []);
}

async function axeViolations(page) {
  // Through the DevTools protocol: the page's CSP (script-src 'self') would refuse an injected tag.
  await page.evaluate(AXE);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  return result.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => `${n.target.join(' ')} ${n.failureSummary}`).join(' | ')}`);
}

const cell = (page, table, transport, column) =>
  page.textContent(`#${table} tr[data-transport="${transport}"] td:nth-of-type(${column})`);

test('login: a wrong password is refused, then the address is rate-limited', { timeout: 60000 }, async () => {
  const s = await server('ratelimit');
  const c = await consolePage(s);
  for (let i = 0; i < 3; i += 1) {
    await logIn(c, `wrong ${i}`);
    await c.page.waitForFunction((n) => document.querySelector('#login-error').textContent.includes('wrong password')
      && document.querySelector('#password').value === '', i, { timeout: WAIT });
    await c.page.evaluate(() => { document.querySelector('#login-error').textContent = ''; });
  }
  // The right password now gets the same refusal as a wrong one: the limit holds until it ends.
  await logIn(c);
  await c.page.locator('#login-error', { hasText: 'too many failed logins' }).waitFor({ timeout: WAIT });
  assert.equal(await c.page.isVisible('#app'), false);
  const session = await c.page.evaluate(async () => (await fetch('/admin/api/session')).status);
  assert.equal(session, 401);
  await noStrangers(c, s);
  await c.context.close();
});

test('the overview follows clients connecting over each transport', { timeout: 90000 }, async () => {
  const s = await server('overview');
  const c = await loggedIn(s);
  const cp = await clientPage(s);
  const transports = ['websocket', 'sse', 'long-poll', 'poll'];
  for (const [i, transport] of transports.entries()) {
    await connect(cp, transport, { transport });
    await c.page.waitForFunction(({ t, n }) => {
      const row = document.querySelector(`#transports tr[data-transport="${t}"] td`);
      return row?.textContent === '1' && document.querySelector('#c-clients').textContent === String(n);
    }, { t: transport, n: i + 1 }, { timeout: WAIT });
  }
  assert.equal(await c.page.textContent('#c-users'), '4');
  assert.equal(await c.page.locator('#nodes tbody tr').count(), 1);
  // Publications reach all four, and the cost view sees requests for the fallbacks, none for WebSocket.
  for (let i = 0; i < 6; i += 1) {
    await s.api('publish', { channel: 'chat:console', data: { n: i } });
    await new Promise((r) => setTimeout(r, 400));
  }
  await cp.page.waitForFunction(() => window.got.length >= 24, null, { timeout: WAIT });
  await c.page.waitForFunction(() => {
    const v = (t) => document.querySelector(`#cost-table tr[data-transport="${t}"] td:nth-of-type(3)`)?.textContent;
    return v('websocket') === '0' && v('long-poll') !== '–' && Number(v('long-poll')) > 0;
  }, null, { timeout: WAIT });
  assert.notEqual(await cell(c.page, 'cost-table', 'websocket', 4), '–', 'WebSocket bytes per message');
  // The plots drew something.
  assert.ok(await c.page.locator('#p-clients polyline').count() >= 1);
  if (process.env.SCREENSHOT) {
    await c.page.evaluate(() => window.scrollTo(0, 0));
    await c.page.screenshot({ path: SCREENSHOT });
  }
  await noStrangers(c, s);
  await cp.context.close();
  await c.context.close();
});

test('a publish from the console reaches a WebSocket client, after a check of its JSON and a confirmation', { timeout: 60000 }, async () => {
  const s = await server('publish');
  const c = await loggedIn(s);
  const cp = await clientPage(s);
  await connect(cp, 'dave', { channel: 'chat:lobby' });
  await c.page.fill('#pub-channel', 'chat:lobby');
  await c.page.fill('#pub-data', '{"text": oops}');
  assert.equal(await c.page.getAttribute('#pub-data', 'aria-invalid'), 'true');
  assert.match(await c.page.textContent('#pub-check'), /not JSON/);
  await c.page.click('#f-publish button[type=submit]');
  assert.equal(await c.page.isVisible('#confirm'), false, 'invalid JSON is not sent');
  await c.page.fill('#pub-data', '{"text": "from the console"}');
  await c.page.click('#f-publish button[type=submit]');
  await c.page.locator('#confirm').waitFor({ state: 'visible' });
  // Cancel first: nothing is sent.
  await c.page.click('#confirm-no');
  await c.page.locator('#action-result', { hasText: 'cancelled' }).waitFor();
  await c.page.click('#f-publish button[type=submit]');
  await c.page.click('#confirm-yes');
  await cp.page.waitForFunction(() => window.got.some((g) => g.data?.text === 'from the console'), null, { timeout: WAIT });
  assert.equal(await cp.page.evaluate(() => window.got.length), 1);
  await c.page.locator('#action-result', { hasText: 'publish: done' }).waitFor();
  // Logged, with who did it.
  await c.page.locator('#audit tbody tr', { hasText: 'publish' }).waitFor({ timeout: WAIT });
  assert.match(await c.page.textContent('#audit tbody tr'), /password.*publish.*from the console.*ok/);
  // And the channel view shows it in history, with dave present.
  await c.page.fill('#prefix', 'chat:');
  await c.page.click('#search button');
  await c.page.click('#channel-list button:text("chat:lobby")');
  await c.page.locator('#presence tbody tr', { hasText: 'dave' }).waitFor({ timeout: WAIT });
  await c.page.locator('#history li', { hasText: 'from the console' }).waitFor();
  await noStrangers(c, s);
  await cp.context.close();
  await c.context.close();
});

async function freePort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

test('a disconnect from one node reaches a client on another (two nodes on Redis)', { timeout: 90000 }, async (t) => {
  const redisBin = process.env.REDIS_SERVER ?? 'redis-server';
  const port = await freePort();
  const redis = spawn(redisBin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  children.push(redis);
  const spawned = await new Promise((resolve) => { redis.once('spawn', () => resolve(true)); redis.once('error', () => resolve(false)); });
  if (!spawned) { t.skip(`${redisBin} not found`); return; }
  await new Promise((r) => setTimeout(r, 300));
  const engine = `[engine]\ntype = "redis"\nannounce_interval = "200ms"\n[engine.redis]\naddresses = ["redis://127.0.0.1:${port}"]\n`;
  const a = await server('node-a', engine);
  const b = await server('node-b', engine);
  const c = await loggedIn(a);
  await c.page.waitForFunction(() => document.querySelectorAll('#nodes tbody tr').length === 2, null, { timeout: WAIT });
  const cp = await clientPage(b);
  await connect(cp, 'erin', { channel: 'chat:far' });
  // Node B's console shares its figures through Redis: A's page shows B's transports and memory.
  await c.page.waitForFunction(() => [...document.querySelectorAll('#nodes tbody tr')].some((tr) =>
    !tr.textContent.includes('(this one)') && tr.children[4].textContent === 'WebSocket 1'
      && tr.children[9].textContent.endsWith('MiB')), null, { timeout: WAIT });
  // Find erin from node A's console: the channel, who is here, and her Disconnect button.
  await c.page.fill('#prefix', 'chat:f');
  await c.page.click('#search button');
  await c.page.click('#channel-list button:text("chat:far")');
  const row = c.page.locator('#presence tbody tr', { hasText: 'erin' });
  await row.waitFor({ timeout: WAIT });
  await row.locator('button', { hasText: 'Disconnect' }).click();
  await c.page.click('#confirm-yes');
  await cp.page.waitForFunction(() => window.events.some((e) => e.key === 'erin' && e.code === 3503), null, { timeout: WAIT });
  await c.page.locator('#action-result', { hasText: '"clients":1' }).waitFor();
  assert.match(await c.page.textContent('#action-result'), /"nodes":2/);
  await noStrangers(c, a);
  await cp.context.close();
  await c.context.close();
});

test('axe-core finds nothing, logged out and in, wide and at phone width; the page fits a phone', { timeout: 90000 }, async () => {
  const s = await server('a11y');
  const cp = await clientPage(s);
  await connect(cp, 'frank');
  for (const viewport of [{ width: 1280, height: 900 }, PHONE]) {
    const c = await consolePage(s, viewport);
    assert.deepEqual(await axeViolations(c.page), [], `login, ${viewport.width} px`);
    await logIn(c);
    await c.page.waitForFunction(() => document.querySelector('#live').textContent.startsWith('live'), null, { timeout: WAIT });
    // A channel open, an action answered: every part of the page shown.
    await c.page.fill('#prefix', 'chat:');
    await c.page.click('#search button');
    await c.page.click('#channel-list button:text("chat:console")');
    await c.page.locator('#presence tbody tr', { hasText: 'frank' }).waitFor({ timeout: WAIT });
    await c.page.fill('#hr-channel', 'chat:nothing');
    await c.page.click('#f-history_remove button[type=submit]');
    await c.page.click('#confirm-yes');
    await c.page.locator('#action-result', { hasText: 'history_remove' }).waitFor();
    assert.deepEqual(await axeViolations(c.page), [], `logged in, ${viewport.width} px`);
    if (viewport === PHONE) {
      const [scroll, inner] = await c.page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      assert.ok(scroll <= inner, `no sideways scrolling at phone width: ${scroll} > ${inner}`);
      const box = await c.page.locator('#c-clients').boundingBox();
      assert.ok(box && box.x >= 0 && box.x + box.width <= inner, 'the cards fit');
    }
    await noStrangers(c, s);
    await c.context.close();
  }
  await cp.context.close();
});
