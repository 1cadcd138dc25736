//! Where a cluster of the lab keeps the test's policies and services. A lab with etcd gets
//! them through the cluster CLI (`cilium policy apply`, `cilium service apply` in the
//! underlay, as a user would, and as the demo does); a lab without etcd (`--kvstore memory`)
//! through every node agent's REST API (`cilium-dbg policy import`, `cilium-dbg service
//! update`), where the agent holds them in memory.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::Path;

use super::scenarios::{SERVICES, TestService};
use super::{ConnectivityError, Lab, LabCluster, NAMESPACE};
use crate::api;
use crate::lab::LabError;
use crate::lab::state::NodeRecord;
use crate::lab::sys;

/// How a cluster's desired state is written.
pub(super) enum Store {
    /// The cluster's etcd, through `cilium --kvstore-opt OPT`.
    Etcd { kvstore_opt: String },
    /// Each node agent of the cluster, through its API socket.
    Agents,
}

/// Applies the policy documents of `file` to the cluster.
pub(super) fn apply_policy(
    lab: &Lab,
    cluster: &LabCluster,
    file: &Path,
) -> Result<(), ConnectivityError> {
    let file = file.display().to_string();
    match &cluster.store {
        Store::Etcd { kvstore_opt } => cilium(
            lab,
            &["policy", "apply", "--kvstore-opt", kvstore_opt, "-f", &file],
        )
        .map(drop),
        Store::Agents => {
            for node in &cluster.record.nodes {
                dbg(lab, node, &["policy", "import", &file])?;
            }
            Ok(())
        }
    }
}

/// Deletes policy `name` of [`NAMESPACE`] wherever the cluster holds it.
pub(super) fn delete_policy(
    lab: &Lab,
    cluster: &LabCluster,
    name: &str,
) -> Result<(), ConnectivityError> {
    match &cluster.store {
        Store::Etcd { kvstore_opt } => cilium(
            lab,
            &[
                "policy",
                "delete",
                "--kvstore-opt",
                kvstore_opt,
                "-n",
                NAMESPACE,
                name,
            ],
        )
        .map(drop),
        Store::Agents => {
            for node in &cluster.record.nodes {
                if node_policies(lab, node)?.contains(name) {
                    dbg(
                        lab,
                        node,
                        &["policy", "delete", name, "--namespace", NAMESPACE],
                    )?;
                }
            }
            Ok(())
        }
    }
}

/// The names of the cluster's policies of [`NAMESPACE`].
pub(super) fn policies(lab: &Lab, cluster: &LabCluster) -> Result<Vec<String>, ConnectivityError> {
    match &cluster.store {
        Store::Etcd { kvstore_opt } => {
            let out = cilium(
                lab,
                &["policy", "list", "--kvstore-opt", kvstore_opt, "-o", "json"],
            )?;
            Ok(json_list(&out, "`cilium policy list -o json`")?
                .iter()
                .filter(|e| e.get("namespace").and_then(|n| n.as_str()) == Some(NAMESPACE))
                .filter_map(|e| e.get("name").and_then(|n| n.as_str()).map(str::to_owned))
                .collect())
        }
        Store::Agents => {
            let mut names = BTreeSet::new();
            for node in &cluster.record.nodes {
                names.extend(node_policies(lab, node)?);
            }
            Ok(names.into_iter().collect())
        }
    }
}

/// The names of the policies of [`NAMESPACE`] the agent of `node` holds.
fn node_policies(lab: &Lab, node: &NodeRecord) -> Result<BTreeSet<String>, ConnectivityError> {
    let out = dbg(lab, node, &["policy", "get", "-o", "json"])?;
    let decode = |reason: String| LabError::Decode {
        what: "`cilium-dbg policy get -o json`".to_owned(),
        reason,
    };
    let policy: api::Policy = serde_json::from_str(&out).map_err(|e| decode(e.to_string()))?;
    let rules: Vec<serde_json::Value> =
        serde_json::from_str(&policy.policy).map_err(|e| decode(e.to_string()))?;
    Ok(rule_names_of_namespace(&rules))
}

/// The policy names of the rules whose labels put them in [`NAMESPACE`] (the agent labels an
/// imported rule with `io.cilium.k8s.policy.name` and `...namespace`).
fn rule_names_of_namespace(rules: &[serde_json::Value]) -> BTreeSet<String> {
    let label = |rule: &serde_json::Value, key: &str| {
        rule.get("labels")?
            .as_array()?
            .iter()
            .find(|l| l.get("key").and_then(|k| k.as_str()) == Some(key))?
            .get("value")?
            .as_str()
            .map(str::to_owned)
    };
    rules
        .iter()
        .filter(|r| label(r, "io.cilium.k8s.policy.namespace").as_deref() == Some(NAMESPACE))
        .filter_map(|r| label(r, "io.cilium.k8s.policy.name"))
        .collect()
}

/// Writes `service` with `backends` (the cluster's own) into the cluster.
pub(super) fn apply_service(
    lab: &Lab,
    cluster: &LabCluster,
    service: &TestService,
    backends: &[SocketAddrV4],
) -> Result<(), ConnectivityError> {
    let frontend = service.frontend.to_string();
    let backends = backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match &cluster.store {
        Store::Etcd { kvstore_opt } => {
            let id = cluster.record.id.to_string();
            let mut args = vec![
                "service",
                "apply",
                "--kvstore-opt",
                kvstore_opt,
                "--cluster-name",
                &cluster.record.name,
                "--cluster-id",
                &id,
                "--namespace",
                NAMESPACE,
                "--name",
                service.name,
                "--frontend",
                &frontend,
                "--backends",
                &backends,
            ];
            if service.global {
                args.push("--global");
            }
            cilium(lab, &args).map(drop)
        }
        Store::Agents => {
            for node in &cluster.record.nodes {
                let used: BTreeSet<u16> = agent_services(lab, node)?
                    .iter()
                    .map(|s| s.spec.id)
                    .collect();
                let id = (1..=u16::MAX)
                    .find(|id| !used.contains(id))
                    .ok_or_else(|| ConnectivityError::Cli {
                        command: format!("cilium-dbg service update ({})", service.name),
                        output: format!("agent {} has no free service id", node.name),
                    })?
                    .to_string();
                dbg(
                    lab,
                    node,
                    &[
                        "service",
                        "update",
                        "--id",
                        &id,
                        "--frontend",
                        &frontend,
                        "--backends",
                        &backends,
                    ],
                )?;
            }
            Ok(())
        }
    }
}

/// Removes every test service from the cluster; how many it removed.
pub(super) fn remove_services(lab: &Lab, cluster: &LabCluster) -> Result<usize, ConnectivityError> {
    match &cluster.store {
        Store::Etcd { kvstore_opt } => {
            let out = cilium(
                lab,
                &[
                    "service",
                    "list",
                    "--kvstore-opt",
                    kvstore_opt,
                    "--cluster-name",
                    &cluster.record.name,
                    "-o",
                    "json",
                ],
            )?;
            let names = services_of_namespace(
                &json_list(&out, "`cilium service list -o json`")?,
                &cluster.record.name,
            );
            for name in &names {
                cilium(
                    lab,
                    &[
                        "service",
                        "delete",
                        "--kvstore-opt",
                        kvstore_opt,
                        "--cluster-name",
                        &cluster.record.name,
                        "-n",
                        NAMESPACE,
                        name,
                    ],
                )?;
            }
            Ok(names.len())
        }
        Store::Agents => {
            let mut removed = 0;
            for node in &cluster.record.nodes {
                for id in test_service_ids(&agent_services(lab, node)?) {
                    dbg(lab, node, &["service", "delete", &id.to_string()])?;
                    removed += 1;
                }
            }
            Ok(removed)
        }
    }
}

/// The services the agent of `node` holds.
fn agent_services(lab: &Lab, node: &NodeRecord) -> Result<Vec<api::Service>, ConnectivityError> {
    let out = dbg(lab, node, &["service", "list", "-o", "json"])?;
    serde_json::from_str(&out).map_err(|e| {
        LabError::Decode {
            what: "`cilium-dbg service list -o json`".to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// The ids of the agent's services whose frontend is one of the test's.
fn test_service_ids(services: &[api::Service]) -> Vec<u16> {
    services
        .iter()
        .filter(|s| {
            SERVICES.iter().any(|t| {
                s.spec.frontend_address.ip == *t.frontend.ip()
                    && s.spec.frontend_address.port == t.frontend.port()
            })
        })
        .map(|s| s.spec.id)
        .collect()
}

/// Parses a `cilium ... list -o json` answer.
fn json_list(out: &str, what: &str) -> Result<Vec<serde_json::Value>, ConnectivityError> {
    serde_json::from_str(out).map_err(|e| {
        LabError::Decode {
            what: what.to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// The service names of [`NAMESPACE`] among `cilium service list -o json` entries of
/// `cluster`, read from their keys (`.../<cluster>/<namespace>/<name>`), which exist even for
/// a record agents could not decode.
fn services_of_namespace(entries: &[serde_json::Value], cluster: &str) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e.get("key").and_then(|k| k.as_str()))
        .filter_map(|key| {
            let mut parts = key.rsplitn(3, '/');
            let name = parts.next()?;
            let namespace = parts.next()?;
            let prefix = parts.next()?;
            (namespace == NAMESPACE && prefix.ends_with(&format!("/{cluster}")))
                .then(|| name.to_owned())
        })
        .collect()
}

/// Runs the lab's cluster CLI in the underlay, where etcd listens; its stdout.
fn cilium(lab: &Lab, args: &[&str]) -> Result<String, ConnectivityError> {
    Ok(sys::cluster_cli(&lab.state, args)?)
}

/// Runs the lab's `cilium-dbg` against the agent of `node`; its stdout.
fn dbg(lab: &Lab, node: &NodeRecord, args: &[&str]) -> Result<String, ConnectivityError> {
    Ok(sys::agent_cli(&lab.state, node, args)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_come_from_keys_of_the_namespace_and_cluster() {
        let entries: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"key":"cilium/state/services/v1/c1/cilium-test/echo-same-node"},
                {"key":"cilium/state/services/v1/c1/default/deathstar"},
                {"key":"cilium/state/services/v1/c11/cilium-test/echo-global"},
                {"error":"no key"}]"#,
        )
        .expect("json");
        assert_eq!(services_of_namespace(&entries, "c1"), ["echo-same-node"]);
    }

    #[test]
    fn agent_rules_of_the_test_namespace_are_found_by_their_labels() {
        let label = |key: &str, value: &str| {
            let mut label = serde_json::Map::new();
            label.insert("source".into(), "k8s".into());
            label.insert("key".into(), key.into());
            label.insert("value".into(), value.into());
            serde_json::Value::Object(label)
        };
        let rules = vec![
            serde_json::json!({"labels": [
                label("io.cilium.k8s.policy.name", "all-ingress-deny"),
                label("io.cilium.k8s.policy.namespace", "cilium-test"),
            ]}),
            serde_json::json!({"labels": [
                label("io.cilium.k8s.policy.name", "rule1"),
                label("io.cilium.k8s.policy.namespace", "default"),
            ]}),
            serde_json::json!({"labels": [label("io.cilium.k8s.policy.name", "cluster-wide")]}),
            serde_json::json!({"endpointSelector": {}}),
        ];
        assert_eq!(
            rule_names_of_namespace(&rules),
            BTreeSet::from(["all-ingress-deny".to_owned()])
        );
    }

    #[test]
    fn only_services_on_test_frontends_are_removed() {
        let service = |id: u16, frontend: SocketAddrV4| api::Service {
            spec: api::ServiceSpec {
                id,
                frontend_address: api::L4Address {
                    ip: *frontend.ip(),
                    port: frontend.port(),
                    protocol: None,
                },
                backend_addresses: Vec::new(),
            },
        };
        let demo = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 96, 0, 100), 80);
        let services = [
            service(1, demo),
            service(2, SERVICES[0].frontend),
            service(3, SocketAddrV4::new(*SERVICES[1].frontend.ip(), 80)),
        ];
        assert_eq!(test_service_ids(&services), [2]);
    }
}
