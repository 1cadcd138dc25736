//! Kvstore load of a cluster: N simulated agents against one private etcd, each running the
//! production actors an agent in kvstore mode points at etcd (DESIGN 4.5): its own
//! `EtcdBackend` client, a `LeaseKeeper`, the `IdentityAllocator` behind an `IdentityActor`,
//! an `IpCacheActor` that publishes local entries and consumes the other nodes', and a
//! `NodeManager` publishing a node record with its own pod CIDR (routes go to
//! `FakeNodeRoutes`). Every agent runs on its own arbiter (thread), as its own process would.
//!
//! Each agent's backend is wrapped in a counting decorator, so the bench reports what the
//! agents ask of etcd (requests by kind, and watch events received) per agent and second, in
//! two 20 s windows:
//! 1. steady state: N*K pods exist and nothing changes;
//! 2. churn: 100 pod creations and 100 deletions per second spread over the agents (oldest
//!    pod first, so the population stays N*K), labels drawn from a small shared set with one
//!    new label set in ten.
//!
//! A pod is what the endpoint manager does for it at the kvstore level: allocate an identity
//! for its labels through the identity actor, then `UpsertIp` (source `local`) on its agent's
//! ipcache; deleting it is `DeleteIp` then `ReleaseIdentity`. The ipcache's datapath outputs go
//! to a sink actor per agent that timestamps each arrival of a tracked pod prefix with the
//! right identity, so propagation (upsert on the pod's agent to the entry leaving every other
//! agent's ipcache towards its datapath) is measured without polling. Deletions are tracked
//! the same way. etcd's own gRPC counters are scraped for each window as a cross-check (they
//! include what the client does under one call, e.g. a lock's session keep-alives).
//!
//! Run: `cargo bench -p cmd --bench cluster_kvstore` (needs the etcd binary, no root).
//! `CLUSTER_BENCH_NODES` sets N (default 10), `CLUSTER_BENCH_PODS_PER_NODE` sets K (default
//! 30). etcd's data dir goes under `$TMPDIR` (printed at start): run with `TMPDIR=/dev/shm` to
//! keep disk syncs out of the numbers.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter, Context, Handler};
use actors::identity::{
    AllocateIdentity, IdentityActor, IdentityBackend, IdentityConfig, ReleaseIdentity,
};
use actors::ipcache::{
    DeleteIp, IpCacheActor, IpCacheConfig, IpCacheOutputs, IpEntry, K8sMetadata, KvstoreSyncConfig,
    Source, UpsertIp,
};
use actors::node::{NodeIpcacheOutputs, NodeKvstoreConfig, NodeManager, NodeManagerConfig};
use anyhow::{Context as _, anyhow, bail};
use cilium_cmd::kvstore_mode::local_node;
use comfy_table::Table;
use datapath::api::IpcacheKey;
use datapath::reconciler::{DeleteIpcache, UpsertIpcache};
use datapath::routes::RoutingMode;
use datapath::routes::fake::FakeNodeRoutes;
use futures::StreamExt;
use ipnet::Ipv4Net;
use kvstore::allocator::IdentityAllocator;
use kvstore::config::EtcdConfig;
use kvstore::etcd::EtcdBackend;
use kvstore::lease::{DEFAULT_LEASE_TTL, LeaseKeeper};
use kvstore::testing::etcd::EtcdServer;
use kvstore::{
    Backend, BackendStatus, KeyValue, LeaseId, ListResult, LockKey, Revision, Txn, TxnResponse,
    WatchEvent, WatchFrom, WatchStream,
};
use model::identity::{ClusterId, ClusterName, NumericIdentity};
use model::labels::Labels;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const DEFAULT_NODES: usize = 10;
const DEFAULT_PODS_PER_NODE: usize = 30;
const STEADY_WINDOW: Duration = Duration::from_secs(20);
const CHURN_WINDOW: Duration = Duration::from_secs(20);
/// Pod creations per second during churn (and as many deletions).
const CHURN_RATE: u32 = 100;
/// Label sets shared by pods: most creations reuse one of these identities.
const SHARED_LABEL_SETS: u64 = 16;
/// One creation in this many gets a label set never seen before (a new identity).
const NEW_LABELS_ONE_IN: u64 = 10;
/// How long the initial pods and the end of churn may take to reach every agent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agents may take to see each other.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time between the end of the initial pod creation and the steady-state window.
const SETTLE: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::from_env()?;
    actix_rt::System::new().block_on(run(settings))
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    nodes: usize,
    pods_per_node: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let nodes = env_usize("CLUSTER_BENCH_NODES", DEFAULT_NODES)?;
        let pods_per_node = env_usize("CLUSTER_BENCH_PODS_PER_NODE", DEFAULT_PODS_PER_NODE)?;
        if !(2..=250).contains(&nodes) {
            bail!("CLUSTER_BENCH_NODES must be between 2 and 250, not {nodes}");
        }
        if !(1..=100).contains(&pods_per_node) {
            bail!("CLUSTER_BENCH_PODS_PER_NODE must be between 1 and 100, not {pods_per_node}");
        }
        Ok(Settings {
            nodes,
            pods_per_node,
        })
    }
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value:?} is not a number")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(error) => Err(anyhow!("{name}: {error}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Counting backend

/// What an agent asks of etcd, by kind, plus the watch events it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    List,
    Put,
    Delete,
    Txn,
    WatchStart,
    Lease,
    Lock,
    Status,
    WatchEvent,
}

const OP_KINDS: usize = 10;

#[derive(Debug, Default)]
struct OpCounts([AtomicU64; OP_KINDS]);

impl OpCounts {
    fn add(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> OpSnapshot {
        OpSnapshot(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct OpSnapshot([u64; OP_KINDS]);

impl OpSnapshot {
    fn since(self, earlier: OpSnapshot) -> OpSnapshot {
        OpSnapshot(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    fn get(&self, op: Op) -> u64 {
        self.0[op as usize]
    }

    fn reads(&self) -> u64 {
        self.get(Op::Get) + self.get(Op::List) + self.get(Op::Status)
    }

    fn writes(&self) -> u64 {
        self.get(Op::Put) + self.get(Op::Delete) + self.get(Op::Txn)
    }

    /// Every call made to the backend (watch events are received, not asked for).
    fn requests(&self) -> u64 {
        self.reads()
            + self.writes()
            + self.get(Op::WatchStart)
            + self.get(Op::Lease)
            + self.get(Op::Lock)
    }
}

type BoxResult<'a, T> = Pin<Box<dyn Future<Output = Result<T, kvstore::Error>> + Send + 'a>>;

/// An etcd client that counts every call (see [`Op`]) before making it. The methods spell
/// out the signatures `#[async_trait]` gives the trait, since this crate does not depend on
/// async-trait.
#[derive(Debug)]
struct CountingBackend {
    inner: EtcdBackend,
    counts: Arc<OpCounts>,
}

impl Backend for CountingBackend {
    fn get<'a, 'b, 'f>(&'a self, key: &'b str) -> BoxResult<'f, Option<KeyValue>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Get);
        self.inner.get(key)
    }

    fn list_prefix<'a, 'b, 'f>(&'a self, prefix: &'b str) -> BoxResult<'f, ListResult>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.counts.add(Op::List);
        self.inner.list_prefix(prefix)
    }

    fn put<'a, 'b, 'f>(
        &'a self,
        key: &'b str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxResult<'f, Revision>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Put);
        self.inner.put(key, value, lease)
    }

    fn delete<'a, 'b, 'f>(&'a self, key: &'b str) -> BoxResult<'f, bool>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Delete);
        self.inner.delete(key)
    }

    fn delete_prefix<'a, 'b, 'f>(&'a self, prefix: &'b str) -> BoxResult<'f, u64>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Delete);
        self.inner.delete_prefix(prefix)
    }

    fn txn<'a, 'f>(&'a self, txn: Txn) -> BoxResult<'f, TxnResponse>
    where
        'a: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Txn);
        self.inner.txn(txn)
    }

    fn watch<'a, 'b, 'f>(&'a self, prefix: &'b str, from: WatchFrom) -> BoxResult<'f, WatchStream>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.counts.add(Op::WatchStart);
        let counts = Arc::clone(&self.counts);
        let started = self.inner.watch(prefix, from);
        Box::pin(async move {
            let events = started.await?;
            let counted: WatchStream = Box::pin(events.inspect(move |event| {
                if let Ok(
                    WatchEvent::Create(_) | WatchEvent::Modify(_) | WatchEvent::Delete { .. },
                ) = event
                {
                    counts.add(Op::WatchEvent);
                }
            }));
            Ok(counted)
        })
    }

    fn grant_lease<'a, 'f>(&'a self, ttl: Duration) -> BoxResult<'f, LeaseId>
    where
        'a: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Lease);
        self.inner.grant_lease(ttl)
    }

    fn keep_alive<'a, 'f>(&'a self, lease: LeaseId) -> BoxResult<'f, Duration>
    where
        'a: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Lease);
        self.inner.keep_alive(lease)
    }

    fn revoke_lease<'a, 'f>(&'a self, lease: LeaseId) -> BoxResult<'f, ()>
    where
        'a: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Lease);
        self.inner.revoke_lease(lease)
    }

    fn lock<'a, 'b, 'f>(&'a self, name: &'b str) -> BoxResult<'f, LockKey>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Lock);
        self.inner.lock(name)
    }

    fn unlock<'a, 'f>(&'a self, lock: LockKey) -> BoxResult<'f, ()>
    where
        'a: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Lock);
        self.inner.unlock(lock)
    }

    fn status<'a, 'f>(&'a self) -> BoxResult<'f, BackendStatus>
    where
        'a: 'f,
        Self: 'f,
    {
        self.counts.add(Op::Status);
        self.inner.status()
    }
}

// ---------------------------------------------------------------------------------------------
// Propagation tracking

/// A pod's entry on its way to the other agents.
#[derive(Debug)]
struct InFlight {
    origin: usize,
    /// The identity the entry must carry when it arrives (unused for deletions).
    identity: NumericIdentity,
    started: Instant,
    /// Per agent: still expected there.
    waiting: Vec<bool>,
    remaining: usize,
    /// The longest latency so far. The last arrival processed need not be the latest: sinks on
    /// different threads take their timestamp before they take the tracker's lock.
    slowest: Duration,
}

impl InFlight {
    fn new(nodes: usize, origin: usize, identity: NumericIdentity, started: Instant) -> Self {
        let mut waiting = vec![true; nodes];
        if let Some(own) = waiting.get_mut(origin) {
            *own = false;
        }
        InFlight {
            origin,
            identity,
            started,
            waiting,
            remaining: nodes.saturating_sub(1),
            slowest: Duration::ZERO,
        }
    }

    /// Marks `agent` as no longer expected; answers whether it was.
    fn arrive(&mut self, agent: usize) -> bool {
        match self.waiting.get_mut(agent) {
            Some(waiting) if *waiting => {
                *waiting = false;
                self.remaining -= 1;
                true
            }
            _ => false,
        }
    }

    /// Records an arrival at `agent` at `at` into `into`; answers whether the entry is now
    /// everywhere.
    fn record(&mut self, agent: usize, at: Instant, into: &mut Latencies) -> bool {
        if !self.arrive(agent) {
            return false;
        }
        let latency = at.saturating_duration_since(self.started);
        into.pairs.push(latency);
        self.slowest = self.slowest.max(latency);
        if self.remaining == 0 {
            into.all.push(self.slowest);
            return true;
        }
        false
    }
}

#[derive(Debug, Default)]
struct Latencies {
    /// One per (pod, other agent) pair.
    pairs: Vec<Duration>,
    /// One per pod: until the last other agent had it.
    all: Vec<Duration>,
}

#[derive(Debug, Default)]
struct TrackerState {
    upserts: HashMap<IpAddr, InFlight>,
    deletes: HashMap<IpAddr, InFlight>,
    upserted: Latencies,
    deleted: Latencies,
    /// (pod, agent) pairs where the pod was deleted before its entry arrived.
    missed: u64,
    /// Arrivals of a tracked prefix with another identity than the pod's.
    wrong_identity: u64,
}

/// Pods whose ipcache entry (or its removal) is on its way, and the latencies measured.
#[derive(Debug)]
struct Tracker {
    nodes: usize,
    state: Mutex<TrackerState>,
}

impl Tracker {
    fn new(nodes: usize) -> Self {
        Tracker {
            nodes,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pod's entry is about to be upserted on its agent.
    fn upsert_started(&self, ip: IpAddr, origin: usize, identity: NumericIdentity) {
        let flight = InFlight::new(self.nodes, origin, identity, Instant::now());
        self.lock().upserts.insert(ip, flight);
    }

    /// The pod's entry is about to be deleted on its agent. Agents its entry never reached
    /// are not waited for.
    fn delete_started(&self, ip: IpAddr, origin: usize) {
        let mut state = self.lock();
        let mut flight =
            InFlight::new(self.nodes, origin, NumericIdentity::UNKNOWN, Instant::now());
        if let Some(upsert) = state.upserts.remove(&ip) {
            state.missed += upsert.remaining as u64;
            for (agent, waiting) in upsert.waiting.iter().enumerate() {
                if *waiting {
                    flight.arrive(agent);
                }
            }
        }
        if flight.remaining > 0 {
            state.deletes.insert(ip, flight);
        }
    }

    fn upsert_arrived(&self, agent: usize, ip: IpAddr, identity: NumericIdentity, at: Instant) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(flight) = state.upserts.get_mut(&ip) else {
            return;
        };
        if agent == flight.origin {
            return;
        }
        if flight.identity != identity {
            state.wrong_identity += 1;
            return;
        }
        if flight.record(agent, at, &mut state.upserted) {
            state.upserts.remove(&ip);
        }
    }

    fn delete_arrived(&self, agent: usize, ip: IpAddr, at: Instant) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(flight) = state.deletes.get_mut(&ip) else {
            return;
        };
        if flight.record(agent, at, &mut state.deleted) {
            state.deletes.remove(&ip);
        }
    }

    fn in_flight(&self) -> usize {
        let state = self.lock();
        state.upserts.len() + state.deletes.len()
    }

    /// Hands over what was measured so far and starts afresh (entries in flight stay).
    fn take(&self) -> TrackerResults {
        let mut state = self.lock();
        TrackerResults {
            upserted: std::mem::take(&mut state.upserted),
            deleted: std::mem::take(&mut state.deleted),
            missed: std::mem::take(&mut state.missed),
            wrong_identity: std::mem::take(&mut state.wrong_identity),
            unfinished: state.upserts.len() + state.deletes.len(),
        }
    }
}

#[derive(Debug)]
struct TrackerResults {
    upserted: Latencies,
    deleted: Latencies,
    missed: u64,
    wrong_identity: u64,
    unfinished: usize,
}

/// Stands in for an agent's Datapath actor: timestamps what its ipcache sends it.
#[derive(Debug)]
struct ArrivalSink {
    agent: usize,
    tracker: Arc<Tracker>,
}

impl Actor for ArrivalSink {
    type Context = Context<Self>;
}

impl Handler<UpsertIpcache> for ArrivalSink {
    type Result = ();

    fn handle(&mut self, msg: UpsertIpcache, _: &mut Context<Self>) {
        let at = Instant::now();
        for (key, info) in msg.entries {
            let prefix = key.prefix();
            if prefix.prefix_len() == prefix.max_prefix_len() {
                self.tracker
                    .upsert_arrived(self.agent, prefix.addr(), info.identity, at);
            }
        }
    }
}

impl Handler<DeleteIpcache> for ArrivalSink {
    type Result = ();

    fn handle(&mut self, msg: DeleteIpcache, _: &mut Context<Self>) {
        let at = Instant::now();
        for key in msg.keys {
            let prefix = key.prefix();
            if prefix.prefix_len() == prefix.max_prefix_len() {
                self.tracker.delete_arrived(self.agent, prefix.addr(), at);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated agents

/// What one agent is started with.
#[derive(Debug)]
struct AgentSetup {
    index: usize,
    node_ip: Ipv4Addr,
    pod_cidr: Ipv4Net,
    etcd: EtcdConfig,
    cluster: ClusterName,
    cluster_id: ClusterId,
    tracker: Arc<Tracker>,
    counts: Arc<OpCounts>,
}

/// The addresses of one agent's actors, as the driver on the main thread uses them.
#[derive(Debug)]
struct AgentParts {
    identity: Addr<IdentityActor>,
    ipcache: Addr<IpCacheActor>,
    nodes: Addr<NodeManager>,
    /// Held so the lease stays renewed (dropping the keeper stops renewals).
    _lease: Arc<LeaseKeeper>,
}

#[derive(Debug)]
struct SimAgent {
    parts: AgentParts,
    counts: Arc<OpCounts>,
    pod_cidr: Ipv4Net,
    /// Pod addresses not in use, least recently freed first, so an address is reused only
    /// long after its last pod's deletion has propagated.
    free_ips: VecDeque<Ipv4Addr>,
    arbiter: Arbiter,
}

fn node_ip(index: usize) -> Ipv4Addr {
    let n = index + 1;
    Ipv4Addr::new(10, 255, (n / 256) as u8, (n % 256) as u8)
}

fn pod_cidr(index: usize) -> Ipv4Net {
    let n = index + 1;
    Ipv4Net::new(Ipv4Addr::new(10, (n / 256) as u8, (n % 256) as u8, 0), 24).unwrap_or_default()
}

/// Starts an agent's actors on `arbiter` (its own thread and event loop).
async fn start_agent_on(arbiter: &Arbiter, setup: AgentSetup) -> anyhow::Result<AgentParts> {
    let (tx, rx) = oneshot::channel();
    let spawned = arbiter.spawn_fn(move || {
        actix::spawn(async move {
            // The receiver is only gone if the bench already failed.
            let _ = tx.send(start_agent_actors(setup).await);
        });
    });
    if !spawned {
        bail!("the agent's arbiter is not running");
    }
    rx.await.context("the agent's start-up task was dropped")?
}

/// The kvstore-facing half of `cilium_cmd::daemon::start_agent` in kvstore mode, with the
/// Datapath actor replaced by the arrival sink.
async fn start_agent_actors(setup: AgentSetup) -> anyhow::Result<AgentParts> {
    let name = format!("node-{}", setup.index);
    let inner = EtcdBackend::connect(&setup.etcd)
        .await
        .with_context(|| format!("{name}: cannot connect to etcd"))?;
    let backend: Arc<dyn Backend> = Arc::new(CountingBackend {
        inner,
        counts: setup.counts,
    });
    let lease = Arc::new(
        LeaseKeeper::start(Arc::clone(&backend), DEFAULT_LEASE_TTL)
            .await
            .with_context(|| format!("{name}: cannot take a lease"))?,
    );
    let allocator = Arc::new(
        IdentityAllocator::new(
            Arc::clone(&backend),
            setup.cluster_id,
            setup.node_ip.to_string(),
            lease.lease(),
            setup.index as u64,
        )
        .await
        .with_context(|| format!("{name}: cannot start the identity allocator"))?,
    );
    let sink = ArrivalSink {
        agent: setup.index,
        tracker: setup.tracker,
    }
    .start();
    let ipcache = IpCacheActor::new(
        IpCacheConfig {
            node_ip: Some(IpAddr::V4(setup.node_ip)),
            kvstore: Some(KvstoreSyncConfig {
                backend: Arc::clone(&backend),
                lease: lease.lease(),
                consume: true,
            }),
        },
        IpCacheOutputs {
            upsert: sink.clone().recipient(),
            delete: sink.recipient(),
        },
    )
    .start();
    let identity = IdentityActor::new(IdentityConfig {
        cluster_id: setup.cluster_id,
        backend: IdentityBackend::Kvstore {
            allocator,
            backend: Arc::clone(&backend),
        },
        dual_stack: false,
        subscribers: Vec::new(),
    })
    .with_ipcache(ipcache.clone().recipient(), ipcache.clone().recipient())
    .start();
    let nodes = NodeManager::new(NodeManagerConfig {
        cluster: setup.cluster.clone(),
        cluster_id: setup.cluster_id,
        local: local_node(
            &setup.cluster,
            setup.cluster_id,
            &name,
            setup.node_ip,
            Some(setup.pod_cidr),
        ),
        kvstore: Some(NodeKvstoreConfig {
            backend,
            lease: lease.lease(),
        }),
        routes: Arc::new(FakeNodeRoutes::new(RoutingMode::Native)),
        ipcache: Some(NodeIpcacheOutputs {
            upsert: ipcache.clone().recipient(),
            delete: ipcache.clone().recipient(),
        }),
    })
    .start();
    Ok(AgentParts {
        identity,
        ipcache,
        nodes,
        _lease: lease,
    })
}

/// Waits until every agent's node manager knows every other node.
async fn wait_for_peers(agents: &[SimAgent]) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let want = agents.len() - 1;
    loop {
        let mut complete = true;
        for agent in agents {
            let dump = agent
                .parts
                .nodes
                .send(actors::node::Dump)
                .await
                .context("a node manager stopped")?;
            if dump.peers.len() < want {
                complete = false;
                break;
            }
        }
        if complete {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the agents did not all see each other within {STARTUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Pods

#[derive(Debug, Clone)]
struct Pod {
    agent: usize,
    ip: Ipv4Addr,
    labels: Labels,
}

/// splitmix64: reproducible choices without a dependency.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Identity allocations as the pods saw them.
#[derive(Debug, Default)]
struct AllocStats {
    new_identity: Vec<Duration>,
    existing_identity: Vec<Duration>,
    failures: u64,
}

/// The driver's state: the agents and the live pods, on the main thread.
#[derive(Debug)]
struct Cluster {
    agents: Vec<SimAgent>,
    cluster: ClusterName,
    tracker: Arc<Tracker>,
    /// Created pods, oldest first.
    live: VecDeque<Pod>,
    /// Creations and deletions started but not finished.
    busy: usize,
    rng: Rng,
    new_labels: u64,
    allocs: AllocStats,
}

type Shared = Rc<RefCell<Cluster>>;

impl Cluster {
    fn labels(&mut self) -> anyhow::Result<Labels> {
        let app = if self.rng.below(NEW_LABELS_ONE_IN) == 0 {
            self.new_labels += 1;
            format!("fresh-{}", self.new_labels)
        } else {
            format!("shared-{}", self.rng.below(SHARED_LABEL_SETS))
        };
        Labels::from_k8s_pod(
            "default",
            [("app", app), ("bench", "cluster".to_owned())],
            &self.cluster,
        )
        .context("bench labels are invalid")
    }

    /// Picks an agent and a free address on it for a new pod.
    fn next_pod(&mut self, agent: usize) -> anyhow::Result<Pod> {
        let labels = self.labels()?;
        let sim = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| anyhow!("no agent {agent}"))?;
        let ip = sim
            .free_ips
            .pop_front()
            .ok_or_else(|| anyhow!("agent {agent} has no free pod address in {}", sim.pod_cidr))?;
        Ok(Pod { agent, ip, labels })
    }
}

/// Starts creating a pod in the background; it joins `live` once its entry is upserted.
fn spawn_create(cluster: &Shared, pod: Pod) {
    let (identity, ipcache, tracker) = {
        let mut c = cluster.borrow_mut();
        c.busy += 1;
        let Some(agent) = c.agents.get(pod.agent) else {
            c.busy -= 1;
            return;
        };
        (
            agent.parts.identity.clone(),
            agent.parts.ipcache.clone(),
            Arc::clone(&c.tracker),
        )
    };
    let cluster = Rc::clone(cluster);
    actix::spawn(async move {
        let started = Instant::now();
        let allocated = identity
            .send(AllocateIdentity::new(pod.labels.clone()))
            .await;
        let took = started.elapsed();
        let mut c = cluster.borrow_mut();
        c.busy -= 1;
        let allocated = match allocated {
            Ok(Ok(allocated)) => allocated,
            Ok(Err(error)) => {
                tracing::warn!(%error, "identity allocation failed");
                c.allocs.failures += 1;
                if let Some(agent) = c.agents.get_mut(pod.agent) {
                    agent.free_ips.push_back(pod.ip);
                }
                return;
            }
            Err(_) => {
                c.allocs.failures += 1;
                return;
            }
        };
        if allocated.is_new {
            c.allocs.new_identity.push(took);
        } else {
            c.allocs.existing_identity.push(took);
        }
        let ip = IpAddr::V4(pod.ip);
        tracker.upsert_started(ip, pod.agent, allocated.id);
        ipcache.do_send(UpsertIp {
            key: IpcacheKey::host(ip),
            source: Source::Local,
            entry: IpEntry {
                k8s: Some(K8sMetadata {
                    namespace: "default".to_owned(),
                    pod_name: format!("pod-{}-{}", pod.agent, pod.ip),
                    service_account: String::new(),
                    named_ports: Vec::new(),
                }),
                ..IpEntry::identity(allocated.id)
            },
        });
        c.live.push_back(pod);
    });
}

/// Deletes the oldest pod in the background; its address is free again afterwards.
fn spawn_delete_oldest(cluster: &Shared) {
    let (pod, identity, ipcache, tracker) = {
        let mut c = cluster.borrow_mut();
        let Some(pod) = c.live.pop_front() else {
            return;
        };
        let Some(agent) = c.agents.get(pod.agent) else {
            return;
        };
        let parts = (agent.parts.identity.clone(), agent.parts.ipcache.clone());
        c.busy += 1;
        (pod, parts.0, parts.1, Arc::clone(&c.tracker))
    };
    let cluster = Rc::clone(cluster);
    actix::spawn(async move {
        let ip = IpAddr::V4(pod.ip);
        tracker.delete_started(ip, pod.agent);
        ipcache.do_send(DeleteIp {
            key: IpcacheKey::host(ip),
            source: Source::Local,
        });
        let released = identity
            .send(ReleaseIdentity {
                labels: pod.labels.clone(),
            })
            .await;
        let mut c = cluster.borrow_mut();
        c.busy -= 1;
        match released {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "identity release failed"),
            Err(_) => tracing::warn!("identity actor gone during release"),
        }
        if let Some(agent) = c.agents.get_mut(pod.agent) {
            agent.free_ips.push_back(pod.ip);
        }
    });
}

/// Waits until nothing is being created or deleted and every entry has arrived everywhere.
async fn drain(cluster: &Shared) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let (busy, in_flight) = {
            let c = cluster.borrow();
            (c.busy, c.tracker.in_flight())
        };
        if busy == 0 && in_flight == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= DRAIN_TIMEOUT {
            bail!(
                "after {DRAIN_TIMEOUT:?}, {busy} pod operations are still running and {in_flight} \
                 entries have not reached every agent"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// etcd's own counters

/// etcd's `grpc_server_msg_received_total` by method (every request, including stream
/// messages such as lease keep-alives and watch creations).
async fn scrape_etcd(endpoint: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("etcd endpoint {endpoint} is not plain http"))?;
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to etcd's metrics at {authority}"))?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .context("cannot ask etcd for its metrics")?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .await
        .context("cannot read etcd's metrics")?;
    let mut by_method = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(method) = labels
            .split(',')
            .find_map(|label| label.strip_prefix("grpc_method=\""))
            .and_then(|m| m.strip_suffix('"'))
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        *by_method.entry(method.to_owned()).or_insert(0.0) += value;
    }
    Ok(by_method)
}

/// The requests etcd received in a window, per second: in total and per agent.
fn etcd_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    window: Duration,
    agents: usize,
) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(method, value)| {
            let delta = value - before.get(method).copied().unwrap_or(0.0);
            let rate = delta / window.as_secs_f64();
            (delta > 0.0)
                .then(|| format!("{method} {rate:.1}/s ({:.2}/agent)", rate / agents as f64))
        })
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// CPU use: with every agent in one process on a small machine, tails are often CPU waits.

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat` (in USER_HZ, which
/// Linux fixes at 100 for /proc).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The pid of the etcd this process started: its child named `etcd`.
fn etcd_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?;
            (head.ends_with("(etcd") && ppid == me).then_some(pid)
        })
}

#[derive(Debug, Clone, Copy)]
struct CpuMark {
    bench: Option<f64>,
    etcd: Option<f64>,
}

fn cpu_mark(etcd: Option<u32>) -> CpuMark {
    CpuMark {
        bench: cpu_seconds(std::process::id()),
        etcd: etcd.and_then(cpu_seconds),
    }
}

/// Cores used since `before`, by the bench process (every agent) and by etcd.
fn cpu_since(before: CpuMark, etcd: Option<u32>, window: Duration) -> String {
    let after = cpu_mark(etcd);
    let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", (a - b) / window.as_secs_f64()),
        _ => "?".to_owned(),
    };
    let available = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "agents (this process) {} cores, etcd {} cores, of {available}",
        cores(after.bench, before.bench),
        cores(after.etcd, before.etcd),
    )
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// Per-agent rates over a window.
#[derive(Debug)]
struct Window {
    name: &'static str,
    length: Duration,
    per_agent: Vec<OpSnapshot>,
    etcd: String,
    cpu: String,
}

impl Window {
    fn rates(&self, f: impl Fn(&OpSnapshot) -> u64) -> (f64, f64, f64) {
        let secs = self.length.as_secs_f64();
        let values: Vec<f64> = self.per_agent.iter().map(|s| f(s) as f64 / secs).collect();
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        (mean, min, max)
    }
}

fn rate_cell((mean, min, max): (f64, f64, f64)) -> String {
    format!("{mean:.2} ({min:.2}-{max:.2})")
}

fn print_windows(windows: &[Window]) {
    let mut table = Table::new();
    table.set_header(vec![
        "window",
        "requests/s",
        "writes/s (put,del,txn)",
        "reads/s (get,list)",
        "watch starts/s",
        "lease/s",
        "lock/s",
        "watch events/s",
    ]);
    for w in windows {
        table.add_row(vec![
            format!("{} ({:.0?})", w.name, w.length),
            rate_cell(w.rates(OpSnapshot::requests)),
            rate_cell(w.rates(OpSnapshot::writes)),
            rate_cell(w.rates(OpSnapshot::reads)),
            rate_cell(w.rates(|s| s.get(Op::WatchStart))),
            rate_cell(w.rates(|s| s.get(Op::Lease))),
            rate_cell(w.rates(|s| s.get(Op::Lock))),
            rate_cell(w.rates(|s| s.get(Op::WatchEvent))),
        ]);
    }
    println!("kvstore operations per agent and second: mean (min-max over agents)");
    println!("{table}");
    for w in windows {
        println!("requests etcd received, {}: {}", w.name, w.etcd);
        println!("CPU, {}: {}", w.name, w.cpu);
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn latency_row(table: &mut Table, name: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    table.add_row(vec![
        name.to_owned(),
        sorted.len().to_string(),
        format!("{:.2?}", percentile(&sorted, 0.50)),
        format!("{:.2?}", percentile(&sorted, 0.99)),
        format!("{:.2?}", sorted.last().copied().unwrap_or_default()),
    ]);
}

fn print_latencies(title: &str, results: &TrackerResults, allocs: Option<&AllocStats>) {
    let mut table = Table::new();
    table.set_header(vec!["measure", "samples", "p50", "p99", "max"]);
    latency_row(
        &mut table,
        "upsert reaches one other agent (pod, agent)",
        &results.upserted.pairs,
    );
    latency_row(
        &mut table,
        "upsert reaches all other agents (pod)",
        &results.upserted.all,
    );
    latency_row(
        &mut table,
        "delete reaches one other agent (pod, agent)",
        &results.deleted.pairs,
    );
    latency_row(
        &mut table,
        "delete reaches all other agents (pod)",
        &results.deleted.all,
    );
    if let Some(allocs) = allocs {
        latency_row(
            &mut table,
            "identity allocation, new labels",
            &allocs.new_identity,
        );
        latency_row(
            &mut table,
            "identity allocation, known labels",
            &allocs.existing_identity,
        );
    }
    println!("{title}");
    println!("{table}");
    println!(
        "  deleted before arriving: {} (pod, agent) pairs; wrong identity on arrival: {}; \
         unfinished: {}{}",
        results.missed,
        results.wrong_identity,
        results.unfinished,
        allocs.map_or(String::new(), |a| format!(
            "; failed allocations: {}",
            a.failures
        )),
    );
}

fn snapshots(cluster: &Shared) -> Vec<OpSnapshot> {
    cluster
        .borrow()
        .agents
        .iter()
        .map(|a| a.counts.snapshot())
        .collect()
}

fn deltas(after: &[OpSnapshot], before: &[OpSnapshot]) -> Vec<OpSnapshot> {
    after.iter().zip(before).map(|(a, b)| a.since(*b)).collect()
}

// ---------------------------------------------------------------------------------------------
// The run

async fn run(settings: Settings) -> anyhow::Result<()> {
    let nodes = settings.nodes;
    let population = nodes * settings.pods_per_node;
    println!(
        "cluster_kvstore: {nodes} agents, {} pods per agent, etcd data under {}",
        settings.pods_per_node,
        std::env::temp_dir().display()
    );
    let server = EtcdServer::start()
        .await
        .context("cannot start a private etcd")?;
    let result = run_with(&server, settings, population).await;
    if let Err(error) = server.stop().await {
        tracing::warn!(%error, "cannot stop the private etcd");
    }
    result
}

async fn run_with(
    server: &EtcdServer,
    settings: Settings,
    population: usize,
) -> anyhow::Result<()> {
    let nodes = settings.nodes;
    let cluster_name = ClusterName::new("bench").context("cluster name")?;
    let cluster_id = ClusterId::new(1);
    let tracker = Arc::new(Tracker::new(nodes));

    let started = Instant::now();
    let mut agents = Vec::with_capacity(nodes);
    for index in 0..nodes {
        let arbiter = Arbiter::new();
        let counts = Arc::new(OpCounts::default());
        let setup = AgentSetup {
            index,
            node_ip: node_ip(index),
            pod_cidr: pod_cidr(index),
            etcd: server.config(),
            cluster: cluster_name.clone(),
            cluster_id,
            tracker: Arc::clone(&tracker),
            counts: Arc::clone(&counts),
        };
        let parts = start_agent_on(&arbiter, setup).await?;
        let cidr = pod_cidr(index);
        agents.push(SimAgent {
            parts,
            counts,
            pod_cidr: cidr,
            free_ips: cidr.hosts().skip(1).collect(),
            arbiter,
        });
    }
    wait_for_peers(&agents).await?;
    println!(
        "{nodes} agents up and seeing each other after {:.2?}",
        started.elapsed()
    );

    let cluster: Shared = Rc::new(RefCell::new(Cluster {
        agents,
        cluster: cluster_name,
        tracker: Arc::clone(&tracker),
        live: VecDeque::new(),
        busy: 0,
        rng: Rng(0x5eed),
        new_labels: 0,
        allocs: AllocStats::default(),
    }));

    // Initial pods, K per agent.
    let started = Instant::now();
    for round in 0..settings.pods_per_node {
        for agent in 0..nodes {
            let pod = cluster.borrow_mut().next_pod(agent)?;
            spawn_create(&cluster, pod);
        }
        if round % 5 == 4 {
            // Let the agents work through the batch: this is set-up, not the measured load.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drain(&cluster).await?;
    let initial = tracker.take();
    let initial_allocs = std::mem::take(&mut cluster.borrow_mut().allocs);
    println!(
        "{population} initial pods created and seen by every agent after {:.2?}",
        started.elapsed()
    );
    print_latencies(
        "initial pods (created as fast as the agents take them, not a rate)",
        &initial,
        Some(&initial_allocs),
    );
    tokio::time::sleep(SETTLE).await;

    // Steady state.
    let endpoint = server.endpoint();
    let etcd = etcd_pid();
    let etcd_before = scrape_etcd(&endpoint).await?;
    let before = snapshots(&cluster);
    let cpu_before = cpu_mark(etcd);
    let window_start = Instant::now();
    tokio::time::sleep(STEADY_WINDOW).await;
    let length = window_start.elapsed();
    let per_agent = deltas(&snapshots(&cluster), &before);
    let cpu = cpu_since(cpu_before, etcd, length);
    let etcd_after = scrape_etcd(&endpoint).await?;
    let steady = Window {
        name: "steady",
        length,
        per_agent,
        etcd: etcd_delta(&etcd_before, &etcd_after, length, nodes),
        cpu,
    };

    // Churn.
    let etcd_before = etcd_after;
    let before = snapshots(&cluster);
    let cpu_before = cpu_mark(etcd);
    let window_start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / CHURN_RATE);
    let mut created = 0u64;
    let mut skipped = 0u64;
    while window_start.elapsed() < CHURN_WINDOW {
        tick.tick().await;
        let agent = {
            let mut c = cluster.borrow_mut();
            c.rng.below(nodes as u64) as usize
        };
        let pod = cluster.borrow_mut().next_pod(agent);
        match pod {
            Ok(pod) => {
                spawn_create(&cluster, pod);
                created += 1;
            }
            Err(error) => {
                tracing::warn!(%error, "no pod created this tick");
                skipped += 1;
            }
        }
        let excess = cluster.borrow().live.len() > population;
        if excess {
            spawn_delete_oldest(&cluster);
        }
    }
    let churn_length = window_start.elapsed();
    let churn_ops = deltas(&snapshots(&cluster), &before);
    let cpu = cpu_since(cpu_before, etcd, churn_length);
    let etcd_after = scrape_etcd(&endpoint).await?;
    let drained = drain(&cluster).await?;
    let churn = Window {
        name: "churn",
        length: churn_length,
        per_agent: churn_ops,
        etcd: etcd_delta(&etcd_before, &etcd_after, churn_length, nodes),
        cpu,
    };
    let churn_results = tracker.take();
    let churn_allocs = std::mem::take(&mut cluster.borrow_mut().allocs);

    println!();
    println!(
        "churn: {created} pods created in {churn_length:.2?} ({:.1}/s), {skipped} ticks without \
         a free address; everything arrived within {drained:.2?} after the window (polled \
         every 20 ms)",
        created as f64 / churn_length.as_secs_f64()
    );
    print_windows(&[steady, churn]);
    println!(
        "agent leases: TTL {}, renewed every TTL/3, i.e. {:.4} keep-alives/s per agent, \
         rarely inside a {STEADY_WINDOW:?} window; etcd's LeaseKeepAlive above also counts the \
         lock sessions (TTL 25 s) the allocator's locks open inside the client",
        humantime::format_duration(DEFAULT_LEASE_TTL),
        3.0 / DEFAULT_LEASE_TTL.as_secs_f64()
    );
    print_latencies(
        "propagation during churn: from UpsertIp/DeleteIp on the pod's agent to the entry \
         leaving another agent's ipcache",
        &churn_results,
        Some(&churn_allocs),
    );

    let agents = std::mem::take(&mut cluster.borrow_mut().agents);
    for agent in agents {
        agent.arbiter.stop();
    }
    Ok(())
}
