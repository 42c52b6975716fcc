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
                return Err(self.invalid(format!("element {k} of {path} is not an object with a string \"id\"")));
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

    fn mv(&mut self, doc: &mut Value, path: &Pointer, id: &str, after: Option<&str>) -> Result<(), PatchError> {
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
        let Some(el) = a[k].as_object() else { return Err(self.invalid(format!("element {k} is not an object"))) };
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
        let Some(el) = a[k].as_object_mut() else { return Err(self.invalid(format!("element {k} is not an object"))) };
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
                self.acc.inverse.push(Op::ListInsert { path: path.clone(), after: pred, value: Value::Object(old) });
                self.acc.inverse.push(Op::ListRemove { path, id: id.to_owned() });
            }
            None => self.acc.inverse.push(Op::ListUpdate { path, id: id.to_owned(), value: Value::Object(back) }),
        }
        Ok(())
    }
}
