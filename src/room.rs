//! One room: the single ordering point for its state.
//!
//! A room owns the authoritative JSON state (root always an object), the revision counter, the
//! ring of recent committed changes and the cached snapshot. It is synchronous and knows nothing
//! of sockets: the session layer feeds it decoded changes and pulls catch-up data from it.
//!
//! Locking: `inner` is a `parking_lot::RwLock` that is never held across `.await` (the room has no
//! async code at all). `commit` holds the write lock only to check, apply, push to the ring and
//! bump the revision; the change's ops are encoded before the lock is taken. Readers (`since`,
//! `changes_after`) take the read lock to clone a few `Arc`s. A snapshot is encoded at most once
//! per revision (single-flight through `snapshot_encode`) under the read lock, so it delays
//! writers by one encode at most, never readers. Invariants: `rev` equals the ring's head; every
//! revision `oldest_base+1 ..= rev` is in the ring; a rejected change leaves state and rev as
//! they were.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::watch;

use crate::broadcast::Broadcasts;
use crate::ids::{ClientId, ClientReqId, Epoch, Rev, RoomId};
use crate::patch::{self, Op, Pointer};
use crate::presence::Presence;
use crate::protocol::{self, Mode, Reject, RejectCode};
use crate::ring::Ring;

/// Limits a room enforces on every change.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Ring capacity: how many recent changes can be replayed as deltas.
    pub history: usize,
    /// Largest state (encoded JSON bytes) a change may produce; 0 = unlimited. Tracked exactly,
    /// op by op, by the patch engine.
    pub max_state_bytes: usize,
    /// Most bytes the ring may hold (encoded changes plus the values their inverses keep); the
    /// oldest changes are dropped beyond it. 0 = unlimited.
    pub history_bytes: usize,
    /// Most ops in one change; 0 = unlimited.
    pub max_ops_per_change: usize,
    /// Broadcasts kept for slow readers.
    pub broadcast_buffer: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            history: 1024,
            max_state_bytes: 16 << 20,
            history_bytes: 64 << 20,
            max_ops_per_change: 1000,
            broadcast_buffer: 64,
        }
    }
}

/// A change submitted for commit.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub author: ClientId,
    pub client_req_id: Option<ClientReqId>,
    /// The revision the author had seen; required by `rev` and `paths` modes.
    pub base_rev: Option<Rev>,
    pub mode: Mode,
    pub ops: Vec<Op>,
}

/// A committed change, shared by the ring and every writer that sends it.
#[derive(Debug)]
pub struct Change {
    pub rev: Rev,
    pub author: ClientId,
    pub client_req_id: Option<ClientReqId>,
    /// The ops as applied.
    pub ops: Vec<Op>,
    /// Applying these to the state at `rev` gives the state at `rev - 1`.
    pub inverse: Vec<Op>,
    /// Paths read or written, for `paths`-mode conflict checks.
    pub touched: Vec<Pointer>,
    pub committed_at: Instant,
    /// `{"rev":..,"client":..,"ops":..}`, encoded once (a slice of `delta_frame`).
    pub wire: Bytes,
    /// `{"rev":..,"client":..,"clientReqId":..}` for the author (when it has a request id).
    pub wire_ack: Option<Bytes>,
    /// The whole `delta` frame `rev-1 → rev` for everyone but the author, shared by every
    /// caught-up connection.
    pub delta_frame: Bytes,
}

impl Change {
    /// The entry a given recipient should see: an ack for its own change, else the full entry.
    pub fn entry_for(&self, recipient: ClientId) -> &[u8] {
        match &self.wire_ack {
            Some(ack) if self.author == recipient => ack,
            _ => &self.wire,
        }
    }
}

/// The state encoded at one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub rev: Rev,
    /// The state as JSON.
    pub state: Bytes,
}

/// Why a reader is sent a snapshot instead of a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// The client's epoch is not this room's.
    Epoch,
    /// Some change after the client's revision has left the ring (or the revision is in the
    /// future).
    BehindRing,
}

/// What a reader at some revision needs to reach the current one.
#[derive(Debug)]
pub enum CatchUp {
    /// Every committed change after the reader's revision, oldest first (may be empty).
    Changes(Vec<Arc<Change>>),
    Snapshot(Arc<Snapshot>, SnapshotReason),
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
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// The last multi-change delta frame built for a non-author, shared by every connection
    /// catching up over the same range.
    coalesced: Mutex<Option<(Rev, Rev, Bytes)>>,
    /// Serialises snapshot encoding, so a revision is never encoded twice.
    snapshot_encode: Mutex<()>,
    /// Exact encoded size of the state (maintained by `commit` under the write lock).
    state_bytes: AtomicUsize,
    /// Presence: who is here, an ephemeral lane beside the change stream.
    pub presence: Presence,
    /// Broadcasts: the other ephemeral lane, a ring of the last `broadcast_buffer` messages.
    pub broadcasts: Broadcasts,
    /// Live connections in this room (maintained by the session layer).
    pub connections: AtomicUsize,
    /// Unix millis of the last commit or connection change, for idle eviction.
    pub last_active_ms: AtomicU64,
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
    pub fn new(id: RoomId, config: RoomConfig) -> Self {
        let (rev_tx, _) = watch::channel(Rev(0));
        Room {
            id,
            epoch: Epoch::random(),
            inner: RwLock::new(Inner {
                state: Value::Object(Default::default()),
                ring: Ring::with_budget(config.history.max(1), config.history_bytes),
            }),
            state_bytes: AtomicUsize::new(2),
            presence: Presence::new(),
            broadcasts: Broadcasts::new(config.broadcast_buffer),
            config,
            rev: AtomicU64::new(0),
            rev_tx,
            snapshot: Mutex::new(None),
            coalesced: Mutex::new(None),
            snapshot_encode: Mutex::new(()),
            connections: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(now_ms()),
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
    /// A [`Reject`] with code `conflict`, `stale`, `invalid`, `test_failed` or `too_large`; the
    /// room is then unchanged.
    pub fn commit(&self, req: ChangeRequest) -> Result<Arc<Change>, Reject> {
        if self.config.max_ops_per_change > 0 && req.ops.len() > self.config.max_ops_per_change {
            return Err(self.reject(
                RejectCode::TooLarge,
                format!(
                    "{} ops exceed the limit of {} per change",
                    req.ops.len(),
                    self.config.max_ops_per_change
                ),
            ));
        }
        let ops_json = protocol::encode_ops(&req.ops);
        let mut g = self.inner.write();
        let cur = g.ring.head();
        self.check_mode(&g, &req, cur)?;
        let applied = patch::apply(&mut g.state, &req.ops).map_err(|e| Reject {
            message: e.to_string(),
            code: e.into(),
            rev: cur,
            conflicts: Vec::new(),
        })?;
        let undo = |g: &mut Inner| {
            let restored = patch::apply(&mut g.state, &applied.inverse);
            debug_assert!(restored.is_ok(), "inverse must apply: {restored:?}");
        };
        if !g.state.is_object() {
            undo(&mut g);
            return Err(self.reject(RejectCode::Invalid, "the room state's root must stay an object".into()));
        }
        let new_bytes =
            (self.state_bytes.load(Ordering::Relaxed) as i64 + applied.size_delta).max(0) as usize;
        let limit = self.config.max_state_bytes;
        if limit > 0 && new_bytes > limit {
            undo(&mut g);
            return Err(self.reject(
                RejectCode::TooLarge,
                format!("the state would be {new_bytes} bytes, over the limit of {limit}"),
            ));
        }
        self.state_bytes.store(new_bytes, Ordering::Relaxed);
        let rev = Rev(cur + 1);
        let (delta_frame, wire) = protocol::change_frame(rev, req.author, &ops_json);
        let applied_inverse_bytes = applied.inverse_bytes;
        let change = Arc::new(Change {
            rev,
            author: req.author,
            client_req_id: req.client_req_id,
            wire_ack: req.client_req_id.map(|id| protocol::entry_ack(rev, req.author, id)),
            ops: req.ops,
            inverse: applied.inverse,
            touched: applied.touched,
            committed_at: Instant::now(),
            wire,
            delta_frame,
        });
        let held = change.delta_frame.len()
            + change.wire_ack.as_ref().map_or(0, Bytes::len)
            + ops_json.len()
            + applied_inverse_bytes;
        g.ring.push(rev.0, change.clone(), held);
        self.rev.store(rev.0, Ordering::Release);
        drop(g);
        self.touch();
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

    fn check_mode(&self, g: &Inner, req: &ChangeRequest, cur: u64) -> Result<(), Reject> {
        let need_base = || {
            req.base_rev.ok_or_else(|| self.reject(RejectCode::Invalid, "this mode needs \"baseRev\"".into()))
        };
        match req.mode {
            Mode::Overwrite => Ok(()),
            Mode::Rev => {
                let base = need_base()?;
                if base.0 == cur {
                    return Ok(());
                }
                let conflicts = if base.0 < cur {
                    g.ring.newest_first().map(|c| c.rev.0).take_while(|r| *r > base.0).collect()
                } else {
                    Vec::new()
                };
                Err(Reject {
                    code: RejectCode::Conflict,
                    message: format!("baseRev {base} is not the current revision {cur}"),
                    rev: cur,
                    conflicts: sorted(conflicts),
                })
            }
            Mode::Paths => {
                let base = need_base()?;
                if base.0 > cur {
                    return Err(self.reject(
                        RejectCode::Invalid,
                        format!("baseRev {base} is ahead of the room ({cur})"),
                    ));
                }
                if base.0 < g.ring.oldest_base() {
                    return Err(Reject {
                        code: RejectCode::Stale,
                        message: format!(
                            "baseRev {base} is older than the history can answer for (oldest {})",
                            g.ring.oldest_base()
                        ),
                        rev: cur,
                        conflicts: Vec::new(),
                    });
                }
                let conflicts: Vec<u64> = g
                    .ring
                    .newest_first()
                    .take_while(|c| c.rev.0 > base.0)
                    .filter(|c| {
                        c.touched.iter().any(|t| req.ops.iter().flat_map(Op::paths).any(|p| p.overlaps(t)))
                    })
                    .map(|c| c.rev.0)
                    .collect();
                if conflicts.is_empty() {
                    Ok(())
                } else {
                    Err(Reject {
                        code: RejectCode::Conflict,
                        message: format!("a change after baseRev {base} touched the same paths"),
                        rev: cur,
                        conflicts: sorted(conflicts),
                    })
                }
            }
        }
    }

    fn reject(&self, code: RejectCode, message: String) -> Reject {
        Reject { code, message, rev: self.rev().0, conflicts: Vec::new() }
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

    /// What a reader that holds `rev` of `epoch` needs to reach the current revision.
    pub fn since(&self, rev: Rev, epoch: &str) -> CatchUp {
        if epoch != self.epoch.as_str() {
            return CatchUp::Snapshot(self.snapshot(), SnapshotReason::Epoch);
        }
        let mut out = Vec::new();
        if self.changes_after(rev, &mut out) {
            CatchUp::Changes(out)
        } else {
            CatchUp::Snapshot(self.snapshot(), SnapshotReason::BehindRing)
        }
    }

    /// The `delta` frame that brings `recipient` from `from` to `to` with `changes` (exactly the
    /// changes `from+1 ..= to`). Frames without an ack for the recipient are the same for every
    /// recipient at the same range, so the last one is cached and shared.
    pub fn delta_frame(&self, changes: &[Arc<Change>], from: Rev, to: Rev, recipient: ClientId) -> Bytes {
        if changes.len() < 2 {
            return delta_for(changes, from, to, recipient);
        }
        let personal = changes.iter().any(|c| c.author == recipient && c.wire_ack.is_some());
        if !personal
            && let Some((f, t, frame)) = &*self.coalesced.lock()
            && (*f, *t) == (from, to)
        {
            return frame.clone();
        }
        let frame = delta_for(changes, from, to, recipient);
        if !personal {
            *self.coalesced.lock() = Some((from, to, frame.clone()));
        }
        frame
    }

    /// The state encoded at the current revision; encoded at most once per revision and shared.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        if let Some(s) = self.cached_snapshot() {
            return s;
        }
        let _single_flight = self.snapshot_encode.lock();
        if let Some(s) = self.cached_snapshot() {
            return s;
        }
        let g = self.inner.read();
        let snap = Arc::new(Snapshot {
            rev: Rev(g.ring.head()),
            state: serde_json::to_vec(&g.state).expect("state always serialises").into(),
        });
        debug_assert_eq!(
            self.state_bytes.load(Ordering::Relaxed),
            snap.state.len(),
            "size accounting is exact"
        );
        drop(g);
        *self.snapshot.lock() = Some(snap.clone());
        snap
    }

    fn cached_snapshot(&self) -> Option<Arc<Snapshot>> {
        let cached = self.snapshot.lock();
        cached.as_ref().filter(|s| s.rev == self.rev()).cloned()
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

    /// Records activity (for idle eviction).
    pub fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// The `delta` frame that brings `recipient` from `from` to `to` with `changes` (which must be
/// exactly the changes `from+1 ..= to`). A single change to someone other than its author is the
/// frame the room encoded once at commit; otherwise the pre-encoded entries are concatenated.
pub fn delta_for(changes: &[Arc<Change>], from: Rev, to: Rev, recipient: ClientId) -> Bytes {
    if let [only] = changes
        && only.author != recipient
    {
        return only.delta_frame.clone();
    }
    let size: usize = changes.iter().map(|c| c.wire.len() + 1).sum();
    protocol::delta_frame(from, to, changes.iter().map(|c| c.entry_for(recipient)), size)
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// A connection's place in a room, counted in `Room::connections` from admission (under the
/// registry's shard lock) until dropped, so the idle sweep never drops a room that is being
/// joined.
#[derive(Debug)]
pub struct Lease(Arc<Room>);

impl Lease {
    /// Counts one more connection if the room has space (`max` 0 = unlimited). Meant to run
    /// inside `Rooms::acquire`.
    pub fn admit(room: &Room, max: usize) -> bool {
        room.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .is_ok()
    }

    /// Wraps a connection already counted by [`Lease::admit`].
    pub fn adopt(room: Arc<Room>) -> Self {
        Lease(room)
    }

    pub fn room(&self) -> &Arc<Room> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn room(history: usize) -> Room {
        Room::new(RoomId::parse("t").unwrap(), RoomConfig { history, ..RoomConfig::default() })
    }

    fn req(mode: Mode, base: u64, ops: Value) -> ChangeRequest {
        ChangeRequest {
            author: ClientId(1),
            client_req_id: None,
            base_rev: Some(Rev(base)),
            mode,
            ops: patch::parse_patch(ops).unwrap(),
        }
    }

    #[test]
    fn commits_bump_rev_and_fill_ring() {
        let r = room(4);
        for i in 0..6 {
            let c =
                r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/n", "value": i}]))).unwrap();
            assert_eq!(c.rev, Rev(i + 1));
        }
        assert_eq!(r.rev(), Rev(6));
        assert_eq!(r.state().1, json!({"n": 5}));
        assert_eq!(r.ring_occupancy(), (4, 4));
        let CatchUp::Changes(cs) = r.since(Rev(2), r.epoch().as_str()) else { panic!() };
        assert_eq!(cs.iter().map(|c| c.rev.0).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
        assert!(matches!(
            r.since(Rev(1), r.epoch().as_str()),
            CatchUp::Snapshot(_, SnapshotReason::BehindRing)
        ));
        assert!(matches!(
            r.since(Rev(7), r.epoch().as_str()),
            CatchUp::Snapshot(_, SnapshotReason::BehindRing)
        ));
        assert!(matches!(r.since(Rev(6), "other"), CatchUp::Snapshot(_, SnapshotReason::Epoch)));
    }

    #[test]
    fn rev_mode_is_first_writer_wins() {
        let r = room(8);
        r.commit(req(Mode::Rev, 0, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
        let e = r.commit(req(Mode::Rev, 0, json!([{"op": "add", "path": "/b", "value": 1}]))).unwrap_err();
        assert_eq!((e.code, e.rev, e.conflicts), (RejectCode::Conflict, 1, vec![1]));
        assert_eq!(r.rev(), Rev(1));
    }

    #[test]
    fn paths_mode_conflicts_only_on_overlap() {
        let r = room(2);
        r.commit(req(
            Mode::Overwrite,
            0,
            json!([{"op": "add", "path": "/board", "value": {"e2": "P", "d2": "P"}}]),
        ))
        .unwrap();
        r.commit(req(Mode::Paths, 1, json!([{"op": "move", "from": "/board/e2", "path": "/board/e4"}])))
            .unwrap();
        // Different square, same base: fine.
        r.commit(req(Mode::Paths, 1, json!([{"op": "move", "from": "/board/d2", "path": "/board/d4"}])))
            .unwrap();
        // Same square as rev 2: conflict listing rev 2.
        let e = r
            .commit(req(Mode::Paths, 1, json!([{"op": "test", "path": "/board/e4", "value": "P"}])))
            .unwrap_err();
        assert_eq!((e.code, e.conflicts), (RejectCode::Conflict, vec![2]));
        // A parent path overlaps too.
        let e = r.commit(req(Mode::Paths, 2, json!([{"op": "remove", "path": "/board"}]))).unwrap_err();
        assert_eq!(e.conflicts, vec![3]);
        // Base older than the ring: stale.
        let e = r.commit(req(Mode::Paths, 0, json!([{"op": "add", "path": "/x", "value": 1}]))).unwrap_err();
        assert_eq!(e.code, RejectCode::Stale);
        assert_eq!(r.rev(), Rev(3));
    }

    #[test]
    fn root_must_stay_an_object() {
        let r = room(2);
        r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
        let e = r
            .commit(req(Mode::Overwrite, 0, json!([{"op": "replace", "path": "", "value": [1]}])))
            .unwrap_err();
        assert_eq!(e.code, RejectCode::Invalid);
        assert_eq!(r.state(), (Rev(1), json!({"a": 1})));
    }

    #[test]
    fn limits() {
        let r = Room::new(
            RoomId::parse("t").unwrap(),
            RoomConfig { history: 4, max_state_bytes: 100, max_ops_per_change: 2, ..RoomConfig::default() },
        );
        let e = r.commit(req(Mode::Overwrite, 0, json!([{"op":"test","path":"","value":{}},{"op":"test","path":"","value":{}},{"op":"test","path":"","value":{}}]))).unwrap_err();
        assert_eq!(e.code, RejectCode::TooLarge);
        let e = r
            .commit(req(Mode::Overwrite, 0, json!([{"op":"add","path":"/a","value":"x".repeat(200)}])))
            .unwrap_err();
        assert_eq!(e.code, RejectCode::TooLarge);
        assert_eq!(r.state(), (Rev(0), json!({})));
        r.commit(req(Mode::Overwrite, 0, json!([{"op":"add","path":"/a","value":"x".repeat(50)}]))).unwrap();
        r.commit(req(Mode::Overwrite, 0, json!([{"op":"remove","path":"/a"}]))).unwrap();
        r.commit(req(Mode::Overwrite, 0, json!([{"op":"add","path":"/b","value":"x".repeat(50)}]))).unwrap();
    }

    #[test]
    fn history_byte_budget_sends_far_readers_to_a_snapshot() {
        let r = Room::new(
            RoomId::parse("t").unwrap(),
            RoomConfig { history: 100, history_bytes: 10_000, ..RoomConfig::default() },
        );
        for i in 0..10 {
            r.commit(req(
                Mode::Overwrite,
                0,
                json!([{"op": "add", "path": "/s", "value": "x".repeat(1000 + i)}]),
            ))
            .unwrap();
        }
        assert!(r.history_bytes() <= 10_000, "{}", r.history_bytes());
        let (held, _) = r.ring_occupancy();
        assert!((1..10).contains(&held));
        assert!(matches!(
            r.since(Rev(0), r.epoch().as_str()),
            CatchUp::Snapshot(_, SnapshotReason::BehindRing)
        ));
        assert!(matches!(r.since(Rev(9), r.epoch().as_str()), CatchUp::Changes(_)));
        assert_eq!(r.state_bytes(), serde_json::to_vec(&r.state().1).unwrap().len());
    }

    #[test]
    fn snapshot_is_encoded_once_per_rev() {
        let r = room(2);
        let a = r.snapshot();
        let b = r.snapshot();
        assert!(Arc::ptr_eq(&a, &b));
        r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
        let c = r.snapshot();
        assert_eq!((c.rev, &c.state[..]), (Rev(1), &br#"{"a":1}"#[..]));
    }

    #[test]
    fn coalesced_frames_are_shared_but_acks_stay_personal() {
        let r = room(8);
        let mut q = req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]));
        q.client_req_id = Some(ClientReqId(5));
        r.commit(q).unwrap();
        r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/b", "value": 2}]))).unwrap();
        let mut cs = Vec::new();
        assert!(r.changes_after(Rev(0), &mut cs));
        let author = r.delta_frame(&cs, Rev(0), Rev(2), ClientId(1));
        let other = r.delta_frame(&cs, Rev(0), Rev(2), ClientId(2));
        let third = r.delta_frame(&cs, Rev(0), Rev(2), ClientId(3));
        assert_eq!(other.as_ptr(), third.as_ptr(), "shared");
        let author: Value = serde_json::from_slice(&author).unwrap();
        assert_eq!(author["changes"][0], json!({"rev": 1, "client": "c1", "clientReqId": 5}));
        let other: Value = serde_json::from_slice(&other).unwrap();
        assert_eq!(other["changes"][0]["ops"][0]["path"], "/a");
    }

    #[test]
    fn acks_go_to_the_author_only() {
        let r = room(2);
        let mut q = req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]));
        q.client_req_id = Some(ClientReqId(9));
        let c = r.commit(q).unwrap();
        assert_eq!(c.entry_for(ClientId(1)), br#"{"rev":1,"client":"c1","clientReqId":9}"#);
        assert_eq!(
            c.entry_for(ClientId(2)),
            br#"{"rev":1,"client":"c1","ops":[{"op":"add","path":"/a","value":1}]}"#
        );
    }
}
