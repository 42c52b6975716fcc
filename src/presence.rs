//! A room's presence lane: who is here and their presence objects (cursors, names). Nothing here
//! enters the room's state, ring or revision. (Broadcasts, the other ephemeral lane, live in
//! `broadcast`.)
//!
//! Pull-based like the change stream, so a slow reader costs O(1) memory: presence keeps, per
//! peer, its current object, the same encoded once as JSON, and the presence sequence number of its
//! last change, plus a bounded log of `(seq, peer)`. A connection remembers the last sequence it
//! was sent and asks for everything after it: it gets each changed peer's *current* value once (or
//! `null` for a peer that left), never a backlog of stale positions. A reader further behind than
//! the log gets every known peer. Frames are concatenations of the pre-encoded entries. Readers
//! ask on a room-wide tick (`tick`), and a tick pins the range's end for everyone who asks in it,
//! so connections that were caught up share one frame: a join storm costs one frame per tick, not
//! one per connection.
//!
//! What the lane holds (peers, their entries, the log, the cached frames) is charged to the
//! memory budget after every change, under the lock.
//!
//! Locking: one `parking_lot::Mutex`, held only for map/log updates and reads, never across
//! `.await`. Invariants: `seq` only grows, and each peer's `changed` is ≤ `seq`; `peers_heap` is
//! the sum of [`Peer::heap`] over `peers`.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::mem::size_of;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::ids::ClientId;
use crate::memory::{self, Budget, Charge, Heap, Kind};
use crate::protocol;

/// Presence changes remembered for incremental catch-up.
const LOG_CAPACITY: usize = 4096;

/// The merged presence would exceed `--max-presence-bytes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("presence would be {size} bytes, over the limit of {limit}")]
pub struct PresenceTooLarge {
    pub size: usize,
    pub limit: usize,
}

#[derive(Debug)]
struct Peer {
    data: Map<String, Value>,
    /// The peer's user (a token's `sub`), put first in its entry as `"user"`; a client cannot
    /// set that key itself. `None` in open mode (the entry is then exactly its data).
    user: Option<Arc<str>>,
    online: bool,
    changed: u64,
    /// `"c7":{...}` (or `"c7":null` while offline), encoded once per change.
    entry: Bytes,
    /// The session ended: the entry stays (as `null`) only until its last change leaves the
    /// log, so readers that have not caught up still see the leave.
    forgotten: bool,
}

impl Peer {
    fn encode(&mut self, client: ClientId) {
        let mut b = Vec::with_capacity(16);
        write!(b, "\"{client}\":").expect("vec write");
        if let (true, Some(user)) = (self.online, &self.user) {
            b.extend_from_slice(b"{\"user\":");
            serde_json::to_writer(&mut b, &**user).expect("presence serialises");
            for (k, v) in &self.data {
                b.push(b',');
                serde_json::to_writer(&mut b, k).expect("presence serialises");
                b.push(b':');
                serde_json::to_writer(&mut b, v).expect("presence serialises");
            }
            b.push(b'}');
        } else if self.online {
            serde_json::to_writer(&mut b, &self.data).expect("presence serialises");
        } else {
            b.extend_from_slice(b"null");
        }
        self.entry = b.into();
    }

    /// The heap this peer owns: its presence object and its encoded entry.
    fn heap(&self) -> usize {
        (memory::object_heap(&self.data) + Heap::block(self.entry.len())).total()
    }
}

/// Most recent presence frames kept for sharing.
const FRAME_CACHE: usize = 4;

#[derive(Debug, Default)]
struct PresenceInner {
    seq: u64,
    peers: HashMap<ClientId, Peer>,
    log: VecDeque<(u64, ClientId)>,
    /// Recent frames, keyed by the range `(since, to)` they cover.
    cached: VecDeque<(u64, u64, Bytes)>,
    /// The current tick and the sequence its readers read up to.
    tick: (u64, u64),
    /// What the peers own on the heap (see the invariant).
    peers_heap: usize,
}

impl PresenceInner {
    /// What the lane holds: the peers and their heap, the log, the cached frames.
    fn footprint(&self) -> usize {
        let peers = self.peers.capacity() * (size_of::<(ClientId, Peer)>() + 1) + self.peers_heap;
        let log = self.log.capacity() * size_of::<(u64, ClientId)>();
        let cached: usize = self.cached.iter().map(|(_, _, f)| Heap::block(f.len()).total()).sum();
        peers + log + cached + self.cached.capacity() * size_of::<(u64, u64, Bytes)>()
    }

    /// Runs `f` on `client`'s peer entry (if any), keeping `peers_heap` true.
    fn edit_peer<T>(&mut self, client: ClientId, f: impl FnOnce(&mut Peer) -> T) -> Option<T> {
        let peer = self.peers.get_mut(&client)?;
        let before = peer.heap();
        let out = f(peer);
        let after = peer.heap();
        self.peers_heap = self.peers_heap + after - before;
        Some(out)
    }

    fn remove_peer(&mut self, client: ClientId) {
        if let Some(p) = self.peers.remove(&client) {
            self.peers_heap -= p.heap();
        }
    }

    fn bump(&mut self, client: ClientId) -> u64 {
        self.seq += 1;
        if self.log.len() == LOG_CAPACITY
            && let Some((seq, old)) = self.log.pop_front()
            && self.peers.get(&old).is_some_and(|p| p.forgotten && p.changed <= seq)
        {
            self.remove_peer(old);
        }
        self.log.push_back((self.seq, client));
        self.seq
    }
}

/// The presence lane of one room.
#[derive(Debug)]
pub struct Presence {
    inner: Mutex<PresenceInner>,
    seq_tx: watch::Sender<u64>,
    /// What the lane holds, in the memory budget.
    charge: Charge,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    /// A lane outside any memory budget (tests, benches).
    pub fn new() -> Self {
        Self::with_budget(&Budget::unlimited())
    }

    /// A lane whose memory is charged to `budget`.
    pub fn with_budget(budget: &Arc<Budget>) -> Self {
        Presence {
            inner: Mutex::new(PresenceInner::default()),
            seq_tx: watch::channel(0).0,
            charge: Charge::new(budget, Kind::Held),
        }
    }

    /// Charges what the lane holds now (called under the lock, after every change).
    fn account(&self, g: &PresenceInner) {
        self.charge.set(g.footprint());
    }

    /// Marks `client` present (a join for everyone else unless it already was). Returns the
    /// presence sequence after the join.
    pub fn join(&self, client: ClientId) -> u64 {
        self.join_as(client, None)
    }

    /// [`Presence::join`] for a client acting as `user` (shown as `"user"` in its entry; kept
    /// from its first join).
    pub fn join_as(&self, client: ClientId, user: Option<Arc<str>>) -> u64 {
        let mut g = self.inner.lock();
        let seq = match g.peers.get(&client) {
            Some(p) if p.online => g.seq,
            _ => {
                let seq = g.bump(client);
                g.peers.entry(client).or_insert(Peer {
                    data: Map::new(),
                    user,
                    online: true,
                    changed: seq,
                    entry: Bytes::new(),
                    forgotten: false,
                });
                g.edit_peer(client, |peer| {
                    peer.online = true;
                    peer.changed = seq;
                    peer.encode(client);
                });
                self.account(&g);
                seq
            }
        };
        drop(g);
        self.notify(seq);
        seq
    }

    /// Merges `patch` into `client`'s presence (a `null` member removes the key).
    ///
    /// # Errors
    /// [`PresenceTooLarge`] when the merged object would exceed `limit` encoded bytes; nothing
    /// changes then.
    pub fn update(
        &self,
        client: ClientId,
        patch: Map<String, Value>,
        limit: usize,
    ) -> Result<(), PresenceTooLarge> {
        let mut g = self.inner.lock();
        let Some(peer) = g.peers.get(&client) else { return Ok(()) };
        let mut merged = peer.data.clone();
        for (k, v) in patch {
            if v.is_null() {
                merged.remove(&k);
            } else {
                merged.insert(k, v);
            }
        }
        if peer.user.is_some() {
            // The server says who the peer is; a client cannot claim another name.
            merged.remove("user");
        }
        let size = serde_json::to_vec(&merged).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > limit {
            return Err(PresenceTooLarge { size, limit });
        }
        let seq = g.bump(client);
        let online = g
            .edit_peer(client, |peer| {
                peer.data = merged;
                peer.changed = seq;
                peer.encode(client);
                peer.online
            })
            .expect("checked above");
        self.account(&g);
        drop(g);
        if online {
            self.notify(seq);
        }
        Ok(())
    }

    /// Marks `client` gone: peers see `null` once. Its data is kept for a later resume.
    pub fn leave(&self, client: ClientId) {
        let mut g = self.inner.lock();
        if !g.peers.get(&client).is_some_and(|p| p.online) {
            return;
        }
        let seq = g.bump(client);
        g.edit_peer(client, |peer| {
            peer.online = false;
            peer.changed = seq;
            peer.encode(client);
        });
        self.account(&g);
        drop(g);
        self.notify(seq);
    }

    /// Drops everything known of `client` (its session ended). Peers that have not caught up
    /// still get its `null`: the entry lingers as a tombstone until the log moves past it.
    pub fn forget(&self, client: ClientId) {
        self.leave(client);
        let mut g = self.inner.lock();
        let in_log = g.log.iter().any(|(_, c)| *c == client);
        if in_log {
            g.edit_peer(client, |p| {
                p.forgotten = true;
                p.data = Map::new();
            });
        } else {
            g.remove_peer(client);
        }
        self.account(&g);
    }

    fn notify(&self, seq: u64) {
        self.seq_tx.send_if_modified(|v| {
            let newer = seq > *v;
            if newer {
                *v = seq;
            }
            newer
        });
    }

    /// Every present peer with its presence (for `welcome` and the HTTP API), and the sequence
    /// it corresponds to.
    pub fn online(&self) -> (u64, Map<String, Value>) {
        let g = self.inner.lock();
        let peers = g.peers.iter().filter(|(_, p)| p.online).map(|(c, p)| {
            let mut data = Map::new();
            if let Some(user) = &p.user {
                data.insert("user".into(), Value::from(&**user));
            }
            data.extend(p.data.iter().map(|(k, v)| (k.clone(), v.clone())));
            (c.to_string(), Value::Object(data))
        });
        (g.seq, peers.collect())
    }

    /// Every present peer as an encoded JSON object (for `welcome`), and the sequence it
    /// corresponds to. Built by concatenating the pre-encoded entries.
    pub fn online_json(&self) -> (u64, Bytes) {
        let g = self.inner.lock();
        let entries = g.peers.values().filter(|p| p.online).map(|p| &p.entry[..]);
        (g.seq, protocol::object_of(entries))
    }

    pub fn online_count(&self) -> usize {
        self.inner.lock().peers.values().filter(|p| p.online).count()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    /// The `presence` frame for a reader at `since`, and the sequence it brings it to; `None`
    /// when nothing changed. `tick` (a room-wide time slot, see the module doc) pins the end of
    /// the range for every reader that asks during that slot; `None` reads up to now.
    pub fn changes_since(&self, since: u64, tick: Option<u64>) -> Option<(u64, Bytes)> {
        let mut g = self.inner.lock();
        let to = match tick {
            Some(t) if t > g.tick.0 => {
                g.tick = (t, g.seq);
                g.seq
            }
            Some(t) if t == g.tick.0 => g.tick.1,
            _ => g.seq,
        };
        if since >= to {
            return None;
        }
        if let Some((_, _, frame)) = g.cached.iter().find(|(f, t, _)| (*f, *t) == (since, to)) {
            return Some((to, frame.clone()));
        }
        let in_log = g.log.front().is_some_and(|(first, _)| *first <= since + 1);
        let mut entries: Vec<&[u8]> = Vec::new();
        if in_log {
            // A peer's latest change is the log entry whose seq equals its `changed`: taking only
            // that entry lists each changed peer once. A peer that changed again after `to` is
            // left to the next range, which will include it.
            for (seq, c) in g.log.iter().rev().skip_while(|(s, _)| *s > to).take_while(|(s, _)| *s > since) {
                if let Some(p) = g.peers.get(c)
                    && p.changed == *seq
                {
                    entries.push(&p.entry);
                }
            }
        } else {
            entries.extend(g.peers.values().filter(|p| p.changed > since).map(|p| &p.entry[..]));
        }
        if entries.is_empty() {
            return Some((to, Bytes::new()));
        }
        let frame = protocol::presence_frame(&protocol::object_of(entries.into_iter()));
        if g.cached.len() == FRAME_CACHE {
            g.cached.pop_front();
        }
        g.cached.push_back((since, to, frame.clone()));
        self.account(&g);
        Some((to, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn peers(frame: &Bytes) -> Value {
        serde_json::from_slice::<Value>(frame).unwrap()["peers"].clone()
    }

    #[test]
    fn a_peer_with_a_user_shows_it_and_cannot_change_it() {
        let p = Presence::new();
        p.join_as(ClientId(1), Some("alice".into()));
        p.update(ClientId(1), obj(json!({"name": "A", "user": "mallory"})), 4096).unwrap();
        let (_, frame) = p.changes_since(0, None).unwrap();
        assert_eq!(peers(&frame), json!({"c1": {"user": "alice", "name": "A"}}));
        assert_eq!(p.online().1["c1"], json!({"user": "alice", "name": "A"}));
        let (_, welcome) = p.online_json();
        assert_eq!(
            serde_json::from_slice::<Value>(&welcome).unwrap(),
            json!({"c1": {"user": "alice", "name": "A"}})
        );
        p.leave(ClientId(1));
        let (_, frame) = p.changes_since(2, None).unwrap();
        assert_eq!(peers(&frame), json!({"c1": null}));
    }

    #[test]
    fn merge_and_coalesce() {
        let p = Presence::new();
        let (a, b) = (ClientId(1), ClientId(2));
        p.join(a);
        let (s0, _) = p.online();
        p.join(b);
        for x in 0..100 {
            p.update(a, obj(json!({"x": x, "name": "ann"})), 4096).unwrap();
        }
        p.update(a, obj(json!({"name": null})), 4096).unwrap();
        let (to, frame) = p.changes_since(s0, None).unwrap();
        assert_eq!(peers(&frame), json!({"c1": {"x": 99}, "c2": {}}));
        assert!(p.changes_since(to, None).is_none());
        p.leave(b);
        let (_, frame) = p.changes_since(to, None).unwrap();
        assert_eq!(peers(&frame), json!({"c2": null}));
        assert_eq!(p.online().1, obj(json!({"c1": {"x": 99}})));
        assert_eq!(&p.online_json().1[..], br#"{"c1":{"x":99}}"#);
    }

    #[test]
    fn a_tick_pins_the_range_so_readers_share_one_frame() {
        let p = Presence::new();
        p.join(ClientId(1));
        let (s0, _) = p.online();
        p.update(ClientId(1), obj(json!({"x": 1})), 4096).unwrap();
        let (to_a, a) = p.changes_since(s0, Some(7)).unwrap();
        // A change after the first reader of tick 7 does not move the range for tick 7.
        p.update(ClientId(1), obj(json!({"x": 2})), 4096).unwrap();
        let (to_b, b) = p.changes_since(s0, Some(7)).unwrap();
        assert_eq!(to_a, to_b);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second reader got the cached frame");
        // The next tick delivers the newer value.
        let (_, c) = p.changes_since(to_a, Some(8)).unwrap();
        assert_eq!(peers(&c), json!({"c1": {"x": 2}}));
    }

    #[test]
    fn far_behind_readers_get_every_peer() {
        let p = Presence::new();
        p.join(ClientId(1));
        p.join(ClientId(2));
        p.leave(ClientId(2));
        for x in 0..(LOG_CAPACITY + 10) {
            p.update(ClientId(1), obj(json!({"x": x})), 4096).unwrap();
        }
        let (_, frame) = p.changes_since(0, None).unwrap();
        assert_eq!(peers(&frame), json!({"c1": {"x": LOG_CAPACITY + 9}, "c2": null}));
    }

    #[test]
    fn size_limit() {
        let p = Presence::new();
        p.join(ClientId(1));
        let e = p.update(ClientId(1), obj(json!({"x": "y".repeat(100)})), 50).unwrap_err();
        assert_eq!(e.limit, 50);
        assert_eq!(p.online().1, obj(json!({"c1": {}})));
    }

    #[test]
    fn what_the_lane_holds_is_charged() {
        let budget = Budget::unlimited();
        let p = Presence::with_budget(&budget);
        p.join(ClientId(1));
        let joined = budget.used();
        assert!(joined > 0);
        p.update(ClientId(1), obj(json!({"name": "x".repeat(3000)})), 4096).unwrap();
        assert!(budget.used() > joined + 2 * 3000, "the object and its encoded entry");
        p.forget(ClientId(1));
        assert!(budget.used() < joined + 3000, "forgotten data is released");
        drop(p);
        assert_eq!(budget.used(), 0);
    }
}
