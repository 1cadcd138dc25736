//! `cilium lab up`: builds the lab step by step (see the module docs of [`crate::lab`] for the
//! layout), telling the user each step, and on failure what failed, where its log is and what
//! to check. Whatever was made stays recorded, so `cilium lab down` removes it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::state::{
    ClusterRecord, KvstoreKind, LabLock, LabState, NodeRecord, ProcessRecord, RoutingMode,
};
use super::status::agent_status;
use super::sys::{self, Spawn};
use super::{
    BRIDGE_IP, EXTERNAL_ECHO, EXTERNAL_GATEWAY, EXTERNAL_IP, EXTERNAL_SUBNET, LabError,
    MAX_CLUSTERS, MAX_NODES, RELAY_ADDRESS,
};

/// The Cilium binaries the lab runs, all expected in [`LabOptions::bin_dir`].
pub const BINARIES: [&str; 7] = [
    "cilium",
    "cilium-agent",
    "cilium-cni",
    "cilium-dbg",
    "cilium-operator-generic",
    "clustermesh-apiserver",
    "hubble-relay",
];

/// How long an agent may take to answer with its pod CIDR.
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long etcd may take to serve.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a small service (relay, echo server) may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a dead agent's keys outlive it: short, since lab agents come and go.
const LEASE_TTL: &str = "30s";

/// What `up` builds.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub dir: PathBuf,
    /// The namespaces' prefix: distinct per lab, so several labs run side by side.
    pub name: String,
    pub clusters: u8,
    pub nodes: u8,
    pub kvstore: KvstoreKind,
    pub routing: RoutingMode,
    /// Where the Cilium binaries are (see [`BINARIES`]).
    pub bin_dir: PathBuf,
}

/// The underlay address of node `number` of cluster `id` (both from 1).
pub fn node_ip(id: u8, number: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 90, id * 10 + number)
}

/// The bridge address cluster `id`'s etcd listens on.
pub fn etcd_ip(id: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 90, 100 + id)
}

/// Cluster `id`'s pod CIDR pool: `10.<id>.0.0/16`, one /24 per node.
pub fn pod_pool(id: u8) -> String {
    format!("10.{id}.0.0/16")
}

/// The range of the single node of a lab without etcd.
const MEMORY_RANGE: &str = "10.1.1.0/24";
/// The underlay bridge's MAC (locally administered), fixed so that it never changes as ports join.
const UNDERLAY_MAC: &str = "02:00:00:00:00:fe";

/// Names of namespaces, pods and labs: lower-case letters, digits and `-`, as Kubernetes
/// names, short enough to prefix a namespace name.
pub fn valid_name(what: &'static str, name: &str) -> Result<(), LabError> {
    let invalid = |reason| LabError::InvalidOption {
        what,
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 40 {
        return Err(invalid("must be 1 to 40 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            "only lower-case letters, digits and '-' are allowed",
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid("must start and end with a letter or digit"));
    }
    Ok(())
}

fn validate(options: &LabOptions) -> Result<(), LabError> {
    valid_name("lab name", &options.name)?;
    let count = |what, value: u8, max: u8| {
        if value == 0 || value > max {
            return Err(LabError::InvalidOption {
                what,
                value: value.to_string(),
                reason: "must be between 1 and 9",
            });
        }
        Ok(())
    };
    count("cluster count", options.clusters, MAX_CLUSTERS)?;
    count("node count", options.nodes, MAX_NODES)?;
    if options.kvstore == KvstoreKind::Memory && (options.clusters, options.nodes) != (1, 1) {
        return Err(LabError::InvalidOption {
            what: "lab size",
            value: format!("{} clusters x {} nodes", options.clusters, options.nodes),
            reason: "the memory kvstore runs exactly one cluster of one node",
        });
    }
    for binary in BINARIES {
        let path = options.bin_dir.join(binary);
        if !path.is_file() {
            return Err(LabError::MissingBinary { binary, path });
        }
    }
    if options.kvstore == KvstoreKind::Etcd {
        for binary in ["etcd", "etcdctl"] {
            sys::run("which", &[binary]).map_err(|_| LabError::MissingBinary {
                binary,
                path: PathBuf::from(format!(
                    "$PATH/{binary} (Debian package etcd-server / etcd-client)"
                )),
            })?;
        }
    }
    Ok(())
}

/// The lab's records before anything exists: every address, path and name decided up front.
fn plan(options: &LabOptions, dir: &Path) -> LabState {
    let name = &options.name;
    let clusters = (1..=options.clusters)
        .map(|id| {
            let cluster = format!("c{id}");
            let etcd = options.kvstore == KvstoreKind::Etcd;
            ClusterRecord {
                pool: if etcd {
                    pod_pool(id)
                } else {
                    MEMORY_RANGE.to_owned()
                },
                etcd_endpoint: etcd.then(|| format!("http://{}:2379", etcd_ip(id))),
                etcd_config: etcd.then(|| dir.join("etcd").join(format!("{cluster}.yaml"))),
                nodes: (1..=options.nodes)
                    .map(|number| {
                        let node = format!("{cluster}-n{number}");
                        let node_dir = dir.join("nodes").join(&node);
                        NodeRecord {
                            netns: format!("{name}-{node}"),
                            ip: node_ip(id, number),
                            socket: node_dir.join("cilium.sock"),
                            hubble_socket: node_dir.join("hubble.sock"),
                            bpffs: node_dir.join("bpf"),
                            dir: node_dir,
                            pod_cidr: None,
                            name: node,
                        }
                    })
                    .collect(),
                name: cluster,
                id,
            }
        })
        .collect();
    LabState {
        name: name.clone(),
        dir: dir.to_owned(),
        kvstore: options.kvstore,
        routing: options.routing,
        bin_dir: options.bin_dir.clone(),
        underlay: format!("{name}-underlay"),
        external: format!("{name}-external"),
        clusters,
        relay: None,
        netns: Vec::new(),
        mounts: Vec::new(),
        processes: Vec::new(),
        pods: Vec::new(),
        podman: None,
    }
}

fn create_dir(path: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(path).map_err(|e| LabError::io("create", path, e))
}

fn log_path(state: &LabState, file: &str) -> PathBuf {
    state.dir.join("logs").join(file)
}

/// Brings the lab up; `progress` hears each step. The lab stays recorded on failure.
pub fn up(options: &LabOptions, progress: &mut dyn FnMut(&str)) -> Result<LabState, LabError> {
    validate(options)?;
    create_dir(&options.dir)?;
    let dir = std::fs::canonicalize(&options.dir)
        .map_err(|e| LabError::io("resolve", &options.dir, e))?;
    let _lock = LabLock::acquire(&dir)?;
    if LabState::load(&dir)?.is_some() {
        return Err(LabError::AlreadyUp {
            state: LabState::path(&dir),
            dir,
        });
    }
    let mut state = plan(options, &dir);
    let taken: Vec<&str> = std::iter::once(state.underlay.as_str())
        .chain(std::iter::once(state.external.as_str()))
        .chain(state.nodes().map(|n| n.netns.as_str()))
        .filter(|ns| sys::netns_exists(ns))
        .collect();
    if !taken.is_empty() {
        return Err(LabError::InvalidOption {
            what: "lab name",
            value: state.name.clone(),
            reason: "its namespaces already exist (another lab of this name?): pass another \
                     --name or take that lab down",
        });
    }
    for sub in ["logs", "nodes", "etcd"] {
        create_dir(&dir.join(sub))?;
    }
    state.save()?;

    progress(&format!(
        "creating underlay namespace {}...",
        state.underlay
    ));
    create_underlay(&mut state)?;
    progress(&format!(
        "creating external namespace {} with an echo server on {EXTERNAL_ECHO}...",
        state.external
    ));
    create_external(&mut state)?;

    for index in 0..state.clusters.len() {
        if state.kvstore == KvstoreKind::Etcd {
            start_control_plane(&mut state, index, progress)?;
        }
    }
    for cluster in 0..state.clusters.len() {
        for node in 0..state.clusters[cluster].nodes.len() {
            let name = state.clusters[cluster].nodes[node].name.clone();
            progress(&format!("creating node {name} and starting its agent..."));
            plug_node(&mut state, cluster, node)?;
            spawn_agent(&mut state, cluster, node)?;
        }
    }
    for cluster in 0..state.clusters.len() {
        for node in 0..state.clusters[cluster].nodes.len() {
            let name = state.clusters[cluster].nodes[node].name.clone();
            progress(&format!("waiting for node {name} to get its pod CIDR..."));
            let cidr = wait_pod_cidr(&state, cluster, node)?;
            let ip = state.clusters[cluster].nodes[node].ip.to_string();
            // The external namespace answers pods through the underlay, which needs the way back.
            sys::ip_in(&state.underlay, &["route", "replace", &cidr, "via", &ip])?;
            state.clusters[cluster].nodes[node].pod_cidr = Some(cidr.clone());
            state.save()?;
            progress(&format!("  {name}: pods get addresses from {cidr}"));
        }
    }
    progress("starting hubble-relay...");
    start_relay(&mut state)?;
    Ok(state)
}

fn create_underlay(state: &mut LabState) -> Result<(), LabError> {
    let underlay = state.underlay.clone();
    sys::add_netns(state, &underlay)?;
    sys::sysctl_in(&underlay, "net.ipv4.ip_forward", "1")?;
    // A fixed MAC: a bridge otherwise takes the lowest MAC of its ports and changes it as
    // nodes join, leaving nodes with neighbour entries that point nowhere (seen as an agent
    // whose etcd connection stalled for good during `lab up`).
    sys::ip_in(
        &underlay,
        &[
            "link",
            "add",
            "br0",
            "address",
            UNDERLAY_MAC,
            "type",
            "bridge",
        ],
    )?;
    sys::ip_in(
        &underlay,
        &["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", "br0"],
    )?;
    if state.kvstore == KvstoreKind::Etcd {
        for id in state.clusters.iter().map(|c| c.id).collect::<Vec<_>>() {
            sys::ip_in(
                &underlay,
                &["addr", "add", &format!("{}/24", etcd_ip(id)), "dev", "br0"],
            )?;
        }
    }
    sys::ip_in(&underlay, &["link", "set", "br0", "up"])?;
    Ok(())
}

fn create_external(state: &mut LabState) -> Result<(), LabError> {
    let (underlay, external) = (state.underlay.clone(), state.external.clone());
    sys::add_netns(state, &external)?;
    sys::ip_in(
        &underlay,
        &[
            "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &external,
        ],
    )?;
    sys::ip_in(
        &underlay,
        &[
            "addr",
            "add",
            &format!("{EXTERNAL_GATEWAY}/24"),
            "dev",
            "ext0",
        ],
    )?;
    sys::ip_in(&underlay, &["link", "set", "ext0", "up"])?;
    sys::ip_in(
        &external,
        &["addr", "add", &format!("{EXTERNAL_IP}/24"), "dev", "eth0"],
    )?;
    sys::ip_in(&external, &["link", "set", "eth0", "up"])?;
    sys::ip_in(
        &external,
        &[
            "route",
            "add",
            "default",
            "via",
            &EXTERNAL_GATEWAY.to_string(),
        ],
    )?;
    let cilium = state.bin_dir.join("cilium");
    let record = sys::spawn_detached(
        state,
        Spawn {
            component: "echo-server".to_owned(),
            netns: &external,
            program: &cilium,
            args: vec![
                "lab".into(),
                "echo-server".into(),
                "--listen".into(),
                EXTERNAL_ECHO.to_string(),
            ],
            log: log_path(state, "echo-server.log"),
        },
    )?;
    wait_listening(
        &underlay,
        SocketAddr::V4(EXTERNAL_ECHO),
        &record,
        "the route from the underlay (ext0, 192.168.100.1/24) to the external namespace",
    )
}

/// Waits until `addr` accepts connections from inside `netns`, failing early if `record`'s
/// process exits.
fn wait_listening(
    netns: &str,
    addr: SocketAddr,
    record: &ProcessRecord,
    hint: &'static str,
) -> Result<(), LabError> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while !sys::tcp_open_in(netns, addr, Duration::from_millis(500)) {
        if !sys::record_alive(record) {
            return Err(LabError::Exited {
                component: record.component.clone(),
                log: record.log.clone(),
                hint,
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::NotReady {
                component: record.component.clone(),
                timeout: LISTEN_TIMEOUT,
                problem: format!("{addr} refuses connections"),
                log: record.log.clone(),
                hint,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn start_control_plane(
    state: &mut LabState,
    index: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let cluster = state.clusters[index].clone();
    let (Some(endpoint), Some(config)) = (&cluster.etcd_endpoint, &cluster.etcd_config) else {
        return Ok(());
    };
    let underlay = state.underlay.clone();
    progress(&format!("starting etcd for {}...", cluster.name));
    let data = state.dir.join("etcd").join(&cluster.name);
    let peer = format!("http://{}:2380", etcd_ip(cluster.id));
    let etcd = sys::spawn_detached(
        state,
        Spawn {
            component: format!("etcd {}", cluster.name),
            netns: &underlay,
            program: Path::new("etcd"),
            args: vec![
                "--name".into(),
                cluster.name.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                endpoint.clone(),
                "--advertise-client-urls".into(),
                endpoint.clone(),
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer.clone(),
                "--initial-cluster".into(),
                format!("{}={peer}", cluster.name),
                // A single member elects itself; short timeouts make that fast.
                "--heartbeat-interval".into(),
                "20".into(),
                "--election-timeout".into(),
                "200".into(),
            ],
            log: log_path(state, &format!("etcd-{}.log", cluster.name)),
        },
    )?;
    wait_etcd(&underlay, endpoint, &etcd)?;
    std::fs::write(config, format!("endpoints:\n- {endpoint}\n"))
        .map_err(|e| LabError::io("write", config, e))?;
    let kvstore_opt = format!("etcd.config={}", config.display());

    progress(&format!(
        "starting clustermesh-apiserver for {}...",
        cluster.name
    ));
    let apiserver = state.bin_dir.join("clustermesh-apiserver");
    sys::spawn_detached(
        state,
        Spawn {
            component: format!("clustermesh-apiserver {}", cluster.name),
            netns: &underlay,
            program: &apiserver,
            args: vec![
                "--cluster-name".into(),
                cluster.name.clone(),
                "--cluster-id".into(),
                cluster.id.to_string(),
                "--kvstore".into(),
                "etcd".into(),
                "--kvstore-opt".into(),
                kvstore_opt.clone(),
            ],
            log: log_path(
                state,
                &format!("clustermesh-apiserver-{}.log", cluster.name),
            ),
        },
    )?;

    progress(&format!(
        "starting cilium-operator-generic for {}...",
        cluster.name
    ));
    let operator = state.bin_dir.join("cilium-operator-generic");
    sys::spawn_detached(
        state,
        Spawn {
            component: format!("operator {}", cluster.name),
            netns: &underlay,
            program: &operator,
            args: vec![
                "--cluster-name".into(),
                cluster.name.clone(),
                "--kvstore".into(),
                "etcd".into(),
                "--kvstore-opt".into(),
                kvstore_opt,
                "--cluster-pool-ipv4-cidr".into(),
                cluster.pool.clone(),
                "--cluster-pool-ipv4-mask-size".into(),
                "24".into(),
                // Operators share the underlay, so each serves metrics on its own port.
                "--operator-prometheus-serve-addr".into(),
                format!("127.0.0.1:{}", 9970 + u16::from(cluster.id)),
            ],
            log: log_path(state, &format!("operator-{}.log", cluster.name)),
        },
    )?;
    Ok(())
}

fn wait_etcd(underlay: &str, endpoint: &str, record: &ProcessRecord) -> Result<(), LabError> {
    const HINT: &str = "that etcd (Debian package etcd-server) runs and nothing else uses its \
                        address in the underlay";
    let deadline = Instant::now() + ETCD_TIMEOUT;
    loop {
        let health = sys::run(
            "ip",
            &[
                "netns",
                "exec",
                underlay,
                "etcdctl",
                "--endpoints",
                endpoint,
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "endpoint",
                "health",
            ],
        );
        let problem = match health {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if !sys::record_alive(record) {
            return Err(LabError::Exited {
                component: record.component.clone(),
                log: record.log.clone(),
                hint: HINT,
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::NotReady {
                component: record.component.clone(),
                timeout: ETCD_TIMEOUT,
                problem,
                log: record.log.clone(),
                hint: HINT,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The node namespace with `eth0` on the bridge, its bpffs and directories.
fn plug_node(state: &mut LabState, cluster: usize, index: usize) -> Result<(), LabError> {
    let node = state.clusters[cluster].nodes[index].clone();
    let id = state.clusters[cluster].id;
    let underlay = state.underlay.clone();
    sys::add_netns(state, &node.netns)?;
    sys::sysctl_in(&node.netns, "net.ipv4.ip_forward", "1")?;
    let port = format!("v{}", node.name);
    sys::ip_in(
        &underlay,
        &[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &node.netns,
        ],
    )?;
    sys::ip_in(&underlay, &["link", "set", &port, "master", "br0", "up"])?;
    sys::ip_in(
        &node.netns,
        &["addr", "add", &format!("{}/24", node.ip), "dev", "eth0"],
    )?;
    sys::ip_in(&node.netns, &["link", "set", "eth0", "up"])?;
    sys::ip_in(
        &node.netns,
        &[
            "route",
            "add",
            EXTERNAL_SUBNET,
            "via",
            &BRIDGE_IP.to_string(),
        ],
    )?;
    create_dir(&node.dir.join("state"))?;
    sys::mount_bpffs(state, &node.bpffs)?;
    if state.clusters.len() > 1 {
        let mesh = node.dir.join("clustermesh");
        create_dir(&mesh)?;
        for remote in state.clusters.iter().filter(|c| c.id != id) {
            if let Some(endpoint) = &remote.etcd_endpoint {
                let file = mesh.join(&remote.name);
                std::fs::write(&file, format!("endpoints:\n- {endpoint}\n"))
                    .map_err(|e| LabError::io("write", &file, e))?;
            }
        }
    }
    Ok(())
}

fn spawn_agent(state: &mut LabState, cluster: usize, index: usize) -> Result<(), LabError> {
    let record = &state.clusters[cluster];
    let node = record.nodes[index].clone();
    let mut args: Vec<String> = vec![
        "--node-name".into(),
        node.name.clone(),
        "--cluster-name".into(),
        record.name.clone(),
        "--cluster-id".into(),
        record.id.to_string(),
        "--devices".into(),
        "eth0".into(),
        "--routing-mode".into(),
        state.routing.flag().into(),
        "--bpf-root".into(),
        node.bpffs.display().to_string(),
        "--state-dir".into(),
        node.dir.join("state").display().to_string(),
        "--socket-path".into(),
        node.socket.display().to_string(),
        "--prometheus-serve-addr".into(),
        String::new(),
        "--enable-hubble".into(),
        "--hubble-socket-path".into(),
        node.hubble_socket.display().to_string(),
        "--hubble-listen-address".into(),
        ":4244".into(),
        "--hubble-metrics-server".into(),
        String::new(),
    ];
    match &record.etcd_config {
        Some(config) => args.extend([
            "--kvstore".into(),
            "etcd".into(),
            "--kvstore-opt".into(),
            format!("etcd.config={}", config.display()),
            "--ipam".into(),
            "cluster-pool".into(),
            "--kvstore-lease-ttl".into(),
            LEASE_TTL.into(),
        ]),
        None => args.extend(["--ipv4-range".into(), record.pool.clone()]),
    }
    if state.clusters.len() > 1 {
        args.extend([
            "--clustermesh-config".into(),
            node.dir.join("clustermesh").display().to_string(),
        ]);
    }
    let agent = state.bin_dir.join("cilium-agent");
    let log = log_path(state, &format!("agent-{}.log", node.name));
    sys::spawn_detached(
        state,
        Spawn {
            component: format!("agent {}", node.name),
            netns: &node.netns,
            program: &agent,
            args,
            log,
        },
    )?;
    Ok(())
}

/// Waits until the node's agent answers with the range its IPAM hands addresses out of.
fn wait_pod_cidr(state: &LabState, cluster: usize, index: usize) -> Result<String, LabError> {
    let node = &state.clusters[cluster].nodes[index];
    let component = format!("agent {}", node.name);
    let Some(record) = state.process(&component) else {
        return Err(LabError::NotUp {
            dir: state.dir.clone(),
        });
    };
    let hint = if state.kvstore == KvstoreKind::Etcd {
        "the operator's log (logs/operator-*.log): it allocates the pod CIDR through etcd; \
         and that BPF works here (root, bpffs)"
    } else {
        "that BPF works here (root, bpffs)"
    };
    let deadline = Instant::now() + AGENT_TIMEOUT;
    loop {
        let problem = match agent_status(&state.bin_dir, &node.socket) {
            Ok(status) => match status.ipam {
                Some(ipam) if !ipam.alloc_range.is_empty() => return Ok(ipam.alloc_range),
                _ => "no pod CIDR yet".to_owned(),
            },
            Err(problem) => problem,
        };
        if !sys::record_alive(record) {
            return Err(LabError::Exited {
                component,
                log: record.log.clone(),
                hint,
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::NotReady {
                component,
                timeout: AGENT_TIMEOUT,
                problem,
                log: record.log.clone(),
                hint,
            });
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn start_relay(state: &mut LabState) -> Result<(), LabError> {
    let mut args = Vec::new();
    // The first node of each cluster serves its cluster's Peer service.
    for cluster in &state.clusters {
        if let Some(node) = cluster.nodes.first() {
            args.extend(["--peer-service".to_owned(), format!("{}:4244", node.ip)]);
        }
    }
    args.extend([
        "--listen-address".to_owned(),
        RELAY_ADDRESS.to_owned(),
        "--retry-timeout".to_owned(),
        "1s".to_owned(),
        "--dial-timeout".to_owned(),
        "2s".to_owned(),
    ]);
    let relay = state.bin_dir.join("hubble-relay");
    let underlay = state.underlay.clone();
    let record = sys::spawn_detached(
        state,
        Spawn {
            component: "hubble-relay".to_owned(),
            netns: &underlay,
            program: &relay,
            args,
            log: log_path(state, "hubble-relay.log"),
        },
    )?;
    let addr: SocketAddr = RELAY_ADDRESS.parse().map_err(|_| LabError::InvalidOption {
        what: "relay address",
        value: RELAY_ADDRESS.to_owned(),
        reason: "not IP:PORT",
    })?;
    wait_listening(
        &underlay,
        addr,
        &record,
        "that the agents' Hubble servers listen on NODE_IP:4244",
    )?;
    state.relay = Some(RELAY_ADDRESS.to_owned());
    state.save()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        valid_name("pod name", "xwing-1").expect("valid");
        for bad in ["", "X", "a_b", "-a", "a-", &"a".repeat(41)] {
            assert!(valid_name("pod name", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_plan_gives_every_node_its_own_address_and_namespace() {
        let options = LabOptions {
            dir: PathBuf::from("/lab"),
            name: "t".to_owned(),
            clusters: 2,
            nodes: 3,
            kvstore: KvstoreKind::Etcd,
            routing: RoutingMode::Native,
            bin_dir: PathBuf::from("/bin"),
        };
        let state = plan(&options, Path::new("/lab"));
        let nodes: Vec<&NodeRecord> = state.nodes().collect();
        assert_eq!(nodes.len(), 6);
        let mut ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.ip).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 6);
        assert_eq!(nodes[4].name, "c2-n2");
        assert_eq!(nodes[4].netns, "t-c2-n2");
        assert_eq!(nodes[4].ip, Ipv4Addr::new(192, 168, 90, 22));
        assert_eq!(state.clusters[1].pool, "10.2.0.0/16");
        assert_eq!(
            state.clusters[1].etcd_endpoint.as_deref(),
            Some("http://192.168.90.102:2379")
        );
    }

    #[test]
    fn memory_labs_have_one_node_and_counts_are_bounded() {
        let mut options = LabOptions {
            dir: PathBuf::from("/lab"),
            name: "t".to_owned(),
            clusters: 1,
            nodes: 2,
            kvstore: KvstoreKind::Memory,
            routing: RoutingMode::Native,
            bin_dir: PathBuf::from("/nonexistent"),
        };
        let err = validate(&options).expect_err("two nodes without etcd");
        assert!(err.to_string().contains("one node"), "{err}");
        options.kvstore = KvstoreKind::Etcd;
        options.nodes = 10;
        assert!(validate(&options).is_err());
        options.nodes = 2;
        let err = validate(&options).expect_err("no binaries");
        assert!(matches!(err, LabError::MissingBinary { .. }), "{err}");
    }
}
