//! ClusterMesh against the real binaries (root): two clusters, c1 (id 1) and c2 (id 2), each
//! with its own etcd, `clustermesh-apiserver`, operator and two node namespaces, all on one
//! underlay bridge; every agent reads the other cluster's etcd through `--clustermesh-config`
//! (see `common/mesh.rs`).
//!
//! - `basics`: every agent reports the remote cluster connected, ready and synced with its
//!   node count; pods of c1 reach pods of c2 and back; a policy in c2 selecting
//!   `io.cilium.k8s.policy.cluster: c1` plus `app: client` admits c1's client and denies c2's
//!   own same-labelled client; a global service with backends in both clusters balances across
//!   both, `--affinity local` keeps c1's traffic on c1's backends, and without local backends
//!   c1 uses c2's.
//! - `faults`: c2's etcd killed with SIGKILL marks c2 disconnected on c1's agents while an
//!   established stream and new connections to c2's pods keep working; after the restart c1
//!   resyncs to the same counts and the same ipcache entries; removing the c2 file from one
//!   c1 agent's clustermesh directory drains c2's entries and routes there only, and putting it
//!   back imports them again.
//!
//! Each test builds its own mesh in its own namespaces, so they run in parallel.

#[path = "common/node.rs"]
mod node;

#[path = "common/cluster.rs"]
mod cluster;

#[path = "common/mesh.rs"]
mod mesh;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use cluster::{Stream, cidr_contains, eventually};
use mesh::{ClusterSpec, Mesh, MeshCluster};
use node::{Agent, EchoServer, Netns, Pod, tcp_ok};

const POLICY_DENIED: u64 = 133;
/// A dropped SYN never connects; an allowed one across the bridge takes about a millisecond.
const DENIED_WAIT: Duration = Duration::from_millis(800);
/// How long local or remote cluster state may take to reach every agent.
const PROPAGATION: Duration = Duration::from_secs(30);
/// The upstream window after which a silent remote cluster counts as lost: a dead remote etcd
/// must be noticed within it, measured from the last heartbeat the agent saw (at most the
/// kill), plus slack for the agent's timer and this test's polling.
const DISCONNECT_DEADLINE: Duration = Duration::from_secs(120 + 10);
const ECHO_PORT: u16 = 8080;
/// The global service's frontend, the same in both clusters.
const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);

fn two_clusters(pools: [&'static str; 2]) -> Mesh {
    Mesh::start(&[
        ClusterSpec {
            id: 1,
            pool: pools[0],
            nodes: 2,
        },
        ClusterSpec {
            id: 2,
            pool: pools[1],
            nodes: 2,
        },
    ])
}

/// Connects (retrying while state propagates) and checks the echo.
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

/// `agent`'s status of remote cluster `remote` (`cilium-dbg status --verbose -o json`).
fn remote_status(agent: &Agent, remote: &str) -> Option<serde_json::Value> {
    let status = agent.dbg(&["status", "--verbose", "-o", "json"]).ok()?;
    status["cluster-mesh"]["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == remote)
        .cloned()
}

/// Connected, ready, synced on every resource, with `nodes` nodes.
fn fully_synced(status: &serde_json::Value, nodes: usize) -> bool {
    let synced = &status["synced"];
    status["connected"] == true
        && status["ready"] == true
        && ["nodes", "endpoints", "identities", "services"]
            .iter()
            .all(|kind| synced[kind] == true)
        && status["num-nodes"].as_u64() == u64::try_from(nodes).ok()
}

/// Waits until every agent of every cluster reports every other cluster fully synced.
fn wait_mesh_synced(mesh: &Mesh, timeout: Duration) {
    for local in &mesh.clusters {
        for remote in mesh.clusters.iter().filter(|c| c.id != local.id) {
            for node in &local.nodes {
                eventually(
                    timeout,
                    || {
                        format!(
                            "{}/{} does not report {} synced: {:?}\n{}",
                            local.name,
                            node.name,
                            remote.name,
                            remote_status(node.agent(), &remote.name),
                            mesh.logs()
                        )
                    },
                    || {
                        let status = remote_status(node.agent(), &remote.name)?;
                        fully_synced(&status, remote.nodes.len()).then_some(())
                    },
                );
            }
        }
    }
}

/// The counts an agent reports for a remote cluster.
fn counts(status: &serde_json::Value) -> [u64; 4] {
    [
        "num-nodes",
        "num-endpoints",
        "num-identities",
        "num-shared-services",
    ]
    .map(|field| status[field].as_u64().unwrap_or(u64::MAX))
}

/// An agent's BPF ipcache entries (`cilium-dbg bpf ipcache list`) whose address lies in
/// `cidr`: address -> the whole entry.
fn bpf_ipcache_in(agent: &Agent, cidr: &str) -> BTreeMap<Ipv4Addr, String> {
    agent.json(&["bpf", "ipcache", "list"])["cache"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let key = entry["key"].as_str()?;
            let ip: Ipv4Addr = key.split('/').next()?.parse().ok()?;
            cidr_contains(cidr, ip).then(|| (ip, entry.to_string()))
        })
        .collect()
}

/// The identity of the endpoint with address `ip`, as its agent reports it.
fn identity_of(agent: &Agent, ip: Ipv4Addr) -> Option<u64> {
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
}

/// Waits until the pod has a cluster identity (>= 256) and returns it.
fn wait_identity(agent: &Agent, pod: &Pod) -> u64 {
    eventually(
        PROPAGATION,
        || format!("{} has no identity yet", pod.ip),
        || identity_of(agent, pod.ip).filter(|id| *id >= 256),
    )
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

/// The backends `agent` programs for `frontend` (`cilium-dbg service list`).
fn service_backends(agent: &Agent, frontend: SocketAddrV4) -> BTreeSet<SocketAddrV4> {
    agent
        .json(&["service", "list"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| &s["spec"])
        .filter(|spec| {
            spec["frontend-address"]["ip"] == frontend.ip().to_string().as_str()
                && spec["frontend-address"]["port"] == frontend.port()
        })
        .flat_map(|spec| {
            spec["backend-addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|b| {
            let ip: Ipv4Addr = b["ip"].as_str()?.parse().ok()?;
            let port = u16::try_from(b["port"].as_u64()?).ok()?;
            Some(SocketAddrV4::new(ip, port))
        })
        .collect()
}

/// Waits until every agent of `cluster` programs exactly `backends` for the frontend.
fn wait_backends(cluster: &MeshCluster, backends: &BTreeSet<SocketAddrV4>, what: &str) {
    for node in &cluster.nodes {
        eventually(
            PROPAGATION,
            || {
                format!(
                    "{what}: {}/{} programs {:?}, want {backends:?}\n{}",
                    cluster.name,
                    node.name,
                    service_backends(node.agent(), FRONTEND),
                    node.agent().log_text()
                )
            },
            || (service_backends(node.agent(), FRONTEND) == *backends).then_some(()),
        );
    }
}

/// The backends of one cluster for the global service: their pods' echo servers.
struct Backends {
    servers: Vec<EchoServer>,
}

impl Backends {
    fn accepted(&self) -> u32 {
        self.servers.iter().map(EchoServer::accepted).sum()
    }
}

/// Opens `count` connections from `from` to the frontend (each must echo) and returns how
/// many of them each cluster's backends accepted.
fn spread(from: &Netns, count: u32, c1: &Backends, c2: &Backends, what: &str) -> (u32, u32) {
    let (before1, before2) = (c1.accepted(), c2.accepted());
    for n in 0..count {
        assert!(
            tcp_ok(from, FRONTEND, Duration::from_secs(2)),
            "{what}: connection {n} to {FRONTEND} failed"
        );
    }
    let (to1, to2) = (c1.accepted() - before1, c2.accepted() - before2);
    assert_eq!(
        to1 + to2,
        count,
        "{what}: every connection reached a backend"
    );
    (to1, to2)
}

/// Applies the global service `default/web` on [`FRONTEND`] in `cluster` with `backends`
/// (pods' echo ports), shared, with `affinity` if given: an upstream ClusterService record
/// written through `cilium service apply -f`.
///
/// The record names its cluster id: remote agents reject a service whose `clusterID` is not
/// its cluster's, and `cilium service apply --name ... --global` writes `clusterID: 0` (the
/// CLI has no `--cluster-id` flag), so the flag form cannot publish a service to the mesh.
fn apply_global_service(
    cluster: &MeshCluster,
    backends: &BTreeSet<SocketAddrV4>,
    affinity: Option<&str>,
) {
    let port = |port: u16| serde_json::json!({"http": {"Protocol": "TCP", "Port": port}});
    let backends: serde_json::Map<String, serde_json::Value> = backends
        .iter()
        .map(|b| (b.ip().to_string(), port(b.port())))
        .collect();
    let labels: serde_json::Map<String, serde_json::Value> = affinity
        .map(|a| ("service.cilium.io/affinity".to_owned(), a.into()))
        .into_iter()
        .collect();
    let record = serde_json::json!({
        "cluster": cluster.name,
        "namespace": "default",
        "name": "web",
        "frontends": {FRONTEND.ip().to_string(): port(FRONTEND.port())},
        "backends": backends,
        "labels": labels,
        "selector": {},
        "includeExternal": true,
        "shared": true,
        "clusterID": cluster.id,
    });
    let file = cluster.dir.path().join(node::unique("service"));
    std::fs::write(&file, record.to_string()).expect("write service record");
    cluster.cilium(&["service", "apply", "-f", &file.display().to_string()]);
}

fn addrs(pods: &[&Pod]) -> BTreeSet<SocketAddrV4> {
    pods.iter().map(|p| p.addr(ECHO_PORT)).collect()
}

const C1_ONLY_POLICY: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: echo-from-c1, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: echo}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client, io.cilium.k8s.policy.cluster: c1}}]
";

#[test]
fn privileged_clustermesh_basics() {
    let started = Instant::now();
    let mesh = two_clusters(["10.1.0.0/16", "10.2.0.0/16"]);
    let (c1, c2) = (mesh.cluster(0), mesh.cluster(1));
    wait_mesh_synced(&mesh, PROPAGATION);
    let synced_after = started.elapsed();

    // Every node routes the other cluster's pod CIDRs over the underlay.
    for (local, remote) in [(c1, c2), (c2, c1)] {
        for node in &local.nodes {
            for (peer, cidr) in remote.nodes.iter().zip(&remote.cidrs) {
                eventually(
                    PROPAGATION,
                    || {
                        format!(
                            "{}/{} has no route to {}'s {cidr}:\n{}",
                            local.name,
                            node.name,
                            remote.name,
                            node.routes()
                        )
                    },
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
    }

    let client1 = Pod::add(c1.agent(0), &[("app", "client")]);
    let other1 = Pod::add(c1.agent(1), &[("app", "other")]);
    let echo2 = Pod::add(c2.agent(0), &[("app", "echo")]);
    let client2 = Pod::add(c2.agent(1), &[("app", "client")]);
    for (pod, cluster) in [(&client1, c1), (&other1, c1), (&echo2, c2), (&client2, c2)] {
        assert!(
            cidr_contains(&cluster.pool, pod.ip),
            "{} outside {}'s pool {}",
            pod.ip,
            cluster.name,
            cluster.pool
        );
    }
    // Identities come from each cluster's own range (cluster id << 16).
    for (agent, pod, id) in [
        (c1.agent(0), &client1, 1u64),
        (c2.agent(0), &echo2, 2),
        (c2.agent(1), &client2, 2),
    ] {
        let identity = wait_identity(agent, pod);
        assert_eq!(
            identity >> 16,
            id,
            "identity {identity} of {} not in cluster {id}'s range",
            pod.ip
        );
    }
    let _echo_servers = [
        EchoServer::start(&echo2.ns, echo2.addr(ECHO_PORT)),
        EchoServer::start(&client1.ns, client1.addr(ECHO_PORT)),
    ];

    // Across clusters, both ways, and across nodes.
    connects(&client1.ns, echo2.addr(ECHO_PORT), "c1/node-1 -> c2/node-1");
    connects(&other1.ns, echo2.addr(ECHO_PORT), "c1/node-2 -> c2/node-1");
    connects(&client2.ns, echo2.addr(ECHO_PORT), "c2/node-2 -> c2/node-1");
    connects(&echo2.ns, client1.addr(ECHO_PORT), "c2/node-1 -> c1/node-1");
    connects(
        &client2.ns,
        client1.addr(ECHO_PORT),
        "c2/node-2 -> c1/node-1",
    );

    // A policy in c2 that names c1: c1's client is admitted, c2's own client (same app label)
    // and c1's other pod are not.
    c2.policy_apply(C1_ONLY_POLICY);
    for node in &c2.nodes {
        wait_policy(node.agent(), 1);
    }
    connects(
        &client1.ns,
        echo2.addr(ECHO_PORT),
        "policy admits app=client of c1",
    );
    denied(
        c2.agent(0),
        &client2.ns,
        echo2.addr(ECHO_PORT),
        "policy denies app=client of c2",
    );
    denied(
        c2.agent(0),
        &other1.ns,
        echo2.addr(ECHO_PORT),
        "policy denies app=other of c1",
    );
    // The policy lives in c2's etcd only: c1's pods still accept c2's.
    connects(
        &client2.ns,
        client1.addr(ECHO_PORT),
        "c1 unaffected by c2's policy",
    );

    // A global service: backends in both clusters on the same frontend.
    let web1 = [
        Pod::add(c1.agent(0), &[("app", "web")]),
        Pod::add(c1.agent(1), &[("app", "web")]),
    ];
    let web2 = [
        Pod::add(c2.agent(0), &[("app", "web")]),
        Pod::add(c2.agent(1), &[("app", "web")]),
    ];
    let backends1 = Backends {
        servers: web1
            .iter()
            .map(|p| EchoServer::start(&p.ns, p.addr(ECHO_PORT)))
            .collect(),
    };
    let backends2 = Backends {
        servers: web2
            .iter()
            .map(|p| EchoServer::start(&p.ns, p.addr(ECHO_PORT)))
            .collect(),
    };
    let set1 = addrs(&[&web1[0], &web1[1]]);
    let set2 = addrs(&[&web2[0], &web2[1]]);
    let all: BTreeSet<SocketAddrV4> = set1.union(&set2).copied().collect();
    apply_global_service(c2, &set2, None);
    apply_global_service(c1, &set1, None);
    wait_backends(c1, &all, "global service in c1");
    wait_backends(c2, &all, "global service in c2");
    let (to1, to2) = spread(&client1.ns, 40, &backends1, &backends2, "global service");
    assert!(
        to1 > 0 && to2 > 0,
        "a global service balances across both clusters: c1 {to1}, c2 {to2}"
    );
    let (to1, to2) = spread(&client2.ns, 40, &backends1, &backends2, "from c2");
    assert!(
        to1 > 0 && to2 > 0,
        "from c2, too, both clusters serve: c1 {to1}, c2 {to2}"
    );

    // Affinity local in c1: c1 keeps to its own backends while it has any; c2 still balances.
    apply_global_service(c1, &set1, Some("local"));
    wait_backends(c1, &set1, "affinity local in c1");
    let (to1, to2) = spread(&client1.ns, 30, &backends1, &backends2, "affinity local");
    assert_eq!((to1, to2), (30, 0), "affinity local stays in c1");
    wait_backends(c2, &all, "c2 after c1's affinity change");

    // Without local backends, c1's traffic goes to c2's.
    apply_global_service(c1, &BTreeSet::new(), Some("local"));
    wait_backends(c1, &set2, "affinity local without local backends");
    let (to1, to2) = spread(&client1.ns, 30, &backends1, &backends2, "no local backend");
    assert_eq!((to1, to2), (0, 30), "no local backend: c2 serves");
    // ... and c2 no longer gets c1's backends, which c1 withdrew.
    wait_backends(c2, &set2, "c2 after c1 withdrew its backends");

    eprintln!(
        "basics took {:?} (mesh synced after {synced_after:?})",
        started.elapsed()
    );
}

#[test]
fn privileged_clustermesh_faults() {
    let started = Instant::now();
    let mut mesh = two_clusters(["10.11.0.0/16", "10.12.0.0/16"]);
    wait_mesh_synced(&mesh, PROPAGATION);
    let (c1, c2) = (mesh.cluster(0), mesh.cluster(1));
    let client = Pod::add(c1.agent(0), &[("app", "client")]);
    let echo_a = Pod::add(c2.agent(0), &[("app", "echo")]);
    let echo_b = Pod::add(c2.agent(1), &[("app", "echo")]);
    let local = Pod::add(c1.agent(1), &[("app", "local")]);
    let _servers = [
        EchoServer::start(&echo_a.ns, echo_a.addr(ECHO_PORT)),
        EchoServer::start(&echo_b.ns, echo_b.addr(ECHO_PORT)),
        EchoServer::start(&local.ns, local.addr(ECHO_PORT)),
    ];
    connects(&client.ns, echo_a.addr(ECHO_PORT), "c1 -> c2/node-1");
    connects(&client.ns, echo_b.addr(ECHO_PORT), "c1 -> c2/node-2");
    connects(&client.ns, local.addr(ECHO_PORT), "c1 -> c1/node-2");

    // What c1's agents imported from c2, once it holds every c2 pod.
    let c2_pool = c2.pool.clone();
    let imported: Vec<(BTreeMap<Ipv4Addr, String>, [u64; 4])> = c1
        .nodes
        .iter()
        .map(|node| {
            eventually(
                PROPAGATION,
                || format!("{}/{} lacks c2's pods", c1.name, node.name),
                || {
                    let entries = bpf_ipcache_in(node.agent(), &c2_pool);
                    let status = remote_status(node.agent(), &c2.name)?;
                    (entries.contains_key(&echo_a.ip)
                        && entries.contains_key(&echo_b.ip)
                        && fully_synced(&status, 2))
                    .then(|| (entries, counts(&status)))
                },
            )
        })
        .collect();
    for (entries, counts) in &imported {
        assert!(
            // Both echo pods share one identity.
            counts[1] >= 2 && counts[2] >= 1,
            "c2's endpoints and identities counted: {counts:?}"
        );
        assert_eq!(counts[0], 2, "c2's nodes counted: {counts:?}");
        assert!(entries.len() >= 2, "{entries:?}");
    }
    let stream = Stream::open(&client.ns, echo_a.addr(ECHO_PORT));
    stream.wait_progress(5, Duration::from_secs(5), "before c2's etcd stops");

    // c2's etcd dies: c1 marks c2 disconnected, the imported state keeps traffic flowing.
    mesh.clusters[1].etcd.kill9();
    let killed = Instant::now();
    let (c1, c2) = (mesh.cluster(0), mesh.cluster(1));
    stream.wait_progress(5, Duration::from_secs(5), "right after c2's etcd died");
    assert!(
        tcp_ok(&client.ns, echo_b.addr(ECHO_PORT), Duration::from_secs(2)),
        "new connection c1 -> c2/node-2 right after c2's etcd died"
    );
    for node in &c1.nodes {
        eventually(
            DISCONNECT_DEADLINE,
            || {
                format!(
                    "{}/{} still reports c2 up: {:?}",
                    c1.name,
                    node.name,
                    remote_status(node.agent(), &c2.name)
                )
            },
            || {
                let status = remote_status(node.agent(), &c2.name)?;
                (status["connected"] == false || status["ready"] == false).then_some(())
            },
        );
    }
    let noticed_after = killed.elapsed();
    stream.wait_progress(5, Duration::from_secs(5), "while c2's etcd is down");
    for (pod, what) in [(&echo_a, "c2/node-1"), (&echo_b, "c2/node-2")] {
        assert!(
            tcp_ok(&client.ns, pod.addr(ECHO_PORT), Duration::from_secs(2)),
            "new connection c1 -> {what} while c2's etcd is down"
        );
    }
    assert!(
        tcp_ok(&client.ns, local.addr(ECHO_PORT), Duration::from_secs(2)),
        "local traffic while c2's etcd is down"
    );
    for (node, (entries, _)) in c1.nodes.iter().zip(&imported) {
        assert_eq!(
            &bpf_ipcache_in(node.agent(), &c2_pool),
            entries,
            "{}/{} kept c2's ipcache entries while disconnected",
            c1.name,
            node.name
        );
    }

    // Restart: c1 reconnects and resyncs to the same state, without duplicates.
    mesh.clusters[1].etcd.launch();
    let restarted = Instant::now();
    let (c1, c2) = (mesh.cluster(0), mesh.cluster(1));
    for (node, (entries, before)) in c1.nodes.iter().zip(&imported) {
        eventually(
            Duration::from_secs(60),
            || {
                format!(
                    "{}/{} not resynced with c2: {:?} (before {before:?})\n{}",
                    c1.name,
                    node.name,
                    remote_status(node.agent(), &c2.name),
                    node.agent().log_text()
                )
            },
            || {
                let status = remote_status(node.agent(), &c2.name)?;
                (fully_synced(&status, 2) && status["num-failures"].as_u64() >= Some(1))
                    .then_some(())
            },
        );
        let status = remote_status(node.agent(), &c2.name).expect("c2 status");
        assert_eq!(
            counts(&status),
            *before,
            "{}/{}: counts after the resync differ",
            c1.name,
            node.name
        );
        assert_eq!(
            &bpf_ipcache_in(node.agent(), &c2_pool),
            entries,
            "{}/{}: c2's ipcache entries after the resync differ",
            c1.name,
            node.name
        );
    }
    let resynced_after = restarted.elapsed();
    stream.wait_progress(5, Duration::from_secs(5), "after c2's etcd restarted");
    assert!(stream.error().is_none(), "{:?}", stream.error());
    // The watches resumed: a pod made in c2 after the restart reaches c1.
    let late = Pod::add(c2.agent(1), &[("app", "late")]);
    let _late_server = EchoServer::start(&late.ns, late.addr(ECHO_PORT));
    connects(
        &client.ns,
        late.addr(ECHO_PORT),
        "c1 -> a pod made after the restart",
    );

    // Removing c2's file from node-1's clustermesh directory drains c2 there, only there.
    let node1 = c1.node(0);
    let node2 = c1.node(1);
    let c2_file = node1.mesh_dir().join(&c2.name);
    let c2_config = std::fs::read_to_string(&c2_file).expect("c2 config");
    std::fs::remove_file(&c2_file).expect("remove c2 config");
    eventually(
        PROPAGATION,
        || {
            format!(
                "{}/node-1 still holds c2: ipcache {:?}, status {:?}, routes:\n{}",
                c1.name,
                bpf_ipcache_in(node1.agent(), &c2_pool),
                remote_status(node1.agent(), &c2.name),
                node1.routes()
            )
        },
        || {
            (bpf_ipcache_in(node1.agent(), &c2_pool).is_empty()
                && c2.cidrs.iter().all(|cidr| !node1.has_route_to(cidr))
                && remote_status(node1.agent(), &c2.name).is_none())
            .then_some(())
        },
    );
    assert!(
        !tcp_ok(&client.ns, echo_b.addr(ECHO_PORT), DENIED_WAIT),
        "c1/node-1 still reaches c2 after draining it"
    );
    assert!(
        tcp_ok(&client.ns, local.addr(ECHO_PORT), Duration::from_secs(2)),
        "local traffic after draining c2"
    );
    let status = remote_status(node2.agent(), &c2.name).expect("c2 on node-2");
    assert!(fully_synced(&status, 2), "node-2 keeps c2: {status}");
    assert!(
        bpf_ipcache_in(node2.agent(), &c2_pool).contains_key(&echo_b.ip),
        "node-2 keeps c2's ipcache entries"
    );
    assert!(
        c2.cidrs.iter().all(|cidr| node2.has_route_to(cidr)),
        "node-2 keeps its routes to c2:\n{}",
        node2.routes()
    );

    // Putting the file back imports c2 again.
    std::fs::write(&c2_file, c2_config).expect("restore c2 config");
    eventually(
        PROPAGATION,
        || {
            format!(
                "{}/node-1 does not import c2 again: {:?}",
                c1.name,
                remote_status(node1.agent(), &c2.name)
            )
        },
        || {
            let status = remote_status(node1.agent(), &c2.name)?;
            fully_synced(&status, 2).then_some(())
        },
    );
    connects(
        &client.ns,
        echo_b.addr(ECHO_PORT),
        "c1 -> c2 after re-adding c2",
    );
    eprintln!(
        "faults took {:?}; c2 marked down {noticed_after:?} after SIGKILL, resynced \
         {resynced_after:?} after the restart",
        started.elapsed()
    );
}
