//! The agent's binaries and what they share: `cilium-agent` (flags, actor wiring, REST API,
//! metrics), `cilium-dbg` (the node CLI) and `cilium-cni` (the CNI plugin).
//!
//! # Layout
//! - [`api`]: the REST API's bodies, with upstream's JSON field names.
//! - [`daemon`]: starts the actors and wires their recipients; usable over the fake datapath.
//! - [`hubble_server`]: the embedded Hubble: datapath events to flows, served over gRPC.
//! - [`kvstore_mode`]: the node record and the wait for an operator-allocated pod CIDR.
//! - [`lab`]: `cilium lab`, a local multi-node, multi-cluster installation in namespaces.
//! - [`server`]: the axum router over the unix socket (base `/v1`), errors as JSON.
//! - [`metrics`]: the Prometheus text the agent serves, computed from the actors on scrape.
//! - [`client`]: the HTTP-over-unix-socket client cilium-dbg and cilium-cni use.
//! - [`cni`]: CNI spec 1.0.0 types and the plugin's logic, apart from process IO.
//!
//! The binaries under `src/bin/` parse flags and call into these modules.

pub mod api;
pub mod client;
pub mod cluster_cli;
pub mod cni;
pub mod daemon;
pub mod hubble_server;
pub mod kvstore_mode;
pub mod lab;
pub mod metrics;
pub mod server;
