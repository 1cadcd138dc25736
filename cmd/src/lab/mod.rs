//! The local lab (`cilium lab`): a whole Cilium installation on one Linux machine, built from
//! network namespaces, so a newcomer sees agents, the operator, ClusterMesh and Hubble working
//! together without Kubernetes or virtual machines.
//!
//! # Layout of a lab named `N` in directory `DIR`
//! - `N-underlay`: the "data centre" namespace. Its bridge `br0` (192.168.90.254/24) joins the
//!   nodes; it runs one etcd per cluster (on 192.168.90.10K), the operators, the
//!   clustermesh-apiservers and hubble-relay, and it routes between the nodes and the outside.
//! - `N-cK-nM`: node M of cluster K, its `eth0` on the bridge as 192.168.90.KM, with a bpffs
//!   mounted at `DIR/nodes/cK-nM/bpf` and an agent with Hubble enabled.
//! - `N-external`: the world outside the clusters, behind the underlay on 192.168.100.0/24,
//!   with an echo server on [`EXTERNAL_ECHO`] so world and CIDR policies can be tried locally.
//! - `N-pod-NAMESPACE-NAME`: one namespace per pod made by `cilium lab pod create`; a pod made
//!   with `--runtime podman` is a container in the namespace podman made (`netns-...`), with
//!   podman's storage and state under `DIR/podman` (see [`podman`]).
//!
//! Every namespace, mount and process is written to `DIR/state.json` *before* it is created,
//! so `cilium lab down` can undo a lab whose `up` crashed half-way; `down` also sweeps every
//! mount left under `DIR`. Every link lives inside a lab namespace and goes with it. Processes
//! are detached (own session, output in `DIR/logs/`), found again by PID and start time, and
//! stopped by PID only.
//!
//! # Modules
//! - [`state`]: the state file and the records in it.
//! - [`sys`]: the system calls of the lab: `ip`, mounts, detached processes, signals.
//! - [`mod@up`] / [`mod@down`] / [`mod@status`]: bringing the lab up, tearing it down, reporting on it.
//! - [`pod`]: pods through `cilium-cni`, as a container runtime makes them, or made by a real
//!   container runtime.
//! - [`podman`]: the lab's private podman, for pods that are real containers.
//! - [`connectivity`]: `cilium connectivity test`, upstream's scenarios against cluster 1.
//! - [`mod@demo`]: the Star Wars demo (`cilium lab demo`) with upstream's L3/L4 policy.
//! - [`echo`]: the TCP echo server and client the lab uses as its world and its probes.

pub mod connectivity;
pub mod demo;
pub mod down;
pub mod echo;
pub mod pod;
pub mod podman;
pub mod state;
pub mod status;
pub mod sys;
pub mod up;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

pub use demo::{DemoError, DemoReport, demo};
pub use down::down;
pub use pod::{
    PodInfo, PodSpec, create_pod, create_podman_pod, delete_pod, list_pods, pod_exec_command,
};
pub use state::{KvstoreKind, LabState, PodRuntime, RoutingMode};
pub use status::{LabStatus, status};
pub use up::{LabOptions, up};

/// Where `cilium lab` keeps its state, logs and node directories unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/run/cilium-lab";
/// The name (namespace prefix) of a lab unless told otherwise.
pub const DEFAULT_NAME: &str = "lab";
/// The bridge's own address in the underlay; the nodes' way to the outside.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 90, 254);
/// The underlay's address on the link to the external namespace.
pub const EXTERNAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// The external namespace's address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 200);
/// The subnet of the external world, routed by every node through the underlay.
pub const EXTERNAL_SUBNET: &str = "192.168.100.0/24";
/// The echo server of the external namespace.
pub const EXTERNAL_ECHO: SocketAddrV4 = SocketAddrV4::new(EXTERNAL_IP, 80);
/// hubble-relay's Observer API, inside the underlay namespace.
pub const RELAY_ADDRESS: &str = "127.0.0.1:4245";
/// Most clusters and nodes per cluster the addressing plan has room for.
pub const MAX_CLUSTERS: u8 = 9;
pub const MAX_NODES: u8 = 9;

/// What can go wrong in the lab; each message names the problem and, where it helps, where to
/// look next.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{binary} not found at {path}: build the workspace (`cargo build --bins`)")]
    MissingBinary { binary: &'static str, path: PathBuf },
    #[error("{tool} not found: install the Debian package {package} (scripts/install-prereqs.sh)")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`podman {action}` failed: {output}; check {hint}")]
    Podman {
        action: String,
        output: String,
        hint: &'static str,
    },
    #[error(
        "a lab is already up in {dir} (recorded in {state}; `cilium lab status --dir {dir}` \
         shows it): take it down first with `cilium lab down --dir {dir}`, or pass another --dir"
    )]
    AlreadyUp { state: PathBuf, dir: PathBuf },
    #[error("no lab in {dir}: run `cilium lab up --dir {dir}` first")]
    NotUp { dir: PathBuf },
    #[error("state file {path} is not valid: {source}")]
    BadState {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidOption {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "{component} did not become ready within {timeout:?} ({problem}); see its log {log}; \
         check: {hint}"
    )]
    NotReady {
        component: String,
        timeout: Duration,
        problem: String,
        log: PathBuf,
        hint: &'static str,
    },
    #[error("{component} exited while starting; see its log {log}; check: {hint}")]
    Exited {
        component: String,
        log: PathBuf,
        hint: &'static str,
    },
    #[error("no node {node} in the lab (its nodes: {known})")]
    UnknownNode { node: String, known: String },
    #[error("pod {namespace}/{name} already exists")]
    PodExists { namespace: String, name: String },
    #[error("no pod {name} in the lab")]
    UnknownPod { name: String },
    #[error("pod {name} is in several namespaces ({namespaces}): pass --namespace")]
    AmbiguousPod { name: String, namespaces: String },
    #[error("cilium-cni {command} for pod {pod} failed: {output}; see the agent log {log}")]
    Cni {
        command: &'static str,
        pod: String,
        output: String,
        log: PathBuf,
    },
    #[error("a task in namespace {netns} panicked")]
    NetnsTask { netns: String },
    #[error(
        "processes {pids:?} survive SIGKILL (stuck in the kernel?): run `cilium lab down` again"
    )]
    Survivors { pids: Vec<state::ProcessId> },
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },
}

impl LabError {
    fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
