//! The simulated world and the run of a scenario over it: clusters (one memory kvstore each),
//! their nodes, the desired state the harness keeps while it changes the world, the wait for
//! quiescence after each step, and the report.
//!
//! Everything runs on one current-thread tokio runtime with paused time under an actix
//! system, so virtual time advances only when every actor of every node is idle, and a run is
//! a function of its seed: one `fastrand::Rng` seeded from it makes every choice (which node,
//! which pod, which labels, the seeds of the identity allocators).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actors::clusterstate::{PolicyRef, encode_policy};
use actors::endpoint::{CreateEndpoint, DeleteEndpoint, EndpointCreated, EndpointRef};
use datapath::api::{MapKey, MapName, MapValue, error_chain};
use ipnet::Ipv4Net;
use kvstore::Backend;
use kvstore::clock::TokioClock;
use kvstore::keys::{ClusterService, L4Addr, PortConfiguration, StoreValue, service_key};
use kvstore::memory::MemoryStore;
use model::identity::{ClusterId, ClusterName};
use model::labels::Labels;
use model::policy::parse_documents;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backend::{OpCounter, RestartSignal, SimBackend, WatchLoss};
use crate::external::{ExternalStore, ExternalStoreError, ExternalStores};
use crate::fault::{self, NodeFault};
use crate::invariant::{Invariants, MapSizes};
use crate::mesh::{MeshStore, MeshStores, start_publisher, write_config_dir};
use crate::node::{MeshSpec, NodeError, NodeSpec, SimNode};
use crate::oracle::{
    self, ClusterIdentities, Desired, NODE_SUPERNET, POD_SUPERNET, PodRecord, PolicySpec,
    ServiceSpec,
};
use crate::report::{Failure, Percentiles, PodCounts, Report, StepReport, peak_rss_kib, rss_kib};
use crate::scenario::{Scenario, Step};

/// How often the harness looks for changes while it waits for quiescence.
const TICK: Duration = Duration::from_millis(1);
/// The longest the harness sleeps between two looks while nothing changes.
const MAX_TICK: Duration = Duration::from_millis(500);
/// Pod CIDRs are the /24s of [`oracle::POD_SUPERNET`]: that many nodes in a run at most.
const MAX_NODES: u32 = 1 << 16;
/// Policy churn writes documents named `sim-policy-<0..POLICY_SLOTS>`.
const POLICY_SLOTS: u32 = 8;
/// A mesh partition at most this long keeps the imported state everywhere (ClusterMesh's
/// drain timeout is 5 minutes).
const MESH_KEEPS_STATE: Duration = Duration::from_secs(240);
/// A mesh partition at least this long has been drained everywhere (the drain timeout plus
/// the time to notice the loss).
const MESH_DRAINED_STATE: Duration = Duration::from_secs(400);
/// How long after a partition heals every node has reconnected (the longest backoff, 30 s).
const MESH_RECONNECT: Duration = Duration::from_secs(35);
/// How long after a watch ended its consumer has opened it again: the longest backoff of the
/// kvstore watchers (30 s) and a little more.
const WATCH_REOPEN: Duration = Duration::from_secs(31);
/// How often the harness asks to delete a pod before it gives up, and how long it waits in
/// between (the kubelet retries a failed CNI DEL for as long as the pod exists).
const DELETE_ATTEMPTS: u32 = 10;
const DELETE_RETRY: Duration = Duration::from_secs(1);
/// Service churn writes services named `sim-svc-<0..SERVICE_SLOTS>`.
const SERVICE_SLOTS: u8 = 6;
/// Every simulated service listens on TCP 80 and forwards to TCP 8080 of its pods.
const SERVICE_PORT: u16 = 80;
const SERVICE_BACKEND_PORT: u16 = 8080;
/// The namespace of every simulated pod and policy.
const NAMESPACE: &str = "default";

/// Everything that can stop a run before it has a report.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid scenario: {reason}")]
    InvalidScenario { reason: String },
    #[error("scenario file {path}: {message}")]
    ScenarioFile { path: String, message: String },
    #[error("cannot build the simulation runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot create the simulation's state directory")]
    StateDir(#[source] std::io::Error),
    #[error("more than {max} nodes: the pod CIDRs of 10.0.0.0/8 are used up")]
    TooManyNodes { max: u32 },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot write the ClusterMesh configuration of {cluster}")]
    MeshConfig {
        cluster: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the clustermesh-apiserver publisher of {cluster}")]
    Publisher {
        cluster: String,
        #[source]
        source: clustermesh::apiserver::PublisherError,
    },
    #[error("cannot encode the policy document {name}")]
    EncodePolicy {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the service {name}")]
    EncodeService {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    External(#[from] ExternalStoreError),
    #[error("the generated policy document {name} does not parse")]
    GeneratedPolicy {
        name: String,
        #[source]
        source: model::policy::PolicyError,
    },
}

/// A node that was lost, as the oracle needs to remember it.
#[derive(Debug, Clone)]
pub struct LostNode {
    pub name: String,
    pub node_ip: Ipv4Addr,
}

/// One cluster: its kvstore and its live nodes.
#[derive(Debug)]
pub struct SimCluster {
    pub index: usize,
    pub name: ClusterName,
    pub id: ClusterId,
    pub store: ClusterStore,
    /// The harness's own client (policy writes, lease revocation): not counted as node work.
    admin: Arc<dyn Backend>,
    ops: Arc<OpCounter>,
    /// Live nodes, in start order.
    pub nodes: Vec<SimNode>,
    pub lost: Vec<LostNode>,
    /// Nodes ever started, for names and fault placement.
    started: usize,
    /// With a mesh: this cluster's nodes' configuration directory.
    mesh_dir: Option<PathBuf>,
    /// With a mesh: keeps the cluster's clustermesh-apiserver publisher running.
    _publisher: Option<watch::Sender<bool>>,
    /// `true` cuts the cluster's kvstore off from the other clusters' nodes.
    mesh_partition: watch::Sender<bool>,
    /// Restarts of the cluster's kvstore, as its own nodes' watches see them.
    restart: RestartSignal,
}

/// Where a cluster keeps its state.
#[derive(Debug, Clone)]
pub enum ClusterStore {
    /// The embedded memory store, on the simulation's virtual time.
    Memory(MemoryStore),
    /// An external store ([`Scenario::run_on`]).
    External(Arc<dyn ExternalStore>),
}

impl ClusterStore {
    /// The memory store, which the mesh wiring needs.
    pub fn memory(&self) -> Option<&MemoryStore> {
        match self {
            ClusterStore::Memory(store) => Some(store),
            ClusterStore::External(_) => None,
        }
    }

    async fn client(&self) -> Result<Arc<dyn Backend>, SimError> {
        match self {
            ClusterStore::Memory(store) => Ok(Arc::new(store.client())),
            ClusterStore::External(store) => Ok(store.client().await?),
        }
    }

    /// Expires due leases (an external store does so on its own).
    fn expire_leases(&self) {
        if let ClusterStore::Memory(store) = self {
            store.expire_leases();
        }
    }

    /// Starts (`true`) or ends an outage: the memory store stops answering; an external
    /// one is stopped and started again.
    async fn set_unavailable(&self, unavailable: bool) -> Result<(), SimError> {
        match self {
            ClusterStore::Memory(store) => store.set_unavailable(unavailable),
            ClusterStore::External(store) if unavailable => store.stop().await?,
            ClusterStore::External(store) => store.start().await?,
        }
        Ok(())
    }
}

/// A pod creation the harness is waiting for.
#[derive(Debug)]
struct PendingPod {
    name: String,
    cluster: usize,
    node: String,
    labels: Labels,
}

/// The answer of an operation the harness started without waiting for it.
#[derive(Debug)]
enum OpResult {
    Created {
        pod: PendingPod,
        result: Result<EndpointCreated, String>,
        latency: Duration,
    },
    Deleted {
        pod: String,
        result: Result<(), String>,
    },
}

struct World<'a> {
    scenario: &'a Scenario,
    seed: u64,
    rng: fastrand::Rng,
    dir: TempDir,
    clusters: Vec<SimCluster>,
    next_global: u32,
    datapath_writes: Arc<AtomicU64>,
    mesh_stores: Option<MeshStores>,
    desired: Desired,
    /// Each cluster's identities as last read from its kvstore (kept through an outage).
    identities: Vec<ClusterIdentities>,
    results_tx: mpsc::UnboundedSender<OpResult>,
    results_rx: mpsc::UnboundedReceiver<OpResult>,
    in_flight: usize,
    finished_ops: u64,
    next_pod: u64,
    deleting: BTreeSet<String>,
    pods: PodCounts,
    create_latency: Vec<Duration>,
    policy_writes: u64,
    policy_write_failures: u64,
    service_writes: u64,
    service_write_failures: u64,
    steps: Vec<StepReport>,
    convergence: Vec<Duration>,
    start: Instant,
    /// Makes the choices of injected faults, apart from `rng` so that turning faults on does
    /// not change the rest of the run's choices.
    fault_rng: fastrand::Rng,
    invariants: Invariants,
    /// The first broken invariant: it ends the run.
    broken: Option<oracle::Violation>,
    last_invariant_check: Instant,
    /// Where the next continuous check starts in the list of live nodes.
    invariant_cursor: usize,
    /// Every live node's lost watch events, by node name.
    watch_loss: BTreeMap<String, WatchLoss>,
}

/// Seeds [`World::fault_rng`] from the run's seed.
const FAULT_SEED: u64 = 0x5eed_fa17_0000_0001;

impl Scenario {
    /// Runs the scenario with `seed` on its own paused-time runtime and reports. A failing
    /// oracle is part of the report ([`Report::failure`]), not an error. Builds its own runtime
    /// and actix system: call it from plain (non-async) code, such as a `#[test]` or `main`.
    pub fn run(&self, seed: u64) -> Result<Report, SimError> {
        self.validate()?;
        run_on_runtime(self, seed, None)
    }

    /// Runs the scenario with every cluster on an external kvstore `stores` starts (see
    /// [`crate::external`]): on real time, so neither the run nor its hash is a function of
    /// the seed any more, and without a mesh. Otherwise as [`Scenario::run`].
    pub fn run_on(&self, seed: u64, stores: &dyn ExternalStores) -> Result<Report, SimError> {
        self.validate()?;
        if self.mesh {
            return Err(SimError::InvalidScenario {
                reason: "the mesh needs the memory kvstore".to_owned(),
            });
        }
        run_on_runtime(self, seed, Some(stores))
    }

    fn validate(&self) -> Result<(), SimError> {
        let invalid = |reason: &str| {
            Err(SimError::InvalidScenario {
                reason: reason.to_owned(),
            })
        };
        if self.clusters == 0 || self.clusters > usize::from(u8::MAX) {
            return invalid("clusters must be between 1 and 255");
        }
        if self.nodes == 0 {
            return invalid("every cluster needs at least one node");
        }
        if self.apps == 0 {
            return invalid("pods need at least one app label");
        }
        if self.pods_per_node > 250 {
            return invalid("a node's /24 holds at most 250 pods");
        }
        let fraction = |value: f64| (0.0..=1.0).contains(&value);
        if !fraction(self.kvstore_faults.error_rate) || !fraction(self.datapath_faults.error_rate) {
            return invalid("fault error rates must be between 0 and 1");
        }
        if let Some(unknown) = self
            .kvstore_faults
            .exempt
            .iter()
            .find(|op| !crate::backend::REQUESTS.contains(&op.as_str()))
        {
            return Err(SimError::InvalidScenario {
                reason: format!(
                    "kvstore_faults.exempt names {unknown:?}, not one of {}",
                    crate::backend::REQUESTS.join(", ")
                ),
            });
        }
        for (index, step) in self.steps.iter().enumerate() {
            let step_invalid = |reason: &str| {
                Err(SimError::InvalidScenario {
                    reason: format!("step {} ({}): {reason}", index + 1, step.name()),
                })
            };
            if let Step::PodChurn { rate, .. }
            | Step::PolicyChurn { rate, .. }
            | Step::ServiceChurn { rate, .. }
            | Step::WatchEventLoss { rate, .. } = step
                && !(rate.is_finite() && *rate > 0.0 && *rate <= 10_000.0)
            {
                return step_invalid("churn rates must be between 0 and 10000 per second");
            }
            if matches!(step, Step::ClusterDisconnect { .. }) && !(self.mesh && self.clusters > 1) {
                return step_invalid("cluster-disconnect needs a mesh of at least two clusters");
            }
            if let Step::ServiceChurn { global: true, .. } = step
                && !self.mesh
            {
                return step_invalid("global services need a mesh");
            }
        }
        for fault in &self.faults {
            if fault.cluster >= self.clusters || fault.node >= self.nodes {
                return invalid("a fault names a node that the scenario does not start");
            }
        }
        Ok(())
    }
}

/// Runs the world on a runtime of its own: paused time for the memory store, real time for an
/// external one.
fn run_on_runtime(
    scenario: &Scenario,
    seed: u64,
    stores: Option<&dyn ExternalStores>,
) -> Result<Report, SimError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(stores.is_none())
        .build()
        .map_err(SimError::Runtime)?;
    let system = actix_rt::System::with_tokio_rt(move || runtime);
    let wall = std::time::Instant::now();
    let mut report = system.block_on(run_world(scenario, seed, stores))?;
    report.wall_secs = wall.elapsed().as_secs_f64();
    report.real_time = stores.is_some();
    Ok(report)
}

async fn run_world(
    scenario: &Scenario,
    seed: u64,
    stores: Option<&dyn ExternalStores>,
) -> Result<Report, SimError> {
    let dir = tempfile::Builder::new()
        .prefix("cilium-sim-")
        .tempdir()
        .map_err(SimError::StateDir)?;
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let mut clusters = Vec::with_capacity(scenario.clusters);
    for index in 0..scenario.clusters {
        let id = u8::try_from(index + 1).map_err(|_| SimError::InvalidScenario {
            reason: "clusters must be between 1 and 255".to_owned(),
        })?;
        let name =
            ClusterName::new(format!("cluster-{id}")).map_err(|_| SimError::InvalidScenario {
                reason: format!("cluster-{id} is not a valid cluster name"),
            })?;
        let store = match stores {
            None => ClusterStore::Memory(MemoryStore::new(Arc::new(TokioClock::new()))),
            Some(stores) => ClusterStore::External(stores.start_cluster(name.as_str()).await?),
        };
        clusters.push(SimCluster {
            index,
            name,
            id: ClusterId::new(id),
            admin: store.client().await?,
            store,
            ops: Arc::new(OpCounter::default()),
            nodes: Vec::new(),
            lost: Vec::new(),
            started: 0,
            mesh_dir: None,
            _publisher: None,
            mesh_partition: watch::Sender::new(false),
            restart: RestartSignal::default(),
        });
    }
    let mut mesh_stores = None;
    if scenario.mesh {
        let names: Vec<String> = clusters
            .iter()
            .map(|c| c.name.as_str().to_owned())
            .collect();
        for cluster in &mut clusters {
            let local = cluster.name.as_str().to_owned();
            let Some(store) = cluster.store.memory() else {
                return Err(SimError::InvalidScenario {
                    reason: "the mesh needs the memory kvstore".to_owned(),
                });
            };
            let dir = write_config_dir(dir.path(), &local, &names).map_err(|source| {
                SimError::MeshConfig {
                    cluster: local.clone(),
                    source,
                }
            })?;
            cluster.mesh_dir = Some(dir);
            cluster._publisher = Some(
                start_publisher(cluster.name.clone(), cluster.id, store).map_err(|source| {
                    SimError::Publisher {
                        cluster: local,
                        source,
                    }
                })?,
            );
        }
        mesh_stores = Some(Arc::new(
            clusters
                .iter()
                .filter_map(|c| {
                    let remote = MeshStore {
                        store: c.store.memory()?.clone(),
                        partition: c.mesh_partition.subscribe(),
                    };
                    Some((c.name.as_str().to_owned(), remote))
                })
                .collect(),
        ));
    }
    let world = World {
        scenario,
        seed,
        rng: fastrand::Rng::with_seed(seed),
        dir,
        desired: Desired {
            policies: vec![BTreeMap::new(); clusters.len()],
            services: vec![BTreeMap::new(); clusters.len()],
            mesh: scenario.mesh,
            ..Desired::default()
        },
        mesh_stores,
        identities: vec![BTreeMap::new(); clusters.len()],
        clusters,
        next_global: 0,
        datapath_writes: Arc::new(AtomicU64::new(0)),
        results_tx,
        results_rx,
        in_flight: 0,
        finished_ops: 0,
        next_pod: 0,
        deleting: BTreeSet::new(),
        pods: PodCounts::default(),
        create_latency: Vec::new(),
        policy_writes: 0,
        policy_write_failures: 0,
        service_writes: 0,
        service_write_failures: 0,
        steps: Vec::new(),
        convergence: Vec::new(),
        start: Instant::now(),
        fault_rng: fastrand::Rng::with_seed(seed ^ FAULT_SEED),
        invariants: Invariants::new(),
        broken: None,
        last_invariant_check: Instant::now(),
        invariant_cursor: 0,
        watch_loss: BTreeMap::new(),
    };
    world.run().await
}

impl World<'_> {
    async fn run(mut self) -> Result<Report, SimError> {
        let mut failure = None;
        for cluster in 0..self.clusters.len() {
            self.add_nodes(cluster, self.scenario.nodes).await?;
        }
        let started = Instant::now();
        if let Some(f) = self
            .finish_step("setup".to_owned(), started, Duration::ZERO)
            .await
        {
            failure = Some(f);
        }
        if failure.is_none() {
            for step in &self.scenario.steps {
                if let Some(f) = self.apply(step).await? {
                    failure = Some(f);
                    break;
                }
            }
        }
        Ok(self.report(failure))
    }

    /// Starts `count` nodes in `cluster`, each with the scenario's pods (whose creations run
    /// on while this returns).
    async fn add_nodes(&mut self, cluster: usize, count: usize) -> Result<(), SimError> {
        for _ in 0..count {
            let node = self.start_node(cluster).await?;
            for _ in 0..self.scenario.pods_per_node {
                self.create_pod(cluster, &node);
            }
        }
        Ok(())
    }

    async fn start_node(&mut self, index: usize) -> Result<String, SimError> {
        let global = self.next_global;
        if global >= MAX_NODES {
            return Err(SimError::TooManyNodes { max: MAX_NODES });
        }
        self.next_global += 1;
        let node_seed = self.rng.u64(..);
        let [_, _, high, low] = global.to_be_bytes();
        let pod_cidr = Ipv4Net::new_assert(Ipv4Addr::new(10, high, low, 0), 24);
        let node_ip = Ipv4Addr::from(u32::from(NODE_SUPERNET.network()) + global + 1);
        let writes = Arc::clone(&self.datapath_writes);
        let state_root = self.dir.path().to_owned();
        let scenario = self.scenario;
        let cluster = &mut self.clusters[index];
        let ordinal = cluster.started;
        cluster.started += 1;
        let name = format!("{}-node-{ordinal}", cluster.name.as_str());
        let spec = NodeSpec {
            cluster: cluster.name.clone(),
            cluster_id: cluster.id,
            name: name.clone(),
            node_ip,
            pod_cidr,
            state_dir: state_root.join(&name),
            lease_ttl: scenario.lease_ttl,
            seed: node_seed,
            fault: scenario
                .faults
                .iter()
                .find(|f| f.cluster == index && f.node == ordinal)
                .map(|f| f.fault),
            mesh: match (&cluster.mesh_dir, &self.mesh_stores) {
                (Some(config_dir), Some(stores)) => Some(MeshSpec {
                    config_dir: config_dir.clone(),
                    stores: Arc::clone(stores),
                }),
                _ => None,
            },
        };
        let partition = watch::Sender::new(false);
        let backend = SimBackend::new(
            cluster.store.client().await?,
            Arc::clone(&cluster.ops),
            scenario.kvstore_latency,
            partition.subscribe(),
        )
        .with_faults(scenario.kvstore_faults.clone(), node_seed ^ FAULT_SEED)
        .with_restarts(&cluster.restart);
        self.watch_loss
            .insert(name.clone(), backend.watch_loss().clone());
        self.invariants
            .node_started(pod_cidr, cluster.name.as_str(), cluster.id);
        let failing = backend.failing();
        let node = SimNode::start(spec, Arc::new(backend), partition, writes).await?;
        failing.store(true, Ordering::SeqCst);
        cluster.nodes.push(node);
        Ok(name)
    }

    /// Creates a pod with one of the scenario's apps on `node`.
    fn create_pod(&mut self, cluster: usize, node: &str) {
        let app = format!("app-{}", self.rng.u32(0..self.scenario.apps));
        self.create_pod_with_app(cluster, node, app);
    }

    fn create_pod_with_app(&mut self, cluster: usize, node: &str, app: String) {
        let Some(addr) = self.clusters[cluster]
            .nodes
            .iter()
            .find(|n| n.spec.name == node)
            .map(|n| n.actors.endpoints.clone())
        else {
            return;
        };
        let number = self.next_pod;
        self.next_pod += 1;
        let name = format!("pod-{number}");
        let labels =
            match Labels::from_k8s_pod(NAMESPACE, [("app", app)], &self.clusters[cluster].name) {
                Ok(labels) => labels,
                Err(error) => {
                    tracing::error!(%error, "generated pod labels are invalid");
                    self.pods.create_failed += 1;
                    return;
                }
            };
        let request = CreateEndpoint {
            container_id: name.clone(),
            netns: PathBuf::from(format!("/var/run/netns/{name}")),
            ifname: "eth0".to_owned(),
            pod_name: name.clone(),
            pod_namespace: NAMESPACE.to_owned(),
            labels: labels.clone(),
            requested_ip: None,
            named_ports: Vec::new(),
        };
        let pod = PendingPod {
            name,
            cluster,
            node: node.to_owned(),
            labels,
        };
        let results = self.results_tx.clone();
        self.in_flight += 1;
        self.arm_datapath_faults();
        tokio::task::spawn_local(async move {
            let started = Instant::now();
            let result = match addr.send(request).await {
                Ok(Ok(created)) => Ok(created),
                Ok(Err(error)) => Err(error_chain(&error)),
                Err(_) => Err("the node's endpoint manager is gone".to_owned()),
            };
            // The receiver lives as long as the world.
            let _ = results.send(OpResult::Created {
                pod,
                result,
                latency: started.elapsed(),
            });
        });
    }

    fn delete_pod(&mut self, name: String) {
        let Some(pod) = self.desired.pods.get(&name) else {
            return;
        };
        let Some(addr) = self.clusters[pod.cluster]
            .nodes
            .iter()
            .find(|n| n.spec.name == pod.node)
            .map(|n| n.actors.endpoints.clone())
        else {
            return;
        };
        self.deleting.insert(name.clone());
        let results = self.results_tx.clone();
        self.in_flight += 1;
        self.arm_datapath_faults();
        tokio::task::spawn_local(async move {
            // As the kubelet retries a failed CNI DEL: the endpoint manager keeps a half-removed
            // endpoint as disconnecting and finishes the removal on the next delete.
            let mut attempt = 1;
            let result = loop {
                let request = DeleteEndpoint {
                    endpoint: EndpointRef::ContainerId(name.clone()),
                };
                match addr.send(request).await {
                    Ok(Ok(_)) => break Ok(()),
                    Ok(Err(error)) if attempt < DELETE_ATTEMPTS => {
                        tracing::info!(pod = %name, attempt, error = %error_chain(&error), "pod deletion failed, retrying");
                    }
                    Ok(Err(error)) => break Err(error_chain(&error)),
                    Err(_) => break Err("the node's endpoint manager is gone".to_owned()),
                }
                attempt += 1;
                tokio::time::sleep(DELETE_RETRY).await;
            };
            let _ = results.send(OpResult::Deleted { pod: name, result });
        });
    }

    fn node_is_live(&self, cluster: usize, node: &str) -> bool {
        self.clusters
            .get(cluster)
            .is_some_and(|c| c.nodes.iter().any(|n| n.spec.name == node))
    }

    /// Takes in the answers of finished operations.
    fn drain(&mut self) {
        while let Ok(result) = self.results_rx.try_recv() {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.finished_ops += 1;
            match result {
                OpResult::Created {
                    pod,
                    result,
                    latency,
                } => match result {
                    Ok(created) if self.node_is_live(pod.cluster, &pod.node) => {
                        self.pods.created += 1;
                        self.create_latency.push(latency);
                        let deleting = &self.deleting;
                        let checked = self
                            .invariants
                            .identity_seen(
                                pod.cluster,
                                created.identity,
                                &pod.labels.to_kvstore_string(),
                                &format!("pod {}", pod.name),
                            )
                            .and_then(|()| {
                                self.invariants
                                    .address_given(created.ip, &pod.name, |other| {
                                        deleting.contains(other)
                                    })
                            });
                        if let Err(violation) = checked {
                            self.broken.get_or_insert(violation);
                        }
                        self.desired.pods.insert(
                            pod.name.clone(),
                            PodRecord {
                                name: pod.name,
                                cluster: pod.cluster,
                                node: pod.node,
                                labels: pod.labels,
                                ip: created.ip,
                                identity: created.identity,
                                endpoint: created.id,
                            },
                        );
                    }
                    // Created just before its node was lost: gone with it.
                    Ok(_) => self.pods.lost += 1,
                    Err(error) => {
                        self.pods.create_failed += 1;
                        tracing::info!(pod = %pod.name, node = %pod.node, %error, "pod creation failed");
                    }
                },
                OpResult::Deleted { pod, result } => {
                    self.deleting.remove(&pod);
                    match result {
                        Ok(()) => {
                            if let Some(record) = self.desired.pods.remove(&pod) {
                                self.invariants.address_released(record.ip, &pod);
                                self.pods.deleted += 1;
                            }
                        }
                        // The pod went with its node, which the loss already accounted for.
                        Err(_) if !self.desired.pods.contains_key(&pod) => {}
                        Err(error) => {
                            self.pods.delete_failed += 1;
                            tracing::info!(%pod, %error, "pod deletion failed");
                        }
                    }
                }
            }
        }
    }

    /// Changes only when the world does: datapath writes, nodes' kvstore writes, answers of
    /// the harness's operations. Not the store revisions: the clustermesh-apiserver's
    /// heartbeat bumps them every minute while nothing happens.
    fn fingerprint(&self) -> (u64, u64, u64) {
        let mutations = self.clusters.iter().map(|c| c.ops.mutations()).sum();
        (
            self.datapath_writes.load(Ordering::Relaxed),
            mutations,
            self.finished_ops,
        )
    }

    /// Runs virtual time until nothing has changed for the scenario's quiet period and no
    /// operation is in flight, but at least until `since + min_wait`. Returns when the last
    /// change happened (`since` if nothing changed), or `None` if the world did not settle
    /// within the limit.
    ///
    /// The harness looks often right after a change (that is where convergence time is
    /// measured) and more and more rarely while nothing happens, so a long quiet period or a
    /// wait for a lease costs few wake-ups.
    async fn settle(&mut self, since: Instant, min_wait: Duration) -> Option<Instant> {
        let mut last = self.fingerprint();
        let mut last_change = since;
        let mut tick = TICK;
        loop {
            tokio::time::sleep(tick).await;
            self.drain();
            for cluster in &self.clusters {
                cluster.store.expire_leases();
            }
            self.check_invariants(false);
            let now = Instant::now();
            if self.broken.is_some() {
                return Some(now);
            }
            let current = self.fingerprint();
            if current != last {
                last = current;
                last_change = now;
                tick = TICK;
            } else {
                tick = (tick * 2).min(MAX_TICK);
            }
            if self.in_flight > 0 {
                tick = TICK;
            } else if now.duration_since(last_change) >= self.scenario.quiet
                && now.duration_since(since) >= min_wait
            {
                return Some(last_change);
            }
            if now.duration_since(since) > self.scenario.settle_limit + min_wait {
                return None;
            }
        }
    }

    /// Waits for quiescence, checks the oracle and records the step; convergence counts
    /// from `started`.
    async fn finish_step(
        &mut self,
        name: String,
        started: Instant,
        min_wait: Duration,
    ) -> Option<Failure> {
        self.withdraw_datapath_faults();
        let settled = self.settle(started, min_wait).await;
        for cluster in &self.clusters {
            match oracle::read_identities(cluster.admin.as_ref()).await {
                Ok(identities) => self.identities[cluster.index] = identities,
                // An outage: nothing can have changed since the last read.
                Err(error) => tracing::debug!(%error, "identities not read; keeping the last"),
            }
        }
        for (cluster, identities) in self.identities.iter().enumerate() {
            for (identity, labels) in identities {
                let seen = self.invariants.identity_seen(
                    cluster,
                    *identity,
                    &labels.to_kvstore_string(),
                    "its master key",
                );
                if let Err(violation) = seen {
                    self.broken.get_or_insert(violation);
                }
            }
        }
        self.check_invariants(true);
        if let Some(violation) = self.broken.clone() {
            tracing::warn!(step = %name, %violation, "invariant broken");
            self.steps.push(StepReport {
                name: name.clone(),
                converged_ms: Instant::now().duration_since(started).as_secs_f64() * 1000.0,
                at_ms: Instant::now().duration_since(self.start).as_secs_f64() * 1000.0,
                violations: 1,
            });
            return Some(Failure {
                step: name,
                seed: self.seed,
                violations: vec![violation],
                total: 1,
            });
        }
        let mut violations = oracle::check(&self.clusters, &self.desired, &self.identities).await;
        let converged = match settled {
            Some(at) => at.duration_since(started),
            None => {
                violations.insert(
                    0,
                    oracle::Violation {
                        node: None,
                        what: format!(
                            "still changing {}s after the step started",
                            self.scenario.settle_limit.as_secs()
                        ),
                    },
                );
                self.scenario.settle_limit
            }
        };
        self.convergence.push(converged);
        let report = StepReport {
            name: name.clone(),
            converged_ms: converged.as_secs_f64() * 1000.0,
            at_ms: Instant::now().duration_since(self.start).as_secs_f64() * 1000.0,
            violations: violations.len(),
        };
        tracing::info!(
            step = %name,
            converged_ms = report.converged_ms,
            violations = violations.len(),
            pods = self.desired.pods.len(),
            "step done"
        );
        self.steps.push(report);
        if violations.is_empty() {
            return None;
        }
        let total = violations.len();
        violations.truncate(Failure::SHOWN);
        Some(Failure {
            step: name,
            seed: self.seed,
            violations,
            total,
        })
    }

    async fn apply(&mut self, step: &Step) -> Result<Option<Failure>, SimError> {
        let started = Instant::now();
        // Convergence counts from the last change the harness made (the end of a churn, the
        // loss of the node), not from the start of the step.
        let mut last_action = started;
        // How long the step's effects may take to show (a lease running out).
        let mut min_wait = Duration::ZERO;
        let name = step.name();
        tracing::info!(step = %name, "step starts");
        match step {
            Step::ScaleUp { nodes } => {
                for cluster in 0..self.clusters.len() {
                    self.add_nodes(cluster, *nodes).await?;
                }
                last_action = Instant::now();
            }
            Step::PodChurn { rate, duration } => {
                last_action = self.pod_churn(started, *rate, *duration).await;
            }
            Step::PolicyChurn { rate, duration } => {
                let interval = Duration::from_secs_f64(1.0 / rate);
                while started.elapsed() < *duration && self.broken.is_none() {
                    tokio::time::sleep(interval).await;
                    self.drain();
                    self.policy_churn_event().await?;
                    self.check_invariants(false);
                    last_action = Instant::now();
                }
            }
            Step::IdentityStorm { pods } => {
                for _ in 0..*pods {
                    let cluster = self.rng.usize(..self.clusters.len());
                    let nodes = &self.clusters[cluster].nodes;
                    if nodes.is_empty() {
                        continue;
                    }
                    let node = nodes[self.rng.usize(..nodes.len())].spec.name.clone();
                    // The pod number makes the label unique.
                    let app = format!("storm-{}", self.next_pod);
                    self.create_pod_with_app(cluster, &node, app);
                }
                last_action = Instant::now();
            }
            Step::ServiceChurn {
                rate,
                duration,
                global,
            } => {
                let interval = Duration::from_secs_f64(1.0 / rate);
                while started.elapsed() < *duration && self.broken.is_none() {
                    tokio::time::sleep(interval).await;
                    self.drain();
                    self.service_churn_event(*global).await?;
                    self.check_invariants(false);
                    last_action = Instant::now();
                }
            }
            Step::NodeLoss { nodes, revoke } => {
                for _ in 0..*nodes {
                    self.lose_node(*revoke).await;
                }
                last_action = Instant::now();
                if !revoke {
                    min_wait = self.scenario.lease_ttl + Duration::from_secs(1);
                }
            }
            Step::KvstoreOutage { duration } => {
                let index = self.rng.usize(..self.clusters.len());
                // With a mesh the other clusters lose the store too, and keep what they
                // imported up to the drain timeout.
                let everyone = self.scenario.mesh && *duration <= MESH_KEEPS_STATE;
                self.guard(&format!("{name} of cluster {}", index + 1), |c| {
                    everyone || c == index
                });
                self.clusters[index].store.set_unavailable(true).await?;
                // Nothing changed in the desired state: every datapath must still hold it.
                let during = self
                    .finish_step(
                        format!("{name} (during, cluster {})", index + 1),
                        started,
                        *duration,
                    )
                    .await;
                self.clusters[index].store.set_unavailable(false).await?;
                self.invariants.unguard();
                last_action = Instant::now();
                if during.is_some() {
                    return Ok(during);
                }
            }
            Step::KvstoreRestart { duration } => {
                let index = self.rng.usize(..self.clusters.len());
                // Through the restart and the re-lists after it: a re-list that finds what
                // the node already holds must not flush anything.
                // With a mesh the other clusters lose the store too, and keep what they
                // imported up to the drain timeout.
                let everyone = self.scenario.mesh && *duration <= MESH_KEEPS_STATE;
                self.guard(&format!("{name} of cluster {}", index + 1), |c| {
                    everyone || c == index
                });
                let cluster = &self.clusters[index];
                tracing::info!(cluster = %cluster.name, "kvstore restarts");
                cluster.store.set_unavailable(true).await?;
                cluster.restart.restart();
                self.pass_time(*duration).await;
                self.clusters[index].store.set_unavailable(false).await?;
                last_action = Instant::now();
                // The watchers retried with doubling delays meanwhile: the next try comes at
                // most about the outage's length after its end.
                min_wait = (*duration * 2 + Duration::from_secs(2)).min(WATCH_REOPEN);
            }
            Step::WatchEventLoss {
                nodes,
                rate,
                duration,
                resync,
            } => {
                let mut victims = BTreeSet::new();
                let live: Vec<String> = self.watch_loss.keys().cloned().collect();
                for _ in 0..*nodes {
                    if let Some(node) = live.get(self.rng.usize(..live.len().max(1))) {
                        victims.insert(node.clone());
                    }
                }
                for node in &victims {
                    if let Some(loss) = self.watch_loss.get(node) {
                        tracing::info!(%node, "node starts losing watch events");
                        loss.start();
                    }
                }
                last_action = self.pod_churn(started, *rate, *duration).await;
                for node in &victims {
                    if let Some(loss) = self.watch_loss.get(node) {
                        loss.stop(*resync);
                        tracing::info!(%node, dropped = loss.dropped(), resync, "node stops losing watch events");
                    }
                }
                min_wait = WATCH_REOPEN;
            }
            Step::LeaseExpiry { nodes } => {
                for _ in 0..*nodes {
                    self.revoke_random_lease().await;
                }
                last_action = Instant::now();
                // The keeper notices at its next renewal, a third of the TTL later at most.
                min_wait = self.scenario.lease_ttl / 3 + Duration::from_secs(1);
            }
            Step::NodePartition { nodes, duration } => {
                let mut cut = Vec::new();
                for _ in 0..*nodes {
                    let cluster = self.rng.usize(..self.clusters.len());
                    let live = &self.clusters[cluster].nodes;
                    if live.is_empty() {
                        continue;
                    }
                    let node = &live[self.rng.usize(..live.len())];
                    tracing::info!(node = %node.spec.name, "node cut off from its kvstore");
                    node.set_partitioned(true);
                    cut.push((cluster, node.spec.name.clone()));
                }
                let names: BTreeSet<String> = cut.iter().map(|(_, node)| node.clone()).collect();
                self.guard_nodes(&name, |node| names.contains(node));
                // Shorter than the lease: nothing the node published goes away and nothing
                // changes anywhere. Longer: its keys expire and come back once it returns,
                // with an in-between nobody checks.
                if *duration < self.scenario.lease_ttl / 2 {
                    let failure = self
                        .finish_step(format!("{name} (during)"), started, *duration)
                        .await;
                    if failure.is_some() {
                        return Ok(failure);
                    }
                } else {
                    self.pass_time(*duration).await;
                    // The node learns that its lease is gone at its next renewal.
                    min_wait = self.scenario.lease_ttl / 3 + Duration::from_secs(1);
                }
                for (cluster, node) in cut {
                    if let Some(node) = self.clusters[cluster]
                        .nodes
                        .iter()
                        .find(|n| n.spec.name == node)
                    {
                        node.set_partitioned(false);
                    }
                }
                self.invariants.unguard();
                last_action = Instant::now();
            }
            Step::ClusterDisconnect { duration } => {
                let index = self.rng.usize(..self.clusters.len());
                if *duration <= MESH_KEEPS_STATE {
                    // The others keep what they imported: nothing of theirs may shrink.
                    self.guard(&format!("{name} of cluster {}", index + 1), |c| c != index);
                }
                self.clusters[index].mesh_partition.send_replace(true);
                // Shortly, the other clusters keep what they imported; long after the drain
                // timeout they have dropped it. In between either may hold: no check.
                let during = if *duration <= MESH_KEEPS_STATE {
                    Some(false)
                } else if *duration >= MESH_DRAINED_STATE {
                    Some(true)
                } else {
                    self.pass_time(*duration).await;
                    None
                };
                if let Some(drained) = during {
                    if drained {
                        self.desired.hidden.insert(index);
                    }
                    let failure = self
                        .finish_step(
                            format!("{name} (during, cluster {})", index + 1),
                            started,
                            *duration,
                        )
                        .await;
                    if failure.is_some() {
                        return Ok(failure);
                    }
                }
                self.desired.hidden.remove(&index);
                self.clusters[index].mesh_partition.send_replace(false);
                self.invariants.unguard();
                last_action = Instant::now();
                // The other clusters reconnect after their backoff, up to 30 s later.
                min_wait = MESH_RECONNECT;
            }
            Step::Wait { duration } => min_wait = *duration,
        }
        let failure = self.finish_step(name, last_action, min_wait).await;
        self.invariants.unguard();
        Ok(failure)
    }

    /// Creates or deletes a pod `rate` times per second until `duration` after `started`;
    /// returns when the last change was made.
    async fn pod_churn(&mut self, started: Instant, rate: f64, duration: Duration) -> Instant {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut last_action = Instant::now();
        while started.elapsed() < duration && self.broken.is_none() {
            tokio::time::sleep(interval).await;
            self.drain();
            self.pod_churn_event();
            self.check_invariants(false);
            last_action = Instant::now();
        }
        last_action
    }

    /// Lets `duration` of virtual time pass, checking the invariants on the way.
    async fn pass_time(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        loop {
            let now = Instant::now();
            if now >= until || self.broken.is_some() {
                return;
            }
            let left = until.duration_since(now);
            let interval = self.scenario.invariant_interval;
            tokio::time::sleep(if interval.is_zero() {
                left
            } else {
                left.min(interval)
            })
            .await;
            self.drain();
            self.check_invariants(false);
        }
    }

    /// Guards the maps of every live node of the clusters `pick` selects (by index) against
    /// shrinking: their kvstore went away because of `why`.
    fn guard(&mut self, why: &str, pick: impl Fn(usize) -> bool) {
        let names: BTreeSet<String> = self
            .clusters
            .iter()
            .filter(|cluster| pick(cluster.index))
            .flat_map(|cluster| &cluster.nodes)
            .map(|node| node.spec.name.clone())
            .collect();
        self.guard_nodes(why, |node| names.contains(node));
    }

    /// Guards the maps of the live nodes `pick` selects (by name) against shrinking, then
    /// plays [`NodeFault::FlushOnKvstoreLoss`] on those that have it.
    fn guard_nodes(&mut self, why: &str, pick: impl Fn(&str) -> bool) {
        let sizes = self
            .clusters
            .iter()
            .flat_map(|cluster| &cluster.nodes)
            .filter(|node| pick(&node.spec.name))
            .map(|node| (node.spec.name.clone(), map_sizes(node)))
            .collect();
        self.invariants.guard(why, sizes);
        for node in self.clusters.iter().flat_map(|cluster| &cluster.nodes) {
            if node.spec.fault == Some(NodeFault::FlushOnKvstoreLoss) && pick(&node.spec.name) {
                let flushed =
                    fault::flush_remote_pods(&node.datapath, node.spec.pod_cidr, POD_SUPERNET);
                tracing::debug!(node = %node.spec.name, flushed, "fault: ipcache flushed on kvstore loss");
            }
        }
    }

    /// The continuous checks (see [`crate::invariant`]): every `invariant_interval` of
    /// virtual time, the next `invariant_nodes` live nodes' datapaths in turn. With
    /// `quiescent`, every node whose maps must not shrink, now (the oracle reads every other
    /// node's maps there anyway). Keeps the first violation.
    fn check_invariants(&mut self, quiescent: bool) {
        if self.broken.is_some() {
            return;
        }
        if quiescent {
            for node in self.clusters.iter().flat_map(|c| &c.nodes) {
                if self.invariants.guards(&node.spec.name)
                    && let Err(violation) = self
                        .invariants
                        .check_not_flushed(&node.spec.name, &map_sizes(node))
                {
                    self.broken = Some(violation);
                    return;
                }
            }
            return;
        }
        let interval = self.scenario.invariant_interval;
        let now = Instant::now();
        if interval.is_zero() || now.duration_since(self.last_invariant_check) < interval {
            return;
        }
        self.last_invariant_check = now;
        let live: Vec<&SimNode> = self.clusters.iter().flat_map(|c| &c.nodes).collect();
        if live.is_empty() {
            return;
        }
        let count = self.scenario.invariant_nodes.clamp(1, live.len());
        for offset in 0..count {
            let node = live[(self.invariant_cursor + offset) % live.len()];
            if let Err(violation) = check_node(&self.invariants, node) {
                self.broken = Some(violation);
                return;
            }
        }
        self.invariant_cursor = (self.invariant_cursor + count) % live.len();
    }

    /// Arms the scenario's datapath faults on every live node (after a change the harness
    /// made).
    fn arm_datapath_faults(&mut self) {
        let faults = self.scenario.datapath_faults;
        if faults.error_rate <= 0.0 {
            return;
        }
        for node in self.clusters.iter().flat_map(|c| &c.nodes) {
            faults.arm(&node.datapath, &mut self.fault_rng);
        }
    }

    /// Withdraws the datapath failures not used up (before a wait for quiescence).
    fn withdraw_datapath_faults(&self) {
        if self.scenario.datapath_faults.error_rate <= 0.0 {
            return;
        }
        for node in self.clusters.iter().flat_map(|c| &c.nodes) {
            node.datapath.clear_faults();
        }
    }

    fn pod_churn_event(&mut self) {
        let deletable: Vec<&String> = self
            .desired
            .pods
            .keys()
            .filter(|name| !self.deleting.contains(*name))
            .collect();
        if !deletable.is_empty() && self.rng.bool() {
            let pick = deletable[self.rng.usize(..deletable.len())].clone();
            self.delete_pod(pick);
            return;
        }
        let cluster = self.rng.usize(..self.clusters.len());
        let nodes = &self.clusters[cluster].nodes;
        if nodes.is_empty() {
            return;
        }
        let node = nodes[self.rng.usize(..nodes.len())].spec.name.clone();
        self.create_pod(cluster, &node);
    }

    async fn policy_churn_event(&mut self) -> Result<(), SimError> {
        let cluster = self.rng.usize(..self.clusters.len());
        let slot = self.rng.u32(..POLICY_SLOTS);
        let name = format!("sim-policy-{slot}");
        let policy = PolicyRef {
            namespace: Some(NAMESPACE.to_owned()),
            name: name.clone(),
        };
        let key_name = policy.key_name();
        let exists = self.desired.policies[cluster].contains_key(&key_name);
        let delete = exists && self.rng.u8(..3) == 0;
        let admin = Arc::clone(&self.clusters[cluster].admin);
        self.policy_writes += 1;
        let spec = PolicySpec {
            to: self.rng.u32(..self.scenario.apps),
            from: self.rng.u32(..self.scenario.apps),
            port: 80 + self.rng.u16(..8),
        };
        let written = if delete {
            admin.delete(&policy.key()).await.map(|_| ())
        } else {
            let value = policy_document(&name, spec)?;
            admin.put(&policy.key(), value, None).await.map(|_| ())
        };
        match written {
            Ok(()) if delete => {
                self.desired.policies[cluster].remove(&key_name);
            }
            Ok(()) => {
                self.desired.policies[cluster].insert(key_name, spec);
            }
            Err(error) => {
                self.policy_write_failures += 1;
                tracing::info!(%error, policy = %key_name, "policy write failed");
            }
        }
        self.arm_datapath_faults();
        Ok(())
    }

    async fn service_churn_event(&mut self, global: bool) -> Result<(), SimError> {
        let cluster = self.rng.usize(..self.clusters.len());
        let slot = self.rng.u8(..SERVICE_SLOTS);
        let name = format!("sim-svc-{slot}");
        let cluster_name = self.clusters[cluster].name.as_str().to_owned();
        let key = service_key(&cluster_name, NAMESPACE, &name);
        let exists = self.desired.services[cluster].contains_key(&name);
        let delete = exists && self.rng.u8(..3) == 0;
        let mut backends = BTreeSet::new();
        let pods: Vec<Ipv4Addr> = self
            .desired
            .pods
            .values()
            .filter(|pod| pod.cluster == cluster)
            .map(|pod| pod.ip)
            .collect();
        if !pods.is_empty() {
            for _ in 0..self.rng.usize(1..=3) {
                let ip = pods[self.rng.usize(..pods.len())];
                backends.insert(SocketAddrV4::new(ip, SERVICE_BACKEND_PORT));
            }
        }
        let cluster_index = u8::try_from(cluster + 1).unwrap_or(u8::MAX);
        let spec = ServiceSpec {
            frontend: SocketAddrV4::new(
                Ipv4Addr::new(192, 168, cluster_index, slot + 1),
                SERVICE_PORT,
            ),
            backends,
            global: global && self.rng.bool(),
            shared: global && self.rng.bool(),
        };
        let admin = Arc::clone(&self.clusters[cluster].admin);
        self.service_writes += 1;
        let written = if delete {
            admin.delete(&key).await.map(|_| ())
        } else {
            let record = service_record(&cluster_name, self.clusters[cluster].id, &name, &spec);
            let value = record.encode().map_err(|source| SimError::EncodeService {
                name: name.clone(),
                source,
            })?;
            admin.put(&key, value, None).await.map(|_| ())
        };
        match written {
            Ok(()) if delete => {
                self.desired.services[cluster].remove(&name);
            }
            Ok(()) => {
                self.desired.services[cluster].insert(name, spec);
            }
            Err(error) => {
                self.service_write_failures += 1;
                tracing::info!(%error, service = %name, "service write failed");
            }
        }
        self.arm_datapath_faults();
        Ok(())
    }

    async fn lose_node(&mut self, revoke: bool) {
        let candidates: Vec<usize> = self
            .clusters
            .iter()
            .filter(|c| c.nodes.len() > 1)
            .map(|c| c.index)
            .collect();
        if candidates.is_empty() {
            tracing::warn!("node loss skipped: every cluster is down to one node");
            return;
        }
        let cluster = candidates[self.rng.usize(..candidates.len())];
        let pick = self.rng.usize(..self.clusters[cluster].nodes.len());
        let node = self.clusters[cluster].nodes.remove(pick);
        tracing::info!(node = %node.spec.name, revoke, "node lost");
        self.clusters[cluster].lost.push(LostNode {
            name: node.spec.name.clone(),
            node_ip: node.spec.node_ip,
        });
        let gone: Vec<String> = self
            .desired
            .pods
            .values()
            .filter(|pod| pod.cluster == cluster && pod.node == node.spec.name)
            .map(|pod| pod.name.clone())
            .collect();
        for pod in gone {
            if let Some(record) = self.desired.pods.remove(&pod) {
                self.invariants.address_released(record.ip, &pod);
            }
            self.pods.lost += 1;
        }
        self.watch_loss.remove(&node.spec.name);
        node.kill(revoke).await;
    }

    async fn revoke_random_lease(&mut self) {
        let cluster = self.rng.usize(..self.clusters.len());
        let c = &self.clusters[cluster];
        if c.nodes.is_empty() {
            return;
        }
        let node = &c.nodes[self.rng.usize(..c.nodes.len())];
        let lease = node.lease();
        tracing::info!(node = %node.spec.name, %lease, "lease revoked under the node");
        if let Err(error) = c.admin.revoke_lease(lease).await {
            tracing::warn!(%error, "cannot revoke the node's lease");
        }
    }

    /// SHA-256 over every live node's maps, in cluster and start order.
    fn final_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for cluster in &self.clusters {
            for node in &cluster.nodes {
                hasher.update(node.spec.name.as_bytes());
                let mut maps: Vec<MapName> = MapName::GLOBAL.to_vec();
                maps.extend(
                    node.datapath
                        .attachments()
                        .iter()
                        .map(|a| MapName::Policy(a.endpoint)),
                );
                for map in maps {
                    for (key, value) in node.datapath.entries(map) {
                        hasher.update(format!("{key:?}={value:?};").as_bytes());
                    }
                }
            }
        }
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn report(self, failure: Option<Failure>) -> Report {
        let nodes: usize = self.clusters.iter().map(|c| c.nodes.len()).sum();
        let ever: usize = self.clusters.iter().map(|c| c.started).sum();
        let kvstore_ops: u64 = self.clusters.iter().map(|c| c.ops.get()).sum();
        let virtual_secs = self.start.elapsed().as_secs_f64();
        let per_node_per_sec = if ever == 0 || virtual_secs <= 0.0 {
            0.0
        } else {
            kvstore_ops as f64 / ever as f64 / virtual_secs
        };
        let peak = peak_rss_kib();
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            clusters: self.clusters.len(),
            nodes,
            steps: self.steps.clone(),
            convergence: Percentiles::of(&self.convergence),
            endpoint_create: Percentiles::of(&self.create_latency),
            pods: PodCounts {
                live: self.desired.pods.len() as u64,
                ..self.pods
            },
            policy_writes: self.policy_writes,
            policy_write_failures: self.policy_write_failures,
            service_writes: self.service_writes,
            service_write_failures: self.service_write_failures,
            kvstore_ops,
            kvstore_ops_per_node_per_sec: per_node_per_sec,
            kvstore_ops_busiest_node: self
                .clusters
                .iter()
                .flat_map(|c| &c.nodes)
                .map(SimNode::kvstore_ops)
                .max()
                .unwrap_or(0),
            datapath_writes: self.datapath_writes.load(Ordering::Relaxed),
            watch_events: self.clusters.iter().map(|c| c.ops.events()).sum(),
            watch_events_dropped: self.watch_loss.values().map(WatchLoss::dropped).sum(),
            virtual_secs,
            real_time: false,
            wall_secs: 0.0,
            peak_rss_kib: peak,
            final_rss_kib: rss_kib(),
            peak_rss_per_node_kib: peak.and_then(|kib| kib.checked_div(ever as u64)),
            final_hash: self.final_hash(),
            failure,
        }
    }
}

/// How many entries a node's maps hold, per kind (every policy map together).
fn map_sizes(node: &SimNode) -> MapSizes {
    let mut sizes = MapSizes::new();
    for map in [
        MapName::Ipcache,
        MapName::Lxc,
        MapName::Lb4Services,
        MapName::Lb4Backends,
    ] {
        sizes.insert(map.to_string(), node.datapath.entries(map).len());
    }
    let policy = node
        .datapath
        .attachments()
        .iter()
        .map(|a| node.datapath.entries(MapName::Policy(a.endpoint)).len())
        .sum();
    sizes.insert("the policy maps".to_owned(), policy);
    sizes
}

/// One node's share of the continuous checks: its ipcache's pod addresses, and, while its
/// kvstore is away, that none of its maps shrank.
fn check_node(invariants: &Invariants, node: &SimNode) -> Result<(), oracle::Violation> {
    let ipcache = node.datapath.entries(MapName::Ipcache);
    invariants.check_ipcache(
        &node.spec.name,
        ipcache.iter().filter_map(|entry| match entry {
            (MapKey::Ipcache(key), MapValue::Ipcache(info)) => Some((key.prefix(), info.identity)),
            _ => None,
        }),
    )?;
    if invariants.guards(&node.spec.name) {
        invariants.check_not_flushed(&node.spec.name, &map_sizes(node))?;
    }
    Ok(())
}

/// The cluster service record of `spec`, as an agent (or the cluster CLI) writes it.
fn service_record(cluster: &str, id: ClusterId, name: &str, spec: &ServiceSpec) -> ClusterService {
    let port = |port| -> PortConfiguration {
        BTreeMap::from([(
            "http".to_owned(),
            Some(L4Addr {
                protocol: "TCP".to_owned(),
                port,
            }),
        )])
    };
    ClusterService {
        cluster: cluster.to_owned(),
        namespace: NAMESPACE.to_owned(),
        name: name.to_owned(),
        frontends: BTreeMap::from([(spec.frontend.ip().to_string(), port(spec.frontend.port()))]),
        backends: spec
            .backends
            .iter()
            .map(|backend| (backend.ip().to_string(), port(backend.port())))
            .collect(),
        cluster_id: u32::from(id.get()),
        include_external: spec.global,
        shared: spec.shared,
        ..ClusterService::default()
    }
}

/// A CiliumNetworkPolicy letting `app-<from>` reach `app-<to>` on TCP `port`, as the value
/// stored under its kvstore key.
fn policy_document(name: &str, spec: PolicySpec) -> Result<Vec<u8>, SimError> {
    let PolicySpec { to, from, port } = spec;
    let text = format!(
        "apiVersion: cilium.io/v2\n\
         kind: CiliumNetworkPolicy\n\
         metadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
         spec:\n  endpointSelector:\n    matchLabels:\n      app: app-{to}\n  \
         ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: app-{from}\n    \
         toPorts:\n    - ports:\n      - port: \"{port}\"\n        protocol: TCP\n"
    );
    let mut documents = parse_documents(&text).map_err(|source| SimError::GeneratedPolicy {
        name: name.to_owned(),
        source,
    })?;
    let Some(document) = documents.pop() else {
        return Err(SimError::InvalidScenario {
            reason: format!("the generated policy {name} holds no document"),
        });
    };
    encode_policy(&document).map_err(|source| SimError::EncodePolicy {
        name: name.to_owned(),
        source,
    })
}
