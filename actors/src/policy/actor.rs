//! The actix glue of the policy repository: each handler calls [`PolicyState`] and carries out
//! the effects it returns.
//!
//! Endpoint updates go to the Datapath actor one at a time, each carrying the endpoint's full
//! entry set as it is when the update leaves. Sending one at a time keeps the updates of an
//! endpoint in order (an older full map can never overwrite a newer one, whatever the
//! mailbox does when it is full); an endpoint that changes again while it waits in the queue
//! is sent once, with its latest entries. The acknowledgement of a send is what moves the
//! endpoint's realized revision, which [`PolicyWait`] and [`EndpointPolicyWait`] wait for.
//!
//! Rule changes are persisted before they are applied: the change is planned, the resulting
//! rule set saved to the [`PolicyStore`], and only then committed, so a failed save leaves
//! both the repository and the store as they were.

use std::collections::BTreeMap;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Recipient, ResponseFuture, WrapFuture,
};
use datapath::api::EndpointId;
use datapath::reconciler::messages::SetEndpointPolicy;
use tokio::sync::oneshot;

use super::messages::{
    CidrIdentitiesWanted, Dump, EndpointPolicyWait, EndpointPolicyWanted, EndpointRemoved,
    IdentityAdded, IdentityRemoved, PolicyDelete, PolicyDeleted, PolicyError, PolicyImport,
    PolicySnapshot, PolicyWait, Revision,
};
use super::state::{Effect, PendingChange, PolicyState};
use super::store::{MemoryPolicyStore, PolicyStore};
use crate::identity::IdentitiesChanged;

type Waiter = oneshot::Sender<Result<Revision, PolicyError>>;

/// What a waiter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    /// Every endpoint of the node ([`PolicyWait`]).
    Node,
    /// One endpoint ([`EndpointPolicyWait`]).
    Endpoint(EndpointId),
}

/// The policy repository actor.
#[derive(Debug)]
pub struct PolicyRepository {
    state: PolicyState,
    datapath: Recipient<SetEndpointPolicy>,
    cidr_identities: Recipient<CidrIdentitiesWanted>,
    store: Box<dyn PolicyStore>,
    /// Effects of the rules restored at construction, carried out once the actor runs.
    restored: Vec<Effect>,
    /// Endpoints with an update to send: the latest sequence number and its revision.
    outbox: BTreeMap<EndpointId, (u64, Revision)>,
    sending: bool,
    waiters: Vec<(Awaited, Revision, Waiter)>,
}

impl PolicyRepository {
    /// The actor over `state`, sending endpoint policies to `datapath` and CIDR identity
    /// requests to `cidr_identities`. Rules are kept in memory only (a fresh
    /// [`MemoryPolicyStore`]); an agent uses [`Self::with_store`].
    pub fn new(
        state: PolicyState,
        datapath: Recipient<SetEndpointPolicy>,
        cidr_identities: Recipient<CidrIdentitiesWanted>,
    ) -> Self {
        PolicyRepository {
            state,
            datapath,
            cidr_identities,
            store: Box::new(MemoryPolicyStore::new()),
            restored: Vec::new(),
            outbox: BTreeMap::new(),
            sending: false,
            waiters: Vec::new(),
        }
    }

    /// The actor over `state` (which should hold no rules yet) with the rules and revision
    /// `store` saved, persisting every later change there. The CIDR identities the restored
    /// rules need are requested when the actor starts.
    pub fn with_store(
        mut state: PolicyState,
        mut store: Box<dyn PolicyStore>,
        datapath: Recipient<SetEndpointPolicy>,
        cidr_identities: Recipient<CidrIdentitiesWanted>,
    ) -> Result<Self, PolicyError> {
        let restored = match store.load().map_err(PolicyError::Load)? {
            Some(snapshot) => {
                let rules = snapshot.rules.len();
                let effects = state
                    .restore(snapshot)
                    .map_err(|err| PolicyError::Restore(Box::new(err)))?;
                tracing::info!(rules, revision = %state.revision(), "policy rules restored");
                effects
            }
            None => Vec::new(),
        };
        let mut actor = Self::new(state, datapath, cidr_identities);
        actor.store = store;
        actor.restored = restored;
        Ok(actor)
    }

    /// Persists the rule set `change` leads to, then applies it.
    fn persist_and_commit(
        &mut self,
        change: PendingChange,
        ctx: &mut Context<Self>,
    ) -> Result<(Revision, usize), PolicyError> {
        let snapshot = PolicySnapshot {
            revision: self.state.revision().next(),
            rules: self.state.rules_after(&change),
        };
        self.store.save(&snapshot).map_err(PolicyError::Persist)?;
        let (revision, removed, effects) = self.state.commit(change);
        self.dispatch(effects, ctx);
        Ok((revision, removed))
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
        let mut pending = Vec::new();
        for (awaited, revision, waiter) in std::mem::take(&mut self.waiters) {
            let answer = match self.realized(awaited) {
                Ok(realized) if realized < revision => {
                    pending.push((awaited, revision, waiter));
                    continue;
                }
                answer => answer,
            };
            // The asker may have given up waiting; nothing to do then.
            let _ = waiter.send(answer);
        }
        self.waiters = pending;
    }

    fn realized(&self, awaited: Awaited) -> Result<Revision, PolicyError> {
        match awaited {
            Awaited::Node => Ok(self.state.realized_revision()),
            Awaited::Endpoint(endpoint) => self
                .state
                .endpoint_realized_revision(endpoint)
                .ok_or(PolicyError::UnknownEndpoint { endpoint }),
        }
    }

    /// Answers once `awaited` has realized `revision`.
    fn wait(&mut self, awaited: Awaited, revision: Revision) -> WaitAnswer {
        let current = self.state.revision();
        if revision > current {
            let error = PolicyError::FutureRevision {
                requested: revision,
                current,
            };
            return Box::pin(async move { Err(error) });
        }
        match self.realized(awaited) {
            Ok(realized) if realized < revision => {}
            answer => return Box::pin(async move { answer }),
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push((awaited, revision, tx));
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(PolicyError::WaitCancelled { revision }))
        })
    }
}

type WaitAnswer = ResponseFuture<Result<Revision, PolicyError>>;

impl Actor for PolicyRepository {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let restored = std::mem::take(&mut self.restored);
        self.dispatch(restored, ctx);
    }
}

impl Handler<PolicyImport> for PolicyRepository {
    type Result = Result<Revision, PolicyError>;

    fn handle(&mut self, msg: PolicyImport, ctx: &mut Context<Self>) -> Self::Result {
        let change = self.state.prepare_import(msg.source)?;
        let (revision, _) = self.persist_and_commit(change, ctx)?;
        Ok(revision)
    }
}

impl Handler<PolicyDelete> for PolicyRepository {
    type Result = Result<PolicyDeleted, PolicyError>;

    fn handle(&mut self, msg: PolicyDelete, ctx: &mut Context<Self>) -> Self::Result {
        let change = self.state.prepare_delete(&msg.labels)?;
        let (revision, deleted) = self.persist_and_commit(change, ctx)?;
        Ok(PolicyDeleted { revision, deleted })
    }
}

impl Handler<IdentitiesChanged> for PolicyRepository {
    type Result = ();

    /// The identity actor's announcements, taken directly (the agent subscribes the
    /// repository to the identity actor). Removals go first: an id both removed and added in
    /// one change is a relabelled identity, which must end up with its new labels.
    fn handle(&mut self, msg: IdentitiesChanged, ctx: &mut Context<Self>) {
        let mut effects = Vec::new();
        if !msg.removed.is_empty() {
            effects.extend(self.state.remove_identities(msg.removed));
        }
        if !msg.added.is_empty() {
            effects.extend(self.state.upsert_identities(msg.added));
        }
        self.dispatch(effects, ctx);
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
    type Result = WaitAnswer;

    fn handle(&mut self, msg: PolicyWait, _ctx: &mut Context<Self>) -> Self::Result {
        self.wait(Awaited::Node, msg.revision)
    }
}

impl Handler<EndpointPolicyWait> for PolicyRepository {
    type Result = WaitAnswer;

    fn handle(&mut self, msg: EndpointPolicyWait, _ctx: &mut Context<Self>) -> Self::Result {
        self.wait(Awaited::Endpoint(msg.endpoint), msg.revision)
    }
}

impl Handler<Dump> for PolicyRepository {
    type Result = actix::MessageResult<Dump>;

    fn handle(&mut self, _msg: Dump, _ctx: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.state.dump())
    }
}
