//! actix glue of the IpCache actor: state effects become datapath messages and kvstore writes;
//! kvstore watch events become `kvstore` claims.

use std::collections::BTreeSet;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient, StreamHandler,
    WrapFuture,
};
use datapath::api::IpcacheKey;
use datapath::reconciler::{DeleteIpcache, UpsertIpcache};
use kvstore::keys::{IpCacheEntry, TypedEvent};
use model::identity::ClusterId;

use super::messages::{
    DeleteIp, Dump, Generation, IpCacheDump, KvstoreLeaseChanged, KvstoreSyncDump, LookupIp,
    LookupResult, UpsertIp,
};
use super::source::Source;
use super::state::{
    Effect, IpCacheSettings, IpCacheState, IpEntry, K8sMetadata, parse_prefix_name,
};
use super::sync::{KvstoreSync, KvstoreSyncConfig, NextFlush, apply_batch};

/// How long to wait before watching the kvstore again after its watch ended.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Where the ipcache sends its datapath entries.
#[derive(Debug, Clone)]
pub struct IpCacheOutputs {
    pub upsert: Recipient<UpsertIpcache>,
    pub delete: Recipient<DeleteIpcache>,
}

/// Configuration of an [`IpCacheActor`].
#[derive(Debug, Clone)]
pub struct IpCacheConfig {
    /// This node's address: entries hosted here get no tunnel endpoint, and kvstore entries
    /// hosted here are this node's own and not read back.
    pub node_ip: Option<std::net::IpAddr>,
    /// Publish local entries to (and optionally read other nodes' from) the kvstore.
    pub kvstore: Option<KvstoreSyncConfig>,
}

/// The ipcache of one node.
#[derive(Debug)]
pub struct IpCacheActor {
    state: IpCacheState,
    outputs: IpCacheOutputs,
    node_ip: Option<std::net::IpAddr>,
    sync: Option<KvstoreSync>,
    /// Prefixes seen in the current kvstore listing; `Some` until the listing is complete.
    listing: Option<BTreeSet<IpcacheKey>>,
}

impl IpCacheActor {
    pub fn new(config: IpCacheConfig, outputs: IpCacheOutputs) -> Self {
        let settings = IpCacheSettings {
            node_ip: config.node_ip,
            publish_local: config.kvstore.is_some(),
        };
        IpCacheActor {
            state: IpCacheState::new(settings),
            outputs,
            node_ip: config.node_ip,
            sync: config.kvstore.map(KvstoreSync::new),
            listing: None,
        }
    }

    fn dispatch(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        let mut published = false;
        for effect in effects {
            match effect {
                Effect::Upsert(key, info) => upserts.push((key, info)),
                Effect::Delete(key) => deletes.push(key),
                Effect::Publish(entry) => {
                    if let Some(sync) = &mut self.sync {
                        sync.queue.queue(entry.prefix_string(), Some(entry));
                        published = true;
                    }
                }
                Effect::Unpublish(name) => {
                    if let Some(sync) = &mut self.sync {
                        sync.queue.queue(name, None);
                        published = true;
                    }
                }
            }
        }
        // One key is either upserted or deleted by one change, so the two messages commute.
        if !upserts.is_empty() {
            self.outputs
                .upsert
                .do_send(UpsertIpcache { entries: upserts });
        }
        if !deletes.is_empty() {
            self.outputs.delete.do_send(DeleteIpcache { keys: deletes });
        }
        if published {
            self.flush(ctx);
        }
    }

    /// Starts the next kvstore batch unless one is in flight.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(sync) = &mut self.sync else {
            return;
        };
        let Some(batch) = sync.queue.start() else {
            return;
        };
        let work = apply_batch(sync.store.clone(), sync.lease, batch);
        ctx.spawn(work.into_actor(self).map(|(failed, error), act, ctx| {
            let Some(sync) = &mut act.sync else {
                return;
            };
            match sync.queue.finish(failed, error) {
                NextFlush::Idle => {}
                NextFlush::Now => act.flush(ctx),
                NextFlush::After(delay) => {
                    ctx.run_later(delay, |act, ctx| act.flush(ctx));
                }
            }
        }));
    }

    /// Watches other nodes' entries.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let Some(sync) = &self.sync else {
            return;
        };
        let store = sync.store.clone();
        ctx.spawn(
            async move { store.watch().await }.into_actor(self).map(
                |watch, act, ctx| match watch {
                    Ok(events) => {
                        act.listing = Some(BTreeSet::new());
                        ctx.add_stream(events);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot watch kvstore ipcache entries");
                        ctx.run_later(REWATCH_DELAY, |act, ctx| act.watch(ctx));
                    }
                },
            ),
        );
    }

    /// A kvstore entry as a `kvstore` claim; `None` for this node's own entries.
    fn remote_claim(&self, entry: IpCacheEntry) -> Option<(IpcacheKey, IpEntry)> {
        if entry.host_ip.is_some() && entry.host_ip == self.node_ip {
            return None;
        }
        let Some(prefix) = parse_prefix_name(&entry.prefix_string()) else {
            tracing::warn!(prefix = %entry.prefix_string(), "ignoring kvstore ipcache entry with a bad prefix");
            return None;
        };
        let has_k8s = !entry.k8s_namespace.is_empty() || !entry.k8s_pod_name.is_empty();
        let k8s = has_k8s.then_some(K8sMetadata {
            namespace: entry.k8s_namespace,
            pod_name: entry.k8s_pod_name,
            service_account: entry.k8s_service_account,
            named_ports: entry.named_ports,
        });
        let claim = IpEntry {
            identity: entry.id,
            host_ip: entry.host_ip,
            encrypt_key: entry.encrypt_key,
            k8s,
            metadata: entry.metadata,
        };
        Some((IpcacheKey::new(ClusterId::UNSET, prefix), claim))
    }
}

impl Actor for IpCacheActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.sync.as_ref().is_some_and(|sync| sync.consume) {
            self.watch(ctx);
        }
    }
}

impl Handler<UpsertIp> for IpCacheActor {
    type Result = MessageResult<UpsertIp>;

    fn handle(&mut self, msg: UpsertIp, ctx: &mut Context<Self>) -> Self::Result {
        let (effective, effects) = self.state.upsert(msg.key, msg.source, msg.entry);
        self.dispatch(effects, ctx);
        MessageResult(effective)
    }
}

impl Handler<DeleteIp> for IpCacheActor {
    type Result = ();

    fn handle(&mut self, msg: DeleteIp, ctx: &mut Context<Self>) {
        let effects = self.state.delete(msg.key, msg.source);
        self.dispatch(effects, ctx);
    }
}

impl Handler<LookupIp> for IpCacheActor {
    type Result = MessageResult<LookupIp>;

    fn handle(&mut self, msg: LookupIp, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.state
                .lookup(msg.ip)
                .map(|(key, source, entry)| LookupResult { key, source, entry }),
        )
    }
}

impl Handler<KvstoreLeaseChanged> for IpCacheActor {
    type Result = ();

    fn handle(&mut self, msg: KvstoreLeaseChanged, ctx: &mut Context<Self>) {
        let entries = self.state.local_entries();
        let Some(sync) = &mut self.sync else {
            return;
        };
        sync.lease = msg.lease;
        for entry in entries {
            sync.queue.queue(entry.prefix_string(), Some(entry));
        }
        self.flush(ctx);
    }
}

impl Handler<Generation> for IpCacheActor {
    type Result = u64;

    fn handle(&mut self, _: Generation, _: &mut Context<Self>) -> u64 {
        self.state.generation()
    }
}

impl Handler<Dump> for IpCacheActor {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        MessageResult(IpCacheDump {
            entries: self.state.dump(),
            kvstore: self.sync.as_ref().map(|sync| KvstoreSyncDump {
                pending: sync.queue.pending(),
                last_error: sync.queue.last_error().map(str::to_owned),
            }),
        })
    }
}

impl StreamHandler<Result<TypedEvent<IpCacheEntry>, kvstore::Error>> for IpCacheActor {
    fn handle(
        &mut self,
        event: Result<TypedEvent<IpCacheEntry>, kvstore::Error>,
        ctx: &mut Context<Self>,
    ) {
        match event {
            Ok(TypedEvent::Upsert(entry)) => {
                if let Some((key, claim)) = self.remote_claim(entry) {
                    if let Some(seen) = &mut self.listing {
                        seen.insert(key);
                    }
                    let (_, effects) = self.state.upsert(key, Source::KvStore, claim);
                    self.dispatch(effects, ctx);
                }
            }
            Ok(TypedEvent::Delete(name)) => match parse_prefix_name(&name) {
                Some(prefix) => {
                    let key = IpcacheKey::new(ClusterId::UNSET, prefix);
                    let effects = self.state.delete(key, Source::KvStore);
                    self.dispatch(effects, ctx);
                }
                None => tracing::warn!(%name, "ignoring kvstore ipcache delete of a bad prefix"),
            },
            Ok(TypedEvent::Synced) => {
                // After a re-list, claims the listing no longer has are gone.
                if let Some(seen) = self.listing.take() {
                    let effects = self
                        .state
                        .retain_source(Source::KvStore, |key| seen.contains(key));
                    self.dispatch(effects, ctx);
                }
            }
            Err(err) => tracing::warn!(error = %err, "kvstore ipcache watch failed"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(REWATCH_DELAY, |act, ctx| act.watch(ctx));
    }
}
