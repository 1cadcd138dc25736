//! Test harness: memory-backed "remote clusters", a connector that maps configuration files to
//! them, and a probe actor recording what the mesh sends to the local actors.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix::{Actor, Addr, Context, Handler, MessageResult};
use actors::clusterstate::messages::RemoteServices;
use actors::identity::RemoteIdentities;
use actors::ipcache::{DeleteIp, Effective, IpEntry, Source, UpsertIp};
use actors::node::RemoteNodes;
use async_trait::async_trait;
use clustermesh::{
    ClusterMesh, ClusterMeshConfig, ClusterMeshOutputs, ClusterMeshStatus, Connector,
    RemoteClusterStatus,
};
use datapath::api::IpcacheKey;
use kvstore::Backend;
use kvstore::clock::TokioClock;
use kvstore::keys::{
    Capabilities, ClusterConfig, ClusterService, Node, write_cluster_config, write_heartbeat,
    write_sync_canary,
};
use kvstore::memory::MemoryStore;
use model::identity::{ClusterId, ClusterName, NumericIdentity};
use model::labels::Labels;

/// Everything the mesh sent, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Identities(RemoteIdentities),
    Nodes(RemoteNodes),
    Services(RemoteServices),
    Upsert(UpsertIp),
    Delete(DeleteIp),
}

#[derive(Debug, Default, Clone)]
pub struct Recorder {
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Messages received after the first `from`.
    pub fn since(&self, from: usize) -> Vec<Seen> {
        self.log.lock().unwrap()[from..].to_vec()
    }

    pub fn len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The identities as the identity actor would hold them.
    pub fn identities(&self) -> BTreeMap<NumericIdentity, Labels> {
        let mut out = BTreeMap::new();
        for seen in self.log() {
            if let Seen::Identities(msg) = seen {
                for id in msg.removed {
                    out.remove(&id);
                }
                for (id, labels) in msg.added {
                    out.insert(id, labels);
                }
            }
        }
        out
    }

    pub fn nodes(&self) -> BTreeMap<(ClusterName, String), Node> {
        let mut out = BTreeMap::new();
        for seen in self.log() {
            if let Seen::Nodes(msg) = seen {
                for name in msg.removed {
                    out.remove(&(msg.cluster.clone(), name));
                }
                for node in msg.upserted {
                    out.insert((msg.cluster.clone(), node.name.clone()), node);
                }
            }
        }
        out
    }

    pub fn services(&self) -> BTreeMap<(ClusterName, String, String), ClusterService> {
        let mut out = BTreeMap::new();
        for seen in self.log() {
            if let Seen::Services(msg) = seen {
                for (ns, name) in msg.removed {
                    out.remove(&(msg.cluster.clone(), ns, name));
                }
                for svc in msg.upserted {
                    out.insert(
                        (msg.cluster.clone(), svc.namespace.clone(), svc.name.clone()),
                        svc,
                    );
                }
            }
        }
        out
    }

    /// The ipcache's `clustermesh` claims.
    pub fn ipcache(&self) -> BTreeMap<IpcacheKey, IpEntry> {
        let mut out = BTreeMap::new();
        for seen in self.log() {
            match seen {
                Seen::Upsert(msg) => {
                    assert_eq!(msg.source, Source::ClusterMesh);
                    out.insert(msg.key, msg.entry);
                }
                Seen::Delete(msg) => {
                    assert_eq!(msg.source, Source::ClusterMesh);
                    out.remove(&msg.key);
                }
                _ => {}
            }
        }
        out
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<RemoteIdentities> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: RemoteIdentities, _: &mut Context<Self>) {
        self.log.lock().unwrap().push(Seen::Identities(msg));
    }
}

impl Handler<RemoteNodes> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: RemoteNodes, _: &mut Context<Self>) {
        self.log.lock().unwrap().push(Seen::Nodes(msg));
    }
}

impl Handler<RemoteServices> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: RemoteServices, _: &mut Context<Self>) {
        self.log.lock().unwrap().push(Seen::Services(msg));
    }
}

impl Handler<UpsertIp> for Recorder {
    type Result = MessageResult<UpsertIp>;
    fn handle(&mut self, msg: UpsertIp, _: &mut Context<Self>) -> Self::Result {
        self.log.lock().unwrap().push(Seen::Upsert(msg));
        MessageResult(Effective::Applied)
    }
}

impl Handler<DeleteIp> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: DeleteIp, _: &mut Context<Self>) {
        self.log.lock().unwrap().push(Seen::Delete(msg));
    }
}

/// Maps the `memory://<store>` endpoint of a configuration file to a memory store.
#[derive(Debug, Default)]
pub struct TestConnector {
    stores: Mutex<BTreeMap<String, MemoryStore>>,
    refused: Mutex<BTreeSet<String>>,
}

impl TestConnector {
    pub fn add_store(&self, key: &str) -> Arc<dyn Backend> {
        let store = MemoryStore::new(Arc::new(TokioClock::new()));
        let backend: Arc<dyn Backend> = Arc::new(store.client());
        self.stores.lock().unwrap().insert(key.to_owned(), store);
        backend
    }

    pub fn store(&self, key: &str) -> MemoryStore {
        self.stores.lock().unwrap()[key].clone()
    }

    /// Connections to `key` fail until [`Self::allow`].
    pub fn refuse(&self, key: &str) {
        self.refused.lock().unwrap().insert(key.to_owned());
    }

    pub fn allow(&self, key: &str) {
        self.refused.lock().unwrap().remove(key);
    }
}

#[async_trait]
impl Connector for TestConnector {
    async fn connect(
        &self,
        _cluster: &ClusterName,
        config_path: &Path,
    ) -> Result<Arc<dyn Backend>, kvstore::Error> {
        let unavailable = |message: String| kvstore::Error::Unavailable {
            op: "connect",
            message,
        };
        let text = std::fs::read_to_string(config_path)
            .map_err(|e| unavailable(format!("cannot read {}: {e}", config_path.display())))?;
        let key = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("- memory://"))
            .ok_or_else(|| unavailable("no memory endpoint".to_owned()))?
            .to_owned();
        if self.refused.lock().unwrap().contains(&key) {
            return Err(unavailable(format!("store {key} refuses connections")));
        }
        let store = self
            .stores
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .ok_or_else(|| unavailable(format!("no store {key}")))?;
        Ok(Arc::new(store.client()))
    }
}

pub const LOCAL: &str = "c1";

pub fn name(s: &str) -> ClusterName {
    ClusterName::new(s).unwrap()
}

/// A running mesh of local cluster `c1` (id 1) with its directory and probe.
pub struct Mesh {
    pub addr: Addr<ClusterMesh>,
    pub recorder: Recorder,
    pub dir: tempfile::TempDir,
    pub connector: Arc<TestConnector>,
}

/// Settings for tests: fast polling, a heartbeat window no test reaches by accident, short
/// backoff, no drain timeout.
pub fn test_config(dir: &Path) -> ClusterMeshConfig {
    let mut config = ClusterMeshConfig::new(dir.to_owned(), name(LOCAL), ClusterId::new(1));
    config.poll_interval = Duration::from_millis(100);
    config.heartbeat_timeout = Duration::from_secs(3600);
    config.backoff.initial = Duration::from_millis(100);
    config.backoff.max = Duration::from_secs(1);
    config.drain_timeout = None;
    config
}

pub fn start_mesh(
    connector: Arc<TestConnector>,
    configure: impl FnOnce(&mut ClusterMeshConfig),
) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    configure(&mut config);
    let recorder = Recorder::default();
    let probe = recorder.clone().start();
    let outputs = ClusterMeshOutputs {
        identities: probe.clone().recipient(),
        nodes: probe.clone().recipient(),
        services: probe.clone().recipient(),
        ipcache_upsert: probe.clone().recipient(),
        ipcache_delete: probe.recipient(),
    };
    let addr = ClusterMesh::new(config, outputs, connector.clone()).start();
    Mesh {
        addr,
        recorder,
        dir,
        connector,
    }
}

impl Mesh {
    /// Writes the configuration file of `cluster`, pointing at memory store `store`.
    pub fn write_config(&self, cluster: &str, store: &str) {
        write_file(&self.dir.path().join(cluster), store);
    }

    pub fn remove_config(&self, cluster: &str) {
        std::fs::remove_file(self.dir.path().join(cluster)).unwrap();
    }

    pub async fn status(&self) -> Vec<RemoteClusterStatus> {
        self.addr.send(ClusterMeshStatus).await.unwrap()
    }

    pub async fn status_of(&self, cluster: &str) -> Option<RemoteClusterStatus> {
        self.status()
            .await
            .into_iter()
            .find(|s| s.name.as_str() == cluster)
    }
}

pub fn write_file(path: &Path, store: &str) {
    // Write then rename, as Kubernetes swaps mounted files, so a poll never reads half a file.
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, format!("endpoints:\n- memory://{store}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `check` on (paused) tokio time until it holds.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached: {what}");
}

/// Lets every runnable task and actor run (a few scheduler rounds of paused time).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

pub async fn cluster_config(
    backend: &dyn Backend,
    cluster: &str,
    id: u32,
    canaries: bool,
    cached: bool,
) {
    let config = ClusterConfig {
        id,
        capabilities: Capabilities {
            synced_canaries: canaries,
            cached,
            max_connected_clusters: 255,
            service_exports_enabled: None,
        },
    };
    write_cluster_config(backend, cluster, &config, None)
        .await
        .unwrap();
}

pub async fn heartbeat(backend: &dyn Backend) {
    write_heartbeat(backend, SystemTime::now(), None)
        .await
        .unwrap();
}

pub async fn canary(backend: &dyn Backend, cluster: &str, prefix: &str) {
    write_sync_canary(backend, cluster, prefix, SystemTime::now(), None)
        .await
        .unwrap();
}

pub async fn put(backend: &dyn Backend, key: &str, value: &str) {
    backend
        .put(key, value.as_bytes().to_vec(), None)
        .await
        .unwrap();
}

/// A node record exactly as upstream writes it.
pub fn node_json(cluster: &str, node: &str, cluster_id: u32, ip: &str, pod_cidr: &str) -> String {
    format!(
        r#"{{"Name":"{node}","Cluster":"{cluster}","IPAddresses":[{{"Type":"InternalIP","IP":"{ip}"}}],"IPv4AllocCIDR":{{"IP":"{pod_cidr}","Mask":"////AA=="}},"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":{cluster_id},"Source":"local","EncryptionKey":0,"Labels":{{}},"Annotations":{{}},"NodeIdentity":0,"WireguardPubKey":"","BootID":""}}"#
    )
}

/// An ipcache entry exactly as upstream writes it.
pub fn ip_json(ip: &str, id: u32, host_ip: &str, pod: &str) -> String {
    format!(
        r#"{{"IP":"{ip}","Mask":null,"HostIP":"{host_ip}","ID":{id},"Key":0,"Metadata":"cilium-global:default:{pod}:1","K8sNamespace":"default","K8sPodName":"{pod}"}}"#
    )
}

/// A cluster service exactly as upstream writes it.
pub fn service_json(
    cluster: &str,
    name: &str,
    cluster_id: u32,
    shared: bool,
    backend: &str,
) -> String {
    format!(
        r#"{{"cluster":"{cluster}","namespace":"default","name":"{name}","frontends":{{"10.96.0.10":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"{backend}":{{"http":{{"Protocol":"TCP","Port":8080}}}}}},"labels":{{}},"selector":{{"app":"{name}"}},"includeExternal":true,"shared":{shared},"clusterID":{cluster_id}}}"#
    )
}

/// The label string of a pod identity of `cluster` (sorted by key, as upstream writes it).
pub fn identity_labels(app: &str, cluster: &str) -> String {
    format!(
        "k8s:app={app};k8s:io.cilium.k8s.policy.cluster={cluster};k8s:io.kubernetes.pod.namespace=default;"
    )
}

pub fn ip_key(s: &str) -> IpcacheKey {
    IpcacheKey::new(ClusterId::UNSET, s.parse().unwrap())
}
