//! The publishing half of `clustermesh-apiserver`: it makes a cluster's own etcd readable by
//! the agents (or kvstoremesh instances) of other clusters.
//!
//! Upstream's clustermesh-apiserver copies Kubernetes objects into its etcd. Without Kubernetes
//! our agents already write their nodes, identities, ipcache entries and services into the
//! cluster's etcd, so what is left to publish is what tells a reader that this state is complete
//! and alive:
//! - the cluster configuration `cilium/cluster-config/<cluster>` (id and capabilities), which a
//!   remote reader validates before anything else;
//! - the sync canaries `cilium/synced/<cluster>/cilium/state/{nodes,services,identities,ip}/v1`
//!   (upstream's canary names: the prefix without the cluster, `id` or `default` suffix), which
//!   let a reader treat its listing of each prefix as complete;
//! - the heartbeat `cilium/.heartbeat`, rewritten every minute, whose silence for more than two
//!   minutes makes readers treat the connection as lost.
//!
//! Every key hangs on the publisher's own lease, as upstream's do, so a publisher that is gone
//! for good stops advertising the cluster once the lease runs out. A lost lease is replaced and
//! everything is written again at once; configuration and canaries are also rewritten
//! periodically (upstream enforces the cluster configuration every five minutes) in case
//! someone deleted them. A clean shutdown does not revoke the lease: a restarting publisher must
//! not make the whole cluster vanish from its peers for the few seconds it is away.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kvstore::keys::{
    self, Capabilities, ClusterConfig, IDENTITIES_PREFIX, IDENTITY_ID_PREFIX, IPCACHE_PREFIX,
    NODES_PREFIX, SERVICES_PREFIX,
};
use kvstore::lease::{DEFAULT_LEASE_TTL, LeaseKeeper};
use kvstore::{Backend, LeaseId};
use model::identity::{ClusterId, ClusterName};
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the cluster configuration and the sync canaries are rewritten (upstream's cluster
/// configuration enforcement interval).
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How long to wait before retrying a write that failed (etcd unreachable).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// The mesh size this cluster supports: 255 clusters (upstream's default without extended
/// cluster ids).
pub const MAX_CONNECTED_CLUSTERS: u32 = 255;

/// The ipcache's prefix without the address space (`default`): the name of its sync canary.
const IPCACHE_CANARY_PREFIX: &str = "cilium/state/ip/v1";

/// Why a publisher cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublisherError {
    /// A cluster in a mesh needs an id of its own; 0 means "not in a mesh".
    #[error("cluster id {0} cannot be published: a cluster in a mesh needs an id from 1 to 255")]
    ClusterIdUnset(ClusterId),
    /// An interval of zero would turn the loop into a busy loop.
    #[error("{name} must be longer than zero")]
    ZeroInterval { name: &'static str },
}

/// What to publish and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    pub cluster_name: ClusterName,
    /// 1-255.
    pub cluster_id: ClusterId,
    /// How often `cilium/.heartbeat` is rewritten (upstream: every minute).
    pub heartbeat_interval: Duration,
    /// How often the cluster configuration and the sync canaries are rewritten.
    pub resync_interval: Duration,
    /// TTL of the lease every published key hangs on.
    pub lease_ttl: Duration,
    /// Delay before a failed write is tried again.
    pub retry_interval: Duration,
}

impl PublisherConfig {
    /// The configuration of cluster `cluster_name` with id `cluster_id` and upstream's intervals.
    pub fn new(cluster_name: ClusterName, cluster_id: ClusterId) -> Self {
        PublisherConfig {
            cluster_name,
            cluster_id,
            heartbeat_interval: keys::HEARTBEAT_WRITE_INTERVAL,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
            lease_ttl: DEFAULT_LEASE_TTL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// Checks the id and the intervals.
    pub fn validate(&self) -> Result<(), PublisherError> {
        if self.cluster_id == ClusterId::UNSET {
            return Err(PublisherError::ClusterIdUnset(self.cluster_id));
        }
        for (name, value) in [
            ("heartbeat interval", self.heartbeat_interval),
            ("resync interval", self.resync_interval),
            ("lease TTL", self.lease_ttl),
            ("retry interval", self.retry_interval),
        ] {
            if value.is_zero() {
                return Err(PublisherError::ZeroInterval { name });
            }
        }
        Ok(())
    }
}

/// Publishes one cluster's configuration, sync canaries and heartbeat into its own etcd.
#[derive(Debug)]
pub struct Publisher {
    config: PublisherConfig,
    backend: Arc<dyn Backend>,
}

impl Publisher {
    /// A publisher writing into `backend` (the cluster's own etcd).
    pub fn new(config: PublisherConfig, backend: Arc<dyn Backend>) -> Result<Self, PublisherError> {
        config.validate()?;
        Ok(Publisher { config, backend })
    }

    /// The cluster configuration this publisher writes:
    /// `{"id":N,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}`.
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            id: u32::from(self.config.cluster_id.get()),
            capabilities: Capabilities {
                synced_canaries: true,
                cached: false,
                max_connected_clusters: MAX_CONNECTED_CLUSTERS,
                service_exports_enabled: None,
            },
        }
    }

    /// The sync canary keys this publisher writes, in the order it writes them.
    pub fn sync_canary_keys(&self) -> Vec<String> {
        self.published_prefixes()
            .iter()
            .map(|(canary, _)| keys::sync_canary_key(self.config.cluster_name.as_str(), canary))
            .collect()
    }

    /// Pairs of (canary prefix, prefix holding the data it vouches for).
    fn published_prefixes(&self) -> [(&'static str, String); 4] {
        let cluster = self.config.cluster_name.as_str();
        [
            (NODES_PREFIX, format!("{NODES_PREFIX}/{cluster}/")),
            (SERVICES_PREFIX, format!("{SERVICES_PREFIX}/{cluster}/")),
            (IDENTITIES_PREFIX, format!("{IDENTITY_ID_PREFIX}/")),
            (IPCACHE_CANARY_PREFIX, format!("{IPCACHE_PREFIX}/")),
        ]
    }

    /// Publishes until `shutdown` turns `true`. Failures (etcd unreachable, lease lost) are
    /// logged and retried; they never end the loop.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let cluster = self.config.cluster_name.to_string();
        let keeper = tokio::select! {
            () = stopped(&mut shutdown) => return,
            keeper = self.take_lease() => keeper,
        };
        let mut lease = keeper.lease();
        let mut lease_changes = keeper.subscribe();
        tracing::info!(%cluster, cluster_id = %self.config.cluster_id, %lease, "publishing cluster state");

        let mut listed = false;
        let mut next_publish = Instant::now();
        let mut next_heartbeat = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_publish {
                if !listed {
                    listed = self.list_published_prefixes().await;
                }
                next_publish = if listed && self.publish(lease).await {
                    now + self.config.resync_interval
                } else {
                    now + self.config.retry_interval
                };
            }
            if now >= next_heartbeat {
                next_heartbeat =
                    match keys::write_heartbeat(&*self.backend, SystemTime::now(), Some(lease))
                        .await
                    {
                        Ok(revision) => {
                            tracing::debug!(revision, "heartbeat written");
                            now + self.config.heartbeat_interval
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot write the kvstore heartbeat; retrying");
                            now + self
                                .config
                                .retry_interval
                                .min(self.config.heartbeat_interval)
                        }
                    };
            }
            tokio::select! {
                () = stopped(&mut shutdown) => break,
                changed = lease_changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    lease = *lease_changes.borrow_and_update();
                    tracing::info!(%lease, "lease replaced; publishing everything again");
                    next_publish = Instant::now();
                    next_heartbeat = Instant::now();
                }
                () = tokio::time::sleep_until(next_publish.min(next_heartbeat)) => {}
            }
        }
        // Dropping the keeper stops the renewals without revoking (see the module docs).
        drop(keeper);
        tracing::info!(%cluster, "stopped publishing cluster state");
    }

    async fn take_lease(&self) -> LeaseKeeper {
        loop {
            match LeaseKeeper::start(Arc::clone(&self.backend), self.config.lease_ttl).await {
                Ok(keeper) => return keeper,
                Err(error) => {
                    tracing::warn!(%error, "cannot take a kvstore lease; retrying");
                    tokio::time::sleep(self.config.retry_interval).await;
                }
            }
        }
    }

    /// Lists every published prefix once: the agents of this cluster write their state directly
    /// into etcd, so a successful listing is the moment the state is as complete as it gets.
    async fn list_published_prefixes(&self) -> bool {
        for (canary, prefix) in self.published_prefixes() {
            match self.backend.list_prefix(&prefix).await {
                Ok(listing) => tracing::info!(
                    prefix = %canary,
                    keys = listing.kvs.len(),
                    revision = listing.revision,
                    "listed published prefix"
                ),
                Err(error) => {
                    tracing::warn!(%prefix, %error, "cannot list published prefix; retrying");
                    return false;
                }
            }
        }
        true
    }

    /// Writes the cluster configuration, then the sync canaries. True when all writes succeeded.
    async fn publish(&self, lease: LeaseId) -> bool {
        let cluster = self.config.cluster_name.as_str();
        let config = self.cluster_config();
        if let Err(error) =
            keys::write_cluster_config(&*self.backend, cluster, &config, Some(lease)).await
        {
            tracing::warn!(%cluster, %error, "cannot write the cluster configuration; retrying");
            return false;
        }
        let now = SystemTime::now();
        for (canary, _) in self.published_prefixes() {
            if let Err(error) =
                keys::write_sync_canary(&*self.backend, cluster, canary, now, Some(lease)).await
            {
                tracing::warn!(%cluster, prefix = canary, %error, "cannot write sync canary; retrying");
                return false;
            }
        }
        tracing::debug!(%cluster, %lease, "cluster configuration and sync canaries written");
        true
    }
}

/// Resolves once `shutdown` turns `true` (or its sender is gone). Returns nothing, so that no
/// borrow of the channel is held across the awaits of a `select!` branch.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A closed channel means nobody can ask for a stop any more: stop too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: u8) -> PublisherConfig {
        PublisherConfig::new(ClusterName::new("c1").unwrap(), ClusterId::new(id))
    }

    #[test]
    fn cluster_id_zero_and_zero_intervals_are_rejected() {
        assert_eq!(
            config(0).validate(),
            Err(PublisherError::ClusterIdUnset(ClusterId::UNSET))
        );
        let mut zero = config(1);
        zero.heartbeat_interval = Duration::ZERO;
        assert_eq!(
            zero.validate(),
            Err(PublisherError::ZeroInterval {
                name: "heartbeat interval"
            })
        );
        assert_eq!(config(255).validate(), Ok(()));
    }
}
