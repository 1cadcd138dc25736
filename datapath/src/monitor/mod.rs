//! The event reader: turns `cilium_events` ring-buffer records into typed [`MonitorEvent`]s for
//! Hubble and `cilium-dbg monitor`.
//!
//! The programs write one record layout (`maps::events::EventRecord`) for drop, trace and policy-verdict
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
//!
//! The event types are plain data and build without the `kernel` feature (Hubble parses them
//! into flows); decoding records and reading the ring buffer (`reader`) need it.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

use crate::api::{EndpointId, MacAddr, Protocol};

#[cfg(feature = "kernel")]
mod reader;
#[cfg(feature = "kernel")]
pub use reader::{AsyncEventReader, EventReader, MonitorError};

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
    /// The captured packet's Ethernet addresses, source then destination (the programs run
    /// on veths, so every packet has an Ethernet header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethernet: Option<(MacAddr, MacAddr)>,
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

/// Upstream's BPF source file names (`pkg/monitor/api/files.go`); file id 0 is ours: the only
/// source file of this datapath, `bpf_lxc.c`.
pub fn bpf_file_name(id: u8) -> std::borrow::Cow<'static, str> {
    match id {
        0 | 2 => "bpf_lxc.c".into(),
        1 => "bpf_host.c".into(),
        3 => "bpf_overlay.c".into(),
        4 => "bpf_xdp.c".into(),
        5 => "bpf_sock.c".into(),
        6 => "bpf_network.c".into(),
        other => format!("unknown({other})").into(),
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
