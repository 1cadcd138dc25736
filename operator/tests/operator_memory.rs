//! The operator against the in-memory kvstore, on paused tokio time: IPAM, node GC, identity
//! GC, heartbeat and leader election, observed through the keys it writes.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use kvstore::clock::TokioClock;
use kvstore::keys::{
    self, HEARTBEAT_KEY, IpCacheEntry, IpamAllocation, Node, NodeAddress, NodeCidr, StoreValue,
    ipam_key, ipcache_key, node_key,
};
use kvstore::memory::{MemoryBackend, MemoryConfig, MemoryStore};
use kvstore::{
    Backend, BackendStatus, KeyValue, LeaseId, ListResult, LockKey, Revision, Txn, TxnResponse,
    WatchFrom, WatchStream,
};
use model::identity::{ClusterId, NumericIdentity};
use operator::{LEADER_LOCK_NAME, Operator, OperatorConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const CLUSTER: &str = "default";
const NODES_GC: Duration = Duration::from_secs(20);
const LOCK_SESSION_TTL: Duration = Duration::from_secs(3);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("operator=debug,kvstore=info")
        .try_init();
}

fn store() -> MemoryStore {
    let store = MemoryStore::with_config(
        Arc::new(TokioClock::new()),
        MemoryConfig {
            lock_session_ttl: LOCK_SESSION_TTL,
            ..MemoryConfig::default()
        },
    );
    // Lease expiry is lazy in the memory store; the reaper makes it happen on time even
    // while nobody writes.
    store.spawn_reaper(Duration::from_millis(100));
    store
}

fn config() -> OperatorConfig {
    OperatorConfig {
        cluster_pool_ipv4_cidr: "10.20.0.0/16".parse().unwrap(),
        cluster_pool_ipv4_mask_size: 24,
        nodes_gc_interval: NODES_GC,
        identity_gc_interval: Duration::from_secs(3600),
        heartbeat_interval: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(60),
        retry_interval: Duration::from_millis(200),
        ..OperatorConfig::default()
    }
}

/// A client that counts the writes made through it (puts, deletes, transactions; lock
/// acquisition is not a write of the operator's own).
#[derive(Debug)]
struct CountingBackend {
    inner: MemoryBackend,
    writes: Arc<AtomicUsize>,
}

impl CountingBackend {
    fn count(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Backend for CountingBackend {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, kvstore::Error> {
        self.inner.get(key).await
    }
    async fn list_prefix(&self, prefix: &str) -> Result<ListResult, kvstore::Error> {
        self.inner.list_prefix(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, kvstore::Error> {
        self.count();
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool, kvstore::Error> {
        self.count();
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, kvstore::Error> {
        self.count();
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, kvstore::Error> {
        self.count();
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, kvstore::Error> {
        self.inner.watch(prefix, from).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, kvstore::Error> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, kvstore::Error> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), kvstore::Error> {
        self.inner.revoke_lease(lease).await
    }
    async fn lock(&self, name: &str) -> Result<LockKey, kvstore::Error> {
        self.inner.lock(name).await
    }
    async fn unlock(&self, lock: LockKey) -> Result<(), kvstore::Error> {
        self.inner.unlock(lock).await
    }
    async fn status(&self) -> Result<BackendStatus, kvstore::Error> {
        self.inner.status().await
    }
}

struct Running {
    stop: watch::Sender<bool>,
    leader: watch::Receiver<bool>,
    task: JoinHandle<Result<(), operator::OperatorError>>,
}

impl Running {
    fn start(store: &MemoryStore, config: OperatorConfig) -> Running {
        Self::start_counting(store, config).0
    }

    /// Starts an operator whose writes are counted.
    fn start_counting(store: &MemoryStore, config: OperatorConfig) -> (Running, Arc<AtomicUsize>) {
        let writes = Arc::new(AtomicUsize::new(0));
        let backend: Arc<dyn Backend> = Arc::new(CountingBackend {
            inner: store.client(),
            writes: Arc::clone(&writes),
        });
        let operator = Operator::new(config, backend).expect("valid config");
        let leader = operator.leader_status();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(operator.run(shutdown));
        (Running { stop, leader, task }, writes)
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    async fn wait_leader(&mut self) {
        tokio::time::timeout(Duration::from_secs(60), self.leader.wait_for(|l| *l))
            .await
            .expect("became leader in time")
            .expect("operator alive");
    }

    async fn shutdown(self) {
        self.stop.send_replace(true);
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("operator stops in time")
            .expect("operator task did not panic");
        assert!(result.is_ok(), "operator failed: {result:?}");
    }

    /// A crash: the task and its kvstore client vanish without releasing anything.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Polls `check` on virtual time until it yields a value.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node_record(name: &str, ip: &str) -> Vec<u8> {
    Node {
        name: name.to_owned(),
        cluster: CLUSTER.to_owned(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".to_owned(),
            ip: Some(ip.parse().unwrap()),
        }],
        source: "local".to_owned(),
        ..Node::default()
    }
    .encode()
    .unwrap()
}

async fn add_node(backend: &dyn Backend, name: &str, ip: &str) {
    backend
        .put(&node_key(CLUSTER, name), node_record(name, ip), None)
        .await
        .unwrap();
}

async fn allocation(backend: &dyn Backend, node: &str) -> Option<IpamAllocation> {
    let kv = backend.get(&ipam_key(CLUSTER, node)).await.unwrap()?;
    Some(IpamAllocation::decode(&kv.value).expect("operator writes valid allocations"))
}

async fn wait_allocation(backend: &dyn Backend, node: &str) -> Ipv4Net {
    let record = eventually(
        &format!("allocation of {node}"),
        Duration::from_secs(30),
        || allocation(backend, node),
    )
    .await;
    assert_eq!(record.cluster, CLUSTER);
    assert_eq!(record.node, node);
    assert_eq!(record.pod_cidrs.len(), 1);
    record.pod_cidrs[0]
}

async fn exists(backend: &dyn Backend, key: &str) -> bool {
    backend.get(key).await.unwrap().is_some()
}

async fn put_ipcache(
    backend: &dyn Backend,
    ip: &str,
    host: &str,
    lease: Option<LeaseId>,
) -> String {
    let entry = IpCacheEntry::host(
        ip.parse().unwrap(),
        NumericIdentity::new(300),
        Some(host.parse::<IpAddr>().unwrap()),
    );
    let key = ipcache_key(&entry.prefix_string());
    backend
        .put(&key, entry.encode().unwrap(), lease)
        .await
        .unwrap();
    key
}

#[tokio::test(start_paused = true)]
async fn every_node_gets_a_distinct_cidr_that_survives_an_operator_restart() {
    init_logs();
    let store = store();
    let admin = store.client();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        add_node(&admin, name, &format!("192.168.0.{}", i + 1)).await;
    }
    // A node of another cluster is not ours.
    admin
        .put(
            &node_key("other", "x1"),
            node_record("x1", "192.168.9.1"),
            None,
        )
        .await
        .unwrap();
    // An allocation outside the pool, written by hand for a live node: left alone.
    let foreign = IpamAllocation {
        cluster: CLUSTER.to_owned(),
        node: "manual".to_owned(),
        pod_cidrs: vec!["172.16.0.0/24".parse().unwrap()],
    };
    admin
        .put(
            &ipam_key(CLUSTER, "manual"),
            foreign.encode().unwrap(),
            None,
        )
        .await
        .unwrap();
    add_node(&admin, "manual", "192.168.0.50").await;

    let mut first = Running::start(&store, config());
    first.wait_leader().await;
    let mut cidrs = BTreeSet::new();
    for name in ["n1", "n2", "n3"] {
        let cidr = wait_allocation(&admin, name).await;
        assert!("10.20.0.0/16".parse::<Ipv4Net>().unwrap().contains(&cidr));
        assert_eq!(cidr.prefix_len(), 24);
        assert!(cidrs.insert(cidr), "{cidr} handed out twice");
    }
    let before: Vec<Ipv4Net> = {
        let mut v = Vec::new();
        for name in ["n1", "n2", "n3"] {
            v.push(allocation(&admin, name).await.unwrap().pod_cidrs[0]);
        }
        v
    };
    // Allocations are not leased: they outlive agents and operators.
    let kv = admin.get(&ipam_key(CLUSTER, "n1")).await.unwrap().unwrap();
    assert_eq!(kv.lease, None);
    assert!(!exists(&admin, &ipam_key("other", "x1")).await);
    first.shutdown().await;

    let mut second = Running::start(&store, config());
    second.wait_leader().await;
    add_node(&admin, "n4", "192.168.0.4").await;
    let n4 = wait_allocation(&admin, "n4").await;
    assert!(!cidrs.contains(&n4), "restarted operator re-used {n4}");
    for (name, cidr) in ["n1", "n2", "n3"].iter().zip(&before) {
        assert_eq!(allocation(&admin, name).await.unwrap().pod_cidrs[0], *cidr);
    }
    assert_eq!(allocation(&admin, "manual").await, Some(foreign));
    second.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn malformed_node_record_is_skipped_and_others_get_cidrs() {
    init_logs();
    let store = store();
    let admin = store.client();
    admin
        .put(&node_key(CLUSTER, "broken"), b"{not json".to_vec(), None)
        .await
        .unwrap();
    add_node(&admin, "good1", "192.168.0.1").await;
    // A garbled allocation of a live node is reported and left alone, never overwritten.
    admin
        .put(
            &ipam_key(CLUSTER, "garbled"),
            b"\xff garbage".to_vec(),
            None,
        )
        .await
        .unwrap();
    add_node(&admin, "garbled", "192.168.0.9").await;
    let running = Running::start(&store, config());
    wait_allocation(&admin, "good1").await;
    add_node(&admin, "good2", "192.168.0.2").await;
    wait_allocation(&admin, "good2").await;
    assert!(!exists(&admin, &ipam_key(CLUSTER, "broken")).await);
    let garbled = admin
        .get(&ipam_key(CLUSTER, "garbled"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(garbled.value, b"\xff garbage");
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_vanished_node_loses_its_cidr_and_unleased_ipcache_entries_after_the_grace_period() {
    init_logs();
    let store = store();
    let admin = store.client();
    let lease = admin.grant_lease(Duration::from_secs(3600)).await.unwrap();
    add_node(&admin, "a", "192.168.0.1").await;
    add_node(&admin, "b", "192.168.0.2").await;
    let a_unleased = put_ipcache(&admin, "10.20.0.10", "192.168.0.1", None).await;
    let a_leased = put_ipcache(&admin, "10.20.0.11", "192.168.0.1", Some(lease)).await;
    let b_unleased = put_ipcache(&admin, "10.20.1.10", "192.168.0.2", None).await;

    let running = Running::start(&store, config());
    let a_cidr = wait_allocation(&admin, "a").await;
    wait_allocation(&admin, "b").await;

    admin.delete(&node_key(CLUSTER, "a")).await.unwrap();
    let deleted_at = Instant::now();
    // Within the grace period nothing is touched.
    tokio::time::sleep(NODES_GC / 2).await;
    assert!(exists(&admin, &ipam_key(CLUSTER, "a")).await);
    assert!(exists(&admin, &a_unleased).await);

    eventually("a's allocation released", NODES_GC * 2, || async {
        (!exists(&admin, &ipam_key(CLUSTER, "a")).await).then_some(())
    })
    .await;
    assert!(
        deleted_at.elapsed() >= NODES_GC,
        "collected before the grace period"
    );
    eventually(
        "a's unleased ipcache entry deleted",
        Duration::from_secs(5),
        || async { (!exists(&admin, &a_unleased).await).then_some(()) },
    )
    .await;
    // Leased entries go with their lease, not with the GC; b is untouched.
    assert!(exists(&admin, &a_leased).await);
    assert!(exists(&admin, &b_unleased).await);
    assert!(exists(&admin, &ipam_key(CLUSTER, "b")).await);

    // A node that comes back after collection gets a CIDR again.
    add_node(&admin, "a", "192.168.0.1").await;
    // Round-robin allocation: a released CIDR is not the next one handed out.
    let again = wait_allocation(&admin, "a").await;
    assert_ne!(again, a_cidr);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_node_that_returns_within_the_grace_period_keeps_its_cidr() {
    init_logs();
    let store = store();
    let admin = store.client();
    add_node(&admin, "a", "192.168.0.1").await;
    let running = Running::start(&store, config());
    let cidr = wait_allocation(&admin, "a").await;
    admin.delete(&node_key(CLUSTER, "a")).await.unwrap();
    tokio::time::sleep(NODES_GC / 2).await;
    add_node(&admin, "a", "192.168.0.1").await;
    tokio::time::sleep(NODES_GC * 2).await;
    assert_eq!(allocation(&admin, "a").await.unwrap().pod_cidrs, vec![cidr]);

    // An allocation deleted by hand while the node lives is written again, with the same CIDR.
    admin.delete(&ipam_key(CLUSTER, "a")).await.unwrap();
    assert_eq!(wait_allocation(&admin, "a").await, cidr);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn nodes_announcing_a_cidr_get_it_back_when_allocations_were_lost() {
    init_logs();
    let store = store();
    let admin = store.client();
    // Running agents announce the CIDRs they use, but the allocation records are gone.
    for (name, cidr) in [("n1", "10.20.5.0/24"), ("n2", "10.20.0.0/24")] {
        let mut node = Node::decode(&node_record(name, "192.168.0.1")).unwrap();
        node.ipv4_alloc_cidr = Some(NodeCidr::new(cidr.parse().unwrap()));
        admin
            .put(&node_key(CLUSTER, name), node.encode().unwrap(), None)
            .await
            .unwrap();
    }
    add_node(&admin, "fresh", "192.168.0.3").await;
    let running = Running::start(&store, config());
    assert_eq!(
        wait_allocation(&admin, "n1").await.to_string(),
        "10.20.5.0/24"
    );
    assert_eq!(
        wait_allocation(&admin, "n2").await.to_string(),
        "10.20.0.0/24"
    );
    let fresh = wait_allocation(&admin, "fresh").await;
    assert!(!["10.20.5.0/24", "10.20.0.0/24"].contains(&fresh.to_string().as_str()));
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn exhausted_pool_leaves_a_node_pending_until_a_cidr_is_released() {
    init_logs();
    let store = store();
    let admin = store.client();
    let config = OperatorConfig {
        cluster_pool_ipv4_cidr: "10.30.0.0/24".parse().unwrap(),
        cluster_pool_ipv4_mask_size: 25,
        ..config()
    };
    add_node(&admin, "a", "192.168.0.1").await;
    add_node(&admin, "b", "192.168.0.2").await;
    let running = Running::start(&store, config);
    wait_allocation(&admin, "a").await;
    let b_cidr = wait_allocation(&admin, "b").await;
    add_node(&admin, "c", "192.168.0.3").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        allocation(&admin, "c").await.is_none(),
        "pool of two gave a third CIDR"
    );

    admin.delete(&node_key(CLUSTER, "b")).await.unwrap();
    let c_cidr = wait_allocation(&admin, "c").await;
    assert_eq!(c_cidr, b_cidr);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn identity_gc_removes_master_keys_without_slave_keys() {
    init_logs();
    let store = store();
    let admin = store.client();
    let unused = keys::identity_master_key(NumericIdentity::new(300));
    let used = keys::identity_master_key(NumericIdentity::new(301));
    admin
        .put(&unused, b"k8s:app=gone;".to_vec(), None)
        .await
        .unwrap();
    admin
        .put(&used, b"k8s:app=here;".to_vec(), None)
        .await
        .unwrap();
    admin
        .put(
            &keys::identity_slave_key("k8s:app=here;", "192.168.0.1"),
            b"301".to_vec(),
            None,
        )
        .await
        .unwrap();
    let config = OperatorConfig {
        cluster_id: ClusterId::UNSET,
        identity_gc_interval: Duration::from_secs(10),
        ..config()
    };
    let started = Instant::now();
    let running = Running::start(&store, config);
    eventually(
        "unused master key collected",
        Duration::from_secs(30),
        || async { (!exists(&admin, &unused).await).then_some(()) },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert!(exists(&admin, &used).await);
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeat_is_written_on_the_operators_lease_and_refreshed() {
    init_logs();
    let store = store();
    let admin = store.client();
    let running = Running::start(&store, config());
    let first = eventually("heartbeat written", Duration::from_secs(10), || async {
        admin.get(HEARTBEAT_KEY).await.unwrap()
    })
    .await;
    assert!(
        first.lease.is_some(),
        "heartbeat must hang on the operator's lease"
    );
    keys::decode_timestamp(&first.value).expect("RFC 3339 timestamp");
    eventually("heartbeat rewritten", Duration::from_secs(10), || async {
        let kv = admin.get(HEARTBEAT_KEY).await.unwrap()?;
        (kv.mod_revision > first.mod_revision).then_some(())
    })
    .await;
    running.shutdown().await;
    // The last heartbeat stays readable until the stopped operator's lease runs out.
    let stopped_at = Instant::now();
    assert!(exists(&admin, HEARTBEAT_KEY).await);
    eventually(
        "heartbeat expired with the lease",
        Duration::from_secs(120),
        || async { (!exists(&admin, HEARTBEAT_KEY).await).then_some(()) },
    )
    .await;
    assert!(stopped_at.elapsed() >= config().lease_ttl - config().heartbeat_interval);
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_acts_and_a_standby_takes_over_when_it_dies() {
    init_logs();
    let store = store();
    let admin = store.client();
    add_node(&admin, "a", "192.168.0.1").await;
    let mut one = Running::start(&store, config());
    one.wait_leader().await;
    let a = wait_allocation(&admin, "a").await;
    let (mut two, standby_writes) = Running::start_counting(&store, config());
    // The standby queues behind the leader's lock key.
    eventually(
        "standby queued on the lock",
        Duration::from_secs(10),
        || async {
            let waiting = admin
                .list_prefix(&format!("{LEADER_LOCK_NAME}/"))
                .await
                .unwrap()
                .kvs
                .len();
            (waiting == 2).then_some(())
        },
    )
    .await;
    // New nodes, heartbeats and GC happen meanwhile: all of it by the leader.
    add_node(&admin, "c", "192.168.0.3").await;
    wait_allocation(&admin, "c").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(one.is_leader());
    assert!(!two.is_leader(), "two operators lead at once");
    assert_eq!(
        standby_writes.load(Ordering::SeqCst),
        0,
        "the standby wrote to the kvstore"
    );

    // A crash: the leader's lock session expires after its TTL, then the standby leads.
    one.kill().await;
    let killed_at = Instant::now();
    two.wait_leader().await;
    assert!(killed_at.elapsed() >= LOCK_SESSION_TTL / 2);
    add_node(&admin, "b", "192.168.0.2").await;
    let b = wait_allocation(&admin, "b").await;
    assert_ne!(a, b);
    assert_eq!(allocation(&admin, "a").await.unwrap().pod_cidrs, vec![a]);
    assert!(
        standby_writes.load(Ordering::SeqCst) > 0,
        "the new leader wrote nothing"
    );

    // A clean shutdown hands over at once.
    let mut three = Running::start(&store, config());
    eventually("third operator queued", Duration::from_secs(10), || async {
        let n = admin
            .list_prefix(&format!("{LEADER_LOCK_NAME}/"))
            .await
            .unwrap()
            .kvs
            .len();
        (n == 2).then_some(())
    })
    .await;
    let stopped_at = Instant::now();
    two.shutdown().await;
    three.wait_leader().await;
    assert!(stopped_at.elapsed() < LOCK_SESSION_TTL);
    three.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_lock_vanishes_stops_acting_and_campaigns_again() {
    init_logs();
    let store = store();
    let admin = store.client();
    let mut running = Running::start(&store, config());
    running.wait_leader().await;
    let lock_keys = admin
        .list_prefix(&format!("{LEADER_LOCK_NAME}/"))
        .await
        .unwrap()
        .kvs;
    assert_eq!(lock_keys.len(), 1);
    // What a session expiry does to the lock, seen from the leader.
    admin.delete(&lock_keys[0].key).await.unwrap();
    running
        .leader
        .wait_for(|l| !*l)
        .await
        .expect("leadership given up");
    // It campaigns again, wins (nobody else runs) and acts.
    running.wait_leader().await;
    add_node(&admin, "a", "192.168.0.1").await;
    wait_allocation(&admin, "a").await;
    running.shutdown().await;
}
