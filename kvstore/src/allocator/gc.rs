//! Garbage collection of identities: the operator deletes master keys that no node references
//! any more (no slave key left), so their ids return to the pool.
//!
//! Each candidate is checked and deleted under the same distributed lock (`locks/<labels>`)
//! that allocation takes, and deleted only if it was not modified since it was listed
//! (`delete_if_unchanged`): an allocation that re-uses the identity concurrently wins. Upstream
//! marks candidates in one run and deletes them in the next because its collector locks
//! differently from its allocator; holding the allocator's own lock makes one pass safe.
//!
//! Master keys whose id does not parse, or whose value is not a usable (UTF-8, non-empty)
//! label string, are reported and left alone, as upstream skips them. Master keys of other
//! clusters' ranges are not ours to collect.

use std::time::Duration;

use model::identity::ClusterId;

use super::AllocatorError;
use crate::backend::{Backend, BackendExt};
use crate::keys::{
    IDENTITY_ID_PREFIX, identity_lock_key, identity_slave_prefix, is_slave_key_of,
    parse_identity_master_key,
};

/// What one garbage collection run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Master keys listed.
    pub scanned: usize,
    /// Master keys kept because at least one node references them.
    pub in_use: usize,
    /// Unreferenced master keys deleted.
    pub deleted: usize,
    /// Unreferenced master keys that changed before the delete (re-created or re-used); kept.
    pub raced: usize,
    /// Master keys outside the cluster's identity range; skipped.
    pub out_of_range: usize,
    /// Master keys that could not be interpreted; reported, not deleted.
    pub corrupt: Vec<CorruptMasterKey>,
}

/// A master key the collector could not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptMasterKey {
    pub key: String,
    pub message: String,
}

/// Deletes the unreferenced master keys of `cluster_id`'s identity range, at most
/// `max_deletes_per_sec` deletions per second (0: no limit). Stops at the first kvstore error;
/// a later run picks up where this one left off.
pub async fn gc(
    backend: &dyn Backend,
    cluster_id: ClusterId,
    max_deletes_per_sec: u32,
) -> Result<GcReport, AllocatorError> {
    let range = cluster_id.identity_range();
    let pause = (max_deletes_per_sec > 0).then(|| Duration::from_secs(1) / max_deletes_per_sec);
    let listing = backend
        .list_prefix(&format!("{IDENTITY_ID_PREFIX}/"))
        .await?;
    let mut report = GcReport {
        scanned: listing.kvs.len(),
        ..GcReport::default()
    };

    for kv in listing.kvs {
        let id = match parse_identity_master_key(&kv.key) {
            Ok(id) => id,
            Err(err) => {
                report.corrupt.push(CorruptMasterKey {
                    key: kv.key,
                    message: err.to_string(),
                });
                continue;
            }
        };
        if !range.contains(&id) {
            report.out_of_range += 1;
            continue;
        }
        let labels = match std::str::from_utf8(&kv.value) {
            Ok("") => {
                report.corrupt.push(CorruptMasterKey {
                    key: kv.key,
                    message: "value is empty".to_owned(),
                });
                continue;
            }
            Ok(labels) => labels,
            Err(_) => {
                report.corrupt.push(CorruptMasterKey {
                    key: kv.key,
                    message: "value is not UTF-8".to_owned(),
                });
                continue;
            }
        };

        let lock = backend.lock(&identity_lock_key(labels)).await?;
        let outcome = collect_one(backend, &kv.key, labels, kv.mod_revision).await;
        if let Err(err) = backend.unlock(lock).await {
            tracing::warn!(key = %kv.key, error = %err, "failed to release identity lock");
        }
        match outcome? {
            Outcome::InUse => report.in_use += 1,
            Outcome::Raced => report.raced += 1,
            Outcome::Deleted => {
                report.deleted += 1;
                tracing::info!(key = %kv.key, %id, "deleted unused identity master key");
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    Ok(report)
}

enum Outcome {
    InUse,
    Deleted,
    Raced,
}

/// Checks one master key for references and deletes it if there are none. Runs under the
/// label set's lock.
async fn collect_one(
    backend: &dyn Backend,
    key: &str,
    labels: &str,
    mod_revision: i64,
) -> Result<Outcome, AllocatorError> {
    let prefix = identity_slave_prefix(labels);
    let slaves = backend.list_prefix(&format!("{prefix}/")).await?;
    if slaves
        .kvs
        .iter()
        .any(|kv| is_slave_key_of(&prefix, &kv.key))
    {
        return Ok(Outcome::InUse);
    }
    if backend.delete_if_unchanged(key, mod_revision).await? {
        Ok(Outcome::Deleted)
    } else {
        Ok(Outcome::Raced)
    }
}
