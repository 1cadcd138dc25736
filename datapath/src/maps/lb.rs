//! ClusterIP load balancing maps: `cilium_lb4_services_v2`, `cilium_lb4_backends_v3` and
//! `cilium_lb4_reverse_nat` (upstream `struct lb4_key`, `lb4_service`, `lb4_backend`,
//! `lb4_reverse_nat`).
//!
//! A service is one master entry (slot 0) holding the backend count, plus one entry per slot
//! `1..=count` naming a backend id; backends are stored once, by id.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Identifier of a backend in `cilium_lb4_backends_v3` (the domain type of the trait boundary).
pub use crate::api::BackendId;

/// Identifier of a frontend in `cilium_lb4_reverse_nat`, carried by conntrack entries so
/// replies get their source translated back. 0 means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevNatIndex(u16);

impl RevNatIndex {
    pub const fn new(index: u16) -> Self {
        Self(index)
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// The map key: upstream stores the index in network byte order.
    pub const fn to_key(self) -> u16 {
        self.0.to_be()
    }
}

/// How the datapath picks a backend for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LbSelection {
    /// A random slot (upstream `LB_SELECTION_RANDOM`, the default for pods).
    Random,
    /// A hash of the 5-tuple, so a connection re-created after its conntrack entry expired picks
    /// the same backend while the backend set is unchanged (stands in for upstream's Maglev).
    Hash,
}

impl LbSelection {
    const fn code(self) -> u32 {
        match self {
            LbSelection::Random => 1,
            LbSelection::Hash => 2,
        }
    }
}

/// Scope of a frontend entry: external (the only one the pod programs look up) or internal.
pub const LB_LOOKUP_SCOPE_EXT: u8 = 0;

/// Key of `cilium_lb4_services_v2` (12 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lb4Key {
    /// Frontend address, network order.
    pub address: [u8; 4],
    /// Frontend port, network order.
    pub dport: u16,
    /// 0 for the master entry, `1..=count` for backend slots.
    pub backend_slot: u16,
    /// IP protocol of the frontend.
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}

// SAFETY: repr(C), 4 + 2 + 2 + 1 + 1 + 2 bytes, no padding.
unsafe impl aya::Pod for Lb4Key {}

impl Lb4Key {
    /// The master entry key of frontend `frontend` for protocol `proto`.
    pub fn master(frontend: SocketAddrV4, proto: u8) -> Self {
        Self::slot(frontend, proto, 0)
    }

    /// The key of backend slot `slot` (1-based) of a frontend.
    pub fn slot(frontend: SocketAddrV4, proto: u8, slot: u16) -> Self {
        Self {
            address: frontend.ip().octets(),
            dport: frontend.port().to_be(),
            backend_slot: slot,
            proto,
            scope: LB_LOOKUP_SCOPE_EXT,
            pad: [0; 2],
        }
    }
}

/// Value of `cilium_lb4_services_v2` (12 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lb4Service {
    /// Slot entries: the backend id. Master entry: the selection algorithm in the top byte.
    pub backend_id: u32,
    /// Master entry: number of backend slots.
    pub count: u16,
    /// Reverse NAT index, network order.
    pub rev_nat_index: u16,
    pub flags: u8,
    pub flags2: u8,
    /// Quarantined backends after `count`.
    pub qcount: u16,
}

// SAFETY: repr(C), 4 + 2 + 2 + 1 + 1 + 2 bytes, no padding.
unsafe impl aya::Pod for Lb4Service {}

impl Lb4Service {
    /// The master entry of a frontend with `count` backends (0: packets to it are dropped with
    /// "no service backend").
    pub fn master(count: u16, rev_nat: RevNatIndex, selection: LbSelection) -> Self {
        Self {
            backend_id: selection.code() << 24,
            count,
            rev_nat_index: rev_nat.to_key(),
            ..Self::default()
        }
    }

    /// A slot entry pointing at `backend`.
    pub fn slot(backend: BackendId, rev_nat: RevNatIndex) -> Self {
        Self {
            backend_id: backend.get(),
            rev_nat_index: rev_nat.to_key(),
            ..Self::default()
        }
    }
}

/// Value of `cilium_lb4_backends_v3` (12 bytes), keyed by [`BackendId`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lb4Backend {
    /// Backend address, network order.
    pub address: [u8; 4],
    /// Backend port, network order; 0 keeps the frontend port.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
    pub cluster_id: u16,
    pub zone: u8,
    pub pad: u8,
}

// SAFETY: repr(C), 4 + 2 + 1 + 1 + 2 + 1 + 1 bytes, no padding.
unsafe impl aya::Pod for Lb4Backend {}

impl Lb4Backend {
    /// A backend at `addr` for protocol `proto`.
    pub fn new(addr: SocketAddrV4, proto: u8) -> Self {
        Self {
            address: addr.ip().octets(),
            port: addr.port().to_be(),
            proto,
            ..Self::default()
        }
    }

    /// The backend's address and port.
    pub fn socket_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.address), u16::from_be(self.port))
    }
}

/// Value of `cilium_lb4_reverse_nat` (6 bytes packed), keyed by [`RevNatIndex::to_key`].
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lb4ReverseNat {
    /// Frontend address, network order.
    pub address: [u8; 4],
    /// Frontend port, network order.
    pub port: u16,
}

// SAFETY: packed plain bytes.
unsafe impl aya::Pod for Lb4ReverseNat {}

impl Lb4ReverseNat {
    /// The frontend replies are translated back to.
    pub fn new(frontend: SocketAddrV4) -> Self {
        Self {
            address: frontend.ip().octets(),
            port: frontend.port().to_be(),
        }
    }
}

const _: () = assert!(size_of::<Lb4Key>() == 12);
const _: () = assert!(size_of::<Lb4Service>() == 12);
const _: () = assert!(size_of::<Lb4Backend>() == 12);
const _: () = assert!(size_of::<Lb4ReverseNat>() == 6);
