//! The identity allocator actor: label sets to numeric security identities, and the node's
//! view of every identity in the cluster.
//!
//! **Owns** the node's references to identities and the set of identities it has announced:
//! the reserved ones, the cluster's (from the kvstore allocator and its master keys, or
//! allocated in process from the cluster's range when there is no kvstore, DESIGN 4.6), and
//! local-scope CIDR identities (bit 24 set, never in the kvstore, allocated in process like
//! upstream's local identity cache, but able to take a preferred id so that a restart keeps
//! them).
//!
//! **Takes** ([`messages`]): [`AllocateIdentity`], [`ReleaseIdentity`],
//! [`AllocateCidrIdentities`], [`ReleaseCidrIdentities`], the policy repository's
//! [`CidrIdentitiesWanted`](crate::policy::CidrIdentitiesWanted), [`RestoreCidrIdentities`],
//! [`LookupIdentity`], [`ListIdentities`], [`Dump`], and [`RemoteIdentities`] from the
//! clustermesh actors. **Sends** `UpsertIp`/`DeleteIp` (source
//! `generated`) for CIDR identities to the ipcache when given one
//! ([`IdentityActor::with_ipcache`]), and [`IdentitiesChanged`] to the subscribers given at
//! construction: the reserved identities once at start, then every identity that appears
//! (allocated here, or by another node: the actor watches the master keys
//! `cilium/state/identities/v1/id/<n>` itself, so no change to the kvstore allocator was
//! needed), changes labels, or goes away (its master key garbage-collected, the last reference
//! to an in-process or CIDR identity released).
//!
//! Invariants:
//! - Kvstore calls never block the actor: they run as futures on its context. Operations on
//!   one label set run one at a time in arrival order, so an allocation never races with a
//!   release of the same labels; different label sets proceed concurrently.
//! - Subscribers hear of a new identity before its allocation is answered.
//! - An identity this node references is never announced as removed.
//! - Identities outside the cluster's range found in the kvstore are ignored.
//! - Remote clusters' identities ([`RemoteIdentities`]) are kept per cluster and only inside
//!   that cluster's range; a remote cluster claiming this cluster's id or cluster 0 is
//!   ignored. Cluster ranges are disjoint, so a remote identity never collides with one
//!   allocated here. They hold no references: they go when the sender removes them (which
//!   is how a drained cluster leaves).
//!
//! Multi-cluster policy (DESIGN 4.7, issue 7): remote identities carry
//! `k8s:io.cilium.k8s.policy.cluster=<remote>`, so the policy repository selects them only
//! with selectors naming that cluster (selectors without the cluster label are narrowed to
//! the local cluster there). Upstream has no `cluster-mesh` entity: its entity enum is
//! `all, world, cluster, host, init, ingress, unmanaged, remote-node, health, none,
//! kube-apiserver`, and `cluster` means the local cluster's pods plus the node-ish reserved
//! identities (`InitEntities(clusterName)` adds only the local cluster's label). Remote
//! clusters' pods are reached with `fromEndpoints`/`toEndpoints` naming
//! `io.cilium.k8s.policy.cluster`, or with `all`.
//! - A restored endpoint or CIDR prefix gets the id it had when that id is free (local mode
//!   and local scope) or when the kvstore still binds it to the same labels.
//! - With an ipcache, a CIDR identity is in it exactly while the identity exists; it is
//!   published before it is upserted and deleted before it is published removed (see
//!   [`actor`]).
//!
//! Layout: [`state`] is the bookkeeping (pure), [`actor`] the actix glue.

pub mod actor;
pub mod messages;
pub mod state;

pub use actor::{IdentityActor, IdentityBackend, IdentityConfig};
pub use messages::{
    AllocateCidrIdentities, AllocateIdentity, AllocatedIdentity, Dump, Generation,
    IdentitiesChanged, IdentityDump, IdentityError, IdentityInfo, IdentityMode, IdentityReference,
    ListIdentities, LookupIdentity, ReleaseCidrIdentities, ReleaseIdentity, RemoteIdentities,
    RemoteIdentityCount, RestoreCidrIdentities,
};
pub use state::{IdentityState, InProcessAllocator, KeyedQueue};
