//! One simulated node: the production actors of an agent in kvstore mode, wired as
//! `cilium-agent` wires them (`cmd/src/daemon.rs`), over the recording fake datapath, fake
//! links and fake routes, with in-memory snapshot stores and the node's own kvstore client.
//!
//! The agent's own wiring cannot be reused: it lives in the `cmd` crate (which links the
//! kernel datapath and etcd), runs the Datapath actor on its own arbiter (a thread) and keeps
//! IPAM, policy and kvstore-record snapshots in files. Here instead:
//! - every actor of the node runs on the single simulation thread, inside a `LocalSet` of its
//!   own, so that losing the node drops every actor of it at once ([`SimNode::kill`]);
//! - IPAM, policy rules and the records of kvstore policies and services are kept in
//!   `MemorySnapshotStore`s; endpoint records still go to a state directory (the endpoint
//!   manager only knows files), a temporary one per simulation;
//! - no Hubble, no REST API, no CIDR identity restore (nothing is pinned before the first
//!   start); the ClusterMesh actor (optional) reaches remote clusters' memory stores through
//!   [`SimConnector`] and reads its configuration directory every 10 s instead of every
//!   second;
//! - an optional [`NodeFault`] sits between two actors (endpoint manager and ipcache, or
//!   identity actor and policy repository).
//!
//! The order of the start is the agent's: datapath, services, ipcache, identity + policy,
//! kvstore watchers, IPAM, endpoints, node manager, ClusterMesh, then the restore that lets
//! the datapath prune.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context, Recipient};
use actors::clusterstate::{
    ClusterStateError, MemoryImportedPoliciesStore, MemoryServiceRecordStore, PolicyWatcher,
    PolicyWatcherConfig, PolicyWatcherOutputs, ServiceWatcher, ServiceWatcherConfig,
    ServiceWatcherOutputs,
};
use actors::endpoint::{
    EndpointConfig, EndpointError, EndpointManager, EndpointOutputs, RestoreEndpoints,
};
use actors::identity::{IdentitiesChanged, IdentityActor, IdentityBackend, IdentityConfig};
use actors::ipam::{IpamActor, IpamError, MemoryIpamStore};
use actors::ipcache::{
    IpCacheActor, IpCacheConfig, IpCacheOutputs, KvstoreLeaseChanged, KvstoreSyncConfig, UpsertIp,
};
use actors::node::{
    NodeIpcacheOutputs, NodeKvstoreConfig, NodeLeaseChanged, NodeManager, NodeManagerConfig,
};
use actors::policy::{
    EnforcementMode, MemoryPolicyStore, PolicyConfig, PolicyError, PolicyRepository, PolicyState,
};
use actors::service::{
    ServiceError, ServiceIdRanges, ServiceManager, ServiceOutputs, ServiceSnapshot,
};
use clustermesh::{ClusterMesh, ClusterMeshConfig, ClusterMeshOutputs};
use datapath::fake::FakeDatapath;
use datapath::fake_link::FakeLinks;
use datapath::reconciler::{DatapathActor, DatapathActorConfig, InitialSyncDone};
use datapath::routes::RoutingMode;
use datapath::routes::fake::FakeNodeRoutes;
use ipnet::{IpNet, Ipv4Net};
use kvstore::allocator::{AllocatorError, IdentityAllocator};
use kvstore::keys::{Node, NodeAddress, NodeCidr};
use kvstore::lease::LeaseKeeper;
use kvstore::{Backend, LeaseId};
use model::identity::{ClusterId, ClusterName};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, LocalSet};

use crate::backend::SimBackend;
use crate::datapath::CountingDatapath;
use crate::fault::{IdentitiesFilter, NodeFault, UpsertIpFilter};
use crate::mesh::{MeshStores, SimConnector};

/// How often a node's mesh reads its configuration directory.
const MESH_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// What makes one node different from the others.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub name: String,
    /// The underlay address: the node record's address and every local ipcache entry's host.
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR (IPAM range).
    pub pod_cidr: Ipv4Net,
    /// Where the endpoint manager keeps its records.
    pub state_dir: PathBuf,
    pub lease_ttl: Duration,
    /// Seeds the node's identity allocator (the choice of new ids).
    pub seed: u64,
    pub fault: Option<NodeFault>,
    /// ClusterMesh: the configuration directory and every cluster's store.
    pub mesh: Option<MeshSpec>,
}

/// How a node joins the mesh.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// One file per remote cluster (see [`crate::mesh::write_config_dir`]).
    pub config_dir: PathBuf,
    pub stores: MeshStores,
}

/// Everything that can keep a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: cannot take a kvstore lease")]
    Lease {
        node: String,
        #[source]
        source: kvstore::Error,
    },
    #[error("node {node}: cannot start the identity allocator")]
    Allocator {
        node: String,
        #[source]
        source: AllocatorError,
    },
    #[error("node {node}: cannot restore services from the datapath")]
    Services {
        node: String,
        #[source]
        source: ServiceError,
    },
    #[error("node {node}: cannot start the policy repository")]
    Policy {
        node: String,
        #[source]
        source: PolicyError,
    },
    #[error("node {node}: cannot start the kvstore policy or service watcher")]
    ClusterState {
        node: String,
        #[source]
        source: ClusterStateError,
    },
    #[error("node {node}: cannot start IPAM for {range}")]
    Ipam {
        node: String,
        range: Ipv4Net,
        #[source]
        source: IpamError,
    },
    #[error("node {node}: cannot restore endpoints")]
    Endpoints {
        node: String,
        #[source]
        source: EndpointError,
    },
    #[error("node {node}: the {actor} stopped during start-up")]
    ActorGone { node: String, actor: &'static str },
}

/// The addresses of a node's actors, as the harness and the oracle reach them.
#[derive(Debug, Clone)]
pub struct NodeActors {
    pub datapath: Addr<DatapathActor>,
    pub identity: Addr<IdentityActor>,
    pub policy: Addr<PolicyRepository>,
    pub ipcache: Addr<IpCacheActor>,
    pub services: Addr<ServiceManager>,
    pub ipam: Addr<IpamActor>,
    pub endpoints: Addr<EndpointManager>,
    pub nodes: Addr<NodeManager>,
    pub policy_watcher: Addr<PolicyWatcher>,
    pub service_watcher: Addr<ServiceWatcher>,
    /// With a mesh.
    pub mesh: Option<Addr<ClusterMesh>>,
}

/// A running node. Dropping it leaves its actors running; [`SimNode::kill`] ends them.
#[derive(Debug)]
pub struct SimNode {
    pub spec: NodeSpec,
    /// What the node's datapath holds (shared with the Datapath actor's copy).
    pub datapath: FakeDatapath,
    pub actors: NodeActors,
    backend: Arc<SimBackend>,
    /// `true` cuts the node off from its cluster's kvstore (see [`SimNode::set_partitioned`]).
    partition: tokio::sync::watch::Sender<bool>,
    lease: LeaseKeeper,
    /// Drives the node's `LocalSet`; aborting it drops every actor of the node.
    task: JoinHandle<()>,
}

impl SimNode {
    /// Starts every actor of the node and completes the restore (the datapath may prune),
    /// as `start_agent` + `Agent::restore` do. Must run inside the simulation's actix system.
    /// `backend` is the node's client of its cluster's store, cut off while `partition` reads
    /// `true`.
    pub async fn start(
        spec: NodeSpec,
        backend: Arc<SimBackend>,
        partition: tokio::sync::watch::Sender<bool>,
        datapath_writes: Arc<AtomicU64>,
    ) -> Result<SimNode, NodeError> {
        let lease = LeaseKeeper::start(Arc::clone(&backend) as Arc<dyn Backend>, spec.lease_ttl)
            .await
            .map_err(|source| NodeError::Lease {
                node: spec.name.clone(),
                source,
            })?;
        let fake = FakeDatapath::new();
        let local = LocalSet::new();
        let (tx, rx) = oneshot::channel();
        let wiring = Wiring {
            spec: spec.clone(),
            sim_backend: Arc::clone(&backend),
            backend: Arc::clone(&backend) as Arc<dyn Backend>,
            lease: lease.lease(),
            leases: lease.subscribe(),
            datapath: CountingDatapath::new(fake.clone(), datapath_writes),
        };
        local.spawn_local(async move {
            // The receiver is gone only if the start was abandoned; nothing to report then.
            let _ = tx.send(wiring.start().await);
        });
        let task = tokio::task::spawn_local(local);
        let started = rx.await.map_err(|_| NodeError::ActorGone {
            node: spec.name.clone(),
            actor: "node start-up task",
        });
        let actors = match started.and_then(|started| started) {
            Ok(actors) => actors,
            Err(error) => {
                task.abort();
                return Err(error);
            }
        };
        Ok(SimNode {
            spec,
            datapath: fake,
            actors,
            backend,
            partition,
            lease,
            task,
        })
    }

    /// The lease the node's keys hang off now.
    pub fn lease(&self) -> LeaseId {
        self.lease.lease()
    }

    /// Cuts the node off from its cluster's kvstore (`true`) or lets it back (`false`): its
    /// requests fail and its watches stall meanwhile, as on a network partition.
    pub fn set_partitioned(&self, partitioned: bool) {
        self.partition.send_replace(partitioned);
    }

    /// Kvstore operations this node made so far.
    pub fn kvstore_ops(&self) -> u64 {
        self.backend.ops()
    }

    /// Loses the node: its actors stop, it never talks to the kvstore again, and its lease is
    /// revoked at once (`revoke`, a clean leave) or left to expire (a crash).
    pub async fn kill(self, revoke: bool) {
        if revoke && let Err(error) = self.lease.revoke().await {
            tracing::warn!(node = %self.spec.name, %error, "cannot revoke the lost node's lease");
        }
        // Without a revoke the keeper is dropped here, which stops the renewals.
        self.backend.kill();
        self.task.abort();
    }
}

/// The inputs of one node's start, moved into the node's `LocalSet`.
struct Wiring {
    spec: NodeSpec,
    sim_backend: Arc<SimBackend>,
    backend: Arc<dyn Backend>,
    lease: LeaseId,
    leases: tokio::sync::watch::Receiver<LeaseId>,
    datapath: CountingDatapath,
}

impl Wiring {
    async fn start(self) -> Result<NodeActors, NodeError> {
        let Wiring {
            spec,
            sim_backend,
            backend,
            lease,
            leases,
            datapath,
        } = self;
        let node = || spec.name.clone();
        let gone = |actor| NodeError::ActorGone {
            node: spec.name.clone(),
            actor,
        };

        let datapath =
            DatapathActor::new(Box::new(datapath), DatapathActorConfig::default()).start();
        let (snapshot, _) = ServiceSnapshot::read(&datapath.clone().recipient())
            .await
            .map_err(|source| NodeError::Services {
                node: node(),
                source,
            })?;
        let (manager, _) = ServiceManager::new(
            ServiceIdRanges::default(),
            snapshot,
            ServiceOutputs {
                upsert: datapath.clone().recipient(),
                delete: datapath.clone().recipient(),
            },
        );
        let services = manager.start();

        let ipcache = IpCacheActor::new(
            IpCacheConfig {
                node_ip: Some(IpAddr::V4(spec.node_ip)),
                kvstore: Some(KvstoreSyncConfig {
                    backend: Arc::clone(&backend),
                    lease,
                    consume: true,
                }),
            },
            IpCacheOutputs {
                upsert: datapath.clone().recipient(),
                delete: datapath.clone().recipient(),
            },
        )
        .start();

        let allocator = Arc::new(
            IdentityAllocator::new(
                Arc::clone(&backend),
                spec.cluster_id,
                spec.node_ip.to_string(),
                lease,
                spec.seed,
            )
            .await
            .map_err(|source| NodeError::Allocator {
                node: node(),
                source,
            })?,
        );
        let policy_ctx = Context::<PolicyRepository>::new();
        let identities_to_policy: Recipient<IdentitiesChanged> = match spec.fault {
            Some(NodeFault::DropIdentitiesAdded { nth }) => {
                IdentitiesFilter::new(policy_ctx.address().recipient(), nth)
                    .start()
                    .recipient()
            }
            _ => policy_ctx.address().recipient(),
        };
        let identity = IdentityActor::new(IdentityConfig {
            cluster_id: spec.cluster_id,
            backend: IdentityBackend::Kvstore {
                allocator: Arc::clone(&allocator),
                backend: Arc::clone(&backend),
            },
            dual_stack: false,
            subscribers: vec![identities_to_policy],
        })
        .with_ipcache(ipcache.clone().recipient(), ipcache.clone().recipient())
        .start();
        let repository = PolicyRepository::with_store(
            PolicyState::new(PolicyConfig {
                enforcement: EnforcementMode::Default,
                cluster_name: spec.cluster.clone(),
                ..PolicyConfig::default()
            }),
            Box::new(MemoryPolicyStore::new()),
            datapath.clone().recipient(),
            identity.clone().recipient(),
        )
        .map_err(|source| NodeError::Policy {
            node: node(),
            source,
        })?;
        let policy = policy_ctx.run(repository);

        let cluster_state = |source| NodeError::ClusterState {
            node: node(),
            source,
        };
        let policy_watcher = PolicyWatcher::new(
            PolicyWatcherConfig {
                backend: Arc::clone(&backend),
                record: Box::new(MemoryImportedPoliciesStore::new()),
            },
            PolicyWatcherOutputs {
                import: policy.clone().recipient(),
                delete: policy.clone().recipient(),
            },
        )
        .map_err(cluster_state)?
        .start();
        let service_watcher = ServiceWatcher::new(
            ServiceWatcherConfig {
                backend: Arc::clone(&backend),
                cluster: spec.cluster.as_str().to_owned(),
                record: Box::new(MemoryServiceRecordStore::new()),
            },
            ServiceWatcherOutputs {
                upsert: services.clone().recipient(),
                delete: services.clone().recipient(),
                list: services.clone().recipient(),
            },
        )
        .map_err(cluster_state)?
        .start();

        let ipam = IpamActor::new(spec.pod_cidr, Box::new(MemoryIpamStore::new()))
            .map_err(|source| NodeError::Ipam {
                node: node(),
                range: spec.pod_cidr,
                source,
            })?
            .start();
        let router = ipam
            .send(actors::ipam::Dump)
            .await
            .map_err(|_| gone("IPAM"))?
            .router;
        let upsert_ip: Recipient<UpsertIp> = match spec.fault {
            Some(NodeFault::DropUpsertIp { nth }) => {
                UpsertIpFilter::new(ipcache.clone().recipient(), nth)
                    .start()
                    .recipient()
            }
            _ => ipcache.clone().recipient(),
        };
        let endpoints = EndpointManager::new(
            EndpointConfig::new(spec.state_dir.clone(), router),
            EndpointOutputs {
                allocate_ip: ipam.clone().recipient(),
                release_ip: ipam.clone().recipient(),
                allocate_identity: identity.clone().recipient(),
                release_identity: identity.clone().recipient(),
                upsert_ip,
                delete_ip: ipcache.clone().recipient(),
                upsert_lxc: datapath.clone().recipient(),
                delete_lxc: datapath.clone().recipient(),
                attach: datapath.clone().recipient(),
                detach: datapath.clone().recipient(),
                policy_wanted: policy.clone().recipient(),
                policy_removed: policy.clone().recipient(),
                policy_wait: policy.clone().recipient(),
            },
            Arc::new(FakeLinks::new()),
        )
        .start();

        let nodes = NodeManager::new(NodeManagerConfig {
            cluster: spec.cluster.clone(),
            cluster_id: spec.cluster_id,
            local: node_record(&spec),
            kvstore: Some(NodeKvstoreConfig {
                backend: Arc::clone(&backend),
                lease,
            }),
            routes: Arc::new(FakeNodeRoutes::new(RoutingMode::Native)),
            ipcache: Some(NodeIpcacheOutputs {
                upsert: ipcache.clone().recipient(),
                delete: ipcache.clone().recipient(),
            }),
        })
        .start();
        actix::spawn(republish_on_new_lease(
            leases,
            allocator,
            ipcache.clone().recipient(),
            nodes.clone().recipient(),
        ));

        let mesh = spec.mesh.as_ref().map(|mesh| {
            let mut config = ClusterMeshConfig::new(
                mesh.config_dir.clone(),
                spec.cluster.clone(),
                spec.cluster_id,
            );
            // The directory never changes during a run; reading it less often saves wall time.
            config.poll_interval = MESH_POLL_INTERVAL;
            ClusterMesh::new(
                config,
                ClusterMeshOutputs {
                    identities: identity.clone().recipient(),
                    nodes: nodes.clone().recipient(),
                    services: service_watcher.clone().recipient(),
                    ipcache_upsert: ipcache.clone().recipient(),
                    ipcache_delete: ipcache.clone().recipient(),
                },
                Arc::new(SimConnector::new(Arc::clone(&mesh.stores), sim_backend)),
            )
            .start()
        });

        // The restore: no endpoints to claim on a fresh node, but the same handshake tells
        // the datapath that every source has handed its state over.
        endpoints
            .send(RestoreEndpoints)
            .await
            .map_err(|_| gone("endpoint manager"))?
            .map_err(|source| NodeError::Endpoints {
                node: node(),
                source,
            })?;
        services
            .send(actors::service::ListServices)
            .await
            .map_err(|_| gone("service manager"))?;
        datapath
            .send(InitialSyncDone)
            .await
            .map_err(|_| gone("datapath actor"))?;

        Ok(NodeActors {
            datapath,
            identity,
            policy,
            ipcache,
            services,
            ipam,
            endpoints,
            nodes,
            policy_watcher,
            service_watcher,
            mesh,
        })
    }
}

/// The node record the node manager publishes, as an agent in kvstore mode writes it.
fn node_record(spec: &NodeSpec) -> Node {
    Node {
        name: spec.name.clone(),
        cluster: spec.cluster.as_str().to_owned(),
        ip_addresses: vec![NodeAddress {
            address_type: "InternalIP".to_owned(),
            ip: Some(IpAddr::V4(spec.node_ip)),
        }],
        ipv4_alloc_cidr: Some(NodeCidr::new(IpNet::V4(spec.pod_cidr))),
        cluster_id: u32::from(spec.cluster_id.get()),
        source: "local".to_owned(),
        ..Node::default()
    }
}

/// Writes every key of the node again when its lease was replaced (identity slave keys,
/// ipcache entries, the node record), as the agent does. Ends when the lease keeper goes.
async fn republish_on_new_lease(
    mut leases: tokio::sync::watch::Receiver<LeaseId>,
    allocator: Arc<IdentityAllocator>,
    ipcache: Recipient<KvstoreLeaseChanged>,
    nodes: Recipient<NodeLeaseChanged>,
) {
    while leases.changed().await.is_ok() {
        let lease = *leases.borrow_and_update();
        nodes.do_send(NodeLeaseChanged { lease });
        ipcache.do_send(KvstoreLeaseChanged { lease });
        if let Err(error) = allocator.resync(lease).await {
            tracing::warn!(%error, %lease, "cannot write identity keys under the new lease");
        }
    }
}
