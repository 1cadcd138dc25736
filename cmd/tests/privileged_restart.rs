//! An agent crash under traffic (root): `cilium-agent` is killed with SIGKILL while a TCP
//! stream runs between two pods. The datapath lives on in the kernel, so the stream keeps
//! flowing and the policy keeps dropping while no agent runs. The agent restarted on the same
//! state dir and bpffs restores endpoints, identities, policy and services without changing
//! a single entry of the policy, ipcache, lxc or LB maps, and the stream is still alive.

#[path = "common/node.rs"]
mod node;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use node::{Agent, EchoServer, Netns, Node, Pod, tcp_ok};

/// A TCP stream from a pod: a small numbered payload every ~10 ms, each echo checked.
struct Stream {
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Stream {
    fn start(from: &Netns, to: SocketAddrV4) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let round_trips = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = from.path();
        let thread = {
            let (stop, round_trips, error) = (stop.clone(), round_trips.clone(), error.clone());
            thread::spawn(move || {
                let netns = std::fs::File::open(path).expect("open netns");
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let result = run_stream(to, &stop, &round_trips, &tx);
                if let Err(e) = result {
                    *error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                }
            })
        };
        rx.recv_timeout(Duration::from_secs(5))
            .expect("stream connected");
        Stream {
            stop,
            round_trips,
            error,
            thread: Some(thread),
        }
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Panics if the stream saw an error.
    fn assert_healthy(&self, when: &str) {
        let error = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(error.is_none(), "stream broke {when}: {error:?}");
    }

    /// Asserts that at least `min` round trips complete within `window`, error-free.
    fn assert_flowing(&self, window: Duration, min: u64, when: &str) {
        let start = self.round_trips();
        thread::sleep(window);
        self.assert_healthy(when);
        let done = self.round_trips() - start;
        assert!(
            done >= min,
            "stream stalled {when}: {done} round trips in {window:?}"
        );
    }
}

fn run_stream(
    to: SocketAddrV4,
    stop: &AtomicBool,
    round_trips: &AtomicU64,
    connected: &std::sync::mpsc::Sender<()>,
) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    let _ = connected.send(());
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let payload = format!("seq{n:013}");
        conn.write_all(payload.as_bytes())
            .map_err(|e| format!("write {n}: {e}"))?;
        let mut echo = [0u8; 16];
        conn.read_exact(&mut echo)
            .map_err(|e| format!("read {n}: {e}"))?;
        if echo != payload.as_bytes() {
            return Err(format!("echo {n} differs: {echo:?}"));
        }
        n += 1;
        round_trips.store(n, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the kernel maps hold, as cilium-dbg prints it.
#[derive(Debug, PartialEq)]
struct MapSnapshot {
    policy: Vec<(u64, serde_json::Value)>,
    ipcache: serde_json::Value,
    lxc: serde_json::Value,
    lb: serde_json::Value,
}

fn snapshot(agent: &Agent) -> MapSnapshot {
    let mut ids: Vec<u64> = agent
        .json(&["endpoint", "list"])
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["id"].as_u64().expect("endpoint id"))
        .collect();
    ids.sort_unstable();
    MapSnapshot {
        policy: ids
            .into_iter()
            .map(|id| {
                (
                    id,
                    sorted(agent.json(&["bpf", "policy", "get", &id.to_string()])),
                )
            })
            .collect(),
        ipcache: sorted(agent.json(&["bpf", "ipcache", "list"])),
        lxc: sorted(agent.json(&["bpf", "endpoint", "list"])),
        lb: sorted(agent.json(&["bpf", "lb", "list"])),
    }
}

/// The map dump with its entries in key order, so iteration order does not count.
fn sorted(mut map: serde_json::Value) -> serde_json::Value {
    let sort = |v: &mut serde_json::Value| {
        if let Some(entries) = v["cache"].as_array_mut() {
            entries.sort_by_key(|e| e["key"].to_string());
        }
    };
    match map.as_array_mut() {
        Some(maps) => maps.iter_mut().for_each(sort),
        None => sort(&mut map),
    }
    map
}

/// Endpoint id, identity and state, and the identities with their labels, as the API
/// reports them.
type ControlPlane = (Vec<(u64, u64, String)>, Vec<(u64, String)>);

fn control_plane(agent: &Agent) -> ControlPlane {
    let mut endpoints: Vec<(u64, u64, String)> = agent
        .json(&["endpoint", "list"])
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().expect("id"),
                e["status"]["identity"]["id"].as_u64().expect("identity"),
                e["status"]["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    endpoints.sort_unstable();
    let mut identities: Vec<(u64, String)> = agent
        .json(&["identity", "list"])
        .as_array()
        .expect("identities")
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().expect("identity id"),
                i["labels"].to_string(),
            )
        })
        .collect();
    identities.sort_unstable();
    (endpoints, identities)
}

#[test]
fn privileged_restart_kill9_keeps_traffic_and_maps() {
    let node = Node::new("10.204.0.0/24");
    let agent = node.start_agent("agent.log");
    let client = Pod::add(&agent, &[("app", "client")]);
    let server = Pod::add(&agent, &[("app", "server")]);
    let intruder = Pod::add(&agent, &[("app", "intruder")]);
    let _echo = EchoServer::start(&server.ns, server.addr(8080));

    // Policy with endpoint and CIDR peers, and a service, so every map has content.
    agent.import_policy(
        node.dir.path(),
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {name: server-ingress, namespace: default}\n\
         spec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n\
         \x20 - fromEndpoints: [{matchLabels: {app: client}}]\n\
         \x20   toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n\
         \x20 - fromCIDRSet: [{cidr: 192.168.90.0/24, except: [192.168.90.128/25]}]\n",
    );
    let vip = format!("10.96.0.20:80,{}", server.addr(8080));
    let (frontend, backend) = vip.split_once(',').expect("pair");
    agent.json(&[
        "service",
        "update",
        "--id",
        "3",
        "--frontend",
        frontend,
        "--backends",
        backend,
    ]);
    assert!(tcp_ok(
        &client.ns,
        server.addr(8080),
        Duration::from_secs(3)
    ));
    assert!(!tcp_ok(
        &intruder.ns,
        server.addr(8080),
        Duration::from_millis(600)
    ));

    let stream = Stream::start(&client.ns, server.addr(8080));
    stream.assert_flowing(Duration::from_millis(500), 20, "before the kill");

    let maps_before = snapshot(&agent);
    let control_before = control_plane(&agent);
    let policy_before = agent.json(&["policy", "get"]);
    assert_eq!(maps_before.policy.len(), 3, "{maps_before:?}");
    let policy_entries: Vec<serde_json::Value> = maps_before
        .policy
        .iter()
        .flat_map(|(_, m)| m["cache"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(
        policy_entries
            .iter()
            .any(|e| e["key"].as_str().is_some_and(|k| k.ends_with("TCP/8080"))),
        "the server's policy map has the port rule: {policy_entries:?}"
    );
    // Local CIDR identities have bit 24 set.
    assert!(
        policy_entries
            .iter()
            .any(|e| e["key-data"]["policy"]["key"]["identity"]
                .as_u64()
                .is_some_and(|id| id >= 1 << 24)),
        "the server's policy map has the CIDR identity: {policy_entries:?}"
    );
    assert!(
        maps_before.ipcache.to_string().contains("192.168.90.0/24"),
        "the CIDR prefix is in the ipcache: {:?}",
        maps_before.ipcache
    );
    assert!(
        maps_before.lb.to_string().contains("10.96.0.20"),
        "{:?}",
        maps_before.lb
    );

    // SIGKILL: no shutdown path runs. The kernel keeps forwarding and enforcing.
    let killed_at = Instant::now();
    agent.kill9();
    stream.assert_flowing(Duration::from_secs(1), 30, "while the agent is down");
    assert!(
        tcp_ok(&client.ns, server.addr(8080), Duration::from_secs(3)),
        "new allowed connections work without an agent"
    );
    assert!(
        !tcp_ok(&intruder.ns, server.addr(8080), Duration::from_millis(600)),
        "the policy still drops without an agent"
    );

    let agent = node.start_agent("agent-restarted.log");
    let downtime = killed_at.elapsed();
    stream.assert_flowing(Duration::from_millis(500), 15, "after the restore");

    assert_eq!(
        control_plane(&agent),
        control_before,
        "endpoints and identities"
    );
    assert_eq!(agent.json(&["policy", "get"]), policy_before, "policy");
    let maps_after = snapshot(&agent);
    assert_eq!(
        maps_after, maps_before,
        "map contents changed by the restore"
    );
    assert!(tcp_ok(
        &client.ns,
        server.addr(8080),
        Duration::from_secs(3)
    ));
    assert!(!tcp_ok(
        &intruder.ns,
        server.addr(8080),
        Duration::from_millis(600)
    ));
    stream.assert_healthy("at the end");
    let total = stream.round_trips();
    drop(stream);
    eprintln!(
        "restart: agent down and restored in {downtime:?}; {total} stream round trips, none lost"
    );

    for pod in [&client, &server, &intruder] {
        pod.del(&agent.socket);
    }
    assert_eq!(node.host_veths(), 0, "no veth left");
    agent.terminate();
}
