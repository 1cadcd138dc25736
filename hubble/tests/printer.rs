//! Golden output of `hubble::printer` for each kind of flow the agent produces, in every format,
//! checked against the shapes upstream's `hubble observe` prints.

use hubble::printer::{
    NodeListFormat, OutputFormat, Printer, PrinterOptions, compact_flow, flow_type, format_nodes,
    format_server_status,
};
use prost_types::Timestamp;
use proto::flow::{
    CiliumEventType, DropReason, Endpoint, Flow, FlowType, IcmPv4, Ip, IpVersion, Layer4,
    LostEvent, LostEventSource, Tcp, TcpFlags, TraceObservationPoint, TrafficDirection, Verdict,
    layer4,
};
use proto::observer::{GetFlowsResponse, Node, ServerStatusResponse, Tls, get_flows_response};
use proto::relay::{NodeState, NodeStatusEvent};

/// 2026-11-27T12:00:01.123Z.
fn time() -> Timestamp {
    Timestamp {
        seconds: 1_795_780_801,
        nanos: 123_456_789,
    }
}

fn pod(id: u32, identity: u32, name: &str) -> Endpoint {
    Endpoint {
        id,
        identity,
        namespace: "default".into(),
        labels: vec![format!("k8s:app={name}")],
        pod_name: name.into(),
        ..Endpoint::default()
    }
}

fn tcp(src: u32, dst: u32, flags: TcpFlags) -> Layer4 {
    Layer4 {
        protocol: Some(layer4::Protocol::Tcp(Tcp {
            source_port: src,
            destination_port: dst,
            flags: Some(flags),
        })),
    }
}

fn syn() -> TcpFlags {
    TcpFlags {
        syn: true,
        ..TcpFlags::default()
    }
}

fn ipv4(src: &str, dst: &str) -> Ip {
    Ip {
        source: src.into(),
        destination: dst.into(),
        ip_version: IpVersion::IPv4 as i32,
        ..Ip::default()
    }
}

/// A SYN from default/client to default/echo, delivered to the endpoint.
fn forwarded_syn() -> Flow {
    let mut f = Flow {
        time: Some(time()),
        ip: Some(ipv4("10.0.1.10", "10.0.1.20")),
        l4: Some(tcp(41234, 8080, syn())),
        source: Some(pod(101, 1234, "client")),
        destination: Some(pod(202, 5678, "echo")),
        node_name: "kind-worker".into(),
        event_type: Some(CiliumEventType {
            r#type: 4,
            sub_type: 0,
        }),
        is_reply: Some(false),
        summary: "TCP Flags: SYN".into(),
        ..Flow::default()
    };
    f.set_verdict(Verdict::Forwarded);
    f.set_type(FlowType::L3L4);
    f.set_traffic_direction(TrafficDirection::Ingress);
    f.set_trace_observation_point(TraceObservationPoint::ToEndpoint);
    f
}

/// The same SYN denied by policy.
fn dropped_policy_denied() -> Flow {
    let mut f = forwarded_syn();
    f.l4 = Some(tcp(41234, 80, syn()));
    f.event_type = Some(CiliumEventType {
        r#type: 1,
        sub_type: 133,
    });
    f.drop_reason = 133;
    f.set_verdict(Verdict::Dropped);
    f.set_drop_reason_desc(DropReason::PolicyDenied);
    f.trace_observation_point = 0;
    f
}

/// echo's SYN-ACK back to client.
fn reply() -> Flow {
    let mut f = forwarded_syn();
    f.ip = Some(ipv4("10.0.1.20", "10.0.1.10"));
    f.l4 = Some(tcp(
        8080,
        41234,
        TcpFlags {
            syn: true,
            ack: true,
            ..TcpFlags::default()
        },
    ));
    f.source = Some(pod(202, 5678, "echo"));
    f.destination = Some(pod(101, 1234, "client"));
    f.is_reply = Some(true);
    f.summary = "TCP Flags: SYN, ACK".into();
    f
}

/// An echo request leaving client towards the stack.
fn icmp_echo() -> Flow {
    let mut f = forwarded_syn();
    f.l4 = Some(Layer4 {
        protocol: Some(layer4::Protocol::IcmPv4(IcmPv4 { r#type: 8, code: 0 })),
    });
    f.event_type = Some(CiliumEventType {
        r#type: 4,
        sub_type: 3,
    });
    f.set_trace_observation_point(TraceObservationPoint::ToStack);
    f.set_traffic_direction(TrafficDirection::Egress);
    f.summary = "ICMPv4 EchoRequest".into();
    f
}

/// A policy verdict for a connection from outside the cluster (no pod, reserved identity).
fn world_policy_verdict() -> Flow {
    let mut f = forwarded_syn();
    f.ip = Some(ipv4("203.0.113.7", "10.0.1.20"));
    f.l4 = Some(tcp(51000, 8080, syn()));
    f.source = Some(Endpoint {
        identity: 2,
        labels: vec!["reserved:world".into()],
        ..Endpoint::default()
    });
    f.event_type = Some(CiliumEventType {
        r#type: 5,
        sub_type: 0,
    });
    f.policy_match_type = 2;
    f.is_reply = None;
    f.trace_observation_point = 0;
    f
}

fn response(flow: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(get_flows_response::ResponseTypes::Flow(flow)),
    }
}

fn node_status(state: NodeState, names: &[&str], message: &str) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: "hubble-relay".into(),
        time: Some(time()),
        response_types: Some(get_flows_response::ResponseTypes::NodeStatus(
            NodeStatusEvent {
                state_change: state as i32,
                node_names: names.iter().map(|n| n.to_string()).collect(),
                message: message.into(),
            },
        )),
    }
}

fn lost_events() -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: "kind-worker".into(),
        time: Some(time()),
        response_types: Some(get_flows_response::ResponseTypes::LostEvents(LostEvent {
            source: LostEventSource::HubbleRingBuffer as i32,
            num_events_lost: 42,
            cpu: None,
        })),
    }
}

/// Prints `responses` and returns (stdout, stderr).
fn render(opts: PrinterOptions, responses: &[GetFlowsResponse]) -> (String, String) {
    let mut printer = Printer::new(opts, Vec::new(), Vec::new());
    for res in responses {
        printer.write_response(res).expect("render");
    }
    let (out, err) = printer.finish().expect("finish");
    (
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

fn opts(format: OutputFormat) -> PrinterOptions {
    PrinterOptions {
        format,
        ..PrinterOptions::default()
    }
}

#[test]
fn compact_lines_for_each_kind_of_flow() {
    let responses: Vec<_> = [
        forwarded_syn(),
        dropped_policy_denied(),
        reply(),
        icmp_echo(),
        world_policy_verdict(),
    ]
    .into_iter()
    .map(response)
    .collect();
    let (out, err) = render(opts(OutputFormat::Compact), &responses);
    let expected = "\
Nov 27 12:00:01.123: default/client:41234 (ID:1234) -> default/echo:8080 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)
Nov 27 12:00:01.123: default/client:41234 (ID:1234) -> default/echo:80 (ID:5678) Policy denied DROPPED (TCP Flags: SYN)
Nov 27 12:00:01.123: default/client:41234 (ID:1234) <- default/echo:8080 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN, ACK)
Nov 27 12:00:01.123: default/client (ID:1234) -> default/echo (ID:5678) to-stack FORWARDED (ICMPv4 EchoRequest)
Nov 27 12:00:01.123: 203.0.113.7:51000 (world) <> default/echo:8080 (ID:5678) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)
";
    assert_eq!(out, expected);
    assert_eq!(err, "");
}

#[test]
fn compact_with_node_name_and_without_ip_translation() {
    let options = PrinterOptions {
        node_name: true,
        ip_translation: false,
        ..PrinterOptions::default()
    };
    assert_eq!(
        compact_flow(&forwarded_syn(), &options),
        "Nov 27 12:00:01.123 [kind-worker]: 10.0.1.10:41234 (ID:1234) -> 10.0.1.20:8080 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)"
    );
}

#[test]
fn ipv6_addresses_are_bracketed_and_reserved_identities_named() {
    let mut f = world_policy_verdict();
    f.ip = Some(Ip {
        source: "2001:db8::7".into(),
        destination: "fd00::20".into(),
        ip_version: IpVersion::IPv6 as i32,
        ..Ip::default()
    });
    f.destination = Some(Endpoint {
        identity: 1,
        ..Endpoint::default()
    });
    f.set_verdict(Verdict::Dropped);
    f.set_traffic_direction(TrafficDirection::Egress);
    f.policy_match_type = 0;
    assert_eq!(
        compact_flow(&f, &PrinterOptions::default()),
        "Nov 27 12:00:01.123: [2001:db8::7]:51000 (world) <> [fd00::20]:8080 (host) policy-verdict:none EGRESS DENIED (TCP Flags: SYN)"
    );
}

#[test]
fn flow_types_follow_upstream_names() {
    assert_eq!(flow_type(&forwarded_syn()), "to-endpoint");
    assert_eq!(flow_type(&dropped_policy_denied()), "Policy denied");
    let mut deny_rule = dropped_policy_denied();
    deny_rule.event_type = Some(CiliumEventType {
        r#type: 1,
        sub_type: 181,
    });
    assert_eq!(flow_type(&deny_rule), "Policy denied by denylist");
    let mut unnamed = dropped_policy_denied();
    unnamed.event_type = Some(CiliumEventType {
        r#type: 1,
        sub_type: 250,
    });
    assert_eq!(flow_type(&unnamed), "250");
    assert_eq!(
        flow_type(&world_policy_verdict()),
        "policy-verdict:L3-L4 INGRESS"
    );
    assert_eq!(flow_type(&Flow::default()), "UNKNOWN");
}

#[test]
fn jsonpb_is_protojson_with_proto_names() {
    let (out, _) = render(opts(OutputFormat::JsonPb), &[response(forwarded_syn())]);
    let expected = concat!(
        r#"{"flow":{"time":"2026-11-27T12:00:01.123456789Z","verdict":"FORWARDED","#,
        r#""IP":{"source":"10.0.1.10","destination":"10.0.1.20","ipVersion":"IPv4"},"#,
        r#""l4":{"TCP":{"source_port":41234,"destination_port":8080,"flags":{"SYN":true}}},"#,
        r#""source":{"ID":101,"identity":1234,"namespace":"default","labels":["k8s:app=client"],"pod_name":"client"},"#,
        r#""destination":{"ID":202,"identity":5678,"namespace":"default","labels":["k8s:app=echo"],"pod_name":"echo"},"#,
        r#""Type":"L3_L4","node_name":"kind-worker","event_type":{"type":4},"#,
        r#""traffic_direction":"INGRESS","trace_observation_point":"TO_ENDPOINT","#,
        r#""is_reply":false,"Summary":"TCP Flags: SYN"},"#,
        r#""node_name":"kind-worker","time":"2026-11-27T12:00:01.123456789Z"}"#,
        "\n"
    );
    assert_eq!(out, expected);
}

#[test]
fn json_is_jsonpb_and_every_line_parses() {
    let responses: Vec<_> = [dropped_policy_denied(), reply()]
        .into_iter()
        .map(response)
        .collect();
    let (json, _) = render(opts(OutputFormat::Json), &responses);
    let (jsonpb, _) = render(opts(OutputFormat::JsonPb), &responses);
    assert_eq!(json, jsonpb);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON"))
        .collect();
    assert_eq!(lines.len(), 2);
    let drop = &lines[0]["flow"];
    assert_eq!(drop["verdict"], "DROPPED");
    assert_eq!(drop["drop_reason"], 133);
    assert_eq!(drop["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(drop["event_type"]["sub_type"], 133);
    assert!(drop.get("trace_observation_point").is_none());
    let reply = &lines[1]["flow"];
    assert_eq!(reply["is_reply"], true);
    assert_eq!(
        reply["l4"]["TCP"]["flags"],
        serde_json::json!({"SYN": true, "ACK": true})
    );
}

#[test]
fn table_aligns_columns_after_the_last_row() {
    let responses = vec![
        response(forwarded_syn()),
        response(dropped_policy_denied()),
        lost_events(),
    ];
    let (out, _) = render(opts(OutputFormat::Table), &responses);
    let expected = "\
TIMESTAMP             SOURCE                 DESTINATION         TYPE            VERDICT     SUMMARY
Nov 27 12:00:01.123   default/client:41234   default/echo:8080   to-endpoint     FORWARDED   TCP Flags: SYN
Nov 27 12:00:01.123   default/client:41234   default/echo:80     Policy denied   DROPPED     TCP Flags: SYN
                      HUBBLE_RING_BUFFER                         EVENTS LOST                 CPU(0) - 42
";
    assert_eq!(out, expected);
}

#[test]
fn lost_events_in_compact_and_json() {
    let (out, _) = render(opts(OutputFormat::Compact), &[lost_events()]);
    assert_eq!(out, "EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 42\n");
    let (out, _) = render(opts(OutputFormat::JsonPb), &[lost_events()]);
    assert_eq!(
        out,
        concat!(
            r#"{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"42"},"#,
            r#""node_name":"kind-worker","time":"2026-11-27T12:00:01.123456789Z"}"#,
            "\n"
        )
    );
}

#[test]
fn node_status_goes_to_stderr_and_informational_states_need_debug() {
    let events = vec![
        node_status(NodeState::NodeConnected, &["node-a", "node-b"], ""),
        node_status(NodeState::NodeUnavailable, &["node-b"], ""),
        node_status(NodeState::NodeError, &["node-c"], "connection refused"),
    ];
    let (out, err) = render(opts(OutputFormat::Compact), &events);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "\
Nov 27 12:00:01.123 [hubble-relay]: 1 nodes are unavailable: node-b
Nov 27 12:00:01.123 [hubble-relay]: Error \"connection refused\" on 1 nodes: node-c
"
    );

    let debug = PrinterOptions {
        debug: true,
        ..PrinterOptions::default()
    };
    let (_, err) = render(debug, &events[..1]);
    assert_eq!(
        err,
        "Nov 27 12:00:01.123 [hubble-relay]: Receiving flows from 2 nodes: node-a, node-b\n"
    );

    let (out, err) = render(opts(OutputFormat::JsonPb), &events[1..2]);
    assert_eq!(out, "");
    assert_eq!(
        err,
        concat!(
            r#"{"node_status":{"state_change":"NODE_UNAVAILABLE","node_names":["node-b"]},"#,
            r#""node_name":"hubble-relay","time":"2026-11-27T12:00:01.123456789Z"}"#,
            "\n"
        )
    );
}

#[test]
fn control_characters_in_names_are_escaped() {
    let mut f = forwarded_syn();
    if let Some(src) = f.source.as_mut() {
        src.pod_name = "evil\u{1b}[2J".into();
    }
    let line = compact_flow(&f, &PrinterOptions::default());
    assert!(!line.contains('\u{1b}'), "{line}");
    assert!(line.contains("default/evil\\u{1b}[2J:41234"), "{line}");
}

fn relay_status() -> ServerStatusResponse {
    ServerStatusResponse {
        num_flows: 8190,
        max_flows: 8190,
        seen_flows: 123_456,
        uptime_ns: 3_600_000_000_000,
        num_connected_nodes: Some(1),
        num_unavailable_nodes: Some(1),
        unavailable_nodes: vec!["kind-worker2".into()],
        version: "1.18.0".into(),
        flows_rate: 12.345,
    }
}

#[test]
fn server_status_compact_table_and_json() {
    let compact = format_server_status(&relay_status(), OutputFormat::Compact).expect("status");
    assert_eq!(
        compact,
        "\
Current/Max Flows: 8,190/8,190 (100.00%)
Flows/s: 12.35
Connected Nodes: 1/2
Unavailable Nodes: 1
  - kind-worker2
"
    );

    // An agent (not a relay) reports no node counts; the rate falls back to seen/uptime.
    let agent = ServerStatusResponse {
        num_flows: 10,
        max_flows: 4095,
        seen_flows: 7200,
        uptime_ns: 3_600_000_000_000,
        ..ServerStatusResponse::default()
    };
    let compact = format_server_status(&agent, OutputFormat::Compact).expect("status");
    assert_eq!(
        compact,
        "Current/Max Flows: 10/4,095 (0.24%)\nFlows/s: 2.00\n"
    );

    let table = format_server_status(&relay_status(), OutputFormat::Table).expect("status");
    assert_eq!(
        table,
        "\
NUM FLOWS   MAX FLOWS   SEEN FLOWS   FLOWS PER SECOND   UPTIME   NUM CONNECTED NODES   NUM UNAVAILABLE NODES   VERSION
8,190       8,190       123,456      12.35              1h0m0s   1                     1                       1.18.0
"
    );

    let json = format_server_status(&relay_status(), OutputFormat::Json).expect("status");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["num_flows"], "8190");
    assert_eq!(value["num_connected_nodes"], 1);
    assert_eq!(
        value["unavailable_nodes"],
        serde_json::json!(["kind-worker2"])
    );
    assert_eq!(value["flows_rate"], 12.345);
}

fn nodes() -> Vec<Node> {
    vec![
        Node {
            name: "kind-worker2".into(),
            address: "172.18.0.3:4244".into(),
            state: NodeState::NodeUnavailable as i32,
            ..Node::default()
        },
        Node {
            name: "kind-worker".into(),
            version: "1.18.0".into(),
            address: "172.18.0.2:4244".into(),
            state: NodeState::NodeConnected as i32,
            tls: Some(Tls {
                enabled: false,
                server_name: String::new(),
            }),
            uptime_ns: 3_723_400_000_000,
            num_flows: 2048,
            max_flows: 4095,
            seen_flows: 7446,
        },
    ]
}

#[test]
fn list_nodes_table_wide_and_json() {
    assert_eq!(
        format_nodes(&nodes(), NodeListFormat::Table),
        "\
NAME           STATUS        AGE      FLOWS/S   CURRENT/MAX-FLOWS
kind-worker    Connected     1h2m3s   2.00      2048/4095 ( 50.01%)
kind-worker2   Unavailable   N/A      N/A       N/A
"
    );
    let wide = format_nodes(&nodes(), NodeListFormat::Wide);
    assert!(
        wide.lines()
            .next()
            .is_some_and(|h| h.ends_with("VERSION   ADDRESS           TLS")),
        "{wide}"
    );
    assert!(
        wide.contains("1.18.0    172.18.0.2:4244   Disabled"),
        "{wide}"
    );

    let json = format_nodes(&nodes(), NodeListFormat::Json);
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value[0]["name"], "kind-worker");
    assert_eq!(value[0]["state"], "NODE_CONNECTED");
    assert_eq!(value[0]["uptime_ns"], "3723400000000");
    assert_eq!(value[0]["tls"], serde_json::json!({}));
    assert_eq!(value[1]["state"], "NODE_UNAVAILABLE");
    assert!(
        json.starts_with("[\n  {\n    \"name\": \"kind-worker\""),
        "{json}"
    );
}

#[test]
fn output_formats_parse_as_upstream_spells_them() {
    for (text, format) in [
        ("compact", OutputFormat::Compact),
        ("json", OutputFormat::Json),
        ("JSON", OutputFormat::Json),
        ("jsonpb", OutputFormat::JsonPb),
        ("table", OutputFormat::Table),
        ("tab", OutputFormat::Table),
    ] {
        assert_eq!(text.parse::<OutputFormat>().ok(), Some(format), "{text}");
    }
    let err = "yaml"
        .parse::<OutputFormat>()
        .expect_err("yaml is not a format");
    assert!(err.to_string().contains("\"yaml\""), "{err}");
}
