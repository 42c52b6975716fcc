// The demo page and client library in headless Chromium, against the real server binary:
//
//   cargo build && node --test tests/js/
//
// Env: RINGSYNC_BIN (default target/debug/ringsync), CHROMIUM (default /usr/bin/chromium),
// RINGSYNC_WEB_DIR=src/web to serve the page from disk instead of the binary's embedded copy,
// UPDATE_DOCS_SCREENSHOT=1 to also refresh docs/demo.png. Screenshots land in tests/js/artifacts/.
// Skips (with the reason) when the binary or Chromium is missing.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { skipReason, startServer, startProxy, launchBrowser, http, repoRoot, maybeServeWebFromDisk } from "./helpers-browser.mjs";

const skip = skipReason();
if (skip) console.log(`# skipping browser tests: ${skip}`);

const artifacts = join(repoRoot, "tests/js/artifacts");
const uniqueRoom = (label) => `${label}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

/**
 * Opens the demo in its own browser context (own storage, own session) as `name`, and waits until
 * it is connected with a board on screen.
 */
async function openDemo(browser, base, room, { name, color, width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
  await maybeServeWebFromDisk(context);
  await context.addInitScript(
    ([n, c]) => {
      if (n) sessionStorage.setItem("ringsync-name", n);
      if (c) sessionStorage.setItem("ringsync-color", c);
    },
    [name, color],
  );
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") page.errors.push(m.text());
  });
  await page.goto(`${base}/?room=${encodeURIComponent(room)}`, { timeout: 15000 });
  await page.waitForFunction(() => window.room?.status === "open" && window.room.state?.board, null, { timeout: 15000 });
  return page;
}

const pieceAt = (page, sq) => page.evaluate((s) => document.querySelector(`[data-square="${s}"] [data-piece]`)?.dataset.piece ?? null, sq);

async function center(page, sq) {
  const box = await page.locator(`[data-square="${sq}"]`).boundingBox();
  return { x: box.x + box.width / 2, y: box.y + box.height / 2 };
}

/** Mouse-drags the piece on `from` to `to` (pointer events, as a person would). */
async function drag(page, from, to) {
  await grab(page, from);
  await dropOn(page, to);
}

async function grab(page, sq) {
  const a = await center(page, sq);
  await page.mouse.move(a.x, a.y);
  await page.mouse.down();
}

async function dropOn(page, sq, { release = true } = {}) {
  const b = await center(page, sq);
  await page.mouse.move(b.x, b.y, { steps: 6 });
  if (release) await page.mouse.up();
}

/**
 * Waits until every page is connected with nothing pending (so no change is still on its way), then
 * until each holds the server's rev; returns the server's view of the room.
 */
async function settled(base, room, pages, timeout = 20000) {
  for (const p of pages) {
    await p.waitForFunction(() => window.room.status === "open" && window.room.pendingCount === 0, null, { timeout });
  }
  const server = (await http(base, `/v1/rooms/${encodeURIComponent(room)}`)).body;
  for (const p of pages) await p.waitForFunction((r) => window.room.rev >= r, server.rev, { timeout });
  return server;
}

/** Every page shows exactly what the server has. */
async function assertConverged(base, room, pages) {
  const server = await settled(base, room, pages);
  for (const p of pages) {
    const { state, rev } = await p.evaluate(() => ({ state: window.room.state, rev: window.room.rev }));
    assert.equal(rev, server.rev);
    assert.deepEqual(state, server.state);
    for (const [sq, piece] of Object.entries(server.state.board)) assert.equal(await pieceAt(p, sq), piece, `square ${sq} on screen`);
  }
  return server;
}

async function closeAll(pages) {
  await Promise.allSettled(pages.map((p) => p.context().close()));
}

/** No script errors. (Chromium's own log lines about failed socket connects are expected here.) */
function assertNoPageErrors(pages) {
  for (const p of pages) {
    assert.deepEqual(p.errors.filter((e) => !/^WebSocket connection to .* failed/.test(e)), [], "errors in the page");
  }
}

describe("demo page in headless Chromium", { skip: skip ?? false, timeout: 240000 }, () => {
  let server;
  let browser;

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await server?.stop();
  });

  test("a drag in one page appears in the other; cursors and pings cross over", { timeout: 60000 }, async () => {
    const room = uniqueRoom("two-pages");
    const pages = [];
    try {
      const a = await openDemo(browser, server.url, room, { name: "Ada", color: "#ff7a90" });
      pages.push(a);
      const b = await openDemo(browser, server.url, room, { name: "Linus", color: "#7ee787" });
      pages.push(b);
      const [ida, idb] = await Promise.all([a, b].map((p) => p.evaluate(() => window.room.client)));

      await drag(a, "e2", "e4");
      await b.waitForFunction(() => document.querySelector('[data-square="e4"] [data-piece="wP"]') && !document.querySelector('[data-square="e2"] [data-piece]'), null, { timeout: 10000 });
      await b.waitForFunction((id) => document.querySelector(`#log li.log-change[data-client="${id}"]`)?.textContent.includes("e2 → e4"), ida, { timeout: 5000 });

      await drag(b, "g8", "f6");
      await a.waitForFunction(() => document.querySelector('[data-square="f6"] [data-piece="bN"]'), null, { timeout: 10000 });

      // Cursors: each page shows the other's, labelled with the name.
      const pa = await center(a, "c3");
      await a.mouse.move(pa.x, pa.y, { steps: 3 });
      const pb = await center(b, "h5");
      await b.mouse.move(pb.x, pb.y, { steps: 3 });
      await b.waitForFunction((id) => document.querySelector(`.cursor[data-client="${id}"]`)?.textContent.includes("Ada"), ida, { timeout: 10000 });
      await a.waitForFunction((id) => document.querySelector(`.cursor[data-client="${id}"]`)?.textContent.includes("Linus"), idb, { timeout: 10000 });
      assert.equal(await a.locator(`.cursor[data-client="${ida}"]`).count(), 0, "no cursor for yourself");
      // The cursor comes to rest where the other person's mouse is (board-relative coordinates).
      await b.waitForFunction(
        (id) => {
          const c = document.querySelector(`.cursor[data-client="${id}"]`).getBoundingClientRect();
          const sq = document.querySelector('[data-square="c3"]').getBoundingClientRect();
          return Math.abs(c.x - (sq.x + sq.width / 2)) < 6 && Math.abs(c.y - (sq.y + sq.height / 2)) < 6;
        },
        ida,
        { timeout: 5000 },
      );

      for (const p of pages) {
        await p.waitForFunction(() => document.querySelectorAll("#peers li").length === 2, null, { timeout: 5000 });
      }

      await a.click("#ping-btn");
      await b.waitForFunction((id) => document.querySelector("#flash")?.dataset.from === id && document.querySelector('.toast[data-kind="ping"]')?.textContent.includes("Ada"), ida, { timeout: 5000 });
      assert.equal(await a.locator('.toast[data-kind="ping"]').count(), 0, "broadcasts are not echoed");

      await assertConverged(server.url, room, pages);
      assertNoPageErrors(pages);

      // Closing a tab is a clean leave: the other page sees it at once, not after the grace period.
      const t0 = Date.now();
      await b.close();
      await a.waitForFunction((id) => !document.querySelector(`#peers li[data-client="${id}"]`) && !document.querySelector(".cursor"), idb, { timeout: 5000 });
      assert.ok(Date.now() - t0 < 5000);
    } finally {
      await closeAll(pages);
    }
  });

  test("the same piece dragged in both pages at once: one wins, the other snaps back", { timeout: 60000 }, async (t) => {
    const room = uniqueRoom("race");
    const pages = [];
    try {
      const a = await openDemo(browser, server.url, room, { name: "Ada" });
      pages.push(a);
      const b = await openDemo(browser, server.url, room, { name: "Linus" });
      pages.push(b);
      await grab(a, "d2");
      await grab(b, "d2");
      await dropOn(a, "d4", { release: false });
      await dropOn(b, "d3", { release: false });
      await Promise.all([a.mouse.up(), b.mouse.up()]);

      const server1 = await assertConverged(server.url, room, pages);
      const board = server1.state.board;
      assert.equal(board.d2, undefined, "the pawn left d2");
      assert.ok((board.d3 === "wP") !== (board.d4 === "wP"), `exactly one move won: ${JSON.stringify({ d3: board.d3, d4: board.d4 })}`);
      const rejects = await Promise.all(pages.map((p) => p.evaluate(() => window.demo.rejects)));
      assert.deepEqual([...rejects].sort(), [0, 1], `one page saw its move rejected: ${rejects}`);
      const loser = pages[rejects.indexOf(1)];
      assert.equal(await loser.locator("#log li.log-reject").count(), 1);
      const how = await loser.evaluate(() => window.demo.lastReject);
      t.diagnostic(`the loser was refused ${how.local ? "locally (it had already seen the winning move)" : `by the server (${how.code})`}`);
      // The history has exactly one move after the setup.
      const changes = (await http(server.url, `/v1/rooms/${room}/changes?since=1`)).body;
      assert.equal(changes.changes.length, 1);
      assertNoPageErrors(pages);
    } finally {
      await closeAll(pages);
    }
  });

  test("a move made before the winner's arrives is rejected by the server and snaps back", { timeout: 60000 }, async () => {
    const room = uniqueRoom("conflict");
    const proxy = await startProxy(server.port);
    const pages = [];
    try {
      const a = await openDemo(browser, server.url, room, { name: "Ada" });
      pages.push(a);
      const b = await openDemo(browser, proxy.url, room, { name: "Linus" }); // on a slow link
      pages.push(b);
      const rejects = await b.evaluateHandle(() => {
        const seen = [];
        window.room.on("reject", (r) => seen.push(r));
        return seen;
      });
      const r0 = (await http(server.url, `/v1/rooms/${room}`)).body.rev;
      proxy.hold(); // B hears nothing new until release
      await drag(a, "g1", "f3");
      await a.waitForFunction((r) => window.room.rev === r + 1 && window.room.pendingCount === 0, r0, { timeout: 10000 });
      await drag(b, "g1", "h3"); // B still sees the knight on g1
      assert.equal(await pieceAt(b, "h3"), "wN", "optimistic until the server answers");
      await b.waitForTimeout(300); // let the server process it
      proxy.release();
      await b.waitForFunction(() => window.demo.rejects === 1, null, { timeout: 10000 });
      const [r] = await rejects.jsonValue();
      assert.equal(r.code, "conflict");
      assert.deepEqual(r.conflicts, [r0 + 1]);
      assert.equal(await b.evaluate(() => window.demo.lastReject.local), false);
      await assertConverged(server.url, room, pages);
      assert.equal(await pieceAt(b, "f3"), "wN");
      assert.equal(await pieceAt(b, "h3"), null, "snapped back");
      assertNoPageErrors(pages);
    } finally {
      await closeAll(pages);
      await proxy.close();
    }
  });

  test("a cut socket: changes made offline commit exactly once after reconnecting", { timeout: 90000 }, async () => {
    const room = uniqueRoom("cut");
    const proxy = await startProxy(server.port);
    const pages = [];
    try {
      const a = await openDemo(browser, proxy.url, room, { name: "Ada" }); // through the proxy
      pages.push(a);
      const b = await openDemo(browser, server.url, room, { name: "Linus" }); // direct
      pages.push(b);
      const ida = await a.evaluate(() => window.room.client);
      const r0 = (await http(server.url, `/v1/rooms/${room}`)).body.rev;

      // 1. The server hears A's move but A never hears back (its ack is lost with the socket).
      proxy.mute();
      await drag(a, "g1", "f3");
      await b.waitForFunction(() => document.querySelector('[data-square="f3"] [data-piece="wN"]'), null, { timeout: 10000 });
      assert.equal(await a.evaluate(() => window.room.pendingCount), 1, "A is still waiting for its ack");

      // 2. The socket dies; A keeps playing offline.
      proxy.cut();
      await a.waitForFunction(() => window.room.status !== "open", null, { timeout: 10000 });
      await drag(a, "b1", "c3");
      await drag(a, "e2", "e3");
      assert.equal(await pieceAt(a, "c3"), "wN", "offline moves show at once");
      assert.equal(await a.evaluate(() => window.room.pendingCount), 3);
      // Not live: "offline", or "connecting" while a retry is being refused by the cut proxy
      // (the retries' timing depends on the backoff's jitter and the machine's load).
      const shown = await a.locator("#status").getAttribute("data-status");
      assert.ok(["offline", "connecting"].includes(shown), `status ${shown}`);
      assert.equal(await pieceAt(b, "c3"), null);

      // 3. The network comes back: A resumes, resends only what the server has not seen.
      proxy.restore();
      const server1 = await assertConverged(server.url, room, pages);
      assert.equal(server1.rev, r0 + 3, "three moves, each committed once");
      const changes = (await http(server.url, `/v1/rooms/${room}/changes?since=${r0}`)).body.changes;
      assert.deepEqual(changes.map((c) => c.client), [ida, ida, ida], "same session after the resume");
      assert.deepEqual(changes.map((c) => c.clientReqId), [...new Set(changes.map((c) => c.clientReqId))]);
      assert.equal(server1.state.board.f3, "wN");
      assert.equal(server1.state.board.c3, "wN");
      assert.equal(server1.state.board.e3, "wP");
      assert.equal(await a.evaluate(() => window.demo.rejects), 0);
      assertNoPageErrors(pages);
    } finally {
      await closeAll(pages);
      await proxy.close();
    }
  });

  test("a restart of a server with durable rooms: the game survives, pages resume in the same epoch", { timeout: 90000 }, async () => {
    const room = uniqueRoom("durable");
    let own = await startServer();
    const pages = [];
    try {
      const a = await openDemo(browser, own.url, room, { name: "Ada" });
      pages.push(a);
      const b = await openDemo(browser, own.url, room, { name: "Linus" });
      pages.push(b);
      await drag(a, "e2", "e4");
      await drag(b, "e7", "e5");
      const before = await settled(own.url, room, pages);
      await own.stop();
      await a.evaluate(() => window.room.change([{ op: "incr", path: "/offline", value: 1 }]));
      own = await startServer({ listen: `127.0.0.1:${own.port}`, dataDir: own.dataDir });
      const after = await assertConverged(own.url, room, pages);
      assert.equal(after.epoch, before.epoch, "the same epoch: the room came back from disk");
      assert.equal(after.rev, before.rev + 1, "every revision kept, plus the change queued while down");
      assert.deepEqual(after.state.board, before.state.board, "the game is still there (not set up again)");
      assert.equal(after.state.setup, before.state.setup);
      assert.equal(after.state.offline, 1, "the queued change committed once");
      assertNoPageErrors(pages);
    } finally {
      await closeAll(pages);
      await own.stop();
    }
  });

  test("a memory-only server restart (new epoch): queued changes commit exactly once, pages converge", { timeout: 90000 }, async () => {
    const room = uniqueRoom("restart");
    let own = await startServer({ args: ["--memory-only"] });
    const pages = [];
    try {
      const a = await openDemo(browser, own.url, room, { name: "Ada" });
      pages.push(a);
      const b = await openDemo(browser, own.url, room, { name: "Linus" });
      pages.push(b);
      await drag(a, "e2", "e4");
      const epoch1 = (await settled(own.url, room, pages)).epoch;

      await Promise.all(pages.map((p) => p.evaluate(() => {
        window.firstClose = new Promise((resolve) => {
          const off = window.room.on("status", (s, d) => {
            if (s === "offline") {
              off();
              resolve(d.code);
            }
          });
        });
      })));
      await own.stop(); // graceful: every socket is closed with 1001 "going away"
      assert.deepEqual(await Promise.all(pages.map((p) => p.evaluate(() => window.firstClose))), [1001, 1001]);
      // Made while the server is down. The restarted server has an empty room, so these are
      // changes that make sense anywhere: counters.
      await a.evaluate(() => {
        for (let i = 0; i < 3; i++) window.room.change([{ op: "incr", path: "/offline", value: 1 }]);
      });
      await b.evaluate(() => window.room.change([{ op: "incr", path: "/offline", value: 10 }]));
      assert.equal(await a.evaluate(() => window.room.state.offline), 3);

      own = await startServer({ listen: `127.0.0.1:${own.port}`, args: ["--memory-only"] });
      const server1 = await assertConverged(own.url, room, pages);
      assert.notEqual(server1.epoch, epoch1, "a new epoch");
      assert.equal(server1.state.offline, 13, "each queued change committed exactly once");
      assert.deepEqual(server1.state.board, await a.evaluate(() => window.demo.INITIAL), "the empty room was set up again, once");
      assert.equal(server1.state.setup, 1);
      assertNoPageErrors(pages);
    } finally {
      await closeAll(pages);
      await own.stop();
    }
  });

  test("screenshot of two tabs side by side", { timeout: 60000 }, async () => {
    const room = "lobby";
    const pages = [];
    const size = { width: 1100, height: 760 };
    try {
      const a = await openDemo(browser, server.url, room, { name: "Ada", color: "#ff7a90", ...size });
      pages.push(a);
      const b = await openDemo(browser, server.url, room, { name: "Linus", color: "#7ee787", ...size });
      pages.push(b);
      for (const [p, from, to] of [[a, "e2", "e4"], [b, "c7", "c5"], [a, "g1", "f3"], [b, "d7", "d6"], [a, "d2", "d4"], [b, "c5", "d4"]]) {
        await drag(p, from, to);
        await assertConverged(server.url, room, pages);
      }
      // Ada hovers over her knight, Linus holds a pawn mid-drag; Ada pings.
      const ca = await center(a, "f3");
      await a.mouse.move(ca.x + 14, ca.y + 10, { steps: 4 });
      await grab(b, "g7");
      const cb = await center(b, "g5");
      await b.mouse.move(cb.x - 10, cb.y + 6, { steps: 4 });
      await a.waitForFunction(() => document.querySelector(".cursor .holding"), null, { timeout: 5000 });
      await b.waitForFunction(() => document.querySelectorAll(".cursor").length === 1, null, { timeout: 5000 });
      await a.evaluate(() => window.room.broadcast({ kind: "ping", name: "Ada", color: "#ff7a90" }));
      await b.waitForFunction(() => document.querySelector('.toast[data-kind="ping"]'), null, { timeout: 5000 });
      await new Promise((r) => setTimeout(r, 350)); // mid-flash
      const shots = await Promise.all(pages.map((p) => p.screenshot({ type: "png" })));
      await b.mouse.up();

      mkdirSync(artifacts, { recursive: true });
      writeFileSync(join(artifacts, "tab-a.png"), shots[0]);
      writeFileSync(join(artifacts, "tab-b.png"), shots[1]);
      const composed = await compose(browser, shots, `127.0.0.1:8080/?room=${room}`, size);
      writeFileSync(join(artifacts, "two-tabs.png"), composed);
      if (process.env.UPDATE_DOCS_SCREENSHOT) {
        mkdirSync(join(repoRoot, "docs"), { recursive: true });
        writeFileSync(join(repoRoot, "docs/demo.png"), composed);
      }
      assertNoPageErrors(pages);
    } finally {
      await closeAll(pages);
    }
  });
});

/** Two page screenshots framed as browser windows, side by side, as one PNG. */
async function compose(browser, shots, address, { width, height }) {
  const scale = 0.8;
  const w = Math.round(width * scale);
  const h = Math.round(height * scale);
  const frame = (png, title) => `
    <div class="win">
      <div class="bar"><span class="dots"><i></i><i></i><i></i></span><span class="tab">${title}</span><span class="addr">${address}</span></div>
      <img src="data:image/png;base64,${png.toString("base64")}" width="${w}" height="${h}">
    </div>`;
  const html = `<!doctype html><html><body style="margin:0;background:linear-gradient(135deg,#1d2b53,#0d1117 60%);display:flex;gap:28px;padding:28px;width:max-content;font:13px system-ui,'DejaVu Sans',sans-serif">
    <style>
      .win{border-radius:10px;overflow:hidden;box-shadow:0 18px 40px rgba(0,0,0,.5);border:1px solid #30394a;background:#0d1117}
      .bar{display:flex;align-items:center;gap:12px;height:34px;padding:0 12px;background:#1c2330;color:#c9d1d9}
      .dots i{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:6px;background:#ff5f57}
      .dots i:nth-child(2){background:#febc2e}.dots i:nth-child(3){background:#28c840}
      .tab{padding:4px 12px;border-radius:7px 7px 0 0;background:#0d1117;font-weight:600}
      .addr{flex:1;padding:4px 10px;border-radius:6px;background:#0d1117;color:#8b98a9}
      img{display:block}
    </style>
    ${frame(shots[0], "Ada · ringsync chess")}${frame(shots[1], "Linus · ringsync chess")}</body></html>`;
  const page = await browser.newPage({ viewport: { width: 2 * w + 84, height: h + 34 + 58 }, deviceScaleFactor: 1 });
  try {
    await page.setContent(html);
    return await page.screenshot({ type: "png", fullPage: true });
  } finally {
    await page.close();
  }
}
