// Types of switchboard.mjs: the JSON client protocol of docs/protocol.md.

export declare const VERSION: string;

export type TransportName = 'websocket' | 'sse' | 'long-poll' | 'poll';

/** Transports in the order they are tried by default. */
export declare const TRANSPORTS: readonly TransportName[];

/** Codes of errors raised by the client itself; server error codes (docs/protocol.md) start at 100. */
export declare const ErrorCode: {
  readonly TIMEOUT: 1;
  readonly CONNECTION_LOST: 2;
  readonly CLIENT_CLOSED: 3;
};

export declare class SwitchboardError extends Error {
  /** A server error code (100 and up) or one of `ErrorCode`. */
  code: number;
  /** The same command may succeed later. */
  temporary: boolean;
  constructor(code: number, message: string, temporary?: boolean);
}

/** Full-jitter exponential backoff: a random delay in [0, min(max, min * 2^attempt)). */
export declare function backoff(attempt: number, min: number, max: number, random?: () => number): number;

/** Whether a disconnect or WebSocket close code advises reconnecting (3500-3999 do not). */
export declare function shouldReconnect(code: number): boolean;

export interface ClientOptions {
  /** Transports to try, in order (default: all four, WebSocket first). */
  transports?: TransportName[];
  /** A WebSocket constructor, where there is no global one (Node before 22: the `ws` package). */
  WebSocket?: unknown;
  /** An EventSource constructor, where there is no global one (Node: the `eventsource` package). */
  EventSource?: unknown;
  /** A fetch function (default: the global one). */
  fetch?: typeof fetch;
  /** A connection token (JWT). */
  token?: string;
  /** Asked for a connection token when there is none or it expired, and before it expires (refresh). */
  getToken?: () => Promise<string> | string;
  /** Default `/connection/websocket`. */
  websocketPath?: string;
  /** Default `/connection/http`. */
  httpPath?: string;
  /** Reconnect backoff bounds, ms (defaults 500 and 20000). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** A transport that has not brought the connect reply after this long is given up for the next (ms, default 5000). */
  connectTimeout?: number;
  /** A command without a reply after this long fails with ErrorCode.TIMEOUT (ms, default 10000). */
  timeout?: number;
  /** Ajax polling: the pause between polls (ms, default 1000). */
  pollInterval?: number;
  /**
   * Debug output (which transport was chosen, and why not the ones before it): a function called with
   * each line, or `true` for `console.debug`. In Node, `NODE_DEBUG=switchboard` does the same.
   */
  debug?: boolean | ((line: string) => void);
  /** Sent in connect. */
  name?: string;
  version?: string;
}

export type ClientState = 'disconnected' | 'connecting' | 'connected';
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

export interface ClientInfo {
  client: string;
  user: string;
  info?: unknown;
}

export interface Publication {
  channel: string;
  /** Position in the channel's stream; 0 where the namespace keeps no history. */
  offset: number;
  data?: unknown;
  /** A binary payload in base64, instead of `data`. */
  b64data?: string;
  /** The publishing client, when a client published. */
  info?: ClientInfo;
  tags?: Record<string, string>;
}

export interface ConnectedContext {
  client: string;
  version: string;
  ping: number;
  subs: Record<string, unknown>;
  expires?: boolean;
  ttl?: number;
  transport: TransportName;
}

export interface DisconnectedContext {
  /** The disconnect or WebSocket close code; 0 for `disconnect()`; absent when an HTTP transport lost the server. */
  code?: number;
  reason: string;
  /** Whether the client is reconnecting. */
  reconnect: boolean;
}

export interface StateContext<S> {
  state: S;
  previous: S;
}

export interface ErrorContext {
  /** `message`: a line from the server could not be parsed; it was skipped and the others go on. */
  type: 'transport' | 'connect' | 'token' | 'refresh' | 'subscribe' | 'message';
  transport?: TransportName;
  error: Error;
  /** With `message`: the channel and offset read from the line's text, when it is a publication. */
  channel?: string;
  offset?: number;
  /** With `message`: the line (its first 200 characters). */
  line?: string;
}

export interface SubscribedContext {
  channel: string;
  epoch: string | null;
  offset: number;
  recoverable: boolean;
  /** The subscribe asked to recover (a resubscribe after a reconnect or a gap). */
  wasRecovering: boolean;
  /** Every missed publication was delivered. False after `wasRecovering`: reload your state. */
  recovered: boolean;
}

export interface UnsubscribedContext {
  channel: string;
  /** An unsubscribe code (docs/protocol.md), an error code when the subscribe failed, 0 for `unsubscribe()`. */
  code: number;
  reason: string;
}

export interface JoinLeaveContext {
  channel: string;
  info: ClientInfo;
}

export interface HistoryOptions {
  limit?: number;
  since?: { epoch: string; offset: number };
  reverse?: boolean;
}

export interface HistoryResult {
  publications: Omit<Publication, 'channel'>[];
  epoch: string;
  offset: number;
}

export interface PresenceStats {
  num_clients: number;
  num_users: number;
}

export interface PublishResult {
  epoch?: string;
  offset: number;
}

export interface Stats {
  /** HTTP requests and WebSocket handshakes made. */
  requests: number;
  /** Payload bytes sent and received (frame and HTTP headers not counted). */
  bytesUp: number;
  bytesDown: number;
  /** WebSocket only: the bytes of the frames that carried them (payload plus frame heads). */
  frameBytesUp: number;
  frameBytesDown: number;
  /** SSE only: the bytes of the events as the stream carried them (`id:`/`data:` lines), without the response head. */
  streamBytesDown: number;
  /** HTTP transports only: the request bodies sent. */
  bodyBytesUp: number;
}

export interface ReconnectingContext {
  /** What failed. */
  reason: string;
  /** Milliseconds until the next attempt or retried request. */
  delay: number;
  /** The transport whose requests fail while its session lives on; null for a new connection attempt. */
  transport: TransportName | null;
}

interface Emitter<Events> {
  /** Calls `fn` on every `event`; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: (ctx: Events[K]) => void): () => void;
  off<K extends keyof Events>(event: K, fn: (ctx: Events[K]) => void): void;
  /** Resolves with the next `event`'s context. */
  once<K extends keyof Events>(event: K): Promise<Events[K]>;
}

export interface ClientEvents {
  state: StateContext<ClientState>;
  connected: ConnectedContext;
  disconnected: DisconnectedContext;
  /** The state went (or stays) `connecting`: a request failed or a reconnect is scheduled. */
  reconnecting: ReconnectingContext;
  error: ErrorContext;
  /** Server-side subscriptions (token `channels`, the server API) have no Subscription object. */
  publication: Publication;
  join: JoinLeaveContext;
  leave: JoinLeaveContext;
  subscribed: { channel: string } & Record<string, unknown>;
  unsubscribed: { channel: string; code: number; reason: string };
}

export interface SubscriptionEvents {
  state: StateContext<SubscriptionState>;
  publication: Publication;
  join: JoinLeaveContext;
  leave: JoinLeaveContext;
  subscribed: SubscribedContext;
  unsubscribed: UnsubscribedContext;
  error: ErrorContext;
}

export interface SubscriptionOptions {
  /** A subscription token, for channels of a private namespace. */
  token?: string;
  /** Asked for a subscription token at every subscribe. */
  getToken?: (channel: string) => Promise<string> | string;
}

export declare class Subscription implements Emitter<SubscriptionEvents> {
  readonly client: Client;
  readonly channel: string;
  state: SubscriptionState;
  /** The stream position of the latest publication delivered. */
  epoch: string | null;
  offset: number;
  recoverable: boolean;
  subscribe(): void;
  unsubscribe(): void;
  /** Resolves once subscribed; rejects if the subscription fails for good (or `unsubscribe()` is called first). */
  ready(): Promise<void>;
  publish(data: unknown): Promise<PublishResult>;
  presence(): Promise<Record<string, ClientInfo>>;
  presenceStats(): Promise<PresenceStats>;
  history(options?: HistoryOptions): Promise<HistoryResult>;
  on<K extends keyof SubscriptionEvents>(event: K, fn: (ctx: SubscriptionEvents[K]) => void): () => void;
  off<K extends keyof SubscriptionEvents>(event: K, fn: (ctx: SubscriptionEvents[K]) => void): void;
  once<K extends keyof SubscriptionEvents>(event: K): Promise<SubscriptionEvents[K]>;
}

export declare class Client implements Emitter<ClientEvents> {
  /** `url`: the server's base URL (`http(s)://host:port`); in a page, default: the page's origin. */
  constructor(url?: string, options?: ClientOptions);
  readonly url: URL;
  state: ClientState;
  /** The transport in use while connected. */
  transport: TransportName | null;
  /** This connection's id while connected. */
  clientId: string | null;
  readonly stats: Stats;
  /** While `connecting`: when the next attempt or retried request is due (ms since the epoch). */
  retryAt: number | null;
  /** Starts connecting; the client then reconnects by itself until `disconnect()`. */
  connect(): void;
  /** Closes for good; an HTTP session is ended on the server at once (others see this client leave). */
  disconnect(): void;
  /** The subscription to `channel` (made and started if new). */
  subscribe(channel: string, options?: SubscriptionOptions): Subscription;
  getSubscription(channel: string): Subscription | null;
  removeSubscription(sub: Subscription): void;
  publish(channel: string, data: unknown): Promise<PublishResult>;
  presence(channel: string): Promise<Record<string, ClientInfo>>;
  presenceStats(channel: string): Promise<PresenceStats>;
  history(channel: string, options?: HistoryOptions): Promise<HistoryResult>;
  rpc(method: string, data?: unknown): Promise<unknown>;
  on<K extends keyof ClientEvents>(event: K, fn: (ctx: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(event: K, fn: (ctx: ClientEvents[K]) => void): void;
  once<K extends keyof ClientEvents>(event: K): Promise<ClientEvents[K]>;
}
