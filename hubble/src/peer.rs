//! The agent's Peer service: every node's Hubble server address, for hubble-relay.
//!
//! The agent feeds the set of nodes it knows into a `tokio::sync::watch` channel
//! ([`PeerSet`], keyed by peer name); each `Notify` stream first lists every node as
//! `PEER_ADDED`, then reports what changed between the sets it saw: `PEER_ADDED` for new
//! names, `PEER_DELETED` for names gone, `PEER_UPDATED` for a name whose address changed. A
//! client that reads slowly sees intermediate sets collapsed (the watch channel keeps only the
//! newest), which loses nothing: the differences it gets still lead to the current set.
//!
//! Peer names follow upstream's node full names: `cluster/node`, or just `node` in the cluster
//! named `default`, as the flows' `node_name` is. The stream ends when the agent drops the
//! sender.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use futures::Stream;
use proto::peer::peer_server::{Peer, PeerServer};
use proto::peer::{ChangeNotification, ChangeNotificationType, NotifyRequest};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Upstream's default cluster name: its nodes are named without a cluster prefix.
const DEFAULT_CLUSTER_NAME: &str = "default";

/// Upstream's default Hubble server port.
pub const DEFAULT_HUBBLE_PORT: u16 = 4244;

/// The known Hubble servers: peer name to address.
pub type PeerSet = BTreeMap<String, SocketAddr>;

/// A node's peer name: `cluster/node`, or `node` in the default cluster.
pub fn peer_name(cluster: &str, node: &str) -> String {
    if cluster.is_empty() || cluster == DEFAULT_CLUSTER_NAME {
        node.to_owned()
    } else {
        format!("{cluster}/{node}")
    }
}

/// One peer entry: its name and `ip:port` of its Hubble server.
pub fn peer_entry(cluster: &str, node: &str, ip: IpAddr, port: u16) -> (String, SocketAddr) {
    (peer_name(cluster, node), SocketAddr::new(ip, port))
}

fn notification(
    name: &str,
    address: SocketAddr,
    kind: ChangeNotificationType,
) -> ChangeNotification {
    ChangeNotification {
        name: name.to_owned(),
        address: address.to_string(),
        r#type: kind as i32,
        tls: None,
    }
}

/// What changed from `old` to `new`, deletions first, then additions and updates by name.
pub fn changes(old: &PeerSet, new: &PeerSet) -> Vec<ChangeNotification> {
    let deleted = old
        .iter()
        .filter(|(name, _)| !new.contains_key(*name))
        .map(|(name, address)| notification(name, *address, ChangeNotificationType::PeerDeleted));
    let added_or_updated = new
        .iter()
        .filter_map(|(name, address)| match old.get(name) {
            None => Some(notification(
                name,
                *address,
                ChangeNotificationType::PeerAdded,
            )),
            Some(before) if before != address => Some(notification(
                name,
                *address,
                ChangeNotificationType::PeerUpdated,
            )),
            Some(_) => None,
        });
    deleted.chain(added_or_updated).collect()
}

/// One `Notify` stream's state.
#[derive(Debug)]
struct Notifier {
    nodes: watch::Receiver<PeerSet>,
    current: PeerSet,
    pending: VecDeque<ChangeNotification>,
}

impl Notifier {
    fn new(mut nodes: watch::Receiver<PeerSet>) -> Notifier {
        let current = nodes.borrow_and_update().clone();
        let pending = changes(&PeerSet::new(), &current).into();
        Notifier {
            nodes,
            current,
            pending,
        }
    }

    async fn next(&mut self) -> Option<ChangeNotification> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some(change);
            }
            // An error means the agent dropped the sender: it is going away.
            self.nodes.changed().await.ok()?;
            let new = self.nodes.borrow_and_update().clone();
            self.pending = changes(&self.current, &new).into();
            self.current = new;
        }
    }
}

/// The stream type of `Notify`.
pub type NotifyStream = Pin<Box<dyn Stream<Item = Result<ChangeNotification, Status>> + Send>>;

/// `peer.Peer` over the agent's node set.
#[derive(Debug, Clone)]
pub struct PeerService {
    nodes: watch::Receiver<PeerSet>,
}

impl PeerService {
    pub fn new(nodes: watch::Receiver<PeerSet>) -> PeerService {
        PeerService { nodes }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> PeerServer<PeerService> {
        PeerServer::new(self)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type NotifyStream = NotifyStream;

    async fn notify(
        &self,
        _request: Request<NotifyRequest>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let notifier = Notifier::new(self.nodes.clone());
        let stream = futures::stream::unfold(notifier, |mut notifier| async move {
            let change = notifier.next().await?;
            Some((Ok(change), notifier))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(&str, &str)]) -> PeerSet {
        entries
            .iter()
            .map(|(name, addr)| ((*name).to_owned(), addr.parse().unwrap()))
            .collect()
    }

    fn summary(changes: &[ChangeNotification]) -> Vec<(String, String, ChangeNotificationType)> {
        changes
            .iter()
            .map(|c| (c.name.clone(), c.address.clone(), c.r#type()))
            .collect()
    }

    #[test]
    fn names_follow_upstream_full_names() {
        assert_eq!(peer_name("default", "node-1"), "node-1");
        assert_eq!(peer_name("", "node-1"), "node-1");
        assert_eq!(peer_name("c1", "node-1"), "c1/node-1");
        let (name, address) = peer_entry("c1", "n", "10.0.0.1".parse().unwrap(), 4244);
        assert_eq!(
            (name.as_str(), address.to_string().as_str()),
            ("c1/n", "10.0.0.1:4244")
        );
        let (_, v6) = peer_entry("c1", "n", "fd00::1".parse().unwrap(), 4244);
        assert_eq!(v6.to_string(), "[fd00::1]:4244");
    }

    #[test]
    fn changes_between_sets() {
        use ChangeNotificationType::*;
        let old = set(&[("a", "10.0.0.1:4244"), ("b", "10.0.0.2:4244")]);
        let new = set(&[("b", "10.0.0.9:4244"), ("c", "10.0.0.3:4244")]);
        assert_eq!(
            summary(&changes(&old, &new)),
            vec![
                ("a".into(), "10.0.0.1:4244".into(), PeerDeleted),
                ("b".into(), "10.0.0.9:4244".into(), PeerUpdated),
                ("c".into(), "10.0.0.3:4244".into(), PeerAdded),
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[tokio::test]
    async fn notifier_lists_then_follows_and_ends_with_the_sender() {
        use ChangeNotificationType::*;
        let (tx, rx) = watch::channel(set(&[("a", "10.0.0.1:4244")]));
        let mut notifier = Notifier::new(rx);
        let first = notifier.next().await.unwrap();
        assert_eq!((first.name.as_str(), first.r#type()), ("a", PeerAdded));
        tx.send_replace(set(&[("b", "10.0.0.2:4244")]));
        let a = notifier.next().await.unwrap();
        let b = notifier.next().await.unwrap();
        assert_eq!((a.name.as_str(), a.r#type()), ("a", PeerDeleted));
        assert_eq!((b.name.as_str(), b.r#type()), ("b", PeerAdded));
        drop(tx);
        assert!(notifier.next().await.is_none());
    }
}
