//! `cilium_lxc`: the local endpoints by IP address (upstream `bpf/lib/eps.h`).

use std::net::Ipv4Addr;

use model::identity::NumericIdentity;

use super::{EndpointId, FAMILY_IPV4};

/// Key of `cilium_lxc`: an endpoint address (upstream `struct endpoint_key`, 20 bytes packed).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointKey {
    /// IPv4 address in the first 4 bytes (network order), IPv6 in all 16.
    pub ip: [u8; 16],
    /// `1` IPv4, `2` IPv6 (upstream `ENDPOINT_KEY_IPV4/IPV6`).
    pub family: u8,
    /// Unused for local endpoints.
    pub key: u8,
    /// Cluster of the endpoint; local endpoints use 0.
    pub cluster_id: u16,
}

// SAFETY: plain bytes, no padding (packed), every bit pattern valid.
unsafe impl aya::Pod for EndpointKey {}

impl EndpointKey {
    /// The key of a local IPv4 endpoint.
    pub fn ipv4(addr: Ipv4Addr) -> Self {
        let mut ip = [0u8; 16];
        ip[..4].copy_from_slice(&addr.octets());
        Self {
            ip,
            family: FAMILY_IPV4,
            key: 0,
            cluster_id: 0,
        }
    }
}

/// Value of `cilium_lxc` (upstream `struct endpoint_info`, 48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// Interface index of the host-side veth, where the programs run; the programs drop packets
    /// that claim this endpoint's address on any other interface.
    pub ifindex: u32,
    pub unused: u16,
    /// The endpoint id, which selects the endpoint's policy map.
    pub lxc_id: u16,
    /// `ENDPOINT_F_*` flags (`1`: the entry is the local host).
    pub flags: u32,
    pub rt_info: u32,
    /// Pod-side MAC address (6 bytes, 2 bytes padding).
    pub mac: [u8; 8],
    /// Host-side veth MAC: the ARP responder answers the pod's gateway requests with it.
    pub node_mac: [u8; 8],
    /// The endpoint's security identity.
    pub sec_id: u32,
    pub parent_ifindex: u32,
    pub pad: [u32; 2],
}

// SAFETY: repr(C) with naturally aligned fields and no implicit padding (size asserted below).
unsafe impl aya::Pod for EndpointInfo {}

impl EndpointInfo {
    /// The entry of a pod endpoint behind the host-side veth `ifindex`.
    pub fn new(
        ifindex: u32,
        id: EndpointId,
        identity: NumericIdentity,
        mac: [u8; 6],
        node_mac: [u8; 6],
    ) -> Self {
        Self {
            ifindex,
            lxc_id: id.get(),
            mac: pad_mac(mac),
            node_mac: pad_mac(node_mac),
            sec_id: identity.get(),
            ..Self::default()
        }
    }

    /// The endpoint id stored in the entry.
    pub fn endpoint_id(&self) -> EndpointId {
        EndpointId::new(self.lxc_id)
    }

    /// The security identity stored in the entry.
    pub fn identity(&self) -> NumericIdentity {
        NumericIdentity::new(self.sec_id)
    }
}

fn pad_mac(mac: [u8; 6]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..6].copy_from_slice(&mac);
    out
}

const _: () = assert!(size_of::<EndpointKey>() == 20);
const _: () = assert!(size_of::<EndpointInfo>() == 48);
