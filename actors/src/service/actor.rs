//! actix glue of the ServiceManager: state effects become `UpsertService`/`DeleteService`
//! messages to the Datapath actor, answered in order.

use actix::{
    Actor, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, MessageResult,
    Recipient, WrapFuture,
};
use datapath::api::MapName;
use datapath::reconciler::{DeleteService, ListMap, ReconcileError, ServiceSpec, UpsertService};

use super::messages::{
    DeleteServiceApi, Dump, ListServices, ServiceError, ServiceUpserted, UpsertServiceApi,
};
use super::state::{Effect, RestoreProblem, ServiceIdRanges, ServiceState, specs_from_lb_maps};

/// Where the ServiceManager sends the datapath's desired services.
#[derive(Debug, Clone)]
pub struct ServiceOutputs {
    pub upsert: Recipient<UpsertService>,
    pub delete: Recipient<DeleteService>,
}

/// The services a restarted agent finds in the datapath's pinned lb4 maps, ids included.
///
/// Restart adoption reads the datapath, not a file of our own: the pinned maps are what keeps
/// forwarding while no agent runs, so their ids are the ones conntrack entries and the
/// backend map already use (upstream restores services from the BPF maps as well).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pub services: Vec<ServiceSpec>,
}

impl ServiceSnapshot {
    /// Reads `cilium_lb4_services_v2` and `cilium_lb4_backends_v3` through the Datapath
    /// actor's [`ListMap`]. Incomplete services are reported and left out.
    pub async fn read(
        list: &Recipient<ListMap>,
    ) -> Result<(ServiceSnapshot, Vec<RestoreProblem>), ServiceError> {
        let read = |map| async move {
            list.send(ListMap { map })
                .await
                .map_err(|_| ServiceError::DatapathGone)?
                .map_err(|source: ReconcileError| ServiceError::ReadLbMaps { map, source })
        };
        let services = read(MapName::Lb4Services).await?;
        let backends = read(MapName::Lb4Backends).await?;
        let (services, problems) = specs_from_lb_maps(&services, &backends);
        Ok((ServiceSnapshot { services }, problems))
    }
}

/// The service manager of one node.
#[derive(Debug)]
pub struct ServiceManager {
    state: ServiceState,
    outputs: ServiceOutputs,
    /// Datapath effects of the restore, sent when the actor starts.
    restored: Vec<Effect>,
}

impl ServiceManager {
    /// A manager with the ids of `snapshot` adopted (empty on a first start). Returns the
    /// services that could not be adopted next to it.
    pub fn new(
        ranges: ServiceIdRanges,
        snapshot: ServiceSnapshot,
        outputs: ServiceOutputs,
    ) -> (Self, Vec<RestoreProblem>) {
        let mut state = ServiceState::new(ranges);
        let (restored, problems) = state.restore(snapshot.services);
        let manager = ServiceManager {
            state,
            outputs,
            restored,
        };
        (manager, problems)
    }

    /// Sends effects to the datapath in order and waits for each answer.
    fn apply(
        &self,
        effects: Vec<Effect>,
    ) -> impl Future<Output = Result<(), ServiceError>> + 'static {
        let outputs = self.outputs.clone();
        async move {
            for effect in effects {
                match effect {
                    Effect::Upsert(spec) => {
                        let frontend = spec.frontend;
                        outputs
                            .upsert
                            .send(UpsertService(spec))
                            .await
                            .map_err(|_| ServiceError::DatapathGone)?
                            .map_err(|source| ServiceError::Datapath { frontend, source })?;
                    }
                    Effect::Delete(frontend) => outputs
                        .delete
                        .send(DeleteService { frontend })
                        .await
                        .map_err(|_| ServiceError::DatapathGone)?,
                }
            }
            Ok(())
        }
    }
}

impl Actor for ServiceManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let restored = std::mem::take(&mut self.restored);
        if restored.is_empty() {
            return;
        }
        let count = restored.len();
        // No API request is served before the datapath claimed the restored services.
        ctx.wait(
            self.apply(restored)
                .into_actor(self)
                .map(move |result, _, _| match result {
                    Ok(()) => tracing::info!(count, "restored services handed to the datapath"),
                    Err(err) => {
                        tracing::warn!(error = %err, "restored services not handed to the datapath")
                    }
                }),
        );
    }
}

// The mutating handlers are atomic: the next message waits until the datapath answered, so
// the datapath sees the changes in the order the API made them and the caller learns of a
// refusal.
impl Handler<UpsertServiceApi> for ServiceManager {
    type Result = AtomicResponse<Self, Result<ServiceUpserted, ServiceError>>;

    fn handle(&mut self, msg: UpsertServiceApi, _: &mut Context<Self>) -> Self::Result {
        let result = self.state.upsert(
            msg.id,
            msg.frontend,
            &msg.backends,
            msg.selection,
            msg.flags,
        );
        let (outcome, effects) = match result {
            Ok(done) => done,
            Err(err) => return AtomicResponse::new(Box::pin(actix::fut::ready(Err(err)))),
        };
        tracing::debug!(id = %outcome.id, frontend = %msg.frontend, created = outcome.created, "service upserted");
        let apply = self.apply(effects);
        AtomicResponse::new(Box::pin(
            async move { apply.await.map(|()| outcome) }.into_actor(self),
        ))
    }
}

impl Handler<DeleteServiceApi> for ServiceManager {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: DeleteServiceApi, _: &mut Context<Self>) -> Self::Result {
        match self.state.delete(msg.id) {
            Ok(effects) => {
                tracing::debug!(id = %msg.id, "service deleted");
                AtomicResponse::new(Box::pin(self.apply(effects).into_actor(self)))
            }
            Err(err) => AtomicResponse::new(Box::pin(actix::fut::ready(Err(err)))),
        }
    }
}

impl Handler<ListServices> for ServiceManager {
    type Result = MessageResult<ListServices>;

    fn handle(&mut self, _: ListServices, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.list())
    }
}

impl Handler<Dump> for ServiceManager {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.dump())
    }
}
