//! One room: the single ordering point for its state.
//!
//! A room owns the authoritative JSON state (root always an object), the revision counter, the
//! ring of recent committed changes, the cached snapshot, and its two ephemeral lanes
//! ([`crate::presence`] and [`crate::broadcast`]). It is synchronous and knows nothing of sockets: the shell feeds it decoded
//! changes and executes what it decides each reader gets. The parts live beside this file:
//! [`change`] (what is submitted and what is kept), `conflict` (the `rev` and `paths` mode checks),
//! [`history`] (undo and redo stacks, reverts and their conflict rule; time travel is
//! [`Room::state_at`]),
//! [`catchup`] (the one decision of what a reader is sent), [`fanout`] (the write pass that offers
//! each visible revision to every connection) and [`snapshot`] (the state encoded once
//! per revision); a stored room's side is [`durable`] (its store's log and answers) and [`restore`]
//! (rebuilding it as the store streams it back).
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
pub mod durable;
#[cfg(test)]
mod durable_tests;
pub mod fanout;
#[cfg(test)]
mod fanout_tests;
pub mod follow;
#[cfg(test)]
mod follow_tests;
pub mod history;
#[cfg(test)]
mod history_tests;
pub mod restore;
#[cfg(test)]
mod restore_tests;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::watch;

pub use catchup::{CatchUp, Cursor, SnapshotReason, delta_for};
pub use change::{Change, ChangeRequest, Extras};
pub use durable::{Outcome, Rejection};
pub use fanout::{Listener, Listening, Offer};
pub use history::UserKey;
pub use restore::{Restore, RestoreError};
pub use snapshot::Snapshot;

use crate::broadcast::Broadcasts;
use crate::ids::{Epoch, Rev, RoomId};
use crate::memory::{self, Budget, Charge, Kind};
use crate::patch;
use crate::presence::Presence;
use crate::protocol::{self, ErrorCode, Reject};
use crate::ring::Ring;
use crate::store::RoomLog;

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
    /// A stored room snapshots every this many changes (`--snapshot-every`; 0 = never by count).
    pub snapshot_every: u64,
    /// ... or every this many bytes of ops, whichever comes first (`--snapshot-every-bytes`).
    pub snapshot_bytes: usize,
    /// How long a stored session's dedupe state and an `Idempotency-Key` are kept
    /// (`--session-ttl`, ms; 0 = forever).
    pub session_ttl_ms: u64,
    /// Most peers presence lists; the others are counted (`--presence-peers`; 0 = all).
    pub presence_peers: usize,
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
        snapshot_every: 10_000,
        snapshot_bytes: 8 << 20,
        session_ttl_ms: 0,
        presence_peers: 256,
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
    /// Every user's undo and redo stacks (see [`history`]).
    stacks: history::Stacks,
}

/// A room. Cheap to share as `Arc<Room>`.
pub struct Room {
    id: RoomId,
    epoch: Epoch,
    config: RoomConfig,
    inner: RwLock<Inner>,
    /// Mirror of the current revision for lock-free reads.
    rev: AtomicU64,
    /// Wakes those who wait for a revision to become visible (HTTP requests; connections are
    /// [`fanout`] listeners instead).
    rev_tx: watch::Sender<Rev>,
    /// The connections' writers, offered each visible revision by the write pass ([`fanout`]).
    listeners: fanout::Listeners,
    /// The newest revision a write pass has taken on.
    passed: AtomicU64,
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
    /// Retired by a delete whose store has not finished yet: a change committed before the
    /// retirement may still be written (see `Room::outcome`).
    deleting: AtomicBool,
    /// A copy of a room another node owns (see [`follow`]): it never commits.
    follower: AtomicBool,
    /// A follower's changes forwarded to the owner and not yet answered (see [`follow`]).
    forwarded: Mutex<Vec<follow::Forwarded>>,
    /// The store's log (`None`: memory only; see [`durable`]).
    log: OnceLock<Arc<dyn RoomLog>>,
    /// The highest revision the store has written: what is visible ([`Room::rev`]).
    durable: AtomicU64,
    /// Bumped by each rollback (the store drops what it still holds of the old line).
    generation: AtomicU64,
    /// Held from a commit's write lock until its record is queued: records leave in order.
    append_order: Mutex<()>,
    /// Dedupe, snapshot pacing and rollback rejects (see [`durable`]).
    keep: Mutex<durable::Keep>,
    /// Sequence of the newest rollback reject.
    rejection_seq: AtomicU64,
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
                stacks: history::Stacks::default(),
            }),
            state_bytes: AtomicUsize::new(2),
            presence: Presence::with_budget(budget, config.presence_peers),
            broadcasts: Broadcasts::new(config.broadcast_buffer, config.broadcast_bytes, budget),
            memory,
            retired: AtomicBool::new(false),
            deleting: AtomicBool::new(false),
            follower: AtomicBool::new(false),
            forwarded: Mutex::new(Vec::new()),
            log: OnceLock::new(),
            durable: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            append_order: Mutex::new(()),
            keep: Mutex::new(durable::Keep::default()),
            rejection_seq: AtomicU64::new(0),
            config,
            rev: AtomicU64::new(0),
            rev_tx,
            listeners: Default::default(),
            passed: AtomicU64::new(0),
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

    /// The newest visible revision: written by the store (the newest committed one without a
    /// store).
    pub fn rev(&self) -> Rev {
        Rev(self.durable.load(Ordering::Acquire))
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

    /// Commits a change atomically, or explains why not. An undo, redo or `reverts` request
    /// (see [`Extras::kind`]) has its ops computed here, from the reverted change's inverse.
    /// Once it holds no lock, the caller runs the write pass ([`Room::deliver`]) so the
    /// connections get the change (with a store, the store's thread does it once it is written).
    ///
    /// # Errors
    /// A [`Reject`] with code `conflict`, `stale`, `invalid`, `test_failed`, `too_large`,
    /// `forbidden` (reverting another user's change without admin) or `memory_full`; the room is
    /// then unchanged (though it may have shed old history).
    pub fn commit(&self, req: ChangeRequest) -> Result<Arc<Change>, Reject> {
        if req.extras.kind.is_revert() {
            return self.commit_revert(req);
        }
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
        self.check_retired(cur)?;
        self.check_idempotency(&req, cur)?;
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
        self.check_root(&mut g, &applied, cur)?;
        let extras = req.extras.clone();
        let change = self.record(&mut g, req, &ops_json, applied, None);
        self.publish(g, &change, ops_json, &extras);
        Ok(change)
    }

    /// [`Room::commit`] of an undo, redo or `reverts`: finds the change it reverts, checks the
    /// conflict rule (unless `overwrite`), and applies that change's inverse, skipping the ops
    /// that no longer apply (see [`history::apply_inverse`]). The lock is held for the ring
    /// scan and the inverse, both bounded by what the ring holds.
    fn commit_revert(&self, mut req: ChangeRequest) -> Result<Arc<Change>, Reject> {
        let key = UserKey::of(req.user.as_ref(), req.author);
        let mut guard = self.inner.write();
        let cur = guard.ring.head();
        self.check_retired(cur)?;
        let g = &mut *guard;
        let x = history::target(
            &mut g.stacks,
            &g.ring,
            key.as_ref(),
            req.extras.kind,
            req.extras.may_revert_any,
            cur,
        )?;
        if req.mode != protocol::Mode::Overwrite {
            history::check_conflicts(&g.ring, &x, key.as_ref(), cur, conflict::MAX_PATHS_CHECK_WORK)?;
        }
        let budget = self.memory.history.budget();
        let encoded = patch::json_size(&x.inverse);
        let cost = if budget.fits(memory::change_cost_bound(encoded)) {
            0
        } else {
            memory::change_cost(&x.inverse, encoded)
        };
        self.make_room(g, cost)?;
        // `make_room` may have shed `x` itself.
        if g.ring.get(x.rev.0).is_none() {
            let message = format!("revision {} left the retained history to make room", x.rev);
            return Err(Reject::new(ErrorCode::Stale, message, cur));
        }
        let size = self.state_bytes.load(Ordering::Relaxed);
        let (ops, applied) =
            history::apply_inverse(&mut g.state, &x.inverse, size, self.config.max_state_bytes)
                .map_err(|e| Reject::new(e.clone().into(), e.to_string(), cur))?;
        self.check_root(g, &applied, cur)?;
        req.ops = ops;
        let ops_json = protocol::encode_ops(&req.ops);
        let extras = req.extras.clone();
        let change = self.record(g, req, &ops_json, applied, Some(x.rev));
        self.publish(guard, &change, ops_json, &extras);
        Ok(change)
    }

    /// Ends a commit: notes its dedupe state, lets go of the write lock and, with a store,
    /// queues its record (and a snapshot when one is due) in revision order; without one the
    /// change is visible at once. Then wakes the writers.
    fn publish(
        &self,
        g: parking_lot::RwLockWriteGuard<'_, Inner>,
        change: &Arc<Change>,
        ops_json: Vec<u8>,
        extras: &Extras,
    ) {
        let snapshot = self.note_commit(&g, change, extras, ops_json.len());
        match self.log.get() {
            None => {
                self.durable.store(change.rev.0, Ordering::Release);
                drop(g);
                self.notify(change.rev);
            }
            Some(log) => {
                let generation = self.generation.load(Ordering::Acquire);
                let order = self.append_order.lock();
                drop(g);
                self.append(&**log, generation, change, ops_json, extras, snapshot);
                drop(order);
            }
        }
    }

    fn check_retired(&self, cur: u64) -> Result<(), Reject> {
        if self.is_follower() {
            return Err(self.not_owner(cur));
        }
        if self.retired.load(Ordering::Acquire) {
            return Err(Reject::new(
                ErrorCode::Gone,
                "the room was deleted (admin API); the change was not applied",
                cur,
            ));
        }
        Ok(())
    }

    /// Refuses a change that made the root something other than an object, undoing it.
    fn check_root(&self, g: &mut Inner, applied: &patch::Applied, cur: u64) -> Result<(), Reject> {
        if g.state.is_object() {
            return Ok(());
        }
        let restored = patch::revert(&mut g.state, &applied.inverse);
        debug_assert!(restored.is_ok(), "inverse must apply: {restored:?}");
        Err(Reject::new(ErrorCode::Invalid, "the room state's root must stay an object", cur))
    }

    /// Records a change whose ops applied (state size, stacks, ring, memory, revision) under
    /// the write lock the caller holds. The caller then drops the lock and calls
    /// [`Room::notify`].
    fn record(
        &self,
        g: &mut Inner,
        req: ChangeRequest,
        ops_json: &[u8],
        applied: patch::Applied,
        reverts: Option<Rev>,
    ) -> Arc<Change> {
        let size = self.state_bytes.load(Ordering::Relaxed);
        let limit = self.config.max_state_bytes;
        let new_bytes = (size as i64 + applied.size_delta).max(0) as usize;
        debug_assert!(limit == 0 || new_bytes <= limit.max(size), "the budget holds: {new_bytes} > {limit}");
        self.state_bytes.store(new_bytes, Ordering::Relaxed);
        let rev = Rev(g.ring.head() + 1);
        let key = UserKey::of(req.user.as_ref(), req.author);
        // The floor once this change is in (the count limit; a byte budget may drop more).
        let floor = g.ring.oldest_base() + u64::from(g.ring.len() == g.ring.capacity());
        let stacks = match &key {
            Some(k) => g.stacks.record(k, req.extras.kind, rev.0, floor, g.ring.capacity()),
            None => Default::default(),
        };
        let done = change::Committed { ts: crate::ids::now_ms(), reverts, key, stacks };
        let (change, held) = Change::encode(rev, req, ops_json, applied, done);
        let growth = memory::state_growth(&change.ops, &change.inverse, &g.state);
        g.ring.push(rev.0, change.clone(), held);
        self.account(g, growth);
        self.rev.store(rev.0, Ordering::Release);
        change
    }

    /// Wakes whoever waits on the revision watch: the revision advanced to `rev` (called after
    /// the write lock is released). Concurrent commits may notify out of order: the highest
    /// revision is kept. Connections learn of it from the write pass, [`Room::deliver`], which
    /// the committer runs once it holds no lock.
    fn notify(&self, rev: Rev) {
        self.rev_tx.send_if_modified(|v| {
            let newer = rev > *v;
            if newer {
                *v = rev;
            }
            newer
        });
    }

    /// Refuses every later commit (with `gone`): the room is leaving the registry. Taken under
    /// the write lock, so a commit either completed before it or is refused.
    pub fn retire(&self) {
        let g = self.inner.write();
        self.retired.store(true, Ordering::Release);
        drop(g);
        // A commit that got past the write lock before has queued its record once this is
        // free: nothing reaches the store after `retire` returns (a delete then drops it all).
        drop(self.append_order.lock());
        // Whoever waits for a change to be written learns it will not be.
        self.rev_tx.send_modify(|_| {});
        self.wake_listeners();
    }

    /// [`Room::retire`] for a delete: until [`Room::deleted`], a change committed before it is
    /// still waited for (the store writes or fails what was queued before the delete).
    pub fn retire_for_delete(&self) {
        self.deleting.store(true, Ordering::Release);
        self.retire();
    }

    /// The delete's store work is done: what was queued before it has been written or failed.
    pub fn deleted(&self) {
        self.deleting.store(false, Ordering::Release);
        self.rev_tx.send_modify(|_| {});
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
        let visible = self.rev();
        if rev > visible {
            return false;
        }
        let g = self.inner.read();
        match g.ring.after(rev.0) {
            Some(it) => {
                out.extend(it.take_while(|c| c.rev <= visible).cloned());
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
        let rev = self.rev();
        if g.ring.head() == rev.0 { (rev, g.state.clone()) } else { (rev, self.visible_state(&g, rev)) }
    }

    /// Whether `key` can undo / redo in this room now (the `welcome` message's flags).
    pub fn history_flags(&self, key: Option<&UserKey>) -> protocol::Stacks {
        let g = self.inner.read();
        g.stacks.flags(key, g.ring.oldest_base())
    }

    /// The state as it was at revision `rev` (time travel): the current state with the retained
    /// inverses of every later change applied, newest first. The state and the changes are
    /// cloned under the read lock; the inverses are applied after it is released.
    ///
    /// # Errors
    /// [`TimeTravel::Future`] when `rev` is above the current revision, [`TimeTravel::Gone`] when
    /// the ring no longer holds every change after it.
    pub fn state_at(&self, rev: Rev) -> Result<Value, TimeTravel> {
        let mut later = Vec::new();
        let mut state = {
            let g = self.inner.read();
            let head = self.rev().0;
            if rev.0 > head {
                return Err(TimeTravel::Future { head });
            }
            match g.ring.after(rev.0) {
                Some(it) => later.extend(it.cloned()),
                None => return Err(TimeTravel::Gone { oldest: g.ring.oldest_base() }),
            }
            g.state.clone()
        };
        for c in later.iter().rev() {
            let undone = patch::revert(&mut state, &c.inverse);
            debug_assert!(undone.is_ok(), "a retained inverse must apply: {undone:?}");
        }
        Ok(state)
    }
}

/// Why [`Room::state_at`] cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeTravel {
    #[error("the room is at revision {head}")]
    Future { head: u64 },
    #[error("the retained history reaches back to revision {oldest}")]
    Gone { oldest: u64 },
}
