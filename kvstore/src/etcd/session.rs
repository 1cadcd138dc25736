//! Distributed locks through etcd's lock service (`v3lock`), held with a per-client lock
//! session.
//!
//! Like upstream Cilium's lock session, every client owns one lease (TTL 25 s) that a background
//! task keeps alive; each lock is attached to it, so the locks of a client that dies are released
//! when that lease expires. The session is granted on first use and replaced when etcd reports
//! it gone. etcd treats two `Lock` calls with the same lease as one acquisition, so
//! acquisitions of the same name by tasks sharing this client are serialised locally first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use etcd_client::{LeaseClient, LockClient, LockOptions};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use crate::backend::{LeaseId, LockKey};
use crate::error::Error;

use super::{is_lease_not_found, keep_alive_once, map_error, with_timeout};

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
    pub(crate) async fn lock(&self, client: LockClient, name: &str) -> Result<LockKey, Error> {
        let local = {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            local.entry(name.to_owned()).or_default().clone()
        };
        let guard = local.lock_owned().await;
        match self.acquire(client, name).await {
            Ok(key) => {
                self.held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.clone(), guard);
                Ok(LockKey {
                    name: name.to_owned(),
                    key,
                })
            }
            Err(error) => {
                drop(guard);
                self.forget_local(name);
                Err(error)
            }
        }
    }

    /// Releases a lock: deletes its ownership key in etcd and lets the next local waiter in.
    ///
    /// If etcd does not confirm the delete (a timeout under load, a connection reset), the
    /// key may still exist, kept alive by this client's session: every other client would
    /// wait for it forever. So the delete is retried in the background, with backoff, until
    /// etcd confirms it or the session lease is gone; the local guard is held until then so
    /// that a task of this client cannot re-acquire the name under the same lease only to
    /// lose it to the retried delete. The error is still returned for the caller to log.
    pub(crate) async fn unlock(
        self: &Arc<Self>,
        mut client: LockClient,
        lock: LockKey,
    ) -> Result<(), Error> {
        let result = with_timeout("unlock", self.timeout, client.unlock(lock.key.clone())).await;
        let guard = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&lock.key);
        match result {
            Ok(_) => {
                drop(guard);
                self.forget_local(&lock.name);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(key = %lock.key, %error, "unlock not confirmed; retrying in the background");
                let sessions = Arc::clone(self);
                tokio::spawn(async move {
                    sessions.retry_unlock(client, &lock.key).await;
                    drop(guard);
                    sessions.forget_local(&lock.name);
                });
                Err(error)
            }
        }
    }

    /// Deletes a lock's ownership key until etcd confirms it (a missing key or lease counts).
    async fn retry_unlock(&self, client: LockClient, key: &str) {
        let mut delay = UNLOCK_RETRY_MIN;
        loop {
            tokio::time::sleep(delay).await;
            let mut client = client.clone();
            match with_timeout("unlock", self.timeout, client.unlock(key.to_owned())).await {
                Ok(_) => {
                    tracing::info!(key, "lock released after retrying");
                    return;
                }
                Err(Error::LeaseNotFound(_)) => return,
                Err(error) => {
                    tracing::warn!(key, %error, "unlock still not confirmed; retrying");
                    delay = (delay * 2).min(UNLOCK_RETRY_MAX);
                }
            }
        }
    }

    async fn acquire(&self, client: LockClient, name: &str) -> Result<String, Error> {
        let mut renewed = false;
        loop {
            let lease = self.session().await?;
            let mut client = client.clone();
            // No request timeout: waiting for the current holder is the point. The caller bounds
            // the wait; dropping this future cancels the request and etcd withdraws the waiter.
            match client
                .lock(name, Some(LockOptions::new().with_lease(lease.0)))
                .await
            {
                Ok(response) => {
                    return String::from_utf8(response.key().to_vec()).map_err(|_| {
                        Error::Backend {
                            op: "lock",
                            message: "etcd returned a lock key that is not UTF-8".to_owned(),
                        }
                    });
                }
                Err(error) if is_lease_not_found(&error) && !renewed => {
                    tracing::info!(lease = %lease, "lock session lease is gone; granting a new one");
                    self.invalidate(lease).await;
                    renewed = true;
                }
                Err(error) => return Err(map_error("lock", error)),
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
