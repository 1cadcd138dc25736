//! Hubble: what the network did, as flows (DESIGN 4.9).
//!
//! The datapath's monitor events become `flow.Flow`s (the upstream protobuf, from `proto`),
//! enriched with pod names, namespaces, labels and identities; a ring buffer keeps the most
//! recent ones; the Observer service serves them with upstream's filters; the Peer service
//! lists every node's Hubble address; `hubble-relay` merges every node's stream; the printer
//! renders flows the way the `hubble` CLI does.
//!
//! Architecture invariant: protobuf types stop at this crate's boundary: the rest of the agent
//! hands it monitor events and lookups, never flows.

pub mod enrich;
pub mod filter;
pub mod metrics;
pub mod observer;
pub mod parser;
pub mod peer;
pub mod printer;
pub mod relay;
pub mod ring;
