//! hubble-relay against in-process fake Hubble nodes on loopback.
//!
//! Each fake node is a real tonic server (Observer with canned flows whose timestamps
//! interleave across nodes, plus live flows pushed by the test) running on its own thread and
//! runtime, so that stopping it closes every connection at once, as a crashed agent would. A
//! fake Peer service announces the nodes. The relay runs from the library with short timeouts.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use hubble::relay::{Relay, RelayConfig};
use proto::flow::{Flow, FlowFilter};
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_client::ObserverClient;
use proto::observer::observer_server::{Observer, ObserverServer};
use proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, ServerStatusRequest, ServerStatusResponse,
};
use proto::peer::peer_server::{Peer, PeerServer};
use proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use proto::relay::NodeState;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::{BroadcastStream, TcpListenerStream};
use tonic::codec::Streaming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(15);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The flows of the past all start here, so the relay's drain window never holds them back.
fn base_time() -> i64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    i64::try_from(now).unwrap_or(i64::MAX) - 3600
}

fn flow(node: &str, seconds: i64) -> Flow {
    Flow {
        time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        node_name: node.to_owned(),
        ..Flow::default()
    }
}

/// State of a fake node that survives its restarts.
#[derive(Debug)]
struct NodeData {
    name: String,
    canned: Vec<Flow>,
    live: broadcast::Sender<Flow>,
    seen: AtomicU64,
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Clone)]
struct FakeObserver(Arc<NodeData>);

fn response(flow: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow)),
    }
}

#[tonic::async_trait]
impl Observer for FakeObserver {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        let rejected = request
            .whitelist
            .iter()
            .flat_map(|filter| &filter.source_pod)
            .any(|pod| pod.contains("reject-me"));
        if rejected {
            return Err(Status::invalid_argument("fake node rejects pod reject-me"));
        }
        // Subscribe before taking the backlog, so no live flow falls in between.
        let live = BroadcastStream::new(self.0.live.subscribe())
            .filter_map(|flow| async move { flow.ok().map(|flow| Ok(response(flow))) });
        let number = usize::try_from(request.number).unwrap_or(usize::MAX);
        let backlog: Vec<Flow> = match (number, request.first, request.follow) {
            (0, _, true) => Vec::new(),
            (0, _, false) => self.0.canned.clone(),
            (n, true, _) => self.0.canned.iter().take(n).cloned().collect(),
            (n, false, _) => {
                let skip = self.0.canned.len().saturating_sub(n);
                self.0.canned.iter().skip(skip).cloned().collect()
            }
        };
        let backlog = futures::stream::iter(backlog.into_iter().map(|flow| Ok(response(flow))));
        if request.follow {
            Ok(Response::new(Box::pin(backlog.chain(live))))
        } else {
            Ok(Response::new(Box::pin(backlog)))
        }
    }

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        Err(Status::unimplemented("fake node"))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        Ok(Response::new(GetNamespacesResponse {
            namespaces: self.0.namespaces.clone(),
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: self.0.canned.len() as u64,
            max_flows: 4095,
            seen_flows: self.0.seen.load(Ordering::Relaxed),
            uptime_ns: 1_000,
            version: format!("fake-node/{}", self.0.name),
            ..ServerStatusResponse::default()
        }))
    }
}

/// Node number `index` of `count`: its flow k is at base + k * count + index seconds, so the
/// nodes' flows interleave.
fn node_data(name: &str, index: i64, count: i64, flows: i64) -> Arc<NodeData> {
    let base = base_time();
    let canned = (0..flows)
        .map(|k| flow(name, base + k * count + index))
        .collect();
    Arc::new(NodeData {
        name: name.to_owned(),
        canned,
        live: broadcast::channel(4096).0,
        seen: AtomicU64::new(u64::try_from(flows).unwrap_or(0)),
        namespaces: vec![
            Namespace {
                cluster: String::new(),
                namespace: "default".to_owned(),
            },
            Namespace {
                cluster: String::new(),
                namespace: format!("ns-{name}"),
            },
        ],
    })
}

/// A fake Hubble server on its own thread and runtime.
#[derive(Debug)]
struct FakeNode {
    data: Arc<NodeData>,
    address: SocketAddr,
    running: Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl FakeNode {
    async fn start(name: &str, index: i64, count: i64, flows: i64) -> FakeNode {
        let data = node_data(name, index, count, flows);
        let unbound: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (address, running) = run_node(Arc::clone(&data), unbound).await;
        FakeNode {
            data,
            address,
            running: Some(running),
        }
    }

    /// Kills the server: every connection to it closes.
    async fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            assert!(matches!(joined, Ok(Ok(()))), "fake node thread failed");
        }
    }

    /// Starts the server again on the same address.
    async fn restart(&mut self) {
        let (address, running) = run_node(Arc::clone(&self.data), self.address).await;
        assert_eq!(address, self.address);
        self.running = Some(running);
    }

    fn emit(&self, seconds: i64) {
        self.data.seen.fetch_add(1, Ordering::Relaxed);
        // No subscriber yet is fine: the flow is simply not seen, as on a real node.
        let _ = self.data.live.send(flow(&self.data.name, seconds));
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

async fn run_node(
    data: Arc<NodeData>,
    address: SocketAddr,
) -> (
    SocketAddr,
    (oneshot::Sender<()>, std::thread::JoinHandle<()>),
) {
    let (bound_tx, bound_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = bound_tx.send(Err(error));
                return;
            }
        };
        runtime.block_on(async move {
            let listener = match bind_reusable(address) {
                Ok(listener) => listener,
                Err(error) => {
                    let _ = bound_tx.send(Err(error));
                    return;
                }
            };
            let _ = bound_tx.send(listener.local_addr());
            let server = Server::builder()
                .add_service(ObserverServer::new(FakeObserver(data)))
                .serve_with_incoming(TcpListenerStream::new(listener));
            tokio::select! {
                _ = server => {}
                _ = stop_rx => {}
            }
        });
        // Dropping the runtime drops every connection task with it.
        drop(runtime);
    });
    let bound = bound_rx
        .await
        .map_err(|_| "node thread ended early".to_owned());
    match bound {
        Ok(Ok(address)) => (address, (stop_tx, thread)),
        Ok(Err(error)) => panic!("fake node cannot listen: {error}"),
        Err(error) => panic!("{error}"),
    }
}

fn bind_reusable(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}

/// A Peer service announcing a fixed set of nodes, then staying open.
#[derive(Debug, Clone)]
struct FakePeers(Vec<(String, String)>);

#[tonic::async_trait]
impl Peer for FakePeers {
    type NotifyStream = BoxStream<ChangeNotification>;

    async fn notify(
        &self,
        _request: Request<NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let added = self.0.iter().map(|(name, address)| {
            let mut notification = ChangeNotification {
                name: name.clone(),
                address: address.clone(),
                ..ChangeNotification::default()
            };
            notification.set_type(ChangeNotificationType::PeerAdded);
            Ok(notification)
        });
        let added: Vec<_> = added.collect();
        Ok(Response::new(Box::pin(
            futures::stream::iter(added).chain(futures::stream::pending()),
        )))
    }
}

/// Serves `peers` on a fresh port until the returned sender is dropped.
async fn start_peer_service(peers: Vec<(String, String)>) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let server = Server::builder()
            .add_service(PeerServer::new(FakePeers(peers)))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::select! {
            _ = server => {}
            _ = stop_rx => {}
        }
    });
    (address, stop_tx)
}

fn test_config(peer_services: Vec<String>) -> RelayConfig {
    RelayConfig {
        peer_services,
        sort_buffer_drain_timeout: Duration::from_millis(100),
        dial_timeout: Duration::from_secs(2),
        retry_timeout: Duration::from_millis(100),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        health_check_interval: Duration::from_millis(100),
        peer_update_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

/// A relay serving on a fresh port, stopped on drop.
struct RunningRelay {
    relay: Arc<Relay>,
    client: ObserverClient<Channel>,
    _stop: oneshot::Sender<()>,
    _peer_services: Vec<oneshot::Sender<()>>,
}

async fn start_relay(clusters: Vec<Vec<(String, String)>>) -> RunningRelay {
    let mut peer_addresses = Vec::new();
    let mut peer_services = Vec::new();
    for peers in clusters {
        let (address, stop) = start_peer_service(peers).await;
        peer_addresses.push(address.to_string());
        peer_services.push(stop);
    }
    let relay = Arc::new(
        Relay::start(test_config(peer_addresses)).unwrap_or_else(|e| panic!("relay start: {e}")),
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = Arc::clone(&relay);
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = serving.serve(listener, shutdown).await {
            panic!("relay server failed: {error}");
        }
    });
    let client = ObserverClient::connect(format!("http://{address}"))
        .await
        .unwrap_or_else(|e| panic!("connect to relay: {e}"));
    RunningRelay {
        relay,
        client,
        _stop: stop,
        _peer_services: peer_services,
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.relay.stop();
    }
}

fn peer(node: &FakeNode) -> (String, String) {
    (node.data.name.clone(), node.address.to_string())
}

/// Polls `check` until it returns `Some`, failing the test after the deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node_states(client: &mut ObserverClient<Channel>) -> Vec<(String, NodeState)> {
    let nodes = client
        .get_nodes(GetNodesRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetNodes: {e}"))
        .into_inner()
        .nodes;
    nodes
        .into_iter()
        .map(|node| (node.name.clone(), node.state()))
        .collect()
}

async fn wait_for_states(client: &ObserverClient<Channel>, expected: &[(&str, NodeState)]) {
    let expected: Vec<(String, NodeState)> = expected
        .iter()
        .map(|(name, state)| ((*name).to_owned(), *state))
        .collect();
    eventually(&format!("node states {expected:?}"), || {
        let mut client = client.clone();
        let expected = expected.clone();
        async move { (node_states(&mut client).await == expected).then_some(()) }
    })
    .await;
}

/// The next response within the deadline.
async fn next(stream: &mut Streaming<GetFlowsResponse>) -> GetFlowsResponse {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(Ok(Some(response))) => response,
        Ok(Ok(None)) => panic!("the flow stream ended"),
        Ok(Err(status)) => panic!("the flow stream failed: {status}"),
        Err(_) => panic!("no response within {DEADLINE:?}"),
    }
}

/// Reads until a response satisfies `want`, returning it.
async fn next_matching(
    stream: &mut Streaming<GetFlowsResponse>,
    what: &str,
    want: impl Fn(&GetFlowsResponse) -> bool,
) -> GetFlowsResponse {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        let response = next(stream).await;
        if want(&response) {
            return response;
        }
    }
}

fn node_status(response: &GetFlowsResponse) -> Option<(NodeState, Vec<String>)> {
    match &response.response_types {
        Some(ResponseTypes::NodeStatus(event)) => {
            Some((event.state_change(), event.node_names.clone()))
        }
        _ => None,
    }
}

fn flow_of(response: &GetFlowsResponse) -> Option<(String, i64)> {
    match &response.response_types {
        Some(ResponseTypes::Flow(flow)) => Some((
            flow.node_name.clone(),
            flow.time.as_ref().map_or(i64::MIN, |time| time.seconds),
        )),
        _ => None,
    }
}

/// Every response of a stream that ends.
async fn collect(
    client: &mut ObserverClient<Channel>,
    request: GetFlowsRequest,
) -> Vec<GetFlowsResponse> {
    let mut stream = client
        .get_flows(request)
        .await
        .unwrap_or_else(|e| panic!("GetFlows: {e}"))
        .into_inner();
    let mut all = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Ok(Ok(Some(response))) => all.push(response),
            Ok(Ok(None)) => return all,
            Ok(Err(status)) => panic!("GetFlows stream failed: {status}"),
            Err(_) => panic!("GetFlows did not end within {DEADLINE:?}"),
        }
    }
}

fn flows_of(responses: &[GetFlowsResponse]) -> Vec<(String, i64)> {
    responses.iter().filter_map(flow_of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_returns_the_newest_flows_of_all_nodes_in_time_order() {
    let nodes = [
        FakeNode::start("node-a", 0, 3, 4).await,
        FakeNode::start("node-b", 1, 3, 4).await,
        FakeNode::start("node-c", 2, 3, 4).await,
    ];
    let mut relay = start_relay(vec![nodes.iter().map(peer).collect()]).await;
    wait_for_states(
        &relay.client,
        &[
            ("node-a", NodeState::NodeConnected),
            ("node-b", NodeState::NodeConnected),
            ("node-c", NodeState::NodeConnected),
        ],
    )
    .await;
    let mut all_times: Vec<(String, i64)> = nodes
        .iter()
        .flat_map(|node| node.data.canned.iter())
        .map(|f| {
            (
                f.node_name.clone(),
                f.time.as_ref().map_or(0, |t| t.seconds),
            )
        })
        .collect();
    all_times.sort_by_key(|(_, seconds)| *seconds);

    let last5 = collect(
        &mut relay.client,
        GetFlowsRequest {
            number: 5,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    let connected = last5.iter().find_map(node_status);
    assert_eq!(
        connected,
        Some((
            NodeState::NodeConnected,
            vec![
                "node-a".to_owned(),
                "node-b".to_owned(),
                "node-c".to_owned()
            ]
        ))
    );
    assert_eq!(flows_of(&last5), all_times[all_times.len() - 5..].to_vec());

    let first3 = collect(
        &mut relay.client,
        GetFlowsRequest {
            number: 3,
            first: true,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    assert_eq!(flows_of(&first3), all_times[..3].to_vec());

    let everything = collect(
        &mut relay.client,
        GetFlowsRequest {
            number: 100,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    assert_eq!(flows_of(&everything), all_times);

    // Without number, the stream goes through the sort buffer and still comes out in order.
    let unbounded = collect(&mut relay.client, GetFlowsRequest::default()).await;
    assert_eq!(flows_of(&unbounded), all_times);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_flows_from_every_node() {
    let nodes = [
        FakeNode::start("node-a", 0, 2, 2).await,
        FakeNode::start("node-b", 1, 2, 2).await,
    ];
    let mut relay = start_relay(vec![nodes.iter().map(peer).collect()]).await;
    wait_for_states(
        &relay.client,
        &[
            ("node-a", NodeState::NodeConnected),
            ("node-b", NodeState::NodeConnected),
        ],
    )
    .await;
    let mut stream = relay
        .client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        })
        .await
        .unwrap_or_else(|e| panic!("GetFlows: {e}"))
        .into_inner();
    // The connected event comes after the node streams are open, so nothing emitted is lost.
    let first = next(&mut stream).await;
    assert_eq!(
        node_status(&first),
        Some((
            NodeState::NodeConnected,
            vec!["node-a".to_owned(), "node-b".to_owned()]
        ))
    );
    let now = base_time() + 3600;
    for round in 0..3 {
        nodes[0].emit(now + round * 2);
        nodes[1].emit(now + round * 2 + 1);
    }
    let mut received = Vec::new();
    while received.len() < 6 {
        let response = next(&mut stream).await;
        if let Some(flow) = flow_of(&response) {
            received.push(flow);
        }
    }
    let expected: Vec<(String, i64)> = (0..3)
        .flat_map(|round| {
            [
                ("node-a".to_owned(), now + round * 2),
                ("node-b".to_owned(), now + round * 2 + 1),
            ]
        })
        .collect();
    assert_eq!(received, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_is_reported_unavailable_and_reconnects() {
    let node_a = FakeNode::start("node-a", 0, 2, 2).await;
    let mut node_b = FakeNode::start("node-b", 1, 2, 2).await;
    let mut relay = start_relay(vec![vec![peer(&node_a), peer(&node_b)]]).await;
    wait_for_states(
        &relay.client,
        &[
            ("node-a", NodeState::NodeConnected),
            ("node-b", NodeState::NodeConnected),
        ],
    )
    .await;
    let mut stream = relay
        .client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        })
        .await
        .unwrap_or_else(|e| panic!("GetFlows: {e}"))
        .into_inner();
    next_matching(&mut stream, "the connected event", |r| {
        node_status(r).is_some_and(|(state, _)| state == NodeState::NodeConnected)
    })
    .await;

    node_b.stop().await;
    let unavailable = next_matching(&mut stream, "node-b unavailable", |r| {
        node_status(r).is_some()
    })
    .await;
    assert_eq!(
        node_status(&unavailable),
        Some((NodeState::NodeUnavailable, vec!["node-b".to_owned()]))
    );
    wait_for_states(
        &relay.client,
        &[
            ("node-a", NodeState::NodeConnected),
            ("node-b", NodeState::NodeUnavailable),
        ],
    )
    .await;
    let status = relay
        .client
        .server_status(ServerStatusRequest {})
        .await
        .unwrap_or_else(|e| panic!("ServerStatus: {e}"))
        .into_inner();
    assert_eq!(status.num_connected_nodes, Some(1));
    assert_eq!(status.num_unavailable_nodes, Some(1));
    assert_eq!(status.unavailable_nodes, vec!["node-b".to_owned()]);
    assert_eq!(status.num_flows, 2);

    // A new request is told about the missing node up front and still gets node-a's flows.
    let responses = collect(
        &mut relay.client,
        GetFlowsRequest {
            number: 10,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    assert!(
        responses
            .iter()
            .filter_map(node_status)
            .any(|status| status == (NodeState::NodeUnavailable, vec!["node-b".to_owned()])),
        "no NODE_UNAVAILABLE event for node-b in {responses:?}"
    );
    let nodes: BTreeSet<String> = flows_of(&responses)
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    assert_eq!(nodes, BTreeSet::from(["node-a".to_owned()]));

    // The open stream keeps delivering from the node that is still up.
    let now = base_time() + 3600;
    node_a.emit(now);
    let from_a = next_matching(&mut stream, "a flow from node-a", |r| flow_of(r).is_some()).await;
    assert_eq!(flow_of(&from_a), Some(("node-a".to_owned(), now)));

    node_b.restart().await;
    wait_for_states(
        &relay.client,
        &[
            ("node-a", NodeState::NodeConnected),
            ("node-b", NodeState::NodeConnected),
        ],
    )
    .await;
    // The follow stream picks the node up again by itself.
    let back = next_matching(&mut stream, "node-b connected again", |r| {
        node_status(r).is_some()
    })
    .await;
    assert_eq!(
        node_status(&back),
        Some((NodeState::NodeConnected, vec!["node-b".to_owned()]))
    );
    node_b.emit(now + 1);
    let from_b = next_matching(&mut stream, "a flow from node-b", |r| flow_of(r).is_some()).await;
    assert_eq!(flow_of(&from_b), Some(("node-b".to_owned(), now + 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filters_give_invalid_argument() {
    let nodes = [
        FakeNode::start("node-a", 0, 2, 2).await,
        FakeNode::start("node-b", 1, 2, 2).await,
    ];
    let mut relay = start_relay(vec![nodes.iter().map(peer).collect()]).await;
    wait_for_states(
        &relay.client,
        &[
            ("node-a", NodeState::NodeConnected),
            ("node-b", NodeState::NodeConnected),
        ],
    )
    .await;

    // Rejected by the nodes: their status reaches the client unchanged, with or without follow.
    for follow in [false, true] {
        let request = GetFlowsRequest {
            follow,
            number: 10,
            whitelist: vec![FlowFilter {
                source_pod: vec!["default/reject-me".to_owned()],
                ..FlowFilter::default()
            }],
            ..GetFlowsRequest::default()
        };
        let Err(status) = relay.client.get_flows(request).await else {
            panic!("a filter the nodes reject was accepted (follow: {follow})");
        };
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "fake node rejects pod reject-me");
    }

    // Rejected by the relay before any node is asked.
    let request = GetFlowsRequest {
        whitelist: vec![FlowFilter {
            source_ip: vec!["not-an-ip".to_owned()],
            ..FlowFilter::default()
        }],
        ..GetFlowsRequest::default()
    };
    let Err(status) = relay.client.get_flows(request).await else {
        panic!("an invalid IP filter was accepted");
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("source_ip"),
        "{}",
        status.message()
    );

    // A rejected request changes nothing about the nodes' state.
    assert_eq!(
        node_states(&mut relay.client).await,
        vec![
            ("node-a".to_owned(), NodeState::NodeConnected),
            ("node-b".to_owned(), NodeState::NodeConnected)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_status_and_namespaces_cover_every_node() {
    let nodes = [
        FakeNode::start("node-a", 0, 2, 3).await,
        FakeNode::start("node-b", 1, 2, 5).await,
    ];
    // A peer nobody listens on: the port was free a moment ago.
    let ghost_address = {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
    };
    let mut peers: Vec<(String, String)> = nodes.iter().map(peer).collect();
    peers.push(("node-ghost".to_owned(), ghost_address.to_string()));
    let mut relay = start_relay(vec![peers]).await;
    wait_for_states(
        &relay.client,
        &[
            ("node-a", NodeState::NodeConnected),
            ("node-b", NodeState::NodeConnected),
            ("node-ghost", NodeState::NodeUnavailable),
        ],
    )
    .await;

    let listed = relay
        .client
        .get_nodes(GetNodesRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetNodes: {e}"))
        .into_inner()
        .nodes;
    let summary: Vec<(String, String, String, u64)> = listed
        .iter()
        .map(|node| {
            (
                node.name.clone(),
                node.address.clone(),
                node.version.clone(),
                node.num_flows,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "node-a".to_owned(),
                nodes[0].address.to_string(),
                "fake-node/node-a".to_owned(),
                3
            ),
            (
                "node-b".to_owned(),
                nodes[1].address.to_string(),
                "fake-node/node-b".to_owned(),
                5
            ),
            (
                "node-ghost".to_owned(),
                ghost_address.to_string(),
                String::new(),
                0
            ),
        ]
    );

    let status = relay
        .client
        .server_status(ServerStatusRequest {})
        .await
        .unwrap_or_else(|e| panic!("ServerStatus: {e}"))
        .into_inner();
    assert_eq!(status.num_flows, 8);
    assert_eq!(status.max_flows, 2 * 4095);
    assert_eq!(status.seen_flows, 8);
    assert_eq!(status.num_connected_nodes, Some(2));
    assert_eq!(status.num_unavailable_nodes, Some(1));
    assert_eq!(status.unavailable_nodes, vec!["node-ghost".to_owned()]);
    assert!(
        status.version.starts_with("hubble-relay"),
        "{}",
        status.version
    );

    let namespaces: Vec<String> = relay
        .client
        .get_namespaces(GetNamespacesRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetNamespaces: {e}"))
        .into_inner()
        .namespaces
        .into_iter()
        .map(|namespace| namespace.namespace)
        .collect();
    assert_eq!(namespaces, vec!["default", "ns-node-a", "ns-node-b"]);

    // GetFlows names the unreachable node before any flow.
    let responses = collect(
        &mut relay.client,
        GetFlowsRequest {
            number: 2,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    let events: Vec<(NodeState, Vec<String>)> = responses.iter().filter_map(node_status).collect();
    assert!(
        events.contains(&(NodeState::NodeUnavailable, vec!["node-ghost".to_owned()])),
        "{events:?}"
    );
    assert_eq!(flows_of(&responses).len(), 2);

    let unimplemented = relay
        .client
        .get_agent_events(GetAgentEventsRequest::default())
        .await;
    assert!(matches!(unimplemented, Err(status) if status.code() == Code::Unimplemented));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_serves_several_clusters() {
    let east = FakeNode::start("east/node-1", 0, 2, 2).await;
    let west = FakeNode::start("west/node-1", 1, 2, 2).await;
    let mut relay = start_relay(vec![vec![peer(&east)], vec![peer(&west)]]).await;
    wait_for_states(
        &relay.client,
        &[
            ("east/node-1", NodeState::NodeConnected),
            ("west/node-1", NodeState::NodeConnected),
        ],
    )
    .await;
    let responses = collect(
        &mut relay.client,
        GetFlowsRequest {
            number: 4,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    let nodes: Vec<String> = flows_of(&responses)
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    assert_eq!(
        nodes,
        vec!["east/node-1", "west/node-1", "east/node-1", "west/node-1"]
    );
    let peers: Vec<String> = relay
        .relay
        .peers()
        .into_iter()
        .map(|peer| peer.name)
        .collect();
    assert_eq!(peers, vec!["east/node-1", "west/node-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_does_not_hold_up_others() {
    let node = FakeNode::start("node-a", 0, 1, 1).await;
    let relay = start_relay(vec![vec![peer(&node)]]).await;
    wait_for_states(&relay.client, &[("node-a", NodeState::NodeConnected)]).await;
    let follow = GetFlowsRequest {
        follow: true,
        ..GetFlowsRequest::default()
    };
    let mut stalled_client = relay.client.clone();
    let mut stalled = stalled_client
        .get_flows(follow.clone())
        .await
        .unwrap_or_else(|e| panic!("GetFlows: {e}"))
        .into_inner();
    next(&mut stalled).await;
    let mut reading_client = relay.client.clone();
    let mut reading = reading_client
        .get_flows(follow)
        .await
        .unwrap_or_else(|e| panic!("GetFlows: {e}"))
        .into_inner();
    next(&mut reading).await;

    // Far more than every buffer between the relay and the stalled client can hold.
    let count = 3000;
    let now = base_time() + 3600;
    let mut received = 0;
    for i in 0..count {
        node.emit(now + i);
        // Pace the node so the reader's own broadcast subscription never lags.
        if i % 500 == 499 {
            while received < i - 100 {
                if flow_of(&next(&mut reading).await).is_some() {
                    received += 1;
                }
            }
        }
    }
    while received < count {
        if flow_of(&next(&mut reading).await).is_some() {
            received += 1;
        }
    }
    assert_eq!(received, count);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_unix_sockets_are_reached() {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let dir =
        std::env::temp_dir().join(format!("hubble-relay-test-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let dir = RemoveOnDrop(dir);
    let path = dir.0.join("hubble.sock");
    let listener = tokio::net::UnixListener::bind(&path)
        .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    let data = node_data("node-unix", 0, 1, 3);
    let server = tokio::spawn(
        Server::builder()
            .add_service(ObserverServer::new(FakeObserver(Arc::clone(&data))))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let mut relay = start_relay(vec![vec![(
        "node-unix".to_owned(),
        format!("unix://{}", path.display()),
    )]])
    .await;
    wait_for_states(&relay.client, &[("node-unix", NodeState::NodeConnected)]).await;
    let responses = collect(
        &mut relay.client,
        GetFlowsRequest {
            number: 3,
            ..GetFlowsRequest::default()
        },
    )
    .await;
    let expected: Vec<(String, i64)> = data
        .canned
        .iter()
        .map(|f| {
            (
                "node-unix".to_owned(),
                f.time.as_ref().map_or(0, |t| t.seconds),
            )
        })
        .collect();
    assert_eq!(flows_of(&responses), expected);
    server.abort();
}

/// Removes a test's temporary directory however the test ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Best effort: a leftover directory in the temp dir harms nobody.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
