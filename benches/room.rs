//! Criterion benches of the synchronous core: what the server does per change, per recipient
//! and per snapshot, without sockets (`scripts/bench.sh` and `ringsync-load` measure those).
//!
//! Groups:
//! - `fanout/N`: commit one change into a room with N caught-up subscribers and build every
//!   subscriber's outgoing frame as the writer does (`Room::catch_up` from where it stands);
//!   throughput is per recipient.
//! - `catchup/K`: build the one frame for a subscriber K changes behind (`Room::changes_after` +
//!   `room::delta_for`, bypassing the shared-frame cache); per change.
//! - `snapshot/SIZE`: a commit that invalidates the cached snapshot, then `Room::snapshot` and
//!   the `snapshot` frame, for 1 KB, 100 KB and 1 MB states; per byte.
//! - `presence`: 1,000 peers each move a cursor (`Presence::update`), then the one coalesced
//!   frame a reader 1,000 updates behind gets (`changes_since`), and the cached frame for the
//!   next reader at the same position.
//! - `apply/OP`: `patch::apply` of one op of each kind on a 100-member document.
//! - `commit`: decode a client's `change` message, and commit a small change.
//! - `paths_check`: a `paths`-mode commit checked against the changes after its `baseRev`:
//!   `small` (1 op against 10 changes of 1 op) and `ring_1024x1000` (1,000 ops against a full
//!   ring of 1,024 changes of 1,000 `incr` ops, based at the ring's start). Each conflicts with
//!   the newest change only, so the room is unchanged and every change is scanned.
//!
//! Runs in about two minutes on two cores: short warm-ups and measurement times, and fewer
//! samples for the slow cases. `cargo bench --bench room -- fanout` runs one group.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use ringsync::ids::{ClientId, ClientReqId, Rev, RoomId};
use ringsync::patch::{self, Op};
use ringsync::presence::Presence;
use ringsync::protocol::{self, Mode};
use ringsync::room::{self, CatchUp, Change, ChangeRequest, Cursor, Room, RoomConfig};
use serde_json::{Map, Value, json};

const WRITER: ClientId = ClientId(1_000_000);

fn new_room(history: usize) -> Room {
    Room::new(RoomId::parse("bench").expect("valid name"), RoomConfig { history, ..RoomConfig::default() })
}

/// A change as the load generator sends it: one `add` of a small object (~100-byte entry).
fn small_change(i: u64) -> ChangeRequest {
    let ops = patch::parse_patch(
        json!([{"op": "add", "path": "/t", "value": {"ts": 1_000_000 + i, "p": "x".repeat(16)}}]),
    )
    .expect("valid patch");
    ChangeRequest {
        author: WRITER,
        user: None,
        client_req_id: Some(ClientReqId(i + 1)),
        base_rev: None,
        mode: Mode::Overwrite,
        ops,
        extras: Default::default(),
    }
}

fn configure(g: &mut BenchmarkGroup<'_, WallTime>, samples: usize, secs: f64) {
    g.sample_size(samples);
    g.warm_up_time(Duration::from_millis(400));
    g.measurement_time(Duration::from_secs_f64(secs));
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    configure(&mut g, 30, 2.0);
    for n in [1u64, 100, 1_000, 10_000] {
        let room = new_room(1024);
        let mut i = 0;
        room.commit(small_change(i)).expect("commits");
        // Every subscriber's position; all caught up before each iteration's commit.
        let mut last = vec![room.rev(); n as usize];
        let mut buf: Vec<Arc<Change>> = Vec::new();
        g.throughput(Throughput::Elements(n));
        g.bench_function(n.to_string(), |b| {
            b.iter(|| {
                i += 1;
                room.commit(small_change(i)).expect("commits");
                for (k, at) in last.iter_mut().enumerate() {
                    let CatchUp::Delta { frame, to, .. } =
                        room.catch_up(Cursor::Holds(*at), ClientId(k as u64 + 1), &mut buf)
                    else {
                        unreachable!("caught-up readers are inside the ring");
                    };
                    black_box(frame);
                    *at = to;
                }
            });
        });
    }
    g.finish();
}

fn catchup(c: &mut Criterion) {
    let mut g = c.benchmark_group("catchup");
    configure(&mut g, 30, 1.5);
    let room = new_room(1024);
    for i in 0..1100 {
        room.commit(small_change(i)).expect("commits");
    }
    let head = room.rev();
    let mut buf = Vec::new();
    for k in [1u64, 100, 1_000] {
        g.throughput(Throughput::Elements(k));
        g.bench_function(k.to_string(), |b| {
            b.iter(|| {
                let from = Rev(head.0 - k);
                assert!(room.changes_after(from, &mut buf));
                black_box(room::delta_for(&buf, from, head, Some(ClientId(7))))
            });
        });
    }
    g.finish();
}

/// A state of about `bytes` encoded bytes: members of ~100-byte strings.
fn state_ops(bytes: usize) -> Vec<Op> {
    let mut m = Map::new();
    let mut size = 2;
    let mut i = 0;
    while size < bytes {
        let key = format!("k{i:06}");
        let v = format!("{:0>90}", i);
        size += key.len() + v.len() + 6;
        m.insert(key, Value::String(v));
        i += 1;
    }
    patch::parse_patch(json!([{"op": "add", "path": "/s", "value": m}])).expect("valid patch")
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    for (name, bytes, samples) in [("1KB", 1_000, 30), ("100KB", 100_000, 20), ("1MB", 1_000_000, 10)] {
        configure(&mut g, samples, 2.0);
        let room = new_room(64);
        let mut req = small_change(0);
        req.ops = state_ops(bytes);
        room.commit(req).expect("commits");
        let size = room.snapshot().state.len();
        g.throughput(Throughput::Bytes(size as u64));
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                room.commit(small_change(i)).expect("commits");
                let snap = room.snapshot();
                black_box(protocol::snapshot_frame(snap.rev, ClientReqId(3), &snap.state))
            });
        });
    }
    g.finish();
}

fn presence(c: &mut Criterion) {
    let mut g = c.benchmark_group("presence");
    configure(&mut g, 20, 2.0);
    const PEERS: u64 = 1_000;
    let p = Presence::new();
    for c in 1..=PEERS {
        p.join(ClientId(c));
    }
    let cursor = |c: u64, r: u64| -> Map<String, Value> {
        let Value::Object(m) = json!({"x": (c * 37 + r) % 1920, "y": (c * 53 + r) % 1080}) else {
            unreachable!()
        };
        m
    };
    g.throughput(Throughput::Elements(PEERS));
    let mut round = 0;
    g.bench_function("update_1000", |b| {
        b.iter_batched(
            || {
                round += 1;
                (1..=PEERS).map(|c| (ClientId(c), cursor(c, round))).collect::<Vec<_>>()
            },
            |patches| {
                for (c, m) in patches {
                    p.update(c, m, 4096).expect("small");
                }
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("changes_since_1000", |b| {
        b.iter_batched(
            || {
                round += 1;
                let (seq, _) = p.online();
                for c in 1..=PEERS {
                    p.update(ClientId(c), cursor(c, round), 4096).expect("small");
                }
                seq
            },
            |seq| black_box(p.changes_since(seq, None)),
            BatchSize::SmallInput,
        );
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("changes_since_cached", |b| {
        let (seq, _) = p.online();
        for c in 1..=PEERS {
            p.update(ClientId(c), cursor(c, 0), 4096).expect("small");
        }
        black_box(p.changes_since(seq, None));
        b.iter(|| black_box(p.changes_since(seq, None)));
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    configure(&mut g, 30, 1.0);
    let mut doc = json!({"n": 1, "arr": (0..50).collect::<Vec<_>>(), "obj": {"a": {"b": "c"}}});
    for i in 0..100 {
        doc[format!("k{i}")] = json!({"x": i, "y": i * 2, "name": format!("member {i}")});
    }
    let cases = [
        ("add", json!([{"op": "add", "path": "/k50/z", "value": {"deep": [1, 2, 3]}}])),
        ("remove", json!([{"op": "remove", "path": "/k50/name"}])),
        ("replace", json!([{"op": "replace", "path": "/k50/x", "value": 42}])),
        ("move", json!([{"op": "move", "from": "/k50/name", "path": "/k51/name2"}])),
        ("copy", json!([{"op": "copy", "from": "/obj", "path": "/k51/obj"}])),
        ("test", json!([{"op": "test", "path": "/k50", "value": {"x": 50, "y": 100, "name": "member 50"}}])),
        ("incr", json!([{"op": "incr", "path": "/n", "value": 1}])),
        ("array_insert", json!([{"op": "add", "path": "/arr/10", "value": 7}])),
    ];
    for (name, ops) in cases {
        let ops = patch::parse_patch(ops).expect("valid patch");
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || doc.clone(),
                |d| black_box(patch::apply(d, &ops).expect("applies")),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    configure(&mut g, 30, 1.5);
    let msg = br#"{"type":"change","clientReqId":17,"mode":"overwrite","ops":[{"op":"add","path":"/t","value":{"ts":12345678,"p":"xxxxxxxxxxxxxxxx"}}]}"#;
    g.bench_function("decode_change", |b| b.iter(|| black_box(protocol::decode_client(black_box(msg)))));
    let room = new_room(1024);
    let mut i = 0;
    g.bench_function("small", |b| {
        b.iter_batched(
            || {
                i += 1;
                small_change(i)
            },
            |req| black_box(room.commit(req).expect("commits")),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

/// `[{"op":"incr","path":"/{prefix}{i}","value":1}, …]` for `i` in `0..n`.
fn incrs(prefix: &str, n: usize) -> Vec<Op> {
    let ops: Vec<Value> =
        (0..n).map(|i| json!({"op": "incr", "path": format!("/{prefix}{i}"), "value": 1})).collect();
    patch::parse_patch(Value::Array(ops)).expect("valid patch")
}

fn paths_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("paths_check");
    configure(&mut g, 10, 2.0);
    for (name, changes, ops) in [("small", 10, 1), ("ring_1024x1000", 1024, 1000)] {
        let room = Room::new(
            RoomId::parse("bench").expect("valid name"),
            RoomConfig { history: changes, history_bytes: 0, ..RoomConfig::default() },
        );
        let overwrite = |ops| ChangeRequest {
            author: WRITER,
            user: None,
            client_req_id: None,
            base_rev: None,
            mode: Mode::Overwrite,
            ops,
            extras: Default::default(),
        };
        for _ in 1..changes {
            room.commit(overwrite(incrs("k", ops))).expect("commits");
        }
        room.commit(overwrite(incrs("z", 1))).expect("commits");
        // Disjoint from every change but the newest, which it conflicts with.
        let mut mine = incrs("m", ops - 1);
        mine.extend(incrs("z", 1));
        let req = ChangeRequest { base_rev: Some(Rev(0)), mode: Mode::Paths, ..overwrite(mine) };
        g.bench_function(name, |b| {
            b.iter_batched(
                || req.clone(),
                |req| {
                    let e = room.commit(req).expect_err("conflicts with the newest change");
                    assert_eq!(e.conflicts, [changes as u64]);
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, fanout, catchup, snapshot, presence, apply, commit, paths_check);
criterion_main!(benches);
