//! Cilium's key layout under `cilium/` and the typed values stored there (DESIGN 4.5).
//!
//! Everything here is wire-compatible with upstream Cilium, so that our agents, operator and
//! clustermesh-apiserver can share an etcd with upstream components and read a remote upstream
//! cluster: key paths are built as upstream builds them (`path.Join`), and values are encoded
//! and decoded as Go's `encoding/json` does (field order, `null`s, base64 masks, case-insensitive
//! field names; the private `gojson` module does that).
//!
//! # Layout
//! - this module: prefix constants and key builders/parsers.
//! - [`store`]: [`TypedStore`], a typed view of one prefix with list, get, upsert, delete and
//!   a watch that skips undecodable values.
//! - [`ipcache`], [`node`], [`service`], [`cluster_config`], [`ipam`]: the value types.
//! - [`canary`]: sync canaries and the heartbeat.

mod gojson;

pub mod canary;
pub mod cluster_config;
pub mod ipam;
pub mod ipcache;
pub mod node;
pub mod service;
pub mod store;

use model::identity::NumericIdentity;

use crate::error::Error;

pub use canary::{
    HEARTBEAT_TIMEOUT, HEARTBEAT_WRITE_INTERVAL, decode_timestamp, encode_timestamp,
    wait_for_sync_canary, write_heartbeat, write_sync_canary,
};
pub use cluster_config::{Capabilities, ClusterConfig, read_cluster_config, write_cluster_config};
pub use gojson::IpMask;
pub use ipam::IpamAllocation;
pub use ipcache::{IpCacheEntry, NamedPort};
pub use node::{Node, NodeAddress, NodeCidr};
pub use service::{BackendZone, ClusterService, ForZone, L4Addr, PortConfiguration};
pub use store::{StoreValue, TypedEvent, TypedStore};

/// The root of every key Cilium writes.
pub const BASE_PREFIX: &str = "cilium";

/// Everything the identity allocator owns.
pub const IDENTITIES_PREFIX: &str = "cilium/state/identities/v1";
/// Master keys: `id/<n>` = label string, created once, never leased.
pub const IDENTITY_ID_PREFIX: &str = "cilium/state/identities/v1/id";
/// Slave keys: `value/<labels>/<node IP>` = decimal id, leased by the node using it.
pub const IDENTITY_VALUE_PREFIX: &str = "cilium/state/identities/v1/value";
/// Distributed locks serialising allocation (and garbage collection) per label set.
pub const IDENTITY_LOCKS_PREFIX: &str = "cilium/state/identities/v1/locks";

/// ipcache entries of the default address space, `<prefix>/<ip or cidr>`.
pub const IPCACHE_PREFIX: &str = "cilium/state/ip/v1/default";
/// Node records, `<prefix>/<cluster>/<node name>`.
pub const NODES_PREFIX: &str = "cilium/state/nodes/v1";
/// Cluster services, `<prefix>/<cluster>/<namespace>/<name>`.
pub const SERVICES_PREFIX: &str = "cilium/state/services/v1";
/// Cluster configurations, `<prefix>/<cluster name>`.
pub const CLUSTER_CONFIG_PREFIX: &str = "cilium/cluster-config";
/// Sync canaries, `<prefix>/<cluster>/<synced prefix>`.
pub const SYNCED_PREFIX: &str = "cilium/synced";
/// The operator's heartbeat.
pub const HEARTBEAT_KEY: &str = "cilium/.heartbeat";
/// (ext) Network policies of a cluster without Kubernetes, `<prefix>/<namespace>/<name>`.
pub const POLICIES_PREFIX: &str = "cilium/config/policies/v1";
/// (ext) Pod CIDR allocations of a cluster without Kubernetes, `<prefix>/<cluster>/<node>`.
pub const IPAM_PREFIX: &str = "cilium/config/ipam/v1";

const STATE_PREFIX: &str = "cilium/state";
const CACHE_PREFIX: &str = "cilium/cache";

/// Joins key segments as Go's `path.Join` does (upstream builds every key with it): empty
/// segments are dropped, and the result is cleaned (`//`, `.` and `..` elements resolved).
pub fn join_key(segments: &[&str]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut absolute = false;
    let mut first = true;
    for segment in segments.iter().filter(|s| !s.is_empty()) {
        if first {
            absolute = segment.starts_with('/');
            first = false;
        }
        for part in segment.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if matches!(parts.last(), Some(last) if *last != "..") {
                        parts.pop();
                    } else if !absolute {
                        parts.push("..");
                    }
                }
                part => parts.push(part),
            }
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty(), first) {
        (_, _, true) => String::new(),
        (true, _, _) => format!("/{joined}"),
        (false, true, _) => ".".to_owned(),
        (false, false, _) => joined,
    }
}

/// The master key of identity `id`: `cilium/state/identities/v1/id/<n>`.
pub fn identity_master_key(id: NumericIdentity) -> String {
    format!("{IDENTITY_ID_PREFIX}/{id}")
}

/// The parent of every slave key of `labels` (a kvstore label string): a key is a slave key of
/// exactly these labels when its last `/` sits right after this prefix (see
/// [`is_slave_key_of`]).
pub fn identity_slave_prefix(labels: &str) -> String {
    join_key(&[IDENTITY_VALUE_PREFIX, labels])
}

/// The slave key node `node` (its IP) holds for `labels`.
pub fn identity_slave_key(labels: &str, node: &str) -> String {
    join_key(&[IDENTITY_VALUE_PREFIX, labels, node])
}

/// The allocation lock of `labels`.
pub fn identity_lock_key(labels: &str) -> String {
    join_key(&[IDENTITY_LOCKS_PREFIX, labels])
}

/// Whether `key` is a slave key of the label set whose slave prefix is `slave_prefix`. A prefix
/// listing of `value/a=b;` also returns the keys of `value/a=b;c=d;/...`; only keys whose last
/// `/` directly follows the prefix belong to it (upstream's `prefixMatchesKey`).
pub fn is_slave_key_of(slave_prefix: &str, key: &str) -> bool {
    key.starts_with(slave_prefix) && key.rfind('/') == Some(slave_prefix.len())
}

/// Parses a master key back into its identity.
pub fn parse_identity_master_key(key: &str) -> Result<NumericIdentity, Error> {
    let malformed = |message: &str| Error::MalformedKey {
        key: key.to_owned(),
        message: message.to_owned(),
    };
    let suffix = key
        .strip_prefix(IDENTITY_ID_PREFIX)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| malformed("not below the identity id prefix"))?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("identity is not a decimal number"));
    }
    suffix
        .parse::<u32>()
        .map(NumericIdentity::new)
        .map_err(|_| malformed("identity does not fit 32 bits"))
}

/// Splits a slave key into its label string and node suffix.
pub fn parse_identity_slave_key(key: &str) -> Result<(&str, &str), Error> {
    let malformed = |message: &str| Error::MalformedKey {
        key: key.to_owned(),
        message: message.to_owned(),
    };
    let rest = key
        .strip_prefix(IDENTITY_VALUE_PREFIX)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| malformed("not below the identity value prefix"))?;
    match rest.rsplit_once('/') {
        Some((labels, node)) if !labels.is_empty() && !node.is_empty() => Ok((labels, node)),
        _ => Err(malformed("expected <labels>/<node>")),
    }
}

/// The ipcache key of an IP (`10.0.0.1`) or CIDR (`10.0.0.0/24`), as written by
/// [`IpCacheEntry::prefix_string`].
pub fn ipcache_key(prefix_string: &str) -> String {
    format!("{IPCACHE_PREFIX}/{prefix_string}")
}

/// The key of a node record.
pub fn node_key(cluster: &str, name: &str) -> String {
    join_key(&[NODES_PREFIX, cluster, name])
}

/// The key of a cluster service.
pub fn service_key(cluster: &str, namespace: &str, name: &str) -> String {
    join_key(&[SERVICES_PREFIX, cluster, namespace, name])
}

/// The key of a cluster's configuration.
pub fn cluster_config_key(cluster: &str) -> String {
    join_key(&[CLUSTER_CONFIG_PREFIX, cluster])
}

/// The sync canary `cluster` writes once `prefix` (a full prefix such as
/// [`NODES_PREFIX`]) is synchronised: `cilium/synced/<cluster>/<prefix>`.
pub fn sync_canary_key(cluster: &str, prefix: &str) -> String {
    join_key(&[SYNCED_PREFIX, cluster, prefix])
}

/// Upstream's `StateToCachePrefix`: where kvstoremesh mirrors a `cilium/state/...` prefix of a
/// remote cluster (`cilium/cache/...`). Other prefixes are returned unchanged. The mirrored
/// keys then sit below `<cache prefix>/<remote cluster>/...` (for the ipcache the remote
/// cluster name replaces the `default` address space).
pub fn state_to_cache_prefix(prefix: &str) -> String {
    match prefix.strip_prefix(STATE_PREFIX) {
        Some(rest) => format!("{CACHE_PREFIX}{rest}"),
        None => prefix.to_owned(),
    }
}

/// (ext) The key of a network policy document.
pub fn policy_key(namespace: &str, name: &str) -> String {
    join_key(&[POLICIES_PREFIX, namespace, name])
}

/// (ext) The key of a node's pod CIDR allocation.
pub fn ipam_key(cluster: &str, node: &str) -> String {
    join_key(&[IPAM_PREFIX, cluster, node])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_key_matches_go_path_join() {
        assert_eq!(join_key(&["a", "b"]), "a/b");
        assert_eq!(join_key(&["a/", "/b/"]), "a/b");
        assert_eq!(join_key(&["a", "", "b"]), "a/b");
        assert_eq!(join_key(&["a", "./b", "../c"]), "a/c");
        assert_eq!(join_key(&["a", "..", ".."]), "..");
        assert_eq!(join_key(&["/a", "..", ".."]), "/");
        assert_eq!(join_key(&["", ""]), "");
        assert_eq!(join_key(&["a", ".."]), ".");
    }

    #[test]
    fn state_to_cache_prefix_only_rewrites_state() {
        assert_eq!(
            state_to_cache_prefix("cilium/state/nodes/v1"),
            "cilium/cache/nodes/v1"
        );
        assert_eq!(state_to_cache_prefix("cilium/foo/bar"), "cilium/foo/bar");
        assert_eq!(
            state_to_cache_prefix("cilium/foo/cilium/state/x"),
            "cilium/foo/cilium/state/x"
        );
    }
}
