//! Durable rooms, end to end against the real binary on a temporary `--data-dir`: a restart keeps
//! state, revision and epoch and a client resumes by delta; a resend after a restart is applied
//! once; SIGKILL at random moments (20 times, `--fsync always` and `batch`) loses nothing
//! acknowledged; a torn log tail is cut; a full disk (a file-size limit) rejects `unavailable`
//! and service resumes when space returns; one server per directory; eviction and lazy loading;
//! `Idempotency-Key`; the history API beyond the ring; `check-data`; deleting a room's data.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Client, Spawned, WAIT, binary, crash, http_at, next_json, server_command, stop};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The binary on `dir` with `flags`, stderr kept for the test's failure output.
fn spawn(dir: &Path, flags: &[&str]) -> Spawned {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(flags);
    Spawned::start(server_command(&args))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http_at(addr, "GET", path, None, "").await
}

async fn post(addr: SocketAddr, room: &str, ops: Value, headers: &str) -> (u16, Value) {
    let body = json!({"ops": ops}).to_string();
    http_at(addr, "POST", &format!("/v1/rooms/{room}/changes"), Some(&body), headers).await
}

/// Polls `/metrics` (published once a second) until the counter `name` is non-zero.
async fn counted(addr: SocketAddr, name: &str) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = get(addr, "/metrics").await;
        let text = m.as_str().unwrap_or_default().to_string();
        if text.lines().any(|l| l.starts_with(name) && !l.ends_with(" 0")) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn incr(n: i64) -> Value {
    json!([{"op": "incr", "path": "/n", "value": n}])
}

#[tokio::test]
async fn a_restart_keeps_state_rev_and_epoch_and_a_client_resumes_by_delta() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &[]);
    let mut a = Client::connect_at(server.addr, "game", "").await;
    for i in 0..5 {
        a.change("overwrite", json!([{"op": "add", "path": format!("/k{i}"), "value": i}])).await;
    }
    a.sync_to(5).await;
    let (_, before) = get(server.addr, "/v1/rooms/game").await;
    assert_eq!(before["rev"], 5);
    stop(server).await;

    let server = spawn(dir.path(), &[]);
    let (_, after) = get(server.addr, "/v1/rooms/game").await;
    assert_eq!(after, before, "state, rev and epoch survive the restart");
    let (mut b, welcome) = common::resume_raw(server.addr, "game", &a, 3).await;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["client"], a.client.as_str(), "the same client id");
    assert_eq!((welcome["lastClientReqId"].as_u64(), welcome["rev"].as_u64()), (Some(5), Some(5)));
    let first = next_json(&mut b).await.unwrap();
    assert_eq!(
        (first["type"].as_str(), first["from"].as_u64(), first["to"].as_u64()),
        (Some("delta"), Some(3), Some(5)),
        "{first}"
    );
    let acks: Vec<u64> =
        first["changes"].as_array().unwrap().iter().map(|c| c["clientReqId"].as_u64().unwrap()).collect();
    assert_eq!(acks, [4, 5], "its own changes come back as acks, as before the restart");
    // A new session never gets a client id the room has already seen.
    let c = Client::connect_at(server.addr, "game", "").await;
    assert_ne!(c.client, a.client);
    stop(server).await;
}

#[tokio::test]
async fn a_resend_after_a_restart_is_applied_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &[]);
    let mut a = Client::connect_at(server.addr, "r", "").await;
    for _ in 0..5 {
        a.change("overwrite", incr(1)).await;
    }
    a.sync_to(5).await;
    crash(server);

    let server = spawn(dir.path(), &[]);
    let query = format!("session={}&epoch={}&since=5", a.session, a.epoch);
    let mut b = Client::connect_at(server.addr, "r", &query).await;
    assert_eq!(b.welcome["lastClientReqId"], 5);
    // The client did not see the acks of 4 and 5 (say): it resends them with the same ids.
    for id in [4, 5] {
        b.send(json!({"type": "change", "clientReqId": id, "ops": incr(1)})).await;
        let m = b.recv().await;
        assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("duplicate")), "{m}");
    }
    let id = b.change("overwrite", incr(1)).await;
    assert_eq!(id, 6);
    b.sync_to(6).await;
    let (_, room) = get(server.addr, "/v1/rooms/r").await;
    assert_eq!(room["state"]["n"], 6, "five before the restart, one after: none twice");
    stop(server).await;
}

/// A writer that keeps `window` changes in flight, each `incr /n` plus `add /s<id>`, and
/// follows its acks across restarts by resuming its session.
struct Writer {
    session: Option<(String, String)>,
    rev: u64,
    next: u64,
    /// Sent, not yet acknowledged.
    pending: BTreeMap<u64, Value>,
    acked: BTreeSet<u64>,
}

impl Writer {
    fn ops(id: u64) -> Value {
        json!([{"op": "incr", "path": "/n", "value": 1}, {"op": "add", "path": format!("/s{id}"), "value": true}])
    }

    /// Connects (resuming), checks the first frame is a delta from where it was, resends what
    /// the server did not process, then (with `send_new`) writes until the socket dies or
    /// `deadline` passes; without it, reads until nothing is pending.
    async fn run(&mut self, addr: SocketAddr, deadline: tokio::time::Instant, send_new: bool) {
        let query = match &self.session {
            Some((s, e)) => format!("?session={s}&epoch={e}&since={}", self.rev),
            None => String::new(),
        };
        let (mut ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1/rooms/crash/ws{query}")),
        )
        .await
        .expect("connect in time")
        .expect("connects");
        let welcome = next_json(&mut ws).await.expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        let last = welcome["lastClientReqId"].as_u64().unwrap();
        if let Some((_, epoch)) = &self.session {
            assert_eq!(welcome["epoch"], epoch.as_str(), "the epoch survives every crash");
            assert_eq!(welcome["resumed"], true);
        } else {
            let first = welcome.clone();
            self.session =
                Some((first["session"].as_str().unwrap().into(), first["epoch"].as_str().unwrap().into()));
        }
        let first = next_json(&mut ws).await.expect("first frame");
        if self.rev > 0 {
            assert_eq!(first["type"], "delta", "resume by delta after a crash: {first}");
        }
        self.absorb(&first);
        assert!(self.acked.iter().all(|id| *id <= last), "every ack was counted as processed");
        // Pending changes the server processed are acked in that delta; the rest are resent.
        assert!(self.pending.keys().all(|id| *id > last), "pending {:?}, last {last}", self.pending.keys());
        for (id, ops) in &self.pending {
            let m = json!({"type": "change", "clientReqId": id, "ops": ops});
            if ws.send(Message::text(m.to_string())).await.is_err() {
                return;
            }
        }
        loop {
            if !send_new && self.pending.is_empty() {
                return;
            }
            while send_new && self.pending.len() < 16 {
                let id = self.next;
                self.next += 1;
                let ops = Self::ops(id);
                self.pending.insert(id, ops.clone());
                let m = json!({"type": "change", "clientReqId": id, "ops": ops});
                if ws.send(Message::text(m.to_string())).await.is_err() {
                    return;
                }
            }
            let m = match tokio::time::timeout_at(deadline, next_json(&mut ws)).await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(_) => {
                    // Time is up: stop sending, keep reading what is already on its way.
                    while let Ok(Some(m)) =
                        tokio::time::timeout(Duration::from_millis(300), next_json(&mut ws)).await
                    {
                        self.absorb(&m);
                    }
                    return;
                }
            };
            self.absorb(&m);
        }
    }

    fn absorb(&mut self, m: &Value) {
        match m["type"].as_str() {
            Some("delta") => {
                assert_eq!(m["from"].as_u64().unwrap(), self.rev, "gapless: {m}");
                for e in m["changes"].as_array().unwrap() {
                    let rev = e["rev"].as_u64().unwrap();
                    assert_eq!(rev, self.rev + 1, "consecutive revisions");
                    self.rev = rev;
                    if let Some(id) = e["clientReqId"].as_u64() {
                        assert!(self.pending.remove(&id).is_some(), "ack {id} for a pending change");
                        assert!(self.acked.insert(id), "ack {id} once");
                    }
                }
            }
            Some("reject") | Some("error") => panic!("nothing is refused here: {m}"),
            Some("snapshot") => {
                assert_eq!(self.rev, 0, "only the very first frame is a snapshot: {m}");
                self.rev = m["rev"].as_u64().unwrap();
            }
            _ => {}
        }
    }
}

/// The ids of the crash writer's changes in the room's state (its `/s<id>` members).
fn seen_ids(room: &Value) -> BTreeSet<u64> {
    let state = room["state"].as_object().cloned().unwrap_or_default();
    state.keys().filter_map(|k| k.strip_prefix('s')?.parse().ok()).collect()
}

/// Kills the server with SIGKILL at random moments while a writer commits, 20 times; after every
/// restart each acknowledged change is present, revisions are gapless (the writer resumes by
/// delta from the revision it holds), and the state is exactly the acknowledged changes applied
/// once each.
async fn crash_loop(fsync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer { session: None, rev: 0, next: 1, pending: BTreeMap::new(), acked: BTreeSet::new() };
    let mut crashes = 0;
    for round in 0..=20 {
        let server = spawn(dir.path(), &["--fsync", fsync, "--rate-changes", "0"]);
        let (_, room) = get(server.addr, "/v1/rooms/crash").await;
        let seen = seen_ids(&room);
        for id in &w.acked {
            assert!(seen.contains(id), "round {round}: acknowledged change {id} is present");
        }
        assert!(room["rev"].as_u64().unwrap() >= w.rev, "round {round}: no acknowledged revision lost");
        let run_for = Duration::from_millis(if round == 20 { 300 } else { 50 + rand::random::<u64>() % 400 });
        let deadline = tokio::time::Instant::now() + run_for;
        if round == 20 {
            w.run(server.addr, deadline, true).await;
            // Settle: resume once more, resend what is pending, read until it is all acked.
            w.run(server.addr, tokio::time::Instant::now() + WAIT, false).await;
            assert!(w.pending.is_empty(), "every change settles: {:?}", w.pending.keys());
            let (_, room) = get(server.addr, "/v1/rooms/crash").await;
            let n = room["state"]["n"].as_u64().unwrap();
            let seen = seen_ids(&room);
            assert_eq!(seen, w.acked, "exactly the acknowledged changes");
            assert_eq!(n as usize, seen.len(), "each applied once (n counts applications)");
            assert_eq!(
                room["rev"].as_u64().unwrap() as usize,
                seen.len(),
                "one revision per change, gapless"
            );
            stop(server).await;
            break;
        }
        let addr = server.addr;
        let writer = w.run(addr, deadline + Duration::from_secs(5), true);
        let killer = async {
            tokio::time::sleep_until(deadline).await;
            crash(server);
        };
        tokio::join!(writer, killer);
        crashes += 1;
    }
    assert_eq!(crashes, 20);
    assert!(w.acked.len() > 20, "the writer got work done: {} acks", w.acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_with_fsync_always() {
    crash_loop("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_with_fsync_batch() {
    crash_loop("batch").await;
}

/// The newest log segment of `room` in `dir`.
fn newest_segment(dir: &Path, room: &str) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("rooms").join(room))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rsl"))
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

#[tokio::test]
async fn a_torn_log_tail_is_cut_at_the_last_whole_record_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &[]);
    for _ in 0..10 {
        assert_eq!(post(server.addr, "t", incr(1), "").await.0, 200);
    }
    stop(server).await;
    // A crash in the middle of writing the last record.
    let seg = newest_segment(dir.path(), "t");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
    let out = binary().args(["check-data", dir.path().to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "check-data reports the damage: {text}");
    assert!(text.contains('t') && text.contains("torn"), "{text}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len - 5, "check-data changes nothing");

    let server = spawn(dir.path(), &[]);
    let (_, room) = get(server.addr, "/v1/rooms/t").await;
    assert_eq!((room["rev"].as_u64(), room["state"]["n"].as_u64()), (Some(9), Some(9)));
    let (status, body) = post(server.addr, "t", incr(1), "").await;
    assert_eq!((status, body["rev"].as_u64()), (200, Some(10)), "the log continues after the cut");
    assert!(counted(server.addr, "ringsync_store_damaged_total").await, "the damage is counted");
    stop(server).await;
    let out = binary().args(["check-data", dir.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn a_full_disk_rejects_unavailable_keeps_the_room_intact_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    // A file-size limit makes writes past 24 KiB fail (EFBIG), as a full disk would.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--fsize=24576:unlimited", "--"]).arg(env!("CARGO_BIN_EXE_ringsync"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--snapshot-every",
        "100000",
    ]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RINGSYNC_") {
            cmd.env_remove(name);
        }
    }
    cmd.stderr(std::process::Stdio::null());
    let server = Spawned::start(cmd);
    let mut writer = Client::connect_at(server.addr, "full", "").await;
    let mut reader = Client::connect_at(server.addr, "full", "").await;
    let blob = "x".repeat(1000);
    let mut acked = 0;
    let rejected = loop {
        let id = writer.change("overwrite", json!([{"op": "add", "path": "/blob", "value": blob}, {"op": "incr", "path": "/n", "value": 1}])).await;
        loop {
            let m = writer.recv().await;
            if m["type"] == "reject" {
                break;
            }
            if writer.acks.iter().any(|(a, _)| *a == id) {
                acked += 1;
                break;
            }
        }
        if let Some(r) = writer.rejects.last() {
            break r.clone();
        }
        assert!(acked < 100, "the limit is reached");
    };
    assert_eq!(rejected["code"], "unavailable", "{rejected}");
    assert!(acked > 3);
    let (_, room) = get(server.addr, "/v1/rooms/full").await;
    assert_eq!(room["rev"].as_u64().unwrap(), acked, "the room is back at the last stored revision");
    assert_eq!(room["state"]["n"].as_u64().unwrap(), acked);
    reader.sync_to(acked).await;
    // Reads keep working; space returns (the limit is lifted) and writes resume.
    let pid = server.pid().to_string();
    assert!(
        std::process::Command::new("prlimit")
            .args(["--pid", &pid, "--fsize=unlimited"])
            .status()
            .unwrap()
            .success()
    );
    writer.change("overwrite", incr(1)).await;
    writer.sync_to(acked + 1).await;
    reader.sync_to(acked + 1).await;
    assert_eq!(reader.state["n"].as_u64().unwrap(), acked + 1, "the reader never saw the rejected change");
    assert!(counted(server.addr, "ringsync_store_failures_total").await, "the failure is counted");
    stop(server).await;
    let server = spawn(dir.path(), &[]);
    let (_, room) = get(server.addr, "/v1/rooms/full").await;
    assert_eq!((room["rev"].as_u64().unwrap(), room["state"]["n"].as_u64().unwrap()), (acked + 1, acked + 1));
    stop(server).await;
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn(dir.path(), &[]);
    let out = binary()
        .args(["--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(dir.path().to_str().unwrap()), "names the directory: {err}");
    assert!(err.contains(&first.pid().to_string()), "names the other process: {err}");
    stop(first).await;
}

#[tokio::test]
async fn an_idle_room_is_evicted_and_loaded_again_on_its_next_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &["--evict-idle", "0.2"]);
    let mut a = Client::connect_at(server.addr, "lazy", "").await;
    a.change("overwrite", incr(7)).await;
    a.sync_to(1).await;
    let a_session = (a.session.clone(), a.epoch.clone(), a.client.clone());
    drop(a);
    assert!(counted(server.addr, "ringsync_rooms_evicted_total").await, "the room is evicted");
    let (_, room) = get(server.addr, "/v1/rooms/lazy").await;
    assert_eq!((room["rev"].as_u64(), room["state"]["n"].as_u64()), (Some(1), Some(7)), "loaded back");
    // The session outlived the room's copy in memory: it resumes, with its dedupe state.
    let query = format!("session={}&epoch={}&since=1", a_session.0, a_session.1);
    let mut b = Client::connect_at(server.addr, "lazy", &query).await;
    assert_eq!(b.welcome["resumed"], true, "{}", b.welcome);
    assert_eq!(
        (b.welcome["client"].as_str(), b.welcome["lastClientReqId"].as_u64()),
        (Some(a_session.2.as_str()), Some(1))
    );
    b.send(json!({"type": "change", "clientReqId": 1, "ops": incr(7)})).await;
    assert_eq!(b.recv().await["code"], "duplicate", "a resend after the eviction is not applied again");
    stop(server).await;
}

#[tokio::test]
async fn an_idempotency_key_is_applied_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &[]);
    let key = "Idempotency-Key: order-17\r\n";
    let (s1, first) = post(server.addr, "shop", incr(5), key).await;
    assert_eq!(s1, 200, "{first}");
    let (s2, again) = post(server.addr, "shop", incr(5), key).await;
    assert_eq!((s2, &again), (200, &first), "the retry gets the first answer");
    crash(server);
    let server = spawn(dir.path(), &[]);
    let (s3, after) = post(server.addr, "shop", incr(5), key).await;
    assert_eq!((s3, &after), (200, &first), "across a crash too");
    let (s4, other) = post(server.addr, "shop", incr(6), key).await;
    assert_eq!((s4, other["code"].as_str()), (422, Some("idempotency_key_reused")));
    let (_, room) = get(server.addr, "/v1/rooms/shop").await;
    assert_eq!((room["rev"].as_u64(), room["state"]["n"].as_u64()), (Some(1), Some(5)));
    stop(server).await;
}

#[tokio::test]
async fn the_history_api_pages_through_the_log_beyond_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &["--history", "10", "--snapshot-every", "15"]);
    for _ in 0..50 {
        assert_eq!(post(server.addr, "h", incr(1), "").await.0, 200);
    }
    let (status, page) = get(server.addr, "/v1/rooms/h/changes?since=5&limit=20").await;
    assert_eq!(status, 200, "{page}");
    let revs: Vec<u64> =
        page["changes"].as_array().unwrap().iter().map(|c| c["rev"].as_u64().unwrap()).collect();
    assert_eq!(revs, (6..=25).collect::<Vec<_>>());
    assert_eq!(page["to"], 25);
    assert_eq!(page["changes"][0]["ops"], incr(1));
    let (_, all) = get(server.addr, "/v1/rooms/h/changes?since=0").await;
    assert_eq!(all["changes"].as_array().unwrap().len(), 50);
    stop(server).await;
    let server = spawn(dir.path(), &["--history", "10", "--retain-history", "10", "--snapshot-every", "15"]);
    for _ in 0..50 {
        assert_eq!(post(server.addr, "h", incr(1), "").await.0, 200);
    }
    let (status, gone) = get(server.addr, "/v1/rooms/h/changes?since=1").await;
    assert_eq!((status, gone["code"].as_str()), (410, Some("gone")), "deleted from disk too: {gone}");
    stop(server).await;
}

#[tokio::test]
async fn deleting_a_room_removes_its_stored_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &[]);
    assert_eq!(post(server.addr, "bye", incr(1), "").await.0, 200);
    let (status, body) = http_at(server.addr, "DELETE", "/v1/rooms/bye", None, "").await;
    assert_eq!((status, body["deleted"].as_bool()), (200, Some(true)), "{body}");
    assert!(!dir.path().join("rooms").join("bye").exists());
    stop(server).await;
    let server = spawn(dir.path(), &[]);
    let (_, room) = get(server.addr, "/v1/rooms/bye").await;
    assert_eq!(room["rev"], 0);
    stop(server).await;
}

#[tokio::test]
async fn a_room_whose_files_cannot_be_read_answers_unavailable_and_can_still_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), &[]);
    assert_eq!(post(server.addr, "broken", incr(1), "").await.0, 200);
    stop(server).await;
    // A segment the server cannot read at all: a directory where the file was.
    let segment = newest_segment(dir.path(), "broken");
    std::fs::remove_file(&segment).unwrap();
    std::fs::create_dir(&segment).unwrap();
    let server = spawn(dir.path(), &[]);
    let (status, body) = get(server.addr, "/v1/rooms/broken").await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "{body}");
    // The operator's way out: the delete needs no readable data, and nobody was connected.
    let (status, body) = http_at(server.addr, "DELETE", "/v1/rooms/broken", None, "").await;
    assert_eq!(
        (status, body["deleted"].as_bool(), body["closed"].as_u64()),
        (200, Some(true), Some(0)),
        "{body}"
    );
    assert!(!dir.path().join("rooms").join("broken").exists());
    let (status, room) = get(server.addr, "/v1/rooms/broken").await;
    assert_eq!((status, room["rev"].as_u64()), (200, Some(0)), "{room}");
    // A room that never existed is still 404.
    let (status, body) = http_at(server.addr, "DELETE", "/v1/rooms/never", None, "").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    stop(server).await;
}
