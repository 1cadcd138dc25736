//! `cilium connectivity test` on a lab: upstream cilium-cli's connectivity check, scenario by
//! scenario, against cluster 1 of a running lab.
//!
//! Like upstream it deploys its own workload in namespace `cilium-test`: `client` and
//! `client2` (which also carries `other=client`) on the first node, `echo-same-node` next to
//! them and `echo-other-node` on the second node (the first again on a one-node lab). Every pod
//! serves TCP echo on port 8080, so upstream's ICMP client-to-client probes become TCP probes
//! here; the lab's external echo server plays upstream's "world" (`1.1.1.1`).
//!
//! Each scenario keeps upstream's name, policy and expectations: it applies its policies
//! through the kvstore (`cilium policy apply` in the underlay, as a user would), waits until
//! every agent has realized the new policy revision, runs its probes at once (each expected to
//! be allowed or denied), deletes its policies and waits again, so the next scenario starts
//! from a clean slate. The workload and every policy are removed at the end, also on failure.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Serialize;

use super::pod::{PodSpec, create_pod, delete_pod, list_pods};
use super::state::{ClusterRecord, LabLock, LabState};
use super::status::agent_status;
use super::sys::{self, Spawn};
use super::{EXTERNAL_ECHO, LabError, echo};

/// The namespace of the test workload and of every test policy, as upstream's.
pub const NAMESPACE: &str = "cilium-test";
/// The port every test pod serves echo on (upstream's echo pods listen on 8080).
pub const ECHO_PORT: u16 = 8080;

/// How long the workload's identities and a policy revision may take to reach every agent.
const READY: Duration = Duration::from_secs(30);
/// How long a test pod's server may take to listen.
const LISTEN: Duration = Duration::from_secs(5);
/// One probe's connect and echo timeout: an allowed probe answers in milliseconds, so a probe
/// that gets nothing in this time was dropped.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a probe expected to pass is retried: a new pod's identity may still be on its way
/// to the other node's ipcache.
const ALLOW_WINDOW: Duration = Duration::from_secs(10);

/// One pod of the test workload; `node` indexes cluster 1's nodes (wrapping on fewer).
struct TestPod {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
    node: usize,
}

/// Upstream's workload: its names and labels.
const PODS: [TestPod; 4] = [
    TestPod {
        name: "client",
        labels: &[("name", "client"), ("kind", "client")],
        node: 0,
    },
    TestPod {
        name: "client2",
        labels: &[("name", "client2"), ("kind", "client"), ("other", "client")],
        node: 0,
    },
    TestPod {
        name: "echo-same-node",
        labels: &[("name", "echo-same-node"), ("kind", "echo")],
        node: 0,
    },
    TestPod {
        name: "echo-other-node",
        labels: &[("name", "echo-other-node"), ("kind", "echo")],
        node: 1,
    },
];

/// Whether a probe gets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
        })
    }
}

/// Where a probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// A test pod, by name, on [`ECHO_PORT`].
    Pod(&'static str),
    /// The lab's external echo server ([`EXTERNAL_ECHO`]).
    World,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    from: &'static str,
    to: Peer,
    expect: Verdict,
}

const fn probe(from: &'static str, to: Peer, expect: Verdict) -> Probe {
    Probe { from, to, expect }
}

use Peer::{Pod, World};
use Verdict::{Allowed, Denied};

/// One scenario: upstream's test name, its policies (YAML documents; the names are what
/// `policy delete` removes) and its probes with their expected verdicts.
struct Scenario {
    name: &'static str,
    policy: Option<&'static str>,
    policy_names: &'static [&'static str],
    probes: &'static [Probe],
}

/// Upstream `client-egress-to-echo.yaml`: clients may talk to echo pods on 8080 only.
const CLIENT_EGRESS_TO_ECHO: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toEndpoints:
    - matchLabels:
        kind: echo
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

/// Upstream `client-egress-to-echo-expression.yaml`: `client-egress` with set-based selectors.
const CLIENT_EGRESS_TO_ECHO_EXPRESSION: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo-expression
  namespace: cilium-test
spec:
  endpointSelector:
    matchExpressions:
    - { key: kind, operator: In, values: [ "client" ] }
  egress:
  - toEndpoints:
    - matchExpressions:
      - { key: kind, operator: In, values: [ "echo" ] }
      - { key: other, operator: DoesNotExist }
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

/// Upstream `client-egress-to-echo-port-range.yaml`: as above, through the range 4096-8191.
const CLIENT_EGRESS_TO_ECHO_PORT_RANGE: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo-port-range
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toEndpoints:
    - matchLabels:
        kind: echo
    toPorts:
    - ports:
      - port: "4096"
        endPort: 8191
        protocol: TCP
"#;

/// Upstream `client-ingress-from-client2.yaml`: clients accept only `other=client`.
const CLIENT_INGRESS_FROM_CLIENT2: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-ingress-from-client2
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  ingress:
  - fromEndpoints:
    - matchLabels:
        other: client
"#;

/// Upstream `echo-ingress-from-other-client.yaml`: echo pods accept only `other=client` on 8080.
const ECHO_INGRESS_FROM_OTHER_CLIENT: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: echo-ingress-from-other-client
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: echo
  ingress:
  - fromEndpoints:
    - matchLabels:
        other: client
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

/// Upstream `echo-ingress-from-other-client-deny.yaml` with the allow-all ingress it is tested
/// against: everything may reach the echo pods except `other=client`.
const ECHO_INGRESS_FROM_OTHER_CLIENT_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-all-ingress
  namespace: cilium-test
spec:
  endpointSelector: {}
  ingress:
  - fromEntities:
    - all
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: echo-ingress-from-other-client-deny
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: echo
  ingressDeny:
  - fromEndpoints:
    - matchLabels:
        other: client
"#;

/// Upstream `deny-all-ingress.yaml`: an empty ingress rule selects default deny, allows nothing.
const ALL_INGRESS_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-ingress-deny
  namespace: cilium-test
spec:
  endpointSelector: {}
  ingress:
  - {}
"#;

/// Upstream `deny-all-egress.yaml`.
const ALL_EGRESS_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-egress-deny
  namespace: cilium-test
spec:
  endpointSelector: {}
  egress:
  - {}
"#;

/// Upstream `deny-all-entities.yaml`: deny rules for every entity both ways.
const ALL_ENTITIES_DENY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-entities-deny
  namespace: cilium-test
spec:
  endpointSelector: {}
  egressDeny:
  - toEntities:
    - all
  ingressDeny:
  - fromEntities:
    - all
"#;

/// Upstream `client-egress-to-entities-world.yaml`: clients may reach the world on port 80.
const CLIENT_EGRESS_TO_ENTITIES_WORLD: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-entities-world
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toEntities:
    - world
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"#;

/// Upstream `client-egress-to-cidr-external.yaml`, aimed at the lab's external echo server
/// instead of `1.1.1.1`.
const CLIENT_EGRESS_TO_CIDR_EXTERNAL: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-cidr
  namespace: cilium-test
spec:
  endpointSelector:
    matchLabels:
      kind: client
  egress:
  - toCIDRSet:
    - cidr: 192.168.100.200/32
"#;

/// Upstream `PodToPod`: every client to every echo pod.
macro_rules! pod_to_pod {
    ($client:expr, $client2:expr) => {
        [
            probe("client", Pod("echo-same-node"), $client),
            probe("client", Pod("echo-other-node"), $client),
            probe("client2", Pod("echo-same-node"), $client2),
            probe("client2", Pod("echo-other-node"), $client2),
        ]
    };
}

/// The scenarios, in upstream's order.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no-policies",
        policy: None,
        policy_names: &[],
        probes: &{
            let [a, b, c, d] = pod_to_pod!(Allowed, Allowed);
            [
                a,
                b,
                c,
                d,
                probe("client", Pod("client2"), Allowed),
                probe("client2", Pod("client"), Allowed),
                probe("client", World, Allowed),
                probe("client2", World, Allowed),
            ]
        },
    },
    Scenario {
        name: "all-ingress-deny",
        policy: Some(ALL_INGRESS_DENY),
        policy_names: &["all-ingress-deny"],
        probes: &{
            let [a, b, c, d] = pod_to_pod!(Denied, Denied);
            [
                a,
                b,
                c,
                d,
                probe("client", Pod("client2"), Denied),
                probe("client2", Pod("client"), Denied),
                // Replies from the world are not ingress connections.
                probe("client", World, Allowed),
            ]
        },
    },
    Scenario {
        name: "all-egress-deny",
        policy: Some(ALL_EGRESS_DENY),
        policy_names: &["all-egress-deny"],
        probes: &{
            let [a, b, c, d] = pod_to_pod!(Denied, Denied);
            [
                a,
                b,
                c,
                d,
                probe("client", Pod("client2"), Denied),
                probe("client", World, Denied),
            ]
        },
    },
    Scenario {
        name: "all-entities-deny",
        policy: Some(ALL_ENTITIES_DENY),
        policy_names: &["all-entities-deny"],
        probes: &{
            let [a, b, c, d] = pod_to_pod!(Denied, Denied);
            [a, b, c, d, probe("client", World, Denied)]
        },
    },
    Scenario {
        name: "client-ingress",
        policy: Some(CLIENT_INGRESS_FROM_CLIENT2),
        policy_names: &["client-ingress-from-client2"],
        probes: &[
            probe("client2", Pod("client"), Allowed),
            probe("client", Pod("client2"), Denied),
        ],
    },
    Scenario {
        name: "echo-ingress",
        policy: Some(ECHO_INGRESS_FROM_OTHER_CLIENT),
        policy_names: &["echo-ingress-from-other-client"],
        probes: &pod_to_pod!(Denied, Allowed),
    },
    Scenario {
        name: "echo-ingress-from-other-client-deny",
        policy: Some(ECHO_INGRESS_FROM_OTHER_CLIENT_DENY),
        policy_names: &["allow-all-ingress", "echo-ingress-from-other-client-deny"],
        probes: &pod_to_pod!(Allowed, Denied),
    },
    Scenario {
        name: "client-egress",
        policy: Some(CLIENT_EGRESS_TO_ECHO),
        policy_names: &["client-egress-to-echo"],
        probes: &{
            let [a, b, c, d] = pod_to_pod!(Allowed, Allowed);
            [a, b, c, d, probe("client", World, Denied)]
        },
    },
    Scenario {
        name: "client-egress-expression",
        policy: Some(CLIENT_EGRESS_TO_ECHO_EXPRESSION),
        policy_names: &["client-egress-to-echo-expression"],
        probes: &{
            let [a, b, c, d] = pod_to_pod!(Allowed, Allowed);
            [a, b, c, d, probe("client2", World, Denied)]
        },
    },
    Scenario {
        name: "client-egress-to-echo-port-range",
        policy: Some(CLIENT_EGRESS_TO_ECHO_PORT_RANGE),
        policy_names: &["client-egress-to-echo-port-range"],
        probes: &{
            let [a, b, c, d] = pod_to_pod!(Allowed, Allowed);
            [a, b, c, d, probe("client", World, Denied)]
        },
    },
    Scenario {
        name: "to-entities-world",
        policy: Some(CLIENT_EGRESS_TO_ENTITIES_WORLD),
        policy_names: &["client-egress-to-entities-world"],
        probes: &[
            probe("client", World, Allowed),
            probe("client2", World, Allowed),
            probe("client", Pod("echo-same-node"), Denied),
            probe("client", Pod("echo-other-node"), Denied),
        ],
    },
    Scenario {
        name: "to-cidr-external",
        policy: Some(CLIENT_EGRESS_TO_CIDR_EXTERNAL),
        policy_names: &["client-egress-to-cidr"],
        probes: &[
            probe("client", World, Allowed),
            probe("client2", World, Allowed),
            probe("client", Pod("echo-same-node"), Denied),
            probe("client2", Pod("echo-other-node"), Denied),
        ],
    },
];

/// The names of every scenario, in the order they run.
pub fn scenario_names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|s| s.name).collect()
}

/// What can stop the connectivity test itself (failed probes are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ConnectivityError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(
        "the connectivity test applies policies through etcd, and cluster {cluster} has none: \
         bring the lab up with `--kvstore etcd`"
    )]
    NoKvstore { cluster: String },
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
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeReport {
    /// `SOURCE -> DESTINATION`, as the text output names it.
    pub name: String,
    pub source: String,
    pub destination: String,
    pub address: SocketAddrV4,
    pub expected: Verdict,
    pub actual: Verdict,
    /// The echo's round trip, or why the probe got no echo.
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
    pub passed: bool,
    /// Why the scenario could not run its probes (policy not applied or not realized).
    pub error: Option<String>,
}

impl ScenarioReport {
    /// `[PASS] name (n probes)` or `[FAIL] name: ...` with every failed probe, then the flows
    /// of the failed probes, indented, one per line.
    pub fn line(&self) -> String {
        if self.passed {
            return format!("[PASS] {} ({} probes)", self.name, self.probes.len());
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
    pub cluster: String,
    /// Whether `echo-other-node` runs on another node than the clients.
    pub cross_node: bool,
    pub scenarios: Vec<ScenarioReport>,
    pub passed: usize,
    pub failed: usize,
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
            "{} scenarios ({probes} probes) in {:.1}s: {} passed, {} failed",
            self.scenarios.len(),
            Duration::from_millis(u64::try_from(self.duration_ms).unwrap_or(u64::MAX))
                .as_secs_f64(),
            self.passed,
            self.failed
        )
    }
}

/// The lab as the test needs it: where the CLI runs, the cluster, its kvstore.
struct Target {
    state: LabState,
    cluster: ClusterRecord,
    kvstore_opt: String,
    policy_dir: PathBuf,
}

/// Runs the scenarios whose names match `filter` (all without one) on cluster 1 of the lab in
/// `dir`; `progress` hears each step, `finished` each scenario's result as soon as it is known.
/// The workload and the policies are removed afterwards, whatever happened.
pub fn run(
    dir: &Path,
    filter: Option<&Regex>,
    progress: &mut dyn FnMut(&str),
    finished: &mut dyn FnMut(&ScenarioReport),
) -> Result<ConnectivityReport, ConnectivityError> {
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| filter.is_none_or(|f| f.is_match(s.name)))
        .collect();
    if selected.is_empty() {
        return Err(ConnectivityError::NoScenario {
            pattern: filter.map(|f| f.as_str().to_owned()).unwrap_or_default(),
            known: scenario_names().join(", "),
        });
    }
    let state = LabState::require(dir)?;
    let cluster = state
        .clusters
        .first()
        .filter(|c| !c.nodes.is_empty())
        .ok_or(ConnectivityError::NoCluster)?
        .clone();
    let etcd_config = cluster
        .etcd_config
        .clone()
        .ok_or_else(|| ConnectivityError::NoKvstore {
            cluster: cluster.name.clone(),
        })?;
    let policy_dir = state.dir.join("connectivity");
    std::fs::create_dir_all(&policy_dir)
        .map_err(|e| LabError::io("create", policy_dir.clone(), e))?;
    let target = Target {
        kvstore_opt: format!("etcd.config={}", etcd_config.display()),
        state,
        cluster,
        policy_dir,
    };

    let started = Instant::now();
    // Leftovers of an interrupted run would make `apply` a no-op and the pods exist already.
    clean_up(dir, &target, progress)?;
    let result = deploy(dir, &target, progress).and_then(|deployed| {
        let mut reports = Vec::new();
        for scenario in selected {
            let report = run_scenario(&target, scenario, &deployed)?;
            finished(&report);
            reports.push(report);
        }
        Ok(reports)
    });
    let cleaned = clean_up(dir, &target, progress);
    let scenarios = result?;
    cleaned?;
    let passed = scenarios.iter().filter(|s| s.passed).count();
    Ok(ConnectivityReport {
        cluster: target.cluster.name.clone(),
        cross_node: target.cluster.nodes.len() > 1,
        failed: scenarios.len() - passed,
        passed,
        scenarios,
        duration_ms: started.elapsed().as_millis(),
    })
}

/// A test pod once created: where probes go to and come from.
struct Deployed {
    ip: Ipv4Addr,
    netns: String,
}

/// The server process of a test pod, as `lab status` and `lab down` see it.
fn server_component(pod: &str) -> String {
    format!("connectivity {pod}")
}

/// Creates the workload, starts its servers and waits for its identities; each pod's address.
fn deploy(
    dir: &Path,
    target: &Target,
    progress: &mut dyn FnMut(&str),
) -> Result<BTreeMap<&'static str, Deployed>, ConnectivityError> {
    let nodes = &target.cluster.nodes;
    progress(&format!(
        "deploying the test workload in namespace {NAMESPACE} on cluster {} ({} node(s))",
        target.cluster.name,
        nodes.len()
    ));
    let mut deployed = BTreeMap::new();
    for pod in &PODS {
        let node = nodes
            .get(pod.node % nodes.len())
            .ok_or(ConnectivityError::NoCluster)?;
        let info = create_pod(
            dir,
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
        deployed.insert(
            pod.name,
            Deployed {
                ip,
                netns: info.netns.clone(),
            },
        );
        start_server(dir, pod.name)?;
    }
    wait_identities(dir)?;
    Ok(deployed)
}

/// Starts the echo server of test pod `pod` as a recorded lab process and waits until it
/// listens.
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
                    "lab".into(),
                    "echo-server".into(),
                    "--listen".into(),
                    format!("0.0.0.0:{ECHO_PORT}"),
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

/// Waits until every test pod has its identity from its agent.
fn wait_identities(dir: &Path) -> Result<(), ConnectivityError> {
    let deadline = Instant::now() + READY;
    loop {
        let listed = list_pods(dir)?;
        let missing: Vec<&str> = PODS
            .iter()
            .filter(|pod| {
                !listed
                    .iter()
                    .any(|p| p.name == pod.name && p.namespace == NAMESPACE && p.identity.is_some())
            })
            .map(|pod| pod.name)
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

/// Removes every test policy, stops the servers and deletes the pods; each step runs even
/// when an earlier one failed, and the first failure is returned.
fn clean_up(
    dir: &Path,
    target: &Target,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ConnectivityError> {
    let mut first_error = None;
    let mut keep = |result: Result<(), ConnectivityError>| {
        if let Err(e) = result
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    };
    let leftovers = leftover_policies(target);
    keep(leftovers.and_then(|names| {
        if names.is_empty() {
            return Ok(());
        }
        let before = revisions(target);
        for name in &names {
            delete_policy(target, name)?;
        }
        wait_realized(target, &before)
    }));
    keep(stop_servers(dir));
    let state = LabState::require(dir);
    keep(state.map_err(Into::into).and_then(|state| {
        let mut deleted = 0;
        for pod in state.pods.iter().filter(|p| p.namespace == NAMESPACE) {
            delete_pod(dir, &pod.name, Some(NAMESPACE))?;
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

/// Applies the scenario's policies, waits until they are realized, probes, removes them.
fn run_scenario(
    target: &Target,
    scenario: &Scenario,
    deployed: &BTreeMap<&'static str, Deployed>,
) -> Result<ScenarioReport, ConnectivityError> {
    let mut report = ScenarioReport {
        name: scenario.name.to_owned(),
        policies: scenario
            .policy_names
            .iter()
            .map(|n| (*n).to_owned())
            .collect(),
        probes: Vec::new(),
        passed: false,
        error: None,
    };
    if let Some(policy) = scenario.policy {
        let before = revisions(target);
        let applied = apply_policy(target, scenario.name, policy)
            .and_then(|()| wait_realized(target, &before));
        if let Err(e) = applied {
            report.error = Some(format!("policy not in force: {e}"));
            // Whatever part of it landed must not leak into the next scenario.
            remove_policies(target, scenario)?;
            return Ok(report);
        }
    }
    report.probes = run_probes(scenario.probes, deployed)?;
    for failed in report.probes.iter_mut().filter(|p| !p.passed) {
        if let Some(source) = deployed.get(failed.source.as_str()) {
            failed.flows = explain(target, source.ip, failed.address);
        }
    }
    if scenario.policy.is_some() {
        remove_policies(target, scenario)?;
    }
    report.passed = report.probes.iter().all(|p| p.passed);
    Ok(report)
}

/// Deletes the scenario's policies (those that exist) and waits until the agents follow.
fn remove_policies(target: &Target, scenario: &Scenario) -> Result<(), ConnectivityError> {
    let present = leftover_policies(target)?;
    let before = revisions(target);
    let mut deleted = false;
    for name in scenario.policy_names {
        if present.iter().any(|p| p == name) {
            delete_policy(target, name)?;
            deleted = true;
        }
    }
    if deleted {
        wait_realized(target, &before)?;
    }
    Ok(())
}

/// Runs every probe at once (a denied probe costs its whole timeout) and checks each verdict.
fn run_probes(
    probes: &[Probe],
    deployed: &BTreeMap<&'static str, Deployed>,
) -> Result<Vec<ProbeReport>, ConnectivityError> {
    let mut plans = Vec::new();
    for p in probes {
        let netns = deployed
            .get(p.from)
            .ok_or_else(|| LabError::UnknownPod {
                name: p.from.to_owned(),
            })?
            .netns
            .clone();
        let (destination, address) = match p.to {
            Pod(name) => {
                let pod = deployed
                    .get(name)
                    .ok_or_else(|| ConnectivityError::NoAddress {
                        pod: name.to_owned(),
                    })?;
                (name.to_owned(), SocketAddrV4::new(pod.ip, ECHO_PORT))
            }
            World => ("world".to_owned(), EXTERNAL_ECHO),
        };
        plans.push((*p, netns, destination, address));
    }
    thread::scope(|scope| {
        let handles: Vec<_> = plans
            .into_iter()
            .map(|(p, netns, destination, address)| {
                scope.spawn(move || -> Result<ProbeReport, ConnectivityError> {
                    let (actual, detail) = attempt(&netns, address, p.expect)?;
                    Ok(ProbeReport {
                        name: format!("{} -> {destination}", p.from),
                        source: p.from.to_owned(),
                        destination,
                        address,
                        expected: p.expect,
                        actual,
                        detail,
                        passed: actual == p.expect,
                        flows: Vec::new(),
                    })
                })
            })
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

/// One probe from inside `netns`; one that should get through is retried for a while (the
/// client's identity may still be travelling to the other node), one that should not gets a
/// single try.
fn attempt(
    netns: &str,
    address: SocketAddrV4,
    expect: Verdict,
) -> Result<(Verdict, String), ConnectivityError> {
    let deadline = Instant::now() + ALLOW_WINDOW;
    loop {
        let outcome = sys::in_netns(netns, move || {
            Ok(echo::probe(SocketAddr::V4(address), PROBE_TIMEOUT))
        })?;
        match outcome {
            Ok(took) => return Ok((Verdict::Allowed, format!("echo in {took:.1?}"))),
            Err(e) if expect == Verdict::Denied || Instant::now() >= deadline => {
                return Ok((Verdict::Denied, e.to_string()));
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How many flows a failed probe shows.
const EXPLAIN_FLOWS: &str = "10";

/// The relay's latest flows from a test pod's address `source` to `address`, in Hubble's
/// compact form; a single line saying why when the relay cannot tell. Addresses, not pod
/// names: `--from-pod` matches name prefixes, and `client` would also show `client2`'s flows.
fn explain(target: &Target, source: Ipv4Addr, address: SocketAddrV4) -> Vec<String> {
    let Some(relay) = &target.state.relay else {
        return vec!["no flows: the lab runs no hubble-relay".to_owned()];
    };
    let hubble = target.state.bin_dir.join("hubble");
    let out = Command::new("ip")
        .args(["netns", "exec", &target.state.underlay])
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
fn revisions(target: &Target) -> Vec<Option<u64>> {
    target
        .cluster
        .nodes
        .iter()
        .map(|node| {
            agent_status(&target.state.bin_dir, &node.socket)
                .ok()
                .map(|s| s.policy.revision)
        })
        .collect()
}

/// Waits until every agent has moved past its revision in `before` and realized it.
fn wait_realized(target: &Target, before: &[Option<u64>]) -> Result<(), ConnectivityError> {
    let deadline = Instant::now() + READY;
    for (i, node) in target.cluster.nodes.iter().enumerate() {
        let old = before.get(i).copied().flatten();
        loop {
            let problem = match agent_status(&target.state.bin_dir, &node.socket) {
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
                    log: target
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

/// Writes the scenario's policy file and applies it.
fn apply_policy(target: &Target, scenario: &str, yaml: &str) -> Result<(), ConnectivityError> {
    let file = target.policy_dir.join(format!("{scenario}.yaml"));
    std::fs::write(&file, yaml).map_err(|e| LabError::io("write", file.clone(), e))?;
    let file = file.display().to_string();
    cilium(
        target,
        &[
            "policy",
            "apply",
            "--kvstore-opt",
            &target.kvstore_opt,
            "-f",
            &file,
        ],
    )
    .map(drop)
}

fn delete_policy(target: &Target, name: &str) -> Result<(), ConnectivityError> {
    cilium(
        target,
        &[
            "policy",
            "delete",
            "--kvstore-opt",
            &target.kvstore_opt,
            "-n",
            NAMESPACE,
            name,
        ],
    )
    .map(drop)
}

/// The names of the stored policies of [`NAMESPACE`].
fn leftover_policies(target: &Target) -> Result<Vec<String>, ConnectivityError> {
    let out = cilium(
        target,
        &[
            "policy",
            "list",
            "--kvstore-opt",
            &target.kvstore_opt,
            "-o",
            "json",
        ],
    )?;
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&out).map_err(|e| LabError::Decode {
            what: "`cilium policy list -o json`".to_owned(),
            reason: e.to_string(),
        })?;
    Ok(entries
        .iter()
        .filter(|e| e.get("namespace").and_then(|n| n.as_str()) == Some(NAMESPACE))
        .filter_map(|e| e.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect())
}

/// Runs the lab's `cilium` binary (the cluster CLI) in the underlay, where etcd listens; its
/// stdout.
fn cilium(target: &Target, args: &[&str]) -> Result<String, ConnectivityError> {
    let program = target.state.bin_dir.join("cilium");
    let out = Command::new("ip")
        .args(["netns", "exec", &target.state.underlay])
        .arg(&program)
        .args(args)
        .env_remove("CILIUM_KVSTORE_OPT")
        .env_remove("CILIUM_CLUSTER_NAME")
        .env_remove("CILIUM_CLUSTER_ID")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(ConnectivityError::Cli {
            command: format!("cilium {}", args.join(" ")),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_is_supported_and_names_what_the_scenario_deletes() {
        for scenario in SCENARIOS {
            let Some(yaml) = scenario.policy else {
                assert!(scenario.policy_names.is_empty(), "{}", scenario.name);
                continue;
            };
            let documents = crate::cluster_cli::policy::parse_policies(yaml)
                .unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
            let names: Vec<&str> = documents.iter().map(|d| d.name()).collect();
            assert_eq!(names, scenario.policy_names, "{}", scenario.name);
        }
    }

    #[test]
    fn probes_name_known_pods_and_scenarios_are_unique() {
        let pods: Vec<&str> = PODS.iter().map(|p| p.name).collect();
        for scenario in SCENARIOS {
            assert!(!scenario.probes.is_empty(), "{}", scenario.name);
            for p in scenario.probes {
                assert!(pods.contains(&p.from), "{}: {}", scenario.name, p.from);
                if let Pod(to) = p.to {
                    assert!(pods.contains(&to), "{}: {to}", scenario.name);
                    assert_ne!(p.from, to, "{}: a pod probes itself", scenario.name);
                }
            }
        }
        let mut names = scenario_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        assert!(names.contains(&"no-policies"));
    }

    #[test]
    fn a_failed_scenario_line_names_the_probe_and_both_verdicts() {
        let report = ScenarioReport {
            name: "echo-ingress".to_owned(),
            policies: vec![],
            probes: vec![ProbeReport {
                name: "client -> echo-same-node".to_owned(),
                source: "client".to_owned(),
                destination: "echo-same-node".to_owned(),
                address: SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 2), ECHO_PORT),
                expected: Verdict::Denied,
                actual: Verdict::Allowed,
                detail: "echo in 1ms".to_owned(),
                passed: false,
                flows: vec!["flow A".to_owned()],
            }],
            passed: false,
            error: None,
        };
        assert_eq!(
            report.line(),
            "[FAIL] echo-ingress: probe client -> echo-same-node expected denied got allowed \
             (echo in 1ms)\n    client -> echo-same-node: flow A"
        );
        let passed = ScenarioReport {
            passed: true,
            ..report
        };
        assert_eq!(passed.line(), "[PASS] echo-ingress (1 probes)");
    }

    #[test]
    fn a_filter_that_selects_nothing_is_an_error_listing_the_scenarios() {
        let dir = tempfile::tempdir().expect("temp dir");
        let filter = Regex::new("^no-such-scenario$").expect("regex");
        let err =
            run(dir.path(), Some(&filter), &mut |_| {}, &mut |_| {}).expect_err("nothing selected");
        assert!(err.to_string().contains("no-policies"), "{err}");
    }
}
