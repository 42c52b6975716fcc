//! Sessions: who a client is across reconnects.
//!
//! A session belongs to one room. It has a secret token (only its owner ever sees it), a public
//! client id (`c7`, the author id others see), the highest `clientReqId` it has had processed
//! (dedupe: a change is never applied twice), and at most one live connection. A new connection
//! naming a live session takes it over: the previous connection is told to close with 4001.
//! A session outlives its connection for `--session-ttl`; its presence for `--presence-grace`
//! (unless the client closed cleanly, which is an immediate leave).
//!
//! A connection says where it resumes from ([`ResumeFrom`]); what it is then sent is decided by
//! the room ([`Room::catch_up`]) and fetched through [`Session::catch_up`], which pairs the room's
//! answer with the session's `lastClientReqId` at the same moment.
//!
//! Locking: `SessionState` is a `parking_lot::Mutex` never held across `.await`. When both are
//! needed, the session lock is taken before the room lock (a commit, and every catch-up, which
//! must report a `lastClientReqId` consistent with its revision). That order is known here and in
//! the commit path only: the writer just asks [`Session::catch_up`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::ids::{ClientId, ClientReqId, Rev, random_hex};
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
    /// Tells the owning connection it has been taken over.
    kick: Option<oneshot::Sender<()>>,
    /// Set (under this lock) when the session is dropped; a resume then starts a new one.
    expired: bool,
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
    pub room: Arc<Room>,
    pub state: Mutex<SessionState>,
}

impl Session {
    /// What this session's connection, standing at `cursor`, is sent (`None`: it is current).
    /// `scratch` is the caller's reusable buffer for the changes a delta carries.
    pub fn catch_up(&self, cursor: Cursor<'_>, scratch: &mut Vec<Arc<Change>>) -> Option<Delivery> {
        // Session lock first, then the room's (as in a commit): no commit of this session is
        // half-way, so the lastClientReqId reported and the revision agree.
        let st = self.state.lock();
        let last_req = st.last_req;
        let delivery = match self.room.catch_up(cursor, self.client, scratch) {
            CatchUp::Current => None,
            CatchUp::Delta { frame, to, newest_committed_at, .. } => {
                Some(Delivery { frame, to, snapshot: None, last_req, newest_committed_at })
            }
            CatchUp::Snapshot(snap, reason) => Some(Delivery {
                frame: protocol::snapshot_frame(snap.rev, last_req, &snap.state),
                to: snap.rev,
                snapshot: Some(reason),
                last_req,
                newest_committed_at: None,
            }),
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
    /// Resolves when another connection takes the session over.
    pub kicked: oneshot::Receiver<()>,
}

/// Every session held by the server.
#[derive(Debug, Default)]
pub struct Sessions {
    map: DashMap<Arc<str>, Arc<Session>>,
    next_client: AtomicU64,
    next_conn: AtomicU64,
}

impl Sessions {
    /// Resumes the session named by `token` when it is live and belongs to `room`, else starts a
    /// new one. Never fails: an unknown or expired token simply gets a new session.
    pub fn attach(&self, room: &Arc<Room>, token: Option<&str>) -> Attached {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let (kick, kicked) = oneshot::channel();
        let existing = token.and_then(|t| self.map.get(t).map(|s| s.value().clone()));
        if let Some(session) = existing.filter(|s| Arc::ptr_eq(&s.room, room)) {
            let mut st = session.state.lock();
            if st.expired {
                drop(st);
                return self.create(room, conn, kick, kicked);
            }
            if let Some(old) = st.kick.replace(kick) {
                let _ = old.send(());
            }
            st.conn = conn;
            st.attached = true;
            drop(st);
            return Attached { session, conn, resumed: true, kicked };
        }
        self.create(room, conn, kick, kicked)
    }

    fn create(
        &self,
        room: &Arc<Room>,
        conn: u64,
        kick: oneshot::Sender<()>,
        kicked: oneshot::Receiver<()>,
    ) -> Attached {
        let client = ClientId(self.next_client.fetch_add(1, Ordering::Relaxed) + 1);
        let token: Arc<str> = random_hex(16).into();
        let session = Arc::new(Session {
            token: token.clone(),
            client,
            room: room.clone(),
            state: Mutex::new(SessionState {
                last_req: ClientReqId(0),
                conn,
                attached: true,
                kick: Some(kick),
                expired: false,
            }),
        });
        self.map.insert(token, session.clone());
        metrics::gauge!(m::SESSIONS_LIVE).set(self.map.len() as f64);
        Attached { session, conn, resumed: false, kicked }
    }

    /// Marks the session detached if `conn` still owns it; a clean close also leaves presence
    /// at once (under the session lock, so a racing resume's join comes after it). Returns
    /// false when another connection took the session over (which is not a leave).
    pub fn detach(&self, session: &Session, conn: u64, clean: bool) -> bool {
        let mut st = session.state.lock();
        if st.conn != conn {
            return false;
        }
        st.attached = false;
        st.kick = None;
        if clean {
            session.room.presence.leave(session.client);
        }
        true
    }

    /// Presence grace then expiry for a session whose connection `conn` just ended. Runs as
    /// its own task; stops as soon as the session is resumed. Each check and the action it
    /// guards happen under the session lock, so a resume either comes first (and wins) or
    /// finds the session expired (and starts a new one).
    pub async fn expire_later(
        self: Arc<Self>,
        session: Arc<Session>,
        conn: u64,
        clean: bool,
        grace: Duration,
        ttl: Duration,
    ) {
        let grace = if clean { Duration::ZERO } else { grace.min(ttl) };
        if !clean {
            tokio::time::sleep(grace).await;
            let st = session.state.lock();
            if st.conn != conn || st.attached {
                return;
            }
            session.room.presence.leave(session.client);
        }
        tokio::time::sleep(ttl - grace).await;
        let mut st = session.state.lock();
        if st.conn == conn && !st.attached {
            st.expired = true;
            self.map.remove(&session.token);
            session.room.presence.forget(session.client);
            metrics::gauge!(m::SESSIONS_LIVE).set(self.map.len() as f64);
        }
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

    #[test]
    fn resume_and_takeover() {
        let sessions = Sessions::default();
        let room = Arc::new(Room::new(RoomId::parse("r").unwrap(), RoomConfig::default()));
        let other = Arc::new(Room::new(RoomId::parse("o").unwrap(), RoomConfig::default()));
        let mut a = sessions.attach(&room, None);
        assert!(!a.resumed);
        let b = sessions.attach(&room, Some(&a.session.token));
        assert!(b.resumed);
        assert_eq!(b.session.client, a.session.client);
        assert!(a.kicked.try_recv().is_ok(), "the first connection is kicked");
        assert!(!sessions.detach(&a.session, a.conn, false), "a superseded connection does not detach");
        assert!(sessions.detach(&b.session, b.conn, false));
        let c = sessions.attach(&room, Some("no-such-token"));
        assert!(!c.resumed);
        assert_ne!(c.session.client, a.session.client);
        let d = sessions.attach(&other, Some(&a.session.token));
        assert!(!d.resumed, "a session belongs to one room");
    }
}
