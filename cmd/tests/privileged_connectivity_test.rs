//! Tests of `cilium connectivity test` (as root): on a lab of one cluster with two nodes every
//! single-cluster scenario passes and the multi-cluster ones are skipped (also in `-o json`),
//! `--test no-policies -o json` reports exactly that scenario with its same-node, cross-node,
//! service and world probes, agents named with `--agent-socket` get the read-only checks,
//! whose drop check fails on a packet the datapath cannot carry unless
//! `--expected-drop-reasons` adds its reason;
//! on a lab of two clusters every scenario passes, the cross-cluster ones included, and the
//! deny scenarios also probe the other cluster (skipped, and said so, on one cluster); on a
//! one-node lab without etcd (`--kvstore memory`) the single-cluster scenarios pass through
//! the agent's API. No run leaves a test pod, service or policy behind.
//!
//! The lab has its own temp directory and a name derived from this process's PID; a guard runs
//! `lab down` on drop, so a failing test leaves nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

#[path = "common/lab.rs"]
mod lab;

use lab::{CILIUM, Lab};

impl Lab {
    fn pods(&self) -> Vec<Value> {
        let out = self.cilium_ok("lab", &["pod", "list", "-o", "json"]);
        let pods: Value = serde_json::from_slice(&out.stdout).expect("pod list JSON");
        pods.as_array().cloned().unwrap_or_default()
    }
}

impl Lab {
    /// Every policy and service left in namespace cilium-test, over every cluster's etcd.
    fn leftovers(&self) -> Vec<String> {
        let state = self.state();
        let underlay = state["underlay"].as_str().expect("underlay").to_owned();
        let mut found = Vec::new();
        for cluster in state["clusters"].as_array().expect("clusters") {
            let name = cluster["name"].as_str().expect("name");
            let Some(config) = cluster["etcd_config"].as_str() else {
                found.extend(agent_leftovers(cluster));
                continue;
            };
            let opt = format!("etcd.config={config}");
            for what in [["policy", "list"], ["service", "list"]] {
                let out = Command::new("ip")
                    .args(["netns", "exec", &underlay, CILIUM])
                    .args(what)
                    .args(["--kvstore-opt", &opt, "--cluster-name", name, "-o", "json"])
                    .env_remove("CILIUM_KVSTORE_OPT")
                    .stdin(Stdio::null())
                    .output()
                    .expect("run cilium");
                assert!(out.status.success(), "{what:?} failed: {out:?}");
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("cilium-test") {
                    found.push(format!("{name} {what:?}: {text}"));
                }
            }
        }
        found
    }

    fn assert_clean(&self) {
        assert!(
            self.pods().iter().all(|p| p["namespace"] != "cilium-test"),
            "test pods left behind"
        );
        let leftovers = self.leftovers();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    }
}

/// Sends one IPv4 packet of protocol 253 (reserved for experiments) from inside `netns` to
/// the lab's external server: the pod's datapath drops it before it leaves the pod.
fn send_unknown_l4(netns: &str) {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
    };
    use std::os::fd::AsRawFd;
    let dst = cilium_cmd::lab::EXTERNAL_IP;
    cilium_cmd::lab::sys::in_netns(netns, move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Raw,
        )
        .expect("raw socket");
        // IPv4 header (the kernel fills in the source, length, id and checksum) and 8 bytes.
        let mut packet = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 253, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&dst.octets());
        packet.extend_from_slice(b"unknown!");
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
        for _ in 0..3 {
            sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty()).expect("send");
        }
        Ok(())
    })
    .expect("send from the pod");
}

/// What the agents of an etcd-less cluster still hold of the test: policies of cilium-test
/// and services on the test's frontends (10.96.1.0/24).
fn agent_leftovers(cluster: &Value) -> Vec<String> {
    let dbg = Path::new(CILIUM).with_file_name("cilium-dbg");
    let mut found = Vec::new();
    for node in cluster["nodes"].as_array().expect("nodes") {
        let socket = format!("unix://{}", node["socket"].as_str().expect("socket"));
        for what in [["policy", "get"], ["service", "list"]] {
            let out = Command::new(&dbg)
                .args(["-H", &socket])
                .args(what)
                .args(["-o", "json"])
                .env_remove("CILIUM_SOCK")
                .stdin(Stdio::null())
                .output()
                .expect("run cilium-dbg");
            assert!(out.status.success(), "{what:?} failed: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("cilium-test") || text.contains("10.96.1.") {
                found.push(format!("{} {what:?}: {text}", node["name"]));
            }
        }
    }
    found
}

/// The scenario `name` of a `-o json` report.
fn scenario<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .and_then(|scenarios| scenarios.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no scenario {name}: {report:#}"))
}

/// The text report's lines that start with `prefix`.
fn lines_with<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn privileged_connectivity_test_passes_every_scenario_on_two_nodes() {
    let lab = Lab::new("ct");
    let started = Instant::now();
    lab.cilium_ok(
        "lab",
        &["up", "--clusters", "1", "--nodes", "2", "--name", &lab.name],
    );
    let up_took = started.elapsed();

    let test_started = Instant::now();
    let out = lab.cilium_ok("connectivity", &["test"]);
    let test_took = test_started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names = cilium_cmd::lab::connectivity::scenario_names();
    let multi = cilium_cmd::lab::connectivity::multi_cluster_scenario_names();
    assert!(!multi.is_empty());
    for name in &names {
        let prefix = if multi.contains(name) {
            format!("[SKIP] {name}: needs 2 clusters")
        } else {
            format!("[PASS] {name} (")
        };
        assert!(
            stdout.lines().any(|l| l.starts_with(&prefix)),
            "no line {prefix:?}:\n{stdout}"
        );
    }
    assert!(lines_with(&stdout, "[FAIL]").is_empty(), "{stdout}");
    // The deny scenarios' probes to the other cluster are skipped on one cluster, and say so.
    for (name, skipped) in [
        ("all-ingress-deny", 3),
        ("echo-ingress-from-other-client-deny", 2),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("[PASS] {name} ("))
                    && l.ends_with(&format!(
                        "; {skipped} cross-cluster probes skipped: the lab has one cluster)"
                    ))),
            "{name}: {stdout}"
        );
    }
    // The drop check runs last and counts what this run dropped.
    let last = stdout
        .lines()
        .rfind(|l| l.starts_with('['))
        .unwrap_or_default();
    assert!(
        last.starts_with("[PASS] no-unexpected-packet-drops (2 agents,")
            && last.contains("since test run"),
        "{stdout}"
    );
    // Policy denials happened, and they are expected drops.
    assert!(last.contains("Policy denied"), "{last}");
    assert!(
        stdout.contains(&format!(
            "{} passed, 0 failed, {} skipped",
            names.len() - multi.len(),
            multi.len()
        )),
        "{stdout}"
    );
    let probes = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{} scenarios (", names.len())))
        .unwrap_or_default()
        .to_owned();
    lab.assert_clean();

    let out = lab.cilium_ok(
        "connectivity",
        &["test", "--test", "^no-policies$", "-o", "json"],
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 1, "{report:#}");
    assert_eq!(scenarios[0]["name"], "no-policies");
    assert_eq!(scenarios[0]["passed"], true, "{report:#}");
    assert_eq!(scenarios[0]["skipped"], Value::Null, "{report:#}");
    assert_eq!(report["cross_node"], true);
    assert_eq!(report["cross_cluster"], false);
    assert_eq!(report["failed"], 0);
    let probes_json = scenarios[0]["probes"].as_array().expect("probes");
    for (destination, path, answer) in [
        ("echo-same-node", "same-node", "echo-same-node"),
        ("echo-other-node", "cross-node", "echo-other-node"),
        ("service/echo-same-node", "same-node", "echo-same-node"),
        ("service/echo-other-node", "cross-node", "echo-other-node"),
        ("world", "world", "world"),
    ] {
        assert!(
            probes_json.iter().any(|p| p["destination"] == destination
                && p["actual"] == "allowed"
                && p["path"] == path
                && p["answered_by"] == serde_json::json!([answer])),
            "no allowed {path} probe to {destination} answered by {answer}: {report:#}"
        );
    }
    lab.assert_clean();

    // A multi-cluster scenario on one cluster: skipped, in JSON too, and not a failure.
    let out = lab.cilium_ok(
        "connectivity",
        &[
            "test",
            "--test",
            "^no-policies-cross-cluster$",
            "-o",
            "json",
        ],
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["skipped"], 1, "{report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");
    let skip = report["scenarios"][0]["skipped"]
        .as_str()
        .unwrap_or_default();
    assert!(skip.contains("--clusters 2"), "{report:#}");

    // Agents named on the command line: the read-only checks run, the rest is skipped.
    let status: Value =
        serde_json::from_slice(&lab.cilium_ok("lab", &["status", "-o", "json"]).stdout)
            .expect("status");
    let sockets: Vec<String> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["socket"].as_str().expect("socket").to_owned())
        .collect();
    assert_eq!(sockets.len(), 2);
    let mut args = vec!["test", "-o", "json"];
    for socket in &sockets {
        args.extend(["--agent-socket", socket.as_str()]);
    }
    let out = lab.cilium_ok("connectivity", &args);
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["passed"], 1, "{report:#}");
    let drops = scenario(&report, "no-unexpected-packet-drops");
    assert_eq!(drops["passed"], true, "{report:#}");
    assert_eq!(drops["drops"]["since"], "agent start", "{report:#}");
    assert_eq!(drops["drops"]["agents"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["skipped"], names.len() - 1, "{report:#}");
    // An agent that is not there is an error that names the socket.
    let missing = lab.dir().join("no-such.sock");
    let out = lab.cilium(
        "connectivity",
        &["test", "--agent-socket", &missing.display().to_string()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such.sock") && stderr.contains("does not answer"),
        "{stderr}"
    );

    // A packet the datapath cannot carry (IP protocol 253: conntrack knows TCP, UDP, SCTP
    // and ICMP only) is an unexpected drop, and the drop check fails on it.
    lab.cilium_ok("lab", &["pod", "create", "dropper", "--node", "c1-n1"]);
    let dropper = lab
        .pods()
        .into_iter()
        .find(|p| p["name"] == "dropper")
        .expect("dropper pod");
    let netns = dropper["netns"].as_str().expect("netns").to_owned();
    send_unknown_l4(&netns);
    let out = lab.cilium("connectivity", &args);
    assert!(!out.status.success(), "an unexpected drop passed");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["failed"], 1, "{report:#}");
    let unexpected: Vec<&Value> = report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["drops"]["drops"].as_array())
        .flatten()
        .filter(|d| d["expected"] == false)
        .collect();
    assert!(
        unexpected
            .iter()
            .any(|d| d["reason_name"] == "CT: Unknown L4 protocol"
                && d["agent"].as_str() == sockets.first().map(String::as_str)),
        "{report:#}"
    );
    let text = lab.cilium(
        "connectivity",
        &["test", "--agent-socket", &sockets[0], "--test", "drops"],
    );
    assert!(!text.status.success());
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("[FAIL] no-unexpected-packet-drops: ")
            && stdout.contains("CT: Unknown L4 protocol"),
        "{stdout}"
    );

    // Upstream's --expected-drop-reasons: `+REASON` adds to the defaults, so the same drops
    // pass, and the report says which reasons it accepted.
    let mut expecting = args.clone();
    expecting.extend(["--expected-drop-reasons", "+CT: Unknown L4 protocol"]);
    let out = lab.cilium_ok("connectivity", &expecting);
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["failed"], 0, "{report:#}");
    let check = &scenario(&report, "no-unexpected-packet-drops")["drops"];
    let reasons = check["expected_reasons"].as_array().expect("reasons");
    for reason in ["CT: Unknown L4 protocol", "Policy denied"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason}: {check:#}");
    }
    assert!(
        check["drops"]
            .as_array()
            .expect("drops")
            .iter()
            .any(|d| d["reason_name"] == "CT: Unknown L4 protocol" && d["expected"] == true),
        "{check:#}"
    );
    // The text report of the first agent's drop check, with one --expected-drop-reasons.
    let drop_check = |reasons: &str| {
        let out = lab.cilium(
            "connectivity",
            &[
                "test",
                "--agent-socket",
                &sockets[0],
                "--test",
                "drops",
                &format!("--expected-drop-reasons={reasons}"),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), stdout)
    };
    let (passed, stdout) = drop_check("+CT: Unknown L4 protocol");
    assert!(
        passed
            && stdout.contains("[PASS] no-unexpected-packet-drops (1 agents,")
            && stdout.contains("; expected reasons: +CT: Unknown L4 protocol"),
        "{stdout}"
    );
    // `-REASON` removes a default: the policy denials of the runs above now fail the check.
    let (passed, stdout) = drop_check("+CT: Unknown L4 protocol,-Policy denied");
    assert!(!passed);
    assert!(
        stdout.contains("[FAIL] no-unexpected-packet-drops: ")
            && stdout.contains("Policy denied (reason 133)")
            && !stdout.contains("CT: Unknown L4 protocol"),
        "{stdout}"
    );
    // A reason the datapath does not know is refused before anything runs, naming it.
    let out = lab.cilium(
        "connectivity",
        &["test", "--expected-drop-reasons", "+No such drop"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"No such drop\" is not a drop reason")
            && stderr.contains("CT: Unknown L4 protocol"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A filter that selects nothing is an error, not an empty success.
    let out = lab.cilium("connectivity", &["test", "--test", "^no-such-scenario$"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-policies"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    lab.cilium_ok("lab", &["down"]);
    eprintln!(
        "lab up took {up_took:.1?}, connectivity test {test_took:.1?} ({probes}), whole test \
         {:.1?}",
        started.elapsed()
    );
}

#[test]
fn privileged_connectivity_test_crosses_clusters_on_a_mesh() {
    let lab = Lab::new("cm");
    let started = Instant::now();
    lab.cilium_ok(
        "lab",
        &["up", "--clusters", "2", "--nodes", "1", "--name", &lab.name],
    );
    let up_took = started.elapsed();

    let test_started = Instant::now();
    let out = lab.cilium_ok("connectivity", &["test", "-o", "json"]);
    let test_took = test_started.elapsed();
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["cross_cluster"], true, "{report:#}");
    assert_eq!(report["clusters"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["skipped"], 0, "{report:#}");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let scenario = |name: &str| scenario(&report, name);
    for name in cilium_cmd::lab::connectivity::multi_cluster_scenario_names() {
        assert_eq!(scenario(name)["passed"], true, "{name}: {report:#}");
    }
    // The global service answered from both clusters.
    let global = scenario("no-policies-cross-cluster")["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .find(|p| p["destination"] == "service/echo-global")
        .cloned()
        .expect("global service probe");
    assert_eq!(global["path"], "cross-cluster");
    assert_eq!(
        global["answered_by"],
        serde_json::json!(["echo-other-cluster", "echo-same-node"]),
        "{global:#}"
    );
    // The policy in the remote cluster let only client2 in, across clusters.
    let probes = scenario("clustermesh-policy-cnp-ingress")["probes"]
        .as_array()
        .expect("probes")
        .clone();
    for (source, verdict) in [("client2", "allowed"), ("client", "denied")] {
        assert!(
            probes.iter().any(|p| p["source"] == source
                && p["destination"] == "echo-other-cluster"
                && p["path"] == "cross-cluster"
                && p["actual"] == verdict),
            "{source} -> echo-other-cluster not {verdict}: {probes:#?}"
        );
    }
    // The deny scenarios probed the other cluster too, their policy applied in both, and
    // upstream's clustermesh-policy-cnp-egress let the clients reach it.
    for (name, source, verdict) in [
        ("all-ingress-deny", "client", "denied"),
        ("all-egress-deny", "client2", "denied"),
        ("all-entities-deny", "client", "denied"),
        ("echo-ingress-from-other-client-deny", "client", "allowed"),
        ("echo-ingress-from-other-client-deny", "client2", "denied"),
        ("clustermesh-policy-cnp-egress", "client", "allowed"),
        ("clustermesh-policy-cnp-egress", "client2", "allowed"),
    ] {
        let scenario = scenario(name);
        assert_eq!(scenario["skipped_probes"], serde_json::json!([]), "{name}");
        assert!(
            scenario["probes"]
                .as_array()
                .expect("probes")
                .iter()
                .any(|p| {
                    p["source"] == source
                        && p["destination"] == "echo-other-cluster"
                        && p["path"] == "cross-cluster"
                        && p["actual"] == verdict
                        && p["passed"] == true
                }),
            "{name}: {source} -> echo-other-cluster not {verdict}: {scenario:#}"
        );
    }
    let global_denied = scenario("all-ingress-deny")["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .any(|p| p["destination"] == "service/echo-global" && p["actual"] == "denied");
    assert!(global_denied, "{report:#}");
    let drops = scenario("no-unexpected-packet-drops");
    assert_eq!(drops["drops"]["agents"].as_array().map(Vec::len), Some(2));
    let probe_count: usize = scenarios
        .iter()
        .map(|s| s["probes"].as_array().map_or(0, Vec::len))
        .sum();
    lab.assert_clean();

    lab.cilium_ok("lab", &["down"]);
    eprintln!(
        "2x1 lab up took {up_took:.1?}, connectivity test {test_took:.1?} ({probe_count} probes), \
         whole test {:.1?}",
        started.elapsed()
    );
}

#[test]
fn privileged_connectivity_test_runs_on_a_lab_without_etcd() {
    let lab = Lab::new("cx");
    let started = Instant::now();
    lab.cilium_ok("lab", &["up", "--kvstore", "memory", "--name", &lab.name]);
    let out = lab.cilium_ok("connectivity", &["test", "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let multi = cilium_cmd::lab::connectivity::multi_cluster_scenario_names();
    assert_eq!(report["failed"], 0, "{report:#}");
    assert_eq!(report["skipped"], multi.len(), "{report:#}");
    assert_eq!(report["cross_node"], false, "{report:#}");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(
        scenarios.len(),
        cilium_cmd::lab::connectivity::scenario_names().len()
    );
    // Services and policies went through the agent's API and were enforced: the service
    // answered, and all-ingress-deny denied through it.
    let probe = |scenario: &str, destination: &str| {
        scenarios
            .iter()
            .find(|s| s["name"] == scenario)
            .and_then(|s| s["probes"].as_array())
            .and_then(|p| {
                p.iter()
                    .find(|p| p["source"] == "client" && p["destination"] == destination)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no probe client -> {destination} in {scenario}"))
    };
    let served = probe("no-policies", "service/echo-other-node");
    assert_eq!(served["actual"], "allowed", "{served:#}");
    assert_eq!(
        served["answered_by"],
        serde_json::json!(["echo-other-node"])
    );
    let denied = probe("all-ingress-deny", "service/echo-other-node");
    assert_eq!(denied["actual"], "denied", "{denied:#}");
    lab.assert_clean();
    lab.cilium_ok("lab", &["down"]);
    eprintln!(
        "memory lab: up and connectivity test in {:.1?}",
        started.elapsed()
    );
}
