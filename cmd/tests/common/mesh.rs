//! Fixtures for the ClusterMesh privileged tests (root): several clusters, each with its own
//! etcd, `clustermesh-apiserver`, `cilium-operator-generic` and node namespaces, all plugged
//! into one underlay bridge, with every agent joined to the others' etcds through
//! `--clustermesh-config`.
//!
//! - The underlay namespace holds the bridge (192.168.80.254/24), one etcd per cluster on its
//!   own bridge address (192.168.80.10K for cluster K), the per-cluster processes and every
//!   `etcdctl` and `cilium` CLI call.
//! - Node N of cluster K is a namespace whose `eth0` plugs into the bridge as 192.168.80.KN,
//!   running an agent with `--cluster-name cK --cluster-id K --ipam cluster-pool`; its own
//!   clustermesh directory (one etcd config file per other cluster, named after it) lets a
//!   test remove a remote cluster from one agent only.
//!
//! Built on `cluster.rs` (etcd, operators, polling) and `node.rs` (namespaces, agents, pods).
//! Every process is started here and stopped by its PID; the guards' `Drop` order (nodes,
//! apiserver, operator, etcd per cluster, then the underlay) leaves nothing behind. Each mesh
//! has its own underlay namespace, so tests run in parallel on the same addresses.

// Each test binary uses a different subset of the fixtures.
#![allow(dead_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::{Etcd, LEASE_TTL, Operator, alloc_cidr, eventually, stop_by_pid};
use crate::node::{Agent, BpfFs, Netns, unique};

/// The bridge's own address in the underlay.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 80, 254);

/// The bridge address that cluster `id`'s etcd listens on.
pub fn etcd_ip(id: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 80, 100 + id)
}

/// The underlay address of node `number` (from 1) of cluster `id`.
pub fn node_ip(id: u8, number: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 80, id * 10 + number)
}

/// What a cluster of the mesh is.
pub struct ClusterSpec {
    /// 1-9 (the addressing plan above); the name is `c<id>`.
    pub id: u8,
    /// The operator's `--cluster-pool-ipv4-cidr`, distinct per cluster.
    pub pool: &'static str,
    /// 1-9 nodes.
    pub nodes: u8,
}

/// A `clustermesh-apiserver` publishing its cluster (config, sync canaries, heartbeat).
pub struct Apiserver {
    child: Child,
    log: PathBuf,
}

impl Apiserver {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        stop_by_pid(&mut self.child);
    }
}

/// One node of a mesh cluster.
pub struct MeshNode {
    /// `None` only while the agent is being started.
    pub agent: Option<Agent>,
    pub ns: Netns,
    pub fs: BpfFs,
    /// State dir, socket, log and `clustermesh/`.
    pub dir: tempfile::TempDir,
    pub name: String,
    pub ip: Ipv4Addr,
}

impl MeshNode {
    pub fn agent(&self) -> &Agent {
        self.agent
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no agent", self.name))
    }

    /// This agent's `--clustermesh-config` directory.
    pub fn mesh_dir(&self) -> PathBuf {
        self.dir.path().join("clustermesh")
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

/// One cluster of the mesh. Field order is drop order.
pub struct MeshCluster {
    pub nodes: Vec<MeshNode>,
    pub apiserver: Apiserver,
    pub operator: Operator,
    pub etcd: Etcd,
    /// `c<id>`.
    pub name: String,
    pub id: u8,
    pub pool: String,
    /// The pod CIDR of each node, once allocated.
    pub cidrs: Vec<String>,
    /// The etcd config file, policy files and logs.
    pub dir: tempfile::TempDir,
    underlay: String,
}

impl MeshCluster {
    pub fn etcd_config(&self) -> PathBuf {
        self.dir.path().join("etcd.config")
    }

    fn kvstore_opt(&self) -> String {
        format!("etcd.config={}", self.etcd_config().display())
    }

    pub fn node(&self, index: usize) -> &MeshNode {
        &self.nodes[index]
    }

    pub fn agent(&self, index: usize) -> &Agent {
        self.nodes[index].agent()
    }

    /// `etcdctl ARGS` against this cluster's etcd; `Err(stderr)` on failure.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        self.etcd.etcdctl(args)
    }

    /// The value of `key` in this cluster's etcd, `None` if absent.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self
            .etcdctl(&["get", "--print-value-only", key])
            .unwrap_or_else(|e| panic!("{}: etcdctl get {key}: {e}", self.name));
        let value = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| value.to_owned())
    }

    pub fn node_key(&self, node: &str) -> String {
        format!("cilium/state/nodes/v1/{}/{node}", self.name)
    }

    /// Runs the `cilium` cluster CLI with `args` against this cluster, in the underlay;
    /// panics with its output on failure.
    pub fn cilium(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.underlay])
            .arg(env!("CARGO_BIN_EXE_cilium"))
            .args(["--kvstore-opt", &self.kvstore_opt()])
            .args(["--cluster-name", &self.name])
            .args(args)
            .output()
            .expect("run cilium");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: cilium {args:?}: {stdout}{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `cilium policy apply -f FILE` with `yaml` written to a file of the cluster.
    pub fn policy_apply(&self, yaml: &str) {
        let file = self.dir.path().join(format!("{}.yaml", unique("policy")));
        std::fs::write(&file, yaml).expect("write policy");
        self.cilium(&["policy", "apply", "-f", &file.display().to_string()]);
    }

    /// Every agent's log and the cluster processes', for failure messages.
    pub fn logs(&self) -> String {
        let mut text = format!(
            "--- {} apiserver:\n{}\n--- {} operator:\n{}\n",
            self.name,
            self.apiserver.log_text(),
            self.name,
            self.operator.log_text()
        );
        for node in &self.nodes {
            if let Some(agent) = &node.agent {
                text.push_str(&format!(
                    "--- {}/{} agent:\n{}\n",
                    self.name,
                    node.name,
                    agent.log_text()
                ));
            }
        }
        text
    }
}

/// The running mesh. Field order is drop order: the clusters go before the underlay.
pub struct Mesh {
    pub clusters: Vec<MeshCluster>,
    pub underlay: Netns,
}

impl Mesh {
    /// Starts every cluster's etcd, apiserver and operator, then every node with its agent
    /// (each agent's clustermesh directory names every other cluster), and waits until every
    /// node has its pod CIDR.
    pub fn start(specs: &[ClusterSpec]) -> Mesh {
        let underlay = Netns::add("mu");
        // A fixed MAC: a bridge otherwise changes its MAC as ports join (see cluster.rs).
        underlay.ip(&[
            "link",
            "add",
            "br0",
            "address",
            "02:00:00:00:00:fe",
            "type",
            "bridge",
        ]);
        underlay.ip(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", "br0"]);
        for spec in specs {
            underlay.ip(&[
                "addr",
                "add",
                &format!("{}/24", etcd_ip(spec.id)),
                "dev",
                "br0",
            ]);
        }
        underlay.ip(&["link", "set", "br0", "up"]);
        let mut clusters: Vec<MeshCluster> = specs
            .iter()
            .map(|spec| start_control_plane(&underlay, spec))
            .collect();
        for (index, spec) in specs.iter().enumerate() {
            for number in 1..=spec.nodes {
                let node = plug_node(&underlay, spec.id, number);
                for (other, remote) in specs.iter().zip(&clusters) {
                    if other.id != spec.id {
                        write_etcd_config(
                            &node.mesh_dir().join(&remote.name),
                            remote.etcd.endpoint(),
                        );
                    }
                }
                clusters[index].nodes.push(node);
            }
        }
        // Spawn every agent first: each waits for its pod CIDR before it answers.
        for cluster in &mut clusters {
            let kvstore_opt = cluster.kvstore_opt();
            for node in &mut cluster.nodes {
                node.agent = Some(spawn_agent(node, &cluster.name, cluster.id, &kvstore_opt));
            }
        }
        for cluster in &mut clusters {
            for index in 0..cluster.nodes.len() {
                let name = cluster.nodes[index].name.clone();
                let ready = cluster.nodes[index]
                    .agent
                    .as_mut()
                    .expect("agent spawned")
                    .wait_ready(Duration::from_secs(60));
                if let Err(problem) = ready {
                    panic!(
                        "{}/{name}: {problem}\noperator:\n{}",
                        cluster.name,
                        cluster.operator.log_text()
                    );
                }
            }
            let cidrs = (0..cluster.nodes.len())
                .map(|index| wait_node_cidr(cluster, index))
                .collect();
            cluster.cidrs = cidrs;
        }
        Mesh { clusters, underlay }
    }

    pub fn cluster(&self, index: usize) -> &MeshCluster {
        &self.clusters[index]
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        self.clusters.iter().map(MeshCluster::logs).collect()
    }
}

fn write_etcd_config(path: &std::path::Path, endpoint: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("config dir");
    }
    std::fs::write(path, format!("endpoints:\n- {endpoint}\n")).expect("write etcd config");
}

/// etcd, the apiserver publishing the cluster and the operator; no nodes yet.
fn start_control_plane(underlay: &Netns, spec: &ClusterSpec) -> MeshCluster {
    let name = format!("c{}", spec.id);
    let dir = tempfile::tempdir().expect("cluster temp dir");
    let etcd = Etcd::start_on(underlay, etcd_ip(spec.id));
    write_etcd_config(&dir.path().join("etcd.config"), etcd.endpoint());
    let kvstore_opt = format!("etcd.config={}", dir.path().join("etcd.config").display());

    let log = dir.path().join("apiserver.log");
    let log_file = File::create(&log).expect("apiserver log");
    let id = spec.id.to_string();
    let child = Command::new("ip")
        .args(["netns", "exec", &underlay.name])
        .arg(env!("CARGO_BIN_EXE_clustermesh-apiserver"))
        .args(["--cluster-name", &name, "--cluster-id", &id])
        .args(["--kvstore", "etcd", "--kvstore-opt", &kvstore_opt])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log fd"))
        .stderr(log_file)
        .spawn()
        .expect("start clustermesh-apiserver");
    let apiserver = Apiserver { child, log };

    // Operators of all clusters share the underlay, so each serves metrics on its own port.
    let metrics = format!("127.0.0.1:{}", 9970 + u16::from(spec.id));
    let operator = Operator::spawn(
        underlay,
        &name,
        &kvstore_opt,
        spec.pool,
        &metrics,
        dir.path().join("operator.log"),
    );
    MeshCluster {
        nodes: Vec::new(),
        apiserver,
        operator,
        etcd,
        name,
        id: spec.id,
        pool: spec.pool.to_owned(),
        cidrs: Vec::new(),
        dir,
        underlay: underlay.name.clone(),
    }
}

/// A node namespace plugged into the bridge, without an agent.
fn plug_node(underlay: &Netns, cluster: u8, number: u8) -> MeshNode {
    let ip = node_ip(cluster, number);
    let ns = Netns::add("mn");
    ns.sysctl("net.ipv4.ip_forward", "1");
    let port = format!("veth{cluster}n{number}");
    underlay.ip(&[
        "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    underlay.ip(&["link", "set", &port, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let node = MeshNode {
        agent: None,
        ns,
        fs: BpfFs::mount(),
        dir: tempfile::tempdir().expect("node temp dir"),
        name: format!("node-{number}"),
        ip,
    };
    std::fs::create_dir_all(node.mesh_dir()).expect("clustermesh dir");
    node
}

/// Starts the node's agent in the cluster's mesh; does not wait for it.
fn spawn_agent(node: &MeshNode, cluster: &str, id: u8, kvstore_opt: &str) -> Agent {
    let log = node.dir.path().join(unique("agent-log"));
    let log_file = File::create(&log).expect("agent log");
    let socket = node.dir.path().join("cilium.sock");
    let child = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(env!("CARGO_BIN_EXE_cilium-agent"))
        .args(["--node-name", &node.name, "--cluster-name", cluster])
        .args(["--cluster-id", &id.to_string()])
        .args(["--kvstore", "etcd", "--kvstore-opt", kvstore_opt])
        .args(["--ipam", "cluster-pool", "--devices", "eth0"])
        .args(["--routing-mode", "native"])
        .args(["--kvstore-lease-ttl", &format!("{}s", LEASE_TTL.as_secs())])
        .arg("--clustermesh-config")
        .arg(node.mesh_dir())
        .arg("--bpf-root")
        .arg(node.fs.path())
        .arg("--state-dir")
        .arg(node.dir.path().join("state"))
        .arg("--socket-path")
        .arg(&socket)
        .args(["--prometheus-serve-addr", ""])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log fd"))
        .stderr(log_file)
        .spawn()
        .expect("start cilium-agent");
    Agent::adopt(child, socket, log)
}

/// Waits until node `index` announces its pod CIDR and its IPAM hands out addresses from it.
fn wait_node_cidr(cluster: &MeshCluster, index: usize) -> String {
    let node = &cluster.nodes[index];
    let key = cluster.node_key(&node.name);
    let cidr = eventually(
        Duration::from_secs(60),
        || {
            format!(
                "{}/{} announces no pod CIDR in {key}\n{}",
                cluster.name,
                node.name,
                cluster.logs()
            )
        },
        || {
            let value = cluster.get(&key)?;
            let json: serde_json::Value = serde_json::from_str(&value).ok()?;
            alloc_cidr(&json)
        },
    );
    eventually(
        Duration::from_secs(30),
        || format!("{}/{} IPAM not on {cidr}", cluster.name, node.name),
        || {
            let status = node.agent().dbg(&["status", "-o", "json"]).ok()?;
            (status["ipam"]["alloc-range"].as_str() == Some(cidr.as_str())).then_some(())
        },
    );
    cidr
}
