//! `cilium_ipcache_v2` entries: which identity a remote address (or prefix) has, and how to
//! reach it (tunnel endpoint, encryption key). An LPM trie, so a /32 beats its /24.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use model::identity::{ClusterId, NumericIdentity};
use serde::{Deserialize, Serialize};

/// Prefix bits before the address in the trie key: cluster id (16), pad (8), family (8).
pub const IPCACHE_STATIC_PREFIX_BITS: u32 = 32;

/// An ipcache key: a prefix within a cluster. The prefix is stored truncated, because the trie
/// ignores bits beyond the prefix length and two such keys name the same entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpcacheKey {
    cluster_id: ClusterId,
    prefix: IpNet,
}

impl IpcacheKey {
    pub fn new(cluster_id: ClusterId, prefix: IpNet) -> Self {
        IpcacheKey {
            cluster_id,
            prefix: prefix.trunc(),
        }
    }

    /// A single address of the local cluster (/32 or /128).
    pub fn host(ip: IpAddr) -> Self {
        Self::new(ClusterId::UNSET, IpNet::from(ip))
    }

    pub const fn cluster_id(&self) -> ClusterId {
        self.cluster_id
    }

    pub const fn prefix(&self) -> IpNet {
        self.prefix
    }

    /// The trie prefix length: the static part plus the address prefix.
    pub fn lpm_prefix_len(&self) -> u32 {
        IPCACHE_STATIC_PREFIX_BITS + u32::from(self.prefix.prefix_len())
    }
}

impl fmt::Display for IpcacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cluster_id == ClusterId::UNSET {
            write!(f, "{}", self.prefix)
        } else {
            write!(f, "{} (cluster {})", self.prefix, self.cluster_id.get())
        }
    }
}

/// What the datapath knows about a remote prefix (upstream's `remote_endpoint_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RemoteEndpointInfo {
    pub identity: NumericIdentity,
    /// The node to tunnel to in tunnel mode; `None` for local or directly routed peers.
    pub tunnel_endpoint: Option<IpAddr>,
    /// Encryption key index, 0 for none.
    pub encrypt_key: u8,
    /// Never tunnel traffic to this prefix, even in tunnel mode.
    pub skip_tunnel: bool,
    /// The prefix belongs to a remote cluster of the mesh.
    pub remote_cluster: bool,
}

impl RemoteEndpointInfo {
    /// An entry with only an identity.
    pub fn identity(identity: NumericIdentity) -> Self {
        RemoteEndpointInfo {
            identity,
            tunnel_endpoint: None,
            encrypt_key: 0,
            skip_tunnel: false,
            remote_cluster: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_truncated_to_their_prefix() {
        let a = IpcacheKey::new(ClusterId::UNSET, "10.1.2.3/24".parse().unwrap());
        let b = IpcacheKey::new(ClusterId::UNSET, "10.1.2.0/24".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "10.1.2.0/24");
        assert_eq!(a.lpm_prefix_len(), 56);
        let host = IpcacheKey::host("fd00::1".parse().unwrap());
        assert_eq!(host.lpm_prefix_len(), 160);
    }
}
