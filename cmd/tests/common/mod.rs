//! A real agent (every actor, the REST server on a unix socket in a temp dir) over the fake
//! datapath, in local identity mode: no root, no kvstore.

use std::path::PathBuf;

use actors::identity::IdentityBackend;
use actors::policy::EnforcementMode;
use cilium_cmd::client::AgentClient;
use cilium_cmd::daemon::{Agent, AgentConfig, KvstoreMode, start_agent};
use cilium_cmd::server::{bind_socket, serve};
use datapath::fake::FakeDatapath;
use datapath::fake_link::FakeLinks;
use model::identity::{ClusterId, ClusterName};
use tokio::sync::oneshot;

// Each test binary uses a different subset of the fields.
#[allow(dead_code)]
pub struct TestAgent {
    /// Holds the socket and state; removed on drop.
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub client: AgentClient,
    pub fake: FakeDatapath,
    pub links: std::sync::Arc<FakeLinks>,
    agent: Option<Agent>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

#[allow(dead_code)]
impl TestAgent {
    /// Starts the agent; must run inside an actix system (`#[actix_rt::test]`).
    pub async fn start() -> TestAgent {
        let agent = TestAgent::start_unrestored().await;
        agent.restore().await;
        agent
    }

    /// Restores the (empty) previous state and marks the agent ready.
    pub async fn restore(&self) {
        self.agent
            .as_ref()
            .expect("agent running")
            .restore()
            .await
            .expect("agent restores");
    }

    /// The agent with its API served but its restore not run yet.
    pub async fn start_unrestored() -> TestAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run").join("cilium.sock");
        let fake = FakeDatapath::new();
        let config = AgentConfig {
            node_name: "node-a".to_owned(),
            cluster_name: ClusterName::new("test").expect("cluster name"),
            cluster_id: ClusterId::new(1),
            enforcement: EnforcementMode::Default,
            ipv4_range: Some("10.200.0.0/24".parse().expect("cidr")),
            state_dir: dir.path().join("state"),
            map_dir: dir.path().join("bpf/tc/globals"),
            identity_backend: IdentityBackend::Local,
            kvstore: KvstoreMode::Disabled,
            cluster: None,
            hubble_enabled: false,
        };
        std::fs::create_dir_all(&config.state_dir).expect("state dir");
        let links = std::sync::Arc::new(FakeLinks::new());
        let agent = start_agent(config, Box::new(fake.clone()), links.clone())
            .await
            .expect("agent starts");
        let listener = bind_socket(&socket).expect("bind");
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(serve(listener, agent.handles.clone(), async move {
            let _ = rx.await;
        }));
        TestAgent {
            client: AgentClient::new(&socket),
            _dir: dir,
            socket,
            fake,
            links,
            agent: Some(agent),
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn handles(&self) -> &cilium_cmd::daemon::AgentHandles {
        &self.agent.as_ref().expect("agent running").handles
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server");
        }
        if let Some(agent) = self.agent.take() {
            agent.stop();
        }
    }
}

#[allow(dead_code)]
pub const GOOD_POLICY: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
";

/// Unknown field `fromEndpointz`.
#[allow(dead_code)]
pub const BAD_POLICY: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpointz: [{matchLabels: {app: frontend}}]
";
