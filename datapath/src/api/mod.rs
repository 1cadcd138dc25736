//! The boundary between the control plane and the kernel: the [`Datapath`] trait and the
//! domain types of every map it writes.
//!
//! Only the Datapath actor (the reconciler) holds a `Box<dyn Datapath>`; everything else sends
//! it desired state. Two implementations exist: the aya one, which converts these types to the
//! `#[repr(C)]` structs of `bpf/lib/maps.h` and makes the syscalls, and the recording in-memory
//! fake (`crate::fake`, feature `test-util`) used by actor tests and the simulation.
//!
//! Why the trait has this shape:
//! - **Domain types, not bytes.** Keys and values are typed per map ([`PolicyKey`],
//!   [`IpcacheKey`], [`Service4Key`], ...); the byte layouts stay inside the aya
//!   implementation, so the reconciler can compare desired and actual values, dumps serialise
//!   to readable JSON, and the fake needs no knowledge of struct layouts.
//! - **One `update`/`delete`/`list` over [`MapKey`]/[`MapValue`]** instead of a method per map:
//!   the reconciler treats every map the same way (one diff, one retry loop, one status table),
//!   the fake is one ordered map per map name, and the trait stays object-safe.
//! - **Writes take `&mut self`**: there is one writer. Reads take `&self`.
//! - **`list` returns what the kernel holds**, not what was written: it is how a restarted
//!   agent adopts pinned maps and how the reconciler finds strays to prune.
//! - **Idempotent removal**: `delete`, `remove_policy_map` and `detach_endpoint` succeed when
//!   there is nothing to remove and say whether there was.
//! - **Synchronous**: map syscalls are short and never wait on the network; the actor that
//!   owns the datapath runs on its own arbiter, so nothing else waits behind it.
//! - **`Send`**, so the datapath can be moved to the arbiter the actor runs on.
//! - **`conntrack_gc` reads its own clock**: conntrack lifetimes are stamped by the BPF programs
//!   in seconds of the kernel's monotonic clock, which only the implementation can read (the
//!   fake has a settable clock instead).

mod ct;
mod error;
mod ids;
mod ipcache;
mod lb;
mod link;
mod lxc;
mod policy;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use ct::{CtEntry, CtKey4, CtTupleFlags};
pub use error::{DatapathError, error_chain};
pub use ids::{BackendId, Direction, EndpointId, MacAddr, MacParseError, Protocol, RevNatId};
pub use ipcache::{IPCACHE_STATIC_PREFIX_BITS, IpcacheKey, RemoteEndpointInfo};
pub use lb::{
    Backend4Value, BackendSelection, BackendState, Frontend, RevNat4Value, Service4Key,
    Service4Value, ServiceFlags, ServiceScope,
};
pub use link::{
    EndpointLinkInfo, EndpointLinkSpec, EndpointLinks, LinkError, MAX_IFNAME_LEN, validate_ifname,
};
pub use lxc::{EndpointInfo, EndpointKey};
pub use policy::{
    AuthType, AuthTypeError, POLICY_FULL_PREFIX_BITS, POLICY_STATIC_PREFIX_BITS, PolicyEntry,
    PolicyKey, PolicyKeyError, PortPrefix, port_range_prefixes,
};

/// Entries of each per-endpoint policy map (upstream's default `PolicyMapEntries`).
pub const POLICY_MAP_CAPACITY: u32 = 16384;
/// Entries of `cilium_ipcache_v2`.
pub const IPCACHE_MAP_CAPACITY: u32 = 512_000;
/// Entries of `cilium_lxc`.
pub const LXC_MAP_CAPACITY: u32 = 65535;
/// Entries of each lb4 map (services, backends, reverse NAT).
pub const LB_MAP_CAPACITY: u32 = 65536;
/// Entries of `cilium_ct4_global`.
pub const CT_TCP_MAP_CAPACITY: u32 = 524_288;
/// Entries of `cilium_ct_any4_global`.
pub const CT_ANY_MAP_CAPACITY: u32 = 262_144;

/// A map the datapath exposes, named as it is pinned under `<bpf-root>/tc/globals/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum MapName {
    /// `cilium_policy_v2_<epid>`, one per endpoint, created explicitly.
    Policy(EndpointId),
    /// `cilium_ipcache_v2`.
    Ipcache,
    /// `cilium_lxc`.
    Lxc,
    /// `cilium_lb4_services_v2`.
    Lb4Services,
    /// `cilium_lb4_backends_v3`.
    Lb4Backends,
    /// `cilium_lb4_reverse_nat`.
    Lb4ReverseNat,
    /// `cilium_ct4_global` (TCP).
    Ct4Global,
    /// `cilium_ct_any4_global` (every other protocol).
    CtAny4Global,
}

impl MapName {
    /// The maps that exist for the whole node, whatever endpoints there are.
    pub const GLOBAL: [MapName; 7] = [
        MapName::Ipcache,
        MapName::Lxc,
        MapName::Lb4Services,
        MapName::Lb4Backends,
        MapName::Lb4ReverseNat,
        MapName::Ct4Global,
        MapName::CtAny4Global,
    ];

    /// The maximum number of entries, as the BPF programs declare it.
    pub const fn capacity(self) -> u32 {
        match self {
            MapName::Policy(_) => POLICY_MAP_CAPACITY,
            MapName::Ipcache => IPCACHE_MAP_CAPACITY,
            MapName::Lxc => LXC_MAP_CAPACITY,
            MapName::Lb4Services | MapName::Lb4Backends | MapName::Lb4ReverseNat => LB_MAP_CAPACITY,
            MapName::Ct4Global => CT_TCP_MAP_CAPACITY,
            MapName::CtAny4Global => CT_ANY_MAP_CAPACITY,
        }
    }

    /// LRU maps evict their oldest entry instead of failing when full.
    pub const fn is_lru(self) -> bool {
        matches!(self, MapName::Ct4Global | MapName::CtAny4Global)
    }

    /// The conntrack map a flow of `protocol` lives in.
    pub fn conntrack_for(protocol: Protocol) -> MapName {
        if protocol == Protocol::TCP {
            MapName::Ct4Global
        } else {
            MapName::CtAny4Global
        }
    }
}

const POLICY_MAP_PREFIX: &str = "cilium_policy_v2_";

impl fmt::Display for MapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Upstream pins per-endpoint maps with a five-digit, zero-padded id.
            MapName::Policy(ep) => write!(f, "{POLICY_MAP_PREFIX}{:05}", ep.get()),
            MapName::Ipcache => f.write_str("cilium_ipcache_v2"),
            MapName::Lxc => f.write_str("cilium_lxc"),
            MapName::Lb4Services => f.write_str("cilium_lb4_services_v2"),
            MapName::Lb4Backends => f.write_str("cilium_lb4_backends_v3"),
            MapName::Lb4ReverseNat => f.write_str("cilium_lb4_reverse_nat"),
            MapName::Ct4Global => f.write_str("cilium_ct4_global"),
            MapName::CtAny4Global => f.write_str("cilium_ct_any4_global"),
        }
    }
}

/// A name that is not one of the datapath's maps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a datapath map name")]
pub struct UnknownMapName {
    pub name: String,
}

impl FromStr for MapName {
    type Err = UnknownMapName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(id) = s.strip_prefix(POLICY_MAP_PREFIX) {
            let all_digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
            return match id.parse::<u16>() {
                Ok(id) if all_digits => Ok(MapName::Policy(EndpointId::new(id))),
                _ => Err(UnknownMapName { name: s.to_owned() }),
            };
        }
        MapName::GLOBAL
            .into_iter()
            .find(|map| map.to_string() == s)
            .ok_or_else(|| UnknownMapName { name: s.to_owned() })
    }
}

impl From<MapName> for String {
    fn from(map: MapName) -> Self {
        map.to_string()
    }
}

impl TryFrom<String> for MapName {
    type Error = UnknownMapName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A key of any map; which map follows from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKey {
    Policy {
        endpoint: EndpointId,
        key: PolicyKey,
    },
    Ipcache(IpcacheKey),
    Lxc(EndpointKey),
    Service(Service4Key),
    Backend(BackendId),
    RevNat(RevNatId),
    /// In `cilium_ct4_global` for TCP, `cilium_ct_any4_global` otherwise.
    Conntrack(CtKey4),
}

impl MapKey {
    /// The map this key lives in.
    pub fn map(&self) -> MapName {
        match self {
            MapKey::Policy { endpoint, .. } => MapName::Policy(*endpoint),
            MapKey::Ipcache(_) => MapName::Ipcache,
            MapKey::Lxc(_) => MapName::Lxc,
            MapKey::Service(_) => MapName::Lb4Services,
            MapKey::Backend(_) => MapName::Lb4Backends,
            MapKey::RevNat(_) => MapName::Lb4ReverseNat,
            MapKey::Conntrack(key) => MapName::conntrack_for(key.protocol),
        }
    }

    /// Whether `value` is of this key's map kind.
    pub fn accepts(&self, value: &MapValue) -> bool {
        matches!(
            (self, value),
            (MapKey::Policy { .. }, MapValue::Policy(_))
                | (MapKey::Ipcache(_), MapValue::Ipcache(_))
                | (MapKey::Lxc(_), MapValue::Lxc(_))
                | (MapKey::Service(_), MapValue::Service(_))
                | (MapKey::Backend(_), MapValue::Backend(_))
                | (MapKey::RevNat(_), MapValue::RevNat(_))
                | (MapKey::Conntrack(_), MapValue::Conntrack(_))
        )
    }
}

impl fmt::Display for MapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapKey::Policy { endpoint, key } => write!(f, "endpoint {endpoint} {key}"),
            MapKey::Ipcache(key) => write!(f, "{key}"),
            MapKey::Lxc(key) => write!(f, "{key}"),
            MapKey::Service(key) => write!(f, "{key}"),
            MapKey::Backend(id) => write!(f, "backend {id}"),
            MapKey::RevNat(id) => write!(f, "rev-nat {id}"),
            MapKey::Conntrack(key) => write!(f, "{key}"),
        }
    }
}

/// A value of any map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapValue {
    Policy(PolicyEntry),
    Ipcache(RemoteEndpointInfo),
    Lxc(EndpointInfo),
    Service(Service4Value),
    Backend(Backend4Value),
    RevNat(RevNat4Value),
    Conntrack(CtEntry),
}

impl MapValue {
    /// The kind of map the value belongs to, for error messages.
    pub const fn kind(&self) -> &'static str {
        match self {
            MapValue::Policy(_) => "policy",
            MapValue::Ipcache(_) => "ipcache",
            MapValue::Lxc(_) => "endpoint",
            MapValue::Service(_) => "service",
            MapValue::Backend(_) => "backend",
            MapValue::RevNat(_) => "rev-nat",
            MapValue::Conntrack(_) => "conntrack",
        }
    }
}

/// Where an endpoint's programs go: the host-side interface of its veth pair, in the node's
/// network namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointAttachment {
    pub endpoint: EndpointId,
    /// The host-side interface (`lxc...`).
    pub ifname: String,
    /// The node's network namespace (`/var/run/netns/NAME`); `None` for the agent's own.
    pub netns: Option<PathBuf>,
}

/// What one conntrack garbage-collection pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CtGcStats {
    /// Entries still alive after the pass.
    pub alive: u64,
    /// Expired entries removed.
    pub deleted: u64,
}

/// The direction of a `cilium_metrics` counter (upstream's `METRIC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricDirection {
    Unknown,
    Ingress,
    Egress,
    Service,
}

impl MetricDirection {
    /// Decodes the low two bits of the key's `dir` field.
    pub const fn from_bits(dir: u8) -> Self {
        match dir & 0b11 {
            1 => MetricDirection::Ingress,
            2 => MetricDirection::Egress,
            3 => MetricDirection::Service,
            _ => MetricDirection::Unknown,
        }
    }
}

/// One `cilium_metrics` counter, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MetricEntry {
    /// 0 for forwarded traffic, otherwise the drop reason (133 policy denied, ...).
    pub reason: u8,
    pub direction: MetricDirection,
    /// Source line of the drop site, 0 when forwarded.
    pub line: u16,
    /// Source file id of the drop site.
    pub file: u8,
    pub packets: u64,
    pub bytes: u64,
}

/// The kernel side of the datapath, as the single map writer sees it. See the module docs for
/// why it looks like this.
pub trait Datapath: Send + fmt::Debug {
    /// Inserts or overwrites one entry. Overwriting succeeds even when the map is full; a new
    /// key in a full map fails with [`DatapathError::MapFull`] (LRU maps evict instead).
    /// Writing to a policy map that does not exist fails with [`DatapathError::NoSuchMap`].
    fn update(&mut self, key: &MapKey, value: &MapValue) -> Result<(), DatapathError>;

    /// Removes one entry; `Ok(false)` if it was not there (also when its policy map is gone).
    fn delete(&mut self, key: &MapKey) -> Result<bool, DatapathError>;

    /// Every entry the kernel holds in `map`, in key order.
    fn list(&self, map: MapName) -> Result<Vec<(MapKey, MapValue)>, DatapathError>;

    /// The endpoints that have a (pinned) policy map, in id order.
    fn policy_maps(&self) -> Result<Vec<EndpointId>, DatapathError>;

    /// Creates (and pins) an endpoint's empty policy map; an existing map is kept as it is,
    /// with its entries, which is how a restarted agent adopts it.
    fn create_policy_map(&mut self, endpoint: EndpointId) -> Result<(), DatapathError>;

    /// Removes an endpoint's policy map with its entries; `Ok(false)` if there was none.
    fn remove_policy_map(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError>;

    /// Attaches the endpoint programs to the interface (replacing an earlier attachment of the
    /// same endpoint) and pins the links so they outlive the agent.
    fn attach_endpoint(&mut self, attachment: &EndpointAttachment) -> Result<(), DatapathError>;

    /// Detaches an endpoint's programs and removes the pinned links; `Ok(false)` if it was not
    /// attached.
    fn detach_endpoint(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError>;

    /// Removes expired conntrack entries from both conntrack maps.
    fn conntrack_gc(&mut self) -> Result<CtGcStats, DatapathError>;

    /// The `cilium_metrics` counters, summed over CPUs, in key order.
    fn read_metrics(&self) -> Result<Vec<MetricEntry>, DatapathError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_are_the_upstream_pin_names() {
        assert_eq!(
            MapName::Policy(EndpointId::new(42)).to_string(),
            "cilium_policy_v2_00042"
        );
        assert_eq!(MapName::Lb4Backends.to_string(), "cilium_lb4_backends_v3");
        for map in MapName::GLOBAL
            .into_iter()
            .chain([MapName::Policy(EndpointId::new(65535))])
        {
            assert_eq!(map.to_string().parse::<MapName>(), Ok(map));
        }
        for bad in [
            "cilium_policy_v2_",
            "cilium_policy_v2_70000",
            "cilium_policy_v2_+1",
            "cilium_lb4_services",
            "",
        ] {
            assert!(bad.parse::<MapName>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn conntrack_keys_pick_their_map_by_protocol() {
        let key = |protocol| {
            MapKey::Conntrack(CtKey4 {
                daddr: "10.0.0.1".parse().unwrap(),
                saddr: "10.0.0.2".parse().unwrap(),
                dport: 80,
                sport: 40000,
                protocol,
                flags: CtTupleFlags::OUT,
            })
        };
        assert_eq!(key(Protocol::TCP).map(), MapName::Ct4Global);
        assert_eq!(key(Protocol::UDP).map(), MapName::CtAny4Global);
    }
}
