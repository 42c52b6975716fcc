//! Cluster mode end to end: three real nodes on one `redis-server` the test starts itself (free
//! port, temporary directory, stopped by its PID). Clients of any node use any room: a node that
//! does not own the room follows the owner's stream and forwards its clients' changes, so every
//! client sees one gapless history with each of its acks exactly once, whichever node it is on;
//! the owner's rejects reach the author on another node; dedupe holds across nodes; and when the
//! owner is killed while followers' clients keep writing, one follower takes the room over in
//! place and the other follows it: the clients stay connected, a change caught in flight is
//! rejected `unavailable` and sent again, and nothing acknowledged is lost or applied twice.

mod common;

use std::time::{Duration, Instant};

use common::redis::{Redis, get, incr, metric_until, node, post};
use common::{Client, crash, presence_until, stop, welcome_map};
use serde_json::json;

/// Changes each client sends.
const EACH: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_three_nodes_share_a_room_with_gapless_streams_and_every_ack_once() {
    let redis = Redis::start();
    let nodes = [node(&redis, &[]), node(&redis, &[]), node(&redis, &[])];
    // Node 0 creates the room and owns it.
    assert_eq!(post(nodes[0].addr, "g", json!([{"op": "add", "path": "/n", "value": 0}])).await.0, 200);
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(Client::connect_at(n.addr, "g", "").await);
    }
    let ids: std::collections::BTreeSet<&str> = clients.iter().map(|c| c.client.as_str()).collect();
    assert_eq!(ids.len(), 3, "client ids are unique across nodes: {ids:?}");
    // Every client writes at once, in bursts, without waiting for acks.
    for round in 0..EACH / 10 {
        for (i, c) in clients.iter_mut().enumerate() {
            for k in 0..10 {
                let key = format!("/c{i}_{}", round * 10 + k);
                c.change(
                    "overwrite",
                    json!([{"op": "add", "path": key, "value": i}, {"op": "incr", "path": "/n", "value": 1}]),
                )
                .await;
            }
        }
    }
    let total = 1 + 3 * EACH;
    for c in &mut clients {
        c.sync_to(total).await;
    }
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.rev, total);
        assert_eq!(c.acks.len() as u64, EACH, "client {i}: every ack, once (checked as it reads)");
        assert!(c.rejects.is_empty(), "client {i}: {:?}", c.rejects);
        assert_eq!(c.state["n"], json!(3 * EACH), "client {i}");
        assert_eq!(c.state, clients[0].state, "client {i} converged");
    }
    assert_eq!(redis.log_revs("g"), (1..=total).collect::<Vec<_>>(), "one gapless stream");
    // Every node serves the same state over HTTP.
    for n in &nodes {
        let (status, room) = get(n.addr, "/v1/rooms/g").await;
        assert_eq!((status, room["rev"].as_u64()), (200, Some(total)), "{room}");
        assert_eq!(room["state"], clients[0].state);
    }
    metric_until(nodes[1].addr, "ringsync_cluster_forwarded_total", |v| v == EACH as f64).await;
    metric_until(nodes[0].addr, "ringsync_cluster_forwards_received_total", |v| v == 2.0 * EACH as f64).await;
    metric_until(nodes[2].addr, "ringsync_cluster_rooms_followed", |v| v == 1.0).await;
    metric_until(nodes[2].addr, "ringsync_redis_rooms_owned", |v| v == 0.0).await;

    // The owner's rejects reach the author on another node, in order with its acks.
    let c = &mut clients[1];
    let id = c.change_base("rev", 1, incr(1)).await;
    let m = c.until("reject").await;
    assert_eq!((m["clientReqId"].as_u64(), m["code"].as_str()), (Some(id), Some("conflict")), "{m}");
    let id = c.change("overwrite", json!([{"op": "test", "path": "/n", "value": -1}])).await;
    let m = c.until("reject").await;
    assert_eq!((m["clientReqId"].as_u64(), m["code"].as_str()), (Some(id), Some("test_failed")), "{m}");
    // A resend of an applied change, through a third node after a reconnect, is refused once
    // more: dedupe is the room's, not the node's.
    let (session, epoch, last) = (c.session.clone(), c.epoch.clone(), c.acks.last().unwrap().0);
    let query = format!("session={session}&epoch={epoch}&since={total}");
    let mut again = Client::connect_at(nodes[2].addr, "g", &query).await;
    assert_eq!(again.welcome["resumed"], true, "{}", again.welcome);
    again.send(json!({"type": "change", "clientReqId": last, "ops": incr(1)})).await;
    let m = again.until("error").await;
    assert_eq!(m["code"], "duplicate", "{m}");
    // HTTP writes through a follower are forwarded too, an Idempotency-Key holding across
    // nodes: a retry through another node gets the first answer and is not applied again.
    let rev = c.rev;
    let body = json!({"ops": [{"op": "incr", "path": "/n", "value": 100}]}).to_string();
    let key = "Idempotency-Key: cluster-1\r\n";
    let (status, first) =
        common::http_at(nodes[2].addr, "POST", "/v1/rooms/g/changes", Some(&body), key).await;
    assert_eq!((status, first["rev"].as_u64()), (200, Some(rev + 1)), "{first}");
    for n in [&nodes[1], &nodes[0]] {
        let (status, again) = common::http_at(n.addr, "POST", "/v1/rooms/g/changes", Some(&body), key).await;
        assert_eq!((status, &again), (200, &first), "the first answer, not a second change");
    }
    let (status, refused) =
        post(nodes[1].addr, "g", json!([{"op": "test", "path": "/n", "value": -1}])).await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("test_failed")), "{refused}");
    let (_, room) = get(nodes[1].addr, "/v1/rooms/g").await;
    assert_eq!((room["rev"].as_u64(), &room["state"]["n"]), (Some(rev + 1), &json!(3 * EACH + 100)));
    for n in nodes {
        stop(n).await;
    }
}

/// Sends one change adding `key` and reads until it is answered: `true` when acknowledged,
/// `false` when rejected (`unavailable` only: the owner changed while it was on its way, or its
/// mail was lost while Redis was down). A lost mail is answered only when the follower gives up
/// on it: after the forward timeout (10 s here) at the next sweep (once a second), so each wait
/// allows more than that.
async fn write_one(c: &mut Client, key: &str) -> bool {
    let id = c.change("overwrite", json!([{"op": "add", "path": format!("/{key}"), "value": 1}])).await;
    loop {
        if c.acks.iter().any(|(a, _)| *a == id) {
            return true;
        }
        if let Some(r) = c.rejects.iter().find(|r| r["clientReqId"] == id) {
            assert_eq!(r["code"], "unavailable", "{r}");
            return false;
        }
        c.recv_within(Duration::from_secs(20)).await;
    }
}

/// Three nodes with `--owner-lease lease`; clients on the two followers write one change at a
/// time each while the owner is SIGKILLed. Checks that the clients stay connected and converge,
/// that every acknowledged change is kept once, the stream is gapless and one follower took the
/// room over; returns the longest pause between two acks.
async fn kill_the_owner_under_writers(lease: &str) -> Duration {
    let redis = Redis::start();
    let lease = ["--owner-lease", lease];
    let a = node(&redis, &lease);
    let b = node(&redis, &lease);
    let c = node(&redis, &lease);
    assert_eq!(post(a.addr, "k", json!([{"op": "add", "path": "/start", "value": 0}])).await.0, 200);
    let mut writers = [Client::connect_at(b.addr, "k", "").await, Client::connect_at(c.addr, "k", "").await];
    let epoch = writers[0].epoch.clone();
    // Both followers' clients keep writing, one change at a time each, while the owner dies.
    let mut acked: Vec<String> = Vec::new();
    let mut a = Some(a);
    let mut last_ack = Instant::now();
    let mut longest_pause = Duration::ZERO;
    let mut retried = 0;
    for i in 0..60 {
        if i == 20 {
            let ttl: i64 = redis::cmd("PTTL").arg("ringsync:{k}:owner").query(&mut redis.con()).unwrap();
            eprintln!("lease left at the kill: {ttl} ms");
            crash(a.take().unwrap());
        }
        for (w, c) in writers.iter_mut().enumerate() {
            let key = format!("w{w}_{i}");
            // Rejected `unavailable` while the owner changes: sent again, as a client does.
            while !write_one(c, &key).await {
                retried += 1;
            }
            acked.push(key);
            longest_pause = longest_pause.max(last_ack.elapsed());
            last_ack = Instant::now();
        }
    }
    eprintln!(
        "owner killed: writes paused at most {} ms (lease {} ms), {retried} sent again",
        longest_pause.as_millis(),
        lease[1]
    );
    // The clients stayed connected (a close would have failed `recv`), and converged.
    let total = 1 + acked.len() as u64;
    for c in &mut writers {
        c.sync_to(total).await;
        assert_eq!(c.epoch, epoch);
    }
    assert_eq!(writers[0].state, writers[1].state);
    for key in &acked {
        assert_eq!(writers[0].state[key], 1, "acknowledged {key} is kept");
    }
    assert_eq!(writers[0].state.as_object().unwrap().len() as u64, total, "nothing applied twice or unacked");
    assert_eq!(redis.log_revs("k"), (1..=total).collect::<Vec<_>>(), "one gapless stream");
    // One follower took the room over in place; the other follows it.
    let mut takeovers = 0.0;
    for n in [&b, &c] {
        takeovers += common::redis::metric(n.addr, "ringsync_cluster_takeovers_total").await;
    }
    assert_eq!(takeovers, 1.0);
    stop(b).await;
    stop(c).await;
    longest_pause
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_hands_the_room_to_a_follower_in_place_and_nothing_acknowledged_is_lost() {
    kill_the_owner_under_writers("500").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for docs/BENCHMARKS.md, not a check"]
async fn failover_figures() {
    for lease in ["2000", "500"] {
        let mut pauses: Vec<u128> = Vec::new();
        for _ in 0..5 {
            pauses.push(kill_the_owner_under_writers(lease).await.as_millis());
        }
        pauses.sort_unstable();
        eprintln!("--owner-lease {lease}: longest pause per run, ms, sorted: {pauses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_broadcasts_cross_nodes_and_a_dead_nodes_peers_are_forgotten() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let c = node(&redis, &[]);
    assert_eq!(post(a.addr, "p", incr(1)).await.0, 200);
    let mut on_a = Client::connect_at(a.addr, "p", "").await;
    let mut on_b = Client::connect_at(b.addr, "p", "").await;
    let mut maps = [welcome_map(&on_a), welcome_map(&on_b)];
    // Updates from both sides reach the other node; the last value wins, a null removes a key.
    for x in 0..5 {
        on_a.send(json!({"type": "presence", "data": {"x": x, "tmp": 1}})).await;
        on_b.send(json!({"type": "presence", "data": {"y": x}})).await;
    }
    on_a.send(json!({"type": "presence", "data": {"tmp": null}})).await;
    let (ida, idb) = (on_a.client.clone(), on_b.client.clone());
    let both = |m: &serde_json::Map<String, serde_json::Value>| {
        m.get(&ida) == Some(&json!({"x": 4})) && m.get(&idb) == Some(&json!({"y": 4}))
    };
    presence_until(&mut on_a, &mut maps[0], both).await;
    presence_until(&mut on_b, &mut maps[1], both).await;
    // A client joining a third node later learns of both (the nodes answer its node's hello).
    let mut on_c = Client::connect_at(c.addr, "p", "").await;
    let mut map_c = welcome_map(&on_c);
    presence_until(&mut on_c, &mut map_c, both).await;
    // Broadcasts reach every node's clients, not the sender.
    on_b.send(json!({"type": "broadcast", "data": {"hello": "from b"}})).await;
    for client in [&mut on_a, &mut on_c] {
        let m = client.until("broadcast").await;
        assert_eq!(
            (m["client"].as_str(), &m["data"]),
            (Some(idb.as_str()), &json!({"hello": "from b"})),
            "{m}"
        );
    }
    let (status, _) =
        common::http_at(c.addr, "POST", "/v1/rooms/p/broadcast", Some(r#"{"data": 7}"#), "").await;
    assert_eq!(status, 200);
    assert_eq!(on_a.until("broadcast").await["data"], 7, "an HTTP broadcast on one node reaches the others");
    // A node that dies without a word: its peers are forgotten elsewhere once it misses its roll
    // calls (3 × 5 s).
    crash(b);
    let crashed = Instant::now();
    let (idc, mut tick) = (on_c.client.clone(), 0);
    // Each side keeps moving (so the test's reads never wait long) until both have dropped B's peer.
    while maps[0].contains_key(&idb) || map_c.contains_key(&idb) {
        assert!(crashed.elapsed() < Duration::from_secs(30), "B's peer forgotten in time");
        tick += 1;
        on_a.send(json!({"type": "presence", "data": {"x": tick}})).await;
        on_c.send(json!({"type": "presence", "data": {"z": tick}})).await;
        presence_until(&mut on_a, &mut maps[0], |m| m.get(&idc) == Some(&json!({"z": tick}))).await;
        presence_until(&mut on_c, &mut map_c, |m| m.get(&ida) == Some(&json!({"x": tick}))).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("a dead node's peer forgotten {} ms after the SIGKILL", crashed.elapsed().as_millis());
    stop(a).await;
    stop(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_and_follower_carry_on_after_redis_restarts_with_aof() {
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always", "--save", ""]);
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    assert_eq!(post(a.addr, "s", incr(1)).await.0, 200);
    let mut on_a = Client::connect_at(a.addr, "s", "").await;
    let mut on_b = Client::connect_at(b.addr, "s", "").await;
    on_b.change("overwrite", incr(1)).await;
    on_b.sync_to(2).await;
    on_a.sync_to(2).await;
    redis.crash_and_restart();
    // Both nodes reconnect by themselves: the follower's writes reach the owner again (the
    // first ones may meet a broken connection and be rejected `unavailable`, then sent again),
    // and both clients converge.
    // A write whose mail was lost in the crash is rejected only after the forward timeout.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut acked = 0;
    while acked < 3 {
        assert!(Instant::now() < deadline, "writes through the follower resume in time");
        if write_one(&mut on_b, &format!("b{acked}")).await {
            acked += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let rev = on_b.rev;
    on_a.sync_to(rev).await;
    assert_eq!(on_a.state, on_b.state);
    assert_eq!(redis.log_revs("s"), (1..=rev).collect::<Vec<_>>(), "nothing acknowledged lost");
    // Presence crosses again too (the lanes resubscribed).
    on_a.send(json!({"type": "presence", "data": {"back": true}})).await;
    let mut map = welcome_map(&on_b);
    let ida = on_a.client.clone();
    presence_until(&mut on_b, &mut map, |m| m.get(&ida) == Some(&json!({"back": true}))).await;
    stop(a).await;
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_misses_its_feed_fills_the_gap_from_the_stream() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    assert_eq!(post(a.addr, "gap", incr(1)).await.0, 200);
    let mut on_b = Client::connect_at(b.addr, "gap", "").await;
    let mut con = redis.con();
    for round in 0..5 {
        // Every pub/sub connection dropped (the followers' feeds among them), while the owner
        // goes on committing; junk on the feed is ignored the same way.
        let _: () =
            redis::cmd("PUBLISH").arg("ringsync:feed:{gap}").arg("not a record").query(&mut con).unwrap();
        let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut con).unwrap();
        for _ in 0..5 {
            assert_eq!(post(a.addr, "gap", incr(1)).await.0, 200);
        }
        let rev = 1 + 5 * (round + 1);
        on_b.sync_to(rev).await;
        assert_eq!(on_b.state["n"], rev, "gapless, nothing missed (checked as it reads)");
    }
    assert_eq!(on_b.snapshots, 1, "only the first frame was a snapshot: the gaps were filled by delta");
    metric_until(b.addr, "ringsync_cluster_gap_records_total", |v| v >= 1.0).await;
    stop(a).await;
    stop(b).await;
}
