//! The identity allocator and its garbage collector against the in-memory backend.

use std::sync::Arc;
use std::time::Duration;

use kvstore::allocator::{
    Allocation, AllocatorError, IdentityAllocator, LocalIdentityAllocator, gc,
};
use kvstore::clock::ManualClock;
use kvstore::keys;
use kvstore::memory::MemoryStore;
use kvstore::{Backend, LeaseId, Txn, TxnOp};
use model::identity::{ClusterId, NumericIdentity};
use model::labels::{Label, Labels};

const CLUSTER: ClusterId = ClusterId::new(3);
const LEASE_TTL: Duration = Duration::from_secs(900);

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| Label::k8s(*k, *v)).collect()
}

fn app(name: &str) -> Labels {
    labels(&[("app", name), ("io.kubernetes.pod.namespace", "default")])
}

struct Cluster {
    store: MemoryStore,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            store: MemoryStore::new(Arc::new(ManualClock::new())),
        }
    }

    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.store.client())
    }

    async fn node(&self, ip: &str, seed: u64) -> (IdentityAllocator, Arc<dyn Backend>, LeaseId) {
        let backend = self.backend();
        let lease = backend.grant_lease(LEASE_TTL).await.expect("lease");
        let alloc =
            IdentityAllocator::new(Arc::clone(&backend), CLUSTER, ip.to_owned(), lease, seed)
                .await
                .expect("allocator starts");
        (alloc, backend, lease)
    }
}

async fn value(backend: &dyn Backend, key: &str) -> Option<String> {
    backend
        .get(key)
        .await
        .expect("get")
        .map(|kv| String::from_utf8(kv.value).expect("utf8"))
}

/// Waits (on real time, briefly) until `check` holds; the watch tasks run concurrently.
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

#[tokio::test]
async fn same_labels_twice_on_one_node_share_one_reference_counted_identity() {
    let cluster = Cluster::new();
    let (node, backend, _) = cluster.node("10.0.0.1", 1).await;
    let web = app("web");

    let first = node.allocate(&web).await.expect("allocates");
    assert!(first.is_new);
    assert!(CLUSTER.contains(first.id), "{} outside cluster 3", first.id);
    let second = node.allocate(&web).await.expect("allocates");
    assert_eq!(
        second,
        Allocation {
            id: first.id,
            is_new: false
        }
    );

    let label_string = web.to_kvstore_string();
    let master = keys::identity_master_key(first.id);
    let slave = keys::identity_slave_key(&label_string, "10.0.0.1");
    assert_eq!(value(&*backend, &master).await, Some(label_string.clone()));
    assert_eq!(value(&*backend, &slave).await, Some(first.id.to_string()));
    assert_eq!(node.lookup(first.id), Some(web.clone()));
    assert_eq!(node.lookup_labels(&web), Some(first.id));

    assert!(!node.release(&web).await.expect("releases"));
    assert_eq!(value(&*backend, &slave).await, Some(first.id.to_string()));
    assert!(node.release(&web).await.expect("releases"));
    assert_eq!(value(&*backend, &slave).await, None);
    // The master stays until garbage collection.
    assert_eq!(value(&*backend, &master).await, Some(label_string));
    assert!(matches!(
        node.release(&web).await,
        Err(AllocatorError::NotAllocated { .. })
    ));
    // No lock keys are left behind.
    let locks = backend
        .list_prefix(keys::IDENTITY_LOCKS_PREFIX)
        .await
        .expect("list");
    assert!(locks.kvs.is_empty(), "{:?}", locks.kvs);
}

#[tokio::test]
async fn two_nodes_get_the_same_identity_and_different_labels_different_ones() {
    let cluster = Cluster::new();
    let (a, backend, _) = cluster.node("10.0.0.1", 1).await;
    let (b, _, _) = cluster.node("10.0.0.2", 2).await;

    let web_a = a.allocate(&app("web")).await.expect("allocates");
    let web_b = b.allocate(&app("web")).await.expect("allocates");
    assert_eq!(web_a.id, web_b.id);
    assert!(web_a.is_new);
    assert!(!web_b.is_new);
    let db = b.allocate(&app("db")).await.expect("allocates");
    assert!(db.is_new);
    assert_ne!(db.id, web_a.id);

    let prefix = keys::identity_slave_prefix(&app("web").to_kvstore_string());
    let slaves = backend
        .list_prefix(&format!("{prefix}/"))
        .await
        .expect("list");
    let nodes: Vec<&str> = slaves
        .kvs
        .iter()
        .map(|kv| kv.key.rsplit('/').next().expect("suffix"))
        .collect();
    assert_eq!(nodes, vec!["10.0.0.1", "10.0.0.2"]);

    // Node A learns about B's allocation through its master watch.
    eventually(async || a.lookup(db.id) == Some(app("db"))).await;
    assert_eq!(a.lookup_labels(&app("db")), Some(db.id));
}

#[tokio::test]
async fn label_sets_that_prefix_each_other_stay_apart() {
    let cluster = Cluster::new();
    let (node, backend, _) = cluster.node("10.0.0.1", 1).await;
    let short = labels(&[("a", "b")]);
    let long = labels(&[("a", "b"), ("c", "d")]);
    assert!(
        long.to_kvstore_string()
            .starts_with(&short.to_kvstore_string())
    );

    // Another node references the long set, whose master is gone: only its slave key is left.
    let foreign_id = NumericIdentity::new((3 << 16) + 4242);
    backend
        .put(
            &keys::identity_slave_key(&long.to_kvstore_string(), "10.0.0.9"),
            foreign_id.to_string().into_bytes(),
            None,
        )
        .await
        .expect("put");

    let short_id = node.allocate(&short).await.expect("allocates");
    assert_ne!(short_id.id, foreign_id);
    assert!(short_id.is_new);

    // The long set re-uses the id its slave key names and re-creates the master.
    let long_id = node.allocate(&long).await.expect("allocates");
    assert_eq!(
        long_id,
        Allocation {
            id: foreign_id,
            is_new: false
        }
    );
    assert_eq!(
        value(&*backend, &keys::identity_master_key(foreign_id)).await,
        Some(long.to_kvstore_string())
    );
}

#[tokio::test]
async fn gc_removes_only_unreferenced_masters() {
    let cluster = Cluster::new();
    let (a, backend, _) = cluster.node("10.0.0.1", 1).await;
    let (b, _, _) = cluster.node("10.0.0.2", 2).await;

    let web = a.allocate(&app("web")).await.expect("allocates").id;
    b.allocate(&app("web")).await.expect("allocates");
    let db = a.allocate(&app("db")).await.expect("allocates").id;
    let cache = b.allocate(&app("cache")).await.expect("allocates").id;

    // A master of another cluster and one with an unparsable id are not touched.
    let other_cluster = NumericIdentity::new((7 << 16) + 1);
    backend
        .put(
            &keys::identity_master_key(other_cluster),
            b"k8s:app=elsewhere;".to_vec(),
            None,
        )
        .await
        .expect("put");
    backend
        .put(
            &format!("{}/not-a-number", keys::IDENTITY_ID_PREFIX),
            b"k8s:app=x;".to_vec(),
            None,
        )
        .await
        .expect("put");

    let report = gc(&*backend, CLUSTER, 0).await.expect("gc");
    assert_eq!(report.scanned, 5);
    assert_eq!(report.in_use, 3);
    assert_eq!(report.deleted, 0);
    assert_eq!(report.out_of_range, 1);
    assert_eq!(report.corrupt.len(), 1);
    assert!(report.corrupt[0].key.ends_with("/not-a-number"));

    assert!(a.release(&app("web")).await.expect("releases"));
    assert!(a.release(&app("db")).await.expect("releases"));
    let report = gc(&*backend, CLUSTER, 1000).await.expect("gc");
    assert_eq!(
        (report.in_use, report.deleted, report.raced),
        (2, 1, 0),
        "{report:?}"
    );
    assert_eq!(value(&*backend, &keys::identity_master_key(db)).await, None);
    assert!(
        value(&*backend, &keys::identity_master_key(web))
            .await
            .is_some()
    );
    assert!(
        value(&*backend, &keys::identity_master_key(cache))
            .await
            .is_some()
    );
    assert!(
        value(&*backend, &keys::identity_master_key(other_cluster))
            .await
            .is_some()
    );
    let locks = backend
        .list_prefix(keys::IDENTITY_LOCKS_PREFIX)
        .await
        .expect("list");
    assert!(locks.kvs.is_empty());

    // The collected id is free again; a new allocation of the labels works.
    eventually(async || a.lookup(db).is_none()).await;
    let again = a.allocate(&app("db")).await.expect("allocates");
    assert!(again.is_new);
}

#[tokio::test]
async fn a_master_that_vanishes_while_in_use_is_recreated() {
    let cluster = Cluster::new();
    let (node, backend, _) = cluster.node("10.0.0.1", 1).await;
    let web = node.allocate(&app("web")).await.expect("allocates").id;
    let master = keys::identity_master_key(web);

    assert!(backend.delete(&master).await.expect("delete"));
    eventually(async || value(&*backend, &master).await.is_some()).await;
    assert_eq!(
        value(&*backend, &master).await,
        Some(app("web").to_kvstore_string())
    );

    // A released identity is not re-created.
    assert!(node.release(&app("web")).await.expect("releases"));
    assert!(backend.delete(&master).await.expect("delete"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(value(&*backend, &master).await, None);
}

#[tokio::test]
async fn resync_restores_keys_after_the_lease_was_lost() {
    let cluster = Cluster::new();
    let (node, backend, lease) = cluster.node("10.0.0.1", 1).await;
    let web = node.allocate(&app("web")).await.expect("allocates").id;
    let slave = keys::identity_slave_key(&app("web").to_kvstore_string(), "10.0.0.1");

    // The lease expires: the slave key goes, and garbage collection takes the master.
    backend.revoke_lease(lease).await.expect("revoke");
    assert_eq!(value(&*backend, &slave).await, None);
    let report = gc(&*backend, CLUSTER, 0).await.expect("gc");
    assert_eq!(report.deleted, 1);

    let new_lease = backend.grant_lease(LEASE_TTL).await.expect("lease");
    // Let the watch's own re-creation settle first; resync must cope either way.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(node.resync(new_lease).await.expect("resync"), 1);
    assert_eq!(value(&*backend, &slave).await, Some(web.to_string()));
    assert_eq!(
        backend
            .get(&slave)
            .await
            .expect("get")
            .and_then(|kv| kv.lease),
        Some(new_lease)
    );
    assert_eq!(
        value(&*backend, &keys::identity_master_key(web)).await,
        Some(app("web").to_kvstore_string())
    );
    // New references use the new lease too.
    node.allocate(&app("db")).await.expect("allocates");
    let db_slave = keys::identity_slave_key(&app("db").to_kvstore_string(), "10.0.0.1");
    assert_eq!(
        backend
            .get(&db_slave)
            .await
            .expect("get")
            .and_then(|kv| kv.lease),
        Some(new_lease)
    );
}

#[tokio::test]
async fn resync_reports_a_master_taken_by_other_labels() {
    let cluster = Cluster::new();
    let (node, backend, lease) = cluster.node("10.0.0.1", 1).await;
    let web = node.allocate(&app("web")).await.expect("allocates").id;
    let master = keys::identity_master_key(web);
    // Someone overwrote the master with other labels (a corrupt store).
    backend
        .put(&master, b"k8s:app=intruder;".to_vec(), None)
        .await
        .expect("put");
    let err = node.resync(lease).await.expect_err("conflict is reported");
    assert!(
        matches!(&err, AllocatorError::CorruptMasterKey { key, .. } if *key == master),
        "{err}"
    );
}

#[tokio::test]
async fn a_full_range_is_reported() {
    let cluster = Cluster::new();
    let backend = cluster.backend();
    let range = CLUSTER.identity_range();
    let free = [range.start().get() + 17, range.end().get()];
    // Fill the cluster's range except two ids, in one transaction.
    let success = (range.start().get()..=range.end().get())
        .filter(|n| !free.contains(n))
        .map(|n| TxnOp::Put {
            key: keys::identity_master_key(NumericIdentity::new(n)),
            value: format!("k8s:filler={n};").into_bytes(),
            lease: None,
        })
        .collect();
    backend
        .txn(Txn {
            compares: vec![],
            success,
            failure: vec![],
        })
        .await
        .expect("fill");

    let (node, _, _) = cluster.node("10.0.0.1", 5).await;
    let mut got: Vec<u32> = Vec::new();
    for name in ["one", "two"] {
        got.push(node.allocate(&app(name)).await.expect("allocates").id.get());
    }
    got.sort_unstable();
    assert_eq!(got, free);
    let err = node
        .allocate(&app("three"))
        .await
        .expect_err("range is full");
    assert!(
        matches!(
            err,
            AllocatorError::RangeExhausted { cluster_id, first, last }
                if cluster_id == CLUSTER && first == *range.start() && last == *range.end()
        ),
        "{err}"
    );
    // Existing identities are still handed out.
    let filler = labels(&[("filler", &(range.start().get() + 1).to_string())]);
    let reused = node.allocate(&filler).await.expect("reuses");
    assert_eq!(reused.id.get(), range.start().get() + 1);
}

#[tokio::test]
async fn concurrent_allocators_agree() {
    let cluster = Cluster::new();
    let mut nodes = Vec::new();
    for i in 0..4u8 {
        nodes.push(
            cluster
                .node(&format!("10.0.0.{}", i + 1), u64::from(i))
                .await
                .0,
        );
    }
    let nodes: Vec<Arc<IdentityAllocator>> = nodes.into_iter().map(Arc::new).collect();
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let node = Arc::clone(node);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for j in 0..12 {
                let name = format!("svc{}", (i * 5 + j) % 16);
                let id = node.allocate(&app(&name)).await.expect("allocates").id;
                out.push((name, id));
            }
            out
        }));
    }
    let mut by_name = std::collections::HashMap::new();
    for task in tasks {
        for (name, id) in task.await.expect("task") {
            assert_eq!(*by_name.entry(name).or_insert(id), id);
        }
    }
    let mut ids: Vec<_> = by_name.values().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), by_name.len());
}

#[test]
fn local_identities_never_need_a_kvstore() {
    let alloc = LocalIdentityAllocator::new();
    let world = [Label::new("cidr", "0.0.0.0/0", "")]
        .into_iter()
        .collect::<Labels>();
    let a = alloc.allocate(&world).expect("allocates");
    assert!(a.id.is_local_scope());
    assert_eq!(a.id, NumericIdentity::MIN_LOCAL_SCOPE);
}
