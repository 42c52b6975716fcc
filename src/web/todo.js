// The to-do demo: a shared list on ringsync's id-addressed list ops. Everything multiplayer goes
// through the client library (room.list("/todos")); this file is only rendering and input.
//
// Room state: {"setup": 1, "todos": [{"id": "k3J9…", "text": "milk", "done": false}, …]}.
// Add = list_insert after the last item, toggle = list_update {done}, remove = list_remove,
// drag-to-reorder (pointer events on the ⠿ handle) = list_move after the item above the drop point.
// All in "paths" mode: list ops by id never conflict, so two tabs reordering and inserting at once
// all commit and converge with no item lost or duplicated. Undo / Redo ask the server to revert this
// user's last change; a refused one (someone else changed the same list since) says why.
// Tests find things by id and by data-id attributes; window.room and window.todo are for them.

import { connect } from "./client.js";

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
const roomName = params.get("room") || "todo";
const room = connect(null, roomName, { token: params.get("token") ?? undefined });
const list = room.list("/todos");
window.room = room;
window.todo = { list, refused: 0, lastRefusal: null };

document.title = `${roomName} · ringsync to-do`;
$("#room-name").textContent = roomName;
$("#chess-link").href = `/?room=${encodeURIComponent(roomName)}`;

// ---------------------------------------------------------------------------------------------
// Setup: an empty room gets an empty list, exactly once even if several tabs try (see demo.js)
// ---------------------------------------------------------------------------------------------

let setupSent = false;
function maybeSetUp() {
  if (room.status !== "open" || Array.isArray(room.state?.todos)) return;
  if (setupSent) return;
  setupSent = true;
  room.change([
    { op: "incr", path: "/setup", value: 1 },
    { op: "test", path: "/setup", value: 1 },
    { op: "add", path: "/todos", value: [] },
  ]);
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

const ul = $("#todos");
/** @type {Map<string, HTMLLIElement>} */
const rows = new Map();

function row(id) {
  let li = rows.get(id);
  if (li) return li;
  li = document.createElement("li");
  li.dataset.id = id;
  li.innerHTML = '<span class="handle" title="Drag to reorder">⠿</span><input type="checkbox" class="toggle" aria-label="Done">' +
    '<span class="text"></span><button class="remove" title="Remove" aria-label="Remove">✕</button>';
  rows.set(id, li);
  return li;
}

function render() {
  const items = list.items;
  const seen = new Set();
  const children = [];
  for (const item of items) {
    if (typeof item?.id !== "string" || seen.has(item.id)) continue;
    seen.add(item.id);
    const li = row(item.id);
    li.querySelector(".text").textContent = typeof item.text === "string" ? item.text : "";
    li.querySelector(".toggle").checked = item.done === true;
    li.classList.toggle("done", item.done === true);
    li.classList.toggle("dragging", drag?.id === item.id);
    children.push(li);
  }
  for (const id of rows.keys()) if (!seen.has(id)) rows.delete(id);
  // Only touch the DOM when the order changed (keeps focus and an ongoing drag intact).
  if (children.length !== ul.children.length || children.some((li, i) => ul.children[i] !== li)) ul.replaceChildren(...children);
  $("#add-btn").disabled = !Array.isArray(room.state?.todos);
  renderHistory();
  renderRev();
}

function renderHistory() {
  const supported = room.historySupported !== false;
  $("#undo-btn").disabled = !supported || !room.canUndo;
  $("#redo-btn").disabled = !supported || !room.canRedo;
  if (!supported) $("#undo-btn").title = $("#redo-btn").title = "This server has no undo";
}

function renderRev() {
  $("#rev").textContent = String(room.rev);
  const n = room.pendingCount;
  $("#pending").textContent = n ? ` · ${n} pending` : "";
}

// ---------------------------------------------------------------------------------------------
// Editing
// ---------------------------------------------------------------------------------------------

$("#new-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("#new-text");
  const text = input.value.trim();
  if (!text || !Array.isArray(room.state?.todos)) return;
  list.push({ text, done: false }, { meta: { label: `add “${text.slice(0, 40)}”` } });
  input.value = "";
});

ul.addEventListener("change", (ev) => {
  const li = ev.target.closest("li");
  if (!li || !ev.target.classList.contains("toggle")) return;
  const item = list.get(li.dataset.id);
  if (item) list.update(item.id, { done: !item.done }, { meta: { label: `${item.done ? "reopen" : "finish"} “${String(item.text).slice(0, 40)}”` } });
});

ul.addEventListener("click", (ev) => {
  const li = ev.target.closest("li");
  if (!li || !ev.target.classList.contains("remove")) return;
  const item = list.get(li.dataset.id);
  if (item) list.remove(item.id, { meta: { label: `remove “${String(item.text).slice(0, 40)}”` } });
});

// Drag to reorder with pointer events (mouse, pen and touch alike): grab the handle, drop between
// two items; the move is "after the item above the drop point" (null: to the top).

/** @type {{id: string, pointerId: number} | null} */
let drag = null;

ul.addEventListener("pointerdown", (ev) => {
  const handle = ev.target.closest(".handle");
  if (!handle || drag || ev.button !== 0) return;
  ev.preventDefault();
  drag = { id: handle.closest("li").dataset.id, pointerId: ev.pointerId };
  render();
});

/** The id the dragged item would go after if dropped at viewport y (null: the top). */
function afterAt(y) {
  let after = null;
  for (const li of ul.children) {
    if (li.dataset.id === drag.id) continue;
    const r = li.getBoundingClientRect();
    if (y < r.top + r.height / 2) break;
    after = li.dataset.id;
  }
  return after;
}

function showDropMark(y) {
  for (const li of ul.children) li.classList.remove("drop-before", "drop-after");
  const after = afterAt(y);
  const others = [...ul.children].filter((li) => li.dataset.id !== drag.id);
  if (after === null) others[0]?.classList.add("drop-before");
  else rows.get(after)?.classList.add("drop-after");
}

window.addEventListener("pointermove", (ev) => {
  if (drag && ev.pointerId === drag.pointerId) showDropMark(ev.clientY);
});

window.addEventListener("pointerup", (ev) => {
  if (!drag || ev.pointerId !== drag.pointerId) return;
  const { id } = drag;
  const after = afterAt(ev.clientY);
  endDrag();
  const items = list.items;
  const i = items.findIndex((el) => el.id === id);
  if (i < 0) return; // removed by someone else meanwhile
  const before = i === 0 ? null : items[i - 1].id;
  if (after !== before) list.move(id, after, { meta: { label: `move “${String(items[i].text).slice(0, 40)}”` } });
});

window.addEventListener("pointercancel", (ev) => {
  if (drag && ev.pointerId === drag.pointerId) endDrag();
});

function endDrag() {
  drag = null;
  for (const li of ul.children) li.classList.remove("drop-before", "drop-after");
  render();
}

// ---------------------------------------------------------------------------------------------
// Undo and redo
// ---------------------------------------------------------------------------------------------

$("#undo-btn").addEventListener("click", () => askHistory("undo"));
$("#redo-btn").addEventListener("click", () => askHistory("redo"));

function askHistory(kind) {
  $("#history-msg").textContent = "";
  room[kind]().then(
    (entry) => toast(`${kind === "undo" ? "Undid" : "Redid"}${entry.rev ? ` (rev ${entry.rev})` : ""}.`),
    (r) => {
      if (r instanceof Error) return; // the page is closing
      window.todo.refused++;
      window.todo.lastRefusal = { kind, code: r.code, revs: r.conflicts ?? [] };
      const text = refusal(kind, r);
      $("#history-msg").textContent = text;
      toast(text, { bad: true });
    },
  );
}

/** Why the server refused an undo or redo, in words. */
function refusal(kind, r) {
  const what = kind === "undo" ? "undo" : "redo";
  if (r.code === "conflict") {
    const revs = Array.isArray(r.conflicts) && r.conflicts.length ? ` (rev ${r.conflicts.join(", ")})` : "";
    return `Cannot ${what}: someone else changed the same thing since${revs}.`;
  }
  if (r.code === "stale") return `Cannot ${what}: that change is too old to revert.`;
  return `Cannot ${what}: ${r.message ?? r.code}.`;
}

// ---------------------------------------------------------------------------------------------
// Room events → screen
// ---------------------------------------------------------------------------------------------

room.on("state", () => {
  render();
  maybeSetUp();
});
room.on("history", renderHistory);
room.on("reject", (r) => {
  if (r.kind !== "change" || r.ops?.some((o) => o.path === "/setup")) return; // undo/redo: see history(); setup race: expected
  toast(`A change was refused: ${r.code}.`, { bad: true });
});
room.on("status", (status, detail) => {
  const el = $("#status");
  el.dataset.status = status;
  el.textContent =
    status === "open" ? "live" : status === "connecting" ? "connecting…" : detail?.retryInMs ? `offline · retry in ${Math.ceil(detail.retryInMs / 100) / 10}s` : "offline";
  if (status === "offline" && detail?.code === 4001) toast("This session was opened elsewhere; reload to take it back.", { bad: true });
  render();
  maybeSetUp();
});

function toast(text, { bad = false } = {}) {
  const el = document.createElement("div");
  el.className = `toast${bad ? " bad" : ""}`;
  el.textContent = text;
  const box = $("#toasts");
  box.append(el);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), 3500);
}

window.addEventListener("pagehide", () => room.close());
window.addEventListener("pageshow", (ev) => {
  if (ev.persisted) location.reload();
});
render();
