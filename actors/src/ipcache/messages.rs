//! The IpCache actor's messages and the snapshot it answers `Dump` with.

use std::net::IpAddr;

use actix::Message;
use datapath::api::{IpcacheKey, RemoteEndpointInfo};
use kvstore::LeaseId;
use serde::{Deserialize, Serialize};

use super::source::Source;
use super::state::IpEntry;

/// Sets `source`'s claim on a prefix. Answers whether the claim is now the effective one.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "Effective")]
pub struct UpsertIp {
    pub key: IpcacheKey,
    pub source: Source,
    pub entry: IpEntry,
}

/// Removes `source`'s claim on a prefix; a claim of lower precedence takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct DeleteIp {
    pub key: IpcacheKey,
    pub source: Source,
}

/// The effective entry of the longest local-cluster prefix containing `ip` (what Hubble uses
/// to name the identity behind an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "Option<LookupResult>")]
pub struct LookupIp {
    pub ip: IpAddr,
}

/// Publishes every local entry again with a new lease, after the old one was lost (the
/// kvstore deleted the keys attached to it). Ignored without kvstore sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct KvstoreLeaseChanged {
    pub lease: LeaseId,
}

/// Asks how many changes the claims have seen ([`super::IpCacheState::generation`]): a
/// cheap test of whether a [`Dump`] would differ from the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "u64")]
pub struct Generation;

/// Asks for every prefix with its effective claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "IpCacheDump")]
pub struct Dump;

/// Whether a claim counts now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effective {
    /// The claim is the effective entry of its prefix.
    Applied,
    /// A claim of higher precedence holds the prefix; this one takes over when that goes.
    ShadowedBy(Source),
}

/// The answer to [`LookupIp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResult {
    pub key: IpcacheKey,
    pub source: Source,
    pub entry: IpEntry,
}

/// One prefix in an [`IpCacheDump`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpEntry {
    pub key: IpcacheKey,
    /// The source of the effective claim.
    pub source: Source,
    pub entry: IpEntry,
    /// What the datapath holds for the prefix.
    pub datapath: RemoteEndpointInfo,
    /// Sources whose claims the effective one shadows, highest first.
    pub shadowed: Vec<Source>,
}

/// The kvstore publication as a dump shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvstoreSyncDump {
    /// Key names waiting to be written or deleted (including failed ones awaiting retry).
    pub pending: Vec<String>,
    /// The last write error, until a write succeeds.
    pub last_error: Option<String>,
}

/// The IpCache actor's state as the CLI and tests read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCacheDump {
    pub entries: Vec<DumpEntry>,
    /// `None` without kvstore sync.
    pub kvstore: Option<KvstoreSyncDump>,
}
