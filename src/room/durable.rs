//! A room and its store: what a commit hands the log and what the store's answers do to the
//! room (how a room is rebuilt from what was stored is [`super::restore`]).
//!
//! Visibility follows the store: [`Room::rev`] is the highest revision the store has written
//! (`durable`), and nothing after it is delivered, acknowledged, snapshotted or served, so what
//! clients saw and what is on disk agree. A room without a log (`--memory-only`, tests, benches)
//! counts each change as written when it commits. Records reach the log in revision order:
//! a commit takes `append_order` before it lets go of the write lock and queues its record
//! under it. When the store reports a failure ([`Journal::failed`]) the room rolls back every
//! change after `durable` (their inverses, newest first), bumps its generation (so the store
//! drops what is still queued of the old line), rebuilds the undo stacks from the ring, and
//! queues an `unavailable` reject for each author ([`Room::rejections_for`]); the revisions are
//! then reused by the next commits.
//!
//! Dedupe that survives a restart is kept here too: every session's highest committed
//! `clientReqId` (with its client id and user) and every HTTP `Idempotency-Key` answered, both
//! stored in each change's record and in snapshots, and pruned after `--session-ttl`.
//! Snapshots are taken every `snapshot_every` changes or `snapshot_bytes` bytes of ops, whichever
//! comes first: the state is cloned under the write lock and encoded outside it.
//!
//! Lock order: the room's write lock, then `keep` (never the other way round); `append_order`
//! is taken under the write lock and held after it is released, never while waiting for it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::change::{ChangeRequest, Extras};
use super::{Change, Inner, Room, history};
use crate::ids::{ClientId, ClientReqId, Rev, now_ms};
use crate::memory;
use crate::patch::{self, Pointer};
use crate::protocol::{ChangeKind, ErrorCode, Reject};
use crate::store::{
    IdempotencyKey, IdempotencyRecord, Journal, Record, RoomLog, SessionRecord, SnapshotData, StoreError,
};

/// Most `unavailable` rejects kept for authors to collect after a rollback.
const MAX_REJECTIONS: usize = 4096;

/// What the room keeps for its store besides the state: dedupe, snapshot pacing, rejects.
#[derive(Debug, Default)]
pub(super) struct Keep {
    /// Session token → its dedupe state.
    pub(super) sessions: HashMap<Arc<str>, SessionRecord>,
    /// `Idempotency-Key` → the answer it got.
    pub(super) idempotency: HashMap<String, IdempotencyRecord>,
    /// The highest client id seen in this room (stored or live).
    pub(super) max_client: u64,
    /// Changes and op bytes since the last snapshot.
    since_snapshot: (u64, usize),
    /// `unavailable` rejects for authors whose changes were rolled back, oldest first.
    rejections: VecDeque<Rejection>,
}

impl Keep {
    /// The dedupe state a stored record carries (a load replaying it, a follower taking it).
    pub(super) fn note_record(&mut self, rec: &Record, change: &Change) {
        self.max_client = self.max_client.max(rec.author);
        if let (Some(token), Some(id)) = (&rec.session, rec.client_req_id) {
            let s = SessionRecord {
                token: token.clone(),
                client: rec.author,
                user: rec.user.clone(),
                last_req: id,
                seen_ms: rec.ts,
            };
            self.sessions.insert(token.as_str().into(), s);
        }
        if let Some(k) = &rec.idempotency {
            let response = change.http_response().to_string();
            let r = IdempotencyRecord {
                key: k.key.clone(),
                fingerprint: k.fingerprint,
                rev: rec.rev,
                response,
                ts_ms: rec.ts,
            };
            self.idempotency.insert(k.key.clone(), r);
        }
    }
}

/// A change rolled back because the store could not write it.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub seq: u64,
    pub author: ClientId,
    pub client_req_id: ClientReqId,
    pub reject: Reject,
}

/// What became of a committed change in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet written.
    Pending,
    /// Written: it may be acknowledged.
    Written,
    /// The store failed and the room rolled it back: it was not applied.
    RolledBack,
    /// Not yet written when the room was deleted: it went with the room.
    Deleted,
}

impl Room {
    /// Connects the room to its store's log; from then on a change is visible only once written.
    pub fn attach_log(&self, log: Arc<dyn RoomLog>) {
        let _ = self.log.set(log);
    }

    /// Whether the room has a log (a store behind it).
    pub fn is_stored(&self) -> bool {
        self.log.get().is_some()
    }

    /// What became of `change` in the store.
    ///
    /// In a deleted room, a change committed before the delete is written (the store takes
    /// what was queued before the delete first) or fails with the room: a failure then is the
    /// delete's, not the disk's, so it went with the room. One not written when a retirement
    /// other than a delete's is final went with the room too.
    pub fn outcome(&self, change: &Change) -> Outcome {
        let rolled_back = change.rolled_back.load(Ordering::Acquire);
        let retired = self.is_retired();
        if !rolled_back && self.rev() >= change.rev {
            Outcome::Written
        } else if rolled_back {
            if retired { Outcome::Deleted } else { Outcome::RolledBack }
        } else if retired && !self.deleting.load(Ordering::Acquire) {
            Outcome::Deleted
        } else {
            Outcome::Pending
        }
    }

    /// Whether every committed change is written (an idle room may then be evicted).
    pub fn is_settled(&self) -> bool {
        self.rev().0 == self.head()
    }

    /// The newest revision committed in memory (written or not).
    pub(super) fn head(&self) -> u64 {
        self.rev.load(Ordering::Acquire)
    }

    /// The `lastClientReqId` a reader at `rev` may be told for `author`, whose highest processed
    /// id is `processed`: its changes committed after `rev` (not yet written, so not in what the
    /// reader is sent) are not reported as processed, or the client would drop them as if the
    /// frame held them. Free when everything committed is visible.
    /// On a follower copy, a change forwarded to the owner and not answered yet is in no frame
    /// either: the id before the author's first one still open is the most it is told.
    pub fn processed_as_of(&self, author: ClientId, processed: ClientReqId, rev: Rev) -> ClientReqId {
        let mut out = processed;
        // Only a follower forwards; taken (and released) before the room's lock, which `follow`
        // takes first.
        if self.is_follower()
            && let Some(first) = self.first_open_forward(author)
        {
            out = out.min(ClientReqId(first.0.saturating_sub(1)));
        }
        if self.head() <= rev.0 {
            return out;
        }
        let g = self.inner.read();
        for c in g.ring.newest_first().take_while(|c| c.rev > rev) {
            if let Some(id) = c.client_req_id.filter(|_| c.author == author) {
                out = out.min(ClientReqId(id.0.saturating_sub(1)));
            }
        }
        out
    }

    /// The dedupe state a stored session had, for a resume after a restart.
    pub fn stored_session(&self, token: &str) -> Option<SessionRecord> {
        self.keep.lock().sessions.get(token).cloned()
    }

    /// The highest client id the room has seen: new sessions in it must get higher ones.
    pub fn max_client(&self) -> u64 {
        self.keep.lock().max_client
    }

    /// The answer an `Idempotency-Key` got: `Some(Ok((rev, response)))` for the same request,
    /// `Some(Err(()))` when the key came with another request.
    #[allow(clippy::result_unit_err)]
    pub fn idempotent_answer(&self, key: &IdempotencyKey) -> Option<Result<(Rev, Value), ()>> {
        let keep = self.keep.lock();
        let r = keep.idempotency.get(&key.key)?;
        if r.fingerprint != key.fingerprint {
            return Some(Err(()));
        }
        let response = serde_json::from_str(&r.response).unwrap_or(Value::Null);
        Some(Ok((Rev(r.rev), response)))
    }

    /// The sequence number of the newest `unavailable` reject (0: none yet).
    pub fn rejection_seq(&self) -> u64 {
        self.rejection_seq.load(Ordering::Acquire)
    }

    /// The `unavailable` rejects for `author` after `*seen`, which is moved to the newest.
    pub fn rejections_for(&self, author: ClientId, seen: &mut u64) -> Vec<Rejection> {
        let newest = self.rejection_seq();
        if newest <= *seen {
            return Vec::new();
        }
        let keep = self.keep.lock();
        let out = keep.rejections.iter().filter(|r| r.seq > *seen && r.author == author).cloned().collect();
        *seen = newest;
        out
    }

    /// Queues a reject for `author`'s change `id`, collected by its connection
    /// ([`Room::rejections_for`]); the oldest are dropped past [`MAX_REJECTIONS`].
    pub(super) fn push_rejection(&self, author: ClientId, client_req_id: ClientReqId, reject: Reject) {
        let mut keep = self.keep.lock();
        let seq = self.rejection_seq.fetch_add(1, Ordering::AcqRel) + 1;
        keep.rejections.push_back(Rejection { seq, author, client_req_id, reject });
        while keep.rejections.len() > MAX_REJECTIONS {
            keep.rejections.pop_front();
        }
    }

    /// Under the write lock, after a commit: refuses an `Idempotency-Key` already used.
    pub(super) fn check_idempotency(&self, req: &ChangeRequest, cur: u64) -> Result<(), Reject> {
        let Some(key) = &req.extras.idempotency else { return Ok(()) };
        if self.keep.lock().idempotency.contains_key(&key.key) {
            let message = "this Idempotency-Key was already used in this room";
            return Err(Reject::new(ErrorCode::Duplicate, message, cur));
        }
        Ok(())
    }

    /// Under the write lock, once `change` is recorded: notes its dedupe state and decides
    /// whether a snapshot is due (returning the state to encode).
    pub(super) fn note_commit(
        &self,
        g: &Inner,
        change: &Change,
        extras: &Extras,
        ops_len: usize,
    ) -> Option<Value> {
        let mut keep = self.keep.lock();
        keep.max_client = keep.max_client.max(change.author.0);
        if let (Some(token), Some(id)) = (&extras.session, change.client_req_id) {
            let s = SessionRecord {
                token: token.to_string(),
                client: change.author.0,
                user: change.user.as_deref().map(str::to_string),
                last_req: id.0,
                seen_ms: change.ts,
            };
            keep.sessions.insert(token.clone(), s);
        }
        if let Some(k) = &extras.idempotency {
            let r = IdempotencyRecord {
                key: k.key.clone(),
                fingerprint: k.fingerprint,
                rev: change.rev.0,
                response: change.http_response().to_string(),
                ts_ms: change.ts,
            };
            keep.idempotency.insert(k.key.clone(), r);
        }
        self.log.get()?;
        keep.since_snapshot.0 += 1;
        keep.since_snapshot.1 += ops_len;
        let (n, bytes) = keep.since_snapshot;
        let due = (self.config.snapshot_every > 0 && n >= self.config.snapshot_every)
            || (self.config.snapshot_bytes > 0 && bytes >= self.config.snapshot_bytes);
        due.then(|| {
            keep.since_snapshot = (0, 0);
            g.state.clone()
        })
    }

    /// After a commit's write lock (the caller holds `append_order`): hands the change, and the
    /// snapshot if one is due, to the log.
    pub(super) fn append(
        &self,
        log: &dyn RoomLog,
        generation: u64,
        change: &Arc<Change>,
        ops_json: Vec<u8>,
        extras: &Extras,
        snapshot: Option<Value>,
    ) {
        let record = record_of(change, ops_json, extras.session.as_deref(), extras.idempotency.clone());
        log.append(generation, record);
        if let Some(state) = snapshot {
            log.snapshot(self.snapshot_data(change.rev.0, &state));
        }
    }

    fn snapshot_data(&self, rev: u64, state: &Value) -> SnapshotData {
        let ttl = self.config.session_ttl_ms;
        let now = now_ms();
        let mut keep = self.keep.lock();
        let live = |seen: u64| ttl == 0 || now.saturating_sub(seen) <= ttl;
        keep.sessions.retain(|_, s| live(s.seen_ms));
        keep.idempotency.retain(|_, r| live(r.ts_ms));
        SnapshotData {
            epoch: self.epoch.as_str().to_string(),
            rev,
            ts: now,
            state: serde_json::to_string(state).expect("state serialises"),
            sessions: keep.sessions.values().filter(|s| s.last_req > 0).cloned().collect(),
            idempotency: keep.idempotency.values().filter(|r| r.rev <= rev).cloned().collect(),
            max_client: keep.max_client,
        }
    }

    /// The store wrote everything up to `rev`: it becomes visible.
    fn written_up_to(&self, rev: u64) {
        let before = self.durable.fetch_max(rev, Ordering::AcqRel);
        if rev > before {
            self.notify(Rev(rev));
        }
    }

    /// The store could not write revision `rev` of generation `generation`: every change after
    /// the last written one is taken back, newest first, and its author told `unavailable`.
    fn roll_back(&self, generation: u64, rev: u64, error: &StoreError) {
        let mut guard = self.inner.write();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let g = &mut *guard;
        let durable = self.rev().0;
        let mut undone = Vec::new();
        while g.ring.head() > durable {
            let Some(change) = g.ring.pop_newest() else { break };
            let reverted = patch::revert(&mut g.state, &change.inverse);
            debug_assert!(reverted.is_ok(), "a retained inverse must apply: {reverted:?}");
            change.rolled_back.store(true, Ordering::Release);
            undone.push(change);
        }
        if g.ring.is_empty() && g.ring.head() != durable {
            g.ring.start_at(durable);
        }
        g.stacks = rebuild_stacks(&g.ring);
        self.state_bytes.store(patch::json_size(&g.state), Ordering::Relaxed);
        self.memory.state.set(memory::ROOM_BASE + memory::value_heap(&g.state).total());
        self.memory.history.set(g.ring.footprint());
        self.rev.store(g.ring.head(), Ordering::Release);
        let mut keep = self.keep.lock();
        keep.since_snapshot = (0, 0);
        keep.idempotency.retain(|_, r| r.rev <= durable);
        // A deleted room's appends fail because it was deleted (see `outcome`): `gone`, not a
        // disk fault.
        let deleted = self.is_retired();
        let (code, message) = if deleted {
            (
                ErrorCode::Gone,
                "the room was deleted (admin API) before the change was stored; it went with the room"
                    .to_string(),
            )
        } else {
            (
                ErrorCode::Unavailable,
                format!(
                    "the change could not be stored ({error}); it was not applied: send it again (revision {rev} failed)"
                ),
            )
        };
        drop(keep);
        for change in undone.iter().rev() {
            if let Some(id) = change.client_req_id {
                let reject = Reject::new(code, message.clone(), durable);
                self.push_rejection(change.author, id, reject);
            }
        }
        drop(guard);
        if deleted {
            tracing::debug!(room = %self.id, rev, durable, undone = undone.len(), "appends after the room's delete: rolled back");
        } else {
            tracing::error!(room = %self.id, rev, durable, undone = undone.len(), %error, "store write failed: changes rolled back");
        }
        self.rev_tx.send_modify(|_| {});
        self.wake_listeners();
    }
}

impl Journal for Room {
    /// Called with no lock held (the memory store used by tests holds the committer's), so the
    /// write pass runs here, on the store's thread.
    fn written(&self, rev: u64) {
        self.written_up_to(rev);
        self.deliver();
    }

    fn failed(&self, generation: u64, rev: u64, error: &StoreError) {
        self.roll_back(generation, rev, error);
    }
}

/// The undo stacks as the ring's changes, replayed in order, leave them.
fn rebuild_stacks(ring: &crate::ring::Ring<Arc<Change>>) -> history::Stacks {
    let mut stacks = history::Stacks::default();
    let floor = ring.oldest_base();
    let changes: Vec<_> = ring.newest_first().collect();
    for c in changes.into_iter().rev() {
        if let Some(k) = &c.key {
            stacks.record(k, c.kind, c.rev.0, floor, ring.capacity());
        }
    }
    stacks
}

/// The record a committed change is stored as.
fn record_of(
    change: &Change,
    ops_json: Vec<u8>,
    session: Option<&str>,
    idempotency: Option<IdempotencyKey>,
) -> Record {
    let (kind, reverts) = match change.kind {
        ChangeKind::Plain => (0, None),
        ChangeKind::Undo => (1, change.reverts),
        ChangeKind::Redo => (2, change.reverts),
        ChangeKind::Reverts(r) => (3, Some(r)),
    };
    Record {
        rev: change.rev.0,
        ts: change.ts,
        author: change.author.0,
        session: session.map(str::to_string),
        user: change.user.as_deref().map(str::to_string),
        client_req_id: change.client_req_id.map(|c| c.0),
        kind,
        reverts: reverts.map(|r| r.0),
        // serde_json wrote it: valid UTF-8, so the bytes become the string without a copy.
        ops: String::from_utf8(ops_json)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        inverse: serde_json::to_string(&change.inverse).expect("ops serialise"),
        touched: change.touched.iter().map(Pointer::encoded).collect(),
        list_touched: change.list_touched.iter().map(Pointer::encoded).collect(),
        meta: change.meta.as_ref().map(Value::to_string),
        idempotency,
    }
}
