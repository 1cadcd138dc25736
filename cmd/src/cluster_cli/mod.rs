//! The library half of `cilium`, the cluster CLI: reading, validating and writing the
//! cluster-wide desired state that agents in kvstore mode enforce (DESIGN 4.5 ext), apart
//! from flag parsing and printing (in `src/bin/cilium.rs`).
//!
//! Everything a command writes is validated first, in full: an input with any invalid
//! document writes nothing. The key layout and value encoding come from
//! [`actors::clusterstate`], the same code the agents' watchers read with.
//!
//! # Layout
//! - [`policy`]: `cilium policy apply|delete|list` (`cilium/config/policies/v1/...`).
//! - [`service`]: `cilium service apply|delete|list` (`cilium/state/services/v1/...`).
//! - [`mesh`]: `cilium clustermesh status`, from the agents' status.

pub mod mesh;
pub mod policy;
pub mod service;

use std::path::PathBuf;

use kvstore::{Backend, Txn, TxnOp};
use serde::Serialize;

/// Errors of the cluster CLI's commands. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterCliError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The input does not parse or a document does not validate; the message names the
    /// document and the field.
    #[error("invalid policy input, nothing was written: {0}")]
    InvalidPolicy(#[source] model::policy::PolicyError),
    #[error("policy {position} ({kind} {name}), nothing was written: {source}")]
    UnsupportedPolicy {
        /// 1-based position among the input's policies.
        position: usize,
        kind: &'static str,
        name: String,
        #[source]
        source: model::policy::PolicyError,
    },
    #[error("the input has no policy documents")]
    NoPolicies,
    #[error("the input has two documents for {key}, nothing was written: keep one")]
    DuplicateKey { key: String },
    #[error("service document {document}, nothing was written: {message}")]
    InvalidService { document: usize, message: String },
    #[error("the input has no service documents")]
    NoServices,
    #[error(
        "service document {document} belongs to cluster {found:?}, not {expected:?}: \
         pass --cluster-name {found} or fix the document"
    )]
    WrongCluster {
        document: usize,
        found: String,
        expected: String,
    },
    #[error("the kvstore request failed (is etcd reachable with the --kvstore-opt given?)")]
    Kvstore(#[from] kvstore::Error),
}

/// What `apply` did with one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyResult {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for ApplyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyResult::Created => "created",
            ApplyResult::Configured => "configured",
            ApplyResult::Unchanged => "unchanged",
        })
    }
}

/// etcd's default limit of operations in one transaction.
const MAX_TXN_OPS: usize = 128;

/// Writes `values` (key, bytes), skipping keys that already hold exactly those bytes, and
/// returns what happened to each. Writes go in transactions of up to [`MAX_TXN_OPS`] keys,
/// so a small input lands atomically.
async fn write_keys(
    backend: &dyn Backend,
    values: Vec<(String, Vec<u8>)>,
) -> Result<Vec<ApplyResult>, ClusterCliError> {
    let mut results = Vec::with_capacity(values.len());
    let mut ops = Vec::new();
    for (key, value) in values {
        let result = match backend.get(&key).await? {
            None => ApplyResult::Created,
            Some(kv) if kv.value == value => ApplyResult::Unchanged,
            Some(_) => ApplyResult::Configured,
        };
        if result != ApplyResult::Unchanged {
            ops.push(TxnOp::Put {
                key,
                value,
                lease: None,
            });
        }
        results.push(result);
    }
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(MAX_TXN_OPS));
        backend
            .txn(Txn {
                compares: Vec::new(),
                success: std::mem::replace(&mut ops, rest),
                failure: Vec::new(),
            })
            .await?;
    }
    Ok(results)
}
