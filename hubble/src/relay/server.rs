//! The relay's Observer service: every request fans out to the connected peers and the
//! answers are merged.
//!
//! Each `GetFlows` call gets its own pipeline: one task per peer stream feeding a bounded
//! channel, one merging task with the sort buffer, and a bounded channel to the client. A
//! slow client therefore only slows its own pipeline (and, through HTTP/2 flow control, the
//! nodes' streams for that client, which the nodes handle by dropping for that client alone);
//! nothing it does reaches other clients or the pool.

use std::collections::{BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::Stream;
use futures::future::join_all;
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_client::ObserverClient;
use proto::observer::observer_server::Observer;
use proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
    Tls,
};
use proto::relay::{NodeState, NodeStatusEvent};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::{Code, Request, Response, Status};

use super::pool::{PeerConnection, PeerHandle, Pool, is_connection_failure};
use super::sort::{SortBuffer, SortKey};
use super::{RelayConfig, closed};

/// At most this many names in `ServerStatusResponse.unavailable_nodes` (upstream
/// `numUnavailableNodesReportMax`): the count is exact, the list is a sample.
const UNAVAILABLE_NODES_REPORT_MAX: usize = 10;

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send + 'static>>;

/// The relay's implementation of `observer.Observer`; serve it with
/// `ObserverServer::new(relay.observer())`.
#[derive(Debug, Clone)]
pub struct RelayObserver {
    pool: Arc<Pool>,
    config: Arc<RelayConfig>,
    closing: watch::Receiver<bool>,
}

impl RelayObserver {
    pub(crate) fn new(
        pool: Arc<Pool>,
        config: Arc<RelayConfig>,
        closing: watch::Receiver<bool>,
    ) -> RelayObserver {
        RelayObserver {
            pool,
            config,
            closing,
        }
    }

    fn node_status(
        &self,
        state: NodeState,
        node_names: Vec<String>,
        message: String,
    ) -> GetFlowsResponse {
        GetFlowsResponse {
            response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
                state_change: state.into(),
                node_names,
                message,
            })),
            node_name: self.config.node_name.clone(),
            time: Some(prost_types::Timestamp::from(SystemTime::now())),
        }
    }

    /// A node's stream failed: reports the connection when that is the cause, and returns the
    /// event that tells the client.
    fn peer_failed(&self, name: &str, connection_id: u64, status: &Status) -> GetFlowsResponse {
        tracing::warn!(peer = name, %status, "flow stream from peer failed");
        if is_connection_failure(status.code()) {
            self.pool
                .report_failure(name, connection_id, status.message());
        }
        self.node_status(
            NodeState::NodeUnavailable,
            vec![name.to_owned()],
            status.message().to_owned(),
        )
    }

    /// Calls `ServerStatus` on every connected peer at once; `None` for peers that are not
    /// connected or did not answer (those are reported to the pool).
    async fn peer_statuses(&self, peers: &[PeerHandle]) -> Vec<Option<ServerStatusResponse>> {
        let timeout = self.config.dial_timeout;
        let calls = peers.iter().map(|peer| async move {
            let connection = peer.connection.as_ref()?;
            let mut client = ObserverClient::new(connection.channel.clone());
            match tokio::time::timeout(timeout, client.server_status(ServerStatusRequest {})).await
            {
                Ok(Ok(response)) => Some(response.into_inner()),
                Ok(Err(status)) => {
                    tracing::warn!(peer = %peer.name, %status, "ServerStatus failed");
                    if is_connection_failure(status.code()) {
                        self.pool
                            .report_failure(&peer.name, connection.id, status.message());
                    }
                    None
                }
                Err(_) => {
                    let error = format!("no ServerStatus answer within {timeout:?}");
                    self.pool.report_failure(&peer.name, connection.id, &error);
                    None
                }
            }
        });
        join_all(calls).await
    }
}

/// Rejects filters the nodes would reject, before any node is asked.
fn validate(request: &GetFlowsRequest) -> Result<(), Status> {
    crate::filter::FlowFilters::compile(&request.whitelist, &request.blacklist)?;
    Ok(())
}

/// Opens `GetFlows` on one peer; the node's own status (InvalidArgument for a bad filter)
/// comes back unchanged.
async fn open_stream(
    connection: &PeerConnection,
    request: GetFlowsRequest,
    timeout: std::time::Duration,
) -> Result<Streaming<GetFlowsResponse>, Status> {
    let mut client = ObserverClient::new(connection.channel.clone());
    match tokio::time::timeout(timeout, client.get_flows(request)).await {
        Ok(result) => result.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the node did not start streaming within {timeout:?}"
        ))),
    }
}

/// What a peer's forwarding task tells the merger.
#[derive(Debug)]
enum PeerMessage {
    Opened(String),
    // Boxed: a flow is large, the other messages are small.
    Response(Box<GetFlowsResponse>),
    Failed {
        name: String,
        connection_id: u64,
        status: Status,
    },
    Ended(String),
}

/// Forwards one node's stream into the merger until it ends, fails or nobody listens.
async fn forward(
    name: String,
    connection_id: u64,
    mut stream: Streaming<GetFlowsResponse>,
    inbox: mpsc::Sender<PeerMessage>,
) {
    let last = loop {
        match stream.message().await {
            Ok(Some(response)) => {
                if inbox
                    .send(PeerMessage::Response(Box::new(response)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => break PeerMessage::Ended(name),
            Err(status) => {
                break PeerMessage::Failed {
                    name,
                    connection_id,
                    status,
                };
            }
        }
    };
    // The merger may be gone already; then nobody needs to know.
    let _ = inbox.send(last).await;
}

/// The output side of one client's pipeline.
struct Output {
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
}

impl Output {
    /// False when the client went away.
    async fn send(&self, response: GetFlowsResponse) -> bool {
        self.tx.send(Ok(response)).await.is_ok()
    }

    async fn fail(&self, status: Status) {
        // The client may be gone; then there is nobody to tell.
        let _ = self.tx.send(Err(status)).await;
    }
}

/// One `GetFlows` pipeline after its peer streams are open.
struct Pipeline {
    observer: RelayObserver,
    request: GetFlowsRequest,
    output: Output,
}

impl Pipeline {
    /// `number` without `follow`: every node sends its last (or first) `number` flows; the
    /// relay keeps the `number` newest (or oldest) of all of them, in time order.
    async fn collect_last(self, streams: Vec<(String, u64, Streaming<GetFlowsResponse>)>) {
        let number = usize::try_from(self.request.number).unwrap_or(usize::MAX);
        let collect = join_all(streams.into_iter().map(
            |(name, connection_id, mut stream)| async move {
                let mut responses = Vec::new();
                loop {
                    match stream.message().await {
                        Ok(Some(response)) => responses.push(response),
                        Ok(None) => return Ok(responses),
                        Err(status) => return Err((name, connection_id, status)),
                    }
                }
            },
        ));
        let mut closing = self.observer.closing.clone();
        let results = tokio::select! {
            results = collect => results,
            () = self.output.tx.closed() => return,
            () = closed(&mut closing) => return,
        };
        let mut flows = Vec::new();
        let mut others = Vec::new();
        for result in results {
            match result {
                Ok(responses) => {
                    for response in responses {
                        if matches!(response.response_types, Some(ResponseTypes::Flow(_))) {
                            flows.push(response);
                        } else {
                            others.push(response);
                        }
                    }
                }
                Err((_, _, status)) if status.code() == Code::InvalidArgument => {
                    self.output.fail(status).await;
                    return;
                }
                Err((name, connection_id, status)) => {
                    others.push(self.observer.peer_failed(&name, connection_id, &status));
                }
            }
        }
        flows.sort_by_key(SortKey::of);
        if flows.len() > number {
            if self.request.first {
                flows.truncate(number);
            } else {
                flows.drain(..flows.len() - number);
            }
        }
        for response in others.into_iter().chain(flows) {
            if !self.output.send(response).await {
                return;
            }
        }
    }

    /// Streams every node's responses through the sort buffer; with `follow`, also picks up
    /// peers that connect later and keeps going until the client leaves.
    async fn merge(
        self,
        streams: Vec<(String, u64, Streaming<GetFlowsResponse>)>,
        capacity: usize,
    ) {
        let config = Arc::clone(&self.observer.config);
        let follow = self.request.follow;
        let (inbox_tx, mut inbox) = mpsc::channel(capacity.max(1));
        let mut tasks = JoinSet::new();
        let mut active = HashSet::new();
        for (name, connection_id, stream) in streams {
            active.insert(name.clone());
            tasks.spawn(forward(name, connection_id, stream, inbox_tx.clone()));
        }
        // Without follow, the inbox closes once every node has finished.
        let spare_sender = follow.then_some(inbox_tx);

        let mut buffer = SortBuffer::new(capacity);
        let window = config.sort_buffer_drain_timeout;
        let mut drain =
            tokio::time::interval((window / 4).max(std::time::Duration::from_millis(5)));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peer_update = tokio::time::interval(config.peer_update_interval);
        peer_update.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        peer_update.reset();
        let mut last_received = Instant::now();
        let mut closing = self.observer.closing.clone();

        loop {
            tokio::select! {
                () = self.output.tx.closed() => return,
                () = closed(&mut closing) => return,
                message = inbox.recv() => {
                    let Some(message) = message else { break };
                    match message {
                        PeerMessage::Opened(name) => {
                            let event = self.observer.node_status(NodeState::NodeConnected, vec![name], String::new());
                            if !self.output.send(event).await {
                                return;
                            }
                        }
                        PeerMessage::Response(response) => {
                            last_received = Instant::now();
                            if matches!(response.response_types, Some(ResponseTypes::NodeStatus(_))) {
                                if !self.output.send(*response).await {
                                    return;
                                }
                            } else if let Some(oldest) = buffer.push(*response)
                                && !self.output.send(oldest).await
                            {
                                return;
                            }
                        }
                        PeerMessage::Failed { status, .. } if status.code() == Code::InvalidArgument => {
                            self.output.fail(status).await;
                            return;
                        }
                        PeerMessage::Failed { name, connection_id, status } => {
                            active.remove(&name);
                            let event = self.observer.peer_failed(&name, connection_id, &status);
                            if !self.output.send(event).await {
                                return;
                            }
                        }
                        PeerMessage::Ended(name) => {
                            active.remove(&name);
                        }
                    }
                }
                _ = drain.tick() => {
                    let ready = if last_received.elapsed() >= window {
                        std::iter::from_fn(|| buffer.pop()).collect()
                    } else {
                        buffer.pop_older_than(SystemTime::now(), window)
                    };
                    for response in ready {
                        if !self.output.send(response).await {
                            return;
                        }
                    }
                }
                _ = peer_update.tick(), if spare_sender.is_some() => {
                    if let Some(sender) = &spare_sender {
                        self.join_new_peers(&mut active, &mut tasks, sender);
                    }
                }
            }
        }
        while let Some(response) = buffer.pop() {
            if !self.output.send(response).await {
                return;
            }
        }
    }

    /// Starts streaming from peers that became connected since the request began.
    fn join_new_peers(
        &self,
        active: &mut HashSet<String>,
        tasks: &mut JoinSet<()>,
        inbox: &mpsc::Sender<PeerMessage>,
    ) {
        for peer in self.observer.pool.list() {
            let Some(connection) = peer.connection else {
                continue;
            };
            if !active.insert(peer.name.clone()) {
                continue;
            }
            let request = self.request.clone();
            let timeout = self.observer.config.dial_timeout;
            let inbox = inbox.clone();
            tasks.spawn(async move {
                match open_stream(&connection, request, timeout).await {
                    Ok(stream) => {
                        if inbox
                            .send(PeerMessage::Opened(peer.name.clone()))
                            .await
                            .is_ok()
                        {
                            forward(peer.name, connection.id, stream, inbox).await;
                        }
                    }
                    Err(status) => {
                        let _ = inbox
                            .send(PeerMessage::Failed {
                                name: peer.name,
                                connection_id: connection.id,
                                status,
                            })
                            .await;
                    }
                }
            });
        }
    }
}

#[tonic::async_trait]
impl Observer for RelayObserver {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream =
        Pin<Box<dyn Stream<Item = Result<GetAgentEventsResponse, Status>> + Send + 'static>>;
    type GetDebugEventsStream =
        Pin<Box<dyn Stream<Item = Result<GetDebugEventsResponse, Status>> + Send + 'static>>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        validate(&request)?;
        let peers = self.pool.list();
        let capacity = match usize::try_from(request.number.saturating_mul(peers.len() as u64)) {
            // No bigger than needed: a full buffer is what releases responses early.
            Ok(needed) if needed > 0 => needed.min(self.config.sort_buffer_len_max),
            _ => self.config.sort_buffer_len_max,
        }
        .max(1);

        let timeout = self.config.dial_timeout;
        let opening = peers.iter().filter_map(|peer| {
            let connection = peer.connection.clone()?;
            let request = request.clone();
            Some(async move {
                let result = open_stream(&connection, request, timeout).await;
                (peer.name.clone(), connection.id, result)
            })
        });
        let opened = join_all(opening).await;

        let mut streams = Vec::new();
        let mut failures = Vec::new();
        for (name, connection_id, result) in opened {
            match result {
                Ok(stream) => streams.push((name, connection_id, stream)),
                Err(status) if status.code() == Code::InvalidArgument => return Err(status),
                Err(status) => failures.push((name, connection_id, status)),
            }
        }
        let unavailable: Vec<String> = peers
            .iter()
            .filter(|peer| peer.connection.is_none())
            .map(|peer| peer.name.clone())
            .collect();

        // Tell the client up front which nodes it will and will not hear from (upstream order).
        let mut initial = Vec::new();
        if !streams.is_empty() {
            let names = streams.iter().map(|(name, _, _)| name.clone()).collect();
            initial.push(self.node_status(NodeState::NodeConnected, names, String::new()));
        }
        if !unavailable.is_empty() {
            initial.push(self.node_status(NodeState::NodeUnavailable, unavailable, String::new()));
        }
        for (name, connection_id, status) in &failures {
            initial.push(self.peer_failed(name, *connection_id, status));
        }
        let (tx, rx) = mpsc::channel(capacity + initial.len());
        for event in initial {
            // Cannot fail: the channel is fresh and has room for every initial event.
            let _ = tx.try_send(Ok(event));
        }
        let pipeline = Pipeline {
            observer: self.clone(),
            request,
            output: Output { tx },
        };

        if pipeline.request.number > 0 && !pipeline.request.follow {
            tokio::spawn(pipeline.collect_last(streams));
        } else {
            tokio::spawn(pipeline.merge(streams, capacity));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented(
            "GetAgentEvents is not implemented by hubble-relay",
        ))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented(
            "GetDebugEvents is not implemented by hubble-relay",
        ))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let peers = self.pool.list();
        let statuses = self.peer_statuses(&peers).await;
        let nodes = peers
            .into_iter()
            .zip(statuses)
            .map(|(peer, status)| {
                let mut node = Node {
                    name: peer.name,
                    address: peer.address,
                    tls: Some(Tls {
                        enabled: false,
                        server_name: String::new(),
                    }),
                    ..Node::default()
                };
                match status {
                    Some(status) => {
                        node.set_state(NodeState::NodeConnected);
                        node.version = status.version;
                        node.uptime_ns = status.uptime_ns;
                        node.num_flows = status.num_flows;
                        node.max_flows = status.max_flows;
                        node.seen_flows = status.seen_flows;
                    }
                    None => node.set_state(NodeState::NodeUnavailable),
                }
                node
            })
            .collect();
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let request = request.into_inner();
        let timeout = self.config.dial_timeout;
        let calls = self.pool.list().into_iter().filter_map(|peer| {
            let connection = peer.connection?;
            Some(async move {
                let mut client = ObserverClient::new(connection.channel);
                match tokio::time::timeout(timeout, client.get_namespaces(request)).await {
                    Ok(Ok(response)) => response.into_inner().namespaces,
                    Ok(Err(status)) => {
                        // Partial answers beat none, as upstream.
                        tracing::warn!(peer = %peer.name, %status, "GetNamespaces failed");
                        Vec::new()
                    }
                    Err(_) => {
                        tracing::warn!(peer = %peer.name, "GetNamespaces timed out");
                        Vec::new()
                    }
                }
            })
        });
        let unique: BTreeSet<(String, String)> = join_all(calls)
            .await
            .into_iter()
            .flatten()
            .map(|namespace| (namespace.cluster, namespace.namespace))
            .collect();
        let namespaces = unique
            .into_iter()
            .map(|(cluster, namespace)| Namespace { cluster, namespace })
            .collect();
        Ok(Response::new(GetNamespacesResponse { namespaces }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let peers = self.pool.list();
        let statuses = self.peer_statuses(&peers).await;
        let mut response = ServerStatusResponse {
            version: self.config.version.clone(),
            ..ServerStatusResponse::default()
        };
        let mut connected = 0u32;
        let mut unavailable = 0u32;
        for (peer, status) in peers.iter().zip(statuses) {
            match status {
                Some(status) => {
                    connected = connected.saturating_add(1);
                    response.num_flows = response.num_flows.saturating_add(status.num_flows);
                    response.max_flows = response.max_flows.saturating_add(status.max_flows);
                    response.seen_flows = response.seen_flows.saturating_add(status.seen_flows);
                    // The oldest node's uptime: a sum of uptimes means nothing.
                    response.uptime_ns = response.uptime_ns.max(status.uptime_ns);
                    response.flows_rate += status.flows_rate;
                }
                None => {
                    unavailable = unavailable.saturating_add(1);
                    if response.unavailable_nodes.len() < UNAVAILABLE_NODES_REPORT_MAX {
                        response.unavailable_nodes.push(peer.name.clone());
                    }
                }
            }
        }
        response.num_connected_nodes = Some(connected);
        response.num_unavailable_nodes = Some(unavailable);
        Ok(Response::new(response))
    }
}
