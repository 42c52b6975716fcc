//! The id-addressed list ops: `list_insert`, `list_move`, `list_remove`, `list_update`.
//!
//! A list is an array whose elements are JSON objects with a string member `id`, unique within
//! the array. The ops name elements by id instead of index, so an op made against a stale copy
//! of the list still means what its author meant, and the rules below make every such op apply
//! (the server applies ops in commit order):
//! - an anchor (`after`) that is not there (removed concurrently) puts the element at the END;
//! - `list_move` / `list_remove` / `list_update` of an id that is not there is a no-op;
//! - `list_insert` of an id already there is `invalid` (ids are the client's job);
//! - `list_move` of x after x leaves x where it is.
//!
//! Every op checks the whole array: each element must be an object with a string `id`, the ids
//! the op names must each appear at most once, and so must the id before the element it takes
//! out (the anchor its inverse uses). So each inverse is exact: insert ↔ remove; move ↔ move
//! back after the old predecessor; remove → insert the old value after the old predecessor;
//! update → update with the old members (or, when an old member was `null`, which an update
//! cannot set, remove + insert of the old element). A no-op records no inverse.
//!
//! Cost: finding an element by id is a linear scan (string comparisons, no allocation), and the
//! insert or removal itself moves the elements after it. One change's list ops may scan at most
//! [`MAX_LIST_SCAN`] elements in all, counted before each scan; past it the change is refused
//! (`too_large`) with nothing applied. Sizes are planned and admitted against the [`Budget`]
//! before anything is written, like every other op.

use serde_json::{Map, Value};

use super::apply::Applied;
use super::budget::{Budget, Plan};
use super::measure::{check_depth_at, json_size};
use super::pointer::{Pointer, get_mut};
use super::{Op, PatchError};

/// The most array elements the list ops of one change may scan, in all (the same order of work
/// as the `paths`-mode check's bound: a few tenths of a second under the room's lock at most).
/// A change of 1,000 list ops on a 4,000-element list fits.
pub const MAX_LIST_SCAN: usize = 4_000_000;

/// Applies one list op (the caller dispatches only list ops here).
pub(super) fn apply_list(
    doc: &mut Value,
    op: &Op,
    i: usize,
    acc: &mut Applied,
    budget: Option<Budget>,
    max_scan: Option<usize>,
) -> Result<(), PatchError> {
    let mut cx = Cx { i, acc, budget, max_scan };
    match op {
        Op::ListInsert { path, after, value } => cx.insert(doc, path, after.as_deref(), value),
        Op::ListMove { path, id, after } => cx.mv(doc, path, id, after.as_deref()),
        Op::ListRemove { path, id } => cx.remove(doc, path, id),
        Op::ListUpdate { path, id, value } => cx.update(doc, path, id, value),
        other => Err(PatchError::invalid(i, format!("{} is not a list op", other.kind().as_str()))),
    }
}

/// One list op's context: its index, the change's accumulator and limits.
struct Cx<'a> {
    i: usize,
    acc: &'a mut Applied,
    budget: Option<Budget>,
    max_scan: Option<usize>,
}

/// Where the ids an op names are, found in one scan.
struct Found {
    target: Option<usize>,
    anchor: Option<usize>,
}

fn id_of(v: &Value) -> Option<&str> {
    v.as_object()?.get("id")?.as_str()
}

/// The index an element goes to: the head for no anchor, just after a present anchor, the end
/// for an anchor that is not there.
fn position(after: Option<&str>, anchor: Option<usize>, len: usize) -> usize {
    match (after, anchor) {
        (None, _) => 0,
        (Some(_), Some(k)) => k + 1,
        (Some(_), None) => len,
    }
}

impl Cx<'_> {
    fn invalid(&self, message: String) -> PatchError {
        PatchError::invalid(self.i, message)
    }

    /// The array at `path`, recorded as touched by a list op.
    fn array<'d>(&mut self, doc: &'d mut Value, path: &Pointer) -> Result<&'d mut Vec<Value>, PatchError> {
        match get_mut(doc, path, self.i)? {
            Value::Array(a) => {
                self.acc.list_touched.push(path.clone());
                Ok(a)
            }
            _ => Err(self.invalid(format!(
                "{path} is not an array (list ops need an array of objects with a string \"id\")"
            ))),
        }
    }

    /// Counts `n` more scanned elements against the bound, before scanning them.
    fn charge(&mut self, n: usize) -> Result<(), PatchError> {
        self.acc.scanned = self.acc.scanned.saturating_add(n);
        match self.max_scan {
            Some(limit) if self.acc.scanned > limit => Err(PatchError::TooMuchWork { index: self.i, limit }),
            _ => Ok(()),
        }
    }

    /// Checks every element of `a` and finds `target` and `anchor` (each must be unique).
    fn scan(
        &mut self,
        a: &[Value],
        path: &Pointer,
        target: Option<&str>,
        anchor: Option<&str>,
    ) -> Result<Found, PatchError> {
        self.charge(a.len())?;
        let mut found = Found { target: None, anchor: None };
        for (k, el) in a.iter().enumerate() {
            let Some(id) = id_of(el) else {
                return Err(
                    self.invalid(format!("element {k} of {path} is not an object with a string \"id\""))
                );
            };
            for (name, slot) in [(target, &mut found.target), (anchor, &mut found.anchor)] {
                if name == Some(id) {
                    if slot.is_some() {
                        return Err(self.duplicate(path, id));
                    }
                    *slot = Some(k);
                }
            }
        }
        Ok(found)
    }

    fn duplicate(&self, path: &Pointer, id: &str) -> PatchError {
        self.invalid(format!("id {id:?} appears more than once in {path}; list ids must be unique"))
    }

    /// The id of the element before index `k` (`None` at the head), checked to be that id's
    /// first occurrence, so an insert or move "after" it lands at `k` again.
    fn predecessor(&mut self, a: &[Value], k: usize, path: &Pointer) -> Result<Option<String>, PatchError> {
        let Some(before) = k.checked_sub(1) else { return Ok(None) };
        self.charge(before)?;
        let Some(pred) = id_of(&a[before]) else {
            return Err(self.invalid(format!("element {before} of {path} has no string \"id\"")));
        };
        if a[..before].iter().any(|e| id_of(e) == Some(pred)) {
            return Err(self.duplicate(path, pred));
        }
        Ok(Some(pred.to_owned()))
    }

    fn insert(
        &mut self,
        doc: &mut Value,
        path: &Pointer,
        after: Option<&str>,
        value: &Value,
    ) -> Result<(), PatchError> {
        let Some(id) = id_of(value) else {
            return Err(self.invalid("list_insert needs \"value\": an object with a string \"id\"".into()));
        };
        check_depth_at(path.tokens().len() + 1, value, self.i)?;
        let a = self.array(doc, path)?;
        let found = self.scan(a, path, Some(id), after)?;
        if found.target.is_some() {
            return Err(self.invalid(format!("id {id:?} is already in {path}; list_insert needs a new id")));
        }
        let pos = position(after, found.anchor, a.len());
        let plan = Plan { growth: (json_size(value) + usize::from(!a.is_empty())) as i64, replaced: 0 };
        self.acc.admit(self.budget, self.i, plan, 0)?;
        a.insert(pos, value.clone());
        self.acc.size_delta += plan.growth;
        self.acc.inverse.push(Op::ListRemove { path: path.clone(), id: id.to_owned() });
        Ok(())
    }

    fn mv(
        &mut self,
        doc: &mut Value,
        path: &Pointer,
        id: &str,
        after: Option<&str>,
    ) -> Result<(), PatchError> {
        let a = self.array(doc, path)?;
        let found = self.scan(a, path, Some(id), after)?;
        let Some(k) = found.target else { return Ok(()) };
        let pred = self.predecessor(a, k, path)?;
        if after != Some(id) {
            let el = a.remove(k);
            let anchor = found.anchor.map(|j| if j > k { j - 1 } else { j });
            let pos = position(after, anchor, a.len());
            a.insert(pos, el);
        }
        self.acc.inverse.push(Op::ListMove { path: path.clone(), id: id.to_owned(), after: pred });
        Ok(())
    }

    fn remove(&mut self, doc: &mut Value, path: &Pointer, id: &str) -> Result<(), PatchError> {
        let a = self.array(doc, path)?;
        let found = self.scan(a, path, Some(id), None)?;
        let Some(k) = found.target else { return Ok(()) };
        let pred = self.predecessor(a, k, path)?;
        // Removing allocates nothing, but the inverse keeps what it removes.
        let size = json_size(&a[k]);
        self.acc.admit(self.budget, self.i, Plan { growth: 0, replaced: 0 }, size)?;
        let value = a.remove(k);
        self.acc.size_delta -= (size + usize::from(!a.is_empty())) as i64;
        self.acc.inverse_bytes += size;
        self.acc.inverse.push(Op::ListInsert { path: path.clone(), after: pred, value });
        Ok(())
    }

    fn update(&mut self, doc: &mut Value, path: &Pointer, id: &str, value: &Value) -> Result<(), PatchError> {
        let Value::Object(changes) = value else {
            return Err(self.invalid(
                "list_update needs \"value\": an object of members to set (null removes one)".into(),
            ));
        };
        if changes.get("id").is_some_and(|v| v.as_str() != Some(id)) {
            return Err(self.invalid(format!("list_update cannot change \"id\" (of {id:?} in {path})")));
        }
        let depth = path.tokens().len() + 2;
        for v in changes.values() {
            check_depth_at(depth, v, self.i)?;
        }
        let a = self.array(doc, path)?;
        let found = self.scan(a, path, Some(id), None)?;
        let Some(k) = found.target else { return Ok(()) };
        let members = || changes.iter().filter(|(m, _)| m.as_str() != "id");
        let Some(el) = a[k].as_object() else {
            return Err(self.invalid(format!("element {k} is not an object")));
        };
        // An old member that is null cannot be restored by an update (null removes): the
        // inverse then re-inserts the whole old element instead.
        let restores_null = members().any(|(m, _)| matches!(el.get(m), Some(Value::Null)));
        // Exact new size: an object is 2 + Σ(member) + (n - 1) commas, a member `"k":v`.
        let old_size = json_size(&a[k]);
        let mut n = el.len();
        let mut sum = old_size - 2 - n.saturating_sub(1);
        let mut replaced = 0;
        for (m, v) in members() {
            if let Some(old) = el.get(m) {
                sum -= json_size(m) + 1 + json_size(old);
                n -= 1;
                replaced += json_size(old);
            } else {
                replaced += 4; // the inverse's `null`
            }
            if !v.is_null() {
                sum += json_size(m) + 1 + json_size(v);
                n += 1;
            }
        }
        let growth = (2 + sum + n.saturating_sub(1)) as i64 - old_size as i64;
        let pred = if restores_null { self.predecessor(a, k, path)? } else { None };
        let replaced = if restores_null { old_size } else { replaced };
        self.acc.admit(self.budget, self.i, Plan { growth, replaced }, 0)?;
        let Some(el) = a[k].as_object_mut() else {
            return Err(self.invalid(format!("element {k} is not an object")));
        };
        let old_element = restores_null.then(|| el.clone());
        let mut back = Map::new();
        for (m, v) in members() {
            let old = if v.is_null() { el.shift_remove(m) } else { el.insert(m.clone(), v.clone()) };
            if old_element.is_none() {
                back.insert(m.clone(), old.unwrap_or(Value::Null));
            }
        }
        self.acc.size_delta += growth;
        self.acc.inverse_bytes += replaced;
        let path = path.clone();
        match old_element {
            // Pushed in reverse: the inverse removes the element, then re-inserts the old one.
            Some(old) => {
                self.acc.inverse.push(Op::ListInsert {
                    path: path.clone(),
                    after: pred,
                    value: Value::Object(old),
                });
                self.acc.inverse.push(Op::ListRemove { path, id: id.to_owned() });
            }
            None => {
                self.acc.inverse.push(Op::ListUpdate { path, id: id.to_owned(), value: Value::Object(back) })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::{Grows, apply, apply_within, parse_patch};
    use serde_json::json;

    fn ops(v: Value) -> Vec<Op> {
        parse_patch(v).unwrap()
    }

    fn doc() -> Value {
        json!({"l": [{"id": "a", "t": 1}, {"id": "b", "t": 2}, {"id": "c", "t": 3}], "o": {}})
    }

    fn ids(d: &Value) -> Vec<&str> {
        d["l"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect()
    }

    /// Applies `patch` to `d`, checks the size accounting is exact and that the inverse restores
    /// the document exactly; returns the new document and the inverse length.
    fn check(d: &Value, patch: Value) -> (Value, usize) {
        let mut new = d.clone();
        let a = apply(&mut new, &ops(patch.clone())).unwrap_or_else(|e| panic!("{patch}: {e}"));
        assert_eq!(json_size(d) as i64 + a.size_delta, json_size(&new) as i64, "{patch}");
        let mut back = new.clone();
        apply(&mut back, &a.inverse).unwrap();
        assert_eq!(&back, d, "{patch}: inverse {:?}", a.inverse);
        assert_eq!(a.list_touched.len(), ops(patch).len());
        assert!(a.touched.is_empty());
        (new, a.inverse.len())
    }

    fn err(d: &Value, patch: Value) -> String {
        let mut new = d.clone();
        let e = apply(&mut new, &ops(patch)).unwrap_err();
        assert_eq!(&new, d, "a failed patch leaves the document as it was");
        e.to_string()
    }

    #[test]
    fn insert_at_head_after_an_element_and_at_the_end_for_a_missing_anchor() {
        let d = doc();
        let ins =
            |after: Value| json!([{"op": "list_insert", "path": "/l", "after": after, "value": {"id": "x"}}]);
        assert_eq!(ids(&check(&d, ins(json!(null))).0), ["x", "a", "b", "c"]);
        assert_eq!(ids(&check(&d, ins(json!("a"))).0), ["a", "x", "b", "c"]);
        assert_eq!(ids(&check(&d, ins(json!("c"))).0), ["a", "b", "c", "x"]);
        assert_eq!(ids(&check(&d, ins(json!("gone"))).0), ["a", "b", "c", "x"]);
        // Into an empty list.
        let (e, _) = check(&json!({"l": []}), ins(json!(null)));
        assert_eq!(e, json!({"l": [{"id": "x"}]}));
    }

    #[test]
    fn two_inserts_after_one_anchor_keep_both_the_later_first() {
        let (d, _) = check(
            &doc(),
            json!([
                {"op": "list_insert", "path": "/l", "after": "a", "value": {"id": "x"}},
                {"op": "list_insert", "path": "/l", "after": "a", "value": {"id": "y"}}
            ]),
        );
        assert_eq!(ids(&d), ["a", "y", "x", "b", "c"]);
    }

    #[test]
    fn insert_refuses_a_present_id_and_a_value_without_an_id() {
        let d = doc();
        let m = err(&d, json!([{"op": "list_insert", "path": "/l", "after": null, "value": {"id": "b"}}]));
        assert!(m.contains("already in /l"), "{m}");
        for value in [json!({"id": 1}), json!({}), json!("b"), json!(null)] {
            let m = err(&d, json!([{"op": "list_insert", "path": "/l", "after": null, "value": value}]));
            assert!(m.contains("string \"id\""), "{m}");
        }
    }

    #[test]
    fn after_is_required_and_ops_round_trip_on_the_wire() {
        let e = parse_patch(json!([{"op": "list_insert", "path": "/l", "value": {"id": "x"}}])).unwrap_err();
        assert!(e.to_string().contains("after"), "{e}");
        let e = parse_patch(json!([{"op": "list_move", "path": "/l", "id": "x"}])).unwrap_err();
        assert!(e.to_string().contains("after"), "{e}");
        let e = parse_patch(json!([{"op": "list_remove", "path": "/l"}])).unwrap_err();
        assert!(e.to_string().contains("id"), "{e}");
        let wire = json!([
            {"op": "list_insert", "path": "/l", "after": null, "value": {"id": "x"}},
            {"op": "list_move", "path": "/l", "id": "x", "after": "a"},
            {"op": "list_remove", "path": "/l", "id": "x"},
            {"op": "list_update", "path": "/l", "id": "x", "value": {"t": null}}
        ]);
        let parsed = ops(wire.clone());
        assert_eq!(serde_json::to_value(&parsed).unwrap(), wire);
        let kinds: Vec<_> = parsed.iter().map(|o| o.kind().as_str()).collect();
        assert_eq!(kinds, ["list_insert", "list_move", "list_remove", "list_update"]);
        assert!(parsed.iter().all(Op::is_list));
    }

    #[test]
    fn move_after_head_end_self_and_missing() {
        let d = doc();
        let mv =
            |id: &str, after: Value| json!([{"op": "list_move", "path": "/l", "id": id, "after": after}]);
        assert_eq!(ids(&check(&d, mv("c", json!(null))).0), ["c", "a", "b"]);
        assert_eq!(ids(&check(&d, mv("a", json!("b"))).0), ["b", "a", "c"]);
        assert_eq!(ids(&check(&d, mv("a", json!("c"))).0), ["b", "c", "a"]);
        assert_eq!(ids(&check(&d, mv("c", json!("a"))).0), ["a", "c", "b"]);
        // An anchor that is not there: the end.
        assert_eq!(ids(&check(&d, mv("a", json!("gone"))).0), ["b", "c", "a"]);
        // After itself: stays.
        assert_eq!(check(&d, mv("b", json!("b"))), (d.clone(), 1));
        // A target that is not there: no-op, and no inverse.
        assert_eq!(check(&d, mv("gone", json!("a"))), (d.clone(), 0));
    }

    #[test]
    fn remove_present_and_missing() {
        let d = doc();
        let rm = |id: &str| json!([{"op": "list_remove", "path": "/l", "id": id}]);
        for (id, left) in [("a", ["b", "c"]), ("b", ["a", "c"]), ("c", ["a", "b"])] {
            let (new, n) = check(&d, rm(id));
            assert_eq!((ids(&new), n), (left.to_vec(), 1));
        }
        assert_eq!(check(&d, rm("gone")), (d.clone(), 0));
        // Twice in one change: the second is a no-op.
        let (new, n) = check(
            &d,
            json!([{"op": "list_remove", "path": "/l", "id": "b"}, {"op": "list_remove", "path": "/l", "id": "b"}]),
        );
        assert_eq!((ids(&new), n), (vec!["a", "c"], 1));
        let (new, _) =
            check(&json!({"l": [{"id": "a"}]}), json!([{"op": "list_remove", "path": "/l", "id": "a"}]));
        assert_eq!(new, json!({"l": []}));
    }

    #[test]
    fn update_merges_removes_with_null_and_keeps_the_id() {
        let d = json!({"l": [{"id": "a", "t": 1, "n": null}, {"id": "b", "t": 2, "k": "v"}]});
        let up = |id: &str, v: Value| json!([{"op": "list_update", "path": "/l", "id": id, "value": v}]);
        let (new, n) = check(&d, up("b", json!({"t": 5, "k": null, "new": [1], "gone": null, "id": "b"})));
        assert_eq!(new["l"][1], json!({"id": "b", "t": 5, "new": [1]}));
        assert_eq!(n, 1);
        // An old member that is null: restored by remove + insert of the old element.
        let (new, n) = check(&d, up("a", json!({"n": 3})));
        assert_eq!((new["l"][0].clone(), n), (json!({"id": "a", "t": 1, "n": 3}), 2));
        let (new, _) = check(&d, up("b", json!({"n": null, "t": null})));
        assert_eq!(new["l"][1], json!({"id": "b", "k": "v"}));
        let (new, _) = check(&d, up("b", json!({})));
        assert_eq!(new, d);
        assert_eq!(check(&d, up("gone", json!({"t": 9}))), (d.clone(), 0));
        let m = err(&d, up("a", json!({"id": "z"})));
        assert!(m.contains("cannot change \"id\""), "{m}");
        let m = err(&d, up("a", json!({"id": null})));
        assert!(m.contains("cannot change \"id\""), "{m}");
        let m = err(&d, up("a", json!([1])));
        assert!(m.contains("an object of members"), "{m}");
    }

    #[test]
    fn the_array_must_be_a_list_of_objects_with_unique_string_ids() {
        let rm = |path: &str| json!([{"op": "list_remove", "path": path, "id": "a"}]);
        let m = err(&doc(), rm("/o"));
        assert!(m.contains("/o is not an array"), "{m}");
        let m = err(&doc(), rm("/missing"));
        assert!(m.contains("does not exist"), "{m}");
        for bad in [json!([{"id": "a"}, 3]), json!([{"id": 1}]), json!([{"x": "a"}]), json!([[]])] {
            let m = err(&json!({"l": bad}), rm("/l"));
            assert!(m.contains("string \"id\""), "{m}");
        }
        // Ids the op relies on must be unique: the target, the anchor, the predecessor.
        let dup = json!({"l": [{"id": "p"}, {"id": "a"}, {"id": "p"}, {"id": "b"}, {"id": "a"}]});
        assert!(err(&dup, rm("/l")).contains("more than once"));
        let m = err(&dup, json!([{"op": "list_move", "path": "/l", "id": "b", "after": "a"}]));
        assert!(m.contains("more than once"), "{m}");
        let m = err(&dup, json!([{"op": "list_remove", "path": "/l", "id": "b"}]));
        assert!(m.contains("\"p\" appears more than once"), "{m}");
        // Duplicates elsewhere do not stop an op that does not rely on them.
        check(&dup, json!([{"op": "list_insert", "path": "/l", "after": "b", "value": {"id": "x"}}]));
        // Nested lists by pointer.
        let nested = json!({"l": [{"id": "a", "sub": [{"id": "s"}]}]});
        let (new, _) = check(
            &nested,
            json!([{"op": "list_insert", "path": "/l/0/sub", "after": "s", "value": {"id": "t"}}]),
        );
        assert_eq!(new["l"][0]["sub"][1], json!({"id": "t"}));
    }

    #[test]
    fn a_failing_later_op_rolls_every_list_op_back() {
        let d = doc();
        for last in [
            json!({"op": "test", "path": "/o", "value": 1}),
            json!({"op": "list_insert", "path": "/l", "after": null, "value": {"id": "a"}}),
            json!({"op": "list_update", "path": "/l", "id": "c", "value": {"id": "no"}}),
        ] {
            let patch = json!([
                {"op": "list_insert", "path": "/l", "after": "a", "value": {"id": "x", "v": 1}},
                {"op": "list_move", "path": "/l", "id": "a", "after": "c"},
                {"op": "list_update", "path": "/l", "id": "x", "value": {"v": null, "w": 2}},
                {"op": "add", "path": "/l/0", "value": {"id": "i"}},
                {"op": "list_remove", "path": "/l", "id": "b"},
                {"op": "list_move", "path": "/l", "id": "i", "after": "gone"},
                last
            ]);
            err(&d, patch);
        }
    }

    #[test]
    fn list_ops_mixed_with_index_ops_invert_exactly() {
        let (new, _) = {
            let d = doc();
            let mut new = d.clone();
            let patch = ops(json!([
                {"op": "add", "path": "/l/1", "value": {"id": "i"}},
                {"op": "list_move", "path": "/l", "id": "i", "after": "c"},
                {"op": "replace", "path": "/l/0/t", "value": null},
                {"op": "list_update", "path": "/l", "id": "a", "value": {"t": 7}},
                {"op": "list_remove", "path": "/l", "id": "c"},
                {"op": "remove", "path": "/l/0"}
            ]));
            let a = apply(&mut new, &patch).unwrap();
            assert_eq!(json_size(&d) as i64 + a.size_delta, json_size(&new) as i64);
            let mut back = new.clone();
            apply(&mut back, &a.inverse).unwrap();
            assert_eq!(back, d);
            (new, ())
        };
        assert_eq!(ids(&new), ["b", "i"]);
    }

    #[test]
    fn the_size_budget_counts_list_growth_before_writing() {
        let d = json!({"l": [{"id": "a"}]});
        let size = json_size(&d);
        let within = |patch: Value, limit: usize| {
            let mut new = d.clone();
            let r = apply_within(&mut new, &ops(patch), Budget { size, limit });
            if r.is_err() {
                assert_eq!(new, d);
            }
            r
        };
        // `,{"id":"x"}` is 11 bytes.
        let ins = json!([{"op": "list_insert", "path": "/l", "after": "a", "value": {"id": "x"}}]);
        within(ins.clone(), size + 11).unwrap();
        let e = within(ins, size + 10).unwrap_err();
        assert!(matches!(e, PatchError::TooLarge { index: 0, what: Grows::State, .. }), "{e:?}");
        // `,"v":"yyyy"` is 11 bytes too.
        let up =
            |n: usize| json!([{"op": "list_update", "path": "/l", "id": "a", "value": {"v": "y".repeat(n)}}]);
        within(up(4), size + 11).unwrap();
        assert!(matches!(within(up(5), size + 11), Err(PatchError::TooLarge { what: Grows::State, .. })));
        // Insert then remove, again and again: the document stays small, undo grows.
        let churn: Vec<Value> = (0..50)
            .flat_map(|_| {
                [
                    json!({"op": "list_insert", "path": "/l", "after": null, "value": {"id": "x", "v": "y".repeat(100)}}),
                    json!({"op": "list_remove", "path": "/l", "id": "x"}),
                ]
            })
            .collect();
        let e = within(Value::Array(churn), 2_000).unwrap_err();
        assert!(matches!(e, PatchError::TooLarge { what: Grows::Undo, .. }), "{e:?}");
    }

    #[test]
    fn the_scan_bound_refuses_a_change_that_would_scan_too_much() {
        let n = 100_000;
        let list: Vec<Value> = (0..n).map(|k| json!({"id": k.to_string()})).collect();
        let d = json!({ "l": list });
        let mv = |count: usize| {
            Value::Array(
                (0..count)
                    .map(|_| json!({"op": "list_move", "path": "/l", "id": "0", "after": null}))
                    .collect(),
            )
        };
        // 40 moves of element 0 scan 40 × 100,000 = the bound exactly (it has no predecessor).
        let mut ok = d.clone();
        apply(&mut ok, &ops(mv(MAX_LIST_SCAN / n))).unwrap();
        let mut over = d.clone();
        let e = apply(&mut over, &ops(mv(MAX_LIST_SCAN / n + 1))).unwrap_err();
        assert!(matches!(e, PatchError::TooMuchWork { index: 40, limit: MAX_LIST_SCAN }), "{e:?}");
        assert_eq!(over, d);
    }
}
