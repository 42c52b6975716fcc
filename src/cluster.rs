//! Cluster mode's shell side (`--redis`): what a node does with what the Redis store's follower
//! thread reads ([`Follower`]), and how a change reaches a room's owner.
//!
//! Each room has one owner, the node holding its lease in Redis ([`crate::store::redis`]); every
//! other node that has clients in the room holds a follower copy ([`crate::room::follow`]):
//! - the owner's records reach a follower through the room's Redis Stream, and are taken in
//!   revision order ([`Follower::record`]); its write pass then sends each of its clients what it
//!   is missing, exactly as on the owner (acks ride in the author's delta, since the record names
//!   the author's client id, unique across nodes: see [`crate::session::Sessions::for_node`]);
//! - a follower's client's change is forwarded ([`crate::app::App::submit`]) to the owner's
//!   mailbox as [`Mail::Change`]; the owner commits it as the author's ([`Cluster::commit`]),
//!   so its ack arrives with its record, or answers [`Mail::Reject`] to the author's node, which
//!   hands the reject to the author's connection ([`crate::room::Room::reject_forwarded`]).
//!
//! Dedupe is the room's: the owner refuses a forwarded change whose session's `clientReqId` is
//! not above the highest it stored for that session (records and snapshots carry it, so it
//! holds across nodes and failovers).
//!
//! Failover: when the owner's lease lapses (it died, or was cut off from Redis), a follower's
//! node takes the lease and its copy becomes the owner in place ([`Follower::promote`]); the
//! other followers follow the new owner ([`Follower::owner_changed`]). Both first take every
//! record the old owner stored, then reject `unavailable` what was forwarded to it and not
//! stored (it never will be: its appends are fenced by the new lease), for the authors to send
//! again. Clients of the surviving nodes stay connected and see a pause; clients of the dead
//! node reconnect to any node and resume by delta. A copy that cannot follow (a gap, damage) is
//! dropped and its clients closed with 4013.
//!
//! Invariants: a follower copy never commits; the owner commits a forwarded change at most once
//! per session and `clientReqId`; every forwarded change is answered once: acknowledged through
//! the stream, or rejected (by mail, or when its owner changed before storing it).

use std::sync::{Arc, Weak};

use crate::app::App;
use crate::ids::{ClientId, ClientReqId, RoomId};
use crate::metrics as m;
use crate::protocol::{ErrorCode, Reject};
use crate::room::ChangeRequest;
use crate::session::Sessions;
use crate::store::redis::{Follower, Mail, RedisStore};
use crate::store::{Journal, Record, Store};

/// The node's side of the cluster: handed to the Redis store's follower thread.
pub struct Cluster {
    app: Weak<App>,
    store: Arc<RedisStore>,
}

/// Starts following (cluster mode only; a no-op without `--redis`).
///
/// # Errors
/// When the follower's thread cannot be started.
pub fn start(app: &Arc<App>) -> Result<(), String> {
    let Some(store) = app.redis_store.clone() else { return Ok(()) };
    let cluster = Arc::new(Cluster { app: Arc::downgrade(app), store: store.clone() });
    store.follow(cluster).map_err(|e| e.to_string())
}

impl Follower for Cluster {
    fn record(&self, room: &RoomId, record: &Record) -> bool {
        let Some(app) = self.app.upgrade() else { return false };
        let Some(copy) = app.rooms.loaded(room).filter(|r| r.is_follower() && !r.is_retired()) else {
            return false;
        };
        match copy.follow(record) {
            Ok(applied) => {
                if applied {
                    metrics::counter!(m::CLUSTER_RECORDS_FOLLOWED).increment(1);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    metrics::gauge!(m::CLUSTER_FOLLOW_LAG).set(now.saturating_sub(record.ts) as f64 / 1000.0);
                    copy.deliver();
                }
                true
            }
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "cannot follow the room's owner: the copy is dropped");
                false
            }
        }
    }

    fn promote(&self, room: &RoomId, was: Option<u64>) -> bool {
        let Some(app) = self.app.upgrade() else { return false };
        let Some(copy) = app.rooms.loaded(room).filter(|r| r.is_follower() && !r.is_retired()) else {
            return false;
        };
        let journal: Weak<dyn Journal> = Arc::downgrade(&copy) as _;
        copy.attach_log(self.store.open(room, copy.epoch().as_str(), journal));
        copy.promote();
        metrics::counter!(m::CLUSTER_TAKEOVERS).increment(1);
        let rejected = copy.owner_gone(was);
        tracing::warn!(room = %room, rev = copy.rev().0, rejected, "took the room over from its dead owner in place: its clients stay connected");
        true
    }

    fn owner_changed(&self, room: &RoomId, was: Option<u64>) {
        let Some(app) = self.app.upgrade() else { return };
        if let Some(copy) = app.rooms.loaded(room) {
            let rejected = copy.owner_gone(was);
            tracing::info!(room = %room, rejected, "the room has a new owner: forwarding there");
        }
    }

    fn mail(&self, mail: Mail) {
        let Some(app) = self.app.upgrade() else { return };
        match mail {
            Mail::Change { room, req } => self.commit(&app, &room, &req),
            Mail::Reject { room, author, id, code, message, rev, conflicts } => {
                let Ok(room) = RoomId::parse(&room) else { return };
                let Some(copy) = app.rooms.loaded(&room) else { return };
                let code = ErrorCode::parse(&code).unwrap_or(ErrorCode::Unavailable);
                let reject = Reject { code, message, rev, conflicts };
                metrics::counter!(m::CLUSTER_FORWARD_REJECTS).increment(1);
                copy.reject_forwarded(ClientId(author), ClientReqId(id), reject);
            }
        }
    }
}

impl Cluster {
    /// The owner's side of a forwarded change: committed as its author's, or answered with a
    /// reject sent back to the author's node.
    fn commit(&self, app: &App, room: &str, req: &serde_json::Value) {
        metrics::counter!(m::CLUSTER_FORWARDS_RECEIVED).increment(1);
        let req = match ChangeRequest::from_wire(req) {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(room, error = %e, "a forwarded change that does not parse; dropped");
                return;
            }
        };
        let (author, id) = (req.author, req.client_req_id);
        let answer = |reject: Reject| {
            crate::app::count_reject(&reject);
            let Some(id) = id else { return };
            let mail = Mail::Reject {
                room: room.to_string(),
                author: author.0,
                id: id.0,
                code: reject.code.as_str().to_string(),
                message: reject.message,
                rev: reject.rev,
                conflicts: reject.conflicts,
            };
            self.store.send(Sessions::node_of(author), &mail);
        };
        let owned = RoomId::parse(room)
            .ok()
            .and_then(|id| app.rooms.loaded(&id))
            .filter(|r| !r.is_follower() && !r.is_retired());
        let Some(owned) = owned else {
            let message =
                "the room's owner changed while the change was on its way: it was not applied; send it again";
            return answer(Reject::new(ErrorCode::Unavailable, message, 0));
        };
        if let (Some(token), Some(id)) = (&req.extras.session, id)
            && let Some(stored) = owned.stored_session(token)
            && stored.last_req >= id.0
        {
            let message = format!(
                "clientReqId {} was already processed (lastClientReqId {}); not applied again",
                id.0, stored.last_req
            );
            return answer(Reject::new(ErrorCode::Duplicate, message, owned.rev().0));
        }
        if let Err(reject) = app.commit(&owned, req) {
            answer(reject);
        }
    }
}
