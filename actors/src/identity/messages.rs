//! The identity actor's messages, errors, and what it publishes.

use actix::Message;
use ipnet::IpNet;
use kvstore::allocator::AllocatorError;
use model::identity::{ClusterId, NumericIdentity};
use model::labels::Labels;
use serde::{Deserialize, Serialize};

/// Returns the identity of a label set (already filtered to security-relevant labels),
/// allocating it on first use, and takes one reference to it. The labels of a reserved
/// identity (`reserved:host`, ...) give that identity without a reference.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<AllocatedIdentity, IdentityError>")]
pub struct AllocateIdentity {
    pub labels: Labels,
    /// The id the labels had before (a restored endpoint's recorded identity), so that its
    /// policy and ipcache entries stay as they are across an agent restart. Without a
    /// kvstore it is taken when it is free or already bound to these labels; in kvstore mode
    /// the kvstore's id for the labels wins and a different one is logged. A mismatch is not
    /// an error: the endpoint gets the id the allocator answers.
    pub preferred: Option<NumericIdentity>,
}

impl AllocateIdentity {
    /// A request without a preferred id (a new endpoint).
    pub fn new(labels: Labels) -> Self {
        AllocateIdentity {
            labels,
            preferred: None,
        }
    }
}

/// Drops one reference to a label set's identity. Answers whether it was the last one.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<bool, IdentityError>")]
pub struct ReleaseIdentity {
    pub labels: Labels,
}

/// Takes a reference to the local-scope (CIDR) identity of every prefix (`0.0.0.0/0` and
/// `::/0` are the world identity). All or nothing: if one fails, none is kept.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<(IpNet, NumericIdentity)>, IdentityError>")]
pub struct AllocateCidrIdentities {
    pub prefixes: Vec<IpNet>,
}

/// Records the local-scope identities prefixes had before an agent restart (read back from
/// the datapath's ipcache map), so that the next allocation of each prefix takes the same id
/// if it is still free: policy-map keys and ipcache entries then stay as they are. Holds no
/// reference; an id handed to another prefix meanwhile is logged and a new one taken.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RestoreCidrIdentities {
    pub identities: Vec<(IpNet, NumericIdentity)>,
}

/// Drops one reference per prefix. Answers the identities that are gone. All or nothing: a
/// prefix without identity fails the call before anything is released.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Vec<NumericIdentity>, IdentityError>")]
pub struct ReleaseCidrIdentities {
    pub prefixes: Vec<IpNet>,
}

/// The labels of an identity (reserved, cluster-wide or local-scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Option<IdentityInfo>")]
pub struct LookupIdentity {
    pub id: NumericIdentity,
}

/// Asks how many changes the identities have seen (each published [`IdentitiesChanged`]): a
/// cheap test of whether a [`ListIdentities`] would differ from the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "u64")]
pub struct Generation;

/// Every identity the node knows, in id order (`cilium-dbg identity list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Vec<IdentityInfo>")]
pub struct ListIdentities;

/// Asks for the actor's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "IdentityDump")]
pub struct Dump;

/// The identities of a remote cluster of the mesh (from its kvstore, imported by the
/// clustermesh actor of that cluster). The sender checked the range already; the actor checks
/// again and drops ids outside `cluster.identity_range()` with a warning. Accepted ones are
/// published to the subscribers as [`IdentitiesChanged`] and served by the lookups and
/// [`Dump`] until they are removed. Draining a remote cluster is a message removing every id
/// it had added.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct RemoteIdentities {
    pub cluster: ClusterId,
    pub added: Vec<(NumericIdentity, Labels)>,
    pub removed: Vec<NumericIdentity>,
}

/// Published to every subscriber when identities appear, change labels, or go away. The
/// reserved identities are published once, when the actor starts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct IdentitiesChanged {
    /// New identities, or identities whose labels changed, in id order.
    pub added: Vec<(NumericIdentity, Labels)>,
    /// Identities that are gone, in id order.
    pub removed: Vec<NumericIdentity>,
}

impl IdentitiesChanged {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The answer to [`AllocateIdentity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatedIdentity {
    pub id: NumericIdentity,
    /// Whether this call created the identity (cluster-wide in kvstore mode).
    pub is_new: bool,
}

/// An identity with its labels, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    pub id: NumericIdentity,
    pub labels: Labels,
}

/// Where identities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    /// Cluster-wide through the kvstore allocator.
    Kvstore,
    /// In process, from the cluster's range (no `--kvstore`).
    Local,
}

/// One identity this node references, with its reference count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityReference {
    pub id: NumericIdentity,
    pub refs: u64,
}

/// The identity actor's state as the CLI and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityDump {
    pub mode: IdentityMode,
    pub cluster_id: ClusterId,
    pub identities: Vec<IdentityInfo>,
    pub references: Vec<IdentityReference>,
    /// Whether the cluster's identities have been listed (always true in local mode).
    pub synced: bool,
    /// Kvstore operations waiting behind another operation on the same labels.
    pub queued_operations: usize,
    /// How many identities each remote cluster of the mesh contributes (they are in
    /// `identities` too), in cluster id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<RemoteIdentityCount>,
}

/// The identities one remote cluster contributes, as [`IdentityDump`] shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteIdentityCount {
    pub cluster_id: ClusterId,
    pub identities: usize,
}

/// Everything that can go wrong allocating or releasing identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("an identity needs at least one label")]
    EmptyLabels,
    #[error("identity range {first}..={last} of cluster {cluster_id} is exhausted")]
    RangeExhausted {
        cluster_id: ClusterId,
        first: NumericIdentity,
        last: NumericIdentity,
    },
    #[error("local-scope identity range {first}..={last} is exhausted")]
    LocalScopeExhausted {
        first: NumericIdentity,
        last: NumericIdentity,
    },
    #[error("labels {labels:?} hold no identity on this node")]
    NotAllocated { labels: String },
    #[error("prefix {prefix} holds no cidr identity on this node")]
    CidrNotAllocated { prefix: IpNet },
    #[error("identity allocation failed")]
    Allocator(#[from] AllocatorError),
    #[error("the identity actor stopped before answering")]
    Stopped,
}
