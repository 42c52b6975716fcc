// Fixtures for the browser tests: the real ringsync binary as a child process, a TCP proxy that can
// cut or mute a page's connection, and headless Chromium through playwright-core.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const serverBin = resolve(repoRoot, process.env.RINGSYNC_BIN ?? "target/debug/ringsync");
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

/**
 * Why the browser tests cannot run here, or null when they can. With RINGSYNC_REQUIRE_BROWSER=1
 * (scripts/test.sh sets it) a missing prerequisite is an error, never a silent skip.
 */
export function skipReason() {
  const reason = missingPrerequisite();
  if (reason && process.env.RINGSYNC_REQUIRE_BROWSER === "1") {
    throw new Error(`browser tests required but cannot run: ${reason}`);
  }
  return reason;
}

function missingPrerequisite() {
  if (!existsSync(serverBin)) return `server binary not found at ${serverBin}: run \`cargo build\` or set RINGSYNC_BIN`;
  if (!existsSync(chromiumPath)) return `Chromium not found at ${chromiumPath}: install Debian's chromium or set CHROMIUM`;
  if (!existsSync(join(repoRoot, "tests/js/node_modules/playwright-core"))) return "playwright-core missing: run `npm install` in tests/js";
  return null;
}

const children = new Set();
const tempDirs = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

/**
 * The environment for the server: ours without any RINGSYNC_* variable. The server reads those as
 * its flags, so a developer's shell must not change what the tests run; the harness's own
 * (RINGSYNC_BIN, RINGSYNC_REQUIRE_BROWSER, RINGSYNC_WEB_DIR) are read here, not by the server.
 */
function serverEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("RINGSYNC_")));
}

/**
 * Starts the server and waits for its "listening on http://127.0.0.1:PORT" line. SIGTERM makes it
 * close every WebSocket with 1001 within `--shutdown-timeout`, set short here. Rooms are stored in
 * `dataDir` (a fresh temporary directory unless given, removed when the tests exit) unless `args`
 * say `--memory-only`; pass the returned `dataDir` to a second server to restart on the same rooms.
 * @param {{listen?: string, args?: string[], dataDir?: string, timeoutMs?: number}} [opts]
 */
export async function startServer({ listen = "127.0.0.1:0", args = [], dataDir, timeoutMs = 15000 } = {}) {
  if (!dataDir && !args.includes("--memory-only") && !args.includes("--data-dir")) {
    dataDir = mkdtempSync(join(tmpdir(), "ringsync-test-"));
    tempDirs.add(dataDir);
  }
  const storage = dataDir ? ["--data-dir", dataDir] : [];
  const child = spawn(serverBin, ["--listen", listen, "--shutdown-timeout", "1", ...storage, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...serverEnv(), RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  children.add(child);
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-8000);
  });
  const port = await new Promise((resolvePort, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not report its port in ${timeoutMs} ms\n${stderr}`)), timeoutMs);
    child.stdout.on("data", (d) => {
      out += d;
      const m = /listening on http:\/\/[^\s:]+:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolvePort(Number(m[1]));
      }
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (${code ?? signal})\n${stderr}`));
    });
  });
  child.stdout.resume();
  const exited = new Promise((r) => child.once("exit", r));
  return {
    port,
    dataDir,
    url: `http://127.0.0.1:${port}`,
    get stderr() {
      return stderr;
    },
    /** Stops the server: SIGTERM (graceful), SIGKILL if it lingers. */
    async stop({ signal = "SIGTERM", graceMs = 5000 } = {}) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(t);
      children.delete(child);
    },
  };
}

/**
 * Whether the server at `base` has undo/redo: its `welcome` carries `canUndo` (issue #14). A page of
 * `browser` opens one WebSocket to a scratch room and closes it (node 20 has no WebSocket). Tests of
 * the history features skip without it, so they run by themselves once the server side is in.
 */
export async function serverHasHistory(browser, base, timeoutMs = 10000) {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(`${base}/`, { timeout: timeoutMs });
    return await page.evaluate(
      ([url, ms]) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(url);
          const t = setTimeout(() => reject(new Error("no welcome from the server")), ms);
          ws.onmessage = (ev) => {
            const msg = JSON.parse(ev.data);
            if (msg.type !== "welcome") return;
            clearTimeout(t);
            ws.close();
            resolve(typeof msg.canUndo === "boolean");
          };
          ws.onerror = () => reject(new Error("probe WebSocket failed"));
        }),
      [`${base.replace(/^http/, "ws")}/v1/rooms/history-probe/ws`, timeoutMs],
    );
  } finally {
    await context.close();
  }
}

/** GET/POST JSON against the server's HTTP API. */
export async function http(base, path, body) {
  const res = await fetch(base + path, body === undefined ? {} : { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/**
 * A TCP proxy in front of the server, so a test can misbehave the network for one page:
 * `hold()` delays everything the server sends until `release()` (a slow link),
 * `mute()` silently drops everything the server sends (the page's messages still arrive),
 * `cut()` kills every connection and refuses new ones, `restore()` passes traffic again.
 */
export async function startProxy(targetPort) {
  let mode = "pass";
  const pairs = new Set();
  const server = net.createServer((down) => {
    if (mode === "cut") {
      down.destroy();
      return;
    }
    const up = net.connect(targetPort, "127.0.0.1");
    const pair = { down, up, muted: false, held: null };
    pairs.add(pair);
    const kill = () => {
      down.destroy();
      up.destroy();
      pairs.delete(pair);
    };
    down.on("data", (d) => up.write(d));
    up.on("data", (d) => {
      if (pair.muted) return;
      if (pair.held) pair.held.push(d);
      else down.write(d);
    });
    down.on("error", kill).on("close", kill);
    up.on("error", kill).on("close", kill);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    hold() {
      for (const p of pairs) p.held ??= [];
    },
    release() {
      for (const p of pairs) {
        for (const d of p.held ?? []) p.down.write(d);
        p.held = null;
      }
    },
    mute() {
      for (const p of pairs) p.muted = true;
    },
    cut() {
      mode = "cut";
      for (const p of [...pairs]) {
        p.down.resetAndDestroy?.() ?? p.down.destroy();
        p.up.destroy();
      }
      pairs.clear();
    },
    restore() {
      mode = "pass";
    },
    close() {
      this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}

/** Launches headless Chromium (Debian's, through playwright-core). */
export async function launchBrowser() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: chromiumPath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
    timeout: 30000,
  });
}

/**
 * For working on src/web without rebuilding the binary: with RINGSYNC_WEB_DIR set, /client.js, the
 * modules it imports (/client/*.js) and /demo.js come from that directory instead of the server's
 * embedded copies. (Not index.html: Chromium's local-network-access checks then treat the page as
 * public and block its WebSocket.) A new client module goes here as well as into src/web.rs.
 */
export async function maybeServeWebFromDisk(context) {
  const dir = process.env.RINGSYNC_WEB_DIR;
  if (!dir) return;
  const js = (file) => [file, "text/javascript"];
  const files = {
    "/client.js": js("client.js"),
    "/client/patch.js": js("client/patch.js"),
    "/client/sync.js": js("client/sync.js"),
    "/client/room.js": js("client/room.js"),
    "/client/list.js": js("client/list.js"),
    "/demo.js": js("demo.js"),
    "/todo.js": js("todo.js"),
  };
  await context.route(
    (url) => Object.hasOwn(files, url.pathname),
    (route) => {
      const [file, contentType] = files[new URL(route.request().url()).pathname];
      route.fulfill({ status: 200, contentType, body: readFileSync(join(dir, file)) });
    },
  );
}
