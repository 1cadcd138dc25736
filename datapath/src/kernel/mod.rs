//! [`KernelDatapath`]: the [`Datapath`] over the real kernel objects — the maps and programs of
//! [`BpfObjects`], pinned under a bpf root, and the endpoint links of [`LinkPins`].
//!
//! It owns the translation at the boundary: domain keys and values become the `#[repr(C)]`
//! layouts of [`crate::maps`] ([`convert`]), aya's and the kernel's errors become
//! [`DatapathError`]s naming the map or endpoint (`E2BIG`/`ENOSPC` on insert is
//! [`DatapathError::MapFull`], a missing key on delete is `Ok(false)`), and listings read back
//! whatever the kernel holds, which is how a restarted agent adopts the pinned state. Kernel
//! entries no domain value describes cannot have been written through this type; listings skip
//! them with a warning rather than hide the rest of the map.

pub mod convert;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use aya::maps::MapError;
use tracing::{debug, warn};

use crate::api::{
    CtGcStats, Datapath, DatapathError, EndpointAttachment, EndpointId, MapKey, MapName, MapValue,
    MetricDirection, MetricEntry,
};
use crate::attach::LinkPins;
use crate::error::BpfError;
use crate::loader::{BpfObjects, LoadOptions, PolicyMap};
use crate::maps::ct::{CtEntry, CtTuple4};
use crate::maps::metrics::{METRICS_FWD_SIZE, REASON_FORWARDED};
use convert::DecodeError;

/// The kernel implementation of [`Datapath`].
#[derive(Debug)]
pub struct KernelDatapath {
    objects: BpfObjects,
    /// `None` when the maps are not pinned: attaching then fails, since an unpinned link would
    /// not survive the agent.
    links: Option<LinkPins>,
    /// Entries of each lb4 map, as loaded (`--bpf-lb-map-max`).
    lb_capacity: u32,
    /// Per-endpoint policy maps opened so far; the outer map stays the source of truth.
    policy_maps: BTreeMap<EndpointId, PolicyMap>,
}

impl KernelDatapath {
    /// Loads the programs and creates (or adopts, under `options.bpf_root`) their maps.
    pub fn load(options: &LoadOptions) -> Result<Self, BpfError> {
        Ok(Self::new(BpfObjects::load(options)?, options))
    }

    /// Wraps objects loaded with `options`.
    pub fn new(objects: BpfObjects, options: &LoadOptions) -> Self {
        KernelDatapath {
            objects,
            links: options.bpf_root.as_deref().map(LinkPins::new),
            lb_capacity: options.lb_map_max_entries,
            policy_maps: BTreeMap::new(),
        }
    }

    /// The loaded programs and maps (for the event reader and diagnostics).
    pub fn objects(&self) -> &BpfObjects {
        &self.objects
    }

    /// The endpoints whose programs are attached through pinned links, including those a
    /// previous agent attached.
    pub fn attached_endpoints(&self) -> io::Result<Vec<EndpointId>> {
        match &self.links {
            Some(links) => links.attached(),
            None => Ok(Vec::new()),
        }
    }

    fn capacity(&self, map: MapName) -> u32 {
        match map {
            MapName::Lb4Services | MapName::Lb4Backends | MapName::Lb4ReverseNat => {
                self.lb_capacity
            }
            other => other.capacity(),
        }
    }

    /// The policy map of `endpoint`, if it has one.
    fn policy_map(&mut self, endpoint: EndpointId) -> Result<Option<&mut PolicyMap>, BpfError> {
        if !self.policy_maps.contains_key(&endpoint) {
            match self.objects.maps.policy.get(endpoint)? {
                Some(map) => {
                    self.policy_maps.insert(endpoint, map);
                }
                None => return Ok(None),
            }
        }
        Ok(self.policy_maps.get_mut(&endpoint))
    }

    fn update_error(&self, key: &MapKey, err: MapError) -> DatapathError {
        let map = key.map();
        let source = map_io_error(err);
        if matches!(source.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) {
            return DatapathError::MapFull {
                map,
                capacity: self.capacity(map),
            };
        }
        DatapathError::MapUpdate {
            map,
            key: Box::new(*key),
            source,
        }
    }

    fn write(&mut self, key: &MapKey, value: &MapValue) -> Result<(), DatapathError> {
        let encode_error = |err: convert::EncodeError| DatapathError::MapUpdate {
            map: key.map(),
            key: Box::new(*key),
            source: io::Error::new(io::ErrorKind::InvalidInput, err),
        };
        let maps = &mut self.objects.maps;
        let result = match (key, value) {
            (MapKey::Policy { endpoint, key: pk }, MapValue::Policy(entry)) => {
                let map = self
                    .policy_map(*endpoint)
                    .map_err(|err| policy_io(key, err))?
                    .ok_or(DatapathError::NoSuchMap { map: key.map() })?;
                map.insert(
                    &convert::policy_key(pk),
                    convert::policy_entry(pk, entry),
                    0,
                )
            }
            (MapKey::Ipcache(k), MapValue::Ipcache(v)) => maps.ipcache.insert(
                &convert::ipcache_key(k),
                convert::remote_endpoint_info(v),
                0,
            ),
            (MapKey::Lxc(k), MapValue::Lxc(v)) => {
                maps.endpoints
                    .insert(convert::endpoint_key(k), convert::endpoint_info(v), 0)
            }
            (MapKey::Service(k), MapValue::Service(v)) => {
                let raw = convert::service_value(k, v).map_err(encode_error)?;
                maps.lb4_services.insert(convert::service_key(k), raw, 0)
            }
            (MapKey::Backend(id), MapValue::Backend(v)) => {
                maps.lb4_backends
                    .insert(id.get(), convert::backend_value(v), 0)
            }
            (MapKey::RevNat(id), MapValue::RevNat(v)) => {
                maps.lb4_reverse_nat
                    .insert(convert::rev_nat_key(*id), convert::rev_nat_value(v), 0)
            }
            (MapKey::Conntrack(k), MapValue::Conntrack(v)) => {
                let map = match key.map() {
                    MapName::Ct4Global => &mut maps.ct4,
                    _ => &mut maps.ct_any4,
                };
                map.insert(convert::ct_key(k), convert::ct_entry(v), 0)
            }
            _ => {
                return Err(DatapathError::ValueKind {
                    map: key.map(),
                    key: Box::new(*key),
                    value_map_kind: value.kind(),
                });
            }
        };
        result.map_err(|err| self.update_error(key, err))
    }

    fn remove(&mut self, key: &MapKey) -> Result<bool, DatapathError> {
        let maps = &mut self.objects.maps;
        let result = match key {
            MapKey::Policy { endpoint, key: pk } => {
                let Some(map) = self
                    .policy_map(*endpoint)
                    .map_err(|err| policy_io(key, err))?
                else {
                    return Ok(false);
                };
                map.remove(&convert::policy_key(pk))
            }
            MapKey::Ipcache(k) => maps.ipcache.remove(&convert::ipcache_key(k)),
            MapKey::Lxc(k) => maps.endpoints.remove(&convert::endpoint_key(k)),
            MapKey::Service(k) => maps.lb4_services.remove(&convert::service_key(k)),
            MapKey::Backend(id) => maps.lb4_backends.remove(&id.get()),
            MapKey::RevNat(id) => maps.lb4_reverse_nat.remove(&convert::rev_nat_key(*id)),
            MapKey::Conntrack(k) => match key.map() {
                MapName::Ct4Global => maps.ct4.remove(&convert::ct_key(k)),
                _ => maps.ct_any4.remove(&convert::ct_key(k)),
            },
        };
        match result {
            Ok(()) => Ok(true),
            Err(err) => {
                let source = map_io_error(err);
                if source.raw_os_error() == Some(libc::ENOENT) {
                    Ok(false)
                } else {
                    Err(DatapathError::MapDelete {
                        map: key.map(),
                        key: Box::new(*key),
                        source,
                    })
                }
            }
        }
    }

    fn read(&self, map: MapName) -> Result<Vec<(MapKey, MapValue)>, DatapathError> {
        let list_error = |err: MapError| DatapathError::MapList {
            map,
            source: map_io_error(err),
        };
        let maps = &self.objects.maps;
        let mut entries = match map {
            MapName::Policy(endpoint) => {
                let policy = match self.policy_maps.get(&endpoint) {
                    Some(cached) => collect(cached.iter(), map, |k, v| {
                        let key = convert::policy_key_from(k)?;
                        Ok((
                            MapKey::Policy { endpoint, key },
                            MapValue::Policy(convert::policy_entry_from(v)),
                        ))
                    }),
                    None => {
                        let opened = maps
                            .policy
                            .get(endpoint)
                            .map_err(|err| DatapathError::MapList {
                                map,
                                source: io::Error::other(err),
                            })?
                            .ok_or(DatapathError::NoSuchMap { map })?;
                        collect(opened.iter(), map, |k, v| {
                            let key = convert::policy_key_from(k)?;
                            Ok((
                                MapKey::Policy { endpoint, key },
                                MapValue::Policy(convert::policy_entry_from(v)),
                            ))
                        })
                    }
                };
                policy.map_err(list_error)?
            }
            MapName::Ipcache => collect(maps.ipcache.iter(), map, |k, v| {
                Ok((
                    MapKey::Ipcache(convert::ipcache_key_from(k)?),
                    MapValue::Ipcache(convert::remote_endpoint_info_from(v)),
                ))
            })
            .map_err(list_error)?,
            MapName::Lxc => collect(maps.endpoints.iter(), map, |k, v| {
                Ok((
                    MapKey::Lxc(convert::endpoint_key_from(k)?),
                    MapValue::Lxc(convert::endpoint_info_from(v)),
                ))
            })
            .map_err(list_error)?,
            MapName::Lb4Services => collect(maps.lb4_services.iter(), map, |k, v| {
                let key = convert::service_key_from(k)?;
                let value = convert::service_value_from(&key, v)?;
                Ok((MapKey::Service(key), MapValue::Service(value)))
            })
            .map_err(list_error)?,
            MapName::Lb4Backends => collect(maps.lb4_backends.iter(), map, |k, v| {
                Ok((
                    MapKey::Backend(crate::api::BackendId::new(*k)),
                    MapValue::Backend(convert::backend_value_from(v)?),
                ))
            })
            .map_err(list_error)?,
            MapName::Lb4ReverseNat => collect(maps.lb4_reverse_nat.iter(), map, |k, v| {
                Ok((
                    MapKey::RevNat(convert::rev_nat_key_from(*k)),
                    MapValue::RevNat(convert::rev_nat_value_from(v)),
                ))
            })
            .map_err(list_error)?,
            MapName::Ct4Global => collect(maps.ct4.iter(), map, ct_pair).map_err(list_error)?,
            MapName::CtAny4Global => {
                collect(maps.ct_any4.iter(), map, ct_pair).map_err(list_error)?
            }
        };
        entries.sort_by_key(|(key, _)| *key);
        Ok(entries)
    }

    /// Removes the expired entries of one conntrack map; returns (alive, deleted).
    fn gc_map(&mut self, map: MapName, now: u32) -> Result<(u64, u64), DatapathError> {
        let gc_error = |err: MapError| DatapathError::ConntrackGc {
            map,
            source: map_io_error(err),
        };
        let ct = match map {
            MapName::Ct4Global => &mut self.objects.maps.ct4,
            _ => &mut self.objects.maps.ct_any4,
        };
        // Collect first: deleting while walking a hash map restarts the walk.
        let mut total = 0u64;
        let mut expired: Vec<CtTuple4> = Vec::new();
        for item in ct.iter() {
            let (key, entry): (CtTuple4, CtEntry) = match item {
                Ok(pair) => pair,
                Err(err) => return Err(gc_error(err)),
            };
            total += 1;
            if entry.lifetime < now {
                expired.push(key);
            }
        }
        let mut deleted = 0u64;
        for key in &expired {
            match ct.remove(key) {
                Ok(()) => deleted += 1,
                Err(err) => {
                    let source = map_io_error(err);
                    if source.raw_os_error() != Some(libc::ENOENT) {
                        return Err(DatapathError::ConntrackGc { map, source });
                    }
                }
            }
        }
        Ok((total.saturating_sub(deleted), deleted))
    }
}

fn ct_pair(k: &CtTuple4, v: &CtEntry) -> Result<(MapKey, MapValue), DecodeError> {
    Ok((
        MapKey::Conntrack(convert::ct_key_from(k)),
        MapValue::Conntrack(convert::ct_entry_from(v)?),
    ))
}

/// Decodes every entry `entries` yields; entries that do not decode are logged and skipped.
fn collect<K, V>(
    entries: impl Iterator<Item = Result<(K, V), MapError>>,
    map: MapName,
    decode: impl Fn(&K, &V) -> Result<(MapKey, MapValue), DecodeError>,
) -> Result<Vec<(MapKey, MapValue)>, MapError> {
    let mut out = Vec::new();
    for entry in entries {
        let (key, value) = entry?;
        match decode(&key, &value) {
            Ok(pair) => out.push(pair),
            Err(err) => {
                warn!(%map, error = %err, "skipping a kernel map entry no domain value describes")
            }
        }
    }
    Ok(out)
}

/// The kernel's error behind an aya map error, with its errno intact (the [`DatapathError`]
/// variant already names the operation and map).
fn map_io_error(err: MapError) -> io::Error {
    match err {
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. }) => io_error,
        MapError::KeyNotFound => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other),
    }
}

fn policy_io(key: &MapKey, err: BpfError) -> DatapathError {
    DatapathError::MapUpdate {
        map: key.map(),
        key: Box::new(*key),
        source: io::Error::other(err),
    }
}

/// Seconds of `CLOCK_MONOTONIC`, the clock the programs stamp conntrack lifetimes with
/// (`bpf_ktime_get_coarse_ns() / NSEC_PER_SEC`).
fn monotonic_secs() -> io::Result<u32> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The programs truncate the same way (u32 seconds, good for 136 years of uptime).
    Ok(ts.tv_sec as u32)
}

/// The endpoints with a pinned policy map under `dir`.
fn pinned_policy_maps(dir: &Path) -> io::Result<Vec<EndpointId>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(Ok(MapName::Policy(endpoint))) = name.to_str().map(str::parse::<MapName>) {
            out.push(endpoint);
        }
    }
    Ok(out)
}

impl Datapath for KernelDatapath {
    fn update(&mut self, key: &MapKey, value: &MapValue) -> Result<(), DatapathError> {
        if !key.accepts(value) {
            return Err(DatapathError::ValueKind {
                map: key.map(),
                key: Box::new(*key),
                value_map_kind: value.kind(),
            });
        }
        self.write(key, value)
    }

    fn delete(&mut self, key: &MapKey) -> Result<bool, DatapathError> {
        self.remove(key)
    }

    fn list(&self, map: MapName) -> Result<Vec<(MapKey, MapValue)>, DatapathError> {
        self.read(map)
    }

    fn policy_maps(&self) -> Result<Vec<EndpointId>, DatapathError> {
        let candidates: Vec<EndpointId> = match self.objects.pin_dir() {
            Some(dir) => {
                pinned_policy_maps(dir).map_err(|source| DatapathError::PolicyMapList { source })?
            }
            // Unpinned maps can only have been created by this process.
            None => self.policy_maps.keys().copied().collect(),
        };
        let mut out = Vec::new();
        for endpoint in candidates {
            // A pin the outer map does not point to is not enforced; creating it again
            // installs it.
            let installed = self
                .objects
                .maps
                .policy
                .get(endpoint)
                .map_err(|err| DatapathError::PolicyMapList {
                    source: io::Error::other(err),
                })?
                .is_some();
            if installed {
                out.push(endpoint);
            }
        }
        out.sort();
        Ok(out)
    }

    fn create_policy_map(&mut self, endpoint: EndpointId) -> Result<(), DatapathError> {
        // PolicyMaps::create adopts an existing pin with its entries.
        let map = self.objects.maps.policy.create(endpoint).map_err(|err| {
            DatapathError::PolicyMapCreate {
                endpoint,
                source: io::Error::other(err),
            }
        })?;
        self.policy_maps.insert(endpoint, map);
        Ok(())
    }

    fn remove_policy_map(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        let remove_error = |err: BpfError| DatapathError::PolicyMapRemove {
            endpoint,
            source: io::Error::other(err),
        };
        self.policy_maps.remove(&endpoint);
        let installed = self
            .objects
            .maps
            .policy
            .get(endpoint)
            .map_err(remove_error)?
            .is_some();
        let pinned = self.objects.pin_dir().is_some_and(|dir| {
            dir.join(MapName::Policy(endpoint).to_string())
                .try_exists()
                .unwrap_or(false)
        });
        self.objects
            .maps
            .policy
            .remove(endpoint)
            .map_err(remove_error)?;
        Ok(installed || pinned)
    }

    fn attach_endpoint(&mut self, attachment: &EndpointAttachment) -> Result<(), DatapathError> {
        let attach_error = |source: io::Error| DatapathError::Attach {
            endpoint: attachment.endpoint,
            ifname: attachment.ifname.clone(),
            source,
        };
        let links = self.links.as_ref().ok_or_else(|| {
            attach_error(io::Error::new(
                io::ErrorKind::Unsupported,
                "the maps are not pinned, so there is no bpf root to pin links under",
            ))
        })?;
        links
            .attach(
                &mut self.objects,
                attachment.endpoint,
                &attachment.ifname,
                attachment.netns.as_deref(),
            )
            .map_err(attach_error)
    }

    fn detach_endpoint(&mut self, endpoint: EndpointId) -> Result<bool, DatapathError> {
        match &self.links {
            Some(links) => links
                .detach(endpoint)
                .map_err(|source| DatapathError::Detach { endpoint, source }),
            None => Ok(false),
        }
    }

    fn conntrack_gc(&mut self) -> Result<CtGcStats, DatapathError> {
        let now = monotonic_secs().map_err(|source| DatapathError::ConntrackGc {
            map: MapName::Ct4Global,
            source,
        })?;
        let mut stats = CtGcStats::default();
        for map in [MapName::Ct4Global, MapName::CtAny4Global] {
            let (alive, deleted) = self.gc_map(map, now)?;
            stats.alive += alive;
            stats.deleted += deleted;
        }
        debug!(
            alive = stats.alive,
            deleted = stats.deleted,
            now,
            "conntrack gc pass"
        );
        Ok(stats)
    }

    fn read_metrics(&self) -> Result<Vec<MetricEntry>, DatapathError> {
        let read_error = |err: MapError| DatapathError::ReadMetrics {
            source: map_io_error(err),
        };
        let maps = &self.objects.maps;
        let mut out = Vec::new();
        // Forwarded packets are counted per direction in their own array.
        for dir in 0..METRICS_FWD_SIZE {
            let values = maps.metrics_fwd.get(&dir, 0).map_err(read_error)?;
            let (packets, bytes) = values
                .iter()
                .fold((0u64, 0u64), |(p, b), v| (p + v.count, b + v.bytes));
            if packets > 0 {
                out.push(MetricEntry {
                    reason: REASON_FORWARDED,
                    // Direction codes are 0-3.
                    direction: MetricDirection::from_bits(dir as u8),
                    line: 0,
                    file: 0,
                    packets,
                    bytes,
                });
            }
        }
        for item in maps.metrics.iter() {
            let (key, values) = match item {
                Ok(pair) => pair,
                Err(err) => return Err(read_error(err)),
            };
            let (packets, bytes) = values
                .iter()
                .fold((0u64, 0u64), |(p, b), v| (p + v.count, b + v.bytes));
            out.push(MetricEntry {
                reason: key.reason,
                direction: MetricDirection::from_bits(key.dir),
                line: key.line,
                file: key.file,
                packets,
                bytes,
            });
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_survives_the_conversion() {
        for errno in [libc::E2BIG, libc::ENOSPC, libc::ENOENT] {
            let err = MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: io::Error::from_raw_os_error(errno),
            });
            assert_eq!(map_io_error(err).raw_os_error(), Some(errno));
        }
        assert_eq!(
            map_io_error(MapError::KeyNotFound).raw_os_error(),
            Some(libc::ENOENT)
        );
    }
}
