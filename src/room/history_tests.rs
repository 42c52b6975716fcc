//! Property tests of the room's history against reference models that share none of its code:
//! undo and redo from several users against an editor model that keeps snapshots (not
//! inverses), and time travel against a model that records the state at every revision.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::ids::ClientId;
use crate::patch::Op;
use crate::protocol::{ChangeKind, Mode, Stacks as Flags};

fn room(history: usize) -> Room {
    Room::new(RoomId::parse("h").unwrap(), RoomConfig { history, ..RoomConfig::default() })
}

fn request(user: u64, kind: ChangeKind, mode: Mode, ops: Vec<Op>) -> ChangeRequest {
    ChangeRequest {
        author: ClientId(user + 1),
        user: None,
        client_req_id: Some(crate::ids::ClientReqId(1)),
        base_rev: None,
        mode,
        ops,
        extras: Extras { kind, ..Extras::default() },
    }
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    /// User `u` edits its own subtree `/u{u}` (ops on `/u{u}/{a,b,c}`) and maybe the shared `/s`.
    Edit {
        u: u64,
        own: Vec<(u8, u8, i64)>,
        shared: Option<i64>,
    },
    Undo {
        u: u64,
        overwrite: bool,
    },
    Redo {
        u: u64,
        overwrite: bool,
    },
}

fn arb_step(users: u64) -> impl Strategy<Value = Step> {
    let own = prop::collection::vec((0u8..3, 0u8..3, 0i64..4), 0..3);
    prop_oneof![
        4 => (0..users, own, prop::option::of(0i64..9))
            .prop_map(|(u, own, shared)| Step::Edit { u, own, shared }),
        3 => (0..users, any::<bool>()).prop_map(|(u, overwrite)| Step::Undo { u, overwrite }),
        2 => (0..users, any::<bool>()).prop_map(|(u, overwrite)| Step::Redo { u, overwrite }),
    ]
}

/// The ops of an `Edit`: add, replace or remove on `/u{u}/{a,b,c}`, then `replace /s`.
fn edit_ops(u: u64, own: &[(u8, u8, i64)], shared: Option<i64>) -> Vec<Op> {
    let mut ops: Vec<Value> = own
        .iter()
        .map(|&(kind, key, v)| {
            let path = format!("/u{u}/{}", ["a", "b", "c"][key as usize]);
            match kind {
                0 => json!({"op": "add", "path": path, "value": v}),
                1 => json!({"op": "replace", "path": path, "value": {"v": v}}),
                _ => json!({"op": "remove", "path": path}),
            }
        })
        .collect();
    if let Some(s) = shared {
        ops.push(json!({"op": "replace", "path": "/s", "value": s}));
    }
    if ops.is_empty() {
        ops.push(json!({"op": "add", "path": format!("/u{u}/a"), "value": 0}));
    }
    patch::parse_patch(Value::Array(ops)).unwrap()
}

/// What the model remembers of a committed change: what it needs to put back when reverted.
#[derive(Debug, Clone)]
struct Entry {
    rev: u64,
    /// `/s` before it, when it wrote `/s`.
    s_before: Option<Value>,
    /// The user's subtree before it.
    sub_before: Value,
}

/// The editor model: snapshots, not inverses.
#[derive(Debug, Default)]
struct Model {
    state: Value,
    /// Every revision: who and whether it wrote `/s` (`None` for the setup change).
    log: Vec<(Option<u64>, bool)>,
    undo: Vec<Vec<Entry>>,
    redo: Vec<Vec<Entry>>,
    lost_undo: Vec<bool>,
    lost_redo: Vec<bool>,
}

impl Model {
    fn sub(&self, u: u64) -> Value {
        self.state[format!("u{u}")].clone()
    }

    fn commit(&mut self, u: u64, s_before: Option<Value>, sub_before: Value) -> Entry {
        self.log.push((Some(u), s_before.is_some()));
        Entry { rev: self.log.len() as u64, s_before, sub_before }
    }

    fn prune(stack: &mut Vec<Entry>, lost: &mut bool, floor: u64) {
        let before = stack.len();
        stack.retain(|e| e.rev > floor);
        *lost |= stack.len() < before;
    }
}

proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 256, ..Default::default() })]

    #[test]
    fn undo_and_redo_match_an_editor_model(
        users in 2u64..4,
        history in 2usize..40,
        steps in prop::collection::vec(arb_step(3), 1..60),
    ) {
        let r = room(history);
        let mut m = Model {
            undo: vec![Vec::new(); 3],
            redo: vec![Vec::new(); 3],
            lost_undo: vec![false; 3],
            lost_redo: vec![false; 3],
            ..Model::default()
        };
        let setup = json!({"s": 0, "u0": {}, "u1": {}, "u2": {}});
        let setup_ops = patch::parse_patch(json!([{"op": "replace", "path": "", "value": setup}])).unwrap();
        r.commit(ChangeRequest { author: ClientId::HTTP, client_req_id: None, ..request(0, ChangeKind::Plain, Mode::Overwrite, setup_ops) }).unwrap();
        m.state = setup;
        m.log.push((None, true));
        let mut states = vec![json!({}), m.state.clone()];
        for step in steps {
            let head = m.log.len() as u64;
            let floor = head.saturating_sub(history as u64);
            let (u, got, flags_after) = match &step {
                Step::Edit { u, own, shared } => {
                    let u = *u % users;
                    let ops = edit_ops(u, own, *shared);
                    let mut next = m.state.clone();
                    let ok = patch::apply(&mut next, &ops).is_ok();
                    let got = r.commit(request(u, ChangeKind::Plain, Mode::Overwrite, ops));
                    prop_assert_eq!(got.is_ok(), ok, "{:?}", got);
                    if ok {
                        let s_before = shared.map(|_| m.state["s"].clone());
                        let e = m.commit(u, s_before, m.sub(u));
                        m.state = next;
                        m.undo[u as usize].push(e);
                        m.redo[u as usize].clear();
                        m.lost_redo[u as usize] = false;
                    }
                    (u, got, ok)
                }
                Step::Undo { u, overwrite } | Step::Redo { u, overwrite } => {
                    let u = *u % users;
                    let undo = matches!(step, Step::Undo { .. });
                    let kind = if undo { ChangeKind::Undo } else { ChangeKind::Redo };
                    let mode = if *overwrite { Mode::Overwrite } else { Mode::Paths };
                    let got = r.commit(request(u, kind, mode, Vec::new()));
                    let i = u as usize;
                    let (stack, lost) = if undo {
                        (&mut m.undo[i], &mut m.lost_undo[i])
                    } else {
                        (&mut m.redo[i], &mut m.lost_redo[i])
                    };
                    Model::prune(stack, lost, floor);
                    let Some(x) = stack.last().cloned() else {
                        let want = if *lost { ErrorCode::Stale } else { ErrorCode::Invalid };
                        prop_assert_eq!(got.map(|_| ()).unwrap_err().code, want);
                        continue;
                    };
                    let conflicts: Vec<u64> = if x.s_before.is_some() && !*overwrite {
                        (x.rev + 1..=head)
                            .filter(|rev| {
                                let (who, wrote_s) = m.log[*rev as usize - 1];
                                wrote_s && who != Some(u)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    if !conflicts.is_empty() {
                        let e = got.map(|_| ()).unwrap_err();
                        prop_assert_eq!(e.code, ErrorCode::Conflict);
                        prop_assert_eq!(&e.conflicts, &conflicts);
                        continue;
                    }
                    let change = got.as_ref().expect("the revert commits");
                    prop_assert_eq!(change.reverts, Some(Rev(x.rev)));
                    stack.pop();
                    let s_before = x.s_before.as_ref().map(|_| m.state["s"].clone());
                    let e = m.commit(u, s_before, m.sub(u));
                    m.state[format!("u{u}")] = x.sub_before.clone();
                    if let Some(s) = &x.s_before {
                        m.state["s"] = s.clone();
                    }
                    if undo { m.redo[i].push(e) } else { m.undo[i].push(e) }
                    (u, got, true)
                }
            };
            prop_assert_eq!(r.state().1, m.state.clone(), "after {:?}", step);
            if flags_after {
                states.push(m.state.clone());
                let change = got.unwrap();
                let floor = (m.log.len() as u64).saturating_sub(history as u64);
                let i = u as usize;
                let want = Flags {
                    can_undo: m.undo[i].last().is_some_and(|e| e.rev > floor),
                    can_redo: m.redo[i].last().is_some_and(|e| e.rev > floor),
                };
                let ack: Value = serde_json::from_slice(change.wire_ack.as_ref().unwrap()).unwrap();
                prop_assert_eq!((&ack["canUndo"], &ack["canRedo"]), (&json!(want.can_undo), &json!(want.can_redo)));
                prop_assert_eq!(r.history_flags(UserKey::of(None, ClientId(u + 1)).as_ref()), want);
            }
        }
        // Time travel over the same history.
        let head = r.rev().0;
        prop_assert_eq!(states.len() as u64, head + 1);
        let oldest = head.saturating_sub(history as u64);
        for rev in 0..=head + 1 {
            match r.state_at(Rev(rev)) {
                Ok(state) => {
                    prop_assert!(rev >= oldest && rev <= head, "rev {}", rev);
                    prop_assert_eq!(&state, &states[rev as usize], "rev {}", rev);
                }
                Err(TimeTravel::Gone { .. }) => prop_assert!(rev < oldest),
                Err(TimeTravel::Future { .. }) => prop_assert!(rev > head),
            }
        }
    }

    #[test]
    fn time_travel_reproduces_every_retained_state(
        history in 1usize..24,
        changes in prop::collection::vec(prop::collection::vec((0u8..6, 0u8..4, 0u8..4, 0i64..5), 1..5), 1..40),
    ) {
        let r = room(history);
        let mut states = vec![r.state().1];
        for ops in changes {
            let key = |k: u8| ["/a", "/b", "/a/x", "/b/0"][k as usize];
            let ops: Vec<Value> = ops
                .into_iter()
                .map(|(kind, p, q, v)| match kind {
                    0 => json!({"op": "add", "path": key(p), "value": v}),
                    1 => json!({"op": "add", "path": key(p), "value": {"x": v, "0": [v]}}),
                    2 => json!({"op": "remove", "path": key(p)}),
                    3 => json!({"op": "move", "from": key(p), "path": key(q)}),
                    4 => json!({"op": "copy", "from": key(p), "path": key(q)}),
                    _ => json!({"op": "incr", "path": key(p), "value": v}),
                })
                .collect();
            let ops = patch::parse_patch(Value::Array(ops)).unwrap();
            if r.commit(request(0, ChangeKind::Plain, Mode::Overwrite, ops)).is_ok() {
                states.push(r.state().1);
            }
        }
        let head = r.rev().0;
        let oldest = head.saturating_sub(history as u64);
        for (rev, want) in states.iter().enumerate() {
            match r.state_at(Rev(rev as u64)) {
                Ok(state) => prop_assert_eq!(&state, want, "rev {}", rev),
                Err(e) => prop_assert!((rev as u64) < oldest, "rev {}: {:?}", rev, e),
            }
        }
        prop_assert_eq!(r.state_at(Rev(head + 1)), Err(TimeTravel::Future { head }));
    }
}
