//! The node manager (peers): this node's record in the kvstore and the routes to every other
//! node's pods.
//!
//! **Owns** the local node record and its publication under
//! `cilium/state/nodes/v1/<cluster>/<name>` with the agent's lease; the view of the other nodes
//! of the cluster, read from the same prefix; the routes to their pod CIDRs (one
//! [`datapath::routes::NodeRoute`] per CIDR, native or VXLAN as the
//! [`datapath::routes::NodeRoutes`] it drives was built); and the ipcache claims on node
//! addresses: every peer's address as `reserved:remote-node`, this node's as `reserved:host`.
//!
//! Peers of remote clusters of the mesh ([`RemoteNodes`], from the clustermesh actors) are
//! treated exactly like peers of the local cluster (routes to their pod CIDRs over the shared
//! underlay, `reserved:remote-node` claims), keyed by cluster and name ([`PeerId`]) since node
//! names are unique only within a cluster. Only the clustermesh removes them: the local
//! listing never does.
//!
//! **Takes** ([`messages`]): [`NodeLeaseChanged`] (write the record again under a new lease),
//! [`UpdateLocalNode`], [`RemoteNodes`], [`ListNodes`] (`GET /cluster/nodes`, remote nodes
//! included), [`Dump`]. **Sends**
//! [`crate::ipcache::UpsertIp`] / [`crate::ipcache::DeleteIp`] with source
//! [`NODE_IP_SOURCE`] to the ipcache.
//!
//! Routes and neighbour entries are kernel networking state, not BPF maps, so the manager
//! calls the `NodeRoutes` trait itself; the Datapath actor stays the only writer of BPF maps.
//!
//! Invariants:
//! - The kvstore being unreachable never removes a route or a claim: only a delete event, or
//!   a complete re-listing that no longer contains the peer, does; for a remote cluster's
//!   peer only a [`RemoteNodes`] removal does.
//! - One route operation is in flight at a time; installs run before removals; a failed
//!   operation is retried with backoff and shows in the dump with its error.
//! - Publication is retried with backoff until it succeeds; a record change or a new lease
//!   during a write is written right after it.
//! - Malformed node records are skipped with a warning (the typed store's watch does that)
//!   and do not disturb the other peers.
//!
//! Layout: [`state`] the logic (pure), [`actor`] the actix glue.

pub mod actor;
pub mod messages;
pub mod state;

pub use actor::{
    NODE_IP_SOURCE, NodeIpcacheOutputs, NodeKvstoreConfig, NodeManager, NodeManagerConfig,
};
pub use messages::{
    Dump, ListNodes, NodeLeaseChanged, NodeManagerDump, PublishDump, RemoteNodes, UpdateLocalNode,
};
pub use state::{NodeName, PeerDump, PeerId, PublishStatus, RouteDump, RouteOp, RouteStatus};
