//! A fixed-capacity ring buffer of the most recent committed changes, indexed by revision.
//!
//! Allocated once at full capacity; `push` is O(1) (amortised, with the byte budget) and
//! overwrites the oldest entry; reading the k entries after a revision is O(k). Besides the count
//! limit, an optional byte budget drops the oldest entries while the entries' total size exceeds
//! it (the newest entry always stays). Invariants: entries hold consecutive revisions, the newest
//! is always `head()`, at most `capacity()` of them are kept, and `bytes()` is their total size.

/// Ring of `T`s stamped with consecutive revisions `head-len+1 ..= head`.
#[derive(Debug)]
pub struct Ring<T> {
    slots: Box<[Option<(T, usize)>]>,
    /// Revision of the newest entry (0 while empty).
    head: u64,
    len: usize,
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
        Ring { slots: (0..capacity).map(|_| None).collect(), head: 0, len: 0, bytes: 0, budget }
    }

    /// Total size of the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest revision `r` for which every change after `r` is still held: a reader at `r`
    /// (or later, up to `head`) can be served from the ring.
    pub fn oldest_base(&self) -> u64 {
        self.head - self.len as u64
    }

    fn slot(&self, rev: u64) -> usize {
        (rev % self.slots.len() as u64) as usize
    }

    /// Appends the entry for revision `rev`, which must be `head() + 1` (or any revision when
    /// the ring is empty, so a ring can start at a non-zero revision).
    ///
    /// # Panics
    /// When `rev` is not consecutive: that would be a bug in the room's commit path.
    pub fn push(&mut self, rev: u64, value: T, bytes: usize) {
        assert!(self.len == 0 || rev == self.head + 1, "ring push out of order: {rev} after {}", self.head);
        let i = self.slot(rev);
        if let Some((_, old)) = self.slots[i].replace((value, bytes)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        self.head = rev;
        self.len = (self.len + 1).min(self.slots.len());
        while self.budget > 0 && self.bytes > self.budget && self.len > 1 {
            let oldest = self.oldest_base() + 1;
            let i = self.slot(oldest);
            if let Some((_, b)) = self.slots[i].take() {
                self.bytes -= b;
            }
            self.len -= 1;
        }
    }

    /// The entry for `rev`, if still held.
    pub fn get(&self, rev: u64) -> Option<&T> {
        if rev > self.head || rev <= self.oldest_base() {
            return None;
        }
        self.slots[self.slot(rev)].as_ref().map(|(v, _)| v)
    }

    /// Every entry after `rev`, oldest first; `None` when some of them are no longer held or
    /// `rev` is in the future.
    pub fn after(&self, rev: u64) -> Option<impl DoubleEndedIterator<Item = &T>> {
        if rev > self.head || rev < self.oldest_base() {
            return None;
        }
        Some((rev + 1..self.head + 1).map(move |r| &self.slots[self.slot(r)].as_ref().expect("held slot").0))
    }

    /// Entries newer than `rev`, newest first, while they exist (for conflict scans).
    pub fn newest_first(&self) -> impl Iterator<Item = &T> {
        (self.oldest_base() + 1..=self.head)
            .rev()
            .map(move |r| &self.slots[self.slot(r)].as_ref().expect("held slot").0)
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
    #[should_panic(expected = "out of order")]
    fn refuses_gaps() {
        let mut r = Ring::new(2);
        r.push(1, (), 0);
        r.push(3, (), 0);
    }
}
