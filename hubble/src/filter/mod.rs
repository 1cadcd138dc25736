//! Flow filters: the `whitelist`/`blacklist` of `GetFlowsRequest`, compiled once per request
//! and evaluated against every flow the request streams.
//!
//! Semantics are upstream Hubble's (`pkg/hubble/filters`): within one [`FlowFilter`] every field
//! that is set must match (AND); within one field any listed value may match (OR); a flow passes
//! when it matches any whitelist filter (or the whitelist is empty) and no blacklist filter.
//!
//! Supported fields and how they match:
//! - `source_ip`, `destination_ip`, `source_ip_xlated`: exact addresses or CIDRs (host bits
//!   may be set, as Go's `ParseCIDR` allows);
//! - `source_pod`, `destination_pod`: `[namespace/]pod-name-prefix`; without a `/` the namespace
//!   is `default`, and `ns/` matches every endpoint of namespace `ns`; a second `/` is an
//!   error (upstream silently drops what follows it);
//! - `source_label`, `destination_label`: label selectors, see [`labels`];
//! - `source_fqdn`, `destination_fqdn`: FQDN glob patterns against `source_names` /
//!   `destination_names`, see [`patterns`];
//! - `source_identity`, `destination_identity`, `verdict`, `traffic_direction`, `ip_version`;
//! - `drop_reason_desc`: only dropped flows match;
//! - `event_type`: type 0 matches every type; the sub type counts only with `match_sub_type`;
//! - `protocol`: `tcp`, `udp`, `sctp`, `icmp` (v4 or v6), `icmpv4`, `icmpv6`, and the L7
//!   records `dns`, `http`, `kafka`, case-insensitive;
//! - `source_port`, `destination_port`: decimal 0-65535, against TCP, UDP and SCTP ports;
//! - `reply`: against `is_reply`; a dropped flow of unknown direction counts as not a reply;
//! - `tcp_flags`: a flow matches an entry when it has at least every flag set there;
//! - `node_name`: `cluster/node` glob patterns, see [`patterns`].
//!
//! Every other field (services, workloads, cluster names, interfaces, HTTP, DNS query, UUID,
//! node labels, trace ids, CEL expressions) is rejected with [`FilterError::Unsupported`]
//! rather than ignored: a filter that silently matched more than asked would be worse than an
//! error. The CLI's `--namespace ns` is not a field either: it becomes two whitelist filters,
//! `source_pod: ["ns/"]` OR `destination_pod: ["ns/"]`.
//!
//! Everything is parsed in [`FlowFilters::compile`]; [`FlowFilters::matches`] runs for every
//! flow of every stream and so neither parses filter input nor allocates.

pub mod labels;
pub mod patterns;

use std::net::IpAddr;

use ipnet::IpNet;
use proto::flow::{
    DropReason, Endpoint, Flow, FlowFilter, IpVersion, TcpFlags, TrafficDirection, Verdict, layer4,
    layer7,
};

use self::labels::{LabelSelector, SelectorParseError};
use self::patterns::{Glob, NodeNamePattern, PatternError};

/// Why a flow filter could not be compiled. Every variant names the `FlowFilter` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("flow filter field {field} is not supported")]
    Unsupported { field: &'static str },
    #[error("invalid {field} filter {value:?}: not an IP address or CIDR")]
    InvalidIp { field: &'static str, value: String },
    #[error("invalid {field} filter {value:?}: not a port number between 0 and 65535")]
    InvalidPort { field: &'static str, value: String },
    #[error(
        "invalid protocol filter {value:?}: unknown protocol, expected one of tcp, udp, sctp, \
         icmp, icmpv4, icmpv6, dns, http, kafka"
    )]
    UnknownProtocol { value: String },
    #[error("invalid {field} filter {value:?}: must be [namespace/][pod-name-prefix]")]
    InvalidPod { field: &'static str, value: String },
    #[error("invalid {field} filter {value:?}: {reason}")]
    InvalidLabelSelector {
        field: &'static str,
        value: String,
        #[source]
        reason: SelectorParseError,
    },
    #[error("invalid {field} filter {value:?}: {reason}")]
    InvalidPattern {
        field: &'static str,
        value: String,
        #[source]
        reason: PatternError,
    },
    #[error("invalid {field} filter: {value} is not a known enum value")]
    UnknownEnumValue { field: &'static str, value: i32 },
}

/// Filter errors are the client's fault: `InvalidArgument`, with the message naming the field.
impl From<FilterError> for tonic::Status {
    fn from(error: FilterError) -> Self {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// A request's compiled whitelist and blacklist. The default (both empty) passes every flow.
#[derive(Debug, Clone, Default)]
pub struct FlowFilters {
    whitelist: Vec<CompiledFilter>,
    blacklist: Vec<CompiledFilter>,
}

impl FlowFilters {
    /// Compiles both lists; the first invalid or unsupported field fails the whole request.
    pub fn compile(
        whitelist: &[FlowFilter],
        blacklist: &[FlowFilter],
    ) -> Result<FlowFilters, FilterError> {
        let compile_all = |filters: &[FlowFilter]| {
            filters
                .iter()
                .map(CompiledFilter::compile)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(FlowFilters {
            whitelist: compile_all(whitelist)?,
            blacklist: compile_all(blacklist)?,
        })
    }

    /// Whether `flow` matches any whitelist filter (or there is none) and no blacklist filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

/// Which endpoint of the flow a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

impl Side {
    fn endpoint(self, flow: &Flow) -> Option<&Endpoint> {
        match self {
            Side::Source => flow.source.as_ref(),
            Side::Destination => flow.destination.as_ref(),
        }
    }

    fn port(self, flow: &Flow) -> Option<u32> {
        let (source, destination) = match flow.l4.as_ref()?.protocol.as_ref()? {
            layer4::Protocol::Tcp(tcp) => (tcp.source_port, tcp.destination_port),
            layer4::Protocol::Udp(udp) => (udp.source_port, udp.destination_port),
            layer4::Protocol::Sctp(sctp) => (sctp.source_port, sctp.destination_port),
            layer4::Protocol::IcmPv4(_) | layer4::Protocol::IcmPv6(_) => return None,
        };
        Some(match self {
            Side::Source => source,
            Side::Destination => destination,
        })
    }

    fn names(self, flow: &Flow) -> &[String] {
        match self {
            Side::Source => &flow.source_names,
            Side::Destination => &flow.destination_names,
        }
    }
}

/// Which address of `flow.IP` an IP check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpField {
    Source,
    SourceXlated,
    Destination,
}

/// Exact addresses and CIDRs of one IP field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpMatcher {
    field: IpField,
    addresses: Vec<IpAddr>,
    cidrs: Vec<IpNet>,
}

impl IpMatcher {
    fn compile(field: IpField, name: &'static str, values: &[String]) -> Result<Self, FilterError> {
        let mut matcher = IpMatcher {
            field,
            addresses: Vec::new(),
            cidrs: Vec::new(),
        };
        for value in values {
            let invalid = || FilterError::InvalidIp {
                field: name,
                value: value.clone(),
            };
            if value.contains('/') {
                matcher.cidrs.push(value.parse().map_err(|_| invalid())?);
            } else {
                matcher
                    .addresses
                    .push(value.parse().map_err(|_| invalid())?);
            }
        }
        Ok(matcher)
    }

    fn matches(&self, flow: &Flow) -> bool {
        let Some(ip) = flow.ip.as_ref() else {
            return false;
        };
        let text = match self.field {
            IpField::Source => &ip.source,
            IpField::SourceXlated => &ip.source_xlated,
            IpField::Destination => &ip.destination,
        };
        let Ok(address) = text.parse::<IpAddr>() else {
            return false;
        };
        self.addresses.contains(&address) || self.cidrs.iter().any(|net| net.contains(&address))
    }
}

/// A `[namespace/]pod-name-prefix` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodMatcher {
    namespace: Box<str>,
    prefix: Box<str>,
}

impl PodMatcher {
    fn parse(field: &'static str, value: &str) -> Result<Self, FilterError> {
        let mut parts = value.split('/');
        let (namespace, prefix) = match (parts.next(), parts.next(), parts.next()) {
            (Some(""), None, _) => ("", ""),
            (Some(pod), None, _) => ("default", pod),
            (Some(namespace), Some(prefix), None) => (namespace, prefix),
            _ => ("", ""),
        };
        if namespace.is_empty() && prefix.is_empty() {
            return Err(FilterError::InvalidPod {
                field,
                value: value.to_owned(),
            });
        }
        Ok(Self {
            namespace: Box::from(namespace),
            prefix: Box::from(prefix),
        })
    }

    fn matches(&self, endpoint: &Endpoint) -> bool {
        *self.namespace == *endpoint.namespace && endpoint.pod_name.starts_with(&*self.prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EventTypeMatcher {
    r#type: i32,
    sub_type: Option<i32>,
}

/// Protocol bits; `icmp` sets both ICMP bits.
mod protocol {
    pub const TCP: u16 = 1 << 0;
    pub const UDP: u16 = 1 << 1;
    pub const ICMPV4: u16 = 1 << 2;
    pub const ICMPV6: u16 = 1 << 3;
    pub const SCTP: u16 = 1 << 4;
    pub const DNS: u16 = 1 << 5;
    pub const HTTP: u16 = 1 << 6;
    pub const KAFKA: u16 = 1 << 7;
}

fn protocol_bits(value: &str) -> Option<u16> {
    let bits = match value.to_ascii_lowercase().as_str() {
        "tcp" => protocol::TCP,
        "udp" => protocol::UDP,
        "sctp" => protocol::SCTP,
        "icmp" => protocol::ICMPV4 | protocol::ICMPV6,
        "icmpv4" => protocol::ICMPV4,
        "icmpv6" => protocol::ICMPV6,
        "dns" => protocol::DNS,
        "http" => protocol::HTTP,
        "kafka" => protocol::KAFKA,
        _ => return None,
    };
    Some(bits)
}

fn flow_protocol_bits(flow: &Flow) -> u16 {
    let l4 = match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(layer4::Protocol::Tcp(_)) => protocol::TCP,
        Some(layer4::Protocol::Udp(_)) => protocol::UDP,
        Some(layer4::Protocol::IcmPv4(_)) => protocol::ICMPV4,
        Some(layer4::Protocol::IcmPv6(_)) => protocol::ICMPV6,
        Some(layer4::Protocol::Sctp(_)) => protocol::SCTP,
        None => 0,
    };
    let l7 = match flow.l7.as_ref().and_then(|l7| l7.record.as_ref()) {
        Some(layer7::Record::Dns(_)) => protocol::DNS,
        Some(layer7::Record::Http(_)) => protocol::HTTP,
        Some(layer7::Record::Kafka(_)) => protocol::KAFKA,
        None => 0,
    };
    l4 | l7
}

fn tcp_flag_bits(flags: &TcpFlags) -> u16 {
    [
        flags.fin, flags.syn, flags.rst, flags.psh, flags.ack, flags.urg, flags.ece, flags.cwr,
        flags.ns,
    ]
    .iter()
    .enumerate()
    .fold(0, |bits, (i, set)| if *set { bits | 1 << i } else { bits })
}

/// One compiled field of a `FlowFilter`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Ip(IpMatcher),
    Pod(Side, Vec<PodMatcher>),
    Label(Side, Vec<LabelSelector>),
    Fqdn(Side, Vec<Glob>),
    Identity(Side, Vec<u32>),
    Port(Side, Vec<u32>),
    Verdict(Vec<i32>),
    DropReason(Vec<i32>),
    TrafficDirection(Vec<i32>),
    IpVersion(Vec<i32>),
    EventType(Vec<EventTypeMatcher>),
    Protocol(u16),
    Reply(Vec<bool>),
    TcpFlags(Vec<u16>),
    NodeName(Vec<NodeNamePattern>),
}

impl Check {
    fn matches(&self, flow: &Flow) -> bool {
        match self {
            Check::Ip(matcher) => matcher.matches(flow),
            Check::Pod(side, pods) => side.endpoint(flow).is_some_and(|ep| {
                !(ep.namespace.is_empty() && ep.pod_name.is_empty())
                    && pods.iter().any(|pod| pod.matches(ep))
            }),
            Check::Label(side, selectors) => {
                let labels = side.endpoint(flow).map_or(&[][..], |ep| &ep.labels[..]);
                selectors.iter().any(|s| s.matches(labels))
            }
            Check::Fqdn(side, globs) => side
                .names(flow)
                .iter()
                .any(|name| globs.iter().any(|glob| glob.matches(name))),
            Check::Identity(side, ids) => side
                .endpoint(flow)
                .is_some_and(|ep| ids.contains(&ep.identity)),
            Check::Port(side, ports) => side.port(flow).is_some_and(|p| ports.contains(&p)),
            Check::Verdict(verdicts) => verdicts.contains(&flow.verdict),
            Check::DropReason(reasons) => {
                flow.verdict == Verdict::Dropped as i32 && reasons.contains(&flow.drop_reason_desc)
            }
            Check::TrafficDirection(directions) => directions.contains(&flow.traffic_direction),
            Check::IpVersion(versions) => {
                let version = flow.ip.as_ref().map_or(0, |ip| ip.ip_version);
                versions.contains(&version)
            }
            Check::EventType(types) => flow.event_type.is_some_and(|event| {
                types.iter().any(|t| {
                    (t.r#type == 0 || t.r#type == event.r#type)
                        && t.sub_type.is_none_or(|sub| sub == event.sub_type)
                })
            }),
            Check::Protocol(bits) => flow_protocol_bits(flow) & bits != 0,
            Check::Reply(wanted) => {
                // Upstream compatibility: older clients filter on the legacy `reply` field,
                // which is false for drops, so a drop of unknown direction is "not a reply".
                let reply = match flow.is_reply {
                    Some(reply) => reply,
                    None if flow.verdict == Verdict::Dropped as i32 => false,
                    None => return false,
                };
                wanted.contains(&reply)
            }
            Check::TcpFlags(wanted) => {
                let flags = match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
                    Some(layer4::Protocol::Tcp(tcp)) => tcp.flags.as_ref().map(tcp_flag_bits),
                    _ => None,
                };
                flags.is_some_and(|have| wanted.iter().any(|want| have & want == *want))
            }
            Check::NodeName(patterns) => patterns.iter().any(|p| p.matches(&flow.node_name)),
        }
    }
}

/// One `FlowFilter`: all checks must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledFilter {
    checks: Vec<Check>,
}

/// Validates enum numbers and keeps them as the `i32` the flow carries.
fn enum_values(
    field: &'static str,
    values: &[i32],
    known: impl Fn(i32) -> bool,
) -> Result<Vec<i32>, FilterError> {
    values
        .iter()
        .map(|&value| {
            if known(value) {
                Ok(value)
            } else {
                Err(FilterError::UnknownEnumValue { field, value })
            }
        })
        .collect()
}

/// Decimal digits only, as Go's `strconv.ParseUint(p, 10, 16)`: no sign, no spaces.
fn parse_port(field: &'static str, value: &str) -> Result<u32, FilterError> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u16>() {
        Ok(port) if digits_only => Ok(u32::from(port)),
        _ => Err(FilterError::InvalidPort {
            field,
            value: value.to_owned(),
        }),
    }
}

fn unsupported_field(filter: &FlowFilter) -> Option<&'static str> {
    let cel = filter
        .experimental
        .as_ref()
        .is_some_and(|e| !e.cel_expression.is_empty());
    [
        ("uuid", !filter.uuid.is_empty()),
        ("source_service", !filter.source_service.is_empty()),
        (
            "destination_service",
            !filter.destination_service.is_empty(),
        ),
        ("source_workload", !filter.source_workload.is_empty()),
        (
            "destination_workload",
            !filter.destination_workload.is_empty(),
        ),
        (
            "source_cluster_name",
            !filter.source_cluster_name.is_empty(),
        ),
        (
            "destination_cluster_name",
            !filter.destination_cluster_name.is_empty(),
        ),
        ("interface", !filter.interface.is_empty()),
        ("http_status_code", !filter.http_status_code.is_empty()),
        ("http_method", !filter.http_method.is_empty()),
        ("http_path", !filter.http_path.is_empty()),
        ("http_url", !filter.http_url.is_empty()),
        ("http_header", !filter.http_header.is_empty()),
        ("dns_query", !filter.dns_query.is_empty()),
        ("node_labels", !filter.node_labels.is_empty()),
        ("trace_id", !filter.trace_id.is_empty()),
        ("experimental.cel_expression", cel),
    ]
    .into_iter()
    .find_map(|(field, set)| set.then_some(field))
}

/// The endpoint-side fields of a `FlowFilter`, with the field names errors report
/// (`[pod, label, fqdn, port]`).
struct SideFields<'a> {
    side: Side,
    names: [&'static str; 4],
    pods: &'a [String],
    labels: &'a [String],
    fqdns: &'a [String],
    identities: &'a [u32],
    ports: &'a [String],
}

impl SideFields<'_> {
    fn compile(&self, checks: &mut Vec<Check>) -> Result<(), FilterError> {
        let [pod_field, label_field, fqdn_field, port_field] = self.names;
        if !self.pods.is_empty() {
            let pods = self
                .pods
                .iter()
                .map(|value| PodMatcher::parse(pod_field, value))
                .collect::<Result<_, _>>()?;
            checks.push(Check::Pod(self.side, pods));
        }
        if !self.labels.is_empty() {
            let selectors = self
                .labels
                .iter()
                .map(|value| {
                    LabelSelector::parse(value).map_err(|reason| {
                        FilterError::InvalidLabelSelector {
                            field: label_field,
                            value: value.clone(),
                            reason,
                        }
                    })
                })
                .collect::<Result<_, _>>()?;
            checks.push(Check::Label(self.side, selectors));
        }
        if !self.fqdns.is_empty() {
            let globs = self
                .fqdns
                .iter()
                .map(|value| {
                    Glob::parse(value).map_err(|reason| FilterError::InvalidPattern {
                        field: fqdn_field,
                        value: value.clone(),
                        reason,
                    })
                })
                .collect::<Result<_, _>>()?;
            checks.push(Check::Fqdn(self.side, globs));
        }
        if !self.identities.is_empty() {
            checks.push(Check::Identity(self.side, self.identities.to_vec()));
        }
        if !self.ports.is_empty() {
            let ports = self
                .ports
                .iter()
                .map(|value| parse_port(port_field, value))
                .collect::<Result<_, _>>()?;
            checks.push(Check::Port(self.side, ports));
        }
        Ok(())
    }
}

impl CompiledFilter {
    fn compile(filter: &FlowFilter) -> Result<Self, FilterError> {
        if let Some(field) = unsupported_field(filter) {
            return Err(FilterError::Unsupported { field });
        }
        let mut checks = Vec::new();

        for (field, name, values) in [
            (IpField::Source, "source_ip", &filter.source_ip),
            (
                IpField::SourceXlated,
                "source_ip_xlated",
                &filter.source_ip_xlated,
            ),
            (
                IpField::Destination,
                "destination_ip",
                &filter.destination_ip,
            ),
        ] {
            if !values.is_empty() {
                checks.push(Check::Ip(IpMatcher::compile(field, name, values)?));
            }
        }

        for side in [
            SideFields {
                side: Side::Source,
                names: ["source_pod", "source_label", "source_fqdn", "source_port"],
                pods: &filter.source_pod,
                labels: &filter.source_label,
                fqdns: &filter.source_fqdn,
                identities: &filter.source_identity,
                ports: &filter.source_port,
            },
            SideFields {
                side: Side::Destination,
                names: [
                    "destination_pod",
                    "destination_label",
                    "destination_fqdn",
                    "destination_port",
                ],
                pods: &filter.destination_pod,
                labels: &filter.destination_label,
                fqdns: &filter.destination_fqdn,
                identities: &filter.destination_identity,
                ports: &filter.destination_port,
            },
        ] {
            side.compile(&mut checks)?;
        }

        if !filter.verdict.is_empty() {
            let values = enum_values("verdict", &filter.verdict, |v| Verdict::try_from(v).is_ok())?;
            checks.push(Check::Verdict(values));
        }
        if !filter.drop_reason_desc.is_empty() {
            let values = enum_values("drop_reason_desc", &filter.drop_reason_desc, |v| {
                DropReason::try_from(v).is_ok()
            })?;
            checks.push(Check::DropReason(values));
        }
        if !filter.traffic_direction.is_empty() {
            let values = enum_values("traffic_direction", &filter.traffic_direction, |v| {
                TrafficDirection::try_from(v).is_ok()
            })?;
            checks.push(Check::TrafficDirection(values));
        }
        if !filter.ip_version.is_empty() {
            let values = enum_values("ip_version", &filter.ip_version, |v| {
                IpVersion::try_from(v).is_ok()
            })?;
            checks.push(Check::IpVersion(values));
        }
        if !filter.event_type.is_empty() {
            let types = filter
                .event_type
                .iter()
                .map(|t| EventTypeMatcher {
                    r#type: t.r#type,
                    sub_type: t.match_sub_type.then_some(t.sub_type),
                })
                .collect();
            checks.push(Check::EventType(types));
        }
        if !filter.protocol.is_empty() {
            let bits = filter.protocol.iter().try_fold(0, |bits, value| {
                protocol_bits(value)
                    .map(|b| bits | b)
                    .ok_or_else(|| FilterError::UnknownProtocol {
                        value: value.clone(),
                    })
            })?;
            checks.push(Check::Protocol(bits));
        }
        if !filter.reply.is_empty() {
            checks.push(Check::Reply(filter.reply.clone()));
        }
        if !filter.tcp_flags.is_empty() {
            checks.push(Check::TcpFlags(
                filter.tcp_flags.iter().map(tcp_flag_bits).collect(),
            ));
        }
        if !filter.node_name.is_empty() {
            let patterns = filter
                .node_name
                .iter()
                .map(|value| {
                    NodeNamePattern::parse(value).map_err(|reason| FilterError::InvalidPattern {
                        field: "node_name",
                        value: value.clone(),
                        reason,
                    })
                })
                .collect::<Result<_, _>>()?;
            checks.push(Check::NodeName(patterns));
        }

        Ok(CompiledFilter { checks })
    }

    fn matches(&self, flow: &Flow) -> bool {
        self.checks.iter().all(|check| check.matches(flow))
    }
}
