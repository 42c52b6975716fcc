// Issue #14 in headless Chromium against the real binary: the chess demo's Undo / Redo (including
// the refused undo and its message) and the to-do demo (/todo.html) with two pages inserting and
// reordering at once, converging with no item lost or duplicated.
//
//   cargo build && node --test tests/js/history-browser.test.mjs
//
// Every scenario runs twice, against two backends:
//   1. "real server": the pages' WebSockets go to the binary (through a proxy that can hold them).
//      The server side of issue #14 (undo/redo, list ops) is checked at runtime: a scenario fails,
//      naming what is missing, when the server lacks it (undo: `welcome` has no `canUndo`; list
//      ops: an HTTP change with `list_insert` is refused).
//   2. "contract stand-in": the binary serves the pages, but their WebSockets are routed to
//      helpers-contract-server.mjs, an in-memory room written from the wire contract; this checks
//      the pages and the client now, whatever the server has.
// Same environment as browser.test.mjs (RINGSYNC_BIN, CHROMIUM, RINGSYNC_WEB_DIR, RINGSYNC_REQUIRE_BROWSER).

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";

import { skipReason, startServer, startProxy, launchBrowser, http, maybeServeWebFromDisk, serverHasHistory } from "./helpers-browser.mjs";
import { ContractRoom } from "./helpers-contract-server.mjs";

const skip = skipReason();
if (skip) console.log(`# skipping history browser tests: ${skip}`);

const uniqueRoom = (label) => `${label}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const NO_UNDO = "the server has no undo yet (welcome lacks canUndo): needs issue #14 part A";
const NO_LISTS = "the server has no list ops yet (list_insert refused): needs issue #14 part B";

async function newPage(browser, { width = 1100, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
  await maybeServeWebFromDisk(context);
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") page.errors.push(m.text());
  });
  return page;
}

/**
 * A backend the pages talk to. `open(browser, path, room)` opens a page of the demo at `path` ("/"
 * or "/todo.html") in its own context; `view(room)` is the server's {rev, state}; `hold()` delays
 * everything the server sends to the pages until `release()`.
 */

/** The real binary, the pages behind one proxy. */
async function realBackend(server) {
  const proxy = await startProxy(server.port);
  return {
    name: "real server",
    async open(browser, path, room) {
      const page = await newPage(browser, { width: path === "/" ? 1280 : 1100 });
      await page.goto(`${proxy.url}${path}?room=${encodeURIComponent(room)}`, { timeout: 15000 });
      return page;
    },
    view: async (room) => (await http(server.url, `/v1/rooms/${encodeURIComponent(room)}`)).body,
    hold: () => proxy.hold(),
    release: () => proxy.release(),
    close: () => proxy.close(),
  };
}

/** The binary serves the pages; their WebSockets go to in-memory ContractRooms. */
function contractBackend(server) {
  /** @type {Map<string, ContractRoom>} */
  const rooms = new Map();
  const roomOf = (name) => {
    if (!rooms.has(name)) rooms.set(name, new ContractRoom());
    return rooms.get(name);
  };
  return {
    name: "contract stand-in",
    async open(browser, path, room) {
      const page = await newPage(browser, { width: path === "/" ? 1280 : 1100 });
      await page.context().routeWebSocket(/\/v1\/rooms\/[^/]+\/ws/, (ws) => {
        const name = decodeURIComponent(new URL(ws.url()).pathname.split("/")[3]);
        roomOf(name).attach(ws);
      });
      await page.goto(`${server.url}${path}?room=${encodeURIComponent(room)}`, { timeout: 15000 });
      return page;
    },
    view: async (room) => ({ rev: roomOf(room).rev, state: roomOf(room).state }),
    hold: () => rooms.forEach((r) => r.hold()),
    release: () => rooms.forEach((r) => r.release()),
    close: async () => {},
  };
}

/** The chess demo, connected with a board on screen. */
async function openChess(browser, backend, room) {
  const page = await backend.open(browser, "/", room);
  await page.waitForFunction(() => window.room?.status === "open" && window.room.state?.board, null, { timeout: 15000 });
  return page;
}

/** The to-do demo, connected with the list set up. */
async function openTodo(browser, backend, room) {
  const page = await backend.open(browser, "/todo.html", room);
  await page.waitForFunction(() => window.room?.status === "open" && Array.isArray(window.room.state?.todos) && window.room.pendingCount === 0, null, { timeout: 15000 });
  return page;
}

async function center(page, selector) {
  const box = await page.locator(selector).boundingBox();
  return { x: box.x + box.width / 2, y: box.y + box.height / 2 };
}

async function dragSquare(page, from, to) {
  const a = await center(page, `[data-square="${from}"]`);
  const b = await center(page, `[data-square="${to}"]`);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
  await page.mouse.move(b.x, b.y, { steps: 6 });
  await page.mouse.up();
}

const pieceAt = (page, sq) => page.evaluate((s) => document.querySelector(`[data-square="${s}"] [data-piece]`)?.dataset.piece ?? null, sq);

/**
 * Every page connected with nothing pending and at the server's rev, showing the server's state;
 * returns the server's room ({rev, state}).
 */
async function settled(backend, room, pages, timeout = 20000) {
  for (const p of pages) {
    await p.waitForFunction(() => window.room.status === "open" && window.room.pendingCount === 0, null, { timeout });
  }
  const server = await backend.view(room);
  for (const p of pages) await p.waitForFunction((r) => window.room.rev >= r, server.rev, { timeout });
  for (const p of pages) {
    const { state, rev } = await p.evaluate(() => ({ state: window.room.state, rev: window.room.rev }));
    assert.equal(rev, server.rev);
    assert.deepEqual(state, server.state);
  }
  return server;
}

/** The to-do items on screen, in order: [id, text, done]. */
const screenItems = (page) =>
  page.evaluate(() => [...document.querySelectorAll("#todos li")].map((li) => [li.dataset.id, li.querySelector(".text").textContent, li.querySelector(".toggle").checked]));

async function addItem(page, text) {
  await page.fill("#new-text", text);
  await page.click("#add-btn");
  await page.waitForFunction((t) => [...document.querySelectorAll("#todos .text")].some((e) => e.textContent === t), text, { timeout: 5000 });
  return page.evaluate((t) => window.todo.list.items.find((el) => el.text === t).id, text);
}

/** Drags item `id` by its handle so it drops just below item `afterId` (null: above the first). */
async function dragItem(page, id, afterId) {
  const h = await center(page, `#todos li[data-id="${id}"] .handle`);
  let y;
  if (afterId === null) {
    const first = await page.locator("#todos li").first().boundingBox();
    y = first.y + 2;
  } else {
    const box = await page.locator(`#todos li[data-id="${afterId}"]`).boundingBox();
    y = box.y + box.height - 2;
  }
  await page.mouse.move(h.x, h.y);
  await page.mouse.down();
  await page.mouse.move(h.x, y, { steps: 8 });
  await page.mouse.up();
}

function assertNoPageErrors(pages) {
  for (const p of pages) {
    assert.deepEqual(p.errors.filter((e) => !/^WebSocket connection to .* failed/.test(e)), [], "errors in the page");
  }
}

async function closeAll(pages) {
  await Promise.allSettled(pages.map((p) => p.context().close()));
}

// ---------------------------------------------------------------------------------------------
// Scenarios, each run against both backends
// ---------------------------------------------------------------------------------------------

async function chessUndoRedo(browser, backend) {
  const room = uniqueRoom("chess-undo");
  const pages = [];
  try {
    const a = await openChess(browser, backend, room);
    pages.push(a);
    const b = await openChess(browser, backend, room);
    pages.push(b);

    await dragSquare(a, "e2", "e4");
    await b.waitForFunction(() => document.querySelector('[data-square="e4"] [data-piece="wP"]'), null, { timeout: 10000 });
    await a.waitForFunction(() => !document.querySelector("#undo-btn").disabled, null, { timeout: 10000 });
    assert.equal(await b.isDisabled("#redo-btn"), true);

    await a.click("#undo-btn");
    for (const p of pages) {
      await p.waitForFunction(() => document.querySelector('[data-square="e2"] [data-piece="wP"]') && !document.querySelector('[data-square="e4"] [data-piece]'), null, { timeout: 10000 });
    }
    await a.waitForFunction(() => !document.querySelector("#redo-btn").disabled, null, { timeout: 10000 });
    // Everyone's log shows the revert.
    await b.waitForFunction(() => [...document.querySelectorAll("#log li.log-change")].some((li) => li.textContent.includes("reverted")), null, { timeout: 5000 });
    await settled(backend, room, pages);

    await a.click("#redo-btn");
    for (const p of pages) {
      await p.waitForFunction(() => document.querySelector('[data-square="e4"] [data-piece="wP"]') && !document.querySelector('[data-square="e2"] [data-piece]'), null, { timeout: 10000 });
    }
    await a.waitForFunction(() => document.querySelector("#redo-btn").disabled && !document.querySelector("#undo-btn").disabled, null, { timeout: 10000 });
    await settled(backend, room, pages);

    // The opponent answers on the same square: d7 → d5, then d5 takes e4.
    await dragSquare(b, "d7", "d5");
    await a.waitForFunction(() => document.querySelector('[data-square="d5"] [data-piece="bP"]'), null, { timeout: 10000 });
    await dragSquare(b, "d5", "e4");
    await a.waitForFunction(() => document.querySelector('[data-square="e4"] [data-piece="bP"]'), null, { timeout: 10000 });
    const before = await settled(backend, room, pages);

    await a.click("#undo-btn");
    await a.waitForFunction(() => document.querySelector("#history-msg").textContent.includes("Cannot undo"), null, { timeout: 10000 });
    assert.ok(await a.locator("#history-msg").isVisible(), "the refusal is on screen");
    const refusal = await a.evaluate(() => window.demo.lastRefusal);
    assert.equal(refusal.code, "conflict");
    assert.ok(refusal.revs.length >= 1, "the reject names the conflicting revs");
    assert.ok((await a.locator(".toast.bad").count()) >= 1, "a toast too");
    assert.equal(await a.evaluate(() => window.demo.rejects), 0, "not shown as a bounced move");
    const afterRefusal = await settled(backend, room, pages);
    assert.equal(afterRefusal.rev, before.rev, "nothing was applied");
    assert.equal(await pieceAt(a, "e4"), "bP");
    assert.equal(await pieceAt(b, "e4"), "bP");
    assertNoPageErrors(pages);
  } finally {
    await closeAll(pages);
  }
}

async function todoEditing(browser, backend) {
  const room = uniqueRoom("todo");
  const pages = [];
  try {
    const a = await openTodo(browser, backend, room);
    pages.push(a);
    const b = await openTodo(browser, backend, room);
    pages.push(b);
    const milk = await addItem(a, "milk");
    const eggs = await addItem(a, "eggs");
    const bread = await addItem(b, "bread");
    await settled(backend, room, pages);
    assert.deepEqual((await screenItems(b)).map(([, text]) => text), ["milk", "eggs", "bread"]);

    await b.click(`#todos li[data-id="${milk}"] .toggle`);
    await a.waitForFunction((id) => document.querySelector(`#todos li[data-id="${id}"] .toggle`).checked, milk, { timeout: 10000 });
    await dragItem(a, bread, null);
    await b.waitForFunction((id) => document.querySelector("#todos li")?.dataset.id === id, bread, { timeout: 10000 });
    await a.click(`#todos li[data-id="${eggs}"] .remove`);
    await b.waitForFunction((id) => !document.querySelector(`#todos li[data-id="${id}"]`), eggs, { timeout: 10000 });
    let server = await settled(backend, room, pages);
    assert.deepEqual(server.state.todos, [{ id: bread, text: "bread", done: false }, { id: milk, text: "milk", done: true }]);
    for (const p of pages) assert.deepEqual((await screenItems(p)).map(([id]) => id), [bread, milk]);

    // A's last change removed eggs: Undo brings it back where it was (after milk), Redo removes it again.
    await a.click("#undo-btn");
    await b.waitForFunction((id) => document.querySelector(`#todos li[data-id="${id}"]`), eggs, { timeout: 10000 });
    server = await settled(backend, room, pages);
    assert.deepEqual(server.state.todos.map((el) => el.id), [bread, milk, eggs]);
    await a.waitForFunction(() => !document.querySelector("#redo-btn").disabled, null, { timeout: 10000 });
    await a.click("#redo-btn");
    await b.waitForFunction((id) => !document.querySelector(`#todos li[data-id="${id}"]`), eggs, { timeout: 10000 });
    server = await settled(backend, room, pages);
    assert.deepEqual(server.state.todos.map((el) => el.id), [bread, milk]);
    assertNoPageErrors(pages);
  } finally {
    await closeAll(pages);
  }
}

async function todoConcurrentReorder(browser, backend) {
  const room = uniqueRoom("todo-race");
  const pages = [];
  try {
    const a = await openTodo(browser, backend, room);
    pages.push(a);
    const b = await openTodo(browser, backend, room);
    pages.push(b);
    const ids = [];
    for (const text of ["one", "two", "three", "four", "five"]) ids.push(await addItem(a, text));
    await settled(backend, room, pages);

    for (let round = 0; round < 3; round++) {
      // Neither page hears the other until both are done: all their ops are against the same rev.
      backend.hold();
      const itemsA = (await screenItems(a)).map(([id]) => id);
      const itemsB = (await screenItems(b)).map(([id]) => id);
      await dragItem(a, itemsA.at(-1), null); // A: last to the top
      await dragItem(b, itemsB[0], itemsB.at(-1)); // B: first to the bottom
      await dragItem(a, itemsA[1], itemsA[3]);
      await dragItem(b, itemsB[2], null);
      ids.push(await addItem(a, `a${round}`));
      ids.push(await addItem(b, `b${round}`));
      if (round === 1) {
        // B removes the item A just moved to the top; A then moves it again (a no-op once it is gone).
        await b.click(`#todos li[data-id="${itemsA.at(-1)}"] .remove`);
        ids.splice(ids.indexOf(itemsA.at(-1)), 1);
        await dragItem(a, itemsA.at(-1), itemsA[2]);
      }
      // Before hearing each other, each page shows its own edits (optimistic list ops).
      if (round !== 1) assert.equal((await screenItems(a))[0][0], itemsA.at(-1), `round ${round}: A's drag to the top shows at once`);
      assert.equal((await screenItems(b)).at(-2)[0], itemsB[0], `round ${round}: B's drag to the bottom shows at once`);
      backend.release();
      const server = await settled(backend, room, pages);
      const got = server.state.todos.map((el) => el.id);
      assert.equal(new Set(got).size, got.length, `round ${round}: an item is duplicated: ${got}`);
      assert.deepEqual([...got].sort(), [...ids].sort(), `round ${round}: an item was lost or appeared`);
      for (const p of pages) assert.deepEqual((await screenItems(p)).map(([id]) => id), got, `round ${round}: the screen shows the server's order`);
    }
    const bad = await Promise.all(pages.map((p) => p.evaluate(() => document.querySelectorAll(".toast.bad").length)));
    assert.deepEqual(bad, [0, 0], "no change was refused: list ops by id never conflict");
    assertNoPageErrors(pages);
  } finally {
    await closeAll(pages);
  }
}

describe("undo/redo and id-addressed lists in headless Chromium", { skip: skip ?? false, timeout: 400000 }, () => {
  let server;
  let browser;
  let real;
  let contract;
  /** what the binary under test supports (probed once) */
  let hasUndo = false;
  let hasLists = false;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
    real = await realBackend(server);
    contract = contractBackend(server);
    hasUndo = await serverHasHistory(browser, server.url);
    const probe = await http(server.url, `/v1/rooms/list-probe-${process.pid}/changes`, {
      ops: [
        { op: "add", path: "/l", value: [] },
        { op: "list_insert", path: "/l", after: null, value: { id: "a" } },
      ],
    });
    hasLists = probe.status === 200;
    if (!hasUndo) console.log(`# real server: ${NO_UNDO}`);
    if (!hasLists) console.log(`# real server: ${NO_LISTS}`);
  });

  after(async () => {
    await real?.close();
    await browser?.close().catch(() => {});
    await server?.stop();
  });

  test("the to-do page is served and linked from the chess page; Undo/Redo follow canUndo/canRedo", { timeout: 60000 }, async () => {
    const room = uniqueRoom("links");
    const pages = [];
    try {
      const chess = await openChess(browser, real, room);
      pages.push(chess);
      assert.equal(await chess.getAttribute("#todo-link", "href"), "/todo.html");
      // Nothing of ours to undo in a fresh room, unless this page set the board up.
      const canUndo = await chess.evaluate(() => window.room.canUndo);
      assert.equal(await chess.isDisabled("#undo-btn"), !canUndo);
      assert.equal(await chess.isDisabled("#redo-btn"), true);
      if (!hasUndo) assert.equal(canUndo, false, "a server without undo never enables it");

      const res = await fetch(`${server.url}/todo.html`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type"), /^text\/html/);
      assert.match(await res.text(), /<ul id="todos">/);
      const js = await fetch(`${server.url}/todo.js`);
      assert.equal(js.status, 200);
      assert.match(js.headers.get("content-type"), /^text\/javascript/);
      assert.equal((await fetch(`${server.url}/client/list.js`)).status, 200);

      await chess.click("#todo-link");
      await chess.waitForURL(/\/todo\.html$/, { timeout: 10000 });
      await chess.waitForFunction(() => window.room?.status === "open" && window.todo?.list, null, { timeout: 15000 });
      assert.equal(await chess.isDisabled("#redo-btn"), true);
      assertNoPageErrors(pages);
    } finally {
      await closeAll(pages);
    }
  });

  const scenarios = [
    ["chess: Undo and Redo take a move back and forth in both pages; an answered move cannot be undone (visible message)", chessUndoRedo, ["undo"]],
    ["to-do: add, toggle, remove, drag to reorder, undo and redo, seen by both pages", todoEditing, ["undo", "lists"]],
    ["to-do: two pages reordering and inserting at once converge with no item lost or duplicated", todoConcurrentReorder, ["lists"]],
  ];
  for (const [name, run, needs] of scenarios) {
    test(`real server — ${name}`, { timeout: 120000 }, async () => {
      // The server has both parts now: a server that lost either is a failure, not a skip.
      if (needs.includes("undo")) assert.ok(hasUndo, NO_UNDO);
      if (needs.includes("lists")) assert.ok(hasLists, NO_LISTS);
      await run(browser, real);
    });
    test(`contract stand-in — ${name}`, { timeout: 120000 }, async () => {
      await run(browser, contract);
    });
  }
});
