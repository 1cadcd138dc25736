//! Identity allocation: mapping label sets to numeric identities, cluster-wide through the
//! kvstore ([`IdentityAllocator`], garbage-collected by [`fn@gc`]) and node-locally for
//! local-scope CIDR identities ([`LocalIdentityAllocator`]).
//!
//! The cluster-wide algorithm is upstream's (`pkg/allocator`, `pkg/kvstore/allocator`), on the
//! key layout of [`crate::keys`]:
//! - a master key `id/<n>` = label string says identity `n` belongs to those labels; it is
//!   created once (create-only), never leased, and removed only by [`fn@gc`];
//! - a slave key `value/<labels>/<node IP>` = `n`, attached to the node's lease, says the node
//!   uses it; an identity whose master has no slave key left is garbage;
//! - allocation and garbage collection of one label set are serialised by the distributed lock
//!   `locks/<labels>`; under it the allocator reuses the id of an existing master key (found in
//!   its watched cache of master keys or through other nodes' slave keys) or creates a new one
//!   at a random free id of the cluster's range, then writes its slave key only if the master
//!   still exists.
//!
//! Each node counts its own references per label set, so only the first use of a label set on
//! a node touches the kvstore, and only the last release deletes the slave key.
//!
//! # Invariants
//! - A label set has at most one identity among the masters this allocator created; ids
//!   picked here lie in `ClusterId::identity_range`.
//! - While a node holds a reference, its master key exists: the master watch re-creates a
//!   vanished master, and [`IdentityAllocator::resync`] rewrites slave (and missing master)
//!   keys after the node's lease was lost.
//! - The allocator never holds its state mutex across an await.

mod cache;
mod gc;
mod local;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use model::identity::{ClusterId, NumericIdentity};
use model::labels::Labels;
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use crate::backend::{
    Backend, BackendExt, CmpOp, Compare, CompareTarget, LeaseId, LockKey, Revision, Txn, TxnOp,
    WatchEvent, WatchFrom, WatchStream,
};
use crate::error::Error;
use crate::keys::{
    IDENTITY_ID_PREFIX, identity_lock_key, identity_master_key, identity_slave_key,
    identity_slave_prefix, is_slave_key_of, parse_identity_master_key,
};
use cache::State;

pub use gc::{CorruptMasterKey, GcReport, gc};
pub use local::LocalIdentityAllocator;

/// How often the allocator retries when the master key it is about to reference keeps
/// vanishing between its writes (each retry re-creates it).
const MAX_REUSE_ATTEMPTS: u32 = 3;

/// How long the master watch waits before re-listing after the backend ended its stream.
const WATCH_RETRY_DELAY: Duration = Duration::from_secs(1);

/// An id to reference for known labels, from a listing of their slave keys at `revision`.
#[derive(Debug, Clone, Copy)]
struct ReferenceHint {
    id: NumericIdentity,
    revision: Revision,
}

/// The first and the longest pause between attempts to release an identity lock whose
/// release failed.
const UNLOCK_RETRY_FIRST: Duration = Duration::from_millis(200);
const UNLOCK_RETRY_MAX: Duration = Duration::from_secs(10);

/// The outcome of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub id: NumericIdentity,
    /// Whether this call created the identity in the cluster (a new master key), as opposed to
    /// reusing one that existed (locally or in the kvstore).
    pub is_new: bool,
}

/// Everything that can go wrong allocating or releasing identities.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// The kvstore failed; the allocation did not happen and may be retried.
    #[error("kvstore error during identity allocation: {0}")]
    Kvstore(#[from] Error),

    /// Every id of the cluster's range is taken by a master key.
    #[error("identity range {first}..={last} of cluster {cluster_id} is exhausted")]
    RangeExhausted {
        cluster_id: ClusterId,
        first: NumericIdentity,
        last: NumericIdentity,
    },

    /// Every local-scope identity is in use on this node.
    #[error("local-scope identity range {first}..={last} is exhausted")]
    LocalRangeExhausted {
        first: NumericIdentity,
        last: NumericIdentity,
    },

    /// A master key holds something else than the label string this node holds its id for.
    #[error("master key {key:?} is corrupt: {message}")]
    CorruptMasterKey { key: String, message: String },

    /// The master key kept vanishing while the allocator tried to reference it.
    #[error("master key {key:?} vanished {attempts} times while allocating it")]
    MasterKeyUnstable { key: String, attempts: u32 },

    /// Release of labels this allocator holds no reference to.
    #[error("labels {labels:?} hold no identity on this node")]
    NotAllocated { labels: String },
}

/// The cluster-wide identity allocator of one node. Cheap to share behind an `Arc`; every
/// method takes `&self` and may run concurrently with the others.
pub struct IdentityAllocator {
    shared: Arc<Shared>,
    watch: JoinHandle<()>,
}

struct Shared {
    backend: Arc<dyn Backend>,
    cluster_id: ClusterId,
    node_suffix: String,
    state: Mutex<State>,
    /// Serialises this node's operations per label string: concurrent calls for the same
    /// labels would otherwise share one lock session and so both "hold" the kvstore lock.
    local_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for IdentityAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityAllocator")
            .field("cluster_id", &self.shared.cluster_id)
            .field("node_suffix", &self.shared.node_suffix)
            .finish_non_exhaustive()
    }
}

impl Drop for IdentityAllocator {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl IdentityAllocator {
    /// Starts an allocator for `cluster_id` on the node whose slave keys end in `node_suffix`
    /// (its IP), writing slave keys with `lease`. Returns once the master keys of the cluster
    /// are listed, so that the first allocation already sees them. `rng_seed` drives the
    /// choice of new ids, which keeps simulations reproducible.
    pub async fn new(
        backend: Arc<dyn Backend>,
        cluster_id: ClusterId,
        node_suffix: String,
        lease: LeaseId,
        rng_seed: u64,
    ) -> Result<Self, AllocatorError> {
        let shared = Arc::new(Shared {
            backend,
            cluster_id,
            node_suffix,
            state: Mutex::new(State::new(lease, rng_seed)),
            local_locks: Mutex::new(HashMap::new()),
        });
        let events = shared.list_masters().await?;
        let watch = tokio::spawn(Arc::clone(&shared).watch_masters(events));
        Ok(IdentityAllocator { shared, watch })
    }

    /// Returns the identity of `labels`, allocating it cluster-wide on first use on this node,
    /// and takes one local reference to it.
    pub async fn allocate(&self, labels: &Labels) -> Result<Allocation, AllocatorError> {
        let key = labels.to_kvstore_string();
        let _local = self.shared.local_lock(&key).await;
        if let Some(held) = self.shared.state().held_mut(&key) {
            held.refs += 1;
            return Ok(Allocation {
                id: held.id,
                is_new: false,
            });
        }

        // Labels the cache knows are most often referenced by other nodes already: their
        // slave keys are listed before the lock, and under it one transaction references that
        // id if no slave key changed since. The lock is then held for that one request, so a
        // burst of nodes taking up the same labels does not queue on a listing each.
        let cached = self.shared.state().id_of(&key);
        let hint = match cached {
            Some(cached) => Some(self.reference_hint(&key, cached).await?),
            None => None,
        };
        let allocation = self
            .shared
            .with_lock(&key, self.locked_allocate(&key, hint))
            .await?;
        let mut state = self.shared.state();
        state.hold(key.clone(), allocation.id);
        state.upsert_master(allocation.id, key);
        Ok(allocation)
    }

    /// The id to reference for labels the cache knows as `cached`: the one live nodes'
    /// slave keys reference, if any, else `cached`; with the revision of that listing.
    async fn reference_hint(
        &self,
        key: &str,
        cached: NumericIdentity,
    ) -> Result<ReferenceHint, AllocatorError> {
        let (referenced, revision) = self.find_by_slave_keys(key).await?;
        Ok(ReferenceHint {
            id: referenced.unwrap_or(cached),
            revision,
        })
    }

    /// Allocation proper, under the label set's distributed lock.
    async fn locked_allocate(
        &self,
        key: &str,
        hint: Option<ReferenceHint>,
    ) -> Result<Allocation, AllocatorError> {
        let backend = &*self.shared.backend;
        if let Some(hint) = hint {
            // The hint holds if no slave key of these labels was written since its listing
            // (a deleted one cannot make another id the referenced one) and the master still
            // holds these labels.
            let slave_prefix = format!("{}/", identity_slave_prefix(key));
            let txn = Txn {
                compares: vec![
                    Compare::value(identity_master_key(hint.id), key.as_bytes().to_vec()),
                    Compare {
                        key: slave_prefix,
                        target: CompareTarget::ModRevision(CmpOp::Less, hint.revision + 1),
                        prefix: true,
                    },
                ],
                success: vec![TxnOp::Put {
                    key: identity_slave_key(key, &self.shared.node_suffix),
                    value: hint.id.to_string().into_bytes(),
                    lease: Some(self.shared.state().lease),
                }],
                failure: vec![],
            };
            if backend.txn(txn).await?.succeeded {
                return Ok(Allocation {
                    id: hint.id,
                    is_new: false,
                });
            }
        }
        let cached = self.shared.state().id_of(key);
        if let Some(cached) = cached {
            // The cache may know an older master of these labels that nobody references any
            // more, while another node (whose cache missed that master) made a new one: what
            // live nodes reference wins, as upstream's lookup of slave keys under the lock.
            // Nobody else can add references while we hold the lock, so one listing decides.
            let id = match self.find_by_slave_keys(key).await?.0 {
                Some(referenced) if referenced != cached => {
                    tracing::info!(labels = key, cached = %cached, %referenced, "identity cache is stale; using the identity other nodes reference");
                    referenced
                }
                _ => cached,
            };
            match self.reference_existing(key, id).await? {
                true => return Ok(Allocation { id, is_new: false }),
                // The id now belongs to other labels: allocate a fresh one.
                false => self.shared.state().mark_taken(id),
            }
        }

        let slave_prefix = format!("{}/", identity_slave_prefix(key));
        // The first attempt also checks, in the same transaction, that no node references
        // these labels yet, which saves listing their slave keys on the common path of a
        // brand-new identity. Once that check fails, one listing under the lock settles it.
        let mut check_slaves = true;
        let range = self.shared.cluster_id.identity_range();
        loop {
            let (id, lease) = {
                let mut state = self.shared.state();
                let id = state
                    .pick_free(&range)
                    .ok_or(AllocatorError::RangeExhausted {
                        cluster_id: self.shared.cluster_id,
                        first: *range.start(),
                        last: *range.end(),
                    })?;
                (id, state.lease)
            };
            let master = identity_master_key(id);
            let mut compares = vec![Compare::missing(master.clone())];
            if check_slaves {
                compares.push(Compare::prefix_empty(slave_prefix.clone()));
            }
            // Master and slave key in one transaction: the master is created only if the id
            // is free, and our reference lands with it.
            let txn = Txn {
                compares,
                success: vec![
                    TxnOp::Put {
                        key: master,
                        value: key.as_bytes().to_vec(),
                        lease: None,
                    },
                    TxnOp::Put {
                        key: identity_slave_key(key, &self.shared.node_suffix),
                        value: id.to_string().into_bytes(),
                        lease: Some(lease),
                    },
                ],
                failure: vec![],
            };
            if backend.txn(txn).await?.succeeded {
                tracing::debug!(labels = key, %id, "allocated new identity");
                return Ok(Allocation { id, is_new: true });
            }
            if check_slaves {
                // Either the id was taken or another node already uses these labels (its
                // master not in our cache yet). Nobody else can add references while we
                // hold the lock, so one listing decides.
                check_slaves = false;
                if let (Some(existing), _) = self.find_by_slave_keys(key).await? {
                    if self.reference_existing(key, existing).await? {
                        return Ok(Allocation {
                            id: existing,
                            is_new: false,
                        });
                    }
                    self.shared.state().mark_taken(existing);
                }
                continue;
            }
            // Another node took this id since our cache last heard of it.
            self.shared.state().mark_taken(id);
        }
    }

    /// Finds the id other nodes reference for exactly these labels (their slave keys), with
    /// the revision of the listing.
    async fn find_by_slave_keys(
        &self,
        key: &str,
    ) -> Result<(Option<NumericIdentity>, Revision), Error> {
        let prefix = identity_slave_prefix(key);
        let listing = self
            .shared
            .backend
            .list_prefix(&format!("{prefix}/"))
            .await?;
        let state = self.shared.state();
        let referenced = listing
            .kvs
            .iter()
            .filter(|kv| is_slave_key_of(&prefix, &kv.key))
            .filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u32>().ok())
            .map(NumericIdentity::new)
            // A slave key pointing at a master of other labels is stale; skip it.
            .find(|id| state.master(*id).is_none_or(|m| m.key == key));
        Ok((referenced, listing.revision))
    }

    /// Writes this node's slave key for an existing id, re-creating the master key if it
    /// vanished. Returns false if the id's master now holds other labels.
    async fn reference_existing(
        &self,
        key: &str,
        id: NumericIdentity,
    ) -> Result<bool, AllocatorError> {
        let backend = &*self.shared.backend;
        let master = identity_master_key(id);
        let slave = identity_slave_key(key, &self.shared.node_suffix);
        for _ in 0..MAX_REUSE_ATTEMPTS {
            let lease = self.shared.state().lease;
            if backend
                .put_if_exists(&master, &slave, id.to_string().into_bytes(), Some(lease))
                .await?
            {
                return Ok(true);
            }
            if backend
                .create_only(&master, key.as_bytes().to_vec(), None)
                .await?
            {
                tracing::warn!(key = %master, "re-created missing master key");
                continue;
            }
            // Someone created the master in between: make sure it is ours.
            if let Some(kv) = backend.get(&master).await?
                && kv.value != key.as_bytes()
            {
                return Ok(false);
            }
        }
        Err(AllocatorError::MasterKeyUnstable {
            key: master,
            attempts: MAX_REUSE_ATTEMPTS,
        })
    }

    /// Drops one local reference to `labels`. On the last one the node's slave key is deleted
    /// (the master stays until [`fn@gc`] finds it unused) and `true` is returned. If that delete
    /// fails the reference is kept and the error returned, so the release can be retried.
    pub async fn release(&self, labels: &Labels) -> Result<bool, AllocatorError> {
        let key = labels.to_kvstore_string();
        let _local = self.shared.local_lock(&key).await;
        {
            let mut state = self.shared.state();
            let Some(held) = state.held_mut(&key) else {
                return Err(AllocatorError::NotAllocated { labels: key });
            };
            if held.refs > 1 {
                held.refs -= 1;
                return Ok(false);
            }
        }
        let slave = identity_slave_key(&key, &self.shared.node_suffix);
        self.shared.backend.delete(&slave).await?;
        self.shared.state().unhold(&key);
        Ok(true)
    }

    /// The labels of identity `id`, from the watched master keys (any node's allocations).
    pub fn lookup(&self, id: NumericIdentity) -> Option<Labels> {
        self.shared
            .state()
            .master(id)
            .and_then(|master| master.labels.clone())
    }

    /// The identity of `labels`, if the cluster has one (without allocating).
    pub fn lookup_labels(&self, labels: &Labels) -> Option<NumericIdentity> {
        self.shared.state().id_of(&labels.to_kvstore_string())
    }

    /// Re-establishes every identity this node holds after its lease was lost: writes each
    /// slave key again with `new_lease` (and the master key where it is missing). Later slave
    /// keys use `new_lease` too. Continues past failures and returns the first one; returns
    /// how many identities were rewritten.
    pub async fn resync(&self, new_lease: LeaseId) -> Result<usize, AllocatorError> {
        let keys: Vec<String> = {
            let mut state = self.shared.state();
            state.lease = new_lease;
            state.held_keys()
        };
        let mut first_error = None;
        let mut rewritten = 0;
        for key in keys {
            let _local = self.shared.local_lock(&key).await;
            let Some(id) = self.shared.state().held_id(&key) else {
                // Released meanwhile.
                continue;
            };
            let result = self
                .shared
                .with_lock(&key, self.shared.restore(&key, id, new_lease, true))
                .await;
            match result {
                Ok(()) => rewritten += 1,
                Err(err) => {
                    tracing::warn!(labels = %key, %id, error = %err, "identity resync failed");
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(rewritten),
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every critical section is a
        // handful of map updates.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn local_lock(&self, key: &str) -> LocalGuard<'_> {
        let mutex = {
            let mut locks = self
                .local_locks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(key.to_owned()).or_default())
        };
        let guard = mutex.lock_owned().await;
        LocalGuard {
            shared: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }

    /// Runs `op` holding the distributed lock of `key`, and always unlocks afterwards.
    async fn with_lock<T>(
        &self,
        key: &str,
        op: impl Future<Output = Result<T, AllocatorError>>,
    ) -> Result<T, AllocatorError> {
        let lock = self.backend.lock(&identity_lock_key(key)).await?;
        let result = op.await;
        if let Err(err) = self.backend.unlock(lock.clone()).await {
            // The lock session is kept alive for as long as this allocator lives, so a lock
            // left behind would block every later allocation of these labels, this node's
            // included: keep trying in the background until the store takes the release.
            tracing::warn!(labels = key, error = %err, "failed to release identity lock; retrying");
            tokio::spawn(release_until_done(Arc::clone(&self.backend), lock));
        }
        result
    }

    /// Makes sure the master key of `id` exists with `key` and writes this node's slave key
    /// (always when `rewrite_slave`, else only if missing).
    async fn restore(
        &self,
        key: &str,
        id: NumericIdentity,
        lease: LeaseId,
        rewrite_slave: bool,
    ) -> Result<(), AllocatorError> {
        let master = identity_master_key(id);
        if self
            .backend
            .create_only(&master, key.as_bytes().to_vec(), None)
            .await?
        {
            tracing::warn!(key = %master, "re-created missing master key");
        } else if let Some(kv) = self.backend.get(&master).await?
            && kv.value != key.as_bytes()
        {
            return Err(AllocatorError::CorruptMasterKey {
                key: master,
                message: format!(
                    "holds {:?}, but this node holds the id for {key:?}",
                    String::from_utf8_lossy(&kv.value)
                ),
            });
        }
        let slave = identity_slave_key(key, &self.node_suffix);
        let value = id.to_string().into_bytes();
        if rewrite_slave {
            self.backend.put(&slave, value, Some(lease)).await?;
        } else if self.backend.create_only(&slave, value, Some(lease)).await? {
            tracing::warn!(key = %slave, "re-created missing slave key");
        }
        Ok(())
    }

    /// Lists the master keys into the cache; returns the watch to follow from there.
    async fn list_masters(&self) -> Result<WatchStream, Error> {
        let mut events = self
            .backend
            .watch(&format!("{IDENTITY_ID_PREFIX}/"), WatchFrom::List)
            .await?;
        let mut masters = Vec::new();
        while let Some(event) = events.next().await {
            match event? {
                WatchEvent::Create(kv) | WatchEvent::Modify(kv) => {
                    if let Some(master) = decode_master(&kv.key, &kv.value) {
                        masters.push(master);
                    }
                }
                WatchEvent::Delete { .. } => {}
                WatchEvent::ListDone { .. } => {
                    self.state().replace_masters(masters);
                    break;
                }
            }
        }
        let vanished = self.state().held_without_master();
        for (key, id) in vanished {
            self.recreate_held(&key, id).await;
        }
        Ok(events)
    }

    /// Follows the master keys for the allocator's lifetime, re-listing whenever the backend
    /// ends the stream.
    async fn watch_masters(self: Arc<Self>, mut events: WatchStream) {
        loop {
            while let Some(event) = events.next().await {
                match event {
                    Ok(WatchEvent::Create(kv) | WatchEvent::Modify(kv)) => {
                        if let Some((id, key)) = decode_master(&kv.key, &kv.value) {
                            self.state().upsert_master(id, key);
                        }
                    }
                    Ok(WatchEvent::Delete { key, .. }) => {
                        let Ok(id) = parse_identity_master_key(&key) else {
                            continue;
                        };
                        let held = {
                            let mut state = self.state();
                            state.remove_master(id);
                            state.held_key_of(id).map(str::to_owned)
                        };
                        if let Some(labels) = held {
                            self.recreate_held(&labels, id).await;
                        }
                    }
                    Ok(WatchEvent::ListDone { .. }) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "identity master key watch ended");
                    }
                }
            }
            loop {
                tokio::time::sleep(WATCH_RETRY_DELAY).await;
                match self.list_masters().await {
                    Ok(fresh) => {
                        events = fresh;
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "re-listing identity master keys failed")
                    }
                }
            }
        }
    }

    /// A master key this node still references vanished: create it again (create-only, so a
    /// concurrent re-creation wins) together with our slave key if that is gone too.
    async fn recreate_held(&self, key: &str, id: NumericIdentity) {
        let lease = self.state().lease;
        if let Err(err) = self.restore(key, id, lease, false).await {
            tracing::warn!(labels = key, %id, error = %err, "failed to re-create master key");
        }
    }
}

/// Parses a master key event; keys or values that are not an identity are logged and ignored.
fn decode_master(key: &str, value: &[u8]) -> Option<(NumericIdentity, String)> {
    let id = match parse_identity_master_key(key) {
        Ok(id) => id,
        Err(err) => {
            tracing::warn!(error = %err, "ignoring malformed identity master key");
            return None;
        }
    };
    match std::str::from_utf8(value) {
        Ok(labels) => Some((id, labels.to_owned())),
        Err(_) => {
            tracing::warn!(key, "identity master key value is not UTF-8");
            None
        }
    }
}

/// This node's exclusive right to operate on one label string; removes its map entry when no
/// one else waits for it.
struct LocalGuard<'a> {
    shared: &'a Shared,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for LocalGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self
            .shared
            .local_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.guard.take());
        if locks
            .get(&self.key)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// Releases `lock`, retrying with a growing pause until the store accepts it.
async fn release_until_done(backend: Arc<dyn Backend>, lock: LockKey) {
    let mut pause = UNLOCK_RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        match backend.unlock(lock.clone()).await {
            Ok(()) => {
                tracing::info!(lock = %lock.key, "released identity lock after retrying");
                return;
            }
            Err(err) => {
                tracing::debug!(lock = %lock.key, error = %err, "identity lock release failed again");
                pause = (pause * 2).min(UNLOCK_RETRY_MAX);
            }
        }
    }
}
