//! Fixtures for the multi-node privileged tests (root): a cluster of `cilium-agent` processes in
//! kvstore mode sharing one etcd, laid out like a small data centre without touching the root
//! network namespace.
//!
//! - An "underlay" namespace holds a bridge (192.168.77.254/24), the etcd server listening on
//!   the bridge address, the `cilium-operator-generic` processes and every `etcdctl` and
//!   `cilium` CLI call.
//! - Each node is a namespace whose veth `eth0` plugs into the bridge (192.168.77.K/24 for
//!   `node-K`), with its own bpffs and state dir, running an agent with `--ipam cluster-pool`
//!   that waits for the operator's pod CIDR.
//!
//! Every process is started by this fixture and stopped by its PID; namespaces, mounts and temp
//! dirs go with the guards' `Drop` (nodes first, then operators, etcd and the underlay), so a
//! failing test leaves nothing behind. Namespace names are unique per process and call, and
//! each cluster has its own underlay, so tests run in parallel on the same addresses.

// Each test binary uses a different subset of the fixtures.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::node::{Agent, BpfFs, Netns, unique};

/// The bridge's address in the underlay: etcd listens here.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
/// Short enough that a killed agent's keys expire within the test.
pub const LEASE_TTL: Duration = Duration::from_secs(8);
/// The operator's identity GC interval.
pub const IDENTITY_GC_INTERVAL: &str = "2s";
/// The operator's grace period for a node whose key is gone: longer than an agent needs to
/// write its keys again after losing its lease (a third of [`LEASE_TTL`]), so a lease loss
/// does not cost the node its pod CIDR.
pub const NODES_GC_INTERVAL: &str = "5s";

/// The underlay address of `node-K` (`number` = K, from 1).
pub fn node_ip(number: usize) -> Ipv4Addr {
    let last = u8::try_from(number).expect("at most 253 nodes");
    Ipv4Addr::new(192, 168, 77, last)
}

fn etcd_endpoint() -> String {
    format!("http://{ETCD_IP}:2379")
}

/// Polls `check` every 100 ms until it returns `Some`, panicking with `what()` after `timeout`.
pub fn eventually<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "not within {timeout:?}: {}",
            what()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn stop_by_pid(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
}

/// How pods on different nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Native,
    Tunnel,
}

impl Routing {
    fn flag(self) -> &'static str {
        match self {
            Routing::Native => "native",
            Routing::Tunnel => "tunnel",
        }
    }
}

/// The etcd server in the underlay, with its data dir in a temp dir that survives restarts.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    underlay: String,
    /// The client URL (`http://IP:2379`).
    client: String,
    /// The peer URL; distinct per server when several share an underlay.
    peer: String,
}

impl Etcd {
    fn start(underlay: &Netns) -> Etcd {
        Etcd::start_with(
            underlay,
            etcd_endpoint(),
            "http://127.0.0.1:2380".to_owned(),
        )
    }

    /// An etcd serving clients on `ip`:2379 and peers on `ip`:2380, so that several servers
    /// (one per cluster of a mesh) share one underlay; `ip` must be an address of the bridge.
    pub fn start_on(underlay: &Netns, ip: Ipv4Addr) -> Etcd {
        Etcd::start_with(
            underlay,
            format!("http://{ip}:2379"),
            format!("http://{ip}:2380"),
        )
    }

    fn start_with(underlay: &Netns, client: String, peer: String) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().expect("etcd temp dir"),
            underlay: underlay.name.clone(),
            client,
            peer,
        };
        etcd.launch();
        etcd
    }

    /// The client URL, as an etcd config file's `endpoints` entry.
    pub fn endpoint(&self) -> &str {
        &self.client
    }

    /// `etcdctl ARGS` against this server, in the underlay; `Err(stderr)` on failure.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let out = etcdctl_output(&self.underlay, &self.client, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts etcd on the (kept) data dir and waits until it serves requests.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("etcd log");
        let client = self.client.as_str();
        let peer = self.peer.as_str();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.underlay, "etcd", "--name", "default"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", client])
            .args(["--advertise-client-urls", client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            // A single member elects itself; short timeouts make that (and restarts) fast.
            .args(["--heartbeat-interval", "20", "--election-timeout", "200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = etcdctl_output(&self.underlay, &self.client, &["endpoint", "health"]);
            if health.status.success() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("etcd exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not ready: {}\n{}",
                String::from_utf8_lossy(&health.stderr),
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL by PID: clients see the connection drop without warning.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("etcd running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        kill(pid, Signal::SIGKILL).expect("SIGKILL etcd");
        child.wait().expect("reap etcd");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_by_pid(child);
        }
    }
}

fn etcdctl_output(underlay: &str, endpoint: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", underlay, "etcdctl"])
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--dial-timeout=1s",
            "--command-timeout=3s",
        ])
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// A `cilium-operator-generic` process in the underlay, stopped by PID on drop.
pub struct Operator {
    child: Child,
    log: PathBuf,
    /// Set by [`Operator::kill9`].
    killed: bool,
}

impl Operator {
    /// Starts `cilium-operator-generic` for `cluster` in `underlay`, allocating pod CIDRs
    /// (/24) from `pool`, with metrics on `metrics` (distinct per operator of a namespace) and
    /// its output in `log`.
    pub fn spawn(
        underlay: &Netns,
        cluster: &str,
        kvstore_opt: &str,
        pool: &str,
        metrics: &str,
        log: PathBuf,
    ) -> Operator {
        let log_file = File::create(&log).expect("operator log");
        let child = Command::new("ip")
            .args(["netns", "exec", &underlay.name])
            .arg(env!("CARGO_BIN_EXE_cilium-operator-generic"))
            .args(["--cluster-name", cluster])
            .args(["--kvstore", "etcd", "--kvstore-opt", kvstore_opt])
            .args(["--cluster-pool-ipv4-cidr", pool])
            .args(["--cluster-pool-ipv4-mask-size", "24"])
            .args(["--identity-gc-interval", IDENTITY_GC_INTERVAL])
            .args(["--nodes-gc-interval", NODES_GC_INTERVAL])
            .args(["--operator-prometheus-serve-addr", metrics])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start cilium-operator-generic");
        Operator {
            child,
            log,
            killed: false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL by PID: its leader lock is released only when its lease expires.
    pub fn kill9(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGKILL).expect("SIGKILL operator");
        self.child.wait().expect("reap operator");
        self.killed = true;
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        stop_by_pid(&mut self.child);
    }
}

/// One node: its namespace (with `eth0` on the bridge), bpffs, state dir and agent.
pub struct ClusterNode {
    /// `None` after the agent was killed by a test.
    pub agent: Option<Agent>,
    pub ns: Netns,
    pub fs: BpfFs,
    pub dir: tempfile::TempDir,
    pub name: String,
    pub ip: Ipv4Addr,
}

impl ClusterNode {
    pub fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no agent", self.name))
    }

    /// The routes of the node namespace, one per line.
    pub fn routes(&self) -> String {
        self.ns.ip(&["route", "show"])
    }

    /// Whether the node has a route whose destination is exactly `cidr`.
    pub fn has_route_to(&self, cidr: &str) -> bool {
        self.routes()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(cidr))
    }
}

/// What to start.
pub struct ClusterOptions {
    pub nodes: usize,
    pub operators: usize,
    pub routing: Routing,
    /// `--cluster-pool-ipv4-cidr` of the operators.
    pub pool: &'static str,
}

/// Extra `cilium-agent` flags for a node, after the fixture's own (e.g. `--enable-hubble` with a
/// per-node socket path under the node's dir).
pub type AgentArgs = Box<dyn Fn(&ClusterNode) -> Vec<String>>;

/// A running cluster (see the module docs). Field order is drop order.
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub operators: Vec<Operator>,
    pub etcd: Etcd,
    pub name: String,
    pub routing: Routing,
    pub pool: String,
    /// The etcd client config, policy files and operator logs.
    pub dir: tempfile::TempDir,
    pub underlay: Netns,
    /// Flags added to every agent this cluster starts.
    agent_args: AgentArgs,
}

impl Cluster {
    /// Starts etcd, the operators and the nodes, and waits until every node has its pod CIDR
    /// and a running agent.
    pub fn start(options: &ClusterOptions) -> Cluster {
        Cluster::start_with_agent_args(options, Box::new(|_| Vec::new()))
    }

    /// [`Cluster::start`], with `agent_args(node)` appended to the flags of every agent the
    /// cluster starts (now and on [`Cluster::start_agent`] / [`Cluster::add_node`]).
    pub fn start_with_agent_args(options: &ClusterOptions, agent_args: AgentArgs) -> Cluster {
        let underlay = Netns::add("cu");
        // A fixed MAC: a bridge otherwise takes the lowest MAC of its ports and changes it as
        // nodes join, leaving stale neighbour entries (etcd unreachable) on earlier nodes.
        underlay.ip(&[
            "link",
            "add",
            "br0",
            "address",
            "02:00:00:00:00:fe",
            "type",
            "bridge",
        ]);
        underlay.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
        underlay.ip(&["link", "set", "br0", "up"]);
        let dir = tempfile::tempdir().expect("cluster temp dir");
        std::fs::write(
            dir.path().join("etcd.config"),
            format!("endpoints:\n- {}\n", etcd_endpoint()),
        )
        .expect("write etcd config");
        let etcd = Etcd::start(&underlay);
        let mut cluster = Cluster {
            nodes: Vec::new(),
            operators: Vec::new(),
            etcd,
            name: unique("c"),
            routing: options.routing,
            pool: options.pool.to_owned(),
            dir,
            underlay,
            agent_args,
        };
        for _ in 0..options.operators {
            cluster.start_operator();
        }
        for _ in 0..options.nodes {
            cluster.add_node();
        }
        for index in 0..cluster.nodes.len() {
            cluster.wait_node_cidr(index);
        }
        cluster.assert_operators_running();
        cluster
    }

    pub fn etcd_config(&self) -> PathBuf {
        self.dir.path().join("etcd.config")
    }

    fn kvstore_opt(&self) -> String {
        format!("etcd.config={}", self.etcd_config().display())
    }

    /// Starts one more `cilium-operator-generic` in the underlay.
    pub fn start_operator(&mut self) {
        let number = self.operators.len() + 1;
        let log = self.dir.path().join(format!("operator-{number}.log"));
        // Operators share the underlay namespace, so each serves metrics on its own port.
        let metrics = format!("127.0.0.1:{}", 9962 + number);
        let operator = Operator::spawn(
            &self.underlay,
            &self.name,
            &self.kvstore_opt(),
            &self.pool,
            &metrics,
            log,
        );
        self.operators.push(operator);
    }

    /// Plugs a new node `node-K` into the bridge and starts its agent; returns its index.
    /// Does not wait for the pod CIDR (see [`Cluster::wait_node_cidr`]).
    pub fn add_node(&mut self) -> usize {
        let index = self.plug_node();
        self.start_agent(index);
        index
    }

    /// Plugs a new node `node-K` into the bridge, without an agent; returns its index.
    pub fn plug_node(&mut self) -> usize {
        let index = self.nodes.len();
        let number = index + 1;
        let ip = node_ip(number);
        let ns = Netns::add("cn");
        ns.sysctl("net.ipv4.ip_forward", "1");
        let port = format!("veth{number}");
        self.underlay.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.underlay
            .ip(&["link", "set", &port, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        self.nodes.push(ClusterNode {
            agent: None,
            ns,
            fs: BpfFs::mount(),
            dir: tempfile::tempdir().expect("node temp dir"),
            name: format!("node-{number}"),
            ip,
        });
        index
    }

    /// Starts the agent of node `index` (again, after [`Cluster::kill_agent`]) and waits
    /// until its API answers.
    pub fn start_agent(&mut self, index: usize) {
        let agent = self.spawn_agent(&self.nodes[index]);
        self.nodes[index].agent = Some(agent);
    }

    fn spawn_agent(&self, node: &ClusterNode) -> Agent {
        let log = node.dir.path().join(unique("agent-log"));
        let log_file = File::create(&log).expect("agent log");
        let socket = node.dir.path().join("cilium.sock");
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns.name])
            .arg(env!("CARGO_BIN_EXE_cilium-agent"))
            .args(["--node-name", &node.name, "--cluster-name", &self.name])
            .args(["--kvstore", "etcd", "--kvstore-opt", &self.kvstore_opt()])
            .args(["--ipam", "cluster-pool", "--devices", "eth0"])
            .args(["--routing-mode", self.routing.flag()])
            .args(["--kvstore-lease-ttl", &format!("{}s", LEASE_TTL.as_secs())])
            .arg("--bpf-root")
            .arg(node.fs.path())
            .arg("--state-dir")
            .arg(node.dir.path().join("state"))
            .arg("--socket-path")
            .arg(&socket)
            .args(["--prometheus-serve-addr", ""])
            .args((self.agent_args)(node))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start cilium-agent");
        let mut agent = Agent::adopt(child, socket, log);
        if let Err(problem) = agent.wait_ready(Duration::from_secs(60)) {
            panic!(
                "{}: {problem}\noperators:\n{}",
                node.name,
                self.operator_logs()
            );
        }
        agent
    }

    pub fn node(&self, index: usize) -> &ClusterNode {
        &self.nodes[index]
    }

    pub fn agent(&self, index: usize) -> &Agent {
        self.nodes[index].agent()
    }

    /// SIGKILL of node `index`'s agent: it cannot withdraw its keys.
    pub fn kill_agent(&mut self, index: usize) {
        let agent = self.nodes[index].agent.take().expect("agent running");
        agent.kill9();
    }

    /// Waits until node `index` announces its pod CIDR in its node key, and its agent's IPAM
    /// hands out addresses from it; returns the CIDR.
    pub fn wait_node_cidr(&self, index: usize) -> String {
        let node = &self.nodes[index];
        let key = self.node_key(&node.name);
        let cidr = eventually(
            Duration::from_secs(60),
            || {
                format!(
                    "{} announces no pod CIDR in {key}: {:?}\nagent: {}\noperators: {}",
                    node.name,
                    self.get(&key),
                    node.agent().log_text(),
                    self.operator_logs()
                )
            },
            || self.get_json(&key).as_ref().and_then(alloc_cidr),
        );
        eventually(
            Duration::from_secs(30),
            || format!("{} IPAM not on {cidr}", node.name),
            || {
                let status = node.agent().dbg(&["status", "-o", "json"]).ok()?;
                (status["ipam"]["alloc-range"].as_str() == Some(cidr.as_str())).then_some(())
            },
        );
        cidr
    }

    /// Panics with the logs if an operator (not killed by the test) has exited.
    pub fn assert_operators_running(&mut self) {
        let exited: Vec<usize> = self
            .operators
            .iter_mut()
            .enumerate()
            .filter_map(|(i, op)| (!op.killed && !op.running()).then_some(i + 1))
            .collect();
        assert!(
            exited.is_empty(),
            "operators {exited:?} exited:\n{}",
            self.operator_logs()
        );
    }

    pub fn operator_logs(&self) -> String {
        self.operators
            .iter()
            .enumerate()
            .map(|(i, op)| format!("--- operator {}:\n{}", i + 1, op.log_text()))
            .collect()
    }

    pub fn node_key(&self, node: &str) -> String {
        format!("cilium/state/nodes/v1/{}/{node}", self.name)
    }

    pub fn ipam_key(&self, node: &str) -> String {
        format!("cilium/config/ipam/v1/{}/{node}", self.name)
    }

    /// `etcdctl ARGS` in the underlay; `Err(stderr)` on failure.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        self.etcd.etcdctl(args)
    }

    /// Every key under `prefix` with its value (values must be single-line, as the JSON and
    /// label strings of the cluster are).
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self
            .etcdctl(&["get", "--prefix", prefix])
            .unwrap_or_else(|e| panic!("etcdctl get --prefix {prefix}: {e}"));
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .map(|pair| {
                (
                    pair[0].to_owned(),
                    pair.get(1).copied().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The value of `key`, `None` if absent.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self
            .etcdctl(&["get", "--print-value-only", key])
            .unwrap_or_else(|e| panic!("etcdctl get {key}: {e}"));
        let value = out.strip_suffix('\n').unwrap_or(&out);
        let exists = !out.is_empty();
        exists.then(|| value.to_owned())
    }

    /// The value of `key` parsed as JSON; `None` if absent or not JSON.
    pub fn get_json(&self, key: &str) -> Option<serde_json::Value> {
        self.get(key).and_then(|v| serde_json::from_str(&v).ok())
    }

    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value])
            .unwrap_or_else(|e| panic!("etcdctl put {key}: {e}"));
    }

    /// The lease id (hex, as `etcdctl lease revoke` takes it) that `key` is attached to.
    pub fn lease_of(&self, key: &str) -> Option<String> {
        let out = self
            .etcdctl(&["get", key, "-w", "json"])
            .unwrap_or_else(|e| panic!("etcdctl get {key}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        let lease = json["kvs"][0]["lease"].as_u64()?;
        (lease != 0).then(|| format!("{lease:x}"))
    }

    /// `cilium policy apply -f FILE` in the underlay (the cluster CLI writes to etcd).
    pub fn policy_apply(&self, yaml: &str) {
        let file = self.dir.path().join(format!("{}.yaml", unique("policy")));
        std::fs::write(&file, yaml).expect("write policy");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.underlay.name])
            .arg(env!("CARGO_BIN_EXE_cilium"))
            .args(["policy", "apply", "-f"])
            .arg(&file)
            .args(["--kvstore-opt", &self.kvstore_opt()])
            .output()
            .expect("run cilium policy apply");
        assert!(
            out.status.success(),
            "cilium policy apply: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The pod CIDR of a node record: `IPv4AllocCIDR` as `"a.b.c.d/n"` or as upstream's
/// `{"IP": "a.b.c.d", "Mask": <base64>}`.
pub fn alloc_cidr(node: &serde_json::Value) -> Option<String> {
    let cidr = &node["IPv4AllocCIDR"];
    if let Some(text) = cidr.as_str() {
        return Some(text.to_owned());
    }
    let ip = cidr["IP"].as_str()?;
    let mask = base64_decode(cidr["Mask"].as_str()?)?;
    let bits: u32 = mask.iter().map(|b| b.count_ones()).sum();
    Some(format!("{ip}/{bits}"))
}

/// Standard base64 (Go's `[]byte` in JSON), enough for a netmask.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().take_while(|&c| c != b'=') {
        let value = ALPHABET.iter().position(|&a| a == c)?;
        bits = (bits << 6) | u32::try_from(value).ok()?;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).ok()?);
        }
    }
    Some(out)
}

/// Whether `ip` lies in `cidr` ("a.b.c.d/n").
pub fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((base, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(len)) = (base.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(base) & mask == u32::from(ip) & mask
}

/// A TCP connection from inside a namespace that keeps exchanging data with an echo server
/// until dropped: every 50 ms it sends a numbered message and checks the echo.
pub struct Stream {
    stop: Arc<AtomicBool>,
    exchanged: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Stream {
    pub fn open(ns: &Netns, to: SocketAddrV4) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let exchanged = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let path = ns.path();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, exchanged, error) = (stop.clone(), exchanged.clone(), error.clone());
            thread::spawn(move || {
                let netns = File::open(path).expect("open netns");
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let result = exchange(to, &stop, &exchanged, &ready_tx);
                if let Err(e) = result {
                    *error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                }
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => {}
            Err(_) => panic!(
                "stream to {to} not established: {:?}",
                error.lock().unwrap_or_else(PoisonError::into_inner)
            ),
        }
        Stream {
            stop,
            exchanged,
            error,
            thread: Some(thread),
        }
    }

    /// Messages echoed so far.
    pub fn exchanged(&self) -> u64 {
        self.exchanged.load(Ordering::Relaxed)
    }

    /// The error that ended the stream, if it ended.
    pub fn error(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `more` further messages are echoed; panics after `timeout`.
    pub fn wait_progress(&self, more: u64, timeout: Duration, what: &str) {
        let start = self.exchanged();
        eventually(
            timeout,
            || {
                format!(
                    "{what}: stream stalled at {} (error {:?})",
                    self.exchanged(),
                    self.error()
                )
            },
            || (self.exchanged() >= start + more).then_some(()),
        );
    }
}

fn exchange(
    to: SocketAddrV4,
    stop: &AtomicBool,
    exchanged: &AtomicU64,
    ready: &std::sync::mpsc::Sender<()>,
) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let _ = ready.send(());
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let message = n.to_be_bytes();
        conn.write_all(&message)
            .map_err(|e| format!("send #{n}: {e}"))?;
        let mut echo = [0u8; 8];
        conn.read_exact(&mut echo)
            .map_err(|e| format!("echo #{n}: {e}"))?;
        if echo != message {
            return Err(format!("echo #{n} is {echo:?}"));
        }
        n += 1;
        exchanged.store(n, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
