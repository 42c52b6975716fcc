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
        user: None,
        client_req_id: None,
        base_rev: Some(Rev(base)),
        mode,
        ops: patch::parse_patch(ops).unwrap(),
        extras: Default::default(),
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
fn the_state_limit_holds_during_a_change() {
    let r = Room::new(
        RoomId::parse("t").unwrap(),
        RoomConfig { max_state_bytes: 10_000, ..RoomConfig::default() },
    );
    r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/v", "value": "x".repeat(1000)}])))
        .unwrap();
    let before = (r.state(), r.state_bytes());
    // Each op doubles the state: refused at the op that would cross 10,000 bytes, not after the
    // last one, and the room is left exactly as it was.
    let doubling: Vec<Value> =
        (0..30).map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")})).collect();
    let e = r.commit(req(Mode::Overwrite, 0, Value::Array(doubling))).unwrap_err();
    assert_eq!((e.code, e.rev), (ErrorCode::TooLarge, 1));
    assert!(e.message.starts_with("op 3: the state would be "), "{}", e.message);
    assert_eq!((r.state(), r.state_bytes()), before);
    // Exactly up to the limit commits, and the tracked size is the encoded size.
    let room_left = 10_000 - r.state_bytes() - r#","w":"""#.len();
    r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/w", "value": "y".repeat(room_left)}])))
        .unwrap();
    assert_eq!(r.state_bytes(), 10_000);
    assert_eq!(r.state_bytes(), serde_json::to_vec(&r.state().1).unwrap().len());
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
    let ts = author["changes"][0]["ts"].as_u64().expect("a commit time");
    assert_eq!(
        author["changes"][0],
        json!({"rev": 1, "client": "c1", "ts": ts, "clientReqId": 5, "canUndo": true, "canRedo": false})
    );
    let other: Value = serde_json::from_slice(&other).unwrap();
    assert_eq!(other["changes"][0]["ops"][0]["path"], "/a");
}

#[test]
fn acks_go_to_the_author_only() {
    let r = room(2);
    let mut q = req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": 1}]));
    q.client_req_id = Some(ClientReqId(9));
    let c = r.commit(q).unwrap();
    let ts = c.ts;
    assert_eq!(
        std::str::from_utf8(c.entry_for(ClientId(1))).unwrap(),
        format!(r#"{{"rev":1,"client":"c1","ts":{ts},"clientReqId":9,"canUndo":true,"canRedo":false}}"#)
    );
    assert_eq!(
        std::str::from_utf8(c.entry_for(ClientId(2))).unwrap(),
        format!(r#"{{"rev":1,"client":"c1","ts":{ts},"ops":[{{"op":"add","path":"/a","value":1}}]}}"#)
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

mod paths_check {
    //! The `paths`-mode check against the naive one it replaced, kept here as the reference:
    //! every touched path of every newer change against every path of every op.

    use super::*;
    use crate::patch::{Op, Pointer};
    use crate::room::conflict::{self, PathTrie};
    use proptest::prelude::*;

    fn naive_overlaps(mine: &[Pointer], t: &Pointer) -> bool {
        mine.iter().any(|p| p.overlaps(t))
    }

    /// The conflicts the naive check finds for `ops` based at `base`: ascending revisions.
    fn naive_conflicts(r: &Room, base: u64, ops: &[Op]) -> Vec<u64> {
        let mine: Vec<Pointer> = ops.iter().flat_map(Op::paths).cloned().collect();
        let mut out = Vec::new();
        assert!(r.changes_after(Rev(base), &mut out));
        out.iter().filter(|c| c.touched.iter().any(|t| naive_overlaps(&mine, t))).map(|c| c.rev.0).collect()
    }

    fn arb_pointer() -> impl Strategy<Value = Pointer> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "0", "1", "", "a/b", "~"]), 0..4).prop_map(
            |toks| {
                let s: String =
                    toks.iter().map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1"))).collect();
                Pointer::parse(&s).unwrap()
            },
        )
    }

    fn arb_op() -> impl Strategy<Value = Value> {
        let path = || arb_pointer().prop_map(|p| p.to_string());
        prop_oneof![
            (path(), 0..3i64).prop_map(|(p, v)| json!({"op": "add", "path": p, "value": v})),
            (path(), 0..3i64).prop_map(|(p, v)| json!({"op": "add", "path": p, "value": {"a": v, "b": [v]}})),
            path().prop_map(|p| json!({"op": "remove", "path": p})),
            (path(), path()).prop_map(|(f, p)| json!({"op": "copy", "from": f, "path": p})),
            (path(), path()).prop_map(|(f, p)| json!({"op": "move", "from": f, "path": p})),
            (path(), 0..3i64).prop_map(|(p, v)| json!({"op": "test", "path": p, "value": v})),
            (path(), 1..3i64).prop_map(|(p, v)| json!({"op": "incr", "path": p, "value": v})),
        ]
    }

    fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(arb_op(), 0..6)
            .prop_filter_map("parses", |ops| patch::parse_patch(Value::Array(ops)).ok())
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 512, ..Default::default() })]

        #[test]
        fn trie_overlaps_exactly_as_the_naive_check(mine in prop::collection::vec(arb_pointer(), 0..8), t in arb_pointer()) {
            let trie = PathTrie::new(&mine);
            prop_assert_eq!(trie.overlaps(&t), naive_overlaps(&mine, &t), "{:?} vs {:?}", mine, t);
        }

        #[test]
        fn paths_mode_conflicts_exactly_as_the_naive_check(
            history in prop::collection::vec(arb_ops(), 1..30),
            ring in 1usize..16,
            back in 0u64..20,
            ops in arb_ops(),
        ) {
            let r = room(ring);
            r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/a", "value": {"b": [1, {"a": 2}], "": 3}}]))).unwrap();
            for ops in history {
                let _ = r.commit(ChangeRequest { ops, ..req(Mode::Overwrite, 0, json!([])) });
            }
            let head = r.rev().0;
            let oldest = r.inner.read().ring.oldest_base();
            let base = head.saturating_sub(back).max(oldest);
            let expected = naive_conflicts(&r, base, &ops);
            let q = ChangeRequest { ops, ..req(Mode::Paths, base, json!([])) };
            let got = conflict::check_within(&r.inner.read().ring, &q, head, usize::MAX);
            match got {
                Ok(()) => prop_assert!(expected.is_empty(), "missed {:?}", expected),
                Err(e) => {
                    prop_assert_eq!(e.code, ErrorCode::Conflict);
                    prop_assert_eq!(e.conflicts, expected);
                }
            }
        }
    }

    #[test]
    fn a_check_over_the_work_bound_is_refused_before_it_runs() {
        let r = room(16);
        // Each change touches /k0../k9: 10 paths of one token, 20 units of work.
        let ten: Vec<Value> =
            (0..10).map(|i| json!({"op": "incr", "path": format!("/k{i}"), "value": 1})).collect();
        for _ in 0..5 {
            r.commit(req(Mode::Overwrite, 0, Value::Array(ten.clone()))).unwrap();
        }
        let q = req(Mode::Paths, 0, json!([{"op": "incr", "path": "/k3", "value": 1}]));
        let ring = &r.inner.read().ring;
        // Five changes after base 0: 100 units. At the bound it runs (and conflicts with all five).
        let e = conflict::check_within(ring, &q, 5, 100).unwrap_err();
        assert_eq!((e.code, e.conflicts), (ErrorCode::Conflict, vec![1, 2, 3, 4, 5]));
        // Over it: refused as stale, telling the client what to do.
        let e = conflict::check_within(ring, &q, 5, 99).unwrap_err();
        assert_eq!((e.code, e.rev), (ErrorCode::Stale, 5));
        assert!(e.message.contains("resync and retry with a newer baseRev"), "{}", e.message);
        assert!(e.conflicts.is_empty());
        // A newer base has less to check and runs.
        let q = req(Mode::Paths, 4, json!([{"op": "incr", "path": "/k3", "value": 1}]));
        assert_eq!(conflict::check_within(ring, &q, 5, 99).unwrap_err().conflicts, vec![5]);
        // The room's own bound admits a full default ring of 1,000-op changes on one-token paths.
        const { assert!(conflict::MAX_PATHS_CHECK_WORK >= 1024 * 1000 * 2) };
    }
}

mod lists {
    //! `paths` mode with the id-addressed list ops: list ops on one array never conflict with
    //! each other; they conflict with index-based ops on the array, both ways.
    use super::*;
    use crate::patch::Pointer;
    use crate::room::conflict::PathTrie;

    fn setup() -> Room {
        let r = room(16);
        let l = json!([{"id": "a"}, {"id": "b"}, {"id": "c"}]);
        r.commit(req(
            Mode::Overwrite,
            0,
            json!([{"op": "add", "path": "/l", "value": l}, {"op": "add", "path": "/m", "value": []}]),
        ))
        .unwrap();
        r
    }

    fn ids(r: &Room) -> Vec<String> {
        r.state().1["l"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn list_ops_from_one_stale_base_all_commit() {
        let r = setup();
        for op in [
            json!({"op": "list_move", "path": "/l", "id": "c", "after": null}),
            json!({"op": "list_insert", "path": "/l", "after": "a", "value": {"id": "x"}}),
            json!({"op": "list_move", "path": "/l", "id": "c", "after": "b"}),
            json!({"op": "list_remove", "path": "/l", "id": "a"}),
            json!({"op": "list_insert", "path": "/l", "after": "a", "value": {"id": "y"}}),
            json!({"op": "list_update", "path": "/l", "id": "a", "value": {"done": true}}),
            json!({"op": "list_remove", "path": "/l", "id": "a"}),
            json!({"op": "list_update", "path": "/l", "id": "b", "value": {"done": true}}),
        ] {
            r.commit(req(Mode::Paths, 1, json!([op]))).unwrap_or_else(|e| panic!("{op}: {e:?}"));
        }
        assert_eq!(ids(&r), ["x", "b", "c", "y"]);
        assert_eq!(r.state().1["l"][1], json!({"id": "b", "done": true}));
        assert_eq!(r.state_bytes(), serde_json::to_vec(&r.state().1).unwrap().len());
    }

    #[test]
    fn list_ops_and_index_ops_on_one_array_conflict_both_ways() {
        let index_ops = [
            json!({"op": "add", "path": "/l/-", "value": {"id": "i"}}),
            json!({"op": "add", "path": "/l/0/t", "value": 1}),
            json!({"op": "test", "path": "/l/0/id", "value": "a"}),
            json!({"op": "replace", "path": "", "value": {}}),
        ];
        let list_ops = [
            json!({"op": "list_insert", "path": "/l", "after": null, "value": {"id": "x"}}),
            json!({"op": "list_move", "path": "/l", "id": "a", "after": "c"}),
            json!({"op": "list_remove", "path": "/l", "id": "b"}),
            json!({"op": "list_update", "path": "/l", "id": "a", "value": {"t": 2}}),
        ];
        for index in &index_ops {
            for list in &list_ops {
                for (first, second) in [(index, list), (list, index)] {
                    let r = setup();
                    r.commit(req(Mode::Paths, 1, json!([first]))).unwrap();
                    let e = r.commit(req(Mode::Paths, 1, json!([second]))).unwrap_err();
                    assert_eq!(
                        (e.code, e.conflicts),
                        (ErrorCode::Conflict, vec![2]),
                        "{first} then {second}"
                    );
                }
            }
        }
        // Other arrays and other paths do not conflict.
        let r = setup();
        r.commit(req(Mode::Paths, 1, json!([{"op": "list_move", "path": "/l", "id": "a", "after": "c"}])))
            .unwrap();
        r.commit(req(Mode::Paths, 1, json!([{"op": "add", "path": "/m/-", "value": 1}]))).unwrap();
        r.commit(req(Mode::Paths, 1, json!([{"op": "add", "path": "/z", "value": 1}]))).unwrap();
        r.commit(req(
            Mode::Paths,
            1,
            json!([{"op": "list_insert", "path": "/l", "after": null, "value": {"id": "q"}}]),
        ))
        .unwrap();
        r.commit(req(Mode::Paths, 3, json!([{"op": "add", "path": "/l/-", "value": {"id": "r"}}])))
            .unwrap_err();
    }

    #[test]
    fn list_ops_on_nested_arrays_conflict_through_the_outer_index() {
        let r = room(16);
        let l = json!([{"id": "a", "sub": [{"id": "s"}]}, {"id": "b", "sub": []}]);
        r.commit(req(Mode::Overwrite, 0, json!([{"op": "add", "path": "/l", "value": l}]))).unwrap();
        r.commit(req(Mode::Paths, 1, json!([{"op": "list_move", "path": "/l", "id": "a", "after": "b"}])))
            .unwrap();
        // /l/0 is no longer `a`: a list op through that index conflicts.
        let e = r
            .commit(req(Mode::Paths, 1, json!([{"op": "list_remove", "path": "/l/0/sub", "id": "s"}])))
            .unwrap_err();
        assert_eq!(e.conflicts, vec![2]);
    }

    #[test]
    fn the_trie_applies_the_list_rule() {
        let p = |s: &str| Pointer::parse(s).unwrap();
        let ops = patch::parse_patch(json!([
            {"op": "list_remove", "path": "/l", "id": "a"},
            {"op": "replace", "path": "/o/k", "value": 1}
        ]))
        .unwrap();
        let t = PathTrie::from_ops(&ops);
        assert!(!t.overlaps_list(&p("/l")));
        assert!(t.overlaps(&p("/l")) && t.overlaps(&p("/l/0")) && t.overlaps(&p("")));
        assert!(t.overlaps_list(&p("/l/0/sub")) && t.overlaps_list(&p("/o")) && t.overlaps_list(&p("")));
        assert!(!t.overlaps_list(&p("/m")) && !t.overlaps(&p("/o/j")));
        let r = setup();
        let c = r
            .commit(req(Mode::Overwrite, 0, json!([{"op": "list_remove", "path": "/l", "id": "a"}])))
            .unwrap();
        let past = PathTrie::from_change(&c);
        assert!(!past.overlaps_list(&p("/l")) && past.overlaps(&p("/l/1")));
        let later = r
            .commit(req(
                Mode::Overwrite,
                0,
                json!([{"op": "list_move", "path": "/l", "id": "b", "after": null}]),
            ))
            .unwrap();
        assert!(!past.conflicts_with(&later));
        let index = r.commit(req(Mode::Overwrite, 0, json!([{"op": "remove", "path": "/l/0"}]))).unwrap();
        assert!(past.conflicts_with(&index));
    }
}
