//! Per-endpoint policy maps `cilium_policy_v2_<epid>` (upstream `struct policy_key` and
//! `struct policy_entry`), and the conversion from a policy decision to a map entry.
//!
//! The trie matches `sec_label`, direction, protocol and port from left to right. An entry's
//! prefix length is always the 40 bits of identity and direction plus 0 (any protocol), 8 (one
//! protocol, any port) or 8 + n (the first n bits of the port), which is how port ranges are
//! expressed: a range becomes the few aligned power-of-two blocks that cover it. Identity 0 is
//! "any identity" and is looked up separately by the datapath.

use aya::maps::lpm_trie::Key;
use model::identity::NumericIdentity;

/// Bits of identity and direction that every entry matches exactly.
pub const POLICY_STATIC_PREFIX: u32 = 40;
/// Protocol and port bits of an entry naming a protocol but no port.
pub const LPM_PROTO_PREFIX_BITS: u8 = 8;
/// Protocol and port bits of an entry naming one port.
pub const LPM_FULL_PREFIX_BITS: u8 = 24;
/// Entry flag: deny instead of allow.
pub const POLICY_F_DENY: u8 = 0x01;
const POLICY_PREFIX_SHIFT: u8 = 3;

/// Direction of the traffic a policy entry applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficDirection {
    /// Into the endpoint (`egress` bit 0).
    Ingress,
    /// Out of the endpoint (`egress` bit 1).
    Egress,
}

/// The peer an entry applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyPeer {
    /// Any identity (stored as `sec_label` 0).
    Any,
    /// One security identity.
    Identity(NumericIdentity),
}

/// The L4 part of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Match {
    /// Any protocol, any port.
    Any,
    /// One IP protocol number, any port.
    Protocol(u8),
    /// One protocol and the ports sharing the first `prefix_bits` bits with `port` (16: exactly
    /// `port`). For ICMP the "port" is the ICMP type.
    Ports {
        protocol: u8,
        port: u16,
        prefix_bits: u8,
    },
}

impl L4Match {
    /// One protocol and one port.
    pub fn port(protocol: u8, port: u16) -> Self {
        L4Match::Ports {
            protocol,
            port,
            prefix_bits: 16,
        }
    }

    /// The entries covering the inclusive port range `first..=last` of `protocol`: the aligned
    /// power-of-two blocks of ports, largest first. Empty if `first > last`.
    pub fn port_range(protocol: u8, first: u16, last: u16) -> Vec<L4Match> {
        let mut out = Vec::new();
        let (mut lo, hi) = (u32::from(first), u32::from(last));
        while lo <= hi {
            // Largest block aligned at `lo` that stays within the range.
            let mut size = if lo == 0 {
                1u32 << 16
            } else {
                1u32 << lo.trailing_zeros().min(16)
            };
            while lo + size - 1 > hi {
                size >>= 1;
            }
            let prefix_bits = 16 - size.trailing_zeros() as u8;
            // `lo` is at most 65535 here, the range being of u16 ports.
            let port = u16::try_from(lo).unwrap_or(u16::MAX);
            out.push(L4Match::Ports {
                protocol,
                port,
                prefix_bits,
            });
            lo += size;
        }
        out
    }

    /// Protocol and port bits this match covers (the entry's `lpm_prefix_length`).
    pub fn prefix_bits(&self) -> u8 {
        match *self {
            L4Match::Any => 0,
            L4Match::Protocol(_) => LPM_PROTO_PREFIX_BITS,
            L4Match::Ports { prefix_bits, .. } => LPM_PROTO_PREFIX_BITS + prefix_bits.min(16),
        }
    }
}

/// The part of the policy LPM key after the prefix length (8 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    /// Remote identity, 0 for any.
    pub sec_label: u32,
    /// `1` egress, `0` ingress.
    pub egress: u8,
    /// IP protocol, 0 for any.
    pub protocol: u8,
    /// Destination port in network order (ICMP type for ICMP), masked to the prefix.
    pub dport: u16,
}

// SAFETY: repr(C), 4 + 1 + 1 + 2 bytes, no padding.
unsafe impl aya::Pod for PolicyKey {}

impl PolicyKey {
    /// The LPM key for `peer`, `direction` and `l4`.
    pub fn new(peer: PolicyPeer, direction: TrafficDirection, l4: L4Match) -> Key<PolicyKey> {
        let sec_label = match peer {
            PolicyPeer::Any => 0,
            PolicyPeer::Identity(id) => id.get(),
        };
        let egress = u8::from(direction == TrafficDirection::Egress);
        let (protocol, dport) = match l4 {
            L4Match::Any => (0, 0),
            L4Match::Protocol(p) => (p, 0),
            L4Match::Ports {
                protocol,
                port,
                prefix_bits,
            } => {
                let bits = u32::from(prefix_bits.min(16));
                let mask = if bits == 0 {
                    0
                } else {
                    u16::MAX << (16 - bits)
                };
                (protocol, (port & mask).to_be())
            }
        };
        Key::new(
            POLICY_STATIC_PREFIX + u32::from(l4.prefix_bits()),
            PolicyKey {
                sec_label,
                egress,
                protocol,
                dport,
            },
        )
    }
}

/// Value of the policy map (12 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyEntry {
    /// L7 proxy port in network order, 0 for none.
    pub proxy_port: u16,
    /// `deny:1, reserved:2, lpm_prefix_length:5`.
    pub flags: u8,
    /// `auth_type:7, has_explicit_auth_type:1`.
    pub auth_type: u8,
    /// Higher wins when the identity-specific and the any-identity lookups both match. At equal
    /// precedence the datapath prefers deny, then the longer protocol/port prefix, then the
    /// identity-specific entry. Within one identity the trie returns only the longest match, so
    /// the policy computation must not install an allow more specific than a deny it overlaps
    /// (upstream's MapState does the same).
    pub precedence: u32,
    /// Policy log cookie, reported in policy-verdict events.
    pub cookie: u32,
}

// SAFETY: repr(C), 2 + 1 + 1 + 4 + 4 bytes, no padding.
unsafe impl aya::Pod for PolicyEntry {}

impl PolicyEntry {
    /// An allow entry for a key built from `l4`.
    pub fn allow(l4: L4Match) -> Self {
        Self {
            flags: l4.prefix_bits() << POLICY_PREFIX_SHIFT,
            ..Self::default()
        }
    }

    /// A deny entry for a key built from `l4`.
    pub fn deny(l4: L4Match) -> Self {
        Self {
            flags: POLICY_F_DENY | (l4.prefix_bits() << POLICY_PREFIX_SHIFT),
            ..Self::default()
        }
    }

    /// The entry with `precedence`.
    pub fn with_precedence(mut self, precedence: u32) -> Self {
        self.precedence = precedence;
        self
    }

    /// The entry with the policy log `cookie`.
    pub fn with_cookie(mut self, cookie: u32) -> Self {
        self.cookie = cookie;
        self
    }

    /// Whether the entry denies.
    pub fn is_deny(&self) -> bool {
        self.flags & POLICY_F_DENY != 0
    }

    /// Protocol and port bits of the key this entry was built for.
    pub fn lpm_prefix_length(&self) -> u8 {
        self.flags >> POLICY_PREFIX_SHIFT
    }
}

const _: () = assert!(size_of::<PolicyKey>() == 8);
const _: () = assert!(size_of::<Key<PolicyKey>>() == 12);
const _: () = assert!(size_of::<PolicyEntry>() == 12);

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(entries: &[L4Match]) -> Vec<u16> {
        let mut ports = Vec::new();
        for entry in entries {
            let L4Match::Ports {
                port, prefix_bits, ..
            } = *entry
            else {
                panic!("range produced a non-port match: {entry:?}");
            };
            let size = 1u32 << (16 - u32::from(prefix_bits));
            assert_eq!(
                u32::from(port) % size,
                0,
                "block {port}/{prefix_bits} is not aligned"
            );
            ports.extend((u32::from(port)..u32::from(port) + size).map(|p| p as u16));
        }
        ports
    }

    #[test]
    fn port_range_blocks_cover_exactly_the_range() {
        for (first, last) in [
            (80, 80),
            (1000, 2000),
            (0, 65535),
            (1, 65535),
            (8080, 8090),
            (0, 0),
        ] {
            let entries = L4Match::port_range(6, first, last);
            let expected: Vec<u16> = (first..=last).collect();
            assert_eq!(covered(&entries), expected, "range {first}-{last}");
        }
        assert_eq!(
            L4Match::port_range(6, 0, 65535),
            vec![L4Match::Ports {
                protocol: 6,
                port: 0,
                prefix_bits: 0
            }]
        );
        assert!(L4Match::port_range(6, 10, 9).is_empty());
    }

    #[test]
    fn key_prefix_and_masking_follow_the_match() {
        let key = PolicyKey::new(
            PolicyPeer::Any,
            TrafficDirection::Egress,
            L4Match::Protocol(17),
        );
        assert_eq!(key.prefix_len(), 48);
        let key = PolicyKey::new(
            PolicyPeer::Identity(NumericIdentity::new(300)),
            TrafficDirection::Ingress,
            L4Match::Ports {
                protocol: 6,
                port: 1027,
                prefix_bits: 14,
            },
        );
        assert_eq!(key.prefix_len(), 62);
        let data = key.data();
        assert_eq!({ data.dport }, 1024u16.to_be());
        assert_eq!({ data.sec_label }, 300);
        assert_eq!(
            PolicyEntry::deny(L4Match::port(6, 80)).lpm_prefix_length(),
            24
        );
        assert!(PolicyEntry::deny(L4Match::Any).is_deny());
        assert!(!PolicyEntry::allow(L4Match::Any).is_deny());
    }
}
