//! The Observer and Peer services over real gRPC on loopback: flows go into the observer's
//! ring, a tonic client reads them back with upstream's request semantics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hubble::observer::{LocalObserver, ObserverConfig, ObserverService};
use hubble::peer::{PeerService, PeerSet};
use hubble::ring::Capacity;
use prost_types::Timestamp;
use proto::flow::{Endpoint, Flow, FlowFilter, LostEventSource, Verdict};
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_client::ObserverClient;
use proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNodesRequest, Namespace,
    ServerStatusRequest,
};
use proto::peer::peer_client::PeerClient;
use proto::peer::{ChangeNotificationType, NotifyRequest};
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Streaming;
use tonic::transport::{Channel, Server};

const WAIT: Duration = Duration::from_secs(10);

/// A running server; stops when dropped.
struct TestServer {
    addr: SocketAddr,
    observer: Arc<LocalObserver>,
    peers: watch::Sender<PeerSet>,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    async fn start(capacity: usize) -> TestServer {
        let observer = LocalObserver::new(
            ObserverConfig {
                node_name: "node-1".to_owned(),
                address: "10.0.0.1:4244".to_owned(),
                capacity: Capacity::new(capacity).unwrap(),
                version: "test".to_owned(),
            },
            None,
        );
        let (peers, peers_rx) = watch::channel(PeerSet::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            .add_service(ObserverService::new(Arc::clone(&observer)).into_server())
            .add_service(PeerService::new(peers_rx).into_server());
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            addr,
            observer,
            peers,
            _stop: stop,
        }
    }

    async fn client(&self) -> ObserverClient<Channel> {
        ObserverClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }
}

fn endpoint(namespace: &str, pod: &str, cluster: &str) -> Option<Endpoint> {
    Some(Endpoint {
        namespace: namespace.to_owned(),
        pod_name: pod.to_owned(),
        cluster_name: cluster.to_owned(),
        ..Endpoint::default()
    })
}

/// Flow `n` at second `n`: even ones forwarded from `ns-a/client-n`, odd ones dropped from
/// `ns-b/other-n`, all to `ns-a/server`.
fn flow(n: i64) -> Flow {
    let (namespace, pod, verdict) = if n % 2 == 0 {
        ("ns-a", format!("client-{n}"), Verdict::Forwarded)
    } else {
        ("ns-b", format!("other-{n}"), Verdict::Dropped)
    };
    let mut flow = Flow {
        time: Some(Timestamp {
            seconds: n,
            nanos: 0,
        }),
        node_name: "node-1".to_owned(),
        source: endpoint(namespace, &pod, "c1"),
        destination: endpoint("ns-a", "server", "c1"),
        ..Flow::default()
    };
    flow.set_verdict(verdict);
    flow
}

fn seconds(responses: &[GetFlowsResponse]) -> Vec<i64> {
    responses
        .iter()
        .filter_map(|r| match &r.response_types {
            Some(ResponseTypes::Flow(f)) => f.time.as_ref().map(|t| t.seconds),
            _ => None,
        })
        .collect()
}

async fn collect(client: &mut ObserverClient<Channel>, request: GetFlowsRequest) -> Vec<i64> {
    let stream = client.get_flows(request).await.unwrap().into_inner();
    let responses: Vec<GetFlowsResponse> =
        tokio::time::timeout(WAIT, stream.map(|r| r.unwrap()).collect())
            .await
            .expect("a non-follow GetFlows must end");
    seconds(&responses)
}

async fn next(stream: &mut Streaming<GetFlowsResponse>) -> GetFlowsResponse {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no response in time")
        .expect("stream ended")
        .expect("stream failed")
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

#[tokio::test]
async fn number_first_since_until() {
    let server = TestServer::start(15).await;
    server.observer.record_flows((1..=10).map(flow));
    let mut client = server.client().await;

    let last3 = GetFlowsRequest {
        number: 3,
        ..Default::default()
    };
    assert_eq!(collect(&mut client, last3).await, vec![8, 9, 10]);
    let first3 = GetFlowsRequest {
        number: 3,
        first: true,
        ..Default::default()
    };
    assert_eq!(collect(&mut client, first3).await, vec![1, 2, 3]);
    let all = GetFlowsRequest::default();
    assert_eq!(
        collect(&mut client, all).await,
        (1..=10).collect::<Vec<_>>()
    );
    let range = GetFlowsRequest {
        since: at(4),
        until: at(6),
        ..Default::default()
    };
    assert_eq!(collect(&mut client, range).await, vec![4, 5, 6]);
    // `since` sets the start, `number` still limits how many.
    let since_limited = GetFlowsRequest {
        since: at(4),
        number: 2,
        ..Default::default()
    };
    assert_eq!(collect(&mut client, since_limited).await, vec![4, 5]);

    // After a wrap-around only the newest 15 are there.
    server.observer.record_flows((11..=30).map(flow));
    let first2 = GetFlowsRequest {
        number: 2,
        first: true,
        ..Default::default()
    };
    assert_eq!(collect(&mut client, first2).await, vec![16, 17]);
}

#[tokio::test]
async fn filters_narrow_and_bad_filters_are_invalid_arguments() {
    let server = TestServer::start(63).await;
    server.observer.record_flows((1..=10).map(flow));
    let mut client = server.client().await;

    let dropped = GetFlowsRequest {
        whitelist: vec![FlowFilter {
            verdict: vec![Verdict::Dropped as i32],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(collect(&mut client, dropped).await, vec![1, 3, 5, 7, 9]);

    // The last 2 of the matching flows, not of all flows.
    let last_from_ns_a = GetFlowsRequest {
        number: 2,
        whitelist: vec![FlowFilter {
            source_pod: vec!["ns-a/".to_owned()],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(collect(&mut client, last_from_ns_a).await, vec![8, 10]);

    let not_client_4 = GetFlowsRequest {
        whitelist: vec![FlowFilter {
            source_pod: vec!["ns-a/".to_owned()],
            ..Default::default()
        }],
        blacklist: vec![FlowFilter {
            source_pod: vec!["ns-a/client-4".to_owned()],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(collect(&mut client, not_client_4).await, vec![2, 6, 8, 10]);

    let bad = GetFlowsRequest {
        whitelist: vec![FlowFilter {
            source_ip: vec!["not-an-ip".to_owned()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = client.get_flows(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("not-an-ip"),
        "{}",
        status.message()
    );

    let first_and_follow = GetFlowsRequest {
        first: true,
        follow: true,
        ..Default::default()
    };
    let status = client.get_flows(first_and_follow).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn follow_streams_new_flows_after_the_last_n() {
    let server = TestServer::start(63).await;
    server.observer.record_flows((1..=5).map(flow));
    let mut client = server.client().await;

    let mut stream = client
        .get_flows(GetFlowsRequest {
            number: 2,
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next(&mut stream).await);
    }
    assert_eq!(seconds(&got), vec![4, 5]);
    server.observer.record_flows((6..=8).map(flow));
    for _ in 0..3 {
        got.push(next(&mut stream).await);
    }
    assert_eq!(seconds(&got), vec![4, 5, 6, 7, 8]);

    // A bare follow sees only what comes after it, filtered.
    let mut only_new = client
        .get_flows(GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Forwarded as i32],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    server.observer.record_flows((9..=12).map(flow));
    let a = next(&mut only_new).await;
    let b = next(&mut only_new).await;
    assert_eq!(seconds(&[a, b]), vec![10, 12]);
}

#[tokio::test]
async fn lagging_follower_gets_lost_events_and_datapath_losses_stream_too() {
    let server = TestServer::start(7).await;
    let mut client = server.client().await;
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // One batch of 1000 into a ring of 7: the follower cannot have read any of the first 993.
    server.observer.record_flows((1..=1000).map(flow));
    let lost = next(&mut stream).await;
    match lost.response_types {
        Some(ResponseTypes::LostEvents(event)) => {
            assert_eq!(event.source(), LostEventSource::HubbleRingBuffer);
            assert_eq!(event.num_events_lost, 993);
        }
        other => panic!("expected lost events, got {other:?}"),
    }
    assert_eq!(lost.node_name, "node-1");
    let mut rest = Vec::new();
    for _ in 0..7 {
        rest.push(next(&mut stream).await);
    }
    assert_eq!(seconds(&rest), (994..=1000).collect::<Vec<_>>());

    // Losses of the datapath reach every client, filters or not.
    let mut filtered = client
        .get_flows(GetFlowsRequest {
            follow: true,
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    server
        .observer
        .record_lost(LostEventSource::PerfEventRingBuffer, 42);
    for stream in [&mut stream, &mut filtered] {
        match next(stream).await.response_types {
            Some(ResponseTypes::LostEvents(event)) => {
                assert_eq!(event.source(), LostEventSource::PerfEventRingBuffer);
                assert_eq!(event.num_events_lost, 42);
            }
            other => panic!("expected lost events, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn status_nodes_and_namespaces() {
    let server = TestServer::start(7).await;
    server.observer.record_flows((1..=10).map(flow));
    let mut client = server.client().await;

    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.num_flows, 7);
    assert_eq!(status.max_flows, 7);
    assert_eq!(status.seen_flows, 10);
    assert_eq!(status.version, "test");
    assert!(status.uptime_ns > 0);

    let nodes = client
        .get_nodes(GetNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "node-1");
    assert_eq!(nodes[0].address, "10.0.0.1:4244");
    assert_eq!(nodes[0].num_flows, 7);

    let namespaces = client
        .get_namespaces(GetNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    let ns = |name: &str| Namespace {
        cluster: "c1".to_owned(),
        namespace: name.to_owned(),
    };
    assert_eq!(namespaces, vec![ns("ns-a"), ns("ns-b")]);

    let status = client
        .get_agent_events(proto::observer::GetAgentEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn peer_notify_lists_nodes_then_changes() {
    let server = TestServer::start(7).await;
    server.peers.send_replace(
        [
            ("node-1".to_owned(), "10.0.0.1:4244".parse().unwrap()),
            ("c2/node-2".to_owned(), "10.0.0.2:4244".parse().unwrap()),
        ]
        .into_iter()
        .collect(),
    );
    let mut client = PeerClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let mut stream = client.notify(NotifyRequest {}).await.unwrap().into_inner();
    let mut next = async || {
        let change = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("no notification in time")
            .expect("stream ended")
            .expect("stream failed");
        (change.name.clone(), change.address.clone(), change.r#type())
    };
    let mut initial = vec![next().await, next().await];
    initial.sort();
    assert_eq!(
        initial,
        vec![
            (
                "c2/node-2".to_owned(),
                "10.0.0.2:4244".to_owned(),
                ChangeNotificationType::PeerAdded
            ),
            (
                "node-1".to_owned(),
                "10.0.0.1:4244".to_owned(),
                ChangeNotificationType::PeerAdded
            ),
        ]
    );
    server.peers.send_modify(|peers| {
        peers.remove("c2/node-2");
        peers.insert("node-1".to_owned(), "10.0.0.9:4244".parse().unwrap());
    });
    assert_eq!(
        next().await,
        (
            "c2/node-2".to_owned(),
            "10.0.0.2:4244".to_owned(),
            ChangeNotificationType::PeerDeleted
        )
    );
    assert_eq!(
        next().await,
        (
            "node-1".to_owned(),
            "10.0.0.9:4244".to_owned(),
            ChangeNotificationType::PeerUpdated
        )
    );
}
