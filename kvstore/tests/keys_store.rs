//! `TypedStore`, sync canaries and cluster configs against the in-memory backend.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kvstore::clock::ManualClock;
use kvstore::keys::{self, ClusterConfig, Node, NodeAddress, StoreValue, TypedEvent, TypedStore};
use kvstore::memory::MemoryStore;
use kvstore::{Backend, Error};

fn backend() -> Arc<dyn Backend> {
    let store = MemoryStore::new(Arc::new(ManualClock::new()));
    Arc::new(store.client())
}

fn node(cluster: &str, name: &str, ip: &str) -> Node {
    Node {
        name: name.to_owned(),
        cluster: cluster.to_owned(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".to_owned(),
            ip: Some(ip.parse().expect("test IP")),
        }],
        ..Node::default()
    }
}

#[tokio::test]
async fn upsert_get_list_delete() {
    let backend = backend();
    let store: TypedStore<Node> = TypedStore::new(Arc::clone(&backend), keys::NODES_PREFIX);
    let n1 = node("c1", "n1", "10.0.0.1");
    let n2 = node("c1", "n2", "10.0.0.2");
    store.upsert(&n1, None).await.expect("upsert");
    store.upsert(&n2, None).await.expect("upsert");

    let raw = backend
        .get("cilium/state/nodes/v1/c1/n1")
        .await
        .expect("get")
        .expect("written under the upstream key");
    assert_eq!(raw.value, n1.encode().expect("encodes"));

    assert_eq!(store.get("c1/n1").await.expect("get"), Some(n1.clone()));
    assert_eq!(store.get("c1/n3").await.expect("get"), None);

    // A corrupt value is reported with its key and does not hide the good ones.
    backend
        .put(
            "cilium/state/nodes/v1/c1/broken",
            b"{not json".to_vec(),
            None,
        )
        .await
        .expect("put");
    // A key of a longer prefix is not part of the store.
    backend
        .put("cilium/state/nodes/v1x/c1/n9", b"{}".to_vec(), None)
        .await
        .expect("put");
    let (values, errors) = store.list().await.expect("list");
    assert_eq!(values, vec![n1.clone(), n2.clone()]);
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(&errors[0], Error::Decode { key, .. } if key == "cilium/state/nodes/v1/c1/broken"),
        "{errors:?}"
    );
    assert!(matches!(
        store.get("c1/broken").await,
        Err(Error::Decode { .. })
    ));

    assert!(store.delete("c1/n1").await.expect("delete"));
    assert!(!store.delete("c1/n1").await.expect("delete"));
    assert_eq!(store.get("c1/n1").await.expect("get"), None);
}

#[tokio::test]
async fn watch_skips_undecodable_values_and_keeps_going() {
    let backend = backend();
    let store: TypedStore<Node> = TypedStore::new(Arc::clone(&backend), keys::NODES_PREFIX);
    let n1 = node("c1", "n1", "10.0.0.1");
    store.upsert(&n1, None).await.expect("upsert");
    backend
        .put("cilium/state/nodes/v1/c1/bad", b"\xff\xfe".to_vec(), None)
        .await
        .expect("put");

    let mut events = Box::pin(store.watch().await.expect("watch"));
    async fn next<S>(events: &mut S) -> TypedEvent<Node>
    where
        S: futures::Stream<Item = Result<TypedEvent<Node>, Error>> + Unpin,
    {
        tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("no backend error")
    }
    assert_eq!(next(&mut events).await, TypedEvent::Upsert(n1.clone()));
    assert_eq!(next(&mut events).await, TypedEvent::Synced);

    // Bad remote data in the middle of the stream is skipped, the next change still arrives.
    backend
        .put(
            "cilium/state/nodes/v1/c1/bad",
            br#"{"Name":""}"#.to_vec(),
            None,
        )
        .await
        .expect("put");
    let n2 = node("c1", "n2", "10.0.0.2");
    store.upsert(&n2, None).await.expect("upsert");
    assert_eq!(next(&mut events).await, TypedEvent::Upsert(n2));
    store.delete("c1/n1").await.expect("delete");
    assert_eq!(
        next(&mut events).await,
        TypedEvent::Delete("c1/n1".to_owned())
    );
}

#[tokio::test]
async fn sync_canary_is_written_and_awaited() {
    let backend = backend();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);

    // A canary for a longer prefix name must not satisfy the wait.
    keys::write_sync_canary(&*backend, "c1", "cilium/state/nodes/v1x", now, None)
        .await
        .expect("write");
    let waiter = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            keys::wait_for_sync_canary(&*backend, "c1", keys::NODES_PREFIX).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());

    keys::write_sync_canary(&*backend, "c1", keys::NODES_PREFIX, now, None)
        .await
        .expect("write");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait ends")
        .expect("task")
        .expect("canary seen");

    let kv = backend
        .get("cilium/synced/c1/cilium/state/nodes/v1")
        .await
        .expect("get")
        .expect("canary");
    assert_eq!(kv.value, b"2024-05-01T12:00:00Z");
    assert_eq!(keys::decode_timestamp(&kv.value), Ok(now));

    keys::write_heartbeat(&*backend, now, None)
        .await
        .expect("heartbeat");
    let kv = backend
        .get(keys::HEARTBEAT_KEY)
        .await
        .expect("get")
        .expect("heartbeat");
    assert_eq!(keys::decode_timestamp(&kv.value), Ok(now));
}

#[tokio::test]
async fn cluster_config_round_trips_through_the_store() {
    let backend = backend();
    assert_eq!(
        keys::read_cluster_config(&*backend, "c1")
            .await
            .expect("read"),
        None
    );
    let config = ClusterConfig {
        id: 3,
        capabilities: keys::Capabilities {
            synced_canaries: true,
            max_connected_clusters: 255,
            ..keys::Capabilities::default()
        },
    };
    keys::write_cluster_config(&*backend, "c1", &config, None)
        .await
        .expect("write");
    assert_eq!(
        keys::read_cluster_config(&*backend, "c1")
            .await
            .expect("read"),
        Some(config)
    );
    backend
        .put("cilium/cluster-config/c2", b"[1]".to_vec(), None)
        .await
        .expect("put");
    assert!(matches!(
        keys::read_cluster_config(&*backend, "c2").await,
        Err(Error::Decode { key, .. }) if key == "cilium/cluster-config/c2"
    ));
}
