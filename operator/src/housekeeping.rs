//! The leader's periodic duties besides IPAM: the kvstore heartbeat and identity garbage
//! collection.
//!
//! The heartbeat key `cilium/.heartbeat` is rewritten every heartbeat interval with the current
//! time, attached to the operator's own lease (taken when leadership starts, kept alive by the
//! heartbeat itself): agents treat two minutes without a new value as a lost kvstore
//! connection. As upstream, the lease is not revoked when the operator stops: the last
//! heartbeat stays readable until the lease runs out, and a new leader's write moves the key
//! to its own lease.
//!
//! Identity GC deletes master keys no node references any more ([`kvstore::allocator::gc`]
//! checks and deletes each one under the allocator's own per-label lock, so it is safe against
//! concurrent allocation). It runs only after checking that this operator still holds the
//! leader lock.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kvstore::{Backend, LeaseId};
use model::identity::ClusterId;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::OperatorError;
use crate::leader::Leadership;
use crate::metrics::OperatorMetrics;

/// Writes the heartbeat now and every `interval`, keeping the lease alive (and replacing it
/// once expired) on the way. Failures are logged and retried at the next tick: a missed
/// heartbeat is no reason to give up leadership.
pub(crate) async fn heartbeat(
    backend: Arc<dyn Backend>,
    interval: Duration,
    lease_ttl: Duration,
    metrics: OperatorMetrics,
) -> Result<Infallible, OperatorError> {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lease: Option<LeaseId> = None;
    loop {
        ticks.tick().await;
        let alive = match lease {
            Some(id) => match backend.keep_alive(id).await {
                Ok(_) => Some(id),
                Err(kvstore::Error::LeaseNotFound(_)) => {
                    tracing::warn!(lease = %id, "operator lease expired; taking a new one");
                    None
                }
                Err(error) => {
                    tracing::warn!(lease = %id, %error, "cannot refresh operator lease");
                    Some(id)
                }
            },
            None => None,
        };
        let id = match alive {
            Some(id) => id,
            None => match backend.grant_lease(lease_ttl).await {
                Ok(id) => id,
                Err(error) => {
                    tracing::warn!(%error, "cannot take an operator lease; heartbeat skipped");
                    metrics.heartbeat_written(false);
                    lease = None;
                    continue;
                }
            },
        };
        lease = Some(id);
        match kvstore::keys::write_heartbeat(&*backend, SystemTime::now(), Some(id)).await {
            Ok(revision) => {
                tracing::debug!(revision, "heartbeat written");
                metrics.heartbeat_written(true);
            }
            Err(error) => {
                metrics.heartbeat_written(false);
                if matches!(error, kvstore::Error::LeaseNotFound(_)) {
                    lease = None;
                }
                tracing::warn!(%error, "cannot write the kvstore heartbeat");
            }
        }
    }
}

/// Runs identity GC every `interval`, the first time one interval after leadership starts
/// (a leader that flaps does not re-scan every identity each time).
pub(crate) async fn identity_gc(
    backend: Arc<dyn Backend>,
    leadership: Leadership,
    cluster_id: ClusterId,
    interval: Duration,
    deletes_per_sec: u32,
    metrics: OperatorMetrics,
) -> Result<Infallible, OperatorError> {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match leadership.ensure().await {
            Ok(()) => {}
            Err(error @ OperatorError::LeadershipLost { .. }) => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "identity garbage collection skipped: cannot confirm leadership");
                continue;
            }
        }
        // A run holds per-label allocator locks while it checks and deletes; dropped halfway
        // (the term ends, the operator stops) it would leave one held for as long as this
        // client's lock session lives, blocking every agent allocating those labels. So the
        // run is a task of its own that finishes even if this future is dropped; finishing
        // after leadership is gone is safe, because each deletion is checked under the lock.
        let started = Instant::now();
        let run = tokio::spawn({
            let backend = Arc::clone(&backend);
            async move { kvstore::allocator::gc(&*backend, cluster_id, deletes_per_sec).await }
        });
        let outcome = match run.await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(%error, "identity garbage collection task failed");
                metrics.identity_gc_failed(started.elapsed());
                continue;
            }
        };
        match outcome {
            Ok(report) => {
                metrics.identity_gc_succeeded(&report, started.elapsed());
                tracing::info!(
                    scanned = report.scanned,
                    deleted = report.deleted,
                    in_use = report.in_use,
                    raced = report.raced,
                    out_of_range = report.out_of_range,
                    corrupt = report.corrupt.len(),
                    "identity garbage collection done"
                );
                for corrupt in &report.corrupt {
                    tracing::warn!(
                        key = %corrupt.key,
                        error = %corrupt.message,
                        "corrupt identity master key left alone; fix or delete it by hand"
                    );
                }
            }
            Err(error) => {
                metrics.identity_gc_failed(started.elapsed());
                let error = OperatorError::IdentityGc(error);
                tracing::warn!(%error, "identity garbage collection failed; retrying at the next interval");
            }
        }
    }
}
