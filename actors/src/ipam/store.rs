//! Where IPAM allocations survive an agent restart: the [`IpamStore`] trait, a JSON file in the
//! state directory for production and an in-memory store for tests and the simulation.
//!
//! The file is replaced atomically (write a temporary file next to it, sync it, rename it over
//! the old one, sync the directory), so a crash leaves either the old or the new allocations,
//! never a torn file. A file that does not parse is an error, never an empty allocator:
//! starting over would hand out addresses that running pods still use.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::state::IpamSnapshot;

/// The file name of the host-scope allocations in the state directory.
pub const IPAM_STATE_FILE: &str = "ipam-host-scope.json";

/// Errors reading or writing persisted allocations.
#[derive(Debug, thiserror::Error)]
pub enum IpamStoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "ipam state file {path} is corrupt; remove it only once no endpoint uses its addresses"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("ipam state could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// The in-memory store was told to fail (fault injection in tests).
    #[error("ipam store refused the write (injected fault)")]
    Injected,
}

/// Persistence of the allocations. Synchronous: the snapshot is small and written once per
/// allocation or release, and the answer to the caller must wait for it anyway.
pub trait IpamStore: Send + fmt::Debug {
    /// The last saved snapshot; `None` if nothing was ever saved.
    fn load(&mut self) -> Result<Option<IpamSnapshot>, IpamStoreError>;

    /// Replaces the saved snapshot. When this fails, the previous snapshot is still intact.
    fn save(&mut self, snapshot: &IpamSnapshot) -> Result<(), IpamStoreError>;
}

/// Allocations in a JSON file, replaced atomically.
#[derive(Debug, Clone)]
pub struct FileIpamStore {
    path: PathBuf,
}

impl FileIpamStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileIpamStore { path: path.into() }
    }

    /// The store at [`IPAM_STATE_FILE`] in the agent's state directory.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(state_dir.join(IPAM_STATE_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl IpamStore for FileIpamStore {
    fn load(&mut self) -> Result<Option<IpamSnapshot>, IpamStoreError> {
        let data = match fs::read(&self.path) {
            Ok(data) => data,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error("reading", &self.path)(err)),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| IpamStoreError::Corrupt {
                path: self.path.clone(),
                source,
            })
    }

    fn save(&mut self, snapshot: &IpamSnapshot) -> Result<(), IpamStoreError> {
        let data = serde_json::to_vec_pretty(snapshot).map_err(IpamStoreError::Encode)?;
        replace_file(&self.path, &data).map_err(|(op, path, source)| IpamStoreError::Io {
            op,
            path,
            source,
        })
    }
}

/// Replaces `path` with `data` atomically: a temporary file next to it, synced, renamed over
/// it, and the directory synced, so a crash leaves the old or the new content, never a torn
/// file. On failure: the operation, the path it failed on, and the error.
pub(crate) fn replace_file(
    path: &Path,
    data: &[u8],
) -> Result<(), (&'static str, PathBuf, io::Error)> {
    let fail = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |err: io::Error| (op, path, err)
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(fail("creating directory", &dir))?;
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    let mut file = File::create(&temp).map_err(fail("creating", &temp))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(fail("writing", &temp))?;
    drop(file);
    fs::rename(&temp, path).map_err(fail("renaming into place", path))?;
    // The rename is durable only once the directory entry is on disk.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("syncing directory", &dir))
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IpamStoreError {
    let path = path.to_owned();
    move |source| IpamStoreError::Io { op, path, source }
}

/// Allocations in memory. Clones share the saved snapshot, so a test (or the simulation) can
/// "restart" an agent by building a new actor on a clone of the old store.
#[derive(Debug, Clone, Default)]
pub struct MemoryIpamStore {
    saved: Arc<Mutex<Option<IpamSnapshot>>>,
    fail_saves: Arc<AtomicBool>,
}

impl MemoryIpamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every following save fail (or succeed again), to exercise the rollback path.
    pub fn set_fail_saves(&self, fail: bool) {
        self.fail_saves.store(fail, Ordering::SeqCst);
    }

    /// The saved snapshot.
    pub fn saved(&self) -> Option<IpamSnapshot> {
        self.saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl IpamStore for MemoryIpamStore {
    fn load(&mut self) -> Result<Option<IpamSnapshot>, IpamStoreError> {
        Ok(self.saved())
    }

    fn save(&mut self, snapshot: &IpamSnapshot) -> Result<(), IpamStoreError> {
        if self.fail_saves.load(Ordering::SeqCst) {
            return Err(IpamStoreError::Injected);
        }
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot.clone());
        Ok(())
    }
}
