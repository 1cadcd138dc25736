//! What the Hubble throughput benches share: the synthetic datapath (an event mix and a
//! paced producer), the `GetFlows --follow` client, CPU and memory readings from `/proc`, one
//! trial's numbers, and the search for the highest rate without loss.
//!
//! Used by `hubble/benches/hubble_throughput.rs` (the observer pipeline and the relay built
//! from the library) and `cmd/benches/hubble_agent.rs` (the agent's own Hubble over the fake
//! datapath); each supplies how to start a fresh pipeline for one trial.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datapath::api::{EndpointId, MacAddr, Protocol};
use datapath::monitor::{
    MonitorEvent, MonitorEventKind, ObservationPoint, PolicyMatchType, TcpFlags, TraceState,
    TrafficDirection,
};
use model::identity::NumericIdentity;
use proto::flow::LostEventSource;
use proto::observer::GetFlowsRequest;
use proto::observer::get_flows_response::ResponseTypes;
use proto::observer::observer_client::ObserverClient;
use tokio::sync::{mpsc, oneshot};

/// Events per batch handed to the reader (what one wakeup of the datapath reader drains).
pub const BATCH: usize = 64;
/// Batches the stand-in for the datapath's ring buffer holds before it drops (4096 events).
pub const DATAPATH_QUEUE_BATCHES: usize = 64;
/// Distinct events the producer cycles through.
const TEMPLATES: usize = 4096;
/// Linux reports thread CPU times in USER_HZ, 100 per second on every architecture.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// A follow client that hears nothing for this long after the producer ended has all it gets
/// (the relay's sort buffer releases its last flows after its 1 s drain timeout).
const IDLE_END: Duration = Duration::from_millis(2500);
/// How often the client looks at the producer's progress while waiting for a response.
const POLL: Duration = Duration::from_millis(50);
/// Zero-loss search: start here, grow by RATE_STEP while the trial loses nothing.
const START_RATE: f64 = 50_000.0;
const RATE_STEP: f64 = 1.5;
const MAX_RATE: f64 = 3_000_000.0;
/// Bisection steps between the last clean and the first lossy rate.
const BISECTIONS: usize = 3;
/// The best rate is confirmed with a trial this many times as long.
const CONFIRM_FACTOR: u32 = 3;
/// Confirmation attempts, each at this fraction of the previous rate.
const CONFIRM_ATTEMPTS: usize = 4;
const CONFIRM_STEP_DOWN: f64 = 0.85;

pub type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// One side of the synthetic traffic.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The local endpoint (0 for a remote peer).
    pub endpoint: EndpointId,
    pub ip: IpAddr,
    pub identity: NumericIdentity,
}

#[derive(Debug, Clone, Copy)]
pub enum Offer {
    /// Batches at this total rate (events/s); a full datapath queue drops the batch.
    Paced(f64),
    /// As fast as the reader takes them: the producer waits on a full queue.
    Unpaced,
}

fn base_event(kind: MonitorEventKind) -> MonitorEvent {
    MonitorEvent {
        kind,
        source_endpoint: EndpointId::new(0),
        destination_endpoint: EndpointId::new(0),
        source_identity: NumericIdentity::new(0),
        destination_identity: NumericIdentity::new(0),
        source_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        destination_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        source_port: 0,
        destination_port: 0,
        protocol: Protocol::TCP,
        tcp_flags: None,
        icmp: None,
        is_reply: false,
        // Every frame on a veth has an Ethernet header: the parser formats both addresses.
        ethernet: Some((
            MacAddr([0x02, 0, 0, 0, 0, 0x11]),
            MacAddr([0x02, 0, 0, 0, 0, 0x22]),
        )),
        packet_len: 66,
        captured_len: 66,
        ifindex: 7,
        hash: 0,
        cpu: Some(0),
        timestamp_ns: 0,
    }
}

/// Ten kinds of events in equal parts, what a busy node with policies emits, between the
/// `local` endpoints of the node and `remote` peers (cycled through): traces to-endpoint
/// (established PSH/ACK, new SYN), to-stack (SYN/ACK reply, FIN/ACK), from-endpoint UDP DNS,
/// `POLICY_DENIED` drops, and allowed and denied policy verdicts.
pub fn event_mix(local: &[Peer], remote: &[Peer]) -> Vec<MonitorEvent> {
    let trace = |point, state| MonitorEventKind::Trace {
        observation_point: point,
        state,
    };
    (0..TEMPLATES)
        .map(|n| {
            let local = local[n % local.len()];
            let remote = remote[n % remote.len()];
            let ephemeral = 32_768 + (n % 28_000) as u16;
            // Remote pod -> local endpoint (ingress), and its reverse (egress).
            let ingress = |mut e: MonitorEvent| {
                e.source_ip = remote.ip;
                e.source_identity = remote.identity;
                e.destination_ip = local.ip;
                e.destination_identity = local.identity;
                e.destination_endpoint = local.endpoint;
                e.source_port = ephemeral;
                e.destination_port = 8080;
                e
            };
            let egress = |mut e: MonitorEvent| {
                e.source_ip = local.ip;
                e.source_identity = local.identity;
                e.source_endpoint = local.endpoint;
                e.destination_ip = remote.ip;
                e.destination_identity = remote.identity;
                e.source_port = ephemeral;
                e.destination_port = 5432;
                e
            };
            let mut event = match n % 10 {
                0..=2 => {
                    let mut e = ingress(base_event(trace(
                        ObservationPoint::ToEndpoint,
                        TraceState::Established,
                    )));
                    e.tcp_flags = Some(TcpFlags(0x18)); // PSH, ACK
                    e.packet_len = 1500;
                    e
                }
                3 => {
                    let mut e = ingress(base_event(trace(
                        ObservationPoint::ToEndpoint,
                        TraceState::New,
                    )));
                    e.tcp_flags = Some(TcpFlags(0x02)); // SYN
                    e
                }
                4 => {
                    let mut e = egress(base_event(trace(
                        ObservationPoint::ToStack,
                        TraceState::Reply,
                    )));
                    e.tcp_flags = Some(TcpFlags(0x12)); // SYN, ACK
                    e.is_reply = true;
                    e
                }
                5 => {
                    let mut e = egress(base_event(trace(
                        ObservationPoint::ToStack,
                        TraceState::Established,
                    )));
                    e.tcp_flags = Some(TcpFlags(0x11)); // FIN, ACK
                    e
                }
                6 => {
                    let mut e = egress(base_event(trace(
                        ObservationPoint::FromEndpoint,
                        TraceState::New,
                    )));
                    e.protocol = Protocol::UDP;
                    e.destination_ip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
                    e.destination_identity = NumericIdentity::new(2);
                    e.destination_port = 53;
                    e
                }
                7 => {
                    let mut e = ingress(base_event(MonitorEventKind::Drop {
                        reason: 133,
                        reason_name: Some("Policy denied".to_owned()),
                        ext_error: 0,
                        file: 1,
                        line: 1234,
                    }));
                    e.tcp_flags = Some(TcpFlags(0x02));
                    e
                }
                8 => {
                    let mut e = ingress(base_event(MonitorEventKind::PolicyVerdict {
                        verdict: 0,
                        direction: TrafficDirection::Ingress,
                        match_type: PolicyMatchType::L3L4,
                        cookie: 0,
                    }));
                    e.tcp_flags = Some(TcpFlags(0x02));
                    e
                }
                _ => {
                    let mut e = egress(base_event(MonitorEventKind::PolicyVerdict {
                        verdict: -133,
                        direction: TrafficDirection::Egress,
                        match_type: PolicyMatchType::None,
                        cookie: 0,
                    }));
                    e.tcp_flags = Some(TcpFlags(0x02));
                    e
                }
            };
            event.hash = n as u32;
            event.cpu = Some((n % 2) as u32);
            event
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Measurement

#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: f64,
    pub hwm_kib: f64,
}

pub fn memory() -> BenchResult<Memory> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let field = |name: &str| -> BenchResult<f64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .ok_or_else(|| format!("no {name} in /proc/self/status").into())
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// `(comm, utime + stime in ticks)` of a `stat` file's content.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the slice starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks of the calling thread.
pub fn this_thread_ticks() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(0, |(_, ticks)| ticks)
}

/// CPU ticks of the live threads whose name starts with `prefix`.
pub fn threads_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| parse_stat(&stat))
        .filter(|(comm, _)| comm.starts_with(prefix))
        .map(|(_, ticks)| ticks)
        .sum()
}

/// CPU ticks of the whole process, exited threads included.
pub fn process_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(0, |(_, ticks)| ticks)
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn seconds(ticks: u64) -> f64 {
    ticks as f64 / CLOCK_TICKS_PER_SECOND
}

// ---------------------------------------------------------------------------------------------
// Producer, client, trial

/// What the synthetic datapath did in one trial.
#[derive(Debug, Default)]
struct ProducerReport {
    offered: u64,
    /// Events dropped because the datapath queue was full.
    dropped: u64,
    elapsed: Duration,
    ticks: u64,
}

/// Sends event batches round-robin to `nodes` for `duration`, stamped with `clock`.
fn produce(
    nodes: &[mpsc::Sender<Vec<MonitorEvent>>],
    templates: &[MonitorEvent],
    offer: Offer,
    duration: Duration,
    clock: fn() -> u64,
) -> ProducerReport {
    let ticks_before = this_thread_ticks();
    let mut report = ProducerReport::default();
    let interval = match offer {
        Offer::Paced(rate) => Some(Duration::from_secs_f64(BATCH as f64 / rate)),
        Offer::Unpaced => None,
    };
    let start = Instant::now();
    let mut events = templates.iter().cycle();
    let mut targets = nodes.iter().cycle();
    for batch_index in 0u32.. {
        let now = Instant::now();
        if now - start >= duration {
            break;
        }
        if let Some(interval) = interval {
            let due = start + interval * batch_index;
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let stamp = clock();
        let batch: Vec<MonitorEvent> = events
            .by_ref()
            .take(BATCH)
            .zip(0u64..)
            .map(|(event, i)| MonitorEvent {
                timestamp_ns: stamp + i,
                ..event.clone()
            })
            .collect();
        let Some(node) = targets.next() else { break };
        report.offered += BATCH as u64;
        let sent = match offer {
            Offer::Paced(_) => node.try_send(batch).is_ok(),
            Offer::Unpaced => node.blocking_send(batch).is_ok(),
        };
        if !sent {
            report.dropped += BATCH as u64;
        }
    }
    report.elapsed = start.elapsed();
    report.ticks = this_thread_ticks() - ticks_before;
    report
}

/// What the follow client received in one trial.
#[derive(Debug, Default)]
struct ClientReport {
    flows: u64,
    ring_lost: u64,
    other_lost: u64,
    node_connected: u64,
    node_unavailable: u64,
    ticks: u64,
    error: Option<String>,
}

/// Shared between the main thread and the client.
#[derive(Debug, Default)]
struct ClientProgress {
    flows: AtomicU64,
    /// Set once the producer ended, with `expected` the events it got into the pipeline.
    producer_done: AtomicBool,
    expected: AtomicU64,
}

/// Runs one follow client on its own thread and runtime; `ready` fires once the stream is
/// open (the server has registered the reader).
fn spawn_client(
    addr: SocketAddr,
    progress: Arc<ClientProgress>,
    ready: oneshot::Sender<()>,
) -> std::io::Result<std::thread::JoinHandle<ClientReport>> {
    std::thread::Builder::new()
        .name("hb-client".to_owned())
        .spawn(move || {
            let ticks_before = this_thread_ticks();
            let mut report = ClientReport::default();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    report.error = Some(error.to_string());
                    return report;
                }
            };
            if let Err(error) = runtime.block_on(follow(addr, &progress, ready, &mut report)) {
                report.error = Some(error.to_string());
            }
            report.ticks = this_thread_ticks() - ticks_before;
            report
        })
}

async fn follow(
    addr: SocketAddr,
    progress: &ClientProgress,
    ready: oneshot::Sender<()>,
    report: &mut ClientReport,
) -> BenchResult<()> {
    let mut client = ObserverClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| format!("connect: {e}"))?
        .max_decoding_message_size(16 << 20);
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..GetFlowsRequest::default()
        })
        .await
        .map_err(|e| format!("GetFlows: {e}"))?
        .into_inner();
    let _ = ready.send(());
    let mut last_message = Instant::now();
    loop {
        let producer_done = progress.producer_done.load(Ordering::Acquire);
        if producer_done
            && report.flows + report.ring_lost + report.other_lost
                >= progress.expected.load(Ordering::Acquire)
        {
            return Ok(());
        }
        // Short waits, so the end of production is noticed even when nothing more arrives.
        let message = match tokio::time::timeout(POLL, stream.message()).await {
            Ok(message) => message.map_err(|e| format!("stream: {e}"))?,
            Err(_) if producer_done && last_message.elapsed() >= IDLE_END => return Ok(()),
            Err(_) => continue,
        };
        last_message = Instant::now();
        let Some(response) = message else {
            return Err("the server ended the follow stream".into());
        };
        match response.response_types {
            Some(ResponseTypes::Flow(_)) => {
                report.flows += 1;
                progress.flows.store(report.flows, Ordering::Release);
            }
            Some(ResponseTypes::LostEvents(lost)) => {
                if lost.source == LostEventSource::HubbleRingBuffer as i32 {
                    report.ring_lost += lost.num_events_lost;
                } else {
                    report.other_lost += lost.num_events_lost;
                }
            }
            Some(ResponseTypes::NodeStatus(status)) => {
                if status.state_change == proto::relay::NodeState::NodeConnected as i32 {
                    report.node_connected += 1;
                } else {
                    report.node_unavailable += 1;
                }
            }
            _ => {}
        }
    }
}

/// One trial's numbers.
#[derive(Debug, Clone)]
pub struct TrialResult {
    offer: String,
    pub offered_rate: f64,
    /// Flows the client had received when the producer stopped, per second of production.
    pub delivered_rate: f64,
    flows: u64,
    offered: u64,
    datapath_dropped: u64,
    ring_lost: u64,
    node_events: String,
    agent_ticks: u64,
    relay_ticks: u64,
    client_ticks: u64,
    producer_ticks: u64,
    process_ticks: u64,
    /// From the producer's end to the client's last flow.
    tail: Duration,
    rss_before_kib: f64,
    rss_after_kib: f64,
    pub hwm_kib: f64,
}

impl TrialResult {
    fn lost(&self) -> u64 {
        self.offered.saturating_sub(self.flows)
    }

    pub fn clean(&self) -> bool {
        self.lost() == 0 && self.ring_lost == 0 && self.datapath_dropped == 0
    }

    fn per_100k(&self, ticks: u64) -> f64 {
        if self.flows == 0 {
            return 0.0;
        }
        seconds(ticks) * 100_000.0 / self.flows as f64
    }

    /// Server-side CPU (nodes and relay) per 100k flows delivered.
    pub fn server_cpu_per_100k(&self) -> f64 {
        self.per_100k(self.agent_ticks + self.relay_ticks)
    }

    pub fn header() -> String {
        format!(
            "{:>10} {:>10} {:>10} {:>9} {:>7} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} \
             {:>6} {:>13} {:>6}",
            "offer",
            "offered/s",
            "recv'd/s",
            "flows",
            "lost",
            "dp-drop",
            "ringlost",
            "nodes",
            "agentCPU",
            "relayCPU",
            "client",
            "produce",
            "process",
            "tail",
            "RSS MiB",
            "HWM"
        )
    }

    pub fn row(&self) -> String {
        let mut row = format!(
            "{:>10} {:>10.0} {:>10.0} {:>9} {:>7} {:>7} {:>7} {:>6} {:>7.3}s {:>7.3}s {:>6.3}s \
             {:>6.3}s {:>6.3}s {:>5}ms {:>6.1}->{:<6.1} {:>6.1}",
            self.offer,
            self.offered_rate,
            self.delivered_rate,
            self.flows,
            self.lost(),
            self.datapath_dropped,
            self.ring_lost,
            self.node_events,
            self.per_100k(self.agent_ticks),
            self.per_100k(self.relay_ticks),
            self.per_100k(self.client_ticks),
            self.per_100k(self.producer_ticks),
            self.per_100k(self.process_ticks),
            self.tail.as_millis(),
            self.rss_before_kib / 1024.0,
            self.rss_after_kib / 1024.0,
            self.hwm_kib / 1024.0
        );
        if self.clean() {
            row.push_str("  ok");
        } else {
            row.push_str("  LOSS");
        }
        row
    }
}

/// A pipeline started for one trial.
pub struct Running {
    /// One event queue per node: the stand-in for its datapath's event ring buffer.
    pub senders: Vec<mpsc::Sender<Vec<MonitorEvent>>>,
    /// Where the follow client connects (the node, or the relay).
    pub client_addr: SocketAddr,
    /// Whether the client talks to a relay (which reports node status events).
    pub relay: bool,
    /// Stops what `Pipeline::start` started.
    pub stop: Box<dyn FnOnce()>,
}

/// What a bench measures: how to start a fresh pipeline, and where its CPU time goes.
pub trait Pipeline {
    /// Starts fresh nodes (and relay) for one trial; returns once they serve.
    fn start(&self) -> BenchResult<Running>;
    /// Name prefix of the nodes' threads; `None`: every thread but the producer's, the
    /// client's and the relay's.
    fn agent_threads(&self) -> Option<&'static str>;
    /// Name prefix of the relay's threads, if there is a relay.
    fn relay_threads(&self) -> Option<&'static str>;
    /// Event timestamps in the clock the nodes' parsers expect.
    fn clock(&self) -> fn() -> u64;
    /// The events the producer cycles through.
    fn templates(&self) -> Arc<Vec<MonitorEvent>>;
}

/// One trial: a fresh pipeline, one follow client, `offer` for `duration`, then waits for
/// the client to get everything (or go idle).
pub fn run_trial(
    pipeline: &impl Pipeline,
    offer: Offer,
    duration: Duration,
) -> BenchResult<TrialResult> {
    let running = pipeline.start()?;
    let progress = Arc::new(ClientProgress::default());
    let (ready_tx, ready_rx) = oneshot::channel();
    let client = spawn_client(running.client_addr, Arc::clone(&progress), ready_tx)?;
    if ready_rx.blocking_recv().is_err() {
        let report = client.join().map_err(|_| "the client panicked")?;
        (running.stop)();
        return Err(format!("the follow client did not start: {:?}", report.error).into());
    }

    let rss_before = memory()?.rss_kib;
    let agent_before = pipeline.agent_threads().map(threads_ticks);
    let relay_before = pipeline.relay_threads().map_or(0, threads_ticks);
    let process_before = process_ticks();

    let senders = running.senders.clone();
    let templates = pipeline.templates();
    let clock = pipeline.clock();
    let producer = std::thread::Builder::new()
        .name("hb-producer".to_owned())
        .spawn(move || produce(&senders, &templates, offer, duration, clock))?;
    let produced = producer.join().map_err(|_| "the producer panicked")?;
    let delivered_during = progress.flows.load(Ordering::Acquire);
    let producer_end = Instant::now();
    progress
        .expected
        .store(produced.offered - produced.dropped, Ordering::Release);
    progress.producer_done.store(true, Ordering::Release);
    let received = client.join().map_err(|_| "the client panicked")?;
    let tail = producer_end.elapsed();

    let relay_ticks = pipeline
        .relay_threads()
        .map_or(0, |prefix| threads_ticks(prefix) - relay_before);
    let process = process_ticks() - process_before;
    let agent_ticks = match (pipeline.agent_threads(), agent_before) {
        (Some(prefix), Some(before)) => threads_ticks(prefix) - before,
        _ => process.saturating_sub(relay_ticks + received.ticks + produced.ticks),
    };
    let mem = memory()?;
    (running.stop)();
    if let Some(error) = received.error {
        return Err(format!("the follow client failed: {error}").into());
    }

    let production = produced.elapsed.as_secs_f64();
    Ok(TrialResult {
        offer: match offer {
            Offer::Paced(rate) => format!("{:.0}k", rate / 1000.0),
            Offer::Unpaced => "unpaced".to_owned(),
        },
        offered_rate: produced.offered as f64 / production,
        delivered_rate: delivered_during as f64 / production,
        flows: received.flows,
        offered: produced.offered,
        datapath_dropped: produced.dropped,
        ring_lost: received.ring_lost + received.other_lost,
        node_events: if running.relay {
            format!("{}/{}", received.node_connected, received.node_unavailable)
        } else {
            "-".to_owned()
        },
        agent_ticks,
        relay_ticks,
        client_ticks: received.ticks,
        producer_ticks: produced.ticks,
        process_ticks: process,
        tail,
        rss_before_kib: rss_before,
        rss_after_kib: mem.rss_kib,
        hwm_kib: mem.hwm_kib,
    })
}

/// Grows the paced rate until a trial loses, then bisects; then confirms the best clean rate
/// with a trial [`CONFIRM_FACTOR`] times as long, stepping down by 15% until one is clean.
/// Prints every trial; returns the confirmed one.
pub fn search(pipeline: &impl Pipeline, trial: Duration) -> BenchResult<Option<TrialResult>> {
    let mut best: Option<f64> = None;
    let mut rate = START_RATE;
    let mut lossy = None;
    while rate <= MAX_RATE {
        let result = run_trial(pipeline, Offer::Paced(rate), trial)?;
        println!("{}", result.row());
        if !result.clean() {
            lossy = Some(rate);
            break;
        }
        best = Some(rate);
        rate *= RATE_STEP;
    }
    if let Some(mut high) = lossy {
        let mut low = best.unwrap_or(0.0);
        for _ in 0..BISECTIONS {
            let rate = (low + high) / 2.0;
            let result = run_trial(pipeline, Offer::Paced(rate), trial)?;
            println!("{}", result.row());
            if result.clean() {
                low = rate;
                best = Some(rate);
            } else {
                high = rate;
            }
        }
    }
    let Some(mut rate) = best else {
        return Ok(None);
    };
    for _ in 0..CONFIRM_ATTEMPTS {
        let result = run_trial(pipeline, Offer::Paced(rate), trial * CONFIRM_FACTOR)?;
        println!("{}  (confirm, {CONFIRM_FACTOR}x longer)", result.row());
        if result.clean() {
            return Ok(Some(result));
        }
        rate *= CONFIRM_STEP_DOWN;
    }
    Ok(None)
}

/// The trial length: `HUBBLE_BENCH_TRIAL_MS`, default 1500 ms.
pub fn trial_length() -> BenchResult<Duration> {
    Ok(std::env::var("HUBBLE_BENCH_TRIAL_MS")
        .ok()
        .map(|ms| {
            ms.parse::<u64>()
                .map_err(|e| format!("HUBBLE_BENCH_TRIAL_MS {ms:?}: {e}"))
        })
        .transpose()?
        .map_or(Duration::from_millis(1500), Duration::from_millis))
}

/// The first line of a bench's output: the machine and its load.
pub fn print_setup(trial: Duration) {
    println!(
        "{} cores, load average {}, trial {} ms, batch {BATCH}, datapath queue {} events",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        trial.as_millis(),
        BATCH * DATAPATH_QUEUE_BATCHES
    );
}

/// Runs `repeats` trials twice as long as `trial` at exactly `rate`, printing each; returns
/// how many lost nothing.
pub fn verify(
    pipeline: &impl Pipeline,
    rate: f64,
    trial: Duration,
    repeats: usize,
) -> BenchResult<usize> {
    let mut clean = 0;
    for _ in 0..repeats {
        let result = run_trial(pipeline, Offer::Paced(rate), trial * 2)?;
        println!("{}  (at target, 2x longer)", result.row());
        if result.clean() {
            clean += 1;
        }
    }
    Ok(clean)
}
