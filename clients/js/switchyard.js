// switchyard browser client: one dependency-free ES module, served by the gateway at
// /v1/client.js. Docs: docs/client.md.
//
//   import { Switchyard } from "/v1/client.js";
//   const sy = new Switchyard(location.origin, { transports: ["websocket", "sse", "poll"] });
//   const sub = sy.subscribe("orders", { after: 0 }, (event) => console.log(event));
//   sy.on("fallback", ({ from, to }) => console.warn(`${from} -> ${to}`));
//   // Presence channels (a namespace with `presence = true`):
//   sy.subscribe("room/1", { onJoin: (m) => {}, onLeave: (m) => {} }, (event) => {});
//   const members = await sy.presence("room/1"); // [{client_id, user?, info?}]
//   // Client publishes (a namespace with `client_publish = true`), over the WebSocket:
//   const { offset, cursor } = await sy.publish("chat/lobby", { text: "hi" }, { type: "said" });
//
// Every subscription shares one connection over the first transport that works. The client
// keeps each channel's cursor and its last offset, so after a reconnect, a fallback or a
// server restart it resumes where it was, and it never hands the application an event twice
// or out of order (per channel).

/** Version of this client, reported in the `connected` event. */
export const VERSION = "1";

const TRANSPORTS = ["websocket", "sse", "poll"];
const CHANNEL_NAME = /^[A-Za-z0-9_\-.:/@]{1,200}$/;

const DEFAULTS = {
  transports: TRANSPORTS,
  token: undefined,
  headers: undefined,
  backoff: { initialMs: 250, maxMs: 10_000 },
  connectTimeoutMs: 5_000,
  blockedAfter: 2,
  pollTimeoutSecs: 25,
  sseIdleTimeoutMs: 45_000,
  wsPingIntervalMs: 20_000,
  retryPreferredMs: 60_000,
};

/** An error answered by the gateway (`{"error": {"code", "message"}}`) or a transport. */
export class SwitchyardError extends Error {
  constructor(code, message, status) {
    super(message);
    this.name = "SwitchyardError";
    /** Stable, machine-readable code (`unauthorized`, `token_expired`, `rate_limited`, ...). */
    this.code = code;
    /** HTTP status, when there was one. */
    this.status = status;
  }
}

async function errorFrom(res) {
  let code = "http_" + res.status;
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  const err = new SwitchyardError(code, message, res.status);
  const retryAfter = Number(res.headers.get("retry-after"));
  if (Number.isFinite(retryAfter) && retryAfter > 0) err.retryAfterMs = retryAfter * 1000;
  return err;
}

function report(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}

/**
 * The client. One instance holds one connection (over the first transport that works) that
 * carries all its subscriptions.
 */
export class Switchyard {
  #base;
  #opts;
  #listeners = new Map();
  /** name -> channel state (see #subscribe). */
  #channels = new Map();
  #index = 0;
  #conn = null;
  #state = "idle";
  #attempt = 0;
  #blocked = 0;
  #timer = null;
  #seq = 0;
  #token = null;
  #closed = false;
  #upgradeTimer = null;
  #upgradeDelay = 0;
  #onOnline = () => { if (this.#timer !== null) this.#retryNow(); };

  /**
   * @param {string} [baseUrl] The gateway, e.g. `https://rt.example.com`; defaults to the
   *   gateway this module was loaded from.
   * @param {object} [options] `token` (string, or a function returning one or a promise of
   *   one, called on every (re)connect), `transports` (order of preference, default
   *   `["websocket", "sse", "poll"]`), `headers` (extra headers for `submitJob`),
   *   `backoff: {initialMs, maxMs}`, `connectTimeoutMs`, `blockedAfter`, `pollTimeoutSecs`,
   *   `retryPreferredMs` (after a fallback, when to probe WebSocket again; 0: never).
   */
  constructor(baseUrl, options = {}) {
    const here = typeof location !== "undefined" ? location.href : undefined;
    const base = baseUrl === undefined || baseUrl === null || baseUrl === ""
      ? new URL("..", import.meta.url)
      : new URL(baseUrl, here);
    this.#base = base.href.endsWith("/") ? base.href.slice(0, -1) : base.href;
    this.#opts = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...options.backoff } };
    const transports = this.#opts.transports;
    if (!Array.isArray(transports) || transports.length === 0
      || transports.some((t) => !TRANSPORTS.includes(t))) {
      throw new TypeError(`transports must be a non-empty list of ${TRANSPORTS.join(", ")}`);
    }
    if (typeof addEventListener === "function") addEventListener("online", this.#onOnline);
  }

  /** The gateway's base URL (no trailing slash). */
  get baseUrl() { return this.#base; }

  /** The transport in use or being tried: `websocket`, `sse` or `poll`. */
  get transport() { return this.#opts.transports[this.#index]; }

  /** `idle` (nothing subscribed), `connecting`, `connected`, `waiting` (to reconnect), `closed`. */
  get state() { return this.#state; }

  /**
   * Listens to a client event: `connected` `{transport}`, `disconnected`
   * `{transport, code, reason, retryInMs}`, `fallback` `{from, to, reason}`, `upgrade`
   * `{from, to}` (back on WebSocket after a fallback), `reset`
   * `{channel, offset, cursor}`, `state` `{state}`, `error` `{error, channel?}`.
   * @returns {() => void} a function that removes the listener
   */
  on(type, listener) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  /** Removes a listener added with `on`. */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }

  #emit(type, detail) {
    for (const listener of [...(this.#listeners.get(type) || [])]) {
      try { listener(detail); } catch (err) { report(err); }
    }
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", { state });
  }

  /**
   * Follows `channel`. Without `after` or `cursor` it starts from now: every event published
   * once `subscription.ready` has resolved is delivered.
   * @param {string} channel
   * @param {{after?: number, cursor?: string, onReset?: Function, onJoin?: Function,
   *   onLeave?: Function}} [options] `after`: replay after this offset (`0`: everything
   *   kept); `cursor`: resume after a stored cursor; `onReset({channel, offset, cursor})`:
   *   history no longer reached the position; `onJoin(member)` / `onLeave(member)`: someone
   *   joined or left the channel's presence (`{client_id, user?, info?}`; namespaces with
   *   `join_leave = true`; live only, never replayed).
   * @param {(event: object) => void} onEvent called with each envelope
   *   `{id, channel, offset, cursor, type, time, data}`, once, in offset order
   * @returns {{channel: string, ready: Promise<void>, cursor: string|null,
   *   offset: number|null, unsubscribe(): void}}
   */
  subscribe(channel, options, onEvent) {
    if (typeof options === "function") [options, onEvent] = [{}, options];
    options = options || {};
    if (this.#closed) throw new Error("this client is closed");
    if (typeof channel !== "string" || !CHANNEL_NAME.test(channel)) {
      throw new TypeError(`invalid channel name ${JSON.stringify(channel)}`);
    }
    if (typeof onEvent !== "function") throw new TypeError("subscribe needs an onEvent function");
    if (this.#channels.has(channel)) {
      throw new Error(`already subscribed to ${channel}: unsubscribe first`);
    }
    const after = options.after;
    if (after !== undefined && !(Number.isInteger(after) && after >= 0)) {
      throw new TypeError("`after` must be an offset (a whole number >= 0)");
    }
    const ch = {
      name: channel,
      onEvent,
      onReset: options.onReset,
      onJoin: options.onJoin,
      onLeave: options.onLeave,
      after: after ?? null,
      cursor: options.cursor || null,
      seq: options.cursor ? ++this.#seq : 0,
      lastOffset: after ?? null,
      ready: null,
      settle: null,
    };
    ch.ready = new Promise((resolve, reject) => { ch.settle = { resolve, reject }; });
    ch.ready.catch(() => {});
    this.#channels.set(channel, ch);
    if (this.#conn) this.#conn.update();
    else if (this.#timer === null) this.#connect();
    const client = this;
    return {
      channel,
      ready: ch.ready,
      /** The position to resume from later (store it; pass it back as `cursor`). */
      get cursor() { return ch.cursor; },
      /** The offset of the last event delivered. */
      get offset() { return ch.lastOffset; },
      unsubscribe() { client.#unsubscribe(ch); },
    };
  }

  #unsubscribe(ch) {
    if (this.#channels.get(ch.name) !== ch) return;
    this.#channels.delete(ch.name);
    ch.settle.reject(new Error("unsubscribed"));
    if (this.#channels.size === 0) {
      this.#stop();
      this.#setState(this.#closed ? "closed" : "idle");
    } else if (this.#conn) {
      this.#conn.update(ch.name);
    }
  }

  /**
   * Who is present on `channel` (a channel whose namespace has `presence = true`, which the
   * client's credential allows): resolves to the members `[{client_id, user?, info?}]`.
   * Asked over the WebSocket when one is open, else with `GET /v1/channels/{channel}/presence`.
   * @param {string} channel
   * @returns {Promise<object[]>}
   */
  async presence(channel) {
    if (typeof channel !== "string" || !CHANNEL_NAME.test(channel)) {
      throw new TypeError(`invalid channel name ${JSON.stringify(channel)}`);
    }
    const conn = this.#conn;
    if (conn instanceof WsConnection && conn.isOpen) return conn.presence(channel);
    const token = await this.#credential(false);
    const path = `/v1/channels/${channel.split("/").map(encodeURIComponent).join("/")}/presence`;
    const res = await fetch(this.#base + path, {
      headers: { ...this.#opts.headers, ...authHeaders(token) },
      cache: "no-store",
    });
    if (!res.ok) throw await errorFrom(res);
    return (await res.json()).members;
  }

  /**
   * Publishes `data` on `channel` over the WebSocket (the `publish` op): for channels whose
   * namespace has `client_publish = true`, with a token whose `publish` claim covers them.
   * Resolves to `{offset, cursor}` of the new event; rejects with a `SwitchyardError`
   * (`forbidden`, `rate_limited`, ...), or `unavailable` when no WebSocket is open (the
   * other transports only receive).
   * @param {string} channel
   * @param {*} data any JSON value
   * @param {{type?: string}} [options] the event type (default `message`)
   * @returns {Promise<{offset: number, cursor: string}>}
   */
  async publish(channel, data, options = {}) {
    if (typeof channel !== "string" || !CHANNEL_NAME.test(channel)) {
      throw new TypeError(`invalid channel name ${JSON.stringify(channel)}`);
    }
    const conn = this.#conn;
    if (!(conn instanceof WsConnection && conn.isOpen)) {
      throw new SwitchyardError("unavailable", "publishing needs an open WebSocket connection");
    }
    const frame = { op: "publish", channel, data };
    if (options.type !== undefined) frame.type = options.type;
    return conn.ask(frame);
  }

  /**
   * Submits a job (`POST /v1/jobs`): resolves to the gateway's answer
   * `{id, channel, token, status, links, ...}`. Follow it with
   * `subscribe(job.channel, {after: 0}, ...)`; with API keys on, follow it from a client
   * created with `{token: job.token}`.
   * @param {*} payload any JSON value
   * @param {{idempotencyKey?: string, headers?: object}} [options]
   */
  async submitJob(payload, options = {}) {
    const headers = { "content-type": "application/json", ...this.#opts.headers, ...options.headers };
    if (options.idempotencyKey) headers["idempotency-key"] = options.idempotencyKey;
    const res = await fetch(this.#base + "/v1/jobs", {
      method: "POST",
      headers,
      body: JSON.stringify(payload),
    });
    if (!res.ok) throw await errorFrom(res);
    return res.json();
  }

  /** Ends every subscription and the connection, for good. */
  close() {
    this.#closed = true;
    for (const ch of [...this.#channels.values()]) this.#unsubscribe(ch);
    this.#stop();
    if (typeof removeEventListener === "function") removeEventListener("online", this.#onOnline);
    this.#setState("closed");
  }

  #stop() {
    clearTimeout(this.#timer);
    this.#timer = null;
    clearTimeout(this.#upgradeTimer);
    this.#upgradeTimer = null;
    const conn = this.#conn;
    this.#conn = null;
    conn?.stop();
  }

  // === connecting, reconnecting, falling back ===

  async #credential(fresh) {
    const token = this.#opts.token;
    if (token === undefined || token === null) return null;
    if (typeof token !== "function") return token;
    if (fresh || this.#token === null) this.#token = await token();
    return this.#token;
  }

  async #connect() {
    this.#timer = null;
    if (this.#closed || this.#channels.size === 0 || this.#conn) return;
    this.#setState("connecting");
    const placeholder = new Pending();
    this.#conn = placeholder;
    let token;
    try {
      token = await this.#credential(true);
    } catch (err) {
      this.#conn = null;
      this.#emit("error", { error: err });
      this.#schedule(this.#delay(), "no token");
      return;
    }
    if (this.#conn !== placeholder) return; // stopped meanwhile
    const Kind = { websocket: WsConnection, sse: SseConnection, poll: PollConnection }[this.transport];
    const conn = new Kind(this, token);
    this.#conn = conn;
    conn.start();
  }

  #delay(atLeastMs = 0) {
    const { initialMs, maxMs } = this.#opts.backoff;
    const cap = Math.min(maxMs, initialMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    // Equal jitter: half fixed, half random, so clients that lost one server spread out.
    return Math.max(atLeastMs, cap / 2 + Math.random() * (cap / 2));
  }

  #schedule(ms, reason) {
    this.#setState("waiting");
    this.#timer = setTimeout(() => this.#connect(), ms);
    return reason;
  }

  #retryNow() {
    clearTimeout(this.#timer);
    this.#connect();
  }

  /** Whether the gateway answers plain HTTP (tells "transport blocked" from "server down"). */
  async #reachable() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.#opts.connectTimeoutMs);
    try {
      await fetch(this.#base + "/healthz", { mode: "no-cors", cache: "no-store", signal: abort.signal });
      return true;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  // Called by connections (each checks that it is still the current one).

  _isCurrent(conn) { return this.#conn === conn; }
  _options() { return this.#opts; }
  _channels() { return this.#channels; }
  _credential(fresh) { return this.#credential(fresh); }

  _opened(conn) {
    if (!this._isCurrent(conn)) return;
    this.#attempt = 0;
    this.#blocked = 0;
    this.#setState("connected");
    this.#emit("connected", { transport: conn.name, version: VERSION });
    this.#planUpgrade();
  }

  // === returning to WebSocket after a fallback ===

  /**
   * On a fallback transport, probes WebSocket after `retryPreferredMs`, then after twice as
   * long each time it is still blocked (up to 16 times): a proxy that refused upgrades may
   * have been fixed, or the page moved to another network. The probe is a socket of its
   * own; the current connection keeps delivering until the probe has succeeded.
   */
  #planUpgrade() {
    clearTimeout(this.#upgradeTimer);
    this.#upgradeTimer = null;
    const every = this.#opts.retryPreferredMs;
    const preferred = this.#opts.transports.indexOf("websocket");
    if (!(every > 0) || preferred < 0 || preferred >= this.#index) {
      this.#upgradeDelay = 0;
      return;
    }
    this.#upgradeDelay = this.#upgradeDelay ? Math.min(this.#upgradeDelay * 2, every * 16) : every;
    this.#upgradeTimer = setTimeout(() => this.#tryUpgrade(preferred), this.#upgradeDelay);
  }

  async #tryUpgrade(preferred) {
    this.#upgradeTimer = null;
    // A connection that dropped meanwhile plans the next probe when it is back.
    if (this.#closed || this.#state !== "connected") return;
    let token;
    try {
      token = await this.#credential(false);
    } catch {
      this.#planUpgrade();
      return;
    }
    const works = await probeWebSocket(this, token);
    const current = this.#conn;
    if (this.#closed || this.#state !== "connected" || this.#upgradeTimer !== null) return;
    if (!works) {
      this.#planUpgrade();
      return;
    }
    const from = this.transport;
    this.#index = preferred;
    this.#upgradeDelay = 0;
    this.#emit("upgrade", { from, to: this.transport });
    // Cursors carry over: the new connection resumes each channel where this one stopped.
    this.#conn = null;
    current?.stop();
    this.#connect();
  }

  /**
   * The connection ended. `info`: `opened` (it had been working), `answered` (the gateway
   * itself answered, e.g. with an HTTP error or a close code: not a blocked transport),
   * `code`, `reason`, `error` (a SwitchyardError), `retryAfterMs`, `fatal`.
   */
  async _ended(conn, info) {
    if (!this._isCurrent(conn)) return;
    this.#conn = null;
    const code = info.error?.code;
    const authFailed = code === "token_expired" || code === "unauthorized"
      || info.code === 4001 || info.code === 4003;
    if (authFailed) this.#token = null;
    if (info.error) this.#emit("error", { error: info.error });
    // A fixed token that was refused stays refused: only a token function can fix it.
    if (info.fatal || (authFailed && typeof this.#opts.token !== "function")) {
      this.#emit("disconnected", { transport: conn.name, code: info.code, reason: info.reason, retryInMs: null });
      this.#setState("waiting");
      // A refusal that retrying cannot fix (a forbidden channel, a bad request): try again
      // slowly, so a fixed configuration or a new token still recovers.
      this.#attempt = Math.max(this.#attempt, 30);
      this.#schedule(this.#delay(), info.reason);
      return;
    }
    if (!info.opened && !info.answered) {
      this.#setState("waiting");
      const placeholder = new Pending();
      this.#conn = placeholder;
      const reachable = await this.#reachable();
      if (this.#conn !== placeholder) return;
      this.#conn = null;
      this.#blocked = reachable ? this.#blocked + 1 : 0;
      const next = this.#index + 1;
      if (this.#blocked >= this.#opts.blockedAfter && next < this.#opts.transports.length) {
        const from = this.transport;
        this.#index = next;
        this.#blocked = 0;
        this.#attempt = 0;
        const reason = `${from} cannot connect while the gateway answers HTTP (${info.reason || "refused"})`;
        this.#emit("disconnected", { transport: from, code: info.code, reason: info.reason, retryInMs: 0 });
        this.#emit("fallback", { from, to: this.transport, reason });
        this.#connect();
        return;
      }
    } else {
      this.#blocked = 0;
    }
    const renewToken = info.code === 4003 || code === "token_expired";
    const retryInMs = renewToken && this.#attempt === 0 ? 0 : this.#delay(info.retryAfterMs || 0);
    this.#emit("disconnected", { transport: conn.name, code: info.code, reason: info.reason, retryInMs });
    this.#schedule(retryInMs, info.reason);
  }

  /** The server confirmed a position for `name` (a cursor, possibly combined). */
  _position(conn, names, cursor) {
    if (!this._isCurrent(conn) || !cursor) return;
    const seq = ++this.#seq;
    for (const name of names) {
      const ch = this.#channels.get(name);
      if (!ch) continue;
      ch.cursor = cursor;
      ch.seq = seq;
      ch.settle.resolve();
    }
  }

  /** One event from the server: delivered unless already seen. */
  _event(conn, envelope) {
    if (!this._isCurrent(conn)) return false;
    const ch = this.#channels.get(envelope.channel);
    if (!ch) return false;
    // A transient event (presence join or leave) has no offset or cursor: it is not part of
    // the channel's history and moves no position.
    if (envelope.offset === undefined) {
      const handler = { "presence.join": ch.onJoin, "presence.leave": ch.onLeave }[envelope.type];
      if (typeof handler === "function") {
        try { handler(envelope.data, envelope); } catch (err) { report(err); }
      }
      return true;
    }
    if (ch.lastOffset !== null && envelope.offset <= ch.lastOffset) return false;
    ch.lastOffset = envelope.offset;
    ch.cursor = envelope.cursor;
    ch.seq = ++this.#seq;
    ch.settle.resolve();
    try { ch.onEvent(envelope); } catch (err) { report(err); }
    return true;
  }

  /** History no longer reaches `channel`'s position: the next event is `offset`. */
  _reset(conn, channel, offset, cursor) {
    if (!this._isCurrent(conn)) return;
    const ch = this.#channels.get(channel);
    if (!ch) return;
    ch.lastOffset = offset - 1;
    if (cursor) {
      ch.cursor = cursor;
      ch.seq = ++this.#seq;
    }
    const detail = { channel, offset, cursor: cursor || null };
    if (ch.onReset) {
      try { ch.onReset(detail); } catch (err) { report(err); }
    }
    this.#emit("reset", detail);
  }

  /** The server refused one channel (WebSocket `error` frame for a subscribe). */
  _refused(conn, channel, error) {
    if (!this._isCurrent(conn)) return;
    const ch = this.#channels.get(channel);
    if (ch) ch.settle.reject(error);
    this.#emit("error", { error, channel });
  }

  /**
   * What an SSE or long-poll request should ask for: channels with a cursor, plus one group
   * of channels without one (those sharing the same `after`, or none); other groups wait for
   * the next request, once the first has given them a position.
   */
  _plan() {
    const cursors = [];
    const channels = [];
    const pending = new Map();
    for (const ch of this.#channels.values()) {
      if (ch.cursor) {
        channels.push(ch.name);
        cursors.push(ch);
      } else {
        const key = ch.after === null ? "now" : String(ch.after);
        if (!pending.has(key)) pending.set(key, []);
        pending.get(key).push(ch.name);
      }
    }
    // Oldest first: where two cursors disagree on a channel's epoch, the later one wins.
    cursors.sort((a, b) => a.seq - b.seq);
    const unique = [...new Set(cursors.map((ch) => ch.cursor))];
    let after = null;
    const [first] = pending.entries();
    if (first) {
      channels.push(...first[1]);
      if (first[0] !== "now") after = Number(first[0]);
    }
    return { channels, cursors: unique, after, complete: pending.size <= 1, uncovered: pending.size > 0 };
  }

  _url(path, params) {
    const q = new URLSearchParams();
    for (const [k, v] of params) q.append(k, v);
    return `${this.#base}${path}?${q}`;
  }
}

// === transports ===

/**
 * Whether a WebSocket to the gateway gets its first answer now, on a socket that subscribes
 * to nothing: the client's connection goes on meanwhile.
 */
function probeWebSocket(client, token) {
  return new Promise((resolve) => {
    const probe = new WsConnection({
      baseUrl: client.baseUrl,
      _options: () => client._options(),
      _channels: () => new Map(),
      _credential: (fresh) => client._credential(fresh),
      _isCurrent: () => true,
      // Stopped once `_opened` has returned: the connection sets its timers right after.
      _opened: (conn) => queueMicrotask(() => { conn.stop(); resolve(true); }),
      _ended: () => resolve(false),
      _position() {},
      _event() { return false; },
      _reset() {},
      _refused() {},
    }, token);
    probe.start();
  });
}

/** Stands for the connection while a token or a reachability probe is awaited. */
class Pending {
  update() {}
  stop() {}
}

// Each connection reports to the client through the `_` methods above and ignores the
// client once it is no longer the current connection.

/** How an SSE or long-poll connection ends when the gateway answered with an HTTP error. */
async function refusal(res, opened) {
  const error = await errorFrom(res);
  // Retrying soon cannot fix a bad request, a forbidden channel or a missing route.
  const fatal = res.status === 400 || res.status === 403 || res.status === 404;
  return { opened, answered: true, error, reason: error.message, retryAfterMs: error.retryAfterMs, fatal };
}

function authHeaders(token) {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** WebSocket: one socket, a `subscribe` frame per channel. */
class WsConnection {
  name = "websocket";
  #client;
  #token;
  #ws = null;
  #opened = false;
  #nextId = 1;
  #handshake = 0;
  #pending = new Map(); // frame id -> channel (subscribes) or "auth"
  #asked = new Map(); // frame id -> {resolve, reject} of a `presence` or `publish` request
  #subscribed = new Set();
  #timers = [];
  #lastFrameAt = 0;
  #done = false;

  constructor(client, token) {
    this.#client = client;
    this.#token = token;
  }

  start() {
    const opts = this.#client._options();
    const url = this.#client.baseUrl.replace(/^http/, "ws") + "/v1/ws";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      queueMicrotask(() => this.#end({ opened: false, answered: false, reason: String(err) }));
      return;
    }
    this.#ws = ws;
    this.#timers.push(setTimeout(() => {
      if (!this.#opened) this.#end({ opened: false, answered: false, reason: "connect timeout" });
    }, opts.connectTimeoutMs));
    ws.onopen = () => {
      // The first frame gets an answer from a working gateway (`authed` or `pong`); only
      // then is the transport counted as connected, so a proxy that accepts the upgrade and
      // then drops the connection looks blocked, not connected.
      this.#handshake = this.#nextId++;
      this.#pending.set(this.#handshake, "auth");
      this.#send(this.#token
        ? { op: "auth", id: this.#handshake, token: this.#token }
        : { op: "ping", id: this.#handshake });
    };
    ws.onmessage = (m) => {
      this.#lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(m.data); } catch { return; }
      this.#frame(frame);
    };
    ws.onclose = (e) => {
      const answered = e.code >= 4000 || e.code === 1001 || e.code === 1013;
      this.#end({ opened: this.#opened, answered, code: e.code, reason: e.reason || `closed (${e.code})` });
    };
  }

  update() {
    if (!this.#opened) return;
    const channels = this.#client._channels();
    for (const name of [...this.#subscribed]) {
      if (!channels.has(name)) {
        this.#subscribed.delete(name);
        this.#send({ op: "unsubscribe", id: this.#nextId++, channel: name });
      }
    }
    for (const ch of channels.values()) {
      if (this.#subscribed.has(ch.name)) continue;
      this.#subscribed.add(ch.name);
      const id = this.#nextId++;
      this.#pending.set(id, ch.name);
      const frame = { op: "subscribe", id, channel: ch.name };
      if (ch.cursor) frame.cursor = ch.cursor;
      else if (ch.after !== null) frame.after = ch.after;
      this.#send(frame);
    }
  }

  stop() {
    this.#done = true;
    this.#timers.forEach(clearTimeout);
    this.#timers.forEach(clearInterval);
    this.#failAsked("connection closed");
    if (this.#ws && this.#ws.readyState <= 1) this.#ws.close(1000, "client closed");
  }

  /** Whether the socket is open and answered its first frame. */
  get isOpen() {
    return this.#opened && !this.#done;
  }

  /** Asks who is present on `channel` (the `presence` op). */
  presence(channel) {
    return this.ask({ op: "presence", channel }).then((f) => f.members);
  }

  /** Sends `frame` with a fresh id; resolves to its reply frame, rejects on its `error`. */
  ask(frame) {
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      this.#asked.set(id, { resolve, reject });
      this.#send({ ...frame, id });
    });
  }

  #failAsked(reason) {
    for (const { reject } of this.#asked.values()) reject(new SwitchyardError("unavailable", reason));
    this.#asked.clear();
  }

  #send(frame) {
    if (this.#ws && this.#ws.readyState === 1) this.#ws.send(JSON.stringify(frame));
  }

  #frame(f) {
    const client = this.#client;
    switch (f.op) {
      case "authed":
        this.#pending.delete(f.id);
      // falls through
      case "pong":
        if (!this.#opened && f.id === this.#handshake) {
          this.#opened = true;
          client._opened(this);
          this.#keepAlive();
          this.update();
        }
        if (f.op === "authed") this.#refreshBefore(f.expires_at);
        break;
      case "subscribed":
        this.#pending.delete(f.id);
        client._position(this, [f.channel], f.cursor);
        break;
      case "event": {
        const { op: _op, ...envelope } = f;
        client._event(this, envelope);
        break;
      }
      case "reset":
        client._reset(this, f.channel, f.offset, f.cursor);
        break;
      case "presence":
        this.#asked.get(f.id)?.resolve(f);
        this.#asked.delete(f.id);
        break;
      case "published":
        this.#asked.get(f.id)?.resolve({ offset: f.offset, cursor: f.cursor });
        this.#asked.delete(f.id);
        break;
      case "error": {
        if (this.#asked.has(f.id)) {
          this.#asked.get(f.id).reject(new SwitchyardError(f.error?.code, f.error?.message));
          this.#asked.delete(f.id);
          break;
        }
        const what = this.#pending.get(f.id);
        const error = new SwitchyardError(f.error?.code, f.error?.message);
        if (what === "auth" && error.code === "forbidden") {
          // A refreshed token that covers fewer channels: the gateway dropped one of them
          // (its `authed` answer follows).
          client._refused(this, undefined, error);
          break;
        }
        this.#pending.delete(f.id);
        if (what === "auth") {
          // The credential was refused: reconnect with a fresh one (or wait, if it is fixed).
          this.#end({ opened: this.#opened, answered: true, error, reason: error.message });
          this.stop();
        } else if (what) {
          this.#subscribed.delete(what);
          client._refused(this, what, error);
        } else {
          client._refused(this, f.channel, error);
        }
        break;
      }
      default:
        break; // unsubscribed, and frames added later
    }
  }

  #keepAlive() {
    const every = this.#client._options().wsPingIntervalMs;
    this.#timers.push(setInterval(() => {
      if (Date.now() - this.#lastFrameAt > every * 2) {
        this.#end({ opened: true, answered: false, reason: "no answer to pings" });
        this.stop();
        return;
      }
      this.#send({ op: "ping", id: this.#nextId++ });
    }, every));
  }

  /** With a token function, sends a fresh token before the current one expires. */
  #refreshBefore(expiresAt) {
    if (!expiresAt || typeof this.#client._options().token !== "function") return;
    const left = Date.parse(expiresAt) - Date.now();
    if (!(left > 0)) return;
    this.#timers.push(setTimeout(async () => {
      if (this.#done) return;
      try {
        const token = await this.#client._credential(true);
        const id = this.#nextId++;
        this.#pending.set(id, "auth");
        this.#send({ op: "auth", id, token });
      } catch (error) {
        this.#client._refused(this, undefined, error);
      }
    }, Math.max(1000, left * 0.8)));
  }

  #end(info) {
    if (this.#done) return;
    this.#done = true;
    this.#timers.forEach(clearTimeout);
    this.#timers.forEach(clearInterval);
    this.#failAsked(info.reason);
    try { this.#ws?.close(); } catch { /* already closed */ }
    this.#client._ended(this, info);
  }
}

/**
 * Server-Sent Events, read with `fetch` streaming rather than `EventSource`: EventSource
 * only dispatches event types it was told in advance, cannot show an HTTP error (so an
 * expired token looks like a network failure), and hides the stream's opening `id:` block,
 * which is the position of a channel that has no event yet.
 */
class SseConnection {
  name = "sse";
  #client;
  #token;
  #abort = null;
  #opened = false;
  #done = false;
  #streamChannels = [];
  #generation = 0;

  constructor(client, token) {
    this.#client = client;
    this.#token = token;
  }

  start() { this.#open(); }

  update() {
    if (this.#done) return;
    // The channel set of a stream is fixed: open a new one (every channel resumes from its
    // cursor, so nothing is lost or repeated).
    this.#abort?.abort();
    this.#open();
  }

  stop() {
    this.#done = true;
    this.#abort?.abort();
  }

  async #open() {
    const generation = ++this.#generation;
    const client = this.#client;
    const opts = client._options();
    const plan = client._plan();
    if (plan.channels.length === 0) return;
    this.#streamChannels = plan.channels;
    const params = plan.channels.map((c) => ["channel", c]);
    for (const c of plan.cursors) params.push(["cursor", c]);
    if (plan.after !== null) params.push(["after", String(plan.after)]);
    const abort = new AbortController();
    this.#abort = abort;
    let idle = null;
    const touch = (ms) => {
      clearTimeout(idle);
      idle = setTimeout(() => abort.abort("idle"), ms);
    };
    touch(opts.connectTimeoutMs);
    let res;
    try {
      res = await fetch(client._url("/v1/sse", params), {
        headers: { accept: "text/event-stream", ...authHeaders(this.#token) },
        cache: "no-store",
        signal: abort.signal,
      });
    } catch (err) {
      clearTimeout(idle);
      if (generation !== this.#generation || this.#done) return;
      return this.#end({ opened: this.#opened, answered: false, reason: abort.signal.reason === "idle" ? "connect timeout" : String(err) });
    }
    if (!res.ok) {
      clearTimeout(idle);
      const info = await refusal(res, this.#opened);
      if (generation !== this.#generation || this.#done) return;
      return this.#end(info);
    }
    let reason = "stream ended";
    try {
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let block = { data: [], event: "", id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        touch(opts.sseIdleTimeoutMs);
        buffer += value;
        let nl;
        while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
          if (line === "") {
            if (generation !== this.#generation || this.#done) return;
            const why = this.#dispatch(block, plan);
            if (why) reason = why;
            block = { data: [], event: "", id: null };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") block.data.push(value);
          else if (field === "event") block.event = value;
          else if (field === "id") block.id = value;
        }
        if (generation !== this.#generation || this.#done) return;
      }
    } catch (err) {
      if (generation !== this.#generation || this.#done) return;
      reason = abort.signal.reason === "idle" ? "no heartbeat" : String(err);
    } finally {
      clearTimeout(idle);
    }
    if (generation !== this.#generation || this.#done) return;
    this.#end({ opened: this.#opened, answered: this.#opened, reason });
  }

  /** Handles one block; returns why the server is ending the stream, if it says so. */
  #dispatch(block, plan) {
    const client = this.#client;
    if (!this.#opened && block.id !== null) {
      this.#opened = true;
      client._opened(this);
    }
    let ending = null;
    if (block.data.length > 0) {
      let data;
      try { data = JSON.parse(block.data.join("\n")); } catch { data = null; }
      // Control blocks have no `type`; envelopes always do (and may be of any type,
      // including "reset").
      // Transient events (presence joins and leaves) have a `type` but no offset.
      if (data && typeof data.type === "string" && typeof data.channel === "string"
          && (typeof data.offset === "number" || data.offset === undefined)) {
        client._event(this, data);
      } else if (data && block.event === "reset") {
        client._reset(this, data.channel, data.offset, data.cursor || block.id);
      } else if (data && block.event === "disconnect") {
        ending = `server ended the stream: ${data.code}`;
      }
    }
    // `id:` is the whole stream's position after this block (combined over its channels).
    if (block.id) client._position(this, this.#streamChannels, block.id);
    if (block.id !== null && !plan.complete && !this.#done) {
      // Channels left out of this stream (another `after`) now join a new one.
      plan.complete = true;
      queueMicrotask(() => this.update());
    }
    return ending;
  }

  #end(info) {
    if (this.#done) return;
    this.#done = true;
    this.#abort?.abort();
    this.#client._ended(this, info);
  }
}

/** Long-poll: one held request at a time, resumed with the combined cursor it returns. */
class PollConnection {
  name = "poll";
  #client;
  #token;
  #abort = null;
  #opened = false;
  #done = false;
  #restart = false;

  constructor(client, token) {
    this.#client = client;
    this.#token = token;
  }

  start() { this.#loop(); }

  update() {
    // Ask again with the new channel set; the aborted request delivered nothing, so its
    // events come with the next one.
    this.#restart = true;
    this.#abort?.abort("update");
  }

  stop() {
    this.#done = true;
    this.#abort?.abort("stop");
  }

  async #loop() {
    const client = this.#client;
    const opts = client._options();
    while (!this.#done) {
      const plan = client._plan();
      if (plan.channels.length === 0) return;
      // A channel without a position gets one at once; then requests are held.
      const timeout = plan.uncovered || this.#restart ? 0 : opts.pollTimeoutSecs;
      this.#restart = false;
      const params = plan.channels.map((c) => ["channel", c]);
      for (const c of plan.cursors) params.push(["cursor", c]);
      if (plan.after !== null) params.push(["after", String(plan.after)]);
      params.push(["timeout", String(timeout)]);
      const abort = new AbortController();
      this.#abort = abort;
      const watchdog = setTimeout(() => abort.abort("timeout"),
        timeout * 1000 + opts.connectTimeoutMs);
      let res;
      let body;
      try {
        res = await fetch(client._url("/v1/poll", params), {
          headers: authHeaders(this.#token),
          cache: "no-store",
          signal: abort.signal,
        });
        if (res.ok) body = await res.json();
      } catch (err) {
        clearTimeout(watchdog);
        if (this.#done) return;
        if (abort.signal.reason === "update") continue;
        return this.#end({ opened: this.#opened, answered: false, reason: abort.signal.reason === "timeout" ? "request timed out" : String(err) });
      }
      clearTimeout(watchdog);
      if (this.#done) return;
      if (!res.ok) return this.#end(await refusal(res, this.#opened));
      if (!this.#opened) {
        this.#opened = true;
        client._opened(this);
      }
      for (const r of body.resets || []) client._reset(this, r.channel, r.offset, null);
      for (const event of body.events || []) client._event(this, event);
      client._position(this, plan.channels, body.cursor);
    }
  }

  #end(info) {
    if (this.#done) return;
    this.#done = true;
    this.#client._ended(this, info);
  }
}
