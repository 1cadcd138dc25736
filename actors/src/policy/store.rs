//! Where the rules imported through the API survive an agent restart: the [`PolicyStore`]
//! trait, a JSON file in the state directory for production and an in-memory store for tests
//! and the simulation.
//!
//! Upstream keeps API-imported rules only in memory; we persist them because a restarted agent
//! must restore endpoints without changing their policy maps, which it can only do if it still
//! has the rules they were computed from. The file is a [`crate::persist`] snapshot store, replaced atomically, and a
//! file that does not parse is an error, never an empty repository: starting without the
//! rules would put every restored endpoint into allow-all (or default deny).

use std::path::Path;

use super::messages::PolicySnapshot;
use crate::persist::{JsonFileStore, MemorySnapshotStore, SnapshotStore};

pub use crate::persist::StoreError as PolicyStoreError;

/// The file name of the persisted rules in the state directory.
pub const POLICY_STATE_FILE: &str = "policies.json";

/// Persistence of the repository's rules: any snapshot store of [`PolicySnapshot`].
pub trait PolicyStore: SnapshotStore<PolicySnapshot> {}

impl<S: SnapshotStore<PolicySnapshot> + ?Sized> PolicyStore for S {}

/// Rules in a JSON file, replaced atomically.
pub type FilePolicyStore = JsonFileStore<PolicySnapshot>;

/// Rules in memory, for tests and the simulation.
pub type MemoryPolicyStore = MemorySnapshotStore<PolicySnapshot>;

impl JsonFileStore<PolicySnapshot> {
    /// The store at [`POLICY_STATE_FILE`] in the agent's state directory.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(state_dir.join(POLICY_STATE_FILE), "policy state")
    }
}

#[cfg(test)]
mod tests {
    use model::policy::Rule;

    use super::*;
    use crate::policy::Revision;

    #[test]
    fn the_file_store_round_trips_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FilePolicyStore::in_state_dir(dir.path());
        assert!(store.load().unwrap().is_none());
        let snapshot = PolicySnapshot {
            revision: Revision::new(7),
            rules: vec![Rule::default()],
        };
        store.save(&snapshot).unwrap();
        assert_eq!(store.load().unwrap(), Some(snapshot));
        assert!(!dir.path().join("policies.json.tmp").exists());
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(
            store.load(),
            Err(PolicyStoreError::Corrupt { .. })
        ));
    }
}
