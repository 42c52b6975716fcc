//! Cluster mode end to end: three real nodes on one `redis-server` the test starts itself (free
//! port, temporary directory, stopped by its PID). Clients of any node use any room: a node that
//! does not own the room follows the owner's stream and forwards its clients' changes, so every
//! client sees one gapless history with each of its acks exactly once, whichever node it is on;
//! the owner's rejects reach the author on another node; dedupe holds across nodes; and when the
//! owner is killed, the other nodes' clients are told to reconnect (4013), resume by delta on a
//! surviving node, and nothing acknowledged is lost.

mod common;

use std::time::{Duration, Instant};

use common::redis::{Redis, get, incr, metric_until, node, post};
use common::{Client, WAIT, crash, stop};
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
    for n in nodes {
        stop(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_moves_the_room_and_its_followers_clients_resume_with_nothing_acknowledged_lost() {
    let redis = Redis::start();
    let lease = ["--owner-lease", "500"];
    let a = node(&redis, &lease);
    let b = node(&redis, &lease);
    let c = node(&redis, &lease);
    assert_eq!(post(a.addr, "k", incr(1)).await.0, 200);
    let mut on_b = Client::connect_at(b.addr, "k", "").await;
    let mut on_c = Client::connect_at(c.addr, "k", "").await;
    for _ in 0..5 {
        on_b.change("overwrite", incr(1)).await;
    }
    on_b.sync_to(6).await;
    on_c.sync_to(6).await;
    crash(a);
    let killed = Instant::now();
    // The followers learn the owner is gone once its lease lapses, and close their clients
    // with 4013 ("reconnect").
    assert_eq!(on_b.closed().await, 4013);
    assert_eq!(on_c.closed().await, 4013);
    // They resume on a surviving node by delta: same epoch, nothing acknowledged lost.
    let query = format!("session={}&epoch={}&since={}", on_b.session, on_b.epoch, on_b.rev);
    let mut back = Client::connect_at(c.addr, "k", &query).await;
    eprintln!("resumed {} ms after the SIGKILL (lease 500 ms)", killed.elapsed().as_millis());
    assert_eq!(back.welcome["resumed"], true);
    assert_eq!(back.epoch, on_b.epoch, "the same epoch");
    assert_eq!(back.snapshots, 0, "resumed by delta");
    assert_eq!(back.state, json!({}), "a delta from the revision it held: nothing to apply");
    back.state = on_b.state.clone();
    back.change("overwrite", incr(1)).await;
    back.sync_to(7).await;
    assert_eq!(back.state["n"], 7);
    let deadline = Instant::now() + WAIT;
    while redis.log_revs("k") != (1..=7).collect::<Vec<_>>() {
        assert!(Instant::now() < deadline, "{:?}", redis.log_revs("k"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(b).await;
    stop(c).await;
}
