//! `cilium-operator-generic` for a cluster without Kubernetes: the cluster-wide duties no agent
//! should do alone, run by one elected operator against the kvstore.
//!
//! The operator campaigns for the leader lock; while it holds it, it hands each node of its
//! cluster a pod CIDR from the cluster pool, cleans up after nodes that are gone, collects
//! unused identities and writes the kvstore heartbeat. When it loses the lock it stops acting
//! at once (every write is fenced on the lock) and campaigns again. It talks to
//! `Arc<dyn kvstore::Backend>` only, so the same code runs on etcd and on the memory backend.
//!
//! # Layout
//! - [`config`]: flags and defaults ([`OperatorConfig`]).
//! - [`ipam`]: the cluster pool as a pure state machine ([`CidrPool`]).
//! - [`nodes`]: which nodes exist and when vanished ones are due for collection.
//! - [`leader`]: the leader lock and fenced writes.
//! - `controller`: IPAM and node GC for one term of leadership (watches, writes).
//! - `housekeeping`: heartbeat and identity GC.
//! - [`metrics`]: the Prometheus metrics of all of the above ([`OperatorMetrics`]).
//! - this module: [`Operator`], the campaign / lead / step-down loop.

pub mod config;
mod controller;
pub mod error;
mod housekeeping;
pub mod ipam;
pub mod leader;
pub mod metrics;
pub mod nodes;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use kvstore::Backend;
use tokio::sync::watch;

pub use config::{ConfigError, OperatorConfig};
pub use error::OperatorError;
pub use ipam::{CidrPool, PoolConfigError, PoolExhausted, RestoreError};
pub use leader::{LEADER_LOCK_NAME, Leadership};
pub use metrics::OperatorMetrics;
pub use nodes::NodeName;

use controller::NodeController;

/// How long releasing the lock may take when a term ends; an unreachable store must not keep a
/// stopping operator alive (the lock goes with its session lease anyway).
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// An operator ready to run: a validated configuration and its kvstore client.
#[derive(Debug)]
pub struct Operator {
    config: OperatorConfig,
    pool: CidrPool,
    backend: Arc<dyn Backend>,
    leader: watch::Sender<bool>,
    metrics: OperatorMetrics,
}

impl Operator {
    /// Checks the configuration; fails with [`OperatorError::Config`] naming the bad flag.
    pub fn new(
        config: OperatorConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<Operator, OperatorError> {
        let pool = config.validate()?;
        let (leader, _) = watch::channel(false);
        Ok(Operator {
            config,
            pool,
            backend,
            leader,
            metrics: OperatorMetrics::new(),
        })
    }

    /// Follows whether this operator currently leads.
    pub fn leader_status(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// This operator's metrics; clone the handle to serve them while the operator runs.
    pub fn metrics(&self) -> &OperatorMetrics {
        &self.metrics
    }

    /// Campaigns, leads, and campaigns again after losing leadership, until `shutdown` turns
    /// `true` (or its sender is dropped). On shutdown the leader lock is released, so a standby
    /// takes over at once. Only a configuration error (caught by
    /// [`Operator::new`]) fails; kvstore errors are logged and retried.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), OperatorError> {
        tracing::info!(
            cluster = %self.config.cluster_name,
            cluster_id = %self.config.cluster_id,
            pool = %self.pool.pool(),
            mask_size = self.pool.mask_size(),
            lock = LEADER_LOCK_NAME,
            "operator started; campaigning for leadership"
        );
        loop {
            let lock = tokio::select! {
                () = stopped(&mut shutdown) => return Ok(()),
                lock = self.backend.lock(LEADER_LOCK_NAME) => lock,
            };
            let lock = match lock {
                Ok(lock) => lock,
                Err(error) => {
                    tracing::warn!(%error, "cannot campaign for leadership; retrying");
                    if pause(&mut shutdown, self.config.retry_interval).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let leadership = Leadership::new(Arc::clone(&self.backend), lock);
            tracing::info!(lock = leadership.lock_key(), "became leader");
            self.leader.send_replace(true);
            self.metrics.set_leader(true);
            let ended = tokio::select! {
                () = stopped(&mut shutdown) => None,
                error = self.lead(&leadership) => Some(error),
            };
            self.leader.send_replace(false);
            self.metrics.set_leader(false);
            self.metrics.clear_pod_cidrs();
            match &ended {
                None => tracing::info!("shutting down; releasing leadership"),
                Some(error) => tracing::warn!(%error, "lost leadership"),
            }
            self.step_down(&leadership).await;
            if ended.is_none() || pause(&mut shutdown, self.config.retry_interval).await {
                return Ok(());
            }
            tracing::info!("campaigning for leadership again");
        }
    }

    /// One term of leadership: every duty at once, until one of them fails or the lock is
    /// lost. Returns why the term ended.
    async fn lead(&self, leadership: &Leadership) -> OperatorError {
        let controller = NodeController::new(
            self.config.cluster_name.as_str().to_owned(),
            Arc::clone(&self.backend),
            leadership.clone(),
            self.pool.clone(),
            self.config.nodes_gc_interval,
            self.config.retry_interval,
            self.metrics.clone(),
        );
        let result: Result<(Infallible, Infallible, Infallible, Infallible), OperatorError> = tokio::try_join!(
            leadership.watch_until_lost(),
            controller.run(),
            housekeeping::heartbeat(
                Arc::clone(&self.backend),
                self.config.heartbeat_interval,
                self.config.lease_ttl,
                self.metrics.clone(),
            ),
            housekeeping::identity_gc(
                Arc::clone(&self.backend),
                leadership.clone(),
                self.config.cluster_id,
                self.config.identity_gc_interval,
                self.config.identity_gc_deletes_per_sec(),
                self.metrics.clone(),
            ),
        );
        match result {
            Ok((never, ..)) => match never {},
            Err(error) => error,
        }
    }

    /// Releases the lock, best-effort: if the store does not confirm, the lock goes with the
    /// session lease.
    async fn step_down(&self, leadership: &Leadership) {
        let lock = leadership.lock().clone();
        match tokio::time::timeout(TEARDOWN_TIMEOUT, self.backend.unlock(lock)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot release the leader lock"),
            Err(_) => tracing::warn!("releasing the leader lock timed out"),
        }
    }
}

/// Runs an operator until `shutdown` turns `true`: [`Operator::new`] then [`Operator::run`].
pub async fn run(
    config: OperatorConfig,
    backend: Arc<dyn Backend>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), OperatorError> {
    Operator::new(config, backend)?.run(shutdown).await
}

/// Resolves once shutdown is requested or nobody can request it any more.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Waits `duration`; returns whether shutdown was requested meanwhile.
async fn pause(shutdown: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        () = stopped(shutdown) => true,
        () = tokio::time::sleep(duration) => false,
    }
}
