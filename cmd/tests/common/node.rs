//! Fixtures for the privileged tests and benchmarks that run the real binaries (root): a
//! fresh "node" network namespace running `cilium-agent` with a private bpffs and state dir,
//! pods created through `cilium-cni` as a runtime calls it, `cilium-dbg` with `-o json`, and
//! TCP echo servers and clients inside pod namespaces.
//!
//! Every resource (namespaces, the bpffs mount, the agent and server threads) is released by
//! a guard's `Drop`, so a failing test leaves nothing behind. Names carry the PID and a
//! counter so test binaries can run in parallel.

// Each test binary uses a different subset of the fixtures.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for an interface or netns name.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}x{n:x}", std::process::id())
}

/// Runs `ip` and returns its stdout; panics with stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bpffs on a temp dir, mounted by the test so the pins outlive the agent.
pub struct BpfFs {
    pub dir: tempfile::TempDir,
}

impl BpfFs {
    pub fn mount() -> Self {
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

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(tag: &str) -> Self {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        in_netns(&self.path(), move || {
            std::fs::write(&path, &value).expect("write sysctl");
        });
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
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
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(path).expect("open netns");
    thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// The agent's node: the namespace, the bpffs and the state dir, which outlive one agent
/// process so a restart finds its state.
pub struct Node {
    pub ns: Netns,
    pub fs: BpfFs,
    pub dir: tempfile::TempDir,
    pub pod_cidr: String,
}

impl Node {
    /// A node whose pods get addresses from `pod_cidr`.
    pub fn new(pod_cidr: &str) -> Self {
        let fs = BpfFs::mount();
        let ns = Netns::add("cn");
        ns.sysctl("net.ipv4.ip_forward", "1");
        Node {
            ns,
            fs,
            dir: tempfile::tempdir().expect("temp dir"),
            pod_cidr: pod_cidr.to_owned(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("cilium.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts `cilium-agent` in the node namespace and waits until its API answers.
    pub fn start_agent(&self, log_name: &str) -> Agent {
        let log = self.dir.path().join(log_name);
        let log_file = File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(env!("CARGO_BIN_EXE_cilium-agent"))
            .args(["--node-name", "node-1", "--ipv4-range", &self.pod_cidr])
            .arg("--bpf-root")
            .arg(self.fs.path())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--socket-path")
            .arg(self.socket())
            .args(["--prometheus-serve-addr", "127.0.0.1:9962"])
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start cilium-agent");
        let agent = Agent {
            child,
            socket: self.socket(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.dbg(&["status", "-o", "json"]).is_ok() {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready: {}",
                agent.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The names of the pods' host-side `lxc*` veths.
    pub fn host_veth_names(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter_map(|name| name.split('@').next())
            .filter(|name| name.starts_with("lxc"))
            .map(str::to_owned)
            .collect()
    }

    /// How many host-side veths the pods have.
    pub fn host_veths(&self) -> usize {
        self.host_veth_names().len()
    }
}

/// The agent process, stopped by PID on drop.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Takes over an agent process started with flags of the caller's choosing (a node of a
    /// multi-node cluster); it is killed by PID on drop like one from [`Node::start_agent`].
    pub fn adopt(child: Child, socket: PathBuf, log: PathBuf) -> Agent {
        Agent { child, socket, log }
    }

    /// Waits until the API answers; `Err` with the reason and the log if the process exits
    /// or `timeout` passes first.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.dbg(&["status", "-o", "json"]).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "agent exited ({status}) while starting:\n{}",
                    self.log_text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "agent not ready within {timeout:?}:\n{}",
                    self.log_text()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    /// SIGKILL by PID and reap: the agent gets no chance to clean up.
    pub fn kill9(mut self) {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
        self.child.wait().expect("reap agent");
    }

    /// SIGTERM and wait; the agent must exit successfully within 10 s.
    pub fn terminate(mut self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "agent exit {status}: {}", self.log_text());
                return;
            }
            assert!(Instant::now() < deadline, "agent ignores SIGTERM");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs cilium-dbg against this agent with `args` (which end in `-o json`) and parses
    /// its answer; `Err(stderr)` on failure.
    pub fn dbg(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_cilium-dbg"))
            .env_remove("CILIUM_SOCK")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .output()
            .expect("run cilium-dbg");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// `cilium-dbg ARGS -o json`, panicking with the agent log on failure.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        self.dbg(&all)
            .unwrap_or_else(|e| panic!("cilium-dbg {args:?}: {e}\n{}", self.log_text()))
    }

    /// Waits until the agent reports `revision` realized on every endpoint.
    pub fn wait_realized(&self, revision: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.json(&["status"])["policy"]["realized-revision"]
            .as_u64()
            .is_none_or(|realized| realized < revision)
        {
            assert!(
                Instant::now() < deadline,
                "policy revision {revision} not realized"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Imports `yaml` through `cilium-dbg policy import` and waits until it is enforced.
    pub fn import_policy(&self, dir: &Path, yaml: &str) {
        let file = dir.join(format!("{}.yaml", unique("policy")));
        std::fs::write(&file, yaml).expect("write policy");
        let imported = self.json(&["policy", "import", &file.display().to_string()]);
        let revision = imported["revision"].as_u64().expect("revision");
        self.wait_realized(revision);
    }

    /// `cilium-dbg policy delete --all`, waiting until the removal is enforced.
    pub fn delete_all_policies(&self) {
        let deleted = self.json(&["policy", "delete", "--all"]);
        let revision = deleted["revision"].as_u64().expect("revision");
        self.wait_realized(revision);
    }

    /// Packets counted in `cilium_metrics` for drop `reason`, over both directions.
    pub fn drops(&self, reason: u64) -> u64 {
        let metrics = self.json(&["bpf", "metrics", "list"]);
        metrics["cache"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["key-data"]["reason"].as_u64() == Some(reason))
            .filter_map(|e| e["value-data"]["packets"].as_u64())
            .sum()
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

/// Runs cilium-cni with pod `labels`; `(success, stdout)`.
pub fn cni(
    command: &str,
    socket: &Path,
    container: &str,
    netns: &Path,
    labels: &[(&str, &str)],
) -> (bool, String) {
    let labels: Vec<serde_json::Value> = labels
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
        .collect();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cilium",
        "type": "cilium-cni",
        "socket-path": socket,
        "args": {"cni": {"labels": labels}},
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_cilium-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns.as_os_str())
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
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

/// A pod made by CNI ADD: its namespace, container id, labels and address.
pub struct Pod {
    pub ns: Netns,
    pub container: String,
    pub labels: Vec<(String, String)>,
    pub ip: Ipv4Addr,
}

impl Pod {
    pub fn add(agent: &Agent, labels: &[(&str, &str)]) -> Pod {
        let ns = Netns::add("cp");
        let container = unique("ctr");
        let (ok, stdout) = cni("ADD", &agent.socket, &container, &ns.path(), labels);
        assert!(ok, "ADD {container}: {stdout}\n{}", agent.log_text());
        let result: serde_json::Value = serde_json::from_str(&stdout).expect("CNI result");
        let address = result["ips"][0]["address"].as_str().expect("address");
        let ip = address
            .trim_end_matches("/32")
            .parse()
            .expect("IPv4 address");
        Pod {
            ns,
            container,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ip,
        }
    }

    /// CNI DEL for this pod; must succeed.
    pub fn del(&self, socket: &Path) {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (ok, stdout) = cni("DEL", socket, &self.container, &self.ns.path(), &labels);
        assert!(ok, "DEL {}: {stdout}", self.container);
    }

    pub fn addr(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, port)
    }
}

/// An echo server bound to `addr` inside a namespace, serving every connection on its own
/// thread until dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: SocketAddrV4) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = ns.path();
        let thread = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            thread::spawn(move || {
                let netns = File::open(path).expect("open netns");
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let listener = TcpListener::bind(addr).expect("bind");
                listener.set_nonblocking(true).expect("nonblocking");
                tx.send(()).expect("ready");
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let stop = stop.clone();
                            thread::spawn(move || echo(conn, &stop));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
        EchoServer {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from inside `ns` to `addr`, sends a probe and checks the echo. `false` if no
/// connection is made within `wait` or the echo does not come back.
pub fn tcp_ok(ns: &Netns, addr: SocketAddrV4, wait: Duration) -> bool {
    in_netns(&ns.path(), move || {
        let Ok(mut conn) = TcpStream::connect_timeout(&addr.into(), wait) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn.write_all(b"probe").is_err() {
            return false;
        }
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).is_ok() && &buf == b"probe"
    })
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP echo request from inside `ns` to `dst` over a raw socket and waits up to
/// `wait` for the matching echo reply.
pub fn icmp_echo_ok(ns: &Netns, dst: Ipv4Addr, wait: Duration) -> bool {
    use nix::libc;
    in_netns(&ns.path(), move || {
        // SAFETY: plain socket syscalls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "raw ICMP socket");
            let ident = (std::process::id() & 0xffff) as u16;
            let seq = (COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff) as u16;
            let mut packet = [0u8; 16];
            packet[0] = 8;
            packet[4..6].copy_from_slice(&ident.to_be_bytes());
            packet[6..8].copy_from_slice(&seq.to_be_bytes());
            packet[8..].copy_from_slice(b"ciliumrs");
            let sum = icmp_checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(dst).to_be(),
                },
                sin_zero: [0; 8],
            };
            let sent = libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const sin).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(sent, packet.len() as isize, "send ICMP echo");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 256];
            let mut ok = false;
            while Instant::now() < deadline {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                let Ok(n) = usize::try_from(n) else {
                    continue;
                };
                // IPv4 header (IHL words), then ICMP: type 0 echo reply with our id and seq.
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                if n < ihl + 8 || buf[12..16] != dst.octets() {
                    continue;
                }
                let icmp = &buf[ihl..n];
                if icmp[0] == 0
                    && icmp[4..6] == ident.to_be_bytes()
                    && icmp[6..8] == seq.to_be_bytes()
                {
                    ok = true;
                    break;
                }
            }
            libc::close(fd);
            ok
        }
    })
}
