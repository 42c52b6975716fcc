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
        let rev = self.rev();
        let snap = if g.ring.head() == rev.0 {
            let snap = Snapshot {
                rev,
                state: serde_json::to_vec(&g.state).expect("state always serialises").into(),
            };
            debug_assert_eq!(
                self.state_bytes.load(Ordering::Relaxed),
                snap.state.len(),
                "size accounting is exact"
            );
            drop(g);
            Arc::new(snap)
        } else {
            // Changes the store has not written yet are left out (see `durable`).
            let state = self.visible_state(&g, rev);
            drop(g);
            Arc::new(Snapshot {
                rev,
                state: serde_json::to_vec(&state).expect("state always serialises").into(),
            })
        };
        let mut cached = self.snapshot.lock();
        self.memory.snapshot.set(Heap::block(snap.state.len()).total());
        *cached = Some(snap.clone());
        drop(cached);
        snap
    }

    /// The state at `rev` (the visible revision, at most a few changes behind the head): the
    /// current state with the newer changes' inverses applied.
    pub(super) fn visible_state(&self, g: &super::Inner, rev: Rev) -> serde_json::Value {
        let mut state = g.state.clone();
        for c in g.ring.newest_first().take_while(|c| c.rev > rev) {
            let undone = crate::patch::revert(&mut state, &c.inverse);
            debug_assert!(undone.is_ok(), "a retained inverse must apply: {undone:?}");
        }
        state
    }

    fn cached_snapshot(&self) -> Option<Arc<Snapshot>> {
        let cached = self.snapshot.lock();
        cached.as_ref().filter(|s| s.rev == self.rev()).cloned()
    }
}
