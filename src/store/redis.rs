//! Rooms stored in Redis (`--redis URL`): the storage seam's second implementation, and cluster
//! mode's transport. Each room is a handful of keys sharing the hash tag
//! `{room}` (so a Redis Cluster keeps them in one slot):
//!
//! - `ringsync:{room}:log`: a Stream with one entry per committed change, its id `REV-0` and its
//!   field `r` the record framed as in a file log (CRC32C + rkyv, checked when read back: bytes
//!   from Redis are not trusted either);
//! - `ringsync:{room}:rev`: the revision of the newest entry (what the next append must follow);
//! - `ringsync:{room}:snap`: the newest snapshot, framed as a snapshot file;
//! - `ringsync:{room}:epoch`: the room's epoch, set when the room is opened;
//! - `ringsync:{room}:owner`: the owner's lease: this node's token, with an expiry
//!   (`--owner-lease`), renewed by the store's thread at a third of it.
//!
//! and `ringsync:rooms`, a sorted set of room names (the admin list).
//!
//! **One owner per room, fenced.** A node takes a room's lease before it loads the room. Every
//! append is one Lua script per room and round that checks, atomically on the server, that the
//! lease is still this node's and that the stored revision is the one the first record follows,
//! then adds the entries with ids derived from their revisions: a node that lost its lease, or
//! whose copy of the room is behind what is stored, has its append refused instead of forking
//! the history. A refused or failed append is reported to the room's [`Journal`] as a failure
//! (the room rolls back and rejects the changes `unavailable`); nothing is reported written
//! before Redis answered, so the ack always follows the append.
//!
//! **Followers.** A room whose lease another node holds is read without it ([`Loaded::owner`]
//! names the holder) and followed. The append script publishes each record it stores on the
//! room's feed channel (`ringsync:feed:{room}`, the same framed bytes), and the thread
//! `ringsync-lanes` (one pub/sub connection for every followed room's feed and every room's
//! lane) hands them to the shell's [`Follower`]; a record that reveals a gap (a message lost on
//! a reconnect, or stored between the load and the subscription) is filled from the stream.
//! The thread `ringsync-follow` reads this node's mailbox `ringsync:node:N` (N is the node's
//! number, from `INCR ringsync:nodes`, and starts its lease token) with a blocking `XREAD`, and
//! checks each followed room's lease just after it would lapse unless renewed, with its stored
//! revision (a lost last message is caught up there). Mail ([`Mail`]) carries forwarded changes
//! to owners and rejects back; it is sent by the store's thread in the same pipeline as the
//! appends, so an answer never overtakes the record it follows. A lease with another holder (or
//! none, then taken by this node if it can) means the owner changed: see
//! [`Follower::promote`] and [`Follower::owner_changed`].
//!
//! Appends never touch the network on the committing thread: records are encoded there, queued,
//! and sent by the store's thread (`ringsync-redis`), one pipelined round trip per round for every
//! room. Loads, history reads and deletes run on the caller's thread over a pool of connections
//! (the callers already run them off the async workers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::Value;

use super::{Journal, LoadSink, Loaded, Record, RoomLog, SnapshotData, Store, StoreError, codec};
use crate::ids::RoomId;

/// How a [`RedisStore`] is set up.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` (see the `redis` crate for the forms it takes).
    pub url: String,
    /// How long a room's lease lasts without renewal (`--owner-lease`).
    pub lease: Duration,
    /// Records kept before the newest snapshot (the ring refill and the history API).
    pub retain: u64,
}

const ROOMS_KEY: &str = "ringsync:rooms";
/// A counter: each node takes the next number at start (its mailbox and its client ids).
const NODES_KEY: &str = "ringsync:nodes";
/// Mail kept in a node's mailbox stream (older entries are trimmed as new ones arrive).
const MAILBOX_LEN: usize = 10_000;
/// Mailbox entries the follower reads per call.
const FOLLOW_COUNT: usize = 512;
/// A round trip that takes longer than this fails (and the connection is made anew).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connection, the store's thread waits this long before trying again.
const RETRY: Duration = Duration::from_millis(100);
/// Idle reading connections kept (more are made while loads run side by side, then closed).
const MAX_IDLE_READERS: usize = 8;
/// Entries read per `XRANGE` while loading.
const PAGE: usize = 1024;

/// Takes the lease when it is free or already this node's (then extends it).
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0";

/// Extends the leases (KEYS) this node still holds; never takes one back. One 1 or 0 per key.
const RENEW: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) out[i] = 1 else out[i] = 0 end
end
return out";

/// Leases renewed per script call (one call per room cost as much Redis CPU again as the
/// renewal itself: 10,000 idle rooms took ~9 % of a Redis core).
const RENEW_BATCH: usize = 256;

/// Gives a lease up if it is this node's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0";

/// KEYS: owner, epoch. ARGV: token, epoch.
const OPEN: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1";

/// KEYS: owner, log, rev, feed channel. ARGV: token, first rev, frames... Returns {0, last}
/// when appended (each frame then published on the feed, for the followers), {1, 0} when the
/// lease is not this node's, {2, stored rev} when the first record does not follow what is
/// stored.
const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {1, 0} end
local stored = tonumber(redis.call('GET', KEYS[3]) or '0')
local first = tonumber(ARGV[2])
if stored ~= first - 1 then return {2, stored} end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[2], string.format('%.0f-0', first + i - 3), 'r', ARGV[i])
end
for i = 3, #ARGV do redis.call('PUBLISH', KEYS[4], ARGV[i]) end
local last = first + #ARGV - 3
redis.call('SET', KEYS[3], string.format('%.0f', last))
return {0, last}";

/// KEYS: owner, snap, log. ARGV: token, snapshot bytes, lowest revision to keep in the log.
const SNAPSHOT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
if tonumber(ARGV[3]) > 1 then redis.call('XTRIM', KEYS[3], 'MINID', ARGV[3] .. '-0') end
return 1";

/// KEYS: each room's lease and stored revision, in pairs. Per room: {holder or '', PTTL of the
/// lease, stored revision}.
const OWNERS: &str = r"
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = {redis.call('GET', KEYS[i]) or '', redis.call('PTTL', KEYS[i]), tonumber(redis.call('GET', KEYS[i + 1]) or '0')}
end
return out";

/// Cuts the log from a damaged entry on. KEYS: owner, log, rev. ARGV: token, first bad rev.
const CUT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local bad = tonumber(ARGV[2])
local ids = redis.call('XRANGE', KEYS[2], string.format('%.0f-0', bad), '+')
for _, e in ipairs(ids) do redis.call('XDEL', KEYS[2], e[1]) end
redis.call('SET', KEYS[3], string.format('%.0f', bad - 1))
if bad > 1 then redis.call('XSETID', KEYS[2], string.format('%.0f-0', bad - 1)) end
return 1";

fn key(room: &RoomId, what: &str) -> String {
    format!("ringsync:{{{room}}}:{what}")
}

/// Node `node`'s mailbox: a Stream of what other nodes send it (see [`RedisStore::send`]).
fn mailbox(node: u64) -> String {
    format!("ringsync:node:{node}")
}

/// The node number a lease token starts with.
fn node_of(token: &str) -> Option<u64> {
    token.split('-').next()?.parse().ok()
}

fn entry_id(rev: u64) -> String {
    format!("{rev}-0")
}

fn redis_error(what: &str, e: &redis::RedisError) -> StoreError {
    StoreError(format!("redis: {what}: {e}"))
}

/// Counters for `/metrics` (see [`RedisStore::stats`]).
#[derive(Default)]
struct Stats {
    appends: AtomicU64,
    append_failures: AtomicU64,
    rounds: AtomicU64,
    renewals: AtomicU64,
    leases_lost: AtomicU64,
    /// Records followers read from the streams to fill gaps in their feeds.
    gap_records: AtomicU64,
}

/// The Redis store's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSnapshot {
    pub rooms_owned: u64,
    pub rooms_followed: u64,
    pub appends: u64,
    pub append_failures: u64,
    pub rounds: u64,
    pub renewals: u64,
    pub leases_lost: u64,
    pub gap_records: u64,
}

/// What the store knows of a room it holds the lease of.
#[derive(Default)]
struct Owned {
    /// The room was opened: it is in memory and appends (each append carries its journal).
    opened: bool,
    /// The lease was found lost (or the stored log moved on without this node).
    lost: bool,
    /// When a load took the lease. A lease taken for a look-up that opened nothing (a read of
    /// a room that does not exist) is given up once it is a lease period old.
    loaded_at: Option<Instant>,
    /// The load found nothing stored. While the lease is held nobody else can store anything,
    /// so the next load (the room being created right after the look-up) answers without Redis.
    empty: bool,
}

/// What the store knows of a room it follows (another node owns it: see
/// [`crate::room::follow`]).
struct FollowedRoom {
    /// The owner's lease token when the room was loaded; another value (or none) means the
    /// room moved.
    owner: String,
    /// The next revision to read from the room's stream.
    next: u64,
    /// The owner changed, or the copy could not follow: [`Store::take_moved`] hands it over.
    moved: bool,
    /// When to check the lease next: just after it would lapse unless renewed.
    check_at: Instant,
}

/// What to do when a mail may not have been sent (see [`RedisStore::send`]).
pub type Lost = Box<dyn FnOnce() + Send>;

/// What one node sends another through its mailbox (JSON in the entry's field `m`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Mail {
    /// A client's change, forwarded by a node that follows the room to the node that owns it
    /// (`req`: [`crate::room::ChangeRequest::to_wire`]).
    Change { room: String, req: serde_json::Value },
    /// The owner refused a forwarded change: sent back to the node its author is on.
    Reject {
        room: String,
        author: u64,
        id: u64,
        code: String,
        message: String,
        rev: u64,
        conflicts: Vec<u64>,
    },
}

/// What became of a record handed to a [`Follower`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Taken, or held already.
    Yes,
    /// Not taken: the copy lacks records before it (they are read from the stream).
    Behind,
    /// The room can no longer be followed here (not in memory any more, or its copy could not
    /// take the record): it is handed over by [`Store::take_moved`].
    Gone,
}

/// What a follower copy's node does with what it reads (implemented by the shell).
pub trait Follower: Send + Sync {
    /// A record of a followed room (from its feed or its stream; possibly twice, possibly
    /// after a gap). See [`Taken`].
    fn record(&self, room: &RoomId, record: &Record) -> Taken;
    /// A message another node sent this one ([`RedisStore::send`]).
    fn mail(&self, mail: Mail);
    /// This node took over the lease of a room it followed, and every record the old owner
    /// (node `was`) stored has been handed over: the copy becomes the owner (it opens its log).
    /// `false` when there is no copy to promote (the lease is then given up).
    fn promote(&self, room: &RoomId, was: Option<u64>) -> bool;
    /// Another node took over a followed room from node `was`, and every record `was` stored
    /// has been handed over: what was forwarded to `was` and not answered never will be.
    fn owner_changed(&self, room: &RoomId, was: Option<u64>);
    /// A message on the room's lane ([`RedisStore::publish`]), from any node (this one too).
    fn lane(&self, room: &RoomId, body: &[u8]);
    /// This node now hears the room's lane (what was published before, it missed).
    fn listening(&self, room: &RoomId);
}

/// The pub/sub channel of a room's ephemeral lanes (presence and broadcasts).
fn lane(room: &RoomId) -> String {
    format!("ringsync:lane:{{{room}}}")
}

/// The pub/sub channel on which the append script publishes each stored record (framed as in
/// the stream) for the followers: their fast path; the stream fills any gap.
fn feed(room: &RoomId) -> String {
    format!("ringsync:feed:{{{room}}}")
}

enum Op {
    Publish {
        room: RoomId,
        body: String,
    },
    Mail {
        to: u64,
        body: String,
        /// Called when the round carrying it failed (the mail may not have reached Redis).
        lost: Option<Lost>,
    },
    Open {
        room: RoomId,
        epoch: String,
    },
    Append {
        room: RoomId,
        generation: u64,
        rev: u64,
        frame: Result<Vec<u8>, StoreError>,
        /// Where the outcome goes (carried, so a room that left the store's map still hears it).
        journal: Weak<dyn Journal>,
    },
    Snapshot {
        room: RoomId,
        rev: u64,
        bytes: Vec<u8>,
    },
    Barrier(mpsc::SyncSender<()>),
}

impl Op {
    fn room(&self) -> Option<&RoomId> {
        match self {
            Op::Open { room, .. } | Op::Append { room, .. } | Op::Snapshot { room, .. } => Some(room),
            Op::Barrier(_) | Op::Mail { .. } | Op::Publish { .. } => None,
        }
    }
}

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// This process's lease token: its node number, process id and a random part.
    token: String,
    /// This node's number (unique per start, from [`NODES_KEY`]).
    node: u64,
    owned: Mutex<HashMap<RoomId, Owned>>,
    followed: Mutex<HashMap<RoomId, FollowedRoom>>,
    opts: RedisOptions,
    stats: Stats,
}

impl Shared {
    /// Marks a followed room moved (its owner changed, or its copy cannot follow);
    /// [`Store::take_moved`] hands it over.
    fn mark_moved(&self, room: &RoomId) {
        if let Some(f) = self.followed.lock().get_mut(room) {
            f.moved = true;
        }
    }

    /// Marks the room lost (counted once); [`Store::take_moved`] hands it over.
    fn lose(&self, room: &RoomId) {
        let newly = self.owned.lock().get_mut(room).is_some_and(|o| !std::mem::replace(&mut o.lost, true));
        if newly {
            self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Rooms in Redis; see the module doc.
pub struct RedisStore {
    shared: Arc<Shared>,
    client: redis::Client,
    /// Idle connections for loads, reads and deletes (taken out for each call, so no lock is
    /// held over a round trip and loads of different rooms run side by side).
    readers: Mutex<Vec<redis::Connection>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn connect(client: &redis::Client) -> Result<redis::Connection, StoreError> {
    let con =
        client.get_connection_with_timeout(IO_TIMEOUT).map_err(|e| redis_error("cannot connect", &e))?;
    con.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| redis_error("cannot set a timeout", &e))?;
    con.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| redis_error("cannot set a timeout", &e))?;
    Ok(con)
}

impl RedisStore {
    /// Connects (once, to check that Redis answers) and starts the store's thread.
    ///
    /// # Errors
    /// When the URL is invalid or Redis does not answer a `PING`.
    pub fn connect(opts: RedisOptions) -> Result<Arc<RedisStore>, StoreError> {
        let client = redis::Client::open(opts.url.as_str()).map_err(|e| redis_error("bad URL", &e))?;
        let mut con = connect(&client)?;
        redis::cmd("PING").query::<String>(&mut con).map_err(|e| redis_error("PING", &e))?;
        let node: u64 =
            redis::cmd("INCR").arg(NODES_KEY).query(&mut con).map_err(|e| redis_error("INCR", &e))?;
        let token = format!("{node}-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            token,
            node,
            owned: Mutex::new(HashMap::new()),
            followed: Mutex::new(HashMap::new()),
            opts,
            stats: Stats::default(),
        });
        let mut writer =
            Writer { shared: shared.clone(), client: client.clone(), con: None, failed: HashMap::new() };
        let thread = std::thread::Builder::new()
            .name("ringsync-redis".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::io("cannot start the store's thread", &e))?;
        Ok(Arc::new(RedisStore {
            shared,
            client,
            readers: Mutex::new(vec![con]),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// This node's number: unique among the nodes sharing this Redis since it was created.
    pub fn node(&self) -> u64 {
        self.shared.node
    }

    /// The number of the node that owns `room`, when this node follows it.
    pub fn owner_node(&self, room: &RoomId) -> Option<u64> {
        self.shared.followed.lock().get(room).and_then(|f| node_of(&f.owner))
    }

    /// Rooms this node follows (another node owns them).
    pub fn followed(&self) -> usize {
        self.shared.followed.lock().len()
    }

    /// Queues `body` for node `to`'s mailbox. Sent by the store's thread in the same pipeline
    /// as the appends, in order: an answer queued after a commit reaches Redis after its record.
    /// `lost` is called if the round carrying it fails (Redis unreachable): the mail may not
    /// have arrived, and nobody would answer it.
    pub fn send(&self, to: u64, mail: &Mail, lost: Option<Lost>) {
        let body = serde_json::to_string(mail).expect("mail serialises");
        self.push(Op::Mail { to, body, lost });
    }

    /// Publishes `body` on the room's lane (Redis pub/sub; sent by the store's thread), for every
    /// node that has the room in memory.
    pub fn publish(&self, room: &RoomId, body: String) {
        self.push(Op::Publish { room: room.clone(), body });
    }

    /// Starts following: the thread `ringsync-follow` reads this node's mailbox and the streams
    /// of the rooms it follows, and hands what it reads to `sink`; the thread `ringsync-lanes`
    /// subscribes to the lanes of every room this node owns or follows. Once per store.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn follow(&self, sink: Arc<dyn Follower>) -> Result<(), StoreError> {
        let mut lanes =
            Lanes { shared: self.shared.clone(), client: self.client.clone(), sink: sink.clone() };
        let mut reader = Reader {
            shared: self.shared.clone(),
            client: self.client.clone(),
            con: None,
            sink,
            mail_last: "0-0".into(),
        };
        std::thread::Builder::new()
            .name("ringsync-follow".into())
            .spawn(move || reader.run())
            .map_err(|e| StoreError::io("cannot start the follower's thread", &e))?;
        std::thread::Builder::new()
            .name("ringsync-lanes".into())
            .spawn(move || lanes.run())
            .map(drop)
            .map_err(|e| StoreError::io("cannot start the lanes' thread", &e))
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        StatsSnapshot {
            rooms_owned: self.shared.owned.lock().values().filter(|o| !o.lost).count() as u64,
            rooms_followed: self.shared.followed.lock().len() as u64,
            appends: s.appends.load(Ordering::Relaxed),
            append_failures: s.append_failures.load(Ordering::Relaxed),
            rounds: s.rounds.load(Ordering::Relaxed),
            renewals: s.renewals.load(Ordering::Relaxed),
            leases_lost: s.leases_lost.load(Ordering::Relaxed),
            gap_records: s.gap_records.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on an idle reading connection, or a new one.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> Result<T, redis::RedisError>,
        what: &str,
    ) -> Result<T, StoreError> {
        let idle = self.readers.lock().pop();
        let mut con = match idle {
            Some(con) => con,
            None => connect(&self.client)?,
        };
        match f(&mut con) {
            Ok(value) => {
                let mut idle = self.readers.lock();
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(con);
                }
                Ok(value)
            }
            // The connection is dropped: the next call makes a new one.
            Err(e) => Err(redis_error(what, &e)),
        }
    }

    fn push(&self, op: Op) {
        self.shared.queue.lock().ops.push(op);
        self.shared.wake.notify_one();
    }

    fn barrier(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(Op::Barrier(tx));
        let _ = rx.recv();
    }

    /// Gives up every lease this store holds, in one pipelined round trip.
    fn release_all(&self) {
        let rooms: Vec<RoomId> = self.shared.owned.lock().drain().map(|(room, _)| room).collect();
        if rooms.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for room in &rooms {
            pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key(room, "owner")).arg(&self.shared.token).ignore();
        }
        if let Err(e) = self.read(|c| pipe.query::<()>(c), "release the leases") {
            tracing::warn!(error = %e, rooms = rooms.len(), "cannot give the leases up; they lapse by themselves");
        }
    }

    fn release(&self, room: &RoomId) {
        self.shared.owned.lock().remove(room);
        let token = self.shared.token.clone();
        let _ = self.read(
            |c| redis::cmd("EVAL").arg(RELEASE).arg(1).arg(key(room, "owner")).arg(token).query::<i64>(c),
            "release",
        );
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.shared.queue.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
        self.release_all();
    }
}

/// A room's log as handed to the room.
struct Log {
    store: Arc<RedisStore>,
    room: RoomId,
    journal: Weak<dyn Journal>,
}

impl RoomLog for Log {
    fn append(&self, generation: u64, record: Record) {
        let mut frame = Vec::new();
        let frame = codec::encode_record(&record, &mut frame).map(|()| frame);
        let journal = self.journal.clone();
        self.store.push(Op::Append { room: self.room.clone(), generation, rev: record.rev, frame, journal });
    }

    fn snapshot(&self, data: SnapshotData) {
        let mut bytes = Vec::new();
        match codec::encode_snapshot(self.room.as_str(), &data, &mut bytes) {
            Ok(()) => self.store.push(Op::Snapshot { room: self.room.clone(), rev: data.rev, bytes }),
            Err(e) => tracing::error!(room = %self.room, error = %e, "cannot encode a snapshot; skipped"),
        }
    }
}

/// One decoded log entry: its revision and its record (or why it is not one).
fn decode_entry(entry: &Value) -> Result<Record, String> {
    let (id, fields) = entry_parts(entry).ok_or("not a stream entry")?;
    let rev: u64 = id.split('-').next().and_then(|r| r.parse().ok()).ok_or(format!("entry id {id}"))?;
    let frame = field(fields, b"r").ok_or(format!("entry {id} has no record"))?;
    match codec::decode_frame::<Record>(frame, 0) {
        Ok(Some((record, end))) if end == frame.len() && record.rev == rev => Ok(record),
        Ok(Some((record, _))) if record.rev != rev => Err(format!("entry {id} holds record {}", record.rev)),
        Ok(_) => Err(format!("entry {id}: trailing bytes or empty")),
        Err(e) => Err(format!("entry {id}: {e}")),
    }
}

fn entries(reply: Value) -> Vec<Value> {
    match reply {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// What [`RedisStore::read_room`] read besides the records it streamed.
struct Read {
    epoch: String,
    snapshot: Option<SnapshotData>,
    damage: Vec<String>,
    /// The revision after the last one read.
    next: u64,
}

impl RedisStore {
    /// Takes `room`'s lease, or names the node that holds it: `Ok(None)` when this node holds
    /// it now, `Ok(Some(holder))` when another does.
    fn acquire(&self, room: &RoomId) -> Result<Option<String>, StoreError> {
        let token = self.shared.token.clone();
        let lease = self.shared.opts.lease.as_millis() as u64;
        let owner = key(room, "owner");
        // The lease may lapse between the two calls: a few tries.
        for _ in 0..3 {
            let got = self.read(
                |c| redis::cmd("EVAL").arg(ACQUIRE).arg(1).arg(&owner).arg(&token).arg(lease).query::<i64>(c),
                "acquire a lease",
            )?;
            if got == 1 {
                return Ok(None);
            }
            let holder: Option<String> = self.read(|c| redis::cmd("GET").arg(&owner).query(c), "GET")?;
            if let Some(holder) = holder {
                return Ok(Some(holder));
            }
        }
        Err(StoreError(format!("room {room}: its lease is changing hands; try again")))
    }

    /// Streams the room's snapshot and log to `sink` (`cut`: this node owns the room and cuts
    /// a damaged log; a follower refuses one instead). `None` when nothing is stored.
    fn read_room(
        &self,
        room: &RoomId,
        keep: usize,
        sink: &mut dyn LoadSink,
        cut: bool,
    ) -> Result<Option<Read>, StoreError> {
        let epoch: Option<String> =
            self.read(|c| redis::cmd("GET").arg(key(room, "epoch")).query(c), "GET epoch")?;
        let Some(epoch) = epoch else { return Ok(None) };
        let mut damage = Vec::new();
        let snap: Option<Vec<u8>> =
            self.read(|c| redis::cmd("GET").arg(key(room, "snap")).query(c), "GET")?;
        let snapshot = snap.and_then(|bytes| match codec::decode_snapshot(&bytes) {
            Ok((_, data)) => Some(data),
            Err(e) => {
                damage.push(format!("{}: {e}", key(room, "snap")));
                None
            }
        });
        sink.snapshot(snapshot.as_ref());
        let after_snapshot = snapshot.as_ref().map_or(1, |s| s.rev + 1);
        let mut next = snapshot.as_ref().map_or(1, |s| s.rev.saturating_sub(keep as u64) + 1);
        'pages: loop {
            let page = self.read(
                |c| {
                    redis::cmd("XRANGE")
                        .arg(key(room, "log"))
                        .arg(entry_id(next))
                        .arg("+")
                        .arg("COUNT")
                        .arg(PAGE)
                        .query::<Value>(c)
                },
                "XRANGE",
            )?;
            let page = entries(page);
            let n = page.len();
            for entry in &page {
                match decode_entry(entry) {
                    // Without a snapshot the log must start at the beginning: a trimmed log under
                    // a damaged snapshot would rebuild a room that lacks its first changes.
                    Ok(record) if snapshot.is_none() && next == 1 && record.rev != 1 => {
                        return Err(StoreError(format!(
                            "room {room}: no readable snapshot, and the log starts at revision {}",
                            record.rev
                        )));
                    }
                    Ok(record) => {
                        next = record.rev + 1;
                        sink.record(record);
                    }
                    Err(e) if !cut => {
                        return Err(StoreError(format!(
                            "room {room}: {} at revision {next} or later: {e} (its owner cuts it when it loads it)",
                            key(room, "log")
                        )));
                    }
                    Err(e) => {
                        damage.push(format!("{} at revision {next} or later: {e}", key(room, "log")));
                        let token = &self.shared.token;
                        let cut = self.read(
                            |c| {
                                redis::cmd("EVAL")
                                    .arg(CUT)
                                    .arg(3)
                                    .arg(key(room, "owner"))
                                    .arg(key(room, "log"))
                                    .arg(key(room, "rev"))
                                    .arg(token)
                                    .arg(next)
                                    .query::<i64>(c)
                            },
                            "cut a damaged log",
                        );
                        if let Err(e) = cut {
                            damage.push(format!("cannot cut it: {e}"));
                        }
                        break 'pages;
                    }
                }
            }
            if n < PAGE {
                break;
            }
        }
        Ok(Some(Read { epoch, snapshot, damage, next: next.max(after_snapshot) }))
    }

    /// Wakes the follower's thread (a room was added to what it reads).
    fn wake_follower(&self) {
        let node = self.shared.node;
        let _ = self.read(
            |c| {
                redis::cmd("XADD")
                    .arg(mailbox(node))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(MAILBOX_LEN)
                    .arg("*")
                    .arg("w")
                    .arg(1)
                    .query::<Value>(c)
            },
            "XADD",
        );
    }
}

impl Store for Arc<RedisStore> {
    /// Takes the room's lease first. A room another node owns is read without it, as a
    /// follower copy ([`Loaded::owner`]), and its stream is followed from then on.
    fn load_with(
        &self,
        room: &RoomId,
        keep: usize,
        sink: &mut dyn LoadSink,
    ) -> Result<Option<Loaded>, StoreError> {
        let known_empty = self.shared.owned.lock().get(room).is_some_and(|o| o.empty && !o.lost && !o.opened);
        if known_empty {
            return Ok(None);
        }
        if let Some(holder) = self.acquire(room)? {
            let Some(Read { epoch, snapshot, damage, next }) = self.read_room(room, keep, sink, false)?
            else {
                return Err(StoreError(format!("room {room} is being created by another node; try again")));
            };
            let mut followed = self.shared.followed.lock();
            let f = followed.entry(room.clone()).or_insert(FollowedRoom {
                owner: holder.clone(),
                next,
                moved: false,
                check_at: Instant::now(),
            });
            f.next = f.next.min(next);
            drop(followed);
            self.wake_follower();
            return Ok(Some(Loaded { epoch, snapshot, records: Vec::new(), damage, owner: Some(holder) }));
        }
        // A racing loader of the same room may have opened it already: keep its journal.
        self.shared.owned.lock().entry(room.clone()).or_default().loaded_at = Some(Instant::now());
        let Some(Read { epoch, snapshot, damage, .. }) = self.read_room(room, keep, sink, true)? else {
            if let Some(o) = self.shared.owned.lock().get_mut(room) {
                o.empty = true;
            }
            return Ok(None);
        };
        Ok(Some(Loaded { epoch, snapshot, records: Vec::new(), damage, owner: None }))
    }

    fn open(&self, room: &RoomId, epoch: &str, journal: Weak<dyn Journal>) -> Arc<dyn RoomLog> {
        self.shared.owned.lock().entry(room.clone()).or_default().opened = true;
        self.push(Op::Open { room: room.clone(), epoch: epoch.to_string() });
        Arc::new(Log { store: self.clone(), room: room.clone(), journal })
    }

    fn changes(&self, room: &RoomId, after: u64, limit: usize) -> Result<Vec<Record>, StoreError> {
        let page = self.read(
            |c| {
                redis::cmd("XRANGE")
                    .arg(key(room, "log"))
                    .arg(entry_id(after + 1))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit.max(1))
                    .query::<Value>(c)
            },
            "XRANGE",
        )?;
        entries(page).iter().take(limit).map(|e| decode_entry(e).map_err(StoreError)).collect()
    }

    fn oldest(&self, room: &RoomId) -> Option<u64> {
        let page = self
            .read(
                |c| redis::cmd("XRANGE").arg(key(room, "log")).arg("-").arg("+").arg("COUNT").arg(1).query(c),
                "XRANGE",
            )
            .ok()?;
        entries(page).first().and_then(|e| decode_entry(e).ok()).map(|r| r.rev)
    }

    fn rooms_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<RoomId>, StoreError> {
        let from = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let names: Vec<String> = self.read(
            |c| {
                redis::cmd("ZRANGEBYLEX")
                    .arg(ROOMS_KEY)
                    .arg(&from)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query(c)
            },
            "ZRANGEBYLEX",
        )?;
        Ok(names.iter().filter_map(|n| RoomId::parse(n).ok()).collect())
    }

    /// Drops what is queued for the room, then its keys (whoever owns it).
    fn delete(&self, room: &RoomId) -> Result<(), StoreError> {
        self.shared.queue.lock().ops.retain(|op| op.room() != Some(room));
        self.barrier();
        self.shared.owned.lock().remove(room);
        self.shared.followed.lock().remove(room);
        let keys: Vec<String> =
            ["log", "rev", "snap", "epoch", "owner"].iter().map(|w| key(room, w)).collect();
        self.read(
            |c| {
                redis::pipe()
                    .cmd("DEL")
                    .arg(&keys)
                    .ignore()
                    .cmd("ZREM")
                    .arg(ROOMS_KEY)
                    .arg(room.as_str())
                    .ignore()
                    .query::<()>(c)
            },
            "delete",
        )
    }

    /// Writes what is queued, then gives the room's lease up (an evicted room may be taken by
    /// any node).
    fn close(&self, room: &RoomId) {
        self.shared.followed.lock().remove(room);
        self.barrier();
        self.release(room);
    }

    fn flush(&self) {
        self.barrier();
    }

    /// Rooms whose lease this node lost, and rooms it followed whose owner changed (or whose
    /// copy could not follow).
    fn take_moved(&self) -> Vec<RoomId> {
        let mut owned = self.shared.owned.lock();
        let mut moved: Vec<RoomId> = owned.iter().filter(|(_, o)| o.lost).map(|(r, _)| r.clone()).collect();
        for room in &moved {
            owned.remove(room);
        }
        drop(owned);
        let mut followed = self.shared.followed.lock();
        let before = moved.len();
        moved.extend(followed.iter().filter(|(_, f)| f.moved).map(|(r, _)| r.clone()));
        for room in &moved[before..] {
            followed.remove(room);
        }
        moved
    }

    /// Flushes, then gives up every lease.
    fn shutdown(&self) {
        self.barrier();
        self.release_all();
    }
}

/// The store's thread: sends each round's ops in one pipeline and renews the leases.
struct Writer {
    shared: Arc<Shared>,
    client: redis::Client,
    con: Option<redis::Connection>,
    /// Per room, the generation whose appends failed: its later records are dropped (until the
    /// room is opened again).
    failed: HashMap<RoomId, u64>,
}

/// A record that could not be encoded: room, generation, revision, why, and its journal.
type Doomed = (RoomId, u64, u64, StoreError, Weak<dyn Journal>);

/// Consecutive records of one room and generation, sent as one script call.
struct Run {
    room: RoomId,
    generation: u64,
    first: u64,
    frames: Vec<Vec<u8>>,
    journal: Weak<dyn Journal>,
}

/// One script call of appended records in a round (every other command's reply is ignored).
struct Sent {
    room: RoomId,
    generation: u64,
    first: u64,
    count: u64,
    journal: Weak<dyn Journal>,
}

impl Writer {
    fn run(&mut self) {
        let renew_every = (self.shared.opts.lease / 3).max(Duration::from_millis(10));
        let mut next_renewal = Instant::now() + renew_every;
        loop {
            let (ops, stop) = {
                let mut queue = self.shared.queue.lock();
                if queue.ops.is_empty() && !queue.stop {
                    self.shared.wake.wait_until(&mut queue, next_renewal);
                }
                (std::mem::take(&mut queue.ops), queue.stop)
            };
            if !ops.is_empty() {
                self.round(ops);
            }
            if Instant::now() >= next_renewal {
                self.renew();
                next_renewal = Instant::now() + renew_every;
            }
            if stop && self.shared.queue.lock().ops.is_empty() {
                return;
            }
        }
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, StoreError> {
        if self.con.is_none() {
            match connect(&self.client) {
                Ok(con) => self.con = Some(con),
                Err(e) => {
                    std::thread::sleep(RETRY);
                    return Err(e);
                }
            }
        }
        Ok(self.con.as_mut().expect("connected above"))
    }

    /// Reports the failure of record `rev` of `generation` once (later records of that generation
    /// are dropped).
    fn fail(
        &mut self,
        room: &RoomId,
        journal: &Weak<dyn Journal>,
        generation: u64,
        rev: u64,
        error: &StoreError,
    ) {
        if self.failed.insert(room.clone(), generation) == Some(generation) {
            return;
        }
        tracing::warn!(room = %room, rev, error = %error, "redis store: append failed");
        if let Some(j) = journal.upgrade() {
            j.failed(generation, rev, error);
        }
    }

    fn round(&mut self, ops: Vec<Op>) {
        let token = self.shared.token.clone();
        let retain = self.shared.opts.retain;
        let mut pipe = redis::pipe();
        let mut sent = Vec::new();
        let mut barriers = Vec::new();
        let mut losts: Vec<Lost> = Vec::new();
        let mut doomed: Vec<Doomed> = Vec::new();
        // Consecutive records of one room and generation become one script call.
        let mut run: Option<Run> = None;
        let flush_run = |run: &mut Option<Run>, pipe: &mut redis::Pipeline, sent: &mut Vec<Sent>| {
            if let Some(Run { room, generation, first, frames, journal }) = run.take() {
                let cmd = pipe
                    .cmd("EVAL")
                    .arg(APPEND)
                    .arg(4)
                    .arg(key(&room, "owner"))
                    .arg(key(&room, "log"))
                    .arg(key(&room, "rev"))
                    .arg(feed(&room))
                    .arg(&token)
                    .arg(first);
                for f in &frames {
                    cmd.arg(f.as_slice());
                }
                let count = frames.len() as u64;
                sent.push(Sent { room, generation, first, count, journal });
            }
        };
        for op in ops {
            match op {
                Op::Append { room, generation, rev, frame, journal } => {
                    let dropped = self.failed.get(&room) == Some(&generation);
                    if dropped || doomed.iter().any(|(r, g, ..)| *r == room && *g == generation) {
                        continue;
                    }
                    let frame = match frame {
                        Ok(frame) => frame,
                        Err(e) => {
                            // Reported once what precedes it in this round is; the rest of its
                            // generation is dropped.
                            doomed.push((room, generation, rev, e, journal));
                            continue;
                        }
                    };
                    match &mut run {
                        Some(r)
                            if r.room == room
                                && r.generation == generation
                                && r.first + r.frames.len() as u64 == rev =>
                        {
                            r.frames.push(frame);
                        }
                        _ => {
                            flush_run(&mut run, &mut pipe, &mut sent);
                            run = Some(Run { room, generation, first: rev, frames: vec![frame], journal });
                        }
                    }
                }
                Op::Open { room, epoch } => {
                    // A room opened anew (reloaded) starts its generations afresh.
                    self.failed.remove(&room);
                    flush_run(&mut run, &mut pipe, &mut sent);
                    pipe.cmd("EVAL")
                        .arg(OPEN)
                        .arg(2)
                        .arg(key(&room, "owner"))
                        .arg(key(&room, "epoch"))
                        .arg(&token)
                        .arg(epoch)
                        .ignore();
                    pipe.cmd("ZADD").arg(ROOMS_KEY).arg(0).arg(room.as_str()).ignore();
                }
                Op::Snapshot { room, rev, bytes } => {
                    flush_run(&mut run, &mut pipe, &mut sent);
                    let keep_from = rev.saturating_sub(retain) + 1;
                    pipe.cmd("EVAL")
                        .arg(SNAPSHOT)
                        .arg(3)
                        .arg(key(&room, "owner"))
                        .arg(key(&room, "snap"))
                        .arg(key(&room, "log"))
                        .arg(&token)
                        .arg(bytes)
                        .arg(keep_from)
                        .ignore();
                }
                Op::Mail { to, body, lost } => {
                    losts.extend(lost);
                    pipe.cmd("XADD")
                        .arg(mailbox(to))
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(MAILBOX_LEN)
                        .arg("*")
                        .arg("m")
                        .arg(body)
                        .ignore();
                }
                Op::Publish { room, body } => {
                    pipe.cmd("PUBLISH").arg(lane(&room)).arg(body).ignore();
                }
                Op::Barrier(tx) => barriers.push(tx),
            }
        }
        flush_run(&mut run, &mut pipe, &mut sent);
        if !pipe.is_empty() && !self.send(&pipe, sent) {
            for lost in losts {
                lost();
            }
        }
        for (room, generation, rev, e, journal) in doomed {
            self.shared.stats.append_failures.fetch_add(1, Ordering::Relaxed);
            self.fail(&room, &journal, generation, rev, &e);
        }
        for tx in barriers {
            let _ = tx.send(());
        }
    }
}

impl Writer {
    /// Sends one round and reports each room's outcome to its journal; `false` when the round
    /// failed as a whole (Redis unreachable, or its answer lost).
    fn send(&mut self, pipe: &redis::Pipeline, sent: Vec<Sent>) -> bool {
        self.shared.stats.rounds.fetch_add(1, Ordering::Relaxed);
        let replies = match self.connection() {
            Ok(con) => pipe.query::<Vec<Value>>(con).map_err(|e| {
                self.con = None;
                redis_error("append", &e)
            }),
            Err(e) => Err(e),
        };
        let replies = match replies {
            Ok(replies) if replies.len() == sent.len() => replies,
            Ok(replies) => {
                let e = StoreError(format!("redis: {} replies for {} appends", replies.len(), sent.len()));
                self.con = None;
                self.fail_all(&sent, &e);
                return false;
            }
            Err(e) => {
                self.fail_all(&sent, &e);
                return false;
            }
        };
        for (reply, Sent { room, generation, first, count, journal }) in replies.into_iter().zip(sent) {
            let (outcome, moved) = match &reply {
                Value::Array(v) => match v.as_slice() {
                    [Value::Int(0), Value::Int(last)] => (Ok(*last as u64), false),
                    [Value::Int(1), _] => (
                        Err(StoreError(format!(
                            "room {room}: this node no longer holds its lease (another node may own it)"
                        ))),
                        true,
                    ),
                    [Value::Int(2), Value::Int(stored)] => (
                        Err(StoreError(format!(
                            "room {room}: stored revision is {stored}, this node's copy expected {}",
                            first - 1
                        ))),
                        true,
                    ),
                    _ => (Err(StoreError(format!("redis: unexpected reply {reply:?}"))), false),
                },
                _ => (Err(StoreError(format!("redis: unexpected reply {reply:?}"))), false),
            };
            match outcome {
                Ok(last) => {
                    self.shared.stats.appends.fetch_add(count, Ordering::Relaxed);
                    if let Some(j) = journal.upgrade() {
                        j.written(last);
                    }
                }
                Err(e) => {
                    self.shared.stats.append_failures.fetch_add(count, Ordering::Relaxed);
                    self.fail(&room, &journal, generation, first, &e);
                }
            }
            // Fenced: the room is another node's now (or its log moved on without this node).
            if moved {
                self.shared.lose(&room);
            }
        }
        true
    }

    /// The round did not reach Redis (or its answer was lost): every append in it fails.
    fn fail_all(&mut self, sent: &[Sent], error: &StoreError) {
        tracing::warn!(error = %error, "redis store: a round failed");
        for Sent { room, generation, first, count, journal } in sent {
            self.shared.stats.append_failures.fetch_add(*count, Ordering::Relaxed);
            self.fail(room, journal, *generation, *first, error);
        }
    }

    /// Extends every lease this node holds; a lease found lost is marked (its appends are
    /// refused by Redis from then on).
    ///
    /// Leases taken by loads that opened no room (a look-up of a room that does not exist) are
    /// given up here once they are a lease period old, so reads of random names leave nothing
    /// behind in Redis or in the renewals.
    fn renew(&mut self) {
        let period = self.shared.opts.lease;
        let (rooms, unused) = {
            let mut owned = self.shared.owned.lock();
            let unused: Vec<RoomId> = owned
                .iter()
                .filter(|(_, o)| !o.opened && o.loaded_at.is_some_and(|t| t.elapsed() > period))
                .map(|(r, _)| r.clone())
                .collect();
            for room in &unused {
                owned.remove(room);
            }
            let rooms: Vec<RoomId> = owned.iter().filter(|(_, o)| !o.lost).map(|(r, _)| r.clone()).collect();
            (rooms, unused)
        };
        if rooms.is_empty() && unused.is_empty() {
            return;
        }
        let lease = period.as_millis() as u64;
        let mut pipe = redis::pipe();
        for batch in rooms.chunks(RENEW_BATCH) {
            let cmd = pipe.cmd("EVAL").arg(RENEW).arg(batch.len());
            for room in batch {
                cmd.arg(key(room, "owner"));
            }
            cmd.arg(&self.shared.token).arg(lease);
        }
        for room in &unused {
            pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key(room, "owner")).arg(&self.shared.token).ignore();
        }
        let replies = match self.connection() {
            Ok(con) => pipe.query::<Vec<Vec<i64>>>(con).map(|r| r.concat()),
            Err(e) => {
                tracing::warn!(error = %e, "redis store: cannot renew leases");
                return;
            }
        };
        match replies {
            Ok(replies) => {
                for (room, got) in rooms.iter().zip(replies) {
                    if got == 1 {
                        self.shared.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tracing::warn!(room = %room, "redis store: lease lost; the room is unloaded");
                        self.shared.lose(room);
                    }
                }
            }
            Err(e) => {
                self.con = None;
                tracing::warn!(error = %e, "redis store: cannot renew leases");
            }
        }
    }
}

/// The follower's thread (`ringsync-follow`): reads this node's mailbox and the streams of the
/// rooms it follows in one blocking `XREAD`, hands what it reads to the [`Follower`], and checks
/// at a third of the lease that each followed room's owner is still the one it was loaded from.
struct Reader {
    shared: Arc<Shared>,
    client: redis::Client,
    con: Option<redis::Connection>,
    sink: Arc<dyn Follower>,
    /// The id of the newest mailbox entry read.
    mail_last: String,
}

impl Reader {
    fn run(&mut self) {
        let period = self.period();
        while !self.shared.queue.lock().stop {
            // Blocks until something arrives or the next lease check is due.
            let due = self.shared.followed.lock().values().filter(|f| !f.moved).map(|f| f.check_at).min();
            let block = due.map_or(period, |t| t.saturating_duration_since(Instant::now()).min(period));
            if let Err(e) = self.read_once(block.max(Duration::from_millis(1))) {
                tracing::warn!(error = %e, "redis follower: cannot read; retrying");
                self.con = None;
                std::thread::sleep(RETRY);
            }
            if let Err(e) = self.check_owners() {
                tracing::warn!(error = %e, "redis follower: cannot check owners");
                self.con = None;
            }
        }
    }

    /// The longest a followed room's lease goes unchecked (a third of the lease, at most 1 s).
    fn period(&self) -> Duration {
        (self.shared.opts.lease / 3).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    fn connection(&mut self, block: Duration) -> Result<&mut redis::Connection, StoreError> {
        if self.con.is_none() {
            let con = connect(&self.client)?;
            con.set_read_timeout(Some(IO_TIMEOUT + block))
                .map_err(|e| redis_error("cannot set a timeout", &e))?;
            self.con = Some(con);
        }
        Ok(self.con.as_mut().expect("connected above"))
    }

    /// One `XREAD` of this node's mailbox (blocking up to `block`), its mail handed over.
    /// (Followed rooms' records come on their feeds, to the lanes' thread.)
    fn read_once(&mut self, block: Duration) -> Result<(), StoreError> {
        let inbox = mailbox(self.shared.node);
        let reply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(FOLLOW_COUNT)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&inbox)
            .arg(&self.mail_last)
            .query::<Value>(self.connection(block)?)
            .map_err(|e| redis_error("XREAD", &e))?;
        for (name, items) in streams(reply) {
            if name != inbox {
                continue;
            }
            for item in &items {
                let Some((id, fields)) = entry_parts(item) else { continue };
                self.mail_last = id;
                match field(fields, b"m").map(serde_json::from_slice::<Mail>) {
                    Some(Ok(mail)) => self.sink.mail(mail),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "redis follower: mail that does not parse; dropped")
                    }
                    // A wake-up (`w`).
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// Checks the leases of the followed rooms whose check is due: one still held by the owner
    /// it was followed under is checked again just after it would lapse unless renewed (so a
    /// dead owner is noticed within a few milliseconds of its lease's end, and a live one costs
    /// a check per renewal); one that changed hands is handled by [`Reader::owner_changed`].
    fn check_owners(&mut self) -> Result<(), StoreError> {
        let now = Instant::now();
        let rooms: Vec<(RoomId, String)> = self
            .shared
            .followed
            .lock()
            .iter()
            .filter(|(_, f)| !f.moved && f.check_at <= now)
            .map(|(r, f)| (r.clone(), f.owner.clone()))
            .collect();
        let period = self.period();
        for batch in rooms.chunks(RENEW_BATCH) {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(OWNERS).arg(batch.len() * 2);
            for (room, _) in batch {
                cmd.arg(key(room, "owner")).arg(key(room, "rev"));
            }
            let leases: Vec<(String, i64, u64)> = cmd
                .query(self.connection(Duration::ZERO)?)
                .map_err(|e| redis_error("check the leases", &e))?;
            for ((room, was), (holder, left_ms, stored)) in batch.iter().zip(leases) {
                if holder != *was {
                    self.owner_changed(room, was, Some(holder).filter(|h| !h.is_empty()))?;
                    continue;
                }
                // A feed message lost (a reconnect) with nothing after it to reveal the gap.
                let behind = self.shared.followed.lock().get(room).is_some_and(|f| f.next <= stored);
                if behind {
                    self.catch_up(room)?;
                }
                // A lease without an expiry (set by hand) is checked every period.
                let left = u64::try_from(left_ms).map_or(period, |ms| Duration::from_millis(ms + 2));
                if let Some(f) = self.shared.followed.lock().get_mut(room) {
                    f.check_at = Instant::now() + left.min(period);
                }
            }
        }
        Ok(())
    }

    /// The lease of followed `room` is no longer `was`. A lapsed lease (its owner died or let
    /// it go) is taken by this node if it can: the copy, caught up with everything the old owner
    /// stored (nothing more can be: its appends are fenced by the new lease), becomes the owner
    /// in place. A lease another node holds is followed on: caught up likewise, then the copy
    /// forwards to the new owner. Either way, what was forwarded to the old owner and not
    /// stored is then answered (see [`Follower::owner_changed`]).
    fn owner_changed(&mut self, room: &RoomId, was: &str, now: Option<String>) -> Result<(), StoreError> {
        let token = self.shared.token.clone();
        let old = node_of(was);
        let now = match now {
            Some(now) => now,
            None => {
                let lease = self.shared.opts.lease.as_millis() as u64;
                let got: i64 = redis::cmd("EVAL")
                    .arg(ACQUIRE)
                    .arg(1)
                    .arg(key(room, "owner"))
                    .arg(&token)
                    .arg(lease)
                    .query(self.connection(Duration::ZERO)?)
                    .map_err(|e| redis_error("acquire a lease", &e))?;
                if got == 1 {
                    return self.take_over(room, old);
                }
                let holder: Option<String> = redis::cmd("GET")
                    .arg(key(room, "owner"))
                    .query(self.connection(Duration::ZERO)?)
                    .map_err(|e| redis_error("GET", &e))?;
                // Lapsed again already: the next check tries again.
                let Some(holder) = holder else { return Ok(()) };
                holder
            }
        };
        if now == token {
            // Taken by a load on this node meanwhile: that copy is the owner; this one goes.
            self.shared.mark_moved(room);
            return Ok(());
        }
        if !self.catch_up(room)? {
            return Ok(());
        }
        tracing::info!(room = %room, owner = %now, "redis follower: the room has a new owner; following it");
        if let Some(f) = self.shared.followed.lock().get_mut(room) {
            f.owner = now;
        }
        self.sink.owner_changed(room, old);
        Ok(())
    }

    /// This node holds the lease of followed `room` now: catches the copy up and promotes it.
    fn take_over(&mut self, room: &RoomId, old: Option<u64>) -> Result<(), StoreError> {
        let caught_up = self.catch_up(room);
        let promoted = matches!(caught_up, Ok(true)) && {
            self.shared.followed.lock().remove(room);
            self.shared
                .owned
                .lock()
                .insert(room.clone(), Owned { loaded_at: Some(Instant::now()), ..Owned::default() });
            self.sink.promote(room, old)
        };
        if promoted {
            tracing::info!(room = %room, "redis follower: the owner is gone; this node took the room over");
            return caught_up.map(drop);
        }
        self.shared.owned.lock().remove(room);
        self.shared.mark_moved(room);
        let _ = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(key(room, "owner"))
            .arg(&self.shared.token)
            .query::<i64>(self.connection(Duration::ZERO)?);
        caught_up.map(drop)
    }

    /// Hands the copy every record stored after the ones it took. `false` when the copy could
    /// not take one (it is then marked moved).
    fn catch_up(&mut self, room: &RoomId) -> Result<bool, StoreError> {
        let (shared, sink) = (self.shared.clone(), self.sink.clone());
        catch_up(&shared, &*sink, self.connection(Duration::ZERO)?, room)
    }
}

/// Hands `record` of followed `room` to the follower, noting how far the copy got (or that it
/// is gone: the room is then marked moved). A record it cannot take yet (a gap) is left for
/// [`catch_up`].
fn take_record(shared: &Shared, sink: &dyn Follower, room: &RoomId, record: &Record) -> Taken {
    let taken = sink.record(room, record);
    let mut followed = shared.followed.lock();
    if let Some(f) = followed.get_mut(room) {
        match taken {
            Taken::Yes => f.next = f.next.max(record.rev + 1),
            Taken::Behind => {}
            Taken::Gone => f.moved = true,
        }
    }
    taken
}

/// Hands the copy of `room` every record stored after the ones it took, from the stream (`con`
/// a plain connection). `false` when the copy could not take one (it is then marked moved).
fn catch_up(
    shared: &Shared,
    sink: &dyn Follower,
    con: &mut redis::Connection,
    room: &RoomId,
) -> Result<bool, StoreError> {
    let dropped = |why: &str| {
        tracing::warn!(room = %room, why, "redis follower: the copy cannot follow; dropped");
        shared.mark_moved(room);
        Ok(false)
    };
    loop {
        let Some(next) = shared.followed.lock().get(room).map(|f| f.next) else { return Ok(false) };
        let page: Value = redis::cmd("XRANGE")
            .arg(key(room, "log"))
            .arg(entry_id(next))
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query(con)
            .map_err(|e| redis_error("XRANGE", &e))?;
        let page = entries(page);
        for item in &page {
            let record = match decode_entry(item) {
                Ok(record) => record,
                Err(e) => return dropped(&format!("unreadable entry: {e}")),
            };
            shared.stats.gap_records.fetch_add(1, Ordering::Relaxed);
            match take_record(shared, sink, room, &record) {
                Taken::Yes => {}
                Taken::Behind => return dropped("the stream no longer holds what the copy lacks"),
                Taken::Gone => return Ok(false),
            }
        }
        if page.len() < PAGE {
            return Ok(true);
        }
    }
}

/// The lanes' thread (`ringsync-lanes`): one pub/sub connection subscribed to the lane of every
/// room this node owns (opened) or follows, and to the feed of every room it follows, kept in
/// step with them. Lane messages go to the [`Follower`]; feed records are taken into the copies
/// here, a gap filled from the stream over a second, plain connection.
struct Lanes {
    shared: Arc<Shared>,
    client: redis::Client,
    sink: Arc<dyn Follower>,
}

/// How long the lanes' thread waits for a message before it looks at the rooms again.
const LANES_POLL: Duration = Duration::from_millis(50);

impl Lanes {
    fn run(&mut self) {
        while !self.shared.queue.lock().stop {
            if let Err(e) = self.session() {
                tracing::warn!(error = %e, "redis lanes: connection lost; resubscribing");
                std::thread::sleep(RETRY);
            }
        }
    }

    /// The channels this node listens to: the lanes of the rooms it owns or follows, the feeds
    /// of the rooms it follows.
    fn wanted(&self) -> HashMap<String, Channel> {
        let mut out: HashMap<String, Channel> = HashMap::new();
        for (room, o) in self.shared.owned.lock().iter() {
            if o.opened && !o.lost {
                out.insert(lane(room), Channel::Lane(room.clone()));
            }
        }
        for (room, f) in self.shared.followed.lock().iter() {
            if !f.moved {
                out.insert(lane(room), Channel::Lane(room.clone()));
                out.insert(feed(room), Channel::Feed(room.clone()));
            }
        }
        out
    }

    /// One connection's life: subscribes as rooms come and go, hands messages over.
    fn session(&mut self) -> Result<(), StoreError> {
        let mut con = connect(&self.client)?;
        let mut plain = connect(&self.client)?;
        let mut pubsub = con.as_pubsub();
        pubsub.set_read_timeout(Some(LANES_POLL)).map_err(|e| redis_error("cannot set a timeout", &e))?;
        let mut subscribed: HashMap<String, Channel> = HashMap::new();
        let mut looked = None::<Instant>;
        while !self.shared.queue.lock().stop {
            if looked.is_none_or(|t| t.elapsed() >= LANES_POLL) {
                looked = Some(Instant::now());
                let wanted = self.wanted();
                let add: Vec<&String> = wanted.keys().filter(|c| !subscribed.contains_key(*c)).collect();
                let drop: Vec<String> =
                    subscribed.keys().filter(|c| !wanted.contains_key(*c)).cloned().collect();
                if !add.is_empty() {
                    pubsub.subscribe(&add).map_err(|e| redis_error("SUBSCRIBE", &e))?;
                    for channel in add {
                        match &wanted[channel] {
                            Channel::Lane(room) => self.sink.listening(room),
                            // What was stored between the load and now came on no feed.
                            Channel::Feed(room) => {
                                catch_up(&self.shared, &*self.sink, &mut plain, room)?;
                            }
                        }
                    }
                }
                if !drop.is_empty() {
                    pubsub.unsubscribe(&drop).map_err(|e| redis_error("UNSUBSCRIBE", &e))?;
                }
                subscribed = wanted;
            }
            let msg = match pubsub.get_message() {
                Ok(msg) => msg,
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(redis_error("pub/sub", &e)),
            };
            match subscribed.get(msg.get_channel_name()) {
                Some(Channel::Lane(room)) => self.sink.lane(room, msg.get_payload_bytes()),
                Some(Channel::Feed(room)) => {
                    let room = room.clone();
                    let record = match codec::decode_frame::<Record>(msg.get_payload_bytes(), 0) {
                        Ok(Some((record, _))) => record,
                        // Damaged on the way: the stream has it whole.
                        _ => {
                            catch_up(&self.shared, &*self.sink, &mut plain, &room)?;
                            continue;
                        }
                    };
                    if take_record(&self.shared, &*self.sink, &room, &record) == Taken::Behind {
                        catch_up(&self.shared, &*self.sink, &mut plain, &room)?;
                    }
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// What a subscribed channel carries.
enum Channel {
    Lane(RoomId),
    Feed(RoomId),
}

/// An `XREAD` reply as (stream name, entries) pairs (RESP2 arrays or RESP3 maps).
fn streams(reply: Value) -> Vec<(String, Vec<Value>)> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let v = kv.pop()?;
                    Some((kv.pop()?, v))
                }
                _ => None,
            })
            .collect(),
        Value::Map(kv) => kv,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| match k {
            Value::BulkString(name) => Some((String::from_utf8_lossy(&name).into_owned(), entries(v))),
            _ => None,
        })
        .collect()
}

/// A stream entry's id and field list.
fn entry_parts(entry: &Value) -> Option<(String, &[Value])> {
    let Value::Array(parts) = entry else { return None };
    match (parts.first(), parts.get(1)) {
        (Some(Value::BulkString(id)), Some(Value::Array(fields))) => {
            Some((String::from_utf8_lossy(id).into_owned(), fields.as_slice()))
        }
        _ => None,
    }
}

/// The value of field `name` in a stream entry's field list.
fn field<'a>(fields: &'a [Value], name: &[u8]) -> Option<&'a [u8]> {
    fields.chunks(2).find_map(|kv| match kv {
        [Value::BulkString(k), Value::BulkString(v)] if k == name => Some(v.as_slice()),
        _ => None,
    })
}
