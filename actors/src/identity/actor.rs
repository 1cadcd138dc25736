//! actix glue of the identity actor. Kvstore allocations run as futures on the actor's context
//! (the actor keeps serving other messages meanwhile), one at a time per label set through a
//! [`KeyedQueue`], and answer through a oneshot channel.
//!
//! CIDR identities and the ipcache: with ipcache recipients ([`IdentityActor::with_ipcache`])
//! every local-scope identity the actor holds is in the ipcache under its prefix (source
//! `generated`, as upstream's `UpsertGeneratedIdentities`) from its allocation until its last
//! reference goes. The order follows upstream's `InjectLabels`, which updates policy maps
//! before it upserts the ipcache: a new identity is published to the policy side first and
//! upserted second, a removed one is deleted from the ipcache first and published second. A
//! policy entry for an identity no packet carries yet is harmless; the other order would,
//! for a moment, give the prefix's traffic an identity no policy entry allows yet and drop
//! it (or, on removal, classify it as an identity whose entries are already gone). The
//! messages go through two mailboxes, so this orders the requests, not the map writes;
//! upstream closes that gap by waiting for the policy maps, we accept it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient,
    ResponseFuture, StreamHandler, WrapFuture,
};
use datapath::api::IpcacheKey;
use ipnet::IpNet;
use kvstore::allocator::IdentityAllocator;
use kvstore::keys::{IDENTITY_ID_PREFIX, parse_identity_master_key};
use kvstore::{Backend, WatchEvent, WatchFrom};
use model::identity::{ClusterId, NumericIdentity};
use model::labels::Labels;
use tokio::sync::oneshot;

use super::messages::{
    AllocateCidrIdentities, AllocateIdentity, AllocatedIdentity, Dump, Generation,
    IdentitiesChanged, IdentityDump, IdentityError, IdentityMode, ListIdentities, LookupIdentity,
    ReleaseCidrIdentities, ReleaseIdentity, RemoteIdentities, RemoteIdentityCount,
    RestoreCidrIdentities,
};
use super::state::{IdentityState, KeyedQueue};
use crate::ipcache::{DeleteIp, IpEntry, Source, UpsertIp};
use crate::policy::CidrIdentitiesWanted;

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
        preferred: Option<NumericIdentity>,
        reply: oneshot::Sender<Result<AllocatedIdentity, IdentityError>>,
    },
    Release {
        labels: Labels,
        reply: oneshot::Sender<Result<bool, IdentityError>>,
    },
}

/// Where CIDR identities go into the ipcache.
#[derive(Debug, Clone)]
struct CidrIpcache {
    upsert: Recipient<UpsertIp>,
    delete: Recipient<DeleteIp>,
}

/// The identity allocator of one node.
#[derive(Debug)]
pub struct IdentityActor {
    state: IdentityState,
    kvstore: Option<(Arc<IdentityAllocator>, Arc<dyn Backend>)>,
    dual_stack: bool,
    subscribers: Vec<Recipient<IdentitiesChanged>>,
    /// Changes published so far ([`Generation`]).
    generation: u64,
    ipcache: Option<CidrIpcache>,
    /// Local-scope ids prefixes had before a restart ([`RestoreCidrIdentities`]), by
    /// truncated prefix, until the prefix is allocated again.
    cidr_hints: BTreeMap<IpNet, NumericIdentity>,
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
            dual_stack: config.dual_stack,
            subscribers: config.subscribers,
            generation: 0,
            ipcache: None,
            cidr_hints: BTreeMap::new(),
            queue: KeyedQueue::default(),
        }
    }

    /// Puts every CIDR identity into the ipcache (source `generated`) while it exists, so
    /// that traffic to the prefix carries it. Without this the actor only allocates them.
    pub fn with_ipcache(
        mut self,
        upsert: Recipient<UpsertIp>,
        delete: Recipient<DeleteIp>,
    ) -> Self {
        self.ipcache = Some(CidrIpcache { upsert, delete });
        self
    }

    /// Takes a reference to the CIDR identity of every prefix, all or nothing; publishes the
    /// new ones, then upserts them into the ipcache.
    fn allocate_cidrs(
        &mut self,
        prefixes: &[IpNet],
    ) -> Result<Vec<(IpNet, NumericIdentity)>, IdentityError> {
        let mut result = Vec::with_capacity(prefixes.len());
        let mut taken: Vec<Labels> = Vec::new();
        let mut change = IdentitiesChanged::default();
        let mut fresh = Vec::new();
        for prefix in prefixes {
            let labels = self.cidr_labels(*prefix);
            if let Some(id) = IdentityState::reserved_for(&labels) {
                result.push((*prefix, id));
                continue;
            }
            let preferred = self.cidr_hints.get(&prefix.trunc()).copied();
            match self.state.allocate_local_scope(&labels, preferred) {
                Ok((id, added)) => {
                    if let Some(added) = added {
                        change.added.extend(added.added);
                        fresh.push((prefix.trunc(), id));
                    }
                    taken.push(labels);
                    result.push((*prefix, id));
                }
                Err(err) => {
                    // All or nothing: give back what this call took. Nothing was published.
                    for labels in taken.iter().rev() {
                        let _ = self.state.release_local_scope(labels);
                    }
                    return Err(err);
                }
            }
        }
        for (prefix, _) in &result {
            self.cidr_hints.remove(&prefix.trunc());
        }
        change.added.sort_by_key(|(id, _)| *id);
        self.publish(Some(change));
        if let Some(ipcache) = &self.ipcache {
            for (prefix, id) in fresh {
                ipcache.upsert.do_send(UpsertIp {
                    key: IpcacheKey::new(ClusterId::UNSET, prefix),
                    source: Source::Generated,
                    entry: IpEntry::identity(id),
                });
            }
        }
        Ok(result)
    }

    /// Drops one reference per prefix; deletes the identities that are gone from the ipcache,
    /// then publishes them removed. `strict`: a prefix without (enough) references fails the
    /// call before anything is released; otherwise it is skipped (the policy repository
    /// releases prefixes whose allocation may have failed).
    fn release_cidrs(
        &mut self,
        prefixes: &[IpNet],
        strict: bool,
    ) -> Result<Vec<NumericIdentity>, IdentityError> {
        let mut todo = Vec::new();
        let mut wanted: BTreeMap<NumericIdentity, u64> = BTreeMap::new();
        for prefix in prefixes {
            let labels = self.cidr_labels(*prefix);
            if IdentityState::reserved_for(&labels).is_some() {
                continue;
            }
            let id = self.state.local_scope_id(&labels);
            let enough = id.is_some_and(|id| {
                let count = wanted.entry(id).or_default();
                *count += 1;
                *count <= self.state.refs_of(id)
            });
            match id {
                Some(id) if enough => todo.push((prefix.trunc(), id, labels)),
                _ if strict => return Err(IdentityError::CidrNotAllocated { prefix: *prefix }),
                _ => tracing::debug!(%prefix, "no cidr identity to release"),
            }
        }
        let mut gone = Vec::new();
        for (prefix, _, labels) in todo {
            if let Some(removed) = self.state.release_local_scope(&labels)? {
                gone.extend(removed.removed.into_iter().map(|id| (prefix, id)));
            }
        }
        if let Some(ipcache) = &self.ipcache {
            for (prefix, _) in &gone {
                ipcache.delete.do_send(DeleteIp {
                    key: IpcacheKey::new(ClusterId::UNSET, *prefix),
                    source: Source::Generated,
                });
            }
        }
        let mut removed: Vec<NumericIdentity> = gone.into_iter().map(|(_, id)| id).collect();
        removed.sort();
        self.publish(Some(IdentitiesChanged {
            added: Vec::new(),
            removed: removed.clone(),
        }));
        Ok(removed)
    }

    /// Tells the subscribers of a change; every change of the identities goes through here.
    fn publish(&mut self, change: Option<IdentitiesChanged>) {
        let Some(change) = change.filter(|c| !c.is_empty()) else {
            return;
        };
        self.generation += 1;
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
            KvOp::Allocate {
                labels,
                preferred,
                reply,
            } => {
                let work = async move {
                    let result = allocator.allocate(&labels).await;
                    (result, labels)
                };
                ctx.spawn(
                    work.into_actor(self)
                        .map(move |(result, labels), act, ctx| {
                            let answer = result
                                .map(|allocation| {
                                    if let Some(preferred) =
                                        preferred.filter(|p| *p != allocation.id)
                                    {
                                        // The kvstore's binding of the labels is the
                                        // cluster's truth; the endpoint's entries change.
                                        tracing::warn!(
                                            id = %allocation.id,
                                            %preferred,
                                            labels = %labels.to_kvstore_string(),
                                            "the kvstore holds another identity for the labels than the preferred one"
                                        );
                                    }
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
                .allocate_in_process(&msg.labels, msg.preferred)
                .map(|(allocation, change)| {
                    self.publish(change);
                    allocation
                });
            return Box::pin(async move { result });
        }
        let (reply, answer) = oneshot::channel();
        let labels = msg.labels;
        let op = KvOp::Allocate {
            labels: labels.clone(),
            preferred: msg.preferred,
            reply,
        };
        self.enqueue(&labels, op, ctx);
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
        self.allocate_cidrs(&msg.prefixes)
    }
}

impl Handler<ReleaseCidrIdentities> for IdentityActor {
    type Result = Result<Vec<NumericIdentity>, IdentityError>;

    fn handle(&mut self, msg: ReleaseCidrIdentities, _: &mut Context<Self>) -> Self::Result {
        self.release_cidrs(&msg.prefixes, true)
    }
}

impl Handler<CidrIdentitiesWanted> for IdentityActor {
    type Result = ();

    /// The policy repository's CIDR prefixes. Nobody waits for an answer, so failures are
    /// logged: a prefix without identity is selected only through broader prefixes (or
    /// `world`) until the rules name it again.
    fn handle(&mut self, msg: CidrIdentitiesWanted, _: &mut Context<Self>) {
        if !msg.removed.is_empty()
            && let Err(error) = self.release_cidrs(&msg.removed, false)
        {
            tracing::error!(%error, prefixes = ?msg.removed, "cannot release cidr identities");
        }
        if !msg.added.is_empty()
            && let Err(error) = self.allocate_cidrs(&msg.added)
        {
            tracing::error!(%error, prefixes = ?msg.added, "cannot allocate cidr identities the policy names");
        }
    }
}

impl Handler<RestoreCidrIdentities> for IdentityActor {
    type Result = ();

    fn handle(&mut self, msg: RestoreCidrIdentities, _: &mut Context<Self>) {
        for (prefix, id) in msg.identities {
            if id.is_local_scope() {
                self.cidr_hints.insert(prefix.trunc(), id);
            } else {
                tracing::warn!(%prefix, %id, "ignoring a restored cidr identity outside the local scope");
            }
        }
    }
}

impl Handler<RemoteIdentities> for IdentityActor {
    type Result = ();

    fn handle(&mut self, msg: RemoteIdentities, _: &mut Context<Self>) {
        let change = self
            .state
            .remote_changed(msg.cluster, msg.added, msg.removed);
        if let Some(change) = &change {
            tracing::debug!(
                cluster_id = %msg.cluster,
                added = change.added.len(),
                removed = change.removed.len(),
                "remote identities changed"
            );
        }
        self.publish(change);
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

impl Handler<Generation> for IdentityActor {
    type Result = u64;

    fn handle(&mut self, _: Generation, _: &mut Context<Self>) -> u64 {
        self.generation
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
            remote: self
                .state
                .remote_counts()
                .into_iter()
                .map(|(cluster_id, identities)| RemoteIdentityCount {
                    cluster_id,
                    identities,
                })
                .collect(),
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
