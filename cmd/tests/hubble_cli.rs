//! The `hubble` binary against an in-process fake Observer server on loopback (and on a unix
//! socket): what it prints for each command and output format, which `GetFlowsRequest` its flags
//! produce, `--follow`, and its errors. No root needed.
//!
//! Each test starts its own fake server on its own thread and runtime (port 0, so tests run in
//! parallel) and runs the built binary as a child process, killed by PID if it outlives the
//! deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::Stream;
use prost_types::Timestamp;
use proto::flow::{
    CiliumEventType, DropReason, Endpoint, Flow, FlowFilter, FlowType, Ip, Layer4, Tcp, TcpFlags,
    Verdict, layer4,
};
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_server::{Observer, ObserverServer};
use proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Node, ServerStatusRequest, ServerStatusResponse,
};
use proto::relay::NodeState;
use tokio::sync::{broadcast, oneshot};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(20);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn endpoint(identity: u32, pod: &str) -> Endpoint {
    Endpoint {
        id: identity / 10,
        identity,
        namespace: "default".into(),
        labels: vec![format!("k8s:app={pod}")],
        pod_name: pod.into(),
        ..Endpoint::default()
    }
}

/// A SYN from default/client to default/echo at 2026-11-27T12:00:{second}.123Z.
fn flow(second: i64, verdict: Verdict, dport: u32) -> Flow {
    let mut f = Flow {
        time: Some(Timestamp {
            seconds: 1_795_780_800 + second,
            nanos: 123_000_000,
        }),
        ip: Some(Ip {
            source: "10.0.1.10".into(),
            destination: "10.0.1.20".into(),
            ip_version: 1,
            ..Ip::default()
        }),
        l4: Some(Layer4 {
            protocol: Some(layer4::Protocol::Tcp(Tcp {
                source_port: 41234,
                destination_port: dport,
                flags: Some(TcpFlags {
                    syn: true,
                    ..TcpFlags::default()
                }),
            })),
        }),
        source: Some(endpoint(1234, "client")),
        destination: Some(endpoint(5678, "echo")),
        node_name: "kind-worker".into(),
        is_reply: Some(false),
        summary: "TCP Flags: SYN".into(),
        ..Flow::default()
    };
    f.set_verdict(verdict);
    f.set_type(FlowType::L3L4);
    if verdict == Verdict::Dropped {
        f.event_type = Some(CiliumEventType {
            r#type: 1,
            sub_type: 133,
        });
        f.drop_reason = 133;
        f.set_drop_reason_desc(DropReason::PolicyDenied);
    } else {
        f.event_type = Some(CiliumEventType {
            r#type: 4,
            sub_type: 0,
        });
    }
    f
}

fn response(flow: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow)),
    }
}

/// What the fake answers and what it was asked.
#[derive(Debug)]
struct FakeState {
    canned: Vec<Flow>,
    live: broadcast::Sender<Flow>,
    requests: Mutex<Vec<GetFlowsRequest>>,
}

#[derive(Debug, Clone)]
struct FakeObserver(Arc<FakeState>);

#[tonic::async_trait]
impl Observer for FakeObserver {
    type GetFlowsStream = BoxStream<GetFlowsResponse>;
    type GetAgentEventsStream = BoxStream<GetAgentEventsResponse>;
    type GetDebugEventsStream = BoxStream<GetDebugEventsResponse>;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        let live = self.0.live.subscribe();
        if let Ok(mut requests) = self.0.requests.lock() {
            requests.push(request.clone());
        }
        let rejected = request
            .whitelist
            .iter()
            .flat_map(|f| &f.source_pod)
            .any(|pod| pod.contains("reject-me"));
        if rejected {
            return Err(Status::invalid_argument(
                "invalid source_pod filter \"reject-me\": no such thing",
            ));
        }
        if request.follow {
            let live = live_stream(live);
            return Ok(Response::new(Box::pin(live)));
        }
        let n = usize::try_from(request.number).unwrap_or(usize::MAX);
        let skip = self.0.canned.len().saturating_sub(n);
        let flows: Vec<_> = self.0.canned.iter().skip(skip).cloned().collect();
        let stream = futures::stream::iter(flows.into_iter().map(|f| Ok(response(f))));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        Ok(Response::new(GetNodesResponse {
            nodes: vec![
                Node {
                    name: "kind-worker2".into(),
                    address: "172.18.0.3:4244".into(),
                    state: NodeState::NodeUnavailable as i32,
                    ..Node::default()
                },
                Node {
                    name: "kind-worker".into(),
                    address: "172.18.0.2:4244".into(),
                    state: NodeState::NodeConnected as i32,
                    uptime_ns: 120_000_000_000,
                    num_flows: 100,
                    max_flows: 4095,
                    seen_flows: 240,
                    ..Node::default()
                },
            ],
        }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: 4095,
            max_flows: 4095,
            seen_flows: 10_000,
            uptime_ns: 100_000_000_000,
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(1),
            unavailable_nodes: vec!["kind-worker2".into()],
            version: "cilium-rs".into(),
            flows_rate: 3.5,
        }))
    }
}

/// Live flows as a gRPC response stream (a lagging receiver just skips).
fn live_stream(
    rx: broadcast::Receiver<Flow>,
) -> impl Stream<Item = Result<GetFlowsResponse, Status>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(flow) => return Some((Ok(response(flow)), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// A fake server on its own thread; stopped when dropped.
struct FakeServer {
    state: Arc<FakeState>,
    target: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _socket_dir: Option<tempfile::TempDir>,
}

enum Listen {
    Tcp,
    Unix,
}

impl FakeServer {
    fn start(listen: Listen) -> FakeServer {
        let (live, _) = broadcast::channel(64);
        let state = Arc::new(FakeState {
            canned: vec![
                flow(1, Verdict::Forwarded, 8080),
                flow(2, Verdict::Dropped, 80),
            ],
            live,
            requests: Mutex::new(Vec::new()),
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        let socket_dir = match listen {
            Listen::Tcp => None,
            Listen::Unix => Some(tempfile::tempdir().expect("temp dir")),
        };
        let socket_path: Option<PathBuf> =
            socket_dir.as_ref().map(|d| d.path().join("hubble.sock"));
        let service = ObserverServer::new(FakeObserver(Arc::clone(&state)));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let shutdown = async {
                    let _ = shutdown_rx.await;
                };
                let router = Server::builder().add_service(service);
                match socket_path {
                    None => {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                            .await
                            .expect("bind");
                        let addr: SocketAddr = listener.local_addr().expect("local addr");
                        ready_tx.send(addr.to_string()).expect("ready");
                        let incoming = TcpIncoming::from(listener);
                        router
                            .serve_with_incoming_shutdown(incoming, shutdown)
                            .await
                            .expect("serve");
                    }
                    Some(path) => {
                        let listener = tokio::net::UnixListener::bind(&path).expect("bind unix");
                        ready_tx
                            .send(format!("unix://{}", path.display()))
                            .expect("ready");
                        let incoming = futures::stream::unfold(listener, |listener| async move {
                            let conn = listener.accept().await.map(|(stream, _)| stream);
                            Some((conn, listener))
                        });
                        router
                            .serve_with_incoming_shutdown(incoming, shutdown)
                            .await
                            .expect("serve");
                    }
                }
            });
        });
        let target = ready_rx.recv_timeout(DEADLINE).expect("server ready");
        FakeServer {
            state,
            target,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _socket_dir: socket_dir,
        }
    }

    fn requests(&self) -> Vec<GetFlowsRequest> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    fn last_request(&self) -> GetFlowsRequest {
        self.requests().pop().expect("a GetFlows request")
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn hubble(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hubble"));
    cmd.args(args)
        .env_remove("HUBBLE_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Kills the child by its PID if it is still running.
fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs the binary to completion, failing the test if it hangs.
fn run(args: &[&str]) -> Output {
    let mut child = hubble(args).spawn().expect("spawn hubble");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            kill(&mut child);
            panic!("hubble {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn observe(server: &FakeServer, flags: &[&str]) -> (Output, GetFlowsRequest) {
    let mut args = vec!["observe", "--server", server.target.as_str()];
    args.extend_from_slice(flags);
    let output = run(&args);
    assert!(
        output.status.success(),
        "hubble {args:?} failed: {}",
        stderr(&output)
    );
    (output, server.last_request())
}

#[test]
fn observe_prints_compact_lines_and_asks_for_the_last_20() {
    let server = FakeServer::start(Listen::Tcp);
    let (output, request) = observe(&server, &[]);
    assert_eq!(
        stdout(&output),
        "\
Nov 27 12:00:01.123: default/client:41234 (ID:1234) -> default/echo:8080 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)
Nov 27 12:00:02.123: default/client:41234 (ID:1234) -> default/echo:80 (ID:5678) Policy denied DROPPED (TCP Flags: SYN)
"
    );
    assert_eq!(request.number, 20);
    assert!(!request.follow && !request.first);
    assert!(request.whitelist.is_empty() && request.blacklist.is_empty());
}

#[test]
fn observe_json_lines_have_upstream_keys() {
    let server = FakeServer::start(Listen::Tcp);
    let (output, request) = observe(&server, &["-o", "json", "--last", "1"]);
    assert_eq!(request.number, 1);
    let text = stdout(&output);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = &lines[0];
    assert_eq!(line["node_name"], "kind-worker");
    assert_eq!(line["time"], "2026-11-27T12:00:02.123Z");
    let flow = &line["flow"];
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(flow["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(flow["Type"], "L3_L4");
    assert_eq!(flow["is_reply"], false);
    assert_eq!(flow["IP"]["source"], "10.0.1.10");
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 80);
    assert_eq!(flow["source"]["pod_name"], "client");
    assert_eq!(flow["destination"]["identity"], 5678);
    assert_eq!(
        flow["event_type"],
        serde_json::json!({"type": 1, "sub_type": 133})
    );
}

#[test]
fn observe_table_output() {
    let server = FakeServer::start(Listen::Tcp);
    let (output, _) = observe(&server, &["-o", "table"]);
    let text = stdout(&output);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "TIMESTAMP             SOURCE                 DESTINATION         TYPE            VERDICT     SUMMARY"
        )
    );
    assert_eq!(
        lines.next(),
        Some(
            "Nov 27 12:00:01.123   default/client:41234   default/echo:8080   to-endpoint     FORWARDED   TCP Flags: SYN"
        )
    );
    assert_eq!(lines.count(), 1);
}

#[test]
fn observe_flags_become_upstream_filters() {
    let server = FakeServer::start(Listen::Tcp);
    let verdict = |v: Verdict| v as i32;
    let cases: Vec<(&[&str], Vec<FlowFilter>, Vec<FlowFilter>)> = vec![
        (
            &["--from-pod", "default/client", "--verdict", "DROPPED"],
            vec![FlowFilter {
                source_pod: vec!["default/client".into()],
                verdict: vec![verdict(Verdict::Dropped)],
                ..FlowFilter::default()
            }],
            vec![],
        ),
        (
            &["--pod", "x"],
            vec![
                FlowFilter {
                    source_pod: vec!["x".into()],
                    ..FlowFilter::default()
                },
                FlowFilter {
                    destination_pod: vec!["x".into()],
                    ..FlowFilter::default()
                },
            ],
            vec![],
        ),
        (
            &["--namespace", "ns"],
            vec![
                FlowFilter {
                    source_pod: vec!["ns/".into()],
                    ..FlowFilter::default()
                },
                FlowFilter {
                    destination_pod: vec!["ns/".into()],
                    ..FlowFilter::default()
                },
            ],
            vec![],
        ),
        (
            &["--protocol", "tcp", "--port", "80"],
            vec![
                FlowFilter {
                    protocol: vec!["tcp".into()],
                    source_port: vec!["80".into()],
                    ..FlowFilter::default()
                },
                FlowFilter {
                    protocol: vec!["tcp".into()],
                    destination_port: vec!["80".into()],
                    ..FlowFilter::default()
                },
            ],
            vec![],
        ),
        (
            &[
                "--to-ip",
                "10.0.0.0/8",
                "--not",
                "--verdict",
                "FORWARDED",
                "--to-label",
                "app=echo",
                "--node-name",
                "kind-*",
            ],
            vec![FlowFilter {
                destination_ip: vec!["10.0.0.0/8".into()],
                destination_label: vec!["app=echo".into()],
                node_name: vec!["kind-*".into()],
                ..FlowFilter::default()
            }],
            vec![FlowFilter {
                verdict: vec![verdict(Verdict::Forwarded)],
                ..FlowFilter::default()
            }],
        ),
        (
            &[
                "--verdict",
                "DROPPED",
                "--verdict",
                "FORWARDED",
                "--from-label",
                "app=client",
            ],
            vec![FlowFilter {
                source_label: vec!["app=client".into()],
                verdict: vec![verdict(Verdict::Dropped), verdict(Verdict::Forwarded)],
                ..FlowFilter::default()
            }],
            vec![],
        ),
    ];
    for (flags, whitelist, blacklist) in cases {
        let (_, request) = observe(&server, flags);
        assert_eq!(request.whitelist, whitelist, "whitelist for {flags:?}");
        assert_eq!(request.blacklist, blacklist, "blacklist for {flags:?}");
    }
}

#[test]
fn observe_time_window_and_first() {
    let server = FakeServer::start(Listen::Tcp);
    let (_, request) = observe(
        &server,
        &[
            "--since",
            "2026-11-27T12:00:00Z",
            "--until",
            "2026-11-27T13:00:00+01:00",
        ],
    );
    assert_eq!(request.number, 0, "a time window asks for no count");
    assert_eq!(request.since.map(|t| t.seconds), Some(1_795_780_800));
    assert_eq!(request.until.map(|t| t.seconds), Some(1_795_780_800));
    let (_, request) = observe(&server, &["--first", "1"]);
    assert!(request.first);
    assert_eq!(request.number, 1);
}

#[test]
fn observe_follow_prints_flows_as_they_arrive() {
    let server = FakeServer::start(Listen::Tcp);
    let mut child = hubble(&["observe", "--follow", "--server", &server.target])
        .spawn()
        .expect("spawn hubble");
    let stdout = child.stdout.take().expect("stdout");
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });

    // Wait until the CLI's request arrived (so it is subscribed), then push live flows.
    let start = Instant::now();
    while server.requests().is_empty() {
        assert!(start.elapsed() < DEADLINE, "no GetFlows request arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let request = server.last_request();
    assert!(request.follow);
    assert_eq!(request.number, 0);

    for (i, dport) in [(10, 9001), (11, 9002)] {
        server
            .state
            .live
            .send(flow(i, Verdict::Forwarded, dport))
            .expect("a subscriber");
        let line = line_rx.recv_timeout(DEADLINE).expect("a followed line");
        assert!(
            line.starts_with(&format!("Nov 27 12:00:{i}.123: "))
                && line.contains(&format!("default/echo:{dport} (ID:5678)")),
            "{line}"
        );
    }
    assert!(
        child.try_wait().ok().flatten().is_none(),
        "--follow must keep running"
    );
    kill(&mut child);
    let _ = reader.join();
}

#[test]
fn observe_over_a_unix_socket() {
    let server = FakeServer::start(Listen::Unix);
    assert!(server.target.starts_with("unix://"));
    let (output, _) = observe(&server, &["--last", "1"]);
    assert!(
        stdout(&output).contains("Policy denied DROPPED"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn server_env_var_is_used() {
    let server = FakeServer::start(Listen::Tcp);
    let output = hubble(&["status"])
        .env("HUBBLE_SERVER", &server.target)
        .output()
        .expect("run hubble");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with(&format!("Healthcheck (via {}): Ok\n", server.target)));
}

#[test]
fn invalid_argument_exits_1_with_the_servers_message() {
    let server = FakeServer::start(Listen::Tcp);
    let output = run(&[
        "observe",
        "--server",
        &server.target,
        "--from-pod",
        "reject-me",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("invalid argument: invalid source_pod filter \"reject-me\": no such thing"),
        "{err}"
    );
    assert_eq!(stdout(&output), "");
}

#[test]
fn bad_flags_fail_before_connecting() {
    let server = FakeServer::start(Listen::Tcp);
    for (flags, message) in [
        (&["--not"][..], "trailing --not"),
        (
            &["--verdict", "forwarded"],
            "invalid --verdict value: forwarded",
        ),
        (
            &["--pod", "a", "--from-ip", "1.2.3.4"],
            "cannot be combined",
        ),
        (
            &["-o", "table", "--follow"],
            "not compatible with follow mode",
        ),
        (&["-o", "yaml"], "invalid output format"),
    ] {
        let mut args = vec!["observe", "--server", server.target.as_str()];
        args.extend_from_slice(flags);
        let output = run(&args);
        assert_eq!(output.status.code(), Some(1), "{flags:?}");
        assert!(
            stderr(&output).contains(message),
            "{flags:?}: {}",
            stderr(&output)
        );
    }
    assert!(server.requests().is_empty(), "no request for bad flags");
}

#[test]
fn unreachable_server_names_the_address() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let target = addr.to_string();
    let output = run(&["observe", "--server", &target, "--timeout", "2s"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&format!("failed to connect to '{target}'")),
        "{err}"
    );
    assert!(err.contains("--server"), "{err}");
}

#[test]
fn status_compact_and_json() {
    let server = FakeServer::start(Listen::Tcp);
    let output = run(&["status", "--server", &server.target]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!(
            "\
Healthcheck (via {}): Ok
Current/Max Flows: 4,095/4,095 (100.00%)
Flows/s: 3.50
Connected Nodes: 1/2
Unavailable Nodes: 1
  - kind-worker2
",
            server.target
        )
    );
    let output = run(&["status", "--server", &server.target, "-o", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(value["num_flows"], "4095");
    assert_eq!(value["num_unavailable_nodes"], 1);
    assert_eq!(value["version"], "cilium-rs");
}

#[test]
fn list_nodes_table_and_json() {
    let server = FakeServer::start(Listen::Tcp);
    let output = run(&["list", "nodes", "--server", &server.target]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "\
NAME           STATUS        AGE    FLOWS/S   CURRENT/MAX-FLOWS
kind-worker    Connected     2m0s   2.00      100/4095 (  2.44%)
kind-worker2   Unavailable   N/A    N/A       N/A
"
    );
    let output = run(&["list", "node", "--server", &server.target, "-o", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(value[0]["name"], "kind-worker");
    assert_eq!(value[0]["state"], "NODE_CONNECTED");
    assert_eq!(value[1]["state"], "NODE_UNAVAILABLE");
}

#[test]
fn help_is_available_everywhere() {
    for args in [
        &["--help"][..],
        &["observe", "--help"],
        &["status", "--help"],
        &["list", "--help"],
        &["list", "nodes", "--help"],
    ] {
        let output = run(args);
        assert!(output.status.success(), "{args:?}");
        assert!(stdout(&output).contains("Usage: hubble"), "{args:?}");
    }
    let observe_help = stdout(&run(&["observe", "--help"]));
    for flag in [
        "--from-pod",
        "--not",
        "--follow",
        "--since",
        "--output",
        "--server",
    ] {
        assert!(observe_help.contains(flag), "observe --help lacks {flag}");
    }
}
