//! The real `cilium-agent` binary (root): started in a fresh "node" network namespace with a
//! private bpffs and state dir, two pods created through `cilium-cni` as a runtime calls it,
//! real TCP between them, a policy imported with cilium-dbg dropping a third pod (seen by
//! `cilium-dbg monitor`), a restart that restores endpoints and rules, CNI DEL leaving no
//! veth, address or map entry behind, and SIGTERM stopping the agent while the pins stay.
//!
//! Every resource (namespaces, the bpffs mount, the agent process by its PID) is released by
//! a guard's `Drop`, so a failing test leaves nothing behind.

#[path = "common/node.rs"]
mod node;

use std::ffi::OsStr;
use std::io::Read;
use std::net::SocketAddrV4;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node::{EchoServer, Netns, Node, Pod, tcp_ok};

/// A connection from `from` is echoed and the server counts exactly that one connection.
fn assert_answered(server: &EchoServer, from: &Netns, addr: SocketAddrV4) {
    let before = server.accepted();
    assert!(
        tcp_ok(from, addr, Duration::from_secs(5)),
        "no echo from {addr} in {}",
        from.name
    );
    assert_eq!(
        server.accepted(),
        before + 1,
        "the server saw the connection"
    );
}

/// No connection from `from` is made within 1.5 s, and the server accepts none for 3 s.
fn assert_dropped(server: &EchoServer, from: &Netns, addr: SocketAddrV4) {
    let before = server.accepted();
    assert!(
        !tcp_ok(from, addr, Duration::from_millis(1500)),
        "{} must be dropped",
        from.name
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        server.accepted(),
        before,
        "a dropped connection reached the server"
    );
}

#[test]
fn privileged_agent_pods_talk_and_del_cleans_up() {
    let node = Node::new("10.202.0.0/24");
    let agent = node.start_agent("agent.log");
    let socket = node.socket();

    let pod_a = Pod::add(&agent, &[("app", "client")]);
    let pod_b = Pod::add(&agent, &[("app", "server")]);
    assert_eq!(node.host_veths(), 2);

    let endpoints = agent.json(&["endpoint", "list"]);
    let endpoints = endpoints.as_array().expect("array");
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints.iter().all(|e| e["status"]["state"] == "ready"));

    // Real TCP: with no policy, the server pod answers the client pod.
    let server_addr = pod_b.addr(8080);
    let server = EchoServer::start(&pod_b.ns, server_addr);
    assert_answered(&server, &pod_a.ns, server_addr);

    // A policy imported through cilium-dbg takes effect in the kernel: only app=client may
    // reach the server's port; a third pod is dropped.
    agent.import_policy(
        node.dir.path(),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {name: server-ingress, namespace: default}\n\
         spec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: client}}]\n\
         \x20   toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n",
    );
    let pod_c = Pod::add(&agent, &[("app", "other")]);
    // cilium-dbg monitor reads the pinned ring buffer and shows the policy drop.
    let mut monitor = Command::new(env!("CARGO_BIN_EXE_cilium-dbg"))
        .args(["monitor", "--type", "drop", "--bpf-root"])
        .arg(node.fs.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cilium-dbg monitor");
    thread::sleep(Duration::from_millis(300));
    assert_dropped(&server, &pod_c.ns, server_addr);
    let monitor_pid = Pid::from_raw(i32::try_from(monitor.id()).expect("pid"));
    kill(monitor_pid, Signal::SIGKILL).expect("stop monitor");
    let mut lines = String::new();
    monitor
        .stdout
        .take()
        .expect("monitor stdout")
        .read_to_string(&mut lines)
        .expect("monitor output");
    monitor.wait().expect("reap monitor");
    assert!(
        lines.lines().any(|l| l.contains("Policy denied")),
        "no policy drop in the monitor output: {lines:?}"
    );
    assert_answered(&server, &pod_a.ns, server_addr);

    // A restarted agent restores the endpoints and the imported rule: traffic and the
    // policy keep working as before.
    agent.terminate();
    let agent = node.start_agent("agent-restarted.log");
    let endpoints = agent.json(&["endpoint", "list"]);
    let endpoints = endpoints.as_array().expect("array");
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    assert!(endpoints.iter().all(|e| e["status"]["state"] == "ready"));
    let restored = agent.json(&["policy", "get"]);
    assert!(
        restored["policy"]
            .as_str()
            .is_some_and(|p| p.contains("server-ingress")),
        "{restored}"
    );
    assert_answered(&server, &pod_a.ns, server_addr);
    assert_dropped(&server, &pod_c.ns, server_addr);

    pod_c.del(&socket);
    // DEL is idempotent: a second DEL of the same pod succeeds too.
    for pod in [&pod_a, &pod_b] {
        pod.del(&socket);
        pod.del(&socket);
    }
    assert_eq!(node.host_veths(), 0, "no veth left");
    let endpoints = agent.json(&["endpoint", "list"]);
    assert_eq!(endpoints.as_array().map(Vec::len), Some(0));
    let lxc = agent.json(&["bpf", "endpoint", "list"]);
    assert_eq!(lxc["cache"].as_array().map(Vec::len), Some(0), "{lxc}");
    let maps = agent.json(&["status"]);
    assert_eq!(maps["ipam"]["allocated"], 0, "addresses released");
    let ipcache = agent.json(&["bpf", "ipcache", "list"]);
    let server_text = pod_b.ip.to_string();
    assert!(
        !ipcache["cache"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["key"].as_str().is_some_and(|k| k.contains(&server_text))),
        "pod address left in the ipcache: {ipcache}"
    );
    let routes = node.ns.ip(&["route", "show"]);
    assert!(!routes.contains(&server_text), "pod route left: {routes}");

    agent.terminate();
    assert!(!socket.exists(), "the API socket is removed on shutdown");
    let pinned = node.fs.path().join("tc").join("globals");
    for map in ["cilium_lxc", "cilium_ipcache_v2", "cilium_lb4_services_v2"] {
        assert!(
            pinned.join(OsStr::new(map)).exists(),
            "{map} must stay pinned after the agent stops"
        );
    }
}
