//! The allocator's view of the cluster: every master key (`id/<n>` = label string), kept
//! current by a watch, plus what this node holds. Pure state, no IO: the allocator and its
//! watch task change it under one `std::sync::Mutex` and never hold that across an await.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::RangeInclusive;

use model::identity::NumericIdentity;
use model::labels::Labels;

use crate::backend::LeaseId;

/// One master key as last seen.
#[derive(Debug, Clone)]
pub(super) struct Master {
    /// The label string exactly as stored.
    pub(super) key: String,
    /// The parsed labels; `None` if the value is not a label string (the id is still taken).
    pub(super) labels: Option<Labels>,
}

/// An identity this node uses, with its local reference count.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) id: NumericIdentity,
    pub(super) refs: u64,
}

#[derive(Debug)]
pub(super) struct State {
    /// The lease slave keys are written with.
    pub(super) lease: LeaseId,
    pub(super) rng: fastrand::Rng,
    masters: HashMap<NumericIdentity, Master>,
    /// Label string to every id whose master holds it; normally one, and the lowest wins.
    by_key: HashMap<String, BTreeSet<NumericIdentity>>,
    /// Ids that a create-only write found taken before the watch reported them.
    taken_hints: HashSet<NumericIdentity>,
    /// Label string to the identity this node holds for it.
    held: HashMap<String, Held>,
    /// The reverse of `held`, so that picking a free id and reacting to a deleted master
    /// cost O(1) however many identities the node holds.
    held_by_id: HashMap<NumericIdentity, String>,
}

impl State {
    pub(super) fn new(lease: LeaseId, rng_seed: u64) -> Self {
        State {
            lease,
            rng: fastrand::Rng::with_seed(rng_seed),
            masters: HashMap::new(),
            by_key: HashMap::new(),
            taken_hints: HashSet::new(),
            held: HashMap::new(),
            held_by_id: HashMap::new(),
        }
    }

    /// The identity this node holds for `key`, with its reference count.
    pub(super) fn held_mut(&mut self, key: &str) -> Option<&mut Held> {
        self.held.get_mut(key)
    }

    /// The id this node holds for `key`.
    pub(super) fn held_id(&self, key: &str) -> Option<NumericIdentity> {
        self.held.get(key).map(|held| held.id)
    }

    /// Records the first local reference to `id` for `key`.
    pub(super) fn hold(&mut self, key: String, id: NumericIdentity) {
        self.held_by_id.insert(id, key.clone());
        if let Some(old) = self.held.insert(key, Held { id, refs: 1 })
            && old.id != id
        {
            self.held_by_id.remove(&old.id);
        }
    }

    /// Forgets the identity held for `key` (its last reference was released).
    pub(super) fn unhold(&mut self, key: &str) {
        if let Some(old) = self.held.remove(key) {
            self.held_by_id.remove(&old.id);
        }
    }

    /// Every label string this node holds an identity for.
    pub(super) fn held_keys(&self) -> Vec<String> {
        self.held.keys().cloned().collect()
    }

    /// The held identities whose master key is missing from the cache.
    pub(super) fn held_without_master(&self) -> Vec<(String, NumericIdentity)> {
        self.held
            .iter()
            .filter(|(_, held)| !self.masters.contains_key(&held.id))
            .map(|(key, held)| (key.clone(), held.id))
            .collect()
    }

    /// Records a master key (from the watch, or optimistically after our own write).
    pub(super) fn upsert_master(&mut self, id: NumericIdentity, key: String) {
        self.taken_hints.remove(&id);
        if let Some(old) = self.masters.get(&id)
            && old.key == key
        {
            return;
        }
        self.remove_master(id);
        let labels = Labels::from_kvstore_string(&key).ok();
        // With two ids for one label string (a race between clusters of old releases), the
        // lowest id wins, so every node resolves the labels the same way.
        self.by_key.entry(key.clone()).or_default().insert(id);
        self.masters.insert(id, Master { key, labels });
    }

    /// Forgets a master key that was deleted.
    pub(super) fn remove_master(&mut self, id: NumericIdentity) {
        let Some(old) = self.masters.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_key.get_mut(&old.key) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_key.remove(&old.key);
            }
        }
    }

    /// Replaces every master key with a fresh listing (after the watch had to restart).
    pub(super) fn replace_masters(&mut self, masters: Vec<(NumericIdentity, String)>) {
        self.masters.clear();
        self.by_key.clear();
        for (id, key) in masters {
            self.upsert_master(id, key);
        }
    }

    pub(super) fn master(&self, id: NumericIdentity) -> Option<&Master> {
        self.masters.get(&id)
    }

    pub(super) fn id_of(&self, key: &str) -> Option<NumericIdentity> {
        self.by_key.get(key).and_then(|ids| ids.first()).copied()
    }

    pub(super) fn mark_taken(&mut self, id: NumericIdentity) {
        self.taken_hints.insert(id);
    }

    /// The label string this node holds `id` for, if any.
    pub(super) fn held_key_of(&self, id: NumericIdentity) -> Option<&str> {
        self.held_by_id.get(&id).map(String::as_str)
    }

    /// A random id of `range` that no master key, hint or local reference uses: a random
    /// start, then the first free id from there (wrapping), so a nearly full range still
    /// finds the last free ids. `None` when the range is full.
    pub(super) fn pick_free(
        &mut self,
        range: &RangeInclusive<NumericIdentity>,
    ) -> Option<NumericIdentity> {
        let first = range.start().get();
        let last = range.end().get();
        if first > last {
            return None;
        }
        let size = u64::from(last - first) + 1;
        let offset = self.rng.u64(0..size);
        (0..size)
            .map(|step| {
                // `(offset + step) % size < size <= 2^32`, so the sum stays within the range.
                let delta = ((offset + step) % size) as u32;
                NumericIdentity::new(first + delta)
            })
            .find(|id| {
                !self.masters.contains_key(id)
                    && !self.taken_hints.contains(id)
                    && !self.held_by_id.contains_key(id)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> NumericIdentity {
        NumericIdentity::new(n)
    }

    #[test]
    fn lowest_id_wins_for_duplicate_label_strings() {
        let mut state = State::new(LeaseId(1), 7);
        state.upsert_master(id(300), "k8s:a=b;".to_owned());
        state.upsert_master(id(260), "k8s:a=b;".to_owned());
        assert_eq!(state.id_of("k8s:a=b;"), Some(id(260)));
        state.remove_master(id(260));
        assert_eq!(state.id_of("k8s:a=b;"), Some(id(300)));
        state.remove_master(id(300));
        assert_eq!(state.id_of("k8s:a=b;"), None);
    }

    #[test]
    fn undecodable_masters_still_take_their_id() {
        let mut state = State::new(LeaseId(1), 7);
        state.upsert_master(id(256), "garbage".to_owned());
        assert!(state.master(id(256)).is_some_and(|m| m.labels.is_none()));
        let range = id(256)..=id(257);
        assert_eq!(state.pick_free(&range), Some(id(257)));
    }

    #[test]
    fn pick_free_finds_the_last_id_and_reports_a_full_range() {
        let mut state = State::new(LeaseId(1), 42);
        let range = id(256)..=id(263);
        for n in 256..=263 {
            if n != 261 {
                state.upsert_master(id(n), format!("k8s:n={n};"));
            }
        }
        assert_eq!(state.pick_free(&range), Some(id(261)));
        state.mark_taken(id(261));
        assert_eq!(state.pick_free(&range), None);
        state.upsert_master(id(261), "k8s:n=261;".to_owned());
        state.remove_master(id(261));
        assert_eq!(state.pick_free(&range), Some(id(261)));
    }

    #[test]
    fn the_same_seed_picks_the_same_ids() {
        let range = id(1 << 16)..=id((2 << 16) - 1);
        let picks = |seed| {
            let mut state = State::new(LeaseId(1), seed);
            (0..5)
                .map(|_| {
                    let picked = state.pick_free(&range).expect("free");
                    state.mark_taken(picked);
                    picked
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(9), picks(9));
        assert_ne!(picks(9), picks(10));
    }
}
