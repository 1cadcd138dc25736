//! KVStoreMesh: caches every remote cluster into the local cluster's etcd, so that agents read
//! only their own etcd (upstream `pkg/clustermesh/kvstoremesh`).
//!
//! The remote clusters come from `--clustermesh-config DIR`: one etcd configuration file per
//! remote cluster, named after it. The directory is re-read periodically; a file that appears
//! starts a mirror, a file whose content changes reconnects it, and a file that disappears drains
//! the remote's cache. The directory is read by the agent's own reader (`crate::dir`), with the
//! same rules as upstream: only regular files containing `endpoints:` count; hidden files and
//! the local cluster's own file are ignored.
//!
//! For each remote cluster the mirror
//! 1. reads and validates `cilium/cluster-config/<remote>` in the remote etcd;
//! 2. writes `cilium/cluster-config/<remote>` into the local etcd with the remote's id and
//!    `cached: true` (so readers look under `cilium/cache/...`), and rewrites it periodically;
//! 3. for nodes, services, identities (master keys only: the rest is the remote allocator's
//!    business) and ipcache: waits for the remote's sync canary when it has them, lists and
//!    watches the remote prefix, writes every key under the local cache prefix
//!    (`cilium/cache/nodes/v1/<remote>/<node>`, `cilium/cache/services/v1/<remote>/<ns>/<name>`,
//!    `cilium/cache/identities/v1/<remote>/id/<n>`, `cilium/cache/ip/v1/<remote>/<ip>`), deletes
//!    cached keys the listing no longer has, writes the canary
//!    `cilium/synced/<remote>/cilium/cache/<kind>/v1`, and then follows the watch.
//!
//! A remote that is itself a kvstoremesh cache (`cached: true`) is read from its cache prefixes.
//! Values are copied byte for byte: validating them is the reading agent's job.
//!
//! Every cached key hangs on kvstoremesh's own lease, as upstream's do, so the cache vanishes
//! when kvstoremesh is gone for longer than the lease TTL. A lost lease restarts every mirror,
//! which writes everything again. A failing remote (etcd unreachable, watch ended) is reconnected
//! with backoff while its cache stays as it is. Draining a removed remote follows upstream:
//! delete its cluster configuration first (new readers stop connecting), wait a grace period so
//! connected agents notice, then delete its canaries and cache, retrying a few times.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kvstore::keys::{
    self, Capabilities, ClusterConfig, IDENTITIES_PREFIX, NODES_PREFIX, SERVICES_PREFIX,
    SYNCED_PREFIX,
};
use kvstore::lease::{DEFAULT_LEASE_TTL, LeaseKeeper};
use kvstore::{Backend, LeaseId, Txn, TxnOp, WatchEvent, WatchFrom};
use model::identity::{ClusterId, ClusterName};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Connector;
use crate::dir::{ConfigDirectory, DirChange};

/// Upstream's grace period between deleting a removed remote's cluster configuration and
/// deleting its cached data.
pub const DEFAULT_DRAIN_GRACE_PERIOD: Duration = Duration::from_secs(3 * 60);

/// How often the configuration directory is re-read.
pub const DEFAULT_CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How often each remote's cached cluster configuration is rewritten (upstream's enforcement
/// interval).
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// First delay before reconnecting a failed remote; it doubles up to [`MAX_RECONNECT_BACKOFF`].
pub const DEFAULT_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// The longest delay between two attempts to reconnect a remote.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(30);

/// Attempts to drain a removed remote after the first one fails, with a delay doubling from 2 s
/// (upstream's numbers).
const DRAIN_RETRIES: u32 = 5;
const DRAIN_FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// Keys written per transaction while copying a listing (etcd's default `--max-txn-ops` is 128).
const TXN_BATCH: usize = 128;

/// The ipcache's prefix without the address space: the name of its canary and the parent of
/// its cache (`cilium/cache/ip/v1/<remote>/...` replaces `.../default/...`).
const IPCACHE_STATE_PREFIX: &str = "cilium/state/ip/v1";

/// Why kvstoremesh, or one remote cluster's mirror, failed.
#[derive(Debug, thiserror::Error)]
pub enum KvstoreMeshError {
    #[error("cannot read clustermesh config directory {path}: {source}")]
    ConfigDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to remote cluster {cluster}: {source}")]
    Connect {
        cluster: String,
        #[source]
        source: kvstore::Error,
    },
    #[error("remote cluster {cluster}: {op} failed: {source}")]
    Kvstore {
        cluster: String,
        op: &'static str,
        #[source]
        source: kvstore::Error,
    },
    #[error(
        "remote cluster {cluster} has no cluster configuration at cilium/cluster-config/{cluster}: start its clustermesh-apiserver (or check the file name matches the cluster name)"
    )]
    MissingClusterConfig { cluster: String },
    #[error(
        "remote cluster {cluster} has cluster id {id}: a cluster in a mesh needs an id from 1 to 255"
    )]
    InvalidClusterId { cluster: String, id: u32 },
    #[error(
        "remote cluster {cluster} has cluster id {id}, the id of the local cluster: every cluster in a mesh needs its own id"
    )]
    ClusterIdClash { cluster: String, id: u32 },
    #[error("{name} must be longer than zero")]
    ZeroInterval { name: &'static str },
    #[error("remote cluster {cluster}: watch of {prefix:?} ended")]
    WatchEnded { cluster: String, prefix: String },
}

/// What to cache and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvstoreMeshConfig {
    /// The local cluster: its own file in the directory is ignored and its id is refused.
    pub local_cluster: ClusterName,
    pub local_cluster_id: ClusterId,
    /// One etcd configuration file per remote cluster, named after the cluster.
    pub config_dir: PathBuf,
    /// TTL of the lease every cached key hangs on.
    pub lease_ttl: Duration,
    /// How often the directory is re-read.
    pub config_poll_interval: Duration,
    /// Between deleting a removed remote's cluster configuration and deleting its cache.
    pub drain_grace_period: Duration,
    /// How often each cached cluster configuration is rewritten.
    pub resync_interval: Duration,
    /// First delay before reconnecting a failed remote (doubling up to 30 s).
    pub reconnect_backoff: Duration,
}

impl KvstoreMeshConfig {
    /// Upstream's timings for the given local cluster and directory.
    pub fn new(
        local_cluster: ClusterName,
        local_cluster_id: ClusterId,
        config_dir: PathBuf,
    ) -> Self {
        KvstoreMeshConfig {
            local_cluster,
            local_cluster_id,
            config_dir,
            lease_ttl: DEFAULT_LEASE_TTL,
            config_poll_interval: DEFAULT_CONFIG_POLL_INTERVAL,
            drain_grace_period: DEFAULT_DRAIN_GRACE_PERIOD,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            reconnect_backoff: DEFAULT_RECONNECT_BACKOFF,
        }
    }

    /// Checks the intervals (the drain grace period may be zero).
    pub fn validate(&self) -> Result<(), KvstoreMeshError> {
        for (name, value) in [
            ("lease TTL", self.lease_ttl),
            ("config poll interval", self.config_poll_interval),
            ("resync interval", self.resync_interval),
            ("reconnect backoff", self.reconnect_backoff),
        ] {
            if value.is_zero() {
                return Err(KvstoreMeshError::ZeroInterval { name });
            }
        }
        Ok(())
    }
}

/// Caches every remote cluster of the configuration directory into the local etcd.
#[derive(Debug)]
pub struct KvstoreMesh {
    config: Arc<KvstoreMeshConfig>,
    local: Arc<dyn Backend>,
    connector: Arc<dyn Connector>,
}

/// A running mirror of one remote cluster.
#[derive(Debug)]
struct Mirror {
    config_file: PathBuf,
    task: JoinHandle<()>,
}

impl KvstoreMesh {
    /// A kvstoremesh writing into `local` (the cluster's own etcd) and reaching remote clusters
    /// through `connector`.
    pub fn new(
        config: KvstoreMeshConfig,
        local: Arc<dyn Backend>,
        connector: Arc<dyn Connector>,
    ) -> Result<Self, KvstoreMeshError> {
        config.validate()?;
        Ok(KvstoreMesh {
            config: Arc::new(config),
            local,
            connector,
        })
    }

    /// Caches until `shutdown` turns `true`. Fails only when the configuration directory cannot
    /// be read at start; later failures are logged and retried.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), KvstoreMeshError> {
        let dir = self.config.config_dir.clone();
        std::fs::read_dir(&dir).map_err(|source| KvstoreMeshError::ConfigDir {
            path: dir.clone(),
            source,
        })?;
        let mut directory = ConfigDirectory::new(dir, self.config.local_cluster.clone());
        let keeper = tokio::select! {
            () = stopped(&mut shutdown) => return Ok(()),
            keeper = take_lease(&self.local, self.config.lease_ttl, self.config.reconnect_backoff) => keeper,
        };
        let mut lease = keeper.lease();
        let mut lease_changes = keeper.subscribe();
        let mut mirrors: BTreeMap<ClusterName, Mirror> = BTreeMap::new();
        let mut drains: HashMap<ClusterName, JoinHandle<()>> = HashMap::new();
        let mut poll = tokio::time::interval(self.config.config_poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => break,
                changed = lease_changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    lease = *lease_changes.borrow_and_update();
                    tracing::info!(%lease, "lease replaced; caching every remote cluster again");
                    for (name, mirror) in std::mem::take(&mut mirrors) {
                        stop(mirror.task).await;
                        let task = self.spawn_mirror(&name, &mirror.config_file, lease);
                        mirrors.insert(name, Mirror { config_file: mirror.config_file, task });
                    }
                }
                _ = poll.tick() => {
                    for change in directory.scan() {
                        self.apply_change(change, lease, &mut mirrors, &mut drains).await;
                    }
                }
            }
            drains.retain(|_, task| !task.is_finished());
        }
        for (_, mirror) in mirrors {
            stop(mirror.task).await;
        }
        for (_, task) in drains {
            stop(task).await;
        }
        // Not revoked: a restarting kvstoremesh must not empty the cache under its agents.
        drop(keeper);
        Ok(())
    }

    async fn apply_change(
        &self,
        change: DirChange,
        lease: LeaseId,
        mirrors: &mut BTreeMap<ClusterName, Mirror>,
        drains: &mut HashMap<ClusterName, JoinHandle<()>>,
    ) {
        let (name, path) = match change {
            DirChange::Removed { name } => {
                if let Some(mirror) = mirrors.remove(&name) {
                    tracing::info!(cluster = %name, "remote cluster configuration removed; draining its cache");
                    stop(mirror.task).await;
                    let drain = drain(
                        Arc::clone(&self.local),
                        name.to_string(),
                        self.config.drain_grace_period,
                    );
                    drains.insert(name, tokio::spawn(drain));
                }
                return;
            }
            DirChange::Added { name, path } => {
                tracing::info!(cluster = %name, "remote cluster configuration added");
                (name, path)
            }
            DirChange::Changed { name, path } => {
                tracing::info!(cluster = %name, "remote cluster configuration changed; reconnecting");
                (name, path)
            }
        };
        if let Some(mirror) = mirrors.remove(&name) {
            stop(mirror.task).await;
        }
        // A remote that comes back while its cache drains: the new mirror rewrites the
        // configuration and removes stale keys itself, so the drain must not delete them.
        if let Some(task) = drains.remove(&name) {
            stop(task).await;
        }
        let task = self.spawn_mirror(&name, &path, lease);
        mirrors.insert(
            name,
            Mirror {
                config_file: path,
                task,
            },
        );
    }

    fn spawn_mirror(
        &self,
        name: &ClusterName,
        config_file: &Path,
        lease: LeaseId,
    ) -> JoinHandle<()> {
        let remote = RemoteMirror {
            name: name.clone(),
            cluster: name.to_string(),
            config_file: config_file.to_owned(),
            config: Arc::clone(&self.config),
            local: Arc::clone(&self.local),
            connector: Arc::clone(&self.connector),
            lease,
        };
        tokio::spawn(remote.run())
    }
}

/// Resolves once `shutdown` turns `true` (or its sender is gone). Returns nothing, so that no
/// borrow of the channel is held across the awaits of a `select!` branch.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A closed channel means nobody can ask for a stop any more: stop too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn stop(task: JoinHandle<()>) {
    task.abort();
    // The task was aborted (or had already finished): the outcome carries nothing to report.
    let _ = task.await;
}

async fn take_lease(local: &Arc<dyn Backend>, ttl: Duration, retry: Duration) -> LeaseKeeper {
    loop {
        match LeaseKeeper::start(Arc::clone(local), ttl).await {
            Ok(keeper) => return keeper,
            Err(error) => {
                tracing::warn!(%error, "cannot take a kvstore lease in the local etcd; retrying");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// One kind of state mirrored from a remote cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reflection {
    /// The canary name in the remote's terms (`cilium/state/nodes/v1` or its cache form).
    remote_canary: String,
    /// The prefix watched in the remote etcd, with a trailing `/`.
    remote_prefix: String,
    /// The canary name written locally (`cilium/cache/nodes/v1`).
    local_canary: String,
    /// Where the keys go in the local etcd, with a trailing `/`.
    local_prefix: String,
}

/// The four reflections of `cluster`, reading its cache prefixes when `cached`.
fn reflections(cluster: &str, cached: bool) -> [Reflection; 4] {
    let adapt = |prefix: &str| {
        if cached {
            keys::state_to_cache_prefix(prefix)
        } else {
            prefix.to_owned()
        }
    };
    let cache = keys::state_to_cache_prefix;
    let make = |state: &str, remote_prefix: String, local_prefix: String| Reflection {
        remote_canary: adapt(state),
        remote_prefix,
        local_canary: cache(state),
        local_prefix,
    };
    let ipcache_remote = if cached {
        format!("{}/{cluster}/", cache(IPCACHE_STATE_PREFIX))
    } else {
        format!("{IPCACHE_STATE_PREFIX}/default/")
    };
    let identities_remote = if cached {
        format!("{}/{cluster}/id/", cache(IDENTITIES_PREFIX))
    } else {
        format!("{IDENTITIES_PREFIX}/id/")
    };
    [
        make(
            NODES_PREFIX,
            format!("{}/{cluster}/", adapt(NODES_PREFIX)),
            format!("{}/{cluster}/", cache(NODES_PREFIX)),
        ),
        make(
            SERVICES_PREFIX,
            format!("{}/{cluster}/", adapt(SERVICES_PREFIX)),
            format!("{}/{cluster}/", cache(SERVICES_PREFIX)),
        ),
        make(
            IDENTITIES_PREFIX,
            identities_remote,
            format!("{}/{cluster}/id/", cache(IDENTITIES_PREFIX)),
        ),
        make(
            IPCACHE_STATE_PREFIX,
            ipcache_remote,
            format!("{}/{cluster}/", cache(IPCACHE_STATE_PREFIX)),
        ),
    ]
}

/// The mirror of one remote cluster, reconnecting with backoff until aborted.
struct RemoteMirror {
    name: ClusterName,
    /// `name` as a string, for keys and errors.
    cluster: String,
    config_file: PathBuf,
    config: Arc<KvstoreMeshConfig>,
    local: Arc<dyn Backend>,
    connector: Arc<dyn Connector>,
    lease: LeaseId,
}

impl RemoteMirror {
    async fn run(self) {
        let mut backoff = self.config.reconnect_backoff;
        loop {
            let mut synced = false;
            let error = match self.run_once(&mut synced).await {
                Ok(never) => match never {},
                Err(error) => error,
            };
            if synced {
                backoff = self.config.reconnect_backoff;
            }
            tracing::warn!(cluster = %self.cluster, %error, retry_in = ?backoff, "remote cluster mirror failed; its cache is kept and it reconnects");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF.max(self.config.reconnect_backoff));
        }
    }

    fn kvstore_error(&self, op: &'static str) -> impl FnOnce(kvstore::Error) -> KvstoreMeshError {
        let cluster = self.cluster.clone();
        move |source| KvstoreMeshError::Kvstore {
            cluster,
            op,
            source,
        }
    }

    /// Connects, validates and mirrors until something fails; `synced` turns true once every
    /// kind has been copied completely.
    async fn run_once(
        &self,
        synced: &mut bool,
    ) -> Result<std::convert::Infallible, KvstoreMeshError> {
        let remote = self
            .connector
            .connect(&self.name, &self.config_file)
            .await
            .map_err(|source| KvstoreMeshError::Connect {
                cluster: self.cluster.clone(),
                source,
            })?;
        let source = keys::read_cluster_config(&*remote, &self.cluster)
            .await
            .map_err(self.kvstore_error("read cluster configuration"))?
            .ok_or_else(|| KvstoreMeshError::MissingClusterConfig {
                cluster: self.cluster.clone(),
            })?;
        self.validate(&source)?;
        let cached = ClusterConfig {
            id: source.id,
            capabilities: Capabilities {
                synced_canaries: true,
                cached: true,
                max_connected_clusters: source.capabilities.max_connected_clusters,
                service_exports_enabled: source.capabilities.service_exports_enabled,
            },
        };
        keys::write_cluster_config(&*self.local, &self.cluster, &cached, Some(self.lease))
            .await
            .map_err(self.kvstore_error("write cached cluster configuration"))?;
        tracing::info!(cluster = %self.cluster, id = source.id, cached = source.capabilities.cached, "connected to remote cluster");

        let (synced_tx, mut synced_rx) = tokio::sync::mpsc::channel::<()>(4);
        let mut reflectors = futures::stream::FuturesUnordered::new();
        for reflection in reflections(&self.cluster, source.capabilities.cached) {
            reflectors.push(self.reflect(
                Arc::clone(&remote),
                reflection,
                source.capabilities.synced_canaries,
                synced_tx.clone(),
            ));
        }
        drop(synced_tx);
        let mut pending = reflectors.len();
        let mut resync = tokio::time::interval(self.config.resync_interval);
        resync.tick().await;
        loop {
            tokio::select! {
                Some(result) = reflectors.next() => {
                    // A reflector only returns on failure.
                    let Err(error) = result;
                    return Err(error);
                }
                Some(()) = synced_rx.recv(), if pending > 0 => {
                    pending -= 1;
                    if pending == 0 {
                        *synced = true;
                        tracing::info!(cluster = %self.cluster, "remote cluster cached completely");
                    }
                }
                _ = resync.tick() => {
                    if let Err(error) = keys::write_cluster_config(&*self.local, &self.cluster, &cached, Some(self.lease)).await {
                        tracing::warn!(cluster = %self.cluster, %error, "cannot rewrite the cached cluster configuration; retrying later");
                    }
                }
            }
        }
    }

    fn validate(&self, source: &ClusterConfig) -> Result<(), KvstoreMeshError> {
        let id = source.id;
        let invalid = || KvstoreMeshError::InvalidClusterId {
            cluster: self.cluster.clone(),
            id,
        };
        let cluster_id = ClusterId::try_from(id).map_err(|_| invalid())?;
        if cluster_id == ClusterId::UNSET {
            return Err(invalid());
        }
        if cluster_id == self.config.local_cluster_id {
            return Err(KvstoreMeshError::ClusterIdClash {
                cluster: self.cluster.clone(),
                id,
            });
        }
        Ok(())
    }

    /// Copies one prefix: waits for the remote canary, lists, prunes, writes the local canary,
    /// then follows the watch. Returns only on failure.
    async fn reflect(
        &self,
        remote: Arc<dyn Backend>,
        reflection: Reflection,
        wait_for_canary: bool,
        synced: tokio::sync::mpsc::Sender<()>,
    ) -> Result<std::convert::Infallible, KvstoreMeshError> {
        if wait_for_canary {
            tracing::debug!(cluster = %self.cluster, canary = %reflection.remote_canary, "waiting for the remote sync canary");
            keys::wait_for_sync_canary(&*remote, &self.cluster, &reflection.remote_canary)
                .await
                .map_err(self.kvstore_error("wait for sync canary"))?;
        }
        let mut events = remote
            .watch(&reflection.remote_prefix, WatchFrom::List)
            .await
            .map_err(self.kvstore_error("watch"))?;
        let existing = self
            .local
            .list_prefix(&reflection.local_prefix)
            .await
            .map_err(self.kvstore_error("list local cache"))?;
        let mut cached: HashMap<String, (Vec<u8>, Option<LeaseId>)> = existing
            .kvs
            .into_iter()
            .map(|kv| (kv.key, (kv.value, kv.lease)))
            .collect();
        let mut listing: Vec<(String, Vec<u8>)> = Vec::new();
        let mut listed = false;
        while let Some(event) = events.next().await {
            let event = event.map_err(self.kvstore_error("watch"))?;
            match event {
                WatchEvent::Create(kv) | WatchEvent::Modify(kv) => {
                    let Some(local_key) = local_key(&reflection, &kv.key) else {
                        continue;
                    };
                    if listed {
                        self.local
                            .put(&local_key, kv.value, Some(self.lease))
                            .await
                            .map_err(self.kvstore_error("write cache"))?;
                    } else {
                        listing.push((local_key, kv.value));
                    }
                }
                WatchEvent::Delete { key, .. } => {
                    let Some(local_key) = local_key(&reflection, &key) else {
                        continue;
                    };
                    if listed {
                        self.local
                            .delete(&local_key)
                            .await
                            .map_err(self.kvstore_error("delete from cache"))?;
                    } else {
                        listing.retain(|(k, _)| *k != local_key);
                    }
                }
                WatchEvent::ListDone { .. } if !listed => {
                    let count = listing.len();
                    let mut ops = Vec::new();
                    for (key, value) in std::mem::take(&mut listing) {
                        let unchanged = cached
                            .remove(&key)
                            .is_some_and(|(old, lease)| old == value && lease == Some(self.lease));
                        if !unchanged {
                            ops.push(TxnOp::Put {
                                key,
                                value,
                                lease: Some(self.lease),
                            });
                        }
                    }
                    let stale = cached.len();
                    ops.extend(
                        std::mem::take(&mut cached)
                            .into_keys()
                            .map(|key| TxnOp::Delete { key }),
                    );
                    self.apply(ops).await?;
                    keys::write_sync_canary(
                        &*self.local,
                        &self.cluster,
                        &reflection.local_canary,
                        SystemTime::now(),
                        Some(self.lease),
                    )
                    .await
                    .map_err(self.kvstore_error("write sync canary"))?;
                    tracing::info!(cluster = %self.cluster, prefix = %reflection.local_prefix, keys = count, stale, "remote prefix cached");
                    listed = true;
                    // The receiver is gone only when the mirror is stopping.
                    let _ = synced.send(()).await;
                }
                WatchEvent::ListDone { .. } => {}
            }
        }
        Err(KvstoreMeshError::WatchEnded {
            cluster: self.cluster.clone(),
            prefix: reflection.remote_prefix,
        })
    }

    /// Applies puts and deletes in transactions of at most [`TXN_BATCH`] operations.
    async fn apply(&self, mut ops: Vec<TxnOp>) -> Result<(), KvstoreMeshError> {
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(TXN_BATCH));
            let txn = Txn {
                compares: Vec::new(),
                success: ops,
                failure: Vec::new(),
            };
            self.local
                .txn(txn)
                .await
                .map_err(self.kvstore_error("write cache"))?;
            ops = rest;
        }
        Ok(())
    }
}

/// The local cache key of a remote key, `None` for a key outside the watched prefix.
fn local_key(reflection: &Reflection, remote_key: &str) -> Option<String> {
    let rest = remote_key.strip_prefix(&reflection.remote_prefix)?;
    (!rest.is_empty()).then(|| format!("{}{rest}", reflection.local_prefix))
}

/// Removes what kvstoremesh cached for `cluster` (see the module docs), retrying on failure.
async fn drain(local: Arc<dyn Backend>, cluster: String, grace_period: Duration) {
    let mut backoff = DRAIN_FIRST_BACKOFF;
    for attempt in 0..=DRAIN_RETRIES {
        match drain_once(&*local, &cluster, attempt == 0, grace_period).await {
            Ok(()) => {
                tracing::info!(%cluster, "removed every cached key of the remote cluster");
                return;
            }
            Err(error) if attempt < DRAIN_RETRIES => {
                tracing::warn!(%cluster, %error, retry_in = ?backoff, "cannot drain the remote cluster's cache; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => {
                tracing::error!(%cluster, %error, "cannot drain the remote cluster's cache, giving up: the keys expire with kvstoremesh's lease, or delete cilium/cache/*/v1/{cluster}/ by hand");
            }
        }
    }
}

async fn drain_once(
    local: &dyn Backend,
    cluster: &str,
    with_grace_period: bool,
    grace_period: Duration,
) -> Result<(), kvstore::Error> {
    local.delete(&keys::cluster_config_key(cluster)).await?;
    if with_grace_period && !grace_period.is_zero() {
        tracing::info!(%cluster, ?grace_period, "waiting before removing the cache, so that agents disconnect first");
        tokio::time::sleep(grace_period).await;
    }
    let prefixes = [
        format!("{SYNCED_PREFIX}/{cluster}/"),
        format!("{}/{cluster}/", keys::state_to_cache_prefix(NODES_PREFIX)),
        format!(
            "{}/{cluster}/",
            keys::state_to_cache_prefix(SERVICES_PREFIX)
        ),
        format!(
            "{}/{cluster}/",
            keys::state_to_cache_prefix(IDENTITIES_PREFIX)
        ),
        format!(
            "{}/{cluster}/",
            keys::state_to_cache_prefix(IPCACHE_STATE_PREFIX)
        ),
    ];
    for prefix in prefixes {
        local.delete_prefix(&prefix).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflections_follow_upstreams_layout() {
        let [nodes, services, identities, ipcache] = reflections("c2", false);
        assert_eq!(nodes.remote_prefix, "cilium/state/nodes/v1/c2/");
        assert_eq!(nodes.local_prefix, "cilium/cache/nodes/v1/c2/");
        assert_eq!(nodes.remote_canary, "cilium/state/nodes/v1");
        assert_eq!(nodes.local_canary, "cilium/cache/nodes/v1");
        assert_eq!(services.local_prefix, "cilium/cache/services/v1/c2/");
        assert_eq!(identities.remote_prefix, "cilium/state/identities/v1/id/");
        assert_eq!(identities.local_prefix, "cilium/cache/identities/v1/c2/id/");
        assert_eq!(identities.local_canary, "cilium/cache/identities/v1");
        assert_eq!(ipcache.remote_prefix, "cilium/state/ip/v1/default/");
        assert_eq!(ipcache.local_prefix, "cilium/cache/ip/v1/c2/");
        assert_eq!(ipcache.remote_canary, "cilium/state/ip/v1");

        let [nodes, _, identities, ipcache] = reflections("c2", true);
        assert_eq!(nodes.remote_prefix, "cilium/cache/nodes/v1/c2/");
        assert_eq!(nodes.remote_canary, "cilium/cache/nodes/v1");
        assert_eq!(
            identities.remote_prefix,
            "cilium/cache/identities/v1/c2/id/"
        );
        assert_eq!(ipcache.remote_prefix, "cilium/cache/ip/v1/c2/");
    }

    #[test]
    fn local_keys_keep_the_remote_suffix() {
        let [_, _, identities, ipcache] = reflections("c2", false);
        assert_eq!(
            local_key(&identities, "cilium/state/identities/v1/id/131073").as_deref(),
            Some("cilium/cache/identities/v1/c2/id/131073")
        );
        assert_eq!(
            local_key(&ipcache, "cilium/state/ip/v1/default/10.2.0.5").as_deref(),
            Some("cilium/cache/ip/v1/c2/10.2.0.5")
        );
        assert_eq!(local_key(&ipcache, "cilium/state/ip/v1/default/"), None);
        assert_eq!(local_key(&ipcache, "cilium/state/ip/v1/other/x"), None);
    }
}
