//! The conflict modes: whether a change may commit given the changes its author had not seen.
//!
//! `overwrite` always may; `rev` only when `baseRev` is the current revision (first writer wins);
//! `paths` unless a change after `baseRev` touched a path that overlaps one the new change reads or
//! writes (a prefix in either direction). Pure: it reads the ring and decides, nothing else.
//! Invariant: a `conflict` reject lists every conflicting revision, ascending.

use std::sync::Arc;

use super::{Change, ChangeRequest};
use crate::patch::Op;
use crate::protocol::{ErrorCode, Mode, Reject};
use crate::ring::Ring;

/// Checks `req` against the changes in `ring`, whose head is `cur`.
///
/// # Errors
/// `conflict` (with the revisions), `stale` (a `paths` base older than the ring can answer for),
/// or `invalid` (a missing or future `baseRev`).
pub(super) fn check(ring: &Ring<Arc<Change>>, req: &ChangeRequest, cur: u64) -> Result<(), Reject> {
    let need_base =
        || req.base_rev.ok_or_else(|| Reject::new(ErrorCode::Invalid, "this mode needs \"baseRev\"", cur));
    match req.mode {
        Mode::Overwrite => Ok(()),
        Mode::Rev => {
            let base = need_base()?;
            if base.0 == cur {
                return Ok(());
            }
            let conflicts = if base.0 < cur {
                ring.newest_first().map(|c| c.rev.0).take_while(|r| *r > base.0).collect()
            } else {
                Vec::new()
            };
            Err(conflict(format!("baseRev {base} is not the current revision {cur}"), cur, conflicts))
        }
        Mode::Paths => {
            let base = need_base()?;
            if base.0 > cur {
                return Err(Reject::new(
                    ErrorCode::Invalid,
                    format!("baseRev {base} is ahead of the room ({cur})"),
                    cur,
                ));
            }
            if base.0 < ring.oldest_base() {
                let message = format!(
                    "baseRev {base} is older than the history can answer for (oldest {})",
                    ring.oldest_base()
                );
                return Err(Reject::new(ErrorCode::Stale, message, cur));
            }
            let conflicts: Vec<u64> = ring
                .newest_first()
                .take_while(|c| c.rev.0 > base.0)
                .filter(|c| {
                    c.touched.iter().any(|t| req.ops.iter().flat_map(Op::paths).any(|p| p.overlaps(t)))
                })
                .map(|c| c.rev.0)
                .collect();
            if conflicts.is_empty() {
                Ok(())
            } else {
                Err(conflict(format!("a change after baseRev {base} touched the same paths"), cur, conflicts))
            }
        }
    }
}

fn conflict(message: String, cur: u64, mut conflicts: Vec<u64>) -> Reject {
    conflicts.sort_unstable();
    Reject { code: ErrorCode::Conflict, message, rev: cur, conflicts }
}
