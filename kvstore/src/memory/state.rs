//! The store's data as a plain state machine: keys, revisions, leases and event history.
//!
//! Nothing here does IO, waits or knows about watchers: every mutation returns the events it
//! committed and the caller publishes them. That keeps etcd's rules (one revision per mutating
//! transaction, create revisions that reset after a delete, compare semantics on missing keys,
//! one revision per expired lease) testable on their own.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use crate::backend::{
    CmpOp, Compare, CompareTarget, KeyValue, LeaseId, ListResult, Revision, Txn, TxnOp,
    TxnResponse, WatchEvent,
};
use crate::error::Error;

/// The revision an event happened at.
pub(super) fn event_revision(event: &WatchEvent) -> Revision {
    match event {
        WatchEvent::Create(kv) | WatchEvent::Modify(kv) => kv.mod_revision,
        WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        WatchEvent::ListDone { revision } => *revision,
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    lease: Option<LeaseId>,
}

impl Entry {
    fn to_key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    /// `None` while a live client keeps the lease alive on its own (a lock session): such a
    /// lease cannot expire until the client goes away.
    deadline: Option<Duration>,
    keys: BTreeSet<String>,
}

/// Keys, leases and history of one store.
#[derive(Debug)]
pub(super) struct State {
    kvs: BTreeMap<String, Entry>,
    revision: Revision,
    leases: HashMap<LeaseId, Lease>,
    /// Lease deadlines in expiry order, so that the lazy expiry check on every operation costs
    /// a look at the first entry rather than a scan of every lease.
    deadlines: BTreeSet<(Duration, LeaseId)>,
    last_lease: i64,
    /// Every event with a revision greater than `compacted`, in revision order.
    history: VecDeque<WatchEvent>,
    /// Number of most recent revisions whose events are kept.
    history_revisions: u64,
    compacted: Revision,
}

impl State {
    pub(super) fn new(history_revisions: u64) -> Self {
        State {
            kvs: BTreeMap::new(),
            revision: 0,
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            last_lease: 0,
            history: VecDeque::new(),
            history_revisions: history_revisions.max(1),
            compacted: 0,
        }
    }

    pub(super) fn revision(&self) -> Revision {
        self.revision
    }

    pub(super) fn compacted(&self) -> Revision {
        self.compacted
    }

    pub(super) fn get(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).map(|e| e.to_key_value(key))
    }

    pub(super) fn list(&self, prefix: &str) -> ListResult {
        let kvs = self
            .kvs
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| e.to_key_value(k))
            .collect();
        ListResult {
            kvs,
            revision: self.revision,
        }
    }

    /// Events with a revision greater than `after` on keys under `prefix`, or `None` when part
    /// of that history was compacted away.
    pub(super) fn history_after(&self, prefix: &str, after: Revision) -> Option<Vec<WatchEvent>> {
        if after < self.compacted {
            return None;
        }
        let start = self
            .history
            .partition_point(|event| event_revision(event) <= after);
        Some(
            self.history
                .range(start..)
                .filter(|event| event.key().is_some_and(|k| k.starts_with(prefix)))
                .cloned()
                .collect(),
        )
    }

    /// Runs a transaction: evaluates the compares and applies one branch at one new revision
    /// (none if the branch changes nothing).
    pub(super) fn txn(&mut self, txn: &Txn) -> Result<(TxnResponse, Vec<WatchEvent>), Error> {
        let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let events = self.commit(ops)?;
        Ok((
            TxnResponse {
                succeeded,
                revision: self.revision,
            },
            events,
        ))
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(Revision, Vec<WatchEvent>), Error> {
        let events = self.commit(&[TxnOp::Put {
            key: key.to_owned(),
            value,
            lease,
        }])?;
        Ok((self.revision, events))
    }

    /// Deletes every key under `prefix` at one revision.
    pub(super) fn delete_prefix(&mut self, prefix: &str) -> Result<Vec<WatchEvent>, Error> {
        let ops: Vec<TxnOp> = self
            .list(prefix)
            .kvs
            .into_iter()
            .map(|kv| TxnOp::Delete { key: kv.key })
            .collect();
        self.commit(&ops)
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        if !compare.prefix {
            return target_holds(&compare.target, self.kvs.get(&compare.key));
        }
        // etcd: a ranged compare must hold for every key in the range, and an empty range
        // compares like a missing key.
        let mut under = self
            .kvs
            .range::<str, _>((Bound::Included(compare.key.as_str()), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(&compare.key))
            .peekable();
        if under.peek().is_none() {
            return target_holds(&compare.target, None);
        }
        under.all(|(_, entry)| target_holds(&compare.target, Some(entry)))
    }

    /// Applies `ops` atomically at the next revision. The store is unchanged on error, and the
    /// revision only moves if something changed (etcd does not bump it for a delete of nothing).
    fn commit(&mut self, ops: &[TxnOp]) -> Result<Vec<WatchEvent>, Error> {
        let mut seen = BTreeSet::new();
        for op in ops {
            let key = match op {
                TxnOp::Put { key, lease, .. } => {
                    if let Some(lease) = lease
                        && !self.leases.contains_key(lease)
                    {
                        return Err(Error::LeaseNotFound(*lease));
                    }
                    key
                }
                TxnOp::Delete { key } => key,
            };
            if !seen.insert(key.as_str()) {
                return Err(Error::Backend {
                    op: "txn",
                    message: format!("duplicate key {key:?} in one transaction"),
                });
            }
        }

        let revision = self.revision + 1;
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Put { key, value, lease } => {
                    events.push(self.apply_put(key, value.clone(), *lease, revision));
                }
                TxnOp::Delete { key } => {
                    if let Some(event) = self.apply_delete(key, revision) {
                        events.push(event);
                    }
                }
            }
        }
        if !events.is_empty() {
            self.revision = revision;
            self.record(&events);
        }
        Ok(events)
    }

    fn apply_put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
        revision: Revision,
    ) -> WatchEvent {
        let previous = self.kvs.get(key).map(|e| (e.create_revision, e.lease));
        if let Some((_, Some(old))) = previous
            && Some(old) != lease
            && let Some(l) = self.leases.get_mut(&old)
        {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.insert(key.to_owned());
        }
        let entry = Entry {
            value,
            create_revision: previous.map_or(revision, |(created, _)| created),
            mod_revision: revision,
            lease,
        };
        let kv = entry.to_key_value(key);
        self.kvs.insert(key.to_owned(), entry);
        if previous.is_some() {
            WatchEvent::Modify(kv)
        } else {
            WatchEvent::Create(kv)
        }
    }

    fn apply_delete(&mut self, key: &str, revision: Revision) -> Option<WatchEvent> {
        let entry = self.kvs.remove(key)?;
        if let Some(l) = entry.lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
        Some(WatchEvent::Delete {
            key: key.to_owned(),
            mod_revision: revision,
        })
    }

    fn record(&mut self, events: &[WatchEvent]) {
        self.history.extend(events.iter().cloned());
        let keep_after = self
            .revision
            .saturating_sub(i64::try_from(self.history_revisions).unwrap_or(i64::MAX));
        if keep_after > self.compacted {
            self.drop_history_through(keep_after);
        }
    }

    fn drop_history_through(&mut self, revision: Revision) {
        self.compacted = self.compacted.max(revision);
        while self
            .history
            .front()
            .is_some_and(|e| event_revision(e) <= self.compacted)
        {
            self.history.pop_front();
        }
    }

    /// Forgets the history up to and including `revision`: watches that need it fail with
    /// [`Error::Compacted`]. Compacting an already compacted revision does nothing.
    pub(super) fn compact(&mut self, revision: Revision) -> Result<(), Error> {
        if revision > self.revision {
            return Err(Error::Backend {
                op: "compact",
                message: format!(
                    "revision {revision} is in the future (current revision {})",
                    self.revision
                ),
            });
        }
        self.drop_history_through(revision);
        Ok(())
    }

    /// Grants a lease. TTLs are whole seconds, as etcd's, rounded up; at least one second.
    pub(super) fn grant(&mut self, ttl: Duration, now: Duration) -> (LeaseId, Duration) {
        let ttl = Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .max(Duration::from_secs(1));
        self.last_lease += 1;
        let id = LeaseId(self.last_lease);
        let deadline = now.saturating_add(ttl);
        self.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Some(deadline),
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        (id, ttl)
    }

    /// Grants a lease that its holder keeps alive for as long as it lives (see [`Self::release`]).
    pub(super) fn grant_attended(&mut self, ttl: Duration, now: Duration) -> LeaseId {
        let (id, _) = self.grant(ttl, now);
        self.set_deadline(id, None);
        id
    }

    /// The holder of an attended lease went away: from now on the lease expires like any
    /// other, one TTL after its last keep-alive (which is now).
    pub(super) fn release(&mut self, id: LeaseId, now: Duration) {
        if let Some(ttl) = self.leases.get(&id).map(|l| l.ttl) {
            self.set_deadline(id, Some(now.saturating_add(ttl)));
        }
    }

    fn set_deadline(&mut self, id: LeaseId, deadline: Option<Duration>) {
        if let Some(lease) = self.leases.get_mut(&id) {
            if let Some(old) = lease.deadline {
                self.deadlines.remove(&(old, id));
            }
            lease.deadline = deadline;
            if let Some(new) = deadline {
                self.deadlines.insert((new, id));
            }
        }
    }

    /// Gives every unattended lease a full TTL from `now`, the way etcd's lessor extends all
    /// leases when a leader takes over, so an outage alone does not expire anything.
    pub(super) fn refresh_leases(&mut self, now: Duration) {
        let due: Vec<(LeaseId, Duration)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline.is_some())
            .map(|(id, l)| (*id, now.saturating_add(l.ttl)))
            .collect();
        for (id, deadline) in due {
            self.set_deadline(id, Some(deadline));
        }
    }

    pub(super) fn has_lease(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// Refreshes a lease; callers expire due leases first, so an expired one is not found.
    pub(super) fn keep_alive(&mut self, id: LeaseId, now: Duration) -> Result<Duration, Error> {
        let (ttl, attended) = match self.leases.get(&id) {
            Some(lease) => (lease.ttl, lease.deadline.is_none()),
            None => return Err(Error::LeaseNotFound(id)),
        };
        if !attended {
            self.set_deadline(id, Some(now.saturating_add(ttl)));
        }
        Ok(ttl)
    }

    /// Revokes a lease, deleting its keys at one revision.
    pub(super) fn revoke(&mut self, id: LeaseId) -> Result<Vec<WatchEvent>, Error> {
        self.set_deadline(id, None);
        let lease = self.leases.remove(&id).ok_or(Error::LeaseNotFound(id))?;
        let ops: Vec<TxnOp> = lease
            .keys
            .into_iter()
            .map(|key| TxnOp::Delete { key })
            .collect();
        self.commit(&ops)
    }

    /// Revokes every lease whose deadline is at or before `now`, in deadline order, each at
    /// its own revision as etcd's lessor does.
    pub(super) fn expire(&mut self, now: Duration) -> Vec<WatchEvent> {
        let mut events = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            // The lease exists: every entry in `deadlines` belongs to a live lease.
            if let Ok(mut deleted) = self.revoke(id) {
                events.append(&mut deleted);
            } else {
                self.deadlines.remove(&(deadline, id));
            }
        }
        events
    }
}

fn target_holds(target: &CompareTarget, entry: Option<&Entry>) -> bool {
    match target {
        CompareTarget::CreateRevision(op, rev) => {
            holds(*op, &entry.map_or(0, |e| e.create_revision), rev)
        }
        CompareTarget::ModRevision(op, rev) => {
            holds(*op, &entry.map_or(0, |e| e.mod_revision), rev)
        }
        // etcd: a value comparison against a key that does not exist is false whatever the
        // operator.
        CompareTarget::Value(op, value) => {
            entry.is_some_and(|e| holds(*op, e.value.as_slice(), value.as_slice()))
        }
    }
}

fn holds<T: Ord + ?Sized>(op: CmpOp, actual: &T, expected: &T) -> bool {
    match op {
        CmpOp::Equal => actual == expected,
        CmpOp::NotEqual => actual != expected,
        CmpOp::Greater => actual > expected,
        CmpOp::Less => actual < expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(state: &mut State, key: &str, value: &str) -> Revision {
        state.put(key, value.into(), None).unwrap().0
    }

    #[test]
    fn create_revision_resets_after_delete() {
        let mut s = State::new(100);
        let r1 = put(&mut s, "a", "1");
        let r2 = put(&mut s, "a", "2");
        let kv = s.get("a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
        s.txn(&Txn {
            success: vec![TxnOp::Delete { key: "a".into() }],
            ..Txn::default()
        })
        .unwrap();
        let r4 = put(&mut s, "a", "3");
        let kv = s.get("a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
        assert_eq!(r4, 4);
    }

    #[test]
    fn mutation_free_transactions_keep_the_revision() {
        let mut s = State::new(100);
        put(&mut s, "a", "1");
        let (resp, events) = s
            .txn(&Txn {
                compares: vec![Compare::missing("a")],
                success: vec![],
                failure: vec![TxnOp::Delete { key: "nope".into() }],
            })
            .unwrap();
        assert!(!resp.succeeded);
        assert!(events.is_empty());
        assert_eq!(resp.revision, 1);
        assert_eq!(s.delete_prefix("zzz").unwrap(), vec![]);
        assert_eq!(s.revision(), 1);
    }

    #[test]
    fn value_compares_on_missing_keys_are_false() {
        let s = State::new(100);
        for op in [CmpOp::Equal, CmpOp::NotEqual, CmpOp::Greater, CmpOp::Less] {
            let c = Compare {
                key: "missing".into(),
                target: CompareTarget::Value(op, b"x".to_vec()),
                prefix: false,
            };
            assert!(!s.compare_holds(&c), "{op:?}");
        }
        assert!(s.compare_holds(&Compare::missing("missing")));
        assert!(s.compare_holds(&Compare::mod_revision("missing", 0)));
    }

    #[test]
    fn failed_txn_validation_changes_nothing() {
        let mut s = State::new(100);
        let err = s
            .txn(&Txn {
                success: vec![
                    TxnOp::Put {
                        key: "a".into(),
                        value: vec![],
                        lease: None,
                    },
                    TxnOp::Put {
                        key: "b".into(),
                        value: vec![],
                        lease: Some(LeaseId(99)),
                    },
                ],
                ..Txn::default()
            })
            .unwrap_err();
        assert!(matches!(err, Error::LeaseNotFound(LeaseId(99))), "{err}");
        let err = s
            .txn(&Txn {
                success: vec![
                    TxnOp::Put {
                        key: "a".into(),
                        value: vec![],
                        lease: None,
                    },
                    TxnOp::Delete { key: "a".into() },
                ],
                ..Txn::default()
            })
            .unwrap_err();
        assert!(matches!(err, Error::Backend { op: "txn", .. }), "{err}");
        assert_eq!(s.revision(), 0);
        assert!(s.get("a").is_none());
    }

    #[test]
    fn each_expired_lease_is_one_revision() {
        let mut s = State::new(100);
        let (l1, ttl) = s.grant(Duration::from_millis(1500), Duration::ZERO);
        assert_eq!(ttl, Duration::from_secs(2));
        let (l2, _) = s.grant(Duration::from_secs(3), Duration::ZERO);
        let (empty, _) = s.grant(Duration::from_secs(1), Duration::ZERO);
        s.put("a", vec![], Some(l1)).unwrap();
        s.put("b", vec![], Some(l1)).unwrap();
        s.put("c", vec![], Some(l2)).unwrap();
        assert!(s.expire(Duration::from_millis(1999)).is_empty());
        assert!(!s.has_lease(empty) && s.has_lease(l1));
        let events = s.expire(Duration::from_secs(3));
        let revisions: Vec<Revision> = events.iter().map(event_revision).collect();
        assert_eq!(revisions, vec![4, 4, 5]);
        assert!(!s.has_lease(l1) && !s.has_lease(l2) && !s.has_lease(empty));
        assert_eq!(s.list("").kvs, vec![]);
    }

    #[test]
    fn attended_leases_expire_only_after_release() {
        let mut s = State::new(100);
        let l = s.grant_attended(Duration::from_secs(25), Duration::ZERO);
        s.put("lock/x", vec![], Some(l)).unwrap();
        assert!(s.expire(Duration::from_secs(1000)).is_empty());
        s.release(l, Duration::from_secs(1000));
        assert!(s.expire(Duration::from_secs(1024)).is_empty());
        assert_eq!(s.expire(Duration::from_secs(1025)).len(), 1);
        assert!(!s.has_lease(l));
    }

    #[test]
    fn history_is_bounded_and_compaction_is_reported() {
        let mut s = State::new(3);
        for i in 0..5 {
            put(&mut s, &format!("k{i}"), "v");
        }
        assert_eq!(s.compacted(), 2);
        assert!(s.history_after("", 1).is_none());
        let events = s.history_after("", 2).unwrap();
        assert_eq!(
            events.iter().map(event_revision).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        s.compact(4).unwrap();
        assert!(s.history_after("", 3).is_none());
        assert_eq!(s.history_after("k4", 4).unwrap().len(), 1);
        assert!(s.compact(6).is_err());
    }

    #[test]
    fn list_is_prefix_bounded_and_ordered() {
        let mut s = State::new(10);
        for k in ["p/b", "p/a", "pa", "p/c", "o"] {
            put(&mut s, k, "v");
        }
        let keys: Vec<String> = s.list("p/").kvs.into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["p/a", "p/b", "p/c"]);
    }
}
