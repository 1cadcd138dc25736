//! A recording in-memory [`Datapath`] for actor tests and the simulation (feature
//! `test-util`), in the spirit of upstream's `pkg/datapath/fake`.
//!
//! It behaves like the kernel where the reconciler can tell the difference: every map has the
//! capacity the BPF programs declare (a new key in a full map fails, LRU conntrack maps evict),
//! policy maps exist only once created, removal is idempotent. On top it records every
//! operation in a log (so tests can count writes) and injects faults: fail the next N
//! operations at a point, or fail every write of one key until healed. It is synchronous: a
//! fault is an error, never a delay.
//!
//! Clones share state, so a test keeps one handle to inspect while the actor owns another, and
//! a second actor started over the same fake sees the first one's "pinned" maps, as a restarted
//! agent does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use model::collections::compact_grown;

use crate::api::{
    CtGcStats, Datapath, DatapathError, EndpointAttachment, EndpointId, IpcacheKey, MapKey,
    MapName, MapValue, MetricDirection, MetricEntry, RemoteEndpointInfo,
};

/// The conntrack clock of a fresh fake, in seconds: a machine that has been up for a while, so
/// an entry with lifetime 0 is already expired.
pub const FAKE_BOOT_SECS: u32 = 1;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultPoint {
    Update(MapName),
    Delete(MapName),
    List(MapName),
    ListPolicyMaps,
    CreatePolicyMap,
    RemovePolicyMap,
    Attach,
    Detach,
    ConntrackGc,
    ReadMetrics,
}

/// One operation the fake was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeOp {
    Update { key: MapKey, value: MapValue },
    Delete { key: MapKey },
    List { map: MapName },
    ListPolicyMaps,
    CreatePolicyMap { endpoint: EndpointId },
    RemovePolicyMap { endpoint: EndpointId },
    Attach(EndpointAttachment),
    Detach { endpoint: EndpointId },
    ConntrackGc,
    ReadMetrics,
}

impl FakeOp {
    /// Whether the operation changes kernel state (reads do not).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            FakeOp::List { .. } | FakeOp::ListPolicyMaps | FakeOp::ReadMetrics
        )
    }
}

/// A logged operation and whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub op: FakeOp,
    pub ok: bool,
}

type MetricKey = (u8, MetricDirection, u16, u8);

/// One map's entries. The ipcache map, the one that grows with the cluster (an entry per
/// address of the cluster on every node, millions in a simulation), keeps its entries in their
/// own types: 43 bytes per entry where the generic key and value take 68.
#[derive(Debug)]
enum Table {
    Ipcache {
        entries: BTreeMap<IpcacheKey, RemoteEndpointInfo>,
        /// The number of entries at the last rebuild (see [`compact_grown`]).
        built: usize,
    },
    Generic(BTreeMap<MapKey, MapValue>),
}

impl Table {
    fn for_map(map: MapName) -> Self {
        match map {
            MapName::Ipcache => Table::Ipcache {
                entries: BTreeMap::new(),
                built: 0,
            },
            _ => Table::Generic(BTreeMap::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Table::Ipcache { entries, .. } => entries.len(),
            Table::Generic(entries) => entries.len(),
        }
    }

    fn get(&self, key: &MapKey) -> Option<MapValue> {
        match (self, key) {
            (Table::Ipcache { entries, .. }, MapKey::Ipcache(key)) => {
                entries.get(key).copied().map(MapValue::Ipcache)
            }
            (Table::Generic(entries), key) => entries.get(key).copied(),
            (Table::Ipcache { .. }, _) => None,
        }
    }

    fn contains_key(&self, key: &MapKey) -> bool {
        self.get(key).is_some()
    }

    /// Inserts an entry whose key and value belong to this map (the caller checked both).
    fn insert(&mut self, key: MapKey, value: MapValue) {
        match (self, key, value) {
            (Table::Ipcache { entries, built }, MapKey::Ipcache(key), MapValue::Ipcache(value)) => {
                if entries.insert(key, value).is_none() {
                    compact_grown(entries, built);
                }
            }
            (Table::Generic(entries), key, value) => {
                entries.insert(key, value);
            }
            (Table::Ipcache { .. }, key, _) => {
                tracing::error!(%key, "fake datapath: a non-ipcache entry aimed at the ipcache map");
            }
        }
    }

    fn remove(&mut self, key: &MapKey) -> bool {
        match (self, key) {
            (Table::Ipcache { entries, .. }, MapKey::Ipcache(key)) => entries.remove(key).is_some(),
            (Table::Generic(entries), key) => entries.remove(key).is_some(),
            (Table::Ipcache { .. }, _) => false,
        }
    }

    fn pop_first(&mut self) {
        match self {
            Table::Ipcache { entries, .. } => {
                entries.pop_first();
            }
            Table::Generic(entries) => {
                entries.pop_first();
            }
        }
    }

    fn to_vec(&self) -> Vec<(MapKey, MapValue)> {
        match self {
            Table::Ipcache { entries, .. } => entries
                .iter()
                .map(|(k, v)| (MapKey::Ipcache(*k), MapValue::Ipcache(*v)))
                .collect(),
            Table::Generic(entries) => entries.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&MapValue) -> bool) {
        match self {
            Table::Ipcache { entries, .. } => {
                entries.retain(|_, value| keep(&MapValue::Ipcache(*value)));
            }
            Table::Generic(entries) => entries.retain(|_, value| keep(value)),
        }
    }
}

#[derive(Debug)]
struct Inner {
    maps: BTreeMap<MapName, Table>,
    attachments: BTreeMap<EndpointId, EndpointAttachment>,
    metrics: BTreeMap<MetricKey, (u64, u64)>,
    monotonic_secs: u32,
    fail_next: BTreeMap<FaultPoint, usize>,
    failing_keys: BTreeSet<MapKey>,
    log: Vec<LogEntry>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            maps: MapName::GLOBAL
                .into_iter()
                .map(|map| (map, Table::for_map(map)))
                .collect(),
            attachments: BTreeMap::new(),
            metrics: BTreeMap::new(),
            monotonic_secs: FAKE_BOOT_SECS,
            fail_next: BTreeMap::new(),
            failing_keys: BTreeSet::new(),
            log: Vec::new(),
        }
    }
}

impl Inner {
    /// Consumes one injected failure at `point`, if any is left.
    fn take_fault(&mut self, point: FaultPoint) -> bool {
        match self.fail_next.get_mut(&point) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    fn record(&mut self, op: FakeOp, ok: bool) {
        self.log.push(LogEntry { op, ok });
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

fn apply_update(inner: &mut Inner, key: &MapKey, value: &MapValue) -> Result<(), DatapathError> {
    let map = key.map();
    if !key.accepts(value) {
        return Err(DatapathError::ValueKind {
            map,
            key: Box::new(*key),
            value_map_kind: value.kind(),
        });
    }
    if inner.take_fault(FaultPoint::Update(map)) || inner.failing_keys.contains(key) {
        return Err(DatapathError::MapUpdate {
            map,
            key: Box::new(*key),
            source: injected(),
        });
    }
    let entries = inner
        .maps
        .get_mut(&map)
        .ok_or(DatapathError::NoSuchMap { map })?;
    if !entries.contains_key(key) && entries.len() >= map.capacity() as usize {
        if !map.is_lru() {
            return Err(DatapathError::MapFull {
                map,
                capacity: map.capacity(),
            });
        }
        // The kernel evicts an approximately least recently used entry; which one does not
        // matter to the agent, so the fake evicts the smallest key.
        entries.pop_first();
    }
    entries.insert(*key, *value);
    Ok(())
}

/// The fake datapath. Cheap to clone; clones share the same maps, log and faults.
#[derive(Debug, Clone, Default)]
pub struct FakeDatapath {
    inner: Arc<Mutex<Inner>>,
}

impl FakeDatapath {
    /// Empty global maps, no policy maps, no attachments.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent data behind: every
        // method finishes its mutation before it could panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next `n` operations at `point` fail (on top of any already scheduled).
    pub fn fail_next(&self, point: FaultPoint, n: usize) {
        *self.lock().fail_next.entry(point).or_default() += n;
    }

    /// Makes every update and delete of `key` fail until [`heal_key`](Self::heal_key).
    pub fn fail_key(&self, key: MapKey) {
        self.lock().failing_keys.insert(key);
    }

    pub fn heal_key(&self, key: &MapKey) {
        self.lock().failing_keys.remove(key);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.fail_next.clear();
        inner.failing_keys.clear();
    }

    /// Every operation so far, in order.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.clone()
    }

    /// The operations that change state (updates, deletes, map creation and removal,
    /// attachments, garbage collection), including failed attempts.
    pub fn writes(&self) -> Vec<LogEntry> {
        self.lock()
            .log
            .iter()
            .filter(|entry| entry.op.is_write())
            .cloned()
            .collect()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// The entries of `map` without logging a read; empty for a policy map that does not exist.
    pub fn entries(&self, map: MapName) -> Vec<(MapKey, MapValue)> {
        self.lock()
            .maps
            .get(&map)
            .map(Table::to_vec)
            .unwrap_or_default()
    }

    /// One entry, without logging a read.
    pub fn get(&self, key: &MapKey) -> Option<MapValue> {
        self.lock()
            .maps
            .get(&key.map())
            .and_then(|entries| entries.get(key))
    }

    pub fn has_policy_map(&self, endpoint: EndpointId) -> bool {
        self.lock().maps.contains_key(&MapName::Policy(endpoint))
    }

    /// The current attachments, without logging a read.
    pub fn attachments(&self) -> Vec<EndpointAttachment> {
        self.lock().attachments.values().cloned().collect()
    }

    /// Sets the conntrack clock (seconds of the fake's monotonic time).
    pub fn set_monotonic_secs(&self, secs: u32) {
        self.lock().monotonic_secs = secs;
    }

    /// Counts traffic as the BPF programs would: adds to the counter of the entry's key.
    pub fn add_metric(&self, entry: MetricEntry) {
        let mut inner = self.lock();
        let counter = inner
            .metrics
            .entry((entry.reason, entry.direction, entry.line, entry.file))
            .or_default();
        counter.0 = counter.0.saturating_add(entry.packets);
        counter.1 = counter.1.saturating_add(entry.bytes);
    }
}

impl Datapath for FakeDatapath {
    fn update(&mut self, key: &MapKey, value: &MapValue) -> Result<(), DatapathError> {
        let mut inner = self.lock();
        let result = apply_update(&mut inner, key, value);
        inner.record(
            FakeOp::Update {
                key: *key,
                value: *value,
            },
            result.is_ok(),
        );
        result
    }

    fn delete(&mut self, key: &MapKey) -> Result<bool, DatapathError> {
        let mut inner = self.lock();
        let map = key.map();
        let result =
            if inner.take_fault(FaultPoint::Delete(map)) || inner.failing_keys.contains(key) {
                Err(DatapathError::MapDelete {
                    map,
                    key: Box::new(*key),
                    source: injected(),
                })
            } else {
                Ok(inner
                    .maps
                    .get_mut(&map)
                    .is_some_and(|entries| entries.remove(key)))
            };
        inner.record(FakeOp::Delete { key: *key }, result.is_ok());
        result
    }

    fn list(&self, map: MapName) -> Result<Vec<(MapKey, MapValue)>, DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::List(map)) {
            Err(DatapathError::MapList {
                map,
                source: injected(),
            })
        } else {
            inner
                .maps
                .get(&map)
                .map(Table::to_vec)
                .ok_or(DatapathError::NoSuchMap { map })
        };
        inner.record(FakeOp::List { map }, result.is_ok());
        result
    }

    fn policy_maps(&self) -> Result<Vec<EndpointId>, DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::ListPolicyMaps) {
            Err(DatapathError::PolicyMapList { source: injected() })
        } else {
            Ok(inner
                .maps
                .keys()
                .filter_map(|map| match map {
                    MapName::Policy(endpoint) => Some(*endpoint),
                    _ => None,
                })
                .collect())
        };
        inner.record(FakeOp::ListPolicyMaps, result.is_ok());
        result
    }

    fn create_policy_map(&mut self, endpoint: EndpointId) -> Result<(), DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::CreatePolicyMap) {
            Err(DatapathError::PolicyMapCreate {
                endpoint,
                source: injected(),
            })
        } else {
            let map = MapName::Policy(endpoint);
            inner.maps.entry(map).or_insert_with(|| Table::for_map(map));
            Ok(())
        };
        inner.record(FakeOp::CreatePolicyMap { endpoint }, result.is_ok());
        result
    }

    fn remove_policy_map(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::RemovePolicyMap) {
            Err(DatapathError::PolicyMapRemove {
                endpoint,
                source: injected(),
            })
        } else {
            Ok(inner.maps.remove(&MapName::Policy(endpoint)).is_some())
        };
        inner.record(FakeOp::RemovePolicyMap { endpoint }, result.is_ok());
        result
    }

    fn attach_endpoint(&mut self, attachment: &EndpointAttachment) -> Result<(), DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::Attach) {
            Err(DatapathError::Attach {
                endpoint: attachment.endpoint,
                ifname: attachment.ifname.clone(),
                source: injected(),
            })
        } else {
            inner
                .attachments
                .insert(attachment.endpoint, attachment.clone());
            Ok(())
        };
        inner.record(FakeOp::Attach(attachment.clone()), result.is_ok());
        result
    }

    fn detach_endpoint(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::Detach) {
            Err(DatapathError::Detach {
                endpoint,
                source: injected(),
            })
        } else {
            Ok(inner.attachments.remove(&endpoint).is_some())
        };
        inner.record(FakeOp::Detach { endpoint }, result.is_ok());
        result
    }

    fn conntrack_gc(&mut self) -> Result<CtGcStats, DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::ConntrackGc) {
            Err(DatapathError::ConntrackGc {
                map: MapName::Ct4Global,
                source: injected(),
            })
        } else {
            let now = inner.monotonic_secs;
            let mut stats = CtGcStats::default();
            for map in [MapName::Ct4Global, MapName::CtAny4Global] {
                if let Some(entries) = inner.maps.get_mut(&map) {
                    let before = entries.len();
                    entries.retain(|value| match value {
                        MapValue::Conntrack(entry) => entry.lifetime >= now,
                        _ => true,
                    });
                    stats.deleted += (before - entries.len()) as u64;
                    stats.alive += entries.len() as u64;
                }
            }
            Ok(stats)
        };
        inner.record(FakeOp::ConntrackGc, result.is_ok());
        result
    }

    fn read_metrics(&self) -> Result<Vec<MetricEntry>, DatapathError> {
        let mut inner = self.lock();
        let result = if inner.take_fault(FaultPoint::ReadMetrics) {
            Err(DatapathError::ReadMetrics { source: injected() })
        } else {
            Ok(inner
                .metrics
                .iter()
                .map(
                    |(&(reason, direction, line, file), &(packets, bytes))| MetricEntry {
                        reason,
                        direction,
                        line,
                        file,
                        packets,
                        bytes,
                    },
                )
                .collect())
        };
        inner.record(FakeOp::ReadMetrics, result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use model::identity::NumericIdentity;

    use super::*;
    use crate::api::{CtEntry, CtKey4, CtTupleFlags, Protocol};

    fn ipcache(n: u8) -> (MapKey, MapValue) {
        (
            MapKey::Ipcache(IpcacheKey::host(Ipv4Addr::new(10, 0, 0, n).into())),
            MapValue::Ipcache(RemoteEndpointInfo::identity(NumericIdentity::new(
                1000 + u32::from(n),
            ))),
        )
    }

    #[test]
    fn next_n_updates_of_a_map_fail_then_succeed() {
        let mut fake = FakeDatapath::new();
        fake.fail_next(FaultPoint::Update(MapName::Ipcache), 2);
        let (key, value) = ipcache(1);
        assert!(matches!(
            fake.update(&key, &value),
            Err(DatapathError::MapUpdate {
                map: MapName::Ipcache,
                ..
            })
        ));
        assert!(fake.update(&key, &value).is_err());
        fake.update(&key, &value).unwrap();
        assert_eq!(fake.get(&key), Some(value));
        let oks: Vec<bool> = fake.writes().iter().map(|e| e.ok).collect();
        assert_eq!(oks, [false, false, true]);
    }

    #[test]
    fn a_failing_key_fails_until_healed_and_other_keys_pass() {
        let mut fake = FakeDatapath::new();
        let (key, value) = ipcache(1);
        let (other, other_value) = ipcache(2);
        fake.fail_key(key);
        assert!(fake.update(&key, &value).is_err());
        assert!(fake.delete(&key).is_err());
        fake.update(&other, &other_value).unwrap();
        fake.heal_key(&key);
        fake.update(&key, &value).unwrap();
    }

    #[test]
    fn faults_on_one_map_leave_others_alone() {
        let mut fake = FakeDatapath::new();
        fake.fail_next(FaultPoint::Update(MapName::Lxc), 1);
        let (key, value) = ipcache(1);
        fake.update(&key, &value).unwrap();
    }

    #[test]
    fn reads_are_logged_but_are_not_writes() {
        let mut fake = FakeDatapath::new();
        let (key, value) = ipcache(1);
        fake.update(&key, &value).unwrap();
        fake.list(MapName::Ipcache).unwrap();
        fake.read_metrics().unwrap();
        assert_eq!(fake.log().len(), 3);
        assert_eq!(fake.writes().len(), 1);
        fake.clear_log();
        assert!(fake.log().is_empty());
    }

    #[test]
    fn ipcache_entries_are_kept_compact_and_read_back_whole() {
        // Every node of a simulation holds every address of its cluster: the ipcache table
        // must stay in its own types, not the generic 68-byte key and value.
        assert!(
            std::mem::size_of::<IpcacheKey>() + std::mem::size_of::<RemoteEndpointInfo>() <= 44
        );
        let mut fake = FakeDatapath::new();
        let (key, value) = ipcache(3);
        fake.update(&key, &value).unwrap();
        assert_eq!(fake.get(&key), Some(value));
        assert_eq!(fake.list(MapName::Ipcache).unwrap(), [(key, value)]);
        assert_eq!(fake.entries(MapName::Ipcache), [(key, value)]);
        assert!(fake.delete(&key).unwrap());
        assert!(!fake.delete(&key).unwrap());
        assert!(fake.entries(MapName::Ipcache).is_empty());
    }

    #[test]
    fn clones_share_state() {
        let fake = FakeDatapath::new();
        let mut other = fake.clone();
        let (key, value) = ipcache(1);
        other.update(&key, &value).unwrap();
        assert_eq!(fake.get(&key), Some(value));
    }

    #[test]
    fn full_lru_map_evicts_instead_of_failing() {
        let mut fake = FakeDatapath::new();
        let key = |n: u32| {
            MapKey::Conntrack(CtKey4 {
                daddr: Ipv4Addr::from(n),
                saddr: Ipv4Addr::new(10, 0, 0, 1),
                dport: 80,
                sport: 1234,
                protocol: Protocol::UDP,
                flags: CtTupleFlags::OUT,
            })
        };
        let value = MapValue::Conntrack(CtEntry::default());
        let capacity = MapName::CtAny4Global.capacity();
        for n in 0..=capacity {
            fake.update(&key(n), &value).unwrap();
        }
        assert_eq!(fake.entries(MapName::CtAny4Global).len(), capacity as usize);
        assert_eq!(fake.get(&key(capacity)), Some(value));
    }

    #[test]
    fn metrics_accumulate_per_key() {
        let fake = FakeDatapath::new();
        let drop = MetricEntry {
            reason: 133,
            direction: MetricDirection::Ingress,
            line: 10,
            file: 0,
            packets: 1,
            bytes: 60,
        };
        fake.add_metric(drop);
        fake.add_metric(drop);
        fake.add_metric(MetricEntry { reason: 0, ..drop });
        let metrics = fake.read_metrics().unwrap();
        assert_eq!(metrics.len(), 2);
        assert_eq!(
            (metrics[1].reason, metrics[1].packets, metrics[1].bytes),
            (133, 2, 120)
        );
    }

    #[test]
    fn conntrack_gc_follows_the_fake_clock() {
        let mut fake = FakeDatapath::new();
        let key = MapKey::Conntrack(CtKey4 {
            daddr: Ipv4Addr::new(10, 0, 0, 2),
            saddr: Ipv4Addr::new(10, 0, 0, 1),
            dport: 80,
            sport: 1234,
            protocol: Protocol::TCP,
            flags: CtTupleFlags::OUT,
        });
        let entry = CtEntry {
            lifetime: 100,
            ..CtEntry::default()
        };
        fake.update(&key, &MapValue::Conntrack(entry)).unwrap();
        fake.set_monotonic_secs(100);
        assert_eq!(
            fake.conntrack_gc().unwrap(),
            CtGcStats {
                alive: 1,
                deleted: 0
            }
        );
        fake.set_monotonic_secs(101);
        assert_eq!(
            fake.conntrack_gc().unwrap(),
            CtGcStats {
                alive: 0,
                deleted: 1
            }
        );
    }
}
