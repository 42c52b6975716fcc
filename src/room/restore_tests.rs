//! Streaming restore against the collected one: [`Restore`], fed record by record as a store
//! streams them, must rebuild the same room (state, revision, epoch, ring, undo stacks, dedupe,
//! damage, errors) as the replay this crate did before loads streamed, which took every record
//! at once (`restore_collected` below, kept as the reference). Cases: random runs of records with
//! gaps, with or without a snapshot, a record that does not decode or does not apply; and the
//! queue before the snapshot never holds more than the ring.

use std::sync::atomic::Ordering;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::change::Committed;
use super::durable::Keep;
use super::restore::decode_record;
use super::*;
use crate::store::{
    IdempotencyKey, IdempotencyRecord, LoadSink, Loaded, Record, SessionRecord, SnapshotData,
};

fn id() -> RoomId {
    RoomId::parse("restored").unwrap()
}

/// The replay before loads streamed (`Room::restore` taking a collected [`Loaded`]), as it was:
/// the reference the streaming one must agree with.
fn restore_collected(
    id: RoomId,
    config: RoomConfig,
    loaded: Loaded,
) -> Result<(Room, Vec<String>), RestoreError> {
    let fail = |message: String| RestoreError { room: id.to_string(), message };
    let mut room = Room::new(id.clone(), config);
    room.epoch = Epoch::restored(&loaded.epoch);
    let mut damage = loaded.damage;
    let mut keep = Keep::default();
    let (base, mut state) = match &loaded.snapshot {
        Some(s) => {
            let state: Value = serde_json::from_str(&s.state)
                .map_err(|e| fail(format!("snapshot {} does not parse: {e}", s.rev)))?;
            for sess in &s.sessions {
                keep.sessions.insert(sess.token.as_str().into(), sess.clone());
            }
            for r in &s.idempotency {
                keep.idempotency.insert(r.key.clone(), r.clone());
            }
            keep.max_client = s.max_client;
            (s.rev, state)
        }
        None => (0, Value::Object(Default::default())),
    };
    if !state.is_object() {
        return Err(fail("the stored state is not an object".into()));
    }
    let first = loaded.records.first().map(|r| r.rev);
    if loaded.snapshot.is_none() && first.is_some_and(|f| f != 1) {
        return Err(fail(format!("no snapshot and the log starts at revision {}", first.unwrap_or(0))));
    }
    let g = room.inner.get_mut();
    let start = first.filter(|&f| f <= base + 1).unwrap_or(base + 1);
    g.ring.start_at(start - 1);
    let mut expected = start;
    for rec in &loaded.records {
        if rec.rev < start {
            continue;
        }
        if rec.rev != expected {
            damage.push(format!(
                "room {id}: the log jumps from revision {} to {}; replay stops",
                expected - 1,
                rec.rev
            ));
            break;
        }
        let (req, inverse, touched, list_touched, ts) = match decode_record(rec) {
            Ok(x) => x,
            Err(e) => {
                damage.push(format!("room {id}: record {}: {e}; replay stops", rec.rev));
                break;
            }
        };
        if rec.rev > base
            && let Err(e) = patch::apply(&mut state, &req.ops)
        {
            damage.push(format!("room {id}: record {} does not apply ({e}); replay stops", rec.rev));
            break;
        }
        let key = UserKey::of(req.user.as_ref(), req.author);
        let floor = g.ring.oldest_base() + u64::from(g.ring.len() == g.ring.capacity());
        let stacks = match &key {
            Some(k) => g.stacks.record(k, req.extras.kind, rec.rev, floor, g.ring.capacity()),
            None => Default::default(),
        };
        keep.max_client = keep.max_client.max(rec.author);
        if let (Some(token), Some(id)) = (&rec.session, rec.client_req_id) {
            keep.sessions.insert(
                token.as_str().into(),
                SessionRecord {
                    token: token.clone(),
                    client: rec.author,
                    user: rec.user.clone(),
                    last_req: id,
                    seen_ms: ts,
                },
            );
        }
        let ops_json = rec.ops.as_bytes();
        let mut applied = patch::Applied::default();
        (applied.inverse, applied.touched, applied.list_touched) = (inverse, touched, list_touched);
        let reverts = rec.reverts.map(Rev);
        let done = Committed { ts, reverts, key, stacks };
        let idempotency = rec.idempotency.clone();
        let (change, held) = Change::encode(Rev(rec.rev), req, ops_json, applied, done);
        if let Some(k) = idempotency {
            let response = change.http_response().to_string();
            let r = IdempotencyRecord {
                key: k.key.clone(),
                fingerprint: k.fingerprint,
                rev: rec.rev,
                response,
                ts_ms: ts,
            };
            keep.idempotency.insert(k.key, r);
        }
        g.ring.push(rec.rev, change, held);
        expected += 1;
    }
    let head = g.ring.head().max(base);
    if head > g.ring.head() {
        while g.ring.pop_oldest().is_some() {}
        g.ring.start_at(base);
        g.stacks = history::Stacks::default();
    }
    let head = g.ring.head();
    room.state_bytes.store(patch::json_size(&state), Ordering::Relaxed);
    g.state = state;
    room.rev.store(head, Ordering::Release);
    room.durable.store(head, Ordering::Release);
    *room.keep.get_mut() = keep;
    Ok((room, damage))
}

/// What the store streams, collected as [`crate::store::Store::load`] does: a record that does
/// not follow the one before makes those before it of no use.
fn collected(stream: &[Record]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for r in stream {
        if out.last().is_some_and(|last| last.rev + 1 != r.rev) {
            out.clear();
        }
        out.push(r.clone());
    }
    out
}

/// Streams `stream` through a [`Restore`]: the room, the damage, and the queue's peak.
fn restore_streamed(
    config: RoomConfig,
    snapshot: Option<&SnapshotData>,
    stream: &[Record],
) -> (Result<(Room, Vec<String>), RestoreError>, usize) {
    let mut restore = Restore::new(id(), config, &crate::memory::Budget::unlimited());
    restore.snapshot(snapshot);
    for r in stream {
        restore.record(r.clone());
    }
    let peak = restore.held_peak();
    let loaded = Loaded {
        epoch: "ep-restored".into(),
        snapshot: snapshot.cloned(),
        records: Vec::new(),
        damage: vec!["from the store".into()],
        owner: None,
    };
    (restore.finish(loaded), peak)
}

/// Everything a restore decides, comparable.
#[derive(Debug, PartialEq)]
struct View {
    rev: u64,
    epoch: String,
    state: Value,
    ring: (u64, u64, usize),
    /// Each ring entry: revision, delta frame, ack frame, undo key.
    entries: Vec<(u64, bytes::Bytes, Option<bytes::Bytes>, Option<UserKey>)>,
    sessions: Vec<(String, SessionRecord)>,
    idempotency: Vec<(String, IdempotencyRecord)>,
    max_client: u64,
    state_bytes: usize,
}

fn view(room: &Room) -> View {
    let g = room.inner.read();
    let keep = room.keep.lock();
    let mut entries: Vec<_> = g
        .ring
        .newest_first()
        .map(|c| (c.rev.0, c.delta_frame.clone(), c.wire_ack.clone(), c.key.clone()))
        .collect();
    entries.reverse();
    let mut sessions: Vec<_> = keep.sessions.iter().map(|(k, s)| (k.to_string(), s.clone())).collect();
    sessions.sort_by(|a, b| a.0.cmp(&b.0));
    let mut idempotency: Vec<_> = keep.idempotency.iter().map(|(k, r)| (k.clone(), r.clone())).collect();
    idempotency.sort_by(|a, b| a.0.cmp(&b.0));
    View {
        rev: room.rev().0,
        epoch: room.epoch().as_str().to_string(),
        state: g.state.clone(),
        ring: (g.ring.head(), g.ring.oldest_base(), g.ring.len()),
        entries,
        sessions,
        idempotency,
        max_client: keep.max_client,
        state_bytes: room.state_bytes(),
    }
}

/// Streamed and collected agree on `stream` (as a store would hand it over, for a ring of
/// `capacity` and the snapshot at `snapshot`); returns the streamed outcome and queue peak.
fn check_same(
    capacity: usize,
    snapshot: Option<&SnapshotData>,
    stream: &[Record],
) -> (Result<(View, Vec<String>), RestoreError>, usize) {
    let config = RoomConfig { history: capacity, ..RoomConfig::default() };
    let (streamed, peak) = restore_streamed(config.clone(), snapshot, stream);
    let loaded = Loaded {
        epoch: "ep-restored".into(),
        snapshot: snapshot.cloned(),
        records: collected(stream),
        damage: vec!["from the store".into()],
        owner: None,
    };
    let reference = restore_collected(id(), config, loaded);
    let streamed = streamed.map(|(room, damage)| {
        let stacks_agree =
            reference.as_ref().is_ok_and(|(r, _)| r.inner.read().stacks == room.inner.read().stacks);
        ((view(&room), damage), stacks_agree)
    });
    let reference = reference.map(|(room, damage)| (view(&room), damage));
    match (&streamed, &reference) {
        (Ok((s, stacks_agree)), Ok(r)) => {
            assert_eq!(s, r, "streamed vs collected");
            assert!(stacks_agree, "undo stacks differ");
        }
        (Err(s), Err(r)) => assert_eq!(s, r),
        _ => panic!("streamed {streamed:?} vs collected {reference:?}"),
    }
    assert!(peak <= capacity, "the queue held {peak} records, the ring holds {capacity}");
    (streamed.map(|(s, _)| s), peak)
}

/// Record `rev`, varied by `rev` (authors, users, sessions, undo kinds, keys, meta).
fn record(rev: u64) -> Record {
    let author = rev % 3;
    let key = format!("/k{}", rev % 5);
    Record {
        rev,
        ts: 1_700_000_000_000 + rev,
        author,
        session: (author != 0).then(|| format!("s{}", rev % 2)),
        user: rev.is_multiple_of(4).then(|| "u1".to_string()),
        client_req_id: (author != 0).then_some(rev),
        kind: if rev % 7 == 3 { 1 } else { 0 },
        reverts: None,
        ops: json!([{"op": "add", "path": key, "value": rev}]).to_string(),
        inverse: json!([{"op": "remove", "path": key}]).to_string(),
        touched: vec![key],
        list_touched: vec![],
        meta: (rev % 5 == 1).then(|| r#"{"m":1}"#.to_string()),
        idempotency: (author == 0).then(|| IdempotencyKey { key: format!("i{rev}"), fingerprint: rev }),
    }
}

/// How a record is damaged.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// Its ops are not JSON.
    Undecodable,
    /// Its op removes what is not there.
    Inapplicable,
}

fn damaged(mut r: Record, bad: Bad) -> Record {
    r.ops = match bad {
        Bad::Undecodable => "[{".into(),
        Bad::Inapplicable => json!([{"op": "remove", "path": "/nowhere"}]).to_string(),
    };
    r
}

fn snapshot(rev: u64, state: &str) -> SnapshotData {
    SnapshotData {
        epoch: "ep-restored".into(),
        rev,
        ts: 1,
        state: state.into(),
        sessions: vec![SessionRecord {
            token: "s1".into(),
            client: 1,
            user: None,
            last_req: rev,
            seen_ms: 5,
        }],
        idempotency: vec![IdempotencyRecord {
            key: "old".into(),
            fingerprint: 1,
            rev,
            response: "{}".into(),
            ts_ms: 5,
        }],
        max_client: 7,
    }
}

/// What a store streams for runs of revisions (`(first, len)`, ascending and apart) with a
/// snapshot at `base`: from `keep` before the snapshot on, cut where a gap is not one the
/// snapshot covers (the store stops at it as damage), with record `bad_at` (an index) damaged.
fn stream(runs: &[(u64, u64)], base: Option<u64>, keep: usize, bad: Option<(usize, Bad)>) -> Vec<Record> {
    let from = base.map_or(0, |b| b.saturating_sub(keep as u64));
    let mut out: Vec<Record> = Vec::new();
    let mut prev: Option<u64> = None;
    'runs: for &(first, len) in runs {
        for rev in first..first + len {
            if let Some(p) = prev
                && rev != p + 1
                && rev > base.unwrap_or(0) + 1
            {
                break 'runs;
            }
            prev = Some(rev);
            if rev > from {
                out.push(record(rev));
            }
        }
    }
    if let Some((at, how)) = bad
        && let Some(r) = out.get_mut(at)
    {
        *r = damaged(r.clone(), how);
    }
    out
}

#[test]
fn a_gap_the_snapshot_covers_drops_what_was_queued_before_it() {
    // 3..=7, then 9..=15 with the snapshot at 10: 3..=7 are of no use.
    let s = snapshot(10, r#"{"k0":0}"#);
    let records = stream(&[(3, 5), (9, 7)], Some(10), 8, None);
    let revs: Vec<u64> = records.iter().map(|r| r.rev).collect();
    assert_eq!(revs, [3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]);
    let (out, peak) = check_same(8, Some(&s), &records);
    let (v, damage) = out.unwrap();
    assert_eq!((v.rev, v.ring), (15, (15, 8, 7)), "the ring starts after the gap");
    assert_eq!(damage, ["from the store"]);
    assert_eq!(peak, 5, "3..=7 waited for the ring, then went");
}

#[test]
fn replay_stops_at_a_record_that_does_not_apply_and_ignores_the_rest() {
    let s = snapshot(5, r#"{"k0":0}"#);
    let mut records = stream(&[(1, 12)], Some(5), 3, None);
    let at = records.iter().position(|r| r.rev == 8).unwrap();
    records[at] = damaged(records[at].clone(), Bad::Inapplicable);
    let (out, _) = check_same(3, Some(&s), &records);
    let (v, damage) = out.unwrap();
    assert_eq!(v.rev, 7, "replay stops before 8; 9.. are ignored");
    assert_eq!(damage.len(), 2);
    assert!(damage[1].contains("record 8 does not apply"), "{damage:?}");
    // Undecodable before the snapshot (in the ring's reach): the ring stops there, and the
    // snapshot, being newer, is what the room holds.
    let mut records = stream(&[(1, 12)], Some(5), 3, None);
    records[0] = damaged(records[0].clone(), Bad::Undecodable);
    let (out, _) = check_same(3, Some(&s), &records);
    let (v, damage) = out.unwrap();
    assert_eq!((v.rev, v.ring, v.state), (5, (5, 5, 0), json!({"k0": 0})));
    assert!(damage[1].contains("record 3: ops"), "{damage:?}");
}

#[test]
fn no_snapshot_and_a_log_after_revision_1_is_an_error_either_way() {
    let (out, _) = check_same(4, None, &stream(&[(2, 3)], None, 4, None));
    assert_eq!(out.unwrap_err().message, "no snapshot and the log starts at revision 2");
}

#[test]
fn the_queue_before_the_snapshot_never_holds_more_than_the_ring() {
    // A store asked to keep far more than the ring (or one that hands over the whole log).
    let s = snapshot(500, r#"{"k0":0}"#);
    let mut restore =
        Restore::new(id(), RoomConfig { history: 8, ..RoomConfig::default() }, &Budget::unlimited());
    restore.snapshot(Some(&s));
    for rev in 1..=510 {
        restore.record(record(rev));
    }
    assert_eq!(restore.held_peak(), 8);
    let loaded = Loaded { epoch: "e".into(), snapshot: Some(s), ..Loaded::default() };
    let (room, damage) = restore.finish(loaded).unwrap();
    assert!(damage.is_empty(), "{damage:?}");
    assert_eq!(room.rev().0, 510);
    assert_eq!(room.ring_occupancy(), (8, 8));
    let mut out = Vec::new();
    assert!(room.changes_after(Rev(502), &mut out));
    assert!(!room.changes_after(Rev(501), &mut out), "the ring holds the last 8");
}

fn bad_strategy() -> impl Strategy<Value = Option<(usize, Bad)>> {
    prop_oneof![
        2 => Just(None),
        1 => (0usize..30, prop_oneof![Just(Bad::Undecodable), Just(Bad::Inapplicable)]).prop_map(Some),
    ]
}

fn state_strategy() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just(r#"{"k1":"s"}"#), 1 => Just("[1]"), 1 => Just("{")]
}

proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, ..Default::default() })]

    #[test]
    fn streaming_restore_equals_the_collected_one(
        capacity in 1usize..7,
        base in prop::option::of(1u64..30),
        state in state_strategy(),
        first in 1u64..8,
        runs in prop::collection::vec((1u64..6, 0u64..12), 1..4),
        bad in bad_strategy(),
    ) {
        // Runs apart by at least one missing revision.
        let mut spans = Vec::new();
        let mut at = first;
        for (i, &(gap, len)) in runs.iter().enumerate() {
            if i > 0 {
                at += gap;
            }
            spans.push((at, len));
            at += len;
        }
        let snap = base.map(|b| snapshot(b, state));
        let records = stream(&spans, base, capacity, bad);
        let _ = check_same(capacity, snap.as_ref(), &records);
    }
}
