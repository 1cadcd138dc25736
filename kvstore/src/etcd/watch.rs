//! Prefix watches that survive etcd restarts and connection loss.
//!
//! One spawned task per watch owns the etcd watch stream and feeds a bounded channel that the
//! returned [`WatchStream`] reads; the task ends as soon as the stream is dropped (which also
//! drops, and so cancels, the etcd watch). The task remembers the last revision it delivered and,
//! when the etcd stream breaks, re-creates it from that revision + 1 with capped exponential
//! backoff, dropping any event at or below the revision already delivered. If etcd has compacted
//! the revisions it still needs, a [`WatchFrom::List`] watch re-lists the prefix and emits only
//! the difference to what it delivered (it tracks key → mod revision for that); a
//! [`WatchFrom::AfterRevision`] watch yields [`Error::Compacted`] and ends.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KvClient, WatchClient, WatchOptions, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::backend::{ListResult, Revision, WatchEvent, WatchFrom, WatchStream};
use crate::error::Error;

use super::{convert_kv, header_revision, map_error, with_timeout};

/// Events buffered between the watch task and the consumer before the task waits.
const CHANNEL_CAPACITY: usize = 256;
/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Reconnect delays never grow beyond this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reads every key under `prefix` at one revision, in key order.
pub(crate) async fn list(
    kv: KvClient,
    timeout: Duration,
    prefix: &str,
) -> Result<ListResult, Error> {
    let mut kv = kv;
    let response = with_timeout(
        "list_prefix",
        timeout,
        kv.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    Ok(ListResult {
        kvs: response.kvs().iter().filter_map(convert_kv).collect(),
        revision: header_revision(response.header()),
    })
}

/// Starts a watch. For [`WatchFrom::List`] the listing happens here, so that an unreachable etcd
/// is reported to the caller instead of being retried inside the stream.
pub(crate) async fn start(
    kv: KvClient,
    watch: WatchClient,
    timeout: Duration,
    prefix: &str,
    from: WatchFrom,
) -> Result<WatchStream, Error> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut task = WatchTask {
        kv,
        watch,
        timeout,
        prefix: prefix.to_owned(),
        tx,
        last_delivered: 0,
        known: None,
    };
    let listing = match from {
        WatchFrom::List => Some(list(task.kv.clone(), timeout, prefix).await?),
        WatchFrom::AfterRevision(revision) => {
            task.last_delivered = revision;
            None
        }
    };
    tokio::spawn(task.run(listing));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

struct WatchTask {
    kv: KvClient,
    watch: WatchClient,
    timeout: Duration,
    prefix: String,
    tx: mpsc::Sender<Result<WatchEvent, Error>>,
    /// Every change up to this revision has been delivered.
    last_delivered: Revision,
    /// Key → mod revision of what the consumer holds; only for `WatchFrom::List`, which must
    /// re-list after a compaction and emit only the difference.
    known: Option<HashMap<String, Revision>>,
}

/// Why following the etcd watch stopped.
enum Stop {
    /// The consumer dropped the stream.
    Closed,
    /// The connection or the etcd watch broke; reconnect.
    Broken(String),
    /// etcd no longer has the revisions after `last_delivered`.
    Compacted(Revision),
}

impl WatchTask {
    async fn run(mut self, listing: Option<ListResult>) {
        if let Some(listing) = listing {
            let mut known = HashMap::with_capacity(listing.kvs.len());
            self.last_delivered = listing.revision;
            for kv in listing.kvs {
                known.insert(kv.key.clone(), kv.mod_revision);
                if !self.send(WatchEvent::Create(kv)).await {
                    return;
                }
            }
            self.known = Some(known);
            if !self
                .send(WatchEvent::ListDone {
                    revision: listing.revision,
                })
                .await
            {
                return;
            }
        }
        let mut backoff = Backoff::default();
        let mut reconnecting = false;
        loop {
            match self.follow(&mut backoff, &mut reconnecting).await {
                Stop::Closed => return,
                Stop::Broken(error) => {
                    reconnecting = true;
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        prefix = %self.prefix,
                        revision = self.last_delivered,
                        %error,
                        retry_in = ?delay,
                        "etcd watch broken; reconnecting"
                    );
                    if !self.pause(delay).await {
                        return;
                    }
                }
                Stop::Compacted(compact_revision) => {
                    if self.known.is_none() {
                        let error = Error::Compacted {
                            prefix: self.prefix.clone(),
                            revision: self.last_delivered,
                            compact_revision,
                        };
                        // The stream ends after this item either way.
                        let _ = self.tx.send(Err(error)).await;
                        return;
                    }
                    tracing::warn!(
                        prefix = %self.prefix,
                        revision = self.last_delivered,
                        compact_revision,
                        "etcd compacted the history this watch needs; re-listing"
                    );
                    match self.relist().await {
                        Ok(true) => {
                            tracing::info!(
                                prefix = %self.prefix,
                                revision = self.last_delivered,
                                "watch resumed after re-list"
                            );
                            reconnecting = false;
                        }
                        Ok(false) => return,
                        Err(error) => {
                            reconnecting = true;
                            let delay = backoff.next_delay();
                            tracing::warn!(prefix = %self.prefix, %error, retry_in = ?delay, "re-list failed");
                            if !self.pause(delay).await {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Follows the etcd watch from `last_delivered + 1` until it stops.
    async fn follow(&mut self, backoff: &mut Backoff, reconnecting: &mut bool) -> Stop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.last_delivered.saturating_add(1));
        let mut client = self.watch.clone();
        let opened = tokio::select! {
            () = self.tx.closed() => return Stop::Closed,
            opened = with_timeout("watch", self.timeout, client.watch(self.prefix.clone(), Some(options))) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => return Stop::Broken(error.to_string()),
        };
        loop {
            let message = tokio::select! {
                () = self.tx.closed() => return Stop::Closed,
                message = stream.message() => message,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Stop::Broken("etcd closed the watch stream".to_owned()),
                Err(error) => return Stop::Broken(map_error("watch", error).to_string()),
            };
            if response.compact_revision() > 0 {
                return Stop::Compacted(response.compact_revision());
            }
            if response.canceled() {
                return Stop::Broken(format!(
                    "etcd canceled the watch: {}",
                    response.cancel_reason()
                ));
            }
            backoff.reset();
            if std::mem::take(reconnecting) {
                tracing::info!(prefix = %self.prefix, revision = self.last_delivered, "etcd watch resumed");
            }
            if !self.deliver(&response).await {
                return Stop::Closed;
            }
        }
    }

    /// Translates and forwards the events of one response, skipping those already delivered.
    /// Returns false when the consumer is gone.
    async fn deliver(&mut self, response: &WatchResponse) -> bool {
        // One response can carry several events of the same revision (a transaction), so the
        // filter compares against the revision delivered before this response.
        let floor = self.last_delivered;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            if revision <= floor {
                continue;
            }
            let translated = match event.event_type() {
                EventType::Put => convert_kv(kv).map(|kv| {
                    if let Some(known) = &mut self.known {
                        known.insert(kv.key.clone(), kv.mod_revision);
                    }
                    if kv.create_revision == kv.mod_revision {
                        WatchEvent::Create(kv)
                    } else {
                        WatchEvent::Modify(kv)
                    }
                }),
                EventType::Delete => std::str::from_utf8(kv.key()).ok().map(|key| {
                    if let Some(known) = &mut self.known {
                        known.remove(key);
                    }
                    WatchEvent::Delete {
                        key: key.to_owned(),
                        mod_revision: revision,
                    }
                }),
            };
            self.last_delivered = self.last_delivered.max(revision);
            if let Some(event) = translated
                && !self.send(event).await
            {
                return false;
            }
        }
        true
    }

    /// Re-lists the prefix and emits the difference to what was delivered, in key order.
    /// Returns false when the consumer is gone.
    async fn relist(&mut self) -> Result<bool, Error> {
        let listing = list(self.kv.clone(), self.timeout, &self.prefix).await?;
        let known = self.known.take().unwrap_or_default();
        let mut changes: BTreeMap<String, WatchEvent> = BTreeMap::new();
        let mut current = HashMap::with_capacity(listing.kvs.len());
        for kv in listing.kvs {
            current.insert(kv.key.clone(), kv.mod_revision);
            match known.get(&kv.key) {
                Some(&mod_revision) if mod_revision == kv.mod_revision => {}
                Some(_) => {
                    changes.insert(kv.key.clone(), WatchEvent::Modify(kv));
                }
                None => {
                    changes.insert(kv.key.clone(), WatchEvent::Create(kv));
                }
            }
        }
        for key in known.keys().filter(|key| !current.contains_key(*key)) {
            changes.insert(
                key.clone(),
                WatchEvent::Delete {
                    key: key.clone(),
                    // The real deletion revision is compacted away; the listing revision is the
                    // first at which the key is known to be gone.
                    mod_revision: listing.revision,
                },
            );
        }
        self.known = Some(current);
        self.last_delivered = listing.revision;
        for event in changes.into_values() {
            if !self.send(event).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn send(&self, event: WatchEvent) -> bool {
        self.tx.send(Ok(event)).await.is_ok()
    }

    /// Sleeps, returning false early if the consumer goes away meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.tx.closed() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Capped exponential backoff with jitter, so that many watches do not reconnect in lockstep.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        // Up to 25 % less than the nominal delay.
        base.mul_f64(1.0 - fastrand::f64() / 4.0)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= BACKOFF_MIN && delays[0] >= BACKOFF_MIN.mul_f64(0.75));
        assert!(delays[1] > BACKOFF_MIN);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays[9] >= BACKOFF_MAX.mul_f64(0.75));
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }
}
