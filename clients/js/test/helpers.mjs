// What the client tests share: options for the HTTP fallbacks, waiting with a deadline, collecting a
// subscription's publications, and connection tokens signed like switchboard's `gentoken`.
import { createHmac } from 'node:crypto';
import { EventSource } from 'eventsource';
import { HMAC_SECRET } from './server.mjs';

/**
 * Client options for tests over the HTTP fallbacks: Node's EventSource (Node has none of its own),
 * and reconnects and polls fast enough for a test's deadline.
 */
export const HTTP_CLIENT_OPTIONS = {
  EventSource,
  minReconnectDelay: 50,
  maxReconnectDelay: 300,
  pollInterval: 100,
};

/** Resolves when `check()` is truthy; fails after `ms` with `what`. */
export async function until(check, what, ms = 8000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves with the next `event` of `emitter` whose context passes `filter`; fails after `ms`. */
export function next(emitter, event, filter = () => true, ms = 8000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${event}`));
    }, ms);
    const off = emitter.on(event, (ctx) => {
      if (!filter(ctx)) return;
      clearTimeout(timer);
      off();
      resolve(ctx);
    });
  });
}

/** The data of every publication `sub` delivers, in order. */
export function collect(sub) {
  const got = [];
  sub.on('publication', (p) => got.push(p.data));
  return got;
}

/** An HS256 connection token for `user`, expiring `ttl` seconds from now (negative: already expired). */
export function token(user, ttl) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + ttl })}`;
  return `${body}.${createHmac('sha256', HMAC_SECRET).update(body).digest('base64url')}`;
}

/**
 * A WebSocket constructor for this client only that can be cut off from the server: while `down`, it
 * connects to a closed port instead, as if the network had failed. Counts the connections it opened.
 */
export function gatedWebSocket() {
  const gate = { down: false, opened: 0 };
  gate.WebSocket = class extends globalThis.WebSocket {
    constructor(url, protocols) {
      gate.opened++;
      super(gate.down ? 'ws://127.0.0.1:9/' : url, protocols);
    }
  };
  return gate;
}

/**
 * A fetch for one client that can be cut off from the server (`down`: every request fails like a
 * network error) or lose responses the server did send (`lose(url, status, body)` returning true).
 * `EventSource` is the `eventsource` package's, going through the same gate.
 */
export function gatedFetch(EventSourceBase) {
  const gate = { down: false, lose: null, failed: 0 };
  gate.fetch = async (url, init) => {
    if (gate.down) {
      gate.failed++;
      throw new TypeError('fetch failed: the test cut the network');
    }
    const res = await fetch(url, init);
    if (!gate.lose) return res;
    const body = await res.text();
    if (gate.lose(String(url), res.status, body)) throw new TypeError('fetch failed: the test lost the response');
    return new Response(res.status === 204 ? null : body, { status: res.status, headers: res.headers });
  };
  if (EventSourceBase) {
    // Open streams, so that `dropStreams()` can cut them as a failing network would.
    const streams = new Set();
    gate.dropStreams = () => {
      for (const ac of streams) ac.abort();
      streams.clear();
    };
    gate.EventSource = class extends EventSourceBase {
      constructor(url) {
        super(url, {
          fetch: (u, init) => {
            if (gate.down) return Promise.reject(new TypeError('cut'));
            const ac = new AbortController();
            init?.signal?.addEventListener('abort', () => ac.abort());
            streams.add(ac);
            return fetch(u, { ...init, signal: ac.signal });
          },
        });
      }
    };
  }
  return gate;
}
