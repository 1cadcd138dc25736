//! The messages the Datapath actor takes, its errors, and the snapshot it answers `Dump` with.
//! Plain data: every message can be built, cloned and compared in a test.

use std::collections::BTreeMap;
use std::time::Duration;

use actix::Message;
use serde::{Deserialize, Serialize};

use crate::api::{
    Backend4Value, BackendId, BackendSelection, CtGcStats, DatapathError, EndpointAttachment,
    EndpointId, EndpointInfo, EndpointKey, Frontend, IpcacheKey, MapKey, MapName, MapValue,
    MetricEntry, PolicyEntry, PolicyKey, RemoteEndpointInfo, RevNatId, ServiceFlags,
};

/// Errors the Datapath actor returns to its callers. Failed map writes are not among them:
/// those become an entry status and a retry.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("backend {id} is {existing} for service {user}, cannot also be {requested}")]
    BackendConflict {
        id: BackendId,
        existing: Backend4Value,
        requested: Backend4Value,
        user: Frontend,
    },
    #[error("rev-nat index {id} already belongs to service {owner}")]
    RevNatConflict { id: RevNatId, owner: Frontend },
    #[error("rev-nat index 0 means no reverse nat and cannot name service {frontend}")]
    ZeroRevNat { frontend: Frontend },
    #[error("service {frontend} has {count} backends, more than the 65535 slots of a service")]
    TooManyBackends { frontend: Frontend, count: usize },
    /// The object could not be applied; the actor keeps retrying it with backoff.
    #[error("{object} is not applied after {attempts} attempts: {last_error}")]
    NotApplied {
        object: String,
        attempts: u32,
        last_error: String,
    },
    /// The object waits for another object that could not be applied (an attachment for its
    /// endpoint's policy map).
    #[error("{object} waits for {blocked_by}")]
    Blocked { object: String, blocked_by: String },
    #[error("datapath operation failed")]
    Datapath(#[from] DatapathError),
}

/// A service as the service manager hands it over, ids included: the service manager
/// allocates backend ids and rev-NAT indices (as upstream's does), because they must stay
/// stable across agent restarts and be shared by every frontend that uses the same backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub frontend: Frontend,
    pub rev_nat: RevNatId,
    /// In slot order: the first backend is slot 1.
    pub backends: Vec<(BackendId, Backend4Value)>,
    #[serde(default)]
    pub selection: BackendSelection,
    #[serde(default)]
    pub flags: ServiceFlags,
}

/// Replaces the whole policy of one endpoint: afterwards its policy map holds exactly these
/// entries. Creates the policy map if needed.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct SetEndpointPolicy {
    pub endpoint: EndpointId,
    pub entries: BTreeMap<PolicyKey, PolicyEntry>,
}

/// Adds or changes ipcache entries.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct UpsertIpcache {
    pub entries: Vec<(IpcacheKey, RemoteEndpointInfo)>,
}

/// Removes ipcache entries; removing an entry that is not there is not an error.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct DeleteIpcache {
    pub keys: Vec<IpcacheKey>,
}

/// Adds or changes `cilium_lxc` entries (local endpoints by address).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct UpsertLxc {
    pub entries: Vec<(EndpointKey, EndpointInfo)>,
}

/// Removes `cilium_lxc` entries.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct DeleteLxc {
    pub keys: Vec<EndpointKey>,
}

/// Adds or replaces a service (by frontend) with its backends.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<(), ReconcileError>")]
pub struct UpsertService(pub ServiceSpec);

/// Removes a service; backends no other service uses go with it.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct DeleteService {
    pub frontend: Frontend,
}

/// Attaches an endpoint's programs, after making sure its policy map exists. Answers once the
/// attachment is applied, or with the error that keeps it from being applied (the actor keeps
/// retrying until the endpoint is detached).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<(), ReconcileError>")]
pub struct AttachEndpoint(pub EndpointAttachment);

/// Detaches an endpoint's programs and removes its policy map. Answers once detached.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<(), ReconcileError>")]
pub struct DetachEndpoint {
    pub endpoint: EndpointId,
}

/// Every source of desired state has sent its initial state: entries found in the pinned maps
/// that nobody asked for may now be pruned. Until then adopted entries are left alone, so a
/// restarting agent never flushes what the datapath is enforcing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct InitialSyncDone;

/// Runs one conntrack garbage-collection pass now (the actor also runs them periodically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<CtGcStats, ReconcileError>")]
pub struct ConntrackGc;

/// Reads the `cilium_metrics` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<MetricEntry>, ReconcileError>")]
pub struct ReadMetrics;

/// Lists what the kernel holds in one map (`cilium-dbg bpf ... list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<(MapKey, MapValue)>, ReconcileError>")]
pub struct ListMap {
    pub map: MapName,
}

/// Asks for a snapshot of desired state and per-object status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "DatapathDump")]
pub struct Dump;

/// Where an object stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ObjectStatus {
    /// Desired and actual differ; an operation is due.
    Pending,
    /// The kernel holds what is desired.
    Applied,
    /// Found in the pinned maps at start; kept until the initial sync decides.
    Adopted,
    /// The last attempt failed; the next one is due at `next_retry` (time since the actor
    /// started).
    Failed {
        attempts: u32,
        last_error: String,
        next_retry: Duration,
    },
}

/// One map entry in a [`DatapathDump`]. `desired: None` with status pending is a delete in
/// progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDump {
    pub key: MapKey,
    pub desired: Option<MapValue>,
    pub status: ObjectStatus,
}

/// One policy map in a [`DatapathDump`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMapDump {
    pub endpoint: EndpointId,
    pub desired: bool,
    pub status: ObjectStatus,
}

/// One endpoint attachment in a [`DatapathDump`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentDump {
    pub endpoint: EndpointId,
    pub desired: Option<EndpointAttachment>,
    pub status: ObjectStatus,
}

/// The Datapath actor's state as the CLI and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathDump {
    /// Whether [`InitialSyncDone`] has arrived (pruning is enabled).
    pub synced: bool,
    pub policy_maps: Vec<PolicyMapDump>,
    pub attachments: Vec<AttachmentDump>,
    pub entries: Vec<EntryDump>,
    pub services: Vec<ServiceSpec>,
}
