//! Sessions: who a client is across reconnects.
//!
//! A session belongs to one room. It has a secret token (only its owner ever sees it), a public
//! client id (`c7`, the author id others see), the highest `clientReqId` it has had processed
//! (dedupe: a change is never applied twice), and at most one live connection. A new connection
//! naming a live session takes it over: the previous connection is told to close with 4001. The
//! same kick channel carries an operator's close ([`Sessions::kick`]: 4009, 4010, 4011).
//! A session outlives its connection for `--session-ttl`; its presence for `--presence-grace`
//! (unless the client closed cleanly, which is an immediate leave).
//!
//! At most `--max-sessions` are held ([`SessionLimits::max`]). A new session beyond it first drops
//! the session that has been disconnected longest (as if its TTL had run out: a resume starts a
//! new session, presence forgets it); a connected session is never dropped, so when every
//! session is connected the new one is refused ([`SessionsFull`]). Disconnected sessions wait in
//! `Sessions::idle`, oldest disconnect first, each with the one task that will end its presence
//! and expire it; a resume or an eviction takes it out of that queue and cancels the task, so an
//! evicted session leaves nothing behind. The map is shrunk when it falls far below its capacity,
//! so a connect-and-close storm does not pin its peak memory.
//!
//! A connection says where it resumes from ([`ResumeFrom`]); what it is then sent is decided by
//! the room ([`Room::catch_up`]) and fetched through [`Session::catch_up`], which pairs the room's
//! answer with the session's `lastClientReqId` at the same moment.
//!
//! Locking: `SessionState` is a `parking_lot::Mutex` never held across `.await`. When both are
//! needed, the session lock is taken before the room lock (a commit, and every catch-up, which
//! must report a `lastClientReqId` consistent with its revision). That order is known here and in
//! the commit path only: the writer just asks [`Session::catch_up`]. The idle queue's lock is
//! taken after a session's lock, never before it (an eviction pops from the queue, lets go, then
//! locks the session and checks it is still the entry it popped).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::close::CloseReason;
use crate::config::Config;
use crate::ids::{ClientId, ClientReqId, Rev, now_ms, random_hex};
use crate::metrics as m;
use crate::protocol;
use crate::room::{CatchUp, Change, Cursor, Room, SnapshotReason};

/// Where a connecting client says it is (the `session`, `epoch` and `since` query parameters).
#[derive(Debug, Default, Clone)]
pub struct ResumeFrom {
    pub session: Option<String>,
    pub epoch: Option<String>,
    pub since: Option<Rev>,
}

impl ResumeFrom {
    /// The reader's position for the room's decision. A `since` without an `epoch` cannot be
    /// trusted (revisions mean nothing outside their epoch), so it counts as another epoch.
    pub fn cursor(&self, resumed: bool) -> Cursor<'_> {
        match (self.since, self.epoch.as_deref()) {
            (Some(since), epoch) => Cursor::Resume { epoch: epoch.unwrap_or(""), since },
            (None, _) => Cursor::Fresh { resumed },
        }
    }
}

/// What a connection is sent to reach the room's newest revision.
#[derive(Debug)]
pub struct Delivery {
    /// The `delta` or `snapshot` frame.
    pub frame: Bytes,
    /// The revision the frame brings the client to.
    pub to: Rev,
    /// `None` for a delta; why, for a snapshot.
    pub snapshot: Option<SnapshotReason>,
    /// The session's `lastClientReqId` as of `to`.
    pub last_req: ClientReqId,
    /// When the newest change in a delta was committed.
    pub newest_committed_at: Option<Instant>,
}

/// Mutable per-session state.
#[derive(Debug)]
pub struct SessionState {
    /// Highest `clientReqId` processed (committed or rejected).
    pub last_req: ClientReqId,
    /// Generation of the connection that currently owns the session.
    conn: u64,
    /// Whether that connection is still open.
    attached: bool,
    /// Tells the owning connection to close, and why: taken over (4001), or an operator's kick
    /// (4009), room close (4010) or room delete (4011).
    kick: Option<oneshot::Sender<CloseReason>>,
    /// Set (under this lock) when the session is dropped; a resume then starts a new one.
    expired: bool,
    /// Its key in `Sessions::idle` while it is disconnected (and held).
    idle_key: Option<u64>,
    /// The task that ends its presence and expires it, while it is disconnected.
    expiry: Option<AbortHandle>,
}

impl SessionState {
    /// Whether connection `conn` still owns the session.
    pub fn owned_by(&self, conn: u64) -> bool {
        self.conn == conn && !self.expired
    }
}

#[derive(Debug)]
pub struct Session {
    pub token: Arc<str>,
    pub client: ClientId,
    /// The user it belongs to (a token's `sub`; `None` in open mode): only that user may resume
    /// it, and its changes and presence carry it.
    pub user: Option<Arc<str>>,
    pub room: Arc<Room>,
    pub state: Mutex<SessionState>,
    /// When its current (or last) connection attached, in ms since the Unix epoch (admin API).
    connected_at_ms: AtomicU64,
    /// The revision its current connection has been sent (admin API: lag). One relaxed store
    /// per delivery.
    sent: AtomicU64,
}

impl Session {
    /// Records that the connection has been sent everything up to `rev`.
    pub fn note_sent(&self, rev: Rev) {
        self.sent.store(rev.0, Ordering::Relaxed);
    }

    /// The revision the connection has been sent.
    pub fn sent(&self) -> Rev {
        Rev(self.sent.load(Ordering::Relaxed))
    }

    /// When its current (or last) connection attached, in ms since the Unix epoch.
    pub fn connected_at_ms(&self) -> u64 {
        self.connected_at_ms.load(Ordering::Relaxed)
    }

    /// Whether a connection owns the session now.
    pub fn is_connected(&self) -> bool {
        let st = self.state.lock();
        st.attached && !st.expired
    }

    /// What this session's connection, standing at `cursor`, is sent (`None`: it is current).
    /// `scratch` is the caller's reusable buffer for the changes a delta carries.
    pub fn catch_up(&self, cursor: Cursor<'_>, scratch: &mut Vec<Arc<Change>>) -> Option<Delivery> {
        // Session lock first, then the room's (as in a commit): no commit of this session is
        // half-way, so the lastClientReqId reported and the revision agree.
        let st = self.state.lock();
        // As of the revision delivered: changes committed but not yet written are not in it.
        let last_req = |to| self.room.processed_as_of(self.client, st.last_req, to);
        let delivery = match self.room.catch_up(cursor, self.client, scratch) {
            CatchUp::Current => None,
            CatchUp::Delta { frame, to, newest_committed_at, .. } => {
                Some(Delivery { frame, to, snapshot: None, last_req: last_req(to), newest_committed_at })
            }
            CatchUp::Snapshot(snap, reason) => {
                let last_req = last_req(snap.rev);
                Some(Delivery {
                    frame: protocol::snapshot_frame(snap.rev, last_req, &snap.state),
                    to: snap.rev,
                    snapshot: Some(reason),
                    last_req,
                    newest_committed_at: None,
                })
            }
        };
        drop(st);
        scratch.clear();
        delivery
    }
}

/// A connection's claim on a session.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<Session>,
    /// This connection's generation.
    pub conn: u64,
    pub resumed: bool,
    /// Resolves, with the close reason, when another connection takes the session over or an
    /// operator closes the connection.
    pub kicked: oneshot::Receiver<CloseReason>,
}

/// How many sessions are held, and how long a disconnected one lives.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Most sessions held, connected or not (`--max-sessions`; 0 = unlimited).
    pub max: usize,
    /// How long a dropped connection's presence stays (`--presence-grace`).
    pub presence_grace: Duration,
    /// How long a disconnected session can be resumed (`--session-ttl`).
    pub ttl: Duration,
}

impl From<&Config> for SessionLimits {
    fn from(c: &Config) -> Self {
        SessionLimits { max: c.max_sessions, presence_grace: c.presence_grace, ttl: c.session_ttl }
    }
}

/// `--max-sessions` is reached and every session is connected: nothing can make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("--max-sessions reached and every session is connected")]
pub struct SessionsFull;

/// Why a connection could not attach to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Full(#[from] SessionsFull),
    /// The session named belongs to another user: it is not resumed (nor replaced by a new one).
    #[error("the session belongs to another user")]
    OtherUser,
}

/// The map is shrunk only above this capacity (a small map is not worth the rehash).
const SHRINK_ABOVE: usize = 1024;

/// Every session held by the server.
#[derive(Debug)]
pub struct Sessions {
    map: DashMap<Arc<str>, Arc<Session>>,
    /// The disconnected sessions, by a key that grows with each disconnect: the first entry is
    /// the one a full server drops. A session is here exactly while it is held and disconnected
    /// (its `idle_key` names the entry).
    idle: Mutex<BTreeMap<u64, Arc<Session>>>,
    /// Sessions held, counted before one is inserted, so concurrent connects never overshoot
    /// `limits.max` (`map.len()` never exceeds it).
    held: AtomicUsize,
    limits: SessionLimits,
    next_client: AtomicU64,
    /// The first client id this node hands out, less one: 0 for a single node; in cluster mode
    /// the node's number shifted into the high bits (see [`Sessions::for_node`]).
    client_base: u64,
    next_conn: AtomicU64,
    next_idle: AtomicU64,
}

impl Default for Sessions {
    /// Sessions with the default flags' limits.
    fn default() -> Self {
        Sessions::new(SessionLimits::from(&Config::default()))
    }
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Self {
        Sessions {
            map: DashMap::new(),
            idle: Mutex::new(BTreeMap::new()),
            held: AtomicUsize::new(0),
            limits,
            next_client: AtomicU64::new(0),
            client_base: 0,
            next_conn: AtomicU64::new(0),
            next_idle: AtomicU64::new(0),
        }
    }

    /// Sessions of cluster node `node` (its number from the cluster's store): its client ids
    /// are `node << 32` plus a count, so no two nodes ever hand out the same one (a client id
    /// names the author of a change on every node, and routes the owner's answer back to the
    /// author's node). Below 2^53 for any node number below 2^21, so JavaScript holds them
    /// exactly.
    pub fn for_node(limits: SessionLimits, node: u64) -> Self {
        let base = node << 32;
        Sessions { next_client: AtomicU64::new(base), client_base: base, ..Sessions::new(limits) }
    }

    /// The node a client id was handed out by (see [`Sessions::for_node`]); 0 for a single node.
    pub fn node_of(client: ClientId) -> u64 {
        client.0 >> 32
    }

    /// Resumes the session named by `token` when it is live and belongs to `room`, else starts a
    /// new one for `user`: an unknown or expired token simply gets a new session.
    ///
    /// # Errors
    /// [`AttachError::Full`] when a new session is needed, `--max-sessions` are held and every
    /// one of them is connected; [`AttachError::OtherUser`] when the live session named belongs
    /// to another user (in open mode every user is `None`, so this never happens).
    pub fn attach(
        &self,
        room: &Arc<Room>,
        token: Option<&str>,
        user: Option<&Arc<str>>,
    ) -> Result<Attached, AttachError> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let (kick, kicked) = oneshot::channel();
        let existing = token.and_then(|t| self.map.get(t).map(|s| s.value().clone()));
        if let Some(session) = existing.clone().filter(|s| Arc::ptr_eq(&s.room, room)) {
            if session.user.as_deref() != user.map(|u| &**u) {
                return Err(AttachError::OtherUser);
            }
            let mut st = session.state.lock();
            if !st.expired {
                if let Some(old) = st.kick.replace(kick) {
                    let _ = old.send(CloseReason::TakenOver);
                }
                self.leave_idle(&mut st);
                st.conn = conn;
                st.attached = true;
                session.connected_at_ms.store(now_ms(), Ordering::Relaxed);
                session.sent.store(0, Ordering::Relaxed);
                drop(st);
                return Ok(Attached { session, conn, resumed: true, kicked });
            }
        }
        // A session of an earlier copy of this room (evicted from memory and loaded again) is
        // resumed from what the room stored, below.
        if let Some(old) = existing
            .filter(|s| !Arc::ptr_eq(&s.room, room) && s.room.id() == room.id() && s.room.is_retired())
        {
            let mut st = old.state.lock();
            if !st.expired && !st.attached {
                self.expire(&old, &mut st);
            }
        }
        // A session the room stored (it committed before a restart, an eviction or its expiry)
        // comes back with its client id and dedupe state, so a resend is applied once.
        let stored = token
            .filter(|t| !self.map.contains_key(*t))
            .and_then(|t| room.stored_session(t))
            .filter(|s| s.user.as_deref() == user.map(|u| &**u));
        let resumed = stored.is_some();
        let mut attached = self.create(room, user, conn, kick, kicked, stored)?;
        attached.resumed = resumed;
        Ok(attached)
    }

    fn create(
        &self,
        room: &Arc<Room>,
        user: Option<&Arc<str>>,
        conn: u64,
        kick: oneshot::Sender<CloseReason>,
        kicked: oneshot::Receiver<CloseReason>,
        stored: Option<crate::store::SessionRecord>,
    ) -> Result<Attached, SessionsFull> {
        self.reserve()?;
        // Client ids a stored room has seen are never handed out again (a cluster node's ids
        // are its own: other nodes' ids in the room are not below its base).
        if self.client_base == 0 {
            self.next_client.fetch_max(room.max_client(), Ordering::Relaxed);
        }
        let (client, token, last_req) = match stored {
            Some(s) => (ClientId(s.client), Arc::<str>::from(s.token), ClientReqId(s.last_req)),
            None => {
                let client = ClientId(self.next_client.fetch_add(1, Ordering::Relaxed) + 1);
                (client, random_hex(16).into(), ClientReqId(0))
            }
        };
        let session = Arc::new(Session {
            token: token.clone(),
            client,
            user: user.cloned(),
            room: room.clone(),
            state: Mutex::new(SessionState {
                last_req,
                conn,
                attached: true,
                kick: Some(kick),
                expired: false,
                idle_key: None,
                expiry: None,
            }),
            connected_at_ms: AtomicU64::new(now_ms()),
            sent: AtomicU64::new(0),
        });
        self.map.insert(token, session.clone());
        self.update_gauge();
        Ok(Attached { session, conn, resumed: false, kicked })
    }

    /// Takes a place under `--max-sessions`, dropping the longest-disconnected sessions to make
    /// one. Each round either takes a place or drops a session, so it ends.
    fn reserve(&self) -> Result<(), SessionsFull> {
        let max = self.limits.max;
        loop {
            let free = |n: usize| (max == 0 || n < max).then_some(n + 1);
            if self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, free).is_ok() {
                return Ok(());
            }
            if !self.evict_oldest() {
                return Err(SessionsFull);
            }
        }
    }

    /// Drops the session disconnected longest ago; false when none is disconnected.
    fn evict_oldest(&self) -> bool {
        loop {
            let Some((key, session)) = self.idle.lock().pop_first() else { return false };
            let mut st = session.state.lock();
            // Resumed between the pop and the lock: no longer idle, try the next.
            if st.idle_key != Some(key) {
                continue;
            }
            st.idle_key = None;
            if let Some(task) = st.expiry.take() {
                task.abort();
            }
            self.expire(&session, &mut st);
            drop(st);
            metrics::counter!(m::SESSIONS_EVICTED).increment(1);
            self.shrink_if_sparse();
            return true;
        }
    }

    /// Drops a session (under its lock): a resume now starts a new one, and presence forgets it.
    fn expire(&self, session: &Session, st: &mut SessionState) {
        st.expired = true;
        self.leave_idle(st);
        self.map.remove(&session.token);
        self.held.fetch_sub(1, Ordering::AcqRel);
        session.room.presence.forget(session.client);
        self.update_gauge();
    }

    /// Takes a session (whose lock is held) out of the idle queue and cancels its expiry.
    fn leave_idle(&self, st: &mut SessionState) {
        if let Some(key) = st.idle_key.take() {
            self.idle.lock().remove(&key);
        }
        if let Some(task) = st.expiry.take() {
            task.abort();
        }
    }

    /// Marks the session disconnected if `conn` still owns it, queues it as idle and starts its
    /// expiry (presence grace, then `--session-ttl`); a clean close also leaves presence at once
    /// (under the session lock, so a racing resume's join comes after it). Returns false, doing
    /// nothing, when another connection took the session over (which is not a leave). Must run
    /// inside the Tokio runtime (it spawns the expiry task).
    pub fn detach(self: &Arc<Self>, session: &Arc<Session>, conn: u64, clean: bool) -> bool {
        let mut st = session.state.lock();
        if st.conn != conn || st.expired {
            return false;
        }
        st.attached = false;
        st.kick = None;
        if clean {
            session.room.presence.leave(session.client);
        }
        let key = self.next_idle.fetch_add(1, Ordering::Relaxed);
        st.idle_key = Some(key);
        self.idle.lock().insert(key, session.clone());
        let expiry = tokio::spawn(self.clone().expire_later(session.clone(), key, clean));
        st.expiry = Some(expiry.abort_handle());
        true
    }

    /// Presence grace then expiry for a session that went idle with `key`. Cancelled when the
    /// session is resumed or evicted; each check and the action it guards also happen under the
    /// session lock, so a resume either comes first (and wins) or finds the session expired (and
    /// starts a new one).
    async fn expire_later(self: Arc<Self>, session: Arc<Session>, key: u64, clean: bool) {
        let SessionLimits { presence_grace, ttl, .. } = self.limits;
        let grace = if clean { Duration::ZERO } else { presence_grace.min(ttl) };
        if !clean {
            tokio::time::sleep(grace).await;
            let st = session.state.lock();
            if st.idle_key != Some(key) {
                return;
            }
            session.room.presence.leave(session.client);
        }
        tokio::time::sleep(ttl - grace).await;
        let mut st = session.state.lock();
        if st.idle_key == Some(key) {
            // This task is finishing on its own: nothing to cancel.
            st.expiry = None;
            self.expire(&session, &mut st);
            drop(st);
            self.shrink_if_sparse();
        }
    }

    /// Gives memory back after a storm: the map is shrunk once it holds under a quarter of its
    /// capacity (amortised: the next shrink needs another three quarters to go).
    fn shrink_if_sparse(&self) {
        let capacity = self.map.capacity();
        if capacity > SHRINK_ABOVE && self.map.len() < capacity / 4 {
            self.map.shrink_to_fit();
        }
    }

    fn update_gauge(&self) {
        metrics::gauge!(m::SESSIONS_LIVE).set(self.held.load(Ordering::Acquire) as f64);
    }

    /// Every session held for `room` (that very room: a room deleted and created again is
    /// another). Walks all sessions: for the admin API, never a hot path.
    pub fn of_room(&self, room: &Arc<Room>) -> Vec<Arc<Session>> {
        self.map.iter().filter(|s| Arc::ptr_eq(&s.room, room)).map(|s| s.value().clone()).collect()
    }

    /// Closes the session's connection, if one is attached, with `reason` (through the same
    /// channel a takeover uses: its writer closes with that code). With `end`, the session is
    /// also dropped, as if its TTL had run out: a resume then starts a new session, presence
    /// forgets it, and a connection still reading stops acting for it. Returns whether a
    /// connection was told to close.
    pub fn kick(&self, session: &Session, reason: CloseReason, end: bool) -> bool {
        let mut st = session.state.lock();
        let told = match st.kick.take() {
            Some(kick) if st.attached && !st.expired => kick.send(reason).is_ok(),
            other => {
                st.kick = other;
                false
            }
        };
        if end && !st.expired {
            self.expire(session, &mut st);
            drop(st);
            self.shrink_if_sparse();
        }
        told
    }

    /// Whether the session named by `token` is held.
    pub fn is_live(&self, token: &str) -> bool {
        self.map.contains_key(token)
    }

    /// Sessions held without a connection.
    pub fn disconnected(&self) -> usize {
        self.idle.lock().len()
    }

    /// Sessions the map has room for without growing.
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomId;
    use crate::room::RoomConfig;

    fn limits(max: usize) -> SessionLimits {
        SessionLimits { max, presence_grace: Duration::from_secs(10), ttl: Duration::from_secs(300) }
    }

    fn room(name: &str) -> Arc<Room> {
        Arc::new(Room::new(RoomId::parse(name).unwrap(), RoomConfig::default()))
    }

    #[tokio::test]
    async fn resume_and_takeover() {
        let sessions = Arc::new(Sessions::new(limits(0)));
        let (room, other) = (room("r"), room("o"));
        let mut a = sessions.attach(&room, None, None).unwrap();
        assert!(!a.resumed);
        let b = sessions.attach(&room, Some(&a.session.token), None).unwrap();
        assert!(b.resumed);
        assert_eq!(b.session.client, a.session.client);
        assert_eq!(a.kicked.try_recv(), Ok(CloseReason::TakenOver), "the first connection is kicked");
        assert!(!sessions.detach(&a.session, a.conn, false), "a superseded connection does not detach");
        assert_eq!(sessions.disconnected(), 0);
        assert!(sessions.detach(&b.session, b.conn, false));
        assert_eq!(sessions.disconnected(), 1);
        let c = sessions.attach(&room, Some("no-such-token"), None).unwrap();
        assert!(!c.resumed);
        assert_ne!(c.session.client, a.session.client);
        let d = sessions.attach(&other, Some(&a.session.token), None).unwrap();
        assert!(!d.resumed, "a session belongs to one room");
        let e = sessions.attach(&room, Some(&a.session.token), None).unwrap();
        assert!(e.resumed);
        assert_eq!(sessions.disconnected(), 0, "a resume leaves the idle queue");
    }

    #[tokio::test]
    async fn a_session_is_resumed_only_by_its_user() {
        let sessions = Arc::new(Sessions::new(limits(0)));
        let room = room("r");
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        let a = sessions.attach(&room, None, Some(&alice)).unwrap();
        assert_eq!(a.session.user.as_deref(), Some("alice"));
        let token = Some(&*a.session.token);
        assert_eq!(sessions.attach(&room, token, Some(&bob)).unwrap_err(), AttachError::OtherUser);
        assert_eq!(sessions.attach(&room, token, None).unwrap_err(), AttachError::OtherUser);
        assert!(sessions.attach(&room, token, Some(&alice)).unwrap().resumed);
    }

    #[tokio::test]
    async fn a_full_server_drops_the_longest_disconnected_and_never_a_connected_one() {
        let sessions = Arc::new(Sessions::new(limits(3)));
        let room = room("r");
        let a = sessions.attach(&room, None, None).unwrap();
        let b = sessions.attach(&room, None, None).unwrap();
        let c = sessions.attach(&room, None, None).unwrap();
        sessions.detach(&b.session, b.conn, true);
        sessions.detach(&a.session, a.conn, true);
        // Full: b disconnected first, so b goes first.
        let d = sessions.attach(&room, None, None).unwrap();
        assert!(!sessions.is_live(&b.session.token) && sessions.is_live(&a.session.token));
        assert!(b.session.state.lock().expired);
        let e = sessions.attach(&room, None, None).unwrap();
        assert!(!sessions.is_live(&a.session.token));
        assert_eq!(sessions.len(), 3);
        // c, d and e are connected: no room for another.
        assert_eq!(sessions.attach(&room, None, None).unwrap_err(), AttachError::Full(SessionsFull));
        assert!([&c, &d, &e].iter().all(|x| sessions.is_live(&x.session.token)));
        // An evicted session's resume is a new session.
        sessions.detach(&c.session, c.conn, true);
        let f = sessions.attach(&room, Some(&a.session.token), None).unwrap();
        assert!(!f.resumed);
        assert!(!sessions.is_live(&c.session.token));
    }

    #[tokio::test]
    async fn expired_sessions_give_the_map_back() {
        let ttl = Duration::from_millis(20);
        let sessions = Arc::new(Sessions::new(SessionLimits { max: 0, presence_grace: ttl, ttl }));
        let room = room("r");
        for _ in 0..20_000 {
            let a = sessions.attach(&room, None, None).unwrap();
            sessions.detach(&a.session, a.conn, true);
        }
        let peak = sessions.capacity();
        assert!(peak >= 20_000);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sessions.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(ttl).await;
        }
        assert!(sessions.is_empty());
        assert!(sessions.capacity() < peak / 4, "{} of {peak}", sessions.capacity());
    }
}
