//! One room: the single ordering point for its state.
//!
//! A room owns the authoritative JSON state (root always an object), the revision counter, the
//! ring of recent committed changes, the cached snapshot, and its two ephemeral lanes
//! ([`crate::presence`] and [`crate::broadcast`]). It is synchronous and knows nothing of sockets: the shell feeds it decoded
//! changes and executes what it decides each reader gets. The parts live beside this file:
//! [`change`] (what is submitted and what is kept), `conflict` (the `rev` and `paths` mode checks),
//! [`catchup`] (the one decision of what a reader is sent) and [`snapshot`] (the state encoded once
//! per revision).
//!
//! Memory: everything the room keeps is charged to the process's [`Budget`] (see
//! [`crate::memory`]): the state (estimated op by op), the ring (each change's footprint), the
//! cached snapshot and delta frame, and the two lanes. A change that would not fit is refused
//! with `memory_full` after the room has shed its own oldest history; [`Room::shed_history`]
//! lets the registry shed more when the whole process is short.
//!
//! Retirement: a room removed from the registry (an admin delete) is [`Room::retire`]d under its
//! write lock first; from then on every commit is refused with `gone`, so a handle still held by
//! an in-flight request can never commit into a room nobody sees.
//!
//! Locking: `inner` is a `parking_lot::RwLock` that is never held across `.await` (the room has no
//! async code at all). `commit` holds the write lock only to check, apply, push to the ring and
//! bump the revision; the change's ops are encoded before the lock is taken. Readers take the read
//! lock to clone a few `Arc`s. Invariants: `rev` equals the ring's head; every revision
//! `oldest_base+1 ..= rev` is in the ring; a rejected change leaves state and rev as they were;
//! the `history` charge is the ring's footprint (both change only under the write lock).

pub mod catchup;
pub mod change;
mod conflict;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::watch;

pub use catchup::{CatchUp, Cursor, SnapshotReason, delta_for};
pub use change::{Change, ChangeRequest};
pub use snapshot::Snapshot;

use crate::broadcast::Broadcasts;
use crate::ids::{Epoch, Rev, RoomId};
use crate::memory::{self, Budget, Charge, Kind};
use crate::patch;
use crate::presence::Presence;
use crate::protocol::{self, ErrorCode, Reject};
use crate::ring::Ring;

/// Limits a room enforces on every change.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Ring capacity: how many recent changes can be replayed as deltas.
    pub history: usize,
    /// Largest state (encoded JSON bytes) a change may produce, at any point while it runs; also
    /// the most a change may keep for undo (the values it overwrites or removes). 0 = unlimited.
    /// Tracked exactly, op by op and before each op allocates, by the patch engine.
    pub max_state_bytes: usize,
    /// Most bytes the ring may hold: what its changes keep alive in memory (decoded ops and
    /// inverses, touched paths, encoded frames; see [`Change::footprint`]); the oldest changes
    /// are dropped beyond it. 0 = unlimited.
    pub history_bytes: usize,
    /// Most ops in one change; 0 = unlimited.
    pub max_ops_per_change: usize,
    /// Broadcasts kept for slow readers.
    pub broadcast_buffer: usize,
    /// Most bytes of broadcasts kept for slow readers (the newest is always kept); 0 = no limit.
    pub broadcast_bytes: usize,
}

impl RoomConfig {
    /// The defaults, written once: `config` uses them as its flags' defaults.
    pub const DEFAULT: RoomConfig = RoomConfig {
        history: 1024,
        max_state_bytes: 16 << 20,
        history_bytes: 16 << 20,
        max_ops_per_change: 1000,
        broadcast_buffer: 64,
        broadcast_bytes: 1 << 20,
    };
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig::DEFAULT
    }
}

struct Inner {
    state: Value,
    ring: Ring<Arc<Change>>,
}

/// A room. Cheap to share as `Arc<Room>`.
pub struct Room {
    id: RoomId,
    epoch: Epoch,
    config: RoomConfig,
    inner: RwLock<Inner>,
    /// Mirror of the current revision for lock-free reads.
    rev: AtomicU64,
    /// Wakes writers when the revision advances (holds the highest committed revision).
    rev_tx: watch::Sender<Rev>,
    /// The newest snapshot (see [`snapshot`]).
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// Serialises snapshot encoding, so a revision is never encoded twice.
    snapshot_encode: Mutex<()>,
    /// The last multi-change delta frame built for a non-author, shared by every connection
    /// catching up over the same range (see [`catchup`]).
    coalesced: Mutex<Option<(Rev, Rev, Bytes)>>,
    /// Exact encoded size of the state (maintained by `commit` under the write lock).
    state_bytes: AtomicUsize,
    /// Presence: who is here, an ephemeral lane beside the change stream.
    pub presence: Presence,
    /// Broadcasts: the other ephemeral lane, a ring of the last `broadcast_buffer` messages.
    pub broadcasts: Broadcasts,
    /// This room's part of the memory budget.
    memory: Charges,
    /// Set (under the write lock) once the room has left the registry: no commit after it.
    retired: AtomicBool,
}

/// What a room holds, by part, in the memory budget.
#[derive(Debug)]
struct Charges {
    /// The state's heap, estimated op by op, plus the room's fixed cost
    /// ([`memory::ROOM_BASE`]).
    state: Charge,
    /// The ring's footprint.
    history: Charge,
    /// The cached snapshot.
    snapshot: Charge,
    /// The cached multi-change delta frame.
    coalesced: Charge,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .field("rev", &self.rev())
            .finish()
    }
}

impl Room {
    /// A room outside any memory budget (tests, benches).
    pub fn new(id: RoomId, config: RoomConfig) -> Self {
        Self::with_budget(id, config, &Budget::unlimited())
    }

    /// A room whose memory is charged to `budget`.
    pub fn with_budget(id: RoomId, config: RoomConfig, budget: &Arc<Budget>) -> Self {
        let (rev_tx, _) = watch::channel(Rev(0));
        let memory = Charges {
            state: Charge::new(budget, Kind::Held),
            history: Charge::new(budget, Kind::History),
            snapshot: Charge::new(budget, Kind::Held),
            coalesced: Charge::new(budget, Kind::Held),
        };
        memory.state.set(memory::ROOM_BASE);
        Room {
            id,
            epoch: Epoch::random(),
            inner: RwLock::new(Inner {
                state: Value::Object(Default::default()),
                ring: Ring::with_budget(config.history.max(1), config.history_bytes),
            }),
            state_bytes: AtomicUsize::new(2),
            presence: Presence::with_budget(budget),
            broadcasts: Broadcasts::new(config.broadcast_buffer, config.broadcast_bytes, budget),
            memory,
            retired: AtomicBool::new(false),
            config,
            rev: AtomicU64::new(0),
            rev_tx,
            snapshot: Mutex::new(None),
            snapshot_encode: Mutex::new(()),
            coalesced: Mutex::new(None),
        }
    }

    pub fn id(&self) -> &RoomId {
        &self.id
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    pub fn rev(&self) -> Rev {
        Rev(self.rev.load(Ordering::Acquire))
    }

    /// A receiver that is marked changed whenever the revision advances.
    pub fn subscribe(&self) -> watch::Receiver<Rev> {
        self.rev_tx.subscribe()
    }

    /// Ring occupancy: (entries held, capacity).
    pub fn ring_occupancy(&self) -> (usize, usize) {
        let g = self.inner.read();
        (g.ring.len(), g.ring.capacity())
    }

    /// Commits a change atomically, or explains why not.
    ///
    /// # Errors
    /// A [`Reject`] with code `conflict`, `stale`, `invalid`, `test_failed`, `too_large` or
    /// `memory_full`; the room is then unchanged (though it may have shed old history).
    pub fn commit(&self, req: ChangeRequest) -> Result<Arc<Change>, Reject> {
        if self.config.max_ops_per_change > 0 && req.ops.len() > self.config.max_ops_per_change {
            return Err(self.reject(
                ErrorCode::TooLarge,
                format!(
                    "{} ops exceed the limit of {} per change",
                    req.ops.len(),
                    self.config.max_ops_per_change
                ),
            ));
        }
        let ops_json = protocol::encode_ops(&req.ops);
        let budget = self.memory.history.budget();
        let cost = if budget.fits(memory::change_cost_bound(ops_json.len())) {
            0
        } else {
            memory::change_cost(&req.ops, ops_json.len())
        };
        let mut g = self.inner.write();
        let cur = g.ring.head();
        if self.retired.load(Ordering::Acquire) {
            return Err(Reject::new(
                ErrorCode::Gone,
                "the room was deleted (admin API); the change was not applied",
                cur,
            ));
        }
        conflict::check(&g.ring, &req, cur)?;
        self.make_room(&mut g, cost)?;
        // The size limit holds op by op, checked before each op allocates (a few `copy` ops
        // could otherwise double the state many times over before a check at the end).
        let size = self.state_bytes.load(Ordering::Relaxed);
        let limit = self.config.max_state_bytes;
        let applied = if limit > 0 {
            patch::apply_within(&mut g.state, &req.ops, patch::Budget { size, limit })
        } else {
            patch::apply(&mut g.state, &req.ops)
        }
        .map_err(|e| Reject::new(e.clone().into(), e.to_string(), cur))?;
        let undo = |g: &mut Inner| {
            let restored = patch::revert(&mut g.state, &applied.inverse);
            debug_assert!(restored.is_ok(), "inverse must apply: {restored:?}");
        };
        if !g.state.is_object() {
            undo(&mut g);
            return Err(self.reject(ErrorCode::Invalid, "the room state's root must stay an object".into()));
        }
        let new_bytes = (size as i64 + applied.size_delta).max(0) as usize;
        debug_assert!(limit == 0 || new_bytes <= limit.max(size), "the budget holds: {new_bytes} > {limit}");
        self.state_bytes.store(new_bytes, Ordering::Relaxed);
        let rev = Rev(cur + 1);
        let (change, held) = Change::encode(rev, req, &ops_json, applied);
        let growth = memory::state_growth(&change.ops, &change.inverse, &g.state);
        g.ring.push(rev.0, change.clone(), held);
        self.account(&g, growth);
        self.rev.store(rev.0, Ordering::Release);
        drop(g);
        // Concurrent commits may notify out of order: keep the highest revision.
        self.rev_tx.send_if_modified(|v| {
            let newer = rev > *v;
            if newer {
                *v = rev;
            }
            newer
        });
        Ok(change)
    }

    /// Refuses every later commit (with `gone`): the room is leaving the registry. Taken under
    /// the write lock, so a commit either completed before it or is refused.
    pub fn retire(&self) {
        let g = self.inner.write();
        self.retired.store(true, Ordering::Release);
        drop(g);
    }

    /// Whether [`Room::retire`] has run.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Makes sure a change of about `cost` bytes fits the memory budget, shedding this room's
    /// oldest history if that is enough.
    fn make_room(&self, g: &mut Inner, cost: usize) -> Result<(), Reject> {
        let budget = self.memory.history.budget();
        if budget.fits(cost) {
            return Ok(());
        }
        if budget.fits(cost.saturating_sub(g.ring.bytes())) {
            while !budget.fits(cost) && g.ring.pop_oldest().is_some() {
                self.memory.history.set(g.ring.footprint());
            }
            if budget.fits(cost) {
                return Ok(());
            }
        }
        Err(self.reject(
            ErrorCode::MemoryFull,
            format!(
                "the server's memory (--max-memory, {} bytes) is full: a change holding about {cost} bytes does not fit; try a smaller change or later",
                budget.limit()
            ),
        ))
    }

    /// Charges the state's growth (bytes, negative when it shrank) and the ring as it is now.
    fn account(&self, g: &Inner, growth: isize) {
        let state = self.memory.state.held() as isize + growth;
        self.memory.state.set(state.max(memory::ROOM_BASE as isize) as usize);
        self.memory.history.set(g.ring.footprint());
    }

    /// Sheds the oldest history until the ring holds at most `keep` (0.0 to 1.0) of its bytes,
    /// always keeping the newest change. Returns the bytes freed.
    pub fn shed_history(&self, keep: f64) -> usize {
        let mut g = self.inner.write();
        let before = g.ring.bytes();
        let target = (before as f64 * keep.clamp(0.0, 1.0)) as usize;
        while g.ring.bytes() > target && g.ring.len() > 1 {
            g.ring.pop_oldest();
        }
        self.memory.history.set(g.ring.footprint());
        before - g.ring.bytes()
    }

    fn reject(&self, code: ErrorCode, message: String) -> Reject {
        Reject::new(code, message, self.rev().0)
    }

    /// Fills `out` with every change after `rev`, oldest first, and returns true; returns false
    /// (leaving `out` empty) when the ring no longer holds all of them or `rev` is in the future.
    pub fn changes_after(&self, rev: Rev, out: &mut Vec<Arc<Change>>) -> bool {
        out.clear();
        let g = self.inner.read();
        match g.ring.after(rev.0) {
            Some(it) => {
                out.extend(it.cloned());
                true
            }
            None => false,
        }
    }

    /// Exact encoded size of the current state.
    pub fn state_bytes(&self) -> usize {
        self.state_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the ring holds.
    pub fn history_bytes(&self) -> usize {
        self.inner.read().ring.bytes()
    }

    /// A copy of the current state with its revision (for the HTTP API and tests).
    pub fn state(&self) -> (Rev, Value) {
        let g = self.inner.read();
        (Rev(g.ring.head()), g.state.clone())
    }
}
