//! A real container runtime calls `cilium-cni` (root): podman 4.3 with its CNI backend, the
//! runc runtime and a busybox rootfs runs two containers on a network whose only plugin is
//! `cilium-cni`; the real `cilium-agent` (in its own "node" namespace, with a private bpffs)
//! gives them addresses and endpoints, one container reaches the other over TCP and ICMP, and
//! `podman rm -f` (CNI DEL) leaves no endpoint, veth, route, lxc or ipcache entry behind.
//!
//! The host's podman and CNI configuration is never used: podman gets a private containers.conf
//! (CONTAINERS_CONF), storage root, run root, tmp dir, CNI config and plugin dirs and cgroup
//! parent, all released by a guard's `Drop` (containers removed, leftover mounts unmounted,
//! cgroup dirs removed), as are the agent (by PID), the bpffs mount and the namespace, so a
//! failing test leaves nothing. Podman 4.3 cannot move two things: the containers' namespaces
//! (/run/netns) and the CNI result cache (/var/lib/cni/results); both entries go with `rm`,
//! which the test checks.
//! The agent runs in its own namespace because it, not podman, creates the veth pair: podman
//! only creates the container's namespace and hands its path to the plugin.

#[path = "common/node.rs"]
mod node;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use node::{Agent, Netns, Node, unique};

/// The busybox-static binary (Debian's `busybox-static`, see scripts/install-prereqs.sh).
const BUSYBOX: &str = "/usr/bin/busybox";
/// The agent's pod range; private to its namespace, so it cannot clash with the host's.
const POD_RANGE: &str = "10.250.0.0/24";
const POD_PREFIX: &str = "10.250.0.";
const SERVER_PORT: u16 = 8080;

/// Podman with everything private: its own config, storage, run state, CNI config and plugin
/// dirs, cgroup parent and busybox rootfs, all under one temp dir.
struct Podman {
    dir: tempfile::TempDir,
    network: String,
    cgroup_parent: String,
}

impl Podman {
    /// Writes the private configuration: a network whose one plugin is `cilium-cni` talking
    /// to `socket`, and a plugin dir holding the built binary under its `type` name.
    fn new(socket: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let podman = Podman {
            network: unique("cilpod"),
            cgroup_parent: unique("/ciliumtest-podman"),
            dir,
        };
        for sub in ["root", "runroot", "tmp", "net.d", "plugins"] {
            std::fs::create_dir_all(podman.path(sub)).expect("podman dir");
        }
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_cilium-cni"),
            podman.path("plugins").join(cilium_cmd::cni::PLUGIN_TYPE),
        )
        .expect("plugin symlink");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": podman.network,
            "plugins": [{"type": cilium_cmd::cni::PLUGIN_TYPE, "socket-path": socket}],
        });
        std::fs::write(
            podman
                .path("net.d")
                .join(format!("{}.conflist", podman.network)),
            conflist.to_string(),
        )
        .expect("write conflist");
        // default_ulimits: the machine's limits are lower than podman's defaults.
        let containers_conf = format!(
            "[containers]\ndefault_ulimits = []\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [{plugins:?}]\n\
             network_config_dir = {net_d:?}\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\ntmp_dir = {tmp:?}\n",
            plugins = podman.path("plugins").display().to_string(),
            net_d = podman.path("net.d").display().to_string(),
            tmp = podman.path("tmp").display().to_string(),
        );
        std::fs::write(podman.path("containers.conf"), containers_conf)
            .expect("write containers.conf");
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {root:?}\nrunroot = {runroot:?}\n",
            root = podman.path("root").display().to_string(),
            runroot = podman.path("runroot").display().to_string(),
        );
        std::fs::write(podman.path("storage.conf"), storage_conf).expect("write storage.conf");
        podman.build_rootfs();
        podman
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// A rootfs of busybox and the applets the test uses; `--rootfs` needs no image.
    fn build_rootfs(&self) {
        let rootfs = self.path("rootfs");
        for sub in ["bin", "proc", "sys", "dev", "etc", "tmp", "run"] {
            std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs dir");
        }
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: install busybox-static (scripts/install-prereqs.sh)"
        );
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "nc", "ping", "ip", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet symlink");
        }
        // The server's answer: it reads the request first, so the reply proves both directions.
        let answer = rootfs.join("bin/answer");
        std::fs::write(&answer, "#!/bin/sh\nread -r line\necho \"pong $line\"\n")
            .expect("write answer script");
        std::fs::set_permissions(&answer, std::fs::Permissions::from_mode(0o755))
            .expect("chmod answer script");
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .arg("--root")
            .arg(self.path("root"))
            .arg("--runroot")
            .arg(self.path("runroot"))
            .arg("--tmpdir")
            .arg(self.path("tmp"))
            .arg("--network-config-dir")
            .arg(self.path("net.d"))
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
            ]);
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run podman (install it with scripts/install-prereqs.sh)")
    }

    /// Runs podman and returns its trimmed stdout; panics with stderr on failure.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts a detached container on the cilium network; returns its full id.
    fn start(&self, name: &str, command: &[&str]) -> String {
        let rootfs = self.path("rootfs").display().to_string();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.network,
            "--cgroup-parent",
            &self.cgroup_parent,
            "--rootfs",
            &rootfs,
        ];
        args.extend_from_slice(command);
        self.run(&args)
    }

    /// The container's address on the cilium network, as podman recorded the CNI result.
    fn address(&self, name: &str) -> Ipv4Addr {
        let networks: serde_json::Value = serde_json::from_str(&self.run(&[
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            name,
        ]))
        .expect("networks json");
        networks[&self.network]["IPAddress"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address for {name}: {networks}"))
    }

    /// The path podman gave the plugin as CNI_NETNS.
    fn sandbox(&self, name: &str) -> PathBuf {
        PathBuf::from(self.run(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            name,
        ]))
    }

    /// Mount points under the temp dir (podman's per-container shm), deepest first.
    fn mounts(&self) -> Vec<PathBuf> {
        let base = self.dir.path();
        let mut mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(base))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        mounts
    }

    /// Processes whose command line names the temp dir: conmon and the `podman container
    /// cleanup` it starts when a container exits. They must finish before the dir goes, or
    /// they would recreate parts of it.
    fn helpers_running(&self) -> bool {
        let needle = self.dir.path().as_os_str().as_encoded_bytes();
        let own = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .map(|entries| {
                entries.flatten().any(|e| {
                    let name = e.file_name();
                    name.to_str().is_some_and(|n| {
                        n != own && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                    }) && std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
                })
            })
            .unwrap_or(false)
    }

    /// The cgroup dirs podman made under the private parent, in every hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let parent = self.cgroup_parent.trim_start_matches('/');
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path().join(parent))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Removes an empty cgroup tree bottom-up (cgroup dirs hold only control files, which go with
/// their dir).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.output(&["rm", "--all", "--force", "--time", "0"]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.helpers_running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        for mount in self.mounts() {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in self.cgroup_dirs() {
            remove_cgroup_tree(&dir);
        }
    }
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `wait`.
fn eventually<T>(wait: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn endpoints(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .json(&["endpoint", "list"])
        .as_array()
        .cloned()
        .expect("endpoint array")
}

fn find_endpoint<'a>(
    endpoints: &'a [serde_json::Value],
    container_id: &str,
) -> Option<&'a serde_json::Value> {
    endpoints
        .iter()
        .find(|e| e["status"]["external-identifiers"]["container-id"] == container_id)
}

/// The entries of a `cilium-dbg bpf ... list -o json` dump.
fn map_entries(agent: &Agent, map: &str) -> Vec<serde_json::Value> {
    let dump = agent.json(&["bpf", map, "list"]);
    dump["cache"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no entries in the {map} dump: {dump}"))
}

/// Whether an entry's key holds `address` as a whole token (so .2 does not match .23).
fn mentions(entries: &[serde_json::Value], address: Ipv4Addr) -> bool {
    let text = address.to_string();
    entries.iter().any(|e| {
        e["key"].as_str().is_some_and(|key| {
            key.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .any(|token| token == text)
        })
    })
}

/// Whether the node has a route whose destination is `address` (alone or as a prefix).
fn has_route(node: &Netns, address: Ipv4Addr) -> bool {
    let text = address.to_string();
    node.ip(&["route", "show"]).lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|dst| dst == text || dst.starts_with(&format!("{text}/")))
    })
}

/// Where podman's CNI library keeps the ADD result it must hand back to DEL.
fn cni_cache(network: &str, container_id: &str) -> PathBuf {
    Path::new("/var/lib/cni/results").join(format!("{network}-{container_id}-eth0"))
}

#[test]
fn privileged_podman_runs_containers_through_cilium_cni() {
    let started = Instant::now();
    let node = Node::new(POD_RANGE);
    let agent = node.start_agent("agent.log");
    // Declared after the agent so it drops first: its `rm` still reaches the agent.
    let podman = Podman::new(&agent.socket);

    let networks = podman.run(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        networks
            .lines()
            .any(|l| l == format!("{} {}", podman.network, cilium_cmd::cni::PLUGIN_TYPE)),
        "podman does not see the cilium network: {networks}"
    );

    let server = unique("srv");
    let client = unique("cli");
    // `-ll`: nc keeps listening and runs the answer script for each connection.
    let port = SERVER_PORT.to_string();
    let run_started = Instant::now();
    let server_id = podman.start(
        &server,
        &["/bin/nc", "-ll", "-p", &port, "-e", "/bin/answer"],
    );
    let run_took = run_started.elapsed();
    let client_id = podman.start(&client, &["/bin/sleep", "600"]);
    let server_ip = podman.address(&server);
    let client_ip = podman.address(&client);
    for address in [server_ip, client_ip] {
        assert!(
            address.to_string().starts_with(POD_PREFIX),
            "{address} is not from the agent's range {POD_RANGE}"
        );
    }
    assert_ne!(server_ip, client_ip);
    let inside = podman.run(&["exec", &client, "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(
        inside.contains(&format!("inet {client_ip}/32")),
        "the container's eth0 lacks its address: {inside}"
    );

    // The agent made one ready endpoint per container, named after podman's container.
    let listed = endpoints(&agent);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let mut server_veth = String::new();
    for (id, name, address) in [
        (&server_id, &server, server_ip),
        (&client_id, &client, client_ip),
    ] {
        let endpoint = find_endpoint(&listed, id)
            .unwrap_or_else(|| panic!("no endpoint for container {id}: {listed:?}"));
        let status = &endpoint["status"];
        assert_eq!(status["state"], "ready", "{endpoint}");
        assert_eq!(
            status["external-identifiers"]["k8s-pod-name"],
            name.as_str(),
            "{endpoint}"
        );
        assert_eq!(
            status["networking"]["addressing"][0]["ipv4"],
            address.to_string(),
            "{endpoint}"
        );
        if id == &server_id {
            server_veth = status["networking"]["interface-name"]
                .as_str()
                .expect("interface name")
                .to_owned();
        }
    }
    let veths = node.host_veth_names();
    assert_eq!(veths.len(), 2, "{veths:?}");
    assert!(
        veths.contains(&server_veth),
        "{server_veth} not in {veths:?}"
    );
    assert!(mentions(&map_entries(&agent, "ipcache"), server_ip));
    assert!(mentions(&map_entries(&agent, "endpoint"), server_ip));
    assert!(has_route(&node.ns, server_ip), "no route to {server_ip}");
    assert!(cni_cache(&podman.network, &server_id).exists());

    // TCP from one container to the other, through the agent's datapath; retried while the
    // server's nc may still be starting.
    let request = format!("ping-{client}");
    let target = format!("echo {request} | nc -w 3 {server_ip} {SERVER_PORT}");
    let answer = eventually(Duration::from_secs(15), || {
        let out = podman.output(&["exec", &client, "/bin/sh", "-c", &target]);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !stdout.is_empty()).then_some(stdout)
    });
    assert_eq!(
        answer,
        Some(format!("pong {request}")),
        "no TCP answer from {server_ip}:{SERVER_PORT}: {}",
        agent.log_text()
    );
    podman.run(&[
        "exec",
        &client,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        &server_ip.to_string(),
    ]);

    // `podman rm -f` runs CNI DEL: the server's endpoint, veth, route, map entries, address
    // and namespace go; the client's stay.
    let server_netns = podman.sandbox(&server);
    assert!(server_netns.exists(), "{}", server_netns.display());
    let rm_started = Instant::now();
    podman.run(&["rm", "--force", "--time", "0", &server]);
    let rm_took = rm_started.elapsed();
    let listed = endpoints(&agent);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(find_endpoint(&listed, &client_id).is_some(), "{listed:?}");
    let veths = node.host_veth_names();
    assert_eq!(veths.len(), 1, "{veths:?}");
    assert!(!veths.contains(&server_veth), "{server_veth} left behind");
    assert!(!mentions(&map_entries(&agent, "ipcache"), server_ip));
    assert!(!mentions(&map_entries(&agent, "endpoint"), server_ip));
    assert!(mentions(&map_entries(&agent, "endpoint"), client_ip));
    assert!(!has_route(&node.ns, server_ip), "route to {server_ip} left");
    assert!(has_route(&node.ns, client_ip), "route to {client_ip} gone");
    assert!(!cni_cache(&podman.network, &server_id).exists());
    assert!(!server_netns.exists(), "{} left", server_netns.display());
    let status = agent.json(&["status"]);
    assert_eq!(status["ipam"]["allocated"], 1, "{status}");

    podman.run(&["rm", "--force", "--time", "0", &client]);
    assert_eq!(endpoints(&agent).len(), 0);
    assert!(!has_route(&node.ns, client_ip), "route to {client_ip} left");
    assert!(!cni_cache(&podman.network, &client_id).exists());
    assert_eq!(node.host_veth_names().len(), 0);
    assert!(map_entries(&agent, "endpoint").is_empty());
    assert!(!mentions(&map_entries(&agent, "ipcache"), client_ip));
    let status = agent.json(&["status"]);
    assert_eq!(status["ipam"]["allocated"], 0, "{status}");
    assert_eq!(podman.run(&["ps", "--all", "--quiet"]), "");

    assert!(
        podman.mounts().is_empty(),
        "mounts left: {:?}",
        podman.mounts()
    );
    drop(podman);
    agent.terminate();
    eprintln!(
        "podman run (CNI ADD) {run_took:?}, podman rm (CNI DEL) {rm_took:?}, test {:?}",
        started.elapsed()
    );
}
