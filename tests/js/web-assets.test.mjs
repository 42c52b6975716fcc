// The server embeds the browser files from the table in src/web.rs; a client module missing there
// would load from disk in the unit tests but 404 in the browser. No server, no build needed.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";

const src = fileURLToPath(new URL("../../src/", import.meta.url));

test("every src/web/client/*.js module is embedded by src/web.rs", () => {
  const table = readFileSync(src + "web.rs", "utf8");
  // Asset { path: "/client/patch.js", body: include_str!("web/client/patch.js"), ... }
  const assets = new Map(
    [...table.matchAll(/Asset\s*\{\s*path:\s*"([^"]+)",\s*body:\s*include_str!\("([^"]+)"\)/g)].map((m) => [m[1], m[2]]),
  );
  assert.equal(assets.get("/client.js"), "web/client.js", "could not parse the asset table in src/web.rs");
  const modules = readdirSync(src + "web/client").filter((f) => f.endsWith(".js"));
  assert.ok(modules.length > 0, "no modules in src/web/client");
  for (const f of modules) {
    assert.equal(assets.get(`/client/${f}`), `web/client/${f}`, `src/web.rs must serve /client/${f} from web/client/${f}`);
  }
});

test("every demo page and the scripts it loads are embedded by src/web.rs", () => {
  const table = readFileSync(src + "web.rs", "utf8");
  const assets = new Map(
    [...table.matchAll(/Asset\s*\{\s*path:\s*"([^"]+)",\s*body:\s*include_str!\("([^"]+)"\)/g)].map((m) => [m[1], m[2]]),
  );
  assert.equal(assets.get("/"), "web/index.html");
  assert.equal(assets.get("/todo.html"), "web/todo.html", "the to-do demo is served at /todo.html");
  for (const page of ["index.html", "todo.html"]) {
    const html = readFileSync(src + "web/" + page, "utf8");
    const scripts = [...html.matchAll(/<script[^>]*src="\.\/([^"]+)"/g)].map((m) => m[1]);
    assert.ok(scripts.length > 0, `no script in ${page}`);
    for (const s of scripts) {
      assert.equal(assets.get(`/${s}`), `web/${s}`, `${page} loads ./${s}, which src/web.rs must serve`);
      // The page's own script imports the client library by its public path.
      assert.match(readFileSync(src + "web/" + s, "utf8"), /from "\.\/client\.js"/);
    }
  }
  assert.match(readFileSync(src + "web/index.html", "utf8"), /href="\/todo\.html"/, "the chess page links the to-do demo");
});
