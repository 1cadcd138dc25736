//! Records of the `cilium_events` ring buffer and the per-CPU rate limiter in front of it.
//!
//! One layout serves drop, trace and policy-verdict notifications. It starts with upstream's
//! `NOTIFY_CAPTURE_HDR` (type, subtype, source, hash, original and captured length, version) and
//! carries the parsed 5-tuple next to up to [`EVENT_CAPTURE_LEN`] bytes of the packet.

use std::net::Ipv4Addr;

use model::identity::NumericIdentity;

/// Notification type of drops (upstream `CILIUM_NOTIFY_DROP`).
pub const NOTIFY_DROP: u8 = 1;
/// Notification type of traces (upstream `CILIUM_NOTIFY_TRACE`).
pub const NOTIFY_TRACE: u8 = 4;
/// Notification type of policy verdicts (upstream `CILIUM_NOTIFY_POLICY_VERDICT`).
pub const NOTIFY_POLICY_VERDICT: u8 = 5;

/// Trace observation point: delivered to the endpoint (upstream `TRACE_TO_LXC`).
pub const TRACE_TO_LXC: u8 = 0;
/// Trace observation point: passed to the host stack (upstream `TRACE_TO_STACK`).
pub const TRACE_TO_STACK: u8 = 3;

/// Conntrack states carried as trace reasons (upstream `enum ct_status`).
pub const CT_NEW: u8 = 0;
pub const CT_ESTABLISHED: u8 = 1;
pub const CT_REPLY: u8 = 2;
pub const CT_RELATED: u8 = 3;

/// Policy directions (upstream `POLICY_INGRESS/EGRESS`).
pub const POLICY_INGRESS: u8 = 1;
pub const POLICY_EGRESS: u8 = 2;

/// Policy match types (upstream `POLICY_MATCH_*`).
pub const POLICY_MATCH_NONE: u8 = 0;
pub const POLICY_MATCH_L3_ONLY: u8 = 1;
pub const POLICY_MATCH_L3_L4: u8 = 2;
pub const POLICY_MATCH_L4_ONLY: u8 = 3;
pub const POLICY_MATCH_ALL: u8 = 4;
pub const POLICY_MATCH_L3_PROTO: u8 = 5;
pub const POLICY_MATCH_PROTO_ONLY: u8 = 6;

/// Event flag: the packet is IPv6.
pub const EVENT_F_IPV6: u8 = 1 << 0;
/// Event flag: the packet is a reply of a tracked connection.
pub const EVENT_F_REPLY: u8 = 1 << 1;

/// Bytes of packet copied into each record.
pub const EVENT_CAPTURE_LEN: usize = 128;

/// One ring-buffer record (224 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRecord {
    /// `NOTIFY_*`.
    pub r#type: u8,
    /// Drops: the drop reason; traces: the observation point; verdicts: 0.
    pub subtype: u8,
    /// Endpoint id of the program's endpoint.
    pub source: u16,
    /// skb flow hash.
    pub hash: u32,
    /// Packet length.
    pub len_orig: u32,
    /// Bytes of packet in `data`.
    pub len_cap: u16,
    pub version: u16,
    pub src_label: u32,
    pub dst_label: u32,
    /// Destination endpoint id, 0 if the destination is not a local endpoint.
    pub dst_id: u16,
    /// Traces: the observation point.
    pub obs_point: u8,
    /// Traces: the conntrack state; drops and denied verdicts: the drop reason.
    pub reason: u8,
    /// Verdicts: 0 allowed, `-reason` denied; drops: `-reason`.
    pub verdict: i32,
    /// `POLICY_INGRESS` / `POLICY_EGRESS`.
    pub direction: u8,
    /// Verdicts: `POLICY_MATCH_*`.
    pub match_type: u8,
    /// `EVENT_F_*`.
    pub flags: u8,
    pub protocol: u8,
    /// Network order (ICMP echo: identifier as source port of requests).
    pub sport: u16,
    /// Network order.
    pub dport: u16,
    pub ifindex: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u8,
    pub pad: [u8; 3],
    /// `bpf_ktime_get_ns()` when the event was written.
    pub ktime_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Verdicts: the policy log cookie of the matched entry.
    pub cookie: u32,
    /// Drops: source line of the drop site in `bpf_lxc.c`.
    pub line: u16,
    pub file: u8,
    pub ext_error: i8,
    /// The first `len_cap` bytes of the packet, from its Ethernet header on.
    pub data: [u8; EVENT_CAPTURE_LEN],
}

// SAFETY: repr(C), every field naturally aligned, 224 bytes without padding (asserted below).
unsafe impl aya::Pod for EventRecord {}

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("event record is {len} bytes, expected {expected}")]
    Length { len: usize, expected: usize },
}

impl EventRecord {
    /// Decodes one record as read from the ring buffer.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EventDecodeError> {
        let expected = size_of::<Self>();
        if bytes.len() != expected {
            return Err(EventDecodeError::Length {
                len: bytes.len(),
                expected,
            });
        }
        // SAFETY: the length is checked, the type is Pod (any bit pattern is valid) and
        // read_unaligned does not require the buffer to be aligned.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// Source address of an IPv4 record.
    pub fn source_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.saddr[0], self.saddr[1], self.saddr[2], self.saddr[3])
    }

    /// Destination address of an IPv4 record.
    pub fn destination_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.daddr[0], self.daddr[1], self.daddr[2], self.daddr[3])
    }

    /// Source port in host order.
    pub fn source_port(&self) -> u16 {
        u16::from_be(self.sport)
    }

    /// Destination port in host order.
    pub fn destination_port(&self) -> u16 {
        u16::from_be(self.dport)
    }

    /// Identity of the packet's source.
    pub fn source_identity(&self) -> NumericIdentity {
        NumericIdentity::new(self.src_label)
    }

    /// Identity of the packet's destination.
    pub fn destination_identity(&self) -> NumericIdentity {
        NumericIdentity::new(self.dst_label)
    }

    /// The captured packet bytes.
    pub fn captured(&self) -> &[u8] {
        let len = usize::from(self.len_cap).min(EVENT_CAPTURE_LEN);
        &self.data[..len]
    }
}

/// Upstream's monitor aggregation level (`--monitor-aggregation`): which forwarded packets the
/// programs trace. Patched into the programs at load time (`LoadOptions::monitor_aggregation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum MonitorAggregation {
    /// `none`: every forwarded packet is traced.
    None,
    /// `lowest`: hides receive-side observation points; the endpoint programs only have
    /// delivery points, so every forwarded packet is still traced.
    Lowest,
    /// `low`: as `lowest` (upstream reserves it).
    Low,
    /// `medium`, upstream's default: a packet is traced only when conntrack asks for it (a new
    /// connection, newly seen TCP flags, or one report interval since the direction's last
    /// trace), so established flows do not produce an event per packet.
    #[default]
    Medium,
    /// `maximum`: as `medium`.
    Maximum,
}

impl MonitorAggregation {
    /// The level the programs compare against (upstream's `MONITOR_AGGREGATION`, 0-4).
    pub const fn level(self) -> u32 {
        match self {
            MonitorAggregation::None => 0,
            MonitorAggregation::Lowest => 1,
            MonitorAggregation::Low => 2,
            MonitorAggregation::Medium => 3,
            MonitorAggregation::Maximum => 4,
        }
    }
}

/// A `--monitor-aggregation` value that is not a level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown monitor aggregation level {0:?} (expected none, lowest, low, medium, maximum or 0-4)"
)]
pub struct UnknownMonitorAggregation(pub String);

impl std::str::FromStr for MonitorAggregation {
    type Err = UnknownMonitorAggregation;

    /// Accepts upstream's spellings: `none`/`disabled`/empty, `lowest`, `low`, `medium`,
    /// `max`/`maximum`, or the level number.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "disabled" | "0" => Ok(MonitorAggregation::None),
            "lowest" | "1" => Ok(MonitorAggregation::Lowest),
            "low" | "2" => Ok(MonitorAggregation::Low),
            "medium" | "3" => Ok(MonitorAggregation::Medium),
            "max" | "maximum" | "4" => Ok(MonitorAggregation::Maximum),
            _ => Err(UnknownMonitorAggregation(value.to_owned())),
        }
    }
}

/// Per-CPU state of the events rate limiter (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventsRateLimit {
    pub last_topup_ns: u64,
    pub tokens: u64,
    /// Events not written because the rate limit was exhausted.
    pub suppressed: u64,
    /// Events not written because the ring buffer was full.
    pub lost: u64,
}

// SAFETY: repr(C), four u64.
unsafe impl aya::Pod for EventsRateLimit {}

const _: () = assert!(size_of::<EventRecord>() == 224);
const _: () = assert!(size_of::<EventsRateLimit>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_aggregation_parses_upstream_spellings() {
        for (text, level) in [
            ("", 0),
            ("disabled", 0),
            ("None", 0),
            ("lowest", 1),
            ("low", 2),
            ("MEDIUM", 3),
            ("3", 3),
            ("max", 4),
            ("maximum", 4),
        ] {
            let parsed: MonitorAggregation = text.parse().unwrap();
            assert_eq!(parsed.level(), level, "{text:?}");
        }
        assert_eq!(MonitorAggregation::default(), MonitorAggregation::Medium);
        assert!("5".parse::<MonitorAggregation>().is_err());
        assert!("verbose".parse::<MonitorAggregation>().is_err());
    }
}
