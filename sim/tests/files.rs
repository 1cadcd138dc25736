//! Scenarios as data: every checked-in file under `sim/scenarios/` parses and passes the
//! oracle at a small size, the `all` file is the built-in `all`, and bad files are refused
//! with errors that name the file and the field, or the step.

use std::path::{Path, PathBuf};

use std::time::Duration;

use sim::backend::KvstoreFaults;
use sim::fault::DatapathFaults;
use sim::{BUILTIN_SCENARIOS, NodeFault, Scenario, SimError};

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sim/scenarios is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_checked_in_scenario_file_parses_and_passes_at_a_small_size() {
    let files = scenario_files();
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for expected in ["all", "flaky", "mesh"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    for file in files {
        let mut scenario = Scenario::from_file(&file)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        // Small: two nodes a cluster (one more for the node losses), two pods each.
        scenario.nodes = scenario.nodes.min(3);
        scenario.pods_per_node = scenario.pods_per_node.min(2);
        let report = scenario
            .run(1)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        assert!(report.passed(), "{}:\n{report}", file.display());
        assert_eq!(
            report.steps.len(),
            // Setup, every step, and the extra checks during outages and partitions.
            1 + scenario.steps.len() + during_checks(&scenario),
            "{}:\n{report}",
            file.display()
        );
    }
}

/// Steps that check once during their fault and once after it.
fn during_checks(scenario: &Scenario) -> usize {
    scenario
        .steps
        .iter()
        .filter(|step| match step {
            sim::Step::KvstoreOutage { .. } => true,
            sim::Step::NodePartition { duration, .. } => *duration < scenario.lease_ttl / 2,
            sim::Step::ClusterDisconnect { duration } => {
                duration.as_secs() <= 240 || duration.as_secs() >= 400
            }
            _ => false,
        })
        .count()
}

#[test]
fn the_all_file_is_the_built_in_all_scenario() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/all.yaml");
    let from_file = Scenario::from_file(&file).expect("all.yaml parses");
    let builtin = Scenario::builtin("all", 1, 5, 3).expect("a built-in");
    assert_eq!(from_file, builtin);
}

#[test]
fn every_built_in_scenario_reads_back_from_its_yaml() {
    for name in BUILTIN_SCENARIOS {
        let scenario = Scenario::builtin(name, 2, 3, 2).expect("a built-in");
        let text = scenario.to_yaml().expect("encodes");
        let back = Scenario::from_yaml(&text, name).expect("decodes");
        assert_eq!(back, scenario, "{name}:\n{text}");
    }
}

#[test]
fn faults_read_from_a_file_as_the_builder_makes_them() {
    let text = "nodes: 3\n\
                kvstore_faults: { latency_jitter: 5ms, error_rate: 0.01, exempt: [unlock] }\n\
                datapath_faults: { error_rate: 0.05 }\n\
                faults:\n\
                - { cluster: 0, node: 1, fault: { kind: drop-upsert-ip, nth: 2 } }\n\
                - { cluster: 0, node: 2, fault: { kind: drop-identities-added, nth: 3 } }\n\
                - { cluster: 0, node: 0, fault: { kind: flush-on-kvstore-loss } }\n";
    let scenario = Scenario::from_yaml(text, "inline").expect("parses");
    let built = Scenario::new()
        .nodes(3)
        .kvstore_faults(KvstoreFaults {
            latency_jitter: Duration::from_millis(5),
            error_rate: 0.01,
            exempt: vec!["unlock".to_owned()],
        })
        .datapath_faults(DatapathFaults { error_rate: 0.05 })
        .fault(0, 1, NodeFault::DropUpsertIp { nth: 2 })
        .fault(0, 2, NodeFault::DropIdentitiesAdded { nth: 3 })
        .fault(0, 0, NodeFault::FlushOnKvstoreLoss);
    assert_eq!(scenario, built);
    let back = Scenario::from_yaml(&built.to_yaml().expect("encodes"), "again").expect("decodes");
    assert_eq!(back, built);
}

fn refused(text: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).expect("written");
    match Scenario::from_file(&path) {
        Err(error @ SimError::ScenarioFile { .. }) => {
            let message = error.to_string();
            assert!(message.contains("bad.yaml"), "{message}");
            message
        }
        other => panic!("expected a scenario file error, got {other:?}"),
    }
}

#[test]
fn unknown_fields_and_step_kinds_are_refused_naming_them_and_the_file() {
    let message = refused("nodes: 3\nnodez: 4\n");
    assert!(message.contains("unknown field `nodez`"), "{message}");
    let message = refused("steps:\n  - { kind: pod-chrun, rate: 2, duration: 10s }\n");
    assert!(message.contains("unknown variant `pod-chrun`"), "{message}");
    let message = refused("steps:\n  - { kind: pod-churn, rat: 2, duration: 10s }\n");
    assert!(message.contains("unknown field `rat`"), "{message}");
    let message = refused("kvstore_faults: { error_rate: 0.1, jitter: 5ms }\n");
    assert!(message.contains("unknown field `jitter`"), "{message}");
    let message = refused("steps:\n  - { kind: wait, duration: 10 }\n");
    assert!(message.contains("the duration 10 has no unit"), "{message}");
    let message =
        refused("faults:\n  - { cluster: 0, node: 0, fault: { kind: drop-it, nth: 1 } }\n");
    assert!(message.contains("unknown variant `drop-it`"), "{message}");
}

#[test]
fn a_file_without_a_name_is_named_after_itself() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("my-world.yaml");
    std::fs::write(&path, "nodes: 2\n").expect("written");
    let scenario = Scenario::from_file(&path).expect("parses");
    assert_eq!(scenario.name, "my-world");
    assert_eq!(scenario.nodes, 2);
    assert_eq!(scenario.clusters, Scenario::default().clusters);
}

#[test]
fn invalid_steps_are_refused_naming_the_step() {
    let scenario = Scenario::from_yaml(
        "steps:\n  - { kind: wait, duration: 1s }\n  - { kind: pod-churn, rate: 0, duration: 10s }\n",
        "inline",
    )
    .expect("parses");
    let error = scenario.run(1).expect_err("a rate of zero is refused");
    let message = error.to_string();
    assert!(
        message.contains("step 2 (pod-churn 0/s for 10s)"),
        "{message}"
    );
    let scenario = Scenario::from_yaml(
        "clusters: 2\nsteps:\n  - { kind: cluster-disconnect, duration: 1m }\n",
        "inline",
    )
    .expect("parses");
    let message = scenario.run(1).expect_err("needs a mesh").to_string();
    assert!(
        message.contains("step 1 (cluster-disconnect 60s): cluster-disconnect needs a mesh"),
        "{message}"
    );
    let scenario =
        Scenario::from_yaml("kvstore_faults: { exempt: [unlok] }\n", "inline").expect("parses");
    let message = scenario.run(1).expect_err("no such request").to_string();
    assert!(message.contains("\"unlok\""), "{message}");
}
