//! The lab's state file (`DIR/state.json`): what the lab is (clusters, nodes, pods) and every
//! resource it created, each written here before it is created so that `down` finds it even
//! when `up` died half-way.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LabError;

/// The state file's name inside the lab directory.
pub const STATE_FILE: &str = "state.json";
/// The lock file's name inside the lab directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive lock on a lab directory, held by every command that changes the state (read,
/// change, write), so two commands at once (say, two `pod create`) never lose a record.
/// Released on drop.
#[derive(Debug)]
pub struct LabLock {
    _file: std::fs::File,
}

impl LabLock {
    /// Waits for the lock of `dir`; `None` if the directory does not exist (no lab to guard).
    pub fn acquire(dir: &Path) -> Result<Option<LabLock>, LabError> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let path = dir.join(LOCK_FILE);
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LabError::io("open", &path, e))?;
        file.lock().map_err(|e| LabError::io("lock", &path, e))?;
        Ok(Some(LabLock { _file: file }))
    }
}

/// Where the clusters keep their shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvstoreKind {
    /// One etcd per cluster, the operator allocating pod CIDRs, ClusterMesh between clusters.
    Etcd,
    /// One node and no etcd: the agent allocates identities itself from `--ipv4-range`.
    Memory,
}

/// The agents' `--routing-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    Native,
    Tunnel,
}

impl RoutingMode {
    /// The agent flag's value.
    pub fn flag(self) -> &'static str {
        match self {
            RoutingMode::Native => "native",
            RoutingMode::Tunnel => "tunnel",
        }
    }
}

/// A process id as the kernel gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcessId(pub i32);

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A detached process of the lab. `pid` is `None` between the record and the spawn; the start
/// time (clock ticks after boot, `/proc/PID/stat` field 22) tells the process from a later one
/// that reuses its PID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is: `etcd c1`, `agent c1-n1`, `hubble-relay`, ...
    pub component: String,
    pub pid: Option<ProcessId>,
    pub start_time: Option<u64>,
    pub log: PathBuf,
}

/// One node: a namespace on the bridge running an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `cK-nM`: the agent's node name and the name users give `--node`.
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// State dir, sockets and clustermesh configs.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub hubble_socket: PathBuf,
    pub bpffs: PathBuf,
    /// Known once the agent's IPAM hands out addresses.
    pub pod_cidr: Option<String>,
}

/// One cluster: its control plane (with etcd) and its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// `cK`.
    pub name: String,
    pub id: u8,
    /// The pod CIDR pool (cluster-pool IPAM) or the single node's range (memory kvstore).
    pub pool: String,
    /// `http://IP:2379`, with etcd.
    pub etcd_endpoint: Option<String>,
    /// The etcd client config file (`--kvstore-opt etcd.config=FILE`), with etcd.
    pub etcd_config: Option<PathBuf>,
    pub nodes: Vec<NodeRecord>,
}

/// What made a pod: both call `cilium-cni` against the node's agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodRuntime {
    /// A bare network namespace made by the lab, which calls `cilium-cni` itself.
    #[default]
    Netns,
    /// A real container run by podman (busybox rootfs, runc), which calls `cilium-cni`
    /// through its CNI backend.
    Podman,
}

impl PodRuntime {
    pub fn name(self) -> &'static str {
        match self {
            PodRuntime::Netns => "netns",
            PodRuntime::Podman => "podman",
        }
    }
}

/// A pod made through `cilium-cni`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    /// The node's name (`cK-nM`).
    pub node: String,
    /// The pod's network namespace under /var/run/netns: the lab's own, or the one podman
    /// made (`netns-...`; empty until the container runs).
    pub netns: String,
    /// The CNI container id: the lab's `lab-NS-NAME`, or podman's container id (empty until
    /// the container runs).
    pub container_id: String,
    pub labels: BTreeMap<String, String>,
    /// Known once CNI ADD succeeded.
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub runtime: PodRuntime,
    /// The podman network (its CNI config `DIR/podman/net.d/NETWORK.conflist`) of a podman pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// The lab's private podman: storage, run state, locks, CNI config and rootfs under `dir`,
/// containers under the cgroup `cgroup_parent`. Recorded before podman first runs, so `down`
/// removes the containers and everything of podman's even after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodmanRecord {
    pub dir: PathBuf,
    /// `/cilium-lab-NAME`, below the root of every cgroup hierarchy.
    pub cgroup_parent: String,
}

/// Everything `status`, `pod` and `down` need to know about a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub kvstore: KvstoreKind,
    pub routing: RoutingMode,
    /// Where the Cilium binaries the lab runs are.
    pub bin_dir: PathBuf,
    pub underlay: String,
    pub external: String,
    pub clusters: Vec<ClusterRecord>,
    /// The relay's Observer API inside the underlay, once started.
    pub relay: Option<String>,
    /// Every namespace, in creation order (pods' included).
    pub netns: Vec<String>,
    /// Every bpffs mount.
    pub mounts: Vec<PathBuf>,
    pub processes: Vec<ProcessRecord>,
    pub pods: Vec<PodRecord>,
    /// The lab's podman, once a podman pod was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman: Option<PodmanRecord>,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// The recorded lab in `dir`; `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<LabState>, LabError> {
        let path = LabState::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LabError::io("read", path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LabError::BadState { path, source })
    }

    /// The recorded lab in `dir`, or [`LabError::NotUp`].
    pub fn require(dir: &Path) -> Result<LabState, LabError> {
        LabState::load(dir)?.ok_or_else(|| LabError::NotUp {
            dir: dir.to_owned(),
        })
    }

    /// Writes the state atomically (temp file, then rename), so a crash never leaves half a
    /// file behind.
    pub fn save(&self) -> Result<(), LabError> {
        let path = LabState::path(&self.dir);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::Decode {
            what: "lab state".to_owned(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|e| LabError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io("rename", &path, e))
    }

    /// Records namespace `name` (before it is created).
    pub fn record_netns(&mut self, name: &str) -> Result<(), LabError> {
        if !self.netns.iter().any(|n| n == name) {
            self.netns.push(name.to_owned());
        }
        self.save()
    }

    /// Records a mount point (before it is mounted).
    pub fn record_mount(&mut self, path: &Path) -> Result<(), LabError> {
        if !self.mounts.iter().any(|m| m == path) {
            self.mounts.push(path.to_owned());
        }
        self.save()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.clusters.iter().flat_map(|c| c.nodes.iter())
    }

    pub fn node(&self, name: &str) -> Result<&NodeRecord, LabError> {
        self.nodes()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::UnknownNode {
                node: name.to_owned(),
                known: self
                    .nodes()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The process record of `component`, if any.
    pub fn process(&self, component: &str) -> Option<&ProcessRecord> {
        self.processes.iter().find(|p| p.component == component)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> LabState {
        LabState {
            name: "lab".to_owned(),
            dir: dir.to_owned(),
            kvstore: KvstoreKind::Etcd,
            routing: RoutingMode::Native,
            bin_dir: dir.join("bin"),
            underlay: "lab-underlay".to_owned(),
            external: "lab-external".to_owned(),
            clusters: vec![ClusterRecord {
                name: "c1".to_owned(),
                id: 1,
                pool: "10.1.0.0/16".to_owned(),
                etcd_endpoint: None,
                etcd_config: None,
                nodes: vec![NodeRecord {
                    name: "c1-n1".to_owned(),
                    netns: "lab-c1-n1".to_owned(),
                    ip: Ipv4Addr::new(192, 168, 90, 11),
                    dir: dir.join("nodes/c1-n1"),
                    socket: dir.join("nodes/c1-n1/cilium.sock"),
                    hubble_socket: dir.join("nodes/c1-n1/hubble.sock"),
                    bpffs: dir.join("nodes/c1-n1/bpf"),
                    pod_cidr: Some("10.1.1.0/24".to_owned()),
                }],
            }],
            relay: None,
            netns: vec![],
            mounts: vec![],
            processes: vec![],
            pods: vec![],
            podman: None,
        }
    }

    #[test]
    fn state_round_trips_and_records_each_resource_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(LabState::load(dir.path()).expect("load"), None);
        let mut state = sample(dir.path());
        state.record_netns("lab-underlay").expect("record");
        state.record_netns("lab-underlay").expect("record again");
        state.record_mount(&dir.path().join("bpf")).expect("mount");
        let loaded = LabState::require(dir.path()).expect("recorded");
        assert_eq!(loaded, state);
        assert_eq!(loaded.netns, vec!["lab-underlay".to_owned()]);
        assert_eq!(loaded.node("c1-n1").expect("node").ip.octets()[3], 11);
        let unknown = loaded.node("c9-n9").expect_err("no such node");
        assert!(unknown.to_string().contains("c1-n1"), "{unknown}");
    }

    #[test]
    fn a_state_file_from_before_podman_pods_still_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut state = sample(dir.path());
        state.pods.push(PodRecord {
            name: "web".to_owned(),
            namespace: "default".to_owned(),
            node: "c1-n1".to_owned(),
            netns: "lab-pod-default-web".to_owned(),
            container_id: "lab-default-web".to_owned(),
            labels: BTreeMap::new(),
            ip: None,
            runtime: PodRuntime::Netns,
            network: None,
        });
        let mut json = serde_json::to_value(&state).expect("encode");
        json.as_object_mut().expect("object").remove("podman");
        json["pods"][0]
            .as_object_mut()
            .expect("pod object")
            .remove("runtime");
        std::fs::write(LabState::path(dir.path()), json.to_string()).expect("write");
        let loaded = LabState::require(dir.path()).expect("old state loads");
        assert_eq!(loaded, state);
        assert_eq!(loaded.pods[0].runtime, PodRuntime::Netns);
    }

    #[test]
    fn a_broken_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(LabState::path(dir.path()), "{not json").expect("write");
        let err = LabState::load(dir.path()).expect_err("broken");
        assert!(err.to_string().contains("state.json"), "{err}");
        assert!(matches!(
            LabState::require(tempfile::tempdir().expect("dir").path()),
            Err(LabError::NotUp { .. })
        ));
    }

    #[test]
    fn the_lock_is_exclusive_and_needs_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(
            LabLock::acquire(&dir.path().join("missing"))
                .expect("no dir")
                .is_none()
        );
        let held = LabLock::acquire(dir.path())
            .expect("lock")
            .expect("dir exists");
        let other = std::fs::File::open(dir.path().join(LOCK_FILE)).expect("open");
        assert!(other.try_lock().is_err(), "a second holder got the lock");
        drop(held);
        other.try_lock().expect("free after drop");
    }
}
