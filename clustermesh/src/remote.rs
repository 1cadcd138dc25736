//! One task per remote cluster: connect through the [`Connector`], read and validate the
//! cluster configuration, watch the four resources and the heartbeat, and feed what changes to
//! the local actors. A lost session (heartbeat silence, watch error) keeps the imported state
//! and reconnects with backoff; the re-list then sends only the difference. The state is
//! drained (removals for everything imported) when the cluster's file is removed or it stays
//! disconnected past the drain timeout. Stopping the agent does not drain: the datapath keeps
//! forwarding to remote clusters across an agent restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use actors::clusterstate::messages::RemoteServices;
use actors::identity::RemoteIdentities;
use actors::ipcache::{DeleteIp, Source, UpsertIp};
use actors::node::RemoteNodes;
use futures::stream::{self, Stream, StreamExt};
use kvstore::keys::{
    ClusterConfig, HEARTBEAT_KEY, encode_timestamp, read_cluster_config, wait_for_sync_canary,
};
use kvstore::{Backend, WatchEvent, WatchFrom};
use model::identity::{ClusterId, ClusterName};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ClusterMeshConfig, ClusterMeshOutputs, Connector};
use crate::error::ConnectError;
use crate::import::{Batch, ImportState, IpcacheChange, IpcacheClaims, Kind};
use crate::status::{RemoteClusterConfigStatus, RemoteClusterStatus, RemoteClusterSynced};

/// How many ready watch events are applied (and sent) as one batch.
const BATCH_SIZE: usize = 1024;

/// What every remote cluster task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ClusterMeshConfig,
    pub(crate) outputs: ClusterMeshOutputs,
    pub(crate) connector: Arc<dyn Connector>,
    state: Mutex<SharedState>,
}

#[derive(Debug, Default)]
struct SharedState {
    /// The cluster id each remote cluster holds while its state is imported: two remote
    /// clusters with one id would import each other's identities.
    cluster_ids: BTreeMap<ClusterId, ClusterName>,
    ipcache: IpcacheClaims,
}

impl Shared {
    pub(crate) fn new(
        config: ClusterMeshConfig,
        outputs: ClusterMeshOutputs,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Shared {
            config,
            outputs,
            connector,
            state: Mutex::new(SharedState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SharedState> {
        // Every critical section leaves the maps consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn claim_cluster_id(&self, id: ClusterId, cluster: &ClusterName) -> Result<(), ConnectError> {
        let mut state = self.lock();
        match state.cluster_ids.get(&id) {
            Some(other) if other != cluster => Err(ConnectError::DuplicateClusterId {
                cluster: cluster.clone(),
                id,
                other: other.clone(),
            }),
            _ => {
                state.cluster_ids.insert(id, cluster.clone());
                Ok(())
            }
        }
    }

    fn release_cluster_id(&self, id: ClusterId, cluster: &ClusterName) {
        let mut state = self.lock();
        if state.cluster_ids.get(&id) == Some(cluster) {
            state.cluster_ids.remove(&id);
        }
    }

    /// Sends a batch of `cluster` to the local actors: identities first, so that the ipcache
    /// entries and policies referring to them find them.
    fn send(&self, cluster: &ClusterName, cluster_id: ClusterId, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let outputs = &self.outputs;
        if !batch.identities_added.is_empty() || !batch.identities_removed.is_empty() {
            outputs.identities.do_send(RemoteIdentities {
                cluster: cluster_id,
                added: batch.identities_added,
                removed: batch.identities_removed,
            });
        }
        if !batch.nodes_upserted.is_empty() || !batch.nodes_removed.is_empty() {
            outputs.nodes.do_send(RemoteNodes {
                cluster: cluster.clone(),
                upserted: batch.nodes_upserted,
                removed: batch.nodes_removed,
            });
        }
        let mut changes = Vec::new();
        {
            let mut state = self.lock();
            for (prefix, name) in batch.ip_removed {
                changes.extend(state.ipcache.remove(prefix, &(cluster.clone(), name)));
            }
            for (prefix, name, entry) in batch.ip_upserted {
                changes.extend(state.ipcache.upsert(prefix, (cluster.clone(), name), entry));
            }
        }
        for change in changes {
            match change {
                IpcacheChange::Upsert(key, entry) => outputs.ipcache_upsert.do_send(UpsertIp {
                    key,
                    source: Source::ClusterMesh,
                    entry,
                }),
                IpcacheChange::Delete(key) => outputs.ipcache_delete.do_send(DeleteIp {
                    key,
                    source: Source::ClusterMesh,
                }),
            }
        }
        if !batch.services_upserted.is_empty() || !batch.services_removed.is_empty() {
            outputs.services.do_send(RemoteServices {
                cluster: cluster.clone(),
                upserted: batch.services_upserted,
                removed: batch.services_removed,
            });
        }
    }
}

/// Instructions from the mesh to a remote cluster's task. Dropping the sender stops the task
/// without draining.
#[derive(Debug)]
enum Command {
    /// The configuration file changed: reconnect with it.
    Reconnect(PathBuf),
    /// The configuration file is gone: drain and stop.
    Remove,
}

/// The mesh's handle on one remote cluster's task.
#[derive(Debug)]
pub(crate) struct RemoteHandle {
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<Mutex<RemoteClusterStatus>>,
    task: JoinHandle<()>,
}

impl RemoteHandle {
    /// Starts the task of `name`. It waits for `predecessor` (the draining task of a previous
    /// file of the same name) first, so that its removals never overtake the new imports.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        name: ClusterName,
        config_path: PathBuf,
        predecessor: Option<JoinHandle<()>>,
    ) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(RemoteClusterStatus::new(name.clone())));
        let remote = Remote {
            state: ImportState::new(name.clone()),
            name,
            config_path,
            shared,
            status: Arc::clone(&status),
            commands: receiver,
            claimed: None,
            disconnected_since: None,
        };
        let task = tokio::spawn(async move {
            if let Some(predecessor) = predecessor {
                // A predecessor that panicked has nothing left to drain.
                let _ = predecessor.await;
            }
            remote.run().await;
        });
        RemoteHandle {
            commands,
            status,
            task,
        }
    }

    pub(crate) fn reconnect(&self, config_path: PathBuf) {
        // A task that ended has nothing to reconnect.
        let _ = self.commands.send(Command::Reconnect(config_path));
    }

    /// Asks the task to drain and stop; the returned handle completes once it has.
    pub(crate) fn remove(self) -> JoinHandle<()> {
        let _ = self.commands.send(Command::Remove);
        self.task
    }

    pub(crate) fn status(&self) -> RemoteClusterStatus {
        lock_status(&self.status).clone()
    }
}

fn lock_status(status: &Mutex<RemoteClusterStatus>) -> MutexGuard<'_, RemoteClusterStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a session or a wait ended.
enum End {
    /// The file changed: reconnect now with the new path.
    Reconfigured,
    Removed,
    /// The mesh is gone (agent shutdown).
    Stopped,
    /// The backoff wait is over.
    Elapsed,
    Failed(ConnectError),
}

fn command_end(command: Option<Command>, config_path: &mut PathBuf) -> End {
    match command {
        Some(Command::Reconnect(path)) => {
            *config_path = path;
            End::Reconfigured
        }
        Some(Command::Remove) => End::Removed,
        None => End::Stopped,
    }
}

/// One event source of a session.
enum Item {
    Data(Kind, Arc<str>, Result<WatchEvent, kvstore::Error>),
    Heartbeat(Result<WatchEvent, kvstore::Error>),
    Canary(Kind, Result<(), kvstore::Error>),
    /// The result of one status check of the remote kvstore.
    Status(Result<(), String>),
    Ended(String),
}

type ItemStream = Pin<Box<dyn Stream<Item = Item> + Send>>;

struct Remote {
    name: ClusterName,
    config_path: PathBuf,
    shared: Arc<Shared>,
    status: Arc<Mutex<RemoteClusterStatus>>,
    commands: mpsc::UnboundedReceiver<Command>,
    state: ImportState,
    /// The cluster id held in the shared registry while state is imported.
    claimed: Option<ClusterId>,
    /// When the last established session ended; the drain timeout counts from here.
    disconnected_since: Option<Instant>,
}

impl Remote {
    async fn run(mut self) {
        tracing::info!(cluster = %self.name, config = %self.config_path.display(), "new remote cluster configuration");
        let backoff = self.shared.config.backoff;
        let mut failures_in_a_row: u32 = 0;
        loop {
            let (end, established) = self.session().await;
            if established {
                failures_in_a_row = 0;
                self.disconnected_since = Some(Instant::now());
            }
            match end {
                End::Reconfigured => {
                    tracing::info!(cluster = %self.name, "etcd configuration changed, reconnecting");
                    self.set_disconnected("reconnecting with the changed configuration");
                    continue;
                }
                End::Removed => return self.remove(),
                End::Stopped => return,
                End::Failed(err) => self.record_failure(&err),
                End::Elapsed => {}
            }
            let delay = backoff
                .initial
                .saturating_mul(2u32.saturating_pow(failures_in_a_row.min(16)))
                .min(backoff.max);
            failures_in_a_row = failures_in_a_row.saturating_add(1);
            match self.wait(delay).await {
                End::Removed => return self.remove(),
                End::Stopped => return,
                End::Reconfigured | End::Elapsed | End::Failed(_) => {}
            }
        }
    }

    /// Connects, validates, then imports until the session ends. Returns whether the session
    /// was established (so the backoff starts over).
    async fn session(&mut self) -> (End, bool) {
        self.update_status(|s| s.status = "connecting".to_owned());
        let timeout = self.shared.config.connect_timeout;
        let attempt = establish(
            Arc::clone(&self.shared.connector),
            self.name.clone(),
            self.config_path.clone(),
        );
        let (backend, config) = tokio::select! {
            command = self.commands.recv() => return (command_end(command, &mut self.config_path), false),
            result = tokio::time::timeout(timeout, attempt) => match result {
                Ok(Ok(established)) => established,
                Ok(Err(err)) => return (End::Failed(err), false),
                Err(_) => return (End::Failed(ConnectError::Timeout(timeout)), false),
            },
        };
        let cluster_id = match self.accept_config(&config) {
            Ok(id) => id,
            Err(err) => return (End::Failed(err), false),
        };
        self.disconnected_since = None;
        let cached = config.capabilities.cached;
        let canaries = config.capabilities.synced_canaries;
        tracing::info!(cluster = %self.name, %cluster_id, kvstoremesh = cached, sync_canaries = canaries, "connected to remote cluster");
        self.update_status(|s| {
            s.connected = true;
            s.ready = true;
            s.status = "connected".to_owned();
            s.synced = RemoteClusterSynced::default();
            s.config = Some(RemoteClusterConfigStatus {
                required: true,
                retrieved: true,
                cluster_id: u32::from(cluster_id.get()),
                kvstoremesh: cached,
                sync_canaries: canaries,
            });
        });
        (self.import(backend, cached, canaries).await, true)
    }

    /// Checks the remote's cluster id and takes it in the registry. A remote whose id changed
    /// since its state was imported is drained first: that state was validated against the
    /// old id's range.
    fn accept_config(&mut self, config: &ClusterConfig) -> Result<ClusterId, ConnectError> {
        let invalid = || ConnectError::InvalidClusterId {
            cluster: self.name.clone(),
            id: config.id,
        };
        let id = ClusterId::try_from(config.id).map_err(|_| invalid())?;
        if id == ClusterId::UNSET {
            return Err(invalid());
        }
        if id == self.shared.config.local_cluster_id {
            return Err(ConnectError::LocalClusterId {
                cluster: self.name.clone(),
                id,
            });
        }
        if self.claimed.is_some_and(|claimed| claimed != id) {
            self.drain();
        }
        self.shared.claim_cluster_id(id, &self.name)?;
        self.claimed = Some(id);
        self.state.set_cluster_id(id);
        Ok(id)
    }

    /// Watches the four resources, the heartbeat and (with `canaries`) the sync canaries
    /// until a command or a failure ends the session.
    async fn import(&mut self, backend: Arc<dyn Backend>, cached: bool, canaries: bool) -> End {
        let mut sources: Vec<ItemStream> = Vec::new();
        for kind in Kind::ALL {
            let prefix = kind.watch_prefix(&self.name, cached);
            let events = match backend.watch(&prefix, WatchFrom::List).await {
                Ok(events) => events,
                Err(source) => return End::Failed(ConnectError::Watch { prefix, source }),
            };
            self.state.begin_listing(kind);
            let tag: Arc<str> = Arc::from(prefix.as_str());
            let data = events.map(move |event| Item::Data(kind, Arc::clone(&tag), event));
            sources.push(Box::pin(
                data.chain(stream::once(async move { Item::Ended(prefix) })),
            ));
            if canaries {
                let backend = Arc::clone(&backend);
                let cluster = self.name.clone();
                let canary = kind.canary_prefix(cached);
                sources.push(Box::pin(stream::once(async move {
                    Item::Canary(
                        kind,
                        wait_for_sync_canary(&*backend, cluster.as_str(), &canary).await,
                    )
                })));
            }
        }
        let heartbeat = match backend.watch(HEARTBEAT_KEY, WatchFrom::List).await {
            Ok(events) => events,
            Err(source) => {
                return End::Failed(ConnectError::Watch {
                    prefix: HEARTBEAT_KEY.to_owned(),
                    source,
                });
            }
        };
        sources.push(Box::pin(heartbeat.map(Item::Heartbeat).chain(
            stream::once(async { Item::Ended(HEARTBEAT_KEY.to_owned()) }),
        )));

        let check_every = self.shared.config.status_check_interval;
        let checks = stream::unfold(Arc::clone(&backend), move |backend| async move {
            tokio::time::sleep(check_every).await;
            let result = match tokio::time::timeout(check_every, backend.status()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no answer within {check_every:?}")),
            };
            Some((Item::Status(result), backend))
        });
        sources.push(Box::pin(checks));
        let max_check_failures = self.shared.config.status_check_failures.max(1);
        let mut check_failures = 0u32;

        let heartbeat_timeout = self.shared.config.heartbeat_timeout;
        let mut deadline = Instant::now() + heartbeat_timeout;
        let mut listed: BTreeSet<Kind> = BTreeSet::new();
        let mut canaries_seen: BTreeSet<Kind> = BTreeSet::new();
        let mut events = stream::select_all(sources).ready_chunks(BATCH_SIZE);
        loop {
            let chunk = tokio::select! {
                command = self.commands.recv() => return command_end(command, &mut self.config_path),
                () = tokio::time::sleep_until(deadline) => {
                    return End::Failed(ConnectError::HeartbeatTimeout(heartbeat_timeout));
                }
                chunk = events.next() => match chunk {
                    Some(chunk) => chunk,
                    // Every watch ends with an `Ended` item first, so this is only a safeguard.
                    None => return End::Failed(ConnectError::WatchEnded { prefix: HEARTBEAT_KEY.to_owned() }),
                },
            };
            let mut batch = Batch::default();
            let mut failure = None;
            for item in chunk {
                match item {
                    Item::Data(kind, prefix, Ok(event)) => {
                        if matches!(event, WatchEvent::ListDone { .. }) {
                            listed.insert(kind);
                        }
                        self.state.apply(kind, &prefix, event, &mut batch);
                    }
                    Item::Data(_, prefix, Err(source)) => {
                        failure = Some(ConnectError::Watch {
                            prefix: prefix.to_string(),
                            source,
                        });
                        break;
                    }
                    Item::Heartbeat(Ok(WatchEvent::Create(kv) | WatchEvent::Modify(kv)))
                        if kv.key == HEARTBEAT_KEY =>
                    {
                        deadline = Instant::now() + heartbeat_timeout;
                    }
                    Item::Heartbeat(Ok(_)) => {}
                    Item::Heartbeat(Err(source)) => {
                        failure = Some(ConnectError::Watch {
                            prefix: HEARTBEAT_KEY.to_owned(),
                            source,
                        });
                        break;
                    }
                    Item::Status(Ok(())) => check_failures = 0,
                    Item::Status(Err(message)) => {
                        check_failures += 1;
                        tracing::warn!(
                            cluster = %self.name, failures = check_failures, %message,
                            "remote kvstore status check failed"
                        );
                        if check_failures >= max_check_failures {
                            failure = Some(ConnectError::StatusCheck {
                                failures: check_failures,
                                message,
                            });
                            break;
                        }
                    }
                    Item::Canary(kind, Ok(())) => {
                        tracing::debug!(cluster = %self.name, ?kind, "sync canary seen");
                        canaries_seen.insert(kind);
                    }
                    Item::Canary(kind, Err(source)) => {
                        failure = Some(ConnectError::Watch {
                            prefix: kind.canary_prefix(cached),
                            source,
                        });
                        break;
                    }
                    Item::Ended(prefix) => {
                        failure = Some(ConnectError::WatchEnded { prefix });
                        break;
                    }
                }
            }
            self.shared.send(&self.name, self.state.cluster_id(), batch);
            let synced =
                |kind| listed.contains(&kind) && (!canaries || canaries_seen.contains(&kind));
            let counts = self.state.counts();
            self.update_status(|s| {
                s.synced = RemoteClusterSynced {
                    nodes: synced(Kind::Nodes),
                    endpoints: synced(Kind::Ipcache),
                    identities: synced(Kind::Identities),
                    services: synced(Kind::Services),
                };
                s.num_nodes = counts.nodes;
                s.num_endpoints = counts.endpoints;
                s.num_identities = counts.identities;
                s.num_shared_services = counts.shared_services;
            });
            if let Some(err) = failure {
                return End::Failed(err);
            }
        }
    }

    /// Waits `delay` before the next attempt; drains the state if the drain timeout passes
    /// meanwhile.
    async fn wait(&mut self, delay: Duration) -> End {
        let until = Instant::now() + delay;
        loop {
            let drain_at = self.drain_deadline();
            tokio::select! {
                command = self.commands.recv() => return command_end(command, &mut self.config_path),
                () = tokio::time::sleep_until(until) => return End::Elapsed,
                () = sleep_until_opt(drain_at) => {
                    tracing::warn!(cluster = %self.name, "remote cluster disconnected for longer than the drain timeout, removing its state");
                    self.drain();
                }
            }
        }
    }

    fn drain_deadline(&self) -> Option<Instant> {
        let holding = self.claimed.is_some() || !self.state.is_empty();
        match (self.disconnected_since, self.shared.config.drain_timeout) {
            (Some(since), Some(timeout)) if holding => Some(since + timeout),
            _ => None,
        }
    }

    /// Sends removals for everything imported and gives the cluster id back.
    fn drain(&mut self) {
        let mut batch = Batch::default();
        self.state.drain(&mut batch);
        self.shared.send(&self.name, self.state.cluster_id(), batch);
        if let Some(id) = self.claimed.take() {
            self.shared.release_cluster_id(id, &self.name);
        }
        self.state.set_cluster_id(ClusterId::UNSET);
        self.update_status(|s| {
            s.num_nodes = 0;
            s.num_endpoints = 0;
            s.num_identities = 0;
            s.num_shared_services = 0;
        });
    }

    fn remove(mut self) {
        self.drain();
        tracing::info!(cluster = %self.name, "remote cluster removed");
    }

    fn record_failure(&self, err: &ConnectError) {
        tracing::warn!(cluster = %self.name, error = %err, "remote cluster connection failed");
        let message = err.to_string();
        self.update_status(|s| {
            s.connected = false;
            s.ready = false;
            s.synced = RemoteClusterSynced::default();
            s.num_failures += 1;
            s.last_failure = Some(encode_timestamp(SystemTime::now()));
            s.last_failure_message = Some(message.clone());
            s.status = message;
        });
    }

    fn set_disconnected(&self, why: &str) {
        self.update_status(|s| {
            s.connected = false;
            s.ready = false;
            s.synced = RemoteClusterSynced::default();
            s.status = why.to_owned();
        });
    }

    fn update_status(&self, change: impl FnOnce(&mut RemoteClusterStatus)) {
        change(&mut lock_status(&self.status));
    }
}

/// Connects and reads the cluster configuration, which is required.
async fn establish(
    connector: Arc<dyn Connector>,
    name: ClusterName,
    config_path: PathBuf,
) -> Result<(Arc<dyn Backend>, ClusterConfig), ConnectError> {
    let backend = connector
        .connect(&name, Path::new(&config_path))
        .await
        .map_err(ConnectError::Connect)?;
    let config = read_cluster_config(&*backend, name.as_str())
        .await
        .map_err(ConnectError::ReadClusterConfig)?
        .ok_or_else(|| ConnectError::MissingClusterConfig {
            cluster: name.clone(),
        })?;
    Ok((backend, config))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
