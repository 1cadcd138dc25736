//! The lab's private podman (`cilium lab pod create --runtime podman`): real containers whose
//! network comes from `cilium-cni` talking to a lab node's agent, as with any CNI runtime.
//!
//! Nothing of the host's podman is used or touched: the lab writes its own `containers.conf`
//! and `storage.conf` and keeps podman's storage (vfs), run state, tmp dir, file locks (not
//! the host-wide shared-memory ones), CNI configs and plugin dir under `DIR/podman/`, and puts
//! the containers under the cgroup `/cilium-lab-NAME`. Each pod gets its own CNI network whose
//! one plugin is `cilium-cni` with the node's agent socket and the pod's labels (CNI `args`),
//! since podman passes no labels of its own. The rootfs is busybox-static, run with runc
//! (crun fails on hybrid cgroups), so no image is pulled.
//!
//! The agent, not podman, makes the veth pair, so the container's host side lands in the
//! node's namespace without podman running there. Podman 4.3 keeps two things outside
//! `DIR/podman/`: the container's namespace (`/var/run/netns/netns-...`) and its CNI result
//! cache (`/var/lib/cni/results/`); the lab records both, and `podman rm` removes both.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::LabError;
use super::state::{LabState, NodeRecord, PodRecord, PodmanRecord, ProcessId};
use crate::api;

/// The statically linked busybox of Debian's `busybox-static`, the containers' whole rootfs.
pub const BUSYBOX: &str = "/usr/bin/busybox";
/// Where podman's CNI backend caches each ADD result for DEL.
pub const CNI_RESULTS: &str = "/var/lib/cni/results";
/// The container's command unless one is given: an echo server on port 80 that answers
/// `cilium lab echo-client` as the lab's own echo server does (each connection gets `cat`).
pub const DEFAULT_COMMAND: [&str; 6] = ["/bin/nc", "-ll", "-p", "80", "-e", "/bin/cat"];

const HINT: &str = "that podman, runc and busybox-static are installed \
                    (scripts/install-prereqs.sh) and the node's agent runs (`cilium lab status`)";

/// The lab's podman record: `DIR/podman` and the cgroup `/cilium-lab-NAME`.
pub fn record_for(state: &LabState) -> PodmanRecord {
    PodmanRecord {
        dir: state.dir.join("podman"),
        cgroup_parent: format!("/cilium-lab-{}", state.name),
    }
}

fn path(record: &PodmanRecord, sub: &str) -> PathBuf {
    record.dir.join(sub)
}

fn create_dir(path: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(path).map_err(|e| LabError::io("create", path, e))
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| LabError::io("write", path, e))
}

/// Checks that podman can run here and writes the lab's podman configuration and rootfs,
/// recording the podman directory in the state first. Nothing to do when it is there.
pub fn prepare(state: &mut LabState) -> Result<PodmanRecord, LabError> {
    for (tool, package) in [("podman", "podman"), ("runc", "runc"), ("conmon", "conmon")] {
        super::sys::run("which", &[tool]).map_err(|_| LabError::MissingTool { tool, package })?;
    }
    if !Path::new(BUSYBOX).is_file() {
        return Err(LabError::MissingTool {
            tool: BUSYBOX,
            package: "busybox-static",
        });
    }
    let record = match &state.podman {
        Some(record) => record.clone(),
        None => {
            let record = record_for(state);
            state.podman = Some(record.clone());
            state.save()?;
            record
        }
    };
    if path(&record, "containers.conf").is_file() {
        return Ok(record);
    }
    for sub in ["root", "runroot", "tmp", "net.d", "plugins", "rootfs/bin"] {
        create_dir(&path(&record, sub))?;
    }
    let plugin = path(&record, "plugins").join(crate::cni::PLUGIN_TYPE);
    if !plugin.exists() {
        let binary = state.bin_dir.join("cilium-cni");
        std::os::unix::fs::symlink(&binary, &plugin)
            .map_err(|e| LabError::io("link the CNI plugin at", &plugin, e))?;
    }
    let show = |sub| path(&record, sub).display().to_string();
    // default_ulimits: podman's defaults exceed what many machines allow. File locks: the
    // shared-memory locks are one segment for every podman of the machine, which a fresh
    // store resets on its first run.
    write(
        &path(&record, "containers.conf"),
        &format!(
            "[containers]\ndefault_ulimits = []\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{plugins:?}]\n\
             network_config_dir = {net_d:?}\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\nlock_type = \"file\"\ntmp_dir = {tmp:?}\n",
            plugins = show("plugins"),
            net_d = show("net.d"),
            tmp = show("tmp"),
        ),
    )?;
    write(
        &path(&record, "storage.conf"),
        &format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {root:?}\nrunroot = {runroot:?}\n",
            root = show("root"),
            runroot = show("runroot"),
        ),
    )?;
    build_rootfs(&path(&record, "rootfs"))?;
    Ok(record)
}

/// A rootfs of busybox with every applet it has linked into `/bin`.
fn build_rootfs(rootfs: &Path) -> Result<(), LabError> {
    for sub in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
        create_dir(&rootfs.join(sub))?;
    }
    let busybox = rootfs.join("bin/busybox");
    std::fs::copy(BUSYBOX, &busybox).map_err(|e| LabError::io("copy busybox to", &busybox, e))?;
    let applets = super::sys::run(BUSYBOX, &["--list"])?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .map_err(|e| LabError::io("link an applet at", &link, e))?;
        }
    }
    Ok(())
}

/// `podman` with the lab's configuration, storage and state, never the host's.
pub fn command(record: &PodmanRecord) -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", path(record, "containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", path(record, "storage.conf"))
        .arg("--root")
        .arg(path(record, "root"))
        .arg("--runroot")
        .arg(path(record, "runroot"))
        .arg("--tmpdir")
        .arg(path(record, "tmp"))
        .arg("--network-config-dir")
        .arg(path(record, "net.d"))
        .args([
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--network-backend",
            "cni",
        ])
        .stdin(Stdio::null());
    cmd
}

/// Runs podman with `args`; its trimmed stdout, or its stderr in the error.
pub fn run(record: &PodmanRecord, args: &[&str]) -> Result<String, LabError> {
    let out = command(record)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            program: "podman".to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Podman {
            action: args.join(" "),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            hint: HINT,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The CNI network of one pod: `cilium-cni` with `node`'s agent socket and the pod's labels.
pub fn write_network(
    record: &PodmanRecord,
    network: &str,
    node: &NodeRecord,
    pod: &PodRecord,
) -> Result<(), LabError> {
    let labels: Vec<api::LabelPair> = pod
        .labels
        .iter()
        .map(|(key, value)| api::LabelPair {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": crate::cni::PLUGIN_TYPE,
            "socket-path": node.socket,
            "args": {"cni": {"labels": labels}},
        }],
    });
    write(&network_file(record, network), &conflist.to_string())
}

pub fn network_file(record: &PodmanRecord, network: &str) -> PathBuf {
    path(record, "net.d").join(format!("{network}.conflist"))
}

/// The CNI result caches of every network the lab's podman has (`net.d/*.conflist`), found by
/// name so that those of a pod whose record was lost go too: `NETWORK-ID-eth0` with a
/// 64-hex-digit container id.
pub fn cni_caches(record: &PodmanRecord) -> Vec<PathBuf> {
    let networks: Vec<String> = std::fs::read_dir(path(record, "net.d"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".conflist")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(CNI_RESULTS) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|name| networks.iter().any(|network| is_cache_of(name, network)))
        })
        .map(|e| e.path())
        .collect()
}

/// Whether `file` is `NETWORK-ID-eth0` for `network` and a podman container id.
fn is_cache_of(file: &str, network: &str) -> bool {
    file.strip_prefix(network)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix("-eth0"))
        .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Starts the pod's container detached (its output in `log`); podman calls `cilium-cni` ADD
/// before the command runs. Its container id.
pub fn start(
    record: &PodmanRecord,
    pod: &PodRecord,
    network: &str,
    log: &Path,
    command: &[String],
) -> Result<String, LabError> {
    let rootfs = path(record, "rootfs").display().to_string();
    let log_opt = format!("path={}", log.display());
    let mut args: Vec<&str> = vec![
        "run",
        "--detach",
        "--name",
        &pod.name,
        "--hostname",
        &pod.name,
        "--network",
        network,
        "--cgroup-parent",
        &record.cgroup_parent,
        "--log-driver",
        "k8s-file",
        "--log-opt",
        &log_opt,
        "--rootfs",
        &rootfs,
    ];
    if command.is_empty() {
        args.extend_from_slice(&DEFAULT_COMMAND);
    } else {
        args.extend(command.iter().map(String::as_str));
    }
    run(record, &args)
}

/// What podman knows of a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub ip: Ipv4Addr,
    /// The namespace's name under /var/run/netns (`netns-...`).
    pub netns: String,
    pub pid: ProcessId,
    pub conmon: ProcessId,
}

/// The container's address on `network`, its namespace and its processes.
pub fn inspect(record: &PodmanRecord, id: &str, network: &str) -> Result<Running, LabError> {
    let text = run(record, &["inspect", "--type", "container", id])?;
    parse_inspect(&text, network)
}

fn parse_inspect(text: &str, network: &str) -> Result<Running, LabError> {
    let decode = |reason: String| LabError::Decode {
        what: "podman inspect".to_owned(),
        reason,
    };
    let all: serde_json::Value = serde_json::from_str(text).map_err(|e| decode(e.to_string()))?;
    let container = all
        .get(0)
        .ok_or_else(|| decode("no container in the answer".to_owned()))?;
    let settings = &container["NetworkSettings"];
    let ip = settings["Networks"][network]["IPAddress"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| decode(format!("no IPv4 address on network {network}")))?;
    let sandbox = settings["SandboxKey"]
        .as_str()
        .ok_or_else(|| decode("no SandboxKey".to_owned()))?;
    let netns = Path::new(sandbox)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|_| {
            Path::new(sandbox)
                .parent()
                .is_some_and(|p| p == Path::new("/run/netns") || p == Path::new("/var/run/netns"))
        })
        .ok_or_else(|| decode(format!("the namespace {sandbox} is not under /run/netns")))?
        .to_owned();
    let pid = |field: &str| {
        container["State"][field]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
            .map(ProcessId)
            .ok_or_else(|| decode(format!("no State.{field}")))
    };
    Ok(Running {
        ip,
        netns,
        pid: pid("Pid")?,
        conmon: pid("ConmonPid")?,
    })
}

/// `podman exec -i ID COMMAND...`: the command runs inside the container (its filesystem,
/// its namespaces).
pub fn exec_command(record: &PodmanRecord, id: &str, command: &[String]) -> Command {
    let mut cmd = self::command(record);
    cmd.args(["exec", "--interactive", id])
        .args(command.iter().map(OsString::from))
        .stdin(Stdio::inherit());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSPECT: &str = r#"[{"Id":"abc","State":{"Pid":4242,"ConmonPid":4240},
        "NetworkSettings":{"SandboxKey":"/run/netns/cni-1234",
        "Networks":{"lab-default-web":{"IPAddress":"10.1.1.9"}}}}]"#;

    #[test]
    fn inspect_gives_address_namespace_and_processes() {
        let running = parse_inspect(INSPECT, "lab-default-web").expect("parses");
        assert_eq!(
            running,
            Running {
                ip: Ipv4Addr::new(10, 1, 1, 9),
                netns: "cni-1234".to_owned(),
                pid: ProcessId(4242),
                conmon: ProcessId(4240),
            }
        );
        let err = parse_inspect(INSPECT, "other").expect_err("not on that network");
        assert!(err.to_string().contains("other"), "{err}");
        assert!(parse_inspect("[]", "lab-default-web").is_err());
        assert!(parse_inspect("nope", "lab-default-web").is_err());
        let elsewhere = INSPECT.replace("/run/netns/", "/tmp/");
        assert!(parse_inspect(&elsewhere, "lab-default-web").is_err());
        let stopped = INSPECT.replace("4242", "0");
        assert!(parse_inspect(&stopped, "lab-default-web").is_err());
    }

    #[test]
    fn caches_belong_to_a_network_by_exact_name() {
        let id = "a".repeat(64);
        assert!(is_cache_of(
            &format!("lab-default-web-{id}-eth0"),
            "lab-default-web"
        ));
        // Another lab's network that merely starts the same way is not ours.
        assert!(!is_cache_of(
            &format!("lab-default-web-2-{id}-eth0"),
            "lab-default-web"
        ));
        assert!(!is_cache_of("lab-default-web-abc-eth0", "lab-default-web"));
        assert!(!is_cache_of(
            &format!("lab-default-web-{id}-eth1"),
            "lab-default-web"
        ));
    }

    #[test]
    fn the_record_is_private_to_the_lab() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = LabState {
            name: "t1".to_owned(),
            dir: dir.path().to_owned(),
            kvstore: super::super::KvstoreKind::Memory,
            routing: super::super::RoutingMode::Native,
            bin_dir: dir.path().join("bin"),
            underlay: "t1-underlay".to_owned(),
            external: "t1-external".to_owned(),
            clusters: Vec::new(),
            relay: None,
            netns: Vec::new(),
            mounts: Vec::new(),
            processes: Vec::new(),
            pods: Vec::new(),
            podman: None,
        };
        let record = record_for(&state);
        assert_eq!(record.dir, dir.path().join("podman"));
        assert_eq!(record.cgroup_parent, "/cilium-lab-t1");
        let podman = command(&record);
        let args: Vec<String> = podman
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let root = dir.path().join("podman/root").display().to_string();
        assert!(
            args.windows(2).any(|w| w == ["--root", root.as_str()]),
            "{args:?}"
        );
    }
}
