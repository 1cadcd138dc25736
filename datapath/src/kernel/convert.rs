//! Conversions between the domain types of the [`Datapath`](crate::api::Datapath) boundary and
//! the `#[repr(C)]` layouts of [`crate::maps`], in both directions.
//!
//! Writing can fail only for domain values the layout cannot hold ([`EncodeError`]); reading
//! fails for kernel entries no domain value describes ([`DecodeError`]), which this crate never
//! writes. Both are pure functions, so the round trips are unit-tested without a kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};

use aya::maps::lpm_trie::Key;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use model::identity::{ClusterId, NumericIdentity};

use crate::api::{
    AuthType, Backend4Value, BackendId, BackendSelection, BackendState, CtEntry, CtKey4,
    CtTupleFlags, Direction, EndpointId, EndpointInfo, EndpointKey, Frontend, IpcacheKey, MacAddr,
    PolicyEntry, PolicyKey, Protocol, RemoteEndpointInfo, RevNat4Value, RevNatId, Service4Key,
    Service4Value, ServiceFlags, ServiceScope,
};
use crate::maps::ct as raw_ct;
use crate::maps::endpoint as raw_ep;
use crate::maps::ipcache as raw_ipcache;
use crate::maps::lb as raw_lb;
use crate::maps::policy as raw_policy;
use crate::maps::{FAMILY_IPV4, FAMILY_IPV6};

/// `ENDPOINT_F_HOST` in `endpoint_info.flags`.
const ENDPOINT_F_HOST: u32 = 1;
/// The deny bit and the shift of the protocol/port prefix length in `policy_entry.flags`.
const POLICY_F_DENY: u8 = raw_policy::POLICY_F_DENY;
const POLICY_PREFIX_SHIFT: u8 = 3;
const POLICY_AUTH_TYPE_MASK: u8 = 0x7f;
const POLICY_F_EXPLICIT_AUTH: u8 = 0x80;
/// The master entry's first word carries the selection algorithm in its top byte.
const SELECTION_SHIFT: u32 = 24;
const MASTER_BACKEND_MASK: u32 = (1 << SELECTION_SHIFT) - 1;

/// A domain value the kernel layout cannot represent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "backend id {id} of a master service entry does not fit beside the selection byte (24 bits)"
    )]
    MasterBackendId { id: BackendId },
    #[error("backend slot {slot} carries selection {selection:?}; only slot 0 stores one")]
    SelectionOnSlot {
        slot: u16,
        selection: BackendSelection,
    },
}

/// A kernel entry no domain value describes (never written through this crate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("address family {family} is neither IPv4 (1) nor IPv6 (2)")]
    Family { family: u8 },
    #[error("prefix length {prefix_len} does not fit the address family")]
    PrefixLen { prefix_len: u32 },
    #[error("cluster id {cluster_id} is beyond 255")]
    ClusterId { cluster_id: u16 },
    #[error("policy direction byte {value} is neither 0 nor 1")]
    Direction { value: u8 },
    #[error("policy key: {0}")]
    PolicyKey(#[from] crate::api::PolicyKeyError),
    #[error("service scope {value} is unknown")]
    Scope { value: u8 },
    #[error("backend selection {value} is unknown")]
    Selection { value: u32 },
    #[error("backend state {value} is unknown")]
    BackendState { value: u8 },
    #[error("conntrack backend id {value} is beyond 32 bits")]
    CtBackendId { value: u64 },
}

fn cluster_id(raw: u16) -> Result<ClusterId, DecodeError> {
    u8::try_from(raw)
        .map(ClusterId::new)
        .map_err(|_| DecodeError::ClusterId { cluster_id: raw })
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_IPV4,
        IpAddr::V6(_) => FAMILY_IPV6,
    }
}

/// The 16-byte address field of keys and values: IPv4 in the first four bytes.
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn addr_from_bytes(family: u8, bytes: [u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        FAMILY_IPV4 => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        FAMILY_IPV6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
        family => Err(DecodeError::Family { family }),
    }
}

fn pad_mac(mac: MacAddr) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..6].copy_from_slice(&mac.0);
    out
}

fn mac_from(raw: [u8; 8]) -> MacAddr {
    let [a, b, c, d, e, f, _, _] = raw;
    MacAddr([a, b, c, d, e, f])
}

// ---- Per-endpoint policy maps ----

pub fn policy_key(key: &PolicyKey) -> Key<raw_policy::PolicyKey> {
    Key::new(
        key.lpm_prefix_len(),
        raw_policy::PolicyKey {
            sec_label: key.identity().get(),
            egress: key.direction().as_u8(),
            protocol: key.protocol_number().get(),
            // PortPrefix keeps host bits zero, so this is the masked port the trie expects.
            dport: key.port_prefix().port().to_be(),
        },
    )
}

pub fn policy_key_from(raw: &Key<raw_policy::PolicyKey>) -> Result<PolicyKey, DecodeError> {
    let data = raw.data();
    let direction =
        Direction::from_u8(data.egress).ok_or(DecodeError::Direction { value: data.egress })?;
    Ok(PolicyKey::from_lpm(
        raw.prefix_len(),
        NumericIdentity::new(data.sec_label),
        direction,
        Protocol::new(data.protocol),
        u16::from_be(data.dport),
    )?)
}

pub fn policy_entry(key: &PolicyKey, entry: &PolicyEntry) -> raw_policy::PolicyEntry {
    let deny = if entry.deny { POLICY_F_DENY } else { 0 };
    let explicit = if entry.has_explicit_auth_type {
        POLICY_F_EXPLICIT_AUTH
    } else {
        0
    };
    raw_policy::PolicyEntry {
        proxy_port: entry.proxy_port.to_be(),
        flags: deny | (key.l4_prefix_len() << POLICY_PREFIX_SHIFT),
        auth_type: (entry.auth_type.get() & POLICY_AUTH_TYPE_MASK) | explicit,
        precedence: entry.precedence,
        cookie: entry.cookie,
    }
}

pub fn policy_entry_from(raw: &raw_policy::PolicyEntry) -> PolicyEntry {
    PolicyEntry {
        deny: raw.flags & POLICY_F_DENY != 0,
        proxy_port: u16::from_be(raw.proxy_port),
        // Seven bits always make a valid auth type.
        auth_type: AuthType::new(raw.auth_type & POLICY_AUTH_TYPE_MASK)
            .unwrap_or(AuthType::DISABLED),
        has_explicit_auth_type: raw.auth_type & POLICY_F_EXPLICIT_AUTH != 0,
        precedence: raw.precedence,
        cookie: raw.cookie,
    }
}

// ---- cilium_ipcache_v2 ----

pub fn ipcache_key(key: &IpcacheKey) -> Key<raw_ipcache::IpcacheKey> {
    let prefix = key.prefix();
    Key::new(
        key.lpm_prefix_len(),
        raw_ipcache::IpcacheKey {
            cluster_id: u16::from(key.cluster_id().get()),
            pad1: 0,
            family: family_of(prefix.addr()),
            ip: addr_bytes(prefix.addr()),
        },
    )
}

pub fn ipcache_key_from(raw: &Key<raw_ipcache::IpcacheKey>) -> Result<IpcacheKey, DecodeError> {
    let data = raw.data();
    let addr = addr_from_bytes(data.family, data.ip)?;
    let bits = raw
        .prefix_len()
        .checked_sub(raw_ipcache::IPCACHE_PREFIX_STATIC)
        .and_then(|bits| u8::try_from(bits).ok());
    let prefix = match (addr, bits) {
        (IpAddr::V4(v4), Some(bits)) => Ipv4Net::new(v4, bits).ok().map(IpNet::V4),
        (IpAddr::V6(v6), Some(bits)) => Ipv6Net::new(v6, bits).ok().map(IpNet::V6),
        (_, None) => None,
    }
    .ok_or(DecodeError::PrefixLen {
        prefix_len: raw.prefix_len(),
    })?;
    Ok(IpcacheKey::new(cluster_id(data.cluster_id)?, prefix))
}

pub fn remote_endpoint_info(info: &RemoteEndpointInfo) -> raw_ipcache::RemoteEndpointInfo {
    let mut flags = 0;
    if info.skip_tunnel {
        flags |= raw_ipcache::IPCACHE_F_SKIP_TUNNEL;
    }
    if info.remote_cluster {
        flags |= raw_ipcache::IPCACHE_F_REMOTE_CLUSTER;
    }
    let mut tunnel_endpoint = [0u8; 16];
    if let Some(node) = info.tunnel_endpoint {
        flags |= raw_ipcache::IPCACHE_F_HAS_TUNNEL_EP;
        if node.is_ipv6() {
            flags |= raw_ipcache::IPCACHE_F_IPV6_TUNNEL_EP;
        }
        tunnel_endpoint = addr_bytes(node);
    }
    raw_ipcache::RemoteEndpointInfo {
        sec_identity: info.identity.get(),
        tunnel_endpoint,
        pad: 0,
        key: info.encrypt_key,
        flags,
    }
}

pub fn remote_endpoint_info_from(raw: &raw_ipcache::RemoteEndpointInfo) -> RemoteEndpointInfo {
    let flags = raw.flags;
    let tunnel_endpoint = (flags & raw_ipcache::IPCACHE_F_HAS_TUNNEL_EP != 0).then(|| {
        let family = if flags & raw_ipcache::IPCACHE_F_IPV6_TUNNEL_EP != 0 {
            FAMILY_IPV6
        } else {
            FAMILY_IPV4
        };
        // The family is one of the two known ones, so this cannot fail.
        addr_from_bytes(family, raw.tunnel_endpoint).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    });
    RemoteEndpointInfo {
        identity: NumericIdentity::new(raw.sec_identity),
        tunnel_endpoint,
        encrypt_key: raw.key,
        skip_tunnel: flags & raw_ipcache::IPCACHE_F_SKIP_TUNNEL != 0,
        remote_cluster: flags & raw_ipcache::IPCACHE_F_REMOTE_CLUSTER != 0,
    }
}

// ---- cilium_lxc ----

pub fn endpoint_key(key: &EndpointKey) -> raw_ep::EndpointKey {
    raw_ep::EndpointKey {
        ip: addr_bytes(key.ip),
        family: family_of(key.ip),
        key: 0,
        cluster_id: 0,
    }
}

pub fn endpoint_key_from(raw: &raw_ep::EndpointKey) -> Result<EndpointKey, DecodeError> {
    let (family, ip) = (raw.family, raw.ip);
    Ok(EndpointKey::new(addr_from_bytes(family, ip)?))
}

pub fn endpoint_info(info: &EndpointInfo) -> raw_ep::EndpointInfo {
    raw_ep::EndpointInfo {
        ifindex: info.ifindex,
        lxc_id: info.lxc_id.get(),
        flags: if info.is_host { ENDPOINT_F_HOST } else { 0 },
        mac: pad_mac(info.mac),
        node_mac: pad_mac(info.node_mac),
        sec_id: info.identity.get(),
        ..raw_ep::EndpointInfo::default()
    }
}

pub fn endpoint_info_from(raw: &raw_ep::EndpointInfo) -> EndpointInfo {
    EndpointInfo {
        ifindex: raw.ifindex,
        lxc_id: EndpointId::new(raw.lxc_id),
        mac: mac_from(raw.mac),
        node_mac: mac_from(raw.node_mac),
        identity: NumericIdentity::new(raw.sec_id),
        is_host: raw.flags & ENDPOINT_F_HOST != 0,
    }
}

// ---- lb4 maps ----

pub fn service_key(key: &Service4Key) -> raw_lb::Lb4Key {
    let frontend = key.frontend;
    raw_lb::Lb4Key {
        address: frontend.addr.ip().octets(),
        dport: frontend.addr.port().to_be(),
        backend_slot: key.backend_slot,
        proto: frontend.protocol.get(),
        scope: frontend.scope.as_u8(),
        pad: [0; 2],
    }
}

pub fn service_key_from(raw: &raw_lb::Lb4Key) -> Result<Service4Key, DecodeError> {
    let scope = ServiceScope::from_u8(raw.scope).ok_or(DecodeError::Scope { value: raw.scope })?;
    Ok(Service4Key {
        frontend: Frontend {
            addr: SocketAddrV4::new(Ipv4Addr::from(raw.address), u16::from_be(raw.dport)),
            protocol: Protocol::new(raw.proto),
            scope,
        },
        backend_slot: raw.backend_slot,
    })
}

pub fn service_value(
    key: &Service4Key,
    value: &Service4Value,
) -> Result<raw_lb::Lb4Service, EncodeError> {
    let backend_id = if key.backend_slot == 0 {
        let id = value.backend_id.get();
        if id > MASTER_BACKEND_MASK {
            return Err(EncodeError::MasterBackendId {
                id: value.backend_id,
            });
        }
        (u32::from(value.selection.as_u8()) << SELECTION_SHIFT) | id
    } else {
        // Slots carry a full backend id; a selection there would not read back.
        if value.selection != BackendSelection::Default {
            return Err(EncodeError::SelectionOnSlot {
                slot: key.backend_slot,
                selection: value.selection,
            });
        }
        value.backend_id.get()
    };
    let [flags, flags2] = value.flags.bits().to_le_bytes();
    Ok(raw_lb::Lb4Service {
        backend_id,
        count: value.count,
        rev_nat_index: value.rev_nat.get().to_be(),
        flags,
        flags2,
        qcount: 0,
    })
}

pub fn service_value_from(
    key: &Service4Key,
    raw: &raw_lb::Lb4Service,
) -> Result<Service4Value, DecodeError> {
    let (backend_id, selection) = if key.backend_slot == 0 {
        let code = raw.backend_id >> SELECTION_SHIFT;
        let selection = u8::try_from(code)
            .ok()
            .and_then(BackendSelection::from_u8)
            .ok_or(DecodeError::Selection { value: code })?;
        (raw.backend_id & MASTER_BACKEND_MASK, selection)
    } else {
        (raw.backend_id, BackendSelection::Default)
    };
    Ok(Service4Value {
        backend_id: BackendId::new(backend_id),
        count: raw.count,
        rev_nat: RevNatId::new(u16::from_be(raw.rev_nat_index)),
        selection,
        flags: ServiceFlags::from_bits(u16::from_le_bytes([raw.flags, raw.flags2])),
    })
}

pub fn backend_value(value: &Backend4Value) -> raw_lb::Lb4Backend {
    raw_lb::Lb4Backend {
        address: value.addr.ip().octets(),
        port: value.addr.port().to_be(),
        proto: value.protocol.get(),
        flags: value.state.as_u8(),
        cluster_id: u16::from(value.cluster_id.get()),
        zone: 0,
        pad: 0,
    }
}

pub fn backend_value_from(raw: &raw_lb::Lb4Backend) -> Result<Backend4Value, DecodeError> {
    let state =
        BackendState::from_u8(raw.flags).ok_or(DecodeError::BackendState { value: raw.flags })?;
    Ok(Backend4Value {
        addr: raw.socket_addr(),
        protocol: Protocol::new(raw.proto),
        state,
        cluster_id: cluster_id(raw.cluster_id)?,
    })
}

/// `cilium_lb4_reverse_nat` is keyed by the index in network order, as the programs read it
/// from conntrack entries.
pub fn rev_nat_key(id: RevNatId) -> u16 {
    raw_lb::RevNatIndex::new(id.get()).to_key()
}

pub fn rev_nat_key_from(raw: u16) -> RevNatId {
    RevNatId::new(u16::from_be(raw))
}

pub fn rev_nat_value(value: &RevNat4Value) -> raw_lb::Lb4ReverseNat {
    raw_lb::Lb4ReverseNat::new(value.frontend)
}

pub fn rev_nat_value_from(raw: &raw_lb::Lb4ReverseNat) -> RevNat4Value {
    let (address, port) = (raw.address, raw.port);
    RevNat4Value {
        frontend: SocketAddrV4::new(Ipv4Addr::from(address), u16::from_be(port)),
    }
}

// ---- Conntrack ----

pub fn ct_key(key: &CtKey4) -> raw_ct::CtTuple4 {
    raw_ct::CtTuple4 {
        daddr: key.daddr.octets(),
        saddr: key.saddr.octets(),
        dport: key.dport.to_be(),
        sport: key.sport.to_be(),
        nexthdr: key.protocol.get(),
        flags: key.flags.bits(),
    }
}

pub fn ct_key_from(raw: &raw_ct::CtTuple4) -> CtKey4 {
    let (daddr, saddr, dport, sport) = (raw.daddr, raw.saddr, raw.dport, raw.sport);
    CtKey4 {
        daddr: Ipv4Addr::from(daddr),
        saddr: Ipv4Addr::from(saddr),
        dport: u16::from_be(dport),
        sport: u16::from_be(sport),
        protocol: Protocol::new(raw.nexthdr),
        flags: CtTupleFlags::from_bits(raw.flags),
    }
}

/// Fields the domain entry does not carry (report timestamps, the creating device) are zero:
/// the agent writes conntrack entries only in tests and repairs.
pub fn ct_entry(entry: &CtEntry) -> raw_ct::CtEntry {
    raw_ct::CtEntry {
        backend_id: u64::from(entry.backend_id.get()),
        packets: entry.packets,
        bytes: entry.bytes,
        lifetime: entry.lifetime,
        flags: entry.flags,
        rev_nat_index: entry.rev_nat.get().to_be(),
        tx_flags_seen: entry.tx_flags_seen,
        rx_flags_seen: entry.rx_flags_seen,
        src_sec_id: entry.src_identity.get(),
        ..raw_ct::CtEntry::default()
    }
}

pub fn ct_entry_from(raw: &raw_ct::CtEntry) -> Result<CtEntry, DecodeError> {
    let backend_id = u32::try_from(raw.backend_id).map_err(|_| DecodeError::CtBackendId {
        value: raw.backend_id,
    })?;
    Ok(CtEntry {
        lifetime: raw.lifetime,
        flags: raw.flags,
        rev_nat: RevNatId::new(u16::from_be(raw.rev_nat_index)),
        backend_id: BackendId::new(backend_id),
        src_identity: NumericIdentity::new(raw.src_sec_id),
        packets: raw.packets,
        bytes: raw.bytes,
        tx_flags_seen: raw.tx_flags_seen,
        rx_flags_seen: raw.rx_flags_seen,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::api::PortPrefix;

    #[test]
    fn policy_layout_matches_the_c_side() {
        let key = PolicyKey::port(
            NumericIdentity::new(1234),
            Direction::Egress,
            Protocol::TCP,
            80,
        )
        .unwrap();
        let raw = policy_key(&key);
        assert_eq!(raw.prefix_len(), 64);
        let data = raw.data();
        assert_eq!(
            (data.sec_label, data.egress, data.protocol, { data.dport }),
            (1234, 1, 6, 80u16.to_be())
        );
        let entry = PolicyEntry {
            proxy_port: 15001,
            auth_type: AuthType::SPIRE,
            has_explicit_auth_type: true,
            ..PolicyEntry::deny()
        };
        let raw_entry = policy_entry(&key, &entry);
        // deny:1, reserved:2, lpm_prefix_length:5 = 24 protocol and port bits.
        assert_eq!(raw_entry.flags, 1 | (24 << 3));
        assert_eq!(raw_entry.lpm_prefix_length(), 24);
        assert_eq!(raw_entry.auth_type, 0x81);
        assert_eq!(raw_entry.proxy_port, 15001u16.to_be());
        assert_eq!(policy_entry_from(&raw_entry), entry);
        // The layout's own constructor agrees on the flags of an L3-only allow.
        let l3 = PolicyKey::l3(NumericIdentity::new(7), Direction::Ingress);
        assert_eq!(
            policy_entry(&l3, &PolicyEntry::allow()),
            raw_policy::PolicyEntry::allow(raw_policy::L4Match::Any)
        );
    }

    #[test]
    fn undecodable_policy_keys_are_reported() {
        let raw = Key::new(
            40,
            raw_policy::PolicyKey {
                sec_label: 1,
                egress: 2,
                protocol: 0,
                dport: 0,
            },
        );
        assert_eq!(
            policy_key_from(&raw),
            Err(DecodeError::Direction { value: 2 })
        );
        let raw = Key::new(
            39,
            raw_policy::PolicyKey {
                sec_label: 1,
                egress: 0,
                protocol: 0,
                dport: 0,
            },
        );
        assert!(matches!(
            policy_key_from(&raw),
            Err(DecodeError::PolicyKey(_))
        ));
    }

    #[test]
    fn master_entry_carries_the_selection_in_the_top_byte() {
        let key = Service4Key {
            frontend: Frontend::new("10.96.0.10:80".parse().unwrap(), Protocol::TCP),
            backend_slot: 0,
        };
        let value = Service4Value::master(
            2,
            RevNatId::new(0x0102),
            BackendSelection::Hash,
            ServiceFlags::ROUTABLE,
        );
        let raw = service_value(&key, &value).unwrap();
        assert_eq!(raw.backend_id >> 24, 2);
        assert_eq!(raw.rev_nat_index, 0x0102u16.to_be());
        assert_eq!(raw.flags, 1 << 6);
        assert_eq!(service_value_from(&key, &raw), Ok(value));
        let raw_key = service_key(&key);
        assert_eq!(
            raw_key,
            raw_lb::Lb4Key::master("10.96.0.10:80".parse().unwrap(), 6)
        );
        assert_eq!(service_key_from(&raw_key), Ok(key));

        let slot = Service4Key {
            backend_slot: 1,
            ..key
        };
        let bad = Service4Value {
            selection: BackendSelection::Random,
            ..Service4Value::slot(BackendId::new(9), RevNatId::new(1), ServiceFlags::NONE)
        };
        assert!(matches!(
            service_value(&slot, &bad),
            Err(EncodeError::SelectionOnSlot { slot: 1, .. })
        ));
        let big = Service4Value {
            backend_id: BackendId::new(1 << 24),
            ..value
        };
        assert!(matches!(
            service_value(&key, &big),
            Err(EncodeError::MasterBackendId { .. })
        ));
    }

    #[test]
    fn rev_nat_keys_are_big_endian() {
        assert_eq!(rev_nat_key(RevNatId::new(1)), 1u16.to_be());
        assert_eq!(
            rev_nat_key_from(rev_nat_key(RevNatId::new(513))),
            RevNatId::new(513)
        );
    }

    #[test]
    fn ipcache_and_endpoint_keys_of_both_families_round_trip() {
        for prefix in ["10.1.0.0/16", "0.0.0.0/0", "fd00::/64", "fd00::1/128"] {
            let key = IpcacheKey::new(ClusterId::new(3), prefix.parse().unwrap());
            assert_eq!(ipcache_key_from(&ipcache_key(&key)), Ok(key), "{prefix}");
        }
        for ip in ["10.0.0.1", "fd00::1"] {
            let key = EndpointKey::new(ip.parse().unwrap());
            assert_eq!(endpoint_key_from(&endpoint_key(&key)), Ok(key));
        }
        let v4 = EndpointKey::new("10.0.0.1".parse().unwrap());
        assert_eq!(
            endpoint_key(&v4),
            raw_ep::EndpointKey::ipv4(Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn ipcache_values_round_trip_with_flags() {
        for tunnel in [None, Some("192.168.1.1"), Some("fd00::9")] {
            let info = RemoteEndpointInfo {
                identity: NumericIdentity::new(77),
                tunnel_endpoint: tunnel.map(|t| t.parse().unwrap()),
                encrypt_key: 3,
                skip_tunnel: true,
                remote_cluster: true,
            };
            assert_eq!(
                remote_endpoint_info_from(&remote_endpoint_info(&info)),
                info
            );
        }
    }

    #[test]
    fn unknown_families_are_decode_errors() {
        let raw = raw_ep::EndpointKey {
            family: 9,
            ..raw_ep::EndpointKey::default()
        };
        assert_eq!(
            endpoint_key_from(&raw),
            Err(DecodeError::Family { family: 9 })
        );
    }

    proptest! {
        #[test]
        fn policy_keys_round_trip(id in any::<u32>(), egress in any::<bool>(), proto in 0u8.., port in any::<u16>(), len in 0u8..=16) {
            let direction = if egress { Direction::Egress } else { Direction::Ingress };
            let port = if proto == 0 { PortPrefix::ANY } else { PortPrefix::truncating(port, len) };
            let key = PolicyKey::new(NumericIdentity::new(id), direction, Protocol::new(proto), port).unwrap();
            prop_assert_eq!(policy_key_from(&policy_key(&key)), Ok(key));
        }

        #[test]
        fn conntrack_entries_round_trip(lifetime in any::<u32>(), flags in any::<u16>(), rev in any::<u16>(), backend in any::<u32>(), id in any::<u32>(), sport in any::<u16>(), proto in any::<u8>()) {
            let key = CtKey4 {
                daddr: Ipv4Addr::new(10, 0, 0, 1),
                saddr: Ipv4Addr::new(10, 0, 0, 2),
                dport: 80,
                sport,
                protocol: Protocol::new(proto),
                flags: CtTupleFlags::SERVICE,
            };
            prop_assert_eq!(ct_key_from(&ct_key(&key)), key);
            let entry = CtEntry {
                lifetime,
                flags,
                rev_nat: RevNatId::new(rev),
                backend_id: BackendId::new(backend),
                src_identity: NumericIdentity::new(id),
                packets: 1,
                bytes: 2,
                tx_flags_seen: 3,
                rx_flags_seen: 4,
            };
            prop_assert_eq!(ct_entry_from(&ct_entry(&entry)), Ok(entry));
        }

        #[test]
        fn backends_round_trip(a in any::<u32>(), port in any::<u16>(), state in 0u8..4, cluster in any::<u8>()) {
            let value = Backend4Value {
                addr: SocketAddrV4::new(Ipv4Addr::from(a), port),
                protocol: Protocol::UDP,
                state: BackendState::from_u8(state).unwrap(),
                cluster_id: ClusterId::new(cluster),
            };
            prop_assert_eq!(backend_value_from(&backend_value(&value)), Ok(value));
        }
    }
}
