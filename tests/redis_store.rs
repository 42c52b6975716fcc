//! Rooms on Redis (`--redis`, the first step of cluster mode), end to end against the real
//! binary and a `redis-server` each test starts itself, on a free port in a temporary directory,
//! and stops by its PID: a restart keeps state, revision and epoch, a client resumes by delta and
//! a resend is applied once; with two nodes a room has one owner, the other only follows it
//! (serving reads and clients, forwarding writes, never committing itself) until the owner is
//! killed, then takes the room over in place with the same epoch and every acknowledged change; a
//! node whose lease another node took has its appends fenced (rejected `unavailable`, nothing
//! written) and it lets the room go (4013); a node cut off from Redis stops committing and
//! another takes its rooms without a fork; Redis killed and restarted with AOF loses nothing
//! acknowledged; look-ups of missing rooms leave no lease behind; a node refuses to start
//! without Redis; at the seam, a damaged stream entry is cut and reported and a snapshot trims
//! the stream to what `--retain-history` keeps.

mod common;

use std::collections::BTreeSet;

use std::process::Stdio;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use common::redis::{Redis, StreamEntry, get, incr, metric_until, node, node_at, post};
use common::{Client, WAIT, crash, next_json, stop};
use ringsync::ids::RoomId;
use ringsync::store::redis::{RedisOptions, RedisStore};
use ringsync::store::{Journal, Store};
use serde_json::json;

/// A TCP proxy in front of Redis that the test can cut (every connection dropped, new ones
/// refused) and restore, on the same port.
struct Proxy {
    port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Proxy { port, target, task: None };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Owned here: aborting this task drops every connection.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut down, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        }));
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restore(&mut self) {
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) => assert!(Instant::now() < deadline, "rebinding the proxy's port: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[tokio::test]
async fn a_restart_on_redis_keeps_state_rev_and_epoch_resumes_by_delta_and_dedupes_a_resend() {
    let redis = Redis::start();
    let server = node(&redis, &[]);
    let mut a = Client::connect_at(server.addr, "game", "").await;
    for _ in 0..5 {
        a.change("overwrite", incr(1)).await;
    }
    a.sync_to(5).await;
    let (_, before) = get(server.addr, "/v1/rooms/game").await;
    assert_eq!((before["rev"].as_u64(), before["state"]["n"].as_u64()), (Some(5), Some(5)), "{before}");
    stop(server).await;
    assert_eq!(redis.log_revs("game"), [1, 2, 3, 4, 5], "one stream entry per change, ids from revisions");
    let owner: Option<String> =
        redis::cmd("GET").arg("ringsync:{game}:owner").query(&mut redis.con()).unwrap();
    assert_eq!(owner, None, "a clean shutdown gives its leases up");

    let server = node(&redis, &[]);
    let (_, after) = get(server.addr, "/v1/rooms/game").await;
    assert_eq!(after, before, "state, rev and epoch survive the restart");
    let (mut b, welcome) = common::resume_raw(server.addr, "game", &a, 3).await;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!((welcome["lastClientReqId"].as_u64(), welcome["rev"].as_u64()), (Some(5), Some(5)));
    let first = next_json(&mut b).await.unwrap();
    assert_eq!(
        (first["type"].as_str(), first["from"].as_u64(), first["to"].as_u64()),
        (Some("delta"), Some(3), Some(5)),
        "a delta, not a snapshot: {first}"
    );
    drop(b);
    // The client missed the ack of 5 (say) and resends it: applied once.
    let query = format!("session={}&epoch={}&since=5", a.session, a.epoch);
    let mut c = Client::connect_at(server.addr, "game", &query).await;
    assert_eq!(c.welcome["lastClientReqId"], 5);
    c.send(json!({"type": "change", "clientReqId": 5, "ops": incr(1)})).await;
    let m = c.recv().await;
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("duplicate")), "{m}");
    let id = c.change("overwrite", incr(1)).await;
    c.sync_to(6).await;
    assert_eq!(id, 6);
    let (_, room) = get(server.addr, "/v1/rooms/game").await;
    assert_eq!(room["state"]["n"], 6);
    stop(server).await;
}

#[tokio::test]
async fn one_owner_per_room_and_a_takeover_after_a_sigkill_keeps_every_acknowledged_change() {
    let redis = Redis::start();
    let a = node(&redis, &["--owner-lease", "500"]);
    let b = node(&redis, &["--owner-lease", "500"]);
    let (status, _) = post(a.addr, "r", json!([{"op": "add", "path": "/k0", "value": 0}])).await;
    assert_eq!(status, 200);

    // B follows the room A owns: it serves reads and WebSocket clients and forwards writes to
    // A, never commits itself; nothing is forked.
    let (status, body) = post(b.addr, "r", incr(1)).await;
    assert_eq!((status, body["rev"].as_u64()), (200, Some(2)), "forwarded to A: {body}");
    let (status, room) = get(b.addr, "/v1/rooms/r").await;
    assert_eq!(
        (status, room["rev"].as_u64(), room["state"]["n"].as_u64()),
        (200, Some(2), Some(1)),
        "{room}"
    );
    let mut on_b = Client::connect_at(b.addr, "r", "").await;
    assert_eq!(on_b.rev, 2);

    // A WebSocket client of A commits twice (its session's dedupe state is stored with them).
    let mut w = Client::connect_at(a.addr, "r", "").await;
    for _ in 0..2 {
        w.change("overwrite", incr(1)).await;
    }
    w.sync_to(4).await;

    // A writer keeps writing to A, one key per change, until A dies under it.
    let acked = Arc::new(parking_lot::Mutex::new(vec![0u64]));
    let writer = {
        let acked = acked.clone();
        let addr = a.addr;
        tokio::spawn(async move {
            for i in 1u64.. {
                let (status, _) =
                    post(addr, "r", json!([{"op": "add", "path": format!("/k{i}"), "value": i}])).await;
                if status != 200 {
                    return;
                }
                acked.lock().push(i);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, before) = get(a.addr, "/v1/rooms/r").await;
    crash(a);
    let killed = Instant::now();
    let _ = writer.await; // ends with A (a failed connection panics the task)
    let acked: BTreeSet<u64> = acked.lock().iter().copied().collect();
    assert!(acked.len() > 10, "the writer got going: {}", acked.len());

    // B takes the room over in place once A's lease lapses (its clients stay connected): same
    // epoch, every acknowledged change.
    metric_until(b.addr, "ringsync_cluster_takeovers_total", |v| v == 1.0).await;
    let room = loop {
        let (status, room) = get(b.addr, "/v1/rooms/r").await;
        if status == 200 {
            break room;
        }
        assert!(killed.elapsed() < WAIT, "B takes the room over in time: {room}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("takeover {} ms after the SIGKILL (lease 500 ms)", killed.elapsed().as_millis());
    assert_eq!(room["epoch"], before["epoch"], "the same epoch");
    let keys: BTreeSet<u64> = room["state"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| k.strip_prefix('k').map(|i| i.parse().unwrap()))
        .collect();
    assert!(
        acked.is_subset(&keys),
        "every acknowledged change survives: missing {:?}",
        acked.difference(&keys)
    );
    assert_eq!(room["state"]["n"], 3, "the forwarded and the WebSocket client's changes survive");
    let rev = room["rev"].as_u64().unwrap();
    assert_eq!(rev, keys.len() as u64 + 3, "one revision per change, none lost or doubled");
    // The WebSocket client resumes its session on B, and a resend of its last change is
    // recognised there: applied once across the failover.
    let query = format!("session={}&epoch={}&since={rev}", w.session, w.epoch);
    let mut w2 = Client::connect_at(b.addr, "r", &query).await;
    assert_eq!(
        (w2.welcome["resumed"].as_bool(), w2.welcome["lastClientReqId"].as_u64()),
        (Some(true), Some(2))
    );
    w2.send(json!({"type": "change", "clientReqId": 2, "ops": incr(1)})).await;
    let m = w2.recv().await;
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("duplicate")), "{m}");
    drop(w2);
    assert_eq!(redis.log_revs("r"), (1..=rev).collect::<Vec<_>>(), "the stream is gapless");

    // And B commits on from there.
    let (status, body) = post(b.addr, "r", incr(1)).await;
    assert_eq!((status, body["rev"].as_u64()), (200, Some(rev + 1)), "{body}");
    let (_, room) = get(b.addr, "/v1/rooms/r").await;
    assert_eq!(room["state"]["n"], 4, "the resend was not applied; this change was");
    assert_eq!(redis.log_revs("r").last(), Some(&(rev + 1)));
    // B's own client stayed connected through the takeover and holds it all.
    on_b.sync_to(rev + 1).await;
    assert_eq!(on_b.state["n"], 4);
    metric_until(b.addr, "ringsync_redis_rooms_owned", |v| v == 1.0).await;
    metric_until(b.addr, "ringsync_redis_lease_renewals_total", |v| v >= 1.0).await;
    stop(b).await;
}

#[tokio::test]
async fn a_node_whose_lease_was_taken_is_fenced_unloads_the_room_and_closes_its_clients_4013() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    for _ in 0..2 {
        assert_eq!(post(a.addr, "f", incr(1)).await.0, 200);
    }
    let mut c = Client::connect_at(a.addr, "f", "").await;
    c.sync_to(2).await;
    // As if A's lease had lapsed (a long pause) and another node had taken the room.
    let _: () =
        redis::cmd("SET").arg("ringsync:{f}:owner").arg("another-node").query(&mut redis.con()).unwrap();

    c.send(json!({"type": "change", "clientReqId": 1, "ops": incr(1)})).await;
    let m = c.recv().await;
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("reject"), Some("unavailable")), "{m}");
    let (status, body) = post(a.addr, "f", incr(1)).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    assert_eq!(redis.log_revs("f"), [1, 2], "nothing was appended past the fence");
    // A lets the room go: its clients are told to reconnect, and A only follows it while the
    // other node owns it (reads served, no commit).
    assert_eq!(c.closed().await, 4013);
    let (status, room) = get(a.addr, "/v1/rooms/f").await;
    assert_eq!((status, room["rev"].as_u64()), (200, Some(2)), "{room}");
    let mut follower = Client::connect_at(a.addr, "f", "").await;
    let (status, body) = post(a.addr, "f", incr(1)).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    metric_until(a.addr, "ringsync_redis_leases_lost_total", |v| v == 1.0).await;
    metric_until(a.addr, "ringsync_redis_append_failures_total", |v| v >= 1.0).await;
    metric_until(a.addr, "ringsync_redis_appends_total", |v| v == 2.0).await;
    metric_until(a.addr, "ringsync_redis_rooms_owned", |v| v == 0.0).await;
    // Once the other node gives the room up, A takes it over in place (the copy's client stays
    // connected), as it was stored.
    let _: () = redis::cmd("DEL").arg("ringsync:{f}:owner").query(&mut redis.con()).unwrap();
    metric_until(a.addr, "ringsync_cluster_takeovers_total", |v| v == 1.0).await;
    let (status, room) = get(a.addr, "/v1/rooms/f").await;
    assert_eq!(
        (status, room["rev"].as_u64(), room["state"]["n"].as_u64()),
        (200, Some(2), Some(2)),
        "{room}"
    );
    assert_eq!(post(a.addr, "f", incr(1)).await.0, 200);
    assert_eq!(redis.log_revs("f"), [1, 2, 3]);
    follower.sync_to(3).await;
    stop(a).await;
}

// Multi-threaded: the proxy's tasks must run while the test blocks (starting a node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_stops_committing_and_another_takes_its_rooms_without_a_fork() {
    let redis = Redis::start();
    let mut proxy = Proxy::start(redis.port).await;
    let a = node_at(&proxy.url(), &["--owner-lease", "500"]);
    let b = node(&redis, &["--owner-lease", "500"]);
    for _ in 0..3 {
        assert_eq!(post(a.addr, "c", incr(1)).await.0, 200);
    }
    let mut client = Client::connect_at(a.addr, "c", "").await;
    client.sync_to(3).await;

    proxy.cut();
    let (status, body) = post(a.addr, "c", incr(1)).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "A stops committing: {body}");
    let (_, room) = get(a.addr, "/v1/rooms/c").await;
    assert_eq!(room["rev"], 3, "rolled back to what is stored: {room}");

    // B takes the room over once A's lease lapses (a follower copy it loaded meanwhile is
    // dropped when the lease goes), and commits on from what is stored.
    let cut_at = Instant::now();
    let body = loop {
        let (status, body) = post(b.addr, "c", incr(10)).await;
        if status == 200 {
            break body;
        }
        assert_eq!(body["code"], "unavailable", "{body}");
        assert!(cut_at.elapsed() < WAIT, "B takes the room over in time: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["rev"].as_u64(), Some(4), "{body}");

    // A gets Redis back: it finds its lease gone, lets the room go and tells its clients.
    proxy.restore().await;
    assert_eq!(client.closed().await, 4013);
    let (status, _) = post(a.addr, "c", incr(1)).await;
    assert_eq!(status, 503, "A does not take the room back from B");
    assert_eq!(redis.log_revs("c"), [1, 2, 3, 4], "one history, no fork");
    let (_, room) = get(b.addr, "/v1/rooms/c").await;
    assert_eq!(room["state"]["n"], 13);
    stop(b).await;
}

#[tokio::test]
async fn nodes_carry_on_after_redis_restarts_and_nothing_acknowledged_is_lost() {
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always", "--save", ""]);
    let a = node(&redis, &[]);
    let mut acked = 0;
    for _ in 0..3 {
        assert_eq!(post(a.addr, "s", incr(1)).await.0, 200);
        acked += 1;
    }
    redis.crash_and_restart();
    // The first changes after the restart may meet the broken connection (rejected
    // `unavailable`, for the client to resend); the node reconnects by itself.
    let started = Instant::now();
    let mut refused = 0;
    while acked < 6 {
        let (status, body) = post(a.addr, "s", incr(1)).await;
        match status {
            200 => acked += 1,
            503 => refused += 1,
            _ => panic!("{status} {body}"),
        }
        assert!(started.elapsed() < WAIT, "the node carries on after Redis restarts ({refused} refused)");
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_, room) = get(a.addr, "/v1/rooms/s").await;
    assert_eq!((room["rev"].as_u64(), room["state"]["n"].as_u64()), (Some(acked), Some(acked)), "{room}");
    assert_eq!(redis.log_revs("s"), (1..=acked).collect::<Vec<_>>());
    stop(a).await;
}

#[tokio::test]
async fn reading_rooms_that_do_not_exist_leaves_no_lease_behind() {
    let redis = Redis::start();
    let a = node(&redis, &["--owner-lease", "300"]);
    for i in 0..20 {
        let (status, room) = get(a.addr, &format!("/v1/rooms/ghost{i}")).await;
        assert_eq!((status, room["rev"].as_u64()), (200, Some(0)), "{room}");
    }
    assert_eq!(post(a.addr, "real", incr(1)).await.0, 200);
    let owners =
        || -> Vec<String> { redis::cmd("KEYS").arg("ringsync:*:owner").query(&mut redis.con()).unwrap() };
    let deadline = Instant::now() + WAIT;
    // Given up (not merely expired: the leases are renewed until then) once a lease period old.
    while owners().len() > 1 {
        assert!(Instant::now() < deadline, "the look-ups' leases are given up: {:?}", owners());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(owners(), ["ringsync:{real}:owner"], "the room in use keeps its lease");
    metric_until(a.addr, "ringsync_redis_rooms_owned", |v| v == 1.0).await;
    stop(a).await;
}

fn record(rev: u64) -> ringsync::store::Record {
    common::store::record(rev, 3, "sess")
}

fn store(redis: &Redis) -> Arc<RedisStore> {
    store_retaining(redis, 100)
}

fn store_retaining(redis: &Redis, retain: u64) -> Arc<RedisStore> {
    let opts = RedisOptions { url: redis.url(), lease: Duration::from_secs(2), retain };
    RedisStore::connect(opts).unwrap()
}

/// At the seam: a stream entry whose bytes were damaged in Redis is cut with everything after
/// it (reported in `damage`), and the room's next appends continue from the last whole record.
#[test]
fn a_damaged_stream_entry_is_cut_and_reported_and_appends_continue_after_it() {
    let redis = Redis::start();
    let room = RoomId::parse("dmg").unwrap();
    {
        let s = store(&redis);
        assert_eq!(s.load(&room, 100).unwrap(), None, "nothing stored yet");
        let journal = Arc::new(common::store::Written::default());
        let log = s.open(&room, "ep-1", Arc::downgrade(&journal) as Weak<dyn Journal>);
        for rev in 1..=5 {
            log.append(0, record(rev));
        }
        journal.wait(5);
    }
    assert_eq!(redis.log_revs("dmg"), [1, 2, 3, 4, 5]);
    // Rewrite the stream with one byte of entry 3's record flipped (entries cannot be edited).
    let mut con = redis.con();
    let entries: Vec<StreamEntry> =
        redis::cmd("XRANGE").arg("ringsync:{dmg}:log").arg("-").arg("+").query(&mut con).unwrap();
    let _: () = redis::cmd("DEL").arg("ringsync:{dmg}:log").query(&mut con).unwrap();
    for (id, fields) in entries {
        let mut bytes = fields[0].1.clone();
        if id == "3-0" {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x40;
        }
        let _: String = redis::cmd("XADD")
            .arg("ringsync:{dmg}:log")
            .arg(&id)
            .arg("r")
            .arg(bytes)
            .query(&mut con)
            .unwrap();
    }

    let s = store(&redis);
    let loaded = s.load(&room, 100).unwrap().expect("stored");
    assert_eq!(loaded.epoch, "ep-1");
    assert_eq!(loaded.records.iter().map(|r| r.rev).collect::<Vec<_>>(), [1, 2], "cut at the damage");
    assert_eq!(loaded.records[1], record(2), "what is kept reads back as written");
    assert!(loaded.damage.iter().any(|d| d.contains("at revision 3")), "reported: {:?}", loaded.damage);
    assert_eq!(redis.log_revs("dmg"), [1, 2], "the damaged entry and what followed it are gone");
    let journal = Arc::new(common::store::Written::default());
    let log = s.open(&room, "ep-1", Arc::downgrade(&journal) as Weak<dyn Journal>);
    for rev in 3..=4 {
        log.append(0, record(rev));
    }
    journal.wait(4);
    assert_eq!(redis.log_revs("dmg"), [1, 2, 3, 4], "appends continue after the cut");
    let history = s.changes(&room, 1, 10).unwrap();
    assert_eq!(
        history.iter().map(|r| r.rev).collect::<Vec<_>>(),
        [2, 3, 4],
        "the history API reads the stream"
    );
    assert_eq!(s.oldest(&room), Some(1));
    assert_eq!(s.rooms_after(None, 10).unwrap(), std::slice::from_ref(&room));
    s.delete(&room).unwrap();
    assert_eq!(redis.log_revs("dmg"), Vec::<u64>::new());
    assert!(s.rooms_after(None, 10).unwrap().is_empty());
}

/// At the seam: a snapshot replaces the previous one and trims the stream to the records
/// `retain` keeps before it; a load hands over the snapshot and the records it asks to keep.
#[test]
fn a_snapshot_trims_the_stream_to_what_is_retained() {
    let redis = Redis::start();
    let room = RoomId::parse("snap").unwrap();
    {
        let s = store_retaining(&redis, 2);
        assert_eq!(s.load(&room, 100).unwrap(), None);
        let journal = Arc::new(common::store::Written::default());
        let log = s.open(&room, "ep-1", Arc::downgrade(&journal) as Weak<dyn Journal>);
        for rev in 1..=10 {
            log.append(0, record(rev));
        }
        let snap = common::store::snapshot;
        log.snapshot(snap(10));
        log.append(0, record(11));
        journal.wait(11);
        s.flush();
        assert_eq!(redis.log_revs("snap"), [9, 10, 11], "two kept before the snapshot, and what follows it");
        let loaded = s.load(&room, 1).unwrap().expect("stored");
        assert_eq!(loaded.snapshot, Some(snap(10)));
        assert_eq!(loaded.records, [record(10), record(11)]);
    }
    // A damaged snapshot over a trimmed log: the room cannot be rebuilt whole, so it is not
    // loaded at all (rather than without its first changes).
    let _: () =
        redis::cmd("SETRANGE").arg("ringsync:{snap}:snap").arg(20).arg("XX").query(&mut redis.con()).unwrap();
    let s = store_retaining(&redis, 2);
    let err = s.load(&room, 1).unwrap_err();
    assert!(err.0.contains("no readable snapshot"), "{err}");
}

#[test]
fn a_node_refuses_to_start_when_redis_does_not_answer() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}/");
    let out = common::binary()
        .args(["--listen", "127.0.0.1:0", "--redis", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--redis") && err.contains("cannot connect"), "{err}");
}

/// At the seam: the load that finds a room missing holds its lease, so the load that follows
/// (the room being created right after the look-up, possibly on an async worker) is answered
/// without a round trip to Redis.
#[test]
fn a_second_look_up_of_a_missing_room_needs_no_round_trip() {
    let mut redis = Redis::start();
    let s = store(&redis);
    let room = RoomId::parse("new").unwrap();
    assert_eq!(s.load(&room, 10).unwrap(), None);
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    assert_eq!(s.load(&room, 10).unwrap(), None, "answered from what the first load found");
    let other = RoomId::parse("other").unwrap();
    assert!(s.load(&other, 10).is_err(), "any other room needs Redis");
}

/// What a room heard from the store, in order.
#[derive(Default)]
struct Heard(parking_lot::Mutex<Vec<String>>);

impl Journal for Heard {
    fn written(&self, rev: u64) {
        self.0.lock().push(format!("written {rev}"));
    }
    fn failed(&self, generation: u64, rev: u64, _: &ringsync::store::StoreError) {
        self.0.lock().push(format!("failed {generation}/{rev}"));
    }
}

impl Heard {
    fn until(&self, what: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.0.lock().iter().any(|e| e == what) {
            assert!(Instant::now() < deadline, "{what} in time: {:?}", self.0.lock());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// At the seam: an append of a room whose lease was taken is refused and the room hears it,
/// also after the store handed the room over to be unloaded (nothing is dropped unheard).
#[test]
fn a_fenced_append_is_reported_even_after_the_room_was_handed_over() {
    let redis = Redis::start();
    let s = store(&redis);
    let room = RoomId::parse("fence").unwrap();
    assert_eq!(s.load(&room, 10).unwrap(), None);
    let heard = Arc::new(Heard::default());
    let log = s.open(&room, "ep-1", Arc::downgrade(&heard) as Weak<dyn Journal>);
    log.append(0, record(1));
    heard.until("written 1");
    let _: () =
        redis::cmd("SET").arg("ringsync:{fence}:owner").arg("another-node").query(&mut redis.con()).unwrap();
    log.append(0, record(2));
    heard.until("failed 0/2");
    assert_eq!(s.take_moved(), std::slice::from_ref(&room), "the room is handed over to be unloaded");
    // A commit racing the unload: its record is refused in Redis and the room hears it.
    log.append(1, record(2));
    heard.until("failed 1/2");
    assert_eq!(redis.log_revs("fence"), [1]);
}
