//! The leader's node controller: cluster-pool IPAM and node garbage collection, driven by two
//! watches (the cluster's node records and its pod CIDR allocations).
//!
//! - Every node record `cilium/state/nodes/v1/<cluster>/<node>` gets an allocation
//!   `cilium/config/ipam/v1/<cluster>/<node>` from the [`CidrPool`], written create-only and
//!   without a lease: a CIDR outlives agent restarts and lease losses, and a node keeps it for
//!   as long as its record exists.
//! - A node whose record already announces a pod CIDR (`IPv4AllocCIDR`) but has no allocation
//!   (the allocations were lost) gets that CIDR if it is a free one of the pool.
//! - The allocation watch rebuilds the pool when leadership starts (so a new leader keeps every
//!   node's CIDR) and follows later changes, including hand edits. A record that does not
//!   decode, lies outside the pool or overlaps another node's is reported and left alone.
//! - A node whose record has been gone for `--nodes-gc-interval` loses its allocation, and the
//!   ipcache entries naming its IP as `HostIP` that were written without a lease (leased ones
//!   go with their lease) are deleted.
//!
//! Nothing is allocated before both watches have listed their prefix, so a new leader never
//! hands out a CIDR it has not yet seen taken. Every write is fenced on the leader lock; a
//! kvstore error is retried after `retry_interval`, a lost lock ends the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use kvstore::keys::{
    IPAM_PREFIX, IPCACHE_PREFIX, IpCacheEntry, IpamAllocation, NODES_PREFIX, Node, StoreValue,
    ipam_key, join_key,
};
use kvstore::{Backend, Compare, KeyValue, TxnOp, WatchEvent, WatchFrom};
use tokio::time::Instant;

use crate::error::OperatorError;
use crate::ipam::CidrPool;
use crate::leader::Leadership;
use crate::metrics::{NodeGcDeletion, OperatorMetrics};
use crate::nodes::{GoneNode, NodeName, NodeTracker, announced_ipv4_cidr, node_ip};

/// The controller's state for one term of leadership.
pub(crate) struct NodeController {
    cluster: String,
    backend: Arc<dyn Backend>,
    leadership: Leadership,
    pool: CidrPool,
    nodes: NodeTracker,
    /// Nodes whose allocation record exists but is not ours to manage (undecodable, outside
    /// the pool, overlapping another's): never rewritten, never collected.
    unmanaged: BTreeSet<NodeName>,
    /// Nodes already reported as waiting for a free CIDR: exhaustion is logged once per node.
    starved: BTreeSet<NodeName>,
    /// The CIDR a live node had when its allocation was deleted by hand: it gets it back.
    previous: BTreeMap<NodeName, Ipv4Net>,
    nodes_gc_interval: Duration,
    retry_interval: Duration,
    nodes_synced: bool,
    allocations_synced: bool,
    retry_at: Option<Instant>,
    metrics: OperatorMetrics,
}

impl NodeController {
    pub(crate) fn new(
        cluster: String,
        backend: Arc<dyn Backend>,
        leadership: Leadership,
        pool: CidrPool,
        nodes_gc_interval: Duration,
        retry_interval: Duration,
        metrics: OperatorMetrics,
    ) -> Self {
        NodeController {
            cluster,
            backend,
            leadership,
            pool,
            nodes: NodeTracker::new(),
            unmanaged: BTreeSet::new(),
            starved: BTreeSet::new(),
            previous: BTreeMap::new(),
            nodes_gc_interval,
            retry_interval,
            nodes_synced: false,
            allocations_synced: false,
            retry_at: None,
            metrics,
        }
    }

    /// Runs until leadership is lost or a watch fails.
    pub(crate) async fn run(mut self) -> Result<Infallible, OperatorError> {
        let nodes_prefix = format!("{}/", join_key(&[NODES_PREFIX, &self.cluster]));
        let ipam_prefix = format!("{}/", join_key(&[IPAM_PREFIX, &self.cluster]));
        let mut node_events = self
            .backend
            .watch(&nodes_prefix, WatchFrom::List)
            .await
            .map_err(OperatorError::kvstore("watch nodes"))?;
        let mut ipam_events = self
            .backend
            .watch(&ipam_prefix, WatchFrom::List)
            .await
            .map_err(OperatorError::kvstore("watch pod CIDR allocations"))?;
        loop {
            let collect_at = self.nodes.next_deadline();
            let retry_at = self.retry_at;
            tokio::select! {
                event = ipam_events.next() => {
                    let event = event
                        .ok_or_else(|| OperatorError::WatchEnded { prefix: ipam_prefix.clone() })?
                        .map_err(OperatorError::kvstore("watch pod CIDR allocations"))?;
                    self.on_allocation_event(&ipam_prefix, event);
                }
                event = node_events.next() => {
                    let event = event
                        .ok_or_else(|| OperatorError::WatchEnded { prefix: nodes_prefix.clone() })?
                        .map_err(OperatorError::kvstore("watch nodes"))?;
                    self.on_node_event(&nodes_prefix, event);
                }
                () = sleep_until(collect_at) => self.collect_nodes().await?,
                () = sleep_until(retry_at) => self.retry_at = None,
            }
            if self.nodes_synced && self.allocations_synced {
                self.reconcile().await?;
                // Only once both lists are in does the pool say what the store holds.
                self.metrics.set_pod_cidrs(&self.pool);
            }
        }
    }

    fn on_node_event(&mut self, prefix: &str, event: WatchEvent) {
        match event {
            WatchEvent::Create(kv) | WatchEvent::Modify(kv) => {
                let Some(name) = name_below(prefix, &kv.key) else {
                    return;
                };
                let node = match Node::decode(&kv.value) {
                    Ok(node) => node,
                    Err(error) => {
                        tracing::warn!(key = %kv.key, %error, "skipping malformed node record");
                        return;
                    }
                };
                if node.name != name.as_str() {
                    tracing::warn!(
                        key = %kv.key,
                        record_name = %node.name,
                        "node record names another node than its key; using the key"
                    );
                }
                if !self.nodes.is_present(&name) {
                    tracing::debug!(node = %name, "node record seen");
                }
                self.nodes
                    .seen(&name, node_ip(&node), announced_ipv4_cidr(&node));
            }
            WatchEvent::Delete { key, .. } => {
                let Some(name) = name_below(prefix, &key) else {
                    return;
                };
                tracing::info!(
                    node = %name,
                    grace = ?self.nodes_gc_interval,
                    "node record gone; cleaning up after it unless it returns within the grace period"
                );
                self.nodes
                    .gone(&name, Instant::now() + self.nodes_gc_interval);
            }
            WatchEvent::ListDone { .. } => self.nodes_synced = true,
        }
    }

    fn on_allocation_event(&mut self, prefix: &str, event: WatchEvent) {
        match event {
            WatchEvent::Create(kv) | WatchEvent::Modify(kv) => {
                if let Some(name) = name_below(prefix, &kv.key) {
                    self.adopt(&name, &kv);
                }
            }
            WatchEvent::Delete { key, .. } => {
                let Some(name) = name_below(prefix, &key) else {
                    return;
                };
                self.unmanaged.remove(&name);
                let released = self.pool.release(&name);
                if self.nodes.is_present(&name) {
                    tracing::warn!(
                        node = %name,
                        cidrs = ?released,
                        "pod CIDR allocation of a live node was deleted; writing it again"
                    );
                    if let Some(cidr) = released.first() {
                        self.previous.insert(name, *cidr);
                    }
                }
            }
            WatchEvent::ListDone { .. } => {
                tracing::info!(
                    allocations = self.pool.len(),
                    unmanaged = self.unmanaged.len(),
                    pool = %self.pool.pool(),
                    "pod CIDR allocations restored"
                );
                self.allocations_synced = true;
            }
        }
    }

    /// Takes the allocation record `kv` of `node` into the pool, or reports why it is left
    /// alone.
    fn adopt(&mut self, node: &NodeName, kv: &KeyValue) {
        let record = match IpamAllocation::decode(&kv.value) {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(key = %kv.key, %error, "leaving undecodable pod CIDR allocation alone");
                self.unmanaged.insert(node.clone());
                return;
            }
        };
        if record.node != node.as_str() || record.cluster != self.cluster {
            tracing::warn!(
                key = %kv.key,
                record_cluster = %record.cluster,
                record_node = %record.node,
                "leaving pod CIDR allocation that names another node alone"
            );
            self.unmanaged.insert(node.clone());
            return;
        }
        match self.pool.restore(node, &record.pod_cidrs) {
            Ok(()) => {
                self.unmanaged.remove(node);
                self.starved.remove(node);
            }
            Err(error) => {
                tracing::warn!(key = %kv.key, %error, "leaving pod CIDR allocation alone");
                self.unmanaged.insert(node.clone());
            }
        }
    }

    /// Gives every live node without an allocation one, and schedules the collection of
    /// allocations whose node was never seen.
    async fn reconcile(&mut self) -> Result<(), OperatorError> {
        let now = Instant::now();
        let orphans: Vec<NodeName> = self
            .pool
            .nodes()
            .filter(|name| !self.nodes.is_known(name))
            .cloned()
            .collect();
        for name in orphans {
            tracing::info!(
                node = %name,
                grace = ?self.nodes_gc_interval,
                "pod CIDR allocation without a node record; releasing it unless the node appears"
            );
            self.nodes.gone(&name, now + self.nodes_gc_interval);
        }

        let mut wanting: Vec<NodeName> = self
            .nodes
            .present()
            .filter(|name| self.pool.allocation(name).is_none() && !self.unmanaged.contains(*name))
            .cloned()
            .collect();
        // Nodes already using a CIDR (their record announces it, e.g. after the allocations
        // were wiped) go first, so that nobody else is handed the CIDR they use.
        wanting.sort_by_key(|name| self.nodes.announced_cidr(name).is_none());
        for name in wanting {
            if self.retry_at.is_some() {
                // The store failed a moment ago; the retry timer brings us back.
                break;
            }
            self.allocate(&name).await?;
        }
        Ok(())
    }

    async fn allocate(&mut self, node: &NodeName) -> Result<(), OperatorError> {
        let preferred = self
            .previous
            .get(node)
            .copied()
            .or_else(|| self.nodes.announced_cidr(node));
        let cidrs = match self.pool.allocate_preferring(node, preferred) {
            Ok(cidrs) => cidrs,
            Err(error) => {
                if self.starved.insert(node.clone()) {
                    tracing::error!(
                        node = %node,
                        %error,
                        "no pod CIDR for node: it stays pending until a CIDR is released"
                    );
                }
                return Ok(());
            }
        };
        let key = ipam_key(&self.cluster, node.as_str());
        let record = IpamAllocation {
            cluster: self.cluster.clone(),
            node: node.as_str().to_owned(),
            pod_cidrs: cidrs.clone(),
        };
        let value = match record.encode() {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(node = %node, %error, "cannot encode pod CIDR allocation");
                self.pool.release(node);
                return Ok(());
            }
        };
        let written = self
            .leadership
            .fenced(
                "create pod CIDR allocation",
                vec![Compare::missing(key.clone())],
                vec![TxnOp::Put {
                    key: key.clone(),
                    value,
                    lease: None,
                }],
            )
            .await;
        match written {
            Ok(true) => {
                tracing::info!(node = %node, cidrs = ?cidrs, "allocated pod CIDR");
                self.starved.remove(node);
                self.previous.remove(node);
            }
            Ok(false) => {
                // Someone wrote the node's allocation since we listed; what is there wins.
                self.pool.release(node);
                match self.backend.get(&key).await {
                    Ok(Some(kv)) => self.adopt(node, &kv),
                    Ok(None) => self.schedule_retry(),
                    Err(error) => {
                        tracing::warn!(node = %node, %error, "cannot read pod CIDR allocation; retrying");
                        self.schedule_retry();
                    }
                }
            }
            Err(error @ OperatorError::LeadershipLost { .. }) => return Err(error),
            Err(error) => {
                // The write may have landed; if so the watch (or the create-only conflict on
                // the next attempt) brings the record back.
                tracing::warn!(node = %node, %error, "cannot write pod CIDR allocation; retrying");
                self.pool.release(node);
                self.schedule_retry();
            }
        }
        Ok(())
    }

    fn schedule_retry(&mut self) {
        self.retry_at
            .get_or_insert_with(|| Instant::now() + self.retry_interval);
    }

    /// Cleans up after every node whose grace period ran out.
    async fn collect_nodes(&mut self) -> Result<(), OperatorError> {
        let now = Instant::now();
        for gone in self.nodes.due(now) {
            match self.collect(&gone).await {
                Ok(()) => self.nodes.forget(&gone.name),
                Err(error @ OperatorError::LeadershipLost { .. }) => return Err(error),
                Err(error) => {
                    tracing::warn!(node = %gone.name, %error, "node garbage collection failed; retrying");
                    self.nodes.postpone(&gone.name, now + self.retry_interval);
                }
            }
        }
        Ok(())
    }

    async fn collect(&mut self, gone: &GoneNode) -> Result<(), OperatorError> {
        let name = &gone.name;
        if self.unmanaged.contains(name) {
            tracing::warn!(node = %name, "node is gone; leaving its unmanaged pod CIDR allocation alone");
        } else if self.pool.allocation(name).is_some() {
            let deleted = self
                .leadership
                .fenced(
                    "delete pod CIDR allocation",
                    vec![],
                    vec![TxnOp::Delete {
                        key: ipam_key(&self.cluster, name.as_str()),
                    }],
                )
                .await?;
            if deleted {
                self.metrics.node_gc_deleted(NodeGcDeletion::PodCidr, 1);
            }
            let cidrs = self.pool.release(name);
            tracing::info!(node = %name, cidrs = ?cidrs, "released pod CIDR of vanished node");
        }
        self.previous.remove(name);
        self.starved.remove(name);

        let Some(ip) = gone.last_ip else {
            return Ok(());
        };
        if self.nodes.ip_in_use(ip) {
            tracing::info!(node = %name, %ip, "vanished node's IP is used by a live node; keeping its ipcache entries");
            return Ok(());
        }
        let listing = self
            .backend
            .list_prefix(&format!("{IPCACHE_PREFIX}/"))
            .await
            .map_err(OperatorError::kvstore("list ipcache"))?;
        let mut deleted = 0usize;
        for kv in listing.kvs.iter().filter(|kv| kv.lease.is_none()) {
            let Ok(entry) = IpCacheEntry::decode(&kv.value) else {
                continue;
            };
            if entry.host_ip != Some(ip) {
                continue;
            }
            let removed = self
                .leadership
                .fenced(
                    "delete ipcache entry",
                    vec![Compare::mod_revision(kv.key.clone(), kv.mod_revision)],
                    vec![TxnOp::Delete {
                        key: kv.key.clone(),
                    }],
                )
                .await?;
            if removed {
                deleted += 1;
                self.metrics
                    .node_gc_deleted(NodeGcDeletion::IpcacheEntry, 1);
            }
        }
        if deleted > 0 {
            tracing::info!(node = %name, %ip, deleted, "deleted unleased ipcache entries of vanished node");
        }
        Ok(())
    }
}

/// The node name a key below `prefix` stands for; `None` (with a warning) for keys that do not
/// follow the `<prefix><node>` layout.
fn name_below(prefix: &str, key: &str) -> Option<NodeName> {
    match key.strip_prefix(prefix) {
        Some(name) if !name.is_empty() && !name.contains('/') => Some(NodeName::new(name)),
        _ => {
            tracing::warn!(%key, "ignoring key that does not follow the <cluster>/<node> layout");
            None
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
