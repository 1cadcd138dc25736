//! `cilium_ipcache_v2`: prefix to identity for every peer (upstream `struct ipcache_key` and
//! `struct remote_endpoint_info`).

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use ipnet::Ipv4Net;
use model::identity::NumericIdentity;

use super::FAMILY_IPV4;

/// Bits of the key before the address: cluster id, padding and family.
pub const IPCACHE_PREFIX_STATIC: u32 = 32;

/// The part of the ipcache LPM key after the prefix length (20 bytes packed).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpcacheKey {
    pub cluster_id: u16,
    pub pad1: u8,
    /// `1` IPv4, `2` IPv6.
    pub family: u8,
    /// IPv4 address in the first 4 bytes (network order).
    pub ip: [u8; 16],
}

// SAFETY: packed plain bytes.
unsafe impl aya::Pod for IpcacheKey {}

impl IpcacheKey {
    /// The LPM key of an IPv4 prefix in the local cluster.
    pub fn ipv4(net: Ipv4Net) -> Key<IpcacheKey> {
        let mut ip = [0u8; 16];
        ip[..4].copy_from_slice(&net.network().octets());
        Key::new(
            IPCACHE_PREFIX_STATIC + u32::from(net.prefix_len()),
            IpcacheKey {
                cluster_id: 0,
                pad1: 0,
                family: FAMILY_IPV4,
                ip,
            },
        )
    }
}

/// Flag: no tunnel to this peer even in tunnel mode.
pub const IPCACHE_F_SKIP_TUNNEL: u8 = 1 << 0;
/// Flag: `tunnel_endpoint` holds the node to encapsulate to.
pub const IPCACHE_F_HAS_TUNNEL_EP: u8 = 1 << 1;
/// Flag: the tunnel endpoint is an IPv6 address.
pub const IPCACHE_F_IPV6_TUNNEL_EP: u8 = 1 << 2;
/// Flag: the peer is in another cluster.
pub const IPCACHE_F_REMOTE_CLUSTER: u8 = 1 << 3;

/// Value of the ipcache (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteEndpointInfo {
    pub sec_identity: u32,
    /// Node IP to tunnel to (IPv4 in the first 4 bytes).
    pub tunnel_endpoint: [u8; 16],
    pub pad: u16,
    /// Encryption key index.
    pub key: u8,
    /// `IPCACHE_F_*`.
    pub flags: u8,
}

// SAFETY: repr(C), 4 + 16 + 2 + 1 + 1 bytes, no padding.
unsafe impl aya::Pod for RemoteEndpointInfo {}

impl RemoteEndpointInfo {
    /// An entry for `identity`, reached through `tunnel_endpoint` if given.
    pub fn new(identity: NumericIdentity, tunnel_endpoint: Option<Ipv4Addr>) -> Self {
        let mut info = Self {
            sec_identity: identity.get(),
            ..Self::default()
        };
        if let Some(node) = tunnel_endpoint {
            info.tunnel_endpoint[..4].copy_from_slice(&node.octets());
            info.flags |= IPCACHE_F_HAS_TUNNEL_EP;
        }
        info
    }

    /// The identity of the prefix.
    pub fn identity(&self) -> NumericIdentity {
        NumericIdentity::new(self.sec_identity)
    }
}

const _: () = assert!(size_of::<IpcacheKey>() == 20);
const _: () = assert!(size_of::<Key<IpcacheKey>>() == 24);
const _: () = assert!(size_of::<RemoteEndpointInfo>() == 24);
