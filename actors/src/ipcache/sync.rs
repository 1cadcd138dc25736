//! The optional kvstore side of the ipcache: this node's `local` entries published under
//! `cilium/state/ip/v1/default/<prefix>` with the agent's lease, and other nodes' entries
//! consumed from there as `kvstore` claims.
//!
//! Writes go through a [`PublishQueue`]: at most one batch is in flight, later changes of a
//! key wait for the next batch (so writes of one key land in order), and failed writes are
//! retried with backoff unless a newer value for the key arrived meanwhile. The queue is pure;
//! the actor runs the batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kvstore::keys::{IPCACHE_PREFIX, IpCacheEntry, TypedStore};
use kvstore::{Backend, LeaseId};

/// How the ipcache talks to the kvstore.
#[derive(Debug, Clone)]
pub struct KvstoreSyncConfig {
    pub backend: Arc<dyn Backend>,
    /// The agent's lease (one per agent); published keys vanish with it.
    pub lease: LeaseId,
    /// Whether other nodes' entries are read back as `kvstore` claims.
    pub consume: bool,
}

/// A key's desired kvstore value: `Some` to write, `None` to delete.
pub type PendingWrite = (String, Option<IpCacheEntry>);

/// What to do after a batch finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextFlush {
    /// Nothing is pending.
    Idle,
    /// More is pending; start the next batch now.
    Now,
    /// Writes failed; try again after this delay.
    After(Duration),
}

const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Pending kvstore writes, coalesced per key.
#[derive(Debug, Default)]
pub struct PublishQueue {
    pending: BTreeMap<String, Option<IpCacheEntry>>,
    in_flight: bool,
    failures: u32,
    last_error: Option<String>,
}

impl PublishQueue {
    /// Records the latest desired value of `name`, replacing an older pending one.
    pub fn queue(&mut self, name: String, value: Option<IpCacheEntry>) {
        self.pending.insert(name, value);
    }

    /// Takes every pending write as the next batch, unless a batch is in flight.
    pub fn start(&mut self) -> Option<Vec<PendingWrite>> {
        if self.in_flight || self.pending.is_empty() {
            return None;
        }
        self.in_flight = true;
        Some(std::mem::take(&mut self.pending).into_iter().collect())
    }

    /// Ends the batch in flight. Failed writes go back to the queue unless the key got a newer
    /// value meanwhile.
    pub fn finish(&mut self, failed: Vec<PendingWrite>, error: Option<String>) -> NextFlush {
        self.in_flight = false;
        let any_failed = !failed.is_empty();
        for (name, value) in failed {
            self.pending.entry(name).or_insert(value);
        }
        if any_failed {
            self.failures = self.failures.saturating_add(1);
            self.last_error = error;
            let factor = 1u32 << self.failures.min(16).saturating_sub(1);
            return NextFlush::After((RETRY_BASE * factor).min(RETRY_MAX));
        }
        self.failures = 0;
        self.last_error = None;
        if self.pending.is_empty() {
            NextFlush::Idle
        } else {
            NextFlush::Now
        }
    }

    /// Key names waiting to be written (not counting a batch in flight).
    pub fn pending(&self) -> Vec<String> {
        self.pending.keys().cloned().collect()
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

/// The running kvstore sync of an ipcache actor.
#[derive(Debug)]
pub(super) struct KvstoreSync {
    pub(super) store: TypedStore<IpCacheEntry>,
    pub(super) lease: LeaseId,
    pub(super) consume: bool,
    pub(super) queue: PublishQueue,
}

impl KvstoreSync {
    pub(super) fn new(config: KvstoreSyncConfig) -> Self {
        KvstoreSync {
            store: TypedStore::new(config.backend, IPCACHE_PREFIX),
            lease: config.lease,
            consume: config.consume,
            queue: PublishQueue::default(),
        }
    }
}

/// Applies one batch in order; returns the writes that failed and the last error.
pub(super) async fn apply_batch(
    store: TypedStore<IpCacheEntry>,
    lease: LeaseId,
    batch: Vec<PendingWrite>,
) -> (Vec<PendingWrite>, Option<String>) {
    let mut failed = Vec::new();
    let mut last_error = None;
    for (name, value) in batch {
        let result = match &value {
            Some(entry) => store.upsert(entry, Some(lease)).await.map(drop),
            None => store.delete(&name).await.map(drop),
        };
        if let Err(err) = result {
            tracing::warn!(key = %store.key(&name), error = %err, "ipcache kvstore write failed");
            last_error = Some(err.to_string());
            failed.push((name, value));
        }
    }
    (failed, last_error)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use model::identity::NumericIdentity;

    use super::*;

    fn entry(n: u32) -> IpCacheEntry {
        IpCacheEntry::host(IpAddr::from([10, 0, 0, 1]), NumericIdentity::new(n), None)
    }

    #[test]
    fn one_batch_at_a_time_and_newer_values_win_over_failed_ones() {
        let mut queue = PublishQueue::default();
        queue.queue("a".into(), Some(entry(1)));
        queue.queue("a".into(), Some(entry(2)));
        queue.queue("b".into(), None);
        let batch = queue.start().unwrap();
        assert_eq!(batch, [("a".into(), Some(entry(2))), ("b".into(), None)]);
        assert!(queue.start().is_none(), "a batch is in flight");

        queue.queue("a".into(), Some(entry(3)));
        let next = queue.finish(
            vec![("a".into(), Some(entry(2))), ("b".into(), None)],
            Some("down".into()),
        );
        assert_eq!(next, NextFlush::After(RETRY_BASE));
        assert_eq!(queue.last_error(), Some("down"));
        // The newer value of `a` stays; the failed delete of `b` is retried.
        assert_eq!(
            queue.start().unwrap(),
            [("a".into(), Some(entry(3))), ("b".into(), None)]
        );
        let next = queue.finish(vec![("b".into(), None)], Some("down".into()));
        assert_eq!(next, NextFlush::After(RETRY_BASE * 2));
        queue.start().unwrap();
        assert_eq!(queue.finish(Vec::new(), None), NextFlush::Idle);
        assert_eq!(queue.last_error(), None);
        assert!(queue.pending().is_empty());
    }

    #[test]
    fn backoff_is_capped() {
        let mut queue = PublishQueue::default();
        let mut last = NextFlush::Idle;
        for _ in 0..20 {
            queue.queue("a".into(), None);
            let batch = queue.start().unwrap();
            last = queue.finish(batch, Some("down".into()));
        }
        assert_eq!(last, NextFlush::After(RETRY_MAX));
    }
}
