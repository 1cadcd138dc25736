//! Id pools for service (rev-NAT) and backend ids (and the identity actor's in-process
//! identities), handed out next-fit like upstream's service
//! id allocator: the search starts after the last id handed out and wraps around, so a freed
//! id is reused only after the rest of the range, and conntrack entries still naming it have
//! time to expire.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// A pool of ids in an inclusive range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPool {
    first: u32,
    last: u32,
    used: BTreeSet<u32>,
    /// Where the next search starts.
    next: u32,
}

impl IdPool {
    /// A pool of `range`; an empty range yields a pool that is always exhausted.
    pub fn new(range: RangeInclusive<u32>) -> Self {
        let (first, last) = range.into_inner();
        IdPool {
            first,
            last,
            used: BTreeSet::new(),
            next: first,
        }
    }

    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn last(&self) -> u32 {
        self.last
    }

    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    pub fn is_used(&self, id: u32) -> bool {
        self.used.contains(&id)
    }

    /// How many ids are free.
    pub fn free(&self) -> u64 {
        if self.first > self.last {
            return 0;
        }
        u64::from(self.last - self.first) + 1 - self.used.len() as u64
    }

    /// Hands out the next free id.
    pub fn allocate(&mut self) -> Option<u32> {
        if self.free() == 0 {
            return None;
        }
        // A free id exists, so the scan ends within `used.len() + 1` steps.
        let id = (self.next..=self.last)
            .chain(self.first..self.next)
            .find(|id| !self.used.contains(id))?;
        self.used.insert(id);
        self.next = if id >= self.last { self.first } else { id + 1 };
        Some(id)
    }

    /// Takes `id` if it is in range and free.
    pub fn take(&mut self, id: u32) -> bool {
        self.contains(id) && self.used.insert(id)
    }

    /// Frees `id`; freeing a free id does nothing.
    pub fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }

    /// Continues the next-fit search after `id` (used after restoring ids, so new ones follow
    /// the restored ones).
    pub fn resume_after(&mut self, id: u32) {
        if self.contains(id) {
            self.next = if id >= self.last { self.first } else { id + 1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_wraps_and_reuses_freed_ids_last() {
        let mut pool = IdPool::new(1..=3);
        assert_eq!(pool.allocate(), Some(1));
        assert_eq!(pool.allocate(), Some(2));
        pool.release(1);
        assert_eq!(pool.allocate(), Some(3));
        assert_eq!(pool.allocate(), Some(1));
        assert_eq!(pool.allocate(), None);
        assert_eq!(pool.free(), 0);
        assert!(!pool.take(2));
        pool.release(2);
        assert!(pool.take(2));
        assert!(!pool.take(0) && !pool.take(4));
    }

    #[test]
    fn an_empty_range_is_always_exhausted() {
        #[allow(clippy::reversed_empty_ranges)]
        let mut pool = IdPool::new(5..=4);
        assert_eq!(pool.free(), 0);
        assert_eq!(pool.allocate(), None);
    }
}
