//! The status of each remote cluster, as `cilium-dbg status --verbose` and `cilium clustermesh
//! status` show it (upstream's `models.RemoteCluster`, same kebab-case field names; the counts
//! of identities and the last failure's message are our additions).

use model::identity::ClusterName;
use serde::{Deserialize, Serialize};

/// One remote cluster of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoteClusterStatus {
    /// The cluster name (the name of its file in the configuration directory).
    pub name: ClusterName,
    /// A session with the remote kvstore is up and its cluster configuration was accepted.
    pub connected: bool,
    /// Connected with a valid cluster configuration (upstream's readiness).
    pub ready: bool,
    /// What the connection is doing now, or why it is down.
    pub status: String,
    /// The remote's cluster configuration, once one was read.
    pub config: Option<RemoteClusterConfigStatus>,
    /// Which resources completed their initial synchronisation in the current session.
    pub synced: RemoteClusterSynced,
    pub num_nodes: u64,
    /// ipcache entries imported from the cluster.
    pub num_endpoints: u64,
    pub num_identities: u64,
    /// Services of the cluster marked `shared`.
    pub num_shared_services: u64,
    /// Failed connection attempts and lost sessions since the cluster was added.
    pub num_failures: u64,
    /// When the last failure happened (RFC 3339).
    pub last_failure: Option<String>,
    pub last_failure_message: Option<String>,
}

impl RemoteClusterStatus {
    pub(crate) fn new(name: ClusterName) -> Self {
        RemoteClusterStatus {
            name,
            connected: false,
            ready: false,
            status: "waiting for initial connection to be established".to_owned(),
            config: None,
            synced: RemoteClusterSynced::default(),
            num_nodes: 0,
            num_endpoints: 0,
            num_identities: 0,
            num_shared_services: 0,
            num_failures: 0,
            last_failure: None,
            last_failure_message: None,
        }
    }
}

/// The cluster configuration of a remote cluster (upstream's `RemoteClusterConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoteClusterConfigStatus {
    /// Whether a cluster configuration is required (always, here).
    pub required: bool,
    /// Whether it was read.
    pub retrieved: bool,
    pub cluster_id: u32,
    /// The data is a kvstoremesh cache (`cilium/cache/...`).
    pub kvstoremesh: bool,
    /// The cluster writes sync canaries.
    pub sync_canaries: bool,
}

/// Initial synchronisation per resource (upstream's `RemoteClusterSynced`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoteClusterSynced {
    pub nodes: bool,
    pub endpoints: bool,
    pub identities: bool,
    pub services: bool,
}
