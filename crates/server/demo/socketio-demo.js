// The chat demo over Socket.IO: the same rooms (channels `chat:<room>`) and the same messages as the
// native page at `/`, with the stock socket.io-client (`io`, loaded by socketio.html from
// /socket.io.min.js). The server maps a socket of the main namespace onto a switchboard client:
// `emit('subscribe', channel, ack)` and `emit('publish', channel, data, ack)` are those commands,
// their ack carries `null` or the error, and a publication arrives as `publication(channel, data)`.
//
// As on the native page, every line shown is true: a message is "sending…" until its own publication
// comes back from the room (or the server refused it).

const $ = (id) => document.getElementById(id);
/** How long a command may wait for its ack before it counts as not sent. */
const ACK_TIMEOUT_MS = 10000;

let socket = null;
let room = null; // { channel, nick }
let received = 0;
const pending = new Map(); // message id -> its <li>, until its publication arrives

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
// For the browser tests and for poking around in the console: the current socket.
window.socketioDemo = { get socket() { return socket; } };

function valid() {
  const nick = $('nick');
  const roomInput = $('room');
  let error = '';
  let field = null;
  if (!nick.value.trim()) {
    error = 'Choose a nickname (up to 24 characters).';
    field = nick;
  } else if (!/^[A-Za-z0-9_-]{1,40}$/.test(roomInput.value.trim())) {
    error = 'Room names use letters A–Z or a–z, digits, "-" and "_" (1 to 40 characters, no spaces).';
    field = roomInput;
  }
  for (const input of [nick, roomInput]) input.setAttribute('aria-invalid', String(input === field));
  $('join-error').textContent = error;
  field?.focus();
  return !field;
}

function join() {
  if (!valid()) return;
  socket?.disconnect();
  const nick = $('nick').value.trim();
  const name = $('room').value.trim();
  const transport = $('transport').value;
  history.replaceState(null, '', `?${new URLSearchParams({ nick, room: name, transport })}`);
  $('messages').replaceChildren();
  pending.clear();
  received = 0;
  const r = { channel: `chat:${name}`, nick };
  room = r;
  const s = io({
    transports: transport === 'auto' ? ['polling', 'websocket'] : [transport],
    timeout: ACK_TIMEOUT_MS,
  });
  socket = s;
  s.on('connect', async () => {
    meter();
    system(`connected over ${s.io.engine.transport.name}`);
    s.io.engine.once('upgrade', (t) => {
      meter();
      system(`upgraded to ${t.name}`);
    });
    // A new connection is a new switchboard client: join the room again, then say who we are.
    try {
      await command(s, 'subscribe', r.channel);
      if (r !== room) return;
      system(`joined #${name}`);
      $('m-room').textContent = `#${name}`;
      command(s, 'publish', r.channel, { type: 'hello', nick }).catch(() => {});
    } catch (e) {
      system(`could not join #${name}: ${e.message}`);
    }
  });
  s.on('connect_error', (e) => {
    meter();
    system(`cannot connect: ${e.message}`);
  });
  s.on('disconnect', (reason) => {
    $('m-room').textContent = '–';
    meter();
    system(`disconnected (${reason})${s.active ? ': reconnecting' : ''}`);
  });
  s.on('publication', (channel, data) => {
    if (r !== room || channel !== r.channel) return;
    received++;
    meter();
    render(data ?? {});
  });
  const input = $('text');
  input.disabled = false;
  input.placeholder = `Message #${name} as ${nick}`;
  $('composer').querySelector('button').disabled = false;
  input.focus();
}

/** Emits a command and waits for its ack: resolves on `null`, rejects with the server's error. */
async function command(s, event, ...args) {
  // The ack's first argument: `null`, or the error (a timeout rejects).
  const err = await s.timeout(ACK_TIMEOUT_MS).emitWithAck(event, ...args);
  if (err) throw new Error(`${err.message ?? 'refused'}${err.code ? ` (${err.code})` : ''}`);
}

function render(d) {
  if (d.type === 'hello' && typeof d.nick === 'string') {
    if (d.nick !== room.nick) system(`${d.nick} is here`);
    return;
  }
  if (d.type !== 'msg' || typeof d.text !== 'string') return;
  const mine = pending.get(d.id);
  if (mine) {
    pending.delete(d.id);
    setStatus(mine, null);
    return;
  }
  append(messageItem({ ...d, nick: d.nick ?? 'server' }, typeof d.ts === 'number' ? d.ts : Date.now()));
}

function send() {
  const input = $('text');
  const text = input.value.trim();
  if (!text || !room || !socket) return;
  input.value = '';
  const id = crypto.randomUUID?.() ?? String(Math.random()).slice(2);
  const data = { type: 'msg', nick: room.nick, text, id, ts: Date.now() };
  const li = messageItem(data, data.ts);
  setStatus(li, 'pending', socket.connected ? 'sending…' : 'sending… (waiting for the connection)');
  pending.set(id, li);
  append(li);
  command(socket, 'publish', room.channel, data).then(() => {
    if (pending.has(id)) setStatus(li, 'sent', 'sent');
  }, (e) => {
    if (!pending.delete(id)) return;
    setStatus(li, 'failed', `not sent: ${e.message}`);
  });
}

function messageItem(d, when) {
  const li = document.createElement('li');
  li.className = 'msg';
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date(when).toLocaleTimeString();
  const nick = document.createElement('span');
  nick.className = 'nick';
  nick.textContent = d.nick;
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

function meter() {
  if (!socket) return;
  const state = $('m-state');
  const s = socket.connected ? 'connected' : (socket.active ? 'connecting' : 'disconnected');
  state.textContent = s;
  state.className = s;
  $('m-transport').textContent = socket.connected ? socket.io.engine.transport.name : '–';
  $('m-id').textContent = socket.id ?? '–';
  $('m-received').textContent = received.toLocaleString();
}
