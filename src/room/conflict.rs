//! The conflict modes: whether a change may commit given the changes its author had not seen.
//!
//! `overwrite` always may; `rev` only when `baseRev` is the current revision (first writer wins);
//! `paths` unless a change after `baseRev` touched a path that overlaps one the new change reads or
//! writes (a prefix in either direction, as [`Pointer::overlaps`] defines). Pure: it reads the
//! ring and decides, nothing else.
//!
//! The `paths` check runs under the room's write lock, so its cost is kept near-linear and
//! bounded: the new change's paths go into a trie once ([`PathTrie`]), and each path a newer change
//! touched is walked down it, one lookup per token. Before it runs, the check counts that work
//! (one unit per touched path plus one per token in it); a check over [`MAX_PATHS_CHECK_WORK`] is
//! refused as `stale` without running, telling the client to resync and retry from a newer
//! `baseRev` (which has fewer changes after it to check).
//!
//! Id-addressed list ops (`patch::list`) touch their array as a *list* path, kept apart from the
//! ordinary (index-based) paths: a list path conflicts with an index-based path that overlaps it
//! (either direction, as any array edit does), and with a list path on an array strictly above or
//! below it (whose index it goes through), but never with a list path on the same array: two list
//! ops on one array, whatever their ids, always commit. An ordinary change has no list paths, so
//! the check costs it nothing more.
//!
//! Invariant: a `conflict` reject lists every conflicting revision, ascending.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Change, ChangeRequest};
use crate::patch::{Op, Pointer};
use crate::protocol::{ErrorCode, Mode, Reject};
use crate::ring::Ring;

/// The most work one `paths`-mode check may do: touched paths plus their tokens, summed over
/// every change after `baseRev`. A full default ring of 1,024 changes of 1,000 ops on one-token
/// paths is about 2M; this allows twice that, roughly 0.1–0.3 s of lock time on one of today's
/// cores (the walk is bound by memory: every touched path is its own few small allocations).
pub(super) const MAX_PATHS_CHECK_WORK: usize = 4_000_000;

/// Checks `req` against the changes in `ring`, whose head is `cur`.
///
/// # Errors
/// `conflict` (with the revisions), `stale` (a `paths` base older than the ring can answer for,
/// or one so old that checking it would exceed [`MAX_PATHS_CHECK_WORK`]), or `invalid` (a
/// missing or future `baseRev`).
pub(super) fn check(ring: &Ring<Arc<Change>>, req: &ChangeRequest, cur: u64) -> Result<(), Reject> {
    check_within(ring, req, cur, MAX_PATHS_CHECK_WORK)
}

/// [`check`] with the work bound as a parameter (tests use a small one).
pub(super) fn check_within(
    ring: &Ring<Arc<Change>>,
    req: &ChangeRequest,
    cur: u64,
    max_work: usize,
) -> Result<(), Reject> {
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
            let newer = || ring.newest_first().take_while(|c| c.rev.0 > base.0);
            let Some(conflicts) = overlapping(newer, &req.ops, max_work) else {
                let message = format!(
                    "checking baseRev {base} would scan more than {max_work} path tokens of the \
                     {} changes after it; resync and retry with a newer baseRev",
                    cur - base.0
                );
                return Err(Reject::new(ErrorCode::Stale, message, cur));
            };
            if conflicts.is_empty() {
                Ok(())
            } else {
                Err(conflict(format!("a change after baseRev {base} touched the same paths"), cur, conflicts))
            }
        }
    }
}

/// The `paths` rule, shared by `paths` mode and the history's conflict check: the revisions of
/// the changes `newer()` yields whose touched paths overlap a path `ops` read or write, newest
/// first. `None`, without checking anything, when the check would do more than `max_work`
/// (touched paths plus their tokens, counted before any of it is done; the count itself stops
/// at the bound). `newer` is called twice: to count, then to check.
pub(super) fn overlapping<'c, I>(newer: impl Fn() -> I, ops: &[Op], max_work: usize) -> Option<Vec<u64>>
where
    I: Iterator<Item = &'c Arc<Change>>,
{
    // Counted before any of it is done, and the count itself stops at the bound.
    let mut work = 0usize;
    for c in newer() {
        work += c.touched.iter().chain(&c.list_touched).map(|t| 1 + t.tokens().len()).sum::<usize>();
        if work > max_work {
            return None;
        }
    }
    let mine = PathTrie::from_ops(ops);
    Some(newer().filter(|c| mine.conflicts_with(c)).map(|c| c.rev.0).collect())
}

fn conflict(message: String, cur: u64, mut conflicts: Vec<u64>) -> Reject {
    conflicts.sort_unstable();
    Reject { code: ErrorCode::Conflict, message, rev: cur, conflicts }
}

/// A set of pointers as a trie of their tokens, answering "does this pointer overlap any of
/// them?" (one is a prefix of the other) in one walk down the pointer's tokens. Each pointer is
/// inserted as an ordinary (index-based) path or as a list path (an array edited by id), and the
/// queries apply the list rule of the module doc.
///
/// Invariant: every node lies on some inserted pointer (nodes are only made by inserting), and
/// `end` / `list` mark the nodes where an ordinary / a list pointer ends.
#[derive(Debug)]
pub(super) struct PathTrie<'a> {
    /// Node 0 is the root (the empty pointer).
    nodes: Vec<TrieNode<'a>>,
}

#[derive(Debug, Default)]
struct TrieNode<'a> {
    /// An inserted ordinary pointer ends here.
    end: bool,
    /// An inserted list pointer ends here.
    list: bool,
    children: HashMap<&'a str, u32>,
}

impl<'a> PathTrie<'a> {
    /// A trie of ordinary paths.
    pub(super) fn new(paths: impl IntoIterator<Item = &'a Pointer>) -> Self {
        let mut trie = PathTrie { nodes: vec![TrieNode::default()] };
        for p in paths {
            trie.insert(p, false);
        }
        trie
    }

    /// The paths a change's ops read or write, list ops' arrays as list paths.
    pub(super) fn from_ops(ops: &'a [Op]) -> Self {
        let mut trie = PathTrie::new([]);
        for op in ops {
            let list = op.is_list();
            for p in op.paths() {
                trie.insert(p, list);
            }
        }
        trie
    }

    /// The paths a committed change touched (for checks against a past change: undo's conflict
    /// rule, issue 14 part A, uses it with [`PathTrie::conflicts_with`]).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn from_change(c: &'a Change) -> Self {
        let mut trie = PathTrie::new(&c.touched);
        for p in &c.list_touched {
            trie.insert(p, true);
        }
        trie
    }

    fn insert(&mut self, p: &'a Pointer, list: bool) {
        let mut n = 0;
        for tok in p.tokens() {
            let next = self.nodes.len() as u32;
            let child = *self.nodes[n].children.entry(tok.as_str()).or_insert(next);
            if child == next {
                self.nodes.push(TrieNode::default());
            }
            n = child as usize;
        }
        if list {
            self.nodes[n].list = true;
        } else {
            self.nodes[n].end = true;
        }
    }

    /// Whether any path `c` touched (ordinary or list) conflicts with the inserted ones.
    pub(super) fn conflicts_with(&self, c: &Change) -> bool {
        c.touched.iter().any(|t| self.overlaps(t)) || c.list_touched.iter().any(|t| self.overlaps_list(t))
    }

    /// The node where `p` ends, or `None` when `p` leaves the trie; `Some(Err(()))` when an
    /// inserted pointer (of either kind) is a proper prefix of `p`.
    fn walk(&self, p: &Pointer) -> Option<Result<usize, ()>> {
        if self.nodes.len() == 1 && !self.nodes[0].end && !self.nodes[0].list {
            return None; // nothing was inserted
        }
        let mut n = 0;
        for tok in p.tokens() {
            if self.nodes[n].end || self.nodes[n].list {
                return Some(Err(())); // an inserted pointer is a proper prefix of `p`
            }
            n = *self.nodes[n].children.get(tok.as_str())? as usize;
        }
        Some(Ok(n))
    }

    /// True when the ordinary path `p` equals, lies below or lies above some inserted pointer.
    pub(super) fn overlaps(&self, p: &Pointer) -> bool {
        // At the end, `p` is a prefix of (or equal to) an inserted pointer: every node lies on one.
        self.walk(p).is_some()
    }

    /// True when the list path `p` (an array edited by id) conflicts with an inserted pointer:
    /// an ordinary one that overlaps it, or a list one on an array above or below it; a list
    /// pointer on the same array alone does not.
    pub(super) fn overlaps_list(&self, p: &Pointer) -> bool {
        match self.walk(p) {
            None => false,
            Some(Err(())) => true,
            Some(Ok(n)) => self.nodes[n].end || !self.nodes[n].children.is_empty(),
        }
    }
}
