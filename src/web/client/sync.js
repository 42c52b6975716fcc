// SyncCore: the ringsync protocol state machine, free of sockets and timers. It consumes server
// messages and local calls and returns a list of effects (messages to send, events to emit, a
// resync request) for a transport to perform (./room.js); node tests drive it directly.
//
// Invariant held by SyncCore after every step:
//   view == server copy (the room at `rev`, as the server committed it) + every pending local change
//           that still applies, replayed in clientReqId order.
// Because the server copy is kept as its own (shared-structure) value, "undo the pending changes" is
// just going back to it; no inverse ops are needed, so floating-point `incr`s and move/copy cannot
// drift the way a computed inverse could.
//
// Undo, redo and `reverts` requests are pending entries too, but without ops: only the server knows
// what reverting means now, so they change nothing locally. Their ack (the author's own entry) carries
// the ops, which are applied to the server copy like anyone's, and the pending changes are replayed
// on top. `canUndo`/`canRedo` come from `welcome` and from this client's own acks.
//
// Wire protocol: docs/PROTOCOL.md.

import { applyPatch, isObject } from "./patch.js";

/** @typedef {import("./patch.js").Json} Json */
/** @typedef {import("./patch.js").Op} Op */
/** @typedef {import("./patch.js").PatchError} PatchError */

/** @typedef {"overwrite"|"rev"|"paths"} Mode */

/**
 * A local change the server has not confirmed yet.
 * @typedef {object} Pending
 * @property {number} clientReqId
 * @property {Mode} mode
 * @property {number} baseRev the server rev this change was made against
 * @property {string|null} epoch the server epoch `baseRev` belongs to
 * @property {Op[]} ops (empty for undo/redo/revert requests: the server decides them)
 * @property {"change"|"undo"|"redo"|"revert"} kind
 * @property {number} [reverts] for "revert": the rev to revert
 * @property {Record<string, Json>} [meta] stored with the change and relayed verbatim
 * @property {boolean} applies false while the ops do not apply on top of the current server copy
 *   (it stays pending: the server has the last word, and usually rejects it)
 */

/**
 * An entry of a delta, as reported in "state" events. For the recipient's own changes (acks) the
 * ops are filled in from the pending change.
 * `reverts`, `meta`, `ts` and `user` are there when the entry has them (own undo/redo acks carry
 * `reverts`; `meta` of an own change comes from the request).
 * @typedef {{rev: number, client: string, ops: Op[], clientReqId?: number, own: boolean,
 *   kind?: "undo"|"redo"|"revert", reverts?: number, meta?: Record<string, Json>, ts?: number, user?: string}} ChangeInfo
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
    /** @type {string|null} the user the server knows this client as (its token's `sub`); null without tokens */
    this.user = null;
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
    /** Everyone present, this client included: more than `presence` lists in a big room. */
    this.presenceCount = 0;
    /** @type {Record<string, Json>} this client's own presence, as it set it */
    this.ownPresence = {};
    /** @type {Record<string, Json>|null} own presence keys changed since last sent */
    this.presencePatch = null;
    /** `lastClientReqId` from the current connection's welcome */
    this.welcomeLastReqId = 0;
    /** whether this user has a change the server can undo in this room (from welcome and own acks) */
    this.canUndo = false;
    /** whether this user has an undo the server can redo */
    this.canRedo = false;
    /** @type {boolean|null} whether the server has undo/redo (its welcome says `canUndo`); null before */
    this.historySupported = null;
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
   * @param {{meta?: Record<string, Json>}} [options] `meta`: a small object stored and relayed with it
   * @returns {{clientReqId: number, effects: Effect[]}}
   * @throws {PatchError} when the ops do not apply to the current view (nothing is recorded)
   */
  localChange(ops, mode = "overwrite", { meta } = {}) {
    if (!MODES.includes(mode)) throw new TypeError(`mode must be one of ${MODES.join(", ")}`);
    checkMeta(meta);
    const view = applyPatch(this.view, ops);
    /** @type {Pending} */
    const p = { clientReqId: this.nextReqId++, kind: "change", mode, baseRev: this.rev, epoch: this.epoch, ops, applies: true };
    if (meta !== undefined) p.meta = meta;
    this.pending.push(p);
    this.view = view;
    /** @type {Effect[]} */
    const out = [{ emit: "state", args: [this.view, { source: "local", rev: this.rev, changes: [] }] }];
    if (this.ready) out.unshift({ send: changeMessage(p) });
    return { clientReqId: p.clientReqId, effects: out };
  }

  /**
   * Asks the server to undo this user's latest change ("undo"), redo the latest undo ("redo"), or
   * revert revision `reverts` ("revert"). Nothing changes locally until the ack brings the ops.
   * @param {"undo"|"redo"|"revert"} kind
   * @param {{mode?: "overwrite", meta?: Record<string, Json>, reverts?: number}} [options] `mode:
   *   "overwrite"` reverts even over later changes by others (default: the server refuses with `conflict`)
   * @returns {{clientReqId: number, effects: Effect[]}}
   */
  localHistory(kind, { mode, meta, reverts } = {}) {
    if (!["undo", "redo", "revert"].includes(kind)) throw new TypeError(`unknown history request ${kind}`);
    if (mode !== undefined && mode !== "overwrite") throw new TypeError(`mode must be "overwrite" or absent`);
    if (kind === "revert" && !(Number.isInteger(reverts) && reverts > 0)) throw new TypeError("reverts must be a revision (integer ≥ 1)");
    checkMeta(meta);
    /** @type {Pending} */
    const p = { clientReqId: this.nextReqId++, kind, mode, baseRev: this.rev, epoch: this.epoch, ops: [], applies: true };
    if (meta !== undefined) p.meta = meta;
    if (kind === "revert") p.reverts = reverts;
    this.pending.push(p);
    return { clientReqId: p.clientReqId, effects: this.ready ? [{ send: changeMessage(p) }] : [] };
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
    this.user = typeof msg.user === "string" ? msg.user : null;
    this.ready = true;
    this.synced = false;
    this.welcomeLastReqId = Number.isInteger(msg.lastClientReqId) ? msg.lastClientReqId : 0;
    const history = this.#setHistory(msg.canUndo, msg.canRedo, true);
    this.historySupported = typeof msg.canUndo === "boolean";
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
    // A big room lists some peers and counts the rest (PROTOCOL.md, "Big rooms").
    const listed = Object.keys(peers).length;
    this.presenceCount = typeof msg.presenceCount === "number" ? Math.max(msg.presenceCount, listed) : listed;
    out.push({ emit: "presence", args: [this.presence, { changed: Object.keys(peers), count: this.presenceCount }] });
    const p = this.takePresenceMessage();
    if (p) out.push({ send: p });
    out.push(...history);
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
    let history = null;
    for (const entry of msg.changes) {
      if (!isObject(entry) || entry.rev !== rev + 1) return this.#protocolError(`delta entry out of order after rev ${rev}`);
      const own = entry.client === this.client && Number.isInteger(entry.clientReqId);
      let ops = entry.ops;
      /** @type {Pending|undefined} */
      let p;
      if (own) {
        p = this.pending.find((q) => q.clientReqId === entry.clientReqId);
        if (!p || acked.has(p.clientReqId)) return this.#protocolError(`ack for unknown change ${entry.clientReqId}`);
        // Only the server knows an undo's ops: its ack must carry them.
        if (p.kind !== "change" && !Array.isArray(ops)) return this.#protocolError(`ack of ${p.kind} ${entry.clientReqId} without ops`);
        ops ??= p.ops;
        acked.add(p.clientReqId);
        if (typeof entry.canUndo === "boolean" || typeof entry.canRedo === "boolean") history = [entry.canUndo, entry.canRedo];
      }
      try {
        server = applyPatch(server, ops);
      } catch (e) {
        return this.#protocolError(`committed change ${entry.rev} does not apply here: ${e.message}`);
      }
      rev = entry.rev;
      /** @type {ChangeInfo} */
      const info = { rev, client: entry.client, ops, clientReqId: entry.clientReqId, own };
      if (p && p.kind !== "change") info.kind = p.kind;
      if (Number.isInteger(entry.reverts)) info.reverts = entry.reverts;
      const meta = isObject(entry.meta) ? entry.meta : p?.meta;
      if (meta !== undefined) info.meta = meta;
      if (Number.isFinite(entry.ts)) info.ts = entry.ts;
      if (typeof entry.user === "string") info.user = entry.user;
      changes.push(info);
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
    if (history) out.push(...this.#setHistory(history[0], history[1], false));
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
    // The server is shutting down: it did not apply the change (nor count it as processed), so it
    // stays pending and is sent again once reconnected.
    if (msg.code === "draining") return [];
    const i = this.pending.findIndex((p) => p.clientReqId === msg.clientReqId);
    if (i < 0) return []; // already dropped (e.g. covered by a snapshot)
    const [p] = this.pending.splice(i, 1);
    this.#rebuild();
    const info = { ...msg, ops: p.ops, mode: p.mode, kind: p.kind };
    delete info.type;
    return [
      { emit: "reject", args: [info] },
      { emit: "state", args: [this.view, { source: "reject", rev: this.rev, changes: [] }] },
    ];
  }

  /**
   * Updates canUndo/canRedo (a value that is not a boolean leaves the flag as it is, except at
   * welcome, which resets to what the server says); emits "history" when either changed.
   * @returns {Effect[]}
   */
  #setHistory(canUndo, canRedo, atWelcome) {
    const u = typeof canUndo === "boolean" ? canUndo : atWelcome ? false : this.canUndo;
    const r = typeof canRedo === "boolean" ? canRedo : atWelcome ? false : this.canRedo;
    if (u === this.canUndo && r === this.canRedo) return [];
    this.canUndo = u;
    this.canRedo = r;
    return [{ emit: "history", args: [{ canUndo: u, canRedo: r }] }];
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
    // `count` comes while the room has more peers than it lists; without it the list is whole.
    const listed = Object.keys(peers).length;
    const count = typeof msg.count === "number" ? Math.max(msg.count, listed) : listed;
    if (!changed.length && count === this.presenceCount) return [];
    this.presenceCount = count;
    return [{ emit: "presence", args: [this.presence, { changed, count }] }];
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
        args: [{ clientReqId: p.clientReqId, code: "unknown", message: "rejected while disconnected", ops: p.ops, mode: p.mode, kind: p.kind }],
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
  /** @type {Record<string, any>} */
  let msg;
  if (p.kind === "undo" || p.kind === "redo") msg = { type: p.kind, clientReqId: p.clientReqId };
  else if (p.kind === "revert") msg = { type: "change", clientReqId: p.clientReqId, baseRev: p.baseRev, reverts: p.reverts };
  else msg = { type: "change", clientReqId: p.clientReqId, baseRev: p.baseRev, mode: p.mode, ops: p.ops };
  if (p.kind !== "change" && p.mode !== undefined) msg.mode = p.mode;
  if (p.meta !== undefined) msg.meta = p.meta;
  return msg;
}

/** `meta` must be a JSON object of at most 1024 bytes (compact), as the server requires. */
function checkMeta(meta) {
  if (meta === undefined) return;
  if (!isObject(meta)) throw new TypeError("meta must be an object");
  if (new TextEncoder().encode(JSON.stringify(meta)).length > 1024) throw new RangeError("meta is larger than 1024 bytes");
}
