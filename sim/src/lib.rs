//! The simulation harness: the production actors of many nodes and clusters on one paused-time
//! runtime, with the memory kvstore and the recording fake datapath.
//!
//! Arrives with the simulation issue.
