//! A room's broadcast lane: messages a client (or a back-end) sends to everyone else in the room.
//! Nothing here enters the room's state, ring of changes or revision.
//!
//! Pull-based like the change stream, so a slow reader costs O(1) memory: broadcasts go into a
//! ring of the last `broadcast_buffer` messages, each encoded once for every recipient, and a
//! watch channel holds the newest sequence number. A connection keeps its own cursor and asks for
//! everything after it; a cursor that fell behind the ring learns how many it missed.
//!
//! Locking: one `parking_lot::Mutex`, held only to push to or read the ring, never across
//! `.await`. Invariants: `seq` only grows; the ring holds at most `capacity` (≥ 1) messages, with
//! consecutive sequence numbers ending at `seq`.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

use crate::ids::ClientId;
use crate::protocol;

#[derive(Debug)]
struct Inner {
    /// Sequence number of the newest broadcast (0 before the first).
    seq: u64,
    /// `(seq, sender, encoded message)`, oldest first.
    ring: VecDeque<(u64, ClientId, Bytes)>,
    capacity: usize,
}

/// What a connection gets when it catches up on broadcasts.
#[derive(Debug, Default)]
pub struct BroadcastBatch {
    /// Broadcasts this connection will never see (they left the ring before it read them).
    pub dropped: u64,
    /// Encoded `broadcast` messages, oldest first.
    pub frames: Vec<Bytes>,
}

/// The broadcast ring of one room.
#[derive(Debug)]
pub struct Broadcasts {
    inner: Mutex<Inner>,
    /// The newest broadcast sequence, to wake writers.
    tx: watch::Sender<u64>,
}

impl Broadcasts {
    /// Keeps the last `capacity` broadcasts (at least one).
    pub fn new(capacity: usize) -> Self {
        Broadcasts {
            inner: Mutex::new(Inner { seq: 0, ring: VecDeque::new(), capacity: capacity.max(1) }),
            tx: watch::channel(0).0,
        }
    }

    /// Queues a broadcast from `from` (encoded once for every recipient).
    pub fn send(&self, from: ClientId, data: &Value) {
        let frame = protocol::broadcast_msg(from, data);
        let mut b = self.inner.lock();
        b.seq += 1;
        let seq = b.seq;
        if b.ring.len() == b.capacity {
            b.ring.pop_front();
        }
        b.ring.push_back((seq, from, frame));
        drop(b);
        self.tx.send_replace(seq);
    }

    /// The broadcast sequence now (a new connection starts here: it gets no old broadcasts).
    pub fn seq(&self) -> u64 {
        self.inner.lock().seq
    }

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
    fn broadcasts_drop_oldest_and_skip_own() {
        let p = Broadcasts::new(3);
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
}
