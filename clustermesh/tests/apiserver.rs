//! clustermesh-apiserver against memory stores: the publisher writes the cluster configuration,
//! sync canaries and heartbeat byte for byte as upstream does, and kvstoremesh mirrors remote
//! clusters into the local store under upstream's cache layout.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use clustermesh::Connector;
use clustermesh::apiserver::{Publisher, PublisherConfig};
use clustermesh::kvstoremesh::{KvstoreMesh, KvstoreMeshConfig};
use kvstore::Backend;
use kvstore::clock::TokioClock;
use kvstore::keys::decode_timestamp;
use kvstore::memory::MemoryStore;
use model::identity::{ClusterId, ClusterName};
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn memory() -> (MemoryStore, Arc<dyn Backend>) {
    let store = MemoryStore::new(Arc::new(TokioClock::new()));
    let client: Arc<dyn Backend> = Arc::new(store.client());
    (store, client)
}

/// Polls `check` every 10 ms of (paused) time until it holds; fails after 60 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..6000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn value(backend: &Arc<dyn Backend>, key: &str) -> Option<String> {
    backend
        .get(key)
        .await
        .unwrap()
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

/// Every key below `prefix` with its value.
async fn dump(backend: &Arc<dyn Backend>, prefix: &str) -> BTreeMap<String, String> {
    backend
        .list_prefix(prefix)
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8(kv.value).unwrap()))
        .collect()
}

/// `2026-11-28T02:46:44Z`: what Go's `time.RFC3339` writes for a UTC time.
fn assert_rfc3339_seconds(text: &str) {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(shape_ok, "{text:?} is not RFC 3339 with seconds in UTC");
    decode_timestamp(text.as_bytes()).unwrap();
}

fn start_publisher(
    backend: Arc<dyn Backend>,
    config: PublisherConfig,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let publisher = Publisher::new(config, backend).unwrap();
    let (stop, stopped) = watch::channel(false);
    (stop, tokio::spawn(publisher.run(stopped)))
}

#[tokio::test(start_paused = true)]
async fn publisher_writes_upstreams_cluster_config_canaries_and_heartbeat() {
    let (_store, backend) = memory();
    let mut config = PublisherConfig::new(ClusterName::new("c1").unwrap(), ClusterId::new(1));
    config.heartbeat_interval = Duration::from_secs(10);
    let (stop, task) = start_publisher(Arc::clone(&backend), config);

    eventually("the sync canaries", || async {
        dump(&backend, "cilium/synced/").await.len() == 4
    })
    .await;
    assert_eq!(
        value(&backend, "cilium/cluster-config/c1").await.as_deref(),
        Some(r#"{"id":1,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#)
    );
    let canaries = dump(&backend, "cilium/synced/").await;
    assert_eq!(
        canaries.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "cilium/synced/c1/cilium/state/identities/v1",
            "cilium/synced/c1/cilium/state/ip/v1",
            "cilium/synced/c1/cilium/state/nodes/v1",
            "cilium/synced/c1/cilium/state/services/v1",
        ]
    );
    for timestamp in canaries.values() {
        assert_rfc3339_seconds(timestamp);
    }
    let heartbeat = backend.get("cilium/.heartbeat").await.unwrap().unwrap();
    assert_rfc3339_seconds(std::str::from_utf8(&heartbeat.value).unwrap());

    // Everything hangs on one lease.
    let config_kv = backend
        .get("cilium/cluster-config/c1")
        .await
        .unwrap()
        .unwrap();
    let lease = config_kv.lease.expect("cluster config is leased");
    assert_eq!(heartbeat.lease, Some(lease));
    for key in canaries.keys() {
        assert_eq!(
            backend.get(key).await.unwrap().unwrap().lease,
            Some(lease),
            "{key}"
        );
    }

    // The heartbeat is rewritten every interval, the configuration is not.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let later = backend.get("cilium/.heartbeat").await.unwrap().unwrap();
    assert!(
        later.mod_revision > heartbeat.mod_revision + 1,
        "two more heartbeats"
    );
    let config_later = backend
        .get("cilium/cluster-config/c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(config_later.mod_revision, config_kv.mod_revision);

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("publisher stops on shutdown")
        .unwrap();
    // A clean stop keeps the keys: a restarting publisher must not make the cluster vanish.
    assert!(value(&backend, "cilium/cluster-config/c1").await.is_some());
}

#[tokio::test(start_paused = true)]
async fn publisher_republishes_after_losing_its_lease_and_after_deletion() {
    let (_store, backend) = memory();
    let mut config = PublisherConfig::new(ClusterName::new("c7").unwrap(), ClusterId::new(7));
    config.lease_ttl = Duration::from_secs(30);
    config.resync_interval = Duration::from_secs(60);
    let (stop, task) = start_publisher(Arc::clone(&backend), config);
    eventually("the cluster config", || async {
        value(&backend, "cilium/cluster-config/c7").await.is_some()
    })
    .await;
    let first = backend
        .get("cilium/cluster-config/c7")
        .await
        .unwrap()
        .unwrap();
    let first_lease = first.lease.unwrap();

    backend.revoke_lease(first_lease).await.unwrap();
    assert!(
        dump(&backend, "cilium/").await.is_empty(),
        "revoke deletes every key"
    );
    eventually("republication under a new lease", || async {
        dump(&backend, "cilium/").await.len() == 6
    })
    .await;
    let second = backend
        .get("cilium/cluster-config/c7")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second.lease, Some(first_lease));

    // Someone deletes a canary: the periodic resync writes it again.
    backend
        .delete("cilium/synced/c7/cilium/state/nodes/v1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(
        value(&backend, "cilium/synced/c7/cilium/state/nodes/v1")
            .await
            .is_some()
    );
    stop.send_replace(true);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn publisher_waits_for_an_unavailable_store() {
    let (store, backend) = memory();
    store.set_unavailable(true);
    let config = PublisherConfig::new(ClusterName::new("c1").unwrap(), ClusterId::new(1));
    let (stop, task) = start_publisher(Arc::clone(&backend), config);
    tokio::time::sleep(Duration::from_secs(10)).await;
    store.set_unavailable(false);
    eventually("publication once the store answers", || async {
        dump(&backend, "cilium/").await.len() == 6
    })
    .await;
    stop.send_replace(true);
    task.await.unwrap();
}

#[test]
fn publisher_refuses_cluster_id_zero() {
    let (_store, backend) = memory();
    let config = PublisherConfig::new(ClusterName::new("c1").unwrap(), ClusterId::UNSET);
    let err = Publisher::new(config, backend).unwrap_err();
    assert!(err.to_string().contains("from 1 to 255"), "{err}");
}

/// Maps cluster names to memory stores, as the etcd connector maps them to etcd clients.
#[derive(Debug, Default)]
struct Remotes {
    stores: Mutex<HashMap<String, Arc<dyn Backend>>>,
    connects: Mutex<Vec<String>>,
}

impl Remotes {
    fn add(&self, cluster: &str, backend: Arc<dyn Backend>) {
        self.stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cluster.to_owned(), backend);
    }

    fn connects(&self) -> Vec<String> {
        self.connects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Connector for Remotes {
    async fn connect(
        &self,
        cluster: &ClusterName,
        config_path: &Path,
    ) -> Result<Arc<dyn Backend>, kvstore::Error> {
        assert_eq!(config_path.file_name().unwrap(), cluster.as_str());
        self.connects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(cluster.to_string());
        self.stores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster.as_str())
            .cloned()
            .ok_or(kvstore::Error::Unavailable {
                op: "connect",
                message: format!("no store for {cluster}"),
            })
    }
}

const CONFIG_FILE: &str = "endpoints:\n- http://127.0.0.1:2379\n";

/// The state of a remote cluster `c2` (id 2) as its agents and publisher write it.
async fn populate_c2(remote: &Arc<dyn Backend>, with_canaries: bool) {
    let puts = [
        (
            "cilium/cluster-config/c2",
            r#"{"id":2,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#,
        ),
        (
            "cilium/state/nodes/v1/c2/n1",
            r#"{"Name":"n1","Cluster":"c2"}"#,
        ),
        ("cilium/state/nodes/v1/c3/other", r#"{"Name":"other"}"#),
        (
            "cilium/state/services/v1/c2/default/web",
            r#"{"cluster":"c2","namespace":"default","name":"web","shared":true}"#,
        ),
        (
            "cilium/state/identities/v1/id/131073",
            "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c2;",
        ),
        (
            "cilium/state/identities/v1/value/k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c2;/10.2.0.1",
            "131073",
        ),
        (
            "cilium/state/ip/v1/default/10.2.0.5",
            r#"{"IP":"10.2.0.5","ID":131073}"#,
        ),
    ];
    for (key, value) in puts {
        remote
            .put(key, value.as_bytes().to_vec(), None)
            .await
            .unwrap();
    }
    if with_canaries {
        for prefix in ["nodes", "services", "identities", "ip"] {
            remote
                .put(
                    &format!("cilium/synced/c2/cilium/state/{prefix}/v1"),
                    b"2026-11-28T00:00:00Z".to_vec(),
                    None,
                )
                .await
                .unwrap();
        }
    }
}

struct Mesh {
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), clustermesh::kvstoremesh::KvstoreMeshError>>,
}

fn start_mesh(local: Arc<dyn Backend>, remotes: Arc<Remotes>, grace: Duration) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let mut config = KvstoreMeshConfig::new(
        ClusterName::new("c1").unwrap(),
        ClusterId::new(1),
        dir.path().to_owned(),
    );
    config.drain_grace_period = grace;
    let mesh = KvstoreMesh::new(config, local, remotes).unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(mesh.run(stopped));
    Mesh { dir, stop, task }
}

impl Mesh {
    fn write_config(&self, cluster: &str, content: &str) {
        std::fs::write(self.dir.path().join(cluster), content).unwrap();
    }

    async fn shutdown(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("kvstoremesh stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn kvstoremesh_mirrors_a_remote_cluster_under_the_cache_layout() {
    let (_remote_store, remote) = memory();
    populate_c2(&remote, true).await;
    let (_local_store, local) = memory();
    // Left over from an earlier run: gone after the first listing.
    local
        .put("cilium/cache/ip/v1/c2/10.9.9.9", b"stale".to_vec(), None)
        .await
        .unwrap();
    let remotes = Arc::new(Remotes::default());
    remotes.add("c2", Arc::clone(&remote));
    let mesh = start_mesh(Arc::clone(&local), Arc::clone(&remotes), Duration::ZERO);
    mesh.write_config("c2", CONFIG_FILE);

    eventually("the local sync canaries of c2", || async {
        dump(&local, "cilium/synced/c2/").await.len() == 4
    })
    .await;
    assert_eq!(
        value(&local, "cilium/cluster-config/c2").await.as_deref(),
        Some(
            r#"{"id":2,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255}}"#
        )
    );
    let canaries = dump(&local, "cilium/synced/").await;
    assert_eq!(
        canaries.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "cilium/synced/c2/cilium/cache/identities/v1",
            "cilium/synced/c2/cilium/cache/ip/v1",
            "cilium/synced/c2/cilium/cache/nodes/v1",
            "cilium/synced/c2/cilium/cache/services/v1",
        ]
    );
    for timestamp in canaries.values() {
        assert_rfc3339_seconds(timestamp);
    }
    let expected: BTreeMap<String, String> = [
        (
            "cilium/cache/identities/v1/c2/id/131073",
            "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c2;",
        ),
        (
            "cilium/cache/ip/v1/c2/10.2.0.5",
            r#"{"IP":"10.2.0.5","ID":131073}"#,
        ),
        (
            "cilium/cache/nodes/v1/c2/n1",
            r#"{"Name":"n1","Cluster":"c2"}"#,
        ),
        (
            "cilium/cache/services/v1/c2/default/web",
            r#"{"cluster":"c2","namespace":"default","name":"web","shared":true}"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(dump(&local, "cilium/cache/").await, expected);
    // Cached keys hang on kvstoremesh's lease.
    let lease = local
        .get("cilium/cluster-config/c2")
        .await
        .unwrap()
        .unwrap()
        .lease
        .expect("cached cluster config is leased");
    for kv in local.list_prefix("cilium/cache/").await.unwrap().kvs {
        assert_eq!(kv.lease, Some(lease), "{}", kv.key);
    }

    // Updates and deletes follow.
    remote
        .put(
            "cilium/state/nodes/v1/c2/n1",
            br#"{"Name":"n1","v":2}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
    remote
        .delete("cilium/state/ip/v1/default/10.2.0.5")
        .await
        .unwrap();
    remote
        .put(
            "cilium/state/identities/v1/id/131074",
            b"k8s:app=db;".to_vec(),
            None,
        )
        .await
        .unwrap();
    eventually("updates mirrored", || async {
        let cache = dump(&local, "cilium/cache/").await;
        cache.get("cilium/cache/nodes/v1/c2/n1").map(String::as_str)
            == Some(r#"{"Name":"n1","v":2}"#)
            && !cache.contains_key("cilium/cache/ip/v1/c2/10.2.0.5")
            && cache
                .get("cilium/cache/identities/v1/c2/id/131074")
                .map(String::as_str)
                == Some("k8s:app=db;")
    })
    .await;
    assert_eq!(remotes.connects(), ["c2"]);

    // The configuration file goes away: the remote's cache and config are drained.
    std::fs::remove_file(mesh.dir.path().join("c2")).unwrap();
    eventually("the cache of c2 drained", || async {
        dump(&local, "cilium/").await.is_empty()
    })
    .await;
    mesh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn kvstoremesh_drains_after_the_grace_period_and_keeps_other_clusters() {
    let (_remote_store, remote) = memory();
    populate_c2(&remote, true).await;
    let (_c3_store, c3) = memory();
    c3.put(
        "cilium/cluster-config/c3",
        br#"{"id":3,"capabilities":{"maxConnectedClusters":255}}"#.to_vec(),
        None,
    )
    .await
    .unwrap();
    c3.put("cilium/state/nodes/v1/c3/m1", b"m1".to_vec(), None)
        .await
        .unwrap();
    let (_local_store, local) = memory();
    let remotes = Arc::new(Remotes::default());
    remotes.add("c2", Arc::clone(&remote));
    remotes.add("c3", Arc::clone(&c3));
    let mesh = start_mesh(Arc::clone(&local), remotes, Duration::from_secs(60));
    mesh.write_config("c2", CONFIG_FILE);
    mesh.write_config("c3", CONFIG_FILE);
    // The local cluster's own file and files that are no etcd configuration are ignored.
    mesh.write_config("c1", CONFIG_FILE);
    mesh.write_config("notes", "nothing here");
    mesh.write_config(".hidden", CONFIG_FILE);

    eventually("both remotes cached", || async {
        dump(&local, "cilium/synced/").await.len() == 8
    })
    .await;
    // c3 writes no canaries (an old release): it is mirrored without waiting for them.
    assert_eq!(
        value(&local, "cilium/cache/nodes/v1/c3/m1")
            .await
            .as_deref(),
        Some("m1")
    );
    assert_eq!(
        value(&local, "cilium/cluster-config/c3").await.as_deref(),
        Some(
            r#"{"id":3,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255}}"#
        )
    );
    assert_eq!(
        dump(&local, "cilium/cluster-config/").await.len(),
        2,
        "no config for c1, notes or .hidden"
    );

    std::fs::remove_file(mesh.dir.path().join("c2")).unwrap();
    eventually("the config of c2 removed first", || async {
        value(&local, "cilium/cluster-config/c2").await.is_none()
    })
    .await;
    assert_eq!(
        dump(&local, "cilium/cache/nodes/v1/c2/").await.len(),
        1,
        "cache kept during the grace period"
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    eventually("the cache of c2 drained", || async {
        dump(&local, "cilium/cache/nodes/v1/c2/").await.is_empty()
            && dump(&local, "cilium/synced/c2/").await.is_empty()
            && dump(&local, "cilium/cache/identities/v1/c2/")
                .await
                .is_empty()
    })
    .await;
    assert_eq!(dump(&local, "cilium/synced/c3/").await.len(), 4);
    assert!(value(&local, "cilium/cluster-config/c3").await.is_some());
    mesh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn kvstoremesh_waits_for_each_remote_canary() {
    let (_remote_store, remote) = memory();
    populate_c2(&remote, false).await;
    let (_local_store, local) = memory();
    let remotes = Arc::new(Remotes::default());
    remotes.add("c2", Arc::clone(&remote));
    let mesh = start_mesh(Arc::clone(&local), remotes, Duration::ZERO);
    mesh.write_config("c2", CONFIG_FILE);

    eventually("the cached cluster config", || async {
        value(&local, "cilium/cluster-config/c2").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        dump(&local, "cilium/cache/").await.is_empty(),
        "nothing before the canaries"
    );

    remote
        .put(
            "cilium/synced/c2/cilium/state/nodes/v1",
            b"2026-11-28T00:00:00Z".to_vec(),
            None,
        )
        .await
        .unwrap();
    eventually("nodes cached", || async {
        value(&local, "cilium/synced/c2/cilium/cache/nodes/v1")
            .await
            .is_some()
    })
    .await;
    assert_eq!(
        dump(&local, "cilium/cache/")
            .await
            .keys()
            .collect::<Vec<_>>(),
        ["cilium/cache/nodes/v1/c2/n1"]
    );
    mesh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn kvstoremesh_refuses_a_remote_with_the_local_id_and_reconnects_when_fixed() {
    let (_remote_store, remote) = memory();
    populate_c2(&remote, true).await;
    remote
        .put(
            "cilium/cluster-config/c2",
            br#"{"id":1,"capabilities":{"syncedCanaries":true}}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
    let (_local_store, local) = memory();
    let remotes = Arc::new(Remotes::default());
    remotes.add("c2", Arc::clone(&remote));
    let mesh = start_mesh(Arc::clone(&local), Arc::clone(&remotes), Duration::ZERO);
    mesh.write_config("c2", CONFIG_FILE);

    eventually("a few connection attempts", || async {
        remotes.connects().len() >= 3
    })
    .await;
    assert!(
        dump(&local, "cilium/").await.is_empty(),
        "nothing cached from a clashing cluster"
    );

    remote
        .put(
            "cilium/cluster-config/c2",
            br#"{"id":2,"capabilities":{"syncedCanaries":true}}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
    eventually("c2 cached after the fix", || async {
        dump(&local, "cilium/synced/c2/").await.len() == 4
    })
    .await;
    mesh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn kvstoremesh_rewrites_its_cache_when_the_lease_is_lost() {
    let (_remote_store, remote) = memory();
    populate_c2(&remote, true).await;
    let (_local_store, local) = memory();
    let remotes = Arc::new(Remotes::default());
    remotes.add("c2", Arc::clone(&remote));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c2"), CONFIG_FILE).unwrap();
    let mut config = KvstoreMeshConfig::new(
        ClusterName::new("c1").unwrap(),
        ClusterId::new(1),
        dir.path().to_owned(),
    );
    config.lease_ttl = Duration::from_secs(30);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(
        KvstoreMesh::new(config, Arc::clone(&local), remotes)
            .unwrap()
            .run(stopped),
    );

    eventually("c2 cached", || async {
        dump(&local, "cilium/synced/c2/").await.len() == 4
    })
    .await;
    let lease = local
        .get("cilium/cluster-config/c2")
        .await
        .unwrap()
        .unwrap()
        .lease
        .unwrap();
    local.revoke_lease(lease).await.unwrap();
    assert!(dump(&local, "cilium/").await.is_empty());
    eventually("c2 cached again under a new lease", || async {
        dump(&local, "cilium/synced/c2/").await.len() == 4
            && dump(&local, "cilium/cache/").await.len() == 4
    })
    .await;
    stop.send_replace(true);
    task.await.unwrap().unwrap();
}

#[test]
fn kvstoremesh_refuses_zero_intervals() {
    let (_local_store, local) = memory();
    let mut config = KvstoreMeshConfig::new(
        ClusterName::new("c1").unwrap(),
        ClusterId::new(1),
        "/etc/clustermesh".into(),
    );
    config.config_poll_interval = Duration::ZERO;
    let err = KvstoreMesh::new(config, local, Arc::new(Remotes::default())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config poll interval must be longer than zero"
    );
}

#[tokio::test]
async fn kvstoremesh_fails_on_a_missing_config_directory() {
    let (_local_store, local) = memory();
    let config = KvstoreMeshConfig::new(
        ClusterName::new("c1").unwrap(),
        ClusterId::new(1),
        "/nonexistent/clustermesh".into(),
    );
    let (_stop, stopped) = watch::channel(false);
    let err = KvstoreMesh::new(config, local, Arc::new(Remotes::default()))
        .unwrap()
        .run(stopped)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/clustermesh"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_kvstoremesh_keeps_its_cache_and_prunes_what_went_away_meanwhile() {
    let (_remote_store, remote) = memory();
    populate_c2(&remote, true).await;
    let (_local_store, local) = memory();
    let remotes = Arc::new(Remotes::default());
    remotes.add("c2", Arc::clone(&remote));
    let first = start_mesh(
        Arc::clone(&local),
        Arc::clone(&remotes),
        Duration::from_secs(60),
    );
    first.write_config("c2", CONFIG_FILE);
    eventually("c2 cached", || async {
        dump(&local, "cilium/synced/c2/").await.len() == 4
    })
    .await;
    let dir = first.dir.path().to_owned();
    first.stop.send_replace(true);
    first.task.await.unwrap().unwrap();
    assert_eq!(
        dump(&local, "cilium/cache/").await.len(),
        4,
        "a clean stop keeps the cache for the agents"
    );

    // While kvstoremesh is away, c2 changes.
    remote.delete("cilium/state/nodes/v1/c2/n1").await.unwrap();
    remote
        .put("cilium/state/nodes/v1/c2/n2", b"n2".to_vec(), None)
        .await
        .unwrap();

    let mut config =
        KvstoreMeshConfig::new(ClusterName::new("c1").unwrap(), ClusterId::new(1), dir);
    config.drain_grace_period = Duration::from_secs(60);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(
        KvstoreMesh::new(config, Arc::clone(&local), remotes)
            .unwrap()
            .run(stopped),
    );
    eventually("the new state of c2 cached", || async {
        let nodes = dump(&local, "cilium/cache/nodes/v1/").await;
        nodes.keys().collect::<Vec<_>>() == ["cilium/cache/nodes/v1/c2/n2"]
    })
    .await;
    let lease = local
        .get("cilium/cluster-config/c2")
        .await
        .unwrap()
        .unwrap()
        .lease;
    eventually("every cached key moved to the new lease", || async {
        let kvs = local.list_prefix("cilium/cache/").await.unwrap().kvs;
        kvs.len() == 4 && kvs.iter().all(|kv| kv.lease == lease)
    })
    .await;
    stop.send_replace(true);
    task.await.unwrap().unwrap();
}
