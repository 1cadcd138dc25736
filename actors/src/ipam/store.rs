//! Where IPAM allocations survive an agent restart: a [`crate::persist`] snapshot store of
//! [`IpamSnapshot`], a JSON file in the state directory in production. A file that does not
//! parse is an error, never an empty allocator: starting over would hand out addresses that
//! running pods still use.

use std::path::Path;

use super::state::IpamSnapshot;
use crate::persist::{JsonFileStore, MemorySnapshotStore, SnapshotStore};

pub use crate::persist::StoreError as IpamStoreError;

/// The file name of the host-scope allocations in the state directory.
pub const IPAM_STATE_FILE: &str = "ipam-host-scope.json";

/// Persistence of the allocations: any snapshot store of [`IpamSnapshot`].
pub trait IpamStore: SnapshotStore<IpamSnapshot> {}

impl<S: SnapshotStore<IpamSnapshot> + ?Sized> IpamStore for S {}

/// Allocations in a JSON file, replaced atomically.
pub type FileIpamStore = JsonFileStore<IpamSnapshot>;

/// Allocations in memory, for tests and the simulation.
pub type MemoryIpamStore = MemorySnapshotStore<IpamSnapshot>;

impl JsonFileStore<IpamSnapshot> {
    /// The store at [`IPAM_STATE_FILE`] in the agent's state directory.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(state_dir.join(IPAM_STATE_FILE), "ipam state")
    }
}
