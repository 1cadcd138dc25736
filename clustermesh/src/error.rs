//! Why a remote cluster could not be used, and why one imported value was rejected.

use model::identity::{ClusterId, ClusterName, NumericIdentity};

/// A failed connection attempt or a lost session; the cluster is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to the kvstore: {0}")]
    Connect(#[source] kvstore::Error),
    #[error("connecting and reading the cluster configuration took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("cannot read the cluster configuration: {0}")]
    ReadClusterConfig(#[source] kvstore::Error),
    #[error("cluster configuration cilium/cluster-config/{cluster} is missing")]
    MissingClusterConfig { cluster: ClusterName },
    #[error("cluster configuration of {cluster} has invalid cluster id {id} (must be 1-255)")]
    InvalidClusterId { cluster: ClusterName, id: u32 },
    #[error("cluster {cluster} has cluster id {id}, the id of the local cluster")]
    LocalClusterId { cluster: ClusterName, id: ClusterId },
    #[error("cluster {cluster} has cluster id {id}, already used by remote cluster {other}")]
    DuplicateClusterId {
        cluster: ClusterName,
        id: ClusterId,
        other: ClusterName,
    },
    #[error("cannot watch {prefix}: {source}")]
    Watch {
        prefix: String,
        #[source]
        source: kvstore::Error,
    },
    #[error("watch of {prefix} ended")]
    WatchEnded { prefix: String },
    #[error("heartbeat cilium/.heartbeat not updated for more than {0:?}")]
    HeartbeatTimeout(std::time::Duration),
    #[error("the kvstore failed {failures} status checks in a row: {message}")]
    StatusCheck { failures: u32, message: String },
}

/// A value of a remote cluster that is not imported (logged as a warning, naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectError {
    #[error("cannot decode value of {key}: {message}")]
    Decode { key: String, message: String },
    #[error("identity {id} of {key} is outside the range of cluster id {cluster_id}")]
    IdentityOutOfRange {
        key: String,
        id: NumericIdentity,
        cluster_id: ClusterId,
    },
    #[error("{key} names cluster {found:?} instead of {expected}")]
    ClusterName {
        key: String,
        expected: ClusterName,
        found: String,
    },
    #[error("{key} names cluster id {found} instead of {expected}")]
    ClusterId {
        key: String,
        expected: ClusterId,
        found: u32,
    },
    #[error("{key} holds a value whose own key name is {name:?}")]
    KeyMismatch { key: String, name: String },
}
