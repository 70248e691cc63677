// The chat demo served at `/`: rooms are channels `chat:<room>`, messages are publications, "here" is
// presence with join/leave, and the meter shows what the chosen transport costs.
//
// Connections are anonymous, so presence knows client ids, not names: every client publishes a
// `hello` with its nickname when it (re)subscribes, and the nicknames of the others are learnt from
// their hellos and messages (live or in the room's history).
import { Client } from '/switchboard.js';

const $ = (id) => document.getElementById(id);
const HISTORY = 50;

let client = null;
let room = null;
let latencies = [];
const sent = new Map(); // message id -> when it was published (performance.now())

const params = new URLSearchParams(location.search);
for (const key of ['nick', 'room', 'transport']) {
  if (params.get(key)) $(key).value = params.get(key);
}

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  join();
});
$('transport').addEventListener('change', () => client && join());
$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  send();
});
setInterval(meter, 500);

function join() {
  client?.disconnect();
  const nick = $('nick').value.trim();
  const name = $('room').value.trim();
  const transport = $('transport').value;
  history.replaceState(null, '', `?${new URLSearchParams({ nick, room: name, transport })}`);
  $('messages').replaceChildren();
  latencies = [];
  client = new Client(location.origin, transport === 'auto' ? {} : { transports: [transport] });
  client.on('disconnected', ({ reason, reconnect }) =>
    system(`disconnected (${reason})${reconnect ? ': reconnecting' : ''}`));
  client.on('connected', ({ transport: t }) => system(`connected over ${t}`));
  client.on('state', meter);
  const sub = client.subscribe(`chat:${name}`);
  const r = { sub, nick, nicks: new Map(), here: new Set(), rendered: 0, buffered: null };
  room = r;
  sub.on('subscribed', (ctx) => subscribed(r, ctx));
  sub.on('publication', (p) => (r.buffered ? r.buffered.push(p) : render(r, p, true)));
  sub.on('join', ({ info }) => {
    r.here.add(info.client);
    who();
  });
  sub.on('leave', ({ info }) => {
    if (r.here.delete(info.client) && r.nicks.has(info.client)) system(`${r.nicks.get(info.client)} left`);
    who();
  });
  sub.on('unsubscribed', ({ code, reason }) => {
    system(code === 102
      ? 'This server has no "chat" namespace: start it with the [channels.namespaces.chat] section of README.md.'
      : `left the room: ${reason}`);
  });
  client.connect();
  $('text').disabled = false;
  $('text').placeholder = `Message #${name} as ${nick}`;
  $('composer').querySelector('button').disabled = false;
}

async function subscribed(r, ctx) {
  // The client id changed with the connection: say who we are again, and ask who is here.
  r.sub.publish({ type: 'hello', nick: r.nick }).catch(() => {});
  r.sub.presence().then((p) => {
    r.here = new Set(Object.keys(p));
    who();
  }, () => {});
  if (ctx.recovered) return; // the missed messages follow as publications
  if (ctx.wasRecovering) system('the server lost this room\'s history (a restart?): messages sent meanwhile are gone');
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
  if (d.type !== 'msg') return;
  const li = document.createElement('li');
  li.className = 'msg';
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date(d.ts).toLocaleTimeString();
  const nick = document.createElement('span');
  nick.className = 'nick';
  nick.textContent = d.nick;
  nick.style.color = color(d.nick);
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = d.text;
  li.append(time, nick, text);
  append(li);
  if (sent.has(d.id)) {
    latencies.push(performance.now() - sent.get(d.id));
    sent.delete(d.id);
  }
}

function send() {
  const input = $('text');
  const text = input.value.trim();
  if (!text || !room) return;
  input.value = '';
  const id = crypto.randomUUID?.() ?? String(Math.random()).slice(2);
  sent.set(id, performance.now());
  room.sub.publish({ type: 'msg', nick: room.nick, text, id, ts: Date.now() }).catch((e) => {
    sent.delete(id);
    system(`not sent: "${text}" (${e.message})`);
  });
}

function system(text) {
  const li = document.createElement('li');
  li.className = 'system';
  li.textContent = text;
  append(li);
}

function append(li) {
  const list = $('messages');
  const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  list.append(li);
  if (atEnd) list.scrollTop = list.scrollHeight;
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

function meter() {
  if (!client) return;
  const state = $('m-state');
  state.textContent = client.state;
  state.className = client.state;
  $('m-transport').textContent = client.transport ?? '–';
  $('m-requests').textContent = client.stats.requests.toLocaleString();
  $('m-up').textContent = bytes(client.stats.bytesUp);
  $('m-down').textContent = bytes(client.stats.bytesDown);
  const sorted = [...latencies].sort((a, b) => a - b);
  $('m-latency').textContent = latencies.length ? ms(latencies.at(-1)) : '–';
  $('m-median').textContent = latencies.length ? `${ms(sorted[sorted.length >> 1])} (${latencies.length})` : '–';
}

const ms = (v) => `${v.toFixed(v < 10 ? 1 : 0)} ms`;
const bytes = (n) => (n < 10240 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB`);

function color(nick) {
  let h = 0;
  for (const c of nick) h = (h * 31 + c.codePointAt(0)) % 360;
  return `hsl(${h} 60% 40%)`;
}
