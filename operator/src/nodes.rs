//! Which nodes of the cluster exist, and when those that vanished are due for garbage
//! collection: a pure state machine fed with node-record events, no IO.
//!
//! A node record disappears when its agent's lease expires or someone deletes it. The operator
//! waits `--nodes-gc-interval` before cleaning up after it (its pod CIDR, ipcache entries
//! written without a lease), because an agent that restarts or loses its lease re-creates its
//! record within seconds and must find its CIDR unchanged. The node's last known IP is kept
//! from its records, since the ipcache entries to clean up name their node only by IP.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use kvstore::keys::Node;
use tokio::time::Instant;

/// The name of a node, as it appears in `cilium/state/nodes/v1/<cluster>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    pub fn new(name: impl Into<String>) -> Self {
        NodeName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The IPv4 pod CIDR a node record announces (`IPv4AllocCIDR`), if any.
pub fn announced_ipv4_cidr(node: &Node) -> Option<Ipv4Net> {
    match node.ipv4_alloc_cidr?.net() {
        IpNet::V4(net) => Some(net),
        IpNet::V6(_) => None,
    }
}

/// The IP the rest of the cluster knows a node by: its first `InternalIP` (the address agents
/// write as `HostIP` of their ipcache entries), else its first address of any type, IPv4 first.
pub fn node_ip(node: &Node) -> Option<IpAddr> {
    let with_ip = || {
        node.ip_addresses
            .iter()
            .filter_map(|a| a.ip.map(|ip| (a, ip)))
    };
    with_ip()
        .find(|(a, ip)| a.address_type == "InternalIP" && ip.is_ipv4())
        .or_else(|| with_ip().find(|(a, _)| a.address_type == "InternalIP"))
        .or_else(|| with_ip().find(|(_, ip)| ip.is_ipv4()))
        .or_else(|| with_ip().next())
        .map(|(_, ip)| ip)
}

/// A node whose record has been gone for the whole grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneNode {
    pub name: NodeName,
    /// The IP of its last record; `None` when the operator never saw one (an allocation left
    /// over from before the operator started).
    pub last_ip: Option<IpAddr>,
}

#[derive(Debug, Clone)]
struct Tracked {
    last_ip: Option<IpAddr>,
    /// The IPv4 pod CIDR the node's last record announced.
    announced_cidr: Option<Ipv4Net>,
    /// `None` while the record exists; else when to collect the node.
    collect_at: Option<Instant>,
}

/// Every node the operator has heard of: present ones, and vanished ones until collected.
#[derive(Debug, Clone, Default)]
pub struct NodeTracker {
    nodes: BTreeMap<NodeName, Tracked>,
}

impl NodeTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The node's record exists (again); a pending collection is called off. A record without
    /// an address keeps the IP an earlier one had.
    pub fn seen(&mut self, name: &NodeName, ip: Option<IpAddr>, announced_cidr: Option<Ipv4Net>) {
        let tracked = self.nodes.entry(name.clone()).or_insert(Tracked {
            last_ip: None,
            announced_cidr: None,
            collect_at: None,
        });
        tracked.collect_at = None;
        tracked.announced_cidr = announced_cidr;
        if ip.is_some() {
            tracked.last_ip = ip;
        }
    }

    /// The IPv4 pod CIDR the node's record announces (an agent that already uses one).
    pub fn announced_cidr(&self, name: &NodeName) -> Option<Ipv4Net> {
        self.nodes.get(name).and_then(|t| t.announced_cidr)
    }

    /// The node's record is gone: collect it at `collect_at` unless it comes back. A node
    /// already waiting keeps its earlier deadline; an unknown one is tracked without an IP.
    pub fn gone(&mut self, name: &NodeName, collect_at: Instant) {
        let tracked = self.nodes.entry(name.clone()).or_insert(Tracked {
            last_ip: None,
            announced_cidr: None,
            collect_at: None,
        });
        if tracked.collect_at.is_none() {
            tracked.collect_at = Some(collect_at);
        }
    }

    /// Moves the collection of a vanished node to `at` (after a failed attempt).
    pub fn postpone(&mut self, name: &NodeName, at: Instant) {
        if let Some(tracked) = self.nodes.get_mut(name)
            && tracked.collect_at.is_some()
        {
            tracked.collect_at = Some(at);
        }
    }

    /// Stops tracking a collected node.
    pub fn forget(&mut self, name: &NodeName) {
        self.nodes.remove(name);
    }

    pub fn is_present(&self, name: &NodeName) -> bool {
        self.nodes.get(name).is_some_and(|t| t.collect_at.is_none())
    }

    pub fn is_known(&self, name: &NodeName) -> bool {
        self.nodes.contains_key(name)
    }

    /// Nodes whose record exists.
    pub fn present(&self) -> impl Iterator<Item = &NodeName> {
        self.nodes
            .iter()
            .filter(|(_, t)| t.collect_at.is_none())
            .map(|(name, _)| name)
    }

    /// Whether a node whose record exists uses `ip`: its entries are not garbage even if a
    /// vanished node once had the same IP.
    pub fn ip_in_use(&self, ip: IpAddr) -> bool {
        self.nodes
            .values()
            .any(|t| t.collect_at.is_none() && t.last_ip == Some(ip))
    }

    /// The earliest pending collection.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.nodes.values().filter_map(|t| t.collect_at).min()
    }

    /// The vanished nodes due for collection at `now`.
    pub fn due(&self, now: Instant) -> Vec<GoneNode> {
        self.nodes
            .iter()
            .filter(|(_, t)| t.collect_at.is_some_and(|at| at <= now))
            .map(|(name, t)| GoneNode {
                name: name.clone(),
                last_ip: t.last_ip,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kvstore::keys::NodeAddress;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn vanished_nodes_are_due_after_their_deadline_unless_they_return() {
        let t0 = Instant::now();
        let (a, b) = (NodeName::new("a"), NodeName::new("b"));
        let mut nodes = NodeTracker::new();
        let cidr: Ipv4Net = "10.0.3.0/24".parse().unwrap();
        nodes.seen(&a, Some(ip("192.168.1.1")), Some(cidr));
        nodes.seen(&b, Some(ip("192.168.1.2")), None);
        assert_eq!(nodes.announced_cidr(&a), Some(cidr));
        assert_eq!(nodes.announced_cidr(&b), None);
        nodes.gone(&a, t0 + Duration::from_secs(5));
        nodes.gone(&b, t0 + Duration::from_secs(5));
        // A second delete does not push the deadline out.
        nodes.gone(&a, t0 + Duration::from_secs(50));
        nodes.seen(&b, None, None);
        assert_eq!(nodes.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(nodes.due(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            nodes.due(t0 + Duration::from_secs(5)),
            vec![GoneNode {
                name: a.clone(),
                last_ip: Some(ip("192.168.1.1"))
            }]
        );
        assert!(!nodes.is_present(&a));
        assert!(nodes.is_present(&b));
        // b came back without an address: its last IP is still known and in use.
        assert!(nodes.ip_in_use(ip("192.168.1.2")));
        assert!(!nodes.ip_in_use(ip("192.168.1.1")));
        nodes.postpone(&a, t0 + Duration::from_secs(9));
        assert!(nodes.due(t0 + Duration::from_secs(8)).is_empty());
        nodes.forget(&a);
        assert_eq!(nodes.next_deadline(), None);
        assert_eq!(nodes.present().collect::<Vec<_>>(), vec![&b]);
    }

    #[test]
    fn node_ip_prefers_internal_ipv4() {
        let addr = |t: &str, i: &str| NodeAddress {
            address_type: t.to_owned(),
            ip: Some(ip(i)),
        };
        let mut node = Node {
            ip_addresses: vec![
                addr("ExternalIP", "1.2.3.4"),
                addr("InternalIP", "fd00::1"),
                addr("InternalIP", "10.1.0.7"),
            ],
            ..Node::default()
        };
        assert_eq!(node_ip(&node), Some(ip("10.1.0.7")));
        node.ip_addresses.pop();
        assert_eq!(node_ip(&node), Some(ip("fd00::1")));
        node.ip_addresses.remove(1);
        assert_eq!(node_ip(&node), Some(ip("1.2.3.4")));
        node.ip_addresses.clear();
        assert_eq!(node_ip(&node), None);
    }
}
