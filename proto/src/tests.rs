//! Wire-compatibility checks: field numbers and enum values are pinned with hand-built protobuf
//! bytes, so a wrong number in a `.proto` file fails here rather than in an upstream client.

use prost::Message;
use prost_types::Timestamp;

use crate::flow::{
    DropReason, Endpoint, Flow, FlowFilter, FlowType, IpVersion, Layer4, Tcp, TcpFlags,
    TraceObservationPoint, TrafficDirection, Verdict, layer4,
};
use crate::observer::{
    GetFlowsRequest, GetFlowsResponse, ServerStatusResponse, get_flows_response,
};
use crate::peer::{ChangeNotification, ChangeNotificationType};
use crate::relay::{NodeState, NodeStatusEvent};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(field: u32, wire_type: u32, out: &mut Vec<u8>) {
    varint(u64::from((field << 3) | wire_type), out);
}

fn varint_field(field: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    key(field, VARINT, &mut out);
    varint(value, &mut out);
    out
}

fn len_field(field: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    key(field, LEN, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn flow_round_trips_through_encoding() {
    let mut flow = Flow {
        time: Some(Timestamp {
            seconds: 1_764_244_801,
            nanos: 123_000_000,
        }),
        uuid: "0b1c2d3e-0000-4000-8000-000000000001".to_owned(),
        node_name: "kind-worker".to_owned(),
        is_reply: Some(false),
        source: Some(Endpoint {
            id: 42,
            identity: 1234,
            cluster_name: "default".to_owned(),
            namespace: "default".to_owned(),
            labels: vec!["k8s:app=client".to_owned()],
            pod_name: "client".to_owned(),
            workloads: Vec::new(),
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 41234,
                destination_port: 8080,
                flags: Some(TcpFlags {
                    syn: true,
                    ..TcpFlags::default()
                }),
            })),
        }),
        ..Flow::default()
    };
    flow.set_verdict(Verdict::Dropped);
    flow.set_drop_reason_desc(DropReason::PolicyDenied);
    flow.set_type(FlowType::L3L4);
    flow.set_traffic_direction(TrafficDirection::Ingress);
    flow.set_trace_observation_point(TraceObservationPoint::ToEndpoint);

    let decoded = Flow::decode(flow.encode_to_vec().as_slice()).expect("decode own encoding");
    assert_eq!(decoded, flow);
    assert_eq!(decoded.verdict(), Verdict::Dropped);
    assert_eq!(decoded.drop_reason_desc(), DropReason::PolicyDenied);
    assert_eq!(
        decoded.is_reply,
        Some(false),
        "BoolValue must keep an explicit false"
    );
}

#[test]
fn flow_field_numbers_match_upstream() {
    let tcp_flags = varint_field(2, 1); // SYN = 2
    let tcp = concat(&[
        varint_field(1, 41234),
        varint_field(2, 8080),
        len_field(3, &tcp_flags),
    ]);
    let l4 = len_field(1, &tcp); // Layer4.TCP = 1
    let endpoint = concat(&[
        varint_field(1, 42),             // ID
        varint_field(2, 1234),           // identity
        len_field(3, b"default"),        // namespace
        len_field(4, b"k8s:app=client"), // labels
        len_field(5, b"client"),         // pod_name
        len_field(7, b"cluster1"),       // cluster_name
    ]);
    let ip = concat(&[
        len_field(1, b"10.0.0.1"),
        len_field(2, b"10.0.0.2"),
        varint_field(3, 1),
    ]);
    let time = concat(&[varint_field(1, 1_764_244_801), varint_field(2, 5)]);
    let bytes = concat(&[
        len_field(1, &time),
        varint_field(2, 2),   // verdict = DROPPED
        varint_field(3, 133), // drop_reason (legacy)
        len_field(5, &ip),
        len_field(6, &l4),
        len_field(8, &endpoint),
        varint_field(10, 1), // Type = L3_L4
        len_field(11, b"node-a"),
        varint_field(16, 1), // reply (legacy)
        varint_field(22, 1), // traffic_direction = INGRESS
        varint_field(24, 101),
        varint_field(25, 133),              // drop_reason_desc = POLICY_DENIED
        len_field(26, &varint_field(1, 1)), // is_reply = BoolValue{true}
        len_field(34, b"uuid-1"),
    ]);

    let flow = Flow::decode(bytes.as_slice()).expect("hand-built flow decodes");
    assert_eq!(
        flow.time,
        Some(Timestamp {
            seconds: 1_764_244_801,
            nanos: 5
        })
    );
    assert_eq!(flow.verdict(), Verdict::Dropped);
    assert_eq!(flow.drop_reason, 133);
    assert_eq!(flow.drop_reason_desc(), DropReason::PolicyDenied);
    let ip = flow.ip.as_ref().expect("IP = 5");
    assert_eq!(
        (ip.source.as_str(), ip.destination.as_str()),
        ("10.0.0.1", "10.0.0.2")
    );
    assert_eq!(ip.ip_version(), IpVersion::IPv4);
    let Some(layer4::Protocol::Tcp(tcp)) = flow.l4.as_ref().and_then(|l4| l4.protocol) else {
        panic!("l4 = 6 with TCP = 1 expected, got {:?}", flow.l4);
    };
    assert_eq!((tcp.source_port, tcp.destination_port), (41234, 8080));
    assert!(tcp.flags.is_some_and(|f| f.syn && !f.fin && !f.ack));
    let source = flow.source.as_ref().expect("source = 8");
    assert_eq!((source.id, source.identity), (42, 1234));
    assert_eq!(source.namespace, "default");
    assert_eq!(source.labels, ["k8s:app=client"]);
    assert_eq!(source.pod_name, "client");
    assert_eq!(source.cluster_name, "cluster1");
    assert!(flow.destination.is_none());
    assert_eq!(flow.r#type(), FlowType::L3L4);
    assert_eq!(flow.node_name, "node-a");
    assert!(flow.reply);
    assert_eq!(flow.traffic_direction(), TrafficDirection::Ingress);
    assert_eq!(
        flow.trace_observation_point(),
        TraceObservationPoint::ToEndpoint
    );
    assert_eq!(flow.is_reply, Some(true));
    assert_eq!(flow.uuid, "uuid-1");

    // And in the other direction: a lone field encodes to exactly its upstream tag.
    let mut only_verdict = Flow::default();
    only_verdict.set_verdict(Verdict::Forwarded);
    assert_eq!(only_verdict.encode_to_vec(), varint_field(2, 1));
    let only_reply = Flow {
        is_reply: Some(true),
        ..Flow::default()
    };
    assert_eq!(
        only_reply.encode_to_vec(),
        len_field(26, &varint_field(1, 1))
    );
}

#[test]
fn enum_values_and_names_match_upstream() {
    assert_eq!(Verdict::Forwarded as i32, 1);
    assert_eq!(Verdict::Dropped as i32, 2);
    assert_eq!(Verdict::Audit as i32, 4);
    assert_eq!(Verdict::Translated as i32, 7);
    assert_eq!(DropReason::PolicyDenied as i32, 133);
    assert_eq!(DropReason::CtMapInsertionFailed as i32, 155);
    assert_eq!(DropReason::NoTunnelOrEncapsulationEndpoint as i32, 160);
    assert_eq!(DropReason::PolicyDeny as i32, 181);
    assert_eq!(DropReason::AuthRequired as i32, 189);
    assert_eq!(DropReason::DropEpNotReady as i32, 203);
    assert_eq!(TraceObservationPoint::ToEndpoint as i32, 101);
    assert_eq!(TraceObservationPoint::FromEndpoint as i32, 5);
    assert_eq!(TraceObservationPoint::ToStack as i32, 3);
    assert_eq!(TrafficDirection::Egress as i32, 2);
    assert_eq!(IpVersion::IPv6 as i32, 2);
    // The CLI prints and parses these names, so they must be the proto names.
    assert_eq!(DropReason::PolicyDenied.as_str_name(), "POLICY_DENIED");
    assert_eq!(Verdict::Forwarded.as_str_name(), "FORWARDED");
    assert_eq!(
        TraceObservationPoint::ToEndpoint.as_str_name(),
        "TO_ENDPOINT"
    );
    assert_eq!(Verdict::from_str_name("DROPPED"), Some(Verdict::Dropped));
    assert_eq!(DropReason::try_from(133), Ok(DropReason::PolicyDenied));
    assert!(
        DropReason::try_from(159).is_err(),
        "159 is unassigned upstream"
    );
    assert_eq!(NodeState::NodeUnavailable as i32, 2);
    assert_eq!(ChangeNotificationType::PeerDeleted as i32, 2);
}

#[test]
fn flow_filter_field_numbers_match_upstream() {
    let flags = varint_field(1, 1); // FIN
    let bytes = concat(&[
        len_field(1, b"10.0.0.0/8"),      // source_ip
        len_field(2, b"default/client"),  // source_pod
        len_field(3, b"10.0.0.2"),        // destination_ip
        len_field(4, b"default/echo"),    // destination_pod
        len_field(10, b"k8s:app=client"), // source_label
        len_field(11, b"k8s:app=echo"),   // destination_label
        len_field(12, b"tcp"),            // protocol
        len_field(13, b"41234"),          // source_port
        len_field(14, b"8080"),           // destination_port
        varint_field(15, 1),              // reply
        varint_field(19, 1234),           // source_identity
        varint_field(20, 5678),           // destination_identity
        len_field(23, &flags),            // tcp_flags
        len_field(24, b"node-*"),         // node_name
        varint_field(25, 2),              // ip_version = IPv6
        len_field(29, b"uuid-1"),         // uuid
        varint_field(30, 2),              // traffic_direction = EGRESS
        // Packed repeated enums, as protoc-generated clients send them.
        len_field(5, &[2, 1]),        // verdict = [DROPPED, FORWARDED]
        len_field(33, &[0x85, 0x01]), // drop_reason_desc = [POLICY_DENIED]
    ]);
    let filter = FlowFilter::decode(bytes.as_slice()).expect("hand-built filter decodes");
    assert_eq!(filter.source_ip, ["10.0.0.0/8"]);
    assert_eq!(filter.source_pod, ["default/client"]);
    assert_eq!(filter.destination_ip, ["10.0.0.2"]);
    assert_eq!(filter.destination_pod, ["default/echo"]);
    assert_eq!(filter.source_label, ["k8s:app=client"]);
    assert_eq!(filter.destination_label, ["k8s:app=echo"]);
    assert_eq!(filter.protocol, ["tcp"]);
    assert_eq!(filter.source_port, ["41234"]);
    assert_eq!(filter.destination_port, ["8080"]);
    assert_eq!(filter.reply, [true]);
    assert_eq!(filter.source_identity, [1234]);
    assert_eq!(filter.destination_identity, [5678]);
    assert_eq!(
        filter.tcp_flags,
        [TcpFlags {
            fin: true,
            ..TcpFlags::default()
        }]
    );
    assert_eq!(filter.node_name, ["node-*"]);
    assert_eq!(filter.ip_version, [IpVersion::IPv6 as i32]);
    assert_eq!(filter.uuid, ["uuid-1"]);
    assert_eq!(filter.traffic_direction, [TrafficDirection::Egress as i32]);
    assert_eq!(
        filter.verdict,
        [Verdict::Dropped as i32, Verdict::Forwarded as i32]
    );
    assert_eq!(filter.drop_reason_desc, [DropReason::PolicyDenied as i32]);
}

#[test]
fn get_flows_request_field_numbers_match_upstream() {
    let whitelist = len_field(2, b"default/"); // FlowFilter.source_pod
    let blacklist = len_field(4, b"kube-system/"); // FlowFilter.destination_pod
    let bytes = concat(&[
        varint_field(1, 20), // number
        varint_field(3, 1),  // follow
        len_field(5, &blacklist),
        len_field(6, &whitelist),
        len_field(7, &varint_field(1, 100)), // since.seconds
        len_field(8, &varint_field(1, 200)), // until.seconds
        varint_field(9, 1),                  // first
    ]);
    let request = GetFlowsRequest::decode(bytes.as_slice()).expect("hand-built request decodes");
    assert_eq!(request.number, 20);
    assert!(request.follow);
    assert!(request.first);
    assert_eq!(request.blacklist.len(), 1);
    assert_eq!(request.blacklist[0].destination_pod, ["kube-system/"]);
    assert_eq!(request.whitelist.len(), 1);
    assert_eq!(request.whitelist[0].source_pod, ["default/"]);
    assert_eq!(
        request.since,
        Some(Timestamp {
            seconds: 100,
            nanos: 0
        })
    );
    assert_eq!(
        request.until,
        Some(Timestamp {
            seconds: 200,
            nanos: 0
        })
    );

    let follow_only = GetFlowsRequest {
        follow: true,
        ..GetFlowsRequest::default()
    };
    assert_eq!(follow_only.encode_to_vec(), varint_field(3, 1));
}

#[test]
fn get_flows_response_field_numbers_match_upstream() {
    let flow = varint_field(2, 1); // Flow.verdict = FORWARDED
    let bytes = concat(&[
        len_field(1, &flow),
        len_field(1000, b"node-a"),
        len_field(1001, &varint_field(1, 7)),
    ]);
    let response = GetFlowsResponse::decode(bytes.as_slice()).expect("flow response decodes");
    assert_eq!(response.node_name, "node-a");
    assert_eq!(
        response.time,
        Some(Timestamp {
            seconds: 7,
            nanos: 0
        })
    );
    let Some(get_flows_response::ResponseTypes::Flow(flow)) = response.response_types else {
        panic!("response_types.flow = 1 expected");
    };
    assert_eq!(flow.verdict(), Verdict::Forwarded);

    let status = concat(&[
        varint_field(1, 2),
        len_field(2, b"node-b"),
        len_field(3, b"dial failed"),
    ]);
    let response = GetFlowsResponse::decode(len_field(2, &status).as_slice()).expect("node status");
    let Some(get_flows_response::ResponseTypes::NodeStatus(NodeStatusEvent {
        state_change,
        node_names,
        message,
    })) = response.response_types
    else {
        panic!("response_types.node_status = 2 expected");
    };
    assert_eq!(state_change, NodeState::NodeUnavailable as i32);
    assert_eq!(node_names, ["node-b"]);
    assert_eq!(message, "dial failed");

    let lost = concat(&[varint_field(1, 3), varint_field(2, 9)]);
    let response = GetFlowsResponse::decode(len_field(3, &lost).as_slice()).expect("lost events");
    let Some(get_flows_response::ResponseTypes::LostEvents(lost)) = response.response_types else {
        panic!("response_types.lost_events = 3 expected");
    };
    assert_eq!(
        lost.source(),
        crate::flow::LostEventSource::HubbleRingBuffer
    );
    assert_eq!(lost.num_events_lost, 9);
}

#[test]
fn server_status_and_peer_field_numbers_match_upstream() {
    let mut bytes = concat(&[
        varint_field(1, 10),               // num_flows
        varint_field(2, 4095),             // max_flows
        varint_field(3, 99),               // seen_flows
        varint_field(4, 5),                // uptime_ns
        len_field(5, &varint_field(1, 2)), // num_connected_nodes
        len_field(6, &varint_field(1, 1)), // num_unavailable_nodes
        len_field(7, b"node-c"),
        len_field(8, b"1.0.0"),
    ]);
    key(9, FIXED64, &mut bytes); // flows_rate (double)
    bytes.extend_from_slice(&2.5f64.to_le_bytes());
    let status = ServerStatusResponse::decode(bytes.as_slice()).expect("status decodes");
    assert_eq!(
        (
            status.num_flows,
            status.max_flows,
            status.seen_flows,
            status.uptime_ns
        ),
        (10, 4095, 99, 5)
    );
    assert_eq!(status.num_connected_nodes, Some(2));
    assert_eq!(status.num_unavailable_nodes, Some(1));
    assert_eq!(status.unavailable_nodes, ["node-c"]);
    assert_eq!(status.version, "1.0.0");
    assert!((status.flows_rate - 2.5).abs() < f64::EPSILON);

    let bytes = concat(&[
        len_field(1, b"cluster2/node-d"),
        len_field(2, b"10.0.0.4:4244"),
        varint_field(3, 1), // PEER_ADDED
        len_field(4, &len_field(1, b"node-d.hubble-grpc.cilium.io")),
    ]);
    let change = ChangeNotification::decode(bytes.as_slice()).expect("peer change decodes");
    assert_eq!(change.name, "cluster2/node-d");
    assert_eq!(change.address, "10.0.0.4:4244");
    assert_eq!(change.r#type(), ChangeNotificationType::PeerAdded);
    assert_eq!(
        change.tls.map(|tls| tls.server_name).as_deref(),
        Some("node-d.hubble-grpc.cilium.io")
    );
}

#[test]
fn descriptor_set_describes_the_services() {
    let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let file = |name: &str| set.file.iter().find(|f| f.name() == name);
    for name in [
        "flow/flow.proto",
        "observer/observer.proto",
        "peer/peer.proto",
        "relay/relay.proto",
    ] {
        assert!(file(name).is_some(), "{name} missing from descriptor set");
    }
    let observer = file("observer/observer.proto").expect("observer file");
    assert_eq!(observer.package(), "observer");
    let service = observer
        .service
        .iter()
        .find(|s| s.name() == "Observer")
        .expect("Observer service");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "GetFlows",
            "GetAgentEvents",
            "GetDebugEvents",
            "GetNodes",
            "GetNamespaces",
            "ServerStatus"
        ]
    );
    let get_flows = &service.method[0];
    assert!(get_flows.server_streaming());
    assert_eq!(get_flows.input_type(), ".observer.GetFlowsRequest");
    assert_eq!(get_flows.output_type(), ".observer.GetFlowsResponse");
    let peer = file("peer/peer.proto").expect("peer file");
    let notify = &peer.service[0].method[0];
    assert_eq!((peer.service[0].name(), notify.name()), ("Peer", "Notify"));
    assert!(notify.server_streaming());
}
