// The demo page: a shared chessboard on ringsync. Everything multiplayer goes through the client
// library; this file is only rendering and input.
//
// Room state: {"setup": 1, "board": {"e2": "wP", "g8": "bN", ...}} (square → piece; w/b + KQRBNP).
// A move is one change in "paths" mode against the rev the mover saw:
//   test /board/<from> == piece, remove /board/<from>, [test /board/<to> == captured], add /board/<to>
// Two moves that touch the same square after that rev conflict, so the later one is rejected and
// its piece snaps back. Presence carries {name, color, cursor: {x, y} (board fractions), holding}.
// Each move carries `meta: {label: "e2 → e4"}`. Undo / Redo ask the server to revert this user's
// last move (or undo); the server refuses (`conflict`) once someone else's later move touched the
// same squares — e.g. the opponent took the piece you moved — and the page says so (#history-msg).
// Tests find things by id and by data-square / data-piece / data-client attributes.

import { connect, PatchError } from "./client.js";

const $ = (sel) => document.querySelector(sel);
const FILES = "abcdefgh";
const GLYPHS = { K: "\u265A", Q: "\u265B", R: "\u265C", B: "\u265D", N: "\u265E", P: "\u265F" };
const NAMES = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Edsger", "Margaret", "Dennis", "Radia", "Donald", "Frances", "Leslie", "Hedy", "Tim", "Joan"];
const COLORS = ["#ff7a90", "#ffb454", "#f9e15e", "#7ee787", "#56d4dd", "#7c9cff", "#c297ff", "#ff8bd8"];

const INITIAL = (() => {
  /** @type {Record<string, string>} */
  const board = {};
  "RNBQKBNR".split("").forEach((p, i) => {
    board[`${FILES[i]}1`] = `w${p}`;
    board[`${FILES[i]}2`] = "wP";
    board[`${FILES[i]}7`] = "bP";
    board[`${FILES[i]}8`] = `b${p}`;
  });
  return board;
})();

const params = new URLSearchParams(location.search);
const roomName = params.get("room") || "lobby";
const me = {
  name: sessionStorage.getItem("ringsync-name") || `${NAMES[Math.floor(Math.random() * NAMES.length)]}`,
  color: sessionStorage.getItem("ringsync-color") || COLORS[Math.floor(Math.random() * COLORS.length)],
};
sessionStorage.setItem("ringsync-name", me.name);
sessionStorage.setItem("ringsync-color", me.color);

// With tokens enabled on the server, open the page as /?room=NAME&token=JWT.
const room = connect(null, roomName, { token: params.get("token") ?? undefined });
// Handy in the console, and how the browser tests look inside.
window.room = room;
window.demo = { rejects: 0, INITIAL };

document.title = `${roomName} · ringsync chess`;
$("#room-name").textContent = roomName;
$("#name").value = me.name;
$("#swatch").style.background = me.color;
room.setPresence({ name: me.name, color: me.color });

// ---------------------------------------------------------------------------------------------
// Board
// ---------------------------------------------------------------------------------------------

const boardEl = $("#board");
/** @type {Record<string, HTMLElement>} */
const squares = {};
for (let rank = 8; rank >= 1; rank--) {
  for (let f = 0; f < 8; f++) {
    const sq = `${FILES[f]}${rank}`;
    const el = document.createElement("div");
    el.className = `square ${(f + rank) % 2 === 1 ? "dark" : "light"}`; // a1 is dark
    el.dataset.square = sq;
    squares[sq] = el;
    boardEl.append(el);
  }
}

/** @type {{from: string, to: string} | null} */
let lastMove = null;

function renderBoard() {
  const board = room.state?.board ?? {};
  for (const [sq, el] of Object.entries(squares)) {
    const piece = isPiece(board[sq]) ? board[sq] : null;
    let pieceEl = el.querySelector(".piece");
    if ((pieceEl?.dataset.piece ?? null) !== piece) {
      pieceEl?.remove();
      pieceEl = null;
      if (piece) {
        pieceEl = document.createElement("span");
        pieceEl.className = `piece ${piece[0]}`;
        pieceEl.dataset.piece = piece;
        pieceEl.textContent = GLYPHS[piece[1]] + "\uFE0E";
        el.append(pieceEl);
      }
    }
    pieceEl?.classList.toggle("lifted", drag?.from === sq);
    el.classList.toggle("last", lastMove !== null && (lastMove.from === sq || lastMove.to === sq));
  }
  renderHeld();
}

const isPiece = (v) => typeof v === "string" && /^[wb][KQRBNP]$/.test(v);

/** Squares other people are holding a piece on, outlined in their colour. */
function renderHeld() {
  for (const el of Object.values(squares)) {
    el.classList.remove("held");
    el.style.removeProperty("--held");
  }
  for (const [id, p] of Object.entries(room.presence)) {
    if (id === room.client || !p?.holding || !squares[p.holding]) continue;
    squares[p.holding].classList.add("held");
    squares[p.holding].style.setProperty("--held", p.color ?? "#fff");
  }
}

/** The square under a viewport point, or null off the board. */
function squareAt(x, y) {
  const r = boardEl.getBoundingClientRect();
  const f = Math.floor(((x - r.left) / r.width) * 8);
  const rank = 8 - Math.floor(((y - r.top) / r.height) * 8);
  if (f < 0 || f > 7 || rank < 1 || rank > 8) return null;
  return `${FILES[f]}${rank}`;
}

// ---------------------------------------------------------------------------------------------
// Dragging and moving
// ---------------------------------------------------------------------------------------------

/** @type {{from: string, piece: string, ghost: HTMLElement, pointerId: number} | null} */
let drag = null;

boardEl.addEventListener("pointerdown", (ev) => {
  const pieceEl = /** @type {HTMLElement} */ (ev.target).closest?.(".piece");
  if (!pieceEl || drag || ev.button !== 0) return;
  ev.preventDefault();
  const from = pieceEl.parentElement.dataset.square;
  const ghost = document.createElement("div");
  ghost.id = "ghost";
  ghost.className = pieceEl.className.replace("piece", "").trim();
  ghost.textContent = pieceEl.textContent;
  document.body.append(ghost);
  drag = { from, piece: pieceEl.dataset.piece, ghost, pointerId: ev.pointerId };
  moveGhost(ev);
  pieceEl.classList.add("lifted");
  room.setPresence({ holding: from });
});

function moveGhost(ev) {
  drag.ghost.style.left = `${ev.clientX}px`;
  drag.ghost.style.top = `${ev.clientY}px`;
}

window.addEventListener("pointermove", (ev) => {
  if (drag && ev.pointerId === drag.pointerId) moveGhost(ev);
  const r = boardEl.getBoundingClientRect();
  const x = (ev.clientX - r.left) / r.width;
  const y = (ev.clientY - r.top) / r.height;
  const near = x > -0.15 && x < 1.15 && y > -0.15 && y < 1.15;
  room.setPresence({ cursor: near ? { x: round3(x), y: round3(y) } : null });
});

window.addEventListener("pointerup", (ev) => {
  if (!drag || ev.pointerId !== drag.pointerId) return;
  const { from, piece } = drag;
  endDrag();
  const to = squareAt(ev.clientX, ev.clientY);
  if (to && to !== from) move(from, to, piece);
});

window.addEventListener("pointercancel", (ev) => {
  if (drag && ev.pointerId === drag.pointerId) endDrag();
});

document.documentElement.addEventListener("pointerleave", () => room.setPresence({ cursor: null }));

function endDrag() {
  drag.ghost.remove();
  drag = null;
  room.setPresence({ holding: null });
  renderBoard();
}

/**
 * Sends one move of `dragged` from `from`; a piece that moved under us (someone else's move
 * arrived while it was held), or an illegal drop, snaps back locally.
 */
function move(from, to, dragged) {
  const board = room.state?.board ?? {};
  const piece = board[from];
  const target = isPiece(board[to]) ? board[to] : undefined;
  if (piece !== dragged) {
    noteReject({ code: "conflict", from, to, piece: dragged, local: true });
    return;
  }
  if (!isPiece(piece)) return;
  if (target && target[0] === piece[0]) {
    bounce(from);
    return;
  }
  const lastRank = piece[0] === "w" ? "8" : "1";
  const placed = piece[1] === "P" && to[1] === lastRank ? `${piece[0]}Q` : piece;
  const ops = [
    { op: "test", path: `/board/${from}`, value: piece },
    { op: "remove", path: `/board/${from}` },
    ...(target ? [{ op: "test", path: `/board/${to}`, value: target }] : []),
    { op: "add", path: `/board/${to}`, value: placed },
  ];
  try {
    const id = room.change(ops, { mode: "paths", meta: { label: `${from} → ${to}` } });
    myMoves.set(id, { from, to, piece });
  } catch (e) {
    if (!(e instanceof PatchError)) throw e;
    noteReject({ code: e.code, from, to, piece, local: true });
  }
}

/** clientReqId → the move, so a reject can say which one. */
const myMoves = new Map();

function bounce(sq) {
  const el = squares[sq];
  el.classList.remove("bounce");
  void el.offsetWidth; // restart the animation
  el.classList.add("bounce");
}

// ---------------------------------------------------------------------------------------------
// Setup and reset
// ---------------------------------------------------------------------------------------------

let setupSent = false;

/**
 * An empty room gets the starting position, exactly once even if several tabs try: `incr` creates
 * /setup as 1 in the first change only, so the `test` fails for everyone after.
 */
function maybeSetUp() {
  if (room.status !== "open" || room.state?.board) {
    if (room.state?.board) setupSent = false;
    return;
  }
  if (setupSent) return;
  setupSent = true;
  room.change([
    { op: "incr", path: "/setup", value: 1 },
    { op: "test", path: "/setup", value: 1 },
    { op: "add", path: "/board", value: INITIAL },
  ]);
}

$("#reset-btn").addEventListener("click", () => {
  room.change([{ op: "add", path: "/board", value: INITIAL }], { meta: { label: "reset" } });
});

// ---------------------------------------------------------------------------------------------
// Undo and redo (server-side: the server reverts this user's last change as a new change)
// ---------------------------------------------------------------------------------------------

$("#undo-btn").addEventListener("click", () => askHistory("undo"));
$("#redo-btn").addEventListener("click", () => askHistory("redo"));

function renderHistory() {
  const supported = room.historySupported !== false;
  $("#undo-btn").disabled = !supported || !room.canUndo;
  $("#redo-btn").disabled = !supported || !room.canRedo;
  if (!supported) $("#undo-btn").title = $("#redo-btn").title = "This server has no undo";
}

function askHistory(kind) {
  $("#history-msg").textContent = "";
  room[kind]().then(
    () => {},
    (r) => {
      if (r instanceof Error) return; // the page is closing
      window.demo.refused = (window.demo.refused ?? 0) + 1;
      window.demo.lastRefusal = { kind, code: r.code, revs: r.conflicts ?? [] };
      let why;
      if (r.code === "conflict") {
        const revs = Array.isArray(r.conflicts) && r.conflicts.length ? ` (#${r.conflicts.join(", #")})` : "";
        why = `someone already answered on the same squares${revs}`;
      } else if (r.code === "stale") why = "that move is too old to take back";
      else why = r.message ?? r.code;
      const text = `Cannot ${kind}: ${why}.`;
      $("#history-msg").textContent = text;
      addLog({ client: room.client, html: `${kind} <i>refused: ${escapeHtml(why)}</i>`, reject: true });
      toast(text, { bad: true });
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Log of recent changes
// ---------------------------------------------------------------------------------------------

const MAX_LOG = 14;

function nameOf(client) {
  if (client === room.client) return "you";
  if (client === "http") return "HTTP API";
  return room.presence[client]?.name ?? client;
}

function colorOf(client) {
  if (client === room.client) return me.color;
  return room.presence[client]?.color ?? "#8b98a9";
}

/** A short human description of a change, and the move it made (if it was one). */
function describe(ops) {
  const at = (op) => (typeof op.path === "string" && op.path.startsWith("/board/") ? op.path.slice(7) : null);
  const removed = ops.find((o) => o.op === "remove" && at(o));
  const added = ops.find((o) => o.op === "add" && at(o));
  if (removed && added) {
    const captured = ops.find((o) => o.op === "test" && at(o) === at(added))?.value;
    const text = `${glyph(added.value)} ${at(removed)} → ${at(added)}${captured ? ` takes ${glyph(captured)}` : ""}`;
    return { html: text, move: { from: at(removed), to: at(added) } };
  }
  if (ops.some((o) => o.path === "/setup")) return { html: "set up the board" };
  if (ops.some((o) => o.path === "/board" && (o.op === "add" || o.op === "replace"))) return { html: "reset the board" };
  return { html: escapeHtml(`changed ${[...new Set(ops.map((o) => o.path))].join(", ")}`) };
}

function glyph(piece) {
  if (typeof piece !== "string" || !GLYPHS[piece[1]]) return "?";
  return `<span class="glyph piece-${piece[0]}">${GLYPHS[piece[1]]}\uFE0E</span>`;
}

function addLog({ rev, client, html, reject = false }) {
  const li = document.createElement("li");
  li.className = reject ? "log-reject" : "log-change";
  if (rev !== undefined) li.dataset.rev = String(rev);
  li.dataset.client = client;
  li.style.setProperty("--c", colorOf(client));
  li.innerHTML = `<span class="rev">${rev === undefined ? "" : `#${rev}`}</span><span class="dot"></span>` +
    `<span class="what"><b>${escapeHtml(nameOf(client))}</b> ${html}</span>`;
  const log = $("#log");
  log.prepend(li);
  while (log.children.length > MAX_LOG) log.lastElementChild.remove();
}

function noteReject({ code, from, to, piece, local = false }) {
  window.demo.rejects++;
  window.demo.lastReject = { code, from, to, local };
  if (from) bounce(from);
  const what = from ? `${glyph(piece)} ${from} → ${to}` : "change";
  const why = code === "conflict" || code === "test_failed" || local ? "someone moved first" : code;
  addLog({ client: room.client, html: `${what} <i>bounced: ${escapeHtml(why)}</i>`, reject: true });
  toast(`Your move ${from ?? ""}→${to ?? ""} was undone: ${why}.`, { bad: true });
}

// ---------------------------------------------------------------------------------------------
// Presence: cursors and the people list
// ---------------------------------------------------------------------------------------------

const cursorsEl = $("#cursors");
const ARROW = (c) =>
  `<svg width="18" height="22" viewBox="0 0 18 22"><path d="M1 1 L1 17 L5.5 13 L8.5 20.5 L11.5 19.2 L8.6 12 L15 12 Z" fill="${c}" stroke="#0d1117" stroke-width="1.4" stroke-linejoin="round"/></svg>`;

function renderPresence() {
  const peers = room.presence;
  const seen = new Set();
  for (const [id, p] of Object.entries(peers)) {
    if (id === room.client || !p?.cursor) continue;
    seen.add(id);
    let el = cursorsEl.querySelector(`.cursor[data-client="${CSS.escape(id)}"]`);
    if (!el) {
      el = document.createElement("div");
      el.className = "cursor";
      el.dataset.client = id;
      cursorsEl.append(el);
    }
    const color = p.color ?? "#fff";
    const label = `${escapeHtml(p.name ?? id)}${p.holding ? ` <span class="holding">· ${escapeHtml(p.holding)}</span>` : ""}`;
    const html = `${ARROW(color)}<span class="tag">${label}</span>`;
    if (el.dataset.html !== html) {
      el.innerHTML = html;
      el.dataset.html = html;
    }
    el.style.setProperty("--c", color);
    el.style.transform = `translate(${p.cursor.x * cursorsEl.clientWidth}px, ${p.cursor.y * cursorsEl.clientHeight}px)`;
  }
  for (const el of cursorsEl.querySelectorAll(".cursor")) if (!seen.has(el.dataset.client)) el.remove();

  const list = $("#peers");
  list.replaceChildren(
    ...Object.entries(peers)
      .sort(([a], [b]) => (a === room.client ? -1 : b === room.client ? 1 : a.localeCompare(b, "en", { numeric: true })))
      .map(([id, p]) => {
        const li = document.createElement("li");
        li.dataset.client = id;
        li.style.setProperty("--c", (id === room.client ? me.color : p?.color) ?? "#8b98a9");
        li.innerHTML = `<span class="dot"></span><span>${escapeHtml((id === room.client ? me.name : p?.name) ?? id)}</span>` +
          `${id === room.client ? '<span class="me">(you)</span>' : ""}<span class="id">${escapeHtml(id)}</span>`;
        return li;
      }),
  );
  $("#peer-count").textContent = String(Object.keys(peers).length);
  renderHeld();
}

$("#name").addEventListener("input", (ev) => {
  me.name = ev.target.value.trim().slice(0, 24) || "anonymous";
  sessionStorage.setItem("ringsync-name", me.name);
  room.setPresence({ name: me.name });
});

// ---------------------------------------------------------------------------------------------
// Broadcast: ping
// ---------------------------------------------------------------------------------------------

$("#ping-btn").addEventListener("click", () => {
  room.broadcast({ kind: "ping", name: me.name, color: me.color });
  toast(room.status === "open" ? "Pinged everyone." : "Offline: nobody heard that.");
});

room.on("broadcast", (data, { client }) => {
  if (data?.kind !== "ping") return;
  const color = typeof data.color === "string" ? data.color : colorOf(client);
  const flash = $("#flash");
  flash.style.setProperty("--c", color);
  flash.dataset.from = client;
  flash.classList.remove("on");
  void flash.offsetWidth;
  flash.classList.add("on");
  const cursor = room.presence[client]?.cursor;
  if (cursor) {
    const ripple = document.createElement("div");
    ripple.className = "ripple";
    ripple.style.setProperty("--c", color);
    ripple.style.left = `${cursor.x * cursorsEl.clientWidth}px`;
    ripple.style.top = `${cursor.y * cursorsEl.clientHeight}px`;
    cursorsEl.append(ripple);
    setTimeout(() => ripple.remove(), 1100);
  }
  toast(`${escapeHtml(data.name ?? nameOf(client))} pinged the room`, { color, html: true, kind: "ping" });
});

// ---------------------------------------------------------------------------------------------
// Room events → screen
// ---------------------------------------------------------------------------------------------

room.on("state", (state, info) => {
  if (info.source === "delta") {
    for (const c of info.changes) {
      if (c.own) myMoves.delete(c.clientReqId);
      if (c.reverts !== undefined) {
        // An undo or redo: a revert of revision c.reverts.
        const label = typeof c.meta?.label === "string" ? ` ${escapeHtml(c.meta.label)}` : "";
        addLog({ rev: c.rev, client: c.client, html: `reverted #${c.reverts}${label}` });
        lastMove = null;
        continue;
      }
      const d = describe(c.ops ?? []);
      if (d.move) lastMove = d.move;
      addLog({ rev: c.rev, client: c.client, html: d.html });
    }
  }
  renderBoard();
  renderRev();
  maybeSetUp();
});

room.on("reject", (r) => {
  if (r.kind && r.kind !== "change") return; // undo/redo/revert: askHistory() shows those
  const mv = myMoves.get(r.clientReqId);
  myMoves.delete(r.clientReqId);
  // A losing setup race is expected and silent: someone else set the board up.
  if (r.ops?.some((o) => o.path === "/setup")) return;
  noteReject({ code: r.code, ...(mv ?? {}) });
});

room.on("presence", renderPresence);
room.on("history", renderHistory);

room.on("status", (status, detail) => {
  const el = $("#status");
  el.dataset.status = status;
  el.textContent =
    status === "open" ? "live" : status === "connecting" ? "connecting…" : detail?.retryInMs ? `offline · retry in ${Math.ceil(detail.retryInMs / 100) / 10}s` : "offline";
  if (status === "offline" && detail?.code === 4001) toast("This session was opened elsewhere; reload to take it back.", { bad: true });
  renderRev();
  renderHistory();
  maybeSetUp();
});

function renderRev() {
  $("#rev").textContent = String(room.rev);
  const n = room.pendingCount;
  $("#pending").textContent = n ? ` · ${n} pending` : "";
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

function toast(text, { bad = false, color, html = false, kind } = {}) {
  const el = document.createElement("div");
  el.className = `toast${bad ? " bad" : ""}`;
  if (kind) el.dataset.kind = kind;
  if (color) el.style.setProperty("--c", color);
  if (html) el.innerHTML = text;
  else el.textContent = text;
  const box = $("#toasts");
  box.append(el);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => el.remove(), 3500);
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const round3 = (v) => Math.round(v * 1000) / 1000;

window.addEventListener("resize", renderPresence);
// Leave cleanly when the tab goes away, so others see us go at once rather than after the
// server's grace period; a page restored from the back/forward cache starts afresh.
window.addEventListener("pagehide", () => room.close());
window.addEventListener("pageshow", (ev) => {
  if (ev.persisted) location.reload();
});
renderBoard();
renderPresence();
renderHistory();
