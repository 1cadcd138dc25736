//! How the mesh is configured and wired: the settings, the [`Connector`] that turns a remote
//! cluster's configuration file into a kvstore client, and the recipients the imported state
//! goes to.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use actors::clusterstate::messages::RemoteServices;
use actors::identity::RemoteIdentities;
use actors::ipcache::{DeleteIp, UpsertIp};
use actors::node::RemoteNodes;
use async_trait::async_trait;
use kvstore::Backend;
use kvstore::keys::HEARTBEAT_TIMEOUT;
use model::identity::{ClusterId, ClusterName};

/// Opens a client to a remote cluster's kvstore. The agent's implementation
/// (`cilium_cmd::kvstore_mode::EtcdConnector`) reads the etcd configuration file and connects
/// to etcd; tests map file names to memory stores. Keeping this a trait keeps etcd-client out
/// of this crate.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    /// Connects to the kvstore of `cluster`, configured by the file at `config_path`.
    async fn connect(
        &self,
        cluster: &ClusterName,
        config_path: &Path,
    ) -> Result<Arc<dyn Backend>, kvstore::Error>;
}

/// Exponential backoff between connection attempts to one remote cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectBackoff {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait; each further failure doubles the wait up to this.
    pub max: Duration,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        ReconnectBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// The settings of the mesh.
#[derive(Debug, Clone)]
pub struct ClusterMeshConfig {
    /// `--clustermesh-config`: one etcd configuration file per remote cluster, named after it.
    pub config_dir: PathBuf,
    /// This cluster's name; a file with this name is skipped.
    pub local_cluster: ClusterName,
    /// This cluster's id; a remote cluster with the same id is refused.
    pub local_cluster_id: ClusterId,
    /// How often the directory is read for added, changed and removed files.
    pub poll_interval: Duration,
    /// Silence of the remote's `cilium/.heartbeat` after which the session counts as lost.
    pub heartbeat_timeout: Duration,
    /// How often the remote kvstore is asked for its status while a session is up. Watches
    /// resume by themselves after a reconnect, so they never report an etcd that stopped
    /// answering; this check does (upstream's etcd status checker).
    pub status_check_interval: Duration,
    /// Consecutive failed status checks (error or no answer within the interval) after which
    /// the session counts as lost.
    pub status_check_failures: u32,
    /// Bound on connecting plus reading the cluster configuration.
    pub connect_timeout: Duration,
    pub backoff: ReconnectBackoff,
    /// How long the state of a disconnected cluster is kept before it is drained; `None` keeps
    /// it until the cluster reconnects or its file is removed (upstream's cache TTL of 0).
    pub drain_timeout: Option<Duration>,
}

impl ClusterMeshConfig {
    /// The defaults: poll every second, upstream's 2-minute heartbeat window, a status check
    /// every 5 s (lost after 3 failures in a row), 1 s to 30 s backoff, and a 5-minute drain
    /// timeout.
    pub fn new(
        config_dir: PathBuf,
        local_cluster: ClusterName,
        local_cluster_id: ClusterId,
    ) -> Self {
        ClusterMeshConfig {
            config_dir,
            local_cluster,
            local_cluster_id,
            poll_interval: Duration::from_secs(1),
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
            status_check_interval: Duration::from_secs(5),
            status_check_failures: 3,
            connect_timeout: Duration::from_secs(60),
            backoff: ReconnectBackoff::default(),
            drain_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// Where imported state goes. Each remote cluster sends additions and removals; draining a
/// cluster sends removals for everything it had imported.
#[derive(Debug, Clone)]
pub struct ClusterMeshOutputs {
    /// The identity actor.
    pub identities: Recipient<RemoteIdentities>,
    /// The node manager.
    pub nodes: Recipient<RemoteNodes>,
    /// The service watcher (global services).
    pub services: Recipient<RemoteServices>,
    /// The ipcache, with [`actors::ipcache::Source::ClusterMesh`] claims.
    pub ipcache_upsert: Recipient<UpsertIp>,
    pub ipcache_delete: Recipient<DeleteIp>,
}
