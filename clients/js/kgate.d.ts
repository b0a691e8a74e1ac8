// TypeScript declarations of @kgate/client (kgate.js). Checked by compiling
// tests/sdk/typed.ts with `tsc --noEmit` in the test suite.

/** A channel: `"topic"` (every record) or `"topic:key"` (records of that key). */
export type Channel = string;

/** Reconnect delays: full jitter between 0 and min(maxMs, initialMs * 2^attempt). */
export interface Backoff {
  /** First delay's ceiling (default 500). */
  initialMs: number;
  /** Largest delay (default 30000). */
  maxMs: number;
  /** A connection that lasted this long resets the attempt count (default 60000). */
  resetAfterMs: number;
  /** Attempts before the client gives up with state `failed` (default Infinity). */
  maxAttempts: number;
}

/** WebSocket liveness probe. */
export interface Heartbeat {
  /** A protocol `ping` this often (default 15000). */
  intervalMs: number;
  /** Silence this long ends the connection (default 45000). */
  timeoutMs: number;
}

/** A header filter: every named header must have one of its values (`null` matches a null value). */
export interface Filter {
  headers: Record<string, string | null | Array<string | null>>;
}

/** The transports, tried in order. */
export type Transport = "websocket" | "sse" | "poll";

/** What a WebSocket class must offer (the browser's, or the `ws` package's). */
export interface WebSocketLike {
  readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number): void;
}

/** Options of a client; every field is optional. An unknown name is warned about and ignored. */
export interface Options {
  /** Gateway base URL, `http(s)://host:port`; default: the page's origin (required in Node.js). */
  url: string;
  /** Channel names. */
  channels: Channel[];
  /** Where channels without a held position start. */
  from: "latest" | "earliest";
  /** Channels (or `true`: all) that start with the latest record per key (WebSocket). */
  snapshot: Channel[] | boolean;
  /** Channels (or `true`: all) whose records may travel as deltas; `data` events carry full records. */
  delta: Channel[] | boolean;
  /** Updates per second per key: one rate for all channels, or per channel (WebSocket). */
  maxRate: number | Record<Channel, number> | null;
  /** A header filter per channel (WebSocket). */
  filter: Record<Channel, Filter> | null;
  /** A JWT, or a function returning one (called on every connect). */
  token: string | (() => string | null) | null;
  /** A durable session id (WebSocket): the gateway keeps positions too. */
  session: string | null;
  /** Transports, tried in this order. */
  transports: Transport[];
  /** Acknowledge delivered events (with a session). */
  ack: boolean;
  /** Acks are cumulative: one per partition this often, at most. */
  ackIntervalMs: number;
  /** Reconnect delays; give only the fields to change. */
  backoff: Partial<Backoff>;
  /** WebSocket liveness probe. */
  heartbeat: Partial<Heartbeat>;
  /** A transport that has not opened by then counts as failed. */
  connectTimeoutMs: number;
  /** Long-poll wait per request. */
  pollWaitMs: number;
  /** A WebSocket class; default: the global one, else the `ws` package (Node.js). */
  WebSocket: (new (url: string, protocols?: string[]) => WebSocketLike) | null;
}

/** One record (an `event` frame). */
export interface EventFrame {
  type: "event";
  topic: string;
  partition: number;
  offset: number;
  /** Kafka timestamp, epoch milliseconds. */
  timestamp?: number;
  /** The key as text (`key_b64` when it is not UTF-8). */
  key?: string;
  key_b64?: string;
  /** Headers; a non-UTF-8 value is `{b64}`, a null value `null`. */
  headers?: Record<string, string | null | { b64: string }>;
  /** The value (JSON topics, Avro decoded to JSON). */
  data?: unknown;
  /** The value base64-encoded (raw topics, undecodable values). */
  data_b64?: string;
  /** Why `data_b64` carries a value that should have decoded. */
  decode_error?: string;
  /** A tombstone: the key was deleted. */
  deleted?: true;
}

/** A channel caught up and is live. */
export interface LiveFrame {
  type: "live";
  id?: string | number;
  channel: Channel;
}

/** A channel's snapshot is complete. */
export interface SnapshotEndFrame {
  type: "snapshot_end";
  id?: string | number;
  channel: Channel;
  count: number;
}

/** Records the client asked for were deleted by retention: `requested` .. `earliest - 1`. */
export interface GapFrame {
  type: "gap";
  channel: Channel;
  topic: string;
  partition: number;
  requested: number;
  earliest: number;
}

/** A refused command or a failure, with its stable code. */
export interface ErrorFrame {
  type: "error";
  id?: string | number;
  code: string;
  message: string;
}

/** The client's connection states. */
export type State = "idle" | "connecting" | "connected" | "reconnecting" | "failed" | "closed";

/** The `state` event: the new state and what it means. */
export type StateChange = {
  transport: Transport | null;
  reconnects: number;
} & (
  | { state: "connecting"; detail: Transport }
  | { state: "connected"; detail: null }
  | { state: "reconnecting"; detail: { reason: string; delayMs: number } }
  | { state: "failed"; detail: string }
  | { state: "closed"; detail: null }
);

/** Events and their payloads. */
export interface Events {
  data: EventFrame;
  snapshot: SnapshotEndFrame;
  live: LiveFrame;
  gap: GapFrame;
  error: ErrorFrame;
  state: StateChange;
  /** Any other frame. */
  frame: { type: string; [field: string]: unknown };
}

/** Where a published record landed. */
export interface Published {
  topic: string;
  partition: number;
  offset: number;
}

/** A refused or failed publish: `code` is the gateway's (`forbidden`, `unknown_topic`, ...). */
export interface PublishError extends Error {
  code: string;
}

/** A connection to the gateway that reconnects and resumes until `close()`. */
export declare class Client {
  constructor(options: Partial<Options>);
  /** The options in force (defaults filled in). */
  readonly options: Options;
  /** The current state. */
  readonly state: State;
  /** The open transport while connected. */
  readonly transport: Transport | null;
  /** Reconnects so far. */
  readonly reconnects: number;
  /** Events replayed since the last reconnect. */
  readonly replayedSinceReconnect: number;
  /** Per channel, per partition: the next offset to deliver. */
  readonly positions: Record<Channel, Record<string, number>>;
  /** Adds a listener. */
  on<K extends keyof Events>(type: K, listener: (payload: Events[K]) => void): this;
  /** Starts connecting (and reconnecting until `close()`). */
  connect(): this;
  /** Closes for good. */
  close(): void;
  /** Drops the connection as a network failure would: the client reconnects and resumes. */
  dropConnection(): void;
  /** Produces a record; resolves once Kafka acknowledged it, rejects with a {@link PublishError}. */
  publish(
    topic: string,
    data: unknown,
    options?: { key?: string | number; headers?: Record<string, string> },
  ): Promise<Published>;
}

/** Applies delta frames (docs/protocol.md, "Deltas"); the client uses one per connection. */
export declare class Deltas {
  constructor();
  /** A frame as received (text, or a parsed delta array) as the parsed full frame. */
  frame(text: string | unknown[]): { type: string; [field: string]: unknown };
}

/** Encodes positions as a long-poll/SSE cursor. */
export declare function encodeCursor(
  positions: Array<{ channel: number; partition: number; next: number }>,
): string;

/** The protocol version the client speaks. */
export declare const version: string;

declare const kgate: {
  Client: typeof Client;
  Deltas: typeof Deltas;
  encodeCursor: typeof encodeCursor;
  version: string;
};
export default kgate;
