//! Atomic application of a patch, with its inverse, within a size budget.
//!
//! [`apply`] runs the ops in order on the document in place; on the first failure it replays the
//! inverse ops collected so far, so the document is left exactly as it was (no whole-document
//! clone). A success yields an [`Applied`]: the inverse patch, the concrete paths touched, and the
//! exact change in encoded size ([`json_size`]), all computed op by op.
//!
//! [`apply_within`] does the same under a [`Budget`]: every op that writes works out, before it
//! allocates or writes anything, exactly how much it will grow the document and how much it will
//! add to what the inverse keeps, and is refused ([`PatchError::TooLarge`]) if either total would
//! pass the limit. So a change can never grow the document (or its undo data) past the limit even
//! for a moment: a chain of `copy` ops that would double the document each time stops at the
//! first op that would cross it, having allocated at most the limit.
//!
//! The id-addressed list ops are applied by [`super::list`] under the same rules (plan, admit,
//! write, record the inverse); their paths go to `Applied::list_touched`, not `touched`, because
//! `paths` mode treats them differently. Forward ops share one scan bound
//! ([`super::MAX_LIST_SCAN`]); rollback and [`revert`] (applying an inverse just made) do not,
//! so they can never fail on it.
//!
//! Invariants: applying `Applied::inverse` to the new document yields the old one exactly; the
//! growth each op is checked against is the growth it then records, so `size_delta` stays exact;
//! no op can make the document nest deeper than [`MAX_DEPTH`](super::measure::MAX_DEPTH) (each
//! op checks before it writes); `incr` on two integers is exact and overflow is an error, never a
//! float.

use serde_json::Value;

use super::budget::{Budget, Plan, plan_add};
use super::eq::{add_numbers, json_eq};
use super::list::{self, MAX_LIST_SCAN};
use super::measure::{check_depth, json_size};
use super::pointer::{Pointer, array_index, get_mut, get_ref, parent_mut};
use super::{Op, PatchError};

/// What a successful [`apply`] produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Applying these ops in order to the new document yields the old one.
    pub inverse: Vec<Op>,
    /// Paths written or read, with "-" resolved; an insert into or removal from an array records
    /// the array itself, because it shifts every later index.
    pub touched: Vec<Pointer>,
    /// Exact change of the document's compact JSON encoding, in bytes.
    pub size_delta: i64,
    /// Encoded size of the values the inverse holds (what undo keeps alive).
    pub inverse_bytes: usize,
    /// The arrays the id-addressed list ops edited (or looked into), once per op. Kept apart
    /// from `touched`: in `paths` mode they conflict only with index-based ops on the array.
    pub list_touched: Vec<Pointer>,
    /// Array elements the list ops have scanned so far (bounded by [`MAX_LIST_SCAN`]).
    pub(super) scanned: usize,
}

/// Applies `ops` atomically, without a size limit.
///
/// # Errors
/// The first failing op's error; `doc` is then unchanged.
pub fn apply(doc: &mut Value, ops: &[Op]) -> Result<Applied, PatchError> {
    run(doc, ops, None, Some(MAX_LIST_SCAN))
}

/// Applies an inverse that was just made (`Applied::inverse`) to the document it was made on,
/// restoring the old document. Like [`apply`], but without the list scan bound: an inverse
/// scans about what its change scanned, and undoing a change must not fail on a bound the
/// change itself only just passed.
///
/// # Errors
/// Only if `inverse` does not belong to `doc` (a bug); `doc` is then unchanged.
pub fn revert(doc: &mut Value, inverse: &[Op]) -> Result<Applied, PatchError> {
    run(doc, inverse, None, None)
}

/// Applies `ops` atomically, refusing the first op that would make the document's encoded size
/// exceed `budget.limit` (starting from `budget.size`), or the values the inverse keeps exceed
/// it. Each op's growth is worked out before the op allocates anything.
///
/// # Errors
/// [`PatchError::TooLarge`] for an op over the budget, else the first failing op's error; `doc`
/// is then unchanged.
pub fn apply_within(doc: &mut Value, ops: &[Op], budget: Budget) -> Result<Applied, PatchError> {
    run(doc, ops, Some(budget), Some(MAX_LIST_SCAN))
}

fn run(
    doc: &mut Value,
    ops: &[Op],
    budget: Option<Budget>,
    max_scan: Option<usize>,
) -> Result<Applied, PatchError> {
    let mut applied = Applied::default();
    // Inverse groups are pushed in reverse order of their own application and the whole list is
    // reversed at the end, so each group stays internally ordered.
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = apply_one(doc, op, i, &mut applied, budget, max_scan) {
            applied.inverse.reverse();
            let mut scratch = Applied::default();
            for inv in &applied.inverse {
                let rolled_back = apply_one(doc, inv, 0, &mut scratch, None, None);
                debug_assert!(rolled_back.is_ok(), "rollback failed: {rolled_back:?}");
            }
            return Err(e);
        }
    }
    applied.inverse.reverse();
    Ok(applied)
}

fn apply_one(
    doc: &mut Value,
    op: &Op,
    i: usize,
    acc: &mut Applied,
    budget: Option<Budget>,
    max_scan: Option<usize>,
) -> Result<(), PatchError> {
    match op {
        Op::ListInsert { .. } | Op::ListMove { .. } | Op::ListRemove { .. } | Op::ListUpdate { .. } => {
            list::apply_list(doc, op, i, acc, budget, max_scan)?;
        }
        Op::Add { path, value } => {
            check_depth(path, value, i)?;
            let plan = plan_add(doc, path, json_size(value), i)?;
            acc.admit(budget, i, plan, 0)?;
            let added = add_at(doc, path, value.clone(), i).map_err(|(e, _)| e)?;
            acc.touched.push(added.touched(path));
            acc.record_add(added, plan);
        }
        Op::Remove { path } => {
            if path.is_root() {
                return Err(PatchError::invalid(i, "cannot remove the whole document"));
            }
            // Removing allocates nothing, but the inverse keeps what it removes.
            let size = json_size(get_ref(doc, path, i)?);
            acc.admit(budget, i, Plan { growth: 0, replaced: 0 }, size)?;
            let removed = remove_at(doc, path, i)?;
            acc.touched.push(if removed.shifted { path.parent() } else { path.clone() });
            acc.size_delta -= (size + removed.overhead) as i64;
            acc.inverse_bytes += size;
            acc.inverse.push(Op::Add { path: path.clone(), value: removed.value });
        }
        Op::Replace { path, value } => {
            check_depth(path, value, i)?;
            let old_size = json_size(get_ref(doc, path, i)?);
            let plan = Plan { growth: json_size(value) as i64 - old_size as i64, replaced: old_size };
            acc.admit(budget, i, plan, 0)?;
            let target = get_mut(doc, path, i)?;
            let old = std::mem::replace(target, value.clone());
            acc.touched.push(path.clone());
            acc.size_delta += plan.growth;
            acc.inverse_bytes += old_size;
            acc.inverse.push(Op::Replace { path: path.clone(), value: old });
        }
        Op::Move { from, path } => {
            let moving = get_ref(doc, from, i)?;
            if from == path {
                acc.touched.push(path.clone());
                return Ok(());
            }
            if from.is_proper_prefix_of(path) {
                return Err(PatchError::invalid(i, format!("cannot move {from} into its own child {path}")));
            }
            check_depth(path, moving, i)?;
            let removed = remove_at(doc, from, i)?;
            let size = json_size(&removed.value);
            // Planned on the document without the value, where the add will happen. The inverse
            // re-adds an explicit copy of the value: a `move` back is not always possible (the
            // destination may be the root, or may have overwritten an ancestor of `from`).
            let planned = plan_add(doc, path, size, i).and_then(|mut plan| {
                plan.growth -= (size + removed.overhead) as i64;
                acc.admit(budget, i, plan, size).map(|()| plan)
            });
            let added = match planned {
                Ok(plan) => add_at(doc, path, removed.value.clone(), i).map(|added| (added, plan)),
                Err(e) => Err((e, Value::Null)),
            };
            let (added, plan) = match added {
                Ok(done) => done,
                Err((e, _)) => {
                    // Put the removed value back where it was before reporting.
                    let restored = add_at(doc, from, removed.value, i);
                    debug_assert!(restored.is_ok());
                    return Err(e);
                }
            };
            acc.touched.push(if removed.shifted { from.parent() } else { from.clone() });
            acc.touched.push(added.touched(path));
            acc.inverse_bytes += size;
            acc.inverse.push(Op::Add { path: from.clone(), value: removed.value });
            acc.record_add(added, plan);
        }
        Op::Copy { from, path } => {
            let source = get_ref(doc, from, i)?;
            check_depth(path, source, i)?;
            // Sized without allocating, and checked before the clone: the clone is the growth.
            let plan = plan_add(doc, path, json_size(source), i)?;
            acc.admit(budget, i, plan, 0)?;
            let value = source.clone();
            let added = add_at(doc, path, value, i).map_err(|(e, _)| e)?;
            acc.touched.push(from.clone());
            acc.touched.push(added.touched(path));
            acc.record_add(added, plan);
        }
        Op::Test { path, value } => {
            let actual = get_ref(doc, path, i)?;
            if !json_eq(actual, value) {
                return Err(PatchError::TestFailed { index: i, path: path.to_string() });
            }
            acc.touched.push(path.clone());
        }
        Op::Incr { path, value } => match get_ref(doc, path, i) {
            Ok(Value::Number(old)) => {
                let sum = add_numbers(old, value)
                    .ok_or_else(|| PatchError::invalid(i, format!("incr at {path} overflows")))?;
                let old_size = json_size(old);
                let plan = Plan { growth: json_size(&sum) as i64 - old_size as i64, replaced: old_size };
                acc.admit(budget, i, plan, 0)?;
                let target = get_mut(doc, path, i)?;
                let old = std::mem::replace(target, Value::Number(sum));
                acc.touched.push(path.clone());
                acc.size_delta += plan.growth;
                acc.inverse_bytes += old_size;
                acc.inverse.push(Op::Replace { path: path.clone(), value: old });
            }
            Ok(_) => return Err(PatchError::invalid(i, format!("incr target {path} is not a number"))),
            Err(_) => {
                let n = Value::Number(value.clone());
                let plan = plan_add(doc, path, json_size(&n), i)?;
                acc.admit(budget, i, plan, 0)?;
                let added = add_at(doc, path, n, i).map_err(|(e, _)| e)?;
                acc.touched.push(added.touched(path));
                acc.record_add(added, plan);
            }
        },
    }
    Ok(())
}

impl Applied {
    /// Records an add's inverse and the size effect its plan worked out.
    fn record_add(&mut self, added: Added, plan: Plan) {
        self.size_delta += plan.growth;
        self.inverse_bytes += plan.replaced;
        self.inverse.push(match added.old {
            Some(old) => Op::Replace { path: added.concrete, value: old },
            None => Op::Remove { path: added.concrete },
        });
    }
}

/// What [`add_at`] did.
struct Added {
    /// The path written, with "-" resolved to an index.
    concrete: Pointer,
    /// The value it replaced (an existing object member, or the root).
    old: Option<Value>,
    /// Whether it inserted into an array (shifting later indices).
    shifted: bool,
}

impl Added {
    /// The path to record as touched: an array insert touches the whole array.
    fn touched(&self, path: &Pointer) -> Pointer {
        if self.shifted { path.parent() } else { self.concrete.clone() }
    }
}

/// What [`remove_at`] did.
struct Removed {
    value: Value,
    shifted: bool,
    /// Encoded bytes removed besides the value itself.
    overhead: usize,
}

/// RFC 6902 `add`. On error the value is handed back, so a `move` can restore it.
fn add_at(doc: &mut Value, path: &Pointer, value: Value, i: usize) -> Result<Added, (PatchError, Value)> {
    let Some(last) = path.tokens().last() else {
        let old = std::mem::replace(doc, value);
        return Ok(Added { concrete: Pointer::root(), old: Some(old), shifted: false });
    };
    let parent = match parent_mut(doc, path, i) {
        Ok(p) => p,
        Err(e) => return Err((e, value)),
    };
    match parent {
        Value::Object(m) => {
            let old = m.insert(last.clone(), value);
            Ok(Added { concrete: path.clone(), old, shifted: false })
        }
        Value::Array(a) => {
            let idx = if last == "-" {
                a.len()
            } else {
                match array_index(last, i) {
                    Ok(idx) => idx,
                    Err(e) => return Err((e, value)),
                }
            };
            if idx > a.len() {
                return Err((
                    PatchError::invalid(i, format!("index {idx} is out of bounds at {path}")),
                    value,
                ));
            }
            a.insert(idx, value);
            Ok(Added { concrete: path.with_last(idx.to_string()), old: None, shifted: true })
        }
        _ => Err((PatchError::invalid(i, format!("parent of {path} is not a container")), value)),
    }
}

/// RFC 6902 `remove`.
fn remove_at(doc: &mut Value, path: &Pointer, i: usize) -> Result<Removed, PatchError> {
    let Some(last) = path.tokens().last() else {
        return Err(PatchError::invalid(i, "cannot remove the whole document"));
    };
    let parent = parent_mut(doc, path, i)?;
    let missing = || PatchError::invalid(i, format!("path {path} does not exist"));
    match parent {
        Value::Object(m) => {
            let value = m.remove(last.as_str()).ok_or_else(missing)?;
            let overhead = json_size(last.as_str()) + 1 + usize::from(!m.is_empty());
            Ok(Removed { value, shifted: false, overhead })
        }
        Value::Array(a) => {
            let idx = array_index(last, i)?;
            if idx >= a.len() {
                return Err(missing());
            }
            let value = a.remove(idx);
            Ok(Removed { value, shifted: true, overhead: usize::from(!a.is_empty()) })
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::parse_patch;
    use crate::patch::{Budget, Grows, MAX_DEPTH, depth};
    use serde_json::json;

    fn ops(v: Value) -> Vec<Op> {
        parse_patch(v).unwrap()
    }

    #[test]
    fn failed_patch_leaves_document_unchanged() {
        let mut doc = json!({"a": [1, 2, 3], "b": {"c": 1}});
        let before = doc.clone();
        let err = apply(
            &mut doc,
            &ops(json!([
                {"op": "remove", "path": "/a/0"},
                {"op": "move", "from": "/b/c", "path": "/a/-"},
                {"op": "add", "path": "/b/x", "value": 1},
                {"op": "test", "path": "/a/0", "value": 99}
            ])),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::TestFailed { .. }), "{err:?}");
        assert_eq!(doc, before);
    }

    #[test]
    fn inverse_restores_original() {
        let mut doc = json!({"a": [1, 2, 3], "b": {"c": 1, "d": "x"}, "n": 5});
        let before = doc.clone();
        let applied = apply(
            &mut doc,
            &ops(json!([
                {"op": "add", "path": "/a/1", "value": "new"},
                {"op": "move", "from": "/b/d", "path": "/b/c"},
                {"op": "copy", "from": "/a", "path": "/z"},
                {"op": "incr", "path": "/n", "value": 2},
                {"op": "incr", "path": "/m", "value": 1},
                {"op": "replace", "path": "", "value": {"root": true, "k": [0]}},
                {"op": "add", "path": "/k/-", "value": 1}
            ])),
        )
        .unwrap();
        apply(&mut doc, &applied.inverse).unwrap();
        assert_eq!(doc, before);
    }

    #[test]
    fn incr_is_exact_and_checked() {
        let mut doc = json!({"i": 9007199254740993_i64, "u": u64::MAX - 1, "f": 1.5});
        apply(&mut doc, &ops(json!([{"op": "incr", "path": "/i", "value": 2}]))).unwrap();
        assert_eq!(doc["i"], json!(9007199254740995_i64));
        apply(&mut doc, &ops(json!([{"op": "incr", "path": "/u", "value": 1}]))).unwrap();
        assert_eq!(doc["u"], json!(u64::MAX));
        let err = apply(&mut doc, &ops(json!([{"op": "incr", "path": "/u", "value": 1}]))).unwrap_err();
        assert!(matches!(err, PatchError::Invalid { .. }), "{err:?}");
        assert_eq!(doc["u"], json!(u64::MAX));
        apply(&mut doc, &ops(json!([{"op": "incr", "path": "/f", "value": 1}]))).unwrap();
        assert_eq!(doc["f"], json!(2.5));
        let err = apply(&mut doc, &ops(json!([{"op": "incr", "path": "/x/y", "value": 1}]))).unwrap_err();
        assert!(matches!(err, PatchError::Invalid { .. }), "{err:?}");
        let mut s = json!({"s": "x"});
        assert!(apply(&mut s, &ops(json!([{"op": "incr", "path": "/s", "value": 1}]))).is_err());
        let mut neg = json!({"n": i64::MIN});
        assert!(apply(&mut neg, &ops(json!([{"op": "incr", "path": "/n", "value": -1}]))).is_err());
    }

    #[test]
    fn array_shifts_touch_the_array() {
        let mut doc = json!({"l": [1, 2], "o": {}});
        let a = apply(
            &mut doc,
            &ops(
                json!([{"op": "add", "path": "/l/-", "value": 3}, {"op": "add", "path": "/o/k", "value": 1}]),
            ),
        )
        .unwrap();
        assert_eq!(a.touched, vec![Pointer::parse("/l").unwrap(), Pointer::parse("/o/k").unwrap()]);
    }

    #[test]
    fn nesting_is_bounded_whatever_the_ops() {
        // A value nested to the limit is fine; one level more is refused, by every op.
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!({ "a": deep });
        }
        let mut doc = json!({});
        // /a at depth 127 makes the document 128 deep: exactly the limit.
        apply(&mut doc, &ops(json!([{"op": "add", "path": "/a", "value": deep["a"].clone()}]))).unwrap();
        assert_eq!(depth(&doc), MAX_DEPTH);
        let err = apply(&mut doc, &ops(json!([{"op": "add", "path": "/b", "value": deep}]))).unwrap_err();
        assert!(err.to_string().contains("nest"), "{err}");
        // Doubling the depth with copy (the classic stack-overflow attack) is refused too.
        let mut p = String::from("/a");
        for _ in 0..40 {
            p.push_str("/a");
        }
        let err = apply(&mut doc, &ops(json!([{"op": "copy", "from": "/a", "path": format!("{p}/x")}])))
            .unwrap_err();
        assert!(matches!(err, PatchError::Invalid { .. }), "{err:?}");
        let err = apply(&mut doc, &ops(json!([{"op": "move", "from": "/a/a", "path": "/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/z"}]))).unwrap_err();
        assert!(matches!(err, PatchError::Invalid { .. }), "{err:?}");
        assert_eq!(depth(&doc), MAX_DEPTH);
    }

    #[test]
    fn size_delta_is_exact() {
        let cases = [
            json!([{"op": "add", "path": "/a", "value": {"x": [1, 2]}}]),
            json!([{"op": "add", "path": "/l/-", "value": "s"}, {"op": "remove", "path": "/l/0"}]),
            json!([{"op": "move", "from": "/o/k", "path": "/o/m"}, {"op": "copy", "from": "/o", "path": "/p"}]),
            json!([{"op": "remove", "path": "/o/k"}, {"op": "remove", "path": "/l/0"}]),
            json!([{"op": "incr", "path": "/n", "value": 1000}, {"op": "incr", "path": "/new", "value": -1}]),
            json!([{"op": "add", "path": "/q\"\u{1}", "value": "é\n"}]),
            json!([{"op": "replace", "path": "", "value": {"z": 1}}]),
        ];
        for case in cases {
            let mut doc = json!({"l": [1], "o": {"k": "v"}, "n": 5});
            let before = serde_json::to_vec(&doc).unwrap().len() as i64;
            let a = apply(&mut doc, &ops(case.clone())).unwrap();
            assert_eq!(before + a.size_delta, serde_json::to_vec(&doc).unwrap().len() as i64, "{case}");
        }
    }

    #[test]
    fn move_into_own_child_is_invalid() {
        let mut doc = json!({"a": {"b": {}}});
        assert!(apply(&mut doc, &ops(json!([{"op": "move", "from": "/a", "path": "/a/b/c"}]))).is_err());
        assert_eq!(doc, json!({"a": {"b": {}}}));
    }

    fn within(doc: &mut Value, patch: Value, limit: usize) -> Result<Applied, PatchError> {
        let size = json_size(doc);
        apply_within(doc, &ops(patch), Budget { size, limit })
    }

    #[test]
    fn doubling_copies_stop_at_the_limit_before_allocating() {
        let mut doc = json!({"v": "x".repeat(1000)});
        let before = doc.clone();
        // Each copy of the whole document doubles it: 1 KB, 2 KB, 4 KB, 8 KB, then 16 KB > 10 KB.
        let copies: Vec<Value> =
            (0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")})).collect();
        let err = within(&mut doc, Value::Array(copies), 10_000).unwrap_err();
        let PatchError::TooLarge { index, what, size, limit } = err else { panic!("{err:?}") };
        assert_eq!((index, what, limit), (3, Grows::State, 10_000));
        assert!(size > 10_000 && size < 20_000, "{size}");
        assert_eq!(doc, before);
    }

    #[test]
    fn the_limit_is_exact_and_holds_during_the_change() {
        let base = json!({"a": "x".repeat(50)});
        let size = json_size(&base);
        // Adding "b": "yy…" costs 5 + len + 2 (`,"b":` and the quotes).
        let add = |n: usize| json!([{"op": "add", "path": "/b", "value": "y".repeat(n)}]);
        let mut doc = base.clone();
        let a = within(&mut doc, add(30), size + 37).unwrap();
        assert_eq!(json_size(&doc), size + 37);
        assert_eq!(a.size_delta, 37);
        let mut doc = base.clone();
        let err = within(&mut doc, add(31), size + 37).unwrap_err();
        assert!(matches!(err, PatchError::TooLarge { index: 0, what: Grows::State, .. }), "{err:?}");
        assert_eq!(doc, base);
        // Over the limit for a moment, even if a later op would shrink it back: refused.
        let mut doc = base.clone();
        let spike =
            json!([{"op": "add", "path": "/b", "value": "y".repeat(100)}, {"op": "remove", "path": "/b"}]);
        assert!(matches!(within(&mut doc, spike, size + 37), Err(PatchError::TooLarge { index: 0, .. })));
        assert_eq!(doc, base);
        // Replacing a large member by a slightly larger one near the limit counts only the
        // difference (exact accounting, not an estimate).
        let mut doc = base.clone();
        within(&mut doc, json!([{"op": "replace", "path": "/a", "value": "z".repeat(52)}]), size + 2)
            .unwrap();
        let mut doc = base.clone();
        within(&mut doc, json!([{"op": "add", "path": "/a", "value": "z".repeat(52)}]), size + 2).unwrap();
        let mut doc = base.clone();
        within(&mut doc, json!([{"op": "copy", "from": "/a", "path": "/a"}]), size).unwrap();
        // A document already over the limit may still shrink (keeping what it drops within it).
        let mut doc = json!({"a": "x".repeat(50), "b": "long"});
        within(&mut doc, json!([{"op": "replace", "path": "/b", "value": 1}]), 10).unwrap();
    }

    #[test]
    fn what_undo_keeps_is_bounded_too() {
        // Copy, remove, copy, remove…: the document never grows, but every removed copy is kept
        // by the inverse. So is every value a move re-adds, and every value overwritten.
        let churns = [
            (0..100)
                .flat_map(|_| {
                    [json!({"op": "copy", "from": "/v", "path": "/w"}), json!({"op": "remove", "path": "/w"})]
                })
                .collect::<Vec<_>>(),
            (0..100)
                .flat_map(|_| {
                    [
                        json!({"op": "move", "from": "/v", "path": "/w"}),
                        json!({"op": "move", "from": "/w", "path": "/v"}),
                    ]
                })
                .collect(),
            (0..100).map(|_| json!({"op": "copy", "from": "/v", "path": "/v"})).collect(),
        ];
        for churn in churns {
            let mut doc = json!({"v": "x".repeat(1000)});
            let before = doc.clone();
            let err = within(&mut doc, Value::Array(churn.clone()), 10_000).unwrap_err();
            assert!(matches!(err, PatchError::TooLarge { what: Grows::Undo, .. }), "{err:?}");
            assert_eq!(doc, before);
            // Unlimited, it applies, and what the inverse holds is counted exactly.
            let a = apply(&mut doc, &ops(Value::Array(churn))).unwrap();
            let held: usize = a
                .inverse
                .iter()
                .map(|op| match op {
                    Op::Add { value, .. } | Op::Replace { value, .. } => json_size(value),
                    _ => 0,
                })
                .sum();
            assert_eq!(a.inverse_bytes, held);
        }
    }
}
