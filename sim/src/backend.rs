//! The kvstore client each simulated node talks through: a [`Backend`] wrapper over one
//! memory-store client that counts operations (for the report) and can cut the node off (node
//! loss: a dead agent neither reads nor writes).
//!
//! Counting happens here rather than in the memory store so that the numbers are per node and
//! per cluster, which is what the report shows (operations per node per second).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kvstore::{
    Backend, BackendStatus, Error, KeyValue, LeaseId, ListResult, LockKey, Revision, Txn,
    TxnResponse, WatchFrom, WatchStream,
};
use tokio::sync::watch;

/// Operation counters of one node or one cluster (read by the report and by the harness's
/// wait for quiescence).
#[derive(Debug, Default)]
pub struct OpCounter {
    ops: AtomicU64,
    /// Requests that change the store (writes, deletes, transactions, leases, locks).
    /// Renewals, reads and watch events are left out: they go on while nothing changes.
    mutations: AtomicU64,
}

impl OpCounter {
    /// Every request and every delivered watch event.
    pub fn get(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    pub fn mutations(&self) -> u64 {
        self.mutations.load(Ordering::Relaxed)
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
        }
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
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
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
        self.begin("delete prefix", Kind::Mutation).await?;
        self.inner.delete_prefix(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        self.begin("txn", Kind::Mutation).await?;
        self.inner.txn(txn).await
    }

    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, Error> {
        self.begin("watch", Kind::Read).await?;
        let stream = self.inner.watch(prefix, from).await?;
        let dead = Arc::clone(&self.dead);
        let counter = (Arc::clone(&self.node), Arc::clone(&self.cluster));
        let partition = self.partition.clone();
        // A partitioned connection holds events back until it heals; a lost node hears
        // nothing more; every delivered event counts as an operation.
        Ok(stream
            .then(move |item| {
                let mut partition = partition.clone();
                async move {
                    if let Some(partition) = partition.as_mut() {
                        // A dropped sender ends the partition with the simulation.
                        let _ = partition.wait_for(|cut| !*cut).await;
                    }
                    item
                }
            })
            .filter(move |_| {
                let alive = !dead.load(Ordering::SeqCst);
                if alive {
                    counter.0.bump(Kind::Read);
                    counter.1.bump(Kind::Read);
                }
                futures::future::ready(alive)
            })
            .boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, Error> {
        self.begin("grant lease", Kind::Mutation).await?;
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, Error> {
        self.begin("keep alive", Kind::Read).await?;
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), Error> {
        self.begin("revoke lease", Kind::Mutation).await?;
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
