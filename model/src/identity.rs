//! Numeric security identities, the reserved identities, cluster ids and cluster names.
//!
//! A numeric identity is 24 bits plus a scope flag, laid out as upstream's `NumericIdentity`:
//!
//! ```text
//!  bits  0-15  identity within the cluster
//!  bits 16-23  cluster id (ClusterMesh; 0 outside a mesh)
//!  bit     24  local scope: CIDR/FQDN identities that never leave the node
//! ```
//!
//! Identities 0-255 are reserved; 1-10 have fixed labels ([`ReservedIdentity`]). The identity
//! allocator hands out ids from [`ClusterId::identity_range`] for global identities and from
//! [`NumericIdentity::local_scope_range`] for node-local ones. Remote clusters' identities are
//! accepted only inside their cluster's range, so clusters cannot forge each other's identities.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::labels::{Label, Labels, reserved};

/// Errors from parsing a numeric identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityParseError {
    #[error("numeric identity is empty")]
    Empty,
    #[error("numeric identity {input:?} has non-digit {ch:?} at byte {position}")]
    InvalidDigit {
        input: String,
        ch: char,
        position: usize,
    },
    #[error("numeric identity {input:?} has a leading zero")]
    LeadingZero { input: String },
    #[error("numeric identity {input:?} does not fit in 32 bits")]
    Overflow { input: String },
}

/// Errors from validating cluster configuration (cluster id and cluster name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("cluster id {input:?} is not a number between 0 and 255")]
    InvalidClusterId { input: String },
    #[error("cluster name is empty")]
    EmptyClusterName,
    #[error("cluster name {name:?} is {len} characters long, more than the maximum of 32")]
    ClusterNameTooLong { name: String, len: usize },
    #[error(
        "cluster name {name:?} has invalid character {ch:?} at byte {position}: only lower-case \
         letters, digits and '-' are allowed"
    )]
    InvalidClusterNameChar {
        name: String,
        ch: char,
        position: usize,
    },
    #[error("cluster name {name:?} must start and end with a lower-case letter or digit")]
    ClusterNameEdge { name: String },
}

/// A numeric security identity. Serialised as a plain number; displayed as its decimal value.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NumericIdentity(u32);

impl NumericIdentity {
    /// No identity known (yet).
    pub const UNKNOWN: NumericIdentity = NumericIdentity(0);
    /// The local node.
    pub const HOST: NumericIdentity = NumericIdentity(1);
    /// Everything outside the cluster.
    pub const WORLD: NumericIdentity = NumericIdentity(2);
    /// Endpoints not managed by Cilium.
    pub const UNMANAGED: NumericIdentity = NumericIdentity(3);
    /// The local cilium-health endpoint.
    pub const HEALTH: NumericIdentity = NumericIdentity(4);
    /// Endpoints without labels yet.
    pub const INIT: NumericIdentity = NumericIdentity(5);
    /// All nodes other than the local one.
    pub const REMOTE_NODE: NumericIdentity = NumericIdentity(6);
    /// Nodes serving the Kubernetes API server.
    pub const KUBE_APISERVER: NumericIdentity = NumericIdentity(7);
    /// The source address of ingress proxies.
    pub const INGRESS: NumericIdentity = NumericIdentity(8);
    /// IPv4 world, when both address families are enabled.
    pub const WORLD_IPV4: NumericIdentity = NumericIdentity(9);
    /// IPv6 world, when both address families are enabled.
    pub const WORLD_IPV6: NumericIdentity = NumericIdentity(10);

    /// The first identity not reserved for special purposes (upstream's
    /// `MinimalNumericIdentity`); cluster 0 allocates from here.
    pub const MINIMAL_ALLOCATION: NumericIdentity = NumericIdentity(256);

    /// The bit that marks an identity as node-local (upstream's `LocalIdentityFlag`).
    pub const LOCAL_SCOPE_FLAG: u32 = 1 << 24;

    /// The smallest local-scope identity (upstream's `MinLocalIdentity`).
    pub const MIN_LOCAL_SCOPE: NumericIdentity = NumericIdentity(Self::LOCAL_SCOPE_FLAG | 1);

    /// The largest local-scope identity (upstream's `MaxLocalIdentity`).
    pub const MAX_LOCAL_SCOPE: NumericIdentity =
        NumericIdentity(Self::LOCAL_SCOPE_FLAG | 0xFF_FFFF);

    const CLUSTER_ID_SHIFT: u32 = 16;

    pub const fn new(id: u32) -> Self {
        Self(id)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The ids the allocator may hand out for node-local (CIDR, FQDN) identities.
    pub const fn local_scope_range() -> RangeInclusive<NumericIdentity> {
        Self::MIN_LOCAL_SCOPE..=Self::MAX_LOCAL_SCOPE
    }

    /// Whether the identity is node-local and therefore never stored in the kvstore.
    pub const fn is_local_scope(self) -> bool {
        self.0 & Self::LOCAL_SCOPE_FLAG != 0
    }

    /// Whether this is one of the reserved identities 0-10 (upstream counts `unknown` too).
    pub fn is_reserved(self) -> bool {
        self.reserved().is_some()
    }

    /// The reserved identity with this id.
    pub fn reserved(self) -> Option<ReservedIdentity> {
        ReservedIdentity::from_id(self)
    }

    /// The name of the reserved identity with this id (`host`, `world`, ...).
    pub fn reserved_name(self) -> Option<&'static str> {
        self.reserved().map(ReservedIdentity::name)
    }

    /// The cluster id in bits 16-23.
    pub const fn cluster_id(self) -> ClusterId {
        // The mask keeps 8 bits, so the cast cannot truncate.
        ClusterId(((self.0 >> Self::CLUSTER_ID_SHIFT) & 0xFF) as u8)
    }
}

impl From<u32> for NumericIdentity {
    fn from(id: u32) -> Self {
        Self(id)
    }
}

impl From<NumericIdentity> for u32 {
    fn from(id: NumericIdentity) -> Self {
        id.0
    }
}

impl fmt::Display for NumericIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Strict decimal, as the kvstore stores identities: digits only, no sign, no whitespace and no
/// leading zero (upstream's base-0 parsers would read `010` as octal).
impl FromStr for NumericIdentity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(IdentityParseError::Empty);
        }
        if let Some((position, ch)) = s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            return Err(IdentityParseError::InvalidDigit {
                input: s.to_owned(),
                ch,
                position,
            });
        }
        if s.len() > 1 && s.starts_with('0') {
            return Err(IdentityParseError::LeadingZero {
                input: s.to_owned(),
            });
        }
        s.parse::<u32>()
            .map(NumericIdentity)
            .map_err(|_| IdentityParseError::Overflow {
                input: s.to_owned(),
            })
    }
}

/// The reserved identities with fixed numbers and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReservedIdentity {
    Unknown,
    Host,
    World,
    Unmanaged,
    Health,
    Init,
    RemoteNode,
    KubeApiServer,
    Ingress,
    WorldIpv4,
    WorldIpv6,
}

impl ReservedIdentity {
    /// Every reserved identity in numeric order.
    pub const ALL: [ReservedIdentity; 11] = [
        ReservedIdentity::Unknown,
        ReservedIdentity::Host,
        ReservedIdentity::World,
        ReservedIdentity::Unmanaged,
        ReservedIdentity::Health,
        ReservedIdentity::Init,
        ReservedIdentity::RemoteNode,
        ReservedIdentity::KubeApiServer,
        ReservedIdentity::Ingress,
        ReservedIdentity::WorldIpv4,
        ReservedIdentity::WorldIpv6,
    ];

    pub const fn id(self) -> NumericIdentity {
        match self {
            ReservedIdentity::Unknown => NumericIdentity::UNKNOWN,
            ReservedIdentity::Host => NumericIdentity::HOST,
            ReservedIdentity::World => NumericIdentity::WORLD,
            ReservedIdentity::Unmanaged => NumericIdentity::UNMANAGED,
            ReservedIdentity::Health => NumericIdentity::HEALTH,
            ReservedIdentity::Init => NumericIdentity::INIT,
            ReservedIdentity::RemoteNode => NumericIdentity::REMOTE_NODE,
            ReservedIdentity::KubeApiServer => NumericIdentity::KUBE_APISERVER,
            ReservedIdentity::Ingress => NumericIdentity::INGRESS,
            ReservedIdentity::WorldIpv4 => NumericIdentity::WORLD_IPV4,
            ReservedIdentity::WorldIpv6 => NumericIdentity::WORLD_IPV6,
        }
    }

    pub fn from_id(id: NumericIdentity) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.id() == id)
    }

    /// The name upstream prints and uses as the reserved label key (`unknown` has no label).
    pub const fn name(self) -> &'static str {
        match self {
            ReservedIdentity::Unknown => "unknown",
            ReservedIdentity::Host => reserved::HOST,
            ReservedIdentity::World => reserved::WORLD,
            ReservedIdentity::Unmanaged => reserved::UNMANAGED,
            ReservedIdentity::Health => reserved::HEALTH,
            ReservedIdentity::Init => reserved::INIT,
            ReservedIdentity::RemoteNode => reserved::REMOTE_NODE,
            ReservedIdentity::KubeApiServer => reserved::KUBE_APISERVER,
            ReservedIdentity::Ingress => reserved::INGRESS,
            ReservedIdentity::WorldIpv4 => reserved::WORLD_IPV4,
            ReservedIdentity::WorldIpv6 => reserved::WORLD_IPV6,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The identity's labels. As upstream, `kube-apiserver` also carries `reserved:remote-node`
    /// (the API server runs on nodes), and `unknown` has none.
    pub fn labels(self) -> Labels {
        match self {
            ReservedIdentity::Unknown => Labels::new(),
            ReservedIdentity::KubeApiServer => [Label::kube_apiserver(), Label::remote_node()]
                .into_iter()
                .collect(),
            other => std::iter::once(Label::reserved(other.name())).collect(),
        }
    }

    /// The reserved identity whose labels are exactly `labels`.
    pub fn from_labels(labels: &Labels) -> Option<Self> {
        if labels.is_empty() {
            return None;
        }
        Self::ALL.into_iter().find(|r| r.labels() == *labels)
    }
}

impl fmt::Display for ReservedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A ClusterMesh cluster id; 0 means the cluster is not part of a mesh.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ClusterId(u8);

impl ClusterId {
    /// The cluster id of a cluster outside any mesh.
    pub const UNSET: ClusterId = ClusterId(0);

    pub const fn new(id: u8) -> Self {
        Self(id)
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// The global identities this cluster may allocate, as upstream's
    /// `MinimalAllocationIdentity..=MaximumAllocationIdentity`: cluster 0 owns `[256, 65535]`,
    /// cluster N > 0 owns `[N << 16, ((N + 1) << 16) - 1]`.
    pub const fn identity_range(self) -> RangeInclusive<NumericIdentity> {
        let cluster = self.0 as u32;
        let first = if cluster == 0 {
            NumericIdentity::MINIMAL_ALLOCATION.0
        } else {
            cluster << NumericIdentity::CLUSTER_ID_SHIFT
        };
        let last = ((cluster + 1) << NumericIdentity::CLUSTER_ID_SHIFT) - 1;
        NumericIdentity(first)..=NumericIdentity(last)
    }

    /// Whether `id` is a global identity this cluster may allocate.
    pub fn contains(self, id: NumericIdentity) -> bool {
        self.identity_range().contains(&id)
    }
}

impl From<u8> for ClusterId {
    fn from(id: u8) -> Self {
        Self(id)
    }
}

impl TryFrom<u32> for ClusterId {
    type Error = ClusterConfigError;

    fn try_from(id: u32) -> Result<Self, Self::Error> {
        u8::try_from(id)
            .map(ClusterId)
            .map_err(|_| ClusterConfigError::InvalidClusterId {
                input: id.to_string(),
            })
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ClusterId {
    type Err = ClusterConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits_only = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match s.parse::<u8>() {
            Ok(id) if digits_only => Ok(ClusterId(id)),
            _ => Err(ClusterConfigError::InvalidClusterId {
                input: s.to_owned(),
            }),
        }
    }
}

/// A validated cluster name, with upstream's rules: 1 to 32 characters of lower-case letters,
/// digits and `-`, starting and ending with a letter or digit. The name ends up in kvstore keys
/// (`cilium/state/nodes/v1/<cluster>/...`) and in the `io.cilium.k8s.policy.cluster` label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    /// The longest allowed cluster name.
    pub const MAX_LEN: usize = 32;

    /// The name of a cluster that was not given one (upstream's default).
    pub const DEFAULT: &'static str = "default";

    pub fn new(name: impl Into<String>) -> Result<Self, ClusterConfigError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ClusterConfigError::EmptyClusterName);
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        if let Some((position, ch)) = name
            .char_indices()
            .find(|&(_, c)| !(allowed(c) || c == '-'))
        {
            return Err(ClusterConfigError::InvalidClusterNameChar { name, ch, position });
        }
        // Only ASCII is left, so the byte length is the character count.
        if name.len() > Self::MAX_LEN {
            return Err(ClusterConfigError::ClusterNameTooLong {
                len: name.len(),
                name,
            });
        }
        let edges_ok = name.starts_with(allowed) && name.ends_with(allowed);
        if !edges_ok {
            return Err(ClusterConfigError::ClusterNameEdge { name });
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterName {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ClusterName {
    type Err = ClusterConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for ClusterName {
    type Error = ClusterConfigError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl From<ClusterName> for String {
    fn from(name: ClusterName) -> Self {
        name.0
    }
}

impl AsRef<str> for ClusterName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
