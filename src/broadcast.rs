//! A room's broadcast lane: messages a client (or a back-end) sends to everyone else in the room.
//! Nothing here enters the room's state, ring of changes or revision.
//!
//! Pull-based like the change stream, so a slow reader costs O(1) memory: broadcasts go into a
//! buffer of the last `capacity` messages (and at most `max_bytes` of them), each encoded once for
//! every recipient, and a watch channel holds the newest sequence number. A connection keeps its
//! own cursor and asks for everything after it; a cursor that fell behind the buffer learns how
//! many it missed.
//!
//! Only what someone can still receive is kept: a connection starts at the sequence current when
//! it subscribes and never asks for older broadcasts, so while nobody is subscribed (no writer
//! holds a receiver) a broadcast is counted in the sequence and not stored, and
//! [`Broadcasts::release_if_unwatched`] empties the buffer once the last reader has gone. The
//! buffer grows as broadcasts arrive, and what it holds is charged to the memory budget.
//!
//! Locking: one `parking_lot::Mutex`, held only to push to or read the buffer, never across
//! `.await`. Invariants: `seq` only grows; the buffer holds at most `capacity` (≥ 1) messages,
//! with consecutive sequence numbers ending at `seq`, and more than `max_bytes` only when it holds
//! just the newest.

use std::collections::VecDeque;
use std::mem::size_of;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::ids::ClientId;
use crate::memory::{Budget, Charge, Heap, Kind};
use crate::protocol;

#[derive(Debug)]
struct Inner {
    /// Sequence number of the newest broadcast (0 before the first).
    seq: u64,
    /// `(seq, sender, encoded message)`, oldest first.
    ring: VecDeque<(u64, ClientId, Bytes)>,
    /// Encoded bytes in `ring`.
    bytes: usize,
}

impl Inner {
    fn clear(&mut self) {
        self.ring = VecDeque::new();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, _, f)) = self.ring.pop_front() {
            self.bytes -= f.len();
        }
    }

    /// What the buffer holds: its slots and each frame's block (with its shared header).
    fn footprint(&self) -> usize {
        let frames: usize = self.ring.iter().map(|(_, _, f)| Heap::block(f.len()).total()).sum();
        let headers = Heap::blocks(self.ring.len(), 4 * size_of::<usize>()).total();
        frames + headers + Heap::block(self.ring.capacity() * size_of::<(u64, ClientId, Bytes)>()).total()
    }
}

/// What a connection gets when it catches up on broadcasts.
#[derive(Debug, Default)]
pub struct BroadcastBatch {
    /// Broadcasts this connection will never see (they left the ring before it read them).
    pub dropped: u64,
    /// Encoded `broadcast` messages, oldest first.
    pub frames: Vec<Bytes>,
}

/// The broadcast buffer of one room.
#[derive(Debug)]
pub struct Broadcasts {
    inner: Mutex<Inner>,
    /// The newest broadcast sequence, to wake writers; its receivers are the readers.
    tx: watch::Sender<u64>,
    capacity: usize,
    max_bytes: usize,
    /// What the buffer holds, in the memory budget.
    charge: Charge,
    /// Where this node's own broadcasts go besides this buffer (cluster mode: to the other
    /// nodes with the room, which [`Broadcasts::send_remote`] them); set once.
    relay: OnceLock<RelaySlot>,
}

/// What a room's own broadcasts are handed to (see [`Broadcasts::set_relay`]).
pub type Relay = Box<dyn Fn(ClientId, &Value) + Send + Sync>;

struct RelaySlot(Relay);

impl std::fmt::Debug for RelaySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

impl Broadcasts {
    /// Keeps the last `capacity` broadcasts (at least one) and at most `max_bytes` of them (0 = no
    /// byte limit; the newest is always kept), charged to `budget`.
    pub fn new(capacity: usize, max_bytes: usize, budget: &Arc<Budget>) -> Self {
        Broadcasts {
            inner: Mutex::new(Inner { seq: 0, ring: VecDeque::new(), bytes: 0 }),
            tx: watch::channel(0).0,
            capacity: capacity.max(1),
            max_bytes,
            charge: Charge::new(budget, Kind::Held),
            relay: OnceLock::new(),
        }
    }

    /// Hands every later broadcast sent here to `relay` as well (cluster mode); one received
    /// from another node ([`Broadcasts::send_remote`]) is not handed back. Once only: `false`
    /// when a relay was set already.
    pub fn set_relay(&self, relay: Relay) -> bool {
        self.relay.set(RelaySlot(relay)).is_ok()
    }

    /// Queues a broadcast from `from` (encoded once for every recipient), or only counts it when
    /// nobody is subscribed to receive it.
    pub fn send(&self, from: ClientId, data: &Value) {
        if let Some(relay) = self.relay.get() {
            (relay.0)(from, data);
        }
        self.send_remote(from, data);
    }

    /// [`Broadcasts::send`] of a broadcast another node relayed (not relayed again).
    pub fn send_remote(&self, from: ClientId, data: &Value) {
        let encoded = (self.tx.receiver_count() > 0).then(|| protocol::broadcast_msg(from, data));
        let mut b = self.inner.lock();
        b.seq += 1;
        let seq = b.seq;
        // Checked again under the lock: a reader that subscribes after this reads `seq` after it
        // too, so it never asks for this broadcast.
        if self.tx.receiver_count() == 0 {
            b.clear();
        } else {
            let frame = encoded.unwrap_or_else(|| protocol::broadcast_msg(from, data));
            b.bytes += frame.len();
            b.ring.push_back((seq, from, frame));
            while b.ring.len() > self.capacity
                || (self.max_bytes > 0 && b.bytes > self.max_bytes && b.ring.len() > 1)
            {
                b.pop_front();
            }
        }
        self.charge.set(b.footprint());
        drop(b);
        self.tx.send_replace(seq);
    }

    /// Empties the buffer when nobody is subscribed any more (the room's last connection left).
    pub fn release_if_unwatched(&self) {
        let mut b = self.inner.lock();
        if self.tx.receiver_count() == 0 {
            b.clear();
            self.charge.set(0);
        }
    }

    /// Bytes the buffer holds (encoded broadcasts).
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// The broadcast sequence now (a new connection starts here: it gets no old broadcasts).
    pub fn seq(&self) -> u64 {
        self.inner.lock().seq
    }

    /// A receiver woken by every broadcast. A connection subscribes before it reads
    /// [`Broadcasts::seq`], and holds the receiver as long as it reads.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Broadcasts after `since` not sent by `me`; advances `since`.
    pub fn after(&self, since: &mut u64, me: ClientId) -> BroadcastBatch {
        let b = self.inner.lock();
        let mut batch = BroadcastBatch::default();
        if *since >= b.seq {
            return batch;
        }
        let oldest = b.ring.front().map_or(b.seq + 1, |(s, _, _)| *s);
        if oldest > *since + 1 {
            batch.dropped = oldest - *since - 1;
        }
        batch.frames = b
            .ring
            .iter()
            .filter(|(s, from, _)| *s > *since && *from != me)
            .map(|(_, _, f)| f.clone())
            .collect();
        *since = b.seq;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_relayed_broadcast_is_delivered_and_relayed_but_a_remote_one_only_delivered() {
        let p = Broadcasts::new(8, 0, &Budget::unlimited());
        let relayed = Arc::new(Mutex::new(Vec::new()));
        let log = relayed.clone();
        assert!(p.set_relay(Box::new(move |from, data| log.lock().push((from, data.clone())))));
        let _rx = p.subscribe();
        let mut cur = 0;
        p.send(ClientId(1), &json!("mine"));
        p.send_remote(ClientId(9), &json!("theirs"));
        assert_eq!(p.after(&mut cur, ClientId(2)).frames.len(), 2, "both reach this node's clients");
        assert_eq!(*relayed.lock(), [(ClientId(1), json!("mine"))], "only this node's own is relayed");
    }

    #[test]
    fn broadcasts_drop_oldest_and_skip_own() {
        let p = Broadcasts::new(3, 0, &Budget::unlimited());
        let _reader = p.subscribe();
        let mut cur = p.seq();
        p.send(ClientId(1), &json!(1));
        p.send(ClientId(2), &json!(2));
        let batch = p.after(&mut cur, ClientId(2));
        assert_eq!((batch.dropped, batch.frames.len()), (0, 1));
        for i in 0..5 {
            p.send(ClientId(1), &json!(i));
        }
        let batch = p.after(&mut cur, ClientId(2));
        assert_eq!((batch.dropped, batch.frames.len()), (2, 3));
        let last: Value = serde_json::from_slice(&batch.frames[2]).unwrap();
        assert_eq!(last, json!({"type": "broadcast", "client": "c1", "data": 4}));
        assert_eq!(p.after(&mut cur, ClientId(2)).frames.len(), 0);
    }

    #[test]
    fn nothing_is_kept_for_nobody_and_bytes_are_bounded() {
        let budget = Budget::unlimited();
        let p = Broadcasts::new(64, 1000, &budget);
        let big = json!("x".repeat(400));
        for _ in 0..10 {
            p.send(ClientId(1), &big);
        }
        assert_eq!((p.seq(), p.bytes(), budget.used()), (10, 0, 0), "nobody subscribed");
        let reader = p.subscribe();
        let mut cur = p.seq();
        for _ in 0..10 {
            p.send(ClientId(1), &big);
        }
        let held = p.bytes();
        assert!(held <= 1000 && held > 400, "{held}");
        assert!(budget.used() >= held);
        let batch = p.after(&mut cur, ClientId(2));
        assert_eq!((batch.dropped, batch.frames.len()), (8, 2));
        // One big one is kept alone, over the byte limit.
        p.send(ClientId(1), &json!("y".repeat(5000)));
        assert_eq!(p.after(&mut cur, ClientId(2)).frames.len(), 1);
        p.release_if_unwatched();
        assert!(p.bytes() > 0, "still watched");
        drop(reader);
        p.release_if_unwatched();
        assert_eq!((p.bytes(), budget.used()), (0, 0));
    }
}
