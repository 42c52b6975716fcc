//! The storage seam: how a room's committed changes and snapshots reach a store and come back.
//!
//! A room with a store ([`Store::open`] gives it a [`RoomLog`]) hands every committed change to
//! its log as a [`Record`], under its write lock and in revision order; the append only queues
//! (no disk or network I/O is ever done under a room's lock). The store writes the records on
//! its own thread and reports back through the room's [`Journal`]: [`Journal::written`] once a
//! revision is stored as the `--fsync` policy promises, [`Journal::failed`] when it could not be
//! (the room then rolls back every change after the last written one and rejects them
//! `unavailable`). Nothing is acknowledged or sent to anyone before `written`: its completion
//! gates the ack. Snapshots ([`SnapshotData`]) are queued the same way and written only after
//! every record up to their revision.
//!
//! Invariants a store keeps: records of a room are stored in revision order with no gap; a
//! record is reported written only when every earlier one is; after a failure for generation
//! `generation`, later queued records of that generation are dropped (the room rolled them back and
//! reuses their revisions under the next generation); what [`Store::load_with`] reads back is a
//! prefix of what was appended (a torn or corrupt tail is cut, reported in [`Loaded::damage`]).
//!
//! Reading a room back streams: [`Store::load_with`] hands a [`LoadSink`] the snapshot, then the
//! records one at a time, oldest first, as it decodes them, so a load holds what the receiver keeps
//! (a restoring room: its ring) plus what the store reads at once (the file store: one segment),
//! never the whole log. Records come in ascending revision order; where one does not follow the
//! one before it (`rev != previous + 1`) the ones before it are of no use and the receiver
//! discards them. A store does that only where the snapshot covers the gap (the record after it is
//! at most the snapshot's revision + 1: the log before the snapshot was lost or never synced), so a
//! record after the snapshot is never taken back. [`Store::load`] collects the same stream into
//! [`Loaded::records`] (tests and tools; a room loads through the stream).
//!
//! Implementations: [`file::FileStore`] (an append-only log per room, CRC32C-framed rkyv
//! records, rkyv snapshots; see [`codec`]) and [`memory::MemoryStore`] (records kept in memory,
//! with fault injection, for tests). `--memory-only` runs without a store at all: a room without
//! a log counts every change as written when it commits, exactly as before there was a seam.

pub mod codec;
pub mod file;
pub mod memory;
pub mod redis;

use std::sync::{Arc, Weak};

use crate::ids::RoomId;

/// One committed change as stored: everything needed to rebuild the room's ring entry (and so
/// its deltas, acks, undo stacks and dedupe state) without re-applying it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Record {
    pub rev: u64,
    /// Commit time, ms since the Unix epoch.
    pub ts: u64,
    /// The author's client id (`ClientId.0`; 0 = HTTP).
    pub author: u64,
    /// The author's session token (dedupe survives a restart); `None` for HTTP.
    pub session: Option<String>,
    /// The author's user (a token's `sub`).
    pub user: Option<String>,
    pub client_req_id: Option<u64>,
    /// 0 plain, 1 undo, 2 redo, 3 reverts (then `reverts` names the revision).
    pub kind: u8,
    pub reverts: Option<u64>,
    /// The ops as applied, a JSON array.
    pub ops: String,
    /// Their inverse, a JSON array.
    pub inverse: String,
    /// Paths read or written (JSON pointers), for `paths`-mode conflict checks.
    pub touched: Vec<String>,
    /// Arrays edited by id-addressed list ops.
    pub list_touched: Vec<String>,
    /// The client's `meta` object as JSON.
    pub meta: Option<String>,
    /// An HTTP `Idempotency-Key` and the fingerprint of the request it came with.
    pub idempotency: Option<IdempotencyKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: u64,
}

/// A session's dedupe state, kept in snapshots so a resend after a restart is applied once.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SessionRecord {
    pub token: String,
    pub client: u64,
    pub user: Option<String>,
    /// The highest `clientReqId` of its that committed.
    pub last_req: u64,
    /// When it last committed, ms since the Unix epoch.
    pub seen_ms: u64,
}

/// An HTTP `Idempotency-Key` answered, kept in snapshots so a retry after a restart gets the
/// original answer.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct IdempotencyRecord {
    pub key: String,
    pub fingerprint: u64,
    pub rev: u64,
    /// The original response body (JSON).
    pub response: String,
    pub ts_ms: u64,
}

/// The room at one revision.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotData {
    pub epoch: String,
    pub rev: u64,
    /// When it was taken, ms since the Unix epoch.
    pub ts: u64,
    /// The state as JSON.
    pub state: String,
    pub sessions: Vec<SessionRecord>,
    pub idempotency: Vec<IdempotencyRecord>,
    /// The highest client id the room has seen (new sessions get higher ones).
    pub max_client: u64,
}

/// What [`Store::load`] or [`Store::load_with`] found for a room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub epoch: String,
    /// The newest snapshot that decoded (a damaged one is skipped for the one before it).
    pub snapshot: Option<SnapshotData>,
    /// Consecutive records ending with the newest whole one: every record after the snapshot,
    /// and up to `keep` before it (to refill the ring), oldest first. Filled by [`Store::load`]
    /// only: [`Store::load_with`] hands them to its sink and leaves this empty.
    pub records: Vec<Record>,
    /// What was damaged and cut or skipped (file, offset, why), for the log and the metric.
    pub damage: Vec<String>,
    /// The lease token of the node that owns the room, when it is not this one (cluster mode):
    /// the room was read without its lease, to be followed, never committed to (see
    /// [`crate::room::follow`]). `None` when this node may commit.
    pub owner: Option<String>,
}

/// Why a store could not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn io(what: impl std::fmt::Display, e: &std::io::Error) -> Self {
        StoreError(format!("{what}: {e}"))
    }
}

/// How a room hears what became of its appends (implemented by the room; called on the store's
/// thread, never under the room's lock). Order: `failed(_, rev)` comes only after `written` has
/// covered `rev - 1` (everything stored before a failure is reported first), so a rollback
/// never takes back a record that is on disk.
pub trait Journal: Send + Sync {
    /// Every record up to `rev` is stored as the fsync policy promises.
    fn written(&self, rev: u64);
    /// The record `rev` of generation `generation` (and every later one of that generation) could not
    /// be stored.
    fn failed(&self, generation: u64, rev: u64, error: &StoreError);
}

/// One room's way into the store (from [`Store::open`]).
pub trait RoomLog: Send + Sync {
    /// Queues a committed change. Called in revision order, on the committing thread, outside
    /// the room's state lock: it must not block on I/O. A store may encode the record here (the
    /// file store does: the change is still in this thread's cache, and its writer then handles
    /// bytes only).
    fn append(&self, generation: u64, record: Record);
    /// Queues a snapshot, written once every record up to its revision is.
    fn snapshot(&self, data: SnapshotData);
}

/// Where [`Store::load_with`] hands what it reads, as it reads it (see the module doc).
///
/// Order: [`snapshot`](Self::snapshot) once, then every [`record`](Self::record), oldest first.
/// The snapshot comes first because what a record is for depends on it: one at or before its
/// revision only refills the ring, one after it is applied.
pub trait LoadSink {
    /// The newest snapshot that decoded (`None`: none is stored or none decoded), before any
    /// record. The same snapshot is in the [`Loaded`] the load returns.
    fn snapshot(&mut self, snapshot: Option<&SnapshotData>);
    /// The next record: its revision is above the previous record's. When it is not the
    /// previous one's + 1, every record before it is of no use (a gap the snapshot covers; only
    /// records at or before the snapshot's revision are ever taken back this way).
    fn record(&mut self, record: Record);
}

/// The sink [`Store::load`] collects through: every record, minus those a gap makes of no use.
#[derive(Debug, Default)]
struct Collect(Vec<Record>);

impl LoadSink for Collect {
    fn snapshot(&mut self, _: Option<&SnapshotData>) {}

    fn record(&mut self, record: Record) {
        if self.0.last().is_some_and(|last| last.rev.checked_add(1) != Some(record.rev)) {
            self.0.clear();
        }
        self.0.push(record);
    }
}

/// A place rooms are stored.
pub trait Store: Send + Sync {
    /// Reads a room back, streaming: hands `sink` the newest snapshot that decoded, then the
    /// records from `keep` before the snapshot on (every record when there is no snapshot),
    /// oldest first, as they are read, under the contract of [`LoadSink`]. Returns what else it
    /// found ([`Loaded::records`] empty), or `None` when nothing is stored for the room (the sink
    /// is then not called). Cuts a torn or corrupt tail: the records before the damage have been
    /// handed over and stay valid, none after it is.
    ///
    /// # Errors
    /// When the room's files exist but cannot be read at all; what the sink got is then to be
    /// dropped.
    fn load_with(
        &self,
        room: &RoomId,
        keep: usize,
        sink: &mut dyn LoadSink,
    ) -> Result<Option<Loaded>, StoreError>;
    /// As [`load_with`](Self::load_with), with the records collected into
    /// [`Loaded::records`]: memory in the length of the log (tests and tools; rooms load
    /// through the stream).
    ///
    /// # Errors
    /// As [`load_with`](Self::load_with).
    fn load(&self, room: &RoomId, keep: usize) -> Result<Option<Loaded>, StoreError> {
        let mut records = Collect::default();
        let loaded = self.load_with(room, keep, &mut records)?;
        Ok(loaded.map(|loaded| Loaded { records: records.0, ..loaded }))
    }
    /// The room's log, for a room with `epoch` that reports to `journal`.
    fn open(&self, room: &RoomId, epoch: &str, journal: Weak<dyn Journal>) -> Arc<dyn RoomLog>;
    /// Up to `limit` stored records after revision `after`, oldest first (the history API beyond
    /// the ring). Empty when none are stored after it.
    ///
    /// # Errors
    /// When the files cannot be read.
    fn changes(&self, room: &RoomId, after: u64, limit: usize) -> Result<Vec<Record>, StoreError>;
    /// The oldest revision whose record is still stored (`None` when nothing is).
    fn oldest(&self, room: &RoomId) -> Option<u64>;
    /// The `limit` smallest names (byte order) of stored rooms after `after`, sorted (the admin
    /// list: rooms on disk that are not in memory). Reads the store: call it off the async
    /// workers.
    ///
    /// # Errors
    /// When the store cannot be listed.
    fn rooms_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomId>, StoreError>;
    /// Removes everything stored for the room (after what is queued for it is dropped).
    ///
    /// # Errors
    /// When the files cannot be removed.
    fn delete(&self, room: &RoomId) -> Result<(), StoreError>;
    /// Writes and syncs everything queued so far, and closes the room's files (eviction).
    fn close(&self, room: &RoomId);
    /// Writes and syncs everything queued so far (shutdown).
    fn flush(&self);
    /// The last call, at shutdown, once nothing commits any more: flushes, and gives up what
    /// the store holds for this process (the Redis store: its rooms' leases, so another node
    /// may take them at once instead of after the lease's expiry).
    fn shutdown(&self) {
        self.flush();
    }
    /// Rooms this node may no longer serve since the last call: their ownership moved (the
    /// Redis store: a lease lapsed or was taken, or the stored log moved on without this node).
    /// The caller unloads them and closes their connections, so clients reconnect to the owner.
    fn take_moved(&self) -> Vec<RoomId> {
        Vec::new()
    }
}

/// The `limit` items with the smallest names (byte order) after `after`, sorted by name (for
/// [`Store::rooms_after`] and the admin list's rooms in memory).
pub fn smallest_after<T>(
    items: impl Iterator<Item = T>,
    name: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<T> {
    let mut page: Vec<T> = items.filter(|t| after.is_none_or(|a| name(t) > a)).collect();
    if page.len() > limit {
        page.select_nth_unstable_by(limit, |a, b| name(a).cmp(name(b)));
        page.truncate(limit);
    }
    page.sort_unstable_by(|a, b| name(a).cmp(name(b)));
    page
}
