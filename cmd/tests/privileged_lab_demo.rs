//! Tests of `cilium lab demo`, the Star Wars demo on a lab: its embedded policy is upstream's
//! `rule1`, and (as root) on a lab of one cluster with two nodes the demo comes up, the
//! tiefighter reaches the deathstar service while the xwing is turned away, Hubble through the
//! relay shows the xwing's packets dropped by policy and the tiefighter's forwarded, a second
//! run reports the demo is there, and `lab down` stops the deathstars' servers and removes
//! every namespace. On a lab without etcd (`--kvstore memory`, one node) the demo puts the
//! service and the policy into the agent through its REST API, with the same results.
//!
//! The lab has its own temp directory and a name derived from this process's PID; a guard runs
//! `lab down` on drop, so a failing test leaves nothing behind.

use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cilium_cmd::lab::demo::{FRONTEND, L3_L4_POLICY, POLICY_NAME};
use model::policy::parse_documents;
use serde_json::Value;

#[path = "common/lab.rs"]
mod lab;

use lab::{CILIUM, Lab, running};

const HUBBLE: &str = env!("CARGO_BIN_EXE_hubble");
/// Upstream's demo policy, next to the workspace.
const UPSTREAM_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/upstream-policies/minikube/sw_l3_l4_policy.yaml"
);
/// How long the relay may take to show a flow.
const FLOWS: Duration = Duration::from_secs(15);

#[test]
fn the_demo_policy_is_upstreams_rule1() {
    let upstream = std::fs::read_to_string(UPSTREAM_POLICY).expect("upstream demo policy");
    let upstream = parse_documents(&upstream).expect("upstream policy parses");
    let ours = parse_documents(L3_L4_POLICY).expect("demo policy parses");
    assert_eq!(ours.len(), 1);
    assert_eq!(upstream.len(), 1);
    assert_eq!(ours[0].kind(), upstream[0].kind());
    assert_eq!(ours[0].name(), POLICY_NAME);
    assert_eq!(ours[0].name(), upstream[0].name());
    assert_eq!(
        ours[0].to_rules().expect("demo rules"),
        upstream[0].to_rules().expect("upstream rules")
    );
}

impl Lab {
    /// One echo probe from `pod` to the deathstar service.
    fn to_deathstar(&self, pod: &str) -> Output {
        self.probe(pod, &FRONTEND.to_string())
    }

    /// `hubble observe --server RELAY -o json FILTERS...` in the underlay: the flows.
    fn observe(&self, filters: &[&str]) -> Vec<Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-underlay", self.name), HUBBLE])
            .args(["observe", "--server", "127.0.0.1:4245", "-o", "json"])
            .args(filters)
            .stdin(Stdio::null())
            .output()
            .expect("run hubble");
        assert!(
            out.status.success(),
            "hubble observe {filters:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|mut response| response.get_mut("flow").map(Value::take))
            .collect()
    }

    /// Waits until a flow from `pod` matching `wanted` shows through the relay; the flows seen
    /// on failure.
    fn wait_flow(&self, pod: &str, wanted: &dyn Fn(&Value) -> bool) -> Result<Value, String> {
        let from = format!("default/{pod}");
        let deadline = Instant::now() + FLOWS;
        loop {
            let flows = self.observe(&["--last", "1000", "--from-pod", &from]);
            if let Some(flow) = flows.iter().find(|f| wanted(f)) {
                return Ok(flow.clone());
            }
            if Instant::now() >= deadline {
                return Err(flows
                    .iter()
                    .map(|f| {
                        format!(
                            "\n  {}/{} -> {}/{} {} {}",
                            f["source"]["namespace"].as_str().unwrap_or("-"),
                            f["source"]["pod_name"].as_str().unwrap_or("-"),
                            f["destination"]["namespace"].as_str().unwrap_or("-"),
                            f["destination"]["pod_name"].as_str().unwrap_or("-"),
                            f["verdict"].as_str().unwrap_or("-"),
                            f["drop_reason_desc"].as_str().unwrap_or("-"),
                        )
                    })
                    .collect());
            }
            // Another attempt, so a flow missed while the relay caught up comes again.
            let _ = self.to_deathstar(pod);
            thread::sleep(Duration::from_millis(500));
        }
    }
}

fn to_deathstar(flow: &Value) -> bool {
    flow["destination"]["namespace"] == "default"
        && flow["destination"]["pod_name"]
            .as_str()
            .is_some_and(|p| p.starts_with("deathstar-"))
}

#[test]
fn privileged_lab_demo_tiefighter_lands_xwing_is_denied() {
    let lab = Lab::new("ld");
    let started = Instant::now();
    lab.ok(&["up", "--clusters", "1", "--nodes", "2", "--name", &lab.name]);
    let up_took = started.elapsed();

    let demo_started = Instant::now();
    let out = lab.cilium_ok("lab", &["demo"]);
    let demo_took = demo_started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("The demo is up"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "pod exec tiefighter -- {CILIUM} lab echo-client --connect {FRONTEND}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("observe --server 127.0.0.1:4245 --to-pod default/deathstar"),
        "{stdout}"
    );
    for step in [
        "deathstar-1",
        "deathstar-2",
        "tiefighter",
        "xwing",
        "rule1",
        "landed",
        "turned away",
    ] {
        assert!(stderr.contains(step), "progress lacks {step}: {stderr}");
    }

    let pods = lab.json(&["pod", "list"]);
    let pods = pods.as_array().expect("pods");
    let pod = |name: &str| {
        pods.iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {pods:?}"))
            .clone()
    };
    let (d1, d2, tie, xwing) = (
        pod("deathstar-1"),
        pod("deathstar-2"),
        pod("tiefighter"),
        pod("xwing"),
    );
    assert_eq!(pods.len(), 4);
    assert_ne!(d1["node"], d2["node"], "the deathstars share a node");
    assert_eq!(d1["labels"]["class"], "deathstar");
    assert_eq!(d1["labels"]["org"], "empire");
    assert_eq!(tie["labels"]["org"], "empire");
    assert_eq!(xwing["labels"]["org"], "alliance");
    assert_eq!(d1["identity"], d2["identity"], "same labels, same identity");
    assert_ne!(tie["identity"], xwing["identity"]);
    assert!(pods.iter().all(|p| p["namespace"] == "default"));

    // The tiefighter gets through the service every time (each connection picks one of the
    // backends, on either node); the xwing does not.
    for _ in 0..4 {
        let out = lab.to_deathstar("tiefighter");
        assert!(
            out.status.success(),
            "tiefighter -> {FRONTEND}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = lab.to_deathstar("xwing");
    assert!(!out.status.success(), "xwing reached {FRONTEND}");

    let denied = lab.wait_flow("xwing", &|f| {
        f["verdict"] == "DROPPED" && f["drop_reason_desc"] == "POLICY_DENIED" && to_deathstar(f)
    });
    assert!(
        denied.is_ok(),
        "no POLICY_DENIED drop of the xwing:{}",
        denied.unwrap_err()
    );
    let allowed = lab.wait_flow("tiefighter", &|f| {
        f["verdict"] == "FORWARDED" && to_deathstar(f)
    });
    assert!(
        allowed.is_ok(),
        "no forwarded tiefighter flow:{}",
        allowed.unwrap_err()
    );

    // Again: everything is there, nothing new is made, and it still checks out.
    let again = lab.json(&["demo"]);
    assert_eq!(again["already_there"], true, "{again:#}");
    assert!(
        again["pods"]
            .as_array()
            .is_some_and(|p| p.len() == 4 && p.iter().all(|p| p["created"] == false)),
        "{again:#}"
    );
    assert_eq!(lab.json(&["pod", "list"]).as_array().map(Vec::len), Some(4));

    let status = lab.json(&["status"]);
    assert_eq!(status["healthy"], true, "{status:#}");
    let servers: Vec<i64> = status["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter(|c| {
            c["component"]
                .as_str()
                .is_some_and(|c| c.starts_with("demo deathstar-"))
        })
        .filter_map(|c| c["pid"].as_i64())
        .collect();
    assert_eq!(servers.len(), 2, "{status:#}");

    lab.ok(&["down"]);
    assert!(
        servers.iter().all(|p| !running(*p)),
        "a deathstar server survives down"
    );
    let left = lab.namespaces_left();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    eprintln!(
        "lab up took {up_took:.1?}, demo {demo_took:.1?}, whole test {:.1?}",
        started.elapsed()
    );
}

#[test]
fn privileged_lab_demo_on_the_memory_kvstore_goes_through_the_agent_api() {
    let lab = Lab::new("lv");
    let started = Instant::now();
    lab.ok(&["up", "--kvstore", "memory", "--name", &lab.name]);
    let up_took = started.elapsed();

    let demo_started = Instant::now();
    let out = lab.cilium_ok("lab", &["demo"]);
    let demo_took = demo_started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("The demo is up"), "{stdout}");
    assert!(
        stderr.contains("through each agent's API"),
        "progress does not say where the service goes: {stderr}"
    );
    for step in [
        "on agent c1-n1: created",
        "policy default/rule1 on agent c1-n1: imported",
        "landed",
        "turned away",
    ] {
        assert!(stderr.contains(step), "progress lacks {step}: {stderr}");
    }
    // The etcd-only hints are replaced by the agent's own view.
    assert!(stdout.contains("cilium.sock policy get"), "{stdout}");
    assert!(!stdout.contains("--kvstore-opt"), "{stdout}");

    let pods = lab.json(&["pod", "list"]);
    let pods = pods.as_array().expect("pods");
    assert_eq!(pods.len(), 4, "{pods:?}");
    assert!(pods.iter().all(|p| p["node"] == "c1-n1"), "{pods:?}");

    // The agent itself holds the service (two backends) and the rule: there is no etcd.
    let dbg = |args: &[&str]| lab.dbg("c1-n1", args);
    let services = dbg(&["service", "list"]);
    let deathstar = services
        .as_array()
        .expect("services")
        .iter()
        .find(|s| {
            s["spec"]["frontend-address"]["ip"] == FRONTEND.ip().to_string()
                && s["spec"]["frontend-address"]["port"] == FRONTEND.port()
        })
        .unwrap_or_else(|| panic!("no {FRONTEND} service in the agent: {services:#}"));
    assert_eq!(
        deathstar["spec"]["backend-addresses"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{deathstar:#}"
    );
    let policy = dbg(&["policy", "get"]);
    assert!(
        policy["policy"]
            .as_str()
            .is_some_and(|p| p.contains(POLICY_NAME)),
        "{policy:#}"
    );

    for _ in 0..4 {
        let out = lab.to_deathstar("tiefighter");
        assert!(
            out.status.success(),
            "tiefighter -> {FRONTEND}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !lab.to_deathstar("xwing").status.success(),
        "xwing reached {FRONTEND}"
    );
    let denied = lab.wait_flow("xwing", &|f| {
        f["verdict"] == "DROPPED" && f["drop_reason_desc"] == "POLICY_DENIED" && to_deathstar(f)
    });
    assert!(
        denied.is_ok(),
        "no POLICY_DENIED drop of the xwing:{}",
        denied.unwrap_err()
    );
    let allowed = lab.wait_flow("tiefighter", &|f| {
        f["verdict"] == "FORWARDED" && to_deathstar(f)
    });
    assert!(
        allowed.is_ok(),
        "no forwarded tiefighter flow:{}",
        allowed.unwrap_err()
    );

    let again = lab.json(&["demo"]);
    assert_eq!(again["already_there"], true, "{again:#}");
    let services = dbg(&["service", "list"]);
    assert_eq!(
        services.as_array().map(Vec::len),
        Some(1),
        "a second run adds no service: {services:#}"
    );

    lab.ok(&["down"]);
    let left = lab.namespaces_left();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    eprintln!(
        "memory lab: up took {up_took:.1?}, demo {demo_took:.1?}, whole test {:.1?}",
        started.elapsed()
    );
}
