//! A room this node follows instead of owning (cluster mode: another node holds its lease). A
//! follower copy never commits: [`Room::commit`] refuses it `unavailable`, and the shell forwards
//! its clients' changes to the owner instead. It moves only by [`Room::follow`], which takes each
//! record the owner stored, in revision order, exactly as a load replays it ([`super::restore`]):
//! the ops are applied to the state, the change enters the ring with the owner's revision, commit
//! time, author and `clientReqId` (so the author's ack rides in its delta on this node as on the
//! owner), and the dedupe state it carries is kept (so a session resumes here with it). The
//! owner's answer to a forwarded change that it refused comes back by
//! [`Room::reject_forwarded`] and is delivered like a rollback's reject.
//!
//! A follower remembers the changes it forwarded ([`Room::note_forwarded`]) until the owner's
//! record acknowledges them or its reject comes back. When the owner changes
//! ([`Room::owner_gone`], called once everything the old owner stored has been taken), the ones
//! still open were never stored and never will be (the old owner's appends are fenced by the
//! new lease): they are rejected `unavailable`, for their authors to send again. A follower whose
//! node takes the lease over becomes the owner in place ([`Room::promote`]): its clients stay
//! connected and see only a pause.
//!
//! Invariants: a follower's revisions are exactly the owner's stored ones, gapless; a record
//! already held is ignored, and one further on is not taken (the caller fills the gap from the
//! stream first); a record that does not apply is an error and the copy must be dropped (the
//! caller unloads it, its clients reconnect and load it afresh). Everything a follower holds is
//! visible: `durable` is its head. Every forwarded change is answered once: by its record, by the
//! owner's reject, by `owner_gone`, or by `expire_forwarded`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Change, Room};
use crate::ids::{ClientId, ClientReqId, Rev};
use crate::memory;
use crate::patch;
use crate::protocol::{ErrorCode, Reject};
use crate::store::Record;

/// What [`Room::follow`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// It was the next one: applied (the caller runs the write pass, [`Room::deliver`]).
    Applied,
    /// The copy held it already.
    Held,
    /// It is further on: the records after `head` must be taken first (the caller reads them
    /// from the stream).
    Gap { head: u64 },
}

/// A change a follower forwarded and the owner has not answered yet.
#[derive(Debug)]
pub struct Forwarded {
    author: ClientId,
    id: ClientReqId,
    /// The node it was sent to.
    owner: u64,
    /// Who waits for the answer (an HTTP request; a connection hears it through its writer).
    reply: Option<Reply>,
    /// When it was sent.
    at: Instant,
}

/// Where the answer to a forwarded change goes: the change as committed, or why not.
pub type Reply = tokio::sync::oneshot::Sender<Result<Arc<Change>, Reject>>;

impl Forwarded {
    /// Whether `change` (by `author`, with `id`) answers this one. A session's ids grow, so its
    /// change answers every earlier one too; an HTTP change (author 0, its id unique to the
    /// forwarding node) answers only itself.
    fn answered_by(&self, author: ClientId, id: ClientReqId) -> bool {
        self.author == author && if author == ClientId::HTTP { self.id == id } else { self.id <= id }
    }

    fn answer(self, outcome: Result<Arc<Change>, Reject>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(outcome);
        }
    }
}

impl Room {
    /// Makes this copy a follower (set before it is shared).
    pub fn set_follower(&self) {
        self.follower.store(true, Ordering::Release);
    }

    /// Whether this copy follows another node's (see the module doc).
    pub fn is_follower(&self) -> bool {
        self.follower.load(Ordering::Acquire)
    }

    /// Takes one record the owner stored, if it is the next one. Safe to call from several
    /// threads with the same records: the room's lock orders them, and each is taken once.
    ///
    /// # Errors
    /// When the record does not decode or apply: this copy can no longer follow and must be
    /// dropped.
    pub fn follow(&self, rec: &Record) -> Result<Followed, String> {
        // A record taken already (the feed and a catch-up may both bring it) is not decoded.
        if rec.rev <= self.head() {
            return Ok(Followed::Held);
        }
        let (req, inverse, touched, list_touched, _) = super::restore::decode_record(rec)?;
        let mut guard = self.inner.write();
        let g = &mut *guard;
        let head = g.ring.head();
        if rec.rev <= head {
            return Ok(Followed::Held);
        }
        if rec.rev != head + 1 {
            return Ok(Followed::Gap { head });
        }
        let mut applied = patch::apply(&mut g.state, &req.ops)
            .map_err(|e| format!("record {} does not apply: {e}", rec.rev))?;
        (applied.inverse, applied.touched, applied.list_touched) = (inverse, touched, list_touched);
        let size = self.state_bytes.load(Ordering::Relaxed) as i64;
        self.state_bytes.store((size + applied.size_delta).max(0) as usize, Ordering::Relaxed);
        let (change, held) = super::restore::entry_of(g, rec, req, applied);
        let growth = memory::state_growth(&change.ops, &change.inverse, &g.state);
        self.keep.lock().note_record(rec, &change);
        let answered: Vec<Forwarded> = match change.client_req_id {
            Some(id) => {
                let mut forwarded = self.forwarded.lock();
                let (done, open) = forwarded.drain(..).partition(|f| f.answered_by(change.author, id));
                *forwarded = open;
                done
            }
            None => Vec::new(),
        };
        g.ring.push(rec.rev, change.clone(), held);
        self.account(g, growth);
        self.rev.store(rec.rev, Ordering::Release);
        self.durable.store(rec.rev, Ordering::Release);
        drop(guard);
        self.notify(Rev(rec.rev));
        for f in answered {
            f.answer(Ok(change.clone()));
        }
        Ok(Followed::Applied)
    }

    /// The owner refused `author`'s forwarded change `id`: the author's connection on this node
    /// is sent the reject (as a rollback's is: see [`Room::rejections_for`]).
    pub fn reject_forwarded(&self, author: ClientId, id: ClientReqId, reject: Reject) {
        let waiting = {
            let mut forwarded = self.forwarded.lock();
            let i = forwarded.iter().position(|f| f.author == author && f.id == id);
            i.map(|i| forwarded.swap_remove(i))
        };
        match waiting {
            Some(f) if f.reply.is_some() => f.answer(Err(reject)),
            _ => {
                self.push_rejection(author, id, reject);
                self.wake_listeners();
            }
        }
    }

    /// Notes that `author`'s change `id` was forwarded to node `owner`; `reply`, when given,
    /// gets the answer (else the author's connection does, through its writer).
    pub fn note_forwarded(&self, author: ClientId, id: ClientReqId, owner: u64, reply: Option<Reply>) {
        self.forwarded.lock().push(Forwarded { author, id, owner, reply, at: Instant::now() });
    }

    /// Rejects `unavailable` every forwarded change the owner has not answered for `wait` (a
    /// mail lost on its way, an owner that stalls): its author sends it again, which the
    /// owner's dedupe makes safe. Returns how many.
    pub fn expire_forwarded(&self, wait: Duration) -> usize {
        let message = format!(
            "the room's owner did not answer within {} s: send the change again (a change already applied is recognised)",
            wait.as_secs()
        );
        self.reject_open(|f| f.at.elapsed() >= wait, &message)
    }

    /// Rejects `unavailable`, with `message`, every open forwarded change `which` selects: its
    /// waiting request is answered, or its author's connection told. Returns how many.
    fn reject_open(&self, which: impl Fn(&Forwarded) -> bool, message: &str) -> usize {
        let chosen: Vec<Forwarded> = {
            let mut forwarded = self.forwarded.lock();
            let (chosen, open): (Vec<_>, Vec<_>) = forwarded.drain(..).partition(|f| which(f));
            *forwarded = open;
            chosen
        };
        let n = chosen.len();
        for f in chosen {
            let reject = Reject::new(ErrorCode::Unavailable, message, self.rev().0);
            if f.reply.is_some() {
                f.answer(Err(reject));
            } else {
                self.push_rejection(f.author, f.id, reject);
            }
        }
        if n > 0 {
            self.wake_listeners();
        }
        n
    }

    /// Forwarded changes not answered yet.
    #[cfg(test)]
    pub(super) fn forwarded_open(&self) -> usize {
        self.forwarded.lock().len()
    }

    /// The smallest id of `author`'s forwarded changes not answered yet.
    pub(super) fn first_open_forward(&self, author: ClientId) -> Option<ClientReqId> {
        self.forwarded.lock().iter().filter(|f| f.author == author).map(|f| f.id).min()
    }

    /// Node `old` no longer owns the room, and every record it stored has been taken: the
    /// changes forwarded to it and still open were not stored and never will be; each is
    /// rejected `unavailable` (its author sends it again). Returns how many.
    pub fn owner_gone(&self, old: Option<u64>) -> usize {
        let message =
            "the room's owner changed before it stored this change: it was not applied; send it again";
        self.reject_open(|f| old.is_none_or(|o| o == f.owner), message)
    }

    /// This node took the room's lease over: the copy, holding everything the old owner stored
    /// and with its log attached ([`Room::attach_log`]) by the caller, commits from now on.
    pub fn promote(&self) {
        debug_assert!(self.is_stored(), "a promoted copy appends to the store");
        self.follower.store(false, Ordering::Release);
    }

    /// The reject a follower gives a change it was asked to commit itself.
    pub(super) fn not_owner(&self, cur: u64) -> Reject {
        let message = "this node does not own the room (cluster mode): its changes are forwarded to the owner; send it again";
        Reject::new(ErrorCode::Unavailable, message, cur)
    }
}
