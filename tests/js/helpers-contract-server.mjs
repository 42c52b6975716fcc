// A stand-in for the ringsync server side of issue #14, written from the wire contract alone, so the
// demo pages can be driven in Chromium before the real server has undo/redo and list ops: the page's
// WebSocket is routed (playwright's routeWebSocket) to this in-memory room instead of the binary.
//
// It speaks the subset the demos use: welcome (with canUndo/canRedo), snapshot, change (plain, with
// `meta`; list ops through the client's own patch.js), undo / redo (editor stacks per client, the
// conflict rule "a later change by someone else touched an overlapping path", entries with `ts`,
// `reverts`, and the author's ack carrying `ops`, `canUndo`, `canRedo`), reject, ping/pong. Paths
// mode conflicts for plain changes are not checked (every change commits in arrival order), which
// is what list ops by id get from the real server anyway. It is deliberately naive: every revision's
// state is kept, and an inverse is computed against the state before the change.

import { applyPatch, parsePointer } from "../../src/web/client.js";

const LIST_OPS = new Set(["list_insert", "list_move", "list_remove", "list_update"]);

function lookup(doc, tokens) {
  let node = doc;
  for (const t of tokens) {
    if (node === null || typeof node !== "object" || !Object.hasOwn(node, t)) return undefined;
    node = node[t];
  }
  return node;
}

/** The inverse of `ops` applied to `before` (add/remove/replace/test/incr and the list ops). */
function inverse(before, ops) {
  const inv = [];
  let doc = before;
  for (const op of ops) {
    const tokens = parsePointer(op.path);
    const old = lookup(doc, tokens);
    if (op.op === "add" || op.op === "replace") {
      inv.push(old === undefined ? { op: "remove", path: op.path } : { op: "replace", path: op.path, value: old });
    } else if (op.op === "remove") inv.push({ op: "add", path: op.path, value: old });
    else if (op.op === "incr") inv.push(old === undefined ? { op: "remove", path: op.path } : { op: "replace", path: op.path, value: old });
    else if (LIST_OPS.has(op.op)) {
      const list = old;
      const at = (id) => list.findIndex((el) => el.id === id);
      const pred = (id) => (at(id) > 0 ? list[at(id) - 1].id : null);
      if (op.op === "list_insert") inv.push({ op: "list_remove", path: op.path, id: op.value.id });
      else if (at(op.id) >= 0 && op.op === "list_remove") inv.push({ op: "list_insert", path: op.path, after: pred(op.id), value: list[at(op.id)] });
      else if (at(op.id) >= 0 && op.op === "list_move") inv.push({ op: "list_move", path: op.path, id: op.id, after: pred(op.id) });
      else if (at(op.id) >= 0 && op.op === "list_update") {
        const el = list[at(op.id)];
        inv.push({ op: "list_update", path: op.path, id: op.id, value: Object.fromEntries(Object.keys(op.value).map((k) => [k, Object.hasOwn(el, k) ? el[k] : null])) });
      }
    } else if (op.op !== "test") throw new Error(`contract server: no inverse for ${op.op}`);
    doc = applyPatch(doc, [op]);
  }
  return inv.reverse();
}

const touched = (ops) => ops.map((o) => parsePointer(o.path));
const overlap = (a, b) => a.some((x) => b.some((y) => x.every((t, i) => i >= y.length || t === y[i])));

export class ContractRoom {
  constructor(state = {}) {
    this.state = state;
    this.rev = 0;
    /** @type {{rev: number, client: string, ops: any[], inverse: any[]}[]} */
    this.log = [];
    this.conns = new Set();
    this.stacks = new Map(); // client → {undo: rev[], redo: rev[]}
    this.nextClient = 1;
  }

  stack(client) {
    if (!this.stacks.has(client)) this.stacks.set(client, { undo: [], redo: [] });
    return this.stacks.get(client);
  }

  /** Routes one page WebSocket (a playwright WebSocketRoute) to this room. */
  attach(ws) {
    const conn = { ws, client: `c${this.nextClient++}`, held: null };
    this.conns.add(conn);
    const st = this.stack(conn.client);
    this.#send(conn, { type: "welcome", client: conn.client, session: `s-${conn.client}`, epoch: "E", rev: this.rev, resumed: false, lastClientReqId: 0, presence: {}, canUndo: st.undo.length > 0, canRedo: st.redo.length > 0 });
    this.#send(conn, { type: "snapshot", rev: this.rev, state: this.state, lastClientReqId: 0 });
    ws.onMessage((data) => this.#onMessage(conn, JSON.parse(String(data))));
    ws.onClose(() => this.conns.delete(conn));
    return conn;
  }

  /** Holds everything sent to every page until `release()` (both then work on a stale view). */
  hold() {
    for (const c of this.conns) c.held ??= [];
  }
  release() {
    for (const c of this.conns) {
      const held = c.held ?? [];
      c.held = null;
      for (const m of held) c.ws.send(m);
    }
  }

  #send(conn, msg) {
    const text = JSON.stringify(msg);
    if (conn.held) conn.held.push(text);
    else conn.ws.send(text);
  }

  #onMessage(conn, msg) {
    if (msg.type === "ping") return this.#send(conn, { type: "pong", t: msg.t });
    if (msg.type === "change") {
      if (!Array.isArray(msg.ops) || msg.ops.length === 0) return this.#reject(conn, msg, "invalid", "empty ops");
      let next;
      try {
        next = applyPatch(this.state, msg.ops);
      } catch (e) {
        return this.#reject(conn, msg, e.code ?? "invalid", e.message);
      }
      const st = this.stack(conn.client);
      this.#commit(conn, msg, msg.ops, next, { meta: msg.meta });
      st.undo.push(this.rev);
      st.redo = [];
      return this.#ack(conn, msg, {});
    }
    if (msg.type === "undo" || msg.type === "redo") {
      const st = this.stack(conn.client);
      const from = msg.type === "undo" ? st.undo : st.redo;
      const target = from.at(-1);
      if (target === undefined) return this.#reject(conn, msg, "invalid", `nothing to ${msg.type}`);
      const entry = this.log.find((e) => e.rev === target);
      const later = this.log.filter((e) => e.rev > target && e.client !== conn.client && overlap(touched(e.ops), touched(entry.ops)));
      if (later.length && msg.mode !== "overwrite") {
        return this.#reject(conn, msg, "conflict", `rev ${later.map((e) => e.rev).join(", ")} changed the same paths since`, { conflicts: later.map((e) => e.rev) });
      }
      from.pop();
      const ops = entry.inverse;
      this.#commit(conn, msg, ops, applyPatch(this.state, ops), { reverts: target, meta: msg.meta });
      (msg.type === "undo" ? st.redo : st.undo).push(this.rev);
      return this.#ack(conn, msg, { ops, reverts: target });
    }
    // presence, broadcast: not needed by these tests
  }

  #commit(conn, msg, ops, next, extra) {
    const inv = inverse(this.state, ops);
    this.state = next;
    this.rev++;
    const entry = { rev: this.rev, client: conn.client, ts: Date.now(), ops };
    if (extra.reverts !== undefined) entry.reverts = extra.reverts;
    if (extra.meta !== undefined) entry.meta = extra.meta;
    this.log.push({ rev: this.rev, client: conn.client, ops, inverse: inv });
    for (const c of this.conns) if (c !== conn) this.#send(c, { type: "delta", from: this.rev - 1, to: this.rev, changes: [entry] });
  }

  #ack(conn, msg, extra) {
    const st = this.stack(conn.client);
    const entry = { rev: this.rev, client: conn.client, clientReqId: msg.clientReqId, ts: Date.now(), ...extra, canUndo: st.undo.length > 0, canRedo: st.redo.length > 0 };
    this.#send(conn, { type: "delta", from: this.rev - 1, to: this.rev, changes: [entry] });
  }

  #reject(conn, msg, code, message, extra = {}) {
    this.#send(conn, { type: "reject", clientReqId: msg.clientReqId, code, message, rev: this.rev, ...extra });
  }
}
