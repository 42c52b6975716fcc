//! What a reader is sent: the one decision of "a delta from X, or a snapshot for reason R", made
//! here for a join, a resume and a wake-up alike, together with the frame that carries it.
//!
//! A reader is always brought to the newest revision in one frame: a `delta` with every change
//! after its revision while the ring holds them all, else a `snapshot`. A single change to a
//! caught-up non-author is the frame encoded once at commit; a multi-change frame without an ack
//! for the reader is the same for every reader over the same range, so the last one is cached
//! and shared. Invariant: a `Delta` from `from` to `to` carries exactly the changes
//! `from+1 ..= to`, and `to` is the room's revision when the decision was made.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Change, Room, Snapshot};
use crate::ids::{ClientId, Rev};
use crate::memory::Heap;
use crate::protocol;

/// Where a reader stands when it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor<'a> {
    /// A connection that names no revision it holds; `resumed` when its session is a resumed one.
    Fresh { resumed: bool },
    /// A connection that says it holds revision `since` of `epoch`.
    Resume { epoch: &'a str, since: Rev },
    /// A connection of this room that was sent everything up to this revision (a wake-up).
    Holds(Rev),
}

/// Why a reader is sent a snapshot instead of a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// A new session with nothing to resume from.
    Join,
    /// A resumed session that named no revision.
    Resume,
    /// The reader's epoch is not this room's (or it gave none): its revisions mean nothing here.
    Epoch,
    /// Some change after the reader's revision has left the ring (or the revision is in the
    /// future).
    BehindRing,
}

impl SnapshotReason {
    pub const ALL: [SnapshotReason; 4] =
        [SnapshotReason::Join, SnapshotReason::Resume, SnapshotReason::BehindRing, SnapshotReason::Epoch];

    /// The `reason` label of `ringsync_snapshots_sent_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotReason::Join => "join",
            SnapshotReason::Resume => "resume",
            SnapshotReason::Epoch => "epoch",
            SnapshotReason::BehindRing => "behind_ring",
        }
    }
}

/// What a reader needs to reach the current revision.
#[derive(Debug)]
pub enum CatchUp {
    /// Nothing: the reader holds the newest revision (wake-ups only; a join or resume always gets
    /// one frame, if only an empty delta).
    Current,
    /// One `delta` frame bringing the reader from `from` to `to`.
    Delta {
        frame: Bytes,
        from: Rev,
        to: Rev,
        /// When the newest change in the frame was committed (`None` for an empty delta).
        newest_committed_at: Option<Instant>,
    },
    Snapshot(Arc<Snapshot>, SnapshotReason),
}

impl Room {
    /// Decides what `recipient`, standing at `cursor`, is sent, and builds the frame. On a
    /// `Delta`, `scratch` holds the changes it carries (oldest first); it is reused between calls
    /// so a caught-up reader allocates nothing.
    pub fn catch_up(
        &self,
        cursor: Cursor<'_>,
        recipient: ClientId,
        scratch: &mut Vec<Arc<Change>>,
    ) -> CatchUp {
        scratch.clear();
        let from = match cursor {
            Cursor::Fresh { resumed: false } => return self.snapshot_for(SnapshotReason::Join),
            Cursor::Fresh { resumed: true } => return self.snapshot_for(SnapshotReason::Resume),
            Cursor::Resume { epoch, .. } if epoch != self.epoch.as_str() => {
                return self.snapshot_for(SnapshotReason::Epoch);
            }
            Cursor::Resume { since, .. } => since,
            Cursor::Holds(rev) if self.rev() <= rev => return CatchUp::Current,
            Cursor::Holds(rev) => rev,
        };
        if !self.changes_after(from, scratch) {
            return self.snapshot_for(SnapshotReason::BehindRing);
        }
        let to = scratch.last().map_or(from, |c| c.rev);
        let newest_committed_at = scratch.last().map(|c| c.committed_at);
        CatchUp::Delta {
            frame: self.delta_frame(scratch, from, to, Some(recipient)),
            from,
            to,
            newest_committed_at,
        }
    }

    fn snapshot_for(&self, reason: SnapshotReason) -> CatchUp {
        CatchUp::Snapshot(self.snapshot(), reason)
    }

    /// The `delta` frame that brings `recipient` (`None`: someone who authored none of them) from
    /// `from` to `to` with `changes` (exactly the changes `from+1 ..= to`), shared through the
    /// cache when it carries no ack for `recipient`.
    pub(super) fn delta_frame(
        &self,
        changes: &[Arc<Change>],
        from: Rev,
        to: Rev,
        recipient: Option<ClientId>,
    ) -> Bytes {
        let personal = changes.iter().any(|c| Some(c.author) == recipient && c.wire_ack.is_some());
        if changes.len() < 2 {
            return delta_for(changes, from, to, recipient);
        }
        if !personal
            && let Some((f, t, frame)) = &*self.coalesced.lock()
            && (*f, *t) == (from, to)
        {
            return frame.clone();
        }
        let frame = delta_for(changes, from, to, recipient);
        if !personal {
            let mut cached = self.coalesced.lock();
            self.memory.coalesced.set(Heap::block(frame.len()).total());
            *cached = Some((from, to, frame.clone()));
        }
        frame
    }
}

/// The `delta` frame that brings `recipient` (`None`: someone who authored none of them) from
/// `from` to `to` with `changes` (which must be exactly the changes `from+1 ..= to`). A single change to someone other than its author is the
/// frame the room encoded once at commit; otherwise the pre-encoded entries are concatenated
/// (uncached: [`Room::catch_up`] shares multi-change frames; benches measure this directly).
pub fn delta_for(changes: &[Arc<Change>], from: Rev, to: Rev, recipient: Option<ClientId>) -> Bytes {
    if let [only] = changes
        && Some(only.author) != recipient
    {
        return only.delta_frame.clone();
    }
    let size: usize = changes.iter().map(|c| c.wire.len() + 1).sum();
    let entries = changes.iter().map(|c| match recipient {
        Some(r) => c.entry_for(r),
        None => &c.wire[..],
    });
    protocol::delta_frame(from, to, entries, size)
}
