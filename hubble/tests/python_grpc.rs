//! hubble-relay read by an independent gRPC client: Python grpcio with stubs that grpcio-tools
//! generates from our .proto files at run time (hubble/tests/python/read_flows.py).
//!
//! Our own tonic client proves little about the wire format, since it shares the prost types
//! with the server. A client that shares nothing but the .proto text, and whose HTTP/2 stack is
//! grpc's C core, proves that what the relay speaks is standard gRPC with standard protobuf
//! encoding, as upstream's Hubble clients (Go, the UI) need.
//!
//! Two in-process Hubble servers (the real `ObserverService` over canned flows) sit behind a
//! relay on loopback; the first also serves the Peer service listing both. The Python client's
//! venv comes from scripts/python-grpc-env.sh (run by scripts/install-prereqs.sh); without it
//! the test fails and says so, rather than skipping and proving nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubble::observer::{LocalObserver, ObserverConfig, ObserverService};
use hubble::peer::{PeerService, PeerSet};
use hubble::relay::{PeerState, Relay, RelayConfig};
use hubble::ring::Capacity;
use prost_types::Timestamp;
use proto::flow::{DropReason, Endpoint, Flow, Verdict};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

/// 2025-11-28T03:20:00Z: fixed, so the JSON timestamps the client prints are known strings.
const BASE_SECONDS: i64 = 1_764_300_000;
const NANOS: i32 = 250_000_000;
const FLOWS_PER_NODE: i64 = 6;
const NODES: [&str; 2] = ["node-a", "node-b"];
const RELAY_VERSION: &str = "relay-under-test";
/// How many flows the client asks for: fewer than the dropped flows of both nodes together,
/// so the relay must pick the newest across nodes rather than per node.
const NUMBER: usize = 4;
const DEADLINE: Duration = Duration::from_secs(15);
/// The client's whole run, protoc included; generous for a loaded CI machine.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// The venv scripts/python-grpc-env.sh creates: `$CILIUM_PYENV`, else target/pyenv of the
/// workspace (the script's rule).
fn pyenv() -> PathBuf {
    match std::env::var_os("CILIUM_PYENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv"),
    }
}

/// Flow `k` of node number `index`: at BASE + 2k + index seconds, so the nodes interleave;
/// every other flow is a policy drop, alternating between the nodes.
fn canned_flow(index: usize, k: i64) -> Flow {
    let node = NODES[index];
    let letter = node.trim_start_matches("node-");
    let offset = i64::try_from(index).unwrap_or_else(|e| panic!("node index: {e}"));
    let mut flow = Flow {
        time: Some(Timestamp {
            seconds: BASE_SECONDS + 2 * k + offset,
            nanos: NANOS,
        }),
        node_name: node.to_owned(),
        source: Some(Endpoint {
            namespace: "default".to_owned(),
            pod_name: format!("client-{letter}-{k}"),
            ..Endpoint::default()
        }),
        destination: Some(Endpoint {
            namespace: "default".to_owned(),
            pod_name: "echo".to_owned(),
            ..Endpoint::default()
        }),
        ..Flow::default()
    };
    if (k + offset) % 2 == 1 {
        flow.set_verdict(Verdict::Dropped);
        flow.drop_reason = DropReason::PolicyDenied as u32;
        flow.set_drop_reason_desc(DropReason::PolicyDenied);
    } else {
        flow.set_verdict(Verdict::Forwarded);
    }
    flow
}

/// A Hubble server (Observer, plus Peer when given) on `listener`, until the sender drops.
fn serve_node(
    listener: TcpListener,
    observer: Arc<LocalObserver>,
    peers: Option<watch::Receiver<PeerSet>>,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let router = Server::builder()
        .add_service(ObserverService::new(observer).into_server())
        .add_optional_service(peers.map(|peers| PeerService::new(peers).into_server()));
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
        {
            panic!("fake node server failed: {error}");
        }
    });
    stop
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    (listener, address)
}

/// The running fake nodes; they stop when this drops.
struct Nodes {
    addresses: Vec<SocketAddr>,
    _stops: Vec<oneshot::Sender<()>>,
    /// Dropping it would end the Peer service's streams, as an agent going away does.
    _peers: watch::Sender<PeerSet>,
}

/// Both nodes with their flows, the first also serving Peer.
async fn start_nodes() -> Nodes {
    let mut listeners = Vec::new();
    let mut peer_set = PeerSet::new();
    for node in NODES {
        let (listener, address) = bind().await;
        peer_set.insert(node.to_owned(), address);
        listeners.push((node, listener, address));
    }
    let (peers_tx, peers) = watch::channel(peer_set);
    let mut addresses = Vec::new();
    let mut stops = Vec::new();
    for (index, (node, listener, address)) in listeners.into_iter().enumerate() {
        let observer = LocalObserver::new(
            ObserverConfig {
                node_name: node.to_owned(),
                address: address.to_string(),
                capacity: Capacity::DEFAULT,
                version: format!("fake-{node}"),
            },
            None,
        );
        observer.record_flows((0..FLOWS_PER_NODE).map(|k| canned_flow(index, k)));
        let peer_service = (index == 0).then(|| peers.clone());
        stops.push(serve_node(listener, observer, peer_service));
        addresses.push(address);
    }
    Nodes {
        addresses,
        _stops: stops,
        _peers: peers_tx,
    }
}

async fn start_relay(peer_service: SocketAddr) -> (Arc<Relay>, SocketAddr, oneshot::Sender<()>) {
    let relay = Relay::start(RelayConfig {
        peer_services: vec![peer_service.to_string()],
        sort_buffer_drain_timeout: Duration::from_millis(100),
        dial_timeout: Duration::from_secs(2),
        retry_timeout: Duration::from_millis(100),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        health_check_interval: Duration::from_millis(100),
        peer_update_interval: Duration::from_millis(50),
        version: RELAY_VERSION.to_owned(),
        ..RelayConfig::default()
    })
    .unwrap_or_else(|e| panic!("relay start: {e}"));
    let relay = Arc::new(relay);
    let (listener, address) = bind().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = Arc::clone(&relay);
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(error) = serving.serve(listener, shutdown).await {
            panic!("relay server failed: {error}");
        }
    });
    (relay, address, stop)
}

async fn wait_until_connected(relay: &Relay) {
    let start = Instant::now();
    loop {
        let peers = relay.peers();
        let connected = peers
            .iter()
            .filter(|peer| peer.state == PeerState::Connected)
            .count();
        if connected == NODES.len() {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the relay did not connect to both nodes: {peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the Python client against `relay`, returning its JSON lines grouped by call.
async fn run_client(python: &Path, relay: SocketAddr) -> BTreeMap<String, Vec<Value>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let child = tokio::process::Command::new(python)
        .arg(manifest.join("tests/python/read_flows.py"))
        .arg("--address")
        .arg(relay.to_string())
        .arg("--proto-root")
        .arg(manifest.join("../proto/proto"))
        .arg("--number")
        .arg(NUMBER.to_string())
        .arg("--verdict")
        .arg("DROPPED")
        // The venv's own packages only, whatever the caller's environment holds.
        .env_remove("PYTHONPATH")
        .env("PYTHONNOUSERSITE", "1")
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(CLIENT_DEADLINE, child).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => panic!("cannot run {}: {error}", python.display()),
        Err(_) => panic!("the Python client did not finish within {CLIENT_DEADLINE:?}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let mut calls: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in stdout.lines().filter(|line| !line.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("client printed a line that is not JSON ({e}): {line}"));
        let call = value["call"]
            .as_str()
            .unwrap_or_else(|| panic!("client line without a call name: {line}"))
            .to_owned();
        calls.entry(call).or_default().push(value);
    }
    calls
}

fn only<'a>(calls: &'a BTreeMap<String, Vec<Value>>, call: &str) -> &'a Value {
    match calls.get(call).map(Vec::as_slice) {
        Some([line]) => &line["response"],
        other => panic!("expected exactly one {call} response, got {other:?}"),
    }
}

/// The protobuf JSON mapping prints 64-bit integers as strings.
fn uint64(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("not a JSON uint64: {value}"))
}

#[tokio::test]
async fn python_grpcio_client_reads_status_nodes_and_filtered_flows_from_the_relay() {
    let venv = pyenv();
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "no Python gRPC client environment at {}: run scripts/python-grpc-env.sh \
         (scripts/install-prereqs.sh runs it) to create it",
        venv.display()
    );

    let nodes = start_nodes().await;
    let (relay, relay_address, _relay_stop) = start_relay(nodes.addresses[0]).await;
    wait_until_connected(&relay).await;

    let calls = run_client(&python, relay_address).await;

    // ServerStatus: the relay's sums over both nodes.
    let status = only(&calls, "ServerStatus");
    assert_eq!(status["num_connected_nodes"], 2, "{status}");
    assert_eq!(status["num_unavailable_nodes"], 0, "{status}");
    let total = u64::try_from(FLOWS_PER_NODE).unwrap_or_else(|e| panic!("{e}")) * 2;
    assert_eq!(uint64(&status["num_flows"]), total, "{status}");
    assert_eq!(uint64(&status["seen_flows"]), total, "{status}");
    let capacity = Capacity::DEFAULT.get() as u64;
    assert_eq!(uint64(&status["max_flows"]), 2 * capacity, "{status}");
    assert_eq!(status["version"], RELAY_VERSION, "{status}");

    // GetNodes: both nodes, connected, at the addresses the Peer service announced.
    let listed = only(&calls, "GetNodes")["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("GetNodes without nodes: {calls:?}"));
    let mut seen: Vec<(String, String, String, u64)> = listed
        .iter()
        .map(|node| {
            (
                node["name"].as_str().unwrap_or_default().to_owned(),
                node["address"].as_str().unwrap_or_default().to_owned(),
                node["state"].as_str().unwrap_or_default().to_owned(),
                uint64(&node["num_flows"]),
            )
        })
        .collect();
    seen.sort();
    let flows_per_node = u64::try_from(FLOWS_PER_NODE).unwrap_or_else(|e| panic!("{e}"));
    let expected_nodes: Vec<(String, String, String, u64)> = NODES
        .iter()
        .zip(&nodes.addresses)
        .map(|(name, address)| {
            (
                (*name).to_owned(),
                address.to_string(),
                "NODE_CONNECTED".to_owned(),
                flows_per_node,
            )
        })
        .collect();
    assert_eq!(seen, expected_nodes);

    // GetFlows(number = 4, whitelist verdict DROPPED): the relay filtered on the nodes and
    // kept the newest four of both, oldest first.
    let all = calls
        .get("GetFlows")
        .unwrap_or_else(|| panic!("no GetFlows response: {calls:?}"));
    // Besides flows, the relay reports which nodes the answer comes from, as upstream does.
    let (statuses, responses): (Vec<&Value>, Vec<&Value>) = all
        .iter()
        .partition(|line| line["response"].get("node_status").is_some());
    let mut connected = Vec::new();
    for line in &statuses {
        let response = &line["response"];
        let status = &response["node_status"];
        assert_eq!(status["state_change"], "NODE_CONNECTED", "{response}");
        assert_eq!(response["node_name"], "hubble-relay", "{response}");
        let names = status["node_names"].as_array().into_iter().flatten();
        connected.extend(names.filter_map(Value::as_str));
    }
    connected.sort_unstable();
    assert_eq!(connected, NODES, "{all:#?}");
    assert_eq!(responses.len(), NUMBER, "{all:#?}");
    let mut previous = (i64::MIN, i32::MIN);
    let mut received = Vec::new();
    for line in &responses {
        let response = &line["response"];
        let flow = &response["flow"];
        assert!(flow.is_object(), "not a flow response: {response}");
        let time = (
            line["time"]["seconds"].as_i64().unwrap_or(i64::MIN),
            line["time"]["nanos"]
                .as_i64()
                .and_then(|nanos| i32::try_from(nanos).ok())
                .unwrap_or(i32::MIN),
        );
        assert!(time > previous, "flows out of time order: {responses:#?}");
        previous = time;
        assert_eq!(flow["verdict"], "DROPPED", "{flow}");
        assert_eq!(flow["drop_reason_desc"], "POLICY_DENIED", "{flow}");
        assert_eq!(flow["drop_reason"], 133, "{flow}");
        assert_eq!(flow["source"]["namespace"], "default", "{flow}");
        assert_eq!(flow["destination"]["pod_name"], "echo", "{flow}");
        assert_eq!(response["node_name"], flow["node_name"], "{response}");
        assert_eq!(response["time"], flow["time"], "{response}");
        received.push((
            flow["source"]["pod_name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            flow["node_name"].as_str().unwrap_or_default().to_owned(),
            flow["time"].as_str().unwrap_or_default().to_owned(),
            time,
        ));
    }

    // What the filter and `number` must leave, from the canned flows themselves.
    let mut dropped: Vec<Flow> = (0..NODES.len())
        .flat_map(|index| (0..FLOWS_PER_NODE).map(move |k| canned_flow(index, k)))
        .filter(|flow| flow.verdict() == Verdict::Dropped)
        .collect();
    dropped.sort_by_key(|flow| flow.time.map(|time| (time.seconds, time.nanos)));
    let newest = &dropped[dropped.len() - NUMBER..];
    let expected: Vec<(String, String, (i64, i32))> = newest
        .iter()
        .map(|flow| {
            (
                flow.source
                    .as_ref()
                    .map(|source| source.pod_name.clone())
                    .unwrap_or_default(),
                flow.node_name.clone(),
                flow.time.map_or((0, 0), |time| (time.seconds, time.nanos)),
            )
        })
        .collect();
    let got: Vec<(String, String, (i64, i32))> = received
        .iter()
        .map(|(pod, node, _, time)| (pod.clone(), node.clone(), *time))
        .collect();
    assert_eq!(got, expected);
    // The same, spelled out: both nodes, interleaved, with the JSON timestamps upstream's
    // clients print.
    let spelled: Vec<(&str, &str, &str)> = received
        .iter()
        .map(|(pod, node, json_time, _)| (pod.as_str(), node.as_str(), json_time.as_str()))
        .collect();
    assert_eq!(
        spelled,
        [
            ("client-b-2", "node-b", "2025-11-28T03:20:05.250Z"),
            ("client-a-3", "node-a", "2025-11-28T03:20:06.250Z"),
            ("client-b-4", "node-b", "2025-11-28T03:20:09.250Z"),
            ("client-a-5", "node-a", "2025-11-28T03:20:10.250Z"),
        ]
    );

    relay.stop();
}
