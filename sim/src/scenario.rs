//! Scenarios as data: the size of the simulated world and the steps that change it, built
//! with a builder or picked by name ([`Scenario::builtin`]).
//!
//! Every step ends at a quiescent point (virtual time runs until nothing changes any more),
//! where the oracle checks every node. A seed fixes every random choice a step makes.

use std::time::Duration;

use serde::Serialize;

use crate::fault::NodeFault;

/// One change to the simulated world.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Step {
    /// Adds `nodes` nodes to every cluster, each with the scenario's pods per node.
    ScaleUp { nodes: usize },
    /// For `duration` of virtual time, `rate` times per second: create a pod on a random
    /// node, or delete a random pod.
    PodChurn { rate: f64, duration: Duration },
    /// For `duration`, `rate` times per second: write, rewrite or delete a policy document in
    /// a random cluster's kvstore (`cilium/config/policies/v1`).
    PolicyChurn { rate: f64, duration: Duration },
    /// For `duration`, `rate` times per second: write, rewrite or delete a service (one TCP
    /// frontend, up to three live pods as backends) in a random cluster's kvstore
    /// (`cilium/state/services/v1`).
    ServiceChurn { rate: f64, duration: Duration },
    /// Creates `pods` pods on random nodes, each with an `app` label of its own, so every one
    /// of them allocates a new identity cluster-wide (a label that changes on every pod).
    IdentityStorm { pods: usize },
    /// Loses `nodes` random nodes (never the last of a cluster): their actors stop and they
    /// leave the kvstore; their lease is revoked (`revoke`) or left to expire.
    NodeLoss { nodes: usize, revoke: bool },
    /// A random cluster's kvstore does not answer for `duration`. The oracle checks the
    /// datapaths during the outage too: nothing may be flushed.
    KvstoreOutage { duration: Duration },
    /// `nodes` random nodes lose their cluster's kvstore for `duration` (requests fail,
    /// watches stall); the rest of the cluster goes on. Shorter than half the lease TTL, the
    /// oracle checks during the cut that nothing changed anywhere; longer, the nodes' keys
    /// expire meanwhile and must all be back after the return.
    NodePartition { nodes: usize, duration: Duration },
    /// The leases of `nodes` random nodes are revoked under them (a partition longer than the
    /// TTL): each node takes a new lease and publishes everything again.
    LeaseExpiry { nodes: usize },
    /// With a mesh: a random cluster's kvstore is cut off from the other clusters' nodes for
    /// `duration` (its own nodes still reach it), then comes back. Up to 4 minutes the others
    /// keep what they imported; from about 7 minutes on (past the 5-minute drain timeout) they
    /// have dropped it. Both are checked during the cut and after the return.
    ClusterDisconnect { duration: Duration },
    /// Lets virtual time pass.
    Wait { duration: Duration },
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
            Step::ServiceChurn { rate, duration } => {
                format!("service-churn {rate}/s for {}s", duration.as_secs_f64())
            }
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
            Step::Wait { duration } => format!("wait {}s", duration.as_secs_f64()),
        }
    }
}

/// A fault placed in one node's wiring from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultAt {
    pub cluster: usize,
    /// The node's index in its cluster, in start order.
    pub node: usize,
    pub fault: NodeFault,
}

/// A simulated world and what happens to it. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    pub lease_ttl: Duration,
    /// Virtual time each kvstore request of a node takes.
    pub kvstore_latency: Duration,
    /// How long nothing may change for a point to count as quiescent.
    pub quiet: Duration,
    /// How long a step may take to become quiescent before it counts as a violation.
    pub settle_limit: Duration,
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
            steps: Vec::new(),
            faults: Vec::new(),
        }
    }
}

/// The names [`Scenario::builtin`] knows.
pub const BUILTIN_SCENARIOS: [&str; 12] = [
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
            }),
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
