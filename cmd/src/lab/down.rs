//! `cilium lab down`: undoes everything the state file records, in an order that lets each
//! step succeed (processes, then mounts, then namespaces with their links), and succeeds when
//! there is nothing to undo, so it can be run again after a partial failure.

use std::path::Path;
use std::time::Duration;

use super::LabError;
use super::state::{LabLock, LabState, STATE_FILE};
use super::sys;

/// How long processes get to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// What `down` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Whether a lab was recorded at all.
    pub found: bool,
    pub processes_stopped: usize,
    pub mounts_removed: usize,
    pub netns_removed: usize,
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

    // Recorded processes, and anything else running in a lab namespace (a pod's `exec`, or a
    // process whose PID was not recorded because `up` died right after starting it).
    let mut targets: Vec<_> = state
        .processes
        .iter()
        .filter(|p| sys::record_alive(p))
        .filter_map(|p| p.pid.map(|pid| (pid, p.start_time)))
        .collect();
    let me = std::process::id();
    for netns in &state.netns {
        for pid in sys::netns_pids(netns) {
            if u32::try_from(pid.0).is_ok_and(|pid| pid == me) {
                continue;
            }
            if !targets.iter().any(|(known, _)| *known == pid) {
                targets.push((pid, sys::start_time(pid)));
            }
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
    // Pods first, the underlay (with the bridge) last.
    for netns in state.netns.iter().rev() {
        if sys::netns_exists(netns) {
            progress(&format!("deleting namespace {netns}..."));
            sys::del_netns(netns)?;
            report.netns_removed += 1;
        }
    }

    // Everything but the logs, which explain what happened.
    for sub in ["nodes", "etcd"] {
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
