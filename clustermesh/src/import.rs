//! What one remote cluster published, as this agent imported it: a pure state machine with no
//! IO. Raw kvstore events go in; the changes to send to the local actors come out as a
//! [`Batch`].
//!
//! Every value is kept under the kvstore key it came from, so a delete removes exactly what
//! that key had imported. A re-list after a reconnect marks the keys it sees; at its end, keys
//! not seen are removed, and values equal to what was imported are not sent again, so a
//! reconnect sends only the difference. Validation follows upstream's watch-store validators:
//! a value naming another cluster, another cluster id, or an identity outside the cluster's
//! range is rejected with a warning and never disturbs other entries.
//!
//! Every agent of a mesh keeps this for every remote cluster, so the mirrors are kept
//! compact: a re-list marks the entries it sees instead of copying their names, and the
//! ipcache entries (most of the import) take the form of [`ipcache`].

mod ipcache;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use actors::ipcache::{IpEntry, K8sMetadata, PackedEntry};
use datapath::api::IpcacheKey;
use ipnet::IpNet;
use kvstore::keys::{
    ClusterService, IDENTITIES_PREFIX, IpCacheEntry, NODES_PREFIX, Node, SERVICES_PREFIX,
    StoreValue, state_to_cache_prefix,
};
use kvstore::{KeyValue, WatchEvent};
use model::collections::compact_grown;
use model::identity::{ClusterId, ClusterName, NumericIdentity};
use model::labels::{Labels, keys::POLICY_CLUSTER, source as label_source};

use crate::error::RejectError;
use ipcache::{ImportedIp, IpName, SharedIp};
pub(crate) use ipcache::{IpcacheChange, IpcacheClaims};

/// The parent of the ipcache's address spaces; its sync canary is written for this prefix.
const IPCACHE_STATE_PREFIX: &str = "cilium/state/ip/v1";
/// Upstream's only address space.
const IPCACHE_ADDRESS_SPACE: &str = "default";

/// The four resources imported from a remote cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Nodes,
    Identities,
    Ipcache,
    Services,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] =
        [Kind::Nodes, Kind::Identities, Kind::Ipcache, Kind::Services];

    /// The prefix the remote writes the sync canary of this resource for
    /// (`cilium/synced/<cluster>/<this prefix>`), adapted to the kvstoremesh cache.
    pub(crate) fn canary_prefix(self, cached: bool) -> String {
        let state = match self {
            Kind::Nodes => NODES_PREFIX,
            Kind::Identities => IDENTITIES_PREFIX,
            Kind::Ipcache => IPCACHE_STATE_PREFIX,
            Kind::Services => SERVICES_PREFIX,
        };
        adapt(state, cached)
    }

    /// The prefix (with a trailing `/`) whose keys hold the resource of `cluster`. In
    /// kvstoremesh mode the data sits below `cilium/cache/<kind>/v1/<cluster>/`, with the cluster
    /// name in place of the ipcache's address space.
    pub(crate) fn watch_prefix(self, cluster: &ClusterName, cached: bool) -> String {
        match (self, cached) {
            (Kind::Identities, false) => format!("{IDENTITIES_PREFIX}/id/"),
            (Kind::Identities, true) => {
                format!("{}/{cluster}/id/", adapt(IDENTITIES_PREFIX, true))
            }
            (Kind::Ipcache, false) => format!("{IPCACHE_STATE_PREFIX}/{IPCACHE_ADDRESS_SPACE}/"),
            (Kind::Ipcache, true) => format!("{}/{cluster}/", adapt(IPCACHE_STATE_PREFIX, true)),
            (Kind::Nodes | Kind::Services, _) => {
                format!("{}/{cluster}/", self.canary_prefix(cached))
            }
        }
    }
}

fn adapt(prefix: &str, cached: bool) -> String {
    if cached {
        state_to_cache_prefix(prefix)
    } else {
        prefix.to_owned()
    }
}

/// The changes one step of the import causes, in the shape of the local actors' messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub identities_added: Vec<(NumericIdentity, Labels)>,
    pub identities_removed: Vec<NumericIdentity>,
    pub nodes_upserted: Vec<Node>,
    pub nodes_removed: Vec<String>,
    pub services_upserted: Vec<ClusterService>,
    pub services_removed: Vec<(String, String)>,
    /// ipcache claims by `(prefix, key name)`; the key name tells claims of one prefix apart.
    /// The entry is the one the import keeps, shared with the claims.
    pub ip_upserted: Vec<(IpcacheKey, String, SharedIp)>,
    pub ip_removed: Vec<(IpcacheKey, String)>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.identities_added.is_empty()
            && self.identities_removed.is_empty()
            && self.nodes_upserted.is_empty()
            && self.nodes_removed.is_empty()
            && self.services_upserted.is_empty()
            && self.services_removed.is_empty()
            && self.ip_upserted.is_empty()
            && self.ip_removed.is_empty()
    }
}

/// How a [`Mirror`] keeps the key names below its prefix; `Display` writes the name back.
trait KeyName: Ord + Clone + fmt::Display {
    fn new(name: &str) -> Self;
}

impl KeyName for Box<str> {
    fn new(name: &str) -> Self {
        name.into()
    }
}

impl KeyName for IpName {
    fn new(name: &str) -> Self {
        IpName::new(name)
    }
}

/// An imported value and whether the re-list in progress reported its key.
#[derive(Debug)]
struct Slot<V> {
    value: V,
    seen: bool,
}

/// The imported values of one resource, by key name below the watched prefix.
#[derive(Debug)]
struct Mirror<K, V> {
    entries: BTreeMap<K, Slot<V>>,
    /// Whether a re-list is in progress: keys it does not report again are removed at its end.
    listing: bool,
    /// The number of entries when `entries` was last rebuilt (see [`compact_grown`]).
    built: usize,
}

impl<K: KeyName, V: PartialEq> Mirror<K, V> {
    fn new() -> Self {
        Mirror {
            entries: BTreeMap::new(),
            listing: false,
            built: 0,
        }
    }

    fn begin_listing(&mut self) {
        self.listing = true;
        for slot in self.entries.values_mut() {
            slot.seen = false;
        }
    }

    /// Stores `value`; returns whether it differs from what was imported.
    fn upsert(&mut self, name: &str, value: V) -> bool {
        let key = K::new(name);
        if let Some(slot) = self.entries.get_mut(&key) {
            slot.seen = true;
            if slot.value == value {
                return false;
            }
            slot.value = value;
        } else {
            self.entries.insert(key, Slot { value, seen: true });
            compact_grown(&mut self.entries, &mut self.built);
        }
        true
    }

    fn remove(&mut self, name: &str) -> Option<V> {
        self.entries.remove(&K::new(name)).map(|slot| slot.value)
    }

    /// Ends a listing: the values whose keys it did not see are gone.
    fn end_listing(&mut self) -> Vec<(String, V)> {
        if !std::mem::take(&mut self.listing) {
            return Vec::new();
        }
        let stale: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, slot)| !slot.seen)
            .map(|(key, _)| key.clone())
            .collect();
        let removed = stale
            .into_iter()
            .filter_map(|key| self.entries.remove(&key).map(|slot| (key, slot.value)));
        by_name(removed)
    }

    fn drain(&mut self) -> Vec<(String, V)> {
        self.listing = false;
        let entries = std::mem::take(&mut self.entries);
        by_name(entries.into_iter().map(|(key, slot)| (key, slot.value)))
    }
}

/// Removed values by key name in the names' order, whatever order the mirror keeps them in,
/// so that removals are sent in the same order as the names were ever kept.
fn by_name<K: KeyName, V>(removed: impl Iterator<Item = (K, V)>) -> Vec<(String, V)> {
    let mut removed: Vec<(String, V)> = removed
        .map(|(key, value)| (key.to_string(), value))
        .collect();
    removed.sort_by(|a, b| a.0.cmp(&b.0));
    removed
}

/// Counts for the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub nodes: u64,
    pub endpoints: u64,
    pub identities: u64,
    pub shared_services: u64,
}

/// Everything imported from one remote cluster.
#[derive(Debug)]
pub(crate) struct ImportState {
    cluster: ClusterName,
    /// The id of the cluster configuration in force; values are validated against it.
    cluster_id: ClusterId,
    nodes: Mirror<Box<str>, Node>,
    identities: Mirror<Box<str>, (NumericIdentity, Labels)>,
    ipcache: Mirror<IpName, SharedIp>,
    services: Mirror<Box<str>, ClusterService>,
}

impl ImportState {
    pub(crate) fn new(cluster: ClusterName) -> Self {
        ImportState {
            cluster,
            cluster_id: ClusterId::UNSET,
            nodes: Mirror::new(),
            identities: Mirror::new(),
            ipcache: Mirror::new(),
            services: Mirror::new(),
        }
    }

    pub(crate) fn cluster_id(&self) -> ClusterId {
        self.cluster_id
    }

    pub(crate) fn set_cluster_id(&mut self, id: ClusterId) {
        self.cluster_id = id;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.entries.is_empty()
            && self.identities.entries.is_empty()
            && self.ipcache.entries.is_empty()
            && self.services.entries.is_empty()
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            nodes: self.nodes.entries.len() as u64,
            endpoints: self.ipcache.entries.len() as u64,
            identities: self.identities.entries.len() as u64,
            shared_services: self
                .services
                .entries
                .values()
                .filter(|s| s.value.shared)
                .count() as u64,
        }
    }

    /// A (re-)list of `kind` starts: keys it does not report again are removed at its end.
    pub(crate) fn begin_listing(&mut self, kind: Kind) {
        match kind {
            Kind::Nodes => self.nodes.begin_listing(),
            Kind::Identities => self.identities.begin_listing(),
            Kind::Ipcache => self.ipcache.begin_listing(),
            Kind::Services => self.services.begin_listing(),
        }
    }

    /// Applies one event of the watch of `kind` whose keys start with `prefix`.
    pub(crate) fn apply(&mut self, kind: Kind, prefix: &str, event: WatchEvent, batch: &mut Batch) {
        match event {
            WatchEvent::ListDone { .. } => self.end_listing(kind, batch),
            WatchEvent::Create(kv) | WatchEvent::Modify(kv) => {
                let Some(name) = kv.key.strip_prefix(prefix).map(str::to_owned) else {
                    return;
                };
                match self.validate(kind, &name, &kv) {
                    Ok(value) => self.upsert(name, value, batch),
                    Err(err) => {
                        tracing::warn!(cluster = %self.cluster, error = %err, "rejecting value of remote cluster");
                        // The key no longer holds what was imported from it.
                        self.remove(kind, &name, batch);
                    }
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(name) = key.strip_prefix(prefix) {
                    self.remove(kind, name, batch);
                }
            }
        }
    }

    /// Removes everything imported (the cluster's file was removed or it stayed disconnected
    /// past the drain timeout).
    pub(crate) fn drain(&mut self, batch: &mut Batch) {
        let nodes = self.nodes.drain();
        let identities = self.identities.drain();
        let ipcache = self.ipcache.drain();
        let services = self.services.drain();
        push_removals(batch, nodes, identities, ipcache, services);
    }

    fn end_listing(&mut self, kind: Kind, batch: &mut Batch) {
        let (mut nodes, mut identities, mut ipcache, mut services) = Default::default();
        match kind {
            Kind::Nodes => nodes = self.nodes.end_listing(),
            Kind::Identities => identities = self.identities.end_listing(),
            Kind::Ipcache => ipcache = self.ipcache.end_listing(),
            Kind::Services => services = self.services.end_listing(),
        }
        push_removals(batch, nodes, identities, ipcache, services);
    }

    fn upsert(&mut self, name: String, value: Imported, batch: &mut Batch) {
        match value {
            Imported::Node(node) => {
                if self.nodes.upsert(&name, node.clone()) {
                    batch.nodes_upserted.push(node);
                }
            }
            Imported::Identity(id, labels) => {
                if self.identities.upsert(&name, (id, labels.clone())) {
                    batch.identities_added.push((id, labels));
                }
            }
            Imported::Ip(key, entry) => {
                let ip = Arc::new(ImportedIp {
                    key,
                    entry: PackedEntry::pack(entry),
                });
                if self.ipcache.upsert(&name, Arc::clone(&ip)) {
                    batch.ip_upserted.push((key, name, ip));
                }
            }
            Imported::Service(svc) => {
                if self.services.upsert(&name, svc.clone()) {
                    batch.services_upserted.push(svc);
                }
            }
        }
    }

    fn remove(&mut self, kind: Kind, name: &str, batch: &mut Batch) {
        match kind {
            Kind::Nodes => {
                if let Some(node) = self.nodes.remove(name) {
                    batch.nodes_removed.push(node.name);
                }
            }
            Kind::Identities => {
                if let Some((id, _)) = self.identities.remove(name) {
                    batch.identities_removed.push(id);
                }
            }
            Kind::Ipcache => {
                if let Some(ip) = self.ipcache.remove(name) {
                    batch.ip_removed.push((ip.key, name.to_owned()));
                }
            }
            Kind::Services => {
                if let Some(svc) = self.services.remove(name) {
                    batch.services_removed.push((svc.namespace, svc.name));
                }
            }
        }
    }

    fn validate(&self, kind: Kind, name: &str, kv: &KeyValue) -> Result<Imported, RejectError> {
        match kind {
            Kind::Nodes => self.validate_node(kv).map(Imported::Node),
            Kind::Identities => self
                .validate_identity(name, kv)
                .map(|(id, labels)| Imported::Identity(id, labels)),
            Kind::Ipcache => self
                .validate_ip(name, kv)
                .map(|(prefix, entry)| Imported::Ip(prefix, entry)),
            Kind::Services => self.validate_service(kv).map(Imported::Service),
        }
    }

    fn validate_node(&self, kv: &KeyValue) -> Result<Node, RejectError> {
        let node = decode::<Node>(kv)?;
        self.check_cluster(kv, &node.cluster, node.cluster_id)?;
        check_key_name(kv, &node.name)?;
        Ok(node)
    }

    fn validate_service(&self, kv: &KeyValue) -> Result<ClusterService, RejectError> {
        let svc = decode::<ClusterService>(kv)?;
        self.check_cluster(kv, &svc.cluster, svc.cluster_id)?;
        check_key_name(kv, &format!("{}/{}", svc.namespace, svc.name))?;
        Ok(svc)
    }

    /// Upstream's `ClusterNameValidator` and `ClusterIDValidator`.
    fn check_cluster(
        &self,
        kv: &KeyValue,
        cluster: &str,
        cluster_id: u32,
    ) -> Result<(), RejectError> {
        if cluster != self.cluster.as_str() {
            return Err(RejectError::ClusterName {
                key: kv.key.clone(),
                expected: self.cluster.clone(),
                found: cluster.to_owned(),
            });
        }
        if cluster_id != u32::from(self.cluster_id.get()) {
            return Err(RejectError::ClusterId {
                key: kv.key.clone(),
                expected: self.cluster_id,
                found: cluster_id,
            });
        }
        Ok(())
    }

    /// A master key `id/<n>` = label string: the id must be in the cluster's range and the
    /// labels must carry the cluster's name (upstream's `ClusterIDValidator` and
    /// `ClusterNameValidator` of the remote identity cache).
    fn validate_identity(
        &self,
        name: &str,
        kv: &KeyValue,
    ) -> Result<(NumericIdentity, Labels), RejectError> {
        let id: NumericIdentity = name.parse().map_err(|err| RejectError::Decode {
            key: kv.key.clone(),
            message: format!("{err}"),
        })?;
        if !self.cluster_id.contains(id) {
            return Err(RejectError::IdentityOutOfRange {
                key: kv.key.clone(),
                id,
                cluster_id: self.cluster_id,
            });
        }
        let text = std::str::from_utf8(&kv.value).map_err(|_| RejectError::Decode {
            key: kv.key.clone(),
            message: "label string is not UTF-8".to_owned(),
        })?;
        let labels = Labels::from_kvstore_string(text).map_err(|err| RejectError::Decode {
            key: kv.key.clone(),
            message: err.to_string(),
        })?;
        // Only a `k8s:` cluster label counts, as upstream's validator requires.
        let cluster = labels
            .get(POLICY_CLUSTER)
            .filter(|l| l.source == label_source::K8S)
            .map(|l| l.value.as_str());
        if cluster != Some(self.cluster.as_str()) {
            return Err(RejectError::ClusterName {
                key: kv.key.clone(),
                expected: self.cluster.clone(),
                found: cluster.unwrap_or_default().to_owned(),
            });
        }
        Ok((id, labels))
    }

    /// An ipcache entry: its identity must be reserved or in the cluster's range (upstream's
    /// `WithIdentityValidator`), and the key must be the entry's own prefix.
    fn validate_ip(&self, name: &str, kv: &KeyValue) -> Result<(IpcacheKey, IpEntry), RejectError> {
        let entry = decode::<IpCacheEntry>(kv)?;
        check_key_name(kv, &entry.prefix_string())?;
        let id = entry.id;
        let reserved = id.get() < NumericIdentity::MINIMAL_ALLOCATION.get();
        if !reserved && !self.cluster_id.contains(id) {
            return Err(RejectError::IdentityOutOfRange {
                key: kv.key.clone(),
                id,
                cluster_id: self.cluster_id,
            });
        }
        let prefix = entry_prefix(&entry).ok_or_else(|| RejectError::Decode {
            key: kv.key.clone(),
            message: format!("invalid prefix {name:?}"),
        })?;
        // Another node's host identity is a remote node here, as upstream's ipcache watcher
        // translates it.
        let identity = if id == NumericIdentity::HOST {
            NumericIdentity::REMOTE_NODE
        } else {
            id
        };
        let has_k8s = !entry.k8s_namespace.is_empty()
            || !entry.k8s_pod_name.is_empty()
            || !entry.named_ports.is_empty();
        let k8s = has_k8s.then(|| K8sMetadata {
            namespace: entry.k8s_namespace.clone(),
            pod_name: entry.k8s_pod_name.clone(),
            service_account: entry.k8s_service_account.clone(),
            named_ports: entry.named_ports.clone(),
        });
        let claim = IpEntry {
            identity,
            host_ip: entry.host_ip,
            encrypt_key: entry.encrypt_key,
            k8s,
            metadata: entry.metadata,
        };
        // The BPF lookup uses cluster 0: the remote cluster is a property of the entry.
        Ok((IpcacheKey::new(ClusterId::UNSET, prefix), claim))
    }
}

type Removed<V> = Vec<(String, V)>;

fn push_removals(
    batch: &mut Batch,
    nodes: Removed<Node>,
    identities: Removed<(NumericIdentity, Labels)>,
    ipcache: Removed<SharedIp>,
    services: Removed<ClusterService>,
) {
    batch
        .nodes_removed
        .extend(nodes.into_iter().map(|(_, node)| node.name));
    batch
        .identities_removed
        .extend(identities.into_iter().map(|(_, (id, _))| id));
    batch
        .ip_removed
        .extend(ipcache.into_iter().map(|(name, ip)| (ip.key, name)));
    batch.services_removed.extend(
        services
            .into_iter()
            .map(|(_, svc)| (svc.namespace, svc.name)),
    );
}

/// A validated value, ready to import.
enum Imported {
    Node(Node),
    Identity(NumericIdentity, Labels),
    Ip(IpcacheKey, IpEntry),
    Service(ClusterService),
}

fn decode<T: StoreValue>(kv: &KeyValue) -> Result<T, RejectError> {
    T::decode(&kv.value).map_err(|message| RejectError::Decode {
        key: kv.key.clone(),
        message,
    })
}

/// The key must end with the value's own key name (nodes: `<cluster>/<name>`, services:
/// `<cluster>/<ns>/<name>`, ipcache: the prefix), so that a delete of the key removes exactly
/// what it imported.
fn check_key_name(kv: &KeyValue, name: &str) -> Result<(), RejectError> {
    let matches = kv
        .key
        .strip_suffix(name)
        .is_some_and(|head| head.ends_with('/'));
    if matches {
        Ok(())
    } else {
        Err(RejectError::KeyMismatch {
            key: kv.key.clone(),
            name: name.to_owned(),
        })
    }
}

fn entry_prefix(entry: &IpCacheEntry) -> Option<IpNet> {
    let full = match entry.ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let len = match &entry.mask {
        None => full,
        Some(mask) => mask.prefix_len().filter(|len| *len <= full)?,
    };
    IpNet::new(entry.ip, len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c2() -> ClusterName {
        ClusterName::new("c2").unwrap()
    }

    fn state() -> ImportState {
        let mut state = ImportState::new(c2());
        state.set_cluster_id(ClusterId::new(2));
        state
    }

    fn put(key: &str, value: &str) -> WatchEvent {
        WatchEvent::Create(KeyValue {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        })
    }

    const IDS: &str = "cilium/state/identities/v1/id/";

    fn labels(cluster_label: &str) -> String {
        format!("k8s:app=web;{cluster_label};k8s:io.kubernetes.pod.namespace=default;")
    }

    #[test]
    fn prefixes_follow_upstream_layout() {
        let c2 = c2();
        let plain: Vec<String> = Kind::ALL
            .iter()
            .map(|k| k.watch_prefix(&c2, false))
            .collect();
        assert_eq!(
            plain,
            [
                "cilium/state/nodes/v1/c2/",
                "cilium/state/identities/v1/id/",
                "cilium/state/ip/v1/default/",
                "cilium/state/services/v1/c2/",
            ]
        );
        let cached: Vec<String> = Kind::ALL
            .iter()
            .map(|k| k.watch_prefix(&c2, true))
            .collect();
        assert_eq!(
            cached,
            [
                "cilium/cache/nodes/v1/c2/",
                "cilium/cache/identities/v1/c2/id/",
                "cilium/cache/ip/v1/c2/",
                "cilium/cache/services/v1/c2/",
            ]
        );
        let canaries: Vec<String> = Kind::ALL.iter().map(|k| k.canary_prefix(false)).collect();
        assert_eq!(
            canaries,
            [
                "cilium/state/nodes/v1",
                "cilium/state/identities/v1",
                "cilium/state/ip/v1",
                "cilium/state/services/v1",
            ]
        );
        assert_eq!(Kind::Ipcache.canary_prefix(true), "cilium/cache/ip/v1");
    }

    #[test]
    fn identities_need_the_range_and_a_k8s_cluster_label() {
        let mut state = state();
        let mut batch = Batch::default();
        let first = (2 << 16) + 1;
        let cases = [
            (first, labels("k8s:io.cilium.k8s.policy.cluster=c2"), true),
            (
                first + 1,
                labels("k8s:io.cilium.k8s.policy.cluster=c3"),
                false,
            ),
            (
                first + 2,
                labels("container:io.cilium.k8s.policy.cluster=c2"),
                false,
            ),
            (first + 3, "k8s:app=web;".to_owned(), false),
            (
                (3 << 16) + 1,
                labels("k8s:io.cilium.k8s.policy.cluster=c2"),
                false,
            ),
            (300, labels("k8s:io.cilium.k8s.policy.cluster=c2"), false),
        ];
        for (id, value, _) in &cases {
            state.apply(
                Kind::Identities,
                IDS,
                put(&format!("{IDS}{id}"), value),
                &mut batch,
            );
        }
        let added: Vec<u32> = batch
            .identities_added
            .iter()
            .map(|(id, _)| id.get())
            .collect();
        let expected: Vec<u32> = cases.iter().filter(|c| c.2).map(|c| c.0).collect();
        assert_eq!(added, expected);
    }

    #[test]
    fn a_relist_yields_only_the_difference() {
        let mut state = state();
        let id = |n: u32| format!("{IDS}{}", (2 << 16) + n);
        let c2_labels = |app: &str| format!("k8s:app={app};k8s:io.cilium.k8s.policy.cluster=c2;");
        let mut batch = Batch::default();
        state.begin_listing(Kind::Identities);
        for (n, app) in [(1, "a"), (2, "b"), (3, "c")] {
            state.apply(
                Kind::Identities,
                IDS,
                put(&id(n), &c2_labels(app)),
                &mut batch,
            );
        }
        state.apply(
            Kind::Identities,
            IDS,
            WatchEvent::ListDone { revision: 3 },
            &mut batch,
        );
        assert_eq!(batch.identities_added.len(), 3);

        // Reconnect: 1 unchanged, 2 relabelled, 3 gone, 4 new.
        let mut batch = Batch::default();
        state.begin_listing(Kind::Identities);
        for (n, app) in [(1, "a"), (2, "b2"), (4, "d")] {
            state.apply(
                Kind::Identities,
                IDS,
                put(&id(n), &c2_labels(app)),
                &mut batch,
            );
        }
        state.apply(
            Kind::Identities,
            IDS,
            WatchEvent::ListDone { revision: 9 },
            &mut batch,
        );
        let added: Vec<u32> = batch
            .identities_added
            .iter()
            .map(|(id, _)| id.get() - (2 << 16))
            .collect();
        assert_eq!(added, [2, 4]);
        assert_eq!(
            batch.identities_removed,
            [NumericIdentity::new((2 << 16) + 3)]
        );
        assert_eq!(state.counts().identities, 3);

        let mut batch = Batch::default();
        state.drain(&mut batch);
        assert_eq!(batch.identities_removed.len(), 3);
        assert!(state.is_empty());
    }

    const IPS: &str = "cilium/state/ip/v1/default/";

    /// An ipcache put of `ip` (a `/32` mask when `masked`) under the key name `name`.
    fn ip_put(name: &str, ip: &str, masked: bool, pod: &str) -> WatchEvent {
        let mut entry = IpCacheEntry::host(
            ip.parse().unwrap(),
            NumericIdentity::new((2 << 16) + 1),
            None,
        );
        if masked {
            entry.mask = kvstore::keys::IpMask::from_prefix_len(32, 32);
        }
        entry.k8s_pod_name = pod.to_owned();
        let value = String::from_utf8(entry.encode().unwrap()).unwrap();
        put(&format!("{IPS}{name}"), &value)
    }

    /// A (re-)list of the ipcache reporting `puts` (name, address, masked, pod).
    fn list_ipcache(state: &mut ImportState, puts: &[(&str, &str, bool, &str)]) -> Batch {
        let mut batch = Batch::default();
        state.begin_listing(Kind::Ipcache);
        for (name, ip, masked, pod) in puts {
            state.apply(
                Kind::Ipcache,
                IPS,
                ip_put(name, ip, *masked, pod),
                &mut batch,
            );
        }
        let done = WatchEvent::ListDone { revision: 1 };
        state.apply(Kind::Ipcache, IPS, done, &mut batch);
        batch
    }

    fn upserted_names(batch: &Batch) -> Vec<&str> {
        batch
            .ip_upserted
            .iter()
            .map(|(_, n, _)| n.as_str())
            .collect()
    }

    #[test]
    fn ipcache_removals_follow_the_key_names_order() {
        let mut state = state();
        let puts = [
            ("10.2.0.9", "10.2.0.9", false, "a"),
            ("10.2.0.10", "10.2.0.10", false, "a"),
            ("10.2.0.8/32", "10.2.0.8", true, "a"),
            ("x/10.2.0.7", "10.2.0.7", false, "a"),
            ("f00d::1", "f00d::1", false, "a"),
        ];
        let batch = list_ipcache(&mut state, &puts);
        assert_eq!(upserted_names(&batch), puts.map(|p| p.0));
        assert_eq!(state.counts().endpoints, 5);

        // A re-list that reports only `10.2.0.9` (changed) and `f00d::1` (unchanged).
        let batch = list_ipcache(
            &mut state,
            &[
                ("10.2.0.9", "10.2.0.9", false, "b"),
                ("f00d::1", "f00d::1", false, "a"),
            ],
        );
        assert_eq!(upserted_names(&batch), ["10.2.0.9"]);
        let removed: Vec<(String, &str)> = batch
            .ip_removed
            .iter()
            .map(|(key, name)| (key.prefix().to_string(), name.as_str()))
            .collect();
        assert_eq!(
            removed,
            [
                ("10.2.0.10/32".to_owned(), "10.2.0.10"),
                ("10.2.0.8/32".to_owned(), "10.2.0.8/32"),
                ("10.2.0.7/32".to_owned(), "x/10.2.0.7"),
            ]
        );

        let mut batch = Batch::default();
        state.drain(&mut batch);
        let drained: Vec<&str> = batch.ip_removed.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(drained, ["10.2.0.9", "f00d::1"]);
        assert!(state.is_empty());
    }
}
