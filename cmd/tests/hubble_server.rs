//! The agent's embedded Hubble over the fake datapath: monitor events from a channel become
//! flows enriched from the agent's endpoints, served over gRPC on TCP and on the unix socket,
//! with the Peer service listing this node and the metrics counting the flows.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use actors::endpoint::CreateEndpoint;
use cilium_cmd::hubble_server::{self, HubbleConfig};
use common::TestAgent;
use datapath::api::{EndpointId, Protocol};
use datapath::monitor::{MonitorEvent, MonitorEventKind, ObservationPoint, TcpFlags, TraceState};
use hubble::ring::Capacity;
use model::identity::NumericIdentity;
use model::labels::{Label, Labels};
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_client::ObserverClient;
use proto::observer::{GetFlowsRequest, ServerStatusRequest};
use proto::peer::peer_client::PeerClient;
use proto::peer::{ChangeNotificationType, NotifyRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;

const WAIT: Duration = Duration::from_secs(10);

fn syn(endpoint: EndpointId, identity: NumericIdentity, source: Ipv4Addr) -> MonitorEvent {
    MonitorEvent {
        kind: MonitorEventKind::Trace {
            observation_point: ObservationPoint::FromEndpoint,
            state: TraceState::New,
        },
        source_endpoint: endpoint,
        destination_endpoint: EndpointId::new(0),
        source_identity: identity,
        destination_identity: NumericIdentity::new(2),
        source_ip: IpAddr::V4(source),
        destination_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80)),
        source_port: 41234,
        destination_port: 80,
        protocol: Protocol::TCP,
        tcp_flags: Some(TcpFlags(0x02)),
        icmp: None,
        is_reply: false,
        ethernet: None,
        packet_len: 74,
        captured_len: 74,
        ifindex: 7,
        hash: 0,
        cpu: None,
        timestamp_ns: 1_000_000_000,
    }
}

#[actix_rt::test]
async fn events_become_enriched_flows_served_on_tcp_and_unix_socket() {
    let agent = TestAgent::start().await;
    let manager = agent
        .handles()
        .endpoints
        .clone()
        .expect("IPAM is configured");
    let labels: Labels = ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"]
        .into_iter()
        .map(|l| l.parse::<Label>().expect("label"))
        .collect();
    let web = manager
        .send(CreateEndpoint {
            container_id: "c0ffee".to_owned(),
            netns: "/var/run/netns/c0ffee".into(),
            ifname: "eth0".to_owned(),
            pod_name: "web-1".to_owned(),
            pod_namespace: "shop".to_owned(),
            labels,
            requested_ip: None,
            named_ports: Vec::new(),
        })
        .await
        .expect("endpoint manager")
        .expect("endpoint created");

    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("run").join("hubble.sock");
    let (events, events_rx) = tokio::sync::mpsc::channel(16);
    let hubble = hubble_server::start(
        agent.handles(),
        HubbleConfig {
            listen_address: "127.0.0.1:0".to_owned(),
            socket_path: Some(socket.clone()),
            capacity: Capacity::new(63).expect("capacity"),
            metrics_address: "127.0.0.1:0".to_owned(),
            node_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        },
        events_rx,
    )
    .await
    .expect("hubble starts");
    let tcp = hubble.tcp_address().expect("TCP server");
    let mut client = ObserverClient::connect(format!("http://{tcp}"))
        .await
        .expect("connect over TCP");

    // The enrichment cache fills within a sync period: send until the flow names the pod.
    let flow = tokio::time::timeout(WAIT, async {
        loop {
            events
                .send(vec![syn(web.id, web.identity, web.ip)])
                .await
                .expect("reader running");
            let mut stream = client
                .get_flows(GetFlowsRequest {
                    number: 1,
                    ..Default::default()
                })
                .await
                .expect("GetFlows")
                .into_inner();
            if let Some(Ok(response)) = stream.next().await
                && let Some(ResponseTypes::Flow(flow)) = response.response_types
                && flow.source.as_ref().is_some_and(|s| s.pod_name == "web-1")
            {
                return flow;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a flow enriched with the endpoint's pod");
    let source = flow.source.expect("source endpoint");
    assert_eq!(source.namespace, "shop");
    assert_eq!(source.identity, web.identity.get());
    assert_eq!(source.id, u32::from(web.id.get()));
    assert!(
        source.labels.iter().any(|l| l == "k8s:app=web"),
        "{:?}",
        source.labels
    );
    assert_eq!(flow.node_name, "test/node-a");

    // The same observer on the unix socket.
    let mut local = ObserverClient::connect(format!("unix://{}", socket.display()))
        .await
        .expect("connect over the unix socket");
    let status = local
        .server_status(ServerStatusRequest {})
        .await
        .expect("ServerStatus")
        .into_inner();
    assert!(status.seen_flows >= 1);
    assert_eq!(status.max_flows, 63);

    // Without kvstore the Peer service lists this node, at the Hubble port.
    let mut peers = PeerClient::connect(format!("http://{tcp}"))
        .await
        .expect("connect to Peer");
    let mut notifications = peers
        .notify(NotifyRequest {})
        .await
        .expect("Notify")
        .into_inner();
    let first = tokio::time::timeout(WAIT, notifications.next())
        .await
        .expect("a notification in time")
        .expect("stream open")
        .expect("notification");
    assert_eq!(first.name, "test/node-a");
    assert_eq!(first.address, format!("127.0.0.1:{}", tcp.port()));
    assert_eq!(first.r#type(), ChangeNotificationType::PeerAdded);

    // The metrics count the flows.
    let metrics = hubble.metrics_address().expect("metrics server");
    let mut conn = tokio::net::TcpStream::connect(metrics)
        .await
        .expect("connect to metrics");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("response");
    assert!(
        text.contains(
            "hubble_flows_processed_total{protocol=\"TCP\",type=\"Trace\",\
             subtype=\"from-endpoint\",verdict=\"FORWARDED\"}"
        ),
        "{text}"
    );

    // The status line the agent reports.
    let observer = agent.handles().hubble.get().expect("observer published");
    let line = hubble_server::status_message(observer);
    assert!(line.starts_with("Current/Max Flows: "), "{line}");
    assert!(line.contains("/63 ("), "{line}");

    hubble.stop().await;
    assert!(!socket.exists(), "the unix socket is removed on stop");
    agent.stop().await;
}
