//! `cilium lab down`: undoes everything the state file records, in an order that lets each
//! step succeed (podman's containers while the agents still answer their CNI DEL, then
//! processes, mounts, namespaces with their links, cgroups and files), and succeeds when there
//! is nothing to undo, so it can be run again after a partial failure. Besides the recorded
//! mounts it unmounts every mount left under the lab directory, so a mount made by a crashed
//! step or by podman on its own still goes.

use std::path::Path;
use std::time::Duration;

use super::state::{LabLock, LabState, STATE_FILE};
use super::{LabError, podman, sys};

/// How long processes get to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How long podman's helpers (conmon, `podman container cleanup`) get to finish after `rm`.
const PODMAN_HELPERS: Duration = Duration::from_secs(15);

/// What `down` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Whether a lab was recorded at all.
    pub found: bool,
    pub processes_stopped: usize,
    pub mounts_removed: usize,
    pub netns_removed: usize,
    pub containers_removed: bool,
}

/// Tears down the lab in `dir`; `progress` hears each step. The logs stay in `dir/logs`.
pub fn down(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<DownReport, LabError> {
    let _lock = LabLock::acquire(dir)?;
    let Some(state) = LabState::load(dir)? else {
        progress(&format!(
            "no lab recorded in {}: nothing to do",
            dir.display()
        ));
        return Ok(DownReport::default());
    };
    let mut report = DownReport {
        found: true,
        ..DownReport::default()
    };

    // Podman's containers first, while the agents still answer the CNI DEL of `rm`; whatever
    // `rm` cannot do (a crashed lab) the steps below undo by force.
    if let Some(record) = &state.podman {
        if record.dir.join("containers.conf").is_file() {
            progress("removing the podman containers...");
            match podman::run(record, &["rm", "--all", "--force", "--time", "0"]) {
                Ok(_) => report.containers_removed = true,
                Err(e) => progress(&format!("  {e}; stopping their processes instead")),
            }
        }
        let deadline = std::time::Instant::now() + PODMAN_HELPERS;
        while !sys::pids_naming(&record.dir).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Recorded processes, and anything else running in a lab namespace (a pod's `exec`, or a
    // process whose PID was not recorded because `up` died right after starting it).
    let mut targets: Vec<_> = state
        .processes
        .iter()
        .filter(|p| sys::record_alive(p))
        .filter_map(|p| p.pid.map(|pid| (pid, p.start_time)))
        .collect();
    let me = std::process::id();
    // Podman's conmon runs outside the lab's namespaces but names the podman dir.
    let helpers = state
        .podman
        .as_ref()
        .map(|record| sys::pids_naming(&record.dir))
        .unwrap_or_default();
    let in_netns = state.netns.iter().flat_map(|netns| sys::netns_pids(netns));
    for pid in in_netns.chain(helpers) {
        if u32::try_from(pid.0).is_ok_and(|pid| pid == me) {
            continue;
        }
        if !targets.iter().any(|(known, _)| *known == pid) {
            targets.push((pid, sys::start_time(pid)));
        }
    }
    if !targets.is_empty() {
        progress(&format!("stopping {} processes...", targets.len()));
    }
    let left = sys::stop(&targets, GRACE);
    if !left.is_empty() {
        return Err(LabError::Survivors { pids: left });
    }
    report.processes_stopped = targets.len();

    for mount in &state.mounts {
        if sys::is_mounted(mount) {
            progress(&format!("unmounting {}...", mount.display()));
            sys::unmount(mount)?;
            report.mounts_removed += 1;
        }
    }
    for mount in sys::mounts_under(&state.dir) {
        progress(&format!("unmounting {}...", mount.display()));
        sys::unmount(&mount)?;
        report.mounts_removed += 1;
    }
    // Pods first, the underlay (with the bridge) last.
    for netns in state.netns.iter().rev() {
        if sys::netns_exists(netns) {
            progress(&format!("deleting namespace {netns}..."));
            sys::del_netns(netns)?;
            report.netns_removed += 1;
        }
    }

    if let Some(record) = &state.podman {
        sys::remove_cgroup(&record.cgroup_parent)?;
        // The CNI result caches podman keeps outside the lab dir: `rm` removes them, unless
        // the agent was gone for its CNI DEL.
        for cache in podman::cni_caches(record) {
            progress(&format!("removing {}...", cache.display()));
            std::fs::remove_file(&cache).map_err(|e| LabError::io("remove", &cache, e))?;
        }
    }

    // Everything but the logs, which explain what happened.
    for sub in ["nodes", "etcd", "podman", "demo"] {
        let path = dir.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| LabError::io("remove", &path, e))?;
        }
    }
    let path = dir.join(STATE_FILE);
    std::fs::remove_file(&path).map_err(|e| LabError::io("remove", &path, e))?;
    progress(&format!(
        "lab {} is down (logs kept in {})",
        state.name,
        dir.join("logs").display()
    ));
    Ok(report)
}
