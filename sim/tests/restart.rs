//! A kvstore restart: every watch of the restarted cluster's nodes ends with an error and is
//! opened again (a re-list), data and leases survive, and the nodes pass the oracle; the run
//! replays from its seed.
//!
//! The broken watches are counted from the log, with a global subscriber: the only test of
//! this binary, so no other test's threads see it (a scoped subscriber would race with the
//! callsite interest cache of parallel tests).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sim::{Scenario, Step};
use tracing_subscriber::layer::SubscriberExt;

/// Log events that mention a watch ended by a restart.
static BROKEN: AtomicUsize = AtomicUsize::new(0);

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// Counts the log events whose fields mention `needle`.
struct Mentions {
    needle: &'static str,
    seen: &'static AtomicUsize,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Mentions {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Find<'a>(&'a str, bool);
        impl tracing::field::Visit for Find<'_> {
            fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.1 |= format!("{value:?}").contains(self.0);
            }
        }
        let mut find = Find(self.needle, false);
        event.record(&mut find);
        if find.1 {
            self.seen.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn nodes_resync_after_kvstore_restarts_in_a_mesh() {
    let subscriber = tracing_subscriber::registry().with(Mentions {
        needle: "simulated kvstore restart",
        seen: &BROKEN,
    });
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let scenario = Scenario::new()
        .name("restart")
        .clusters(2)
        .nodes(3)
        .pods_per_node(2)
        .mesh(true)
        .step(Step::KvstoreRestart { duration: secs(5) })
        .step(Step::PodChurn {
            rate: 4.0,
            duration: secs(5),
        })
        .step(Step::KvstoreRestart { duration: secs(60) })
        .step(Step::PolicyChurn {
            rate: 2.0,
            duration: secs(5),
        });
    for seed in [1, 2] {
        let before = BROKEN.load(Ordering::Relaxed);
        let report = scenario.run(seed).expect("the simulation runs");
        let broken = BROKEN.load(Ordering::Relaxed) - before;
        assert!(report.passed(), "seed {seed}:\n{report}");
        assert_eq!(report.steps.len(), 5, "{report}");
        // Every watch of the restarted cluster's three nodes ended (identity masters twice:
        // the allocator's and the identity actor's; ipcache, nodes, policies, services),
        // twice; the other cluster's mesh connections resumed on their own.
        assert!(broken >= 2 * 3 * 6, "{broken} watches broken:\n{report}");
        if seed == 1 {
            let again = scenario.run(seed).expect("the simulation runs");
            assert_eq!(report.final_hash, again.final_hash);
            assert_eq!(report.steps, again.steps);
            assert_eq!(report.kvstore_ops, again.kvstore_ops);
        }
    }
}
