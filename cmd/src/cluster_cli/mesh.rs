//! `cilium clustermesh status`: how the agents of this cluster see every remote cluster.
//!
//! Upstream asks Kubernetes for the agents; here the agents are named by their API sockets.
//! Each agent's `GET /healthz` carries its `cluster-mesh` status; this module folds them into
//! one line per remote cluster ("2/2 agents connected, 2/2 ready") and, with the kvstore at
//! hand, checks that this cluster publishes what remote agents need (its cluster config).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clustermesh::RemoteClusterStatus;
use serde::Serialize;

use crate::api::StatusResponse;

/// One agent's answer, or why there is none.
#[derive(Debug, Clone)]
pub struct AgentReport {
    pub socket: PathBuf,
    pub status: Result<StatusResponse, String>,
}

/// A remote cluster as every agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteSummary {
    pub name: String,
    /// Agents that answered.
    pub agents: usize,
    pub connected: usize,
    pub ready: usize,
    /// Agents that completed the initial sync of every resource.
    pub synced: usize,
    /// The largest counts any agent reports (they converge to the same numbers).
    pub num_nodes: u64,
    pub num_endpoints: u64,
    pub num_identities: u64,
    pub num_shared_services: u64,
    /// `socket: message` of agents that see the cluster as not ready.
    pub problems: Vec<String>,
}

impl RemoteSummary {
    pub fn healthy(&self) -> bool {
        self.agents > 0 && self.ready == self.agents && self.synced == self.agents
    }
}

/// The whole answer of `cilium clustermesh status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshSummary {
    /// Agents asked.
    pub agents: usize,
    /// `socket: error` of agents that did not answer or do not run ClusterMesh.
    pub unreachable: Vec<String>,
    pub clusters: Vec<RemoteSummary>,
}

impl MeshSummary {
    /// Every agent answered and sees every remote cluster ready and synced.
    pub fn healthy(&self) -> bool {
        self.unreachable.is_empty() && self.clusters.iter().all(RemoteSummary::healthy)
    }
}

/// Folds the agents' answers into one summary per remote cluster. A remote cluster that some
/// agent does not know at all counts as not connected on that agent.
pub fn summarize(reports: &[AgentReport]) -> MeshSummary {
    let mut unreachable = Vec::new();
    let mut answered: Vec<(&PathBuf, &[RemoteClusterStatus])> = Vec::new();
    for report in reports {
        match &report.status {
            Ok(status) => match &status.cluster_mesh {
                Some(mesh) => answered.push((&report.socket, &mesh.clusters)),
                None => unreachable.push(format!(
                    "{}: the agent runs without --clustermesh-config",
                    report.socket.display()
                )),
            },
            Err(error) => unreachable.push(format!("{}: {error}", report.socket.display())),
        }
    }
    let mut clusters: BTreeMap<String, RemoteSummary> = BTreeMap::new();
    for (_, remotes) in &answered {
        for remote in *remotes {
            let name = remote.name.as_str().to_owned();
            clusters
                .entry(name.clone())
                .or_insert_with(|| RemoteSummary {
                    name,
                    agents: answered.len(),
                    connected: 0,
                    ready: 0,
                    synced: 0,
                    num_nodes: 0,
                    num_endpoints: 0,
                    num_identities: 0,
                    num_shared_services: 0,
                    problems: Vec::new(),
                });
        }
    }
    for summary in clusters.values_mut() {
        for (socket, remotes) in &answered {
            let Some(remote) = remotes.iter().find(|r| r.name.as_str() == summary.name) else {
                summary
                    .problems
                    .push(format!("{}: not configured", socket.display()));
                continue;
            };
            summary.connected += usize::from(remote.connected);
            summary.ready += usize::from(remote.ready);
            let synced = remote.synced.nodes
                && remote.synced.endpoints
                && remote.synced.identities
                && remote.synced.services;
            summary.synced += usize::from(synced);
            summary.num_nodes = summary.num_nodes.max(remote.num_nodes);
            summary.num_endpoints = summary.num_endpoints.max(remote.num_endpoints);
            summary.num_identities = summary.num_identities.max(remote.num_identities);
            summary.num_shared_services =
                summary.num_shared_services.max(remote.num_shared_services);
            if !remote.ready {
                let why = remote
                    .last_failure_message
                    .clone()
                    .unwrap_or_else(|| remote.status.clone());
                summary
                    .problems
                    .push(format!("{}: {why}", socket.display()));
            }
        }
    }
    MeshSummary {
        agents: reports.len(),
        unreachable,
        clusters: clusters.into_values().collect(),
    }
}

/// The text form, one block per remote cluster, as upstream prints it.
pub fn render(summary: &MeshSummary) -> String {
    let mut out = String::new();
    let answered = summary.agents - summary.unreachable.len();
    out.push_str(&format!(
        "Agents:        {answered}/{} answered\n",
        summary.agents
    ));
    for line in &summary.unreachable {
        out.push_str(&format!("  ⚠ {line}\n"));
    }
    if summary.clusters.is_empty() {
        out.push_str("Clusters:      none configured\n");
    }
    for c in &summary.clusters {
        let mark = if c.healthy() { "✅" } else { "⚠" };
        out.push_str(&format!(
            "{mark} {}: {}/{} agents connected, {}/{} ready, {}/{} synced; {} nodes, {} \
             endpoints, {} identities, {} shared services\n",
            c.name,
            c.connected,
            c.agents,
            c.ready,
            c.agents,
            c.synced,
            c.agents,
            c.num_nodes,
            c.num_endpoints,
            c.num_identities,
            c.num_shared_services,
        ));
        for problem in &c.problems {
            out.push_str(&format!("   └ {problem}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clustermesh::RemoteClusterSynced;
    use model::identity::ClusterName;

    use super::*;
    use crate::api::{ClusterInfo, ClusterMeshStatus, PolicyStatus, SubsystemStatus};

    fn remote(name: &str, ready: bool, nodes: u64) -> RemoteClusterStatus {
        RemoteClusterStatus {
            name: ClusterName::new(name.to_owned()).unwrap(),
            connected: ready,
            ready,
            status: if ready { "ready" } else { "connecting" }.to_owned(),
            config: None,
            synced: RemoteClusterSynced {
                nodes: ready,
                endpoints: ready,
                identities: ready,
                services: ready,
            },
            num_nodes: nodes,
            num_endpoints: 4,
            num_identities: 3,
            num_shared_services: 1,
            num_failures: 0,
            last_failure: None,
            last_failure_message: (!ready).then(|| "etcd unreachable".to_owned()),
        }
    }

    fn agent(socket: &str, clusters: Option<Vec<RemoteClusterStatus>>) -> AgentReport {
        AgentReport {
            socket: PathBuf::from(socket),
            status: Ok(StatusResponse {
                cilium: SubsystemStatus::ok(""),
                kvstore: SubsystemStatus::ok(""),
                datapath: SubsystemStatus::ok(""),
                hubble: SubsystemStatus::disabled(""),
                nodes: None,
                cluster_mesh: clusters.map(|clusters| ClusterMeshStatus { clusters }),
                node_name: "n".to_owned(),
                cluster: ClusterInfo {
                    name: "c1".to_owned(),
                    id: 1,
                },
                policy: PolicyStatus {
                    revision: 1,
                    realized_revision: 1,
                    enforcement: "default".to_owned(),
                    rule_count: 0,
                },
                ipam: None,
                identity_count: 0,
                service_count: 0,
            }),
        }
    }

    #[test]
    fn every_agent_ready_is_healthy() {
        let summary = summarize(&[
            agent("/a", Some(vec![remote("c2", true, 2)])),
            agent("/b", Some(vec![remote("c2", true, 2)])),
        ]);
        assert!(summary.healthy());
        assert_eq!(summary.clusters.len(), 1);
        let c2 = &summary.clusters[0];
        assert_eq!((c2.agents, c2.connected, c2.ready, c2.synced), (2, 2, 2, 2));
        assert!(render(&summary).contains("c2: 2/2 agents connected, 2/2 ready, 2/2 synced"));
    }

    #[test]
    fn one_agent_not_ready_or_missing_the_cluster_is_reported() {
        let summary = summarize(&[
            agent(
                "/a",
                Some(vec![remote("c2", true, 2), remote("c3", true, 1)]),
            ),
            agent("/b", Some(vec![remote("c2", false, 0)])),
            AgentReport {
                socket: PathBuf::from("/c"),
                status: Err("connection refused".to_owned()),
            },
            agent("/d", None),
        ]);
        assert!(!summary.healthy());
        assert_eq!(summary.unreachable.len(), 2);
        let c2 = &summary.clusters[0];
        assert_eq!((c2.agents, c2.ready), (2, 1));
        assert_eq!(c2.problems, ["/b: etcd unreachable"]);
        let c3 = &summary.clusters[1];
        assert_eq!(c3.problems, ["/b: not configured"]);
        let text = render(&summary);
        assert!(text.contains("Agents:        2/4 answered"), "{text}");
        assert!(text.contains("/c: connection refused"), "{text}");
    }
}
