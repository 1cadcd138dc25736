//! The `ClusterMesh` actor: follows the configuration directory, starts a task per remote
//! cluster file, tells it when its file changes or disappears, and answers the status.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use model::identity::ClusterName;
use tokio::task::JoinHandle;

use crate::config::{ClusterMeshConfig, ClusterMeshOutputs, Connector};
use crate::dir::{ConfigDirectory, DirChange};
use crate::remote::{RemoteHandle, Shared};
use crate::status::RemoteClusterStatus;

/// Asks for the status of every remote cluster, in name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Vec<RemoteClusterStatus>")]
pub struct ClusterMeshStatus;

/// The mesh: one remote cluster per file of the configuration directory.
#[derive(Debug)]
pub struct ClusterMesh {
    shared: Arc<Shared>,
    dir: ConfigDirectory,
    remotes: BTreeMap<ClusterName, RemoteHandle>,
    /// Tasks of removed clusters that may still be draining, so that a file re-added under the
    /// same name starts importing only after the old removals went out.
    draining: BTreeMap<ClusterName, JoinHandle<()>>,
}

impl ClusterMesh {
    pub fn new(
        config: ClusterMeshConfig,
        outputs: ClusterMeshOutputs,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let dir = ConfigDirectory::new(config.config_dir.clone(), config.local_cluster.clone());
        ClusterMesh {
            shared: Arc::new(Shared::new(config, outputs, connector)),
            dir,
            remotes: BTreeMap::new(),
            draining: BTreeMap::new(),
        }
    }

    fn scan(&mut self) {
        self.draining.retain(|_, task| !task.is_finished());
        for change in self.dir.scan() {
            match change {
                DirChange::Added { name, path } => {
                    let predecessor = self.draining.remove(&name);
                    let remote = RemoteHandle::spawn(
                        Arc::clone(&self.shared),
                        name.clone(),
                        path,
                        predecessor,
                    );
                    self.remotes.insert(name, remote);
                }
                DirChange::Changed { name, path } => {
                    if let Some(remote) = self.remotes.get(&name) {
                        remote.reconnect(path);
                    }
                }
                DirChange::Removed { name } => {
                    if let Some(remote) = self.remotes.remove(&name) {
                        self.draining.insert(name, remote.remove());
                    }
                }
            }
        }
    }
}

impl Actor for ClusterMesh {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(dir = %self.shared.config.config_dir.display(), "clustermesh started");
        self.scan();
        ctx.run_interval(self.shared.config.poll_interval, |act, _| act.scan());
    }
}

impl Handler<ClusterMeshStatus> for ClusterMesh {
    type Result = MessageResult<ClusterMeshStatus>;

    fn handle(&mut self, _: ClusterMeshStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.remotes.values().map(RemoteHandle::status).collect())
    }
}
