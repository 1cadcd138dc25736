//! The kvstore client each simulated node talks through: a [`Backend`] wrapper over one
//! client of its cluster's store (the memory store, or an external one) that counts
//! operations (for the report), can cut the node off (node loss: a dead agent neither reads
//! nor writes), and injects the faults of a real kvstore connection:
//! - per-request latency jitter and a fraction of failed requests ([`KvstoreFaults`]);
//! - a restart of the cluster's kvstore ([`RestartSignal`]): the client's watches end with an
//!   error, as a watch does that cannot resume after the restart (its revision compacted
//!   meanwhile), and their consumers must open them again (a re-list);
//! - lost watch events ([`WatchLoss`]): a node's watches swallow events until a resync ends
//!   each watch that lost something with a compaction error, as etcd forces a re-list when a
//!   watcher falls behind the compacted history.
//!
//! All of it lives here rather than in the memory store so that the numbers and the faults are
//! per node, and so that the store itself stays etcd's faithful model. Every random choice
//! comes from a generator seeded by the node's seed: the run stays a function of its seed.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kvstore::{
    Backend, BackendStatus, Error, KeyValue, LeaseId, ListResult, LockKey, Revision, Txn,
    TxnResponse, WatchEvent, WatchFrom, WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The requests a [`SimBackend`] makes, by the names [`KvstoreFaults::exempt`] takes.
pub const REQUESTS: [&str; 13] = [
    "get",
    "list",
    "put",
    "delete",
    "delete-prefix",
    "txn",
    "watch",
    "grant-lease",
    "keep-alive",
    "revoke-lease",
    "lock",
    "unlock",
    "status",
];

/// Faults of every node's kvstore connection, for the whole run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvstoreFaults {
    /// Each request takes up to this much virtual time more than the scenario's latency
    /// (uniformly drawn).
    #[serde(with = "crate::duration")]
    pub latency_jitter: Duration,
    /// The fraction of requests (0 to 1) that fail with an unavailable error, as requests
    /// to a struggling etcd time out. Watch events are not requests: they are never failed.
    pub error_rate: f64,
    /// Requests that never fail (names of [`REQUESTS`]), to keep a known bug out of a run.
    pub exempt: Vec<String>,
}

impl KvstoreFaults {
    /// Whether any fault is set.
    pub fn any(&self) -> bool {
        !self.latency_jitter.is_zero() || self.error_rate > 0.0
    }
}

/// Restarts of one cluster's kvstore as its clients see them: a generation that moves on
/// every restart. Every watch opened before a restart ends with an error at the restart.
#[derive(Debug, Clone)]
pub struct RestartSignal {
    generation: watch::Sender<u64>,
}

impl Default for RestartSignal {
    fn default() -> Self {
        RestartSignal {
            generation: watch::Sender::new(0),
        }
    }
}

impl RestartSignal {
    /// Breaks every watch of every client of the store.
    pub fn restart(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// How many restarts so far.
    pub fn restarts(&self) -> u64 {
        *self.generation.borrow()
    }
}

/// Lost watch events of one node: while [`WatchLoss::start`] holds, every event its watches
/// would deliver (except the end of a listing) is dropped; [`WatchLoss::stop`] with a resync
/// ends every watch that lost an event with a compaction error, so its consumer re-lists.
#[derive(Debug, Clone, Default)]
pub struct WatchLoss {
    dropping: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    resyncs: Arc<watch::Sender<u64>>,
}

impl WatchLoss {
    pub fn start(&self) {
        self.dropping.store(true, Ordering::SeqCst);
    }

    /// Stops dropping; with `resync`, forces every watch that lost events to end.
    pub fn stop(&self, resync: bool) {
        self.dropping.store(false, Ordering::SeqCst);
        if resync {
            self.resyncs.send_modify(|generation| *generation += 1);
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Operation counters of one node or one cluster (read by the report and by the harness's
/// wait for quiescence).
#[derive(Debug, Default)]
pub struct OpCounter {
    ops: AtomicU64,
    /// Requests that change the store (writes, deletes, transactions, leases, locks).
    /// Renewals, reads and watch events are left out: they go on while nothing changes.
    mutations: AtomicU64,
    /// Watch events delivered (also counted in `ops`).
    events: AtomicU64,
}

impl OpCounter {
    /// Every request and every delivered watch event.
    pub fn get(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    pub fn mutations(&self) -> u64 {
        self.mutations.load(Ordering::Relaxed)
    }

    /// Watch events delivered to the node's (or the cluster's) consumers.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn bump_event(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn bump(&self, kind: Kind) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        if kind == Kind::Mutation {
            self.mutations.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether a request changes the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Mutation,
}

/// One node's kvstore client. See the module docs.
pub struct SimBackend {
    inner: Arc<dyn Backend>,
    node: Arc<OpCounter>,
    cluster: Arc<OpCounter>,
    /// Set when the node is lost: every operation fails and open watches go silent.
    dead: Arc<AtomicBool>,
    /// Virtual time every request takes (the round trip to the kvstore).
    latency: Duration,
    /// While it reads `true` the store is unreachable for this client: requests fail and
    /// watch streams stall (events are held back, not lost, as on a stalled connection).
    partition: Option<watch::Receiver<bool>>,
    faults: KvstoreFaults,
    /// Requests fail only once this is set ([`SimBackend::failing`]): a node's start does not
    /// retry (an agent that cannot start is restarted by its supervisor, which the simulation
    /// does not play).
    failing: Arc<AtomicBool>,
    /// Draws the jitter and the failed requests; shared by the node's connections.
    rng: Arc<Mutex<fastrand::Rng>>,
    /// Restarts of the store this client talks to (its own cluster's).
    restarts: Option<watch::Receiver<u64>>,
    loss: WatchLoss,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBackend")
            .field("ops", &self.node.get())
            .field("dead", &self.dead.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SimBackend {
    /// A node's client of its own cluster's store; `partition` cuts it off (and back).
    pub fn new(
        inner: Arc<dyn Backend>,
        cluster: Arc<OpCounter>,
        latency: Duration,
        partition: watch::Receiver<bool>,
    ) -> Self {
        SimBackend {
            inner,
            node: Arc::new(OpCounter::default()),
            cluster,
            dead: Arc::new(AtomicBool::new(false)),
            latency,
            partition: Some(partition),
            faults: KvstoreFaults::default(),
            failing: Arc::new(AtomicBool::new(false)),
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(0))),
            restarts: None,
            loss: WatchLoss::default(),
        }
    }

    /// Injects `faults` into every request, drawn from a generator seeded with `seed`.
    pub fn with_faults(mut self, faults: KvstoreFaults, seed: u64) -> Self {
        self.faults = faults;
        self.rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        self
    }

    /// Ends this client's watches at every restart of `store`.
    pub fn with_restarts(mut self, store: &RestartSignal) -> Self {
        self.restarts = Some(store.generation.subscribe());
        self
    }

    /// Set it to let [`KvstoreFaults::error_rate`] fail requests (once the node runs).
    pub fn failing(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.failing)
    }

    /// The node's lost watch events (shared with every connection of the node).
    pub fn watch_loss(&self) -> &WatchLoss {
        &self.loss
    }

    /// Another client of this node (a connection to a remote cluster's kvstore): counted as
    /// this node's and its cluster's operations, and cut off with the node.
    /// `partition` cuts this connection off (and back) on its own.
    pub fn sibling(
        &self,
        inner: Arc<dyn Backend>,
        partition: Option<watch::Receiver<bool>>,
    ) -> SimBackend {
        SimBackend {
            inner,
            node: Arc::clone(&self.node),
            cluster: Arc::clone(&self.cluster),
            dead: Arc::clone(&self.dead),
            latency: self.latency,
            partition,
            faults: self.faults.clone(),
            failing: Arc::clone(&self.failing),
            rng: Arc::clone(&self.rng),
            // A remote cluster's restarts are not this store's; its watches resume through
            // them (the memory store's own reconnect).
            restarts: None,
            loss: self.loss.clone(),
        }
    }

    /// Operations this node made so far.
    pub fn ops(&self) -> u64 {
        self.node.get()
    }

    /// Cuts the node off for good, as a machine that died.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    async fn begin(&self, op: &'static str, kind: Kind) -> Result<(), Error> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                op,
                message: "simulated node is lost".to_owned(),
            });
        }
        if self.partition.as_ref().is_some_and(|p| *p.borrow()) {
            return Err(Error::Unavailable {
                op,
                message: "simulated partition".to_owned(),
            });
        }
        self.node.bump(kind);
        self.cluster.bump(kind);
        let (jitter, fail) = if self.faults.any() {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            let jitter = self.faults.latency_jitter.mul_f64(rng.f64());
            (jitter, rng.f64() < self.faults.error_rate)
        } else {
            (Duration::ZERO, false)
        };
        let latency = self.latency + jitter;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if fail
            && self.failing.load(Ordering::SeqCst)
            && !self.faults.exempt.iter().any(|exempt| exempt == op)
        {
            return Err(Error::Unavailable {
                op,
                message: "simulated request failure".to_owned(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for SimBackend {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        self.begin("get", Kind::Read).await?;
        self.inner.get(key).await
    }

    async fn list_prefix(&self, prefix: &str) -> Result<ListResult, Error> {
        self.begin("list", Kind::Read).await?;
        self.inner.list_prefix(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, Error> {
        self.begin("put", Kind::Mutation).await?;
        self.inner.put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.begin("delete", Kind::Mutation).await?;
        self.inner.delete(key).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        self.begin("delete-prefix", Kind::Mutation).await?;
        self.inner.delete_prefix(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.begin("txn", Kind::Mutation).await?;
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, Error> {
        // Subscribed before the store is asked, so a restart in between breaks this watch.
        let restarts = self.restarts.clone().map(|mut rx| {
            rx.mark_unchanged();
            rx
        });
        let mut resyncs = self.loss.resyncs.subscribe();
        resyncs.mark_unchanged();
        self.begin("watch", Kind::Read).await?;
        let stream = self.inner.watch(prefix, from).await?;
        let faulty = FaultyWatch {
            inner: stream,
            prefix: prefix.to_owned(),
            dead: Arc::clone(&self.dead),
            counters: (Arc::clone(&self.node), Arc::clone(&self.cluster)),
            partition: self.partition.clone(),
            restarts,
            resyncs,
            loss: self.loss.clone(),
            lost: false,
            last_revision: 0,
            done: false,
        };
        Ok(futures::stream::unfold(faulty, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        })
        .boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, Error> {
        self.begin("grant-lease", Kind::Mutation).await?;
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, Error> {
        self.begin("keep-alive", Kind::Read).await?;
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), Error> {
        self.begin("revoke-lease", Kind::Mutation).await?;
        self.inner.revoke_lease(lease).await
    }

    async fn lock(&self, name: &str) -> Result<LockKey, Error> {
        self.begin("lock", Kind::Mutation).await?;
        self.inner.lock(name).await
    }

    async fn unlock(&self, lock: LockKey) -> Result<(), Error> {
        self.begin("unlock", Kind::Mutation).await?;
        self.inner.unlock(lock).await
    }

    async fn status(&self) -> Result<BackendStatus, Error> {
        self.begin("status", Kind::Read).await?;
        self.inner.status().await
    }
}

/// One watch of a node, between the memory store's stream and the consumer. See the module
/// docs for the faults it plays.
struct FaultyWatch {
    inner: WatchStream,
    prefix: String,
    dead: Arc<AtomicBool>,
    counters: (Arc<OpCounter>, Arc<OpCounter>),
    partition: Option<watch::Receiver<bool>>,
    restarts: Option<watch::Receiver<u64>>,
    resyncs: watch::Receiver<u64>,
    loss: WatchLoss,
    /// An event was dropped: the next resync ends this watch.
    lost: bool,
    last_revision: Revision,
    done: bool,
}

impl FaultyWatch {
    async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        loop {
            if self.done {
                return None;
            }
            let item = tokio::select! {
                biased;
                restarted = changed(self.restarts.as_mut()) => {
                    if restarted {
                        self.done = true;
                        return Some(Err(Error::Unavailable {
                            op: "watch",
                            message: "simulated kvstore restart ended the watch".to_owned(),
                        }));
                    }
                    // The store went away with the simulation: no more restarts.
                    self.restarts = None;
                    continue;
                }
                resynced = changed(Some(&mut self.resyncs)), if self.lost => {
                    if resynced {
                        self.done = true;
                        return Some(Err(Error::Compacted {
                            prefix: self.prefix.clone(),
                            revision: self.last_revision,
                            compact_revision: self.last_revision,
                        }));
                    }
                    self.lost = false;
                    continue;
                }
                item = self.inner.next() => item,
            };
            let item = item?;
            // A partitioned connection holds events back until it heals.
            if let Some(partition) = self.partition.as_mut() {
                // A dropped sender ends the partition with the simulation.
                let _ = partition.wait_for(|cut| !*cut).await;
            }
            // A lost node hears nothing more.
            if self.dead.load(Ordering::SeqCst) {
                continue;
            }
            if let Ok(event) = &item {
                if let Some(revision) = event_revision(event) {
                    self.last_revision = self.last_revision.max(revision);
                }
                if self.loss.dropping.load(Ordering::SeqCst)
                    && !matches!(event, WatchEvent::ListDone { .. })
                {
                    self.lost = true;
                    self.loss.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            self.counters.0.bump_event();
            self.counters.1.bump_event();
            return Some(item);
        }
    }
}

/// Waits until `rx` changes: `true`, or `false` once its sender is gone; never returns
/// without a receiver.
async fn changed(rx: Option<&mut watch::Receiver<u64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

fn event_revision(event: &WatchEvent) -> Option<Revision> {
    match event {
        WatchEvent::Create(kv) | WatchEvent::Modify(kv) => Some(kv.mod_revision),
        WatchEvent::Delete { mod_revision, .. } => Some(*mod_revision),
        WatchEvent::ListDone { revision } => Some(*revision),
    }
}
