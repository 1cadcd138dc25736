//! Private etcd servers for the clusters of a run (`sim run --kvstore etcd`, feature `etcd`):
//! one `etcd` process per cluster on free loopback ports, with a temporary data directory,
//! stopped by its PID when the run ends (the kvstore crate's test etcd).
//!
//! The library compiles this module only with the `etcd` feature, so that it links no etcd
//! client by default; the `etcd` integration test includes the same file over its own
//! dev-dependency, which is how `cargo test` exercises it without the feature. Paths go
//! through `super::external` for that reason.

use std::sync::Arc;

use async_trait::async_trait;
use kvstore::Backend;
use kvstore::etcd::EtcdBackend;
use kvstore::testing::etcd::EtcdServer;

use super::external::{ExternalStore, ExternalStoreError, ExternalStores};

/// Starts a private etcd for every cluster.
#[derive(Debug, Default)]
pub struct PrivateEtcd;

#[async_trait(?Send)]
impl ExternalStores for PrivateEtcd {
    async fn start_cluster(
        &self,
        cluster: &str,
    ) -> Result<Arc<dyn ExternalStore>, ExternalStoreError> {
        let server = EtcdServer::start()
            .await
            .map_err(|source| failed(cluster, "start", source))?;
        tracing::info!(%cluster, endpoint = %server.endpoint(), "private etcd started");
        Ok(Arc::new(ClusterEtcd {
            cluster: cluster.to_owned(),
            server,
        }))
    }
}

/// One cluster's etcd.
#[derive(Debug)]
struct ClusterEtcd {
    cluster: String,
    server: EtcdServer,
}

fn failed(
    cluster: &str,
    op: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> ExternalStoreError {
    ExternalStoreError {
        cluster: cluster.to_owned(),
        op,
        source: Box::new(source),
    }
}

#[async_trait]
impl ExternalStore for ClusterEtcd {
    async fn client(&self) -> Result<Arc<dyn Backend>, ExternalStoreError> {
        let client = EtcdBackend::connect(&self.server.config())
            .await
            .map_err(|source| failed(&self.cluster, "connect", source))?;
        Ok(Arc::new(client))
    }

    async fn stop(&self) -> Result<(), ExternalStoreError> {
        self.server
            .stop()
            .await
            .map_err(|source| failed(&self.cluster, "stop", source))
    }

    async fn start(&self) -> Result<(), ExternalStoreError> {
        // Stopping a stopped server does nothing: this is a start with the same data.
        self.server
            .restart()
            .await
            .map_err(|source| failed(&self.cluster, "start again", source))
    }
}
