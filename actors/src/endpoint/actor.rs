//! The actix glue of the endpoint manager: registry updates around the flows of `flow`.

use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, Context, Handler, MessageResult, ResponseActFuture, WrapFuture, fut,
};
use datapath::api::{EndpointId, EndpointLinks};
use tracing::{info, warn};

use super::flow::{EndpointConfig, EndpointOutputs, Flow, Teardown};
use super::messages::{
    CreateEndpoint, DeleteEndpoint, Dump, EndpointCreated, EndpointDump, EndpointError, Generation,
    GetEndpoint, ListEndpoints, RestoreEndpoints, RestoreReport,
};
use super::state::{self, EndpointRecord, EndpointState, Registry};
use super::store::EndpointStore;

/// The endpoints of one node. See the [module docs](super).
#[derive(Debug)]
pub struct EndpointManager {
    registry: Registry,
    store: EndpointStore,
    flow: Arc<Flow>,
}

impl EndpointManager {
    pub fn new(
        config: EndpointConfig,
        outputs: EndpointOutputs,
        links: Arc<dyn EndpointLinks>,
    ) -> Self {
        EndpointManager {
            registry: Registry::new(),
            store: EndpointStore::new(&config.state_dir),
            flow: Arc::new(Flow {
                outputs,
                links,
                config,
            }),
        }
    }

    fn save(&self, record: &EndpointRecord) {
        if let Err(err) = self.store.save(record) {
            warn!(endpoint = %record.id, error = %datapath::api::error_chain(&err), "could not persist endpoint state");
        }
    }
}

impl Actor for EndpointManager {
    type Context = Context<Self>;
}

fn created(record: &EndpointRecord) -> EndpointCreated {
    EndpointCreated {
        id: record.id,
        ip: record.ip,
        gateway: record.gateway,
        host_ifname: record.host_ifname.clone(),
        mac: record.mac,
        identity: record.identity,
    }
}

impl Handler<CreateEndpoint> for EndpointManager {
    type Result = ResponseActFuture<Self, Result<EndpointCreated, EndpointError>>;

    fn handle(&mut self, msg: CreateEndpoint, _ctx: &mut Context<Self>) -> Self::Result {
        if let Err(err) = state::validate(&msg) {
            return Box::pin(fut::ready(Err(err)));
        }
        let id = match self.registry.reserve(&msg.container_id) {
            Ok(id) => id,
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        let flow = self.flow.clone();
        let store = self.store.clone();
        let host_ifname = state::host_ifname(&msg.container_id);
        Box::pin(
            async move { flow.create(id, msg, host_ifname, &store).await }
                .into_actor(self)
                .map(move |result, act, _ctx| match result {
                    Ok(record) => {
                        info!(endpoint = %id, container = %record.container_id, ip = %record.ip, identity = %record.identity, "endpoint ready");
                        let answer = created(&record);
                        act.registry.finish_creation(id, Some(record));
                        Ok(answer)
                    }
                    Err(err) => {
                        act.registry.finish_creation(id, None);
                        Err(err)
                    }
                }),
        )
    }
}

impl Handler<DeleteEndpoint> for EndpointManager {
    type Result = ResponseActFuture<Self, Result<Option<EndpointId>, EndpointError>>;

    fn handle(&mut self, msg: DeleteEndpoint, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(id) = self.registry.resolve(&msg.endpoint) else {
            return Box::pin(fut::ready(Ok(None)));
        };
        let busy = || {
            Box::pin(fut::ready(Err(EndpointError::Busy {
                endpoint: msg.endpoint.clone(),
            })))
        };
        if self.registry.is_creating(id) {
            return busy();
        }
        let Some(mut record) = self.registry.get(id).cloned() else {
            return Box::pin(fut::ready(Ok(None)));
        };
        if !self.registry.begin(id) {
            return busy();
        }
        record.state = EndpointState::Disconnecting;
        // Persisted first: an agent that dies half way finishes the removal at restore.
        self.save(&record);
        self.registry.update(record.clone());
        let flow = self.flow.clone();
        let plan = Teardown::of(&record);
        Box::pin(
            async move {
                let mut held = record.held;
                let failures = flow.teardown(&plan, &mut held).await;
                (record, held, failures)
            }
            .into_actor(self)
            .map(move |(mut record, held, failures), act, _ctx| {
                if failures.is_empty() {
                    act.registry.remove(id);
                    act.store.remove(id)?;
                    info!(endpoint = %id, "endpoint removed");
                    return Ok(Some(id));
                }
                record.held = held;
                act.save(&record);
                act.registry.update(record);
                act.registry.end(id);
                Err(EndpointError::Teardown {
                    id,
                    remaining: held.names().join(", "),
                    reasons: failures.join("; "),
                })
            }),
        )
    }
}

impl Handler<RestoreEndpoints> for EndpointManager {
    type Result = ResponseActFuture<Self, Result<RestoreReport, EndpointError>>;

    fn handle(&mut self, _msg: RestoreEndpoints, _ctx: &mut Context<Self>) -> Self::Result {
        let loaded = match self.store.load_all() {
            Ok(loaded) => loaded,
            Err(err) => return Box::pin(fut::ready(Err(err.into()))),
        };
        let mut pending = Vec::new();
        for record in loaded {
            match record {
                Ok(mut record) => {
                    let id = record.id;
                    if record.state != EndpointState::Disconnecting {
                        record.state = EndpointState::Restoring;
                    }
                    if self.registry.adopt(record.clone()) {
                        self.registry.begin(id);
                        pending.push(record);
                    } else {
                        warn!(endpoint = %id, container = %record.container_id, "persisted endpoint clashes with a known one; skipped");
                    }
                }
                Err(err) => {
                    warn!(error = %datapath::api::error_chain(&err), "unreadable endpoint record skipped");
                }
            }
        }
        let flow = self.flow.clone();
        Box::pin(
            async move {
                // Every identity first (see `Flow::restore_identity`), then each endpoint.
                let mut identities = Vec::with_capacity(pending.len());
                for record in &pending {
                    identities.push(flow.restore_identity(record).await);
                }
                let mut outcomes = Vec::with_capacity(pending.len());
                for (record, identity) in pending.into_iter().zip(identities) {
                    let id = record.id;
                    let fallback = record.clone();
                    outcomes.push((id, fallback, flow.restore(record, identity).await));
                }
                outcomes
            }
            .into_actor(self)
            .map(|outcomes, act, _ctx| {
                let mut report = RestoreReport::default();
                for (id, mut fallback, outcome) in outcomes {
                    act.registry.end(id);
                    match outcome {
                        Ok(record) => {
                            info!(endpoint = %id, identity = %record.identity, "endpoint restored");
                            act.save(&record);
                            act.registry.update(record);
                            report.restored.push(id);
                        }
                        Err((reason, held)) if held.is_empty() => {
                            warn!(endpoint = %id, %reason, "endpoint not restored; removed");
                            act.registry.remove(id);
                            if let Err(err) = act.store.remove(id) {
                                warn!(endpoint = %id, error = %datapath::api::error_chain(&err), "could not remove endpoint record");
                            }
                            report.removed.push((id, reason));
                        }
                        Err((reason, held)) => {
                            warn!(endpoint = %id, %reason, left = ?held.names(), "endpoint not restored; removal incomplete");
                            fallback.state = EndpointState::Disconnecting;
                            fallback.held = held;
                            act.save(&fallback);
                            act.registry.update(fallback);
                            report.removed.push((id, reason));
                        }
                    }
                }
                Ok(report)
            }),
        )
    }
}

impl Handler<GetEndpoint> for EndpointManager {
    type Result = MessageResult<GetEndpoint>;

    fn handle(&mut self, msg: GetEndpoint, _ctx: &mut Context<Self>) -> Self::Result {
        let record = self
            .registry
            .resolve(&msg.endpoint)
            .and_then(|id| self.registry.get(id));
        MessageResult(record.cloned())
    }
}

impl Handler<Generation> for EndpointManager {
    type Result = u64;

    fn handle(&mut self, _msg: Generation, _ctx: &mut Context<Self>) -> u64 {
        self.registry.generation()
    }
}

impl Handler<ListEndpoints> for EndpointManager {
    type Result = MessageResult<ListEndpoints>;

    fn handle(&mut self, _msg: ListEndpoints, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.registry.records().cloned().collect())
    }
}

impl Handler<Dump> for EndpointManager {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _msg: Dump, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(EndpointDump {
            endpoints: self.registry.records().cloned().collect(),
            creating: self.registry.creating(),
        })
    }
}
