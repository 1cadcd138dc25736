//! The operator's configuration, with upstream's flag names and defaults, and its validation.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use model::identity::{ClusterId, ClusterName};

use crate::ipam::{CidrPool, PoolConfigError};

/// Upstream's default `--cluster-pool-ipv4-cidr`.
pub const DEFAULT_POOL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8);

/// Everything [`crate::run`] needs besides the kvstore.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// `--cluster-name`: whose nodes get pod CIDRs.
    pub cluster_name: ClusterName,
    /// `--cluster-id`: whose identity range the identity GC collects.
    pub cluster_id: ClusterId,
    /// `--cluster-pool-ipv4-cidr`.
    pub cluster_pool_ipv4_cidr: Ipv4Net,
    /// `--cluster-pool-ipv4-mask-size`.
    pub cluster_pool_ipv4_mask_size: u8,
    /// `--identity-gc-interval`: time between identity GC runs.
    pub identity_gc_interval: Duration,
    /// `--identity-gc-rate-limit`: at most this many identities deleted per
    /// `identity_gc_rate_interval` (0: no limit).
    pub identity_gc_rate_limit: u32,
    /// `--identity-gc-rate-interval`.
    pub identity_gc_rate_interval: Duration,
    /// `--nodes-gc-interval`: how long a node's record must be gone before its pod CIDR and
    /// its unleased ipcache entries are removed.
    pub nodes_gc_interval: Duration,
    /// How often the heartbeat key is written (upstream: every minute).
    pub heartbeat_interval: Duration,
    /// TTL of the operator's lease, which the heartbeat key is attached to.
    pub lease_ttl: Duration,
    /// Pause before retrying after a kvstore error.
    pub retry_interval: Duration,
}

impl Default for OperatorConfig {
    /// Upstream's defaults.
    fn default() -> Self {
        OperatorConfig {
            cluster_name: ClusterName::default(),
            cluster_id: ClusterId::UNSET,
            cluster_pool_ipv4_cidr: DEFAULT_POOL,
            cluster_pool_ipv4_mask_size: 24,
            identity_gc_interval: Duration::from_secs(15 * 60),
            identity_gc_rate_limit: 2500,
            identity_gc_rate_interval: Duration::from_secs(60),
            nodes_gc_interval: Duration::from_secs(5 * 60),
            heartbeat_interval: kvstore::keys::HEARTBEAT_WRITE_INTERVAL,
            lease_ttl: Duration::from_secs(15 * 60),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// A configuration the operator cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Pool(#[from] PoolConfigError),

    #[error("{flag} must be longer than zero")]
    ZeroDuration { flag: &'static str },

    #[error(
        "operator lease TTL {lease_ttl:?} must be longer than the heartbeat interval \
         {heartbeat_interval:?}, or the heartbeat key expires between writes"
    )]
    LeaseTooShort {
        lease_ttl: Duration,
        heartbeat_interval: Duration,
    },
}

impl OperatorConfig {
    /// Checks the configuration; returns the empty cluster pool it describes.
    pub fn validate(&self) -> Result<CidrPool, ConfigError> {
        let pool = CidrPool::new(
            self.cluster_pool_ipv4_cidr,
            self.cluster_pool_ipv4_mask_size,
        )?;
        for (flag, value) in [
            ("--identity-gc-interval", self.identity_gc_interval),
            (
                "--identity-gc-rate-interval",
                self.identity_gc_rate_interval,
            ),
            ("--nodes-gc-interval", self.nodes_gc_interval),
            ("heartbeat interval", self.heartbeat_interval),
            ("retry interval", self.retry_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration { flag });
            }
        }
        if self.lease_ttl <= self.heartbeat_interval {
            return Err(ConfigError::LeaseTooShort {
                lease_ttl: self.lease_ttl,
                heartbeat_interval: self.heartbeat_interval,
            });
        }
        Ok(pool)
    }

    /// The identity GC rate as deletions per second, as [`kvstore::allocator::gc`] takes it
    /// (upstream counts per rate interval; rounded up so a small limit never becomes "none").
    /// 0 means no limit.
    pub fn identity_gc_deletes_per_sec(&self) -> u32 {
        if self.identity_gc_rate_limit == 0 {
            return 0;
        }
        let per_sec = f64::from(self.identity_gc_rate_limit)
            / self.identity_gc_rate_interval.as_secs_f64().max(1e-3);
        // Saturating float-to-int conversion; at least one deletion per second.
        (per_sec.ceil() as u32).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams_and_valid() {
        let config = OperatorConfig::default();
        assert_eq!(config.cluster_pool_ipv4_cidr.to_string(), "10.0.0.0/8");
        assert_eq!(config.cluster_pool_ipv4_mask_size, 24);
        let pool = config.validate().unwrap();
        assert_eq!(pool.capacity(), 65536);
        // 2500 per minute.
        assert_eq!(config.identity_gc_deletes_per_sec(), 42);
    }

    #[test]
    fn invalid_configurations_name_the_flag() {
        let config = OperatorConfig {
            cluster_pool_ipv4_mask_size: 4,
            ..OperatorConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("--cluster-pool-ipv4-mask-size 4"),
            "{err}"
        );

        let config = OperatorConfig {
            nodes_gc_interval: Duration::ZERO,
            ..OperatorConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err(),
            ConfigError::ZeroDuration {
                flag: "--nodes-gc-interval"
            }
        );

        let config = OperatorConfig {
            lease_ttl: Duration::from_secs(30),
            ..OperatorConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::LeaseTooShort { .. })
        ));
    }

    #[test]
    fn gc_rate_converts_to_per_second() {
        let config = OperatorConfig {
            identity_gc_rate_limit: 10,
            identity_gc_rate_interval: Duration::from_secs(1),
            ..OperatorConfig::default()
        };
        assert_eq!(config.identity_gc_deletes_per_sec(), 10);
        let config = OperatorConfig {
            identity_gc_rate_limit: 1,
            identity_gc_rate_interval: Duration::from_secs(3600),
            ..config
        };
        assert_eq!(config.identity_gc_deletes_per_sec(), 1);
        let config = OperatorConfig {
            identity_gc_rate_limit: 0,
            ..config
        };
        assert_eq!(config.identity_gc_deletes_per_sec(), 0);
    }
}
