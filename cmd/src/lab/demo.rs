//! `cilium lab demo`: the Star Wars demo of upstream's getting-started guide on a running lab.
//! Two `deathstar` pods (on different nodes when there are two) behind the `deathstar`
//! service, a `tiefighter` of the empire and an `xwing` of the alliance, and upstream's L3/L4
//! policy `rule1` that lets only the empire land. The demo checks what it shows: the
//! tiefighter lands, the xwing is turned away.
//!
//! Everything goes through the lab's own interfaces, as a user would: pods through
//! `cilium-cni` ([`create_pod`]); the service and the policy through `cilium service apply` and
//! `cilium policy apply` into cluster 1's etcd, or, on a lab without etcd (`--kvstore
//! memory`), through each node agent's REST API with `cilium-dbg service update` and
//! `cilium-dbg policy import` (the agent holds them in memory); the deathstars' servers as
//! recorded lab processes (so `lab down` stops them). Each step first looks for what it would
//! make, so running the demo again reports what is there instead of failing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LabError;
use super::pod::{PodInfo, PodSpec, create_pod, list_pods, pod_exec_command};
use super::state::{ClusterRecord, LabLock, LabState, NodeRecord};
use super::status::agent_status;
use super::sys::{self, Spawn};
use crate::api;

/// The namespace of every demo pod, the service and the policy.
pub const NAMESPACE: &str = "default";
/// The service's name, as upstream's `http-sw-app.yaml` names it.
pub const SERVICE: &str = "deathstar";
/// The service's ClusterIP frontend.
pub const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 100), 80);
/// The port the deathstars serve on.
pub const BACKEND_PORT: u16 = 80;
/// The service id the demo asks each agent for when the cluster has no etcd (`cilium-dbg
/// service update --id`); an existing service with the demo's frontend keeps its own id.
pub const AGENT_SERVICE_ID: u16 = 100;
/// The policy's name, as upstream's.
pub const POLICY_NAME: &str = "rule1";
/// The file name of the policy inside `DIR/demo/`.
pub const POLICY_FILE: &str = "sw_l3_l4_policy.yaml";
/// Upstream's L3/L4 rule of the demo (`minikube/sw_l3_l4_policy.yaml`): only pods with
/// `org=empire` reach the deathstars, on TCP 80.
pub const L3_L4_POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
description: "L3-L4 policy to restrict deathstar access to empire ships only"
metadata:
  name: "rule1"
spec:
  endpointSelector:
    matchLabels:
      org: empire
      class: deathstar
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"#;

/// How long identities, the policy and the service may take to reach every agent.
const READY: Duration = Duration::from_secs(30);
/// How long a deathstar's server may take to listen.
const LISTEN: Duration = Duration::from_secs(5);
/// The probes' connect and echo timeout: an allowed probe answers in milliseconds.
const PROBE_TIMEOUT: &str = "1s";
/// How long the xwing's probe may wait before it counts as turned away.
const DENY_TIMEOUT: &str = "2s";

/// One pod of the demo; `node` indexes cluster 1's nodes (wrapping when there are fewer).
struct Ship {
    name: &'static str,
    class: &'static str,
    org: &'static str,
    node: usize,
}

/// The demo's pods, as upstream's `http-sw-app.yaml` labels them.
const SHIPS: [Ship; 4] = [
    Ship {
        name: "deathstar-1",
        class: "deathstar",
        org: "empire",
        node: 0,
    },
    Ship {
        name: "deathstar-2",
        class: "deathstar",
        org: "empire",
        node: 1,
    },
    Ship {
        name: "tiefighter",
        class: "tiefighter",
        org: "empire",
        node: 0,
    },
    Ship {
        name: "xwing",
        class: "xwing",
        org: "alliance",
        node: 1,
    },
];

impl Ship {
    fn labels(&self) -> BTreeMap<String, String> {
        let app = if self.class == "deathstar" {
            SERVICE
        } else {
            self.class
        };
        BTreeMap::from([
            ("org".to_owned(), self.org.to_owned()),
            ("class".to_owned(), self.class.to_owned()),
            ("app.kubernetes.io/name".to_owned(), app.to_owned()),
        ])
    }

    fn is_deathstar(&self) -> bool {
        self.class == "deathstar"
    }
}

/// What can stop the demo; each message says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("the lab has no cluster with nodes: run `cilium lab up` again")]
    NoCluster,
    #[error(
        "pod {NAMESPACE}/{pod} exists with labels {found:?}, not the demo's {wanted:?}: delete it \
         (`cilium lab pod delete {pod}`) and run the demo again"
    )]
    ForeignPod {
        pod: String,
        found: BTreeMap<String, String>,
        wanted: BTreeMap<String, String>,
    },
    #[error("pod {pod} has no IP address in the lab state")]
    NoAddress { pod: String },
    #[error(
        "the server of {pod} did not listen on port {BACKEND_PORT} within {LISTEN:?}; see {log}"
    )]
    NotListening { pod: String, log: PathBuf },
    #[error("cannot decode the answer of `{command}`: {reason}")]
    CliAnswer { command: String, reason: String },
    #[error("pods {pods} got no identity within {READY:?}; see the agents' logs in {logs}")]
    NoIdentity { pods: String, logs: PathBuf },
    #[error(
        "agent {node} did not realize the policy within {READY:?} ({problem}); see its log {log}"
    )]
    PolicyNotRealized {
        node: String,
        problem: String,
        log: PathBuf,
    },
    #[error(
        "the tiefighter could not land on {FRONTEND} within {READY:?} ({output}); check \
         `cilium service list` and the agents' logs in {logs}"
    )]
    NotLanded { output: String, logs: PathBuf },
    #[error(
        "the xwing reached {FRONTEND} although policy {POLICY_NAME} denies it; check \
         `cilium policy list` and `cilium-dbg policy get` on the deathstars' nodes"
    )]
    NotDenied,
}

/// One demo pod in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DemoPod {
    #[serde(flatten)]
    pub pod: PodInfo,
    /// Whether this run made it (false: it was there).
    pub created: bool,
}

/// What the demo made and saw (`cilium lab demo -o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DemoReport {
    pub pods: Vec<DemoPod>,
    pub service: String,
    pub frontend: SocketAddrV4,
    pub backends: Vec<SocketAddrV4>,
    pub policy: String,
    /// The policy file the demo applied (`DIR/demo/sw_l3_l4_policy.yaml`).
    pub policy_file: PathBuf,
    /// Whether everything was already there before this run.
    pub already_there: bool,
    /// How the tiefighter's probe ended (the echo client's answer).
    pub tiefighter: String,
    /// How the xwing's probe ended (its error).
    pub xwing: String,
    /// Commands to try next, one per line.
    pub next_steps: Vec<String>,
}

/// Sets up the demo on the lab in `dir` (cluster 1) and checks it; `progress` hears each step.
pub fn demo(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<DemoReport, DemoError> {
    let state = LabState::require(dir)?;
    let cluster = state.clusters.first().ok_or(DemoError::NoCluster)?.clone();
    let store = match &cluster.etcd_config {
        Some(config) => Store::Etcd {
            kvstore_opt: format!("etcd.config={}", config.display()),
        },
        None => Store::Agents,
    };
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    if nodes.is_empty() {
        return Err(DemoError::NoCluster);
    }

    progress(&format!(
        "Star Wars demo on cluster {} ({} node(s), {})",
        cluster.name,
        nodes.len(),
        match store {
            Store::Etcd { .. } => "service and policy through etcd",
            Store::Agents => "no etcd: service and policy through each agent's API",
        }
    ));
    let mut created_any = false;
    let mut pods = Vec::new();
    for ship in &SHIPS {
        let node = nodes
            .get(ship.node % nodes.len())
            .ok_or(DemoError::NoCluster)?;
        let (pod, created) = ensure_pod(&state, ship, node)?;
        created_any |= created;
        progress(&format!(
            "  pod {NAMESPACE}/{} on {}: {} ({})",
            pod.name,
            pod.node,
            pod.ip.map_or("-".to_owned(), |ip| ip.to_string()),
            if created { "created" } else { "already there" }
        ));
        pods.push(DemoPod { pod, created });
    }

    let mut backends = Vec::new();
    for ship in SHIPS.iter().filter(|s| s.is_deathstar()) {
        let started = ensure_server(dir, ship.name)?;
        created_any |= started;
        progress(&format!(
            "  {} serves on port {BACKEND_PORT} ({})",
            ship.name,
            if started {
                "started"
            } else {
                "already running"
            }
        ));
        let ip = pods
            .iter()
            .find(|p| p.pod.name == ship.name)
            .and_then(|p| p.pod.ip)
            .ok_or_else(|| DemoError::NoAddress {
                pod: ship.name.to_owned(),
            })?;
        backends.push(SocketAddrV4::new(ip, BACKEND_PORT));
    }

    let backend_list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    let demo_dir = state.dir.join("demo");
    std::fs::create_dir_all(&demo_dir).map_err(|e| LabError::Io {
        action: "create",
        path: demo_dir.clone(),
        source: e,
    })?;
    let policy_file = demo_dir.join(POLICY_FILE);
    std::fs::write(&policy_file, L3_L4_POLICY).map_err(|e| LabError::Io {
        action: "write",
        path: policy_file.clone(),
        source: e,
    })?;
    match &store {
        Store::Etcd { kvstore_opt } => {
            let applied = cilium(
                &state,
                &[
                    "service",
                    "apply",
                    "--kvstore-opt",
                    kvstore_opt,
                    "--cluster-name",
                    &cluster.name,
                    "--cluster-id",
                    &cluster.id.to_string(),
                    "--namespace",
                    NAMESPACE,
                    "--name",
                    SERVICE,
                    "--frontend",
                    &FRONTEND.to_string(),
                    "--backends",
                    &backend_list.join(","),
                ],
            )?;
            created_any |= !applied.contains("unchanged");
            progress(&format!(
                "  service {NAMESPACE}/{SERVICE} {FRONTEND} -> {}: {}",
                backend_list.join(", "),
                applied.trim()
            ));
            let applied = cilium(
                &state,
                &[
                    "policy",
                    "apply",
                    "--kvstore-opt",
                    kvstore_opt,
                    "-f",
                    &policy_file.display().to_string(),
                ],
            )?;
            created_any |= !applied.contains("unchanged");
            progress(&format!("  policy {}", applied.trim()));
        }
        Store::Agents => {
            for node in &cluster.nodes {
                let outcome = ensure_agent_service(&state, node, &backends)?;
                created_any |= outcome != "unchanged";
                progress(&format!(
                    "  service {NAMESPACE}/{SERVICE} {FRONTEND} -> {} on agent {}: {outcome}",
                    backend_list.join(", "),
                    node.name
                ));
                let outcome = ensure_agent_policy(&state, node, &policy_file)?;
                created_any |= outcome != "unchanged";
                progress(&format!(
                    "  policy {NAMESPACE}/{POLICY_NAME} on agent {}: {outcome}",
                    node.name
                ));
            }
        }
    }

    progress("waiting for the ships' identities...");
    let pods = wait_identities(dir, pods)?;
    for p in &pods {
        progress(&format!(
            "  {}: identity {}",
            p.pod.name,
            p.pod.identity.map_or("-".to_owned(), |id| id.to_string())
        ));
    }
    progress(&format!(
        "waiting until every agent of {} enforces {POLICY_NAME}...",
        cluster.name
    ));
    wait_policy(&state, &cluster)?;

    progress(&format!("tiefighter -> {SERVICE} {FRONTEND}..."));
    let tiefighter = land(dir, &state)?;
    progress(&format!("  landed: {}", tiefighter.trim()));
    progress(&format!("xwing -> {SERVICE} {FRONTEND}..."));
    let Err(xwing) = probe(dir, "xwing", DENY_TIMEOUT)? else {
        return Err(DemoError::NotDenied);
    };
    progress(&format!("  turned away: {}", xwing.trim()));

    let next_steps = next_steps(&state, &cluster, &store);
    Ok(DemoReport {
        pods,
        service: format!("{NAMESPACE}/{SERVICE}"),
        frontend: FRONTEND,
        backends,
        policy: format!("{NAMESPACE}/{POLICY_NAME}"),
        policy_file,
        already_there: !created_any,
        tiefighter: tiefighter.trim().to_owned(),
        xwing: xwing.trim().to_owned(),
        next_steps,
    })
}

/// Where the demo's service and policy go.
enum Store {
    /// Cluster 1's etcd, through the cluster CLI (`--kvstore-opt`).
    Etcd { kvstore_opt: String },
    /// No etcd: every agent of the cluster, through its REST API.
    Agents,
}

/// Runs the lab's `cilium-dbg` against `node`'s agent socket (the agent's REST API); its
/// stdout.
fn dbg(state: &LabState, node: &NodeRecord, args: &[&str]) -> Result<String, DemoError> {
    Ok(sys::agent_cli(state, node, args)?)
}

/// `cilium-dbg ARGS -o json` against `node`'s agent, decoded.
fn dbg_json<T: serde::de::DeserializeOwned>(
    state: &LabState,
    node: &NodeRecord,
    args: &[&str],
) -> Result<T, DemoError> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let out = dbg(state, node, &all)?;
    serde_json::from_str(&out).map_err(|e| DemoError::CliAnswer {
        command: format!("cilium-dbg {}", all.join(" ")),
        reason: e.to_string(),
    })
}

/// Puts the deathstar service into `node`'s agent (`PUT /service/{id}`) unless the agent has
/// it with exactly these backends; says what it did.
fn ensure_agent_service(
    state: &LabState,
    node: &NodeRecord,
    backends: &[SocketAddrV4],
) -> Result<&'static str, DemoError> {
    let services: Vec<api::Service> = dbg_json(state, node, &["service", "list"])?;
    let existing = services.iter().find(|s| {
        s.spec.frontend_address.ip == *FRONTEND.ip()
            && s.spec.frontend_address.port == FRONTEND.port()
    });
    let wanted: std::collections::BTreeSet<SocketAddrV4> = backends.iter().copied().collect();
    if let Some(service) = existing {
        let have: std::collections::BTreeSet<SocketAddrV4> = service
            .spec
            .backend_addresses
            .iter()
            .map(api::BackendAddress::socket_addr)
            .collect();
        if have == wanted {
            return Ok("unchanged");
        }
    }
    let id = existing.map_or(AGENT_SERVICE_ID, |s| s.spec.id).to_string();
    let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
    dbg(
        state,
        node,
        &[
            "service",
            "update",
            "--id",
            &id,
            "--frontend",
            &FRONTEND.to_string(),
            "--backends",
            &list.join(","),
        ],
    )?;
    Ok(if existing.is_some() {
        "updated"
    } else {
        "created"
    })
}

/// Whether the rules the agent dumps (`GET /policy`, a JSON array) hold one labelled with
/// the demo policy's name.
fn holds_demo_policy(rules: &serde_json::Value) -> bool {
    let named = |label: &serde_json::Value| {
        label["key"] == model::policy::POLICY_LABEL_NAME && label["value"] == POLICY_NAME
    };
    rules.as_array().is_some_and(|rules| {
        rules.iter().any(|rule| {
            rule["labels"]
                .as_array()
                .is_some_and(|labels| labels.iter().any(named))
        })
    })
}

/// Imports the demo policy into `node`'s agent (`PUT /policy`) unless it holds it already;
/// says what it did.
fn ensure_agent_policy(
    state: &LabState,
    node: &NodeRecord,
    file: &Path,
) -> Result<&'static str, DemoError> {
    let policy: api::Policy = dbg_json(state, node, &["policy", "get"])?;
    let rules: serde_json::Value =
        serde_json::from_str(&policy.policy).map_err(|e| DemoError::CliAnswer {
            command: "cilium-dbg policy get".to_owned(),
            reason: e.to_string(),
        })?;
    if holds_demo_policy(&rules) {
        return Ok("unchanged");
    }
    dbg(
        state,
        node,
        &["policy", "import", &file.display().to_string()],
    )?;
    Ok("imported")
}

/// The ship's pod: the one there (if its labels are the demo's) or a new one on `node`.
fn ensure_pod(state: &LabState, ship: &Ship, node: &str) -> Result<(PodInfo, bool), DemoError> {
    let wanted = ship.labels();
    if let Some(existing) = state
        .pods
        .iter()
        .find(|p| p.name == ship.name && p.namespace == NAMESPACE)
    {
        if existing.labels != wanted {
            return Err(DemoError::ForeignPod {
                pod: ship.name.to_owned(),
                found: existing.labels.clone(),
                wanted,
            });
        }
        let info = PodInfo {
            name: existing.name.clone(),
            namespace: existing.namespace.clone(),
            node: existing.node.clone(),
            ip: existing.ip,
            identity: None,
            labels: existing.labels.clone(),
            netns: existing.netns.clone(),
            runtime: existing.runtime,
        };
        return Ok((info, false));
    }
    let spec = PodSpec {
        name: ship.name.to_owned(),
        namespace: NAMESPACE.to_owned(),
        node: node.to_owned(),
        labels: wanted,
    };
    Ok((create_pod(&state.dir, &spec)?, true))
}

/// The component name of a deathstar's server in the state file.
fn server_component(pod: &str) -> String {
    format!("demo {pod}")
}

/// Starts the echo server inside deathstar `pod` as a recorded lab process, unless it runs;
/// returns whether it started one. Waits until it listens.
fn ensure_server(dir: &Path, pod: &str) -> Result<bool, DemoError> {
    let component = server_component(pod);
    let (netns, log, started) = {
        let _lock = LabLock::acquire(dir)?;
        let mut state = LabState::require(dir)?;
        let netns = state
            .pods
            .iter()
            .find(|p| p.name == pod && p.namespace == NAMESPACE)
            .map(|p| p.netns.clone())
            .ok_or_else(|| LabError::UnknownPod {
                name: pod.to_owned(),
            })?;
        let log = state.dir.join("logs").join(format!("demo-{pod}.log"));
        let running = state.process(&component).is_some_and(sys::record_alive);
        if !running {
            let program = state.bin_dir.join("cilium");
            sys::spawn_detached(
                &mut state,
                Spawn {
                    component: component.clone(),
                    netns: &netns,
                    program: &program,
                    args: vec![
                        "lab".into(),
                        "echo-server".into(),
                        "--listen".into(),
                        format!("0.0.0.0:{BACKEND_PORT}"),
                    ],
                    log: log.clone(),
                },
            )?;
        }
        (netns, log, !running)
    };
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, BACKEND_PORT));
    let deadline = Instant::now() + LISTEN;
    while !sys::tcp_open_in(&netns, local, Duration::from_millis(200)) {
        if Instant::now() >= deadline {
            return Err(DemoError::NotListening {
                pod: pod.to_owned(),
                log,
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(started)
}

/// Runs the lab's cluster CLI in the underlay, where etcd listens; its stdout.
fn cilium(state: &LabState, args: &[&str]) -> Result<String, DemoError> {
    Ok(sys::cluster_cli(state, args)?)
}

/// Waits until every demo pod has its identity from its agent.
fn wait_identities(dir: &Path, pods: Vec<DemoPod>) -> Result<Vec<DemoPod>, DemoError> {
    let deadline = Instant::now() + READY;
    loop {
        let listed = list_pods(dir)?;
        let mut missing = Vec::new();
        let mut out = Vec::new();
        for demo_pod in &pods {
            let found = listed
                .iter()
                .find(|p| p.name == demo_pod.pod.name && p.namespace == NAMESPACE);
            match found {
                Some(p) if p.identity.is_some() => out.push(DemoPod {
                    pod: p.clone(),
                    created: demo_pod.created,
                }),
                _ => missing.push(demo_pod.pod.name.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            return Err(DemoError::NoIdentity {
                pods: missing.join(", "),
                logs: dir.join("logs"),
            });
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until every agent of `cluster` holds a rule and has realized its latest revision.
fn wait_policy(state: &LabState, cluster: &ClusterRecord) -> Result<(), DemoError> {
    let deadline = Instant::now() + READY;
    for node in &cluster.nodes {
        loop {
            let problem = match agent_status(&state.bin_dir, &node.socket) {
                Ok(status)
                    if status.policy.rule_count >= 1
                        && status.policy.realized_revision >= status.policy.revision =>
                {
                    break;
                }
                Ok(status) => format!(
                    "{} rule(s), revision {} realized {}",
                    status.policy.rule_count,
                    status.policy.revision,
                    status.policy.realized_revision
                ),
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                return Err(DemoError::PolicyNotRealized {
                    node: node.name.clone(),
                    problem,
                    log: state
                        .dir
                        .join("logs")
                        .join(format!("agent-{}.log", node.name)),
                });
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(())
}

/// `cilium lab echo-client --connect FRONTEND` inside `pod`: the client's answer, or why it
/// failed (outer error: the probe could not run at all).
fn probe(dir: &Path, pod: &str, timeout: &str) -> Result<Result<String, String>, DemoError> {
    let state = LabState::require(dir)?;
    let command = [
        state.bin_dir.join("cilium").display().to_string(),
        "lab".to_owned(),
        "echo-client".to_owned(),
        "--connect".to_owned(),
        FRONTEND.to_string(),
        "--timeout".to_owned(),
        timeout.to_owned(),
    ];
    let out = pod_exec_command(dir, pod, Some(NAMESPACE), &command)?
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: "ip netns exec".to_owned(),
            source,
        })?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        // The client's own `Error: ` prefix says nothing the demo's wording does not.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr.trim();
        Err(reason.strip_prefix("Error: ").unwrap_or(reason).to_owned())
    })
}

/// The tiefighter's probe, again until it lands (the service may still be on its way to the
/// agent of the tiefighter's node).
fn land(dir: &Path, state: &LabState) -> Result<String, DemoError> {
    let deadline = Instant::now() + READY;
    loop {
        match probe(dir, "tiefighter", PROBE_TIMEOUT)? {
            Ok(answer) => return Ok(answer),
            Err(output) if Instant::now() >= deadline => {
                return Err(DemoError::NotLanded {
                    output: output.trim().to_owned(),
                    logs: state.dir.join("logs"),
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn next_steps(state: &LabState, cluster: &ClusterRecord, store: &Store) -> Vec<String> {
    let cilium = state.bin_dir.join("cilium").display().to_string();
    let dir = state.dir.display();
    let mut steps = vec![
        format!(
            "{cilium} lab --dir {dir} pod exec tiefighter -- {cilium} lab echo-client --connect \
             {FRONTEND}"
        ),
        format!(
            "{cilium} lab --dir {dir} pod exec xwing -- {cilium} lab echo-client --connect \
             {FRONTEND}"
        ),
    ];
    if let Some(relay) = &state.relay {
        let hubble = state.bin_dir.join("hubble").display().to_string();
        let underlay = &state.underlay;
        steps.push(format!(
            "ip netns exec {underlay} {hubble} observe --server {relay} --to-pod \
             {NAMESPACE}/{SERVICE}"
        ));
        steps.push(format!(
            "ip netns exec {underlay} {hubble} observe --server {relay} --from-pod \
             {NAMESPACE}/xwing --verdict DROPPED"
        ));
    }
    let dbg = state.bin_dir.join("cilium-dbg").display().to_string();
    if let Some(node) = cluster.nodes.first() {
        let socket = node.socket.display();
        steps.push(format!("{dbg} -H unix://{socket} endpoint list"));
        if let Store::Agents = store {
            steps.push(format!("{dbg} -H unix://{socket} policy get"));
            steps.push(format!("{dbg} -H unix://{socket} service list"));
        }
    }
    if let Store::Etcd { kvstore_opt } = store {
        let underlay = &state.underlay;
        steps.push(format!(
            "ip netns exec {underlay} {cilium} policy list --kvstore-opt {kvstore_opt}"
        ));
        steps.push(format!(
            "ip netns exec {underlay} {cilium} service list --kvstore-opt {kvstore_opt} \
             --cluster-name {}",
            cluster.name
        ));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_policy_is_one_supported_rule1() {
        let documents =
            crate::cluster_cli::policy::parse_policies(L3_L4_POLICY).expect("supported policy");
        let names: Vec<&str> = documents.iter().map(|d| d.name()).collect();
        assert_eq!(names, vec![POLICY_NAME]);
    }

    #[test]
    fn the_demo_policy_is_found_by_its_name_label() {
        let rules = serde_json::json!([{
            "endpointSelector": {},
            "labels": [
                {"source": "k8s", "key": "io.cilium.k8s.policy.name", "value": "rule1"},
                {"source": "k8s", "key": "io.cilium.k8s.policy.namespace", "value": "default"}
            ]
        }]);
        assert!(holds_demo_policy(&rules));
        let other = serde_json::json!([{
            "labels": [{"source": "k8s", "key": "io.cilium.k8s.policy.name", "value": "rule2"}]
        }]);
        assert!(!holds_demo_policy(&other));
        assert!(!holds_demo_policy(&serde_json::json!([])));
        assert!(!holds_demo_policy(&serde_json::json!({"labels": []})));
    }

    #[test]
    fn ships_spread_over_two_nodes() {
        let deathstars: Vec<usize> = SHIPS
            .iter()
            .filter(|s| s.is_deathstar())
            .map(|s| s.node % 2)
            .collect();
        assert_eq!(deathstars, vec![0, 1]);
        assert!(SHIPS.iter().all(|s| s.labels().len() == 3));
    }
}
