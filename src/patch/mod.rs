//! RFC 6902 JSON Patch (plus the `incr` extension and the id-addressed list ops `list_insert`,
//! `list_move`, `list_remove`, `list_update`) over `serde_json::Value`.
//!
//! Pure and synchronous. [`apply()`] is atomic: either every op applies, or the document is left
//! exactly as it was (rolled back with the inverse ops collected so far; no whole-document clone).
//! [`apply_within`] is the same under a [`Budget`]: no op may take the document's encoded size
//! (or what the change keeps for undo) past a limit, checked before the op allocates anything.
//! It returns an [`Applied`]: the inverse patch (applying it undoes the change exactly) and the
//! concrete paths the change touched, which `room` uses for `paths`-mode conflict detection.
//!
//! Invariants: integers stay integers (`incr` on two integers is exact, overflow is an error);
//! `test` compares numbers by value (`1` equals `1.0`); array indices follow RFC 6901 strictly
//! (no leading zeros, no signs, `-` only where the RFC allows it).
//!
//! This file owns the vocabulary: [`Op`] (the wire form of one operation), [`OpKind`],
//! [`PatchError`] and [`parse_patch`]. The rest is split by idea, and everything public is
//! re-exported here, so callers only ever name `crate::patch::…`:
//! - `pointer`: RFC 6901 pointers: parsing, escaping, overlap, and resolving one in a document;
//! - `apply`: atomic application with inverse, touched paths and exact size;
//! - `budget`: what each write grows, planned before it is made, and the limit it is held to;
//! - `measure`: encoded size without encoding, nesting depth and its limit;
//! - `eq`: JSON equality with numbers compared by value, and exact number addition;
//! - `list`: the id-addressed list ops (elements are objects with a unique string `id`), their
//!   concurrency rules (a missing anchor means the end, a missing target means no-op) and the
//!   bound on the elements one change may scan ([`MAX_LIST_SCAN`]).

mod apply;
mod budget;
mod eq;
mod list;
mod measure;
mod pointer;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

pub use apply::{Applied, apply, apply_within, revert};
pub use budget::{Budget, Grows};
pub use eq::{add_numbers, json_eq};
pub use list::MAX_LIST_SCAN;
pub use measure::{MAX_DEPTH, depth, json_size};
pub use pointer::Pointer;

/// Why a patch did not apply. `code()` is the stable reject code clients see.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// Malformed op, bad pointer, missing target, overflow, …
    #[error("op {index}: {message}")]
    Invalid { index: usize, message: String },
    /// A `test` op did not match.
    #[error("op {index}: test failed at {path}")]
    TestFailed { index: usize, path: String },
    /// The op would have made the document, or what the change keeps for undo, larger than the
    /// [`Budget`] allows ([`apply_within`] only). Nothing was allocated for it.
    #[error("op {index}: {what} would be {size} bytes, over the limit of {limit}")]
    TooLarge { index: usize, what: Grows, size: usize, limit: usize },
    /// The change's list ops would scan more than [`MAX_LIST_SCAN`] array elements in all
    /// (finding an element by id is a linear scan). Nothing was applied.
    #[error(
        "op {index}: the list ops of this change would scan more than {limit} array elements; \
         split it into smaller changes"
    )]
    TooMuchWork { index: usize, limit: usize },
}

impl PatchError {
    fn invalid(index: usize, message: impl Into<String>) -> Self {
        PatchError::Invalid { index, message: message.into() }
    }
}

/// One operation. Serialises to and from the RFC 6902 object form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Add {
        path: Pointer,
        value: Value,
    },
    Remove {
        path: Pointer,
    },
    Replace {
        path: Pointer,
        value: Value,
    },
    Move {
        from: Pointer,
        path: Pointer,
    },
    Copy {
        from: Pointer,
        path: Pointer,
    },
    Test {
        path: Pointer,
        value: Value,
    },
    /// Extension: add `value` to the number at `path` (created with `value` when absent).
    Incr {
        path: Pointer,
        value: Number,
    },
    /// Extension: insert `value` (an object with a new string `id`) into the array at `path`
    /// just after the element whose id is `after` (`null`: at the head; an id not there: at
    /// the end).
    #[serde(rename = "list_insert")]
    ListInsert {
        path: Pointer,
        #[serde(deserialize_with = "required_nullable")]
        after: Option<String>,
        value: Value,
    },
    /// Extension: move element `id` to just after `after` (same rules); no-op if `id` is not
    /// there.
    #[serde(rename = "list_move")]
    ListMove {
        path: Pointer,
        id: String,
        #[serde(deserialize_with = "required_nullable")]
        after: Option<String>,
    },
    /// Extension: remove element `id`; no-op if it is not there.
    #[serde(rename = "list_remove")]
    ListRemove {
        path: Pointer,
        id: String,
    },
    /// Extension: shallow-merge the members of `value` (an object) into element `id` (a member
    /// set to `null` is removed; `id` cannot change); no-op if it is not there.
    #[serde(rename = "list_update")]
    ListUpdate {
        path: Pointer,
        id: String,
        value: Value,
    },
}

/// `after` must be present (`null` or a string): a forgotten `after` is an error, not a silent
/// insert at the head.
fn required_nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// The kind of an op, for metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
    Incr,
    ListInsert,
    ListMove,
    ListRemove,
    ListUpdate,
}

impl OpKind {
    pub const ALL: [OpKind; 11] = [
        OpKind::Add,
        OpKind::Remove,
        OpKind::Replace,
        OpKind::Move,
        OpKind::Copy,
        OpKind::Test,
        OpKind::Incr,
        OpKind::ListInsert,
        OpKind::ListMove,
        OpKind::ListRemove,
        OpKind::ListUpdate,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Add => "add",
            OpKind::Remove => "remove",
            OpKind::Replace => "replace",
            OpKind::Move => "move",
            OpKind::Copy => "copy",
            OpKind::Test => "test",
            OpKind::Incr => "incr",
            OpKind::ListInsert => "list_insert",
            OpKind::ListMove => "list_move",
            OpKind::ListRemove => "list_remove",
            OpKind::ListUpdate => "list_update",
        }
    }
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Add { .. } => OpKind::Add,
            Op::Remove { .. } => OpKind::Remove,
            Op::Replace { .. } => OpKind::Replace,
            Op::Move { .. } => OpKind::Move,
            Op::Copy { .. } => OpKind::Copy,
            Op::Test { .. } => OpKind::Test,
            Op::Incr { .. } => OpKind::Incr,
            Op::ListInsert { .. } => OpKind::ListInsert,
            Op::ListMove { .. } => OpKind::ListMove,
            Op::ListRemove { .. } => OpKind::ListRemove,
            Op::ListUpdate { .. } => OpKind::ListUpdate,
        }
    }

    /// True for the id-addressed list ops: their one path is the array they edit, and in
    /// `paths` mode they conflict only with index-based ops on it (see `room::conflict`).
    pub fn is_list(&self) -> bool {
        matches!(
            self,
            Op::ListInsert { .. } | Op::ListMove { .. } | Op::ListRemove { .. } | Op::ListUpdate { .. }
        )
    }

    /// Every path the op reads or writes (`from` and `path`; `test` counts as a read).
    pub fn paths(&self) -> impl Iterator<Item = &Pointer> {
        let (a, b) = match self {
            Op::Move { from, path } | Op::Copy { from, path } => (path, Some(from)),
            Op::Add { path, .. }
            | Op::Remove { path }
            | Op::Replace { path, .. }
            | Op::Test { path, .. }
            | Op::Incr { path, .. }
            | Op::ListInsert { path, .. }
            | Op::ListMove { path, .. }
            | Op::ListRemove { path, .. }
            | Op::ListUpdate { path, .. } => (path, None),
        };
        std::iter::once(a).chain(b)
    }
}

/// Parses a patch document (a JSON array of op objects).
///
/// # Errors
/// `Invalid` naming the first malformed op.
pub fn parse_patch(v: Value) -> Result<Vec<Op>, PatchError> {
    let Value::Array(items) = v else {
        return Err(PatchError::invalid(0, "a patch must be a JSON array of operations"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| serde_json::from_value(item).map_err(|e| PatchError::invalid(i, e.to_string())))
        .collect()
}
