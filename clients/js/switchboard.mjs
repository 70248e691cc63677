// switchboard client: the JSON protocol of docs/protocol.md over WebSocket, SSE, long polling or
// polling, with automatic fallback, reconnection with backoff, and recovery of missed publications.
// One file, no dependencies: browsers load it as an ES module, Node 20 imports it (pass `WebSocket`
// and `EventSource` constructors where Node lacks them). It is `.mjs` so that a copy of this file
// alone is an ES module in any project, CommonJS ones included (`await import('./switchboard.mjs')`).

export const VERSION = '0.1.0';

/** Transports in the order they are tried by default. */
export const TRANSPORTS = ['websocket', 'sse', 'long-poll', 'poll'];

/** Codes of errors raised by the client itself (server codes start at 100). */
export const ErrorCode = Object.freeze({ TIMEOUT: 1, CONNECTION_LOST: 2, CLIENT_CLOSED: 3 });

const DEFAULTS = {
  transports: TRANSPORTS,
  websocketPath: '/connection/websocket',
  httpPath: '/connection/http',
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  connectTimeout: 5000,
  timeout: 10000,
  pollInterval: 1000,
  debug: false,
  name: 'switchboard-js',
  version: VERSION,
};

/** An error reply from the server, or a local failure (timeout, lost connection). */
export class SwitchboardError extends Error {
  constructor(code, message, temporary = false) {
    super(message);
    this.name = 'SwitchboardError';
    this.code = code;
    this.temporary = temporary;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first): "full jitter", a uniform draw
 * between 0 and an exponentially growing cap, so that clients dropped together (a server restart)
 * do not come back together.
 */
export function backoff(attempt, min, max, random = Math.random) {
  const cap = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/** Whether a disconnect or WebSocket close code advises reconnecting (docs/protocol.md). */
export function shouldReconnect(code) {
  return !(code >= 3500 && code <= 3999);
}

class Emitter {
  #listeners = new Map();

  /** Calls `fn` on every `event`; returns a function that removes it. */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /** Resolves with the next `event`'s argument. */
  once(event) {
    return new Promise((resolve) => {
      const off = this.on(event, (ctx) => {
        off();
        resolve(ctx);
      });
    });
  }

  emit(event, ctx) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(ctx);
      } catch (e) {
        // A throwing listener must not break the connection's state machine; report it the way
        // browsers report a throwing event listener: as an uncaught error, later.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

const encoder = new TextEncoder();
const utf8Length = (text) => encoder.encode(text).length;

/**
 * Splits a frame or body of newline-separated JSON objects. A line that does not parse is handed to
 * `bad(line, error)` and skipped: one unreadable message is reported, never a reason to lose the
 * others of its frame (or to fail without a word).
 */
function parseLines(text, bad) {
  const out = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      out.push(JSON.parse(line));
    } catch (error) {
      bad(line, error);
    }
  }
  return out;
}

/**
 * What an `error` event of type `message` says about a line that could not be parsed: its channel and
 * offset when they can be read from the text (a publication), and its start.
 */
function describeBad(line, error) {
  const channel = /"channel"\s*:\s*"((?:[^"\\]|\\.)*)"/.exec(line)?.[1];
  const offset = /"offset"\s*:\s*(\d+)/.exec(line)?.[1];
  return {
    type: 'message',
    error,
    channel,
    offset: offset === undefined ? undefined : Number(offset),
    line: line.length > 200 ? `${line.slice(0, 200)}...` : line,
  };
}

/** Resolves after `ms`, or at once when `signal` aborts. */
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done);
  });

/**
 * A connection to switchboard that survives disconnects: it reconnects, falls back to the next
 * transport when one cannot connect, and resubscribes with recovery.
 */
export class Client extends Emitter {
  constructor(url, options = {}) {
    super();
    const base = url ?? globalThis.location?.origin;
    if (!base) throw new TypeError('switchboard: a server URL is needed outside a browser page');
    this.options = { ...DEFAULTS, ...options };
    this.url = new URL(base);
    this.state = 'disconnected';
    /** The transport in use while connected. */
    this.transport = null;
    /** This connection's id, from the connect reply. */
    this.clientId = null;
    /**
     * Requests made (HTTP requests and WebSocket handshakes), payload bytes sent and received, and,
     * for WebSocket, the bytes of the frames that carried them (`frameBytesUp`/`frameBytesDown`); for
     * SSE, the bytes of the events as the stream carried them (`streamBytesDown`: `id:` and `data:`
     * lines, without the response head, which Resource Timing reports once the stream ends); for the
     * HTTP transports, the request bodies sent (`bodyBytesUp`).
     */
    this.stats = { requests: 0, bytesUp: 0, bytesDown: 0, frameBytesUp: 0, frameBytesDown: 0, streamBytesDown: 0, bodyBytesUp: 0 };
    /** While `state` is `connecting`: when the next attempt (or retried request) is due (ms since epoch). */
    this.retryAt = null;
    this._token = options.token ?? null;
    this._subs = new Map();
    this._pending = new Map();
    this._nextId = 1;
    this._waiting = [];
    this._outbox = [];
    this._conn = null;
    this._attempt = 0;
    this._preferred = null;
    this._timers = new Set();
    this._refreshTimer = null;
    // Bumped by disconnect(): an attempt that was waiting for a token then knows it is stale.
    this._run = 0;
    this._told = false; // the transport choice was logged
    this._failures = new Map(); // transport -> why it last failed to connect
    this._onPageHide = (e) => this._pageHidden(e);
    this._onPageShow = (e) => this._pageShown(e);
    this._hiddenConnected = false;
  }

  /**
   * Debug output: `options.debug` (a function, or `true` for `console.debug`), or `NODE_DEBUG`
   * naming `switchboard` in Node.
   */
  _debug(message) {
    const d = this.options.debug;
    if (typeof d === 'function') d(message);
    else if (d || /\bswitchboard\b/.test(globalThis.process?.env?.NODE_DEBUG ?? '')) console.debug(`switchboard: ${message}`);
  }

  /** Why a transport cannot be used here, or null when it can. */
  _unavailable(name) {
    const fetchOk = typeof (this.options.fetch ?? globalThis.fetch) === 'function';
    const node = typeof globalThis.process?.versions?.node === 'string';
    switch (name) {
      case 'websocket':
        if (typeof (this.options.WebSocket ?? globalThis.WebSocket) === 'function') return null;
        return node
          ? `no WebSocket in Node ${globalThis.process.versions.node} (Node 22 has one; on Node 20 run with --experimental-websocket or pass options.WebSocket)`
          : 'no WebSocket here';
      case 'sse':
        if (!fetchOk) return 'no fetch here';
        if (typeof (this.options.EventSource ?? globalThis.EventSource) === 'function') return null;
        return node ? 'no EventSource in Node (pass options.EventSource, e.g. from the eventsource package)' : 'no EventSource here';
      case 'long-poll':
      case 'poll':
        return fetchOk ? null : 'no fetch here';
      default:
        throw new TypeError(`switchboard: unknown transport ${name}`);
    }
  }

  /**
   * The page is going away (closed, reloaded, navigated from): end an HTTP session now, with a request
   * that survives the unload, so that others see this client leave at once, as over WebSocket (the
   * browser closes a WebSocket by itself). A page kept for back/forward reconnects when shown again.
   */
  _pageHidden(e) {
    if (this.state === 'disconnected') return;
    this._hiddenConnected = e?.persisted === true;
    this.disconnect();
  }

  _pageShown(e) {
    if (e?.persisted && this._hiddenConnected) {
      this._hiddenConnected = false;
      this.connect();
    }
  }

  /** Starts connecting (and reconnecting until `disconnect()`). */
  connect() {
    if (this.state !== 'disconnected') return;
    if (typeof globalThis.addEventListener === 'function') {
      globalThis.addEventListener('pagehide', this._onPageHide);
      globalThis.addEventListener('pageshow', this._onPageShow);
    }
    this._attempt = 0;
    this._setState('connecting');
    this._startAttempt();
  }

  /**
   * Closes the connection for good (an HTTP session is ended on the server at once, so presence and
   * leave pushes change as they do for a closed WebSocket); `connect()` starts again and resubscribes.
   */
  disconnect() {
    if (typeof globalThis.removeEventListener === 'function') {
      globalThis.removeEventListener('pagehide', this._onPageHide);
      // pageshow stays: a page restored from the back/forward cache reconnects.
      if (!this._hiddenConnected) globalThis.removeEventListener('pageshow', this._onPageShow);
    }
    if (this.state === 'disconnected') return;
    this._run++;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    clearTimeout(this._refreshTimer);
    const conn = this._conn;
    this._conn = null;
    conn?.transport.close(true);
    this._failPending(new SwitchboardError(ErrorCode.CLIENT_CLOSED, 'client disconnected'));
    for (const sub of this._subs.values()) sub._lost();
    this.transport = null;
    this._setState('disconnected');
    this.emit('disconnected', { code: 0, reason: 'client disconnected', reconnect: false });
  }

  /** The subscription to `channel`, made (and started) if new. */
  subscribe(channel, options = {}) {
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = new Subscription(this, channel, options);
      this._subs.set(channel, sub);
    }
    sub.subscribe();
    return sub;
  }

  getSubscription(channel) {
    return this._subs.get(channel) ?? null;
  }

  /** Unsubscribes and forgets the subscription. */
  removeSubscription(sub) {
    sub.unsubscribe();
    this._subs.delete(sub.channel);
  }

  publish(channel, data) {
    return this._call('publish', { channel, data });
  }

  async presence(channel) {
    return (await this._call('presence', { channel })).presence;
  }

  presenceStats(channel) {
    return this._call('presence_stats', { channel });
  }

  /** `options`: `limit`, `since` ({epoch, offset}), `reverse`. */
  history(channel, options = {}) {
    return this._call('history', { channel, ...options });
  }

  async rpc(method, data) {
    return (await this._call('rpc', { method, data })).data;
  }

  /** Sends a command once connected; resolves with its result or rejects with its error. */
  _call(method, params) {
    if (this.state === 'disconnected') {
      return Promise.reject(new SwitchboardError(ErrorCode.CLIENT_CLOSED, 'client is disconnected'));
    }
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const line = JSON.stringify({ id, [method]: params });
      const timer = setTimeout(() => {
        this._pending.delete(id);
        this._waiting = this._waiting.filter((w) => w.id !== id);
        reject(new SwitchboardError(ErrorCode.TIMEOUT, `${method}: no reply in time`, true));
      }, this.options.timeout);
      this._pending.set(id, {
        timer,
        reject,
        reply: (r) => (r.error ? reject(serverError(r.error)) : resolve(r[method] ?? {})),
      });
      if (this.state === 'connected') this._send(line);
      else this._waiting.push({ id, line });
    });
  }

  /** Sends a command whose reply `onReply` handles; it is dropped (not failed) if the connection ends. */
  _command(method, params, onReply) {
    const id = this._nextId++;
    this._pending.set(id, { internal: true, reply: onReply });
    this._send(JSON.stringify({ id, [method]: params }));
  }

  /** Queues a line; lines queued in one tick leave together, in one frame or request. */
  _send(line) {
    this._outbox.push(line);
    if (this._outbox.length > 1) return;
    queueMicrotask(() => {
      const lines = this._outbox.splice(0);
      if (lines.length > 0) this._conn?.transport.send(lines.join('\n'));
    });
  }

  _setState(state) {
    if (state !== 'connecting') this.retryAt = null;
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.emit('state', { state, previous });
  }

  /**
   * A request of the connected transport failed (the server or the network is gone for now): the
   * connection is not working, so the state says `connecting` until a request succeeds again, with
   * the time of the next try. The transport keeps its session meanwhile.
   */
  _trouble(conn, { reason, delay }) {
    if (this._conn !== conn || !conn.ready) return;
    this.retryAt = Date.now() + delay;
    this._setState('connecting');
    this.emit('reconnecting', { reason, delay, transport: conn.name });
  }

  /** A request of the connected transport succeeded again after `_trouble`. */
  _working(conn) {
    if (this._conn !== conn || !conn.ready || this.state !== 'connecting') return;
    this._setState('connected');
    for (const w of this._waiting.splice(0)) this._send(w.line);
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
  }

  /** The transports to try, the one that last worked first. */
  _order() {
    const all = this.options.transports.filter((name) => this._available(name));
    if (this._preferred && all.includes(this._preferred)) {
      return [this._preferred, ...all.filter((n) => n !== this._preferred)];
    }
    return all;
  }

  _available(name) {
    return this._unavailable(name) === null;
  }

  async _startAttempt() {
    if (!this._token && this.options.getToken) {
      const run = this._run;
      let token;
      try {
        token = await this.options.getToken();
      } catch (e) {
        if (run !== this._run) return;
        this.emit('error', { type: 'token', error: e });
        this._retry();
        return;
      }
      if (run !== this._run) return;
      this._token = token;
    }
    const order = this._order();
    if (order.length === 0) {
      const reason = 'no transport is available here';
      this.emit('error', { type: 'transport', error: new Error(reason) });
      this._setState('disconnected');
      this.emit('disconnected', { code: 0, reason, reconnect: false });
      return;
    }
    this._tryTransport(order, 0);
  }

  /** Opens `order[i]` and sends connect; on failure before the reply, goes on with `order[i + 1]`. */
  _tryTransport(order, i) {
    if (i >= order.length) {
      this._retry();
      return;
    }
    const name = order[i];
    const conn = { name, transport: null };
    let settled = false;
    const fail = (reason) => {
      if (settled || this._conn !== conn) return;
      settled = true;
      this._failures.set(name, reason);
      clearTimeout(timer);
      this._conn = null;
      // A session opened without a connect reply in time is of no use: end it.
      conn.transport.close(true);
      this.emit('error', { type: 'transport', transport: name, error: new Error(reason) });
      this._tryTransport(order, i + 1);
    };
    const timer = setTimeout(() => fail('no connect reply in time'), this.options.connectTimeout);
    conn.transport = this._makeTransport(name, {
      message: (msg) => this._conn === conn && this._handle(msg, conn),
      trouble: (info) => this._trouble(conn, info),
      working: () => this._working(conn),
      close: (info) => (settled ? this._closed(conn, info) : fail(info.reason || 'closed')),
      refused: (line) => this._refused(line),
      bad: (line, error) => {
        if (this._conn !== conn) return;
        this.emit('error', describeBad(line, error));
      },
    });
    this._conn = conn;
    const id = this._nextId++;
    this._pending.set(id, {
      internal: true,
      reply: (r) => {
        settled = true;
        clearTimeout(timer);
        if (r.error) this._rejected(conn, r.error);
        else this._connected(conn, r.connect);
      },
    });
    const params = { name: this.options.name, version: this.options.version };
    if (this._token) params.token = this._token;
    try {
      conn.transport.open(JSON.stringify({ id, connect: params }));
    } catch (e) {
      // A constructor that throws (a page's security policy, a bad URL) rules the transport out.
      fail(e.message);
    }
  }

  _makeTransport(name, on) {
    const ctx = { url: this.url, options: this.options, stats: this.stats, on };
    if (name === 'websocket') return new WebSocketTransport(ctx);
    return new HttpTransport(ctx, name);
  }

  /** Reconnects after a backoff delay, and not before `atLeast` ms (a restarting server's advice). */
  _retry(atLeast = 0) {
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const delay = Math.max(backoff(this._attempt++, min, max), atLeast);
    this._setState('connecting');
    this.retryAt = Date.now() + delay;
    this.emit('reconnecting', { reason: 'reconnecting', delay, transport: null });
    this._later(delay, () => this._startAttempt());
  }

  _connected(conn, result) {
    conn.ready = true;
    if (!this._told) {
      // Once per client: which transport, and why not the ones before it.
      this._told = true;
      const skipped = this.options.transports
        .filter((name) => name !== conn.name)
        .slice(0, Math.max(0, this.options.transports.indexOf(conn.name)))
        .map((name) => `${name}: ${this._unavailable(name) ?? this._failures.get(name) ?? 'failed to connect'}`);
      this._debug(`connected over ${conn.name}${skipped.length ? ` (not ${skipped.join('; ')})` : ''}`);
    }
    this._preferred = conn.name;
    this._attempt = 0;
    this.transport = conn.name;
    this.clientId = result.client;
    this._setState('connected');
    this.emit('connected', { ...result, transport: conn.name });
    if (result.expires) this._scheduleRefresh(result.ttl);
    for (const [channel, sub] of Object.entries(result.subs ?? {})) {
      this.emit('subscribed', { channel, ...sub });
    }
    for (const sub of this._subs.values()) sub._resubscribe();
    const waiting = this._waiting.splice(0);
    for (const w of waiting) this._send(w.line);
  }

  /** The server refused connect: the transport works, so no other transport would do better. */
  _rejected(conn, error) {
    this._conn = null;
    conn.transport.close(true);
    const err = serverError(error);
    this.emit('error', { type: 'connect', error: err });
    if (err.code === 109) {
      // Expired token: a new one from getToken may work.
      this._token = null;
      this._retry();
    } else if (err.temporary) {
      this._retry();
    } else {
      this._failPending(err);
      this._setState('disconnected');
      this.emit('disconnected', { code: 3500, reason: err.message, reconnect: false });
    }
  }

  /** The connection ended (the server closed it, or the network failed): reconnect if advised. */
  _closed(conn, info) {
    if (this._conn !== conn) return;
    this._conn = null;
    conn.transport.close();
    clearTimeout(this._refreshTimer);
    this.transport = null;
    const reconnect = info.reconnect ?? (info.code === undefined || shouldReconnect(info.code));
    this._failPending(new SwitchboardError(ErrorCode.CONNECTION_LOST, 'connection lost', true), reconnect);
    for (const sub of this._subs.values()) sub._lost();
    this.emit('disconnected', { code: info.code, reason: info.reason, reconnect });
    if (!reconnect) {
      this._setState('disconnected');
      return;
    }
    // 3005: the token expired; the next connect needs a fresh one.
    if (info.code === 3005) this._token = null;
    // A restarting server spreads its clients' returns: `delay` says how long this one should wait.
    this._retry(info.delay ?? 0);
  }

  /** A command the transport cannot carry (an HTTP body over the server's limit) fails alone. */
  _refused(line) {
    const id = JSON.parse(line).id;
    const p = this._pending.get(id);
    if (!p) return;
    this._pending.delete(id);
    clearTimeout(p.timer);
    p.reply({ id, error: { code: 106, message: 'command too large for the server', temporary: false } });
  }

  /**
   * Fails the commands in flight. `keepUnsent`: commands that never left (made while the connection
   * was failing) wait for the next connection instead, within their own timeout.
   */
  _failPending(err, keepUnsent = false) {
    const unsent = keepUnsent ? new Set(this._waiting.map((w) => w.id)) : new Set();
    for (const [id, p] of this._pending) {
      if (unsent.has(id)) continue;
      if (!p.internal) {
        clearTimeout(p.timer);
        p.reject(err);
      }
      this._pending.delete(id);
    }
    this._outbox.length = 0;
    if (!keepUnsent) this._waiting.length = 0;
  }

  _scheduleRefresh(ttl) {
    clearTimeout(this._refreshTimer);
    if (!this.options.getToken || !(ttl > 0)) return;
    // Refresh ahead of expiry: 10 s before it, or halfway for short-lived tokens.
    const ms = Math.max(ttl - 10, ttl / 2) * 1000;
    this._refreshTimer = setTimeout(async () => {
      try {
        this._token = await this.options.getToken();
        const r = await this._call('refresh', { token: this._token });
        if (r.expires) this._scheduleRefresh(r.ttl);
      } catch (error) {
        // The server disconnects with 3005 at expiry; the reconnect then asks for a new token.
        this.emit('error', { type: 'refresh', error });
      }
    }, ms);
  }

  _handle(msg, conn) {
    if (msg.id !== undefined) {
      const p = this._pending.get(msg.id);
      if (!p) return;
      this._pending.delete(msg.id);
      clearTimeout(p.timer);
      p.reply(msg);
      return;
    }
    if (msg.disconnect) {
      const { code, reason, reconnect, delay } = msg.disconnect;
      this._closed(conn, { code, reason, delay, reconnect: reconnect ?? shouldReconnect(code) });
      return;
    }
    const [kind, body] = Object.entries(msg)[0] ?? [];
    if (!body) return;
    const sub = this._subs.get(body.channel);
    if (sub) {
      sub._push(kind, body);
      return;
    }
    // Channels the server subscribed this client to (token `channels`, server API).
    const events = { pub: 'publication', join: 'join', leave: 'leave', subscribe: 'subscribed', unsubscribe: 'unsubscribed' };
    if (events[kind]) this.emit(events[kind], body);
  }
}

function serverError(e) {
  return new SwitchboardError(e.code, e.message, e.temporary ?? false);
}

/**
 * One channel: its state survives reconnects. It keeps the epoch and offset of the latest publication
 * so that a resubscribe asks for exactly what was missed.
 */
export class Subscription extends Emitter {
  constructor(client, channel, options) {
    super();
    this.client = client;
    this.channel = channel;
    this.options = options;
    this.state = 'unsubscribed';
    this.epoch = null;
    this.offset = 0;
    this.recoverable = false;
    this._early = null;
    this._retries = 0;
  }

  subscribe() {
    if (this.state !== 'unsubscribed') return;
    this._setState('subscribing');
    if (this.client.state === 'connected') this._send();
  }

  unsubscribe() {
    if (this.state === 'unsubscribed') return;
    if (this.client.state === 'connected') this.client._command('unsubscribe', { channel: this.channel }, () => {});
    this._setState('unsubscribed');
    this.emit('unsubscribed', { channel: this.channel, code: 0, reason: 'unsubscribe called' });
  }

  /** Resolves once subscribed (at once if already); rejects if the subscription fails for good. */
  ready() {
    if (this.state === 'subscribed') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const offs = [
        this.on('subscribed', () => {
          offs.forEach((off) => off());
          resolve();
        }),
        this.on('unsubscribed', ({ code, reason }) => {
          offs.forEach((off) => off());
          reject(new SwitchboardError(code, reason));
        }),
      ];
    });
  }

  publish(data) {
    return this.client.publish(this.channel, data);
  }

  presence() {
    return this.client.presence(this.channel);
  }

  presenceStats() {
    return this.client.presenceStats(this.channel);
  }

  history(options) {
    return this.client.history(this.channel, options);
  }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.emit('state', { state, previous });
  }

  /** The connection is gone; the subscription waits for the next one. */
  _lost() {
    if (this.state === 'subscribed') this._setState('subscribing');
  }

  _resubscribe() {
    if (this.state === 'subscribing') this._send();
  }

  async _send() {
    let token = this.options.token;
    if (!token && this.options.getToken) {
      try {
        token = await this.options.getToken(this.channel);
      } catch (error) {
        this.emit('error', { type: 'token', error });
        return;
      }
      if (this.state !== 'subscribing' || this.client.state !== 'connected') return;
    }
    const params = { channel: this.channel };
    if (token) params.token = token;
    const recovering = this.recoverable && this.epoch !== null;
    if (recovering) Object.assign(params, { recover: true, epoch: this.epoch, offset: this.offset });
    // Publications can arrive before the reply; keep them until the reply says where we stand.
    this._early = [];
    this.client._command('subscribe', params, (r) => this._subscribed(r, recovering));
  }

  _subscribed(reply, recovering) {
    const early = this._early ?? [];
    this._early = null;
    if (this.state !== 'subscribing') return;
    if (reply.error) {
      this._failed(serverError(reply.error));
      return;
    }
    this._retries = 0;
    const r = reply.subscribe;
    const recovered = recovering && r.recovered === true;
    if (!recovered || r.epoch !== this.epoch) {
      // A fresh position: the offsets of the old stream mean nothing any more.
      this.offset = r.offset ?? 0;
    }
    this.epoch = r.epoch ?? null;
    this.recoverable = r.recoverable === true;
    this._setState('subscribed');
    this.emit('subscribed', {
      channel: this.channel,
      epoch: this.epoch,
      offset: r.offset ?? 0,
      recoverable: this.recoverable,
      wasRecovering: recovering,
      recovered,
    });
    for (const pub of recovered ? r.publications ?? [] : []) this._publication(pub);
    for (const pub of early) this._publication(pub);
  }

  _failed(err) {
    this.emit('error', { type: 'subscribe', error: err });
    if (err.temporary || err.code === 109) {
      const { minReconnectDelay: min, maxReconnectDelay: max } = this.client.options;
      this.client._later(backoff(this._retries++, min, max), () => this._resubscribe());
      return;
    }
    this._setState('unsubscribed');
    this.emit('unsubscribed', { channel: this.channel, code: err.code, reason: err.message });
  }

  _push(kind, body) {
    switch (kind) {
      case 'pub':
        if (this._early) this._early.push(body);
        else if (this.state === 'subscribed') this._publication(body);
        break;
      case 'join':
      case 'leave':
        this.emit(kind, body);
        break;
      case 'unsubscribe':
        if (body.code >= 2500) {
          // The server lost track of our stream: resubscribe and recover what was missed.
          this._setState('subscribing');
          this._send();
        } else {
          this._setState('unsubscribed');
          this.emit('unsubscribed', { channel: this.channel, code: body.code, reason: body.reason });
        }
        break;
      case 'subscribe':
        this._subscribed({ subscribe: body }, false);
        break;
    }
  }

  _publication(pub) {
    if (this.recoverable && pub.offset > 0) {
      if (pub.offset <= this.offset) return; // already delivered (recovered, or sent twice)
      if (pub.offset > this.offset + 1) {
        // A gap: something was lost on the way. Resubscribe to recover it, this one included.
        this.client._command('unsubscribe', { channel: this.channel }, () => {});
        this._setState('subscribing');
        this._send();
        return;
      }
      this.offset = pub.offset;
    }
    this.emit('publication', { ...pub, channel: this.channel });
  }
}

/**
 * The bytes of a WebSocket frame's head for a payload of `n` bytes (RFC 6455 5.2): 2, plus 2 or 8 for
 * longer payloads, plus the 4-byte mask on frames a client sends.
 */
function frameHead(n, masked) {
  return 2 + (n < 126 ? 0 : n < 65536 ? 2 : 8) + (masked ? 4 : 0);
}

/** WebSocket: one frame carries one or more newline-separated messages each way. */
class WebSocketTransport {
  constructor({ url, options, stats, on }) {
    this.stats = stats;
    this.on = on;
    const ws = new URL(options.websocketPath, url);
    ws.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    this.url = ws.href;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.ws = null;
  }

  open(connectLine) {
    this.stats.requests++;
    const ws = new this.WebSocket(this.url, 'switchboard.json');
    this.ws = ws;
    ws.onopen = () => this.send(connectLine);
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') return;
      const n = utf8Length(e.data);
      this.stats.bytesDown += n;
      this.stats.frameBytesDown += n + frameHead(n, false);
      for (const msg of parseLines(e.data, this.on.bad)) this.on.message(msg);
    };
    // An error should be followed by a close event, but Node 20's WebSocket skips it when the
    // connection fails: report whichever comes first, once.
    ws.onerror = () => this._closed({ code: 1006, reason: 'websocket error' });
    ws.onclose = (e) => this._closed({ code: e.code, reason: e.reason || 'websocket closed' });
  }

  _closed(info) {
    if (this.ws === null) return;
    this.close();
    this.on.close(info);
  }

  send(text) {
    if (this.ws?.readyState !== 1) return;
    const n = utf8Length(text);
    this.stats.bytesUp += n;
    this.stats.frameBytesUp += n + frameHead(n, true);
    this.ws.send(text);
  }

  close() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    if (ws.readyState <= 1) ws.close(1000);
  }
}

/**
 * The HTTP fallbacks: a session opened by POST, commands sent by POST in order, and messages received
 * by Server-Sent Events, long polling or (ajax) polling, each acknowledged by its sequence number so
 * that a lost response is sent again.
 */
class HttpTransport {
  constructor({ url, options, stats, on }, mode) {
    this.mode = mode;
    this.options = options;
    this.stats = stats;
    this.on = on;
    this.base = new URL(options.httpPath, url).href;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.abort = new AbortController();
    this.session = null;
    this.sessionTimeout = 30;
    this.pollTimeout = 25;
    this.seq = 0; // highest message sequence received
    this.acked = 0; // highest sequence the server was told about (SSE)
    this.ackDue = false;
    this.ackTimer = null;
    this.n = 0; // upstream request sequence
    this.upstream = []; // command lines not sent yet
    this.batchLines = Infinity; // most lines per POST: lowered when the server finds a body too large
    this.sending = false;
    this.closed = false;
    this.gone = false; // the server said the session is over (404): nothing to close
    this.failures = 0; // requests failed in a row
    this.es = null;
    this.esDown = null;
    this.wake = null;
    this.pollNow = false;
  }

  async open(connectLine) {
    try {
      const res = await this._request(`${this.base}?transport=${this.mode}`, connectLine);
      if (res.status !== 200) throw new Error(`open: HTTP ${res.status}`);
      const s = JSON.parse(res.text);
      this.session = s.session;
      this.sessionTimeout = s.session_timeout ?? this.sessionTimeout;
      this.pollTimeout = s.poll_timeout ?? this.pollTimeout;
    } catch (e) {
      this._end({ reason: e.message });
      return;
    }
    if (this.closed) return;
    if (this.mode === 'sse') this._sse();
    else this._pollLoop();
    this._pump();
  }

  send(text) {
    if (this.closed) return;
    this.upstream.push(...text.split('\n'));
    this._pump();
  }

  /**
   * Stops every request; `end`: also ends the session on the server (`close`), so that it leaves
   * presence at once rather than at `session_timeout`. The request is `keepalive`, so it is sent even
   * while the page unloads (`pagehide`).
   */
  close(end = false) {
    if (this.closed) return;
    this.closed = true;
    if (end && this.session !== null && !this.gone) {
      this.stats.requests++;
      try {
        this.fetch(this._url('close', {}), {
          method: 'POST',
          keepalive: true,
          cache: 'no-store',
          body: '',
          headers: { 'Content-Type': 'text/plain' },
        }).catch(() => {});
      } catch {
        // The session expires by itself at session_timeout.
      }
    }
    this.abort.abort();
    this.es?.close();
    clearTimeout(this.ackTimer);
    clearTimeout(this.esDown);
  }

  _end(info) {
    if (this.closed) return;
    this.close();
    this.on.close(info);
  }

  /** A request failed: tell the client (it shows `connecting`), and the delay before the next try. */
  _failed(reason, delay) {
    this.failures++;
    if (!this.closed) this.on.trouble({ reason, delay });
  }

  /** A request succeeded. */
  _ok() {
    if (this.failures === 0) return;
    this.failures = 0;
    this.on.working();
  }

  _url(path, params) {
    const q = new URLSearchParams({ session: this.session, ...params });
    return `${this.base}/${path}?${q}`;
  }

  /**
   * One request, body read included, given up after `timeoutMs` (a connection that silently died
   * would otherwise hang a long poll forever). Rejects on network errors and on close().
   */
  async _request(url, body, timeoutMs = this.options.timeout) {
    this.stats.requests++;
    const ac = new AbortController();
    const stop = () => ac.abort();
    const timer = setTimeout(stop, timeoutMs);
    this.abort.signal.addEventListener('abort', stop);
    const init = { signal: ac.signal, cache: 'no-store' };
    if (body !== undefined) {
      const n = utf8Length(body);
      this.stats.bytesUp += n;
      this.stats.bodyBytesUp += n;
      Object.assign(init, { method: 'POST', body, headers: { 'Content-Type': 'text/plain' } });
    }
    try {
      const res = await this.fetch(url, init);
      const text = await res.text();
      this.stats.bytesDown += utf8Length(text);
      return { status: res.status, text };
    } finally {
      clearTimeout(timer);
      this.abort.signal.removeEventListener('abort', stop);
    }
  }

  /** Delivers one downstream batch unless it was seen already (a re-sent response or event). */
  _deliver(seq, messages) {
    if (!(seq > this.seq)) return;
    this.seq = seq;
    for (const msg of messages) {
      if (this.closed) return;
      this.on.message(msg);
    }
  }

  /** Sends queued commands (and due SSE acks), one request at a time and in order. */
  async _pump() {
    if (this.sending || this.closed || this.session === null) return;
    const ack = this.ackDue && this.acked < this.seq;
    if (this.upstream.length === 0 && !ack) return;
    this.sending = true;
    this.ackDue = false;
    const lines = this.upstream.splice(0, this.batchLines);
    const body = lines.join('\n');
    // Commands are numbered; a bare acknowledgement is not.
    const params = body === '' ? {} : { n: String(this.n + 1) };
    // SSE has no request of its own to carry acks: they ride on the upstream.
    if (this.mode === 'sse') params.ack = String(this.seq);
    const status = await this._post(this._url('send', params), body);
    if (status === null) return;
    if (status === 413) {
      // Nothing was handled and `n` is still free. Several commands: send fewer at a time; one
      // alone: it can never go, so it fails by itself.
      if (lines.length > 1) {
        this.batchLines = Math.ceil(lines.length / 2);
        this.upstream.unshift(...lines);
      } else {
        this.on.refused(body);
      }
    } else {
      if (params.n) this.n++;
      if (params.ack) this.acked = Math.max(this.acked, Number(params.ack));
      // Replies to what was just sent are waiting already: poll for them now.
      if (this.mode === 'poll' && body !== '') {
        if (this.wake) this.wake();
        else this.pollNow = true;
      }
    }
    this.sending = false;
    this._pump();
  }

  /**
   * POSTs `body` until the server answers 2xx or 413; a request whose answer was lost goes again as it
   * is, and the server does not handle a repeated `n` twice. Null when the session ended instead.
   */
  async _post(url, body) {
    const started = Date.now();
    for (let delay = 250; ; delay = Math.min(delay * 2, 2000)) {
      try {
        const { status, text } = await this._request(url, body);
        if ((status >= 200 && status < 300) || status === 413) {
          this._ok();
          return status;
        }
        if (status === 404) {
          this.gone = true;
          this._end({ reason: 'session expired' });
        } else if (status === 400) {
          // The server ended the session over our commands, as a WebSocket would with 3501.
          this._end({ code: 3501, reason: 'bad request', reconnect: false });
        } else if (status < 500) {
          // Other refusals (409 out of order, 403 origin) would only repeat.
          this._end({ reason: `send refused: HTTP ${status} ${text}` });
        }
      } catch {
        // A network error: try again below.
      }
      if (this.closed) return null;
      if (Date.now() - started > this.sessionTimeout * 1000) {
        this._end({ reason: 'server unreachable' });
        return null;
      }
      this._failed('send failed', delay);
      await sleep(delay, this.abort.signal);
    }
  }

  async _pollLoop() {
    const ajax = this.mode === 'poll';
    const timeout = ajax ? this.options.timeout : (this.pollTimeout + 10) * 1000;
    let lastOk = Date.now();
    let retries = 0;
    while (!this.closed) {
      const params = { ack: String(this.seq) };
      if (ajax) params.wait = '0';
      try {
        const res = await this._request(this._url('poll', params), undefined, timeout);
        if (res.status === 404) {
          this.gone = true;
          return this._end({ reason: 'session expired' });
        }
        if (res.status === 200) {
          lastOk = Date.now();
          retries = 0;
          this._ok();
          const { seq, messages } = JSON.parse(res.text);
          this._deliver(seq, messages);
          if (ajax && !this.pollNow) await this._nap(this.options.pollInterval);
          this.pollNow = false;
          continue;
        }
      } catch (e) {
        if (e instanceof SyntaxError) return this._end({ reason: 'bad poll response' });
      }
      // Unreachable or failing: retry, backing off, until the session would have expired anyway.
      if (this.closed) return;
      if (Date.now() - lastOk > this.sessionTimeout * 1000) return this._end({ reason: 'server unreachable' });
      const { minReconnectDelay: min } = this.options;
      const delay = Math.min(min * 2 ** retries++, 4000);
      this._failed('poll failed', delay);
      await sleep(delay, this.abort.signal);
    }
  }

  /** Waits `ms`, or less if a command is sent meanwhile. */
  _nap(ms) {
    return new Promise((resolve) => {
      const signal = this.abort.signal;
      const done = () => {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        this.wake = null;
        resolve();
      };
      const t = setTimeout(done, ms);
      signal.addEventListener('abort', done);
      this.wake = done;
    });
  }

  _sse() {
    const EventSource = this.options.EventSource ?? globalThis.EventSource;
    this.stats.requests++;
    const es = new EventSource(this._url('sse', { ack: String(this.seq) }));
    this.es = es;
    es.onopen = () => {
      clearTimeout(this.esDown);
      this.esDown = null;
      this._ok();
    };
    es.onmessage = (e) => {
      const n = utf8Length(e.data);
      this.stats.bytesDown += n;
      // As the server writes it: `id: N\n`, `data: ` before each line, and a blank line.
      const lines = e.data.split('\n').length;
      this.stats.streamBytesDown += n + 6 * lines + `id: ${e.lastEventId}\n`.length + 1;
      this._deliver(Number(e.lastEventId), parseLines(e.data, this.on.bad));
      this._scheduleAck();
    };
    es.onerror = () => {
      if (this.closed) return;
      // CLOSED: the reconnect was refused (404: the session is gone). Otherwise EventSource
      // reconnects by itself; give up if that takes longer than the session lives.
      if (es.readyState === 2) return this._end({ reason: 'event stream closed' });
      this.stats.requests++;
      // EventSource retries after the stream's `retry:` (1 s).
      this._failed('event stream lost', 1000);
      this.esDown ??= setTimeout(() => this._end({ reason: 'server unreachable' }), this.sessionTimeout * 1000);
    };
  }

  /** Acknowledges received events at most once a second (sooner along with a command). */
  _scheduleAck() {
    if (this.ackTimer !== null) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = null;
      this.ackDue = true;
      this._pump();
    }, 1000);
  }
}
