//! The watchers' logic as pure state machines: kvstore events in, steps for the policy
//! repository or the service manager out. No IO; the actors run the steps and report back.
//!
//! Both machines follow one pattern. Every key seen since the current listing began is
//! remembered; when the listing completes ([`PolicyWatchState::synced`],
//! [`ServiceWatchState::synced`]) everything applied earlier for keys the listing no longer
//! has is removed. Nothing else ever removes state, so an unreachable store (no listing
//! completes) removes nothing. A value that does not decode is skipped and changes nothing:
//! the last good version of that key stays applied, as upstream keeps the last good policy.
//! A value identical to the one applied (same SHA-256) is not applied again, so a re-listing
//! causes no churn.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddrV4};
use std::time::Duration;

use datapath::api::{Frontend, Protocol};
use kvstore::keys::{ClusterService, SERVICES_PREFIX, StoreValue, join_key};
use model::labels::Label;
use model::policy::{POLICY_LABEL_DERIVED_FROM, PolicyDocument, PolicyKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{PolicyRef, decode_policy};
use super::messages::{
    AppliedKey, ClusterStateDump, ClusterStateError, RemoteServiceCount, SkippedKey,
};
use crate::policy::policy_name_labels;
use crate::service::{ApiBackend, ServiceId};

fn digest(value: &[u8]) -> String {
    format!("{:x}", Sha256::digest(value))
}

/// The labels that select exactly the rules one policy of one kind put into the repository:
/// the kind (`io.cilium.k8s.policy.derived-from`), the name and, if namespaced, the
/// namespace. The kind keeps a cluster-wide policy `x` from matching a namespaced `x`.
pub fn policy_rule_labels(policy: &PolicyRef, kind: PolicyKind) -> Vec<Label> {
    let mut labels = vec![Label::k8s(POLICY_LABEL_DERIVED_FROM, kind.as_str())];
    labels.extend(policy_name_labels(
        &policy.name,
        policy.namespace.as_deref(),
    ));
    labels
}

// ---------------------------------------------------------------------------------------
// Policies

/// What the policy watcher persists: every policy key whose rules may be in the repository.
///
/// The repository persists its rules across agent restarts, so rules of a policy deleted
/// from the kvstore while the agent was down come back with it. This record is how the
/// watcher finds them: after its first listing it removes every recorded key the listing
/// does not have. A key is recorded before its rules are imported and forgotten only after
/// they are deleted, so the record is never missing a key that has rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedPolicies {
    /// By key name below the policies prefix (`<namespace>/<name>`).
    pub policies: BTreeMap<String, ImportedPolicy>,
}

/// One recorded policy key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedPolicy {
    /// The kinds (`kind` strings) whose rules under this key's name may be in the repository:
    /// usually one, two while a key changes kind.
    pub kinds: BTreeSet<String>,
    /// SHA-256 of the value last imported successfully.
    pub digest: Option<String>,
}

/// Import a document, then delete the rules its key had under other kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyApply {
    /// Key name below the prefix.
    pub key: String,
    pub policy: PolicyRef,
    pub document: PolicyDocument,
    pub digest: String,
    /// Kinds this key's rules had before that the document no longer has.
    pub stale: Vec<PolicyKind>,
    /// Whether the record changed (a new kind was noted) and must be persisted before the
    /// import.
    pub record_first: bool,
}

/// Delete every rule a key put into the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRemove {
    pub key: String,
    pub policy: PolicyRef,
    pub kinds: Vec<PolicyKind>,
}

/// The policy watcher's state.
#[derive(Debug, Clone, Default)]
pub struct PolicyWatchState {
    imported: ImportedPolicies,
    /// Keys seen since the current listing began; `None` between listings.
    listing: Option<BTreeSet<String>>,
    synced: bool,
    /// Keys whose current value was refused, with the reason.
    skipped: BTreeMap<String, String>,
}

impl PolicyWatchState {
    /// The state over the record persisted by an earlier run (empty on a first start).
    pub fn new(imported: ImportedPolicies) -> Self {
        PolicyWatchState {
            imported,
            ..PolicyWatchState::default()
        }
    }

    /// The record to persist.
    pub fn imported(&self) -> &ImportedPolicies {
        &self.imported
    }

    /// A new watch is about to list the prefix.
    pub fn listing_started(&mut self) {
        self.listing = Some(BTreeSet::new());
    }

    /// A key was created or changed. `key` is the full key. Returns what to import, `None`
    /// when the value is the one already imported, or why the value is skipped (then nothing
    /// changes).
    pub fn upsert(
        &mut self,
        key: &str,
        value: &[u8],
    ) -> Result<Option<PolicyApply>, ClusterStateError> {
        let policy = PolicyRef::parse_key(key)?;
        let name = policy.key_name();
        if let Some(listing) = &mut self.listing {
            listing.insert(name.clone());
        }
        let document = match decode_policy(key, value) {
            Ok(document) => document,
            Err(err) => {
                self.skipped.insert(name, err.to_string());
                return Err(err);
            }
        };
        self.skipped.remove(&name);
        let kind = document.kind();
        let digest = digest(value);
        let entry = self.imported.policies.entry(name.clone()).or_default();
        let only_this_kind = entry.kinds.len() == 1 && entry.kinds.contains(kind.as_str());
        if only_this_kind && entry.digest.as_deref() == Some(digest.as_str()) {
            return Ok(None);
        }
        let stale = entry
            .kinds
            .iter()
            .filter(|k| k.as_str() != kind.as_str())
            .filter_map(|k| PolicyKind::from_kind(k))
            .collect();
        let record_first = entry.kinds.insert(kind.as_str().to_owned());
        Ok(Some(PolicyApply {
            key: name,
            policy,
            document,
            digest,
            stale,
            record_first,
        }))
    }

    /// The import of `apply` succeeded and the rules of `stale_removed` are gone.
    pub fn applied(&mut self, apply: &PolicyApply, stale_removed: &[PolicyKind]) {
        if let Some(entry) = self.imported.policies.get_mut(&apply.key) {
            entry.digest = Some(apply.digest.clone());
            for kind in stale_removed {
                entry.kinds.remove(kind.as_str());
            }
        }
    }

    /// The repository refused the document of `key` (it changed nothing): reported like a
    /// value that does not decode.
    pub fn refused(&mut self, key: &str, error: String) {
        self.skipped.insert(key.to_owned(), error);
    }

    /// A key was deleted. Returns what to delete, if the key had rules.
    pub fn delete(&mut self, key: &str) -> Result<Option<PolicyRemove>, ClusterStateError> {
        let policy = PolicyRef::parse_key(key)?;
        let name = policy.key_name();
        self.skipped.remove(&name);
        if let Some(listing) = &mut self.listing {
            listing.remove(&name);
        }
        Ok(self.remove_of(name, policy))
    }

    fn remove_of(&self, key: String, policy: PolicyRef) -> Option<PolicyRemove> {
        let entry = self.imported.policies.get(&key)?;
        Some(PolicyRemove {
            key,
            policy,
            kinds: entry
                .kinds
                .iter()
                .filter_map(|k| PolicyKind::from_kind(k))
                .collect(),
        })
    }

    /// The rules of `kinds` under `key` are gone; the key is forgotten once none are left.
    pub fn removed(&mut self, key: &str, kinds: &[PolicyKind]) {
        if let Some(entry) = self.imported.policies.get_mut(key) {
            for kind in kinds {
                entry.kinds.remove(kind.as_str());
            }
            // An unknown kind string (a record from a newer release) cannot be deleted by
            // kind; it must not keep the key alive forever either.
            entry.kinds.retain(|k| PolicyKind::from_kind(k).is_some());
            if entry.kinds.is_empty() {
                self.imported.policies.remove(key);
            }
        }
    }

    /// The listing completed: everything recorded for keys it did not have goes.
    pub fn synced(&mut self) -> Vec<PolicyRemove> {
        self.synced = true;
        let Some(listed) = self.listing.take() else {
            return Vec::new();
        };
        self.skipped.retain(|key, _| listed.contains(key));
        let gone: Vec<String> = self
            .imported
            .policies
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|key| {
                let policy =
                    PolicyRef::parse_key(&format!("{}/{key}", kvstore::keys::POLICIES_PREFIX))
                        .ok()?;
                self.remove_of(key, policy)
            })
            .collect()
    }

    pub fn dump(&self) -> ClusterStateDump {
        ClusterStateDump {
            synced: self.synced,
            applied: self
                .imported
                .policies
                .iter()
                .map(|(key, entry)| AppliedKey {
                    key: key.clone(),
                    kinds: entry.kinds.iter().cloned().collect(),
                    services: Vec::new(),
                })
                .collect(),
            skipped: skipped_dump(&self.skipped),
            remote: Vec::new(),
        }
    }
}

fn skipped_dump(skipped: &BTreeMap<String, String>) -> Vec<SkippedKey> {
    skipped
        .iter()
        .map(|(key, error)| SkippedKey {
            key: key.clone(),
            error: error.clone(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Services

/// What the service watcher asks of the service manager for one key: delete the services of
/// frontends the key no longer has, then upsert every frontend it has (ids are allocated by
/// the manager; an existing frontend keeps its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// Key name below the cluster's services prefix (`<namespace>/<name>`).
    pub key: String,
    /// SHA-256 of the value; `None` when the key is being removed.
    pub digest: Option<String>,
    /// With the service id if known; `None` for a service recorded by an earlier run,
    /// whose id the manager knows (it adopted the service from the datapath).
    pub delete: Vec<(Frontend, Option<ServiceId>)>,
    pub upsert: Vec<(Frontend, Vec<ApiBackend>)>,
    /// Parts of the value that were not turned into services, and why.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyServices {
    digest: Option<String>,
    /// `None`: recorded by an earlier run, id not learnt yet.
    services: BTreeMap<Frontend, Option<ServiceId>>,
}

/// What the service watcher persists: the frontends each key claimed.
///
/// The service manager adopts the datapath's services at restart, so a service whose key
/// was deleted while the agent was down would live on. After its first listing the watcher
/// removes the recorded frontends of keys the listing lacks. A frontend is recorded before
/// its service is created and forgotten after it is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// By key name below the cluster's services prefix (`<namespace>/<name>`).
    pub services: BTreeMap<String, Vec<Frontend>>,
}

/// The label of a local cluster service record that carries upstream's
/// `service.cilium.io/affinity` annotation (ext: without Kubernetes there are no annotations,
/// so the `cilium` CLI writes it into the record's `labels`).
pub const AFFINITY_LABEL: &str = "service.cilium.io/affinity";

/// Which backends a global service prefers (upstream's `service.cilium.io/affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAffinity {
    /// Local and remote backends alike.
    #[default]
    None,
    /// Only local backends while there is at least one, else the remote ones.
    Local,
    /// Only remote backends while there is at least one, else the local ones.
    Remote,
}

impl ServiceAffinity {
    /// The affinity a service record asks for: its [`AFFINITY_LABEL`] (`local`, `remote` or
    /// `none`, case-insensitive as upstream), `none` when absent. An unknown value is `none`
    /// and returned as an error message too.
    pub fn of(service: &ClusterService) -> (Self, Option<String>) {
        let Some(value) = service.labels.get(AFFINITY_LABEL) else {
            return (ServiceAffinity::None, None);
        };
        match value.to_ascii_lowercase().as_str() {
            "local" => (ServiceAffinity::Local, None),
            "remote" => (ServiceAffinity::Remote, None),
            "none" | "" => (ServiceAffinity::None, None),
            _ => (
                ServiceAffinity::None,
                Some(format!(
                    "{AFFINITY_LABEL} {value:?} is not local, remote or none; using none"
                )),
            ),
        }
    }

    /// The backends a frontend gets from its local and its remote backends.
    pub fn select(self, local: Vec<ApiBackend>, remote: Vec<ApiBackend>) -> Vec<ApiBackend> {
        let (preferred, fallback) = match self {
            ServiceAffinity::Local => (local, remote),
            ServiceAffinity::Remote => (remote, local),
            ServiceAffinity::None => {
                let mut all = local;
                for backend in remote {
                    if !all.contains(&backend) {
                        all.push(backend);
                    }
                }
                return all;
            }
        };
        if preferred.is_empty() {
            fallback
        } else {
            preferred
        }
    }
}

/// The service watcher's state: which services each cluster service key produced.
///
/// Global services (upstream's `service.cilium.io/global`, `includeExternal: true` in the
/// record): a local record marked global gets, on every frontend, the backends of the same
/// port name and protocol of every remote cluster's record of the same namespace and name
/// that is `shared`, as its [`ServiceAffinity`] selects. Remote records arrive through
/// [`ServiceWatchState::remote_services`]; a remote record that is not shared counts as
/// removed (as upstream's remote service observer treats it). Frontends are always the local
/// record's.
#[derive(Debug, Clone)]
pub struct ServiceWatchState {
    /// `cilium/state/services/v1/<cluster>/`.
    prefix: String,
    cluster: String,
    keys: BTreeMap<String, KeyServices>,
    /// The last good local record of each key.
    local: BTreeMap<String, ClusterService>,
    /// Shared records of remote clusters by key (`<namespace>/<name>`), then cluster name.
    remote: BTreeMap<String, BTreeMap<String, ClusterService>>,
    /// Which key serves each frontend: two keys never share a service.
    owners: BTreeMap<Frontend, String>,
    listing: Option<BTreeSet<String>>,
    synced: bool,
    skipped: BTreeMap<String, String>,
}

impl ServiceWatchState {
    /// The state of a watcher of `cluster`'s services over the record of an earlier run
    /// (empty on a first start).
    pub fn new(cluster: &str, record: ServiceRecord) -> Self {
        let mut keys: BTreeMap<String, KeyServices> = BTreeMap::new();
        let mut owners = BTreeMap::new();
        for (key, frontends) in record.services {
            for frontend in frontends {
                if owners.insert(frontend, key.clone()).is_none() {
                    keys.entry(key.clone())
                        .or_default()
                        .services
                        .insert(frontend, None);
                }
            }
        }
        ServiceWatchState {
            prefix: format!("{}/", services_prefix(cluster)),
            cluster: cluster.to_owned(),
            keys,
            local: BTreeMap::new(),
            remote: BTreeMap::new(),
            owners,
            listing: None,
            synced: false,
            skipped: BTreeMap::new(),
        }
    }

    /// The record to persist: every frontend a key claimed, service created or not yet.
    pub fn record(&self) -> ServiceRecord {
        let mut record = ServiceRecord::default();
        for (frontend, key) in &self.owners {
            record
                .services
                .entry(key.clone())
                .or_default()
                .push(*frontend);
        }
        record
    }

    /// The prefix to watch, with its trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn listing_started(&mut self) {
        self.listing = Some(BTreeSet::new());
    }

    fn key_name(&self, key: &str) -> Result<String, ClusterStateError> {
        key.strip_prefix(&self.prefix)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ClusterStateError::MalformedKey {
                key: key.to_owned(),
                reason: format!("not below {}", self.prefix),
            })
    }

    /// A key was created or changed. Returns the plan, `None` when the value is the one
    /// applied, or why it is skipped (then nothing changes).
    pub fn upsert(
        &mut self,
        key: &str,
        value: &[u8],
    ) -> Result<Option<ServicePlan>, ClusterStateError> {
        let name = self.key_name(key)?;
        if let Some(listing) = &mut self.listing {
            listing.insert(name.clone());
        }
        let decoded = ClusterService::decode(value)
            .map_err(|message| ClusterStateError::InvalidService {
                key: key.to_owned(),
                message,
            })
            .and_then(|service| {
                let expected = format!("{}/{name}", self.cluster);
                if service.key_name() == expected {
                    Ok(service)
                } else {
                    Err(ClusterStateError::ServiceKeyMismatch {
                        key: key.to_owned(),
                        found: service.key_name(),
                    })
                }
            });
        let service = match decoded {
            Ok(service) => service,
            Err(err) => {
                self.skipped.insert(name, err.to_string());
                return Err(err);
            }
        };
        self.skipped.remove(&name);
        self.local.insert(name.clone(), service);
        Ok(self.plan(name))
    }

    /// The plan bringing the services of `name` to what its local record and the remote
    /// clusters' records call for; `None` when that is what was applied last.
    fn plan(&mut self, name: String) -> Option<ServicePlan> {
        let service = self.local.get(&name)?;
        let (desired, mut ignored) = self.desired(&name, service);
        // The digest covers the outcome, not the value: a remote change that leaves the
        // backends as they are, or a re-listing, applies nothing.
        let digest = digest(format!("{desired:?}").as_bytes());
        let current = self.keys.entry(name.clone()).or_default();
        if current.digest.as_deref() == Some(digest.as_str()) {
            return None;
        }
        let mut upsert = Vec::new();
        for (frontend, backends) in desired {
            match self.owners.get(&frontend) {
                Some(owner) if *owner != name => {
                    ignored.push(format!("frontend {frontend} is already served by {owner}"));
                }
                _ => {
                    self.owners.insert(frontend, name.clone());
                    upsert.push((frontend, backends));
                }
            }
        }
        let delete = current
            .services
            .iter()
            .filter(|(frontend, _)| !upsert.iter().any(|(f, _)| f == *frontend))
            .map(|(frontend, id)| (*frontend, *id))
            .collect();
        Some(ServicePlan {
            key: name,
            digest: Some(digest),
            delete,
            upsert,
            ignored,
        })
    }

    /// Every frontend of the local record `service` of `name` with its backends: its own,
    /// and for a global service the shared remote ones as its affinity selects.
    fn desired(
        &self,
        name: &str,
        service: &ClusterService,
    ) -> (BTreeMap<Frontend, Vec<ApiBackend>>, Vec<String>) {
        let mut ignored = Vec::new();
        let ports = frontend_ports(service, &mut ignored);
        let remotes = self.remote.get(name).filter(|_| service.include_external);
        let affinity = match remotes {
            Some(_) => {
                let (affinity, problem) = ServiceAffinity::of(service);
                ignored.extend(problem);
                affinity
            }
            None => ServiceAffinity::None,
        };
        let mut desired = BTreeMap::new();
        for (frontend, port_name) in ports {
            let local = backends_of(service, &port_name, frontend.protocol, &mut ignored);
            let mut remote = Vec::new();
            for (cluster, remote_service) in remotes.into_iter().flatten() {
                let mut problems = Vec::new();
                for backend in
                    backends_of(remote_service, &port_name, frontend.protocol, &mut problems)
                {
                    if !remote.contains(&backend) {
                        remote.push(backend);
                    }
                }
                ignored.extend(
                    problems
                        .into_iter()
                        .map(|problem| format!("cluster {cluster}: {problem}")),
                );
            }
            desired.insert(frontend, affinity.select(local, remote));
        }
        (desired, ignored)
    }

    /// Cluster services of the remote cluster `cluster` changed: `upserted` records (a
    /// record that is not shared counts as removed) and `removed` ones by namespace and
    /// name. Returns the plans of the local global services whose backends change. Records
    /// naming another cluster than `cluster`, and anything claimed for the local cluster,
    /// are ignored with a warning.
    pub fn remote_services(
        &mut self,
        cluster: &str,
        upserted: Vec<ClusterService>,
        removed: Vec<(String, String)>,
    ) -> Vec<ServicePlan> {
        if cluster == self.cluster {
            tracing::warn!(%cluster, "ignoring remote services claimed for the local cluster");
            return Vec::new();
        }
        let mut touched = BTreeSet::new();
        for (namespace, name) in removed {
            let key = format!("{namespace}/{name}");
            if self.forget_remote(&key, cluster) {
                touched.insert(key);
            }
        }
        for service in upserted {
            if service.cluster != cluster {
                tracing::warn!(
                    %cluster,
                    claimed = %service.cluster,
                    service = %format!("{}/{}", service.namespace, service.name),
                    "ignoring a remote service record claiming another cluster"
                );
                continue;
            }
            let key = format!("{}/{}", service.namespace, service.name);
            if !service.shared {
                if self.forget_remote(&key, cluster) {
                    touched.insert(key);
                }
                continue;
            }
            let by_cluster = self.remote.entry(key.clone()).or_default();
            if by_cluster.get(cluster) != Some(&service) {
                by_cluster.insert(cluster.to_owned(), service);
                touched.insert(key);
            }
        }
        touched
            .into_iter()
            .filter_map(|key| self.plan(key))
            .collect()
    }

    /// Drops the record of `key` of remote `cluster`; returns whether there was one.
    fn forget_remote(&mut self, key: &str, cluster: &str) -> bool {
        let Some(by_cluster) = self.remote.get_mut(key) else {
            return false;
        };
        let had = by_cluster.remove(cluster).is_some();
        if by_cluster.is_empty() {
            self.remote.remove(key);
        }
        had
    }

    /// The remote clusters' shared records this watcher holds, per cluster.
    pub fn remote_counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for cluster in self.remote.values().flat_map(BTreeMap::keys) {
            *counts.entry(cluster.clone()).or_default() += 1;
        }
        counts
    }

    /// A key was deleted. Returns the plan removing its services, if it had any.
    pub fn delete(&mut self, key: &str) -> Result<Option<ServicePlan>, ClusterStateError> {
        let name = self.key_name(key)?;
        self.skipped.remove(&name);
        self.local.remove(&name);
        if let Some(listing) = &mut self.listing {
            listing.remove(&name);
        }
        Ok(self.removal_of(name))
    }

    fn removal_of(&self, key: String) -> Option<ServicePlan> {
        let current = self.keys.get(&key)?;
        Some(ServicePlan {
            delete: current.services.iter().map(|(f, id)| (*f, *id)).collect(),
            key,
            digest: None,
            upsert: Vec::new(),
            ignored: Vec::new(),
        })
    }

    /// The manager gave `frontend` of `key` the service `id`.
    pub fn upserted(&mut self, key: &str, frontend: Frontend, id: ServiceId) {
        self.keys
            .entry(key.to_owned())
            .or_default()
            .services
            .insert(frontend, Some(id));
    }

    /// The manager refused `frontend` of `key`: a frontend the key had no service for is
    /// released for other keys.
    pub fn upsert_failed(&mut self, key: &str, frontend: Frontend) {
        let has_service = self
            .keys
            .get(key)
            .is_some_and(|k| k.services.contains_key(&frontend));
        if !has_service && self.owners.get(&frontend).is_some_and(|o| o == key) {
            self.owners.remove(&frontend);
        }
    }

    /// The service of `frontend` of `key` was deleted (or was already gone).
    pub fn deleted(&mut self, key: &str, frontend: Frontend) {
        if let Some(current) = self.keys.get_mut(key) {
            current.services.remove(&frontend);
        }
        if self.owners.get(&frontend).is_some_and(|o| o == key) {
            self.owners.remove(&frontend);
        }
    }

    /// Every step of `plan` was carried out (`complete`) or some failed. A complete plan
    /// records the value's digest, so it is not applied again; a key being removed is
    /// forgotten once it has no services left.
    pub fn finished(&mut self, plan: &ServicePlan, complete: bool) {
        let Some(current) = self.keys.get_mut(&plan.key) else {
            return;
        };
        current.digest = if complete { plan.digest.clone() } else { None };
        if plan.digest.is_none() && current.services.is_empty() {
            self.keys.remove(&plan.key);
        }
    }

    /// The listing completed: the services of keys it did not have go.
    pub fn synced(&mut self) -> Vec<ServicePlan> {
        self.synced = true;
        let Some(listed) = self.listing.take() else {
            return Vec::new();
        };
        self.skipped.retain(|key, _| listed.contains(key));
        let gone: Vec<String> = self
            .keys
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        for key in &gone {
            self.local.remove(key);
        }
        gone.into_iter()
            .filter_map(|key| self.removal_of(key))
            .collect()
    }

    pub fn dump(&self) -> ClusterStateDump {
        ClusterStateDump {
            synced: self.synced,
            applied: self
                .keys
                .iter()
                .map(|(key, current)| AppliedKey {
                    key: key.clone(),
                    kinds: Vec::new(),
                    services: current.services.iter().map(|(f, id)| (*f, *id)).collect(),
                })
                .collect(),
            skipped: skipped_dump(&self.skipped),
            remote: self
                .remote_counts()
                .into_iter()
                .map(|(cluster, services)| RemoteServiceCount { cluster, services })
                .collect(),
        }
    }
}

/// `cilium/state/services/v1/<cluster>`.
pub fn services_prefix(cluster: &str) -> String {
    join_key(&[SERVICES_PREFIX, cluster])
}

/// The services a cluster service describes: one per frontend IP and port (TCP or UDP),
/// with the backends that have a port of the same name and protocol, in backend IP order.
/// Also returns what was left out and why (IPv6 addresses: the datapath is IPv4 only; other
/// protocols; ports without an address).
pub fn frontends_of(
    service: &ClusterService,
) -> (BTreeMap<Frontend, Vec<ApiBackend>>, Vec<String>) {
    let mut ignored = Vec::new();
    let services = frontend_ports(service, &mut ignored)
        .into_iter()
        .map(|(frontend, port_name)| {
            let backends = backends_of(service, &port_name, frontend.protocol, &mut ignored);
            (frontend, backends)
        })
        .collect();
    (services, ignored)
}

/// The frontends of a cluster service with the name of their port, noting in `ignored` what
/// is left out.
fn frontend_ports(service: &ClusterService, ignored: &mut Vec<String>) -> Vec<(Frontend, String)> {
    let mut frontends: Vec<(Frontend, String)> = Vec::new();
    for (ip, ports) in &service.frontends {
        let Ok(IpAddr::V4(ip)) = ip.parse::<IpAddr>() else {
            ignored.push(format!("frontend {ip}: only IPv4 frontends are supported"));
            continue;
        };
        for (port_name, l4) in ports {
            let Some(l4) = l4 else {
                ignored.push(format!("frontend {ip} port {port_name:?} has no port"));
                continue;
            };
            let Some(protocol) = protocol_of(&l4.protocol) else {
                ignored.push(format!(
                    "frontend {ip} port {port_name:?}: protocol {:?} is not TCP or UDP",
                    l4.protocol
                ));
                continue;
            };
            if l4.port == 0 {
                ignored.push(format!("frontend {ip} port {port_name:?} has port 0"));
                continue;
            }
            let frontend = Frontend::new(SocketAddrV4::new(ip, l4.port), protocol);
            if frontends.iter().any(|(f, _)| *f == frontend) {
                ignored.push(format!(
                    "frontend {frontend} is listed twice (port {port_name:?})"
                ));
                continue;
            }
            frontends.push((frontend, port_name.clone()));
        }
    }
    frontends
}

/// The backends of a cluster service that have a port named `port_name` with `protocol`, in
/// backend IP order, noting in `ignored` what is left out.
fn backends_of(
    service: &ClusterService,
    port_name: &str,
    protocol: Protocol,
    ignored: &mut Vec<String>,
) -> Vec<ApiBackend> {
    let mut backends: Vec<ApiBackend> = Vec::new();
    for (backend_ip, backend_ports) in &service.backends {
        let Some(Some(backend)) = backend_ports.get(port_name) else {
            continue;
        };
        if protocol_of(&backend.protocol) != Some(protocol) || backend.port == 0 {
            continue;
        }
        let Ok(IpAddr::V4(backend_ip)) = backend_ip.parse::<IpAddr>() else {
            ignored.push(format!(
                "backend {backend_ip}: only IPv4 backends are supported"
            ));
            continue;
        };
        let backend = ApiBackend::new(SocketAddrV4::new(backend_ip, backend.port));
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    backends
}

fn protocol_of(protocol: &str) -> Option<Protocol> {
    if protocol.eq_ignore_ascii_case("TCP") {
        Some(Protocol::TCP)
    } else if protocol.eq_ignore_ascii_case("UDP") {
        Some(Protocol::UDP)
    } else {
        None
    }
}

/// Delays between attempts to (re-)open a watch: doubling from 200 ms up to 30 s, back to
/// the start once a listing completes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(30);

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        (Self::BASE * factor).min(Self::MAX)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use kvstore::keys::{L4Addr, PortConfiguration};

    use super::*;

    const KEY: &str = "cilium/config/policies/v1/default/web";

    fn cnp(name: &str, port: u16) -> String {
        format!(
            r#"{{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
               "metadata":{{"name":"{name}","namespace":"default"}},
               "spec":{{"endpointSelector":{{"matchLabels":{{"app":"web"}}}},
                        "ingress":[{{"toPorts":[{{"ports":[{{"port":"{port}","protocol":"TCP"}}]}}]}}]}}}}"#
        )
    }

    fn knp(name: &str) -> String {
        format!(
            r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
               "metadata":{{"name":"{name}","namespace":"default"}},
               "spec":{{"podSelector":{{}},"policyTypes":["Ingress"]}}}}"#
        )
    }

    fn apply(state: &mut PolicyWatchState, key: &str, value: &str) -> PolicyApply {
        let apply = state.upsert(key, value.as_bytes()).unwrap().unwrap();
        state.applied(&apply, &apply.stale);
        apply
    }

    #[test]
    fn a_new_policy_is_recorded_before_import_and_an_unchanged_one_is_not_reimported() {
        let mut state = PolicyWatchState::default();
        let first = state
            .upsert(KEY, cnp("web", 80).as_bytes())
            .unwrap()
            .unwrap();
        assert!(first.record_first);
        assert!(first.stale.is_empty());
        assert_eq!(first.key, "default/web");
        // Recorded (kind noted, no digest yet) before the import happened.
        let entry = &state.imported().policies["default/web"];
        assert!(entry.kinds.contains("CiliumNetworkPolicy"));
        assert_eq!(entry.digest, None);

        // A refused import is reported and leaves the record without a digest, so the same
        // value is tried again.
        state.refused(&first.key, "no".into());
        assert_eq!(state.dump().skipped[0].error, "no");
        let again = state
            .upsert(KEY, cnp("web", 80).as_bytes())
            .unwrap()
            .unwrap();
        assert!(!again.record_first);
        assert!(state.dump().skipped.is_empty());

        state.applied(&first, &[]);
        assert_eq!(state.upsert(KEY, cnp("web", 80).as_bytes()).unwrap(), None);
        let changed = state
            .upsert(KEY, cnp("web", 81).as_bytes())
            .unwrap()
            .unwrap();
        assert!(!changed.record_first, "the kind was recorded already");
    }

    #[test]
    fn a_kind_change_deletes_the_old_kinds_rules_after_the_import() {
        let mut state = PolicyWatchState::default();
        apply(&mut state, KEY, &cnp("web", 80));
        let to_np = state.upsert(KEY, knp("web").as_bytes()).unwrap().unwrap();
        assert_eq!(to_np.stale, [PolicyKind::CiliumNetworkPolicy]);
        assert!(to_np.record_first);
        assert_eq!(
            state.imported().policies["default/web"].kinds.len(),
            2,
            "both kinds may have rules until the stale one is deleted"
        );
        state.applied(&to_np, &to_np.stale);
        let entry = &state.imported().policies["default/web"];
        assert_eq!(entry.kinds.iter().collect::<Vec<_>>(), ["NetworkPolicy"]);
    }

    #[test]
    fn an_invalid_value_is_skipped_and_leaves_the_last_good_version() {
        let mut state = PolicyWatchState::default();
        apply(&mut state, KEY, &cnp("web", 80));
        let err = state.upsert(KEY, b"{\"kind\": 5}").unwrap_err();
        assert!(err.to_string().contains(KEY), "{err}");
        let entry = &state.imported().policies["default/web"];
        assert!(entry.digest.is_some(), "the good version stays recorded");
        let dump = state.dump();
        assert_eq!(dump.skipped.len(), 1);
        assert_eq!(dump.skipped[0].key, "default/web");
        // A good value replaces the skipped one.
        apply(&mut state, KEY, &cnp("web", 81));
        assert!(state.dump().skipped.is_empty());
    }

    #[test]
    fn deletes_remove_every_recorded_kind_and_then_forget_the_key() {
        let mut state = PolicyWatchState::default();
        apply(&mut state, KEY, &cnp("web", 80));
        let remove = state.delete(KEY).unwrap().unwrap();
        assert_eq!(remove.kinds, [PolicyKind::CiliumNetworkPolicy]);
        assert_eq!(
            policy_rule_labels(&remove.policy, PolicyKind::CiliumNetworkPolicy),
            [
                Label::k8s(POLICY_LABEL_DERIVED_FROM, "CiliumNetworkPolicy"),
                Label::k8s(model::policy::POLICY_LABEL_NAME, "web"),
                Label::k8s(model::policy::POLICY_LABEL_NAMESPACE, "default"),
            ]
        );
        state.removed(&remove.key, &remove.kinds);
        assert!(state.imported().policies.is_empty());
        // Deleting a key that never had rules asks for nothing.
        assert_eq!(state.delete(KEY).unwrap(), None);
    }

    #[test]
    fn a_listing_removes_recorded_keys_it_does_not_have_and_only_then() {
        let other = "cilium/config/policies/v1/default/other";
        let mut imported = ImportedPolicies::default();
        for name in ["default/web", "default/other", "default/broken"] {
            imported.policies.insert(
                name.to_owned(),
                ImportedPolicy {
                    kinds: ["CiliumNetworkPolicy".to_owned()].into(),
                    digest: None,
                },
            );
        }
        // Restored from an earlier run; nothing is removed before a listing completes.
        let mut state = PolicyWatchState::new(imported);
        assert!(state.synced().is_empty(), "no listing, nothing removed");

        state.listing_started();
        apply(&mut state, KEY, &cnp("web", 80));
        // A broken value still counts as present: its last good rules stay.
        assert!(
            state
                .upsert("cilium/config/policies/v1/default/broken", b"nope")
                .is_err()
        );
        let removes = state.synced();
        assert_eq!(
            removes.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["default/other"]
        );
        assert_eq!(removes[0].policy, PolicyRef::parse_key(other).unwrap());
        assert!(state.dump().synced);
    }

    fn cluster_service(
        frontends: &[(&str, &str, &str, u16)],
        backends: &[(&str, &str, &str, u16)],
    ) -> ClusterService {
        let ports = |list: &[(&str, &str, &str, u16)]| {
            let mut map: BTreeMap<String, PortConfiguration> = BTreeMap::new();
            for (ip, name, protocol, port) in list {
                map.entry((*ip).to_owned()).or_default().insert(
                    (*name).to_owned(),
                    Some(L4Addr {
                        protocol: (*protocol).to_owned(),
                        port: *port,
                    }),
                );
            }
            map
        };
        ClusterService {
            cluster: "c1".into(),
            namespace: "default".into(),
            name: "web".into(),
            frontends: ports(frontends),
            backends: ports(backends),
            ..ClusterService::default()
        }
    }

    fn fe(addr: &str, protocol: Protocol) -> Frontend {
        Frontend::new(addr.parse().unwrap(), protocol)
    }

    fn be(addr: &str) -> ApiBackend {
        ApiBackend::new(addr.parse().unwrap())
    }

    #[test]
    fn frontends_get_the_backends_of_their_port_name_and_protocol() {
        let svc = cluster_service(
            &[
                ("10.96.0.1", "http", "TCP", 80),
                ("10.96.0.1", "dns", "UDP", 53),
                ("10.96.0.1", "sctp", "SCTP", 9),
                ("fd00::1", "http", "TCP", 80),
            ],
            &[
                ("10.0.1.5", "http", "TCP", 8080),
                ("10.0.1.5", "dns", "UDP", 5353),
                ("10.0.2.7", "http", "TCP", 8080),
                ("10.0.3.9", "http", "UDP", 8080),
            ],
        );
        let (services, ignored) = frontends_of(&svc);
        assert_eq!(
            services,
            BTreeMap::from([
                (
                    fe("10.96.0.1:80", Protocol::TCP),
                    vec![be("10.0.1.5:8080"), be("10.0.2.7:8080")]
                ),
                (fe("10.96.0.1:53", Protocol::UDP), vec![be("10.0.1.5:5353")]),
            ])
        );
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored.iter().any(|m| m.contains("SCTP")));
        assert!(ignored.iter().any(|m| m.contains("IPv4")));
    }

    fn service_key(name: &str) -> String {
        format!("cilium/state/services/v1/c1/default/{name}")
    }

    fn encode(svc: &ClusterService) -> Vec<u8> {
        svc.encode().unwrap()
    }

    /// Carries a plan out as a manager that hands out ids from 1 would.
    fn run(state: &mut ServiceWatchState, plan: &ServicePlan, next_id: &mut u16) {
        for (frontend, _) in &plan.delete {
            state.deleted(&plan.key, *frontend);
        }
        for (frontend, _) in &plan.upsert {
            *next_id += 1;
            state.upserted(&plan.key, *frontend, ServiceId::new(*next_id));
        }
        state.finished(plan, true);
    }

    #[test]
    fn service_changes_delete_dropped_frontends_and_unchanged_values_do_nothing() {
        let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
        assert_eq!(state.prefix(), "cilium/state/services/v1/c1/");
        let mut ids = 0;
        let v1 = cluster_service(
            &[
                ("10.96.0.1", "http", "TCP", 80),
                ("10.96.0.1", "https", "TCP", 443),
            ],
            &[("10.0.1.5", "http", "TCP", 8080)],
        );
        let plan = state
            .upsert(&service_key("web"), &encode(&v1))
            .unwrap()
            .unwrap();
        assert_eq!(plan.key, "default/web");
        assert_eq!(plan.upsert.len(), 2);
        assert!(plan.delete.is_empty());
        run(&mut state, &plan, &mut ids);
        assert_eq!(
            state.upsert(&service_key("web"), &encode(&v1)).unwrap(),
            None
        );

        let v2 = cluster_service(&[("10.96.0.1", "http", "TCP", 80)], &[]);
        let plan = state
            .upsert(&service_key("web"), &encode(&v2))
            .unwrap()
            .unwrap();
        assert_eq!(
            plan.delete,
            [(fe("10.96.0.1:443", Protocol::TCP), Some(ServiceId::new(2)))]
        );
        assert_eq!(plan.upsert, [(fe("10.96.0.1:80", Protocol::TCP), vec![])]);
        run(&mut state, &plan, &mut ids);

        let plan = state.delete(&service_key("web")).unwrap().unwrap();
        assert_eq!(plan.delete.len(), 1);
        run(&mut state, &plan, &mut ids);
        assert!(state.dump().applied.is_empty());
    }

    #[test]
    fn malformed_and_misplaced_services_are_skipped_without_changes() {
        let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
        let err = state.upsert(&service_key("web"), b"{").unwrap_err();
        assert!(
            matches!(err, ClusterStateError::InvalidService { .. }),
            "{err}"
        );
        let svc = cluster_service(&[("10.96.0.1", "http", "TCP", 80)], &[]);
        let err = state
            .upsert(&service_key("other"), &encode(&svc))
            .unwrap_err();
        assert!(
            matches!(err, ClusterStateError::ServiceKeyMismatch { .. }),
            "{err}"
        );
        assert!(
            state
                .upsert("cilium/state/services/v1/c2/default/web", &encode(&svc))
                .is_err()
        );
        assert_eq!(state.dump().skipped.len(), 2);
        assert!(state.dump().applied.is_empty());
    }

    #[test]
    fn recorded_frontends_of_keys_a_listing_lacks_are_removed_by_frontend() {
        let record = ServiceRecord {
            services: BTreeMap::from([
                (
                    "default/a".to_owned(),
                    vec![fe("10.96.0.1:80", Protocol::TCP)],
                ),
                (
                    "default/b".to_owned(),
                    vec![fe("10.96.0.2:80", Protocol::TCP)],
                ),
            ]),
        };
        let mut state = ServiceWatchState::new("c1", record.clone());
        assert_eq!(state.record(), record);
        state.listing_started();
        let mut a = cluster_service(&[("10.96.0.1", "http", "TCP", 80)], &[]);
        a.name = "a".into();
        // Not applied in this run yet: re-applied, which teaches the watcher its id.
        let plan = state
            .upsert(&service_key("a"), &encode(&a))
            .unwrap()
            .unwrap();
        assert_eq!(plan.upsert.len(), 1);
        assert!(plan.delete.is_empty());
        let plans = state.synced();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].key, "default/b");
        // The id is unknown: the actor asks the manager for it.
        assert_eq!(plans[0].delete, [(fe("10.96.0.2:80", Protocol::TCP), None)]);
        state.deleted("default/b", fe("10.96.0.2:80", Protocol::TCP));
        state.finished(&plans[0], true);
        assert_eq!(
            state.record().services.keys().collect::<Vec<_>>(),
            ["default/a"]
        );
    }

    #[test]
    fn a_frontend_belongs_to_the_first_key_that_claims_it() {
        let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
        let mut ids = 0;
        let web = cluster_service(&[("10.96.0.1", "http", "TCP", 80)], &[]);
        let plan = state
            .upsert(&service_key("web"), &encode(&web))
            .unwrap()
            .unwrap();
        run(&mut state, &plan, &mut ids);
        let mut copy = web.clone();
        copy.name = "copy".into();
        let plan = state
            .upsert(&service_key("copy"), &encode(&copy))
            .unwrap()
            .unwrap();
        assert!(plan.upsert.is_empty());
        assert!(
            plan.ignored[0].contains("default/web"),
            "{:?}",
            plan.ignored
        );
    }

    fn global(affinity: Option<&str>) -> ClusterService {
        let mut svc = cluster_service(
            &[("10.96.0.1", "http", "TCP", 80)],
            &[("10.0.1.5", "http", "TCP", 8080)],
        );
        svc.include_external = true;
        svc.shared = true;
        if let Some(affinity) = affinity {
            svc.labels
                .insert(AFFINITY_LABEL.to_owned(), affinity.to_owned());
        }
        svc
    }

    fn remote_svc(cluster: &str, backend: &str, shared: bool) -> ClusterService {
        let mut svc = cluster_service(
            &[("10.100.0.9", "http", "TCP", 80)],
            &[(backend, "http", "TCP", 8080)],
        );
        svc.cluster = cluster.into();
        svc.shared = shared;
        svc.include_external = true;
        svc
    }

    /// The backends of the one frontend of the plan.
    fn backends(plan: &ServicePlan) -> Vec<String> {
        assert_eq!(plan.upsert.len(), 1, "{plan:?}");
        assert_eq!(plan.upsert[0].0, fe("10.96.0.1:80", Protocol::TCP));
        plan.upsert[0]
            .1
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    }

    fn applied(state: &mut ServiceWatchState, value: &ClusterService) -> ServicePlan {
        let plan = state
            .upsert(&service_key("web"), &encode(value))
            .unwrap()
            .unwrap();
        let mut ids = 0;
        run(state, &plan, &mut ids);
        plan
    }

    fn remote_plan(
        state: &mut ServiceWatchState,
        cluster: &str,
        upserted: Vec<ClusterService>,
        removed: Vec<(String, String)>,
    ) -> Option<ServicePlan> {
        let mut plans = state.remote_services(cluster, upserted, removed);
        assert!(plans.len() <= 1, "{plans:?}");
        let plan = plans.pop()?;
        let mut ids = 10;
        run(state, &plan, &mut ids);
        Some(plan)
    }

    #[test]
    fn a_global_service_gets_the_shared_backends_of_every_remote_cluster() {
        let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
        // Remote records may come before the local one.
        assert!(
            remote_plan(
                &mut state,
                "c2",
                vec![remote_svc("c2", "10.1.0.7", true)],
                vec![]
            )
            .is_none()
        );
        let plan = applied(&mut state, &global(None));
        assert_eq!(backends(&plan), ["10.0.1.5:8080", "10.1.0.7:8080"]);
        // Frontends stay the local ones: the remote's 10.100.0.9 is not a frontend here.
        let plan = remote_plan(
            &mut state,
            "c3",
            vec![remote_svc("c3", "10.2.0.7", true)],
            vec![],
        )
        .unwrap();
        assert_eq!(
            backends(&plan),
            ["10.0.1.5:8080", "10.1.0.7:8080", "10.2.0.7:8080"]
        );
        assert!(plan.delete.is_empty());
        // The same record again changes nothing.
        assert!(
            remote_plan(
                &mut state,
                "c3",
                vec![remote_svc("c3", "10.2.0.7", true)],
                vec![]
            )
            .is_none()
        );
        // Not shared any more: its backends leave.
        let plan = remote_plan(
            &mut state,
            "c3",
            vec![remote_svc("c3", "10.2.0.7", false)],
            vec![],
        )
        .unwrap();
        assert_eq!(backends(&plan), ["10.0.1.5:8080", "10.1.0.7:8080"]);
        assert_eq!(
            state.dump().remote,
            [RemoteServiceCount {
                cluster: "c2".into(),
                services: 1
            }]
        );
        // Drained: the remote's backends leave.
        let plan = remote_plan(
            &mut state,
            "c2",
            vec![],
            vec![("default".into(), "web".into())],
        )
        .unwrap();
        assert_eq!(backends(&plan), ["10.0.1.5:8080"]);
        assert!(state.dump().remote.is_empty());
    }

    #[test]
    fn unshared_foreign_or_non_global_records_add_no_backends() {
        let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
        let mut local = global(None);
        local.include_external = false;
        applied(&mut state, &local);
        // The local service is not global: remote records change nothing.
        assert!(
            remote_plan(
                &mut state,
                "c2",
                vec![remote_svc("c2", "10.1.0.7", true)],
                vec![]
            )
            .is_none()
        );
        // Marked global: the shared remote backends join.
        let plan = applied(&mut state, &global(None));
        assert_eq!(backends(&plan), ["10.0.1.5:8080", "10.1.0.7:8080"]);
        // A record that is not shared, one claiming another cluster than its source, and
        // records claimed for the local cluster are all ignored.
        assert!(
            remote_plan(
                &mut state,
                "c3",
                vec![remote_svc("c3", "10.2.0.7", false)],
                vec![]
            )
            .is_none()
        );
        assert!(
            remote_plan(
                &mut state,
                "c3",
                vec![remote_svc("c4", "10.3.0.7", true)],
                vec![]
            )
            .is_none()
        );
        assert!(
            remote_plan(
                &mut state,
                "c1",
                vec![remote_svc("c1", "10.4.0.7", true)],
                vec![]
            )
            .is_none()
        );
        // Removing a service a cluster never had changes nothing.
        assert!(
            remote_plan(
                &mut state,
                "c3",
                vec![],
                vec![("default".into(), "web".into())]
            )
            .is_none()
        );
    }

    #[test]
    fn affinity_prefers_local_or_remote_backends_while_there_are_any() {
        let no_local = |mut svc: ClusterService| {
            svc.backends.clear();
            svc
        };
        for (affinity, with_both, without_local) in [
            (Some("local"), vec!["10.0.1.5:8080"], vec!["10.1.0.7:8080"]),
            (Some("Remote"), vec!["10.1.0.7:8080"], vec!["10.1.0.7:8080"]),
            (
                Some("none"),
                vec!["10.0.1.5:8080", "10.1.0.7:8080"],
                vec!["10.1.0.7:8080"],
            ),
            (
                None,
                vec!["10.0.1.5:8080", "10.1.0.7:8080"],
                vec!["10.1.0.7:8080"],
            ),
        ] {
            let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
            remote_plan(
                &mut state,
                "c2",
                vec![remote_svc("c2", "10.1.0.7", true)],
                vec![],
            );
            let plan = applied(&mut state, &global(affinity));
            assert_eq!(backends(&plan), with_both, "{affinity:?}");
            // Without local backends; no plan when the outcome is the same.
            let plan = state
                .upsert(&service_key("web"), &encode(&no_local(global(affinity))))
                .unwrap();
            if let Some(plan) = &plan {
                let mut ids = 0;
                run(&mut state, plan, &mut ids);
            }
            let expected = (without_local != with_both).then(|| {
                without_local
                    .iter()
                    .map(|b| (*b).to_owned())
                    .collect::<Vec<_>>()
            });
            assert_eq!(plan.as_ref().map(backends), expected, "{affinity:?}");
            // The remote cluster drains: only what is local is left.
            let plan = remote_plan(
                &mut state,
                "c2",
                vec![],
                vec![("default".into(), "web".into())],
            );
            let left = plan.as_ref().map(backends).unwrap_or_default();
            assert!(left.is_empty(), "{affinity:?}: {left:?}");
        }
        // Remote affinity falls back to the local backends when no remote one is left.
        let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
        remote_plan(
            &mut state,
            "c2",
            vec![remote_svc("c2", "10.1.0.7", true)],
            vec![],
        );
        assert_eq!(
            backends(&applied(&mut state, &global(Some("remote")))),
            ["10.1.0.7:8080"]
        );
        let plan = remote_plan(
            &mut state,
            "c2",
            vec![],
            vec![("default".into(), "web".into())],
        )
        .unwrap();
        assert_eq!(backends(&plan), ["10.0.1.5:8080"]);
    }

    #[test]
    fn an_unknown_affinity_is_none_and_reported() {
        let (affinity, problem) = ServiceAffinity::of(&global(Some("nearby")));
        assert_eq!(affinity, ServiceAffinity::None);
        assert!(problem.unwrap().contains("nearby"));
        assert_eq!(
            ServiceAffinity::of(&global(Some("LOCAL"))),
            (ServiceAffinity::Local, None)
        );
        assert_eq!(
            ServiceAffinity::of(&global(None)),
            (ServiceAffinity::None, None)
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_cap_and_resets() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
        assert_eq!(backoff.next_delay(), Duration::from_millis(400));
        for _ in 0..20 {
            backoff.next_delay();
        }
        assert_eq!(backoff.next_delay(), Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn a_relisting_removes_services_of_keys_that_are_gone() {
        let mut state = ServiceWatchState::new("c1", ServiceRecord::default());
        let mut ids = 0;
        state.listing_started();
        for name in ["a", "b"] {
            let mut svc = cluster_service(&[("10.96.0.1", "http", "TCP", 80)], &[]);
            svc.name = name.into();
            let ip = if name == "a" {
                "10.96.0.1"
            } else {
                "10.96.0.2"
            };
            svc.frontends = BTreeMap::from([(ip.to_owned(), svc.frontends["10.96.0.1"].clone())]);
            let plan = state
                .upsert(&service_key(name), &encode(&svc))
                .unwrap()
                .unwrap();
            run(&mut state, &plan, &mut ids);
        }
        assert!(state.synced().is_empty());
        // The store comes back with `b` gone: only `a` is listed again.
        state.listing_started();
        let mut a = cluster_service(&[("10.96.0.1", "http", "TCP", 80)], &[]);
        a.name = "a".into();
        assert_eq!(state.upsert(&service_key("a"), &encode(&a)).unwrap(), None);
        let plans = state.synced();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].key, "default/b");
        assert_eq!(
            plans[0].delete,
            [(fe("10.96.0.2:80", Protocol::TCP), Some(ServiceId::new(2)))]
        );
        // A failed removal keeps the key, so the next listing tries again.
        state.finished(&plans[0], false);
        assert_eq!(state.dump().applied.len(), 2);
    }
}
