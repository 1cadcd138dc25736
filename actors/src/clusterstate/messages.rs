//! The watchers' errors, the [`Dump`] message and the snapshots they answer with.

use actix::Message;
use datapath::api::Frontend;
use kvstore::keys::ClusterService;
use model::identity::ClusterName;
use serde::{Deserialize, Serialize};

use crate::persist::StoreError;
use crate::service::ServiceId;

/// Why a kvstore value was not applied, or why a watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStateError {
    #[error("malformed key {key:?}: {reason}")]
    MalformedKey { key: String, reason: String },
    #[error("value of {key:?} is not UTF-8 text")]
    NotUtf8 { key: String },
    /// The value does not parse, validate or pass the support check.
    #[error("policy {key:?}: {source}")]
    InvalidPolicy {
        key: String,
        #[source]
        source: model::policy::PolicyError,
    },
    #[error("policy {key:?} holds {count} documents, expected exactly one")]
    NotOneDocument { key: String, count: usize },
    #[error("policy {key:?} holds {document}, which belongs under another key")]
    KeyMismatch { key: String, document: String },
    /// A cluster service value does not decode (upstream's validation included).
    #[error("service {key:?}: {message}")]
    InvalidService { key: String, message: String },
    #[error("service {key:?} holds {found}, which belongs under another key")]
    ServiceKeyMismatch { key: String, found: String },
    /// The watcher's record of the policies it imported could not be read.
    #[error("the kvstore policy watcher's state could not be loaded")]
    Load(#[source] StoreError),
}

/// The cluster services of a remote cluster of the mesh (from its kvstore, imported by the
/// clustermesh actor of that cluster), sent to the [`ServiceWatcher`](super::ServiceWatcher).
/// A local service marked global (`includeExternal`) gets the backends of every remote
/// cluster whose service of the same namespace and name is `shared`. Draining a remote
/// cluster is a message removing every service it had upserted.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RemoteServices {
    pub cluster: ClusterName,
    pub upserted: Vec<ClusterService>,
    /// `(namespace, name)` of services of `cluster` that are gone.
    pub removed: Vec<(String, String)>,
}

/// Asks a watcher for a snapshot of what it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "ClusterStateDump")]
pub struct Dump;

/// What a watcher applied and skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStateDump {
    /// Whether a listing of the prefix has completed since the watcher started.
    pub synced: bool,
    /// Applied keys (below the watched prefix), in key order.
    pub applied: Vec<AppliedKey>,
    /// Keys whose current value was skipped, with the reason, in key order.
    pub skipped: Vec<SkippedKey>,
    /// Services: how many shared services each remote cluster of the mesh contributes, in
    /// cluster name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteServiceCount>,
}

/// The shared services one remote cluster contributes, as [`ClusterStateDump`] shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteServiceCount {
    pub cluster: String,
    pub services: usize,
}

/// One key a watcher applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedKey {
    /// The key name below the prefix (`<namespace>/<name>`).
    pub key: String,
    /// Policies: the policy kinds whose rules this key may have in the repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Services: the frontends this key produced and their service ids (`None` while a
    /// service recorded by an earlier run has not been seen again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<(Frontend, Option<ServiceId>)>,
}

/// One key a watcher skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedKey {
    pub key: String,
    pub error: String,
}
