//! Cluster mode's shell side (`--redis`): what a node does with what the Redis store's follower
//! thread reads ([`Follower`]), and how a change reaches a room's owner.
//!
//! Each room has one owner, the node holding its lease in Redis ([`crate::store::redis`]); every
//! other node that has clients in the room holds a follower copy ([`crate::room::follow`]):
//! - the owner's records reach a follower on the room's feed (published by the append script;
//!   the stream fills any gap), and are taken in revision order ([`Follower::record`]); its write pass then sends each of its clients what it
//!   is missing, exactly as on the owner (acks ride in the author's delta, since the record names
//!   the author's client id, unique across nodes: see [`crate::session::Sessions::for_node`]);
//! - a follower's client's change is forwarded ([`crate::app::App::submit`]) to the owner's
//!   mailbox as [`Mail::Change`]; the owner commits it as the author's ([`Cluster::commit`]),
//!   so its ack arrives with its record, or answers [`Mail::Reject`] to the author's node, which
//!   hands the reject to the author's connection ([`crate::room::Room::reject_forwarded`]).
//!
//! Presence and broadcasts cross nodes on the room's lane (Redis pub/sub, [`Lane`]): the
//! lanes of a room in use here relay their own peers' changes and broadcasts
//! ([`RoomHook::attach`]), and apply the other nodes' into the local lanes, where they are
//! coalesced for this node's clients as local ones are. Each node calls the roll of its peers in
//! every room it relays every [`ROLL_EVERY`] (and when another node says hello), so a node that
//! missed a message converges, and a node not heard from for [`ROLL_LAPSE`] rolls (it died) has
//! its peers forgotten.
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
//! A forwarded change nobody answers (a mail lost while Redis was unreachable, an owner that
//! stalls without losing its lease) is rejected `unavailable` on the follower after
//! [`FORWARD_TIMEOUT`]; the author's resend is applied once, by the owner's dedupe.
//!
//! Invariants: a follower copy never commits; the owner commits a forwarded change at most once
//! per session and `clientReqId`; every forwarded change is answered once: acknowledged through
//! the stream, or rejected (by mail, or when its owner changed before storing it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::app::{App, RoomHook};
use crate::ids::{ClientId, ClientReqId, RoomId, now_ms};
use crate::metrics as m;
use crate::presence::PeerEvent;
use crate::protocol::{ErrorCode, Reject};
use crate::room::follow::Followed;
use crate::room::{ChangeRequest, Room};
use crate::session::Sessions;
use crate::store::redis::{Follower, Mail, RedisStore, Taken};
use crate::store::{Journal, Record, Store};

/// The node's side of the cluster: handed to the Redis store's follower thread.
pub struct Cluster {
    app: Weak<App>,
    /// Weak: the store's threads hold this value, and the store stops them when it drops.
    store: Weak<RedisStore>,
    node: u64,
    /// The rooms whose lanes are relayed, with what the roll calls need.
    lanes: Mutex<HashMap<RoomId, Lanes>>,
}

/// A room's lanes across nodes.
struct Lanes {
    room: Weak<Room>,
    /// When this node last called its own peers' roll in the room.
    rolled: Instant,
    /// When each other node was last heard from in the room.
    heard: HashMap<u64, Instant>,
}

/// A node calls the roll of its own peers in each room this often; a node not heard from in a
/// room for [`ROLL_LAPSE`] rolls has its peers forgotten there (it died, or left the room).
const ROLL_EVERY: Duration = Duration::from_secs(5);
const ROLL_LAPSE: u32 = 3;
/// A forwarded change the owner has not answered for this long (or three leases, if longer) is
/// rejected `unavailable` on the follower, for its author to send again.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// A message on a room's lane (Redis pub/sub): presence and broadcasts across nodes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LaneMsg {
    /// The sending node.
    n: u64,
    #[serde(flatten)]
    what: Lane,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "l", rename_all = "lowercase")]
enum Lane {
    /// A change of one of the sender's peers.
    Peer { e: PeerEvent },
    /// A broadcast sent on the sender's node.
    Broadcast { from: u64, data: serde_json::Value },
    /// Every present peer of the sender in the room (each [`ROLL_EVERY`], and on `hello`): the
    /// receivers forget the sender's peers it does not name.
    Roll { peers: Vec<PeerEvent> },
    /// The sender started relaying the room: everyone answers with a roll call.
    Hello,
}

/// Starts following (cluster mode only; `None` without `--redis`).
///
/// # Errors
/// When the follower's threads cannot be started.
pub fn start(app: &Arc<App>) -> Result<Option<Arc<Cluster>>, String> {
    let Some(store) = app.redis_store.clone() else { return Ok(None) };
    let node = store.node();
    let cluster = Arc::new(Cluster {
        app: Arc::downgrade(app),
        store: Arc::downgrade(&store),
        node,
        lanes: Mutex::new(HashMap::new()),
    });
    store.follow(cluster.clone()).map_err(|e| e.to_string())?;
    let hook: Arc<dyn RoomHook> = cluster.clone();
    app.set_room_hook(hook);
    Ok(Some(cluster))
}

impl RoomHook for Cluster {
    /// Relays the room's presence and broadcasts to the other nodes (once per room copy), and
    /// asks them for their peers.
    fn attach(&self, room: &Arc<Room>) {
        let store = self.store.clone();
        let (id, node) = (room.id().clone(), self.node);
        let relayed = room.presence.set_relay(Box::new(move |e| {
            if let Some(store) = store.upgrade() {
                publish(&store, &id, node, Lane::Peer { e });
            }
        }));
        if !relayed {
            return;
        }
        let store = self.store.clone();
        let id = room.id().clone();
        room.broadcasts.set_relay(Box::new(move |from, data| {
            if let Some(store) = store.upgrade() {
                publish(&store, &id, node, Lane::Broadcast { from: from.0, data: data.clone() });
            }
        }));
        let lanes = Lanes { room: Arc::downgrade(room), rolled: Instant::now(), heard: HashMap::new() };
        self.lanes.lock().insert(room.id().clone(), lanes);
        self.publish(room.id(), Lane::Hello);
    }
}

fn publish(store: &RedisStore, room: &RoomId, node: u64, what: Lane) {
    let body = serde_json::to_string(&LaneMsg { n: node, what }).expect("lane messages serialise");
    store.publish(room, body);
}

impl Cluster {
    /// Once a second (the server's sweep): calls the roll of this node's peers in each relayed
    /// room every [`ROLL_EVERY`], and forgets the peers of nodes not heard from for
    /// [`ROLL_LAPSE`] rolls.
    pub fn sweep(&self) {
        if let Some(app) = self.app.upgrade() {
            let wait = FORWARD_TIMEOUT.max(app.config.owner_lease * 3);
            for room in app.rooms.all().into_iter().filter(|r| r.is_follower()) {
                let expired = room.expire_forwarded(wait);
                if expired > 0 {
                    tracing::warn!(room = %room.id(), expired, "forwarded changes the owner did not answer: rejected unavailable");
                }
            }
        }
        let mut lanes = self.lanes.lock();
        lanes.retain(|_, l| l.room.upgrade().is_some_and(|r| !r.is_retired()));
        let mut due = Vec::new();
        for (id, l) in lanes.iter_mut() {
            let Some(room) = l.room.upgrade() else { continue };
            if l.rolled.elapsed() >= ROLL_EVERY {
                l.rolled = Instant::now();
                due.push((id.clone(), room.clone()));
            }
            let lapsed: Vec<u64> = l
                .heard
                .iter()
                .filter(|(_, t)| t.elapsed() >= ROLL_EVERY * ROLL_LAPSE)
                .map(|(n, _)| *n)
                .collect();
            for n in lapsed {
                l.heard.remove(&n);
                let gone = room.presence.forget_where(|c| Sessions::node_of(c) == n);
                tracing::info!(room = %id, node = n, gone, "a node's peers were not called for: forgotten");
            }
        }
        drop(lanes);
        for (id, room) in due {
            self.roll(&id, &room);
        }
    }

    fn publish(&self, room: &RoomId, what: Lane) {
        if let Some(store) = self.store.upgrade() {
            publish(&store, room, self.node, what);
        }
    }

    fn roll(&self, id: &RoomId, room: &Room) {
        let me = self.node;
        let peers = room.presence.roll(|c| Sessions::node_of(c) == me);
        self.publish(id, Lane::Roll { peers });
    }
}

impl Follower for Cluster {
    fn record(&self, room: &RoomId, record: &Record) -> Taken {
        let Some(copy) = self.copy(room) else { return Taken::Gone };
        match copy.follow(record) {
            Ok(Followed::Applied) => {
                metrics::counter!(m::CLUSTER_RECORDS_FOLLOWED).increment(1);
                let lag = now_ms().saturating_sub(record.ts);
                metrics::gauge!(m::CLUSTER_FOLLOW_LAG).set(lag as f64 / 1000.0);
                copy.deliver();
                Taken::Yes
            }
            Ok(Followed::Held) => Taken::Yes,
            Ok(Followed::Gap { .. }) => Taken::Behind,
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "cannot follow the room's owner: the copy is dropped");
                Taken::Gone
            }
        }
    }

    fn promote(&self, room: &RoomId, was: Option<u64>) -> bool {
        let Some(copy) = self.copy(room) else { return false };
        let journal: Weak<dyn Journal> = Arc::downgrade(&copy) as _;
        let Some(store) = self.store.upgrade() else { return false };
        copy.attach_log(store.open(room, copy.epoch().as_str(), journal));
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

    /// Asks the other nodes for their peers again (a hello at attach time may have been
    /// published before this node heard the lane).
    fn listening(&self, room: &RoomId) {
        if self.lanes.lock().contains_key(room) {
            self.publish(room, Lane::Hello);
        }
    }

    fn lane(&self, room: &RoomId, body: &[u8]) {
        let msg: LaneMsg = match serde_json::from_slice(body) {
            Ok(msg) => msg,
            Err(e) => {
                return tracing::warn!(room = %room, error = %e, "a lane message that does not parse; dropped");
            }
        };
        if msg.n == self.node {
            return;
        }
        let Some(copy) = self.app.upgrade().and_then(|app| app.rooms.loaded(room)) else { return };
        if let Some(l) = self.lanes.lock().get_mut(room) {
            l.heard.insert(msg.n, Instant::now());
        }
        let from = msg.n;
        match msg.what {
            Lane::Peer { e } => copy.presence.apply(e),
            Lane::Broadcast { from, data } => copy.broadcasts.send_remote(ClientId(from), &data),
            Lane::Roll { peers } => {
                let named: HashSet<u64> = peers.iter().map(PeerEvent::client).collect();
                for e in peers {
                    copy.presence.apply(e);
                }
                copy.presence.forget_where(|c| Sessions::node_of(c) == from && !named.contains(&c.0));
            }
            Lane::Hello => self.roll(room, &copy),
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
    /// This node's live follower copy of `room`.
    fn copy(&self, room: &RoomId) -> Option<Arc<Room>> {
        let app = self.app.upgrade()?;
        app.rooms.loaded(room).filter(|r| r.is_follower() && !r.is_retired())
    }

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
            // An HTTP change's author is no client: its id names the node that forwarded it.
            let node = if author == ClientId::HTTP { id.0 >> 32 } else { Sessions::node_of(author) };
            if let Some(store) = self.store.upgrade() {
                store.send(node, &mail, None);
            }
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
