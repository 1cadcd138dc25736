//! `cilium_lxc` entries: the local endpoints by IP address, with the interface the programs run
//! on, the endpoint id that selects the policy map, MACs and the endpoint's own identity.

use std::fmt;
use std::net::IpAddr;

use model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

use super::ids::{EndpointId, MacAddr};

/// A local endpoint's address (upstream's `endpoint_key`; the cluster id is always 0 for local
/// endpoints and therefore not carried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointKey {
    pub ip: IpAddr,
}

impl EndpointKey {
    pub const fn new(ip: IpAddr) -> Self {
        EndpointKey { ip }
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip)
    }
}

/// A local endpoint (upstream's `endpoint_info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// The host-side interface the endpoint's programs are attached to.
    pub ifindex: u32,
    /// The endpoint id (`lxc_id`), which names the endpoint's policy map.
    pub lxc_id: EndpointId,
    /// The pod-side MAC.
    pub mac: MacAddr,
    /// The host-side MAC, which the pod sees as its gateway.
    pub node_mac: MacAddr,
    /// The endpoint's own security identity.
    pub identity: NumericIdentity,
    /// The entry is the local host, not a pod (`ENDPOINT_F_HOST`).
    pub is_host: bool,
}
