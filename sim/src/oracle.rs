//! The oracle: what every node must hold, computed from the global desired state the harness
//! keeps (the pods it created and did not delete, the policies it wrote, the nodes it lost),
//! and the comparison with what the nodes actually hold at a quiescent point.
//!
//! Checked on every live node:
//! - ipcache, pod addresses: every live pod of the cluster (of every cluster with a mesh)
//!   maps to its identity; no other address of the pod ranges is present (a deleted pod or a
//!   lost node's pods linger);
//! - ipcache, node addresses: every live peer (of the mesh) is `reserved:remote-node`; no lost
//!   node's address is left;
//! - every local pod's policy map holds exactly the keys its policies call for (see
//!   [`expected_policy_keys`]), and no deny entry;
//! - the kvstore policy watcher has applied exactly the policies in the kvstore;
//! - the lb4 maps hold exactly the cluster's services, each with its backends; with a mesh,
//!   a global service also with the backends every other visible cluster shares under its
//!   name ([`effective_services`]).
//!
//! Checked across the nodes of a cluster:
//! - pods with the same labels have one identity, pods with different labels different ones,
//!   every identity within the cluster's range;
//! - no address is given to two pods;
//! - no identity means different labels on different nodes (the identity actors' views).
//!
//! The identity a pod must have is the one its creation answered with: the oracle does not
//! predict allocator choices, it checks that every node agrees with them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use datapath::api::{
    Backend4Value, BackendId, Direction, EndpointId, Frontend, MapKey, MapName, MapValue,
    PolicyKey, Protocol,
};
use ipnet::{IpNet, Ipv4Net};
use kvstore::Backend;
use kvstore::keys::{IDENTITY_ID_PREFIX, parse_identity_master_key};
use model::identity::NumericIdentity;
use model::labels::Labels;
use serde::Serialize;

use crate::world::SimCluster;

/// Where pod CIDRs are carved from (one /24 per node).
pub const POD_SUPERNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8);

/// Where node addresses are taken from.
pub const NODE_SUPERNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12);

/// A pod the harness created and has not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub name: String,
    pub cluster: usize,
    pub node: String,
    pub labels: Labels,
    pub ip: Ipv4Addr,
    pub identity: NumericIdentity,
    pub endpoint: EndpointId,
}

/// A policy the harness wrote: `app-<from>` may reach `app-<to>` on TCP `port` (in the
/// pods' namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySpec {
    pub to: u32,
    pub from: u32,
    pub port: u16,
}

/// A service the harness wrote: one TCP frontend and its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub frontend: SocketAddrV4,
    pub backends: BTreeSet<SocketAddrV4>,
    /// Global (`includeExternal`): with a mesh, also balances to the backends of the service
    /// of the same name of every other cluster that shares it.
    pub global: bool,
    /// Shared with the other clusters of the mesh.
    pub shared: bool,
}

/// The global desired state.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// By pod (container) name.
    pub pods: BTreeMap<String, PodRecord>,
    /// Per cluster: the policies in the kvstore by key name (`<namespace>/<name>`).
    pub policies: Vec<BTreeMap<String, PolicySpec>>,
    /// Per cluster: the services in the kvstore by name.
    pub services: Vec<BTreeMap<String, ServiceSpec>>,
    /// Clusters import each other's pods and nodes (ClusterMesh).
    pub mesh: bool,
    /// Clusters cut off from the mesh long enough for the others to have dropped their state.
    pub hidden: BTreeSet<usize>,
}

/// Every identity of a cluster, from its kvstore's master keys: the ground truth of which
/// identities a selector can select (an identity outlives its last pod until it is
/// garbage-collected).
pub type ClusterIdentities = BTreeMap<NumericIdentity, Labels>;

/// Reads the master keys of a cluster's identities.
pub async fn read_identities(backend: &dyn Backend) -> Result<ClusterIdentities, kvstore::Error> {
    let listing = backend.list_prefix(IDENTITY_ID_PREFIX).await?;
    let mut identities = BTreeMap::new();
    for kv in listing.kvs {
        let Ok(id) = parse_identity_master_key(&kv.key) else {
            continue;
        };
        let labels = std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|text| Labels::from_kvstore_string(text).ok());
        if let Some(labels) = labels {
            identities.insert(id, labels);
        }
    }
    Ok(identities)
}

/// The `app` label value of a pod's labels (`app-<n>`).
fn app_of(labels: &Labels) -> Option<&str> {
    labels
        .iter()
        .find(|label| label.source == "k8s" && label.key == "app")
        .map(|label| label.value.as_str())
}

/// The policy-map keys an endpoint with `labels` must have, as the policy repository
/// resolves the harness's policies in `default` enforcement: no policy selecting it means
/// ingress is not enforced (one allow-all entry); otherwise the local host plus, for every
/// policy selecting it, every identity of the cluster its peer selector selects on the
/// policy's port. Egress is never enforced (no egress rules).
pub fn expected_policy_keys(
    labels: &Labels,
    policies: &BTreeMap<String, PolicySpec>,
    identities: &ClusterIdentities,
) -> BTreeSet<PolicyKey> {
    let mut keys = BTreeSet::new();
    keys.insert(PolicyKey::l3(NumericIdentity::UNKNOWN, Direction::Egress));
    let app = app_of(labels);
    let selecting: Vec<&PolicySpec> = policies
        .values()
        .filter(|policy| app == Some(format!("app-{}", policy.to).as_str()))
        .collect();
    if selecting.is_empty() {
        keys.insert(PolicyKey::l3(NumericIdentity::UNKNOWN, Direction::Ingress));
        return keys;
    }
    keys.insert(PolicyKey::l3(NumericIdentity::HOST, Direction::Ingress));
    for policy in selecting {
        let peer = format!("app-{}", policy.from);
        for (id, peer_labels) in identities {
            if app_of(peer_labels) == Some(peer.as_str())
                && let Ok(key) =
                    PolicyKey::port(*id, Direction::Ingress, Protocol::TCP, policy.port)
            {
                keys.insert(key);
            }
        }
    }
    keys
}

/// One difference between what should be and what is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The node that holds the wrong state, if it is one node's.
    pub node: Option<String>,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{node}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

fn violation(node: Option<&str>, what: String) -> Violation {
    Violation {
        node: node.map(str::to_owned),
        what,
    }
}

/// Compares every live node of every cluster with the desired state; `identities` holds each
/// cluster's identities ([`read_identities`]).
pub async fn check(
    clusters: &[SimCluster],
    desired: &Desired,
    identities: &[ClusterIdentities],
) -> Vec<Violation> {
    let mut found = Vec::new();
    for cluster in clusters {
        let pods: Vec<&PodRecord> = desired
            .pods
            .values()
            .filter(|pod| pod.cluster == cluster.index)
            .collect();
        check_cluster_pods(cluster, &pods, &mut found);
        // What this cluster's nodes see: their own cluster, or the whole mesh.
        let visible: Vec<&SimCluster> = clusters
            .iter()
            .filter(|other| {
                other.index == cluster.index
                    || (desired.mesh && !desired.hidden.contains(&other.index))
            })
            .collect();
        let visible_pods: Vec<&PodRecord> = desired
            .pods
            .values()
            .filter(|pod| visible.iter().any(|c| c.index == pod.cluster))
            .collect();
        let no_policies = BTreeMap::new();
        let policies = desired.policies.get(cluster.index).unwrap_or(&no_policies);
        let visible_indices: Vec<usize> = visible.iter().map(|c| c.index).collect();
        let services = effective_services(desired, cluster.index, &visible_indices);
        let services = &services;
        let no_identities = BTreeMap::new();
        let cluster_identities = identities.get(cluster.index).unwrap_or(&no_identities);
        for node in &cluster.nodes {
            check_ipcache(&visible, node, &visible_pods, &mut found);
            check_policy_maps(node, &pods, policies, cluster_identities, &mut found);
            check_policy_watcher(node, policies, &mut found).await;
            check_load_balancing(node, services, &mut found);
        }
        check_identity_views(cluster, &mut found).await;
    }
    found
}

fn check_cluster_pods(cluster: &SimCluster, pods: &[&PodRecord], found: &mut Vec<Violation>) {
    let mut by_labels: BTreeMap<String, (NumericIdentity, &str)> = BTreeMap::new();
    let mut by_identity: BTreeMap<NumericIdentity, (String, &str)> = BTreeMap::new();
    let mut by_ip: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for pod in pods {
        if !cluster.id.contains(pod.identity) {
            found.push(violation(
                None,
                format!(
                    "{}: pod {} has identity {} outside the cluster's range",
                    cluster.name, pod.name, pod.identity
                ),
            ));
        }
        let labels = pod.labels.to_kvstore_string();
        if let Some((identity, other)) = by_labels.get(&labels)
            && *identity != pod.identity
        {
            found.push(violation(
                None,
                format!(
                    "{}: pods {other} and {} have labels {labels} but identities {identity} and {}",
                    cluster.name, pod.name, pod.identity
                ),
            ));
        }
        by_labels.insert(labels.clone(), (pod.identity, &pod.name));
        if let Some((other_labels, other)) = by_identity.get(&pod.identity)
            && *other_labels != labels
        {
            found.push(violation(
                None,
                format!(
                    "{}: identity {} is given to {other} ({other_labels}) and to {} ({labels})",
                    cluster.name, pod.identity, pod.name
                ),
            ));
        }
        by_identity.insert(pod.identity, (labels, &pod.name));
        if let Some(other) = by_ip.insert(pod.ip, &pod.name) {
            found.push(violation(
                None,
                format!(
                    "{}: address {} is given to {other} and to {}",
                    cluster.name, pod.ip, pod.name
                ),
            ));
        }
    }
}

fn host_address(prefix: IpNet) -> Option<Ipv4Addr> {
    match prefix {
        IpNet::V4(net) if net.prefix_len() == 32 => Some(net.addr()),
        _ => None,
    }
}

fn check_ipcache(
    visible: &[&SimCluster],
    node: &crate::node::SimNode,
    pods: &[&PodRecord],
    found: &mut Vec<Violation>,
) {
    let name = Some(node.spec.name.as_str());
    let mut held: BTreeMap<Ipv4Addr, NumericIdentity> = BTreeMap::new();
    for (key, value) in node.datapath.entries(MapName::Ipcache) {
        if let (MapKey::Ipcache(key), MapValue::Ipcache(info)) = (key, value)
            && let Some(ip) = host_address(key.prefix())
        {
            held.insert(ip, info.identity);
        }
    }
    let mut expected_pods = BTreeSet::new();
    for pod in pods {
        expected_pods.insert(pod.ip);
        match held.get(&pod.ip) {
            None => found.push(violation(
                name,
                format!(
                    "ipcache lacks {} (pod {} on {}, identity {})",
                    pod.ip, pod.name, pod.node, pod.identity
                ),
            )),
            Some(identity) if *identity != pod.identity => found.push(violation(
                name,
                format!(
                    "ipcache maps {} (pod {} on {}) to identity {identity}, expected {}",
                    pod.ip, pod.name, pod.node, pod.identity
                ),
            )),
            Some(_) => {}
        }
    }
    let peers: BTreeSet<Ipv4Addr> = visible
        .iter()
        .flat_map(|cluster| &cluster.nodes)
        .map(|peer| peer.spec.node_ip)
        .filter(|ip| *ip != node.spec.node_ip)
        .collect();
    for peer in &peers {
        match held.get(peer) {
            Some(identity) if *identity == NumericIdentity::REMOTE_NODE => {}
            other => found.push(violation(
                name,
                format!("ipcache holds {other:?} for peer node {peer}, expected remote-node"),
            )),
        }
    }
    for (ip, identity) in &held {
        if POD_SUPERNET.contains(ip) && !expected_pods.contains(ip) {
            found.push(violation(
                name,
                format!("ipcache holds {ip} (identity {identity}) but no live pod has it"),
            ));
        }
        if visible
            .iter()
            .flat_map(|cluster| &cluster.lost)
            .any(|lost| lost.node_ip == *ip)
        {
            found.push(violation(
                name,
                format!("ipcache still holds the address {ip} of a lost node"),
            ));
        }
    }
}

fn check_policy_maps(
    node: &crate::node::SimNode,
    pods: &[&PodRecord],
    policies: &BTreeMap<String, PolicySpec>,
    identities: &ClusterIdentities,
    found: &mut Vec<Violation>,
) {
    let name = Some(node.spec.name.as_str());
    for pod in pods.iter().filter(|pod| pod.node == node.spec.name) {
        if !node.datapath.has_policy_map(pod.endpoint) {
            found.push(violation(
                name,
                format!(
                    "pod {} (endpoint {}) has no policy map",
                    pod.name, pod.endpoint
                ),
            ));
            continue;
        }
        let mut held = BTreeSet::new();
        for (key, value) in node.datapath.entries(MapName::Policy(pod.endpoint)) {
            if let (MapKey::Policy { key, .. }, MapValue::Policy(entry)) = (key, value) {
                if entry.deny {
                    found.push(violation(
                        name,
                        format!("pod {}: policy map denies {key:?}", pod.name),
                    ));
                }
                held.insert(key);
            }
        }
        let expected = expected_policy_keys(&pod.labels, policies, identities);
        for missing in expected.difference(&held) {
            found.push(violation(
                name,
                format!("pod {}: policy map lacks {missing:?}", pod.name),
            ));
        }
        for extra in held.difference(&expected) {
            found.push(violation(
                name,
                format!(
                    "pod {}: policy map holds {extra:?} that no policy calls for",
                    pod.name
                ),
            ));
        }
    }
}

/// The services the nodes of cluster `local` must balance: the cluster's own, where a global
/// one also gets the backends of the service of the same name of every other `visible`
/// cluster that shares it (upstream's global services, with no affinity annotation).
pub fn effective_services(
    desired: &Desired,
    local: usize,
    visible: &[usize],
) -> BTreeMap<String, ServiceSpec> {
    let Some(own) = desired.services.get(local) else {
        return BTreeMap::new();
    };
    let mut services = own.clone();
    if !desired.mesh {
        return services;
    }
    for (name, spec) in services.iter_mut().filter(|(_, spec)| spec.global) {
        for remote in visible.iter().filter(|c| **c != local) {
            if let Some(shared) = desired
                .services
                .get(*remote)
                .and_then(|remote| remote.get(name))
                .filter(|remote| remote.shared)
            {
                spec.backends.extend(shared.backends.iter().copied());
            }
        }
    }
    services
}

/// Every desired service has its master entry with the right backend count, one slot per
/// backend, and the slots' backends are exactly the desired ones; no other service is there.
fn check_load_balancing(
    node: &crate::node::SimNode,
    services: &BTreeMap<String, ServiceSpec>,
    found: &mut Vec<Violation>,
) {
    let name = Some(node.spec.name.as_str());
    let backends: BTreeMap<BackendId, Backend4Value> = node
        .datapath
        .entries(MapName::Lb4Backends)
        .into_iter()
        .filter_map(|entry| match entry {
            (MapKey::Backend(id), MapValue::Backend(value)) => Some((id, value)),
            _ => None,
        })
        .collect();
    // Per frontend: the master's backend count, and the backend of every slot.
    let mut held: BTreeMap<Frontend, (Option<u16>, BTreeMap<u16, BackendId>)> = BTreeMap::new();
    for entry in node.datapath.entries(MapName::Lb4Services) {
        if let (MapKey::Service(key), MapValue::Service(value)) = entry {
            let slots = held.entry(key.frontend).or_default();
            if key.backend_slot == 0 {
                slots.0 = Some(value.count);
            } else {
                slots.1.insert(key.backend_slot, value.backend_id);
            }
        }
    }
    for (service, spec) in services {
        let frontend = Frontend::new(spec.frontend, Protocol::TCP);
        let Some((count, slots)) = held.remove(&frontend) else {
            found.push(violation(
                name,
                format!("service {service}: no entry for {frontend}"),
            ));
            continue;
        };
        let want = spec.backends.len();
        if count.map(usize::from) != Some(want) {
            found.push(violation(
                name,
                format!("service {service}: {frontend} counts {count:?} backends, expected {want}"),
            ));
        }
        let addrs: BTreeSet<SocketAddrV4> = slots
            .values()
            .filter_map(|id| backends.get(id).map(|backend| backend.addr))
            .collect();
        if slots.len() != want || addrs != spec.backends {
            found.push(violation(
                name,
                format!(
                    "service {service}: {frontend} balances to {addrs:?} ({} slots), expected {:?}",
                    slots.len(),
                    spec.backends
                ),
            ));
        }
    }
    for frontend in held.keys() {
        found.push(violation(
            name,
            format!("the lb4 maps hold {frontend} that no service has"),
        ));
    }
}

async fn check_policy_watcher(
    node: &crate::node::SimNode,
    policies: &BTreeMap<String, PolicySpec>,
    found: &mut Vec<Violation>,
) {
    let expected: BTreeSet<String> = policies.keys().cloned().collect();
    let name = Some(node.spec.name.as_str());
    let Ok(dump) = node
        .actors
        .policy_watcher
        .send(actors::clusterstate::Dump)
        .await
    else {
        found.push(violation(name, "the policy watcher is gone".to_owned()));
        return;
    };
    let applied: BTreeSet<String> = dump.applied.into_iter().map(|key| key.key).collect();
    if !dump.synced {
        found.push(violation(
            name,
            "the policy watcher is not synced".to_owned(),
        ));
    }
    for missing in expected.difference(&applied) {
        found.push(violation(name, format!("policy {missing} is not applied")));
    }
    for extra in applied.difference(&expected) {
        found.push(violation(
            name,
            format!("policy {extra} is applied but no longer in the kvstore"),
        ));
    }
}

async fn check_identity_views(cluster: &SimCluster, found: &mut Vec<Violation>) {
    let mut seen: BTreeMap<NumericIdentity, (String, String)> = BTreeMap::new();
    for node in &cluster.nodes {
        let Ok(dump) = node.actors.identity.send(actors::identity::Dump).await else {
            found.push(violation(
                Some(&node.spec.name),
                "the identity actor is gone".to_owned(),
            ));
            continue;
        };
        for info in dump.identities {
            let labels = info.labels.to_kvstore_string();
            match seen.get(&info.id) {
                Some((other_labels, other_node)) if *other_labels != labels => {
                    found.push(violation(
                        Some(&node.spec.name),
                        format!(
                            "identity {} means {labels} here but {other_labels} on {other_node}",
                            info.id
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(info.id, (labels, node.spec.name.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_labels(app: &str) -> Labels {
        let cluster = model::identity::ClusterName::new("cluster-1").unwrap();
        Labels::from_k8s_pod("default", [("app", app)], &cluster).unwrap()
    }

    fn identities() -> ClusterIdentities {
        [
            (NumericIdentity::new(65_537), pod_labels("app-0")),
            (NumericIdentity::new(65_538), pod_labels("app-1")),
            (NumericIdentity::new(65_539), pod_labels("app-1")),
        ]
        .into_iter()
        .collect()
    }

    fn service(frontend: &str, backends: &[&str], global: bool, shared: bool) -> ServiceSpec {
        ServiceSpec {
            frontend: frontend.parse().unwrap(),
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            global,
            shared,
        }
    }

    #[test]
    fn a_global_service_balances_to_what_the_visible_clusters_share_under_its_name() {
        let desired = Desired {
            services: vec![
                BTreeMap::from([
                    (
                        "web".to_owned(),
                        service("192.168.1.1:80", &["10.0.0.2:8080"], true, false),
                    ),
                    (
                        "db".to_owned(),
                        service("192.168.1.2:80", &["10.0.0.3:8080"], false, true),
                    ),
                ]),
                BTreeMap::from([
                    (
                        "web".to_owned(),
                        service("192.168.2.1:80", &["10.0.1.2:8080"], false, true),
                    ),
                    (
                        "db".to_owned(),
                        service("192.168.2.2:80", &["10.0.1.3:8080"], true, true),
                    ),
                ]),
                BTreeMap::from([(
                    "web".to_owned(),
                    service("192.168.3.1:80", &["10.0.2.2:8080"], true, false),
                )]),
            ],
            mesh: true,
            ..Desired::default()
        };
        let backends = |services: &BTreeMap<String, ServiceSpec>, name: &str| {
            services[name]
                .backends
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        // Cluster 1's global web takes cluster 2's shared one, not cluster 3's unshared one;
        // its frontend stays its own. Its db is not global.
        let one = effective_services(&desired, 0, &[0, 1, 2]);
        assert_eq!(backends(&one, "web"), ["10.0.0.2:8080", "10.0.1.2:8080"]);
        assert_eq!(one["web"].frontend.to_string(), "192.168.1.1:80");
        assert_eq!(backends(&one, "db"), ["10.0.0.3:8080"]);
        // Cluster 2's global db takes cluster 1's shared db; its web is not global.
        let two = effective_services(&desired, 1, &[0, 1, 2]);
        assert_eq!(backends(&two, "db"), ["10.0.0.3:8080", "10.0.1.3:8080"]);
        assert_eq!(backends(&two, "web"), ["10.0.1.2:8080"]);
        // A cluster the others no longer see contributes nothing.
        let hidden = effective_services(&desired, 0, &[0, 2]);
        assert_eq!(backends(&hidden, "web"), ["10.0.0.2:8080"]);
        // Without a mesh, nothing is merged.
        let alone = Desired {
            mesh: false,
            ..desired.clone()
        };
        assert_eq!(
            backends(&effective_services(&alone, 0, &[0]), "web"),
            ["10.0.0.2:8080"]
        );
    }

    #[test]
    fn an_endpoint_no_policy_selects_allows_everything() {
        let policies = BTreeMap::from([(
            "default/p".to_owned(),
            PolicySpec {
                to: 1,
                from: 0,
                port: 80,
            },
        )]);
        let keys = expected_policy_keys(&pod_labels("app-0"), &policies, &identities());
        assert_eq!(
            keys,
            BTreeSet::from([
                PolicyKey::l3(NumericIdentity::UNKNOWN, Direction::Egress),
                PolicyKey::l3(NumericIdentity::UNKNOWN, Direction::Ingress),
            ])
        );
    }

    #[test]
    fn a_selected_endpoint_allows_the_host_and_each_peer_identity_on_the_port() {
        let policies = BTreeMap::from([
            (
                "default/a".to_owned(),
                PolicySpec {
                    to: 0,
                    from: 1,
                    port: 81,
                },
            ),
            (
                "default/b".to_owned(),
                PolicySpec {
                    to: 0,
                    from: 0,
                    port: 82,
                },
            ),
            (
                "default/other".to_owned(),
                PolicySpec {
                    to: 1,
                    from: 0,
                    port: 83,
                },
            ),
        ]);
        let keys = expected_policy_keys(&pod_labels("app-0"), &policies, &identities());
        let port = |id: u32, port: u16| {
            PolicyKey::port(
                NumericIdentity::new(id),
                Direction::Ingress,
                Protocol::TCP,
                port,
            )
            .unwrap()
        };
        assert_eq!(
            keys,
            BTreeSet::from([
                PolicyKey::l3(NumericIdentity::UNKNOWN, Direction::Egress),
                PolicyKey::l3(NumericIdentity::HOST, Direction::Ingress),
                port(65_538, 81),
                port(65_539, 81),
                port(65_537, 82),
            ])
        );
    }
}
