//! The flow ring buffer: the most recent events of this node, for `GetFlows`.
//!
//! One writer (the datapath event reader) appends; any number of readers either take a
//! [`Snapshot`] of what is stored (for `number`/`first`/`since`/`until`) or [`Follower`]s that
//! get new entries as they arrive (for `follow`). Every entry gets a sequence number, counting
//! from 0 and never reused, so a reader always knows where it stands.
//!
//! The invariant that matters: the writer never waits for a reader. A reader holds the lock only
//! to copy `Arc`s, never across an `.await` and never while a client is slow; a follower that
//! falls more than the capacity behind does not hold entries back but finds them overwritten and
//! gets [`Next::Lost`] with how many it missed (upstream's `HUBBLE_RING_BUFFER` lost event),
//! instead of an unbounded queue somewhere.
//!
//! The capacity is upstream's: one less than a power of two (`--hubble-event-buffer-capacity`,
//! default 4095, at most 65535).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Notify;

/// The largest capacity upstream accepts (`2^16 - 1`).
pub const MAX_CAPACITY: usize = 65_535;

/// A ring capacity: `2^n - 1` entries, `1 <= n <= 16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capacity(usize);

impl Capacity {
    /// Upstream's default, 4095 flows.
    pub const DEFAULT: Capacity = Capacity(4095);

    /// Checks that `value` is one less than a power of two and at most [`MAX_CAPACITY`].
    pub fn new(value: usize) -> Result<Capacity, CapacityError> {
        let valid = (1..=MAX_CAPACITY).contains(&value) && (value & (value + 1)) == 0;
        if valid {
            Ok(Capacity(value))
        } else {
            Err(CapacityError::Invalid { value })
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity::DEFAULT
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Capacity {
    type Err = CapacityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let value = input
            .trim()
            .parse::<usize>()
            .map_err(|_| CapacityError::NotANumber {
                input: input.to_owned(),
            })?;
        Capacity::new(value)
    }
}

/// A capacity that upstream would refuse too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error(
        "invalid ring buffer capacity {value}: it must be one less than a power of two \
         (1, 3, 7, ..., 4095, ..., 65535)"
    )]
    Invalid { value: usize },
    #[error("invalid ring buffer capacity {input:?}: not a number")]
    NotANumber { input: String },
}

/// What is stored: the entries and the sequence number the next write gets.
#[derive(Debug)]
struct Inner<T> {
    entries: VecDeque<Arc<T>>,
    next_seq: u64,
}

impl<T> Inner<T> {
    /// Sequence number of the oldest stored entry (== `next_seq` when empty).
    fn oldest_seq(&self) -> u64 {
        self.next_seq - self.entries.len() as u64
    }
}

/// A bounded buffer of the most recent entries with sequence numbers.
#[derive(Debug)]
pub struct Ring<T> {
    capacity: Capacity,
    inner: RwLock<Inner<T>>,
    /// Wakes followers waiting for the next write.
    written: Notify,
}

impl<T> Ring<T> {
    pub fn new(capacity: Capacity) -> Ring<T> {
        Ring {
            capacity,
            inner: RwLock::new(Inner {
                entries: VecDeque::with_capacity(capacity.get()),
                next_seq: 0,
            }),
            written: Notify::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// How many entries are stored now.
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries were ever written: the sequence number of the next write.
    pub fn written(&self) -> u64 {
        self.read().next_seq
    }

    /// Appends `entry`, overwriting the oldest when full, and returns its sequence number.
    pub fn push(&self, entry: Arc<T>) -> u64 {
        let seq = {
            let mut inner = self.write();
            Self::append(&mut inner, self.capacity.get(), entry)
        };
        self.written.notify_waiters();
        seq
    }

    /// Appends every entry under one lock and wakes followers once (the reader's batches).
    /// Returns the sequence number the next write gets.
    pub fn extend(&self, entries: impl IntoIterator<Item = Arc<T>>) -> u64 {
        let next = {
            let mut inner = self.write();
            for entry in entries {
                Self::append(&mut inner, self.capacity.get(), entry);
            }
            inner.next_seq
        };
        self.written.notify_waiters();
        next
    }

    fn append(inner: &mut Inner<T>, capacity: usize, entry: Arc<T>) -> u64 {
        if inner.entries.len() >= capacity {
            inner.entries.pop_front();
        }
        inner.entries.push_back(entry);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        seq
    }

    /// Every stored entry, oldest first, as of now.
    pub fn snapshot(&self) -> Snapshot<T> {
        let inner = self.read();
        Snapshot {
            first_seq: inner.oldest_seq(),
            entries: inner.entries.iter().cloned().collect(),
        }
    }

    /// A follower that starts at sequence number `seq` (clamped to what has been written):
    /// `seq` older than the oldest stored entry is reported as lost on the first read.
    pub fn follow_from(self: &Arc<Self>, seq: u64) -> Follower<T> {
        let next = seq.min(self.written());
        Follower {
            ring: Arc::clone(self),
            next,
        }
    }

    /// A follower that gets only entries written from now on.
    pub fn follow_new(self: &Arc<Self>) -> Follower<T> {
        let next = self.written();
        Follower {
            ring: Arc::clone(self),
            next,
        }
    }

    // Poisoning cannot leave the ring inconsistent (no code under the lock panics half-way),
    // so a poisoned lock is used as is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<T>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<T>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The ring's entries at one instant, oldest first.
#[derive(Debug)]
pub struct Snapshot<T> {
    first_seq: u64,
    entries: Vec<Arc<T>>,
}

impl<T> Snapshot<T> {
    /// Sequence number of the first entry.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number just past the last entry: where a follower continues.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    pub fn entries(&self) -> &[Arc<T>] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(sequence number, entry)`, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &Arc<T>)> + '_ {
        let first = self.first_seq;
        self.entries
            .iter()
            .enumerate()
            .map(move |(i, entry)| (first + i as u64, entry))
    }

    /// The oldest `n` entries (all when `n` is larger).
    pub fn first(&self, n: usize) -> &[Arc<T>] {
        &self.entries[..n.min(self.entries.len())]
    }

    /// The newest `n` entries, oldest first (all when `n` is larger).
    pub fn last(&self, n: usize) -> &[Arc<T>] {
        let start = self.entries.len().saturating_sub(n);
        &self.entries[start..]
    }
}

/// What a follower reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next<T> {
    Entry {
        seq: u64,
        entry: Arc<T>,
    },
    /// The writer overwrote `count` entries this follower had not read yet.
    Lost {
        count: u64,
    },
}

/// Reads entries as they are written, in order; never holds the writer back.
#[derive(Debug)]
pub struct Follower<T> {
    ring: Arc<Ring<T>>,
    next: u64,
}

impl<T> Follower<T> {
    /// Sequence number of the entry this follower reads next.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next entry, a loss report, or `None` when the follower has read everything written.
    pub fn try_next(&mut self) -> Option<Next<T>> {
        let inner = self.ring.read();
        let oldest = inner.oldest_seq();
        if self.next < oldest {
            let count = oldest - self.next;
            self.next = oldest;
            return Some(Next::Lost { count });
        }
        let index = usize::try_from(self.next - oldest).ok()?;
        let entry = Arc::clone(inner.entries.get(index)?);
        let seq = self.next;
        self.next += 1;
        Some(Next::Entry { seq, entry })
    }

    /// Waits for the next entry or loss report.
    pub async fn next(&mut self) -> Next<T> {
        let ring = Arc::clone(&self.ring);
        loop {
            // Registered before looking, so a write between the look and the wait still wakes.
            let notified = ring.written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(next) = self.try_next() {
                return next;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(capacity: usize) -> Arc<Ring<u64>> {
        Arc::new(Ring::new(Capacity::new(capacity).unwrap()))
    }

    fn values(entries: &[Arc<u64>]) -> Vec<u64> {
        entries.iter().map(|e| **e).collect()
    }

    #[test]
    fn capacity_must_be_a_power_of_two_minus_one() {
        for ok in [1, 3, 7, 15, 4095, 65_535] {
            assert_eq!(Capacity::new(ok).unwrap().get(), ok);
        }
        for bad in [0, 2, 4, 4096, 5000, 65_536, 131_071] {
            assert_eq!(
                Capacity::new(bad),
                Err(CapacityError::Invalid { value: bad })
            );
        }
        assert_eq!("4095".parse::<Capacity>(), Ok(Capacity::DEFAULT));
        assert!(matches!(
            "many".parse::<Capacity>(),
            Err(CapacityError::NotANumber { .. })
        ));
        assert_eq!(Capacity::default().get(), 4095);
    }

    #[test]
    fn wraps_around_keeping_the_newest() {
        let ring = ring(7);
        for i in 0..20 {
            assert_eq!(ring.push(Arc::new(i)), i);
        }
        assert_eq!(ring.len(), 7);
        assert_eq!(ring.written(), 20);
        let snap = ring.snapshot();
        assert_eq!(snap.first_seq(), 13);
        assert_eq!(snap.end_seq(), 20);
        assert_eq!(values(snap.entries()), (13..20).collect::<Vec<_>>());
        // Sequence numbers line up with what was written.
        assert!(snap.iter().all(|(seq, v)| seq == **v));
    }

    #[test]
    fn first_and_last_n() {
        let ring = ring(15);
        assert!(ring.snapshot().first(3).is_empty());
        assert!(ring.snapshot().last(3).is_empty());
        ring.extend((0..10).map(Arc::new));
        let snap = ring.snapshot();
        assert_eq!(values(snap.first(3)), vec![0, 1, 2]);
        assert_eq!(values(snap.last(3)), vec![7, 8, 9]);
        assert_eq!(values(snap.last(100)), (0..10).collect::<Vec<_>>());
        assert_eq!(values(snap.first(100)), (0..10).collect::<Vec<_>>());
        // After a wrap-around "first" is the oldest still stored.
        ring.extend((10..30).map(Arc::new));
        let snap = ring.snapshot();
        assert_eq!(values(snap.first(2)), vec![15, 16]);
        assert_eq!(values(snap.last(2)), vec![28, 29]);
    }

    #[test]
    fn follower_reads_in_order_then_waits() {
        let ring = ring(7);
        ring.extend((0..3).map(Arc::new));
        let mut follower = ring.follow_from(1);
        assert_eq!(
            follower.try_next(),
            Some(Next::Entry {
                seq: 1,
                entry: Arc::new(1)
            })
        );
        assert!(matches!(
            follower.try_next(),
            Some(Next::Entry { seq: 2, .. })
        ));
        assert_eq!(follower.try_next(), None);
        ring.push(Arc::new(3));
        assert!(matches!(
            follower.try_next(),
            Some(Next::Entry { seq: 3, .. })
        ));
        // A new follower sees only what comes after it.
        let mut tail = ring.follow_new();
        assert_eq!(tail.try_next(), None);
        assert_eq!(tail.position(), 4);
    }

    #[test]
    fn lagging_follower_gets_lost_events() {
        let ring = ring(7);
        let mut follower = ring.follow_new();
        ring.extend((0..20).map(Arc::new));
        // 20 written, 7 kept: the 13 oldest are gone.
        assert_eq!(follower.try_next(), Some(Next::Lost { count: 13 }));
        let rest: Vec<u64> = std::iter::from_fn(|| follower.try_next())
            .map(|n| match n {
                Next::Entry { entry, .. } => *entry,
                Next::Lost { count } => panic!("lost {count} twice"),
            })
            .collect();
        assert_eq!(rest, (13..20).collect::<Vec<_>>());
    }

    #[test]
    fn follow_from_the_future_is_clamped() {
        let ring = ring(3);
        ring.push(Arc::new(0));
        let follower = ring.follow_from(100);
        assert_eq!(follower.position(), 1);
    }

    #[tokio::test]
    async fn follower_wakes_on_write() {
        let ring = ring(7);
        let mut follower = ring.follow_new();
        let writer = {
            let ring = Arc::clone(&ring);
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                ring.push(Arc::new(42));
            })
        };
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), follower.next())
            .await
            .expect("the follower was not woken");
        assert_eq!(
            next,
            Next::Entry {
                seq: 0,
                entry: Arc::new(42)
            }
        );
        writer.await.unwrap();
    }

    /// Readers run while a writer writes as fast as it can: every snapshot is a contiguous run
    /// of the right values, and a follower sees every value exactly once or counts it lost.
    #[test]
    fn readers_during_writes() {
        const TOTAL: u64 = 200_000;
        let ring = ring(63);
        let writer = {
            let ring = Arc::clone(&ring);
            std::thread::spawn(move || {
                for i in 0..TOTAL {
                    ring.push(Arc::new(i));
                }
            })
        };
        let snapshots = {
            let ring = Arc::clone(&ring);
            std::thread::spawn(move || {
                // At least one snapshot, however fast the writer is.
                loop {
                    let done = ring.written() >= TOTAL;
                    let snap = ring.snapshot();
                    assert!(snap.len() <= 63);
                    assert!(snap.iter().all(|(seq, v)| seq == **v));
                    if done {
                        break;
                    }
                }
            })
        };
        let mut follower = ring.follow_from(0);
        let (mut seen, mut lost, mut expected) = (0u64, 0u64, 0u64);
        while seen + lost < TOTAL {
            match follower.try_next() {
                Some(Next::Entry { seq, entry }) => {
                    assert_eq!(seq, expected);
                    assert_eq!(*entry, seq);
                    expected += 1;
                    seen += 1;
                }
                Some(Next::Lost { count }) => {
                    expected += count;
                    lost += count;
                }
                None => std::thread::yield_now(),
            }
        }
        writer.join().unwrap();
        snapshots.join().unwrap();
        assert_eq!(seen + lost, TOTAL);
        assert_eq!(follower.try_next(), None);
    }
}
