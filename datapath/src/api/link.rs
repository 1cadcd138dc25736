//! An endpoint's network plumbing: the veth pair between the node and the pod, the pod's
//! address and routes, and the node's route and neighbour entry towards the pod.
//!
//! The endpoint manager holds an `Arc<dyn EndpointLinks>`: the netlink implementation
//! (`crate::link`, feature `kernel`) in the agent, the in-memory fake (`crate::fake_link`,
//! feature `test-util`) in tests and the simulation.
//!
//! Why the trait has this shape:
//! - **Async through `async-trait`** (boxed `Send` futures): netlink requests are answered
//!   asynchronously and the pod-side work waits for a helper thread, so a synchronous trait
//!   would block the endpoint manager's arbiter; boxed futures keep the trait object-safe,
//!   which the manager needs to swap the kernel out.
//! - **Keyed by the host-side interface name**: it is derived from the container id, so a
//!   restarted agent (or a CNI DEL after a crash) finds the pair again without other state.
//! - **Idempotent removal**: `delete` succeeds when the pair is already gone, because a pod's
//!   namespace going away takes the pair with it.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::ids::{EndpointId, MacAddr};

/// The longest interface name Linux accepts (`IFNAMSIZ` minus the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// What to build for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointLinkSpec {
    pub endpoint: EndpointId,
    /// The node-side end of the pair (`lxc` + hash, at most [`MAX_IFNAME_LEN`] bytes).
    pub host_ifname: String,
    /// The pod's network namespace (`/proc/<pid>/ns/net` or `/var/run/netns/<name>`).
    pub pod_netns: PathBuf,
    /// The pod-side name of the peer (`eth0`).
    pub pod_ifname: String,
    /// The pod's address; configured as a /32.
    pub pod_ip: Ipv4Addr,
    /// The router address the pod reaches everything through.
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// What was built (or found) for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointLinkInfo {
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// The node-side MAC, which the pod sees as its gateway's.
    pub host_mac: MacAddr,
    /// The pod-side MAC.
    pub pod_mac: MacAddr,
    /// The pod-side interface index inside the pod's namespace (0 when unknown, e.g. from
    /// [`EndpointLinks::get`], which does not enter the pod's namespace).
    pub pod_ifindex: u32,
    pub mtu: u32,
}

/// A failed link operation, naming the interface and the step.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("interface name {name:?} is empty or longer than {MAX_IFNAME_LEN} bytes")]
    InvalidName { name: String },
    #[error("interface {ifname} already exists")]
    Exists { ifname: String },
    #[error("pod network namespace {path} cannot be opened")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{step} for interface {ifname} failed")]
    Netlink {
        ifname: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sysctl {path} could not be written")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The pod plumbing of endpoints. See the module docs for why it looks like this.
#[async_trait]
pub trait EndpointLinks: Send + Sync + fmt::Debug {
    /// Creates the veth pair, moves and configures the peer inside the pod's namespace
    /// (name, MAC, up, address /32, a link route to the gateway and the default route via it)
    /// and configures the node side (up, route to the pod's /32, permanent neighbour entry,
    /// `rp_filter` off). Fails with [`LinkError::Exists`] if `host_ifname` exists; on any
    /// other failure nothing of the pair is left behind.
    async fn create(&self, spec: &EndpointLinkSpec) -> Result<EndpointLinkInfo, LinkError>;

    /// Removes the pair by its host side; `Ok(false)` if it was not there.
    async fn delete(&self, host_ifname: &str) -> Result<bool, LinkError>;

    /// The host side of a pair, if it exists (how a restarted agent checks its endpoints).
    async fn get(&self, host_ifname: &str) -> Result<Option<EndpointLinkInfo>, LinkError>;
}

/// Checks an interface name against the kernel's limits.
pub fn validate_ifname(name: &str) -> Result<(), LinkError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(LinkError::InvalidName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_limits() {
        assert!(validate_ifname("lxc0123456789a").is_ok());
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", "lxc0123456789abc", "a/b", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }
}
