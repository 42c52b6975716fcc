// Unit tests of the client side of issue #14 (history and id-addressed lists), against the wire
// contract with recorded frames and a fake WebSocket — no server, no browser:
//   - client/patch.js: list_insert / list_move / list_remove / list_update, rule by rule;
//   - SyncCore: undo / redo / revert requests, their acks (ops applied, pending rebased on top),
//     rejects, canUndo / canRedo, `meta`;
//   - Room: undo() / redo() / revert() promises, the "history" event, list helpers, randomId;
//   - seeded random runs: three clients making list ops against stale revs converge with no
//     element lost or duplicated.
//
//   node --test tests/js/history.test.mjs        (SEED=<n> reruns one random run)

import { test, describe } from "node:test";
import assert from "node:assert/strict";

import { applyPatch, PatchError, SyncCore, connect, List, randomId } from "../../src/web/client.js";
import { prng, FakeWebSocket, collect, welcome as baseWelcome } from "./helpers-sim.mjs";

const ids = (list) => list.map((el) => el.id);
const doc = (...names) => ({ todos: names.map((id) => ({ id, t: id.toUpperCase() })) });
const invalid = (fn) => assert.throws(fn, (e) => e instanceof PatchError && e.code === "invalid");

// ---------------------------------------------------------------------------------------------
// List ops in the patch engine
// ---------------------------------------------------------------------------------------------

describe("list ops (client/patch.js)", () => {
  const ins = (after, id, extra = {}) => ({ op: "list_insert", path: "/todos", after, value: { id, ...extra } });
  const mv = (id, after) => ({ op: "list_move", path: "/todos", id, after });
  const rm = (id) => ({ op: "list_remove", path: "/todos", id });
  const up = (id, value) => ({ op: "list_update", path: "/todos", id, value });

  test("list_insert: after an element, at the head (after null), at the end when the anchor is gone", () => {
    const d = doc("a", "b");
    assert.deepEqual(ids(applyPatch(d, [ins("a", "x")]).todos), ["a", "x", "b"]);
    assert.deepEqual(ids(applyPatch(d, [ins("b", "x")]).todos), ["a", "b", "x"]);
    assert.deepEqual(ids(applyPatch(d, [ins(null, "x")]).todos), ["x", "a", "b"]);
    assert.deepEqual(ids(applyPatch(d, [ins("gone", "x")]).todos), ["a", "b", "x"], "anchor removed concurrently → end");
    assert.deepEqual(ids(applyPatch({ todos: [] }, [ins(null, "x")]).todos), ["x"]);
    assert.deepEqual(ids(applyPatch({ todos: [] }, [ins("gone", "x")]).todos), ["x"]);
    assert.deepEqual(applyPatch(d, [ins("a", "x", { t: "X", done: false })]).todos[1], { id: "x", t: "X", done: false });
  });

  test("two inserts after the same element: both kept, the later one right after the anchor", () => {
    const d = applyPatch(doc("a", "b"), [ins("a", "first"), ins("a", "second")]);
    assert.deepEqual(ids(d.todos), ["a", "second", "first", "b"]);
  });

  test("list_insert of an id already there, or a value without a string id, is invalid", () => {
    invalid(() => applyPatch(doc("a"), [ins(null, "a")]));
    invalid(() => applyPatch(doc("a"), [{ op: "list_insert", path: "/todos", after: null, value: { t: "no id" } }]));
    invalid(() => applyPatch(doc("a"), [{ op: "list_insert", path: "/todos", after: null, value: { id: 7 } }]));
    invalid(() => applyPatch(doc("a"), [{ op: "list_insert", path: "/todos", after: null, value: "x" }]));
    invalid(() => applyPatch(doc("a"), [{ op: "list_insert", path: "/todos", value: { id: "x" } }]), "after is required");
    invalid(() => applyPatch(doc("a"), [{ op: "list_insert", path: "/todos", after: 3, value: { id: "x" } }]));
  });

  test("list_move: after an element, to the head, to the end when the anchor is gone; a missing id is a no-op", () => {
    const d = doc("a", "b", "c");
    assert.deepEqual(ids(applyPatch(d, [mv("a", "c")]).todos), ["b", "c", "a"]);
    assert.deepEqual(ids(applyPatch(d, [mv("c", "a")]).todos), ["a", "c", "b"]);
    assert.deepEqual(ids(applyPatch(d, [mv("c", null)]).todos), ["c", "a", "b"]);
    assert.deepEqual(ids(applyPatch(d, [mv("a", "gone")]).todos), ["b", "c", "a"]);
    assert.equal(applyPatch(d, [mv("gone", "a")]), d, "moving a removed element changes nothing");
    assert.equal(applyPatch(d, [mv("b", "b")]).todos, d.todos, "after itself: stays");
    invalid(() => applyPatch(d, [{ op: "list_move", path: "/todos", id: "a" }]));
    invalid(() => applyPatch(d, [{ op: "list_move", path: "/todos", after: null }]));
  });

  test("two moves of the same element: the later one wins", () => {
    assert.deepEqual(ids(applyPatch(doc("a", "b", "c"), [mv("a", "b"), mv("a", "c")]).todos), ["b", "c", "a"]);
    assert.deepEqual(ids(applyPatch(doc("a", "b", "c"), [mv("a", "c"), mv("a", "b")]).todos), ["b", "a", "c"]);
  });

  test("list_remove removes by id; a missing id is a no-op", () => {
    assert.deepEqual(ids(applyPatch(doc("a", "b"), [rm("a")]).todos), ["b"]);
    const d = doc("a");
    assert.equal(applyPatch(d, [rm("a"), rm("a")]).todos.length, 0, "removing twice is fine");
    assert.equal(applyPatch(d, [rm("zzz")]), d);
  });

  test("list_update shallow-merges, null removes a member, the id cannot change; a missing id is a no-op", () => {
    const d = { todos: [{ id: "a", t: "milk", done: false, note: "2l" }] };
    const u = applyPatch(d, [up("a", { done: true, note: null, by: { name: "Ada" } })]);
    assert.deepEqual(u.todos, [{ id: "a", t: "milk", done: true, by: { name: "Ada" } }]);
    assert.deepEqual(applyPatch(d, [up("a", { id: "a", t: "eggs" })]).todos[0].t, "eggs", "the same id may be repeated");
    invalid(() => applyPatch(d, [up("a", { id: "b" })]));
    invalid(() => applyPatch(d, [up("a", { id: null })]));
    invalid(() => applyPatch(d, [up("a", "done")]));
    assert.equal(applyPatch(d, [up("gone", { done: true })]), d);
    const proto = applyPatch(d, [up("a", JSON.parse('{"__proto__": {"x": 1}}'))]).todos[0];
    assert.ok(Object.hasOwn(proto, "__proto__"), "__proto__ is an ordinary member");
    assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  });

  test("the path must be an array whose elements are objects with a string id", () => {
    invalid(() => applyPatch({ todos: {} }, [rm("a")]));
    invalid(() => applyPatch({}, [rm("a")]), "no such path");
    invalid(() => applyPatch({ todos: [{ id: "a" }, { name: "no id" }] }, [rm("a")]));
    invalid(() => applyPatch({ todos: [{ id: 1 }] }, [mv("a", null)]));
    invalid(() => applyPatch({ todos: ["a"] }, [up("a", {})]));
    // A list at the root works too.
    assert.deepEqual(ids(applyPatch([{ id: "a" }], [{ op: "list_insert", path: "", after: "a", value: { id: "b" } }])), ["a", "b"]);
  });

  test("atomic and persistent: a failing op leaves the document as it was; the input is never modified", () => {
    const d = doc("a", "b");
    const frozen = JSON.stringify(d);
    invalid(() => applyPatch(d, [ins("a", "x"), mv("x", null), ins(null, "a")]));
    const out = applyPatch(d, [ins("a", "x"), mv("b", null), up("a", { done: true }), rm("x")]);
    assert.equal(JSON.stringify(d), frozen);
    assert.deepEqual(out.todos, [{ id: "b", t: "B" }, { id: "a", t: "A", done: true }]);
    assert.equal(out.todos[0], d.todos[1], "untouched elements are shared");
  });

  test("index-based JSON Patch keeps working on the same arrays", () => {
    const d = applyPatch(doc("a"), [
      { op: "add", path: "/todos/0", value: { id: "z" } },
      ins("z", "y"),
      { op: "replace", path: "/todos/2/t", value: "changed" },
    ]);
    assert.deepEqual(d.todos, [{ id: "z" }, { id: "y" }, { id: "a", t: "changed" }]);
  });
});

// ---------------------------------------------------------------------------------------------
// SyncCore: undo, redo, revert, canUndo/canRedo, meta
// ---------------------------------------------------------------------------------------------

// A welcome from a server with undo: both stacks empty unless `extra` says otherwise.
const welcome = (extra = {}) => baseWelcome({ canUndo: false, canRedo: false, ...extra });

function syncedCore(state = {}, rev = 0, extra = {}) {
  const core = new SyncCore();
  collect(core.handle(welcome({ rev, ...extra })));
  collect(core.handle({ type: "snapshot", rev, state, lastClientReqId: 0 }));
  return core;
}

const events = (log, name) => log.events.filter(([n]) => n === name).map(([, ...args]) => args);

describe("SyncCore history", () => {
  test("welcome's canUndo/canRedo set the flags, emit \"history\" and say the server supports undo", () => {
    const core = new SyncCore();
    assert.equal(core.historySupported, null);
    const log = collect(core.handle(welcome({ canUndo: true, canRedo: false })));
    assert.equal(core.canUndo, true);
    assert.equal(core.historySupported, true);
    assert.deepEqual(events(log, "history"), [[{ canUndo: true, canRedo: false }]]);
    const old = new SyncCore();
    const w = welcome();
    delete w.canUndo;
    delete w.canRedo;
    const log2 = collect(old.handle(w));
    assert.equal(old.historySupported, false, "a server without undo");
    assert.deepEqual(events(log2, "history"), [], "nothing changed");
  });

  test("a plain change's ack carries canUndo/canRedo; \"history\" fires only on a change", () => {
    const core = syncedCore({ n: 0 }, 3);
    collect(core.localChange([{ op: "incr", path: "/n", value: 1 }], "paths").effects);
    collect(core.localChange([{ op: "incr", path: "/n", value: 1 }], "paths").effects);
    const log = collect(core.handle({ type: "delta", from: 3, to: 5, changes: [
      { rev: 4, client: "c1", clientReqId: 1, ts: 1700000000000, canUndo: true, canRedo: true },
      { rev: 5, client: "c1", clientReqId: 2, ts: 1700000000001, canUndo: true, canRedo: false },
    ] }));
    assert.deepEqual(events(log, "history"), [[{ canUndo: true, canRedo: false }]], "the last ack of the delta counts");
    assert.equal(core.canUndo, true);
    assert.equal(events(log, "state")[0][1].changes[1].ts, 1700000000001);
    const log2 = collect(core.handle({ type: "delta", from: 5, to: 6, changes: [{ rev: 6, client: "c2", ops: [{ op: "incr", path: "/n", value: 1 }], ts: 1, canUndo: false }] }));
    assert.deepEqual(events(log2, "history"), [], "others' entries say nothing about our stack");
  });

  test("undo and redo are sent as their own messages (no baseRev, no ops), with mode and meta when given", () => {
    const core = syncedCore({}, 2);
    const a = collect(core.localHistory("undo").effects);
    const b = collect(core.localHistory("redo", { mode: "overwrite", meta: { label: "again" } }).effects);
    const c = collect(core.localHistory("revert", { reverts: 2 }).effects);
    assert.deepEqual(a.sent, [{ type: "undo", clientReqId: 1 }]);
    assert.deepEqual(b.sent, [{ type: "redo", clientReqId: 2, mode: "overwrite", meta: { label: "again" } }]);
    assert.deepEqual(c.sent, [{ type: "change", clientReqId: 3, baseRev: 2, reverts: 2 }]);
    assert.deepEqual(core.view, {}, "nothing happens locally before the server answers");
    assert.throws(() => core.localHistory("undo", { mode: "paths" }), TypeError);
    assert.throws(() => core.localHistory("revert", { reverts: 0 }), TypeError);
  });

  test("an undo's ack brings its ops: applied to the server copy, pending changes replayed on top", () => {
    const core = syncedCore({ todo: "milk", n: 0 }, 4, { canUndo: true });
    collect(core.localHistory("undo").effects);
    collect(core.localChange([{ op: "incr", path: "/n", value: 5 }]).effects);
    assert.deepEqual(core.view, { todo: "milk", n: 5 });
    // Someone else's change arrives first, then the undo (which removed /todo).
    collect(core.handle({ type: "delta", from: 4, to: 5, changes: [{ rev: 5, client: "c2", ops: [{ op: "incr", path: "/n", value: 1 }], ts: 9 }] }));
    const log = collect(core.handle({ type: "delta", from: 5, to: 6, changes: [
      { rev: 6, client: "c1", clientReqId: 1, ts: 10, ops: [{ op: "remove", path: "/todo" }], reverts: 3, canUndo: false, canRedo: true },
    ] }));
    assert.deepEqual(core.server, { n: 1 });
    assert.deepEqual(core.view, { n: 6 }, "the pending incr still applies on top");
    assert.deepEqual(core.pending.map((p) => p.clientReqId), [2]);
    const [, info] = events(log, "state")[0];
    assert.deepEqual(info.changes, [{ rev: 6, client: "c1", clientReqId: 1, own: true, kind: "undo", reverts: 3, ts: 10, ops: [{ op: "remove", path: "/todo" }] }]);
    assert.deepEqual(events(log, "history"), [[{ canUndo: false, canRedo: true }]]);
    assert.equal(events(log, "history").length, 1);
  });

  test("an undo ack without ops cannot be applied: the client resyncs", () => {
    const core = syncedCore({}, 1);
    collect(core.localHistory("undo").effects);
    const log = collect(core.handle({ type: "delta", from: 1, to: 2, changes: [{ rev: 2, client: "c1", clientReqId: 1, reverts: 1 }] }));
    assert.equal(log.resync.length, 1);
    assert.equal(core.needResync, true);
  });

  test("a refused undo: a reject with kind \"undo\", the conflicting revs, and the view untouched", () => {
    const core = syncedCore({ board: { e4: "wP" } }, 7, { canUndo: true });
    collect(core.localChange([{ op: "add", path: "/x", value: 1 }]).effects);
    collect(core.localHistory("undo").effects);
    const log = collect(core.handle({ type: "reject", clientReqId: 2, code: "conflict", conflicts: [7], message: "someone answered", rev: 7 }));
    const [[rej]] = events(log, "reject");
    assert.equal(rej.kind, "undo");
    assert.equal(rej.code, "conflict");
    assert.deepEqual(rej.conflicts, [7]);
    assert.deepEqual(core.view, { board: { e4: "wP" }, x: 1 });
    assert.deepEqual(core.pending.map((p) => p.clientReqId), [1]);
    assert.equal(core.canUndo, true, "a reject does not change the flags");
  });

  test("undo requests queue offline, are resent after reconnecting unless processed, and keep their order", () => {
    const core = syncedCore({ n: 0 }, 1);
    core.disconnected();
    collect(core.localChange([{ op: "incr", path: "/n", value: 1 }]).effects);
    const queued = collect(core.localHistory("undo").effects);
    assert.deepEqual(queued.sent, [], "offline: nothing sent");
    const again = collect(core.handle(welcome({ rev: 1, resumed: true, lastClientReqId: 0 })));
    assert.deepEqual(again.sent.filter((m) => m.clientReqId).map((m) => [m.type, m.clientReqId]), [["change", 1], ["undo", 2]]);
    core.disconnected();
    const third = collect(core.handle(welcome({ rev: 1, resumed: true, lastClientReqId: 2 })));
    assert.deepEqual(third.sent.filter((m) => m.clientReqId), [], "the server has both already");
  });

  test("meta is sent with a change, kept in its own ack's info, and relayed from others' entries", () => {
    const core = syncedCore({}, 0);
    const { effects } = core.localChange([{ op: "add", path: "/a", value: 1 }], "paths", { meta: { label: "add a" } });
    assert.deepEqual(collect(effects).sent[0].meta, { label: "add a" });
    const log = collect(core.handle({ type: "delta", from: 0, to: 2, changes: [
      { rev: 1, client: "c1", clientReqId: 1, ts: 5, canUndo: true, canRedo: false },
      { rev: 2, client: "c2", user: "bob", ts: 6, ops: [{ op: "add", path: "/b", value: 2 }], meta: { label: "add b" } },
    ] }));
    const [, info] = events(log, "state")[0];
    assert.deepEqual(info.changes[0].meta, { label: "add a" });
    assert.deepEqual(info.changes[1].meta, { label: "add b" });
    assert.equal(info.changes[1].user, "bob");
    assert.throws(() => core.localChange([], "paths", { meta: [1] }), TypeError);
    assert.throws(() => core.localChange([], "paths", { meta: { s: "x".repeat(1100) } }), RangeError);
    assert.throws(() => core.localHistory("undo", { meta: "label" }), TypeError);
  });
});

// ---------------------------------------------------------------------------------------------
// Room: promises, events, list helpers
// ---------------------------------------------------------------------------------------------

describe("Room history and lists", () => {
  const fast = { WebSocket: FakeWebSocket, minRetryMs: 5, maxRetryMs: 20, heartbeatMs: 1000, presenceThrottleMs: 10 };

  async function openRoom(w = {}, state = { n: 0 }) {
    FakeWebSocket.reset();
    const room = connect("http://example.test/", "r", fast);
    const history = [];
    room.on("history", (h) => history.push(h));
    await null;
    const ws = FakeWebSocket.last;
    ws.accept();
    ws.deliver(welcome({ rev: 2, ...w }));
    ws.deliver({ type: "snapshot", rev: 2, state, lastClientReqId: 0 });
    return { room, ws, history };
  }

  test("undo() resolves with the committed entry; canUndo/canRedo and \"history\" follow the acks", async () => {
    const { room, ws, history } = await openRoom({ canUndo: true });
    assert.equal(room.canUndo, true);
    assert.equal(room.canRedo, false);
    assert.equal(room.historySupported, true);
    assert.deepEqual(history, [{ canUndo: true, canRedo: false }]);
    const p = room.undo({ meta: { label: "undo +1" } });
    assert.deepEqual(ws.sentOfType("undo"), [{ type: "undo", clientReqId: 1, meta: { label: "undo +1" } }]);
    assert.equal(room.pendingCount, 1);
    ws.deliver({ type: "delta", from: 2, to: 3, changes: [{ rev: 3, client: "c1", clientReqId: 1, ts: 1, ops: [{ op: "incr", path: "/n", value: -1 }], reverts: 2, canUndo: false, canRedo: true }] });
    const entry = await p;
    assert.equal(entry.rev, 3);
    assert.equal(entry.reverts, 2);
    assert.deepEqual(room.state, { n: -1 });
    assert.equal(room.canUndo, false);
    assert.equal(room.canRedo, true);
    assert.deepEqual(history.at(-1), { canUndo: false, canRedo: true });
    room.close();
  });

  test("redo() rejects with the server's reject; close() rejects what is still waiting", async () => {
    const { room, ws } = await openRoom({ canRedo: true });
    const rejects = [];
    room.on("reject", (r) => rejects.push(r));
    const p = room.redo();
    ws.deliver({ type: "reject", clientReqId: 1, code: "conflict", conflicts: [2], message: "conflict", rev: 2 });
    await assert.rejects(p, (r) => r.code === "conflict" && r.kind === "redo" && r.conflicts[0] === 2);
    assert.equal(rejects.length, 1, "the reject event fires too");
    const q = room.revert(2, { mode: "overwrite" });
    assert.deepEqual(ws.sentOfType("change").at(-1), { type: "change", clientReqId: 2, baseRev: 2, reverts: 2, mode: "overwrite" });
    room.close();
    await assert.rejects(q, /room is closed/);
    await assert.rejects(room.undo(), /room is closed/);
  });

  test("a request a snapshot covered resolves as unknown (the state is right either way)", async () => {
    const { room, ws } = await openRoom();
    const p = room.undo();
    ws.serverClose(1006);
    await new Promise((r) => setTimeout(r, 40));
    const ws2 = FakeWebSocket.last;
    ws2.accept();
    ws2.deliver(welcome({ rev: 3, resumed: false, lastClientReqId: 1 }));
    ws2.deliver({ type: "snapshot", rev: 3, state: { n: 7 }, lastClientReqId: 1 });
    const r = await p;
    assert.equal(r.unknown, true);
    assert.deepEqual(room.state, { n: 7 });
    room.close();
  });

  test("list helpers send id-addressed ops in paths mode and apply them at once", async () => {
    const { room, ws } = await openRoom({}, { todos: [{ id: "a", text: "milk" }] });
    const list = room.list("/todos");
    assert.ok(list instanceof List);
    const id = list.insertAfter("a", { text: "eggs", done: false }, { meta: { label: "add eggs" } });
    assert.match(id, /^[0-9a-zA-Z]{12}$/);
    const pushed = list.push({ id: "last", text: "bread" });
    assert.equal(pushed, "last");
    list.move("last", null);
    list.update("a", { done: true });
    list.remove(id);
    assert.deepEqual(list.items, [{ id: "last", text: "bread" }, { id: "a", text: "milk", done: true }]);
    assert.deepEqual(list.get("a"), { id: "a", text: "milk", done: true });
    const sent = ws.sentOfType("change");
    assert.deepEqual(sent.map((m) => m.mode), ["paths", "paths", "paths", "paths", "paths"]);
    assert.deepEqual(sent[0].ops, [{ op: "list_insert", path: "/todos", after: "a", value: { id, text: "eggs", done: false } }]);
    assert.deepEqual(sent[0].meta, { label: "add eggs" });
    assert.deepEqual(sent[1].ops, [{ op: "list_insert", path: "/todos", after: id, value: { id: "last", text: "bread" } }]);
    assert.deepEqual(sent[2].ops, [{ op: "list_move", path: "/todos", id: "last", after: null }]);
    assert.deepEqual(sent[3].ops, [{ op: "list_update", path: "/todos", id: "a", value: { done: true } }]);
    assert.deepEqual(sent[4].ops, [{ op: "list_remove", path: "/todos", id }]);
    assert.deepEqual(room.list("/nothing").items, []);
    assert.throws(() => list.insertAfter(null, { id: "a" }), PatchError, "a duplicate id is refused locally");
    room.close();
  });

  test("randomId: the requested length, the id alphabet, no repeats", () => {
    const seen = new Set();
    for (let i = 0; i < 2000; i++) seen.add(randomId());
    assert.equal(seen.size, 2000);
    assert.match(randomId(20), /^[0-9a-zA-Z]{20}$/);
  });
});

// ---------------------------------------------------------------------------------------------
// Random concurrent list ops: three clients, stale bases, a server applying in commit order
// ---------------------------------------------------------------------------------------------

/**
 * A minimal server for list ops: it commits every change in arrival order (list ops by id never
 * conflict with each other, so paths mode accepts them all), acks the author and sends the ops to
 * everyone else, one delta per change, delivered with random delays per client.
 */
function simulateLists(seed, steps = 400) {
  const rnd = prng(seed);
  let state = { todos: [] };
  let rev = 0;
  const clients = ["c1", "c2", "c3"].map((name) => {
    const core = new SyncCore();
    collect(core.handle(welcome({ client: name, session: `s-${name}` })));
    collect(core.handle({ type: "snapshot", rev: 0, state, lastClientReqId: 0 }));
    return { name, core, inbox: [], outbox: [] };
  });
  const inserted = new Set();
  const removedOps = [];
  const step = () => {
    const c = rnd.pick(clients);
    const r = rnd();
    if (r < 0.45) {
      // A local list op against whatever the client sees now.
      const items = c.core.view.todos;
      const anyId = () => (items.length && rnd.chance(0.9) ? rnd.pick(items).id : rnd.chance(0.5) ? null : "never-there");
      const kind = rnd.pick(["insert", "insert", "move", "move", "remove", "update"]);
      let op;
      if (kind === "insert" || items.length === 0) {
        const id = `${c.name}-${inserted.size}-${rnd.int(1e6)}`;
        inserted.add(id);
        op = { op: "list_insert", path: "/todos", after: anyId(), value: { id, n: 0 } };
      } else if (kind === "move") op = { op: "list_move", path: "/todos", id: rnd.pick(items).id, after: anyId() };
      else if (kind === "remove") op = { op: "list_remove", path: "/todos", id: rnd.pick(items).id };
      else op = { op: "list_update", path: "/todos", id: rnd.pick(items).id, value: { n: rnd.int(100), by: c.name } };
      collect(c.core.localChange([op], "paths").effects, { sent: c.outbox, events: [], resync: [] });
    } else if (r < 0.75) {
      // The server receives the client's oldest unsent message.
      const msg = c.outbox.shift();
      if (!msg) return;
      state = applyPatch(state, msg.ops); // must never throw: stale list ops still apply
      rev++;
      for (const op of msg.ops) if (op.op === "list_remove") removedOps.push(op.id);
      for (const d of clients) {
        const entry = d === c ? { rev, client: c.name, clientReqId: msg.clientReqId, ts: rev } : { rev, client: c.name, ops: msg.ops, ts: rev };
        d.inbox.push({ type: "delta", from: rev - 1, to: rev, changes: [entry] });
      }
    } else {
      // The client reads one delta.
      const msg = c.inbox.shift();
      if (!msg) return;
      const log = collect(c.core.handle(msg));
      assert.deepEqual(log.resync, [], `seed ${seed}: client ${c.name} resynced`);
    }
    for (const d of clients) {
      const seen = ids(d.core.view.todos);
      assert.equal(new Set(seen).size, seen.length, `seed ${seed}: duplicate element in ${d.name}'s view`);
    }
  };
  for (let i = 0; i < steps; i++) step();
  // Drain: everything sent is committed, everything committed is read.
  while (clients.some((c) => c.outbox.length || c.inbox.length)) {
    for (const c of clients) {
      while (c.outbox.length) {
        const msg = c.outbox.shift();
        state = applyPatch(state, msg.ops);
        rev++;
        for (const op of msg.ops) if (op.op === "list_remove") removedOps.push(op.id);
        for (const d of clients) {
          const entry = d === c ? { rev, client: c.name, clientReqId: msg.clientReqId } : { rev, client: c.name, ops: msg.ops };
          d.inbox.push({ type: "delta", from: rev - 1, to: rev, changes: [entry] });
        }
      }
    }
    for (const c of clients) while (c.inbox.length) collect(c.core.handle(c.inbox.shift()));
  }
  const expected = [...inserted].filter((id) => !removedOps.includes(id)).sort();
  assert.deepEqual([...ids(state.todos)].sort(), expected, `seed ${seed}: the server lost or duplicated an element`);
  for (const c of clients) {
    assert.equal(c.core.pending.length, 0);
    assert.deepEqual(c.core.view, state, `seed ${seed}: ${c.name} did not converge`);
  }
  return { rev, items: state.todos.length };
}

describe("random concurrent list ops", () => {
  const seeds = process.env.SEED ? [Number(process.env.SEED)] : Array.from({ length: 40 }, (_, i) => 1000 + i);
  test(`${seeds.length} seeded runs of three clients converge with no element lost or duplicated`, () => {
    let commits = 0;
    for (const seed of seeds) commits += simulateLists(seed).rev;
    assert.ok(commits > seeds.length * 50, "the runs committed changes");
  });
});
