//! The actix glue of the policy repository: each handler calls [`PolicyState`] and carries out
//! the effects it returns.
//!
//! Endpoint updates go to the Datapath actor one at a time, each carrying the endpoint's full
//! entry set as it is when the update leaves. Sending one at a time keeps the updates of an
//! endpoint in order (an older full map can never overwrite a newer one, whatever the
//! mailbox does when it is full); an endpoint that changes again while it waits in the queue
//! is sent once, with its latest entries. The acknowledgement of a send is what moves the
//! endpoint's realized revision, which [`PolicyWait`] waits for.

use std::collections::BTreeMap;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Recipient, ResponseFuture, WrapFuture,
};
use datapath::api::EndpointId;
use datapath::reconciler::messages::SetEndpointPolicy;
use tokio::sync::oneshot;

use super::messages::{
    CidrIdentitiesWanted, Dump, EndpointPolicyWanted, EndpointRemoved, IdentityAdded,
    IdentityRemoved, PolicyDelete, PolicyDeleted, PolicyError, PolicyImport, PolicyWait, Revision,
};
use super::state::{Effect, PolicyState};

type Waiter = oneshot::Sender<Result<Revision, PolicyError>>;

/// The policy repository actor.
#[derive(Debug)]
pub struct PolicyRepository {
    state: PolicyState,
    datapath: Recipient<SetEndpointPolicy>,
    cidr_identities: Recipient<CidrIdentitiesWanted>,
    /// Endpoints with an update to send: the latest sequence number and its revision.
    outbox: BTreeMap<EndpointId, (u64, Revision)>,
    sending: bool,
    waiters: Vec<(Revision, Waiter)>,
}

impl PolicyRepository {
    /// The actor over `state`, sending endpoint policies to `datapath` and CIDR identity
    /// requests to `cidr_identities`.
    pub fn new(
        state: PolicyState,
        datapath: Recipient<SetEndpointPolicy>,
        cidr_identities: Recipient<CidrIdentitiesWanted>,
    ) -> Self {
        PolicyRepository {
            state,
            datapath,
            cidr_identities,
            outbox: BTreeMap::new(),
            sending: false,
            waiters: Vec::new(),
        }
    }

    fn dispatch(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::EndpointPolicy {
                    endpoint,
                    seq,
                    revision,
                    delta,
                } => {
                    tracing::debug!(
                        %endpoint,
                        %revision,
                        upserted = delta.upserted.len(),
                        removed = delta.removed.len(),
                        "endpoint policy changed"
                    );
                    self.outbox.insert(endpoint, (seq, revision));
                }
                Effect::CidrIdentities(request) => {
                    if let Err(error) = self.cidr_identities.try_send(request.clone()) {
                        tracing::error!(%error, ?request, "cannot request CIDR identities");
                    }
                }
            }
        }
        self.pump(ctx);
        self.wake_waiters();
    }

    /// Sends the next queued endpoint update unless one is in flight.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.sending {
            return;
        }
        while let Some((endpoint, (seq, revision))) = self.outbox.pop_first() {
            // A removed endpoint has nothing left to send.
            let Some(entries) = self.state.entries(endpoint) else {
                continue;
            };
            let request = self.datapath.send(SetEndpointPolicy {
                endpoint,
                entries: entries.clone(),
            });
            self.sending = true;
            ctx.spawn(request.into_actor(self).map(move |result, act, ctx| {
                act.sending = false;
                match result {
                    Ok(()) => act.state.acknowledge(endpoint, seq, revision),
                    Err(error) => tracing::error!(
                        %endpoint,
                        %error,
                        "the datapath did not take the endpoint's policy"
                    ),
                }
                act.wake_waiters();
                act.pump(ctx);
            }));
            return;
        }
    }

    fn wake_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let realized = self.state.realized_revision();
        let (ready, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(revision, _)| *revision <= realized);
        self.waiters = pending;
        for (_, waiter) in ready {
            // The asker may have given up waiting; nothing to do then.
            let _ = waiter.send(Ok(realized));
        }
    }
}

impl Actor for PolicyRepository {
    type Context = Context<Self>;
}

impl Handler<PolicyImport> for PolicyRepository {
    type Result = Result<Revision, PolicyError>;

    fn handle(&mut self, msg: PolicyImport, ctx: &mut Context<Self>) -> Self::Result {
        let (revision, effects) = self.state.import(msg.source)?;
        self.dispatch(effects, ctx);
        Ok(revision)
    }
}

impl Handler<PolicyDelete> for PolicyRepository {
    type Result = Result<PolicyDeleted, PolicyError>;

    fn handle(&mut self, msg: PolicyDelete, ctx: &mut Context<Self>) -> Self::Result {
        let (revision, deleted, effects) = self.state.delete(&msg.labels)?;
        self.dispatch(effects, ctx);
        Ok(PolicyDeleted { revision, deleted })
    }
}

impl Handler<IdentityAdded> for PolicyRepository {
    type Result = ();

    fn handle(&mut self, msg: IdentityAdded, ctx: &mut Context<Self>) {
        let effects = self.state.upsert_identities(msg.identities);
        self.dispatch(effects, ctx);
    }
}

impl Handler<IdentityRemoved> for PolicyRepository {
    type Result = ();

    fn handle(&mut self, msg: IdentityRemoved, ctx: &mut Context<Self>) {
        let effects = self.state.remove_identities(msg.identities);
        self.dispatch(effects, ctx);
    }
}

impl Handler<EndpointPolicyWanted> for PolicyRepository {
    type Result = actix::MessageResult<EndpointPolicyWanted>;

    fn handle(&mut self, msg: EndpointPolicyWanted, ctx: &mut Context<Self>) -> Self::Result {
        let effects = self.state.upsert_endpoint(msg);
        self.dispatch(effects, ctx);
        actix::MessageResult(self.state.revision())
    }
}

impl Handler<EndpointRemoved> for PolicyRepository {
    type Result = ();

    fn handle(&mut self, msg: EndpointRemoved, ctx: &mut Context<Self>) {
        self.outbox.remove(&msg.endpoint);
        let effects = self.state.remove_endpoint(msg.endpoint);
        // Dispatch also wakes waiters: the removed endpoint may have been the slowest.
        self.dispatch(effects, ctx);
    }
}

impl Handler<PolicyWait> for PolicyRepository {
    type Result = ResponseFuture<Result<Revision, PolicyError>>;

    fn handle(&mut self, msg: PolicyWait, _ctx: &mut Context<Self>) -> Self::Result {
        let current = self.state.revision();
        if msg.revision > current {
            let error = PolicyError::FutureRevision {
                requested: msg.revision,
                current,
            };
            return Box::pin(async move { Err(error) });
        }
        let realized = self.state.realized_revision();
        if msg.revision <= realized {
            return Box::pin(async move { Ok(realized) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push((msg.revision, tx));
        let revision = msg.revision;
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(PolicyError::WaitCancelled { revision }))
        })
    }
}

impl Handler<Dump> for PolicyRepository {
    type Result = actix::MessageResult<Dump>;

    fn handle(&mut self, _msg: Dump, _ctx: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.state.dump())
    }
}
