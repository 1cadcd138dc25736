//! The simulation harness: the production actors of many nodes and clusters on one paused-time
//! runtime, with the memory kvstore and the recording fake datapath (DESIGN 7).
//!
//! A [`Scenario`] says how big the world is and what happens to it (built in code, picked by
//! name, or read from a YAML file: [`Scenario::from_file`]); [`Scenario::run`] builds it (one
//! [`node::SimNode`] per node, one memory kvstore per cluster, optionally ClusterMesh between
//! the clusters), applies every [`Step`], checks the [`invariant`]s continuously meanwhile,
//! waits for quiescence after each step, lets the [`oracle`] check every node, and returns a
//! [`Report`]. The same seed gives the same run and the same final hash; a failing check names
//! the seed that replays it.
//!
//! ```
//! use std::time::Duration;
//! use sim::{Scenario, Step};
//!
//! let report = Scenario::new()
//!     .clusters(1)
//!     .nodes(3)
//!     .pods_per_node(2)
//!     .step(Step::PodChurn { rate: 2.0, duration: Duration::from_secs(5) })
//!     .run(7)
//!     .expect("the simulation runs");
//! assert!(report.passed(), "{report}");
//! ```
//!
//! # Layout
//! - [`scenario`]: scenarios and steps, built-in scenarios by name, the YAML file format
//!   (durations through `duration`, humantime strings);
//! - [`world`]: the clusters, the desired state, quiescence, the run;
//! - [`node`]: one node's production actors, wired as the agent wires them;
//! - [`mesh`]: ClusterMesh between the simulated clusters;
//! - [`oracle`]: expected state from desired state, and the comparison;
//! - [`invariant`]: what must hold at every moment, not only at quiescent points;
//! - [`backend`], [`datapath`]: counting wrappers over the memory kvstore and the fake
//!   datapath (the kvstore one also cuts nodes off and plays restarts, lost watch events,
//!   slow and failing requests); [`fault`]: bugs injected between actors, failing datapath
//!   writes;
//! - [`external`]: the seam for clusters on a real kvstore ([`Scenario::run_on`]); `etcd`
//!   (feature `etcd`, off by default so the library links no etcd client): a private etcd
//!   per cluster;
//! - [`report`]: what a run reports.

pub mod backend;
pub mod datapath;
mod duration;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod external;
pub mod fault;
pub mod invariant;
pub mod mesh;
pub mod node;
pub mod oracle;
pub mod report;
pub mod scenario;
pub mod world;

pub use fault::NodeFault;
pub use report::Report;
pub use scenario::{BUILTIN_SCENARIOS, Scenario, Step};
pub use world::SimError;
