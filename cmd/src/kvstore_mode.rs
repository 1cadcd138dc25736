//! The agent's side of kvstore mode that runs before the actors start: the node record it
//! announces, and the wait for the pod CIDR the operator hands out (`--ipam cluster-pool`
//! without `--ipv4-range`).
//!
//! The agent announces itself first (its node record, without a CIDR, under its lease) because
//! the operator allocates CIDRs to the nodes it sees; it then waits for
//! `cilium/config/ipam/v1/<cluster>/<node>`, saying every few seconds what it waits for, so a
//! missing operator is obvious in the log.
//!
//! [`EtcdConnector`] reaches the etcd of a remote cluster of the mesh from its config file.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use kvstore::config::EtcdConfig;
use kvstore::etcd::EtcdBackend;
use kvstore::keys::{IPAM_PREFIX, IpamAllocation, NODES_PREFIX, Node, NodeAddress, NodeCidr};
use kvstore::keys::{StoreValue, TypedEvent, TypedStore, ipam_key};
use kvstore::{Backend, LeaseId};
use model::identity::{ClusterId, ClusterName};

/// How often the wait for a pod CIDR says that it is still waiting.
const WAIT_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Delay between attempts while the kvstore does not answer.
const RETRY: Duration = Duration::from_secs(1);

/// Connects to a remote cluster's etcd from its file in `--clustermesh-config` (the same YAML
/// as `--kvstore-opt etcd.config=FILE`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdConnector;

#[async_trait::async_trait]
impl clustermesh::Connector for EtcdConnector {
    async fn connect(
        &self,
        cluster: &ClusterName,
        config_path: &Path,
    ) -> Result<Arc<dyn Backend>, kvstore::Error> {
        let config = EtcdConfig::from_file(config_path)?;
        tracing::info!(%cluster, endpoints = ?config.endpoints, "connecting to a remote cluster's etcd");
        Ok(Arc::new(EtcdBackend::connect(&config).await?))
    }
}

/// The node record this agent publishes (upstream `pkg/node/types.Node` as an agent in
/// kvstore mode writes it).
pub fn local_node(
    cluster: &ClusterName,
    cluster_id: ClusterId,
    name: &str,
    node_ip: Ipv4Addr,
    pod_cidr: Option<Ipv4Net>,
) -> Node {
    Node {
        name: name.to_owned(),
        cluster: cluster.as_str().to_owned(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".to_owned(),
            ip: Some(IpAddr::V4(node_ip)),
        }],
        ipv4_alloc_cidr: pod_cidr.map(|net| NodeCidr::new(IpNet::V4(net))),
        cluster_id: u32::from(cluster_id.get()),
        source: "local".to_owned(),
        ..Node::default()
    }
}

/// Announces `node` (without a CIDR) and waits until the operator has allocated a pod CIDR
/// to it. Returns the first CIDR of the allocation. Never gives up: an agent in cluster-pool
/// mode has nothing to do without one.
pub async fn wait_for_pod_cidr(backend: Arc<dyn Backend>, node: &Node, lease: LeaseId) -> Ipv4Net {
    let nodes = TypedStore::<Node>::new(Arc::clone(&backend), NODES_PREFIX);
    let allocations = TypedStore::<IpamAllocation>::new(Arc::clone(&backend), IPAM_PREFIX);
    let key = ipam_key(&node.cluster, &node.name);
    let name = IpamAllocation::key_name_of(&node.cluster, &node.name);
    // A restarting agent already has its CIDR: announcing a record without one would make
    // every peer drop its route to this node's pods until the node manager writes the full
    // record again.
    match allocations.get(&name).await {
        Ok(Some(alloc)) => {
            if let Some(cidr) = alloc.pod_cidrs.first() {
                tracing::info!(%cidr, "pod CIDR already allocated by the operator");
                return *cidr;
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, %key, "cannot read this node's pod CIDR allocation"),
    }
    loop {
        match nodes.upsert(node, Some(lease)).await {
            Ok(_) => break,
            Err(error) => {
                tracing::warn!(%error, "cannot announce this node in the kvstore; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    tracing::info!(%key, "waiting for the operator to allocate this node's pod CIDR");
    let mut report = tokio::time::interval(WAIT_REPORT_INTERVAL);
    report.tick().await;
    loop {
        let mut events = match allocations.watch().await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "cannot watch pod CIDR allocations; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(TypedEvent::Upsert(alloc))) if alloc.key_name() == name => {
                        if let Some(cidr) = alloc.pod_cidrs.first() {
                            tracing::info!(%cidr, "pod CIDR allocated by the operator");
                            return *cidr;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "watch of pod CIDR allocations failed");
                    }
                    None => break,
                },
                _ = report.tick() => tracing::info!(
                    %key,
                    "still waiting for a pod CIDR: is cilium-operator-generic running against \
                     the same kvstore and cluster name?"
                ),
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use kvstore::BackendExt;
    use kvstore::clock::TokioClock;
    use kvstore::memory::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn announces_the_node_then_returns_the_allocated_cidr() {
        let store = MemoryStore::new(Arc::new(TokioClock::new()));
        let backend: Arc<dyn Backend> = Arc::new(store.client());
        let lease = backend.grant_lease(Duration::from_secs(60)).await.unwrap();
        let cluster = ClusterName::new("c1".to_owned()).unwrap();
        let node = local_node(
            &cluster,
            ClusterId::new(1),
            "n1",
            Ipv4Addr::new(192, 168, 1, 1),
            None,
        );
        let waiter = tokio::spawn({
            let backend = Arc::clone(&backend);
            let node = node.clone();
            async move { wait_for_pod_cidr(backend, &node, lease).await }
        });
        // The node record appears (so the operator sees the node), leased, without a CIDR.
        let record = loop {
            if let Some(kv) = backend.get("cilium/state/nodes/v1/c1/n1").await.unwrap() {
                break kv;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(record.lease, Some(lease));
        let decoded = Node::decode(&record.value).unwrap();
        assert_eq!(decoded.ipv4_alloc_cidr, None);
        assert!(!waiter.is_finished());

        // Another node's allocation does not end the wait; a malformed one is skipped.
        let other = IpamAllocation {
            cluster: "c1".into(),
            node: "n2".into(),
            pod_cidrs: vec!["10.0.2.0/24".parse().unwrap()],
        };
        backend
            .put(&ipam_key("c1", "n2"), other.encode().unwrap(), None)
            .await
            .unwrap();
        backend
            .put(&ipam_key("c1", "n1"), b"{\"podCIDRs\":[]}".to_vec(), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());

        let mine = IpamAllocation {
            cluster: "c1".into(),
            node: "n1".into(),
            pod_cidrs: vec!["10.0.1.0/24".parse().unwrap()],
        };
        assert!(
            backend
                .compare_and_swap(
                    &ipam_key("c1", "n1"),
                    backend
                        .get(&ipam_key("c1", "n1"))
                        .await
                        .unwrap()
                        .unwrap()
                        .mod_revision,
                    mine.encode().unwrap(),
                    None
                )
                .await
                .unwrap()
        );
        let cidr = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cidr, "10.0.1.0/24".parse::<Ipv4Net>().unwrap());

        // A restart finds the allocation and leaves the full record alone.
        let full = local_node(
            &cluster,
            ClusterId::new(1),
            "n1",
            Ipv4Addr::new(192, 168, 1, 1),
            Some(cidr),
        );
        backend
            .put(
                "cilium/state/nodes/v1/c1/n1",
                full.encode().unwrap(),
                Some(lease),
            )
            .await
            .unwrap();
        assert_eq!(
            wait_for_pod_cidr(Arc::clone(&backend), &node, lease).await,
            cidr
        );
        let record = backend
            .get("cilium/state/nodes/v1/c1/n1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Node::decode(&record.value).unwrap(), full);
    }
}
