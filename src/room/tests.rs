//! The room's unit tests: commit and its limits, the conflict modes, the catch-up decision and
//! the frames it shares.

use super::*;
use crate::ids::{ClientId, ClientReqId};
use crate::protocol::Mode;
use serde_json::json;

/// The decision for a reader that says it holds `rev` of `epoch` (the changes land in `out`).
fn since(r: &Room, rev: u64, epoch: &str, out: &mut Vec<Arc<Change>>) -> CatchUp {
    r.catch_up(Cursor::Resume { epoch, since: Rev(rev) }, ClientId(99), out)
}

/// The frame `recipient` gets on waking up at `from`.
fn woken(r: &Room, from: u64, recipient: u64) -> Bytes {
    match r.catch_up(Cursor::Holds(Rev(from)), ClientId(recipient), &mut Vec::new()) {
        CatchUp::Delta { frame, .. } => frame,
        other => panic!("expected a delta, got {other:?}"),
    }
}

fn room(history: usize) -> Room {
    Room::new(RoomId::parse("t").unwrap(), RoomConfig { history, ..RoomConfig::default() })
}

fn req(mode: Mode, base: u64, ops: Value) -> ChangeRequest {
    ChangeRequest {
        author: ClientId(1),
        client_req_id: None,
        base_rev: Some(Rev(base)),
        mode,
        ops: patch::parse_patch(ops).unwrap(),
    }
}

#[test]
fn commits_bump_rev_and_fill_ring() {
    let r = room(4);
    for i in 0..6 {
        let c = r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/n", "value": i}]))).unwrap();
        assert_eq!(c.rev, Rev(i + 1));
    }
    assert_eq!(r.rev(), Rev(6));
    assert_eq!(r.state().1, json!({"n": 5}));
    assert_eq!(r.ring_occupancy(), (4, 4));
    let epoch = r.epoch().as_str();
    let mut cs = Vec::new();
    let CatchUp::Delta { .. } = since(&r, 2, epoch, &mut cs) else { panic!() };
    assert_eq!(cs.iter().map(|c| c.rev.0).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
    assert!(matches!(since(&r, 1, epoch, &mut cs), CatchUp::Snapshot(_, SnapshotReason::BehindRing)));
    assert!(matches!(since(&r, 7, epoch, &mut cs), CatchUp::Snapshot(_, SnapshotReason::BehindRing)));
    assert!(matches!(since(&r, 6, "other", &mut cs), CatchUp::Snapshot(_, SnapshotReason::Epoch)));
}

#[test]
fn rev_mode_is_first_writer_wins() {
    let r = room(8);
    r.commit(req(Mode::Rev, 0, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
    let e = r.commit(req(Mode::Rev, 0, json!([{"op": "add", "path": "/b", "value": 1}]))).unwrap_err();
    assert_eq!((e.code, e.rev, e.conflicts), (ErrorCode::Conflict, 1, vec![1]));
    assert_eq!(r.rev(), Rev(1));
}

#[test]
fn paths_mode_conflicts_only_on_overlap() {
    let r = room(2);
    r.commit(req(
        Mode::Overwrite,
        0,
        json!([{"op": "add", "path": "/board", "value": {"e2": "P", "d2": "P"}}]),
    ))
    .unwrap();
    r.commit(req(Mode::Paths, 1, json!([{"op": "move", "from": "/board/e2", "path": "/board/e4"}]))).unwrap();
    // Different square, same base: fine.
    r.commit(req(Mode::Paths, 1, json!([{"op": "move", "from": "/board/d2", "path": "/board/d4"}]))).unwrap();
    // Same square as rev 2: conflict listing rev 2.
    let e = r
        .commit(req(Mode::Paths, 1, json!([{"op": "test", "path": "/board/e4", "value": "P"}])))
        .unwrap_err();
    assert_eq!((e.code, e.conflicts), (ErrorCode::Conflict, vec![2]));
    // A parent path overlaps too.
    let e = r.commit(req(Mode::Paths, 2, json!([{"op": "remove", "path": "/board"}]))).unwrap_err();
    assert_eq!(e.conflicts, vec![3]);
    // Base older than the ring: stale.
    let e = r.commit(req(Mode::Paths, 0, json!([{"op": "add", "path": "/x", "value": 1}]))).unwrap_err();
    assert_eq!(e.code, ErrorCode::Stale);
    assert_eq!(r.rev(), Rev(3));
}

#[test]
fn root_must_stay_an_object() {
    let r = room(2);
    r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
    let e =
        r.commit(req(Mode::Overwrite, 0, json!([{"op": "replace", "path": "", "value": [1]}]))).unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    assert_eq!(r.state(), (Rev(1), json!({"a": 1})));
}

#[test]
fn limits() {
    let r = Room::new(
        RoomId::parse("t").unwrap(),
        RoomConfig { history: 4, max_state_bytes: 100, max_ops_per_change: 2, ..RoomConfig::default() },
    );
    let e = r.commit(req(Mode::Overwrite, 0, json!([{"op":"test","path":"","value":{}},{"op":"test","path":"","value":{}},{"op":"test","path":"","value":{}}]))).unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    let e = r
        .commit(req(Mode::Overwrite, 0, json!([{"op":"add","path":"/a","value":"x".repeat(200)}])))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert_eq!(r.state(), (Rev(0), json!({})));
    r.commit(req(Mode::Overwrite, 0, json!([{"op":"add","path":"/a","value":"x".repeat(50)}]))).unwrap();
    r.commit(req(Mode::Overwrite, 0, json!([{"op":"remove","path":"/a"}]))).unwrap();
    r.commit(req(Mode::Overwrite, 0, json!([{"op":"add","path":"/b","value":"x".repeat(50)}]))).unwrap();
}

#[test]
fn history_byte_budget_sends_far_readers_to_a_snapshot() {
    let r = Room::new(
        RoomId::parse("t").unwrap(),
        RoomConfig { history: 100, history_bytes: 10_000, ..RoomConfig::default() },
    );
    for i in 0..10 {
        r.commit(req(
            Mode::Overwrite,
            0,
            json!([{"op": "add", "path": "/s", "value": "x".repeat(1000 + i)}]),
        ))
        .unwrap();
    }
    assert!(r.history_bytes() <= 10_000, "{}", r.history_bytes());
    let (held, _) = r.ring_occupancy();
    assert!((1..10).contains(&held));
    let mut cs = Vec::new();
    assert!(matches!(
        since(&r, 0, r.epoch().as_str(), &mut cs),
        CatchUp::Snapshot(_, SnapshotReason::BehindRing)
    ));
    assert!(matches!(since(&r, 9, r.epoch().as_str(), &mut cs), CatchUp::Delta { .. }));
    assert_eq!(r.state_bytes(), serde_json::to_vec(&r.state().1).unwrap().len());
}

#[test]
fn snapshot_is_encoded_once_per_rev() {
    let r = room(2);
    let a = r.snapshot();
    let b = r.snapshot();
    assert!(Arc::ptr_eq(&a, &b));
    r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
    let c = r.snapshot();
    assert_eq!((c.rev, &c.state[..]), (Rev(1), &br#"{"a":1}"#[..]));
}

#[test]
fn coalesced_frames_are_shared_but_acks_stay_personal() {
    let r = room(8);
    let mut q = req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]));
    q.client_req_id = Some(ClientReqId(5));
    r.commit(q).unwrap();
    r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/b", "value": 2}]))).unwrap();
    let author = woken(&r, 0, 1);
    let other = woken(&r, 0, 2);
    let third = woken(&r, 0, 3);
    assert_eq!(other.as_ptr(), third.as_ptr(), "shared");
    let author: Value = serde_json::from_slice(&author).unwrap();
    assert_eq!(author["changes"][0], json!({"rev": 1, "client": "c1", "clientReqId": 5}));
    let other: Value = serde_json::from_slice(&other).unwrap();
    assert_eq!(other["changes"][0]["ops"][0]["path"], "/a");
}

#[test]
fn acks_go_to_the_author_only() {
    let r = room(2);
    let mut q = req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]));
    q.client_req_id = Some(ClientReqId(9));
    let c = r.commit(q).unwrap();
    assert_eq!(c.entry_for(ClientId(1)), br#"{"rev":1,"client":"c1","clientReqId":9}"#);
    assert_eq!(
        c.entry_for(ClientId(2)),
        br#"{"rev":1,"client":"c1","ops":[{"op":"add","path":"/a","value":1}]}"#
    );
}

#[test]
fn one_decision_for_join_resume_and_wake_up() {
    let r = room(4);
    let mut cs = Vec::new();
    let fresh = |resumed| r.catch_up(Cursor::Fresh { resumed }, ClientId(1), &mut Vec::new());
    assert!(matches!(fresh(false), CatchUp::Snapshot(_, SnapshotReason::Join)));
    assert!(matches!(fresh(true), CatchUp::Snapshot(_, SnapshotReason::Resume)));
    // A resume at the head gets an empty delta (one frame, always); a wake-up there gets nothing.
    let CatchUp::Delta { frame, from, to, newest_committed_at } = since(&r, 0, r.epoch().as_str(), &mut cs)
    else {
        panic!()
    };
    assert_eq!((from, to, newest_committed_at), (Rev(0), Rev(0), None));
    assert_eq!(&frame[..], br#"{"type":"delta","from":0,"to":0,"changes":[]}"#);
    assert!(matches!(r.catch_up(Cursor::Holds(Rev(0)), ClientId(1), &mut cs), CatchUp::Current));
    r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]))).unwrap();
    // A caught-up non-author is sent the frame encoded once at commit.
    let CatchUp::Delta { frame, to, newest_committed_at, .. } =
        r.catch_up(Cursor::Holds(Rev(0)), ClientId(2), &mut cs)
    else {
        panic!()
    };
    assert_eq!((to, newest_committed_at.is_some()), (Rev(1), true));
    let CatchUp::Delta { frame: again, .. } = r.catch_up(Cursor::Holds(Rev(0)), ClientId(3), &mut cs) else {
        panic!()
    };
    assert_eq!(frame.as_ptr(), again.as_ptr(), "shared, not re-encoded");
}
