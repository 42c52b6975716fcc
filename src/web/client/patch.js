// JSON Patch for the ringsync client: RFC 6902 (with RFC 6901 pointers) plus ringsync's `incr` and
// its id-addressed list ops (`list_insert`, `list_move`, `list_remove`, `list_update`), with the
// server's semantics exactly (docs/PROTOCOL.md), so an optimistic result equals the committed one.
//
// Patches apply *persistently*: the input document is never modified; only the containers along
// each op's path are copied, everything else is shared between old and new. That makes SyncCore's
// rebase (./sync.js) cheap and exact. No I/O, no dependencies.

/**
 * Any JSON value.
 * @typedef {null | boolean | number | string | Json[] | {[key: string]: Json}} Json
 */

/**
 * One JSON Patch operation (RFC 6902) or ringsync's `incr` (adds `value` to the number at `path`,
 * creating it when absent).
 * @typedef {{op: "add"|"replace"|"test"|"incr", path: string, value: Json}
 *   | {op: "remove", path: string}
 *   | {op: "move"|"copy", from: string, path: string}
 *   | {op: "list_insert", path: string, after: string|null, value: {id: string}}
 *   | {op: "list_move", path: string, id: string, after: string|null}
 *   | {op: "list_remove", path: string, id: string}
 *   | {op: "list_update", path: string, id: string, value: object}} Op
 */

/** A patch that does not apply. `code` matches the server's reject codes. */
export class PatchError extends Error {
  /**
   * @param {"invalid"|"test_failed"} code
   * @param {string} message
   * @param {number} [index] index of the failing op in its patch
   */
  constructor(code, message, index) {
    super(index === undefined ? message : `op ${index}: ${message}`);
    this.name = "PatchError";
    this.code = code;
    this.index = index;
  }
}

const invalid = (message) => new PatchError("invalid", message);

/**
 * Splits an RFC 6901 pointer into unescaped reference tokens ("" → []).
 * @param {string} pointer
 * @returns {string[]}
 */
export function parsePointer(pointer) {
  if (typeof pointer !== "string") throw invalid("a path must be a string");
  if (pointer === "") return [];
  if (pointer[0] !== "/") throw invalid(`JSON Pointer ${JSON.stringify(pointer)} must start with "/"`);
  if (/~(?![01])/.test(pointer)) throw invalid(`JSON Pointer ${JSON.stringify(pointer)} has a bad "~" escape`);
  return pointer.slice(1).split("/").map((t) => t.replace(/~1/g, "/").replace(/~0/g, "~"));
}

/**
 * Escapes one reference token for use in a pointer ("a/b" → "a~1b").
 * @param {string} token
 */
export function escapePointerToken(token) {
  return String(token).replace(/~/g, "~0").replace(/\//g, "~1");
}

/**
 * JSON equality as `test` needs it: objects compare regardless of key order.
 * @param {Json} a
 * @param {Json} b
 * @returns {boolean}
 */
export function deepEqual(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  }
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
}

/** A JSON object (not an array, not null). */
export const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v);

/** Strict RFC 6901 array index: "0" or digits without a leading zero. -1 when malformed. */
function arrayIndex(token) {
  return /^(0|[1-9][0-9]*)$/.test(token) ? Number(token) : -1;
}

/** The child of `node` at `token`, or `undefined` (JSON has no `undefined`, so that means absent). */
function child(node, token) {
  if (Array.isArray(node)) {
    const i = arrayIndex(token);
    return i >= 0 && i < node.length ? node[i] : undefined;
  }
  return isObject(node) && Object.hasOwn(node, token) ? node[token] : undefined;
}

/** The value at `tokens`, or `undefined` when the path does not exist. */
function lookup(doc, tokens) {
  let node = doc;
  for (let i = 0; i < tokens.length && node !== undefined; i++) node = child(node, tokens[i]);
  return node;
}

/** The value at `tokens`; throws `invalid` when the path does not exist. */
function getAt(doc, tokens, path) {
  const node = lookup(doc, tokens);
  if (node === undefined) throw invalid(`path ${path} does not exist`);
  return node;
}

/** A copy of container `node` whose child `token` is `value` (objects keep key order). */
function withChild(node, token, value) {
  if (Array.isArray(node)) {
    const copy = node.slice();
    copy[arrayIndex(token)] = value;
    return copy;
  }
  // A computed key defines an own property, even for "__proto__".
  return { ...node, [token]: value };
}

/**
 * Rebuilds the path to the parent of `tokens`' last token, calling `edit(parent, lastToken)` to get
 * the new parent. Only the containers on the path are copied.
 */
function editParent(doc, tokens, path, edit) {
  const walk = (node, depth) => {
    if (depth === tokens.length - 1) return edit(node, tokens[depth]);
    const next = child(node, tokens[depth]);
    if (next === undefined) throw invalid(`path ${path} does not exist`);
    return withChild(node, tokens[depth], walk(next, depth + 1));
  };
  return walk(doc, 0);
}

function addAt(doc, tokens, path, value) {
  if (tokens.length === 0) return value;
  return editParent(doc, tokens, path, (parent, last) => {
    if (Array.isArray(parent)) {
      const i = last === "-" ? parent.length : arrayIndex(last);
      if (i < 0 || i > parent.length) throw invalid(`index ${JSON.stringify(last)} is out of bounds at ${path}`);
      const copy = parent.slice();
      copy.splice(i, 0, value);
      return copy;
    }
    if (!isObject(parent)) throw invalid(`parent of ${path} is not a container`);
    return withChild(parent, last, value);
  });
}

function removeAt(doc, tokens, path) {
  if (tokens.length === 0) throw invalid("cannot remove the whole document");
  return editParent(doc, tokens, path, (parent, last) => {
    if (child(parent, last) === undefined) throw invalid(`path ${path} does not exist`);
    if (Array.isArray(parent)) {
      const copy = parent.slice();
      copy.splice(arrayIndex(last), 1);
      return copy;
    }
    const copy = { ...parent };
    delete copy[last];
    return copy;
  });
}

function replaceAt(doc, tokens, path, value) {
  if (tokens.length === 0) return value;
  return editParent(doc, tokens, path, (parent, last) => {
    if (child(parent, last) === undefined) throw invalid(`path ${path} does not exist`);
    return withChild(parent, last, value);
  });
}

/**
 * Applies one op; returns the new document.
 * @param {Json} doc
 * @param {Op} op
 * @returns {Json}
 */
function applyOp(doc, op) {
  if (!isObject(op)) throw invalid("an op must be an object");
  const path = op.path;
  const tokens = parsePointer(path);
  const needValue = () => {
    if (!Object.hasOwn(op, "value") || op.value === undefined) throw invalid(`"${op.op}" needs a value`);
    return op.value;
  };
  const needFrom = () => {
    if (typeof op.from !== "string") throw invalid(`"${op.op}" needs a "from" path`);
    return op.from;
  };
  switch (op.op) {
    case "add":
      return addAt(doc, tokens, path, needValue());
    case "remove":
      return removeAt(doc, tokens, path);
    case "replace":
      return replaceAt(doc, tokens, path, needValue());
    case "move": {
      const from = needFrom();
      const fromTokens = parsePointer(from);
      const value = getAt(doc, fromTokens, from);
      if (from === path) return doc;
      if (path.startsWith(from + "/")) throw invalid(`cannot move ${from} into its own child ${path}`);
      return addAt(removeAt(doc, fromTokens, from), tokens, path, value);
    }
    case "copy": {
      const from = needFrom();
      return addAt(doc, tokens, path, getAt(doc, parsePointer(from), from));
    }
    case "test": {
      const expected = needValue();
      if (!deepEqual(getAt(doc, tokens, path), expected)) throw new PatchError("test_failed", `test failed at ${path}`);
      return doc;
    }
    case "incr": {
      const n = needValue();
      if (typeof n !== "number" || !Number.isFinite(n)) throw invalid(`"incr" needs a numeric value`);
      const old = lookup(doc, tokens);
      if (old === undefined) return addAt(doc, tokens, path, n); // created with n (its parent must exist)
      if (typeof old !== "number") throw invalid(`incr target ${path} is not a number`);
      return replaceAt(doc, tokens, path, old + n);
    }
    case "list_insert":
    case "list_move":
    case "list_remove":
    case "list_update":
    {
      const list = getAt(doc, tokens, path);
      const next = applyListOp(list, op, path);
      return next === list ? doc : replaceAt(doc, tokens, path, next); // a no-op shares everything
    }
    default:
      throw invalid(`unknown op ${JSON.stringify(op.op)}`);
  }
}

/**
 * The id-addressed list ops on the array `list` (at `path`); returns the new array. The rules make
 * every op made against a stale view still apply, so concurrent edits by id all commit and converge:
 * - `after` naming an element that is not there (removed meanwhile) → the element goes to the end;
 *   `after: null` → the head.
 * - move / remove / update of an id that is not there → no-op (nothing lost, no error).
 * - inserting an id already present → `invalid` (ids are the client's job: see `randomId`).
 * - two inserts after the same anchor: each goes immediately after it, so the later one (in commit
 *   order) ends up first; two moves of the same element: the later commit wins.
 * - `path` not an array, or an element without a string `id` → `invalid`.
 * @param {Json} list
 * @param {any} op
 * @param {string} path
 * @returns {Json[]}
 */
function applyListOp(list, op, path) {
  if (!Array.isArray(list)) throw invalid(`${op.op} target ${path} is not an array`);
  const ids = new Set();
  for (const el of list) {
    if (!isObject(el) || typeof el.id !== "string") throw invalid(`an element of ${path} has no string "id"`);
    ids.add(el.id);
  }
  const needId = () => {
    if (typeof op.id !== "string") throw invalid(`"${op.op}" needs a string "id"`);
    return op.id;
  };
  const needAfter = () => {
    if (!Object.hasOwn(op, "after") || (op.after !== null && typeof op.after !== "string")) {
      throw invalid(`"${op.op}" needs "after": an element id or null`);
    }
    return op.after;
  };
  /** Where an element placed after `after` goes in `arr`. */
  const slot = (arr, after) => {
    if (after === null) return 0;
    const i = arr.findIndex((el) => el.id === after);
    return i < 0 ? arr.length : i + 1;
  };
  switch (op.op) {
    case "list_insert": {
      const after = needAfter();
      const value = op.value;
      if (!isObject(value) || typeof value.id !== "string") throw invalid(`"list_insert" needs a value that is an object with a string "id"`);
      if (ids.has(value.id)) throw invalid(`id ${JSON.stringify(value.id)} is already in ${path}`);
      const copy = list.slice();
      copy.splice(slot(list, after), 0, value);
      return copy;
    }
    case "list_move": {
      const id = needId();
      const after = needAfter();
      if (!ids.has(id) || after === id) return list;
      const from = list.findIndex((el) => el.id === id);
      const copy = list.slice();
      const [el] = copy.splice(from, 1);
      copy.splice(slot(copy, after), 0, el);
      return copy;
    }
    case "list_remove": {
      const id = needId();
      return ids.has(id) ? list.filter((el) => el.id !== id) : list;
    }
    case "list_update": {
      const id = needId();
      const value = op.value;
      if (!isObject(value)) throw invalid(`"list_update" needs a value that is an object`);
      if (Object.hasOwn(value, "id") && value.id !== id) throw invalid(`"list_update" cannot change an element's id`);
      if (!ids.has(id)) return list;
      return list.map((el) => {
        if (el.id !== id) return el;
        const merged = { ...el };
        for (const [k, v] of Object.entries(value)) {
          if (v === null) delete merged[k];
          else Object.defineProperty(merged, k, { value: v, enumerable: true, writable: true, configurable: true }); // even "__proto__"
        }
        return merged;
      });
    }
  }
  throw invalid(`unknown op ${JSON.stringify(op.op)}`);
}

/**
 * Applies a patch atomically and persistently: returns the new document and leaves `doc` untouched
 * (unchanged subtrees are shared between the two, so treat both as read-only).
 * @param {Json} doc
 * @param {Op[]} ops
 * @returns {Json}
 * @throws {PatchError} naming the first op that failed
 */
export function applyPatch(doc, ops) {
  if (!Array.isArray(ops)) throw invalid("a patch must be an array of operations");
  let result = doc;
  for (let i = 0; i < ops.length; i++) {
    try {
      result = applyOp(result, ops[i]);
    } catch (e) {
      if (e instanceof PatchError && e.index === undefined) {
        e.index = i;
        e.message = `op ${i}: ${e.message}`;
      }
      throw e;
    }
  }
  return result;
}
