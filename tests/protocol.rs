//! Protocol v1 over real sockets against the real server (in-process, free port).

mod common;

use common::{Client, config, http, post_ops, start};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn add(path: &str, v: Value) -> Value {
    json!([{"op": "add", "path": path, "value": v}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_converge_with_gapless_streams_and_single_acks() {
    let server = start(config(&[])).await;
    let (s, _) = post_ops(&server, "conv", json!([{"op":"add","path":"/by","value":{}}])).await;
    assert_eq!(s, 200);
    let mut cs = vec![
        Client::connect(&server, "conv").await,
        Client::connect(&server, "conv").await,
        Client::connect(&server, "conv").await,
    ];
    // Interleave: every client fires changes without waiting for anything.
    for round in 0..30 {
        for (i, c) in cs.iter_mut().enumerate() {
            c.change(
                "overwrite",
                json!([
                    {"op": "incr", "path": "/count", "value": 1},
                    {"op": "add", "path": format!("/by/c{i}"), "value": round}
                ]),
            )
            .await;
        }
    }
    for c in cs.iter_mut() {
        while c.pending() > 0 {
            c.recv().await;
        }
    }
    let (_, room) = http(&server, "GET", "/v1/rooms/conv", None).await;
    let head = room["rev"].as_u64().unwrap();
    for c in cs.iter_mut() {
        c.sync_to(head).await;
        assert_eq!(c.state, room["state"], "client {} converged", c.client);
        // Acks arrive in rev order.
        assert!(c.acks.windows(2).all(|w| w[0].1 < w[1].1));
    }
    let committed: usize = cs.iter().map(|c| c.acks.len()).sum();
    assert!(cs.iter().all(|c| c.rejects.is_empty()));
    assert_eq!(committed, 90, "every change was acked exactly once");
    assert_eq!(head, 91);
    assert_eq!(room["state"]["count"], 90);
    for c in &cs {
        assert_eq!(c.others.len(), 60, "everyone else's changes arrive once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_converge_and_acks_sit_in_rev_order() {
    let server = start(config(&[])).await;
    let (s, _) = post_ops(&server, "mix", json!([{"op":"add","path":"/by","value":{}}])).await;
    assert_eq!(s, 200);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&server, "mix").await;
        tasks.push(tokio::spawn(async move {
            for round in 0..40 {
                c.change(
                    "overwrite",
                    json!([
                        {"op": "incr", "path": "/count", "value": 1},
                        {"op": "add", "path": format!("/by/w{i}"), "value": round}
                    ]),
                )
                .await;
                if round % 7 == 0 {
                    c.recv().await;
                }
            }
            while c.pending() > 0 {
                c.recv().await;
            }
            c
        }));
    }
    let mut cs = Vec::new();
    for t in tasks {
        cs.push(t.await.unwrap());
    }
    let (_, room) = http(&server, "GET", "/v1/rooms/mix", None).await;
    assert_eq!(room["rev"], 121);
    assert_eq!(room["state"]["count"], 120);
    for c in cs.iter_mut() {
        c.sync_to(121).await;
        assert_eq!(c.state, room["state"]);
        assert_eq!(c.acks.len(), 40);
        assert!(c.rejects.is_empty());
        assert!(c.acks.windows(2).all(|w| w[0].1 < w[1].1), "acks in rev order");
        let at_connect = c.welcome["rev"].as_u64().unwrap() as usize;
        assert_eq!(
            c.others.len() + c.acks.len(),
            121 - at_connect,
            "every later change arrives exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_a_snapshot_and_converges_while_others_flow() {
    // A small ring and large changes so the slow client's socket buffers fill up.
    // 40 MB sent as fast as possible: past the default --rate-inbound-bytes.
    let server = start(config(&["--history", "16", "--rate-inbound-bytes", "0"])).await;
    let mut slow = Client::connect(&server, "slow").await;
    let mut fast = Client::connect(&server, "slow").await;
    let mut writer = Client::connect(&server, "slow").await;
    let big = "x".repeat(100_000);
    for i in 0..400u64 {
        writer.change("overwrite", json!([{"op": "add", "path": "/blob", "value": format!("{i}{big}")}, {"op": "add", "path": "/i", "value": i}])).await;
        if i % 20 == 19 {
            // The fast reader keeps up while the slow one reads nothing.
            writer.sync_to(i + 1).await;
            fast.sync_to(i + 1).await;
        }
    }
    writer.sync_to(400).await;
    fast.sync_to(400).await;
    assert_eq!(fast.state["i"], 399);
    // Now the slow client reads: it must converge, through at least one snapshot, having
    // received far fewer frames than changes (the server kept no per-change backlog).
    slow.sync_to(400).await;
    assert_eq!(slow.state, fast.state);
    assert!(slow.snapshots >= 2, "fell behind the ring: snapshot (got {})", slow.snapshots);
    assert!(slow.deltas + slow.snapshots < 200, "coalesced: {} deltas", slow.deltas);
    // The server is still healthy for everyone.
    fast.change("overwrite", add("/after", json!(true))).await;
    fast.sync_to(401).await;
    slow.sync_to(401).await;
    assert_eq!(slow.state, fast.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_inside_ring_outside_ring_other_epoch_and_dedupe() {
    let server = start(config(&["--history", "8"])).await;
    let mut a = Client::connect(&server, "res").await;
    let mut other = Client::connect(&server, "res").await;
    a.change("overwrite", add("/a", json!(1))).await;
    a.change("overwrite", add("/b", json!(2))).await;
    a.sync_to(2).await;
    let (session, epoch, held_rev, held_state) = (a.session.clone(), a.epoch.clone(), a.rev, a.state.clone());
    let client_id = a.client.clone();
    drop(a);

    // Inside the ring: a delta from `since`.
    for i in 0..3 {
        other.change("overwrite", add("/o", json!(i))).await;
    }
    other.sync_to(5).await;
    let q = format!("session={session}&epoch={epoch}&since={held_rev}");
    let mut b = Client::connect_query(&server, "res", &q).await;
    // connect_query applied the first frame to an empty state; redo with what the client held.
    assert_eq!(b.welcome["resumed"], true);
    assert_eq!(b.client, client_id, "client id is stable across resumes");
    assert_eq!(b.welcome["lastClientReqId"], 2);
    assert_eq!((b.deltas, b.snapshots), (1, 0), "resume inside the ring gets a delta");
    let mut state = held_state.clone();
    for e in &b.others {
        let ops = ringsync::patch::parse_patch(e["ops"].clone()).unwrap();
        ringsync::patch::apply(&mut state, &ops).unwrap();
    }
    assert_eq!(state, other.state);

    // Resending already-processed changes applies none of them twice.
    b.send(json!({"type": "change", "clientReqId": 1, "ops": add("/a", json!(100))})).await;
    b.send(json!({"type": "change", "clientReqId": 2, "ops": add("/b", json!(200))})).await;
    let e1 = b.until("error").await;
    let e2 = b.until("error").await;
    assert_eq!((e1["code"].as_str(), e2["code"].as_str()), (Some("duplicate"), Some("duplicate")));
    assert_eq!(e1["clientReqId"], 1);
    let (_, room) = http(&server, "GET", "/v1/rooms/res", None).await;
    assert_eq!((room["rev"].as_u64(), &room["state"]["a"]), (Some(5), &json!(1)));
    drop(b);

    // Outside the ring: a snapshot.
    for i in 0..20 {
        other.change("overwrite", add("/o", json!(i))).await;
    }
    other.sync_to(25).await;
    let c = Client::connect_query(&server, "res", &format!("session={session}&epoch={epoch}&since=5")).await;
    assert_eq!((c.deltas, c.snapshots), (0, 1), "behind the ring gets a snapshot");
    assert_eq!(c.state, other.state);
    drop(c);

    // Another epoch: a snapshot even though the rev is current.
    let d = Client::connect_query(&server, "res", &format!("session={session}&epoch=stale&since=25")).await;
    assert_eq!((d.deltas, d.snapshots), (0, 1));
    drop(d);

    // Unknown session: a new one, never an error.
    let e = Client::connect_query(&server, "res", "session=nope").await;
    assert_eq!(e.welcome["resumed"], false);
    assert_ne!(e.client, client_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_modes_and_reject_codes() {
    let server =
        start(config(&["--max-ops-per-change", "3", "--max-state-bytes", "2000", "--history", "4"])).await;
    let mut a = Client::connect(&server, "modes").await;
    let mut b = Client::connect(&server, "modes").await;
    a.change("overwrite", add("/board", json!({"e2": "P", "d2": "P"}))).await;
    a.sync_to(1).await;
    b.sync_to(1).await;

    // rev: first writer wins.
    a.change("rev", add("/r", json!("a"))).await;
    a.sync_to(2).await;
    let id = b.change("rev", add("/r", json!("b"))).await; // b's baseRev is 1
    let r = b.until("reject").await;
    assert_eq!(
        (r["clientReqId"].as_u64(), r["code"].as_str(), &r["conflicts"]),
        (Some(id), Some("conflict"), &json!([2]))
    );
    assert_eq!(r["rev"], 2);
    b.sync_to(2).await;

    // paths: different squares commit, the same square conflicts.
    a.change("paths", json!([{"op": "move", "from": "/board/e2", "path": "/board/e4"}])).await;
    b.change("paths", json!([{"op": "move", "from": "/board/d2", "path": "/board/d4"}])).await; // base 2
    a.sync_to(4).await;
    b.sync_to(4).await;
    assert!(b.rejects.len() == 1, "d2→d4 did not conflict with e2→e4");
    let mut c = Client::connect(&server, "modes").await;
    c.change_base("paths", 2, json!([{"op": "test", "path": "/board/e2", "value": "P"}, {"op": "move", "from": "/board/e2", "path": "/board/e3"}])).await;
    let r = c.until("reject").await;
    let e2_move = a.acks.last().unwrap().1;
    assert_eq!((r["code"].as_str(), &r["conflicts"]), (Some("conflict"), &json!([e2_move])));

    // stale: base older than the ring (history 4).
    for i in 0..6 {
        a.change("overwrite", add("/n", json!(i))).await;
    }
    a.sync_to(10).await;
    c.change_base("paths", 1, add("/z", json!(1))).await;
    assert_eq!(c.until("reject").await["code"], "stale");

    // invalid, test_failed, too_large (ops, state), bad mode; none change the room.
    c.change("overwrite", json!([{"op": "remove", "path": "/nope"}])).await;
    assert_eq!(c.until("reject").await["code"], "invalid");
    c.change("overwrite", json!([{"op": "test", "path": "/n", "value": 99}])).await;
    assert_eq!(c.until("reject").await["code"], "test_failed");
    c.change("overwrite", json!([{"op": "test", "path": "/n", "value": 5}, {"op": "test", "path": "/n", "value": 5}, {"op": "test", "path": "/n", "value": 5}, {"op": "test", "path": "/n", "value": 5}])).await;
    assert_eq!(c.until("reject").await["code"], "too_large");
    c.change("overwrite", add("/big", json!("y".repeat(3000)))).await;
    assert_eq!(c.until("reject").await["code"], "too_large");
    c.change("sideways", add("/m", json!(1))).await;
    assert_eq!(c.until("reject").await["code"], "invalid");
    c.change("overwrite", json!([{"op": "replace", "path": "", "value": [1]}])).await;
    assert_eq!(c.until("reject").await["code"], "invalid");
    c.send(json!({"type": "change", "clientReqId": 100, "ops": [{"op": "frobnicate", "path": "/a"}]})).await;
    let r = c.until("reject").await;
    assert_eq!((r["code"].as_str(), r["clientReqId"].as_u64()), (Some("invalid"), Some(100)));
    let (_, room) = http(&server, "GET", "/v1/rooms/modes", None).await;
    assert_eq!(room["rev"], 10, "rejected changes never change rev");
    // A rejected change counts as processed.
    c.send(json!({"type": "change", "clientReqId": 100, "ops": add("/late", json!(1))})).await;
    assert_eq!(c.until("error").await["code"], "duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_statuses() {
    let server = start(config(&["--history", "4", "--max-message-bytes", "2048"])).await;
    // Reading never creates a room.
    let (s, v) = http(&server, "GET", "/v1/rooms/h", None).await;
    assert_eq!((s, &v["rev"], &v["state"]), (200, &json!(0), &json!({})));
    let (s, _) = http(&server, "GET", "/v1/rooms/h/changes?since=0", None).await;
    assert_eq!(s, 200);
    let (s, _) = http(&server, "GET", "/v1/rooms/h/changes?since=3", None).await;
    assert_eq!(s, 400);
    assert!(server.app.rooms.is_empty());

    let mut ws = Client::connect(&server, "h").await;
    let (s, v) =
        http(&server, "POST", "/v1/rooms/h/changes", Some(r#"{"ops":[{"op":"add","path":"/a","value":1}]}"#))
            .await;
    assert_eq!((s, &v["rev"]), (200, &json!(1)));
    // The change reaches WebSocket clients with client id "http".
    let d = ws.until("delta").await;
    assert_eq!(d["changes"][0]["client"], "http");

    for (body, status, code) in [
        (r#"{"baseRev":0,"mode":"rev","ops":[{"op":"add","path":"/b","value":1}]}"#, 409, "conflict"),
        (r#"{"ops":[{"op":"test","path":"/a","value":2}]}"#, 409, "test_failed"),
        (r#"{"ops":[{"op":"remove","path":"/zz"}]}"#, 400, "invalid"),
        (r#"{"ops":"nope"}"#, 400, "invalid"),
        (r#"[1]"#, 400, "bad_message"),
        ("not json", 400, "bad_message"),
    ] {
        let (s, v) = http(&server, "POST", "/v1/rooms/h/changes", Some(body)).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{body}: {v}");
    }
    let big = format!(r#"{{"ops":[{{"op":"add","path":"/a","value":"{}"}}]}}"#, "x".repeat(4000));
    let (s, v) = http(&server, "POST", "/v1/rooms/h/changes", Some(&big)).await;
    assert_eq!((s, v["code"].as_str()), (413, Some("too_large")));

    for i in 0..6 {
        http(
            &server,
            "POST",
            "/v1/rooms/h/changes",
            Some(&format!(r#"{{"ops":[{{"op":"add","path":"/n","value":{i}}}]}}"#)),
        )
        .await;
    }
    let (s, v) = http(&server, "GET", "/v1/rooms/h/changes?since=4", None).await;
    assert_eq!((s, &v["from"], &v["to"]), (200, &json!(4), &json!(7)));
    assert_eq!(v["changes"].as_array().unwrap().len(), 3);
    assert_eq!(v["changes"][0]["ops"][0]["op"], "add");
    // Older than the ring: served from the room's log on disk.
    let (s, v) = http(&server, "GET", "/v1/rooms/h/changes?since=1", None).await;
    assert_eq!((s, &v["from"], &v["to"]), (200, &json!(1), &json!(7)), "{v}");
    assert_eq!(v["changes"][0]["rev"], 2);
    // Memory only, the ring is all there is.
    let memory = start(config(&["--memory-only", "--history", "4"])).await;
    for i in 0..7 {
        post_ops(&memory, "h", json!([{"op": "add", "path": "/n", "value": i}])).await;
    }
    let (s, v) = http(&memory, "GET", "/v1/rooms/h/changes?since=1", None).await;
    assert_eq!((s, v["code"].as_str()), (410, Some("gone")));
    let (s, _) = http(&server, "GET", "/v1/rooms/h/changes?since=99", None).await;
    assert_eq!(s, 400);
    let (s, _) = http(&server, "GET", "/v1/rooms/h/changes", None).await;
    assert_eq!(s, 400);

    // WebSocket clients see a change their own ws made acked with clientReqId via HTTP's view.
    ws.change("overwrite", add("/w", json!(1))).await;
    ws.sync_to(8).await;
    let (_, v) = http(&server, "GET", "/v1/rooms/h/changes?since=7", None).await;
    assert_eq!(v["changes"][0]["clientReqId"], 1);
    assert_eq!(v["changes"][0]["client"], ws.client.as_str());

    let (s, v) = http(&server, "GET", "/v1/rooms/h/ws", None).await;
    assert_eq!((s, v["code"].as_str()), (426, Some("upgrade_required")));
    let (s, _) = http(&server, "GET", "/v1/rooms/bad%20name", None).await;
    assert_eq!(s, 400);
    let (s, _) = http(&server, "GET", &format!("/v1/rooms/{}", "r".repeat(129)), None).await;
    assert_eq!(s, 400);
    let (s, _) = http(&server, "GET", "/v1/rooms/bad!/ws", None).await;
    assert_eq!(s, 400);
    let (s, _) = http(&server, "GET", "/healthz", None).await;
    assert_eq!(s, 200);
    let (s, v) = http(&server, "GET", "/nope", None).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
    let (s, _) = http(&server, "PUT", "/v1/rooms/h", None).await;
    assert_eq!(s, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_clear_answers_and_the_room_carries_on() {
    let server = start(config(&["--max-message-bytes", "1024"])).await;
    let mut a = Client::connect(&server, "bad").await;
    let mut peer = Client::connect(&server, "bad").await;
    for (raw, code) in [
        ("not json", "bad_message"),
        ("[1,2]", "bad_message"),
        (r#"{"type":"teleport"}"#, "bad_message"),
        (r#"{"type":"change","ops":[]}"#, "bad_message"),
        (r#"{"type":"change","clientReqId":"7","ops":[]}"#, "bad_message"),
    ] {
        a.ws.send(Message::text(raw)).await.unwrap();
        let e = a.until("error").await;
        assert_eq!(e["code"], code, "{raw}");
    }
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(a.until("error").await["code"], "bad_message");
    // Ping is answered with the same t.
    a.send(json!({"type": "ping", "t": {"n": 42}})).await;
    assert_eq!(a.until("pong").await["t"], json!({"n": 42}));
    // Still fully working.
    a.change("overwrite", add("/ok", json!(true))).await;
    a.sync_to(1).await;
    peer.sync_to(1).await;

    // Too big: 1009. Peer unaffected.
    let mut big = Client::connect(&server, "bad").await;
    big.ws.send(Message::text(format!(r#"{{"type":"ping","t":"{}"}}"#, "z".repeat(2000)))).await.unwrap();
    assert_eq!(big.closed().await, 1009);

    // Invalid UTF-8 in a text frame: 1007.
    let mut utf = Client::connect(&server, "bad").await;
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![b'"', 0xff, 0xfe, b'"'],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    utf.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(utf.closed().await, 1007);

    peer.change("overwrite", add("/still", json!(1))).await;
    peer.sync_to(2).await;
    a.sync_to(2).await;
    assert_eq!(a.state, peer.state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_takes_the_session_over() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server, "take").await;
    let q = format!("session={}", a.session);
    let b = Client::connect_query(&server, "take", &q).await;
    assert_eq!(b.welcome["resumed"], true);
    assert_eq!(b.client, a.client);
    // The old connection may still be open for a moment, but it no longer acts for the session.
    let _ =
        a.ws.send(Message::text(
            json!({"type": "change", "clientReqId": 1, "ops": add("/ghost", json!(1))}).to_string(),
        ))
        .await;
    assert_eq!(a.closed().await, 4001);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, room) = http(&server, "GET", "/v1/rooms/take", None).await;
    assert_eq!(room["rev"], 0, "a superseded connection commits nothing");
}
