//! The size budget a patch runs under ([`super::apply_within`]): what each write will grow,
//! worked out before it is made ([`plan_add`]), and the check that refuses the op that would take
//! the document, or what its inverse keeps for undo, past the limit ([`Applied::admit`]).
//!
//! Invariant: a plan fails exactly where the write it plans would fail, and the growth it works
//! out is the growth the write records, so the budget and `Applied::size_delta` never disagree.

use std::fmt;

use serde_json::Value;

use super::PatchError;
use super::apply::Applied;
use super::measure::json_size;
use super::pointer::{Pointer, array_index, parent_ref};

/// How large a patch may make things while it runs (see [`super::apply_within`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The document's encoded size (compact JSON bytes) before the patch.
    pub size: usize,
    /// The most the document's encoded size may be after any op, and the most the values the
    /// inverse keeps (what the patch overwrites or removes, `Applied::inverse_bytes`) may add up to.
    pub limit: usize,
}

/// What a [`PatchError::TooLarge`] would have grown past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grows {
    /// The document itself.
    State,
    /// The values the change overwrites or removes, which its inverse keeps for undo.
    Undo,
}

impl fmt::Display for Grows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grows::State => "the state",
            Grows::Undo => "the values this change overwrites or removes (kept to undo it)",
        })
    }
}

/// What one write will do, worked out before it is made: how much it grows the document's
/// encoding (negative when it shrinks it) and the encoded size of the value it overwrites
/// (which the inverse keeps).
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) growth: i64,
    pub(super) replaced: usize,
}

impl Applied {
    /// Refuses a write of `plan` (plus `undo` more bytes kept by the inverse) that would take
    /// the document or the inverse past the budget. A write that shrinks the document is never
    /// refused for the document's size.
    pub(super) fn admit(
        &self,
        budget: Option<Budget>,
        i: usize,
        plan: Plan,
        undo: usize,
    ) -> Result<(), PatchError> {
        let Some(b) = budget else { return Ok(()) };
        if plan.growth > 0 {
            let size = b.size as i64 + self.size_delta + plan.growth;
            if size > b.limit as i64 {
                return Err(PatchError::TooLarge {
                    index: i,
                    what: Grows::State,
                    size: size as usize,
                    limit: b.limit,
                });
            }
        }
        let kept = undo + plan.replaced;
        if kept > 0 && self.inverse_bytes + kept > b.limit {
            let size = self.inverse_bytes + kept;
            return Err(PatchError::TooLarge { index: i, what: Grows::Undo, size, limit: b.limit });
        }
        Ok(())
    }
}

/// Works out what adding a value of `size` encoded bytes at `path` would do, without writing:
/// the same checks `apply::add_at` makes (so it fails exactly where `add_at` would), and the exact
/// growth: the value, plus `"name":` and a comma for a new member or a comma for an array
/// element, minus the value it overwrites.
pub(super) fn plan_add(doc: &Value, path: &Pointer, size: usize, i: usize) -> Result<Plan, PatchError> {
    let Some(last) = path.tokens().last() else {
        let old = json_size(doc);
        return Ok(Plan { growth: size as i64 - old as i64, replaced: old });
    };
    match parent_ref(doc, path, i)? {
        Value::Object(m) => Ok(match m.get(last.as_str()) {
            Some(old) => {
                let old = json_size(old);
                Plan { growth: size as i64 - old as i64, replaced: old }
            }
            None => {
                let member = json_size(last.as_str()) + 1 + usize::from(!m.is_empty());
                Plan { growth: (size + member) as i64, replaced: 0 }
            }
        }),
        Value::Array(a) => {
            let idx = if last == "-" { a.len() } else { array_index(last, i)? };
            if idx > a.len() {
                return Err(PatchError::invalid(i, format!("index {idx} is out of bounds at {path}")));
            }
            Ok(Plan { growth: (size + usize::from(!a.is_empty())) as i64, replaced: 0 })
        }
        _ => Err(PatchError::invalid(i, format!("parent of {path} is not a container"))),
    }
}
