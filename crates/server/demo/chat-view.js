// What the chat demo's two pages show alike, written once: the native page (demo.js) and the
// Socket.IO page (socketio-demo.js) differ in how they connect, not in how a room looks. The join
// form and its checks, chat lines with their status while being sent, system lines, and the colour
// of each nickname.
//
// Every line shown must be true: a message is "sending…" until its own publication comes back from
// the room (then the status goes), "sent" once the server took it, or "not sent" and why.

export const $ = (id) => document.getElementById(id);

const ROOM_RULE = 'Room names use letters A–Z or a–z, digits, "-" and "_" (1 to 40 characters, no spaces).';

/** Messages of this page not yet back from the room: message id -> its <li>. */
const pending = new Map();

/**
 * Fills the join form from the page's query (`?nick=…&room=…&transport=…`), and calls `join` when
 * it is submitted and `send` when the composer is.
 */
export function setUpForms(join, send) {
  const params = new URLSearchParams(location.search);
  for (const key of ['nick', 'room', 'transport']) {
    if (params.get(key)) $(key).value = params.get(key);
  }
  $('join').addEventListener('submit', (e) => {
    e.preventDefault();
    join();
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
}

/** Checks the join form; says what is wrong and what is allowed. */
export function validJoin(focus = true) {
  const nick = $('nick');
  const roomInput = $('room');
  let error = '';
  let field = null;
  if (!nick.value.trim()) {
    error = 'Choose a nickname (up to 24 characters).';
    field = nick;
  } else if (!/^[A-Za-z0-9_-]{1,40}$/.test(roomInput.value.trim())) {
    error = roomInput.value.trim() ? `"${roomInput.value.trim()}" is not a room name. ${ROOM_RULE}` : ROOM_RULE;
    field = roomInput;
  }
  for (const input of [nick, roomInput]) input.setAttribute('aria-invalid', String(input === field));
  $('join-error').textContent = error;
  if (field && focus) field.focus();
  return !field;
}

/**
 * The room the form names, remembered in the address (a reload joins it again), with the message
 * list emptied and the composer ready for it (and focused): `{ nick, name, transport }`.
 */
export function enterRoom() {
  const nick = $('nick').value.trim();
  const name = $('room').value.trim();
  const transport = $('transport').value;
  history.replaceState(null, '', `?${new URLSearchParams({ nick, room: name, transport })}`);
  $('messages').replaceChildren();
  pending.clear();
  const input = $('text');
  input.disabled = false;
  input.placeholder = `Message #${name} as ${nick}`;
  $('composer').querySelector('button').disabled = false;
  input.focus();
  return { nick, name, transport };
}

/**
 * Shows a chat message published in the room (`d` is the publication's data). This page's own is
 * shown since it was typed: it is in the room now, and its status goes. Returns whether it was
 * another's message, now shown.
 */
export function showMessage(d) {
  if (d.type !== 'msg' || typeof d.text !== 'string') return false;
  const mine = pending.get(d.id);
  if (mine) {
    pending.delete(d.id);
    setStatus(mine, null);
    return false;
  }
  // Publications from a backend (the API) may carry no time nor nick: then it is when it arrived,
  // from "server".
  append(messageItem({ ...d, nick: d.nick ?? 'server' }, typeof d.ts === 'number' ? d.ts : Date.now()));
  return true;
}

/**
 * Sends what the composer holds as `nick`: shown at once, as what it is (not in the room yet), then
 * `publish(data)` (a promise) says whether the server took it. `connected`: whether the page is
 * connected now (if not, the message waits for the connection).
 */
export function sendMessage(nick, connected, publish) {
  const input = $('text');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  const id = crypto.randomUUID?.() ?? String(Math.random()).slice(2);
  const data = { type: 'msg', nick, text, id, ts: Date.now() };
  const li = messageItem(data, data.ts);
  setStatus(li, 'pending', connected ? 'sending…' : 'sending… (waiting for the connection)');
  pending.set(id, li);
  append(li);
  publish(data).then(() => {
    if (pending.has(id)) setStatus(li, 'sent', 'sent');
  }, (e) => {
    if (!pending.delete(id)) return;
    setStatus(li, 'failed', `not sent: ${e.message}`);
  });
}

/** A chat line: time, nick, text (and a status while it is being sent). */
function messageItem(d, when) {
  const li = document.createElement('li');
  li.className = 'msg';
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date(when).toLocaleTimeString();
  const nick = document.createElement('span');
  nick.className = 'nick';
  nick.textContent = d.nick;
  nick.style.color = color(String(d.nick));
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = d.text;
  li.append(time, nick, text);
  return li;
}

function setStatus(li, state, text) {
  li.classList.remove('pending', 'sent', 'failed');
  li.querySelector('.status')?.remove();
  if (!state) return;
  li.classList.add(state);
  const status = document.createElement('span');
  status.className = 'status';
  status.textContent = text;
  li.append(status);
}

/** A line about the connection or the room, not from anyone. */
export function system(text) {
  const li = document.createElement('li');
  li.className = 'system';
  li.textContent = text;
  append(li);
}

/** Adds a line, following the newest unless the reader scrolled up. */
function append(li) {
  const list = $('messages');
  const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  list.append(li);
  if (atEnd) list.scrollTop = list.scrollHeight;
}

/** Relative luminance of an sRGB colour (WCAG 2). */
function luminance([r, g, b]) {
  const lin = (c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

function hsl(h, s, l) {
  const a = s * Math.min(l, 1 - l);
  const f = (n) => {
    const k = (n + h / 30) % 12;
    return l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1));
  };
  return [f(0), f(8), f(4)];
}

/** A colour per nickname, dark enough for 4.5:1 on the page's background (#f3f5f9). */
function color(nick) {
  let h = 0;
  for (const c of nick) h = (h * 31 + c.codePointAt(0)) % 360;
  const bg = luminance([0xf3 / 255, 0xf5 / 255, 0xf9 / 255]);
  let l = 0.4;
  while (l > 0.1 && (bg + 0.05) / (luminance(hsl(h, 0.6, l)) + 0.05) < 4.8) l -= 0.02;
  return `hsl(${h} 60% ${Math.round(l * 100)}%)`;
}
