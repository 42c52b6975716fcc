//! Presence and broadcasts over real sockets: convergence, coalescing for slow readers, leaves
//! (grace, resume, clean close, half-open), broadcast order, no echo, drop counting.

mod common;

use std::time::Duration;

use common::{Client, config, http, merge, presence_until, start, welcome_map};
use futures_util::SinkExt;
use serde_json::{Map, Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_agree_on_the_presence_map() {
    let server = start(config(&["--presence-interval", "20"])).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Client::connect(&server, "p50").await);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.client.clone()).collect();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut map = welcome_map(&c);
            for step in 0..5 {
                c.send(json!({"type": "presence", "data": {"x": step, "name": format!("p{i}"), "tmp": 1}}))
                    .await;
            }
            c.send(json!({"type": "presence", "data": {"tmp": null}})).await;
            let expected = |m: &Map<String, Value>| {
                ids.iter()
                    .enumerate()
                    .all(|(j, id)| m.get(id) == Some(&json!({"x": 4, "name": format!("p{j}")})))
            };
            presence_until(&mut c, &mut map, expected).await;
            (c, map)
        }));
    }
    let mut maps = Vec::new();
    for t in tasks {
        maps.push(
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("converges in time").unwrap().1,
        );
    }
    assert_eq!(maps[0].len(), 50);
    assert!(maps.iter().all(|m| *m == maps[0]), "every client holds the same map");
    let (_, v) = http(&server, "GET", "/v1/rooms/p50/presence", None).await;
    assert_eq!(v["peers"].as_object().unwrap(), &maps[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_the_latest_presence_not_a_backlog() {
    let server = start(config(&["--presence-interval", "50"])).await;
    let mut slow = Client::connect(&server, "ps").await;
    let mut mover = Client::connect(&server, "ps").await;
    let mut other = Client::connect(&server, "ps").await;
    let mut other_map = welcome_map(&other);
    let mover_id = mover.client.clone();
    for x in 0..10_000 {
        mover.send(json!({"type": "presence", "data": {"x": x}})).await;
    }
    // Others are not slowed: they see the final position promptly.
    presence_until(&mut other, &mut other_map, |m| m.get(&mover_id) == Some(&json!({"x": 9999}))).await;
    // The slow reader now reads: it gets the latest value, in far fewer messages than updates.
    let mut map = welcome_map(&slow);
    let mut messages = 0;
    while map.get(&mover_id) != Some(&json!({"x": 9999})) {
        let m = slow.recv().await;
        if m["type"] == "presence" {
            messages += 1;
            merge(&mut map, &m);
        }
    }
    assert!(messages < 1000, "coalesced: {messages} presence messages for 10000 updates");
    // Oversized presence is refused with a clear error, and nothing changes.
    mover.send(json!({"type": "presence", "data": {"blob": "z".repeat(5000)}})).await;
    assert_eq!(mover.until("error").await["code"], "too_large");
    let (_, v) = http(&server, "GET", "/v1/rooms/ps/presence", None).await;
    assert_eq!(v["peers"][&mover_id], json!({"x": 9999}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_after_grace_not_on_quick_resume_and_at_once_on_clean_close() {
    let server = start(config(&["--presence-grace", "1.5"])).await;
    let mut watcher = Client::connect(&server, "lv").await;
    let mut map = welcome_map(&watcher);

    // Abrupt disconnect: exactly one leave, after the grace.
    let a = Client::connect(&server, "lv").await;
    let a_id = a.client.clone();
    presence_until(&mut watcher, &mut map, |m| m.contains_key(&a_id)).await;
    let dropped_at = std::time::Instant::now();
    drop(a);
    let mut nulls = 0;
    while map.contains_key(&a_id) {
        let m = watcher.recv().await;
        if m["type"] == "presence" {
            nulls += usize::from(m["peers"].get(&a_id) == Some(&Value::Null));
            merge(&mut map, &m);
        }
    }
    assert!(dropped_at.elapsed() >= Duration::from_millis(1400), "left only after the grace");
    assert_eq!(nulls, 1);

    // Resume within the grace: no leave, no join.
    let b = Client::connect(&server, "lv").await;
    let (b_id, b_session) = (b.client.clone(), b.session.clone());
    presence_until(&mut watcher, &mut map, |m| m.contains_key(&b_id)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b2 = Client::connect_query(&server, "lv", &format!("session={b_session}")).await;
    assert_eq!(b2.client, b_id);
    assert!(welcome_map(&b2).contains_key(&b_id), "a resumed session keeps its presence");
    // Wait past the grace (counted from the drop), then connect a marker so we know the watcher
    // has read past any leave/join a buggy server would have sent.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut marker = Client::connect(&server, "lv").await;
    let marker_id = marker.client.clone();
    let mut saw_b = false;
    while !map.contains_key(&marker_id) {
        let m = watcher.recv().await;
        if m["type"] == "presence" {
            saw_b |= m["peers"].get(&b_id).is_some();
            merge(&mut map, &m);
        }
    }
    assert!(!saw_b, "no leave and no join for a resume within the grace");
    assert!(map.contains_key(&b_id));

    // Clean close: leave at once (well before a long grace would end).
    let closed_at = std::time::Instant::now();
    marker.ws.close(None).await.unwrap();
    presence_until(&mut watcher, &mut map, |m| !m.contains_key(&marker_id)).await;
    assert!(closed_at.elapsed() < Duration::from_millis(1000), "clean close leaves before the grace");
    drop(b2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_leaves_after_the_liveness_timeouts() {
    let server =
        start(config(&["--idle-timeout", "1", "--ping-interval", "0.3", "--presence-grace", "0.3"])).await;
    let mut watcher = Client::connect(&server, "ho").await;
    let mut map = welcome_map(&watcher);
    // Connected, then silent: never reads (so never answers pings) and never writes.
    let ghost = Client::connect(&server, "ho").await;
    let ghost_id = ghost.client.clone();
    presence_until(&mut watcher, &mut map, |m| m.contains_key(&ghost_id)).await;
    let started = std::time::Instant::now();
    // The watcher keeps reading, so it answers pings and stays.
    presence_until(&mut watcher, &mut map, |m| !m.contains_key(&ghost_id)).await;
    assert!(started.elapsed() >= Duration::from_millis(1000), "idle timeout first, then grace");
    assert!(map.contains_key(&watcher.client), "the live watcher is still present");
    drop(ghost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_keep_sender_order_skip_the_sender_and_count_drops() {
    // 30 MB of broadcasts sent at once: past the default --rate-inbound-bytes.
    let server = start(config(&["--broadcast-buffer", "64", "--rate-inbound-bytes", "0"])).await;
    let mut a = Client::connect(&server, "bc").await;
    let mut b = Client::connect(&server, "bc").await;
    for i in 0..50 {
        a.send(json!({"type": "broadcast", "data": {"i": i}})).await;
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        let m = b.recv().await;
        if m["type"] == "broadcast" {
            assert_eq!(m["client"], a.client.as_str());
            got.push(m["data"]["i"].as_u64().unwrap());
        }
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>(), "in the order sent");
    // Back-ends can broadcast too.
    let (s, _) = http(&server, "POST", "/v1/rooms/bc/broadcast", Some(r#"{"data":"from http"}"#)).await;
    assert_eq!(s, 200);
    let m = b.until("broadcast").await;
    assert_eq!((m["client"].as_str(), &m["data"]), (Some("http"), &json!("from http")));
    // No echo: a sees only the HTTP one.
    let m = a.until("broadcast").await;
    assert_eq!(m["client"], "http");

    // A slow reader: large broadcasts fill its socket, the 64-slot buffer overflows, and it is
    // told how many it missed; received + dropped accounts for every broadcast.
    let mut slow = Client::connect(&server, "bc").await;
    let blob = "b".repeat(100_000);
    for i in 0..300 {
        a.ws.send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "broadcast", "data": {"i": i, "blob": blob}}).to_string(),
        ))
        .await
        .unwrap();
    }
    let (mut received, mut dropped, mut last) = (0u64, 0u64, None);
    while last != Some(299) {
        let m = slow.recv().await;
        match m["type"].as_str() {
            Some("broadcast") => {
                received += 1;
                let i = m["data"]["i"].as_u64().unwrap();
                assert!(last.is_none_or(|l| i > l), "still in order");
                last = Some(i);
            }
            Some("dropped") => dropped += m["broadcasts"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert!(dropped > 0, "the slow reader missed some");
    assert_eq!(received + dropped, 300);
    drop(b);
}
