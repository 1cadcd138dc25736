//! Per-endpoint policy map entries (`cilium_policy_v2_<epid>`), as upstream lays them out: an
//! LPM trie keyed by remote identity, direction, protocol and destination port, so that one
//! lookup with the full key finds the most specific entry.
//!
//! The LPM prefix always covers the identity and the direction (40 bits); a concrete protocol
//! adds 8 bits and a port adds up to 16 more. Identity 0 is not a prefix wildcard but a value
//! the datapath looks up separately ("any identity"). A port range is not expressible as one
//! key: [`port_range_prefixes`] splits it into the fewest port prefixes that cover it exactly,
//! as upstream's `PortRangeToMaskedPorts` does, and [`PolicyKey::port_range`] turns those into
//! keys.

use std::fmt;

use model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

use super::ids::{Direction, Protocol};

/// Prefix bits every policy key matches exactly: identity (32) and direction (8).
pub const POLICY_STATIC_PREFIX_BITS: u32 = 40;
/// Prefix bits of a key with a concrete protocol and an exact port.
pub const POLICY_FULL_PREFIX_BITS: u32 = 64;
const PROTOCOL_BITS: u32 = 8;
const PORT_BITS: u32 = 16;

/// Errors from building or decoding a policy key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyKeyError {
    #[error("port prefix length {prefix_len} is longer than 16 bits")]
    PortPrefixTooLong { prefix_len: u8 },
    #[error("port {port} has bits set beyond its /{prefix_len} prefix")]
    PortHostBits { port: u16, prefix_len: u8 },
    #[error("a port ({port}) needs a concrete protocol, not any protocol")]
    PortWithoutProtocol { port: PortPrefix },
    #[error("port range {start}-{end} is empty")]
    EmptyPortRange { start: u16, end: u16 },
    #[error("policy key prefix length {prefix_len} is outside 40-64")]
    PrefixLenOutOfRange { prefix_len: u32 },
}

/// A destination port with a prefix length over the 16-bit port: `/16` is one port, `/0` is
/// every port, `/10` with port 1024 is 1024-1087.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPortPrefix", into = "RawPortPrefix")]
pub struct PortPrefix {
    port: u16,
    prefix_len: u8,
}

#[derive(Serialize, Deserialize)]
struct RawPortPrefix {
    port: u16,
    prefix_len: u8,
}

impl TryFrom<RawPortPrefix> for PortPrefix {
    type Error = PolicyKeyError;

    fn try_from(raw: RawPortPrefix) -> Result<Self, Self::Error> {
        PortPrefix::new(raw.port, raw.prefix_len)
    }
}

impl From<PortPrefix> for RawPortPrefix {
    fn from(p: PortPrefix) -> Self {
        RawPortPrefix {
            port: p.port,
            prefix_len: p.prefix_len,
        }
    }
}

impl PortPrefix {
    /// Every port.
    pub const ANY: PortPrefix = PortPrefix {
        port: 0,
        prefix_len: 0,
    };

    /// A prefix whose host bits must be zero, so each set of ports has one spelling.
    pub fn new(port: u16, prefix_len: u8) -> Result<Self, PolicyKeyError> {
        if u32::from(prefix_len) > PORT_BITS {
            return Err(PolicyKeyError::PortPrefixTooLong { prefix_len });
        }
        if port & !port_mask(prefix_len) != 0 {
            return Err(PolicyKeyError::PortHostBits { port, prefix_len });
        }
        Ok(PortPrefix { port, prefix_len })
    }

    /// Exactly one port.
    pub const fn exact(port: u16) -> Self {
        PortPrefix {
            port,
            prefix_len: PORT_BITS as u8,
        }
    }

    /// The prefix with host bits cleared; prefix lengths over 16 are clamped to 16.
    pub fn truncating(port: u16, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(PORT_BITS as u8);
        PortPrefix {
            port: port & port_mask(prefix_len),
            prefix_len,
        }
    }

    pub const fn port(self) -> u16 {
        self.port
    }

    pub const fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    pub const fn is_any(self) -> bool {
        self.prefix_len == 0
    }

    /// The first port covered.
    pub const fn first(self) -> u16 {
        self.port
    }

    /// The last port covered.
    pub fn last(self) -> u16 {
        self.port | !port_mask(self.prefix_len)
    }

    pub fn contains(self, port: u16) -> bool {
        port & port_mask(self.prefix_len) == self.port
    }
}

impl fmt::Display for PortPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len {
            0 => f.write_str("*"),
            16 => write!(f, "{}", self.port),
            _ => write!(f, "{}-{}", self.first(), self.last()),
        }
    }
}

/// The mask selecting the first `prefix_len` bits of a port (`prefix_len` at most 16).
fn port_mask(prefix_len: u8) -> u16 {
    let host_bits = PORT_BITS.saturating_sub(u32::from(prefix_len));
    // A 16-bit shift of a u32 keeps the /0 case (mask 0) free of overflow.
    (u32::from(u16::MAX) << host_bits) as u16
}

/// Splits `start..=end` into the fewest port prefixes whose union is exactly the range, in
/// ascending port order. `0..=65535` is the single wildcard prefix.
pub fn port_range_prefixes(start: u16, end: u16) -> Result<Vec<PortPrefix>, PolicyKeyError> {
    if start > end {
        return Err(PolicyKeyError::EmptyPortRange { start, end });
    }
    Ok(split_range(u32::from(start), u32::from(end), PORT_BITS)
        .into_iter()
        .map(|(first, host_bits)| PortPrefix {
            // Both fit: first <= end <= u16::MAX and host_bits <= 16.
            port: first as u16,
            prefix_len: (PORT_BITS - host_bits) as u8,
        })
        .collect())
}

/// Greedy split of `start..=end` (within a `width`-bit space) into aligned blocks, returned as
/// (first value, number of host bits). Taking the largest aligned block that starts at the
/// cursor and stays inside the range is optimal: any cover must split at the same points.
/// Generic over the width so that tests can check the algorithm exhaustively on 8 bits.
fn split_range(start: u32, end: u32, width: u32) -> Vec<(u32, u32)> {
    let mut blocks = Vec::new();
    let mut cursor = start;
    while cursor <= end {
        let mut host_bits = if cursor == 0 {
            width
        } else {
            cursor.trailing_zeros().min(width)
        };
        while cursor + ((1u32 << host_bits) - 1) > end {
            host_bits -= 1;
        }
        blocks.push((cursor, host_bits));
        cursor += 1u32 << host_bits;
    }
    blocks
}

/// The key of one policy map entry. Constructors keep keys canonical (no protocol means no
/// port; port bits beyond the prefix are zero), so two keys that the trie treats as the same
/// node are also equal here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    identity: NumericIdentity,
    direction: Direction,
    protocol: Protocol,
    port: PortPrefix,
}

impl PolicyKey {
    /// A key; a port other than [`PortPrefix::ANY`] needs a concrete protocol.
    pub fn new(
        identity: NumericIdentity,
        direction: Direction,
        protocol: Protocol,
        port: PortPrefix,
    ) -> Result<Self, PolicyKeyError> {
        if protocol.is_any() && !port.is_any() {
            return Err(PolicyKeyError::PortWithoutProtocol { port });
        }
        Ok(PolicyKey {
            identity,
            direction,
            protocol,
            port,
        })
    }

    /// Every protocol and port from (or to) `identity`: an L3-only entry.
    pub const fn l3(identity: NumericIdentity, direction: Direction) -> Self {
        PolicyKey {
            identity,
            direction,
            protocol: Protocol::ANY,
            port: PortPrefix::ANY,
        }
    }

    /// Every port of `protocol`.
    pub const fn protocol(
        identity: NumericIdentity,
        direction: Direction,
        protocol: Protocol,
    ) -> Self {
        PolicyKey {
            identity,
            direction,
            protocol,
            port: PortPrefix::ANY,
        }
    }

    /// One port of a concrete protocol.
    pub fn port(
        identity: NumericIdentity,
        direction: Direction,
        protocol: Protocol,
        port: u16,
    ) -> Result<Self, PolicyKeyError> {
        Self::new(identity, direction, protocol, PortPrefix::exact(port))
    }

    /// The keys covering `start..=end` of a concrete protocol (`toPorts` with `endPort`).
    pub fn port_range(
        identity: NumericIdentity,
        direction: Direction,
        protocol: Protocol,
        start: u16,
        end: u16,
    ) -> Result<Vec<Self>, PolicyKeyError> {
        port_range_prefixes(start, end)?
            .into_iter()
            .map(|port| Self::new(identity, direction, protocol, port))
            .collect()
    }

    /// Decodes a key as stored in the trie: the LPM prefix length says which of protocol and
    /// port are significant; bits beyond it are ignored (the trie ignores them too).
    pub fn from_lpm(
        prefix_len: u32,
        identity: NumericIdentity,
        direction: Direction,
        protocol: Protocol,
        port: u16,
    ) -> Result<Self, PolicyKeyError> {
        if !(POLICY_STATIC_PREFIX_BITS..=POLICY_FULL_PREFIX_BITS).contains(&prefix_len) {
            return Err(PolicyKeyError::PrefixLenOutOfRange { prefix_len });
        }
        let l4_bits = prefix_len - POLICY_STATIC_PREFIX_BITS;
        if l4_bits < PROTOCOL_BITS {
            return Ok(Self::l3(identity, direction));
        }
        let port_bits = (l4_bits - PROTOCOL_BITS) as u8;
        let port = PortPrefix::truncating(port, port_bits);
        Self::new(identity, direction, protocol, port)
    }

    pub const fn identity(&self) -> NumericIdentity {
        self.identity
    }

    pub const fn direction(&self) -> Direction {
        self.direction
    }

    pub const fn protocol_number(&self) -> Protocol {
        self.protocol
    }

    pub const fn port_prefix(&self) -> PortPrefix {
        self.port
    }

    /// The trie prefix length: 40 for any protocol, 48 for a protocol with every port, up to
    /// 64 for an exact port.
    pub fn lpm_prefix_len(&self) -> u32 {
        if self.protocol.is_any() {
            POLICY_STATIC_PREFIX_BITS
        } else {
            POLICY_STATIC_PREFIX_BITS + PROTOCOL_BITS + u32::from(self.port.prefix_len)
        }
    }

    /// Protocol and port bits of the prefix (upstream's `lpm_prefix_length` in the value).
    pub fn l4_prefix_len(&self) -> u8 {
        // At most 24, so it fits.
        (self.lpm_prefix_len() - POLICY_STATIC_PREFIX_BITS) as u8
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} identity {} {}/{}",
            self.direction, self.identity, self.protocol, self.port
        )
    }
}

/// Errors from building an auth type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth type {value} does not fit in 7 bits")]
pub struct AuthTypeError {
    pub value: u8,
}

/// The mutual-authentication type required by an entry (7 bits, upstream's `AuthType`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct AuthType(u8);

impl AuthType {
    pub const DISABLED: AuthType = AuthType(0);
    pub const SPIRE: AuthType = AuthType(1);
    pub const ALWAYS_FAIL: AuthType = AuthType(2);

    pub const fn new(value: u8) -> Result<Self, AuthTypeError> {
        if value > 0x7f {
            return Err(AuthTypeError { value });
        }
        Ok(AuthType(value))
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for AuthType {
    type Error = AuthTypeError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<AuthType> for u8 {
    fn from(auth: AuthType) -> Self {
        auth.0
    }
}

/// The value of one policy map entry. The entry's `lpm_prefix_length` is not stored here: it
/// follows from the key ([`PolicyKey::l4_prefix_len`]) and is filled in at the kernel boundary.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct PolicyEntry {
    /// Drop matching traffic (drop reason 181 when this entry decides).
    pub deny: bool,
    /// L7 proxy redirect port, 0 for none.
    pub proxy_port: u16,
    pub auth_type: AuthType,
    /// Whether the auth type was set by a rule rather than inherited.
    pub has_explicit_auth_type: bool,
    /// Higher wins when an identity-specific and an any-identity entry both match.
    pub precedence: u32,
    /// Policy log cookie reported with policy verdicts.
    pub cookie: u32,
}

impl PolicyEntry {
    /// A plain allow entry.
    pub fn allow() -> Self {
        PolicyEntry::default()
    }

    /// A plain deny entry.
    pub fn deny() -> Self {
        PolicyEntry {
            deny: true,
            ..PolicyEntry::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Checks that `blocks` is an exact, ordered, aligned and minimal cover of start..=end.
    fn check_cover(start: u32, end: u32, width: u32, blocks: &[(u32, u32)]) {
        let mut next = start;
        for &(first, host_bits) in blocks {
            assert!(host_bits <= width, "{start}-{end}: block too wide");
            assert_eq!(first, next, "{start}-{end}: gap or overlap at {first}");
            assert_eq!(
                first % (1 << host_bits),
                0,
                "{start}-{end}: {first}/{host_bits} unaligned"
            );
            next = first + (1 << host_bits);
        }
        assert_eq!(next, end + 1, "{start}-{end}: cover ends at {next}");
        // Minimal: two neighbouring blocks of the same size that form one aligned block of
        // twice the size could have been one entry.
        for pair in blocks.windows(2) {
            let (a, bits_a) = pair[0];
            let (_, bits_b) = pair[1];
            assert!(
                !(bits_a == bits_b && a % (1 << (bits_a + 1)) == 0),
                "{start}-{end}: {a}/{bits_a} and its sibling should merge"
            );
        }
    }

    #[test]
    fn split_is_exact_and_minimal_for_every_8_bit_range() {
        for start in 0..=255u32 {
            for end in start..=255u32 {
                check_cover(start, end, 8, &split_range(start, end, 8));
            }
        }
    }

    #[test]
    fn split_is_exact_and_minimal_for_every_16_bit_range_touching_an_end() {
        for bound in 0..=u32::from(u16::MAX) {
            check_cover(0, bound, 16, &split_range(0, bound, 16));
            check_cover(bound, 65535, 16, &split_range(bound, 65535, 16));
        }
    }

    #[test]
    fn known_ranges_split_as_expected() {
        let show = |start, end| -> Vec<String> {
            port_range_prefixes(start, end)
                .unwrap()
                .iter()
                .map(|p| format!("{}/{}", p.port(), p.prefix_len()))
                .collect()
        };
        assert_eq!(show(0, 65535), ["0/0"]);
        assert_eq!(show(80, 80), ["80/16"]);
        assert_eq!(show(1024, 2047), ["1024/6"]);
        assert_eq!(show(8080, 8090), ["8080/13", "8088/15", "8090/16"]);
        assert_eq!(show(1, 65535).len(), 16);
        assert_eq!(show(1, 65534).len(), 30);
    }

    #[test]
    fn empty_range_is_an_error() {
        assert_eq!(
            port_range_prefixes(10, 9),
            Err(PolicyKeyError::EmptyPortRange { start: 10, end: 9 })
        );
    }

    proptest! {
        #[test]
        fn port_prefixes_cover_exactly_the_range(a in any::<u16>(), b in any::<u16>(), probe in any::<u16>()) {
            let (start, end) = (a.min(b), a.max(b));
            let prefixes = port_range_prefixes(start, end).unwrap();
            let hits = prefixes.iter().filter(|p| p.contains(probe)).count();
            prop_assert_eq!(hits, usize::from((start..=end).contains(&probe)));
            prop_assert!(prefixes.len() <= 30);
            prop_assert_eq!(prefixes.first().map(|p| p.first()), Some(start));
            prop_assert_eq!(prefixes.last().map(|p| p.last()), Some(end));
        }
    }

    #[test]
    fn port_prefix_rejects_host_bits_and_long_prefixes() {
        assert_eq!(
            PortPrefix::new(1025, 6),
            Err(PolicyKeyError::PortHostBits {
                port: 1025,
                prefix_len: 6
            })
        );
        assert_eq!(
            PortPrefix::new(0, 17),
            Err(PolicyKeyError::PortPrefixTooLong { prefix_len: 17 })
        );
        let p = PortPrefix::new(1024, 6).unwrap();
        assert_eq!((p.first(), p.last()), (1024, 2047));
        assert_eq!(PortPrefix::ANY.last(), 65535);
    }

    #[test]
    fn prefix_lengths_follow_upstream_layout() {
        let id = NumericIdentity::new(1234);
        let l3 = PolicyKey::l3(id, Direction::Ingress);
        assert_eq!(l3.lpm_prefix_len(), 40);
        assert_eq!(l3.l4_prefix_len(), 0);
        let proto = PolicyKey::protocol(id, Direction::Egress, Protocol::UDP);
        assert_eq!(proto.lpm_prefix_len(), 48);
        let port = PolicyKey::port(id, Direction::Egress, Protocol::TCP, 80).unwrap();
        assert_eq!(port.lpm_prefix_len(), 64);
        assert_eq!(port.l4_prefix_len(), 24);
        let range =
            PolicyKey::port_range(id, Direction::Egress, Protocol::TCP, 1024, 2047).unwrap();
        assert_eq!(range.len(), 1);
        assert_eq!(range[0].lpm_prefix_len(), 54);
    }

    #[test]
    fn a_port_needs_a_protocol() {
        let err = PolicyKey::port(
            NumericIdentity::new(1),
            Direction::Ingress,
            Protocol::ANY,
            80,
        )
        .unwrap_err();
        assert_eq!(
            err,
            PolicyKeyError::PortWithoutProtocol {
                port: PortPrefix::exact(80)
            }
        );
    }

    #[test]
    fn decoding_ignores_bits_beyond_the_prefix() {
        let id = NumericIdentity::new(7);
        let decoded = PolicyKey::from_lpm(40, id, Direction::Ingress, Protocol::TCP, 80).unwrap();
        assert_eq!(decoded, PolicyKey::l3(id, Direction::Ingress));
        let decoded = PolicyKey::from_lpm(54, id, Direction::Ingress, Protocol::TCP, 1100).unwrap();
        assert_eq!(decoded.port_prefix(), PortPrefix::new(1024, 6).unwrap());
        assert_eq!(
            PolicyKey::from_lpm(65, id, Direction::Ingress, Protocol::TCP, 80),
            Err(PolicyKeyError::PrefixLenOutOfRange { prefix_len: 65 })
        );
        assert_eq!(
            PolicyKey::from_lpm(39, id, Direction::Ingress, Protocol::TCP, 80),
            Err(PolicyKeyError::PrefixLenOutOfRange { prefix_len: 39 })
        );
    }

    proptest! {
        #[test]
        fn keys_survive_the_lpm_encoding(id in any::<u32>(), egress in any::<bool>(), proto in 1u8.., port in any::<u16>(), len in 0u8..=16) {
            let dir = if egress { Direction::Egress } else { Direction::Ingress };
            let key = PolicyKey::new(NumericIdentity::new(id), dir, Protocol::new(proto), PortPrefix::truncating(port, len)).unwrap();
            let decoded = PolicyKey::from_lpm(key.lpm_prefix_len(), key.identity(), dir, key.protocol_number(), key.port_prefix().port()).unwrap();
            prop_assert_eq!(decoded, key);
        }
    }

    #[test]
    fn auth_type_is_seven_bits() {
        assert_eq!(AuthType::new(0x7f).map(AuthType::get), Ok(0x7f));
        assert_eq!(AuthType::new(0x80), Err(AuthTypeError { value: 0x80 }));
    }
}
