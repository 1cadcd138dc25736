//! The IPAM actor's messages, errors and the snapshot it answers `Dump` with.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use actix::Message;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::store::IpamStoreError;

/// Allocates an address to `owner` (an endpoint or pod name): `ip` if given, otherwise the
/// next free one. The allocation is persisted before the answer.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Result<Ipv4Addr, IpamError>")]
pub struct AllocateIp {
    pub owner: String,
    pub ip: Option<Ipv4Addr>,
}

/// Releases an allocated address. The release is persisted before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Result<(), IpamError>")]
pub struct ReleaseIp {
    pub ip: Ipv4Addr,
}

/// Asks for the allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "IpamDump")]
pub struct Dump;

/// The allocator as the CLI and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamDump {
    pub range: Ipv4Net,
    /// The router (gateway) address, reserved for the node.
    pub router: Ipv4Addr,
    /// How many addresses pods can get in total.
    pub capacity: u32,
    /// Pod addresses and their owners.
    pub allocations: BTreeMap<Ipv4Addr, String>,
}

/// The addresses of a range no pod ever gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservedAddress {
    Network,
    Router,
    Broadcast,
}

impl fmt::Display for ReservedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReservedAddress::Network => "the network address",
            ReservedAddress::Router => "the router address",
            ReservedAddress::Broadcast => "the broadcast address",
        })
    }
}

/// Everything that can go wrong allocating or releasing addresses.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("range {range} is too small: it needs a network, router, broadcast and pod address")]
    RangeTooSmall { range: Ipv4Net },
    #[error("{ip} is outside the allocation range {range}")]
    OutOfRange { ip: Ipv4Addr, range: Ipv4Net },
    #[error("{ip} is {reserved} and never allocated to a pod")]
    Reserved {
        ip: Ipv4Addr,
        reserved: ReservedAddress,
    },
    #[error("{ip} is already allocated to {owner:?}")]
    AlreadyAllocated { ip: Ipv4Addr, owner: String },
    #[error("no free address left in {range} (all {capacity} pod addresses are allocated)")]
    Exhausted { range: Ipv4Net, capacity: u32 },
    #[error("{ip} is not allocated")]
    NotAllocated { ip: Ipv4Addr },
    #[error("an allocation needs a non-empty owner")]
    EmptyOwner,
    #[error(
        "persisted allocations are for range {persisted} but the configured range is {configured}; \
         remove the state file only once no endpoint uses the old addresses"
    )]
    RangeChanged {
        persisted: Ipv4Net,
        configured: Ipv4Net,
    },
    #[error("persisted allocations are inconsistent: {message}")]
    CorruptSnapshot { message: String },
    /// Writing or reading the persisted allocations failed; an allocation or release that
    /// could not be persisted is undone.
    #[error("ipam state could not be persisted")]
    Store(#[from] IpamStoreError),
}
