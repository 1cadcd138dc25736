//! Scenarios as data: the size of the simulated world, the faults in it, and the steps that
//! change it, built with a builder, picked by name ([`Scenario::builtin`]) or read from a YAML
//! file ([`Scenario::from_file`]).
//!
//! Every step ends at a quiescent point (virtual time runs until nothing changes any more),
//! where the oracle checks every node. A seed fixes every random choice a step makes.
//!
//! # The file format
//! A YAML mapping with the fields of [`Scenario`] (every one optional, defaults as
//! [`Scenario::default`]; the name defaults to the file's stem), durations as `humantime`
//! strings, and `steps` as a list of mappings whose `kind` names the [`Step`] in kebab case:
//!
//! ```yaml
//! clusters: 3
//! nodes: 5
//! pods_per_node: 2
//! mesh: true
//! lease_ttl: 15m
//! kvstore_faults: { latency_jitter: 5ms, error_rate: 0.01, exempt: [revoke-lease] }
//! datapath_faults: { error_rate: 0.05 }
//! steps:
//!   - { kind: pod-churn, rate: 4, duration: 10s }
//!   - { kind: service-churn, rate: 2, duration: 10s, global: true }
//!   - { kind: kvstore-restart, duration: 5s }
//!   - { kind: watch-event-loss, nodes: 2, rate: 4, duration: 10s }
//! faults:
//!   - { cluster: 0, node: 1, fault: { kind: drop-upsert-ip, nth: 2 } }
//! ```
//!
//! Unknown fields and kinds are refused, naming the field and the file.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::KvstoreFaults;
use crate::fault::{DatapathFaults, NodeFault};
use crate::world::SimError;

/// One change to the simulated world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Step {
    /// Adds `nodes` nodes to every cluster, each with the scenario's pods per node.
    ScaleUp { nodes: usize },
    /// For `duration` of virtual time, `rate` times per second: create a pod on a random
    /// node, or delete a random pod.
    PodChurn {
        rate: f64,
        #[serde(with = "crate::duration")]
        duration: Duration,
    },
    /// For `duration`, `rate` times per second: write, rewrite or delete a policy document in
    /// a random cluster's kvstore (`cilium/config/policies/v1`).
    PolicyChurn {
        rate: f64,
        #[serde(with = "crate::duration")]
        duration: Duration,
    },
    /// For `duration`, `rate` times per second: write, rewrite or delete a service (one TCP
    /// frontend, up to three live pods as backends) in a random cluster's kvstore
    /// (`cilium/state/services/v1`). With `global`, each write also picks at random whether
    /// the service is global (`includeExternal`) and whether it is shared with the mesh: a
    /// global service balances, on every node, to the backends of the same service of every
    /// cluster that shares it.
    ServiceChurn {
        rate: f64,
        #[serde(with = "crate::duration")]
        duration: Duration,
        #[serde(default)]
        global: bool,
    },
    /// Creates `pods` pods on random nodes, each with an `app` label of its own, so every one
    /// of them allocates a new identity cluster-wide (a label that changes on every pod).
    IdentityStorm { pods: usize },
    /// Loses `nodes` random nodes (never the last of a cluster): their actors stop and they
    /// leave the kvstore; their lease is revoked (`revoke`) or left to expire.
    NodeLoss { nodes: usize, revoke: bool },
    /// A random cluster's kvstore does not answer for `duration`. The oracle checks the
    /// datapaths during the outage too: nothing may be flushed.
    KvstoreOutage {
        #[serde(with = "crate::duration")]
        duration: Duration,
    },
    /// `nodes` random nodes lose their cluster's kvstore for `duration` (requests fail,
    /// watches stall); the rest of the cluster goes on. Shorter than half the lease TTL, the
    /// oracle checks during the cut that nothing changed anywhere; longer, the nodes' keys
    /// expire meanwhile and must all be back after the return.
    NodePartition {
        nodes: usize,
        #[serde(with = "crate::duration")]
        duration: Duration,
    },
    /// The leases of `nodes` random nodes are revoked under them (a partition longer than the
    /// TTL): each node takes a new lease and publishes everything again.
    LeaseExpiry { nodes: usize },
    /// With a mesh: a random cluster's kvstore is cut off from the other clusters' nodes for
    /// `duration` (its own nodes still reach it), then comes back. Up to 4 minutes the others
    /// keep what they imported; from about 7 minutes on (past the 5-minute drain timeout) they
    /// have dropped it. Both are checked during the cut and after the return.
    ClusterDisconnect {
        #[serde(with = "crate::duration")]
        duration: Duration,
    },
    /// A random cluster's kvstore restarts: it does not answer for `duration`, and every
    /// watch its own nodes had open ends with an error (their consumers re-list). Data and
    /// leases survive, as etcd's do; leases get a fresh TTL when it is back. Nothing may be
    /// flushed from any datapath meanwhile. Other clusters' mesh connections see an outage
    /// and resume their watches.
    KvstoreRestart {
        #[serde(with = "crate::duration")]
        duration: Duration,
    },
    /// `nodes` random nodes lose every watch event while pods churn at `rate` per second for
    /// `duration`; then (with `resync`, the default) the backend ends every watch that lost
    /// an event with a compaction error, as etcd forces a re-list on a watcher that fell
    /// behind, and the nodes must converge. Without `resync` the events stay lost: the oracle
    /// must catch it (a deliberately injected bug).
    WatchEventLoss {
        nodes: usize,
        rate: f64,
        #[serde(with = "crate::duration")]
        duration: Duration,
        #[serde(default = "resync_by_default")]
        resync: bool,
    },
    /// Lets virtual time pass.
    Wait {
        #[serde(with = "crate::duration")]
        duration: Duration,
    },
}

impl Step {
    /// A short name for progress lines and the report.
    pub fn name(&self) -> String {
        match self {
            Step::ScaleUp { nodes } => format!("scale-up +{nodes} nodes/cluster"),
            Step::PodChurn { rate, duration } => {
                format!("pod-churn {rate}/s for {}s", duration.as_secs_f64())
            }
            Step::PolicyChurn { rate, duration } => {
                format!("policy-churn {rate}/s for {}s", duration.as_secs_f64())
            }
            Step::ServiceChurn {
                rate,
                duration,
                global,
            } => format!(
                "service-churn {rate}/s for {}s{}",
                duration.as_secs_f64(),
                if *global { " (global)" } else { "" }
            ),
            Step::IdentityStorm { pods } => format!("identity-storm {pods} pods"),
            Step::NodeLoss { nodes, revoke } => format!(
                "node-loss {nodes} ({})",
                if *revoke {
                    "lease revoked"
                } else {
                    "lease expires"
                }
            ),
            Step::KvstoreOutage { duration } => {
                format!("kvstore-outage {}s", duration.as_secs_f64())
            }
            Step::LeaseExpiry { nodes } => format!("lease-expiry {nodes}"),
            Step::NodePartition { nodes, duration } => {
                format!("node-partition {nodes} for {}s", duration.as_secs_f64())
            }
            Step::ClusterDisconnect { duration } => {
                format!("cluster-disconnect {}s", duration.as_secs_f64())
            }
            Step::KvstoreRestart { duration } => {
                format!("kvstore-restart {}s", duration.as_secs_f64())
            }
            Step::WatchEventLoss {
                nodes,
                rate,
                duration,
                resync,
            } => format!(
                "watch-event-loss {nodes} nodes, churn {rate}/s for {}s{}",
                duration.as_secs_f64(),
                if *resync { "" } else { " (no resync)" }
            ),
            Step::Wait { duration } => format!("wait {}s", duration.as_secs_f64()),
        }
    }
}

fn resync_by_default() -> bool {
    true
}

/// A fault placed in one node's wiring from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAt {
    pub cluster: usize,
    /// The node's index in its cluster, in start order.
    pub node: usize,
    pub fault: NodeFault,
}

/// A simulated world and what happens to it. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub name: String,
    pub clusters: usize,
    /// Nodes per cluster at the start.
    pub nodes: usize,
    pub pods_per_node: usize,
    /// How many distinct `app` labels pods get (one identity each per cluster).
    pub apps: u32,
    /// Every node runs ClusterMesh with every other cluster.
    pub mesh: bool,
    #[serde(with = "crate::duration")]
    pub lease_ttl: Duration,
    /// Virtual time each kvstore request of a node takes.
    #[serde(with = "crate::duration")]
    pub kvstore_latency: Duration,
    /// How long nothing may change for a point to count as quiescent.
    #[serde(with = "crate::duration")]
    pub quiet: Duration,
    /// How long a step may take to become quiescent before it counts as a violation.
    #[serde(with = "crate::duration")]
    pub settle_limit: Duration,
    /// How often (virtual time) the continuous invariants are checked while steps run; zero
    /// checks them only at quiescent points.
    #[serde(with = "crate::duration")]
    pub invariant_interval: Duration,
    /// How many nodes' datapaths each continuous check reads (in turn), which bounds its cost
    /// in large worlds.
    pub invariant_nodes: usize,
    /// Faults of every node's kvstore connection, all run long.
    pub kvstore_faults: KvstoreFaults,
    /// Faults of every node's datapath, all run long.
    pub datapath_faults: DatapathFaults,
    pub steps: Vec<Step>,
    pub faults: Vec<FaultAt>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "custom".to_owned(),
            clusters: 1,
            nodes: 3,
            pods_per_node: 2,
            apps: 4,
            mesh: false,
            lease_ttl: kvstore::lease::DEFAULT_LEASE_TTL,
            kvstore_latency: Duration::from_millis(1),
            quiet: Duration::from_secs(30),
            settle_limit: Duration::from_secs(3600),
            invariant_interval: Duration::from_secs(5),
            invariant_nodes: 4,
            kvstore_faults: KvstoreFaults::default(),
            datapath_faults: DatapathFaults::default(),
            steps: Vec::new(),
            faults: Vec::new(),
        }
    }
}

/// The names [`Scenario::builtin`] knows.
pub const BUILTIN_SCENARIOS: [&str; 16] = [
    "smoke",
    "scale-up",
    "pod-churn",
    "policy-churn",
    "service-churn",
    "identity-storm",
    "node-loss",
    "kvstore-outage",
    "lease-expiry",
    "node-partition",
    "cluster-disconnect",
    "global-services",
    "kvstore-restart",
    "watch-event-loss",
    "flaky",
    "all",
];

impl Scenario {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn clusters(mut self, clusters: usize) -> Self {
        self.clusters = clusters;
        self
    }

    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    pub fn pods_per_node(mut self, pods: usize) -> Self {
        self.pods_per_node = pods;
        self
    }

    pub fn apps(mut self, apps: u32) -> Self {
        self.apps = apps;
        self
    }

    pub fn mesh(mut self, mesh: bool) -> Self {
        self.mesh = mesh;
        self
    }

    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    pub fn kvstore_latency(mut self, latency: Duration) -> Self {
        self.kvstore_latency = latency;
        self
    }

    pub fn quiet(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    pub fn settle_limit(mut self, limit: Duration) -> Self {
        self.settle_limit = limit;
        self
    }

    pub fn kvstore_faults(mut self, faults: KvstoreFaults) -> Self {
        self.kvstore_faults = faults;
        self
    }

    pub fn datapath_faults(mut self, faults: DatapathFaults) -> Self {
        self.datapath_faults = faults;
        self
    }

    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    pub fn fault(mut self, cluster: usize, node: usize, fault: NodeFault) -> Self {
        self.faults.push(FaultAt {
            cluster,
            node,
            fault,
        });
        self
    }

    /// Reads a scenario from YAML text (see the module docs); `origin` names the text in
    /// errors (a file name).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, SimError> {
        serde_yaml_ng::from_str(text).map_err(|error| SimError::ScenarioFile {
            path: origin.to_owned(),
            message: error.to_string(),
        })
    }

    /// Reads a scenario file; the scenario is named after the file's stem unless it names
    /// itself.
    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| SimError::ScenarioFile {
            path: origin.clone(),
            message: error.to_string(),
        })?;
        let mut scenario = Self::from_yaml(&text, &origin)?;
        let named = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text)
            .ok()
            .is_some_and(|value| value.get("name").is_some());
        if !named && let Some(stem) = path.file_stem() {
            scenario.name = stem.to_string_lossy().into_owned();
        }
        Ok(scenario)
    }

    /// The scenario as YAML, in the format [`Scenario::from_yaml`] reads.
    pub fn to_yaml(&self) -> Result<String, SimError> {
        serde_yaml_ng::to_string(self).map_err(|error| SimError::ScenarioFile {
            path: self.name.clone(),
            message: error.to_string(),
        })
    }

    /// A scenario by name (see [`BUILTIN_SCENARIOS`]) over the given world size; `None` for
    /// an unknown name. `cluster-disconnect` turns the mesh on (with two clusters at least).
    pub fn builtin(
        name: &str,
        clusters: usize,
        nodes: usize,
        pods_per_node: usize,
    ) -> Option<Self> {
        let base = Scenario::new()
            .name(name)
            .clusters(clusters)
            .nodes(nodes)
            .pods_per_node(pods_per_node);
        let secs = Duration::from_secs;
        let pod_churn = Step::PodChurn {
            rate: 2.0,
            duration: secs(10),
        };
        let policy_churn = Step::PolicyChurn {
            rate: 1.0,
            duration: secs(10),
        };
        let service_churn = Step::ServiceChurn {
            rate: 1.0,
            duration: secs(10),
            global: false,
        };
        let scenario = match name {
            "smoke" => base.step(pod_churn).step(policy_churn).step(service_churn),
            "scale-up" => base.step(Step::ScaleUp {
                nodes: nodes.max(1),
            }),
            "pod-churn" => base.step(Step::PodChurn {
                rate: 5.0,
                duration: secs(60),
            }),
            "policy-churn" => base.step(Step::PolicyChurn {
                rate: 2.0,
                duration: secs(60),
            }),
            "service-churn" => base.step(Step::ServiceChurn {
                rate: 2.0,
                duration: secs(60),
                global: false,
            }),
            "global-services" => base
                .clusters(clusters.max(2))
                .mesh(true)
                .step(pod_churn.clone())
                .step(Step::ServiceChurn {
                    rate: 2.0,
                    duration: secs(30),
                    global: true,
                })
                .step(Step::ClusterDisconnect {
                    duration: secs(600),
                })
                .step(pod_churn.clone()),
            "kvstore-restart" => base
                .step(Step::KvstoreRestart { duration: secs(5) })
                .step(pod_churn.clone())
                .step(Step::KvstoreRestart { duration: secs(60) })
                .step(policy_churn.clone()),
            "watch-event-loss" => base.step(Step::WatchEventLoss {
                nodes: 2,
                rate: 2.0,
                duration: secs(20),
                resync: true,
            }),
            "flaky" => base
                .kvstore_faults(KvstoreFaults {
                    latency_jitter: Duration::from_millis(20),
                    error_rate: 0.02,
                    exempt: Vec::new(),
                })
                .datapath_faults(DatapathFaults { error_rate: 0.05 })
                .step(pod_churn.clone())
                .step(policy_churn.clone())
                .step(service_churn.clone()),
            "identity-storm" => base
                .step(policy_churn.clone())
                .step(Step::IdentityStorm {
                    pods: nodes.saturating_mul(clusters).max(1) * 4,
                })
                .step(pod_churn.clone()),
            "node-loss" => base
                .step(Step::NodeLoss {
                    nodes: 1,
                    revoke: true,
                })
                .step(Step::NodeLoss {
                    nodes: 1,
                    revoke: false,
                }),
            "kvstore-outage" => base
                .step(Step::KvstoreOutage { duration: secs(30) })
                .step(pod_churn),
            "lease-expiry" => base.step(Step::LeaseExpiry { nodes: 1 }).step(pod_churn),
            "node-partition" => base
                .step(Step::NodePartition {
                    nodes: 1,
                    duration: secs(60),
                })
                .step(Step::NodePartition {
                    nodes: 1,
                    duration: secs(1200),
                })
                .step(pod_churn.clone()),
            "cluster-disconnect" => base
                .clusters(clusters.max(2))
                .mesh(true)
                .step(Step::ClusterDisconnect { duration: secs(60) })
                .step(Step::ClusterDisconnect {
                    duration: secs(600),
                })
                .step(pod_churn),
            "all" => base
                .step(Step::ScaleUp { nodes: 1 })
                .step(pod_churn.clone())
                .step(policy_churn)
                .step(service_churn)
                .step(Step::IdentityStorm {
                    pods: nodes.saturating_mul(clusters).max(1),
                })
                .step(Step::KvstoreOutage { duration: secs(30) })
                .step(Step::LeaseExpiry { nodes: 1 })
                .step(Step::NodePartition {
                    nodes: 1,
                    duration: secs(60),
                })
                .step(Step::NodeLoss {
                    nodes: 1,
                    revoke: true,
                })
                .step(Step::NodeLoss {
                    nodes: 1,
                    revoke: false,
                })
                .step(pod_churn),
            _ => return None,
        };
        Some(scenario)
    }
}
