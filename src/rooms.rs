//! The registry of rooms in memory, and admission to them: a `DashMap` from room name to the room
//! plus what the registry needs to know about its use (live connections, last activity).
//!
//! Rooms are created on first use by a writer or a connection; reads through the HTTP API never
//! create one. No map guard is ever held beyond the statement that takes it: callers get an
//! `Arc<Room>` clone. The number of rooms is bounded by `max_rooms` (0 = unlimited), counted with
//! an atomic so the check never locks every shard, and by the memory budget: every room charges
//! what it holds to one [`Budget`], and a new room is refused once the budget is 7/8 full, after
//! the rings have shed what history they can ([`Rooms::relieve`]). Admission
//! (`--max-room-clients`) and the idle sweep's "is anyone using it" both run under the room's
//! shard lock, so the sweep can never drop a room between its admission of a connection (or an
//! HTTP write's look-up) and that use. An admin delete ([`Rooms::remove`]) retires the room and
//! leaves it in the map (or puts a retired stand-in there, for a room only on disk) until its
//! stored data is deleted, then takes it out: a look-up gets the old room (which refuses commits
//! with `gone`) or, once the delete is done, a fresh one, never a copy read from half-deleted
//! files. A retired room is in the map only during a delete; a load that overlapped a delete is
//! read again (`deletes` counts them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::ids::{RoomId, now_ms};
use crate::memory::Budget;
use crate::protocol::ErrorCode;
use crate::room::{Restore, Room, RoomConfig};
use crate::store::{Journal, Store};

/// Why a room that does not exist could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoNewRoom {
    /// Creating another room would exceed `--max-rooms`.
    #[error("the server holds its maximum number of rooms (--max-rooms)")]
    TooManyRooms,
    /// The memory budget is too full to admit another room.
    #[error("the server's memory (--max-memory) is too full for a new room; rooms in memory still work")]
    MemoryFull,
    /// The room is stored but could not be read back (or, on Redis, another node owns it).
    #[error(
        "the room's stored data cannot be read, or another node owns the room; it was not loaded (see the server's log)"
    )]
    Unreadable,
}

impl NoNewRoom {
    /// The error code a client is told.
    pub fn code(self) -> ErrorCode {
        match self {
            NoNewRoom::TooManyRooms => ErrorCode::TooManyRooms,
            NoNewRoom::MemoryFull => ErrorCode::MemoryFull,
            NoNewRoom::Unreadable => ErrorCode::Unavailable,
        }
    }
}

/// Why a connection was not admitted to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the room holds its maximum number of connections")]
    RoomFull,
    #[error(transparent)]
    NoNewRoom(#[from] NoNewRoom),
}

/// A room with the registry's bookkeeping about it.
#[derive(Debug)]
struct Held {
    room: Arc<Room>,
    /// Live connections (each holds a [`Lease`]).
    connections: AtomicUsize,
    /// Unix millis of the last look-up for writing, admission or departure.
    last_active_ms: AtomicU64,
}

impl Held {
    /// A room's entry, active now, with no connection yet.
    fn new(room: Arc<Room>) -> Arc<Held> {
        Arc::new(Held { room, connections: AtomicUsize::new(0), last_active_ms: AtomicU64::new(now_ms()) })
    }

    fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// A connection's place in a room, counted from admission until dropped, so the idle sweep never
/// drops a room while it is in use.
#[derive(Debug)]
pub struct Lease(Arc<Held>);

impl Lease {
    pub fn room(&self) -> &Arc<Room> {
        &self.0.room
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last reader left: nobody can receive the broadcasts still buffered.
            self.0.room.broadcasts.release_if_unwatched();
        }
        self.0.touch();
    }
}

#[derive(Debug)]
pub struct Rooms {
    map: DashMap<RoomId, Arc<Held>>,
    count: AtomicUsize,
    config: RoomConfig,
    max_rooms: usize,
    /// What every room holds is charged here.
    budget: Arc<Budget>,
    /// Set while one caller sheds history for everyone (others carry on meanwhile).
    shedding: AtomicBool,
    /// Where rooms are stored (`None`: memory only).
    store: Option<Arc<dyn Store>>,
    /// Damage found and cut while loading rooms, for the log and the metric.
    damaged: AtomicU64,
    /// Deletes completed: a room read from the store while one ran is read again.
    deletes: AtomicU64,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Rooms {
    /// A registry outside any memory budget.
    pub fn new(config: RoomConfig, max_rooms: usize) -> Self {
        Self::with_budget(config, max_rooms, Budget::unlimited())
    }

    /// A registry whose rooms charge what they hold to `budget`.
    pub fn with_budget(config: RoomConfig, max_rooms: usize, budget: Arc<Budget>) -> Self {
        Rooms {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            config,
            max_rooms,
            budget,
            shedding: AtomicBool::new(false),
            store: None,
            damaged: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
        }
    }

    /// The registry with rooms kept in `store`: loaded on first use, written as they change.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The store behind the rooms, if any.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// Stored records found damaged (and cut) while loading rooms.
    pub fn damaged(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// When the memory budget is tight ([`Budget::excess_history`]), sheds the oldest history
    /// of every room, the same share of each ring (each keeps its newest change), until the
    /// budget is back to 3/4. Cheap when there is nothing to do; one caller at a time sheds.
    /// Returns the bytes freed. Takes each room's write lock in turn, never two at once, and
    /// must not be called under a map guard.
    pub fn relieve(&self) -> usize {
        let want = self.budget.excess_history();
        if want == 0 || self.shedding.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let keep = 1.0 - want as f64 / self.budget.history().max(1) as f64;
        let freed = self.all().iter().map(|room| room.shed_history(keep)).sum();
        self.shedding.store(false, Ordering::Release);
        self.budget.record_shed(freed);
        freed
    }

    /// Whether the room is in memory.
    pub fn is_loaded(&self, id: &RoomId) -> bool {
        self.map.contains_key(id)
    }

    /// The room if it is in memory (never loads or creates one).
    pub fn loaded(&self, id: &RoomId) -> Option<Arc<Room>> {
        self.map.get(id).map(|h| h.room.clone())
    }

    /// The room if it is in memory or stored (loading it); never creates one.
    pub fn get(&self, id: &RoomId) -> Option<Arc<Room>> {
        self.try_get(id).ok().flatten()
    }

    /// As [`Rooms::get`], telling a room that is stored but cannot be loaded (unreadable, or
    /// owned by another node) from one that does not exist.
    ///
    /// # Errors
    /// [`NoNewRoom::Unreadable`] when the store has the room but it cannot be loaded now.
    pub fn try_get(&self, id: &RoomId) -> Result<Option<Arc<Room>>, NoNewRoom> {
        if let Some(h) = self.map.get(id) {
            return Ok(Some(h.room.clone()));
        }
        if self.store.is_none() {
            return Ok(None);
        }
        self.hold(id, false, |h| h.room.clone())
    }

    /// Reads a stored room back (no lock held: the disk is read before the map is touched),
    /// replaying its records as the store streams them (memory in the ring's size, not the
    /// log's: see [`Restore`]). `Ok(None)` when nothing is stored for it.
    fn load(&self, id: &RoomId) -> Result<Option<Room>, NoNewRoom> {
        let Some(store) = &self.store else { return Ok(None) };
        let mut restore = Restore::new(id.clone(), self.config.clone(), &self.budget);
        let loaded = store.load_with(id, self.config.history, &mut restore).map_err(|e| {
            tracing::error!(room = %id, error = %e, "cannot read the stored room");
            NoNewRoom::Unreadable
        })?;
        let Some(loaded) = loaded else { return Ok(None) };
        let (room, damage) = restore.finish(loaded).map_err(|e| {
            tracing::error!(room = %id, error = %e, "cannot rebuild the stored room");
            NoNewRoom::Unreadable
        })?;
        for d in &damage {
            tracing::warn!(room = %id, damage = %d, "stored room damaged: cut at the last whole record");
        }
        self.damaged.fetch_add(damage.len() as u64, Ordering::Relaxed);
        tracing::info!(room = %id, rev = room.rev().0, "room loaded from the store");
        Ok(Some(room))
    }

    /// The room, created if needed, marked active under the shard lock (for writes).
    ///
    /// # Errors
    /// [`NoNewRoom`] when the room does not exist and `--max-rooms` or the memory budget does
    /// not admit another.
    pub fn get_or_create(&self, id: &RoomId) -> Result<Arc<Room>, NoNewRoom> {
        self.with_held(id, |h| h.room.clone())
    }

    /// Admits one more connection to the room (created if needed) unless it already holds
    /// `max_clients` (0 = unlimited).
    ///
    /// # Errors
    /// [`Refused`] when the room is full or cannot be created.
    pub fn admit(&self, id: &RoomId, max_clients: usize) -> Result<Lease, Refused> {
        let admitted = self.with_held(id, |h| {
            let counted = h.connections.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max_clients == 0 || n < max_clients).then_some(n + 1)
            });
            counted.is_ok().then(|| Lease(h.clone()))
        })?;
        admitted.ok_or(Refused::RoomFull)
    }

    /// Runs `f` on the room's entry (created if needed) under its shard lock, after marking it
    /// active.
    fn with_held<T>(&self, id: &RoomId, f: impl FnOnce(&Arc<Held>) -> T) -> Result<T, NoNewRoom> {
        Ok(self.hold(id, true, f)?.expect("created when absent"))
    }

    /// [`Rooms::with_held`]; without `create`, `None` when the room is neither in memory nor
    /// stored.
    fn hold<T>(
        &self,
        id: &RoomId,
        create: bool,
        f: impl FnOnce(&Arc<Held>) -> T,
    ) -> Result<Option<T>, NoNewRoom> {
        self.relieve();
        loop {
            let deletes = self.deletes.load(Ordering::Acquire);
            // A stored room is read before the shard is locked; a racing loader's copy is dropped
            // unused (only the one inserted gets a log).
            let mut loaded = None;
            if self.store.is_some() && !self.map.contains_key(id) {
                match self.load(id) {
                    Ok(room) => loaded = room,
                    // Read while a delete removed the files: look again (the retired room is in
                    // the map until the delete is done, then nothing is stored).
                    Err(_)
                        if self.deletes.load(Ordering::Acquire) != deletes || self.map.contains_key(id) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            match self.map.entry(id.clone()) {
                Entry::Occupied(e) => {
                    e.get().touch();
                    return Ok(Some(f(e.get())));
                }
                // Read before a delete finished: what it read is gone.
                Entry::Vacant(_) if loaded.is_some() && self.deletes.load(Ordering::Acquire) != deletes => {}
                Entry::Vacant(_) if loaded.is_none() && !create => return Ok(None),
                Entry::Vacant(e) => return self.insert(e, id, loaded, f).map(Some),
            }
        }
    }

    /// Puts a room (read from the store, or a new one) in the map's vacant entry `e`, running `f`
    /// on it before the entry (and its shard lock) is let go.
    fn insert<T>(
        &self,
        e: dashmap::mapref::entry::VacantEntry<'_, RoomId, Arc<Held>>,
        id: &RoomId,
        loaded: Option<Room>,
        f: impl FnOnce(&Arc<Held>) -> T,
    ) -> Result<T, NoNewRoom> {
        if !self.budget.admits_room() {
            return Err(NoNewRoom::MemoryFull);
        }
        let reserved = self.count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (self.max_rooms == 0 || n < self.max_rooms).then_some(n + 1)
        });
        if reserved.is_err() {
            return Err(NoNewRoom::TooManyRooms);
        }
        let room = Arc::new(
            loaded.unwrap_or_else(|| Room::with_budget(id.clone(), self.config.clone(), &self.budget)),
        );
        // A follower copy (another node owns the room) never appends.
        if let Some(store) = self.store.as_ref().filter(|_| !room.is_follower()) {
            let journal: std::sync::Weak<dyn Journal> = Arc::downgrade(&room) as _;
            room.attach_log(store.open(id, room.epoch().as_str(), journal));
        }
        let held = Held::new(room);
        let out = f(&held);
        e.insert(held);
        Ok(out)
    }

    /// Removes the room (an admin delete): it is retired ([`Room::retire`], so a handle held
    /// anywhere commits nothing more: `gone`) and, once its stored data is deleted, taken out of
    /// the map, so a later look-up creates a fresh room (a new epoch). Connections still leased
    /// to it keep their handle until they close. `None` when it was not in memory.
    ///
    /// While the store deletes, the retired room stays in the map (a room only on disk gets a
    /// retired stand-in there): a look-up meanwhile is refused with `gone`, instead of reading
    /// half-deleted files or creating a room whose files the delete would then remove.
    ///
    /// # Errors
    /// When the store cannot delete the room's data (the room leaves memory all the same).
    pub fn remove(&self, id: &RoomId) -> Result<Option<Arc<Room>>, crate::store::StoreError> {
        let (room, in_memory) = match self.map.entry(id.clone()) {
            Entry::Occupied(e) => {
                e.get().room.retire_for_delete();
                (Some(e.get().room.clone()), true)
            }
            Entry::Vacant(e) if self.store.is_some() => {
                let stand_in = Arc::new(Room::with_budget(id.clone(), self.config.clone(), &self.budget));
                stand_in.retire();
                e.insert(Held::new(stand_in.clone()));
                (Some(stand_in), false)
            }
            Entry::Vacant(_) => (None, false),
        };
        let deleted = self.store.as_ref().map_or(Ok(()), |store| store.delete(id));
        if let Some(room) = &room {
            room.deleted();
        }
        // Counted before the room leaves the map: a load that overlapped the delete sees it.
        self.deletes.fetch_add(1, Ordering::AcqRel);
        if let Some(room) = &room
            && self.map.remove_if(id, |_, h| Arc::ptr_eq(&h.room, room)).is_some()
            && in_memory
        {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        deleted?;
        Ok(room.filter(|_| in_memory))
    }

    /// Takes the room out of memory without touching what is stored (its ownership moved to
    /// another node): it is retired (a handle still held elsewhere commits nothing more) and the
    /// next use loads it from the store again. `None` when it is not in memory.
    pub fn unload(&self, id: &RoomId) -> Option<Arc<Room>> {
        let (_, held) = self.map.remove(id)?;
        held.room.retire();
        self.count.fetch_sub(1, Ordering::AcqRel);
        Some(held.room.clone())
    }

    /// Live connections in the room (0 when it is not in memory).
    pub fn clients(&self, id: &RoomId) -> usize {
        self.map.get(id).map_or(0, |h| h.connections.load(Ordering::Acquire))
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every room with no connection that has not been used for `ttl`. Returns how many
    /// were dropped.
    ///
    /// A stored room is evicted only once everything it committed is written; it is retired
    /// first (a handle still held elsewhere commits nothing more) and its files are closed
    /// after it left the map, so the next use loads exactly what was written.
    pub fn evict_idle(&self, ttl: Duration) -> usize {
        let now = now_ms();
        let ttl = ttl.as_millis() as u64;
        self.evict(|h| {
            h.connections.load(Ordering::Acquire) == 0
                && now.saturating_sub(h.last_active_ms.load(Ordering::Relaxed)) >= ttl
                && h.room.is_settled()
        })
    }

    fn evict(&self, mut idle: impl FnMut(&Held) -> bool) -> usize {
        let mut evicted = Vec::new();
        self.map.retain(|id, h| {
            // A retired room in the map is being deleted: `remove` takes it out when done.
            let drop = !h.room.is_retired() && idle(h);
            if drop {
                h.room.retire();
                evicted.push(id.clone());
            }
            !drop
        });
        self.count.fetch_sub(evicted.len(), Ordering::AcqRel);
        if let Some(store) = &self.store {
            for id in &evicted {
                store.close(id);
            }
        }
        evicted.len()
    }

    /// A snapshot of every room handle (for metrics and sweeps).
    pub fn all(&self) -> Vec<Arc<Room>> {
        self.map.iter().map(|h| h.room.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn creates_once_and_limits() {
        let rooms = Rooms::new(RoomConfig::default(), 2);
        let a = rooms.get_or_create(&id("a")).unwrap();
        let a2 = rooms.get_or_create(&id("a")).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(rooms.get(&id("b")).is_none());
        rooms.get_or_create(&id("b")).unwrap();
        assert_eq!(rooms.get_or_create(&id("c")).unwrap_err(), NoNewRoom::TooManyRooms);
        assert_eq!(rooms.evict(|h| h.room.id().as_str() == "a"), 1);
        assert_eq!(rooms.len(), 1);
        let fresh = rooms.get_or_create(&id("a")).unwrap();
        assert_ne!(fresh.epoch(), a.epoch());
    }

    #[test]
    fn a_removed_room_is_retired_and_the_next_use_creates_a_fresh_one() {
        let rooms = Rooms::new(RoomConfig::default(), 0);
        let old = rooms.get_or_create(&id("a")).unwrap();
        add(&old, "/x", 1.into()).unwrap();
        let removed = rooms.remove(&id("a")).unwrap().unwrap();
        assert!(Arc::ptr_eq(&old, &removed));
        assert!(rooms.is_empty() && rooms.get(&id("a")).is_none());
        assert_eq!(
            add(&old, "/y", 2.into()).unwrap_err().code,
            ErrorCode::Gone,
            "a stale handle commits nothing"
        );
        assert_eq!(old.rev().0, 1);
        let fresh = rooms.get_or_create(&id("a")).unwrap();
        assert_ne!(fresh.epoch(), old.epoch());
        assert_eq!(fresh.rev().0, 0);
        assert!(rooms.remove(&id("b")).unwrap().is_none());
    }

    /// A store that runs `during` in the middle of a delete (after the room's data is gone from
    /// the inner store, before the delete returns): what a look-up sees while a delete runs.
    struct SlowDelete {
        inner: Arc<crate::store::memory::MemoryStore>,
        during: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl Store for SlowDelete {
        fn load_with(
            &self,
            room: &RoomId,
            keep: usize,
            sink: &mut dyn crate::store::LoadSink,
        ) -> Result<Option<crate::store::Loaded>, crate::store::StoreError> {
            self.inner.load_with(room, keep, sink)
        }
        fn open(
            &self,
            room: &RoomId,
            epoch: &str,
            journal: std::sync::Weak<dyn Journal>,
        ) -> Arc<dyn crate::store::RoomLog> {
            self.inner.open(room, epoch, journal)
        }
        fn changes(
            &self,
            room: &RoomId,
            after: u64,
            limit: usize,
        ) -> Result<Vec<crate::store::Record>, crate::store::StoreError> {
            self.inner.changes(room, after, limit)
        }
        fn oldest(&self, room: &RoomId) -> Option<u64> {
            self.inner.oldest(room)
        }
        fn rooms_after(
            &self,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<RoomId>, crate::store::StoreError> {
            self.inner.rooms_after(after, limit)
        }
        fn delete(&self, room: &RoomId) -> Result<(), crate::store::StoreError> {
            self.inner.delete(room)?;
            if let Some(during) = self.during.lock().take() {
                during();
            }
            Ok(())
        }
        fn close(&self, room: &RoomId) {
            self.inner.close(room);
        }
        fn flush(&self) {
            self.inner.flush();
        }
    }

    /// While a delete runs, a look-up of the room (in memory, or only stored) gets a retired room
    /// (its commits refused with `gone`), never a copy read from the half-deleted store or a
    /// fresh room the delete would then wipe; once it is done, a fresh room.
    #[test]
    fn a_look_up_during_a_delete_gets_a_retired_room_and_a_fresh_one_after() {
        for stored_only in [false, true] {
            let store = Arc::new(SlowDelete {
                inner: crate::store::memory::MemoryStore::new(),
                during: parking_lot::Mutex::new(None),
            });
            let rooms = Arc::new(Rooms::new(RoomConfig::default(), 0).with_store(store.clone()));
            let old = rooms.get_or_create(&id("a")).unwrap();
            add(&old, "/x", 1.into()).unwrap();
            if stored_only {
                assert_eq!(rooms.evict_idle(Duration::ZERO), 1);
                assert!(!rooms.is_loaded(&id("a")));
            }
            let seen = Arc::new(parking_lot::Mutex::new(None));
            let (r, seen2) = (rooms.clone(), seen.clone());
            *store.during.lock() = Some(Box::new(move || {
                let during = r.get_or_create(&id("a")).expect("a look-up during the delete answers");
                let refused = add(&during, "/y", 2.into()).unwrap_err().code;
                // The sweep leaves a room being deleted alone.
                let evicted = r.evict_idle(Duration::ZERO);
                *seen2.lock() = Some((during.is_retired(), refused, evicted));
            }));
            let removed = rooms.remove(&id("a")).unwrap();
            assert_eq!(removed.is_some(), !stored_only, "Some only for a room that was in memory");
            assert_eq!(*seen.lock(), Some((true, ErrorCode::Gone, 0)), "stored_only={stored_only}");
            assert!(rooms.get(&id("a")).is_none(), "nothing stored after the delete");
            let fresh = rooms.get_or_create(&id("a")).unwrap();
            assert!(!fresh.is_retired());
            assert_ne!(fresh.epoch(), old.epoch());
            assert_eq!(fresh.rev().0, 0);
            assert_eq!(rooms.len(), 1, "the stand-in was never counted");
        }
    }

    #[test]
    fn admission_counts_leases_and_keeps_rooms_in_use() {
        let rooms = Rooms::new(RoomConfig::default(), 1);
        let first = rooms.admit(&id("a"), 2).unwrap();
        let second = rooms.admit(&id("a"), 2).unwrap();
        assert_eq!(rooms.admit(&id("a"), 2).unwrap_err(), Refused::RoomFull);
        assert_eq!(rooms.admit(&id("b"), 2).unwrap_err(), Refused::NoNewRoom(NoNewRoom::TooManyRooms));
        assert_eq!(rooms.clients(&id("a")), 2);
        assert_eq!(rooms.evict_idle(Duration::ZERO), 0, "in use");
        drop((first, second));
        assert_eq!(rooms.clients(&id("a")), 0);
        assert_eq!(rooms.evict_idle(Duration::from_secs(3600)), 0, "recently used");
        assert_eq!(rooms.evict_idle(Duration::ZERO), 1);
        assert!(rooms.is_empty());
    }

    fn add(room: &Room, path: &str, value: serde_json::Value) -> Result<(), crate::protocol::Reject> {
        let ops = crate::patch::parse_patch(serde_json::json!([{"op": "add", "path": path, "value": value}]));
        let req = crate::room::ChangeRequest {
            author: crate::ids::ClientId(1),
            user: None,
            client_req_id: None,
            base_rev: None,
            mode: crate::protocol::Mode::Overwrite,
            ops: ops.unwrap(),
            extras: Default::default(),
        };
        room.commit(req).map(drop)
    }

    #[test]
    fn the_memory_budget_sheds_history_before_refusing_rooms_and_changes() {
        let limit = 1 << 20;
        let budget = Budget::new(limit);
        let rooms = Rooms::with_budget(RoomConfig::default(), 0, budget.clone());
        let a = rooms.get_or_create(&id("a")).unwrap();
        // Overwriting one member grows only the history (each change keeps the old value).
        let blob = "x".repeat(20_000);
        for i in 0..200 {
            add(&a, "/v", format!("{i}{blob}").into()).unwrap();
        }
        assert!(budget.used() <= limit, "the room shed its own history to fit");
        assert!(budget.history() > limit / 2, "{}", budget.history());
        // A new room: the registry sheds everyone's history first, then admits it.
        let b = rooms.get_or_create(&id("b")).unwrap();
        assert!(budget.shed_total() > 0);
        assert!(budget.used() <= limit - limit / 8 + 4096, "{}", budget.used());
        let (held, _) = a.ring_occupancy();
        assert!(held >= 1, "the newest change stays");
        // State cannot be shed: fill it until changes and new rooms are refused (each write
        // first asks the registry to relieve the budget, as `App::commit` does).
        let mut refused = None;
        for i in 0..1000 {
            rooms.relieve();
            if let Err(r) = add(&b, &format!("/k{i}"), blob.clone().into()) {
                refused = Some(r);
                break;
            }
        }
        let r = refused.expect("a change is refused once state fills the budget");
        assert_eq!(r.code, ErrorCode::MemoryFull, "{r:?}");
        assert!(r.message.contains("--max-memory"), "{}", r.message);
        assert_eq!(rooms.get_or_create(&id("c")).unwrap_err(), NoNewRoom::MemoryFull);
        assert_eq!(rooms.admit(&id("c"), 0).unwrap_err(), Refused::NoNewRoom(NoNewRoom::MemoryFull));
        // Rooms in memory still take small changes (their own history makes room).
        add(&a, "/small", 1.into()).unwrap();
        // Everything is released with the rooms.
        drop((a, b));
        assert_eq!(rooms.evict_idle(Duration::ZERO), 2);
        assert_eq!((budget.used(), budget.history()), (0, 0));
    }
}
