//! One test per event kind, asserting the flow fields upstream's parser would fill.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use datapath::api::MacAddr;
use datapath::monitor::IcmpTypeCode;
use proto::flow::TraceReason;

use super::*;
use crate::enrich::EnrichmentCache;

const CLIENT_EP: u16 = 100;
const ECHO_EP: u16 = 200;
const CLIENT_ID: u32 = 1234;
const ECHO_ID: u32 = 5678;
const REMOTE_CLIENT_ID: u32 = 4321;
/// 2023-11-14T22:13:20Z.
const BOOT_UNIX_SECS: u64 = 1_700_000_000;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn client_ip() -> IpAddr {
    v4(10, 0, 1, 10)
}
fn echo_ip() -> IpAddr {
    v4(10, 0, 1, 20)
}
/// A pod on another node.
fn remote_client_ip() -> IpAddr {
    v4(10, 0, 2, 30)
}
/// A remote pod the local client talks to.
fn remote_echo_ip() -> IpAddr {
    v4(10, 0, 2, 20)
}

fn strings(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| (*l).to_owned()).collect()
}

fn client_labels() -> Vec<String> {
    strings(&[
        "k8s:app=client",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.kubernetes.pod.namespace=default",
    ])
}
fn echo_labels() -> Vec<String> {
    strings(&[
        "k8s:app=echo",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.kubernetes.pod.namespace=default",
    ])
}
fn remote_client_labels() -> Vec<String> {
    strings(&[
        "k8s:app=remote-client",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.kubernetes.pod.namespace=other",
    ])
}

/// Two local endpoints (client, echo), two remote pods in the ipcache, their identities.
fn cache() -> Arc<EnrichmentCache> {
    let cache = EnrichmentCache::new();
    cache.replace_endpoints([
        EndpointInfo {
            id: u32::from(CLIENT_EP),
            identity: CLIENT_ID,
            namespace: "default".into(),
            pod_name: "client".into(),
            // Unsorted on purpose: the cache sorts.
            labels: client_labels().into_iter().rev().collect(),
            ips: vec![client_ip()],
        },
        EndpointInfo {
            id: u32::from(ECHO_EP),
            identity: ECHO_ID,
            namespace: "default".into(),
            pod_name: "echo".into(),
            labels: echo_labels(),
            ips: vec![echo_ip()],
        },
    ]);
    // The client's host-side veth, where the events of the tests are observed (ifindex 17).
    cache.replace_interfaces([(17, "lxc0a1b2c3d4e5f".to_owned())]);
    cache.upsert_ip(
        remote_client_ip(),
        IpInfo {
            identity: REMOTE_CLIENT_ID,
            namespace: "other".into(),
            pod_name: "remote-client".into(),
            host_ip: Some(v4(192, 168, 0, 2)),
        },
    );
    cache.upsert_ip(
        remote_echo_ip(),
        IpInfo {
            identity: ECHO_ID,
            namespace: "default".into(),
            pod_name: "echo-remote".into(),
            host_ip: Some(v4(192, 168, 0, 2)),
        },
    );
    cache.replace_identities([
        (NumericIdentity::new(CLIENT_ID), client_labels()),
        (NumericIdentity::new(ECHO_ID), echo_labels()),
        (
            NumericIdentity::new(REMOTE_CLIENT_ID),
            remote_client_labels(),
        ),
    ]);
    Arc::new(cache)
}

fn parser() -> FlowParser {
    FlowParser::new("node-1".into(), "default".into(), cache())
        .with_boot_time(UNIX_EPOCH + Duration::from_secs(BOOT_UNIX_SECS))
}

/// A TCP event from `src` to `dst` emitted by `emitter`, 5.25 s after boot.
fn event(kind: MonitorEventKind, emitter: u16, src: IpAddr, dst: IpAddr) -> MonitorEvent {
    MonitorEvent {
        kind,
        source_endpoint: EndpointId::new(emitter),
        destination_endpoint: EndpointId::new(0),
        source_identity: NumericIdentity::UNKNOWN,
        destination_identity: NumericIdentity::UNKNOWN,
        source_ip: src,
        destination_ip: dst,
        source_port: 41234,
        destination_port: 8080,
        protocol: Protocol::TCP,
        tcp_flags: Some(TcpFlags(TcpFlags::SYN)),
        icmp: None,
        is_reply: false,
        ethernet: Some((
            MacAddr([0x02, 0, 0, 0, 0, 0x11]),
            MacAddr([0x02, 0, 0, 0, 0, 0x22]),
        )),
        packet_len: 74,
        captured_len: 74,
        ifindex: 17,
        hash: 0xabcd,
        cpu: None,
        timestamp_ns: 5_250_000_000,
    }
}

fn drop_kind(reason: u8) -> MonitorEventKind {
    MonitorEventKind::Drop {
        reason,
        reason_name: datapath::monitor::drop_reason_name(reason).map(str::to_owned),
        ext_error: 0,
        file: 0,
        line: 331,
    }
}

fn trace_kind(observation_point: ObservationPoint, state: TraceState) -> MonitorEventKind {
    MonitorEventKind::Trace {
        observation_point,
        state,
    }
}

fn verdict_kind(verdict: i32, direction: PolicyDirection) -> MonitorEventKind {
    MonitorEventKind::PolicyVerdict {
        verdict,
        direction,
        match_type: PolicyMatchType::L3L4,
        cookie: 0,
    }
}

fn tcp(flow: &Flow) -> Tcp {
    match flow.l4.and_then(|l4| l4.protocol) {
        Some(layer4::Protocol::Tcp(tcp)) => tcp,
        other => panic!("expected TCP, got {other:?}"),
    }
}

fn local_client() -> Endpoint {
    Endpoint {
        id: u32::from(CLIENT_EP),
        identity: CLIENT_ID,
        cluster_name: "default".into(),
        namespace: "default".into(),
        labels: client_labels(),
        pod_name: "client".into(),
        workloads: Vec::new(),
    }
}

fn local_echo() -> Endpoint {
    Endpoint {
        id: u32::from(ECHO_EP),
        identity: ECHO_ID,
        cluster_name: "default".into(),
        namespace: "default".into(),
        labels: echo_labels(),
        pod_name: "echo".into(),
        workloads: Vec::new(),
    }
}

fn remote_client() -> Endpoint {
    Endpoint {
        id: 0,
        identity: REMOTE_CLIENT_ID,
        cluster_name: "default".into(),
        namespace: "other".into(),
        labels: remote_client_labels(),
        pod_name: "remote-client".into(),
        workloads: Vec::new(),
    }
}

fn remote_echo() -> Endpoint {
    Endpoint {
        id: 0,
        identity: ECHO_ID,
        cluster_name: "default".into(),
        namespace: "default".into(),
        labels: echo_labels(),
        pod_name: "echo-remote".into(),
        workloads: Vec::new(),
    }
}

#[test]
fn ingress_policy_drop_names_both_pods_and_the_reason() {
    let mut ev = event(drop_kind(133), ECHO_EP, remote_client_ip(), echo_ip());
    ev.destination_endpoint = EndpointId::new(ECHO_EP);
    ev.source_identity = NumericIdentity::new(REMOTE_CLIENT_ID);
    ev.destination_identity = NumericIdentity::new(ECHO_ID);

    let flow = parser().parse(&ev);

    assert_eq!(flow.verdict(), Verdict::Dropped);
    assert_eq!(flow.drop_reason, 133);
    assert_eq!(flow.drop_reason_desc(), DropReason::PolicyDenied);
    assert_eq!(
        flow.event_type,
        Some(CiliumEventType {
            r#type: 1,
            sub_type: 133
        })
    );
    // The dropping endpoint is the destination: ingress.
    assert_eq!(flow.traffic_direction(), TrafficDirection::Ingress);
    assert_eq!(flow.is_reply, None);
    assert!(!flow.reply);
    assert_eq!(flow.source, Some(remote_client()));
    assert_eq!(flow.destination, Some(local_echo()));
    assert_eq!(flow.r#type(), FlowType::L3L4);
    assert_eq!(flow.node_name, "node-1");
    assert_eq!(
        flow.time,
        Some(prost_types::Timestamp {
            seconds: 1_700_000_005,
            nanos: 250_000_000
        })
    );
    assert_eq!(
        flow.ip,
        Some(Ip {
            source: "10.0.2.30".into(),
            destination: "10.0.1.20".into(),
            ip_version: IpVersion::IPv4 as i32,
            ..Ip::default()
        })
    );
    let tcp = tcp(&flow);
    assert_eq!((tcp.source_port, tcp.destination_port), (41234, 8080));
    assert_eq!(flow.summary, "TCP Flags: SYN");
    assert_eq!(
        flow.file,
        Some(FileInfo {
            name: "bpf_lxc.c".into(),
            line: 331
        })
    );
    // Trace-only fields stay unset.
    assert_eq!(
        flow.trace_observation_point(),
        TraceObservationPoint::UnknownPoint
    );
    assert_eq!(flow.interface, None);
    assert_eq!(flow.policy_match_type, 0);
    assert_eq!(flow.uuid.len(), 36);
}

#[test]
fn drop_at_the_source_endpoint_is_egress_and_unnamed_codes_stay_numbers() {
    let mut ev = event(drop_kind(181), CLIENT_EP, client_ip(), remote_echo_ip());
    ev.source_identity = NumericIdentity::new(CLIENT_ID);
    let flow = parser().parse(&ev);
    assert_eq!(flow.traffic_direction(), TrafficDirection::Egress);
    assert_eq!(flow.drop_reason_desc(), DropReason::PolicyDeny);
    assert_eq!(flow.source, Some(local_client()));
    assert_eq!(flow.destination, Some(remote_echo()));

    // A code the proto does not name is carried as its number, as upstream's cast does.
    let flow = parser().parse(&event(drop_kind(250), 0, client_ip(), remote_echo_ip()));
    assert_eq!(flow.drop_reason, 250);
    assert_eq!(flow.drop_reason_desc, 250);
    // No emitting endpoint: the direction is unknown.
    assert_eq!(flow.traffic_direction(), TrafficDirection::Unknown);
}

#[test]
fn to_endpoint_reply_trace_carries_flags_reply_and_the_connection_direction() {
    // The SYN-ACK of echo-remote answering the local client, delivered to the client.
    let mut ev = event(
        trace_kind(ObservationPoint::ToEndpoint, TraceState::Reply),
        CLIENT_EP,
        remote_echo_ip(),
        client_ip(),
    );
    ev.destination_endpoint = EndpointId::new(CLIENT_EP);
    ev.source_identity = NumericIdentity::new(ECHO_ID);
    ev.destination_identity = NumericIdentity::new(CLIENT_ID);
    ev.source_port = 8080;
    ev.destination_port = 41234;
    ev.tcp_flags = Some(TcpFlags(TcpFlags::SYN | TcpFlags::ACK));
    ev.is_reply = true;

    let flow = parser().parse(&ev);

    assert_eq!(flow.verdict(), Verdict::Forwarded);
    assert_eq!(
        flow.trace_observation_point(),
        TraceObservationPoint::ToEndpoint
    );
    assert_eq!(flow.trace_observation_point, 101);
    assert_eq!(
        flow.event_type,
        Some(CiliumEventType {
            r#type: 4,
            sub_type: 0
        })
    );
    assert_eq!(flow.is_reply, Some(true));
    assert!(flow.reply);
    assert_eq!(flow.trace_reason(), TraceReason::Reply);
    // A reply into the endpoint belongs to a connection the endpoint opened: egress.
    assert_eq!(flow.traffic_direction(), TrafficDirection::Egress);
    assert_eq!(flow.summary, "TCP Flags: SYN, ACK");
    assert_eq!(
        tcp(&flow),
        Tcp {
            source_port: 8080,
            destination_port: 41234,
            flags: Some(FlowTcpFlags {
                syn: true,
                ack: true,
                ..FlowTcpFlags::default()
            }),
        }
    );
    assert_eq!(flow.source, Some(remote_echo()));
    assert_eq!(flow.destination, Some(local_client()));
    assert_eq!(
        flow.interface,
        Some(NetworkInterface {
            index: 17,
            name: "lxc0a1b2c3d4e5f".to_owned()
        })
    );
    assert_eq!(
        flow.ethernet,
        Some(Ethernet {
            source: "02:00:00:00:00:11".to_owned(),
            destination: "02:00:00:00:00:22".to_owned(),
        })
    );
    // A device the agent does not know keeps its index and no name.
    ev.ifindex = 18;
    assert_eq!(
        parser().parse(&ev).interface,
        Some(NetworkInterface {
            index: 18,
            name: String::new()
        })
    );
    assert_eq!(flow.drop_reason, 0);
    assert_eq!(flow.drop_reason_desc(), DropReason::Unknown);
    assert_eq!(flow.file, None);
}

#[test]
fn to_endpoint_new_connection_is_ingress() {
    let mut ev = event(
        trace_kind(ObservationPoint::ToEndpoint, TraceState::New),
        ECHO_EP,
        remote_client_ip(),
        echo_ip(),
    );
    ev.destination_endpoint = EndpointId::new(ECHO_EP);
    let flow = parser().parse(&ev);
    assert_eq!(flow.traffic_direction(), TrafficDirection::Ingress);
    assert_eq!(flow.is_reply, Some(false));
    assert_eq!(flow.source, Some(remote_client()));
    assert_eq!(flow.destination, Some(local_echo()));
}

#[test]
fn to_stack_trace_of_a_new_connection_is_egress_and_not_a_reply() {
    let mut ev = event(
        trace_kind(ObservationPoint::ToStack, TraceState::New),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    );
    ev.source_identity = NumericIdentity::new(CLIENT_ID);
    ev.destination_identity = NumericIdentity::new(ECHO_ID);

    let flow = parser().parse(&ev);

    assert_eq!(flow.verdict(), Verdict::Forwarded);
    assert_eq!(
        flow.trace_observation_point(),
        TraceObservationPoint::ToStack
    );
    assert_eq!(
        flow.event_type,
        Some(CiliumEventType {
            r#type: 4,
            sub_type: 3
        })
    );
    assert_eq!(flow.traffic_direction(), TrafficDirection::Egress);
    assert_eq!(flow.is_reply, Some(false));
    assert_eq!(flow.trace_reason(), TraceReason::New);
    assert_eq!(flow.source, Some(local_client()));
    assert_eq!(flow.destination, Some(remote_echo()));
    assert_eq!(flow.summary, "TCP Flags: SYN");
}

#[test]
fn trace_with_unknown_state_has_no_reply_and_no_direction() {
    let ev = event(
        trace_kind(ObservationPoint::FromEndpoint, TraceState::Unknown(9)),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    );
    let flow = parser().parse(&ev);
    assert_eq!(
        flow.trace_observation_point(),
        TraceObservationPoint::FromEndpoint
    );
    assert_eq!(flow.is_reply, None);
    assert_eq!(flow.trace_reason(), TraceReason::Unknown);
    assert_eq!(flow.traffic_direction(), TrafficDirection::Unknown);
}

#[test]
fn policy_verdicts_allow_deny_and_redirect() {
    let mut allow = event(
        verdict_kind(0, PolicyDirection::Egress),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    );
    allow.source_identity = NumericIdentity::new(CLIENT_ID);
    allow.destination_identity = NumericIdentity::new(ECHO_ID);
    let flow = parser().parse(&allow);
    assert_eq!(flow.verdict(), Verdict::Forwarded);
    assert_eq!(flow.drop_reason, 0);
    assert_eq!(flow.drop_reason_desc(), DropReason::Unknown);
    assert_eq!(flow.traffic_direction(), TrafficDirection::Egress);
    assert_eq!(flow.is_reply, Some(false));
    assert_eq!(flow.policy_match_type, 2);
    assert_eq!(
        flow.event_type,
        Some(CiliumEventType {
            r#type: 5,
            sub_type: 0
        })
    );
    assert_eq!(
        flow.trace_observation_point(),
        TraceObservationPoint::UnknownPoint
    );
    assert_eq!(flow.source, Some(local_client()));
    assert_eq!(flow.destination, Some(remote_echo()));

    let mut deny = event(
        verdict_kind(-133, PolicyDirection::Ingress),
        ECHO_EP,
        remote_client_ip(),
        echo_ip(),
    );
    deny.source_identity = NumericIdentity::new(REMOTE_CLIENT_ID);
    let flow = parser().parse(&deny);
    assert_eq!(flow.verdict(), Verdict::Dropped);
    assert_eq!(flow.drop_reason, 133);
    assert_eq!(flow.drop_reason_desc(), DropReason::PolicyDenied);
    assert_eq!(flow.traffic_direction(), TrafficDirection::Ingress);
    assert_eq!(flow.is_reply, None);
    assert_eq!(flow.source, Some(remote_client()));
    assert_eq!(flow.destination, Some(local_echo()));

    let redirect = event(
        verdict_kind(15001, PolicyDirection::Egress),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    );
    let flow = parser().parse(&redirect);
    assert_eq!(flow.verdict(), Verdict::Redirected);
    assert_eq!(flow.drop_reason, 0);
    assert_eq!(flow.is_reply, Some(false));
}

#[test]
fn icmp_echo_request() {
    let mut ev = event(
        trace_kind(ObservationPoint::ToStack, TraceState::New),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    );
    ev.protocol = Protocol::ICMP;
    ev.tcp_flags = None;
    ev.icmp = Some(IcmpTypeCode {
        icmp_type: 8,
        code: 0,
    });
    ev.source_port = 7;
    ev.destination_port = 0;
    let flow = parser().parse(&ev);
    assert_eq!(
        flow.l4,
        Some(Layer4 {
            protocol: Some(layer4::Protocol::IcmPv4(IcmPv4 { r#type: 8, code: 0 }))
        })
    );
    assert_eq!(flow.summary, "ICMPv4 EchoRequest");
}

#[test]
fn udp_carries_ports_and_summary() {
    let mut ev = event(
        trace_kind(ObservationPoint::ToStack, TraceState::Established),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    );
    ev.protocol = Protocol::UDP;
    ev.tcp_flags = None;
    ev.source_port = 5353;
    ev.destination_port = 53;
    let flow = parser().parse(&ev);
    assert_eq!(
        flow.l4,
        Some(Layer4 {
            protocol: Some(layer4::Protocol::Udp(Udp {
                source_port: 5353,
                destination_port: 53
            }))
        })
    );
    assert_eq!(flow.summary, "UDP");
    assert_eq!(flow.trace_reason(), TraceReason::Established);
    assert_eq!(flow.is_reply, Some(false));
}

#[test]
fn sctp_and_unknown_protocols() {
    let mut ev = event(drop_kind(133), CLIENT_EP, client_ip(), remote_echo_ip());
    ev.protocol = Protocol::SCTP;
    ev.tcp_flags = None;
    let flow = parser().parse(&ev);
    assert_eq!(
        flow.l4,
        Some(Layer4 {
            protocol: Some(layer4::Protocol::Sctp(Sctp {
                source_port: 41234,
                destination_port: 8080
            }))
        })
    );
    assert_eq!(flow.summary, "SCTP");

    // GRE: no L4 the proto models; the summary names the last layer, IPv4.
    ev.protocol = Protocol::new(47);
    let flow = parser().parse(&ev);
    assert_eq!(flow.l4, None);
    assert_eq!(flow.summary, "IPv4");
}

#[test]
fn tcp_without_captured_flags_keeps_ports() {
    let mut ev = event(drop_kind(133), CLIENT_EP, client_ip(), remote_echo_ip());
    ev.tcp_flags = None;
    let flow = parser().parse(&ev);
    assert_eq!(
        tcp(&flow),
        Tcp {
            source_port: 41234,
            destination_port: 8080,
            flags: None
        }
    );
    assert_eq!(flow.summary, "TCP");
}

#[test]
fn every_tcp_flag_is_decoded_in_upstream_order() {
    let mut ev = event(drop_kind(133), CLIENT_EP, client_ip(), remote_echo_ip());
    ev.tcp_flags = Some(TcpFlags(0xff));
    let flow = parser().parse(&ev);
    assert_eq!(
        flow.summary,
        "TCP Flags: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR"
    );
    assert_eq!(
        tcp(&flow).flags,
        Some(FlowTcpFlags {
            fin: true,
            syn: true,
            rst: true,
            psh: true,
            ack: true,
            urg: true,
            ece: true,
            cwr: true,
            ns: false
        })
    );
}

#[test]
fn unknown_remote_address_is_world() {
    let outside = v4(203, 0, 113, 9);
    let ev = event(
        trace_kind(ObservationPoint::ToStack, TraceState::New),
        CLIENT_EP,
        client_ip(),
        outside,
    );
    let flow = parser().parse(&ev);
    assert_eq!(
        flow.destination,
        Some(Endpoint {
            id: 0,
            identity: 2,
            labels: strings(&["reserved:world"]),
            ..Endpoint::default()
        })
    );
    assert_eq!(flow.ip.map(|ip| ip.destination), Some("203.0.113.9".into()));

    // The datapath's identity for an address user space does not know is kept.
    let mut ev = ev;
    ev.destination_identity = NumericIdentity::REMOTE_NODE;
    let flow = parser().parse(&ev);
    let destination = flow.destination.expect("destination");
    assert_eq!(destination.identity, 6);
    assert_eq!(destination.labels, ["reserved:remote-node"]);
}

#[test]
fn datapath_identity_wins_over_a_stale_userspace_one() {
    let mut ev = event(
        trace_kind(ObservationPoint::ToStack, TraceState::New),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    );
    ev.source_identity = NumericIdentity::new(9999);
    ev.destination_identity = NumericIdentity::new(7777);
    let flow = parser().parse(&ev);
    let source = flow.source.expect("source");
    assert_eq!((source.id, source.identity), (u32::from(CLIENT_EP), 9999));
    assert_eq!(source.pod_name, "client");
    let destination = flow.destination.expect("destination");
    assert_eq!(destination.identity, 7777);
    assert_eq!(destination.pod_name, "echo-remote");
    // The labels are the reported identity's; this one is unknown to the cache.
    assert!(destination.labels.is_empty());
}

#[test]
fn destination_endpoint_id_resolves_when_the_address_does_not() {
    // E.g. an address the endpoint has but the cache has not caught up with.
    let mut ev = event(
        trace_kind(ObservationPoint::ToEndpoint, TraceState::New),
        ECHO_EP,
        remote_client_ip(),
        v4(10, 0, 1, 99),
    );
    ev.destination_endpoint = EndpointId::new(ECHO_EP);
    let flow = parser().parse(&ev);
    assert_eq!(flow.destination, Some(local_echo()));
}

#[test]
fn local_scope_identities_keep_only_their_longest_cidr_label() {
    let cache = cache();
    let cidr_id = NumericIdentity::new(NumericIdentity::LOCAL_SCOPE_FLAG | 5);
    cache.upsert_identity(
        cidr_id,
        strings(&[
            "cidr:10.0.0.0/8",
            "cidr:203.0.113.0/24",
            "cidr:0.0.0.0/0",
            "cidr:not-an-address/8",
            "reserved:world",
        ]),
    );
    let parser = FlowParser::new("node-1".into(), "default".into(), cache);
    let mut ev = event(
        trace_kind(ObservationPoint::ToStack, TraceState::New),
        CLIENT_EP,
        client_ip(),
        v4(203, 0, 113, 9),
    );
    ev.destination_identity = cidr_id;
    let destination = parser.parse(&ev).destination.expect("destination");
    assert_eq!(
        destination.labels,
        ["cidr:203.0.113.0/24", "reserved:world"]
    );
}

#[test]
fn node_name_is_prefixed_outside_the_default_cluster() {
    let parser = FlowParser::new("node-1".into(), "mesh-2".into(), cache());
    assert_eq!(parser.node_name(), "mesh-2/node-1");
    let flow = parser.parse(&event(
        trace_kind(ObservationPoint::ToStack, TraceState::New),
        CLIENT_EP,
        client_ip(),
        remote_echo_ip(),
    ));
    assert_eq!(flow.node_name, "mesh-2/node-1");
    // Local endpoints belong to the parser's cluster.
    assert_eq!(flow.source.map(|s| s.cluster_name), Some("mesh-2".into()));
}

#[test]
fn ipv6_flows_say_so() {
    let src: IpAddr = "fd00::10".parse().expect("address");
    let dst: IpAddr = "fd00::20".parse().expect("address");
    let mut ev = event(
        trace_kind(ObservationPoint::ToStack, TraceState::New),
        0,
        src,
        dst,
    );
    ev.protocol = Protocol::ICMPV6;
    ev.tcp_flags = None;
    ev.icmp = Some(IcmpTypeCode {
        icmp_type: 128,
        code: 0,
    });
    let flow = parser().parse(&ev);
    let ip = flow.ip.clone().expect("ip");
    assert_eq!(ip.ip_version(), IpVersion::IPv6);
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str()),
        ("fd00::10", "fd00::20")
    );
    assert_eq!(flow.summary, "ICMPv6 EchoRequest");
    assert_eq!(
        flow.l4,
        Some(Layer4 {
            protocol: Some(layer4::Protocol::IcmPv6(IcmPv6 {
                r#type: 128,
                code: 0
            }))
        })
    );
}

#[test]
fn uuids_are_distinct_version_4_strings() {
    let parser = parser();
    let ev = event(drop_kind(133), CLIENT_EP, client_ip(), remote_echo_ip());
    let uuids: HashSet<String> = (0..1000).map(|_| parser.parse(&ev).uuid).collect();
    assert_eq!(uuids.len(), 1000);
    for uuid in &uuids {
        let groups: Vec<&str> = uuid.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(lengths, [8, 4, 4, 4, 12], "{uuid}");
        assert!(groups[2].starts_with('4'), "{uuid}");
        assert!(
            matches!(groups[3].chars().next(), Some('8'..='9' | 'a'..='b')),
            "{uuid}"
        );
    }
}

#[test]
fn measured_boot_time_puts_a_fresh_event_at_now() {
    let parser = FlowParser::new("node-1".into(), String::new(), cache());
    assert_eq!(parser.node_name(), "node-1");
    let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(Duration::from)
        .expect("CLOCK_MONOTONIC");
    let mut ev = event(drop_kind(133), CLIENT_EP, client_ip(), remote_echo_ip());
    ev.timestamp_ns = u64::try_from(monotonic.as_nanos()).expect("fits");
    let time = parser.parse(&ev).time.expect("time");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs();
    let seconds = u64::try_from(time.seconds).expect("positive");
    assert!(now.abs_diff(seconds) <= 2, "flow time {seconds}, now {now}");
}

#[test]
fn a_packet_without_ipv4_has_no_ip_layer_and_names_the_endpoint_that_dropped_it() {
    // DROP_UNKNOWN_L3 (139) of a pod's IPv6 router solicitation: no addresses were parsed.
    let unspecified = v4(0, 0, 0, 0);
    let mut ev = event(drop_kind(139), CLIENT_EP, unspecified, unspecified);
    ev.source_identity = NumericIdentity::new(CLIENT_ID);
    ev.protocol = Protocol::new(0);
    ev.tcp_flags = None;
    let flow = parser().parse(&ev);
    assert_eq!(flow.ip, None, "no 0.0.0.0 -> 0.0.0.0 IPv4 flow");
    assert_eq!(flow.l4, None);
    assert_eq!(flow.summary, "Ethernet");
    assert_eq!(flow.verdict(), Verdict::Dropped);
    assert_eq!(flow.source, Some(local_client()));
    assert_eq!(flow.traffic_direction(), TrafficDirection::Egress);
    let destination = flow.destination.unwrap();
    assert_eq!(
        (destination.identity, destination.pod_name.as_str()),
        (0, "")
    );
}
