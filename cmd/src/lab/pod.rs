//! `cilium lab pod`: pods made the way a container runtime makes them, a network namespace
//! plus `cilium-cni` ADD against the node's agent, with the pod's namespace, name and labels
//! in the CNI arguments; or made by a real container runtime (`--runtime podman`, see
//! [`super::podman`]) that calls `cilium-cni` itself; and `exec` into either.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

use super::state::{LabLock, LabState, NodeRecord, PodRecord, PodRuntime, ProcessRecord};
use super::up::valid_name;
use super::{LabError, podman, sys};
use crate::api;

/// What `pod create` makes.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    /// `cK-nM`.
    pub node: String,
    pub labels: BTreeMap<String, String>,
}

/// One pod as `pod list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub ip: Option<Ipv4Addr>,
    /// The security identity the agent gave the pod; `None` if the agent does not answer.
    pub identity: Option<u32>,
    pub labels: BTreeMap<String, String>,
    pub netns: String,
    /// What made the pod (`netns` or `podman`).
    pub runtime: PodRuntime,
}

/// Parses `KEY=VALUE` pod labels.
pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, LabError> {
    labels
        .iter()
        .map(|label| {
            let (key, value) = label.split_once('=').ok_or(LabError::InvalidOption {
                what: "label",
                value: label.clone(),
                reason: "expected KEY=VALUE",
            })?;
            if key.is_empty() {
                return Err(LabError::InvalidOption {
                    what: "label",
                    value: label.clone(),
                    reason: "the key is empty",
                });
            }
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The CNI container id of a pod: unique per lab, stable for DEL.
fn container_id(namespace: &str, name: &str) -> String {
    format!("lab-{namespace}-{name}")
}

/// Runs `cilium-cni COMMAND` for `pod` against `node`'s agent; its stdout, or the failure.
fn cni(
    state: &LabState,
    node: &NodeRecord,
    command: &'static str,
    pod: &PodRecord,
) -> Result<String, LabError> {
    let labels: Vec<api::LabelPair> = pod
        .labels
        .iter()
        .map(|(key, value)| api::LabelPair {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cilium",
        "type": "cilium-cni",
        "socket-path": node.socket,
        "args": {"cni": {"labels": labels}},
    });
    let plugin = state.bin_dir.join("cilium-cni");
    let failed = |output: String| LabError::Cni {
        command,
        pod: format!("{}/{}", pod.namespace, pod.name),
        output,
        log: state
            .dir
            .join("logs")
            .join(format!("agent-{}.log", node.name)),
    };
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", sys::netns_path(&pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace, pod.name
            ),
        )
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            program: plugin.display().to_string(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| failed(format!("cannot write its configuration: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("cannot wait for it: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(failed(format!(
            "{}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(stdout)
}

/// The pod's address from a CNI result (`ips[0].address`, `a.b.c.d/32`).
fn result_ip(result: &str) -> Result<Ipv4Addr, LabError> {
    let decode = |reason: String| LabError::Decode {
        what: "the CNI result".to_owned(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(result).map_err(|e| decode(e.to_string()))?;
    let address = json["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| decode(format!("no ips[0].address in {result}")))?;
    let ip = address.split('/').next().unwrap_or(address);
    ip.parse()
        .map_err(|_| decode(format!("{address:?} is not an IPv4 address")))
}

/// Creates the pod's namespace and asks the node's agent for its endpoint through CNI ADD.
pub fn create_pod(dir: &Path, spec: &PodSpec) -> Result<PodInfo, LabError> {
    valid_name("pod name", &spec.name)?;
    valid_name("namespace", &spec.namespace)?;
    let _lock = LabLock::acquire(dir)?;
    let mut state = LabState::require(dir)?;
    let node = state.node(&spec.node)?.clone();
    if state
        .pods
        .iter()
        .any(|p| p.name == spec.name && p.namespace == spec.namespace)
    {
        return Err(LabError::PodExists {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
        });
    }
    let mut pod = PodRecord {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        node: node.name.clone(),
        netns: format!("{}-pod-{}-{}", state.name, spec.namespace, spec.name),
        container_id: container_id(&spec.namespace, &spec.name),
        labels: spec.labels.clone(),
        ip: None,
        runtime: PodRuntime::Netns,
        network: None,
    };
    state.pods.push(pod.clone());
    sys::add_netns(&mut state, &pod.netns)?;
    let added = cni(&state, &node, "ADD", &pod).and_then(|out| result_ip(&out));
    let ip = match added {
        Ok(ip) => ip,
        Err(e) => {
            // Nothing half-made stays behind: the agent has no endpoint, so drop the namespace.
            let _ = cni(&state, &node, "DEL", &pod);
            sys::del_netns(&pod.netns)?;
            state.pods.retain(|p| p.container_id != pod.container_id);
            state.netns.retain(|n| *n != pod.netns);
            state.save()?;
            return Err(e);
        }
    };
    pod.ip = Some(ip);
    if let Some(slot) = state
        .pods
        .iter_mut()
        .find(|p| p.container_id == pod.container_id)
    {
        *slot = pod.clone();
    }
    state.save()?;
    let identity = endpoints(&state, &node)
        .ok()
        .and_then(|eps| identity_of(&eps, &pod));
    Ok(info(&pod, identity))
}

/// The component names of a podman pod's processes in the state file.
fn podman_components(pod: &PodRecord) -> [String; 2] {
    [
        format!("podman {}/{}", pod.namespace, pod.name),
        format!("conmon {}/{}", pod.namespace, pod.name),
    ]
}

/// Creates the pod as a container run by the lab's podman on a CNI network of its own whose
/// plugin is `cilium-cni` with the node's agent socket and the pod's labels. `command` runs in
/// the container (empty: [`podman::DEFAULT_COMMAND`], an echo server on port 80). Podman
/// passes CNI no pod namespace, so the agent puts the pod in `default`, as upstream does for
/// containers outside Kubernetes: other namespaces are refused.
pub fn create_podman_pod(
    dir: &Path,
    spec: &PodSpec,
    command: &[String],
) -> Result<PodInfo, LabError> {
    valid_name("pod name", &spec.name)?;
    if spec.namespace != "default" {
        return Err(LabError::InvalidOption {
            what: "namespace of a podman pod",
            value: spec.namespace.clone(),
            reason: "podman passes no pod namespace to CNI, so the agent puts its containers in \
                     `default`: leave out --namespace, or use --runtime netns",
        });
    }
    let _lock = LabLock::acquire(dir)?;
    let mut state = LabState::require(dir)?;
    let node = state.node(&spec.node)?.clone();
    if state
        .pods
        .iter()
        .any(|p| p.name == spec.name && p.namespace == spec.namespace)
    {
        return Err(LabError::PodExists {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
        });
    }
    let record = podman::prepare(&mut state)?;
    let network = format!("{}-{}-{}", state.name, spec.namespace, spec.name);
    let mut pod = PodRecord {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        node: node.name.clone(),
        netns: String::new(),
        container_id: String::new(),
        labels: spec.labels.clone(),
        ip: None,
        runtime: PodRuntime::Podman,
        network: Some(network.clone()),
    };
    // Recorded before podman runs: `down` removes whatever podman made even if this dies.
    state.pods.push(pod.clone());
    state.save()?;
    podman::write_network(&record, &network, &node, &pod)?;
    let log = state
        .dir
        .join("logs")
        .join(format!("pod-{}-{}.log", pod.namespace, pod.name));
    let started = podman::start(&record, &pod, &network, &log, command)
        .and_then(|id| podman::inspect(&record, &id, &network).map(|running| (id, running)));
    let (id, running) = match started {
        Ok(started) => started,
        Err(e) => {
            // Nothing half-made stays behind: `rm` runs CNI DEL for whatever ADD made.
            let _ = podman::run(&record, &["rm", "--force", "--time", "0", &pod.name]);
            let _ = std::fs::remove_file(podman::network_file(&record, &network));
            state
                .pods
                .retain(|p| p.name != pod.name || p.namespace != pod.namespace);
            state.save()?;
            return Err(match e {
                LabError::Podman { action, output, .. } => LabError::Cni {
                    command: "ADD (through podman)",
                    pod: format!("{}/{}", pod.namespace, pod.name),
                    output: format!("`podman {action}`: {output}"),
                    log: state
                        .dir
                        .join("logs")
                        .join(format!("agent-{}.log", node.name)),
                },
                other => other,
            });
        }
    };
    pod.container_id = id;
    pod.netns = running.netns.clone();
    pod.ip = Some(running.ip);
    if let Some(slot) = state
        .pods
        .iter_mut()
        .find(|p| p.name == pod.name && p.namespace == pod.namespace)
    {
        *slot = pod.clone();
    }
    state.record_netns(&running.netns)?;
    let [container, conmon] = podman_components(&pod);
    for (component, pid) in [(container, running.pid), (conmon, running.conmon)] {
        state.processes.retain(|p| p.component != component);
        state.processes.push(ProcessRecord {
            component,
            pid: Some(pid),
            start_time: sys::start_time(pid),
            log: log.clone(),
        });
    }
    state.save()?;
    let identity = endpoints(&state, &node)
        .ok()
        .and_then(|eps| identity_of(&eps, &pod));
    Ok(info(&pod, identity))
}

fn find_pod<'a>(
    state: &'a LabState,
    name: &str,
    namespace: Option<&str>,
) -> Result<&'a PodRecord, LabError> {
    let matches: Vec<&PodRecord> = state
        .pods
        .iter()
        .filter(|p| p.name == name && namespace.is_none_or(|ns| ns == p.namespace))
        .collect();
    match matches.as_slice() {
        [pod] => Ok(pod),
        [] => Err(LabError::UnknownPod {
            name: name.to_owned(),
        }),
        several => Err(LabError::AmbiguousPod {
            name: name.to_owned(),
            namespaces: several
                .iter()
                .map(|p| p.namespace.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// CNI DEL for the pod, then its namespace goes.
pub fn delete_pod(dir: &Path, name: &str, namespace: Option<&str>) -> Result<(), LabError> {
    let _lock = LabLock::acquire(dir)?;
    let mut state = LabState::require(dir)?;
    let pod = find_pod(&state, name, namespace)?.clone();
    let node = state.node(&pod.node)?.clone();
    match pod.runtime {
        PodRuntime::Netns => {
            cni(&state, &node, "DEL", &pod)?;
            sys::del_netns(&pod.netns)?;
        }
        PodRuntime::Podman => {
            let record = state.podman.clone().ok_or_else(|| LabError::NotUp {
                dir: dir.to_owned(),
            })?;
            // `rm` stops the container and runs CNI DEL, which removes its endpoint.
            podman::run(&record, &["rm", "--force", "--time", "0", &pod.name])?;
            if let Some(network) = &pod.network {
                let file = podman::network_file(&record, network);
                if file.exists() {
                    std::fs::remove_file(&file).map_err(|e| LabError::io("remove", &file, e))?;
                }
            }
            let components = podman_components(&pod);
            state
                .processes
                .retain(|p| !components.contains(&p.component));
        }
    }
    state
        .pods
        .retain(|p| p.name != pod.name || p.namespace != pod.namespace);
    state.netns.retain(|n| *n != pod.netns);
    state.save()
}

fn endpoints(state: &LabState, node: &NodeRecord) -> Result<Vec<api::Endpoint>, String> {
    let dbg = state.bin_dir.join("cilium-dbg");
    let out = Command::new(&dbg)
        .env_remove("CILIUM_SOCK")
        .arg("-H")
        .arg(format!("unix://{}", node.socket.display()))
        .args(["endpoint", "list", "-o", "json"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", dbg.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn identity_of(endpoints: &[api::Endpoint], pod: &PodRecord) -> Option<u32> {
    endpoints
        .iter()
        .find(|ep| ep.status.external_identifiers.container_id == pod.container_id)
        .map(|ep| ep.status.identity.id)
        .filter(|id| *id != 0)
}

fn info(pod: &PodRecord, identity: Option<u32>) -> PodInfo {
    PodInfo {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        node: pod.node.clone(),
        ip: pod.ip,
        identity,
        labels: pod.labels.clone(),
        netns: pod.netns.clone(),
        runtime: pod.runtime,
    }
}

/// Every pod, with the identity its node's agent reports.
pub fn list_pods(dir: &Path) -> Result<Vec<PodInfo>, LabError> {
    let state = LabState::require(dir)?;
    let mut by_node: BTreeMap<&str, Vec<api::Endpoint>> = BTreeMap::new();
    for node in state.nodes() {
        if state.pods.iter().any(|p| p.node == node.name) {
            by_node.insert(&node.name, endpoints(&state, node).unwrap_or_default());
        }
    }
    Ok(state
        .pods
        .iter()
        .map(|pod| {
            let identity = by_node
                .get(pod.node.as_str())
                .and_then(|eps| identity_of(eps, pod));
            info(pod, identity)
        })
        .collect())
}

/// `ip netns exec POD-NETNS COMMAND...` (a podman pod: `podman exec -i CONTAINER
/// COMMAND...`, inside the container), for the caller to run (or exec into).
pub fn pod_exec_command(
    dir: &Path,
    name: &str,
    namespace: Option<&str>,
    command: &[String],
) -> Result<Command, LabError> {
    let state = LabState::require(dir)?;
    let pod = find_pod(&state, name, namespace)?;
    if command.is_empty() {
        return Err(LabError::InvalidOption {
            what: "command",
            value: String::new(),
            reason: "give the command after `--`",
        });
    }
    if pod.runtime == PodRuntime::Podman {
        let record = state.podman.as_ref().ok_or_else(|| LabError::NotUp {
            dir: dir.to_owned(),
        })?;
        return Ok(podman::exec_command(record, &pod.container_id, command));
    }
    let mut exec = Command::new("ip");
    exec.args(["netns", "exec", &pod.netns]).args(command);
    Ok(exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_reject_missing_equals() {
        let labels =
            parse_labels(&["app=web".to_owned(), "tier=".to_owned()]).expect("valid labels");
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get("tier").map(String::as_str), Some(""));
        assert!(parse_labels(&["app".to_owned()]).is_err());
        assert!(parse_labels(&["=web".to_owned()]).is_err());
    }

    #[test]
    fn the_cni_result_gives_the_address() {
        let ip = result_ip(r#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.1.7/32"}]}"#)
            .expect("address");
        assert_eq!(ip, Ipv4Addr::new(10, 1, 1, 7));
        assert!(result_ip(r#"{"ips":[]}"#).is_err());
        assert!(result_ip("not json").is_err());
        assert!(result_ip(r#"{"ips":[{"address":"fd00::1/128"}]}"#).is_err());
    }
}
