// ringsync browser client: one dependency-free ES module, no build step.
//
// It has three layers, each usable on its own:
//
//   1. JSON Patch (`applyPatch`): RFC 6902 plus ringsync's `incr`, applied *persistently*: the input
//      document is never modified; only the containers along each op's path are copied, everything
//      else is shared. That makes the rebase below cheap and exact (see SyncCore).
//   2. `SyncCore`: the protocol state machine, free of sockets and timers. It consumes server messages
//      and local calls and returns a list of effects (messages to send, events to emit, a resync
//      request). Node tests drive it directly.
//   3. `connect()` → `Room`: the WebSocket transport around a SyncCore: reconnects with backoff and
//      jitter, resumes sessions, heartbeats, throttles presence.
//
// Invariant held by SyncCore after every step:
//   view == server copy (the room at `rev`, as the server committed it) + every pending local change
//           that still applies, replayed in clientReqId order.
// Because the server copy is kept as its own (shared-structure) value, "undo the pending changes" is
// just going back to it; no inverse ops are needed, so floating-point `incr`s and move/copy cannot
// drift the way a computed inverse could.
//
// Wire protocol: docs/PROTOCOL.md.

/**
 * Any JSON value.
 * @typedef {null | boolean | number | string | Json[] | {[key: string]: Json}} Json
 */

/**
 * One JSON Patch operation (RFC 6902) or ringsync's `incr` (adds `value` to the number at `path`,
 * creating it when absent).
 * @typedef {{op: "add"|"replace"|"test"|"incr", path: string, value: Json}
 *   | {op: "remove", path: string}
 *   | {op: "move"|"copy", from: string, path: string}} Op
 */

/** @typedef {"overwrite"|"rev"|"paths"} Mode */

// ---------------------------------------------------------------------------------------------
// JSON Patch
// ---------------------------------------------------------------------------------------------

/** A patch that does not apply. `code` matches the server's reject codes. */
export class PatchError extends Error {
  /**
   * @param {"invalid"|"test_failed"} code
   * @param {string} message
   * @param {number} [index] index of the failing op in its patch
   */
  constructor(code, message, index) {
    super(index === undefined ? message : `op ${index}: ${message}`);
    this.name = "PatchError";
    this.code = code;
    this.index = index;
  }
}

const invalid = (message) => new PatchError("invalid", message);

/**
 * Splits an RFC 6901 pointer into unescaped reference tokens ("" → []).
 * @param {string} pointer
 * @returns {string[]}
 */
export function parsePointer(pointer) {
  if (typeof pointer !== "string") throw invalid("a path must be a string");
  if (pointer === "") return [];
  if (pointer[0] !== "/") throw invalid(`JSON Pointer ${JSON.stringify(pointer)} must start with "/"`);
  if (/~(?![01])/.test(pointer)) throw invalid(`JSON Pointer ${JSON.stringify(pointer)} has a bad "~" escape`);
  return pointer.slice(1).split("/").map((t) => t.replace(/~1/g, "/").replace(/~0/g, "~"));
}

/**
 * Escapes one reference token for use in a pointer ("a/b" → "a~1b").
 * @param {string} token
 */
export function escapePointerToken(token) {
  return String(token).replace(/~/g, "~0").replace(/\//g, "~1");
}

/**
 * JSON equality as `test` needs it: objects compare regardless of key order.
 * @param {Json} a
 * @param {Json} b
 * @returns {boolean}
 */
export function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
}

const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);

/** Strict RFC 6901 array index: "0" or digits without a leading zero. -1 when malformed. */
function arrayIndex(token) {
  return /^(0|[1-9][0-9]*)$/.test(token) ? Number(token) : -1;
}

/** The child of `node` at `token`, or `undefined` (JSON has no `undefined`, so that means absent). */
function child(node, token) {
  if (Array.isArray(node)) {
    const i = arrayIndex(token);
    return i >= 0 && i < node.length ? node[i] : undefined;
  }
  return isObject(node) && Object.hasOwn(node, token) ? node[token] : undefined;
}

/** The value at `tokens`, or `undefined` when the path does not exist. */
function lookup(doc, tokens) {
  let node = doc;
  for (let i = 0; i < tokens.length && node !== undefined; i++) node = child(node, tokens[i]);
  return node;
}

/** The value at `tokens`; throws `invalid` when the path does not exist. */
function getAt(doc, tokens, path) {
  const node = lookup(doc, tokens);
  if (node === undefined) throw invalid(`path ${path} does not exist`);
  return node;
}

/** A copy of container `node` whose child `token` is `value` (objects keep key order). */
function withChild(node, token, value) {
  if (Array.isArray(node)) {
    const copy = node.slice();
    copy[arrayIndex(token)] = value;
    return copy;
  }
  // A computed key defines an own property, even for "__proto__".
  return { ...node, [token]: value };
}

/**
 * Rebuilds the path to the parent of `tokens`' last token, calling `edit(parent, lastToken)` to get
 * the new parent. Only the containers on the path are copied.
 */
function editParent(doc, tokens, path, edit) {
  const walk = (node, depth) => {
    if (depth === tokens.length - 1) return edit(node, tokens[depth]);
    const next = child(node, tokens[depth]);
    if (next === undefined) throw invalid(`path ${path} does not exist`);
    return withChild(node, tokens[depth], walk(next, depth + 1));
  };
  return walk(doc, 0);
}

function addAt(doc, tokens, path, value) {
  if (tokens.length === 0) return value;
  return editParent(doc, tokens, path, (parent, last) => {
    if (Array.isArray(parent)) {
      const i = last === "-" ? parent.length : arrayIndex(last);
      if (i < 0 || i > parent.length) throw invalid(`index ${JSON.stringify(last)} is out of bounds at ${path}`);
      const copy = parent.slice();
      copy.splice(i, 0, value);
      return copy;
    }
    if (!isObject(parent)) throw invalid(`parent of ${path} is not a container`);
    return withChild(parent, last, value);
  });
}

function removeAt(doc, tokens, path) {
  if (tokens.length === 0) throw invalid("cannot remove the whole document");
  return editParent(doc, tokens, path, (parent, last) => {
    if (child(parent, last) === undefined) throw invalid(`path ${path} does not exist`);
    if (Array.isArray(parent)) {
      const copy = parent.slice();
      copy.splice(arrayIndex(last), 1);
      return copy;
    }
    const copy = { ...parent };
    delete copy[last];
    return copy;
  });
}

function replaceAt(doc, tokens, path, value) {
  if (tokens.length === 0) return value;
  return editParent(doc, tokens, path, (parent, last) => {
    if (child(parent, last) === undefined) throw invalid(`path ${path} does not exist`);
    return withChild(parent, last, value);
  });
}

/**
 * Applies one op; returns the new document.
 * @param {Json} doc
 * @param {Op} op
 * @returns {Json}
 */
function applyOp(doc, op) {
  if (!isObject(op)) throw invalid("an op must be an object");
  const path = op.path;
  const tokens = parsePointer(path);
  const needValue = () => {
    if (!Object.hasOwn(op, "value") || op.value === undefined) throw invalid(`"${op.op}" needs a value`);
    return op.value;
  };
  const needFrom = () => {
    if (typeof op.from !== "string") throw invalid(`"${op.op}" needs a "from" path`);
    return op.from;
  };
  switch (op.op) {
    case "add":
      return addAt(doc, tokens, path, needValue());
    case "remove":
      return removeAt(doc, tokens, path);
    case "replace":
      return replaceAt(doc, tokens, path, needValue());
    case "move": {
      const from = needFrom();
      const fromTokens = parsePointer(from);
      const value = getAt(doc, fromTokens, from);
      if (from === path) return doc;
      if (path.startsWith(from + "/")) throw invalid(`cannot move ${from} into its own child ${path}`);
      return addAt(removeAt(doc, fromTokens, from), tokens, path, value);
    }
    case "copy": {
      const from = needFrom();
      return addAt(doc, tokens, path, getAt(doc, parsePointer(from), from));
    }
    case "test": {
      const expected = needValue();
      if (!deepEqual(getAt(doc, tokens, path), expected)) throw new PatchError("test_failed", `test failed at ${path}`);
      return doc;
    }
    case "incr": {
      const n = needValue();
      if (typeof n !== "number" || !Number.isFinite(n)) throw invalid(`"incr" needs a numeric value`);
      const old = lookup(doc, tokens);
      if (old === undefined) return addAt(doc, tokens, path, n); // created with n (its parent must exist)
      if (typeof old !== "number") throw invalid(`incr target ${path} is not a number`);
      return replaceAt(doc, tokens, path, old + n);
    }
    default:
      throw invalid(`unknown op ${JSON.stringify(op.op)}`);
  }
}

/**
 * Applies a patch atomically and persistently: returns the new document and leaves `doc` untouched
 * (unchanged subtrees are shared between the two, so treat both as read-only).
 * @param {Json} doc
 * @param {Op[]} ops
 * @returns {Json}
 * @throws {PatchError} naming the first op that failed
 */
export function applyPatch(doc, ops) {
  if (!Array.isArray(ops)) throw invalid("a patch must be an array of operations");
  let result = doc;
  for (let i = 0; i < ops.length; i++) {
    try {
      result = applyOp(result, ops[i]);
    } catch (e) {
      if (e instanceof PatchError && e.index === undefined) {
        e.index = i;
        e.message = `op ${i}: ${e.message}`;
      }
      throw e;
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// The sync state machine
// ---------------------------------------------------------------------------------------------

/**
 * A local change the server has not confirmed yet.
 * @typedef {object} Pending
 * @property {number} clientReqId
 * @property {Mode} mode
 * @property {number} baseRev the server rev this change was made against
 * @property {string|null} epoch the server epoch `baseRev` belongs to
 * @property {Op[]} ops
 * @property {boolean} applies false while the ops do not apply on top of the current server copy
 *   (it stays pending: the server has the last word, and usually rejects it)
 */

/**
 * An entry of a delta, as reported in "state" events. For the recipient's own changes (acks) the
 * ops are filled in from the pending change.
 * @typedef {{rev: number, client: string, ops: Op[], clientReqId?: number, own: boolean}} ChangeInfo
 */

/**
 * What the core asks its transport to do, in order.
 * @typedef {{send: object} | {emit: string, args: any[]} | {resync: string}} Effect
 */

const MODES = ["overwrite", "rev", "paths"];

/**
 * The protocol state machine of one room connection (over any number of sockets). Pure: no I/O, no
 * timers, no clock. Every input method returns the effects to perform.
 */
export class SyncCore {
  constructor() {
    /** @type {Json} the room as committed at `rev` */
    this.server = {};
    /** the server rev `server` corresponds to (0 until the first sync) */
    this.rev = 0;
    /** @type {string|null} the server epoch `rev` belongs to */
    this.epoch = null;
    /** @type {Json} materialised view: server + pending */
    this.view = {};
    /** @type {Pending[]} in clientReqId order */
    this.pending = [];
    this.nextReqId = 1;
    /** @type {string|null} public id of this session ("c7") */
    this.client = null;
    /** @type {string|null} secret session token, for resuming */
    this.session = null;
    /** true between `welcome` and the connection's end: messages may be sent */
    this.ready = false;
    /** true once the current connection delivered its catch-up delta or snapshot */
    this.synced = false;
    /** true once any connection synced: `rev`/`epoch` are meaningful for `since` */
    this.hasState = false;
    /** set by a protocol error: the next connection asks for a snapshot (no `since`) */
    this.needResync = false;
    /** @type {Record<string, Json>} everyone present, including this client */
    this.presence = {};
    /** @type {Record<string, Json>} this client's own presence, as it set it */
    this.ownPresence = {};
    /** @type {Record<string, Json>|null} own presence keys changed since last sent */
    this.presencePatch = null;
    /** `lastClientReqId` from the current connection's welcome */
    this.welcomeLastReqId = 0;
  }

  /**
   * Query parameters for the next connection: resume the session and, unless a resync is needed,
   * ask for a delta since the rev we hold.
   * @returns {Record<string, string>}
   */
  resumeParams() {
    /** @type {Record<string, string>} */
    const q = {};
    if (this.session) q.session = this.session;
    if (this.hasState && !this.needResync && this.epoch !== null) {
      q.epoch = this.epoch;
      q.since = String(this.rev);
    }
    return q;
  }

  /**
   * Records a local change: applies it to the view at once and sends it when connected.
   * @param {Op[]} ops
   * @param {Mode} [mode]
   * @returns {{clientReqId: number, effects: Effect[]}}
   * @throws {PatchError} when the ops do not apply to the current view (nothing is recorded)
   */
  localChange(ops, mode = "overwrite") {
    if (!MODES.includes(mode)) throw new TypeError(`mode must be one of ${MODES.join(", ")}`);
    const view = applyPatch(this.view, ops);
    /** @type {Pending} */
    const p = { clientReqId: this.nextReqId++, mode, baseRev: this.rev, epoch: this.epoch, ops, applies: true };
    this.pending.push(p);
    this.view = view;
    /** @type {Effect[]} */
    const out = [{ emit: "state", args: [this.view, { source: "local", rev: this.rev, changes: [] }] }];
    if (this.ready) out.unshift({ send: changeMessage(p) });
    return { clientReqId: p.clientReqId, effects: out };
  }

  /**
   * Merges `partial` into this client's presence (a key set to null is removed).
   * @param {Record<string, Json>} partial
   * @returns {Effect[]}
   */
  setPresence(partial) {
    if (!isObject(partial)) throw new TypeError("presence must be an object");
    const own = { ...this.ownPresence };
    for (const [k, v] of Object.entries(partial)) {
      if (v === null) delete own[k];
      else own[k] = v;
    }
    this.ownPresence = own;
    this.presencePatch = { ...(this.presencePatch ?? {}), ...partial };
    if (this.client === null) return [];
    this.presence = { ...this.presence, [this.client]: own };
    return [{ emit: "presence", args: [this.presence, { changed: [this.client] }] }];
  }

  /**
   * The presence message to send now, if any (the transport calls this on its own schedule).
   * @returns {object|null}
   */
  takePresenceMessage() {
    if (!this.ready || this.presencePatch === null) return null;
    const data = this.presencePatch;
    this.presencePatch = null;
    return { type: "presence", data };
  }

  /**
   * The current socket is gone. Pending changes stay queued for the next connection.
   */
  disconnected() {
    this.ready = false;
    this.synced = false;
  }

  /**
   * Consumes one server message.
   * @param {any} msg a parsed server message
   * @returns {Effect[]}
   */
  handle(msg) {
    if (!isObject(msg) || typeof msg.type !== "string") return this.#protocolError("message is not an object with a type");
    switch (msg.type) {
      case "welcome":
        return this.#welcome(msg);
      case "delta":
        return this.#delta(msg);
      case "snapshot":
        return this.#snapshot(msg);
      case "reject":
        return this.#reject(msg);
      case "presence":
        return this.#presence(msg);
      case "broadcast":
        return [{ emit: "broadcast", args: [msg.data, { client: msg.client }] }];
      case "dropped":
        return [{ emit: "dropped", args: [msg.broadcasts] }];
      case "error":
        // "duplicate" is the expected answer to resending a change the server already processed.
        return msg.code === "duplicate" ? [] : [{ emit: "error", args: [msg] }];
      default:
        return []; // pong, and types a newer server may add
    }
  }

  #welcome(msg) {
    if (typeof msg.client !== "string" || typeof msg.session !== "string" || !Number.isInteger(msg.rev)) {
      return this.#protocolError("malformed welcome");
    }
    this.client = msg.client;
    this.session = msg.session;
    this.ready = true;
    this.synced = false;
    this.welcomeLastReqId = Number.isInteger(msg.lastClientReqId) ? msg.lastClientReqId : 0;
    // Changes made against another epoch (server restarted, or before the first sync) have a
    // meaningless baseRev; they are judged against the room as it is now.
    for (const p of this.pending) {
      if (p.epoch !== msg.epoch) {
        p.epoch = msg.epoch;
        p.baseRev = msg.rev;
      }
    }
    if (this.epoch !== msg.epoch) {
      this.epoch = msg.epoch;
      this.hasState = false; // our rev means nothing in this epoch: only a snapshot can follow
    }
    // Until that snapshot, new changes are based on the welcome's rev (the server copy is not
    // meaningful before it arrives anyway).
    if (!this.hasState) this.rev = msg.rev;
    /** @type {Effect[]} */
    const out = [];
    for (const p of this.pending) {
      if (p.clientReqId > this.welcomeLastReqId) out.push({ send: changeMessage(p) });
    }
    // Presence: a resumed session kept ours on the server; a new one starts empty.
    if (!msg.resumed && Object.keys(this.ownPresence).length > 0) this.presencePatch = { ...this.ownPresence };
    const peers = isObject(msg.presence) ? { ...msg.presence } : {};
    peers[this.client] = this.ownPresence;
    this.presence = peers;
    out.push({ emit: "presence", args: [this.presence, { changed: Object.keys(peers) }] });
    const p = this.takePresenceMessage();
    if (p) out.push({ send: p });
    return out;
  }

  #delta(msg) {
    if (!this.ready) return this.#protocolError("delta before welcome");
    if (!this.hasState) return this.#protocolError("delta where a snapshot was needed");
    if (msg.from !== this.rev || !Number.isInteger(msg.to) || !Array.isArray(msg.changes)) {
      return this.#protocolError(`gap: delta from ${msg.from} but we hold rev ${this.rev}`);
    }
    // Nothing is modified until the whole delta has been checked and applied.
    let server = this.server;
    let rev = this.rev;
    /** @type {ChangeInfo[]} */
    const changes = [];
    const acked = new Set();
    for (const entry of msg.changes) {
      if (!isObject(entry) || entry.rev !== rev + 1) return this.#protocolError(`delta entry out of order after rev ${rev}`);
      const own = entry.client === this.client && Number.isInteger(entry.clientReqId);
      let ops = entry.ops;
      if (own) {
        const p = this.pending.find((q) => q.clientReqId === entry.clientReqId);
        if (!p || acked.has(p.clientReqId)) return this.#protocolError(`ack for unknown change ${entry.clientReqId}`);
        ops ??= p.ops;
        acked.add(p.clientReqId);
      }
      try {
        server = applyPatch(server, ops);
      } catch (e) {
        return this.#protocolError(`committed change ${entry.rev} does not apply here: ${e.message}`);
      }
      rev = entry.rev;
      changes.push({ rev, client: entry.client, ops, clientReqId: entry.clientReqId, own });
    }
    if (rev !== msg.to) return this.#protocolError(`delta ends at ${rev}, not ${msg.to}`);
    this.server = server;
    this.rev = rev;
    if (acked.size) this.pending = this.pending.filter((p) => !acked.has(p.clientReqId));
    /** @type {Effect[]} */
    const out = [];
    if (!this.synced) {
      this.synced = true;
      out.push(...this.#dropProcessed(this.welcomeLastReqId));
    }
    this.#rebuild();
    out.unshift({ emit: "state", args: [this.view, { source: "delta", rev, changes }] });
    return out;
  }

  #snapshot(msg) {
    if (!this.ready) return this.#protocolError("snapshot before welcome");
    if (!Number.isInteger(msg.rev) || !Object.hasOwn(msg, "state")) return this.#protocolError("malformed snapshot");
    this.server = msg.state;
    this.rev = msg.rev;
    this.hasState = true;
    this.synced = true;
    this.needResync = false;
    const last = Number.isInteger(msg.lastClientReqId) ? msg.lastClientReqId : this.welcomeLastReqId;
    // Every pending change up to `last` is in the snapshot already (or was rejected): drop silently.
    this.pending = this.pending.filter((p) => p.clientReqId > last);
    this.#rebuild();
    return [{ emit: "state", args: [this.view, { source: "snapshot", rev: this.rev, changes: [] }] }];
  }

  #reject(msg) {
    const i = this.pending.findIndex((p) => p.clientReqId === msg.clientReqId);
    if (i < 0) return []; // already dropped (e.g. covered by a snapshot)
    const [p] = this.pending.splice(i, 1);
    this.#rebuild();
    const info = { ...msg, ops: p.ops, mode: p.mode };
    delete info.type;
    return [
      { emit: "reject", args: [info] },
      { emit: "state", args: [this.view, { source: "reject", rev: this.rev, changes: [] }] },
    ];
  }

  #presence(msg) {
    if (!isObject(msg.peers)) return [];
    const peers = { ...this.presence };
    const changed = [];
    for (const [id, data] of Object.entries(msg.peers)) {
      if (id === this.client) continue; // our own presence is ours to keep
      if (data === null) delete peers[id];
      else peers[id] = data;
      changed.push(id);
    }
    this.presence = peers;
    return changed.length ? [{ emit: "presence", args: [this.presence, { changed }] }] : [];
  }

  /**
   * After a catch-up delta, a pending change the server says it processed (id ≤ `last`) but that
   * was not acked must have been rejected with the reject lost with the old socket.
   */
  #dropProcessed(last) {
    const out = [];
    for (const p of this.pending.filter((q) => q.clientReqId <= last)) {
      out.push({
        emit: "reject",
        args: [{ clientReqId: p.clientReqId, code: "unknown", message: "rejected while disconnected", ops: p.ops, mode: p.mode }],
      });
    }
    this.pending = this.pending.filter((q) => q.clientReqId > last);
    return out;
  }

  /** view = server + pending that still apply, in order. */
  #rebuild() {
    let view = this.server;
    for (const p of this.pending) {
      try {
        view = applyPatch(view, p.ops);
        p.applies = true;
      } catch {
        p.applies = false;
      }
    }
    this.view = view;
  }

  #protocolError(reason) {
    this.needResync = true;
    this.ready = false;
    return [{ resync: reason }];
  }
}

/** @param {Pending} p */
function changeMessage(p) {
  return { type: "change", clientReqId: p.clientReqId, baseRev: p.baseRev, mode: p.mode, ops: p.ops };
}

// ---------------------------------------------------------------------------------------------
// The WebSocket transport
// ---------------------------------------------------------------------------------------------

/**
 * @typedef {object} ConnectOptions
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
  #lastHeard = 0;
  #timers = { retry: 0, heartbeat: 0, connect: 0, presence: 0 };
  #lastPresenceSent = 0;
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
  /** @returns {Record<string, Json>} presence of everyone in the room, this client included */
  get presence() {
    return this.#core.presence;
  }
  /** @returns {string|null} this client's public id, once welcomed */
  get client() {
    return this.#core.client;
  }
  /** @returns {Status} */
  get status() {
    return this.#status;
  }
  /** @returns {number} local changes not yet confirmed by the server */
  get pendingCount() {
    return this.#core.pending.length;
  }

  /**
   * Changes the room. Applied to `state` at once; sent now or after reconnecting.
   * @param {Op[]} ops
   * @param {{mode?: Mode}} [options]
   * @returns {number} the change's clientReqId (it appears in a later "reject" if the server refuses)
   * @throws {PatchError} when the ops do not apply to the current state (nothing is sent)
   */
  change(ops, { mode = "overwrite" } = {}) {
    if (this.#closed) throw new Error("room is closed");
    // A private deep copy: the caller may reuse its objects, and it proves the ops are JSON.
    const text = JSON.stringify(ops);
    if (text === undefined) throw new TypeError("ops must be JSON");
    if (new TextEncoder().encode(text).length + 128 > this.#opts.maxMessageBytes) {
      throw new RangeError(`change is larger than ${this.#opts.maxMessageBytes} bytes`);
    }
    const { clientReqId, effects } = this.#core.localChange(JSON.parse(text), mode);
    this.#run(effects);
    return clientReqId;
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
   * - "presence" (peers, {changed: string[]})
   * - "broadcast" (data, {client})
   * - "reject" ({clientReqId, code, message, rev?, conflicts?, ops, mode})
   * - "status" (status, {code?, reason?, retryInMs?})
   * - "error" (server error message), "dropped" (number of broadcasts missed)
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
    if (this.#closed || this.#ws) return;
    this.#timers.retry = 0;
    this.#setStatus("connecting", { attempt: this.#attempt });
    const url = new URL(this.#url);
    for (const [k, v] of Object.entries(this.#core.resumeParams())) url.searchParams.set(k, v);
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

  /** The socket ended (or we gave up on it): reconnect unless told not to. */
  #lost(ws, detail) {
    this.#drop();
    if (ws.readyState !== 3 /* CLOSED */) ws.close(CLOSE_RESYNC, "dropped");
    if (this.#closed) return;
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
