//! The peer pool: which Hubble servers exist (learned from Peer services) and one gRPC
//! connection to each.
//!
//! One task per Peer service follows its `Notify` stream and reconnects to it every
//! `retry_timeout` when it fails, as upstream's peer manager does. One task per peer owns that
//! peer's connection: it dials in the background (so a dead node never delays a client
//! request), backs off exponentially between failed dials, and probes a healthy connection
//! with `ServerStatus` so that a node that went away is reported unavailable even when no
//! client is streaming from it. Request handlers that see a connection fail report it here,
//! which makes the peer's task reconnect at once instead of waiting for the next probe.
//!
//! Peers are keyed by name. Upstream names peers of a non-default cluster `cluster/node`, so
//! several clusters behind one relay (one Peer service each) do not collide.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use proto::observer::ServerStatusRequest;
use proto::observer::observer_client::ObserverClient;
use proto::peer::peer_client::PeerClient;
use proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::{RelayError, closed};

/// The port of a Hubble server when a peer's address does not name one (upstream
/// `hubble/defaults.ServerPort`).
pub const DEFAULT_SERVER_PORT: u16 = 4244;

/// Whether the relay can currently reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Known, first dial not finished yet.
    Connecting,
    /// Connected and answering.
    Connected,
    /// The last dial or request failed; the relay retries with backoff.
    Unavailable,
}

/// A snapshot of one peer for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's name as its Peer service announced it.
    pub name: String,
    /// The address as announced (`IP:PORT`, `HOST:PORT` or `unix://PATH`).
    pub address: String,
    pub state: PeerState,
    /// Why the peer is unavailable, when it is.
    pub last_error: Option<String>,
}

/// How the pool dials and watches connections (a subset of `RelayConfig`).
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSettings {
    pub(crate) dial_timeout: Duration,
    pub(crate) retry_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) health_check_interval: Duration,
}

impl ConnectionSettings {
    /// `backoff_min * 2^attempt`, capped at `backoff_max`.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
        self.backoff_min
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// A connected peer's channel plus the id of that connection, so that a failure reported
/// for an old connection never tears down its replacement.
#[derive(Debug, Clone)]
pub(crate) struct PeerConnection {
    pub(crate) channel: Channel,
    pub(crate) id: u64,
}

/// What request handlers see of a peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerHandle {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) connection: Option<PeerConnection>,
}

#[derive(Debug)]
enum Connection {
    Connecting,
    Connected(PeerConnection),
    Unavailable(String),
}

#[derive(Debug)]
struct Slot {
    /// Unique per slot, so a replaced slot's task cannot update its successor.
    id: u64,
    address: String,
    /// Index of the Peer service that announced the peer.
    source: usize,
    connection: Connection,
    wake: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug)]
pub(crate) struct Pool {
    peers: Mutex<HashMap<String, Slot>>,
    settings: ConnectionSettings,
    ids: AtomicU64,
}

impl Pool {
    pub(crate) fn new(settings: ConnectionSettings) -> Arc<Pool> {
        Arc::new(Pool {
            peers: Mutex::new(HashMap::new()),
            settings,
            ids: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock leaves the map itself consistent (every update is a
        // single insert or field write), so poisoning is not a reason to stop serving.
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a peer or changes its address; an unchanged announcement keeps the connection.
    pub(crate) fn upsert(self: &Arc<Self>, name: &str, address: &str, source: usize) {
        let mut peers = self.lock();
        if let Some(slot) = peers.get_mut(name) {
            if slot.address == address {
                slot.source = source;
                return;
            }
            if let Some(task) = slot.task.take() {
                task.abort();
            }
        }
        let id = self.next_id();
        let wake = Arc::new(Notify::new());
        let (connection, task) = match peer_endpoint(address, self.settings.dial_timeout) {
            Ok(endpoint) => {
                tracing::info!(peer = name, address, "connecting to peer");
                let task = tokio::spawn(maintain_connection(
                    Arc::downgrade(self),
                    name.to_owned(),
                    id,
                    endpoint,
                    Arc::clone(&wake),
                ));
                (Connection::Connecting, Some(task))
            }
            Err(error) => {
                tracing::warn!(peer = name, address, %error, "peer announced with an unusable address");
                (Connection::Unavailable(error.to_string()), None)
            }
        };
        peers.insert(
            name.to_owned(),
            Slot {
                id,
                address: address.to_owned(),
                source,
                connection,
                wake,
                task,
            },
        );
    }

    /// Forgets a peer, unless another Peer service announced it since.
    pub(crate) fn remove(&self, name: &str, source: usize) {
        let mut peers = self.lock();
        if peers.get(name).is_some_and(|slot| slot.source == source)
            && let Some(mut slot) = peers.remove(name)
        {
            tracing::info!(peer = name, "peer removed");
            if let Some(task) = slot.task.take() {
                task.abort();
            }
        }
    }

    /// Every peer, sorted by name.
    pub(crate) fn list(&self) -> Vec<PeerHandle> {
        let peers = self.lock();
        let mut list: Vec<PeerHandle> = peers
            .iter()
            .map(|(name, slot)| PeerHandle {
                name: name.clone(),
                address: slot.address.clone(),
                connection: match &slot.connection {
                    Connection::Connected(connection) => Some(connection.clone()),
                    Connection::Connecting | Connection::Unavailable(_) => None,
                },
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Every peer's state, sorted by name.
    pub(crate) fn statuses(&self) -> Vec<PeerStatus> {
        let peers = self.lock();
        let mut list: Vec<PeerStatus> = peers
            .iter()
            .map(|(name, slot)| {
                let (state, last_error) = match &slot.connection {
                    Connection::Connecting => (PeerState::Connecting, None),
                    Connection::Connected(_) => (PeerState::Connected, None),
                    Connection::Unavailable(error) => (PeerState::Unavailable, Some(error.clone())),
                };
                PeerStatus {
                    name: name.clone(),
                    address: slot.address.clone(),
                    state,
                    last_error,
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// A request over connection `connection_id` failed in a way that suggests the peer is
    /// gone: mark it unavailable and make its task reconnect now.
    pub(crate) fn report_failure(&self, name: &str, connection_id: u64, error: &str) {
        let mut peers = self.lock();
        let Some(slot) = peers.get_mut(name) else {
            return;
        };
        if matches!(&slot.connection, Connection::Connected(c) if c.id == connection_id) {
            tracing::warn!(peer = name, error, "peer connection failed");
            slot.connection = Connection::Unavailable(error.to_owned());
            slot.wake.notify_one();
        }
    }

    /// Records the outcome of a dial by the task of slot `slot_id`; false when that slot is
    /// gone (the task should stop).
    fn set_connection(&self, name: &str, slot_id: u64, connection: Connection) -> bool {
        let mut peers = self.lock();
        match peers.get_mut(name) {
            Some(slot) if slot.id == slot_id => {
                slot.connection = connection;
                true
            }
            _ => false,
        }
    }

    /// Whether connection `connection_id` is still the peer's current one.
    fn is_current(&self, name: &str, connection_id: u64) -> bool {
        let peers = self.lock();
        peers.get(name).is_some_and(
            |slot| matches!(&slot.connection, Connection::Connected(c) if c.id == connection_id),
        )
    }

    /// Stops every connection task.
    pub(crate) fn shutdown(&self) {
        let mut peers = self.lock();
        for slot in peers.values_mut() {
            if let Some(task) = slot.task.take() {
                task.abort();
            }
        }
        peers.clear();
    }
}

/// The gRPC endpoint of a peer announced as `address`: `unix://PATH` or `/PATH.sock` is a unix
/// socket, anything else `HOST[:PORT]` with port 4244 when none is given (as upstream).
pub(crate) fn peer_endpoint(address: &str, dial_timeout: Duration) -> Result<Endpoint, RelayError> {
    let invalid = |reason: String| RelayError::InvalidPeerAddress {
        address: address.to_owned(),
        reason,
    };
    let target = if address.is_empty() {
        return Err(invalid("the address is empty".to_owned()));
    } else if address.starts_with("unix://") {
        address.to_owned()
    } else if address.starts_with('/') && address.ends_with(".sock") {
        format!("unix://{address}")
    } else if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        format!(
            "http://{}",
            std::net::SocketAddr::new(ip, DEFAULT_SERVER_PORT)
        )
    } else if has_port(address) {
        format!("http://{address}")
    } else {
        format!("http://{address}:{DEFAULT_SERVER_PORT}")
    };
    let endpoint = Endpoint::from_shared(target).map_err(|error| invalid(error.to_string()))?;
    Ok(endpoint
        .connect_timeout(dial_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(dial_timeout))
}

/// `HOST:PORT` or `[V6]:PORT` with a numeric port.
fn has_port(address: &str) -> bool {
    address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !port.is_empty()
            && port.parse::<u16>().is_ok()
            && (!host.contains(':') || host.ends_with(']'))
    })
}

/// The life of one peer's connection: dial with backoff, then probe until it fails or a
/// request handler reports a failure, then dial again.
async fn maintain_connection(
    pool: Weak<Pool>,
    name: String,
    slot_id: u64,
    endpoint: Endpoint,
    wake: Arc<Notify>,
) {
    let Some(settings) = pool.upgrade().map(|pool| pool.settings.clone()) else {
        return;
    };
    let mut attempt = 0u32;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                attempt = 0;
                let Some(strong) = pool.upgrade() else { return };
                let connection = PeerConnection {
                    channel,
                    id: strong.next_id(),
                };
                if !strong.set_connection(&name, slot_id, Connection::Connected(connection.clone()))
                {
                    return;
                }
                drop(strong);
                tracing::info!(peer = %name, "connected to peer");
                watch_connection(&pool, &name, &connection, &settings, &wake).await;
            }
            Err(error) => {
                let message = transport_error_message(&error);
                let delay = settings.backoff(attempt);
                attempt = attempt.saturating_add(1);
                let Some(strong) = pool.upgrade() else { return };
                if !strong.set_connection(&name, slot_id, Connection::Unavailable(message.clone()))
                {
                    return;
                }
                drop(strong);
                tracing::warn!(peer = %name, error = %message, retry_in = ?delay, "cannot connect to peer");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Returns when the connection should be replaced.
async fn watch_connection(
    pool: &Weak<Pool>,
    name: &str,
    connection: &PeerConnection,
    settings: &ConnectionSettings,
    wake: &Notify,
) {
    let mut client = ObserverClient::new(connection.channel.clone());
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(settings.health_check_interval) => {
                let probe = tokio::time::timeout(
                    settings.dial_timeout,
                    client.server_status(ServerStatusRequest {}),
                )
                .await;
                let failure = match probe {
                    Ok(Ok(_)) => None,
                    Ok(Err(status)) if !is_connection_failure(status.code()) => None,
                    Ok(Err(status)) => Some(status.message().to_owned()),
                    Err(_) => Some(format!("no ServerStatus answer within {:?}", settings.dial_timeout)),
                };
                if let (Some(error), Some(strong)) = (failure, pool.upgrade()) {
                    strong.report_failure(name, connection.id, &error);
                }
            }
        }
        match pool.upgrade() {
            Some(strong) if strong.is_current(name, connection.id) => {}
            _ => return,
        }
    }
}

/// gRPC codes that mean the peer (or the way to it) failed rather than the request.
pub(crate) fn is_connection_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
    )
}

/// tonic's transport errors say only "transport error" at the top; the cause is the useful part.
fn transport_error_message(error: &tonic::transport::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        // hyper and tonic wrap the same cause in several layers with the same text.
        let text = cause.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Follows one Peer service for as long as the relay runs: every notification updates the
/// pool; a failed connection or stream is retried after `retry_timeout`.
pub(crate) async fn watch_peer_service(
    pool: Weak<Pool>,
    source: usize,
    endpoint: Endpoint,
    mut closing: watch::Receiver<bool>,
) {
    let target = endpoint.uri().to_string();
    loop {
        let Some(retry) = pool.upgrade().map(|pool| pool.settings.retry_timeout) else {
            return;
        };
        let error = tokio::select! {
            error = follow_notifications(&pool, source, &endpoint) => error,
            () = closed(&mut closing) => return,
        };
        tracing::warn!(
            peer_service = %target,
            %error,
            retry_in = ?retry,
            "lost the peer service; check that the Hubble server behind --peer-service is running"
        );
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = closed(&mut closing) => return,
        }
    }
}

/// Runs one `Notify` stream to its end; returns why it ended.
async fn follow_notifications(pool: &Weak<Pool>, source: usize, endpoint: &Endpoint) -> String {
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return transport_error_message(&error),
    };
    let mut stream = match PeerClient::new(channel).notify(NotifyRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return format!("Notify failed: {}", status.message()),
    };
    tracing::info!(peer_service = %endpoint.uri(), "following peer notifications");
    loop {
        let notification = match stream.message().await {
            Ok(Some(notification)) => notification,
            Ok(None) => return "the peer service ended the Notify stream".to_owned(),
            Err(status) => return format!("Notify stream failed: {}", status.message()),
        };
        let Some(pool) = pool.upgrade() else {
            return "relay stopped".to_owned();
        };
        apply_notification(&pool, source, &notification);
    }
}

fn apply_notification(pool: &Arc<Pool>, source: usize, notification: &ChangeNotification) {
    match notification.r#type() {
        ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated => {
            pool.upsert(&notification.name, &notification.address, source);
        }
        ChangeNotificationType::PeerDeleted => pool.remove(&notification.name, source),
        ChangeNotificationType::Unknown => {
            tracing::debug!(peer = %notification.name, "ignoring peer notification of unknown type");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(address: &str) -> String {
        match peer_endpoint(address, Duration::from_secs(1)) {
            Ok(endpoint) => endpoint.uri().to_string(),
            Err(error) => format!("error: {error}"),
        }
    }

    #[test]
    fn peer_addresses_get_the_default_port_and_unix_sockets_are_recognised() {
        assert_eq!(target("10.0.0.1:4244"), "http://10.0.0.1:4244/");
        assert_eq!(target("10.0.0.1"), "http://10.0.0.1:4244/");
        assert_eq!(target("fd00::1"), "http://[fd00::1]:4244/");
        assert_eq!(target("[fd00::1]:5000"), "http://[fd00::1]:5000/");
        assert_eq!(target("node-1.example:4244"), "http://node-1.example:4244/");
        assert_eq!(target("node-1.example"), "http://node-1.example:4244/");
        assert!(target("").starts_with("error: invalid peer address"));
    }

    #[test]
    fn unix_socket_addresses_are_accepted() {
        assert!(
            peer_endpoint("unix:///var/run/cilium/hubble.sock", Duration::from_secs(1)).is_ok()
        );
        assert!(peer_endpoint("/var/run/cilium/hubble.sock", Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let settings = ConnectionSettings {
            dial_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(10),
        };
        let delays: Vec<u64> = (0..8).map(|n| settings.backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(settings.backoff(u32::MAX), Duration::from_secs(60));
    }
}
