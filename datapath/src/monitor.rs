//! The event reader: turns `cilium_events` ring-buffer records into typed [`MonitorEvent`]s for
//! Hubble and `cilium-dbg monitor`.
//!
//! The programs write one record layout ([`EventRecord`]) for drop, trace and policy-verdict
//! notifications. This module decodes it into domain terms (upstream drop reason names,
//! observation points, verdicts, match types), fills in what only the captured packet says
//! (TCP flags, ICMP type and code), and renders events the way `cilium-dbg monitor` prints
//! them ([`format_monitor_line`]). It also reads the events rate limiter's per-CPU counters,
//! so consumers can report what the datapath suppressed or lost ([`EventCounters`]).
//!
//! [`EventReader`] is synchronous (drain what is there); [`AsyncEventReader`] waits on the ring
//! buffer's fd with tokio. aya 0.14 has no async ring buffer, and tokio's `AsyncFd::new` is
//! deprecated as unsound, so the fd is registered with `AsyncFd::register_with_interest`, whose
//! safety contract the reader upholds by owning the ring buffer (and with it the fd) inside the
//! `AsyncFd` for its whole life.
//!
//! Records carry no CPU number (upstream's perf ring gives one per CPU; ours is one ordered ring
//! buffer), so [`MonitorEvent::cpu`] is `None` for events read from the kernel.

use std::fmt::{self, Write as _};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;
use std::str::FromStr;

use aya::maps::{IterableMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::api::{EndpointId, Protocol};
use crate::loader::BpfObjects;
use crate::maps::events::{
    EVENT_F_IPV6, EVENT_F_REPLY, EventDecodeError, EventRecord, EventsRateLimit, NOTIFY_DROP,
    NOTIFY_POLICY_VERDICT, NOTIFY_TRACE, POLICY_INGRESS,
};
use crate::maps::names;

/// Errors of opening the event maps or decoding a record.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("opening map {name} for the event reader failed")]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("duplicating the fd of map {name} failed")]
    DupFd {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("registering the ring buffer with the tokio reactor failed")]
    Register {
        #[source]
        source: io::Error,
    },
    #[error("reading the events rate limiter failed")]
    Counters {
        #[source]
        source: MapError,
    },
    #[error("undecodable event record")]
    Record(#[from] EventDecodeError),
    #[error("event record of unknown type {kind}")]
    UnknownType { kind: u8 },
}

/// Where in the datapath a trace was observed (upstream `TRACE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObservationPoint {
    ToEndpoint,
    ToProxy,
    ToHost,
    ToStack,
    ToOverlay,
    FromEndpoint,
    FromProxy,
    FromHost,
    FromStack,
    FromOverlay,
    FromNetwork,
    ToNetwork,
    Unknown(u8),
}

impl ObservationPoint {
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => ObservationPoint::ToEndpoint,
            1 => ObservationPoint::ToProxy,
            2 => ObservationPoint::ToHost,
            3 => ObservationPoint::ToStack,
            4 => ObservationPoint::ToOverlay,
            5 => ObservationPoint::FromEndpoint,
            6 => ObservationPoint::FromProxy,
            7 => ObservationPoint::FromHost,
            8 => ObservationPoint::FromStack,
            9 => ObservationPoint::FromOverlay,
            10 => ObservationPoint::FromNetwork,
            11 => ObservationPoint::ToNetwork,
            other => ObservationPoint::Unknown(other),
        }
    }
}

/// The conntrack state a trace reports (upstream `TraceReason*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceState {
    New,
    Established,
    Reply,
    Related,
    Unknown(u8),
}

impl TraceState {
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => TraceState::New,
            1 => TraceState::Established,
            2 => TraceState::Reply,
            3 => TraceState::Related,
            other => TraceState::Unknown(other),
        }
    }

    /// Upstream's `connState` spelling.
    pub fn name(self) -> String {
        match self {
            TraceState::New => "new".into(),
            TraceState::Established => "established".into(),
            TraceState::Reply => "reply".into(),
            TraceState::Related => "related".into(),
            TraceState::Unknown(code) => code.to_string(),
        }
    }
}

/// The direction of a policy verdict, as seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficDirection {
    Ingress,
    Egress,
}

/// How a policy verdict matched (upstream `POLICY_MATCH_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMatchType {
    None,
    L3Only,
    L3L4,
    L4Only,
    All,
    L3Proto,
    ProtoOnly,
    Unknown(u8),
}

impl PolicyMatchType {
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => PolicyMatchType::None,
            1 => PolicyMatchType::L3Only,
            2 => PolicyMatchType::L3L4,
            3 => PolicyMatchType::L4Only,
            4 => PolicyMatchType::All,
            5 => PolicyMatchType::L3Proto,
            6 => PolicyMatchType::ProtoOnly,
            other => PolicyMatchType::Unknown(other),
        }
    }

    /// Upstream's `GetPolicyMatchType` spelling.
    pub fn name(self) -> String {
        match self {
            PolicyMatchType::None => "none".into(),
            PolicyMatchType::L3Only => "L3-Only".into(),
            PolicyMatchType::L3L4 => "L3-L4".into(),
            PolicyMatchType::L4Only => "L4-Only".into(),
            PolicyMatchType::All => "all".into(),
            PolicyMatchType::L3Proto => "L3-Proto".into(),
            PolicyMatchType::ProtoOnly => "Proto-Only".into(),
            PolicyMatchType::Unknown(code) => format!("unknown({code})"),
        }
    }
}

/// Upstream's drop reason text for a code (`pkg/monitor/api` `DropReason`), `None` for codes
/// upstream does not name.
pub fn drop_reason_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "Success",
        2 => "Invalid packet",
        130 => "Invalid source mac",
        131 => "Invalid destination mac",
        132 => "Invalid source ip",
        133 => "Policy denied",
        134 => "Invalid packet",
        135 => "CT: Truncated or invalid header",
        136 => "Fragmentation needed",
        137 => "CT: Unknown L4 protocol",
        138 => "CT: Can't create entry from packet",
        139 => "Unsupported L3 protocol",
        140 => "Missed tail call",
        141 => "Error writing to packet",
        142 => "Unknown L4 protocol",
        143 => "Unknown ICMPv4 code",
        144 => "Unknown ICMPv4 type",
        145 => "Unknown ICMPv6 code",
        146 => "Unknown ICMPv6 type",
        147 => "Error retrieving tunnel key",
        150 => "Unknown L3 target address",
        151 => "Stale or unroutable IP",
        153 => "Error while correcting L3 checksum",
        154 => "Error while correcting L4 checksum",
        155 => "CT: Map insertion failed",
        156 => "Invalid IPv6 extension header",
        157 => "IP fragmentation not supported",
        158 => "Service backend not found",
        160 => "No tunnel/encapsulation endpoint (datapath BUG!)",
        161 => "NAT 46/64 not enabled",
        162 => "Reached EDT rate-limiting drop horizon",
        163 => "Unknown connection tracking state",
        164 => "Local host is unreachable",
        166 => "Unsupported L2 protocol",
        167 => "No mapping for NAT masquerade",
        168 => "Unsupported protocol for NAT masquerade",
        169 => "FIB lookup failed",
        170 => "Encapsulation traffic is prohibited",
        171 => "Invalid identity",
        172 => "Unknown sender",
        173 => "NAT not needed",
        174 => "Is a ClusterIP",
        175 => "First logical datagram fragment not found",
        176 => "Forbidden ICMPv6 message",
        177 => "Denied by LB src range check",
        178 => "Socket lookup failed",
        179 => "Socket assign failed",
        180 => "Proxy redirection not supported for protocol",
        181 => "Policy denied by denylist",
        182 => "VLAN traffic disallowed by VLAN filter",
        183 => "Incorrect VNI from VTEP",
        184 => "Failed to update or lookup TC buffer",
        185 => "No SID was found for the IP address",
        186 => "SRv6 state was removed during tail call",
        187 => "L3 translation from IPv4 to IPv6 failed (NAT46)",
        188 => "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189 => "Authentication required",
        190 => "No conntrack map found",
        191 => "No nat map found",
        192 => "Invalid ClusterID",
        193 => "Unsupported packet protocol for DSR encapsulation",
        194 => "No egress gateway found",
        195 => "Traffic is unencrypted",
        196 => "TTL exceeded",
        197 => "No node ID found",
        198 => "Rate limited",
        199 => "IGMP handled",
        200 => "IGMP subscribed",
        201 => "Multicast handled",
        202 => "Host datapath not ready",
        203 => "Endpoint policy program not available",
        204 => "No Egress IP configured",
        _ => return None,
    })
}

/// Upstream's `DropReasonExt`: the name, with the extended error when there is one; unnamed
/// codes print as `code, ext`.
fn drop_reason_text(code: u8, ext_error: i8) -> String {
    match (drop_reason_name(code), ext_error) {
        (Some(name), 0) => name.to_owned(),
        (Some(name), ext) => format!("{name}, {ext}"),
        (None, ext) => format!("{code}, {ext}"),
    }
}

/// What kind of notification an event is, with what only that kind carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MonitorEventKind {
    /// A dropped packet.
    Drop {
        /// Upstream drop reason code (133 policy denied, 181 deny rule, ...).
        reason: u8,
        /// Upstream's name for `reason`, if it has one.
        reason_name: Option<String>,
        ext_error: i8,
        /// Source file id and line of the drop site.
        file: u8,
        line: u16,
    },
    /// A forwarded packet.
    Trace {
        observation_point: ObservationPoint,
        state: TraceState,
    },
    /// The policy decision for a new connection.
    PolicyVerdict {
        /// 0 allowed, `-reason` denied, positive: redirected to that proxy port.
        verdict: i32,
        direction: TrafficDirection,
        match_type: PolicyMatchType,
        /// Policy log cookie of the entry that decided.
        cookie: u32,
    },
}

/// The filter of `cilium-dbg monitor --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorEventType {
    Drop,
    Trace,
    PolicyVerdict,
}

/// A `--type` value that is not one of the event types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown monitor event type {input:?} (expected drop, trace or policy-verdict)")]
pub struct UnknownEventType {
    pub input: String,
}

impl FromStr for MonitorEventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(MonitorEventType::Drop),
            "trace" => Ok(MonitorEventType::Trace),
            "policy-verdict" => Ok(MonitorEventType::PolicyVerdict),
            other => Err(UnknownEventType {
                input: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for MonitorEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MonitorEventType::Drop => "drop",
            MonitorEventType::Trace => "trace",
            MonitorEventType::PolicyVerdict => "policy-verdict",
        })
    }
}

/// Which events `cilium-dbg monitor --type ...` shows: all of them when no type is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorFilter {
    pub types: Vec<MonitorEventType>,
}

impl MonitorFilter {
    pub fn new(types: impl IntoIterator<Item = MonitorEventType>) -> Self {
        MonitorFilter {
            types: types.into_iter().collect(),
        }
    }

    pub fn matches(&self, event: &MonitorEvent) -> bool {
        self.types.is_empty() || self.types.contains(&event.event_type())
    }
}

/// TCP flags of the captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    pub fn contains(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

impl fmt::Display for TcpFlags {
    /// Upstream's `getTCPInfo`: SYN, ACK, RST, FIN in that order, comma separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::SYN, "SYN"),
            (Self::ACK, "ACK"),
            (Self::RST, "RST"),
            (Self::FIN, "FIN"),
        ];
        let mut first = true;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str(", ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// ICMP type and code of the captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcmpTypeCode {
    pub icmp_type: u8,
    pub code: u8,
}

impl fmt::Display for IcmpTypeCode {
    /// As gopacket names ICMPv4 types and codes (what upstream prints).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unreachable = [
            "Net",
            "Host",
            "Protocol",
            "Port",
            "FragmentationNeeded",
            "SourceRoutingFailed",
            "NetUnknown",
            "HostUnknown",
            "SourceIsolated",
            "NetAdminProhibited",
            "HostAdminProhibited",
            "NetTOS",
            "HostTOS",
            "CommAdminProhibited",
            "HostPrecedence",
            "PrecedenceCutoff",
        ];
        match (self.icmp_type, self.code) {
            (0, _) => f.write_str("EchoReply"),
            (8, _) => f.write_str("EchoRequest"),
            (3, code) => match unreachable.get(usize::from(code)) {
                Some(name) => write!(f, "DestinationUnreachable({name})"),
                None => write!(f, "DestinationUnreachable(Code: {code})"),
            },
            (11, 0) => f.write_str("TimeExceeded(TTLExceeded)"),
            (11, 1) => f.write_str("TimeExceeded(FragmentReassemblyTimeExceeded)"),
            (t, c) => write!(f, "{t}({c})"),
        }
    }
}

/// One monitor event, as Hubble and `cilium-dbg monitor` consume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorEvent {
    #[serde(flatten)]
    pub kind: MonitorEventKind,
    /// The endpoint whose program emitted the event.
    pub source_endpoint: EndpointId,
    /// The destination endpoint when it is local, else 0.
    pub destination_endpoint: EndpointId,
    pub source_identity: NumericIdentity,
    pub destination_identity: NumericIdentity,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// Ports in host order (ICMP echo: the identifier as source port of requests).
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: Protocol,
    /// Of the captured packet, for TCP.
    pub tcp_flags: Option<TcpFlags>,
    /// Of the captured packet, for ICMP.
    pub icmp: Option<IcmpTypeCode>,
    /// Whether the packet is a reply of a tracked connection.
    pub is_reply: bool,
    /// Length of the whole packet.
    pub packet_len: u32,
    pub captured_len: u16,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// skb flow hash.
    pub hash: u32,
    /// `None`: the ring buffer does not say.
    pub cpu: Option<u32>,
    /// Kernel monotonic time of the event, in nanoseconds.
    pub timestamp_ns: u64,
}

impl MonitorEvent {
    pub fn event_type(&self) -> MonitorEventType {
        match self.kind {
            MonitorEventKind::Drop { .. } => MonitorEventType::Drop,
            MonitorEventKind::Trace { .. } => MonitorEventType::Trace,
            MonitorEventKind::PolicyVerdict { .. } => MonitorEventType::PolicyVerdict,
        }
    }

    /// Decodes one ring-buffer record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MonitorError> {
        Self::from_record(&EventRecord::from_bytes(bytes)?)
    }

    pub fn from_record(record: &EventRecord) -> Result<Self, MonitorError> {
        let kind = match record.r#type {
            NOTIFY_DROP => MonitorEventKind::Drop {
                reason: record.subtype,
                reason_name: drop_reason_name(record.subtype).map(str::to_owned),
                ext_error: record.ext_error,
                file: record.file,
                line: record.line,
            },
            NOTIFY_TRACE => MonitorEventKind::Trace {
                observation_point: ObservationPoint::from_code(record.obs_point),
                state: TraceState::from_code(record.reason),
            },
            NOTIFY_POLICY_VERDICT => MonitorEventKind::PolicyVerdict {
                verdict: record.verdict,
                direction: if record.direction == POLICY_INGRESS {
                    TrafficDirection::Ingress
                } else {
                    TrafficDirection::Egress
                },
                match_type: PolicyMatchType::from_code(record.match_type),
                cookie: record.cookie,
            },
            kind => return Err(MonitorError::UnknownType { kind }),
        };
        let ipv6 = record.flags & EVENT_F_IPV6 != 0;
        let (source_ip, destination_ip) = if ipv6 {
            (
                IpAddr::V6(Ipv6Addr::from(record.saddr)),
                IpAddr::V6(Ipv6Addr::from(record.daddr)),
            )
        } else {
            (
                IpAddr::V4(record.source_ipv4()),
                IpAddr::V4(record.destination_ipv4()),
            )
        };
        let protocol = Protocol::new(record.protocol);
        let l4 = captured_l4(record.captured(), ipv6, record.protocol);
        Ok(MonitorEvent {
            kind,
            source_endpoint: EndpointId::new(record.source),
            destination_endpoint: EndpointId::new(record.dst_id),
            source_identity: record.source_identity(),
            destination_identity: record.destination_identity(),
            source_ip,
            destination_ip,
            source_port: record.source_port(),
            destination_port: record.destination_port(),
            protocol,
            tcp_flags: match l4 {
                Some(CapturedL4::Tcp(flags)) => Some(flags),
                _ => None,
            },
            icmp: match l4 {
                Some(CapturedL4::Icmp(tc)) => Some(tc),
                _ => None,
            },
            is_reply: record.flags & EVENT_F_REPLY != 0,
            packet_len: record.len_orig,
            captured_len: record.len_cap,
            ifindex: record.ifindex,
            hash: record.hash,
            cpu: None,
            timestamp_ns: record.ktime_ns,
        })
    }

    /// Upstream's `GetConnectionSummary`: `ip:port -> ip:port tcp FLAGS`, `ip -> ip ICMP`.
    pub fn connection_summary(&self) -> String {
        let join = |ip: IpAddr, port: u16| match ip {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        if let Some(icmp) = self.icmp {
            return format!("{} -> {} {icmp}", self.source_ip, self.destination_ip);
        }
        let proto = match self.protocol {
            Protocol::TCP => "tcp",
            Protocol::UDP => "udp",
            Protocol::SCTP => "sctp",
            _ => return format!("{} -> {}", self.source_ip, self.destination_ip),
        };
        let mut line = format!(
            "{} -> {} {proto}",
            join(self.source_ip, self.source_port),
            join(self.destination_ip, self.destination_port)
        );
        if self.protocol == Protocol::TCP {
            let _ = write!(line, " {}", self.tcp_flags.unwrap_or_default());
        }
        line
    }
}

enum CapturedL4 {
    Tcp(TcpFlags),
    Icmp(IcmpTypeCode),
}

/// TCP flags or ICMP type/code from a captured Ethernet frame; `None` when the capture stops
/// short of them (or the packet is a non-first fragment).
fn captured_l4(data: &[u8], ipv6: bool, protocol: u8) -> Option<CapturedL4> {
    const ETH_HLEN: usize = 14;
    let ip = data.get(ETH_HLEN..)?;
    let l4 = if ipv6 {
        // Extension headers are not walked: the programs handle IPv4 only for now.
        ip.get(40..)?
    } else {
        let ihl = usize::from(ip.first()? & 0x0f) * 4;
        let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
        if ihl < 20 || frag != 0 {
            return None;
        }
        ip.get(ihl..)?
    };
    match protocol {
        6 => Some(CapturedL4::Tcp(TcpFlags(*l4.get(13)?))),
        1 | 58 => Some(CapturedL4::Icmp(IcmpTypeCode {
            icmp_type: *l4.first()?,
            code: *l4.get(1)?,
        })),
        _ => None,
    }
}

/// Upstream's BPF source file names (`pkg/monitor/api/files.go`); file id 0 is ours: the only
/// source file of this datapath, `bpf_lxc.c`.
fn bpf_file_name(id: u8) -> String {
    match id {
        0 | 2 => "bpf_lxc.c".into(),
        1 => "bpf_host.c".into(),
        3 => "bpf_overlay.c".into(),
        4 => "bpf_xdp.c".into(),
        5 => "bpf_sock.c".into(),
        6 => "bpf_network.c".into(),
        other => format!("unknown({other})"),
    }
}

/// One event as `cilium-dbg monitor` prints it (numeric identities, no trailing newline).
pub fn format_monitor_line(event: &MonitorEvent) -> String {
    let summary = event.connection_summary();
    let identities = format!(
        "identity {}->{}",
        event.source_identity, event.destination_identity
    );
    match &event.kind {
        MonitorEventKind::Drop {
            reason,
            ext_error,
            file,
            line,
            ..
        } => format!(
            "xx drop ({}) flow {:#x} to endpoint {}, ifindex {}, file {}:{}, {identities}: {summary}",
            drop_reason_text(*reason, *ext_error),
            event.hash,
            event.destination_endpoint,
            event.ifindex,
            bpf_file_name(*file),
            line,
        ),
        MonitorEventKind::Trace {
            observation_point,
            state,
        } => {
            let point = match observation_point {
                ObservationPoint::ToEndpoint => {
                    format!("-> endpoint {}", event.destination_endpoint)
                }
                ObservationPoint::ToProxy => "-> proxy".into(),
                ObservationPoint::ToHost => "-> host from".into(),
                ObservationPoint::ToStack => "-> stack".into(),
                ObservationPoint::ToOverlay => "-> overlay".into(),
                ObservationPoint::ToNetwork => "-> network".into(),
                ObservationPoint::FromEndpoint => {
                    format!("<- endpoint {}", event.source_endpoint)
                }
                ObservationPoint::FromProxy => "<- proxy".into(),
                ObservationPoint::FromHost => "<- host".into(),
                ObservationPoint::FromStack => "<- stack".into(),
                ObservationPoint::FromOverlay => "<- overlay".into(),
                ObservationPoint::FromNetwork => "<- network".into(),
                ObservationPoint::Unknown(_) => "unknown trace".into(),
            };
            // No reverse NAT address is carried: upstream prints the unspecified address then.
            format!(
                "{point} flow {:#x} {identities} state {} ifindex {} orig-ip {}: {summary}",
                event.hash,
                state.name(),
                event.ifindex,
                Ipv4Addr::UNSPECIFIED,
            )
        }
        MonitorEventKind::PolicyVerdict {
            verdict,
            direction,
            match_type,
            ..
        } => {
            let remote = match direction {
                TrafficDirection::Ingress => event.source_identity,
                TrafficDirection::Egress => event.destination_identity,
            };
            let action = match verdict {
                v if *v < 0 => "deny",
                v if *v > 0 => "redirect",
                _ => "allow",
            };
            let dir = match direction {
                TrafficDirection::Ingress => "ingress",
                TrafficDirection::Egress => "egress",
            };
            format!(
                "Policy verdict log: flow {:#x} local EP ID {}, remote ID {remote}, proto {}, {dir}, action {action}, auth: disabled, match {}, {summary}",
                event.hash,
                event.source_endpoint,
                event.protocol.get(),
                match_type.name(),
            )
        }
    }
}

/// What the reader and the datapath know about events that did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventCounters {
    /// Records decoded into events.
    pub read: u64,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Events the datapath's rate limit suppressed (summed over CPUs).
    pub suppressed: u64,
    /// Events the datapath lost to a full ring buffer (summed over CPUs).
    pub lost: u64,
}

/// Reads `cilium_events` synchronously.
pub struct EventReader {
    ring: RingBuf<MapData>,
    ratelimit: PerCpuArray<MapData, EventsRateLimit>,
    read: u64,
    undecodable: u64,
}

impl fmt::Debug for EventReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventReader")
            .field("read", &self.read)
            .field("undecodable", &self.undecodable)
            .finish_non_exhaustive()
    }
}

fn dup_map(fd: std::os::fd::BorrowedFd<'_>, name: &'static str) -> Result<Map, MonitorError> {
    let owned = fd
        .try_clone_to_owned()
        .map_err(|source| MonitorError::DupFd { name, source })?;
    let data = MapData::from_fd(owned).map_err(|source| MonitorError::OpenMap { name, source })?;
    Map::from_map_data(data).map_err(|source| MonitorError::OpenMap { name, source })
}

fn pinned_map(dir: &Path, name: &'static str) -> Result<Map, MonitorError> {
    let data = MapData::from_pin(dir.join(name))
        .map_err(|source| MonitorError::OpenMap { name, source })?;
    Map::from_map_data(data).map_err(|source| MonitorError::OpenMap { name, source })
}

impl EventReader {
    /// A reader on the event maps of loaded objects (its own fds: the objects may move on).
    pub fn new(objects: &BpfObjects) -> Result<Self, MonitorError> {
        let maps = &objects.maps;
        let ring = dup_map(maps.events.as_fd(), names::EVENTS)?;
        let ratelimit = dup_map(
            maps.events_ratelimit.map().fd().as_fd(),
            names::EVENTS_RATELIMIT,
        )?;
        Self::from_maps(ring, ratelimit)
    }

    /// A reader on the maps pinned under `pin_dir` (`<bpf-root>/tc/globals`), for a process that
    /// does not load the programs itself.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MonitorError> {
        Self::from_maps(
            pinned_map(pin_dir, names::EVENTS)?,
            pinned_map(pin_dir, names::EVENTS_RATELIMIT)?,
        )
    }

    fn from_maps(ring: Map, ratelimit: Map) -> Result<Self, MonitorError> {
        Ok(EventReader {
            ring: RingBuf::try_from(ring).map_err(|source| MonitorError::OpenMap {
                name: names::EVENTS,
                source,
            })?,
            ratelimit: PerCpuArray::try_from(ratelimit).map_err(|source| {
                MonitorError::OpenMap {
                    name: names::EVENTS_RATELIMIT,
                    source,
                }
            })?,
            read: 0,
            undecodable: 0,
        })
    }

    /// Every event available now, in ring order; undecodable records are counted and skipped.
    pub fn drain(&mut self) -> Vec<MonitorEvent> {
        drain_ring(&mut self.ring, &mut self.read, &mut self.undecodable)
    }

    /// The reader's and the datapath's counters.
    pub fn counters(&self) -> Result<EventCounters, MonitorError> {
        counters(&self.ratelimit, self.read, self.undecodable)
    }

    /// An async reader over the same maps; needs a tokio runtime with IO enabled.
    pub fn into_async(self) -> Result<AsyncEventReader, MonitorError> {
        let EventReader {
            ring,
            ratelimit,
            read,
            undecodable,
        } = self;
        // SAFETY: the AsyncFd owns the ring buffer, and with it the fd, for its whole life; the
        // ring buffer never swaps its fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(
            |err| MonitorError::Register {
                source: err.into_parts().1,
            },
        )?;
        Ok(AsyncEventReader {
            ring,
            ratelimit,
            read,
            undecodable,
        })
    }
}

fn drain_ring(
    ring: &mut RingBuf<MapData>,
    read: &mut u64,
    undecodable: &mut u64,
) -> Vec<MonitorEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        match MonitorEvent::from_bytes(&item) {
            Ok(event) => {
                *read += 1;
                events.push(event);
            }
            Err(err) => {
                *undecodable += 1;
                tracing::debug!(error = %err, "skipping an undecodable event record");
            }
        }
    }
    events
}

fn counters(
    ratelimit: &PerCpuArray<MapData, EventsRateLimit>,
    read: u64,
    undecodable: u64,
) -> Result<EventCounters, MonitorError> {
    let values = ratelimit
        .get(&0, 0)
        .map_err(|source| MonitorError::Counters { source })?;
    let mut out = EventCounters {
        read,
        undecodable,
        ..EventCounters::default()
    };
    for value in values.iter() {
        out.suppressed += value.suppressed;
        out.lost += value.lost;
    }
    Ok(out)
}

/// Reads `cilium_events` as the ring buffer fills, without a polling loop.
pub struct AsyncEventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    ratelimit: PerCpuArray<MapData, EventsRateLimit>,
    read: u64,
    undecodable: u64,
}

impl fmt::Debug for AsyncEventReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncEventReader")
            .field("read", &self.read)
            .field("undecodable", &self.undecodable)
            .finish_non_exhaustive()
    }
}

impl AsyncEventReader {
    /// Waits until records are available and returns them (never an empty batch).
    pub async fn next_batch(&mut self) -> io::Result<Vec<MonitorEvent>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let events = drain_ring(guard.get_inner_mut(), &mut self.read, &mut self.undecodable);
            // Everything is consumed, so the next readiness is a new record.
            guard.clear_ready();
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// The reader's and the datapath's counters.
    pub fn counters(&self) -> Result<EventCounters, MonitorError> {
        counters(&self.ratelimit, self.read, self.undecodable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::events::EVENT_CAPTURE_LEN;

    /// A record as the programs write it, for a TCP SYN 10.0.0.1:41234 -> 10.0.0.2:80.
    fn record(kind: u8) -> EventRecord {
        let mut data = [0u8; EVENT_CAPTURE_LEN];
        data[12] = 0x08; // IPv4 ethertype
        data[14] = 0x45; // version 4, IHL 5
        data[14 + 9] = 6;
        data[14 + 20 + 13] = TcpFlags::SYN;
        EventRecord {
            r#type: kind,
            subtype: 0,
            source: 123,
            hash: 0,
            len_orig: 74,
            len_cap: 74,
            version: 1,
            src_label: 1234,
            dst_label: 5678,
            dst_id: 123,
            obs_point: 0,
            reason: 0,
            verdict: 0,
            direction: POLICY_INGRESS,
            match_type: 0,
            flags: 0,
            protocol: 6,
            sport: 41234u16.to_be(),
            dport: 80u16.to_be(),
            ifindex: 5,
            family: 2,
            pad: [0; 3],
            ktime_ns: 99,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            cookie: 0,
            line: 0,
            file: 0,
            ext_error: 0,
            data,
        }
    }

    fn bytes(record: &EventRecord) -> Vec<u8> {
        // SAFETY: EventRecord is Pod without padding; reading its bytes is sound.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(record).cast::<u8>(),
                size_of::<EventRecord>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn drop_record_formats_like_cilium_dbg_monitor() {
        let mut rec = record(NOTIFY_DROP);
        rec.subtype = 133;
        rec.verdict = -133;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(event.event_type(), MonitorEventType::Drop);
        assert_eq!(
            format_monitor_line(&event),
            "xx drop (Policy denied) flow 0x0 to endpoint 123, ifindex 5, file bpf_lxc.c:0, \
             identity 1234->5678: 10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN"
        );
        let MonitorEventKind::Drop { reason_name, .. } = &event.kind else {
            panic!("not a drop: {event:?}");
        };
        assert_eq!(reason_name.as_deref(), Some("Policy denied"));
    }

    #[test]
    fn deny_rule_and_unnamed_reasons_render_as_upstream() {
        let mut rec = record(NOTIFY_DROP);
        rec.subtype = 181;
        rec.line = 210;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(format_monitor_line(&event).starts_with(
            "xx drop (Policy denied by denylist) flow 0x0 to endpoint 123, ifindex 5, file bpf_lxc.c:210,"
        ));
        rec.subtype = 250;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(format_monitor_line(&event).starts_with("xx drop (250, 0) flow"));
    }

    #[test]
    fn trace_record_formats_with_observation_point_and_state() {
        let mut rec = record(NOTIFY_TRACE);
        rec.obs_point = 0;
        rec.subtype = 0;
        rec.reason = 2;
        rec.hash = 0xabc;
        rec.flags = EVENT_F_REPLY;
        rec.data[14 + 20 + 13] = TcpFlags::SYN | TcpFlags::ACK;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(event.is_reply);
        assert_eq!(
            format_monitor_line(&event),
            "-> endpoint 123 flow 0xabc identity 1234->5678 state reply ifindex 5 orig-ip 0.0.0.0: \
             10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN, ACK"
        );
        rec.obs_point = 3;
        rec.reason = 0;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert!(format_monitor_line(&event).starts_with("-> stack flow 0xabc"));
    }

    #[test]
    fn policy_verdict_record_formats_with_action_and_match() {
        let mut rec = record(NOTIFY_POLICY_VERDICT);
        rec.verdict = 0;
        rec.match_type = 2;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(
            format_monitor_line(&event),
            "Policy verdict log: flow 0x0 local EP ID 123, remote ID 1234, proto 6, ingress, \
             action allow, auth: disabled, match L3-L4, 10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN"
        );
        rec.verdict = -133;
        rec.direction = 2;
        rec.match_type = 0;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        let line = format_monitor_line(&event);
        assert!(
            line.contains("remote ID 5678, proto 6, egress, action deny"),
            "{line}"
        );
        assert!(line.contains("match none"), "{line}");
    }

    #[test]
    fn icmp_summary_names_the_type() {
        let mut rec = record(NOTIFY_TRACE);
        rec.protocol = 1;
        rec.data[14 + 9] = 1;
        rec.data[14 + 20] = 8;
        rec.data[14 + 21] = 0;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(
            event.icmp,
            Some(IcmpTypeCode {
                icmp_type: 8,
                code: 0
            })
        );
        assert_eq!(
            event.connection_summary(),
            "10.0.0.1 -> 10.0.0.2 EchoRequest"
        );
        rec.data[14 + 20] = 3;
        rec.data[14 + 21] = 3;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(
            event.connection_summary(),
            "10.0.0.1 -> 10.0.0.2 DestinationUnreachable(Port)"
        );
    }

    #[test]
    fn truncated_captures_fall_back_to_the_record_tuple() {
        let mut rec = record(NOTIFY_TRACE);
        rec.len_cap = 20;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        assert_eq!(event.tcp_flags, None);
        assert_eq!(
            event.connection_summary(),
            "10.0.0.1:41234 -> 10.0.0.2:80 tcp "
        );
        // A capture length beyond the buffer is clamped, not trusted.
        rec.len_cap = u16::MAX;
        assert!(MonitorEvent::from_bytes(&bytes(&rec)).is_ok());
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let rec = record(NOTIFY_DROP);
        let raw = bytes(&rec);
        assert!(matches!(
            MonitorEvent::from_bytes(&raw[..10]),
            Err(MonitorError::Record(_))
        ));
        assert!(matches!(
            MonitorEvent::from_bytes(&bytes(&record(77))),
            Err(MonitorError::UnknownType { kind: 77 })
        ));
        // Any bytes of the right length decode or fail cleanly.
        for fill in [0u8, 0xff, 0x5a] {
            let junk = vec![fill; raw.len()];
            let _ = MonitorEvent::from_bytes(&junk);
        }
    }

    #[test]
    fn filter_by_type() {
        let drop = MonitorEvent::from_bytes(&bytes(&record(NOTIFY_DROP))).unwrap();
        let trace = MonitorEvent::from_bytes(&bytes(&record(NOTIFY_TRACE))).unwrap();
        let verdict = MonitorEvent::from_bytes(&bytes(&record(NOTIFY_POLICY_VERDICT))).unwrap();
        let only_drops = MonitorFilter::new(["drop".parse().unwrap()]);
        assert!(only_drops.matches(&drop));
        assert!(!only_drops.matches(&trace));
        let two = MonitorFilter::new([MonitorEventType::Trace, MonitorEventType::PolicyVerdict]);
        assert!(!two.matches(&drop) && two.matches(&trace) && two.matches(&verdict));
        assert!(MonitorFilter::default().matches(&drop));
        assert!("l7".parse::<MonitorEventType>().is_err());
        assert_eq!(
            MonitorEventType::PolicyVerdict.to_string(),
            "policy-verdict"
        );
    }

    #[test]
    fn events_serialize_with_their_type() {
        let mut rec = record(NOTIFY_DROP);
        rec.subtype = 133;
        let event = MonitorEvent::from_bytes(&bytes(&rec)).unwrap();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "drop");
        assert_eq!(json["reason"], 133);
        assert_eq!(json["reason_name"], "Policy denied");
        assert_eq!(json["source_ip"], "10.0.0.1");
        assert_eq!(json["source_identity"], 1234);
        let back: MonitorEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
