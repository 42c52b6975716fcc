//! The room's write pass: who listens to the room's revisions, and what each is offered when the
//! visible revision advances.
//!
//! Every connection registers one [`Listener`] for its life ([`Room::listen`]). When revisions
//! become visible, whoever made them visible calls [`Room::deliver`] once it holds no lock:
//! without a store, a committing connection's read side whenever its socket has nothing more to
//! read (so a burst of changes is one pass, and passes coalesce under load), at least every 128
//! messages it reads (a client that never pauses holds nobody back) and when it ends, the HTTP
//! API after its commit; with a store, the store's writer thread after each round. The pass only
//! does what no pass did yet, so a redundant call costs two atomic loads. The pass builds the frame
//! once (the change's own delta, or the shared coalesced one for several), then offers it to every
//! listener in turn; a listener whose client authored one of the changes is offered its own frame,
//! with the ack. A listener either takes the offer (it stood exactly at `from`, so the frame is
//! all it is missing, and it wrote it to its socket without waiting) or wakes its own task, which
//! then catches up from wherever it stands as it always did ([`Room::catch_up`]). The room decides
//! the frames; listeners only move bytes, and the room knows nothing of sockets.
//!
//! Invariants: every listener registered when a revision became visible is, for that revision,
//! either offered a frame or woken (so nobody misses a revision); `passed` only grows, and each
//! range `from+1 ..= to` is passed once, so concurrent passes split the work instead of doubling
//! it; a listener that takes an offer holds exactly revision `to` afterwards. No lock is held
//! while listeners write: the registry is a copy-on-write list the pass clones the head of.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::{Change, Room, delta_for};
use crate::ids::{ClientId, Rev};

/// One reader of the room's revisions (a connection's writer, in the shell).
pub trait Listener: Send + Sync {
    /// The client it delivers to (its own changes come with their ack).
    fn client(&self) -> ClientId;
    /// `frame` brings a reader that holds exactly `offer.from` to `offer.to`. The listener takes
    /// it only if that is where it stands and it can write it now; otherwise it wakes its task.
    fn offer(&self, offer: &Offer<'_>);
    /// Its task has to look for itself (a rollback, or the ring moved past the range).
    fn wake(&self);
}

/// What a pass offers one listener.
#[derive(Debug)]
pub struct Offer<'a> {
    pub from: Rev,
    pub to: Rev,
    /// The complete `delta` frame from `from` to `to` for this listener's client.
    pub frame: &'a Bytes,
    /// When the newest change in the frame was committed (for the delivery-lag histogram).
    pub committed_at: Instant,
}

/// The registered listeners: a copy-on-write list, so a pass walks it without a lock and a join
/// while no pass runs pushes in place.
pub(super) type Listeners = parking_lot::Mutex<Arc<Vec<Arc<dyn Listener>>>>;

/// A listener's registration; dropping it unregisters the listener.
#[must_use = "the listener is unregistered when this is dropped"]
pub struct Listening<'a> {
    room: &'a Room,
    listener: Arc<dyn Listener>,
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        let mut list = self.room.listeners.lock();
        let list = Arc::make_mut(&mut list);
        if let Some(i) = list.iter().position(|l| Arc::ptr_eq(l, &self.listener)) {
            list.swap_remove(i);
        }
    }
}

impl Room {
    /// Registers `listener` for every revision that becomes visible from now on, until the
    /// returned registration is dropped.
    pub fn listen(&self, listener: Arc<dyn Listener>) -> Listening<'_> {
        Arc::make_mut(&mut self.listeners.lock()).push(listener.clone());
        Listening { room: self, listener }
    }

    /// How many listeners are registered.
    pub fn listeners(&self) -> usize {
        self.listeners.lock().len()
    }

    /// The write pass over every revision that became visible since the last pass (a no-op when
    /// none did). Call it with no lock held: listeners write to sockets.
    pub fn deliver(&self) {
        let to = self.rev();
        // The common no-op stays a read: readers of a busy room call this often.
        if self.passed.load(Ordering::Acquire) >= to.0 {
            return;
        }
        let from = Rev(self.passed.fetch_max(to.0, Ordering::AcqRel));
        if from >= to {
            return;
        }
        let listeners = self.listeners.lock().clone();
        if listeners.is_empty() {
            return;
        }
        let mut changes = Vec::new();
        // The ring may have moved past `from` already (a burst bigger than the ring): every
        // listener then catches up on its own.
        if !self.changes_after(from, &mut changes) {
            return self.wake_listeners();
        }
        // Later revisions belong to the pass that made them visible.
        changes.retain(|c| c.rev <= to);
        let Some(newest) = changes.last() else { return };
        let committed_at = newest.committed_at;
        let shared = self.shared_delta(&changes, from, to);
        for l in listeners.iter() {
            let client = l.client();
            let own = changes.iter().any(|c| c.author == client && c.wire_ack.is_some());
            let personal;
            let frame = if own {
                personal = delta_for(&changes, from, to, Some(client));
                &personal
            } else {
                &shared
            };
            l.offer(&Offer { from, to, frame, committed_at });
        }
    }

    /// Wakes every listener's task to look for itself.
    pub fn wake_listeners(&self) {
        let listeners = self.listeners.lock().clone();
        for l in listeners.iter() {
            l.wake();
        }
    }

    /// The delta from `from` to `to` for a client that authored none of `changes`.
    fn shared_delta(&self, changes: &[Arc<Change>], from: Rev, to: Rev) -> Bytes {
        match changes {
            [only] => only.delta_frame.clone(),
            _ => self.delta_frame(changes, from, to, None),
        }
    }
}
