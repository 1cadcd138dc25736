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

use crate::error::BpfError;
use crate::maps::ct::{CtEntry, CtTuple4};
use crate::maps::endpoint::{EndpointInfo, EndpointKey};
use crate::maps::events::{EventsRateLimit, MonitorAggregation};
use crate::maps::ipcache::{IpcacheKey, RemoteEndpointInfo};
use crate::maps::lb::{Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service};
use crate::maps::metrics::{
    METRICS_FWD_SIZE, MetricDirection, MetricsKey, MetricsValue, REASON_FORWARDED,
};
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
/// Upstream's default `--bpf-ct-global-tcp-max`.
pub const DEFAULT_CT_TCP_MAX_ENTRIES: u32 = 524288;
/// Upstream's default `--bpf-ct-global-any-max`.
pub const DEFAULT_CT_ANY_MAX_ENTRIES: u32 = 262144;

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
    /// Which forwarded packets are traced (upstream `--monitor-aggregation`, default medium:
    /// established flows are not traced per packet).
    pub monitor_aggregation: MonitorAggregation,
    /// Entries of each load-balancing map (upstream `--bpf-lb-map-max`, default 65536). A
    /// service takes one entry for its frontend and one per backend slot.
    pub lb_map_max_entries: u32,
    /// Entries of `cilium_ct4_global` (upstream `--bpf-ct-global-tcp-max`, default 524288).
    pub ct_tcp_max_entries: u32,
    /// Entries of `cilium_ct_any4_global` (upstream `--bpf-ct-global-any-max`, default 262144).
    pub ct_any_max_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            bpf_root: None,
            events_rate_per_sec: 1000,
            events_burst: 1000,
            monitor_aggregation: MonitorAggregation::default(),
            lb_map_max_entries: DEFAULT_LB_MAP_MAX_ENTRIES,
            ct_tcp_max_entries: DEFAULT_CT_TCP_MAX_ENTRIES,
            ct_any_max_entries: DEFAULT_CT_ANY_MAX_ENTRIES,
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
    fn outer_data(&self) -> Result<&MapData, BpfError> {
        match &self.outer {
            Map::ArrayOfMaps(data) => Ok(data),
            _ => Err(BpfError::MapLayout {
                name: names::POLICY.to_owned(),
                source: MapError::InvalidMapType { map_type: 0 },
            }),
        }
    }

    /// Creates the policy map of endpoint `id` (or adopts its pin when pinning and a compatible
    /// one exists) and installs it, so the programs enforce it from now on. Until an endpoint has
    /// a map, its packets that need a policy decision are dropped (`DROP_EP_NOT_READY`).
    pub fn create(&mut self, id: EndpointId) -> Result<PolicyMap, BpfError> {
        let name = names::endpoint_policy(id);
        let map = match &self.pin_dir {
            Some(dir) => {
                let path = dir.join(&name);
                remove_if_incompatible(&path, &inner_policy_spec())?;
                if !path.exists() {
                    let fresh = create_policy_map(&name)?;
                    fresh.pin(&path).map_err(|source| BpfError::Pin {
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
            |source| BpfError::MapLayout {
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
    pub fn get(&self, id: EndpointId) -> Result<Option<PolicyMap>, BpfError> {
        let outer =
            ArrayOfMaps::<&MapData, PolicyMap>::try_from(&self.outer).map_err(|source| {
                BpfError::MapLayout {
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
    pub fn remove(&mut self, id: EndpointId) -> Result<(), BpfError> {
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
                Err(source) => return Err(BpfError::StalePin { path, source }),
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

fn create_policy_map(name: &str) -> Result<PolicyMap, BpfError> {
    PolicyMap::create(POLICY_MAP_SIZE, BPF_F_NO_PREALLOC)
        .map_err(|source| map_error("create", name, source))
}

fn open_pinned_policy_map(name: &str, path: &Path) -> Result<PolicyMap, BpfError> {
    let data = MapData::from_pin(path).map_err(|source| map_error("open pin", name, source))?;
    let map = Map::from_map_data(data).map_err(|source| map_error("open pin", name, source))?;
    PolicyMap::try_from(map).map_err(|source| BpfError::MapLayout {
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
    /// `cilium_metrics`: drops (and nothing else, see `metrics_fwd`).
    pub metrics: PerCpuHashMap<MapData, MetricsKey, MetricsValue>,
    /// `cilium_metrics_fwd`: forwarded packets by direction code.
    pub metrics_fwd: PerCpuArray<MapData, MetricsValue>,
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
    /// `cilium_metrics` summed over CPUs and source lines, by (reason, direction code), with the
    /// forwarded counters of `cilium_metrics_fwd` as reason 0: upstream's view of `cilium_metrics`.
    /// Only pairs that counted a packet appear.
    pub fn metric_totals(&self) -> Result<MetricTotals, BpfError> {
        let mut totals = MetricTotals::new();
        for dir in 0..METRICS_FWD_SIZE {
            let values = self
                .metrics_fwd
                .get(&dir, 0)
                .map_err(|source| map_error("lookup", names::METRICS_FWD, source))?;
            let mut sum = MetricsValue::default();
            for value in values.iter() {
                sum.count += value.count;
                sum.bytes += value.bytes;
            }
            if sum.count > 0 {
                // Direction codes are 0-3 (the array has METRICS_FWD_SIZE entries).
                totals.insert((REASON_FORWARDED, dir as u8), sum);
            }
        }
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
    pub fn metric_count(&self, reason: u8, direction: MetricDirection) -> Result<u64, BpfError> {
        Ok(self
            .metric_totals()?
            .get(&(reason, direction.code()))
            .map_or(0, |v| v.count))
    }

    /// The events rate limiter summed over CPUs: events suppressed and lost.
    pub fn events_dropped(&self) -> Result<EventsRateLimit, BpfError> {
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
    pub fn load(options: &LoadOptions) -> Result<Self, BpfError> {
        let pin_dir = options.pin_dir();
        let monitor_aggregation = options.monitor_aggregation.level();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("events_rate_per_sec", &options.events_rate_per_sec, true)
            .override_global("events_burst", &options.events_burst, true)
            .override_global("monitor_aggregation", &monitor_aggregation, true);
        let pin_paths: Vec<(&'static str, PathBuf)> = match &pin_dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(|source| BpfError::PinDir {
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
        let sized = |name: &str| {
            if lb_maps.contains(&name) {
                Some(options.lb_map_max_entries)
            } else if name == names::CT4 {
                Some(options.ct_tcp_max_entries)
            } else if name == names::CT_ANY4 {
                Some(options.ct_any_max_entries)
            } else {
                None
            }
        };
        for spec in &GLOBAL_MAPS {
            if let Some(max_entries) = sized(spec.name) {
                loader.map_max_entries(spec.name, max_entries);
            }
        }
        for (spec, (name, path)) in GLOBAL_MAPS.iter().zip(&pin_paths) {
            let mut spec = *spec;
            if let Some(max_entries) = sized(name) {
                spec.max_entries = max_entries;
            }
            remove_if_incompatible(path, &spec)?;
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(BPF_LXC).map_err(|source| BpfError::Load {
            object: OBJECT,
            source,
        })?;

        for name in [FROM_CONTAINER, TO_CONTAINER] {
            let program = classifier_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| BpfError::ProgramLoad { name, source })?;
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
            metrics_fwd: take_typed(&mut ebpf, names::METRICS_FWD)?,
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
    pub fn from_container(&self) -> Result<&SchedClassifier, BpfError> {
        classifier(&self.ebpf, FROM_CONTAINER)
    }

    /// `cil_to_container`, for attaching or `test_run`.
    pub fn to_container(&self) -> Result<&SchedClassifier, BpfError> {
        classifier(&self.ebpf, TO_CONTAINER)
    }

    /// `cil_from_container`, mutably (attaching needs it).
    pub fn from_container_mut(&mut self) -> Result<&mut SchedClassifier, BpfError> {
        classifier_mut(&mut self.ebpf, FROM_CONTAINER)
    }

    /// `cil_to_container`, mutably (attaching needs it).
    pub fn to_container_mut(&mut self) -> Result<&mut SchedClassifier, BpfError> {
        classifier_mut(&mut self.ebpf, TO_CONTAINER)
    }

    /// Where the maps are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }
}

fn classifier<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a SchedClassifier, BpfError> {
    let program = ebpf.program(name).ok_or(BpfError::MissingProgram {
        object: OBJECT,
        name,
    })?;
    program
        .try_into()
        .map_err(|source| BpfError::ProgramLoad { name, source })
}

fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, BpfError> {
    let program = ebpf.program_mut(name).ok_or(BpfError::MissingProgram {
        object: OBJECT,
        name,
    })?;
    program
        .try_into()
        .map_err(|source| BpfError::ProgramLoad { name, source })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::MissingMap {
        object: OBJECT,
        name,
    })
}

fn take_typed<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(take_map(ebpf, name)?).map_err(|source| BpfError::MapLayout {
        name: name.to_owned(),
        source,
    })
}

fn map_error(op: &'static str, name: &str, source: MapError) -> BpfError {
    BpfError::Map {
        op,
        name: name.to_owned(),
        source,
    }
}

/// Removes a pin whose map does not match `spec`, so the loader creates a fresh map, as
/// upstream's agent does on `ErrMapIncompatible` (no content migration). A missing pin is fine.
fn remove_if_incompatible(path: &Path, spec: &MapSpec) -> Result<(), BpfError> {
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
    fs::remove_file(path).map_err(|source| BpfError::StalePin {
        path: path.to_owned(),
        source,
    })
}
