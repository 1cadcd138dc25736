//! Connection tracking maps `cilium_ct4_global` (TCP) and `cilium_ct_any4_global` (other
//! protocols) (upstream `struct ipv4_ct_tuple` and `struct ct_entry`).

use std::net::{Ipv4Addr, SocketAddrV4};

use model::identity::NumericIdentity;

use super::lb::{BackendId, RevNatIndex};

/// Tuple flag: the connection was created on egress (out of the endpoint).
pub const TUPLE_F_OUT: u8 = 0;
/// Tuple flag: the connection was created on ingress.
pub const TUPLE_F_IN: u8 = 1;
/// Tuple flag: related traffic (ICMP errors).
pub const TUPLE_F_RELATED: u8 = 2;
/// Tuple flag: a service (load-balancing) entry.
pub const TUPLE_F_SERVICE: u8 = 4;

/// Entry flag: the reply direction is closing (FIN or RST seen).
pub const CT_F_RX_CLOSING: u16 = 1 << 0;
/// Entry flag: the original direction is closing.
pub const CT_F_TX_CLOSING: u16 = 1 << 1;
/// Entry flag: a packet without SYN was seen.
pub const CT_F_SEEN_NON_SYN: u16 = 1 << 4;

/// Upstream lifetimes in seconds.
pub const CT_CONNECTION_LIFETIME_TCP: u32 = 21600;
pub const CT_CONNECTION_LIFETIME_NONTCP: u32 = 60;
pub const CT_SERVICE_LIFETIME_TCP: u32 = 21600;
pub const CT_SERVICE_LIFETIME_NONTCP: u32 = 60;
pub const CT_SYN_TIMEOUT: u32 = 60;
pub const CT_CLOSE_TIMEOUT: u32 = 10;

/// Key of both conntrack maps (14 bytes packed). Stored as upstream stores it: the address fields
/// are named for the reply direction and the ports for the original direction.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtTuple4 {
    pub daddr: [u8; 4],
    pub saddr: [u8; 4],
    /// Network order.
    pub dport: u16,
    /// Network order.
    pub sport: u16,
    pub nexthdr: u8,
    /// `TUPLE_F_*`.
    pub flags: u8,
}

// SAFETY: packed plain bytes.
unsafe impl aya::Pod for CtTuple4 {}

impl CtTuple4 {
    /// The key of a connection whose first packet went `src -> dst` and that was created in
    /// direction `flags` (`TUPLE_F_OUT` by `cil_from_container`, `TUPLE_F_IN` by
    /// `cil_to_container`). For ICMP echo, `src`'s port is the identifier and `dst`'s is 0.
    pub fn connection(src: SocketAddrV4, dst: SocketAddrV4, proto: u8, flags: u8) -> Self {
        Self {
            daddr: src.ip().octets(),
            saddr: dst.ip().octets(),
            dport: dst.port().to_be(),
            sport: src.port().to_be(),
            nexthdr: proto,
            flags,
        }
    }

    /// The key of the service entry that pins the backend of a connection from `client` to the
    /// frontend `frontend`.
    pub fn service(client: SocketAddrV4, frontend: SocketAddrV4, proto: u8) -> Self {
        Self {
            daddr: frontend.ip().octets(),
            saddr: client.ip().octets(),
            dport: client.port().to_be(),
            sport: frontend.port().to_be(),
            nexthdr: proto,
            flags: TUPLE_F_SERVICE,
        }
    }

    /// Source of the original direction, for display.
    pub fn original_source(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.daddr), u16::from_be(self.sport))
    }

    /// Destination of the original direction, for display.
    pub fn original_destination(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.saddr), u16::from_be(self.dport))
    }
}

/// Value of both conntrack maps (56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtEntry {
    pub reserved0: u64,
    /// Service entries: the chosen backend.
    pub backend_id: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Expiry in seconds of `CLOCK_MONOTONIC` (the datapath reads the coarse variant).
    pub lifetime: u32,
    /// `CT_F_*`.
    pub flags: u16,
    /// Network order; non-zero when replies need reverse NAT.
    pub rev_nat_index: u16,
    /// Host-side veth whose programs created the entry after validating the endpoint's address,
    /// 0 if unknown or beyond `u16` (upstream's `ifindex` field, which upstream uses for NodePort
    /// devices). A packet of the connection on that device skips the endpoint lookup.
    pub ifindex: u16,
    pub tx_flags_seen: u8,
    pub rx_flags_seen: u8,
    /// Identity of the connection's initiator.
    pub src_sec_id: u32,
    pub last_tx_report: u32,
    pub last_rx_report: u32,
}

// SAFETY: repr(C) with naturally aligned fields summing to 56 bytes, no padding.
unsafe impl aya::Pod for CtEntry {}

impl CtEntry {
    /// The backend of a service entry.
    pub fn backend(&self) -> Option<BackendId> {
        u32::try_from(self.backend_id)
            .ok()
            .filter(|id| *id != 0)
            .map(BackendId::new)
    }

    /// The reverse NAT index, if replies are translated.
    pub fn rev_nat(&self) -> Option<RevNatIndex> {
        (self.rev_nat_index != 0).then(|| RevNatIndex::new(u16::from_be(self.rev_nat_index)))
    }

    /// Identity of the connection's initiator.
    pub fn source_identity(&self) -> NumericIdentity {
        NumericIdentity::new(self.src_sec_id)
    }
}

const _: () = assert!(size_of::<CtTuple4>() == 14);
const _: () = assert!(size_of::<CtEntry>() == 56);
