//! Load-balancing entries, laid out as upstream's lb4 maps:
//!
//! - `cilium_lb4_services_v2`: frontend (VIP, port, protocol, scope) plus a backend slot. Slot 0
//!   is the service's master entry (backend count, rev-NAT index, selection algorithm); slots
//!   1..=count each point to a backend id.
//! - `cilium_lb4_backends_v3`: backend id -> backend address.
//! - `cilium_lb4_reverse_nat`: rev-NAT index -> frontend address, to undo DNAT on replies.

use std::fmt;
use std::net::SocketAddrV4;

use model::identity::ClusterId;
use serde::{Deserialize, Serialize};

use super::ids::{BackendId, Protocol, RevNatId};

/// Which lookup a frontend answers (upstream's `LB_LOOKUP_SCOPE_*`): external traffic, or
/// in-cluster traffic for services with a local traffic policy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceScope {
    #[default]
    External,
    Internal,
}

impl ServiceScope {
    pub const fn as_u8(self) -> u8 {
        match self {
            ServiceScope::External => 0,
            ServiceScope::Internal => 1,
        }
    }

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(ServiceScope::External),
            1 => Some(ServiceScope::Internal),
            _ => None,
        }
    }
}

/// A service frontend: what clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Frontend {
    pub addr: SocketAddrV4,
    pub protocol: Protocol,
    #[serde(default)]
    pub scope: ServiceScope,
}

impl Frontend {
    /// An external-scope frontend.
    pub const fn new(addr: SocketAddrV4, protocol: Protocol) -> Self {
        Frontend {
            addr,
            protocol,
            scope: ServiceScope::External,
        }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)?;
        if self.scope == ServiceScope::Internal {
            f.write_str(" (internal)")?;
        }
        Ok(())
    }
}

/// A key of `cilium_lb4_services_v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Service4Key {
    pub frontend: Frontend,
    /// 0: the master entry; 1..=count: the backends.
    pub backend_slot: u16,
}

impl fmt::Display for Service4Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} slot {}", self.frontend, self.backend_slot)
    }
}

/// How the datapath picks a backend slot for a new connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendSelection {
    /// The node-wide default (random).
    #[default]
    Default,
    Random,
    /// A hash of the 5-tuple.
    Hash,
}

impl BackendSelection {
    pub const fn as_u8(self) -> u8 {
        match self {
            BackendSelection::Default => 0,
            BackendSelection::Random => 1,
            BackendSelection::Hash => 2,
        }
    }

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(BackendSelection::Default),
            1 => Some(BackendSelection::Random),
            2 => Some(BackendSelection::Hash),
            _ => None,
        }
    }
}

/// Upstream's service flags (`flags` in the low byte, `flags2` in the high byte).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ServiceFlags(u16);

impl ServiceFlags {
    pub const NONE: ServiceFlags = ServiceFlags(0);
    /// `SVC_FLAG_ROUTABLE`: the VIP is reachable (ClusterIP services are).
    pub const ROUTABLE: ServiceFlags = ServiceFlags(1 << 6);

    pub const fn from_bits(bits: u16) -> Self {
        ServiceFlags(bits)
    }

    pub const fn bits(self) -> u16 {
        self.0
    }
}

/// A value of `cilium_lb4_services_v2`. The master entry (slot 0) carries `count`, `rev_nat`
/// and `selection`; a slot entry carries `backend_id` and `rev_nat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Service4Value {
    pub backend_id: BackendId,
    pub count: u16,
    pub rev_nat: RevNatId,
    pub selection: BackendSelection,
    pub flags: ServiceFlags,
}

impl Service4Value {
    /// The master entry of a service with `count` backend slots.
    pub const fn master(
        count: u16,
        rev_nat: RevNatId,
        selection: BackendSelection,
        flags: ServiceFlags,
    ) -> Self {
        Service4Value {
            backend_id: BackendId::new(0),
            count,
            rev_nat,
            selection,
            flags,
        }
    }

    /// A backend slot entry.
    pub const fn slot(backend_id: BackendId, rev_nat: RevNatId, flags: ServiceFlags) -> Self {
        Service4Value {
            backend_id,
            count: 0,
            rev_nat,
            selection: BackendSelection::Default,
            flags,
        }
    }
}

/// A backend's lifecycle state (upstream's `BackendState`): only active backends get new
/// connections.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Active,
    Terminating,
    Quarantined,
    Maintenance,
}

impl BackendState {
    pub const fn as_u8(self) -> u8 {
        match self {
            BackendState::Active => 0,
            BackendState::Terminating => 1,
            BackendState::Quarantined => 2,
            BackendState::Maintenance => 3,
        }
    }

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(BackendState::Active),
            1 => Some(BackendState::Terminating),
            2 => Some(BackendState::Quarantined),
            3 => Some(BackendState::Maintenance),
            _ => None,
        }
    }
}

/// A value of `cilium_lb4_backends_v3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend4Value {
    pub addr: SocketAddrV4,
    pub protocol: Protocol,
    #[serde(default)]
    pub state: BackendState,
    #[serde(default)]
    pub cluster_id: ClusterId,
}

impl Backend4Value {
    /// An active backend of the local cluster.
    pub const fn new(addr: SocketAddrV4, protocol: Protocol) -> Self {
        Backend4Value {
            addr,
            protocol,
            state: BackendState::Active,
            cluster_id: ClusterId::UNSET,
        }
    }
}

impl fmt::Display for Backend4Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// A value of `cilium_lb4_reverse_nat`: the frontend address replies are rewritten to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RevNat4Value {
    pub frontend: SocketAddrV4,
}
