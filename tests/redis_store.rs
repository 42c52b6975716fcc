//! Rooms on Redis (`--redis`, the first step of cluster mode), end to end against the real
//! binary and a `redis-server` each test starts itself, on a free port in a temporary directory,
//! and stops by its PID: a restart keeps state, revision and epoch, a client resumes by delta and
//! a resend is applied once; with two nodes a room has one owner, the other refuses it until the
//! owner is killed and then takes it over with the same epoch and every acknowledged change; a
//! node whose lease another node took has its appends fenced (rejected `unavailable`, nothing
//! written).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Spawned, WAIT, http_at, server_command};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// An `XRANGE` entry: its id and its field-value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// A `redis-server` of the test's own (no persistence), killed and reaped when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs Debian's redis-server)");
        let redis = Redis { child, port, _dir: dir };
        let deadline = Instant::now() + WAIT;
        while !redis.answers() {
            assert!(Instant::now() < deadline, "redis-server answers PING in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// The revisions of the room's stream entries, in stream order.
    fn log_revs(&self, room: &str) -> Vec<u64> {
        let ids: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(format!("ringsync:{{{room}}}:log"))
            .arg("-")
            .arg("+")
            .query(&mut self.con())
            .unwrap();
        ids.iter().map(|(id, _)| id.strip_suffix("-0").unwrap().parse().unwrap()).collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(redis: &Redis, flags: &[&str]) -> Spawned {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(flags);
    Spawned::start(server_command(&args))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http_at(addr, "GET", path, None, "").await
}

async fn post(addr: SocketAddr, room: &str, ops: Value) -> (u16, Value) {
    let body = json!({"ops": ops}).to_string();
    http_at(addr, "POST", &format!("/v1/rooms/{room}/changes"), Some(&body), "").await
}

async fn stop(mut s: Spawned) {
    let pid = s.pid().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(s.wait_exit(Duration::from_secs(20)).await.success());
}

fn crash(mut s: Spawned) {
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

async fn next_json(ws: &mut common::Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time")? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn incr(n: i64) -> Value {
    json!([{"op": "incr", "path": "/n", "value": n}])
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
    let url =
        format!("ws://{}/v1/rooms/game/ws?session={}&epoch={}&since=3", server.addr, a.session, a.epoch);
    let (mut b, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_json(&mut b).await.unwrap();
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

    // B does not load a room A owns: reads and writes are refused, nothing is forked.
    let (status, body) = post(b.addr, "r", incr(1)).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    let (status, _) = get(b.addr, "/v1/rooms/r").await;
    assert_eq!(status, 503);

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

    // B takes the room over once A's lease lapses: same epoch, every acknowledged change.
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
        .map(|k| k.strip_prefix('k').unwrap().parse().unwrap())
        .collect();
    assert!(
        acked.is_subset(&keys),
        "every acknowledged change survives: missing {:?}",
        acked.difference(&keys)
    );
    let rev = room["rev"].as_u64().unwrap();
    assert_eq!(rev, keys.len() as u64, "one revision per change, none lost or doubled");
    assert_eq!(redis.log_revs("r"), (1..=rev).collect::<Vec<_>>(), "the stream is gapless");

    // And B commits on from there.
    let (status, body) = post(b.addr, "r", incr(1)).await;
    assert_eq!((status, body["rev"].as_u64()), (200, Some(rev + 1)), "{body}");
    assert_eq!(redis.log_revs("r").last(), Some(&(rev + 1)));
    stop(b).await;
}

#[tokio::test]
async fn a_node_whose_lease_was_taken_has_its_appends_fenced() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    for _ in 0..2 {
        assert_eq!(post(a.addr, "f", incr(1)).await.0, 200);
    }
    // As if A's lease had lapsed (a long pause) and another node had taken the room.
    let _: () =
        redis::cmd("SET").arg("ringsync:{f}:owner").arg("another-node").query(&mut redis.con()).unwrap();

    let (status, body) = post(a.addr, "f", incr(1)).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    assert_eq!(redis.log_revs("f"), [1, 2], "nothing was appended past the fence");
    let (_, room) = get(a.addr, "/v1/rooms/f").await;
    assert_eq!(
        (room["rev"].as_u64(), room["state"]["n"].as_u64()),
        (Some(2), Some(2)),
        "rolled back: {room}"
    );
    // A WebSocket writer is told the same, with the change's id.
    let mut c = Client::connect_at(a.addr, "f", "").await;
    c.send(json!({"type": "change", "clientReqId": 1, "ops": incr(1)})).await;
    let m = c.recv().await;
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("reject"), Some("unavailable")), "{m}");
    assert_eq!(redis.log_revs("f"), [1, 2]);
    stop(a).await;
}
