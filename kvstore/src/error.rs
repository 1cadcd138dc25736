//! The one error type of the kvstore crate.

use std::path::PathBuf;

use crate::backend::{LeaseId, Revision};

/// Everything that can go wrong talking to a kvstore or decoding what it holds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store did not answer (connection refused, timeout, no leader). Retry later.
    #[error("kvstore unavailable during {op}: {message}")]
    Unavailable { op: &'static str, message: String },

    /// The lease expired or was revoked; keys attached to it are gone.
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),

    /// A watch asked for history the store no longer keeps.
    #[error(
        "watch on {prefix:?} cannot resume after revision {revision}: history compacted up to {compact_revision}; re-list the prefix"
    )]
    Compacted {
        prefix: String,
        revision: Revision,
        compact_revision: Revision,
    },

    /// The etcd configuration file could not be used.
    #[error("etcd config {path}: {message}")]
    Config { path: PathBuf, message: String },

    /// A value read from the store does not decode as the key's type. The key is named so that
    /// the operator can find and fix (or delete) it.
    #[error("cannot decode value of {key:?}: {message}")]
    Decode { key: String, message: String },

    /// A key does not follow the layout its prefix promises.
    #[error("malformed key {key:?}: {message}")]
    MalformedKey { key: String, message: String },

    /// Any other failure the store reported for an operation.
    #[error("kvstore {op} failed: {message}")]
    Backend { op: &'static str, message: String },
}
