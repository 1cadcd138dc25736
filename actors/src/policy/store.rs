//! Where the rules imported through the API survive an agent restart: the [`PolicyStore`]
//! trait, a JSON file in the state directory for production and an in-memory store for tests
//! and the simulation.
//!
//! Upstream keeps API-imported rules only in memory; we persist them because a restarted agent
//! must restore endpoints without changing their policy maps, which it can only do if it still
//! has the rules they were computed from. The file is replaced atomically (as IPAM's), and a
//! file that does not parse is an error, never an empty repository: starting without the
//! rules would put every restored endpoint into allow-all (or default deny).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::messages::PolicySnapshot;
use crate::ipam::store::replace_file;

/// The file name of the persisted rules in the state directory.
pub const POLICY_STATE_FILE: &str = "policies.json";

/// Errors reading or writing persisted rules.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("policy state file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("policy rules could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// The in-memory store was told to fail (fault injection in tests).
    #[error("policy store refused the write (injected fault)")]
    Injected,
}

/// Persistence of the repository's rules. Synchronous, like [`crate::ipam::IpamStore`]: a
/// rule change is answered only once it is on disk.
pub trait PolicyStore: Send + fmt::Debug {
    /// The last saved snapshot; `None` if nothing was ever saved.
    fn load(&mut self) -> Result<Option<PolicySnapshot>, PolicyStoreError>;

    /// Replaces the saved snapshot. When this fails, the previous snapshot is still intact.
    fn save(&mut self, snapshot: &PolicySnapshot) -> Result<(), PolicyStoreError>;
}

/// Rules in a JSON file, replaced atomically.
#[derive(Debug, Clone)]
pub struct FilePolicyStore {
    path: PathBuf,
}

impl FilePolicyStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FilePolicyStore { path: path.into() }
    }

    /// The store at [`POLICY_STATE_FILE`] in the agent's state directory.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(state_dir.join(POLICY_STATE_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl PolicyStore for FilePolicyStore {
    fn load(&mut self) -> Result<Option<PolicySnapshot>, PolicyStoreError> {
        let data = match fs::read(&self.path) {
            Ok(data) => data,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PolicyStoreError::Io {
                    op: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| PolicyStoreError::Corrupt {
                path: self.path.clone(),
                source,
            })
    }

    fn save(&mut self, snapshot: &PolicySnapshot) -> Result<(), PolicyStoreError> {
        let data = serde_json::to_vec_pretty(snapshot).map_err(PolicyStoreError::Encode)?;
        replace_file(&self.path, &data).map_err(|(op, path, source)| PolicyStoreError::Io {
            op,
            path,
            source,
        })
    }
}

/// Rules in memory. Clones share the saved snapshot, so a test (or the simulation) can
/// "restart" an agent by building a new repository on a clone of the old store.
#[derive(Debug, Clone, Default)]
pub struct MemoryPolicyStore {
    saved: Arc<Mutex<Option<PolicySnapshot>>>,
    fail_saves: Arc<AtomicBool>,
}

impl MemoryPolicyStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every following save fail (or succeed again), to exercise the rollback path.
    pub fn set_fail_saves(&self, fail: bool) {
        self.fail_saves.store(fail, Ordering::SeqCst);
    }

    /// The saved snapshot.
    pub fn saved(&self) -> Option<PolicySnapshot> {
        self.saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl PolicyStore for MemoryPolicyStore {
    fn load(&mut self) -> Result<Option<PolicySnapshot>, PolicyStoreError> {
        Ok(self.saved())
    }

    fn save(&mut self, snapshot: &PolicySnapshot) -> Result<(), PolicyStoreError> {
        if self.fail_saves.load(Ordering::SeqCst) {
            return Err(PolicyStoreError::Injected);
        }
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot.clone());
        Ok(())
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
        fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(
            store.load(),
            Err(PolicyStoreError::Corrupt { .. })
        ));
    }
}
