//! Monitor events to flows: upstream Hubble's L3/L4 ("threefour") parser.
//!
//! The datapath reports drops, traces and policy verdicts as [`MonitorEvent`]s carrying
//! addresses, ports, identities and endpoint ids. [`FlowParser::parse`] turns each one into a
//! `flow.Flow` the way upstream's `pkg/hubble/parser/threefour` does, so that flows read the
//! same to users of stock Hubble tooling:
//!
//! - verdict: drops are `DROPPED`, traces `FORWARDED`, policy verdicts by the sign of the
//!   verdict (negative `DROPPED`, positive `REDIRECTED` to a proxy, zero `FORWARDED`);
//! - `drop_reason` and `drop_reason_desc` carry the datapath's drop code unchanged (the proto
//!   enum uses the datapath's numbers, 133 is `POLICY_DENIED`); a denying verdict's code is
//!   the negated verdict;
//! - traffic direction: a drop is egress when the endpoint that dropped it is the packet's
//!   source, ingress otherwise; a trace likewise, inverted for replies (the direction is that
//!   of the connection); a policy verdict says its direction itself;
//! - `is_reply` is known for traces with a known conntrack state and for non-denying policy
//!   verdicts (they are emitted for a connection's first packet), unknown for drops;
//! - source and destination endpoints are resolved through an [`Enricher`]: a local endpoint
//!   by its address, otherwise the ipcache entry of the address and the identity's labels.
//!
//! Identity conflicts are settled as upstream: the identity the datapath reported wins, since
//! it is what the policy decision used; the enricher's identity fills in when the datapath
//! reported none. An address the enricher does not know and the datapath gave no identity for
//! is `reserved:world`, as upstream's ipcache resolves it through its `0.0.0.0/0` entry.
//!
//! The parser is `Sync` and holds no lock of its own; its cost per event is the enricher's
//! lookups and the flow's strings, nothing proportional to the number of endpoints.

use std::fmt::{self, Write as _};
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datapath::api::{EndpointId, Protocol};
use datapath::monitor::{
    IcmpTypeCode, MonitorEvent, MonitorEventKind, ObservationPoint, PolicyMatchType, TcpFlags,
    TraceState, TrafficDirection as PolicyDirection, bpf_file_name,
};
use model::identity::{NumericIdentity, ReservedIdentity};
use model::labels::{keys, source};
use proto::flow::{
    CiliumEventType, DropReason, Endpoint, Ethernet, FileInfo, Flow, FlowType, IcmPv4, IcmPv6, Ip,
    IpVersion, Layer4, NetworkInterface, Sctp, Tcp, TcpFlags as FlowTcpFlags,
    TraceObservationPoint, TraceReason, TrafficDirection, Udp, Verdict, layer4,
};

/// Upstream's monitor message types (`pkg/monitor/api`), reported as `event_type.type`.
const MESSAGE_TYPE_DROP: i32 = 1;
const MESSAGE_TYPE_TRACE: i32 = 4;
const MESSAGE_TYPE_POLICY_VERDICT: i32 = 5;

/// Upstream's default cluster name: nodes in it are named without a cluster prefix.
const DEFAULT_CLUSTER_NAME: &str = "default";

/// What the parser needs to know about endpoints, addresses and identities.
///
/// Implementations answer from caches (the agent's is [`crate::enrich::EnrichmentCache`]);
/// every call is on the flow path, so none may block on I/O. Labels are `source:key=value`
/// strings; the parser sorts them when an implementation has not.
pub trait Enricher: Send + Sync + std::fmt::Debug {
    /// The local endpoint with this id.
    fn endpoint(&self, id: EndpointId) -> Option<EndpointInfo>;
    /// The local endpoint that owns this address.
    fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointInfo>;
    /// The ipcache entry of an address (local or remote).
    fn ip_identity(&self, ip: IpAddr) -> Option<IpInfo>;
    /// The labels of an identity.
    fn identity_labels(&self, id: NumericIdentity) -> Option<Vec<String>>;
    /// The name of the device with this ifindex in the node's namespace, if known (flows
    /// observed on it name it, as upstream's `interface.name`).
    fn interface_name(&self, _ifindex: u32) -> Option<String> {
        None
    }
}

/// A local endpoint as Hubble shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    /// The endpoint id.
    pub id: u32,
    /// Its numeric security identity.
    pub identity: u32,
    pub namespace: String,
    pub pod_name: String,
    /// `source:key=value` labels of its identity.
    pub labels: Vec<String>,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

/// The ipcache's knowledge of one address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpInfo {
    /// The numeric security identity of the address.
    pub identity: u32,
    /// Namespace and pod name when the address is a pod's (empty otherwise).
    pub namespace: String,
    pub pod_name: String,
    /// The node hosting the address, when known.
    pub host_ip: Option<IpAddr>,
}

/// Converts [`MonitorEvent`]s into `flow.Flow`s for one node.
#[derive(Debug)]
pub struct FlowParser {
    /// `node` in the default cluster, `cluster/node` elsewhere (upstream's absolute node name).
    node_name: String,
    cluster_name: String,
    enricher: Arc<dyn Enricher>,
    /// Wall-clock time at which the monotonic clock read zero, in ns since the Unix epoch.
    boot_unix_ns: u64,
    /// Labels of the reserved identities 0-10, indexed by identity, for identities the
    /// enricher has no labels for.
    reserved_labels: Vec<Vec<String>>,
    uuid_seed: (u64, u64),
    uuid_counter: AtomicU64,
}

impl FlowParser {
    /// A parser for the node `node_name` of cluster `cluster_name`.
    ///
    /// The boot time that anchors event timestamps is read once, here, from the difference
    /// between the wall clock and `CLOCK_MONOTONIC` (the clock `bpf_ktime_get_ns` reads).
    pub fn new(node_name: String, cluster_name: String, enricher: Arc<dyn Enricher>) -> Self {
        let node_name = if cluster_name.is_empty() || cluster_name == DEFAULT_CLUSTER_NAME {
            node_name
        } else {
            format!("{cluster_name}/{node_name}")
        };
        let reserved_labels = ReservedIdentity::ALL
            .iter()
            .map(|reserved| {
                let mut labels: Vec<String> =
                    reserved.labels().iter().map(ToString::to_string).collect();
                labels.sort_unstable();
                labels
            })
            .collect();
        let random = std::collections::hash_map::RandomState::new();
        let seed = |salt: u64| {
            let mut hasher = random.build_hasher();
            hasher.write_u64(salt);
            hasher.finish()
        };
        FlowParser {
            node_name,
            cluster_name,
            enricher,
            boot_unix_ns: boot_time_unix_ns(),
            reserved_labels,
            uuid_seed: (seed(1), seed(2)),
            uuid_counter: AtomicU64::new(0),
        }
    }

    /// Anchors event timestamps at `boot_time` (the wall-clock time at which the monotonic
    /// clock read zero) instead of the one measured by [`FlowParser::new`]: for tests and for
    /// events recorded on another machine.
    pub fn with_boot_time(mut self, boot_time: SystemTime) -> Self {
        self.boot_unix_ns = boot_time.duration_since(UNIX_EPOCH).map_or(0, duration_ns);
        self
    }

    /// The wall-clock time at which the monotonic clock read zero.
    pub fn boot_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.boot_unix_ns)
    }

    /// The node name flows carry (`cluster/node` outside the default cluster).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The flow for one monitor event.
    pub fn parse(&self, event: &MonitorEvent) -> Flow {
        // The emitting endpoint may be either side, but a non-zero destination endpoint id
        // names the destination (except for proxy traces, where it holds the proxy port).
        let to_proxy = matches!(
            event.kind,
            MonitorEventKind::Trace {
                observation_point: ObservationPoint::ToProxy,
                ..
            }
        );
        let destination_hint = (!to_proxy).then_some(event.destination_endpoint);
        // A packet the datapath could not parse as IPv4 (an IPv6 router solicitation, an
        // unknown ethertype) carries no addresses: such a flow has no IP or L4 layer, and its
        // endpoints are the ones the datapath named, not the "world" of 0.0.0.0.
        let has_l3 = !(event.source_ip.is_unspecified() && event.destination_ip.is_unspecified());
        let (source, destination) = if has_l3 {
            (
                self.resolve_endpoint(event.source_ip, event.source_identity, None),
                self.resolve_endpoint(
                    event.destination_ip,
                    event.destination_identity,
                    destination_hint,
                ),
            )
        } else {
            (
                self.endpoint_by_id(event.source_endpoint, event.source_identity),
                self.endpoint_by_id(event.destination_endpoint, event.destination_identity),
            )
        };
        let (l4, summary) = if has_l3 {
            layer4(event)
        } else {
            (None, "Ethernet".to_owned())
        };

        let mut flow = Flow {
            time: Some(self.timestamp(event.timestamp_ns)),
            uuid: self.next_uuid(),
            ip: has_l3.then(|| Ip {
                source: event.source_ip.to_string(),
                destination: event.destination_ip.to_string(),
                ip_version: match event.source_ip {
                    IpAddr::V4(_) => IpVersion::IPv4,
                    IpAddr::V6(_) => IpVersion::IPv6,
                } as i32,
                ..Ip::default()
            }),
            l4,
            ethernet: event.ethernet.map(|(source, destination)| Ethernet {
                source: source.to_string(),
                destination: destination.to_string(),
            }),
            node_name: self.node_name.clone(),
            summary,
            ..Flow::default()
        };
        flow.set_type(FlowType::L3L4);
        flow.traffic_direction = traffic_direction(event, source.id) as i32;
        self.fill_kind(event, &mut flow);
        flow.reply = flow.is_reply.unwrap_or(false);
        flow.source = Some(source);
        flow.destination = Some(destination);
        flow
    }

    /// Everything that depends on the kind of event.
    fn fill_kind(&self, event: &MonitorEvent, flow: &mut Flow) {
        match &event.kind {
            MonitorEventKind::Drop {
                reason, file, line, ..
            } => {
                flow.set_verdict(Verdict::Dropped);
                set_drop_reason(flow, u32::from(*reason));
                flow.event_type = Some(CiliumEventType {
                    r#type: MESSAGE_TYPE_DROP,
                    sub_type: i32::from(*reason),
                });
                flow.file = Some(FileInfo {
                    name: bpf_file_name(*file).into_owned(),
                    line: u32::from(*line),
                });
            }
            MonitorEventKind::Trace {
                observation_point,
                state,
            } => {
                flow.set_verdict(Verdict::Forwarded);
                let code = observation_point_code(*observation_point);
                flow.event_type = Some(CiliumEventType {
                    r#type: MESSAGE_TYPE_TRACE,
                    sub_type: i32::from(code),
                });
                // Upstream reports the datapath's TO_LXC (0) as TO_ENDPOINT so that the zero
                // value keeps meaning "unknown"; every other code is the proto number.
                flow.trace_observation_point = if code == 0 {
                    TraceObservationPoint::ToEndpoint as i32
                } else {
                    i32::from(code)
                };
                flow.trace_reason = trace_reason(*state) as i32;
                flow.is_reply = trace_state_known(*state).then_some(*state == TraceState::Reply);
                if event.ifindex != 0 {
                    flow.interface = Some(NetworkInterface {
                        index: event.ifindex,
                        name: self
                            .enricher
                            .interface_name(event.ifindex)
                            .unwrap_or_default(),
                    });
                }
                if *observation_point == ObservationPoint::ToProxy {
                    flow.proxy_port = u32::from(event.destination_endpoint.get());
                }
            }
            MonitorEventKind::PolicyVerdict {
                verdict,
                match_type,
                ..
            } => {
                flow.set_verdict(match verdict {
                    v if *v < 0 => Verdict::Dropped,
                    v if *v > 0 => Verdict::Redirected,
                    _ => Verdict::Forwarded,
                });
                if *verdict < 0 {
                    set_drop_reason(flow, verdict.unsigned_abs());
                } else {
                    // Verdicts are emitted for a connection's first packet: not a reply.
                    flow.is_reply = Some(false);
                }
                flow.event_type = Some(CiliumEventType {
                    r#type: MESSAGE_TYPE_POLICY_VERDICT,
                    sub_type: 0,
                });
                flow.policy_match_type = u32::from(policy_match_code(*match_type));
            }
        }
    }

    /// A flow side known only by the endpoint id (and identity) the datapath reported; empty
    /// when the datapath named none.
    fn endpoint_by_id(&self, id: EndpointId, datapath_identity: NumericIdentity) -> Endpoint {
        match self.enricher.endpoint(id).filter(|_| id.get() != 0) {
            Some(ep) => Endpoint {
                id: ep.id,
                identity: prefer_datapath(datapath_identity, ep.identity),
                cluster_name: self.cluster_name.clone(),
                namespace: ep.namespace,
                labels: sorted(ep.labels),
                pod_name: ep.pod_name,
                workloads: Vec::new(),
            },
            None => Endpoint {
                identity: datapath_identity.get(),
                ..Endpoint::default()
            },
        }
    }

    /// Upstream's `EndpointResolver.ResolveEndpoint`: a local endpoint by address (or by the
    /// endpoint id the datapath reported), else the ipcache entry and the identity's labels.
    fn resolve_endpoint(
        &self,
        ip: IpAddr,
        datapath_identity: NumericIdentity,
        endpoint_hint: Option<EndpointId>,
    ) -> Endpoint {
        let local = self.enricher.endpoint_by_ip(ip).or_else(|| {
            endpoint_hint
                .filter(|id| id.get() != 0)
                .and_then(|id| self.enricher.endpoint(id))
        });
        if let Some(ep) = local {
            let identity = prefer_datapath(datapath_identity, ep.identity);
            return Endpoint {
                id: ep.id,
                identity,
                cluster_name: self.cluster_name.clone(),
                namespace: ep.namespace,
                labels: sorted(ep.labels),
                pod_name: ep.pod_name,
                workloads: Vec::new(),
            };
        }

        let ip_info = self.enricher.ip_identity(ip);
        let identity = match &ip_info {
            Some(info) => prefer_datapath(datapath_identity, info.identity),
            None if datapath_identity != NumericIdentity::UNKNOWN => datapath_identity.get(),
            None => NumericIdentity::WORLD.get(),
        };
        let (namespace, pod_name) = ip_info
            .map(|info| (info.namespace, info.pod_name))
            .unwrap_or_default();
        let labels = self.identity_labels(NumericIdentity::new(identity));
        Endpoint {
            id: 0,
            identity,
            cluster_name: cluster_from_labels(&labels).unwrap_or_default().to_owned(),
            namespace,
            labels,
            pod_name,
            workloads: Vec::new(),
        }
    }

    /// The identity's labels from the enricher, the fixed ones of reserved identities when it
    /// has none; CIDR labels of local-scope identities reduced to the longest prefix, as
    /// upstream's `SortAndFilterLabels`.
    fn identity_labels(&self, id: NumericIdentity) -> Vec<String> {
        match self.enricher.identity_labels(id) {
            Some(labels) if id.is_local_scope() => sorted(longest_cidr_label_only(labels)),
            Some(labels) => sorted(labels),
            None => usize::try_from(id.get())
                .ok()
                .and_then(|index| self.reserved_labels.get(index))
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn timestamp(&self, monotonic_ns: u64) -> prost_types::Timestamp {
        let unix_ns = self.boot_unix_ns.saturating_add(monotonic_ns);
        prost_types::Timestamp {
            seconds: i64::try_from(unix_ns / NANOS_PER_SEC).unwrap_or(i64::MAX),
            // Below 10^9, so it fits.
            nanos: i32::try_from(unix_ns % NANOS_PER_SEC).unwrap_or(0),
        }
    }

    /// A random-looking version 4 UUID, unique per parser: a random per-parser half and a
    /// bijective mix of a counter, so no two flows of one parser share one and no per-flow
    /// entropy has to be drawn.
    fn next_uuid(&self) -> String {
        let count = self.uuid_counter.fetch_add(1, Ordering::Relaxed);
        let high = (self.uuid_seed.0 & !0xf000) | 0x4000;
        let low = (splitmix64(self.uuid_seed.1.wrapping_add(count)) & !(0b11 << 62)) | (1 << 63);
        let mut uuid = String::with_capacity(36);
        let _ = write!(
            uuid,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        );
        uuid
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Wall-clock ns since the Unix epoch at which `CLOCK_MONOTONIC` read zero.
fn boot_time_unix_ns() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ns);
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(monotonic) => {
            let monotonic = Duration::from(monotonic);
            now.saturating_sub(duration_ns(monotonic))
        }
        Err(error) => {
            // Flows then carry monotonic time since boot as if it were wall-clock time:
            // ordered correctly, dated wrongly.
            tracing::warn!(%error, "reading CLOCK_MONOTONIC failed; flow times will be off");
            0
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The datapath's identity when it reported one, else what user space knows.
fn prefer_datapath(datapath: NumericIdentity, userspace: u32) -> u32 {
    if datapath == NumericIdentity::UNKNOWN {
        userspace
    } else {
        datapath.get()
    }
}

fn sorted(mut labels: Vec<String>) -> Vec<String> {
    if !labels.is_sorted() {
        labels.sort_unstable();
    }
    labels
}

/// The cluster named by a `k8s:io.cilium.k8s.policy.cluster=<name>` label.
fn cluster_from_labels(labels: &[String]) -> Option<&str> {
    labels.iter().find_map(|label| {
        label
            .strip_prefix(source::K8S)?
            .strip_prefix(':')?
            .strip_prefix(keys::POLICY_CLUSTER)?
            .strip_prefix('=')
    })
}

/// Upstream's `FilterCIDRLabels`: a CIDR identity carries a `cidr:` label for every prefix
/// containing the address; only the longest says something. Unparsable CIDR labels go.
fn longest_cidr_label_only(labels: Vec<String>) -> Vec<String> {
    let mut kept = Vec::with_capacity(labels.len());
    let mut longest: Option<(u8, String)> = None;
    for label in labels {
        let Some(cidr) = label
            .strip_prefix(source::CIDR)
            .and_then(|rest| rest.strip_prefix(':'))
        else {
            kept.push(label);
            continue;
        };
        let Some(prefix_len) = cidr_prefix_len(cidr) else {
            tracing::debug!(%label, "ignoring an invalid cidr label");
            continue;
        };
        if longest.as_ref().is_none_or(|(len, _)| prefix_len > *len) {
            longest = Some((prefix_len, label));
        }
    }
    // As upstream, a /0 alone is not worth showing.
    if let Some((len, label)) = longest
        && len > 0
    {
        kept.push(label);
    }
    kept
}

/// The prefix length of a CIDR label's value (IPv6 labels write `:` as `-`).
fn cidr_prefix_len(cidr: &str) -> Option<u8> {
    let (address, len) = cidr.split_once('/')?;
    let address: IpAddr = address.replace('-', ":").parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some(len)
}

fn set_drop_reason(flow: &mut Flow, code: u32) {
    flow.drop_reason = code;
    // The proto enum uses the datapath's numbers; an unnamed code stays a number on the
    // wire, as upstream's plain conversion does.
    flow.drop_reason_desc = i32::try_from(code).unwrap_or(DropReason::Unknown as i32);
}

/// Upstream's `decodeTrafficDirection`, given the resolved source endpoint id.
fn traffic_direction(event: &MonitorEvent, source_endpoint: u32) -> TrafficDirection {
    let emitter = event.source_endpoint.get();
    let emitter_is_source = u32::from(emitter) == source_endpoint;
    match &event.kind {
        // Drops are assumed not to be replies of an established connection.
        MonitorEventKind::Drop { .. } if emitter != 0 => {
            if emitter_is_source {
                TrafficDirection::Egress
            } else {
                TrafficDirection::Ingress
            }
        }
        MonitorEventKind::Trace { state, .. } if emitter != 0 && trace_state_known(*state) => {
            let is_reply = *state == TraceState::Reply;
            if emitter_is_source != is_reply {
                TrafficDirection::Egress
            } else {
                TrafficDirection::Ingress
            }
        }
        MonitorEventKind::PolicyVerdict { direction, .. } => match direction {
            PolicyDirection::Ingress => TrafficDirection::Ingress,
            PolicyDirection::Egress => TrafficDirection::Egress,
        },
        _ => TrafficDirection::Unknown,
    }
}

fn trace_state_known(state: TraceState) -> bool {
    !matches!(state, TraceState::Unknown(_))
}

/// The proto's trace reasons are the datapath's shifted by one, to keep zero for "unknown".
fn trace_reason(state: TraceState) -> TraceReason {
    match state {
        TraceState::New => TraceReason::New,
        TraceState::Established => TraceReason::Established,
        TraceState::Reply => TraceReason::Reply,
        TraceState::Related => TraceReason::Related,
        TraceState::Unknown(_) => TraceReason::Unknown,
    }
}

/// The datapath's `TRACE_*` code of an observation point.
fn observation_point_code(point: ObservationPoint) -> u8 {
    match point {
        ObservationPoint::ToEndpoint => 0,
        ObservationPoint::ToProxy => 1,
        ObservationPoint::ToHost => 2,
        ObservationPoint::ToStack => 3,
        ObservationPoint::ToOverlay => 4,
        ObservationPoint::FromEndpoint => 5,
        ObservationPoint::FromProxy => 6,
        ObservationPoint::FromHost => 7,
        ObservationPoint::FromStack => 8,
        ObservationPoint::FromOverlay => 9,
        ObservationPoint::FromNetwork => 10,
        ObservationPoint::ToNetwork => 11,
        ObservationPoint::Unknown(code) => code,
    }
}

/// The datapath's `POLICY_MATCH_*` code of a match type.
fn policy_match_code(match_type: PolicyMatchType) -> u8 {
    match match_type {
        PolicyMatchType::None => 0,
        PolicyMatchType::L3Only => 1,
        PolicyMatchType::L3L4 => 2,
        PolicyMatchType::L4Only => 3,
        PolicyMatchType::All => 4,
        PolicyMatchType::L3Proto => 5,
        PolicyMatchType::ProtoOnly => 6,
        PolicyMatchType::Unknown(code) => code,
    }
}

/// The L4 header and upstream's one-line summary: the name of the innermost decoded layer,
/// with the flags for TCP and the type for ICMP.
fn layer4(event: &MonitorEvent) -> (Option<Layer4>, String) {
    let (src, dst) = (
        u32::from(event.source_port),
        u32::from(event.destination_port),
    );
    let l3_name = match event.source_ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    };
    let (protocol, summary) = match event.protocol {
        Protocol::TCP => {
            let flags = event.tcp_flags.map(tcp_flags);
            let summary = match event.tcp_flags {
                Some(flags) => format!("TCP Flags: {}", TcpFlagNames(flags)),
                None => "TCP".to_owned(),
            };
            let tcp = Tcp {
                source_port: src,
                destination_port: dst,
                flags,
            };
            (Some(layer4::Protocol::Tcp(tcp)), summary)
        }
        Protocol::UDP => {
            let udp = Udp {
                source_port: src,
                destination_port: dst,
            };
            (Some(layer4::Protocol::Udp(udp)), "UDP".to_owned())
        }
        Protocol::SCTP => {
            let sctp = Sctp {
                source_port: src,
                destination_port: dst,
            };
            (Some(layer4::Protocol::Sctp(sctp)), "SCTP".to_owned())
        }
        Protocol::ICMP => match event.icmp {
            Some(icmp) => (
                Some(layer4::Protocol::IcmPv4(IcmPv4 {
                    r#type: u32::from(icmp.icmp_type),
                    code: u32::from(icmp.code),
                })),
                format!("ICMPv4 {icmp}"),
            ),
            None => (None, l3_name.to_owned()),
        },
        Protocol::ICMPV6 => match event.icmp {
            Some(icmp) => (
                Some(layer4::Protocol::IcmPv6(IcmPv6 {
                    r#type: u32::from(icmp.icmp_type),
                    code: u32::from(icmp.code),
                })),
                format!("ICMPv6 {}", Icmpv6Name(icmp)),
            ),
            None => (None, l3_name.to_owned()),
        },
        _ => (None, l3_name.to_owned()),
    };
    (
        protocol.map(|protocol| Layer4 {
            protocol: Some(protocol),
        }),
        summary,
    )
}

/// TCP header flag bits beyond the ones [`TcpFlags`] names.
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

fn tcp_flags(flags: TcpFlags) -> FlowTcpFlags {
    FlowTcpFlags {
        fin: flags.contains(TcpFlags::FIN),
        syn: flags.contains(TcpFlags::SYN),
        rst: flags.contains(TcpFlags::RST),
        psh: flags.contains(TCP_PSH),
        ack: flags.contains(TcpFlags::ACK),
        urg: flags.contains(TCP_URG),
        ece: flags.contains(TCP_ECE),
        cwr: flags.contains(TCP_CWR),
        // NS lives in the next header byte, which the datapath does not report.
        ns: false,
    }
}

/// Upstream's `getTCPFlags`: every set flag, in its order, comma separated.
struct TcpFlagNames(TcpFlags);

impl fmt::Display for TcpFlagNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::ACK, "ACK"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::FIN, "FIN"),
            (TCP_PSH, "PSH"),
            (TCP_URG, "URG"),
            (TCP_ECE, "ECE"),
            (TCP_CWR, "CWR"),
        ];
        let mut separator = "";
        for (flag, name) in names {
            if self.0.contains(flag) {
                write!(f, "{separator}{name}")?;
                separator = ", ";
            }
        }
        Ok(())
    }
}

/// ICMPv6 types as gopacket names them (what upstream's summary prints).
struct Icmpv6Name(IcmpTypeCode);

impl fmt::Display for Icmpv6Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0.icmp_type {
            1 => "DestinationUnreachable",
            2 => "PacketTooBig",
            3 => "TimeExceeded",
            4 => "ParameterProblem",
            128 => "EchoRequest",
            129 => "EchoReply",
            133 => "RouterSolicitation",
            134 => "RouterAdvertisement",
            135 => "NeighborSolicitation",
            136 => "NeighborAdvertisement",
            137 => "Redirect",
            other => return write!(f, "{other}({})", self.0.code),
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests;
