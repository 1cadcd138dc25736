//! Errors of the [`Datapath`](super::Datapath) boundary: one variant per operation, each
//! naming the map (or endpoint) and carrying the kernel's error as its source.

use std::io;

use super::ids::EndpointId;
use super::{MapKey, MapName};

/// A failed datapath operation. The kernel's `errno` (or the fake's injected fault) is the
/// `source`; [`error_chain`] renders the whole chain for status reports.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The map holds its maximum number of entries (the kernel's `E2BIG`/`ENOSPC`).
    #[error("map {map} is full ({capacity} entries)")]
    MapFull { map: MapName, capacity: u32 },
    /// A per-endpoint policy map that was never created (or was removed).
    #[error("map {map} does not exist")]
    NoSuchMap { map: MapName },
    /// `update` was given a value of another map's kind.
    #[error("value for {key} in map {map} is a {value_map_kind} value")]
    ValueKind {
        map: MapName,
        key: Box<MapKey>,
        value_map_kind: &'static str,
    },
    #[error("update of {key} in map {map} failed")]
    MapUpdate {
        map: MapName,
        key: Box<MapKey>,
        #[source]
        source: io::Error,
    },
    #[error("delete of {key} from map {map} failed")]
    MapDelete {
        map: MapName,
        key: Box<MapKey>,
        #[source]
        source: io::Error,
    },
    #[error("listing map {map} failed")]
    MapList {
        map: MapName,
        #[source]
        source: io::Error,
    },
    #[error("listing the pinned policy maps failed")]
    PolicyMapList {
        #[source]
        source: io::Error,
    },
    #[error("creating the policy map of endpoint {endpoint} failed")]
    PolicyMapCreate {
        endpoint: EndpointId,
        #[source]
        source: io::Error,
    },
    #[error("removing the policy map of endpoint {endpoint} failed")]
    PolicyMapRemove {
        endpoint: EndpointId,
        #[source]
        source: io::Error,
    },
    #[error("attaching the programs of endpoint {endpoint} to {ifname} failed")]
    Attach {
        endpoint: EndpointId,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("detaching the programs of endpoint {endpoint} failed")]
    Detach {
        endpoint: EndpointId,
        #[source]
        source: io::Error,
    },
    #[error("conntrack garbage collection of {map} failed")]
    ConntrackGc {
        map: MapName,
        #[source]
        source: io::Error,
    },
    #[error("reading cilium_metrics failed")]
    ReadMetrics {
        #[source]
        source: io::Error,
    },
}

/// The error and its sources joined with ": ", for logs and per-entry status.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_includes_the_source() {
        let err = DatapathError::MapList {
            map: MapName::Ipcache,
            source: io::Error::other("permission denied"),
        };
        assert_eq!(
            error_chain(&err),
            "listing map cilium_ipcache_v2 failed: permission denied"
        );
    }
}
