//! The identity actor's bookkeeping as a pure state machine: which identities the node knows
//! (reserved, cluster-wide, local-scope), which it references, the in-process allocator used
//! without a kvstore, the per-label-set queue that orders kvstore operations, and the
//! [`IdentitiesChanged`] each change publishes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use model::identity::{ClusterId, NumericIdentity, ReservedIdentity};
use model::labels::Labels;

use super::messages::{
    AllocatedIdentity, IdentitiesChanged, IdentityError, IdentityInfo, IdentityReference,
};
use crate::service::ids::IdPool;

/// Identities allocated in process: cluster-wide ones for an agent without a kvstore (from
/// the cluster's range), and local-scope (CIDR) ones in every mode (bit 24 set, never in the
/// kvstore). Next-fit, so a released id is reused last; references are counted by
/// [`IdentityState`].
#[derive(Debug, Clone)]
pub struct InProcessAllocator {
    ids: IdPool,
    by_labels: HashMap<String, NumericIdentity>,
}

impl InProcessAllocator {
    /// The allocator of a cluster's range.
    pub fn new(cluster_id: ClusterId) -> Self {
        let range = cluster_id.identity_range();
        Self::over(range.start().get()..=range.end().get())
    }

    /// The allocator of the local-scope range.
    pub fn local_scope() -> Self {
        let range = NumericIdentity::local_scope_range();
        Self::over(range.start().get()..=range.end().get())
    }

    fn over(range: std::ops::RangeInclusive<u32>) -> Self {
        InProcessAllocator {
            ids: IdPool::new(range),
            by_labels: HashMap::new(),
        }
    }

    /// The id of `key`: the one it has, else `preferred` if that is free, else the next free
    /// one. Answers the id and whether it is new; `None` when the range is exhausted.
    fn allocate(
        &mut self,
        key: &str,
        preferred: Option<NumericIdentity>,
    ) -> Option<(NumericIdentity, bool)> {
        if let Some(id) = self.by_labels.get(key).copied() {
            if let Some(preferred) = preferred.filter(|p| *p != id) {
                tracing::warn!(labels = key, %id, %preferred, "labels already hold another identity than the preferred one");
            }
            return Some((id, false));
        }
        let id = match preferred {
            Some(preferred) if self.ids.take(preferred.get()) => preferred,
            Some(preferred) => {
                let id = NumericIdentity::new(self.ids.allocate()?);
                tracing::warn!(labels = key, %id, %preferred, "preferred identity is taken or out of range, allocated another");
                id
            }
            None => NumericIdentity::new(self.ids.allocate()?),
        };
        self.by_labels.insert(key.to_owned(), id);
        Some((id, true))
    }

    fn lookup(&self, key: &str) -> Option<NumericIdentity> {
        self.by_labels.get(key).copied()
    }

    fn free(&mut self, key: &str) {
        if let Some(id) = self.by_labels.remove(key) {
            self.ids.release(id.get());
        }
    }

    fn bounds(&self) -> (NumericIdentity, NumericIdentity) {
        (
            NumericIdentity::new(self.ids.first()),
            NumericIdentity::new(self.ids.last()),
        )
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
    local_scope_ids: InProcessAllocator,
    /// Identities of remote clusters of the mesh, by cluster. Their ranges never overlap the
    /// local cluster's (ids differ by cluster id, see [`IdentityState::remote_changed`]), so
    /// they never collide with `known`.
    remote: BTreeMap<ClusterId, BTreeMap<NumericIdentity, Labels>>,
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
            local_scope_ids: InProcessAllocator::local_scope(),
            remote: BTreeMap::new(),
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

    /// Local mode: allocates (or references) the identity of `labels`. A new label set gets
    /// `preferred` if that id is free (a restored endpoint keeps its identity); labels that
    /// already hold an identity keep it.
    pub fn allocate_in_process(
        &mut self,
        labels: &Labels,
        preferred: Option<NumericIdentity>,
    ) -> Result<(AllocatedIdentity, Option<IdentitiesChanged>), IdentityError> {
        let cluster_id = self.cluster_id;
        let Some(allocator) = &mut self.in_process else {
            return Err(IdentityError::NotAllocated {
                labels: labels.to_kvstore_string(),
            });
        };
        let (first, last) = allocator.bounds();
        let (id, is_new) = allocator
            .allocate(&labels.to_kvstore_string(), preferred)
            .ok_or(IdentityError::RangeExhausted {
                cluster_id,
                first,
                last,
            })?;
        if !is_new {
            *self.refs.entry(id).or_default() += 1;
            return Ok((AllocatedIdentity { id, is_new }, None));
        }
        let change = self.allocated(id, labels.clone());
        Ok((AllocatedIdentity { id, is_new }, change))
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
            .and_then(|allocator| allocator.lookup(&key))
            .ok_or(IdentityError::NotAllocated {
                labels: key.clone(),
            })?;
        if !self.unref(id) {
            return Ok((false, None));
        }
        if let Some(allocator) = &mut self.in_process {
            allocator.free(&key);
        }
        self.known.remove(&id);
        Ok((true, Some(removed(vec![id]))))
    }

    /// Takes a reference to the local-scope identity of `labels`, allocating it (with
    /// `preferred` if that is free) on first use.
    pub fn allocate_local_scope(
        &mut self,
        labels: &Labels,
        preferred: Option<NumericIdentity>,
    ) -> Result<(NumericIdentity, Option<IdentitiesChanged>), IdentityError> {
        let (first, last) = self.local_scope_ids.bounds();
        let (id, _) = self
            .local_scope_ids
            .allocate(&labels.to_kvstore_string(), preferred)
            .ok_or(IdentityError::LocalScopeExhausted { first, last })?;
        *self.refs.entry(id).or_default() += 1;
        if self.local_scope.get(&id) == Some(labels) {
            return Ok((id, None));
        }
        self.local_scope.insert(id, labels.clone());
        Ok((id, Some(added(vec![(id, labels.clone())]))))
    }

    /// Drops a reference to the local-scope identity of `labels`; the last one frees it and
    /// publishes it gone.
    pub fn release_local_scope(
        &mut self,
        labels: &Labels,
    ) -> Result<Option<IdentitiesChanged>, IdentityError> {
        let key = labels.to_kvstore_string();
        let id = self
            .local_scope_ids
            .lookup(&key)
            .ok_or(IdentityError::NotAllocated {
                labels: key.clone(),
            })?;
        if !self.unref(id) {
            return Ok(None);
        }
        self.local_scope_ids.free(&key);
        Ok(self.local_scope.remove(&id).map(|_| removed(vec![id])))
    }

    /// The local-scope identity of `labels`, if it has one.
    pub fn local_scope_id(&self, labels: &Labels) -> Option<NumericIdentity> {
        self.local_scope_ids.lookup(&labels.to_kvstore_string())
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

    /// Identities of the remote cluster `cluster` appeared, changed labels or went away.
    /// Ids outside the cluster's range are dropped with a warning, and so is everything
    /// claimed for the local cluster's id or for cluster 0 (not a mesh member): those ranges
    /// belong to this cluster's allocator. Removals of ids the cluster never added are
    /// ignored. Returns what to publish.
    pub fn remote_changed(
        &mut self,
        cluster: ClusterId,
        added: Vec<(NumericIdentity, Labels)>,
        removed: Vec<NumericIdentity>,
    ) -> Option<IdentitiesChanged> {
        if cluster == ClusterId::UNSET || cluster == self.cluster_id {
            tracing::warn!(
                %cluster,
                local_cluster_id = %self.cluster_id,
                added = added.len(),
                removed = removed.len(),
                "ignoring remote identities claimed for this cluster's id or cluster 0"
            );
            return None;
        }
        let identities = self.remote.entry(cluster).or_default();
        let mut gone = BTreeSet::new();
        for id in removed {
            if identities.remove(&id).is_some() {
                gone.insert(id);
            }
        }
        let mut fresh = BTreeMap::new();
        for (id, labels) in added {
            if !cluster.contains(id) {
                tracing::warn!(%cluster, %id, "ignoring remote identity outside its cluster's range");
                continue;
            }
            if identities.get(&id) != Some(&labels) {
                identities.insert(id, labels.clone());
                gone.remove(&id);
                fresh.insert(id, labels);
            }
        }
        if identities.is_empty() {
            self.remote.remove(&cluster);
        }
        let change = IdentitiesChanged {
            added: fresh.into_iter().collect(),
            removed: gone.into_iter().collect(),
        };
        (!change.is_empty()).then_some(change)
    }

    /// How many identities each remote cluster contributes, by cluster id.
    pub fn remote_counts(&self) -> BTreeMap<ClusterId, usize> {
        self.remote
            .iter()
            .map(|(cluster, ids)| (*cluster, ids.len()))
            .collect()
    }

    /// The labels of `id`.
    pub fn lookup(&self, id: NumericIdentity) -> Option<Labels> {
        if let Some(reserved) = ReservedIdentity::from_id(id) {
            return Some(reserved.labels());
        }
        self.known
            .get(&id)
            .or_else(|| self.local_scope.get(&id))
            .or_else(|| self.remote.get(&id.cluster_id())?.get(&id))
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
                    .chain(self.remote.values().flatten())
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
        let (a, change) = state.allocate_in_process(&labels("a"), None).unwrap();
        assert_eq!(
            a,
            AllocatedIdentity {
                id: id(2 << 16),
                is_new: true
            }
        );
        assert_eq!(change, Some(added(vec![(a.id, labels("a"))])));
        let (again, change) = state.allocate_in_process(&labels("a"), None).unwrap();
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
        let (b, _) = state.allocate_in_process(&labels("b"), None).unwrap();
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
        let l = Labels::for_cidr("10.0.0.0/8".parse().unwrap(), false);
        let (cidr, change) = state.allocate_local_scope(&l, None).unwrap();
        assert_eq!(cidr, NumericIdentity::MIN_LOCAL_SCOPE);
        assert_eq!(change, Some(added(vec![(cidr, l.clone())])));
        assert_eq!(state.allocate_local_scope(&l, None).unwrap(), (cidr, None));
        assert_eq!(state.local_scope_id(&l), Some(cidr));
        assert_eq!(state.release_local_scope(&l).unwrap(), None);
        assert_eq!(
            state.release_local_scope(&l).unwrap(),
            Some(removed(vec![cidr]))
        );
        assert!(state.references().is_empty());
        assert!(matches!(
            state.release_local_scope(&l),
            Err(IdentityError::NotAllocated { .. })
        ));
    }

    #[test]
    fn preferred_ids_are_taken_when_free_or_already_bound() {
        let mut state = IdentityState::local(ClusterId::UNSET);
        // Restored in another order than they were created: each keeps its id.
        let (b, _) = state
            .allocate_in_process(&labels("b"), Some(id(257)))
            .unwrap();
        let (a, _) = state
            .allocate_in_process(&labels("a"), Some(id(256)))
            .unwrap();
        assert_eq!((a.id, b.id), (id(256), id(257)));
        // Bound to the same labels: the same id, one more reference.
        let (again, change) = state
            .allocate_in_process(&labels("a"), Some(id(256)))
            .unwrap();
        assert_eq!((again.id, again.is_new, change), (id(256), false, None));
        // Taken by other labels, or outside the cluster's range: the next free id.
        let (c, _) = state
            .allocate_in_process(&labels("c"), Some(id(256)))
            .unwrap();
        assert_eq!(c.id, id(258));
        let (d, _) = state
            .allocate_in_process(&labels("d"), Some(id(100)))
            .unwrap();
        assert_eq!(d.id, id(259));
        // Labels that hold an identity keep it whatever is preferred.
        let (b_again, _) = state
            .allocate_in_process(&labels("b"), Some(id(300)))
            .unwrap();
        assert_eq!(b_again.id, id(257));

        let cidr = Labels::for_cidr("10.0.0.0/8".parse().unwrap(), false);
        let wanted = NumericIdentity::new(NumericIdentity::MIN_LOCAL_SCOPE.get() + 41);
        let (got, _) = state.allocate_local_scope(&cidr, Some(wanted)).unwrap();
        assert_eq!(got, wanted);
        // A cluster id is not a local-scope id.
        let other = Labels::for_cidr("10.1.0.0/16".parse().unwrap(), false);
        let (got, _) = state.allocate_local_scope(&other, Some(id(260))).unwrap();
        assert!(got.is_local_scope());
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

    fn remote_labels(app: &str, cluster: &str) -> Labels {
        Labels::from_k8s_pod(
            "default",
            [("app", app)],
            &model::identity::ClusterName::new(cluster).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn remote_identities_are_kept_per_cluster_within_its_range() {
        let mut state = IdentityState::local(ClusterId::new(1));
        let c2 = ClusterId::new(2);
        let first = id(2 << 16);
        let change = state.remote_changed(
            c2,
            vec![
                (first, remote_labels("a", "c2")),
                // Cluster 3's range, the local cluster's range, a reserved id: dropped.
                (id(3 << 16), remote_labels("x", "c2")),
                (id(1 << 16), remote_labels("y", "c2")),
                (NumericIdentity::HOST, remote_labels("z", "c2")),
            ],
            vec![],
        );
        assert_eq!(change, Some(added(vec![(first, remote_labels("a", "c2"))])));
        assert_eq!(state.lookup(first), Some(remote_labels("a", "c2")));
        assert_eq!(state.lookup(id(3 << 16)), None);
        assert!(state.list().iter().any(|info| info.id == first));
        assert_eq!(state.remote_counts(), BTreeMap::from([(c2, 1)]));
        // The same again: nothing to publish. New labels: published as added.
        assert_eq!(
            state.remote_changed(c2, vec![(first, remote_labels("a", "c2"))], vec![]),
            None
        );
        assert_eq!(
            state.remote_changed(c2, vec![(first, remote_labels("b", "c2"))], vec![]),
            Some(added(vec![(first, remote_labels("b", "c2"))]))
        );
        // Another cluster cannot remove cluster 2's identities.
        assert_eq!(
            state.remote_changed(ClusterId::new(3), vec![], vec![first]),
            None
        );
        assert_eq!(
            state.remote_changed(c2, vec![], vec![first, id((2 << 16) + 5)]),
            Some(removed(vec![first]))
        );
        assert_eq!(state.lookup(first), None);
        assert!(state.remote_counts().is_empty());
    }

    #[test]
    fn remote_identities_for_the_local_cluster_or_cluster_zero_are_ignored() {
        let mut state = IdentityState::local(ClusterId::new(1));
        let (local, _) = state.allocate_in_process(&labels("a"), None).unwrap();
        // A "remote" cluster with our id could overwrite our own identities.
        assert_eq!(
            state.remote_changed(ClusterId::new(1), vec![(local.id, labels("evil"))], vec![]),
            None
        );
        assert_eq!(
            state.remote_changed(ClusterId::UNSET, vec![(id(300), labels("evil"))], vec![]),
            None
        );
        assert_eq!(
            state.remote_changed(ClusterId::new(1), vec![], vec![local.id]),
            None
        );
        assert_eq!(state.lookup(local.id), Some(labels("a")));
    }

    #[test]
    fn remote_identities_never_collide_with_local_allocation() {
        // Every pair of distinct clusters (0 included, as a cluster outside a mesh) owns
        // disjoint ranges, so nothing a remote cluster may send is allocatable here.
        for a in 0..=u8::MAX {
            let others =
                (u16::from(a) + 1..=u16::from(u8::MAX)).filter_map(|b| u8::try_from(b).ok());
            let ra = ClusterId::new(a).identity_range();
            for b in others {
                let rb = ClusterId::new(b).identity_range();
                assert!(
                    ra.end() < rb.start() || rb.end() < ra.start(),
                    "clusters {a} and {b} overlap"
                );
            }
        }
        // And concretely: the local allocator's ids stay out of the remote's range, and a
        // remote identity does not disturb local allocation.
        let mut state = IdentityState::local(ClusterId::new(1));
        let remote = id(2 << 16);
        state.remote_changed(
            ClusterId::new(2),
            vec![(remote, remote_labels("a", "c2"))],
            vec![],
        );
        for app in ["a", "b", "c"] {
            let (allocated, _) = state
                .allocate_in_process(&labels(app), Some(remote))
                .unwrap();
            assert!(ClusterId::new(1).contains(allocated.id), "{allocated:?}");
            assert_ne!(allocated.id, remote);
        }
        assert_eq!(state.lookup(remote), Some(remote_labels("a", "c2")));
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
