//! Distributed locks with etcd's mutex semantics.
//!
//! A lock `name` is held by whoever owns the key under `<name>/` with the lowest create
//! revision; each waiter writes `<name>/<session lease hex>` and waits until every key created
//! before its own is gone. Waiters are thus served in request order, and a holder that dies
//! releases the lock when its session lease expires. Waiting is a [`tokio::sync::Notify`]
//! woken by deletions, never a poll.

use std::sync::Arc;

use super::{Inner, MemoryBackend, Shared};
use crate::backend::{LeaseId, LockKey, Revision, Txn, TxnOp};
use crate::error::Error;

/// The calling client's lock session, created on first use or after the previous one expired
/// or was revoked. The session lease needs no keep-alive while the client lives.
fn session(backend: &MemoryBackend, shared: &mut Shared) -> LeaseId {
    let inner = backend.inner();
    let id = backend.client.id;
    if let Some(&lease) = shared.sessions.get(&id)
        && shared.state.has_lease(lease)
    {
        return lease;
    }
    let lease = shared
        .state
        .grant_attended(inner.config.lock_session_ttl, inner.clock.now());
    shared.sessions.insert(id, lease);
    lease
}

/// A waiter's ownership key. If the waiting future is dropped (a timeout, a cancelled task)
/// the key is deleted, or it would block every later waiter for as long as the session lives.
struct Waiter {
    inner: Arc<Inner>,
    key: String,
    create_revision: Revision,
    /// Whether dropping the waiter deletes the key: until the lock is acquired.
    armed: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut shared = self.inner.lock();
        let ours = shared
            .state
            .get(&self.key)
            .is_some_and(|kv| kv.create_revision == self.create_revision);
        if !ours {
            return;
        }
        let txn = Txn {
            success: vec![TxnOp::Delete {
                key: self.key.clone(),
            }],
            ..Default::default()
        };
        if let Ok((_, events)) = shared.state.txn(&txn) {
            self.inner.publish(&mut shared, &events);
        }
    }
}

pub(super) async fn acquire(backend: &MemoryBackend, name: &str) -> Result<LockKey, Error> {
    let inner = backend.inner();
    let prefix = format!("{name}/");
    // The ownership key is per session, so two tasks of one client asking for the same lock
    // would share it: the second waits until the first has released it, the way upstream
    // serialises lock paths inside one process before asking etcd.
    let (lease, mut waiter) = loop {
        let deleted = inner.deletions.notified();
        tokio::pin!(deleted);
        deleted.as_mut().enable();
        {
            let mut shared = inner.begin("lock")?;
            let lease = session(backend, &mut shared);
            let key = format!("{prefix}{lease}");
            if shared.state.get(&key).is_none() {
                let (revision, events) = shared.state.put(&key, Vec::new(), Some(lease))?;
                inner.publish(&mut shared, &events);
                let waiter = Waiter {
                    inner: Arc::clone(inner),
                    key,
                    create_revision: revision,
                    armed: true,
                };
                break (lease, waiter);
            }
        }
        deleted.await;
    };

    loop {
        // Registered before the check, so a deletion between the check and the await still
        // wakes this waiter.
        let deleted = inner.deletions.notified();
        tokio::pin!(deleted);
        deleted.as_mut().enable();
        {
            let shared = inner.begin("lock")?;
            let still_ours = shared
                .state
                .get(&waiter.key)
                .is_some_and(|kv| kv.create_revision == waiter.create_revision);
            if !still_ours {
                // The session was revoked or expired while waiting (etcd: session expired).
                return Err(Error::LeaseNotFound(lease));
            }
            let blocked = shared
                .state
                .list(&prefix)
                .kvs
                .iter()
                .any(|kv| kv.create_revision < waiter.create_revision);
            if !blocked {
                waiter.armed = false;
                return Ok(LockKey {
                    name: name.to_owned(),
                    key: waiter.key.clone(),
                });
            }
        }
        deleted.await;
    }
}
