//! The agent control plane as actors (actix on tokio) exchanging plain-data messages.
//!
//! # Layout
//! Each actor module has the same shape: `mod.rs` (what it owns, what it receives and sends,
//! its invariants), `messages.rs` (plain data), `state.rs` (the logic as a pure state machine,
//! unit-tested without IO) and `actor.rs` (actix glue only). Outputs go to `Recipient`s, so any
//! peer can be replaced by a test probe, and every actor answers `Dump`.
//! - [`identity`]: labels -> numeric identity, cluster-wide through the kvstore allocator or in
//!   process, plus local CIDR identities; publishes identity changes to the policy side.
//! - [`policy`]: the policy repository and selector cache: rules in, per-endpoint policy-map
//!   entries out, updated incrementally when identities, rules or endpoints change.
//! - [`ipcache`]: IP/prefix -> identity with upstream's source precedence, fed to the datapath
//!   and optionally published to the kvstore.
//! - [`service`]: services from the API to the datapath's load-balancing maps, with rev-NAT and
//!   backend id allocation.
//! - [`persist`]: snapshots that survive a restart (IPAM, policy rules), as atomically
//!   replaced JSON files or in memory.
//! - [`ipam`]: host-scope address allocation from the node's pod CIDR, persisted in the state
//!   dir.
//! - [`endpoint`]: the endpoint manager: pod endpoints from creation (address, veth pair,
//!   identity, datapath, policy) to removal, persisted and restored across restarts.
//! - [`node`]: the node manager (peers): this node's record in the kvstore, the other nodes
//!   of the cluster, routes (native or VXLAN) to their pod CIDRs, ipcache claims on node IPs.
//! - [`clusterstate`]: cluster-wide policies and services read from the kvstore (DESIGN 4.5
//!   ext) and handed to the policy repository and the service manager.
//!
//! Architecture invariant: this crate talks to the datapath and the kvstore only through
//! `datapath::api::Datapath` / the Datapath actor's messages and `kvstore::Backend`; it links
//! neither aya nor etcd-client (`.ci/run` checks it).

pub mod clusterstate;
pub mod endpoint;
pub mod identity;
pub mod ipam;
pub mod ipcache;
pub mod node;
pub mod persist;
pub mod policy;
pub mod service;
