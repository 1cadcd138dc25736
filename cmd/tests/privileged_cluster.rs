//! One cluster, many nodes, against the real binaries (root): agents in kvstore mode on node
//! namespaces joined by an underlay bridge, one etcd, `cilium-operator-generic` handing out pod
//! CIDRs, and the `cilium` cluster CLI writing policy into etcd (see `common/cluster.rs`).
//!
//! - `basics`: distinct pod CIDRs from the operator's pool, node discovery and routes, TCP
//!   between pods on different nodes, an ingress policy enforced by the source pod's identity
//!   from another node, the upstream key layout as `etcdctl` reads it, hand-written malformed
//!   node and ipcache values that must be skipped, and one identity for one label set across
//!   nodes that the operator collects once its last user is gone.
//! - `faults`: two operators of which only the leader allocates, an etcd restart under a
//!   long-lived connection (which keeps exchanging data; new connections work; identities
//!   stay), a revoked agent lease (the agent writes its keys again and keeps its CIDR), an
//!   agent killed with SIGKILL (its keys expire, the others drop its routes, the operator
//!   releases its CIDR) and the leader killed (the standby allocates for a new node).
//! - `tunnel`: pods on two nodes talk through the VXLAN device, and a policy enforces the
//!   identity of a pod behind the tunnel.
//!
//! Each test builds its own cluster in its own namespaces, so they run in parallel.

#[path = "common/node.rs"]
mod node;

#[path = "common/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread;
use std::time::{Duration, Instant};

use cluster::{
    Cluster, ClusterOptions, LEASE_TTL, Routing, Stream, alloc_cidr, cidr_contains, eventually,
};
use node::{Agent, EchoServer, Netns, Pod, tcp_ok};

const POLICY_DENIED: u64 = 133;
/// A dropped SYN never connects; an allowed one across the bridge takes about a millisecond.
const DENIED_WAIT: Duration = Duration::from_millis(800);
/// How long cluster state (ipcache, identities, routes, policy) may take to reach every node.
const PROPAGATION: Duration = Duration::from_secs(20);

const IDENTITY_ID_PREFIX: &str = "cilium/state/identities/v1/id/";
const IDENTITY_VALUE_PREFIX: &str = "cilium/state/identities/v1/value/";
const IPCACHE_PREFIX: &str = "cilium/state/ip/v1/default/";

/// Connects (retrying while cluster state propagates) and checks the echo.
fn connects(from: &Netns, to: SocketAddrV4, what: &str) {
    eventually(
        PROPAGATION,
        || format!("{what}: {to} does not answer"),
        || tcp_ok(from, to, Duration::from_secs(1)).then_some(()),
    );
}

/// The flow must not connect, and `agent`'s policy-denied counter must grow.
fn denied(agent: &Agent, from: &Netns, to: SocketAddrV4, what: &str) {
    let before = agent.drops(POLICY_DENIED);
    assert!(
        !tcp_ok(from, to, DENIED_WAIT),
        "{what}: {to} must be dropped"
    );
    let after = agent.drops(POLICY_DENIED);
    assert!(
        after > before,
        "{what}: no policy-denied drop counted ({before} -> {after})"
    );
}

/// The identity of the endpoint with address `ip`, as its agent reports it.
fn identity_of(agent: &Agent, ip: Ipv4Addr) -> u64 {
    let endpoints = agent.json(&["endpoint", "list"]);
    endpoints
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["status"]["networking"]["addressing"][0]["ipv4"].as_str()
                == Some(ip.to_string().as_str())
        })
        .and_then(|e| e["status"]["identity"]["id"].as_u64())
        .unwrap_or_else(|| panic!("no endpoint with {ip}: {endpoints}"))
}

/// Every pod's identity, waiting until none is still being resolved.
fn identities(pods: &[(&Agent, &Pod)]) -> Vec<u64> {
    pods.iter()
        .map(|(agent, pod)| {
            eventually(
                PROPAGATION,
                || format!("{} has no identity yet", pod.ip),
                || {
                    let id = identity_of(agent, pod.ip);
                    (id >= 256).then_some(id)
                },
            )
        })
        .collect()
}

/// The addresses in an agent's BPF ipcache.
fn bpf_ipcache(agent: &Agent) -> BTreeSet<String> {
    agent.json(&["bpf", "ipcache", "list"])["cache"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["key"].as_str())
        .map(|k| k.split('/').next().unwrap_or(k).to_owned())
        .collect()
}

/// The node names an agent knows (`cilium-dbg node list`), as upstream names them:
/// `<cluster>/<node>`.
fn known_nodes(agent: &Agent) -> BTreeSet<String> {
    agent.json(&["node", "list"])["nodesAdded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect()
}

/// The label string of an identity's master key (`k8s:a=b;k8s:c=d;`).
fn master_labels(cluster: &Cluster, id: u64) -> String {
    cluster
        .get(&format!("{IDENTITY_ID_PREFIX}{id}"))
        .unwrap_or_else(|| panic!("no master key for identity {id}"))
}

/// Slave keys of the identity with `labels`: node IP -> value.
fn slave_keys(cluster: &Cluster, labels: &str) -> BTreeMap<String, String> {
    let prefix = format!("{IDENTITY_VALUE_PREFIX}{labels}/");
    cluster
        .get_prefix(&prefix)
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|ip| (ip.to_owned(), v)))
        .collect()
}

/// The cluster's pod CIDR allocations: node -> CIDRs.
fn ipam_allocations(cluster: &Cluster) -> BTreeMap<String, Vec<String>> {
    let prefix = format!("cilium/config/ipam/v1/{}/", cluster.name);
    cluster
        .get_prefix(&prefix)
        .into_iter()
        .map(|(k, v)| {
            let json: serde_json::Value =
                serde_json::from_str(&v).unwrap_or_else(|e| panic!("{k} = {v}: {e}"));
            let cidrs = json["podCIDRs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect();
            (k.trim_start_matches(&prefix).to_owned(), cidrs)
        })
        .collect()
}

/// Every allocated CIDR appears once.
fn assert_no_duplicate_cidrs(allocations: &BTreeMap<String, Vec<String>>) {
    let all: Vec<&String> = allocations.values().flatten().collect();
    let distinct: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        distinct.len(),
        "duplicate CIDRs: {allocations:?}"
    );
}

/// Waits until `agent` has at least `rules` rules and has realized its latest revision.
fn wait_policy(agent: &Agent, rules: u64) {
    eventually(
        PROPAGATION,
        || format!("policy not enforced: {}", agent.json(&["status"])),
        || {
            let status = agent.json(&["status"]);
            let policy = &status["policy"];
            (policy["rule-count"].as_u64().unwrap_or(0) >= rules
                && policy["realized-revision"] == policy["revision"])
                .then_some(())
        },
    );
}

/// A warning in `log` that names `needle`.
fn warns_about(log: &str, needle: &str) -> bool {
    log.lines()
        .any(|l| l.contains("WARN") && l.contains(needle))
}

const SERVER_POLICY: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: friend}}]
";

#[test]
fn privileged_cluster_basics() {
    let started = Instant::now();
    let mut cluster = Cluster::start(&ClusterOptions {
        nodes: 3,
        operators: 1,
        routing: Routing::Native,
        pool: "10.71.0.0/16",
    });
    let (n1, n2, n3) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let (a1, a2, a3) = (n1.agent(), n2.agent(), n3.agent());

    eventually(
        PROPAGATION,
        || "the operator writes no cilium/.heartbeat".to_owned(),
        || cluster.get("cilium/.heartbeat"),
    );

    // Pod CIDRs: distinct /24s from the pool, the same in the allocation and the node key.
    let cidrs: Vec<String> = (0..3).map(|i| cluster.wait_node_cidr(i)).collect();
    let distinct: BTreeSet<&String> = cidrs.iter().collect();
    assert_eq!(distinct.len(), 3, "pod CIDRs not distinct: {cidrs:?}");
    let allocations = ipam_allocations(&cluster);
    assert_eq!(
        allocations.len(),
        3,
        "one allocation per node: {allocations:?}"
    );
    for (node, cidr) in cluster.nodes.iter().zip(&cidrs) {
        assert!(cidr.ends_with("/24"), "{} got {cidr}", node.name);
        let base: Ipv4Addr = cidr.trim_end_matches("/24").parse().expect("CIDR base");
        assert!(
            cidr_contains(&cluster.pool, base),
            "{cidr} outside the pool"
        );
        assert_eq!(
            allocations.get(&node.name),
            Some(&vec![cidr.clone()]),
            "{} allocation",
            node.name
        );
    }

    // Node keys in the upstream layout, leased.
    let node_keys = cluster.get_prefix(&format!("cilium/state/nodes/v1/{}/", cluster.name));
    assert_eq!(node_keys.len(), 3, "{node_keys:?}");
    for node in &cluster.nodes {
        let key = cluster.node_key(&node.name);
        let json = cluster.get_json(&key).expect("node key is JSON");
        assert_eq!(json["Name"], node.name.as_str(), "{json}");
        assert_eq!(json["Cluster"], cluster.name.as_str(), "{json}");
        let addresses = json["IPAddresses"].as_array().expect("IPAddresses");
        assert!(
            addresses.iter().any(|a| a["Type"] == "InternalIP"
                && a["IP"].as_str() == Some(node.ip.to_string().as_str())),
            "{key}: {json}"
        );
        assert!(cluster.lease_of(&key).is_some(), "{key} has no lease");
    }

    // Discovery: every agent knows every node and routes the others' pod CIDRs over eth0.
    for (i, node) in cluster.nodes.iter().enumerate() {
        eventually(
            PROPAGATION,
            || format!("{} node list: {:?}", node.name, known_nodes(node.agent())),
            || {
                let known = known_nodes(node.agent());
                cluster
                    .nodes
                    .iter()
                    .all(|n| known.contains(&format!("{}/{}", cluster.name, n.name)))
                    .then_some(())
            },
        );
        for (j, peer) in cluster.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let cidr = &cidrs[j];
            eventually(
                PROPAGATION,
                || format!("{} has no route to {cidr}:\n{}", node.name, node.routes()),
                || {
                    node.routes()
                        .lines()
                        .any(|l| {
                            l.starts_with(&format!("{cidr} "))
                                && l.contains(&format!("via {} ", peer.ip))
                        })
                        .then_some(())
                },
            );
        }
    }

    // Pods on every node, addressed from their node's CIDR.
    let server = Pod::add(a1, &[("app", "server")]);
    let friend = Pod::add(a2, &[("app", "friend")]);
    let stranger = Pod::add(a2, &[("app", "stranger")]);
    let visitor = Pod::add(a3, &[("app", "visitor")]);
    for (pod, cidr) in [
        (&server, &cidrs[0]),
        (&friend, &cidrs[1]),
        (&stranger, &cidrs[1]),
        (&visitor, &cidrs[2]),
    ] {
        assert!(cidr_contains(cidr, pod.ip), "{} outside {cidr}", pod.ip);
    }
    let _servers = [
        EchoServer::start(&server.ns, server.addr(8080)),
        EchoServer::start(&friend.ns, friend.addr(8080)),
        EchoServer::start(&visitor.ns, visitor.addr(8080)),
    ];

    // Without policy, pods on different nodes connect both ways.
    connects(&friend.ns, server.addr(8080), "node-2 -> node-1");
    connects(&stranger.ns, server.addr(8080), "node-2 -> node-1");
    connects(&visitor.ns, server.addr(8080), "node-3 -> node-1");
    connects(&server.ns, friend.addr(8080), "node-1 -> node-2");
    connects(&friend.ns, visitor.addr(8080), "node-2 -> node-3");

    // ipcache and identity keys in the upstream layout.
    let pods = [
        (a1, &server),
        (a2, &friend),
        (a2, &stranger),
        (a3, &visitor),
    ];
    let ids = identities(&pods);
    let distinct_ids: BTreeSet<&u64> = ids.iter().collect();
    assert_eq!(
        distinct_ids.len(),
        4,
        "different labels, same identity: {ids:?}"
    );
    for ((_, pod), (&id, node)) in pods.iter().zip(ids.iter().zip([n1, n2, n2, n3])) {
        let key = format!("{IPCACHE_PREFIX}{}", pod.ip);
        let entry = eventually(
            PROPAGATION,
            || format!("no ipcache key {key}"),
            || cluster.get_json(&key),
        );
        assert_eq!(entry["IP"], pod.ip.to_string().as_str(), "{key}: {entry}");
        assert_eq!(entry["ID"].as_u64(), Some(id), "{key}: {entry}");
        assert_eq!(
            entry["HostIP"],
            node.ip.to_string().as_str(),
            "{key}: {entry}"
        );
        assert!(cluster.lease_of(&key).is_some(), "{key} has no lease");

        let labels = master_labels(&cluster, id);
        let app = &pod.labels[0].1;
        assert!(
            labels.contains(&format!("k8s:app={app};")) && labels.ends_with(';'),
            "identity {id} labels {labels:?}"
        );
        assert!(
            cluster
                .lease_of(&format!("{IDENTITY_ID_PREFIX}{id}"))
                .is_none(),
            "master key of {id} must not be leased"
        );
        let slaves = slave_keys(&cluster, &labels);
        assert_eq!(
            slaves.get(&node.ip.to_string()),
            Some(&id.to_string()),
            "slave keys of {labels}: {slaves:?}"
        );
        assert!(
            cluster
                .lease_of(&format!("{IDENTITY_VALUE_PREFIX}{labels}/{}", node.ip))
                .is_some(),
            "slave key of {id} on {} has no lease",
            node.name
        );
    }

    // An ingress policy written by the cluster CLI: node-1 enforces it by the source pod's
    // identity, which it learns from the ipcache.
    cluster.policy_apply(SERVER_POLICY);
    assert!(
        cluster
            .get("cilium/config/policies/v1/default/server-ingress")
            .is_some(),
        "policy not stored under cilium/config/policies/v1/default/server-ingress: {:?}",
        cluster.get_prefix("cilium/config/policies/v1/")
    );
    for agent in [a1, a2, a3] {
        wait_policy(agent, 1);
    }
    connects(
        &friend.ns,
        server.addr(8080),
        "policy allows app=friend on node-2",
    );
    denied(
        a1,
        &stranger.ns,
        server.addr(8080),
        "policy denies app=stranger on node-2",
    );
    denied(
        a1,
        &visitor.ns,
        server.addr(8080),
        "policy denies app=visitor on node-3",
    );
    connects(
        &server.ns,
        visitor.addr(8080),
        "egress of the server is not selected",
    );

    // Bad input written by hand: skipped with a warning, nothing else disturbed.
    let bogus_node = cluster.node_key("node-bogus");
    cluster.put(&bogus_node, "{\"Name\": \"node-bogus\", \"IPAddresses\": [");
    let bogus_ip = format!("{IPCACHE_PREFIX}10.99.99.99");
    cluster.put(&bogus_ip, "{\"IP\": 12, \"ID\": \"many\"}");
    let late_friend = Pod::add(a3, &[("app", "friend")]);
    for node in &cluster.nodes {
        eventually(
            PROPAGATION,
            || format!("{} logs no warning about the bad values", node.name),
            || {
                let log = node.agent().log_text();
                (warns_about(&log, "node-bogus") && warns_about(&log, "10.99.99.99")).then_some(())
            },
        );
    }
    // A pod created after the bad values still reaches node-1's ipcache with its identity.
    connects(
        &late_friend.ns,
        server.addr(8080),
        "app=friend on node-3 after the bad values",
    );
    denied(a1, &visitor.ns, server.addr(8080), "policy still enforced");
    for node in &cluster.nodes {
        let known = known_nodes(node.agent());
        assert!(
            !known.iter().any(|n| n.contains("node-bogus")),
            "{}: {known:?}",
            node.name
        );
        assert_eq!(known.len(), 3, "{}: {known:?}", node.name);
        assert!(
            !bpf_ipcache(node.agent()).contains("10.99.99.99"),
            "{} took the malformed ipcache value",
            node.name
        );
        assert!(
            bpf_ipcache(node.agent()).contains(&late_friend.ip.to_string()),
            "{} misses {}",
            node.name,
            late_friend.ip
        );
    }
    for i in 0..3 {
        assert!(
            cluster.nodes[i]
                .agent()
                .dbg(&["status", "-o", "json"])
                .is_ok(),
            "{} agent down after bad input",
            cluster.nodes[i].name
        );
    }
    cluster.etcdctl(&["del", &bogus_node]).expect("del");
    cluster.etcdctl(&["del", &bogus_ip]).expect("del");

    // One identity for one label set on every node; when its last pod goes, the slave keys go
    // and the operator's GC removes the master key.
    let shared: Vec<Pod> = [a1, a2, a3]
        .iter()
        .map(|agent| Pod::add(agent, &[("app", "shared"), ("tier", "gc")]))
        .collect();
    let shared_ids = identities(&[(a1, &shared[0]), (a2, &shared[1]), (a3, &shared[2])]);
    assert!(
        shared_ids.iter().all(|id| *id == shared_ids[0]),
        "same labels, different identities: {shared_ids:?}"
    );
    let shared_id = shared_ids[0];
    let labels = master_labels(&cluster, shared_id);
    assert!(
        labels.contains("k8s:app=shared;") && labels.contains("k8s:tier=gc;"),
        "{labels}"
    );
    let slaves = slave_keys(&cluster, &labels);
    let expected: BTreeMap<String, String> = cluster
        .nodes
        .iter()
        .map(|n| (n.ip.to_string(), shared_id.to_string()))
        .collect();
    assert_eq!(slaves, expected, "one slave key per node");
    for (agent, pod) in [a1, a2, a3].iter().zip(&shared) {
        pod.del(&agent.socket);
    }
    eventually(
        PROPAGATION,
        || format!("slave keys left: {:?}", slave_keys(&cluster, &labels)),
        || slave_keys(&cluster, &labels).is_empty().then_some(()),
    );
    eventually(
        Duration::from_secs(30),
        || {
            format!(
                "master key of {shared_id} not collected:\n{}",
                cluster.operator_logs()
            )
        },
        || {
            cluster
                .get(&format!("{IDENTITY_ID_PREFIX}{shared_id}"))
                .is_none()
                .then_some(())
        },
    );
    // Identities in use survive the GC.
    for id in &ids {
        assert!(
            cluster.get(&format!("{IDENTITY_ID_PREFIX}{id}")).is_some(),
            "identity {id} in use was collected"
        );
    }
    connects(&friend.ns, server.addr(8080), "after the GC");
    // The operator read the malformed node value too, and survived it.
    cluster.assert_operators_running();
    eprintln!("basics took {:?}", started.elapsed());
}

/// The operator (by index) whose log says it leads.
fn leaders(cluster: &Cluster) -> Vec<usize> {
    cluster
        .operators
        .iter()
        .enumerate()
        .filter(|(_, op)| op.log_text().contains("became leader"))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn privileged_cluster_faults() {
    let started = Instant::now();
    let mut cluster = Cluster::start(&ClusterOptions {
        nodes: 3,
        operators: 2,
        routing: Routing::Native,
        pool: "10.72.0.0/16",
    });

    // Two operators: one leader, which alone allocates.
    let leader = match leaders(&cluster).as_slice() {
        [one] => *one,
        other => panic!("leaders {other:?}:\n{}", cluster.operator_logs()),
    };
    let standby = 1 - leader;
    let standby_log = cluster.operators[standby].log_text();
    assert!(
        !standby_log.contains("allocated pod CIDR"),
        "the standby allocated:\n{standby_log}"
    );
    let leader_log = cluster.operators[leader].log_text();
    for node in &cluster.nodes {
        assert!(
            leader_log
                .lines()
                .any(|l| l.contains("allocated pod CIDR") && l.contains(&node.name)),
            "leader did not allocate for {}:\n{leader_log}",
            node.name
        );
    }
    let allocations = ipam_allocations(&cluster);
    assert_eq!(allocations.len(), 3, "{allocations:?}");
    assert_no_duplicate_cidrs(&allocations);
    let cidrs: Vec<String> = (0..3).map(|i| cluster.wait_node_cidr(i)).collect();

    let server = Pod::add(cluster.agent(0), &[("app", "server")]);
    let client = Pod::add(cluster.agent(1), &[("app", "client")]);
    let visitor = Pod::add(cluster.agent(2), &[("app", "visitor")]);
    let _echo = EchoServer::start(&server.ns, server.addr(8080));
    connects(&client.ns, server.addr(8080), "node-2 -> node-1");
    connects(&visitor.ns, server.addr(8080), "node-3 -> node-1");
    let pods = |c: &Cluster| -> Vec<u64> {
        identities(&[
            (c.agent(0), &server),
            (c.agent(1), &client),
            (c.agent(2), &visitor),
        ])
    };
    let ids_before = pods(&cluster);
    let stream = Stream::open(&client.ns, server.addr(8080));
    stream.wait_progress(5, Duration::from_secs(5), "before the etcd restart");

    // etcd restart during traffic: the datapath does not depend on the kvstore.
    cluster.etcd.kill9();
    let down = Instant::now();
    stream.wait_progress(10, Duration::from_secs(5), "while etcd is down");
    assert!(
        tcp_ok(&client.ns, server.addr(8080), Duration::from_secs(2)),
        "new connection node-2 -> node-1 while etcd is down"
    );
    assert!(
        tcp_ok(&visitor.ns, server.addr(8080), Duration::from_secs(2)),
        "new connection node-3 -> node-1 while etcd is down"
    );
    thread::sleep(Duration::from_secs(3).saturating_sub(down.elapsed()));
    for node in &mut cluster.nodes {
        let name = node.name.clone();
        let agent = node.agent.as_mut().expect("agent");
        assert!(
            agent.running(),
            "{name} agent exited without etcd: {}",
            agent.log_text()
        );
    }
    cluster.etcd.launch();
    stream.wait_progress(10, Duration::from_secs(5), "after the etcd restart");
    assert!(stream.error().is_none(), "{:?}", stream.error());
    connects(
        &client.ns,
        server.addr(8080),
        "node-2 -> node-1 after the restart",
    );
    connects(
        &visitor.ns,
        server.addr(8080),
        "node-3 -> node-1 after the restart",
    );
    cluster.assert_operators_running();
    for node in &cluster.nodes {
        let key = cluster.node_key(&node.name);
        eventually(
            PROPAGATION,
            || format!("{key} not registered after the restart"),
            || cluster.lease_of(&key),
        );
    }
    assert_eq!(
        pods(&cluster),
        ids_before,
        "identities changed across the restart"
    );
    // The watches resumed: a pod made after the restart reaches the other nodes.
    let late = Pod::add(cluster.agent(2), &[("app", "late")]);
    eventually(
        PROPAGATION,
        || format!("{} not in node-1's ipcache after the restart", late.ip),
        || {
            bpf_ipcache(cluster.agent(0))
                .contains(&late.ip.to_string())
                .then_some(())
        },
    );
    connects(&late.ns, server.addr(8080), "pod made after the restart");

    // A lost lease (as after a partition): node-2's keys vanish and its agent writes them
    // again under a new lease, with the same identities.
    let node2_key = cluster.node_key("node-2");
    let lease = cluster.lease_of(&node2_key).expect("node-2 lease");
    cluster
        .etcdctl(&["lease", "revoke", &lease])
        .expect("revoke node-2 lease");
    assert!(cluster.get(&node2_key).is_none(), "revoked key still there");
    let client_key = format!("{IPCACHE_PREFIX}{}", client.ip);
    eventually(
        Duration::from_secs(30),
        || {
            format!(
                "node-2 did not re-register after losing its lease:\n{}",
                cluster.agent(1).log_text()
            )
        },
        || {
            let renewed = cluster.lease_of(&node2_key)?;
            let ipcache = cluster.lease_of(&client_key)?;
            (renewed != lease && ipcache != lease).then_some(())
        },
    );
    let client_labels = eventually(
        PROPAGATION,
        || format!("master key of {} gone after the lease loss", ids_before[1]),
        || cluster.get(&format!("{IDENTITY_ID_PREFIX}{}", ids_before[1])),
    );
    eventually(
        PROPAGATION,
        || "node-2's slave key not written again".to_owned(),
        || {
            (slave_keys(&cluster, &client_labels).get("192.168.77.2")
                == Some(&ids_before[1].to_string()))
            .then_some(())
        },
    );
    assert_eq!(
        pods(&cluster),
        ids_before,
        "identities changed after the lease loss"
    );
    // The operator kept node-2's pod CIDR through the short absence.
    assert_eq!(
        ipam_allocations(&cluster).get("node-2"),
        Some(&vec![cidrs[1].clone()]),
        "node-2 lost its allocation"
    );
    assert_eq!(
        cluster.get_json(&node2_key).as_ref().and_then(alloc_cidr),
        Some(cidrs[1].clone()),
        "node-2 re-registered with another CIDR"
    );
    stream.wait_progress(5, Duration::from_secs(5), "after the lease loss");

    // SIGKILL of node-3's agent: its keys expire with its lease, the others drop its routes.
    let killed = Instant::now();
    cluster.kill_agent(2);
    let node3_key = cluster.node_key("node-3");
    eventually(
        LEASE_TTL + Duration::from_secs(20),
        || format!("{node3_key} outlives its agent"),
        || cluster.get(&node3_key).is_none().then_some(()),
    );
    let expired_after = killed.elapsed();
    for i in 0..2 {
        let node = cluster.node(i);
        eventually(
            PROPAGATION,
            || {
                format!(
                    "{} still routes {}:\n{}",
                    node.name,
                    cidrs[2],
                    node.routes()
                )
            },
            || (!node.has_route_to(&cidrs[2])).then_some(()),
        );
    }
    eventually(
        PROPAGATION,
        || format!("ipcache key of {} outlives node-3", visitor.ip),
        || {
            cluster
                .get(&format!("{IPCACHE_PREFIX}{}", visitor.ip))
                .is_none()
                .then_some(())
        },
    );
    let gone = format!("{}/node-3", cluster.name);
    for i in 0..2 {
        let agent = cluster.agent(i);
        eventually(
            PROPAGATION,
            || format!("node-{} still knows node-3 or its pod", i + 1),
            || {
                (!known_nodes(agent).contains(&gone)
                    && !bpf_ipcache(agent).contains(&visitor.ip.to_string()))
                .then_some(())
            },
        );
    }
    // The operator's node GC releases the dead node's pod CIDR.
    eventually(
        PROPAGATION,
        || {
            format!(
                "node-3's allocation not released:\n{}",
                cluster.operator_logs()
            )
        },
        || (!ipam_allocations(&cluster).contains_key("node-3")).then_some(()),
    );
    stream.wait_progress(5, Duration::from_secs(5), "after node-3 died");

    // SIGKILL of the leading operator: the standby takes over and allocates for a new node.
    cluster.assert_operators_running();
    cluster.operators[leader].kill9();
    let index = cluster.add_node();
    let new_cidr = cluster.wait_node_cidr(index);
    assert!(
        new_cidr != cidrs[0] && new_cidr != cidrs[1],
        "node-4 got a CIDR in use: {new_cidr} ({cidrs:?})"
    );
    assert!(
        cluster.operators[standby]
            .log_text()
            .contains("became leader"),
        "standby never led:\n{}",
        cluster.operator_logs()
    );
    assert_no_duplicate_cidrs(&ipam_allocations(&cluster));
    let newcomer = Pod::add(cluster.agent(index), &[("app", "newcomer")]);
    assert!(
        cidr_contains(&new_cidr, newcomer.ip),
        "{} outside {new_cidr}",
        newcomer.ip
    );
    connects(&newcomer.ns, server.addr(8080), "node-4 -> node-1");
    stream.wait_progress(5, Duration::from_secs(5), "at the end");
    assert!(stream.error().is_none(), "{:?}", stream.error());
    eprintln!(
        "faults took {:?}; node key expired {expired_after:?} after SIGKILL",
        started.elapsed()
    );
}

/// The TX packet count of `device` in `ns`.
fn tx_packets(ns: &Netns, device: &str) -> u64 {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", device]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    json[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx stats: {out}"))
}

#[test]
fn privileged_cluster_tunnel() {
    let cluster = Cluster::start(&ClusterOptions {
        nodes: 2,
        operators: 1,
        routing: Routing::Tunnel,
        pool: "10.73.0.0/16",
    });
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let a = Pod::add(n1.agent(), &[("app", "a")]);
    let b = Pod::add(n2.agent(), &[("app", "b")]);
    let c = Pod::add(n2.agent(), &[("app", "c")]);
    let _servers = [
        EchoServer::start(&a.ns, a.addr(8080)),
        EchoServer::start(&b.ns, b.addr(8080)),
    ];
    let vxlan = eventually(
        PROPAGATION,
        || {
            format!(
                "node-1 has no VXLAN device:\n{}",
                n1.ns.ip(&["-d", "link", "show"])
            )
        },
        || {
            let out = n1.ns.ip(&["-j", "-d", "link", "show", "type", "vxlan"]);
            let links: serde_json::Value = serde_json::from_str(&out).ok()?;
            links[0]["ifname"].as_str().map(str::to_owned)
        },
    );
    // node-2's pods are not routed natively over the underlay.
    let peer_cidr = cluster.wait_node_cidr(1);
    let native = n1
        .routes()
        .lines()
        .filter(|l| l.starts_with(&format!("{peer_cidr} ")) && l.contains("dev eth0"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(native.is_empty(), "native route in tunnel mode: {native:?}");
    connects(&a.ns, b.addr(8080), "node-1 -> node-2 through the tunnel");
    let before = tx_packets(&n1.ns, &vxlan);
    for n in 0..5 {
        assert!(
            tcp_ok(&a.ns, b.addr(8080), Duration::from_secs(2)),
            "tunnel connection {n}"
        );
    }
    connects(&b.ns, a.addr(8080), "node-2 -> node-1 through the tunnel");
    let after = tx_packets(&n1.ns, &vxlan);
    assert!(
        after >= before + 15,
        "pod traffic did not go through {vxlan}: {before} -> {after}"
    );

    // Identities of pods behind the tunnel are enforced like native ones.
    connects(&c.ns, a.addr(8080), "app=c before the policy");
    cluster.policy_apply(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {name: a-ingress, namespace: default}\nspec:\n\
         \x20 endpointSelector: {matchLabels: {app: a}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: b}}]\n",
    );
    wait_policy(n1.agent(), 1);
    connects(
        &b.ns,
        a.addr(8080),
        "policy allows app=b through the tunnel",
    );
    denied(
        n1.agent(),
        &c.ns,
        a.addr(8080),
        "policy denies app=c through the tunnel",
    );
}
