//! The ipcache: which security identity every IP address and CIDR prefix has, and which node
//! hosts it.
//!
//! **Owns** every source's claim on every prefix (local endpoints, CIDR identities, other
//! nodes' endpoints from the kvstore, the kube-apiserver, ...). Several sources may claim one
//! prefix; the claim of the highest precedence is the effective entry, in upstream's order
//! (`pkg/source`: kube-apiserver > local > kvstore > custom-resource > k8s > clustermesh >
//! directory > api > generated > restored > unspec). A claim of lower precedence never
//! overrides a higher one, and takes over when the higher one is deleted.
//!
//! **Takes** ([`messages`]): [`UpsertIp`], [`DeleteIp`], [`LookupIp`] (longest prefix match),
//! [`KvstoreLeaseChanged`], [`Generation`], [`Dump`]. **Sends** [`datapath::reconciler::UpsertIpcache`] and
//! [`datapath::reconciler::DeleteIpcache`] to the Datapath actor, only when the datapath form
//! of a prefix's effective entry changes. With kvstore sync ([`sync`]) it also publishes this
//! node's `local` claims under `cilium/state/ip/v1/default/<prefix>` with the agent's lease,
//! and (if configured) reads other nodes' entries back as `kvstore` claims.
//!
//! Invariants:
//! - The datapath holds exactly the effective entry of every claimed prefix.
//! - Writes of one kvstore key land in the order they were made; failed writes are retried
//!   with backoff; a kvstore outage never changes the datapath.
//!
//! Layout: [`source`] the precedence, [`state`] the claims (pure), [`sync`] the kvstore queue,
//! [`actor`] the actix glue.

pub mod actor;
pub mod messages;
pub mod source;
pub mod state;
pub mod sync;

pub use actor::{IpCacheActor, IpCacheConfig, IpCacheOutputs};
pub use messages::{
    DeleteIp, Dump, DumpEntry, Effective, Generation, IpCacheDump, KvstoreLeaseChanged,
    KvstoreSyncDump, LookupIp, LookupResult, UpsertIp,
};
pub use source::Source;
pub use state::{Effect, IpCacheSettings, IpCacheState, IpEntry, K8sMetadata, PackedEntry};
pub use sync::{KvstoreSyncConfig, PublishQueue};
