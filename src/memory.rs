//! The process's memory budget (`--max-memory`) and the estimates it is kept in.
//!
//! Every byte a room keeps for long — its state, its ring of changes, its cached snapshot and
//! delta frame, its broadcast buffer and presence — is accounted in one process-wide [`Budget`]
//! through a [`Charge`]: each holder sets its charge to what it holds now, under its own lock,
//! and a dropped holder releases it. The budget is one atomic sum; nothing here locks.
//!
//! What is held is estimated from the data, not from the encoding: [`value_heap`] walks a
//! `serde_json::Value` and counts the heap blocks it owns (strings, array buffers, each object's
//! entry vector and hash index, with serde_json's `preserve_order` map), and [`op_heap`] adds an
//! op's pointers. [`Heap::total`] is what the blocks occupy in the allocator ([`chunk`]), so an
//! estimate stands for resident memory, not for requested bytes. `tests/memory_limits.rs` checks the
//! estimates against a counting allocator and the budgets against the real process's RSS.
//!
//! Policy (see [`Budget`]): history is a cache, state is not. Rings give up their oldest changes
//! when the budget is tight; a change that still does not fit is refused, and new rooms are
//! refused once the budget is 7/8 full, so the rooms already in memory keep a margin to work in.
//!
//! Invariant: `Budget::used` is the sum of every live [`Charge`] on it (each adjustment is one
//! atomic add or subtract of a charge's own change).

use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::{Map, Value};

use crate::patch::{Op, Pointer};

/// What a block of `n` bytes occupies in the allocator (glibc on 64 bits: an 8-byte header,
/// rounded up to 16, at least 32; nothing for an empty block, which is never allocated).
pub const fn chunk(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let c = (n + 8 + 15) & !15;
    if c < 32 { 32 } else { c }
}

/// What an empty room costs: the room and its registry entry, its lanes, channels and names
/// (measured: see the "Memory" section of docs/BENCHMARKS.md).
pub const ROOM_BASE: usize = 2048;

const VALUE: usize = size_of::<Value>();
/// One entry of an object: its hash, its key and its value.
const MAP_ENTRY: usize = size_of::<usize>() + size_of::<String>() + VALUE;

/// Heap memory owned by some data: bytes in blocks, how many blocks, and what they occupy in
/// the allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heap {
    pub bytes: usize,
    pub blocks: usize,
    /// The blocks' [`chunk`]s.
    pub resident: usize,
}

impl Heap {
    /// One block of `bytes` (none when empty: empty strings and vectors do not allocate).
    pub fn block(bytes: usize) -> Heap {
        Heap { bytes, blocks: usize::from(bytes > 0), resident: chunk(bytes) }
    }

    /// `n` blocks of `bytes` each.
    pub fn blocks(n: usize, bytes: usize) -> Heap {
        Heap { bytes: n * bytes, blocks: if bytes > 0 { n } else { 0 }, resident: n * chunk(bytes) }
    }

    /// Resident bytes: what the blocks occupy in the allocator.
    pub fn total(self) -> usize {
        self.resident
    }
}

impl std::ops::Add for Heap {
    type Output = Heap;
    fn add(self, o: Heap) -> Heap {
        Heap {
            bytes: self.bytes + o.bytes,
            blocks: self.blocks + o.blocks,
            resident: self.resident + o.resident,
        }
    }
}

impl std::ops::AddAssign for Heap {
    fn add_assign(&mut self, o: Heap) {
        *self = *self + o;
    }
}

impl std::iter::Sum for Heap {
    fn sum<I: Iterator<Item = Heap>>(iter: I) -> Heap {
        iter.fold(Heap::default(), |a, b| a + b)
    }
}

/// The heap a value owns (not counting the `Value` itself, which lives in its parent).
pub fn value_heap(v: &Value) -> Heap {
    walk(v, false)
}

/// The heap a clone of `v` would own: a clone's strings and arrays are exactly as long as they
/// hold (a parsed array keeps the spare room it grew). The state holds clones of the values
/// changes bring.
pub fn cloned_heap(v: &Value) -> Heap {
    walk(v, true)
}

/// Walks `v` recursively, allocating nothing (it runs several times per commit). Every value
/// the server holds is at most 128 levels deep (serde_json's parser limit, `patch::MAX_DEPTH`
/// for states), a few KiB of stack.
fn walk(v: &Value, cloned: bool) -> Heap {
    let len = |s: &String| if cloned { s.len() } else { s.capacity() };
    match v {
        Value::String(s) => Heap::block(len(s)),
        Value::Array(a) => {
            let slots = Heap::block(if cloned { a.len() } else { a.capacity() } * VALUE);
            slots + a.iter().map(|v| walk(v, cloned)).sum()
        }
        Value::Object(m) => {
            object_blocks(m.len()) + m.iter().map(|(k, v)| Heap::block(len(k)) + walk(v, cloned)).sum()
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Heap::default(),
    }
}

/// The heap an object owns, its members included.
pub fn object_heap(m: &Map<String, Value>) -> Heap {
    object_blocks(m.len()) + m.iter().map(|(k, v)| Heap::block(k.capacity()) + value_heap(v)).sum()
}

/// An object's own two blocks for `len` members: the entry vector and the hash index.
/// serde_json's map does not tell its capacity, but indexmap keeps its entry vector as large as
/// its index can hold, whether the map grew by inserts (parsed) or was cloned.
fn object_blocks(len: usize) -> Heap {
    if len == 0 {
        return Heap::default();
    }
    let buckets = match len {
        0..4 => 4,
        4..8 => 8,
        _ => (len * 8 / 7).next_power_of_two(),
    };
    let entries = if buckets < 8 { buckets - 1 } else { buckets / 8 * 7 }.max(len);
    // hashbrown: the slots (aligned to its 16-byte groups), a control byte each, one group more.
    let index = (buckets * size_of::<usize>()).next_multiple_of(16) + buckets + 16;
    Heap::block(entries * MAP_ENTRY) + Heap::block(index)
}

/// A value held in the state (a clone of what a change brought): its slot and its heap.
fn node(v: &Value) -> usize {
    VALUE + cloned_heap(v).total()
}

/// How a pointer came to be, which decides its token vector's capacity (a pointer does not
/// tell it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Parsed from a message: its vector grew by pushes (4, 8, 16, ... tokens).
    Parsed,
    /// Built by the server (a clone or a slice of another): exactly as many as it holds.
    Built,
}

/// The heap a pointer owns: its token vector and each token.
pub fn pointer_heap(p: &Pointer, origin: Origin) -> Heap {
    let tokens = p.tokens();
    let cap = match origin {
        Origin::Parsed if !tokens.is_empty() => tokens.len().next_power_of_two().max(4),
        _ => tokens.len(),
    };
    Heap::block(cap * size_of::<String>()) + tokens.iter().map(|t| Heap::block(t.capacity())).sum()
}

/// The heap one op owns (the `Op` itself lives in its vector).
pub fn op_heap(op: &Op, origin: Origin) -> Heap {
    let p = |p| pointer_heap(p, origin);
    match op {
        Op::Add { path, value } | Op::Replace { path, value } | Op::Test { path, value } => {
            p(path) + value_heap(value)
        }
        Op::Move { from, path } | Op::Copy { from, path } => p(from) + p(path),
        Op::Remove { path } | Op::Incr { path, .. } => p(path),
        Op::ListInsert { path, after, value } => p(path) + string_heap(after.as_deref()) + value_heap(value),
        Op::ListMove { path, id, after } => p(path) + string_heap(Some(id)) + string_heap(after.as_deref()),
        Op::ListRemove { path, id } => p(path) + string_heap(Some(id)),
        Op::ListUpdate { path, id, value } => p(path) + string_heap(Some(id)) + value_heap(value),
    }
}

/// The heap an op's id string owns.
fn string_heap(s: Option<&str>) -> Heap {
    Heap::block(s.map_or(0, str::len))
}

/// The heap a vector of ops owns: its buffer and every op's.
pub fn ops_heap(ops: &Vec<Op>, origin: Origin) -> Heap {
    Heap::block(ops.capacity() * size_of::<Op>()) + ops.iter().map(|op| op_heap(op, origin)).sum()
}

/// The heap a vector of pointers the server built owns.
pub fn pointers_heap(paths: &Vec<Pointer>) -> Heap {
    Heap::block(paths.capacity() * size_of::<Pointer>())
        + paths.iter().map(|p| pointer_heap(p, Origin::Built)).sum()
}

/// What committing `ops` (encoded in `encoded` bytes) may add to the process, before it is
/// applied: the ring's copy of the ops, the state's copy of their values, the encoded frames.
/// An upper estimate: values an op replaces move from the state into the change, costing nothing.
pub fn change_cost(ops: &Vec<Op>, encoded: usize) -> usize {
    2 * ops_heap(ops, Origin::Parsed).total() + 2 * encoded
}

/// A bound on [`change_cost`] that costs nothing to compute: no JSON text holds more than ~70
/// heap bytes per encoded byte (`{"":0}`, 6 bytes, makes an object of ~400), twice that with the
/// state's copy. While this fits, the exact estimate is not needed.
pub fn change_cost_bound(encoded: usize) -> usize {
    encoded.saturating_mul(160).saturating_add(4096)
}

/// A member's own cost in an object besides its value: the entry's hash and key, its index
/// slot, the key's block. An array element (numeric token, `-`) costs one more slot: an array
/// doubles when full, and each insert pays for the spare slot it will need (amortised).
fn member(path: &Pointer) -> isize {
    match path.tokens().last() {
        Some(t) if t == "-" || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())) => VALUE as isize,
        // An object holds about 5/4 of an entry per member on average (its vector keeps room up
        // to its index's capacity) and about two index slots of 9 bytes.
        Some(t) => {
            (MAP_ENTRY * 5 / 4 + 2 * size_of::<usize>() - VALUE + Heap::block(t.len()).total()) as isize
        }
        None => 0,
    }
}

/// How much a committed change grew the state's heap (negative when it shrank), from the ops as
/// applied, their inverse (which holds every value the change took out of the state) and the
/// state after it (for what `copy` and `move` placed).
///
/// `apply` records one inverse group per op, and the inverse is the reverse of those groups in
/// order, so walking the inverse from its end pairs each op with its own group.
pub fn state_growth(ops: &[Op], inverse: &[Op], state: &Value) -> isize {
    let value_at = |p: &Pointer| state.pointer(&p.to_string()).map_or(0, |v| node(v) as isize);
    // What undoing one write takes back: a created member or element, or the value overwritten.
    let undone = |inv: Option<&Op>| match inv {
        Some(Op::Remove { path }) => member(path),
        Some(Op::Replace { value, .. } | Op::Add { value, .. }) => -(node(value) as isize),
        _ => 0,
    };
    let mut inv = inverse.iter().rev().peekable();
    let mut growth = 0isize;
    for op in ops {
        growth += match op {
            // A list op records one inverse op, none when it was a no-op, or two for an update
            // that restores a null member; which one is told by peeking (see `patch::list`).
            Op::ListInsert { value, .. } => {
                inv.next();
                (VALUE + node(value)) as isize
            }
            Op::ListRemove { path, id } => {
                match inv.next_if(|i| matches!(i, Op::ListInsert { path: p, value, .. } if p == path && value.get("id").and_then(Value::as_str) == Some(id)))
                {
                    Some(Op::ListInsert { value, .. }) => -((VALUE + node(value)) as isize),
                    _ => 0,
                }
            }
            Op::ListMove { path, id, .. } => {
                inv.next_if(|i| matches!(i, Op::ListMove { path: p, id: x, .. } if p == path && x == id));
                0
            }
            Op::ListUpdate { path, id, value } => {
                let set: isize = value
                    .as_object()
                    .map_or(0, |m| m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (MAP_ENTRY + k.len() + node(v)) as isize).sum());
                match inv.next_if(|i| match i {
                    Op::ListUpdate { path: p, id: x, .. } => p == path && x == id,
                    Op::ListInsert { path: p, value, .. } => p == path && value.get("id").and_then(Value::as_str) == Some(id),
                    _ => false,
                }) {
                    Some(Op::ListUpdate { value: old, .. }) => {
                        let held: isize = old.as_object().map_or(0, |m| m.values().filter(|v| !v.is_null()).map(|v| node(v) as isize).sum());
                        set - held
                    }
                    Some(Op::ListInsert { value: old, .. }) => {
                        inv.next(); // its `list_remove`
                        set - node(old) as isize + VALUE as isize
                    }
                    _ => 0,
                }
            }
            Op::Test { .. } => 0,
            Op::Move { from, path } if from == path => 0,
            Op::Move { from, .. } => {
                // [re-add a copy at `from`, undo the write at the destination]
                let _copy = inv.next();
                let placed = inv.next();
                undone(placed) - member(from)
            }
            Op::Remove { .. } => match inv.next() {
                Some(Op::Add { path, value }) => -(member(path) + node(value) as isize),
                _ => 0,
            },
            Op::Add { value, .. } | Op::Replace { value, .. } => node(value) as isize + undone(inv.next()),
            Op::Incr { .. } => VALUE as isize + undone(inv.next()),
            Op::Copy { .. } => {
                let placed = inv.next();
                let at = match placed {
                    Some(Op::Remove { path } | Op::Replace { path, .. }) => value_at(path),
                    _ => 0,
                };
                at + undone(placed)
            }
        };
    }
    growth
}

/// Asks glibc's malloc to keep one arena for every thread, so memory one thread frees is
/// reused by all: with an arena per worker thread each keeps its own freed blocks, and a ring at
/// its byte budget held 1.6x its accounted bytes in RSS instead of 1.0x (docs/BENCHMARKS.md,
/// "Memory"). Small blocks still come from per-thread caches without a lock. Call it first in
/// `main`, before any thread exists; an operator's own `MALLOC_ARENA_MAX` is left alone, and on
/// other allocators it does nothing.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        /// `M_ARENA_MAX` from glibc's `<malloc.h>`.
        const M_ARENA_MAX: c_int = -8;
        unsafe extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: `mallopt` only sets a malloc tunable; `M_ARENA_MAX` takes any positive
            // count, and glibc serialises the change itself.
            unsafe {
                mallopt(M_ARENA_MAX, 1);
            }
        }
    }
}

/// The process-wide memory budget: a limit and the bytes accounted against it.
#[derive(Debug, Default)]
pub struct Budget {
    /// Most bytes to account (0 = unlimited).
    limit: usize,
    /// Bytes every live charge holds.
    used: AtomicUsize,
    /// The part of `used` that rings hold (history, which can be shed).
    history: AtomicUsize,
    /// History shed to make room, in total (for a metric).
    shed: AtomicU64,
}

/// The kind of bytes a charge holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Data the server must keep (state, presence) or that leaves on its own (caches, buffers).
    Held,
    /// A ring's changes: a cache the budget may ask to shed.
    History,
}

impl Budget {
    /// A budget of `limit` bytes (0 = unlimited).
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit, ..Budget::default() })
    }

    pub fn unlimited() -> Arc<Budget> {
        Budget::new(0)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes rings hold.
    pub fn history(&self) -> usize {
        self.history.load(Ordering::Relaxed)
    }

    /// Whether `extra` more bytes fit. A check, not a reservation: concurrent commits may each
    /// pass it, so the budget can be overshot by what they add at once (a few changes).
    pub fn fits(&self, extra: usize) -> bool {
        self.limit == 0 || self.used().saturating_add(extra) <= self.limit
    }

    /// Whether a new room may be created: only while the budget is below 7/8 full, so the rooms
    /// already in memory keep the last eighth to work in.
    pub fn admits_room(&self) -> bool {
        self.limit == 0 || self.used().saturating_add(ROOM_BASE) <= self.limit - self.limit / 8
    }

    /// History to shed now: once the budget is past 7/8 full, enough to bring it back to 3/4,
    /// as far as rings hold that much (and nothing while they hold too little to matter).
    pub fn excess_history(&self) -> usize {
        let (used, history) = (self.used(), self.history());
        if self.limit == 0 || used <= self.limit - self.limit / 8 || history < self.limit / 64 {
            return 0;
        }
        (used - (self.limit - self.limit / 4)).min(history)
    }

    /// Counts history shed to make room.
    pub fn record_shed(&self, bytes: usize) {
        self.shed.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// History shed to make room since start.
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    fn adjust(&self, kind: Kind, old: usize, new: usize) {
        let counters: &[&AtomicUsize] = match kind {
            Kind::Held => &[&self.used],
            Kind::History => &[&self.used, &self.history],
        };
        for c in counters {
            if new > old {
                c.fetch_add(new - old, Ordering::Relaxed);
            } else {
                c.fetch_sub(old - new, Ordering::Relaxed);
            }
        }
    }
}

/// One holder's part of a [`Budget`]: what it holds now. Set under the holder's own lock;
/// released when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    kind: Kind,
    held: AtomicUsize,
}

impl Charge {
    pub fn new(budget: &Arc<Budget>, kind: Kind) -> Charge {
        Charge { budget: budget.clone(), kind, held: AtomicUsize::new(0) }
    }

    /// Records that the holder now holds `bytes`.
    pub fn set(&self, bytes: usize) {
        let old = self.held.swap(bytes, Ordering::Relaxed);
        self.budget.adjust(self.kind, old, bytes);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::{apply, parse_patch};
    use serde_json::json;

    #[test]
    fn charges_sum_into_the_budget_and_release_on_drop() {
        let b = Budget::new(64 * ROOM_BASE);
        let state = Charge::new(&b, Kind::Held);
        let ring = Charge::new(&b, Kind::History);
        state.set(20 * ROOM_BASE);
        ring.set(30 * ROOM_BASE);
        assert_eq!((b.used(), b.history()), (50 * ROOM_BASE, 30 * ROOM_BASE));
        assert!(b.fits(14 * ROOM_BASE) && !b.fits(14 * ROOM_BASE + 1));
        assert!(b.admits_room() && b.excess_history() == 0, "below 7/8");
        ring.set(37 * ROOM_BASE);
        assert!(!b.admits_room(), "past 7/8 no new room");
        assert_eq!(b.excess_history(), 9 * ROOM_BASE, "back to 3/4");
        ring.set(ROOM_BASE);
        assert_eq!((b.used(), b.history(), b.excess_history()), (21 * ROOM_BASE, ROOM_BASE, 0));
        drop(ring);
        assert_eq!((b.used(), b.history()), (20 * ROOM_BASE, 0));
        drop(state);
        assert_eq!(b.used(), 0);
        let free = Budget::unlimited();
        assert!(free.fits(usize::MAX) && free.admits_room() && free.excess_history() == 0);
    }

    #[test]
    fn value_heap_counts_blocks() {
        assert_eq!(value_heap(&json!(1)), Heap::default());
        assert_eq!(value_heap(&json!("abc")), Heap { bytes: 3, blocks: 1, resident: 32 });
        let arr = json!([1, 2]);
        assert_eq!(value_heap(&arr).bytes, arr.as_array().unwrap().capacity() * VALUE);
        let obj = value_heap(&json!({"a": 1}));
        assert_eq!(obj.blocks, 3, "entries, index, key");
    }

    /// Applies `ops` to `doc` and checks `state_growth` against the state's measured change.
    fn growth_matches(doc: Value, ops: Value) {
        let mut state = doc;
        let before = node(&state) as isize;
        let ops = parse_patch(ops).unwrap();
        let applied = apply(&mut state, &ops).unwrap();
        let measured = node(&state) as isize - before;
        let estimated = state_growth(&ops, &applied.inverse, &state);
        // The estimate ignores how objects' own blocks grow; it must follow the values.
        let slack = 600 + measured.abs() / 5;
        assert!((estimated - measured).abs() <= slack, "{ops:?}: estimated {estimated}, measured {measured}");
    }

    #[test]
    fn state_growth_follows_the_values() {
        let big = "x".repeat(10_000);
        let doc = json!({"a": {"b": big.clone()}, "n": 1, "list": [1, 2, 3]});
        growth_matches(doc.clone(), json!([{"op": "add", "path": "/c", "value": big}]));
        growth_matches(doc.clone(), json!([{"op": "remove", "path": "/a"}]));
        growth_matches(doc.clone(), json!([{"op": "replace", "path": "/a/b", "value": 1}]));
        growth_matches(doc.clone(), json!([{"op": "copy", "from": "/a", "path": "/c"}]));
        growth_matches(doc.clone(), json!([{"op": "move", "from": "/a", "path": "/c"}]));
        growth_matches(doc.clone(), json!([{"op": "move", "from": "/a", "path": "/list/-"}]));
        growth_matches(doc.clone(), json!([{"op": "incr", "path": "/n", "value": 1}]));
        growth_matches(doc.clone(), json!([{"op": "add", "path": "/list/-", "value": big}]));
        growth_matches(
            doc,
            json!([
                {"op": "add", "path": "/a/b", "value": "y"},
                {"op": "copy", "from": "/list", "path": "/l2"},
                {"op": "test", "path": "/n", "value": 1},
                {"op": "remove", "path": "/list/0"}
            ]),
        );
    }
}
