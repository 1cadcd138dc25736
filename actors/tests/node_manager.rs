//! NodeManager tests against the in-memory kvstore and the recording fake routes: publication
//! with the lease, peers becoming routes and ipcache claims, deletes, malformed records, lease
//! loss, route failures and a kvstore outage.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Context, Handler};
use actors::ipcache::{DeleteIp, Effective, UpsertIp};
use actors::node::{
    Dump, ListNodes, NODE_IP_SOURCE, NodeIpcacheOutputs, NodeKvstoreConfig, NodeLeaseChanged,
    NodeManager, NodeManagerConfig, PeerId, RemoteNodes, RouteStatus, UpdateLocalNode,
};
use datapath::api::IpcacheKey;
use datapath::routes::fake::{FakeNodeRoutes, RouteCall, RouteFault};
use datapath::routes::{NodeRoute, RoutingMode};
use kvstore::clock::{ManualClock, TokioClock};
use kvstore::keys::{NODES_PREFIX, Node, NodeAddress, NodeCidr, StoreValue, TypedStore};
use kvstore::memory::MemoryStore;
use kvstore::{Backend, LeaseId};
use model::identity::{ClusterId, ClusterName, NumericIdentity};

/// What the ipcache probe saw, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    Upsert {
        ip: IpAddr,
        identity: NumericIdentity,
        host_ip: Option<IpAddr>,
    },
    Delete(IpAddr),
}

#[derive(Debug, Default, Clone)]
struct IpcacheProbe {
    seen: Arc<Mutex<Vec<Claim>>>,
}

impl IpcacheProbe {
    fn seen(&self) -> Vec<Claim> {
        self.seen.lock().unwrap().clone()
    }
}

impl Actor for IpcacheProbe {
    type Context = Context<Self>;
}

fn host_of(key: &IpcacheKey) -> IpAddr {
    assert_eq!(key.prefix().prefix_len(), key.prefix().max_prefix_len());
    key.prefix().addr()
}

impl Handler<UpsertIp> for IpcacheProbe {
    type Result = actix::MessageResult<UpsertIp>;
    fn handle(&mut self, msg: UpsertIp, _: &mut Context<Self>) -> Self::Result {
        assert_eq!(msg.source, NODE_IP_SOURCE);
        self.seen.lock().unwrap().push(Claim::Upsert {
            ip: host_of(&msg.key),
            identity: msg.entry.identity,
            host_ip: msg.entry.host_ip,
        });
        actix::MessageResult(Effective::Applied)
    }
}

impl Handler<DeleteIp> for IpcacheProbe {
    type Result = ();
    fn handle(&mut self, msg: DeleteIp, _: &mut Context<Self>) {
        assert_eq!(msg.source, NODE_IP_SOURCE);
        self.seen
            .lock()
            .unwrap()
            .push(Claim::Delete(host_of(&msg.key)));
    }
}

const CLUSTER: &str = "c1";

fn node(name: &str, ip: &str, cidr: &str) -> Node {
    Node {
        name: name.into(),
        cluster: CLUSTER.into(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".into(),
            ip: Some(ip.parse().unwrap()),
        }],
        ipv4_alloc_cidr: Some(NodeCidr::new(cidr.parse().unwrap())),
        source: "local".into(),
        ..Node::default()
    }
}

fn route(cidr: &str, ip: &str) -> NodeRoute {
    NodeRoute {
        pod_cidr: cidr.parse().unwrap(),
        node_ip: ip.parse().unwrap(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Harness {
    manager: Addr<NodeManager>,
    routes: FakeNodeRoutes,
    ipcache: IpcacheProbe,
    /// Another client of the same store: what other agents (or an operator by hand) write.
    other: Arc<dyn Backend>,
    nodes: TypedStore<Node>,
}

fn start(store: &MemoryStore, lease: LeaseId, routes: FakeNodeRoutes) -> Harness {
    let ipcache = IpcacheProbe::default();
    let probe = ipcache.clone().start();
    let manager = NodeManager::new(NodeManagerConfig {
        cluster: ClusterName::new(CLUSTER).unwrap(),
        cluster_id: ClusterId::new(3),
        local: node("a", "192.168.50.1", "10.0.1.0/24"),
        kvstore: Some(NodeKvstoreConfig {
            backend: Arc::new(store.client()),
            lease,
        }),
        routes: Arc::new(routes.clone()),
        ipcache: Some(NodeIpcacheOutputs {
            upsert: probe.clone().recipient(),
            delete: probe.recipient(),
        }),
    })
    .start();
    let other: Arc<dyn Backend> = Arc::new(store.client());
    Harness {
        manager,
        routes,
        ipcache,
        nodes: TypedStore::new(Arc::clone(&other), NODES_PREFIX),
        other,
    }
}

/// Polls `check` until it holds, failing after five seconds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn local_key() -> String {
    format!("{NODES_PREFIX}/{CLUSTER}/a")
}

#[actix::test]
async fn publishes_the_local_record_with_the_lease_and_claims_the_host_address() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let backend = store.client();
    let lease = backend.grant_lease(Duration::from_secs(900)).await.unwrap();
    let h = start(&store, lease, FakeNodeRoutes::new(RoutingMode::Native));

    eventually("the local record", async || {
        h.other.get(&local_key()).await.unwrap().is_some()
    })
    .await;
    let kv = h.other.get(&local_key()).await.unwrap().unwrap();
    assert_eq!(kv.lease, Some(lease));
    let published = Node::decode(&kv.value).unwrap();
    assert_eq!(published.name, "a");
    assert_eq!(published.cluster, CLUSTER);
    assert_eq!(
        published.cluster_id, 3,
        "the cluster id comes from the config"
    );
    assert_eq!(
        published.ipv4_alloc_cidr,
        Some(NodeCidr::new("10.0.1.0/24".parse().unwrap()))
    );
    assert_eq!(
        h.ipcache.seen().first(),
        Some(&Claim::Upsert {
            ip: ip("192.168.50.1"),
            identity: NumericIdentity::HOST,
            host_ip: None,
        })
    );

    let dump = h.manager.send(Dump).await.unwrap();
    let publish = dump.publish.expect("kvstore configured");
    assert_eq!(publish.key, local_key());
    assert_eq!(publish.lease, lease.to_string());
    assert!(publish.status.published);
    assert!(dump.synced);
    // Our own record is not a peer.
    assert!(dump.peers.is_empty());
    assert!(h.routes.routes().is_empty());

    // A new local record is published again.
    let mut updated = node("a", "192.168.50.1", "10.0.1.0/24");
    updated.labels.insert("zone".into(), "z1".into());
    h.manager
        .send(UpdateLocalNode { node: updated })
        .await
        .unwrap();
    eventually("the updated record", async || {
        h.nodes
            .get(&Node::key_name_of(CLUSTER, "a"))
            .await
            .unwrap()
            .is_some_and(|n| n.labels.get("zone").map(String::as_str) == Some("z1"))
    })
    .await;
}

#[actix::test]
async fn peers_become_routes_and_go_with_their_records() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let lease = store
        .client()
        .grant_lease(Duration::from_secs(900))
        .await
        .unwrap();
    // One peer exists before the manager starts, one appears later.
    let h = start(&store, lease, FakeNodeRoutes::new(RoutingMode::Tunnel));
    h.nodes
        .upsert(&node("b", "192.168.50.2", "10.0.2.0/24"), None)
        .await
        .unwrap();
    h.nodes
        .upsert(&node("c", "192.168.50.3", "10.0.3.0/24"), None)
        .await
        .unwrap();
    // A node of another cluster is not a peer.
    let mut foreign = node("x", "192.168.60.1", "10.9.0.0/24");
    foreign.cluster = "c10".into();
    h.nodes.upsert(&foreign, None).await.unwrap();

    let both = [
        route("10.0.2.0/24", "192.168.50.2"),
        route("10.0.3.0/24", "192.168.50.3"),
    ];
    eventually("routes to both peers", async || h.routes.routes() == both).await;
    let claims = h.ipcache.seen();
    for peer in ["192.168.50.2", "192.168.50.3"] {
        assert!(
            claims.contains(&Claim::Upsert {
                ip: ip(peer),
                identity: NumericIdentity::REMOTE_NODE,
                host_ip: Some(ip(peer)),
            }),
            "{claims:?}"
        );
    }
    let listed = h.manager.send(ListNodes).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);

    // b moves to another address: its route is replaced and its claim moves.
    h.nodes
        .upsert(&node("b", "192.168.50.12", "10.0.2.0/24"), None)
        .await
        .unwrap();
    eventually("the moved route", async || {
        h.routes.routes()
            == [
                route("10.0.2.0/24", "192.168.50.12"),
                route("10.0.3.0/24", "192.168.50.3"),
            ]
    })
    .await;
    assert!(
        h.ipcache
            .seen()
            .contains(&Claim::Delete(ip("192.168.50.2")))
    );

    // c's record is deleted: route and claim go; b stays.
    h.nodes
        .delete(&Node::key_name_of(CLUSTER, "c"))
        .await
        .unwrap();
    eventually("c's route removed", async || {
        h.routes.routes() == [route("10.0.2.0/24", "192.168.50.12")]
    })
    .await;
    eventually("c's claim released", async || {
        h.ipcache
            .seen()
            .contains(&Claim::Delete(ip("192.168.50.3")))
    })
    .await;
    let dump = h.manager.send(Dump).await.unwrap();
    assert_eq!(dump.peers.len(), 1);
    assert_eq!(dump.routes.len(), 1);
    assert_eq!(dump.routes[0].status, RouteStatus::Installed);
    assert_eq!(
        dump.routes[0].peer.as_ref().map(|p| p.name.as_str()),
        Some("b")
    );
}

#[actix::test]
async fn malformed_records_are_skipped_without_disturbing_others() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let lease = store
        .client()
        .grant_lease(Duration::from_secs(900))
        .await
        .unwrap();
    let h = start(&store, lease, FakeNodeRoutes::new(RoutingMode::Native));
    h.nodes
        .upsert(&node("b", "192.168.50.2", "10.0.2.0/24"), None)
        .await
        .unwrap();
    eventually("b's route", async || h.routes.routes().len() == 1).await;

    // Written by hand: not JSON, a record without a name, and a bad CIDR.
    let prefix = format!("{NODES_PREFIX}/{CLUSTER}");
    for (name, value) in [
        ("junk", &b"{\"Name\": 5"[..]),
        (
            "noname",
            br#"{"Cluster":"c1","IPAddresses":[{"Type":"InternalIP","IP":"192.168.50.8"}]}"#,
        ),
        (
            "b",
            br#"{"Name":"b","Cluster":"c1","IPv4AllocCIDR":"10.0.2.0/99"}"#,
        ),
    ] {
        h.other
            .put(&format!("{prefix}/{name}"), value.to_vec(), None)
            .await
            .unwrap();
    }
    h.nodes
        .upsert(&node("d", "192.168.50.4", "10.0.4.0/24"), None)
        .await
        .unwrap();
    eventually("d's route", async || h.routes.routes().len() == 2).await;
    assert_eq!(
        h.routes.routes(),
        [
            route("10.0.2.0/24", "192.168.50.2"),
            route("10.0.4.0/24", "192.168.50.4"),
        ],
        "the undecodable update of b left b's route alone"
    );
    let dump = h.manager.send(Dump).await.unwrap();
    let names: Vec<&str> = dump.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["b", "d"]);
}

#[actix::test]
async fn a_lost_lease_is_replaced_and_the_record_written_again() {
    let clock = ManualClock::new();
    let store = MemoryStore::new(Arc::new(clock.clone()));
    let backend = store.client();
    let old = backend.grant_lease(Duration::from_secs(10)).await.unwrap();
    let h = start(&store, old, FakeNodeRoutes::new(RoutingMode::Native));
    h.nodes
        .upsert(&node("b", "192.168.50.2", "10.0.2.0/24"), None)
        .await
        .unwrap();
    eventually("the record", async || {
        h.other.get(&local_key()).await.unwrap().is_some()
    })
    .await;
    eventually("b's route", async || h.routes.routes().len() == 1).await;

    // The lease runs out (the agent could not keep it alive): the record goes with it.
    clock.advance(Duration::from_secs(11));
    store.expire_leases();
    assert!(h.other.get(&local_key()).await.unwrap().is_none());
    // The manager tries to write it back under the dead lease and fails meanwhile.
    eventually("a failed re-publication", async || {
        let dump = h.manager.send(Dump).await.unwrap();
        dump.publish.unwrap().status.last_error.is_some()
    })
    .await;

    let new = backend.grant_lease(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new, old);
    h.manager
        .send(NodeLeaseChanged { lease: new })
        .await
        .unwrap();
    eventually("the record under the new lease", async || {
        h.other
            .get(&local_key())
            .await
            .unwrap()
            .is_some_and(|kv| kv.lease == Some(new))
    })
    .await;
    let dump = h.manager.send(Dump).await.unwrap();
    let publish = dump.publish.unwrap();
    assert!(publish.status.published);
    assert_eq!(publish.status.last_error, None);
    assert_eq!(publish.lease, new.to_string());
    assert_eq!(h.routes.routes().len(), 1, "peers are untouched");
}

#[actix::test]
async fn an_unavailable_store_keeps_routes_and_failed_routes_are_retried() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let lease = store
        .client()
        .grant_lease(Duration::from_secs(900))
        .await
        .unwrap();
    let routes = FakeNodeRoutes::new(RoutingMode::Native);
    routes.fail_next(RouteFault::Upsert, 2);
    let h = start(&store, lease, routes);
    h.nodes
        .upsert(&node("b", "192.168.50.2", "10.0.2.0/24"), None)
        .await
        .unwrap();
    let b = route("10.0.2.0/24", "192.168.50.2");
    eventually("a failed install in the dump", async || {
        let dump = h.manager.send(Dump).await.unwrap();
        dump.routes
            .first()
            .is_some_and(|r| r.status == RouteStatus::Pending && r.last_error.is_some())
    })
    .await;
    eventually("b's route after retries", async || h.routes.routes() == [b]).await;
    let upserts = h
        .routes
        .calls()
        .iter()
        .filter(|call| **call == RouteCall::Upsert(b))
        .count();
    assert_eq!(upserts, 3, "two failures, then success");
    let dump = h.manager.send(Dump).await.unwrap();
    assert_eq!(dump.routes[0].status, RouteStatus::Installed);
    assert_eq!(dump.routes[0].last_error, None);

    // The store goes away for a while: nothing is removed.
    store.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.routes.routes(), [b]);
    assert!(
        !h.routes
            .calls()
            .iter()
            .any(|call| matches!(call, RouteCall::Delete(_))),
        "{:?}",
        h.routes.calls()
    );
    assert!(
        !h.ipcache
            .seen()
            .iter()
            .any(|claim| matches!(claim, Claim::Delete(_)))
    );
    assert_eq!(h.manager.send(ListNodes).await.unwrap().len(), 2);

    // Back: changes flow again.
    store.set_unavailable(false);
    h.nodes
        .upsert(&node("c", "192.168.50.3", "10.0.3.0/24"), None)
        .await
        .unwrap();
    eventually("c's route after the outage", async || {
        h.routes.routes() == [b, route("10.0.3.0/24", "192.168.50.3")]
    })
    .await;
}

#[actix::test]
async fn routes_of_an_earlier_run_that_no_peer_wants_are_removed() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let lease = store
        .client()
        .grant_lease(Duration::from_secs(900))
        .await
        .unwrap();
    let routes = FakeNodeRoutes::new(RoutingMode::Native);
    let kept = route("10.0.2.0/24", "192.168.50.2");
    let stale = route("10.0.7.0/24", "192.168.50.7");
    routes.preinstall(kept);
    routes.preinstall(stale);
    let other = store.client();
    TypedStore::<Node>::new(Arc::new(other), NODES_PREFIX)
        .upsert(&node("b", "192.168.50.2", "10.0.2.0/24"), None)
        .await
        .unwrap();
    let h = start(&store, lease, routes);
    eventually("the stale route removed", async || {
        h.routes.routes() == [kept]
    })
    .await;
    assert!(h.routes.calls().contains(&RouteCall::List));
    assert!(!h.routes.calls().contains(&RouteCall::Delete(kept)));
}

#[actix::test]
async fn without_a_kvstore_only_the_local_node_is_known() {
    let ipcache = IpcacheProbe::default();
    let probe = ipcache.clone().start();
    let routes = FakeNodeRoutes::new(RoutingMode::Native);
    routes.preinstall(route("10.0.7.0/24", "192.168.50.7"));
    let manager = NodeManager::new(NodeManagerConfig {
        cluster: ClusterName::new(CLUSTER).unwrap(),
        cluster_id: ClusterId::UNSET,
        local: node("a", "192.168.50.1", "10.0.1.0/24"),
        kvstore: None,
        routes: Arc::new(routes.clone()),
        ipcache: Some(NodeIpcacheOutputs {
            upsert: probe.clone().recipient(),
            delete: probe.recipient(),
        }),
    })
    .start();
    let listed = manager.send(ListNodes).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "a");
    let dump = manager.send(Dump).await.unwrap();
    assert!(dump.publish.is_none());
    eventually("the stale route removed", async || {
        routes.routes().is_empty()
    })
    .await;
    // Moving the node's address moves the host claim.
    manager
        .send(UpdateLocalNode {
            node: node("a", "192.168.50.11", "10.0.1.0/24"),
        })
        .await
        .unwrap();
    eventually("the host claim moved", async || {
        ipcache.seen().ends_with(&[
            Claim::Delete(ip("192.168.50.1")),
            Claim::Upsert {
                ip: ip("192.168.50.11"),
                identity: NumericIdentity::HOST,
                host_ip: None,
            },
        ])
    })
    .await;
}

#[actix::test]
async fn remote_cluster_nodes_get_routes_and_claims_until_the_mesh_removes_them() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let lease = store
        .client()
        .grant_lease(Duration::from_secs(900))
        .await
        .unwrap();
    let h = start(&store, lease, FakeNodeRoutes::new(RoutingMode::Native));
    h.nodes
        .upsert(&node("b", "192.168.50.2", "10.0.2.0/24"), None)
        .await
        .unwrap();
    eventually("b's route", async || h.routes.routes().len() == 1).await;

    let c2 = ClusterName::new("c2").unwrap();
    let remote = |name: &str, ip: &str, cidr: &str| Node {
        cluster: "c2".into(),
        ..node(name, ip, cidr)
    };
    // Names are per cluster: c2's "b" is not c1's "b".
    h.manager
        .send(RemoteNodes {
            cluster: c2.clone(),
            upserted: vec![
                remote("b", "192.168.60.2", "10.1.2.0/24"),
                remote("d", "192.168.60.4", "10.1.4.0/24"),
                // Claims another cluster than the one it came from: ignored.
                Node {
                    cluster: "c9".into(),
                    ..node("x", "192.168.90.1", "10.9.0.0/24")
                },
            ],
            removed: vec![],
        })
        .await
        .unwrap();
    eventually("the remote nodes' routes", async || {
        h.routes.routes().len() == 3
    })
    .await;
    let mut routes = h.routes.routes();
    routes.sort();
    assert_eq!(
        routes,
        [
            route("10.0.2.0/24", "192.168.50.2"),
            route("10.1.2.0/24", "192.168.60.2"),
            route("10.1.4.0/24", "192.168.60.4"),
        ]
    );
    eventually("remote-node claims", async || {
        let seen = h.ipcache.seen();
        ["192.168.60.2", "192.168.60.4"].iter().all(|addr| {
            seen.contains(&Claim::Upsert {
                ip: ip(addr),
                identity: NumericIdentity::REMOTE_NODE,
                host_ip: Some(ip(addr)),
            })
        })
    })
    .await;
    let listed: Vec<(String, String)> = h
        .manager
        .send(ListNodes)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.cluster, n.name))
        .collect();
    assert_eq!(
        listed,
        [
            ("c1".to_owned(), "a".to_owned()),
            ("c1".to_owned(), "b".to_owned()),
            ("c2".to_owned(), "b".to_owned()),
            ("c2".to_owned(), "d".to_owned()),
        ]
    );
    let dump = h.manager.send(Dump).await.unwrap();
    assert!(
        dump.routes
            .iter()
            .any(|r| r.peer == Some(PeerId::new("c2", "d")) && r.status == RouteStatus::Installed)
    );

    // Draining c2: its routes and claims go, the local peer stays.
    h.manager
        .send(RemoteNodes {
            cluster: c2,
            upserted: vec![],
            removed: vec!["b".into(), "d".into()],
        })
        .await
        .unwrap();
    eventually("the remote routes removed", async || {
        h.routes.routes() == [route("10.0.2.0/24", "192.168.50.2")]
    })
    .await;
    eventually("the remote claims released", async || {
        let seen = h.ipcache.seen();
        seen.contains(&Claim::Delete(ip("192.168.60.2")))
            && seen.contains(&Claim::Delete(ip("192.168.60.4")))
    })
    .await;
    assert!(
        !h.ipcache
            .seen()
            .iter()
            .any(|c| matches!(c, Claim::Upsert { ip: addr, .. } if *addr == ip("192.168.90.1"))),
        "the record claiming another cluster got no claim"
    );
    assert_eq!(h.manager.send(ListNodes).await.unwrap().len(), 2);
}
