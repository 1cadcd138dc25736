//! The simulation harness: the production actors of many nodes and clusters on one paused-time
//! runtime, with the memory kvstore and the recording fake datapath (DESIGN 7).
//!
//! A [`Scenario`] says how big the world is and what happens to it; [`Scenario::run`] builds
//! it (one [`node::SimNode`] per node, one memory kvstore per cluster, optionally ClusterMesh
//! between the clusters), applies every [`Step`], waits for quiescence after each, lets the
//! [`oracle`] check every node, and returns a [`Report`]. The same seed gives the same run and
//! the same final hash; a failing check names the seed that replays it.
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
//! - [`scenario`]: scenarios and steps, built-in scenarios by name;
//! - [`world`]: the clusters, the desired state, quiescence, the run;
//! - [`node`]: one node's production actors, wired as the agent wires them;
//! - [`mesh`]: ClusterMesh between the simulated clusters;
//! - [`oracle`]: expected state from desired state, and the comparison;
//! - [`backend`], [`datapath`]: counting wrappers over the memory kvstore and the fake
//!   datapath (the kvstore one also cuts nodes off); [`fault`]: bugs injected between actors;
//! - [`report`]: what a run reports.

pub mod backend;
pub mod datapath;
pub mod fault;
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
