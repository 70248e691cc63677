// The chat demo over Socket.IO: the same rooms (channels `chat:<room>`) and the same messages as the
// native page at `/`, with the stock socket.io-client (`io`, loaded by socketio.html from
// /socket.io.min.js). The server maps a socket of the main namespace onto a switchboard client:
// `emit('subscribe', channel, ack)` and `emit('publish', channel, data, ack)` are those commands,
// their ack carries `null` or the error, and a publication arrives as `publication(channel, data)`.
//
// The room itself (the form, the chat lines and their status) is the native page's: chat-view.js.
import { $, enterRoom, sendMessage, setUpForms, showMessage, system, validJoin } from '/chat-view.js';

/** How long a command may wait for its ack before it counts as not sent. */
const ACK_TIMEOUT_MS = 10000;

let socket = null;
let room = null; // { channel, nick }
let received = 0;

setUpForms(join, send);
// For the browser tests and for poking around in the console: the current socket.
window.socketioDemo = { get socket() { return socket; } };

function join() {
  if (!validJoin()) return;
  socket?.disconnect();
  const { nick, name, transport } = enterRoom();
  received = 0;
  const r = { channel: `chat:${name}`, nick };
  room = r;
  const s = io({
    transports: transport === 'auto' ? ['polling', 'websocket'] : [transport],
    timeout: ACK_TIMEOUT_MS,
  });
  socket = s;
  // Listened for as soon as the Engine.IO connection opens, not on `connect`: the upgrade's probe
  // starts at that open, and can finish before the namespace's `connect` arrives (it then comes
  // over the WebSocket).
  s.io.on('open', () => {
    s.io.engine.once('upgrade', (t) => {
      meter();
      system(`upgraded to ${t.name}`);
    });
  });
  s.on('connect', async () => {
    meter();
    system(`connected over ${s.io.engine.transport.name}`);
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
  showMessage(d);
}

function send() {
  if (!room || !socket) return;
  const [s, { channel, nick }] = [socket, room];
  sendMessage(nick, s.connected, (data) => command(s, 'publish', channel, data));
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
