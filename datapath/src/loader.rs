//! Loads the embedded `bpf_lxc.o`: creates its maps (pinned under `<bpf-root>/tc/globals/` when
//! a bpf root is given, adopting compatible pins left by a previous agent), loads both programs
//! into the kernel and hands out typed map handles. Attaching is the caller's business.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{
    ArrayOfMaps, HashMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuHashMap,
    RingBuf,
};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, warn};

use crate::error::DatapathError;
use crate::maps::ct::{CtEntry, CtTuple4};
use crate::maps::endpoint::{EndpointInfo, EndpointKey};
use crate::maps::events::EventsRateLimit;
use crate::maps::ipcache::{IpcacheKey, RemoteEndpointInfo};
use crate::maps::lb::{Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service};
use crate::maps::metrics::{MetricDirection, MetricsKey, MetricsValue};
use crate::maps::policy::{PolicyEntry, PolicyKey};
use crate::maps::{BPF_F_NO_PREALLOC, EndpointId, GLOBAL_MAPS, MapSpec, POLICY_MAP_SIZE, names};

/// The compiled endpoint programs.
static BPF_LXC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_lxc.o"));

/// The benchmark yardsticks (`bench_empty`, `bench_hash_lookup` and the `bench_hash` map).
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.o"));

const OBJECT: &str = "bpf_lxc.o";
/// Program on tc ingress of the host-side veth (traffic leaving the pod).
pub const FROM_CONTAINER: &str = "cil_from_container";
/// Program on tc egress of the host-side veth (traffic entering the pod).
pub const TO_CONTAINER: &str = "cil_to_container";

/// Upstream's default `--bpf-lb-map-max`.
pub const DEFAULT_LB_MAP_MAX_ENTRIES: u32 = 65536;

/// How to load the programs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Pin every map under `<bpf_root>/tc/globals/` (upstream's layout), adopting pins that
    /// already exist with the same layout. `None` keeps the maps private to this load, which is
    /// what tests and benchmarks want.
    pub bpf_root: Option<PathBuf>,
    /// Monitor events per second and per CPU; 0 disables the limit.
    pub events_rate_per_sec: u64,
    /// Events a CPU may emit in a burst.
    pub events_burst: u64,
    /// Entries of each load-balancing map (upstream `--bpf-lb-map-max`, default 65536). A
    /// service takes one entry for its frontend and one per backend slot.
    pub lb_map_max_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            bpf_root: None,
            events_rate_per_sec: 1000,
            events_burst: 1000,
            lb_map_max_entries: DEFAULT_LB_MAP_MAX_ENTRIES,
        }
    }
}

impl LoadOptions {
    /// The directory maps are pinned in, if any.
    pub fn pin_dir(&self) -> Option<PathBuf> {
        self.bpf_root
            .as_ref()
            .map(|root| root.join("tc").join("globals"))
    }
}

/// A per-endpoint policy map.
pub type PolicyMap = LpmTrie<MapData, PolicyKey, PolicyEntry>;

/// The outer policy map and the per-endpoint inner maps it points to.
#[derive(Debug)]
pub struct PolicyMaps {
    outer: Map,
    pin_dir: Option<PathBuf>,
}

impl PolicyMaps {
    fn outer_data(&self) -> Result<&MapData, DatapathError> {
        match &self.outer {
            Map::ArrayOfMaps(data) => Ok(data),
            _ => Err(DatapathError::MapLayout {
                name: names::POLICY.to_owned(),
                source: MapError::InvalidMapType { map_type: 0 },
            }),
        }
    }

    /// Creates the policy map of endpoint `id` (or adopts its pin when pinning and a compatible
    /// one exists) and installs it, so the programs enforce it from now on. Until an endpoint has
    /// a map, its packets that need a policy decision are dropped (`DROP_EP_NOT_READY`).
    pub fn create(&mut self, id: EndpointId) -> Result<PolicyMap, DatapathError> {
        let name = names::endpoint_policy(id);
        let map = match &self.pin_dir {
            Some(dir) => {
                let path = dir.join(&name);
                remove_if_incompatible(&path, &inner_policy_spec())?;
                if !path.exists() {
                    let fresh = create_policy_map(&name)?;
                    fresh.pin(&path).map_err(|source| DatapathError::Pin {
                        name: name.clone(),
                        path: path.clone(),
                        source,
                    })?;
                }
                open_pinned_policy_map(&name, &path)?
            }
            None => create_policy_map(&name)?,
        };
        let mut outer = ArrayOfMaps::<&mut MapData, PolicyMap>::try_from(&mut self.outer).map_err(
            |source| DatapathError::MapLayout {
                name: names::POLICY.to_owned(),
                source,
            },
        )?;
        outer
            .set(u32::from(id.get()), &map, 0)
            .map_err(|source| map_error("update", names::POLICY, source))?;
        Ok(map)
    }

    /// The policy map installed for endpoint `id`, if any.
    pub fn get(&self, id: EndpointId) -> Result<Option<PolicyMap>, DatapathError> {
        let outer =
            ArrayOfMaps::<&MapData, PolicyMap>::try_from(&self.outer).map_err(|source| {
                DatapathError::MapLayout {
                    name: names::POLICY.to_owned(),
                    source,
                }
            })?;
        match outer.get(&u32::from(id.get()), 0) {
            Ok(map) => Ok(Some(map)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_error("lookup", names::POLICY, source)),
        }
    }

    /// Uninstalls the policy map of endpoint `id` and removes its pin.
    pub fn remove(&mut self, id: EndpointId) -> Result<(), DatapathError> {
        let outer = self.outer_data()?;
        match crate::sys::map_delete_u32(outer.fd().as_fd(), u32::from(id.get())) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(io_error) => {
                return Err(map_error(
                    "delete",
                    names::POLICY,
                    MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_delete_elem",
                        io_error,
                    }),
                ));
            }
        }
        if let Some(dir) = &self.pin_dir {
            let path = dir.join(names::endpoint_policy(id));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(DatapathError::StalePin { path, source }),
            }
        }
        Ok(())
    }
}

fn inner_policy_spec() -> MapSpec {
    MapSpec {
        name: "cilium_policy_v2_<epid>",
        map_type: crate::maps::map_type::LPM_TRIE,
        key_size: size_of::<aya::maps::lpm_trie::Key<PolicyKey>>() as u32,
        value_size: size_of::<PolicyEntry>() as u32,
        max_entries: POLICY_MAP_SIZE,
        flags: BPF_F_NO_PREALLOC,
    }
}

fn create_policy_map(name: &str) -> Result<PolicyMap, DatapathError> {
    PolicyMap::create(POLICY_MAP_SIZE, BPF_F_NO_PREALLOC)
        .map_err(|source| map_error("create", name, source))
}

fn open_pinned_policy_map(name: &str, path: &Path) -> Result<PolicyMap, DatapathError> {
    let data = MapData::from_pin(path).map_err(|source| map_error("open pin", name, source))?;
    let map = Map::from_map_data(data).map_err(|source| map_error("open pin", name, source))?;
    PolicyMap::try_from(map).map_err(|source| DatapathError::MapLayout {
        name: name.to_owned(),
        source,
    })
}

/// Typed handles on every shared map.
pub struct DatapathMaps {
    /// `cilium_lxc`.
    pub endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    /// `cilium_ipcache_v2`.
    pub ipcache: LpmTrie<MapData, IpcacheKey, RemoteEndpointInfo>,
    /// `cilium_policy_v2` and the per-endpoint maps.
    pub policy: PolicyMaps,
    /// `cilium_lb4_services_v2`.
    pub lb4_services: HashMap<MapData, Lb4Key, Lb4Service>,
    /// `cilium_lb4_backends_v3`, keyed by backend id.
    pub lb4_backends: HashMap<MapData, u32, Lb4Backend>,
    /// `cilium_lb4_reverse_nat`, keyed by `RevNatIndex::to_key`.
    pub lb4_reverse_nat: HashMap<MapData, u16, Lb4ReverseNat>,
    /// `cilium_ct4_global`.
    pub ct4: HashMap<MapData, CtTuple4, CtEntry>,
    /// `cilium_ct_any4_global`.
    pub ct_any4: HashMap<MapData, CtTuple4, CtEntry>,
    /// `cilium_metrics`.
    pub metrics: PerCpuHashMap<MapData, MetricsKey, MetricsValue>,
    /// `cilium_events`.
    pub events: RingBuf<MapData>,
    /// `cilium_events_ratelimit`.
    pub events_ratelimit: PerCpuArray<MapData, EventsRateLimit>,
}

impl std::fmt::Debug for DatapathMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Some aya map handles have no Debug; the policy maps carry the pin directory.
        f.debug_struct("DatapathMaps")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Counters of one (reason, direction) pair summed over CPUs and drop sites.
pub type MetricTotals = BTreeMap<(u8, u8), MetricsValue>;

impl DatapathMaps {
    /// `cilium_metrics` summed over CPUs and source lines, by (reason, direction code).
    pub fn metric_totals(&self) -> Result<MetricTotals, DatapathError> {
        let mut totals = MetricTotals::new();
        for item in self.metrics.iter() {
            let (key, values) =
                item.map_err(|source| map_error("iterate", names::METRICS, source))?;
            let total = totals.entry((key.reason, key.dir & 0x3)).or_default();
            for value in values.iter() {
                total.count += value.count;
                total.bytes += value.bytes;
            }
        }
        Ok(totals)
    }

    /// Packets counted for `reason` in `direction` (0 if none).
    pub fn metric_count(
        &self,
        reason: u8,
        direction: MetricDirection,
    ) -> Result<u64, DatapathError> {
        Ok(self
            .metric_totals()?
            .get(&(reason, direction.code()))
            .map_or(0, |v| v.count))
    }

    /// The events rate limiter summed over CPUs: events suppressed and lost.
    pub fn events_dropped(&self) -> Result<EventsRateLimit, DatapathError> {
        let values = self
            .events_ratelimit
            .get(&0, 0)
            .map_err(|source| map_error("lookup", names::EVENTS_RATELIMIT, source))?;
        let mut sum = EventsRateLimit::default();
        for value in values.iter() {
            sum.suppressed += value.suppressed;
            sum.lost += value.lost;
        }
        Ok(sum)
    }
}

/// The loaded programs and their maps.
#[derive(Debug)]
pub struct BpfObjects {
    ebpf: Ebpf,
    /// Typed handles on every map the programs use.
    pub maps: DatapathMaps,
    pin_dir: Option<PathBuf>,
}

impl BpfObjects {
    /// Creates (or adopts) the maps and loads `cil_from_container` and `cil_to_container` into
    /// the kernel.
    pub fn load(options: &LoadOptions) -> Result<Self, DatapathError> {
        let pin_dir = options.pin_dir();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("events_rate_per_sec", &options.events_rate_per_sec, true)
            .override_global("events_burst", &options.events_burst, true);
        let pin_paths: Vec<(&'static str, PathBuf)> = match &pin_dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
                    path: dir.clone(),
                    source,
                })?;
                GLOBAL_MAPS
                    .iter()
                    .map(|spec| (spec.name, dir.join(spec.name)))
                    .collect()
            }
            None => Vec::new(),
        };
        let lb_maps = [
            names::LB4_SERVICES,
            names::LB4_BACKENDS,
            names::LB4_REVERSE_NAT,
        ];
        for name in lb_maps {
            loader.map_max_entries(name, options.lb_map_max_entries);
        }
        for (spec, (name, path)) in GLOBAL_MAPS.iter().zip(&pin_paths) {
            let mut spec = *spec;
            if lb_maps.contains(name) {
                spec.max_entries = options.lb_map_max_entries;
            }
            remove_if_incompatible(path, &spec)?;
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(BPF_LXC).map_err(|source| DatapathError::Load {
            object: OBJECT,
            source,
        })?;

        for name in [FROM_CONTAINER, TO_CONTAINER] {
            let program = classifier_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| DatapathError::ProgramLoad { name, source })?;
        }

        let maps = DatapathMaps {
            endpoints: take_typed(&mut ebpf, names::ENDPOINTS)?,
            ipcache: take_typed(&mut ebpf, names::IPCACHE)?,
            policy: PolicyMaps {
                outer: take_map(&mut ebpf, names::POLICY)?,
                pin_dir: pin_dir.clone(),
            },
            lb4_services: take_typed(&mut ebpf, names::LB4_SERVICES)?,
            lb4_backends: take_typed(&mut ebpf, names::LB4_BACKENDS)?,
            lb4_reverse_nat: take_typed(&mut ebpf, names::LB4_REVERSE_NAT)?,
            ct4: take_typed(&mut ebpf, names::CT4)?,
            ct_any4: take_typed(&mut ebpf, names::CT_ANY4)?,
            metrics: take_typed(&mut ebpf, names::METRICS)?,
            events: take_typed(&mut ebpf, names::EVENTS)?,
            events_ratelimit: take_typed(&mut ebpf, names::EVENTS_RATELIMIT)?,
        };
        debug!(pinned = pin_dir.is_some(), "datapath programs loaded");
        Ok(Self {
            ebpf,
            maps,
            pin_dir,
        })
    }

    /// `cil_from_container`, for attaching or `test_run`.
    pub fn from_container(&self) -> Result<&SchedClassifier, DatapathError> {
        classifier(&self.ebpf, FROM_CONTAINER)
    }

    /// `cil_to_container`, for attaching or `test_run`.
    pub fn to_container(&self) -> Result<&SchedClassifier, DatapathError> {
        classifier(&self.ebpf, TO_CONTAINER)
    }

    /// `cil_from_container`, mutably (attaching needs it).
    pub fn from_container_mut(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        classifier_mut(&mut self.ebpf, FROM_CONTAINER)
    }

    /// `cil_to_container`, mutably (attaching needs it).
    pub fn to_container_mut(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        classifier_mut(&mut self.ebpf, TO_CONTAINER)
    }

    /// Where the maps are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }
}

fn classifier<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a SchedClassifier, DatapathError> {
    let program = ebpf.program(name).ok_or(DatapathError::MissingProgram {
        object: OBJECT,
        name,
    })?;
    program
        .try_into()
        .map_err(|source| DatapathError::ProgramLoad { name, source })
}

fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram {
            object: OBJECT,
            name,
        })?;
    program
        .try_into()
        .map_err(|source| DatapathError::ProgramLoad { name, source })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap {
        object: OBJECT,
        name,
    })
}

fn take_typed<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(take_map(ebpf, name)?).map_err(|source| DatapathError::MapLayout {
        name: name.to_owned(),
        source,
    })
}

fn map_error(op: &'static str, name: &str, source: MapError) -> DatapathError {
    DatapathError::Map {
        op,
        name: name.to_owned(),
        source,
    }
}

/// Removes a pin whose map does not match `spec`, so the loader creates a fresh map, as
/// upstream's agent does on `ErrMapIncompatible` (no content migration). A missing pin is fine.
fn remove_if_incompatible(path: &Path, spec: &MapSpec) -> Result<(), DatapathError> {
    if !path.exists() {
        return Ok(());
    }
    let compatible = match MapInfo::from_pin(path) {
        Ok(info) => {
            info.map_type().is_ok_and(|t| t as u32 == spec.map_type)
                && info.key_size() == spec.key_size
                && info.value_size() == spec.value_size
                && info.max_entries() == spec.max_entries
                && info.map_flags() == spec.flags
        }
        Err(_) => false,
    };
    if compatible {
        debug!(path = %path.display(), "adopting pinned map");
        return Ok(());
    }
    warn!(path = %path.display(), map = spec.name, "pinned map has an incompatible layout, recreating it");
    fs::remove_file(path).map_err(|source| DatapathError::StalePin {
        path: path.to_owned(),
        source,
    })
}
