//! Conntrack entries of `cilium_ct4_global` (TCP) and `cilium_ct_any4_global` (everything
//! else). The datapath creates them; the agent only lists them, garbage-collects expired ones
//! and removes entries that must not outlive a change (a deleted backend, say).

use std::fmt;
use std::net::Ipv4Addr;

use model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

use super::ids::{BackendId, Protocol, RevNatId};

/// Tuple flags (upstream's `TUPLE_F_*`): the direction the entry was created in, plus
/// related and service markers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct CtTupleFlags(u8);

impl CtTupleFlags {
    /// Created on egress.
    pub const OUT: CtTupleFlags = CtTupleFlags(0);
    /// Created on ingress.
    pub const IN: CtTupleFlags = CtTupleFlags(1);
    pub const RELATED: CtTupleFlags = CtTupleFlags(2);
    /// A service (load-balancing) entry that remembers the chosen backend.
    pub const SERVICE: CtTupleFlags = CtTupleFlags(4);

    pub const fn from_bits(bits: u8) -> Self {
        CtTupleFlags(bits)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// A conntrack key, stored as upstream stores it: addresses named for the reply direction,
/// ports for the original direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CtKey4 {
    pub daddr: Ipv4Addr,
    pub saddr: Ipv4Addr,
    pub dport: u16,
    pub sport: u16,
    pub protocol: Protocol,
    pub flags: CtTupleFlags,
}

impl fmt::Display for CtKey4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{} -> {}:{} flags {}",
            self.protocol,
            self.saddr,
            self.sport,
            self.daddr,
            self.dport,
            self.flags.bits()
        )
    }
}

/// A conntrack entry (the fields the agent reads; counters and report timestamps the datapath
/// keeps for itself are not carried).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct CtEntry {
    /// Expiry in seconds of the kernel's monotonic clock; garbage collection removes entries
    /// whose lifetime lies in the past.
    pub lifetime: u32,
    /// `CT_F_*` bits (closing states, seen-non-SYN, ...).
    pub flags: u16,
    /// Non-zero: replies get reverse NAT with this index.
    pub rev_nat: RevNatId,
    /// Service entries: the backend chosen for the connection.
    pub backend_id: BackendId,
    /// The identity of the connection's initiator.
    pub src_identity: NumericIdentity,
    pub packets: u64,
    pub bytes: u64,
    pub tx_flags_seen: u8,
    pub rx_flags_seen: u8,
}
