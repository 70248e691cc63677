// The chat demo served at `/`: rooms are channels `chat:<room>`, messages are publications, "here" is
// presence with join/leave, and the meter shows what the chosen transport costs on the wire.
//
// Connections are anonymous, so presence knows client ids, not names: every client publishes a
// `hello` with its nickname when it (re)subscribes, and the nicknames of the others are learnt from
// their hellos and messages (live or in the room's history).
//
// Every line the page shows must be true: a message is "sending…" until the server took it, then
// sent or not sent; "X left" is shown only while this page is connected (a server shutting down
// disconnects everyone, which is not everyone leaving); the state says "connecting" as soon as a
// request fails.
import { Client } from '/switchboard.js';
import { $, enterRoom, sendMessage, setUpForms, showMessage, system, validJoin } from '/chat-view.js';

const HISTORY = 50;
/** A leave is shown after this long, unless this page lost its connection meanwhile. */
const LEAVE_GRACE_MS = 500;
const HTTP_PATH = '/connection/http';

let client = null;
let room = null;
let latencies = []; // ms from another user's publish to its arrival here
let wire = null; // what this page's connection put on the wire, see `meter()`
let HEAD = null; // the estimated size of a request head, see `requestHeadEstimate()`

setUpForms(join, send);
$('room').addEventListener('input', () => validJoin(false));
$('transport').addEventListener('change', () => client && join());
$('panel-toggle').addEventListener('click', () => {
  const open = $('panel').classList.toggle('open');
  $('panel-toggle').setAttribute('aria-expanded', String(open));
});
setInterval(meter, 500);
observeHttp();
// For the browser tests and for poking around in the console: the client of the current room.
window.switchboardDemo = { get client() { return client; } };

function join() {
  if (!validJoin()) return;
  client?.disconnect(); // an HTTP session ends on the server now: nobody sees a ghost of this page
  const { nick, name, transport } = enterRoom();
  // Who is here is known again once the new connection has asked.
  $('who').replaceChildren();
  $('count').textContent = '';
  latencies = [];
  wire = { since: performance.now(), httpDown: 0, httpHeads: 0, samples: [], connectedAt: null, received: 0 };
  const c = new Client(location.origin, transport === 'auto' ? {} : { transports: [transport] });
  client = c;
  // Bumped whenever the connection drops: a leave seen before the drop is not shown after it.
  let epoch = 0;
  c.on('disconnected', ({ reason, reconnect }) => {
    epoch++;
    system(`disconnected (${reason})${reconnect ? ': reconnecting' : ''}`);
  });
  c.on('connected', ({ transport: t }) => {
    wire.connectedAt ??= performance.now();
    system(`connected over ${t}`);
  });
  c.on('state', ({ state }) => {
    if (state !== 'connected') epoch++;
    meter();
  });
  c.on('reconnecting', meter);
  const sub = c.subscribe(`chat:${name}`);
  const r = { sub, nick, nicks: new Map(), here: new Set(), rendered: 0, buffered: null };
  room = r;
  sub.on('subscribed', (ctx) => subscribed(r, ctx));
  sub.on('publication', (p) => {
    wire.received++;
    if (r.buffered) r.buffered.push(p);
    else render(r, p, true);
  });
  sub.on('join', ({ info }) => {
    r.here.add(info.client);
    who();
  });
  sub.on('leave', ({ info }) => {
    const seen = epoch;
    setTimeout(() => {
      // A server going away drops every connection at once; its leave pushes are no one leaving.
      if (r !== room || seen !== epoch || c.state !== 'connected') return;
      if (r.here.delete(info.client) && r.nicks.has(info.client)) system(`${r.nicks.get(info.client)} left`);
      who();
    }, LEAVE_GRACE_MS);
  });
  sub.on('unsubscribed', ({ code, reason }) => {
    system(code === 102
      ? 'This server has no "chat" namespace: start it with the [channels.namespaces.chat] section of README.md.'
      : `left the room: ${reason}`);
  });
  c.connect();
}

async function subscribed(r, ctx) {
  // The client id changed with the connection: say who we are again, and ask who is here.
  r.sub.publish({ type: 'hello', nick: r.nick }).catch(() => {});
  r.sub.presence().then((p) => {
    r.here = new Set(Object.keys(p));
    who();
  }, () => {});
  if (ctx.recovered) return; // the missed messages follow as publications
  if (ctx.wasRecovering) {
    system('the server lost this room\'s history (a restart?): messages published before it that this page had '
      + 'not received are gone; what follows was sent since');
  }
  // A new stream: show what it has kept, then what arrived while reading it.
  r.rendered = 0;
  r.buffered = [];
  try {
    const h = await r.sub.history({ limit: HISTORY, reverse: true });
    for (const p of h.publications.reverse()) render(r, p, false);
  } catch (e) {
    system(`no history: ${e.message}`);
  }
  const buffered = r.buffered;
  r.buffered = null;
  for (const p of buffered) render(r, p, true);
}

/** Shows a publication once (history and live publications overlap while history is read). */
function render(r, p, live) {
  if (r !== room) return;
  if (p.offset > 0) {
    if (p.offset <= r.rendered) return;
    r.rendered = p.offset;
  }
  const d = p.data ?? {};
  if (p.info && typeof d.nick === 'string') r.nicks.set(p.info.client, d.nick);
  if (d.type === 'hello') {
    if (live && p.info?.client !== client.clientId) system(`${d.nick} is here`);
    who();
    return;
  }
  const shown = showMessage(d);
  const fromOther = p.info?.client !== client.clientId;
  if (shown && live && fromOther && typeof d.ts === 'number') latencies.push(Math.max(0, Date.now() - d.ts));
}

function send() {
  if (!room) return;
  const { sub } = room;
  sendMessage(room.nick, client.state === 'connected', (data) => sub.publish(data));
}

function who() {
  if (!room) return;
  const names = [...room.here].map((id) => {
    const nick = room.nicks.get(id) ?? `guest-${id.slice(0, 4)}`;
    return id === client.clientId ? `${nick} (you)` : nick;
  });
  $('who').replaceChildren(...names.sort().map((n) => Object.assign(document.createElement('li'), { textContent: n })));
  $('count').textContent = `(${names.length})`;
}

/**
 * HTTP responses as the browser measured them (Resource Timing): `transferSize` is the response's head
 * and body as received. An event stream's entry comes when it ends: only its head is taken from it,
 * its events are counted by the client as they arrive (`streamBytesDown`).
 */
function observeHttp() {
  if (typeof PerformanceObserver !== 'function') return;
  const prefix = `${location.origin}${HTTP_PATH}`;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (!wire || !e.name.startsWith(prefix) || e.startTime < wire.since) continue;
      const head = Math.max(0, e.transferSize - e.encodedBodySize);
      if (e.name.includes(`${HTTP_PATH}/sse?`)) wire.httpHeads += head;
      else wire.httpDown += e.transferSize || e.encodedBodySize;
    }
  }).observe({ type: 'resource', buffered: true });
  // The buffer is only a fallback for observers: keep it from filling up over a long session.
  performance.addEventListener?.('resourcetimingbufferfull', () => performance.clearResourceTimings());
}

/**
 * A request head as Chromium sends one to this server: pages cannot see request heads, so this is an
 * estimate (request line, host, user agent, the usual fetch headers).
 */
function requestHeadEstimate() {
  const path = `${HTTP_PATH}/poll?session=${'x'.repeat(74)}&ack=10&wait=0`;
  const lines = [
    `GET ${path} HTTP/1.1`, `Host: ${location.host}`, `User-Agent: ${navigator.userAgent}`, 'Accept: */*',
    'Accept-Encoding: gzip, deflate, br, zstd', `Accept-Language: ${navigator.languages?.join(',') ?? 'en'}`,
    `Referer: ${location.href}`, 'Connection: keep-alive', 'Sec-Fetch-Dest: empty', 'Sec-Fetch-Mode: cors',
    'Sec-Fetch-Site: same-origin', 'sec-ch-ua: "Chromium";v="140", "Not=A?Brand";v="24"', 'sec-ch-ua-mobile: ?0',
    'sec-ch-ua-platform: "Linux"', 'Cache-Control: no-cache', 'Pragma: no-cache',
  ];
  return lines.reduce((n, l) => n + l.length + 2, 2);
}

/** Bytes each way on the wire so far, for the client's transport(s). */
function wireBytes() {
  HEAD ??= requestHeadEstimate();
  const s = client.stats;
  const heads = s.requests * HEAD; // HTTP requests and the WebSocket handshake
  return {
    up: heads + s.bodyBytesUp + s.frameBytesUp,
    down: wire.httpDown + wire.httpHeads + s.streamBytesDown + s.frameBytesDown,
  };
}

function meter() {
  if (!client || !wire) return;
  const state = $('m-state');
  const retry = client.state === 'connecting' && client.retryAt
    ? ` · retry in ${Math.max(0, Math.ceil((client.retryAt - Date.now()) / 1000))} s` : '';
  state.textContent = `${client.state}${retry}`;
  state.className = client.state;
  $('m-transport').textContent = client.transport ?? '–';
  $('m-requests').textContent = client.stats.requests.toLocaleString();
  const { up, down } = wireBytes();
  $('m-up').textContent = `≈ ${bytes(up)}`;
  $('m-down').textContent = bytes(down);
  $('m-head-estimate').textContent = String(HEAD);
  $('m-received').textContent = wire.received.toLocaleString();
  // Rates over the last minute, leaving out the first second of connecting (the open, subscribe,
  // history and presence requests are not what a transport costs per message).
  const now = performance.now();
  const sample = { t: now, n: client.stats.requests, bytes: up + down, received: wire.received };
  wire.samples.push(sample);
  while (wire.samples.length > 1 && wire.samples[0].t < now - 60000) wire.samples.shift();
  const from = wire.samples.find((x) => wire.connectedAt !== null && x.t >= wire.connectedAt + 1000);
  const span = from ? now - from.t : 0;
  $('m-rate').textContent = span >= 3000 ? String(Math.round(((sample.n - from.n) * 60000) / span)) : '–';
  const got = from ? sample.received - from.received : 0;
  $('m-per-message').textContent = got > 0 ? `≈ ${Math.round((sample.bytes - from.bytes) / got)} B` : '–';
  $('m-requests-per-message').textContent = got > 0 ? ((sample.n - from.n) / got).toFixed(2) : '–';
  const sorted = [...latencies].sort((a, b) => a - b);
  $('m-latency').textContent = latencies.length ? ms(latencies.at(-1)) : '–';
  $('m-median').textContent = latencies.length ? `${ms(sorted[sorted.length >> 1])} (${latencies.length})` : '–';
}

const ms = (v) => `${v.toFixed(v < 10 ? 1 : 0)} ms`;
const bytes = (n) => (n < 10240 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB`);
