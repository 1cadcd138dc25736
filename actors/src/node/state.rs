//! The node manager as a pure state machine: the local node, the peers seen in the kvstore,
//! the routes they call for and what the kernel holds, the ipcache claims on node addresses,
//! and the publication of the local record. No IO; the actor runs the effects and reports
//! their outcomes back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use datapath::routes::NodeRoute;
use ipnet::{IpNet, Ipv4Net};
use kvstore::keys::Node;
use model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

/// How soon a failed operation is retried the first time; doubled per further failure.
pub const RETRY_BASE: Duration = Duration::from_millis(200);
/// The longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The address type upstream gives a node's primary underlay address.
const INTERNAL_IP: &str = "InternalIP";

/// The delay before attempt `failures + 1` after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.clamp(1, 17).saturating_sub(1);
    RETRY_BASE.saturating_mul(factor).min(RETRY_MAX)
}

/// A node's name within its cluster (the last segment of its kvstore key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
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

/// A peer: a node of this cluster or of a remote cluster of the mesh. Node names are unique
/// only within a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId {
    pub cluster: String,
    pub name: NodeName,
}

impl PeerId {
    pub fn new(cluster: impl Into<String>, name: impl Into<String>) -> Self {
        PeerId {
            cluster: cluster.into(),
            name: NodeName::new(name),
        }
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.name)
    }
}

/// The underlay address of a node: its first IPv4 `InternalIP`, else its first IPv4 address.
pub fn node_ipv4(node: &Node) -> Option<Ipv4Addr> {
    let v4 = |ip: Option<IpAddr>| match ip {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    node.ip_addresses
        .iter()
        .filter(|address| address.address_type == INTERNAL_IP)
        .find_map(|address| v4(address.ip))
        .or_else(|| node.ip_addresses.iter().find_map(|address| v4(address.ip)))
}

/// A node's IPv4 pod CIDRs: the primary one, then the secondary ones.
pub fn node_pod_cidrs(node: &Node) -> Vec<Ipv4Net> {
    node.ipv4_alloc_cidr
        .iter()
        .chain(&node.ipv4_secondary_alloc_cidrs)
        .filter_map(|cidr| match cidr.net() {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// What a change asks of the outside world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Claim `ip` in the ipcache with `identity` (a node address).
    ClaimIp {
        ip: Ipv4Addr,
        identity: NumericIdentity,
        /// The node hosting the address; `None` for this node.
        host_ip: Option<Ipv4Addr>,
    },
    /// Drop the claim on `ip`.
    ReleaseIp(Ipv4Addr),
    /// The local record changed: publish it again.
    Publish,
    /// Routes changed: run the next route operation if none is in flight.
    Reconcile,
}

/// One kernel operation on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "route")]
pub enum RouteOp {
    Install(NodeRoute),
    Remove(NodeRoute),
}

impl RouteOp {
    pub fn route(&self) -> NodeRoute {
        match self {
            RouteOp::Install(route) | RouteOp::Remove(route) => *route,
        }
    }
}

/// Where a route stands, as a dump shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteStatus {
    /// Wanted, not installed yet.
    Pending,
    /// The kernel holds it.
    Installed,
    /// No peer wants it any more; the kernel still holds it.
    Removing,
}

/// One route in a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDump {
    pub route: NodeRoute,
    /// The peer that wants the route; `None` for one being removed.
    pub peer: Option<PeerId>,
    pub status: RouteStatus,
    /// Consecutive failures of the last operation on the route.
    pub failures: u32,
    /// The error of the last failed operation, until one succeeds.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct OpFailure {
    failures: u32,
    error: String,
    /// Waiting for its retry timer; not picked until then.
    waiting: bool,
}

/// Desired routes against what the kernel holds, with one operation in flight at a time.
///
/// Installs run before removals, so a peer that moved gets its new route before the old one
/// goes (the netlink `delete` leaves a route that was replaced meanwhile alone). A failed
/// operation waits for its own backoff while operations on other routes go on.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    desired: BTreeMap<PeerId, BTreeSet<NodeRoute>>,
    installed: BTreeSet<NodeRoute>,
    failed: BTreeMap<RouteOp, OpFailure>,
    in_flight: Option<RouteOp>,
}

impl RouteTable {
    /// Sets the routes `peer` wants (none to forget the peer). Returns whether anything changed.
    pub fn set_peer(&mut self, peer: &PeerId, routes: BTreeSet<NodeRoute>) -> bool {
        let changed = self
            .desired
            .get(peer)
            .map_or(!routes.is_empty(), |old| *old != routes);
        if routes.is_empty() {
            self.desired.remove(peer);
        } else {
            self.desired.insert(peer.clone(), routes);
        }
        if changed {
            // An operation that is no longer wanted stops being retried.
            let wanted = self.wanted();
            self.failed.retain(|op, _| match op {
                RouteOp::Install(route) => wanted.contains(route),
                RouteOp::Remove(route) => !wanted.contains(route),
            });
        }
        changed
    }

    /// Adopts routes the kernel already holds (left by a previous agent); those no peer wants
    /// are removed.
    pub fn adopt(&mut self, routes: impl IntoIterator<Item = NodeRoute>) -> bool {
        let before = self.installed.len();
        self.installed.extend(routes);
        self.installed.len() != before
    }

    fn wanted(&self) -> BTreeSet<NodeRoute> {
        self.desired.values().flatten().copied().collect()
    }

    /// The next operation to run, marking it in flight; `None` while one is in flight or
    /// nothing is ready.
    pub fn start(&mut self) -> Option<RouteOp> {
        if self.in_flight.is_some() {
            return None;
        }
        let wanted = self.wanted();
        let ready = |op: &RouteOp| self.failed.get(op).is_none_or(|failure| !failure.waiting);
        let install = wanted
            .iter()
            .filter(|route| !self.installed.contains(route))
            .map(|route| RouteOp::Install(*route))
            .find(|op| ready(op));
        let op = install.or_else(|| {
            self.installed
                .iter()
                .filter(|route| !wanted.contains(route))
                .map(|route| RouteOp::Remove(*route))
                .find(|op| ready(op))
        })?;
        self.in_flight = Some(op);
        Some(op)
    }

    /// Ends the operation in flight. On failure returns the delay after which
    /// [`RouteTable::retry`] should be called for it.
    pub fn finish(&mut self, op: RouteOp, result: Result<(), String>) -> Option<Duration> {
        if self.in_flight == Some(op) {
            self.in_flight = None;
        }
        match result {
            Ok(()) => {
                self.failed.remove(&op);
                match op {
                    RouteOp::Install(route) => self.installed.insert(route),
                    RouteOp::Remove(route) => self.installed.remove(&route),
                };
                None
            }
            Err(error) => {
                let failure = self.failed.entry(op).or_default();
                failure.failures = failure.failures.saturating_add(1);
                failure.error = error;
                failure.waiting = true;
                Some(backoff(failure.failures))
            }
        }
    }

    /// The retry timer of a failed operation fired: it may run again.
    pub fn retry(&mut self, op: RouteOp) {
        if let Some(failure) = self.failed.get_mut(&op) {
            failure.waiting = false;
        }
    }

    /// Every wanted or still installed route with its status.
    pub fn dump(&self) -> Vec<RouteDump> {
        let failure_of = |op: RouteOp| {
            self.failed
                .get(&op)
                .map_or((0, None), |f| (f.failures, Some(f.error.clone())))
        };
        let mut dump = Vec::new();
        let mut wanted = BTreeSet::new();
        for (peer, routes) in &self.desired {
            for route in routes {
                wanted.insert(*route);
                let installed = self.installed.contains(route);
                let (failures, last_error) = if installed {
                    (0, None)
                } else {
                    failure_of(RouteOp::Install(*route))
                };
                dump.push(RouteDump {
                    route: *route,
                    peer: Some(peer.clone()),
                    status: if installed {
                        RouteStatus::Installed
                    } else {
                        RouteStatus::Pending
                    },
                    failures,
                    last_error,
                });
            }
        }
        for route in self.installed.iter().filter(|r| !wanted.contains(r)) {
            let (failures, last_error) = failure_of(RouteOp::Remove(*route));
            dump.push(RouteDump {
                route: *route,
                peer: None,
                status: RouteStatus::Removing,
                failures,
                last_error,
            });
        }
        dump
    }

    /// Routes the kernel holds as far as this table knows.
    pub fn installed(&self) -> impl Iterator<Item = &NodeRoute> {
        self.installed.iter()
    }
}

/// The publication of the local record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    /// Whether the current record (under the current lease) is in the kvstore.
    pub published: bool,
    /// The revision of the last successful write.
    pub revision: Option<i64>,
    pub failures: u32,
    pub last_error: Option<String>,
}

/// Publication bookkeeping: one write in flight; a change during it is written afterwards.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    status: PublishStatus,
    in_flight: bool,
    /// The record or lease changed since the write in flight started.
    dirty: bool,
    /// A retry timer is pending; changes wait for it instead of hammering a failing store.
    waiting: bool,
}

/// What to do after a publication attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextPublish {
    Idle,
    /// The record changed meanwhile: write again now.
    Now,
    /// The write failed: try again after this delay.
    After(Duration),
}

impl Publisher {
    /// The record must be (re)written. Returns whether to start a write now.
    pub fn request(&mut self) -> bool {
        self.status.published = false;
        self.dirty = true;
        !self.in_flight && !self.waiting
    }

    /// Starts a write if one is due and none is in flight.
    pub fn start(&mut self) -> bool {
        if self.in_flight || self.waiting || !self.dirty {
            return false;
        }
        self.in_flight = true;
        self.dirty = false;
        true
    }

    pub fn finish(&mut self, result: Result<i64, String>) -> NextPublish {
        self.in_flight = false;
        match result {
            Ok(revision) => {
                self.status.failures = 0;
                self.status.last_error = None;
                self.status.revision = Some(revision);
                if self.dirty {
                    NextPublish::Now
                } else {
                    self.status.published = true;
                    NextPublish::Idle
                }
            }
            Err(error) => {
                self.status.failures = self.status.failures.saturating_add(1);
                self.status.last_error = Some(error);
                // A change made during the write (a new lease, typically) deserves an attempt
                // of its own; otherwise wait.
                if std::mem::replace(&mut self.dirty, true) {
                    return NextPublish::Now;
                }
                self.waiting = true;
                NextPublish::After(backoff(self.status.failures))
            }
        }
    }

    /// The retry timer fired.
    pub fn retry(&mut self) {
        self.waiting = false;
    }

    pub fn status(&self) -> &PublishStatus {
        &self.status
    }
}

/// What the manager knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    node: Node,
    ip: Option<Ipv4Addr>,
}

/// The local node, its peers and their routes and claims.
///
/// Peers of the local cluster come from the kvstore watch (a complete listing removes those
/// it lacks); peers of remote clusters come from the clustermesh ([`NodeState::upsert_remote`],
/// [`NodeState::delete_remote`]) and only go when it removes them. Both get the same routes
/// and claims.
#[derive(Debug, Clone)]
pub struct NodeState {
    cluster: String,
    local: Node,
    peers: BTreeMap<PeerId, Peer>,
    /// Local-cluster peers seen in the current listing; `Some` from a (re)watch until its
    /// `Synced`.
    listing: Option<BTreeSet<NodeName>>,
    synced: bool,
    routes: RouteTable,
    publisher: Publisher,
}

impl NodeState {
    /// The state of a node of `cluster` whose own record is `local`.
    pub fn new(cluster: impl Into<String>, local: Node) -> Self {
        NodeState {
            cluster: cluster.into(),
            local,
            peers: BTreeMap::new(),
            listing: None,
            synced: false,
            routes: RouteTable::default(),
            publisher: Publisher::default(),
        }
    }

    /// The effects of starting up: this node's own address as `reserved:host`, and the first
    /// publication.
    pub fn start(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(ip) = node_ipv4(&self.local) {
            effects.push(host_claim(ip));
        }
        if self.publisher.request() {
            effects.push(Effect::Publish);
        }
        effects
    }

    pub fn local(&self) -> &Node {
        &self.local
    }

    pub fn local_name(&self) -> NodeName {
        NodeName::new(self.local.name.clone())
    }

    /// Replaces the local record; re-claims its address if that changed, and re-publishes.
    pub fn update_local(&mut self, node: Node) -> Vec<Effect> {
        let mut effects = Vec::new();
        let old_ip = node_ipv4(&self.local);
        let new_ip = node_ipv4(&node);
        if old_ip != new_ip {
            effects.extend(old_ip.map(Effect::ReleaseIp));
            effects.extend(new_ip.map(host_claim));
        }
        let changed = self.local != node;
        self.local = node;
        if changed && self.publisher.request() {
            effects.push(Effect::Publish);
        }
        effects
    }

    /// The lease changed: the record is written again under the new one, right away even if
    /// a retry with the old lease is waiting for its timer.
    pub fn lease_changed(&mut self) -> Vec<Effect> {
        self.publisher.retry();
        self.republish()
    }

    fn republish(&mut self) -> Vec<Effect> {
        if self.publisher.request() {
            vec![Effect::Publish]
        } else {
            Vec::new()
        }
    }

    pub fn publisher(&mut self) -> &mut Publisher {
        &mut self.publisher
    }

    pub fn routes(&mut self) -> &mut RouteTable {
        &mut self.routes
    }

    /// A (re)watch started: the listing that follows is complete at its `Synced`.
    pub fn watch_started(&mut self) {
        self.listing = Some(BTreeSet::new());
    }

    /// A node record of this cluster was created or changed.
    pub fn upsert_peer(&mut self, node: Node) -> Vec<Effect> {
        if node.cluster != self.cluster {
            tracing::warn!(node = %node.name, cluster = %node.cluster, "ignoring a node record of another cluster");
            return Vec::new();
        }
        let name = NodeName::new(node.name.clone());
        if let Some(seen) = &mut self.listing {
            seen.insert(name.clone());
        }
        if node.name == self.local.name {
            return Vec::new();
        }
        self.set(PeerId::new(self.cluster.clone(), node.name.clone()), node)
    }

    /// A node of the remote cluster `cluster` appeared or changed. A record naming another
    /// cluster than the one it came from, or this node's own cluster, is ignored with a
    /// warning.
    pub fn upsert_remote(&mut self, cluster: &str, node: Node) -> Vec<Effect> {
        if cluster == self.cluster {
            tracing::warn!(node = %node.name, %cluster, "ignoring remote node records for this node's own cluster");
            return Vec::new();
        }
        if node.cluster != cluster {
            tracing::warn!(node = %node.name, %cluster, claimed = %node.cluster, "ignoring a remote node record claiming another cluster");
            return Vec::new();
        }
        self.set(PeerId::new(cluster, node.name.clone()), node)
    }

    /// The node `name` of the remote cluster `cluster` is gone.
    pub fn delete_remote(&mut self, cluster: &str, name: &str) -> Vec<Effect> {
        if cluster == self.cluster {
            tracing::warn!(node = %name, %cluster, "ignoring a remote node removal for this node's own cluster");
            return Vec::new();
        }
        self.forget(&PeerId::new(cluster, name))
    }

    fn set(&mut self, name: PeerId, node: Node) -> Vec<Effect> {
        let ip = node_ipv4(&node);
        let mut effects = Vec::new();
        let old_ip = self.peers.get(&name).and_then(|peer| peer.ip);
        if old_ip != ip {
            effects.extend(old_ip.map(Effect::ReleaseIp));
            effects.extend(ip.map(|ip| Effect::ClaimIp {
                ip,
                identity: NumericIdentity::REMOTE_NODE,
                host_ip: Some(ip),
            }));
        }
        let routes: BTreeSet<NodeRoute> = match ip {
            Some(node_ip) => node_pod_cidrs(&node)
                .into_iter()
                .map(|pod_cidr| NodeRoute { pod_cidr, node_ip })
                .collect(),
            None => {
                tracing::warn!(node = %name, "peer node has no IPv4 address; no route to its pods");
                BTreeSet::new()
            }
        };
        if self.routes.set_peer(&name, routes) {
            effects.push(Effect::Reconcile);
        }
        self.peers.insert(name, Peer { node, ip });
        effects
    }

    /// The record `name` of this cluster was deleted.
    pub fn delete_peer(&mut self, name: &str) -> Vec<Effect> {
        if name == self.local.name {
            // Our own record vanished (lease lost, or removed by hand): write it again.
            return self.republish();
        }
        self.forget(&PeerId::new(self.cluster.clone(), name))
    }

    fn forget(&mut self, name: &PeerId) -> Vec<Effect> {
        let Some(peer) = self.peers.remove(name) else {
            return Vec::new();
        };
        let mut effects: Vec<Effect> = peer.ip.map(Effect::ReleaseIp).into_iter().collect();
        if self.routes.set_peer(name, BTreeSet::new()) {
            effects.push(Effect::Reconcile);
        }
        effects
    }

    /// The listing of a (re)watch is complete: peers it did not contain are gone. Returns the
    /// effects and whether this was the first complete listing.
    pub fn synced(&mut self) -> (Vec<Effect>, bool) {
        let first = !self.synced;
        self.synced = true;
        let Some(seen) = self.listing.take() else {
            return (Vec::new(), first);
        };
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|peer| peer.cluster == self.cluster && !seen.contains(&peer.name))
            .cloned()
            .collect();
        let mut effects = Vec::new();
        for name in gone {
            effects.extend(self.forget(&name));
        }
        // Our own record is part of a complete listing unless it was lost.
        if !seen.contains(&self.local_name()) {
            effects.extend(self.republish());
        }
        (effects, first)
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Every known node record: the local one first, then the peers by cluster and name.
    pub fn nodes(&self) -> Vec<Node> {
        std::iter::once(self.local.clone())
            .chain(self.peers.values().map(|peer| peer.node.clone()))
            .collect()
    }

    /// The peers as a dump shows them.
    pub fn peer_dump(&self) -> Vec<PeerDump> {
        self.peers
            .iter()
            .map(|(id, peer)| PeerDump {
                cluster: id.cluster.clone(),
                name: id.name.clone(),
                node_ip: peer.ip,
                pod_cidrs: node_pod_cidrs(&peer.node),
            })
            .collect()
    }
}

/// One peer in a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDump {
    pub cluster: String,
    pub name: NodeName,
    pub node_ip: Option<Ipv4Addr>,
    pub pod_cidrs: Vec<Ipv4Net>,
}

fn host_claim(ip: Ipv4Addr) -> Effect {
    Effect::ClaimIp {
        ip,
        identity: NumericIdentity::HOST,
        host_ip: None,
    }
}

#[cfg(test)]
mod tests {
    use kvstore::keys::{NodeAddress, NodeCidr};

    use super::*;

    fn node(name: &str, ip: &str, cidr: &str) -> Node {
        Node {
            name: name.into(),
            cluster: "c1".into(),
            ip_addresses: vec![NodeAddress {
                address_type: INTERNAL_IP.into(),
                ip: Some(ip.parse().unwrap()),
            }],
            ipv4_alloc_cidr: Some(NodeCidr::new(cidr.parse().unwrap())),
            ..Node::default()
        }
    }

    fn route(cidr: &str, ip: &str) -> NodeRoute {
        NodeRoute {
            pod_cidr: cidr.parse().unwrap(),
            node_ip: ip.parse().unwrap(),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn state() -> NodeState {
        NodeState::new("c1", node("a", "192.168.50.1", "10.0.1.0/24"))
    }

    /// Runs every ready route operation to success.
    fn converge(table: &mut RouteTable) -> Vec<RouteOp> {
        let mut ops = Vec::new();
        while let Some(op) = table.start() {
            ops.push(op);
            assert_eq!(table.finish(op, Ok(())), None);
        }
        ops
    }

    #[test]
    fn node_ip_prefers_internal_ipv4() {
        let mut n = node("b", "192.168.50.2", "10.0.2.0/24");
        n.ip_addresses.insert(
            0,
            NodeAddress {
                address_type: "ExternalIP".into(),
                ip: Some("203.0.113.7".parse().unwrap()),
            },
        );
        n.ip_addresses.insert(
            0,
            NodeAddress {
                address_type: INTERNAL_IP.into(),
                ip: Some("fd00::2".parse().unwrap()),
            },
        );
        assert_eq!(node_ipv4(&n), Some(ip("192.168.50.2")));
        n.ip_addresses.retain(|a| a.address_type != INTERNAL_IP);
        assert_eq!(node_ipv4(&n), Some(ip("203.0.113.7")));
        n.ip_addresses.clear();
        assert_eq!(node_ipv4(&n), None);
    }

    #[test]
    fn start_claims_the_host_address_and_publishes() {
        let mut s = state();
        assert_eq!(
            s.start(),
            [
                Effect::ClaimIp {
                    ip: ip("192.168.50.1"),
                    identity: NumericIdentity::HOST,
                    host_ip: None,
                },
                Effect::Publish,
            ]
        );
    }

    #[test]
    fn peers_become_routes_and_remote_node_claims() {
        let mut s = state();
        let effects = s.upsert_peer(node("b", "192.168.50.2", "10.0.2.0/24"));
        assert_eq!(
            effects,
            [
                Effect::ClaimIp {
                    ip: ip("192.168.50.2"),
                    identity: NumericIdentity::REMOTE_NODE,
                    host_ip: Some(ip("192.168.50.2")),
                },
                Effect::Reconcile,
            ]
        );
        assert_eq!(
            converge(s.routes()),
            [RouteOp::Install(route("10.0.2.0/24", "192.168.50.2"))]
        );
        // The same record again changes nothing.
        assert!(
            s.upsert_peer(node("b", "192.168.50.2", "10.0.2.0/24"))
                .is_empty()
        );
        // Our own record and other clusters' records are not peers.
        assert!(
            s.upsert_peer(node("a", "192.168.50.1", "10.0.1.0/24"))
                .is_empty()
        );
        let mut other = node("x", "192.168.60.1", "10.9.0.0/24");
        other.cluster = "c2".into();
        assert!(s.upsert_peer(other).is_empty());
        assert_eq!(s.nodes().len(), 2);
    }

    fn remote(cluster: &str, name: &str, ip: &str, cidr: &str) -> Node {
        Node {
            cluster: cluster.into(),
            ..node(name, ip, cidr)
        }
    }

    #[test]
    fn remote_cluster_nodes_are_peers_keyed_by_cluster_and_name() {
        let mut s = state();
        s.upsert_peer(node("b", "192.168.50.2", "10.0.2.0/24"));
        converge(s.routes());
        // Same node name as the local peer, another cluster: a peer of its own.
        let effects = s.upsert_remote("c2", remote("c2", "b", "192.168.60.2", "10.1.2.0/24"));
        assert_eq!(
            effects,
            [
                Effect::ClaimIp {
                    ip: ip("192.168.60.2"),
                    identity: NumericIdentity::REMOTE_NODE,
                    host_ip: Some(ip("192.168.60.2")),
                },
                Effect::Reconcile,
            ]
        );
        assert_eq!(
            converge(s.routes()),
            [RouteOp::Install(route("10.1.2.0/24", "192.168.60.2"))]
        );
        let names: Vec<(String, String)> =
            s.nodes().into_iter().map(|n| (n.cluster, n.name)).collect();
        assert_eq!(
            names,
            [
                ("c1".to_owned(), "a".to_owned()),
                ("c1".to_owned(), "b".to_owned()),
                ("c2".to_owned(), "b".to_owned()),
            ]
        );
        let dump = s.routes().dump();
        assert_eq!(dump[1].peer, Some(PeerId::new("c2", "b")));

        // A record claiming another cluster than its source, or our own cluster: ignored.
        assert!(
            s.upsert_remote("c2", remote("c3", "x", "192.168.70.1", "10.2.0.0/24"))
                .is_empty()
        );
        assert!(
            s.upsert_remote("c1", node("y", "192.168.50.9", "10.0.9.0/24"))
                .is_empty()
        );
        assert!(
            s.delete_remote("c1", "b").is_empty(),
            "local peers are not the mesh's"
        );

        // A re-listing of the local cluster leaves remote peers alone.
        s.watch_started();
        s.upsert_peer(node("a", "192.168.50.1", "10.0.1.0/24"));
        let (effects, _) = s.synced();
        assert_eq!(
            effects,
            [Effect::ReleaseIp(ip("192.168.50.2")), Effect::Reconcile]
        );
        assert_eq!(
            converge(s.routes()),
            [RouteOp::Remove(route("10.0.2.0/24", "192.168.50.2"))]
        );
        assert_eq!(s.peer_dump().len(), 1);

        // Removal by the mesh drops the route and the claim.
        assert_eq!(
            s.delete_remote("c2", "b"),
            [Effect::ReleaseIp(ip("192.168.60.2")), Effect::Reconcile]
        );
        assert_eq!(
            converge(s.routes()),
            [RouteOp::Remove(route("10.1.2.0/24", "192.168.60.2"))]
        );
        assert!(s.delete_remote("c2", "b").is_empty());
        assert_eq!(s.nodes().len(), 1);
    }

    #[test]
    fn a_moved_peer_gets_its_new_route_before_the_old_one_goes() {
        let mut s = state();
        s.upsert_peer(node("b", "192.168.50.2", "10.0.2.0/24"));
        converge(s.routes());
        let effects = s.upsert_peer(node("b", "192.168.50.9", "10.0.2.0/24"));
        assert_eq!(
            effects.first(),
            Some(&Effect::ReleaseIp(ip("192.168.50.2")))
        );
        assert_eq!(
            converge(s.routes()),
            [
                RouteOp::Install(route("10.0.2.0/24", "192.168.50.9")),
                RouteOp::Remove(route("10.0.2.0/24", "192.168.50.2")),
            ]
        );
        let effects = s.delete_peer("b");
        assert_eq!(
            effects,
            [Effect::ReleaseIp(ip("192.168.50.9")), Effect::Reconcile]
        );
        assert_eq!(
            converge(s.routes()),
            [RouteOp::Remove(route("10.0.2.0/24", "192.168.50.9"))]
        );
        assert!(s.routes().dump().is_empty());
        assert!(s.delete_peer("b").is_empty(), "deleting twice is a no-op");
    }

    #[test]
    fn a_peer_without_address_or_cidr_gets_no_route() {
        let mut s = state();
        let mut b = node("b", "192.168.50.2", "10.0.2.0/24");
        b.ipv4_alloc_cidr = None;
        let effects = s.upsert_peer(b);
        assert!(!effects.contains(&Effect::Reconcile), "{effects:?}");
        let mut c = node("c", "192.168.50.3", "10.0.3.0/24");
        c.ip_addresses.clear();
        assert!(s.upsert_peer(c).is_empty());
        assert!(s.routes().start().is_none());
        assert_eq!(s.peer_dump().len(), 2);
    }

    #[test]
    fn failed_operations_back_off_without_blocking_others() {
        let mut table = RouteTable::default();
        let b = route("10.0.2.0/24", "192.168.50.2");
        let c = route("10.0.3.0/24", "192.168.50.3");
        table.set_peer(&PeerId::new("c1", "b"), [b].into());
        table.set_peer(&PeerId::new("c1", "c"), [c].into());
        let op = table.start().unwrap();
        assert_eq!(op, RouteOp::Install(b));
        assert!(table.start().is_none(), "one operation at a time");
        assert_eq!(table.finish(op, Err("EPERM".into())), Some(RETRY_BASE));
        // b waits for its timer; c goes on.
        let op = table.start().unwrap();
        assert_eq!(op, RouteOp::Install(c));
        table.finish(op, Ok(()));
        assert!(table.start().is_none());
        let dump = table.dump();
        assert_eq!(dump[0].status, RouteStatus::Pending);
        assert_eq!(dump[0].failures, 1);
        assert_eq!(dump[0].last_error.as_deref(), Some("EPERM"));
        assert_eq!(dump[1].status, RouteStatus::Installed);

        table.retry(RouteOp::Install(b));
        let op = table.start().unwrap();
        assert_eq!(table.finish(op, Err("EPERM".into())), Some(RETRY_BASE * 2));
        table.retry(op);
        let op = table.start().unwrap();
        assert_eq!(table.finish(op, Ok(())), None);
        assert!(table.dump().iter().all(|r| r.last_error.is_none()));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), RETRY_BASE);
        assert_eq!(backoff(3), RETRY_BASE * 4);
        assert_eq!(backoff(40), RETRY_MAX);
    }

    #[test]
    fn adopted_routes_nobody_wants_are_removed() {
        let mut table = RouteTable::default();
        let kept = route("10.0.2.0/24", "192.168.50.2");
        let stale = route("10.0.7.0/24", "192.168.50.7");
        table.set_peer(&PeerId::new("c1", "b"), [kept].into());
        assert!(table.adopt([kept, stale]));
        assert_eq!(table.dump()[1].status, RouteStatus::Removing);
        assert_eq!(converge(&mut table), [RouteOp::Remove(stale)]);
        assert_eq!(table.installed().collect::<Vec<_>>(), [&kept]);
    }

    #[test]
    fn a_relist_removes_missing_peers_and_republishes_a_lost_own_record() {
        let mut s = state();
        s.start();
        s.publisher().start();
        s.publisher().finish(Ok(5));
        s.watch_started();
        s.upsert_peer(node("a", "192.168.50.1", "10.0.1.0/24"));
        s.upsert_peer(node("b", "192.168.50.2", "10.0.2.0/24"));
        s.upsert_peer(node("c", "192.168.50.3", "10.0.3.0/24"));
        let (effects, first) = s.synced();
        assert!(first);
        assert!(effects.is_empty(), "{effects:?}");
        converge(s.routes());

        // A re-list without c and without our own record.
        s.watch_started();
        s.upsert_peer(node("b", "192.168.50.2", "10.0.2.0/24"));
        let (effects, first) = s.synced();
        assert!(!first);
        assert_eq!(
            effects,
            [
                Effect::ReleaseIp(ip("192.168.50.3")),
                Effect::Reconcile,
                Effect::Publish,
            ]
        );
        assert_eq!(
            converge(s.routes()),
            [RouteOp::Remove(route("10.0.3.0/24", "192.168.50.3"))]
        );
    }

    #[test]
    fn publisher_writes_once_at_a_time_and_retries() {
        let mut p = Publisher::default();
        assert!(p.request());
        assert!(p.start());
        assert!(!p.request(), "a write is in flight");
        assert_eq!(p.finish(Ok(3)), NextPublish::Now);
        assert!(!p.status().published);
        assert!(p.start());
        assert_eq!(p.finish(Err("down".into())), NextPublish::After(RETRY_BASE));
        assert!(!p.request(), "waiting for the retry timer");
        assert!(!p.start());
        p.retry();
        assert!(p.start());
        // A change during a failing write is tried again at once.
        assert!(!p.request());
        assert_eq!(p.finish(Err("down".into())), NextPublish::Now);
        assert!(p.start());
        assert_eq!(p.finish(Ok(9)), NextPublish::Idle);
        assert_eq!(
            p.status(),
            &PublishStatus {
                published: true,
                revision: Some(9),
                failures: 0,
                last_error: None,
            }
        );
    }

    #[test]
    fn local_address_change_moves_the_host_claim() {
        let mut s = state();
        s.start();
        let effects = s.update_local(node("a", "192.168.50.11", "10.0.1.0/24"));
        assert_eq!(
            effects,
            [
                Effect::ReleaseIp(ip("192.168.50.1")),
                Effect::ClaimIp {
                    ip: ip("192.168.50.11"),
                    identity: NumericIdentity::HOST,
                    host_ip: None,
                },
                Effect::Publish,
            ]
        );
        assert_eq!(
            s.local().ip_addresses[0].ip,
            Some("192.168.50.11".parse().unwrap())
        );
    }
}
