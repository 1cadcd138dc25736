//! ClusterMesh in the simulation: every node of every cluster runs the production
//! [`clustermesh::ClusterMesh`] actor, reading a configuration directory with one file per
//! remote cluster, and each cluster runs the clustermesh-apiserver's [`Publisher`] (cluster
//! configuration, sync canaries, heartbeat) against its memory kvstore.
//!
//! A configuration file names a memory store (`endpoints: [memory://<cluster>]`) instead of
//! etcd; [`SimConnector`] maps it to that cluster's store. The connection is a sibling of the
//! node's own kvstore client: its operations count as the node's, and a lost node's mesh
//! connections die with it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use clustermesh::apiserver::{Publisher, PublisherConfig, PublisherError};
use kvstore::Backend;
use kvstore::memory::MemoryStore;
use model::identity::{ClusterId, ClusterName};
use tokio::sync::watch;

use crate::backend::SimBackend;

/// One cluster as the rest of the mesh reaches it: its store, and whether it is cut off from
/// the other clusters (its own nodes still reach it).
#[derive(Debug, Clone)]
pub struct MeshStore {
    pub store: MemoryStore,
    pub partition: watch::Receiver<bool>,
}

/// Every cluster's kvstore, by cluster name.
pub type MeshStores = Arc<BTreeMap<String, MeshStore>>;

/// Connects a node's mesh to the other clusters' memory stores. See the module docs.
#[derive(Debug)]
pub struct SimConnector {
    stores: MeshStores,
    /// The node's own client, whose counters and fate the connections share.
    node: Arc<SimBackend>,
}

impl SimConnector {
    pub fn new(stores: MeshStores, node: Arc<SimBackend>) -> Self {
        SimConnector { stores, node }
    }
}

#[async_trait]
impl clustermesh::Connector for SimConnector {
    async fn connect(
        &self,
        cluster: &ClusterName,
        config_path: &Path,
    ) -> Result<Arc<dyn Backend>, kvstore::Error> {
        let unavailable = |message: String| kvstore::Error::Unavailable {
            op: "connect",
            message,
        };
        let text = std::fs::read_to_string(config_path).map_err(|error| {
            unavailable(format!("cannot read {}: {error}", config_path.display()))
        })?;
        let name = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("- memory://"))
            .ok_or_else(|| {
                unavailable(format!(
                    "{} names no memory:// endpoint for {cluster}",
                    config_path.display()
                ))
            })?;
        let remote = self
            .stores
            .get(name.trim())
            .ok_or_else(|| unavailable(format!("no simulated cluster {name}")))?;
        if *remote.partition.borrow() {
            return Err(unavailable(format!("{name} is cut off from the mesh")));
        }
        Ok(Arc::new(self.node.sibling(
            Arc::new(remote.store.client()),
            Some(remote.partition.clone()),
        )))
    }
}

/// Writes the configuration directory of `local`'s nodes: one file per other cluster.
pub fn write_config_dir(root: &Path, local: &str, clusters: &[String]) -> io::Result<PathBuf> {
    let dir = root.join("clustermesh").join(local);
    std::fs::create_dir_all(&dir)?;
    for remote in clusters.iter().filter(|c| c.as_str() != local) {
        std::fs::write(
            dir.join(remote),
            format!("endpoints:\n- memory://{remote}\n"),
        )?;
    }
    Ok(dir)
}

/// Starts the clustermesh-apiserver publisher of one cluster on the simulation thread. It
/// publishes until the returned sender is dropped.
pub fn start_publisher(
    name: ClusterName,
    id: ClusterId,
    store: &MemoryStore,
) -> Result<watch::Sender<bool>, PublisherError> {
    let publisher = Publisher::new(
        PublisherConfig::new(name, id),
        Arc::new(store.client()) as Arc<dyn Backend>,
    )?;
    let (stop, stopped) = watch::channel(false);
    tokio::task::spawn_local(publisher.run(stopped));
    Ok(stop)
}
