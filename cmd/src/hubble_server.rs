//! The agent's embedded Hubble (`--enable-hubble`, DESIGN 4.9): datapath events become flows in
//! the observer's ring, served over gRPC (Observer and Peer) on TCP (`--hubble-listen-address`,
//! default `:4244`) and a unix socket (`--hubble-socket-path`), with Hubble's metrics on
//! `--hubble-metrics-server` (default `:9965`).
//!
//! Three tasks run on the agent's tokio runtime:
//! - the event reader: reads batches from the datapath's event ring buffer, parses them with
//!   [`FlowParser`] and stores them in the [`LocalObserver`]; it never waits for a gRPC client
//!   (clients read the ring at their own pace and are told what they missed), and it reports
//!   the datapath's own losses (a full event ring buffer) as `PERF_EVENT_RING_BUFFER` lost
//!   events;
//! - the state sync: every 100 ms asks the endpoint manager, the ipcache and the identity
//!   allocator how many changes they have seen, and copies endpoints, ipcache host entries and
//!   identity labels into the [`EnrichmentCache`] the parser reads only from those that moved
//!   (so a new pod's flows carry its name within about 100 ms, and an idle agent copies
//!   nothing); every second it copies the node list (the node manager's in kvstore mode, else
//!   this node) into the Peer service's set;
//! - the gRPC and metrics servers.
//!
//! The parser reads only the cache, never an actor, so a busy actor delays enrichment and
//! never the reader.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actors::endpoint::ListEndpoints;
use actors::identity::ListIdentities;
use actors::node::ListNodes;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use datapath::monitor::{AsyncEventReader, EventReader, MonitorError, MonitorEvent};
use hubble::enrich::EnrichmentCache;
use hubble::metrics::HubbleMetrics;
use hubble::observer::{LocalObserver, ObserverConfig, ObserverService};
use hubble::parser::{EndpointInfo, FlowParser, IpInfo};
use hubble::peer::{DEFAULT_HUBBLE_PORT, PeerService, PeerSet, peer_entry};
use hubble::ring::Capacity;
use proto::flow::LostEventSource;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::daemon::AgentHandles;
use crate::metrics::parse_listen_addr;

/// Upstream's default `--hubble-socket-path`.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/cilium/hubble.sock";

/// How often the actors are asked whether the enrichment cache is behind: three small messages
/// when nothing changed, so it can be often.
const ENRICHMENT_PERIOD: Duration = Duration::from_millis(100);
/// How often the peer set is refreshed from the node list (which can be thousands of nodes).
const PEERS_PERIOD: Duration = Duration::from_secs(1);

/// How Hubble is served, from the agent's flags.
#[derive(Debug, Clone)]
pub struct HubbleConfig {
    /// `--hubble-listen-address` (`:4244`, `IP:PORT`); empty: no TCP server.
    pub listen_address: String,
    /// `--hubble-socket-path`; `None`: no unix socket.
    pub socket_path: Option<PathBuf>,
    /// `--hubble-event-buffer-capacity`.
    pub capacity: Capacity,
    /// `--hubble-metrics-server` (`:9965`, `IP:PORT`); empty: no metrics.
    pub metrics_address: String,
    /// This node's address for the Peer service and `GetNodes` when no node manager runs
    /// (without kvstore); the node manager's record wins when there is one.
    pub node_ip: IpAddr,
}

/// What keeps Hubble from starting.
#[derive(Debug, thiserror::Error)]
pub enum HubbleError {
    #[error("invalid {flag} {value:?}: use :PORT or IP:PORT")]
    Address {
        flag: &'static str,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("cannot listen on {addr} for {what}: choose another {flag}")]
    Bind {
        what: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot serve Hubble on the unix socket {}: run as root or choose another \
         --hubble-socket-path",
        path.display()
    )]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot open the datapath's event ring buffer under {}: is the datapath loaded there?",
        dir.display()
    )]
    OpenEvents {
        dir: PathBuf,
        #[source]
        source: MonitorError,
    },
}

/// Where flows come from: the datapath's event ring buffer in production, a channel in tests.
pub trait EventSource: Send + 'static {
    /// The next batch of events (never empty); an error ends the reading.
    fn next_batch(&mut self) -> impl Future<Output = io::Result<Vec<MonitorEvent>>> + Send;
    /// How many events the datapath lost so far (cumulative), if it can tell.
    fn lost(&self) -> Option<u64>;
}

impl EventSource for AsyncEventReader {
    fn next_batch(&mut self) -> impl Future<Output = io::Result<Vec<MonitorEvent>>> + Send {
        AsyncEventReader::next_batch(self)
    }

    fn lost(&self) -> Option<u64> {
        match self.counters() {
            Ok(counters) => Some(counters.lost),
            Err(error) => {
                tracing::debug!(%error, "cannot read the datapath's event counters");
                None
            }
        }
    }
}

/// Events sent by a test (or anything else in process).
impl EventSource for tokio::sync::mpsc::Receiver<Vec<MonitorEvent>> {
    async fn next_batch(&mut self) -> io::Result<Vec<MonitorEvent>> {
        self.recv().await.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "the event sender went away")
        })
    }

    fn lost(&self) -> Option<u64> {
        None
    }
}

/// Opens the event ring buffer pinned under `map_dir` (`<bpf-root>/tc/globals`), as the agent's
/// datapath loaded it.
pub fn open_datapath_events(map_dir: &Path) -> Result<AsyncEventReader, HubbleError> {
    let error = |source| HubbleError::OpenEvents {
        dir: map_dir.to_owned(),
        source,
    };
    EventReader::open_pinned(map_dir)
        .map_err(error)?
        .into_async()
        .map_err(error)
}

/// The running Hubble: its observer (for the agent's status) and its tasks.
#[derive(Debug)]
pub struct HubbleServer {
    observer: Arc<LocalObserver>,
    tcp_address: Option<SocketAddr>,
    metrics_address: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl HubbleServer {
    pub fn observer(&self) -> &Arc<LocalObserver> {
        &self.observer
    }

    /// The address the gRPC server listens on (the bound port when `:0` was asked).
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        self.tcp_address
    }

    /// The address the metrics server listens on.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Stops every task; open streams end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "a Hubble task failed");
            }
        }
    }
}

fn parse_address(flag: &'static str, value: &str) -> Result<SocketAddr, HubbleError> {
    parse_listen_addr(value).map_err(|source| HubbleError::Address {
        flag,
        value: value.to_owned(),
        source,
    })
}

async fn bind(
    what: &'static str,
    flag: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, HubbleError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HubbleError::Bind {
            what,
            flag,
            addr,
            source,
        })
}

fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, HubbleError> {
    let error = |source| HubbleError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    // A previous agent's socket file refuses the bind; nobody serves on it any more.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    tokio::net::UnixListener::bind(path).map_err(error)
}

/// Starts Hubble over the running agent: reads `events`, serves gRPC and metrics, and
/// publishes the observer in `handles.hubble` for the status. Must run inside the agent's
/// tokio runtime.
pub async fn start(
    handles: &AgentHandles,
    config: HubbleConfig,
    events: impl EventSource,
) -> Result<HubbleServer, HubbleError> {
    let tcp_addr = if config.listen_address.is_empty() {
        None
    } else {
        Some(parse_address(
            "--hubble-listen-address",
            &config.listen_address,
        )?)
    };
    let metrics_addr = if config.metrics_address.is_empty() {
        None
    } else {
        Some(parse_address(
            "--hubble-metrics-server",
            &config.metrics_address,
        )?)
    };
    let tcp = match tcp_addr {
        Some(addr) => Some(bind("Hubble", "--hubble-listen-address", addr).await?),
        None => None,
    };
    let tcp_address = match &tcp {
        Some(listener) => Some(listener.local_addr().map_err(|source| HubbleError::Bind {
            what: "Hubble",
            flag: "--hubble-listen-address",
            addr: tcp_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        })?),
        None => None,
    };
    // The bound port, which differs from the asked one for `:0`.
    let hubble_port = tcp_address.map_or(DEFAULT_HUBBLE_PORT, |a| a.port());
    let unix = match &config.socket_path {
        Some(path) => Some(bind_unix(path)?),
        None => None,
    };
    let metrics_listener = match metrics_addr {
        Some(addr) => Some(bind("Hubble metrics", "--hubble-metrics-server", addr).await?),
        None => None,
    };
    let metrics_address = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

    let agent = &handles.config;
    let cache = Arc::new(EnrichmentCache::new());
    let parser = FlowParser::new(
        agent.node_name.clone(),
        agent.cluster_name.as_str().to_owned(),
        cache.clone(),
    );
    let node_ip = agent
        .cluster
        .as_ref()
        .map_or(config.node_ip, |c| IpAddr::V4(c.node_ip));
    let metrics = Arc::new(HubbleMetrics::new());
    let observer = LocalObserver::new(
        ObserverConfig {
            node_name: parser.node_name().to_owned(),
            address: SocketAddr::new(node_ip, hubble_port).to_string(),
            capacity: config.capacity,
            version: concat!("v", env!("CARGO_PKG_VERSION")).to_owned(),
        },
        Some(Arc::clone(&metrics)),
    );
    // Set once: a second start (tests) keeps reporting the first observer.
    let _ = handles.hubble.set(Arc::clone(&observer));

    let (stop, stop_rx) = watch::channel(false);
    let (peers_tx, peers_rx) = watch::channel(PeerSet::new());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(read_events(
        events,
        parser,
        Arc::clone(&observer),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(sync_state(
        handles.clone(),
        cache,
        peers_tx,
        node_ip,
        hubble_port,
        stop_rx.clone(),
    )));

    let observer_service = ObserverService::new(Arc::clone(&observer));
    let peer_service = PeerService::new(peers_rx);
    let router = || {
        tonic::transport::Server::builder()
            .add_service(observer_service.clone().into_server())
            .add_service(peer_service.clone().into_server())
    };
    if let Some(listener) = tcp {
        let mut stop = stop_rx.clone();
        let server = router();
        tracing::info!(address = ?tcp_address, "serving Hubble");
        tasks.push(tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            if let Err(error) = server
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            {
                tracing::error!(%error, "the Hubble server on TCP failed");
            }
        }));
    }
    if let (Some(listener), Some(path)) = (unix, config.socket_path.clone()) {
        let mut stop = stop_rx.clone();
        let server = router();
        tracing::info!(socket = %path.display(), "serving Hubble");
        tasks.push(tokio::spawn(async move {
            let incoming = UnixListenerStream::new(listener);
            if let Err(error) = server
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            {
                tracing::error!(%error, "the Hubble server on the unix socket failed");
            }
            let _ = std::fs::remove_file(&path);
        }));
    }
    if let Some(listener) = metrics_listener {
        let mut stop = stop_rx.clone();
        let router = Router::new()
            .route("/metrics", get(scrape))
            .with_state(metrics);
        tracing::info!(address = ?metrics_address, "serving Hubble metrics");
        tasks.push(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            {
                tracing::error!(%error, "the Hubble metrics server failed");
            }
        }));
    }
    Ok(HubbleServer {
        observer,
        tcp_address,
        metrics_address,
        stop,
        tasks,
    })
}

/// The status line `cilium-dbg status` shows for Hubble, as upstream words it:
/// `Current/Max Flows: 1234/4095 (30.13%), Flows/s: 12.50`.
pub fn status_message(observer: &LocalObserver) -> String {
    let status = observer.status();
    let percent = if status.max_flows == 0 {
        0.0
    } else {
        status.num_flows as f64 * 100.0 / status.max_flows as f64
    };
    format!(
        "Current/Max Flows: {}/{} ({percent:.2}%), Flows/s: {:.2}",
        status.num_flows, status.max_flows, status.flows_rate
    )
}

async fn scrape(State(metrics): State<Arc<HubbleMetrics>>) -> Response {
    match metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Reads events into the observer until stopped or the source fails.
async fn read_events(
    mut events: impl EventSource,
    parser: FlowParser,
    observer: Arc<LocalObserver>,
    mut stop: watch::Receiver<bool>,
) {
    // Losses from before this agent started are no concern of its clients.
    let mut lost_before = events.lost().unwrap_or(0);
    loop {
        let batch = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            batch = events.next_batch() => batch,
        };
        match batch {
            Ok(batch) => observer.record_flows(batch.iter().map(|event| parser.parse(event))),
            Err(error) => {
                tracing::error!(%error, "reading datapath events failed; Hubble gets no new flows");
                return;
            }
        }
        if let Some(lost) = events.lost()
            && lost > lost_before
        {
            tracing::debug!(lost = lost - lost_before, "the datapath lost events");
            observer.record_lost(LostEventSource::PerfEventRingBuffer, lost - lost_before);
            lost_before = lost;
        }
    }
}

/// Keeps the enrichment cache and the peer set in step with the actors until stopped.
async fn sync_state(
    handles: AgentHandles,
    cache: Arc<EnrichmentCache>,
    peers: watch::Sender<PeerSet>,
    node_ip: IpAddr,
    hubble_port: u16,
    mut stop: watch::Receiver<bool>,
) {
    let mut enrichment = tokio::time::interval(ENRICHMENT_PERIOD);
    enrichment.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peers_tick = tokio::time::interval(PEERS_PERIOD);
    peers_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Seen::default();
    // The actor last reported gone: polled ten times a second, a dead actor is logged once,
    // not ten times a second.
    let mut gone = None;
    loop {
        // Decided before any await, so the stop signal's borrow is not held across one.
        let peers_due = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = enrichment.tick() => false,
            _ = peers_tick.tick() => true,
        };
        if !peers_due {
            match sync_enrichment(&handles, &cache, &mut seen).await {
                Ok(()) => gone = None,
                Err(actor) if gone != Some(actor) => {
                    tracing::warn!(
                        actor,
                        "cannot refresh Hubble's enrichment: the actor is gone"
                    );
                    gone = Some(actor);
                }
                Err(_) => {}
            }
            continue;
        }
        match peer_set(&handles, node_ip, hubble_port).await {
            Some(set) => {
                peers.send_if_modified(|current| {
                    let changed = *current != set;
                    if changed {
                        *current = set;
                    }
                    changed
                });
            }
            None => tracing::warn!("cannot list nodes for Hubble peers: the node manager is gone"),
        }
    }
}

/// The generations of the actors' state last copied into the cache.
#[derive(Debug, Default)]
struct Seen {
    endpoints: Option<u64>,
    ipcache: Option<u64>,
    identities: Option<u64>,
}

/// Copies endpoints, ipcache host entries and identity labels into the cache, each only when
/// its actor's generation moved since `seen` (the ipcache holds 100k entries and more with
/// ClusterMesh, the identities as many as there are label sets in every cluster).
async fn sync_enrichment(
    handles: &AgentHandles,
    cache: &EnrichmentCache,
    seen: &mut Seen,
) -> Result<(), &'static str> {
    if let Some(manager) = &handles.endpoints {
        let generation = manager
            .send(actors::endpoint::Generation)
            .await
            .map_err(|_| "endpoint manager")?;
        if seen.endpoints != Some(generation) {
            sync_endpoints(manager, cache).await?;
            seen.endpoints = Some(generation);
        }
    }
    let generation = handles
        .ipcache
        .send(actors::ipcache::Generation)
        .await
        .map_err(|_| "ipcache")?;
    if seen.ipcache != Some(generation) {
        sync_ipcache(handles, cache).await?;
        seen.ipcache = Some(generation);
    }
    let generation = handles
        .identity
        .send(actors::identity::Generation)
        .await
        .map_err(|_| "identity allocator")?;
    if seen.identities != Some(generation) {
        let identities = handles
            .identity
            .send(ListIdentities)
            .await
            .map_err(|_| "identity allocator")?;
        cache.replace_identities(identities.into_iter().map(|info| {
            (
                info.id,
                info.labels.iter().map(ToString::to_string).collect(),
            )
        }));
        seen.identities = Some(generation);
    }
    Ok(())
}

/// Copies the endpoints into the cache.
async fn sync_endpoints(
    manager: &actix::Addr<actors::endpoint::EndpointManager>,
    cache: &EnrichmentCache,
) -> Result<(), &'static str> {
    let endpoints = manager
        .send(ListEndpoints)
        .await
        .map_err(|_| "endpoint manager")?;
    // Events are observed on the endpoints' host-side veths, where the programs run.
    cache.replace_interfaces(
        endpoints
            .iter()
            .filter(|ep| ep.host_ifindex != 0)
            .map(|ep| (ep.host_ifindex, ep.host_ifname.clone())),
    );
    cache.replace_endpoints(endpoints.into_iter().map(|ep| EndpointInfo {
        id: u32::from(ep.id.get()),
        identity: ep.identity.get(),
        namespace: ep.pod_namespace,
        pod_name: ep.pod_name,
        labels: ep.identity_labels.iter().map(ToString::to_string).collect(),
        ips: vec![IpAddr::V4(ep.ip)],
    }));
    Ok(())
}

/// Copies the ipcache's host entries into the cache.
async fn sync_ipcache(handles: &AgentHandles, cache: &EnrichmentCache) -> Result<(), &'static str> {
    let ipcache = handles
        .ipcache
        .send(actors::ipcache::Dump)
        .await
        .map_err(|_| "ipcache")?;
    // Only single addresses: the cache answers exact lookups, and the parser resolves an
    // address in a CIDR by the identity the datapath reported.
    cache.replace_ips(ipcache.entries.into_iter().filter_map(|entry| {
        let prefix = entry.key.prefix();
        (prefix.prefix_len() == prefix.max_prefix_len()).then(|| {
            let (namespace, pod_name) = entry
                .entry
                .k8s
                .map(|k8s| (k8s.namespace, k8s.pod_name))
                .unwrap_or_default();
            (
                prefix.addr(),
                IpInfo {
                    identity: entry.entry.identity.get(),
                    namespace,
                    pod_name,
                    host_ip: entry.entry.host_ip,
                },
            )
        })
    }));
    Ok(())
}

/// Every node's Hubble address: the node manager's nodes in kvstore mode, else this node.
/// `None` when the node manager is gone.
async fn peer_set(handles: &AgentHandles, node_ip: IpAddr, port: u16) -> Option<PeerSet> {
    let cluster = handles.config.cluster_name.as_str();
    let Some(manager) = &handles.nodes else {
        return Some(PeerSet::from([peer_entry(
            cluster,
            &handles.config.node_name,
            node_ip,
            port,
        )]));
    };
    let nodes = manager.send(ListNodes).await.ok()?;
    Some(
        nodes
            .iter()
            .filter_map(|node| {
                let ip = node_address(node)?;
                Some(peer_entry(&node.cluster, &node.name, ip, port))
            })
            .collect(),
    )
}

/// A node's address for its Hubble server: its `InternalIP`, else its first address.
fn node_address(node: &kvstore::keys::Node) -> Option<IpAddr> {
    node.ip_addresses
        .iter()
        .find(|a| a.address_type == "InternalIP" && a.ip.is_some())
        .or_else(|| node.ip_addresses.iter().find(|a| a.ip.is_some()))
        .and_then(|a| a.ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore::keys::{Node, NodeAddress};

    #[test]
    fn node_address_prefers_the_internal_ip() {
        let mut node = Node {
            name: "n".to_owned(),
            cluster: "c".to_owned(),
            ..Node::default()
        };
        assert_eq!(node_address(&node), None);
        node.ip_addresses = vec![
            NodeAddress {
                address_type: "ExternalIP".to_owned(),
                ip: Some("192.0.2.1".parse().unwrap()),
            },
            NodeAddress {
                address_type: "InternalIP".to_owned(),
                ip: Some("10.0.0.5".parse().unwrap()),
            },
        ];
        assert_eq!(node_address(&node), Some("10.0.0.5".parse().unwrap()));
        node.ip_addresses.remove(1);
        assert_eq!(node_address(&node), Some("192.0.2.1".parse().unwrap()));
    }
}
