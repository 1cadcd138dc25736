//! Hubble throughput (DESIGN 6: >= 100k flows/s through the agent observer, >= 50k/s through
//! the relay, no loss at the default 4095-flow ring), and what it costs in CPU and memory.
//!
//! Synthetic monitor events with a realistic mix (see `harness::event_mix`) between 100 local
//! endpoints and 100 remote pods, all known to the [`EnrichmentCache`], go through the agent's
//! pipeline as `cilium_cmd::hubble_server` wires it: a bounded batch queue standing in for the
//! datapath's event ring buffer, the reader loop (parse each batch with the [`FlowParser`],
//! store it with one `LocalObserver::record_flows`, Hubble's metrics on), the Observer gRPC
//! service on loopback TCP, and one `GetFlows --follow` client (a real `ObserverClient` over
//! HTTP/2, on its own thread).
//!
//! 1. Parser and filters alone, on one thread; the enrichment cache's memory per 1k endpoints.
//! 2. Agent observer: three trials at the target rate (100k/s) count how often nothing is
//!    lost; then paced trials find the highest offered rate the client receives entirely
//!    (no datapath queue overflow, no `HUBBLE_RING_BUFFER` lost events), confirmed by a longer
//!    trial; then one unpaced trial (the producer waits when the queue is full) shows the
//!    saturation rate.
//! 3. Relay: two such nodes, a Peer service on the first listing both, `hubble::relay::Relay`
//!    with its default configuration, and the follow client on the relay; the same trials
//!    (target 50k/s).
//!
//! CPU time is read per thread group from `/proc/self/task/*/stat`: `hb-agent` (the nodes'
//! runtime: readers, observers, gRPC servers), `hb-relay` (the relay's runtime), `hb-client`,
//! `hb-producer` (the synthetic datapath). Memory is the process's VmRSS before/after each
//! trial and its VmHWM. `cmd/benches/hubble_agent.rs` runs the same trials against the real
//! agent's Hubble over the fake datapath.
//!
//! Run: `cargo bench -p hubble --bench hubble_throughput` (no root, loopback only, about a
//! minute). `HUBBLE_BENCH_TRIAL_MS` sets the length of one trial (default 1500).

mod harness;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datapath::api::EndpointId;
use datapath::monitor::MonitorEvent;
use harness::{BenchResult, Offer, Peer, Pipeline, Running, TrialResult};
use hubble::enrich::EnrichmentCache;
use hubble::filter::FlowFilters;
use hubble::metrics::HubbleMetrics;
use hubble::observer::{LocalObserver, ObserverConfig, ObserverService};
use hubble::parser::{EndpointInfo, FlowParser, IpInfo};
use hubble::peer::{PeerService, PeerSet};
use hubble::relay::{PeerState, Relay, RelayConfig};
use hubble::ring::Capacity;
use model::identity::NumericIdentity;
use proto::flow::{Flow, FlowFilter, Verdict};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;

const LOCAL_ENDPOINTS: u16 = 100;
const REMOTE_PODS: u8 = 100;
/// Trials at exactly the target rate.
const REPEATS: usize = 3;

fn main() -> BenchResult<()> {
    let trial = harness::trial_length()?;
    print!("hubble throughput: ");
    harness::print_setup(trial);
    println!(
        "one stored flow: {} bytes inline (GetFlowsResponse) plus its strings",
        std::mem::size_of::<proto::observer::GetFlowsResponse>()
    );
    let memory = enrichment_memory()?;
    println!(
        "enrichment cache: {memory:.0} KiB RSS per 1k endpoints (+1k remote IPs, 1k identities)"
    );

    let cache = Arc::new(enrichment_cache());
    let local: Vec<Peer> = (0..LOCAL_ENDPOINTS)
        .map(|i| Peer {
            endpoint: EndpointId::new(100 + i),
            ip: local_ip(i),
            identity: local_identity(i),
        })
        .collect();
    let remote: Vec<Peer> = (0..REMOTE_PODS)
        .map(|i| Peer {
            endpoint: EndpointId::new(0),
            ip: remote_ip(i),
            identity: remote_identity(i),
        })
        .collect();
    let templates = Arc::new(harness::event_mix(&local, &remote));
    single_thread_rates(&cache, &templates)?;

    let bench = Bench {
        agent: tokio::runtime::Builder::new_multi_thread()
            .thread_name("hb-agent")
            .enable_all()
            .build()?,
        relay: tokio::runtime::Builder::new_multi_thread()
            .thread_name("hb-relay")
            .enable_all()
            .build()?,
        cache,
        templates,
    };

    let mut summary = Vec::new();
    for mode in [Mode::Observer, Mode::Relay] {
        let pipeline = ModePipeline {
            bench: &bench,
            mode,
        };
        println!("\n{}", mode.title());
        println!("{}", TrialResult::header());
        let at_target = harness::verify(&pipeline, f64::from(mode.target()), trial, REPEATS)?;
        let best = harness::search(&pipeline, trial)?;
        let saturated = harness::run_trial(&pipeline, Offer::Unpaced, trial)?;
        println!("{}", saturated.row());
        summary.push((mode, at_target, best, saturated));
    }

    println!("\nsummary (targets: DESIGN 6; CPU: nodes + relay threads per 100k flows delivered)");
    println!(
        "{:<16} {:>8} {:>14} {:>16} {:>18} {:>14} {:>14}",
        "path",
        "target",
        "0-loss at tgt",
        "max 0-loss fl/s",
        "saturated fl/s",
        "CPU s/100k",
        "peak RSS MiB"
    );
    for (mode, at_target, best, saturated) in &summary {
        let (rate, cpu, hwm) = best.as_ref().map_or((0.0, 0.0, 0.0), |b| {
            (b.offered_rate, b.server_cpu_per_100k(), b.hwm_kib / 1024.0)
        });
        println!(
            "{:<16} {:>8} {:>14} {:>16.0} {:>18.0} {:>14.3} {:>14.1}",
            mode.name(),
            mode.target(),
            format!("{at_target}/{REPEATS} runs"),
            rate,
            saturated.delivered_rate,
            cpu,
            hwm,
        );
    }
    println!("load average at the end: {}", harness::load_average());
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One node, the client on its Observer.
    Observer,
    /// Two nodes behind the relay, the client on the relay.
    Relay,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Observer => "agent observer",
            Mode::Relay => "relay (2 nodes)",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Mode::Observer => {
                "agent observer: events -> parser -> ring (4095) -> gRPC -> 1 follow client"
            }
            Mode::Relay => {
                "relay: 2 x (events -> parser -> ring -> gRPC) -> relay (sort buffer 100) -> \
                 1 follow client"
            }
        }
    }

    fn target(self) -> u32 {
        match self {
            Mode::Observer => 100_000,
            Mode::Relay => 50_000,
        }
    }

    fn nodes(self) -> usize {
        match self {
            Mode::Observer => 1,
            Mode::Relay => 2,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic cluster

fn local_ip(i: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, (i % 250) as u8 + 1))
}

fn remote_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 2, i % 250 + 1))
}

fn local_identity(i: u16) -> NumericIdentity {
    NumericIdentity::new(10_000 + u32::from(i % 20))
}

fn remote_identity(i: u8) -> NumericIdentity {
    NumericIdentity::new(20_000 + u32::from(i % 20))
}

fn pod_labels(app: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("k8s:app={app}"),
        format!("k8s:io.kubernetes.pod.namespace={namespace}"),
        "k8s:io.cilium.k8s.policy.cluster=default".to_owned(),
        format!("k8s:io.cilium.k8s.policy.serviceaccount={app}"),
        "k8s:tier=backend".to_owned(),
    ]
}

fn endpoint_info(i: u16) -> EndpointInfo {
    EndpointInfo {
        id: 100 + u32::from(i),
        identity: local_identity(i).get(),
        namespace: "shop".to_owned(),
        pod_name: format!("web-{i}-7d9f8c6b5-x2x4z"),
        labels: pod_labels(&format!("web-{}", i % 20), "shop"),
        ips: vec![local_ip(i)],
    }
}

/// The cache the parser reads, filled as the agent's state sync fills it.
fn enrichment_cache() -> EnrichmentCache {
    let cache = EnrichmentCache::new();
    cache.replace_endpoints((0..LOCAL_ENDPOINTS).map(endpoint_info));
    cache.replace_ips(
        (0..LOCAL_ENDPOINTS)
            .map(|i| {
                (
                    local_ip(i),
                    IpInfo {
                        identity: local_identity(i).get(),
                        namespace: "shop".to_owned(),
                        pod_name: format!("web-{i}-7d9f8c6b5-x2x4z"),
                        host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))),
                    },
                )
            })
            .chain((0..REMOTE_PODS).map(|i| {
                (
                    remote_ip(i),
                    IpInfo {
                        identity: remote_identity(i).get(),
                        namespace: "db".to_owned(),
                        pod_name: format!("postgres-{i}"),
                        host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))),
                    },
                )
            })),
    );
    cache.replace_identities(
        (0..20u16)
            .map(|i| (local_identity(i), pod_labels(&format!("web-{i}"), "shop")))
            .chain((0..20u8).map(|i| {
                (
                    remote_identity(i),
                    pod_labels(&format!("postgres-{i}"), "db"),
                )
            })),
    );
    cache
}

/// RSS growth of an enrichment cache holding 1000 endpoints, 1000 remote addresses and 1000
/// identities, in KiB (allocated once, before anything else, so freed memory is not reused).
fn enrichment_memory() -> BenchResult<f64> {
    let before = harness::memory()?.rss_kib;
    let cache = EnrichmentCache::new();
    cache.replace_endpoints((0..1000u16).map(|i| EndpointInfo {
        id: u32::from(i) + 1,
        identity: 30_000 + u32::from(i),
        namespace: format!("ns-{}", i % 50),
        pod_name: format!("pod-{i}-7d9f8c6b5-x2x4z"),
        labels: pod_labels(&format!("app-{i}"), &format!("ns-{}", i % 50)),
        ips: vec![IpAddr::V4(Ipv4Addr::new(
            10,
            1,
            (i / 250) as u8,
            (i % 250) as u8,
        ))],
    }));
    cache.replace_ips((0..1000u16).map(|i| {
        (
            IpAddr::V4(Ipv4Addr::new(10, 2, (i / 250) as u8, (i % 250) as u8)),
            IpInfo {
                identity: 40_000 + u32::from(i),
                namespace: format!("ns-{}", i % 50),
                pod_name: format!("remote-{i}"),
                host_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, (i % 250) as u8))),
            },
        )
    }));
    cache.replace_identities((0..1000u32).map(|i| {
        (
            NumericIdentity::new(30_000 + i),
            pod_labels(&format!("app-{i}"), &format!("ns-{}", i % 50)),
        )
    }));
    let after = harness::memory()?.rss_kib;
    drop(cache);
    Ok(after - before)
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A parser whose event timestamps are nanoseconds since the Unix epoch (the producer stamps
/// events with the wall clock, so the relay's sort buffer sees current flows).
fn parser(node: &str, cache: &Arc<EnrichmentCache>) -> FlowParser {
    FlowParser::new(node.to_owned(), "default".to_owned(), cache.clone()).with_boot_time(UNIX_EPOCH)
}

/// Parser and filter rates on one thread, without any I/O.
fn single_thread_rates(
    cache: &Arc<EnrichmentCache>,
    templates: &Arc<Vec<MonitorEvent>>,
) -> BenchResult<()> {
    const ROUNDS: usize = 100;
    let parser = parser("node-1", cache);
    let start = Instant::now();
    let mut checksum = 0usize;
    for _ in 0..ROUNDS {
        for event in templates.iter() {
            checksum += parser.parse(event).source.map_or(0, |s| s.labels.len());
        }
    }
    let parse_rate = (ROUNDS * templates.len()) as f64 / start.elapsed().as_secs_f64();
    if checksum == 0 {
        return Err("the parser enriched no flow: the cache does not match the events".into());
    }

    let flows: Vec<Flow> = templates.iter().map(|e| parser.parse(e)).collect();
    let filters = FlowFilters::compile(
        &[
            FlowFilter {
                source_pod: vec!["db/".to_owned()],
                verdict: vec![Verdict::Dropped as i32],
                ..FlowFilter::default()
            },
            FlowFilter {
                destination_label: vec!["k8s:app=web-3".to_owned()],
                protocol: vec!["tcp".to_owned()],
                ..FlowFilter::default()
            },
        ],
        &[FlowFilter {
            destination_port: vec!["53".to_owned()],
            ..FlowFilter::default()
        }],
    )
    .map_err(|e| format!("filter: {e}"))?;
    let start = Instant::now();
    let mut matched = 0usize;
    for _ in 0..ROUNDS * 4 {
        matched += flows.iter().filter(|f| filters.matches(f)).count();
    }
    let filter_rate = (ROUNDS * 4 * flows.len()) as f64 / start.elapsed().as_secs_f64();
    println!("\nsingle thread, no I/O");
    println!("  parser (event -> enriched flow): {parse_rate:>12.0} events/s");
    println!(
        "  filters (2 whitelist + 1 blacklist, {:.1}% match): {filter_rate:>12.0} flows/s",
        matched as f64 * 100.0 / (ROUNDS * 4 * flows.len()) as f64
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The pipeline

/// One node's Hubble: the reader task, the observer, and the gRPC server.
struct Node {
    addr: SocketAddr,
    events: mpsc::Sender<Vec<MonitorEvent>>,
    stop: watch::Sender<bool>,
}

/// Starts a node on the current runtime: what `cilium_cmd::hubble_server::start` runs, over a
/// channel of event batches.
async fn start_node(
    name: &str,
    listener: TcpListener,
    cache: &Arc<EnrichmentCache>,
    peers: Option<watch::Receiver<PeerSet>>,
) -> BenchResult<Node> {
    let addr = listener.local_addr()?;
    let parser = parser(name, cache);
    let observer = LocalObserver::new(
        ObserverConfig {
            node_name: parser.node_name().to_owned(),
            address: addr.to_string(),
            capacity: Capacity::DEFAULT,
            version: "bench".to_owned(),
        },
        Some(Arc::new(HubbleMetrics::new())),
    );
    let (events, mut events_rx) =
        mpsc::channel::<Vec<MonitorEvent>>(harness::DATAPATH_QUEUE_BATCHES);
    let (stop, stop_rx) = watch::channel(false);
    let reader_observer = Arc::clone(&observer);
    let mut reader_stop = stop_rx.clone();
    // The agent's reader loop: one record_flows per batch, never waiting for a client.
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                _ = reader_stop.wait_for(|s| *s) => return,
                batch = events_rx.recv() => batch,
            };
            let Some(batch) = batch else { return };
            reader_observer.record_flows(batch.iter().map(|event| parser.parse(event)));
        }
    });
    let router = tonic::transport::Server::builder()
        .add_service(ObserverService::new(observer).into_server())
        .add_optional_service(peers.map(|peers| PeerService::new(peers).into_server()));
    let mut server_stop = stop_rx;
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(error) = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
        {
            eprintln!("node server failed: {error}");
        }
    });
    Ok(Node { addr, events, stop })
}

/// A relay serving on loopback, until `shutdown` fires.
struct RunningRelay {
    relay: Arc<Relay>,
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
}

/// The runtimes and workload shared by every trial.
struct Bench {
    agent: Runtime,
    relay: Runtime,
    cache: Arc<EnrichmentCache>,
    templates: Arc<Vec<MonitorEvent>>,
}

impl Bench {
    /// Starts the relay on its own runtime, following the Peer service of the first node,
    /// and waits until it is connected to every node.
    fn start_relay(&self, peer_service: SocketAddr) -> BenchResult<RunningRelay> {
        let relay = self.relay.block_on(async {
            Relay::start(RelayConfig {
                peer_services: vec![peer_service.to_string()],
                ..RelayConfig::default()
            })
        })?;
        let relay = Arc::new(relay);
        let listener = self
            .relay
            .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let serving = Arc::clone(&relay);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        self.relay.spawn(async move {
            let stop = async move {
                let _ = shutdown_rx.await;
            };
            if let Err(error) = serving.serve(listener, stop).await {
                eprintln!("relay server failed: {error}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let peers = relay.peers();
            if peers.len() == Mode::Relay.nodes()
                && peers.iter().all(|p| p.state == PeerState::Connected)
            {
                return Ok(RunningRelay {
                    relay,
                    addr,
                    shutdown,
                });
            }
            if Instant::now() > deadline {
                let mut states = String::new();
                for peer in &peers {
                    let _ = write!(states, " {}={:?}", peer.name, peer.state);
                }
                return Err(format!(
                    "the relay did not connect to both nodes within 10 s:{states}"
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One mode's pipeline: fresh nodes (and relay) per trial.
struct ModePipeline<'a> {
    bench: &'a Bench,
    mode: Mode,
}

impl Pipeline for ModePipeline<'_> {
    fn start(&self) -> BenchResult<Running> {
        let bench = self.bench;
        let listeners = bench.agent.block_on(async {
            let mut listeners = Vec::new();
            for _ in 0..self.mode.nodes() {
                listeners.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?);
            }
            Ok::<_, std::io::Error>(listeners)
        })?;
        let mut peer_set = PeerSet::new();
        for (i, listener) in listeners.iter().enumerate() {
            peer_set.insert(format!("node-{}", i + 1), listener.local_addr()?);
        }
        let (peers_tx, peers_rx) = watch::channel(peer_set);
        let nodes = bench.agent.block_on(async {
            let mut nodes = Vec::new();
            for (i, listener) in listeners.into_iter().enumerate() {
                let peers = (i == 0).then(|| peers_rx.clone());
                let name = format!("node-{}", i + 1);
                nodes.push(start_node(&name, listener, &bench.cache, peers).await?);
            }
            BenchResult::Ok(nodes)
        })?;
        let relay = match (self.mode, nodes.first()) {
            (Mode::Relay, Some(first)) => Some(bench.start_relay(first.addr)?),
            _ => None,
        };
        let client_addr = match (&relay, nodes.first()) {
            (Some(relay), _) => relay.addr,
            (None, Some(node)) => node.addr,
            (None, None) => return Err("no node started".into()),
        };
        let senders = nodes.iter().map(|n| n.events.clone()).collect();
        let relay_runtime = bench.relay.handle().clone();
        Ok(Running {
            senders,
            client_addr,
            relay: relay.is_some(),
            stop: Box::new(move || {
                if let Some(running) = relay {
                    let _ = running.shutdown.send(());
                    running.relay.stop();
                    relay_runtime.block_on(async move { drop(running.relay) });
                }
                for node in &nodes {
                    let _ = node.stop.send(true);
                }
                drop(peers_tx);
            }),
        })
    }

    fn agent_threads(&self) -> Option<&'static str> {
        Some("hb-agent")
    }

    fn relay_threads(&self) -> Option<&'static str> {
        (self.mode == Mode::Relay).then_some("hb-relay")
    }

    fn clock(&self) -> fn() -> u64 {
        unix_now_ns
    }

    fn templates(&self) -> Arc<Vec<MonitorEvent>> {
        Arc::clone(&self.bench.templates)
    }
}
