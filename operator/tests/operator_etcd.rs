//! Operators against a private real etcd: one leads and allocates, a standby takes over when
//! the leader dies (after its lock session expires) or stops (at once).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use kvstore::keys::{IpamAllocation, Node, NodeAddress, StoreValue, ipam_key, node_key};
use kvstore::testing::etcd::EtcdServer;
use kvstore::{Backend, BackendStatus};
use operator::{LEADER_LOCK_NAME, Operator, OperatorConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CLUSTER: &str = "default";
/// etcd's lock sessions (upstream's 25 s TTL) plus slack for the standby to notice.
const TAKEOVER_AFTER_CRASH: Duration = Duration::from_secs(45);

struct Running {
    stop: watch::Sender<bool>,
    leader: watch::Receiver<bool>,
    task: JoinHandle<Result<(), operator::OperatorError>>,
}

impl Running {
    async fn start(etcd: &EtcdServer) -> Running {
        let backend: Arc<dyn Backend> = Arc::new(etcd.client().await);
        let config = OperatorConfig {
            cluster_pool_ipv4_cidr: "10.40.0.0/16".parse().unwrap(),
            heartbeat_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(30),
            nodes_gc_interval: Duration::from_secs(60),
            retry_interval: Duration::from_millis(200),
            ..OperatorConfig::default()
        };
        let operator = Operator::new(config, backend).unwrap();
        let leader = operator.leader_status();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(operator.run(shutdown));
        Running { stop, leader, task }
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    async fn wait_leader(&mut self, within: Duration) {
        tokio::time::timeout(within, self.leader.wait_for(|l| *l))
            .await
            .expect("became leader in time")
            .expect("operator alive");
    }

    async fn shutdown(self) {
        self.stop.send_replace(true);
        let result = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("operator stops in time")
            .expect("operator task did not panic");
        assert!(result.is_ok(), "operator failed: {result:?}");
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn add_node(backend: &dyn Backend, name: &str, ip: &str) {
    let node = Node {
        name: name.to_owned(),
        cluster: CLUSTER.to_owned(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".to_owned(),
            ip: Some(ip.parse().unwrap()),
        }],
        ..Node::default()
    };
    backend
        .put(&node_key(CLUSTER, name), node.encode().unwrap(), None)
        .await
        .unwrap();
}

async fn wait_allocation(backend: &dyn Backend, node: &str) -> Ipv4Net {
    eventually(
        &format!("allocation of {node}"),
        Duration::from_secs(20),
        || async {
            let kv = backend.get(&ipam_key(CLUSTER, node)).await.unwrap()?;
            let record = IpamAllocation::decode(&kv.value).unwrap();
            record.pod_cidrs.first().copied()
        },
    )
    .await
}

async fn lock_holders(backend: &dyn Backend) -> usize {
    backend
        .list_prefix(&format!("{LEADER_LOCK_NAME}/"))
        .await
        .unwrap()
        .kvs
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_on_etcd_elect_one_leader_and_hand_over() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let admin = etcd.client().await;
    let status: BackendStatus = admin.status().await.unwrap();
    assert_eq!(status.kind, "etcd");
    add_node(&admin, "n1", "192.168.0.1").await;

    let mut one = Running::start(&etcd).await;
    one.wait_leader(Duration::from_secs(20)).await;
    let n1 = wait_allocation(&admin, "n1").await;
    let mut two = Running::start(&etcd).await;
    eventually("standby queued", Duration::from_secs(20), || async {
        (lock_holders(&admin).await == 2).then_some(())
    })
    .await;
    assert!(one.is_leader());
    assert!(!two.is_leader(), "two leaders at once");
    // The key layout as etcdctl shows it.
    let listed = etcd
        .etcdctl(&["get", "--prefix", "--keys-only", "cilium/config/ipam/v1/"])
        .await
        .unwrap();
    assert!(
        listed.contains("cilium/config/ipam/v1/default/n1"),
        "{listed}"
    );

    // The leader crashes: its lock goes when its session lease expires.
    one.kill().await;
    two.wait_leader(TAKEOVER_AFTER_CRASH).await;
    add_node(&admin, "n2", "192.168.0.2").await;
    let n2 = wait_allocation(&admin, "n2").await;
    assert_ne!(n1, n2);

    // A clean stop hands over at once.
    let mut three = Running::start(&etcd).await;
    eventually("third operator queued", Duration::from_secs(20), || async {
        (lock_holders(&admin).await == 2).then_some(())
    })
    .await;
    let stopped = Instant::now();
    two.shutdown().await;
    three.wait_leader(Duration::from_secs(10)).await;
    assert!(stopped.elapsed() < Duration::from_secs(10));
    three.shutdown().await;
    assert_eq!(lock_holders(&admin).await, 0);
    etcd.stop().await.expect("etcd stops");
}
