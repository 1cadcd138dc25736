//! `cilium lab status`: whether every recorded process still runs and every agent answers
//! healthy, with the addresses and commands a user needs next (Hubble through the relay).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use super::state::{KvstoreKind, LabState, NodeRecord, ProcessId, RoutingMode};
use super::{EXTERNAL_ECHO, LabError, sys};
use crate::api;

/// One recorded process.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub component: String,
    pub pid: Option<ProcessId>,
    pub running: bool,
    pub log: PathBuf,
}

/// One node's agent as its API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Option<String>,
    pub socket: PathBuf,
    pub healthy: bool,
    /// Why the node is not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The whole report (`cilium lab status -o json`).
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub name: String,
    pub dir: PathBuf,
    pub kvstore: KvstoreKind,
    pub routing: RoutingMode,
    /// Every process runs and every agent is healthy.
    pub healthy: bool,
    pub components: Vec<ComponentStatus>,
    pub nodes: Vec<NodeStatus>,
    pub pods: usize,
    pub underlay_netns: String,
    pub external_netns: String,
    /// The external echo server (`IP:PORT`).
    pub external_echo: String,
    /// hubble-relay's address inside the underlay namespace.
    pub relay: Option<String>,
    /// The command that shows the lab's flows.
    pub hubble_command: Option<String>,
}

/// Asks the agent behind `socket` for its status with `cilium-dbg`; the reason on failure.
pub fn agent_status(bin_dir: &Path, socket: &Path) -> Result<api::StatusResponse, String> {
    let dbg = bin_dir.join("cilium-dbg");
    let out = Command::new(&dbg)
        .env_remove("CILIUM_SOCK")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(["status", "-o", "json"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", dbg.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unexpected status answer: {e}"))
}

fn node_status(state: &LabState, node: &NodeRecord) -> NodeStatus {
    let (healthy, problem) = match agent_status(&state.bin_dir, &node.socket) {
        Ok(status) if status.cilium.state == "Ok" && status.ipam.is_some() => (true, None),
        Ok(status) => (
            false,
            Some(format!(
                "agent state {} {}",
                status.cilium.state, status.cilium.msg
            )),
        ),
        Err(problem) => (false, Some(problem)),
    };
    NodeStatus {
        name: node.name.clone(),
        netns: node.netns.clone(),
        ip: node.ip,
        pod_cidr: node.pod_cidr.clone(),
        socket: node.socket.clone(),
        healthy,
        problem,
    }
}

/// The status of the lab in `dir`.
pub fn status(dir: &Path) -> Result<LabStatus, LabError> {
    let state = LabState::require(dir)?;
    let components: Vec<ComponentStatus> = state
        .processes
        .iter()
        .map(|p| ComponentStatus {
            component: p.component.clone(),
            pid: p.pid,
            running: sys::record_alive(p),
            log: p.log.clone(),
        })
        .collect();
    let nodes: Vec<NodeStatus> = state.nodes().map(|n| node_status(&state, n)).collect();
    let healthy = components.iter().all(|c| c.running) && nodes.iter().all(|n| n.healthy);
    let hubble_command = state.relay.as_ref().map(|relay| {
        format!(
            "ip netns exec {} {} observe --server {relay}",
            state.underlay,
            state.bin_dir.join("hubble").display()
        )
    });
    Ok(LabStatus {
        name: state.name.clone(),
        dir: state.dir.clone(),
        kvstore: state.kvstore,
        routing: state.routing,
        healthy,
        components,
        nodes,
        pods: state.pods.len(),
        underlay_netns: state.underlay.clone(),
        external_netns: state.external.clone(),
        external_echo: EXTERNAL_ECHO.to_string(),
        relay: state.relay.clone(),
        hubble_command,
    })
}

/// The report as text for a terminal.
pub fn render(status: &LabStatus) -> String {
    let mut out = format!(
        "Lab {} in {} ({:?} kvstore, {:?} routing): {}\n\nComponents:\n",
        status.name,
        status.dir.display(),
        status.kvstore,
        status.routing,
        if status.healthy {
            "healthy"
        } else {
            "NOT healthy"
        }
    );
    for c in &status.components {
        let pid = c.pid.map_or("-".to_owned(), |p| p.to_string());
        out.push_str(&format!(
            "  {:<24} pid {:<8} {:<8} {}\n",
            c.component,
            pid,
            if c.running { "running" } else { "STOPPED" },
            c.log.display()
        ));
    }
    out.push_str("\nNodes:\n");
    for n in &status.nodes {
        out.push_str(&format!(
            "  {:<8} {:<16} pods {:<16} {}{}\n",
            n.name,
            n.ip.to_string(),
            n.pod_cidr.as_deref().unwrap_or("-"),
            if n.healthy { "healthy" } else { "NOT healthy" },
            n.problem
                .as_ref()
                .map(|p| format!(": {p}"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "\nPods: {} (cilium lab pod list)\nExternal echo server: {} in namespace {}\n",
        status.pods, status.external_echo, status.external_netns
    ));
    if let (Some(relay), Some(command)) = (&status.relay, &status.hubble_command) {
        out.push_str(&format!(
            "Hubble relay: {relay} in namespace {}\n  flows: {command}\n",
            status.underlay_netns
        ));
    }
    out
}
