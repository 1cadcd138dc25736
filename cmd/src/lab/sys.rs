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
use super::state::{LabState, NodeRecord, ProcessId, ProcessRecord};

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

/// Runs `command` and returns its stdout; `shown` is how the error names the command.
fn output_of(mut command: Command, shown: String) -> Result<String, LabError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the lab's cluster CLI (`cilium ARGS`) in the underlay, where the etcds listen,
/// without the caller's kvstore settings from the environment; its stdout.
pub fn cluster_cli(state: &LabState, args: &[&str]) -> Result<String, LabError> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &state.underlay])
        .arg(state.bin_dir.join("cilium"))
        .args(args)
        .env_remove("CILIUM_KVSTORE_OPT")
        .env_remove("CILIUM_CLUSTER_NAME")
        .env_remove("CILIUM_CLUSTER_ID");
    output_of(command, format!("cilium {}", args.join(" ")))
}

/// Runs the lab's `cilium-dbg ARGS` against `node`'s agent (its REST API socket); its stdout.
pub fn agent_cli(state: &LabState, node: &NodeRecord, args: &[&str]) -> Result<String, LabError> {
    let host = format!("unix://{}", node.socket.display());
    let mut command = Command::new(state.bin_dir.join("cilium-dbg"));
    command
        .env_remove("CILIUM_SOCK")
        .args(["-H", &host])
        .args(args);
    output_of(command, format!("cilium-dbg -H {host} {}", args.join(" ")))
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

/// Whether something is mounted at `path` (per `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes into mount paths.
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(decoded) => {
                out.push(decoded);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&out),
    ))
}

/// Every mount point at or below `dir` (per `/proc/self/mountinfo`), deepest first, so each
/// can be unmounted in order: what `down` sweeps after the recorded mounts, to catch mounts
/// the lab did not make itself (podman's per-container shm) or made before a crash.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Every mount point of this mount namespace, unescaped.
fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(unescape_mount_path)
                .collect()
        })
        .unwrap_or_default()
}

/// The processes (other than this one) whose command line names `path`: podman's conmon and
/// the `podman container cleanup` it starts carry the lab's podman directory in theirs.
pub fn pids_naming(path: &Path) -> Vec<ProcessId> {
    let needle = path.as_os_str().as_encoded_bytes();
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).is_ok_and(|p| p != own))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| !needle.is_empty() && c.windows(needle.len()).any(|w| w == needle))
        })
        .map(ProcessId)
        .filter(|pid| alive(*pid, None))
        .collect()
}

/// Removes the cgroup `parent` (`/name`) and everything below it in every hierarchy under
/// /sys/fs/cgroup; its processes must be gone. Cgroup directories hold only control files,
/// which go with their directory, so they are removed bottom-up with `rmdir`.
pub fn remove_cgroup(parent: &str) -> Result<(), LabError> {
    fn remove_tree(dir: &Path) -> Result<(), LabError> {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LabError::io("remove the cgroup", dir, e)),
        }
    }
    let relative = parent.trim_start_matches('/');
    if relative.is_empty() {
        return Ok(());
    }
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    // cgroup v2 alone has its controllers' files at the top: the root itself is a hierarchy.
    for root in std::iter::once(PathBuf::from("/sys/fs/cgroup")).chain(roots) {
        let dir = root.join(relative);
        if dir.is_dir() {
            remove_tree(&dir)?;
        }
    }
    Ok(())
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
    fn mount_paths_lose_their_octal_escapes() {
        assert_eq!(
            unescape_mount_path("/run/a\\040b/c"),
            PathBuf::from("/run/a b/c")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mount_path("/x\\9"), PathBuf::from("/x\\9"));
        assert_eq!(unescape_mount_path("/end\\"), PathBuf::from("/end\\"));
    }

    #[test]
    fn mounts_under_finds_proc_and_not_a_sibling() {
        let found = mounts_under(Path::new("/proc"));
        assert_eq!(found.last(), Some(&PathBuf::from("/proc")), "{found:?}");
        assert!(mounts_under(Path::new("/pro")).is_empty());
    }

    #[test]
    fn pids_naming_finds_a_child_by_its_argument() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("marker");
        // `; true` keeps the shell from exec'ing sleep, so its argument stays in view.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(&marker)
            .spawn()
            .expect("sh");
        let pid = ProcessId(i32::try_from(child.id()).expect("pid"));
        // The spawn returns while exec may still be setting up the new command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = pids_naming(&marker);
        while !found.contains(&pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
            found = pids_naming(&marker);
        }
        let _ = child.kill();
        let _ = child.wait();
        // The shell's fork for `sleep` may show the same command line until it execs.
        assert!(found.contains(&pid), "{found:?} lacks {pid}");
        assert!(pids_naming(&dir.path().join("no-such-marker")).is_empty());
    }

    #[test]
    fn failing_commands_report_their_stderr() {
        let err = run("ip", &["link", "show", "no-such-link-xyz"]).expect_err("fails");
        assert!(matches!(err, LabError::Command { .. }), "{err}");
        assert!(err.to_string().contains("no-such-link-xyz"), "{err}");
    }
}
