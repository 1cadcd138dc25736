//! actix glue of the identity actor. Kvstore allocations run as futures on the actor's context
//! (the actor keeps serving other messages meanwhile), one at a time per label set through a
//! [`KeyedQueue`], and answer through a oneshot channel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient,
    ResponseFuture, StreamHandler, WrapFuture,
};
use ipnet::IpNet;
use kvstore::allocator::{IdentityAllocator, LocalIdentityAllocator};
use kvstore::keys::{IDENTITY_ID_PREFIX, parse_identity_master_key};
use kvstore::{Backend, WatchEvent, WatchFrom};
use model::identity::{ClusterId, NumericIdentity};
use model::labels::Labels;
use tokio::sync::oneshot;

use super::messages::{
    AllocateCidrIdentities, AllocateIdentity, AllocatedIdentity, Dump, IdentitiesChanged,
    IdentityDump, IdentityError, IdentityMode, ListIdentities, LookupIdentity,
    ReleaseCidrIdentities, ReleaseIdentity,
};
use super::state::{IdentityState, KeyedQueue};

/// How long to wait before listing the master keys again after their watch ended.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Where cluster-wide identities come from.
#[derive(Debug, Clone)]
pub enum IdentityBackend {
    /// `--kvstore` empty: allocated in process from the cluster's range.
    Local,
    /// The kvstore allocator, and the backend whose master keys the actor watches to learn
    /// other nodes' identities.
    Kvstore {
        allocator: Arc<IdentityAllocator>,
        backend: Arc<dyn Backend>,
    },
}

/// Configuration of an [`IdentityActor`].
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub cluster_id: ClusterId,
    pub backend: IdentityBackend,
    /// Whether both address families are enabled (CIDR identities then carry
    /// `reserved:world-ipv4`/`world-ipv6` instead of `reserved:world`).
    pub dual_stack: bool,
    /// Who hears about identity changes (the policy repository, ...).
    pub subscribers: Vec<Recipient<IdentitiesChanged>>,
}

/// A kvstore operation waiting for its turn.
#[derive(Debug)]
enum KvOp {
    Allocate {
        labels: Labels,
        reply: oneshot::Sender<Result<AllocatedIdentity, IdentityError>>,
    },
    Release {
        labels: Labels,
        reply: oneshot::Sender<Result<bool, IdentityError>>,
    },
}

/// The identity allocator of one node.
#[derive(Debug)]
pub struct IdentityActor {
    state: IdentityState,
    kvstore: Option<(Arc<IdentityAllocator>, Arc<dyn Backend>)>,
    local_scope: LocalIdentityAllocator,
    dual_stack: bool,
    subscribers: Vec<Recipient<IdentitiesChanged>>,
    queue: KeyedQueue<KvOp>,
}

impl IdentityActor {
    pub fn new(config: IdentityConfig) -> Self {
        let (state, kvstore) = match config.backend {
            IdentityBackend::Local => (IdentityState::local(config.cluster_id), None),
            IdentityBackend::Kvstore { allocator, backend } => (
                IdentityState::kvstore(config.cluster_id),
                Some((allocator, backend)),
            ),
        };
        IdentityActor {
            state,
            kvstore,
            local_scope: LocalIdentityAllocator::new(),
            dual_stack: config.dual_stack,
            subscribers: config.subscribers,
            queue: KeyedQueue::default(),
        }
    }

    fn publish(&self, change: Option<IdentitiesChanged>) {
        let Some(change) = change.filter(|c| !c.is_empty()) else {
            return;
        };
        for subscriber in &self.subscribers {
            subscriber.do_send(change.clone());
        }
    }

    /// Runs a kvstore operation; when it is done, answers it and starts the next one queued
    /// for the same labels.
    fn run(&mut self, key: String, op: KvOp, ctx: &mut Context<Self>) {
        let Some((allocator, _)) = &self.kvstore else {
            return;
        };
        let allocator = Arc::clone(allocator);
        match op {
            KvOp::Allocate { labels, reply } => {
                let work = async move {
                    let result = allocator.allocate(&labels).await;
                    (result, labels)
                };
                ctx.spawn(
                    work.into_actor(self)
                        .map(move |(result, labels), act, ctx| {
                            let answer = result
                                .map(|allocation| {
                                    let change = act.state.allocated(allocation.id, labels);
                                    // Subscribers hear of the identity before the caller uses it.
                                    act.publish(change);
                                    AllocatedIdentity {
                                        id: allocation.id,
                                        is_new: allocation.is_new,
                                    }
                                })
                                .map_err(IdentityError::from);
                            let _ = reply.send(answer);
                            act.next(&key, ctx);
                        }),
                );
            }
            KvOp::Release { labels, reply } => {
                let work = async move {
                    let id = allocator.lookup_labels(&labels);
                    (allocator.release(&labels).await, id)
                };
                ctx.spawn(work.into_actor(self).map(move |(result, id), act, ctx| {
                    if result.is_ok()
                        && let Some(id) = id
                    {
                        act.state.released(id);
                    }
                    let _ = reply.send(result.map_err(IdentityError::from));
                    act.next(&key, ctx);
                }));
            }
        }
    }

    fn next(&mut self, key: &str, ctx: &mut Context<Self>) {
        if let Some(op) = self.queue.finish(key) {
            self.run(key.to_owned(), op, ctx);
        }
    }

    fn enqueue(&mut self, labels: &Labels, op: KvOp, ctx: &mut Context<Self>) {
        let key = labels.to_kvstore_string();
        if let Some(op) = self.queue.push(key.clone(), op) {
            self.run(key, op, ctx);
        }
    }

    /// Lists and follows the cluster's master keys.
    fn watch_masters(&mut self, ctx: &mut Context<Self>) {
        let Some((_, backend)) = &self.kvstore else {
            return;
        };
        let backend = Arc::clone(backend);
        let prefix = format!("{IDENTITY_ID_PREFIX}/");
        ctx.spawn(
            async move { backend.watch(&prefix, WatchFrom::List).await }
                .into_actor(self)
                .map(|watch, act, ctx| match watch {
                    Ok(events) => {
                        act.state.listing_started();
                        ctx.add_stream(events);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot watch identity master keys");
                        ctx.run_later(REWATCH_DELAY, |act, ctx| act.watch_masters(ctx));
                    }
                }),
        );
    }

    fn cidr_labels(&self, prefix: IpNet) -> Labels {
        Labels::for_cidr(prefix.trunc(), self.dual_stack)
    }
}

impl Actor for IdentityActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.publish(Some(IdentityState::reserved_change()));
        self.watch_masters(ctx);
    }
}

impl Handler<AllocateIdentity> for IdentityActor {
    type Result = ResponseFuture<Result<AllocatedIdentity, IdentityError>>;

    fn handle(&mut self, msg: AllocateIdentity, ctx: &mut Context<Self>) -> Self::Result {
        if msg.labels.is_empty() {
            return Box::pin(async { Err(IdentityError::EmptyLabels) });
        }
        if let Some(id) = IdentityState::reserved_for(&msg.labels) {
            return Box::pin(async move { Ok(AllocatedIdentity { id, is_new: false }) });
        }
        if self.kvstore.is_none() {
            let result = self
                .state
                .allocate_in_process(&msg.labels)
                .map(|(allocation, change)| {
                    self.publish(change);
                    allocation
                });
            return Box::pin(async move { result });
        }
        let (reply, answer) = oneshot::channel();
        let labels = msg.labels;
        self.enqueue(&labels.clone(), KvOp::Allocate { labels, reply }, ctx);
        Box::pin(async move { answer.await.unwrap_or(Err(IdentityError::Stopped)) })
    }
}

impl Handler<ReleaseIdentity> for IdentityActor {
    type Result = ResponseFuture<Result<bool, IdentityError>>;

    fn handle(&mut self, msg: ReleaseIdentity, ctx: &mut Context<Self>) -> Self::Result {
        if IdentityState::reserved_for(&msg.labels).is_some() {
            return Box::pin(async { Ok(false) });
        }
        if self.kvstore.is_none() {
            let result = self
                .state
                .release_in_process(&msg.labels)
                .map(|(last, change)| {
                    self.publish(change);
                    last
                });
            return Box::pin(async move { result });
        }
        let (reply, answer) = oneshot::channel();
        let labels = msg.labels;
        self.enqueue(&labels.clone(), KvOp::Release { labels, reply }, ctx);
        Box::pin(async move { answer.await.unwrap_or(Err(IdentityError::Stopped)) })
    }
}

impl Handler<AllocateCidrIdentities> for IdentityActor {
    type Result = Result<Vec<(IpNet, NumericIdentity)>, IdentityError>;

    fn handle(&mut self, msg: AllocateCidrIdentities, _: &mut Context<Self>) -> Self::Result {
        let mut taken: Vec<(IpNet, NumericIdentity, Labels, bool)> = Vec::new();
        for prefix in &msg.prefixes {
            let labels = self.cidr_labels(*prefix);
            if let Some(id) = IdentityState::reserved_for(&labels) {
                taken.push((*prefix, id, labels, false));
                continue;
            }
            match self.local_scope.allocate(&labels) {
                Ok(allocation) => taken.push((*prefix, allocation.id, labels, true)),
                Err(err) => {
                    // All or nothing: give back what this call took.
                    for (_, _, labels, local) in taken.iter().rev() {
                        if *local {
                            let _ = self.local_scope.release(labels);
                        }
                    }
                    return Err(err.into());
                }
            }
        }
        let mut change = IdentitiesChanged::default();
        let mut result = Vec::with_capacity(taken.len());
        for (prefix, id, labels, local) in taken {
            if local && let Some(c) = self.state.local_scope_allocated(id, labels) {
                change.added.extend(c.added);
            }
            result.push((prefix, id));
        }
        change.added.sort_by_key(|(id, _)| *id);
        change.added.dedup_by_key(|(id, _)| *id);
        self.publish(Some(change));
        Ok(result)
    }
}

impl Handler<ReleaseCidrIdentities> for IdentityActor {
    type Result = Result<Vec<NumericIdentity>, IdentityError>;

    fn handle(&mut self, msg: ReleaseCidrIdentities, _: &mut Context<Self>) -> Self::Result {
        let mut todo = Vec::new();
        let mut wanted: BTreeMap<NumericIdentity, u64> = BTreeMap::new();
        for prefix in &msg.prefixes {
            let labels = self.cidr_labels(*prefix);
            if IdentityState::reserved_for(&labels).is_some() {
                continue;
            }
            let id = self
                .local_scope
                .lookup_labels(&labels)
                .ok_or(IdentityError::CidrNotAllocated { prefix: *prefix })?;
            // A prefix listed more often than it is referenced fails before any release.
            let count = wanted.entry(id).or_default();
            *count += 1;
            if *count > self.state.refs_of(id) {
                return Err(IdentityError::CidrNotAllocated { prefix: *prefix });
            }
            todo.push((id, labels));
        }
        let mut change = IdentitiesChanged::default();
        for (id, labels) in todo {
            let last = self.local_scope.release(&labels)?;
            if let Some(c) = self.state.local_scope_released(id, last) {
                change.removed.extend(c.removed);
            }
        }
        change.removed.sort();
        let gone = change.removed.clone();
        self.publish(Some(change));
        Ok(gone)
    }
}

impl Handler<LookupIdentity> for IdentityActor {
    type Result = MessageResult<LookupIdentity>;

    fn handle(&mut self, msg: LookupIdentity, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.state
                .lookup(msg.id)
                .map(|labels| super::messages::IdentityInfo { id: msg.id, labels }),
        )
    }
}

impl Handler<ListIdentities> for IdentityActor {
    type Result = MessageResult<ListIdentities>;

    fn handle(&mut self, _: ListIdentities, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.list())
    }
}

impl Handler<Dump> for IdentityActor {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        MessageResult(IdentityDump {
            mode: if self.kvstore.is_some() {
                IdentityMode::Kvstore
            } else {
                IdentityMode::Local
            },
            cluster_id: self.state.cluster_id(),
            identities: self.state.list(),
            references: self.state.references(),
            synced: self.state.is_synced(),
            queued_operations: self.queue.waiting(),
        })
    }
}

impl StreamHandler<Result<WatchEvent, kvstore::Error>> for IdentityActor {
    fn handle(&mut self, event: Result<WatchEvent, kvstore::Error>, _: &mut Context<Self>) {
        let change = match event {
            Ok(WatchEvent::Create(kv) | WatchEvent::Modify(kv)) => {
                let Ok(id) = parse_identity_master_key(&kv.key) else {
                    tracing::warn!(key = %kv.key, "ignoring malformed identity master key");
                    return;
                };
                let labels = std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|s| Labels::from_kvstore_string(s).ok());
                let Some(labels) = labels else {
                    tracing::warn!(key = %kv.key, "ignoring identity master key without a label string");
                    return;
                };
                self.state.master_upserted(id, labels)
            }
            Ok(WatchEvent::Delete { key, .. }) => match parse_identity_master_key(&key) {
                Ok(id) => self.state.master_deleted(id),
                Err(_) => return,
            },
            Ok(WatchEvent::ListDone { .. }) => self.state.listing_done(),
            Err(err) => {
                tracing::warn!(error = %err, "identity master key watch failed");
                None
            }
        };
        self.publish(change);
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(REWATCH_DELAY, |act, ctx| act.watch_masters(ctx));
    }
}
