//! The agent's kvstore lease: one lease per agent carries every key it publishes (its node
//! record, its ipcache entries, its identity slave keys), so that the keys of an agent that
//! dies vanish when the lease runs out (upstream `--kvstore-lease-ttl`, 15 minutes).
//!
//! [`LeaseKeeper`] renews the lease at a third of its TTL. A renewal that fails because the
//! kvstore is unreachable is retried and changes nothing else: the keys and the datapath state
//! derived from them stay as they are. A renewal that finds the lease gone (a partition longer
//! than the TTL, a restored etcd backup, a revoked lease) takes a new lease and publishes it on
//! a [`tokio::sync::watch`] channel; every publisher then writes its keys again under the new
//! lease. Time comes from tokio, so a paused runtime (tests, the simulation) drives it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Backend, LeaseId};
use crate::error::Error;

/// Upstream's default `--kvstore-lease-ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// Delay between attempts to take a replacement lease while the kvstore does not answer.
const REGRANT_RETRY: Duration = Duration::from_secs(1);

/// Keeps one lease alive and replaces it when it is lost. Dropping the keeper stops the
/// renewals (the lease then expires on its own); [`LeaseKeeper::revoke`] ends it at once.
#[derive(Debug)]
pub struct LeaseKeeper {
    backend: Arc<dyn Backend>,
    current: watch::Receiver<LeaseId>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Takes a lease of `ttl` and starts renewing it. Must run inside a tokio runtime.
    pub async fn start(backend: Arc<dyn Backend>, ttl: Duration) -> Result<Self, Error> {
        let lease = backend.grant_lease(ttl).await?;
        let (tx, current) = watch::channel(lease);
        let task = tokio::spawn(renew(Arc::clone(&backend), ttl, tx));
        Ok(LeaseKeeper {
            backend,
            current,
            task,
        })
    }

    /// The lease keys should be written with now.
    pub fn lease(&self) -> LeaseId {
        *self.current.borrow()
    }

    /// A receiver that sees every replacement lease; `changed()` fires once per replacement.
    pub fn subscribe(&self) -> watch::Receiver<LeaseId> {
        let mut rx = self.current.clone();
        rx.mark_unchanged();
        rx
    }

    /// Stops renewing and revokes the lease, deleting every key attached to it (a clean
    /// shutdown of a node that leaves the cluster; a restarting agent just drops the keeper).
    pub async fn revoke(self) -> Result<(), Error> {
        self.task.abort();
        let lease = *self.current.borrow();
        self.backend.revoke_lease(lease).await
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn renew(backend: Arc<dyn Backend>, ttl: Duration, tx: watch::Sender<LeaseId>) {
    let period = ttl / 3;
    loop {
        tokio::time::sleep(period).await;
        let lease = *tx.borrow();
        match backend.keep_alive(lease).await {
            Ok(_) => continue,
            Err(Error::LeaseNotFound(_)) => {
                tracing::warn!(%lease, "kvstore lease lost; taking a new one and republishing");
            }
            Err(error) => {
                // Unreachable kvstore: keep everything as it is and try again next period.
                tracing::warn!(%lease, %error, "kvstore lease renewal failed; retrying");
                continue;
            }
        }
        loop {
            match backend.grant_lease(ttl).await {
                Ok(new_lease) => {
                    tracing::info!(old = %lease, new = %new_lease, "kvstore lease replaced");
                    if tx.send(new_lease).is_err() {
                        return;
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot take a new kvstore lease; retrying");
                    tokio::time::sleep(REGRANT_RETRY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::memory::{MemoryBackend, MemoryStore};

    fn store() -> (MemoryStore, Arc<MemoryBackend>) {
        let store = MemoryStore::new(Arc::new(TokioClock::new()));
        let client = Arc::new(store.client());
        (store, client)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_so_keys_outlive_the_ttl() {
        let (_store, mem) = store();
        let keeper = LeaseKeeper::start(mem.clone(), Duration::from_secs(9))
            .await
            .unwrap();
        mem.put("k", b"v".to_vec(), Some(keeper.lease()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(mem.get("k").await.unwrap().is_some(), "lease kept alive");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_replaced_and_announced() {
        let (_store, mem) = store();
        let keeper = LeaseKeeper::start(mem.clone(), Duration::from_secs(9))
            .await
            .unwrap();
        let first = keeper.lease();
        let mut changes = keeper.subscribe();
        mem.revoke_lease(first).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("replacement announced within one period")
            .unwrap();
        let second = *changes.borrow_and_update();
        assert_ne!(second, first);
        assert_eq!(keeper.lease(), second);
        mem.put("k", b"v".to_vec(), Some(second)).await.unwrap();
        keeper.revoke().await.unwrap();
        assert!(mem.get("k").await.unwrap().is_none(), "revoke deletes keys");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_shorter_than_the_ttl_keeps_the_lease() {
        let (store, mem) = store();
        let keeper = LeaseKeeper::start(mem.clone(), Duration::from_secs(9))
            .await
            .unwrap();
        let first = keeper.lease();
        let changes = keeper.subscribe();
        mem.put("k", b"v".to_vec(), Some(first)).await.unwrap();
        store.set_unavailable(true);
        tokio::time::sleep(Duration::from_secs(4)).await;
        store.set_unavailable(false);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(keeper.lease(), first);
        assert!(!changes.has_changed().unwrap());
        assert!(mem.get("k").await.unwrap().is_some());
    }
}
