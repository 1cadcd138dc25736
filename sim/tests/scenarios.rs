//! End-to-end runs of the simulation: small worlds of production actors through churn and
//! faults, checked by the oracle, replayed for determinism, and a deliberately injected bug
//! that the oracle must catch.

use std::time::Duration;

use sim::{NodeFault, Scenario, Step};

/// 1 cluster x 5 nodes x 3 pods: pod churn, policy churn, service churn, pod churn.
fn churn() -> Scenario {
    Scenario::new()
        .name("churn")
        .clusters(1)
        .nodes(5)
        .pods_per_node(3)
        .step(Step::PodChurn {
            rate: 4.0,
            duration: Duration::from_secs(10),
        })
        .step(Step::PolicyChurn {
            rate: 2.0,
            duration: Duration::from_secs(10),
        })
        .step(Step::ServiceChurn {
            rate: 2.0,
            duration: Duration::from_secs(10),
            global: false,
        })
        .step(Step::PodChurn {
            rate: 4.0,
            duration: Duration::from_secs(5),
        })
}

#[test]
fn churn_passes_the_oracle_for_several_seeds() {
    for seed in [1, 2, 3] {
        let report = churn().run(seed).expect("the simulation runs");
        assert!(report.passed(), "seed {seed}:\n{report}");
        assert_eq!(report.steps.len(), 5, "setup and four steps: {report}");
        assert_eq!(report.nodes, 5);
        assert!(report.pods.created >= 15, "{report}");
        assert!(report.pods.deleted > 0, "churn deletes pods: {report}");
        assert!(report.policy_writes > 0, "{report}");
        assert_eq!(report.policy_write_failures, 0, "{report}");
        assert!(report.service_writes > 0, "{report}");
        assert_eq!(report.service_write_failures, 0, "{report}");
        assert_eq!(
            report.pods.live,
            report.pods.created - report.pods.deleted,
            "{report}"
        );
        assert!(report.kvstore_ops > 0 && report.datapath_writes > 0);
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let first = churn().run(11).expect("the simulation runs");
    let second = churn().run(11).expect("the simulation runs");
    assert!(first.passed(), "{first}");
    assert_eq!(first.final_hash, second.final_hash);
    assert_eq!(first.pods, second.pods);
    assert_eq!(first.kvstore_ops, second.kvstore_ops);
    assert_eq!(first.steps, second.steps);
    let other = churn().run(12).expect("the simulation runs");
    assert_ne!(
        (first.final_hash, first.pods),
        (other.final_hash, other.pods),
        "another seed makes other choices"
    );
}

#[test]
fn outage_lease_expiry_partitions_and_node_loss_pass_in_two_clusters() {
    let scenario = Scenario::new()
        .name("faults")
        .clusters(2)
        .nodes(3)
        .pods_per_node(2)
        .step(Step::ScaleUp { nodes: 1 })
        .step(Step::KvstoreOutage {
            duration: Duration::from_secs(20),
        })
        .step(Step::LeaseExpiry { nodes: 2 })
        .step(Step::NodePartition {
            nodes: 2,
            duration: Duration::from_secs(60),
        })
        .step(Step::NodePartition {
            nodes: 1,
            duration: Duration::from_secs(1200),
        })
        .step(Step::NodeLoss {
            nodes: 1,
            revoke: true,
        })
        .step(Step::NodeLoss {
            nodes: 1,
            revoke: false,
        })
        .step(Step::PodChurn {
            rate: 4.0,
            duration: Duration::from_secs(5),
        });
    for seed in [5, 6] {
        let report = scenario.run(seed).expect("the simulation runs");
        assert!(report.passed(), "seed {seed}:\n{report}");
        // Setup, scale-up, the outage's and the short partition's checks during and after
        // them, and five more steps.
        assert_eq!(report.steps.len(), 11, "{report}");
        assert_eq!(report.nodes, 2 * 4 - 2, "{report}");
        assert!(report.pods.lost > 0, "the lost nodes had pods: {report}");
        // A lease that runs out takes its keys along only after the TTL.
        let expiry = report
            .steps
            .iter()
            .find(|s| s.name.contains("lease expires"))
            .expect("the node loss step is reported");
        assert!(expiry.converged_ms > 60_000.0, "{report}");
    }
}

#[test]
fn a_dropped_ipcache_upsert_is_caught_with_its_seed() {
    let scenario = Scenario::new()
        .name("dropped-upsert")
        .clusters(1)
        .nodes(3)
        .pods_per_node(3)
        .fault(0, 1, NodeFault::DropUpsertIp { nth: 2 });
    let report = scenario.run(42).expect("the simulation runs");
    let failure = report
        .failure
        .as_ref()
        .expect("the oracle catches the lost upsert");
    assert_eq!(failure.seed, 42);
    assert_eq!(failure.step, "setup");
    // The pod is missing on every node: its own never had it, the others never heard of it.
    assert_eq!(failure.total, 3, "{failure}");
    assert!(
        failure
            .violations
            .iter()
            .all(|v| v.what.starts_with("ipcache lacks")),
        "{failure}"
    );
    let text = failure.to_string();
    assert!(text.contains("replay with --seed 42"), "{text}");
    // Without the fault the same seed passes: the oracle flags the bug, not the scenario.
    let clean = Scenario {
        faults: Vec::new(),
        ..scenario
    };
    let report = clean.run(42).expect("the simulation runs");
    assert!(report.passed(), "{report}");
}

#[test]
fn a_dropped_identity_announcement_is_caught_by_the_policy_oracle() {
    // Node 0's policy repository never hears of the first pod identity it should learn
    // (announcement 1 carries the reserved identities); once a policy selects that identity
    // as a peer, node 0's policy maps lack its entries.
    let scenario = Scenario::new()
        .name("dropped-identity")
        .clusters(1)
        .nodes(3)
        .pods_per_node(4)
        .apps(2)
        .fault(0, 0, NodeFault::DropIdentitiesAdded { nth: 2 })
        .step(Step::PolicyChurn {
            rate: 2.0,
            duration: Duration::from_secs(10),
        });
    let report = scenario.run(7).expect("the simulation runs");
    let failure = report
        .failure
        .as_ref()
        .expect("the oracle catches the lost identity");
    assert_eq!(failure.seed, 7);
    // Without policies nothing selects peers, so the loss shows only once policies do.
    assert!(failure.step.starts_with("policy-churn"), "{failure}");
    assert!(
        failure
            .violations
            .iter()
            .all(|v| v.node.as_deref() == Some("cluster-1-node-0")
                && v.what.contains("policy map lacks")),
        "{failure}"
    );
    let clean = Scenario {
        faults: Vec::new(),
        ..scenario
    };
    assert!(clean.run(7).expect("the simulation runs").passed());
}

#[test]
fn a_mesh_of_three_clusters_survives_churn_storm_loss_and_disconnects() {
    let scenario = Scenario::new()
        .name("mesh")
        .clusters(3)
        .nodes(5)
        .pods_per_node(2)
        .mesh(true)
        .step(Step::PodChurn {
            rate: 4.0,
            duration: Duration::from_secs(5),
        })
        .step(Step::PolicyChurn {
            rate: 2.0,
            duration: Duration::from_secs(5),
        })
        .step(Step::ServiceChurn {
            rate: 2.0,
            duration: Duration::from_secs(10),
            global: true,
        })
        .step(Step::IdentityStorm { pods: 20 })
        .step(Step::ClusterDisconnect {
            duration: Duration::from_secs(60),
        })
        .step(Step::ClusterDisconnect {
            duration: Duration::from_secs(600),
        })
        .step(Step::NodeLoss {
            nodes: 1,
            revoke: true,
        })
        .step(Step::KvstoreOutage {
            duration: Duration::from_secs(20),
        });
    let first = scenario.run(1).expect("the simulation runs");
    assert!(first.passed(), "{first}");
    assert_eq!(first.nodes, 14, "{first}");
    assert!(first.pods.created >= 30 + 20, "{first}");
    // The long disconnect is past the drain timeout: the others dropped the cluster's state
    // (that took the 5-minute timeout) and imported it again after the return.
    let drained = first
        .steps
        .iter()
        .find(|s| s.name.starts_with("cluster-disconnect 600s (during"))
        .expect("the check during the long disconnect is reported");
    assert!(drained.converged_ms >= 300_000.0, "{first}");
    let again = scenario.run(1).expect("the simulation runs");
    assert_eq!(first.final_hash, again.final_hash);
    assert_eq!(first.steps, again.steps);
    let other = scenario.run(2).expect("the simulation runs");
    assert!(other.passed(), "{other}");
}
