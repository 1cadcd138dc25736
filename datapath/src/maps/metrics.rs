//! `cilium_metrics`: per-CPU packet and byte counters by reason and direction (upstream
//! `struct metrics_key` / `struct metrics_value`), and `cilium_metrics_fwd`, our per-CPU array of
//! forwarded-packet counters by direction (see `bpf/lib/maps.h` for why forwarded packets are not
//! counted in `cilium_metrics` as upstream does). Read both through
//! `DatapathMaps::metric_totals`, which merges them into upstream's view.

/// Reason of forwarded packets; any other value is a drop reason.
pub const REASON_FORWARDED: u8 = 0;

/// Entries of `cilium_metrics_fwd`: one per direction code (0 is unused).
pub const METRICS_FWD_SIZE: u32 = 4;

/// Direction of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricDirection {
    Ingress,
    Egress,
    Service,
}

impl MetricDirection {
    /// The value in the key (upstream `METRIC_INGRESS/EGRESS/SERVICE`).
    pub const fn code(self) -> u8 {
        match self {
            MetricDirection::Ingress => 1,
            MetricDirection::Egress => 2,
            MetricDirection::Service => 3,
        }
    }

    /// The direction of a key's `dir` field, if valid.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code & 0x3 {
            1 => Some(MetricDirection::Ingress),
            2 => Some(MetricDirection::Egress),
            3 => Some(MetricDirection::Service),
            _ => None,
        }
    }

    /// The label value upstream's `cilium_drop_count_total{direction}` uses.
    pub const fn label(self) -> &'static str {
        match self {
            MetricDirection::Ingress => "INGRESS",
            MetricDirection::Egress => "EGRESS",
            MetricDirection::Service => "SERVICE",
        }
    }
}

/// Key of `cilium_metrics` (8 bytes). Drops carry the source line of the drop site, so one
/// (reason, direction) pair can span several keys: sum them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MetricsKey {
    pub reason: u8,
    /// Direction code in bits 0-1.
    pub dir: u8,
    pub line: u16,
    pub file: u8,
    pub reserved: [u8; 3],
}

// SAFETY: repr(C), 1 + 1 + 2 + 1 + 3 bytes, no padding.
unsafe impl aya::Pod for MetricsKey {}

impl MetricsKey {
    /// The direction of the counter.
    pub fn direction(&self) -> Option<MetricDirection> {
        MetricDirection::from_code(self.dir)
    }
}

/// Value of `cilium_metrics`, one per CPU (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MetricsValue {
    pub count: u64,
    pub bytes: u64,
}

// SAFETY: repr(C), two u64.
unsafe impl aya::Pod for MetricsValue {}

const _: () = assert!(size_of::<MetricsKey>() == 8);
const _: () = assert!(size_of::<MetricsValue>() == 16);
