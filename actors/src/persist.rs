//! Snapshots an actor must find again after an agent restart (IPAM allocations, imported
//! policy rules): the [`SnapshotStore`] trait, a JSON file replaced atomically for production,
//! and an in-memory store for tests and the simulation.
//!
//! The file is replaced atomically (write a temporary file next to it, sync it, rename it over
//! the old one, sync the directory), so a crash leaves either the old or the new snapshot, never
//! a torn file. A file that does not parse is an error, never an empty snapshot: starting over
//! would forget state that running pods still depend on.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors reading or writing a persisted snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} file {path} is corrupt; move it aside only once nothing running depends on it")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} could not be encoded")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The in-memory store was told to fail (fault injection in tests).
    #[error("the store refused the write (injected fault)")]
    Injected,
}

/// Persistence of one snapshot. Synchronous: snapshots are small, written once per change,
/// and the change is answered only once it is saved.
pub trait SnapshotStore<T>: Send + fmt::Debug {
    /// The last saved snapshot; `None` if nothing was ever saved.
    fn load(&mut self) -> Result<Option<T>, StoreError>;

    /// Replaces the saved snapshot. When this fails, the previous snapshot is still intact.
    fn save(&mut self, snapshot: &T) -> Result<(), StoreError>;
}

/// A snapshot in a JSON file, replaced atomically.
pub struct JsonFileStore<T> {
    path: PathBuf,
    /// What the file holds, for error messages ("ipam state", "policy state").
    what: &'static str,
    _snapshot: PhantomData<fn() -> T>,
}

impl<T> JsonFileStore<T> {
    pub fn new(path: impl Into<PathBuf>, what: &'static str) -> Self {
        JsonFileStore {
            path: path.into(),
            what,
            _snapshot: PhantomData,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<T> Clone for JsonFileStore<T> {
    fn clone(&self) -> Self {
        JsonFileStore::new(self.path.clone(), self.what)
    }
}

impl<T> fmt::Debug for JsonFileStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonFileStore")
            .field("path", &self.path)
            .field("what", &self.what)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> SnapshotStore<T> for JsonFileStore<T> {
    fn load(&mut self) -> Result<Option<T>, StoreError> {
        let data = match fs::read(&self.path) {
            Ok(data) => data,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "reading",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                what: self.what,
                path: self.path.clone(),
                source,
            })
    }

    fn save(&mut self, snapshot: &T) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(snapshot).map_err(|source| StoreError::Encode {
            what: self.what,
            source,
        })?;
        replace_file(&self.path, &data).map_err(|(op, path, source)| StoreError::Io {
            op,
            path,
            source,
        })
    }
}

/// A snapshot in memory. Clones share it, so a test (or the simulation) can "restart" an agent
/// by building a new actor on a clone of the old store.
#[derive(Debug)]
pub struct MemorySnapshotStore<T> {
    saved: Arc<Mutex<Option<T>>>,
    fail_saves: Arc<AtomicBool>,
}

impl<T> Clone for MemorySnapshotStore<T> {
    fn clone(&self) -> Self {
        MemorySnapshotStore {
            saved: Arc::clone(&self.saved),
            fail_saves: Arc::clone(&self.fail_saves),
        }
    }
}

impl<T> Default for MemorySnapshotStore<T> {
    fn default() -> Self {
        MemorySnapshotStore {
            saved: Arc::new(Mutex::new(None)),
            fail_saves: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<T: Clone> MemorySnapshotStore<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every following save fail (or succeed again), to exercise the rollback path.
    pub fn set_fail_saves(&self, fail: bool) {
        self.fail_saves.store(fail, Ordering::SeqCst);
    }

    /// The saved snapshot.
    pub fn saved(&self) -> Option<T> {
        self.saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<T: Clone + Send + fmt::Debug> SnapshotStore<T> for MemorySnapshotStore<T> {
    fn load(&mut self) -> Result<Option<T>, StoreError> {
        Ok(self.saved())
    }

    fn save(&mut self, snapshot: &T) -> Result<(), StoreError> {
        if self.fail_saves.load(Ordering::SeqCst) {
            return Err(StoreError::Injected);
        }
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot.clone());
        Ok(())
    }
}

/// Replaces `path` with `data` atomically: a temporary file next to it, synced, renamed over
/// it, and the directory synced, so a crash leaves the old or the new content, never a torn
/// file. On failure: the operation, the path it failed on, and the error.
fn replace_file(path: &Path, data: &[u8]) -> Result<(), (&'static str, PathBuf, io::Error)> {
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
