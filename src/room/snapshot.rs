//! Snapshots: the room's state encoded as JSON at one revision, encoded at most once per revision
//! and shared by every reader that needs it.
//!
//! Single flight: the first reader to find the cache stale encodes under `snapshot_encode` (and
//! the room's read lock, so it delays writers by one encode at most, never readers); readers that
//! arrive meanwhile wait for it and share the result. Invariant: the cached snapshot's `state` is
//! exactly `state_bytes` long (size accounting is exact).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Room;
use crate::ids::Rev;
use crate::memory::Heap;

/// The state encoded at one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub rev: Rev,
    /// The state as JSON.
    pub state: Bytes,
}

impl Room {
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
        let mut cached = self.snapshot.lock();
        self.memory.snapshot.set(Heap::block(snap.state.len()).total());
        *cached = Some(snap.clone());
        drop(cached);
        snap
    }

    fn cached_snapshot(&self) -> Option<Arc<Snapshot>> {
        let cached = self.snapshot.lock();
        cached.as_ref().filter(|s| s.rev == self.rev()).cloned()
    }
}
