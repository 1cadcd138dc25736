//! Endpoint records on disk: one JSON file per endpoint, `<state-dir>/endpoints/<id>.json`,
//! written atomically (temporary file, fsync, rename), so a crash leaves either the old or
//! the new record and a restarted agent can find every endpoint it was managing.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use datapath::api::EndpointId;

use super::state::EndpointRecord;

/// Reading or writing endpoint records failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointStoreError {
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("endpoint record {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("endpoint record {path} holds endpoint {found}, not the one its name says")]
    Mismatch { path: PathBuf, found: EndpointId },
}

/// The endpoint records of one state dir.
#[derive(Debug, Clone)]
pub struct EndpointStore {
    dir: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EndpointStoreError {
    let path = path.to_owned();
    move |source| EndpointStoreError::Io { op, path, source }
}

impl EndpointStore {
    /// Records live in `<state_dir>/endpoints/`.
    pub fn new(state_dir: &Path) -> Self {
        EndpointStore {
            dir: state_dir.join("endpoints"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: EndpointId) -> PathBuf {
        self.dir.join(format!("{}.json", id.get()))
    }

    /// Writes (or replaces) a record atomically.
    pub fn save(&self, record: &EndpointRecord) -> Result<(), EndpointStoreError> {
        fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let path = self.path(record.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", record.id.get()));
        let json =
            serde_json::to_vec_pretty(record).map_err(|source| EndpointStoreError::Parse {
                path: path.clone(),
                source,
            })?;
        let mut file = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        file.write_all(&json).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))
    }

    /// Removes a record; a missing record is not an error.
    pub fn remove(&self, id: EndpointId) -> Result<(), EndpointStoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(io_err("removing", &path)(err))
            }
            _ => Ok(()),
        }
    }

    /// Every record, in id order. Files that are not records (temporary files, other names)
    /// are skipped; a record that does not parse is reported with the others' results.
    pub fn load_all(
        &self,
    ) -> Result<Vec<Result<EndpointRecord, EndpointStoreError>>, EndpointStoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err("listing", &self.dir)(err)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u16>().ok())
            else {
                continue;
            };
            found.push((id, entry.path()));
        }
        found.sort();
        Ok(found
            .into_iter()
            .map(|(id, path)| {
                let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
                let record: EndpointRecord =
                    serde_json::from_slice(&bytes).map_err(|source| EndpointStoreError::Parse {
                        path: path.clone(),
                        source,
                    })?;
                if record.id.get() != id {
                    return Err(EndpointStoreError::Mismatch {
                        path,
                        found: record.id,
                    });
                }
                Ok(record)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::state::tests::record;

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = EndpointStore::new(dir.path());
        assert!(store.load_all().unwrap().is_empty());
        let (a, b) = (record(12, "a"), record(3, "b"));
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        let loaded: Vec<_> = store
            .load_all()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(loaded, vec![b.clone(), a.clone()]);
        store.remove(a.id).unwrap();
        store.remove(a.id).unwrap();
        let loaded: Vec<_> = store
            .load_all()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(loaded, vec![b]);
    }

    #[test]
    fn bad_records_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = EndpointStore::new(dir.path());
        store.save(&record(1, "a")).unwrap();
        fs::write(store.dir().join("2.json"), b"{ not json").unwrap();
        fs::write(
            store.dir().join("3.json"),
            serde_json::to_vec(&record(4, "c")).unwrap(),
        )
        .unwrap();
        fs::write(store.dir().join("notes.txt"), b"x").unwrap();
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.len(), 3);
        assert!(loaded[0].is_ok());
        assert!(matches!(loaded[1], Err(EndpointStoreError::Parse { .. })));
        assert!(matches!(
            loaded[2],
            Err(EndpointStoreError::Mismatch { .. })
        ));
    }
}
