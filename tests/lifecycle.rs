//! Operations: limits at their boundaries, slow handshakes, idle-room eviction, graceful shutdown
//! of the real binary (SIGTERM → 1001 closes spread over the window → exit 0), configuration
//! errors and JSON logs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Spawned, WAIT, binary, close_code, config, http, post_ops, server_command, start};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_room_limits_at_the_boundary() {
    let server =
        start(config(&["--max-connections", "3", "--max-room-clients", "2", "--max-rooms", "2"])).await;
    // max-room-clients 2: two in one room fine, the third is closed with 4005.
    let a = Client::connect(&server, "r1").await;
    let _b = Client::connect(&server, "r1").await;
    let (mut third, _) = tokio_tungstenite::connect_async(server.ws_url("r1", "")).await.unwrap();
    let code = close_code(&mut third).await;
    assert_eq!(code, 4005);
    drop(third);
    // max-connections 3: a third connection (in another room) is fine, a fourth gets 503.
    let _c = Client::connect(&server, "r2").await;
    let err = tokio_tungstenite::connect_async(server.ws_url("r2", "")).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    drop(a);
    // max-rooms 2: r1 and r2 exist; a third room cannot be created, existing ones still work.
    let (s, v) = post_ops(&server, "r3", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    assert_eq!((s, v["code"].as_str()), (503, Some("too_many_rooms")));
    // Over WebSocket the refusal is a close code a browser can see (once the server has
    // released `a`'s connection slot: the drop above does not wait for it, so a loaded machine
    // may still count it for a moment).
    let deadline = std::time::Instant::now() + WAIT;
    let mut ws = loop {
        match tokio_tungstenite::connect_async(server.ws_url("r3", "")).await {
            Ok((ws, _)) => break ws,
            Err(e) if e.to_string().contains("503") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let code = close_code(&mut ws).await;
    assert_eq!(code, 4006);
    drop(ws);
    let (s, _) = post_ops(&server, "r2", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    assert_eq!(s, 200);
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap();
    for limit in ["max_room_clients", "max_connections", "max_rooms"] {
        assert!(m.contains(&format!("ringsync_connections_refused_total{{limit=\"{limit}\"}}")), "{limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_ops_and_message_size_limits_at_the_boundary() {
    let server = start(config(&[
        "--max-state-bytes",
        "100",
        "--max-ops-per-change",
        "3",
        "--max-message-bytes",
        "400",
    ]))
    .await;
    let mut c = Client::connect(&server, "lim").await;
    // {"a":"<n x>"} is n + 8 bytes: 92 is exactly the limit, 93 one over.
    c.change("overwrite", json!([{"op": "add", "path": "/a", "value": "x".repeat(92)}])).await;
    c.sync_to(1).await;
    c.change("overwrite", json!([{"op": "replace", "path": "/a", "value": "x".repeat(93)}])).await;
    let r = c.until("reject").await;
    assert_eq!(r["code"], "too_large");
    let (_, v) = http(&server, "GET", "/v1/rooms/lim", None).await;
    assert_eq!(serde_json::to_string(&v["state"]).unwrap().len(), 100);

    // Exactly --max-ops-per-change ops pass, one more is refused.
    c.change("overwrite", json!([{"op": "replace", "path": "/a", "value": ""}])).await;
    c.sync_to(2).await;
    let incr = json!({"op": "incr", "path": "/n", "value": 1});
    c.change("overwrite", json!([incr, incr, incr])).await;
    c.sync_to(3).await;
    c.change("overwrite", json!([incr, incr, incr, incr])).await;
    let r = c.until("reject").await;
    assert_eq!(r["code"], "too_large");
    assert!(r["message"].as_str().unwrap().contains("ops"));
    assert_eq!(c.state, json!({"a": "", "n": 3}));

    // A message of exactly --max-message-bytes is accepted; one byte more closes with 1009.
    let exact = |n: usize| {
        let base = json!({"type": "ping", "t": ""}).to_string().len();
        json!({"type": "ping", "t": "p".repeat(n - base)}).to_string()
    };
    assert_eq!(exact(400).len(), 400);
    c.ws.send(Message::text(exact(400))).await.unwrap();
    assert_eq!(c.until("pong").await["type"], "pong");
    c.ws.send(Message::text(exact(401))).await.unwrap();
    assert_eq!(c.closed().await, 1009);
    // HTTP bodies: exactly the limit is read, one over is 413.
    let body = |n: usize| {
        // One small op, then JSON whitespace up to `n` bytes.
        let body = json!({"ops": [{"op": "incr", "path": "/n", "value": 1}]}).to_string();
        format!("{body:<n$}")
    };
    let (s, _) = http(&server, "POST", "/v1/rooms/lim/changes", Some(&body(400))).await;
    assert_eq!(s, 200);
    let (s, _) = http(&server, "POST", "/v1/rooms/lim/changes", Some(&body(401))).await;
    assert_eq!(s, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_are_cut_off() {
    let server = start(config(&["--handshake-timeout", "0.5"])).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /v1/rooms/x/ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server gives up on the headers and closes the connection.
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("closed in time").ok();
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    let line =
        m.as_str().unwrap().lines().find(|l| l.contains("limit=\"handshake_timeout\"")).map(str::to_owned);
    let count: f64 = line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0);
    assert!(count >= 1.0, "the cut-off handshake is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_only_idle_rooms_are_dropped_and_come_back_with_a_new_epoch() {
    let server = start(config(&["--memory-only", "--room-idle-ttl", "0.5"])).await;
    let (s, _) = post_ops(&server, "idle", json!([{"op": "add", "path": "/a", "value": 1}])).await;
    assert_eq!(s, 200);
    let (_, v) = http(&server, "GET", "/v1/rooms/idle", None).await;
    let epoch = v["epoch"].as_str().unwrap().to_owned();
    // A room with a connection is never dropped.
    let held = Client::connect(&server, "held").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = http(&server, "GET", "/v1/rooms/idle", None).await;
        if v["epoch"].is_null() {
            assert_eq!(v["rev"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "idle room was not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, v) = http(&server, "GET", "/v1/rooms/held", None).await;
    assert!(v["epoch"].is_string(), "a room with a live connection stays");
    // A stale resume gets a snapshot of the fresh room.
    let c = Client::connect_query(&server, "idle", &format!("epoch={epoch}&since=1")).await;
    assert_eq!((c.snapshots, c.rev), (1, 0));
    assert_ne!(c.epoch, epoch);
    drop(held);
}

async fn raw_get(addr: &str, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    String::from_utf8_lossy(&buf).split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_spread_1001_closes_and_exits_zero() {
    let mut cmd = server_command(&["--shutdown-timeout", "2", "--log-format", "json"]);
    cmd.stderr(Stdio::piped());
    let mut child = Spawned::start(cmd);
    let addr = child.addr.to_string();
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/rooms/bye/ws")).await.unwrap();
        sockets.push(ws);
    }
    assert_eq!(raw_get(&addr, "/readyz").await, 200);
    // A connection accepted just before the drain whose request arrives after it began is
    // answered, not closed unanswered (hyper's graceful shutdown alone drops it as idle).
    let mut early = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let signalled = Instant::now();
    let ok = Command::new("kill").args(["-TERM", &child.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(raw_get(&addr, "/readyz").await, 503, "not ready while draining");
    assert_eq!(raw_get(&addr, "/healthz").await, 200, "alive while draining");
    early.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), early.read_to_end(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 200"), "answered, then closed: {head:?}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head:?}");
    // Read every socket concurrently so each close is timed when it arrives.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let code = close_code(&mut ws).await;
                (code, signalled.elapsed())
            })
        })
        .collect();
    let mut closes = Vec::new();
    for r in readers {
        let (code, at) = r.await.unwrap();
        assert_eq!(code, 1001);
        closes.push(at);
    }
    let spread = closes.iter().max().unwrap().saturating_sub(*closes.iter().min().unwrap());
    assert!(spread > Duration::from_millis(100), "closes are spread over the window: {closes:?}");
    let status = child.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(child.child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    let first = logs.lines().next().expect("some logs");
    let parsed: Value = serde_json::from_str(first).expect("--log-format json writes JSON lines");
    assert!(parsed.get("level").is_some());
    assert!(!logs.contains("session\":\""), "no session tokens in logs");
}

#[test]
fn invalid_configuration_names_the_flag() {
    for (args, flag) in [
        (&["--history", "0"][..], "--history"),
        (&["--idle-timeout", "soon"][..], "--idle-timeout"),
        (&["--ping-interval", "60", "--idle-timeout", "30"][..], "--ping-interval"),
        (&["--listen", "nowhere"][..], "--listen"),
    ] {
        let out = binary().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let help = binary().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--history",
        "--session-ttl",
        "--presence-interval",
        "--max-connections",
        "--room-idle-ttl",
    ] {
        assert!(help.contains(flag), "{flag} in --help");
    }
    assert!(help.contains("[default: 127.0.0.1:8080]") && help.contains("[env: RINGSYNC_HISTORY="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_accepting_writes_is_disconnected() {
    // 40 MB sent as fast as acked: past the default --rate-inbound-bytes.
    let server = start(config(&[
        "--write-timeout",
        "0.5",
        "--max-state-bytes",
        "100000000",
        "--rate-inbound-bytes",
        "0",
    ]))
    .await;
    let stuck = Client::connect(&server, "wt").await;
    let mut writer = Client::connect(&server, "wt").await;
    let blob = "w".repeat(200_000);
    // The state grows to ~40 MB, so even the snapshots a lagging client is sent instead of
    // deltas are far more than its socket buffers hold.
    for i in 0..200u64 {
        writer.change("overwrite", json!([{"op": "add", "path": format!("/blob{i}"), "value": blob}])).await;
        // The writer stays caught up, so it only ever gets its small acks.
        writer.sync_to(i + 1).await;
    }
    writer.sync_to(200).await;
    // The stuck connection is dropped by the server within a bounded time; others carry on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.app.rooms.clients(&ringsync::ids::RoomId::parse("wt").unwrap()) > 1 {
        assert!(Instant::now() < deadline, "stuck client still connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.change("overwrite", json!([{"op": "add", "path": "/after", "value": 1}])).await;
    writer.sync_to(201).await;
    drop(stuck);
}
