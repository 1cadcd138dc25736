//! The `--clustermesh-config` directory: one etcd configuration file per remote cluster, the
//! file name being the cluster name. Read every poll interval and compared with what was seen
//! before, so that files appearing, changing and disappearing at runtime are noticed (also
//! behind the symbolic links Kubernetes mounts ConfigMaps and Secrets with).
//!
//! As upstream: hidden files, directories, the local cluster's own name and files that do not
//! look like an etcd configuration (no `endpoints:`) are not clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use model::identity::ClusterName;

/// A change of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DirChange {
    Added {
        name: ClusterName,
        path: PathBuf,
    },
    /// The file's contents changed: reconnect with the new configuration.
    Changed {
        name: ClusterName,
        path: PathBuf,
    },
    Removed {
        name: ClusterName,
    },
}

#[derive(Debug)]
pub(crate) struct ConfigDirectory {
    path: PathBuf,
    local: ClusterName,
    /// The contents of each tracked file, to notice changes.
    tracked: BTreeMap<ClusterName, Vec<u8>>,
    /// File names already warned about, so the warning is not repeated every poll.
    warned: BTreeSet<String>,
    read_failed: bool,
}

impl ConfigDirectory {
    pub(crate) fn new(path: PathBuf, local: ClusterName) -> Self {
        ConfigDirectory {
            path,
            local,
            tracked: BTreeMap::new(),
            warned: BTreeSet::new(),
            read_failed: false,
        }
    }

    /// Reads the directory and reports what changed since the last scan. A directory that
    /// cannot be read changes nothing: a transient error must not drain the mesh.
    pub(crate) fn scan(&mut self) -> Vec<DirChange> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => {
                self.read_failed = false;
                entries
            }
            Err(err) => {
                if !self.read_failed {
                    tracing::warn!(dir = %self.path.display(), error = %err, "cannot read clustermesh configuration directory");
                    self.read_failed = true;
                }
                return Vec::new();
            }
        };
        let mut current: BTreeMap<ClusterName, (PathBuf, Vec<u8>)> = BTreeMap::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with('.') || file_name == self.local.as_str() {
                continue;
            }
            let path = entry.path();
            let Some(contents) = read_etcd_config(&path) else {
                continue;
            };
            match ClusterName::new(file_name) {
                Ok(name) => {
                    current.insert(name, (path, contents));
                }
                Err(err) => {
                    if self.warned.insert(file_name.to_owned()) {
                        tracing::warn!(file = %path.display(), error = %err, "skipping clustermesh configuration with an invalid cluster name");
                    }
                }
            }
        }

        let mut changes = Vec::new();
        let removed: Vec<ClusterName> = self
            .tracked
            .keys()
            .filter(|name| !current.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            self.tracked.remove(&name);
            changes.push(DirChange::Removed { name });
        }
        for (name, (path, contents)) in current {
            match self.tracked.insert(name.clone(), contents.clone()) {
                None => changes.push(DirChange::Added { name, path }),
                Some(old) if old != contents => changes.push(DirChange::Changed { name, path }),
                Some(_) => {}
            }
        }
        changes
    }
}

/// The contents of `path` if it is a readable file that looks like an etcd configuration.
fn read_etcd_config(path: &Path) -> Option<Vec<u8>> {
    // `metadata` follows symbolic links, which is what Kubernetes mounts are made of.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let contents = std::fs::read(path).ok()?;
    let looks_like_config = contents
        .windows(b"endpoints:".len())
        .any(|w| w == b"endpoints:");
    looks_like_config.then_some(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    #[test]
    fn scans_report_additions_changes_and_removals() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let config = |endpoint: &str| format!("endpoints:\n- {endpoint}\n");
        std::fs::write(dir.join("c2"), config("https://c2:2379")).unwrap();
        std::fs::write(dir.join("c1"), config("https://c1:2379")).unwrap();
        std::fs::write(dir.join(".c3"), config("https://c3:2379")).unwrap();
        std::fs::write(dir.join("C4"), config("https://c4:2379")).unwrap();
        std::fs::write(dir.join("c5"), "not an etcd config").unwrap();
        let mut scanner = ConfigDirectory::new(dir.to_owned(), name("c1"));

        assert_eq!(
            scanner.scan(),
            [DirChange::Added {
                name: name("c2"),
                path: dir.join("c2")
            }]
        );
        assert_eq!(scanner.scan(), []);

        std::fs::write(dir.join("c2"), config("https://c2-new:2379")).unwrap();
        std::fs::write(dir.join("c5"), config("https://c5:2379")).unwrap();
        let mut changes = scanner.scan();
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            [
                DirChange::Added {
                    name: name("c5"),
                    path: dir.join("c5")
                },
                DirChange::Changed {
                    name: name("c2"),
                    path: dir.join("c2")
                },
            ]
        );

        std::fs::remove_file(dir.join("c2")).unwrap();
        std::fs::write(dir.join("c5"), "endpoints gone").unwrap();
        let mut changes = scanner.scan();
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            [
                DirChange::Removed { name: name("c2") },
                DirChange::Removed { name: name("c5") },
            ]
        );
    }

    #[test]
    fn an_unreadable_directory_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("c2"), "endpoints:\n- x\n").unwrap();
        let mut scanner = ConfigDirectory::new(tmp.path().to_owned(), name("c1"));
        assert_eq!(scanner.scan().len(), 1);
        let gone = tmp.path().to_owned();
        drop(tmp);
        assert!(!gone.exists());
        assert_eq!(scanner.scan(), []);
    }
}
