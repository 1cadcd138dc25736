//! The NodeManager actor's messages and the snapshot it answers `Dump` with.

use actix::Message;
use kvstore::LeaseId;
use kvstore::keys::Node;
use model::identity::ClusterName;
use serde::{Deserialize, Serialize};

use super::state::{PeerDump, PublishStatus, RouteDump};

/// The agent's lease was lost and replaced: the local record is written again under `lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct NodeLeaseChanged {
    pub lease: LeaseId,
}

/// Replaces the local node record (new addresses, pod CIDR, labels) and publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct UpdateLocalNode {
    pub node: Node,
}

/// The nodes of a remote cluster of the mesh (from its kvstore, imported by the clustermesh
/// actor of that cluster). They get routes to their pod CIDRs and `reserved:remote-node`
/// claims on their addresses exactly like the peers of the local cluster; names are per
/// cluster. Draining a remote cluster is a message removing every node it had upserted.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RemoteNodes {
    pub cluster: ClusterName,
    pub upserted: Vec<Node>,
    /// Node names within `cluster`.
    pub removed: Vec<String>,
}

/// Every known node record, the local one first (what `GET /cluster/nodes` lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Vec<Node>")]
pub struct ListNodes;

/// Asks for the manager's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "NodeManagerDump")]
pub struct Dump;

/// The NodeManager's state as the CLI and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeManagerDump {
    pub local: Node,
    pub peers: Vec<PeerDump>,
    pub routes: Vec<RouteDump>,
    /// `None` without a kvstore.
    pub publish: Option<PublishDump>,
    /// Whether a complete listing of the cluster's nodes has been seen.
    pub synced: bool,
}

/// The publication of the local record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishDump {
    /// The full kvstore key of the local record.
    pub key: String,
    /// The lease it is written with (hex, as etcd prints it).
    pub lease: String,
    #[serde(flatten)]
    pub status: PublishStatus,
}
