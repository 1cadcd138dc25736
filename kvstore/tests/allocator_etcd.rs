//! Concurrency test of the identity allocator against a real etcd: eight nodes, each with its
//! own client and lease, allocate overlapping label sets at the same time. Afterwards every key
//! under `cilium/state/identities/v1/` is read back with `etcdctl` and compared byte for byte
//! with the layout computed here from the allocation results; then some nodes release, and
//! garbage collection must remove exactly the masters nobody references.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kvstore::Backend;
use kvstore::allocator::{IdentityAllocator, gc};
use kvstore::testing::etcd::EtcdServer;
use model::identity::{ClusterId, NumericIdentity};
use model::labels::{Label, Labels};

const CLUSTER: ClusterId = ClusterId::new(3);
const NODES: usize = 8;
const PER_NODE: usize = 25;
const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// 40 label sets; set `2n + 1` extends set `2n` by one label, so their label strings are
/// prefixes of each other (`k8s:app=svcN;` and `k8s:app=svcN;k8s:zone=z;`).
fn label_sets() -> Vec<Labels> {
    (0..20)
        .flat_map(|n| {
            let app = Label::k8s("app", format!("svc{n}"));
            let base: Labels = [app.clone()].into_iter().collect();
            let zoned: Labels = [app, Label::k8s("zone", "z")].into_iter().collect();
            [base, zoned]
        })
        .collect()
}

fn node_ip(node: usize) -> String {
    format!("10.0.0.{}", node + 1)
}

/// Parses `etcdctl get --prefix` output: key and value on alternating lines.
fn parse_etcdctl(output: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len() % 2, 0, "odd etcdctl output:\n{output}");
    lines
        .chunks(2)
        .map(|pair| (pair[0].to_owned(), pair[1].to_owned()))
        .collect()
}

/// The keys the allocator must have written: one master per label set in use, one slave key
/// per node and label set it holds.
fn expected_layout(
    ids: &BTreeMap<String, NumericIdentity>,
    held: &[BTreeSet<String>],
) -> Vec<(String, String)> {
    let mut keys = BTreeMap::new();
    for (labels, id) in ids {
        keys.insert(
            format!("cilium/state/identities/v1/id/{id}"),
            labels.clone(),
        );
    }
    for (node, sets) in held.iter().enumerate() {
        for labels in sets {
            keys.insert(
                format!(
                    "cilium/state/identities/v1/value/{labels}/{}",
                    node_ip(node)
                ),
                ids[labels].to_string(),
            );
        }
    }
    keys.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_nodes_allocate_concurrently() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kvstore=debug")
        .with_test_writer()
        .try_init();
    let server = EtcdServer::start().await.expect("etcd starts");
    let sets = label_sets();

    let mut nodes = Vec::new();
    for node in 0..NODES {
        let backend: Arc<dyn Backend> = Arc::new(server.client().await);
        let lease = backend.grant_lease(LEASE_TTL).await.expect("lease");
        let alloc = IdentityAllocator::new(backend, CLUSTER, node_ip(node), lease, node as u64)
            .await
            .expect("allocator starts");
        nodes.push(Arc::new(alloc));
    }

    // Each node takes a random overlapping subset in shuffled order; all nodes run at once,
    // and each node runs its allocations concurrently too.
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let plans: Vec<Vec<usize>> = (0..NODES)
        .map(|_| {
            let mut order: Vec<usize> = (0..sets.len()).collect();
            rng.shuffle(&mut order);
            order.truncate(PER_NODE);
            order
        })
        .collect();
    let runs = nodes.iter().zip(&plans).map(|(node, plan)| {
        let node = Arc::clone(node);
        let sets = &sets;
        async move {
            let allocations = plan.iter().map(|&i| {
                let node = Arc::clone(&node);
                async move { (i, node.allocate(&sets[i]).await.expect("allocates").id) }
            });
            join_all(allocations).await
        }
    });
    let results: Vec<Vec<(usize, NumericIdentity)>> =
        match tokio::time::timeout(Duration::from_secs(120), join_all(runs)).await {
            Ok(results) => results,
            Err(_) => {
                // Say what the cluster looked like when it stalled: held locks and leases.
                let locks = server
                    .etcdctl(&[
                        "get",
                        "--prefix",
                        "--keys-only",
                        "cilium/state/identities/v1/locks/",
                    ])
                    .await
                    .unwrap_or_else(|e| e.to_string());
                let leases = server
                    .etcdctl(&["lease", "list"])
                    .await
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "allocations did not finish in 120 s; lock keys:\n{locks}\nleases:\n{leases}"
                );
            }
        };

    // Equal labels: equal ids on every node. Different labels: different ids. All in range.
    let mut ids: BTreeMap<String, NumericIdentity> = BTreeMap::new();
    let mut held: Vec<BTreeSet<String>> = vec![BTreeSet::new(); NODES];
    for (node, allocations) in results.iter().enumerate() {
        for &(i, id) in allocations {
            let key = sets[i].to_kvstore_string();
            assert!(CLUSTER.contains(id), "{id} is outside cluster 3's range");
            let first = *ids.entry(key.clone()).or_insert(id);
            assert_eq!(first, id, "{key} got two ids");
            held[node].insert(key);
        }
    }
    let distinct: HashMap<NumericIdentity, &String> =
        ids.iter().map(|(labels, id)| (*id, labels)).collect();
    assert_eq!(distinct.len(), ids.len(), "two label sets share an id");

    let dump = server
        .etcdctl(&["get", "--prefix", "cilium/state/identities/v1/"])
        .await
        .expect("etcdctl");
    assert_eq!(parse_etcdctl(&dump), expected_layout(&ids, &held));

    // Nodes 0-3 release everything; masters held only by them become garbage.
    for (node, alloc) in nodes.iter().enumerate().take(4) {
        for &i in &plans[node] {
            assert!(alloc.release(&sets[i]).await.expect("releases"));
        }
        held[node].clear();
    }
    let still_used: BTreeSet<&String> = held.iter().flatten().collect();
    let unreferenced: Vec<String> = ids
        .keys()
        .filter(|labels| !still_used.contains(labels))
        .cloned()
        .collect();

    let operator = server.client().await;
    let report = gc(&operator, CLUSTER, 0).await.expect("gc");
    assert_eq!(report.deleted, unreferenced.len(), "{report:?}");
    assert_eq!(report.in_use, ids.len() - unreferenced.len());
    assert!(report.corrupt.is_empty());
    for labels in &unreferenced {
        ids.remove(labels);
    }

    let dump = server
        .etcdctl(&["get", "--prefix", "cilium/state/identities/v1/"])
        .await
        .expect("etcdctl");
    assert_eq!(parse_etcdctl(&dump), expected_layout(&ids, &held));

    drop(nodes);
    server.stop().await.expect("etcd stops");
}
