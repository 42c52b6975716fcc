//! Atomic application of a patch, with its inverse.
//!
//! [`apply`] runs the ops in order on the document in place; on the first failure it replays the
//! inverse ops collected so far, so the document is left exactly as it was (no whole-document
//! clone). A success yields an [`Applied`]: the inverse patch, the concrete paths touched, and the
//! exact change in encoded size ([`json_size`]), all computed op by op.
//!
//! Invariants: applying `Applied::inverse` to the new document yields the old one exactly; no op
//! can make the document nest deeper than [`MAX_DEPTH`] (each op checks before it writes);
//! `incr` on two integers is exact and overflow is an error, never a float.

use serde::Serialize;
use serde_json::Value;

use super::eq::{add_numbers, json_eq};
use super::pointer::{Pointer, array_index, get_mut, get_ref};
use super::{Op, PatchError};

/// Deepest nesting a document may reach (containers from the root, as serde_json's parser
/// allows). Keeping every state within it keeps every recursive walk (clone, encode, drop) far
/// from the stack's end, whatever a client sends.
pub const MAX_DEPTH: usize = 128;

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
}

/// Applies `ops` atomically.
///
/// # Errors
/// The first failing op's error; `doc` is then unchanged.
pub fn apply(doc: &mut Value, ops: &[Op]) -> Result<Applied, PatchError> {
    let mut applied = Applied::default();
    // Inverse groups are pushed in reverse order of their own application and the whole list is
    // reversed at the end, so each group stays internally ordered.
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = apply_one(doc, op, i, &mut applied) {
            applied.inverse.reverse();
            let mut scratch = Applied::default();
            for inv in &applied.inverse {
                let rolled_back = apply_one(doc, inv, 0, &mut scratch);
                debug_assert!(rolled_back.is_ok(), "rollback failed: {rolled_back:?}");
            }
            return Err(e);
        }
    }
    applied.inverse.reverse();
    Ok(applied)
}

/// Length of `v` encoded as compact JSON, without allocating it.
pub fn json_size<T: Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v).expect("counting never fails");
    c.0
}

/// Nesting depth of a value (0 for a scalar), walked with an explicit stack.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

fn check_depth(path: &Pointer, value: &Value, i: usize) -> Result<(), PatchError> {
    if !value.is_array() && !value.is_object() {
        return Ok(());
    }
    if path.tokens().len() + depth(value) > MAX_DEPTH {
        return Err(PatchError::invalid(
            i,
            format!("the document would nest deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(())
}

fn apply_one(doc: &mut Value, op: &Op, i: usize, acc: &mut Applied) -> Result<(), PatchError> {
    match op {
        Op::Add { path, value } => {
            check_depth(path, value, i)?;
            let size = json_size(value) as i64;
            let added = add_at(doc, path, value.clone(), i).map_err(|(e, _)| e)?;
            acc.touched.push(if added.shifted { path.parent() } else { added.concrete.clone() });
            acc.size_delta += size;
            acc.record_add(added);
        }
        Op::Remove { path } => {
            let removed = remove_at(doc, path, i)?;
            acc.touched.push(if removed.shifted { path.parent() } else { path.clone() });
            let size = json_size(&removed.value);
            acc.size_delta -= (size + removed.overhead) as i64;
            acc.inverse_bytes += size;
            acc.inverse.push(Op::Add { path: path.clone(), value: removed.value });
        }
        Op::Replace { path, value } => {
            check_depth(path, value, i)?;
            let target = get_mut(doc, path, i)?;
            let old = std::mem::replace(target, value.clone());
            acc.touched.push(path.clone());
            let old_size = json_size(&old);
            acc.size_delta += json_size(value) as i64 - old_size as i64;
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
            // The inverse re-adds an explicit copy: a `move` back is not always possible (the
            // destination may be the root, or may have overwritten an ancestor of `from`).
            let moved = removed.value.clone();
            let added = match add_at(doc, path, removed.value, i) {
                Ok(done) => done,
                Err((e, value)) => {
                    // Put the removed value back where it was before reporting.
                    let restored = add_at(doc, from, value, i);
                    debug_assert!(restored.is_ok());
                    return Err(e);
                }
            };
            acc.touched.push(if removed.shifted { from.parent() } else { from.clone() });
            acc.touched.push(if added.shifted { path.parent() } else { added.concrete.clone() });
            // The moved value's own bytes leave one place and arrive at another.
            acc.size_delta -= removed.overhead as i64;
            acc.inverse_bytes += json_size(&moved);
            acc.inverse.push(Op::Add { path: from.clone(), value: moved });
            acc.record_add(added);
        }
        Op::Copy { from, path } => {
            let value = get_ref(doc, from, i)?;
            check_depth(path, value, i)?;
            let value = value.clone();
            let size = json_size(&value) as i64;
            let added = add_at(doc, path, value, i).map_err(|(e, _)| e)?;
            acc.touched.push(from.clone());
            acc.touched.push(if added.shifted { path.parent() } else { added.concrete.clone() });
            acc.size_delta += size;
            acc.record_add(added);
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
                let new_size = json_size(&sum) as i64;
                let target = get_mut(doc, path, i)?;
                let old = std::mem::replace(target, Value::Number(sum));
                acc.touched.push(path.clone());
                let old_size = json_size(&old);
                acc.size_delta += new_size - old_size as i64;
                acc.inverse_bytes += old_size;
                acc.inverse.push(Op::Replace { path: path.clone(), value: old });
            }
            Ok(_) => return Err(PatchError::invalid(i, format!("incr target {path} is not a number"))),
            Err(_) => {
                let n = Value::Number(value.clone());
                let size = json_size(&n) as i64;
                let added = add_at(doc, path, n, i).map_err(|(e, _)| e)?;
                acc.touched.push(if added.shifted { path.parent() } else { added.concrete.clone() });
                acc.size_delta += size;
                acc.record_add(added);
            }
        },
    }
    Ok(())
}

impl Applied {
    /// Records an add's inverse and its size effect beyond the new value's own bytes (which
    /// the caller counted): member-name and separator bytes, minus what it overwrote.
    fn record_add(&mut self, added: Added) {
        self.size_delta += added.overhead as i64;
        self.inverse.push(match added.old {
            Some(old) => {
                let old_size = json_size(&old);
                self.size_delta -= old_size as i64;
                self.inverse_bytes += old_size;
                Op::Replace { path: added.concrete, value: old }
            }
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
    /// Encoded bytes added besides the value itself: `"name":` and a separating comma.
    overhead: usize,
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
    let Some((last, _)) = path.tokens().split_last() else {
        let old = std::mem::replace(doc, value);
        return Ok(Added { concrete: Pointer::root(), old: Some(old), shifted: false, overhead: 0 });
    };
    let parent = match get_mut(doc, &path.parent(), i) {
        Ok(p) => p,
        Err(e) => return Err((e, value)),
    };
    match parent {
        Value::Object(m) => {
            let comma = usize::from(!m.is_empty());
            let old = m.insert(last.clone(), value);
            let overhead = if old.is_some() { 0 } else { json_size(last.as_str()) + 1 + comma };
            Ok(Added { concrete: path.clone(), old, shifted: false, overhead })
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
            let comma = usize::from(!a.is_empty());
            a.insert(idx, value);
            Ok(Added { concrete: path.with_last(idx.to_string()), old: None, shifted: true, overhead: comma })
        }
        _ => Err((PatchError::invalid(i, format!("parent of {path} is not a container")), value)),
    }
}

/// RFC 6902 `remove`.
fn remove_at(doc: &mut Value, path: &Pointer, i: usize) -> Result<Removed, PatchError> {
    let Some((last, _)) = path.tokens().split_last() else {
        return Err(PatchError::invalid(i, "cannot remove the whole document"));
    };
    let parent = get_mut(doc, &path.parent(), i)?;
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
}
