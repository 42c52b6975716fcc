//! The registry of rooms in memory: a `DashMap` from room name to `Arc<Room>`.
//!
//! Rooms are created on first use by a writer or a connection; reads through the HTTP API never
//! create one. No map guard is ever held beyond the statement that takes it: callers get an
//! `Arc<Room>` clone. The number of rooms is bounded by `max_rooms` (0 = unlimited), counted with
//! an atomic so the check never locks every shard.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::ids::RoomId;
use crate::room::{Room, RoomConfig};

/// Creating another room would exceed `--max-rooms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server holds its maximum number of rooms")]
pub struct TooManyRooms;

#[derive(Debug)]
pub struct Rooms {
    map: DashMap<RoomId, Arc<Room>>,
    count: AtomicUsize,
    config: RoomConfig,
    max_rooms: usize,
}

impl Rooms {
    pub fn new(config: RoomConfig, max_rooms: usize) -> Self {
        Rooms { map: DashMap::new(), count: AtomicUsize::new(0), config, max_rooms }
    }

    pub fn get(&self, id: &RoomId) -> Option<Arc<Room>> {
        self.map.get(id).map(|r| r.value().clone())
    }

    /// The room, created if needed, marked active while the map's shard lock is held, so the
    /// idle sweep cannot drop it between this call and the caller's use of it.
    ///
    /// # Errors
    /// [`TooManyRooms`] when the room does not exist and the limit is reached.
    pub fn get_or_create(&self, id: &RoomId) -> Result<Arc<Room>, TooManyRooms> {
        self.acquire(id, |_| ())
    }

    /// Like [`Rooms::get_or_create`], also running `hold` on the room under the shard lock (the
    /// WebSocket path counts its connection there, so the sweep sees it at once).
    ///
    /// # Errors
    /// [`TooManyRooms`] when the room does not exist and the limit is reached.
    pub fn acquire(&self, id: &RoomId, hold: impl FnOnce(&Room)) -> Result<Arc<Room>, TooManyRooms> {
        match self.map.entry(id.clone()) {
            Entry::Occupied(e) => {
                e.get().touch();
                hold(e.get());
                Ok(e.get().clone())
            }
            Entry::Vacant(e) => {
                let reserved = self.count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (self.max_rooms == 0 || n < self.max_rooms).then_some(n + 1)
                });
                if reserved.is_err() {
                    return Err(TooManyRooms);
                }
                let room = Arc::new(Room::new(id.clone(), self.config.clone()));
                hold(&room);
                e.insert(room.clone());
                Ok(room)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes rooms for which `idle` returns true. Returns how many were dropped.
    pub fn evict(&self, mut idle: impl FnMut(&Room) -> bool) -> usize {
        let mut dropped = 0;
        self.map.retain(|_, r| {
            let drop = idle(r);
            dropped += usize::from(drop);
            !drop
        });
        self.count.fetch_sub(dropped, Ordering::AcqRel);
        dropped
    }

    /// A snapshot of every room handle (for metrics and sweeps).
    pub fn all(&self) -> Vec<Arc<Room>> {
        self.map.iter().map(|r| r.value().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_limits() {
        let rooms = Rooms::new(RoomConfig::default(), 2);
        let a = rooms.get_or_create(&RoomId::parse("a").unwrap()).unwrap();
        let a2 = rooms.get_or_create(&RoomId::parse("a").unwrap()).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(rooms.get(&RoomId::parse("b").unwrap()).is_none());
        rooms.get_or_create(&RoomId::parse("b").unwrap()).unwrap();
        assert_eq!(rooms.get_or_create(&RoomId::parse("c").unwrap()).unwrap_err(), TooManyRooms);
        assert_eq!(rooms.evict(|r| r.id().as_str() == "a"), 1);
        assert_eq!(rooms.len(), 1);
        let fresh = rooms.get_or_create(&RoomId::parse("a").unwrap()).unwrap();
        assert_ne!(fresh.epoch(), a.epoch());
    }
}
