//! What a change is on its way in ([`ChangeRequest`]) and once committed ([`Change`]): the ops as
//! applied, their inverse, the paths they touched, and every byte form it is sent in, encoded
//! once at commit.
//!
//! Invariant: `wire` is a zero-copy slice of `delta_frame`, so a committed change's bytes are held
//! once; `wire_ack` exists exactly when the author gave a `clientReqId`. What a change keeps alive
//! ([`Change::footprint`]) is what the ring's byte budget and the memory budget count.

use std::mem::size_of;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::ids::{ClientId, ClientReqId, Rev};
use crate::memory::{self, Heap, Origin};
use crate::patch::{Applied, Op, Pointer};
use crate::protocol::{self, Mode};

/// A change submitted for commit.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub author: ClientId,
    /// The author's user (a token's `sub`), shown in the change's entries; `None` in open mode.
    pub user: Option<Arc<str>>,
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
    /// The author's user (a token's `sub`); `None` in open mode.
    pub user: Option<Arc<str>>,
    pub client_req_id: Option<ClientReqId>,
    /// The ops as applied.
    pub ops: Vec<Op>,
    /// Applying these to the state at `rev` gives the state at `rev - 1`.
    pub inverse: Vec<Op>,
    /// Paths read or written, for `paths`-mode conflict checks.
    pub touched: Vec<Pointer>,
    /// The arrays its id-addressed list ops edited (`paths` mode treats them apart: see
    /// `conflict`).
    pub list_touched: Vec<Pointer>,
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
    /// Builds the committed change at `rev` from its request, its ops encoded once (`ops_json`)
    /// and what applying them returned. Also returns its [`footprint`](Change::footprint), for
    /// the ring's budget.
    pub(super) fn encode(
        rev: Rev,
        req: ChangeRequest,
        ops_json: &[u8],
        applied: Applied,
    ) -> (Arc<Change>, usize) {
        let user = req.user.as_deref();
        let (delta_frame, wire) = protocol::change_frame(rev, req.author, user, ops_json);
        let change = Change {
            rev,
            author: req.author,
            wire_ack: req.client_req_id.map(|id| protocol::entry_ack(rev, req.author, user, id)),
            user: req.user,
            client_req_id: req.client_req_id,
            ops: req.ops,
            inverse: applied.inverse,
            touched: applied.touched,
            list_touched: applied.list_touched,
            committed_at: Instant::now(),
            wire,
            delta_frame,
        };
        let held = change.footprint();
        (Arc::new(change), held)
    }

    /// The bytes this change keeps alive while something holds it: itself (in its `Arc`), its
    /// decoded ops and inverse (every `Value` tree, pointer and string in them), the paths it
    /// touched, and its encoded frames, each block with the allocator's overhead. A 1,000-op
    /// change holds about seven times its encoded size.
    pub fn footprint(&self) -> usize {
        self.heap().total()
    }

    /// The heap blocks behind [`Change::footprint`].
    pub fn heap(&self) -> Heap {
        // `delta_frame` was allocated with room for its header, and slicing it out as `wire`
        // gives it a shared header block; the ack is its own small block.
        let frames = Heap::block(self.delta_frame.len() + 64)
            + Heap::block(4 * size_of::<usize>())
            + Heap::block(self.wire_ack.as_ref().map_or(0, Bytes::len));
        Heap::block(2 * size_of::<usize>() + size_of::<Change>())
            + Heap::block(self.user.as_ref().map_or(0, |u| u.len() + 2 * size_of::<usize>()))
            + memory::ops_heap(&self.ops, Origin::Parsed)
            + memory::ops_heap(&self.inverse, Origin::Built)
            + memory::pointers_heap(&self.touched)
            + memory::pointers_heap(&self.list_touched)
            + frames
    }

    /// The entry a given recipient should see: an ack for its own change, else the full entry.
    pub fn entry_for(&self, recipient: ClientId) -> &[u8] {
        match &self.wire_ack {
            Some(ack) if self.author == recipient => ack,
            _ => &self.wire,
        }
    }
}
