//! `sim run` as users call it: the JSON report, the same hash for the same seed, and the
//! error for an unknown scenario.

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("sim runs")
}

fn json_report(seed: &str) -> serde_json::Value {
    let out = sim(&[
        "run",
        "--scenario",
        "smoke",
        "--nodes",
        "3",
        "--pods",
        "2",
        "--seed",
        seed,
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON report")
}

#[test]
fn run_prints_a_json_report_whose_hash_follows_the_seed() {
    let report = json_report("3");
    assert_eq!(report["scenario"], "smoke");
    assert_eq!(report["seed"], 3);
    assert_eq!(report["nodes"], 3);
    assert_eq!(report["failure"], serde_json::Value::Null);
    // Setup, pod churn, policy churn, service churn.
    assert_eq!(report["steps"].as_array().map(Vec::len), Some(4));
    assert!(report["kvstore_ops"].as_u64().is_some_and(|ops| ops > 0));
    let hash = report["final_hash"].as_str().expect("a hash").to_owned();
    assert_eq!(hash.len(), 64);
    assert_eq!(json_report("3")["final_hash"], hash.as_str());
}

#[test]
fn an_unknown_scenario_is_refused_with_the_known_names() {
    let out = sim(&["run", "--scenario", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown scenario \"nope\""), "{stderr}");
    assert!(stderr.contains("pod-churn"), "{stderr}");
}
