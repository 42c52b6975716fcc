//! Limits on a room's state that hold while a change runs, not only after it:
//! - a change cannot make the state (or what it keeps for undo) larger than `--max-state-bytes`
//!   at any point, so a few `copy` ops cannot double the document until the process dies;
//! - a `paths`-mode conflict check is near-linear and bounded, so one change cannot hold a
//!   room's write lock for seconds.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Spawned, config, http, post_ops, start};
use ringsync::ids::{ClientId, RoomId};
use ringsync::patch;
use ringsync::protocol::Mode;
use ringsync::room::ChangeRequest;
use serde_json::{Value, json};

/// Every blocking wait in these tests.
const BOUND: Duration = Duration::from_secs(30);

/// The real binary on a free port, under an address-space cap: a server that lets a change
/// allocate without bound then aborts instead of taking the machine with it. Returns the server
/// (killed on drop) and its address (from its "ringsync listening on http://ADDR" line).
fn spawn_capped(address_space_kib: u64, args: &[&str]) -> (Spawned, String) {
    let bin = common::binary();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {address_space_kib} && exec \"$0\" \"$@\""))
        .arg(bin.get_program())
        .args(["--listen", "127.0.0.1:0", "--memory-only"])
        .args(args)
        .stderr(Stdio::null());
    // The same environment `binary()` gives (without the shell's RINGSYNC_* variables).
    for (k, v) in bin.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let server = Spawned::start(cmd);
    let addr = server.addr.to_string();
    (server, addr)
}

/// One blocking HTTP/1.1 request with bounded waits; returns the status and JSON body.
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.set_write_timeout(Some(BOUND)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("a response in time (the server is alive)");
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Small bodies only here; a chunked one is one chunk.
    let body = match body.split_once("\r\n") {
        Some((len, rest)) if usize::from_str_radix(len.trim(), 16).is_ok() && !body.starts_with('{') => {
            rest.rsplit_once("\r\n0\r\n").map_or(rest, |(b, _)| b.trim_end())
        }
        _ => body,
    };
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

/// The peak resident set of a process, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM line")
}

#[test]
fn copies_cannot_grow_the_state_past_its_limit_during_a_change() {
    // 2 GiB of address space: the fixed server needs a few dozen MiB; one that lets 24 copies
    // of the whole document run would need 64 KiB × 2^24 = 1 TiB and aborts.
    let (server, addr) = spawn_capped(2 << 20, &["--max-state-bytes", "16777216"]);
    let pid = server.pid();
    let blob = "x".repeat(64 << 10);
    let (status, body) = request(
        &addr,
        "POST",
        "/v1/rooms/grow/changes",
        &json!({"ops": [{"op": "add", "path": "/v", "value": blob}]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    // Each op copies the whole document into a new member: it doubles.
    let doubling: Vec<Value> =
        (0..24).map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")})).collect();
    let started = Instant::now();
    let (status, body) =
        request(&addr, "POST", "/v1/rooms/grow/changes", &json!({"ops": doubling}).to_string());
    let took = started.elapsed();
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "too_large", "{body}");
    let peak = peak_rss_kib(pid);
    eprintln!("doubling change refused in {took:?}; server peak RSS {} MiB", peak >> 10);
    assert!(peak < 256 << 10, "peak RSS {} MiB", peak >> 10);
    // The room is as it was, and the server keeps serving this room and others.
    let (status, body) = request(&addr, "GET", "/v1/rooms/grow", "");
    assert_eq!(status, 200);
    assert_eq!((body["rev"].as_u64(), body["state"]["v"].as_str().map(str::len)), (Some(1), Some(64 << 10)));
    assert_eq!(body["state"].as_object().map(|m| m.len()), Some(1), "no copy survived");
    let (status, body) = request(
        &addr,
        "POST",
        "/v1/rooms/other/changes",
        &json!({"ops": [{"op": "incr", "path": "/n", "value": 1}]}).to_string(),
    );
    assert_eq!((status, body["rev"].as_u64()), (200, Some(1)), "{body}");
    // Copying a value to siblings (linear growth) is refused the same way once over the limit.
    let siblings: Vec<Value> =
        (0..300).map(|i| json!({"op": "copy", "from": "/v", "path": format!("/s{i}")})).collect();
    let (status, body) =
        request(&addr, "POST", "/v1/rooms/grow/changes", &json!({"ops": siblings}).to_string());
    assert_eq!((status, &body["code"]), (413, &json!("too_large")), "{body}");
    assert!(peak_rss_kib(pid) < 256 << 10);
}

/// `{"op":"incr","path":"/{prefix}{i}","value":1}` for `i` in `0..n`.
fn incrs(prefix: &str, n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"op": "incr", "path": format!("/{prefix}{i}"), "value": 1})).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paths_check_over_a_full_ring_is_answered_and_does_not_freeze_the_room() {
    let server = start(config(&["--history", "1024", "--history-bytes", "0"])).await;
    // Fill the ring: 1,024 changes of 1,000 incr ops each. The first over HTTP; the rest
    // through the app's one commit path directly, which is what HTTP would call, only faster.
    let (status, body) = post_ops(&server, "big", incrs("k", 1000)).await;
    assert_eq!(status, 200, "{body}");
    let room = server.app.rooms.get(&RoomId::parse("big").unwrap()).expect("the room exists");
    let ops = patch::parse_patch(incrs("k", 1000)).unwrap();
    for _ in 1..1024 {
        let req = ChangeRequest {
            author: ClientId(7),
            user: None,
            client_req_id: None,
            base_rev: None,
            mode: Mode::Overwrite,
            ops: ops.clone(),
            extras: Default::default(),
        };
        server.app.commit(&room, req).expect("commits");
    }
    // Committed directly (not over HTTP, which waits for the store), so the last changes become
    // visible once the store has written them: wait for that, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(&server, "GET", "/v1/rooms/big", None).await;
        assert_eq!(status, 200, "{body}");
        if body["rev"].as_u64() == Some(1024) {
            break;
        }
        assert!(Instant::now() < deadline, "rev 1024 never became visible: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A paths-mode change of 1,000 ops based at the ring's start: every newer change must be
    // checked. It must be answered, and a concurrent GET of the room too.
    let body = json!({"baseRev": 0, "mode": "paths", "ops": incrs("m", 1000)}).to_string();
    // Both requests are made from blocking threads with socket timeouts, so the bound holds
    // even when the room's lock stalls the runtime's workers.
    let addr = server.addr.to_string();
    let post = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            (request(&addr, "POST", "/v1/rooms/big/changes", &body), started.elapsed())
        })
    };
    let get = tokio::task::spawn_blocking(move || {
        // Let the POST reach the room first (an ordering aid, not a timing assertion).
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        (request(&addr, "GET", "/v1/rooms/big", ""), started.elapsed())
    });
    let ((status, body), post_took) = post.await.expect("the POST is answered in time");
    let ((get_status, get_body), get_took) = get.await.expect("the GET is answered in time");
    eprintln!(
        "paths-mode POST over 1,024 × 1,000 touched paths answered in {post_took:?}; concurrent GET in {get_took:?}"
    );
    assert_eq!(get_status, 200, "{get_body}");
    assert!(get_body["rev"].as_u64().is_some_and(|r| r == 1024 || r == 1025));
    // No path overlaps: it commits.
    assert_eq!((status, body["rev"].as_u64()), (200, Some(1025)), "{body}");
    // One that overlaps only the newest change conflicts, naming exactly that revision.
    let ops = json!([{"op": "incr", "path": "/m5", "value": 1}]);
    let body = json!({"baseRev": 1024, "mode": "paths", "ops": ops}).to_string();
    let (status, body) = http(&server, "POST", "/v1/rooms/big/changes", Some(&body)).await;
    assert_eq!((status, &body["code"], &body["conflicts"]), (409, &json!("conflict"), &json!([1025])));
}
