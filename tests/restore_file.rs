//! A room restored from a file store with a long log, the way the registry loads one: replayed
//! in full (no snapshot) and from a snapshot at the log's end with the whole log before it
//! handed over. The state, revision, ring and dedupe come back right, and what the load holds
//! is bounded by the ring, not the log: the store streams (it collects nothing) and the restore
//! queues at most a ring of records before the snapshot. (Memory itself is not measured here:
//! `scripts/bench-durable.sh` measures the real server.)

mod common;

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use common::store::Written;
use ringsync::ids::{Rev, RoomId};
use ringsync::memory::Budget;
use ringsync::room::{Restore, RoomConfig};
use ringsync::store::file::{FileOptions, FileStore, Fsync};
use ringsync::store::{Journal, Record, SnapshotData, Store};
use serde_json::json;

/// Records in the log: about 400 bytes each on disk, so the log spans two segments.
const N: u64 = 200_000;

/// A long session token: what makes each record ~400 bytes (it is stored, not parsed).
fn token() -> String {
    format!("sess-{}", "x".repeat(360))
}

fn record(rev: u64) -> Record {
    let op = if rev == 1 { "add" } else { "replace" };
    Record {
        rev,
        ts: 1_700_000_000_000 + rev,
        author: 3,
        session: Some(token()),
        user: None,
        client_req_id: Some(rev),
        kind: 0,
        reverts: None,
        ops: json!([{"op": op, "path": "/n", "value": rev}]).to_string(),
        inverse: if rev == 1 {
            json!([{"op": "remove", "path": "/n"}]).to_string()
        } else {
            json!([{"op": "replace", "path": "/n", "value": rev - 1}]).to_string()
        },
        touched: vec!["/n".into()],
        list_touched: vec![],
        meta: None,
        idempotency: None,
    }
}

fn room() -> RoomId {
    RoomId::parse("long").unwrap()
}

fn open_store(dir: &Path) -> Arc<FileStore> {
    let opts = FileOptions {
        fsync: Fsync::Never,
        fsync_interval: Duration::from_secs(1),
        retain: 0,
        max_open: 0,
        ..FileOptions::default()
    };
    FileStore::open_dir(dir, opts).unwrap()
}

/// Appends `revs` through the room's log (in steps, so the queue stays short).
fn append(store: &Arc<FileStore>, revs: std::ops::RangeInclusive<u64>, snapshot_first: Option<SnapshotData>) {
    let journal = Arc::new(Written::default());
    let weak: Weak<dyn Journal> = Arc::downgrade(&(journal.clone() as Arc<dyn Journal>));
    let log = store.open(&room(), "ep-long", weak);
    if let Some(s) = snapshot_first {
        log.snapshot(s);
    }
    let last = *revs.end();
    for rev in revs {
        log.append(0, record(rev));
        if rev % 10_000 == 0 {
            journal.wait(rev);
        }
    }
    journal.wait(last);
    store.close(&room());
}

/// Loads the room as the registry does; the store asked for `keep` records before the snapshot.
fn load(store: &Arc<FileStore>, keep: usize) -> (ringsync::room::Room, usize) {
    let config = RoomConfig::default();
    let mut restore = Restore::new(room(), config, &Budget::unlimited());
    let loaded = store.load_with(&room(), keep, &mut restore).unwrap().expect("stored");
    assert!(loaded.records.is_empty(), "the stream collected {} records", loaded.records.len());
    let peak = restore.held_peak();
    let (room, damage) = restore.finish(loaded).unwrap();
    assert!(damage.is_empty(), "{damage:?}");
    (room, peak)
}

#[test]
fn a_long_log_loads_holding_at_most_a_ring_of_records() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path());
    append(&store, 1..=N, None);
    let segments = std::fs::read_dir(tmp.path().join("rooms").join("long"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("log-"))
        .count();
    assert!(segments >= 2, "the log spans {segments} segment(s): the test wants more than one");
    let capacity = RoomConfig::default().history;

    // No snapshot: every record is replayed as it streams in; none waits.
    let (room, peak) = load(&store, capacity);
    assert_eq!(room.state(), (Rev(N), json!({"n": N})));
    assert_eq!(peak, 0, "nothing is before a snapshot");
    assert_eq!(room.ring_occupancy(), (capacity, capacity));
    assert_eq!(room.stored_session(&token()).map(|s| s.last_req), Some(N));
    drop(room);

    // A snapshot at N and 100 records after it. The store is asked for the whole log before the
    // snapshot (far more than the ring): the restore keeps only the ring's worth.
    let snap = SnapshotData {
        epoch: "ep-long".into(),
        rev: N,
        ts: 1,
        state: json!({"n": N}).to_string(),
        sessions: vec![],
        idempotency: vec![],
        max_client: 3,
    };
    append(&store, N + 1..=N + 100, Some(snap));
    for keep in [capacity, usize::MAX] {
        let (room, peak) = load(&store, keep);
        assert_eq!(room.state(), (Rev(N + 100), json!({"n": N + 100})), "keep {keep}");
        assert_eq!(peak, capacity, "keep {keep}: the queue holds a ring, never the log");
        assert_eq!(room.ring_occupancy(), (capacity, capacity));
        let mut out = Vec::new();
        let oldest = N + 100 - capacity as u64;
        assert!(room.changes_after(Rev(oldest), &mut out), "a reader {capacity} behind gets a delta");
        assert!(!room.changes_after(Rev(oldest - 1), &mut out), "one further back gets a snapshot");
        assert_eq!(room.epoch().as_str(), "ep-long");
    }
}
