//! The operator's error type. Only configuration errors end [`crate::run`]; every other one ends
//! the current term of leadership (or one attempt of a duty) and is retried.

use kvstore::allocator::AllocatorError;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),

    #[error("kvstore {op} failed: {source}")]
    Kvstore {
        op: &'static str,
        #[source]
        source: kvstore::Error,
    },

    /// The leader lock's key is gone (session lease expired, or deleted by hand): another
    /// operator may be leading now.
    #[error("leadership lost: lock key {key:?} is gone")]
    LeadershipLost { key: String },

    #[error("watch of {prefix:?} ended")]
    WatchEnded { prefix: String },

    #[error("identity garbage collection failed: {0}")]
    IdentityGc(#[source] AllocatorError),
}

impl OperatorError {
    pub(crate) fn kvstore(op: &'static str) -> impl FnOnce(kvstore::Error) -> OperatorError {
        move |source| OperatorError::Kvstore { op, source }
    }
}
