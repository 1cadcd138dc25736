//! The operator's Prometheus metrics against the in-memory kvstore, on paused tokio time: the
//! rendered text of a leader and of a standby while they do their work.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kvstore::Backend;
use kvstore::clock::TokioClock;
use kvstore::keys::{
    self, IpCacheEntry, Node, NodeAddress, StoreValue, ipam_key, ipcache_key, node_key,
};
use kvstore::memory::{MemoryConfig, MemoryStore};
use model::identity::NumericIdentity;
use operator::{LEADER_LOCK_NAME, Operator, OperatorConfig, OperatorMetrics};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const CLUSTER: &str = "default";
const NODES_GC: Duration = Duration::from_secs(20);
const IDENTITY_GC: Duration = Duration::from_secs(10);

const LEADER: &str = "cilium_operator_is_leader";
const CIDRS_ALLOCATED: &str = r#"cilium_operator_ipam_pod_cidrs{type="allocated"}"#;
const CIDRS_AVAILABLE: &str = r#"cilium_operator_ipam_pod_cidrs{type="available"}"#;
const GC_RUNS_OK: &str =
    r#"cilium_operator_identity_gc_runs{outcome="success",identity_type="kvstore"}"#;
const GC_RUNS_FAILED: &str =
    r#"cilium_operator_identity_gc_runs{outcome="fail",identity_type="kvstore"}"#;
const GC_ALIVE: &str =
    r#"cilium_operator_identity_gc_entries{status="alive",identity_type="kvstore"}"#;
const GC_DELETED: &str =
    r#"cilium_operator_identity_gc_entries{status="deleted",identity_type="kvstore"}"#;
const HEARTBEATS_OK: &str = r#"cilium_operator_kvstore_heartbeat_writes_total{outcome="success"}"#;
const HEARTBEATS_FAILED: &str = r#"cilium_operator_kvstore_heartbeat_writes_total{outcome="fail"}"#;
const GC_POD_CIDRS: &str = r#"cilium_operator_nodes_gc_deletions_total{type="pod_cidr"}"#;
const GC_IPCACHE: &str = r#"cilium_operator_nodes_gc_deletions_total{type="ipcache_entry"}"#;

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
            lock_session_ttl: Duration::from_secs(3),
            ..MemoryConfig::default()
        },
    );
    store.spawn_reaper(Duration::from_millis(100));
    store
}

/// A /16 pool cut into /24s: 256 per-node CIDRs.
fn config() -> OperatorConfig {
    OperatorConfig {
        cluster_pool_ipv4_cidr: "10.20.0.0/16".parse().unwrap(),
        cluster_pool_ipv4_mask_size: 24,
        nodes_gc_interval: NODES_GC,
        identity_gc_interval: IDENTITY_GC,
        heartbeat_interval: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(60),
        retry_interval: Duration::from_millis(200),
        ..OperatorConfig::default()
    }
}

struct Running {
    stop: watch::Sender<bool>,
    leader: watch::Receiver<bool>,
    metrics: OperatorMetrics,
    task: JoinHandle<Result<(), operator::OperatorError>>,
}

impl Running {
    fn start(store: &MemoryStore) -> Running {
        let backend: Arc<dyn Backend> = Arc::new(store.client());
        let operator = Operator::new(config(), backend).expect("valid config");
        let leader = operator.leader_status();
        let metrics = operator.metrics().clone();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(operator.run(shutdown));
        Running {
            stop,
            leader,
            metrics,
            task,
        }
    }

    fn text(&self) -> String {
        self.metrics.render().expect("metrics render")
    }

    /// The value of `series` in a fresh scrape.
    fn value(&self, series: &str) -> Option<f64> {
        value(&self.text(), series)
    }

    async fn wait_leader(&mut self) {
        tokio::time::timeout(Duration::from_secs(60), self.leader.wait_for(|l| *l))
            .await
            .expect("became leader in time")
            .expect("operator alive");
    }

    async fn shutdown(self) -> OperatorMetrics {
        self.stop.send_replace(true);
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("operator stops in time")
            .expect("operator task did not panic");
        assert!(result.is_ok(), "operator failed: {result:?}");
        self.metrics
    }
}

/// The value of the series `series` (name and labels exactly as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("numeric sample value"))
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

/// Waits until `series` of `running` reads `expected`.
async fn wait_value(running: &Running, series: &str, expected: f64, within: Duration) {
    eventually(&format!("{series} == {expected}"), within, || async {
        (running.value(series) == Some(expected)).then_some(())
    })
    .await;
}

async fn add_node(backend: &dyn Backend, name: &str, ip: &str) {
    let record = Node {
        name: name.to_owned(),
        cluster: CLUSTER.to_owned(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".to_owned(),
            ip: Some(ip.parse().unwrap()),
        }],
        source: "local".to_owned(),
        ..Node::default()
    };
    backend
        .put(&node_key(CLUSTER, name), record.encode().unwrap(), None)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn leader_reports_allocations_identity_gc_and_heartbeats() {
    init_logs();
    let store = store();
    let admin = store.client();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        add_node(&admin, name, &format!("192.168.0.{}", i + 1)).await;
    }
    // One identity no node uses (collected) and one in use (alive).
    let unused = keys::identity_master_key(NumericIdentity::new(300));
    admin
        .put(&unused, b"k8s:app=gone;".to_vec(), None)
        .await
        .unwrap();
    admin
        .put(
            &keys::identity_master_key(NumericIdentity::new(301)),
            b"k8s:app=here;".to_vec(),
            None,
        )
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

    let mut running = Running::start(&store);
    running.wait_leader().await;
    assert_eq!(running.value(LEADER), Some(1.0));
    wait_value(&running, CIDRS_ALLOCATED, 3.0, Duration::from_secs(30)).await;
    assert_eq!(running.value(CIDRS_AVAILABLE), Some(253.0));
    for node in ["n1", "n2", "n3"] {
        assert!(
            admin.get(&ipam_key(CLUSTER, node)).await.unwrap().is_some(),
            "metrics count an allocation of {node} that is not in the store"
        );
    }
    // No identity GC run before its first interval.
    assert_eq!(running.value(GC_RUNS_OK), Some(0.0));
    assert_eq!(running.value(GC_ALIVE), None);

    wait_value(&running, GC_RUNS_OK, 1.0, IDENTITY_GC * 3).await;
    let text = running.text();
    assert_eq!(value(&text, GC_DELETED), Some(1.0), "{text}");
    assert_eq!(value(&text, GC_ALIVE), Some(1.0), "{text}");
    assert_eq!(value(&text, GC_RUNS_FAILED), Some(0.0), "{text}");
    assert!(admin.get(&unused).await.unwrap().is_none());
    // A heartbeat every 2s since leadership started, all of them written.
    let heartbeats = value(&text, HEARTBEATS_OK).expect("heartbeat series");
    assert!(heartbeats >= 5.0, "only {heartbeats} heartbeats in\n{text}");
    assert_eq!(value(&text, HEARTBEATS_FAILED), Some(0.0), "{text}");

    // A later run finds nothing more to delete and says so.
    wait_value(&running, GC_RUNS_OK, 2.0, IDENTITY_GC * 3).await;
    assert_eq!(running.value(GC_DELETED), Some(0.0));
    assert_eq!(running.value(GC_ALIVE), Some(1.0));

    let after = running.shutdown().await.render().unwrap();
    assert_eq!(value(&after, LEADER), Some(0.0), "{after}");
    assert!(
        value(&after, CIDRS_ALLOCATED).is_none(),
        "a stopped operator still reports the pool:\n{after}"
    );
}

#[tokio::test(start_paused = true)]
async fn node_gc_deletions_are_counted() {
    init_logs();
    let store = store();
    let admin = store.client();
    add_node(&admin, "a", "192.168.0.1").await;
    add_node(&admin, "b", "192.168.0.2").await;
    let entry = IpCacheEntry::host(
        "10.20.0.10".parse().unwrap(),
        NumericIdentity::new(300),
        Some("192.168.0.1".parse::<IpAddr>().unwrap()),
    );
    let ipcache = ipcache_key(&entry.prefix_string());
    admin
        .put(&ipcache, entry.encode().unwrap(), None)
        .await
        .unwrap();

    let running = Running::start(&store);
    wait_value(&running, CIDRS_ALLOCATED, 2.0, Duration::from_secs(30)).await;
    assert_eq!(running.value(GC_POD_CIDRS), Some(0.0));

    admin.delete(&node_key(CLUSTER, "a")).await.unwrap();
    // Within the grace period nothing is collected.
    tokio::time::sleep(NODES_GC / 2).await;
    assert_eq!(running.value(GC_POD_CIDRS), Some(0.0));
    assert_eq!(running.value(CIDRS_ALLOCATED), Some(2.0));

    wait_value(&running, GC_POD_CIDRS, 1.0, NODES_GC * 2).await;
    wait_value(&running, GC_IPCACHE, 1.0, Duration::from_secs(5)).await;
    wait_value(&running, CIDRS_ALLOCATED, 1.0, Duration::from_secs(5)).await;
    assert_eq!(running.value(CIDRS_AVAILABLE), Some(255.0));
    assert!(admin.get(&ipcache).await.unwrap().is_none());
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_standby_reports_zero_until_it_takes_over() {
    init_logs();
    let store = store();
    let admin = store.client();
    add_node(&admin, "a", "192.168.0.1").await;
    let mut one = Running::start(&store);
    one.wait_leader().await;
    wait_value(&one, CIDRS_ALLOCATED, 1.0, Duration::from_secs(30)).await;

    let mut two = Running::start(&store);
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
    // Long enough for heartbeats and an identity GC run of the leader.
    tokio::time::sleep(IDENTITY_GC + Duration::from_secs(1)).await;
    let standby = two.text();
    assert_eq!(value(&standby, LEADER), Some(0.0), "{standby}");
    assert!(
        value(&standby, CIDRS_ALLOCATED).is_none(),
        "a standby reports the pool:\n{standby}"
    );
    assert_eq!(value(&standby, HEARTBEATS_OK), Some(0.0), "{standby}");
    assert_eq!(value(&standby, GC_RUNS_OK), Some(0.0), "{standby}");
    assert_eq!(one.value(LEADER), Some(1.0));
    assert!(one.value(GC_RUNS_OK).unwrap_or(0.0) >= 1.0);

    // A clean handover: the old leader reports 0, the new one 1 and the pool it rebuilt.
    let old = one.shutdown().await;
    two.wait_leader().await;
    assert_eq!(value(&old.render().unwrap(), LEADER), Some(0.0));
    assert_eq!(two.value(LEADER), Some(1.0));
    wait_value(&two, CIDRS_ALLOCATED, 1.0, Duration::from_secs(30)).await;
    two.shutdown().await;
}
