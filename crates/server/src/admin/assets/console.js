// The operator's console (docs/console.md). Talks to its own origin only: the session cookie rides
// along (HttpOnly, so this script never sees it), the live view is one EventSource, and every action
// is a POST that the server checks for this page's Origin. Everything shown that comes from clients
// (channel names, presence info, publications) goes in as text, never as HTML.

const $ = (sel) => document.querySelector(sel);
const HISTORY = 900;

let stream = null;
let points = [];
let last = null;

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

const num = (n, digits = 0) => {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return n.toLocaleString('en', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
};
const bytes = (n) => {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
};
const uptime = (s) => {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
};
const sum = (o) => Object.values(o ?? {}).reduce((a, b) => a + b, 0);
const NAMES = { websocket: 'WebSocket', sse: 'SSE', 'long-poll': 'long polling', poll: 'ajax polling', http: 'fallback uploads (shared)' };
const name = (t) => NAMES[t] ?? t;

async function call(path, { method = 'GET', body } = {}) {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json = null;
  try { json = await res.json(); } catch { /* 204 */ }
  return { status: res.status, ok: res.ok, json };
}

// ---- login ---------------------------------------------------------------------------------------

function showLogin(message = '') {
  stream?.close();
  stream = null;
  $('#app').hidden = true;
  $('#whoami').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  $('#password').focus();
}

async function start() {
  const s = await call('/admin/api/session');
  if (!s.ok) return showLogin();
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#whoami').hidden = false;
  $('#who').textContent = `${s.json.user} on ${s.json.node.name} (${s.json.node.version})`;
  live();
}

$('#login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const token = $('#token').value.trim();
  const body = token ? { token } : { password: $('#password').value };
  const r = await call('/admin/login', { method: 'POST', body });
  $('#password').value = '';
  if (r.ok) {
    $('#token').value = '';
    $('#login-error').textContent = '';
    return start();
  }
  $('#login-error').textContent = r.json?.error ?? `login failed (${r.status})`;
});

$('#logout').addEventListener('click', async () => {
  await call('/admin/logout', { method: 'POST' });
  showLogin('Logged out.');
});

// ---- live overview -------------------------------------------------------------------------------

function live() {
  stream?.close();
  stream = new EventSource('/admin/api/events');
  stream.addEventListener('hello', (e) => {
    points = JSON.parse(e.data).history;
  });
  stream.addEventListener('tick', (e) => {
    const tick = JSON.parse(e.data);
    if (tick.point && tick.point.t && !points.some((p) => p.t === tick.point.t)) {
      points.push(tick.point);
      if (points.length > HISTORY) points.shift();
    }
    last = tick;
    render(tick);
  });
  stream.addEventListener('logout', () => showLogin('The session ended; log in again.'));
  stream.onerror = async () => {
    $('#live').textContent = 'connection lost: reconnecting…';
    if (stream.readyState === EventSource.CLOSED) {
      const s = await call('/admin/api/session');
      if (!s.ok) showLogin('The session ended; log in again.');
      else setTimeout(live, 1000);
    }
  };
}

function render(tick) {
  const p = tick.point ?? {};
  const nodes = tick.nodes ?? [];
  const total = (k) => nodes.reduce((a, n) => a + n[k], 0);
  $('#live').textContent = `live: ${nodes.length} node${nodes.length === 1 ? '' : 's'}, updated ${new Date().toLocaleTimeString('en-GB')}`;
  $('#c-clients').textContent = num(total('num_clients'));
  $('#c-users').textContent = num(total('num_users'));
  $('#c-subs').textContent = num(total('num_subscriptions'));
  $('#c-channels').textContent = num(total('num_channels'));
  $('#c-in').textContent = num(p.publications, 1);
  $('#c-out').textContent = num(p.deliveries, 1);
  $('#c-mem').textContent = p.memory ? bytes(p.memory) : '–';
  $('#c-slow').textContent = num(points.reduce((a, q) => a + q.slow_disconnects, 0));
  const proxied = points.filter((q) => q.proxy_ms !== null).at(-1);
  $('#c-proxy').textContent = proxied ? `${proxied.proxy_ms.toFixed(1)} ms` : 'no calls';
  $('#c-proxy-err').textContent = num(points.reduce((a, q) => a + q.proxy_errors, 0));

  fill($('#nodes tbody'), nodes.map((n) => {
    const f = n.figures;
    const split = f ? Object.entries(f.clients).filter(([, v]) => v > 0).map(([t, v]) => `${name(t)} ${num(v)}`).join(', ') : '';
    return el('tr', { 'data-node': n.id },
      el('th', { scope: 'row' }, n.name, n.id === tick.self ? ' (this one)' : ''),
      el('td', {}, n.version), el('td', {}, uptime(n.uptime)),
      el('td', { class: 'n' }, num(n.num_clients)),
      el('td', { class: 'small' }, f ? split || 'none' : '–'),
      el('td', { class: 'n' }, num(n.num_users)),
      el('td', { class: 'n' }, num(n.num_channels)), el('td', { class: 'n' }, num(n.num_subscriptions)),
      el('td', { class: 'n' }, f ? num(f.deliveries, 1) : '–'),
      el('td', { class: 'n' }, f ? bytes(f.memory) : '–'));
  }));

  const transports = [...new Set(['websocket', 'sse', 'long-poll', 'poll', ...Object.keys(p.clients ?? {}), 'http'])];
  fill($('#transports tbody'), transports.map((t) => el('tr', { 'data-transport': t },
    el('th', { scope: 'row' }, name(t)),
    el('td', { class: 'n' }, t === 'http' ? '' : num(p.clients?.[t] ?? 0)),
    el('td', { class: 'n' }, num(p.requests?.[t] ?? 0, 1)),
    el('td', { class: 'n' }, bytes(p.bytes_in?.[t] ?? 0)),
    el('td', { class: 'n' }, bytes(p.bytes_out?.[t] ?? 0)))));

  plot($('#p-clients'), [points.map((q) => sum(q.clients))]);
  plot($('#p-msgs'), [points.map((q) => q.publications), points.map((q) => q.deliveries)]);
  plot($('#p-bytes'), [points.map((q) => q.bytes_out?.websocket ?? 0),
    points.map((q) => sum(q.bytes_out) - (q.bytes_out?.websocket ?? 0))], bytes);
  plot($('#p-proxy'), [points.map((q) => q.proxy_ms ?? 0)]);

  renderCost(tick.cost ?? []);
  renderAudit(tick.audit ?? []);
}

const SVG = 'http://www.w3.org/2000/svg';
const W = 300, H = 90, PAD = 14;

/** Lines of `series` (equal lengths, oldest first) over the last 15 minutes, in an SVG. */
function plot(svg, series, format = (n) => num(n, 1)) {
  svg.setAttribute('viewBox', `0 0 ${W} ${H + PAD}`);
  const max = Math.max(1e-9, ...series.flat());
  const parts = [];
  const line = (y) => { const l = document.createElementNS(SVG, 'line'); l.setAttribute('x1', 0); l.setAttribute('x2', W); l.setAttribute('y1', y); l.setAttribute('y2', y); l.setAttribute('class', 'grid'); return l; };
  parts.push(line(PAD), line(H));
  // Up to 15 minutes, but at least one: a node that just started still gets a readable plot.
  const span = Math.max(60, ...series.map((v) => v.length));
  series.forEach((values, i) => {
    const n = values.length;
    if (!n) return;
    const pts = values.map((v, j) => {
      const x = W - ((n - 1 - j) / (span - 1)) * W;
      const y = H - (v / max) * (H - PAD);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const pl = document.createElementNS(SVG, 'polyline');
    pl.setAttribute('points', pts.join(' '));
    pl.setAttribute('class', `s${i + 1}`);
    parts.push(pl);
  });
  const text = (x, y, s, anchor = 'start') => { const t = document.createElementNS(SVG, 'text'); t.setAttribute('x', x); t.setAttribute('y', y); t.setAttribute('text-anchor', anchor); t.textContent = s; return t; };
  parts.push(text(2, PAD - 3, `max ${format(series.flat().length ? max : 0)}`));
  const ago = span >= 120 ? `−${Math.round(span / 60)} min` : `−${span} s`;
  parts.push(text(2, H + PAD - 2, ago), text(W - 2, H + PAD - 2, 'now', 'end'));
  svg.replaceChildren(...parts);
}

function renderCost(rows) {
  const ws = rows.find((r) => r.transport === 'websocket');
  const wsBytes = ws && ws.bytes_down_per_msg !== null ? ws.bytes_down_per_msg + (ws.bytes_up_per_msg ?? 0) : null;
  const fmt = (v, d = 2) => (v === null || v === undefined ? '–' : num(v, d));
  fill($('#cost-table tbody'), rows.map((r) => {
    const total = r.bytes_down_per_msg === null && r.bytes_up_per_msg === null ? null
      : (r.bytes_down_per_msg ?? 0) + (r.bytes_up_per_msg ?? 0);
    const times = wsBytes && total !== null && r.transport !== 'http' ? `${(total / wsBytes).toFixed(1)}×` : '–';
    return el('tr', { 'data-transport': r.transport },
      el('th', { scope: 'row' }, name(r.transport)),
      el('td', { class: 'n' }, num(r.clients)),
      el('td', { class: 'n' }, num(r.deliveries, 1)),
      el('td', { class: 'n' }, fmt(r.requests_per_msg)),
      el('td', { class: 'n' }, fmt(r.bytes_down_per_msg, 0)),
      el('td', { class: 'n' }, fmt(r.bytes_up_per_msg, 0)),
      el('td', { class: 'n' }, times));
  }));
}

function renderAudit(entries) {
  fill($('#audit tbody'), [...entries].reverse().map((a) => el('tr', {},
    el('td', {}, new Date(a.t * 1000).toLocaleTimeString('en-GB')),
    el('td', {}, a.user), el('td', {}, a.method),
    el('td', {}, el('code', {}, a.body)), el('td', {}, a.outcome))));
}

// ---- channels ------------------------------------------------------------------------------------

$('#search').addEventListener('submit', async (e) => {
  e.preventDefault();
  const prefix = $('#prefix').value;
  const r = await call(`/admin/api/channels?${new URLSearchParams({ prefix })}`);
  if (!r.ok) { $('#search-note').textContent = r.json?.error ?? `failed (${r.status})`; return; }
  const { channels, total, nodes, unanswered } = r.json;
  $('#search-note').textContent = `${total} channel${total === 1 ? '' : 's'} with subscribers, from ${nodes} node${nodes === 1 ? '' : 's'}`
    + (unanswered ? `; ${unanswered} did not answer` : '') + (total > channels.length ? ` (the busiest ${channels.length} shown)` : '');
  fill($('#channel-list tbody'), channels.map((c) => el('tr', {},
    el('th', { scope: 'row' }, el('button', { type: 'button', class: 'link', onclick: () => openChannel(c.name) }, c.name)),
    el('td', { class: 'n' }, num(c.subscribers)))));
});

let current = null;

async function openChannel(channel) {
  current = channel;
  const r = await call(`/admin/api/channel?${new URLSearchParams({ name: channel })}`);
  $('#channel').hidden = false;
  $('#channel-h').textContent = channel;
  if (!r.ok) { $('#channel-stats').textContent = r.json?.error ?? `failed (${r.status})`; return; }
  const { presence, stats, history } = r.json;
  $('#channel-stats').textContent = stats.unavailable
    ? `presence: ${stats.unavailable.message}`
    : `${stats.num_clients} client${stats.num_clients === 1 ? '' : 's'}, ${stats.num_users} user${stats.num_users === 1 ? '' : 's'} here`;
  const here = presence.unavailable ? [] : Object.values(presence.presence ?? {});
  fill($('#presence tbody'), here.length ? here.map((c) => el('tr', {},
    el('td', {}, c.user || '(anonymous)'), el('td', {}, el('code', {}, c.client)),
    el('td', {}, c.info === undefined ? '' : JSON.stringify(c.info)),
    el('td', {},
      el('button', { type: 'button', class: 'danger small', onclick: () => act('unsubscribe', { user: c.user, client: c.client, channel }) }, 'Unsubscribe…'),
      ' ',
      el('button', { type: 'button', class: 'danger small', onclick: () => act('disconnect', { user: c.user, client: c.client }) }, 'Disconnect…'))))
    : [el('tr', {}, el('td', { colspan: 4, class: 'muted' }, presence.unavailable ? presence.unavailable.message : 'nobody'))]);
  const pubs = history.unavailable ? [] : history.publications ?? [];
  fill($('#history'), pubs.length ? pubs.map((p) => el('li', { value: p.offset },
    el('code', {}, p.data !== undefined ? JSON.stringify(p.data) : `(binary) ${p.b64data}`)))
    : [el('li', { class: 'muted' }, history.unavailable ? history.unavailable.message : 'no publications kept')]);
}

$('#ch-publish').addEventListener('click', () => {
  $('#pub-channel').value = current;
  $('#pub-data').focus();
  location.hash = '#actions';
});
$('#ch-history-remove').addEventListener('click', () => act('history_remove', { channel: current }));

// ---- actions -------------------------------------------------------------------------------------

/** Asks, then calls the API method through the console; says what happened. */
async function act(method, body) {
  const dialog = $('#confirm');
  $('#confirm-h').textContent = `${method.replace('_', ' ')}: are you sure?`;
  $('#confirm-body').textContent = JSON.stringify(body, null, 2);
  dialog.returnValue = '';
  dialog.showModal();
  const answer = await new Promise((resolve) => dialog.addEventListener('close', () => resolve(dialog.returnValue), { once: true }));
  const out = $('#action-result');
  if (answer !== 'ok') { out.textContent = `${method}: cancelled`; return; }
  const r = await call(`/admin/api/action/${method}`, { method: 'POST', body });
  if (r.status === 401) return showLogin('The session ended; log in again.');
  out.className = r.ok ? 'ok' : 'error';
  out.textContent = r.ok
    ? `${method}: done ${JSON.stringify(r.json.result)}`
    : `${method}: ${r.json?.error?.message ?? r.json?.error ?? r.status}`;
  if (current && r.ok) openChannel(current);
}

function checkJson() {
  const area = $('#pub-data');
  try {
    JSON.parse(area.value);
    area.removeAttribute('aria-invalid');
    $('#pub-check').textContent = 'valid JSON';
    $('#pub-check').className = 'muted small';
    return true;
  } catch (err) {
    area.setAttribute('aria-invalid', 'true');
    $('#pub-check').textContent = `not JSON: ${err.message}`;
    $('#pub-check').className = 'error small';
    return false;
  }
}
$('#pub-data').addEventListener('input', checkJson);

for (const form of document.querySelectorAll('.forms form')) {
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const method = form.dataset.method;
    const body = {};
    for (const [k, v] of new FormData(form)) {
      if (v === '') continue;
      body[k] = v;
    }
    if (method === 'publish') {
      if (!checkJson()) { $('#pub-data').focus(); return; }
      body.data = JSON.parse(body.data);
    }
    act(method, body);
  });
}

start();
