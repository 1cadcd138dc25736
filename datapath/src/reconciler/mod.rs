//! The Datapath actor: the only writer of BPF maps, as a reconciler (Cilium's statedb
//! reconcilers).
//!
//! **Owns** a `Box<dyn Datapath>` (aya in production, the fake in tests and `sim/`) and the
//! desired state of every map it writes: per-endpoint policy maps and their entries, the
//! ipcache, `cilium_lxc`, the lb4 services/backends/rev-NAT maps, and endpoint attachments.
//! Conntrack entries belong to the BPF programs; the actor only garbage-collects them.
//!
//! **Takes** ([`messages`]): [`SetEndpointPolicy`] (the full set for one endpoint),
//! [`UpsertIpcache`]/[`DeleteIpcache`], [`UpsertLxc`]/[`DeleteLxc`],
//! [`UpsertService`]/[`DeleteService`] (a frontend with its backends; backend ids and rev-NAT
//! indices come from the service manager, which allocates them as upstream's does),
//! [`AttachEndpoint`]/[`DetachEndpoint`], [`InitialSyncDone`], and the reads [`Dump`],
//! [`ListMap`], [`ReadMetrics`], [`ConntrackGc`]. It sends nothing: callers that need to know
//! when their state is applied read the reply (attachments) or the [`Dump`].
//!
//! Invariants:
//! - Only objects whose desired value differs from what the kernel holds are written; setting
//!   the same desired state again costs no syscall.
//! - A failed operation becomes a `failed` status and is retried with exponential backoff
//!   until it succeeds or is no longer desired; the desired state is never dropped because a
//!   write failed.
//! - On start the actor lists the pinned maps and adopts what it finds without rewriting it.
//!   Entries nobody claims are pruned only after [`InitialSyncDone`], so a restarting agent
//!   never flushes what the datapath enforces, and a kvstore outage (no new desired state)
//!   never removes anything.
//! - Writes are ordered so the datapath never points at a missing entry: policy maps before
//!   their entries and attachments; backends and rev-NAT before service slots, slots before
//!   the master entry that counts them; deletions in reverse.
//!
//! Layout: [`state`] is the pure state machine (no IO, time passed in), [`driver`] runs its
//! operations against a `Datapath`, [`actor`] is the actix glue (handlers, retry timer,
//! periodic resync and conntrack GC).

pub mod actor;
pub mod driver;
pub mod messages;
pub mod state;

pub use actor::{DatapathActor, DatapathActorConfig};
pub use messages::{
    AttachEndpoint, AttachmentDump, ConntrackGc, DatapathDump, DeleteIpcache, DeleteLxc,
    DeleteService, DetachEndpoint, Dump, EntryDump, InitialSyncDone, ListMap, ObjectStatus,
    PolicyMapDump, ReadMetrics, ReconcileError, ServiceSpec, SetEndpointPolicy, UpsertIpcache,
    UpsertLxc, UpsertService,
};
pub use state::{ObjectKey, Op, ReconcilerState, RetryConfig};

#[cfg(test)]
mod tests;
