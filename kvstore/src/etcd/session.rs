//! Distributed locks: etcd's mutex algorithm run on the client, as upstream Cilium does, held
//! with a per-client lock session. The keys are the ones etcd's `concurrency` package and its
//! lock service write (`<name>/<lease hex>`), so other etcd clients interoperate.
//!
//! Like upstream Cilium's lock session, every client owns one lease (TTL 25 s) that a background
//! task keeps alive; each lock is attached to it, so the locks of a client that dies are released
//! when that lease expires. The session is granted on first use and replaced when etcd reports
//! it gone. Two acquisitions with the same lease would share one key, so acquisitions of the
//! same name by tasks sharing this client are serialised locally first. An abandoned
//! acquisition withdraws its waiting key, and a release etcd does not confirm is retried, so a
//! lock key never outlives its use while the session lives on.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use etcd_client::LeaseClient;
use futures::StreamExt;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use crate::backend::{Backend, Compare, LeaseId, LockKey, Txn, TxnOp, WatchEvent, WatchFrom};
use crate::error::Error;

use super::{EtcdBackend, keep_alive_once, with_timeout};

/// TTL of the lock-session lease, as upstream (`LockLeaseTTL`).
pub const LOCK_SESSION_TTL: Duration = Duration::from_secs(25);

/// Delay before retrying a keep-alive that failed for a transient reason: short, so that a
/// brief etcd outage does not cost the session.
const KEEPALIVE_RETRY: Duration = Duration::from_secs(1);

/// Backoff bounds of an unlock that etcd did not confirm.
const UNLOCK_RETRY_MIN: Duration = Duration::from_millis(100);
const UNLOCK_RETRY_MAX: Duration = Duration::from_secs(5);

/// The lock state of one client (shared by its clones).
pub(crate) struct LockSessions {
    lease: LeaseClient,
    timeout: Duration,
    current: AsyncMutex<Option<Session>>,
    /// One local mutex per lock name with callers in flight.
    local: std::sync::Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Local guards of the locks this client holds, by ownership key.
    held: std::sync::Mutex<HashMap<String, OwnedMutexGuard<()>>>,
}

/// A live lock-session lease and the task that refreshes it (stopped when the session is
/// replaced or the client's last clone is dropped).
struct Session {
    lease: LeaseId,
    lost: Arc<AtomicBool>,
    keeper: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl LockSessions {
    pub(crate) fn new(lease: LeaseClient, timeout: Duration) -> Self {
        LockSessions {
            lease,
            timeout,
            current: AsyncMutex::new(None),
            local: std::sync::Mutex::new(HashMap::new()),
            held: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Acquires `name`, waiting for other holders (local tasks first, then other clients).
    pub(crate) async fn lock(
        self: &Arc<Self>,
        backend: &EtcdBackend,
        name: &str,
    ) -> Result<LockKey, Error> {
        let local = {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            local.entry(name.to_owned()).or_default().clone()
        };
        let guard = local.lock_owned().await;
        let mut waiter = Waiter {
            sessions: Arc::clone(self),
            backend: backend.clone(),
            name: name.to_owned(),
            key: None,
            guard: Some(guard),
        };
        let key = self.acquire(backend, name, &mut waiter).await?;
        // Acquired: the waiter must not withdraw the key any more.
        if let Some(guard) = waiter.disarm() {
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone(), guard);
        }
        Ok(LockKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Releases a lock: deletes its ownership key in etcd and lets the next local waiter in.
    pub(crate) async fn unlock(
        self: &Arc<Self>,
        backend: &EtcdBackend,
        lock: LockKey,
    ) -> Result<(), Error> {
        let guard = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&lock.key);
        self.release(backend.clone(), lock.name, lock.key, guard)
            .await
    }

    /// Deletes a lock key (held or waiting), then drops the local guard of its name.
    ///
    /// If etcd does not confirm the delete (a timeout under load, a connection reset), the
    /// key may still exist, kept alive by this client's session: every other client would
    /// wait for it forever. So the delete is retried in the background, with backoff, until
    /// etcd confirms it; the local guard is held until then so that a task of this client
    /// cannot re-acquire the name under the same lease only to lose it to the retried delete.
    /// The error is still returned for the caller to log.
    async fn release(
        self: &Arc<Self>,
        backend: EtcdBackend,
        name: String,
        key: String,
        guard: Option<OwnedMutexGuard<()>>,
    ) -> Result<(), Error> {
        match backend.delete(&key).await {
            Ok(_) => {
                drop(guard);
                self.forget_local(&name);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%key, %error, "lock release not confirmed; retrying in the background");
                let sessions = Arc::clone(self);
                tokio::spawn(async move {
                    retry_delete(&backend, &key).await;
                    drop(guard);
                    sessions.forget_local(&name);
                });
                Err(match error {
                    Error::Unavailable { message, .. } => Error::Unavailable {
                        op: "unlock",
                        message,
                    },
                    other => other,
                })
            }
        }
    }

    /// etcd's mutex algorithm, client side, as upstream Cilium runs it: write a waiting key
    /// `<name>/<lease hex>` on the lock session, then wait until no key under `<name>/` was
    /// created before it. The holder is the oldest key; releasing deletes it; a holder whose
    /// session dies loses its key with the lease. (etcd's own lock service runs the same
    /// algorithm on the server, but stalled here with many concurrent waiters.)
    async fn acquire(
        &self,
        backend: &EtcdBackend,
        name: &str,
        waiter: &mut Waiter,
    ) -> Result<String, Error> {
        let prefix = format!("{name}/");
        let mut renewed = false;
        let (key, my_revision) = loop {
            let lease = self.session().await?;
            let key = format!("{prefix}{lease}");
            // Recorded before the write, so that a cancelled acquisition withdraws the key.
            waiter.key = Some(key.clone());
            let created = backend
                .txn(Txn {
                    compares: vec![Compare::missing(key.clone())],
                    success: vec![TxnOp::Put {
                        key: key.clone(),
                        value: Vec::new(),
                        lease: Some(lease),
                    }],
                    failure: vec![],
                })
                .await;
            match created {
                // The key was written by this transaction, so it was created at its revision:
                // no read needed on the common path.
                Ok(response) if response.succeeded => break (key, response.revision),
                Ok(_) => {}
                Err(Error::LeaseNotFound(_)) if !renewed => {
                    tracing::info!(lease = %lease, "lock session lease is gone; granting a new one");
                    self.invalidate(lease).await;
                    renewed = true;
                    continue;
                }
                Err(error) => return Err(error),
            }
            // The key already existed (left by an earlier acquisition of this session).
            match backend.get(&key).await? {
                Some(kv) => break (key, kv.create_revision),
                // The lease expired between the write and the read.
                None if !renewed => {
                    self.invalidate(lease).await;
                    renewed = true;
                }
                None => return Err(Error::LeaseNotFound(lease)),
            }
        };
        let lost = || Error::Backend {
            op: "lock",
            message: format!("the lock session lost its key {key} while waiting"),
        };
        loop {
            let listing = backend.list_prefix(&prefix).await?;
            if !listing.kvs.iter().any(|kv| kv.key == key) {
                return Err(lost());
            }
            let mut earlier: BTreeSet<String> = listing
                .kvs
                .iter()
                .filter(|kv| kv.create_revision < my_revision)
                .map(|kv| kv.key.clone())
                .collect();
            if earlier.is_empty() {
                return Ok(key);
            }
            let mut events = match backend
                .watch(&prefix, WatchFrom::AfterRevision(listing.revision))
                .await
            {
                Ok(events) => events,
                Err(Error::Compacted { .. }) => continue,
                Err(error) => return Err(error),
            };
            while !earlier.is_empty() {
                match events.next().await {
                    Some(Ok(WatchEvent::Delete { key: gone, .. })) => {
                        if gone == key {
                            return Err(lost());
                        }
                        earlier.remove(&gone);
                    }
                    Some(Ok(_)) => {}
                    // History gone or the stream ended: list again and carry on.
                    Some(Err(Error::Compacted { .. })) | None => break,
                    Some(Err(error)) => return Err(error),
                }
            }
        }
    }

    /// The current session lease, granting a new one if there is none or it was lost.
    async fn session(&self) -> Result<LeaseId, Error> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref()
            && !session.lost.load(Ordering::Acquire)
        {
            return Ok(session.lease);
        }
        *current = None;
        let mut client = self.lease.clone();
        let ttl = i64::try_from(LOCK_SESSION_TTL.as_secs()).unwrap_or(i64::MAX);
        let response = with_timeout("lock", self.timeout, client.grant(ttl, None)).await?;
        let lease = LeaseId(response.id());
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_session_alive(
            self.lease.clone(),
            self.timeout,
            lease,
            lost.clone(),
        ));
        tracing::debug!(lease = %lease, "granted lock session lease");
        *current = Some(Session {
            lease,
            lost,
            keeper,
        });
        Ok(lease)
    }

    async fn invalidate(&self, lease: LeaseId) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|s| s.lease == lease) {
            *current = None;
        }
    }

    /// Drops the local mutex of `name` once nobody holds or waits for it.
    fn forget_local(&self, name: &str) {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if local.get(name).is_some_and(|m| Arc::strong_count(m) == 1) {
            local.remove(name);
        }
    }
}

async fn keep_session_alive(
    client: LeaseClient,
    timeout: Duration,
    lease: LeaseId,
    lost: Arc<AtomicBool>,
) {
    let mut delay = LOCK_SESSION_TTL / 3;
    loop {
        tokio::time::sleep(delay).await;
        match keep_alive_once(client.clone(), timeout, lease).await {
            Ok(_) => delay = LOCK_SESSION_TTL / 3,
            Err(Error::LeaseNotFound(_)) => {
                tracing::warn!(lease = %lease, "lock session lease expired; locks held with it are released");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(error) => {
                tracing::warn!(lease = %lease, %error, "cannot refresh lock session lease; retrying");
                delay = KEEPALIVE_RETRY;
            }
        }
    }
}

/// A lock acquisition in progress. If it is abandoned (an error, or the caller dropped the
/// future), its waiting key is withdrawn so that nobody waits for it, and only then is the
/// local guard of the name released.
struct Waiter {
    sessions: Arc<LockSessions>,
    backend: EtcdBackend,
    name: String,
    key: Option<String>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Waiter {
    /// The acquisition succeeded: keep the key, hand over the local guard.
    fn disarm(mut self) -> Option<OwnedMutexGuard<()>> {
        self.key = None;
        self.guard.take()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let guard = self.guard.take();
        let Some(key) = self.key.take() else {
            drop(guard);
            self.sessions.forget_local(&self.name);
            return;
        };
        let (sessions, backend, name) = (
            Arc::clone(&self.sessions),
            self.backend.clone(),
            self.name.clone(),
        );
        // Drop cannot wait; the delete runs on the runtime, holding the local guard.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = sessions.release(backend, name, key, guard).await;
            });
        }
    }
}

/// Deletes `key` until etcd confirms it.
async fn retry_delete(backend: &EtcdBackend, key: &str) {
    let mut delay = UNLOCK_RETRY_MIN;
    loop {
        tokio::time::sleep(delay).await;
        match backend.delete(key).await {
            Ok(_) => {
                tracing::info!(key, "lock key deleted after retrying");
                return;
            }
            Err(error) => {
                tracing::warn!(key, %error, "lock key delete still not confirmed; retrying");
                delay = (delay * 2).min(UNLOCK_RETRY_MAX);
            }
        }
    }
}
