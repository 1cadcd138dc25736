//! `sim run` as users call it: the JSON report, the same hash for the same seed, the error
//! for an unknown scenario, scenario files, `sim list` and the file format in `--help`.

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

#[test]
fn run_reads_a_scenario_file_and_the_size_flags_override_it() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/flaky.yaml");
    let out = sim(&[
        "run", "--file", file, "--nodes", "2", "--pods", "1", "--seed", "2", "-o", "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["scenario"], "flaky");
    assert_eq!(report["clusters"], 2);
    assert_eq!(report["nodes"], 4);
    assert_eq!(report["failure"], serde_json::Value::Null);
}

#[test]
fn a_bad_scenario_file_is_refused_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("typo.yaml");
    std::fs::write(
        &path,
        "nodes: 2\nsteps:\n  - { kind: pod-churn, rate: 2, durration: 5s }\n",
    )
    .expect("written");
    let out = sim(&["run", "--file", path.to_str().expect("a UTF-8 path")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("typo.yaml"), "{stderr}");
    assert!(stderr.contains("unknown field `durration`"), "{stderr}");
}

#[test]
fn list_names_every_built_in_and_help_documents_the_file_format() {
    let out = sim(&["list"]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    for name in sim::BUILTIN_SCENARIOS {
        assert!(listed.lines().any(|line| line == name), "{name}: {listed}");
    }
    let out = sim(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--file",
        "SCENARIO FILES",
        "kind: kvstore-restart",
        "watch-event-loss",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_without_the_feature_is_refused_with_how_to_build_it() {
    let out = sim(&["run", "--kvstore", "etcd", "--nodes", "2"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features etcd"), "{stderr}");
}
