//! The real `cilium-agent` binary (root): started in a fresh "node" network namespace with a
//! private bpffs and state dir, two pods created through `cilium-cni` as a runtime calls it,
//! real TCP between them, a policy imported with cilium-dbg dropping a third pod (seen by
//! `cilium-dbg monitor`), a restart that restores endpoints and rules, CNI DEL leaving no
//! veth, address or map entry behind, and SIGTERM stopping the agent while the pins stay.
//!
//! Every resource (namespaces, the bpffs mount, the agent process by its PID) is released by
//! a guard's `Drop`, so a failing test leaves nothing behind.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}x{n:x}", std::process::id())
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bpffs on a temp dir, mounted by the test so the pins outlive the agent.
struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        nix::mount::mount(
            Some("bpffs"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount bpffs");
        BpfFs { dir }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

struct Netns {
    name: String,
}

impl Netns {
    fn add(tag: &str) -> Self {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    fn sysctl(&self, key: &str, value: &str) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        in_netns(&self.path(), move || {
            std::fs::write(&path, &value).expect("write sysctl");
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` on a thread that joined the namespace at `path`.
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(path).expect("open netns");
    thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// The agent process, stopped by PID on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(node: &Netns, bpf_root: &Path, state: &Path, socket: &Path, log: &Path) -> Self {
        let log_file = File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.name])
            .arg(env!("CARGO_BIN_EXE_cilium-agent"))
            .args(["--node-name", "node-1", "--ipv4-range", "10.202.0.0/24"])
            .arg("--bpf-root")
            .arg(bpf_root)
            .arg("--state-dir")
            .arg(state)
            .arg("--socket-path")
            .arg(socket)
            .args(["--prometheus-serve-addr", "127.0.0.1:9962"])
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start cilium-agent");
        let agent = Agent {
            child,
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if dbg(&agent.socket, &["status", "-o", "json"]).is_ok() {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready: {}",
                agent.log_text()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    /// SIGTERM and wait; the agent must exit successfully within 10 s.
    fn terminate(mut self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "agent exit {status}: {}", self.log_text());
                return;
            }
            assert!(Instant::now() < deadline, "agent ignores SIGTERM");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Runs cilium-dbg; `Err(stderr)` on failure.
fn dbg(socket: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_cilium-dbg"))
        .env_remove("CILIUM_SOCK")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .expect("run cilium-dbg");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Runs cilium-cni; `(success, stdout)`.
fn cni(command: &str, socket: &Path, container: &str, netns: &Path, app: &str) -> (bool, String) {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cilium",
        "type": "cilium-cni",
        "socket-path": socket,
        "args": {"cni": {"labels": [{"key": "app", "value": app}]}},
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_cilium-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns.as_os_str())
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={app}"),
        )
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cilium-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write conf");
    let out = child.wait_with_output().expect("wait cilium-cni");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn add_pod(socket: &Path, container: &str, ns: &Netns, app: &str) -> Ipv4Addr {
    let (ok, stdout) = cni("ADD", socket, container, &ns.path(), app);
    assert!(ok, "ADD {container}: {stdout}");
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("CNI result");
    let address = result["ips"][0]["address"].as_str().expect("address");
    address
        .trim_end_matches("/32")
        .parse()
        .expect("IPv4 address")
}

/// Serves one connection on `addr` inside `ns`: reads 4 bytes, answers `pong`. Gives up
/// after `wait` without a connection (a connection the policy drops never arrives).
fn serve_once(
    ns: &Netns,
    addr: SocketAddrV4,
    wait: Duration,
) -> thread::JoinHandle<Option<[u8; 4]>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = ns.path();
    let handle = thread::spawn(move || {
        let netns = File::open(path).expect("open netns");
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        tx.send(()).expect("ready");
        let deadline = Instant::now() + wait;
        loop {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).expect("blocking");
                    conn.set_read_timeout(Some(Duration::from_secs(5)))
                        .expect("timeout");
                    let mut buf = [0u8; 4];
                    conn.read_exact(&mut buf).expect("read");
                    conn.write_all(b"pong").expect("write");
                    return Some(buf);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    handle
}

/// Connects from inside `ns`, sends `ping` and returns the answer; `None` if no connection
/// is made within `wait`.
fn ping(ns: &Netns, addr: SocketAddrV4, wait: Duration) -> Option<[u8; 4]> {
    in_netns(&ns.path(), move || {
        let mut conn = TcpStream::connect_timeout(&addr.into(), wait).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        conn.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("read");
        Some(buf)
    })
}

fn host_veths(node: &Netns) -> usize {
    ip(&["-n", &node.name, "-o", "link", "show"])
        .lines()
        .filter(|l| l.contains(": lxc"))
        .count()
}

#[test]
fn privileged_agent_pods_talk_and_del_cleans_up() {
    let fs = BpfFs::mount();
    let node = Netns::add("an");
    node.sysctl("net.ipv4.ip_forward", "1");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("cilium.sock");
    let agent = Agent::start(
        &node,
        fs.dir.path(),
        &dir.path().join("state"),
        &socket,
        &dir.path().join("agent.log"),
    );

    let pod_a = Netns::add("ap");
    let pod_b = Netns::add("ap");
    let client_id = unique("client");
    let server_id = unique("server");
    let _client_ip = add_pod(&socket, &client_id, &pod_a, "client");
    let server_ip = add_pod(&socket, &server_id, &pod_b, "server");
    assert_eq!(host_veths(&node), 2);

    let endpoints = dbg(&socket, &["endpoint", "list", "-o", "json"]).expect("endpoint list");
    let endpoints = endpoints.as_array().expect("array");
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints.iter().all(|e| e["status"]["state"] == "ready"));

    // Real TCP: with no policy, the server pod answers the client pod.
    let server_addr = SocketAddrV4::new(server_ip, 8080);
    let server = serve_once(&pod_b, server_addr, Duration::from_secs(10));
    assert_eq!(
        ping(&pod_a, server_addr, Duration::from_secs(5)),
        Some(*b"pong")
    );
    assert_eq!(server.join().expect("server"), Some(*b"ping"));

    // A policy imported through cilium-dbg takes effect in the kernel: only app=client may
    // reach the server's port; a third pod is dropped.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {name: server-ingress, namespace: default}\n\
         spec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: client}}]\n\
         \x20   toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n",
    )
    .expect("write policy");
    let imported = dbg(
        &socket,
        &[
            "policy",
            "import",
            &policy.display().to_string(),
            "-o",
            "json",
        ],
    )
    .expect("policy import");
    let revision = imported["revision"].as_u64().expect("revision");
    let deadline = Instant::now() + Duration::from_secs(10);
    while dbg(&socket, &["status", "-o", "json"]).expect("status")["policy"]["realized-revision"]
        .as_u64()
        .is_none_or(|realized| realized < revision)
    {
        assert!(
            Instant::now() < deadline,
            "policy revision {revision} not realized"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let pod_c = Netns::add("ap");
    let other_id = unique("other");
    add_pod(&socket, &other_id, &pod_c, "other");
    // cilium-dbg monitor reads the pinned ring buffer and shows the policy drop.
    let mut monitor = Command::new(env!("CARGO_BIN_EXE_cilium-dbg"))
        .args(["monitor", "--type", "drop", "--bpf-root"])
        .arg(fs.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cilium-dbg monitor");
    thread::sleep(Duration::from_millis(300));
    let server = serve_once(&pod_b, server_addr, Duration::from_secs(3));
    assert_eq!(
        ping(&pod_c, server_addr, Duration::from_millis(1500)),
        None,
        "app=other must be dropped"
    );
    assert_eq!(server.join().expect("server"), None);
    let monitor_pid = Pid::from_raw(i32::try_from(monitor.id()).expect("pid"));
    kill(monitor_pid, Signal::SIGKILL).expect("stop monitor");
    let mut lines = String::new();
    monitor
        .stdout
        .take()
        .expect("monitor stdout")
        .read_to_string(&mut lines)
        .expect("monitor output");
    monitor.wait().expect("reap monitor");
    assert!(
        lines.lines().any(|l| l.contains("Policy denied")),
        "no policy drop in the monitor output: {lines:?}"
    );
    let server = serve_once(&pod_b, server_addr, Duration::from_secs(10));
    assert_eq!(
        ping(&pod_a, server_addr, Duration::from_secs(5)),
        Some(*b"pong")
    );
    assert_eq!(server.join().expect("server"), Some(*b"ping"));

    // A restarted agent restores the endpoints and the imported rule: traffic and the
    // policy keep working as before.
    agent.terminate();
    let agent = Agent::start(
        &node,
        fs.dir.path(),
        &dir.path().join("state"),
        &socket,
        &dir.path().join("agent-restarted.log"),
    );
    let endpoints = dbg(&socket, &["endpoint", "list", "-o", "json"]).expect("endpoint list");
    let endpoints = endpoints.as_array().expect("array");
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    assert!(endpoints.iter().all(|e| e["status"]["state"] == "ready"));
    let restored = dbg(&socket, &["policy", "get", "-o", "json"]).expect("policy get");
    assert!(
        restored["policy"]
            .as_str()
            .is_some_and(|p| p.contains("server-ingress")),
        "{restored}"
    );
    let server = serve_once(&pod_b, server_addr, Duration::from_secs(10));
    assert_eq!(
        ping(&pod_a, server_addr, Duration::from_secs(5)),
        Some(*b"pong")
    );
    assert_eq!(server.join().expect("server"), Some(*b"ping"));
    let server = serve_once(&pod_b, server_addr, Duration::from_secs(3));
    assert_eq!(ping(&pod_c, server_addr, Duration::from_millis(1500)), None);
    assert_eq!(server.join().expect("server"), None);

    let (ok, stdout) = cni("DEL", &socket, &other_id, &pod_c.path(), "other");
    assert!(ok, "DEL {other_id}: {stdout}");

    for (container, ns, app) in [
        (&client_id, &pod_a, "client"),
        (&server_id, &pod_b, "server"),
    ] {
        let (ok, stdout) = cni("DEL", &socket, container, &ns.path(), app);
        assert!(ok, "DEL {container}: {stdout}");
        let (ok, stdout) = cni("DEL", &socket, container, &ns.path(), app);
        assert!(ok, "second DEL {container}: {stdout}");
    }
    assert_eq!(host_veths(&node), 0, "no veth left");
    let endpoints = dbg(&socket, &["endpoint", "list", "-o", "json"]).expect("endpoint list");
    assert_eq!(endpoints.as_array().map(Vec::len), Some(0));
    let lxc = dbg(&socket, &["bpf", "endpoint", "list", "-o", "json"]).expect("lxc map");
    assert_eq!(lxc["cache"].as_array().map(Vec::len), Some(0), "{lxc}");
    let maps = dbg(&socket, &["status", "-o", "json"]).expect("status");
    assert_eq!(maps["ipam"]["allocated"], 0, "addresses released");
    let map_list = Command::new(env!("CARGO_BIN_EXE_cilium-dbg"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["bpf", "ipcache", "list", "-o", "json"])
        .output()
        .expect("ipcache list");
    let ipcache: serde_json::Value = serde_json::from_slice(&map_list.stdout).expect("json");
    let server_text = server_ip.to_string();
    assert!(
        !ipcache["cache"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["key"].as_str().is_some_and(|k| k.contains(&server_text))),
        "pod address left in the ipcache: {ipcache}"
    );
    let routes = ip(&["-n", &node.name, "route", "show"]);
    assert!(!routes.contains(&server_text), "pod route left: {routes}");

    agent.terminate();
    assert!(!socket.exists(), "the API socket is removed on shutdown");
    let pinned = fs.dir.path().join("tc").join("globals");
    for map in ["cilium_lxc", "cilium_ipcache_v2", "cilium_lb4_services_v2"] {
        assert!(
            pinned.join(OsStr::new(map)).exists(),
            "{map} must stay pinned after the agent stops"
        );
    }
}
