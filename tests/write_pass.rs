//! The room's write pass (`src/room/fanout.rs`, `src/writer/slot.rs`) on the real binary: while
//! several writers commit concurrently, readers that keep up are written to by the pass, and
//! readers with small receive buffers that read in slow bursts make it write frames only in part
//! (the connection's task then writes the rest) or leave them to the connection's task. Every
//! reader's stream must stay gapless with each frame intact (the client checks each delta's
//! `from` against what it holds and parses every frame), every ack must arrive once and in
//! revision order, and everyone must end with the same state. The metrics must show that each
//! of the pass's paths was taken, so the test cannot pass with the pass switched off. Run once
//! with rooms in memory (the pass runs on the committing connection's task) and once with
//! durable rooms (it runs on the store's writer thread).

mod common;

use std::time::Duration;

use common::{Client, Spawned, WAIT, http_at, spawn_server};
use serde_json::{Value, json};

const WRITERS: u64 = 3;
const CHANGES: u64 = 120;
const READERS: usize = 16;
const STALLED: usize = 4;

/// A change of `n`'s size class: 200 B to 60 KB, so some frames are bigger than a small
/// receive buffer.
fn ops(writer: u64, n: u64) -> Value {
    let size = 200 + (n * 7919 % 31) as usize * 2000;
    json!([{"op": "add", "path": format!("/w{writer}k{}", n % 16), "value": "x".repeat(size)},
           {"op": "add", "path": format!("/n{writer}"), "value": n}])
}

async fn scrape(server: &Spawned) -> String {
    let (status, body) = http_at(server.addr, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    body.as_str().expect("metrics are text").to_owned()
}

/// What a failure prints: the admin view of the room (each connection's lag) and the pass's and
/// connections' metrics.
async fn diagnostics(server: &Spawned) -> String {
    let (_, room) = http_at(server.addr, "GET", "/v1/admin/rooms/pass", None, "").await;
    let text = scrape(server).await;
    let metrics: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("ringsync_write_pass")
                || l.contains("closed")
                || l.contains("slow")
                || l.contains("connections")
        })
        .collect();
    format!("room: {room:#}\n{metrics:#?}")
}

fn counter(text: &str, outcome: &str) -> u64 {
    let prefix = format!("ringsync_write_pass_offers_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{prefix} is exported")) as u64
}

async fn writers_and_stalled_readers(server: Spawned) {
    let addr = server.addr;
    let room = "pass";
    let total = WRITERS * CHANGES;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(READERS + STALLED + WRITERS as usize));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let start = start.clone();
        readers.spawn(async move {
            let mut c = Client::connect_at(addr, room, "").await;
            start.wait().await;
            while c.rev < total {
                if tokio::time::timeout(WAIT / 2, c.recv()).await.is_err() {
                    return Err(format!(
                        "reader {} stuck at rev {} (deltas {} snapshots {})",
                        c.client, c.rev, c.deltas, c.snapshots
                    ));
                }
            }
            Ok(c.state)
        });
    }
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    for _ in 0..STALLED {
        let start = start.clone();
        let done = done.clone();
        readers.spawn(async move {
            // 128 KiB, not smaller: a receive buffer below loopback's 64 KiB MSS makes the
            // kernel hold back window updates, and the sender then waits for zero-window probes
            // with exponential backoff (`ss -tio` shows `timer:(persist,…)`): stalls of seconds
            // that are TCP's, not the server's. The writers' ~11 MB still fill it many times over.
            let mut c = Client::connect_with(addr, room, "", Some(128 * 1024)).await;
            start.wait().await;
            // Reads nothing until the writers are done or 2 s have passed (within
            // --write-timeout), so the server finds its socket full with a frame half written,
            // then in small bursts with pauses.
            let _ = tokio::time::timeout(Duration::from_secs(2), done.notified()).await;
            while c.rev < total {
                for _ in 0..4 {
                    if c.rev >= total {
                        break;
                    }
                    if tokio::time::timeout(WAIT / 2, c.recv()).await.is_err() {
                        return Err(format!(
                            "stalled reader {} stuck at rev {} (deltas {} snapshots {})",
                            c.client, c.rev, c.deltas, c.snapshots
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(c.state)
        });
    }
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let start = start.clone();
        writers.spawn(async move {
            let mut c = Client::connect_at(addr, room, "").await;
            start.wait().await;
            for n in 0..CHANGES {
                c.change("overwrite", ops(w, n)).await;
                if n % 8 == 7 {
                    // A bounded window: read what has come so far.
                    while c.pending() > 4 {
                        c.recv().await;
                    }
                }
            }
            c.sync_to(total).await;
            assert_eq!(c.acks.len() as u64, CHANGES, "every change acked once");
            assert!(c.acks.windows(2).all(|a| a[0].1 < a[1].1), "acks in revision order");
            assert!(c.rejects.is_empty(), "overwrites are never rejected: {:?}", c.rejects);
            // Read on until every writer is done (the last revision is `total`).
            c.sync_to(total).await;
            c.state
        });
    }
    let bound = WAIT * 6;
    let mut states = Vec::new();
    while let Some(r) =
        tokio::time::timeout(bound, writers.join_next()).await.expect("writers finish in time")
    {
        match r {
            Ok(state) => states.push(state),
            Err(e) => {
                panic!("a writer failed: {e}\n{}", diagnostics(&server).await);
            }
        }
    }
    while let Some(r) =
        tokio::time::timeout(bound, readers.join_next()).await.expect("readers finish in time")
    {
        match r.expect("a reader does not panic") {
            Ok(state) => states.push(state),
            Err(e) => {
                panic!("{e}\n{}", diagnostics(&server).await);
            }
        }
    }
    assert_eq!(states.len(), READERS + STALLED + WRITERS as usize);
    for s in &states {
        assert_eq!(s, &states[0], "everyone converges on one state");
    }
    for w in 0..WRITERS {
        assert_eq!(states[0][format!("n{w}")], CHANGES - 1);
    }
    let text = scrape(&server).await;
    let (written, partial, woken) =
        (counter(&text, "written"), counter(&text, "partial"), counter(&text, "woken"));
    eprintln!("write pass offers: written={written} partial={partial} woken={woken}");
    assert!(written > 0, "the pass wrote whole frames: written={written} partial={partial} woken={woken}");
    assert!(partial > 0, "the pass met full sockets: written={written} partial={partial} woken={woken}");
    assert!(woken > 0, "busy or behind connections caught up themselves: woken={woken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_keeps_streams_gapless_with_concurrent_writers_and_full_sockets_in_memory() {
    let server = spawn_server(&["--rate-changes", "0", "--rate-inbound-bytes", "0", "--memory-only"]);
    writers_and_stalled_readers(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_keeps_streams_gapless_with_concurrent_writers_and_full_sockets_durable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let server = spawn_server(&[
        "--rate-changes",
        "0",
        "--rate-inbound-bytes",
        "0",
        "--data-dir",
        &data,
        "--fsync",
        "batch",
    ]);
    writers_and_stalled_readers(server).await;
}

/// The pass runs whenever a connection's read would wait, so a burst read at once goes out as one
/// frame. A client that never pauses never lets its read wait: its changes must still go out
/// while it sends, at least once every 128 messages (`MESSAGES_PER_PASS` in src/connection/inbound.rs).
/// 512 changes in one socket write reach the server as one read; a reader that stands idle must
/// see them in several deltas, not one at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_pauses_does_not_hold_deliveries_back() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    const BURST: u64 = 512;
    let server = spawn_server(&["--rate-changes", "0", "--rate-inbound-bytes", "0"]);
    let mut reader = Client::connect_at(server.addr, "burst", "").await;
    let mut writer = Client::connect_at(server.addr, "burst", "").await;
    let before = reader.deltas;
    for n in 0..BURST {
        let change = json!({"type": "change", "clientReqId": n + 1, "mode": "overwrite",
                            "ops": [{"op": "add", "path": format!("/k{}", n % 8), "value": n}]});
        // Queued in the client's buffer: the flush below is one write.
        writer.ws.feed(Message::text(change.to_string())).await.unwrap();
    }
    writer.ws.flush().await.unwrap();
    tokio::time::timeout(WAIT, reader.sync_to(BURST)).await.expect("the reader gets every change");
    let deltas = reader.deltas - before;
    assert!(
        deltas >= 2,
        "{BURST} changes read at once went out in {deltas} delta(s): held back until the burst ended"
    );
    assert_eq!(reader.state["k0"], json!(504));
}
