// ringsync browser client: the one public entry point. Dependency-free ES modules, no build step;
// this file only re-exports. Served as /client.js, so its relative imports load /client/*.js.
//
// Three layers, each usable on its own:
//
//   1. ./client/patch.js — JSON Patch (`applyPatch`): RFC 6902 plus ringsync's `incr` and its
//      id-addressed list ops (`list_insert`, `list_move`, `list_remove`, `list_update`), applied
//      persistently (the input document is never modified; unchanged subtrees are shared).
//   2. ./client/sync.js — `SyncCore`: the protocol state machine, free of sockets and timers. It
//      consumes server messages and local calls and returns effects to perform.
//   3. ./client/room.js — `connect()` → `Room`: the WebSocket transport around a SyncCore:
//      reconnects with backoff and jitter, resumes sessions, heartbeats, throttles presence;
//      `room.undo()` / `room.redo()` / `room.revert(rev)` with `canUndo` / `canRedo` and the
//      "history" event; `room.list(path)` → ./client/list.js `List` (id-addressed list helpers).
//
// Wire protocol: docs/PROTOCOL.md.

export { PatchError, parsePointer, escapePointerToken, deepEqual, applyPatch } from "./client/patch.js";
export { SyncCore } from "./client/sync.js";
export { connect, Room, roomUrl } from "./client/room.js";
export { List, randomId } from "./client/list.js";
