//! The `Backend` trait: the one boundary between the control plane and a key-value store.
//!
//! Its semantics are etcd's (revisions, prefix watches, leases, transactions, locks), because
//! the wire format of Cilium's cluster state assumes them. Every implementation (etcd, memory)
//! passes the same conformance suite, so code written against this trait behaves the same in
//! production, in tests and in the simulation.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::error::Error;

/// A store-wide revision: every mutation increments it by one, as in etcd.
pub type Revision = i64;

/// A lease: keys attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // etcd prints lease ids in hex (`etcdctl lease list`); so do we.
        write!(f, "{:x}", self.0)
    }
}

/// A key with its value and the revisions that created and last modified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the put that created the key (the first put after it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last put of the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// The answer to a prefix listing: the keys in key order and the store revision they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// List the prefix (one [`WatchEvent::Create`] per existing key, in key order), then emit
    /// [`WatchEvent::ListDone`], then follow changes made after the listing. If the store loses
    /// history while the stream is reconnecting (compaction), the stream re-lists and emits only
    /// the difference to what it already delivered, so the consumer never misses or repeats a change.
    List,
    /// Replay every change with a revision greater than the given one, then follow. No listing and
    /// no `ListDone`. If that history is no longer available the stream yields
    /// [`Error::Compacted`] and ends: the caller re-lists with [`WatchFrom::List`].
    AfterRevision(Revision),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key did not exist before this revision.
    Create(KeyValue),
    /// The key existed and was overwritten.
    Modify(KeyValue),
    /// The key was deleted (explicitly, or because its lease expired).
    Delete { key: String, mod_revision: Revision },
    /// The initial listing of a [`WatchFrom::List`] watch is complete: the consumer now holds the
    /// state of the prefix at `revision`.
    ListDone { revision: Revision },
}

impl WatchEvent {
    /// The key this event is about; `None` for `ListDone`.
    pub fn key(&self) -> Option<&str> {
        match self {
            WatchEvent::Create(kv) | WatchEvent::Modify(kv) => Some(&kv.key),
            WatchEvent::Delete { key, .. } => Some(key),
            WatchEvent::ListDone { .. } => None,
        }
    }
}

/// The events of one watch. Transient connection loss is handled inside the stream (reconnect
/// and resume); an `Err` item is final and the stream ends after it. Dropping the stream cancels
/// the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Error>> + Send>>;

/// Comparison operator of a transaction condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What a transaction condition compares. A key that does not exist has create and mod
/// revision 0, and every value comparison on it is false (etcd's rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    CreateRevision(CmpOp, Revision),
    ModRevision(CmpOp, Revision),
    Value(CmpOp, Vec<u8>),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    /// When true, `key` is a prefix and the condition must hold for every key under it
    /// (etcd's compare with a range end); a prefix with no keys compares like a missing key.
    pub prefix: bool,
}

impl Compare {
    /// True when the key does not exist.
    pub fn missing(key: impl Into<String>) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::CreateRevision(CmpOp::Equal, 0),
            prefix: false,
        }
    }

    /// True when no key starts with `prefix`.
    pub fn prefix_empty(prefix: impl Into<String>) -> Self {
        Compare {
            key: prefix.into(),
            target: CompareTarget::CreateRevision(CmpOp::Equal, 0),
            prefix: true,
        }
    }

    /// True when the key exists.
    pub fn exists(key: impl Into<String>) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::CreateRevision(CmpOp::Greater, 0),
            prefix: false,
        }
    }

    /// True when the key was last modified at `revision`.
    pub fn mod_revision(key: impl Into<String>, revision: Revision) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::ModRevision(CmpOp::Equal, revision),
            prefix: false,
        }
    }

    /// True when the key exists and holds exactly `value`.
    pub fn value(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::Value(CmpOp::Equal, value.into()),
            prefix: false,
        }
    }
}

/// A mutation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

/// An etcd-style transaction: if every compare holds, apply `success`, else apply `failure`,
/// atomically and at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// The outcome of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (and so `success` was applied).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
}

/// A held distributed lock. Pass it back to [`Backend::unlock`]; a lock whose holder vanishes is
/// released when the holder's lock session (a lease) expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey {
    /// The lock name that was asked for.
    pub name: String,
    /// The key that represents ownership in the store (`<name>/<lease hex>` in etcd).
    pub key: String,
}

/// Health of a backend as `cilium-dbg status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// `etcd` or `memory`.
    pub kind: &'static str,
    /// The endpoints the client talks to (empty for the memory backend).
    pub endpoints: Vec<String>,
    /// Server version, as the server reports it.
    pub version: String,
    /// Current store revision.
    pub revision: Revision,
}

/// A key-value store with etcd semantics. Implementations must be cheap to share
/// (`Arc<dyn Backend>`) and safe to call from many tasks at once.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error>;

    /// Reads every key starting with `prefix`, in key order, at one revision.
    async fn list_prefix(&self, prefix: &str) -> Result<ListResult, Error>;

    /// Writes a key, attached to `lease` if given (detached otherwise). Returns the new revision.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, Error>;

    /// Deletes a key. Returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, Error>;

    /// Deletes every key starting with `prefix`. Returns how many were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error>;

    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error>;

    /// Watches every key starting with `prefix`.
    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, Error>;

    /// Creates a lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, Error>;

    /// Refreshes a lease. Returns its TTL; [`Error::LeaseNotFound`] once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, Error>;

    /// Revokes a lease now, deleting every key attached to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), Error>;

    /// Acquires the distributed lock `name`, waiting as long as another client holds it. Wrap
    /// the call in a timeout to bound the wait.
    async fn lock(&self, name: &str) -> Result<LockKey, Error>;

    /// Releases a lock acquired with [`Backend::lock`].
    async fn unlock(&self, lock: LockKey) -> Result<(), Error>;

    /// Reports whether the store answers, and what it is.
    async fn status(&self) -> Result<BackendStatus, Error>;
}

/// Transactions every caller needs, written once on top of [`Backend::txn`].
#[async_trait]
pub trait BackendExt: Backend {
    /// Creates `key` only if it does not exist. Returns whether it was created.
    async fn create_only(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<bool, Error> {
        let txn = Txn {
            compares: vec![Compare::missing(key)],
            success: vec![TxnOp::Put {
                key: key.to_owned(),
                value,
                lease,
            }],
            failure: vec![],
        };
        Ok(self.txn(txn).await?.succeeded)
    }

    /// Writes `key` only if `condition_key` exists (upstream's `CreateIfExists`, used so that a
    /// slave key is never written for a master key that garbage collection just removed).
    async fn put_if_exists(
        &self,
        condition_key: &str,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<bool, Error> {
        let txn = Txn {
            compares: vec![Compare::exists(condition_key)],
            success: vec![TxnOp::Put {
                key: key.to_owned(),
                value,
                lease,
            }],
            failure: vec![],
        };
        Ok(self.txn(txn).await?.succeeded)
    }

    /// Replaces `key` only if it was last modified at `expected` (0: only if it does not exist).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<bool, Error> {
        let txn = Txn {
            compares: vec![Compare::mod_revision(key, expected)],
            success: vec![TxnOp::Put {
                key: key.to_owned(),
                value,
                lease,
            }],
            failure: vec![],
        };
        Ok(self.txn(txn).await?.succeeded)
    }

    /// Deletes `key` only if it was last modified at `expected`.
    async fn delete_if_unchanged(&self, key: &str, expected: Revision) -> Result<bool, Error> {
        let txn = Txn {
            compares: vec![Compare::mod_revision(key, expected)],
            success: vec![TxnOp::Delete {
                key: key.to_owned(),
            }],
            failure: vec![],
        };
        Ok(self.txn(txn).await?.succeeded)
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}
