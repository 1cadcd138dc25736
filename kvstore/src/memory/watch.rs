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

use model::collections::compact_grown;
use tokio::sync::{mpsc, watch};

use super::state::event_revision;
use super::{Inner, Shared};
use crate::backend::{Revision, WatchEvent, WatchFrom, WatchStream};
use crate::error::Error;

type WatcherId = u64;

/// Queue slots a drained stream keeps for the next events.
const PENDING_KEPT: usize = 16;

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

/// A key below the watched prefix as a `List` watch remembers it: inline up to 22 bytes (an
/// address, an identity number), which spares one small allocation per key per watcher.
/// Any total order does for the map; equal names always take the same form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Name {
    Inline(u8, [u8; NAME_INLINE]),
    Heap(Box<str>),
}

/// Bytes of a [`Name`] kept inline; with the length and the tag that is 24 bytes, the size of
/// the boxed form.
const NAME_INLINE: usize = 22;

impl Name {
    fn new(name: &str) -> Self {
        let bytes = name.as_bytes();
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= NAME_INLINE => {
                let mut inline = [0; NAME_INLINE];
                if let Some(head) = inline.get_mut(..bytes.len()) {
                    head.copy_from_slice(bytes);
                }
                Name::Inline(len, inline)
            }
            _ => Name::Heap(name.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Name::Inline(len, bytes) => bytes
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            Name::Heap(name) => name,
        }
    }
}

enum Mode {
    /// A `List` watch remembers the mod revision of every key its consumer holds, so that a
    /// re-list after compaction can emit exactly the difference. Keys are kept without the
    /// watched prefix (every one starts with it): a simulation runs thousands of watches over
    /// the same tens of thousands of keys, and the shared prefix was most of each copy.
    List {
        known: BTreeMap<Name, Revision>,
        /// The number of keys at the last rebuild of `known` (see [`compact_grown`]).
        built: usize,
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
                built: 0,
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
                if self.pending.is_empty() && self.pending.capacity() > PENDING_KEPT {
                    // A listing or replay can queue every key of the prefix at once; keeping
                    // that capacity for the life of the watch would hold a second copy's worth
                    // of memory per watcher.
                    self.pending.shrink_to(PENDING_KEPT);
                }
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
                Mode::List { known, .. } => {
                    let listing = shared.state.list(&self.prefix);
                    let diff = list_diff(&self.prefix, known, listing.kvs, listing.revision);
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
        if let Mode::List { known, built } = &mut self.mode {
            match event {
                WatchEvent::Create(kv) | WatchEvent::Modify(kv) => {
                    if let Some(name) = kv.key.strip_prefix(self.prefix.as_str())
                        && known.insert(Name::new(name), kv.mod_revision).is_none()
                    {
                        compact_grown(known, built);
                    }
                }
                WatchEvent::Delete { key, .. } => {
                    if let Some(name) = key.strip_prefix(self.prefix.as_str()) {
                        known.remove(&Name::new(name));
                    }
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

/// The events that turn `known` (key below `prefix` -> mod revision) into `current` (a listing
/// of `prefix` in key order), in key order: nothing for unchanged keys.
fn list_diff(
    prefix: &str,
    known: &BTreeMap<Name, Revision>,
    current: Vec<crate::backend::KeyValue>,
    revision: Revision,
) -> Vec<WatchEvent> {
    let mut changes: BTreeMap<String, WatchEvent> = known
        .keys()
        .map(|name| {
            let key = format!("{prefix}{}", name.as_str());
            let delete = WatchEvent::Delete {
                key: key.clone(),
                mod_revision: revision,
            };
            (key, delete)
        })
        .collect();
    for kv in current {
        let seen = kv
            .key
            .strip_prefix(prefix)
            .and_then(|name| known.get(&Name::new(name)));
        match seen {
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
    fn names_are_compact_and_read_back() {
        // One per key per `List` watcher: thousands of watchers over tens of thousands of
        // keys in a simulation. Growing this undoes that work.
        assert_eq!(std::mem::size_of::<Name>(), 24);
        let long = "cluster-1/cluster-1-node-999";
        for name in ["", "10.0.3.7", "a".repeat(NAME_INLINE).as_str(), long] {
            assert_eq!(Name::new(name).as_str(), name);
        }
        assert!(matches!(Name::new("10.255.255.254"), Name::Inline(..)));
        assert!(matches!(Name::new(long), Name::Heap(_)));
        assert_eq!(Name::new(long), Name::new(long));
    }

    #[test]
    fn list_diff_emits_only_changes_in_key_order() {
        let known: BTreeMap<Name, Revision> = [("a", 2), ("b", 3), ("c", 4)]
            .map(|(k, r)| (Name::new(k), r))
            .into();
        let current = vec![kv("p/a", 2, 2), kv("p/b", 3, 9), kv("p/d", 10, 10)];
        let diff = list_diff("p/", &known, current, 11);
        assert_eq!(
            diff,
            vec![
                WatchEvent::Modify(kv("p/b", 3, 9)),
                WatchEvent::Delete {
                    key: "p/c".into(),
                    mod_revision: 11
                },
                WatchEvent::Create(kv("p/d", 10, 10)),
            ]
        );
    }
}
