//! actix glue of the NodeManager: state effects become ipcache messages, route operations and
//! kvstore writes; kvstore watch events become peer changes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient, StreamHandler,
    WrapFuture,
};
use datapath::api::{IpcacheKey, error_chain};
use datapath::routes::NodeRoutes;
use ipnet::IpNet;
use kvstore::keys::{NODES_PREFIX, Node, TypedEvent, TypedStore, join_key};
use kvstore::{Backend, LeaseId};
use model::identity::{ClusterId, ClusterName};

use super::messages::{
    Dump, ListNodes, NodeLeaseChanged, NodeManagerDump, PublishDump, RemoteNodes, UpdateLocalNode,
};
use super::state::{Effect, NextPublish, NodeState, RouteOp};
use crate::ipcache::{DeleteIp, IpEntry, Source, UpsertIp};

/// The ipcache source of node address claims. Not `local`, which the ipcache publishes to the
/// kvstore (node addresses travel in node records, not ipcache keys), and not `kvstore`, whose
/// claims the ipcache's own kvstore watch prunes after every re-list.
pub const NODE_IP_SOURCE: Source = Source::CustomResource;

/// How long to wait before watching the node records again after the watch ended.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// The kvstore the manager publishes to and watches.
#[derive(Debug, Clone)]
pub struct NodeKvstoreConfig {
    pub backend: Arc<dyn Backend>,
    /// The agent's lease (one per agent); the local record vanishes with it.
    pub lease: LeaseId,
}

/// Where node address claims go.
#[derive(Debug, Clone)]
pub struct NodeIpcacheOutputs {
    pub upsert: Recipient<UpsertIp>,
    pub delete: Recipient<DeleteIp>,
}

/// Configuration of a [`NodeManager`].
#[derive(Debug, Clone)]
pub struct NodeManagerConfig {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    /// The record to publish; its cluster name and id are set from the two fields above.
    pub local: Node,
    /// Without a kvstore the manager knows only the local node.
    pub kvstore: Option<NodeKvstoreConfig>,
    pub routes: Arc<dyn NodeRoutes>,
    pub ipcache: Option<NodeIpcacheOutputs>,
}

#[derive(Debug)]
struct Kvstore {
    /// Below [`NODES_PREFIX`]: a node's key name is `<cluster>/<name>`.
    publish: TypedStore<Node>,
    /// Below `<NODES_PREFIX>/<cluster>`: only this cluster's nodes, named by node name.
    watch: TypedStore<Node>,
    lease: LeaseId,
}

/// The node manager of one agent. See the module docs.
#[derive(Debug)]
pub struct NodeManager {
    state: NodeState,
    cluster: ClusterName,
    cluster_id: ClusterId,
    routes: Arc<dyn NodeRoutes>,
    ipcache: Option<NodeIpcacheOutputs>,
    kvstore: Option<Kvstore>,
}

impl NodeManager {
    pub fn new(config: NodeManagerConfig) -> Self {
        let local = with_cluster(config.local, &config.cluster, config.cluster_id);
        let kvstore = config.kvstore.map(|kv| Kvstore {
            publish: TypedStore::new(Arc::clone(&kv.backend), NODES_PREFIX),
            watch: TypedStore::new(
                kv.backend,
                join_key(&[NODES_PREFIX, config.cluster.as_str()]),
            ),
            lease: kv.lease,
        });
        NodeManager {
            state: NodeState::new(config.cluster.as_str(), local),
            cluster: config.cluster,
            cluster_id: config.cluster_id,
            routes: config.routes,
            ipcache: config.ipcache,
            kvstore,
        }
    }

    fn dispatch(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::ClaimIp {
                    ip,
                    identity,
                    host_ip,
                } => {
                    if let Some(ipcache) = &self.ipcache {
                        ipcache.upsert.do_send(UpsertIp {
                            key: host_key(ip),
                            source: NODE_IP_SOURCE,
                            entry: IpEntry {
                                host_ip: host_ip.map(IpAddr::V4),
                                ..IpEntry::identity(identity)
                            },
                        });
                    }
                }
                Effect::ReleaseIp(ip) => {
                    if let Some(ipcache) = &self.ipcache {
                        ipcache.delete.do_send(DeleteIp {
                            key: host_key(ip),
                            source: NODE_IP_SOURCE,
                        });
                    }
                }
                Effect::Publish => self.publish(ctx),
                Effect::Reconcile => self.reconcile(ctx),
            }
        }
    }

    /// Writes the local record unless a write is in flight or waiting for its retry.
    fn publish(&mut self, ctx: &mut Context<Self>) {
        let Some(kv) = &self.kvstore else {
            return;
        };
        if !self.state.publisher().start() {
            return;
        }
        let store = kv.publish.clone();
        let lease = kv.lease;
        let node = self.state.local().clone();
        let work = async move { store.upsert(&node, Some(lease)).await };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            let result = result.map_err(|err| {
                tracing::warn!(error = %err, "publishing the local node record failed");
                error_chain(&err)
            });
            match act.state.publisher().finish(result) {
                NextPublish::Idle => {}
                NextPublish::Now => act.publish(ctx),
                NextPublish::After(delay) => {
                    ctx.run_later(delay, |act, ctx| {
                        act.state.publisher().retry();
                        act.publish(ctx);
                    });
                }
            }
        }));
    }

    /// Runs the next route operation unless one is in flight.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let Some(op) = self.state.routes().start() else {
            return;
        };
        let routes = Arc::clone(&self.routes);
        let work = async move {
            match op {
                RouteOp::Install(route) => routes.upsert(&route).await,
                RouteOp::Remove(route) => routes.delete(&route).await.map(drop),
            }
        };
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            let result = result.map_err(|err| {
                tracing::warn!(?op, error = %err, "node route operation failed");
                error_chain(&err)
            });
            if let Some(delay) = act.state.routes().finish(op, result) {
                ctx.run_later(delay, move |act, ctx| {
                    act.state.routes().retry(op);
                    act.reconcile(ctx);
                });
            }
            act.reconcile(ctx);
        }));
    }

    /// Takes over the routes the kernel holds from an earlier run; those no peer wants go.
    fn adopt_routes(&mut self, ctx: &mut Context<Self>) {
        let routes = Arc::clone(&self.routes);
        let work = async move { routes.list().await };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| match result {
            Ok(listed) => {
                if act.state.routes().adopt(listed) {
                    act.reconcile(ctx);
                }
            }
            Err(err) => {
                tracing::warn!(error = %error_chain(&err), "cannot list node routes; stale routes of an earlier run stay");
            }
        }));
    }

    /// Watches this cluster's node records.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        let Some(kv) = &self.kvstore else {
            return;
        };
        let store = kv.watch.clone();
        ctx.spawn(
            async move { store.watch().await }.into_actor(self).map(
                |watch, act, ctx| match watch {
                    Ok(events) => {
                        act.state.watch_started();
                        ctx.add_stream(events);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot watch kvstore node records");
                        ctx.run_later(REWATCH_DELAY, |act, ctx| act.watch(ctx));
                    }
                },
            ),
        );
    }
}

/// The record as this agent publishes it: in its own cluster.
fn with_cluster(mut node: Node, cluster: &ClusterName, cluster_id: ClusterId) -> Node {
    node.cluster = cluster.as_str().to_owned();
    node.cluster_id = u32::from(cluster_id.get());
    node
}

fn host_key(ip: Ipv4Addr) -> IpcacheKey {
    IpcacheKey::new(ClusterId::UNSET, IpNet::from(IpAddr::V4(ip)))
}

impl Actor for NodeManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let effects = self.state.start();
        self.dispatch(effects, ctx);
        if self.kvstore.is_some() {
            self.watch(ctx);
        } else {
            // No peers can ever appear: every route of an earlier run is stale.
            self.adopt_routes(ctx);
        }
    }
}

impl Handler<NodeLeaseChanged> for NodeManager {
    type Result = ();

    fn handle(&mut self, msg: NodeLeaseChanged, ctx: &mut Context<Self>) {
        let Some(kv) = &mut self.kvstore else {
            return;
        };
        kv.lease = msg.lease;
        let effects = self.state.lease_changed();
        self.dispatch(effects, ctx);
    }
}

impl Handler<UpdateLocalNode> for NodeManager {
    type Result = ();

    fn handle(&mut self, msg: UpdateLocalNode, ctx: &mut Context<Self>) {
        let node = with_cluster(msg.node, &self.cluster, self.cluster_id);
        let effects = self.state.update_local(node);
        self.dispatch(effects, ctx);
    }
}

impl Handler<RemoteNodes> for NodeManager {
    type Result = ();

    fn handle(&mut self, msg: RemoteNodes, ctx: &mut Context<Self>) {
        let cluster = msg.cluster.as_str();
        tracing::debug!(
            %cluster,
            upserted = msg.upserted.len(),
            removed = msg.removed.len(),
            "remote nodes changed"
        );
        let mut effects = Vec::new();
        for name in &msg.removed {
            effects.extend(self.state.delete_remote(cluster, name));
        }
        for node in msg.upserted {
            effects.extend(self.state.upsert_remote(cluster, node));
        }
        self.dispatch(effects, ctx);
    }
}

impl Handler<ListNodes> for NodeManager {
    type Result = MessageResult<ListNodes>;

    fn handle(&mut self, _: ListNodes, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.nodes())
    }
}

impl Handler<Dump> for NodeManager {
    type Result = MessageResult<Dump>;

    fn handle(&mut self, _: Dump, _: &mut Context<Self>) -> Self::Result {
        let local = self.state.local().clone();
        let publish = self.kvstore.as_ref().map(|kv| PublishDump {
            key: kv.publish.key(&kvstore::keys::StoreValue::key_name(&local)),
            lease: kv.lease.to_string(),
            status: self.state.publisher().status().clone(),
        });
        MessageResult(NodeManagerDump {
            local,
            peers: self.state.peer_dump(),
            routes: self.state.routes().dump(),
            publish,
            synced: self.state.is_synced(),
        })
    }
}

impl StreamHandler<Result<TypedEvent<Node>, kvstore::Error>> for NodeManager {
    fn handle(&mut self, event: Result<TypedEvent<Node>, kvstore::Error>, ctx: &mut Context<Self>) {
        match event {
            Ok(TypedEvent::Upsert(node)) => {
                let effects = self.state.upsert_peer(node);
                self.dispatch(effects, ctx);
            }
            Ok(TypedEvent::Delete(name)) => {
                let effects = self.state.delete_peer(&name);
                self.dispatch(effects, ctx);
            }
            Ok(TypedEvent::Synced) => {
                let (effects, first) = self.state.synced();
                self.dispatch(effects, ctx);
                if first {
                    self.adopt_routes(ctx);
                }
            }
            Err(err) => tracing::warn!(error = %err, "kvstore node watch failed"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(REWATCH_DELAY, |act, ctx| act.watch(ctx));
    }
}
