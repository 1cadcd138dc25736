//! The agent's Observer service: this node's flows from the ring buffer, over gRPC.
//!
//! [`LocalObserver`] owns the flow ring and what the server reports about it (flows seen,
//! uptime, rate); the agent's event reader records parsed flows and datapath losses into it.
//! [`ObserverService`] implements `observer.Observer` on top of it:
//!
//! - `GetFlows` with upstream's request semantics: `first` reads from the oldest stored flow,
//!   `number` alone the newest `number` matching flows, `since` starts at the first flow at or
//!   after it (and takes precedence over `number` for the start), `until` ends the stream at
//!   the first flow after it, `follow` keeps streaming new flows (alone: only new ones);
//!   `first` with `follow` is refused. Filters are compiled by [`FlowFilters::compile`]; a bad
//!   filter is `InvalidArgument` before anything is streamed. Lost events are never filtered
//!   and never count towards `number`.
//! - A client slower than the datapath never holds the writer back: its stream reads the ring
//!   through a [`Follower`] polled only as fast as the client takes responses, and when the ring
//!   overwrote what it had not read yet it gets a `lost_events` response (source
//!   `HUBBLE_RING_BUFFER`) with the count, and continues with the oldest stored flow.
//! - `GetNodes` answers this node, `GetNamespaces` the namespaces of the stored flows,
//!   `ServerStatus` the ring's numbers; agent and debug events are not produced by this agent
//!   and answer `Unimplemented`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use prost_types::Timestamp;
use proto::flow::{Flow, LostEvent, LostEventSource};
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_server::{Observer, ObserverServer};
use proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
};
use proto::relay::NodeState;
use tonic::{Request, Response, Status};

use crate::filter::FlowFilters;
use crate::metrics::HubbleMetrics;
use crate::ring::{Capacity, Follower, Next, Ring, Snapshot};

/// The ring of stored events: flows and the datapath's lost-event reports, as streamed.
pub type FlowRing = Ring<GetFlowsResponse>;

/// Over how long `ServerStatus.flows_rate` averages (upstream: the last minute).
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// What the observer is configured with.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    /// The node name flows carry (`cluster/node` outside the default cluster), also used for
    /// lost-event responses and `GetNodes`.
    pub node_name: String,
    /// The address `GetNodes` reports for this node (`ip:port` of its Hubble server).
    pub address: String,
    pub capacity: Capacity,
    /// Reported in `ServerStatus.version` and `GetNodes`.
    pub version: String,
}

/// This node's stored flows and counters, shared by the event reader (writes) and the gRPC
/// services (read).
#[derive(Debug)]
pub struct LocalObserver {
    config: ObserverConfig,
    ring: Arc<FlowRing>,
    seen_flows: AtomicU64,
    started: Instant,
    metrics: Option<Arc<HubbleMetrics>>,
}

impl LocalObserver {
    /// An observer with an empty ring; `metrics` counts what passes through it.
    pub fn new(config: ObserverConfig, metrics: Option<Arc<HubbleMetrics>>) -> Arc<LocalObserver> {
        Arc::new(LocalObserver {
            ring: Arc::new(Ring::new(config.capacity)),
            config,
            seen_flows: AtomicU64::new(0),
            started: Instant::now(),
            metrics,
        })
    }

    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    pub fn ring(&self) -> &Arc<FlowRing> {
        &self.ring
    }

    pub fn metrics(&self) -> Option<&Arc<HubbleMetrics>> {
        self.metrics.as_ref()
    }

    /// Stores one flow.
    pub fn record_flow(&self, flow: Flow) {
        self.record_flows(std::iter::once(flow));
    }

    /// Stores a batch of flows under one lock of the ring (the reader's batches).
    pub fn record_flows(&self, flows: impl IntoIterator<Item = Flow>) {
        let mut count = 0u64;
        let responses = flows.into_iter().map(|flow| {
            count += 1;
            if let Some(metrics) = &self.metrics {
                metrics.process_flow(&flow);
            }
            Arc::new(GetFlowsResponse {
                node_name: flow.node_name.clone(),
                time: flow.time,
                response_types: Some(ResponseTypes::Flow(flow)),
            })
        });
        // Built before the ring's lock is taken, so the lock covers only the appends.
        let responses: Vec<_> = responses.collect();
        self.ring.extend(responses);
        self.seen_flows.fetch_add(count, Ordering::Relaxed);
    }

    /// Records that `count` events were lost before they became flows (the datapath's ring
    /// buffer was full, say): stored as a `lost_events` entry that streams to every client,
    /// and counted in the metrics.
    pub fn record_lost(&self, source: LostEventSource, count: u64) {
        if count == 0 {
            return;
        }
        if let Some(metrics) = &self.metrics {
            metrics.lost_events(source, count);
        }
        self.ring.push(Arc::new(lost_response(
            &self.config.node_name,
            source,
            count,
        )));
    }

    /// `ServerStatus` of this node.
    pub fn status(&self) -> ServerStatusResponse {
        let snapshot = self.ring.snapshot();
        ServerStatusResponse {
            num_flows: snapshot.len() as u64,
            max_flows: self.ring.capacity() as u64,
            seen_flows: self.seen_flows.load(Ordering::Relaxed),
            uptime_ns: duration_ns(self.started.elapsed()),
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: Vec::new(),
            version: self.config.version.clone(),
            flows_rate: flows_rate(&snapshot, SystemTime::now()),
        }
    }

    /// Namespaces of the stored flows' endpoints, sorted by cluster, then name.
    pub fn namespaces(&self) -> Vec<Namespace> {
        let snapshot = self.ring.snapshot();
        let mut seen = BTreeSet::new();
        for entry in snapshot.entries() {
            let Some(ResponseTypes::Flow(flow)) = &entry.response_types else {
                continue;
            };
            for endpoint in [&flow.source, &flow.destination].into_iter().flatten() {
                if !endpoint.namespace.is_empty() {
                    seen.insert((endpoint.cluster_name.clone(), endpoint.namespace.clone()));
                }
            }
        }
        seen.into_iter()
            .map(|(cluster, namespace)| Namespace { cluster, namespace })
            .collect()
    }

    /// This node as `GetNodes` lists it.
    pub fn node(&self) -> Node {
        let status = self.status();
        Node {
            name: self.config.node_name.clone(),
            version: self.config.version.clone(),
            address: self.config.address.clone(),
            state: NodeState::NodeConnected as i32,
            tls: None,
            uptime_ns: status.uptime_ns,
            num_flows: status.num_flows,
            max_flows: status.max_flows,
            seen_flows: status.seen_flows,
        }
    }
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn lost_response(node_name: &str, source: LostEventSource, count: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node_name.to_owned(),
        time: Some(Timestamp::from(SystemTime::now())),
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: source as i32,
            num_events_lost: count,
            cpu: None,
        })),
    }
}

/// A timestamp as a comparable `(seconds, nanos)`; a missing one is the epoch.
fn time_key(time: Option<&Timestamp>) -> (i64, i32) {
    time.map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// Flows per second over the last minute, counted from the newest stored flow backwards.
fn flows_rate(snapshot: &Snapshot<GetFlowsResponse>, now: SystemTime) -> f64 {
    let cutoff = Timestamp::from(
        now.checked_sub(RATE_WINDOW)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    );
    let cutoff = time_key(Some(&cutoff));
    let recent = snapshot
        .entries()
        .iter()
        .rev()
        .filter(|e| matches!(e.response_types, Some(ResponseTypes::Flow(_))))
        .take_while(|e| time_key(e.time.as_ref()) >= cutoff)
        .count();
    recent as f64 / RATE_WINDOW.as_secs_f64()
}

/// Checks a request timestamp the way protobuf's `CheckValid` does.
fn valid_time(field: &'static str, time: Option<&Timestamp>) -> Result<Option<(i64, i32)>, Status> {
    match time {
        None => Ok(None),
        Some(t) if (0..1_000_000_000).contains(&t.nanos) => Ok(Some((t.seconds, t.nanos))),
        Some(t) => Err(Status::invalid_argument(format!(
            "invalid {field} timestamp: nanos {} out of range 0..999999999",
            t.nanos
        ))),
    }
}

/// The part of a request the reader needs, validated.
#[derive(Debug)]
struct FlowsQuery {
    filters: FlowFilters,
    number: u64,
    first: bool,
    follow: bool,
    since: Option<(i64, i32)>,
    until: Option<(i64, i32)>,
}

impl FlowsQuery {
    fn parse(request: &GetFlowsRequest) -> Result<FlowsQuery, Status> {
        if request.first && request.follow {
            return Err(Status::invalid_argument(
                "first cannot be specified with follow",
            ));
        }
        if request
            .field_mask
            .as_ref()
            .is_some_and(|mask| !mask.paths.is_empty())
        {
            return Err(Status::invalid_argument(
                "field_mask is not supported by this server: request whole flows",
            ));
        }
        let filters = FlowFilters::compile(&request.whitelist, &request.blacklist)?;
        Ok(FlowsQuery {
            filters,
            number: request.number,
            first: request.first,
            follow: request.follow,
            since: valid_time("since", request.since.as_ref())?,
            until: valid_time("until", request.until.as_ref())?,
        })
    }

    /// Whether `entry` is a flow the request's filters select (time range aside).
    fn selects(&self, entry: &GetFlowsResponse) -> bool {
        match &entry.response_types {
            Some(ResponseTypes::Flow(flow)) => self.filters.matches(flow),
            _ => false,
        }
    }

    /// Where in `snapshot` the stream starts (upstream's `newRingReader`): the oldest entry
    /// for `first`; the end for a bare `follow`; else rewinding from the newest entry until
    /// `number` selected flows are behind, or the first selected flow before `since`.
    fn start(&self, snapshot: &Snapshot<GetFlowsResponse>) -> usize {
        let entries = snapshot.entries();
        if self.first && self.since.is_none() {
            return 0;
        }
        if self.follow && self.number == 0 && self.since.is_none() {
            return entries.len();
        }
        let mut count = 0u64;
        for (index, entry) in entries.iter().enumerate().rev() {
            if !self.selects(entry) {
                continue;
            }
            count += 1;
            if let Some(since) = self.since {
                if time_key(entry.time.as_ref()) < since {
                    return index + 1;
                }
            } else if count == self.number {
                return index;
            }
        }
        0
    }
}

/// One `GetFlows` stream's state: a snapshot to go through, then (with `follow`) the ring's
/// new entries.
#[derive(Debug)]
struct FlowsReader {
    query: FlowsQuery,
    observer: Arc<LocalObserver>,
    snapshot: Snapshot<GetFlowsResponse>,
    position: usize,
    follower: Option<Follower<GetFlowsResponse>>,
    sent_flows: u64,
    done: bool,
}

impl FlowsReader {
    fn new(query: FlowsQuery, observer: Arc<LocalObserver>) -> FlowsReader {
        let snapshot = observer.ring.snapshot();
        let position = query.start(&snapshot);
        FlowsReader {
            query,
            observer,
            snapshot,
            position,
            follower: None,
            sent_flows: 0,
            done: false,
        }
    }

    /// The next response, or `None` when the request is complete.
    async fn next(&mut self) -> Option<GetFlowsResponse> {
        loop {
            if self.done
                || (!self.query.follow
                    && self.query.number > 0
                    && self.sent_flows >= self.query.number)
            {
                return None;
            }
            let entry = if let Some(entry) = self.snapshot.entries().get(self.position) {
                self.position += 1;
                Arc::clone(entry)
            } else if !self.query.follow {
                return None;
            } else {
                // A filter that drops everything never waits while the writer keeps up:
                // give the runtime its turn now and then.
                tokio::task::consume_budget().await;
                let end = self.snapshot.end_seq();
                let ring = Arc::clone(&self.observer.ring);
                let follower = self.follower.get_or_insert_with(|| ring.follow_from(end));
                match follower.next().await {
                    Next::Entry { entry, .. } => entry,
                    Next::Lost { count } => {
                        if let Some(metrics) = &self.observer.metrics {
                            metrics.lost_events(LostEventSource::HubbleRingBuffer, count);
                        }
                        return Some(lost_response(
                            &self.observer.config.node_name,
                            LostEventSource::HubbleRingBuffer,
                            count,
                        ));
                    }
                }
            };
            match &entry.response_types {
                Some(ResponseTypes::Flow(flow)) => {
                    let time = time_key(flow.time.as_ref());
                    if self.query.until.is_some_and(|until| time > until) {
                        self.done = true;
                        return None;
                    }
                    if self.query.since.is_some_and(|since| time < since)
                        || !self.query.filters.matches(flow)
                    {
                        continue;
                    }
                    self.sent_flows += 1;
                    return Some((*entry).clone());
                }
                // Losses are no answer to a filter: every client hears of them.
                Some(ResponseTypes::LostEvents(_)) => return Some((*entry).clone()),
                Some(ResponseTypes::NodeStatus(_)) | None => continue,
            }
        }
    }
}

/// The stream type of `GetFlows`.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;
type AgentEventStream = Pin<Box<dyn Stream<Item = Result<GetAgentEventsResponse, Status>> + Send>>;
type DebugEventStream = Pin<Box<dyn Stream<Item = Result<GetDebugEventsResponse, Status>> + Send>>;

/// `observer.Observer` over a [`LocalObserver`].
#[derive(Debug, Clone)]
pub struct ObserverService {
    observer: Arc<LocalObserver>,
}

impl ObserverService {
    pub fn new(observer: Arc<LocalObserver>) -> ObserverService {
        ObserverService { observer }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> ObserverServer<ObserverService> {
        ObserverServer::new(self)
    }

    /// The `GetFlows` stream for `request`, or why the request is refused.
    pub fn flows(&self, request: &GetFlowsRequest) -> Result<FlowStream, Status> {
        let query = FlowsQuery::parse(request)?;
        let reader = FlowsReader::new(query, Arc::clone(&self.observer));
        let stream = futures::stream::unfold(reader, |mut reader| async move {
            let response = reader.next().await?;
            Some((Ok(response), reader))
        });
        Ok(Box::pin(stream))
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;
    type GetAgentEventsStream = AgentEventStream;
    type GetDebugEventsStream = DebugEventStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        tracing::debug!(
            number = request.number,
            first = request.first,
            follow = request.follow,
            whitelist = request.whitelist.len(),
            blacklist = request.blacklist.len(),
            "GetFlows"
        );
        self.flows(&request).map(Response::new)
    }

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented(
            "GetAgentEvents: this agent does not record agent events",
        ))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented(
            "GetDebugEvents: this agent's datapath emits no debug events",
        ))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        Ok(Response::new(GetNodesResponse {
            nodes: vec![self.observer.node()],
        }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        Ok(Response::new(GetNamespacesResponse {
            namespaces: self.observer.namespaces(),
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(self.observer.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer(capacity: usize) -> Arc<LocalObserver> {
        LocalObserver::new(
            ObserverConfig {
                node_name: "node-1".to_owned(),
                address: "10.0.0.1:4244".to_owned(),
                capacity: Capacity::new(capacity).unwrap(),
                version: "test".to_owned(),
            },
            None,
        )
    }

    fn flow_at(seconds: i64) -> Flow {
        Flow {
            time: Some(Timestamp { seconds, nanos: 0 }),
            node_name: "node-1".to_owned(),
            ..Flow::default()
        }
    }

    fn query(request: GetFlowsRequest) -> FlowsQuery {
        FlowsQuery::parse(&request).unwrap()
    }

    #[test]
    fn start_positions_follow_upstream() {
        let observer = observer(15);
        observer.record_flows((1..=10).map(flow_at));
        let snapshot = observer.ring.snapshot();
        let at = |request| query(request).start(&snapshot);
        assert_eq!(
            at(GetFlowsRequest {
                first: true,
                number: 3,
                ..Default::default()
            }),
            0
        );
        assert_eq!(
            at(GetFlowsRequest {
                number: 3,
                ..Default::default()
            }),
            7
        );
        assert_eq!(
            at(GetFlowsRequest {
                follow: true,
                ..Default::default()
            }),
            10
        );
        // `since` wins over `number`: start at the first flow at or after it.
        assert_eq!(
            at(GetFlowsRequest {
                number: 1,
                since: Some(Timestamp {
                    seconds: 4,
                    nanos: 0
                }),
                ..Default::default()
            }),
            3
        );
        // Without a limit, everything.
        assert_eq!(at(GetFlowsRequest::default()), 0);
    }

    #[test]
    fn rate_counts_the_last_minute() {
        let observer = observer(15);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        observer.record_flows([flow_at(100), flow_at(950), flow_at(990), flow_at(999)]);
        let rate = flows_rate(&observer.ring.snapshot(), now);
        assert!((rate - 3.0 / 60.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn invalid_requests_are_refused() {
        let refuse = |request: GetFlowsRequest| FlowsQuery::parse(&request).unwrap_err().code();
        assert_eq!(
            refuse(GetFlowsRequest {
                first: true,
                follow: true,
                ..Default::default()
            }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            refuse(GetFlowsRequest {
                since: Some(Timestamp {
                    seconds: 1,
                    nanos: -1
                }),
                ..Default::default()
            }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            refuse(GetFlowsRequest {
                field_mask: Some(prost_types::FieldMask {
                    paths: vec!["source".to_owned()]
                }),
                ..Default::default()
            }),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn lost_events_are_stored_and_counted() {
        let metrics = Arc::new(HubbleMetrics::new());
        let observer = LocalObserver::new(
            ObserverConfig {
                node_name: "node-1".to_owned(),
                address: String::new(),
                capacity: Capacity::DEFAULT,
                version: "test".to_owned(),
            },
            Some(Arc::clone(&metrics)),
        );
        observer.record_lost(LostEventSource::PerfEventRingBuffer, 0);
        assert!(observer.ring.is_empty());
        observer.record_lost(LostEventSource::PerfEventRingBuffer, 5);
        observer.record_flow(flow_at(1));
        let status = observer.status();
        assert_eq!(status.num_flows, 2);
        assert_eq!(status.seen_flows, 1);
        assert_eq!(status.max_flows, 4095);
        let snapshot = observer.ring.snapshot();
        assert!(matches!(
            &snapshot.entries()[0].response_types,
            Some(ResponseTypes::LostEvents(LostEvent {
                num_events_lost: 5,
                ..
            }))
        ));
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 5")
        );
    }
}
