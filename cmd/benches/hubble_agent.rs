//! Flows/s through the real agent's Hubble (DESIGN 6: >= 100k/s with no loss at the default
//! 4095-flow ring), and its CPU and memory.
//!
//! A real agent (every actor) runs over the fake datapath in an actix system on a
//! multi-thread tokio runtime, as `cilium-agent` builds it, with 50 endpoints created through
//! its endpoint manager. For each trial `cilium_cmd::hubble_server::start` starts a fresh
//! Hubble on it, reading events from a bounded channel (the `EventSource` tests use, standing
//! in for the datapath's event ring buffer), and fills its enrichment cache from the actors;
//! one `GetFlows --follow` client on loopback TCP consumes. The synthetic events (the mix of
//! `hubble/benches/harness`) are pod-to-pod traffic between the agent's endpoints, so every
//! flow is enriched from the agent's own state.
//!
//! The trials are those of `hubble/benches/hubble_throughput.rs` (shared harness): three at
//! the target rate, then paced rates up to the highest one without loss, confirmed by a longer trial, then an unpaced
//! one. Agent CPU here is the whole process but the client's and the producer's threads (the
//! agent's actors, arbiters and Hubble tasks).
//!
//! Run: `cargo bench -p cmd --bench hubble_agent` (no root, loopback only, under a minute).
//! `HUBBLE_BENCH_TRIAL_MS` sets the length of one trial (default 1500).

#[path = "../../hubble/benches/harness/mod.rs"]
mod harness;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actors::endpoint::CreateEndpoint;
use actors::identity::IdentityBackend;
use actors::policy::EnforcementMode;
use cilium_cmd::daemon::{AgentConfig, AgentHandles, KvstoreMode, start_agent};
use cilium_cmd::hubble_server::{self, HubbleConfig};
use datapath::fake::FakeDatapath;
use datapath::fake_link::FakeLinks;
use datapath::monitor::MonitorEvent;
use harness::{BenchResult, Offer, Peer, Pipeline, Running, TrialResult};
use hubble::ring::Capacity;
use model::identity::{ClusterId, ClusterName};
use model::labels::{Label, Labels};
use proto::observer::GetFlowsRequest;
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_client::ObserverClient;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

const ENDPOINTS: usize = 50;
/// DESIGN 6's target for the agent observer, flows/s.
const TARGET: f64 = 100_000.0;
/// Trials at exactly the target rate.
const REPEATS: usize = 3;
/// How long a fresh Hubble may take to enrich flows from the actors (its first state sync).
const ENRICH_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> BenchResult<()> {
    let trial = harness::trial_length()?;
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("hb-agent")
            .build()
            .unwrap_or_else(|error| {
                eprintln!("cannot start the tokio runtime: {error}");
                std::process::exit(1)
            })
    });
    system.block_on(run(trial))
}

async fn run(trial: Duration) -> BenchResult<()> {
    print!("hubble through the agent: ");
    harness::print_setup(trial);
    let dir = tempfile::tempdir()?;
    let config = AgentConfig {
        node_name: "bench-node".to_owned(),
        cluster_name: ClusterName::new("default")?,
        cluster_id: ClusterId::new(1),
        enforcement: EnforcementMode::Default,
        ipv4_range: Some("10.210.0.0/24".parse()?),
        state_dir: dir.path().join("state"),
        map_dir: dir.path().join("bpf/tc/globals"),
        identity_backend: IdentityBackend::Local,
        kvstore: KvstoreMode::Disabled,
        cluster: None,
        hubble_enabled: true,
    };
    std::fs::create_dir_all(&config.state_dir)?;
    let rss_before_agent = harness::memory()?.rss_kib;
    let agent = start_agent(
        config,
        Box::new(FakeDatapath::new()),
        Arc::new(FakeLinks::new()),
    )
    .await?;
    agent.restore().await?;
    let manager = agent
        .handles
        .endpoints
        .clone()
        .ok_or("the agent has no endpoint manager")?;
    let mut peers = Vec::with_capacity(ENDPOINTS);
    for i in 0..ENDPOINTS {
        let labels: Labels = [
            format!("k8s:app=web-{}", i % 10),
            "k8s:io.kubernetes.pod.namespace=shop".to_owned(),
            "k8s:tier=backend".to_owned(),
        ]
        .iter()
        .map(|l| l.parse::<Label>())
        .collect::<Result<_, _>>()?;
        let created = manager
            .send(CreateEndpoint {
                container_id: format!("bench{i:04}"),
                netns: format!("/var/run/netns/bench{i:04}").into(),
                ifname: "eth0".to_owned(),
                pod_name: format!("web-{i}"),
                pod_namespace: "shop".to_owned(),
                labels,
                requested_ip: None,
                named_ports: Vec::new(),
            })
            .await
            .map_err(|_| "the endpoint manager is gone")??;
        peers.push(Peer {
            endpoint: created.id,
            ip: IpAddr::V4(created.ip),
            identity: created.identity,
        });
    }
    println!(
        "agent with {ENDPOINTS} endpoints: RSS {:.1} MiB (+{:.1} MiB for the agent)",
        harness::memory()?.rss_kib / 1024.0,
        (harness::memory()?.rss_kib - rss_before_agent) / 1024.0
    );
    let (servers, clients) = peers.split_at(ENDPOINTS / 2);
    let templates = Arc::new(harness::event_mix(servers, clients));

    let pipeline = AgentPipeline {
        handles: agent.handles.clone(),
        runtime: Handle::current(),
        templates,
        probe: peers.first().copied().ok_or("no endpoint")?,
    };
    // The trials block their thread; the agent keeps running on the runtime meanwhile.
    let result = tokio::task::spawn_blocking(move || -> BenchResult<()> {
        println!(
            "\nagent: events -> EventSource -> parser -> ring (4095) -> gRPC -> 1 follow client"
        );
        println!("{}", TrialResult::header());
        let at_target = harness::verify(&pipeline, TARGET, trial, REPEATS)?;
        let best = harness::search(&pipeline, trial)?;
        let saturated = harness::run_trial(&pipeline, Offer::Unpaced, trial)?;
        println!("{}", saturated.row());
        let rate = best.as_ref().map_or(0.0, |b| b.offered_rate);
        println!(
            "\nagent observer: no loss at the target {TARGET:.0} flows/s in {at_target}/{REPEATS} \
             runs; max 0-loss {rate:.0} flows/s, saturated {:.0} flows/s, agent CPU {:.3} s \
             per 100k flows, peak RSS {:.1} MiB",
            saturated.delivered_rate,
            best.as_ref().map_or(0.0, TrialResult::server_cpu_per_100k),
            best.as_ref().map_or(0.0, |b| b.hwm_kib / 1024.0),
        );
        println!("load average at the end: {}", harness::load_average());
        Ok(())
    })
    .await;
    agent.stop();
    result?
}

/// The real agent's Hubble, started afresh for each trial.
struct AgentPipeline {
    handles: AgentHandles,
    runtime: Handle,
    templates: Arc<Vec<MonitorEvent>>,
    /// An endpoint whose flows show that the enrichment cache is filled.
    probe: Peer,
}

impl Pipeline for AgentPipeline {
    fn start(&self) -> BenchResult<Running> {
        let (events, events_rx) = mpsc::channel(harness::DATAPATH_QUEUE_BATCHES);
        let server = self.runtime.block_on(hubble_server::start(
            &self.handles,
            HubbleConfig {
                listen_address: "127.0.0.1:0".to_owned(),
                socket_path: None,
                capacity: Capacity::DEFAULT,
                metrics_address: String::new(),
                node_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            },
            events_rx,
        ))?;
        let addr = server.tcp_address().ok_or("Hubble does not serve on TCP")?;
        let probe = self
            .templates
            .iter()
            .find(|e| e.destination_endpoint == self.probe.endpoint)
            .cloned()
            .ok_or("no event for the probe endpoint")?;
        let enriched = self
            .runtime
            .block_on(wait_enriched(addr, &events, probe, &self.probe));
        let runtime = self.runtime.clone();
        let stop = move || runtime.block_on(server.stop());
        if let Err(error) = enriched {
            stop();
            return Err(error);
        }
        Ok(Running {
            senders: vec![events],
            client_addr: addr,
            relay: false,
            stop: Box::new(stop),
        })
    }

    fn agent_threads(&self) -> Option<&'static str> {
        None
    }

    fn relay_threads(&self) -> Option<&'static str> {
        None
    }

    fn clock(&self) -> fn() -> u64 {
        monotonic_ns
    }

    fn templates(&self) -> Arc<Vec<MonitorEvent>> {
        Arc::clone(&self.templates)
    }
}

/// Sends `probe` until the newest stored flow names the probe endpoint's pod: the agent's
/// state sync has filled the enrichment cache.
async fn wait_enriched(
    addr: std::net::SocketAddr,
    events: &mpsc::Sender<Vec<MonitorEvent>>,
    mut probe: MonitorEvent,
    endpoint: &Peer,
) -> BenchResult<()> {
    let mut client = ObserverClient::connect(format!("http://{addr}")).await?;
    let deadline = Instant::now() + ENRICH_DEADLINE;
    while Instant::now() < deadline {
        probe.timestamp_ns = monotonic_ns();
        events
            .send(vec![probe.clone()])
            .await
            .map_err(|_| "the Hubble event reader stopped")?;
        let mut stream = client
            .get_flows(GetFlowsRequest {
                number: 1,
                ..GetFlowsRequest::default()
            })
            .await?
            .into_inner();
        if let Some(response) = stream.message().await?
            && let Some(ResponseTypes::Flow(flow)) = response.response_types
            && flow
                .destination
                .is_some_and(|d| d.identity == endpoint.identity.get() && !d.pod_name.is_empty())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("flows were not enriched within {ENRICH_DEADLINE:?}").into())
}

/// Nanoseconds on the clock datapath events carry (time since boot; `/proc/uptime` read once,
/// advanced with `Instant`), so the parser turns them into current flow times.
fn monotonic_ns() -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let (start, uptime_ns) = BASE.get_or_init(|| {
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        (Instant::now(), (uptime * 1e9) as u64)
    });
    uptime_ns + u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
