//! Hubble across a cluster, against the real binaries (root): two nodes whose agents run with
//! `--enable-hubble`, a `hubble-relay` in the underlay learning the nodes from node-1's Peer
//! service, and the `hubble` CLI asking the relay (see `common/cluster.rs` for the layout).
//!
//! One test, `privileged_hubble_relay`, walks through what a user sees:
//! - each agent's Hubble server answers on `<node ip>:4244` and on its unix socket;
//! - `hubble status` through the relay counts both nodes as connected, `hubble list nodes`
//!   names them;
//! - with an ingress policy on the echo pod (node-2) that admits only `app=client`, the
//!   intruder's connection shows up as DROPPED with `POLICY_DENIED`, the client's as FORWARDED,
//!   both with the namespaces and pod names of both ends, flows come from both nodes and in time
//!   order, in JSON and in the compact format;
//! - `--verdict`, `--not --verdict`, `--from-pod`, `--to-pod`, `--node-name` and a combination
//!   narrow the flows as they say;
//! - `--follow` streams a flow made after it started;
//! - node-2's agent stopped with SIGTERM: `hubble status` names it unavailable, and the relay
//!   keeps serving node-1's flows (`hubble observe` warns about the missing node).
//!
//! The CLI and the relay run in the underlay namespace; the cluster has its own namespaces,
//! so the test runs in parallel with the other privileged tests.

#[path = "common/node.rs"]
mod node;

#[path = "common/cluster.rs"]
mod cluster;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use cluster::{Cluster, ClusterNode, ClusterOptions, Routing, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node::{Agent, EchoServer, Netns, Pod, tcp_ok};
use serde_json::Value;

/// How long cluster state (ipcache, identities, policy, enrichment) may take to reach a node.
const PROPAGATION: Duration = Duration::from_secs(20);
/// A dropped SYN never connects; an allowed one across the bridge takes about a millisecond.
const DENIED_WAIT: Duration = Duration::from_millis(300);
/// The relay's Observer API inside the underlay.
const RELAY: &str = "127.0.0.1:4245";
/// Longest a single `hubble` call may take before the test calls it hung.
const CLI_DEADLINE: Duration = Duration::from_secs(20);
/// Enough to hold every flow this test makes.
const LAST: &str = "2000";

const ECHO_POLICY: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: echo-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: echo}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
";

/// A process the test started, SIGKILLed by PID on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// `ip netns exec UNDERLAY PROGRAM`.
fn in_underlay(cluster: &Cluster, program: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &cluster.underlay.name])
        .arg(program);
    command
}

/// `hubble-relay` in the underlay, asking node-1's Peer service for the nodes.
fn start_relay(cluster: &Cluster) -> Process {
    let log = cluster.dir.path().join("hubble-relay.log");
    let log_file = File::create(&log).expect("relay log");
    let peer = format!("{}:4244", cluster.node(0).ip);
    let child = in_underlay(cluster, env!("CARGO_BIN_EXE_hubble-relay"))
        .args(["--peer-service", &peer, "--listen-address", RELAY])
        .args(["--retry-timeout", "1s", "--dial-timeout", "2s"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log fd"))
        .stderr(log_file)
        .spawn()
        .expect("start hubble-relay");
    Process { child, log }
}

/// What one `hubble` call printed.
struct CliOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

/// `hubble ARGS` in the underlay; panics if it runs longer than [`CLI_DEADLINE`]. Output goes
/// to files so a large answer never blocks the process on a full pipe.
fn hubble(cluster: &Cluster, args: &[&str]) -> CliOutput {
    let dir = tempfile::tempdir().expect("hubble output dir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let child = in_underlay(cluster, env!("CARGO_BIN_EXE_hubble"))
        .args(args)
        .env_remove("HUBBLE_SERVER")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run hubble");
    let mut process = Process {
        child,
        log: err_path.clone(),
    };
    let deadline = Instant::now() + CLI_DEADLINE;
    let status = loop {
        if let Some(status) = process.child.try_wait().expect("wait hubble") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "hubble {args:?} still running after {CLI_DEADLINE:?}: {}",
            process.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        success: status.success(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// `hubble ARGS`, which must succeed; its stdout.
fn hubble_ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = hubble(cluster, args);
    assert!(
        out.success,
        "hubble {args:?} failed: {}{}",
        out.stderr, out.stdout
    );
    out.stdout
}

/// The flows of `hubble observe -o json` output, one JSON object per line; every line must
/// be JSON.
fn json_flows(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter_map(|mut response| response.get_mut("flow").map(Value::take))
        .collect()
}

/// `hubble observe --server RELAY -o json FILTERS...`: the flows.
fn observe(cluster: &Cluster, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["observe", "--server", RELAY, "-o", "json"];
    args.extend_from_slice(filters);
    json_flows(&hubble_ok(cluster, &args))
}

/// `(namespace, pod name)` of a flow's `source` or `destination`.
fn pod_of<'a>(flow: &'a Value, side: &str) -> (&'a str, &'a str) {
    (
        flow[side]["namespace"].as_str().unwrap_or(""),
        flow[side]["pod_name"].as_str().unwrap_or(""),
    )
}

fn from_pod(flow: &Value, pod: &Pod) -> bool {
    pod_of(flow, "source") == ("default", pod.container.as_str())
}

fn to_pod(flow: &Value, pod: &Pod) -> bool {
    pod_of(flow, "destination") == ("default", pod.container.as_str())
}

/// Whether the flow comes from a drop notification (`CILIUM_NOTIFY_DROP`), as opposed to a
/// policy verdict or trace event.
fn is_drop_event(flow: &Value) -> bool {
    flow["event_type"]["type"] == 1
}

/// A flow's time as a point in time; every flow must have one.
fn flow_time(flow: &Value) -> SystemTime {
    let text = flow["time"]
        .as_str()
        .unwrap_or_else(|| panic!("flow without time: {flow}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("flow time {text:?}: {e}"))
}

/// A flow a step waits for: what it is, the node that must report it, and the test.
type Expected<'a> = (&'a str, &'a str, &'a dyn Fn(&Value) -> bool);

/// One line per flow, for failure messages.
fn summary(flows: &[Value]) -> String {
    flows
        .iter()
        .map(|f| {
            format!(
                "\n  {} {} {:?} -> {:?} {} {} {} type {}",
                f["time"].as_str().unwrap_or("-"),
                f["node_name"].as_str().unwrap_or("-"),
                pod_of(f, "source"),
                pod_of(f, "destination"),
                f["verdict"].as_str().unwrap_or("-"),
                f["drop_reason_desc"].as_str().unwrap_or("-"),
                f["trace_observation_point"].as_str().unwrap_or("-"),
                f["event_type"]["type"],
            )
        })
        .collect()
}

/// Hubble's node name for a node of `cluster`, as the Peer service and the flows carry it.
fn hubble_name(cluster: &Cluster, node: &ClusterNode) -> String {
    format!("{}/{}", cluster.name, node.name)
}

/// Waits until `agent` has at least one rule and has realized its latest revision.
fn wait_policy(agent: &Agent) {
    eventually(
        PROPAGATION,
        || format!("policy not enforced: {}", agent.json(&["status"])),
        || {
            let status = agent.json(&["status"]);
            let policy = &status["policy"];
            (policy["rule-count"].as_u64().unwrap_or(0) >= 1
                && policy["realized-revision"] == policy["revision"])
                .then_some(())
        },
    );
}

/// Connects (retrying while cluster state propagates) and checks the echo.
fn connects(from: &Netns, to: SocketAddrV4, what: &str) {
    eventually(
        PROPAGATION,
        || format!("{what}: {to} does not answer"),
        || tcp_ok(from, to, Duration::from_secs(1)).then_some(()),
    );
}

/// `hubble status --server RELAY -o json`; `Err` with the CLI's message if the relay does not
/// answer (yet).
fn relay_status(cluster: &Cluster) -> Result<Value, String> {
    let out = hubble(cluster, &["status", "--server", RELAY, "-o", "json"]);
    if !out.success {
        return Err(out.stderr);
    }
    let status = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("status JSON {e}: {}", out.stdout));
    Ok(status)
}

/// `hubble observe -f` with the given filters, its output lines delivered on a channel.
struct Follower {
    lines: mpsc::Receiver<String>,
    process: Process,
}

impl Follower {
    fn start(cluster: &Cluster, filters: &[&str]) -> Follower {
        let log = cluster.dir.path().join("hubble-follow.err");
        let mut child = in_underlay(cluster, env!("CARGO_BIN_EXE_hubble"))
            .args(["observe", "--server", RELAY, "-o", "json", "--follow"])
            .args(filters)
            .env_remove("HUBBLE_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("follow log"))
            .spawn()
            .expect("run hubble observe --follow");
        let stdout = child.stdout.take().expect("follow stdout");
        let (tx, lines) = mpsc::channel();
        // Ends at EOF, when the process is killed.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower {
            lines,
            process: Process { child, log },
        }
    }
}

/// Polls `hubble status` until the relay counts `connected` nodes and names exactly the
/// `unavailable` ones; the last status.
fn wait_relay_nodes(
    cluster: &Cluster,
    relay: &Process,
    connected: u64,
    unavailable: &[String],
) -> Value {
    let last = RefCell::new(Value::Null);
    eventually(
        PROPAGATION,
        || {
            format!(
                "relay status never {connected} connected, unavailable {unavailable:?}: {}\n\
                 relay log:\n{}",
                last.borrow(),
                relay.log_text()
            )
        },
        || {
            let status = match relay_status(cluster) {
                Ok(status) => status,
                Err(error) => {
                    *last.borrow_mut() = Value::String(error);
                    return None;
                }
            };
            let names: BTreeSet<String> = status["unavailable_nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
            let matches = status["num_connected_nodes"].as_u64() == Some(connected)
                && status["num_unavailable_nodes"].as_u64().unwrap_or(0)
                    == unavailable.len() as u64
                && unavailable.iter().all(|n| names.contains(n));
            *last.borrow_mut() = status.clone();
            matches.then_some(status)
        },
    )
}

#[test]
fn privileged_hubble_relay() {
    let started = Instant::now();
    let mut cluster = Cluster::start_with_agent_args(
        &ClusterOptions {
            nodes: 2,
            operators: 1,
            routing: Routing::Native,
            pool: "10.76.0.0/16",
        },
        // Each agent has its own netns (so :4244 and :9965 do not clash) but all share the
        // file system: the unix socket goes to the node's own dir.
        Box::new(|node: &ClusterNode| {
            vec![
                "--enable-hubble".to_owned(),
                "--hubble-socket-path".to_owned(),
                node.dir.path().join("hubble.sock").display().to_string(),
            ]
        }),
    );
    let names: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| hubble_name(&cluster, n))
        .collect();
    let (node1, node2) = (names[0].clone(), names[1].clone());

    // Each node's Hubble server answers on its underlay address before the relay starts.
    for node in &cluster.nodes {
        let server = format!("{}:4244", node.ip);
        eventually(
            PROPAGATION,
            || format!("{}'s Hubble server does not answer on {server}", node.name),
            || {
                hubble(&cluster, &["status", "--server", &server])
                    .success
                    .then_some(())
            },
        );
        let socket = format!("unix://{}", node.dir.path().join("hubble.sock").display());
        let out = hubble_ok(&cluster, &["status", "--server", &socket]);
        assert!(out.contains("Healthcheck"), "{}: {out}", node.name);
    }
    let relay = start_relay(&cluster);

    // Both nodes, learnt from node-1's Peer service, are connected.
    let status = wait_relay_nodes(&cluster, &relay, 2, &[]);
    assert_eq!(
        status["num_unavailable_nodes"].as_u64(),
        Some(0),
        "{status}"
    );
    let compact = hubble_ok(&cluster, &["status", "--server", RELAY]);
    assert!(
        compact.contains("Connected Nodes: 2/2"),
        "hubble status: {compact}"
    );
    let nodes = hubble_ok(
        &cluster,
        &["list", "nodes", "--server", RELAY, "-o", "json"],
    );
    let nodes: Value = serde_json::from_str(&nodes).unwrap_or_else(|e| panic!("{e}: {nodes}"));
    let listed: BTreeSet<&str> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([node1.as_str(), node2.as_str()]),
        "hubble list nodes: {nodes}"
    );

    // Two clients on node-1, the echo server on node-2, connected before the policy.
    let client = Pod::add(cluster.agent(0), &[("app", "client")]);
    let intruder = Pod::add(cluster.agent(0), &[("app", "intruder")]);
    let echo = Pod::add(cluster.agent(1), &[("app", "echo")]);
    let _server = EchoServer::start(&echo.ns, echo.addr(8080));
    connects(&client.ns, echo.addr(8080), "client before the policy");
    connects(&intruder.ns, echo.addr(8080), "intruder before the policy");
    cluster.policy_apply(ECHO_POLICY);
    for i in 0..2 {
        wait_policy(cluster.agent(i));
    }
    connects(&client.ns, echo.addr(8080), "policy allows app=client");

    // New attempts until the relay shows both, enriched with pod names on both ends (the
    // agents refresh their enrichment caches every second).
    let is_denied = |f: &Value| {
        f["verdict"] == "DROPPED"
            && f["drop_reason_desc"] == "POLICY_DENIED"
            && from_pod(f, &intruder)
            && to_pod(f, &echo)
    };
    let is_allowed =
        |f: &Value| f["verdict"] == "FORWARDED" && from_pod(f, &client) && to_pod(f, &echo);
    // What the relay must show, from which node: the intruder's SYN dropped by node-2's drop
    // notification (not only the policy verdict event before it), the client's SYN delivered
    // to the echo pod on node-2 (a to-endpoint trace), and node-1 seeing the client's packets
    // leave its pod; a trace names the device it was observed on (the echo pod's host-side
    // veth) and the frame's MAC addresses.
    let expected: [Expected<'_>; 3] = [
        ("denied drop", &node2, &|f| is_denied(f) && is_drop_event(f)),
        ("allowed to-endpoint on the pod's veth", &node2, &|f| {
            is_allowed(f)
                && f["trace_observation_point"] == "TO_ENDPOINT"
                && f["interface"]["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("lxc"))
                && f["ethernet"]["destination"]
                    .as_str()
                    .is_some_and(|mac| mac.len() == 17)
        }),
        ("client egress", &node1, &|f| from_pod(f, &client)),
    ];
    let flows = RefCell::new(Vec::new());
    let missing = RefCell::new(Vec::new());
    eventually(
        PROPAGATION,
        || {
            format!(
                "relay flows lack {:?}:{}",
                missing.borrow(),
                summary(&flows.borrow())
            )
        },
        || {
            assert!(
                tcp_ok(&client.ns, echo.addr(8080), Duration::from_secs(2)),
                "policy must allow app=client"
            );
            assert!(
                !tcp_ok(&intruder.ns, echo.addr(8080), DENIED_WAIT),
                "policy must deny app=intruder"
            );
            let found = observe(&cluster, &["--last", LAST]);
            let absent: Vec<&str> = expected
                .iter()
                .filter(|(_, node, wanted)| {
                    !found.iter().any(|f| f["node_name"] == *node && wanted(f))
                })
                .map(|(what, _, _)| *what)
                .collect();
            *flows.borrow_mut() = found;
            *missing.borrow_mut() = absent;
            missing.borrow().is_empty().then_some(())
        },
    );
    let flows = flows.into_inner();
    let denied = flows
        .iter()
        .find(|f| is_denied(f) && is_drop_event(f))
        .expect("denied flow");
    assert_eq!(denied["l4"]["TCP"]["destination_port"], 8080, "{denied}");
    assert_eq!(
        denied["IP"]["source"],
        intruder.ip.to_string().as_str(),
        "{denied}"
    );
    assert_eq!(
        denied["IP"]["destination"],
        echo.ip.to_string().as_str(),
        "{denied}"
    );
    let seen: BTreeSet<&str> = flows
        .iter()
        .filter_map(|f| f["node_name"].as_str())
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([node1.as_str(), node2.as_str()]),
        "flows not from both nodes:{}",
        summary(&flows)
    );
    // The relay merges the nodes' flows in time order.
    let times: Vec<SystemTime> = flows.iter().map(flow_time).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "flows out of time order:{}",
        summary(&flows)
    );

    // The compact format names the verdicts.
    let to_echo = format!("default/{}", echo.container);
    let compact = hubble_ok(
        &cluster,
        &[
            "observe", "--server", RELAY, "--last", LAST, "--to-pod", &to_echo,
        ],
    );
    assert!(
        compact
            .lines()
            .any(|l| l.contains(&intruder.container) && l.contains("DROPPED")),
        "compact output has no DROPPED line for the intruder:\n{compact}"
    );
    assert!(
        compact.lines().any(|l| l.contains(&client.container)
            && l.contains("to-endpoint")
            && l.contains("FORWARDED")),
        "compact output has no to-endpoint FORWARDED line for the client:\n{compact}"
    );

    // Filters narrow the flows.
    let drops = observe(&cluster, &["--last", LAST, "--verdict", "DROPPED"]);
    assert!(
        drops.iter().any(is_denied),
        "--verdict DROPPED:{}",
        summary(&drops)
    );
    assert!(
        drops.iter().all(|f| f["verdict"] == "DROPPED"),
        "--verdict DROPPED:{}",
        summary(&drops)
    );
    let not_drops = observe(&cluster, &["--last", LAST, "--not", "--verdict", "DROPPED"]);
    assert!(
        not_drops.iter().any(is_allowed),
        "--not --verdict DROPPED:{}",
        summary(&not_drops)
    );
    assert!(
        not_drops.iter().all(|f| f["verdict"] != "DROPPED"),
        "--not --verdict DROPPED:{}",
        summary(&not_drops)
    );
    let from_client = format!("default/{}", client.container);
    let client_flows = observe(&cluster, &["--last", LAST, "--from-pod", &from_client]);
    assert!(
        client_flows.iter().any(is_allowed),
        "--from-pod:{}",
        summary(&client_flows)
    );
    assert!(
        client_flows.iter().all(|f| from_pod(f, &client)),
        "--from-pod {from_client}:{}",
        summary(&client_flows)
    );
    let echo_flows = observe(&cluster, &["--last", LAST, "--to-pod", &to_echo]);
    assert!(
        echo_flows.iter().any(is_allowed) && echo_flows.iter().any(is_denied),
        "--to-pod {to_echo}:{}",
        summary(&echo_flows)
    );
    assert!(
        echo_flows.iter().all(|f| to_pod(f, &echo)),
        "--to-pod {to_echo}:{}",
        summary(&echo_flows)
    );
    let from_intruder = format!("default/{}", intruder.container);
    let both = observe(
        &cluster,
        &[
            "--last",
            LAST,
            "--from-pod",
            &from_intruder,
            "--verdict",
            "DROPPED",
        ],
    );
    assert!(
        both.iter().any(is_denied)
            && both
                .iter()
                .all(|f| from_pod(f, &intruder) && f["verdict"] == "DROPPED"),
        "--from-pod {from_intruder} --verdict DROPPED:{}",
        summary(&both)
    );
    let node_only = observe(&cluster, &["--last", LAST, "--node-name", &node1]);
    assert!(
        !node_only.is_empty() && node_only.iter().all(|f| f["node_name"] == node1.as_str()),
        "--node-name {node1}:{}",
        summary(&node_only)
    );

    // --follow streams flows made after it started, and only those.
    let newest_before = client_flows
        .iter()
        .map(flow_time)
        .max()
        .expect("client flows");
    let follower = Follower::start(&cluster, &["--from-pod", &from_client]);
    let follow_deadline = Instant::now() + PROPAGATION;
    let streamed = loop {
        assert!(
            tcp_ok(&client.ns, echo.addr(8080), Duration::from_secs(2)),
            "client connects while following"
        );
        match follower.lines.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => break line,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "hubble observe --follow ended: {}",
                    follower.process.log_text()
                )
            }
        }
        assert!(
            Instant::now() < follow_deadline,
            "hubble observe --follow streamed nothing: {}",
            follower.process.log_text()
        );
    };
    let streamed = json_flows(&streamed);
    assert_eq!(streamed.len(), 1, "one flow per line: {streamed:?}");
    let flow = &streamed[0];
    assert!(from_pod(flow, &client), "--follow --from-pod: {flow}");
    assert!(
        flow_time(flow) > newest_before,
        "--follow replayed an old flow: {flow}"
    );
    drop(follower);

    // node-2's agent stops: the relay reports it unavailable and serves node-1's flows.
    let agent2 = cluster.nodes[1].agent.take().expect("node-2 agent");
    let stopped = SystemTime::now();
    agent2.terminate();
    let status = wait_relay_nodes(&cluster, &relay, 1, std::slice::from_ref(&node2));
    assert_eq!(
        status["num_unavailable_nodes"].as_u64(),
        Some(1),
        "{status}"
    );
    let compact = hubble_ok(&cluster, &["status", "--server", RELAY]);
    assert!(
        compact.contains("Connected Nodes: 1/2") && compact.contains(&node2),
        "hubble status after node-2 stopped: {compact}"
    );
    // The CLI warns about the missing node when asked for flows.
    let out = hubble(&cluster, &["observe", "--server", RELAY, "--last", "1"]);
    assert!(
        out.success && out.stderr.contains(&node2) && out.stderr.contains("unavailable"),
        "hubble observe does not warn about {node2}: {}{}",
        out.stderr,
        out.stdout
    );
    // Traffic of node-1's pods still makes flows there (the datapath outlives the agent).
    let after = RefCell::new(Vec::new());
    eventually(
        PROPAGATION,
        || {
            format!(
                "no flow from {node1} after node-2 stopped:{}",
                summary(&after.borrow())
            )
        },
        || {
            let _ = tcp_ok(&client.ns, echo.addr(8080), Duration::from_secs(1));
            let found = observe(&cluster, &["--last", LAST, "--from-pod", &from_client]);
            let fresh = found
                .iter()
                .any(|f| f["node_name"] == node1.as_str() && flow_time(f) > stopped);
            *after.borrow_mut() = found;
            fresh.then_some(())
        },
    );
    drop(relay);
    eprintln!("hubble relay test took {:?}", started.elapsed());
}
