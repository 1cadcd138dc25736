//! Privileged (root) tests of `cilium lab`, driving the `cilium` binary as a user would: `lab
//! up`, `lab status -o json`, pods through `lab pod create|list|exec|delete`, traffic between
//! pods on two nodes and to the external echo server, and `lab down` leaving no namespace,
//! mount or process behind, also after a crash lost records of processes and mounts.
//!
//! Each lab has its own temp directory and a name derived from this process's PID, so its
//! namespaces never clash with another test's. A guard runs `lab down` on drop, so a failing
//! test leaves nothing behind either.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

#[path = "common/lab.rs"]
mod lab;

use lab::{CILIUM, Lab, running};

/// How long a fresh endpoint may take to be reachable (policy and ipcache on both nodes).
const REACH: Duration = Duration::from_secs(20);

impl Lab {
    /// A probe from `pod` to `addr`, retried until it succeeds or `REACH` passes.
    fn reaches(&self, pod: &str, addr: &str) -> bool {
        let deadline = Instant::now() + REACH;
        loop {
            let out = self.probe(pod, addr);
            if out.status.success() {
                return true;
            }
            if Instant::now() >= deadline {
                eprintln!("{pod} -> {addr}: {}", String::from_utf8_lossy(&out.stderr));
                return false;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The PIDs `lab status -o json` reports.
fn pids(status: &Value) -> Vec<i32> {
    status["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["pid"].as_i64())
        .filter_map(|p| i32::try_from(p).ok())
        .collect()
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Nothing of the lab is left: no namespace with its prefix, no mount under its dir, none of
/// `pids` running, no state file.
fn assert_gone(lab: &Lab, pids: &[i32]) {
    let netns = lab.namespaces_left();
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    let mounts = lab.mounts_left();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let alive: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| running(i64::from(*p)))
        .collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    // Nor any process started with the lab's directory in its arguments (agents, etcd).
    let using_dir = lab.processes_left();
    assert!(
        using_dir.is_empty(),
        "processes of the lab left: {using_dir:?}"
    );
    assert!(!lab.dir().join("state.json").exists(), "state file left");
}

#[test]
fn privileged_lab_two_nodes_pods_world_and_down() {
    let lab = Lab::new("lt");
    let started = Instant::now();
    lab.ok(&["up", "--clusters", "1", "--nodes", "2", "--name", &lab.name]);
    let up_took = started.elapsed();

    let status = lab.json(&["status"]);
    assert_eq!(status["healthy"], true, "{status:#}");
    let components: Vec<&str> = status["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["component"].as_str())
        .collect();
    for expected in [
        "echo-server",
        "etcd c1",
        "clustermesh-apiserver c1",
        "operator c1",
        "agent c1-n1",
        "agent c1-n2",
        "hubble-relay",
    ] {
        assert!(
            components.contains(&expected),
            "{expected} missing: {components:?}"
        );
    }
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    let cidrs: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["pod_cidr"].as_str())
        .collect();
    assert_eq!(cidrs.len(), 2, "{status:#}");
    assert_ne!(cidrs[0], cidrs[1]);
    assert_eq!(status["relay"], "127.0.0.1:4245");

    // A second `up` on the same directory refuses and names the way out.
    let again = lab.run(&["up", "--name", &lab.name]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("lab down"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    lab.ok(&[
        "pod",
        "create",
        "client",
        "--node",
        "c1-n1",
        "-l",
        "app=client",
    ]);
    lab.ok(&[
        "pod",
        "create",
        "server",
        "--node",
        "c1-n2",
        "-l",
        "app=server",
    ]);
    let dup = lab.run(&["pod", "create", "client", "--node", "c1-n2"]);
    assert!(!dup.status.success(), "a second pod of the same name");
    let pods = lab.json(&["pod", "list"]);
    let pods = pods.as_array().expect("pods");
    assert_eq!(pods.len(), 2);
    let pod = |name: &str| {
        pods.iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
            .clone()
    };
    let (client, server) = (pod("client"), pod("server"));
    assert_eq!(client["node"], "c1-n1");
    assert_eq!(server["node"], "c1-n2");
    assert_eq!(client["namespace"], "default");
    let server_ip = server["ip"].as_str().expect("server ip").to_owned();
    // Each pod's address is from its own node's CIDR.
    let in_cidr = |pod: &Value, cidr: &str| {
        let net: ipnet::Ipv4Net = cidr.parse().expect("pod CIDR");
        let ip: std::net::Ipv4Addr = pod["ip"].as_str().expect("ip").parse().expect("IPv4");
        net.contains(&ip)
    };
    assert!(in_cidr(&client, cidrs[0]), "{client} not in {}", cidrs[0]);
    assert!(in_cidr(&server, cidrs[1]), "{server} not in {}", cidrs[1]);
    let (id_client, id_server) = (
        client["identity"].as_u64().expect("client identity"),
        server["identity"].as_u64().expect("server identity"),
    );
    assert!(id_client > 0 && id_server > 0);
    assert_ne!(
        id_client, id_server,
        "different labels, different identities"
    );

    let mut echo = lab.serve_in("server", 8080);
    let echo_pid = i32::try_from(echo.id()).expect("pid");
    assert!(
        lab.reaches("client", &format!("{server_ip}:8080")),
        "client on c1-n1 cannot reach server on c1-n2\n{}",
        lab.logs()
    );
    assert!(
        lab.reaches("client", "192.168.100.200:80"),
        "client cannot reach the external echo server\n{}",
        lab.logs()
    );

    let agents: Vec<i32> = status["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter(|c| {
            c["component"]
                .as_str()
                .is_some_and(|n| n.starts_with("agent "))
        })
        .filter_map(|c| c["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect();
    let rss: u64 = agents.iter().map(|p| rss_kib(*p)).sum();
    eprintln!(
        "lab up (1 cluster x 2 nodes) took {up_took:?}; agent RSS {} KiB per node",
        rss / 2
    );

    lab.ok(&["pod", "delete", "client"]);
    let left = lab.json(&["pod", "list"]);
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left:#}");
    assert!(!Path::new(&format!("/var/run/netns/{}-pod-default-client", lab.name)).exists());

    let mut all = pids(&status);
    all.push(echo_pid);
    lab.ok(&["down"]);
    // The pod's server ran in a lab namespace, so `down` stopped it too.
    let exit = echo.wait().expect("reap pod echo server");
    assert!(!exit.success(), "echo server exited by itself: {exit}");
    assert_gone(&lab, &all);
    lab.ok(&["down"]);
}

#[test]
fn privileged_lab_memory_kvstore_one_node_and_down_after_lost_pid() {
    let lab = Lab::new("lm");
    let started = Instant::now();
    lab.ok(&["up", "--kvstore", "memory", "--name", &lab.name]);
    eprintln!("lab up (memory, 1 node) took {:?}", started.elapsed());

    let status = lab.json(&["status"]);
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["kvstore"], "memory");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(1));
    let components = status["components"].to_string();
    assert!(
        !components.contains("etcd"),
        "no etcd without a kvstore: {components}"
    );
    assert!(components.contains("agent c1-n1"), "{components}");

    lab.ok(&[
        "pod", "create", "web", "--node", "c1-n1", "-n", "demo", "-l", "app=web",
    ]);
    let pods = lab.json(&["pod", "list"]);
    assert_eq!(pods[0]["namespace"], "demo");
    assert!(
        pods[0]["identity"].as_u64().is_some_and(|id| id > 0),
        "{pods:#}"
    );
    assert!(
        lab.reaches("web", "192.168.100.200:80"),
        "pod cannot reach the external echo server\n{}",
        lab.logs()
    );
    let unknown = lab.run(&["pod", "create", "x", "--node", "c2-n1"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("c1-n1"),
        "the error names the nodes there are"
    );

    // A component dies: status says which and exits non-zero.
    let echo_server = status["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["component"] == "echo-server")
        .and_then(|c| c["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
        .expect("echo-server pid");
    kill(Pid::from_raw(echo_server), Signal::SIGKILL).expect("SIGKILL echo-server");
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(i64::from(echo_server)) {
        assert!(Instant::now() < deadline, "echo-server survives SIGKILL");
        thread::sleep(Duration::from_millis(20));
    }
    let out = lab.run(&["status", "-o", "json"]);
    assert!(
        !out.status.success(),
        "status exits 0 with a dead component"
    );
    let broken: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(broken["healthy"], false);
    let echo = broken["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["component"] == "echo-server")
        .expect("echo-server listed");
    assert_eq!(echo["running"], false);

    // As if `up` had crashed between starting the agent and recording its PID: `down` still
    // finds the agent in the node's namespace. And as if the record of the node's bpffs were
    // lost, with a mount the lab never made under its directory: `down` sweeps every mount
    // under the lab directory, not only the recorded ones.
    let all = pids(&status);
    let state_path = lab.dir().join("state.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    for process in state["processes"].as_array_mut().expect("processes") {
        if process["component"] == "agent c1-n1" {
            process["pid"] = Value::Null;
        }
    }
    let recorded_mounts = state["mounts"].as_array().map_or(0, Vec::len);
    assert_eq!(recorded_mounts, 1, "the node's bpffs: {state:#}");
    state["mounts"] = Value::Array(Vec::new());
    std::fs::write(&state_path, state.to_string()).expect("write state");
    let stray = lab.dir().join("nodes/c1-n1/stray mount");
    std::fs::create_dir_all(&stray).expect("stray mount point");
    nix::mount::mount(
        Some("tmpfs"),
        &stray,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a tmpfs in the lab dir");

    lab.ok(&["down"]);
    assert_gone(&lab, &all);
    lab.ok(&["down"]);
}

#[test]
fn privileged_lab_two_clusters_mesh_pods_reach_across() {
    let lab = Lab::new("lx");
    let started = Instant::now();
    lab.ok(&["up", "--clusters", "2", "--nodes", "1", "--name", &lab.name]);
    eprintln!("lab up (2 clusters x 1 node) took {:?}", started.elapsed());
    let status = lab.json(&["status"]);
    assert_eq!(status["healthy"], true, "{status:#}");
    let components = status["components"].to_string();
    for expected in [
        "etcd c2",
        "operator c2",
        "clustermesh-apiserver c2",
        "agent c2-n1",
    ] {
        assert!(
            components.contains(expected),
            "{expected} missing: {components}"
        );
    }
    // Every agent reads the other cluster's etcd from its clustermesh directory.
    let remote = lab.dir().join("nodes/c1-n1/clustermesh/c2");
    let config = std::fs::read_to_string(&remote).expect("clustermesh config of c1-n1");
    assert!(config.contains("192.168.90.102:2379"), "{config}");

    lab.ok(&["pod", "create", "a", "--node", "c1-n1", "-l", "app=a"]);
    lab.ok(&["pod", "create", "b", "--node", "c2-n1", "-l", "app=b"]);
    let pods = lab.json(&["pod", "list"]);
    let b_ip = pods
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["name"] == "b")
        .and_then(|p| p["ip"].as_str())
        .expect("b's ip")
        .to_owned();
    assert!(
        b_ip.starts_with("10.2."),
        "c2's pool is 10.2.0.0/16: {b_ip}"
    );
    let mut echo = lab.serve_in("b", 9000);
    assert!(
        lab.reaches("a", &format!("{b_ip}:9000")),
        "a in c1 cannot reach b in c2\n{}",
        lab.logs()
    );
    let all = pids(&status);
    lab.ok(&["down"]);
    let _ = echo.wait();
    assert_gone(&lab, &all);
}

#[test]
fn privileged_lab_down_after_up_was_killed() {
    let lab = Lab::new("lk");
    let mut up = Command::new(CILIUM)
        .args(["lab", "--dir"])
        .arg(lab.dir())
        .args(["up", "--nodes", "2", "--name", &lab.name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lab up");
    // Part-way: after the underlay, usually while etcd or the agents start.
    thread::sleep(Duration::from_millis(150));
    let _ = kill(
        Pid::from_raw(i32::try_from(up.id()).expect("pid")),
        Signal::SIGKILL,
    );
    let _ = up.wait();
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir().join("state.json")).expect("state recorded early"),
    )
    .expect("state JSON");
    let recorded: Vec<i32> = state["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_i64().and_then(|p| i32::try_from(p).ok()))
        .collect();
    lab.ok(&["down"]);
    assert_gone(&lab, &recorded);
}
