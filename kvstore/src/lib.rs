//! The kvstore: a [`Backend`] trait with etcd semantics, two implementations (etcd and an
//! embedded in-memory store), Cilium's key layout as typed stores, and the identity allocator.
//!
//! # Layout
//! - [`backend`]: the trait, its value types, and [`BackendExt`] transactions built on it.
//! - [`error`]: the crate's error type.
//! - [`clock`]: the injected clock that drives lease expiry in the memory backend.
//! - [`memory`]: the embedded in-memory backend (revisions, history, leases, locks).
//! - [`config`]: the etcd configuration file (`--kvstore-opt etcd.config=FILE`).
//! - `etcd` (feature `etcd`, on by default): the etcd backend, with reconnect and watch resume.
//! - [`keys`]: Cilium's key layout under `cilium/` and the typed values stored there.
//! - [`allocator`]: the cluster-wide identity allocator and its garbage collector.
//! - [`lease`]: the agent's lease, renewed, and replaced (with notice) when lost.
//! - `testing` (feature `test-util`): the conformance suite and a private etcd for tests.

pub mod allocator;
pub mod backend;
pub mod clock;
pub mod config;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod keys;
pub mod lease;
pub mod memory;
#[cfg(feature = "test-util")]
pub mod testing;

pub use backend::{
    Backend, BackendExt, BackendStatus, CmpOp, Compare, CompareTarget, KeyValue, LeaseId,
    ListResult, LockKey, Revision, Txn, TxnOp, TxnResponse, WatchEvent, WatchFrom, WatchStream,
};
pub use error::Error;
