//! Id-addressed list ops under concurrency, against a reference model.
//!
//! Three clients start from the same list at the same revision. Each makes random
//! `list_insert` / `list_move` / `list_remove` / `list_update` changes against its own copy (its
//! own changes applied optimistically, the others' unseen), so every change carries the shared,
//! stale `baseRev`. A room in `paths` mode commits them in a random interleaving (each client's
//! own order kept). Every commit must succeed; the final list must hold no duplicate id, every
//! inserted element nobody removed, every original element nobody removed, nothing else; and a
//! plain `Vec` model of the contract's rules, written here independently of the server, must
//! end with the same list, values included. Index-based ops on the same array keep working and
//! conflict with the list ops as any array edit does.

use std::collections::BTreeSet;

use proptest::prelude::*;
use ringsync::ids::{ClientId, Rev, RoomId};
use ringsync::patch::{self, Op};
use ringsync::protocol::{ErrorCode, Mode};
use ringsync::room::{ChangeRequest, Room, RoomConfig};
use serde_json::{Map, Value, json};

const PATH: &str = "/todos";

/// The reference model: a list of (id, members) pairs and the contract's rules, nothing else.
#[derive(Debug, Clone, PartialEq)]
struct Model(Vec<(String, Map<String, Value>)>);

impl Model {
    fn find(&self, id: &str) -> Option<usize> {
        self.0.iter().position(|(x, _)| x == id)
    }

    /// Where an element goes "after" `after`: head for none, after it when present, else the end.
    fn slot(&self, after: &Option<String>) -> usize {
        match after {
            None => 0,
            Some(a) => self.find(a).map_or(self.0.len(), |k| k + 1),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::ListInsert { after, value, .. } => {
                let mut m = value.as_object().unwrap().clone();
                let id = m.remove("id").unwrap().as_str().unwrap().to_owned();
                assert!(self.find(&id).is_none(), "the generator makes fresh ids");
                let at = self.slot(after);
                self.0.insert(at, (id, m));
            }
            Op::ListMove { id, after, .. } => {
                if after.as_deref() == Some(id.as_str()) {
                    return;
                }
                if let Some(k) = self.find(id) {
                    let el = self.0.remove(k);
                    let at = self.slot(after);
                    self.0.insert(at, el);
                }
            }
            Op::ListRemove { id, .. } => {
                if let Some(k) = self.find(id) {
                    self.0.remove(k);
                }
            }
            Op::ListUpdate { id, value, .. } => {
                if let Some(k) = self.find(id) {
                    for (name, v) in value.as_object().unwrap() {
                        if name == "id" {
                            continue;
                        }
                        if v.is_null() {
                            self.0[k].1.remove(name);
                        } else {
                            self.0[k].1.insert(name.clone(), v.clone());
                        }
                    }
                }
            }
            other => panic!("not a list op: {other:?}"),
        }
    }

    fn to_json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|(id, m)| {
                    let mut o = m.clone();
                    o.insert("id".into(), json!(id));
                    Value::Object(o)
                })
                .collect(),
        )
    }

    fn ids(&self) -> Vec<String> {
        self.0.iter().map(|(id, _)| id.clone()).collect()
    }
}

/// One random op, chosen by `(kind, pick, anchor, value)` against the client's own copy.
type Seed = (u8, u8, u8, u8);

fn start() -> Model {
    Model((0..5).map(|k| (format!("s{k}"), Map::new())).collect())
}

/// Turns a seed into an op against `local` (names an element the client sees, or a ghost).
fn make_op(local: &Model, client: usize, serial: &mut usize, (kind, pick, anchor, value): Seed) -> Op {
    let name = |n: u8| -> String {
        if local.0.is_empty() || n % 8 == 7 {
            format!("ghost{n}")
        } else {
            local.0[n as usize % local.0.len()].0.clone()
        }
    };
    let after = if anchor % 5 == 0 { None } else { Some(name(anchor)) };
    let op = match kind % 4 {
        0 => {
            *serial += 1;
            json!({"op": "list_insert", "path": PATH, "after": after,
                   "value": {"id": format!("c{client}-{serial}"), "by": client}})
        }
        1 => json!({"op": "list_move", "path": PATH, "id": name(pick), "after": after}),
        2 => json!({"op": "list_remove", "path": PATH, "id": name(pick)}),
        _ => {
            let v = match value % 3 {
                0 => json!({"v": value}),
                1 => json!({"v": null, "w": client}),
                _ => json!({"done": value % 2 == 0}),
            };
            json!({"op": "list_update", "path": PATH, "id": name(pick), "value": v})
        }
    };
    serde_json::from_value(op).unwrap()
}

fn room_with_start() -> (Room, u64) {
    let room = Room::new(RoomId::parse("lists").unwrap(), RoomConfig::default());
    let ops = patch::parse_patch(json!([{"op": "add", "path": PATH, "value": start().to_json()}])).unwrap();
    let c = room.commit(request(0, None, Mode::Overwrite, ops)).unwrap();
    (room, c.rev.0)
}

fn request(client: u64, base: Option<u64>, mode: Mode, ops: Vec<Op>) -> ChangeRequest {
    ChangeRequest {
        author: ClientId(client),
        user: None,
        client_req_id: None,
        base_rev: base.map(Rev),
        mode,
        ops,
        extras: Default::default(),
    }
}

fn todos(room: &Room) -> Value {
    room.state().1["todos"].clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn three_stale_clients_converge_with_nothing_lost_or_duplicated(
        clients in proptest::collection::vec(
            // Each client: up to 8 changes of 1 to 3 ops.
            proptest::collection::vec(proptest::collection::vec(any::<Seed>(), 1..4), 0..8),
            3,
        ),
        order in proptest::collection::vec(0usize..3, 0..64),
    ) {
        let (room, base) = room_with_start();
        // Each client makes its changes against its own copy: the start plus its own changes.
        let mut changes: Vec<std::collections::VecDeque<Vec<Op>>> = Vec::new();
        let mut inserted = BTreeSet::new();
        let mut removed = BTreeSet::new();
        for (c, seeds) in clients.iter().enumerate() {
            let mut local = start();
            let mut serial = 0;
            let mut mine = std::collections::VecDeque::new();
            for change in seeds {
                let ops: Vec<Op> = change
                    .iter()
                    .map(|s| {
                        let op = make_op(&local, c, &mut serial, *s);
                        local.apply(&op);
                        op
                    })
                    .collect();
                for op in &ops {
                    match op {
                        Op::ListInsert { value, .. } => { inserted.insert(value["id"].as_str().unwrap().to_owned()); }
                        Op::ListRemove { id, .. } => { removed.insert(id.clone()); }
                        _ => {}
                    }
                }
                mine.push_back(ops);
            }
            changes.push(mine);
        }
        // A random interleaving, then whatever is left in client order.
        let mut model = start();
        let commit = |c: usize, ops: Vec<Op>, model: &mut Model| -> Result<(), TestCaseError> {
            for op in &ops {
                model.apply(op);
            }
            let r = room.commit(request(c as u64 + 1, Some(base), Mode::Paths, ops));
            prop_assert!(r.is_ok(), "client {} with stale baseRev {}: {:?}", c, base, r.err());
            Ok(())
        };
        for c in order.into_iter().chain([0, 1, 2].into_iter().flat_map(|c| std::iter::repeat_n(c, 8))) {
            if let Some(ops) = changes[c].pop_front() {
                commit(c, ops, &mut model)?;
            }
        }
        let state = todos(&room);
        prop_assert_eq!(&state, &model.to_json());
        let ids: Vec<String> = model.ids();
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        prop_assert_eq!(unique.len(), ids.len(), "duplicate id in {:?}", ids);
        let expected: BTreeSet<String> =
            start().ids().into_iter().chain(inserted).filter(|id| !removed.contains(id)).collect();
        prop_assert_eq!(unique, expected);
        prop_assert_eq!(room.state_bytes(), serde_json::to_vec(&room.state().1).unwrap().len());
    }
}

fn ops(v: Value) -> Vec<Op> {
    patch::parse_patch(v).unwrap()
}

#[test]
fn index_ops_on_a_list_keep_working_and_conflict_with_list_ops() {
    let (room, base) = room_with_start();
    let mv = json!([{"op": "list_move", "path": PATH, "id": "s4", "after": null}]);
    room.commit(request(1, Some(base), Mode::Paths, ops(mv.clone()))).unwrap();
    room.commit(request(2, Some(base), Mode::Paths, ops(mv.clone()))).unwrap();
    // An index-based op from the stale base conflicts with both list changes.
    let index = json!([{"op": "replace", "path": "/todos/0/title", "value": "x"}]);
    let e = room.commit(request(3, Some(base), Mode::Paths, ops(index))).unwrap_err();
    assert_eq!((e.code, e.conflicts), (ErrorCode::Conflict, vec![base + 1, base + 2]));
    // From the current revision it commits, on the element now at index 0.
    let cur = room.rev().0;
    let add = json!([{"op": "add", "path": "/todos/0/title", "value": "x"}, {"op": "add", "path": "/todos/-", "value": {"id": "i"}}]);
    room.commit(request(3, Some(cur), Mode::Paths, ops(add))).unwrap();
    assert_eq!(todos(&room)[0], json!({"id": "s4", "title": "x"}));
    // And now a list op from before it conflicts with it; from after it, list ops see its element.
    let e = room.commit(request(1, Some(cur), Mode::Paths, ops(mv))).unwrap_err();
    assert_eq!((e.code, e.conflicts), (ErrorCode::Conflict, vec![cur + 1]));
    let now = room.rev().0;
    room.commit(request(
        1,
        Some(now),
        Mode::Paths,
        ops(json!([{"op": "list_move", "path": PATH, "id": "i", "after": null}])),
    ))
    .unwrap();
    assert_eq!(todos(&room)[0]["id"], "i");
    // Index-based ops on other paths are untouched by the list changes.
    room.commit(request(
        2,
        Some(base),
        Mode::Paths,
        ops(json!([{"op": "add", "path": "/other", "value": 1}])),
    ))
    .unwrap();
}
