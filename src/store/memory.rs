//! A store that keeps records in memory: the seam's reference implementation, used by tests to
//! check what a room appends and to inject faults (a failed append, as a full disk would give).
//!
//! Appends complete on the caller's thread (under the room's lock: [`Journal::written`] and
//! [`Journal::failed`] must not take it). Invariants as for every store: a room's records are
//! kept in revision order with no gap; after a failure for generation `generation`, its later records
//! are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::{Journal, LoadSink, Loaded, Record, RoomLog, SnapshotData, Store, StoreError};
use crate::ids::RoomId;

/// Records and snapshots kept in memory, with a switch that makes appends fail.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<RoomId, Stored>>,
    failing: AtomicBool,
    /// While set, appends are kept but not reported written (a slow disk).
    holding: AtomicBool,
    /// Held appends: (room's journal, newest rev held).
    held: Mutex<Vec<(Weak<dyn Journal>, u64)>>,
}

#[derive(Default, Clone)]
struct Stored {
    epoch: String,
    records: Vec<Record>,
    snapshots: Vec<SnapshotData>,
    /// Generation whose appends failed: its later records are dropped.
    failed_gen: Option<u64>,
}

impl MemoryStore {
    pub fn new() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::default())
    }

    /// From now on every append fails (`true`) or succeeds again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// From now on appends are stored but not reported written until [`MemoryStore::release`]
    /// (a slow disk: the room's changes stay invisible meanwhile).
    pub fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
    }

    /// Reports every held append written, and stops holding.
    pub fn release(&self) {
        self.holding.store(false, Ordering::SeqCst);
        self.report_held();
    }

    /// Reports the held appends written (a failure is reported only after every earlier record
    /// was reported written: see [`Journal`]).
    fn report_held(&self) {
        let held = std::mem::take(&mut *self.held.lock());
        for (journal, rev) in held {
            if let Some(j) = journal.upgrade() {
                j.written(rev);
            }
        }
    }

    /// The records stored for `room`.
    pub fn records(&self, room: &RoomId) -> Vec<Record> {
        self.rooms.lock().get(room).map(|s| s.records.clone()).unwrap_or_default()
    }

    /// The snapshots stored for `room`, oldest first.
    pub fn snapshots(&self, room: &RoomId) -> Vec<SnapshotData> {
        self.rooms.lock().get(room).map(|s| s.snapshots.clone()).unwrap_or_default()
    }
}

struct Log {
    store: Arc<MemoryStore>,
    room: RoomId,
    journal: Weak<dyn Journal>,
}

impl RoomLog for Log {
    fn append(&self, generation: u64, record: Record) {
        let rev = record.rev;
        let outcome = {
            let mut rooms = self.store.rooms.lock();
            let s = rooms.entry(self.room.clone()).or_default();
            let next =
                s.records.last().map_or(1, |r| r.rev + 1).max(s.snapshots.last().map_or(1, |x| x.rev + 1));
            if s.failed_gen == Some(generation) {
                None
            } else if self.store.failing.load(Ordering::SeqCst) {
                s.failed_gen = Some(generation);
                Some(Err(StoreError("injected fault: the store refuses appends".into())))
            } else if rev != next {
                s.failed_gen = Some(generation);
                Some(Err(StoreError(format!("record {rev} out of order (expected {next})"))))
            } else {
                s.records.push(record);
                Some(Ok(()))
            }
        };
        if matches!(outcome, Some(Ok(()))) && self.store.holding.load(Ordering::SeqCst) {
            self.store.held.lock().push((self.journal.clone(), rev));
            return;
        }
        if matches!(outcome, Some(Err(_))) {
            self.store.report_held();
        }
        let Some(journal) = self.journal.upgrade() else { return };
        match outcome {
            Some(Ok(())) => journal.written(rev),
            Some(Err(e)) => journal.failed(generation, rev, &e),
            None => {}
        }
    }

    fn snapshot(&self, data: SnapshotData) {
        let mut rooms = self.store.rooms.lock();
        let s = rooms.entry(self.room.clone()).or_default();
        if s.records.last().is_none_or(|r| r.rev >= data.rev) {
            s.snapshots.push(data);
        }
    }
}

impl Store for Arc<MemoryStore> {
    /// Hands the sink clones of what is stored, under the store's lock (the sink must not use
    /// the store).
    fn load_with(
        &self,
        room: &RoomId,
        keep: usize,
        sink: &mut dyn LoadSink,
    ) -> Result<Option<Loaded>, StoreError> {
        let rooms = self.rooms.lock();
        let Some(s) = rooms.get(room) else { return Ok(None) };
        let snapshot = s.snapshots.last().cloned();
        sink.snapshot(snapshot.as_ref());
        let from = snapshot.as_ref().map_or(0, |x| x.rev.saturating_sub(keep as u64));
        for record in s.records.iter().filter(|r| r.rev > from) {
            sink.record(record.clone());
        }
        Ok(Some(Loaded {
            epoch: s.epoch.clone(),
            snapshot,
            records: Vec::new(),
            damage: Vec::new(),
            owner: None,
        }))
    }

    fn open(&self, room: &RoomId, epoch: &str, journal: Weak<dyn Journal>) -> Arc<dyn RoomLog> {
        let mut rooms = self.rooms.lock();
        let s = rooms.entry(room.clone()).or_default();
        s.epoch = epoch.to_string();
        s.failed_gen = None;
        Arc::new(Log { store: self.clone(), room: room.clone(), journal })
    }

    fn changes(&self, room: &RoomId, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let rooms = self.rooms.lock();
        let records = rooms.get(room).map(|s| s.records.as_slice()).unwrap_or_default();
        Ok(records.iter().filter(|r| r.rev > after).take(limit).cloned().collect())
    }

    fn oldest(&self, room: &RoomId) -> Option<u64> {
        self.rooms.lock().get(room).and_then(|s| s.records.first()).map(|r| r.rev)
    }

    fn rooms_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomId>, StoreError> {
        let names: Vec<RoomId> = self.rooms.lock().keys().cloned().collect();
        Ok(super::smallest_after(names.into_iter(), RoomId::as_str, after, limit))
    }

    fn delete(&self, room: &RoomId) -> Result<(), StoreError> {
        self.rooms.lock().remove(room);
        Ok(())
    }

    fn close(&self, _room: &RoomId) {}

    fn flush(&self) {}
}
