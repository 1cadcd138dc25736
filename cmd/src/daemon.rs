//! The agent's wiring: which actors run, on which arbiter, and who sends what to whom
//! (DESIGN 3). Kept apart from the binary so tests can start the same agent over the fake
//! datapath without root.
//!
//! Start order matters for restarts: the Datapath actor adopts the pinned maps first, the
//! service manager rebuilds its ids from them, and only when every source of desired state has
//! handed its initial state over does the datapath get `InitialSyncDone` and start pruning.
//! The API answers `503` on `/healthz` until then.
//!
//! The identity actor publishes identity changes straight to the policy repository and serves
//! the repository's CIDR identity requests, upserting those identities into the ipcache
//! (source `generated`, as upstream). API-imported rules are persisted in the state dir and
//! restored before any endpoint, so restored endpoints get the policy they had.
//!
//! In kvstore mode ([`ClusterMembership`]) the agent also joins its cluster: the ipcache
//! publishes local endpoints and reads the other nodes' ones, the node manager publishes this
//! node and routes to the others' pod CIDRs, the policy and service watchers import the
//! cluster-wide policies and services, and a replaced lease makes every publisher write its
//! keys again. The kvstore being unreachable changes nothing in the datapath.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use actix::{Actor, Addr, Arbiter, AsyncContext, Context, Recipient};
use actors::clusterstate::{
    ClusterStateError, FileImportedPoliciesStore, FileServiceRecordStore, PolicyWatcher,
    PolicyWatcherConfig, PolicyWatcherOutputs, ServiceWatcher, ServiceWatcherConfig,
    ServiceWatcherOutputs,
};
use actors::endpoint::{
    EndpointConfig, EndpointError, EndpointManager, EndpointOutputs, RestoreEndpoints,
};
use actors::identity::{IdentityActor, IdentityBackend, IdentityConfig, RestoreCidrIdentities};
use actors::ipam::{FileIpamStore, IpamActor, IpamError};
use actors::ipcache::{
    IpCacheActor, IpCacheConfig, IpCacheOutputs, KvstoreLeaseChanged, KvstoreSyncConfig,
};
use actors::node::{
    NodeIpcacheOutputs, NodeKvstoreConfig, NodeLeaseChanged, NodeManager, NodeManagerConfig,
};
use actors::policy::{
    EnforcementMode, FilePolicyStore, PolicyConfig, PolicyError, PolicyRepository, PolicyState,
};
use actors::service::{
    ServiceError, ServiceIdRanges, ServiceManager, ServiceOutputs, ServiceSnapshot,
};
use clustermesh::{ClusterMesh, ClusterMeshConfig, ClusterMeshOutputs};
use datapath::api::{Datapath, EndpointLinks, MapKey, MapName, MapValue};
use datapath::reconciler::{
    DatapathActor, DatapathActorConfig, InitialSyncDone, ListMap, ReconcileError,
};
use datapath::routes::NodeRoutes;
use ipnet::Ipv4Net;
use kvstore::allocator::IdentityAllocator;
use kvstore::lease::LeaseKeeper;
use kvstore::{Backend, LeaseId};
use model::identity::{ClusterId, ClusterName};

use crate::kvstore_mode::local_node;

/// How identities are kept, as the health answer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvstoreMode {
    /// No `--kvstore`: identities are allocated in process.
    Disabled,
    /// `--kvstore etcd`, with the endpoints it talks to.
    Etcd { endpoints: Vec<String> },
}

/// What an agent in kvstore mode shares with the rest of its cluster.
#[derive(Debug, Clone)]
pub struct ClusterMembership {
    pub backend: Arc<dyn Backend>,
    /// The agent's lease; every key it publishes hangs off it, and a replacement lease makes
    /// every publisher write its keys again.
    pub lease: Arc<LeaseKeeper>,
    /// This node's underlay address: published in the node record and as every local
    /// ipcache entry's host.
    pub node_ip: Ipv4Addr,
    /// Routes (or tunnels) to other nodes' pod CIDRs.
    pub routes: Arc<dyn NodeRoutes>,
    /// ClusterMesh (`--clustermesh-config DIR`): the remote clusters to import.
    pub mesh: Option<MeshMembership>,
}

/// How this agent reaches the other clusters of its mesh.
#[derive(Debug, Clone)]
pub struct MeshMembership {
    /// One etcd config file per remote cluster, file name = cluster name.
    pub config_dir: PathBuf,
    pub connector: Arc<dyn clustermesh::Connector>,
}

/// What the agent needs to start, already parsed and validated by the binary (or a test).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub cluster_name: ClusterName,
    pub cluster_id: ClusterId,
    pub enforcement: EnforcementMode,
    /// The node's pod CIDR; without it there is no IPAM.
    pub ipv4_range: Option<Ipv4Net>,
    /// Where IPAM keeps its allocations.
    pub state_dir: PathBuf,
    /// Where maps are pinned (`<bpf-root>/tc/globals`), for the map paths the API shows.
    pub map_dir: PathBuf,
    pub identity_backend: IdentityBackend,
    pub kvstore: KvstoreMode,
    /// Kvstore mode: publish this node and its endpoints, learn the other nodes'.
    pub cluster: Option<ClusterMembership>,
    pub hubble_enabled: bool,
}

/// Everything that can keep the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot restore services from the datapath's lb4 maps")]
    RestoreServices(#[source] ServiceError),
    #[error(
        "cannot start IPAM for {range} with state in {state_dir}: fix or remove the state file \
         once no endpoint uses its addresses"
    )]
    Ipam {
        range: Ipv4Net,
        state_dir: PathBuf,
        #[source]
        source: IpamError,
    },
    #[error("cannot read the pinned ipcache to restore CIDR identities")]
    ReadIpcache(#[source] ReconcileError),
    #[error(
        "cannot restore the policy rules persisted in {state_dir}: fix or remove the policy \
         state file there and import the rules again"
    )]
    RestorePolicy {
        state_dir: PathBuf,
        #[source]
        source: PolicyError,
    },
    #[error(
        "cannot read the record of kvstore policies and services in {state_dir}: fix or remove \
         kvstore-policies.json / kvstore-services.json there"
    )]
    ClusterState {
        state_dir: PathBuf,
        #[source]
        source: ClusterStateError,
    },
    #[error("the {actor} stopped during start-up")]
    ActorGone { actor: &'static str },
    #[error("cannot restore the endpoints of the previous agent from {state_dir}")]
    RestoreEndpoints {
        state_dir: PathBuf,
        #[source]
        source: EndpointError,
    },
}

/// The running actors, as the REST API and the metrics endpoint reach them.
#[derive(Debug, Clone)]
pub struct AgentHandles {
    pub config: AgentConfig,
    pub datapath: Addr<DatapathActor>,
    pub identity: Addr<IdentityActor>,
    pub policy: Addr<PolicyRepository>,
    pub ipcache: Addr<IpCacheActor>,
    pub services: Addr<ServiceManager>,
    pub ipam: Option<Addr<IpamActor>>,
    /// Present in kvstore mode: this node's record and the routes to the others.
    pub nodes: Option<Addr<NodeManager>>,
    /// Present with `--clustermesh-config`: the remote clusters and their status.
    pub mesh: Option<Addr<ClusterMesh>>,
    /// Present with IPAM: endpoints need addresses.
    pub endpoints: Option<Addr<EndpointManager>>,
    /// Set by [`Agent::restore`] once the restore is complete and the datapath may prune.
    pub ready: Arc<AtomicBool>,
    /// Set by `hubble_server::start` when Hubble runs (`--enable-hubble`), for the status.
    pub hubble: Arc<OnceLock<Arc<hubble::observer::LocalObserver>>>,
}

impl AgentHandles {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The started agent: its handles and the arbiter the Datapath actor runs on.
#[derive(Debug)]
pub struct Agent {
    pub handles: AgentHandles,
    datapath_arbiter: Arbiter,
}

impl Agent {
    /// Stops the datapath's arbiter. Pinned maps and links stay: the datapath keeps enforcing
    /// while no agent runs.
    pub fn stop(self) {
        self.datapath_arbiter.stop();
    }
}

/// Starts every actor; [`Agent::restore`] then completes the start. `links` builds the pods'
/// veth pairs (netlink in production, the fake in tests). Must run inside an actix `System`
/// (the binary's `sys.block_on`, or `#[actix_rt::test]`).
pub async fn start_agent(
    config: AgentConfig,
    datapath: Box<dyn Datapath>,
    links: Arc<dyn EndpointLinks>,
) -> Result<Agent, StartError> {
    // The reconciler makes syscalls on every write: its own thread keeps the API and the CNI
    // path from waiting behind it.
    let datapath_arbiter = Arbiter::new();
    let datapath = DatapathActor::start_in_arbiter(&datapath_arbiter.handle(), move |_| {
        DatapathActor::new(datapath, DatapathActorConfig::default())
    });

    let (snapshot, problems) = ServiceSnapshot::read(&datapath.clone().recipient())
        .await
        .map_err(StartError::RestoreServices)?;
    for problem in &problems {
        tracing::warn!(?problem, "a service in the lb4 maps could not be restored");
    }
    tracing::info!(
        services = snapshot.services.len(),
        "services restored from the datapath"
    );
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
            node_ip: config.cluster.as_ref().map(|c| IpAddr::V4(c.node_ip)),
            kvstore: config.cluster.as_ref().map(|c| KvstoreSyncConfig {
                backend: Arc::clone(&c.backend),
                lease: c.lease.lease(),
                consume: true,
            }),
        },
        IpCacheOutputs {
            upsert: datapath.clone().recipient(),
            delete: datapath.clone().recipient(),
        },
    )
    .start();

    // The repository and the identity actor refer to each other: create the repository's
    // context first so its address exists before the identity actor starts.
    let policy_ctx = Context::<PolicyRepository>::new();
    let identity = IdentityActor::new(IdentityConfig {
        cluster_id: config.cluster_id,
        backend: config.identity_backend.clone(),
        dual_stack: false,
        subscribers: vec![policy_ctx.address().recipient()],
    })
    .with_ipcache(ipcache.clone().recipient(), ipcache.clone().recipient())
    .start();
    // CIDR identities keep their ids across a restart when still free, so the policy maps
    // and ipcache entries computed from them stay as the datapath holds them.
    let pinned_ipcache = datapath
        .send(ListMap {
            map: MapName::Ipcache,
        })
        .await
        .map_err(|_| StartError::ActorGone {
            actor: "datapath actor",
        })?
        .map_err(StartError::ReadIpcache)?;
    let cidr_identities = pinned_ipcache
        .into_iter()
        .filter_map(|entry| match entry {
            (MapKey::Ipcache(key), MapValue::Ipcache(info)) if info.identity.is_local_scope() => {
                Some((key.prefix(), info.identity))
            }
            _ => None,
        })
        .collect();
    identity
        .send(RestoreCidrIdentities {
            identities: cidr_identities,
        })
        .await
        .map_err(|_| StartError::ActorGone {
            actor: "identity allocator",
        })?;
    let repository = PolicyRepository::with_store(
        PolicyState::new(PolicyConfig {
            enforcement: config.enforcement,
            cluster_name: config.cluster_name.clone(),
            ..PolicyConfig::default()
        }),
        Box::new(FilePolicyStore::in_state_dir(&config.state_dir)),
        datapath.clone().recipient(),
        identity.clone().recipient(),
    )
    .map_err(|source| StartError::RestorePolicy {
        state_dir: config.state_dir.clone(),
        source,
    })?;
    let policy = policy_ctx.run(repository);
    // Once the repository answers, the CIDR identity requests of its restored rules wait in
    // the identity actor's mailbox ahead of every endpoint's identity allocation.
    policy
        .send(actors::policy::Dump)
        .await
        .map_err(|_| StartError::ActorGone {
            actor: "policy repository",
        })?;

    // Kvstore mode: cluster-wide policies and services come from the kvstore as well.
    let mut service_watcher = None;
    if let Some(cluster) = &config.cluster {
        let cluster_state_error = |source| StartError::ClusterState {
            state_dir: config.state_dir.clone(),
            source,
        };
        PolicyWatcher::new(
            PolicyWatcherConfig {
                backend: Arc::clone(&cluster.backend),
                record: Box::new(FileImportedPoliciesStore::in_state_dir(&config.state_dir)),
            },
            PolicyWatcherOutputs {
                import: policy.clone().recipient(),
                delete: policy.clone().recipient(),
            },
        )
        .map_err(cluster_state_error)?
        .start();
        service_watcher = Some(
            ServiceWatcher::new(
                ServiceWatcherConfig {
                    backend: Arc::clone(&cluster.backend),
                    cluster: config.cluster_name.as_str().to_owned(),
                    record: Box::new(FileServiceRecordStore::in_state_dir(&config.state_dir)),
                },
                ServiceWatcherOutputs {
                    upsert: services.clone().recipient(),
                    delete: services.clone().recipient(),
                    list: services.clone().recipient(),
                },
            )
            .map_err(cluster_state_error)?
            .start(),
        );
    }

    let ipam = match config.ipv4_range {
        Some(range) => {
            let store = FileIpamStore::in_state_dir(&config.state_dir);
            let actor =
                IpamActor::new(range, Box::new(store)).map_err(|source| StartError::Ipam {
                    range,
                    state_dir: config.state_dir.clone(),
                    source,
                })?;
            Some(actor.start())
        }
        None => None,
    };

    let endpoints = match &ipam {
        Some(ipam_addr) => {
            let router = ipam_addr
                .send(actors::ipam::Dump)
                .await
                .map_err(|_| StartError::ActorGone { actor: "IPAM" })?
                .router;
            let outputs = EndpointOutputs {
                allocate_ip: ipam_addr.clone().recipient(),
                release_ip: ipam_addr.clone().recipient(),
                allocate_identity: identity.clone().recipient(),
                release_identity: identity.clone().recipient(),
                upsert_ip: ipcache.clone().recipient(),
                delete_ip: ipcache.clone().recipient(),
                upsert_lxc: datapath.clone().recipient(),
                delete_lxc: datapath.clone().recipient(),
                attach: datapath.clone().recipient(),
                detach: datapath.clone().recipient(),
                policy_wanted: policy.clone().recipient(),
                policy_removed: policy.clone().recipient(),
                policy_wait: policy.clone().recipient(),
            };
            let manager = EndpointManager::new(
                EndpointConfig::new(config.state_dir.clone(), router),
                outputs,
                links,
            )
            .start();
            Some(manager)
        }
        None => {
            tracing::warn!("no --ipv4-range: endpoints cannot get addresses, CNI ADD will fail");
            None
        }
    };

    let nodes = match &config.cluster {
        Some(cluster) => {
            let local = local_node(
                &config.cluster_name,
                config.cluster_id,
                &config.node_name,
                cluster.node_ip,
                config.ipv4_range,
            );
            let manager = NodeManager::new(NodeManagerConfig {
                cluster: config.cluster_name.clone(),
                cluster_id: config.cluster_id,
                local,
                kvstore: Some(NodeKvstoreConfig {
                    backend: Arc::clone(&cluster.backend),
                    lease: cluster.lease.lease(),
                }),
                routes: Arc::clone(&cluster.routes),
                ipcache: Some(NodeIpcacheOutputs {
                    upsert: ipcache.clone().recipient(),
                    delete: ipcache.clone().recipient(),
                }),
            })
            .start();
            let allocator = match &config.identity_backend {
                IdentityBackend::Kvstore { allocator, .. } => Some(Arc::clone(allocator)),
                IdentityBackend::Local => None,
            };
            actix::spawn(republish_on_new_lease(
                cluster.lease.subscribe(),
                allocator,
                ipcache.clone().recipient(),
                manager.clone().recipient(),
            ));
            Some(manager)
        }
        None => None,
    };

    // ClusterMesh: remote clusters feed the identity actor, the ipcache, the node manager and
    // the service watcher, which all exist in kvstore mode (the binary refuses a mesh without).
    let mesh = match (&config.cluster, &nodes, &service_watcher) {
        (Some(cluster), Some(nodes), Some(service_watcher)) => cluster.mesh.as_ref().map(|mesh| {
            tracing::info!(dir = %mesh.config_dir.display(), "clustermesh: watching remote clusters");
            ClusterMesh::new(
                ClusterMeshConfig::new(
                    mesh.config_dir.clone(),
                    config.cluster_name.clone(),
                    config.cluster_id,
                ),
                ClusterMeshOutputs {
                    identities: identity.clone().recipient(),
                    nodes: nodes.clone().recipient(),
                    services: service_watcher.clone().recipient(),
                    ipcache_upsert: ipcache.clone().recipient(),
                    ipcache_delete: ipcache.clone().recipient(),
                },
                Arc::clone(&mesh.connector),
            )
            .start()
        }),
        _ => None,
    };

    Ok(Agent {
        handles: AgentHandles {
            config,
            datapath,
            identity,
            policy,
            ipcache,
            services,
            ipam,
            nodes,
            mesh,
            endpoints,
            ready: Arc::new(AtomicBool::new(false)),
            hubble: Arc::new(OnceLock::new()),
        },
        datapath_arbiter,
    })
}

impl Agent {
    /// Restores the previous agent's endpoints, then lets the datapath prune what nobody
    /// claimed, and marks the agent ready. Until then `/healthz` and endpoint creation answer
    /// 503, so the API can be served while this runs (CNI calls are told to try again).
    pub async fn restore(&self) -> Result<(), StartError> {
        let h = &self.handles;
        if let Some(manager) = &h.endpoints {
            let report = manager
                .send(RestoreEndpoints)
                .await
                .map_err(|_| StartError::ActorGone {
                    actor: "endpoint manager",
                })?
                .map_err(|source| StartError::RestoreEndpoints {
                    state_dir: h.config.state_dir.clone(),
                    source,
                })?;
            for (id, reason) in &report.removed {
                tracing::warn!(endpoint = %id, %reason, "endpoint not restored and removed");
            }
            tracing::info!(restored = report.restored.len(), "endpoints restored");
        }
        // The service manager hands its restored services to the datapath before it answers
        // any message, so one answered request means the restore is in the datapath.
        h.services
            .send(actors::service::ListServices)
            .await
            .map_err(|_| StartError::ActorGone {
                actor: "service manager",
            })?;
        h.datapath
            .send(InitialSyncDone)
            .await
            .map_err(|_| StartError::ActorGone {
                actor: "datapath actor",
            })?;
        h.ready.store(true, Ordering::Release);
        tracing::info!(node = %h.config.node_name, "restore complete, initial sync done");
        Ok(())
    }
}

/// Writes every key of this agent again when its lease was replaced: identity slave keys,
/// ipcache entries and the node record. Ends when the lease keeper goes.
async fn republish_on_new_lease(
    mut leases: tokio::sync::watch::Receiver<LeaseId>,
    allocator: Option<Arc<IdentityAllocator>>,
    ipcache: Recipient<KvstoreLeaseChanged>,
    nodes: Recipient<NodeLeaseChanged>,
) {
    while leases.changed().await.is_ok() {
        let lease = *leases.borrow_and_update();
        nodes.do_send(NodeLeaseChanged { lease });
        ipcache.do_send(KvstoreLeaseChanged { lease });
        if let Some(allocator) = &allocator {
            match allocator.resync(lease).await {
                Ok(keys) => {
                    tracing::info!(keys, %lease, "identity keys written under the new lease")
                }
                Err(error) => tracing::error!(
                    %error,
                    "cannot write identity keys under the new lease; other nodes may miss this \
                     node's identities until the next allocation"
                ),
            }
        }
    }
}
