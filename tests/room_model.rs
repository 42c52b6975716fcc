//! Property tests: a room behaves like a plain reference model (clone the document, apply the
//! patch with the independent `json-patch` crate, keep it on success), and its catch-up data and
//! inverses are consistent with the states it went through. Plus a concurrency test: many
//! threads committing to one room produce dense revisions and lose nothing.

use std::sync::Arc;

use proptest::prelude::*;
use ringsync::ids::{ClientId, Rev, RoomId};
use ringsync::patch::{self, Op};
use ringsync::protocol::Mode;
use ringsync::room::{CatchUp, ChangeRequest, Cursor, Room, RoomConfig};
use serde_json::{Value, json};

/// Reference semantics: atomic by cloning, standard ops by the `json-patch` crate, `incr` by hand.
fn model_apply(doc: &Value, ops: &[Op]) -> Option<Value> {
    let mut d = doc.clone();
    for op in ops {
        match op {
            Op::Incr { path, value } => {
                let p = path.to_string();
                match d.pointer(&p) {
                    Some(Value::Number(old)) => {
                        let sum = patch::add_numbers(old, value)?;
                        *d.pointer_mut(&p)? = Value::Number(sum);
                    }
                    Some(_) => return None,
                    None => {
                        let add = json!([{"op": "add", "path": p, "value": value}]);
                        let p: json_patch::Patch = serde_json::from_value(add).ok()?;
                        json_patch::patch(&mut d, &p).ok()?;
                    }
                }
            }
            // RFC 6902 only forbids moving into a proper child; moving a value onto itself is a
            // no-op (the `json-patch` crate refuses it at the root).
            Op::Move { from, path } if from == path => {
                d.pointer(&from.to_string())?;
            }
            other => {
                let one: json_patch::Patch = serde_json::from_value(json!([other])).expect("op converts");
                json_patch::patch(&mut d, &one).ok()?;
            }
        }
    }
    d.is_object().then_some(d)
}

fn arb_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/a".to_owned()),
        Just("/b".to_owned()),
        Just("/a/x".to_owned()),
        Just("/a/y".to_owned()),
        Just("/l".to_owned()),
        Just("/l/0".to_owned()),
        Just("/l/1".to_owned()),
        Just("/l/-".to_owned()),
        Just("/n".to_owned()),
        Just("/q~1\"é".to_owned()),
        Just("/l/0/x".to_owned()),
        Just("".to_owned()),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z]{0,3}".prop_map(Value::from),
        Just(json!({})),
        Just(json!({"x": 1})),
        Just(json!([])),
        Just(json!([1, 2])),
        Just(json!(null)),
        Just(json!(1.5)),
    ]
}

fn arb_op() -> impl Strategy<Value = Value> {
    prop_oneof![
        (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "add", "path": p, "value": v})),
        arb_path().prop_map(|p| json!({"op": "remove", "path": p})),
        (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "replace", "path": p, "value": v})),
        (arb_path(), arb_path()).prop_map(|(f, p)| json!({"op": "move", "from": f, "path": p})),
        (arb_path(), arb_path()).prop_map(|(f, p)| json!({"op": "copy", "from": f, "path": p})),
        (arb_path(), arb_value()).prop_map(|(p, v)| json!({"op": "test", "path": p, "value": v})),
        (arb_path(), -5i64..5).prop_map(|(p, n)| json!({"op": "incr", "path": p, "value": n})),
    ]
}

fn arb_changes() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(
        prop::collection::vec(arb_op(), 1..4)
            .prop_filter_map("parses", |ops| patch::parse_patch(Value::Array(ops)).ok()),
        1..60,
    )
}

fn overwrite(ops: Vec<Op>) -> ChangeRequest {
    ChangeRequest {
        author: ClientId(1),
        user: None,
        client_req_id: None,
        base_rev: None,
        mode: Mode::Overwrite,
        ops,
        extras: Default::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn room_matches_reference_model(changes in arb_changes(), history in 1usize..12) {
        let room = Room::new(RoomId::parse("p").unwrap(), RoomConfig { history, ..RoomConfig::default() });
        let mut model = json!({});
        let mut states = vec![model.clone()];
        for ops in changes {
            let expected = model_apply(&model, &ops);
            let got = room.commit(overwrite(ops.clone()));
            prop_assert_eq!(got.is_ok(), expected.is_some(), "ops {:?} on {}: {:?}", ops, model, got.err());
            if let Some(next) = expected {
                model = next;
                states.push(model.clone());
            }
            let (rev, state) = room.state();
            prop_assert_eq!(rev.0 as usize, states.len() - 1);
            prop_assert_eq!(&state, &model);
            // The size the room tracks op by op is exactly the encoded state's.
            prop_assert_eq!(room.state_bytes(), serde_json::to_vec(&model).unwrap().len());
        }
        // Catch-up: for every rev the ring can answer for, replaying the delta a reader at r gets
        // on the state at r yields the current state; and the inverses walk back to it.
        let head = room.rev().0;
        let epoch = room.epoch().as_str().to_owned();
        let mut cs = Vec::new();
        for r in 0..=head {
            match room.catch_up(Cursor::Resume { epoch: &epoch, since: Rev(r) }, ClientId(99), &mut cs) {
                CatchUp::Current => prop_assert!(false, "a resume always gets a frame"),
                CatchUp::Delta { to, .. } => {
                    prop_assert_eq!(to.0, head);
                    prop_assert!(head - r <= history as u64);
                    let mut s = states[r as usize].clone();
                    for c in &cs {
                        patch::apply(&mut s, &c.ops).unwrap();
                    }
                    prop_assert_eq!(&s, &model);
                    let mut back = model.clone();
                    for c in cs.iter().rev() {
                        patch::apply(&mut back, &c.inverse).unwrap();
                    }
                    prop_assert_eq!(&back, &states[r as usize]);
                }
                CatchUp::Snapshot(snap, _) => {
                    prop_assert!(head - r > history as u64, "rev {} is in the ring but got a snapshot", r);
                    prop_assert_eq!(snap.rev.0, head);
                    let decoded: Value = serde_json::from_slice(&snap.state).unwrap();
                    prop_assert_eq!(&decoded, &model);
                }
            }
        }
    }

    #[test]
    fn inverse_undoes_any_successful_patch(ops in prop::collection::vec(arb_op(), 1..6), start in arb_value()) {
        let Ok(ops) = patch::parse_patch(Value::Array(ops)) else { return Ok(()) };
        let mut doc = json!({"a": {"x": 1}, "l": [1, 2, 3], "n": 0, "b": start});
        let before = doc.clone();
        match patch::apply(&mut doc, &ops) {
            Ok(applied) => {
                let size = |d: &Value| serde_json::to_vec(d).unwrap().len() as i64;
                prop_assert_eq!(size(&before) + applied.size_delta, size(&doc), "exact size delta");
                patch::apply(&mut doc, &applied.inverse).unwrap();
                prop_assert_eq!(doc, before);
            }
            Err(_) => prop_assert_eq!(doc, before),
        }
    }
}

/// What [`patch::apply_within`] must do, worked out op by op with the unlimited engine on a copy:
/// the first op that fails, or that grows the document past the limit, or that makes what the
/// inverses keep pass it, is the error (with its index); else the final document.
fn model_within(doc: &Value, ops: &[Op], limit: usize) -> Result<Value, (usize, Option<patch::Grows>)> {
    let size = |d: &Value| serde_json::to_vec(d).unwrap().len();
    let mut d = doc.clone();
    let mut kept = 0;
    for (i, op) in ops.iter().enumerate() {
        let before = size(&d);
        let one = patch::apply(&mut d, std::slice::from_ref(op)).map_err(|_| (i, None))?;
        let after = size(&d);
        if after > before && after > limit {
            return Err((i, Some(patch::Grows::State)));
        }
        kept += one.inverse_bytes;
        if one.inverse_bytes > 0 && kept > limit {
            return Err((i, Some(patch::Grows::Undo)));
        }
    }
    Ok(d)
}

fn arb_big_op() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => arb_op(),
        1 => arb_path().prop_map(|p| json!({"op": "copy", "from": "", "path": p})),
        1 => (arb_path(), 0usize..40).prop_map(|(p, n)| json!({"op": "add", "path": p, "value": "x".repeat(n)})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// `apply_within` never lets the document's encoded size (or what the inverse keeps) pass
    /// the budget at any op, refuses exactly the op the reference refuses, leaves the document
    /// unchanged on any error, and keeps its size accounting exact on success.
    #[test]
    fn apply_within_holds_the_budget_at_every_op(
        ops in prop::collection::vec(arb_big_op(), 1..10),
        start in arb_value(),
        limit in 20usize..400,
    ) {
        let Ok(ops) = patch::parse_patch(Value::Array(ops)) else { return Ok(()) };
        let mut doc = json!({"a": {"x": 1}, "l": [1, 2, 3], "n": 0, "b": start});
        let before = doc.clone();
        let size = |d: &Value| serde_json::to_vec(d).unwrap().len();
        let expected = model_within(&doc, &ops, limit);
        let got = patch::apply_within(&mut doc, &ops, patch::Budget { size: size(&before), limit });
        match (got, expected) {
            (Ok(applied), Ok(model)) => {
                prop_assert_eq!(&doc, &model);
                prop_assert_eq!(size(&before) as i64 + applied.size_delta, size(&doc) as i64);
                prop_assert!(applied.inverse_bytes <= limit);
                patch::apply(&mut doc, &applied.inverse).unwrap();
                prop_assert_eq!(doc, before);
            }
            (Err(e), Err((index, grows))) => {
                prop_assert_eq!(&doc, &before, "unchanged after {:?}", e);
                match e {
                    patch::PatchError::TooLarge { index: i, what, size: s, limit: l } => {
                        prop_assert_eq!((i, Some(what), l), (index, grows, limit));
                        prop_assert!(s > limit);
                    }
                    patch::PatchError::Invalid { index: i, .. } | patch::PatchError::TestFailed { index: i, .. } => {
                        prop_assert_eq!((i, None), (index, grows));
                    }
                    // The generated ops are not list ops: they never scan a list.
                    patch::PatchError::TooMuchWork { .. } => prop_assert!(false, "{:?}", e),
                }
            }
            (got, expected) => prop_assert!(false, "ops {:?} on {} within {}: got {:?}, expected {:?}", ops, before, limit, got, expected),
        }
    }
}

#[test]
fn concurrent_commits_are_dense_and_lossless() {
    const THREADS: u64 = 8;
    const EACH: u64 = 500;
    let room =
        Arc::new(Room::new(RoomId::parse("c").unwrap(), RoomConfig { history: 64, ..RoomConfig::default() }));
    room.commit(overwrite(patch::parse_patch(json!([{"op": "add", "path": "/log", "value": []}])).unwrap()))
        .unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let room = room.clone();
            std::thread::spawn(move || {
                let mut revs = Vec::new();
                for i in 0..EACH {
                    let ops = patch::parse_patch(json!([
                        {"op": "incr", "path": "/count", "value": 1},
                        {"op": "add", "path": "/log/-", "value": [t, i]}
                    ]))
                    .unwrap();
                    let c = room
                        .commit(ChangeRequest { author: ClientId(t + 1), ..overwrite(ops) })
                        .expect("overwrite never conflicts");
                    revs.push(c.rev.0);
                }
                revs
            })
        })
        .collect();
    let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (2..=THREADS * EACH + 1).collect::<Vec<_>>(), "revisions are dense and unique");
    let (rev, state) = room.state();
    assert_eq!(rev.0, THREADS * EACH + 1);
    assert_eq!(state["count"], json!(THREADS * EACH));
    let log = state["log"].as_array().unwrap();
    for t in 0..THREADS {
        let mine: Vec<u64> =
            log.iter().filter(|e| e[0] == json!(t)).map(|e| e[1].as_u64().unwrap()).collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "thread {t}'s changes are all there, in order");
    }
    // The ring agrees with the state: its newest entries are the last commits in rev order.
    let mut out = Vec::new();
    assert!(room.changes_after(Rev(rev.0 - 64), &mut out));
    assert_eq!(out.iter().map(|c| c.rev.0).collect::<Vec<_>>(), (rev.0 - 63..=rev.0).collect::<Vec<_>>());
    assert!(!room.changes_after(Rev(rev.0 - 65), &mut out));
}

/// Arbitrary JSON of bounded size and depth.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-z/~0-9-]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z/~0-9-]{0,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever a client sends, decoding never panics.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ringsync::protocol::decode_client(&bytes);
    }

    /// Whatever a client sends as a change, the room either commits it or refuses it, never
    /// panics, keeps its root an object, and leaves state, rev and size untouched on refusal.
    #[test]
    fn arbitrary_changes_commit_or_leave_the_room_untouched(
        msgs in prop::collection::vec((arb_json(), arb_json()), 1..8),
    ) {
        let room = Room::new(RoomId::parse("fuzz").unwrap(), RoomConfig::default());
        for (ops, extra) in msgs {
            // Shape some of them like ops: an array of objects with op/path/value/from.
            let shaped = match (&ops, &extra) {
                (Value::Object(m), _) => json!([{"op": m.keys().next().cloned().unwrap_or_default(), "path": "", "value": extra}]),
                (Value::Array(_), _) => ops.clone(),
                _ => json!([{"op": "add", "path": format!("/{}", ops), "value": extra}]),
            };
            let Ok(parsed) = patch::parse_patch(shaped) else { continue };
            let before = room.state();
            match room.commit(overwrite(parsed)) {
                Ok(_) => prop_assert!(room.state().1.is_object()),
                Err(_) => prop_assert_eq!(room.state(), before),
            }
            prop_assert_eq!(room.state_bytes(), serde_json::to_vec(&room.state().1).unwrap().len());
        }
    }
}
