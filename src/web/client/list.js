// Id-addressed list helpers for a Room: `room.list("/todos")` → `List`, whose methods make the
// protocol's `list_insert` / `list_move` / `list_remove` / `list_update` ops (./patch.js applies them
// with the server's semantics) and send them as ordinary changes, in "paths" mode by default: list
// ops by id never conflict with each other, so two people inserting and reordering at once both
// commit and converge. `randomId()` makes the element ids (unique ids are the client's job).

/** @typedef {import("./patch.js").Json} Json */
/** @typedef {import("./sync.js").Mode} Mode */

const ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/**
 * A random id of `length` characters from [0-9a-zA-Z] (crypto-random where available); 12
 * characters make a collision between two clients practically impossible.
 * @param {number} [length=12]
 * @returns {string}
 */
export function randomId(length = 12) {
  const bytes = new Uint8Array(length);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let id = "";
  for (const b of bytes) id += ALPHABET[b % ALPHABET.length];
  return id;
}

/**
 * @typedef {object} ListChangeOptions
 * @property {Mode} [mode="paths"]
 * @property {Record<string, Json>} [meta] stored and relayed with the change (e.g. {label: "added milk"})
 */

/**
 * A view of the array at `path` in a room, whose elements are objects with a string `id`. Every
 * method applies at once (optimistically) and returns what `room.change` returns, the clientReqId,
 * except `insertAfter`, which returns the new element's id.
 */
export class List {
  /**
   * @param {{state: Json, change: (ops: any[], options?: object) => number}} room
   * @param {string} path a JSON Pointer to the array ("/todos")
   */
  constructor(room, path) {
    if (typeof path !== "string") throw new TypeError("path must be a JSON Pointer string");
    this.room = room;
    this.path = path;
  }

  /** @returns {Array<{id: string} & Record<string, Json>>} the elements as the room shows them now ([] when absent) */
  get items() {
    let node = this.room.state;
    if (this.path !== "") {
      for (const t of this.path.slice(1).split("/").map((x) => x.replace(/~1/g, "/").replace(/~0/g, "~"))) {
        node = node !== null && typeof node === "object" && Object.hasOwn(node, t) ? node[t] : undefined;
      }
    }
    return Array.isArray(node) ? node : [];
  }

  /** @param {string} id */
  get(id) {
    return this.items.find((el) => el?.id === id);
  }

  /**
   * Inserts `value` just after element `afterId` (null: at the head; an id that is gone by the
   * time the server applies it: at the end). `value.id` is made with `randomId()` when absent.
   * @param {string|null} afterId
   * @param {Record<string, Json>} value
   * @param {ListChangeOptions} [options]
   * @returns {string} the new element's id
   */
  insertAfter(afterId, value, options) {
    const el = { ...value };
    if (typeof el.id !== "string") el.id = randomId();
    this.#change([{ op: "list_insert", path: this.path, after: afterId, value: el }], options);
    return el.id;
  }

  /**
   * Appends at the end of the list as the client sees it now (after its current last element).
   * @param {Record<string, Json>} value
   * @param {ListChangeOptions} [options]
   * @returns {string} the new element's id
   */
  push(value, options) {
    return this.insertAfter(this.items.at(-1)?.id ?? null, value, options);
  }

  /**
   * Moves element `id` to just after `afterId` (null: the head). A no-op if `id` is gone.
   * @param {string} id
   * @param {string|null} afterId
   * @param {ListChangeOptions} [options]
   */
  move(id, afterId, options) {
    return this.#change([{ op: "list_move", path: this.path, id, after: afterId }], options);
  }

  /**
   * Removes element `id` (a no-op if it is gone already).
   * @param {string} id
   * @param {ListChangeOptions} [options]
   */
  remove(id, options) {
    return this.#change([{ op: "list_remove", path: this.path, id }], options);
  }

  /**
   * Shallow-merges `fields` into element `id` (a field set to null is removed; `id` cannot change).
   * @param {string} id
   * @param {Record<string, Json>} fields
   * @param {ListChangeOptions} [options]
   */
  update(id, fields, options) {
    return this.#change([{ op: "list_update", path: this.path, id, value: fields }], options);
  }

  #change(ops, { mode = "paths", meta } = {}) {
    return this.room.change(ops, meta === undefined ? { mode } : { mode, meta });
  }
}
