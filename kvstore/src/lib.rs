//! The kvstore: a [`Backend`] trait with etcd semantics, two implementations (etcd and an
//! embedded in-memory store), Cilium's key layout as typed stores, and the identity allocator.
//!
//! # Layout
//! - [`backend`]: the trait, its value types, and [`BackendExt`] transactions built on it.
//! - [`error`]: the crate's error type.

pub mod backend;
pub mod error;

pub use backend::{
    Backend, BackendExt, BackendStatus, CmpOp, Compare, CompareTarget, KeyValue, LeaseId,
    ListResult, LockKey, Revision, Txn, TxnOp, TxnResponse, WatchEvent, WatchFrom, WatchStream,
};
pub use error::Error;
