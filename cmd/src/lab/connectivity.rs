//! `cilium connectivity test`: upstream cilium-cli's connectivity check, scenario by scenario,
//! against a lab, or its read-only checks against agents named on the command line.
//!
//! # Against a lab (`--dir`)
//! Like upstream it deploys its own workload in namespace `cilium-test` (submodule `scenarios`):
//! `client` and `client2` (which also carries `other=client`) on the first node of cluster 1,
//! `echo-same-node` next to them, `echo-other-node` on the second node (the first again on a
//! one-node lab) and, when the lab has a second cluster, `echo-other-cluster` there. Every pod
//! serves on port 8080 and answers with its name (submodule `whoami`), so a probe knows who
//! answered: upstream's ICMP client-to-client probes become TCP probes here, and the lab's external
//! echo server plays upstream's "world" (`1.1.1.1`). In front of the echo pods sit upstream's
//! ClusterIP services `echo-same-node` and `echo-other-node` and, with two clusters, the global
//! service `echo-global` with a backend in each cluster. Services and policies go into the
//! cluster's etcd through the cluster CLI or, on a lab without etcd (`--kvstore memory`), into
//! every agent through its API (submodule `store`), as the demo's do.
//!
//! Each scenario keeps upstream's name, policy and expectations: it applies its policy to
//! its cluster, or to every cluster as upstream does in a multi-cluster run (`cilium policy
//! apply` in the underlay, as a user would), waits until every agent there has realized the
//! new policy revision, runs its probes at once (each expected to be allowed or denied;
//! pod-to-pod probes go to the same node, the other node and, in the multi-cluster scenarios
//! and the deny scenarios on a lab with two clusters, the other cluster; the pass line counts
//! them by path), deletes its policy and waits again, so the next scenario starts from a clean
//! slate. Scenarios that need two clusters are skipped on a one-cluster lab, as upstream skips
//! what a cluster does not support, and so are the cross-cluster probes of the others (the
//! pass line says how many). `no-unexpected-packet-drops` (submodule `drops`) runs last, with
//! upstream's expected drop reasons or those `--expected-drop-reasons` makes of them. The
//! workload, services and policies are removed at the end, also on failure.
//!
//! # Against agents (`--agent-socket`)
//! Placing pods takes more than an agent's API: a network namespace, a CNI ADD and a record
//! of what to clean up, which is what the lab's pod code does with its state file. So agents
//! named by their API sockets get the checks that only read from agents: each must answer
//! healthy, and `no-unexpected-packet-drops` counts their drops since they started (as
//! upstream does); every scenario that needs a workload is reported as skipped, naming the
//! flag that runs it.

mod drops;
mod scenarios;
mod store;
mod whoami;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Serialize;

pub use drops::{
    DropCheck, DropCount, EXPECTED_DROP_REASONS, ExpectedDropReasons, UnknownDropReason,
};
pub use scenarios::Verdict;
use scenarios::{
    NO_UNEXPECTED_PACKET_DROPS, PODS, Peer, PolicyClusters, Probe, SCENARIOS, SERVICES, Scenario,
    TestService,
};
use store::Store;
pub use whoami::serve as serve_echo;

use super::pod::{PodSpec, create_pod, delete_pod, list_pods};
use super::state::{ClusterRecord, LabLock, LabState};
use super::status::agent_status;
use super::sys::{self, Spawn};
use super::{EXTERNAL_ECHO, LabError, echo};

/// The namespace of the test workload, its services and every test policy, as upstream's.
pub const NAMESPACE: &str = "cilium-test";
/// The port every test pod serves on (upstream's echo pods listen on 8080).
pub const ECHO_PORT: u16 = 8080;

/// How long identities, services and a policy revision may take to reach every agent.
const READY: Duration = Duration::from_secs(30);
/// How long a test pod's server may take to listen.
const LISTEN: Duration = Duration::from_secs(5);
/// One probe's connect and answer timeout: an allowed probe answers in milliseconds, so a
/// probe that gets nothing in this time was dropped.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a probe expected to pass is retried: a new pod's identity may still be on its way
/// to the other node's (or the other cluster's) ipcache.
const ALLOW_WINDOW: Duration = Duration::from_secs(10);

/// The names of every scenario, in the order they run.
pub fn scenario_names() -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .map(|s| s.name)
        .chain([NO_UNEXPECTED_PACKET_DROPS])
        .collect()
}

/// The scenarios that need a lab with at least two clusters (ClusterMesh).
pub fn multi_cluster_scenario_names() -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .filter(|s| s.clusters > 1)
        .map(|s| s.name)
        .collect()
}

/// What the test runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The lab recorded in this directory: every scenario.
    Lab(PathBuf),
    /// Agents by their API sockets, with the `cilium-dbg` of `bin_dir`: the read-only checks.
    Agents {
        sockets: Vec<PathBuf>,
        bin_dir: PathBuf,
    },
}

/// What can stop the connectivity test itself (failed probes are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ConnectivityError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("the lab has no cluster with nodes: run `cilium lab up` again")]
    NoCluster,
    #[error("--test {pattern:?} selects none of the scenarios ({known})")]
    NoScenario { pattern: String, known: String },
    #[error("pod {NAMESPACE}/{pod} has no IP address in the lab state")]
    NoAddress { pod: String },
    #[error("the server of {pod} did not listen on port {ECHO_PORT} within {LISTEN:?}; see {log}")]
    NotListening { pod: String, log: PathBuf },
    #[error("`{command}` failed: {output}")]
    Cli { command: String, output: String },
    #[error("pods {pods} got no identity within {READY:?}; see the agents' logs in {logs}")]
    NoIdentity { pods: String, logs: PathBuf },
    #[error(
        "agent {node} did not realize the policy change within {READY:?} ({problem}); see its \
         log {log}"
    )]
    PolicyNotRealized {
        node: String,
        problem: String,
        log: PathBuf,
    },
    #[error(
        "service {NAMESPACE}/{service} ({frontend}) was not served within {READY:?}: {problem}; \
         check `cilium service list` and the agents' logs in {logs}"
    )]
    ServiceNotServed {
        service: String,
        frontend: SocketAddrV4,
        problem: String,
        logs: PathBuf,
    },
    #[error(
        "agent at {socket} does not answer ({problem}): check the path and that cilium-agent \
         runs (`cilium-dbg -H unix://{socket} status`)",
        socket = socket.display()
    )]
    AgentDown { socket: PathBuf, problem: String },
    #[error(
        "agent at {socket} is not healthy ({state}): see `cilium-dbg -H unix://{socket} \
         status` and the agent's log",
        socket = socket.display()
    )]
    AgentUnhealthy { socket: PathBuf, state: String },
    #[error("--agent-socket given without a socket path")]
    NoAgents,
}

/// How a probe's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    SameNode,
    CrossNode,
    CrossCluster,
    World,
}

impl PathKind {
    fn label(self) -> &'static str {
        match self {
            PathKind::SameNode => "same-node",
            PathKind::CrossNode => "cross-node",
            PathKind::CrossCluster => "cross-cluster",
            PathKind::World => "world",
        }
    }
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    /// `SOURCE -> DESTINATION`, as the text output names it.
    pub name: String,
    /// Upstream's scenario kind: `pod-to-pod`, `client-to-client`, `pod-to-service` or
    /// `pod-to-world`.
    pub kind: &'static str,
    pub source: String,
    /// A pod's name, `service/NAME` or `world`.
    pub destination: String,
    pub address: SocketAddrV4,
    /// The farthest way the probe's packets had to go (to any backend, for a service).
    pub path: PathKind,
    pub expected: Verdict,
    pub actual: Verdict,
    /// Who answered (each distinct answer once; `world` for the external server).
    pub answered_by: Vec<String>,
    /// The round trip, or why the probe got no (or the wrong) answer.
    pub detail: String,
    pub passed: bool,
    /// For a failed probe: Hubble's latest flows from the source to the destination (through
    /// the lab's relay), which show where the packets were forwarded or dropped.
    pub flows: Vec<String>,
}

/// One scenario's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub policies: Vec<String>,
    pub probes: Vec<ProbeReport>,
    /// The probes of the scenario that go to another cluster, by name, when the lab has only
    /// one (they run, and are in `probes`, when it has two).
    pub skipped_probes: Vec<String>,
    pub passed: bool,
    /// Why the scenario did not run (it needs what this target lacks); `null` when it ran.
    pub skipped: Option<String>,
    /// Why the scenario could not run its probes (policy not applied or not realized).
    pub error: Option<String>,
    /// `no-unexpected-packet-drops`: the drops it counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<DropCheck>,
}

impl ScenarioReport {
    fn new(name: &str) -> ScenarioReport {
        ScenarioReport {
            name: name.to_owned(),
            policies: Vec::new(),
            probes: Vec::new(),
            skipped_probes: Vec::new(),
            passed: false,
            skipped: None,
            error: None,
            drops: None,
        }
    }

    fn skipped(name: &str, why: String) -> ScenarioReport {
        ScenarioReport {
            skipped: Some(why),
            ..ScenarioReport::new(name)
        }
    }

    /// `[PASS] name (n probes: ...)`, `[SKIP] name: why` or `[FAIL] name: ...` with every
    /// failed probe, then the flows of the failed probes, indented, one per line.
    pub fn line(&self) -> String {
        if let Some(why) = &self.skipped {
            return format!("[SKIP] {}: {why}", self.name);
        }
        if self.passed {
            if let Some(check) = &self.drops {
                return format!("[PASS] {} ({})", self.name, check.summary());
            }
            let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
            for p in &self.probes {
                *paths.entry(p.path.label()).or_default() += 1;
            }
            let paths: Vec<String> = paths.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let skipped = match self.skipped_probes.len() {
                0 => String::new(),
                n => format!("; {n} cross-cluster probes skipped: the lab has one cluster"),
            };
            return format!(
                "[PASS] {} ({} probes: {}{skipped})",
                self.name,
                self.probes.len(),
                paths.join(", ")
            );
        }
        let mut reasons: Vec<String> = self
            .probes
            .iter()
            .filter(|p| !p.passed)
            .map(|p| {
                format!(
                    "probe {} expected {} got {} ({})",
                    p.name, p.expected, p.actual, p.detail
                )
            })
            .collect();
        if let Some(check) = &self.drops {
            reasons.extend(check.unexpected().map(|d| {
                format!(
                    "{} dropped {} packet(s): {} (reason {})",
                    d.agent, d.packets, d.reason_name, d.reason
                )
            }));
        }
        if let Some(error) = &self.error {
            reasons.insert(0, error.clone());
        }
        let mut text = format!("[FAIL] {}: {}", self.name, reasons.join("; "));
        for p in self.probes.iter().filter(|p| !p.passed) {
            for flow in &p.flows {
                text.push_str(&format!("\n    {}: {flow}", p.name));
            }
        }
        text
    }
}

/// The whole run (`cilium connectivity test -o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectivityReport {
    /// The cluster the clients run in (`agents` without a lab).
    pub cluster: String,
    /// Every cluster the run used.
    pub clusters: Vec<String>,
    /// Whether `echo-other-node` runs on another node than the clients.
    pub cross_node: bool,
    /// Whether `echo-other-cluster` runs in a second cluster.
    pub cross_cluster: bool,
    pub scenarios: Vec<ScenarioReport>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub duration_ms: u128,
}

impl ConnectivityReport {
    pub fn success(&self) -> bool {
        self.failed == 0
    }

    /// The closing line of the text output.
    pub fn summary(&self) -> String {
        let probes: usize = self.scenarios.iter().map(|s| s.probes.len()).sum();
        format!(
            "{} scenarios ({probes} probes) in {:.1}s: {} passed, {} failed, {} skipped",
            self.scenarios.len(),
            Duration::from_millis(u64::try_from(self.duration_ms).unwrap_or(u64::MAX))
                .as_secs_f64(),
            self.passed,
            self.failed,
            self.skipped
        )
    }

    fn new(
        cluster: String,
        clusters: Vec<String>,
        deployed: Option<&Workload>,
        scenarios: Vec<ScenarioReport>,
        started: Instant,
    ) -> ConnectivityReport {
        let skipped = scenarios.iter().filter(|s| s.skipped.is_some()).count();
        let passed = scenarios.iter().filter(|s| s.passed).count();
        let path_to = |pod: &str| {
            deployed.and_then(|w| {
                let client = w.pods.get("client")?;
                Some(client.path_to(w.pods.get(pod)?))
            })
        };
        ConnectivityReport {
            cluster,
            clusters,
            cross_node: path_to("echo-other-node") == Some(PathKind::CrossNode),
            cross_cluster: path_to("echo-other-cluster") == Some(PathKind::CrossCluster),
            failed: scenarios.len() - passed - skipped,
            passed,
            skipped,
            scenarios,
            duration_ms: started.elapsed().as_millis(),
        }
    }
}

/// Runs the scenarios whose names match `filter` (all without one) against `target`, with
/// `expected_drops` the reasons `no-unexpected-packet-drops` accepts; `progress` hears each
/// step, `finished` each scenario's result as soon as it is known. On a lab the workload,
/// services and policies are removed afterwards, whatever happened.
pub fn run(
    target: &Target,
    filter: Option<&Regex>,
    expected_drops: &ExpectedDropReasons,
    progress: &mut dyn FnMut(&str),
    finished: &mut dyn FnMut(&ScenarioReport),
) -> Result<ConnectivityReport, ConnectivityError> {
    let selected: Vec<&'static str> = scenario_names()
        .into_iter()
        .filter(|name| filter.is_none_or(|f| f.is_match(name)))
        .collect();
    if selected.is_empty() {
        return Err(ConnectivityError::NoScenario {
            pattern: filter.map(|f| f.as_str().to_owned()).unwrap_or_default(),
            known: scenario_names().join(", "),
        });
    }
    match target {
        Target::Lab(dir) => run_lab(dir, &selected, expected_drops, progress, finished),
        Target::Agents { sockets, bin_dir } => run_agents(
            sockets,
            bin_dir,
            &selected,
            expected_drops,
            progress,
            finished,
        ),
    }
}

/// The read-only run against agents named by their sockets.
fn run_agents(
    sockets: &[PathBuf],
    bin_dir: &Path,
    selected: &[&'static str],
    expected_drops: &ExpectedDropReasons,
    progress: &mut dyn FnMut(&str),
    finished: &mut dyn FnMut(&ScenarioReport),
) -> Result<ConnectivityReport, ConnectivityError> {
    if sockets.is_empty() {
        return Err(ConnectivityError::NoAgents);
    }
    let started = Instant::now();
    progress(&format!("checking {} agent(s)", sockets.len()));
    let agents: Vec<Agent> = sockets
        .iter()
        .map(|socket| Agent {
            name: socket.display().to_string(),
            socket: socket.clone(),
        })
        .collect();
    for agent in &agents {
        let status = agent_status(bin_dir, &agent.socket).map_err(|problem| {
            ConnectivityError::AgentDown {
                socket: agent.socket.clone(),
                problem,
            }
        })?;
        if status.cilium.state != "Ok" {
            return Err(ConnectivityError::AgentUnhealthy {
                socket: agent.socket.clone(),
                state: format!("{} {}", status.cilium.state, status.cilium.msg),
            });
        }
    }
    let mut reports = Vec::new();
    for name in selected {
        let report = if *name == NO_UNEXPECTED_PACKET_DROPS {
            check_drops(bin_dir, &agents, None, expected_drops)
        } else {
            ScenarioReport::skipped(
                name,
                "it deploys test pods, which takes a lab: run it with --dir LAB_DIR instead of \
                 --agent-socket"
                    .to_owned(),
            )
        };
        finished(&report);
        reports.push(report);
    }
    Ok(ConnectivityReport::new(
        "agents".to_owned(),
        Vec::new(),
        None,
        reports,
        started,
    ))
}

/// An agent the drop check reads.
struct Agent {
    name: String,
    socket: PathBuf,
}

/// Each agent's drop counters (or why they could not be read), by agent name.
type Snapshot = BTreeMap<String, Result<drops::DropCounters, String>>;

fn snapshot(bin_dir: &Path, agents: &[Agent]) -> Snapshot {
    agents
        .iter()
        .map(|a| (a.name.clone(), drops::read_counters(bin_dir, &a.socket)))
        .collect()
}

/// The drop check over `agents`: against `baseline` when there is one, otherwise since each
/// agent started. An agent whose counters cannot be read (now, or for the baseline) fails
/// the check: a drop it hides would go unnoticed.
fn check_drops(
    bin_dir: &Path,
    agents: &[Agent],
    baseline: Option<&Snapshot>,
    expected: &ExpectedDropReasons,
) -> ScenarioReport {
    let mut report = ScenarioReport::new(NO_UNEXPECTED_PACKET_DROPS);
    let mut check = DropCheck {
        agents: agents.iter().map(|a| a.name.clone()).collect(),
        since: if baseline.is_some() {
            "test run"
        } else {
            "agent start"
        },
        expected_reasons: expected.names(),
        drops: Vec::new(),
    };
    let mut problems = Vec::new();
    for agent in agents {
        let empty = drops::DropCounters::new();
        let before = match baseline.map(|b| b.get(&agent.name)) {
            None => Ok(&empty),
            Some(Some(Ok(counters))) => Ok(counters),
            Some(Some(Err(problem))) => Err(problem.clone()),
            Some(None) => Err("the agent was not there".to_owned()),
        };
        let before = match before {
            Ok(before) => before,
            Err(problem) => {
                problems.push(format!(
                    "no snapshot of the drop counters of {} before the run: {problem}",
                    agent.name
                ));
                continue;
            }
        };
        match drops::read_counters(bin_dir, &agent.socket) {
            Ok(now) => {
                check
                    .drops
                    .extend(drops::drops_between(&agent.name, before, &now, expected))
            }
            Err(problem) => problems.push(format!(
                "cannot read the drop counters of {}: {problem}",
                agent.name
            )),
        }
    }
    if !problems.is_empty() {
        report.error = Some(problems.join("; "));
    }
    report.passed = problems.is_empty() && check.unexpected().next().is_none();
    report.drops = Some(check);
    report
}

/// One cluster of the lab as the test uses it.
struct LabCluster {
    record: ClusterRecord,
    store: Store,
}

/// The lab as the test needs it: where the CLI runs, the clusters with their kvstores.
struct Lab {
    dir: PathBuf,
    state: LabState,
    clusters: Vec<LabCluster>,
    /// Where the policy files go (`DIR/connectivity`).
    work_dir: PathBuf,
}

impl Lab {
    fn open(dir: &Path) -> Result<Lab, ConnectivityError> {
        let state = LabState::require(dir)?;
        let mut clusters = Vec::new();
        for record in state.clusters.iter().filter(|c| !c.nodes.is_empty()) {
            let store = match &record.etcd_config {
                Some(config) => Store::Etcd {
                    kvstore_opt: format!("etcd.config={}", config.display()),
                },
                None => Store::Agents,
            };
            clusters.push(LabCluster {
                record: record.clone(),
                store,
            });
        }
        if clusters.is_empty() {
            return Err(ConnectivityError::NoCluster);
        }
        let work_dir = state.dir.join("connectivity");
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| LabError::io("create", work_dir.clone(), e))?;
        Ok(Lab {
            dir: dir.to_owned(),
            state,
            clusters,
            work_dir,
        })
    }

    fn agents(&self) -> Vec<Agent> {
        self.clusters
            .iter()
            .flat_map(|c| &c.record.nodes)
            .map(|n| Agent {
                name: n.name.clone(),
                socket: n.socket.clone(),
            })
            .collect()
    }

    fn first_cluster_name(&self) -> &str {
        self.clusters.first().map_or("", |c| c.record.name.as_str())
    }
}

/// The run against a lab.
fn run_lab(
    dir: &Path,
    selected: &[&'static str],
    expected_drops: &ExpectedDropReasons,
    progress: &mut dyn FnMut(&str),
    finished: &mut dyn FnMut(&ScenarioReport),
) -> Result<ConnectivityReport, ConnectivityError> {
    let lab = Lab::open(dir)?;
    let started = Instant::now();
    let probing: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| selected.contains(&s.name))
        .collect();
    let check_drops_too = selected.contains(&NO_UNEXPECTED_PACKET_DROPS);
    let runnable = |s: &Scenario| s.clusters <= lab.clusters.len();

    // Leftovers of an interrupted run would make `apply` a no-op and the pods exist already.
    clean_up(&lab, progress)?;
    let needs_workload = probing.iter().any(|s| runnable(s));
    // Drops are counted from here, so bringing the lab up and earlier runs do not count.
    let baseline =
        (check_drops_too && needs_workload).then(|| snapshot(&lab.state.bin_dir, &lab.agents()));
    let mut workload = None;
    let result = run_deployed(
        &lab,
        &probing,
        needs_workload,
        check_drops_too.then_some(DropPlan {
            baseline: baseline.as_ref(),
            expected: expected_drops,
        }),
        &mut workload,
        progress,
        finished,
    );
    let cleaned = clean_up(&lab, progress);
    let scenarios = result?;
    cleaned?;
    Ok(ConnectivityReport::new(
        lab.first_cluster_name().to_owned(),
        lab.clusters.iter().map(|c| c.record.name.clone()).collect(),
        workload.as_ref(),
        scenarios,
        started,
    ))
}

/// How the drop check runs: against the counters of `baseline` (since each agent started
/// without one), accepting drops for the `expected` reasons.
struct DropPlan<'a> {
    baseline: Option<&'a Snapshot>,
    expected: &'a ExpectedDropReasons,
}

/// Deploys the workload (into `workload`, so the caller can report on it) when a selected
/// scenario can run, runs the scenarios (skipping those that need more clusters), then the
/// drop check when `drops` is given.
fn run_deployed(
    lab: &Lab,
    probing: &[&Scenario],
    needs_workload: bool,
    drops: Option<DropPlan<'_>>,
    workload: &mut Option<Workload>,
    progress: &mut dyn FnMut(&str),
    finished: &mut dyn FnMut(&ScenarioReport),
) -> Result<Vec<ScenarioReport>, ConnectivityError> {
    if needs_workload {
        *workload = Some(deploy(lab, progress)?);
    }
    let mut reports = Vec::new();
    for scenario in probing {
        let report = match workload.as_ref() {
            Some(w) if scenario.clusters <= lab.clusters.len() => run_scenario(lab, scenario, w)?,
            _ => ScenarioReport::skipped(
                scenario.name,
                format!(
                    "needs {} clusters joined by ClusterMesh and the lab has {}: bring one up \
                     with `cilium lab up --clusters 2`",
                    scenario.clusters,
                    lab.clusters.len()
                ),
            ),
        };
        finished(&report);
        reports.push(report);
    }
    if let Some(plan) = drops {
        let report = check_drops(
            &lab.state.bin_dir,
            &lab.agents(),
            plan.baseline,
            plan.expected,
        );
        finished(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// A test pod once created: where probes go to and come from.
struct Deployed {
    ip: Ipv4Addr,
    netns: String,
    cluster: usize,
    node: String,
}

impl Deployed {
    fn path_to(&self, other: &Deployed) -> PathKind {
        if self.cluster != other.cluster {
            PathKind::CrossCluster
        } else if self.node != other.node {
            PathKind::CrossNode
        } else {
            PathKind::SameNode
        }
    }
}

/// The deployed workload: pods by name, and the services whose backends all exist.
struct Workload {
    pods: BTreeMap<&'static str, Deployed>,
    services: Vec<&'static TestService>,
}

/// The server process of a test pod, as `lab status` and `lab down` see it.
fn server_component(pod: &str) -> String {
    format!("connectivity {pod}")
}

/// Creates the workload, starts its servers, waits for its identities, applies the services
/// and waits until each is served.
fn deploy(lab: &Lab, progress: &mut dyn FnMut(&str)) -> Result<Workload, ConnectivityError> {
    progress(&format!(
        "deploying the test workload in namespace {NAMESPACE} on {} cluster(s)",
        lab.clusters.len()
    ));
    let mut pods = BTreeMap::new();
    for pod in PODS.iter() {
        let Some(cluster) = lab.clusters.get(pod.cluster) else {
            continue;
        };
        let nodes = &cluster.record.nodes;
        let node = nodes
            .get(pod.node % nodes.len().max(1))
            .ok_or(ConnectivityError::NoCluster)?;
        let info = create_pod(
            &lab.dir,
            &PodSpec {
                name: pod.name.to_owned(),
                namespace: NAMESPACE.to_owned(),
                node: node.name.clone(),
                labels: pod
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
        )?;
        let ip = info.ip.ok_or_else(|| ConnectivityError::NoAddress {
            pod: pod.name.to_owned(),
        })?;
        progress(&format!(
            "  pod {NAMESPACE}/{} on {}: {ip}",
            pod.name, node.name
        ));
        pods.insert(
            pod.name,
            Deployed {
                ip,
                netns: info.netns.clone(),
                cluster: pod.cluster,
                node: node.name.clone(),
            },
        );
        start_server(&lab.dir, pod.name)?;
    }
    wait_identities(&lab.dir, &pods)?;
    let services: Vec<&'static TestService> = SERVICES
        .iter()
        .filter(|s| s.backends.iter().all(|b| pods.contains_key(b)))
        .collect();
    let workload = Workload { pods, services };
    for service in &workload.services {
        apply_service(lab, service, &workload)?;
    }
    for service in &workload.services {
        wait_served(lab, service, &workload)?;
        progress(&format!(
            "  service {NAMESPACE}/{} {} -> {} served",
            service.name,
            service.frontend,
            service.backends.join(", ")
        ));
    }
    Ok(workload)
}

/// Writes the service into every cluster that holds some of its backends, with those.
fn apply_service(
    lab: &Lab,
    service: &TestService,
    workload: &Workload,
) -> Result<(), ConnectivityError> {
    for (index, cluster) in lab.clusters.iter().enumerate() {
        let backends: Vec<SocketAddrV4> = service
            .backends
            .iter()
            .filter_map(|b| workload.pods.get(b))
            .filter(|pod| pod.cluster == index)
            .map(|pod| SocketAddrV4::new(pod.ip, ECHO_PORT))
            .collect();
        if !backends.is_empty() {
            store::apply_service(lab, cluster, service, &backends)?;
        }
    }
    Ok(())
}

/// Probes the service from `client` until every backend has answered.
fn wait_served(
    lab: &Lab,
    service: &TestService,
    workload: &Workload,
) -> Result<(), ConnectivityError> {
    let client = workload
        .pods
        .get("client")
        .ok_or_else(|| LabError::UnknownPod {
            name: "client".to_owned(),
        })?;
    let wanted: BTreeSet<&str> = service.backends.iter().copied().collect();
    let (seen, problem) = spread(&client.netns, service.frontend, &wanted, READY)?;
    if seen.len() == wanted.len() {
        return Ok(());
    }
    Err(ConnectivityError::ServiceNotServed {
        service: service.name.to_owned(),
        frontend: service.frontend,
        problem: format!(
            "answered by [{}] of [{}]; last problem: {problem}",
            seen.into_iter().collect::<Vec<_>>().join(", "),
            service.backends.join(", ")
        ),
        logs: lab.state.dir.join("logs"),
    })
}

/// Connects to `frontend` from `netns` again and again until every name of `wanted` has
/// answered or `window` has passed; who answered, and the last failure.
fn spread(
    netns: &str,
    frontend: SocketAddrV4,
    wanted: &BTreeSet<&str>,
    window: Duration,
) -> Result<(BTreeSet<String>, String), ConnectivityError> {
    let deadline = Instant::now() + window;
    let mut seen = BTreeSet::new();
    let mut problem = "no answer yet".to_owned();
    while Instant::now() < deadline && !wanted.iter().all(|w| seen.contains(*w)) {
        match exchange(netns, Peer::Service(""), frontend)? {
            Ok((_, name)) => {
                seen.insert(name);
            }
            Err(e) => {
                problem = e;
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok((seen, problem))
}

/// Starts the server of test pod `pod` as a recorded lab process and waits until it listens.
fn start_server(dir: &Path, pod: &str) -> Result<(), ConnectivityError> {
    let (netns, log) = {
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
        let log = state
            .dir
            .join("logs")
            .join(format!("connectivity-{pod}.log"));
        let program = state.bin_dir.join("cilium");
        sys::spawn_detached(
            &mut state,
            Spawn {
                component: server_component(pod),
                netns: &netns,
                program: &program,
                args: vec![
                    "connectivity".into(),
                    "echo-server".into(),
                    "--listen".into(),
                    format!("0.0.0.0:{ECHO_PORT}"),
                    "--name".into(),
                    pod.to_owned(),
                ],
                log: log.clone(),
            },
        )?;
        (netns, log)
    };
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, ECHO_PORT));
    let deadline = Instant::now() + LISTEN;
    while !sys::tcp_open_in(&netns, local, Duration::from_millis(200)) {
        if Instant::now() >= deadline {
            return Err(ConnectivityError::NotListening {
                pod: pod.to_owned(),
                log,
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until every deployed test pod has its identity from its agent.
fn wait_identities(
    dir: &Path,
    pods: &BTreeMap<&'static str, Deployed>,
) -> Result<(), ConnectivityError> {
    let deadline = Instant::now() + READY;
    loop {
        let listed = list_pods(dir)?;
        let missing: Vec<&str> = pods
            .keys()
            .copied()
            .filter(|name| {
                !listed
                    .iter()
                    .any(|p| p.name == *name && p.namespace == NAMESPACE && p.identity.is_some())
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ConnectivityError::NoIdentity {
                pods: missing.join(", "),
                logs: dir.join("logs"),
            });
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Removes every test policy and service (in every cluster), stops the servers and deletes
/// the pods; each step runs even when an earlier one failed, and the first failure is
/// returned.
fn clean_up(lab: &Lab, progress: &mut dyn FnMut(&str)) -> Result<(), ConnectivityError> {
    let mut first_error = None;
    let mut keep = |result: Result<(), ConnectivityError>| {
        if let Err(e) = result
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    };
    for cluster in &lab.clusters {
        keep(store::policies(lab, cluster).and_then(|names| {
            if names.is_empty() {
                return Ok(());
            }
            let before = revisions(lab, cluster);
            for name in &names {
                store::delete_policy(lab, cluster, name)?;
            }
            wait_realized(lab, cluster, &before)
        }));
        keep(store::remove_services(lab, cluster).map(drop));
    }
    keep(stop_servers(&lab.dir));
    let state = LabState::require(&lab.dir);
    keep(state.map_err(Into::into).and_then(|state| {
        let mut deleted = 0;
        for pod in state.pods.iter().filter(|p| p.namespace == NAMESPACE) {
            delete_pod(&lab.dir, &pod.name, Some(NAMESPACE))?;
            deleted += 1;
        }
        if deleted > 0 {
            progress(&format!(
                "removed {deleted} test pod(s) of namespace {NAMESPACE}"
            ));
        }
        Ok(())
    }));
    first_error.map_or(Ok(()), Err)
}

/// Stops the test pods' servers by their recorded PIDs and forgets them.
fn stop_servers(dir: &Path) -> Result<(), ConnectivityError> {
    let _lock = LabLock::acquire(dir)?;
    let mut state = LabState::require(dir)?;
    let ours = |component: &str| {
        PODS.iter()
            .any(|pod| component == server_component(pod.name))
    };
    let targets: Vec<_> = state
        .processes
        .iter()
        .filter(|p| ours(&p.component))
        .filter_map(|p| p.pid.map(|pid| (pid, p.start_time)))
        .collect();
    let survivors = sys::stop(&targets, Duration::from_secs(2));
    if !survivors.is_empty() {
        return Err(LabError::Survivors { pids: survivors }.into());
    }
    state.processes.retain(|p| !ours(&p.component));
    state.save()?;
    Ok(())
}

/// The names of the documents of a scenario's policy (what `policy delete` removes).
fn policy_names(yaml: &str) -> Result<Vec<String>, String> {
    crate::cluster_cli::policy::parse_policies(yaml)
        .map(|docs| docs.iter().map(|d| d.name().to_owned()).collect())
        .map_err(|e| e.to_string())
}

/// Applies the scenario's policy to its clusters, waits until it is realized, probes (across
/// clusters too when the lab has two), removes it.
fn run_scenario(
    lab: &Lab,
    scenario: &Scenario,
    workload: &Workload,
) -> Result<ScenarioReport, ConnectivityError> {
    let mut report = ScenarioReport::new(scenario.name);
    let clusters: Vec<&LabCluster> = match scenario.policy_clusters {
        PolicyClusters::One(index) => {
            vec![
                lab.clusters
                    .get(index)
                    .ok_or(ConnectivityError::NoCluster)?,
            ]
        }
        PolicyClusters::Every => lab.clusters.iter().collect(),
    };
    let mut names = Vec::new();
    if let Some(policy) = scenario.policy {
        let applied = policy_names(policy)
            .inspect(|found| names.clone_from(found))
            .and_then(|_| {
                apply_policy_to(lab, &clusters, scenario.name, policy).map_err(|e| e.to_string())
            });
        report.policies.clone_from(&names);
        if let Err(e) = applied {
            report.error = Some(format!("policy not in force: {e}"));
            // Whatever part of it landed must not leak into the next scenario.
            for cluster in &clusters {
                remove_policies(lab, cluster, &names)?;
            }
            return Ok(report);
        }
    }
    let mut probes: Vec<Probe> = scenario.probes().copied().collect();
    if lab.clusters.len() > 1 {
        probes.extend(scenario.cross_cluster_probes());
    } else {
        report.skipped_probes = scenario.cross_cluster_probes().map(probe_name).collect();
    }
    report.probes = run_probes(&probes, workload)?;
    for failed in report.probes.iter_mut().filter(|p| !p.passed) {
        if let Some(source) = workload.pods.get(failed.source.as_str()) {
            failed.flows = explain(lab, source.ip, failed.address);
        }
    }
    if scenario.policy.is_some() {
        for cluster in &clusters {
            remove_policies(lab, cluster, &names)?;
        }
    }
    report.passed = report.probes.iter().all(|p| p.passed);
    Ok(report)
}

/// Applies the scenario's policy to each of `clusters`, then waits until every agent of each
/// has realized it (applying everywhere first lets the clusters realize it side by side).
fn apply_policy_to(
    lab: &Lab,
    clusters: &[&LabCluster],
    scenario: &str,
    policy: &str,
) -> Result<(), ConnectivityError> {
    let before: Vec<Vec<Option<u64>>> = clusters.iter().map(|c| revisions(lab, c)).collect();
    for cluster in clusters {
        apply_policy(lab, cluster, scenario, policy)?;
    }
    for (cluster, before) in clusters.iter().zip(&before) {
        wait_realized(lab, cluster, before)?;
    }
    Ok(())
}

/// Deletes the named policies (those that exist) and waits until the agents follow.
fn remove_policies(
    lab: &Lab,
    cluster: &LabCluster,
    names: &[String],
) -> Result<(), ConnectivityError> {
    let present = store::policies(lab, cluster)?;
    let before = revisions(lab, cluster);
    let mut deleted = false;
    for name in names {
        if present.contains(name) {
            store::delete_policy(lab, cluster, name)?;
            deleted = true;
        }
    }
    if deleted {
        wait_realized(lab, cluster, &before)?;
    }
    Ok(())
}

/// What a probe checks once it ran.
struct Plan {
    probe: Probe,
    kind: &'static str,
    netns: String,
    destination: String,
    address: SocketAddrV4,
    path: PathKind,
    /// Who may answer (empty for the world); with [`Peer::EveryBackend`], who must.
    answerers: BTreeSet<&'static str>,
}

/// How reports name a probe's destination: a pod's name, `service/NAME` or `world`.
fn destination_name(peer: Peer) -> String {
    match peer {
        Peer::Pod(name) => name.to_owned(),
        Peer::Service(name) | Peer::EveryBackend(name) => format!("service/{name}"),
        Peer::World => "world".to_owned(),
    }
}

/// `SOURCE -> DESTINATION`, a probe's name in the reports.
fn probe_name(probe: &Probe) -> String {
    format!("{} -> {}", probe.from, destination_name(probe.to))
}

/// Resolves a probe against the deployed workload.
fn plan(probe: Probe, workload: &Workload) -> Result<Plan, ConnectivityError> {
    let source = workload
        .pods
        .get(probe.from)
        .ok_or_else(|| LabError::UnknownPod {
            name: probe.from.to_owned(),
        })?;
    let pod = |name: &str| {
        workload
            .pods
            .get(name)
            .ok_or_else(|| ConnectivityError::NoAddress {
                pod: name.to_owned(),
            })
    };
    let is_client = |name: &str| name.starts_with("client");
    let destination = destination_name(probe.to);
    let (kind, address, path, answerers) = match probe.to {
        Peer::Pod(name) => {
            let target = pod(name)?;
            let kind = if is_client(probe.from) && is_client(name) {
                "client-to-client"
            } else {
                "pod-to-pod"
            };
            (
                kind,
                SocketAddrV4::new(target.ip, ECHO_PORT),
                source.path_to(target),
                BTreeSet::from([name]),
            )
        }
        Peer::Service(name) | Peer::EveryBackend(name) => {
            let service = workload
                .services
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| ConnectivityError::NoAddress {
                    pod: format!("service/{name}"),
                })?;
            let mut path = PathKind::SameNode;
            for backend in service.backends {
                let p = source.path_to(pod(backend)?);
                if (p == PathKind::CrossCluster)
                    || (p == PathKind::CrossNode && path == PathKind::SameNode)
                {
                    path = p;
                }
            }
            (
                "pod-to-service",
                service.frontend,
                path,
                service.backends.iter().copied().collect(),
            )
        }
        Peer::World => (
            "pod-to-world",
            EXTERNAL_ECHO,
            PathKind::World,
            BTreeSet::new(),
        ),
    };
    Ok(Plan {
        probe,
        kind,
        netns: source.netns.clone(),
        destination,
        address,
        path,
        answerers,
    })
}

/// Runs every probe at once (a denied probe costs its whole timeout) and checks each verdict
/// and who answered.
fn run_probes(
    probes: &[Probe],
    workload: &Workload,
) -> Result<Vec<ProbeReport>, ConnectivityError> {
    let plans = probes
        .iter()
        .map(|p| plan(*p, workload))
        .collect::<Result<Vec<_>, _>>()?;
    thread::scope(|scope| {
        let handles: Vec<_> = plans
            .into_iter()
            .map(|plan| scope.spawn(move || attempt(plan)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(LabError::NetnsTask {
                        netns: "a test pod".to_owned(),
                    }
                    .into())
                })
            })
            .collect()
    })
}

/// One connection from `netns` to `address`: the round trip and who answered, or why not.
fn exchange(
    netns: &str,
    to: Peer,
    address: SocketAddrV4,
) -> Result<Result<(Duration, String), String>, ConnectivityError> {
    let address = SocketAddr::V4(address);
    let world = to == Peer::World;
    Ok(sys::in_netns(netns, move || {
        Ok(if world {
            echo::probe(address, PROBE_TIMEOUT)
                .map(|took| (took, "world".to_owned()))
                .map_err(|e| e.to_string())
        } else {
            whoami::probe(address, PROBE_TIMEOUT).map_err(|e| e.to_string())
        })
    })?)
}

/// One probe: one that should get through is retried for a while (the client's identity may
/// still be travelling to the other node), one that should not gets a single try; a spread
/// probe goes on until every backend has answered.
fn attempt(plan: Plan) -> Result<ProbeReport, ConnectivityError> {
    let expect = plan.probe.expect;
    let (actual, answered, detail) = if let Peer::EveryBackend(_) = plan.probe.to {
        let (seen, problem) = spread(&plan.netns, plan.address, &plan.answerers, ALLOW_WINDOW)?;
        let actual = if seen.is_empty() {
            Verdict::Denied
        } else {
            Verdict::Allowed
        };
        (actual, seen, problem)
    } else {
        let deadline = Instant::now() + ALLOW_WINDOW;
        loop {
            match exchange(&plan.netns, plan.probe.to, plan.address)? {
                Ok((took, name)) => {
                    break (
                        Verdict::Allowed,
                        BTreeSet::from([name]),
                        format!("answer in {took:.1?}"),
                    );
                }
                Err(e) if expect == Verdict::Denied || Instant::now() >= deadline => {
                    break (Verdict::Denied, BTreeSet::new(), e);
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    };
    let (passed, detail) = judge(&plan, actual, &answered, detail);
    Ok(ProbeReport {
        name: probe_name(&plan.probe),
        kind: plan.kind,
        source: plan.probe.from.to_owned(),
        destination: plan.destination,
        address: plan.address,
        path: plan.path,
        expected: expect,
        actual,
        answered_by: answered.into_iter().collect(),
        detail,
        passed,
        flows: Vec::new(),
    })
}

/// Whether the probe passed, and its detail: the verdict must be the expected one, an answer
/// must come from a pod the destination stands for, and a spread probe must have heard from
/// every backend.
fn judge(
    plan: &Plan,
    actual: Verdict,
    answered: &BTreeSet<String>,
    detail: String,
) -> (bool, String) {
    if actual != plan.probe.expect {
        return (false, detail);
    }
    if actual == Verdict::Denied || plan.answerers.is_empty() {
        return (true, detail);
    }
    let strangers: Vec<&str> = answered
        .iter()
        .map(String::as_str)
        .filter(|a| !plan.answerers.contains(a))
        .collect();
    if !strangers.is_empty() {
        return (
            false,
            format!(
                "answered by {} instead of {}",
                strangers.join(", "),
                plan.answerers
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        );
    }
    if let Peer::EveryBackend(_) = plan.probe.to {
        let missing: Vec<&str> = plan
            .answerers
            .iter()
            .copied()
            .filter(|a| !answered.contains(*a))
            .collect();
        if !missing.is_empty() {
            return (
                false,
                format!(
                    "no answer from backend(s) {} within {ALLOW_WINDOW:?} ({detail})",
                    missing.join(", ")
                ),
            );
        }
        return (
            true,
            format!(
                "answered by every backend: {}",
                answered.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    (true, detail)
}

/// How many flows a failed probe shows.
const EXPLAIN_FLOWS: &str = "10";

/// The relay's latest flows from a test pod's address `source` to `address`, in Hubble's
/// compact form; a single line saying why when the relay cannot tell. Addresses, not pod
/// names: `--from-pod` matches name prefixes, and `client` would also show `client2`'s flows.
fn explain(lab: &Lab, source: Ipv4Addr, address: SocketAddrV4) -> Vec<String> {
    let Some(relay) = &lab.state.relay else {
        return vec!["no flows: the lab runs no hubble-relay".to_owned()];
    };
    let hubble = lab.state.bin_dir.join("hubble");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.state.underlay])
        .arg(&hubble)
        .args(["observe", "--server", relay, "--last", EXPLAIN_FLOWS])
        .args(["--from-ip", &source.to_string()])
        .args(["--to-ip", &address.ip().to_string(), "-o", "compact"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let flows: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if flows.is_empty() {
                vec!["no flows seen by hubble-relay".to_owned()]
            } else {
                flows
            }
        }
        Ok(out) => vec![format!(
            "no flows: hubble observe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )],
        Err(e) => vec![format!("no flows: cannot run {}: {e}", hubble.display())],
    }
}

/// Each agent's policy revision now (`None` if it does not answer).
fn revisions(lab: &Lab, cluster: &LabCluster) -> Vec<Option<u64>> {
    cluster
        .record
        .nodes
        .iter()
        .map(|node| {
            agent_status(&lab.state.bin_dir, &node.socket)
                .ok()
                .map(|s| s.policy.revision)
        })
        .collect()
}

/// Waits until every agent of the cluster has moved past its revision in `before` and
/// realized it.
fn wait_realized(
    lab: &Lab,
    cluster: &LabCluster,
    before: &[Option<u64>],
) -> Result<(), ConnectivityError> {
    let deadline = Instant::now() + READY;
    for (i, node) in cluster.record.nodes.iter().enumerate() {
        let old = before.get(i).copied().flatten();
        loop {
            let problem = match agent_status(&lab.state.bin_dir, &node.socket) {
                Ok(status)
                    if old.is_none_or(|old| status.policy.revision > old)
                        && status.policy.realized_revision >= status.policy.revision =>
                {
                    break;
                }
                Ok(status) => format!(
                    "revision {} (was {}), realized {}",
                    status.policy.revision,
                    old.map_or("-".to_owned(), |r| r.to_string()),
                    status.policy.realized_revision
                ),
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                return Err(ConnectivityError::PolicyNotRealized {
                    node: node.name.clone(),
                    problem,
                    log: lab
                        .state
                        .dir
                        .join("logs")
                        .join(format!("agent-{}.log", node.name)),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Writes the scenario's policy file and applies it to the cluster.
fn apply_policy(
    lab: &Lab,
    cluster: &LabCluster,
    scenario: &str,
    yaml: &str,
) -> Result<(), ConnectivityError> {
    let file = lab
        .work_dir
        .join(format!("{scenario}-{}.yaml", cluster.record.name));
    std::fs::write(&file, yaml).map_err(|e| LabError::io("write", file.clone(), e))?;
    store::apply_policy(lab, cluster, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_is_supported_and_names_its_documents() {
        for scenario in SCENARIOS {
            let Some(yaml) = scenario.policy else {
                continue;
            };
            let names = policy_names(yaml).unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
            assert!(!names.is_empty(), "{}", scenario.name);
        }
    }

    /// Whether the probe needs a pod of the second cluster (as destination or backend).
    fn needs_second_cluster(probe: &Probe) -> bool {
        let remote = |name: &str| PODS.iter().any(|pod| pod.name == name && pod.cluster > 0);
        match probe.to {
            Peer::Pod(to) => remote(to),
            Peer::Service(to) | Peer::EveryBackend(to) => SERVICES
                .iter()
                .filter(|s| s.name == to)
                .any(|s| s.backends.iter().any(|b| remote(b))),
            Peer::World => false,
        }
    }

    #[test]
    fn probes_name_known_pods_and_services_and_scenarios_are_unique() {
        let pods: Vec<&str> = PODS.iter().map(|p| p.name).collect();
        let services: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        for service in &SERVICES {
            for backend in service.backends {
                assert!(pods.contains(backend), "{}: {backend}", service.name);
            }
        }
        for scenario in SCENARIOS {
            assert!(scenario.probes().next().is_some(), "{}", scenario.name);
            if let PolicyClusters::One(index) = scenario.policy_clusters {
                assert!(index < scenario.clusters, "{}", scenario.name);
            }
            for p in scenario.probes().chain(scenario.cross_cluster_probes()) {
                assert!(pods.contains(&p.from), "{}: {}", scenario.name, p.from);
                match p.to {
                    Peer::Pod(to) => {
                        assert!(pods.contains(&to), "{}: {to}", scenario.name);
                        assert_ne!(p.from, to, "{}: a pod probes itself", scenario.name);
                    }
                    Peer::Service(to) | Peer::EveryBackend(to) => {
                        assert!(services.contains(&to), "{}: {to}", scenario.name);
                    }
                    Peer::World => {}
                }
            }
            // A one-cluster scenario's own probes must not need the second cluster's pod;
            // its cross-cluster ones must, or a one-cluster lab would skip them for nothing.
            if scenario.clusters == 1 {
                for p in scenario.probes() {
                    assert!(!needs_second_cluster(p), "{}: {:?}", scenario.name, p.to);
                }
            }
            for p in scenario.cross_cluster_probes() {
                assert_eq!(scenario.clusters, 1, "{}", scenario.name);
                assert!(needs_second_cluster(p), "{}: {:?}", scenario.name, p.to);
            }
        }
        let mut names = scenario_names();
        assert_eq!(names.last(), Some(&NO_UNEXPECTED_PACKET_DROPS));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len() + 1);
        for name in ["no-policies", "no-policies-cross-cluster"] {
            assert!(names.contains(&name), "{name}");
        }
        assert_eq!(
            multi_cluster_scenario_names(),
            [
                "no-policies-cross-cluster",
                "clustermesh-policy-cnp-ingress",
                "clustermesh-policy-cnp-egress",
                "cluster-entity-multi-cluster"
            ]
        );
    }

    fn scenario(name: &str) -> &'static Scenario {
        SCENARIOS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no scenario {name}"))
    }

    #[test]
    fn deny_scenarios_also_probe_the_other_cluster_with_their_policy_in_both() {
        for (name, client, client2) in [
            ("all-ingress-deny", Verdict::Denied, Verdict::Denied),
            ("all-egress-deny", Verdict::Denied, Verdict::Denied),
            ("all-entities-deny", Verdict::Denied, Verdict::Denied),
            (
                "echo-ingress-from-other-client-deny",
                Verdict::Allowed,
                Verdict::Denied,
            ),
        ] {
            let scenario = scenario(name);
            assert_eq!(scenario.policy_clusters, PolicyClusters::Every, "{name}");
            for (from, expect) in [("client", client), ("client2", client2)] {
                assert!(
                    scenario.cross_cluster_probes().any(|p| p.from == from
                        && p.to == Peer::Pod("echo-other-cluster")
                        && p.expect == expect),
                    "{name}: no {from} -> echo-other-cluster {expect}"
                );
            }
        }
    }

    #[test]
    fn the_clustermesh_policies_select_peers_of_every_cluster() {
        use model::labels::{Label, Labels, keys};
        let pod = |key: &str, value: &str, cluster: &str| -> Labels {
            [
                Label::k8s(key, value),
                Label::k8s(keys::POLICY_CLUSTER, cluster),
            ]
            .into_iter()
            .collect()
        };
        // Upstream runs them with the single-cluster scenarios' policies, in every cluster;
        // each policy has one peer selector (ingress for one, egress for the other).
        for (name, same_as, wanted, unwanted) in [
            (
                "clustermesh-policy-cnp-ingress",
                "echo-ingress",
                ("other", "client"),
                ("kind", "client"),
            ),
            (
                "clustermesh-policy-cnp-egress",
                "client-egress",
                ("kind", "echo"),
                ("kind", "client"),
            ),
        ] {
            let scenario = scenario(name);
            assert_eq!(scenario.clusters, 2, "{name}");
            assert_eq!(scenario.policy_clusters, PolicyClusters::Every, "{name}");
            assert_eq!(scenario.policy, self::scenario(same_as).policy, "{name}");
            let yaml = scenario.policy.unwrap_or_default();
            let docs = crate::cluster_cli::policy::parse_policies(yaml).expect("policy");
            let peers: Vec<_> = docs
                .iter()
                .flat_map(|d| d.rules())
                .flat_map(|r| {
                    let from = r.ingress.into_iter().flat_map(|i| i.from_endpoints);
                    let to = r.egress.into_iter().flat_map(|e| e.to_endpoints);
                    from.chain(to).collect::<Vec<_>>()
                })
                .collect();
            let [peer] = peers.as_slice() else {
                panic!("{name}: one peer expected: {peers:?}");
            };
            // Naming the cluster key keeps the engine from narrowing it to the local cluster.
            assert!(peer.has_cluster_key(), "{name}");
            let (key, value) = wanted;
            assert!(peer.matches(&pod(key, value, "c1")), "{name}");
            assert!(peer.matches(&pod(key, value, "c2")), "{name}");
            let (key, value) = unwanted;
            assert!(!peer.matches(&pod(key, value, "c2")), "{name}");
        }
    }

    fn probe_report(passed: bool, path: PathKind) -> ProbeReport {
        ProbeReport {
            name: "client -> echo-same-node".to_owned(),
            kind: "pod-to-pod",
            source: "client".to_owned(),
            destination: "echo-same-node".to_owned(),
            address: SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 2), ECHO_PORT),
            path,
            expected: Verdict::Denied,
            actual: if passed {
                Verdict::Denied
            } else {
                Verdict::Allowed
            },
            answered_by: vec![],
            detail: "answer in 1ms".to_owned(),
            passed,
            flows: vec!["flow A".to_owned()],
        }
    }

    #[test]
    fn scenario_lines_name_failed_probes_skips_and_paths() {
        let report = ScenarioReport {
            probes: vec![probe_report(false, PathKind::SameNode)],
            ..ScenarioReport::new("echo-ingress")
        };
        assert_eq!(
            report.line(),
            "[FAIL] echo-ingress: probe client -> echo-same-node expected denied got allowed \
             (answer in 1ms)\n    client -> echo-same-node: flow A"
        );
        let passed = ScenarioReport {
            passed: true,
            probes: vec![
                probe_report(true, PathKind::SameNode),
                probe_report(true, PathKind::CrossNode),
                probe_report(true, PathKind::CrossNode),
            ],
            ..report
        };
        assert_eq!(
            passed.line(),
            "[PASS] echo-ingress (3 probes: 2 cross-node, 1 same-node)"
        );
        let one_cluster = ScenarioReport {
            skipped_probes: vec!["client -> echo-other-cluster".to_owned(); 2],
            ..passed.clone()
        };
        assert_eq!(
            one_cluster.line(),
            "[PASS] echo-ingress (3 probes: 2 cross-node, 1 same-node; 2 cross-cluster probes \
             skipped: the lab has one cluster)"
        );
        let skipped = ScenarioReport::skipped("no-policies-cross-cluster", "why".to_owned());
        assert_eq!(skipped.line(), "[SKIP] no-policies-cross-cluster: why");
        let json = serde_json::to_value(&skipped).expect("json");
        assert_eq!(json["skipped"], "why");
        assert_eq!(json["passed"], false);
    }

    #[test]
    fn a_drop_failure_names_the_agent_and_reason() {
        let report = check_drops_report(vec![DropCount {
            agent: "c1-n2".to_owned(),
            reason: 155,
            reason_name: "CT: Map insertion failed".to_owned(),
            packets: 3,
            expected: false,
        }]);
        assert!(!report.passed);
        assert_eq!(
            report.line(),
            "[FAIL] no-unexpected-packet-drops: c1-n2 dropped 3 packet(s): CT: Map insertion \
             failed (reason 155)"
        );
    }

    #[test]
    fn an_agent_without_a_snapshot_fails_the_drop_check() {
        let agents = [Agent {
            name: "c1-n1".to_owned(),
            socket: PathBuf::from("/nonexistent/cilium.sock"),
        }];
        let baseline = Snapshot::from([("c1-n1".to_owned(), Err("refused".to_owned()))]);
        let report = check_drops(
            Path::new("/nonexistent"),
            &agents,
            Some(&baseline),
            &ExpectedDropReasons::default(),
        );
        assert!(!report.passed);
        let error = report.error.unwrap_or_default();
        assert!(
            error.contains("no snapshot") && error.contains("refused"),
            "{error}"
        );
        let report = check_drops(
            Path::new("/nonexistent"),
            &agents,
            Some(&Snapshot::new()),
            &ExpectedDropReasons::default(),
        );
        assert!(!report.passed);
        // Without a baseline the counters themselves must be read; here they cannot be.
        let report = check_drops(
            Path::new("/nonexistent"),
            &agents,
            None,
            &ExpectedDropReasons::default(),
        );
        assert!(!report.passed);
        assert!(
            report
                .error
                .unwrap_or_default()
                .contains("cannot read the drop counters of c1-n1"),
        );
        assert_eq!(report.drops.map(|d| d.since), Some("agent start"));
    }

    fn check_drops_report(drops: Vec<DropCount>) -> ScenarioReport {
        let check = DropCheck {
            agents: vec!["c1-n2".to_owned()],
            since: "test run",
            expected_reasons: ExpectedDropReasons::default().names(),
            drops,
        };
        let passed = check.unexpected().next().is_none();
        ScenarioReport {
            passed,
            drops: Some(check),
            ..ScenarioReport::new(NO_UNEXPECTED_PACKET_DROPS)
        }
    }

    #[test]
    fn judging_checks_verdict_answerer_and_spread() {
        let plan = |to: Peer, expect: Verdict, answerers: &[&'static str]| Plan {
            probe: Probe {
                from: "client",
                to,
                expect,
            },
            kind: "pod-to-service",
            netns: String::new(),
            destination: String::new(),
            address: SocketAddrV4::new(Ipv4Addr::LOCALHOST, ECHO_PORT),
            path: PathKind::SameNode,
            answerers: answerers.iter().copied().collect(),
        };
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let pod = plan(
            Peer::Pod("echo-same-node"),
            Verdict::Allowed,
            &["echo-same-node"],
        );
        assert!(
            judge(
                &pod,
                Verdict::Allowed,
                &names(&["echo-same-node"]),
                String::new()
            )
            .0
        );
        let (ok, detail) = judge(&pod, Verdict::Allowed, &names(&["client2"]), String::new());
        assert!(!ok);
        assert!(detail.contains("answered by client2"), "{detail}");
        assert!(!judge(&pod, Verdict::Denied, &names(&[]), String::new()).0);
        let global = plan(
            Peer::EveryBackend("echo-global"),
            Verdict::Allowed,
            &["echo-same-node", "echo-other-cluster"],
        );
        let (ok, detail) = judge(
            &global,
            Verdict::Allowed,
            &names(&["echo-same-node"]),
            "x".to_owned(),
        );
        assert!(!ok);
        assert!(detail.contains("echo-other-cluster"), "{detail}");
        assert!(
            judge(
                &global,
                Verdict::Allowed,
                &names(&["echo-same-node", "echo-other-cluster"]),
                String::new()
            )
            .0
        );
        let denied = plan(Peer::World, Verdict::Denied, &[]);
        assert!(judge(&denied, Verdict::Denied, &names(&[]), String::new()).0);
    }

    #[test]
    fn a_filter_that_selects_nothing_is_an_error_listing_the_scenarios() {
        let dir = tempfile::tempdir().expect("temp dir");
        let filter = Regex::new("^no-such-scenario$").expect("regex");
        let err = run(
            &Target::Lab(dir.path().to_owned()),
            Some(&filter),
            &ExpectedDropReasons::default(),
            &mut |_| {},
            &mut |_| {},
        )
        .expect_err("nothing selected");
        assert!(err.to_string().contains("no-policies"), "{err}");
        assert!(
            err.to_string().contains(NO_UNEXPECTED_PACKET_DROPS),
            "{err}"
        );
    }

    #[test]
    fn agents_that_do_not_answer_are_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("cilium.sock");
        let err = run(
            &Target::Agents {
                sockets: vec![socket.clone()],
                bin_dir: dir.path().to_owned(),
            },
            None,
            &ExpectedDropReasons::default(),
            &mut |_| {},
            &mut |_| {},
        )
        .expect_err("no agent");
        assert!(matches!(err, ConnectivityError::AgentDown { .. }), "{err}");
        assert!(
            err.to_string().contains(&socket.display().to_string()),
            "{err}"
        );
        let err = run(
            &Target::Agents {
                sockets: vec![],
                bin_dir: dir.path().to_owned(),
            },
            None,
            &ExpectedDropReasons::default(),
            &mut |_| {},
            &mut |_| {},
        )
        .expect_err("no socket");
        assert!(matches!(err, ConnectivityError::NoAgents), "{err}");
    }
}
