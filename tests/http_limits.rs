//! HTTP limits: slow and stalled request bodies time out (408) and hold bounded memory, the bytes
//! of bodies in flight are bounded across the process (503), open HTTP connections are bounded
//! (503, then closed) while upgraded WebSockets stop counting, and an oversized body's 413 is
//! readable by clients that write their whole request before reading the response (as Node's
//! fetch and Python's urllib do).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Client, Spawned, WAIT, config, http, post_ops, spawn_server, start};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed HTTP response: status and body (JSON when it parses, else a string).
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

/// Parses one complete response (status line, headers, a `Content-Length` body); `None` when the
/// bytes are not a complete response.
fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))?
        .parse()
        .ok()?;
    let body = rest.get(..len)?;
    Some(Reply { status, body: serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())) })
}

fn post_head(path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\nConnection: close\r\n\r\n"
    )
}

/// A JSON change body of exactly `n` bytes (n >= 20).
fn body_of(n: usize) -> Vec<u8> {
    // One small op, then JSON whitespace up to `n` bytes.
    let mut body = json!({"ops": [{"op": "incr", "path": "/n", "value": 1}]}).to_string().into_bytes();
    body.resize(n.max(body.len()), b' ');
    body
}

/// Writes the whole request before reading anything, as Node's fetch and Python's urllib do; a
/// write error (the server closed early) is remembered, then whatever the server sent is read
/// until it closes. Returns the response (if a complete one arrived) and the write error.
async fn write_all_then_read(addr: std::net::SocketAddr, request: &[u8]) -> (Option<Reply>, Option<String>) {
    // A small send buffer, as over a real network: the request cannot all sit in socket buffers
    // by the time the server answers (on loopback, megabytes would).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(32 * 1024).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let mut write_error = None;
    for chunk in request.chunks(64 * 1024) {
        match tokio::time::timeout(WAIT, s.write_all(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                write_error = Some(e.to_string());
                break;
            }
            Err(_) => panic!("the server stopped reading the request"),
        }
    }
    let mut buf = Vec::new();
    // A reset after the response still leaves what was read in `buf`.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("the server closes in time");
    (parse_reply(&buf), write_error)
}

fn assert_too_large(reply: Option<Reply>, write_error: Option<String>, what: &str) {
    // Node's fetch and Python's urllib give up on a write error and never read the response, so
    // the server must let the whole request be written.
    assert_eq!(write_error, None, "{what}: the server cut the request off");
    let reply =
        reply.unwrap_or_else(|| panic!("{what}: no complete response (write error: {write_error:?})"));
    assert_eq!(reply.status, 413, "{what}: {reply:?}");
    assert_eq!(reply.body["code"], "too_large", "{what}: {reply:?}");
    assert!(reply.body["message"].as_str().unwrap().contains("--max-message-bytes"), "{what}: {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_a_readable_413_even_when_written_whole() {
    let server = start(config(&[])).await;
    for size in [2 << 20, 16 << 20] {
        let mut request = post_head("/v1/rooms/big/changes", size).into_bytes();
        request.extend_from_slice(&body_of(size));
        let (reply, write_error) = write_all_then_read(server.addr, &request).await;
        assert_too_large(reply, write_error, &format!("{size} bytes with Content-Length"));
    }
    // A chunked body is only found too large while streaming; the 413 is readable all the same.
    let body = body_of(2 << 20);
    let mut request =
        b"POST /v1/rooms/big/changes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(60_000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (reply, write_error) = write_all_then_read(server.addr, &request).await;
    assert_too_large(reply, write_error, "2 MiB chunked");
    // Request heads are bounded too.
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "h".repeat(70_000));
    let (reply, _) = write_all_then_read(server.addr, head.as_bytes()).await;
    assert_eq!(reply.map(|r| r.status), Some(431));
    // Nothing was written; the server carries on.
    let (s, v) = http(&server, "GET", "/v1/rooms/big", None).await;
    assert_eq!((s, &v["rev"]), (200, &json!(0)));
}

/// Runs a command to completion within `limit` (killing it past that); returns its stdout.
fn run_bounded(mut cmd: std::process::Command, limit: Duration) -> Option<String> {
    let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: cannot run {cmd:?}: {e}");
            return None;
        }
    };
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pythons_urllib_reads_the_413_of_a_16_mib_post() {
    let server = start(config(&[])).await;
    let script = r#"
import sys, urllib.request, urllib.error
url, n = sys.argv[1], int(sys.argv[2])
body = b'{"ops":[{"op":"incr","path":"/n","value":1}]' + b" " * n + b'}'
req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=20)
    print("no error")
except urllib.error.HTTPError as e:
    print(e.code)
    print(e.read().decode())
except Exception as e:
    print("failed:", repr(e))
"#;
    let url = server.url("/v1/rooms/py/changes");
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script, &url, &(16 << 20).to_string()]);
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(60))).await.unwrap();
    let Some(out) = out else { return };
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("413"), "python3 urllib: {out}");
    let body: Value = serde_json::from_str(lines.next().unwrap_or("")).expect("a JSON body");
    assert_eq!(body["code"], "too_large", "{out}");
}

/// The real binary on a free port (killed when dropped), with its /proc readings.
struct Binary(Spawned);

impl Binary {
    fn start(args: &[&str]) -> Binary {
        Binary(spawn_server(args))
    }

    /// Resident set size (bytes), from /proc.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

async fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> Option<Reply> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("response in time");
    parse_reply(&buf)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<Reply> {
    raw_request(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_cut_off_and_hold_bounded_memory() {
    // Each connection sends most of a 1 MiB body and stops. Before the body timeout, 160 of them
    // held ~170 MiB; now the bytes in flight are capped (default 64 MiB) and each is answered
    // (408 or 503, with a JSON body) and closed after --body-timeout.
    const CONNECTIONS: usize = 160;
    const DECLARED: usize = 1 << 20;
    const SENT: usize = 1_040_000;
    const RSS_CAP: u64 = 128 << 20;
    let server = Binary::start(&["--body-timeout", "3"]);
    let addr = server.0.addr;
    let body = body_of(DECLARED);
    let (wrote_tx, mut wrote_rx) = tokio::sync::mpsc::channel(CONNECTIONS);
    let mut stalled = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut request = post_head("/v1/rooms/stall/changes", DECLARED).into_bytes();
        request.extend_from_slice(&body[..SENT]);
        let wrote = wrote_tx.clone();
        stalled.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&request).await;
            let _ = wrote.send(()).await;
            // Then silence: the socket stays open until the server gives up on it.
            let mut buf = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
            (closed.is_ok(), parse_reply(&buf))
        }));
    }
    let mut max_rss = 0;
    for _ in 0..CONNECTIONS {
        tokio::time::timeout(Duration::from_secs(30), wrote_rx.recv())
            .await
            .expect("bodies are sent in time");
        max_rss = max_rss.max(server.rss());
    }
    eprintln!("max RSS with every body sent: {} MiB", max_rss >> 20);
    // Meanwhile, ordinary requests are served.
    for path in ["/healthz", "/v1/rooms/stall"] {
        let reply = get(addr, path).await.expect("a response");
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
    }
    let mut statuses = std::collections::BTreeMap::new();
    for task in stalled {
        max_rss = max_rss.max(server.rss());
        let (closed, reply) = task.await.unwrap();
        assert!(closed, "a stalled body is closed after the body timeout");
        let reply = reply.expect("a stalled body is answered before the close");
        let code = reply.body["code"].as_str().expect("a JSON error body").to_owned();
        *statuses.entry((reply.status, code)).or_insert(0) += 1;
    }
    eprintln!("max RSS {} MiB; replies {statuses:?}", max_rss >> 20);
    assert!(max_rss < RSS_CAP, "RSS {} MiB over the {} MiB cap", max_rss >> 20, RSS_CAP >> 20);
    for (status, code) in statuses.keys() {
        assert!([(408, "timeout"), (503, "overloaded")].contains(&(*status, code.as_str())), "{statuses:?}");
    }
    assert!(statuses.contains_key(&(408, "timeout".to_owned())), "{statuses:?}");
    assert!(statuses.contains_key(&(503, "overloaded".to_owned())), "over the in-flight cap: {statuses:?}");
    // The server is fine afterwards.
    let ok = body_of(40);
    let mut request = post_head("/v1/rooms/stall/changes", ok.len()).into_bytes();
    request.extend_from_slice(&ok);
    let reply = raw_request(addr, &request).await;
    assert_eq!(reply.map(|r| r.status), Some(200));
}

/// Polls `f` until it holds (bounded).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn refusals(metrics: &Value, limit: &str) -> f64 {
    let line = metrics
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("ringsync_connections_refused_total{{limit=\"{limit}\"}}")))
        .map(str::to_owned);
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_bytes_in_flight_are_bounded_and_released() {
    let server = start(config(&[
        "--max-message-bytes",
        "65536",
        "--max-body-bytes-in-flight",
        "100000",
        "--body-timeout",
        "2",
    ]))
    .await;
    let app = server.app.clone();
    let stall = |sent: usize| {
        let addr = server.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut request = post_head("/v1/rooms/f/changes", 65536).into_bytes();
            request.extend_from_slice(&body_of(65536)[..sent]);
            s.write_all(&request).await.unwrap();
            s
        }
    };
    // Two stalled bodies fill the budget exactly: 65,000 + 35,000 bytes.
    let mut a = stall(65_000).await;
    eventually("65,000 bytes in flight", || app.body_bytes_in_flight() == 65_000).await;
    let mut b = stall(35_000).await;
    eventually("100,000 bytes in flight", || app.body_bytes_in_flight() == 100_000).await;
    // A new body, however small, is refused before it is read.
    let (s, v) = post_ops(&server, "f", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    assert_eq!((s, v["code"].as_str()), (503, Some("overloaded")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("--max-body-bytes-in-flight"), "{v}");
    let (s, _) = http(&server, "GET", "/v1/rooms/f", None).await;
    assert_eq!(s, 200, "requests without a body are served");
    // The stalled bodies time out with a JSON 408, and their bytes are released.
    for s in [&mut a, &mut b] {
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("closed in time").ok();
        let reply = parse_reply(&buf).expect("a 408 before the close");
        assert_eq!((reply.status, reply.body["code"].as_str()), (408, Some("timeout")), "{reply:?}");
    }
    eventually("the budget released", || app.body_bytes_in_flight() == 0).await;
    let (s, _) = post_ops(&server, "f", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    assert_eq!(s, 200);
    // A body that goes over the budget part-way is refused then, and its bytes released.
    let _c = stall(65_000).await;
    eventually("65,000 bytes in flight", || app.body_bytes_in_flight() == 65_000).await;
    let mut request = post_head("/v1/rooms/f/changes", 65536).into_bytes();
    request.extend_from_slice(&body_of(65536));
    let (reply, write_error) = write_all_then_read(server.addr, &request).await;
    let reply = reply.unwrap_or_else(|| panic!("no response ({write_error:?})"));
    assert_eq!((reply.status, reply.body["code"].as_str()), (503, Some("overloaded")), "{reply:?}");
    assert_eq!(app.body_bytes_in_flight(), 65_000);
    // A client that hangs up mid-body releases its bytes too.
    let d = stall(20_000).await;
    eventually("85,000 bytes in flight", || app.body_bytes_in_flight() == 85_000).await;
    drop(d);
    eventually("the hung-up body released", || app.body_bytes_in_flight() == 65_000).await;
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    assert!(refusals(&m, "max_body_bytes_in_flight") >= 2.0);
    assert!(refusals(&m, "body_timeout") >= 2.0);
    assert!(m.as_str().unwrap().contains("ringsync_http_body_in_flight_bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_bounded_and_websockets_do_not_count() {
    let server = start(config(&["--max-http-connections", "3", "--handshake-timeout", "30"])).await;
    let app = server.app.clone();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    eventually("3 HTTP connections", || app.http_connections() == 3).await;
    // The fourth is answered 503 with a JSON body and closed at once.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("closed at once").unwrap();
    let reply = parse_reply(&buf).expect("a 503");
    assert_eq!((reply.status, reply.body["code"].as_str()), (503, Some("too_many_connections")), "{reply:?}");
    assert!(reply.body["message"].as_str().unwrap().contains("--max-http-connections"));
    assert_eq!(app.http_connections(), 3);
    // One closes; its place is free again.
    drop(idle.pop());
    eventually("2 HTTP connections", || app.http_connections() == 2).await;
    // Upgraded WebSockets leave the HTTP count (they count under --max-connections).
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::connect(&server, "ws").await);
        eventually("the upgrade to leave the HTTP count", || app.http_connections() == 2).await;
    }
    let (s, m) = http(&server, "GET", "/metrics", None).await;
    assert_eq!(s, 200);
    assert!(refusals(&m, "max_http_connections") >= 1.0);
    assert!(m.as_str().unwrap().contains("ringsync_http_connections_open"));
    drop(clients);
}
