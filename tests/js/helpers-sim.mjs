// Test doubles for the client's unit tests: a seeded PRNG, a small reference server that speaks
// protocol v1 to SyncCore instances in memory, and a fake WebSocket for the Room transport.
//
// The reference server is deliberately naive (it keeps every state it ever had, so tests can ask
// "what was the room at rev R?") and independent of the client's rebase code; it shares only the
// JSON Patch function, which tests/js/client.test.mjs checks separately against the RFC suite.

import { applyPatch, parsePointer } from "../../src/web/client.js";

/** mulberry32: a tiny deterministic PRNG; returns floats in [0, 1). */
export function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  next.int = (n) => Math.floor(next() * n);
  next.pick = (xs) => xs[Math.floor(next() * xs.length)];
  next.chance = (p) => next() < p;
  return next;
}

/** The paths a change touches, for `paths`-mode conflicts (array inserts touch the array). */
function touchedPaths(ops) {
  const out = [];
  for (const op of ops) {
    for (const p of [op.path, op.from]) {
      if (typeof p !== "string") continue;
      const t = parsePointer(p);
      out.push(t.at(-1) === "-" ? t.slice(0, -1) : t);
    }
  }
  return out;
}

const overlaps = (a, b) => a.every((x, i) => i >= b.length || x === b[i]);

/**
 * One simulated connection: what the server queued for the client (`outbox`) and the rev it has
 * sent up to.
 */
class SimConn {
  constructor(server, session) {
    this.server = server;
    this.session = session;
    this.outbox = [];
    this.lastSent = 0;
    this.open = true;
  }
}

/** A reference ringsync server, driven step by step by the test. */
export class SimServer {
  constructor({ ringSize = 6 } = {}) {
    this.ringSize = ringSize;
    this.epochCounter = 0;
    this.sessionCounter = 0;
    /** counts by outcome, for the tests' sanity checks */
    this.stats = { committed: 0, rejected: 0, duplicates: 0, snapshots: 0, deltas: 0 };
    /** "code:mode" → count, to tune the random workload */
    this.rejectCodes = {};
    this.restart();
  }

  /** Forgets everything, as a restarted in-memory server does: new epoch, empty room. */
  restart() {
    for (const c of this.conns ?? []) c.open = false;
    this.conns = new Set();
    this.epoch = `e${++this.epochCounter}`;
    this.rev = 0;
    this.state = {};
    /** states[r] = the room at rev r (complete history, for checking clients) */
    this.states = [{}];
    /** every committed change: {rev, session, client, clientReqId, ops, touched, origin} */
    this.log = [];
    /** session token → {client, lastClientReqId, conn} */
    this.sessions = new Map();
    /** "origin:clientReqId" → rev, for every change committed in this epoch: nothing commits twice */
    this.committedAt = new Map();
  }

  /** The oldest rev a delta can start from (the ring holds the changes after it). */
  get ringStart() {
    return Math.max(0, this.rev - this.ringSize);
  }

  /**
   * A client connects with resume parameters. Queues welcome + catch-up on the new connection.
   * @param {Record<string,string>} params
   * @param {string} origin a stable label of the client (test bookkeeping only)
   */
  connect(params, origin) {
    let token = params.session;
    let s = token ? this.sessions.get(token) : undefined;
    const resumed = s !== undefined;
    if (!s) {
      token = `secret-${++this.sessionCounter}`;
      s = { client: `c${this.sessionCounter}`, lastClientReqId: 0, conn: null, origin };
      this.sessions.set(token, s);
    }
    if (s.conn) s.conn.open = false; // takeover
    const conn = new SimConn(this, token);
    s.conn = conn;
    this.conns.add(conn);
    conn.outbox.push({
      type: "welcome",
      client: s.client,
      session: token,
      epoch: this.epoch,
      rev: this.rev,
      resumed,
      lastClientReqId: s.lastClientReqId,
      presence: {},
    });
    const since = params.since === undefined ? NaN : Number(params.since);
    if (params.epoch === this.epoch && since >= this.ringStart && since <= this.rev) {
      conn.lastSent = since;
      this.flush(conn, { snapshot: false });
      if (conn.lastSent === since && conn.outbox.at(-1).type === "welcome") {
        conn.outbox.push({ type: "delta", from: since, to: since, changes: [] });
      }
    } else {
      this.#snapshot(conn);
    }
    return conn;
  }

  disconnect(conn) {
    conn.open = false;
    this.conns.delete(conn);
  }

  /** A client message arrives on `conn`. */
  receive(conn, msg) {
    if (!conn.open) return;
    const s = this.sessions.get(conn.session);
    if (msg.type !== "change") return; // presence etc. are not modelled here
    if (msg.clientReqId <= s.lastClientReqId) {
      this.stats.duplicates++;
      conn.outbox.push({ type: "error", code: "duplicate", message: "already processed" });
      return;
    }
    s.lastClientReqId = msg.clientReqId;
    const reject = (code, extra = {}) => {
      this.stats.rejected++;
      this.rejectCodes[`${code}:${msg.mode}`] = (this.rejectCodes[`${code}:${msg.mode}`] ?? 0) + 1;
      conn.outbox.push({ type: "reject", clientReqId: msg.clientReqId, code, message: code, rev: this.rev, ...extra });
    };
    const mine = touchedPaths(msg.ops);
    if (msg.mode === "rev" && msg.baseRev !== this.rev) return reject("conflict");
    if (msg.mode === "paths") {
      if (msg.baseRev > this.rev) return reject("invalid");
      if (msg.baseRev < this.ringStart) return reject("stale");
      const conflicts = this.log
        .filter((e) => e.rev > msg.baseRev && e.touched.some((t) => mine.some((m) => overlaps(t, m))))
        .map((e) => e.rev);
      if (conflicts.length) return reject("conflict", { conflicts });
    }
    let next;
    try {
      next = applyPatch(this.state, msg.ops);
    } catch (e) {
      return reject(e.code);
    }
    const key = `${s.origin}:${msg.clientReqId}`;
    if (this.committedAt.has(key)) throw new Error(`change ${key} committed twice in epoch ${this.epoch}`);
    this.rev++;
    this.committedAt.set(key, this.rev);
    this.state = next;
    this.states.push(next);
    this.log.push({
      rev: this.rev,
      session: conn.session,
      client: s.client,
      clientReqId: msg.clientReqId,
      ops: msg.ops,
      touched: mine,
      origin: s.origin,
    });
    this.stats.committed++;
  }

  /**
   * Brings `conn` up to date: one coalesced delta, or a snapshot when asked to (a "slow client") or
   * when the ring no longer holds what it needs.
   */
  flush(conn, { snapshot = false } = {}) {
    if (!conn.open || conn.lastSent === this.rev) return;
    if (snapshot || conn.lastSent < this.ringStart) return this.#snapshot(conn);
    const changes = this.log
      .filter((e) => e.rev > conn.lastSent)
      .map((e) =>
        e.session === conn.session
          ? { rev: e.rev, client: e.client, clientReqId: e.clientReqId }
          : { rev: e.rev, client: e.client, ops: e.ops },
      );
    conn.outbox.push({ type: "delta", from: conn.lastSent, to: this.rev, changes });
    conn.lastSent = this.rev;
    this.stats.deltas++;
  }

  #snapshot(conn) {
    const s = this.sessions.get(conn.session);
    conn.outbox.push({ type: "snapshot", rev: this.rev, state: this.state, lastClientReqId: s.lastClientReqId });
    conn.lastSent = this.rev;
    this.stats.snapshots++;
  }
}

/**
 * A stand-in for the browser WebSocket, for driving `Room` without a network. Tests reach the
 * instances through `FakeWebSocket.all`.
 */
export class FakeWebSocket {
  /** @type {FakeWebSocket[]} */
  static all = [];
  static reset() {
    FakeWebSocket.all = [];
  }
  constructor(url) {
    this.url = new URL(url);
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onmessage = null;
    this.onclose = null;
    FakeWebSocket.all.push(this);
  }
  static get last() {
    return FakeWebSocket.all.at(-1);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // --- test side ---
  /** The server accepted the connection. */
  accept() {
    this.readyState = 1;
  }
  /** The server sends a message. */
  deliver(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  /** The server (or the network) closes the connection. */
  serverClose(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  sentOfType(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

/** Resolves when `cond()` is truthy; polls every few ms, fails after `ms`. */
export async function waitFor(cond, ms = 2000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Runs a SyncCore's effects the way Room does, collecting what was sent and emitted. */
export function collect(effects, log = { sent: [], events: [], resync: [] }) {
  for (const e of effects) {
    if ("send" in e) log.sent.push(e.send);
    else if ("emit" in e) log.events.push([e.emit, ...e.args]);
    else log.resync.push(e.resync);
  }
  return log;
}

/** A `welcome` for client c1 of session s1, epoch E, with `extra` fields on top. */
export const welcome = (extra = {}) => ({
  type: "welcome",
  client: "c1",
  session: "s1",
  epoch: "E",
  rev: 0,
  resumed: false,
  lastClientReqId: 0,
  presence: { c1: {} },
  ...extra,
});
