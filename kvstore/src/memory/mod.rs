//! The embedded in-memory backend: one [`MemoryStore`] shared by many [`MemoryBackend`] clients,
//! with etcd's semantics (revisions, prefix watches with a list-done marker, leases,
//! transactions, locks) so that code tested against it behaves the same against etcd.
//!
//! Time comes from an injected [`Clock`]; nothing in here sleeps or polls, so a simulation on
//! paused time stays deterministic. Lease expiry happens lazily on every operation, on
//! [`MemoryStore::expire_leases`], or from [`MemoryStore::spawn_reaper`] in production.
//!
//! Faults are injected at the store: [`MemoryStore::disconnect_watchers`] (a server restart as
//! watchers see it), [`MemoryStore::set_unavailable`] (an outage) and
//! [`MemoryStore::compact`]. Every operation passes one gate (the availability check under the
//! store lock) and every watch one registry, which is where later per-client partitions or
//! delays hook in.
//!
//! # Layout
//! - `state`: keys, revisions, leases and history as a pure state machine.
//! - `watch`: the watcher registry and the resumable watch stream.
//! - `lock`: etcd's mutex on top of the state, with per-client lock sessions.
//!
//! The state sits behind a `std::sync::Mutex`, not a tokio one: it is never held across an
//! await, and critical sections are short map operations.

mod lock;
mod state;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::backend::{
    Backend, BackendStatus, KeyValue, LeaseId, ListResult, LockKey, Revision, Txn, TxnOp,
    TxnResponse, WatchEvent, WatchFrom, WatchStream,
};
use crate::clock::Clock;
use crate::error::Error;
use state::State;
use watch::Watchers;

/// Tuning of a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// How many of the most recent revisions keep their events for watches that resume from a
    /// revision. Older history is dropped as if compacted.
    pub history_revisions: u64,
    /// TTL of each client's lock session lease (upstream's lock sessions use 25 s).
    pub lock_session_ttl: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            history_revisions: 100_000,
            lock_session_ttl: Duration::from_secs(25),
        }
    }
}

/// The store: keys, history and leases that every client of it sees. Cheap to clone.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    config: MemoryConfig,
    shared: Mutex<Shared>,
    /// Woken after every commit that deletes keys, which is what lock waiters wait for.
    deletions: Notify,
    /// `true` while the store answers; watch streams wait on it during an outage.
    available: tokio::sync::watch::Sender<bool>,
    last_client: AtomicU64,
}

/// Everything behind the store lock.
struct Shared {
    state: State,
    watchers: Watchers,
    unavailable: bool,
    /// Each live client's lock session lease.
    sessions: HashMap<u64, LeaseId>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves the maps consistent (every mutation is
        // validated before it starts), so a poisoned lock is still usable.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the lock for a client operation: fails during an outage, and expires due leases
    /// first so that the operation never sees a key whose lease has run out.
    fn begin(&self, op: &'static str) -> Result<MutexGuard<'_, Shared>, Error> {
        let mut shared = self.lock();
        if shared.unavailable {
            return Err(Error::Unavailable {
                op,
                message: "memory store is unavailable (fault injected)".to_owned(),
            });
        }
        self.expire_due(&mut shared);
        Ok(shared)
    }

    fn expire_due(&self, shared: &mut Shared) {
        let events = shared.state.expire(self.clock.now());
        self.publish(shared, &events);
    }

    /// Delivers committed events to watchers and wakes lock waiters if a key went away.
    fn publish(&self, shared: &mut Shared, events: &[WatchEvent]) {
        if events
            .iter()
            .any(|e| matches!(e, WatchEvent::Delete { .. }))
        {
            self.deletions.notify_waiters();
        }
        shared.watchers.broadcast(events);
    }
}

impl MemoryStore {
    /// An empty store with default tuning.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_config(clock, MemoryConfig::default())
    }

    pub fn with_config(clock: Arc<dyn Clock>, config: MemoryConfig) -> Self {
        let (available, _) = tokio::sync::watch::channel(true);
        MemoryStore {
            inner: Arc::new(Inner {
                clock,
                shared: Mutex::new(Shared {
                    state: State::new(config.history_revisions),
                    watchers: Watchers::default(),
                    unavailable: false,
                    sessions: HashMap::new(),
                }),
                config,
                deletions: Notify::new(),
                available,
                last_client: AtomicU64::new(0),
            }),
        }
    }

    /// A new client: its own connection with its own lock session, on this store's data.
    pub fn client(&self) -> MemoryBackend {
        let id = self.inner.last_client.fetch_add(1, Ordering::Relaxed) + 1;
        MemoryBackend {
            client: Arc::new(Client {
                id,
                inner: Arc::clone(&self.inner),
            }),
        }
    }

    /// The clock lease deadlines are measured with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The current store revision.
    pub fn revision(&self) -> Revision {
        self.inner.lock().state.revision()
    }

    /// Drops the event history up to and including `revision`, like etcd's compaction: a watch
    /// that needs it afterwards fails with [`Error::Compacted`] (or re-lists, in `List` mode).
    pub fn compact(&self, revision: Revision) -> Result<(), Error> {
        self.inner.lock().state.compact(revision)
    }

    /// Cuts every watch stream off, as a server restart does. Each stream then resumes on its
    /// own from the last revision it delivered, so its consumer sees no gap and no repeat.
    pub fn disconnect_watchers(&self) {
        self.inner.lock().watchers.disconnect_all();
    }

    /// Starts (`true`) or ends (`false`) an outage. During one, every operation fails with
    /// [`Error::Unavailable`], watch streams stall, and no lease expires; afterwards every
    /// lease gets a fresh TTL, as etcd's lessor extends leases when a new leader takes over.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut shared = self.inner.lock();
        if shared.unavailable == unavailable {
            return;
        }
        shared.unavailable = unavailable;
        if unavailable {
            shared.watchers.disconnect_all();
        } else {
            shared.state.refresh_leases(self.inner.clock.now());
        }
        tracing::debug!(unavailable, "memory store availability changed");
        self.inner.available.send_replace(!unavailable);
    }

    /// Expires every lease that is due by the clock now, deleting its keys (with Delete
    /// events). Does nothing during an outage.
    pub fn expire_leases(&self) {
        let mut shared = self.inner.lock();
        if !shared.unavailable {
            self.inner.expire_due(&mut shared);
        }
    }

    /// Expires leases every `interval` of tokio time, for production use where nothing else
    /// calls [`Self::expire_leases`]. The task ends once the store is dropped.
    pub fn spawn_reaper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else {
                    break;
                };
                MemoryStore { inner }.expire_leases();
            }
        })
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("clock", &self.inner.clock)
            .field("config", &self.inner.config)
            .field("revision", &self.revision())
            .finish()
    }
}

/// One client of a [`MemoryStore`]. Clones share the connection (and lock session); separate
/// [`MemoryStore::client`] calls are independent, like separate etcd clients.
#[derive(Clone)]
pub struct MemoryBackend {
    client: Arc<Client>,
}

struct Client {
    id: u64,
    inner: Arc<Inner>,
}

impl Drop for Client {
    /// A client that goes away stops keeping its lock session alive: its locks are released
    /// one session TTL later, as when an agent holding a lock dies.
    fn drop(&mut self) {
        let mut shared = self.inner.lock();
        if let Some(session) = shared.sessions.remove(&self.id) {
            shared.state.release(session, self.inner.clock.now());
        }
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("client", &self.client.id)
            .finish()
    }
}

impl MemoryBackend {
    fn inner(&self) -> &Arc<Inner> {
        &self.client.inner
    }

    fn commit_txn(&self, op: &'static str, txn: &Txn) -> Result<(TxnResponse, usize), Error> {
        let inner = self.inner();
        let mut shared = inner.begin(op)?;
        let (response, events) = shared.state.txn(txn)?;
        inner.publish(&mut shared, &events);
        Ok((response, events.len()))
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        Ok(self.inner().begin("get")?.state.get(key))
    }

    async fn list_prefix(&self, prefix: &str) -> Result<ListResult, Error> {
        Ok(self.inner().begin("list")?.state.list(prefix))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, Error> {
        let inner = self.inner();
        let mut shared = inner.begin("put")?;
        let (revision, events) = shared.state.put(key, value, lease)?;
        inner.publish(&mut shared, &events);
        Ok(revision)
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        let txn = Txn {
            success: vec![TxnOp::Delete {
                key: key.to_owned(),
            }],
            ..Txn::default()
        };
        Ok(self.commit_txn("delete", &txn)?.1 > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        let inner = self.inner();
        let mut shared = inner.begin("delete_prefix")?;
        let events = shared.state.delete_prefix(prefix)?;
        inner.publish(&mut shared, &events);
        Ok(events.len() as u64)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        Ok(self.commit_txn("txn", &txn)?.0)
    }

    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, Error> {
        let inner = self.inner();
        let mut shared = inner.begin("watch")?;
        Ok(watch::open(inner, &mut shared, prefix, from))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, Error> {
        let inner = self.inner();
        let mut shared = inner.begin("grant_lease")?;
        Ok(shared.state.grant(ttl, inner.clock.now()).0)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, Error> {
        let inner = self.inner();
        let mut shared = inner.begin("keep_alive")?;
        shared.state.keep_alive(lease, inner.clock.now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), Error> {
        let inner = self.inner();
        let mut shared = inner.begin("revoke_lease")?;
        let events = shared.state.revoke(lease)?;
        inner.publish(&mut shared, &events);
        Ok(())
    }

    async fn lock(&self, name: &str) -> Result<LockKey, Error> {
        lock::acquire(self, name).await
    }

    async fn unlock(&self, lock: LockKey) -> Result<(), Error> {
        let txn = Txn {
            success: vec![TxnOp::Delete { key: lock.key }],
            ..Txn::default()
        };
        self.commit_txn("unlock", &txn).map(|_| ())
    }

    async fn status(&self) -> Result<BackendStatus, Error> {
        let shared = self.inner().begin("status")?;
        Ok(BackendStatus {
            kind: "memory",
            endpoints: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: shared.state.revision(),
        })
    }
}
