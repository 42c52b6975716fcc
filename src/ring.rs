//! A bounded ring buffer of the most recent committed changes, indexed by revision.
//!
//! Grows as entries arrive, up to `capacity()` of them, so an idle room's ring costs nothing;
//! `push` is O(1) (amortised, with the byte budget) and drops the oldest entry once full; reading
//! the k entries after a revision is O(k). Besides the count limit, an optional byte budget drops
//! the oldest entries while the entries' total size exceeds it (the newest entry always stays),
//! and [`Ring::pop_oldest`] lets the owner shed history when memory is tight. Invariants: entries
//! hold consecutive revisions, the newest is always `head()`, at most `capacity()` of them are
//! kept, and `bytes()` is their total size.

use std::collections::VecDeque;
use std::mem::size_of;

/// Ring of `T`s stamped with consecutive revisions `head-len+1 ..= head`.
#[derive(Debug)]
pub struct Ring<T> {
    /// `(entry, its size)`, oldest first.
    entries: VecDeque<(T, usize)>,
    capacity: usize,
    /// Revision of the newest entry (0 while empty).
    head: u64,
    /// Total size of the entries held, as given to `push`.
    bytes: usize,
    /// Most bytes to hold (0 = no limit).
    budget: usize,
}

impl<T> Ring<T> {
    /// # Panics
    /// When `capacity` is 0 (the config layer refuses it first).
    pub fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, 0)
    }

    /// A ring that also keeps its entries' total size within `budget` bytes (0 = no limit).
    ///
    /// # Panics
    /// When `capacity` is 0.
    pub fn with_budget(capacity: usize, budget: usize) -> Self {
        assert!(capacity > 0, "ring capacity must be positive");
        Ring { entries: VecDeque::new(), capacity, head: 0, bytes: 0, budget }
    }

    /// Total size of the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the ring holds: its entries' sizes plus its slots as allocated now.
    pub fn footprint(&self) -> usize {
        self.bytes + self.entries.capacity() * size_of::<(T, usize)>()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest revision `r` for which every change after `r` is still held: a reader at `r`
    /// (or later, up to `head`) can be served from the ring.
    pub fn oldest_base(&self) -> u64 {
        self.head - self.entries.len() as u64
    }

    /// Appends the entry for revision `rev`, which must be `head() + 1` (or any revision when
    /// the ring is empty, so a ring can start at a non-zero revision).
    ///
    /// # Panics
    /// When `rev` is not consecutive: that would be a bug in the room's commit path.
    pub fn push(&mut self, rev: u64, value: T, bytes: usize) {
        assert!(
            (self.is_empty() && self.head == 0) || rev == self.head + 1,
            "ring push out of order: {rev} after {}",
            self.head
        );
        if self.entries.len() == self.capacity {
            self.drop_oldest();
        }
        self.entries.push_back((value, bytes));
        self.bytes += bytes;
        self.head = rev;
        while self.budget > 0 && self.bytes > self.budget && self.entries.len() > 1 {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) -> Option<usize> {
        let (_, b) = self.entries.pop_front()?;
        self.bytes -= b;
        Some(b)
    }

    /// Drops the oldest entry (readers that needed it get a snapshot instead) and returns its
    /// size; `None` when empty. A ring shed to a quarter of its slots gives the rest back.
    pub fn pop_oldest(&mut self) -> Option<usize> {
        let freed = self.drop_oldest()?;
        if self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        Some(freed)
    }

    /// Takes the newest entry back out (a commit the store could not write is rolled back);
    /// `head` steps back one revision.
    pub fn pop_newest(&mut self) -> Option<T> {
        let (v, b) = self.entries.pop_back()?;
        self.bytes -= b;
        self.head -= 1;
        Some(v)
    }

    /// Starts an empty ring at revision `head` (a room restored from a snapshot whose history
    /// is not kept): the next push is `head + 1`.
    ///
    /// # Panics
    /// When the ring is not empty.
    pub fn start_at(&mut self, head: u64) {
        assert!(self.is_empty(), "start_at on a ring that holds entries");
        self.head = head;
    }

    /// Index in `entries` of revision `rev`, which must be held.
    fn index(&self, rev: u64) -> usize {
        (rev - self.oldest_base() - 1) as usize
    }

    /// The entry for `rev`, if still held.
    pub fn get(&self, rev: u64) -> Option<&T> {
        if rev > self.head || rev <= self.oldest_base() {
            return None;
        }
        self.entries.get(self.index(rev)).map(|(v, _)| v)
    }

    /// Every entry after `rev`, oldest first; `None` when some of them are no longer held or
    /// `rev` is in the future.
    pub fn after(&self, rev: u64) -> Option<impl DoubleEndedIterator<Item = &T>> {
        if rev > self.head || rev < self.oldest_base() {
            return None;
        }
        Some(self.entries.range((rev - self.oldest_base()) as usize..).map(|(v, _)| v))
    }

    /// Entries newer than `rev`, newest first, while they exist (for conflict scans).
    pub fn newest_first(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().rev().map(|(v, _)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_capacity_entries() {
        let mut r = Ring::new(3);
        assert!(r.after(0).unwrap().next().is_none());
        for rev in 1..=5 {
            r.push(rev, rev * 10, 1);
        }
        assert_eq!(r.bytes(), 3);
        assert_eq!(r.len(), 3);
        assert_eq!(r.oldest_base(), 2);
        assert_eq!(r.after(2).unwrap().copied().collect::<Vec<_>>(), vec![30, 40, 50]);
        assert_eq!(r.after(4).unwrap().copied().collect::<Vec<_>>(), vec![50]);
        assert_eq!(r.after(5).unwrap().count(), 0);
        assert!(r.after(1).is_none(), "rev 2 is gone");
        assert!(r.after(6).is_none(), "future");
        assert_eq!(r.get(3), Some(&30));
        assert_eq!(r.get(2), None);
        assert_eq!(r.newest_first().copied().collect::<Vec<_>>(), vec![50, 40, 30]);
    }

    #[test]
    fn byte_budget_drops_the_oldest_but_keeps_the_newest() {
        let mut r = Ring::with_budget(8, 100);
        for rev in 1..=4 {
            r.push(rev, rev, 30);
        }
        assert_eq!((r.len(), r.bytes(), r.oldest_base()), (3, 90, 1));
        r.push(5, 5, 500);
        assert_eq!((r.len(), r.bytes(), r.oldest_base()), (1, 500, 4));
        assert!(r.after(3).is_none());
        assert_eq!(r.after(4).unwrap().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn grows_lazily_and_sheds_oldest_first() {
        let mut r = Ring::new(1024);
        assert_eq!(r.footprint(), 0, "an empty ring allocates nothing");
        for rev in 1..=100 {
            r.push(rev, rev, 10);
        }
        assert!(r.footprint() < 1000 + 128 * 24, "{}", r.footprint());
        assert_eq!(r.pop_oldest(), Some(10));
        assert_eq!((r.len(), r.oldest_base(), r.bytes()), (99, 1, 990));
        assert!(r.after(0).is_none());
        assert_eq!(r.after(98).unwrap().copied().collect::<Vec<_>>(), vec![99, 100]);
        while r.pop_oldest().is_some() {}
        assert_eq!((r.len(), r.head(), r.oldest_base(), r.bytes()), (0, 100, 100, 0));
        assert_eq!(r.after(100).unwrap().count(), 0);
        r.push(101, 101, 1);
        assert_eq!(r.get(101), Some(&101));
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn refuses_gaps() {
        let mut r = Ring::new(2);
        r.push(1, (), 0);
        r.push(3, (), 0);
    }
}
