//! Metrics: a scenario over real sockets and the exact counter changes it caused. This file is
//! its own test binary with a single test, so no other test touches the process-wide recorder
//! while it runs. It also leaves the scrape in `$CARGO_TARGET_TMPDIR/metrics-scrape.prom` for
//! `promtool check metrics` (scripts/test.sh).

mod common;

use std::collections::HashMap;

use common::{Client, config, http, start};
use serde_json::json;

fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &common::Server) -> (String, HashMap<String, f64>) {
    let (status, body) = http(server, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text").to_owned();
    let map = parse(&text);
    (text, map)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_moves_counters_exactly() {
    let server = start(config(&[])).await;
    let (_, before) = scrape(&server).await;
    let delta = |after: &HashMap<String, f64>, key: &str| {
        after.get(key).unwrap_or(&0.0) - before.get(key).unwrap_or(&0.0)
    };

    let mut a = Client::connect(&server, "m").await;
    let mut b = Client::connect(&server, "m").await;
    a.change("overwrite", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    a.change(
        "overwrite",
        json!([{"op": "incr", "path": "/x", "value": 2}, {"op": "add", "path": "/y", "value": 0}]),
    )
    .await;
    a.change("overwrite", json!([{"op": "test", "path": "/x", "value": 99}])).await;
    a.until("reject").await;
    a.sync_to(2).await;
    a.send(json!({"type": "nope"})).await;
    a.until("error").await;
    a.send(json!({"type": "presence", "data": {"name": "ann"}})).await;
    a.send(json!({"type": "broadcast", "data": "hi"})).await;
    b.until("broadcast").await;
    b.sync_to(2).await;
    let (session, epoch) = (b.session.clone(), b.epoch.clone());
    drop(b);
    let b2 = Client::connect_query(&server, "m", &format!("session={session}&epoch={epoch}&since=2")).await;
    assert_eq!((b2.deltas, b2.snapshots), (1, 0));
    let (s, _) =
        http(&server, "POST", "/v1/rooms/m/changes", Some(r#"{"ops":[{"op":"remove","path":"/y"}]}"#)).await;
    assert_eq!(s, 200);
    a.sync_to(3).await;

    let (text, after) = scrape(&server).await;
    let expect = [
        ("ringsync_connections_accepted_total", 3.0),
        ("ringsync_changes_committed_total", 3.0),
        ("ringsync_changes_rejected_total{code=\"test_failed\"}", 1.0),
        ("ringsync_ops_applied_total{op=\"add\"}", 2.0),
        ("ringsync_ops_applied_total{op=\"incr\"}", 1.0),
        ("ringsync_ops_applied_total{op=\"remove\"}", 1.0),
        ("ringsync_ops_applied_total{op=\"test\"}", 0.0),
        ("ringsync_decode_errors_total{code=\"bad_message\"}", 1.0),
        ("ringsync_session_connects_total{outcome=\"new\"}", 2.0),
        ("ringsync_session_connects_total{outcome=\"delta\"}", 1.0),
        ("ringsync_snapshots_sent_total{reason=\"join\"}", 2.0),
        ("ringsync_presence_updates_total", 1.0),
        ("ringsync_broadcasts_total", 1.0),
        ("ringsync_frames_sent_total{kind=\"broadcast\"}", 1.0),
        // welcome ×3, reject, error
        ("ringsync_frames_sent_total{kind=\"control\"}", 5.0),
        ("ringsync_commit_duration_seconds_count", 3.0),
        // The POST and the first scrape; the three upgrades are 101s.
        ("ringsync_http_requests_total{status=\"2xx\"}", 2.0),
        ("ringsync_http_requests_total{status=\"1xx\"}", 3.0),
    ];
    for (key, want) in expect {
        assert_eq!(delta(&after, key), want, "{key}");
    }
    assert_eq!(after["ringsync_connections_open"], 2.0);
    assert!(delta(&after, "ringsync_received_bytes_total") > 0.0);
    assert!(delta(&after, "ringsync_delivery_lag_seconds_count") >= 3.0);
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(name.starts_with("ringsync_"), "{name}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name} is described");
    }
    // Labels never carry ids.
    assert!(!text.contains("c1") && !text.contains(&session) && !text.contains("room=\""));

    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-scrape.prom");
    std::fs::write(&path, &text).unwrap();
    drop(b2);
}
