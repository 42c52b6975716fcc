//! A room's history features: whose undo and redo stacks are whose ([`UserKey`], [`Stacks`]),
//! which retained change an `undo`, `redo` or `reverts` change reverts ([`target`]), whether a
//! later change by someone else forbids it ([`check_conflicts`]), and applying its inverse
//! ([`apply_inverse`]). Pure and synchronous: the room calls all of it under its write lock, so a
//! revert is ordered like any change (one ordering point).
//!
//! Stacks follow editors: a plain (or `reverts`) change C by user u pushes C on u's undo stack
//! and clears u's redo stack; `undo` pops X, commits X's inverse as U and pushes U on the redo
//! stack; `redo` pops U, commits U's inverse as R and pushes R on the undo stack.
//!
//! Invariants: each stack holds revisions in ascending order (pushed in commit order), so the
//! top is the newest and everything at or below the ring's floor (`oldest_base`) is a prefix; a
//! stack whose entries were pruned for falling out of the ring remembers it (`lost`), so popping
//! it empty answers `stale` rather than "nothing to undo". Every revision is on at most one stack
//! of one user. Memory: the acting user's stacks are pruned on each of their commits, and all
//! stacks are pruned (dropping users with none left) once they hold more than twice the ring's
//! capacity plus [`SLACK`] entries, so the stacks stay within a small multiple of the ring.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::Change;
use super::conflict;
use crate::ids::ClientId;
use crate::patch::{self, Applied, Op, PatchError};
use crate::protocol::{ChangeKind, ErrorCode, Reject, Stacks as Flags};
use crate::ring::Ring;

/// Entries the stacks may hold beyond twice the ring's capacity before all are pruned.
const SLACK: usize = 64;

/// Whose stacks a change goes on: the token's user when there is one, else the session's client
/// (open mode: sessions survive reconnects by resume, and so do their stacks). HTTP changes
/// without a user have no stacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserKey {
    User(Arc<str>),
    Client(ClientId),
}

impl UserKey {
    /// The key of a change by `client` (and `user`, a token's `sub`), if it has one.
    pub fn of(user: Option<&Arc<str>>, client: ClientId) -> Option<UserKey> {
        match user {
            Some(u) => Some(UserKey::User(u.clone())),
            None if client != ClientId::HTTP => Some(UserKey::Client(client)),
            None => None,
        }
    }
}

impl std::fmt::Display for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserKey::User(u) => write!(f, "user {u:?}"),
            UserKey::Client(c) => write!(f, "client {c}"),
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct Stack {
    /// Ascending revisions; the top is the last.
    revs: Vec<u64>,
    /// Entries were dropped for falling out of the retained history since it was last cleared.
    lost: bool,
}

impl Stack {
    /// Drops the entries at or below `floor`; returns how many.
    fn prune(&mut self, floor: u64) -> usize {
        let n = self.revs.partition_point(|r| *r <= floor);
        if n > 0 {
            self.revs.drain(..n);
            self.lost = true;
        }
        n
    }

    fn top_within(&self, floor: u64) -> bool {
        self.revs.last().is_some_and(|r| *r > floor)
    }
}

#[derive(Debug, Default, PartialEq)]
struct UserStacks {
    undo: Stack,
    redo: Stack,
}

/// Every user's undo and redo stacks in one room.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Stacks {
    users: HashMap<UserKey, UserStacks>,
    /// Entries over all stacks.
    entries: usize,
}

impl Stacks {
    /// Whether `key` can undo / redo something still retained (`floor` = the ring's oldest base).
    pub(super) fn flags(&self, key: Option<&UserKey>, floor: u64) -> Flags {
        match key.and_then(|k| self.users.get(k)) {
            Some(s) => Flags { can_undo: s.undo.top_within(floor), can_redo: s.redo.top_within(floor) },
            None => Flags::default(),
        }
    }

    /// The revision an `undo` or `redo` by `key` reverts: the top of its undo or redo stack.
    ///
    /// # Errors
    /// `invalid` when there is nothing to undo or redo, `stale` when the next one fell out of
    /// the retained history.
    pub(super) fn top(
        &mut self,
        key: &UserKey,
        kind: ChangeKind,
        floor: u64,
        cur: u64,
    ) -> Result<u64, Reject> {
        let undo = kind == ChangeKind::Undo;
        let word = if undo { "undo" } else { "redo" };
        let Some(s) = self.users.get_mut(key) else {
            return Err(Reject::new(ErrorCode::Invalid, format!("nothing to {word} in this room"), cur));
        };
        let stack = if undo { &mut s.undo } else { &mut s.redo };
        self.entries -= stack.prune(floor);
        match stack.revs.last() {
            Some(r) => Ok(*r),
            None if stack.lost => Err(Reject::new(
                ErrorCode::Stale,
                format!(
                    "the change to {word} is older than the retained history (oldest revision {})",
                    floor + 1
                ),
                cur,
            )),
            None => Err(Reject::new(ErrorCode::Invalid, format!("nothing to {word} in this room"), cur)),
        }
    }

    /// Records the change `rev` by `key` of `kind` (after it committed) and returns `key`'s flags.
    /// `floor` is the ring's oldest base after the commit; `capacity` the ring's.
    pub(super) fn record(
        &mut self,
        key: &UserKey,
        kind: ChangeKind,
        rev: u64,
        floor: u64,
        capacity: usize,
    ) -> Flags {
        let s = self.users.entry(key.clone()).or_default();
        // The reverted entry leaves its stack first: it was retained when it was reverted, and
        // must not count as lost now that this commit moves the floor past it.
        let mut removed = 0;
        match kind {
            ChangeKind::Plain | ChangeKind::Reverts(_) => {
                removed += s.redo.revs.len();
                s.redo = Stack::default();
                s.undo.revs.push(rev);
            }
            ChangeKind::Undo => {
                removed += usize::from(s.undo.revs.pop().is_some());
                s.redo.revs.push(rev);
            }
            ChangeKind::Redo => {
                removed += usize::from(s.redo.revs.pop().is_some());
                s.undo.revs.push(rev);
            }
        }
        removed += s.undo.prune(floor) + s.redo.prune(floor);
        let added = 1;
        let flags = Flags { can_undo: s.undo.top_within(floor), can_redo: s.redo.top_within(floor) };
        self.entries = self.entries + added - removed;
        if self.entries > 2 * capacity + SLACK {
            self.prune_all(floor);
        }
        flags
    }

    /// Prunes every stack, dropping the users left with none.
    fn prune_all(&mut self, floor: u64) {
        let mut entries = 0;
        self.users.retain(|_, s| {
            s.undo.prune(floor);
            s.redo.prune(floor);
            entries += s.undo.revs.len() + s.redo.revs.len();
            !(s.undo.revs.is_empty() && s.redo.revs.is_empty())
        });
        self.entries = entries;
    }

    /// Entries over all stacks (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries
    }
}

/// The retained change that `kind` reverts, for `key` (`may_revert_any`: the author holds
/// `admin` in the room).
///
/// # Errors
/// `invalid` (nothing to undo or redo; a revision that does not exist), `stale` (older than the
/// ring), `forbidden` (another user's change without admin).
pub(super) fn target(
    stacks: &mut Stacks,
    ring: &Ring<Arc<Change>>,
    key: Option<&UserKey>,
    kind: ChangeKind,
    may_revert_any: bool,
    cur: u64,
) -> Result<Arc<Change>, Reject> {
    let floor = ring.oldest_base();
    let rev = match (kind, key) {
        (ChangeKind::Reverts(r), _) => r.0,
        (_, Some(key)) => stacks.top(key, kind, floor, cur)?,
        (_, None) => {
            let message = "undo and redo need a user (a session or a token's subject)";
            return Err(Reject::new(ErrorCode::Invalid, message, cur));
        }
    };
    if rev > cur || rev == 0 {
        return Err(Reject::new(
            ErrorCode::Invalid,
            format!("revision {rev} does not exist (the room is at {cur})"),
            cur,
        ));
    }
    let Some(x) = ring.get(rev) else {
        let message = format!("revision {rev} is older than the retained history (oldest {})", floor + 1);
        return Err(Reject::new(ErrorCode::Stale, message, cur));
    };
    if !may_revert_any && x.key.as_ref() != key {
        let message =
            format!("revision {rev} is not yours: reverting another user's change needs admin in this room");
        return Err(Reject::new(ErrorCode::Forbidden, message, cur));
    }
    Ok(x.clone())
}

/// The conflict rule: reverting `x` conflicts with every later change (rev > x) by a different
/// user key that overlaps what the revert writes (`x`'s inverse; the `paths` rule). The user's
/// own later changes never conflict.
///
/// # Errors
/// `conflict` listing those revisions (ascending, in `conflicts`); `stale` when the
/// check would exceed the `paths` check's work bound.
pub(super) fn check_conflicts(
    ring: &Ring<Arc<Change>>,
    x: &Change,
    key: Option<&UserKey>,
    cur: u64,
    max_work: usize,
) -> Result<(), Reject> {
    let newer = || ring.newest_first().take_while(|c| c.rev > x.rev).filter(|c| c.key.as_ref() != key);
    let Some(mut revs) = conflict::overlapping(newer, &x.inverse, max_work) else {
        let message = format!(
            "checking the revert of revision {} would scan more than {max_work} path tokens; use \"mode\":\"overwrite\"",
            x.rev
        );
        return Err(Reject::new(ErrorCode::Stale, message, cur));
    };
    if revs.is_empty() {
        return Ok(());
    }
    revs.sort_unstable();
    let list = revs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let message = format!(
        "later changes by others ({list}) touched what reverting revision {} would change; nothing was applied (\"mode\":\"overwrite\" reverts anyway)",
        x.rev
    );
    Err(Reject { conflicts: revs, ..Reject::new(ErrorCode::Conflict, message, cur) })
}

/// Applies `inverse` to `state` op by op, skipping every op that does not apply (`invalid`:
/// its target or its parent is gone, or is not the type it was; the only other error, a `test`
/// op failing, cannot occur, as inverses hold none). Returns the ops applied, in order, and what
/// applying them returned, as one [`Applied`].
///
/// # Errors
/// `too_large` when an op would take the state (or what the revert keeps for undo) over
/// `limit` (0 = unlimited); the state is then rolled back to what it was.
pub(super) fn apply_inverse(
    state: &mut Value,
    inverse: &[Op],
    size: usize,
    limit: usize,
) -> Result<(Vec<Op>, Applied), PatchError> {
    let mut ops = Vec::with_capacity(inverse.len());
    let mut groups: Vec<Vec<Op>> = Vec::with_capacity(inverse.len());
    let mut total = Applied::default();
    let mut size = size as i64;
    for op in inverse {
        let one = std::slice::from_ref(op);
        let result = if limit > 0 {
            patch::apply_within(state, one, patch::Budget { size: size.max(0) as usize, limit })
        } else {
            patch::apply(state, one)
        };
        match result {
            Ok(a) => {
                size += a.size_delta;
                total.size_delta += a.size_delta;
                total.inverse_bytes += a.inverse_bytes;
                total.touched.extend(a.touched);
                total.list_touched.extend(a.list_touched);
                groups.push(a.inverse);
                ops.push(op.clone());
            }
            Err(PatchError::Invalid { .. } | PatchError::TestFailed { .. }) => {}
            Err(e @ (PatchError::TooLarge { .. } | PatchError::TooMuchWork { .. })) => {
                for g in groups.iter().rev() {
                    let restored = patch::revert(state, g);
                    debug_assert!(restored.is_ok(), "inverse must apply: {restored:?}");
                }
                return Err(e);
            }
        }
    }
    total.inverse = groups.into_iter().rev().flatten().collect();
    Ok((ops, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> UserKey {
        UserKey::Client(ClientId(n))
    }

    #[test]
    fn editor_semantics() {
        let mut s = Stacks::default();
        let a = key(1);
        assert_eq!(s.record(&a, ChangeKind::Plain, 1, 0, 8), Flags { can_undo: true, can_redo: false });
        s.record(&a, ChangeKind::Plain, 2, 0, 8);
        assert_eq!(s.top(&a, ChangeKind::Undo, 0, 2), Ok(2));
        assert_eq!(s.record(&a, ChangeKind::Undo, 3, 0, 8), Flags { can_undo: true, can_redo: true });
        assert_eq!(s.top(&a, ChangeKind::Redo, 0, 3), Ok(3));
        assert_eq!(s.record(&a, ChangeKind::Redo, 4, 0, 8), Flags { can_undo: true, can_redo: false });
        assert_eq!(s.top(&a, ChangeKind::Undo, 0, 4), Ok(4));
        s.record(&a, ChangeKind::Undo, 5, 0, 8);
        // A new change clears the redo stack.
        assert_eq!(s.record(&a, ChangeKind::Plain, 6, 0, 8), Flags { can_undo: true, can_redo: false });
        assert_eq!(s.top(&a, ChangeKind::Redo, 0, 6).unwrap_err().code, ErrorCode::Invalid);
        assert_eq!(s.top(&key(2), ChangeKind::Undo, 0, 6).unwrap_err().code, ErrorCode::Invalid);
    }

    #[test]
    fn entries_below_the_floor_are_stale_then_dropped() {
        let mut s = Stacks::default();
        let a = key(1);
        s.record(&a, ChangeKind::Plain, 1, 0, 4);
        assert_eq!(s.flags(Some(&a), 1), Flags::default());
        assert_eq!(s.top(&a, ChangeKind::Undo, 1, 9).unwrap_err().code, ErrorCode::Stale);
        // Many users each with one old change: pruned once the stacks outgrow the ring.
        for n in 0..200u64 {
            s.record(&key(100 + n), ChangeKind::Plain, 10 + n, 6 + n, 4);
        }
        assert!(s.len() <= 2 * 4 + SLACK, "{}", s.len());
        assert!(s.users.len() <= 2 * 4 + SLACK + 1);
    }
}
