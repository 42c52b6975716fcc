// The ringsync WebSocket transport: `connect()` → `Room`, a SyncCore (./sync.js) kept on a
// self-healing socket. It reconnects with backoff and jitter, resumes sessions, heartbeats and
// throttles presence; `roomUrl` builds the room's WebSocket URL. `undo()`/`redo()`/`revert()` return
// promises settled by the server's answer; `list(path)` gives id-addressed list helpers (./list.js).

import { SyncCore } from "./sync.js";
import { List } from "./list.js";

/** @typedef {import("./patch.js").Json} Json */
/** @typedef {import("./patch.js").Op} Op */
/** @typedef {import("./patch.js").PatchError} PatchError */
/** @typedef {import("./sync.js").Mode} Mode */
/** @typedef {import("./sync.js").Effect} Effect */
/** @typedef {import("./sync.js").ChangeInfo} ChangeInfo */

/**
 * @typedef {string | (() => string | Promise<string>)} TokenSource a token (JWT), or a function
 *   returning one (or a promise of one), called afresh for each connection
 */

/**
 * @typedef {object} ConnectOptions
 * @property {TokenSource} [token] sent as the `token` query parameter on every (re)connect
 * @property {() => string | Promise<string>} [getToken] called when the server says the token is
 *   `expiring`; its result is sent as a `refresh` (default: `token`, when it is a function)
 * @property {typeof WebSocket} [WebSocket] constructor to use (default: the global one)
 * @property {number} [minRetryMs=250] first reconnect delay (before jitter)
 * @property {number} [maxRetryMs=10000] backoff cap
 * @property {number} [heartbeatMs=15000] ping interval; a socket silent for twice this is dropped
 * @property {number} [connectTimeoutMs=10000] give up on a connection attempt without `welcome`
 * @property {number} [presenceThrottleMs=50] at most one presence message per interval
 * @property {number} [maxMessageBytes=1048576] larger changes are refused locally
 * @property {() => number} [random] jitter source in [0, 1)
 */

/** @typedef {"connecting"|"open"|"offline"} Status */

const CLOSE_NORMAL = 1000;
const CLOSE_TAKEN_OVER = 4001;
const CLOSE_RESYNC = 4000; // ours: "I am dropping this socket on purpose"
const CLOSE_UNAUTHORIZED = 4401; // no valid token (missing, invalid, expired)
const CLOSE_FORBIDDEN = 4403; // the token grants nothing here, or the session is another user's
// An operator's admin API call: kicked (4009), room closed (4010), room deleted (4011).
const CLOSE_BY_OPERATOR = [4009, 4010, 4011];

/**
 * Connects to a room. The connection is kept up until `room.close()`. Local changes, presence and
 * listeners can be used at once; changes are sent when the connection is up.
 * @param {string|URL|null|undefined} url the server's base URL (http, https, ws or wss); omitted →
 *   the page's origin
 * @param {string} roomName
 * @param {ConnectOptions} [options]
 * @returns {Room}
 */
export function connect(url, roomName, options = {}) {
  return new Room(url, roomName, options);
}

/** One room, kept in sync over a self-healing WebSocket. Create with `connect()`. */
export class Room {
  #core = new SyncCore();
  #url;
  #opts;
  #WebSocket;
  /** @type {WebSocket|null} the current socket; events of any other socket are ignored */
  #ws = null;
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();
  /** @type {Status} */
  #status = "connecting";
  #closed = false;
  #stopped = false; // after 4001: no automatic reconnect
  #attempt = 0;
  #opening = false; // waiting for a token function before opening a socket
  #lastHeard = 0;
  #timers = { retry: 0, heartbeat: 0, connect: 0, presence: 0 };
  #lastPresenceSent = 0;
  /** @type {Map<number, {resolve: Function, reject: Function}>} undo/redo/revert requests awaiting the server */
  #requests = new Map();
  #onOnline = () => {
    if (this.#timers.retry && !this.#closed && !this.#stopped) {
      clearTimeout(this.#timers.retry);
      this.#timers.retry = 0;
      this.#open();
    }
  };

  /**
   * @param {string|URL|null|undefined} url
   * @param {string} roomName
   * @param {ConnectOptions} options
   */
  constructor(url, roomName, options) {
    if (typeof roomName !== "string" || roomName === "") throw new TypeError("roomName must be a non-empty string");
    this.roomName = roomName;
    this.#url = roomUrl(url, roomName);
    this.#opts = {
      minRetryMs: 250,
      maxRetryMs: 10000,
      heartbeatMs: 15000,
      connectTimeoutMs: 10000,
      presenceThrottleMs: 50,
      maxMessageBytes: 1 << 20,
      random: Math.random,
      ...options,
    };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") throw new TypeError("no WebSocket implementation available");
    globalThis.addEventListener?.("online", this.#onOnline);
    // Connect on the next microtask, so listeners added right after connect() see every event.
    queueMicrotask(() => this.#open());
  }

  /** @returns {Json} the materialised view (server state + pending local changes); read-only */
  get state() {
    return this.#core.view;
  }
  /** @returns {number} the server rev the view is based on */
  get rev() {
    return this.#core.rev;
  }
  /**
   * @returns {Record<string, Json>} presence of everyone in the room, this client included; in a
   * room with more peers than the server lists (`--presence-peers`), of the listed ones
   */
  get presence() {
    return this.#core.presence;
  }
  /** @returns {number} how many are in the room, this client included (listed or not) */
  get presenceCount() {
    return this.#core.presenceCount;
  }
  /** @returns {string|null} this client's public id, once welcomed */
  get client() {
    return this.#core.client;
  }
  /** @returns {string|null} the user the server knows this client as (the token's `sub`), once welcomed; null without tokens */
  get user() {
    return this.#core.user;
  }
  /** @returns {Status} */
  get status() {
    return this.#status;
  }
  /** @returns {number} local changes (and undo/redo requests) not yet confirmed by the server */
  get pendingCount() {
    return this.#core.pending.length;
  }
  /** @returns {boolean} whether the server can undo a change of this user here (false on servers without undo) */
  get canUndo() {
    return this.#core.canUndo;
  }
  /** @returns {boolean} whether the server can redo an undo of this user here */
  get canRedo() {
    return this.#core.canRedo;
  }
  /** @returns {boolean|null} whether the server supports undo/redo (its welcome carries `canUndo`); null until welcomed */
  get historySupported() {
    return this.#core.historySupported;
  }

  /**
   * Changes the room. Applied to `state` at once; sent now or after reconnecting.
   * @param {Op[]} ops
   * @param {{mode?: Mode, meta?: Record<string, Json>}} [options] `meta`: a JSON object of at most
   *   1024 bytes, stored with the change and relayed to everyone (e.g. `{label: "e2–e4"}`)
   * @returns {number} the change's clientReqId (it appears in a later "reject" if the server refuses)
   * @throws {PatchError} when the ops do not apply to the current state (nothing is sent)
   */
  change(ops, { mode = "overwrite", meta } = {}) {
    if (this.#closed) throw new Error("room is closed");
    // A private deep copy: the caller may reuse its objects, and it proves the ops are JSON.
    const text = JSON.stringify(ops);
    if (text === undefined) throw new TypeError("ops must be JSON");
    if (new TextEncoder().encode(text).length + 128 > this.#opts.maxMessageBytes) {
      throw new RangeError(`change is larger than ${this.#opts.maxMessageBytes} bytes`);
    }
    const copy = meta === undefined ? undefined : JSON.parse(JSON.stringify(meta));
    const { clientReqId, effects } = this.#core.localChange(JSON.parse(text), mode, copy === undefined ? {} : { meta: copy });
    this.#run(effects);
    return clientReqId;
  }

  /**
   * Asks the server to undo this user's most recent change in this room that is not undone yet. The
   * server commits the revert as a new change everyone sees; nothing changes locally before that.
   * @param {{mode?: "overwrite", meta?: Record<string, Json>}} [options] `mode: "overwrite"` reverts
   *   even over later changes by others (by default the server refuses with `conflict`)
   * @returns {Promise<ChangeInfo>} the committed entry (with its `ops` and `reverts`); rejected with
   *   the reject (`{clientReqId, code: "conflict"|"stale"|"invalid"|…, message, conflicts?, kind}`), or
   *   with an Error when the room closes first
   */
  undo(options = {}) {
    return this.#history("undo", options);
  }

  /**
   * Asks the server to redo this user's latest undo. Like `undo()`.
   * @param {{mode?: "overwrite", meta?: Record<string, Json>}} [options]
   * @returns {Promise<ChangeInfo>}
   */
  redo(options = {}) {
    return this.#history("redo", options);
  }

  /**
   * Asks the server to revert revision `rev` (one's own; anyone's with `admin`). Like `undo()`.
   * @param {number} rev
   * @param {{mode?: "overwrite", meta?: Record<string, Json>}} [options]
   * @returns {Promise<ChangeInfo>}
   */
  revert(rev, options = {}) {
    return this.#history("revert", { ...options, reverts: rev });
  }

  /**
   * Helpers for the id-addressed list at `path` (elements are objects with a string `id`):
   * `insertAfter(afterId, value)`, `push(value)`, `move(id, afterId)`, `remove(id)`,
   * `update(id, fields)`, `items`. See ./list.js.
   * @param {string} path
   * @returns {List}
   */
  list(path) {
    return new List(this, path);
  }

  #history(kind, { mode, meta, reverts } = {}) {
    if (this.#closed) return Promise.reject(new Error("room is closed"));
    let started;
    try {
      const copy = meta === undefined ? undefined : JSON.parse(JSON.stringify(meta));
      started = this.#core.localHistory(kind, { mode, meta: copy, reverts });
    } catch (e) {
      return Promise.reject(e);
    }
    const promise = new Promise((resolve, reject) => this.#requests.set(started.clientReqId, { resolve, reject }));
    this.#run(started.effects);
    return promise;
  }

  /** Settles undo/redo/revert promises from the effects just run. */
  #settle(effects) {
    if (this.#requests.size === 0) return;
    for (const e of effects) {
      if (!("emit" in e)) continue;
      if (e.emit === "state") {
        for (const c of e.args[1].changes) {
          const r = c.own && this.#requests.get(c.clientReqId);
          if (r) {
            this.#requests.delete(c.clientReqId);
            r.resolve(c);
          }
        }
      } else if (e.emit === "reject") {
        const r = this.#requests.get(e.args[0].clientReqId);
        if (r) {
          this.#requests.delete(e.args[0].clientReqId);
          r.reject(e.args[0]);
        }
      }
    }
    // A snapshot covering a request drops it without saying how it went: the state is right either
    // way; the promise resolves with what is known.
    for (const [id, r] of [...this.#requests]) {
      if (!this.#core.pending.some((p) => p.clientReqId === id)) {
        this.#requests.delete(id);
        r.resolve({ clientReqId: id, rev: null, own: true, ops: [], unknown: true });
      }
    }
  }

  /**
   * Merges keys into this client's presence (null removes a key). Sent throttled.
   * @param {Record<string, Json>} partial
   */
  setPresence(partial) {
    this.#run(this.#core.setPresence(JSON.parse(JSON.stringify(partial))));
    this.#schedulePresence();
  }

  /**
   * Sends an ephemeral message to everyone else in the room. Best effort: dropped when offline.
   * @param {Json} data
   * @returns {boolean} whether it was sent
   */
  broadcast(data) {
    if (!this.#core.ready) return false;
    return this.#send({ type: "broadcast", data });
  }

  /**
   * Subscribes to an event:
   * - "state" (state, {source: "local"|"delta"|"snapshot"|"reject", rev, changes: ChangeInfo[]})
   * - "presence" (peers, {changed: string[], count}) (`count`: as `presenceCount`)
   * - "broadcast" (data, {client})
   * - "reject" ({clientReqId, code, message, rev?, conflicts?, ops, mode, kind})
   *   (`kind`: "change", or "undo"/"redo"/"revert" for those requests, whose promises reject too)
   * - "history" ({canUndo, canRedo}) when either changed (from `welcome` and this client's acks)
   * - "status" (status, {code?, reason?, retryInMs?})
   * - "error" (server error message), "dropped" (number of broadcasts missed)
   * - "expiring" (exp: unix seconds; a refresh is sent when a token function is set)
   * - "refreshed" (exp: unix seconds of the token now in force)
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void} unsubscribes
   */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.#listeners.get(event)?.delete(fn);
  }

  /** Leaves the room: a clean close, so others see this client leave at once. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#flushPresence();
    const ws = this.#ws;
    this.#drop();
    ws?.close(CLOSE_NORMAL, "bye");
    globalThis.removeEventListener?.("online", this.#onOnline);
    this.#setStatus("offline", { reason: "closed" });
    for (const r of this.#requests.values()) r.reject(new Error("room is closed"));
    this.#requests.clear();
  }

  /** Reconnects now (e.g. after the session was taken over by another tab). */
  reconnect() {
    if (this.#closed) return;
    this.#stopped = false;
    this.#attempt = 0;
    const ws = this.#ws;
    this.#drop();
    ws?.close(CLOSE_RESYNC, "reconnect");
    this.#open();
  }

  #open() {
    if (this.#closed || this.#ws || this.#opening) return;
    this.#timers.retry = 0;
    this.#setStatus("connecting", { attempt: this.#attempt });
    const token = this.#opts.token;
    if (typeof token !== "function") return this.#openWith(token);
    // A fresh token for every connection attempt (it may have expired since the last one).
    this.#opening = true;
    Promise.resolve()
      .then(token)
      .then(
        (t) => {
          this.#opening = false;
          if (!this.#closed && !this.#ws) this.#openWith(t);
        },
        (e) => {
          this.#opening = false;
          if (!this.#closed && !this.#ws) this.#scheduleRetry({ reason: `token: ${e}` });
        },
      );
  }

  /** @param {string|null|undefined} token */
  #openWith(token) {
    const url = new URL(this.#url);
    for (const [k, v] of Object.entries(this.#core.resumeParams())) url.searchParams.set(k, v);
    if (typeof token === "string" && token !== "") url.searchParams.set("token", token);
    let ws;
    try {
      ws = new this.#WebSocket(url.toString());
    } catch (e) {
      this.#scheduleRetry({ reason: String(e) });
      return;
    }
    this.#ws = ws;
    this.#lastHeard = Date.now();
    this.#timers.connect = setTimeout(() => {
      if (this.#ws === ws && !this.#core.ready) this.#lost(ws, { reason: "connect timeout" });
    }, this.#opts.connectTimeoutMs);
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      this.#lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return; // not ours to fix; the server never sends this
      }
      if (msg?.type === "expiring" || msg?.type === "refreshed") return this.#tokenMessage(ws, msg);
      const wasSynced = this.#core.synced;
      this.#run(this.#core.handle(msg));
      if (this.#ws !== ws) return; // a resync dropped this socket
      if (msg.type === "welcome") {
        clearTimeout(this.#timers.connect);
        this.#startHeartbeat(ws);
      }
      if (!wasSynced && this.#core.synced) {
        this.#attempt = 0;
        this.#setStatus("open", {});
      }
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#lost(ws, { code: ev.code, reason: ev.reason });
    };
  }

  /** `expiring`: fetch a new token and send it as a `refresh`; `refreshed`: it took effect. */
  #tokenMessage(ws, msg) {
    this.#emit(msg.type, [msg.exp]);
    if (msg.type !== "expiring") return;
    const fn = this.#opts.getToken ?? (typeof this.#opts.token === "function" ? this.#opts.token : null);
    if (!fn) return;
    Promise.resolve()
      .then(fn)
      .then(
        (token) => {
          if (this.#ws === ws && typeof token === "string") this.#send({ type: "refresh", token });
        },
        (e) => this.#emit("error", [{ code: "refresh", message: String(e) }]),
      );
  }

  /** The socket ended (or we gave up on it): reconnect unless told not to. */
  #lost(ws, detail) {
    this.#drop();
    if (ws.readyState !== 3 /* CLOSED */) ws.close(CLOSE_RESYNC, "dropped");
    if (this.#closed) return;
    const renewable = typeof this.#opts.token === "function";
    if (detail.code === CLOSE_FORBIDDEN || (detail.code === CLOSE_UNAUTHORIZED && !renewable)) {
      // Retrying with the same token cannot help: stay offline until `reconnect()` (after the
      // app changed its token). A token function gets a fresh token on each retry instead.
      this.#stopped = true;
      this.#setStatus("offline", detail);
      return;
    }
    if (CLOSE_BY_OPERATOR.includes(detail.code)) {
      // An operator ended this connection on purpose; coming straight back would undo the kick or
      // re-open the closed (or deleted) room. Stay offline until the app calls `reconnect()`.
      this.#stopped = true;
      this.#setStatus("offline", detail);
      return;
    }
    if (detail.code === CLOSE_TAKEN_OVER) {
      // Another connection took our session over (e.g. a duplicated tab). Reconnecting would take
      // it back and start a ping-pong; stay offline until `reconnect()`.
      this.#stopped = true;
      this.#setStatus("offline", { ...detail, reason: detail.reason || "session taken over" });
      return;
    }
    this.#scheduleRetry(detail);
  }

  /** Forget the current socket (its late events are ignored) and stop its timers. */
  #drop() {
    this.#ws = null;
    this.#core.disconnected();
    for (const k of ["heartbeat", "connect", "retry"]) {
      clearTimeout(this.#timers[k]);
      clearInterval(this.#timers[k]);
      this.#timers[k] = 0;
    }
  }

  #scheduleRetry(detail) {
    const { minRetryMs, maxRetryMs, random } = this.#opts;
    const cap = Math.min(maxRetryMs, minRetryMs * 2 ** this.#attempt);
    const delay = Math.round(cap * (0.5 + random() / 2)); // "equal jitter": never 0, never in step
    this.#attempt++;
    this.#setStatus("offline", { ...detail, retryInMs: delay });
    this.#timers.retry = setTimeout(() => this.#open(), delay);
  }

  #startHeartbeat(ws) {
    const every = this.#opts.heartbeatMs;
    this.#timers.heartbeat = setInterval(() => {
      if (this.#ws !== ws) return;
      if (Date.now() - this.#lastHeard > 2 * every) {
        this.#lost(ws, { reason: "heartbeat timeout" });
        return;
      }
      this.#send({ type: "ping", t: Date.now() });
    }, every);
  }

  #schedulePresence() {
    if (this.#timers.presence) return;
    const wait = Math.max(0, this.#lastPresenceSent + this.#opts.presenceThrottleMs - Date.now());
    this.#timers.presence = setTimeout(() => {
      this.#timers.presence = 0;
      this.#flushPresence();
    }, wait);
  }

  #flushPresence() {
    clearTimeout(this.#timers.presence);
    this.#timers.presence = 0;
    const msg = this.#core.takePresenceMessage();
    if (msg) {
      this.#lastPresenceSent = Date.now();
      this.#send(msg);
    }
  }

  #send(msg) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1 /* OPEN */) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  /** @param {Effect[]} effects */
  #run(effects) {
    this.#runEffects(effects);
    this.#settle(effects);
  }

  /** @param {Effect[]} effects */
  #runEffects(effects) {
    for (const e of effects) {
      if ("send" in e) this.#send(e.send);
      else if ("emit" in e) this.#emit(e.emit, e.args);
      else if ("resync" in e) {
        // The stream cannot be trusted: drop the socket and come back asking for a snapshot.
        this.#emit("error", [{ code: "resync", message: e.resync }]);
        const ws = this.#ws;
        if (ws) this.#lost(ws, { reason: `resync: ${e.resync}` });
        return;
      }
    }
  }

  #setStatus(status, detail) {
    const changed = status !== this.#status;
    this.#status = status;
    // "connecting" and "offline" repeat with each attempt (their details change); "open" does not.
    if (changed || status !== "open") this.#emit("status", [status, detail]);
  }

  #emit(event, args) {
    for (const fn of this.#listeners.get(event) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        // One broken listener must not break the sync loop: report it like an uncaught error.
        if (typeof globalThis.reportError === "function") globalThis.reportError(e);
        else console.error(e);
      }
    }
  }
}

/**
 * `ws(s)://host/prefix/v1/rooms/{room}/ws` from a base URL (http → ws, https → wss).
 * @param {string|URL|null|undefined} base
 * @param {string} roomName
 */
export function roomUrl(base, roomName) {
  const url = new URL(base ?? globalThis.location?.href ?? "", globalThis.location?.href);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  else if (url.protocol !== "ws:" && url.protocol !== "wss:") throw new TypeError(`unsupported URL ${url}`);
  const prefix = base == null ? "" : url.pathname.replace(/\/+$/, "");
  url.pathname = `${prefix}/v1/rooms/${encodeURIComponent(roomName)}/ws`;
  url.search = "";
  url.hash = "";
  return url.toString();
}
