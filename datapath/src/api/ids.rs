//! Identifiers and small value types shared by several maps: endpoint ids, traffic direction,
//! IP protocol numbers, MAC addresses, backend and rev-NAT ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A local endpoint's id (upstream's `lxc_id`): it names the endpoint's policy map
/// (`cilium_policy_v2_<id>`) and appears in `cilium_lxc` and in monitor events.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EndpointId(u16);

impl EndpointId {
    pub const fn new(id: u16) -> Self {
        Self(id)
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl From<u16> for EndpointId {
    fn from(id: u16) -> Self {
        Self(id)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The direction of traffic as seen from the endpoint, as in the policy key's `egress` bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic entering the endpoint (`egress` bit 0).
    Ingress,
    /// Traffic leaving the endpoint (`egress` bit 1).
    Egress,
}

impl Direction {
    /// The value of the policy key's `egress` field.
    pub const fn as_u8(self) -> u8 {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }

    /// The direction stored in a policy key's `egress` field; `None` for anything but 0 and 1.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// An IP protocol number (`nexthdr`) as the maps store it; 0 means "any protocol" in policy
/// keys and service frontends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Protocol(u8);

impl Protocol {
    pub const ANY: Protocol = Protocol(0);
    pub const ICMP: Protocol = Protocol(1);
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const ICMPV6: Protocol = Protocol(58);
    pub const SCTP: Protocol = Protocol(132);

    pub const fn new(number: u8) -> Self {
        Self(number)
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    pub const fn is_any(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::ANY => f.write_str("ANY"),
            Protocol::ICMP => f.write_str("ICMP"),
            Protocol::TCP => f.write_str("TCP"),
            Protocol::UDP => f.write_str("UDP"),
            Protocol::ICMPV6 => f.write_str("ICMPv6"),
            Protocol::SCTP => f.write_str("SCTP"),
            Protocol(other) => write!(f, "{other}"),
        }
    }
}

/// Errors from parsing a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mac address {input:?} is not six colon-separated hex bytes")]
pub struct MacParseError {
    pub input: String,
}

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff` (also in JSON, so dumps read well).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_owned(),
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            // from_str_radix alone would accept a sign ("+a").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(bytes))
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> Self {
        mac.to_string()
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A load-balancing backend's id, the key of `cilium_lb4_backends_v3`. Allocated by the
/// service manager (as upstream's), never by the datapath.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BackendId(u32);

impl BackendId {
    pub const fn new(id: u32) -> Self {
        Self(id)
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A reverse-NAT index, the key of `cilium_lb4_reverse_nat`; one per service frontend,
/// allocated by the service manager. 0 means "no reverse NAT".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RevNatId(u16);

impl RevNatId {
    pub const fn new(id: u16) -> Self {
        Self(id)
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for RevNatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_through_text_and_json() {
        let mac: MacAddr = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(mac, MacAddr([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert_eq!(mac.to_string(), "0a:1b:2c:3d:4e:5f");
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"0a:1b:2c:3d:4e:5f\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
    }

    #[test]
    fn malformed_macs_are_rejected() {
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0a:1b:2c:3d:4e:5",
            "zz:1b:2c:3d:4e:5f",
            "0a-1b-2c-3d-4e-5f",
            "+a:1b:2c:3d:4e:5f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn direction_matches_the_egress_bit() {
        assert_eq!(Direction::from_u8(0), Some(Direction::Ingress));
        assert_eq!(Direction::from_u8(1), Some(Direction::Egress));
        assert_eq!(Direction::from_u8(2), None);
        assert_eq!(Direction::Egress.as_u8(), 1);
    }
}
