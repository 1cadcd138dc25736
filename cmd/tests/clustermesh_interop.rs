//! Interop: a remote cluster's state written by hand with `etcdctl`, byte for byte as upstream
//! Cilium writes it (cluster config, sync canaries, heartbeat, a node, identities, an ipcache
//! entry, a shared service), is imported by an agent of cluster c1 as upstream's agent would
//! import it, and what does not belong to the remote cluster is rejected with a warning.
//!
//! The agent runs in process over the fake datapath and fake node routes (no root), in kvstore
//! mode against its own private etcd, with `--clustermesh-config` pointing at a directory that
//! names cluster c3's private etcd. Everything c3 holds is written with the Debian `etcdctl`
//! binary, so no code of this project encodes the remote state.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use actors::identity::IdentityBackend;
use actors::ipcache::Source;
use actors::policy::EnforcementMode;
use cilium_cmd::client::AgentClient;
use cilium_cmd::daemon::{
    Agent, AgentConfig, ClusterMembership, KvstoreMode, MeshMembership, start_agent,
};
use cilium_cmd::kvstore_mode::EtcdConnector;
use cilium_cmd::server::{bind_socket, serve};
use clustermesh::RemoteClusterStatus;
use datapath::api::{Frontend, IpcacheKey, MapKey, MapValue, Protocol};
use datapath::fake::FakeDatapath;
use datapath::fake_link::FakeLinks;
use datapath::routes::fake::FakeNodeRoutes;
use datapath::routes::{NodeRoute, RoutingMode};
use kvstore::Backend;
use kvstore::allocator::IdentityAllocator;
use kvstore::lease::LeaseKeeper;
use kvstore::testing::etcd::EtcdServer;
use model::identity::{ClusterId, ClusterName, NumericIdentity};
use tokio::sync::oneshot;

/// How long any import step may take; the mesh polls its directory every second.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(30);

const LOCAL_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

/// Cluster c3's state, exactly as upstream's agents and clustermesh-apiserver write it.
const C3_CLUSTER_CONFIG: &str =
    r#"{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#;
const C3_NODE_KEY: &str = "cilium/state/nodes/v1/c3/n1";
const C3_NODE: &str = r#"{"Name":"n1","Cluster":"c3","IPAddresses":[{"Type":"InternalIP","IP":"192.168.3.1"},{"Type":"CiliumInternalIP","IP":"10.3.0.1"}],"IPv4AllocCIDR":{"IP":"10.3.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"10.3.0.20","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":3,"Source":"local","EncryptionKey":0,"Labels":{"kubernetes.io/hostname":"n1"},"Annotations":null,"WireguardPubKey":"","BootID":"5f0c6d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"}"#;
const C3_IDENTITY_KEY: &str = "cilium/state/identities/v1/id/196609";
const C3_IDENTITY_LABELS: &str =
    "k8s:app=remote;k8s:io.cilium.k8s.policy.cluster=c3;k8s:io.kubernetes.pod.namespace=default;";
/// In cluster 2's range (131072..196607): c3 may not publish it.
const FOREIGN_IDENTITY_KEY: &str = "cilium/state/identities/v1/id/131073";
const FOREIGN_IDENTITY_LABELS: &str =
    "k8s:app=intruder;k8s:io.cilium.k8s.policy.cluster=c3;k8s:io.kubernetes.pod.namespace=default;";
/// A local-scope id of cluster 0: not c3's either.
const LOW_IDENTITY_KEY: &str = "cilium/state/identities/v1/id/300";
const C3_IP_KEY: &str = "cilium/state/ip/v1/default/10.3.0.5";
const C3_IP: &str = r#"{"IP":"10.3.0.5","Mask":null,"HostIP":"192.168.3.1","ID":196609,"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"remote-pod","K8sServiceAccount":"","NamedPorts":null}"#;
/// An endpoint claiming cluster 2's identity: rejected like the identity itself.
const FOREIGN_IP_KEY: &str = "cilium/state/ip/v1/default/10.3.0.6";
const FOREIGN_IP: &str = r#"{"IP":"10.3.0.6","Mask":null,"HostIP":"192.168.3.1","ID":131073,"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"intruder","K8sServiceAccount":"","NamedPorts":null}"#;
const C3_SERVICE_KEY: &str = "cilium/state/services/v1/c3/default/echo";
const C3_SERVICE: &str = r#"{"cluster":"c3","namespace":"default","name":"echo","frontends":{"10.97.0.50":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.3.0.5":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{"app":"echo"},"includeExternal":true,"shared":true,"clusterID":3}"#;
/// c1's own record of the same service, marked global: it gets c3's backends.
const C1_SERVICE_KEY: &str = "cilium/state/services/v1/c1/default/echo";
const C1_SERVICE: &str = r#"{"cluster":"c1","namespace":"default","name":"echo","frontends":{"10.96.0.50":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.1.0.9":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{"app":"echo"},"includeExternal":true,"shared":true,"clusterID":1}"#;
/// The resources c3's clustermesh-apiserver writes a sync canary for.
const CANARY_PREFIXES: [&str; 4] = [
    "cilium/state/nodes/v1",
    "cilium/state/services/v1",
    "cilium/state/identities/v1",
    "cilium/state/ip/v1",
];

/// Captures the agent's log so the test can see the warnings about rejected values.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An agent of cluster c1 in kvstore mode with a mesh directory, its API on a unix socket.
struct MeshAgent {
    _dir: tempfile::TempDir,
    client: AgentClient,
    fake: FakeDatapath,
    routes: FakeNodeRoutes,
    agent: Agent,
    shutdown: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<io::Result<()>>,
}

impl MeshAgent {
    async fn start(local: &EtcdServer, mesh_dir: &Path) -> MeshAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend: Arc<dyn Backend> = Arc::new(local.client().await);
        let lease = LeaseKeeper::start(Arc::clone(&backend), Duration::from_secs(30))
            .await
            .expect("lease");
        let allocator = Arc::new(
            IdentityAllocator::new(
                Arc::clone(&backend),
                ClusterId::new(1),
                LOCAL_NODE_IP.to_string(),
                lease.lease(),
                u64::from(std::process::id()),
            )
            .await
            .expect("identity allocator"),
        );
        let routes = FakeNodeRoutes::new(RoutingMode::Tunnel);
        let fake = FakeDatapath::new();
        let config = AgentConfig {
            node_name: "node-a".to_owned(),
            cluster_name: ClusterName::new("c1").expect("cluster name"),
            cluster_id: ClusterId::new(1),
            enforcement: EnforcementMode::Default,
            ipv4_range: Some("10.1.0.0/24".parse().expect("cidr")),
            state_dir: dir.path().join("state"),
            map_dir: dir.path().join("bpf/tc/globals"),
            identity_backend: IdentityBackend::Kvstore {
                allocator,
                backend: Arc::clone(&backend),
            },
            kvstore: KvstoreMode::Etcd {
                endpoints: vec![local.endpoint()],
            },
            cluster: Some(ClusterMembership {
                backend,
                lease: Arc::new(lease),
                node_ip: LOCAL_NODE_IP,
                routes: Arc::new(routes.clone()),
                mesh: Some(MeshMembership {
                    config_dir: mesh_dir.to_owned(),
                    connector: Arc::new(EtcdConnector),
                }),
            }),
            hubble_enabled: false,
        };
        std::fs::create_dir_all(&config.state_dir).expect("state dir");
        let agent = start_agent(config, Box::new(fake.clone()), Arc::new(FakeLinks::new()))
            .await
            .expect("agent starts");
        agent.restore().await.expect("agent restores");
        let socket = dir.path().join("run").join("cilium.sock");
        let listener = bind_socket(&socket).expect("bind");
        let (shutdown, rx) = oneshot::channel();
        let server = tokio::spawn(serve(listener, agent.handles.clone(), async move {
            let _ = rx.await;
        }));
        MeshAgent {
            client: AgentClient::new(&socket),
            _dir: dir,
            fake,
            routes,
            agent,
            shutdown,
            server,
        }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.server.await.expect("server task").expect("server");
        self.agent.stop();
    }

    async fn c3_status(&self) -> Option<RemoteClusterStatus> {
        let health = self.client.healthz().await.expect("GET /healthz");
        health
            .cluster_mesh
            .expect("clustermesh status in kvstore mode with a mesh")
            .clusters
            .into_iter()
            .find(|c| c.name.as_str() == "c3")
    }

    /// The fake datapath's ipcache entry of `ip`/32.
    fn ipcache_entry(&self, ip: Ipv4Addr) -> Option<datapath::api::RemoteEndpointInfo> {
        let key = IpcacheKey::new(ClusterId::UNSET, IpAddr::V4(ip).into());
        match self.fake.get(&MapKey::Ipcache(key)) {
            Some(MapValue::Ipcache(info)) => Some(info),
            _ => None,
        }
    }

    /// The backends of the service with `frontend`, as the service manager holds them.
    async fn backends_of(&self, frontend: Frontend) -> Vec<String> {
        let services = self
            .agent
            .handles
            .services
            .send(actors::service::ListServices)
            .await
            .expect("service manager");
        let mut backends: Vec<String> = services
            .into_iter()
            .filter(|s| s.frontend == frontend)
            .flat_map(|s| s.backends.into_iter().map(|b| b.addr.to_string()))
            .collect();
        backends.sort();
        backends
    }
}

/// Polls `check` every 50 ms until it holds, failing with `what` and the end of the agent's
/// log after [`IMPORT_TIMEOUT`].
async fn eventually<F, Fut>(log: &LogBuffer, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + IMPORT_TIMEOUT;
    while !check().await {
        if Instant::now() >= deadline {
            let text = log.text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!("not within {IMPORT_TIMEOUT:?}: {what}; end of the log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put(etcd: &EtcdServer, key: &str, value: &str) {
    let out = etcd
        .etcdctl(&["put", key, value])
        .await
        .expect("etcdctl put");
    assert_eq!(out.trim(), "OK", "etcdctl put {key}");
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[actix_rt::test]
async fn hand_written_upstream_state_of_a_remote_cluster_is_imported() {
    let log = LogBuffer::default();
    let writer = log.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber of this test binary");

    let c1_etcd = EtcdServer::start().await.expect("etcd of c1");
    let c3_etcd = EtcdServer::start().await.expect("etcd of c3");

    // Cluster c3 as its agents and clustermesh-apiserver leave it, minus the sync canaries.
    put(&c3_etcd, "cilium/cluster-config/c3", C3_CLUSTER_CONFIG).await;
    put(&c3_etcd, "cilium/.heartbeat", &rfc3339_now()).await;
    put(&c3_etcd, C3_NODE_KEY, C3_NODE).await;
    put(&c3_etcd, C3_IDENTITY_KEY, C3_IDENTITY_LABELS).await;
    put(&c3_etcd, FOREIGN_IDENTITY_KEY, FOREIGN_IDENTITY_LABELS).await;
    put(&c3_etcd, LOW_IDENTITY_KEY, C3_IDENTITY_LABELS).await;
    put(&c3_etcd, C3_IP_KEY, C3_IP).await;
    put(&c3_etcd, FOREIGN_IP_KEY, FOREIGN_IP).await;
    put(&c3_etcd, C3_SERVICE_KEY, C3_SERVICE).await;

    let c1_client = c1_etcd.client().await;
    c1_client
        .put(C1_SERVICE_KEY, C1_SERVICE.as_bytes().to_vec(), None)
        .await
        .expect("c1's global service");

    let dir = tempfile::tempdir().expect("temp dir");
    let mesh_dir = dir.path().join("clustermesh");
    std::fs::create_dir(&mesh_dir).expect("mesh dir");
    std::fs::write(
        mesh_dir.join("c3"),
        format!("endpoints:\n- {}\n", c3_etcd.endpoint()),
    )
    .expect("c3's etcd config");

    let agent = MeshAgent::start(&c1_etcd, &mesh_dir).await;
    let local_frontend = Frontend::new("10.96.0.50:80".parse().expect("addr"), Protocol::TCP);
    // The identity: GET /identity lists it with its labels.
    eventually(&log, "c3's identity 196609 in GET /identity", || async {
        let identities: Vec<cilium_cmd::api::Identity> =
            agent.client.get("/identity").await.expect("GET /identity");
        identities.iter().any(|i| i.id == 196_609)
    })
    .await;
    let identity: cilium_cmd::api::Identity = agent
        .client
        .get("/identity/196609")
        .await
        .expect("GET /identity/196609");
    assert_eq!(
        identity.labels,
        [
            "k8s:app=remote",
            "k8s:io.cilium.k8s.policy.cluster=c3",
            "k8s:io.kubernetes.pod.namespace=default",
        ]
    );

    // The ipcache entry: identity and tunnel endpoint in the datapath, claimed by clustermesh.
    eventually(&log, "10.3.0.5 in the datapath's ipcache", || async {
        agent.ipcache_entry(Ipv4Addr::new(10, 3, 0, 5)).is_some()
    })
    .await;
    let info = agent
        .ipcache_entry(Ipv4Addr::new(10, 3, 0, 5))
        .expect("ipcache entry");
    assert_eq!(info.identity, NumericIdentity::new(196_609));
    assert_eq!(
        info.tunnel_endpoint,
        Some(IpAddr::V4(Ipv4Addr::new(192, 168, 3, 1)))
    );
    let ipcache = agent
        .agent
        .handles
        .ipcache
        .send(actors::ipcache::Dump)
        .await
        .expect("ipcache actor");
    let claim = ipcache
        .entries
        .iter()
        .find(|e| e.key == IpcacheKey::new(ClusterId::UNSET, "10.3.0.5/32".parse().expect("net")))
        .expect("10.3.0.5 in the ipcache dump");
    assert_eq!(claim.source, Source::ClusterMesh);
    let k8s = claim.entry.k8s.as_ref().expect("pod metadata");
    assert_eq!(
        (k8s.namespace.as_str(), k8s.pod_name.as_str()),
        ("default", "remote-pod")
    );

    // The node: listed with c3's name, and a route to its pod CIDR via its address.
    eventually(&log, "a route to c3's node n1", || async {
        agent.routes.routes().contains(&NodeRoute {
            pod_cidr: "10.3.0.0/24".parse().expect("net"),
            node_ip: Ipv4Addr::new(192, 168, 3, 1),
        })
    })
    .await;
    let nodes = agent
        .agent
        .handles
        .nodes
        .as_ref()
        .expect("node manager in kvstore mode")
        .send(actors::node::ListNodes)
        .await
        .expect("node manager");
    assert!(
        nodes.iter().any(|n| n.cluster == "c3" && n.name == "n1"),
        "{nodes:?}"
    );

    // The global service: c1's own frontend, with c3's shared backend next to the local one.
    eventually(&log, "c3's backend in c1's global service", || async {
        agent.backends_of(local_frontend).await == ["10.1.0.9:8080", "10.3.0.5:8080"]
    })
    .await;
    // c3's frontend is not a frontend here.
    let remote_frontend = Frontend::new("10.97.0.50:80".parse().expect("addr"), Protocol::TCP);
    assert!(agent.backends_of(remote_frontend).await.is_empty());

    // Connected and ready, but not synced: c3 has written no sync canary yet.
    let status = agent.c3_status().await.expect("c3 in the status");
    assert!(status.connected && status.ready, "{status:?}");
    assert!(
        !status.synced.nodes
            && !status.synced.endpoints
            && !status.synced.identities
            && !status.synced.services,
        "{status:?}"
    );
    let config = status.config.as_ref().expect("c3's cluster config");
    assert_eq!(config.cluster_id, 3);
    assert!(config.sync_canaries && !config.kvstoremesh);

    // The canaries, as c3's clustermesh-apiserver writes them once its initial sync is done.
    for prefix in CANARY_PREFIXES {
        put(
            &c3_etcd,
            &format!("cilium/synced/c3/{prefix}"),
            &rfc3339_now(),
        )
        .await;
    }
    eventually(&log, "c3 synced in the status", || async {
        agent.c3_status().await.is_some_and(|s| {
            s.synced.nodes && s.synced.endpoints && s.synced.identities && s.synced.services
        })
    })
    .await;
    let status = agent.c3_status().await.expect("c3 in the status");
    assert_eq!(
        (
            status.num_nodes,
            status.num_endpoints,
            status.num_identities,
            status.num_shared_services
        ),
        (1, 1, 1, 1),
        "{status:?}"
    );
    assert_eq!(status.num_failures, 0, "{status:?}");

    // Rejections: identities outside c3's range and the entry that claims one, with warnings.
    // Every listing is complete once c3 counts as synced, so nothing is still on its way.
    for id in [131_073, 300] {
        let found = agent
            .agent
            .handles
            .identity
            .send(actors::identity::LookupIdentity {
                id: NumericIdentity::new(id),
            })
            .await
            .expect("identity actor");
        assert_eq!(found, None, "identity {id} of c3 must be rejected");
    }
    assert_eq!(agent.ipcache_entry(Ipv4Addr::new(10, 3, 0, 6)), None);
    let text = log.text();
    for key in [FOREIGN_IDENTITY_KEY, LOW_IDENTITY_KEY, FOREIGN_IP_KEY] {
        assert!(
            text.lines()
                .any(|l| l.contains("WARN") && l.contains("rejecting") && l.contains(key)),
            "no warning about {key} in the log:\n{text}"
        );
    }

    // Upstream deletes the key of a pod that is gone: the entry leaves the datapath, and the
    // service falls back to its local backend when c3 stops sharing it.
    c3_etcd
        .etcdctl(&["del", C3_IP_KEY])
        .await
        .expect("etcdctl del");
    eventually(
        &log,
        "10.3.0.5 gone from the datapath's ipcache",
        || async { agent.ipcache_entry(Ipv4Addr::new(10, 3, 0, 5)).is_none() },
    )
    .await;
    put(
        &c3_etcd,
        C3_SERVICE_KEY,
        &C3_SERVICE.replace(r#""shared":true"#, r#""shared":false"#),
    )
    .await;
    eventually(
        &log,
        "c3's backend gone once c3 stops sharing echo",
        || async { agent.backends_of(local_frontend).await == ["10.1.0.9:8080"] },
    )
    .await;

    agent.stop().await;
    c3_etcd.stop().await.expect("stop c3's etcd");
    c1_etcd.stop().await.expect("stop c1's etcd");
}
