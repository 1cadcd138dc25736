//! The actix glue of the two watchers: open the watch (again, with backoff, whenever it
//! ends), feed its events to the state machines, and carry out their steps one at a time.
//!
//! Steps run inside `ctx.wait`, which holds back the next watch event until the repository or
//! the service manager has answered: the changes of one key reach it in the order the
//! kvstore made them.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient, StreamHandler,
    WrapFuture,
};
use datapath::api::{BackendSelection, Frontend, ServiceFlags};
use kvstore::keys::POLICIES_PREFIX;
use kvstore::{Backend, WatchEvent, WatchFrom};
use model::policy::PolicyKind;

use super::messages::{ClusterStateError, Dump, RemoteServices};
use super::state::{
    Backoff, ImportedPolicies, PolicyApply, PolicyRemove, PolicyWatchState, ServicePlan,
    ServiceRecord, ServiceWatchState, policy_rule_labels,
};
use crate::persist::SnapshotStore;
use crate::policy::{PolicyDelete, PolicyError, PolicyImport, PolicySource};
use crate::service::{DeleteServiceApi, ListServices, ServiceError, ServiceId, UpsertServiceApi};

type WatchItem = Result<WatchEvent, kvstore::Error>;

/// Opens a list-then-follow watch of `prefix` for `act`; on failure tries again later.
fn open_watch<A>(act: &mut A, ctx: &mut Context<A>, backend: Arc<dyn Backend>, prefix: String)
where
    A: Watcher,
{
    let what = A::WHAT;
    let opening = async move { backend.watch(&prefix, WatchFrom::List).await };
    ctx.spawn(
        opening
            .into_actor(act)
            .map(move |result, act: &mut A, ctx| match result {
                Ok(stream) => {
                    act.listing_started();
                    ctx.add_stream(stream);
                }
                Err(error) => {
                    tracing::warn!(watch = what, %error, "cannot watch the kvstore, retrying");
                    reopen_later(act, ctx);
                }
            }),
    );
}

fn reopen_later<A: Watcher>(act: &mut A, ctx: &mut Context<A>) {
    let delay = act.backoff().next_delay();
    ctx.run_later(delay, |act, ctx| act.open(ctx));
}

/// What both watchers share for the watch plumbing above.
trait Watcher: Actor<Context = Context<Self>> + StreamHandler<WatchItem> {
    const WHAT: &'static str;
    fn open(&mut self, ctx: &mut Context<Self>);
    fn listing_started(&mut self);
    fn backoff(&mut self) -> &mut Backoff;
}

// ---------------------------------------------------------------------------------------
// Policies

/// Where the policy watcher reads from and keeps its record.
#[derive(Debug)]
pub struct PolicyWatcherConfig {
    pub backend: Arc<dyn Backend>,
    /// The record of imported policy keys ([`ImportedPolicies`]); in the agent
    /// [`FileImportedPoliciesStore::in_state_dir`](super::FileImportedPoliciesStore), next to
    /// the policy repository's own file.
    pub record: Box<dyn SnapshotStore<ImportedPolicies>>,
}

/// Where the policy watcher sends rule changes: the policy repository.
#[derive(Debug, Clone)]
pub struct PolicyWatcherOutputs {
    pub import: Recipient<PolicyImport>,
    pub delete: Recipient<PolicyDelete>,
}

/// Applies the policy documents under `cilium/config/policies/v1/` to the policy repository.
#[derive(Debug)]
pub struct PolicyWatcher {
    backend: Arc<dyn Backend>,
    record: Box<dyn SnapshotStore<ImportedPolicies>>,
    outputs: PolicyWatcherOutputs,
    state: PolicyWatchState,
    backoff: Backoff,
}

impl PolicyWatcher {
    /// The watcher with the record of an earlier run loaded. Fails when the record exists but
    /// cannot be read: starting without it could leave deleted policies enforced forever.
    pub fn new(
        mut config: PolicyWatcherConfig,
        outputs: PolicyWatcherOutputs,
    ) -> Result<Self, ClusterStateError> {
        let imported = config
            .record
            .load()
            .map_err(ClusterStateError::Load)?
            .unwrap_or_default();
        Ok(PolicyWatcher {
            backend: config.backend,
            record: config.record,
            outputs,
            state: PolicyWatchState::new(imported),
            backoff: Backoff::default(),
        })
    }

    fn save(&mut self) -> bool {
        match self.record.save(self.state.imported()) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "cannot persist the kvstore policy watcher's record");
                false
            }
        }
    }

    fn apply(&mut self, apply: PolicyApply, ctx: &mut Context<Self>) {
        // The key must be on record before it has rules, or a restart could orphan them.
        if apply.record_first && !self.save() {
            tracing::error!(key = %apply.key, "policy not imported: its import could not be recorded");
            return;
        }
        let outputs = self.outputs.clone();
        let document = apply.document.clone();
        let policy = apply.policy.clone();
        let stale = apply.stale.clone();
        let key = apply.key.clone();
        let work = async move {
            let imported = outputs
                .import
                .send(PolicyImport {
                    source: PolicySource::Documents(vec![document]),
                })
                .await;
            match imported {
                Ok(Ok(revision)) => {
                    tracing::info!(%key, %revision, "policy imported from the kvstore");
                }
                Ok(Err(error)) => {
                    tracing::warn!(
                        %key,
                        %error,
                        "skipping kvstore policy the repository refused; its last good version stays enforced"
                    );
                    return Err(error.to_string());
                }
                Err(error) => {
                    tracing::error!(%key, %error, "the policy repository is not running");
                    return Err(error.to_string());
                }
            }
            Ok(delete_kinds(&outputs.delete, &key, &policy, &stale).await)
        };
        ctx.wait(
            work.into_actor(self)
                .map(move |outcome, act, _| match outcome {
                    Ok(removed) => {
                        act.state.applied(&apply, &removed);
                        act.save();
                    }
                    Err(error) => act.state.refused(&apply.key, error),
                }),
        );
    }

    fn remove(&mut self, removes: Vec<PolicyRemove>, ctx: &mut Context<Self>) {
        if removes.is_empty() {
            return;
        }
        let delete = self.outputs.delete.clone();
        let work = async move {
            let mut done = Vec::new();
            for remove in removes {
                let removed =
                    delete_kinds(&delete, &remove.key, &remove.policy, &remove.kinds).await;
                tracing::info!(key = %remove.key, "policy deleted from the kvstore, rules removed");
                done.push((remove.key, removed));
            }
            done
        };
        ctx.wait(work.into_actor(self).map(|done, act, _| {
            for (key, removed) in done {
                act.state.removed(&key, &removed);
            }
            act.save();
        }));
    }
}

/// Deletes the rules of `policy` for each of `kinds`; returns the kinds that are gone (a
/// delete that finds nothing counts: the rules are gone either way).
async fn delete_kinds(
    delete: &Recipient<PolicyDelete>,
    key: &str,
    policy: &super::PolicyRef,
    kinds: &[PolicyKind],
) -> Vec<PolicyKind> {
    let mut removed = Vec::new();
    for kind in kinds {
        let answer = delete
            .send(PolicyDelete {
                labels: policy_rule_labels(policy, *kind),
            })
            .await;
        match answer {
            Ok(Ok(_)) | Ok(Err(PolicyError::NotFound { .. })) => removed.push(*kind),
            Ok(Err(error)) => {
                tracing::warn!(%key, %kind, %error, "cannot delete the rules of a kvstore policy");
            }
            Err(error) => tracing::error!(%key, %error, "the policy repository is not running"),
        }
    }
    removed
}

impl Watcher for PolicyWatcher {
    const WHAT: &'static str = "policies";

    fn open(&mut self, ctx: &mut Context<Self>) {
        open_watch(
            self,
            ctx,
            Arc::clone(&self.backend),
            format!("{POLICIES_PREFIX}/"),
        );
    }

    fn listing_started(&mut self) {
        self.state.listing_started();
    }

    fn backoff(&mut self) -> &mut Backoff {
        &mut self.backoff
    }
}

impl Actor for PolicyWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.open(ctx);
    }
}

impl StreamHandler<WatchItem> for PolicyWatcher {
    fn handle(&mut self, item: WatchItem, ctx: &mut Context<Self>) {
        match item {
            Ok(WatchEvent::Create(kv) | WatchEvent::Modify(kv)) => {
                match self.state.upsert(&kv.key, &kv.value) {
                    Ok(Some(apply)) => self.apply(apply, ctx),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(
                        key = %kv.key,
                        %error,
                        "skipping kvstore policy; its last good version stays enforced"
                    ),
                }
            }
            Ok(WatchEvent::Delete { key, .. }) => match self.state.delete(&key) {
                Ok(Some(remove)) => self.remove(vec![remove], ctx),
                Ok(None) => {}
                Err(error) => tracing::warn!(%key, %error, "ignoring kvstore policy delete"),
            },
            Ok(WatchEvent::ListDone { revision }) => {
                self.backoff.reset();
                let removes = self.state.synced();
                tracing::info!(revision, stale = removes.len(), "kvstore policies listed");
                self.remove(removes, ctx);
            }
            Err(error) => {
                tracing::warn!(%error, "kvstore policy watch ended, listing again");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        reopen_later(self, ctx);
    }
}

impl Handler<Dump> for PolicyWatcher {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.dump())
    }
}

// ---------------------------------------------------------------------------------------
// Services

/// Where the service watcher reads from and keeps its record.
#[derive(Debug)]
pub struct ServiceWatcherConfig {
    pub backend: Arc<dyn Backend>,
    /// The local cluster's name (`--cluster-name`): its services are watched.
    pub cluster: String,
    /// The record of the frontends each key claimed ([`ServiceRecord`]); in the agent
    /// [`FileServiceRecordStore::in_state_dir`](super::FileServiceRecordStore).
    pub record: Box<dyn SnapshotStore<ServiceRecord>>,
}

/// Where the service watcher sends services: the service manager. `list` finds the ids of
/// services recorded by an earlier run, which the manager adopted from the datapath.
#[derive(Debug, Clone)]
pub struct ServiceWatcherOutputs {
    pub upsert: Recipient<UpsertServiceApi>,
    pub delete: Recipient<DeleteServiceApi>,
    pub list: Recipient<ListServices>,
}

/// Turns the cluster services under `cilium/state/services/v1/<cluster>/` into services of
/// the service manager.
#[derive(Debug)]
pub struct ServiceWatcher {
    backend: Arc<dyn Backend>,
    record: Box<dyn SnapshotStore<ServiceRecord>>,
    outputs: ServiceWatcherOutputs,
    state: ServiceWatchState,
    backoff: Backoff,
}

impl ServiceWatcher {
    /// The watcher with the record of an earlier run loaded. Fails when the record exists
    /// but cannot be read: starting without it could keep deleted services forever.
    pub fn new(
        mut config: ServiceWatcherConfig,
        outputs: ServiceWatcherOutputs,
    ) -> Result<Self, ClusterStateError> {
        let record = config
            .record
            .load()
            .map_err(ClusterStateError::Load)?
            .unwrap_or_default();
        Ok(ServiceWatcher {
            backend: config.backend,
            record: config.record,
            outputs,
            state: ServiceWatchState::new(&config.cluster, record),
            backoff: Backoff::default(),
        })
    }

    fn save(&mut self) -> bool {
        match self.record.save(&self.state.record()) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "cannot persist the kvstore service watcher's record");
                false
            }
        }
    }

    fn run(&mut self, plans: Vec<ServicePlan>, ctx: &mut Context<Self>) {
        if plans.is_empty() {
            return;
        }
        // Frontends must be on record before they have services, or a restart could orphan
        // them.
        if !self.save() {
            for plan in &plans {
                for (frontend, _) in &plan.upsert {
                    self.state.upsert_failed(&plan.key, *frontend);
                }
                tracing::error!(key = %plan.key, "kvstore service not applied: it could not be recorded");
            }
            return;
        }
        let outputs = self.outputs.clone();
        let work = async move {
            let mut outcomes = Vec::new();
            for plan in plans {
                let outcome = run_plan(&outputs, &plan).await;
                outcomes.push((plan, outcome));
            }
            outcomes
        };
        ctx.wait(work.into_actor(self).map(|outcomes, act, _| {
            for (plan, outcome) in outcomes {
                for frontend in &outcome.deleted {
                    act.state.deleted(&plan.key, *frontend);
                }
                for (frontend, id) in &outcome.upserted {
                    match id {
                        Some(id) => act.state.upserted(&plan.key, *frontend, *id),
                        None => act.state.upsert_failed(&plan.key, *frontend),
                    }
                }
                act.state.finished(&plan, outcome.complete);
            }
            act.save();
        }));
    }
}

#[derive(Debug, Default)]
struct PlanOutcome {
    deleted: Vec<Frontend>,
    upserted: Vec<(Frontend, Option<ServiceId>)>,
    complete: bool,
}

async fn run_plan(outputs: &ServiceWatcherOutputs, plan: &ServicePlan) -> PlanOutcome {
    let key = &plan.key;
    for problem in &plan.ignored {
        tracing::warn!(%key, %problem, "part of a kvstore service ignored");
    }
    let mut outcome = PlanOutcome {
        complete: true,
        ..PlanOutcome::default()
    };
    // Ids of services recorded by an earlier run come from the manager, which adopted them.
    let mut known: Option<BTreeMap<Frontend, ServiceId>> = None;
    for (frontend, id) in &plan.delete {
        let id = match id {
            Some(id) => *id,
            None => {
                if known.is_none() {
                    match outputs.list.send(ListServices).await {
                        Ok(services) => {
                            known =
                                Some(services.into_iter().map(|s| (s.frontend, s.id)).collect());
                        }
                        Err(error) => {
                            tracing::error!(%key, %error, "the service manager is not running");
                            outcome.complete = false;
                            continue;
                        }
                    }
                }
                match known.as_ref().and_then(|k| k.get(frontend)) {
                    Some(id) => *id,
                    None => {
                        // Not in the manager (the datapath lost it): gone already.
                        outcome.deleted.push(*frontend);
                        continue;
                    }
                }
            }
        };
        match outputs.delete.send(DeleteServiceApi { id }).await {
            Ok(Ok(())) | Ok(Err(ServiceError::NotFound { .. })) => {
                tracing::info!(%key, %frontend, %id, "kvstore service removed");
                outcome.deleted.push(*frontend);
            }
            Ok(Err(error)) => {
                tracing::warn!(%key, %frontend, %error, "cannot delete a kvstore service");
                outcome.complete = false;
            }
            Err(error) => {
                tracing::error!(%key, %error, "the service manager is not running");
                outcome.complete = false;
            }
        }
    }
    for (frontend, backends) in &plan.upsert {
        let request = UpsertServiceApi {
            id: None,
            frontend: *frontend,
            backends: backends.clone(),
            selection: BackendSelection::Default,
            flags: ServiceFlags::ROUTABLE,
        };
        match outputs.upsert.send(request).await {
            Ok(Ok(upserted)) => {
                tracing::info!(%key, %frontend, id = %upserted.id, backends = backends.len(), "kvstore service applied");
                outcome.upserted.push((*frontend, Some(upserted.id)));
            }
            Ok(Err(error)) => {
                tracing::warn!(%key, %frontend, %error, "the service manager refused a kvstore service");
                outcome.upserted.push((*frontend, None));
                outcome.complete = false;
            }
            Err(error) => {
                tracing::error!(%key, %error, "the service manager is not running");
                outcome.upserted.push((*frontend, None));
                outcome.complete = false;
            }
        }
    }
    outcome
}

impl Watcher for ServiceWatcher {
    const WHAT: &'static str = "services";

    fn open(&mut self, ctx: &mut Context<Self>) {
        let prefix = self.state.prefix().to_owned();
        open_watch(self, ctx, Arc::clone(&self.backend), prefix);
    }

    fn listing_started(&mut self) {
        self.state.listing_started();
    }

    fn backoff(&mut self) -> &mut Backoff {
        &mut self.backoff
    }
}

impl Actor for ServiceWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.open(ctx);
    }
}

impl StreamHandler<WatchItem> for ServiceWatcher {
    fn handle(&mut self, item: WatchItem, ctx: &mut Context<Self>) {
        let plan = match item {
            Ok(WatchEvent::Create(kv) | WatchEvent::Modify(kv)) => self
                .state
                .upsert(&kv.key, &kv.value)
                .map_err(|e| (kv.key, e)),
            Ok(WatchEvent::Delete { key, .. }) => self.state.delete(&key).map_err(|e| (key, e)),
            Ok(WatchEvent::ListDone { revision }) => {
                self.backoff.reset();
                let plans = self.state.synced();
                tracing::info!(revision, stale = plans.len(), "kvstore services listed");
                self.run(plans, ctx);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "kvstore service watch ended, listing again");
                return;
            }
        };
        match plan {
            Ok(Some(plan)) => self.run(vec![plan], ctx),
            Ok(None) => {}
            Err((key, error)) => tracing::warn!(
                %key,
                %error,
                "skipping kvstore service; its last good version stays applied"
            ),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        reopen_later(self, ctx);
    }
}

impl Handler<RemoteServices> for ServiceWatcher {
    type Result = ();

    /// Merges a remote cluster's shared services into the local global ones. The plans run
    /// like those of local changes (in `ctx.wait`, one message at a time), so a remote change
    /// reaches the service manager as an upsert of the frontends whose backends changed.
    fn handle(&mut self, msg: RemoteServices, ctx: &mut Context<Self>) {
        tracing::debug!(
            cluster = %msg.cluster,
            upserted = msg.upserted.len(),
            removed = msg.removed.len(),
            "remote services changed"
        );
        let plans = self
            .state
            .remote_services(msg.cluster.as_str(), msg.upserted, msg.removed);
        self.run(plans, ctx);
    }
}

impl Handler<Dump> for ServiceWatcher {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.dump())
    }
}
