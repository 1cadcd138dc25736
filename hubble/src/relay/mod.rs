//! hubble-relay: one Observer API in front of every node's Hubble server.
//!
//! The relay learns the nodes from one or more Peer services (one per cluster; upstream names
//! peers of a non-default cluster `cluster/node`, so clusters do not collide), keeps one gRPC
//! connection per node, and answers the Observer API by asking every connected node and merging
//! the answers: flows in time order through a bounded sort buffer, node counters summed,
//! namespaces united. Nodes it cannot reach are reported, not hidden: `node_status` events in
//! `GetFlows`, `NODE_UNAVAILABLE` in `GetNodes`, `unavailable_nodes` in `ServerStatus`.
//!
//! # Layout
//! - `pool`: peer discovery (`Peer.Notify`) and the per-peer connections with backoff.
//! - `sort`: the bounded sort buffer.
//! - `server`: the Observer service ([`RelayObserver`]) built on both.
//!
//! Defaults follow upstream's `hubble/relay/defaults` except the Peer service address:
//! upstream's `hubble-peer.kube-system.svc.cluster.local:443` only resolves inside
//! Kubernetes, so ours is the local agent's Hubble server, `localhost:4244`, which serves the
//! Peer service next to its Observer.

mod pool;
mod server;
mod sort;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proto::observer::observer_server::ObserverServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

pub use pool::{DEFAULT_SERVER_PORT, PeerState, PeerStatus};
pub use server::RelayObserver;

/// Where the relay listens unless told otherwise (upstream `:4245`).
pub const DEFAULT_LISTEN_ADDRESS: &str = ":4245";
/// The Peer service asked unless told otherwise: the local agent's Hubble server.
pub const DEFAULT_PEER_SERVICE: &str = "localhost:4244";

/// Errors of the relay library.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid peer address {address:?}: {reason}")]
    InvalidPeerAddress { address: String, reason: String },
    #[error("invalid listen address {address:?}: expected HOST:PORT or :PORT")]
    InvalidListenAddress { address: String },
    #[error("no peer service configured: give at least one --peer-service")]
    NoPeerService,
    #[error("sort buffer length must be at least 1")]
    EmptySortBuffer,
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Everything the relay needs to run; `Default` gives upstream's defaults.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Peer services to learn nodes from, one per cluster (`HOST:PORT`, `IP`, `unix://PATH`).
    pub peer_services: Vec<String>,
    /// Most responses held for sorting per `GetFlows` call (upstream `SortBufferMaxLen`, 100).
    pub sort_buffer_len_max: usize,
    /// How long a response may wait in the sort buffer when it is not full (upstream
    /// `SortBufferDrainTimeout`, 1s).
    pub sort_buffer_drain_timeout: Duration,
    /// Limit for dialing a node and for each request to it (upstream `DialTimeout`, 5s).
    pub dial_timeout: Duration,
    /// Wait between attempts to reach a Peer service (upstream `RetryTimeout`, 30s).
    pub retry_timeout: Duration,
    /// First wait after a failed dial to a node; doubles per failure (upstream 1s).
    pub backoff_min: Duration,
    /// Longest wait between dials to a node (upstream 1m).
    pub backoff_max: Duration,
    /// How often an idle connection is probed with `ServerStatus`.
    pub health_check_interval: Duration,
    /// How often a `follow` request looks for nodes that connected after it started.
    pub peer_update_interval: Duration,
    /// Name of the relay itself, in the `node_name` of its `node_status` events.
    pub node_name: String,
    /// Reported in `ServerStatus.version`.
    pub version: String,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            peer_services: vec![DEFAULT_PEER_SERVICE.to_owned()],
            sort_buffer_len_max: 100,
            sort_buffer_drain_timeout: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(10),
            peer_update_interval: Duration::from_secs(2),
            node_name: "hubble-relay".to_owned(),
            version: format!("hubble-relay {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A running relay: peer discovery and connections run in the background from
/// [`Relay::start`] until [`Relay::stop`] or drop.
#[derive(Debug)]
pub struct Relay {
    config: Arc<RelayConfig>,
    pool: Arc<pool::Pool>,
    watchers: Vec<JoinHandle<()>>,
    closing: watch::Sender<bool>,
}

impl Relay {
    /// Starts following the configured Peer services. Must be called inside a tokio runtime.
    pub fn start(config: RelayConfig) -> Result<Relay, RelayError> {
        if config.peer_services.is_empty() {
            return Err(RelayError::NoPeerService);
        }
        if config.sort_buffer_len_max == 0 {
            return Err(RelayError::EmptySortBuffer);
        }
        let endpoints = config
            .peer_services
            .iter()
            .map(|address| pool::peer_endpoint(address, config.dial_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = pool::Pool::new(pool::ConnectionSettings {
            dial_timeout: config.dial_timeout,
            retry_timeout: config.retry_timeout,
            backoff_min: config.backoff_min,
            backoff_max: config.backoff_max,
            health_check_interval: config.health_check_interval,
        });
        let (closing, closed) = watch::channel(false);
        let watchers = endpoints
            .into_iter()
            .enumerate()
            .map(|(source, endpoint)| {
                tokio::spawn(pool::watch_peer_service(
                    Arc::downgrade(&pool),
                    source,
                    endpoint,
                    closed.clone(),
                ))
            })
            .collect();
        Ok(Relay {
            config: Arc::new(config),
            pool,
            watchers,
            closing,
        })
    }

    /// The state of every known peer, sorted by name.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.pool.statuses()
    }

    /// The Observer service, to add to a tonic server of one's own.
    pub fn observer(&self) -> RelayObserver {
        RelayObserver::new(
            Arc::clone(&self.pool),
            Arc::clone(&self.config),
            self.closing.subscribe(),
        )
    }

    /// Serves the Observer API on `listener` until `shutdown` resolves; then ends every open
    /// flow stream so the server can stop gracefully.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RelayError> {
        let closing = self.closing.clone();
        tonic::transport::Server::builder()
            .add_service(ObserverServer::new(self.observer()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                shutdown.await;
                // Follow streams never end on their own; graceful shutdown waits for them.
                closing.send_replace(true);
            })
            .await
            .map_err(RelayError::Serve)
    }

    /// Ends open flow streams, stops discovery and drops every peer connection.
    pub fn stop(&self) {
        self.closing.send_replace(true);
        for watcher in &self.watchers {
            watcher.abort();
        }
        self.pool.shutdown();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves once the relay is stopping.
pub(crate) async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means the relay itself is gone, which is also a reason to stop.
    let _ = closing.wait_for(|closed| *closed).await;
}

/// Parses upstream's listen address form: `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every
/// IPv4 address.
pub fn parse_listen_address(address: &str) -> Result<SocketAddr, RelayError> {
    let invalid = || RelayError::InvalidListenAddress {
        address: address.to_owned(),
    };
    if let Some(port) = address.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|_| invalid())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Ok(socket);
    }
    match address.rsplit_once(':') {
        Some(("localhost", port)) => port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_in_upstream_forms() {
        let parsed = |text: &str| parse_listen_address(text).map(|a| a.to_string()).ok();
        assert_eq!(parsed(":4245"), Some("0.0.0.0:4245".to_owned()));
        assert_eq!(parsed("127.0.0.1:4245"), Some("127.0.0.1:4245".to_owned()));
        assert_eq!(parsed("[::1]:4245"), Some("[::1]:4245".to_owned()));
        assert_eq!(parsed("localhost:80"), Some("127.0.0.1:80".to_owned()));
        assert_eq!(parsed("4245"), None);
        assert_eq!(parsed(":http"), None);
        assert_eq!(parsed("example.com:4245"), None);
    }

    #[tokio::test]
    async fn start_rejects_unusable_configuration() {
        let none = RelayConfig {
            peer_services: Vec::new(),
            ..RelayConfig::default()
        };
        assert!(matches!(Relay::start(none), Err(RelayError::NoPeerService)));
        let empty_buffer = RelayConfig {
            sort_buffer_len_max: 0,
            ..RelayConfig::default()
        };
        assert!(matches!(
            Relay::start(empty_buffer),
            Err(RelayError::EmptySortBuffer)
        ));
        let bad_address = RelayConfig {
            peer_services: vec![String::new()],
            ..RelayConfig::default()
        };
        assert!(matches!(
            Relay::start(bad_address),
            Err(RelayError::InvalidPeerAddress { .. })
        ));
    }
}
