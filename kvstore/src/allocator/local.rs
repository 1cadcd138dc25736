//! Local-scope identities: CIDR identities (and others that must not leave the node) get ids
//! with bit 24 set, allocated in process and never written to the kvstore, as upstream's local
//! identity cache does.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use model::identity::NumericIdentity;
use model::labels::Labels;

use super::{Allocation, AllocatorError};

/// A reference-counted, node-local allocator of local-scope identities. Released ids are
/// reused, lowest first.
#[derive(Debug, Default)]
pub struct LocalIdentityAllocator {
    state: Mutex<LocalState>,
}

#[derive(Debug, Default)]
struct LocalState {
    by_key: HashMap<String, Entry>,
    by_id: HashMap<NumericIdentity, Labels>,
    /// Ids released and free for reuse.
    free: BTreeSet<NumericIdentity>,
    /// The lowest id never handed out; `None` once the range is used up.
    next: Option<NumericIdentity>,
}

#[derive(Debug)]
struct Entry {
    id: NumericIdentity,
    refs: u64,
}

impl LocalIdentityAllocator {
    pub fn new() -> Self {
        LocalIdentityAllocator {
            state: Mutex::new(LocalState {
                next: Some(*NumericIdentity::local_scope_range().start()),
                ..LocalState::default()
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the local identity of `labels`, allocating one on first use, and takes a
    /// reference to it.
    pub fn allocate(&self, labels: &Labels) -> Result<Allocation, AllocatorError> {
        let key = labels.to_kvstore_string();
        let mut state = self.state();
        if let Some(entry) = state.by_key.get_mut(&key) {
            entry.refs += 1;
            return Ok(Allocation {
                id: entry.id,
                is_new: false,
            });
        }
        let range = NumericIdentity::local_scope_range();
        let id = match state.free.pop_first() {
            Some(id) => id,
            None => {
                let id = state.next.ok_or(AllocatorError::LocalRangeExhausted {
                    first: *range.start(),
                    last: *range.end(),
                })?;
                state.next = (id < *range.end()).then(|| NumericIdentity::new(id.get() + 1));
                id
            }
        };
        state.by_key.insert(key, Entry { id, refs: 1 });
        state.by_id.insert(id, labels.clone());
        Ok(Allocation { id, is_new: true })
    }

    /// Drops one reference to `labels`; on the last one its id becomes free and `true` is
    /// returned.
    pub fn release(&self, labels: &Labels) -> Result<bool, AllocatorError> {
        let key = labels.to_kvstore_string();
        let mut state = self.state();
        let Some(entry) = state.by_key.get_mut(&key) else {
            return Err(AllocatorError::NotAllocated { labels: key });
        };
        if entry.refs > 1 {
            entry.refs -= 1;
            return Ok(false);
        }
        let id = entry.id;
        state.by_key.remove(&key);
        state.by_id.remove(&id);
        state.free.insert(id);
        Ok(true)
    }

    pub fn lookup(&self, id: NumericIdentity) -> Option<Labels> {
        self.state().by_id.get(&id).cloned()
    }

    pub fn lookup_labels(&self, labels: &Labels) -> Option<NumericIdentity> {
        self.state()
            .by_key
            .get(&labels.to_kvstore_string())
            .map(|entry| entry.id)
    }
}

#[cfg(test)]
mod tests {
    use model::labels::Label;

    use super::*;

    fn cidr(n: u8) -> Labels {
        [Label::new("cidr", format!("10.0.{n}.0/24"), "")]
            .into_iter()
            .collect()
    }

    #[test]
    fn refcounts_and_reuses_released_ids() {
        let alloc = LocalIdentityAllocator::new();
        let first = alloc.allocate(&cidr(1)).expect("allocates");
        assert_eq!(first.id, NumericIdentity::MIN_LOCAL_SCOPE);
        assert!(first.id.is_local_scope());
        assert!(first.is_new);
        let again = alloc.allocate(&cidr(1)).expect("allocates");
        assert_eq!(
            again,
            Allocation {
                id: first.id,
                is_new: false
            }
        );
        let second = alloc.allocate(&cidr(2)).expect("allocates");
        assert_eq!(second.id.get(), first.id.get() + 1);
        assert_eq!(alloc.lookup(second.id), Some(cidr(2)));
        assert_eq!(alloc.lookup_labels(&cidr(2)), Some(second.id));

        assert!(!alloc.release(&cidr(1)).expect("releases"));
        assert!(alloc.release(&cidr(1)).expect("releases"));
        assert_eq!(alloc.lookup(first.id), None);
        assert!(matches!(
            alloc.release(&cidr(1)),
            Err(AllocatorError::NotAllocated { .. })
        ));
        // The released id is handed out again before fresh ones.
        let third = alloc.allocate(&cidr(3)).expect("allocates");
        assert_eq!(third.id, first.id);
    }
}
