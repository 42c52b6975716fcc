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
//! **Big rooms.** At most `cap` present peers are *listed* (`--presence-peers`): shown in
//! `welcome` and in presence messages. Past that, a joining peer is only counted; it is listed
//! (a join, for everyone) when a listed peer leaves, oldest waiting first, so the listed peers are
//! always `min(present, cap)` of them. An unlisted peer's joins, leaves and presence updates are
//! not logged and wake nobody: they bump `seq` and mark the count for [`Presence::publish_count`],
//! which the server calls about once a second. Whenever the room has unlisted peers, `welcome`
//! carries the count (`presenceCount`), and so does every presence message whose range the room
//! spent partly over the cap in (`count`; `last_big` is the newest `seq` at which it was, before or
//! after the change), the last of them saying that the list is whole again. So a join storm costs
//! O(cap) bytes per joiner and O(1) per peer per second, not O(present): the `welcome`'s list is
//! built once per listed change and shared (`welcome`).
//!
//! What the lane holds (peers, their entries, the log, the cached frames) is charged to the
//! memory budget after every change, under the lock.
//!
//! **Across nodes** (cluster mode): a lane with a relay ([`Presence::set_relay`]) hands each
//! change of a peer to it as a [`PeerEvent`] (a join, a leave, a forget, or the peer's whole
//! object after an update), and applies the other nodes' events ([`Presence::apply`]) as if its
//! own peers had made them, without relaying them back; [`Presence::roll`] and
//! [`Presence::forget_where`] serve the periodic roll calls that make nodes converge.
//!
//! Locking: one `parking_lot::Mutex`, held only for map/log updates and reads, never across
//! `.await`. Invariants: `seq` only grows, and each peer's `changed` is ≤ `seq`; `peers_heap` is
//! the sum of [`Peer::heap`] over `peers`; `listed` holds exactly the online peers marked listed,
//! and `listed.len() == min(present, cap)`; the log holds only listed peers' changes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write as _;
use std::mem::size_of;
use std::sync::{Arc, OnceLock};

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
    /// Its presence object; `None` while empty (most peers never set one).
    data: Option<Box<Map<String, Value>>>,
    /// The peer's user (a token's `sub`), put first in its entry as `"user"`; a client cannot
    /// set that key itself. `None` in open mode (the entry is then exactly its data).
    user: Option<Arc<str>>,
    online: bool,
    /// Shown to others (only while online; see the module doc).
    listed: bool,
    /// The forgotten flag: the session ended, and the entry stays (as `null`) only until its last
    /// change leaves the log, so readers that have not caught up still see the leave.
    forgotten: bool,
    /// The `seq` of its last listed change (0: never listed).
    changed: u64,
    /// While online and unlisted: the `seq` at which it started waiting to be listed (its key in
    /// `PresenceInner::waiting`).
    waiting_since: u64,
    /// `"c7":{...}` while listed, `"c7":null` after a listed peer left; encoded once per listed
    /// change. Empty for a peer never listed.
    entry: Bytes,
}

impl Peer {
    fn encode(&mut self, client: ClientId) {
        let mut b = Vec::with_capacity(16);
        write!(b, "\"{client}\":").expect("vec write");
        let shown = self.online && self.listed;
        let members = self.data.as_deref().into_iter().flatten();
        if let (true, Some(user)) = (shown, &self.user) {
            b.extend_from_slice(b"{\"user\":");
            serde_json::to_writer(&mut b, &**user).expect("presence serialises");
            for (k, v) in members {
                b.push(b',');
                serde_json::to_writer(&mut b, k).expect("presence serialises");
                b.push(b':');
                serde_json::to_writer(&mut b, v).expect("presence serialises");
            }
            b.push(b'}');
        } else if shown {
            match self.data.as_deref() {
                Some(data) => serde_json::to_writer(&mut b, data).expect("presence serialises"),
                None => b.extend_from_slice(b"{}"),
            }
        } else {
            b.extend_from_slice(b"null");
        }
        // Exactly sized, so `Bytes` needs no second allocation to own it.
        self.entry = Bytes::from(b.into_boxed_slice());
    }

    /// The heap this peer owns: its presence object and its encoded entry.
    fn heap(&self) -> usize {
        let data = self
            .data
            .as_deref()
            .map_or(0, |d| (memory::object_heap(d) + Heap::block(size_of::<Map<String, Value>>())).total());
        data + if self.entry.is_empty() { 0 } else { Heap::block(self.entry.len()).total() }
    }

    /// Its presence object as a map (for the HTTP API), `user` first.
    fn shown(&self) -> Map<String, Value> {
        let mut data = Map::new();
        if let Some(user) = &self.user {
            data.insert("user".into(), Value::from(&**user));
        }
        if let Some(d) = self.data.as_deref() {
            data.extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        data
    }
}

/// Most recent presence frames kept for sharing.
const FRAME_CACHE: usize = 4;

#[derive(Debug, Default)]
struct PresenceInner {
    seq: u64,
    peers: HashMap<ClientId, Peer>,
    /// Listed peers' changes, oldest first.
    log: VecDeque<(u64, ClientId)>,
    /// The `seq` of the newest change dropped from the log: a reader at or after it can be
    /// caught up from the log (unlisted peers' changes have a `seq` but no log entry).
    log_start: u64,
    /// Recent frames, keyed by the range `(since, to)` they cover.
    cached: VecDeque<(u64, u64, Bytes)>,
    /// The current tick, the sequence its readers read up to, and the count of present peers then.
    tick: (u64, u64, usize),
    /// What the peers own on the heap (see the invariant).
    peers_heap: usize,
    /// Peers online, listed or not.
    present: usize,
    /// The online listed peers.
    listed: BTreeSet<ClientId>,
    /// Online unlisted peers with the `seq` at which they joined, oldest first: the next to be
    /// listed. Entries whose peer has since left or been listed (its `waiting_since` differs) are
    /// stale: skipped when met, and compacted away once they are most of the queue.
    waiting: VecDeque<(u64, ClientId)>,
    /// The newest `seq` at which the room had unlisted peers, before or after that change.
    last_big: u64,
    /// Unlisted peers came or went since the last wake-up of the readers.
    count_dirty: bool,
    /// The listed peers as one JSON object, for `welcome`, and the log's newest `seq` it is
    /// current for.
    welcome: Option<(u64, Bytes)>,
}

impl PresenceInner {
    /// What the lane holds: the peers and their heap, the log, the cached frames.
    fn footprint(&self) -> usize {
        let peers = self.peers.capacity() * (size_of::<(ClientId, Peer)>() + 1) + self.peers_heap;
        let log = self.log.capacity() * size_of::<(u64, ClientId)>();
        let cached: usize = self.cached.iter().map(|(_, _, f)| Heap::block(f.len()).total()).sum();
        let welcome = self.welcome.as_ref().map_or(0, |(_, w)| Heap::block(w.len()).total());
        let lists = self.listed.len() * 2 * size_of::<ClientId>()
            + self.waiting.capacity() * size_of::<(u64, ClientId)>();
        peers + log + cached + welcome + lists + self.cached.capacity() * size_of::<(u64, u64, Bytes)>()
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

    /// Whether some present peer is not listed.
    fn over_cap(&self) -> bool {
        self.present > self.listed.len()
    }

    /// Moves `seq` on for one change. `was_over` is [`Self::over_cap`] before it.
    fn bump(&mut self, was_over: bool) -> u64 {
        self.seq += 1;
        if was_over || self.over_cap() {
            self.last_big = self.seq;
        }
        self.seq
    }

    /// Records a listed peer's change: a new `seq`, logged, and the peer's entry re-encoded.
    fn log_change(&mut self, client: ClientId, was_over: bool) -> u64 {
        let seq = self.bump(was_over);
        if self.log.len() == LOG_CAPACITY
            && let Some((old_seq, old)) = self.log.pop_front()
        {
            self.log_start = old_seq;
            if self.peers.get(&old).is_some_and(|p| p.forgotten && p.changed <= old_seq) {
                self.remove_peer(old);
            }
        }
        self.log.push_back((seq, client));
        self.edit_peer(client, |peer| {
            peer.changed = seq;
            peer.encode(client);
        });
        seq
    }

    /// Lists the longest-waiting unlisted peer, if any and there is room under `cap`.
    fn promote(&mut self, cap: usize) {
        while self.listed.len() < cap
            && let Some((since, next)) = self.waiting.pop_front()
        {
            if self.peers.get(&next).is_some_and(|p| p.online && !p.listed && p.waiting_since == since) {
                let was_over = self.over_cap();
                self.peers.get_mut(&next).expect("checked").listed = true;
                self.listed.insert(next);
                self.log_change(next, was_over);
            }
        }
    }

    /// Queues an unlisted peer that joined at `seq`, dropping stale entries once they are most
    /// of the queue.
    fn wait(&mut self, client: ClientId, seq: u64) {
        if let Some(peer) = self.peers.get_mut(&client) {
            peer.waiting_since = seq;
        }
        self.waiting.push_back((seq, client));
        let unlisted = self.present - self.listed.len();
        if self.waiting.len() > 2 * unlisted + 16 {
            let peers = &self.peers;
            self.waiting.retain(|(since, c)| {
                peers.get(c).is_some_and(|p| p.online && !p.listed && p.waiting_since == *since)
            });
            self.waiting.shrink_to(2 * self.waiting.len() + 16);
        }
    }
}

/// What `welcome` says of presence.
#[derive(Debug, Clone)]
pub struct WelcomePresence {
    /// The presence sequence it is current for.
    pub seq: u64,
    /// The listed peers, as one JSON object.
    pub peers: Bytes,
    /// How many peers are present, when more than are listed.
    pub count: Option<usize>,
}

/// The presence lane of one room.
#[derive(Debug)]
pub struct Presence {
    inner: Mutex<PresenceInner>,
    seq_tx: watch::Sender<u64>,
    /// Most peers listed (`--presence-peers`; `usize::MAX` for no limit).
    cap: usize,
    /// What the lane holds, in the memory budget.
    charge: Charge,
    /// Where this node's own peers' changes go besides this lane (cluster mode: to the other
    /// nodes with the room, which [`Presence::apply`] them); set once.
    relay: OnceLock<RelaySlot>,
}

struct RelaySlot(Relay);

impl std::fmt::Debug for RelaySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

/// A presence change as it crosses to another node (cluster mode). `Data` carries the peer's
/// whole presence object, so a node that missed an earlier change still converges.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "p", rename_all = "lowercase")]
pub enum PeerEvent {
    Join { client: u64, user: Option<String> },
    Data { client: u64, data: Map<String, Value> },
    Leave { client: u64 },
    Forget { client: u64 },
}

impl PeerEvent {
    /// The peer it is about.
    pub fn client(&self) -> u64 {
        match self {
            PeerEvent::Join { client, .. }
            | PeerEvent::Data { client, .. }
            | PeerEvent::Leave { client }
            | PeerEvent::Forget { client } => *client,
        }
    }
}

/// What a lane's own changes are handed to (see [`Presence::set_relay`]).
pub type Relay = Box<dyn Fn(PeerEvent) + Send + Sync>;

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    /// A lane that lists every peer, outside any memory budget (tests, benches).
    pub fn new() -> Self {
        Self::with_budget(&Budget::unlimited(), 0)
    }

    /// A lane whose memory is charged to `budget`, listing at most `cap` peers (0 = all).
    pub fn with_budget(budget: &Arc<Budget>, cap: usize) -> Self {
        Presence {
            inner: Mutex::new(PresenceInner::default()),
            seq_tx: watch::channel(0).0,
            cap: if cap == 0 { usize::MAX } else { cap },
            charge: Charge::new(budget, Kind::Held),
            relay: OnceLock::new(),
        }
    }

    /// Hands every later change of this lane's peers to `relay` as well (cluster mode); a
    /// change [`applied`](Presence::apply) from another node is not handed back. Once only:
    /// `false` when a relay was set already.
    pub fn set_relay(&self, relay: Relay) -> bool {
        self.relay.set(RelaySlot(relay)).is_ok()
    }

    fn relay(&self, event: impl FnOnce() -> PeerEvent) {
        if let Some(relay) = self.relay.get() {
            (relay.0)(event());
        }
    }

    /// A change of a peer on another node (cluster mode), applied as that node applied it.
    pub fn apply(&self, event: PeerEvent) {
        match event {
            PeerEvent::Join { client, user } => {
                self.join_peer(ClientId(client), user.map(Arc::from));
            }
            PeerEvent::Data { client, data } => {
                let client = ClientId(client);
                let same = self
                    .inner
                    .lock()
                    .peers
                    .get(&client)
                    .map(|p| p.data.as_deref().cloned().unwrap_or_default());
                if same.as_ref() == Some(&data) {
                    return;
                }
                if same.is_none() {
                    self.join_peer(client, None);
                }
                // Replaces the whole object: keys it no longer has are removed.
                let mut patch: Map<String, Value> = same
                    .unwrap_or_default()
                    .keys()
                    .filter(|k| !data.contains_key(*k))
                    .map(|k| (k.clone(), Value::Null))
                    .collect();
                patch.extend(data);
                let _ = self.merge(client, patch, usize::MAX);
            }
            PeerEvent::Leave { client } => {
                self.leave_peer(ClientId(client));
            }
            PeerEvent::Forget { client } => self.forget_peer(ClientId(client)),
        }
    }

    /// The present peers `mine` selects, as the events that rebuild them elsewhere: a join and
    /// the presence object of each (cluster mode: a node's roll call of its own peers).
    pub fn roll(&self, mine: impl Fn(ClientId) -> bool) -> Vec<PeerEvent> {
        let g = self.inner.lock();
        let mut out = Vec::new();
        for (c, p) in g.peers.iter().filter(|(c, p)| p.online && mine(**c)) {
            out.push(PeerEvent::Join { client: c.0, user: p.user.as_deref().map(str::to_string) });
            out.push(PeerEvent::Data { client: c.0, data: p.data.as_deref().cloned().unwrap_or_default() });
        }
        out
    }

    /// Forgets every peer `which` selects (cluster mode: the peers of a node that went away, or
    /// that its roll call no longer names); nothing is relayed. Returns how many.
    pub fn forget_where(&self, which: impl Fn(ClientId) -> bool) -> usize {
        let gone: Vec<ClientId> = self.inner.lock().peers.keys().copied().filter(|c| which(*c)).collect();
        for c in &gone {
            self.forget_peer(*c);
        }
        gone.len()
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
    /// from its first join). Past the cap the client is only counted (see the module doc).
    pub fn join_as(&self, client: ClientId, user: Option<Arc<str>>) -> u64 {
        let relayed = user.as_deref().map(str::to_string);
        let (seq, joined) = self.join_peer(client, user);
        if joined {
            self.relay(|| PeerEvent::Join { client: client.0, user: relayed });
        }
        seq
    }

    /// [`Presence::join_as`] without the relay; also says whether the peer was not present.
    fn join_peer(&self, client: ClientId, user: Option<Arc<str>>) -> (u64, bool) {
        let mut g = self.inner.lock();
        if g.peers.get(&client).is_some_and(|p| p.online) {
            return (g.seq, false);
        }
        let was_over = g.over_cap();
        let listed = g.listed.len() < self.cap;
        let peer = g.peers.entry(client).or_insert(Peer {
            data: None,
            user,
            online: false,
            listed: false,
            forgotten: false,
            changed: 0,
            waiting_since: 0,
            entry: Bytes::new(),
        });
        peer.online = true;
        peer.listed = listed;
        g.present += 1;
        let seq = if listed {
            g.listed.insert(client);
            g.log_change(client, was_over)
        } else {
            let seq = g.bump(was_over);
            g.wait(client, seq);
            g.count_dirty = true;
            seq
        };
        self.account(&g);
        drop(g);
        if listed {
            self.notify(seq);
        }
        (seq, true)
    }

    /// Merges `patch` into `client`'s presence (a `null` member removes the key). An unlisted
    /// peer's presence is kept, and shown once it is listed.
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
        let merged = self.merge(client, patch, limit)?;
        if let Some(data) = merged {
            self.relay(|| PeerEvent::Data { client: client.0, data });
        }
        Ok(())
    }

    /// [`Presence::update`] without the relay; returns the merged object (`None` when the peer
    /// is not known here).
    fn merge(
        &self,
        client: ClientId,
        patch: Map<String, Value>,
        limit: usize,
    ) -> Result<Option<Map<String, Value>>, PresenceTooLarge> {
        let relayed = self.relay.get().is_some();
        let mut g = self.inner.lock();
        let Some(peer) = g.peers.get(&client) else { return Ok(None) };
        let mut merged = peer.data.as_deref().cloned().unwrap_or_default();
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
        let shown = peer.online && peer.listed;
        let out = relayed.then(|| merged.clone());
        g.edit_peer(client, |peer| peer.data = (!merged.is_empty()).then(|| Box::new(merged)));
        let seq = shown.then(|| {
            let was_over = g.over_cap();
            g.log_change(client, was_over)
        });
        self.account(&g);
        drop(g);
        if let Some(seq) = seq {
            self.notify(seq);
        }
        Ok(out)
    }

    /// Marks `client` gone: peers see `null` once (if it was listed; the longest-waiting
    /// unlisted peer is listed in its place). Its data is kept for a later resume.
    pub fn leave(&self, client: ClientId) {
        if self.leave_peer(client) {
            self.relay(|| PeerEvent::Leave { client: client.0 });
        }
    }

    /// [`Presence::leave`] without the relay; `true` when the peer was present.
    fn leave_peer(&self, client: ClientId) -> bool {
        let mut g = self.inner.lock();
        let Some(peer) = g.peers.get_mut(&client).filter(|p| p.online) else { return false };
        let was_listed = std::mem::replace(&mut peer.listed, false);
        peer.online = false;
        let was_over = g.over_cap();
        g.present -= 1;
        let seq = if was_listed {
            g.listed.remove(&client);
            g.log_change(client, was_over);
            g.promote(self.cap);
            Some(g.seq)
        } else {
            g.count_dirty = true;
            g.bump(was_over);
            None
        };
        self.account(&g);
        drop(g);
        if let Some(seq) = seq {
            self.notify(seq);
        }
        true
    }

    /// Drops everything known of `client` (its session ended). Peers that have not caught up
    /// still get its `null`: the entry lingers as a tombstone until the log moves past it.
    pub fn forget(&self, client: ClientId) {
        let known = self.inner.lock().peers.contains_key(&client);
        self.forget_peer(client);
        if known {
            self.relay(|| PeerEvent::Forget { client: client.0 });
        }
    }

    /// [`Presence::forget`] without the relay.
    fn forget_peer(&self, client: ClientId) {
        self.leave_peer(client);
        let mut g = self.inner.lock();
        let in_log = g.log.iter().any(|(_, c)| *c == client);
        if in_log {
            g.edit_peer(client, |p| {
                p.forgotten = true;
                p.data = None;
            });
        } else {
            g.remove_peer(client);
        }
        self.account(&g);
    }

    /// Wakes the readers when unlisted peers came or went since they were last woken, so the
    /// count they are sent is at most this call's period old (the server calls it once a second).
    /// Unlisted peers wake nobody themselves: in a join storm that would be O(N) wake-ups per join.
    pub fn publish_count(&self) {
        let mut g = self.inner.lock();
        if !std::mem::take(&mut g.count_dirty) {
            return;
        }
        let seq = g.seq;
        drop(g);
        self.notify(seq);
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

    /// Every present peer with its presence, listed or not (for the HTTP API), and the sequence
    /// it corresponds to.
    pub fn online(&self) -> (u64, Map<String, Value>) {
        let g = self.inner.lock();
        let peers =
            g.peers.iter().filter(|(_, p)| p.online).map(|(c, p)| (c.to_string(), Value::Object(p.shown())));
        (g.seq, peers.collect())
    }

    /// The listed peers for `welcome` and the sequence it is current for, with the count of
    /// present peers when some are not listed. The list is built once per listed change and
    /// shared by every `welcome` until the next one: a join storm past the cap builds it once.
    pub fn welcome(&self) -> WelcomePresence {
        let mut g = self.inner.lock();
        let version = g.log.back().map_or(0, |(seq, _)| *seq);
        let peers = match &g.welcome {
            Some((v, peers)) if *v == version => peers.clone(),
            _ => {
                let entries = g.listed.iter().filter_map(|c| g.peers.get(c)).map(|p| &p.entry[..]);
                let peers = protocol::object_of(entries);
                g.welcome = Some((version, peers.clone()));
                self.account(&g);
                peers
            }
        };
        WelcomePresence { seq: g.seq, peers, count: g.over_cap().then_some(g.present) }
    }

    /// Peers present, listed or not.
    pub fn online_count(&self) -> usize {
        self.inner.lock().present
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    /// The `presence` frame for a reader at `since`, and the sequence it brings it to; `None`
    /// when nothing changed. `tick` (a room-wide time slot, see the module doc) pins the end of
    /// the range for every reader that asks during that slot; `None` reads up to now.
    pub fn changes_since(&self, since: u64, tick: Option<u64>) -> Option<(u64, Bytes)> {
        let mut g = self.inner.lock();
        let (to, present) = match tick {
            Some(t) if t > g.tick.0 => {
                g.tick = (t, g.seq, g.present);
                (g.seq, g.present)
            }
            Some(t) if t == g.tick.0 => (g.tick.1, g.tick.2),
            _ => (g.seq, g.present),
        };
        if since >= to {
            return None;
        }
        if let Some((_, _, frame)) = g.cached.iter().find(|(f, t, _)| (*f, *t) == (since, to)) {
            return Some((to, frame.clone()));
        }
        let in_log = g.log_start <= since;
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
        // The room was over the cap somewhere in the range (or after it): say how many are here.
        let count = (g.last_big > since).then_some(present);
        if entries.is_empty() && count.is_none() {
            return Some((to, Bytes::new()));
        }
        let frame = protocol::presence_frame(&protocol::object_of(entries.into_iter()), count);
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

    /// Two nodes' lanes wired to each other as cluster mode does: what one relays, the other
    /// applies (and does not relay back).
    #[test]
    fn relayed_changes_converge_on_another_node_and_are_not_relayed_back() {
        let (here, there) = (Presence::new(), Arc::new(Presence::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (to, log) = (there.clone(), sent.clone());
        assert!(here.set_relay(Box::new(move |e| {
            log.lock().push(e.clone());
            to.apply(e);
        })));
        let back = Arc::new(Mutex::new(0));
        let count = back.clone();
        there.set_relay(Box::new(move |_| *count.lock() += 1));
        here.join_as(ClientId(1), Some("ann".into()));
        here.update(ClientId(1), obj(json!({"x": 1, "tmp": true})), 4096).unwrap();
        here.update(ClientId(1), obj(json!({"tmp": null})), 4096).unwrap();
        assert_eq!(there.online().1, here.online().1);
        assert_eq!(there.online().1["c1"], json!({"user": "ann", "x": 1}));
        assert_eq!(*back.lock(), 0, "applied changes are not relayed again");
        // Applying the same object again changes nothing (a roll call of unchanged peers).
        let seq = there.online().0;
        there.apply(PeerEvent::Data { client: 1, data: obj(json!({"x": 1})) });
        assert_eq!(there.online().0, seq);
        here.leave(ClientId(1));
        assert!(there.online().1.is_empty());
        here.forget(ClientId(1));
        assert_eq!(
            sent.lock().iter().map(|e| serde_json::to_value(e).unwrap()["p"].clone()).collect::<Vec<_>>(),
            [json!("join"), json!("data"), json!("data"), json!("leave"), json!("forget")]
        );
    }

    #[test]
    fn a_roll_call_names_the_chosen_peers_and_forget_where_drops_a_nodes_peers() {
        let p = Presence::new();
        for c in [1u64, 2, (1 << 32) | 1] {
            p.join(ClientId(c));
        }
        p.update(ClientId(2), obj(json!({"k": "v"})), 4096).unwrap();
        let roll = p.roll(|c| c.0 >> 32 == 0);
        assert_eq!(roll.len(), 4, "a join and the object of peers 1 and 2: {roll:?}");
        assert!(roll.contains(&PeerEvent::Data { client: 2, data: obj(json!({"k": "v"})) }));
        let other = Presence::new();
        for e in roll {
            other.apply(e);
        }
        assert_eq!(other.online().1.len(), 2);
        assert_eq!(p.forget_where(|c| c.0 >> 32 == 1), 1);
        let mut left: Vec<String> = p.online().1.keys().cloned().collect();
        left.sort();
        assert_eq!(left, ["c1", "c2"]);
    }

    #[test]
    fn a_peer_with_a_user_shows_it_and_cannot_change_it() {
        let p = Presence::new();
        p.join_as(ClientId(1), Some("alice".into()));
        p.update(ClientId(1), obj(json!({"name": "A", "user": "mallory"})), 4096).unwrap();
        let (_, frame) = p.changes_since(0, None).unwrap();
        assert_eq!(peers(&frame), json!({"c1": {"user": "alice", "name": "A"}}));
        assert_eq!(p.online().1["c1"], json!({"user": "alice", "name": "A"}));
        let welcome = p.welcome().peers;
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
        assert_eq!(&p.welcome().peers[..], br#"{"c1":{"x":99}}"#);
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
        let p = Presence::with_budget(&budget, 0);
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

    fn welcome_json(p: &Presence) -> (Value, Option<usize>) {
        let w = p.welcome();
        (serde_json::from_slice(&w.peers).unwrap(), w.count)
    }

    fn count(frame: &Bytes) -> Option<u64> {
        serde_json::from_slice::<Value>(frame).unwrap().get("count").map(|c| c.as_u64().unwrap())
    }

    #[test]
    fn past_the_cap_peers_are_counted_not_listed() {
        let p = Presence::with_budget(&Budget::unlimited(), 2);
        let s0 = p.welcome().seq;
        for c in 1..=2 {
            p.join(ClientId(c));
        }
        assert_eq!(welcome_json(&p), (json!({"c1": {}, "c2": {}}), None), "at the cap: everyone, no count");
        let (s1, frame) = p.changes_since(s0, None).unwrap();
        assert_eq!((peers(&frame), count(&frame)), (json!({"c1": {}, "c2": {}}), None));
        let mut watch = p.subscribe();
        watch.mark_unchanged();
        p.join(ClientId(3));
        p.update(ClientId(3), obj(json!({"x": 1})), 4096).unwrap();
        assert!(!watch.has_changed().unwrap(), "an unlisted peer wakes nobody");
        assert_eq!(welcome_json(&p), (json!({"c1": {}, "c2": {}}), Some(3)));
        assert_eq!(p.online_count(), 3);
        assert_eq!(p.online().1.len(), 3, "the HTTP API lists everyone");
        p.publish_count();
        assert!(watch.has_changed().unwrap(), "the count is published");
        let (s2, frame) = p.changes_since(s1, None).unwrap();
        assert_eq!((peers(&frame), count(&frame)), (json!({}), Some(3)), "only the count");
        // A listed peer leaves: the waiting one is listed in its place, with its presence.
        p.leave(ClientId(1));
        assert_eq!(welcome_json(&p), (json!({"c2": {}, "c3": {"x": 1}}), None));
        let (_, frame) = p.changes_since(s2, None).unwrap();
        assert_eq!(peers(&frame), json!({"c1": null, "c3": {"x": 1}}));
        assert_eq!(count(&frame), Some(2), "the last counted message: the list is whole again");
        let (_, frame) = p.changes_since(s0, None).unwrap();
        assert_eq!(peers(&frame), json!({"c1": null, "c2": {}, "c3": {"x": 1}}), "from the start");
    }

    #[test]
    fn the_welcome_list_is_built_once_per_listed_change() {
        let p = Presence::with_budget(&Budget::unlimited(), 1);
        p.join(ClientId(1));
        let first = p.welcome().peers;
        for c in 2..50 {
            p.join(ClientId(c));
            assert_eq!(p.welcome().peers.as_ptr(), first.as_ptr(), "unlisted joins share it");
        }
        p.update(ClientId(1), obj(json!({"x": 1})), 4096).unwrap();
        assert_ne!(p.welcome().peers.as_ptr(), first.as_ptr(), "a listed change rebuilds it");
        assert_eq!(p.welcome().count, Some(49));
    }

    #[test]
    fn unlisted_peers_that_left_are_not_listed_later() {
        let p = Presence::with_budget(&Budget::unlimited(), 1);
        p.join(ClientId(1));
        p.join(ClientId(2));
        p.join(ClientId(3));
        p.leave(ClientId(2));
        p.forget(ClientId(2));
        p.leave(ClientId(1));
        assert_eq!(welcome_json(&p), (json!({"c3": {}}), None), "c2 left while waiting: c3 is next");
        // A waiting peer that leaves and comes back waits from its return.
        p.join(ClientId(4));
        p.join(ClientId(5));
        p.leave(ClientId(4));
        p.join(ClientId(4));
        p.leave(ClientId(3));
        assert_eq!(welcome_json(&p).0, json!({"c5": {}}), "c5 has waited longest");
        // Churn of unlisted peers does not grow the queue without bound.
        for round in 0..1000 {
            p.join(ClientId(100 + round));
            p.leave(ClientId(100 + round));
        }
        assert!(p.inner.lock().waiting.len() <= 20);
    }
}
