//! Leader election: of all operators sharing a kvstore, only the holder of one distributed lock
//! acts.
//!
//! (ext) The lock is [`LEADER_LOCK_NAME`] (`cilium/operator/v1/leader`), taken with
//! [`kvstore::Backend::lock`]: its ownership key `cilium/operator/v1/leader/<lease hex>` hangs on
//! the holder's lock session lease, so when the leader dies the key vanishes with the lease and
//! the next waiting operator gets the lock. Upstream elects its operator with a Kubernetes
//! Lease object; without Kubernetes, the kvstore is the only shared thing.
//!
//! Holding the lock is not enough to act safely: a leader cut off from the store, or paused
//! for longer than the session TTL, still believes it leads. So every write of a leader is
//! fenced: a transaction that also requires the ownership key to exist (`Leadership::fenced`).
//! Once the key is gone no write of the old leader lands, whatever it believes.

use std::convert::Infallible;
use std::sync::Arc;

use futures::StreamExt;
use kvstore::{Backend, Compare, LockKey, Txn, TxnOp, WatchEvent, WatchFrom};

use crate::error::OperatorError;

/// (ext) The name of the operators' leader lock.
pub const LEADER_LOCK_NAME: &str = "cilium/operator/v1/leader";

/// Proof of holding the leader lock, and the fence for writes made under it.
#[derive(Debug, Clone)]
pub struct Leadership {
    backend: Arc<dyn Backend>,
    lock: LockKey,
}

impl Leadership {
    pub(crate) fn new(backend: Arc<dyn Backend>, lock: LockKey) -> Self {
        Leadership { backend, lock }
    }

    /// The ownership key whose existence means this operator leads.
    pub fn lock_key(&self) -> &str {
        &self.lock.key
    }

    pub(crate) fn lock(&self) -> &LockKey {
        &self.lock
    }

    fn lost(&self) -> OperatorError {
        OperatorError::LeadershipLost {
            key: self.lock.key.clone(),
        }
    }

    /// Applies `ops` atomically if this operator still leads and every one of `compares` holds.
    /// `Ok(true)`: applied; `Ok(false)`: a compare failed while leadership held;
    /// [`OperatorError::LeadershipLost`]: the lock key is gone and nothing was written.
    pub(crate) async fn fenced(
        &self,
        op: &'static str,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, OperatorError> {
        let mut all = Vec::with_capacity(compares.len() + 1);
        all.push(Compare::exists(self.lock.key.clone()));
        all.extend(compares);
        let response = self
            .backend
            .txn(Txn {
                compares: all,
                success: ops,
                failure: vec![],
            })
            .await
            .map_err(OperatorError::kvstore(op))?;
        if response.succeeded {
            return Ok(true);
        }
        self.ensure().await?;
        Ok(false)
    }

    /// Fails with [`OperatorError::LeadershipLost`] unless the lock key exists now.
    pub(crate) async fn ensure(&self) -> Result<(), OperatorError> {
        match self.backend.get(&self.lock.key).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(self.lost()),
            Err(source) => Err(OperatorError::Kvstore {
                op: "get leader lock",
                source,
            }),
        }
    }

    /// Returns once the lock key is gone (the session lease expired or someone deleted it),
    /// or the watch on it failed: in both cases this operator must stop acting.
    pub(crate) async fn watch_until_lost(&self) -> Result<Infallible, OperatorError> {
        let key = &self.lock.key;
        // A prefix watch also reports longer keys; only the exact key matters.
        let mut events = self
            .backend
            .watch(key, WatchFrom::List)
            .await
            .map_err(OperatorError::kvstore("watch leader lock"))?;
        let mut held = false;
        while let Some(event) = events.next().await {
            match event.map_err(OperatorError::kvstore("watch leader lock"))? {
                WatchEvent::Create(kv) | WatchEvent::Modify(kv) if kv.key == *key => held = true,
                WatchEvent::Delete { key: deleted, .. } if deleted == *key => {
                    return Err(self.lost());
                }
                WatchEvent::ListDone { .. } if !held => return Err(self.lost()),
                _ => {}
            }
        }
        Err(OperatorError::WatchEnded {
            prefix: key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use kvstore::clock::ManualClock;
    use kvstore::memory::MemoryStore;

    use super::*;

    fn put(key: &str) -> Vec<TxnOp> {
        vec![TxnOp::Put {
            key: key.to_owned(),
            value: b"v".to_vec(),
            lease: None,
        }]
    }

    #[tokio::test]
    async fn writes_are_fenced_on_the_lock_key() {
        let store = MemoryStore::new(Arc::new(ManualClock::new()));
        let backend: Arc<dyn Backend> = Arc::new(store.client());
        let admin = store.client();
        let lock = backend.lock(LEADER_LOCK_NAME).await.unwrap();
        assert!(lock.key.starts_with("cilium/operator/v1/leader/"));
        let leadership = Leadership::new(Arc::clone(&backend), lock);

        assert!(leadership.fenced("test", vec![], put("k1")).await.unwrap());
        // A failed compare with the lock held is not a lost leadership.
        assert!(
            !leadership
                .fenced("test", vec![Compare::missing("k1")], put("k1"))
                .await
                .unwrap()
        );
        leadership.ensure().await.unwrap();

        // The session lease expiring deletes the key; from then on nothing lands.
        admin.delete(leadership.lock_key()).await.unwrap();
        let err = leadership
            .fenced("test", vec![], put("k2"))
            .await
            .unwrap_err();
        assert!(matches!(err, OperatorError::LeadershipLost { .. }), "{err}");
        assert!(admin.get("k2").await.unwrap().is_none());
        assert!(matches!(
            leadership.watch_until_lost().await,
            Err(OperatorError::LeadershipLost { .. })
        ));
    }

    #[tokio::test]
    async fn watch_reports_the_lock_key_being_deleted() {
        let store = MemoryStore::new(Arc::new(ManualClock::new()));
        let backend: Arc<dyn Backend> = Arc::new(store.client());
        let admin = store.client();
        let lock = backend.lock(LEADER_LOCK_NAME).await.unwrap();
        let leadership = Leadership::new(Arc::clone(&backend), lock);
        let watching = tokio::spawn({
            let leadership = leadership.clone();
            async move { leadership.watch_until_lost().await }
        });
        // Unrelated keys below the lock name do not count.
        admin
            .put(&format!("{}0", leadership.lock_key()), b"x".to_vec(), None)
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert!(!watching.is_finished());
        admin.delete(leadership.lock_key()).await.unwrap();
        let ended = watching.await.unwrap();
        assert!(matches!(ended, Err(OperatorError::LeadershipLost { .. })));
    }
}
