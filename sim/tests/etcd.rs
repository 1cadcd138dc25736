//! The simulation on real etcd (`sim run --kvstore etcd`): a private etcd per cluster, on
//! real time, through churn, a kvstore restart (etcd stopped and started again) and a node
//! loss, with the oracle passing.
//!
//! The library links no etcd client by default; this test builds the same provider as its
//! `etcd` feature from the same file, over its own dev-dependency (kvstore with `etcd` and
//! `test-util`), so that `cargo test` runs it without features. It needs an `etcd` binary
//! (PATH or ETCD_BIN), as the kvstore crate's etcd tests do.

use std::time::Duration;

// The included module reaches the seam as `super::external`, as it does inside the library.
use sim::external;
use sim::{Scenario, Step};

#[path = "../src/etcd.rs"]
mod etcd;

#[test]
fn churn_a_restart_and_a_node_loss_pass_the_oracle_on_etcd() {
    let secs = Duration::from_secs;
    let scenario = Scenario::new()
        .name("etcd")
        .clusters(2)
        .nodes(3)
        .pods_per_node(2)
        // Real time: a short quiet period and a short lease keep the run to seconds.
        .quiet(Duration::from_secs(2))
        .lease_ttl(secs(10))
        .step(Step::PodChurn {
            rate: 4.0,
            duration: secs(2),
        })
        .step(Step::PolicyChurn {
            rate: 4.0,
            duration: secs(2),
        })
        .step(Step::ServiceChurn {
            rate: 4.0,
            duration: secs(2),
            global: false,
        })
        .step(Step::KvstoreRestart { duration: secs(1) })
        .step(Step::NodeLoss {
            nodes: 1,
            revoke: true,
        })
        .step(Step::PodChurn {
            rate: 4.0,
            duration: secs(2),
        });
    let report = scenario
        .run_on(1, &etcd::PrivateEtcd)
        .expect("the simulation runs on etcd");
    assert!(report.passed(), "{report}");
    assert_eq!(report.nodes, 5, "{report}");
    assert!(report.pods.created >= 12, "{report}");
    assert!(
        report.policy_writes > 0 && report.service_writes > 0,
        "{report}"
    );
    // Real time: the run took about as long as it says it did.
    assert!(report.wall_secs >= report.virtual_secs * 0.5, "{report}");
}

#[test]
fn a_mesh_on_etcd_is_refused() {
    let scenario = Scenario::new().clusters(2).mesh(true);
    let error = scenario
        .run_on(1, &etcd::PrivateEtcd)
        .expect_err("the mesh needs memory stores");
    assert!(
        error
            .to_string()
            .contains("the mesh needs the memory kvstore"),
        "{error}"
    );
}
