//! The admin API (`/v1/admin/...`) against the real server on a free port, over real sockets:
//! paging, details, kick (with and without ending the session), close, delete, 404s, who may
//! call it (`--admin-token-file`; loopback otherwise, whose refusal of other peers is unit-tested
//! in `src/admin.rs`), its metrics, and delete racing writes and WebSocket admissions.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, Server, WAIT, binary, close_code, config, http, post_ops, start};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// One HTTP/1.1 request with extra header lines (each `Name: value`); returns status and JSON.
async fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let body = body.unwrap_or("");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    let req = format!("{head}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("response in time").unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

async fn kick(server: &Server, room: &str, body: Value) -> (u16, Value) {
    http(server, "POST", &format!("/v1/admin/rooms/{room}/kick"), Some(&body.to_string())).await
}

async fn details(server: &Server, room: &str) -> (u16, Value) {
    http(server, "GET", &format!("/v1/admin/rooms/{room}"), None).await
}

/// Reads until the server closes; panics on anything but deltas/pings before it.
async fn expect_close(c: &mut Client) -> u16 {
    c.closed().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_through_every_room_exactly_once() {
    let server = start(config(&[])).await;
    let mut names: Vec<String> = (0..23).map(|i| format!("room-{:02}", (i * 7) % 23)).collect();
    for n in &names {
        let (s, _) = post_ops(&server, n, json!([{"op": "add", "path": "/v", "value": n}])).await;
        assert_eq!(s, 200);
    }
    names.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(a) => format!("/v1/admin/rooms?limit=5&after={a}"),
            None => "/v1/admin/rooms?limit=5".to_owned(),
        };
        let (s, page) = http(&server, "GET", &path, None).await;
        assert_eq!(s, 200, "{page}");
        let rooms = page["rooms"].as_array().unwrap();
        assert!(rooms.len() <= 5);
        seen.extend(rooms.iter().map(|r| r["name"].as_str().unwrap().to_owned()));
        match page.get("next") {
            Some(next) => {
                assert_eq!(next, &rooms.last().unwrap()["name"], "next is the last name of the page");
                after = Some(next.as_str().unwrap().to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen, names, "every room once, in name order");
    // The fields of one room.
    let (_, page) = http(&server, "GET", "/v1/admin/rooms?limit=1", None).await;
    let r = &page["rooms"][0];
    assert_eq!(r["name"], "room-00");
    assert_eq!(r["rev"], 1);
    assert_eq!(r["clients"], 0);
    assert_eq!(r["ring"], json!({"entries": 1, "capacity": 1024}));
    assert_eq!(r["stateBytes"], json!({"v": "room-00"}).to_string().len());
    assert!(r["historyBytes"].as_u64().unwrap() > 0);
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    // The default page holds them all; bad limits are refused.
    let (_, page) = http(&server, "GET", "/v1/admin/rooms", None).await;
    assert_eq!(page["rooms"].as_array().unwrap().len(), 23);
    assert!(page.get("next").is_none());
    for bad in ["0", "1001", "x", "-1"] {
        let (s, v) = http(&server, "GET", &format!("/v1/admin/rooms?limit={bad}"), None).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("invalid")), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_show_the_connected_clients_with_their_lag() {
    let server = start(config(&[])).await;
    let before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut a = Client::connect(&server, "d").await;
    let mut b = Client::connect(&server, "d").await;
    for i in 0..3 {
        a.change("overwrite", json!([{"op": "add", "path": "/n", "value": i}])).await;
    }
    a.sync_to(3).await;
    b.sync_to(3).await;
    let (s, d) = details(&server, "d").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!((d["name"].as_str(), d["rev"].as_u64(), d["clients"].as_u64()), (Some("d"), Some(3), Some(2)));
    assert_eq!(d["epoch"], a.epoch.as_str());
    let connected = d["connected"].as_array().unwrap();
    let mut ids: Vec<&str> = connected.iter().map(|c| c["client"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut want = vec![a.client.as_str(), b.client.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for c in connected {
        // Both have been sent revision 3: no lag.
        assert_eq!(c["lag"], 0, "{c}");
        let since = c["connectedSince"].as_u64().unwrap();
        assert!(before <= since && since <= now, "{since} in {before}..={now}");
        assert!(c.get("user").is_none(), "no user without tokens: {c}");
    }
    drop(b);
    // A closed connection leaves the list (its session stays resumable).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, d) = details(&server, "d").await;
        if d["connected"].as_array().unwrap().len() == 1 {
            assert_eq!(d["connected"][0]["client"], a.client.as_str());
            assert_eq!(d["sessions"], 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the closed client leaves the list");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_client_sees_4009_and_can_resume_its_session() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "k").await;
    let mut other = Client::connect(&server, "k").await;
    let (s, v) = kick(&server, "k", json!({"client": a.client})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"client": a.client, "closed": true, "sessionEnded": false}));
    assert_eq!(expect_close(&mut a).await, 4009);
    // Nobody else is touched.
    other.change("overwrite", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    other.sync_to(1).await;
    let q = format!("session={}&epoch={}&since={}", a.session, a.epoch, a.rev);
    let back = Client::connect_query(&server, "k", &q).await;
    assert_eq!(back.welcome["resumed"], true);
    assert_eq!(back.client, a.client, "same session, same client id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_that_ends_the_session_makes_the_resume_start_afresh() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "k2").await;
    let (s, v) = kick(&server, "k2", json!({"client": a.client, "endSession": true})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sessionEnded"], true);
    assert_eq!(expect_close(&mut a).await, 4009);
    let q = format!("session={}&epoch={}&since={}", a.session, a.epoch, a.rev);
    let back = Client::connect_query(&server, "k2", &q).await;
    assert_eq!(back.welcome["resumed"], false);
    assert_ne!(back.client, a.client, "a new session, a new client id");
    // Its old client id is gone from the room.
    let (s, _) = kick(&server, "k2", json!({"client": a.client, "endSession": true})).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_room_disconnects_everyone_and_keeps_its_state() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "c").await;
    let mut b = Client::connect(&server, "c").await;
    a.change("overwrite", json!([{"op": "add", "path": "/kept", "value": true}])).await;
    a.sync_to(1).await;
    let (s, v) = http(&server, "POST", "/v1/admin/rooms/c/close", None).await;
    assert_eq!((s, v["closed"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(expect_close(&mut a).await, 4010);
    assert_eq!(expect_close(&mut b).await, 4010);
    let (_, room) = http(&server, "GET", "/v1/rooms/c", None).await;
    assert_eq!((room["rev"].as_u64(), &room["state"]), (Some(1), &json!({"kept": true})));
    assert_eq!(room["epoch"], a.epoch.as_str(), "the same room");
    // Sessions stay resumable.
    let q = format!("session={}&epoch={}&since={}", a.session, a.epoch, a.rev);
    let back = Client::connect_query(&server, "c", &q).await;
    assert_eq!((back.welcome["resumed"].as_bool(), back.client.as_str()), (Some(true), a.client.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_disconnects_everyone_and_the_next_use_starts_afresh() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "del").await;
    let mut b = Client::connect(&server, "del").await;
    a.change("overwrite", json!([{"op": "add", "path": "/gone", "value": 1}])).await;
    a.sync_to(1).await;
    let (s, v) = http(&server, "DELETE", "/v1/admin/rooms/del", None).await;
    assert_eq!((s, v["deleted"].as_bool(), v["closed"].as_u64()), (200, Some(true), Some(2)), "{v}");
    assert_eq!(expect_close(&mut a).await, 4011);
    assert_eq!(expect_close(&mut b).await, 4011);
    // Gone, and reading does not bring it back.
    let (s, _) = details(&server, "del").await;
    assert_eq!(s, 404);
    let (_, room) = http(&server, "GET", "/v1/rooms/del", None).await;
    assert_eq!((room["rev"].as_u64(), &room["state"]), (Some(0), &json!({})));
    // Its sessions ended: a resume is a new session in a fresh room (new epoch, rev 0).
    let q = format!("session={}&epoch={}&since={}", a.session, a.epoch, a.rev);
    let back = Client::connect_query(&server, "del", &q).await;
    assert_eq!(back.welcome["resumed"], false);
    assert_ne!(back.epoch, a.epoch);
    assert_eq!((back.rev, &back.state), (0, &json!({})));
    let (s, d) = details(&server, "del").await;
    assert_eq!((s, d["rev"].as_u64(), d["clients"].as_u64()), (200, Some(0), Some(1)));
    assert_eq!(d["epoch"], back.epoch.as_str());
    assert_ne!(d["epoch"], a.epoch.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rooms_and_clients_are_404_and_bad_requests_400() {
    let server = start(config(&[])).await;
    let (s, v) = details(&server, "nope").await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
    for (method, path) in [
        ("POST", "/v1/admin/rooms/nope/close"),
        ("DELETE", "/v1/admin/rooms/nope"),
        ("GET", "/v1/admin/whatever"),
        ("GET", "/v1/admin/rooms/nope/x/y"),
    ] {
        let (s, v) = http(&server, method, path, None).await;
        assert_eq!((s, v["code"].as_str()), (404, Some("not_found")), "{method} {path}");
    }
    let (s, _) = kick(&server, "nope", json!({"client": "c1"})).await;
    assert_eq!(s, 404);
    // None of that created a room.
    let (_, page) = http(&server, "GET", "/v1/admin/rooms", None).await;
    assert_eq!(page["rooms"], json!([]));
    let _a = Client::connect(&server, "here").await;
    let (s, v) = kick(&server, "here", json!({"client": "c999"})).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")), "{v}");
    for bad in [json!({}), json!({"client": 7}), json!({"client": "c1", "endSession": "yes"}), json!([])] {
        let (s, v) = kick(&server, "here", bad.clone()).await;
        assert_eq!((s, v["code"].as_str()), (400, Some("bad_message")), "{bad}");
    }
    let (s, v) = http(&server, "POST", "/v1/admin/rooms/here/kick", Some("{not json")).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_message")), "{v}");
    let (s, v) = http(&server, "GET", "/v1/admin/rooms/bad%20name", None).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_room")), "{v}");
    let (s, v) = http(&server, "PUT", "/v1/admin/rooms/here", None).await;
    assert_eq!((s, v["code"].as_str()), (405, Some("method_not_allowed")), "{v}");
    let (s, _) = http(&server, "GET", "/v1/admin/rooms/here/kick", None).await;
    assert_eq!(s, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_file_only_its_bearer_is_served() {
    let path = std::env::temp_dir().join(format!("ringsync-admin-test-{}", std::process::id()));
    std::fs::write(&path, "tok-123\n").unwrap();
    let server = start(config(&["--admin-token-file", path.to_str().unwrap()])).await;
    std::fs::remove_file(&path).unwrap();
    let _a = Client::connect(&server, "t").await;
    for path in ["/v1/admin/rooms", "/v1/admin/rooms/t", "/v1/admin/rooms/missing"] {
        for headers in [&[][..], &["Authorization: Bearer tok-12"], &["Authorization: Basic tok-123"]] {
            let (s, v) = request(&server, "GET", path, headers, None).await;
            assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")), "{path} {headers:?}");
        }
    }
    let (s, v) = request(&server, "DELETE", "/v1/admin/rooms/t", &["Authorization: Bearer nope"], None).await;
    assert_eq!(s, 401, "{v}");
    let auth = ["Authorization: Bearer tok-123"];
    let (s, v) = request(&server, "GET", "/v1/admin/rooms", &auth, None).await;
    assert_eq!((s, v["rooms"][0]["name"].as_str()), (200, Some("t")), "{v}");
    let (s, v) = request(&server, "GET", "/v1/admin/rooms/t", &auth, None).await;
    assert_eq!((s, v["clients"].as_u64()), (200, Some(1)), "{v}");
    let (s, _) = request(&server, "GET", "/v1/admin/rooms/missing", &auth, None).await;
    assert_eq!(s, 404, "authorized callers learn what exists");
}

#[test]
fn an_unusable_token_file_stops_the_server_naming_the_flag() {
    let empty = std::env::temp_dir().join(format!("ringsync-admin-empty-{}", std::process::id()));
    std::fs::write(&empty, " \n").unwrap();
    let missing = std::env::temp_dir().join("ringsync-admin-no-such-file/token");
    for path in [&empty, &missing] {
        let mut child = binary()
            .args(["--listen", "127.0.0.1:0", "--admin-token-file", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not stop on {path:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{path:?}: {err}");
        assert!(err.contains("--admin-token-file"), "{err}");
    }
    std::fs::remove_file(&empty).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_and_their_closes_are_counted() {
    let server = start(config(&[])).await;
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap();
    for action in ["list", "details", "kick", "close", "delete"] {
        assert!(m.contains(&format!("ringsync_admin_actions_total{{action=\"{action}\"}}")), "{action}");
    }
    for reason in ["kicked", "room_closed", "room_deleted"] {
        assert!(m.contains(&format!("ringsync_connections_closed_total{{reason=\"{reason}\"}}")), "{reason}");
    }
    let count = |m: &str, action: &str| -> f64 {
        let key = format!("ringsync_admin_actions_total{{action=\"{action}\"}} ");
        m.lines().find_map(|l| l.strip_prefix(&key)).map_or(0.0, |v| v.parse().unwrap())
    };
    let before = count(m, "close");
    let _a = Client::connect(&server, "mc").await;
    let (s, _) = http(&server, "POST", "/v1/admin/rooms/mc/close", None).await;
    assert_eq!(s, 200);
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    assert!(count(m.as_str().unwrap(), "close") >= before + 1.0);
}

/// HTTP writes race a delete: none is acked into the deleted room after the delete (each is
/// either committed before it, committed to the fresh room, or refused with `gone`), and a handle
/// on the old room held by a request in flight commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_writes_loses_no_acknowledged_write() {
    // 240 POSTs from one IP as fast as they go: over the default --rate-http, which is not what
    // this test is about.
    let server = Arc::new(start(config(&["--rate-http", "0"])).await);
    let (s, _) = post_ops(&server, "race", json!([{"op": "incr", "path": "/n", "value": 1}])).await;
    assert_eq!(s, 200);
    let old = server.app.rooms.get(&ringsync::ids::RoomId::parse("race").unwrap()).unwrap();
    let acked = Arc::new(AtomicUsize::new(1));
    let gone = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (server, acked, gone) = (server.clone(), acked.clone(), gone.clone());
            tokio::spawn(async move {
                for _ in 0..60 {
                    let (s, v) =
                        post_ops(&server, "race", json!([{"op": "incr", "path": "/n", "value": 1}])).await;
                    match s {
                        200 => acked.fetch_add(1, Ordering::Relaxed),
                        410 => {
                            assert_eq!(v["code"], "gone", "{v}");
                            gone.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => panic!("{s} {v}"),
                    };
                }
            })
        })
        .collect();
    // Delete once some writes have landed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while old.rev().0 < 20 {
        assert!(tokio::time::Instant::now() < deadline, "writes land");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (s, _) = http(&server, "DELETE", "/v1/admin/rooms/race", None).await;
    assert_eq!(s, 200);
    let old_rev_at_delete = old.rev();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(60), w).await.expect("writers finish").unwrap();
    }
    assert_eq!(old.rev(), old_rev_at_delete, "nothing committed into the deleted room after the delete");
    let new =
        server.app.rooms.get(&ringsync::ids::RoomId::parse("race").unwrap()).expect("recreated by writes");
    assert_ne!(new.epoch(), old.epoch());
    let (_, state) = new.state();
    let new_n = state["n"].as_u64().unwrap_or(0);
    assert_eq!(new_n, new.rev().0, "every commit to the fresh room is one increment");
    let acked = acked.load(Ordering::Relaxed) as u64;
    assert_eq!(
        acked,
        old_rev_at_delete.0 + new_n,
        "every acked write is in the old room (before the delete) or the new one"
    );
    // A request still holding the old room cannot commit into it.
    let ops = ringsync::patch::parse_patch(json!([{"op": "incr", "path": "/n", "value": 1}])).unwrap();
    let req = ringsync::room::ChangeRequest {
        author: ringsync::ids::ClientId::HTTP,
        user: None,
        client_req_id: None,
        base_rev: None,
        mode: ringsync::protocol::Mode::Overwrite,
        ops,
        extras: Default::default(),
    };
    let r = server.app.commit(&old, req).unwrap_err();
    assert_eq!(r.code.as_str(), "gone");
    assert_eq!(old.rev(), old_rev_at_delete);
}

/// WebSocket connections racing a delete: each one either lands in the fresh room or is closed
/// with 4011; none is left in the deleted room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_websocket_admissions_leaves_nobody_in_the_deleted_room() {
    let server = Arc::new(start(config(&[])).await);
    let first = Client::connect(&server, "wsrace").await;
    let old_epoch = first.epoch.clone();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 8)).await;
                let (mut ws, _) =
                    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.ws_url("wsrace", "")))
                        .await
                        .expect("connect in time")
                        .expect("upgrade");
                // The first message: a welcome, or the close of a connection refused on arrival.
                let welcome = loop {
                    match tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time") {
                        Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
                        Some(Ok(Message::Close(f))) => return (None, f.map(|f| u16::from(f.code)), ws),
                        Some(Ok(_)) => continue,
                        other => panic!("{other:?}"),
                    }
                };
                assert_eq!(welcome["type"], "welcome");
                (welcome["epoch"].as_str().map(str::to_owned), None, ws)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let (s, _) = http(&server, "DELETE", "/v1/admin/rooms/wsrace", None).await;
    assert_eq!(s, 200);
    let mut alive = Vec::new();
    let (mut refused, mut closed_later) = (0, 0);
    for t in tasks {
        let (epoch, code, mut ws) =
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("in time").unwrap();
        match (epoch, code) {
            (None, code) => {
                assert_eq!(code, Some(4011));
                refused += 1;
            }
            (Some(e), _) if e == old_epoch => {
                assert_eq!(close_code(&mut ws).await, 4011, "a client of the deleted room is closed");
                closed_later += 1;
            }
            (Some(e), _) => alive.push((e, ws)),
        }
    }
    let (s, d) = details(&server, "wsrace").await;
    if alive.is_empty() {
        // Every connection came before the delete; the room may not exist again.
        assert!(s == 404 || d["clients"] == 0, "{s} {d}");
    } else {
        assert_eq!(s, 200);
        assert!(alive.iter().all(|(e, _)| d["epoch"] == e.as_str()), "the living are in the fresh room");
        assert_ne!(d["epoch"], old_epoch.as_str());
        assert_eq!(d["connected"].as_array().unwrap().len(), alive.len());
    }
    assert_eq!(refused + closed_later + alive.len(), 24);
    drop(first);
}

/// Without a token file the admin API trusts loopback callers, and an operator's browser is one:
/// a page it visits must not reach the admin API. `--allowed-origins *` (the default) does not
/// cover it; only an origin listed by name does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pages_reach_the_admin_api_only_from_origins_listed_by_name() {
    let server = start(config(&[])).await;
    let mut c = Client::connect(&server, "csrf").await;
    let evil = "Origin: http://evil.example";
    let (s, v) = request(&server, "POST", "/v1/admin/rooms/csrf/close", &[evil], None).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("origin_not_allowed")), "{v}");
    let (s, _) = request(&server, "DELETE", "/v1/admin/rooms/csrf", &[evil], None).await;
    assert_eq!(s, 403);
    let preflight = ["Origin: http://evil.example", "Access-Control-Request-Method: DELETE"];
    let (s, _) = request(&server, "OPTIONS", "/v1/admin/rooms/csrf", &preflight, None).await;
    assert_eq!(s, 403, "no preflight for the admin API under *");
    // The room's API is open to every origin under `*`, the admin API is not.
    let (s, _) = request(&server, "GET", "/v1/rooms/csrf", &[evil], None).await;
    assert_eq!(s, 200);
    // Nothing happened: the client is still connected and served.
    let (s, _) = post_ops(&server, "csrf", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    assert_eq!(s, 200);
    c.sync_to(1).await;
    // Without an Origin (curl, a back-end) the loopback rule applies as before.
    let (s, _) = request(&server, "GET", "/v1/admin/rooms/csrf", &[], None).await;
    assert_eq!(s, 200);

    let server = start(config(&["--allowed-origins", "http://ops.example"])).await;
    let _c = Client::connect(&server, "csrf").await;
    let (s, _) = request(&server, "GET", "/v1/admin/rooms/csrf", &["Origin: http://ops.example"], None).await;
    assert_eq!(s, 200);
    let preflight = ["Origin: http://ops.example", "Access-Control-Request-Method: DELETE"];
    let (s, _) = request(&server, "OPTIONS", "/v1/admin/rooms/csrf", &preflight, None).await;
    assert_eq!(s, 204);
    let (s, _) = request(&server, "GET", "/v1/admin/rooms/csrf", &[evil], None).await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_stored_rooms_that_are_not_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let mut first = start(config(&["--data-dir", &data])).await;
    for n in ["b-stored", "d-stored", "f-stored"] {
        let (s, _) = post_ops(&first, n, json!([{"op": "add", "path": "/v", "value": n}])).await;
        assert_eq!(s, 200);
    }
    first.shutdown().await;
    drop(first);
    // After a restart nothing is in memory until used; two rooms are created or loaded now.
    let server = start(config(&["--data-dir", &data])).await;
    let (s, _) = post_ops(&server, "c-new", json!([{"op": "add", "path": "/v", "value": 1}])).await;
    assert_eq!(s, 200);
    let (s, room) = http(&server, "GET", "/v1/rooms/d-stored", None).await;
    assert_eq!((s, &room["rev"]), (200, &json!(1)));
    let (s, page) = http(&server, "GET", "/v1/admin/rooms", None).await;
    assert_eq!(s, 200, "{page}");
    let rooms = page["rooms"].as_array().unwrap();
    let listed: Vec<(&str, bool)> =
        rooms.iter().map(|r| (r["name"].as_str().unwrap(), r["loaded"].as_bool().unwrap())).collect();
    assert_eq!(
        listed,
        [("b-stored", false), ("c-new", true), ("d-stored", true), ("f-stored", false)],
        "{page}"
    );
    assert!(rooms[0].get("rev").is_none(), "a room not in memory is listed by name: {}", rooms[0]);
    assert_eq!(rooms[2]["rev"], 1);
    // Pages cross both lists: two at a time, every room once.
    let (_, p1) = http(&server, "GET", "/v1/admin/rooms?limit=2", None).await;
    assert_eq!(p1["next"], "c-new", "{p1}");
    let (_, p2) = http(&server, "GET", "/v1/admin/rooms?limit=2&after=c-new", None).await;
    let names: Vec<&str> =
        p2["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["d-stored", "f-stored"], "{p2}");
    assert!(p2.get("next").is_none(), "{p2}");
}
