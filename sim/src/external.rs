//! Clusters on an external kvstore (a real etcd) instead of the embedded memory store, for
//! small runs that check the control plane against the real thing ([`Scenario::run_on`]).
//!
//! The library itself links no etcd client: [`ExternalStores`] is the seam, and the `etcd`
//! feature adds `etcd::PrivateEtcd`, one private `etcd` process per cluster,
//! which `sim run --kvstore etcd` uses. Such a run is on real time, not paused time (paused
//! time would jump ahead while the runtime waits on the network, firing every timeout), so it
//! is not deterministic, and its quiet period should be short (`quiet: 2s`). No mesh (the
//! mesh wiring reaches other clusters' memory stores).
//!
//! [`Scenario::run_on`]: crate::Scenario::run_on

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use kvstore::Backend;

/// What went wrong with an external store.
#[derive(Debug, thiserror::Error)]
#[error("the external kvstore of {cluster} failed to {op}")]
pub struct ExternalStoreError {
    pub cluster: String,
    pub op: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// One cluster's external kvstore.
#[async_trait]
pub trait ExternalStore: fmt::Debug + Send + Sync {
    /// A new client: its own connection and lock session.
    async fn client(&self) -> Result<Arc<dyn Backend>, ExternalStoreError>;

    /// Stops the store, keeping its data: clients' requests fail until [`Self::start`].
    async fn stop(&self) -> Result<(), ExternalStoreError>;

    /// Starts a stopped store again with its data and leases.
    async fn start(&self) -> Result<(), ExternalStoreError>;
}

/// Starts the external kvstore of each cluster of a run.
#[async_trait(?Send)]
pub trait ExternalStores: fmt::Debug {
    async fn start_cluster(
        &self,
        cluster: &str,
    ) -> Result<Arc<dyn ExternalStore>, ExternalStoreError>;
}
