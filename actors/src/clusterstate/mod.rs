//! (ext) Cluster-wide desired state from the kvstore, for clusters without Kubernetes
//! (DESIGN 4.5): the `cilium` cluster CLI writes policies and services to etcd, and on every
//! agent these watchers hand them to the policy repository and the service manager.
//!
//! # What it owns
//! - [`PolicyWatcher`]: watches `cilium/config/policies/v1/<namespace>/<name>` (one policy
//!   document as JSON per key, cluster-wide policies under [`CLUSTERWIDE_NAMESPACE`], see
//!   [`layout`]) and owns the record of which keys it imported ([`ImportedPolicies`],
//!   persisted in the state dir as [`IMPORTED_POLICIES_FILE`]).
//! - [`ServiceWatcher`]: watches `cilium/state/services/v1/<local cluster>/<namespace>/<name>`
//!   (upstream `ClusterService` records) and owns the mapping key -> frontends -> service
//!   ids, the frontends persisted as [`ServiceRecord`] ([`SERVICE_RECORD_FILE`]). It also
//!   takes [`RemoteServices`] from the clustermesh actors and merges remote clusters'
//!   `shared` records into the local records marked global (`includeExternal`), with the
//!   affinity of the local record's [`AFFINITY_LABEL`] label (ext: upstream's
//!   `service.cilium.io/affinity` annotation; `local | remote | none`), see
//!   [`ServiceWatchState`]. Remote records are not persisted: after a restart the
//!   clustermesh sends them again.
//!
//! # Messages
//! Both take [`Dump`]; the service watcher also takes [`RemoteServices`]. The policy watcher sends [`PolicyImport`](crate::policy::PolicyImport)
//! (one document per key) and [`PolicyDelete`](crate::policy::PolicyDelete) (by kind, name and
//! namespace labels); the service watcher sends
//! [`UpsertServiceApi`](crate::service::UpsertServiceApi) (one per frontend IP:port, ids
//! allocated by the manager) and [`DeleteServiceApi`](crate::service::DeleteServiceApi).
//!
//! # Invariants
//! - Only a completed listing removes anything: keys applied earlier that a listing (the
//!   first after start, or after a watch had to be re-opened) does not have are removed.
//!   While the kvstore is unreachable no listing completes, so nothing is removed.
//! - A value that does not decode, validate or pass the support check is skipped with a
//!   warning naming the key and the error, and changes nothing: the last good version of
//!   that key stays enforced (as upstream keeps the last good policy).
//! - State restored at restart is covered: the repository restores its rules from its state
//!   file and the service manager adopts the datapath's services, so each watcher keeps a
//!   record of what it applied in the state dir, and removes what the first listing after
//!   the restart lacks. Keys are recorded before they are applied and dropped only after
//!   they are removed.
//!
//! Known overlap: a kvstore policy and one imported through the agent API with the same kind,
//! name and namespace replace each other; the same holds for services with the same frontend.
//!
//! # Layout
//! - [`layout`]: key layout and value codec of policies, shared with the `cilium` CLI;
//! - [`state`]: both watchers as pure state machines;
//! - [`messages`]: errors, [`Dump`] and its snapshot;
//! - [`actor`]: the actix glue.

pub mod actor;
pub mod layout;
pub mod messages;
pub mod state;

use std::path::Path;

pub use actor::{
    PolicyWatcher, PolicyWatcherConfig, PolicyWatcherOutputs, ServiceWatcher, ServiceWatcherConfig,
    ServiceWatcherOutputs,
};
pub use layout::{CLUSTERWIDE_NAMESPACE, PolicyRef, decode_policy, encode_policy};
pub use messages::{
    AppliedKey, ClusterStateDump, ClusterStateError, Dump, RemoteServiceCount, RemoteServices,
    SkippedKey,
};
pub use state::{
    AFFINITY_LABEL, ImportedPolicies, ImportedPolicy, PolicyWatchState, ServiceAffinity,
    ServiceRecord, ServiceWatchState, frontends_of, policy_rule_labels, services_prefix,
};

use crate::persist::{JsonFileStore, MemorySnapshotStore};

/// The file name of the policy watcher's record in the agent's state directory.
pub const IMPORTED_POLICIES_FILE: &str = "kvstore-policies.json";

/// The policy watcher's record in a JSON file, replaced atomically.
pub type FileImportedPoliciesStore = JsonFileStore<ImportedPolicies>;

/// The policy watcher's record in memory, for tests and the simulation.
pub type MemoryImportedPoliciesStore = MemorySnapshotStore<ImportedPolicies>;

/// The file name of the service watcher's record in the agent's state directory.
pub const SERVICE_RECORD_FILE: &str = "kvstore-services.json";

/// The service watcher's record in a JSON file, replaced atomically.
pub type FileServiceRecordStore = JsonFileStore<ServiceRecord>;

/// The service watcher's record in memory, for tests and the simulation.
pub type MemoryServiceRecordStore = MemorySnapshotStore<ServiceRecord>;

impl JsonFileStore<ImportedPolicies> {
    /// The record at [`IMPORTED_POLICIES_FILE`] in the agent's state directory.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(
            state_dir.join(IMPORTED_POLICIES_FILE),
            "kvstore policy watcher state",
        )
    }
}

impl JsonFileStore<ServiceRecord> {
    /// The record at [`SERVICE_RECORD_FILE`] in the agent's state directory.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(
            state_dir.join(SERVICE_RECORD_FILE),
            "kvstore service watcher state",
        )
    }
}
