//! Who may knock, and how often (`guard`): Origin checks on every room route, CORS, the JSON-only
//! rule for HTTP bodies, and each rate limit at its boundary (exactly the burst allowed, the next
//! refused with `rate_limited` and a retry hint), then the 4429 close past the error budget.
//! Real server on a free port, real sockets; every wait bounded. The metrics recorder is shared
//! by this binary's tests, so counters are checked to have grown by at least what a test caused.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use common::{Client, Server, WAIT, close_code, config, start};
use futures_util::{SinkExt, StreamExt};
use ringsync::ids::RoomId;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const EVIL: &str = "http://evil.example";
const GAME: &str = "https://game.example";

/// A response read off a raw socket: status, headers (names lower-cased), body as JSON (or the
/// text as a JSON string).
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

/// One HTTP/1.1 request over its own connection, with exactly the given headers.
async fn request(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("response in time").unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status");
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_owned();
            headers.entry(k).and_modify(|e: &mut String| e.push_str(&format!(", {v}"))).or_insert(v);
        }
    }
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Resp { status, headers, body }
}

/// A WebSocket upgrade to `room`, with an `Origin` header if given: the socket, or the refusal.
async fn ws_connect(
    server: &Server,
    room: &str,
    origin: Option<&str>,
) -> Result<common::Ws, tungstenite::http::Response<Option<Vec<u8>>>> {
    let mut req = server.ws_url(room, "").into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await.expect("upgrade in time") {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(*resp),
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

/// The next text message as JSON.
async fn next_json(ws: &mut common::Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

fn body_of(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> Value {
    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("a JSON error body")
}

/// `ringsync_rate_limited_total{limit="..."}` (or any counter line) from a scrape.
async fn counter(server: &Server, series: &str) -> f64 {
    let text = server.app.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} is exported"))
}

fn limited(limit: &str) -> String {
    format!("ringsync_rate_limited_total{{limit=\"{limit}\"}}")
}

fn room_exists(server: &Server, room: &str) -> bool {
    server.app.rooms.get(&RoomId::parse(room).unwrap()).is_some()
}

#[tokio::test]
async fn websocket_from_a_disallowed_origin_is_refused_before_anything_happens() {
    let server = start(config(&["--allowed-origins", "https://game.example, http://localhost:5173"])).await;
    let refused = ws_connect(&server, "guarded", Some(EVIL)).await.expect_err("refused");
    assert_eq!(refused.status(), 403);
    assert_eq!(body_of(&refused)["code"], "origin_not_allowed");
    assert!(!refused.headers().contains_key("access-control-allow-origin"), "no CORS for a refused origin");
    assert!(!room_exists(&server, "guarded"), "a refused upgrade creates no room");
    // An origin that merely starts like an allowed one is another origin.
    let refused =
        ws_connect(&server, "guarded", Some("https://game.example.evil")).await.expect_err("refused");
    assert_eq!(refused.status(), 403);
    assert!(!room_exists(&server, "guarded"));

    let mut ws = ws_connect(&server, "guarded", Some(GAME)).await.expect("an allowed origin connects");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let mut ws = ws_connect(&server, "guarded", None).await.expect("no Origin (a back-end) connects");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
}

#[tokio::test]
async fn http_api_from_a_disallowed_origin_is_refused() {
    let server = start(config(&["--allowed-origins", GAME])).await;
    let json_ct = ("Content-Type", "application/json");
    let body = r#"{"ops":[{"op":"add","path":"/root","value":"pwned"}]}"#;
    let r = request(&server, "POST", "/v1/rooms/h/changes", &[("Origin", EVIL), json_ct], body).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["code"], "origin_not_allowed");
    assert!(!room_exists(&server, "h"));
    let r = request(&server, "GET", "/v1/rooms/h", &[("Origin", EVIL)], "").await;
    assert_eq!(r.status, 403);

    // Allowed: it works, and the answer carries CORS headers for that origin.
    let r = request(&server, "POST", "/v1/rooms/h/changes", &[("Origin", GAME), json_ct], body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["access-control-allow-origin"], GAME);
    assert!(r.headers["vary"].contains("Origin"));
    // Without Origin: works, no CORS headers.
    let r = request(&server, "GET", "/v1/rooms/h", &[], "").await;
    assert_eq!((r.status, &r.body["state"]["root"]), (200, &json!("pwned")));
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    // Static files and health are served to any origin (they change nothing); CORS headers only
    // for allowed ones, so a page on an allowed origin can load the client library.
    let r = request(&server, "GET", "/client.js", &[("Origin", EVIL)], "").await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = request(&server, "GET", "/client.js", &[("Origin", GAME)], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["access-control-allow-origin"], GAME);
}

#[tokio::test]
async fn only_json_bodies_are_accepted() {
    let server = start(config(&[])).await;
    let body = r#"{"ops":[{"op":"add","path":"/root","value":"pwned"}]}"#;
    // What a cross-site page can send without a preflight.
    for ct in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r =
            request(&server, "POST", "/v1/rooms/t/changes", &[("Origin", EVIL), ("Content-Type", ct)], body)
                .await;
        assert_eq!(r.status, 415, "{ct}: {}", r.body);
        assert_eq!(r.body["code"], "unsupported_media_type");
    }
    let r = request(&server, "POST", "/v1/rooms/t/changes", &[], body).await;
    assert_eq!(r.status, 415, "no Content-Type at all");
    let r =
        request(&server, "POST", "/v1/rooms/t/broadcast", &[("Content-Type", "text/plain")], r#"{"data":1}"#)
            .await;
    assert_eq!(r.status, 415);
    assert!(!room_exists(&server, "t"), "nothing was applied");

    let r = request(
        &server,
        "POST",
        "/v1/rooms/t/changes",
        &[("Content-Type", "application/json; charset=utf-8")],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(&server, "GET", "/v1/rooms/t", &[], "").await;
    assert_eq!(r.body["rev"], 1);
}

#[tokio::test]
async fn cors_preflights_answer_allowed_origins_only() {
    let server = start(config(&["--allowed-origins", GAME])).await;
    let ask = [("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "content-type")];
    let r = request(&server, "OPTIONS", "/v1/rooms/p/changes", &[&[("Origin", GAME)][..], &ask].concat(), "")
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.headers["access-control-allow-origin"], GAME);
    assert!(r.headers["vary"].contains("Origin"));
    assert!(r.headers["access-control-allow-methods"].contains("POST"));
    let allowed = r.headers["access-control-allow-headers"].to_ascii_lowercase();
    for h in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(r.headers["access-control-max-age"].parse::<u64>().unwrap() > 0);

    let r = request(&server, "OPTIONS", "/v1/rooms/p/changes", &[&[("Origin", EVIL)][..], &ask].concat(), "")
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["code"], "origin_not_allowed");
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    assert!(!room_exists(&server, "p"));

    // With the default `*`, any origin is echoed.
    let open = start(config(&[])).await;
    let r =
        request(&open, "OPTIONS", "/v1/rooms/p/changes", &[&[("Origin", EVIL)][..], &ask].concat(), "").await;
    assert_eq!((r.status, r.headers["access-control-allow-origin"].as_str()), (204, EVIL));
}

/// Sends a change over a raw socket with this clientReqId.
async fn send_change(ws: &mut common::Ws, id: u64) {
    let msg = json!({"type": "change", "clientReqId": id, "ops": [{"op": "incr", "path": "/n", "value": 1}]});
    ws.send(Message::text(msg.to_string())).await.unwrap();
}

/// Reads until the ack (a delta entry with `id`) or the reject of change `id`.
async fn outcome(ws: &mut common::Ws, id: u64) -> Value {
    loop {
        let m = next_json(ws).await;
        match m["type"].as_str() {
            Some("reject") if m["clientReqId"] == id => return m,
            Some("delta") if m["changes"].as_array().unwrap().iter().any(|e| e["clientReqId"] == id) => {
                return m;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn changes_over_the_rate_are_rejected_then_the_connection_is_closed() {
    let server = start(config(&[
        "--rate-changes",
        "1",
        "--rate-changes-burst",
        "5",
        "--rate-limit-strikes",
        "3",
        "--rate-limit-window",
        "60",
    ]))
    .await;
    let (changes_before, strikes_before, closed_before) = (
        counter(&server, &limited("changes")).await,
        counter(&server, &limited("strikes")).await,
        counter(&server, "ringsync_connections_closed_total{reason=\"rate_limited\"}").await,
    );
    let mut ws = ws_connect(&server, "flood", None).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    for id in 1..=5 {
        send_change(&mut ws, id).await;
        assert_eq!(outcome(&mut ws, id).await["type"], "delta", "change {id} of the burst is applied");
    }
    send_change(&mut ws, 6).await;
    let r = outcome(&mut ws, 6).await;
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("reject"), Some("rate_limited")), "{r}");
    assert!(r["retryAfterMs"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["rev"], 5);
    let room = server.app.rooms.get(&RoomId::parse("flood").unwrap()).unwrap();
    assert_eq!(room.rev().0, 5, "the refused change was not applied");
    // A broadcast is held to the same rate (it fans out like a change).
    ws.send(Message::text(json!({"type": "broadcast", "data": 1}).to_string())).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("rate_limited")), "{e}");
    assert!(e["retryAfterMs"].as_u64().unwrap() >= 1);
    // Strikes 1 and 2 are spent; the 3rd is still answered, the 4th closes with 4429.
    send_change(&mut ws, 7).await;
    assert_eq!(outcome(&mut ws, 7).await["code"], "rate_limited");
    send_change(&mut ws, 8).await;
    assert_eq!(outcome(&mut ws, 8).await["code"], "rate_limited");
    assert_eq!(close_code(&mut ws).await, 4429);
    assert_eq!(room.rev().0, 5);
    assert!(counter(&server, &limited("changes")).await >= changes_before + 4.0);
    assert!(counter(&server, &limited("strikes")).await >= strikes_before + 1.0);
    let closed = counter(&server, "ringsync_connections_closed_total{reason=\"rate_limited\"}").await;
    assert!(closed >= closed_before + 1.0);
}

#[tokio::test]
async fn the_id_of_a_rate_limited_change_can_be_sent_again() {
    let server = start(config(&["--rate-changes", "1", "--rate-changes-burst", "1"])).await;
    let mut c = Client::connect(&server, "again").await;
    c.change("overwrite", json!([{"op": "add", "path": "/a", "value": 1}])).await;
    c.sync_to(1).await;
    let id = c.change("overwrite", json!([{"op": "add", "path": "/b", "value": 2}])).await;
    let r = c.until("reject").await;
    assert_eq!((r["code"].as_str(), r["clientReqId"].as_u64()), (Some("rate_limited"), Some(id)));
    tokio::time::sleep(Duration::from_millis(r["retryAfterMs"].as_u64().unwrap() + 50)).await;
    c.send(json!({"type": "change", "clientReqId": id, "ops": [{"op": "add", "path": "/b", "value": 2}]}))
        .await;
    let m = c.recv_raw().await;
    assert_eq!(m["type"], "delta", "the same clientReqId is applied after the wait, not a duplicate: {m}");
    assert_eq!(m["changes"][0]["clientReqId"], id);
}

#[tokio::test]
async fn inbound_bytes_over_the_rate_are_refused() {
    let server = start(config(&[
        "--max-message-bytes",
        "200",
        "--rate-inbound-bytes",
        "1",
        "--rate-inbound-bytes-burst",
        "1000",
        "--rate-limit-strikes",
        "1",
    ]))
    .await;
    let before = counter(&server, &limited("inbound_bytes")).await;
    let mut ws = ws_connect(&server, "bytes", None).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    // Exactly 100 bytes each: ten fit the 1,000-byte burst.
    let ping = |i: usize| {
        let base = json!({"type": "ping", "t": ""}).to_string().len();
        json!({"type": "ping", "t": format!("{i}{}", "x".repeat(100 - base - 1))}).to_string()
    };
    assert_eq!(ping(0).len(), 100);
    for i in 0..10 {
        ws.send(Message::text(ping(i))).await.unwrap();
        loop {
            let m = next_json(&mut ws).await;
            if m["type"] == "pong" {
                break;
            }
        }
    }
    // The 1,001st byte: a change, refused with its clientReqId and not applied.
    send_change(&mut ws, 1).await;
    let r = outcome(&mut ws, 1).await;
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("reject"), Some("rate_limited")), "{r}");
    assert!(r["retryAfterMs"].as_u64().unwrap() >= 1);
    assert_eq!(server.app.rooms.get(&RoomId::parse("bytes").unwrap()).unwrap().rev().0, 0, "not applied");
    // One strike allowed: the next refusal closes.
    ws.send(Message::text(ping(11))).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("rate_limited")), "{e}");
    assert_eq!(close_code(&mut ws).await, 4429);
    assert!(counter(&server, &limited("inbound_bytes")).await >= before + 2.0);
}

#[tokio::test]
async fn new_connections_per_ip_are_rate_limited() {
    let server = start(config(&["--rate-ip-connections", "1", "--rate-ip-connections-burst", "3"])).await;
    let before = counter(&server, &limited("ip_connection_rate")).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(ws_connect(&server, "ip", None).await.expect("within the burst"));
    }
    let refused = ws_connect(&server, "ip", None).await.expect_err("the 4th within a second is refused");
    assert_eq!(refused.status(), 429);
    assert_eq!(body_of(&refused)["code"], "rate_limited");
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(counter(&server, &limited("ip_connection_rate")).await >= before + 1.0);
}

#[tokio::test]
async fn open_connections_per_ip_are_capped_and_released_on_close() {
    let server = start(config(&["--max-ip-connections", "2", "--rate-ip-connections", "0"])).await;
    let before = counter(&server, &limited("ip_connections")).await;
    let mut a = ws_connect(&server, "cap", None).await.unwrap();
    let _b = ws_connect(&server, "cap", None).await.unwrap();
    let refused = ws_connect(&server, "cap", None).await.expect_err("a 3rd from the same IP is refused");
    assert_eq!(refused.status(), 429);
    assert_eq!(body_of(&refused)["code"], "rate_limited");
    assert!(refused.headers().contains_key("retry-after"));
    assert!(counter(&server, &limited("ip_connections")).await >= before + 1.0);
    // A closed connection gives its place back.
    a.close(None).await.unwrap();
    drop(a);
    let local: IpAddr = [127, 0, 0, 1].into();
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.app.guard.ip_connections(local) > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the slot is released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = ws_connect(&server, "cap", None).await.expect("a place is free again");
    assert_eq!(next_json(&mut c).await["type"], "welcome");
    // Closing the rest releases every place (the IP is then forgotten).
    drop((c, _b));
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.app.guard.ip_connections(local) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "every slot is released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn http_requests_are_rate_limited_per_token_else_per_ip() {
    let server = start(config(&["--rate-http", "1", "--rate-http-burst", "3"])).await;
    let before = counter(&server, &limited("http_requests")).await;
    for _ in 0..3 {
        assert_eq!(request(&server, "GET", "/v1/rooms/r", &[], "").await.status, 200);
    }
    let r = request(&server, "GET", "/v1/rooms/r", &[], "").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["code"], "rate_limited");
    assert!(r.headers["retry-after"].parse::<u64>().unwrap() >= 1);
    // A POST over the limit is refused before its body is read, and not applied.
    let json_ct = ("Content-Type", "application/json");
    let r = request(
        &server,
        "POST",
        "/v1/rooms/r/changes",
        &[json_ct],
        r#"{"ops":[{"op":"add","path":"/a","value":1}]}"#,
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(!room_exists(&server, "r"));
    // A bearer token is its own caller, with its own burst.
    let alice = ("Authorization", "Bearer alice-token");
    for _ in 0..3 {
        assert_eq!(request(&server, "GET", "/v1/rooms/r", &[alice], "").await.status, 200);
    }
    assert_eq!(request(&server, "GET", "/v1/rooms/r", &[alice], "").await.status, 429);
    let bob = ("Authorization", "Bearer bob-token");
    assert_eq!(request(&server, "GET", "/v1/rooms/r", &[bob], "").await.status, 200);
    // Health and metrics are not API calls.
    assert_eq!(request(&server, "GET", "/healthz", &[], "").await.status, 200);
    assert!(counter(&server, &limited("http_requests")).await >= before + 3.0);
}

#[tokio::test]
async fn keyed_limiter_state_is_swept() {
    // A burst of 1 refills in a millisecond: the once-a-second sweep forgets every caller.
    let server = start(config(&["--rate-http", "1000", "--rate-http-burst", "1"])).await;
    // The sweep may run between the requests and forget the first ones: try again then.
    let mut tries = 0;
    loop {
        for token in ["Bearer a", "Bearer b", "Bearer c"] {
            request(&server, "GET", "/v1/rooms/s", &[("Authorization", token)], "").await;
        }
        if server.app.guard.keyed_entries() >= 3 {
            break;
        }
        tries += 1;
        assert!(tries < 5, "three callers are tracked");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.app.guard.keyed_entries() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the sweep drops refilled callers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_limit_is_exported_at_zero() {
    let server = start(config(&[])).await;
    for limit in
        ["changes", "inbound_bytes", "strikes", "ip_connection_rate", "ip_connections", "http_requests"]
    {
        counter(&server, &limited(limit)).await;
    }
    counter(&server, "ringsync_connections_closed_total{reason=\"rate_limited\"}").await;
}
