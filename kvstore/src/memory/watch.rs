//! Watch delivery: the registry of live watchers and the resumable stream each watch returns.
//!
//! Live events reach a watcher through its own unbounded channel, filled under the store lock
//! in revision order, so a slow consumer delays nothing and loses nothing. When the store cuts
//! watchers off (fault injection: a restart, an outage) the stream drains what it already
//! received and resumes from the last revision it delivered: it replays the store's history,
//! or, if compaction removed that history, a `List` watch re-lists the prefix and emits only
//! the difference to what its consumer already holds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::state::event_revision;
use super::{Inner, Shared};
use crate::backend::{Revision, WatchEvent, WatchFrom, WatchStream};
use crate::error::Error;

type WatcherId = u64;

#[derive(Debug)]
struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

/// The connected watchers of a store.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    last_id: WatcherId,
    entries: BTreeMap<WatcherId, Watcher>,
}

impl Watchers {
    fn register(&mut self, prefix: &str) -> (WatcherId, mpsc::UnboundedReceiver<WatchEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.last_id += 1;
        self.entries.insert(
            self.last_id,
            Watcher {
                prefix: prefix.to_owned(),
                tx,
            },
        );
        (self.last_id, rx)
    }

    fn remove(&mut self, id: WatcherId) {
        self.entries.remove(&id);
    }

    /// Cuts every watcher off; each stream resumes on its own once it has drained its channel.
    pub(super) fn disconnect_all(&mut self) {
        self.entries.clear();
    }

    /// Hands committed events to every watcher whose prefix they fall under.
    pub(super) fn broadcast(&mut self, events: &[WatchEvent]) {
        if events.is_empty() {
            return;
        }
        self.entries.retain(|_, watcher| {
            events
                .iter()
                .filter(|e| e.key().is_some_and(|k| k.starts_with(&watcher.prefix)))
                // A send fails only when the stream was dropped: forget that watcher.
                .all(|e| watcher.tx.send(e.clone()).is_ok())
        });
    }
}

enum Mode {
    /// A `List` watch remembers the mod revision of every key its consumer holds, so that a
    /// re-list after compaction can emit exactly the difference.
    List {
        known: BTreeMap<String, Revision>,
    },
    AfterRevision,
}

struct Live {
    id: WatcherId,
    rx: mpsc::UnboundedReceiver<WatchEvent>,
}

/// The state of one watch stream.
struct Cursor {
    inner: Arc<Inner>,
    prefix: String,
    mode: Mode,
    /// The highest revision delivered (or listed): where a resume picks up.
    last_revision: Revision,
    /// Events at or below this revision are not delivered (a watch may start in the future).
    start_after: Revision,
    pending: VecDeque<WatchEvent>,
    live: Option<Live>,
    fatal: Option<Error>,
    finished: bool,
    available: watch::Receiver<bool>,
}

/// Opens a watch on `prefix`. The caller holds the store lock in `shared`, so the listing or
/// replay and the registration for live events happen at one revision.
pub(super) fn open(
    inner: &Arc<Inner>,
    shared: &mut Shared,
    prefix: &str,
    from: WatchFrom,
) -> WatchStream {
    let mut cursor = Cursor {
        inner: Arc::clone(inner),
        prefix: prefix.to_owned(),
        mode: Mode::AfterRevision,
        last_revision: 0,
        start_after: 0,
        pending: VecDeque::new(),
        live: None,
        fatal: None,
        finished: false,
        available: inner.available.subscribe(),
    };
    match from {
        WatchFrom::List => {
            let listing = shared.state.list(prefix);
            cursor.mode = Mode::List {
                known: BTreeMap::new(),
            };
            cursor
                .pending
                .extend(listing.kvs.into_iter().map(WatchEvent::Create));
            cursor.pending.push_back(WatchEvent::ListDone {
                revision: listing.revision,
            });
            cursor.register(shared);
        }
        WatchFrom::AfterRevision(revision) => {
            // etcd treats a start revision at or below zero as "from the beginning".
            cursor.last_revision = revision.max(0);
            cursor.start_after = revision.max(0);
            if let Err(err) = cursor.connect(shared) {
                cursor.fatal = Some(err);
            }
        }
    }
    Box::pin(futures::stream::unfold(cursor, |mut cursor| async move {
        let item = cursor.next().await?;
        Some((item, cursor))
    }))
}

impl Cursor {
    async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.observe(&event);
                return Some(Ok(event));
            }
            if let Some(err) = self.fatal.take() {
                self.finished = true;
                return Some(Err(err));
            }
            if self.finished {
                return None;
            }
            if let Some(live) = &mut self.live {
                match live.rx.recv().await {
                    Some(event) if event_revision(&event) > self.start_after => {
                        self.pending.push_back(event);
                    }
                    Some(_) => {}
                    // The store cut this watcher off: resume below.
                    None => self.live = None,
                }
                continue;
            }
            // While the store is down the stream stalls, as a client does that cannot reach
            // its server; the sender lives in `inner`, which this cursor keeps alive.
            if self.available.wait_for(|up| *up).await.is_err() {
                return None;
            }
            self.reconnect();
        }
    }

    fn reconnect(&mut self) {
        let inner = Arc::clone(&self.inner);
        let mut shared = inner.lock();
        if shared.unavailable {
            // Down again since we woke up; the next wait stalls until it is back.
            return;
        }
        inner.expire_due(&mut shared);
        if let Err(err) = self.connect(&mut shared) {
            self.fatal = Some(err);
        }
    }

    /// Catches up from `last_revision` and registers for live events.
    fn connect(&mut self, shared: &mut Shared) -> Result<(), Error> {
        match shared.state.history_after(&self.prefix, self.last_revision) {
            Some(events) => self.pending.extend(events),
            None => match &self.mode {
                Mode::AfterRevision => {
                    return Err(Error::Compacted {
                        prefix: self.prefix.clone(),
                        revision: self.last_revision,
                        compact_revision: shared.state.compacted(),
                    });
                }
                Mode::List { known } => {
                    let listing = shared.state.list(&self.prefix);
                    let diff = list_diff(known, listing.kvs, listing.revision);
                    tracing::debug!(
                        prefix = %self.prefix,
                        after = self.last_revision,
                        compacted = shared.state.compacted(),
                        changes = diff.len(),
                        "watch history compacted while disconnected, re-listed"
                    );
                    self.pending.extend(diff);
                    self.last_revision = listing.revision;
                }
            },
        }
        self.register(shared);
        Ok(())
    }

    fn register(&mut self, shared: &mut Shared) {
        let (id, rx) = shared.watchers.register(&self.prefix);
        self.live = Some(Live { id, rx });
    }

    fn observe(&mut self, event: &WatchEvent) {
        if let Mode::List { known } = &mut self.mode {
            match event {
                WatchEvent::Create(kv) | WatchEvent::Modify(kv) => {
                    known.insert(kv.key.clone(), kv.mod_revision);
                }
                WatchEvent::Delete { key, .. } => {
                    known.remove(key);
                }
                WatchEvent::ListDone { .. } => {}
            }
        }
        self.last_revision = self.last_revision.max(event_revision(event));
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            self.inner.lock().watchers.remove(live.id);
        }
    }
}

/// The events that turn `known` (key -> mod revision) into `current` (a listing in key order),
/// in key order: nothing for unchanged keys.
fn list_diff(
    known: &BTreeMap<String, Revision>,
    current: Vec<crate::backend::KeyValue>,
    revision: Revision,
) -> Vec<WatchEvent> {
    let mut changes: BTreeMap<String, WatchEvent> = known
        .keys()
        .map(|key| {
            let delete = WatchEvent::Delete {
                key: key.clone(),
                mod_revision: revision,
            };
            (key.clone(), delete)
        })
        .collect();
    for kv in current {
        match known.get(&kv.key) {
            Some(&seen) if seen == kv.mod_revision => {
                changes.remove(&kv.key);
            }
            Some(_) => {
                changes.insert(kv.key.clone(), WatchEvent::Modify(kv));
            }
            None => {
                changes.insert(kv.key.clone(), WatchEvent::Create(kv));
            }
        }
    }
    changes.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KeyValue;

    fn kv(key: &str, create: Revision, modified: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: vec![],
            create_revision: create,
            mod_revision: modified,
            lease: None,
        }
    }

    #[test]
    fn list_diff_emits_only_changes_in_key_order() {
        let known: BTreeMap<String, Revision> = [("a", 2), ("b", 3), ("c", 4)]
            .map(|(k, r)| (k.to_owned(), r))
            .into();
        let current = vec![kv("a", 2, 2), kv("b", 3, 9), kv("d", 10, 10)];
        let diff = list_diff(&known, current, 11);
        assert_eq!(
            diff,
            vec![
                WatchEvent::Modify(kv("b", 3, 9)),
                WatchEvent::Delete {
                    key: "c".into(),
                    mod_revision: 11
                },
                WatchEvent::Create(kv("d", 10, 10)),
            ]
        );
    }
}
