//! Rebuilding a stored room as its store streams it back: [`Restore`] is the [`LoadSink`] a
//! room loads through ([`crate::store::Store::load_with`]), so a load holds about a ring's worth
//! of records, whatever the log's length.
//!
//! The store hands over the snapshot, then the records oldest first. A record at or before the
//! snapshot's revision only refills the ring (so a client resumes by delta): the newest
//! ring-capacity of them wait, undecoded, in a bounded queue until the first record after the
//! snapshot (or the end) starts the ring with them. Every record after the snapshot is applied
//! to the state as it arrives. A record that does not follow the one before it empties the queue
//! (the store's cue that a gap the snapshot covers makes them of no use). Damage stops the replay
//! where the collected replay stopped: the log jumping once the ring has started, a record that
//! does not decode or does not apply; it is reported and every later record is ignored (the store
//! still streams them). No snapshot and a log that does not start at revision 1 is an error.
//!
//! Invariants while replaying: the ring's head is the last record replayed and `next` the one the
//! ring takes next; the queue holds consecutive revisions at or before the snapshot's, at most the
//! ring's capacity of them, and is empty once the ring has started.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::change::{ChangeRequest, Committed, Extras};
use super::durable::Keep;
use super::{Change, Inner, Room, RoomConfig, UserKey, history};
use crate::ids::{ClientId, ClientReqId, Epoch, Rev, RoomId};
use crate::memory::{self, Budget};
use crate::patch::{self, Applied, Pointer};
use crate::protocol::{ChangeKind, Mode};
use crate::store::{LoadSink, Loaded, Record, SnapshotData};

/// Why a stored room could not be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("room {room}: {message}")]
pub struct RestoreError {
    pub room: String,
    pub message: String,
}

/// A stored room being rebuilt from what its store streams (see the module doc): hand it to
/// [`crate::store::Store::load_with`], then [`finish`](Restore::finish) it with what the load
/// returned.
pub struct Restore {
    id: RoomId,
    config: RoomConfig,
    budget: Arc<Budget>,
    phase: Phase,
    /// Damage found while replaying (the store's own comes with [`Loaded::damage`]).
    damage: Vec<String>,
    /// The most records the queue held at once.
    peak: usize,
}

enum Phase {
    /// Waiting for the snapshot (no room is built before something is stored).
    Start,
    Replaying(Box<Replay>),
    /// Nothing usable: every later record is ignored and `finish` fails.
    Failed(RestoreError),
}

/// The room as replayed so far.
struct Replay {
    room: Room,
    keep: Keep,
    state: Value,
    /// The snapshot's revision (0 without one).
    base: u64,
    has_snapshot: bool,
    /// Records at or before `base` waiting for the ring, oldest first (see the module doc).
    queue: VecDeque<Record>,
    /// The last record received (a record that does not follow it is a gap).
    last: Option<u64>,
    /// The revision the ring takes next; `None` until the ring has started.
    next: Option<u64>,
    /// Damage stopped the replay: later records are ignored.
    stopped: bool,
}

impl Restore {
    /// Starts rebuilding room `id`, whose memory will be charged to `budget`.
    pub fn new(id: RoomId, config: RoomConfig, budget: &Arc<Budget>) -> Self {
        Restore { id, config, budget: budget.clone(), phase: Phase::Start, damage: Vec::new(), peak: 0 }
    }

    /// The most records held at once before they reached the ring (at most the ring's
    /// capacity): what a load holds besides the room itself and the store's read buffer.
    pub fn held_peak(&self) -> usize {
        self.peak
    }

    fn fail(&self, message: String) -> RestoreError {
        RestoreError { room: self.id.to_string(), message }
    }

    /// The room as of the snapshot (or empty), before any record.
    fn begin(&self, snapshot: Option<&SnapshotData>) -> Result<Replay, RestoreError> {
        let mut keep = Keep::default();
        let (base, state) = match snapshot {
            Some(s) => {
                let state: Value = serde_json::from_str(&s.state)
                    .map_err(|e| self.fail(format!("snapshot {} does not parse: {e}", s.rev)))?;
                for sess in &s.sessions {
                    keep.sessions.insert(sess.token.as_str().into(), sess.clone());
                }
                for r in &s.idempotency {
                    keep.idempotency.insert(r.key.clone(), r.clone());
                }
                keep.max_client = s.max_client;
                (s.rev, state)
            }
            None => (0, Value::Object(Default::default())),
        };
        if !state.is_object() {
            return Err(self.fail("the stored state is not an object".into()));
        }
        let room = Room::with_budget(self.id.clone(), self.config.clone(), &self.budget);
        Ok(Replay {
            room,
            keep,
            state,
            base,
            has_snapshot: snapshot.is_some(),
            queue: VecDeque::new(),
            last: None,
            next: None,
            stopped: false,
        })
    }

    /// The rebuilt room (its epoch from `loaded`) and the damage found, the store's first.
    ///
    /// # Errors
    /// When nothing usable is stored: a snapshot that does not parse, a state that is not an
    /// object, no snapshot and a log that does not start at revision 1.
    pub fn finish(mut self, loaded: Loaded) -> Result<(Room, Vec<String>), RestoreError> {
        let mut r = match std::mem::replace(&mut self.phase, Phase::Start) {
            Phase::Replaying(r) => r,
            Phase::Failed(e) => return Err(e),
            // Nothing was handed over (not even the snapshot's absence): as stored, no records.
            Phase::Start => Box::new(self.begin(loaded.snapshot.as_ref())?),
        };
        r.start_ring(&self.id, &mut self.damage).map_err(|m| self.fail(m))?;
        let Replay { mut room, keep, state, base, .. } = *r;
        room.epoch = Epoch::restored(&loaded.epoch);
        let g = room.inner.get_mut();
        let head = g.ring.head().max(base);
        if head > g.ring.head() {
            // The log ends before the snapshot (its tail was cut): the snapshot is newer.
            while g.ring.pop_oldest().is_some() {}
            g.ring.start_at(base);
            g.stacks = history::Stacks::default();
        }
        let head = g.ring.head();
        room.state_bytes.store(patch::json_size(&state), Ordering::Relaxed);
        room.memory.state.set(memory::ROOM_BASE + memory::value_heap(&state).total());
        g.state = state;
        room.memory.history.set(g.ring.footprint());
        room.rev.store(head, Ordering::Release);
        room.durable.store(head, Ordering::Release);
        room.passed.store(head, Ordering::Release);
        room.rev_tx.send_replace(Rev(head));
        *room.keep.get_mut() = keep;
        if loaded.owner.is_some() {
            room.set_follower();
        }
        let mut damage = loaded.damage;
        damage.append(&mut self.damage);
        Ok((room, damage))
    }
}

impl LoadSink for Restore {
    fn snapshot(&mut self, snapshot: Option<&SnapshotData>) {
        if matches!(self.phase, Phase::Start) {
            self.phase = match self.begin(snapshot) {
                Ok(r) => Phase::Replaying(Box::new(r)),
                Err(e) => Phase::Failed(e),
            };
        }
    }

    fn record(&mut self, record: Record) {
        if matches!(self.phase, Phase::Start) {
            self.snapshot(None);
        }
        let Phase::Replaying(r) = &mut self.phase else { return };
        match r.record(record, &self.id, &mut self.damage) {
            Ok(()) => self.peak = self.peak.max(r.queue.len()),
            Err(message) => self.phase = Phase::Failed(self.fail(message)),
        }
    }
}

impl Replay {
    /// One record from the store (see the module doc). `Err` when nothing usable is stored.
    fn record(&mut self, rec: Record, id: &RoomId, damage: &mut Vec<String>) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        let follows = self.last.is_none_or(|last| last.checked_add(1) == Some(rec.rev));
        self.last = Some(rec.rev);
        if self.next.is_some() {
            // A gap once the ring has started is a jump: `replay` reports it and stops.
            self.replay(&rec, id, damage);
            return Ok(());
        }
        if !follows {
            self.queue.clear();
        }
        if rec.rev == 0 && self.has_snapshot {
            damage.push(format!("room {id}: record 0: revisions start at 1; replay stops"));
            self.stopped = true;
            return Ok(());
        }
        if rec.rev <= self.base {
            if self.queue.len() >= self.room.inner.get_mut().ring.capacity() {
                self.queue.pop_front();
            }
            self.queue.push_back(rec);
            return Ok(());
        }
        self.queue.push_back(rec);
        self.start_ring(id, damage)
    }

    /// Starts the ring at the oldest record queued (or after the snapshot) and replays the
    /// queue into it. Once only: later calls find the ring started.
    fn start_ring(&mut self, id: &RoomId, damage: &mut Vec<String>) -> Result<(), String> {
        if self.next.is_some() {
            return Ok(());
        }
        let first = self.queue.front().map(|r| r.rev);
        if !self.has_snapshot
            && let Some(first) = first.filter(|&f| f != 1)
        {
            return Err(format!("no snapshot and the log starts at revision {first}"));
        }
        // Changes at or before the snapshot only refill the ring; a ring that cannot reach back
        // to them starts at the snapshot.
        let after_base = self.base.saturating_add(1);
        let start = first.filter(|&f| f <= after_base).unwrap_or(after_base).max(1);
        self.room.inner.get_mut().ring.start_at(start - 1);
        self.next = Some(start);
        for rec in std::mem::take(&mut self.queue) {
            self.replay(&rec, id, damage);
        }
        Ok(())
    }

    /// Puts one record in the ring (applying it when it is after the snapshot), or stops the
    /// replay at it.
    fn replay(&mut self, rec: &Record, id: &RoomId, damage: &mut Vec<String>) {
        let Some(expected) = self.next.filter(|_| !self.stopped) else { return };
        if rec.rev != expected {
            let at = expected - 1;
            damage.push(format!("room {id}: the log jumps from revision {at} to {}; replay stops", rec.rev));
            self.stopped = true;
            return;
        }
        let (req, inverse, touched, list_touched, _) = match decode_record(rec) {
            Ok(x) => x,
            Err(e) => {
                damage.push(format!("room {id}: record {}: {e}; replay stops", rec.rev));
                self.stopped = true;
                return;
            }
        };
        if rec.rev > self.base
            && let Err(e) = patch::apply(&mut self.state, &req.ops)
        {
            damage.push(format!("room {id}: record {} does not apply ({e}); replay stops", rec.rev));
            self.stopped = true;
            return;
        }
        let g = self.room.inner.get_mut();
        let mut applied = Applied::default();
        (applied.inverse, applied.touched, applied.list_touched) = (inverse, touched, list_touched);
        let (change, held) = entry_of(g, rec, req, applied);
        self.keep.note_record(rec, &change);
        g.ring.push(rec.rev, change, held);
        match rec.rev.checked_add(1) {
            Some(next) => self.next = Some(next),
            // Nothing can follow the last revision there is.
            None => self.stopped = true,
        }
    }
}

/// The ring entry stored record `rec` becomes (its request `req` and what applying it gave),
/// with its author's undo stacks brought up to it: how a load's replay and a follower take a
/// record. `g`'s ring takes it next.
pub(super) fn entry_of(
    g: &mut Inner,
    rec: &Record,
    req: ChangeRequest,
    applied: Applied,
) -> (Arc<Change>, usize) {
    let key = UserKey::of(req.user.as_ref(), req.author);
    let floor = g.ring.oldest_base() + u64::from(g.ring.len() == g.ring.capacity());
    let stacks = match &key {
        Some(k) => g.stacks.record(k, req.extras.kind, rec.rev, floor, g.ring.capacity()),
        None => Default::default(),
    };
    let done = Committed { ts: rec.ts, reverts: rec.reverts.map(Rev), key, stacks };
    Change::encode(Rev(rec.rev), req, rec.ops.as_bytes(), applied, done)
}

type Decoded = (ChangeRequest, Vec<patch::Op>, Vec<Pointer>, Vec<Pointer>, u64);

/// A stored record back as the request it committed and what applying it returned.
pub(super) fn decode_record(rec: &Record) -> Result<Decoded, String> {
    let parse_ops = |what: &str, s: &str| -> Result<Vec<patch::Op>, String> {
        let v: Value = serde_json::from_str(s).map_err(|e| format!("{what}: {e}"))?;
        patch::parse_patch(v).map_err(|e| format!("{what}: {e}"))
    };
    let pointers =
        |ps: &[String]| -> Result<Vec<Pointer>, String> { ps.iter().map(|p| Pointer::parse(p)).collect() };
    let kind = match (rec.kind, rec.reverts) {
        (0, _) => ChangeKind::Plain,
        (1, _) => ChangeKind::Undo,
        (2, _) => ChangeKind::Redo,
        (3, Some(r)) => ChangeKind::Reverts(Rev(r)),
        (k, _) => return Err(format!("unknown change kind {k}")),
    };
    let meta = match &rec.meta {
        Some(m) => Some(serde_json::from_str(m).map_err(|e| format!("meta: {e}"))?),
        None => None,
    };
    let req = ChangeRequest {
        author: ClientId(rec.author),
        user: rec.user.as_deref().map(Arc::from),
        client_req_id: rec.client_req_id.map(ClientReqId),
        base_rev: None,
        mode: Mode::Overwrite,
        ops: parse_ops("ops", &rec.ops)?,
        extras: Extras { kind, meta, ..Extras::default() },
    };
    Ok((
        req,
        parse_ops("inverse", &rec.inverse)?,
        pointers(&rec.touched)?,
        pointers(&rec.list_touched)?,
        rec.ts,
    ))
}
