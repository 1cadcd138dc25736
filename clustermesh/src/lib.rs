//! ClusterMesh: this agent imports what every remote cluster of the mesh publishes in its own
//! kvstore (nodes, identities, ipcache entries, services) and feeds it to the local actors, so
//! that pods reach remote pods, policies select them, and global services balance across
//! clusters (DESIGN 4.5, 4.6).
//!
//! The crate links neither etcd-client nor aya: the agent passes a [`Connector`] that builds
//! etcd clients, tests pass memory stores.
//!
//! # Layout
//! - [`config`]: [`ClusterMeshConfig`], the [`Connector`] trait and [`ClusterMeshOutputs`].
//! - [`mesh`]: the [`ClusterMesh`] actor that follows `--clustermesh-config` and answers
//!   [`ClusterMeshStatus`].
//! - `remote`: one task per remote cluster (connect, validate, watch, heartbeat, backoff,
//!   drain).
//! - `import`: the imported state of one remote cluster as a pure state machine (validation,
//!   differences after a re-list, drain).
//! - `dir`: reading the configuration directory.
//! - [`apiserver`]: clustermesh-apiserver's publisher (cluster config, sync canaries, heartbeat).
//! - [`kvstoremesh`]: caches remote clusters into the local etcd under `cilium/cache/...`.
//! - [`status`]: [`RemoteClusterStatus`] as the REST API and CLI show it.
//! - [`error`]: why a remote cluster could not be used, why a value was rejected.
//!
//! # Starting it
//! The agent (`cmd/src/daemon.rs`) starts one [`ClusterMesh`] actor with a
//! [`ClusterMeshConfig`], [`ClusterMeshOutputs`] holding the recipients of its identity actor,
//! node manager, service watcher and ipcache, and an etcd [`Connector`]
//! (`cilium_cmd::kvstore_mode::EtcdConnector`); [`ClusterMeshStatus`] answers the status of
//! every remote cluster.

pub mod apiserver;
pub mod config;
mod dir;
pub mod error;
mod import;
pub mod kvstoremesh;
pub mod mesh;
mod remote;
pub mod status;

pub use config::{ClusterMeshConfig, ClusterMeshOutputs, Connector, ReconnectBackoff};
pub use error::{ConnectError, RejectError};
pub use mesh::{ClusterMesh, ClusterMeshStatus};
pub use status::{RemoteClusterConfigStatus, RemoteClusterStatus, RemoteClusterSynced};
