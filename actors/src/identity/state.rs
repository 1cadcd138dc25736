//! The identity actor's bookkeeping as a pure state machine: which identities the node knows
//! (reserved, cluster-wide, local-scope), which it references, the in-process allocator used
//! without a kvstore, the per-label-set queue that orders kvstore operations, and the
//! [`IdentitiesChanged`] each change publishes.

use std::collections::{BTreeMap, HashMap, VecDeque};

use model::identity::{ClusterId, NumericIdentity, ReservedIdentity};
use model::labels::Labels;

use super::messages::{
    AllocatedIdentity, IdentitiesChanged, IdentityError, IdentityInfo, IdentityReference,
};
use crate::service::ids::IdPool;

/// Cluster-wide identities allocated in process, for an agent without a kvstore: refcounted,
/// from the cluster's range, next-fit so a released id is reused last.
#[derive(Debug, Clone)]
pub struct InProcessAllocator {
    cluster_id: ClusterId,
    ids: IdPool,
    by_labels: HashMap<String, NumericIdentity>,
}

impl InProcessAllocator {
    pub fn new(cluster_id: ClusterId) -> Self {
        let range = cluster_id.identity_range();
        InProcessAllocator {
            cluster_id,
            ids: IdPool::new(range.start().get()..=range.end().get()),
            by_labels: HashMap::new(),
        }
    }
}

/// What the node knows about identities.
///
/// Invariants: `known` holds every cluster-wide identity the node has published and not
/// removed since, local-scope identities are in `local_scope`, reserved ones in neither; an
/// identity this node references is never published as removed.
#[derive(Debug, Clone)]
pub struct IdentityState {
    cluster_id: ClusterId,
    known: BTreeMap<NumericIdentity, Labels>,
    local_scope: BTreeMap<NumericIdentity, Labels>,
    refs: BTreeMap<NumericIdentity, u64>,
    /// The cluster's identities listed so far while a (re-)listing runs.
    listing: Option<BTreeMap<NumericIdentity, Labels>>,
    synced: bool,
    in_process: Option<InProcessAllocator>,
}

impl IdentityState {
    /// State for kvstore mode: cluster identities come from the allocator and its master keys.
    pub fn kvstore(cluster_id: ClusterId) -> Self {
        Self::with(cluster_id, None)
    }

    /// State for local mode: cluster identities are allocated here.
    pub fn local(cluster_id: ClusterId) -> Self {
        Self::with(cluster_id, Some(InProcessAllocator::new(cluster_id)))
    }

    fn with(cluster_id: ClusterId, in_process: Option<InProcessAllocator>) -> Self {
        IdentityState {
            cluster_id,
            known: BTreeMap::new(),
            local_scope: BTreeMap::new(),
            refs: BTreeMap::new(),
            listing: None,
            synced: in_process.is_some(),
            in_process,
        }
    }

    pub fn cluster_id(&self) -> ClusterId {
        self.cluster_id
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The reserved identities, published once at start. `unknown` has no labels and is not
    /// an identity anything can select, so it is left out.
    pub fn reserved_change() -> IdentitiesChanged {
        IdentitiesChanged {
            added: ReservedIdentity::ALL
                .into_iter()
                .filter(|r| *r != ReservedIdentity::Unknown)
                .map(|r| (r.id(), r.labels()))
                .collect(),
            removed: Vec::new(),
        }
    }

    /// The reserved identity whose labels these are exactly.
    pub fn reserved_for(labels: &Labels) -> Option<NumericIdentity> {
        ReservedIdentity::from_labels(labels).map(ReservedIdentity::id)
    }

    /// Local mode: allocates (or references) the identity of `labels`.
    pub fn allocate_in_process(
        &mut self,
        labels: &Labels,
    ) -> Result<(AllocatedIdentity, Option<IdentitiesChanged>), IdentityError> {
        let cluster_id = self.cluster_id;
        let Some(allocator) = &mut self.in_process else {
            return Err(IdentityError::NotAllocated {
                labels: labels.to_kvstore_string(),
            });
        };
        let key = labels.to_kvstore_string();
        if let Some(id) = allocator.by_labels.get(&key).copied() {
            *self.refs.entry(id).or_default() += 1;
            return Ok((AllocatedIdentity { id, is_new: false }, None));
        }
        let range = cluster_id.identity_range();
        let id = allocator.ids.allocate().map(NumericIdentity::new).ok_or(
            IdentityError::RangeExhausted {
                cluster_id: allocator.cluster_id,
                first: *range.start(),
                last: *range.end(),
            },
        )?;
        allocator.by_labels.insert(key, id);
        let change = self.allocated(id, labels.clone());
        Ok((AllocatedIdentity { id, is_new: true }, change))
    }

    /// Local mode: drops a reference; the last one frees the identity and publishes it gone.
    pub fn release_in_process(
        &mut self,
        labels: &Labels,
    ) -> Result<(bool, Option<IdentitiesChanged>), IdentityError> {
        let key = labels.to_kvstore_string();
        let id = self
            .in_process
            .as_ref()
            .and_then(|allocator| allocator.by_labels.get(&key).copied())
            .ok_or(IdentityError::NotAllocated {
                labels: key.clone(),
            })?;
        if !self.unref(id) {
            return Ok((false, None));
        }
        if let Some(allocator) = &mut self.in_process {
            allocator.by_labels.remove(&key);
            allocator.ids.release(id.get());
        }
        self.known.remove(&id);
        Ok((true, Some(removed(vec![id]))))
    }

    /// Records a reference to a cluster-wide identity (kvstore mode: the allocator answered;
    /// local mode: via [`Self::allocate_in_process`]).
    pub fn allocated(&mut self, id: NumericIdentity, labels: Labels) -> Option<IdentitiesChanged> {
        *self.refs.entry(id).or_default() += 1;
        self.learn(id, labels)
    }

    /// Kvstore mode: a reference was dropped. The identity stays known: its master key lives
    /// until garbage collection removes it, which the master watch reports.
    pub fn released(&mut self, id: NumericIdentity) {
        self.unref(id);
    }

    /// Records a reference to a local-scope identity.
    pub fn local_scope_allocated(
        &mut self,
        id: NumericIdentity,
        labels: Labels,
    ) -> Option<IdentitiesChanged> {
        *self.refs.entry(id).or_default() += 1;
        if self.local_scope.get(&id) == Some(&labels) {
            return None;
        }
        self.local_scope.insert(id, labels.clone());
        Some(added(vec![(id, labels)]))
    }

    /// Drops a reference to a local-scope identity; `last` says whether the allocator freed
    /// it, which publishes it gone.
    pub fn local_scope_released(
        &mut self,
        id: NumericIdentity,
        last: bool,
    ) -> Option<IdentitiesChanged> {
        self.unref(id);
        if !last {
            return None;
        }
        self.refs.remove(&id);
        self.local_scope.remove(&id).map(|_| removed(vec![id]))
    }

    /// A (re-)listing of the cluster's master keys begins.
    pub fn listing_started(&mut self) {
        self.listing = Some(BTreeMap::new());
    }

    /// A master key was created or changed. During a listing it is collected and published
    /// with the rest when the listing is done.
    pub fn master_upserted(
        &mut self,
        id: NumericIdentity,
        labels: Labels,
    ) -> Option<IdentitiesChanged> {
        if !self.accepts(id) {
            tracing::warn!(%id, cluster_id = %self.cluster_id, "ignoring identity outside the cluster's range");
            return None;
        }
        if let Some(listing) = &mut self.listing {
            listing.insert(id, labels);
            return None;
        }
        self.learn(id, labels)
    }

    /// A master key was deleted (garbage collection). An identity this node still
    /// references stays (the allocator re-creates its master key).
    pub fn master_deleted(&mut self, id: NumericIdentity) -> Option<IdentitiesChanged> {
        if let Some(listing) = &mut self.listing {
            listing.remove(&id);
            return None;
        }
        if self.refs.contains_key(&id) {
            return None;
        }
        self.known.remove(&id).map(|_| removed(vec![id]))
    }

    /// The listing is complete: publish what appeared, changed or vanished since the last
    /// one, in one change.
    pub fn listing_done(&mut self) -> Option<IdentitiesChanged> {
        let listing = self.listing.take()?;
        self.synced = true;
        let gone: Vec<NumericIdentity> = self
            .known
            .keys()
            .filter(|id| !listing.contains_key(id) && !self.refs.contains_key(id))
            .copied()
            .collect();
        for id in &gone {
            self.known.remove(id);
        }
        let mut change = IdentitiesChanged {
            added: Vec::new(),
            removed: gone,
        };
        for (id, labels) in listing {
            if self.known.get(&id) != Some(&labels) {
                self.known.insert(id, labels.clone());
                change.added.push((id, labels));
            }
        }
        (!change.is_empty()).then_some(change)
    }

    /// The labels of `id`.
    pub fn lookup(&self, id: NumericIdentity) -> Option<Labels> {
        if let Some(reserved) = ReservedIdentity::from_id(id) {
            return Some(reserved.labels());
        }
        self.known
            .get(&id)
            .or_else(|| self.local_scope.get(&id))
            .cloned()
    }

    /// Every identity the node knows, in id order.
    pub fn list(&self) -> Vec<IdentityInfo> {
        let mut all: Vec<IdentityInfo> = ReservedIdentity::ALL
            .into_iter()
            .filter(|r| *r != ReservedIdentity::Unknown)
            .map(|r| IdentityInfo {
                id: r.id(),
                labels: r.labels(),
            })
            .chain(
                self.known
                    .iter()
                    .chain(&self.local_scope)
                    .map(|(id, labels)| IdentityInfo {
                        id: *id,
                        labels: labels.clone(),
                    }),
            )
            .collect();
        all.sort_by_key(|info| info.id);
        all
    }

    /// How many references this node holds to `id`.
    pub fn refs_of(&self, id: NumericIdentity) -> u64 {
        self.refs.get(&id).copied().unwrap_or(0)
    }

    pub fn references(&self) -> Vec<IdentityReference> {
        self.refs
            .iter()
            .map(|(id, refs)| IdentityReference {
                id: *id,
                refs: *refs,
            })
            .collect()
    }

    /// Whether a cluster-wide identity may come from this cluster's kvstore.
    fn accepts(&self, id: NumericIdentity) -> bool {
        self.cluster_id.contains(id)
    }

    fn learn(&mut self, id: NumericIdentity, labels: Labels) -> Option<IdentitiesChanged> {
        if self.known.get(&id) == Some(&labels) {
            return None;
        }
        self.known.insert(id, labels.clone());
        Some(added(vec![(id, labels)]))
    }

    /// Drops one reference; returns whether it was the last.
    fn unref(&mut self, id: NumericIdentity) -> bool {
        match self.refs.get_mut(&id) {
            Some(refs) if *refs > 1 => {
                *refs -= 1;
                false
            }
            Some(_) => {
                self.refs.remove(&id);
                true
            }
            None => false,
        }
    }
}

fn added(added: Vec<(NumericIdentity, Labels)>) -> IdentitiesChanged {
    IdentitiesChanged {
        added,
        removed: Vec::new(),
    }
}

fn removed(removed: Vec<NumericIdentity>) -> IdentitiesChanged {
    IdentitiesChanged {
        added: Vec::new(),
        removed,
    }
}

/// Operations waiting per key: at most one runs per key, the others wait in arrival order.
/// An allocation of a label set therefore never races with a release of the same set.
#[derive(Debug)]
pub struct KeyedQueue<T> {
    /// A key is present while an operation for it runs; the deque holds those waiting.
    queues: HashMap<String, VecDeque<T>>,
}

impl<T> Default for KeyedQueue<T> {
    fn default() -> Self {
        KeyedQueue {
            queues: HashMap::new(),
        }
    }
}

impl<T> KeyedQueue<T> {
    /// Adds an operation; returns it if it may start now (nothing runs for its key).
    pub fn push(&mut self, key: String, op: T) -> Option<T> {
        match self.queues.get_mut(&key) {
            Some(waiting) => {
                waiting.push_back(op);
                None
            }
            None => {
                self.queues.insert(key, VecDeque::new());
                Some(op)
            }
        }
    }

    /// The running operation of `key` finished; returns the next one to start.
    pub fn finish(&mut self, key: &str) -> Option<T> {
        let waiting = self.queues.get_mut(key)?;
        match waiting.pop_front() {
            Some(next) => Some(next),
            None => {
                self.queues.remove(key);
                None
            }
        }
    }

    /// How many operations wait (not counting running ones).
    pub fn waiting(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use model::labels::Label;

    use super::*;

    fn labels(app: &str) -> Labels {
        [Label::k8s("app", app)].into_iter().collect()
    }

    fn id(n: u32) -> NumericIdentity {
        NumericIdentity::new(n)
    }

    #[test]
    fn in_process_identities_are_refcounted_and_published() {
        let mut state = IdentityState::local(ClusterId::new(2));
        let (a, change) = state.allocate_in_process(&labels("a")).unwrap();
        assert_eq!(
            a,
            AllocatedIdentity {
                id: id(2 << 16),
                is_new: true
            }
        );
        assert_eq!(change, Some(added(vec![(a.id, labels("a"))])));
        let (again, change) = state.allocate_in_process(&labels("a")).unwrap();
        assert_eq!(
            again,
            AllocatedIdentity {
                id: a.id,
                is_new: false
            }
        );
        assert_eq!(change, None);
        assert_eq!(
            state.release_in_process(&labels("a")).unwrap(),
            (false, None)
        );
        assert_eq!(
            state.release_in_process(&labels("a")).unwrap(),
            (true, Some(removed(vec![a.id])))
        );
        assert!(matches!(
            state.release_in_process(&labels("a")),
            Err(IdentityError::NotAllocated { .. })
        ));
        // Next-fit: a new label set gets the next id, not the released one.
        let (b, _) = state.allocate_in_process(&labels("b")).unwrap();
        assert_eq!(b.id, id((2 << 16) + 1));
        assert_eq!(state.lookup(b.id), Some(labels("b")));
        assert_eq!(state.lookup(a.id), None);
    }

    #[test]
    fn the_listing_is_published_as_one_diff() {
        let mut state = IdentityState::kvstore(ClusterId::UNSET);
        assert!(!state.is_synced());
        state.listing_started();
        assert_eq!(state.master_upserted(id(256), labels("a")), None);
        assert_eq!(state.master_upserted(id(257), labels("b")), None);
        // Outside the cluster's range: ignored.
        assert_eq!(state.master_upserted(id(70_000), labels("c")), None);
        assert_eq!(
            state.listing_done(),
            Some(added(vec![(id(256), labels("a")), (id(257), labels("b"))]))
        );
        assert!(state.is_synced());

        // Live events publish one by one.
        assert_eq!(
            state.master_upserted(id(258), labels("c")),
            Some(added(vec![(id(258), labels("c"))]))
        );
        assert_eq!(state.master_upserted(id(258), labels("c")), None);
        assert_eq!(state.master_deleted(id(258)), Some(removed(vec![id(258)])));

        // A held identity survives the deletion of its master key.
        assert_eq!(state.allocated(id(256), labels("a")), None);
        assert_eq!(state.master_deleted(id(256)), None);
        assert_eq!(state.lookup(id(256)), Some(labels("a")));

        // A re-listing that lacks 257 (and 256, still held) removes only 257.
        state.listing_started();
        state.master_upserted(id(259), labels("d"));
        assert_eq!(
            state.listing_done(),
            Some(IdentitiesChanged {
                added: vec![(id(259), labels("d"))],
                removed: vec![id(257)],
            })
        );
        state.released(id(256));
        assert!(state.references().is_empty());
    }

    #[test]
    fn local_scope_identities_come_and_go_with_their_references() {
        let mut state = IdentityState::kvstore(ClusterId::UNSET);
        let cidr = NumericIdentity::MIN_LOCAL_SCOPE;
        let l = Labels::for_cidr("10.0.0.0/8".parse().unwrap(), false);
        assert!(state.local_scope_allocated(cidr, l.clone()).is_some());
        assert!(state.local_scope_allocated(cidr, l.clone()).is_none());
        assert!(state.local_scope_released(cidr, false).is_none());
        assert_eq!(
            state.local_scope_released(cidr, true),
            Some(removed(vec![cidr]))
        );
        assert!(state.references().is_empty());
    }

    #[test]
    fn reserved_identities_are_recognised_and_listed() {
        let host: Labels = [Label::host()].into_iter().collect();
        assert_eq!(
            IdentityState::reserved_for(&host),
            Some(NumericIdentity::HOST)
        );
        assert_eq!(IdentityState::reserved_for(&labels("a")), None);
        let change = IdentityState::reserved_change();
        assert_eq!(change.added.len(), 10);
        assert!(change.added.iter().all(|(id, _)| id.is_reserved()));
        let state = IdentityState::kvstore(ClusterId::UNSET);
        assert_eq!(state.list().len(), 10);
        assert_eq!(
            state.lookup(NumericIdentity::WORLD),
            Some([Label::world()].into_iter().collect())
        );
    }

    #[test]
    fn keyed_queue_runs_one_operation_per_key_in_order() {
        let mut queue = KeyedQueue::default();
        assert_eq!(queue.push("x".into(), 1), Some(1));
        assert_eq!(queue.push("x".into(), 2), None);
        assert_eq!(queue.push("y".into(), 3), Some(3));
        assert_eq!(queue.push("x".into(), 4), None);
        assert_eq!(queue.waiting(), 2);
        assert_eq!(queue.finish("x"), Some(2));
        assert_eq!(queue.finish("x"), Some(4));
        assert_eq!(queue.finish("x"), None);
        assert_eq!(queue.push("x".into(), 5), Some(5));
        assert_eq!(queue.finish("y"), None);
        assert_eq!(queue.waiting(), 0);
    }
}
