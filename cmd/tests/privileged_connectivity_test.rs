//! Tests of `cilium connectivity test` (as root): on a lab of one cluster with two nodes every
//! scenario passes, `--test no-policies -o json` reports exactly that scenario with its
//! cross-node probes, and both runs leave no test pod or policy behind.
//!
//! The lab has its own temp directory and a name derived from this process's PID; a guard runs
//! `lab down` on drop, so a failing test leaves nothing behind.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;

const CILIUM: &str = env!("CARGO_BIN_EXE_cilium");

/// A lab in a temp directory, taken down on drop.
struct Lab {
    dir: tempfile::TempDir,
    name: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("lab dir"),
            name: format!("{tag}{:x}", std::process::id()),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn cilium(&self, group: &str, args: &[&str]) -> Output {
        Command::new(CILIUM)
            .args([group, "--dir"])
            .arg(self.dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cilium")
    }

    fn ok(&self, group: &str, args: &[&str]) -> Output {
        let out = self.cilium(group, args);
        assert!(
            out.status.success(),
            "cilium {group} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        out
    }

    fn pods(&self) -> Vec<Value> {
        let out = self.ok("lab", &["pod", "list", "-o", "json"]);
        let pods: Value = serde_json::from_slice(&out.stdout).expect("pod list JSON");
        pods.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cilium("lab", &["down"]);
    }
}

#[test]
fn privileged_connectivity_test_passes_every_scenario_on_two_nodes() {
    let lab = Lab::new("ct");
    let started = Instant::now();
    lab.ok(
        "lab",
        &["up", "--clusters", "1", "--nodes", "2", "--name", &lab.name],
    );
    let up_took = started.elapsed();

    let test_started = Instant::now();
    let out = lab.ok("connectivity", &["test"]);
    let test_took = test_started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let names = cilium_cmd::lab::connectivity::scenario_names();
    for name in &names {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("[PASS] {name} ("))),
            "{name} did not pass:\n{stdout}"
        );
    }
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    assert!(
        stdout.contains(&format!("{} passed, 0 failed", names.len())),
        "{stdout}"
    );
    assert!(
        lab.pods().iter().all(|p| p["namespace"] != "cilium-test"),
        "test pods left behind"
    );

    let out = lab.ok(
        "connectivity",
        &["test", "--test", "no-policies", "-o", "json"],
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), 1, "{report:#}");
    assert_eq!(scenarios[0]["name"], "no-policies");
    assert_eq!(scenarios[0]["passed"], true, "{report:#}");
    assert_eq!(report["cross_node"], true);
    assert_eq!(report["failed"], 0);
    let probes = scenarios[0]["probes"].as_array().expect("probes");
    for destination in ["echo-same-node", "echo-other-node", "world"] {
        assert!(
            probes
                .iter()
                .any(|p| p["destination"] == destination && p["actual"] == "allowed"),
            "no allowed probe to {destination}: {report:#}"
        );
    }
    assert!(
        lab.pods().iter().all(|p| p["namespace"] != "cilium-test"),
        "test pods left behind"
    );

    // A filter that selects nothing is an error, not an empty success.
    let out = lab.cilium("connectivity", &["test", "--test", "^no-such-scenario$"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-policies"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    lab.ok("lab", &["down"]);
    eprintln!(
        "lab up took {up_took:.1?}, connectivity test {test_took:.1?}, whole test {:.1?}",
        started.elapsed()
    );
}
