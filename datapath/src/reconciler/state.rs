//! The reconciler as a pure state machine: desired state per object, what the kernel is known
//! to hold, the operations that bring one to the other, and a status per object. No IO: the
//! caller feeds in listings ([`ReconcilerState::observe_map`]), asks for the operations due
//! ([`ReconcilerState::plan`]) and reports their outcome ([`ReconcilerState::complete`]), always
//! with the current time, so tests and the simulation decide when retries happen.
//!
//! Three kinds of object are reconciled: map entries, per-endpoint policy maps and endpoint
//! attachments. Each has a desired state (present with a value, absent, or adopted: found in
//! the kernel at start and not yet claimed), an actual state (present, absent, or unknown
//! until listed) and, after a failure, the attempt count and the time of the next retry
//! (exponential backoff). Only objects whose desired and actual state differ are "dirty", and
//! only dirty objects produce operations, so an unchanged desired value costs no write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Bound;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use model::collections::compact_grown;
use model::identity::{ClusterId, NumericIdentity};

use super::messages::{
    AttachmentDump, DatapathDump, EntryDump, ObjectStatus, PolicyMapDump, ReconcileError,
    ServiceSpec,
};
use crate::api::{
    Backend4Value, BackendId, CtKey4, CtTupleFlags, DatapathError, Direction, EndpointAttachment,
    EndpointId, EndpointInfo, EndpointKey, Frontend, IpcacheKey, MapKey, MapName, MapValue,
    PolicyEntry, PolicyKey, Protocol, RemoteEndpointInfo, RevNat4Value, RevNatId, Service4Key,
    Service4Value, ServiceScope, error_chain,
};

/// Retry backoff bounds; the defaults are those of upstream's statedb reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Wait after the first failure; doubled after each further failure.
    pub min_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryConfig {
    /// The wait after the `attempts`-th consecutive failure.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.min_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// An object the reconciler manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    PolicyMap(EndpointId),
    Entry(MapKey),
    Attachment(EndpointId),
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectKey::PolicyMap(ep) => write!(f, "policy map {}", MapName::Policy(*ep)),
            ObjectKey::Entry(key) => write!(f, "{key} in {}", key.map()),
            ObjectKey::Attachment(ep) => write!(f, "attachment of endpoint {ep}"),
        }
    }
}

/// One kernel operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreatePolicyMap(EndpointId),
    Update(MapKey, MapValue),
    Attach(EndpointAttachment),
    Detach(EndpointId),
    Delete(MapKey),
    RemovePolicyMap(EndpointId),
}

impl Op {
    /// The object the operation reconciles.
    pub fn object(&self) -> ObjectKey {
        match self {
            Op::CreatePolicyMap(ep) | Op::RemovePolicyMap(ep) => ObjectKey::PolicyMap(*ep),
            Op::Update(key, _) | Op::Delete(key) => ObjectKey::Entry(*key),
            Op::Attach(att) => ObjectKey::Attachment(att.endpoint),
            Op::Detach(ep) => ObjectKey::Attachment(*ep),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Desired<V> {
    Present(V),
    Absent,
    /// Found in the kernel before the initial sync; nobody has claimed it yet.
    Adopted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Actual<V> {
    Present(V),
    Absent,
    /// Not listed yet (or the listing failed): every operation must be attempted.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    attempts: u32,
    last_error: String,
    next_retry: Duration,
}

#[derive(Debug, Clone)]
struct Tracked<V> {
    desired: Desired<V>,
    actual: Actual<V>,
    /// Boxed: rare, and a row per map entry is what a node of a large cluster (or a
    /// simulation of thousands of them) multiplies by every address of the cluster.
    failure: Option<Box<Failure>>,
}

impl<V: PartialEq> Tracked<V> {
    fn new(desired: Desired<V>, actual: Actual<V>) -> Self {
        Tracked {
            desired,
            actual,
            failure: None,
        }
    }

    fn in_sync(&self) -> bool {
        match (&self.desired, &self.actual) {
            (Desired::Adopted, _) => true,
            (Desired::Present(want), Actual::Present(have)) => want == have,
            (Desired::Absent, Actual::Absent) => true,
            _ => false,
        }
    }

    /// Nothing desired and nothing there: the row can go.
    fn is_gone(&self) -> bool {
        matches!(
            (&self.desired, &self.actual),
            (Desired::Absent, Actual::Absent)
        )
    }

    fn due(&self, now: Duration) -> bool {
        self.failure.as_ref().is_none_or(|f| f.next_retry <= now)
    }

    /// Sets the desired state; a changed desire forgets earlier failures (the new value may
    /// well succeed), an unchanged one keeps the backoff running.
    fn set_desired(&mut self, desired: Desired<V>) {
        if self.desired != desired {
            self.desired = desired;
            self.failure = None;
        }
    }

    fn status(&self) -> ObjectStatus {
        if matches!(self.desired, Desired::Adopted) {
            return ObjectStatus::Adopted;
        }
        if self.in_sync() {
            return ObjectStatus::Applied;
        }
        match &self.failure {
            Some(f) => ObjectStatus::Failed {
                attempts: f.attempts,
                last_error: f.last_error.clone(),
                next_retry: f.next_retry,
            },
            None => ObjectStatus::Pending,
        }
    }

    fn desired_value(&self) -> Option<&V> {
        match &self.desired {
            Desired::Present(v) => Some(v),
            Desired::Absent | Desired::Adopted => None,
        }
    }
}

/// The reconciler's state. See the module docs.
#[derive(Debug, Default)]
pub struct ReconcilerState {
    retry: RetryConfig,
    entries: BTreeMap<MapKey, Tracked<MapValue>>,
    /// The number of rows of `entries` at its last rebuild (see [`compact_grown`]).
    entries_built: usize,
    policy_maps: BTreeMap<EndpointId, Tracked<()>>,
    attachments: BTreeMap<EndpointId, Tracked<EndpointAttachment>>,
    dirty: BTreeSet<ObjectKey>,
    /// Maps whose complete content is known (listed, or created empty by us).
    known_maps: BTreeSet<MapName>,
    /// Whether the set of existing policy maps is known.
    policy_maps_known: bool,
    synced: bool,
    services: BTreeMap<Frontend, ServiceSpec>,
    /// Backend id -> its value and the frontends that use it.
    backends: BTreeMap<BackendId, (Backend4Value, BTreeSet<Frontend>)>,
    rev_nat_owners: BTreeMap<RevNatId, Frontend>,
}

/// The smallest key of `map` in the derived key order, so that one map's entries can be
/// visited as a range instead of a scan of every tracked entry.
fn first_key(map: MapName) -> MapKey {
    let any_v4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    match map {
        MapName::Policy(endpoint) => MapKey::Policy {
            endpoint,
            key: PolicyKey::l3(NumericIdentity::UNKNOWN, Direction::Ingress),
        },
        MapName::Ipcache => MapKey::Ipcache(IpcacheKey::new(
            ClusterId::UNSET,
            IpNet::V4(Ipv4Net::default()),
        )),
        MapName::Lxc => MapKey::Lxc(EndpointKey::new(Ipv4Addr::UNSPECIFIED.into())),
        MapName::Lb4Services => MapKey::Service(Service4Key {
            frontend: Frontend {
                addr: any_v4,
                protocol: Protocol::ANY,
                scope: ServiceScope::External,
            },
            backend_slot: 0,
        }),
        MapName::Lb4Backends => MapKey::Backend(BackendId::new(0)),
        MapName::Lb4ReverseNat => MapKey::RevNat(RevNatId::new(0)),
        MapName::Ct4Global | MapName::CtAny4Global => MapKey::Conntrack(CtKey4 {
            daddr: Ipv4Addr::UNSPECIFIED,
            saddr: Ipv4Addr::UNSPECIFIED,
            dport: 0,
            sport: 0,
            protocol: Protocol::ANY,
            flags: CtTupleFlags::from_bits(0),
        }),
    }
}

/// The tracked keys of `map`, in order.
fn keys_of<V>(entries: &BTreeMap<MapKey, V>, map: MapName) -> Vec<MapKey> {
    let start = first_key(map);
    entries
        .range((Bound::Included(start), Bound::Unbounded))
        .map(|(key, _)| *key)
        // Policy maps are contiguous per endpoint; both conntrack maps share one key variant.
        .take_while(|key| match key {
            MapKey::Policy { .. } => key.map() == map,
            _ => std::mem::discriminant(key) == std::mem::discriminant(&start),
        })
        .filter(|key| key.map() == map)
        .collect()
}

impl ReconcilerState {
    pub fn new(retry: RetryConfig) -> Self {
        ReconcilerState {
            retry,
            ..ReconcilerState::default()
        }
    }

    /// Whether the initial sync has happened (pruning is enabled).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether every object is in its desired state.
    pub fn converged(&self) -> bool {
        self.dirty.is_empty()
    }

    /// The earliest time a failed object is due for a retry.
    pub fn next_retry(&self) -> Option<Duration> {
        self.dirty
            .iter()
            .filter_map(|obj| self.failure(obj).map(|f| f.next_retry))
            .min()
    }

    /// The status of one object; `None` if the reconciler does not track it.
    pub fn status(&self, object: &ObjectKey) -> Option<ObjectStatus> {
        match object {
            ObjectKey::PolicyMap(ep) => self.policy_maps.get(ep).map(Tracked::status),
            ObjectKey::Entry(key) => self.entries.get(key).map(Tracked::status),
            ObjectKey::Attachment(ep) => self.attachments.get(ep).map(Tracked::status),
        }
    }

    fn failure(&self, object: &ObjectKey) -> Option<&Failure> {
        match object {
            ObjectKey::PolicyMap(ep) => self.policy_maps.get(ep)?.failure.as_deref(),
            ObjectKey::Entry(key) => self.entries.get(key)?.failure.as_deref(),
            ObjectKey::Attachment(ep) => self.attachments.get(ep)?.failure.as_deref(),
        }
    }

    // ---- desired state ----

    /// Replaces the policy of `endpoint` with `entries`: keys not in the set are deleted,
    /// unchanged ones are left alone.
    pub fn set_endpoint_policy(
        &mut self,
        endpoint: EndpointId,
        entries: &BTreeMap<PolicyKey, PolicyEntry>,
    ) {
        self.set_policy_map(endpoint, Desired::Present(()));
        let stale: Vec<MapKey> = self
            .endpoint_entry_keys(endpoint)
            .into_iter()
            .filter(|key| match key {
                MapKey::Policy { key, .. } => !entries.contains_key(key),
                _ => false,
            })
            .collect();
        for key in stale {
            self.set_entry(key, Desired::Absent);
        }
        for (key, value) in entries {
            self.set_entry(
                MapKey::Policy {
                    endpoint,
                    key: *key,
                },
                Desired::Present(MapValue::Policy(*value)),
            );
        }
    }

    pub fn upsert_ipcache(&mut self, entries: &[(IpcacheKey, RemoteEndpointInfo)]) {
        for (key, value) in entries {
            self.set_entry(
                MapKey::Ipcache(*key),
                Desired::Present(MapValue::Ipcache(*value)),
            );
        }
    }

    pub fn delete_ipcache(&mut self, keys: &[IpcacheKey]) {
        for key in keys {
            self.set_entry(MapKey::Ipcache(*key), Desired::Absent);
        }
    }

    pub fn upsert_lxc(&mut self, entries: &[(EndpointKey, EndpointInfo)]) {
        for (key, value) in entries {
            self.set_entry(MapKey::Lxc(*key), Desired::Present(MapValue::Lxc(*value)));
        }
    }

    pub fn delete_lxc(&mut self, keys: &[EndpointKey]) {
        for key in keys {
            self.set_entry(MapKey::Lxc(*key), Desired::Absent);
        }
    }

    /// Adds or replaces a service: its rev-NAT entry, its backends and one slot per backend
    /// after the master slot. Slots, backends and the rev-NAT entry it no longer uses are
    /// deleted (backends only once no other service uses them).
    pub fn upsert_service(&mut self, spec: ServiceSpec) -> Result<(), ReconcileError> {
        let frontend = spec.frontend;
        let count =
            u16::try_from(spec.backends.len()).map_err(|_| ReconcileError::TooManyBackends {
                frontend,
                count: spec.backends.len(),
            })?;
        if spec.rev_nat == RevNatId::new(0) {
            return Err(ReconcileError::ZeroRevNat { frontend });
        }
        if let Some(owner) = self.rev_nat_owners.get(&spec.rev_nat)
            && *owner != frontend
        {
            return Err(ReconcileError::RevNatConflict {
                id: spec.rev_nat,
                owner: *owner,
            });
        }
        let mut requested: BTreeMap<BackendId, Backend4Value> = BTreeMap::new();
        for (id, backend) in &spec.backends {
            if let Some(existing) = requested.insert(*id, *backend)
                && existing != *backend
            {
                return Err(ReconcileError::BackendConflict {
                    id: *id,
                    existing,
                    requested: *backend,
                    user: frontend,
                });
            }
            if let Some((existing, users)) = self.backends.get(id)
                && existing != backend
                && let Some(user) = users.iter().find(|user| **user != frontend)
            {
                return Err(ReconcileError::BackendConflict {
                    id: *id,
                    existing: *existing,
                    requested: *backend,
                    user: *user,
                });
            }
        }

        let old = self.services.insert(frontend, spec.clone());
        self.release_service_parts(old.as_ref(), Some(&spec));

        self.rev_nat_owners.insert(spec.rev_nat, frontend);
        self.set_entry(
            MapKey::RevNat(spec.rev_nat),
            Desired::Present(MapValue::RevNat(RevNat4Value {
                frontend: frontend.addr,
            })),
        );
        for (id, backend) in &requested {
            let (value, users) = self
                .backends
                .entry(*id)
                .or_insert_with(|| (*backend, BTreeSet::new()));
            *value = *backend;
            users.insert(frontend);
            self.set_entry(
                MapKey::Backend(*id),
                Desired::Present(MapValue::Backend(*backend)),
            );
        }
        for (slot, (id, _)) in (1..=count).zip(&spec.backends) {
            self.set_entry(
                MapKey::Service(Service4Key {
                    frontend,
                    backend_slot: slot,
                }),
                Desired::Present(MapValue::Service(Service4Value::slot(
                    *id,
                    spec.rev_nat,
                    spec.flags,
                ))),
            );
        }
        self.set_entry(
            MapKey::Service(Service4Key {
                frontend,
                backend_slot: 0,
            }),
            Desired::Present(MapValue::Service(Service4Value::master(
                count,
                spec.rev_nat,
                spec.selection,
                spec.flags,
            ))),
        );
        Ok(())
    }

    /// Removes a service, its slots, its rev-NAT entry and the backends only it used.
    pub fn delete_service(&mut self, frontend: &Frontend) {
        if let Some(old) = self.services.remove(frontend) {
            self.release_service_parts(Some(&old), None);
        }
    }

    /// Marks absent what `old` used and `new` (the same frontend's replacement) does not.
    fn release_service_parts(&mut self, old: Option<&ServiceSpec>, new: Option<&ServiceSpec>) {
        let Some(old) = old else { return };
        let frontend = old.frontend;
        let new_count = new.map_or(0, |spec| spec.backends.len());
        // Slot 0 (the master) goes only with the whole service.
        let first_stale_slot = if new.is_some() { new_count + 1 } else { 0 };
        for slot in first_stale_slot..=old.backends.len() {
            if let Ok(backend_slot) = u16::try_from(slot) {
                self.set_entry(
                    MapKey::Service(Service4Key {
                        frontend,
                        backend_slot,
                    }),
                    Desired::Absent,
                );
            }
        }
        if new.is_none_or(|spec| spec.rev_nat != old.rev_nat) {
            self.rev_nat_owners.remove(&old.rev_nat);
            self.set_entry(MapKey::RevNat(old.rev_nat), Desired::Absent);
        }
        let kept: BTreeSet<BackendId> = new
            .map(|spec| spec.backends.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default();
        for (id, _) in &old.backends {
            if kept.contains(id) {
                continue;
            }
            let unused = self.backends.get_mut(id).is_some_and(|(_, users)| {
                users.remove(&frontend);
                users.is_empty()
            });
            if unused {
                self.backends.remove(id);
                self.set_entry(MapKey::Backend(*id), Desired::Absent);
            }
        }
    }

    /// Desires an endpoint's attachment (and with it its policy map).
    pub fn attach_endpoint(&mut self, attachment: EndpointAttachment) {
        let endpoint = attachment.endpoint;
        self.set_policy_map(endpoint, Desired::Present(()));
        self.set_attachment(endpoint, Desired::Present(attachment));
    }

    /// Desires an endpoint gone: detached, its policy map removed with its entries.
    pub fn detach_endpoint(&mut self, endpoint: EndpointId) {
        self.set_attachment(endpoint, Desired::Absent);
        self.set_policy_map(endpoint, Desired::Absent);
        for key in self.endpoint_entry_keys(endpoint) {
            self.set_entry(key, Desired::Absent);
        }
    }

    /// The initial sync is done: every adopted object nobody claimed is now undesired, and a
    /// stray policy map's endpoint is detached before its map goes.
    pub fn mark_synced(&mut self) {
        self.synced = true;
        let adopted_maps: Vec<EndpointId> = self
            .policy_maps
            .iter()
            .filter(|(_, t)| t.desired == Desired::Adopted)
            .map(|(ep, _)| *ep)
            .collect();
        for endpoint in adopted_maps {
            self.detach_endpoint(endpoint);
        }
        let adopted_entries: Vec<MapKey> = self
            .entries
            .iter()
            .filter(|(_, t)| t.desired == Desired::Adopted)
            .map(|(key, _)| *key)
            .collect();
        for key in adopted_entries {
            self.set_entry(key, Desired::Absent);
        }
    }

    fn endpoint_entry_keys(&self, endpoint: EndpointId) -> Vec<MapKey> {
        keys_of(&self.entries, MapName::Policy(endpoint))
    }

    fn set_entry(&mut self, key: MapKey, desired: Desired<MapValue>) {
        let actual = self.unknown_or_absent(key.map());
        let row = self
            .entries
            .entry(key)
            .or_insert_with(|| Tracked::new(Desired::Absent, actual));
        row.set_desired(desired);
        let (in_sync, gone) = (row.in_sync(), row.is_gone());
        if gone {
            self.entries.remove(&key);
        } else {
            compact_grown(&mut self.entries, &mut self.entries_built);
        }
        self.mark(ObjectKey::Entry(key), in_sync);
    }

    fn set_policy_map(&mut self, endpoint: EndpointId, desired: Desired<()>) {
        let actual = if self.policy_maps_known {
            Actual::Absent
        } else {
            Actual::Unknown
        };
        let row = self
            .policy_maps
            .entry(endpoint)
            .or_insert_with(|| Tracked::new(Desired::Absent, actual));
        row.set_desired(desired);
        let (in_sync, gone) = (row.in_sync(), row.is_gone());
        if gone {
            self.policy_maps.remove(&endpoint);
        }
        self.mark(ObjectKey::PolicyMap(endpoint), in_sync);
    }

    fn set_attachment(&mut self, endpoint: EndpointId, desired: Desired<EndpointAttachment>) {
        // Pinned links survive the agent, so an attachment's absence is never known up front.
        let row = self
            .attachments
            .entry(endpoint)
            .or_insert_with(|| Tracked::new(Desired::Absent, Actual::Unknown));
        row.set_desired(desired);
        let (in_sync, gone) = (row.in_sync(), row.is_gone());
        if gone {
            self.attachments.remove(&endpoint);
        }
        self.mark(ObjectKey::Attachment(endpoint), in_sync);
    }

    fn unknown_or_absent<V>(&self, map: MapName) -> Actual<V> {
        if self.known_maps.contains(&map) {
            Actual::Absent
        } else {
            Actual::Unknown
        }
    }

    fn mark(&mut self, object: ObjectKey, in_sync: bool) {
        if in_sync {
            self.dirty.remove(&object);
        } else {
            self.dirty.insert(object);
        }
    }

    // ---- actual state ----

    /// Records which policy maps exist in the kernel.
    pub fn observe_policy_maps(&mut self, present: &[EndpointId]) {
        self.policy_maps_known = true;
        let present: BTreeSet<EndpointId> = present.iter().copied().collect();
        let endpoints: BTreeSet<EndpointId> = self
            .policy_maps
            .keys()
            .chain(present.iter())
            .copied()
            .collect();
        for endpoint in &endpoints {
            let exists = present.contains(endpoint);
            let synced = self.synced;
            let row = self.policy_maps.entry(*endpoint).or_insert_with(|| {
                let desired = if synced {
                    Desired::Absent
                } else {
                    Desired::Adopted
                };
                Tracked::new(desired, Actual::Unknown)
            });
            row.actual = if exists {
                Actual::Present(())
            } else {
                Actual::Absent
            };
            let stray_after_sync = synced && exists && row.desired == Desired::Absent;
            let (in_sync, gone) = (row.in_sync(), row.is_gone());
            if gone {
                self.policy_maps.remove(endpoint);
            }
            self.mark(ObjectKey::PolicyMap(*endpoint), in_sync);
            if !exists {
                self.known_maps.insert(MapName::Policy(*endpoint));
                self.forget_policy_entries(*endpoint);
            } else if stray_after_sync {
                self.detach_endpoint(*endpoint);
            }
        }
    }

    /// Records the complete content of `map` as listed from the kernel. Keys nobody desires
    /// become adopted before the initial sync and undesired (pruned) after it.
    pub fn observe_map(&mut self, map: MapName, listing: &[(MapKey, MapValue)]) {
        self.known_maps.insert(map);
        let listed: BTreeMap<MapKey, MapValue> = listing
            .iter()
            .filter(|(key, _)| key.map() == map)
            .map(|(key, value)| (*key, *value))
            .collect();
        let mut keys: BTreeSet<MapKey> = keys_of(&self.entries, map).into_iter().collect();
        keys.extend(listed.keys().copied());
        let synced = self.synced;
        for key in &keys {
            let row = self.entries.entry(*key).or_insert_with(|| {
                let desired = if synced {
                    Desired::Absent
                } else {
                    Desired::Adopted
                };
                Tracked::new(desired, Actual::Unknown)
            });
            row.actual = match listed.get(key) {
                Some(value) => Actual::Present(*value),
                None => Actual::Absent,
            };
            let (in_sync, gone) = (row.in_sync(), row.is_gone());
            if gone {
                self.entries.remove(key);
            }
            self.mark(ObjectKey::Entry(*key), in_sync);
        }
    }

    /// A policy map is gone, and its entries with it.
    fn forget_policy_entries(&mut self, endpoint: EndpointId) {
        for key in self.endpoint_entry_keys(endpoint) {
            if let Some(row) = self.entries.get_mut(&key) {
                row.actual = Actual::Absent;
                if row.desired == Desired::Adopted {
                    row.desired = Desired::Absent;
                }
                let (in_sync, gone) = (row.in_sync(), row.is_gone());
                if gone {
                    self.entries.remove(&key);
                }
                self.mark(ObjectKey::Entry(key), in_sync);
            }
        }
    }

    // ---- operations ----

    /// The operations due at `now`, in an order that keeps the datapath consistent: policy
    /// maps before their entries; backends and rev-NAT entries before the service slots that
    /// name them, slots before the master entry that counts them; attachments once their
    /// policy map exists; then deletions in the reverse order; policy maps last, and only
    /// once their endpoint is detached.
    pub fn plan(&self, now: Duration) -> Vec<Op> {
        let mut creates = Vec::new();
        let mut updates = Vec::new();
        let mut attaches = Vec::new();
        let mut detaches = Vec::new();
        let mut deletes = Vec::new();
        let mut removes = Vec::new();
        for object in &self.dirty {
            match object {
                ObjectKey::PolicyMap(ep) => {
                    let Some(row) = self.policy_maps.get(ep).filter(|r| r.due(now)) else {
                        continue;
                    };
                    match row.desired {
                        Desired::Present(()) => creates.push(Op::CreatePolicyMap(*ep)),
                        Desired::Absent if self.detached(*ep) => {
                            removes.push(Op::RemovePolicyMap(*ep));
                        }
                        Desired::Absent | Desired::Adopted => {}
                    }
                }
                ObjectKey::Entry(key) => {
                    let Some(row) = self.entries.get(key).filter(|r| r.due(now)) else {
                        continue;
                    };
                    if let MapKey::Policy { endpoint, .. } = key {
                        let map = self.policy_maps.get(endpoint);
                        let map_exists =
                            map.is_some_and(|m| matches!(m.actual, Actual::Present(())));
                        let map_going = map.is_some_and(|m| m.desired == Desired::Absent);
                        // Removing the map removes its entries; deleting them one by one
                        // first would only cost writes.
                        if !map_exists || (map_going && row.desired == Desired::Absent) {
                            continue;
                        }
                    }
                    match &row.desired {
                        Desired::Present(value) => updates.push(Op::Update(*key, *value)),
                        Desired::Absent => deletes.push(Op::Delete(*key)),
                        Desired::Adopted => {}
                    }
                }
                ObjectKey::Attachment(ep) => {
                    let Some(row) = self.attachments.get(ep).filter(|r| r.due(now)) else {
                        continue;
                    };
                    match &row.desired {
                        Desired::Present(att) => {
                            let map_ready = self
                                .policy_maps
                                .get(ep)
                                .is_some_and(|m| matches!(m.actual, Actual::Present(())));
                            if map_ready {
                                attaches.push(Op::Attach(att.clone()));
                            }
                        }
                        Desired::Absent => detaches.push(Op::Detach(*ep)),
                        Desired::Adopted => {}
                    }
                }
            }
        }
        updates.sort_by_key(|op| match op {
            Op::Update(key, _) => update_rank(key),
            _ => 0,
        });
        deletes.sort_by_key(|op| match op {
            Op::Delete(key) => delete_rank(key),
            _ => 0,
        });
        let mut ops = creates;
        ops.extend(updates);
        ops.extend(attaches);
        ops.extend(detaches);
        ops.extend(deletes);
        ops.extend(removes);
        ops
    }

    /// Whether the endpoint's programs are known to be detached (or were never tracked).
    fn detached(&self, endpoint: EndpointId) -> bool {
        self.attachments
            .get(&endpoint)
            .is_none_or(|a| a.actual == Actual::Absent)
    }

    /// Records the outcome of an operation planned by [`plan`](Self::plan).
    pub fn complete(&mut self, op: &Op, result: Result<(), &DatapathError>, now: Duration) {
        let object = op.object();
        let failure = match result {
            Ok(()) => None,
            Err(err) => {
                let attempts = self.failure(&object).map_or(0, |f| f.attempts) + 1;
                if let (
                    Op::Update(MapKey::Policy { endpoint, .. }, _),
                    DatapathError::NoSuchMap { .. },
                ) = (op, err)
                {
                    // The map vanished behind our back: create it again.
                    self.observe_policy_map_missing(*endpoint);
                }
                Some(Box::new(Failure {
                    attempts,
                    last_error: error_chain(err),
                    next_retry: now.saturating_add(self.retry.backoff(attempts)),
                }))
            }
        };
        match op {
            Op::CreatePolicyMap(ep) | Op::RemovePolicyMap(ep) => {
                let created = matches!(op, Op::CreatePolicyMap(_));
                let Some(row) = self.policy_maps.get_mut(ep) else {
                    return;
                };
                let was_absent = row.actual == Actual::Absent;
                if failure.is_none() {
                    row.actual = if created {
                        Actual::Present(())
                    } else {
                        Actual::Absent
                    };
                }
                row.failure = failure;
                let succeeded = row.failure.is_none();
                let (in_sync, gone) = (row.in_sync(), row.is_gone());
                if gone {
                    self.policy_maps.remove(ep);
                }
                self.mark(object, in_sync);
                if succeeded {
                    if !created {
                        self.known_maps.insert(MapName::Policy(*ep));
                        self.forget_policy_entries(*ep);
                    } else if was_absent {
                        // A map we created from nothing is known to be empty.
                        self.known_maps.insert(MapName::Policy(*ep));
                    }
                }
            }
            Op::Update(key, _) | Op::Delete(key) => {
                let Some(row) = self.entries.get_mut(key) else {
                    return;
                };
                if failure.is_none() {
                    row.actual = match op {
                        Op::Update(_, value) => Actual::Present(*value),
                        _ => Actual::Absent,
                    };
                }
                row.failure = failure;
                let (in_sync, gone) = (row.in_sync(), row.is_gone());
                if gone {
                    self.entries.remove(key);
                }
                self.mark(object, in_sync);
            }
            Op::Attach(att) => {
                let Some(row) = self.attachments.get_mut(&att.endpoint) else {
                    return;
                };
                if failure.is_none() {
                    row.actual = Actual::Present(att.clone());
                }
                row.failure = failure;
                let (in_sync, gone) = (row.in_sync(), row.is_gone());
                if gone {
                    self.attachments.remove(&att.endpoint);
                }
                self.mark(object, in_sync);
            }
            Op::Detach(ep) => {
                let Some(row) = self.attachments.get_mut(ep) else {
                    return;
                };
                if failure.is_none() {
                    row.actual = Actual::Absent;
                }
                row.failure = failure;
                let (in_sync, gone) = (row.in_sync(), row.is_gone());
                if gone {
                    self.attachments.remove(ep);
                }
                self.mark(object, in_sync);
            }
        }
    }

    /// The kernel says the map is gone: it and all its entries must be written again.
    fn observe_policy_map_missing(&mut self, endpoint: EndpointId) {
        if let Some(row) = self.policy_maps.get_mut(&endpoint) {
            row.actual = Actual::Absent;
            let in_sync = row.in_sync();
            self.mark(ObjectKey::PolicyMap(endpoint), in_sync);
        }
        self.known_maps.insert(MapName::Policy(endpoint));
        self.forget_policy_entries(endpoint);
    }

    // ---- reading ----

    /// The desired state with a status per object.
    pub fn dump(&self) -> DatapathDump {
        DatapathDump {
            synced: self.synced,
            policy_maps: self
                .policy_maps
                .iter()
                .map(|(endpoint, row)| PolicyMapDump {
                    endpoint: *endpoint,
                    desired: row.desired == Desired::Present(()),
                    status: row.status(),
                })
                .collect(),
            attachments: self
                .attachments
                .iter()
                .map(|(endpoint, row)| AttachmentDump {
                    endpoint: *endpoint,
                    desired: row.desired_value().cloned(),
                    status: row.status(),
                })
                .collect(),
            entries: self
                .entries
                .iter()
                .map(|(key, row)| EntryDump {
                    key: *key,
                    desired: row.desired_value().copied(),
                    status: row.status(),
                })
                .collect(),
            services: self.services.values().cloned().collect(),
        }
    }
}

/// Update order: what other entries point to goes first, a service's master entry last.
fn update_rank(key: &MapKey) -> u8 {
    match key {
        MapKey::Backend(_) => 0,
        MapKey::RevNat(_) => 1,
        MapKey::Lxc(_) => 2,
        MapKey::Ipcache(_) => 3,
        MapKey::Policy { .. } => 4,
        MapKey::Conntrack(_) => 5,
        MapKey::Service(key) if key.backend_slot != 0 => 6,
        MapKey::Service(_) => 7,
    }
}

/// Delete order: the reverse, so nothing points to a deleted entry.
fn delete_rank(key: &MapKey) -> u8 {
    match key {
        MapKey::Service(key) if key.backend_slot == 0 => 0,
        MapKey::Service(_) => 1,
        MapKey::Policy { .. } => 2,
        MapKey::Ipcache(_) => 3,
        MapKey::Lxc(_) => 4,
        MapKey::Conntrack(_) => 5,
        MapKey::RevNat(_) => 6,
        MapKey::Backend(_) => 7,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::api::{Frontend, PortPrefix};

    #[test]
    fn first_key_is_the_smallest_key_of_its_map() {
        let v6: IpNet = "fd00::/8".parse().unwrap_or_else(|e| panic!("{e}"));
        let max_v4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, u16::MAX);
        let samples = [
            MapKey::Policy {
                endpoint: EndpointId::new(3),
                key: PolicyKey::new(
                    NumericIdentity::new(0),
                    Direction::Ingress,
                    Protocol::TCP,
                    PortPrefix::exact(0),
                )
                .unwrap_or_else(|e| panic!("{e}")),
            },
            MapKey::Ipcache(IpcacheKey::new(
                ClusterId::UNSET,
                "0.0.0.0/1".parse().unwrap_or_else(|e| panic!("{e}")),
            )),
            MapKey::Ipcache(IpcacheKey::new(ClusterId::new(255), v6)),
            MapKey::Lxc(EndpointKey::new(Ipv6Addr::UNSPECIFIED.into())),
            MapKey::Service(Service4Key {
                frontend: Frontend::new(max_v4, Protocol::ANY),
                backend_slot: 0,
            }),
            MapKey::Backend(BackendId::new(0)),
            MapKey::RevNat(RevNatId::new(1)),
        ];
        for key in samples {
            let first = first_key(key.map());
            assert!(first <= key, "{first:?} > {key:?}");
            assert_eq!(first.map(), key.map());
            // A range from the first key finds it, and only it.
            let entries: BTreeMap<MapKey, ()> = [(key, ())].into_iter().collect();
            assert_eq!(keys_of(&entries, key.map()), vec![key]);
        }
    }

    #[test]
    fn keys_of_one_map_skip_neighbouring_maps() {
        let policy = |ep: u16, id: u32| MapKey::Policy {
            endpoint: EndpointId::new(ep),
            key: PolicyKey::l3(NumericIdentity::new(id), Direction::Egress),
        };
        let entries: BTreeMap<MapKey, ()> =
            [policy(1, 9), policy(2, 1), policy(2, 5), policy(3, 0)]
                .into_iter()
                .map(|k| (k, ()))
                .collect();
        assert_eq!(
            keys_of(&entries, MapName::Policy(EndpointId::new(2))),
            vec![policy(2, 1), policy(2, 5)]
        );
        assert!(keys_of(&entries, MapName::Ipcache).is_empty());
    }
}
