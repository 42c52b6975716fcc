//! WebSocket limits that must hold: RFC 6455 framing rules on the read path (raw frames over a
//! TcpStream, so nothing between the test and the server fixes them up), the session cap
//! (`--max-sessions`), and what a change gets while the real binary drains after SIGTERM.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Client, WAIT, binary, config, http, spawn_server, start};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket client that writes frames byte by byte as the test spells them (masked or not,
/// any length, any opcode) and reads the server's frames raw.
struct RawWs {
    stream: BufReader<TcpStream>,
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

impl RawWs {
    async fn connect(addr: std::net::SocketAddr, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut status = String::new();
        tokio::time::timeout(WAIT, stream.read_line(&mut status)).await.expect("handshake in time").unwrap();
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        RawWs { stream }
    }

    /// Writes one frame; `mask` as the client must (RFC 6455 §5.1), or not.
    async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: bool) {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let bit = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n if n < 65536 => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.get_mut().write_all(&out).await.unwrap();
    }

    /// The next frame from the server: (opcode, payload); `None` when the socket ends.
    async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut head)).await.expect("a frame in time").ok()?;
        assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
        let len = match head[1] & 0x7f {
            126 => u64::from(self.stream.read_u16().await.ok()?),
            127 => self.stream.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0f, payload))
    }

    /// Reads until the server's close frame; returns it as (code, payload length), `None` when
    /// the socket ended without one.
    async fn close_frame(&mut self) -> Option<(u16, usize)> {
        while let Some((op, payload)) = self.read().await {
            if op == CLOSE {
                let code =
                    if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                return Some((code, payload.len()));
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_frames_and_oversized_control_frames_close_with_1002() {
    let server = start(config(&[])).await;
    let path = "/v1/rooms/rfc/ws";
    let change = br#"{"type":"change","clientReqId":1,"ops":[{"op":"add","path":"/x","value":1}]}"#;

    // §5.1: a client frame without a mask is a protocol error, whatever its opcode.
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, TEXT, change, false).await;
    assert_eq!(ws.close_frame().await, Some((1002, 2 + "protocol error".len())), "unmasked text frame");
    let (_, room) = http(&server, "GET", "/v1/rooms/rfc", None).await;
    assert_eq!(room["rev"], 0, "the unmasked change was not applied: {room}");
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, PING, b"hi", false).await;
    assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1002), "unmasked ping");

    // §5.5: control frames carry at most 125 bytes.
    for opcode in [PING, PONG] {
        let mut ws = RawWs::connect(server.addr, path).await;
        ws.frame(true, opcode, &[b'p'; 126], true).await;
        assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1002), "126-byte control frame {opcode:#x}");
    }
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'c'; 124]);
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, CLOSE, &close, true).await;
    let got = ws.close_frame().await;
    assert_eq!(got.map(|c| c.0), Some(1002), "a 126-byte close is not echoed: {got:?}");

    // The limits themselves are fine: a 125-byte ping is answered, a 125-byte close echoed.
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, PING, &[b'p'; 125], true).await;
    loop {
        let (op, payload) = ws.read().await.expect("pong");
        if op == PONG {
            assert_eq!(payload, vec![b'p'; 125]);
            break;
        }
    }
    ws.frame(true, CLOSE, &close[..125], true).await;
    assert_eq!(ws.close_frame().await, Some((1000, 125)), "a 125-byte close is echoed");
}

/// `ringsync_changes_committed_total` now, or `None` once the server has gone.
async fn committed(addr: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines().find_map(|l| l.strip_prefix("ringsync_changes_committed_total ")?.trim().parse().ok())
}

/// What one streaming client saw of its own changes.
#[derive(Debug, Default)]
struct Outcome {
    sent: BTreeSet<String>,
    acked: BTreeSet<String>,
    /// Rejected, by code.
    rejected: HashMap<String, BTreeSet<String>>,
    close: Option<u16>,
    acked_before_sigterm: usize,
}

/// Streams changes (each adds its own key) with at most `WINDOW` unanswered until the server
/// closes the connection. Reports once it has `warm` acks, so the test signals mid-stream.
async fn stream_changes(
    addr: String,
    name: String,
    warm: usize,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Outcome {
    const WINDOW: usize = 32;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/rooms/drain/ws")).await.unwrap();
    let mut me = String::new();
    let mut out = Outcome::default();
    let mut next_id = 1u64;
    let mut signalled = false;
    let key = |id: u64| format!("{name}-{id}");
    loop {
        let answered = out.acked.len() + out.rejected.values().map(BTreeSet::len).sum::<usize>();
        if !me.is_empty() && out.sent.len() - answered < WINDOW {
            let op = json!({"op": "add", "path": format!("/{}", key(next_id)), "value": next_id});
            let msg = json!({"type": "change", "clientReqId": next_id, "ops": [op]});
            if ws.send(Message::text(msg.to_string())).await.is_err() {
                break;
            }
            out.sent.insert(key(next_id));
            next_id += 1;
            continue;
        }
        let msg = match tokio::time::timeout(WAIT, ws.next()).await.expect("the server answers or closes") {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(Message::Close(f))) => {
                out.close = Some(f.map_or(1005, |f| f.code.into()));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        match msg["type"].as_str().unwrap() {
            "welcome" => me = msg["client"].as_str().unwrap().to_owned(),
            "delta" => {
                for e in msg["changes"].as_array().unwrap() {
                    if e["client"] == me.as_str() {
                        out.acked.insert(key(e["clientReqId"].as_u64().unwrap()));
                    }
                }
            }
            "reject" => {
                let code = msg["code"].as_str().unwrap().to_owned();
                out.rejected.entry(code).or_default().insert(key(msg["clientReqId"].as_u64().unwrap()));
            }
            "snapshot" | "presence" => {}
            other => panic!("unexpected {other}: {msg}"),
        }
        if !signalled && out.acked.len() >= warm {
            signalled = true;
            out.acked_before_sigterm = out.acked.len();
            let _ = ready.send(()).await;
        }
    }
    out
}

/// Reads the room as another client sees it, until the server closes; returns the keys in the
/// final state it assembled from deltas.
async fn observe(addr: String) -> (BTreeSet<String>, Option<u16>) {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/rooms/drain/ws")).await.unwrap();
    let mut state = json!({});
    loop {
        let msg = match tokio::time::timeout(WAIT, ws.next()).await.expect("the server sends or closes") {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(Message::Close(f))) => {
                let keys = state.as_object().unwrap().keys().cloned().collect();
                return (keys, Some(f.map_or(1005, |f| f.code.into())));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (state.as_object().unwrap().keys().cloned().collect(), None),
        };
        match msg["type"].as_str().unwrap() {
            "snapshot" => state = msg["state"].clone(),
            "delta" => {
                for e in msg["changes"].as_array().unwrap() {
                    let ops = ringsync::patch::parse_patch(e["ops"].clone()).unwrap();
                    ringsync::patch::apply(&mut state, &ops).unwrap();
                }
            }
            _ => {}
        }
    }
}

/// Finding: after SIGTERM the server went on applying changes while sending no acks until each
/// connection closed. Now every change a client streams across the SIGTERM is either acked (and
/// in the room as the others see it) or rejected with `draining` (and not applied); a change the
/// server read after its close frame is not applied either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_streamed_across_sigterm_are_acked_or_rejected_never_applied_silently() {
    // The streamers send as fast as the server acks, past the default --rate-changes.
    let mut child = spawn_server(&["--shutdown-timeout", "6", "--rate-changes", "0"]);
    let addr = child.addr.to_string();
    let observer = tokio::spawn(observe(addr.clone()));
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(4);
    let streamers: Vec<_> = (0..4)
        .map(|i| tokio::spawn(stream_changes(addr.clone(), format!("s{i}"), 200, ready_tx.clone())))
        .collect();
    for _ in 0..4 {
        tokio::time::timeout(WAIT, ready.recv()).await.expect("streamers warm up").unwrap();
    }
    let ok = Command::new("kill").args(["-TERM", &child.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    let signalled = Instant::now();
    // Scrape the commit counter all through the drain: at no moment may more changes have been
    // committed than the clients are (eventually) acked.
    let scraper = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut scrapes = Vec::new();
            while signalled.elapsed() < Duration::from_secs(20) {
                match committed(&addr).await {
                    Some(n) => scrapes.push(n),
                    None => break,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            scrapes
        })
    };
    let mut outcomes = Vec::new();
    for s in streamers {
        outcomes.push(s.await.unwrap());
    }
    let (state, observer_close) = observer.await.unwrap();
    let scrapes = scraper.await.unwrap();

    let mut acked = BTreeSet::new();
    let (mut rejected, mut unanswered) = (0, 0);
    for o in &outcomes {
        assert_eq!(o.close, Some(1001), "closed as the server shuts down ({} sent)", o.sent.len());
        assert!(o.acked_before_sigterm > 0);
        for (code, keys) in &o.rejected {
            assert_eq!(code, "draining", "{keys:?}");
            assert!(keys.is_disjoint(&state), "a rejected change was applied");
            rejected += keys.len();
        }
        let answered: BTreeSet<_> = o.acked.iter().chain(o.rejected.values().flatten()).cloned().collect();
        let silent: BTreeSet<_> = o.sent.difference(&answered).cloned().collect();
        assert!(silent.is_disjoint(&state), "a change without ack or reject was applied: {silent:?}");
        unanswered += silent.len();
        acked.extend(o.acked.iter().cloned());
    }
    let most = scrapes.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "acked {} ({} before SIGTERM), rejected {rejected} with draining, unanswered {unanswered}; \
         the other client holds {} keys; at most {most} committed in {} scrapes during the drain",
        acked.len(),
        outcomes.iter().map(|o| o.acked_before_sigterm).sum::<usize>(),
        state.len(),
        scrapes.len(),
    );
    assert_eq!(observer_close, Some(1001));
    let missing: Vec<_> = acked.difference(&state).collect();
    let extra: Vec<_> = state.difference(&acked).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "acked but not delivered: {missing:?}; not acked: {extra:?}"
    );
    assert!(rejected > 0, "changes sent during the drain are answered with `draining`");
    assert!(!scrapes.is_empty(), "the counter was read during the drain");
    assert!(most <= acked.len() as f64, "{most} changes committed, only {} acked", acked.len());
    let status = child.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
}

/// A counter's value in the server's `/metrics` (0 when absent).
async fn counter(server: &common::Server, series: &str) -> f64 {
    let (_, body) = http(server, "GET", "/metrics", None).await;
    let text = body.as_str().expect("metrics are text").to_owned();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Waits (bounded) until the server has `n` disconnected sessions.
async fn until_disconnected(server: &common::Server, n: usize) {
    let deadline = Instant::now() + WAIT;
    while server.app.sessions.disconnected() != n {
        assert!(
            Instant::now() < deadline,
            "{} disconnected sessions, want {n}",
            server.app.sessions.disconnected()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Finding: connect-and-close storms left every session alive until `--session-ttl`. Now at most
/// `--max-sessions` are held: a new one drops the session disconnected longest ago, and when all
/// are connected the new connection is refused with 4007; a connected session is never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_dropping_the_oldest_disconnected_first() {
    const CAP: usize = 8;
    let server = start(config(&["--max-sessions", &CAP.to_string()])).await;
    let evicted_before = counter(&server, "ringsync_sessions_evicted_total").await;
    let refused_before = counter(&server, "ringsync_connections_refused_total{limit=\"max_sessions\"}").await;

    // Three connected sessions, the oldest of all.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::connect(&server, "cap").await);
    }
    // Connect-and-close three times the cap, one after the other.
    let mut closed = Vec::new();
    for i in 0..3 * CAP {
        let mut c = Client::connect(&server, "cap").await;
        assert!(server.app.sessions.len() <= CAP, "{} live sessions", server.app.sessions.len());
        c.ws.close(None).await.unwrap();
        closed.push(c.session.clone());
        until_disconnected(&server, (i + 1).min(CAP - held.len())).await;
        assert!(server.app.sessions.len() <= CAP, "{} live sessions", server.app.sessions.len());
    }
    // The newest disconnected sessions are kept, every older one went first; the connected stay.
    let keep = CAP - held.len();
    for (i, token) in closed.iter().enumerate() {
        let expect = i >= closed.len() - keep;
        assert_eq!(server.app.sessions.is_live(token), expect, "session {i} of {}", closed.len());
    }
    for c in &mut held {
        assert!(server.app.sessions.is_live(&c.session), "a connected session is never dropped");
        let id = c.change("overwrite", json!([{"op": "incr", "path": "/n", "value": 1}])).await;
        c.sync_to(0).await;
        assert!(c.acks.iter().any(|(a, _)| *a == id), "it still commits");
    }
    // An evicted session resumes as a new one (as after expiry), dropping the next oldest.
    let old = &closed[0];
    let resumed = Client::connect_query(&server, "cap", &format!("session={old}")).await;
    assert_eq!(resumed.welcome["resumed"], false);
    assert!(!server.app.sessions.is_live(&closed[closed.len() - keep]), "the next oldest went");
    held.push(resumed);
    // Fill the cap with connected sessions; then a new one is refused with 4007.
    while server.app.sessions.len() < CAP || server.app.sessions.disconnected() > 0 {
        held.push(Client::connect(&server, "cap").await);
        assert!(held.len() <= CAP, "every slot is connected by now");
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("cap", "")).await.unwrap();
    assert_eq!(common::close_code(&mut ws).await, 4007, "refused when every session is connected");
    assert_eq!(server.app.sessions.len(), CAP);
    // A connected session resuming itself is not a new session: never refused.
    let again = Client::connect_query(&server, "cap", &format!("session={}", held[0].session)).await;
    assert_eq!(again.welcome["resumed"], true);

    let evicted = counter(&server, "ringsync_sessions_evicted_total").await - evicted_before;
    let refused =
        counter(&server, "ringsync_connections_refused_total{limit=\"max_sessions\"}").await - refused_before;
    // 3 × CAP closed; `keep` of them were live when the cap filled with connected sessions.
    assert_eq!(evicted, (3 * CAP) as f64, "every closed session was evicted in the end");
    assert_eq!(refused, 1.0);
}

/// The Autobahn run (scripts/autobahn.sh) needs `GET /test/echo`; it exists only with the hidden
/// `--test-echo-endpoint` switch, and echoes through the room connections' read path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_endpoint_exists_only_behind_a_hidden_test_switch() {
    let help = binary().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--max-sessions"), "{help}");
    assert!(!help.contains("echo"), "the test switch is hidden from --help");
    let server = start(config(&[])).await;
    let (status, body) = http(&server, "GET", "/test/echo", None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let server = start(config(&["--test-echo-endpoint"])).await;
    let mut ws = RawWs::connect(server.addr, "/test/echo").await;
    // A text message in two fragments with a ping between them; a binary message.
    ws.frame(false, TEXT, "hé".as_bytes(), true).await;
    ws.frame(true, PING, b"p", true).await;
    ws.frame(true, 0x0, "llo".as_bytes(), true).await;
    ws.frame(true, 0x2, &[0, 159, 255], true).await;
    assert_eq!(ws.read().await, Some((PONG, b"p".to_vec())));
    assert_eq!(ws.read().await, Some((TEXT, "héllo".as_bytes().to_vec())));
    assert_eq!(ws.read().await, Some((0x2, vec![0, 159, 255])));
    ws.frame(true, CLOSE, &1000u16.to_be_bytes(), true).await;
    assert_eq!(ws.close_frame().await, Some((1000, 2)));
}
