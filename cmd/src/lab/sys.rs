//! The lab's contact with the system: `ip` (namespaces, links, routes), sysctls inside a
//! namespace, bpffs mounts, detached processes and signals. Every resource goes into the state
//! file before it is made, so `down` can undo it after a crash.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::LabError;
use super::state::{LabState, ProcessId, ProcessRecord};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs `program args...` and returns its stdout; its stderr in the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NETNS args...`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Records and creates namespace `name` with its loopback up.
pub fn add_netns(state: &mut LabState, name: &str) -> Result<(), LabError> {
    state.record_netns(name)?;
    run("ip", &["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `name` (with every link in it); nothing to do if it is gone.
pub fn del_netns(name: &str) -> Result<(), LabError> {
    if !netns_exists(name) {
        return Ok(());
    }
    run("ip", &["netns", "del", name]).map(drop)
}

/// The processes whose network namespace is `name` (none if it is gone).
pub fn netns_pids(name: &str) -> Vec<ProcessId> {
    if !netns_exists(name) {
        return Vec::new();
    }
    run("ip", &["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(ProcessId)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on a thread that joined namespace `netns`, so the caller's own namespace stays.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> Result<T, LabError> + Send + 'static,
) -> Result<T, LabError> {
    let ns_path = netns_path(netns);
    let ns = File::open(&ns_path).map_err(|e| LabError::io("open", &ns_path, e))?;
    let joined = thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| LabError::io("join the namespace", &ns_path, e.into()))?;
        f()
    })
    .join();
    joined.unwrap_or_else(|_| {
        Err(LabError::NetnsTask {
            netns: netns.to_owned(),
        })
    })
}

/// Writes sysctl `key` (dotted) inside namespace `netns`: `/proc/sys/net` shows the namespace
/// of the thread that opens it.
pub fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_owned();
    in_netns(netns, move || {
        std::fs::write(&path, value).map_err(|e| LabError::io("write", &path, e))
    })
}

/// Whether a TCP connection to `addr` from inside `netns` succeeds within `timeout`.
pub fn tcp_open_in(netns: &str, addr: std::net::SocketAddr, timeout: Duration) -> bool {
    in_netns(netns, move || {
        Ok(std::net::TcpStream::connect_timeout(&addr, timeout).is_ok())
    })
    .unwrap_or(false)
}

/// Whether something is mounted at `path` (per `/proc/mounts`).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|mount_point| mount_point == wanted)
}

/// Records and mounts a fresh bpffs at `path`, which pins outlive the agent on.
pub fn mount_bpffs(state: &mut LabState, path: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(path).map_err(|e| LabError::io("create", path, e))?;
    state.record_mount(path)?;
    if is_mounted(path) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpffs"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| LabError::io("mount bpffs on", path, e.into()))
}

/// Unmounts `path` (lazily, so an open pin does not block `down`); nothing to do if unmounted.
pub fn unmount(path: &Path) -> Result<(), LabError> {
    if !is_mounted(path) {
        return Ok(());
    }
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| LabError::io("unmount", path, e.into()))
}

/// A process to start detached inside a namespace.
#[derive(Debug)]
pub struct Spawn<'a> {
    pub component: String,
    pub netns: &'a str,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub log: PathBuf,
}

/// Records, then starts `spawn` in its own session (`setsid`, so the terminal's signals do not
/// reach it) inside its namespace, with stdin closed and its output appended to its log; both
/// `setsid` and `ip netns exec` exec, so the PID is the program's.
pub fn spawn_detached(state: &mut LabState, spawn: Spawn<'_>) -> Result<ProcessRecord, LabError> {
    let mut record = ProcessRecord {
        component: spawn.component.clone(),
        pid: None,
        start_time: None,
        log: spawn.log.clone(),
    };
    state.processes.retain(|p| p.component != spawn.component);
    state.processes.push(record.clone());
    state.save()?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spawn.log)
        .map_err(|e| LabError::io("open", &spawn.log, e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| LabError::io("duplicate", &spawn.log, e))?;
    let child = Command::new("setsid")
        .args(["ip", "netns", "exec", spawn.netns])
        .arg(spawn.program)
        .args(&spawn.args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|source| LabError::Spawn {
            program: spawn.program.display().to_string(),
            source,
        })?;
    let pid = i32::try_from(child.id()).map_err(|_| LabError::Decode {
        what: format!("the PID of {}", spawn.component),
        reason: "out of range".to_owned(),
    })?;
    // The lab outlives this command: the child is not waited for; init reaps it.
    drop(child);
    record.pid = Some(ProcessId(pid));
    record.start_time = start_time(ProcessId(pid));
    if let Some(slot) = state
        .processes
        .iter_mut()
        .find(|p| p.component == record.component)
    {
        *slot = record.clone();
    }
    state.save()?;
    Ok(record)
}

/// `(state, start time)` of a process from `/proc/PID/stat`; `None` if it is gone.
fn proc_stat(pid: ProcessId) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields follow the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// When process `pid` started, in clock ticks after boot.
pub fn start_time(pid: ProcessId) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// Whether the recorded process still runs: the PID exists, is no zombie, and started when
/// the record says (so a reused PID is not mistaken for it).
pub fn alive(pid: ProcessId, recorded_start: Option<u64>) -> bool {
    match proc_stat(pid) {
        None => false,
        Some(('Z' | 'X', _)) => false,
        Some((_, start)) => recorded_start.is_none_or(|recorded| recorded == start),
    }
}

/// Whether `record`'s process runs.
pub fn record_alive(record: &ProcessRecord) -> bool {
    record.pid.is_some_and(|pid| alive(pid, record.start_time))
}

/// Stops processes by PID: SIGTERM, up to `grace` to exit, then SIGKILL. Returns the PIDs
/// that still run afterwards.
pub fn stop(processes: &[(ProcessId, Option<u64>)], grace: Duration) -> Vec<ProcessId> {
    let running = |list: &[(ProcessId, Option<u64>)]| -> Vec<(ProcessId, Option<u64>)> {
        list.iter()
            .copied()
            .filter(|(pid, start)| alive(*pid, *start))
            .collect()
    };
    let signal_all = |list: &[(ProcessId, Option<u64>)], signal: Signal| {
        for (pid, _) in list {
            let _ = kill(Pid::from_raw(pid.0), signal);
        }
    };
    let wait = |list: &[(ProcessId, Option<u64>)], timeout: Duration| {
        let deadline = Instant::now() + timeout;
        let mut left = running(list);
        while !left.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            left = running(&left);
        }
        left
    };
    let targets = running(processes);
    signal_all(&targets, Signal::SIGTERM);
    let stubborn = wait(&targets, grace);
    signal_all(&stubborn, Signal::SIGKILL);
    wait(&stubborn, Duration::from_secs(5))
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessId(i32::try_from(std::process::id()).expect("pid"));
        let start = start_time(me).expect("own start time");
        assert!(alive(me, Some(start)));
        assert!(alive(me, None));
        assert!(!alive(me, Some(start + 1)));
        assert!(!alive(ProcessId(i32::MAX), None));
    }

    #[test]
    fn stop_terminates_a_child_by_pid() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = ProcessId(i32::try_from(child.id()).expect("pid"));
        let start = start_time(pid);
        let reaper = thread::spawn(move || child.wait());
        let left = stop(&[(pid, start)], Duration::from_secs(5));
        assert!(left.is_empty(), "still running: {left:?}");
        let status = reaper.join().expect("reaper").expect("wait");
        assert!(!status.success());
    }

    #[test]
    fn failing_commands_report_their_stderr() {
        let err = run("ip", &["link", "show", "no-such-link-xyz"]).expect_err("fails");
        assert!(matches!(err, LabError::Command { .. }), "{err}");
        assert!(err.to_string().contains("no-such-link-xyz"), "{err}");
    }
}
