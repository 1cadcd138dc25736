//! Hubble: what the network did, as flows (DESIGN 4.9).
//!
//! The datapath's monitor events become `flow.Flow`s (the upstream protobuf, from `proto`),
//! enriched with pod names, namespaces, labels and identities; a ring buffer keeps the most
//! recent ones; the Observer service serves them with upstream's filters; the Peer service
//! lists every node's Hubble address; `hubble-relay` merges every node's stream; the printer
//! renders flows the way the `hubble` CLI does.
//!
//! # Layout
//! - [`parser`]: `MonitorEvent` -> `flow.Flow` (upstream's threefour semantics), enriched
//!   through the [`parser::Enricher`] trait; [`enrich`]: the agent's concurrent cache of
//!   endpoints, ipcache entries and identity labels behind it.
//! - [`filter`]: `FlowFilter` whitelists/blacklists compiled once, matched without allocating;
//!   unsupported or invalid filters are `InvalidArgument`.
//! - [`ring`]: the flow ring buffer (2^n-1 slots); followers that fall behind get lost-event
//!   counts instead of blocking the writer.
//! - [`observer`]: the Observer gRPC service of one node over the ring; [`peer`]: the Peer
//!   service listing every node's Hubble address; [`metrics`]: `hubble_*` Prometheus metrics.
//! - [`relay`]: hubble-relay: peers from Peer services, one connection per node with backoff,
//!   streams merged in time order through a bounded sort buffer, node status events.
//! - [`printer`]: `hubble observe` output (compact, protojson, table) and status/node lists.
//!
//! Architecture invariant: protobuf types stay inside Hubble (this crate, the agent's
//! `hubble_server` glue and the Hubble binaries): the agent's actors hand it monitor events and
//! lookups, never flows. A slow gRPC client never slows the datapath event reader.

pub mod enrich;
pub mod filter;
pub mod metrics;
pub mod observer;
pub mod parser;
pub mod peer;
pub mod printer;
pub mod relay;
pub mod ring;
