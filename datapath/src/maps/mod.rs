//! Typed keys and values of every map the programs share, one module per map family, each a
//! `#[repr(C)]` mirror of the C layout in `bpf/lib/maps.h` (sizes asserted at compile time) with
//! constructors from domain values. Domain types stop here: nothing below the loader sees them.

pub mod ct;
pub mod endpoint;
pub mod events;
pub mod ipcache;
pub mod lb;
pub mod metrics;
pub mod policy;

/// Family value of IPv4 keys (upstream `ENDPOINT_KEY_IPV4`).
pub const FAMILY_IPV4: u8 = 1;
/// Family value of IPv6 keys (upstream `ENDPOINT_KEY_IPV6`).
pub const FAMILY_IPV6: u8 = 2;

/// Endpoint ids are the domain type of the trait boundary; the layouts use the same one.
pub use crate::api::EndpointId;

/// Map names, as upstream names them where a counterpart exists.
pub mod names {
    pub const ENDPOINTS: &str = "cilium_lxc";
    pub const IPCACHE: &str = "cilium_ipcache_v2";
    /// The array of per-endpoint policy maps (our addition, see `bpf/lib/maps.h`).
    pub const POLICY: &str = "cilium_policy_v2";
    pub const LB4_SERVICES: &str = "cilium_lb4_services_v2";
    pub const LB4_BACKENDS: &str = "cilium_lb4_backends_v3";
    pub const LB4_REVERSE_NAT: &str = "cilium_lb4_reverse_nat";
    pub const CT4: &str = "cilium_ct4_global";
    pub const CT_ANY4: &str = "cilium_ct_any4_global";
    pub const METRICS: &str = "cilium_metrics";
    /// Forwarded-packet counters by direction (our addition, see `bpf/lib/maps.h`).
    pub const METRICS_FWD: &str = "cilium_metrics_fwd";
    pub const EVENTS: &str = "cilium_events";
    pub const EVENTS_RATELIMIT: &str = "cilium_events_ratelimit";

    /// Pin name of the policy map of endpoint `id` (upstream `cilium_policy_v2_%05d`).
    pub fn endpoint_policy(id: super::EndpointId) -> String {
        format!("{POLICY}_{:05}", id.get())
    }
}

/// Kernel map type numbers used in [`MapSpec`].
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LPM_TRIE: u32 = 11;
    pub const ARRAY_OF_MAPS: u32 = 12;
    pub const RINGBUF: u32 = 27;
}

/// `BPF_F_NO_PREALLOC`.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Maximum entries of each per-endpoint policy map (upstream `POLICY_MAP_SIZE`).
pub const POLICY_MAP_SIZE: u32 = 16384;
/// Size of the events ring buffer in bytes.
pub const EVENTS_RINGBUF_SIZE: u32 = 1 << 20;

/// What a pinned map must look like to be adopted instead of recreated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// Every map of `bpf_lxc.o`, as the object defines it.
pub const GLOBAL_MAPS: [MapSpec; 12] = {
    use std::mem::size_of;
    const fn spec(
        name: &'static str,
        map_type: u32,
        key_size: usize,
        value_size: usize,
        max_entries: u32,
        flags: u32,
    ) -> MapSpec {
        MapSpec {
            name,
            map_type,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries,
            flags,
        }
    }
    [
        spec(
            names::ENDPOINTS,
            map_type::HASH,
            size_of::<endpoint::EndpointKey>(),
            size_of::<endpoint::EndpointInfo>(),
            65535,
            BPF_F_NO_PREALLOC,
        ),
        spec(
            names::IPCACHE,
            map_type::LPM_TRIE,
            24,
            size_of::<ipcache::RemoteEndpointInfo>(),
            512000,
            BPF_F_NO_PREALLOC,
        ),
        spec(names::POLICY, map_type::ARRAY_OF_MAPS, 4, 4, 65536, 0),
        spec(
            names::LB4_SERVICES,
            map_type::HASH,
            size_of::<lb::Lb4Key>(),
            size_of::<lb::Lb4Service>(),
            65536,
            BPF_F_NO_PREALLOC,
        ),
        spec(
            names::LB4_BACKENDS,
            map_type::HASH,
            4,
            size_of::<lb::Lb4Backend>(),
            65536,
            BPF_F_NO_PREALLOC,
        ),
        spec(
            names::LB4_REVERSE_NAT,
            map_type::HASH,
            2,
            size_of::<lb::Lb4ReverseNat>(),
            65536,
            BPF_F_NO_PREALLOC,
        ),
        spec(
            names::CT4,
            map_type::LRU_HASH,
            size_of::<ct::CtTuple4>(),
            size_of::<ct::CtEntry>(),
            524288,
            0,
        ),
        spec(
            names::CT_ANY4,
            map_type::LRU_HASH,
            size_of::<ct::CtTuple4>(),
            size_of::<ct::CtEntry>(),
            262144,
            0,
        ),
        spec(
            names::METRICS,
            map_type::PERCPU_HASH,
            size_of::<metrics::MetricsKey>(),
            size_of::<metrics::MetricsValue>(),
            65536,
            BPF_F_NO_PREALLOC,
        ),
        spec(
            names::METRICS_FWD,
            map_type::PERCPU_ARRAY,
            4,
            size_of::<metrics::MetricsValue>(),
            metrics::METRICS_FWD_SIZE,
            0,
        ),
        spec(
            names::EVENTS,
            map_type::RINGBUF,
            0,
            0,
            EVENTS_RINGBUF_SIZE,
            0,
        ),
        spec(
            names::EVENTS_RATELIMIT,
            map_type::PERCPU_ARRAY,
            4,
            size_of::<events::EventsRateLimit>(),
            1,
            0,
        ),
    ]
};
