//! actix glue for the Datapath actor: handlers update the state machine and run a reconcile
//! pass; timers drive retries, periodic resyncs and conntrack garbage collection.

use std::time::Duration;

use actix::clock::Instant;
use actix::{Actor, AsyncContext, Context, Handler, MessageResult, SpawnHandle};
use tracing::{info, warn};

use super::driver;
use super::messages::{
    AttachEndpoint, ConntrackGc, DeleteIpcache, DeleteLxc, DeleteService, DetachEndpoint, Dump,
    InitialSyncDone, ListMap, ObjectStatus, ReadMetrics, ReconcileError, SetEndpointPolicy,
    UpsertIpcache, UpsertLxc, UpsertService,
};
use super::state::{ObjectKey, ReconcilerState, RetryConfig};
use crate::api::{CtGcStats, Datapath, EndpointId, MapKey, MapValue, MetricEntry, error_chain};

/// Timing of the Datapath actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathActorConfig {
    pub retry: RetryConfig,
    /// After the initial sync, how often the maps are listed again to repair drift and prune
    /// strays (upstream's reconciler prunes every few minutes).
    pub resync_interval: Duration,
    /// How often expired conntrack entries are collected.
    pub conntrack_gc_interval: Duration,
}

impl Default for DatapathActorConfig {
    fn default() -> Self {
        DatapathActorConfig {
            retry: RetryConfig::default(),
            resync_interval: Duration::from_secs(300),
            conntrack_gc_interval: Duration::from_secs(60),
        }
    }
}

/// The single writer of BPF maps. See the [module docs](super).
#[derive(Debug)]
pub struct DatapathActor {
    datapath: Box<dyn Datapath>,
    state: ReconcilerState,
    config: DatapathActorConfig,
    origin: Instant,
    retry_timer: Option<SpawnHandle>,
}

impl DatapathActor {
    pub fn new(datapath: Box<dyn Datapath>, config: DatapathActorConfig) -> Self {
        DatapathActor {
            datapath,
            state: ReconcilerState::new(config.retry),
            config,
            origin: Instant::now(),
            retry_timer: None,
        }
    }

    /// Time since the actor was created, on tokio's clock (paused in tests and the simulation).
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        driver::reconcile(&mut self.state, self.datapath.as_mut(), now);
        if let Some(timer) = self.retry_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(at) = self.state.next_retry() {
            let delay = at.saturating_sub(now);
            self.retry_timer = Some(ctx.run_later(delay, |actor, ctx| {
                actor.retry_timer = None;
                actor.reconcile(ctx);
            }));
        }
    }

    fn resync(&mut self, ctx: &mut Context<Self>) {
        driver::refresh(&mut self.state, self.datapath.as_ref());
        self.reconcile(ctx);
    }

    /// The answer to a caller waiting for `object`: applied, failed, or blocked by its
    /// endpoint's policy map.
    fn outcome(&self, object: ObjectKey, endpoint: EndpointId) -> Result<(), ReconcileError> {
        match self.state.status(&object) {
            None | Some(ObjectStatus::Applied) | Some(ObjectStatus::Adopted) => Ok(()),
            Some(ObjectStatus::Failed {
                attempts,
                last_error,
                ..
            }) => Err(ReconcileError::NotApplied {
                object: object.to_string(),
                attempts,
                last_error,
            }),
            Some(ObjectStatus::Pending) => {
                let map = ObjectKey::PolicyMap(endpoint);
                let blocked_by = match self.state.status(&map) {
                    Some(ObjectStatus::Failed { last_error, .. }) => {
                        format!("{map}: {last_error}")
                    }
                    _ => map.to_string(),
                };
                Err(ReconcileError::Blocked {
                    object: object.to_string(),
                    blocked_by,
                })
            }
        }
    }
}

impl Actor for DatapathActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Adopt what the pinned maps hold; nothing is pruned before InitialSyncDone.
        self.resync(ctx);
        ctx.run_interval(self.config.resync_interval, |actor, ctx| {
            if actor.state.synced() {
                actor.resync(ctx);
            }
        });
        ctx.run_interval(self.config.conntrack_gc_interval, |actor, _| {
            match actor.datapath.conntrack_gc() {
                Ok(stats) => info!(deleted = stats.deleted, alive = stats.alive, "conntrack gc"),
                Err(err) => warn!(error = %error_chain(&err), "conntrack gc failed"),
            }
        });
    }
}

impl Handler<SetEndpointPolicy> for DatapathActor {
    type Result = ();

    fn handle(&mut self, msg: SetEndpointPolicy, ctx: &mut Self::Context) {
        self.state.set_endpoint_policy(msg.endpoint, &msg.entries);
        self.reconcile(ctx);
    }
}

impl Handler<UpsertIpcache> for DatapathActor {
    type Result = ();

    fn handle(&mut self, msg: UpsertIpcache, ctx: &mut Self::Context) {
        self.state.upsert_ipcache(&msg.entries);
        self.reconcile(ctx);
    }
}

impl Handler<DeleteIpcache> for DatapathActor {
    type Result = ();

    fn handle(&mut self, msg: DeleteIpcache, ctx: &mut Self::Context) {
        self.state.delete_ipcache(&msg.keys);
        self.reconcile(ctx);
    }
}

impl Handler<UpsertLxc> for DatapathActor {
    type Result = ();

    fn handle(&mut self, msg: UpsertLxc, ctx: &mut Self::Context) {
        self.state.upsert_lxc(&msg.entries);
        self.reconcile(ctx);
    }
}

impl Handler<DeleteLxc> for DatapathActor {
    type Result = ();

    fn handle(&mut self, msg: DeleteLxc, ctx: &mut Self::Context) {
        self.state.delete_lxc(&msg.keys);
        self.reconcile(ctx);
    }
}

impl Handler<UpsertService> for DatapathActor {
    type Result = Result<(), ReconcileError>;

    fn handle(&mut self, msg: UpsertService, ctx: &mut Self::Context) -> Self::Result {
        self.state.upsert_service(msg.0)?;
        self.reconcile(ctx);
        Ok(())
    }
}

impl Handler<DeleteService> for DatapathActor {
    type Result = ();

    fn handle(&mut self, msg: DeleteService, ctx: &mut Self::Context) {
        self.state.delete_service(&msg.frontend);
        self.reconcile(ctx);
    }
}

impl Handler<AttachEndpoint> for DatapathActor {
    type Result = Result<(), ReconcileError>;

    fn handle(&mut self, msg: AttachEndpoint, ctx: &mut Self::Context) -> Self::Result {
        let endpoint = msg.0.endpoint;
        self.state.attach_endpoint(msg.0);
        self.reconcile(ctx);
        self.outcome(ObjectKey::Attachment(endpoint), endpoint)
    }
}

impl Handler<DetachEndpoint> for DatapathActor {
    type Result = Result<(), ReconcileError>;

    fn handle(&mut self, msg: DetachEndpoint, ctx: &mut Self::Context) -> Self::Result {
        self.state.detach_endpoint(msg.endpoint);
        self.reconcile(ctx);
        self.outcome(ObjectKey::Attachment(msg.endpoint), msg.endpoint)
    }
}

impl Handler<InitialSyncDone> for DatapathActor {
    type Result = ();

    fn handle(&mut self, _: InitialSyncDone, ctx: &mut Self::Context) {
        // List first, so the prune acts on what the kernel holds now.
        driver::refresh(&mut self.state, self.datapath.as_ref());
        self.state.mark_synced();
        self.reconcile(ctx);
    }
}

impl Handler<ConntrackGc> for DatapathActor {
    type Result = Result<CtGcStats, ReconcileError>;

    fn handle(&mut self, _: ConntrackGc, _: &mut Self::Context) -> Self::Result {
        Ok(self.datapath.conntrack_gc()?)
    }
}

impl Handler<ReadMetrics> for DatapathActor {
    type Result = Result<Vec<MetricEntry>, ReconcileError>;

    fn handle(&mut self, _: ReadMetrics, _: &mut Self::Context) -> Self::Result {
        Ok(self.datapath.read_metrics()?)
    }
}

impl Handler<ListMap> for DatapathActor {
    type Result = Result<Vec<(MapKey, MapValue)>, ReconcileError>;

    fn handle(&mut self, msg: ListMap, _: &mut Self::Context) -> Self::Result {
        Ok(self.datapath.list(msg.map)?)
    }
}

impl Handler<Dump> for DatapathActor {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.dump())
    }
}
